@_exported import DescartesCore

/// A model backend: one configured provider instance behind the common
/// request, response, stream and error types. This is the application side:
/// what the host library hands an application. (The plugin side is the
/// kit's `DescartesBackend`, which a Swift plugin implements and the kit
/// exports through the C ABI.)
///
/// Backends loaded from plugins implement it through the C ABI
/// (`ProviderFactory.create`); middlewares (retry, fallback, routing, cache,
/// rate limits) implement it by wrapping other backends; an application can
/// implement it directly for an in-process model.
///
/// Every operation reports failure as a `ProviderError`. Cancelling the
/// calling task cancels the request in the backend.
public protocol ModelBackend: Sendable {
    /// The instance name (e.g. "openai", "lab-vllm").
    var name: String { get }
    var mode: ModelProviderMode { get }

    /// Prepares the backend (verifies the endpoint or executable, caches the
    /// model list). Idempotent; other operations call it first when needed.
    func initialize() async throws(ProviderError)

    /// Checks that the backend can serve a request now, with a real call.
    /// - Throws: `ProviderError` saying why it cannot.
    func healthCheck() async throws(ProviderError) -> HealthReport

    /// Runs a request and returns the whole answer.
    func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse

    /// Runs a request and streams its events as they arrive. The stream ends
    /// with `.finish(response)` or throws a `ProviderError` (the sequence's
    /// `Failure`). Stopping the iteration early cancels the request.
    func stream(_ request: ModelRequest) -> ModelStream

    /// The models the provider offers.
    func listModels() async throws(ProviderError) -> [ModelInfo]

    /// Counts (or estimates) the input tokens of a request.
    func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate

    /// Embeds a batch of texts: one vector per input, in order (ABI 1.1).
    /// The default, for backends that cannot, throws `unsupportedFeature`;
    /// so does a plugin built against ABI 1.0.
    func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings

    /// Finishes or cancels requests in flight and releases resources. The
    /// backend serves nothing afterwards.
    func shutdown() async
}

extension ModelBackend {
    public func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings {
        throw ProviderError(.unsupportedFeature, "'\(name)' cannot embed text", provider: name)
    }

    /// Embeds texts with the provider's default embedding model (or `model`):
    /// `try await backend.embed(["a", "b"]).vectors`.
    public func embed(_ inputs: [String], model: String? = nil) async throws(ProviderError) -> Embeddings {
        try await embed(EmbeddingRequest(inputs, model: model))
    }

    /// One user message, answered whole: `try await backend.complete("Hello").text`.
    public func complete(_ prompt: String, model: String? = nil) async throws(ProviderError) -> ModelResponse {
        try await complete(ModelRequest(prompt: prompt, model: model))
    }

    /// One user message, streamed.
    public func stream(_ prompt: String, model: String? = nil) -> ModelStream {
        stream(ModelRequest(prompt: prompt, model: model))
    }

    /// Counts (or estimates) the tokens of a text sent as one user message.
    public func estimateTokens(_ text: String) async throws(ProviderError) -> TokenEstimate {
        try await estimateTokens(ModelRequest(prompt: text))
    }

    /// Collects a stream into its final response (for callers that want the
    /// stream's timing but the whole answer).
    public func collect(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        for try await event in stream(request) {
            if case .finish(let response) = event { return response }
        }
        throw ProviderError(.streamClosed, "the stream ended without a finish event", provider: name)
    }
}

/// Runs `body` with `backend` and shuts the backend down when `body` returns
/// or throws (or its task is cancelled), before this returns: for a backend
/// from a plugin, the plugin's `shutdown` and then its `destroy`; for a
/// middleware, the shutdown of what it wraps. See also
/// `ProviderFactory.withBackend(_:overrides:isolation:_:)`.
///
/// - Throws: what `body` threw, as its own type (`E`: a body that throws
///   only `ProviderError`, annotated `throws(ProviderError)`, makes this
///   throw `ProviderError`).
public func withBackend<B: ModelBackend, T, E: Error>(_ backend: B, _ body: (B) async throws(E) -> T) async throws(E) -> T {
    let result: T
    do {
        result = try await body(backend)
    } catch {
        await backend.shutdown()
        throw error
    }
    await backend.shutdown()
    return result
}

/// The events of one streamed request: an `AsyncSequence` whose `Failure` is
/// `ProviderError`, so `for try await event in backend.stream(request)`
/// throws only `ProviderError`. Stopping the iteration early (or cancelling
/// the iterating task) cancels the request.
///
/// A backend implemented in an application builds one from an
/// `AsyncThrowingStream` (`ModelStream(stream, provider: name)`) or with
/// `ModelStream.makeStream(provider:)`; whatever else the underlying stream
/// throws reaches the caller as a `ProviderError` (task cancellation as
/// `cancelled`, anything else as `backend`).
public struct ModelStream: AsyncSequence, Sendable {
    public typealias Element = StreamEvent
    public typealias Failure = ProviderError
    /// What feeds a stream made by `makeStream(provider:)`.
    public typealias Continuation = AsyncThrowingStream<StreamEvent, any Error>.Continuation

    private let base: AsyncThrowingStream<StreamEvent, any Error>
    private let provider: String?

    /// The events of `base`; an error it throws that is not a
    /// `ProviderError` is reported as one of `provider`.
    public init(_ base: AsyncThrowingStream<StreamEvent, any Error>, provider: String?) {
        self.base = base
        self.provider = provider
    }

    /// A stream that fails at once with `error`.
    public init(failing error: ProviderError) {
        self.init(AsyncThrowingStream { $0.finish(throwing: error) }, provider: error.provider)
    }

    /// A stream and the continuation that feeds it (unbounded buffering).
    public static func makeStream(provider: String?) -> (stream: ModelStream, continuation: Continuation) {
        let (s, c) = AsyncThrowingStream<StreamEvent, any Error>.makeStream(bufferingPolicy: .unbounded)
        return (ModelStream(s, provider: provider), c)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        public typealias Element = StreamEvent
        public typealias Failure = ProviderError
        var base: AsyncThrowingStream<StreamEvent, any Error>.AsyncIterator
        let provider: String?
        /// A `finish` event was returned: the end after it is the normal one.
        var finished = false

        public mutating func next() async throws(ProviderError) -> StreamEvent? {
            let event: StreamEvent?
            do { event = try await base.next() } catch { throw ProviderError.from(error, provider: provider) }
            return try checked(event)
        }

        public mutating func next(isolation actor: isolated (any Actor)?) async throws(ProviderError) -> StreamEvent? {
            let event: StreamEvent?
            do { event = try await base.next(isolation: actor) } catch { throw ProviderError.from(error, provider: provider) }
            return try checked(event)
        }

        /// `AsyncThrowingStream` answers a cancelled consumer with the end of
        /// the sequence (nil), not an error, and it does so at once: the
        /// producer's own `cancelled` error (the plugin's answer to its
        /// cancel) comes after the stream has already ended and is lost. So
        /// an end without a `finish` event while the iterating task is
        /// cancelled is the cancellation, reported as `cancelled`, whichever
        /// side got there first.
        private mutating func checked(_ event: StreamEvent?) throws(ProviderError) -> StreamEvent? {
            guard let event else {
                if !finished && Task.isCancelled {
                    finished = true
                    throw ProviderError(.cancelled, "the request was cancelled", provider: provider)
                }
                return nil
            }
            if case .finish = event { finished = true }
            return event
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: base.makeAsyncIterator(), provider: provider)
    }
}

extension ProviderError {
    /// Runs `body`, reporting what it throws as a `ProviderError` of
    /// `provider` (see `from(_:provider:)`).
    package static func catching<T>(provider: String?, _ body: () async throws -> T) async throws(ProviderError) -> T {
        do { return try await body() } catch { throw from(error, provider: provider) }
    }
}
