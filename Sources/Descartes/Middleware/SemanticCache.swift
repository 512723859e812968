/// Answers a request with the answer to an earlier, similar one: the
/// conversation's text is embedded (by `embedder`), and when the nearest
/// cached conversation of the same provider instance and model is at least
/// `threshold` similar (cosine), its answer is returned without calling
/// the provider. Opt-in only (`SemanticCacheBackend`); nothing in
/// providers.yaml turns it on.
///
/// The risk: a similar question is not the same question. "Is 7 prime?"
/// and "Is 9 prime?" can be very close as vectors, and get the same answer.
/// Use it where a near-duplicate deserves the same answer (a FAQ, a help
/// bot), with a high threshold (0.95 and up, to be tuned against your
/// embedding model: scores differ between models), never where a detail of
/// the prompt changes the answer. Requests with tools, tool calls or tool
/// results, images, or a response format other than text never take the
/// semantic path: they are sent to the provider and not stored.
///
/// The entries are kept in memory, oldest out first past `maxEntries`; the
/// lookup compares the query's vector with every entry of its provider and
/// model (linear in the entries).
public final class SemanticCache: Sendable {
    /// What embeds the conversations (a `CacheBackend` in front of it keeps
    /// their vectors too).
    public let embedder: any ModelBackend
    /// The embedding model (nil: the embedder's default).
    public let model: String?
    /// The least cosine similarity that counts as the same request.
    public let threshold: Double
    public let maxEntries: Int

    private struct Item {
        var scope: String
        var vector: [Float]
        var response: ModelResponse
    }
    private let items = Lock<[Item]>([])

    public init(embedder: any ModelBackend, model: String? = nil, threshold: Double = 0.95, maxEntries: Int = 1000) {
        self.embedder = embedder
        self.model = model
        self.threshold = threshold
        self.maxEntries = maxEntries
    }

    /// The text a request is compared by: the system prompt and every
    /// message, with its role; nil when the request must not take the
    /// semantic path (tools, tool calls or results, images, a response
    /// format other than text).
    public static func text(of request: ModelRequest) -> String? {
        guard request.tools.isEmpty, request.responseFormat == .text else { return nil }
        var lines: [String] = []
        if let s = request.systemPrompt { lines.append("system: \(s)") }
        for m in request.messages {
            guard m.role != .tool, m.toolCalls.isEmpty, m.toolCallID == nil, m.images.isEmpty else { return nil }
            lines.append("\(m.role.rawValue): \(m.content)")
        }
        return lines.joined(separator: "\n")
    }

    /// The stored answer nearest to `vector` in `scope`, with its similarity,
    /// when it is at least `threshold`.
    func nearest(_ vector: [Float], scope: String) -> (ModelResponse, Double)? {
        items.withLock { items in
            var best: (ModelResponse, Double)?
            for i in items where i.scope == scope {
                guard let s = Embeddings.cosine(vector, i.vector), s >= threshold, s > (best?.1 ?? -2) else { continue }
                best = (i.response, s)
            }
            return best
        }
    }

    func store(_ vector: [Float], _ response: ModelResponse, scope: String) {
        items.withLock { items in
            items.append(Item(scope: scope, vector: vector, response: response))
            if items.count > maxEntries { items.removeFirst(items.count - maxEntries) }
        }
    }
}

/// Answers `complete` from a `SemanticCache` when an earlier request of the
/// same provider instance and model was similar enough (see `SemanticCache`
/// for the risk, and what never takes this path). A hit costs nothing
/// (`costUSD` 0) and has `metadata["cache"] = "semantic"` and
/// `metadata["similarity"]`. When the embedder fails, the request goes to
/// the provider as if there were no cache. `stream` is not cached (it goes
/// to the backend it wraps).
public struct SemanticCacheBackend: WrappingBackend {
    public let inner: any ModelBackend
    public let cache: SemanticCache

    public init(_ inner: any ModelBackend, cache: SemanticCache) {
        self.inner = inner
        self.cache = cache
    }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        guard let text = SemanticCache.text(of: request),
            let vector = try? await cache.embedder.embed(EmbeddingRequest([text], model: cache.model)).vectors.first
        else { return try await inner.complete(request) }
        let scope = "\(inner.name)\n\(request.model ?? "")"
        if let (found, similarity) = cache.nearest(vector, scope: scope) {
            var r = found
            r.costUSD = 0
            r.attempts = []
            r.metadata["cache"] = "semantic"
            r.metadata["similarity"] = .number(similarity)
            return r
        }
        let r = try await inner.complete(request)
        if r.finishReason != .error {
            var stored = r
            stored.attempts = []
            cache.store(vector, stored, scope: scope)
        }
        return r
    }

    public func stream(_ request: ModelRequest) -> ModelStream { inner.stream(request) }
}
