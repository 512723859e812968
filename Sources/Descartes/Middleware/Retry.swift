import Glibc

/// When and how long to retry a failed request.
///
/// The classification: an error is retried when its kind is in `retryOn`
/// (by default rate limited, provider unavailable, timeout, stream closed
/// and HTTP transport failures: `ProviderError.isRetryable`), except
///
/// - an error with `sideEffects` (an agent's turn that had already run
///   tools or written its answer): running it again would do that twice,
/// - an `idle` timeout: the model had started answering and stalled,
/// - anything after part of the answer reached the caller of a stream, unless
///   `restartStreams` is set,
/// - when the attempts, the `budget` or the request's total deadline are
///   spent, or the provider's `retry-after` exceeds `maxRetryAfter`.
///
/// Authentication, configuration and bad-request (`api`) errors, and
/// cancellation, are never retried by default.
///
/// The wait before retry *n* (1-based) is the *current* error's
/// `retryAfter` when it has one (plus up to `jitter × initialDelay`, so
/// that many clients told the same thing do not all come back at once), and
/// otherwise `initialDelay × multiplier^(n-1)`, at most `maxDelay`, reduced
/// by a random fraction of up to `jitter` of itself.
public struct RetryPolicy: Sendable, Hashable {
    /// Attempts in all, the first included (1 disables retries).
    public var maxAttempts: Int
    public var initialDelay: Duration
    public var maxDelay: Duration
    public var multiplier: Double
    /// 0...1: how much of each backoff is random.
    public var jitter: Double
    /// The longest `retry-after` honoured. A provider asking for more makes
    /// the retry layer give up at once with its error (a fallback can then
    /// move on) instead of retrying early into another refusal.
    public var maxRetryAfter: Duration
    /// The most time all attempts and waits of one request may take.
    public var budget: Duration?
    /// A total deadline for each attempt (within the request's own).
    public var attemptTimeout: Duration?
    /// The kinds of error that are retried.
    public var retryOn: Set<ProviderError.Kind>
    /// Whether a stream whose answer had begun reaching the caller may be
    /// started again. The caller then receives a `.notice` whose message
    /// begins with `RetryPolicy.restartNotice` and must discard what it
    /// received of the failed attempt.
    public var restartStreams: Bool

    public static let defaultRetryOn: Set<ProviderError.Kind> = [
        .rateLimited, .providerUnavailable, .timeout, .streamClosed, .http,
    ]
    /// The prefix of the notice that announces a restarted stream.
    public static let restartNotice = "descartes: the stream restarts"

    public init(
        maxAttempts: Int = 3, initialDelay: Duration = .milliseconds(500), maxDelay: Duration = .seconds(30),
        multiplier: Double = 2, jitter: Double = 0.2, maxRetryAfter: Duration = .seconds(60), budget: Duration? = nil,
        attemptTimeout: Duration? = nil, retryOn: Set<ProviderError.Kind> = RetryPolicy.defaultRetryOn,
        restartStreams: Bool = false
    ) {
        self.maxAttempts = maxAttempts
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.multiplier = multiplier
        self.jitter = jitter
        self.maxRetryAfter = maxRetryAfter
        self.budget = budget
        self.attemptTimeout = attemptTimeout
        self.retryOn = retryOn
        self.restartStreams = restartStreams
    }

    /// A policy that never retries.
    public static let none = RetryPolicy(maxAttempts: 1)

    /// What to do after a failure.
    package enum Decision: Sendable, Hashable {
        case retry(after: Duration)
        case stop(reason: String)
    }

    /// Decides about `error`, the failure of attempt `attempt` (1-based).
    ///
    /// - Parameters:
    ///   - outputReached: part of the answer already reached the caller.
    ///   - remaining: time left before the request's total deadline or the
    ///     budget, if either is set.
    ///   - random: a number in 0..<1 (the jitter's randomness).
    package func decide(
        _ error: ProviderError, attempt: Int, outputReached: Bool = false, remaining: Duration? = nil,
        random: Double = Double.random(in: 0..<1)
    ) -> Decision {
        if !error.sideEffects.isEmpty {
            return .stop(reason: "the request had side effects (\(error.sideEffects.joined(separator: "; "))); it is never repeated")
        }
        if error.providerType == CircuitBreaker.openType {
            return .stop(reason: "the provider's circuit breaker is open")
        }
        guard retryOn.contains(error.kind) else {
            return .stop(reason: "\(error.kind) errors are not retried")
        }
        if error.kind == .timeout && error.deadline == "idle" {
            return .stop(reason: "the answer had begun and then stalled (idle deadline)")
        }
        if outputReached && !restartStreams {
            return .stop(reason: "part of the answer already reached the caller")
        }
        if attempt >= maxAttempts {
            return .stop(reason: maxAttempts == 1 ? "retries are disabled" : "all \(maxAttempts) attempts failed")
        }
        let wait: Duration
        if let hint = error.retryAfter {
            if hint > maxRetryAfter {
                return .stop(reason: "the provider asked to wait \(hint.short), more than the \(maxRetryAfter.short) allowed")
            }
            wait = max(.zero, hint) + initialDelay.scaled(by: jitter * random)
        } else {
            var d = initialDelay.scaled(by: pow(multiplier, Double(attempt - 1)))
            if d > maxDelay { d = maxDelay }
            wait = d.scaled(by: 1 - jitter * random)
        }
        if let remaining, wait >= remaining {
            return .stop(reason: "waiting \(wait.short) would pass the deadline (\(max(.zero, remaining).short) left)")
        }
        return .retry(after: wait)
    }
}

extension RetryPolicy {
    /// `e` saying why it was not retried, for a rate limit or an error with
    /// a `retry-after` whose kind is retried and attempts were left (the
    /// hint above `maxRetryAfter`, or its wait past the deadline): without
    /// it a 429 that ends the request looks like one the policy forgot.
    func saysWhyNot(_ e: ProviderError, reason: String, attempt: Int) -> ProviderError {
        guard e.kind == .rateLimited || e.retryAfter != nil, retryOn.contains(e.kind), attempt < maxAttempts else { return e }
        var e = e
        e.message += " (not retried: \(reason))"
        return e
    }
}

/// Retries failed requests of the backend it wraps, as its `RetryPolicy`
/// says, and reports every failed attempt (`ModelResponse.attempts`, or
/// `ProviderError.attempts` when it gives up).
///
/// ```swift
/// let backend = RetryBackend(try ProviderFactory.create("openai"), policy: RetryPolicy(maxAttempts: 4))
/// ```
///
/// The request's total deadline (`ModelRequest.deadlines.total`) is the
/// deadline of the whole request, retries and waits included: each attempt
/// gets what is left of it. Waits are sleeps on `clock`, so cancelling the
/// calling task ends a wait at once, and a test's `ManualClock` decides
/// when a wait is over.
public struct RetryBackend: WrappingBackend {
    public let inner: any ModelBackend
    public let policy: RetryPolicy
    /// What waits and deadlines are counted on.
    public let clock: DescartesClock
    /// Where it says why it gives up (debug) and what it waits for (info).
    public let logSink: LogSink

    public init(
        _ inner: any ModelBackend, policy: RetryPolicy = RetryPolicy(), clock: DescartesClock = .continuous, logSink: LogSink = LogSink()
    ) {
        self.inner = inner
        self.policy = policy
        self.clock = clock
        self.logSink = logSink
    }

    /// The deadline of one request, from the request's total deadline and
    /// the policy's budget.
    struct RequestDeadline {
        let clock: DescartesClock
        let end: ContinuousClock.Instant?
        let attemptTimeout: Duration?

        init(_ request: ModelRequest, _ policy: RetryPolicy, clock: DescartesClock) {
            self.clock = clock
            let candidates = [request.deadlines.total, policy.budget].compactMap { $0 }
            end = candidates.min().map { clock.now + $0 }
            attemptTimeout = policy.attemptTimeout
        }

        var remaining: Duration? { end.map { $0 - clock.now } }

        /// `e` worded with the request's own deadline when that is what ended it.
        func explain(_ e: ProviderError, _ request: ModelRequest, _ policy: RetryPolicy) -> ProviderError {
            let total = request.deadlines.total
            if let t = total, policy.budget.map({ t <= $0 }) ?? true { return wholeRequestTimeout(e, end: end, limit: t, clock: clock) }
            return wholeRequestTimeout(e, end: end, limit: policy.budget, what: "retry budget", clock: clock)
        }

        /// The request for the next attempt, with what is left of the deadline.
        func attemptRequest(_ request: ModelRequest) -> ModelRequest? {
            var r = request
            var total = attemptTimeout
            if let left = remaining {
                if left <= .zero { return nil }
                total = total.map { min($0, left) } ?? left
            }
            if let total { r.deadlines.total = total }
            return r
        }
    }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        let deadline = RequestDeadline(request, policy, clock: clock)
        var log = AttemptLog()
        var attempt = 0
        while true {
            attempt += 1
            guard let r = deadline.attemptRequest(request) else {
                throw log.giveUp(deadlinePassed(request))
            }
            let started = clock.now
            do {
                return log.answered(try await inner.complete(r))
            } catch {
                let e = deadline.explain(ProviderError.from(error, provider: inner.name), request, policy)
                if e.kind == .cancelled { throw log.giveUp(e) }
                log.record(e, provider: inner.name, duration: clock.now - started)
                if Task.isCancelled { throw log.giveUp(ProviderError(.cancelled, "the request was cancelled", provider: inner.name)) }
                switch policy.decide(e, attempt: attempt, remaining: deadline.remaining) {
                case .stop(let reason):
                    logSink.log(.debug, "retry \(inner.name)", "giving up after attempt \(attempt): \(reason)")
                    throw policy.saysWhyNot(log.giveUp(e), reason: reason, attempt: attempt)
                case .retry(let wait):
                    logSink.log(
                        .info, "retry \(inner.name)",
                        "attempt \(attempt) failed (\(e.kind)\(e.status.map { " \($0)" } ?? "")): retrying in \(wait.short)")
                    try await sleep(wait, log: log)
                }
            }
        }
    }

    public func stream(_ request: ModelRequest) -> ModelStream {
        let me = self
        let inner = self.inner
        let policy = self.policy
        let clock = self.clock
        return Streams.make(provider: inner.name) { out in
            let deadline = RequestDeadline(request, policy, clock: clock)
            var log = AttemptLog()
            var attempt = 0
            while true {
                attempt += 1
                guard let r = deadline.attemptRequest(request) else {
                    throw log.giveUp(me.deadlinePassed(request))
                }
                let started = clock.now
                do throws(Streams.AttemptFailure) {
                    try await Streams.forward(inner.stream(r), to: out, provider: inner.name, answered: log.answered)
                    return
                } catch {
                    let e = deadline.explain(error.error, request, policy)
                    let reached = error.outputReached
                    if e.kind == .cancelled { throw log.giveUp(e) }
                    log.record(e, provider: inner.name, duration: clock.now - started)
                    if Task.isCancelled { throw log.giveUp(ProviderError(.cancelled, "the request was cancelled", provider: inner.name)) }
                    switch policy.decide(e, attempt: attempt, outputReached: reached, remaining: deadline.remaining) {
                    case .stop(let reason):
                        logSink.log(.debug, "retry \(inner.name)", "giving up after attempt \(attempt): \(reason)")
                        throw policy.saysWhyNot(log.giveUp(e), reason: reason, attempt: attempt)
                    case .retry(let wait):
                        let what = "\(e.kind)\(e.status.map { " (\($0))" } ?? "")"
                        if reached {
                            out.yield(.notice(level: "warning", message: "\(RetryPolicy.restartNotice) (attempt \(attempt + 1) of \(policy.maxAttempts)) after \(what): \(e.message)"))
                        }
                        out.yield(.notice(level: "warning", message: "\(inner.name): \(what): retry \(attempt) of \(policy.maxAttempts - 1) in \(wait.short)"))
                        try await me.sleep(wait, log: log)
                    }
                }
            }
        }
    }

    private func sleep(_ wait: Duration, log: AttemptLog) async throws(ProviderError) {
        do { try await clock.sleep(for: wait) } catch {
            throw log.giveUp(ProviderError(.cancelled, "the request was cancelled while waiting to retry", provider: inner.name))
        }
    }

    private func deadlinePassed(_ request: ModelRequest) -> ProviderError {
        let limit = [request.deadlines.total, policy.budget].compactMap { $0 }.min() ?? .zero
        let which = request.deadlines.total == limit ? "total deadline" : "retry budget"
        return ProviderError(.timeout, "the \(which) of \(format(limit)) passed", provider: inner.name, deadline: "total")
    }
}
