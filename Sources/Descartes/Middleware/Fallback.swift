import DescartesSupport
import Glibc

/// When a fallback chain moves on to its next provider.
public struct FallbackPolicy: Sendable, Hashable {
    /// The kinds of error that move the chain on. By default every kind but
    /// `api` (the request itself is at fault: another provider would refuse
    /// it too) and `cancelled`; so an unconfigured or unreachable provider,
    /// a missing key, a rate limit or a timeout all move on.
    public var on: Set<ProviderError.Kind>
    /// Whether a stream whose answer had begun reaching the caller may move
    /// on and start again with the next provider (the caller then receives
    /// a `.notice` beginning with `RetryPolicy.restartNotice`). By default a
    /// chain moves on only before the first token.
    public var restartStreams: Bool

    public static let defaultOn: Set<ProviderError.Kind> = Set(ProviderError.Kind.all).subtracting([.api, .cancelled])

    public init(on: Set<ProviderError.Kind> = FallbackPolicy.defaultOn, restartStreams: Bool = false) {
        self.on = on
        self.restartStreams = restartStreams
    }
}

/// An ordered chain of providers, possibly of different modes (a hosted API,
/// then a coding-agent CLI, then a local server): each request goes to the
/// first, and moves on to the next when its error is one the policy names
/// and nothing of the answer has reached the caller yet.
///
/// The response says who answered (`provider`) and what failed before
/// (`attempts`, oldest first, flattened across retries); when every provider
/// fails, the last error is thrown with every attempt in its `attempts`.
///
/// ```swift
/// let chain = FallbackBackend(name: "resilient", [
///     .init(try factory.create("anthropic")),
///     .init(try factory.create("claude-code-cli"), model: .providerDefault),
///     .init(try factory.create("ollama"), model: .named("llama3.2")),
/// ])
/// ```
public struct FallbackBackend: ModelBackend {
    /// One provider of the chain and the model to ask it for.
    public struct Entry: Sendable {
        public var backend: any ModelBackend
        public var model: ModelChoice

        public init(_ backend: any ModelBackend, model: ModelChoice = .request) {
            self.backend = backend
            self.model = model
        }
    }

    public let name: String
    public let entries: [Entry]
    public let policy: FallbackPolicy
    /// What the request's total deadline is counted on.
    public let clock: DescartesClock
    /// Where it says which provider it tries next (info).
    public let logSink: LogSink
    /// The mode of the first provider.
    public var mode: ModelProviderMode { entries.first?.backend.mode ?? .api }

    /// - Parameters:
    ///   - name: the chain's name (e.g. the `fallbacks:` key in providers.yaml).
    ///   - entries: the providers, in order; at least one.
    public init(
        name: String, _ entries: [Entry], policy: FallbackPolicy = FallbackPolicy(), clock: DescartesClock = .continuous,
        logSink: LogSink = LogSink()
    ) {
        precondition(!entries.isEmpty, "a fallback chain needs at least one provider")
        self.name = name
        self.entries = entries
        self.policy = policy
        self.clock = clock
        self.logSink = logSink
    }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        var log = AttemptLog()
        let end = request.deadlines.total.map { clock.now + $0 }
        for (i, entry) in entries.enumerated() {
            let started = clock.now
            guard let r = Self.request(request, for: entry, end: end, clock: clock) else { throw log.giveUp(timedOut(request)) }
            do {
                return log.answered(try await entry.backend.complete(r))
            } catch {
                let e = wholeRequestTimeout(
                    ProviderError.from(error, provider: entry.backend.name), end: end, limit: request.deadlines.total, clock: clock)
                if e.kind == .cancelled { throw log.giveUp(e) }
                log.record(e, provider: entry.backend.name, duration: clock.now - started)
                if Task.isCancelled { throw log.giveUp(ProviderError(.cancelled, "the request was cancelled", provider: entry.backend.name)) }
                guard i + 1 < entries.count, policy.on.contains(e.kind), e.sideEffects.isEmpty, end.map({ $0 > clock.now }) ?? true else { throw log.giveUp(e) }
                logSink.log(
                    .info, "fallback \(name)", "\(entry.backend.name) failed (\(e.kind)): trying \(entries[i + 1].backend.name)")
            }
        }
        preconditionFailure("unreachable: the loop returns or throws")
    }

    public func stream(_ request: ModelRequest) -> ModelStream {
        let entries = self.entries
        let policy = self.policy
        let name = self.name
        let clock = self.clock
        let me = self
        return Streams.make(provider: name) { out in
            var log = AttemptLog()
            let end = request.deadlines.total.map { clock.now + $0 }
            for (i, entry) in entries.enumerated() {
                let started = clock.now
                guard let r = Self.request(request, for: entry, end: end, clock: clock) else { throw log.giveUp(me.timedOut(request)) }
                do throws(Streams.AttemptFailure) {
                    try await Streams.forward(
                        entry.backend.stream(r), to: out, provider: entry.backend.name,
                        answered: log.answered)
                    return
                } catch {
                    let e = wholeRequestTimeout(error.error, end: end, limit: request.deadlines.total, clock: clock)
                    let reached = error.outputReached
                    if e.kind == .cancelled { throw log.giveUp(e) }
                    log.record(e, provider: entry.backend.name, duration: clock.now - started)
                    if Task.isCancelled { throw log.giveUp(ProviderError(.cancelled, "the request was cancelled", provider: entry.backend.name)) }
                    guard i + 1 < entries.count, policy.on.contains(e.kind), e.sideEffects.isEmpty, !reached || policy.restartStreams,
                        end.map({ $0 > clock.now }) ?? true
                    else {
                        throw log.giveUp(e)
                    }
                    let next = entries[i + 1].backend.name
                    if reached {
                        out.yield(.notice(level: "warning", message: "\(RetryPolicy.restartNotice) with \(next) after \(entry.backend.name) failed (\(e.kind)): \(e.message)"))
                    }
                    out.yield(.notice(level: "warning", message: "\(entry.backend.name) failed (\(e.kind)): falling back to \(next)"))
                }
            }
        }
    }

    /// The request for `entry`: its model, and what is left of the whole
    /// request's total deadline (nil when none is left).
    static func request(_ request: ModelRequest, for entry: Entry, end: ContinuousClock.Instant?, clock: DescartesClock) -> ModelRequest? {
        var r = entry.model.apply(to: request)
        if let end {
            let left = end - clock.now
            if left <= .zero { return nil }
            r.deadlines.total = left
        }
        return r
    }

    func timedOut(_ request: ModelRequest) -> ProviderError {
        ProviderError(
            .timeout, "the total deadline of \(format(request.deadlines.total ?? .zero)) passed", provider: name, deadline: "total")
    }

    // MARK: Other operations go to the first provider that answers them.

    public func initialize() async throws(ProviderError) {
        try await firstAnswer { (b) throws(ProviderError) in try await b.initialize() }
    }

    public func healthCheck() async throws(ProviderError) -> HealthReport {
        try await firstAnswer { (b) throws(ProviderError) in try await b.healthCheck() }
    }

    public func listModels() async throws(ProviderError) -> [ModelInfo] {
        try await firstAnswer { (b) throws(ProviderError) in try await b.listModels() }
    }

    public func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate {
        try await firstAnswer { (b) throws(ProviderError) in try await b.estimateTokens(request) }
    }

    /// The first provider that can embed answers; a failure is not passed
    /// on to the next one, whose vectors would live in another model's space
    /// (an index built from a mix of them ranks nonsense). Only a provider
    /// that cannot embed at all (`unsupported_feature`) is passed over.
    public func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings {
        var log = AttemptLog()
        for entry in entries {
            let started = clock.now
            do { return try await entry.backend.embed(request) } catch {
                log.record(error, provider: entry.backend.name, duration: clock.now - started)
                guard error.kind == .unsupportedFeature else { throw log.giveUp(error) }
            }
        }
        throw log.giveUp(ProviderError(.unsupportedFeature, "no provider in chain '\(name)' can embed text", provider: name))
    }

    public func shutdown() async {
        for e in entries { await e.backend.shutdown() }
    }

    private func firstAnswer<T: Sendable>(_ op: (any ModelBackend) async throws(ProviderError) -> T) async throws(ProviderError) -> T {
        var log = AttemptLog()
        for (i, entry) in entries.enumerated() {
            let started = clock.now
            do { return try await op(entry.backend) } catch {
                let e = ProviderError.from(error, provider: entry.backend.name)
                if e.kind == .cancelled { throw e }
                log.record(e, provider: entry.backend.name, duration: clock.now - started)
                if i == entries.count - 1 { throw log.giveUp(e) }
            }
        }
        throw ProviderError(.backend, "no provider in chain '\(name)'", provider: name)
    }
}

/// A backend created on first use: a chain can name a provider that cannot
/// be created now (a missing API key, a plugin that is not installed) and
/// still work through its other providers; the creation error is that
/// provider's failed attempt, every time it is tried.
///
/// It is created once, by the first caller, with no lock held while the
/// plugin's `create` runs: a caller that comes meanwhile waits for that
/// creation. An async caller (every operation) has it created on a plugin
/// thread, never on Swift's cooperative pool, whose few threads a `create`
/// that never returns would take from every task; and stops waiting when
/// its task is cancelled (its deadline passed), leaving the creation to end
/// under the factory's own deadline.
package final class LazyBackend: ModelBackend, Sendable {
    package let name: String
    package let mode: ModelProviderMode
    private let make: @Sendable () throws -> any ModelBackend
    typealias Made = Result<any ModelBackend, ProviderError>
    private enum State {
        case idle
        /// Being created; these wait for it.
        case creating([@Sendable (Made) -> Void])
        case done(Made)
    }
    private let state = Lock<State>(.idle)

    /// - Parameters:
    ///   - name: the provider's name, for errors and attempts.
    ///   - mode: its mode (from its manifest), before it exists.
    ///   - make: creates it; a thrown error is remembered and rethrown by
    ///     every operation.
    package init(name: String, mode: ModelProviderMode, _ make: @escaping @Sendable () throws -> any ModelBackend) {
        self.name = name
        self.mode = mode
        self.make = make
    }

    /// Runs `make` and hands its result to every waiter.
    private func create() -> Made {
        let r: Made
        do { r = .success(try make()) } catch { r = .failure(ProviderError.from(error, provider: name)) }
        let waiters = state.withLock { s -> [@Sendable (Made) -> Void] in
            defer { s = .done(r) }
            if case .creating(let w) = s { return w }
            return []
        }
        for w in waiters { w(r) }
        return r
    }

    /// Where a caller stands: `.some(r)` made already, `.some(nil)` this
    /// caller creates it (the state is now `creating`), nil another caller
    /// is creating it and `gate` gets its result.
    private func claim(_ gate: OneShot<Made>) -> Made?? {
        state.withLock { s -> Made?? in
            switch s {
            case .done(let r): return .some(r)
            case .idle:
                s = .creating([])
                return .some(nil)
            case .creating(var w):
                w.append { gate.set($0) }
                s = .creating(w)
                return nil
            }
        }
    }

    /// The backend, created now (on this thread) if it was not yet; waits
    /// for a creation another caller began.
    package func backend() throws(ProviderError) -> any ModelBackend {
        let gate = OneShot<Made>()
        switch claim(gate) {
        case .some(.some(let r)): return try r.get()
        case .some(.none): return try create().get()
        case nil: return try gate.wait().get()
        }
    }

    /// The backend, created on a plugin thread if it was not yet.
    /// - Throws: its creation error; `cancelled` when the calling task is
    ///   cancelled before it exists.
    package func made() async throws(ProviderError) -> any ModelBackend {
        if case .done(let r) = state.withLock({ $0 }) { return try r.get() }
        let r = await PluginThreads.shared.value { [self] () -> Made in
            let gate = OneShot<Made>()
            switch claim(gate) {
            case .some(.some(let r)): return r
            case .some(.none): return create()
            case nil: return gate.wait()
            }
        }
        guard let r else {
            throw ProviderError(.cancelled, "stopped waiting for provider '\(name)' to be created (the request was cancelled or its deadline passed)", provider: name)
        }
        return try r.get()
    }

    /// The backend if it was created, without creating it.
    var created: (any ModelBackend)? {
        state.withLock { s in if case .done(.success(let b)) = s { return b }; return nil }
    }

    package func initialize() async throws(ProviderError) { try await made().initialize() }
    package func healthCheck() async throws(ProviderError) -> HealthReport { try await made().healthCheck() }
    package func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse { try await made().complete(request) }
    package func stream(_ request: ModelRequest) -> ModelStream {
        if let b = created { return b.stream(request) }
        return Streams.make(provider: name) { [self] out in
            for try await event in try await made().stream(request) { out.yield(event) }
        }
    }
    package func listModels() async throws(ProviderError) -> [ModelInfo] { try await made().listModels() }
    package func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate {
        try await made().estimateTokens(request)
    }
    package func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings { try await made().embed(request) }
    package func shutdown() async { await created?.shutdown() }
}

/// A value handed from one thread to another that blocks for it.
private final class OneShot<T: Sendable>: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var value: T?
    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }
    func set(_ v: T) {
        pthread_mutex_lock(&mutex)
        value = v
        pthread_cond_broadcast(&cond)
        pthread_mutex_unlock(&mutex)
    }
    func wait() -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while value == nil { pthread_cond_wait(&cond, &mutex) }
        return value!
    }
}

