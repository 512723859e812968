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
/// which errors are retried, how long it waits, what it reports. Time is a
/// manual clock's: the host's deadlines and the retry waits happen when the
/// test moves it, so each wait is checked to the millisecond and none is
/// spent in real time.
@Suite struct RetryTests {
    let dir = PluginDir().addScripted()
    let clock = ManualClock()

    /// The scripted backend, initialized, behind a retry layer. Initialized
    /// first: a first request's lazy initialization runs under its own
    /// check on the clock, which `pending` cannot tell from the call's, so a
    /// test could move the clock past initialize's check instead of the call's.
    func retrying(_ policy: RetryPolicy) async throws -> RetryBackend {
        let plugin = try dir.factory(clock: DescartesClock(clock)).create("scripted")
        try await plugin.initialize()
        return RetryBackend(plugin, policy: policy, clock: DescartesClock(clock))
    }

    /// A policy with exact waits (no jitter).
    static func exact(attempts: Int = 3, initial: Duration = .milliseconds(100)) -> RetryPolicy {
        RetryPolicy(maxAttempts: attempts, initialDelay: initial, jitter: 0)
    }

    /// Lets each retry wait in `waits` pass once the retry layer sleeps it
    /// (the only sleep pending, of exactly that length), then returns what
    /// `task` ended with.
    func after<T: Sendable, F: Error>(waits: [Duration], _ task: Task<T, F>) async throws -> Result<T, F> {
        for w in waits {
            try await clock.wait(until: { $0.sleeps == [w] })
            clock.advance(by: w)
        }
        return await task.result
    }

    /// Moves the clock past the host's deadline check due in `d` (the only
    /// one pending, of exactly that length).
    func passDeadline(_ d: Duration) async throws {
        try await clock.wait(until: { $0.timers == [d] && $0.sleeps.isEmpty })
        clock.advance(by: d)
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
        let b = try await retrying(Self.exact())
        let task = Task {
            try await b.complete(
                .sequence([["retry_after:400", "error:rate_limited:slow down"], ["error:provider_unavailable:overloaded"], ["words"]], prompt: "third time lucky"))
        }
        // 400 ms as the provider asked, then the second backoff step (200 ms).
        let r = try await after(waits: [.milliseconds(400), .milliseconds(200)], task).get()
        #expect(r.content == "third time lucky")
        #expect(r.provider == "scripted")
        #expect(r.attempts.map(\.error.kind) == [.rateLimited, .providerUnavailable])
        #expect(r.attempts.map(\.provider) == ["scripted", "scripted"])
        #expect(r.attempts[0].error.retryAfter == .milliseconds(400))
        #expect(r.attempts[0].error.status == 429)
        #expect(try await pluginCalls(b) == 3)
    }

    @Test func theRetryAfterOfTheCurrentErrorIsHonoured() async throws {
        // The first 429 asks for 50 ms, the second for 900 ms: the second wait
        // must follow the second answer, not the first.
        let b = try await retrying(Self.exact())
        let task = Task { try await b.complete(.sequence([["retry_after:50", "error:rate_limited:a"], ["retry_after:900", "error:rate_limited:b"], ["text:ok"]])) }
        let r = try await after(waits: [.milliseconds(50), .milliseconds(900)], task).get()
        #expect(r.content == "ok")
        #expect(r.attempts.map(\.error.retryAfter) == [.milliseconds(50), .milliseconds(900)])
    }

    @Test(arguments: ["authentication", "config", "api", "invalid_response", "unsupported_feature"])
    func nonRetryableErrorsAreNotRetried(_ kind: String) async throws {
        let b = try await retrying(Self.exact(attempts: 5))
        let err = try #require(await providerError { _ = try await b.complete(.sequence([["error:\(kind):no"], ["text:never"]])) })
        #expect(err.kind.rawValue == kind)
        #expect(err.attempts.isEmpty)
        #expect(try await pluginCalls(b) == 1)
    }

    @Test func givingUpReportsEveryAttempt() async throws {
        let b = try await retrying(Self.exact(attempts: 3, initial: .milliseconds(20)))
        let task = Task { try await b.complete(.sequence([["error:provider_unavailable:down"]])) }
        let err = try #require(await providerError { _ = try await after(waits: [.milliseconds(20), .milliseconds(40)], task).get() })
        #expect(err.kind == .providerUnavailable)
        #expect(err.attempts.count == 3)
        #expect(err.attempts.allSatisfy { $0.error.kind == .providerUnavailable && $0.error.attempts.isEmpty })
        #expect(try await pluginCalls(b) == 3)
        #expect(err.description.contains("attempt 3: scripted: provider_unavailable"))
    }

    @Test func aRetryAfterBeyondTheCapFailsAtOnce() async throws {
        let b = try await retrying(RetryPolicy(maxAttempts: 3, maxRetryAfter: .seconds(2)))
        // The provider asks for ten minutes: an answer with the clock never
        // moved is an answer without a wait.
        let start = clock.now
        let err = try #require(await providerError { _ = try await b.complete(.sequence([["retry_after:600000", "error:rate_limited:quota"]])) })
        #expect(err.kind == .rateLimited)
        #expect(err.retryAfter == .seconds(600))
        #expect(clock.now == start)
        #expect(try await pluginCalls(b) == 1)
        // The error says why a 429 ended the request (issue 17).
        #expect(err.message.hasPrefix("quota (not retried: the provider asked to wait "), "\(err.message)")
        #expect(err.message.hasSuffix("more than the 2 s allowed)"), "\(err.message)")
    }

    @Test func aRateLimitWhoseWaitWouldPassTheDeadlineSaysSo() async throws {
        let b = try await retrying(RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(10), jitter: 0))
        let err = try #require(
            await providerError {
                _ = try await b.complete(.sequence([["retry_after:5000", "error:rate_limited:slow down"]], deadlines: Deadlines(total: .seconds(2))))
            })
        #expect(err.kind == .rateLimited)
        #expect(err.message.hasPrefix("slow down (not retried: waiting "), "\(err.message)")
        #expect(err.message.contains("would pass the deadline"), "\(err.message)")
        #expect(try await pluginCalls(b) == 1)
    }

    @Test func aFirstTokenTimeoutIsRetried() async throws {
        let b = try await retrying(Self.exact())
        let task = Task { try await b.complete(.sequence([["hang"], ["text:awake"]], deadlines: Deadlines(firstToken: .milliseconds(1500)))) }
        try await passDeadline(.milliseconds(1500))
        let r = try await after(waits: [.milliseconds(100)], task).get()
        #expect(r.content == "awake")
        #expect(r.attempts.map(\.error.deadline) == ["first_token"])
        #expect(r.attempts[0].duration == .milliseconds(1500))
    }

    @Test func anIdleTimeoutIsNotRetried() async throws {
        let b = try await retrying(Self.exact())
        let task = Task { try await b.complete(.sequence([["text:begun", "hang"], ["text:never"]], deadlines: Deadlines(idle: .milliseconds(150)))) }
        try await passDeadline(.milliseconds(150))
        let err = try #require(await providerError { _ = try await task.value })
        #expect(err.deadline == "idle")
        #expect(try await pluginCalls(b) == 1)
    }

    @Test func theRequestsTotalDeadlineCoversEveryAttemptAndWait() async throws {
        // Each attempt hangs until its own 300 ms deadline; the caller's 1.3 s
        // total is the whole request's: 300 + 50 + 300 + 100 + 300 + 200 =
        // 1250 ms, so the fourth attempt gets only the 50 ms left, and the
        // ten attempts allowed are never reached.
        let b = try await retrying(RetryPolicy(maxAttempts: 10, initialDelay: .milliseconds(50), jitter: 0, attemptTimeout: .milliseconds(300)))
        let start = clock.now
        let task = Task { try await b.complete(.sequence([["hang"]], deadlines: Deadlines(total: .milliseconds(1300)))) }
        for (attempt, wait) in [(300, 50), (300, 100), (300, 200)] {
            try await passDeadline(.milliseconds(attempt))
            try await clock.wait(until: { $0.sleeps == [.milliseconds(wait)] })
            clock.advance(by: .milliseconds(wait))
        }
        try await passDeadline(.milliseconds(50))
        let err = try #require(await providerError { _ = try await task.value })
        #expect(clock.now - start == .milliseconds(1300))
        #expect(err.kind == .timeout)
        #expect(err.message == "the total deadline of 1.3 s passed")
        #expect(err.attempts.map(\.duration) == [300, 300, 300, 50].map { .milliseconds($0) })
        #expect(err.attempts.allSatisfy { $0.error.kind == .timeout && $0.error.deadline == "total" })
        // Four attempts, never more. (The host starts each call on a plugin
        // thread with its deadline already counting; on this manual clock the
        // deadline may pass before the thread runs, and the plugin is then
        // told to cancel before its work begins: some attempts never count.)
        #expect(try await pluginCalls(b) <= 4)
    }

    @Test func aTimeoutAtTheEndOfTheRequestNamesTheCallersDeadline() async throws {
        // Attempts get what is left of the deadline (on a real clock, 299 ms
        // of 300): the error still says what the caller asked for.
        let b = try await retrying(Self.exact())
        let task = Task { try await b.complete(.sequence([["hang"]], deadlines: Deadlines(total: .milliseconds(300)))) }
        try await passDeadline(.milliseconds(300))
        let err = try #require(await providerError { _ = try await task.value })
        #expect(err.kind == .timeout && err.deadline == "total")
        #expect(err.message == "the total deadline of 300 ms passed")
        let chain = FallbackBackend(name: "c", [.init(b)], clock: DescartesClock(clock))
        let viaChainTask = Task { try await chain.complete(.sequence([["hang"]], deadlines: Deadlines(total: .milliseconds(250)))) }
        try await passDeadline(.milliseconds(250))
        let viaChain = try #require(await providerError { _ = try await viaChainTask.value })
        #expect(viaChain.message == "the total deadline of 250 ms passed")
    }

    @Test func noRetryStartsWhenItsWaitWouldPassTheDeadline() async throws {
        let b = try await retrying(RetryPolicy(maxAttempts: 10, initialDelay: .seconds(1), jitter: 0))
        let task = Task { try await b.complete(.sequence([["error:provider_unavailable:down"]], deadlines: Deadlines(total: .seconds(3)))) }
        // 1 s waited; the next wait (2 s) would reach the 3 s deadline: give
        // up now with the provider's error, rather than sleep into a timeout.
        let err = try #require(await providerError { _ = try await after(waits: [.seconds(1)], task).get() })
        #expect(err.kind == .providerUnavailable)
        #expect(err.attempts.count == 2)
        #expect(clock.pending.sleeps.isEmpty)
    }

    @Test func cancellingDuringTheWaitEndsAtOnce() async throws {
        let b = try await retrying(RetryPolicy(maxAttempts: 3, initialDelay: .seconds(20), jitter: 0))
        let task = Task { try await b.complete(.sequence([["error:provider_unavailable:down"], ["text:late"]])) }
        // The first attempt failed and the 20 s wait began.
        try await clock.wait(until: { $0.sleeps == [.seconds(20)] })
        task.cancel()
        // The wait ended without the clock moving.
        try await clock.wait(until: { $0.sleeps.isEmpty })
        let result = await task.result
        guard case .failure(let e as ProviderError) = result else { Issue.record("expected an error, got \(result)"); return }
        #expect(e.kind == .cancelled)
        #expect(e.attempts.map(\.error.kind) == [.providerUnavailable, .cancelled])
        #expect(try await pluginCalls(b) == 1)
    }

    // MARK: Streams

    func collect(_ s: ModelStream) async -> (events: [StreamEvent], error: ProviderError?) {
        var events: [StreamEvent] = []
        do {
            for try await e in s { events.append(e) }
            return (events, nil)
        } catch {
            return (events, error)
        }
    }

    @Test func aStreamClosedBeforeItsFirstTokenIsRetriedUnseen() async throws {
        let b = try await retrying(Self.exact())
        let task = Task { await collect(b.stream(.sequence([["error:stream_closed:cut before anything"], ["words"]], prompt: "a b"))) }
        let (events, error) = try await after(waits: [.milliseconds(100)], task).get()
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
        let b = try await retrying(Self.exact(attempts: 5))
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
        let b = try await retrying(p)
        let task = Task { await collect(b.stream(.sequence([["text:partial", "error:stream_closed:cut"], ["text:whole answer"]]))) }
        let (events, error) = try await after(waits: [.milliseconds(100)], task).get()
        #expect(error == nil)
        let notices = events.compactMap { e -> String? in if case .notice(_, let m) = e { return m }; return nil }
        #expect(notices.first?.hasPrefix(RetryPolicy.restartNotice) == true)
        guard case .finish(let r) = events.last else { Issue.record("no finish"); return }
        #expect(r.content == "whole answer")
        #expect(try await pluginCalls(b) == 2)
    }
}
