import CHTTPServer
import DescartesCore
import Glibc

/// One HTTP request as the gateway sees it: read whole (the body bounded by
/// the server's limit) on the server's thread, then answered from a task.
struct HTTPRequest: Sendable {
    var method: String
    var path: String
    var peer: String
    /// The headers the gateway reads, by lower-case name.
    var headers: [String: String]
    var body: [UInt8]
    var bodyTooLarge: Bool

    /// The headers copied out of libmicrohttpd (only these are read).
    static let headerNames = [
        "authorization", "x-api-key", "content-type", "anthropic-version", "anthropic-beta", "user-agent", "x-request-id", "origin",
        "access-control-request-method", "access-control-request-headers",
    ]
}

/// The answer to one request: whole (`respond`) or streamed (`begin`,
/// `write`..., `end`), exactly once, from any thread. Told when the client
/// goes away, so the work behind it can be cancelled.
final class HTTPExchange: @unchecked Sendable {
    private let raw: OpaquePointer
    private struct State {
        var answered = false
        var ended = false
        var closed = false
        var completed = false
        var task: Task<Void, Never>?
    }
    private let state = Lock(State())

    init(_ raw: OpaquePointer) { self.raw = raw }

    /// Headers every answer of this exchange carries (CORS), set before `run`.
    var extraHeaders: [(String, String)] = []

    /// Runs `work` as the task that answers; cancelled when the client goes
    /// away before the answer is complete.
    func run(_ work: @escaping @Sendable () async -> Void) {
        let task = Task { await work() }
        let cancelNow = state.withLock { s -> Bool in
            s.task = task
            return s.closed && !s.completed
        }
        if cancelNow { task.cancel() }
    }

    /// Cancels the task answering (shutdown past its grace period).
    func cancel() { state.withLock { $0.task }?.cancel() }

    /// libmicrohttpd is done with the request.
    fileprivate func closed(completed: Bool) {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.closed = true
            s.completed = completed
            return completed ? nil : s.task
        }
        task?.cancel()
    }

    /// Whether the client went away before the answer was sent.
    var clientGone: Bool { state.withLock { $0.closed && !$0.completed } }

    /// The whole answer.
    func respond(status: Int, headers: [(String, String)], body: [UInt8]) {
        let first = state.withLock { s -> Bool in
            defer { s.answered = true; s.ended = true }
            return !s.answered
        }
        guard first else { return }
        let h = Self.headerText(headers + extraHeaders)
        _ = body.withUnsafeBytes { b in descartes_http_respond(raw, UInt32(status), h, b.baseAddress, b.count) }
    }

    /// Starts a streamed answer (chunked). Returns false when the client is gone.
    @discardableResult
    func begin(status: Int, headers: [(String, String)]) -> Bool {
        let first = state.withLock { s -> Bool in
            defer { s.answered = true }
            return !s.answered
        }
        guard first else { return false }
        return descartes_http_stream_begin(raw, UInt32(status), Self.headerText(headers + extraHeaders)) == 0
    }

    /// Appends to a streamed answer. Returns the bytes the client has not
    /// taken yet, or nil when it is gone.
    func write(_ bytes: [UInt8]) -> Int? {
        let r = bytes.withUnsafeBytes { b in descartes_http_stream_write(raw, b.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, b.count) }
        return r < 0 ? nil : r
    }

    /// Ends a streamed answer (once; later calls do nothing).
    func end() {
        let first = state.withLock { s -> Bool in
            defer { s.ended = true }
            return !s.ended
        }
        if first { descartes_http_stream_end(raw) }
    }

    static func headerText(_ headers: [(String, String)]) -> String {
        var s = ""
        for (k, v) in headers {
            // A value never carries a line break into the header block.
            let clean = v.contains(where: { $0 == "\r" || $0 == "\n" }) ? String(v.filter { $0 != "\r" && $0 != "\n" }) : v
            s += "\(k): \(clean)\r\n"
        }
        return s
    }
}

/// GNU libmicrohttpd listening on one address, handing complete requests to
/// `handler` (on the server's thread: start a task and return).
final class HTTPServer: @unchecked Sendable {
    typealias Handler = @Sendable (HTTPRequest, HTTPExchange) -> Void

    struct StartError: Error, CustomStringConvertible {
        var description: String
    }

    private final class Context: @unchecked Sendable {
        let handler: Handler
        init(_ h: @escaping Handler) { handler = h }
    }

    private let raw: OpaquePointer
    private let context: Unmanaged<Context>
    /// The port listened on (the one chosen, for port 0).
    let port: Int
    private let stopped = Lock(false)

    /// - Parameter tls: PEM certificate (chain) and key: HTTPS only.
    init(
        host: String, port: Int, threads: Int, bodyLimit: Int, idleTimeoutSeconds: Int, tls: (cert: String, key: String)? = nil,
        handler: @escaping Handler
    ) throws(StartError) {
        let ctx = Unmanaged.passRetained(Context(handler))
        var error = [CChar](repeating: 0, count: 512)
        let onRequest: descartes_http_request_fn = { ctx, req in
            let context = Unmanaged<Context>.fromOpaque(ctx!).takeUnretainedValue()
            var headers: [String: String] = [:]
            for name in HTTPRequest.headerNames {
                if let v = descartes_http_header(req, name) { headers[name] = String(cString: v) }
            }
            var length = 0
            var body: [UInt8] = []
            if let p = descartes_http_body(req, &length), length > 0 {
                body = Array(UnsafeRawBufferPointer(start: p, count: length))
            }
            let request = HTTPRequest(
                method: String(cString: descartes_http_method(req)), path: String(cString: descartes_http_path(req)),
                peer: String(cString: descartes_http_peer(req)), headers: headers, body: body,
                bodyTooLarge: descartes_http_body_too_large(req) != 0)
            let exchange = HTTPExchange(req)
            descartes_http_set_user(req, Unmanaged.passRetained(exchange).toOpaque())
            context.handler(request, exchange)
        }
        let onClosed: descartes_http_closed_fn = { _, user, completed in
            guard let user else { return }
            Unmanaged<HTTPExchange>.fromOpaque(user).takeRetainedValue().closed(completed: completed != 0)
        }
        guard
            let s = descartes_http_start(
                host, UInt32(port), UInt32(max(1, threads)), bodyLimit, UInt32(idleTimeoutSeconds), tls?.cert, tls?.key, onRequest, onClosed,
                ctx.toOpaque(), &error, error.count)
        else {
            ctx.release()
            throw StartError(description: String(cString: error))
        }
        raw = s
        context = ctx
        self.port = Int(descartes_http_port(s))
    }

    /// Stops accepting connections; requests in progress go on.
    func quiesce() { descartes_http_quiesce(raw) }

    /// Requests in progress (being read, answered, or waiting for an answer).
    var active: Int { Int(descartes_http_active(raw)) }

    /// Stops the server. Every request must have been answered.
    func stop() {
        let first = stopped.withLock { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        descartes_http_stop(raw)
        context.release()
    }
}
