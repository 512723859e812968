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
    func initialize() async throws

    /// Checks that the backend can serve a request now, with a real call.
    /// - Throws: `ProviderError` saying why it cannot.
    func healthCheck() async throws -> HealthReport

    /// Runs a request and returns the whole answer.
    func complete(_ request: ModelRequest) async throws -> ModelResponse

    /// Runs a request and streams its events as they arrive. The stream ends
    /// with `.finish(response)` or throws a `ProviderError`. Stopping the
    /// iteration early cancels the request.
    func stream(_ request: ModelRequest) -> AsyncThrowingStream<StreamEvent, Error>

    /// The models the provider offers.
    func listModels() async throws -> [ModelInfo]

    /// Counts (or estimates) the input tokens of a request.
    func estimateTokens(_ request: ModelRequest) async throws -> TokenEstimate

    /// Finishes or cancels requests in flight and releases resources. The
    /// backend serves nothing afterwards.
    func shutdown() async
}

extension ModelBackend {
    /// One user message, answered whole: `try await backend.complete("Hello").text`.
    public func complete(_ prompt: String, model: String? = nil) async throws -> ModelResponse {
        try await complete(ModelRequest(prompt: prompt, model: model))
    }

    /// One user message, streamed.
    public func stream(_ prompt: String, model: String? = nil) -> AsyncThrowingStream<StreamEvent, Error> {
        stream(ModelRequest(prompt: prompt, model: model))
    }

    /// Counts (or estimates) the tokens of a text sent as one user message.
    public func estimateTokens(_ text: String) async throws -> TokenEstimate {
        try await estimateTokens(ModelRequest(prompt: text))
    }

    /// Collects a stream into its final response (for callers that want the
    /// stream's timing but the whole answer).
    public func collect(_ request: ModelRequest) async throws -> ModelResponse {
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
/// - Throws: what `body` threw.
public func withBackend<B: ModelBackend, T>(_ backend: B, _ body: (B) async throws -> T) async throws -> T {
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
