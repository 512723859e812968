import Descartes
import Testing

/// A value shared between tasks of a test.
final class Locked<T: Sendable>: Sendable {
    private let m: Lock<T>
    init(_ value: T) { m = Lock(value) }
    func withLock<R: Sendable>(_ body: (inout T) -> R) -> R { m.withLock { body(&$0) } }
}

/// Token buckets for requests and tokens per minute, shared by every task.
/// Time is a manual clock's: each wait is checked exactly and none is spent.
@Suite struct RateLimitTests {
    let dir = PluginDir().addScripted()
    let clock = ManualClock()
    var time: DescartesClock { DescartesClock(clock) }

    @Test func requestsAreSpacedByTheRefillRate() async throws {
        // 600 a minute is one every 100 ms, with a bucket of one.
        let limiter = RateLimiter(limits: RateLimits(requestsPerMinute: 600, requestBurst: 1), clock: time)
        let waits = Locked<[Duration]>([])
        await withTaskGroup(of: Void.self) { g in
            for _ in 0..<5 {
                g.addTask {
                    let w = try? await limiter.acquire(tokens: 0)
                    waits.withLock { $0.append(w ?? .seconds(-1)) }
                }
            }
            // The first goes at once; the others wait their turn, 100 ms apart.
            try? await clock.wait(until: { $0.sleeps == [100, 200, 300, 400].map { .milliseconds($0) } })
            #expect(limiter.stats.waiting == 4)
            for _ in 0..<4 { clock.advance(by: .milliseconds(100)) }
        }
        #expect(waits.withLock { $0.sorted() } == [0, 100, 200, 300, 400].map { .milliseconds($0) })
        let s = limiter.stats
        #expect(s.granted == 5 && s.delayed == 4 && s.waiting == 0)
        #expect(s.waited == .seconds(1))
    }

    @Test func tokensPerMinuteWaitForTheBucketToRefill() async throws {
        // 6000 tokens a minute = 100 a second; the bucket holds 100.
        let limiter = RateLimiter(limits: RateLimits(tokensPerMinute: 6000, tokenBurst: 100), clock: time)
        #expect(try await limiter.acquire(tokens: 100) == .zero)
        // 150 tokens at 100 a second from a bucket of 100: the 50 more wait 0.5 s.
        let second = Task { try await limiter.acquire(tokens: 50) }
        try await clock.wait(until: { $0.sleeps == [.milliseconds(500)] })
        clock.advance(by: .milliseconds(500))
        #expect(try await second.value == .milliseconds(500))
        // Usage below the estimate gives tokens back: 40 of those 50 return.
        limiter.adjust(tokens: -40)
        #expect(try await limiter.acquire(tokens: 40) == .zero)
    }

    @Test func aWaitPastTheDeadlineIsRefusedAtOnce() async throws {
        let limiter = RateLimiter(limits: RateLimits(requestsPerMinute: 60, requestBurst: 1), clock: time)
        try await limiter.acquire(tokens: 0)
        let err = try #require(await providerError { try await limiter.acquire(tokens: 0, maxWait: .milliseconds(200), provider: "p") })
        #expect(err.kind == .rateLimited)
        #expect(err.provider == "p")
        #expect(err.retryAfter == .seconds(1))
        #expect(err.message == "the local rate limit (60 requests/min) would delay this request by 1 s, past its deadline")
        // The refused request took nothing: the next waits one second, not two.
        let probe = try #require(await providerError { try await limiter.acquire(tokens: 0, maxWait: .zero) })
        #expect(probe.retryAfter == .seconds(1))
        #expect(limiter.stats.granted == 1 && limiter.stats.refused == 2)
    }

    @Test func cancellingAWaitGivesItsShareBack() async throws {
        // One a minute: the request after the first waits 60 s.
        let limiter = RateLimiter(limits: RateLimits(requestsPerMinute: 1, requestBurst: 1), clock: time)
        try await limiter.acquire(tokens: 0)
        let waiting = Task { try await limiter.acquire(tokens: 0) }
        try await clock.wait(until: { $0.sleeps == [.seconds(60)] })
        clock.advance(by: .seconds(20))
        waiting.cancel()
        // The wait ended without the clock moving.
        try await clock.wait(until: { $0.sleeps.isEmpty })
        let result = await waiting.result
        guard case .failure(let e as ProviderError) = result else { Issue.record("expected cancellation, got \(result)"); return }
        #expect(e.kind == .cancelled)
        // The next request would wait what is left of the first one's 60 s
        // (the cancelled share came back), not 60 s more.
        let probe = try #require(await providerError { try await limiter.acquire(tokens: 0, maxWait: .zero) })
        #expect(probe.retryAfter == .seconds(40))
        #expect(limiter.stats.granted == 1)
        #expect(limiter.stats.refused == 1)
        #expect(limiter.stats.waiting == 0)
    }

    @Test func theLimiterIsSharedByEveryBackendOfAProvider() async throws {
        let limits = RateLimits(requestsPerMinute: 600, requestBurst: 1)
        let a = RateLimitedBackend(try dir.factory(clock: time).create("scripted"), limits: limits, clock: time)
        let b = RateLimitedBackend(try dir.factory(clock: time).create("scripted"), limits: limits, clock: time)
        #expect(a.limiter === b.limiter)
        // Another clock (another test's) is another limiter.
        #expect(RateLimiter.shared(for: "scripted", limits: limits, clock: DescartesClock(ManualClock())) !== a.limiter)
        let task = Task {
            try await withThrowingTaskGroup(of: ModelResponse.self) { g in
                for i in 0..<6 { g.addTask { try await (i % 2 == 0 ? a : b).complete(.script(["text:ok"])) } }
                var n = 0
                for try await r in g where r.content == "ok" { n += 1 }
                return n
            }
        }
        // Six requests through both backends, 100 ms apart whichever they went to.
        try await clock.wait(until: { $0.sleeps == [100, 200, 300, 400, 500].map { .milliseconds($0) } })
        clock.advance(by: .milliseconds(500))
        #expect(try await task.value == 6)
        #expect(a.limiter.stats.granted == 6 && a.limiter.stats.delayed == 5)
    }

    @Test func aProvidersRetryAfterPausesEveryRequestToIt() async throws {
        let limiter = RateLimiter(limits: RateLimits(requestsPerMinute: 100_000), clock: time)
        let b = RateLimitedBackend(try dir.factory(clock: time).create("scripted"), limiter: limiter)
        let err = try #require(await providerError { _ = try await b.complete(.script(["retry_after:400", "error:rate_limited:slow down"])) })
        #expect(err.kind == .rateLimited)
        let next = Task { try await b.complete(.script(["text:after the pause"])) }
        try await clock.wait(until: { $0.sleeps == [.milliseconds(400)] })
        clock.advance(by: .milliseconds(400))
        #expect(try await next.value.content == "after the pause")
    }

    /// `limits.NAME.models.MODEL`: a model's own bucket beside its
    /// provider's. A request naming the model takes both; another model
    /// only the provider's; a refusal by the provider's gives the model's
    /// share back.
    @Test func aModelsOwnLimitHoldsItsRequestsBesideTheProviders() async throws {
        let provider = RateLimiter(limits: RateLimits(requestsPerMinute: 600, requestBurst: 2), clock: time)
        let own = RateLimiter(limits: RateLimits(requestsPerMinute: 60, requestBurst: 1), clock: time)
        let b = RateLimitedBackend(try dir.factory(clock: time).create("scripted"), limiter: provider, shared: nil, modelLimiters: ["slow": own])
        func request(_ model: String, wait: Duration? = nil) -> ModelRequest {
            var r = ModelRequest.script(["text:ok"])
            r.model = model
            r.deadlines.total = wait
            return r
        }
        // A deadline just shorter than the provider's 100 ms between
        // requests: a wait for either bucket is refused at once (the
        // requests expected to go have no deadline, and never wait).
        let shorter = Duration.milliseconds(99)
        #expect(try await b.complete(request("slow")).content == "ok")
        // The model's bucket is empty (a second's wait); the provider's has one left.
        let refused = try #require(await providerError { _ = try await b.complete(request("slow", wait: shorter)) })
        #expect(refused.kind == .rateLimited && refused.retryAfter == .seconds(1), "\(refused)")
        #expect(refused.message.contains("60 requests/min"), "\(refused)")
        #expect(try await b.complete(request("fast")).content == "ok")
        #expect(provider.stats.granted == 2 && own.stats.granted == 1)
        // A second later the model's bucket has room, the provider's (10 a
        // second) too: both go; then the provider's is empty, and its
        // refusal gives the model's share back.
        clock.advance(by: .seconds(1))
        #expect(try await b.complete(request("slow")).content == "ok")
        #expect(try await b.complete(request("fast")).content == "ok")
        clock.advance(by: .seconds(1))
        #expect(try await b.complete(request("fast")).content == "ok")
        #expect(try await b.complete(request("fast")).content == "ok")
        let byProvider = try #require(await providerError { _ = try await b.complete(request("slow", wait: shorter)) })
        #expect(byProvider.message.contains("600 requests/min"), "\(byProvider)")
        #expect(own.stats.granted == 2, "the model's share came back")
        // 100 ms later the provider's bucket has one again: the model's share is there too.
        clock.advance(by: .milliseconds(100))
        #expect(try await b.complete(request("slow")).content == "ok", "and is there for the next")
    }

    @Test func aModelsLimitsAreReadAndCheckedWithFileAndLine() throws {
        let good = try ReliabilitySettings.parse(
            yaml: """
                limits:
                  openai:
                    requests_per_minute: 500
                    models:
                      gpt-4o: {requests_per_minute: 100, tokens_per_minute: 30000}
                  local:
                    models: {small: {requests_per_minute: 5}}
                """, file: "p.yaml")
        #expect(good.limits["openai"] == RateLimits(requestsPerMinute: 500))
        #expect(good.modelLimits["openai"] == ["gpt-4o": RateLimits(requestsPerMinute: 100, tokensPerMinute: 30000)])
        #expect(good.limits["local"] == RateLimits() && good.modelLimits["local"] == ["small": RateLimits(requestsPerMinute: 5)])
        do {
            _ = try ReliabilitySettings.parse(
                yaml: """
                    limits:
                      openai:
                        models:
                          gpt-4o: {requests_per_minute: 0}
                          mini: {colour: blue}
                          o1: 5
                    """, file: "p.yaml")
            Issue.record("the problems were not reported")
        } catch {
            let messages = error.problems.map(\.description)
            #expect(messages.contains { $0.hasPrefix("p.yaml:4:") && $0.hasSuffix("limits.openai.models.gpt-4o.requests_per_minute must be at least 1") }, "\(messages)")
            #expect(messages.contains { $0.hasPrefix("p.yaml:5:") && $0.contains("colour") }, "\(messages)")
            #expect(
                messages.contains { $0.hasPrefix("p.yaml:5:") && $0.contains("limits.openai.models.mini sets neither requests_per_minute nor tokens_per_minute") },
                "\(messages)")
            #expect(messages.contains { $0.hasPrefix("p.yaml:6:") && $0.contains("limits.openai.models.o1 must be a mapping") }, "\(messages)")
        }
    }

    @Test func usageCorrectsTheEstimate() async throws {
        // Charged up front: the heuristic estimate plus max_tokens (1000);
        // the answer used 5 tokens, so nearly all of it comes back.
        let limiter = RateLimiter(limits: RateLimits(tokensPerMinute: 60_000, tokenBurst: 1100), clock: time)
        let b = RateLimitedBackend(try dir.factory(clock: time).create("scripted"), limiter: limiter)
        var request = ModelRequest.script(["text:x"], prompt: "one two")
        request.maxTokens = 1000
        _ = try await b.complete(request)
        _ = try await b.complete(request)
        // Without the correction the second would wait about a second.
        #expect(limiter.stats.delayed == 0)
        #expect(limiter.stats.granted == 2)
    }
}
