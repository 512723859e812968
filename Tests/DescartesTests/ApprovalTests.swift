import Descartes
import Testing

/// The approval policy's own rules (ABI 1.2); the plugins' use of it is in
/// ACPTests.
@Suite struct ApprovalTests {
    @Test func rulesMatchToolOrKindAndTheSubject() async throws {
        let p = try ApprovalPolicy.rules(["Bash(git *)", "Read", "execute(ls ?)"])
        func decide(_ tool: String, _ input: JSONValue, kind: String? = nil) async -> Bool {
            await p.decide(ApprovalRequest(id: "1", tool: tool, input: input, kind: kind)).allowed
        }
        #expect(await decide("Bash", ["command": "git status"]))
        #expect(await decide("Bash", ["command": "git"]) == false)  // "git *" needs the space
        #expect(await decide("Bash", ["command": "rm -rf /"]) == false)
        #expect(await decide("Read", ["file_path": "/etc/passwd"]))
        #expect(await decide("append line", ["command": "ls a"], kind: "execute"))
        #expect(await decide("append line", ["command": "ls ab"], kind: "execute") == false)
        #expect(await decide("Write", [:]) == false)
        let d = await p.decide(ApprovalRequest(id: "2", tool: "Bash", input: ["command": "curl x"]))
        #expect(d == .deny(reason: "no approval rule allows Bash(curl x) (rules: Bash(git *), Read, execute(ls ?))"))
        for bad in ["", "Bash(git *", "(git)", "a)b"] {
            #expect(throws: ProviderError.self) { _ = try ApprovalPolicy.rules([bad]) }
        }
    }

    @Test func theRequestDocumentSaysTheHostAnswers() throws {
        var r = ModelRequest(prompt: "x")
        #expect(Wire.json(r)["approvals"] == nil)
        r.approval = .handler { _ in .allow }
        #expect(Wire.json(r)["approvals"] == "host")
        let decoded = try Wire.decodeRequest(Wire.json(r))
        #expect(decoded.approval?.asksHost == true)
        let withAsk: JSONValue = ["messages": [["role": "user", "content": "x"]], "approvals": "ask"]
        #expect(try Wire.decodeRequest(["messages": [["role": "user", "content": "x"]]]).approval == nil)
        #expect(throws: WireError.self) { _ = try Wire.decodeRequest(withAsk) }
        // A policy is part of the request's identity (caches key on it).
        var other = r
        other.approval = .handler { _ in .allow }
        #expect(other != r)
        other.approval = r.approval
        #expect(other == r)
    }
}
