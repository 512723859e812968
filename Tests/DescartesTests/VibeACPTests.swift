import Descartes
import Glibc
import Testing
import DescartesSupport

/// Mistral's real coding agent in ACP mode (`vibe-acp`, PyPI `mistral-vibe`),
/// driven by the acp plugin, its model a scripted OpenAI-compatible server on
/// 127.0.0.1. mistral-vibe needs Python 3.12 or later, which Debian 12 (and
/// so support/deps.sh) does not have: the suite runs only where
/// DESCARTES_VIBE_ACP names a vibe-acp (`python3.12 -m venv v &&
/// v/bin/pip install mistral-vibe==3.0.2`, then DESCARTES_VIBE_ACP=v/bin/vibe-acp).
enum VibeBinary {
    static let path: String? = Environment.get("DESCARTES_VIBE_ACP").flatMap { $0.isEmpty ? nil : $0 }
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

    static func text(_ t: String) -> ScriptedServer.Response {
        .stream(chunk(["role": "assistant", "content": .string(t)]) + chunk([:], finish: "stop") + "data: [DONE]\n\n")
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
    .enabled(if: VibeBinary.path != nil, "set DESCARTES_VIBE_ACP to a vibe-acp (mistral-vibe needs Python 3.12)"))
struct VibeACPTests {
    @Test func aTurnAndAnErrorThroughTheRealAgent() async throws {
        let h = try await VibeHarness()
        try await h.server.script(["POST /v1/chat/completions": [VibeHarness.text("Hello from the loopback model")]])
        let b = try h.backend()
        let c = await collect(b.stream(ModelRequest(prompt: "Say hello")))
        let r = try #require(c.response, "\(String(describing: c.error))")
        #expect(r.content == "Hello from the loopback model")
        #expect(r.finishReason == .stop)
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
