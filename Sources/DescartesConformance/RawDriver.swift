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

    /// Starts `op`. The call object is deliberately never freed: a plugin
    /// that breaks the rules and reports after its terminal event (or after
    /// release) still lands on valid memory, where the suite counts it.
    func start(_ op: BackendOperation, _ input: [UInt8]) -> RawCall {
        let call = RawCall(op: op)
        guard let fn = op.function(in: raw) else {
            call.noHandle = true
            return call
        }
        let ctx = Unmanaged.passRetained(call).toOpaque()
        let handle = input.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: CChar.self) { fn(raw, $0.baseAddress, $0.count, RawCall.onEvent, ctx) }
        }
        call.setHandle(handle)
        return call
    }

    func cancel(_ call: RawCall) {
        guard let h = call.handle, !call.isReleased else { return }
        raw.pointee.cancel?(raw, h)
    }

    /// Releases a call's handle once its terminal event has come.
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

    func setHandle(_ h: OpaquePointer?) {
        let wrapped = h.map { CallHandle(raw: $0) }
        state.withLock { $0.handle = wrapped }
    }
    var handle: OpaquePointer? { state.withLock { $0.handle }?.raw }
    var isReleased: Bool { state.withLock { $0.released } }
    func takeHandleForRelease() -> OpaquePointer? {
        let h = state.withLock { s -> CallHandle? in
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

    /// The terminal event, waiting up to `limit` for it.
    func waitTerminal(_ limit: Duration) async -> Event? {
        let until = ContinuousClock.now + limit
        while true {
            if let t = terminal { return t }
            if noHandle || ContinuousClock.now >= until { return nil }
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
