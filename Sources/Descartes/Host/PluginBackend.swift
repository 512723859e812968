internal import CDescartesPlugin
import Glibc

/// A backend living in a plugin library, driven through the C ABI.
///
/// Each operation becomes a `HostCall`: the plugin reports events on its
/// own threads, the call turns them into Swift values, checks the ABI's rules
/// (one terminal event, nothing after it, tool-call order), enforces the
/// deadlines itself, and hands the result to the waiting task or stream.
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

    private struct State {
        var initTask: Task<Void, Error>?
        var initialized = false
        var shutDown = false
        /// Some operation was started, so `shutdown` is owed before `destroy`.
        var used = false
    }
    private let state = Lock(State())
    private let priceCache = Lock<[String: ModelPrices?]>([:])

    init(
        name: String, manifest: PluginManifest, owner: AnyObject, raw: UnsafeMutablePointer<descartes_backend_t>,
        hostTable: HostTable, defaultDeadlines: Deadlines, clock: DescartesClock
    ) {
        self.name = name
        self.mode = manifest.mode
        self.manifest = manifest
        self.owner = owner
        self.raw = raw
        self.hostTable = hostTable
        self.defaultDeadlines = defaultDeadlines
        self.clock = clock
    }

    deinit {
        // No call is in flight (each retains the backend), but this may run
        // on a plugin thread inside a callback, where `destroy` is not
        // allowed: shut down (if the owner did not) and destroy elsewhere.
        let finisher = DetachedFinisher(raw: raw, table: hostTable, owner: owner)
        if state.withLock({ $0.shutDown || !$0.used }) { finisher.destroyLater() } else { finisher.start() }
    }

    // MARK: Operations

    func initialize() async throws {
        let task: Task<Void, Error>? = state.withLock { s in
            if s.initialized { return nil }
            if let t = s.initTask { return t }
            s.used = true
            let t = Task { [self] in
                _ = try await self.document(.initialize, input: Array("{}".utf8), deadlines: defaultDeadlines)
            }
            s.initTask = t
            return t
        }
        guard let task else { return }
        do {
            try await task.value
            state.withLock {
                $0.initialized = true
                $0.initTask = nil
            }
        } catch {
            // The next operation tries again (the server may be back by then).
            state.withLock { $0.initTask = nil }
            throw error
        }
    }

    func checkOpen() throws(ProviderError) {
        if state.withLock({ $0.shutDown }) {
            throw ProviderError(.backend, "the backend has been shut down", provider: name)
        }
    }

    /// What the host checks of a request before any plugin sees it: images
    /// only on user messages, and only for a plugin whose manifest says it
    /// takes them (`vision`), so none is dropped silently by a plugin that
    /// does not know the member.
    func checkRequest(_ r: ModelRequest) throws(ProviderError) {
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

    func healthCheck() async throws -> HealthReport {
        try checkOpen()
        try await initialize()
        let start = ContinuousClock.now
        let doc = try await document(.healthCheck, input: Array("{}".utf8), deadlines: defaultDeadlines)
        var report = Wire.decodeHealth(doc)
        report.latency = ContinuousClock.now - start
        return report
    }

    func listModels() async throws -> [ModelInfo] {
        try checkOpen()
        try await initialize()
        let doc: JSONValue
        do {
            doc = try await document(.listModels, input: Array("{}".utf8), deadlines: defaultDeadlines)
        } catch let e as ProviderError where e.kind == .unsupportedFeature && !manifest.models.isEmpty {
            // A plugin with no way to ask its provider (a CLI run headless)
            // lists the models its manifest declares.
            return manifest.models.map { m in
                ModelInfo(id: m.id, contextLength: m.contextLength, ownedBy: manifest.provider, details: ["source": "manifest"])
            }
        }
        do { return try Wire.decodeModels(doc) } catch {
            throw ProviderError(.invalidResponse, "list_models: \(error)", provider: name)
        }
    }

    func estimateTokens(_ request: ModelRequest) async throws -> TokenEstimate {
        try checkOpen()
        try await initialize()
        let doc = try await document(.estimateTokens, input: Wire.encode(request), deadlines: effectiveDeadlines(request))
        do { return try Wire.decodeTokenEstimate(doc) } catch {
            throw ProviderError(.invalidResponse, "estimate_tokens: \(error)", provider: name)
        }
    }

    func shutdown() async {
        // A backend that never started an operation has nothing to shut down.
        let skip = state.withLock { s -> Bool in
            defer { s.shutDown = true }
            return s.shutDown || !s.used
        }
        if skip { return }
        // Let an initialization under way finish first (the ABI starts
        // nothing while initialize runs).
        if let t = state.withLock({ $0.initTask }) { _ = try? await t.value }
        _ = try? await document(.shutdown, input: Array("{}".utf8), deadlines: Deadlines(total: .seconds(30)), checkShutdown: false)
    }

    func complete(_ request: ModelRequest) async throws -> ModelResponse {
        try checkOpen()
        try checkRequest(request)
        try await initialize()
        var request = request
        request.deadlines = effectiveDeadlines(request)
        let outcome = try await run(.complete, input: Wire.encode(request), deadlines: request.deadlines, streaming: nil)
        guard case .response(let r) = outcome else { preconditionFailure() }
        return decorate(r, request: request)
    }

    func stream(_ request: ModelRequest) -> AsyncThrowingStream<StreamEvent, Error> {
        let (stream, continuation) = AsyncThrowingStream<StreamEvent, Error>.makeStream(bufferingPolicy: .unbounded)
        var request = request
        request.deadlines = effectiveDeadlines(request)
        let req = request
        let task = Task { [self] in
            do {
                try checkOpen()
                try checkRequest(req)
                try await initialize()
                let sink = StreamSink(continuation: continuation, decorate: { [self] r in decorate(r, request: req) })
                _ = try await run(.stream, input: Wire.encode(req), deadlines: req.deadlines, streaming: sink)
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

    func effectiveDeadlines(_ r: ModelRequest) -> Deadlines {
        var d = r.deadlines
        if d.connect == nil { d.connect = defaultDeadlines.connect }
        if d.firstToken == nil { d.firstToken = defaultDeadlines.firstToken }
        if d.idle == nil { d.idle = defaultDeadlines.idle }
        if d.total == nil { d.total = defaultDeadlines.total }
        return d
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

    func run(_ op: BackendOperation, input: [UInt8], deadlines: Deadlines, streaming: StreamSink?) async throws -> HostCall.Outcome {
        guard let fn = op.function(in: raw) else {
            throw ProviderError(.unsupportedFeature, "the plugin does not implement \(op.name)", provider: name)
        }
        let box = CancelBox()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<HostCall.Outcome, Error>) in
                let call = HostCall(backend: self, op: op, deadlines: deadlines, continuation: c, sink: streaming)
                box.attach(call)
                call.start(fn, input: input)
            }
        } onCancel: {
            box.cancel()
        }
    }
}

/// The stream a `stream` call feeds.
struct StreamSink: Sendable {
    let continuation: AsyncThrowingStream<StreamEvent, Error>.Continuation
    let decorate: @Sendable (ModelResponse) -> ModelResponse
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

/// Shuts down and destroys a backend nobody holds any more, on a thread of
/// its own (destroy must not run inside a plugin callback).
final class DetachedFinisher: @unchecked Sendable {
    let raw: UnsafeMutablePointer<descartes_backend_t>
    let table: HostTable
    let owner: AnyObject
    init(raw: UnsafeMutablePointer<descartes_backend_t>, table: HostTable, owner: AnyObject) {
        self.raw = raw
        self.table = table
        self.owner = owner
    }

    func start() {
        guard let shutdown = raw.pointee.shutdown else {
            destroyLater()
            return
        }
        let ctx = Unmanaged.passRetained(self).toOpaque()
        let handle = shutdown(raw, "{}", 2, { ctx, event in
            guard let ctx, let event else { return }
            let t = event.pointee.type
            guard t == UInt32(DESCARTES_EVENT_RESULT) || t == UInt32(DESCARTES_EVENT_ERROR) else { return }
            let me = Unmanaged<DetachedFinisher>.fromOpaque(ctx).takeRetainedValue()
            me.pending.withLock { $0.terminal = true }
            me.releaseIfReady()
        }, ctx)
        pending.withLock { $0.handle = handle.map { CallHandle(raw: $0) } }
        if handle == nil { Unmanaged<DetachedFinisher>.fromOpaque(ctx).release(); destroyLater() } else { releaseIfReady() }
    }

    private let pending = Lock<(handle: CallHandle?, terminal: Bool, done: Bool)>((nil, false, false))

    private func releaseIfReady() {
        let h = pending.withLock { p -> CallHandle? in
            guard p.terminal, let h = p.handle, !p.done else { return nil }
            p.done = true
            return h
        }
        guard let h else { return }
        raw.pointee.release?(raw, h.raw)
        destroyLater()
    }

    func destroyLater() {
        // A thread of our own: never inside the plugin's callback.
        let box = Unmanaged.passRetained(self).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let me = Unmanaged<DetachedFinisher>.fromOpaque(arg!).takeRetainedValue()
            me.raw.pointee.destroy?(me.raw)
            return nil
        }, box)
        if rc == 0 { pthread_detach(tid) } else { Unmanaged<DetachedFinisher>.fromOpaque(box).release() }
    }
}
