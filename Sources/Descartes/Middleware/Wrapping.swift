// What every middleware shares: forwarding what it does not change, building
// a stream from an async body, and keeping the record of failed attempts.

/// A backend that wraps one other backend and forwards every operation it
/// does not change. Middlewares (retry, cache, rate limits, stats) conform
/// and implement only `complete` and `stream`.
public protocol WrappingBackend: ModelBackend {
    /// The backend this one wraps.
    var inner: any ModelBackend { get }
}

extension WrappingBackend {
    public var name: String { inner.name }
    public var mode: ModelProviderMode { inner.mode }
    public func initialize() async throws(ProviderError) { try await inner.initialize() }
    public func healthCheck() async throws(ProviderError) -> HealthReport { try await inner.healthCheck() }
    public func listModels() async throws(ProviderError) -> [ModelInfo] { try await inner.listModels() }
    public func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate {
        try await inner.estimateTokens(request)
    }
    public func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings { try await inner.embed(request) }
    public func shutdown() async { await inner.shutdown() }
}

/// Stream plumbing for middlewares.
enum Streams {
    typealias Continuation = ModelStream.Continuation

    /// A stream fed by `body` on a task of its own. The stream finishes when
    /// `body` returns and throws what `body` throws (as a `ProviderError`).
    /// Stopping the iteration early cancels the task, which cancels whatever
    /// `body` awaits (the inner stream, a backoff sleep).
    static func make(
        provider: String, _ body: @escaping @Sendable (Continuation) async throws -> Void
    ) -> ModelStream {
        let (stream, continuation) = ModelStream.makeStream(provider: provider)
        let task = Task {
            do {
                try await body(continuation)
                continuation.finish()
            } catch {
                continuation.finish(throwing: ProviderError.from(error, provider: provider))
            }
        }
        continuation.onTermination = { termination in
            if case .cancelled = termination { task.cancel() }
        }
        return stream
    }

    /// Whether an event carries part of the answer (text, reasoning, a tool
    /// call): once one reached the caller, a stream cannot be silently redone.
    static func isOutput(_ e: StreamEvent) -> Bool {
        switch e {
        case .textDelta, .reasoningDelta, .reasoningSignature, .reasoningRedacted, .toolCallStart, .toolCallDelta, .toolCallEnd: return true
        default: return false
        }
    }

    /// One failed attempt of a stream, and whether part of its answer had
    /// reached the caller.
    struct AttemptFailure: Error {
        var error: ProviderError
        var outputReached: Bool
    }

    /// Forwards one attempt's stream to `out` and ends with its finish event
    /// (passed through `answered`). Events before the answer's first part
    /// (start, usage) are held back, so that a failed attempt followed by
    /// another shows the caller one start; notices pass at once.
    /// - Throws: `AttemptFailure`.
    static func forward(
        _ stream: ModelStream, to out: Continuation, provider: String,
        answered: (ModelResponse) -> ModelResponse
    ) async throws(AttemptFailure) {
        var reached = false
        var held: [StreamEvent] = []
        do {
            for try await event in stream {
                if case .finish(let response) = event {
                    for h in held { out.yield(h) }
                    out.yield(.finish(answered(response)))
                    return
                }
                if isOutput(event) {
                    if !reached {
                        reached = true
                        for h in held { out.yield(h) }
                        held.removeAll()
                    }
                    out.yield(event)
                } else if reached {
                    out.yield(event)
                } else if case .notice = event {
                    out.yield(event)
                } else {
                    held.append(event)
                }
            }
            if Task.isCancelled { throw CancellationError() }
            throw ProviderError(.streamClosed, "the stream ended without a finish event", provider: provider)
        } catch {
            throw AttemptFailure(error: ProviderError.from(error, provider: provider), outputReached: reached)
        }
    }

    /// Events of a whole response, for backends that replay one (the cache)
    /// or answer `stream` with `complete`.
    static func events(of r: ModelResponse) -> [StreamEvent] {
        var out: [StreamEvent] = [.start(id: r.id, model: r.model.isEmpty ? nil : r.model)]
        // Block by block, each thinking block ended by its signature, the
        // redacted ones in their places (a response without blocks: its
        // joined reasoning and signature).
        if r.reasoningBlocks.isEmpty {
            if let reasoning = r.reasoning, !reasoning.isEmpty { out.append(.reasoningDelta(reasoning)) }
            if let signature = r.reasoningSignature { out.append(.reasoningSignature(signature)) }
        }
        for b in r.reasoningBlocks {
            switch b {
            case .thinking(let t, let signature):
                if !t.isEmpty { out.append(.reasoningDelta(t)) }
                if let signature { out.append(.reasoningSignature(signature)) }
            case .redacted(let data): out.append(.reasoningRedacted(data))
            }
        }
        if !r.content.isEmpty { out.append(.textDelta(r.content)) }
        for (i, c) in r.toolCalls.enumerated() {
            out.append(.toolCallStart(index: i, id: c.id, name: c.name))
            out.append(.toolCallDelta(index: i, arguments: c.arguments))
            out.append(.toolCallEnd(index: i))
        }
        out.append(.usage(r.usage))
        return out
    }
}

extension ProviderError {
    /// `error` as a `ProviderError`: task cancellation becomes `cancelled`,
    /// anything else `backend`.
    package static func from(_ error: any Error, provider: String?) -> ProviderError {
        if let e = error as? ProviderError { return e }
        if error is CancellationError { return ProviderError(.cancelled, "the request was cancelled", provider: provider) }
        return ProviderError(.backend, "\(error)", provider: provider)
    }

    /// This error without the attempts it carries (as stored in an Attempt).
    var withoutAttempts: ProviderError {
        var e = self
        e.attempts = []
        return e
    }
}

/// The failed attempts of one request across middlewares, flattened: an
/// inner middleware's error already lists its own attempts (with their own
/// durations), which are taken over as they are.
struct AttemptLog: Sendable {
    private(set) var failures: [Attempt] = []

    /// Records a failure of `provider` that took `duration`.
    mutating func record(_ e: ProviderError, provider: String, duration: Duration) {
        if e.attempts.isEmpty {
            failures.append(Attempt(provider: e.provider ?? provider, error: e, duration: duration))
        } else {
            failures.append(contentsOf: e.attempts.map { a in
                var a = a
                a.error = a.error.withoutAttempts
                return a
            })
        }
    }

    /// The error to throw when giving up with `e` (already recorded): it
    /// lists every attempt when there was more than one.
    func giveUp(_ e: ProviderError) -> ProviderError {
        var e = e
        var all = failures
        if let last = all.last, last.error != e.withoutAttempts {
            // A new error (a deadline, a cancellation) after the recorded ones.
            all.append(Attempt(provider: e.provider ?? last.provider, error: e.withoutAttempts, duration: .zero))
        }
        e.attempts = all.count > 1 ? all : []
        return e
    }

    /// A response that came after the recorded failures.
    func answered(_ r: ModelResponse) -> ModelResponse {
        guard !failures.isEmpty else { return r }
        var r = r
        r.attempts = failures + r.attempts
        return r
    }
}

/// A timeout at the end of a whole request, worded with the deadline the
/// caller set: each attempt was given what was left of it (299 ms of a
/// 300 ms deadline), which is not what the caller should read.
func wholeRequestTimeout(
    _ e: ProviderError, end: ContinuousClock.Instant?, limit: Duration?, what: String = "total deadline", clock: DescartesClock
) -> ProviderError {
    guard e.kind == .timeout, e.deadline == "total", let end, let limit, end - clock.now <= .milliseconds(50) else { return e }
    var e = e
    e.message = "the \(what) of \(format(limit)) passed"
    return e
}

/// Which model a wrapped provider is asked for.
public enum ModelChoice: Sendable, Hashable, CustomStringConvertible {
    /// The request's model (nil: the provider's default).
    case request
    /// The provider's default model, whatever the request says (a fallback
    /// to another provider, which would not know the first one's model).
    case providerDefault
    /// This model.
    case named(String)

    func apply(to request: ModelRequest) -> ModelRequest {
        switch self {
        case .request: return request
        case .providerDefault:
            var r = request
            r.model = nil
            return r
        case .named(let m):
            var r = request
            r.model = m
            return r
        }
    }

    public var description: String {
        switch self {
        case .request: return "the request's model"
        case .providerDefault: return "its default model"
        case .named(let m): return m
        }
    }
}

extension Duration {
    /// A short human form: "850 ms", "1.5 s".
    var short: String {
        let ms = milliseconds
        if ms < 1000 { return "\(ms) ms" }
        let tenths = (ms + 50) / 100
        return tenths % 10 == 0 ? "\(tenths / 10) s" : "\(tenths / 10).\(tenths % 10) s"
    }

    init(secondsDouble s: Double) {
        self = .nanoseconds(Int64((s * 1e9).rounded()))
    }

    func scaled(by f: Double) -> Duration { Duration(secondsDouble: seconds * f) }
}
