import Glibc
import Descartes
import DescartesSupport

/// A small HTTP/1.1 server on 127.0.0.1 that serves what a conformance spec
/// scripts, so the suite can exercise an HTTP plugin in a wire format the
/// host does not know: the spec's author writes the provider's bytes.
///
/// Routes map `"METHOD /path"` (or `"* /path"`) to a list of responses
/// served in order, the last one repeating. A response (every member
/// optional):
///
/// ```yaml
/// status: 200
/// headers: {content-type: text/event-stream}
/// body: "..."                 # or body_file: path (relative to the spec)
/// chunks:                     # the body in pieces, each sent on its own
///   - {data: "data: {...}\n\n", delay_ms: 100, repeat: 50}
/// framing: chunked            # length (default), chunked or close
/// delay_ms: 0                 # before the status line
/// action: hang                # hang: read the request, never answer; close: close at once
/// match: {body: '"stream":true'}   # answers only requests whose body contains this
/// ```
///
/// Each connection has a thread; a connection the client closes ends its
/// response at once (a cancelled plugin request frees the server too).
final class ConformanceServer: @unchecked Sendable {
    struct Chunk: Sendable {
        var data: [UInt8]
        var delayMS: Int
        var repeatCount: Int
    }

    struct Response: Sendable {
        var status = 200
        var reason: String?
        var headers: [(String, String)] = []
        var chunks: [Chunk] = []
        var framing = "length"
        var delayMS = 0
        var action: String?
        /// Answers only requests whose body contains this text.
        var bodyContains: String?
    }

    struct Request: Sendable {
        var method: String
        var path: String
        var headers: [(String, String)]
        var body: [UInt8]
        /// The query string (after '?', not decoded), "" for none.
        var query = ""
    }

    let port: Int
    private let listener: Int32
    private let state = Lock<(routes: [String: [Response]], requests: [Request], open: Set<Int32>, stopped: Bool)>(([:], [], [], false))

    var url: String { "http://127.0.0.1:\(port)" }

    struct StartError: Error, CustomStringConvertible {
        var description: String
    }

    init(routes: [String: [Response]]) throws(StartError) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw StartError(description: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 64) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw StartError(description: "bind/listen on 127.0.0.1: \(e)")
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) { _ = $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
        listener = fd
        state.withLock { $0.routes = routes }
        detachThread { [self] in acceptLoop() }
    }

    /// Stops accepting, and ends every open connection.
    func stop() {
        let open = state.withLock { s -> Set<Int32> in
            s.stopped = true
            return s.open
        }
        shutdown(listener, Int32(SHUT_RDWR))
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    deinit {
        stop()
        close(listener)
    }

    var requests: [Request] { state.withLock { $0.requests } }

    private func acceptLoop() {
        while true {
            let c = accept(listener, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return
            }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            var one: Int32 = 1
            setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let stopped = state.withLock { s -> Bool in
                if !s.stopped { s.open.insert(c) }
                return s.stopped
            }
            if stopped {
                close(c)
                return
            }
            detachThread { [self] in
                serve(c)
                state.withLock { _ = $0.open.remove(c) }
                close(c)
            }
        }
    }

    /// The next response for a request: the first of the route's responses
    /// whose `match` its body meets. The responses with the same `match`
    /// (or none) are a sequence of their own, served in order, the last one
    /// repeating: so `[{match: stream, SSE}, {JSON}]` answers every stream
    /// request with the SSE body (it used to answer the first one only and
    /// every later one with the JSON, so a plugin's streaming path went
    /// untested in `concurrency`).
    private func next(_ method: String, _ path: String, body: [UInt8]) -> Response {
        let text = String(decoding: body, as: UTF8.self)
        return state.withLock { s -> Response in
            for key in ["\(method) \(path)", "* \(path)"] {
                guard var queue = s.routes[key] else { continue }
                guard let first = queue.indices.first(where: { i in queue[i].bodyContains.map { text.contains($0) } ?? true }) else { continue }
                let r = queue[first]
                if queue[(first + 1)...].contains(where: { $0.bodyContains == r.bodyContains }) { queue.remove(at: first) }
                s.routes[key] = queue
                return r
            }
            var r = Response()
            r.status = 404
            r.headers = [("content-type", "application/json")]
            r.chunks = [Chunk(data: Array("{\"error\":{\"message\":\"the conformance spec has no route for \(method) \(path)\"}}".utf8), delayMS: 0, repeatCount: 1)]
            return r
        }
    }

    // MARK: One connection

    private func serve(_ fd: Int32) {
        var buffer: [UInt8] = []
        while true {
            guard let request = readRequest(fd, &buffer) else { return }
            state.withLock { $0.requests.append(request) }
            let response = next(request.method, request.path, body: request.body)
            guard send(response, on: fd) else { return }
        }
    }

    /// Waits until `fd` is readable or `ms` pass; false when the client has
    /// gone (or the server stops).
    private func wait(_ fd: Int32, ms: Int) -> Bool {
        let until = ContinuousClock.now + .milliseconds(ms)
        while true {
            if state.withLock({ $0.stopped }) { return false }
            let left = until - ContinuousClock.now
            if left <= .zero { return true }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(min(200, max(1, left.milliseconds))))
            if r > 0 {
                // Readable during a response: the client closed (or sent
                // more, which HTTP/1.1 clients do not do mid-response).
                var byte: UInt8 = 0
                let n = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
                if n <= 0 { return false }
                // Data pending (a pipelined request): keep waiting on time only.
                usleep(UInt32(min(left.milliseconds, 50) * 1000))
            }
        }
    }

    private func readRequest(_ fd: Int32, _ buffer: inout [UInt8]) -> Request? {
        var chunk = [UInt8](repeating: 0, count: 16384)
        func fill() -> Bool {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { return false }
            buffer.append(contentsOf: chunk[0..<n])
            return buffer.count < 16 << 20
        }
        var headEnd: Int? = nil
        while headEnd == nil {
            if let r = find(buffer, [13, 10, 13, 10]) { headEnd = r } else if !fill() { return nil }
        }
        let head = String(decoding: buffer[0..<headEnd!], as: UTF8.self)
        buffer.removeFirst(headEnd! + 4)
        let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
        let first = lines[0].split(separator: " ")
        guard first.count >= 2 else { return nil }
        var headers: [(String, String)] = []
        for l in lines.dropFirst() {
            guard let colon = l.firstIndex(of: ":") else { continue }
            headers.append((String(l[..<colon]), String(l[l.index(after: colon)...]).trimmingSpaces))
        }
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name }?.1 }
        var target = String(first[1])
        var query = ""
        if let q = target.firstIndex(of: "?") {
            query = String(target[target.index(after: q)...])
            target = String(target[..<q])
        }
        if header("expect")?.lowercased() == "100-continue" { _ = writeAll(fd, Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) }
        var body: [UInt8] = []
        if header("transfer-encoding")?.lowercased() == "chunked" {
            while true {
                var lineEnd = find(buffer, [13, 10])
                while lineEnd == nil {
                    guard fill() else { return nil }
                    lineEnd = find(buffer, [13, 10])
                }
                let size = Int(String(decoding: buffer[0..<lineEnd!], as: UTF8.self).split(separator: ";").first.map { String($0).trimmingSpaces } ?? "", radix: 16) ?? 0
                buffer.removeFirst(lineEnd! + 2)
                while buffer.count < size + 2 { guard fill() else { return nil } }
                body += buffer[0..<size]
                buffer.removeFirst(size + 2)
                if size == 0 { break }
            }
        } else if let n = header("content-length").flatMap({ Int($0) }), n > 0 {
            while buffer.count < n { guard fill() else { return nil } }
            body = Array(buffer[0..<n])
            buffer.removeFirst(n)
        }
        return Request(method: String(first[0]), path: target, headers: headers, body: body, query: query)
    }

    private func find(_ hay: [UInt8], _ needle: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
            if Array(hay[i..<(i + needle.count)]) == needle { return i }
        }
        return nil
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += n
        }
        return true
    }

    /// Sends one response; false when the connection must close.
    private func send(_ r: Response, on fd: Int32) -> Bool {
        if r.action == "close" { return false }
        if r.action == "hang" {
            // Until the client gives up.
            while wait(fd, ms: 60_000) {}
            return false
        }
        if r.delayMS > 0 && !wait(fd, ms: r.delayMS) { return false }
        var pieces: [(data: [UInt8], delay: Int)] = []
        for c in r.chunks { for _ in 0..<max(1, c.repeatCount) { pieces.append((c.data, c.delayMS)) } }
        let total = pieces.reduce(0) { $0 + $1.data.count }
        var head = "HTTP/1.1 \(r.status) \(r.reason ?? ConformanceServer.reason(r.status))\r\n"
        for (k, v) in r.headers { head += "\(k): \(v)\r\n" }
        switch r.framing {
        case "chunked": head += "transfer-encoding: chunked\r\n"
        case "close": head += "connection: close\r\n"
        default: head += "content-length: \(total)\r\n"
        }
        head += "\r\n"
        guard writeAll(fd, Array(head.utf8)) else { return false }
        for p in pieces {
            if p.delay > 0 && !wait(fd, ms: p.delay) { return false }
            let bytes = r.framing == "chunked" ? Array(String(p.data.count, radix: 16).utf8) + [13, 10] + p.data + [13, 10] : p.data
            if !p.data.isEmpty, !writeAll(fd, bytes) { return false }
        }
        if r.framing == "chunked" { guard writeAll(fd, Array("0\r\n\r\n".utf8)) else { return false } }
        return r.framing != "close"
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 429: return "Too Many Requests"
        case 500: return "Internal Server Error"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 529: return "Overloaded"
        default: return "Status"
        }
    }
}
