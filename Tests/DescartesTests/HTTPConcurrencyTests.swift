import DescartesPluginKit
import Testing

/// Long requests started together on a fresh client run side by side: none
/// waits for another's connection to finish (what CURLOPT_PIPEWAIT did to
/// HTTP/1.1 servers, found by the conformance suite's concurrency check).
@Suite struct HTTPConcurrencyTests {
    /// Records when the first body bytes of a transfer arrive.
    final class FirstBytes: HTTPResponseHandler, @unchecked Sendable {
        let started = ContinuousClock.now
        let first = Lock<ContinuousClock.Instant?>(nil)
        func head(status: Int, headers: HTTPHeaders) {}
        func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
            first.withLock { if $0 == nil { $0 = .now } }
            return true
        }
        func end(_ error: HTTPError?) {}
    }

    @Test func longStreamsStartedTogetherAllStream() async throws {
        let server = try await ScriptedServer.start()
        // The first piece at once, the rest 20 s later: a long stream.
        try await server.script([
            "GET /long": [.stream("data: first\n\ndata: second\n\n", split: "lines", chunkDelayMs: 0).with(["chunks": [["data": "data: first\n\n"], ["data": "data: rest\n\n", "delay_ms": 20000]]])]
        ])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let handlers = (0..<4).map { _ in FirstBytes() }
        for h in handlers { client.start(HTTPRequest(url: "\(server.url)/long"), handler: h) }
        // Each sends its first piece at once; allow 5 s for a loaded machine
        // (serialized, the second would wait the first's 20 s).
        let until = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < until, handlers.contains(where: { $0.first.withLock { $0 } == nil }) {
            try await Task.sleep(for: .milliseconds(10))
        }
        let streaming = handlers.filter { $0.first.withLock { $0 } != nil }.count
        #expect(streaming == 4, "\(streaming) of 4 long streams started")
        let connections = Set(try await server.requests().map(\.connection))
        #expect(connections.count == 4)
    }
}
