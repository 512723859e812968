import DescartesCore
@testable import DescartesPluginKit
import Synchronization
import Testing

/// The kit's HTTP exchange engine (Sources/DescartesPluginKit/HTTP/StreamResponseHandler.swift)
/// on its own; the plugins run through it against scripted servers elsewhere.
@Suite struct StreamResponseHandlerTests {
    /// Answers a whole document with a plain finish.
    final class Whole: StreamConsumer, @unchecked Sendable {
        func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish {
            Wire.Finish(finishReason: FinishReason(rawValue: "stop"))
        }
        func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish { Wire.Finish(finishReason: FinishReason(rawValue: "stop")) }
        func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError { ProviderError(.backend, "HTTP \(status)") }
    }

    /// Events the test's calls delivered (a C callback cannot capture).
    static let events = Atomic<Int>(0)

    /// The handler keeps its transfer to cancel it, and the transfer holds
    /// the handler until it ends. The handler used to keep the transfer after
    /// its end too: the two held each other, and every HTTP call of every
    /// kit plugin left its handler, consumer and buffers behind (about 10 KB
    /// a request; `descartes serve` grew to 1 GiB over the gateway benchmark,
    /// docs/benchmarks.md, "Streaming through the gateway").
    @Test func aHandlerIsFreedOnceItsTransferEnds() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["POST /v1/x": [.json(#"{"ok":true}"#)]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        weak var handler: StreamResponseHandler?
        weak var consumer: Whole?
        let before = Self.events.load(ordering: .acquiring)
        do {
            let call = PluginCall(onEvent: { _, _ in _ = StreamResponseHandlerTests.events.add(1, ordering: .acquiringAndReleasing) }, ctx: nil, owner: nil)
            let c = Whole()
            let h = StreamResponseHandler(call: call, endpoint: server.url, framing: .document, consumer: c)
            handler = h
            consumer = c
            h.start(HTTPRequest(method: "POST", url: "\(server.url)/v1/x", headers: [("Content-Type", "application/json")], body: Array("{}".utf8)), on: client)
        }
        // Polled: the client lets go of the transfer just after the handler's end.
        for _ in 0..<250 where handler != nil || Self.events.load(ordering: .acquiring) == before {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(Self.events.load(ordering: .acquiring) > before, "the call got no terminal event")
        #expect(handler == nil, "the handler outlived its ended transfer")
        #expect(consumer == nil, "the consumer outlived its ended transfer")
    }
}
