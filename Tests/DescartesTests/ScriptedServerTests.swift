import Descartes
import Testing

/// The test server itself, checked with curl: what it scripts is what goes
/// over the wire, faults included.
@Suite struct ScriptedServerTests {
    @Test func servesScriptedResponsesInOrderAndRecordsRequests() async throws {
        let server = try await ScriptedServer.start()
        try await server.script([
            "POST /v1/x": [.json(#"{"n":1}"#), .json(#"{"n":2}"#, status: 429, headers: [("retry-after", "3")])]
        ])
        let first = await Proc.run(["curl", "-s", "-d", #"{"q":1}"#, "-H", "content-type: application/json", "\(server.url)/v1/x?a=b"])
        #expect(first.stdout == #"{"n":1}"#)
        let second = await Proc.run(["curl", "-s", "-i", "-d", "{}", "\(server.url)/v1/x"])
        #expect(second.stdout.hasPrefix("HTTP/1.1 429 Too Many Requests\r\n"))
        #expect(second.stdout.contains("retry-after: 3\r\n"))
        // The last response repeats.
        let third = await Proc.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-d", "{}", "\(server.url)/v1/x"])
        #expect(third.stdout == "429")
        let seen = try await server.requests()
        #expect(seen.count == 3)
        #expect(seen[0].path == "/v1/x" && seen[0].query == "a=b" && seen[0].json?["q"] == 1)
        #expect(seen[0].header("Content-Type") == "application/json")
        // Unscripted routes answer 404.
        let missing = await Proc.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "\(server.url)/nope"])
        #expect(missing.stdout == "404")
    }

    @Test func streamsSplitPiecesAndInjectsFaults() async throws {
        let server = try await ScriptedServer.start()
        let body = "data: {\"a\":1}\r\n\r\n: comment\n\ndata: [DONE]\n\n"
        try await server.script([
            "GET /split": [.stream(body, split: "bytes:3")],
            "GET /reset": [.stream(body).with(["reset_after": 10])],
            "GET /hang": [.hang],
        ])
        let split = await Proc.run(["curl", "-s", "-N", "\(server.url)/split"])
        #expect(split.stdout == body)
        let reset = await Proc.run(["curl", "-s", "\(server.url)/reset"])
        #expect(reset.stdout == String(body.prefix(10)))
        #expect(reset.status != 0)
        let hang = await Proc.run(["curl", "-s", "--max-time", "0.5", "\(server.url)/hang"])
        #expect(hang.status == 28)  // curl: operation timed out
    }
}
