
/// When a provider's circuit breaker opens, and for how long
/// (providers.yaml's `circuit_breakers.NAME`).
public struct CircuitBreakerSettings: Sendable, Hashable, CustomStringConvertible {
    /// Consecutive failed attempts of the kinds that mean the provider is
    /// unwell (`CircuitBreaker.counts`) that open the breaker.
    public var failures: Int
    /// How long it stays open before one probe request is let through.
    public var open: Duration

    public init(failures: Int = 5, open: Duration = .seconds(30)) {
        self.failures = failures
        self.open = open
    }

    public var description: String { "\(failures) failures, open \(open.short)" }
}

/// One provider's circuit breaker, shared by every task of the process that
/// uses the provider (`CircuitBreaker.shared(for:settings:clock:)`).
///
/// Closed, it counts consecutive failed attempts of the kinds that mean the
/// provider is unwell (`counts`: provider unavailable or any 5xx, timeouts,
/// connection and stream failures; not the client's own `api`,
/// `authentication` or `rate_limited` errors). After `failures` of them it
/// opens: requests fail at once with `provider_unavailable` (saying since
/// when and until when) until `open` has passed; then one request, the
/// probe, is let through (half-open) while the others still fail at once.
/// The probe's success closes the breaker, its failure opens it again for
/// another `open`. Any success closes it and resets the count.
///
/// Time is `clock`'s (a `ManualClock` in tests). With providers.yaml's
/// `shared:` section the state is the store's (`SharedBreaker`), and this
/// one decides only while the store does not answer.
public final class CircuitBreaker: Sendable {
    public let provider: String
    public let settings: CircuitBreakerSettings
    public let clock: DescartesClock

    /// The breaker's state.
    public enum Phase: String, Sendable, Hashable {
        case closed, open
        case halfOpen = "half_open"
    }

    struct State {
        var failures = 0
        /// When it opened, and until when, when open or half-open.
        var opened: ContinuousClock.Instant?
        var until: ContinuousClock.Instant?
        /// When the probe let through will be given up on (another may go).
        var probeUntil: ContinuousClock.Instant?
        var lastError: String?
        var stats = Stats()
    }

    /// What the breaker has done so far.
    public struct Stats: Sendable, Hashable {
        /// Times it opened (re-opening after a failed probe included).
        public var opened = 0
        /// Requests failed at once because it was open.
        public var rejected = 0
        /// Probes let through while half-open.
        public var probes = 0

        public init(opened: Int = 0, rejected: Int = 0, probes: Int = 0) {
            self.opened = opened
            self.rejected = rejected
            self.probes = probes
        }
    }

    private let state = Lock(State())

    public init(provider: String, settings: CircuitBreakerSettings, clock: DescartesClock = .continuous) {
        self.provider = provider
        self.settings = settings
        self.clock = clock
    }

    private static let registry = Lock<[String: CircuitBreaker]>([:])

    /// The process-wide breaker of provider `name`; other settings (a
    /// reloaded configuration) or another clock replace it.
    public static func shared(for name: String, settings: CircuitBreakerSettings, clock: DescartesClock = .continuous) -> CircuitBreaker {
        registry.withLock { r in
            if let b = r[name], b.settings == settings, b.clock == clock { return b }
            let b = CircuitBreaker(provider: name, settings: settings, clock: clock)
            r[name] = b
            return b
        }
    }

    /// Every breaker of the process that is not closed, by provider.
    public static func notClosed() -> [String: Phase] {
        let all = registry.withLock { Array($0.values) }
        var out: [String: Phase] = [:]
        for b in all where b.phase != .closed { out[b.provider] = b.phase }
        return out
    }

    /// Whether a failed attempt counts toward opening the breaker: the
    /// provider is unwell (provider unavailable, any 5xx, a timeout, a
    /// connection or stream failure), not the request, the key, the rate or
    /// the shared store refusing requests while it is down (`on_failure: closed`).
    public static func counts(_ e: ProviderError) -> Bool {
        if e.providerType == openType || e.providerType == SharedStoreFailure.refusalType { return false }
        switch e.kind {
        case .rateLimited, .api, .authentication, .config, .cancelled, .unsupportedFeature: return e.status.map { $0 >= 500 && $0 <= 599 } ?? false
        case .providerUnavailable, .timeout, .http, .streamClosed: return true
        default: return e.status.map { $0 >= 500 && $0 <= 599 } ?? false
        }
    }

    /// `ProviderError.providerType` of the error an open breaker fails a
    /// request with (the retry layer does not retry it: the chain moves on).
    public static let openType = "circuit_open"

    public var phase: Phase {
        state.withLock { s in
            guard let until = s.until else { return .closed }
            return clock.now < until ? .open : .halfOpen
        }
    }

    public var stats: Stats { state.withLock { $0.stats } }

    /// Consecutive counted failures so far (while closed).
    public var failures: Int { state.withLock { $0.failures } }

    /// What `admit` decided.
    package enum Admission: Sendable, Hashable {
        /// Closed: go.
        case pass
        /// Half-open: go as the one probe.
        case probe
    }

    /// Lets a request through, or fails it at once while the breaker is open
    /// (or half-open with its probe out).
    package func admit() throws(ProviderError) -> Admission {
        let now = clock.now
        let verdict = state.withLock { s -> Result<Admission, ProviderError> in
            guard let opened = s.opened, let until = s.until else { return .success(.pass) }
            if now >= until && s.probeUntil.map({ now >= $0 }) ?? true {
                s.probeUntil = now + settings.open
                s.stats.probes += 1
                return .success(.probe)
            }
            s.stats.rejected += 1
            return .failure(
                Self.openError(
                    provider: provider, settings: settings, failures: s.failures, lastError: s.lastError, probing: now >= until,
                    openedUnixMS: unixMS(opened, now: now), untilUnixMS: unixMS(until, now: now), left: until - now))
        }
        return try verdict.get()
    }

    /// The error an open breaker fails requests with now (taking nothing).
    package func openNow() -> ProviderError {
        let now = clock.now
        return state.withLock { s in
            let opened = s.opened ?? now
            let until = s.until ?? now
            return Self.openError(
                provider: provider, settings: settings, failures: s.failures, lastError: s.lastError, probing: now >= until,
                openedUnixMS: unixMS(opened, now: now), untilUnixMS: unixMS(until, now: now), left: until - now)
        }
    }

    /// Records an attempt's outcome: nil for an answer.
    package func record(_ error: ProviderError?, _ admission: Admission) {
        let now = clock.now
        state.withLock { s in
            guard let e = error else {
                s = State(stats: s.stats)
                return
            }
            if e.kind == .cancelled || !Self.counts(e) {
                // The provider answered (or nobody knows): a probe that did not
                // fail for the provider's sake closes; a cancelled one lets another go.
                if admission == .probe {
                    if e.kind == .cancelled { s.probeUntil = nil } else { s = State(stats: s.stats) }
                }
                return
            }
            s.lastError = Self.describe(e)
            if s.until != nil {
                // Open: only the probe's failure opens it again; stragglers
                // admitted before it opened change nothing.
                guard admission == .probe else { return }
                s.opened = now
                s.until = now + settings.open
                s.probeUntil = nil
                s.stats.opened += 1
                return
            }
            s.failures += 1
            if s.failures >= settings.failures {
                s.opened = now
                s.until = now + settings.open
                s.probeUntil = nil
                s.stats.opened += 1
            }
        }
    }

    /// Mirrors the shared store's verdict (so the local breaker is warm when
    /// the store goes away): the store said open until `left` from now.
    package func mirrorOpen(left: Duration, failures: Int) {
        let now = clock.now
        state.withLock { s in
            s.failures = failures
            if s.until == nil { s.opened = now }
            s.until = now + max(.zero, left)
        }
    }

    static func describe(_ e: ProviderError) -> String {
        "\(e.kind)\(e.status.map { " (\($0))" } ?? ""): \(e.message.prefix(200))"
    }

    /// `instant` of the breaker's clock as wall-clock milliseconds (the
    /// clock's `unixTime`, which a manual clock moves too).
    func unixMS(_ instant: ContinuousClock.Instant, now: ContinuousClock.Instant) -> Int {
        let delta = instant - now
        return clock.unixTime * 1000 + Int(delta.components.seconds) * 1000 + Int(delta.components.attoseconds / 1_000_000_000_000_000)
    }

    /// The error of a request failed at once by an open breaker.
    static func openError(
        provider: String, settings: CircuitBreakerSettings, failures: Int, lastError: String?, probing: Bool, openedUnixMS: Int,
        untilUnixMS: Int, left: Duration, shared: Bool = false
    ) -> ProviderError {
        let since = AuditLog.timestamp(unixMS: openedUnixMS)
        let until = AuditLog.timestamp(unixMS: untilUnixMS)
        var m = "the circuit breaker\(shared ? " (shared)" : "") of \(provider) is open since \(since) until \(until)"
        m += probing ? " and a probe request is on its way" : " (\(max(.zero, left).short) from now)"
        m += " after \(settings.failures) consecutive failed attempts"
        if let lastError { m += "; last: \(lastError)" }
        return ProviderError(.providerUnavailable, m, provider: provider, providerType: openType)
    }
}

/// Applies a `CircuitBreaker` to the backend it wraps (below the retry
/// layer, so it counts attempts): while the breaker is open a request
/// fails at once with `provider_unavailable`, which a fallback chain moves
/// on from and the retry layer does not retry.
///
/// With `shared` (providers.yaml's `shared:` section) the breaker's state
/// is the store's, for every process and host; `breaker` then decides only
/// while the store does not answer (fail-open, as the rest of `shared:`).
public struct CircuitBreakerBackend: WrappingBackend {
    public let inner: any ModelBackend
    public let breaker: CircuitBreaker
    package let shared: SharedBreaker?

    public init(_ inner: any ModelBackend, breaker: CircuitBreaker) {
        self.init(inner, breaker: breaker, shared: nil)
    }

    package init(_ inner: any ModelBackend, breaker: CircuitBreaker, shared: SharedBreaker?) {
        self.inner = inner
        self.breaker = breaker
        self.shared = shared
    }

    /// Wraps `inner` with the process-wide breaker of its provider name.
    public init(_ inner: any ModelBackend, settings: CircuitBreakerSettings, clock: DescartesClock = .continuous) {
        self.init(inner, breaker: .shared(for: inner.name, settings: settings, clock: clock))
    }

    /// How a request was let through: locally, or by the store.
    struct Ticket {
        var local: CircuitBreaker.Admission
        /// nil: the store did not answer (or there is none).
        var shared: SharedBreaker.Admission?
    }

    func admit() throws(ProviderError) -> Ticket {
        if let shared {
            switch shared.admit() {
            case .some(.refused(let e, let left, let failures)):
                breaker.mirrorOpen(left: left, failures: failures)
                throw e
            case .some(.probe):
                return Ticket(local: .probe, shared: .probe)
            case .some(let a):
                return Ticket(local: .pass, shared: a)
            case nil:
                break
            }
        }
        return Ticket(local: try breaker.admit(), shared: nil)
    }

    func record(_ error: ProviderError?, _ ticket: Ticket) {
        breaker.record(error, ticket.local)
        if let shared, let a = ticket.shared { shared.record(error, a) }
    }

    /// Unhealthy at once while the breaker is open (`descartes health`,
    /// the gateway's `/ready`), without asking the provider; otherwise the
    /// provider's own check. Takes no probe.
    public func healthCheck() async throws(ProviderError) -> HealthReport {
        if let shared, let a = shared.admit(peek: true) {
            if case .refused(let e, _, _) = a { throw e }
        } else if breaker.phase == .open {
            throw breaker.openNow()
        }
        return try await inner.healthCheck()
    }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        let ticket = try admit()
        do {
            let response = try await inner.complete(request)
            record(nil, ticket)
            return response
        } catch {
            record(ProviderError.from(error, provider: inner.name), ticket)
            throw error
        }
    }

    public func stream(_ request: ModelRequest) -> ModelStream {
        let me = self
        return Streams.make(provider: inner.name) { out in
            let ticket = try me.admit()
            do {
                for try await event in me.inner.stream(request) {
                    if case .finish = event { me.record(nil, ticket) }
                    out.yield(event)
                }
            } catch {
                me.record(ProviderError.from(error, provider: me.inner.name), ticket)
                throw error
            }
        }
    }
}
