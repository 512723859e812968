import DescartesSupport

/// A provider a router may choose, with what its manifest says about it.
public struct RouteCandidate: Sendable {
    public var backend: any ModelBackend
    /// The model asked of this provider when it is chosen.
    public var model: ModelChoice
    /// What it can do ("tools", "vision", "reasoning", ...).
    public var capabilities: Set<String>
    /// The model's context window and output limit, in tokens, when known.
    public var contextLength: Int?
    public var maxOutputTokens: Int?
    /// Prices per million tokens, when known.
    public var prices: ModelPrices?

    public var name: String { backend.name }

    public init(
        _ backend: any ModelBackend, model: ModelChoice = .providerDefault, capabilities: Set<String> = [],
        contextLength: Int? = nil, maxOutputTokens: Int? = nil, prices: ModelPrices? = nil
    ) {
        self.backend = backend
        self.model = model
        self.capabilities = capabilities
        self.contextLength = contextLength
        self.maxOutputTokens = maxOutputTokens
        self.prices = prices
    }

    /// A candidate described by its manifest: the capabilities of the
    /// provider and of the model, the model's context, output limit and
    /// prices. `model` nil means the manifest's default model.
    public init(_ backend: any ModelBackend, manifest: PluginManifest, model: String? = nil) {
        let id = model ?? manifest.defaultModel
        let m = id.flatMap { manifest.model($0) }
        self.init(
            backend, model: model.map { .named($0) } ?? .providerDefault,
            capabilities: Set(manifest.capabilities).union(m?.capabilities ?? []), contextLength: m?.contextLength,
            maxOutputTokens: m?.maxOutputTokens, prices: m?.prices)
    }
}

/// A condition on a request, for routing rules. Every condition set must
/// hold; an empty condition always holds.
public struct RouteCondition: Sendable, Hashable, CustomStringConvertible {
    /// Input tokens (estimated) at least / at most.
    public var minInputTokens: Int?
    public var maxInputTokens: Int?
    /// The request has tools (true) or has none (false).
    public var tools: Bool?
    /// The last user message contains one of these (case-insensitive).
    public var containsAny: [String]

    public init(minInputTokens: Int? = nil, maxInputTokens: Int? = nil, tools: Bool? = nil, containsAny: [String] = []) {
        self.minInputTokens = minInputTokens
        self.maxInputTokens = maxInputTokens
        self.tools = tools
        self.containsAny = containsAny
    }

    func matches(_ request: ModelRequest, inputTokens: Int) -> Bool {
        if let m = minInputTokens, inputTokens < m { return false }
        if let m = maxInputTokens, inputTokens > m { return false }
        if let t = tools, t == request.tools.isEmpty { return false }
        if !containsAny.isEmpty {
            let text = (request.messages.last { $0.role == .user }?.content ?? "").lowercased()
            if !containsAny.contains(where: { text.contains($0.lowercased()) }) { return false }
        }
        return true
    }

    public var description: String {
        var parts: [String] = []
        if let m = minInputTokens { parts.append("input >= \(m) tokens") }
        if let m = maxInputTokens { parts.append("input <= \(m) tokens") }
        if let t = tools { parts.append(t ? "with tools" : "without tools") }
        if !containsAny.isEmpty { parts.append("mentions \(containsAny.map { "'\($0)'" }.joined(separator: " or "))") }
        return parts.isEmpty ? "always" : parts.joined(separator: ", ")
    }
}

/// "When the condition holds, use this candidate."
public struct RouteRule: Sendable, Hashable {
    public var when: RouteCondition
    /// A candidate's name.
    public var use: String

    public init(when: RouteCondition, use: String) {
        self.when = when
        self.use = use
    }
}

/// How a router orders the candidates that can serve a request.
public enum RouteStrategy: Sendable, Hashable {
    /// In the configured order.
    case ordered
    /// Cheapest first, by estimated cost (manifest prices, the request's
    /// estimated input and its `maxTokens`, or the policy's expected output).
    /// Candidates without prices come last.
    case cheapest
    /// The first rule that holds picks the first candidate; the others
    /// follow in the configured order.
    case rules([RouteRule])
}

public struct RoutePolicy: Sendable, Hashable {
    public var strategy: RouteStrategy
    /// Capabilities every request of this route needs.
    public var requires: Set<String>
    /// When the chosen provider fails, try the next eligible one (as a
    /// fallback chain would, with its default policy).
    public var fallback: Bool
    /// The output assumed for cost estimates when the request sets no
    /// `maxTokens`.
    public var expectedOutputTokens: Int

    public init(strategy: RouteStrategy = .ordered, requires: Set<String> = [], fallback: Bool = true, expectedOutputTokens: Int = 512) {
        self.strategy = strategy
        self.requires = requires
        self.fallback = fallback
        self.expectedOutputTokens = expectedOutputTokens
    }
}

/// Why a router chose what it chose (`descartes complete --explain`).
public struct RouteDecision: Sendable, Hashable, CustomStringConvertible {
    public struct Verdict: Sendable, Hashable {
        public var candidate: String
        /// Nil when eligible; otherwise why not.
        public var rejected: String?
        /// Estimated cost in US dollars, when prices are known.
        public var estimatedCostUSD: Double?
    }

    public var route: String
    public var inputTokens: Int
    public var required: [String]
    public var verdicts: [Verdict]
    /// The candidates in the order they will be tried.
    public var order: [String]
    /// How the order was made.
    public var reason: String

    public var description: String {
        var lines = ["route '\(route)': input about \(inputTokens) tokens, needs \(required.isEmpty ? "nothing special" : required.joined(separator: ", "))"]
        for v in verdicts {
            var l = "  \(v.candidate): "
            l += v.rejected.map { "rejected: \($0)" } ?? "eligible"
            if let c = v.estimatedCostUSD { l += ", estimated $\(formatCost(c))" }
            lines.append(l)
        }
        lines.append("  \(reason)")
        lines.append(order.isEmpty ? "  no candidate can serve this request" : "  order: \(order.joined(separator: " -> "))")
        return lines.joined(separator: "\n")
    }
}

func formatCost(_ c: Double) -> String {
    if c == 0 { return "0" }
    var digits = 2
    while digits < 8 && c < pow10(-digits + 1) { digits += 1 }
    let scale = pow10(digits + 1)
    let v = (c * scale).rounded() / scale
    return "\(v)"
}

private func pow10(_ n: Int) -> Double {
    var r = 1.0
    if n >= 0 { for _ in 0..<n { r *= 10 } } else { for _ in 0..<(-n) { r /= 10 } }
    return r
}

/// Chooses a provider per request: first the candidates that can serve it
/// (capabilities the request needs: tools when it has tools, "reasoning"
/// when it asks for thinking, what the route requires and what
/// `metadata["requires"]` lists, comma-separated; and a context window that
/// holds the estimated input plus `maxTokens`), then in the strategy's order
/// (configured, cheapest, or by rules on the request). With `fallback`, the
/// next eligible candidate answers when the first fails.
///
/// Each candidate is asked for its own model (`RouteCandidate.model`), not
/// the request's.
public struct RouterBackend: ModelBackend {
    public let name: String
    public let candidates: [RouteCandidate]
    public let policy: RoutePolicy
    /// Told every decision (the CLI prints it for `--explain`).
    public let observer: (@Sendable (RouteDecision) -> Void)?
    /// Where it logs each decision (info).
    public let logSink: LogSink

    public var mode: ModelProviderMode { candidates.first?.backend.mode ?? .api }

    public init(
        name: String, candidates: [RouteCandidate], policy: RoutePolicy = RoutePolicy(),
        observer: (@Sendable (RouteDecision) -> Void)? = nil, logSink: LogSink = LogSink()
    ) {
        precondition(!candidates.isEmpty, "a route needs at least one candidate")
        self.name = name
        self.candidates = candidates
        self.policy = policy
        self.observer = observer
        self.logSink = logSink
    }

    /// The same router, telling `observer` its decisions.
    public func observed(by observer: @escaping @Sendable (RouteDecision) -> Void) -> RouterBackend {
        RouterBackend(name: name, candidates: candidates, policy: policy, observer: observer, logSink: logSink)
    }

    /// The capabilities `request` needs.
    func required(_ request: ModelRequest) -> [String] {
        var need = policy.requires
        if !request.tools.isEmpty { need.insert("tools") }
        if request.messages.contains(where: { !$0.images.isEmpty }) { need.insert("vision") }
        for k in ["thinking", "reasoning", "reasoning_effort"] where request.options[k] != nil { need.insert("reasoning") }
        if let listed = request.metadata["requires"] {
            for r in listed.split(separator: ",") {
                let t = r.trimmingSpaces
                if !t.isEmpty { need.insert(t) }
            }
        }
        return need.sorted()
    }

    /// Decides where `request` goes, without sending it.
    public func decide(_ request: ModelRequest) -> RouteDecision {
        let input = Heuristics.tokens(request).tokens
        let need = required(request)
        let output = request.maxTokens ?? policy.expectedOutputTokens
        var verdicts: [RouteDecision.Verdict] = []
        var eligible: [RouteCandidate] = []
        for c in candidates {
            var v = RouteDecision.Verdict(candidate: c.name)
            if let p = c.prices { v.estimatedCostUSD = (Double(input) * p.input + Double(output) * p.output) / 1_000_000 }
            let missing = need.filter { !c.capabilities.contains($0) }
            if !missing.isEmpty {
                v.rejected = "lacks \(missing.joined(separator: ", "))"
            } else if let ctx = c.contextLength, input + (request.maxTokens ?? 0) > ctx {
                v.rejected = "context of \(ctx) tokens is too small for about \(input + (request.maxTokens ?? 0))"
            } else if let max = c.maxOutputTokens, let asked = request.maxTokens, asked > max {
                v.rejected = "produces at most \(max) tokens, \(asked) asked"
            } else {
                eligible.append(c)
            }
            verdicts.append(v)
        }
        var order = eligible.map(\.name)
        var reason: String
        switch policy.strategy {
        case .ordered:
            reason = "strategy: the configured order"
        case .cheapest:
            let cost = Dictionary(uniqueKeysWithValues: verdicts.map { ($0.candidate, $0.estimatedCostUSD) })
            order = eligible.enumerated().sorted { a, b in
                switch (cost[a.element.name] ?? nil, cost[b.element.name] ?? nil) {
                case (let x?, let y?): return x != y ? x < y : a.offset < b.offset
                case (.some, nil): return true
                case (nil, .some): return false
                case (nil, nil): return a.offset < b.offset
                }
            }.map(\.element.name)
            reason = "strategy: cheapest first (expecting \(output) output tokens)"
        case .rules(let rules):
            var notes: [String] = []
            var picked: String? = nil
            for (i, rule) in rules.enumerated() where rule.when.matches(request, inputTokens: input) {
                guard let at = order.firstIndex(of: rule.use) else {
                    notes.append("rule \(i + 1) (\(rule.when)) held but \(rule.use) is not eligible")
                    continue
                }
                order.insert(order.remove(at: at), at: 0)
                picked = "rule \(i + 1) (\(rule.when)) chose \(rule.use)"
                break
            }
            reason = "strategy: rules; " + (notes + [picked ?? "no rule chose an eligible candidate, so the configured order"]).joined(separator: "; ")
        }
        if !policy.fallback && order.count > 1 { order = [order[0]] }
        return RouteDecision(route: name, inputTokens: input, required: need, verdicts: verdicts, order: order, reason: reason)
    }

    /// The backend that serves a decision: the first candidate, or a
    /// fallback chain over the ordered ones.
    func target(_ d: RouteDecision) throws(ProviderError) -> (any ModelBackend, ModelChoice) {
        let chosen = d.order.compactMap { n in candidates.first { $0.name == n } }
        guard let first = chosen.first else {
            let why = d.verdicts.compactMap { v in v.rejected.map { "\(v.candidate): \($0)" } }
            throw ProviderError(
                .unsupportedFeature, "no provider of route '\(name)' can serve this request", provider: name, details: why)
        }
        if chosen.count == 1 { return (first.backend, first.model) }
        return (FallbackBackend(name: name, chosen.map { FallbackBackend.Entry($0.backend, model: $0.model) }, logSink: logSink), .request)
    }

    /// Routing facts leave the request: `metadata["requires"]` is the
    /// router's, not the provider's.
    func forwarded(_ request: ModelRequest) -> ModelRequest {
        var r = request
        r.metadata["requires"] = nil
        return r
    }

    func route(_ request: ModelRequest) throws(ProviderError) -> (any ModelBackend, ModelRequest) {
        let d = decide(request)
        observer?(d)
        logSink.log(.info, "route \(name)", d.description)
        let (backend, model) = try target(d)
        return (backend, model.apply(to: forwarded(request)))
    }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        let (backend, r) = try route(request)
        return try await backend.complete(r)
    }

    public func stream(_ request: ModelRequest) -> ModelStream {
        do {
            let (backend, r) = try route(request)
            return backend.stream(r)
        } catch {
            return ModelStream(failing: error)
        }
    }

    var all: FallbackBackend { FallbackBackend(name: name, candidates.map { .init($0.backend, model: $0.model) }, logSink: logSink) }

    public func initialize() async throws(ProviderError) { try await all.initialize() }
    public func healthCheck() async throws(ProviderError) -> HealthReport { try await all.healthCheck() }
    public func listModels() async throws(ProviderError) -> [ModelInfo] { try await all.listModels() }
    public func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate {
        try await all.estimateTokens(forwarded(request))
    }
    public func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings { try await all.embed(request) }
    public func shutdown() async { await all.shutdown() }
}
