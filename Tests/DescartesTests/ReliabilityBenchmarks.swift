import Descartes
import Testing
import DescartesSupport

/// What the middlewares cost a stream, run on demand (not timed tests):
///
///     DESCARTES_BENCH=1 swift test --filter ReliabilityBenchmarks
///
/// Streams a long answer from the scripted plugin (through the C ABI)
/// directly, then through Stats(Cache(Retry(RateLimited(plugin)))) with a
/// cache miss, then from the cache; prints events per second and the time
/// per event each adds.
@Suite(.serialized, .enabled(if: Environment.get("DESCARTES_BENCH") != nil)) struct ReliabilityBenchmarks {
    let dir = PluginDir().addScripted()

    func run(_ b: any ModelBackend, _ request: ModelRequest) async throws -> (events: Int, time: Duration) {
        let start = ContinuousClock.now
        var n = 0
        for try await _ in b.stream(request) { n += 1 }
        return (n, ContinuousClock.now - start)
    }

    @Test func streamThroughTheWholeStack() async throws {
        let words = Int(Environment.get("DESCARTES_BENCH_WORDS") ?? "") ?? 50_000
        let prompt = (0..<words).map { "w\($0)" }.joined(separator: " ")
        let plugin = try dir.factory().create("scripted")
        let stack = StatsBackend(
            CacheBackend(RetryBackend(RateLimitedBackend(plugin, limits: RateLimits(requestsPerMinute: 1_000_000))), cache: ResponseCache(limits: CacheLimits(maxBytes: 1 << 30))),
            meter: UsageMeter())
        _ = try await run(plugin, .script(["words"], prompt: "warm up"))
        var lines: [String] = []
        for round in 0..<3 {
            let request = ModelRequest.script(["words"], prompt: prompt + " \(round)")
            let direct = try await run(plugin, request)
            let miss = try await run(stack, request)
            let hit = try await run(stack, request)
            func rate(_ r: (events: Int, time: Duration)) -> String {
                "\(Int(Double(r.events) / r.time.seconds)) events/s (\(r.time.milliseconds) ms)"
            }
            let perEvent = (miss.time - direct.time).seconds / Double(miss.events) * 1e9
            lines.append("round \(round): \(words) words: direct \(rate(direct)); 4 middlewares, cache miss \(rate(miss)), +\(Int(perEvent)) ns/event; cache hit \(rate(hit))")
            #expect(miss.events == direct.events)
        }
        for l in lines { print("bench: \(l)") }
    }

    /// What one "now, plus a duration" costs through each clock the
    /// middlewares could read (they do it a few times per request, the
    /// bridge once per event): the real clock directly, `DescartesClock`
    /// over it, an `any Clock<Duration>` existential, and a manual clock.
    @Test func clockReads() {
        let n = 1_000_000
        func nsPerRead(_ body: () -> Void) -> Int {
            let start = ContinuousClock.now
            body()
            return Int((ContinuousClock.now - start).seconds / Double(n) * 1e9)
        }
        var last = ContinuousClock.now
        let direct = nsPerRead { for _ in 0..<n { last = max(last, ContinuousClock.now + .seconds(1)) } }
        let real = DescartesClock.continuous
        let viaReal = nsPerRead { for _ in 0..<n { last = max(last, real.now + .seconds(1)) } }
        let existential: any Clock<Duration> = ContinuousClock()
        var count = 0
        let viaAny = nsPerRead { for _ in 0..<n { if existential.now.advanced(by: .seconds(1)) is ContinuousClock.Instant { count += 1 } } }
        let manual = DescartesClock(ManualClock())
        let viaManual = nsPerRead { for _ in 0..<n { last = max(last, manual.now + .seconds(1)) } }
        #expect(count == n)
        print("bench: now + 1 s, \(n) times: ContinuousClock \(direct) ns; DescartesClock (real) \(viaReal) ns; any Clock<Duration> \(viaAny) ns; DescartesClock (manual) \(viaManual) ns")
    }
}
