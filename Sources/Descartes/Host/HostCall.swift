internal import CDescartesPlugin
import DescartesSupport

/// One operation in flight in a plugin: the host side of a descartes_call_t.
///
/// Life cycle: `start` retains the call for the plugin (the `ctx` pointer),
/// the plugin reports events on its threads, and the plugin's terminal event
/// gives that reference back. The consumer may be answered earlier by the
/// host itself (a deadline, a cancellation); the plugin's later events are
/// then dropped, and its terminal event only releases the handle.
final class HostCall: @unchecked Sendable {
    enum Outcome: Sendable {
        case response(ModelResponse)
        case document(JSONValue)
    }

    let backend: PluginBackend
    let op: BackendOperation
    let deadlines: Deadlines
    let sink: StreamSink?
    /// The backend's clock, which the deadlines are counted on.
    let clock: DescartesClock
    let startedAt: ContinuousClock.Instant
    /// Where the total deadline counts from: the request's start, which
    /// comes before this call when the backend was initialized first.
    let totalFrom: ContinuousClock.Instant
    /// Decides the plugin's APPROVAL events (ABI 1.2); nil answers them
    /// denied (the request carried no policy).
    let approval: ApprovalPolicy?
    /// The call's number in `CallRegistry` (the plugin's context), once started.
    private(set) var id: UInt64 = 0

    private struct State {
        var continuation: CheckedContinuation<Outcome, Error>?
        /// The plugin's handle, once `start` has returned it.
        var handle: CallHandle?
        /// The consumer has its answer (from the plugin or from the host).
        var answered = false
        /// The plugin delivered its terminal event.
        var pluginDone = false
        /// `release` was called (the handle must not be used again).
        var released = false
        /// Calls to the plugin's `cancel` under way outside the lock.
        var cancelsInFlight = 0
        /// The host wants the plugin to stop.
        var cancelWanted = false
        var assembler: ResponseAssembler
        var text = UTF8Joiner()
        var reasoning = UTF8Joiner()
        var gotFirstToken = false
        var lastEvent: ContinuousClock.Instant
        /// The scheduled deadline check.
        var watchdog: DeadlineTimer.Token?
        /// The plugin's operation function returned.
        var startReturned = false
        /// A deadline passed while the operation function had not returned.
        var stuck = false
        /// Events and bytes received (CallLimits).
        var events = 0
        var bytes = 0
        /// Approval answers decided before the operation function returned
        /// the handle, sent once it has.
        var heldAnswers: [[UInt8]] = []
    }
    private let state: Lock<State>

    init(
        backend: PluginBackend, op: BackendOperation, deadlines: Deadlines,
        continuation: CheckedContinuation<Outcome, Error>, sink: StreamSink?, totalFrom: ContinuousClock.Instant? = nil,
        approval: ApprovalPolicy? = nil
    ) {
        self.approval = approval
        self.backend = backend
        self.op = op
        self.deadlines = deadlines
        self.sink = sink
        clock = backend.clock
        startedAt = clock.now
        self.totalFrom = totalFrom ?? startedAt
        state = Lock(
            State(continuation: continuation, assembler: ResponseAssembler(provider: backend.name), lastEvent: startedAt))
        backend.callStarted()
    }

    /// The call no longer touches the plugin's backend: `shutdown` may destroy it.
    deinit { backend.callEnded() }

    
    // MARK: Starting

    /// Starts the operation on one of the plugin threads, with the
    /// deadlines already counting: a plugin whose function never returns
    /// holds that thread, not the caller, who gets `timeout` naming the
    /// operation when the deadline passes (and the backend is quarantined).
    ///
    /// A plugin whose manifest says `returns_promptly: true` (its functions
    /// only queue the work, as the plugin kit's HTTP backends do) is called
    /// here, on the caller's thread: one thread hand-off less per request.
    /// The deadlines still answer the caller if such a function does not
    /// return, but the thread it holds is then the caller's.
    func start(_ fn: descartes_operation_fn, input: [UInt8]) {
        // The plugin's context is the call's number in the registry, not a
        // pointer: an event after the terminal one (a broken plugin) finds
        // nothing there and is logged and dropped, never a freed object.
        id = CallRegistry.shared.register(self)
        backend.noteInFlight(1)
        armWatchdog()
        if backend.manifest.returnsPromptly {
            invoke(fn, input: input)
        } else {
            PluginThreads.shared.run { [self] in invoke(fn, input: input) }
        }
    }

    private func invoke(_ fn: descartes_operation_fn, input: [UInt8]) {
        let ctx = UnsafeMutableRawPointer(bitPattern: UInt(id))!
        let handle = input.withUnsafeBufferPointer { buf in
            buf.withMemoryRebound(to: CChar.self) { chars in
                fn(backend.raw, chars.baseAddress, chars.count, HostCall.onEvent, ctx)
            }
        }
        let late = state.withLock { s -> Bool in
            s.startReturned = true
            return s.stuck
        }
        if late {
            backend.log.log(.warning, "provider \(backend.name)", "the plugin's \(op.name) returned after its deadline had passed")
        }
        guard let handle else {
            // No handle: the ABI says no event will come.
            CallRegistry.shared.unregister(UInt64(UInt(bitPattern: ctx)), provider: backend.name, log: backend.log)
            backend.noteInFlight(-1)
            answer(.failure(ProviderError(.backend, "the plugin could not start \(op.name) (it returned no handle)", provider: backend.name)))
            return
        }
        let (releaseNow, cancelNow, held) = state.withLock { s -> (Bool, Bool, [[UInt8]]) in
            s.handle = CallHandle(raw: handle)
            if s.pluginDone && s.cancelsInFlight == 0 && !s.released {
                s.released = true
                return (true, false, [])
            }
            let held = s.pluginDone ? [] : s.heldAnswers
            s.heldAnswers = []
            s.cancelsInFlight += held.count
            if s.cancelWanted && !s.pluginDone {
                s.cancelsInFlight += 1
                return (false, true, held)
            }
            return (false, false, held)
        }
        if releaseNow { backend.raw.pointee.release?(backend.raw, handle) }
        for a in held { deliverAnswer(a, handle) }
        if cancelNow { cancelPlugin(handle) }
    }

    // MARK: Events from the plugin

    static let onEvent: descartes_event_fn = { ctx, event in
        guard let event else { return }
        let id = UInt64(UInt(bitPattern: ctx))
        guard let call = CallRegistry.shared.call(id) else {
            CallRegistry.shared.late(id, type: event.pointee.type)
            return
        }
        call.handle(event)
    }

    private func handle(_ event: UnsafePointer<descartes_event_t>) {
        let e = event.pointee
        let bytes = UnsafeRawBufferPointer(start: e.data, count: e.data.map { _ in e.data_length } ?? 0)
        let type = Int(e.type)
        if type == DESCARTES_EVENT_RESULT || type == DESCARTES_EVENT_ERROR {
            terminal(type == DESCARTES_EVENT_RESULT, bytes)
            return
        }
        var out: StreamEvent? = nil
        var ask: ApprovalRequest? = nil
        var violation: ProviderError? = nil
        var firstToken = false
        let live = state.withLock { s -> Bool in
            let hadFirst = s.gotFirstToken
            defer { firstToken = !hadFirst && s.gotFirstToken }
            if s.pluginDone {
                violation = ProviderError(.invalidResponse, "the plugin sent an event after its terminal event", provider: backend.name)
                return false
            }
            if s.answered { return false }
            s.lastEvent = clock.now
            // The host's own bounds on what one call may send.
            s.events += 1
            s.bytes += bytes.count
            let limits = backend.callLimits
            if s.events > limits.maxEvents {
                violation = ProviderError(
                    .invalidResponse, "the plugin sent more than \(limits.maxEvents) events in one \(op.name) call (the host's limit, CallLimits.maxEvents); the call was ended",
                    provider: backend.name)
                return false
            }
            if s.bytes > limits.maxBytes {
                violation = ProviderError(
                    .invalidResponse, "the plugin sent more than \(limits.maxBytes % (1 << 20) == 0 ? "\(limits.maxBytes >> 20) MiB" : "\(limits.maxBytes) bytes") in one \(op.name) call (the host's limit, CallLimits.maxBytes); the call was ended",
                    provider: backend.name)
                return false
            }
            switch type {
            case DESCARTES_EVENT_TEXT:
                s.gotFirstToken = true
                s.assembler.appendText(bytes)
                if sink != nil {
                    let t = s.text.append(bytes)
                    if !t.isEmpty { out = .textDelta(t) }
                }
            case DESCARTES_EVENT_REASONING:
                s.gotFirstToken = true
                s.assembler.appendReasoning(bytes)
                if sink != nil {
                    let t = s.reasoning.append(bytes)
                    if !t.isEmpty { out = .reasoningDelta(t) }
                }
            case DESCARTES_EVENT_TOOL_CALL_START:
                s.gotFirstToken = true
                let doc = try? JSONValue.parse(bytes)
                do throws(ProviderError) {
                    let id = try s.assembler.startToolCall(
                        index: Int(e.index), id: doc?["id"]?.stringValue ?? "", name: doc?["name"]?.stringValue ?? "")
                    out = .toolCallStart(index: Int(e.index), id: id, name: doc?["name"]?.stringValue ?? "")
                } catch { violation = error }
            case DESCARTES_EVENT_TOOL_CALL_DELTA:
                do throws(ProviderError) {
                    try s.assembler.appendToolArguments(index: Int(e.index), bytes)
                    out = .toolCallDelta(index: Int(e.index), arguments: String(decoding: bytes, as: UTF8.self))
                } catch { violation = error }
            case DESCARTES_EVENT_TOOL_CALL_END:
                do throws(ProviderError) {
                    try s.assembler.endToolCall(index: Int(e.index))
                    out = .toolCallEnd(index: Int(e.index))
                } catch { violation = error }
            case DESCARTES_EVENT_REASONING_SIGNATURE:
                if !bytes.isEmpty {
                    let signature = String(decoding: bytes, as: UTF8.self)
                    s.assembler.signReasoning(signature)
                    out = .reasoningSignature(signature)
                }
            case DESCARTES_EVENT_REASONING_REDACTED:
                s.gotFirstToken = true
                let data = String(decoding: bytes, as: UTF8.self)
                s.assembler.appendRedactedReasoning(data)
                out = .reasoningRedacted(data)
            case DESCARTES_EVENT_USAGE:
                if let doc = try? JSONValue.parse(bytes), let u = try? Wire.decodeUsage(doc) {
                    s.assembler.usage = u
                    out = .usage(u)
                } else {
                    violation = ProviderError(.invalidResponse, "the plugin sent a usage event that is not a Usage document", provider: backend.name)
                }
            case DESCARTES_EVENT_START:
                if let doc = try? JSONValue.parse(bytes) {
                    s.assembler.id = doc["id"]?.stringValue
                    s.assembler.model = doc["model"]?.stringValue
                    out = .start(id: s.assembler.id, model: s.assembler.model)
                }
            case DESCARTES_EVENT_NOTICE:
                let doc = try? JSONValue.parse(bytes)
                let level = doc?["level"]?.stringValue ?? "info"
                // A notice often quotes a child's output or a server's reply,
                // which may echo a key back: masked like errors are.
                let message = backend.log.redactor.redact(doc?["message"]?.stringValue ?? String(decoding: bytes, as: UTF8.self))
                out = .notice(level: level, message: message)
                backend.log.log(level == "error" ? .warning : .debug, "provider \(backend.name)", message)
            case DESCARTES_EVENT_APPROVAL:
                guard let doc = try? JSONValue.parse(bytes), let id = doc["id"]?.stringValue, let tool = doc["tool"]?.stringValue else {
                    violation = ProviderError(
                        .invalidResponse, "the plugin sent an approval event that is not {\"id\", \"tool\", ...}", provider: backend.name)
                    break
                }
                ask = ApprovalRequest(id: id, tool: tool, input: doc["input"] ?? .object([:]), kind: doc["kind"]?.stringValue)
            default:
                break  // Unknown event types are ignored (a newer plugin).
            }
            return violation == nil
        }
        if let violation {
            if !state.withLock({ $0.pluginDone }) { terminate(violation) } else {
                backend.log.log(.warning, "provider \(backend.name)", violation.message)
            }
            return
        }
        if live, let out, let sink { sink.continuation.yield(out) }
        if live, let ask { decide(ask) }
        // The idle deadline starts counting at the first token.
        if firstToken && deadlines.idle != nil { armWatchdog() }
    }

    private func terminal(_ success: Bool, _ bytes: UnsafeRawBufferPointer) {
        // Decode before taking the lock.
        var decoded: Result<Decoded, ProviderError>
        if success {
            decoded = decodeResult(bytes)
        } else {
            decoded = .failure(backend.log.redactor.redact(Wire.decodePluginError(bytes, provider: backend.name)))
        }
        var outcome: Result<Outcome, ProviderError> = .failure(ProviderError(.backend, "unreachable", provider: backend.name))
        var endsFlight = false  // the first terminal event: the call is no longer in flight
        let (handle, duplicate) = state.withLock { s -> (CallHandle?, Bool) in
            if s.pluginDone { return (nil, true) }
            s.pluginDone = true
            endsFlight = true
            switch decoded {
            case .failure(let e): outcome = .failure(e)
            case .success(.document(let d)): outcome = .success(.document(d))
            case .success(.finish(let finish)):
                // The answer is the deltas collected so far plus the Finish
                // document's fields; flush text that ended mid-sequence.
                let tail = s.text.flush()
                let reasoningTail = s.reasoning.flush()
                if let sink, !tail.isEmpty { sink.continuation.yield(.textDelta(tail)) }
                if let sink, !reasoningTail.isEmpty { sink.continuation.yield(.reasoningDelta(reasoningTail)) }
                outcome = .success(.response(s.assembler.response(finish)))
            }
            guard let h = s.handle, s.cancelsInFlight == 0, !s.released else { return (nil, false) }
            s.released = true
            return (h, false)
        }
        if duplicate {
            backend.log.log(.warning, "provider \(backend.name)", "the plugin sent a second terminal event; ignored")
            return
        }
        answer(outcome)
        if endsFlight { backend.noteInFlight(-1) }
        if let handle { backend.raw.pointee.release?(backend.raw, handle.raw) }
        // The plugin's reference (taken in start) ends here.
        CallRegistry.shared.unregister(id, provider: backend.name, log: backend.log)
    }

    private enum Decoded {
        case finish(Wire.Finish)
        case document(JSONValue)
    }

    private func decodeResult(_ bytes: UnsafeRawBufferPointer) -> Result<Decoded, ProviderError> {
        let doc: JSONValue
        do { doc = try JSONValue.parse(bytes) } catch {
            return .failure(ProviderError(.invalidResponse, "the plugin's \(op.name) result is not JSON (\(error))", provider: backend.name))
        }
        guard op.isCompletion else { return .success(.document(doc)) }
        do {
            return .success(.finish(try Wire.decodeFinish(doc)))
        } catch {
            return .failure(ProviderError(.invalidResponse, "the plugin's result: \(error)", provider: backend.name))
        }
    }

    // MARK: Answering

    /// Gives the consumer its answer, once.
    private func answer(_ outcome: Result<Outcome, ProviderError>) {
        let (continuation, watchdog) = state.withLock { s -> (CheckedContinuation<Outcome, Error>?, DeadlineTimer.Token?) in
            if s.answered { return (nil, nil) }
            s.answered = true
            defer {
                s.continuation = nil
                s.watchdog = nil
            }
            return (s.continuation, s.watchdog)
        }
        guard let continuation else { return }
        if let watchdog { DeadlineTimer.shared.cancel(watchdog) }
        switch outcome {
        case .success(let o):
            if let sink, case .response(let r) = o {
                switch sink.finished(r) {
                case .success(let answer):
                    sink.continuation.yield(.finish(answer))
                    sink.continuation.finish()
                    continuation.resume(returning: .response(answer))
                case .failure(let e):
                    sink.continuation.finish(throwing: e)
                    continuation.resume(throwing: e)
                }
            } else {
                continuation.resume(returning: o)
            }
        case .failure(let e):
            sink?.continuation.finish(throwing: e)
            continuation.resume(throwing: e)
        }
    }

    /// Ends the call from the host's side (deadline, cancellation, a broken
    /// rule): the consumer gets `error` now, and the plugin is asked to stop.
    func terminate(_ error: ProviderError) {
        answer(.failure(error))
        let handle = state.withLock { s -> CallHandle? in
            s.cancelWanted = true
            guard let h = s.handle, !s.released, !s.pluginDone else { return nil }
            s.cancelsInFlight += 1
            return h
        }
        if let handle { cancelPlugin(handle.raw) }
    }

    /// Calls the plugin's cancel outside the lock (it may deliver the
    /// terminal event synchronously), then releases if the terminal event
    /// arrived meanwhile.
    private func cancelPlugin(_ handle: OpaquePointer) {
        backend.raw.pointee.cancel?(backend.raw, handle)
        outOfBandCallEnded(handle)
    }

    /// A call into the plugin made outside the lock on a live handle (a
    /// cancel or an approval answer, counted in cancelsInFlight so the
    /// handle was not released meanwhile) has returned: releases the handle
    /// if the terminal event arrived in between.
    private func outOfBandCallEnded(_ handle: OpaquePointer) {
        let releaseNow = state.withLock { s -> Bool in
            s.cancelsInFlight -= 1
            if s.pluginDone && s.cancelsInFlight == 0 && !s.released {
                s.released = true
                return true
            }
            return false
        }
        if releaseNow { backend.raw.pointee.release?(backend.raw, handle) }
    }

    // MARK: Approvals (ABI 1.2)

    /// Decides an APPROVAL event with the request's policy (on a task of
    /// its own: a handler may take its time) and answers the plugin; the
    /// decision is also a notice in the stream.
    private func decide(_ q: ApprovalRequest) {
        guard let policy = approval else {
            return answerApproval(q.id, .deny(reason: "the request carries no approval policy"))
        }
        Task.detached { [self] in
            let d = await policy.decide(q)
            let verdict: String
            switch d {
            case .allow: verdict = "allowed"
            case .deny(let reason): verdict = "denied (\(reason))"
            }
            let message = backend.log.redactor.redact("approval: \(q.tool)(\(Wire.excerpt(q.subject, limit: 200))) \(verdict)")
            if let sink, !state.withLock({ $0.answered }) { sink.continuation.yield(.notice(level: "info", message: message)) }
            backend.log.log(.debug, "provider \(backend.name)", message)
            answerApproval(q.id, d)
        }
    }

    /// Sends one answer through the plugin's `answer_approval`, unless the
    /// call has ended; held until the operation function has returned the
    /// handle.
    private func answerApproval(_ id: String, _ d: ApprovalDecision) {
        var doc: JSONObject = ["id": .string(id), "allow": .bool(d.allowed)]
        if case .deny(let reason) = d { doc["reason"] = .string(reason) }
        let bytes = JSONValue.object(doc).jsonBytes
        let handle = state.withLock { s -> CallHandle? in
            guard !s.released, !s.pluginDone else { return nil }
            guard let h = s.handle else {
                s.heldAnswers.append(bytes)
                return nil
            }
            s.cancelsInFlight += 1
            return h
        }
        if let handle { deliverAnswer(bytes, handle.raw) }
    }

    /// Calls `answer_approval` (the caller counted it in cancelsInFlight,
    /// so the handle is not released meanwhile), then releases if the
    /// terminal event arrived in between.
    private func deliverAnswer(_ bytes: [UInt8], _ handle: OpaquePointer) {
        if let fn = backend.answerApproval {
            bytes.withUnsafeBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { fn(backend.raw, handle, $0.baseAddress, $0.count) }
            }
        }
        outOfBandCallEnded(handle)
    }

    // MARK: Deadlines

    /// How long (real time) a plugin function may still run after its
    /// deadline answered the caller before the backend is quarantined.
    static let stuckGrace: Duration = .seconds(1)

    /// Schedules a check at the earliest deadline still relevant. Idle and
    /// first-token deadlines move as events arrive, so the check re-arms
    /// itself until the call is answered or a deadline really passed.
    private func armWatchdog() {
        guard deadlines.total != nil || deadlines.firstToken != nil || deadlines.idle != nil else { return }
        let (answered, gotFirst, last) = state.withLock { ($0.answered, $0.gotFirstToken, $0.lastEvent) }
        if answered { return }
        var next: (when: ContinuousClock.Instant, which: String, limit: Duration)? = nil
        func consider(_ t: ContinuousClock.Instant, _ name: String, _ limit: Duration) {
            if next == nil || t < next!.when { next = (t, name, limit) }
        }
        if let t = deadlines.total { consider(totalFrom + t, "total", t) }
        if !gotFirst, let f = deadlines.firstToken { consider(startedAt + f, "first_token", f) }
        if gotFirst, let i = deadlines.idle { consider(last + i, "idle", i) }
        guard let next else { return }
        if clock.now >= next.when {
            let stuck = state.withLock { s -> Bool in
                if !s.startReturned && !s.answered { s.stuck = true }
                return s.stuck
            }
            if stuck {
                // The plugin's function itself has not returned. The caller
                // gets its answer now; if the function is still running a
                // second later (real time: a loaded machine may start it
                // late), nothing it was given can stop it: the backend is
                // quarantined.
                let why = "the plugin's \(op.name) did not return within the \(next.which.replacingAll("_", with: " ")) deadline of \(format(next.limit))"
                terminate(ProviderError(.timeout, why, provider: backend.name, deadline: next.which))
                DeadlineTimer.shared.schedule(at: .now + Self.stuckGrace, on: .continuous) { [self] in
                    if !state.withLock({ $0.startReturned }) { backend.quarantine(why) }
                }
                return
            }
            terminate(
                ProviderError(
                    .timeout, "the \(next.which.replacingAll("_", with: " ")) deadline of \(format(next.limit)) passed",
                    provider: backend.name, deadline: next.which))
            return
        }
        let token = DeadlineTimer.shared.schedule(at: next.when, on: clock) { [weak self] in self?.armWatchdog() }
        // One pending check per call: this one replaces any earlier one.
        let (keep, previous) = state.withLock { s -> (Bool, DeadlineTimer.Token?) in
            if s.answered { return (false, nil) }
            defer { s.watchdog = token }
            return (true, s.watchdog)
        }
        if let previous, previous != token { DeadlineTimer.shared.cancel(previous) }
        if !keep { DeadlineTimer.shared.cancel(token) }
    }
}

/// A plugin's call handle, passed between threads under the call's lock.
package struct CallHandle: @unchecked Sendable {
    package let raw: OpaquePointer
    package init(raw: OpaquePointer) { self.raw = raw }
}

/// A duration in an error message ("300 ms", "1.5 s"): `Duration.exactText`.
func format(_ d: Duration) -> String { d.exactText }

/// The calls a plugin may still send events to, by number: the context a
/// plugin gets is that number, so an event for a call that has ended (after
/// its terminal event, which the ABI forbids) is found to be late, logged and
/// dropped instead of touching freed memory (docs/abi.md, "Events").
final class CallRegistry: @unchecked Sendable {
    static let shared = CallRegistry()
    private static let shardCount = 16
    private let shards: [Lock<[UInt64: HostCall]>] = (0..<CallRegistry.shardCount).map { _ in Lock([:]) }
    private let counter = Lock<UInt64>(0)
    /// The providers of the calls that ended last, for the message about a
    /// late event (a bounded memory).
    private let ended = Lock<(names: [UInt64: (String, LogSink)], order: [UInt64])>(([:], []))

    func register(_ call: HostCall) -> UInt64 {
        let id = counter.withLock { n -> UInt64 in
            n += 1
            return n
        }
        shards[Int(id % UInt64(Self.shardCount))].withLock { $0[id] = call }
        return id
    }

    func call(_ id: UInt64) -> HostCall? {
        shards[Int(id % UInt64(Self.shardCount))].withLock { $0[id] }
    }

    func unregister(_ id: UInt64, provider: String, log: LogSink) {
        _ = shards[Int(id % UInt64(Self.shardCount))].withLock { $0.removeValue(forKey: id) }
        ended.withLock { e in
            e.names[id] = (provider, log)
            e.order.append(id)
            if e.order.count > 1024 {
                let old = e.order.prefix(512)
                for o in old { e.names.removeValue(forKey: o) }
                e.order.removeFirst(512)
            }
        }
    }

    /// An event for call `id`, which is not in flight: logged and dropped.
    func late(_ id: UInt64, type: UInt32) {
        // A call ended long ago (past the memory) has no one to tell.
        guard let (name, log) = ended.withLock({ $0.names[id] }) else { return }
        let what = type == UInt32(DESCARTES_EVENT_RESULT) || type == UInt32(DESCARTES_EVENT_ERROR) ? "a second terminal event" : "an event (type \(type))"
        log.log(.warning, "provider \(name)", "the plugin sent \(what) after the call's terminal event; dropped")
    }
}
