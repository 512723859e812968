import Descartes
import Testing
import DescartesSupport

/// What the shared store adds per request, run on demand (docs/benchmarks.md,
/// "The shared store"):
///
///     DESCARTES_BENCH=1 swift test --filter SharedStateBenchmarks
///
/// Cache(RateLimited(a backend that answers at once)), in-process and then
/// with a real redis-server on 127.0.0.1: per-request latency (p50, p99)
/// for a cache miss (the cache lookup, the limiter's script, the store of
/// the answer) and a hit found in Redis (a fresh process's memory cache is
/// empty), and the round trips to Redis per request.
@Suite(.serialized, .enabled(if: Environment.get("DESCARTES_BENCH") != nil)) struct SharedStateBenchmarks {
    /// Answers at once: what is timed is the middlewares.
    struct Instant: ModelBackend {
        var name: String { "instant" }
        var mode: ModelProviderMode { .api }
        func initialize() async throws(ProviderError) {}
        func healthCheck() async throws(ProviderError) -> HealthReport { HealthReport(message: "ok") }
        func listModels() async throws(ProviderError) -> [ModelInfo] { [] }
        func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate { Heuristics.tokens(request) }
        func shutdown() async {}
        func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
            var r = ModelResponse()
            r.content = "ok"
            r.provider = "instant"
            r.usage = Usage(inputTokens: 3, outputTokens: 1)
            return r
        }
        func stream(_ request: ModelRequest) -> ModelStream {
            ModelStream(failing: ProviderError(.unsupportedFeature, "complete only", provider: "instant"))
        }
    }

    static func percentile(_ xs: [Duration], _ p: Double) -> Duration {
        let s = xs.sorted()
        return s[min(s.count - 1, Int(Double(s.count) * p))]
    }

    func time(_ b: any ModelBackend, _ requests: [ModelRequest]) async throws -> [Duration] {
        var out: [Duration] = []
        for r in requests {
            let start = ContinuousClock.now
            _ = try await b.complete(r)
            out.append(ContinuousClock.now - start)
        }
        return out
    }

    @Test func sharedLimiterAndCacheAgainstInProcess() async throws {
        let n = Int(Environment.get("DESCARTES_BENCH_REQUESTS") ?? "") ?? 5000
        let redis = try RedisServer()
        let limits = RateLimits(requestsPerMinute: 100_000_000, tokensPerMinute: 1_000_000_000)
        var settings = SharedSettings()
        settings.port = redis.port
        settings.prefix = "bench:"
        let store = SharedStore(settings: settings, logSink: LogSink())
        func stack(shared: Bool) -> any ModelBackend {
            let limiter = RateLimiter(limits: limits)
            let rl = RateLimitedBackend(Instant(), limiter: limiter, shared: shared ? SharedLimits(store: store, provider: "instant", limits: limits) : nil)
            let cache = ResponseCache(
                limits: CacheLimits(maxEntries: 100_000, maxBytes: 1 << 30), clock: .continuous, logSink: LogSink(),
                shared: shared ? SharedCache(store: store, ttl: .seconds(600)) : nil)
            return CacheBackend(rl, cache: cache)
        }
        var lines: [String] = []
        for round in 0..<3 {
            let requests = (0..<n).map { ModelRequest(prompt: "question \(round) \($0)") }
            let local = try await time(stack(shared: false), requests)
            let before = store.stats.roundTrips
            let miss = try await time(stack(shared: true), requests)
            let missTrips = Double(store.stats.roundTrips - before) / Double(n)
            let before2 = store.stats.roundTrips
            // A new stack: its memory cache is empty, the entries are in Redis.
            let hit = try await time(stack(shared: true), requests)
            let hitTrips = Double(store.stats.roundTrips - before2) / Double(n)
            func us(_ d: Duration) -> String { "\(d.microseconds) µs" }
            func row(_ xs: [Duration]) -> String { "p50 \(us(Self.percentile(xs, 0.5))), p99 \(us(Self.percentile(xs, 0.99)))" }
            lines.append(
                "round \(round), \(n) requests: in-process miss \(row(local)); shared miss \(row(miss)), \(missTrips) round trips/request; "
                    + "shared hit \(row(hit)), \(hitTrips) round trips/request")
            #expect(store.stats.failures == 0)
        }
        for l in lines { print("bench: \(l)") }
    }
}

extension Duration {
    fileprivate var microseconds: Int {
        let (s, a) = components
        return Int(s) * 1_000_000 + Int(a / 1_000_000_000_000)
    }
}
