import Descartes
import Glibc
import Testing
import DescartesSupport

/// Mistral's real coding agent in ACP mode (`vibe-acp`, PyPI `mistral-vibe`),
/// driven by the acp plugin, its model a scripted OpenAI-compatible server on
/// 127.0.0.1. mistral-vibe needs Python 3.12 or later, which Debian 12's own
/// python3 (3.11) is not: support/deps.sh installs it into a venv under the
/// test cache when it finds a Python 3.12+ (on PATH or under pyenv), and the
/// suite runs `vibe-acp` from there, or from DESCARTES_VIBE_ACP when set.
/// Without either it is skipped, and says why.
enum VibeBinary {
    static let path: String? = {
        if let p = Environment.get("DESCARTES_VIBE_ACP"), !p.isEmpty { return p }
        let cache = Environment.get("XDG_CACHE_HOME").flatMap { $0.hasPrefix("/") ? $0 : nil } ?? ((Environment.get("HOME") ?? "/root") + "/.cache")
        let installed = cache + "/descartes-test/vibe-venv/bin/vibe-acp"
        return FileSystem.exists(installed) ? installed : nil
    }()
}

final class VibeHarness: @unchecked Sendable {
    let server: ScriptedServer
    let home = TempDir("descartes-vibe-home")
    let work = TempDir("descartes-vibe-work")
    let mark = ProcScan.newMark()

    init() async throws {
        server = try await ScriptedServer.start()
        try FileSystem.makeDirectories(home.file("vibe"))
        // The scripted server is the model; no telemetry (it would try the network).
        _ = home.write(
            "vibe/config.toml",
            """
            active_model = "scripted"
            enable_telemetry = false
            [[providers]]
            name = "loopback"
            api_base = "\(server.url)/v1"
            api_key_env_var = ""
            [[models]]
            name = "scripted-model"
            provider = "loopback"
            alias = "scripted"
            """)
    }

    func backend() throws -> any ModelBackend {
        try ACPHarness.plugins.factory().create(
            "acp",
            config: [
                "command": .string(try #require(VibeBinary.path)), "cwd": .string(work.path), "kill_grace_ms": 1000,
                "env": ["VIBE_HOME": .string(home.file("vibe")), "HOME": .string(home.path), "DESCARTES_TEST_MARK": .string(mark)],
            ])
    }

    static func chunk(_ delta: JSONValue, finish: String? = nil) -> String {
        let c: JSONValue = [
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "scripted-model",
            "choices": [["index": 0, "delta": delta, "finish_reason": finish.map { JSONValue.string($0) } ?? JSONValue.null]],
        ]
        return "data: \(c.jsonText)\n\n"
    }

    /// An answer, with the usage chunk `stream_options.include_usage` asks for.
    static func text(_ t: String) -> ScriptedServer.Response {
        let usage: JSONValue = [
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "scripted-model", "choices": [],
            "usage": ["prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15],
        ]
        return .stream(chunk(["role": "assistant", "content": .string(t)]) + chunk([:], finish: "stop") + "data: \(usage.jsonText)\n\n" + "data: [DONE]\n\n")
    }

    static func bash(_ command: String) -> ScriptedServer.Response {
        let call: JSONValue = [
            "tool_calls": [["index": 0, "id": "call_1", "type": "function", "function": ["name": "bash", "arguments": .string(JSONValue.object(["command": .string(command)]).jsonText)]]]
        ]
        return .stream(chunk(["role": "assistant", "content": .null]) + chunk(call) + chunk([:], finish: "tool_calls") + "data: [DONE]\n\n")
    }

    var gone: Bool { ProcScan.marked(mark).isEmpty }
}

@Suite(
    .serialized, .timeLimit(.minutes(5)),
    .enabled(if: VibeBinary.path != nil, "no vibe-acp: support/deps.sh test installs it where it finds a Python 3.12+, or set DESCARTES_VIBE_ACP"))
struct VibeACPTests {
    @Test func aTurnAndAnErrorThroughTheRealAgent() async throws {
        let h = try await VibeHarness()
        try await h.server.script(["POST /v1/chat/completions": [VibeHarness.text("Hello from the loopback model")]])
        let b = try h.backend()
        let c = await collect(b.stream(ModelRequest(prompt: "Say hello")))
        let r = try #require(c.response, "\(String(describing: c.error))")
        #expect(r.content == "Hello from the loopback model")
        #expect(r.finishReason == .stop)
        // The model's usage, as vibe reports it in PromptResponse.usage.
        #expect(r.usage.inputTokens == 11 && r.usage.outputTokens == 4 && !r.usage.estimated, "\(r.usage)")
        #expect(r.metadata["agent"]?.stringValue?.hasPrefix("@mistralai/mistral-vibe") == true)
        #expect(try await h.server.requests().first?.body.contains("Say hello") == true)

        try await h.server.script([
            "POST /v1/chat/completions": [.json(#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#, status: 401)]
        ])
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "again")) }
        #expect(e?.kind == .authentication, "\(String(describing: e))")
        await b.shutdown()
        #expect(await ProcScan.eventually { h.gone })
    }

    /// vibe asks permission before bash (its default mode approves edits
    /// only); the request's policy denies it: nothing runs, the model is
    /// told, the turn ends tool_denied.
    @Test func anApprovalAskedAndDenied() async throws {
        let h = try await VibeHarness()
        try await h.server.script([
            "POST /v1/chat/completions": [VibeHarness.bash("touch made-by-vibe.txt"), VibeHarness.text("I was not allowed to.")]
        ])
        let b = try h.backend()
        let asked = Lock<[ApprovalRequest]>([])
        var r = ModelRequest(prompt: "Create a file")
        r.approval = .handler { q in
            asked.withLock { $0.append(q) }
            return .deny(reason: "not in this test")
        }
        let out = try await b.complete(r)
        #expect(out.finishReason == .toolDenied, "\(out)")
        #expect(out.content.contains("I was not allowed to."))
        let q = try #require(asked.withLock { $0.first })
        #expect(q.input["command"] == "touch made-by-vibe.txt", "\(q)")
        #expect(!FileSystem.exists(h.work.file("made-by-vibe.txt")))
        #expect(try await h.server.requests().count >= 2)
        await b.shutdown()
        #expect(await ProcScan.eventually { h.gone })
    }

    /// A two-turn session: one vibe process holds the conversation; the
    /// second turn sends only its own prompt, and the model sees both turns
    /// (vibe keeps the history, not the plugin).
    @Test func aTwoTurnSessionKeepsOneProcess() async throws {
        let h = try await VibeHarness()
        try await h.server.script([
            "POST /v1/chat/completions": [VibeHarness.text("First answer"), VibeHarness.text("Second answer")]
        ])
        let b = try h.backend()
        var first = ModelRequest(prompt: "Remember the word teapot")
        first.options = ["session": true]
        let r1 = try await b.complete(first)
        #expect(r1.content == "First answer")
        let id = try #require(r1.metadata["session_id"]?.stringValue)
        #expect(r1.metadata["session_spawned"] == true)
        var second = ModelRequest(prompt: "Which word was it?")
        second.options = ["session_id": .string(id), "end_session": true]
        let r2 = try await b.complete(second)
        #expect(r2.content == "Second answer")
        #expect(r2.metadata["session_spawned"] == false, "\(r2.metadata)")
        // vibe also asks the model for a title after the first turn, on the
        // same route (the last scripted answer repeats); the turns are the
        // requests without that instruction.
        let turns = try await h.server.requests().map(\.body).filter { !$0.contains("Respond with ONLY the title") }
        #expect(turns.count == 2, "\(turns.map { String($0.suffix(300)) })")
        // The second turn's request carries the first turn, which only the
        // agent's own session could have kept: the plugin sent one prompt.
        #expect(turns.last?.contains("Remember the word teapot") == true && turns.last?.contains("First answer") == true)
        await b.shutdown()
        #expect(await ProcScan.eventually { h.gone })
    }

    /// health runs one real turn through vibe: healthy when its model
    /// answers, unhealthy with the error's kind when the model refuses the key.
    @Test func healthRunsARealTurn() async throws {
        let h = try await VibeHarness()
        try await h.server.script(["POST /v1/chat/completions": [VibeHarness.text("OK")]])
        let b = try h.backend()
        let report = try await b.healthCheck()
        #expect(report.message.contains("answered initialize, session/new and a one-turn request"), "\(report.message)")
        #expect(try await h.server.requests().contains { $0.body.contains("Reply with the single word OK.") })
        try await h.server.script([
            "POST /v1/chat/completions": [.json(#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#, status: 401)]
        ])
        let e = await providerError { _ = try await b.healthCheck() }
        #expect(e?.kind == .authentication && e?.message.hasPrefix("the health turn failed: ") == true, "\(String(describing: e))")
        await b.shutdown()
        #expect(await ProcScan.eventually { h.gone })
    }

    @Test func cancellationLeavesNothingRunning() async throws {
        let h = try await VibeHarness()
        try await h.server.script(["POST /v1/chat/completions": [.hang]])
        let b = try h.backend()
        let task = Task { await collect(b.stream(ModelRequest(prompt: "Take your time"))) }
        var asked = false
        for _ in 0..<600 where !asked {
            asked = ((try? await h.server.requests()) ?? []).count >= 1
            if !asked { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(asked)
        task.cancel()
        #expect(await task.value.error?.kind == .cancelled)
        #expect(await ProcScan.eventually { h.gone }, "still running: \(ProcScan.marked(h.mark))")
        await b.shutdown()
    }
}
