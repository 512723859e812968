internal import CDescartesPlugin
import Glibc
import DescartesSupport

/// A backend living in a plugin library, driven through the C ABI.
///
/// Each operation becomes a `HostCall`: the plugin reports events on its
/// own threads, the call turns them into Swift values, checks the ABI's rules
/// (one terminal event, nothing after it, tool-call order), enforces the
/// deadlines itself, and hands the result to the waiting task or stream.
///
/// Its life ends in `shutdown()`: the plugin's `shutdown` (once some
/// operation was started), then, when every call has let go of the plugin's
/// backend, its `destroy`, on the task that called `shutdown`
/// (`ProviderFactory.withBackend` does this on every path). `deinit` starts
/// nothing: a backend never used is destroyed there and then; one that was
/// used and dropped without `shutdown()` is reported (a warning on the
/// factory's sink) and left allocated in the plugin, with its connections
/// or child processes, until the process exits. (It cannot be shut down
/// there: the last reference may go inside a plugin's event callback, where
/// `destroy` is not allowed, and a shutdown waits for the plugin.)
final class PluginBackend: ModelBackend, @unchecked Sendable {
    let name: String
    let mode: ModelProviderMode
    let manifest: PluginManifest
    /// Keeps what `raw` lives in alive: the loaded library, or the proxy of
    /// an isolated plugin.
    let owner: AnyObject
    let raw: UnsafeMutablePointer<descartes_backend_t>
    let hostTable: HostTable
    /// Deadlines applied when a request sets none of its own.
    let defaultDeadlines: Deadlines
    /// The clock the deadlines are counted on.
    let clock: DescartesClock
    /// The factory's sink: the plugin's records, the host's warnings about
    /// it, and the redactor of its errors and notices.
    let log: LogSink
    /// The host's own deadline for operations no request bounds
    /// (`initialize` for health checks and model lists, `shutdown`,
    /// `destroy`): the factory's `operationDeadline`.
    let hostDeadline: Duration?
    /// The most one call may send.
    let callLimits: CallLimits

    private struct State {
        var initTask: Task<Void, Error>?
        var initialized = false
        var shutDown = false
        /// Some operation was started, so `shutdown` is owed before `destroy`.
        var used = false
        /// The plugin's `destroy` has run: `raw` is gone.
        var destroyed = false
        /// Why the backend is not used any more (a plugin function that did
        /// not return by its deadline), or nil.
        var quarantined: String?
        /// Calls started whose terminal event has not come yet.
        var inFlight = 0
    }
    /// Calls alive (each `HostCall` from its creation to its deinit), and
    /// who waits for them all to end (`shutdown`, before `destroy`).
    private let calls = Lock<(live: Int, waiters: [CallsEnded])>((0, []))
    private let state = Lock(State())
    private let priceCache = Lock<[String: ModelPrices?]>([:])

    init(
        name: String, manifest: PluginManifest, owner: AnyObject, raw: UnsafeMutablePointer<descartes_backend_t>,
        hostTable: HostTable, defaultDeadlines: Deadlines, clock: DescartesClock, log: LogSink,
        hostDeadline: Duration? = nil, callLimits: CallLimits = CallLimits()
    ) {
        self.hostDeadline = hostDeadline
        self.callLimits = callLimits
        self.name = name
        self.mode = manifest.mode
        self.manifest = manifest
        self.owner = owner
        self.raw = raw
        self.hostTable = hostTable
        self.defaultDeadlines = defaultDeadlines
        self.clock = clock
        self.log = log
    }

    deinit {
        // Nothing asynchronous here (see the type's comment). No call is in
        // flight: each retains the backend.
        let s = state.withLock { $0 }
        if s.destroyed { return }
        // A quarantined plugin is stuck in one of its functions: destroy
        // (which waits for the plugin's threads) would hang this thread.
        if s.quarantined != nil { return }
        if !s.used {
            // No operation ever started, so no plugin callback is on the
            // stack and `destroy` needs no `shutdown` first.
            raw.pointee.destroy?(raw)
            return
        }
        log.log(
            .warning, "provider \(name)",
            s.shutDown
                ? "released before its calls ended after shutdown(); the plugin's backend is left allocated until the process exits"
                : "released without shutdown(); the plugin's backend (its connections and child processes) is left allocated "
                    + "until the process exits: call shutdown() or use ProviderFactory.withBackend")
    }

    /// How long `shutdown` waits, after the plugin's own shutdown ended, for
    /// the host's last calls to let go before it destroys the backend.
    static let destroyWait: Duration = .seconds(5)

    /// Counts a call as alive (`HostCall.init`).
    func callStarted() { calls.withLock { $0.live += 1 } }

    /// The plugin's `answer_approval` (ABI 1.2), when its table has one.
    var answerApproval: (@convention(c) (UnsafeMutablePointer<descartes_backend_t>?, OpaquePointer?, UnsafePointer<CChar>?, Int) -> Void)? {
        let at = MemoryLayout<descartes_backend_t>.offset(of: \.answer_approval)!
        guard Int(raw.pointee.struct_size) >= at + MemoryLayout<UnsafeRawPointer?>.size else { return nil }
        return raw.pointee.answer_approval
    }

    /// Counts a call as gone (`HostCall.deinit`), waking `shutdown` after the last.
    func callEnded() {
        let waiters = calls.withLock { c -> [CallsEnded] in
            c.live -= 1
            guard c.live == 0 else { return [] }
            defer { c.waiters = [] }
            return c.waiters
        }
        for w in waiters { w.signal(true) }
    }

    /// Waits until no call is alive, or `limit` of real time passed (a
    /// plugin that never ends a call). Whether they all ended.
    private func callsEnded(within limit: Duration) async -> Bool {
        let w = CallsEnded()
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            w.attach(c)
            let none = calls.withLock { s -> Bool in
                if s.live == 0 { return true }
                s.waiters.append(w)
                return false
            }
            if none { w.signal(true); return }
            let token = DeadlineTimer.shared.schedule(at: .now + limit, on: .continuous) { w.signal(false) }
            w.onSignal = { DeadlineTimer.shared.cancel(token) }
        }
    }

    /// Destroys the plugin's backend once no call holds it (the end of
    /// `shutdown`); leaves it allocated, with a warning, if a call never ends
    /// within `wait`. `destroy` itself runs on a plugin thread under the
    /// same bound: a plugin whose destroy never returns is abandoned there.
    private func destroyWhenCallsEnd(within wait: Duration) async {
        guard await callsEnded(within: wait) else {
            log.log(
                .warning, "provider \(name)",
                "a call did not end within \(format(wait)) of shutdown; the plugin's backend is left allocated until the process exits")
            return
        }
        let destroy = state.withLock { s -> Bool in
            if s.destroyed { return false }
            s.destroyed = true
            return true
        }
        guard destroy, let fn = raw.pointee.destroy else { return }
        // Never inside a plugin's callback; never on the caller's thread.
        let target = CallHandle(raw: OpaquePointer(raw))
        let done = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            PluginThreads.shared.run {
                let ok = PluginThreads.shared.run(within: Double(wait.milliseconds) / 1000) {
                    fn(UnsafeMutablePointer<descartes_backend_t>(target.raw))
                    return true
                }
                c.resume(returning: ok != nil)
            }
        }
        if !done {
            log.log(.warning, "provider \(name)", "the plugin's destroy did not return within \(format(wait)); abandoned")
        }
    }

    // MARK: Operations

    /// The deadlines of an operation no request bounds: the defaults, the
    /// total one no later than the host's own deadline.
    var operationDeadlines: Deadlines {
        var d = defaultDeadlines
        if let h = hostDeadline { d.total = min(d.total ?? h, h) }
        return d
    }

    /// Puts the backend out of use: a plugin function did not return by its
    /// deadline, so nothing it holds can be trusted to end. Every later
    /// operation fails at once saying why, and neither `shutdown` nor
    /// `destroy` is called (they would block too); an isolated plugin's
    /// helper process is killed.
    func quarantine(_ why: String) {
        let first = state.withLock { s -> Bool in
            if s.quarantined != nil { return false }
            s.quarantined = why
            return true
        }
        guard first else { return }
        log.log(.warning, "provider \(name)", "quarantined: \(why)")
        (owner as? ProcessBackend)?.abandon()
    }

    /// Counts calls started whose terminal event is still owed.
    func noteInFlight(_ delta: Int) {
        state.withLock { $0.inFlight += delta }
    }

    func initialize() async throws(ProviderError) { try await initialize(nil) }

    /// Initializes the backend once, under `deadlines` (the total deadline
    /// of the request that needs it: its first-token and idle deadlines are
    /// about its own answer; or `operationDeadlines`). A waiter whose task is
    /// cancelled cancels the initialization (the next operation tries again).
    func initialize(_ deadlines: Deadlines?) async throws(ProviderError) {
        try checkOpen()
        let task: Task<Void, Error>? = state.withLock { s in
            if s.initialized { return nil }
            if let t = s.initTask { return t }
            s.used = true
            let d = deadlines ?? operationDeadlines
            let t = Task { [self] in
                _ = try await self.document(.initialize, input: Array("{}".utf8), deadlines: d)
            }
            s.initTask = t
            return t
        }
        guard let task else { return }
        do {
            try await withTaskCancellationHandler { try await task.value } onCancel: { task.cancel() }
            state.withLock {
                $0.initialized = true
                $0.initTask = nil
            }
        } catch {
            // The next operation tries again (the server may be back by then).
            state.withLock { $0.initTask = nil }
            throw ProviderError.from(error, provider: name)
        }
    }

    func checkOpen() throws(ProviderError) {
        if let why = state.withLock({ $0.quarantined }) {
            throw ProviderError(.backend, "'\(name)' is quarantined (\(why)); create a new instance", provider: name)
        }
        if state.withLock({ $0.shutDown }) {
            throw ProviderError(.backend, "the backend has been shut down", provider: name)
        }
    }

    /// What the host checks of a request before any plugin sees it: images
    /// only on user messages, and only for a plugin whose manifest says it
    /// takes them (`vision`), tools only for one that says `tools`, so none
    /// is dropped silently by a plugin that does not know the member.
    func checkRequest(_ r: ModelRequest) throws(ProviderError) {
        if !r.tools.isEmpty, !manifest.capabilities.contains("tools") {
            throw ProviderError(
                .unsupportedFeature,
                "'\(name)' does not take tools (the request has \(r.tools.count)): its manifest \(manifest.file) lists no 'tools' capability",
                provider: name)
        }
        if r.responseFormat != .text, !manifest.capabilities.contains("structured_output") {
            throw ProviderError(
                .unsupportedFeature,
                "'\(name)' does not take a response format (the request asks for \(r.responseFormat.kindName)): its manifest \(manifest.file) lists no 'structured_output' capability",
                provider: name)
        }
        do { try r.responseFormat.checkSchema() } catch {
            throw ProviderError(
                .api, "response_format.schema (\(r.responseFormat.kindName)): \(error.description); the answer could not be checked against it, so it was not sent",
                provider: name)
        }
        if r.approval != nil, answerApproval == nil, manifest.capabilities.contains("agent") {
            throw ProviderError(
                .unsupportedFeature,
                "'\(name)' cannot ask for tool approvals (its plugin has no answer_approval, ABI 1.2), so the request's approval policy (\(r.approval!)) could not be applied; drop the policy or use an agent backend that asks",
                provider: name)
        }
        guard let i = r.messages.firstIndex(where: { !$0.images.isEmpty }) else { return }
        if let j = r.messages.firstIndex(where: { !$0.images.isEmpty && $0.role != .user }) {
            throw ProviderError(.api, "messages[\(j)] (\(r.messages[j].role.rawValue)): only user messages carry images", provider: name)
        }
        if !manifest.capabilities.contains("vision") {
            throw ProviderError(
                .unsupportedFeature,
                "'\(name)' does not take images (messages[\(i)] has \(r.messages[i].images.count)): its manifest \(manifest.file) lists no 'vision' capability",
                provider: name)
        }
    }

    func healthCheck() async throws(ProviderError) -> HealthReport {
        try checkOpen()
        try await initialize()
        let start = ContinuousClock.now
        let doc: JSONValue
        do {
            doc = try await document(.healthCheck, input: Array("{}".utf8), deadlines: operationDeadlines)
        } catch let e as ProviderError where e.kind == .unsupportedFeature {
            // health_check is optional (docs/abi.md): a plugin without one
            // (NULL, or answering unsupported_feature) is not unhealthy; it
            // initialized, and nothing more was checked.
            return HealthReport(
                message: "not implemented by the plugin (\(e.message)); it initialized, nothing more was checked",
                details: [HealthReport.implementedKey: false], latency: ContinuousClock.now - start)
        } catch {
            throw ProviderError.from(error, provider: name)
        }
        var report = Wire.decodeHealth(doc)
        report.latency = ContinuousClock.now - start
        return report
    }

    func listModels() async throws(ProviderError) -> [ModelInfo] {
        try checkOpen()
        try await initialize()
        let doc: JSONValue
        do {
            doc = try await document(.listModels, input: Array("{}".utf8), deadlines: operationDeadlines)
        } catch let e as ProviderError where e.kind == .unsupportedFeature && !manifest.models.isEmpty {
            // A plugin with no way to ask its provider (a CLI run headless)
            // lists the models its manifest declares.
            return manifest.models.map { m in
                ModelInfo(id: m.id, contextLength: m.contextLength, ownedBy: manifest.provider, details: ["source": "manifest"])
            }
        } catch {
            throw ProviderError.from(error, provider: name)
        }
        do { return try Wire.decodeModels(doc) } catch {
            throw ProviderError(.invalidResponse, "list_models: \(error)", provider: name)
        }
    }

    func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate {
        try checkOpen()
        try await initialize(Deadlines(total: effectiveDeadlines(request).total))
        let doc: JSONValue
        do {
            doc = try await document(.estimateTokens, input: Wire.encode(request), deadlines: effectiveDeadlines(request))
        } catch let e as ProviderError where e.kind == .unsupportedFeature {
            // estimate_tokens is optional: the documented default is the
            // host's heuristic, and the method says why it was used.
            var estimate = Heuristics.tokens(request)
            estimate.method += " (the plugin does not count tokens: \(e.message))"
            return estimate
        } catch {
            throw ProviderError.from(error, provider: name)
        }
        do { return try Wire.decodeTokenEstimate(doc) } catch {
            throw ProviderError(.invalidResponse, "estimate_tokens: \(error)", provider: name)
        }
    }

    func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings {
        try checkOpen()
        var request = request
        request.deadlines = effectiveDeadlines(request.deadlines)
        try await initialize(Deadlines(total: request.deadlines.total))
        let input = request
        let doc = try await ProviderError.catching(provider: name) {
            try await document(.embed, input: Wire.encode(input), deadlines: input.deadlines)
        }
        var answer: Embeddings
        do { answer = try Wire.decodeEmbeddings(doc) } catch {
            throw ProviderError(.invalidResponse, "embed: \(error)", provider: name)
        }
        guard answer.vectors.count == request.inputs.count else {
            throw ProviderError(
                .invalidResponse, "embed: \(answer.vectors.count) vectors for \(request.inputs.count) inputs", provider: name)
        }
        answer.provider = name
        return answer
    }

    func shutdown() async {
        let (again, used) = state.withLock { s -> (Bool, Bool) in
            defer { s.shutDown = true }
            return (s.shutDown, s.used)
        }
        if again { return }
        // At most 30 s, or the host's deadline if shorter; 500 ms when
        // calls are still in flight: shutdown cancels them and waits for
        // their ends, which a plugin that honours cancellation sends at
        // once (one that ignores it, or a helper stuck in the plugin, would
        // otherwise hold the caller for the whole deadline).
        let base = min(hostDeadline ?? .seconds(30), .seconds(30))
        var limit = base
        // A backend that never started an operation has nothing to shut down.
        if used && state.withLock({ $0.quarantined == nil }) {
            // Let an initialization under way finish first (the ABI starts
            // nothing while initialize runs).
            // Not cancelled with the calling task (`withBackend` shuts down
            // a cancelled body's backend): the shutdown has its own deadline.
            let computed = await Task { [self] () -> Duration in
                if let t = state.withLock({ $0.initTask }) { _ = try? await t.value }
                var limit = base
                if state.withLock({ $0.inFlight > 0 }) { limit = min(limit, .milliseconds(500)) }
                guard state.withLock({ $0.quarantined == nil }) else { return limit }
                do {
                    _ = try await document(.shutdown, input: Array("{}".utf8), deadlines: Deadlines(total: limit), checkShutdown: false)
                } catch let e as ProviderError where e.kind == .timeout {
                    quarantine("its shutdown did not answer within \(format(limit))")
                } catch {}
                return limit
            }.value
            limit = computed
        }
        if state.withLock({ $0.quarantined != nil }) {
            // Stuck in a function: no destroy (it would block too, and calls
            // still hold the table). An isolated plugin's helper was killed.
            return
        }
        await destroyWhenCallsEnd(within: min(Self.destroyWait, limit))
    }

    func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        try checkOpen()
        try checkRequest(request)
        var request = request
        request.deadlines = effectiveDeadlines(request)
        let began = clock.now
        try await initialize(Deadlines(total: request.deadlines.total))
        let input = request
        let policy = answerApproval == nil ? nil : request.approval
        let outcome = try await ProviderError.catching(provider: name) {
            try await run(.complete, input: Wire.encode(input.approvalsFor(policy)), deadlines: input.deadlines, streaming: nil, totalFrom: began, approval: policy)
        }
        guard case .response(let r) = outcome else { preconditionFailure() }
        return try finished(r, request: request).get()
    }

    func stream(_ request: ModelRequest) -> ModelStream {
        let (stream, continuation) = ModelStream.makeStream(provider: name)
        var request = request
        request.deadlines = effectiveDeadlines(request)
        let req = request
        let began = clock.now
        let task = Task { [self] in
            do {
                try checkOpen()
                try checkRequest(req)
                try await initialize(Deadlines(total: req.deadlines.total))
                let sink = StreamSink(continuation: continuation, finished: { [self] r in finished(r, request: req) })
                let policy = answerApproval == nil ? nil : req.approval
                _ = try await run(
                    .stream, input: Wire.encode(req.approvalsFor(policy)), deadlines: req.deadlines, streaming: sink, totalFrom: began,
                    approval: policy)
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { termination in
            if case .cancelled = termination { task.cancel() }
        }
        return stream
    }

    // MARK: Plumbing

    func effectiveDeadlines(_ r: ModelRequest) -> Deadlines { effectiveDeadlines(r.deadlines) }

    func effectiveDeadlines(_ d: Deadlines) -> Deadlines {
        var d = d
        if d.connect == nil { d.connect = defaultDeadlines.connect }
        if d.firstToken == nil { d.firstToken = defaultDeadlines.firstToken }
        if d.idle == nil { d.idle = defaultDeadlines.idle }
        if d.total == nil { d.total = defaultDeadlines.total }
        return d
    }

    /// The answer the caller gets: decorated (`decorate`), and checked
    /// against the request's response format (`conform`).
    func finished(_ r: ModelResponse, request: ModelRequest) -> Result<ModelResponse, ProviderError> {
        Result { () throws(ProviderError) -> ModelResponse in try conform(decorate(r, request: request), to: request.responseFormat) }
    }

    /// Checks an answer against the response format its request asked for
    /// (`ResponseFormat.conforming`): every plugin's answer, complete or
    /// streamed, passes here, so every backend built by the factory (and so
    /// every middleware over one, and the gateway) delivers only JSON that
    /// conforms, or `invalid_response` naming the first failing path and the
    /// provider. A streamed answer's text deltas have reached the caller as
    /// they came; the check is made on the whole answer, before its finish
    /// event, which a failing answer never gets.
    ///
    /// An answer that calls tools instead is not checked (its JSON comes in
    /// a later turn). An answer inside one ```json fence is delivered
    /// without it (`content` then differs from the streamed deltas).
    ///
    /// `invalid_response` is not in `RetryPolicy.defaultRetryOn`. An agent's
    /// failing answer (a headless backend: the turn ran, with whatever tools
    /// it used) carries `sideEffects`, so that no retry policy or fallback
    /// runs the turn again even when `invalid_response` is added to its kinds.
    func conform(_ r: ModelResponse, to format: ResponseFormat) throws(ProviderError) -> ModelResponse {
        guard format != .text, r.toolCalls.isEmpty else { return r }
        do {
            var r = r
            r.content = try format.conforming(r.content)
            return r
        } catch {
            let cut = r.finishReason == .maxTokens ? " (the answer was cut at the token limit: finish reason \(r.finishReason.rawValue))" : ""
            var e = ProviderError(
                .invalidResponse, "'\(name)' answered \(format == .json ? "something that is not JSON" : "JSON that does not match schema '\(format.schemaName)'")\(cut): \(error.description)",
                provider: name)
            if mode == .headless { e.sideEffects = ["completed an agent turn (its answer did not match the response format)"] }
            throw e
        }
    }

    /// Adds cost from the manifest's prices when the plugin gave none.
    func decorate(_ r: ModelResponse, request: ModelRequest) -> ModelResponse {
        var r = r
        r.provider = name
        if r.costUSD == nil, let prices = prices(for: r.model.isEmpty ? (request.model ?? manifest.defaultModel ?? "") : r.model, fallback: request.model) {
            r.costUSD = prices.cost(of: r.usage)
        }
        return r
    }

    func prices(for model: String, fallback: String?) -> ModelPrices? {
        // Every answer asks for the same few models: the manifest is
        // searched once per (model, fallback) pair (string comparisons
        // over every model cost 9,500 instructions a request).
        let key = fallback.map { model + "\u{0}" + $0 } ?? model
        if let hit = priceCache.withLock({ $0[key] }) { return hit }
        let found = lookupPrices(for: model, fallback: fallback)
        priceCache.withLock { c in
            if c.count > 256 { c.removeAll() }
            c[key] = .some(found)
        }
        return found
    }

    private func lookupPrices(for model: String, fallback: String?) -> ModelPrices? {
        if let m = manifest.model(model)?.prices { return m }
        if let f = fallback, let m = manifest.model(f)?.prices { return m }
        // Providers answer with dated names ("gpt-4o-mini-2024-07-18"): the
        // longest manifest id that prefixes the answer's model.
        return manifest.models.filter { model.hasPrefix($0.id + "-") && $0.prices != nil }
            .max { $0.id.count < $1.id.count }?.prices
    }

    /// Runs an operation whose result is a JSON document.
    func document(_ op: BackendOperation, input: [UInt8], deadlines: Deadlines, checkShutdown: Bool = true) async throws -> JSONValue {
        let outcome = try await run(op, input: input, deadlines: deadlines, streaming: nil)
        guard case .document(let d) = outcome else { preconditionFailure() }
        return d
    }

    /// Runs an operation under `deadlines`, its total counted from
    /// `totalFrom` (the request's start, before a lazy initialize) or now.
    /// A total already spent ends the request here, the plugin not called.
    func run(
        _ op: BackendOperation, input: [UInt8], deadlines: Deadlines, streaming: StreamSink?, totalFrom: ContinuousClock.Instant? = nil,
        approval: ApprovalPolicy? = nil
    ) async throws -> HostCall.Outcome {
        guard let fn = op.function(in: raw) else {
            throw ProviderError(.unsupportedFeature, "the plugin does not implement \(op.name)", provider: name)
        }
        if let from = totalFrom, let total = deadlines.total, clock.now >= from + total {
            throw ProviderError(
                .timeout, "the total deadline of \(format(total)) passed while '\(name)' was being initialized; the \(op.name) call was not made",
                provider: name, deadline: "total")
        }
        let box = CancelBox()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<HostCall.Outcome, Error>) in
                let call = HostCall(
                    backend: self, op: op, deadlines: deadlines, continuation: c, sink: streaming, totalFrom: totalFrom, approval: approval)
                box.attach(call)
                call.start(fn, input: input)
            }
        } onCancel: {
            box.cancel()
        }
    }
}

extension ModelRequest {
    /// The request as the plugin is sent it: "approvals" only when the
    /// host will answer them (`policy`, kept only for a plugin that can ask).
    func approvalsFor(_ policy: ApprovalPolicy?) -> ModelRequest {
        var r = self
        r.approval = policy
        return r
    }
}

/// The stream a `stream` call feeds.
struct StreamSink: Sendable {
    let continuation: ModelStream.Continuation
    /// The answer the caller gets, or why it gets none (`PluginBackend.finished`).
    let finished: @Sendable (ModelResponse) -> Result<ModelResponse, ProviderError>
}

/// Forwards task cancellation to a call that may not exist yet.
final class CancelBox: Sendable {
    private let state = Lock<(call: HostCall?, cancelled: Bool)>((nil, false))
    func attach(_ call: HostCall) {
        let cancelled = state.withLock { s -> Bool in
            s.call = call
            return s.cancelled
        }
        if cancelled { call.terminate(ProviderError(.cancelled, "the request was cancelled", provider: call.backend.name)) }
    }
    func cancel() {
        let call = state.withLock { s -> HostCall? in
            s.cancelled = true
            return s.call
        }
        call?.terminate(ProviderError(.cancelled, "the request was cancelled", provider: call!.backend.name))
    }
}

/// Wakes `shutdown` once, when the backend's last call ended or its wait
/// ran out.
final class CallsEnded: @unchecked Sendable {
    private let state = Lock<(continuation: CheckedContinuation<Bool, Never>?, done: Bool)>((nil, false))
    /// Run once, at the signal (cancels the timer).
    var onSignal: (@Sendable () -> Void)? {
        get { hook.withLock { $0 } }
        set { hook.withLock { $0 = newValue } }
    }
    private let hook = Lock<(@Sendable () -> Void)?>(nil)

    func attach(_ c: CheckedContinuation<Bool, Never>) { state.withLock { $0.continuation = c } }

    func signal(_ ended: Bool) {
        let c = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            if s.done { return nil }
            s.done = true
            defer { s.continuation = nil }
            return s.continuation
        }
        guard let c else { return }
        hook.withLock { $0 }?()
        c.resume(returning: ended)
    }
}

/// The host's bounds on what one plugin call may send, whatever the plugin's
/// own limits (`max_response_mb` and the like): past either, the call ends
/// with `invalid_response` saying which, and the plugin is asked to stop.
/// Set on `ProviderFactory.callLimits`.
public struct CallLimits: Sendable, Hashable {
    /// Events of any type (a token is usually one event).
    public var maxEvents: Int
    /// Bytes of event data (text, reasoning, tool arguments, documents).
    public var maxBytes: Int
    /// 4,000,000 events and 64 MiB (what the HTTP plugins read at most).
    public init(maxEvents: Int = 4_000_000, maxBytes: Int = 64 << 20) {
        self.maxEvents = maxEvents
        self.maxBytes = maxBytes
    }
}

extension ResponseFormat {
    /// "JSON", "JSON matching schema 'person'", for messages.
    var kindName: String {
        switch self {
        case .text: return "text"
        case .json: return "JSON"
        case .jsonSchema(let name, _, _): return "JSON matching schema '\(name)'"
        }
    }

    /// The schema's name ("" for the other formats).
    var schemaName: String {
        if case .jsonSchema(let name, _, _) = self { return name }
        return ""
    }
}
