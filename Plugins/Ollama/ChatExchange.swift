// One /api/chat request in flight: sends it, waits (within the request's
// deadlines) while the model loads, decodes the answer and reports it.
//
// Streamed answers are NDJSON, one object per line:
//   {"model":"gemma3:1b","created_at":"...","message":{"role":"assistant","content":"Okay"},"done":false}
//   ...
//   {"model":"gemma3:1b",...,"message":{...,"content":""},"done":true,"done_reason":"stop",
//    "total_duration":171946792,"load_duration":...,"prompt_eval_count":16,"prompt_eval_duration":...,
//    "eval_count":22,"eval_duration":...}
// `"stream": false` answers with the final object alone, its message whole.
// Tool calls arrive whole inside a message (`tool_calls[{id?, function:
// {index?, name, arguments: OBJECT}}]`), reasoning as `message.thinking`,
// failures as `{"error": "..."}` (a line of a stream, or a non-2xx body).
//
// The hot path (one line per token) walks each line with `JSONReader`,
// skips what it does not need and hands the text's bytes on without
// building a String or a JSONValue; an `EventBatcher` joins the text of
// all the lines one network read brought into one event (flushed at the
// end of every read, so nothing waits for bytes still to come).
import DescartesPluginKit

final class ChatExchange: HTTPResponseHandler, @unchecked Sendable {
    let backend: OllamaBackend
    let call: PluginCall
    let streaming: Bool
    let body: [UInt8]
    let model: String
    let numCtx: Int?
    let promptEstimate: Int
    let budget: DeadlineBudget

    /// Touched across threads: the transfer (for cancel) and whether the
    /// response has begun (for the "still loading" notice).
    private struct Shared {
        var transfer: HTTPTransfer?
        var gotHead = false
    }
    private let shared = Lock(Shared())

    // Loop-thread state of the current attempt.
    private var status = 0
    private var headers = HTTPHeaders()
    private var errorBody: [UInt8] = []
    private var whole: [UInt8] = []
    private var lines = LineDecoder()
    private var failure: ProviderError?
    private var attempt = 0

    // Decoding state.
    private let events: EventBatcher
    private var started = false
    private var modelName: String?
    private var toolCalls = 0
    private var textBytes = 0
    private var finished = false

    /// The "still waiting" notice comes this long after the request was sent
    /// without any answer.
    static let patienceNotice: Duration = .seconds(2)

    init(
        backend: OllamaBackend, call: PluginCall, streaming: Bool, body: [UInt8], model: String, numCtx: Int?,
        promptEstimate: Int, budget: DeadlineBudget
    ) {
        self.backend = backend
        self.call = call
        self.streaming = streaming
        self.body = body
        self.model = model
        self.numCtx = numCtx
        self.promptEstimate = promptEstimate
        self.budget = budget
        events = EventBatcher(call: call)
    }

    func start() {
        call.onCancel { [self] in shared.withLock { $0.transfer }?.cancel() }
        send()
        Later.run(after: Self.patienceNotice) { [self] in
            guard !call.isFinished, !shared.withLock({ $0.gotHead }) else { return }
            var wait = ""
            if let b = budget.beforeFirstToken() {
                wait = "; waiting up to the \(b.which.split(separator: "_").joined(separator: " ")) deadline (\(DeadlineBudget.format(b.limit)))"
            }
            call.notice(
                "info",
                "no answer after \(DeadlineBudget.format(Self.patienceNotice)): Ollama is probably loading '\(model)' into memory\(wait)")
        }
    }

    private func send() {
        let request = HTTPRequest(
            method: "POST", url: ProviderHTTP.join(backend.endpoint, "/api/chat"), headers: backend.headers(json: true),
            body: body, timeouts: budget.timeouts(), maxResponseBytes: streaming ? 1 << 40 : 64 << 20)
        let t = backend.client.start(request, handler: self)
        shared.withLock { $0.transfer = t }
        if call.isCancelled { t.cancel() }
    }

    // MARK: HTTPResponseHandler (loop thread)

    func head(status: Int, headers: HTTPHeaders) {
        self.status = status
        self.headers = headers
        shared.withLock { $0.gotHead = true }
    }

    func body(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if status < 200 || status > 299 {
            if errorBody.count < 65536 { errorBody.append(contentsOf: bytes.prefix(65536 - errorBody.count)) }
            return true
        }
        if !streaming {
            whole.append(contentsOf: bytes)
            return true
        }
        do {
            try lines.feed(bytes) { line in try self.object(line) }
        } catch let e as ProviderError {
            failure = e
            return false
        } catch {
            failure = ProviderError(.invalidResponse, "Ollama sent a line that is not a JSON object: \(error)")
            return false
        }
        events.flush()
        return true
    }

    func end(_ error: HTTPError?) {
        events.flush()
        if call.isFinished { return }
        if let failure {
            call.fail(failure)
            return
        }
        if let error {
            if finished { return }
            if case .unreachable = error.kind {
                call.fail(backend.unreachable(error))
            } else {
                call.fail(budget.error(for: error, endpoint: backend.endpoint, while: waitingWords))
            }
            return
        }
        if status < 200 || status > 299 {
            httpFailure()
            return
        }
        do {
            if streaming {
                // A last line without its newline is complete if it parses;
                // one cut in the middle means the stream was cut.
                let pending = lines.pendingBytes
                do { try lines.finish { line in try self.object(line) } } catch where !finished {
                    call.fail(ProviderError(.streamClosed, "the stream ended in the middle of a line (\(pending) bytes)"))
                    return
                }
            } else {
                try decodeWhole()
            }
        } catch let e as ProviderError {
            events.flush()
            call.fail(e)
            return
        } catch {
            events.flush()
            call.fail(ProviderError(.invalidResponse, "Ollama's answer is not valid JSON: \(error)"))
            return
        }
        events.flush()
        if !finished {
            call.fail(
                ProviderError(
                    .streamClosed,
                    streaming
                        ? "the stream ended before its final line (\"done\": true)"
                        : "the answer has no final object (\"done\": true): \(ProviderHTTP.excerpt(whole))"))
        }
    }

    private var waitingWords: String? {
        shared.withLock { $0.gotHead } ? nil : "before Ollama answered (it may still be loading '\(model)')"
    }

    /// A non-2xx answer: 503 (busy, loading) is asked again while the
    /// deadlines allow; anything else fails with the server's message.
    private func httpFailure() {
        var e = ProviderHTTP.error(status: status, headers: headers, body: errorBody, endpoint: backend.endpoint)
        if status == 404, e.message.contains("not found") {
            e.message += " (install it with `ollama pull \(model)`)"
        }
        guard status == 503, !started else {
            call.fail(e)
            return
        }
        guard let b = budget.beforeFirstToken() else {
            // No deadline at all: a few tries, then give up.
            if attempt >= 5 { call.fail(e) } else { retry(after: DeadlineBudget.backoff(attempt: attempt, retryAfter: e.retryAfter), e) }
            return
        }
        if b.left <= .zero {
            call.fail(budget.expired(b.which, while: "while Ollama was not ready (last answer: \(e.message))"))
            return
        }
        retry(after: min(DeadlineBudget.backoff(attempt: attempt, retryAfter: e.retryAfter), b.left), e)
    }

    private func retry(after wait: Duration, _ e: ProviderError) {
        if attempt == 0 {
            call.notice("info", "Ollama is not ready (\(e.message)); asking again until the request's deadline")
        }
        attempt += 1
        status = 0
        headers = HTTPHeaders()
        errorBody = []
        whole = []
        lines = LineDecoder()
        shared.withLock { $0.gotHead = false }
        Later.run(after: wait) { [self] in
            if call.isFinished { return }
            if let b = budget.beforeFirstToken(), b.left <= .zero {
                call.fail(budget.expired(b.which, while: "while Ollama was not ready (last answer: \(e.message))"))
                return
            }
            send()
        }
    }

    private func decodeWhole() throws {
        try whole.withUnsafeBytes { buf in
            var r = JSONReader(buf)
            r.skipWhitespace()
            if r.atEnd { return }
            // One object, possibly pretty-printed ...
            let objectOnly: Bool
            do {
                try r.skipValue()
                r.skipWhitespace()
                objectOnly = r.atEnd
            } catch {
                objectOnly = false
            }
            if objectOnly {
                try object(buf)
                return
            }
            // ... or NDJSON from a server that streams anyway.
            var d = LineDecoder()
            try d.feed(buf) { line in try self.object(line) }
            try d.finish { line in try self.object(line) }
        }
    }

    // MARK: Decoding (the hot path)

    private func ensureStarted() {
        if started { return }
        started = true
        events.start(id: nil, model: modelName)
    }

    /// One JSON object: a chunk of the stream or the whole answer.
    private func object(_ line: UnsafeRawBufferPointer) throws {
        if finished { return }
        var r = JSONReader(line)
        try r.beginObject()
        var done = false
        var final = Final()
        var error: String? = nil
        while let key = try r.nextKey() {
            if key == "message" {
                try message(&r)
            } else if key == "done" {
                done = try r.readBool()
            } else if key == "model" || key == "created_at" {
                if modelName == nil, key == "model" { modelName = try r.readOptionalString() } else { try r.skipValue() }
            } else if key == "error" {
                let v = try r.readValue()
                error = v.stringValue ?? v["message"]?.stringValue ?? v.jsonText
            } else if key == "done_reason" {
                final.doneReason = try r.readOptionalString()
            } else if key == "prompt_eval_count" {
                final.promptEvalCount = try r.readOptionalInt()
            } else if key == "eval_count" {
                final.evalCount = try r.readOptionalInt()
            } else if key == "total_duration" {
                final.totalDuration = try r.readOptionalInt()
            } else if key == "load_duration" {
                final.loadDuration = try r.readOptionalInt()
            } else if key == "prompt_eval_duration" {
                final.promptEvalDuration = try r.readOptionalInt()
            } else if key == "eval_duration" {
                final.evalDuration = try r.readOptionalInt()
            } else {
                try r.skipValue()
            }
        }
        if let error {
            finished = true
            events.flush()
            call.fail(ProviderError(.api, "Ollama: \(error)", providerType: "ollama_error"))
            return
        }
        if done { complete(final) }
    }

    private func message(_ r: inout JSONReader) throws {
        try r.beginObject()
        while let key = try r.nextKey() {
            if key == "content" {
                try r.withStringBytes { bytes in
                    if bytes.count > 0 {
                        ensureStarted()
                        textBytes += bytes.count
                        events.text(bytes: bytes)
                    }
                }
            } else if key == "thinking" {
                if r.peekKind() == .string {
                    try r.withStringBytes { bytes in
                        if bytes.count > 0 {
                            ensureStarted()
                            events.reasoning(bytes: bytes)
                        }
                    }
                } else {
                    try r.skipValue()
                }
            } else if key == "tool_calls" {
                if r.peekKind() == .array { try toolCalls(&r) } else { try r.skipValue() }
            } else {
                try r.skipValue()
            }
        }
    }

    /// `[{"id"?: "call_x", "function": {"index"?: 0, "name": "f", "arguments": {...}}}]`:
    /// each call whole, reported as start, arguments, end.
    private func toolCalls(_ r: inout JSONReader) throws {
        try r.beginArray()
        while try r.nextElement() {
            var id = ""
            var name = ""
            var args: [UInt8] = []
            try r.beginObject()
            while let key = try r.nextKey() {
                if key == "id" {
                    id = try r.readOptionalString() ?? ""
                } else if key == "function" {
                    try r.beginObject()
                    while let k = try r.nextKey() {
                        if k == "name" {
                            name = try r.readOptionalString() ?? ""
                        } else if k == "arguments" {
                            switch r.peekKind() {
                            case .string: try r.withStringBytes { args = Array($0) }
                            case .null: try r.skipValue()
                            default: args = Array(try r.readRawValue())
                            }
                        } else {
                            try r.skipValue()
                        }
                    }
                } else {
                    try r.skipValue()
                }
            }
            ensureStarted()
            let index = toolCalls
            toolCalls += 1
            events.toolCallStart(index: index, id: id, name: name)
            if args.isEmpty { args = Array("{}".utf8) }
            args.withUnsafeBytes { events.toolCallDelta(index: index, bytes: $0) }
            events.toolCallEnd(index: index)
        }
    }

    struct Final {
        var doneReason: String?
        var promptEvalCount: Int?
        var evalCount: Int?
        var totalDuration: Int?
        var loadDuration: Int?
        var promptEvalDuration: Int?
        var evalDuration: Int?
    }

    /// The `done: true` object: finish reason, usage, timings.
    private func complete(_ f: Final) {
        finished = true
        ensureStarted()
        events.flush()
        let reason: FinishReason
        switch f.doneReason {
        // Ollama says "stop" also when the model called a tool.
        case nil, "stop"?: reason = toolCalls > 0 ? .toolUse : .stop
        case "length"?: reason = .maxTokens
        case let other?: reason = FinishReason(rawValue: other)
        }
        var usage = Usage(
            inputTokens: f.promptEvalCount ?? promptEstimate, outputTokens: f.evalCount ?? (textBytes + 3) / 4,
            estimated: f.promptEvalCount == nil || f.evalCount == nil)
        if usage.outputTokens < 0 { usage.outputTokens = 0 }
        var meta = JSONObject()
        if let v = f.totalDuration { meta["total_duration"] = .integer(v) }
        if let v = f.loadDuration { meta["load_duration"] = .integer(v) }
        if let v = f.promptEvalDuration { meta["prompt_eval_duration"] = .integer(v) }
        if let v = f.evalDuration { meta["eval_duration"] = .integer(v) }
        if let n = f.evalCount, let d = f.evalDuration, d > 0 {
            meta["eval_tokens_per_second"] = .number((Double(n) * 1e9 / Double(d) * 100).rounded() / 100)
        }
        if let v = f.doneReason { meta["done_reason"] = .string(v) }
        if let n = numCtx { meta["num_ctx"] = .integer(n) }
        if let n = numCtx, let p = f.promptEvalCount, p >= n {
            call.notice(
                "warning",
                "the prompt filled the whole context window (num_ctx \(n), \(p) prompt tokens): an Ollama that ignores \"truncate\": false may have cut it; raise num_ctx")
        }
        call.finish(Wire.Finish(finishReason: reason, usage: usage, model: modelName ?? model, metadata: meta))
    }
}
