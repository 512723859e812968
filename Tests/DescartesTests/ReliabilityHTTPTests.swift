import Descartes
import Glibc
import Testing
import DescartesSupport

/// The retry, deadline and fallback layers over the real OpenAI plugin,
/// against the scripted HTTP server on 127.0.0.1 injecting faults: 429 with
/// retry-after, 503, a hang, a stream cut mid-body, success. The server
/// stamps each request with its own clock, so the waits between attempts
/// are measured where the provider would see them.
@Suite struct ReliabilityHTTPTests {
    static let key = "sk-reliability-test-0a1b2c3d4e5f"
    let plugins = PluginDir().addManifest("openai").addRepositoryPlugin("headless-cli", library: "headless-cli")

    func openai(_ server: ServerSlot) throws -> any ModelBackend {
        try plugins.factory().create("openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
    }

    static func chunk(_ content: String, finish: String? = nil) -> String {
        let delta = content.isEmpty ? "{}" : #"{"content":"\#(content)"}"#
        return #"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":\#(delta),"finish_reason":\#(finish.map { "\"\($0)\"" } ?? "null")}]}"# + "\n\n"
    }

    static let usage = #"data: {"id":"chatcmpl-9","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"# + "\n\n"
    static let hello = chunk("Hel") + chunk("lo") + chunk("", finish: "stop") + usage + "data: [DONE]\n\n"
    static let errorBody = #"{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests","code":"rate_limit_exceeded"}}"#
    static let overloaded = #"{"error":{"message":"The server is overloaded","type":"server_error"}}"#

    /// The server's clock at each request, relative to the first.
    func times(_ server: ServerSlot) async throws -> [Double] {
        let t = try await server.requests().map(\.time)
        return t.map { $0 - (t.first ?? 0) }
    }

    @Test func aScriptedSequenceOfFaultsIsRetriedInOrderUntilItSucceeds() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                .error(429, Self.errorBody, headers: [("retry-after", "1")]),
                .error(503, Self.overloaded),
                .hang,
                // Headers and part of the first event, then a reset: cut before the first token.
                .stream(Self.hello).with(["reset_after": 25]),
                .stream(Self.hello, split: "lines"),
            ]
        ])
        let policy = RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(100), multiplier: 2, jitter: 0)
        let b = RetryBackend(try openai(server), policy: policy)
        var request = ModelRequest(prompt: "say hello")
        // Long enough that a loaded machine answers the good attempts in time.
        request.deadlines.firstToken = .seconds(2)
        var texts: [String] = []
        var notices: [String] = []
        var finish: ModelResponse?
        for try await e in b.stream(request) {
            switch e {
            case .textDelta(let t): texts.append(t)
            case .notice(_, let m): notices.append(m)
            case .finish(let r): finish = r
            default: break
            }
        }
        let r = try #require(finish)
        #expect(texts == ["Hel", "lo"])
        #expect(r.content == "Hello")
        #expect(r.provider == "openai")
        #expect(r.usage == Usage(inputTokens: 5, outputTokens: 2))
        // The exact sequence of failed attempts.
        #expect(r.attempts.map(\.error.kind) == [.rateLimited, .providerUnavailable, .timeout, .streamClosed], "\(r.attempts)")
        #expect(r.attempts.map(\.error.status) == [429, 503, nil, nil])
        #expect(r.attempts[0].error.retryAfter == .seconds(1))
        #expect(r.attempts[2].error.deadline == "first_token")
        #expect(notices.count == 4)
        #expect(notices[0] == "openai: rate_limited (429): retry 1 of 4 in 1 s")

        // Five requests reached the server, spaced as the policy says:
        // retry-after 1 s; then the backoff 200 ms; the first-token deadline
        // 2 s plus 400 ms; then 800 ms.
        let t = try await times(server)
        #expect(t.count == 5)
        let gaps = zip(t.dropFirst(), t).map { $0 - $1 }
        let least = [1.0, 0.2, 2.4, 0.8]
        for (i, (gap, min)) in zip(gaps, least).enumerated() {
            #expect(gap >= min - 0.02, "gap \(i + 1): \(gap) s, expected at least \(min) s")
            #expect(gap < min + 15, "gap \(i + 1): \(gap) s")  // loose: loaded CI machines
        }
        await b.shutdown()
    }

    @Test func aStreamCutAfterItsFirstTokenIsNotRetried() async throws {
        let server = try await ServerSlot.make()
        let firstEvent = Self.chunk("Hel").utf8.count
        try await server.script(["POST /v1/chat/completions": [.stream(Self.hello, split: "lines").with(["reset_after": .integer(firstEvent + 10)]), .stream(Self.hello)]])
        let b = RetryBackend(try openai(server), policy: RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(10)))
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.text == "Hel")
        #expect(seen.error?.kind == .streamClosed, "\(String(describing: seen.error))")
        #expect(try await server.requests().count == 1)
        await b.shutdown()
    }

    @Test(arguments: [(401, ProviderError.Kind.authentication), (403, .authentication), (400, .api), (404, .api), (422, .api)])
    func nothingIsRetriedThatShouldNotBe(_ status: Int, _ kind: ProviderError.Kind) async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.error(status, #"{"error":{"message":"no","type":"invalid_request_error"}}"#)]])
        let b = RetryBackend(try openai(server), policy: RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(10)))
        for seen in [await Observed.stream(b, ModelRequest(prompt: "x")), await Observed.complete(b, ModelRequest(prompt: "x"))] {
            #expect(seen.error?.kind == kind)
            #expect(seen.error?.attempts.isEmpty == true)
        }
        // One request each for the stream and the completion: never a second.
        #expect(try await server.requests().count == 2)
        await b.shutdown()
    }

    @Test func retryAfterAsAnHTTPDateAndInMilliseconds() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                .error(429, Self.errorBody, headers: [("retry-after", Self.httpDate(secondsFromNow: 3))]),
                .error(429, Self.errorBody, headers: [("retry-after-ms", "600"), ("retry-after", "30")]),
                .json(#"{"id":"chatcmpl-2","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"done"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#),
            ]
        ])
        let b = RetryBackend(try openai(server), policy: RetryPolicy(maxAttempts: 3, jitter: 0))
        let r = try await b.complete(ModelRequest(prompt: "x"))
        #expect(r.content == "done")
        #expect(r.attempts.count == 2)
        // A date three seconds ahead is at most three away when the 429
        // arrives (whole seconds; less when a loaded machine was slow to ask),
        // and the retry waited for it, measured by the server.
        let dated = try #require(r.attempts[0].error.retryAfter)
        #expect(dated >= .zero && dated <= .seconds(3))
        #expect(r.attempts[1].error.retryAfter == .milliseconds(600))
        let t = try await times(server)
        #expect(t[1] - t[0] >= dated.seconds - 0.02)
        #expect(t[2] - t[1] >= 0.58 && t[2] - t[1] < 20)
        await b.shutdown()
    }

    /// "Tue, 24 Nov 2026 17:00:00 GMT", `s` seconds from now.
    static func httpDate(secondsFromNow s: Int) -> String {
        var t = time(nil) + s
        var parts = tm()
        gmtime_r(&t, &parts)
        var buf = [CChar](repeating: 0, count: 64)
        let n = strftime(&buf, buf.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
        return String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    @Test func aHungProviderEndsAtTheTotalDeadlineWhateverTheRetries() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.hang]])
        let b = RetryBackend(try openai(server), policy: RetryPolicy(maxAttempts: 10, initialDelay: .milliseconds(50), attemptTimeout: .milliseconds(400)))
        var request = ModelRequest(prompt: "x")
        request.deadlines.total = .milliseconds(1500)
        let start = ContinuousClock.now
        let seen = await Observed.complete(b, request)
        let took = ContinuousClock.now - start
        #expect(seen.error?.kind == .timeout)
        #expect(seen.error?.deadline == "total")
        #expect(took >= .milliseconds(1100))
        expectWithin(took, .seconds(30))
        // Each hung attempt was abandoned at its deadline and the next sent.
        // (Two or more on an idle machine; a loaded one may fit only one.)
        let n = try await server.requests().count
        #expect(n >= 1 && n <= 4, "\(n) requests")
        await b.shutdown()
    }

    // MARK: Across modes

    @Test func anHTTPProviderFailsOverToAHeadlessOne() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.error(503, Self.overloaded)]])
        let headless = try plugins.factory().create("headless-cli", config: ["command": .string(HeadlessFixtures.path("echo_events.py"))])
        let chain = FallbackBackend(name: "resilient", [
            .init(RetryBackend(try openai(server), policy: RetryPolicy(maxAttempts: 2, initialDelay: .milliseconds(50)))),
            .init(headless, model: .providerDefault),
        ])
        #expect(chain.mode == .api)
        #expect(headless.mode == .headless)
        var request = ModelRequest(prompt: "answered by a child process")
        request.model = "gpt-4o-mini"
        var texts: [String] = []
        var finish: ModelResponse?
        for try await e in chain.stream(request) {
            if case .textDelta(let t) = e { texts.append(t) }
            if case .finish(let r) = e { finish = r }
        }
        let r = try #require(finish)
        #expect(texts.joined() == "answered by a child process")
        #expect(r.provider == "headless-cli")
        #expect(r.model == "echo-model")  // the headless provider was asked for its own default
        #expect(r.attempts.map(\.provider) == ["openai", "openai"])
        #expect(r.attempts.map(\.error.status) == [503, 503])
        #expect(try await server.requests().count == 2)
        await chain.shutdown()
    }

    @Test(.timeLimit(.minutes(3))) func anthropicFailsOverToClaudeCodeRunHeadless() async throws {
        // The chain of the issue: the Anthropic API (overloaded), then the
        // real claude binary run headless (against its own scripted server).
        let api = try await ServerSlot.make()
        try await api.script(["POST /v1/messages": [.error(529, #"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)]])
        let anthropic = try plugins.addManifest("anthropic").factory().create(
            "anthropic", config: ["endpoint": .string("\(api.url)/v1"), "api_key": .string("sk-ant-api-test-0123456789")])
        let claude = try await ClaudeHarness()
        try await claude.serve([ClaudeHarness.sse("messages-stream-text.sse")])
        let chain = FallbackBackend(name: "resilient", [
            .init(RetryBackend(anthropic, policy: RetryPolicy(maxAttempts: 2, initialDelay: .milliseconds(50)))),
            .init(try claude.backend(), model: .named("claude-haiku-4-5")),
        ])
        let r = try await chain.complete(ModelRequest(prompt: "say hi", model: "claude-sonnet-4-5"))
        #expect(r.provider == "claude-code-cli")
        #expect(r.content == "Hello")
        #expect(r.attempts.map(\.provider) == ["anthropic", "anthropic"])
        #expect(r.attempts.map(\.error.kind) == [.providerUnavailable, .providerUnavailable])
        #expect(r.attempts.map(\.error.status) == [529, 529])
        #expect(try await api.requests().count == 2)
        #expect(try await claude.server.requests().first?.json?["model"] == "claude-haiku-4-5")
        await chain.shutdown()
    }

    @Test func theCLIFallsBackFromHTTPToAnotherModeAndSaysSo() async throws {
        // The whole path as a user runs it: providers.yaml is not needed for
        // --fallback; the headless provider's command comes from its own
        // manifest here (a copy of headless-cli with a default command).
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.error(429, Self.errorBody, headers: [("retry-after", "600")])]])
        let manifest = try FileSystem.readText(plugins.dir.file("headless-cli.yaml"), limit: 1 << 20)
            .replacing("provider: headless-cli", with: "provider: local-agent")
            .replacing("    required: true\n    description: The program", with: "    default: \(HeadlessFixtures.path("echo_events.py"))\n    description: The program")
        plugins.dir.write("local-agent.yaml", manifest)
        let start = ContinuousClock.now
        let r = await Proc.descartes(
            ["complete", "-p", "openai", "--set", "endpoint=\(server.url)/v1", "--fallback", "local-agent", "--json", "--stats", "cross", "mode"],
            env: ["DESCARTES_PLUGIN_PATH": plugins.path, "OPENAI_API_KEY": Self.key, "HOME": "/nonexistent"])
        #expect(r.status == 0, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["provider"] == "local-agent")
        #expect(doc["content"] == "cross mode")
        // The 429 asked for ten minutes, more than the retry cap: no retry,
        // straight to the next provider.
        #expect(doc["attempts"]?.arrayValue?.count == 1)
        #expect(doc["attempts"]?[0]?["error"]?["kind"] == "rate_limited")
        #expect(doc["attempts"]?[0]?["error"]?["retry_after_ms"] == 600_000)
        #expect(doc["stats"]?["failed_attempts"] == 1)
        expectWithin(ContinuousClock.now - start, .seconds(30))
        #expect(!r.stdout.contains(Self.key) && !r.stderr.contains(Self.key))
        #expect(try await server.requests().count == 1)
    }
}
