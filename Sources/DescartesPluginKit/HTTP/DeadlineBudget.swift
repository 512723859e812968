import Dispatch
internal import DescartesSupport

/// What is left of a request's deadlines, counted from when the plugin
/// received it.
///
/// A local server answers "not yet" in two ways while it loads a model: it
/// holds the response back (Ollama: the first byte comes once the model is
/// in memory), or it says so (llama.cpp's server: HTTP 503 "Loading model";
/// Ollama when its queue is full: 503 "server busy"). A plugin waits through
/// both, but never past the request's deadlines: each new attempt gets only
/// the time that remains (`timeouts()`), and once a deadline has passed the
/// plugin reports a `timeout` naming it (`expired(...)`), as the host would.
///
/// Before the first token the binding limits are `first_token` and
/// `total`; `connect` and `idle` apply to each attempt as given. Time is
/// `clock`'s (a `ManualClock` in tests).
public struct DeadlineBudget: Sendable {
    public let deadlines: Deadlines
    public let clock: DescartesClock
    public let start: ContinuousClock.Instant

    /// - Parameter start: when the request arrived (by default `clock`'s now).
    public init(_ deadlines: Deadlines, clock: DescartesClock = .continuous, start: ContinuousClock.Instant? = nil) {
        self.deadlines = deadlines
        self.clock = clock
        self.start = start ?? clock.now
    }

    public var elapsed: Duration { clock.now - start }

    /// The deadline that ends the wait for the first token soonest, and the
    /// time it leaves (zero or negative once it passed); nil when the request
    /// has neither a first-token nor a total deadline.
    public func beforeFirstToken() -> (which: String, limit: Duration, left: Duration)? {
        let e = elapsed
        var best: (String, Duration, Duration)? = nil
        if let f = deadlines.firstToken { best = ("first_token", f, f - e) }
        if let t = deadlines.total, best == nil || t - e < best!.2 { best = ("total", t, t - e) }
        return best
    }

    /// HTTP timeouts for an attempt starting now: first byte and total
    /// shortened by the time already spent (at least 1 ms, so a spent budget
    /// fails at once rather than meaning "no limit").
    public func timeouts() -> HTTPTimeouts {
        let e = elapsed
        func left(_ d: Duration?) -> Int? { d.map { max(1, ($0 - e).milliseconds) } }
        return HTTPTimeouts(
            connect: deadlines.connect?.milliseconds, firstByte: left(deadlines.firstToken),
            idle: deadlines.idle?.milliseconds, total: left(deadlines.total))
    }

    /// The `timeout` error for a deadline that passed, with the limit the
    /// caller set (not what was left of it when the last attempt began).
    public func expired(_ which: String, while doing: String? = nil) -> ProviderError {
        let limit: Duration?
        switch which {
        case "first_token": limit = deadlines.firstToken
        case "idle": limit = deadlines.idle
        case "connect": limit = deadlines.connect
        default: limit = deadlines.total
        }
        let words = which.split(separator: "_").joined(separator: " ")
        let amount = limit.map { " of \(Self.format($0))" } ?? ""
        let context = doing.map { " \($0)" } ?? ""
        return ProviderError(.timeout, "the \(words) deadline\(amount) passed\(context)", deadline: which)
    }

    /// The error for an HTTP failure of an attempt made with `timeouts()`:
    /// a timeout names the request's own deadline and limit; anything else
    /// is mapped as `HTTPError.providerError` does.
    public func error(for e: HTTPError, endpoint: String, while doing: String? = nil) -> ProviderError {
        if case .timeout(let which) = e.kind { return expired(which, while: doing) }
        return e.providerError(endpoint: endpoint)
    }

    /// "1.5 s", "300 ms", "2 s".
    public static func format(_ d: Duration) -> String { d.exactText }

    /// How long to wait before asking again after the `attempt`-th "not yet"
    /// (0-based): the server's Retry-After when it gave one, else 250 ms
    /// doubling up to 2 s.
    public static func backoff(attempt: Int, retryAfter: Duration?) -> Duration {
        if let r = retryAfter { return max(r, .milliseconds(10)) }
        return .milliseconds(min(2000, 250 << min(attempt, 4)))
    }
}

/// Runs work later on a background queue (retries, "still waiting" notices).
/// A plugin must not block its callers; this never does.
public enum Later {
    public static func run(after delay: Duration, _ body: @escaping @Sendable () -> Void) {
        let ms = max(0, delay.milliseconds)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(ms), execute: body)
    }
}

extension HTTPClient {
    /// `fetch` for async code (metadata calls: model lists, versions,
    /// tokenizers): cancelling the task cancels the transfer.
    public func fetch(_ request: HTTPRequest) async -> Result<HTTPResponse, HTTPError> {
        let box = TransferBox()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Result<HTTPResponse, HTTPError>, Never>) in
                let t = fetch(request) { c.resume(returning: $0) }
                box.set(t)
            }
        } onCancel: {
            box.cancel()
        }
    }
}

/// A transfer that may be cancelled before it is known.
final class TransferBox: Sendable {
    private let state = Lock<(transfer: HTTPTransfer?, cancelled: Bool)>((nil, false))
    func set(_ t: HTTPTransfer) {
        if state.withLock({ s -> Bool in
            s.transfer = t
            return s.cancelled
        }) { t.cancel() }
    }
    func cancel() {
        state.withLock { s -> HTTPTransfer? in
            s.cancelled = true
            return s.transfer
        }?.cancel()
    }
}
