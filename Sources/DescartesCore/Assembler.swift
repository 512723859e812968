/// Joins UTF-8 fragments that may split a multi-byte sequence, returning
/// each time the longest complete prefix as a `String` and keeping the
/// incomplete tail for the next fragment.
public struct UTF8Joiner: Sendable {
    private var pending: [UInt8] = []

    public init() {}

    /// Appends `bytes` and returns the text that is now complete.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) -> String {
        if pending.isEmpty {
            let cut = Self.completePrefixLength(bytes)
            if cut == bytes.count { return String(decoding: bytes, as: UTF8.self) }
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[0..<cut]), as: UTF8.self)
            pending.append(contentsOf: bytes[cut...])
            return text
        }
        pending.append(contentsOf: bytes)
        let cut = pending.withUnsafeBytes { Self.completePrefixLength($0) }
        let text = String(decoding: pending[0..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Whatever is left, decoded with replacement characters.
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// The length of the prefix of `b` that does not end inside a UTF-8
    /// sequence. Only the last three bytes need to be examined.
    static func completePrefixLength(_ b: UnsafeRawBufferPointer) -> Int {
        let n = b.count
        var i = n - 1
        let stop = max(0, n - 4)
        while i >= stop {
            let c = b[i]
            if c & 0xC0 != 0x80 {
                // A lead byte (or ASCII): is its sequence complete?
                let need: Int
                if c < 0x80 { need = 1 } else if c & 0xE0 == 0xC0 { need = 2 } else if c & 0xF0 == 0xE0 { need = 3 } else if c & 0xF8 == 0xF0 { need = 4 } else { return n }
                return n - i >= need ? n : i
            }
            i -= 1
        }
        return n
    }
}

/// Builds a `ModelResponse` from stream events and checks the rules every
/// plugin must follow (tool-call deltas after their start, ids present or
/// made up, nothing after the end).
public struct ResponseAssembler: Sendable {
    public private(set) var content: [UInt8] = []
    public private(set) var reasoning: [UInt8] = []
    private var calls: [Int: (id: String, name: String, arguments: [UInt8], ended: Bool)] = [:]
    private var callOrder: [Int] = []
    public var usage: Usage?
    public var id: String?
    public var model: String?
    public var provider: String

    public init(provider: String) { self.provider = provider }

    public mutating func appendText(_ b: UnsafeRawBufferPointer) { content.append(contentsOf: b) }
    public mutating func appendReasoning(_ b: UnsafeRawBufferPointer) {
        reasoning.append(contentsOf: b)
        openThinking.append(contentsOf: b)
    }

    /// Reasoning blocks ended so far, and the text of the open one.
    private var blocks: [ReasoningBlock] = []
    private var openThinking: [UInt8] = []
    /// A REASONING_SIGNATURE came (the plugin signs block by block).
    private var signedInStream = false

    /// A REASONING_SIGNATURE: the open thinking block (the reasoning since
    /// the previous block ended, possibly none) ends, signed.
    public mutating func signReasoning(_ signature: String) {
        signedInStream = true
        blocks.append(.thinking(String(decoding: openThinking, as: UTF8.self), signature: signature))
        openThinking = []
    }

    /// A REASONING_REDACTED: the open thinking block ends (unsigned), and
    /// the redacted block follows it.
    public mutating func appendRedactedReasoning(_ data: String) {
        if !openThinking.isEmpty { blocks.append(.thinking(String(decoding: openThinking, as: UTF8.self), signature: nil)) }
        openThinking = []
        blocks.append(.redacted(data))
    }

    /// The reasoning blocks, the open one ended. `lateSignature` (the
    /// Finish's, from a plugin that signs only with its answer) signs the
    /// last thinking block when no signature was streamed, or makes a
    /// thinking block of its own (no text) when there is none to sign.
    public func reasoningBlocks(lateSignature: String?) -> [ReasoningBlock] {
        var out = blocks
        let late = signedInStream ? nil : lateSignature
        if !openThinking.isEmpty {
            out.append(.thinking(String(decoding: openThinking, as: UTF8.self), signature: late))
        } else if let late {
            if case .thinking(let t, nil)? = out.last {
                out[out.count - 1] = .thinking(t, signature: late)
            } else {
                out.append(.thinking("", signature: late))
            }
        }
        return out
    }

    /// Records the start of tool call `index`; an empty id gets a made-up one.
    public mutating func startToolCall(index: Int, id: String, name: String) throws(ProviderError) -> String {
        if let existing = calls[index] {
            // Some providers repeat the header; keep the first non-empty values.
            let keptID = existing.id.isEmpty ? id : existing.id
            calls[index] = (keptID, existing.name.isEmpty ? name : existing.name, existing.arguments, existing.ended)
            return keptID
        }
        let callID = id.isEmpty ? "call_\(provider)_\(index)" : id
        calls[index] = (callID, name, [], false)
        callOrder.append(index)
        return callID
    }

    public mutating func appendToolArguments(index: Int, _ b: UnsafeRawBufferPointer) throws(ProviderError) {
        guard calls[index] != nil else {
            throw ProviderError(
                .invalidResponse, "tool call \(index) received arguments before it started", provider: provider)
        }
        calls[index]!.arguments.append(contentsOf: b)
    }

    public mutating func endToolCall(index: Int) throws(ProviderError) {
        guard calls[index] != nil else {
            throw ProviderError(.invalidResponse, "tool call \(index) ended before it started", provider: provider)
        }
        calls[index]!.ended = true
    }

    public var toolCalls: [ToolCall] {
        callOrder.map { i in
            let c = calls[i]!
            return ToolCall(id: c.id, name: c.name, arguments: c.arguments.isEmpty ? "{}" : String(decoding: c.arguments, as: UTF8.self))
        }
    }

    public var hasOutput: Bool { !content.isEmpty || !reasoning.isEmpty || !callOrder.isEmpty || !blocks.isEmpty }

    /// The response, given the plugin's Finish document.
    public func response(_ f: Wire.Finish) -> ModelResponse {
        var finish = f.finishReason
        // A provider that reports "stop" while returning tool calls means tool use.
        if finish == .stop && !callOrder.isEmpty { finish = .toolUse }
        var r = ModelResponse(
            content: String(decoding: content, as: UTF8.self),
            reasoning: reasoning.isEmpty ? nil : String(decoding: reasoning, as: UTF8.self),
            finishReason: finish, usage: f.usage ?? usage ?? Usage(), toolCalls: toolCalls,
            model: f.model ?? model ?? "", id: f.id ?? id, costUSD: f.costUSD, provider: provider,
            metadata: f.metadata)
        r.reasoningBlocks = reasoningBlocks(lateSignature: r.reasoningSignature)
        return r
    }
}
