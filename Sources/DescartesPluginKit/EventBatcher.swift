/// Coalesces a stream's consecutive fragments of one kind (text, reasoning,
/// one tool call's arguments) and hands them to the call as one event when
/// the kind changes, when `flush()` is called, or past `limit` bytes.
///
/// Why: one network read usually carries many server-sent events (a 16 KiB
/// read holds about fifty OpenAI chunks). Emitting each event's few bytes as
/// its own ABI event makes the host do its per-event work (a callback, a
/// String, a wake-up of the consumer) fifty times for bytes that arrived at
/// the same instant. Flushing at the end of every read
/// (`StreamResponseHandler` calls the consumer's `flush()`) keeps the
/// latency of the unbatched stream: nothing waits for bytes still to come.
///
/// The order of events is kept: any other event (a start, a tool call's
/// start or end, usage, a notice) flushes first. Use it from one thread at a
/// time (the HTTP client's loop thread).
public final class EventBatcher: @unchecked Sendable {
    public let call: PluginCall
    public let limit: Int

    private enum Kind: Equatable {
        case none, text, reasoning
        case tool(Int)
    }
    private var kind = Kind.none
    private var buffer: [UInt8] = []

    public init(call: PluginCall, limit: Int = 64 << 10) {
        self.call = call
        self.limit = limit
        buffer.reserveCapacity(4096)
    }

    /// Emits what is buffered.
    public func flush() {
        guard !buffer.isEmpty else { return }
        let k = kind
        buffer.withUnsafeBytes { b in
            switch k {
            case .text: call.text(bytes: b)
            case .reasoning: call.reasoning(bytes: b)
            case .tool(let i): call.toolCallDelta(index: i, bytes: b)
            case .none: break
            }
        }
        buffer.removeAll(keepingCapacity: true)
        kind = .none
    }

    @inline(__always)
    private func append(_ k: Kind, _ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        if k != kind {
            flush()
            kind = k
        }
        buffer.append(contentsOf: bytes)
        if buffer.count >= limit { flush() }
    }

    // MARK: Fragments (coalesced)

    public func text(bytes: UnsafeRawBufferPointer) { append(.text, bytes) }
    public func reasoning(bytes: UnsafeRawBufferPointer) { append(.reasoning, bytes) }
    public func toolCallDelta(index: Int, bytes: UnsafeRawBufferPointer) { append(.tool(index), bytes) }

    public func text(_ s: String) {
        var s = s
        s.withUTF8 { append(.text, UnsafeRawBufferPointer($0)) }
    }
    public func reasoning(_ s: String) {
        var s = s
        s.withUTF8 { append(.reasoning, UnsafeRawBufferPointer($0)) }
    }
    public func toolCallDelta(index: Int, _ arguments: String) {
        var s = arguments
        s.withUTF8 { append(.tool(index), UnsafeRawBufferPointer($0)) }
    }

    // MARK: Other events (in order, after what is buffered)

    public func start(id: String?, model: String?) {
        flush()
        call.start(id: id, model: model)
    }
    public func toolCallStart(index: Int, id: String, name: String) {
        flush()
        call.toolCallStart(index: index, id: id, name: name)
    }
    public func toolCallEnd(index: Int) {
        flush()
        call.toolCallEnd(index: index)
    }
    public func toolCall(index: Int, _ c: ToolCall) {
        flush()
        call.toolCall(index: index, c)
    }
    public func reasoningSignature(_ signature: String) {
        flush()
        call.reasoningSignature(signature)
    }
    public func reasoningRedacted(_ data: String) {
        flush()
        call.reasoningRedacted(data)
    }
    public func usage(_ u: Usage) {
        flush()
        call.usage(u)
    }
    public func notice(_ level: String = "info", _ message: String) {
        flush()
        call.notice(level, message)
    }
}
