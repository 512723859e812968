internal import CCurl
internal import CCurlShim
import Glibc
import Synchronization

/// An HTTP client over one libcurl multi handle driven by one thread.
///
/// Every transfer of a backend instance runs on this loop, however many
/// there are: connections are reused (and multiplexed over HTTP/2 where the
/// server offers it), and a thousand concurrent streams cost one thread, not
/// a thousand. Transfers are started and cancelled from any thread; their
/// handlers run on the loop thread.
///
/// Security defaults, which no option turns off: certificates and host names
/// are always verified (a CA bundle can be chosen), redirects are never
/// followed (a 3xx is reported to the handler like any status, so
/// credentials never travel to another host), and `Expect: 100-continue` is
/// not used.
public final class HTTPClient: @unchecked Sendable {
    /// A name for the loop thread and log messages.
    public let name: String

    // Touched only on the loop thread, except where noted.
    private var multi: UnsafeMutableRawPointer?
    private var active: [UnsafeMutableRawPointer: Transfer] = [:]
    private var idleHandles: [UnsafeMutableRawPointer] = []

    /// Work handed to the loop from other threads.
    private struct Inbox {
        var start: [Transfer] = []
        var cancel: [Transfer] = []
        var stopping = false
        var threadStarted = false
        var stopped = false
    }
    private let inbox = Lock(Inbox())
    private var thread = pthread_t()
    /// The multi handle as seen from other threads (for curl_multi_wakeup).
    private let multiForWakeup = Atomic<UInt>(0)

    public init(name: String) {
        self.name = name
    }

    deinit {
        shutdown()
    }

    // MARK: Public API

    /// Starts a transfer; returns at once. The handler is called on the loop
    /// thread until `end` (or, if the client is already shut down, `end` is
    /// called at once on the calling thread).
    ///
    /// The loop keeps the client alive until `shutdown()`; a backend calls it
    /// from its own shutdown.
    @discardableResult
    public func start(_ request: HTTPRequest, handler: HTTPResponseHandler) -> HTTPTransfer {
        let t = Transfer(request: request, handler: handler)
        let refused = inbox.withLock { box -> Bool in
            if box.stopping { return true }
            box.start.append(t)
            if !box.threadStarted {
                box.threadStarted = true
                startThread()
            }
            return false
        }
        if refused {
            handler.end(HTTPError(.cancelled, "the HTTP client is shut down"))
        } else {
            wakeup()
        }
        return HTTPTransfer(client: self, transfer: t)
    }

    /// Cancels every transfer (their handlers get `.cancelled`) and stops the
    /// loop thread. Idempotent; waits for the thread to finish.
    public func shutdown() {
        let join = inbox.withLock { box -> Bool in
            if box.stopping { return false }
            box.stopping = true
            return box.threadStarted
        }
        guard join else { return }
        wakeup()
        // From the loop thread itself (the last reference dropped in a
        // handler, or a backend shut down from one), joining would wait for
        // ourselves: detach instead, so the thread's stack is still
        // reclaimed when it ends (ThreadSanitizer reported the leak).
        if pthread_equal(pthread_self(), thread) != 0 { pthread_detach(thread) } else { pthread_join(thread, nil) }
    }

    /// Runs a request to its end and returns the status, headers and body
    /// (at most `maxResponseBytes`). For small calls that are not streamed.
    public func fetch(_ request: HTTPRequest, _ done: @escaping @Sendable (Result<HTTPResponse, HTTPError>) -> Void) -> HTTPTransfer {
        start(request, handler: Collector(done))
    }

    func cancel(_ t: Transfer) {
        inbox.withLock { $0.cancel.append(t) }
        wakeup()
    }

    private func wakeup() {
        let m = multiForWakeup.load(ordering: .acquiring)
        if m != 0 { curl_multi_wakeup(UnsafeMutableRawPointer(bitPattern: m)) }
    }

    // MARK: The loop

    /// The name of each client's transfer-loop thread (at most 15 bytes).
    public static let threadName = "descartes-http"

    private func startThread() {
        _ = descartes_curl_global_init_once()
        let m = curl_multi_init()
        multi = m
        _ = descartes_curl_multi_setopt_long(m!, CURLMOPT_MAX_HOST_CONNECTIONS, 0)
        multiForWakeup.store(UInt(bitPattern: m), ordering: .releasing)
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
        let m = multi!
        var running: Int32 = 0
        while true {
            let (starts, cancels, stopping) = inbox.withLock { box -> ([Transfer], [Transfer], Bool) in
                defer {
                    box.start.removeAll(keepingCapacity: true)
                    box.cancel.removeAll(keepingCapacity: true)
                }
                return (box.start, box.cancel, box.stopping)
            }
            for t in starts { add(t) }
            for t in cancels { finish(t, HTTPError(.cancelled, "the request was cancelled", afterHeaders: t.gotHead)) }
            if stopping {
                for t in Array(active.values) { finish(t, HTTPError(.cancelled, "the HTTP client is shutting down", afterHeaders: t.gotHead)) }
                // Transfers submitted after the last drain.
                let late = inbox.withLock { box -> [Transfer] in
                    defer { box.start.removeAll() }
                    return box.start
                }
                for t in late { t.handler.end(HTTPError(.cancelled, "the HTTP client is shut down")) }
                break
            }

            curl_multi_perform(m, &running)
            var left: Int32 = 0
            while let msg = curl_multi_info_read(m, &left) {
                guard msg.pointee.msg == CURLMSG_DONE, let easy = msg.pointee.easy_handle,
                    let t = active[easy]
                else { continue }
                let code = msg.pointee.data.result
                finish(t, code == CURLE_OK ? t.pendingError : t.pendingError ?? error(for: code, t))
            }
            let now = monotonicMillis()
            var wait = 1000
            for t in active.values {
                if let (which, at) = t.nextDeadline() {
                    if at <= now {
                        finish(t, HTTPError(.timeout(which), "the \(which.replacingOccurrences("_", " ")) deadline of \(t.limit(which)) ms passed", afterHeaders: t.gotHead))
                    } else {
                        wait = min(wait, at - now)
                    }
                }
            }
            var fds: Int32 = 0
            curl_multi_poll(m, nil, 0, Int32(max(1, wait)), &fds)
        }
        for h in idleHandles { curl_easy_cleanup(h) }
        idleHandles.removeAll()
        multiForWakeup.store(0, ordering: .releasing)
        curl_multi_cleanup(m)
        multi = nil
        inbox.withLock { $0.stopped = true }
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

    /// Ends a transfer: removes it from the loop and tells its handler.
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
        // No CURLOPT_PIPEWAIT: with it, transfers started together to a host
        // wait for the first connection to say whether it multiplexes, and on
        // an HTTP/1.1 server (vLLM, llama.cpp, Ollama, most gateways) they
        // then queue behind it until it ends: four long streams ran one
        // after another. Without it each gets a connection at once; an
        // established HTTP/2 connection is still shared.
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
    private func header(_ line: UnsafeRawBufferPointer) {
        var end = line.count
        while end > 0, line[end - 1] == 0x0A || line[end - 1] == 0x0D { end -= 1 }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: line[0..<end]), as: UTF8.self)
        if text.hasPrefix("HTTP/") {
            // A new response (after 1xx, or the first): start over.
            let parts = text.split(separator: " ", maxSplits: 2)
            status = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
            headers = HTTPHeaders()
            return
        }
        if text.isEmpty {
            // End of a header block; 1xx blocks are followed by the real one.
            if status >= 200 && !gotHead {
                gotHead = true
                lastRead = monotonicMillis()
                handler.head(status: status, headers: headers)
            }
            return
        }
        if let colon = text.firstIndex(of: ":") {
            let name = String(text[..<colon])
            var value = text[text.index(after: colon)...]
            while value.first == " " || value.first == "\t" { value = value.dropFirst() }
            headers.fields.append((name: name, value: String(value)))
        }
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
