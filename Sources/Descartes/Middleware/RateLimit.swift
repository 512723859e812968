
/// Requests and tokens per minute allowed for one provider.
public struct RateLimits: Sendable, Hashable, CustomStringConvertible {
    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?
    /// How many requests may go at once after a quiet period (the bucket's
    /// size); by default a minute's worth.
    public var requestBurst: Int?
    /// The same for tokens.
    public var tokenBurst: Int?

    public init(requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil, requestBurst: Int? = nil, tokenBurst: Int? = nil) {
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.requestBurst = requestBurst
        self.tokenBurst = tokenBurst
    }

    public var isEmpty: Bool { requestsPerMinute == nil && tokensPerMinute == nil }

    public var description: String {
        var parts: [String] = []
        if let r = requestsPerMinute { parts.append("\(r) requests/min") }
        if let t = tokensPerMinute { parts.append("\(t) tokens/min") }
        return parts.isEmpty ? "unlimited" : parts.joined(separator: ", ")
    }
}

/// Token buckets for one provider's requests and tokens per minute, shared
/// by every task of the process that uses the provider
/// (`RateLimiter.shared(for:limits:)`).
///
/// Reservations are taken in arrival order: a request takes its share at
/// once, the bucket may go below zero, and the request waits (a sleep on
/// `clock`, so it never blocks a thread and cancelling ends the wait and
/// returns the share) until the bucket would have refilled to zero.
/// Usage reported by the answer corrects the estimate taken up front, and a
/// provider's `retry-after` pauses every request to it.
public final class RateLimiter: Sendable {
    public let limits: RateLimits
    /// What the buckets refill by and waits are counted on.
    public let clock: DescartesClock

    struct Bucket {
        var level: Double
        let capacity: Double
        let perSecond: Double

        init(perMinute: Int, burst: Int?) {
            capacity = Double(max(1, burst ?? perMinute))
            perSecond = Double(perMinute) / 60
            level = capacity
        }

        mutating func refill(_ elapsed: Duration) {
            level = min(capacity, level + perSecond * elapsed.seconds)
        }

        /// How long until the level is back to zero.
        var deficit: Duration {
            level >= 0 ? .zero : Duration(secondsDouble: -level / perSecond)
        }
    }

    struct State {
        var requests: Bucket?
        var tokens: Bucket?
        var updated: ContinuousClock.Instant
        var pausedUntil: ContinuousClock.Instant?
        var stats = Stats()

        mutating func refill(_ now: ContinuousClock.Instant) {
            let elapsed = now - updated
            updated = now
            requests?.refill(elapsed)
            tokens?.refill(elapsed)
        }
    }

    /// What the limiter has done so far.
    public struct Stats: Sendable, Hashable {
        /// Requests let through.
        public var granted = 0
        /// Of them, requests that had to wait.
        public var delayed = 0
        /// Requests refused because the wait would pass their deadline.
        public var refused = 0
        /// Time spent waiting, all requests together.
        public var waited: Duration = .zero
        /// Requests waiting now.
        public var waiting = 0
    }

    private let state: Lock<State>

    public init(limits: RateLimits, clock: DescartesClock = .continuous) {
        self.limits = limits
        self.clock = clock
        var s = State(updated: clock.now)
        s.requests = limits.requestsPerMinute.map { Bucket(perMinute: $0, burst: limits.requestBurst) }
        s.tokens = limits.tokensPerMinute.map { Bucket(perMinute: $0, burst: limits.tokenBurst) }
        state = Lock(s)
    }

    private static let registry = Lock<[String: RateLimiter]>([:])

    /// The process-wide limiter of provider `name`: every backend created
    /// for the same provider shares it. A call with different limits (a
    /// reloaded configuration) or another clock replaces the limiter.
    public static func shared(for name: String, limits: RateLimits, clock: DescartesClock = .continuous) -> RateLimiter {
        registry.withLock { r in
            if let existing = r[name], existing.limits == limits, existing.clock == clock { return existing }
            let l = RateLimiter(limits: limits, clock: clock)
            r[name] = l
            return l
        }
    }

    public var stats: Stats { state.withLock { $0.stats } }

    /// Takes one request and `tokens` tokens, waiting until the buckets
    /// allow them.
    ///
    /// - Parameter maxWait: the longest acceptable wait (what is left of the
    ///   request's deadline); a longer one is refused at once.
    /// - Returns: how long the call waited.
    /// - Throws: `rateLimited` (with `retryAfter`) when the wait would
    ///   exceed `maxWait`; `cancelled` when the task is cancelled while
    ///   waiting. Either way the reservation is given back.
    @discardableResult
    package func acquire(tokens: Int, maxWait: Duration? = nil, provider: String? = nil) async throws(ProviderError) -> Duration {
        let now = clock.now
        let cost = Double(max(0, tokens))
        let (wait, charged) = state.withLock { s -> (Duration, Double) in
            s.refill(now)
            // A request larger than the bucket waits for a full bucket, not forever.
            let charged = min(cost, s.tokens?.capacity ?? cost)
            s.requests?.level -= 1
            s.tokens?.level -= charged
            var wait = max(s.requests?.deficit ?? .zero, s.tokens?.deficit ?? .zero)
            if let p = s.pausedUntil, p > now { wait = max(wait, p - now) }
            if let maxWait, wait > maxWait {
                s.requests?.level += 1
                s.tokens?.level += charged
                s.stats.refused += 1
                return (wait, -1)
            }
            s.stats.granted += 1
            if wait > .zero {
                s.stats.delayed += 1
                s.stats.waiting += 1
                s.stats.waited += wait
            }
            return (wait, charged)
        }
        if charged < 0 {
            throw ProviderError(
                .rateLimited, "the local rate limit (\(limits)) would delay this request by \(wait.short), past its deadline",
                provider: provider, retryAfter: wait)
        }
        guard wait > .zero else { return .zero }
        do {
            try await clock.sleep(until: now + wait)
        } catch {
            state.withLock { s in
                s.requests?.level += 1
                s.tokens?.level += charged
                s.stats.waiting -= 1
                s.stats.granted -= 1
            }
            throw ProviderError(.cancelled, "the request was cancelled while waiting for the rate limit", provider: provider)
        }
        state.withLock { $0.stats.waiting -= 1 }
        return wait
    }

    /// Gives back the share `acquire(tokens:)` took for a request that then
    /// did not go (another limiter refused it).
    package func release(tokens: Int) {
        state.withLock { s in
            s.refill(clock.now)
            let charged = min(Double(max(0, tokens)), s.tokens?.capacity ?? 0)
            if var b = s.requests {
                b.level = min(b.capacity, b.level + 1)
                s.requests = b
            }
            if var b = s.tokens {
                b.level = min(b.capacity, b.level + charged)
                s.tokens = b
            }
            s.stats.granted -= 1
        }
    }

    /// Corrects the tokens taken for a request once its usage is known
    /// (`delta` = actual - estimated; negative gives tokens back).
    package func adjust(tokens delta: Int) {
        guard delta != 0 else { return }
        state.withLock { s in
            s.refill(clock.now)
            if var b = s.tokens {
                b.level = min(b.capacity, b.level - Double(delta))
                s.tokens = b
            }
        }
    }

    /// Holds every request back until `instant` of `clock` (a provider's
    /// retry-after).
    package func pause(until instant: ContinuousClock.Instant) {
        state.withLock { s in
            if s.pausedUntil.map({ $0 < instant }) ?? true { s.pausedUntil = instant }
        }
    }
}

/// Applies a `RateLimiter` to the backend it wraps: each request (each
/// attempt, when a retry layer is outside) waits for its share first; the
/// answer's usage corrects the estimate; a `rateLimited` error with a
/// retry-after pauses the limiter, so every task stops sending to the
/// provider for that long.
///
/// With `shared` (providers.yaml's `shared:` section) the buckets and the
/// pause are the shared store's, for every process and host: `limiter`
/// then serves only while the store does not answer (`on_failure: open`).
///
/// A model with limits of its own (`limits.NAME.models.MODEL`, by the name
/// the request gives) is held to them as well as to the provider's: in
/// process, its own limiter first, then the provider's (a refusal by the
/// provider's gives the model's share back); in the shared store, its
/// buckets in the same script call as the provider's (same hash tag: no
/// round trip more).
public struct RateLimitedBackend: WrappingBackend {
    public let inner: any ModelBackend
    public let limiter: RateLimiter
    /// The same limits in the shared store, checked instead of `limiter`
    /// while the store answers.
    package let shared: SharedLimits?
    /// The in-process limiters of the models with limits of their own, by model name.
    package let modelLimiters: [String: RateLimiter]

    public init(_ inner: any ModelBackend, limiter: RateLimiter) {
        self.init(inner, limiter: limiter, shared: nil)
    }

    package init(_ inner: any ModelBackend, limiter: RateLimiter, shared: SharedLimits?, modelLimiters: [String: RateLimiter] = [:]) {
        self.inner = inner
        self.limiter = limiter
        self.shared = shared
        self.modelLimiters = modelLimiters
    }

    /// Wraps `inner` with the process-wide limiter of its provider name.
    public init(_ inner: any ModelBackend, limits: RateLimits, clock: DescartesClock = .continuous) {
        self.init(inner, limiter: .shared(for: inner.name, limits: limits, clock: clock))
    }

    /// The tokens a request is charged up front: its input (estimated) and
    /// the output it may produce.
    static func estimate(_ r: ModelRequest) -> Int { Heuristics.tokens(r).tokens + (r.maxTokens ?? 0) }

    /// What a request took: its estimate, whether from the shared store,
    /// and the model whose own limits it was held to.
    struct Admission {
        var estimate: Int
        var shared: Bool
        var model: String?
    }

    func admit(_ request: ModelRequest) async throws(ProviderError) -> (ModelRequest, Admission) {
        let estimate = Self.estimate(request)
        let model = request.model.flatMap { modelLimiters[$0] != nil ? $0 : nil }
        var viaShared = false
        let waited: Duration
        if let shared, let w = try await acquireShared(shared, tokens: estimate, maxWait: request.deadlines.total, model: model) {
            waited = w
            viaShared = true
        } else {
            waited = try await acquireLocal(tokens: estimate, maxWait: request.deadlines.total, model: model)
        }
        var r = request
        if let total = r.deadlines.total, waited > .zero { r.deadlines.total = total - waited }
        return (r, Admission(estimate: estimate, shared: viaShared, model: model))
    }

    /// The in-process limiters' wait: the model's (when it has limits of
    /// its own), then the provider's within what is left of `maxWait`.
    func acquireLocal(tokens: Int, maxWait: Duration?, model: String?) async throws(ProviderError) -> Duration {
        guard let own = model.flatMap({ modelLimiters[$0] }) else {
            return try await limiter.acquire(tokens: tokens, maxWait: maxWait, provider: inner.name)
        }
        let first = try await own.acquire(tokens: tokens, maxWait: maxWait, provider: inner.name)
        do {
            return try await first + limiter.acquire(tokens: tokens, maxWait: maxWait.map { max(.zero, $0 - first) }, provider: inner.name)
        } catch {
            own.release(tokens: tokens)
            throw error
        }
    }

    /// The wait the shared store grants (slept here), or nil when the store
    /// does not answer and `on_failure` is `open` (the local limiter then decides).
    /// The first attempt of a request whose shared cache lookup missed uses
    /// the check that lookup made in the same script (`SharedScope`); any
    /// other makes its own.
    func acquireShared(_ shared: SharedLimits, tokens: Int, maxWait: Duration?, model: String? = nil) async throws(ProviderError) -> Duration? {
        let outcome = SharedScope.current?.takeAdmission(for: shared, model: model) ?? shared.acquire(tokens: tokens, maxWait: maxWait, model: model)
        switch outcome {
        case .unavailable(let f):
            if shared.store.settings.onFailure == .open { return nil }
            throw f.refusal(provider: inner.name)
        case .refused(let wait):
            throw ProviderError(
                .rateLimited, "the shared rate limit (\(limits(shared, model: model))) would delay this request by \(wait.short), past its deadline",
                provider: inner.name, retryAfter: wait)
        case .wait(let wait, let charged):
            guard wait > .zero else { return .zero }
            do { try await limiter.clock.sleep(for: wait) } catch {
                shared.adjust(requests: -1, tokens: -charged, model: model)
                throw ProviderError(.cancelled, "the request was cancelled while waiting for the rate limit", provider: inner.name)
            }
            return wait
        }
    }

    func limits(_ shared: SharedLimits, model: String?) -> String {
        var parts = shared.limits.isEmpty ? [] : ["\(shared.limits)"]
        if let model, let own = shared.models[model] { parts.append("\(model): \(own)") }
        return parts.isEmpty ? "a cool-down" : parts.joined(separator: "; ")
    }

    func settle(_ result: Result<ModelResponse, ProviderError>, _ admission: Admission) {
        switch result {
        case .success(let response):
            guard response.usage.totalTokens > 0 else { return }
            let delta = response.usage.totalTokens - admission.estimate
            if admission.shared, let shared {
                shared.adjust(tokens: delta, model: admission.model)
            } else {
                limiter.adjust(tokens: delta)
                admission.model.flatMap { modelLimiters[$0] }?.adjust(tokens: delta)
            }
        case .failure(let e):
            if e.kind == .rateLimited, let after = e.retryAfter, e.provider == inner.name || e.provider == nil {
                limiter.pause(until: limiter.clock.now + after)
                shared?.pause(for: after)
            }
        }
    }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        let (r, admission) = try await admit(request)
        do {
            let response = try await inner.complete(r)
            settle(.success(response), admission)
            return response
        } catch {
            settle(.failure(ProviderError.from(error, provider: inner.name)), admission)
            throw error
        }
    }

    public func stream(_ request: ModelRequest) -> ModelStream {
        let me = self
        return Streams.make(provider: inner.name) { out in
            let (r, admission) = try await me.admit(request)
            do {
                for try await event in me.inner.stream(r) {
                    if case .finish(let response) = event { me.settle(.success(response), admission) }
                    out.yield(event)
                }
            } catch {
                me.settle(.failure(ProviderError.from(error, provider: me.inner.name)), admission)
                throw error
            }
        }
    }
}
