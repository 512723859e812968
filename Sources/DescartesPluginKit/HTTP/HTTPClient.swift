internal import CCurl
internal import CCurlShim
import Glibc
import Synchronization

/// An HTTP client over one libcurl multi handle and one thread.
///
/// Every transfer of a backend instance runs on this multi handle, however
/// many there are: connections are reused (and multiplexed over HTTP/2 where
/// the server offers it), and a thousand concurrent streams cost one thread,
/// not a thousand. Transfers are started and cancelled from any thread.
///
/// How the work is shared (libcurl's multi_socket interface over epoll):
/// whoever holds the client's lock drives libcurl. The thread that starts a
/// transfer adds it and sends the request itself, then returns; the client's
/// own thread sleeps in epoll_wait on the transfers' sockets and handles what
/// arrives. So a request costs no wake-up of that thread to get on the wire,
/// only the one its answer causes. Handlers run one at a time under the lock:
/// on the client's thread, or on the starting thread when a transfer ends at
/// once (a refused connection).
///
/// Security defaults, which no option turns off: certificates and host names
/// are always verified (a CA bundle can be chosen), redirects are never
/// followed (a 3xx is reported to the handler like any status, so
/// credentials never travel to another host), and `Expect: 100-continue` is
/// not used.
public final class HTTPClient: @unchecked Sendable {
    /// A name for the loop thread and log messages.
    public let name: String

    // Touched only by the thread holding `lock`.
    private var multi: UnsafeMutableRawPointer?
    private var active: [UnsafeMutableRawPointer: Transfer] = [:]
    private var idleHandles: [UnsafeMutableRawPointer] = []
    /// Starts and cancels asked for from inside a handler (while this
    /// thread is inside libcurl): done once libcurl has returned.
    private var deferredStarts: [Transfer] = []
    private var deferredCancels: [Transfer] = []
    /// The multi handle is gone (the loop ended): nothing may be added.
    private var closed = false

    /// The lock whoever drives libcurl holds, and which thread holds it.
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private let holder = Atomic<UInt>(0)
    /// The epoll set, wake-up eventfd and libcurl timer (CCurlShim).
    private let events: UnsafeMutablePointer<descartes_curl_loop>
    /// When the loop thread will wake by itself (ms, monotonic); 0 while it
    /// is awake. A starter wakes it earlier when a new deadline needs it.
    private let sleepsUntil = Atomic<Int>(0)

    private struct State {
        var stopping = false
        var threadStarted = false
        var stopped = false
        /// Starts and cancels from threads that found the lock busy: the
        /// thread holding it, or the loop, takes them over.
        var starts: [Transfer] = []
        var cancels: [Transfer] = []
    }
    private let state = Lock(State())
    private var thread = pthread_t()

    public init(name: String) {
        self.name = name
        lock = .allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
        events = .allocate(capacity: 1)
        events.initialize(to: descartes_curl_loop(epoll_fd: -1, wake_fd: -1, timer_at: -1, multi: nil))
    }

    deinit {
        shutdown()
        pthread_mutex_destroy(lock)
        lock.deallocate()
        events.deallocate()
    }

    // MARK: Public API

    /// Starts a transfer; returns at once (the request is on its way). The
    /// handler is called, one call at a time, until `end`: normally on the
    /// client's thread; on the calling thread when the transfer ends before
    /// this returns (a refused connection, a client already shut down).
    ///
    /// The loop keeps the client alive until `shutdown()`; a backend calls it
    /// from its own shutdown.
    @discardableResult
    public func start(_ request: HTTPRequest, handler: HTTPResponseHandler) -> HTTPTransfer {
        let t = Transfer(request: request, handler: handler)
        let refused = state.withLock { s -> Bool in
            if s.stopping { return true }
            if !s.threadStarted {
                s.threadStarted = true
                startThread()
            }
            return false
        }
        if refused {
            handler.end(HTTPError(.cancelled, "the HTTP client is shut down"))
            return HTTPTransfer(client: self, transfer: t)
        }
        if holdsLock {
            // From inside a handler: libcurl must not be re-entered.
            deferredStarts.append(t)
            return HTTPTransfer(client: self, transfer: t)
        }
        if !tryAcquire() {
            // Another thread drives libcurl now (often the loop, delivering
            // the previous answer): hand the transfer over instead of
            // waiting for the lock.
            let accepted = state.withLock { s -> Bool in
                if s.stopped { return false }
                s.starts.append(t)
                return true
            }
            if accepted { descartes_curl_loop_wake(events) } else { handler.end(HTTPError(.cancelled, "the HTTP client is shut down")) }
            return HTTPTransfer(client: self, transfer: t)
        }
        if closed {
            release()
            handler.end(HTTPError(.cancelled, "the HTTP client is shut down"))
            return HTTPTransfer(client: self, transfer: t)
        }
        add(t)
        drive(timeoutsOnly: true)
        let wakeAt = nextWake()
        release()
        // The loop thread sleeps until its own next deadline; wake it if
        // this transfer (or libcurl's timer for it) needs it earlier.
        let sleeping = sleepsUntil.load(ordering: .acquiring)
        if sleeping != 0, let w = wakeAt, w < sleeping { descartes_curl_loop_wake(events) }
        return HTTPTransfer(client: self, transfer: t)
    }

    /// Cancels every transfer (their handlers get `.cancelled`) and stops the
    /// loop thread. Idempotent; waits for the thread to finish unless called
    /// from a handler.
    public func shutdown() {
        let join = state.withLock { s -> Bool in
            if s.stopping { return false }
            s.stopping = true
            return s.threadStarted
        }
        guard join else { return }
        descartes_curl_loop_wake(events)
        // From the loop thread itself (the last reference dropped in a
        // handler, or a backend shut down from one) or from a thread driving
        // libcurl under the lock, joining would wait for ourselves: detach
        // instead, so the thread's stack is still reclaimed when it ends
        // (ThreadSanitizer reported the leak).
        if pthread_equal(pthread_self(), thread) != 0 || holdsLock { pthread_detach(thread) } else { pthread_join(thread, nil) }
    }

    /// Runs a request to its end and returns the status, headers and body
    /// (at most `maxResponseBytes`). For small calls that are not streamed.
    public func fetch(_ request: HTTPRequest, _ done: @escaping @Sendable (Result<HTTPResponse, HTTPError>) -> Void) -> HTTPTransfer {
        start(request, handler: Collector(done))
    }

    func cancel(_ t: Transfer) {
        if holdsLock {
            deferredCancels.append(t)
            return
        }
        if !tryAcquire() {
            state.withLock { $0.cancels.append(t) }
            descartes_curl_loop_wake(events)
            return
        }
        if !closed {
            finish(t, HTTPError(.cancelled, "the request was cancelled", afterHeaders: t.gotHead))
            runDeferred()
        }
        release()
    }

    // MARK: The lock

    private var holdsLock: Bool { holder.load(ordering: .relaxed) == UInt(bitPattern: Int(bitPattern: pthread_self())) }

    private func acquire() {
        pthread_mutex_lock(lock)
        holder.store(UInt(bitPattern: Int(bitPattern: pthread_self())), ordering: .relaxed)
    }

    private func tryAcquire() -> Bool {
        guard pthread_mutex_trylock(lock) == 0 else { return false }
        holder.store(UInt(bitPattern: Int(bitPattern: pthread_self())), ordering: .relaxed)
        return true
    }

    private func release() {
        holder.store(0, ordering: .relaxed)
        pthread_mutex_unlock(lock)
    }

    // MARK: The loop

    /// The name of each client's transfer-loop thread (at most 15 bytes).
    public static let threadName = "descartes-http"

    private func startThread() {
        _ = descartes_curl_global_init_once()
        let m = curl_multi_init()!
        multi = m
        _ = descartes_curl_multi_setopt_long(m, CURLMOPT_MAX_HOST_CONNECTIONS, 0)
        let rc = descartes_curl_loop_init(events, m)
        precondition(rc == 0, "HTTPClient: cannot create an epoll set or an eventfd (errno \(rc))")
        let me = Unmanaged.passRetained(self).toOpaque()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setstacksize(&attr, 1 << 20)
        pthread_create(&thread, &attr, { arg in
            let client = Unmanaged<HTTPClient>.fromOpaque(arg!).takeRetainedValue()
            // Named, so `top -H` and the tests can tell the transfer loops apart.
            descartes_name_this_thread(HTTPClient.threadName)
            client.loop()
            return nil
        }, me)
        pthread_attr_destroy(&attr)
    }

    private func loop() {
        let maxEvents = 64
        let fds = UnsafeMutablePointer<Int32>.allocate(capacity: maxEvents)
        let flags = UnsafeMutablePointer<Int32>.allocate(capacity: maxEvents)
        defer {
            fds.deallocate()
            flags.deallocate()
        }
        acquire()
        while true {
            if state.withLock({ $0.stopping }) { break }
            let now = monotonicMillis()
            let wake = nextWake() ?? now + 1000
            let wait = max(0, min(1000, wake - now))
            sleepsUntil.store(now + wait, ordering: .releasing)
            release()
            let n = descartes_curl_loop_wait(events, Int32(wait), fds, flags, Int32(maxEvents))
            acquire()
            sleepsUntil.store(0, ordering: .releasing)
            var running: Int32 = 0
            for i in 0..<Int(n) { curl_multi_socket_action(multi!, fds[i], flags[i], &running) }
            drive(timeoutsOnly: false)
        }
        // Shutting down: every transfer ends, then the multi handle goes.
        for t in Array(active.values) { finish(t, HTTPError(.cancelled, "the HTTP client is shutting down", afterHeaders: t.gotHead)) }
        // From here on no transfer is handed over (start ends it at once).
        deferredStarts += state.withLock { s -> [Transfer] in
            s.stopped = true
            defer { s.starts.removeAll() }
            return s.starts
        }
        for t in deferredStarts { t.handler.end(HTTPError(.cancelled, "the HTTP client is shut down")) }
        deferredStarts.removeAll()
        deferredCancels.removeAll()
        for h in idleHandles { curl_easy_cleanup(h) }
        idleHandles.removeAll()
        curl_multi_cleanup(multi!)
        descartes_curl_loop_close(events)
        multi = nil
        closed = true
        release()
    }

    /// libcurl's due timers, finished transfers, the loop's own deadlines
    /// and deferred work, until nothing is due. Under the lock.
    private func drive(timeoutsOnly: Bool) {
        var running: Int32 = 0
        while true {
            if events.pointee.timer_at >= 0 && events.pointee.timer_at <= Int64(monotonicMillis()) {
                events.pointee.timer_at = -1
                curl_multi_socket_action(multi!, CURL_SOCKET_TIMEOUT, 0, &running)
            }
            collectFinished()
            if !timeoutsOnly { enforceDeadlines() }
            if !runDeferred() && !(events.pointee.timer_at >= 0 && events.pointee.timer_at <= Int64(monotonicMillis())) { break }
        }
    }

    /// Transfers libcurl has finished.
    private func collectFinished() {
        var left: Int32 = 0
        while let msg = curl_multi_info_read(multi!, &left) {
            guard msg.pointee.msg == CURLMSG_DONE, let easy = msg.pointee.easy_handle, let t = active[easy] else { continue }
            let code = msg.pointee.data.result
            finish(t, code == CURLE_OK ? t.pendingError : t.pendingError ?? error(for: code, t))
        }
    }

    /// The deadlines the client keeps itself (first byte, idle).
    private func enforceDeadlines() {
        let now = monotonicMillis()
        for t in active.values {
            if let (which, at) = t.nextDeadline(), at <= now {
                finish(t, HTTPError(.timeout(which), "the \(which.replacingOccurrences("_", " ")) deadline of \(t.limit(which)) ms passed", afterHeaders: t.gotHead))
            }
        }
    }

    /// Starts and cancels handlers asked for while libcurl was running.
    /// Returns true if there was any.
    @discardableResult
    private func runDeferred() -> Bool {
        let (handedStarts, handedCancels) = state.withLock { s -> ([Transfer], [Transfer]) in
            defer {
                s.starts.removeAll()
                s.cancels.removeAll()
            }
            return (s.starts, s.cancels)
        }
        deferredStarts += handedStarts
        deferredCancels += handedCancels
        if deferredStarts.isEmpty && deferredCancels.isEmpty { return false }
        while !deferredStarts.isEmpty || !deferredCancels.isEmpty {
            let starts = deferredStarts, cancels = deferredCancels
            deferredStarts.removeAll()
            deferredCancels.removeAll()
            for t in starts { add(t) }
            for t in cancels { finish(t, HTTPError(.cancelled, "the request was cancelled", afterHeaders: t.gotHead)) }
        }
        return true
    }

    /// The earliest time the loop must act: libcurl's timer or a transfer's
    /// own deadline. Under the lock.
    private func nextWake() -> Int? {
        var w: Int? = events.pointee.timer_at >= 0 ? Int(events.pointee.timer_at) : nil
        for t in active.values {
            if let (_, at) = t.nextDeadline() { w = min(w ?? at, at) }
        }
        return w
    }

    private func add(_ t: Transfer) {
        guard !t.cancelRequested.load(ordering: .relaxed) else {
            t.handler.end(HTTPError(.cancelled, "the request was cancelled"))
            return
        }
        let easy: UnsafeMutableRawPointer
        if let h = idleHandles.popLast() {
            easy = h
            curl_easy_reset(easy)
        } else {
            guard let h = curl_easy_init() else {
                t.handler.end(HTTPError(.other, "libcurl could not create a handle"))
                return
            }
            easy = h
        }
        t.easy = easy
        if let err = t.configure(easy) {
            t.easy = nil
            idleHandles.append(easy)
            t.handler.end(err)
            return
        }
        t.startedAt = monotonicMillis()
        t.lastRead = t.startedAt
        active[easy] = t
        curl_multi_add_handle(multi!, easy)
    }

    /// Ends a transfer: removes it from the multi handle and tells its handler.
    private func finish(_ t: Transfer, _ err: HTTPError?) {
        guard let easy = t.easy, active.removeValue(forKey: easy) != nil else { return }
        curl_multi_remove_handle(multi!, easy)
        t.easy = nil
        t.release()
        if idleHandles.count < 64 { idleHandles.append(easy) } else { curl_easy_cleanup(easy) }
        t.handler.end(err)
    }

    private func error(for code: CURLcode, _ t: Transfer) -> HTTPError {
        let detail = t.errorBufferText() ?? String(cString: curl_easy_strerror(code))
        let after = t.gotHead
        switch code {
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY:
            return HTTPError(.unreachable, "cannot connect: \(detail)")
        case CURLE_OPERATION_TIMEDOUT:
            // libcurl's own connect or total timer.
            let which = t.gotHead || t.connected ? "total" : (t.request.timeouts.connect != nil ? "connect" : "total")
            return HTTPError(.timeout(which), "the \(which) deadline of \(t.limit(which)) ms passed (\(detail))", afterHeaders: after)
        case CURLE_GOT_NOTHING, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_PARTIAL_FILE:
            return HTTPError(.closed, detail, afterHeaders: after)
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER,
            CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH:
            return HTTPError(.tls, detail, afterHeaders: after)
        default:
            return HTTPError(.other, "\(detail) (libcurl error \(code.rawValue))", afterHeaders: after)
        }
    }
}

/// A handle on a transfer in flight.
public struct HTTPTransfer: Sendable {
    let client: HTTPClient
    let transfer: Transfer

    /// Stops the transfer as soon as the loop sees it; its handler then gets
    /// `end(.cancelled)` unless it already ended. Safe from any thread, more
    /// than once.
    public func cancel() {
        if transfer.cancelRequested.exchange(true, ordering: .relaxed) { return }
        client.cancel(transfer)
    }
}

/// A whole response, as `fetch` returns it.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: [UInt8]
    public var text: String { String(decoding: body, as: UTF8.self) }
}

final class Collector: HTTPResponseHandler, @unchecked Sendable {
    let done: @Sendable (Result<HTTPResponse, HTTPError>) -> Void
    var response = HTTPResponse(status: 0, headers: HTTPHeaders(), body: [])
    init(_ done: @escaping @Sendable (Result<HTTPResponse, HTTPError>) -> Void) { self.done = done }
    func head(status: Int, headers: HTTPHeaders) {
        response.status = status
        response.headers = headers
    }
    func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
        response.body.append(contentsOf: bytes)
        return true
    }
    func end(_ error: HTTPError?) {
        if let error { done(.failure(error)) } else { done(.success(response)) }
    }
}

/// One transfer's state. Touched on the loop thread, except
/// `cancelRequested`.
final class Transfer: @unchecked Sendable {
    let request: HTTPRequest
    let handler: HTTPResponseHandler
    let cancelRequested = Atomic<Bool>(false)
    var easy: UnsafeMutableRawPointer?
    var startedAt = 0
    var lastRead = 0
    var gotHead = false
    var connected = false
    var received = 0
    var status = 0
    var headers = HTTPHeaders()
    /// An error decided inside a callback (too large, handler abort).
    var pendingError: HTTPError?
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private var bodyCopy: UnsafeMutableRawBufferPointer?
    private var errorBuffer: UnsafeMutablePointer<CChar>?

    init(request: HTTPRequest, handler: HTTPResponseHandler) {
        self.request = request
        self.handler = handler
    }

    deinit { release() }

    /// Frees what libcurl borrowed for the transfer.
    func release() {
        if let h = headerList { curl_slist_free_all(h) }
        headerList = nil
        bodyCopy?.deallocate()
        bodyCopy = nil
        errorBuffer?.deallocate()
        errorBuffer = nil
    }

    func limit(_ which: String) -> Int {
        switch which {
        case "connect": return request.timeouts.connect ?? 0
        case "first_token": return request.timeouts.firstByte ?? 0
        case "idle": return request.timeouts.idle ?? 0
        default: return request.timeouts.total ?? 0
        }
    }

    /// The deadline the loop enforces itself (first byte, idle); connect and
    /// total are libcurl's own timers.
    func nextDeadline() -> (String, Int)? {
        if !gotHead, let f = request.timeouts.firstByte { return ("first_token", startedAt + f) }
        if gotHead, let i = request.timeouts.idle { return ("idle", lastRead + i) }
        return nil
    }

    func errorBufferText() -> String? {
        guard let e = errorBuffer, e.pointee != 0 else { return nil }
        return String(cString: e)
    }

    /// Sets every option of the transfer; returns an error if one is refused.
    func configure(_ easy: UnsafeMutableRawPointer) -> HTTPError? {
        func check(_ code: CURLcode, _ what: String) -> HTTPError? {
            code == CURLE_OK ? nil : HTTPError(.other, "libcurl refused \(what): \(String(cString: curl_easy_strerror(code)))")
        }
        let me = Unmanaged.passUnretained(self).toOpaque()
        if let e = check(request.url.withCString { descartes_curl_setopt_pointer(easy, CURLOPT_URL, $0) }, "the URL") { return e }
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer!.initialize(to: 0)
        _ = descartes_curl_setopt_pointer(easy, CURLOPT_ERRORBUFFER, errorBuffer)
        _ = descartes_curl_setopt_long(easy, CURLOPT_NOSIGNAL, 1)
        _ = descartes_curl_setopt_long(easy, CURLOPT_FOLLOWLOCATION, 0)
        _ = descartes_curl_setopt_long(easy, CURLOPT_SSL_VERIFYPEER, 1)
        _ = descartes_curl_setopt_long(easy, CURLOPT_SSL_VERIFYHOST, 2)
        _ = descartes_curl_setopt_long(easy, CURLOPT_TCP_NODELAY, 1)
        _ = descartes_curl_setopt_long(easy, CURLOPT_TCP_KEEPALIVE, 1)
        _ = descartes_curl_setopt_long(easy, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_2TLS))
        // CURLOPT_PIPEWAIT over TLS only. With it, transfers started together
        // to a host wait for the first connection to say whether it
        // multiplexes: over TLS, ALPN says so at the end of the handshake,
        // so an HTTP/2 server gets one connection for all of them
        // (HTTP2Tests: 24 streams, one connection; without it, 24). Over
        // plain http:// HTTP/2 is never used (CURL_HTTP_VERSION_2TLS) and
        // libcurl would only learn "no" from the first response's headers:
        // on an HTTP/1.1 server (vLLM, llama.cpp, Ollama, most gateways)
        // concurrent streams then queued behind the first one.
        if request.url.utf8.count > 8, request.url.prefix(8).lowercased() == "https://" {
            _ = descartes_curl_setopt_long(easy, CURLOPT_PIPEWAIT, 1)
        }
        _ = "http,https".withCString { descartes_curl_setopt_pointer(easy, CURLOPT_PROTOCOLS_STR, $0) }
        _ = "".withCString { descartes_curl_setopt_pointer(easy, CURLOPT_ACCEPT_ENCODING, $0) }  // any encoding libcurl decodes
        if let ca = request.caBundle, let e = check(ca.withCString { descartes_curl_setopt_pointer(easy, CURLOPT_CAINFO, $0) }, "the CA bundle") { return e }
        if let p = request.proxy, let e = check(p.withCString { descartes_curl_setopt_pointer(easy, CURLOPT_PROXY, $0) }, "the proxy") { return e }
        if let c = request.timeouts.connect { _ = descartes_curl_setopt_long(easy, CURLOPT_CONNECTTIMEOUT_MS, c) }
        if let t = request.timeouts.total { _ = descartes_curl_setopt_long(easy, CURLOPT_TIMEOUT_MS, t) }

        var list: UnsafeMutablePointer<curl_slist>? = nil
        for (k, v) in request.headers { list = "\(k): \(v)".withCString { curl_slist_append(list, $0) } }
        list = "Expect:".withCString { curl_slist_append(list, $0) }
        headerList = list
        _ = descartes_curl_setopt_pointer(easy, CURLOPT_HTTPHEADER, list)

        switch request.method {
        case "GET": _ = descartes_curl_setopt_long(easy, CURLOPT_HTTPGET, 1)
        case "HEAD": _ = descartes_curl_setopt_long(easy, CURLOPT_NOBODY, 1)
        default:
            if request.method != "POST" {
                _ = request.method.withCString { descartes_curl_setopt_pointer(easy, CURLOPT_CUSTOMREQUEST, $0) }
            }
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, request.body.count), alignment: 1)
            request.body.withUnsafeBytes { if $0.count > 0 { copy.copyMemory(from: $0) } }
            bodyCopy = copy
            _ = descartes_curl_setopt_long(easy, CURLOPT_POST, 1)
            _ = descartes_curl_setopt_off(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count))
            _ = descartes_curl_setopt_pointer(easy, CURLOPT_POSTFIELDS, copy.baseAddress)
        }

        _ = descartes_curl_setopt_pointer(easy, CURLOPT_PRIVATE, me)
        _ = descartes_curl_setopt_pointer(easy, CURLOPT_HEADERDATA, me)
        _ = descartes_curl_setopt_pointer(easy, CURLOPT_WRITEDATA, me)
        _ = descartes_curl_setopt_data_fn(easy, CURLOPT_HEADERFUNCTION, Transfer.onHeader)
        _ = descartes_curl_setopt_data_fn(easy, CURLOPT_WRITEFUNCTION, Transfer.onBody)
        return nil
    }

    static let onHeader: descartes_curl_data_fn = { data, size, count, ctx in
        let n = size * count
        guard let data, let ctx else { return n }
        let t = Unmanaged<Transfer>.fromOpaque(ctx).takeUnretainedValue()
        t.connected = true
        let line = UnsafeRawBufferPointer(start: data, count: n)
        t.header(line)
        return n
    }

    static let onBody: descartes_curl_data_fn = { data, size, count, ctx in
        let n = size * count
        guard let ctx else { return 0 }
        let t = Unmanaged<Transfer>.fromOpaque(ctx).takeUnretainedValue()
        return t.deliver(UnsafeRawBufferPointer(start: data, count: n)) ? n : 0
    }

    /// One header line ("HTTP/1.1 200 OK\r\n", "name: value\r\n", "\r\n").
    ///
    /// Read as bytes: a response has a dozen of these, and Character-level
    /// String work on each (hasPrefix, split, firstIndex) cost more than
    /// the rest of a small request's client side (docs/benchmarks.md).
    private func header(_ line: UnsafeRawBufferPointer) {
        var end = line.count
        while end > 0, line[end - 1] == 0x0A || line[end - 1] == 0x0D { end -= 1 }
        if end == 0 {
            // End of a header block; 1xx blocks are followed by the real one.
            if status >= 200 && !gotHead {
                gotHead = true
                lastRead = monotonicMillis()
                handler.head(status: status, headers: headers)
            }
            return
        }
        if end >= 5 && line[0] == UInt8(ascii: "H") && line[1] == UInt8(ascii: "T") && line[2] == UInt8(ascii: "T")
            && line[3] == UInt8(ascii: "P") && line[4] == UInt8(ascii: "/")
        {
            // A new response (after 1xx, or the first): start over. The
            // status is the digits after the first space.
            var i = 5
            while i < end && line[i] != 0x20 { i += 1 }
            while i < end && line[i] == 0x20 { i += 1 }
            var code = 0
            var digits = 0
            while i < end, line[i] >= 0x30, line[i] <= 0x39, digits < 4 {
                code = code * 10 + Int(line[i] - 0x30)
                digits += 1
                i += 1
            }
            status = digits == 3 ? code : 0  // a status is three digits
            headers = HTTPHeaders()
            return
        }
        var colon = 0
        while colon < end && line[colon] != UInt8(ascii: ":") { colon += 1 }
        guard colon < end else { return }  // not a field (obsolete folding, garbage): ignored
        var v = colon + 1
        while v < end && (line[v] == 0x20 || line[v] == 0x09) { v += 1 }
        headers.fields.append((
            name: String(decoding: UnsafeRawBufferPointer(rebasing: line[0..<colon]), as: UTF8.self),
            value: String(decoding: UnsafeRawBufferPointer(rebasing: line[v..<end]), as: UTF8.self)
        ))
    }

    private func deliver(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if !gotHead {
            // A body without a blank line seen (HTTP/1.0 style): report the head now.
            gotHead = true
            handler.head(status: status, headers: headers)
        }
        lastRead = monotonicMillis()
        received += bytes.count
        if received > request.maxResponseBytes {
            pendingError = HTTPError(.tooLarge, "the response is larger than \(request.maxResponseBytes) bytes", afterHeaders: true)
            return false
        }
        if !handler.body(bytes) {
            pendingError = HTTPError(.aborted, "the response handler stopped the transfer", afterHeaders: true)
            return false
        }
        return true
    }
}

/// Milliseconds on the monotonic clock.
@inline(__always)
func monotonicMillis() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

extension String {
    func replacingOccurrences(_ a: Character, _ b: Character) -> String {
        String(map { $0 == a ? b : $0 })
    }
}
