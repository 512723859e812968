import Descartes
import Testing
import DescartesSupport

/// The real claude asks the caller before a tool (`--permission-prompt-tool
/// stdio`: can_use_tool control requests) when the request carries an
/// approval policy (ABI 1.2); the scripted model asks for Bash.
@Suite(.serialized, .timeLimit(.minutes(5))) struct ClaudeApprovalTests {
    static func sse(_ events: [JSONValue]) -> String {
        events.map { "event: \($0["type"]!.stringValue!)\ndata: \($0.jsonText)\n\n" }.joined()
    }

    static func message(_ id: String) -> JSONValue {
        [
            "id": .string(id), "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
            "stop_reason": .null, "stop_sequence": .null, "usage": ["input_tokens": 10, "output_tokens": 1],
        ]
    }

    /// A model turn asking for Bash with `command`.
    static func bash(_ command: String) -> ScriptedServer.Response {
        let input = JSONValue.object(["command": .string(command), "description": "make a file"]).jsonText
        return .stream(
            sse([
                ["type": "message_start", "message": message("msg_1")],
                ["type": "content_block_start", "index": 0, "content_block": ["type": "tool_use", "id": "toolu_1", "name": "Bash", "input": [:]]],
                ["type": "content_block_delta", "index": 0, "delta": ["type": "input_json_delta", "partial_json": .string(input)]],
                ["type": "content_block_stop", "index": 0],
                ["type": "message_delta", "delta": ["stop_reason": "tool_use", "stop_sequence": .null], "usage": ["output_tokens": 5]],
                ["type": "message_stop"],
            ]))
    }

    static func text(_ t: String) -> ScriptedServer.Response {
        .stream(
            sse([
                ["type": "message_start", "message": message("msg_2")],
                ["type": "content_block_start", "index": 0, "content_block": ["type": "text", "text": ""]],
                ["type": "content_block_delta", "index": 0, "delta": ["type": "text_delta", "text": .string(t)]],
                ["type": "content_block_stop", "index": 0],
                ["type": "message_delta", "delta": ["stop_reason": "end_turn", "stop_sequence": .null], "usage": ["output_tokens": 3]],
                ["type": "message_stop"],
            ]))
    }

    @Test func anApprovalAskedAndDenied() async throws {
        let h = try await ClaudeHarness()
        let target = h.work.file("made-by-claude.txt")
        try await h.serve([Self.bash("touch \(target)"), Self.text("I could not.")])
        let b = try h.backend(["tools": ["Bash"]])
        let asked = Lock<[ApprovalRequest]>([])
        var r = ModelRequest(prompt: "make a file")
        r.approval = .handler { q in
            asked.withLock { $0.append(q) }
            return .deny(reason: "not in this test")
        }
        let out = try await b.complete(r)
        #expect(out.finishReason == .toolDenied, "\(out)")
        #expect(out.content == "I could not.")
        #expect(out.metadata["permission_denials"]?[0]?["tool_name"] == "Bash")
        let q = try #require(asked.withLock { $0.first })
        #expect(q.tool == "Bash" && q.subject == "touch \(target)")
        #expect(!FileSystem.exists(target))
        // The model was told why.
        let second = try await h.server.requests().last?.body ?? ""
        #expect(second.contains("not in this test"), "\(second.prefix(2000))")
        await b.shutdown()
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty })
    }

    @Test func aRuleAllowsAndTheToolRuns() async throws {
        let h = try await ClaudeHarness()
        let target = h.work.file("allowed.txt")
        try await h.serve([Self.bash("touch \(target)"), Self.text("Done.")])
        let b = try h.backend(["tools": ["Bash"]])
        var r = ModelRequest(prompt: "make a file")
        r.approval = try .rules(["Bash(touch *)"])
        let out = try await b.complete(r)
        #expect(out.finishReason == .stop, "\(out)")
        #expect(FileSystem.exists(target))
        await b.shutdown()
    }

    /// A session's process always runs with `--permission-prompt-tool
    /// stdio`, and each turn is asked under its own policy: turn 1 denied
    /// (nothing runs), turn 2 allowed by a rule (it runs once), turn 3
    /// without a policy denied as the session's permission mode would.
    /// One process for all three; no command runs twice.
    @Test func aSessionAsksEachTurnUnderItsOwnPolicy() async throws {
        let h = try await ClaudeHarness()
        let log = h.work.file("session-effects.log")
        let command = "echo ran >> \(log)"
        try await h.serve([
            Self.bash(command), Self.text("Not allowed."), Self.bash(command), Self.text("Appended."), Self.bash(command), Self.text("Not again."),
        ])
        let b = try h.backend(["tools": ["Bash"]])
        let asked = Lock<[ApprovalRequest]>([])
        var first = ModelRequest(prompt: "append a line")
        first.options = ["session": true]
        first.approval = .handler { q in
            asked.withLock { $0.append(q) }
            return .deny(reason: "turn one says no")
        }
        let r1 = try await b.complete(first)
        #expect(r1.finishReason == .toolDenied, "\(r1.metadata)")
        #expect(r1.content == "Not allowed.")
        #expect(r1.metadata["permission_denials"]?[0]?["reason"] == "turn one says no", "\(r1.metadata)")
        #expect(asked.withLock { $0.map(\.subject) } == [command])
        #expect(!FileSystem.exists(log), "the denied command must not run")
        let id = try #require(r1.metadata["session_id"]?.stringValue)

        var second = ModelRequest(messages: [.user("append a line"), .assistant(r1.content), .user("now you may")])
        second.options = ["session_id": .string(id)]
        second.approval = try .rules(["Bash(echo ran *)"])
        let r2 = try await b.complete(second)
        #expect(r2.finishReason == .stop, "\(r2.metadata)")
        #expect(r2.content == "Appended.")
        #expect(r2.metadata["session_spawned"] == false, "one process for the session")
        #expect(r2.metadata["permission_denials"] == nil, "turn one's denial is not turn two's: \(r2.metadata)")
        #expect(CodexCLITests.lines(log) == 1)

        var third = ModelRequest(messages: [.user("append a line"), .assistant("Appended."), .user("once more")])
        third.options = ["session_id": .string(id)]
        let r3 = try await b.complete(third)
        #expect(r3.finishReason == .toolDenied, "\(r3.metadata)")
        let reason = r3.metadata["permission_denials"]?[0]?["reason"]?.stringValue ?? ""
        #expect(reason.contains("permission_mode 'default'"), "\(r3.metadata)")
        #expect(CodexCLITests.lines(log) == 1, "nothing ran twice")
        #expect(try await h.server.requests().count == 6)
        await b.shutdown()
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty })
    }
}
