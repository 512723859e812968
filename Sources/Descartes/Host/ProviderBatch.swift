internal import CDescartesPlugin

/// Where a provider batch is.
public struct ProviderBatchStatus: Sendable, Hashable, CustomStringConvertible {
    /// The normalized state (docs/abi.md, "Provider batches"): an open set.
    public struct State: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public static let inProgress = State(rawValue: "in_progress")
        public static let cancelling = State(rawValue: "cancelling")
        public static let ended = State(rawValue: "ended")
        public static let cancelled = State(rawValue: "cancelled")
        public static let expired = State(rawValue: "expired")
        public static let failed = State(rawValue: "failed")
        /// The batch will not change any more.
        public var isFinal: Bool { self == .ended || self == .cancelled || self == .expired || self == .failed }
        /// Results can be fetched (those of the requests that finished).
        public var hasResults: Bool { self == .ended || self == .cancelled || self == .expired }
        public var description: String { rawValue }
    }

    public var id: String
    public var state: State
    /// The provider's own word for it ("validating", "finalizing", ...).
    public var providerStatus: String
    public var total: Int?
    public var succeeded: Int?
    public var failed: Int?
    /// Unix seconds.
    public var createdAt: Int?
    public var expiresAt: Int?
    public var message: String?

    public init(id: String, state: State, providerStatus: String = "", total: Int? = nil, succeeded: Int? = nil, failed: Int? = nil) {
        self.id = id
        self.state = state
        self.providerStatus = providerStatus
        self.total = total
        self.succeeded = succeeded
        self.failed = failed
    }

    public var description: String {
        var s = "batch \(id): \(state)"
        if !providerStatus.isEmpty && providerStatus != state.rawValue { s += " (\(providerStatus))" }
        if let t = total { s += ", \(succeeded ?? 0) succeeded, \(failed ?? 0) failed of \(t)" }
        if let m = message { s += ": \(m)" }
        return s
    }

    static func decode(_ v: JSONValue, provider: String) throws(ProviderError) -> ProviderBatchStatus {
        guard let id = v["id"]?.stringValue, let state = v["state"]?.stringValue else {
            throw ProviderError(.invalidResponse, "the plugin's batch status has no \"id\" or \"state\": \(Wire.excerpt(v.jsonText))", provider: provider)
        }
        var s = ProviderBatchStatus(id: id, state: State(rawValue: state), providerStatus: v["provider_status"]?.stringValue ?? state)
        s.total = v["counts"]?["total"]?.intValue
        s.succeeded = v["counts"]?["succeeded"]?.intValue
        s.failed = v["counts"]?["failed"]?.intValue
        s.createdAt = v["created_at"]?.intValue
        s.expiresAt = v["expires_at"]?.intValue
        s.message = v["message"]?.stringValue
        return s
    }
}

/// One request's outcome in a provider batch.
public struct ProviderBatchResult: Sendable {
    public var customID: String
    public var result: Result<ModelResponse, ProviderError>
}

/// A provider's own batch API (OpenAI `/v1/batches`, Anthropic
/// `/v1/messages/batches`), offered by its plugin through the
/// `"descartes.batch/1"` extension of the C ABI: submit many requests,
/// poll, fetch the results, possibly from another process.
///
/// ```swift
/// let batches = try ProviderBatches(try ProviderFactory.create("openai"))
/// let submitted = try await batches.submit([("q1", ModelRequest(prompt: "Hello"))])
/// let done = try await batches.wait(submitted.id, every: .seconds(30)) { print($0) }
/// for r in try await batches.results(done.id) { print(r.customID, r.result) }
/// ```
public struct ProviderBatches: Sendable {
    let backend: PluginBackend

    /// The provider instance's name.
    public var provider: String { backend.name }

    /// The batch API of `backend` (middlewares around it are looked
    /// through).
    /// - Throws: `unsupportedFeature` when its plugin offers none. (A plugin
    ///   isolated in a helper process offers what it offers in process: the
    ///   helper forwards every extension.)
    public init(_ backend: any ModelBackend) throws(ProviderError) {
        var current: any ModelBackend = backend
        for _ in 0..<16 {
            if let p = current as? PluginBackend {
                try p.checkOpen()
                guard BackendExtension.find(BackendOperation.batchExtension, in: p.raw) != nil else {
                    throw ProviderError(
                        .unsupportedFeature, "provider '\(p.name)' has no batch API (its plugin does not offer descartes.batch/1)",
                        provider: p.name)
                }
                self.backend = p
                return
            }
            if let lazy = current as? LazyBackend {
                current = try lazy.backend()
            } else if let w = current as? any WrappingBackend {
                current = w.inner
            } else {
                break
            }
        }
        throw ProviderError(.unsupportedFeature, "'\(backend.name)' is not a single provider with a batch API", provider: backend.name)
    }

    /// The rules of the ABI for custom ids.
    static func checkIDs(_ ids: [String]) throws(ProviderError) {
        var seen: Set<String> = []
        var problems: [String] = []
        for id in ids {
            if id.isEmpty || id.utf8.count > 64
                || !id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D || $0 == 0x5F })
            {
                problems.append("custom_id '\(id)': 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")
            }
            if !seen.insert(id).inserted { problems.append("custom_id '\(id)' appears twice") }
        }
        if !problems.isEmpty {
            throw ProviderError(.api, "the batch's custom ids are invalid", details: Array(problems.prefix(20)))
        }
    }

    func run(_ op: BackendOperation, _ input: JSONValue) async throws -> JSONValue {
        try backend.checkOpen()
        try await backend.initialize()
        return try await backend.document(op, input: input.jsonBytes, deadlines: backend.operationDeadlines)
    }

    /// Submits `requests`, each under its `customID`.
    public func submit(_ requests: [(customID: String, request: ModelRequest)]) async throws -> ProviderBatchStatus {
        try Self.checkIDs(requests.map(\.customID))
        guard !requests.isEmpty else { throw ProviderError(.api, "a batch needs at least one request", provider: provider) }
        var items: [JSONValue] = []
        items.reserveCapacity(requests.count)
        for r in requests {
            items.append(["custom_id": .string(r.customID), "request": Wire.json(r.request)])
        }
        return try ProviderBatchStatus.decode(try await run(.batchSubmit, ["requests": .array(items)]), provider: provider)
    }

    public func status(_ id: String) async throws -> ProviderBatchStatus {
        try ProviderBatchStatus.decode(try await run(.batchStatus, ["id": .string(id)]), provider: provider)
    }

    /// Asks the provider to cancel batch `id`.
    public func cancel(_ id: String) async throws -> ProviderBatchStatus {
        try ProviderBatchStatus.decode(try await run(.batchCancel, ["id": .string(id)]), provider: provider)
    }

    /// The results of batch `id`, in the order the provider gives them.
    /// Responses carry usage and, when the plugin gives none, a cost from
    /// the manifest's prices times the batch's price factor.
    public func results(_ id: String) async throws -> [ProviderBatchResult] {
        let doc = try await run(.batchResults, ["id": .string(id)])
        guard let items = doc["results"]?.arrayValue else {
            throw ProviderError(.invalidResponse, "the plugin's batch results have no \"results\" list", provider: provider)
        }
        let factor = doc["price_factor"]?.doubleValue ?? 1
        return try items.enumerated().map { (i, item) throws(ProviderError) -> ProviderBatchResult in
            guard let cid = item["custom_id"]?.stringValue else {
                throw ProviderError(.invalidResponse, "batch result \(i) has no custom_id", provider: provider)
            }
            if let e = item["error"], !e.isNull {
                var err = Wire.decodeError(e, provider: nil)
                err.provider = err.provider ?? provider
                err.message = backend.log.redactor.redact(err.message)
                return ProviderBatchResult(customID: cid, result: .failure(err))
            }
            do {
                var r = try Wire.decodeResponse(item["response"] ?? .null)
                r.provider = provider
                if r.costUSD == nil, let prices = backend.prices(for: r.model.isEmpty ? (backend.manifest.defaultModel ?? "") : r.model, fallback: nil) {
                    r.costUSD = prices.cost(of: r.usage) * factor
                }
                return ProviderBatchResult(customID: cid, result: .success(r))
            } catch {
                throw ProviderError(.invalidResponse, "batch result \(i) (\(cid)): \(error)", provider: provider)
            }
        }
    }

    /// Polls batch `id` every `interval` until its state is final, telling
    /// `onStatus` each status. Cancelling the task stops the polling (not
    /// the batch).
    public func wait(
        _ id: String, every interval: Duration, onStatus: (ProviderBatchStatus) -> Void = { _ in }
    ) async throws -> ProviderBatchStatus {
        while true {
            let s = try await status(id)
            onStatus(s)
            if s.state.isFinal { return s }
            do { try await Task.sleep(for: interval) } catch {
                throw ProviderError(.cancelled, "stopped waiting for batch \(id) (the batch goes on)", provider: provider)
            }
        }
    }
}

extension BackendOperation {
    /// The "descartes.batch/1" extension: its struct's four operations.
    static let batchExtension = "descartes.batch/1"
    static let batchSubmit = BackendOperation("batch submit", .extensionSlot(id: batchExtension, slot: 0))
    static let batchStatus = BackendOperation("batch status", .extensionSlot(id: batchExtension, slot: 1))
    static let batchResults = BackendOperation("batch results", .extensionSlot(id: batchExtension, slot: 2))
    static let batchCancel = BackendOperation("batch cancel", .extensionSlot(id: batchExtension, slot: 3))
}
