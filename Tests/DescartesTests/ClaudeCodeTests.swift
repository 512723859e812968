import Descartes
import Glibc
import Testing
import DescartesSupport

/// The real `claude` binary, as `../shared/tools/claude-cli.sh` fetches it
/// (the one bundled in the claude-agent-sdk wheel), or `$DESCARTES_CLAUDE`.
enum ClaudeBinary {
    static let path: String? = {
        if let p = Environment.get("DESCARTES_CLAUDE"), !p.isEmpty { return p }
        let script = FileSystem.join(FileSystem.directory(of: TestEnv.root), "shared/tools/claude-cli.sh")
        guard FileSystem.exists(script) else { return nil }
        let r = Proc.runBlocking([script], timeout: .seconds(600))
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        return r.status == 0 && line.hasPrefix("/") ? line : nil
    }()

    /// The path, or a recorded failure saying how to get the binary.
    static func require() throws -> String {
        try #require(
            path,
            "the real claude binary is needed: run ../shared/tools/claude-cli.sh (pip, PyPI) or set DESCARTES_CLAUDE to its path")
    }
}

/// A scripted Anthropic server on 127.0.0.1, a fresh HOME, and the
/// claude-code-cli plugin pointed at both.
final class ClaudeHarness: @unchecked Sendable {
    static let plugins = PluginDir().addRepositoryPlugin("claude-code-cli", library: "claude-code")
    static let apiKey = "sk-ant-test-key-for-descartes-0123456789"

    let server: ScriptedServer
    let home = TempDir("descartes-claude-home")
    /// claude's working directory: empty, so no repository or CLAUDE.md
    /// around it finds its way into the prompt.
    let work = TempDir("descartes-claude-work")
    let mark = ProcScan.newMark()
    let claude: String

    init() async throws {
        claude = try ClaudeBinary.require()
        server = try await ScriptedServer.start()
        try FileSystem.makeDirectories(home.file("tmp"))
    }

    /// What every test sets: offline, quiet, no tools, no retries.
    var environment: [String: String] {
        [
            "HOME": home.path, "ANTHROPIC_BASE_URL": server.url, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1", "DESCARTES_TEST_MARK": mark,
            // Its sockets (cc-socks/) go with the test's directory, not /tmp.
            "TMPDIR": home.file("tmp"),
        ]
    }

    func config(_ extra: [String: JSONValue] = [:]) -> [String: JSONValue] {
        var env = JSONObject()
        for (k, v) in environment.sorted(by: { $0.key < $1.key }) { env[k] = .string(v) }
        var c: [String: JSONValue] = [
            "command": .string(claude), "api_key": .string(Self.apiKey), "env": .object(env), "tools": [],
            "max_retries": 0, "kill_grace_ms": 1000, "cwd": .string(work.path),
            // Claude Code's start-up takes a core-second; the rest of the
            // suite's timed tests keep the CPU first.
            "nice": 10,
        ]
        for (k, v) in extra { c[k] = v }
        return c
    }

    func backend(_ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        try Self.plugins.factory().create("claude-code-cli", config: config(extra))
    }

    static func sse(_ name: String, delayMs: Int = 0) throws -> ScriptedServer.Response {
        .stream(try TestEnv.transcript("anthropic/\(name)"), split: delayMs > 0 ? "lines" : nil, chunkDelayMs: delayMs)
    }

    static func error(_ status: Int, type: String, _ message: String) -> ScriptedServer.Response {
        .json(["type": "error", "error": ["type": .string(type), "message": .string(message)]], status: status)
    }

    func serve(_ responses: [ScriptedServer.Response]) async throws {
        try await server.script(["POST /v1/messages": responses])
    }

    /// The conversation of each request claude sent, as "role: text" lines,
    /// without the system entries and <system-reminder> parts Claude Code adds.
    func conversations() async throws -> [[String]] {
        try await server.requests().map { r in
            (r.json?["messages"]?.arrayValue ?? []).compactMap { m -> String? in
                let role = m["role"]?.stringValue ?? ""
                guard role != "system" else { return nil }
                let text: String
                switch m["content"] {
                case .string(let s)?: text = s
                case .array(let parts)?:
                    text = parts.compactMap { $0["text"]?.stringValue ?? $0["type"]?.stringValue }
                        .filter { !$0.hasPrefix("<system-reminder>") }.joined(separator: "|")
                default: text = ""
                }
                return "\(role): \(text)"
            }
        }
    }
}

@Suite(.serialized, .timeLimit(.minutes(5))) struct ClaudeCodeTests {
    @Test func anImageReachesTheAPIAsAnImageBlock() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse")])
        let b = try h.backend()
        let image = try ImageInput(bytes: ImageTests.png)
        let r = try await b.complete(ModelRequest(messages: [.user("What colour is this?", images: [image])], model: "claude-haiku-4-5"))
        #expect(r.content == "Hello")
        let seen = try await h.server.requests()
        #expect(seen.count == 1)
        let content = try #require(seen.first?.json?["messages"]?.arrayValue?.last?["content"]?.arrayValue)
        let blocks = content.filter { $0["type"] != "text" || $0["text"]?.stringValue?.hasPrefix("<system-reminder>") != true }
        #expect(blocks.first?["type"] == "image", "\(content)")
        #expect(blocks.first?["source"]?["media_type"] == "image/png")
        #expect(blocks.first?["source"]?["data"] == .string(ImageTests.pngBase64))
        #expect(blocks.last?["text"] == "What colour is this?")
        await b.shutdown()
    }

    @Test func plainCompletion() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse")])
        let b = try h.backend()
        let r = try await b.complete(ModelRequest(prompt: "say hi", model: "claude-haiku-4-5"))
        #expect(r.content == "Hello")
        #expect(r.finishReason == .stop)
        #expect(r.usage.inputTokens == 10 && r.usage.outputTokens == 4)
        #expect((r.costUSD ?? 0) > 0)  // claude's own price for the tokens
        #expect(r.model == "claude-haiku-4-5-20251001")
        #expect(r.id == "msg_01T8kTq7cYyYJeQ5DxcVUc6D")
        #expect(r.metadata["session_id"]?.stringValue?.count == 36)
        #expect(r.metadata["claude_code_version"]?.stringValue?.isEmpty == false)
        #expect(r.metadata["num_turns"] == 1)

        let seen = try await h.server.requests()
        #expect(seen.count == 1)
        #expect(seen[0].path == "/v1/messages" && seen[0].query.contains("beta=true"))
        #expect(seen[0].header("x-api-key") == ClaudeHarness.apiKey)
        #expect(seen[0].json?["model"] == "claude-haiku-4-5")
        #expect(seen[0].json?["stream"] == true)
        let tools = seen[0].json?["tools"]?.arrayValue ?? []
        #expect(tools.isEmpty)
        let conv0 = try await h.conversations()
        #expect(conv0 == [["user: say hi"]], "\(conv0)")
        await b.shutdown()
    }

    /// A response format is `--json-schema`: Claude Code gives the model a
    /// StructuredOutput tool with the schema as its input schema, and the
    /// tool's input (the result's `structured_output`) is the answer; the
    /// model's own text around the call is not.
    @Test func aJSONSchemaIsTheStructuredOutputToolAndItsInputIsTheAnswer() async throws {
        func event(_ name: String, _ data: JSONValue) -> String { "event: \(name)\ndata: \(data.jsonText)\n\n" }
        var sse = event("message_start", ["type": "message_start", "message": ["id": "msg_so", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001", "content": [], "stop_reason": nil, "usage": ["input_tokens": 10, "output_tokens": 1]]])
        sse += event("content_block_start", ["type": "content_block_start", "index": 0, "content_block": ["type": "text", "text": ""]])
        sse += event("content_block_delta", ["type": "content_block_delta", "index": 0, "delta": ["type": "text_delta", "text": "Here is Ada:"]])
        sse += event("content_block_stop", ["type": "content_block_stop", "index": 0])
        sse += event("content_block_start", ["type": "content_block_start", "index": 1, "content_block": ["type": "tool_use", "id": "toolu_so", "name": "StructuredOutput", "input": [:]]])
        sse += event("content_block_delta", ["type": "content_block_delta", "index": 1, "delta": ["type": "input_json_delta", "partial_json": #"{"name": "Ada", "age": 36}"#]])
        sse += event("content_block_stop", ["type": "content_block_stop", "index": 1])
        sse += event("message_delta", ["type": "message_delta", "delta": ["stop_reason": "tool_use", "stop_sequence": nil], "usage": ["output_tokens": 12]])
        sse += event("message_stop", ["type": "message_stop"])
        let h = try await ClaudeHarness()
        try await h.serve([.stream(sse)])
        let b = try h.backend()
        let schema: JSONValue = ["type": "object", "properties": ["name": ["type": "string"], "age": ["type": "integer"]], "required": ["name", "age"]]
        var request = ModelRequest(prompt: "Ada, 36", model: "claude-haiku-4-5")
        request.responseFormat = .jsonSchema(name: "person", schema: schema)
        let seen = await Observed.stream(b, request)
        let r = try #require(seen.response, "\(seen)")
        #expect(r.content == #"{"name":"Ada","age":36}"#)
        #expect(seen.text == r.content)  // one delta, at the end
        let tools = try await h.server.requests().first?.json?["tools"]?.arrayValue ?? []
        #expect(tools.first { $0["name"] == "StructuredOutput" }?["input_schema"] == schema, "\(tools.map { $0["name"] })")
        // Sessions keep one process, started with one schema: refused.
        request.options = ["session": true]
        let e = await providerError { _ = try await b.complete(request) }
        #expect(e?.kind == .unsupportedFeature)
        await b.shutdown()
    }

    @Test func streamedCompletionDeliversReasoningAndTextAsItArrives() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-thinking.sse", delayMs: 20)])
        let b = try h.backend()
        let c = await collect(b.stream(ModelRequest(prompt: "two pelican names")))
        let r = try #require(c.response, "\(String(describing: c.error))")
        #expect(r.content == "1. **Pouch** - references their iconic bill pouch\n2. **Pelé** - playful take on \"pelican\"")
        #expect(r.reasoning?.hasPrefix("The user wants two names for a pet pelican") == true)
        #expect(r.usage.outputTokens == 133)
        // Deltas, not one block at the end: the SSE had several text deltas.
        #expect(c.textDeltas >= 2, "\(c.events)")
        let firstText = c.events.firstIndex { if case .textDelta = $0 { return true } else { return false } }
        let firstReasoning = c.events.firstIndex { if case .reasoningDelta = $0 { return true } else { return false } }
        #expect(firstReasoning != nil && firstText != nil && firstReasoning! < firstText!)
        await b.shutdown()
    }

    @Test func textReachesTheCallerBeforeTheAnswerEnds() async throws {
        let h = try await ClaudeHarness()
        // The server sends the first text delta, then stalls for good.
        let body = try TestEnv.transcript("anthropic/messages-stream-text.sse")
        let cut = try #require(body.firstRange(of: "event: content_block_stop")).lowerBound
        try await h.serve([.stream(body).with(["hang_after": .integer(body[..<cut].utf8.count)])])
        let b = try h.backend()
        var request = ModelRequest(prompt: "say hi")
        request.deadlines.total = .seconds(30)
        var got: String? = nil
        for try await event in b.stream(request) {
            if case .textDelta(let t) = event {
                got = t
                break  // the request is still open: the server is stalled
            }
        }
        #expect(got == "Hello")
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty }, "still running: \(ProcScan.marked(h.mark))")
        await b.shutdown()
    }

    @Test func aConversationIsReplayedInOrder() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse")])
        let b = try h.backend()
        let r = try await b.complete(
            ModelRequest(messages: [
                .user("first question"),
                .assistant("let me check", toolCalls: [ToolCall(id: "toolu_1", name: "Read", arguments: #"{"file_path":"/x"}"#)]),
                .tool(callID: "toolu_1", "file body"),
                .assistant("first answer"),
                .user("second question"),
                .user("and a third"),
            ]))
        #expect(r.content == "Hello", "\(r)")
        let conv = try await h.conversations()
        #expect(conv.count == 1)
        // History through the transcript, the two new user messages as one
        // message of two text blocks (one turn).
        #expect(
            conv.first == [
                "user: first question", "assistant: let me check|tool_use", "user: tool_result", "assistant: first answer",
                "user: second question|and a third",
            ], "\(conv)")
        await b.shutdown()
    }

    @Test func aSessionKeepsOneProcessAcrossTurns() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse"), ClaudeHarness.sse("messages-stream-stop-sequence.sse")])
        let b = try h.backend()
        var first = ModelRequest(prompt: "first question")
        first.options = ["session": true]
        let r1 = try await b.complete(first)
        let id = try #require(r1.metadata["session_id"]?.stringValue)
        #expect(r1.content == "Hello")
        #expect(r1.metadata["session_spawned"] == true)
        #expect(r1.metadata["session_turn"] == 1)
        let pids = ProcScan.marked(h.mark)
        #expect(!pids.isEmpty)  // the process waits for the next turn

        // An agent sends the whole conversation again; only the new user
        // message goes to the live process.
        var second = ModelRequest(messages: [.user("first question"), .assistant(r1.content), .user("second question")])
        second.options = ["session_id": .string(id), "end_session": true]
        let c = await collect(b.stream(second))
        let r2 = try #require(c.response, "\(String(describing: c.error))")
        #expect(r2.content.hasPrefix("\ndef pelican():"))
        #expect(r2.metadata["session_id"] == .string(id))
        #expect(r2.metadata["session_spawned"] == false)
        #expect(r2.metadata["session_turn"] == 2)
        #expect(c.textDeltas >= 1)
        let conv = try await h.conversations()
        #expect(conv == [
            ["user: first question"],
            ["user: first question", "assistant: Hello", "user: second question"],
        ], "\(conv)")
        // end_session: the process exits.
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty }, "still running: \(ProcScan.marked(h.mark))")

        // The id again, the process gone: a new process under the same id,
        // the conversation replayed from a transcript.
        var third = ModelRequest(messages: second.messages + [.assistant(r2.content), .user("third question")])
        third.options = ["session_id": .string(id)]
        let r3 = try await b.complete(third)
        #expect(r3.metadata["session_id"] == .string(id))
        #expect(r3.metadata["session_spawned"] == true)
        #expect(r3.metadata["session_restarted"] == true)
        let replayed = try await h.conversations().last ?? []
        #expect(replayed.first == "user: first question")
        #expect(replayed.dropFirst().first == "assistant: Hello")
        #expect(replayed.last == "user: third question", "\(replayed)")
        #expect(replayed.count == 5)
        await b.shutdown()
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty })
    }

    @Test func aCancelledSessionTurnLeavesTheSessionUsable() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse"), .hang, ClaudeHarness.sse("messages-stream-text.sse")])
        let b = try h.backend()
        var first = ModelRequest(prompt: "one")
        first.options = ["session": true]
        let id = try #require(try await b.complete(first).metadata["session_id"]?.stringValue)

        var second = ModelRequest(prompt: "two")
        second.options = ["session_id": .string(id)]
        second.deadlines.total = .seconds(3)
        let e = await providerError { _ = try await b.complete(second) }
        #expect(e?.kind == .timeout)

        // The interrupt ended the turn; the same process answers the next
        // one, sent at once: it waits for the interrupt's result instead of
        // being refused as busy.
        var third = ModelRequest(prompt: "three")
        third.options = ["session_id": .string(id)]
        let r3: ModelResponse?
        do { r3 = try await b.complete(third) } catch {
            Issue.record("the turn after a timed-out one failed: \(error)")
            r3 = nil
        }
        #expect(r3?.content == "Hello")
        #expect(r3?.metadata["session_spawned"] == false)
        #expect(r3?.metadata["session_turn"] == 3)
        await b.shutdown()
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty })
    }

    /// Two first turns for one new session_id at once: one process under
    /// that id, the turns one after the other in it, both answered.
    @Test func concurrentFirstTurnsOfANewSessionShareOneProcess() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse"), ClaudeHarness.sse("messages-stream-text.sse")])
        let b = try h.backend()
        // A new version-4 UUID (Claude Code's --session-id takes only those).
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255) }
        bytes[6] = bytes[6] & 0x0F | 0x40
        bytes[8] = bytes[8] & 0x3F | 0x80
        let hex = bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        let id = [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { r in
            String(hex.dropFirst(r.lowerBound).prefix(r.count))
        }.joined(separator: "-")
        func turn(_ text: String) -> ModelRequest {
            var r = ModelRequest(prompt: text)
            r.options = ["session_id": .string(id)]
            return r
        }
        let sampler = Task {
            var most = 0
            while !Task.isCancelled {
                most = max(most, ProcScan.marked(h.mark).filter { pid in
                    (ProcScan.read("/proc/\(pid)/cmdline").map { String(decoding: $0, as: UTF8.self) } ?? "").contains(id)
                }.count)
                try? await Task.sleep(for: .milliseconds(20))
            }
            return most
        }
        async let a = b.complete(turn("one"))
        async let c = b.complete(turn("two"))
        let (ra, rc) = try await (a, c)
        sampler.cancel()
        #expect(ra.content == "Hello" && rc.content == "Hello")
        #expect(Set([ra.metadata["session_turn"], rc.metadata["session_turn"]]) == [1, 2])
        #expect([ra, rc].filter { $0.metadata["session_spawned"] == true }.count == 1)
        #expect(await sampler.value == 1)
        // Both went to the one process, which the backend still tracks:
        // shutdown ends it.
        #expect(try await h.server.requests().count == 2)
        await b.shutdown()
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty })
    }

    @Test(arguments: [
        (401, "authentication_error", ProviderError.Kind.authentication),
        (429, "rate_limit_error", .rateLimited),
        (500, "api_error", .providerUnavailable),
        (400, "invalid_request_error", .api),
    ])
    func serverErrorsSurfaceAsTheirKind(status: Int, type: String, kind: ProviderError.Kind) async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.error(status, type: type, "scripted \(status) failure")])
        let b = try h.backend()
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "x")) }
        #expect(e?.kind == kind, "\(String(describing: e))")
        #expect(e?.status == status)
        #expect(e?.providerType == type)
        #expect(e?.message.contains("scripted \(status) failure") == true, "\(String(describing: e))")
        #expect(e?.message.contains(ClaudeHarness.apiKey) == false)
        await b.shutdown()
    }

    @Test func aHungServerEndsAtTheDeadlineWithTheProcessGroupGone() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([.hang])
        let b = try h.backend()
        var request = ModelRequest(prompt: "x")
        request.deadlines.total = .seconds(4)
        let task = Task { await collect(b.stream(request)) }
        // While it hangs: the key is in claude's environment, never its argv.
        #expect(await ProcScan.eventually { !ProcScan.marked(h.mark).isEmpty })
        for pid in ProcScan.marked(h.mark) {
            let argv = ProcScan.read("/proc/\(pid)/cmdline").map { String(decoding: $0, as: UTF8.self) } ?? ""
            #expect(!argv.contains(ClaudeHarness.apiKey))
            let env = ProcScan.read("/proc/\(pid)/environ").map { String(decoding: $0, as: UTF8.self) } ?? ""
            #expect(env.contains("ANTHROPIC_API_KEY=\(ClaudeHarness.apiKey)"))
        }
        let start = ContinuousClock.now
        let c = await task.value
        #expect(c.error?.kind == .timeout, "\(c.events) \(String(describing: c.error))")
        expectWithin(ContinuousClock.now - start, .seconds(15))
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty }, "still running: \(ProcScan.marked(h.mark))")
        await b.shutdown()
    }

    @Test func agentToolUseAndThinkingFromTheRealStream() async throws {
        let h = try await ClaudeHarness()
        // The model calls a tool Claude Code does not have; Claude Code
        // answers it with an error result and asks again.
        try await h.serve([ClaudeHarness.sse("messages-stream-thinking-tool-use.sse"), ClaudeHarness.sse("messages-stream-text.sse")])
        let b = try h.backend()
        let c = await collect(b.stream(ModelRequest(prompt: "version, then a joke")))
        let r = try #require(c.response, "\(String(describing: c.error))")
        #expect(r.content == "Hello")
        #expect(r.toolCalls.isEmpty)  // Claude Code's own tools are not the caller's
        #expect(r.finishReason == .stop)
        #expect(r.reasoning?.contains("fixed_version tool") == true)
        let uses = try #require(r.metadata["tool_uses"]?.arrayValue)
        #expect(uses.first?["name"] == "fixed_version")
        #expect(uses.first?["is_error"] == true)
        #expect(uses.first?["result"]?.stringValue?.contains("No such tool available") == true)
        #expect(r.usage.reasoningTokens == 53)
        #expect(c.notices.contains { $0.contains("claude used tool fixed_version") })
        #expect(try await h.server.requests().count == 2)

        // The turn limit: the answer so far, marked max_turns.
        try await h.server.reset()
        try await h.serve([ClaudeHarness.sse("messages-stream-thinking-tool-use.sse"), ClaudeHarness.sse("messages-stream-text.sse")])
        var limited = ModelRequest(prompt: "again")
        limited.options = ["max_turns": 1]
        let m = try await b.complete(limited)
        #expect(m.finishReason.rawValue == "max_turns")
        #expect(m.metadata["errors"]?[0]?.stringValue?.contains("maximum number of turns") == true)
        await b.shutdown()
    }

    /// The real claude under the default permission mode with -p: the model
    /// asks for Write, Claude Code refuses it (nobody to ask), and the
    /// answer says tool_denied with the denial in metadata; no file is made.
    @Test func aWriteTheRealClaudeRefusesIsToolDenied() async throws {
        let h = try await ClaudeHarness()
        let target = h.work.file("denied.txt")
        let input: JSONValue = ["file_path": .string(target), "content": "should not exist"]
        func event(_ name: String, _ data: JSONValue) -> String { "event: \(name)\ndata: \(data.jsonText)\n\n" }
        let toolUse = [
            event("message_start", ["type": "message_start", "message": ["id": "msg_w1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "content": [], "stop_reason": .null, "usage": ["input_tokens": 10, "output_tokens": 1]]]),
            event("content_block_start", ["type": "content_block_start", "index": 0, "content_block": ["type": "tool_use", "id": "toolu_w1", "name": "Write", "input": [:]]]),
            event("content_block_delta", ["type": "content_block_delta", "index": 0, "delta": ["type": "input_json_delta", "partial_json": .string(input.jsonText)]]),
            event("content_block_stop", ["type": "content_block_stop", "index": 0]),
            event("message_delta", ["type": "message_delta", "delta": ["stop_reason": "tool_use"], "usage": ["output_tokens": 20]]),
            event("message_stop", ["type": "message_stop"]),
        ].joined()
        try await h.serve([.stream(toolUse), ClaudeHarness.sse("messages-stream-text.sse")])
        let b = try h.backend(["tools": ["Write"]])
        let r = try await b.complete(ModelRequest(prompt: "write the file"))
        #expect(r.finishReason == .toolDenied, "\(r.metadata)")
        let denials = r.metadata["permission_denials"]?.arrayValue ?? []
        #expect(denials.first?["tool_name"]?.stringValue == "Write", "\(r.metadata)")
        #expect(!FileSystem.exists(target))
        await b.shutdown()
    }

    @Test func configurationAndRequestReachClaude() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse")])
        let b = try h.backend([
            "tools": ["Read", "Grep"], "model": "claude-sonnet-4-5", "system_prompt_mode": "replace",
            "append_system_prompt": "APPENDED-BY-CONFIG",
        ])
        var request = ModelRequest(messages: [.system("REPLACED-BY-REQUEST"), .user("hi")])
        request.options = ["permission_mode": "plan"]
        _ = try await b.complete(request)
        let body = try #require(try await h.server.requests().first?.json)
        #expect(body["model"] == "claude-sonnet-4-5")
        let tools = (body["tools"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
        #expect(tools.contains("Read") && tools.contains("Grep") && !tools.contains("Bash"), "\(tools)")
        let system = body["system"]?.jsonText ?? ""
        #expect(system.contains("REPLACED-BY-REQUEST") && system.contains("APPENDED-BY-CONFIG"))
        // replace: Claude Code's own agent prompt is gone.
        #expect(!system.contains("# Harness"))
        await b.shutdown()
    }

    /// Health is one real turn: healthy when the API answers, unhealthy
    /// with the API's error kind when it refuses (the version alone said
    /// healthy against a dead endpoint).
    @Test func healthCheckAndModelsFromTheManifest() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([
            ClaudeHarness.sse("messages-stream-text.sse"),
            ClaudeHarness.error(401, type: "authentication_error", "invalid x-api-key"),
        ])
        let b = try h.backend()
        let health = try await b.healthCheck()
        #expect(health.message.contains("(Claude Code)"), "\(health)")
        #expect(health.message.contains("answered a one-turn request"), "\(health)")
        #expect(health.details["checked"] == "turn")
        #expect(try await h.server.requests().count == 1)
        let e = await providerError { _ = try await b.healthCheck() }
        #expect(e?.kind == .authentication, "\(String(describing: e))")
        #expect(e?.message.contains("the health turn failed") == true, "\(String(describing: e))")
        // Version only, when asked, and it says so.
        let versionOnly = try h.backend(["health_turn": false])
        let v = try await versionOnly.healthCheck()
        #expect(v.message.contains("only `claude --version` was checked"), "\(v)")
        await versionOnly.shutdown()
        let models = try await b.listModels()
        #expect(models.map(\.id).contains("sonnet"))
        #expect(models.first?.details["source"] == "manifest")
        await b.shutdown()
    }

    @Test func theCLIStreamsTextAsItArrives() async throws {
        let h = try await ClaudeHarness()
        let env = h.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        let common = [
            "complete", "-p", "claude-code-cli", "--stream", "--set", "command=\(h.claude)", "--set", "env=\(env)",
            "--set", "cwd=\(h.work.path)", "--set", "nice=10",
            "--set", "tools=", "--set", "max_retries=0",
        ]
        let cliEnv = ["DESCARTES_PLUGIN_PATH": ClaudeHarness.plugins.path, "ANTHROPIC_API_KEY": ClaudeHarness.apiKey]

        try await h.serve([ClaudeHarness.sse("messages-stream-thinking.sse", delayMs: 10)])
        let ok = await Proc.descartes(common + ["two pelican names"], env: cliEnv)
        #expect(ok.status == 0, "\(ok)")
        #expect(ok.stdout == "1. **Pouch** - references their iconic bill pouch\n2. **Pelé** - playful take on \"pelican\"\n")

        // A stream that stalls after its first text: the text is on stdout
        // although the request then times out.
        try await h.server.reset()
        let body = try TestEnv.transcript("anthropic/messages-stream-text.sse")
        let cut = try #require(body.firstRange(of: "event: content_block_stop")).lowerBound
        try await h.serve([.stream(body).with(["hang_after": .integer(body[..<cut].utf8.count)])])
        let stalled = await Proc.descartes(common + ["--timeout", "4", "say hi"], env: cliEnv)
        #expect(stalled.stdout.hasPrefix("Hello"), "\(stalled)")
        #expect(stalled.status == 75, "\(stalled)")  // timed out
        #expect(!stalled.stderr.contains(ClaudeHarness.apiKey))
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty })
    }
}

/// The stream parser on recorded Claude Code output (Tests/Fixtures/claude-code)
/// for what the real binary cannot be made to do on demand.
@Suite struct ClaudeStreamReplayTests {
    static let fixtures = FileSystem.join(TestEnv.root, "Tests/Fixtures/claude-code")

    func backend(_ env: [String: String]) throws -> any ModelBackend {
        var e: JSONObject = ["REPLAY_FILE": .string(FileSystem.join(Self.fixtures, "thinking-tool-text.jsonl"))]
        for (k, v) in env { e[k] = .string(v) }
        return try ClaudeHarness.plugins.factory().create(
            "claude-code-cli", config: ["command": .string(FileSystem.join(Self.fixtures, "replay.sh")), "env": .object(e)])
    }

    @Test func theRecordedStreamParses() async throws {
        let b = try backend([:])
        let c = await collect(b.stream(ModelRequest(prompt: "x")))
        let r = try #require(c.response, "\(String(describing: c.error))")
        #expect(r.content == "Hello")
        #expect(r.reasoning?.hasPrefix("The user wants me to:") == true)
        #expect(r.usage == Usage(inputTokens: 608, outputTokens: 96, reasoningTokens: 53))
        #expect(r.costUSD == 0.004352)
        #expect(r.metadata["tool_uses"]?[0]?["name"] == "fixed_version")
        await b.shutdown()
    }

    @Test func aStreamWithoutItsResultIsStreamClosed() async throws {
        let b = try backend(["REPLAY_DROP_RESULT": "1"])
        let c = await collect(b.stream(ModelRequest(prompt: "x")))
        #expect(c.text == "Hello")  // streamed before the end...
        #expect(c.error?.kind == .streamClosed, "\(String(describing: c.error))")  // ...but not a silent success
        #expect(c.error?.message.contains("without a result event") == true)
        let failed = try backend(["REPLAY_DROP_RESULT": "1", "REPLAY_EXIT": "143"])
        let e = await providerError { _ = try await failed.complete(ModelRequest(prompt: "x")) }
        #expect(e?.kind == .process)
        #expect(e?.status == 143)
    }

    /// Recorded from the real binary (Tests/Fixtures/claude-code/README.md):
    /// the API unreachable (ECONNREFUSED) or the connection reset
    /// (ECONNRESET) is `provider_unavailable`, retryable when nothing ran,
    /// not `api` with `provider_type: "success"`.
    @Test(arguments: ["connection-refused.jsonl", "connection-reset.jsonl"])
    func aConnectionFailureIsProviderUnavailable(_ recording: String) async throws {
        let b = try ClaudeHarness.plugins.factory().create(
            "claude-code-cli",
            config: [
                "command": .string(FileSystem.join(Self.fixtures, "replay.sh")),
                "env": ["REPLAY_FILE": .string(FileSystem.join(Self.fixtures, recording)), "REPLAY_EXIT": "1"],
            ])
        let e = try #require(await providerError { _ = try await b.complete(ModelRequest(prompt: "x")) })
        #expect(e.kind == .providerUnavailable, "\(e)")
        #expect(e.providerType == "connection_failed")
        #expect(e.message.contains(recording == "connection-refused.jsonl" ? "ECONNREFUSED" : "ECONNRESET"), "\(e)")
        #expect(e.sideEffects.isEmpty)
        #expect(e.isRetryable)
        await b.shutdown()
    }

    @Test func nonJSONLinesBecomeCleanDiagnostics() async throws {
        let b = try backend(["REPLAY_NOISE": "1"])
        let c = await collect(b.stream(ModelRequest(prompt: "x")))
        #expect(c.response?.content == "Hello")
        #expect(c.notices.contains("claude: warning: config file ignored"), "\(c.notices)")
        #expect(!c.notices.contains { $0.contains("\u{1B}") })
        // Noise without a result: the diagnostics are in the error.
        let cut = try backend(["REPLAY_NOISE": "1", "REPLAY_DROP_RESULT": "1"])
        let e = await providerError { _ = try await cut.complete(ModelRequest(prompt: "x")) }
        #expect(e?.message.contains("warning: config file ignored") == true, "\(String(describing: e))")
    }
}
