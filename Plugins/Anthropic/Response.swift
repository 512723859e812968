// Reading Anthropic Messages answers: the event stream (every event type) and
// a whole non-streamed message.
import DescartesPluginKit

/// The state of one streamed message, fed event by event.
///
/// Events: `message_start` (id, model, input usage), `content_block_start`
/// / `_delta` / `_stop` for each block (`text_delta`, `thinking_delta`,
/// `signature_delta`, `input_json_delta`, `citations_delta`), `ping`,
/// `message_delta` (stop reason, usage updated key by key), `message_stop`
/// (the terminal event), and `error` (which ends the stream with that
/// error). Unknown event and block types are ignored, as Anthropic's
/// versioning policy asks of clients. Every reasoning block is kept, in
/// order: a thinking block's own signature is sent when the block stops
/// (`reasoningSignature`, ABI 1.3; the last one is in the Finish's metadata
/// as `thinking_signature`), a `redacted_thinking` block's data when it
/// starts (`reasoningRedacted`, ABI 1.4), so the host's
/// `ModelResponse.reasoningBlocks` are the message's, to send back as they
/// came.
///
/// On the hot path (`content_block_delta`) nothing is allocated: the delta's
/// text is handed on as the bytes inside the event.
struct AnthropicStream {
    enum Block {
        case text
        case thinking
        /// A client tool call: its ABI index, whether argument bytes came,
        /// and the compact JSON of its start's `input` (used when no
        /// argument delta comes, e.g. `{}` for a tool without parameters).
        case tool(index: Int, sawArguments: Bool, input: String)
        case other
    }

    var id: String?
    var model: String?
    var stopReason: String?
    var stopSequence: String?
    var started = false
    var stopped = false
    var blocks: [Int: Block] = [:]
    var tools = 0
    /// The open thinking block's signature (its start's, then its `signature_delta`s).
    var signature: [UInt8] = []
    /// The last thinking block's signature, for the Finish's metadata.
    var lastSignature: String?
    /// A `redacted_thinking` block came (an answer of reasoning only says something).
    var redacted = false
    // Usage as Anthropic reports it (input excludes cache reads and writes).
    var input = 0, cacheWrite = 0, cacheRead = 0, output = 0, thinking = 0
    var sawUsage = false
    /// True once some text or reasoning came (tool calls are counted in `tools`).
    var said = false

    /// Handles one event; returns true for `message_stop`.
    mutating func event(_ e: SSEDecoder.Event, _ call: EventBatcher) throws(ProviderError) -> Bool {
        do {
            var r = JSONReader(e.data)
            let name = e.isDefaultName ? try Self.typeOf(e.data) : nil
            func named(_ s: StaticString) -> Bool { name.map { $0 == s.description } ?? e.named(s) }
            if named("content_block_delta") {
                try delta(&r, call)
            } else if named("ping") {
                return false
            } else if named("content_block_start") {
                try blockStart(&r, call)
            } else if named("content_block_stop") {
                try blockStop(&r, call)
            } else if named("message_start") {
                try messageStart(&r, call)
            } else if named("message_delta") {
                try messageDelta(&r)
            } else if named("message_stop") {
                stopped = true
                return true
            } else if named("error") {
                throw Self.streamError(try JSONValue.parse(e.data))
            }
            return false
        } catch let e as ProviderError {
            throw e
        } catch {
            throw ProviderError(.invalidResponse, "unreadable event data (\(error)): \(ProviderHTTP.excerpt(Array(e.data)))")
        }
    }

    /// The `type` member of an event without an `event:` line.
    static func typeOf(_ data: UnsafeRawBufferPointer) throws -> String? {
        var r = JSONReader(data)
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "type" { return try r.readString() }
            try r.skipValue()
        }
        return nil
    }

    mutating func ensureStarted(_ call: EventBatcher) {
        if started { return }
        started = true
        call.start(id: id, model: model)
    }

    mutating func messageStart(_ r: inout JSONReader, _ call: EventBatcher) throws {
        try r.beginObject()
        while let k = try r.nextKey() {
            guard k == "message", r.peekKind() == .object else {
                try r.skipValue()
                continue
            }
            try r.beginObject()
            while let mk = try r.nextKey() {
                if mk == "id" {
                    id = try r.readOptionalString()
                } else if mk == "model" {
                    model = try r.readOptionalString()
                } else if mk == "usage", r.peekKind() == .object {
                    try usage(&r)
                } else {
                    try r.skipValue()
                }
            }
        }
        ensureStarted(call)
    }

    mutating func usage(_ r: inout JSONReader) throws {
        sawUsage = true
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "input_tokens" {
                input = try r.readOptionalInt() ?? input
            } else if k == "output_tokens" {
                output = try r.readOptionalInt() ?? output
            } else if k == "cache_creation_input_tokens" {
                cacheWrite = try r.readOptionalInt() ?? cacheWrite
            } else if k == "cache_read_input_tokens" {
                cacheRead = try r.readOptionalInt() ?? cacheRead
            } else if k == "output_tokens_details", r.peekKind() == .object {
                try r.beginObject()
                while let dk = try r.nextKey() {
                    if dk == "thinking_tokens" { thinking = try r.readOptionalInt() ?? thinking } else { try r.skipValue() }
                }
            } else {
                try r.skipValue()
            }
        }
    }

    mutating func blockStart(_ r: inout JSONReader, _ call: EventBatcher) throws {
        var index: Int? = nil
        var block: JSONValue? = nil
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "index" { index = try r.readOptionalInt() } else if k == "content_block" { block = try r.readValue() } else { try r.skipValue() }
        }
        guard let index, let block else { throw ProviderError(.invalidResponse, "content_block_start without an index or a content_block") }
        ensureStarted(call)
        switch block["type"]?.stringValue {
        case "text":
            blocks[index] = .text
            if let t = block["text"]?.stringValue, !t.isEmpty {
                said = true
                call.text(t)
            }
        case "thinking":
            blocks[index] = .thinking
            if let t = block["thinking"]?.stringValue, !t.isEmpty {
                said = true
                call.reasoning(t)
            }
            signature = Array((block["signature"]?.stringValue ?? "").utf8)
        case "redacted_thinking":
            blocks[index] = .other
            redactedBlock(block, call)
        case "tool_use":
            let i = tools
            tools += 1
            var input = ""
            if let v = block["input"], case .object = v { input = v.jsonText }
            blocks[index] = .tool(index: i, sawArguments: false, input: input)
            call.toolCallStart(index: i, id: block["id"]?.stringValue ?? "", name: block["name"]?.stringValue ?? "")
        default:
            // Server tools (server_tool_use, web_search_tool_result, mcp_tool_use...) are not client tool calls.
            blocks[index] = .other
        }
    }

    mutating func delta(_ r: inout JSONReader, _ call: EventBatcher) throws {
        var index: Int? = nil
        var pending: UnsafeRawBufferPointer? = nil
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "index" {
                index = try r.readOptionalInt()
            } else if k == "delta" {
                if let index {
                    try deltaBody(&r, index, call)
                } else {
                    pending = try r.readRawValue()  // index comes later: read the delta after it
                }
            } else {
                try r.skipValue()
            }
        }
        if let pending, let index {
            var d = JSONReader(pending)
            try deltaBody(&d, index, call)
        }
    }

    mutating func deltaBody(_ r: inout JSONReader, _ index: Int, _ call: EventBatcher) throws {
        let block = blocks[index] ?? .other
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "text" {
                if case .text = block {
                    try r.withStringBytes { b in
                        if b.count > 0 {
                            said = true
                            call.text(bytes: b)
                        }
                    }
                } else {
                    try r.skipValue()
                }
            } else if k == "thinking" {
                try r.withStringBytes { b in
                    if b.count > 0 {
                        said = true
                        call.reasoning(bytes: b)
                    }
                }
            } else if k == "partial_json" {
                if case .tool(let i, _, let input) = block {
                    var any = false
                    try r.withStringBytes { b in
                        if b.count > 0 {
                            any = true
                            call.toolCallDelta(index: i, bytes: b)
                        }
                    }
                    if any { blocks[index] = .tool(index: i, sawArguments: true, input: input) }
                } else {
                    try r.skipValue()
                }
            } else if k == "signature" {
                if case .thinking = block { try r.withStringBytes { signature.append(contentsOf: $0) } } else { try r.skipValue() }
            } else {
                try r.skipValue()
            }
        }
    }

    mutating func blockStop(_ r: inout JSONReader, _ call: EventBatcher) throws {
        var index: Int? = nil
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "index" { index = try r.readOptionalInt() } else { try r.skipValue() }
        }
        guard let index else { return }
        if case .thinking? = blocks[index] {
            // The signature came as signature_delta (or in the block's
            // start): it ends this block, before the next one.
            blocks[index] = .other
            endThinking(call)
            return
        }
        guard case .tool(let i, let saw, let input)? = blocks[index] else { return }
        if !saw && !input.isEmpty { call.toolCallDelta(index: i, input) }
        call.toolCallEnd(index: i)
        blocks[index] = .other
    }

    /// The open thinking block ends: its signature, when it has one.
    mutating func endThinking(_ call: EventBatcher) {
        guard !signature.isEmpty else { return }
        let s = String(decoding: signature, as: UTF8.self)
        signature = []
        lastSignature = s
        call.reasoningSignature(s)
    }

    /// A `redacted_thinking` block: its `data` (a string), whole, as a
    /// reasoning block of its own.
    mutating func redactedBlock(_ block: JSONValue, _ call: EventBatcher) {
        guard let data = block["data"]?.stringValue else { return }
        redacted = true
        call.reasoningRedacted(data)
    }

    mutating func messageDelta(_ r: inout JSONReader) throws {
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "delta", r.peekKind() == .object {
                try r.beginObject()
                while let dk = try r.nextKey() {
                    if dk == "stop_reason" {
                        stopReason = try r.readOptionalString() ?? stopReason
                    } else if dk == "stop_sequence" {
                        stopSequence = try r.readOptionalString() ?? stopSequence
                    } else {
                        try r.skipValue()
                    }
                }
            } else if k == "usage", r.peekKind() == .object {
                try usage(&r)
            } else {
                try r.skipValue()
            }
        }
    }

    /// Ends the message: tool calls still open are ended, and the Finish
    /// carries the mapped stop reason, the usage and the thinking signature.
    /// A message that said nothing (no text, thinking or tool call) with a
    /// stop reason that does not explain it (`end_turn`, `stop_sequence`,
    /// none) is `invalid_response` (`EmptyAnswer`, the OpenAI dialect's rule).
    mutating func finish(_ call: EventBatcher) throws(ProviderError) -> Wire.Finish {
        ensureStarted(call)
        for (index, block) in blocks.sorted(by: { $0.key < $1.key }) {
            if case .tool(let i, let saw, let input) = block {
                if !saw && !input.isEmpty { call.toolCallDelta(index: i, input) }
                call.toolCallEnd(index: i)
                blocks[index] = .other
            }
        }
        endThinking(call)  // a thinking block the stream left open
        let reason = Self.finishReason(stopReason)
        try EmptyAnswer.check(said: said || tools > 0 || redacted, finish: reason, field: "stop_reason", raw: stopReason)
        var meta = JSONObject()
        if let raw = stopReason, raw != reason.rawValue { meta["provider_finish_reason"] = .string(raw) }
        if let s = stopSequence { meta["stop_sequence"] = .string(s) }
        if let s = lastSignature { meta["thinking_signature"] = .string(s) }
        return Wire.Finish(
            finishReason: reason, usage: sawUsage ? normalizedUsage : nil, model: model, id: id, metadata: meta)
    }

    /// Our usage: `input_tokens` counts every input token (Anthropic's
    /// `input_tokens` plus cache reads and writes), cache reads and writes
    /// apart, thinking tokens as reasoning tokens (included in output).
    var normalizedUsage: Usage {
        Usage(
            inputTokens: input + cacheRead + cacheWrite, outputTokens: output, cacheReadTokens: cacheRead,
            cacheWriteTokens: cacheWrite, reasoningTokens: thinking)
    }

    /// `end_turn`, `stop_sequence` -> stop; `max_tokens`,
    /// `model_context_window_exceeded` -> maxTokens; `tool_use` -> toolUse;
    /// `refusal` -> contentFilter; others (`pause_turn`) as they are.
    static func finishReason(_ raw: String?) -> FinishReason {
        switch raw {
        case nil, "end_turn", "stop_sequence": return .stop
        case "max_tokens", "model_context_window_exceeded": return .maxTokens
        case "tool_use": return .toolUse
        case "refusal": return .contentFilter
        case let r?: return FinishReason(rawValue: r)
        }
    }

    /// An `error` event: `{"type": "error", "error": {"type", "message"}}`.
    static func streamError(_ v: JSONValue) -> ProviderError {
        let err = v["error"] ?? v
        let type = err["type"]?.stringValue
        let message = err["message"]?.stringValue ?? Wire.excerpt(v.jsonText)
        let kind = ProviderHTTP.kind(forErrorType: type) ?? .api
        var e = ProviderError(kind, "the stream reported \(type ?? "an error"): \(message)")
        e.providerType = type
        if type == "overloaded_error" { e.status = 529 }
        return e
    }

    // MARK: A whole message

    /// A non-streamed message body: emits its blocks as events and returns
    /// the Finish.
    static func whole(_ body: [UInt8], _ call: EventBatcher) throws(ProviderError) -> Wire.Finish {
        guard case .object(let o)? = try? JSONValue.parse(bytes: body) else {
            throw ProviderError(.invalidResponse, "the answer is not a JSON message: \(ProviderHTTP.excerpt(body))")
        }
        if o["type"]?.stringValue == "error" { throw streamError(.object(o)) }
        guard let content = o["content"]?.arrayValue else {
            throw ProviderError(.invalidResponse, "the message has no content: \(ProviderHTTP.excerpt(body))")
        }
        var s = AnthropicStream()
        s.id = o["id"]?.stringValue
        s.model = o["model"]?.stringValue
        s.stopReason = o["stop_reason"]?.stringValue
        s.stopSequence = o["stop_sequence"]?.stringValue
        if let u = o["usage"]?.objectValue {
            s.sawUsage = true
            s.input = u["input_tokens"]?.intValue ?? 0
            s.output = u["output_tokens"]?.intValue ?? 0
            s.cacheRead = u["cache_read_input_tokens"]?.intValue ?? 0
            s.cacheWrite = u["cache_creation_input_tokens"]?.intValue ?? 0
            s.thinking = u["output_tokens_details"]?["thinking_tokens"]?.intValue ?? 0
        }
        s.ensureStarted(call)
        // Blocks in order: each thinking block with its own signature, the
        // redacted ones in their places (as the stream gives them).
        for b in content {
            switch b["type"]?.stringValue {
            case "text":
                if let t = b["text"]?.stringValue, !t.isEmpty {
                    s.said = true
                    call.text(t)
                }
            case "thinking":
                if let t = b["thinking"]?.stringValue, !t.isEmpty {
                    s.said = true
                    call.reasoning(t)
                }
                s.signature = Array((b["signature"]?.stringValue ?? "").utf8)
                s.endThinking(call)
            case "redacted_thinking":
                s.redactedBlock(b, call)
            case "tool_use":
                let input = b["input"] ?? [:]
                call.toolCall(
                    index: s.tools,
                    ToolCall(id: b["id"]?.stringValue ?? "", name: b["name"]?.stringValue ?? "", arguments: input.jsonText))
                s.tools += 1
            default: break
            }
        }
        return try s.finish(call)
    }
}
