// The OpenAI chat-completions dialect: reading answers. One parser reads both
// a streamed chunk (`choices[0].delta`) and a whole non-streamed body
// (`choices[0].message`): the two have the same members.

/// Where a parser reports what it extracts, in the order the ABI wants it.
/// `PluginCall` is one; tests use a recorder.
public protocol ChatEventSink: AnyObject {
    func start(id: String?, model: String?)
    func text(bytes: UnsafeRawBufferPointer)
    func reasoning(bytes: UnsafeRawBufferPointer)
    func toolCallStart(index: Int, id: String, name: String)
    func toolCallDelta(index: Int, bytes: UnsafeRawBufferPointer)
    func toolCallEnd(index: Int)
}

extension PluginCall: ChatEventSink {}

extension String {
    /// Nil for the empty string.
    fileprivate var nonEmpty: String? { isEmpty ? nil : self }
}
extension EventBatcher: ChatEventSink {}

/// Reads chat-completions chunks (or one whole body) and emits text,
/// reasoning and tool calls as they arrive.
///
/// The hot path builds no document and no `String`: each chunk is scanned
/// with `JSONReader`, members it does not need are skipped, and text is
/// handed on as the bytes inside the chunk (copied only when the JSON string
/// has escapes). Ids, names, the model and the finish reason become strings
/// once each.
///
/// Rules (those of the recorded transcripts' reference extractor):
/// - only the first element of `choices` is read (requests never ask for `n > 1`);
/// - `content` is text; when it is a list of parts (Mistral's magistral),
///   `text` parts are text and `thinking` parts are reasoning;
///   `reasoning_content` (DeepSeek, Z.ai) and `reasoning` (Groq, OpenRouter)
///   are reasoning; `refusal` is text (and noted in the metadata);
/// - a tool-call delta is keyed by its `index`; without one by its `id`;
///   without either it continues the most recent call. Id and name are the
///   first non-empty values seen; arguments concatenate. Calls are numbered
///   0, 1, 2... in order of first appearance (a provider index starting at
///   1 is fine). A call's start is emitted once its name is known; argument
///   bytes seen before are held until then;
/// - the finish reason is the last non-null `finish_reason`; usage the last
///   non-null top-level `usage` (Groq's `x_groq.usage` only when there is
///   none); OpenRouter's `usage.cost` is the cost;
/// - a top-level `error` object (OpenRouter's in-band error, Groq's
///   `event: error` frame) ends the stream with that error.
public struct ChatResponseParser {
    public private(set) var id: String?
    public private(set) var model: String?
    /// The provider's own finish reason, as sent.
    public private(set) var rawFinishReason: String?
    public private(set) var usage: Usage?
    public private(set) var costUSD: Double?
    /// Top-level members named in `captureKeys`, as last seen.
    public private(set) var captured: JSONObject = [:]
    /// Top-level member names whose values go into the Finish metadata
    /// (llama.cpp's `timings`, for example). Compared without allocating.
    public var captureKeys: [StaticString]
    /// Member names of `choices[0]` whose values go into the Finish
    /// metadata, as last seen non-empty (Azure's `content_filter_results`).
    public var choiceCaptureKeys: [StaticString]
    /// True once the answer carried a refusal.
    public private(set) var refused = false
    /// True once a `choices` entry was read.
    public private(set) var sawChoice = false
    /// True once some text or reasoning was emitted.
    public private(set) var emitted = false

    /// Why the answer so far is not one, or nil: no `choices` at all, or
    /// neither text, reasoning nor a tool call with a finish reason (or
    /// none) that does not explain it (`length`, `content_filter` and
    /// the like do; the rule is `EmptyAnswer`'s, shared by every dialect).
    public var emptiness: String? {
        if !sawChoice { return "the answer has no choices" }
        return EmptyAnswer.problem(
            said: emitted || !slots.isEmpty, finish: Self.finishReason(rawFinishReason, hasToolCalls: !slots.isEmpty),
            field: "finish_reason", raw: rawFinishReason)
    }

    private var groqUsage: Usage?
    private var started = false
    private var slots: [ToolSlot] = []
    private var lastSlot = -1
    private var scratch: [UInt8] = []

    struct ToolSlot {
        var key: Int?
        var id: String
        var name: String
        var started = false
        var pending: [UInt8] = []
    }

    public init(captureKeys: [StaticString] = [], choiceCaptureKeys: [StaticString] = []) {
        self.captureKeys = captureKeys
        self.choiceCaptureKeys = choiceCaptureKeys
        scratch.reserveCapacity(256)
    }

    /// The number of tool calls seen so far.
    public var toolCallCount: Int { slots.count }

    /// Reads one chunk's JSON (or a whole body) and emits what it carries.
    ///
    /// - Throws: `invalidResponse` for data that is not a JSON object (with
    ///   a bounded excerpt), or the provider's error when the chunk carries
    ///   one.
    public mutating func parse<S: ChatEventSink>(_ data: UnsafeRawBufferPointer, _ sink: S) throws(ProviderError) {
        var inBandError: JSONValue? = nil
        do {
            var r = JSONReader(data)
            try r.beginObject()
            while let key = try r.nextKey() {
                if key == "choices" {
                    if r.peekKind() == .array { try choices(&r, sink) } else { try r.skipValue() }
                } else if key == "usage" {
                    if r.peekKind() == .object { usage = try readUsage(&r) } else { try r.skipValue() }
                } else if key == "id" {
                    // Azure's first chunk (prompt filter results) has "id": "" and "model": "".
                    if id == nil, r.peekKind() == .string { id = try r.readString().nonEmpty } else { try r.skipValue() }
                } else if key == "model" {
                    if model == nil, r.peekKind() == .string { model = try r.readString().nonEmpty } else { try r.skipValue() }
                } else if key == "error" {
                    if r.peekKind() == .object || r.peekKind() == .string { inBandError = try r.readValue() } else { try r.skipValue() }
                } else if key == "x_groq" {
                    if r.peekKind() == .object {
                        try r.beginObject()
                        while let k = try r.nextKey() {
                            if k == "usage", r.peekKind() == .object { groqUsage = try readUsage(&r) } else { try r.skipValue() }
                        }
                    } else {
                        try r.skipValue()
                    }
                } else if !captureKeys.isEmpty, let name = captureKeys.first(where: { key.equals($0) }) {
                    captured[name.description] = try r.readValue()
                } else {
                    try r.skipValue()
                }
            }
            r.skipWhitespace()
            if !r.atEnd { throw JSONParseError("unexpected data after the JSON object", offset: r.position) }
        } catch let e as ProviderError {
            throw e
        } catch {
            throw ProviderError(
                .invalidResponse, "unreadable chat-completions data (\(error)): \(ProviderHTTP.excerpt(Array(data)))")
        }
        // A chunk with no choice (Azure's prompt filter results come first,
        // before the id is known) does not start the answer.
        if sawChoice || usage != nil || inBandError != nil { ensureStarted(sink) }
        if let inBandError { throw ChatResponseParser.inBandError(inBandError) }
    }

    /// Ends the answer: emits the start of any call still waiting for its
    /// name, then the end of every call in order, and returns the Finish.
    public mutating func finish<S: ChatEventSink>(_ sink: S) -> Wire.Finish {
        ensureStarted(sink)
        for i in slots.indices {
            if !slots[i].started { startSlot(i, sink) }
            sink.toolCallEnd(index: i)
        }
        let reason = ChatResponseParser.finishReason(rawFinishReason, hasToolCalls: !slots.isEmpty)
        var meta = captured
        if let raw = rawFinishReason, raw != reason.rawValue { meta["provider_finish_reason"] = .string(raw) }
        if refused { meta["refusal"] = true }
        return Wire.Finish(finishReason: reason, usage: usage ?? groqUsage, model: model, id: id, costUSD: costUSD, metadata: meta)
    }

    // MARK: Choices

    private mutating func choices<S: ChatEventSink>(_ r: inout JSONReader, _ sink: S) throws {
        try r.beginArray()
        var first = true
        while try r.nextElement() {
            guard first, r.peekKind() == .object else {
                try r.skipValue()
                continue
            }
            first = false
            sawChoice = true
            try r.beginObject()
            while let k = try r.nextKey() {
                if k == "delta" || k == "message" {
                    if r.peekKind() == .object { try delta(&r, sink) } else { try r.skipValue() }
                } else if k == "finish_reason" {
                    if r.peekKind() == .string { rawFinishReason = try r.readString() } else { try r.skipValue() }
                } else if !choiceCaptureKeys.isEmpty, let name = choiceCaptureKeys.first(where: { k.equals($0) }) {
                    let v = try r.readValue()
                    if v.objectValue.map({ !$0.isEmpty }) ?? (v != .null) { captured[name.description] = v }
                } else {
                    try r.skipValue()
                }
            }
        }
    }

    private mutating func delta<S: ChatEventSink>(_ r: inout JSONReader, _ sink: S) throws {
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "content" {
                switch r.peekKind() {
                case .string:
                    try emitString(&r, sink, as: .text)
                case .array: try contentParts(&r, sink)
                default: try r.skipValue()
                }
            } else if k == "reasoning_content" || k == "reasoning" {
                if r.peekKind() == .string {
                    try emitString(&r, sink, as: .reasoning)
                } else {
                    try r.skipValue()
                }
            } else if k == "tool_calls" {
                if r.peekKind() == .array { try toolCalls(&r, sink) } else { try r.skipValue() }
            } else if k == "refusal" {
                if r.peekKind() == .string {
                    if try emitString(&r, sink, as: .text) { refused = true }
                } else {
                    try r.skipValue()
                }
            } else {
                try r.skipValue()
            }
        }
    }

    private enum Part { case text, reasoning }

    /// The string at `r`, sent to `sink` as text or reasoning unless it is
    /// empty; whether anything was sent.
    @discardableResult
    private mutating func emitString<S: ChatEventSink>(_ r: inout JSONReader, _ sink: S, as part: Part) throws -> Bool {
        var sent = false
        try r.withStringBytes { b in
            guard b.count > 0 else { return }
            ensureStarted(sink)
            emitted = true
            sent = true
            switch part {
            case .text: sink.text(bytes: b)
            case .reasoning: sink.reasoning(bytes: b)
            }
        }
        return sent
    }

    /// `content` as a list of parts: `{"type":"text","text":...}` is text,
    /// `{"type":"thinking","thinking":[{"type":"text","text":...}]}` (or a
    /// string) is reasoning.
    private mutating func contentParts<S: ChatEventSink>(_ r: inout JSONReader, _ sink: S) throws {
        try r.beginArray()
        while try r.nextElement() {
            guard r.peekKind() == .object else {
                try r.skipValue()
                continue
            }
            try r.beginObject()
            while let k = try r.nextKey() {
                if k == "text", r.peekKind() == .string {
                    try emitString(&r, sink, as: .text)
                } else if k == "thinking" {
                    switch r.peekKind() {
                    case .string:
                        try emitString(&r, sink, as: .reasoning)
                    case .array:
                        try r.beginArray()
                        while try r.nextElement() {
                            guard r.peekKind() == .object else {
                                try r.skipValue()
                                continue
                            }
                            try r.beginObject()
                            while let tk = try r.nextKey() {
                                if tk == "text", r.peekKind() == .string {
                                    try emitString(&r, sink, as: .reasoning)
                                } else {
                                    try r.skipValue()
                                }
                            }
                        }
                    default:
                        try r.skipValue()
                    }
                } else {
                    try r.skipValue()
                }
            }
        }
    }

    // MARK: Tool calls

    private mutating func toolCalls<S: ChatEventSink>(_ r: inout JSONReader, _ sink: S) throws {
        try r.beginArray()
        while try r.nextElement() {
            guard r.peekKind() == .object else {
                try r.skipValue()
                continue
            }
            var index: Int? = nil
            var callID: String? = nil
            var name: String? = nil
            scratch.removeAll(keepingCapacity: true)
            try r.beginObject()
            while let k = try r.nextKey() {
                if k == "index" {
                    index = try r.readOptionalInt()
                } else if k == "id" {
                    if r.peekKind() == .string {
                        let s = try r.readString()
                        if !s.isEmpty { callID = s }
                    } else {
                        try r.skipValue()
                    }
                } else if k == "function" {
                    guard r.peekKind() == .object else {
                        try r.skipValue()
                        continue
                    }
                    try r.beginObject()
                    while let fk = try r.nextKey() {
                        if fk == "name", r.peekKind() == .string {
                            let s = try r.readString()
                            if !s.isEmpty { name = s }
                        } else if fk == "arguments" {
                            switch r.peekKind() {
                            case .string: try r.withStringBytes { scratch.append(contentsOf: $0) }
                            // Some servers send the arguments as an object, not as JSON text.
                            case .object: scratch.append(contentsOf: try r.readRawValue())
                            default: try r.skipValue()
                            }
                        } else {
                            try r.skipValue()
                        }
                    }
                } else {
                    try r.skipValue()
                }
            }
            toolDelta(index: index, id: callID, name: name, sink)
        }
    }

    private mutating func toolDelta<S: ChatEventSink>(index: Int?, id: String?, name: String?, _ sink: S) {
        var slot = -1
        if let index {
            slot = slots.firstIndex { $0.key == index } ?? -1
        } else if let id {
            slot = slots.firstIndex { $0.id == id } ?? -1
        } else {
            slot = lastSlot
        }
        if slot < 0 {
            slots.append(ToolSlot(key: index, id: id ?? "", name: name ?? ""))
            slot = slots.count - 1
        } else {
            if slots[slot].id.isEmpty, let id { slots[slot].id = id }
            if slots[slot].name.isEmpty, let name { slots[slot].name = name }
        }
        lastSlot = slot
        ensureStarted(sink)
        if !slots[slot].started {
            if slots[slot].name.isEmpty {
                slots[slot].pending.append(contentsOf: scratch)
                return
            }
            startSlot(slot, sink)
        }
        if !scratch.isEmpty { scratch.withUnsafeBytes { sink.toolCallDelta(index: slot, bytes: $0) } }
    }

    private mutating func startSlot<S: ChatEventSink>(_ i: Int, _ sink: S) {
        slots[i].started = true
        sink.toolCallStart(index: i, id: slots[i].id, name: slots[i].name)
        if !slots[i].pending.isEmpty {
            slots[i].pending.withUnsafeBytes { sink.toolCallDelta(index: i, bytes: $0) }
            slots[i].pending = []
        }
    }

    @inline(__always)
    private mutating func ensureStarted<S: ChatEventSink>(_ sink: S) {
        if started { return }
        started = true
        sink.start(id: id, model: model)
    }

    // MARK: Usage

    private mutating func readUsage(_ r: inout JSONReader) throws -> Usage {
        var u = Usage()
        try r.beginObject()
        while let k = try r.nextKey() {
            if k == "prompt_tokens" {
                u.inputTokens = try r.readOptionalInt() ?? 0
            } else if k == "completion_tokens" {
                u.outputTokens = try r.readOptionalInt() ?? 0
            } else if k == "prompt_cache_hit_tokens" {
                u.cacheReadTokens = max(u.cacheReadTokens, try r.readOptionalInt() ?? 0)
            } else if k == "prompt_tokens_details" || k == "completion_tokens_details" {
                let prompt = k == "prompt_tokens_details"
                guard r.peekKind() == .object else {
                    try r.skipValue()
                    continue
                }
                try r.beginObject()
                while let dk = try r.nextKey() {
                    if prompt && dk == "cached_tokens" {
                        u.cacheReadTokens = max(u.cacheReadTokens, try r.readOptionalInt() ?? 0)
                    } else if !prompt && dk == "reasoning_tokens" {
                        u.reasoningTokens = try r.readOptionalInt() ?? 0
                    } else {
                        try r.skipValue()
                    }
                }
            } else if k == "cost" {
                if r.peekKind() == .number { costUSD = try r.readNumber().doubleValue } else { try r.skipValue() }
            } else {
                try r.skipValue()
            }
        }
        return u
    }

    // MARK: Mapping

    /// The normalized finish reason for a provider's own.
    ///
    /// `stop` -> stop; `length` -> maxTokens; `tool_calls`/`function_call`
    /// -> toolUse; `content_filter` (Z.ai: `sensitive`) -> contentFilter;
    /// none at all -> toolUse when there were tool calls, else stop; any
    /// other value is passed through as it is.
    public static func finishReason(_ raw: String?, hasToolCalls: Bool) -> FinishReason {
        guard let raw else { return hasToolCalls ? .toolUse : .stop }
        switch raw {
        case "stop", "eos", "end_turn", "stop_sequence": return .stop
        case "length", "max_tokens", "model_context_window_exceeded": return .maxTokens
        case "tool_calls", "function_call", "tool_use": return .toolUse
        case "content_filter", "sensitive", "refusal": return .contentFilter
        case "error", "network_error": return .error
        default: return FinishReason(rawValue: raw)
        }
    }

    /// An error a 2xx stream carried (`{"error": {...}}` in a chunk, or
    /// Groq's `event: error` frame), as the error its status or type says.
    public static func inBandError(_ v: JSONValue) -> ProviderError {
        if let s = v.stringValue { return ProviderError(.api, "the provider reported an error in the stream: \(s)") }
        let message = v["message"]?.stringValue ?? Wire.excerpt(v.jsonText)
        let type = v["type"]?.stringValue
        let code = v["code"].flatMap { $0.stringValue ?? $0.intValue.map(String.init) }
        var status = v["status_code"]?.intValue ?? v["status"]?.intValue ?? v["code"]?.intValue
        if let s = status, !(400...599).contains(s) { status = nil }
        let kind = status.map { ProviderHTTP.kind(forStatus: $0) } ?? ProviderHTTP.kind(forErrorType: type ?? code) ?? .api
        let said = [status.map { "\($0)" }, type, code.flatMap { $0 == type || $0 == status.map(String.init) ? nil : $0 }]
            .compactMap { $0 }.joined(separator: " ")
        var e = ProviderError(kind, "the provider reported an error in the stream: \(said.isEmpty ? "" : said + ": ")\(message)")
        e.status = status
        e.providerType = type ?? code
        return e
    }
}
