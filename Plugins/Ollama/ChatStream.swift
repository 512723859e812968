// The answer to one /api/chat request, read by the kit's exchange engine
// (`StreamResponseHandler`: NDJSON through `.lines`, a whole answer through
// `.document`, waiting for a model that is loading by its `NotReadyPolicy`).
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

final class ChatConsumer: StreamConsumer, @unchecked Sendable {
    let backend: OllamaBackend
    let model: String
    let numCtx: Int?
    let promptEstimate: Int

    // Decoding state (the HTTP client's loop thread).
    private let events: EventBatcher
    private var started = false
    private var modelName: String?
    private var toolCalls = 0
    private var textBytes = 0
    /// The `done: true` object, once seen.
    private var final: Final?

    init(backend: OllamaBackend, call: PluginCall, model: String, numCtx: Int?, promptEstimate: Int) {
        self.backend = backend
        self.model = model
        self.numCtx = numCtx
        self.promptEstimate = promptEstimate
        events = EventBatcher(call: call)
    }

    // MARK: StreamConsumer

    func flush() { events.flush() }

    func line(_ line: UnsafeRawBufferPointer) throws(ProviderError) -> Bool {
        do { try object(line) } catch let e as ProviderError { throw e } catch {
            throw ProviderError(.invalidResponse, "Ollama sent a line that is not a JSON object: \(error)")
        }
        return final != nil
    }

    func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish {
        do { try decodeWhole(body) } catch let e as ProviderError { throw e } catch {
            throw ProviderError(.invalidResponse, "Ollama's answer is not valid JSON: \(error)")
        }
        guard final != nil else {
            throw ProviderError(.streamClosed, "the answer has no final object (\"done\": true): \(ProviderHTTP.excerpt(body))")
        }
        return try finish(sawTerminal: true)
    }

    func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish {
        guard let final else { throw ProviderError(.streamClosed, "the stream ended before its final line (\"done\": true)") }
        return complete(final)
    }

    /// A non-2xx answer: the server's message; an unknown model says how to
    /// install it.
    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError {
        var e = ProviderHTTP.error(status: status, headers: headers, body: body, endpoint: backend.endpoint)
        if status == 404, e.message.contains("not found") {
            e.message += " (install it with `ollama pull \(model)`)"
        }
        return e
    }

    func transportError(_ error: HTTPError, mapped: ProviderError) -> ProviderError {
        if case .unreachable = error.kind { return backend.unreachable(error) }
        return mapped
    }

    private func decodeWhole(_ whole: [UInt8]) throws {
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
        if final != nil { return }
        var r = JSONReader(line)
        try r.beginObject()
        var done = false
        var last = Final()
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
                last.doneReason = try r.readOptionalString()
            } else if key == "prompt_eval_count" {
                last.promptEvalCount = try r.readOptionalInt()
            } else if key == "eval_count" {
                last.evalCount = try r.readOptionalInt()
            } else if key == "total_duration" {
                last.totalDuration = try r.readOptionalInt()
            } else if key == "load_duration" {
                last.loadDuration = try r.readOptionalInt()
            } else if key == "prompt_eval_duration" {
                last.promptEvalDuration = try r.readOptionalInt()
            } else if key == "eval_duration" {
                last.evalDuration = try r.readOptionalInt()
            } else {
                try r.skipValue()
            }
        }
        if let error { throw ProviderError(.api, "Ollama: \(error)", providerType: "ollama_error") }
        if done { final = last }
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

    /// The result from the `done: true` object: finish reason, usage, timings.
    private func complete(_ f: Final) -> Wire.Finish {
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
            events.call.notice(
                "warning",
                "the prompt filled the whole context window (num_ctx \(n), \(p) prompt tokens): an Ollama that ignores \"truncate\": false may have cut it; raise num_ctx")
        }
        return Wire.Finish(finishReason: reason, usage: usage, model: modelName ?? model, metadata: meta)
    }
}
