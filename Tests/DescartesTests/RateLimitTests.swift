import Descartes
import Testing

/// A value shared between tasks of a test.
final class Locked<T: Sendable>: Sendable {
    private let m: Lock<T>
    init(_ value: T) { m = Lock(value) }
    func withLock<R: Sendable>(_ body: (inout T) -> R) -> R { m.withLock { body(&$0) } }
}

/// Token buckets for requests and tokens per minute, shared by every task.
@Suite struct RateLimitTests {
    let dir = PluginDir().addScripted()

    @Test func requestsAreSpacedByTheRefillRate() async throws {
        // 600 a minute is one every 100 ms, with a bucket of one.
        let limiter = RateLimiter(limits: RateLimits(requestsPerMinute: 600, requestBurst: 1))
        let start = ContinuousClock.now
        let times = Locked<[Duration]>([])
        await withTaskGroup(of: Void.self) { g in
            for _ in 0..<5 {
                g.addTask {
                    _ = try? await limiter.acquire(tokens: 0)
                    times.withLock { $0.append(ContinuousClock.now - start) }
                }
            }
        }
        let sorted = times.withLock { $0.sorted() }
        #expect(sorted.count == 5)
        // The n-th request may go at n x 100 ms, not before.
        for (n, t) in sorted.enumerated() { #expect(t >= .milliseconds(100 * n - 10), "request \(n) at \(t)") }
        #expect(sorted[4] < .seconds(30))
        let s = limiter.stats
        #expect(s.granted == 5 && s.delayed == 4 && s.waiting == 0)
    }

    @Test func tokensPerMinuteWaitForTheBucketToRefill() async throws {
        // 6000 tokens a minute = 100 a second; the bucket holds 100.
        let limiter = RateLimiter(limits: RateLimits(tokensPerMinute: 6000, tokenBurst: 100))
        let start = ContinuousClock.now
        #expect(try await limiter.acquire(tokens: 100) == .zero)
        let waited = try await limiter.acquire(tokens: 50)
        #expect(waited > .zero && waited <= .milliseconds(500), "\(waited)")
        // 150 tokens at 100 a second from a bucket of 100: not before 0.5 s.
        #expect(ContinuousClock.now - start >= .milliseconds(490))
        // Usage below the estimate gives tokens back: 40 of those 50 return.
        limiter.adjust(tokens: -40)
        let w2 = try await limiter.acquire(tokens: 40)
        #expect(w2 < .milliseconds(50), "\(w2)")
    }

    @Test func aWaitPastTheDeadlineIsRefusedAtOnce() async throws {
        let limiter = RateLimiter(limits: RateLimits(requestsPerMinute: 60, requestBurst: 1))
        try await limiter.acquire(tokens: 0)
        let start = ContinuousClock.now
        let err = try #require(await providerError { try await limiter.acquire(tokens: 0, maxWait: .milliseconds(200), provider: "p") })
        #expect(err.kind == .rateLimited)
        #expect(err.provider == "p")
        #expect(err.retryAfter! > .milliseconds(500))
        _ = start
        // The refused request took nothing: the next waits one second, not two.
        let w = try await limiter.acquire(tokens: 0)
        #expect(w <= .seconds(1), "\(w)")
    }

    @Test func cancellingAWaitGivesItsShareBack() async throws {
        // One a minute: the request after the first waits 60 s, longer than
        // any stall of a loaded machine, so it is still waiting when seen.
        let limiter = RateLimiter(limits: RateLimits(requestsPerMinute: 1, requestBurst: 1))
        try await limiter.acquire(tokens: 0)
        let firstAt = ContinuousClock.now
        let waiting = Task { try await limiter.acquire(tokens: 0) }
        let giveUp = ContinuousClock.now + .seconds(30)
        while limiter.stats.waiting == 0 {
            try #require(ContinuousClock.now < giveUp, "the second request never started waiting")
            try await Task.sleep(for: .milliseconds(10))
        }
        let cancelledAt = ContinuousClock.now
        waiting.cancel()
        let result = await waiting.result
        #expect(ContinuousClock.now - cancelledAt < .seconds(5))
        guard case .failure(let e as ProviderError) = result else { Issue.record("expected cancellation, got \(result)"); return }
        #expect(e.kind == .cancelled)
        // Probe without waiting: the next request would wait what is left of
        // the first one's 60 s (the cancelled share came back), not 60 s more.
        let elapsed = ContinuousClock.now - firstAt
        let probe = try #require(await providerError { try await limiter.acquire(tokens: 0, maxWait: .zero) })
        let left = probe.retryAfter!
        #expect(left <= .seconds(60) - elapsed + .milliseconds(50), "\(left) after \(elapsed)")
        #expect(limiter.stats.granted == 1)
        #expect(limiter.stats.refused == 1)
    }

    @Test func theLimiterIsSharedByEveryBackendOfAProvider() async throws {
        let limits = RateLimits(requestsPerMinute: 600, requestBurst: 1)
        let a = RateLimitedBackend(try dir.factory().create("scripted"), limits: limits)
        let b = RateLimitedBackend(try dir.factory().create("scripted"), limits: limits)
        #expect(a.limiter === b.limiter)
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: ModelResponse.self) { g in
            for i in 0..<6 { g.addTask { try await (i % 2 == 0 ? a : b).complete(.script(["text:ok"])) } }
            for try await r in g { #expect(r.content == "ok") }
        }
        #expect(ContinuousClock.now - start >= .milliseconds(490))
        #expect(a.limiter.stats.granted >= 6)
    }

    @Test func aProvidersRetryAfterPausesEveryRequestToIt() async throws {
        let limiter = RateLimiter(limits: RateLimits(requestsPerMinute: 100_000))
        let b = RateLimitedBackend(try dir.factory().create("scripted"), limiter: limiter)
        let err = try #require(await providerError { _ = try await b.complete(.script(["retry_after:400", "error:rate_limited:slow down"])) })
        #expect(err.kind == .rateLimited)
        let start = ContinuousClock.now
        let r = try await b.complete(.script(["text:after the pause"]))
        #expect(r.content == "after the pause")
        #expect(ContinuousClock.now - start >= .milliseconds(350))
    }

    @Test func usageCorrectsTheEstimate() async throws {
        // Charged up front: the heuristic estimate plus max_tokens (1000);
        // the answer used 5 tokens, so nearly all of it comes back.
        let limiter = RateLimiter(limits: RateLimits(tokensPerMinute: 60_000, tokenBurst: 1100))
        let b = RateLimitedBackend(try dir.factory().create("scripted"), limiter: limiter)
        var request = ModelRequest.script(["text:x"], prompt: "one two")
        request.maxTokens = 1000
        _ = try await b.complete(request)
        _ = try await b.complete(request)
        // Without the correction the second would wait about a second.
        #expect(limiter.stats.delayed == 0)
        #expect(limiter.stats.granted == 2)
    }
}
