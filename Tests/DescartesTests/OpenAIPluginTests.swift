import Descartes
import Glibc
import Testing
import DescartesSupport

/// libdescartes-openai.so through the C ABI against a real HTTP server on
/// 127.0.0.1: the ugly parts of the wire format, every error status,
/// deadlines, cancellation, concurrency, transport settings.
@Suite struct OpenAIPluginTests {
    static let key = "sk-openai-test-9f8e7d6c5b4a"
    let plugins = PluginDir().addManifest("openai").addManifest("vllm").addManifest("deepseek")

    func backend(_ server: ServerSlot, provider: String = "openai", _ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        var config: [String: JSONValue] = ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)]
        for (k, v) in extra { config[k] = v }
        return try plugins.factory().create(provider, config: config)
    }

    static func chunk(_ delta: String, finish: String? = nil, extra: String = "") -> String {
        #"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":\#(delta),"finish_reason":\#(finish.map { "\"\($0)\"" } ?? "null")}]\#(extra)}"#
    }

    static let usageChunk = #"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":3}}}"#

    // MARK: The wire format

    @Test func crlfCommentsPingsMultiLineDataSplitUTF8UsageOnlyChunkAndDone() async throws {
        let server = try await ServerSlot.make()
        // Every line ends in CRLF; comments and a ping event; one chunk's JSON
        // spread over three data: lines; "é" and "🙂" cut between reads; the
        // usage in a chunk of its own with choices:[]; then [DONE].
        let text = "data: " + Self.chunk(#"{"role":"assistant","content":""}"#) + "\r\n\r\n"
            + ": keep-alive\r\n\r\n"
            + "event: ping\r\ndata: {}\r\n\r\n"
            + "data: {\"id\":\"chatcmpl-1\",\r\ndata: \"choices\":[{\"index\":0,\r\ndata: \"delta\":{\"content\":\"Caf\u{e9} \"}}]}\r\n\r\n"
            + "data: " + Self.chunk(#"{"content":"au lait 🙂"}"#) + "\r\n\r\n"
            + "data: " + Self.chunk("{}", finish: "stop") + "\r\n\r\n"
            + "data: " + Self.usageChunk + "\r\n\r\n"
            + "data: [DONE]\r\n\r\n"
        var bytes = Array(text.utf8)
        // Cut inside "é" (2 bytes) and inside "🙂" (4 bytes), and between CR and LF.
        let e = bytes.firstIndex(of: 0xC3)! + 1
        let smile = bytes.firstIndex(of: 0xF0)! + 2
        let crlf = bytes.firstIndex(of: 0x0D)! + 1
        var pieces: [[UInt8]] = []
        var last = 0
        for cut in [crlf, e, smile].sorted() {
            pieces.append(Array(bytes[last..<cut]))
            last = cut
        }
        pieces.append(Array(bytes[last...]))
        bytes = []
        try await server.script(["POST /v1/chat/completions": [.pieces(pieces, delayMs: 5)]])
        let b = try backend(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "coffee?"))
        #expect(seen.error == nil, "\(seen)")
        #expect(seen.text == "Café au lait 🙂")
        let r = try #require(seen.response)
        #expect(r.finishReason == .stop)
        #expect(r.usage == Usage(inputTokens: 9, outputTokens: 4, cacheReadTokens: 3))
        #expect(r.model == "gpt-4o-mini-2024-07-18")
        #expect(r.id == "chatcmpl-1")
        // gpt-4o-mini prices from the manifest: (9-3)*0.15 + 3*0.075 + 4*0.60 per million.
        #expect(r.costUSD.map { abs($0 - (6 * 0.15 + 3 * 0.075 + 4 * 0.60) / 1e6) < 1e-12 } == true, "\(String(describing: r.costUSD))")
        #expect(seen.events.first.map { if case .start = $0 { return true }; return false } == true)
        await b.shutdown()
    }

    @Test func threeParallelToolCallsStreamedInterleaved() async throws {
        let server = try await ServerSlot.make()
        func tc(_ i: Int, id: String? = nil, name: String? = nil, _ args: String) -> String {
            var fn: [String] = []
            if let name { fn.append("\"name\":\"\(name)\"") }
            fn.append("\"arguments\":" + JSONValue.string(args).jsonText)
            let idPart = id.map { "\"id\":\"\($0)\",\"type\":\"function\"," } ?? ""
            return "data: " + Self.chunk(#"{"tool_calls":[{"index":\#(i),\#(idPart)"function":{\#(fn.joined(separator: ","))}}]}"#) + "\n\n"
        }
        let body = "data: " + Self.chunk(#"{"role":"assistant","content":null}"#) + "\n\n"
            + tc(0, id: "call_paris", name: "weather", "") + tc(1, id: "call_rome", name: "weather", "") + tc(2, id: "call_time", name: "clock", "")
            + tc(1, #"{"city":"#) + tc(0, #"{"city":"Pa"#) + tc(2, "{}") + tc(1, #""Rome"}"#) + tc(0, #"ris"}"#)
            + "data: " + Self.chunk("{}", finish: "tool_calls") + "\n\n"
            + "data: " + Self.usageChunk + "\n\ndata: [DONE]\n\n"
        try await server.script(["POST /v1/chat/completions": [.stream(body, split: "bytes:5")]])
        let b = try backend(server)
        let request = ModelRequest(
            messages: [.user("weather in Paris and Rome, and the time")],
            tools: [
                Tool(name: "weather", description: "Weather in a city", parameters: ["type": "object", "properties": ["city": ["type": "string"]], "required": ["city"]]),
                Tool(name: "clock", parameters: ["type": "object", "properties": [:]]),
            ], toolChoice: .auto)
        let seen = await Observed.stream(b, request)
        let r = try #require(seen.response, "\(seen)")
        #expect(r.finishReason == .toolUse)
        #expect(r.toolCalls == [
            ToolCall(id: "call_paris", name: "weather", arguments: #"{"city":"Paris"}"#),
            ToolCall(id: "call_rome", name: "weather", arguments: #"{"city":"Rome"}"#),
            ToolCall(id: "call_time", name: "clock", arguments: "{}"),
        ])
        // Arguments arrived as deltas of the right calls, in stream order.
        let deltas = seen.events.compactMap { e -> String? in if case .toolCallDelta(let i, let a) = e { return "\(i):\(a)" }; return nil }
        #expect(deltas == [#"1:{"city":"#, #"0:{"city":"Pa"#, "2:{}", #"1:"Rome"}"#, #"0:ris"}"#])
        let sent = try #require(try await server.requests().first?.json)
        #expect(sent["tools"]?[0]?["function"]?["name"] == "weather")
        #expect(sent["tools"]?[1]?["function"]?["parameters"] == ["type": "object", "properties": [:]])
        #expect(sent["tool_choice"] == "auto")

        // The tool results go back as tool messages on the next turn.
        try await server.script(["POST /v1/chat/completions": [.stream("data: " + Self.chunk(#"{"content":"Sunny in both."}"#, finish: "stop") + "\n\ndata: [DONE]\n\n")]])
        var next = request
        next.messages += [
            .assistant("", toolCalls: r.toolCalls), .tool(callID: "call_paris", "22C"), .tool(callID: "call_rome", "25C"),
            .tool(callID: "call_time", "12:00"),
        ]
        let answer = await Observed.stream(b, next)
        #expect(answer.text == "Sunny in both.")
        let second = try #require(try await server.requests().last?.json?["messages"]?.arrayValue)
        #expect(second.count == 5)
        #expect(second[1]["tool_calls"]?.arrayValue?.map { $0["id"] } == ["call_paris", "call_rome", "call_time"])
        #expect(second[1]["content"] == .null)
        #expect(second[2] == ["role": "tool", "content": "22C", "tool_call_id": "call_paris"])
        #expect(second[4]["tool_call_id"] == "call_time")
        await b.shutdown()
    }

    @Test func sendsTheRequestAsConfigured() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.stream("data: " + Self.chunk(#"{"content":"ok"}"#, finish: "stop") + "\n\ndata: [DONE]\n\n")]])
        let b = try backend(server, ["organization": "org-42", "project": "proj-7", "headers": ["X-Title": "descartes tests"]])
        var request = ModelRequest(messages: [.user("hi")], maxTokens: 64, temperature: 0.2, systemPrompt: "Be terse.", stop: ["END"], seed: 3)
        request.options = ["reasoning_effort": "low"]
        _ = await Observed.stream(b, request)
        let sent = try #require(try await server.requests().first)
        #expect(sent.path == "/v1/chat/completions")
        #expect(sent.query.isEmpty)
        #expect(sent.header("authorization") == "Bearer \(Self.key)")
        #expect(sent.header("openai-organization") == "org-42")
        #expect(sent.header("openai-project") == "proj-7")
        #expect(sent.header("x-title") == "descartes tests")
        #expect(sent.header("accept") == "text/event-stream")
        let body = try #require(sent.json)
        #expect(body["model"] == "gpt-4o-mini")  // the manifest's default model
        #expect(body["max_completion_tokens"] == 64)  // OpenAI's member for the limit
        #expect(body["stream_options"] == ["include_usage": true])
        #expect(body["messages"]?[0] == ["role": "system", "content": "Be terse."])
        #expect(body["stop"] == ["END"] && body["seed"] == 3 && body["reasoning_effort"] == "low")
        #expect(body["temperature"]?.doubleValue == 0.2)
        await b.shutdown()
    }

    @Test func completeUsesTheNonStreamingMode() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(try TestEnv.transcript("openai/chat-nonstream-text.json"))]])
        let b = try backend(server)
        let r = try await b.complete(ModelRequest(prompt: "hello", model: "gpt-3.5-turbo"))
        #expect(!r.content.isEmpty)
        #expect(r.finishReason == .stop)
        let body = try #require(try await server.requests().first?.json)
        #expect(body["stream"] == nil && body["model"] == "gpt-3.5-turbo")
        await b.shutdown()
    }

    // MARK: Errors

    static let errorBody = #"{"error":{"message":"Something about the request","type":"some_error_type","param":null,"code":"some_code"}}"#

    @Test(arguments: [
        (400, ProviderError.Kind.api), (401, .authentication), (403, .authentication), (404, .api), (429, .rateLimited),
        (500, .providerUnavailable), (502, .providerUnavailable), (503, .providerUnavailable), (529, .providerUnavailable),
    ])
    func mapsEveryErrorStatus(_ status: Int, _ kind: ProviderError.Kind) async throws {
        let server = try await ServerSlot.make()
        let headers: [(String, String)] = status == 429 ? [("retry-after", "7")] : []
        try await server.script(["POST /v1/chat/completions": [.error(status, Self.errorBody, headers: headers)]])
        let b = try backend(server)
        for streamed in [true, false] {
            let request = ModelRequest(prompt: "x", model: "gpt-nope")
            let seen = streamed ? await Observed.stream(b, request) : await Observed.complete(b, request)
            let e = try #require(seen.error)
            #expect(e.kind == kind, "\(status)")
            #expect(e.status == status)
            #expect(e.providerType == "some_error_type")
            #expect(e.message.hasPrefix("HTTP \(status): some_error_type: Something about the request"), "\(e.message)")
            #expect(!e.message.contains(Self.key))
            if status == 404 { #expect(e.message.contains("model 'gpt-nope'") && e.message.contains("/v1/chat/completions")) }
            if status == 429 { #expect(e.retryAfter == .seconds(7)) }
        }
        await b.shutdown()
    }

    @Test func rateLimitsCarryRetryAfterMilliseconds() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.error(429, Self.errorBody, headers: [("retry-after-ms", "1250"), ("retry-after", "2")])]])
        let b = try backend(server)
        let e = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(e.kind == .rateLimited)
        #expect(e.retryAfter == .milliseconds(1250))
        await b.shutdown()
    }

    @Test func aKeyEchoedByTheServerIsScrubbed() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.error(401, #"{"error":{"message":"Incorrect API key provided: \#(Self.key).","type":"invalid_request_error","code":"invalid_api_key"}}"#)]])
        let b = try backend(server)
        let e = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(e.kind == .authentication)
        #expect(!e.message.contains(Self.key))
        #expect(e.message.contains("[REDACTED]"))
        await b.shutdown()
    }

    @Test func connectionRefusedIsProviderUnavailable() async throws {
        let refusing = RefusingPort()
        let port = refusing.port
        let b = try plugins.factory().create("openai", config: ["endpoint": .string("http://127.0.0.1:\(port)/v1"), "api_key": .string(Self.key)])
        for seen in [await Observed.stream(b, ModelRequest(prompt: "x")), await Observed.complete(b, ModelRequest(prompt: "x"))] {
            #expect(seen.error?.kind == .providerUnavailable, "\(seen)")
            #expect(seen.error?.message.contains("127.0.0.1:\(port)") == true)
        }
        await #expect(throws: ProviderError.self) { _ = try await b.healthCheck() }
        await b.shutdown()
        withExtendedLifetime(refusing) {}
    }

    @Test func deadlinesAreAppliedByThePlugin() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                .hang,  // first token
                .stream("data: " + Self.chunk(#"{"content":"a"}"#) + "\n\n").with(["hang_after": 200]),  // idle
                .stream(String(repeating: "data: " + Self.chunk(#"{"content":"a"}"#) + "\n\n", count: 60), split: "lines", chunkDelayMs: 100),  // total (the stream lasts 6 s)
            ]
        ])
        let b = try backend(server)
        func run(_ d: Deadlines) async -> (Observed, Duration) {
            let start = ContinuousClock.now
            var r = ModelRequest(prompt: "x")
            r.deadlines = d
            let o = await Observed.stream(b, r)
            return (o, ContinuousClock.now - start)
        }
        let (first, t1) = await run(Deadlines(firstToken: .milliseconds(300)))
        #expect(first.error?.kind == .timeout)
        #expect(first.error?.deadline == "first_token")
        let (idle, t2) = await run(Deadlines(idle: .milliseconds(300)))
        #expect(idle.error?.kind == .timeout)
        #expect(idle.error?.deadline == "idle")
        #expect(idle.text == "a")
        let (total, t3) = await run(Deadlines(total: .milliseconds(500)))
        #expect(total.error?.kind == .timeout)
        #expect(total.error?.deadline == "total")
        // Each ends at its deadline (the kinds above say which fired), not at
        // the end of the stream (6 s) or never; the slack allows for a loaded
        // CI machine (a 1.5 s bound against a 2 s stream failed at 1.504 s).
        for t in [t1, t2, t3] { expectWithin(t, .seconds(4)) }
        await b.shutdown()
    }

    @Test func theConnectDeadlineIsAppliedByThePlugin() async throws {
        // A listening socket that never accepts, its one-connection queue
        // already full: the kernel drops further SYNs, so connecting hangs.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        listen(fd, 0)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        var fillers: [Int32] = []
        defer { for f in fillers { close(f) } }
        for _ in 0..<3 {
            let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            _ = fcntl(c, F_SETFL, O_NONBLOCK)
            _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, len) } }
            fillers.append(c)
        }
        try await Task.sleep(for: .milliseconds(100))
        let b = try plugins.factory().create("openai", config: ["endpoint": .string("http://127.0.0.1:\(port)/v1"), "api_key": .string(Self.key)])
        var r = ModelRequest(prompt: "x")
        r.deadlines = Deadlines(connect: .milliseconds(300), total: .seconds(20))
        // The backend's first call, untimed: it also pays for initialize and
        // the process's first use of the plugin's code, which under load took
        // 1.2-2.8 s where the same call made a second time took 0.33-0.42 s
        // (issue 16; alone both take ~0.3 s). What is timed is the connect
        // deadline, not that warm-up.
        let first = await Observed.stream(b, r)
        #expect(first.error?.deadline == "connect", "\(first)")
        let start = ContinuousClock.now
        let seen = await Observed.stream(b, r)
        #expect(seen.error?.kind == .timeout, "\(seen)")
        #expect(seen.error?.deadline == "connect")
        expectWithin(ContinuousClock.now - start, .seconds(5), "\(seen)")  // the connect limit, not the 20 s total
        await b.shutdown()
    }

    @Test func aStreamCutBeforeItsEndIsStreamClosed() async throws {
        let server = try await ServerSlot.make()
        let body = (0..<50).map { _ in "data: " + Self.chunk(#"{"content":"word "}"#) + "\n\n" }.joined()
        try await server.script([
            "POST /v1/chat/completions": [
                .stream(body + "data: [DONE]\n\n").with(["reset_after": 2000]),  // connection reset mid-stream
                .stream(body),  // a clean end without finish_reason or [DONE]
            ]
        ])
        let b = try backend(server)
        let cut = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(cut.error?.kind == .streamClosed, "\(cut)")
        #expect(cut.text.hasPrefix("word word"))
        let unfinished = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(unfinished.error?.kind == .streamClosed, "\(unfinished)")
        await b.shutdown()
    }

    @Test func aServerThatOmitsDoneButFinishedIsFine() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.stream("data: " + Self.chunk(#"{"content":"hi"}"#, finish: "length") + "\n\n")]])
        let b = try backend(server, provider: "vllm")
        let seen = await Observed.stream(b, ModelRequest(prompt: "x", model: "m"))
        #expect(seen.response?.finishReason == .maxTokens)
        #expect(seen.text == "hi")
        await b.shutdown()
    }

    /// An HTTP 200 that answers nothing is not an answer (issue 16): no
    /// `choices`, or an empty message with finish_reason `stop`. An empty
    /// message cut by `length` is one (the reason explains it).
    @Test func emptySuccessfulAnswersAreInvalidResponses() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                .json(#"{"id":"chatcmpl-1","model":"m","choices":[]}"#),
                .json(#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"stop"}]}"#),
                .stream("data: " + Self.chunk(#"{"content":""}"#, finish: "stop") + "\n\ndata: [DONE]\n\n"),
                .json(#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"length"}]}"#),
            ]
        ])
        let b = try backend(server)
        let none = await Observed.complete(b, ModelRequest(prompt: "x"))
        #expect(none.error?.kind == .invalidResponse, "\(none)")
        #expect(none.error?.message.contains("HTTP 200, but the answer has no choices") == true, "\(none)")
        let empty = await Observed.complete(b, ModelRequest(prompt: "x"))
        #expect(empty.error?.kind == .invalidResponse, "\(empty)")
        #expect(empty.error?.message.contains("the answer is empty (no text, no tool call) with finish_reason 'stop'") == true, "\(empty)")
        let streamed = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(streamed.error?.kind == .invalidResponse, "\(streamed)")
        let cut = await Observed.complete(b, ModelRequest(prompt: "x"))
        #expect(cut.error == nil, "\(cut)")
        #expect(cut.response?.finishReason == .maxTokens)
        await b.shutdown()
    }

    @Test func unparseableAnswersAreInvalidResponsesWithAnExcerpt() async throws {
        let server = try await ServerSlot.make()
        let html = "<html><body>" + String(repeating: "Bad gateway page. ", count: 200) + "</body></html>"
        try await server.script([
            "POST /v1/chat/completions": [
                .json(html),  // complete: not JSON
                .stream(html, contentType: "text/html"),  // stream: not an event stream
                .stream("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]\n\ndata: [DONE]\n\n"),  // an event that is not JSON
            ]
        ])
        let b = try backend(server)
        let whole = await Observed.complete(b, ModelRequest(prompt: "x"))
        #expect(whole.error?.kind == .invalidResponse, "\(whole)")
        #expect(whole.error?.message.contains("<html><body>Bad gateway page.") == true)
        #expect((whole.error?.message.count ?? 0) < 600)
        let stream = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(stream.error?.kind == .invalidResponse, "\(stream)")
        #expect(stream.error?.message.contains("not an event stream") == true)
        #expect((stream.error?.message.count ?? 0) < 800)
        let event = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(event.error?.kind == .invalidResponse, "\(event)")
        await b.shutdown()
    }

    @Test func anErrorInsideA200StreamEndsIt() async throws {
        let server = try await ServerSlot.make()
        let body = "data: " + Self.chunk(#"{"content":"partial "}"#) + "\n\n"
            + "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\"}}\n\n"
            + "data: [DONE]\n\n"
        try await server.script(["POST /v1/chat/completions": [.stream(body)]])
        let b = try backend(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.text == "partial ")
        #expect(seen.error?.kind == .providerUnavailable)
        #expect(seen.error?.message.contains("The server had an error") == true)
        await b.shutdown()
    }

    @Test func theResponseSizeIsLimited() async throws {
        let server = try await ServerSlot.make()
        let line = "data: " + Self.chunk(#"{"content":"\#(String(repeating: "x", count: 1000))"}"#) + "\n\n"
        try await server.script(["POST /v1/chat/completions": [.stream(String(repeating: line, count: 1200) + "data: [DONE]\n\n")]])
        let b = try backend(server, ["max_response_mb": 1])
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.error?.kind == .invalidResponse)
        #expect(seen.error?.message.contains("larger than 1048576 bytes") == true)
        await b.shutdown()
    }

    // MARK: Cancellation and concurrency

    @Test func cancellingAbortsTheTransferAtOnce() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.stream("data: " + Self.chunk(#"{"content":"a"}"#) + "\n\n").with(["hang_after": 200])]])
        let b = try backend(server)
        let task = Task { await Observed.stream(b, ModelRequest(prompt: "x")) }
        // Cancel once the answer has begun (the request reached the server).
        try await server.waitForRequests(1)
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        task.cancel()
        let seen = await task.value
        // The stream hangs forever and has no deadline: only the cancellation
        // ends it (the bound leaves room for a loaded machine).
        expectWithin(ContinuousClock.now - start, .seconds(10))
        #expect(seen.error?.kind == .cancelled, "\(seen)")
        // The plugin aborted the transfer: the server sees its connection end.
        let connection = try #require(try await server.requests().first?.connection)
        var gone = false
        while !gone && ContinuousClock.now - start < .seconds(10) {
            gone = try await server.closedConnections().contains(connection)
            if !gone { try await Task.sleep(for: .milliseconds(20)) }
        }
        // Within the same loose bound: a transfer left open would hang forever.
        #expect(gone, "the connection stayed open 10 s after the cancellation")
        await b.shutdown()
    }

    @Test func manyConcurrentStreamsShareOneConnectionPool() async throws {
        let server = try await ServerSlot.make()
        let body = (0..<5).map { "data: " + Self.chunk(#"{"content":"\#($0) "}"#) + "\n\n" }.joined()
            + "data: " + Self.chunk("{}", finish: "stop") + "\n\ndata: [DONE]\n\n"
        try await server.script(["POST /v1/chat/completions": [.stream(body, split: "lines", chunkDelayMs: 20)]])
        let b = try backend(server)
        let texts = await withTaskGroup(of: String.self) { g in
            for _ in 0..<64 { g.addTask { await Observed.stream(b, ModelRequest(prompt: "x")).text } }
            var out: [String] = []
            for await t in g { out.append(t) }
            return out
        }
        #expect(texts.count == 64)
        #expect(texts.allSatisfy { $0 == "0 1 2 3 4 " })
        // One transfer-loop thread for the plugin instance, not one per
        // request. Counted in a process of its own, since this one runs other
        // tests' clients meanwhile: descartes-bench keeps 64 streams in flight
        // through the same plugin and reports the most threads of each name.
        let r = await Proc.run(
            [CommandLineTests.bench, "-p", "openai", "--set", "endpoint=\(server.url)/v1", "--set", "api_key=\(Self.key)",
             "-n", "64", "-c", "64", "--stream", "--json"],
            env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"], timeout: .seconds(60))
        #expect(r.status == 0, "\(r)")
        let bench = try JSONValue.parse(r.stdout)
        #expect(bench["requests"] == 64 && bench["concurrency"] == 64, "\(r.stdout)")
        #expect(bench["threads_peak_by_name"]?["descartes-http"] == 1, "\(r.stdout)")
        await b.shutdown()
        // Sequential requests of a fresh instance reuse its one connection.
        try await server.script(["POST /v1/chat/completions": [.stream(body)]])
        let before = try await server.requests().count
        let fresh = try backend(server)
        for _ in 0..<5 { _ = await Observed.stream(fresh, ModelRequest(prompt: "x")) }
        let sequential = try await server.requests().dropFirst(before)
        #expect(sequential.count == 5)
        // One pooled connection serves them. The answer is delivered at the
        // stream's terminal event, before libcurl has read the final chunk of
        // the HTTP/1.1 body; a request started in that instant can open a
        // second connection (HTTP/2 multiplexes and never needs one). Five
        // sequential requests never need more than two.
        #expect(Set(sequential.map(\.connection)).count <= 2)
        await fresh.shutdown()
    }

    /// Threads of this process with that name (`/proc/self/task/*/comm`).
    // MARK: Models, health, tokens

    @Test func listsModelsAndChecksHealthWithARealAuthenticatedCall() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "GET /v1/models": [
                .json(#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"},{"id":"local","object":"model","owned_by":"vllm","max_model_len":32768}]}"#),
                .json(#"{"object":"list","data":[]}"#),
                .error(401, #"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","code":"invalid_api_key"}}"#),
            ]
        ])
        let b = try backend(server)
        let models = try await b.listModels()
        #expect(models.map(\.id) == ["gpt-4o", "local"])
        #expect(models[0].ownedBy == "system")
        #expect(models[1].contextLength == 32768)
        let health = try await b.healthCheck()
        #expect(health.message.contains("answered 200"))
        let e = await providerError { _ = try await b.healthCheck() }
        #expect(e?.kind == .authentication)
        #expect(e?.message.contains("Incorrect API key provided") == true)
        let sent = try await server.requests()
        #expect(sent.allSatisfy { $0.method == "GET" && $0.header("authorization") == "Bearer \(Self.key)" })
        // A server that answers with something other than a model list is not healthy.
        try await server.script(["GET /v1/models": [.json("<html>login</html>")]])
        #expect(await providerError { _ = try await b.healthCheck() }?.kind == .invalidResponse)
        await b.shutdown()
    }

    @Test func estimatesTokensWithTheDocumentedHeuristic() async throws {
        let server = try await ServerSlot.make()
        let b = try backend(server)
        let t = try await b.estimateTokens(ModelRequest(prompt: String(repeating: "abcd", count: 100)))
        #expect(t.method == "heuristic:chars/4")
        #expect(!t.exact)
        #expect(t.tokens == 100 + 6)
        await b.shutdown()
    }

    // MARK: Transport settings

    @Test func aProxyFromConfigCarriesTheRequest() async throws {
        let proxy = try await ScriptedServer.start()
        try await proxy.script([:], default: .json(#"{"object":"list","data":[{"id":"via-proxy"}]}"#))
        // The endpoint itself is a closed port: only the proxy can answer.
        let b = try plugins.factory().create(
            "vllm", config: ["endpoint": "http://127.0.0.9:9/v1", "proxy": .string(proxy.url)])
        let models = try await b.listModels()
        #expect(models.map(\.id) == ["via-proxy"])
        let seen = try #require(try await proxy.requests().first)
        #expect(seen.path == "http://127.0.0.9:9/v1/models")  // absolute-form: a proxy request
        await b.shutdown()
    }

    @Test func aKeyOverPlainHTTPBeyondLoopbackIsWarnedAbout() async throws {
        let capture = LogCapture.shared
        let b = try plugins.factory().create("deepseek", config: ["endpoint": "http://gpu-box.invalid:8000/v1", "api_key": .string(Self.key)])
        #expect(capture.contains("the API key will be sent unencrypted over plain http:// to gpu-box.invalid"))
        #expect(!capture.contains(Self.key))
        await b.shutdown()
        let quiet = try plugins.factory().create("deepseek", config: ["endpoint": "http://127.0.0.1:8000/v1", "api_key": .string(Self.key)])
        #expect(!capture.contains("plain http:// to 127.0.0.1"))
        await quiet.shutdown()
    }

    @Test func badTransportSettingsAreConfigErrorsNamingTheKey() throws {
        let f = plugins.factory()
        func fails(_ config: [String: JSONValue], _ key: String) {
            var c = config
            c["api_key"] = .string(Self.key)
            do {
                _ = try f.create("openai", config: c)
                Issue.record("accepted \(config)")
            } catch {
                #expect(error.message.contains("key '\(key)'"), "\(error)")
                #expect(!error.message.contains(Self.key))
            }
        }
        fails(["endpoint": "ftp://example.org/v1"], "endpoint")
        fails(["endpoint": "https://api.example.org/v1?key=abc"], "endpoint")
        fails(["ca_bundle": "/nonexistent/ca.pem"], "ca_bundle")
        fails(["proxy": "gopher://proxy"], "proxy")
        fails(["max_tokens_field": "n_predict"], "max_tokens_field")
        fails(["timeout_secs": 0], "timeout_secs")
    }

    @Test func certificatesAreVerifiedAndACABundleCanBeChosen() async throws {
        // A TLS server with a certificate of its own CA, made for this test.
        let dir = TempDir("descartes-tls")
        let gen = await Proc.run([
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", dir.file("key.pem"), "-out", dir.file("cert.pem"),
        ])
        try #require(gen.status == 0, "openssl: \(gen.stderr)")
        let server = try await ScriptedServer.start(tls: (cert: dir.file("cert.pem"), key: dir.file("key.pem")))
        try await server.script(["GET /v1/models": [.json(#"{"data":[{"id":"tls-model"}]}"#)]])
        let endpoint = JSONValue.string("https://127.0.0.1:\(server.port)/v1")
        // Not trusted by the system: refused, and there is no key to turn that off.
        let untrusted = try plugins.factory().create("openai", config: ["endpoint": endpoint, "api_key": .string(Self.key)])
        let e = await providerError { _ = try await untrusted.listModels() }
        #expect(e?.kind == .http, "\(String(describing: e))")
        #expect(e?.message.contains("TLS") == true)
        #expect(try await server.requests().isEmpty)
        await untrusted.shutdown()
        // Trusted through ca_bundle.
        let trusted = try plugins.factory().create("openai", config: ["endpoint": endpoint, "api_key": .string(Self.key), "ca_bundle": .string(dir.file("cert.pem"))])
        #expect(try await trusted.listModels().map(\.id) == ["tls-model"])
        await trusted.shutdown()
    }

    @Test func concurrentStreamsOverTLSToAnHTTP11ServerRunTogether() async throws {
        // Over TLS the plugin waits for ALPN before opening more connections
        // (so an HTTP/2 server multiplexes, HTTP2Tests); an HTTP/1.1 server
        // must still get one connection per stream at once, not a queue.
        let dir = TempDir("descartes-tls-h1")
        let gen = await Proc.run([
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", dir.file("key.pem"), "-out", dir.file("cert.pem"),
        ])
        try #require(gen.status == 0, "openssl: \(gen.stderr)")
        let server = try await ScriptedServer.start(tls: (cert: dir.file("cert.pem"), key: dir.file("key.pem")))
        // Each answer takes a second: ten events 100 ms apart.
        let body = (0..<10).map { "data: " + Self.chunk(#"{"content":"\#($0) "}"#) + "\n\n" }.joined()
            + "data: " + Self.chunk("{}", finish: "stop") + "\n\ndata: [DONE]\n\n"
        let n = 4
        try await server.script(["POST /v1/chat/completions": Array(repeating: .stream(body, split: "lines", chunkDelayMs: 100), count: n)])
        let b = try plugins.factory().create("openai", config: [
            "endpoint": .string("https://127.0.0.1:\(server.port)/v1"), "api_key": .string(Self.key), "ca_bundle": .string(dir.file("cert.pem")),
        ])
        let texts = await withTaskGroup(of: String.self) { group in
            for i in 0..<n { group.addTask { await Observed.stream(b, ModelRequest(prompt: "\(i)")).text } }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(texts == Array(repeating: (0..<10).map { "\($0) " }.joined(), count: n))
        // All four reached the server together: queued, each would have come
        // a second after the one before.
        let times = try await server.requests().map(\.time)
        #expect(times.count == n)
        #expect((times.max() ?? 0) - (times.min() ?? 0) < 0.9, "\(times)")
        #expect(Set(try await server.requests().map(\.connection)).count == n)
        await b.shutdown()
    }
}
