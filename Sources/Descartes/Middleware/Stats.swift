
/// Measurements of one request.
public struct RequestStats: Sendable, Hashable {
    /// The provider that answered (or failed last).
    public var provider: String
    public var model: String
    public var streamed: Bool
    /// From the request to the first part of the answer (streams only).
    public var timeToFirstToken: Duration?
    public var duration: Duration
    public var usage: Usage
    public var costUSD: Double?
    /// Answered from the response cache.
    public var cached: Bool
    /// Attempts that failed before the answer (or before giving up).
    public var failedAttempts: Int
    /// The error's kind, when the request failed.
    public var error: ProviderError.Kind?

    /// Output tokens per second while the answer was produced: from the
    /// first token to the end for streams, over the whole request otherwise.
    public var tokensPerSecond: Double? {
        guard usage.outputTokens > 0, error == nil else { return nil }
        let span = duration - (timeToFirstToken ?? .zero)
        // Under a millisecond (a cache replay, a one-event answer): no rate.
        guard span >= .milliseconds(1) else { return nil }
        return Double(usage.outputTokens) / span.seconds
    }
}

/// Totals over many requests, shared by every task that records into it
/// (a batch, a long-running application).
public final class UsageMeter: Sendable {
    public struct Totals: Sendable, Hashable {
        public var requests = 0
        public var failures = 0
        public var cacheHits = 0
        public var failedAttempts = 0
        public var usage = Usage()
        /// The sum of known costs; `unpricedRequests` had none.
        public var costUSD: Double = 0
        public var unpricedRequests = 0
        public var duration: Duration = .zero
    }

    private let state = Lock<(totals: Totals, last: RequestStats?)>((Totals(), nil))

    public init() {}

    public func record(_ s: RequestStats) {
        state.withLock { st in
            st.last = s
            st.totals.requests += 1
            if s.error != nil { st.totals.failures += 1 }
            if s.cached { st.totals.cacheHits += 1 }
            st.totals.failedAttempts += s.failedAttempts
            st.totals.usage.inputTokens += s.usage.inputTokens
            st.totals.usage.outputTokens += s.usage.outputTokens
            st.totals.usage.cacheReadTokens += s.usage.cacheReadTokens
            st.totals.usage.cacheWriteTokens += s.usage.cacheWriteTokens
            st.totals.usage.reasoningTokens += s.usage.reasoningTokens
            if let c = s.costUSD { st.totals.costUSD += c } else if s.error == nil { st.totals.unpricedRequests += 1 }
            st.totals.duration += s.duration
        }
    }

    public var totals: Totals { state.withLock { $0.totals } }
    /// The most recent request's measurements.
    public var last: RequestStats? { state.withLock { $0.last } }
}

/// Measures each request of the backend it wraps (time to first token,
/// duration, tokens, tokens per second, cost, cache hits, failed attempts)
/// into a `UsageMeter`.
public struct StatsBackend: WrappingBackend {
    public let inner: any ModelBackend
    public let meter: UsageMeter

    public init(_ inner: any ModelBackend, meter: UsageMeter) {
        self.inner = inner
        self.meter = meter
    }

    static func stats(
        _ r: ModelResponse, streamed: Bool, firstToken: Duration?, duration: Duration
    ) -> RequestStats {
        RequestStats(
            provider: r.provider, model: r.model, streamed: streamed, timeToFirstToken: firstToken, duration: duration,
            usage: r.usage, costUSD: r.costUSD, cached: r.metadata["cache"] == "hit", failedAttempts: r.attempts.count,
            error: nil)
    }

    static func stats(_ e: ProviderError, provider: String, streamed: Bool, firstToken: Duration?, duration: Duration) -> RequestStats {
        RequestStats(
            provider: e.provider ?? provider, model: "", streamed: streamed, timeToFirstToken: firstToken, duration: duration,
            usage: Usage(), costUSD: nil, cached: false, failedAttempts: max(0, e.attempts.count - 1), error: e.kind)
    }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        let start = ContinuousClock.now
        do {
            let r = try await inner.complete(request)
            meter.record(Self.stats(r, streamed: false, firstToken: nil, duration: .now - start))
            return r
        } catch {
            meter.record(Self.stats(ProviderError.from(error, provider: inner.name), provider: inner.name, streamed: false, firstToken: nil, duration: .now - start))
            throw error
        }
    }

    public func stream(_ request: ModelRequest) -> ModelStream {
        let inner = self.inner
        let meter = self.meter
        return Streams.make(provider: inner.name) { out in
            let start = ContinuousClock.now
            var first: Duration? = nil
            do {
                for try await event in inner.stream(request) {
                    if first == nil && Streams.isOutput(event) { first = .now - start }
                    if case .finish(let r) = event {
                        meter.record(Self.stats(r, streamed: true, firstToken: first, duration: .now - start))
                    }
                    out.yield(event)
                }
            } catch {
                meter.record(Self.stats(ProviderError.from(error, provider: inner.name), provider: inner.name, streamed: true, firstToken: first, duration: .now - start))
                throw error
            }
        }
    }
}
