import Descartes
import Testing

extension ModelRequest {
    /// A request for the scripted plugin whose n-th call runs `scripts[n]`
    /// (the last repeating).
    static func sequence(
        _ scripts: [[String]], prompt: String = "hello scripted world", deadlines: Deadlines = Deadlines(),
        options: JSONObject = [:]
    ) -> ModelRequest {
        var o = options
        o["sequence"] = .array(scripts.map { .array($0.map { .string($0) }) })
        return ModelRequest(messages: [.user(prompt)], options: o, deadlines: deadlines)
    }
}

/// Completions that reached the scripted plugin.
func pluginCalls(_ b: any ModelBackend) async throws -> Int {
    try await b.healthCheck().details["calls"]?.intValue ?? -1
}

/// The retry middleware against the scripted plugin, through the C ABI:
/// which errors are retried, how long it waits, what it reports.
@Suite struct RetryTests {
    let dir = PluginDir().addScripted()

    func retrying(_ policy: RetryPolicy) throws -> RetryBackend {
        RetryBackend(try dir.factory().create("scripted"), policy: policy)
    }

    /// A policy with exact waits (no jitter).
    static func exact(attempts: Int = 3, initial: Duration = .milliseconds(100)) -> RetryPolicy {
        RetryPolicy(maxAttempts: attempts, initialDelay: initial, jitter: 0)
    }

    @Test func decisionsFollowTheClassificationAndBackoff() {
        let p = RetryPolicy(maxAttempts: 5, initialDelay: .milliseconds(100), maxDelay: .milliseconds(350), multiplier: 2, jitter: 0.5)
        let unavailable = ProviderError(.providerUnavailable, "busy")
        // Backoff doubles from 100 ms and stops at 350 ms; jitter takes up to half off.
        #expect(p.decide(unavailable, attempt: 1, random: 0) == .retry(after: .milliseconds(100)))
        #expect(p.decide(unavailable, attempt: 2, random: 0) == .retry(after: .milliseconds(200)))
        #expect(p.decide(unavailable, attempt: 3, random: 0) == .retry(after: .milliseconds(350)))
        func wait(_ d: RetryPolicy.Decision) -> Duration? { if case .retry(let w) = d { return w }; return nil }
        #expect(wait(p.decide(unavailable, attempt: 2, random: 0.999_999))! > .milliseconds(100))
        #expect(p.decide(unavailable, attempt: 2, random: 1) == .retry(after: .milliseconds(100)))
        if case .stop(let why) = p.decide(unavailable, attempt: 5) { #expect(why == "all 5 attempts failed") } else { Issue.record("retried past max") }
        // The current error's retry-after wins over the backoff, jitter only adds.
        let limited = ProviderError(.rateLimited, "slow down", status: 429, retryAfter: .milliseconds(1200))
        #expect(p.decide(limited, attempt: 1, random: 0) == .retry(after: .milliseconds(1200)))
        #expect(p.decide(limited, attempt: 4, random: 1) == .retry(after: .milliseconds(1250)))
        // Over the cap: give up rather than come back early.
        let long = ProviderError(.rateLimited, "quota", retryAfter: .seconds(3600))
        #expect(p.decide(long, attempt: 1) == .stop(reason: "the provider asked to wait 3600 s, more than the 60 s allowed"))
        // Never retried.
        for kind in [ProviderError.Kind.authentication, .config, .api, .cancelled, .invalidResponse, .unsupportedFeature] {
            #expect(p.decide(ProviderError(kind, "no"), attempt: 1) == .stop(reason: "\(kind) errors are not retried"))
        }
        // A stall after the answer began, output already shown, no time left.
        #expect(wait(p.decide(ProviderError(.timeout, "t", deadline: "idle"), attempt: 1)) == nil)
        #expect(p.decide(ProviderError(.timeout, "t", deadline: "first_token"), attempt: 1, random: 0) == .retry(after: .milliseconds(100)))
        #expect(p.decide(unavailable, attempt: 1, outputReached: true) == .stop(reason: "part of the answer already reached the caller"))
        #expect(wait(p.decide(unavailable, attempt: 1, remaining: .milliseconds(50), random: 0)) == nil)
    }

    @Test func rateLimitThenUnavailableThenSuccess() async throws {
        let b = try retrying(Self.exact())
        let start = ContinuousClock.now
        let r = try await b.complete(
            .sequence([["retry_after:400", "error:rate_limited:slow down"], ["error:provider_unavailable:overloaded"], ["words"]], prompt: "third time lucky"))
        let took = ContinuousClock.now - start
        #expect(r.content == "third time lucky")
        #expect(r.provider == "scripted")
        #expect(r.attempts.map(\.error.kind) == [.rateLimited, .providerUnavailable])
        #expect(r.attempts.map(\.provider) == ["scripted", "scripted"])
        #expect(r.attempts[0].error.retryAfter == .milliseconds(400))
        #expect(r.attempts[0].error.status == 429)
        #expect(try await pluginCalls(b) == 3)
        // 400 ms as the provider asked, then the second backoff step (200 ms).
        #expect(took >= .milliseconds(600), "took \(took)")
        #expect(took < .seconds(30), "took \(took)")  // loose: loaded CI machines
    }

    @Test func theRetryAfterOfTheCurrentErrorIsHonoured() async throws {
        // The first 429 asks for 50 ms, the second for 900 ms: the second wait
        // must follow the second answer, not the first.
        let b = try retrying(Self.exact())
        let start = ContinuousClock.now
        let r = try await b.complete(
            .sequence([["retry_after:50", "error:rate_limited:a"], ["retry_after:900", "error:rate_limited:b"], ["text:ok"]]))
        #expect(r.content == "ok")
        #expect(r.attempts.map(\.error.retryAfter) == [.milliseconds(50), .milliseconds(900)])
        #expect(ContinuousClock.now - start >= .milliseconds(950))
    }

    @Test(arguments: ["authentication", "config", "api", "invalid_response", "unsupported_feature"])
    func nonRetryableErrorsAreNotRetried(_ kind: String) async throws {
        let b = try retrying(Self.exact(attempts: 5))
        let err = try #require(await providerError { _ = try await b.complete(.sequence([["error:\(kind):no"], ["text:never"]])) })
        #expect(err.kind.rawValue == kind)
        #expect(err.attempts.isEmpty)
        #expect(try await pluginCalls(b) == 1)
    }

    @Test func givingUpReportsEveryAttempt() async throws {
        let b = try retrying(Self.exact(attempts: 3, initial: .milliseconds(20)))
        let err = try #require(await providerError { _ = try await b.complete(.sequence([["error:provider_unavailable:down"]])) })
        #expect(err.kind == .providerUnavailable)
        #expect(err.attempts.count == 3)
        #expect(err.attempts.allSatisfy { $0.error.kind == .providerUnavailable && $0.error.attempts.isEmpty })
        #expect(try await pluginCalls(b) == 3)
        #expect(err.description.contains("attempt 3: scripted: provider_unavailable"))
    }

    @Test func aRetryAfterBeyondTheCapFailsAtOnce() async throws {
        let b = try retrying(RetryPolicy(maxAttempts: 3, maxRetryAfter: .seconds(2)))
        // The provider asks for ten minutes; the bound below is loose for loaded machines.
        let start = ContinuousClock.now
        let err = try #require(await providerError { _ = try await b.complete(.sequence([["retry_after:600000", "error:rate_limited:quota"]])) })
        #expect(err.kind == .rateLimited)
        #expect(err.retryAfter == .seconds(600))
        #expect(ContinuousClock.now - start < .seconds(30))
        #expect(try await pluginCalls(b) == 1)
    }

    @Test func aFirstTokenTimeoutIsRetried() async throws {
        let b = try retrying(Self.exact())
        // 1.5 s: room for the second attempt's first token on a loaded machine.
        let deadlines = Deadlines(firstToken: .milliseconds(1500))
        let start = ContinuousClock.now
        let r = try await b.complete(.sequence([["hang"], ["text:awake"]], deadlines: deadlines))
        #expect(r.content == "awake")
        #expect(r.attempts.map(\.error.deadline) == ["first_token"])
        #expect(r.attempts[0].duration >= .milliseconds(1490))
        #expect(ContinuousClock.now - start >= .milliseconds(1590))
    }

    @Test func anIdleTimeoutIsNotRetried() async throws {
        let b = try retrying(Self.exact())
        let err = try #require(await providerError {
            _ = try await b.complete(.sequence([["text:begun", "hang"], ["text:never"]], deadlines: Deadlines(idle: .milliseconds(150))))
        })
        #expect(err.deadline == "idle")
        #expect(try await pluginCalls(b) == 1)
    }

    @Test func theRequestsTotalDeadlineCoversEveryAttemptAndWait() async throws {
        // Each attempt hangs until its own 300 ms deadline; the caller's 1.3 s
        // total is the whole request's: 300 + 50 + 300 + 100 + 300 + 200 =
        // 1250 ms, so the fourth attempt gets only the 50 ms left.
        let b = try retrying(RetryPolicy(maxAttempts: 10, initialDelay: .milliseconds(50), jitter: 0, attemptTimeout: .milliseconds(300)))
        let start = ContinuousClock.now
        let err = try #require(await providerError { _ = try await b.complete(.sequence([["hang"]], deadlines: Deadlines(total: .milliseconds(1300)))) })
        let took = ContinuousClock.now - start
        #expect(err.kind == .timeout)
        // At least three whole attempts and two waits (1050 ms); and never
        // the ten attempts allowed (which would take over 3 s even unloaded).
        #expect(took >= .milliseconds(1040) && took < .seconds(30), "took \(took)")
        // Four on an idle machine; fewer when a loaded one stretches them.
        #expect(err.attempts.isEmpty || (err.attempts.count >= 2 && err.attempts.count <= 4), "\(err.attempts)")
        #expect(err.attempts.dropLast().allSatisfy { $0.duration >= .milliseconds(290) })
        #expect(err.attempts.allSatisfy { $0.error.kind == .timeout && $0.error.deadline == "total" })
    }

    @Test func aTimeoutAtTheEndOfTheRequestNamesTheCallersDeadline() async throws {
        // Attempts get what is left of the deadline (299 ms of 300): the
        // error still says what the caller asked for.
        let b = try retrying(Self.exact())
        let err = try #require(await providerError { _ = try await b.complete(.sequence([["hang"]], deadlines: Deadlines(total: .milliseconds(300)))) })
        #expect(err.kind == .timeout && err.deadline == "total")
        #expect(err.message == "the total deadline of 300 ms passed")
        let chain = FallbackBackend(name: "c", [.init(b)])
        let viaChain = try #require(await providerError { _ = try await chain.complete(.sequence([["hang"]], deadlines: Deadlines(total: .milliseconds(250)))) })
        #expect(viaChain.message == "the total deadline of 250 ms passed")
    }

    @Test func noRetryStartsWhenItsWaitWouldPassTheDeadline() async throws {
        let b = try retrying(RetryPolicy(maxAttempts: 10, initialDelay: .seconds(1), jitter: 0))
        let start = ContinuousClock.now
        let err = try #require(await providerError {
            _ = try await b.complete(.sequence([["sleep:100", "error:provider_unavailable:down"]], deadlines: Deadlines(total: .seconds(3))))
        })
        // 100 ms + 1 s + 100 ms = 1.2 s; the next wait (2 s) would pass 3 s:
        // give up now with the provider's error, rather than sleep into a timeout.
        #expect(err.kind == .providerUnavailable)
        #expect([0, 2].contains(err.attempts.count))  // one attempt only on a loaded machine (one lists none)
        #expect(ContinuousClock.now - start < .seconds(15))
    }

    @Test func cancellingDuringTheWaitEndsAtOnce() async throws {
        let b = try retrying(RetryPolicy(maxAttempts: 3, initialDelay: .seconds(20), jitter: 0))
        let task = Task { try await b.complete(.sequence([["error:provider_unavailable:down"], ["text:late"]])) }
        // Until the first attempt has failed and the 20 s wait has begun.
        let until = ContinuousClock.now + .seconds(20)
        while try await pluginCalls(b) < 1 && ContinuousClock.now < until { try await Task.sleep(for: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(200))
        let start = ContinuousClock.now
        task.cancel()
        let result = await task.result
        #expect(ContinuousClock.now - start < .seconds(15))
        guard case .failure(let e as ProviderError) = result else { Issue.record("expected an error, got \(result)"); return }
        #expect(e.kind == .cancelled)
        #expect(e.attempts.map(\.error.kind) == [.providerUnavailable, .cancelled])
        #expect(try await pluginCalls(b) == 1)
    }

    // MARK: Streams

    func collect(_ s: AsyncThrowingStream<StreamEvent, Error>) async -> (events: [StreamEvent], error: ProviderError?) {
        var events: [StreamEvent] = []
        do {
            for try await e in s { events.append(e) }
            return (events, nil)
        } catch {
            return (events, error as? ProviderError)
        }
    }

    @Test func aStreamClosedBeforeItsFirstTokenIsRetriedUnseen() async throws {
        let b = try retrying(Self.exact())
        let (events, error) = await collect(b.stream(.sequence([["error:stream_closed:cut before anything"], ["words"]], prompt: "a b")))
        #expect(error == nil)
        let starts = events.filter { if case .start = $0 { return true }; return false }
        #expect(starts.count == 1)
        let texts = events.compactMap { e -> String? in if case .textDelta(let t) = e { return t }; return nil }
        #expect(texts == ["a", " b"])
        let notices = events.compactMap { e -> String? in if case .notice(_, let m) = e { return m }; return nil }
        #expect(notices == ["scripted: stream_closed: retry 1 of 2 in 100 ms"])
        guard case .finish(let r) = events.last else { Issue.record("no finish"); return }
        #expect(r.attempts.map(\.error.kind) == [.streamClosed])
        #expect(r.content == "a b")
    }

    @Test func aStreamIsNeverRetriedOnceTextReachedTheCaller() async throws {
        let b = try retrying(Self.exact(attempts: 5))
        let (events, error) = await collect(b.stream(.sequence([["words", "error:stream_closed:cut mid-stream"], ["text:again"]], prompt: "one two")))
        #expect(error?.kind == .streamClosed)
        #expect(error?.message == "cut mid-stream")
        let texts = events.compactMap { e -> String? in if case .textDelta(let t) = e { return t }; return nil }
        #expect(texts == ["one", " two"])
        #expect(try await pluginCalls(b) == 1)
    }

    @Test func aStreamRestartsWhenAskedTo() async throws {
        var p = Self.exact()
        p.restartStreams = true
        let b = try retrying(p)
        let (events, error) = await collect(b.stream(.sequence([["text:partial", "error:stream_closed:cut"], ["text:whole answer"]])))
        #expect(error == nil)
        let notices = events.compactMap { e -> String? in if case .notice(_, let m) = e { return m }; return nil }
        #expect(notices.first?.hasPrefix(RetryPolicy.restartNotice) == true)
        guard case .finish(let r) = events.last else { Issue.record("no finish"); return }
        #expect(r.content == "whole answer")
        #expect(try await pluginCalls(b) == 2)
    }
}
