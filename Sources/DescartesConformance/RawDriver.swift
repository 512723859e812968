internal import CDescartesPlugin
import Descartes
import DescartesSupport
import Glibc

/// Drives a plugin backend through the bare C ABI, recording every event
/// with its time, for the conformance suite. Unlike `PluginBackend` it
/// enforces nothing itself (no deadlines, no rule checks), so what the suite
/// measures is the plugin's own behaviour.
final class RawBackend: @unchecked Sendable {
    let raw: UnsafeMutablePointer<descartes_backend_t>
    let table: HostTable
    let library: PluginLibrary
    private let destroyed = Lock(false)

    init(raw: UnsafeMutablePointer<descartes_backend_t>, table: HostTable, library: PluginLibrary) {
        self.raw = raw
        self.table = table
        self.library = library
    }

    /// Starts `op` on a thread of its own and waits for its start function
    /// to return, at most `bound` from when it was called; past that the
    /// call goes on without its handle (cancel and release wait for it) and
    /// `late` is told at once. The call object is deliberately never freed:
    /// a plugin that breaks the rules and reports after its terminal event
    /// (or after release) still lands on valid memory, where the suite
    /// counts it.
    func start(_ op: BackendOperation, _ input: [UInt8], bound: Duration, late: @escaping @Sendable (RawCall) -> Void) -> RawCall {
        let call = RawCall(op: op)
        guard let fn = op.function(in: raw) else {
            call.noHandle = true
            return call
        }
        let ctx = Unmanaged.passRetained(call).toOpaque()
        let args = UncheckedBox((raw, fn, ctx))
        let started = detachThread {
            let (raw, fn, ctx) = args.value
            call.calling()
            let handle = input.withUnsafeBufferPointer { buf in
                buf.withMemoryRebound(to: CChar.self) { fn(raw, $0.baseAddress, $0.count, RawCall.onEvent, ctx) }
            }
            let (cancel, release) = call.returned(handle)
            if let handle, cancel { raw.pointee.cancel?(raw, handle) }
            if let handle, release { raw.pointee.release?(raw, handle) }
        }
        guard started else {
            call.noHandle = true
            return call
        }
        // The bound counts from the call itself, not from the thread's
        // creation (a loaded machine may start the thread late).
        let giveUp = ContinuousClock.now + .seconds(5)
        while !call.hasReturned {
            let now = ContinuousClock.now
            if let at = call.calledAt, now - at > bound {
                late(call)
                break
            }
            if now > giveUp { break }
            usleep(200)
        }
        return call
    }

    func cancel(_ call: RawCall) {
        guard let h = call.handleForCancel() else { return }
        raw.pointee.cancel?(raw, h)
    }

    /// Releases a call's handle once its terminal event has come (when its
    /// start function returns, if it has not yet).
    func release(_ call: RawCall) {
        guard call.terminalCount > 0, let h = call.takeHandleForRelease() else { return }
        raw.pointee.release?(raw, h)
    }

    /// Calls destroy on a thread of its own; true if it returned in time.
    func destroy(within limit: Duration) async -> Bool {
        if destroyed.withLock({ d in defer { d = true }; return d }) { return true }
        let done = Lock(false)
        let raw = self.raw
        let box = UncheckedBox(raw)
        detachThread {
            box.value.pointee.destroy?(box.value)
            done.withLock { $0 = true }
        }
        _ = raw
        let until = ContinuousClock.now + limit
        while ContinuousClock.now < until {
            if done.withLock({ $0 }) { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return false
    }
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

/// One operation in flight, and everything the plugin reported for it.
final class RawCall: @unchecked Sendable {
    struct Event: Sendable {
        var type: Int
        var index: Int
        var data: [UInt8]
        var at: ContinuousClock.Instant
        var text: String { String(decoding: data, as: UTF8.self) }
        var isTerminal: Bool { type == DESCARTES_EVENT_RESULT || type == DESCARTES_EVENT_ERROR }
    }

    let op: BackendOperation
    let started = ContinuousClock.now
    var noHandle = false
    private struct State {
        var events: [Event] = []
        var handle: CallHandle?
        var released = false
        /// When the start function was called and when it returned.
        var calledAt: ContinuousClock.Instant?
        var returnedAt: ContinuousClock.Instant?
        /// Asked for before the start function returned.
        var cancelWanted = false
        var releaseWanted = false
        /// Events after the first terminal one, and how many terminal events.
        var afterTerminal = 0
        var terminals = 0
    }
    private let state = Lock(State())

    init(op: BackendOperation) { self.op = op }

    static let onEvent: descartes_event_fn = { ctx, event in
        guard let ctx, let event else { return }
        Unmanaged<RawCall>.fromOpaque(ctx).takeUnretainedValue().record(event.pointee)
    }

    func record(_ e: descartes_event_t) {
        let data = e.data.map { Array(UnsafeRawBufferPointer(start: $0, count: e.data_length)) } ?? []
        let event = Event(type: Int(e.type), index: Int(e.index), data: data, at: .now)
        state.withLock { s in
            if s.terminals > 0 { s.afterTerminal += 1 }
            if event.isTerminal { s.terminals += 1 }
            s.events.append(event)
        }
    }

    func calling() { state.withLock { $0.calledAt = .now } }

    /// The start function returned `h`: whether a cancel and a release
    /// asked for meanwhile are now due.
    func returned(_ h: OpaquePointer?) -> (cancel: Bool, release: Bool) {
        let wrapped = h.map { CallHandle(raw: $0) }
        return state.withLock { s in
            s.handle = wrapped
            s.returnedAt = .now
            if h == nil { return (false, false) }
            let release = s.releaseWanted && !s.released
            if release { s.released = true }
            return (s.cancelWanted && !release, release)
        }
    }
    var calledAt: ContinuousClock.Instant? { state.withLock { $0.calledAt } }
    var hasReturned: Bool { state.withLock { $0.returnedAt != nil } }
    /// How long the start function took (so far, while it has not returned).
    var startDuration: Duration? {
        state.withLock { s in s.calledAt.map { (s.returnedAt ?? .now) - $0 } }
    }
    var handle: OpaquePointer? { state.withLock { $0.handle }?.raw }
    var isReleased: Bool { state.withLock { $0.released } }

    /// The handle to cancel now, or nil (the start function has not
    /// returned: cancelled when it does; or released already).
    func handleForCancel() -> OpaquePointer? {
        state.withLock { s -> CallHandle? in
            if s.returnedAt == nil {
                s.cancelWanted = true
                return nil
            }
            guard !s.released else { return nil }
            return s.handle
        }?.raw
    }

    func takeHandleForRelease() -> OpaquePointer? {
        let h = state.withLock { s -> CallHandle? in
            if s.returnedAt == nil {
                s.releaseWanted = true
                return nil
            }
            guard !s.released, let h = s.handle else { return nil }
            s.released = true
            return h
        }
        return h?.raw
    }

    var events: [Event] { state.withLock { $0.events } }
    var terminalCount: Int { state.withLock { $0.terminals } }
    var afterTerminal: Int { state.withLock { $0.afterTerminal } }
    var terminal: Event? { events.first { e in e.isTerminal } }

    /// The text of the TEXT events before the terminal one, joined.
    var text: String {
        String(decoding: events.prefix { !$0.isTerminal }.filter { $0.type == DESCARTES_EVENT_TEXT }.flatMap(\.data), as: UTF8.self)
    }
    var firstContentEvent: Event? {
        events.first { $0.type == DESCARTES_EVENT_TEXT || $0.type == DESCARTES_EVENT_REASONING || $0.type == DESCARTES_EVENT_TOOL_CALL_START }
    }

    /// The start function returned NULL (no event will come).
    var returnedNoHandle: Bool { state.withLock { $0.returnedAt != nil && $0.handle == nil } }

    /// The terminal event, waiting up to `limit` for it.
    func waitTerminal(_ limit: Duration) async -> Event? {
        let until = ContinuousClock.now + limit
        while true {
            if let t = terminal { return t }
            if noHandle || returnedNoHandle || ContinuousClock.now >= until { return nil }
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Waits for the first answer content (or the terminal event).
    func waitFirstContent(_ limit: Duration) async -> Event? {
        let until = ContinuousClock.now + limit
        while ContinuousClock.now < until {
            if let e = firstContentEvent { return e }
            if terminal != nil { return nil }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return nil
    }

    /// The terminal error, decoded, when the call failed.
    var error: ProviderError? {
        guard let t = terminal, t.type == DESCARTES_EVENT_ERROR else { return nil }
        return t.data.withUnsafeBytes { Wire.decodeError($0, provider: nil) }
    }
}
