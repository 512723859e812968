import DescartesPluginKit
import Synchronization
import Testing

/// The kit's libcurl engine against a real server on 127.0.0.1.
@Suite struct HTTPClientTests {
    /// Collects one transfer's response and reports when it ends.
    final class Recorder: HTTPResponseHandler, @unchecked Sendable {
        var status = 0
        var headers = HTTPHeaders()
        var pieces: [[UInt8]] = []
        var error: HTTPError?
        var ended = false
        var stopAfter: Int? = nil
        let done = Lock<CheckedContinuation<Void, Never>?>(nil)
        let finished = Atomic<Bool>(false)

        func head(status: Int, headers: HTTPHeaders) {
            self.status = status
            self.headers = headers
        }
        func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
            pieces.append(Array(bytes))
            if let s = stopAfter, pieces.count >= s { return false }
            return true
        }
        func end(_ error: HTTPError?) {
            self.error = error
            ended = true
            finished.store(true, ordering: .releasing)
            done.withLock { $0?.resume(); $0 = nil }
        }
        var text: String { String(decoding: pieces.flatMap { $0 }, as: UTF8.self) }

        func wait() async {
            await withCheckedContinuation { c in
                let already = done.withLock { d -> Bool in
                    if finished.load(ordering: .acquiring) { return true }
                    d = c
                    return false
                }
                if already { c.resume() }
            }
        }
    }

    func run(_ client: HTTPClient, _ request: HTTPRequest, stopAfter: Int? = nil) async -> Recorder {
        let r = Recorder()
        r.stopAfter = stopAfter
        client.start(request, handler: r)
        await r.wait()
        return r
    }

    @Test func postsAndReadsAResponse() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["POST /v1/echo": [.json(#"{"ok":true}"#, headers: [("x-request-id", "abc"), ("retry-after-ms", "250")])]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let body = Array(String(repeating: "é", count: 5000).utf8)  // large enough that curl would send Expect: 100-continue
        let r = await run(client, HTTPRequest(method: "POST", url: "\(server.url)/v1/echo", headers: [("Authorization", "Bearer k"), ("Content-Type", "application/json")], body: body))
        #expect(r.error == nil)
        #expect(r.status == 200)
        #expect(r.text == #"{"ok":true}"#)
        #expect(r.headers["X-Request-Id"] == "abc")
        #expect(r.headers["retry-after-ms"] == "250")
        let seen = try await server.requests()
        #expect(seen.count == 1)
        #expect(seen[0].body.utf8.count == body.count)
        #expect(seen[0].header("authorization") == "Bearer k")
        #expect(seen[0].header("expect") == nil)
    }

    @Test func deliversAStreamAsItArrives() async throws {
        let server = try await ScriptedServer.start()
        let body = (0..<50).map { "data: {\"n\":\($0)}\n\n" }.joined()
        try await server.script(["GET /stream": [.stream(body, split: "bytes:13", chunkDelayMs: 2)]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let r = await run(client, HTTPRequest(url: "\(server.url)/stream"))
        #expect(r.error == nil)
        #expect(r.text == body)
        #expect(r.pieces.count > 10)  // it arrived in pieces, not at the end
    }

    @Test func reusesOneConnectionForSequentialRequests() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /x": [.json("{}")]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        for _ in 0..<20 { _ = await run(client, HTTPRequest(url: "\(server.url)/x")) }
        let seen = try await server.requests()
        #expect(seen.count == 20)
        #expect(Set(seen.map(\.connection)).count == 1)
    }

    @Test func runsManyTransfersConcurrentlyOnOneThread() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /slow": [.stream("data: x\n\n", split: "lines", chunkDelayMs: 100)]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let start = ContinuousClock.now
        let ok = await withTaskGroup(of: Bool.self) { g in
            for _ in 0..<100 { g.addTask { await self.run(client, HTTPRequest(url: "\(server.url)/slow")).text == "data: x\n\n" } }
            var n = 0
            for await r in g where r { n += 1 }
            return n
        }
        #expect(ok == 100)
        // 100 transfers of 100 ms each, concurrently: far less than 10 s.
        expectWithin(ContinuousClock.now - start, .seconds(5))
    }

    @Test func connectionRefusedIsUnreachable() async throws {
        // A port nothing listens on: bind one, close it.
        let server = try await ScriptedServer.start()
        let port = server.port
        _ = consume server
        try await Task.sleep(for: .milliseconds(100))
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let r = await run(client, HTTPRequest(url: "http://127.0.0.1:\(port)/x"))
        #expect(r.error?.kind == .unreachable)
        #expect(r.error?.providerError(endpoint: "http://127.0.0.1:\(port)").kind == .providerUnavailable)
    }

    @Test func firstByteIdleAndTotalDeadlines() async throws {
        let server = try await ScriptedServer.start()
        try await server.script([
            "GET /hang": [.hang],
            "GET /trickle": [.stream("data: 1234567890\n\n").with(["trickle_ms": 400])],
            "GET /slow": [.stream("data: 1\n\ndata: 2\n\n", split: "lines", chunkDelayMs: 150)],
        ])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        var start = ContinuousClock.now
        let hang = await run(client, HTTPRequest(url: "\(server.url)/hang", timeouts: HTTPTimeouts(firstByte: 200)))
        #expect(hang.error?.kind == .timeout("first_token"))
        #expect(ContinuousClock.now - start >= .milliseconds(190))
        expectWithin(ContinuousClock.now - start, .seconds(10))

        start = ContinuousClock.now
        let trickle = await run(client, HTTPRequest(url: "\(server.url)/trickle", timeouts: HTTPTimeouts(idle: 200)))
        #expect(trickle.error?.kind == .timeout("idle"))
        #expect(trickle.error?.afterHeaders == true)
        expectWithin(ContinuousClock.now - start, .seconds(10))

        let total = await run(client, HTTPRequest(url: "\(server.url)/slow", timeouts: HTTPTimeouts(total: 200)))
        #expect(total.error?.kind == .timeout("total"))
    }

    @Test func aCutStreamIsClosedAfterHeaders() async throws {
        let server = try await ScriptedServer.start()
        try await server.script([
            "GET /cut": [.stream(String(repeating: "data: x\n\n", count: 100)).with(["reset_after": 50])],
            "GET /nothing": [.close],
        ])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let cut = await run(client, HTTPRequest(url: "\(server.url)/cut"))
        #expect(cut.error?.kind == .closed)
        #expect(cut.error?.afterHeaders == true)
        #expect(cut.error?.providerError(endpoint: "").kind == .streamClosed)
        let nothing = await run(client, HTTPRequest(url: "\(server.url)/nothing"))
        #expect(nothing.error?.kind == .closed)
        #expect(nothing.error?.afterHeaders == false)
        #expect(nothing.error?.providerError(endpoint: "").kind == .providerUnavailable)
    }

    @Test func limitsTheResponseSize() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /big": [.json(String(repeating: "x", count: 100_000))]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let r = await run(client, HTTPRequest(url: "\(server.url)/big", maxResponseBytes: 10_000))
        #expect(r.error?.kind == .tooLarge)
        #expect(r.error?.message == "the response is larger than 10000 bytes")
    }

    @Test func neverFollowsARedirect() async throws {
        let server = try await ScriptedServer.start()
        let other = try await ScriptedServer.start()
        try await server.script(["GET /r": [ScriptedServer.Response(["status": 302, "headers": [["location", .string("\(other.url)/steal")]]])]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let r = await run(client, HTTPRequest(url: "\(server.url)/r", headers: [("x-api-key", "secret")]))
        #expect(r.status == 302)
        #expect(r.error == nil)
        #expect(try await other.requests().isEmpty)
    }

    @Test func cancelStopsATransferPromptly() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /hang": [.hang]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let r = Recorder()
        let transfer = client.start(HTTPRequest(url: "\(server.url)/hang"), handler: r)
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        transfer.cancel()
        transfer.cancel()  // twice is fine
        await r.wait()
        #expect(r.error?.kind == .cancelled)
        expectWithin(ContinuousClock.now - start, .seconds(5))
    }

    @Test func aHandlerCanStopTheTransfer() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /s": [.stream(String(repeating: "data: x\n\n", count: 100), split: "lines", chunkDelayMs: 5)]])
        let client = HTTPClient(name: "test")
        defer { client.shutdown() }
        let r = await run(client, HTTPRequest(url: "\(server.url)/s"), stopAfter: 3)
        #expect(r.error?.kind == .aborted)
        #expect(r.pieces.count == 3)
    }

    @Test func shutdownCancelsEverythingInFlight() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /hang": [.hang]])
        let client = HTTPClient(name: "test")
        let recorders = (0..<5).map { _ in Recorder() }
        for r in recorders { client.start(HTTPRequest(url: "\(server.url)/hang"), handler: r) }
        try await Task.sleep(for: .milliseconds(100))
        client.shutdown()
        for r in recorders {
            await r.wait()
            #expect(r.error?.kind == .cancelled)
        }
        // A transfer started after shutdown ends at once.
        let late = Recorder()
        client.start(HTTPRequest(url: "\(server.url)/hang"), handler: late)
        #expect(late.ended)
    }
}

@Suite struct ProviderHTTPTests {
    func headers(_ pairs: [(String, String)]) -> HTTPHeaders {
        var h = HTTPHeaders()
        h.fields = pairs.map { (name: $0.0, value: $0.1) }
        return h
    }

    @Test(arguments: [
        (400, ProviderError.Kind.api), (404, .api), (422, .api), (401, .authentication), (403, .authentication),
        (429, .rateLimited), (500, .providerUnavailable), (502, .providerUnavailable), (503, .providerUnavailable),
        (529, .providerUnavailable), (408, .providerUnavailable), (302, .http),
    ])
    func mapsStatusesToKinds(_ status: Int, _ kind: ProviderError.Kind) {
        let e = ProviderHTTP.error(status: status, headers: HTTPHeaders(), body: Array(#"{"error":{"message":"nope","type":"some_error"}}"#.utf8), endpoint: "x")
        #expect(e.kind == kind)
        #expect(e.status == status)
        if status != 302 {
            #expect(e.message == "HTTP \(status): some_error: nope")
            #expect(e.providerType == "some_error")
        }
    }

    @Test func keepsAnExcerptOfAnUnreadableBody() {
        let e = ProviderHTTP.error(status: 502, headers: HTTPHeaders(), body: Array(("<html>" + String(repeating: "x", count: 1000)).utf8), endpoint: "x")
        #expect(e.message.hasPrefix("HTTP 502: <html>xxx"))
        #expect(e.message.hasSuffix("... (1006 bytes)"))
        #expect(ProviderHTTP.error(status: 400, headers: HTTPHeaders(), body: Array(#"{"error":"model not found"}"#.utf8), endpoint: "x").message == "HTTP 400: model not found")
    }

    @Test func parsesRetryAfterInEveryForm() {
        #expect(ProviderHTTP.retryAfter(headers([("retry-after-ms", "1500"), ("retry-after", "9")])) == .milliseconds(1500))
        #expect(ProviderHTTP.retryAfter(headers([("Retry-After", "2")])) == .seconds(2))
        #expect(ProviderHTTP.retryAfter(headers([("retry-after", "0.5")])) == .milliseconds(500))
        let now = ProviderHTTP.httpDate("Wed, 21 Oct 2015 07:28:00 GMT")!
        #expect(ProviderHTTP.retryAfter(headers([("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]), now: now) == .seconds(30))
        #expect(ProviderHTTP.retryAfter(headers([("retry-after", "soon")])) == nil)
        #expect(ProviderHTTP.retryAfter(HTTPHeaders()) == nil)
    }

    @Test func warnsOnlyForKeysOverPlainHTTPBeyondLoopback() {
        #expect(ProviderHTTP.plainHTTPWarning(endpoint: "http://gpu-box:8000/v1", hasCredential: true) != nil)
        #expect(ProviderHTTP.plainHTTPWarning(endpoint: "http://127.0.0.1:8000/v1", hasCredential: true) == nil)
        #expect(ProviderHTTP.plainHTTPWarning(endpoint: "http://[::1]:8000/v1", hasCredential: true) == nil)
        #expect(ProviderHTTP.plainHTTPWarning(endpoint: "http://localhost/v1", hasCredential: true) == nil)
        #expect(ProviderHTTP.plainHTTPWarning(endpoint: "https://api.openai.com/v1", hasCredential: true) == nil)
        #expect(ProviderHTTP.plainHTTPWarning(endpoint: "http://gpu-box:8000/v1", hasCredential: false) == nil)
        #expect(ProviderHTTP.host(of: "https://user:pw@Example.com:443/x") == "example.com")
        #expect(ProviderHTTP.join("http://h/v1/", "/models") == "http://h/v1/models")
    }
}
