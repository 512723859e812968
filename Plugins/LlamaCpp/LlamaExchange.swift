// One /v1/chat/completions request to a llama.cpp server, streamed (SSE) or
// not, decoded by the shared OpenAI chat-completions dialect
// (DescartesOpenAIChat). What is particular to a local llama.cpp server:
//
// - while it loads its model, llama-server answers 503 {"error": {"message":
//   "Loading model", "type": "unavailable_error"}}: asked again, with
//   backoff, within the request's deadlines;
// - llama-cpp-python's server sends no usage when streaming (llama-server
//   does, with `timings`): the plugin then counts the answer with the
//   server's own tokenizer (or estimates without one) and marks the usage
//   estimated.
import DescartesOpenAIChat

/// Forwards the dialect's events to the call through an `EventBatcher` (the
/// chunks one network read brought become one event; flushed after every
/// read), keeping the answer's text so that it can be counted when the
/// server reports no usage.
final class CountingSink: ChatEventSink {
    let call: EventBatcher
    var text: [UInt8] = []
    var textChunks = 0
    var reasoningBytes = 0

    init(_ call: PluginCall) { self.call = EventBatcher(call: call) }

    func flush() { call.flush() }

    func start(id: String?, model: String?) { call.start(id: id, model: model) }
    func text(bytes: UnsafeRawBufferPointer) {
        textChunks += 1
        text.append(contentsOf: bytes)
        call.text(bytes: bytes)
    }
    func reasoning(bytes: UnsafeRawBufferPointer) {
        reasoningBytes += bytes.count
        call.reasoning(bytes: bytes)
    }
    func toolCallStart(index: Int, id: String, name: String) { call.toolCallStart(index: index, id: id, name: name) }
    func toolCallDelta(index: Int, bytes: UnsafeRawBufferPointer) { call.toolCallDelta(index: index, bytes: bytes) }
    func toolCallEnd(index: Int) { call.toolCallEnd(index: index) }
}

final class LlamaExchange: HTTPResponseHandler, @unchecked Sendable {
    let backend: LlamaCppBackend
    let call: PluginCall
    let request: ModelRequest
    let streaming: Bool
    let body: [UInt8]
    let budget: DeadlineBudget

    private let transfer = Lock<(current: HTTPTransfer?, gotHead: Bool)>((nil, false))

    // Loop-thread state of the current attempt.
    private var status = 0
    private var headers = HTTPHeaders()
    private var collected: [UInt8] = []
    private var sniffed = false
    private var whole = false
    private var sse = SSEDecoder()
    private var parser = ChatResponseParser(captureKeys: ["timings"])
    private let sink: CountingSink
    private var sawDone = false
    private var ended = false
    private var failure: ProviderError?
    private var attempt = 0

    static let patienceNotice: Duration = .seconds(2)

    init(backend: LlamaCppBackend, call: PluginCall, request: ModelRequest, streaming: Bool, budget: DeadlineBudget) {
        self.backend = backend
        self.call = call
        self.request = request
        self.streaming = streaming
        self.budget = budget
        body = ChatRequest.encode(request, stream: streaming, options: backend.server.requestOptions)
        sink = CountingSink(call)
    }

    func start() {
        call.onCancel { [self] in transfer.withLock { $0.current }?.cancel() }
        send()
        Later.run(after: Self.patienceNotice) { [self] in
            guard !call.isFinished, !transfer.withLock({ $0.gotHead }) else { return }
            var wait = ""
            if let b = budget.beforeFirstToken() {
                wait = "; waiting up to the \(b.which.split(separator: "_").joined(separator: " ")) deadline (\(DeadlineBudget.format(b.limit)))"
            }
            call.notice("info", "no answer after \(DeadlineBudget.format(Self.patienceNotice)) from \(backend.server.baseURL)\(wait)")
        }
    }

    private func send() {
        let req = backend.server.request(
            "POST", "chat/completions", body: body, accept: streaming ? "text/event-stream" : "application/json",
            timeouts: budget.timeouts())
        let t = backend.client.start(req, handler: self)
        transfer.withLock { $0.current = t }
        if call.isCancelled { t.cancel() }
    }

    // MARK: HTTPResponseHandler (loop thread)

    func head(status: Int, headers: HTTPHeaders) {
        self.status = status
        self.headers = headers
        transfer.withLock { $0.gotHead = true }
    }

    func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if ended { return true }  // drain after [DONE]
        if !(200...299).contains(status) || !streaming || whole {
            if collected.count < backend.server.maxResponseBytes { collected.append(contentsOf: bytes) }
            return true
        }
        if !sniffed {
            // A server that ignored "stream": true answers with one JSON document.
            var i = 0
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
            if i == bytes.count { return true }
            sniffed = true
            if bytes[i] == UInt8(ascii: "{") {
                whole = true
                collected.append(contentsOf: bytes)
                return true
            }
        }
        do {
            try sse.feed(bytes) { e in try self.event(e) }
        } catch {
            failure = Self.providerError(error)
            return false
        }
        sink.flush()
        return true
    }

    private func event(_ e: SSEDecoder.Event) throws {
        if ended { return }
        if e.isDone {
            sawDone = true
            ended = true
            complete()
            return
        }
        if e.data.count == 0 { return }
        try parser.parse(e.data, sink)
    }

    func end(_ error: HTTPError?) {
        sink.flush()
        if call.isFinished { return }
        if let failure {
            call.fail(backend.server.scrub(failure))
            return
        }
        if ended { return }
        if let error {
            switch error.kind {
            case .unreachable: call.fail(backend.unreachable(error))
            default: call.fail(budget.error(for: error, endpoint: backend.server.baseURL))
            }
            return
        }
        guard (200...299).contains(status) else {
            httpFailure()
            return
        }
        do {
            if !streaming || whole {
                try collected.withUnsafeBytes { b in try parser.parse(b, sink) }
            } else {
                try sse.finish { e in try self.event(e) }
                if ended { return }
                // Some servers end without [DONE]; a finish reason says the answer is whole.
                if parser.rawFinishReason == nil {
                    call.fail(ProviderError(.streamClosed, "the stream ended before its last event (no finish_reason and no [DONE])"))
                    return
                }
            }
        } catch {
            sink.flush()
            call.fail(backend.server.scrub(Self.providerError(error)))
            return
        }
        ended = true
        complete()
    }

    /// A non-2xx answer: 503 while the model loads is asked again within
    /// the deadlines; anything else fails with the server's message.
    private func httpFailure() {
        let e = backend.server.httpError(status: status, headers: headers, body: collected, method: "POST", path: "chat/completions", model: request.model)
        guard status == 503 else {
            call.fail(e)
            return
        }
        guard let b = budget.beforeFirstToken() else {
            if attempt >= 5 { call.fail(e) } else { retry(after: DeadlineBudget.backoff(attempt: attempt, retryAfter: e.retryAfter), e) }
            return
        }
        if b.left <= .zero {
            call.fail(budget.expired(b.which, while: "while the server was not ready (last answer: \(e.message))"))
            return
        }
        retry(after: min(DeadlineBudget.backoff(attempt: attempt, retryAfter: e.retryAfter), b.left), e)
    }

    private func retry(after wait: Duration, _ e: ProviderError) {
        if attempt == 0 { call.notice("info", "the server is not ready (\(e.message)); asking again until the request's deadline") }
        attempt += 1
        status = 0
        headers = HTTPHeaders()
        collected = []
        sniffed = false
        whole = false
        sse = SSEDecoder()
        transfer.withLock { $0.gotHead = false }
        Later.run(after: wait) { [self] in
            if call.isFinished { return }
            if let b = budget.beforeFirstToken(), b.left <= .zero {
                call.fail(budget.expired(b.which, while: "while the server was not ready (last answer: \(e.message))"))
                return
            }
            send()
        }
    }

    /// The Finish: the server's usage, or (llama-cpp-python streaming
    /// reports none) the answer counted with the server's tokenizer.
    private func complete() {
        var f = parser.finish(sink)
        sink.flush()
        if f.model == nil { f.model = request.model ?? backend.server.requestOptions.defaultModel }
        if f.usage != nil {
            call.finish(f)
            return
        }
        let text = sink.text
        let chunks = sink.textChunks
        let extra = (sink.reasoningBytes + 3) / 4
        Task { [backend, call, request] in
            let (usage, how) = await backend.countUsage(request, output: text, outputChunks: chunks, extraOutput: extra)
            f.usage = usage
            f.metadata["usage_counted"] = .string(how)
            call.finish(f)
        }
    }

    static func providerError(_ error: any Error) -> ProviderError {
        if let e = error as? ProviderError { return e }
        return ProviderError(.invalidResponse, "unreadable answer from the server: \(error)")
    }
}

extension ChatServer {
    func scrub(_ e: ProviderError) -> ProviderError {
        var e = e
        e.message = scrub(e.message)
        return e
    }
}
