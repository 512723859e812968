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

    /// Emits what the consumer holds back (an `EventBatcher`): called after
    /// the events of each network read, and before the terminal event.
    func flush()
}

extension StreamConsumer {
    public func begin(status: Int, headers: HTTPHeaders) {}
    public func flush() {}
    public func line(_ line: UnsafeRawBufferPointer) throws(ProviderError) -> Bool {
        throw ProviderError(.backend, "this stream reader does not take NDJSON lines")
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
/// Cancel the call's transfer from `PluginCall.onCancel`.
public final class StreamResponseHandler: HTTPResponseHandler, @unchecked Sendable {
    public enum Framing: Sendable {
        case serverSentEvents
        case lines
    }

    let call: PluginCall
    let consumer: any StreamConsumer
    let endpoint: String
    let framing: Framing
    let maxErrorBody: Int

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
    private var done = false

    /// - Parameters:
    ///   - endpoint: named in transport errors (never holds a credential).
    ///   - maxLineBytes: the longest event-stream line or NDJSON line accepted.
    public init(
        call: PluginCall, endpoint: String, framing: Framing = .serverSentEvents, maxErrorBody: Int = 1 << 20,
        maxLineBytes: Int = 16 << 20, consumer: any StreamConsumer
    ) {
        self.call = call
        self.consumer = consumer
        self.endpoint = endpoint
        self.framing = framing
        self.maxErrorBody = maxErrorBody
        sse = SSEDecoder(maxLineBytes: maxLineBytes)
        lines = LineDecoder(maxLineBytes: maxLineBytes)
    }

    public func head(status: Int, headers: HTTPHeaders) {
        self.status = status
        self.headers = headers
        guard (200..<300).contains(status) else {
            mode = .error
            return
        }
        mode = framing == .lines ? .streaming : .sniffing
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
            // No head reported (cannot happen with HTTPClient): treat as a stream.
            mode = .sniffing
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
            }
        } catch {
            fail(Self.providerError(error))
            return false  // stop reading a stream that failed
        }
        if !done { consumer.flush() }
        return true
    }

    public func end(_ error: HTTPError?) {
        if done { return }
        if let error {
            if mode == .error && error.kind != .cancelled {
                // The status says more than the cut of its error body.
                fail(consumer.httpError(status: status, headers: headers, body: collected))
            } else {
                fail(error.providerError(endpoint: endpoint))
            }
            return
        }
        switch mode {
        case .error:
            fail(consumer.httpError(status: status, headers: headers, body: collected))
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
                    try lines.finish { l in
                        if done { return }
                        events += 1
                        if try consumer.line(l) { try complete(sawTerminal: true) }
                    }
                }
                if done { return }
                if events == 0 && !head.isEmpty {
                    throw ProviderError(
                        .invalidResponse,
                        "HTTP \(status): the answer is not \(framing == .lines ? "JSON lines" : "an event stream"): \(ProviderHTTP.excerpt(head))",
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
        call.finish(f)
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
