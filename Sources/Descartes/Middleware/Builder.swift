
/// Builds backends by name from `ReliabilitySettings`: a route becomes a
/// `RouterBackend`, a fallback chain a `FallbackBackend`, and a provider the
/// stack of middlewares its settings give it:
///
///     CacheBackend            (cache.enabled and the provider is cached)
///      BudgetBackend          (budgets.labels; the spend of the process, or with
///                              `shared:` of every process)
///       RetryBackend          (retry, or retry.providers.NAME; not with 1 attempt)
///        CircuitBreakerBackend (circuit_breakers.NAME; one per process, and with
///                              `shared:` one for every process)
///         RateLimitedBackend  (limits.NAME, and limits.NAME.models per model;
///                              shared by the whole process, and with `shared:`
///                              by every process: then every provider has one,
///                              for the shared cool-down)
///           the plugin backend
///
/// A provider is created once per `ReliableProviders` (chains and routes
/// that name it share it) and on first use, so a chain works through its
/// other providers when one cannot be created.
///
/// ```swift
/// let settings = try ReliabilitySettings.parse(yaml: text, file: "providers.yaml")
/// let providers = ReliableProviders(settings: settings, factory: ProviderFactory())
/// let backend = try providers.backend("resilient")
/// ```
public struct ReliableProviders: Sendable {
    public let settings: ReliabilitySettings
    /// Creates a provider's plain backend by name.
    public let create: @Sendable (String) throws -> any ModelBackend
    /// A provider's manifest (capabilities, context, prices, mode).
    public let manifest: @Sendable (String) -> PluginManifest?
    /// The response cache every cached provider shares, when enabled.
    public let cache: ResponseCache?
    /// The shared store (`shared:`), when configured.
    public let sharedStore: SharedStore?
    /// What the budgets (`budgets:`) count spend with.
    public let spend: SpendCounter
    /// The clock of every middleware built here (waits, deadlines, time to
    /// live, rate limits).
    public let clock: DescartesClock
    /// Where every middleware built here logs (the factory's sink).
    public let logSink: LogSink

    /// What the command line changes.
    public struct Overrides: Sendable {
        /// Retries after the first attempt, for every provider (`--retries`).
        public var retries: Int?
        /// Skip the response cache.
        public var noCache = false
        /// Told every routing decision (`--explain`).
        public var routeObserver: (@Sendable (RouteDecision) -> Void)?
        public init(retries: Int? = nil, noCache: Bool = false, routeObserver: (@Sendable (RouteDecision) -> Void)? = nil) {
            self.retries = retries
            self.noCache = noCache
            self.routeObserver = routeObserver
        }
    }
    public var overrides: Overrides

    private final class Leaves: Sendable {
        let made = Lock<[String: LazyBackend]>([:])
    }
    private let leaves = Leaves()

    public init(
        settings: ReliabilitySettings, overrides: Overrides = Overrides(),
        create: @escaping @Sendable (String) throws -> any ModelBackend,
        manifest: @escaping @Sendable (String) -> PluginManifest?,
        clock: DescartesClock = .continuous, logSink: LogSink = LogSink()
    ) {
        self.settings = settings
        self.overrides = overrides
        self.create = create
        self.manifest = manifest
        self.clock = clock
        self.logSink = logSink
        let store = settings.shared.map { SharedStore.shared($0, logSink: logSink) }
        sharedStore = store
        spend = store.map { SpendCounter(shared: SharedSpend(store: $0)) } ?? .process
        if let c = settings.cache, c.enabled {
            cache = ResponseCache(limits: c.limits, clock: clock, logSink: logSink, shared: store.map { SharedCache(store: $0, ttl: c.limits.ttl) })
        } else { cache = nil }
    }

    /// Providers from `factory`: instances of its providers.yaml by name
    /// (`ProviderFactory.backend`), else plugins by provider id, each with
    /// `config(name)` over its settings; on the factory's clock, logging to
    /// the factory's sink.
    public init(
        settings: ReliabilitySettings, factory: ProviderFactory, overrides: Overrides = Overrides(),
        config: @escaping @Sendable (String) -> [String: JSONValue] = { _ in [:] }
    ) {
        self.init(
            settings: settings, overrides: overrides, create: { name in try factory.backend(name, overrides: config(name)) },
            manifest: { name in try? factory.manifest(for: factory.configuration?.instance(name)?.plugin ?? name) },
            clock: factory.clock, logSink: factory.logSink)
    }

    /// Providers and settings from providers.yaml (`ProviderFactory.standard()`
    /// or any factory with a configuration): the middleware sections are
    /// read and checked against the instances and installed plugins.
    /// - Throws: `SourceError` with every problem, each at its file:line:column.
    public init(factory: ProviderFactory, overrides: Overrides = Overrides()) throws(SourceError) {
        var settings = ReliabilitySettings()
        if let config = factory.configuration {
            let (s, problems) = config.reliabilitySettings(catalog: factory.catalog)
            if !problems.isEmpty { throw SourceError(problems) }
            settings = s
        }
        self.init(settings: settings, factory: factory, overrides: overrides)
    }

    /// The backend for `name`: a route, a fallback chain, or a provider.
    /// - Throws: the provider's creation error, for a provider named
    ///   directly (a chain reports it as a failed attempt instead).
    public func backend(_ name: String) throws(ProviderError) -> any ModelBackend {
        if settings.routes[name] == nil && settings.fallbacks[name] == nil {
            let lazy = leaf(name)
            _ = try lazy.backend()
        }
        return resolve(name, depth: 0)
    }

    /// The backend for `name` as `backend(_:)` builds it, creating no
    /// provider now: each is created by its first call (on a plugin thread,
    /// `LazyBackend`), and a creation error is that call's error.
    package func uncreated(_ name: String) -> any ModelBackend { resolve(name, depth: 0) }

    /// `primary`, then the `others` in order, as one chain (`--fallback`):
    /// the request's model goes to `primary`, the others use their defaults.
    public func chain(_ primary: String, then others: [String]) throws(ProviderError) -> any ModelBackend {
        guard !others.isEmpty else { return try backend(primary) }
        let entries = [FallbackBackend.Entry(resolve(primary, depth: 0), model: .request)]
            + others.map { FallbackBackend.Entry(resolve($0, depth: 0), model: .providerDefault) }
        return FallbackBackend(name: ([primary] + others).joined(separator: ","), entries, clock: clock, logSink: logSink)
    }

    /// The retry policy of provider `name`.
    public func retryPolicy(for name: String) -> RetryPolicy {
        var p = settings.retryByProvider[name] ?? settings.retry
        if let r = overrides.retries { p.maxAttempts = max(0, r) + 1 }
        return p
    }

    func resolve(_ name: String, depth: Int) -> any ModelBackend {
        // The parser rejects cycles; the depth bound keeps a hand-built
        // settings value from recursing for ever.
        if depth > 32 {
            return LazyBackend(name: name, mode: .api) {
                throw ProviderError(.config, "'\(name)' nests chains and routes more than 32 deep", provider: name)
            }
        }
        if let route = settings.routes[name] {
            let candidates = route.candidates.map { m -> RouteCandidate in
                let b = resolve(m.name, depth: depth + 1)
                guard let manifest = manifest(leafProvider(m.name)) else {
                    return RouteCandidate(b, model: m.model.map { .named($0) } ?? .providerDefault)
                }
                return RouteCandidate(b, manifest: manifest, model: m.model)
            }
            return RouterBackend(name: name, candidates: candidates, policy: route.policy, observer: overrides.routeObserver, logSink: logSink)
        }
        if let chain = settings.fallbacks[name] {
            let entries = chain.chain.enumerated().map { (i, m) in
                FallbackBackend.Entry(
                    resolve(m.name, depth: depth + 1), model: m.model.map { .named($0) } ?? (i == 0 ? .request : .providerDefault))
            }
            return FallbackBackend(name: name, entries, policy: chain.policy, clock: clock, logSink: logSink)
        }
        var b: any ModelBackend = leaf(name)
        // A model's own limits (limits.NAME.models) have process-wide
        // limiters named NAME/MODEL (no instance name has a '/').
        let models = settings.modelLimits[name] ?? [:]
        let modelLimiters = Dictionary(uniqueKeysWithValues: models.map { m, l in (m, RateLimiter.shared(for: "\(name)/\(m)", limits: l, clock: clock)) })
        var sharedLimits: SharedLimits?
        if let store = sharedStore {
            let limits = settings.limits[name] ?? RateLimits()
            let shared = SharedLimits(store: store, provider: name, limits: limits, models: models)
            sharedLimits = shared
            b = RateLimitedBackend(b, limiter: .shared(for: name, limits: limits, clock: clock), shared: shared, modelLimiters: modelLimiters)
        } else if let limits = settings.limits[name] {
            b = RateLimitedBackend(b, limiter: .shared(for: name, limits: limits, clock: clock), shared: nil, modelLimiters: modelLimiters)
        }
        if let cb = settings.circuitBreakers[name] {
            b = CircuitBreakerBackend(
                b, breaker: .shared(for: name, settings: cb, clock: clock),
                shared: sharedStore.map { SharedBreaker(store: $0, provider: name, settings: cb) })
        }
        let retry = retryPolicy(for: name)
        if retry.maxAttempts > 1 { b = RetryBackend(b, policy: retry, clock: clock, logSink: logSink) }
        if !settings.budgets.labels.isEmpty { b = BudgetBackend(b, settings: settings.budgets, counter: spend, clock: clock) }
        if let cache, !overrides.noCache, settings.cache?.providers.map({ $0.contains(name) }) ?? true {
            // The shared lookup takes the limiter's admission in the same
            // script, but for a Redis Cluster (the entry's key and the
            // provider's are in different slots).
            b = CacheBackend(
                b, cache: cache, embeddings: settings.cache?.embeddings ?? true,
                admitting: sharedStore?.settings.cluster == false ? sharedLimits : nil)
        }
        return b
    }

    /// The first provider a name leads to (for a route's facts about a
    /// candidate that is itself a chain).
    func leafProvider(_ name: String) -> String {
        var n = name
        for _ in 0..<32 {
            if let r = settings.routes[n], let f = r.candidates.first { n = f.name } else if let c = settings.fallbacks[n], let f = c.chain.first { n = f.name } else { break }
        }
        return n
    }

    private func leaf(_ name: String) -> LazyBackend {
        leaves.made.withLock { made in
            if let b = made[name] { return b }
            let create = self.create
            let b = LazyBackend(name: name, mode: manifest(name)?.mode ?? .api) {
                do { return try create(name) } catch { throw ProviderError.from(error, provider: name) }
            }
            made[name] = b
            return b
        }
    }

    /// Shuts down every provider created so far, and sends what the shared
    /// store still has to send (the writes after the last answers).
    public func shutdown() async {
        await sharedStore?.flush()
        let all = leaves.made.withLock { Array($0.values) }
        // All at once: a plugin whose shutdown does not answer is waited
        // for up to its bound, and those bounds must not add up.
        await withTaskGroup(of: Void.self) { g in
            for b in all { g.addTask { await b.shutdown() } }
        }
    }
}
