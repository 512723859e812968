/// What a provider plugin supplies to `StreamResponseHandler`: its wire
/// format. The handler does the rest (status check, framing, error bodies,
/// the one terminal event, transport errors).
///
/// Every method is called on the HTTP client's loop thread, one at a time.
public protocol StreamConsumer: AnyObject {
    /// A 2xx answer began; its events follow.
    func begin(status: Int, headers: HTTPHeaders)

    /// One server-sent event of a 2xx answer (framing `.serverSentEvents`).
    /// Returns true when it was the stream's terminal event (OpenAI's
    /// `[DONE]`, Anthropic's `message_stop`); the handler then ends the call
    /// with `finish(sawTerminal: true)`. Throws to end the call with that
    /// error (an error event, data that is not JSON).
    func event(_ event: SSEDecoder.Event) throws(ProviderError) -> Bool

    /// One non-empty line of a 2xx answer (framing `.lines`, NDJSON).
    /// Returns true when it was the terminal line.
    func line(_ line: UnsafeRawBufferPointer) throws(ProviderError) -> Bool

    /// One message of a 2xx answer (framing `.eventStream`, AWS's binary
    /// event stream). Returns true when it was the terminal message.
    func message(_ message: EventStreamDecoder.Message) throws(ProviderError) -> Bool

    /// A 2xx answer that is one JSON document rather than an event stream
    /// (a server that ignored `stream: true`): parse it, emit its events,
    /// and return the result.
    func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish

    /// The result, after the terminal event (`sawTerminal`), or when the body
    /// ended cleanly without one. In the second case throw `streamClosed`
    /// unless the format allows a stream to end that way.
    func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish

    /// The error for a non-2xx answer, from its (bounded) body.
    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError

    /// The error for a transfer that failed below the API (`mapped` is the
    /// kit's mapping): a local server's plugin says how to start the server
    /// when nothing answers. The default is `mapped`.
    func transportError(_ error: HTTPError, mapped: ProviderError) -> ProviderError

    /// Ends the call with its result. The default does so at once; a
    /// consumer that must still look something up (llama.cpp counts an
    /// answer that reported no usage with the server's tokenizer) finishes
    /// the call itself once it has it.
    func deliver(_ finish: Wire.Finish, to call: PluginCall)

    /// Emits what the consumer holds back (an `EventBatcher`): called after
    /// the events of each network read, and before the terminal event.
    func flush()
}

extension StreamConsumer {
    public func begin(status: Int, headers: HTTPHeaders) {}
    public func flush() {}
    public func event(_ event: SSEDecoder.Event) throws(ProviderError) -> Bool {
        throw ProviderError(.backend, "this stream reader does not take server-sent events")
    }
    public func line(_ line: UnsafeRawBufferPointer) throws(ProviderError) -> Bool {
        throw ProviderError(.backend, "this stream reader does not take NDJSON lines")
    }
    public func message(_ message: EventStreamDecoder.Message) throws(ProviderError) -> Bool {
        throw ProviderError(.backend, "this stream reader does not take event-stream messages")
    }
    public func transportError(_ error: HTTPError, mapped: ProviderError) -> ProviderError { mapped }
    public func deliver(_ finish: Wire.Finish, to call: PluginCall) { call.finish(finish) }
}

/// How a plugin waits for a server that is not ready yet, within the
/// request's deadlines (`DeadlineBudget`).
///
/// A local server says "not yet" in two ways while it loads a model: it
/// holds its answer back (Ollama sends the first byte once the model is in
/// memory), or it answers with a status that says so (llama.cpp's server:
/// 503 `Loading model`; Ollama with a full queue: 503 `server busy`). With a
/// policy, `StreamResponseHandler`:
///
/// - gives each attempt only what is left of the request's deadlines
///   (`DeadlineBudget.timeouts()`), so a held-back answer is waited for
///   until the `first_token` deadline, else the `total` one, and no sooner;
/// - sends the caller a notice after `patience` without an answer, saying
///   what the server is probably doing and how long the wait may last;
/// - asks again after a not-ready answer (the server's Retry-After, else
///   250 ms doubling to 2 s), with a notice on the first one, while those
///   deadlines allow (`attemptsWithoutDeadline` attempts when the request has
///   neither);
/// - once they have passed, fails with `timeout` naming the deadline, its
///   limit and the server's last answer.
///
/// Only answers before the first byte of a 2xx are asked again: nothing of
/// the answer has reached the caller then.
public struct NotReadyPolicy: Sendable {
    /// Who is waited for, in notices and errors ("Ollama", "the llama.cpp server").
    public var server: String
    /// The statuses that mean "not ready yet, ask again".
    public var statuses: Set<Int>
    /// When not empty, a status of `statuses` means "not ready" only if its
    /// body or the error's message contains one of these (ASCII case
    /// ignored), e.g. `["loading model"]`; any other answer with that status
    /// fails at once.
    public var markers: [String]
    /// What the server is probably doing while it holds its answer back
    /// ("loading 'gemma3:1b' into memory"), for the notice and the timeout.
    public var likelyDoing: String?
    /// The request's deadlines, counted from when the plugin received it.
    public var budget: DeadlineBudget
    /// The notice comes after this long without an answer.
    public var patience: Duration
    /// Attempts in all when the request has neither a first-token nor a
    /// total deadline.
    public var attemptsWithoutDeadline: Int

    public init(
        server: String, budget: DeadlineBudget, statuses: Set<Int> = [503], markers: [String] = [], likelyDoing: String? = nil,
        patience: Duration = .seconds(2), attemptsWithoutDeadline: Int = 6
    ) {
        self.server = server
        self.budget = budget
        self.statuses = statuses
        self.markers = markers
        self.likelyDoing = likelyDoing
        self.patience = patience
        self.attemptsWithoutDeadline = attemptsWithoutDeadline
    }

    /// Whether an error answer (its status, body and the error made of it)
    /// means "not ready yet".
    public func isNotReady(status: Int, body: [UInt8], error: ProviderError) -> Bool {
        guard statuses.contains(status) else { return false }
        if markers.isEmpty { return true }
        let text = (String(decoding: body.prefix(1 << 16), as: UTF8.self) + "\n" + error.message).lowercased()
        return markers.contains { text.contains($0.lowercased()) }
    }

    /// The notice after `patience` without an answer.
    func silenceNotice() -> String {
        var text = "no answer after \(DeadlineBudget.format(patience)) from \(server)"
        if let likelyDoing { text += ": it is probably \(likelyDoing)" }
        if let b = budget.beforeFirstToken() {
            text += "; waiting up to the \(b.which.split(separator: "_").joined(separator: " ")) deadline (\(DeadlineBudget.format(b.limit)))"
        }
        return text
    }

    /// What a deadline error before the answer began adds.
    var beforeAnswer: String {
        "before \(server) answered" + (likelyDoing.map { " (it may still be \($0))" } ?? "")
    }

    /// The error once the deadlines passed while the server was not ready.
    func expired(_ which: String, lastAnswer e: ProviderError) -> ProviderError {
        budget.expired(which, while: "while \(server) was not ready (last answer: \(e.message))")
    }
}

/// Drives one streamed provider answer from `HTTPClient` into a
/// `PluginCall`, so that every HTTP plugin treats the ugly parts the same way:
///
/// - a non-2xx status: the body is collected (at most `maxErrorBody` bytes)
///   and turned into an error by the consumer (`ProviderHTTP.error`);
/// - a 2xx body is decoded as server-sent events (or NDJSON lines) as it
///   arrives, whatever the read boundaries, and each event handed to the
///   consumer; a 2xx body that starts with `{` or `[` is a whole JSON
///   document, and a 2xx body with no event in it at all is reported as
///   `invalidResponse` with a bounded excerpt;
/// - after the terminal event the rest of the body is drained (so the
///   connection can be reused) and ignored;
/// - a transport failure becomes the kit's mapping: a stream cut before its
///   terminal event is `streamClosed`, a deadline `timeout`, a refused
///   connection `providerUnavailable`;
/// - exactly one terminal event reaches the call, after the consumer's
///   `flush()`; `flush()` also follows the events of every network read, so
///   a consumer that batches fragments (`EventBatcher`) adds no latency.
///
/// With a `NotReadyPolicy` it also waits, within the request's deadlines,
/// for a server that is not ready yet, sending the request again as the
/// policy says.
///
/// Start it with `start(_:on:)`, which also cancels the transfer when the
/// call is cancelled.
public final class StreamResponseHandler: HTTPResponseHandler, @unchecked Sendable {
    public enum Framing: Sendable {
        /// Server-sent events (`StreamConsumer.event`); a body that starts
        /// with `{` or `[` is a whole document (`wholeBody`).
        case serverSentEvents
        /// Newline-delimited JSON (`StreamConsumer.line`). A last line
        /// without its newline counts if it parses; one that does not means
        /// the stream was cut (`streamClosed`).
        case lines
        /// AWS's binary event stream (`application/vnd.amazon.eventstream`,
        /// `StreamConsumer.message`), every message's CRCs checked; a body
        /// that starts with `{` is a whole document (`wholeBody`). A body
        /// that ends inside a message was cut (`streamClosed`).
        case eventStream
        /// One JSON document, the answer to a request made without
        /// streaming: collected (up to the request's `maxResponseBytes`) and
        /// handed to `wholeBody`.
        case document
    }

    let call: PluginCall
    let consumer: any StreamConsumer
    let endpoint: String
    let framing: Framing
    let maxErrorBody: Int
    let maxLineBytes: Int
    let notReady: NotReadyPolicy?

    // For asking again.
    private var client: HTTPClient?
    private var request: HTTPRequest?
    private var attempt = 0
    /// Touched across threads: the transfer in flight (for cancel), which
    /// attempt it is, the last attempt whose transfer ended, and whether its
    /// answer has begun (for the notice). The transfer holds this handler
    /// until it ends, so it is kept here only while it runs: kept after its
    /// end, the two held each other, and every call's handler, consumer and
    /// buffers (about 10 KB) stayed for the life of the process.
    private let shared = Lock<(transfer: HTTPTransfer?, generation: Int, ended: Int, gotHead: Bool)>((nil, 0, 0, false))

    private enum Mode { case waiting, sniffing, streaming, whole, error }
    private var mode = Mode.waiting
    private var status = 0
    private var headers = HTTPHeaders()
    private var collected: [UInt8] = []
    /// The first bytes of a 2xx body, for the message when it holds no event.
    private var head: [UInt8] = []
    private var events = 0
    private var sse: SSEDecoder
    private var lines: LineDecoder
    private var frames = EventStreamDecoder()
    private var done = false

    /// - Parameters:
    ///   - endpoint: named in transport errors (never holds a credential).
    ///   - maxLineBytes: the longest event-stream line or NDJSON line accepted.
    ///   - notReady: how to wait for a server that is not ready yet (nil:
    ///     every answer is final).
    public init(
        call: PluginCall, endpoint: String, framing: Framing = .serverSentEvents, maxErrorBody: Int = 1 << 20,
        maxLineBytes: Int = 16 << 20, notReady: NotReadyPolicy? = nil, consumer: any StreamConsumer
    ) {
        self.call = call
        self.consumer = consumer
        self.endpoint = endpoint
        self.framing = framing
        self.maxErrorBody = maxErrorBody
        self.maxLineBytes = maxLineBytes
        self.notReady = notReady
        sse = SSEDecoder(maxLineBytes: maxLineBytes)
        lines = LineDecoder(maxLineBytes: maxLineBytes)
    }

    /// Sends `request` on `client` with this handler, and cancels the
    /// transfer when the call is cancelled. With a `NotReadyPolicy` each
    /// attempt's timeouts are what is left of the policy's budget.
    public func start(_ request: HTTPRequest, on client: HTTPClient) {
        self.client = client
        self.request = request
        call.onCancel { [self] in shared.withLock { $0.transfer }?.cancel() }
        send()
        if let p = notReady {
            Later.run(after: p.patience) { [self] in
                guard !call.isFinished, !shared.withLock({ $0.gotHead }) else { return }
                call.notice("info", p.silenceNotice())
            }
        }
    }

    private func send() {
        guard let client, var r = request else { return }
        if let p = notReady { r.timeouts = p.budget.timeouts() }
        let generation = shared.withLock { s -> Int in
            s.generation += 1
            return s.generation
        }
        let t = client.start(r, handler: self)
        // Not when it already ended (in `start`, on this thread).
        shared.withLock { s in if s.generation == generation && s.ended != generation { s.transfer = t } }
        if call.isCancelled { t.cancel() }
    }

    public func head(status: Int, headers: HTTPHeaders) {
        self.status = status
        self.headers = headers
        if notReady != nil { shared.withLock { $0.gotHead = true } }
        guard (200..<300).contains(status) else {
            mode = .error
            return
        }
        mode = bodyMode
        consumer.begin(status: status, headers: headers)
    }

    public func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if done { return true }  // drain what follows the terminal event
        switch mode {
        case .error:
            let room = maxErrorBody - collected.count
            if room > 0 { collected.append(contentsOf: bytes.prefix(room)) }
            return true
        case .whole:
            collected.append(contentsOf: bytes)
            return true
        case .waiting:
            // No head reported (cannot happen with HTTPClient): read it as a 2xx.
            mode = bodyMode
            return body(bytes)
        case .sniffing:
            // An event stream starts with a field name, ':' or a blank line;
            // a JSON document with '{' or '['.
            var i = 0
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
            if i == bytes.count { return feed(bytes) }
            if bytes[i] == UInt8(ascii: "{") || bytes[i] == UInt8(ascii: "[") {
                mode = .whole
                collected.append(contentsOf: bytes)
                return true
            }
            mode = .streaming
            return feed(bytes)
        case .streaming:
            return feed(bytes)
        }
    }

    /// How a 2xx body is read.
    private var bodyMode: Mode {
        switch framing {
        case .serverSentEvents, .eventStream: return .sniffing
        case .lines: return .streaming
        case .document: return .whole
        }
    }

    private func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if head.count < 512 { head.append(contentsOf: bytes.prefix(512 - head.count)) }
        do {
            switch framing {
            case .serverSentEvents:
                try sse.feed(bytes) { e in
                    if done { return }
                    events += 1
                    if try consumer.event(e) { try complete(sawTerminal: true) }
                }
            case .lines:
                try lines.feed(bytes) { l in
                    if done { return }
                    events += 1
                    if try consumer.line(l) { try complete(sawTerminal: true) }
                }
            case .eventStream:
                try frames.feed(bytes) { m in
                    if done { return }
                    events += 1
                    if try consumer.message(m) { try complete(sawTerminal: true) }
                }
            case .document:
                break  // collected in `.whole`
            }
        } catch {
            fail(Self.providerError(error))
            return false  // stop reading a stream that failed
        }
        if !done { consumer.flush() }
        return true
    }

    public func end(_ error: HTTPError?) {
        shared.withLock { s in
            s.transfer = nil
            s.ended = s.generation
        }
        if done { return }
        if mode == .error && error?.kind != .cancelled {
            // The status says more than the cut of its error body.
            let e = consumer.httpError(status: status, headers: headers, body: collected)
            if let p = notReady, p.isNotReady(status: status, body: collected, error: e) {
                askAgain(p, e)
            } else {
                fail(e)
            }
            return
        }
        if let error {
            var mapped = error.providerError(endpoint: endpoint)
            if let p = notReady {
                mapped = p.budget.error(for: error, endpoint: endpoint, while: mode == .waiting ? p.beforeAnswer : nil)
            }
            fail(consumer.transportError(error, mapped: mapped))
            return
        }
        switch mode {
        case .error:
            break  // handled above
        case .whole:
            do throws(ProviderError) { finish(try consumer.wholeBody(collected, headers: headers)) } catch { fail(error) }
        case .waiting, .sniffing, .streaming:
            do {
                switch framing {
                case .serverSentEvents:
                    try sse.finish { e in
                        if done { return }
                        events += 1
                        if try consumer.event(e) { try complete(sawTerminal: true) }
                    }
                case .lines:
                    let pending = lines.pendingBytes
                    do {
                        try lines.finish { l in
                            if done { return }
                            events += 1
                            if try consumer.line(l) { try complete(sawTerminal: true) }
                        }
                    } catch let e as ProviderError where e.kind == .invalidResponse && !done {
                        throw ProviderError(.streamClosed, "the stream ended in the middle of a line (\(pending) bytes)")
                    }
                case .eventStream:
                    if !done && frames.pendingBytes > 0 {
                        throw ProviderError(.streamClosed, "the stream ended inside an event-stream message (\(frames.pendingBytes) bytes of it)")
                    }
                case .document:
                    break  // `.whole`
                }
                if done { return }
                if events == 0 && !head.isEmpty {
                    throw ProviderError(
                        .invalidResponse,
                        "HTTP \(status): the answer is not \(framing == .lines ? "JSON lines" : framing == .eventStream ? "an AWS event stream" : "an event stream"): \(ProviderHTTP.excerpt(head))",
                        status: status)
                }
                try complete(sawTerminal: false)
            } catch {
                fail(Self.providerError(error))
            }
        }
    }

    private func complete(sawTerminal: Bool) throws(ProviderError) {
        let f = try consumer.finish(sawTerminal: sawTerminal)
        finish(f)
    }

    private func finish(_ f: Wire.Finish) {
        done = true
        consumer.flush()
        consumer.deliver(f, to: call)
    }

    /// A not-ready answer: ask again after the backoff, within the budget.
    private func askAgain(_ p: NotReadyPolicy, _ e: ProviderError) {
        let wait: Duration
        if let b = p.budget.beforeFirstToken() {
            if b.left <= .zero {
                fail(p.expired(b.which, lastAnswer: e))
                return
            }
            wait = min(DeadlineBudget.backoff(attempt: attempt, retryAfter: e.retryAfter), b.left)
        } else {
            // No deadline to wait within: a few attempts, then the answer stands.
            if attempt + 1 >= p.attemptsWithoutDeadline {
                fail(e)
                return
            }
            wait = DeadlineBudget.backoff(attempt: attempt, retryAfter: e.retryAfter)
        }
        if attempt == 0 {
            call.notice("info", "\(p.server) is not ready (\(e.message)); asking again until the request's deadline")
        }
        attempt += 1
        status = 0
        headers = HTTPHeaders()
        collected = []
        head = []
        events = 0
        mode = .waiting
        sse = SSEDecoder(maxLineBytes: maxLineBytes)
        lines = LineDecoder(maxLineBytes: maxLineBytes)
        frames = EventStreamDecoder()
        shared.withLock { $0.gotHead = false }
        Later.run(after: wait) { [self] in
            if call.isFinished { return }
            if let b = p.budget.beforeFirstToken(), b.left <= .zero {
                fail(p.expired(b.which, lastAnswer: e))
                return
            }
            send()
        }
    }

    private func fail(_ e: ProviderError) {
        done = true
        consumer.flush()  // what arrived before the failure is still the caller's
        call.fail(e)
    }

    static func providerError(_ error: any Error) -> ProviderError {
        if let e = error as? ProviderError { return e }
        return ProviderError(.invalidResponse, "\(error)")
    }
}
