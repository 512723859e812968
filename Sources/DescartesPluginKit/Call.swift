@_exported import DescartesCore
internal import CDescartesPlugin

/// One operation in flight, as the plugin sees it: where events go.
///
/// Emitting is safe from any thread. Events are delivered one at a time and
/// in order; an event emitted while another thread (or a re-entrant call from
/// inside the host's callback) is delivering is queued and delivered by that
/// thread right after. After the terminal event (`finish`/`fail`) everything
/// else is dropped, so a plugin can race its completion against a
/// cancellation without coordinating.
public final class PluginCall: @unchecked Sendable {
    let onEvent: descartes_event_fn
    let ctx: UnsafeMutableRawPointer?
    weak var owner: BackendBox?

    private struct Queued {
        var type: UInt32
        var index: UInt32
        var data: [UInt8]
    }
    private struct State {
        var delivering = false
        var queue: [Queued] = []
        var terminated = false
        var cancelled = false
        var cancelHandlers: [@Sendable () -> Void] = []
        /// Approval requests sent and not answered yet, by id (ABI 1.2).
        var approvals: [String: @Sendable (ApprovalDecision) -> Void] = [:]
    }
    private let state = Lock(State())

    init(onEvent: descartes_event_fn, ctx: UnsafeMutableRawPointer?, owner: BackendBox?) {
        self.onEvent = onEvent
        self.ctx = ctx
        self.owner = owner
    }

    // MARK: Cancellation

    /// True once the host asked to cancel the call.
    public var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// True once the terminal event was emitted.
    public var isFinished: Bool { state.withLock { $0.terminated } }

    /// Runs `handler` when the host cancels the call (at once if it already
    /// has). A handler should abort the work (close the transfer, kill the
    /// child); the kit then reports `cancelled` unless the work reports its
    /// own terminal event first.
    public func onCancel(_ handler: @escaping @Sendable () -> Void) {
        let runNow = state.withLock { s -> Bool in
            if s.cancelled { return true }
            s.cancelHandlers.append(handler)
            return false
        }
        if runNow { handler() }
    }

    func cancel() {
        let handlers = state.withLock { s -> [@Sendable () -> Void]? in
            if s.cancelled || s.terminated { return nil }
            s.cancelled = true
            defer { s.cancelHandlers = [] }
            return s.cancelHandlers
        }
        guard let handlers else { return }
        for h in handlers { h() }
        fail(ProviderError(.cancelled, "the request was cancelled"))
        denyOpenApprovals("the request was cancelled")
    }

    // MARK: Approvals (ABI 1.2)

    /// Asks the host to approve a tool use (an APPROVAL event) and calls
    /// `answer` once with its decision, on the host's thread. Ask only when
    /// the request's `approval` is `.host` (the host said it answers).
    /// A call that ends (cancelled, or its terminal event) before the host
    /// answers gets `.deny` with the reason.
    public func askApproval(_ q: ApprovalRequest, _ answer: @escaping @Sendable (ApprovalDecision) -> Void) {
        let open = state.withLock { s -> Bool in
            if s.terminated || s.cancelled { return false }
            s.approvals[q.id] = answer
            return true
        }
        guard open else { return answer(.deny(reason: "the request had ended")) }
        var o: JSONObject = ["id": .string(q.id), "tool": .string(q.tool), "input": q.input]
        if let k = q.kind { o["kind"] = .string(k) }
        emitJSON(UInt32(DESCARTES_EVENT_APPROVAL), 0, JSONValue.object(o).jsonBytes)
    }

    /// The host's `answer_approval`: {"id", "allow", "reason"?}.
    func answerApproval(_ bytes: UnsafeRawBufferPointer) {
        guard let doc = try? JSONValue.parse(bytes), let id = doc["id"]?.stringValue else { return }
        guard let answer = state.withLock({ $0.approvals.removeValue(forKey: id) }) else { return }
        if doc["allow"]?.boolValue == true {
            answer(.allow)
        } else {
            answer(.deny(reason: doc["reason"]?.stringValue ?? "denied by the caller"))
        }
    }

    private func denyOpenApprovals(_ why: String) {
        let open = state.withLock { s -> [@Sendable (ApprovalDecision) -> Void] in
            defer { s.approvals = [:] }
            return Array(s.approvals.values)
        }
        for a in open { a(.deny(reason: why)) }
    }

    // MARK: Events

    /// A fragment of the answer's text.
    public func text(_ s: String) {
        var s = s
        s.withUTF8 { emit(UInt32(DESCARTES_EVENT_TEXT), 0, UnsafeRawBufferPointer($0)) }
    }

    /// A fragment of the answer's text, as UTF-8 bytes (no copy on the hot path).
    public func text(bytes: UnsafeRawBufferPointer) { emit(UInt32(DESCARTES_EVENT_TEXT), 0, bytes) }

    public func reasoning(_ s: String) {
        var s = s
        s.withUTF8 { emit(UInt32(DESCARTES_EVENT_REASONING), 0, UnsafeRawBufferPointer($0)) }
    }
    public func reasoning(bytes: UnsafeRawBufferPointer) { emit(UInt32(DESCARTES_EVENT_REASONING), 0, bytes) }

    /// The provider's signature of the reasoning block that ends, whole,
    /// when it ends (ABI 1.3; an older host ignores it): reasoning after it
    /// is a new block. Put the last one in the Finish's metadata as well.
    public func reasoningSignature(_ s: String) {
        var s = s
        s.withUTF8 { emit(UInt32(DESCARTES_EVENT_REASONING_SIGNATURE), 0, UnsafeRawBufferPointer($0)) }
    }

    /// A reasoning block the provider returns encrypted (Anthropic's
    /// `redacted_thinking` data), whole, in its place among the reasoning
    /// blocks (ABI 1.4; an older host ignores it).
    public func reasoningRedacted(_ s: String) {
        var s = s
        s.withUTF8 { emit(UInt32(DESCARTES_EVENT_REASONING_REDACTED), 0, UnsafeRawBufferPointer($0)) }
    }

    public func start(id: String?, model: String?) {
        var o = JSONObject()
        if let id { o["id"] = .string(id) }
        if let model { o["model"] = .string(model) }
        emitJSON(UInt32(DESCARTES_EVENT_START), 0, JSONValue.object(o).jsonBytes)
    }

    public func toolCallStart(index: Int, id: String, name: String) {
        emitJSON(UInt32(DESCARTES_EVENT_TOOL_CALL_START), UInt32(index), JSONValue.object(["id": .string(id), "name": .string(name)]).jsonBytes)
    }
    public func toolCallDelta(index: Int, _ arguments: String) {
        var a = arguments
        a.withUTF8 { emit(UInt32(DESCARTES_EVENT_TOOL_CALL_DELTA), UInt32(index), UnsafeRawBufferPointer($0)) }
    }
    public func toolCallDelta(index: Int, bytes: UnsafeRawBufferPointer) {
        emit(UInt32(DESCARTES_EVENT_TOOL_CALL_DELTA), UInt32(index), bytes)
    }
    public func toolCallEnd(index: Int) { emit(UInt32(DESCARTES_EVENT_TOOL_CALL_END), UInt32(index), UnsafeRawBufferPointer(start: nil, count: 0)) }

    /// A whole tool call at once (start, arguments, end).
    public func toolCall(index: Int, _ call: ToolCall) {
        toolCallStart(index: index, id: call.id, name: call.name)
        if !call.arguments.isEmpty { toolCallDelta(index: index, call.arguments) }
        toolCallEnd(index: index)
    }

    public func usage(_ u: Usage) { emitJSON(UInt32(DESCARTES_EVENT_USAGE), 0, Wire.encode(u)) }

    /// A diagnostic for the caller ("info", "warning" or "error").
    public func notice(_ level: String = "info", _ message: String) {
        emitJSON(UInt32(DESCARTES_EVENT_NOTICE), 0, JSONValue.object(["level": .string(level), "message": .string(message)]).jsonBytes)
    }

    // MARK: Terminal events

    /// Ends a completion successfully.
    public func finish(_ f: Wire.Finish) { terminal(UInt32(DESCARTES_EVENT_RESULT), Wire.encode(f)) }

    /// Ends an operation successfully with a result document.
    public func finish(result: JSONValue) { terminal(UInt32(DESCARTES_EVENT_RESULT), result.jsonBytes) }

    /// Ends an `embed` successfully (ABI 1.1).
    public func finish(embeddings: Embeddings) { terminal(UInt32(DESCARTES_EVENT_RESULT), Wire.encode(embeddings)) }

    /// Ends an operation successfully with pre-encoded JSON.
    public func finish(json: [UInt8]) { terminal(UInt32(DESCARTES_EVENT_RESULT), json) }

    /// Runs `body` on a task of its own and ends the operation with the
    /// document it returns, or the error it throws (`cancelled` once the
    /// host cancelled the call, which also cancels the task).
    public func finishAsync(_ body: @escaping @Sendable () async throws -> [UInt8]) {
        let task = Task.detached {
            do { self.finish(json: try await body()) } catch {
                if Task.isCancelled { return self.fail(ProviderError(.cancelled, "the request was cancelled")) }
                self.fail(error as? ProviderError ?? ProviderError(.backend, "\(error)"))
            }
        }
        onCancel { task.cancel() }
    }

    /// Ends an operation with an error.
    public func fail(_ e: ProviderError) { terminal(UInt32(DESCARTES_EVENT_ERROR), Wire.encode(e)) }

    // MARK: Delivery

    private func emitJSON(_ type: UInt32, _ index: UInt32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { emit(type, index, $0) }
    }

    private func terminal(_ type: UInt32, _ bytes: [UInt8]) {
        let first = state.withLock { s -> Bool in
            if s.terminated { return false }
            s.terminated = true
            s.cancelHandlers = []
            return true
        }
        guard first else { return }
        bytes.withUnsafeBytes { deliverOrQueue(type, 0, $0, terminal: true) }
        denyOpenApprovals("the request had ended")
        owner?.finished(self)
    }

    @inline(__always)
    private func emit(_ type: UInt32, _ index: UInt32, _ bytes: UnsafeRawBufferPointer) {
        deliverOrQueue(type, index, bytes, terminal: false)
    }

    private func deliverOrQueue(_ type: UInt32, _ index: UInt32, _ bytes: UnsafeRawBufferPointer, terminal: Bool) {
        let deliverNow = state.withLock { s -> Bool in
            if s.terminated && !terminal { return false }
            if s.delivering {
                s.queue.append(Queued(type: type, index: index, data: Array(bytes)))
                return false
            }
            s.delivering = true
            return true
        }
        guard deliverNow else { return }
        deliver(type, index, bytes)
        // Drain what other threads (or re-entrant calls) queued meanwhile.
        while true {
            let next = state.withLock { s -> Queued? in
                if s.queue.isEmpty {
                    s.delivering = false
                    return nil
                }
                return s.queue.removeFirst()
            }
            guard let next else { return }
            next.data.withUnsafeBytes { deliver(next.type, next.index, $0) }
        }
    }

    @inline(__always)
    private func deliver(_ type: UInt32, _ index: UInt32, _ bytes: UnsafeRawBufferPointer) {
        var e = descartes_event_t()
        e.struct_size = UInt32(MemoryLayout<descartes_event_t>.size)
        e.type = type
        e.index = index
        e.data = bytes.baseAddress?.assumingMemoryBound(to: CChar.self)
        e.data_length = bytes.count
        onEvent(ctx, &e)
    }
}
