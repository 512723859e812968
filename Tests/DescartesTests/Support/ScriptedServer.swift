import CProcessShim
import Descartes
import Glibc
import DescartesSupport

/// A real HTTP server on 127.0.0.1 that serves exactly what a test scripts
/// (Tests/Servers/scripted_server.py): provider wire formats byte for byte,
/// and faults (resets, hangs, trickles, splits). Controlled over the child's
/// stdin/stdout, so tests need no HTTP client of their own.
///
/// ```swift
/// let server = try await ScriptedServer.start()
/// try await server.script(["POST /v1/chat/completions": [.sse(fixture("openai/chat-stream-text.sse"), split: "bytes:7")]])
/// // point the plugin at server.url + "/v1"
/// let seen = try await server.requests()
/// ```
final class ScriptedServer: @unchecked Sendable {
    let port: Int
    let pid: pid_t
    private let toChild: Int32
    private let fromChild: Int32
    private let lock = Lock<[UInt8]>([])  // bytes read from the child but not yet consumed

    var url: String { "http://127.0.0.1:\(port)" }

    private init(port: Int, pid: pid_t, toChild: Int32, fromChild: Int32, pending: [UInt8]) {
        self.port = port
        self.pid = pid
        self.toChild = toChild
        self.fromChild = fromChild
        lock.withLock { $0 = pending }
    }

    deinit {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        close(toChild)
        close(fromChild)
    }

    struct StartError: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts a server; with `tls`, it speaks HTTPS with that certificate.
    static func start(tls: (cert: String, key: String)? = nil) async throws -> ScriptedServer {
        try await withCheckedThrowingContinuation { c in
            Proc.onThread {
                do { c.resume(returning: try startBlocking(tls: tls)) } catch { c.resume(throwing: error) }
            }
        }
    }

    private static func startBlocking(tls: (cert: String, key: String)?) throws -> ScriptedServer {
        let script = FileSystem.join(TestEnv.root, "Tests/Servers/scripted_server.py")
        let child = try Proc.spawnPiped(["python3", "-u", script, "--port", "0"] + (tls.map { ["--tls-cert", $0.cert, "--tls-key", $0.key] } ?? []))
        var pending: [UInt8] = []
        guard let line = Proc.readLine(child.fromChild, &pending, until: .now + .seconds(20)), line.hasPrefix("PORT "), let port = Int(line.dropFirst(5)) else {
            kill(child.pid, SIGKILL)
            throw StartError(description: "the scripted server did not start")
        }
        return ScriptedServer(port: port, pid: child.pid, toChild: child.toChild, fromChild: child.fromChild, pending: pending)
    }

    /// Sends one control command and returns the reply line.
    private func command(_ doc: JSONValue) async throws -> String {
        let text = doc.jsonText + "\n"
        return try await withCheckedThrowingContinuation { c in
            Proc.onThread { [self] in
                let reply: String? = lock.withLock { pending in
                    var bytes = Array(text.utf8)
                    var off = 0
                    while off < bytes.count {
                        let n = bytes.withUnsafeMutableBytes { write(toChild, $0.baseAddress! + off, $0.count - off) }
                        if n <= 0 { return nil }
                        off += n
                    }
                    return Proc.readLine(fromChild, &pending, until: .now + .seconds(20))
                }
                if let reply, !reply.hasPrefix("ERROR") { c.resume(returning: reply) } else {
                    c.resume(throwing: StartError(description: "scripted server: \(reply ?? "no reply")"))
                }
            }
        }
    }

    /// Scripts responses per route ("METHOD /path"); each route's list is
    /// served in order and its last entry repeats.
    func script(_ routes: [String: [Response]], default fallback: Response? = nil) async throws {
        var r = JSONObject()
        for (k, v) in routes { r[k] = .array(v.map(\.json)) }
        var doc: JSONObject = ["cmd": "script", "routes": .object(r)]
        if let fallback { doc["default"] = fallback.json }
        _ = try await command(.object(doc))
    }

    func reset() async throws { _ = try await command(["cmd": "reset"]) }

    struct Request: Sendable {
        var method: String
        var path: String
        var query: String
        var headers: [(String, String)]
        var body: String
        var connection: Int
        /// When the server read it (seconds on the server's monotonic clock):
        /// differences between requests are what a test compares.
        var time: Double = 0
        /// The server's verdict on an `azure` response's credential and
        /// version ("ok" or why not), when the response had one.
        var azure: String? = nil
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
        var json: JSONValue? { try? JSONValue.parse(body) }
    }

    /// The ids of the connections that have ended.
    func closedConnections() async throws -> [Int] {
        let reply = try await command(["cmd": "closed"])
        return (try JSONValue.parse(reply).arrayValue ?? []).compactMap(\.intValue)
    }

    /// Every request received so far, in order.
    func requests() async throws -> [Request] {
        let reply = try await command(["cmd": "requests"])
        guard case .array(let items) = try JSONValue.parse(reply) else { return [] }
        return items.map { i in
            Request(
                method: i["method"]?.stringValue ?? "", path: i["path"]?.stringValue ?? "", query: i["query"]?.stringValue ?? "",
                headers: (i["headers"]?.arrayValue ?? []).map { ($0[0]?.stringValue ?? "", $0[1]?.stringValue ?? "") },
                body: i["body"]?.stringValue ?? "", connection: i["connection"]?.intValue ?? 0,
                time: i["time"]?.doubleValue ?? 0, azure: i["azure"]?.stringValue)
        }
    }

    /// One scripted response (see scripted_server.py for every member).
    struct Response: Sendable {
        var json: JSONValue

        init(_ json: JSONObject) { self.json = .object(json) }

        static func json(_ body: String, status: Int = 200, headers: [(String, String)] = []) -> Response {
            Response([
                "status": .integer(status), "body": .string(body),
                "headers": .array(([("content-type", "application/json")] + headers).map { [.string($0.0), .string($0.1)] }),
            ])
        }

        static func json(_ body: JSONValue, status: Int = 200, headers: [(String, String)] = []) -> Response {
            json(body.jsonText, status: status, headers: headers)
        }

        /// A streamed body (SSE or NDJSON), cut into pieces by `split`
        /// ("lines", "bytes:N") and sent with chunked framing.
        static func stream(_ body: String, contentType: String = "text/event-stream", split: String? = nil, chunkDelayMs: Int = 0) -> Response {
            var o: JSONObject = [
                "status": 200, "body": .string(body), "framing": "chunked",
                "headers": [["content-type", .string(contentType)], ["cache-control", "no-cache"]],
            ]
            if let split { o["split"] = .string(split) }
            if chunkDelayMs > 0 { o["chunk_delay_ms"] = .integer(chunkDelayMs) }
            return Response(o)
        }

        static let hang = Response(["action": "hang"])
        static let reset = Response(["action": "reset"])
        static let close = Response(["action": "close"])

        /// This response with extra members (e.g. ["reset_after": 100]).
        func with(_ extra: JSONObject) -> Response {
            var o = json.objectValue ?? [:]
            for m in extra { o[m.key] = m.value }
            return Response(o)
        }
    }
}

extension TestEnv {
    /// ../shared/fixtures/provider-transcripts, beside the repository.
    static let transcripts = FileSystem.join(FileSystem.directory(of: root), "shared/fixtures/provider-transcripts")

    /// The text of a transcript file ("openai/chat-stream-text.sse").
    static func transcript(_ name: String) throws -> String {
        try FileSystem.readText(FileSystem.join(transcripts, name), limit: 1 << 26)
    }
}
