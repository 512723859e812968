import DescartesSupport
/// The reliability and routing sections of providers.yaml: `retry:`,
/// `fallbacks:`, `routes:`, `cache:` and `limits:` (docs/reliability.md),
/// and `shared:`, the store that shares limits, cool-downs and the cache
/// between processes (docs/scaling.md).
///
/// The providers.yaml loader hands each section's node to `parse`, which
/// reports every problem at once with its file, line and column;
/// `ReliableProviders` then builds backends from the result.
public struct ReliabilitySettings: Sendable {
    /// The retry policy of every provider, and per-provider overrides.
    public var retry = RetryPolicy()
    public var retryByProvider: [String: RetryPolicy] = [:]
    public var fallbacks: [String: FallbackSpec] = [:]
    public var routes: [String: RouteSpec] = [:]
    public var cache: CacheSpec?
    public var limits: [String: RateLimits] = [:]
    /// Limits per model of a provider (`limits.NAME.models.MODEL`), by
    /// provider, then model name as requests name it; each applies beside
    /// the provider's own.
    public var modelLimits: [String: [String: RateLimits]] = [:]
    /// Circuit breakers per provider (`circuit_breakers:`).
    public var circuitBreakers: [String: CircuitBreakerSettings] = [:]
    /// The shared store (`shared:`); nil: every process keeps its own state.
    public var shared: SharedSettings?
    /// Spend budgets per request label (`budgets:`).
    public var budgets = BudgetSettings()
    /// Where each name was defined, for messages about it.
    public var locations: [String: SourcePosition] = [:]

    public init() {}

    /// The sections this type reads, in the order of the docs.
    package static let sections = ["retry", "fallbacks", "routes", "cache", "limits", "circuit_breakers", "shared", "budgets"]

    /// One provider of a chain or route, as configured.
    public struct Member: Sendable, Hashable {
        /// A provider, or the name of another chain or route.
        public var name: String
        /// nil: see `FallbackSpec`/`RouteSpec`.
        public var model: String?
        public var location: SourcePosition
    }

    public struct FallbackSpec: Sendable, Hashable {
        public var name: String
        public var chain: [Member]
        public var policy: FallbackPolicy
    }

    public struct RouteSpec: Sendable, Hashable {
        public var name: String
        public var candidates: [Member]
        public var policy: RoutePolicy
    }

    public struct CacheSpec: Sendable, Hashable {
        public var enabled: Bool
        public var limits: CacheLimits
        /// The providers whose answers are cached; nil for all.
        public var providers: [String]?
        /// Whether those providers' embeddings are cached too, one entry
        /// per text (`cache.embeddings`, true unless set false).
        public var embeddings: Bool = true
        public var location: SourcePosition
    }

    /// Every name a chain or route may refer to that these settings define.
    public var definedNames: Set<String> { Set(fallbacks.keys).union(routes.keys) }

    // MARK: Parsing

    /// Reads the sections (keys of `sections` among `ReliabilitySettings.sections`).
    /// - Returns: the settings and every problem found; the settings hold
    ///   whatever was valid.
    /// - Parameter home: the home directory `~` in `cache.directory` expands to.
    package static func parse(_ sections: [String: YAMLNode], home: String = Environment.homeDirectory) -> (ReliabilitySettings, [SourceProblem]) {
        var p = SettingsParser(home: home)
        if let n = sections["retry"] { p.retry(n) }
        if let n = sections["fallbacks"] { p.fallbacks(n) }
        if let n = sections["routes"] { p.routes(n) }
        if let n = sections["cache"] { p.cache(n) }
        if let n = sections["limits"] { p.limits(n) }
        if let n = sections["circuit_breakers"] { p.circuitBreakers(n) }
        if let n = sections["shared"] { p.shared(n) }
        if let n = sections["budgets"] { p.budgets(n) }
        p.crossCheck()
        return (p.settings, p.v.problems)
    }

    /// Reads the sections from a YAML document (the other top-level keys
    /// are left to their owners).
    public static func parse(yaml text: String, file: String, home: String = Environment.homeDirectory) throws(SourceError) -> ReliabilitySettings {
        guard let root = try YAML.parse(text, file: file) else { return ReliabilitySettings() }
        var sections: [String: YAMLNode] = [:]
        for s in Self.sections { if let n = root[s] { sections[s] = n } }
        let (settings, problems) = parse(sections, home: home)
        if !problems.isEmpty { throw SourceError(problems) }
        return settings
    }

    /// Problems with the names the settings use: references to providers
    /// that do not exist (`known`: the providers that can be created),
    /// chains and routes named like a provider.
    package func check(knownProviders known: Set<String>) -> [SourceProblem] {
        var problems: [SourceProblem] = []
        let usable = known.union(definedNames)
        func ref(_ m: Member, _ what: String) {
            if !usable.contains(m.name) {
                let hint = closest(m.name, in: Array(usable)).map { " (did you mean '\($0)'?)" } ?? ""
                problems.append(SourceProblem(m.location, "\(what) names '\(m.name)', which is not a provider, fallback chain or route\(hint)"))
            }
        }
        for f in fallbacks.values.sorted(by: { $0.name < $1.name }) { for m in f.chain { ref(m, "fallback chain '\(f.name)'") } }
        for r in routes.values.sorted(by: { $0.name < $1.name }) { for m in r.candidates { ref(m, "route '\(r.name)'") } }
        for name in definedNames.sorted() where known.contains(name) {
            if let at = locations[name] {
                problems.append(SourceProblem(at, "'\(name)' is both a provider and a fallback chain or route; rename one"))
            }
        }
        for (kind, names) in [("retry.providers", Array(retryByProvider.keys)), ("limits", Array(limits.keys)), ("circuit_breakers", Array(circuitBreakers.keys)), ("cache.providers", cache?.providers ?? [])] {
            for n in names.sorted() where !known.contains(n) {
                let at = locations["\(kind):\(n)"] ?? cache?.location ?? SourcePosition(file: "providers.yaml", line: 1, column: 1)
                let hint = closest(n, in: Array(known)).map { " (did you mean '\($0)'?)" } ?? ""
                problems.append(SourceProblem(at, "\(kind) names '\(n)', which is not a provider\(hint)"))
            }
        }
        return problems
    }
}

/// Reads the sections node by node, collecting problems.
struct SettingsParser {
    var v = NodeValidator(file: "")
    var settings = ReliabilitySettings()
    let home: String

    init(home: String) { self.home = home }

    static let retryKeys = [
        "max_attempts", "initial_delay", "max_delay", "multiplier", "jitter", "max_retry_after", "budget",
        "attempt_timeout", "on", "restart_streams", "providers",
    ]

    mutating func mapping(_ n: YAMLNode, _ what: String) -> [(key: YAMLNode, value: YAMLNode)]? {
        guard case .mapping(let pairs) = n.value else {
            v.problem(n, "\(what) must be a mapping, got a \(n.kindName)")
            return nil
        }
        return pairs
    }

    // MARK: retry

    mutating func retry(_ n: YAMLNode) {
        guard mapping(n, "retry") != nil else { return }
        v.unknownKeys(n, allowed: Self.retryKeys, what: "retry setting")
        settings.retry = retryPolicy(n, base: RetryPolicy(), what: "retry")
        if let providers = n["providers"], let pairs = mapping(providers, "retry.providers") {
            for p in pairs {
                let name = p.key.scalar ?? ""
                guard mapping(p.value, "retry.providers.\(name)") != nil else { continue }
                v.unknownKeys(p.value, allowed: Self.retryKeys.filter { $0 != "providers" }, what: "retry setting")
                settings.retryByProvider[name] = retryPolicy(p.value, base: settings.retry, what: "retry.providers.\(name)")
                settings.locations["retry.providers:\(name)"] = p.key.location
            }
        }
    }

    mutating func retryPolicy(_ n: YAMLNode, base: RetryPolicy, what: String) -> RetryPolicy {
        var r = base
        if let a = v.int(n, "max_attempts") {
            if a < 1 { v.problem(n["max_attempts"]!, "\(what).max_attempts must be at least 1 (1 disables retries)") } else { r.maxAttempts = a }
        }
        if let d = duration(n, "initial_delay") { r.initialDelay = d }
        if let d = duration(n, "max_delay") { r.maxDelay = d }
        if let m = v.number(n, "multiplier") {
            if m < 1 { v.problem(n["multiplier"]!, "\(what).multiplier must be at least 1") } else { r.multiplier = m }
        }
        if let j = v.number(n, "jitter") {
            if j < 0 || j > 1 { v.problem(n["jitter"]!, "\(what).jitter must be between 0 and 1") } else { r.jitter = j }
        }
        if let d = duration(n, "max_retry_after") { r.maxRetryAfter = d }
        if let d = duration(n, "budget") { r.budget = d }
        if let d = duration(n, "attempt_timeout") { r.attemptTimeout = d }
        if let kinds = errorKinds(n, "on") { r.retryOn = kinds }
        if let b = v.bool(n, "restart_streams") { r.restartStreams = b }
        return r
    }

    // MARK: fallbacks

    mutating func fallbacks(_ n: YAMLNode) {
        guard let pairs = mapping(n, "fallbacks") else { return }
        for p in pairs {
            let name = p.key.scalar ?? ""
            guard name.isValidName else {
                v.problem(p.key, "fallback chain name '\(name)' must be lowercase letters, digits and '-'")
                continue
            }
            var chainNode: YAMLNode? = p.value
            var policy = FallbackPolicy()
            if case .mapping = p.value.value {
                v.unknownKeys(p.value, allowed: ["chain", "on", "restart_streams"], what: "fallback setting")
                chainNode = p.value["chain"]
                if chainNode == nil { v.missing(p.value, "chain") }
                if let kinds = errorKinds(p.value, "on") { policy.on = kinds }
                if let b = v.bool(p.value, "restart_streams") { policy.restartStreams = b }
            }
            guard let chainNode else { continue }
            let members = self.members(chainNode, "fallback chain '\(name)'")
            if members.isEmpty { continue }
            settings.fallbacks[name] = .init(name: name, chain: members, policy: policy)
            settings.locations[name] = p.key.location
        }
    }

    /// A list of providers: names, or {provider: NAME, model: MODEL}.
    mutating func members(_ n: YAMLNode, _ what: String) -> [ReliabilitySettings.Member] {
        guard case .sequence(let items) = n.value else {
            v.problem(n, "\(what) must be a list of providers, got a \(n.kindName)")
            return []
        }
        if items.isEmpty { v.problem(n, "\(what) is empty") }
        var out: [ReliabilitySettings.Member] = []
        for item in items {
            switch item.value {
            case .scalar(let s, _):
                out.append(.init(name: s, model: nil, location: item.location))
            case .mapping:
                v.unknownKeys(item, allowed: ["provider", "model"], what: "key of \(what)")
                guard let name = v.string(item, "provider", required: true) else { continue }
                out.append(.init(name: name, model: v.string(item, "model"), location: item["provider"]!.location))
            case .sequence:
                v.problem(item, "\(what): each entry is a provider name or {provider: NAME, model: MODEL}")
            }
        }
        var seen: Set<String> = []
        for m in out where !seen.insert(m.name).inserted {
            v.problem(YAMLNode(value: .scalar(m.name, quoted: false), location: m.location), "\(what) names '\(m.name)' twice")
        }
        return out
    }

    // MARK: routes

    mutating func routes(_ n: YAMLNode) {
        guard let pairs = mapping(n, "routes") else { return }
        for p in pairs {
            let name = p.key.scalar ?? ""
            guard name.isValidName else {
                v.problem(p.key, "route name '\(name)' must be lowercase letters, digits and '-'")
                continue
            }
            guard mapping(p.value, "route '\(name)'") != nil else { continue }
            let r = p.value
            v.unknownKeys(r, allowed: ["candidates", "strategy", "rules", "requires", "fallback", "expected_output_tokens"], what: "route setting")
            guard let cnode = r["candidates"] else {
                v.missing(r, "candidates")
                continue
            }
            let candidates = members(cnode, "route '\(name)'")
            var policy = RoutePolicy()
            policy.requires = Set(v.stringList(r, "requires") ?? [])
            if let f = v.bool(r, "fallback") { policy.fallback = f }
            if let e = v.int(r, "expected_output_tokens") { policy.expectedOutputTokens = e }
            let strategy = v.string(r, "strategy") ?? (r["rules"] != nil ? "rules" : "ordered")
            switch strategy {
            case "ordered": policy.strategy = .ordered
            case "cheapest": policy.strategy = .cheapest
            case "rules":
                guard let rnode = r["rules"] else {
                    v.problem(r["strategy"] ?? r, "route '\(name)': strategy 'rules' needs a 'rules' list")
                    continue
                }
                policy.strategy = .rules(rules(rnode, route: name, candidates: candidates.map(\.name)))
            default:
                v.problem(r["strategy"]!, "route '\(name)': unknown strategy '\(strategy)' (ordered, cheapest, rules)")
            }
            if r["rules"] != nil, strategy != "rules" {
                v.problem(r["rules"]!, "route '\(name)': rules are used only with strategy 'rules'")
            }
            if candidates.isEmpty { continue }
            settings.routes[name] = .init(name: name, candidates: candidates, policy: policy)
            settings.locations[name] = p.key.location
        }
    }

    mutating func rules(_ n: YAMLNode, route: String, candidates: [String]) -> [RouteRule] {
        guard case .sequence(let items) = n.value else {
            v.problem(n, "route '\(route)': rules must be a list of {when: {...}, use: PROVIDER}")
            return []
        }
        var out: [RouteRule] = []
        for item in items {
            guard mapping(item, "route '\(route)': a rule") != nil else { continue }
            v.unknownKeys(item, allowed: ["when", "use"], what: "rule key")
            guard let use = v.string(item, "use", required: true) else { continue }
            if !candidates.contains(use) {
                v.problem(item["use"]!, "route '\(route)': rule uses '\(use)', which is not one of its candidates (\(candidates.joined(separator: ", ")))")
            }
            var cond = RouteCondition()
            if let w = item["when"] {
                if mapping(w, "route '\(route)': when") != nil {
                    v.unknownKeys(w, allowed: ["min_input_tokens", "max_input_tokens", "tools", "contains"], what: "condition")
                    cond.minInputTokens = v.int(w, "min_input_tokens")
                    cond.maxInputTokens = v.int(w, "max_input_tokens")
                    cond.tools = v.bool(w, "tools")
                    if let c = w["contains"] {
                        if let s = c.scalar { cond.containsAny = [s] } else { cond.containsAny = v.stringList(w, "contains") ?? [] }
                    }
                }
            }
            out.append(RouteRule(when: cond, use: use))
        }
        return out
    }

    // MARK: cache

    mutating func cache(_ n: YAMLNode) {
        guard mapping(n, "cache") != nil else { return }
        v.unknownKeys(n, allowed: ["enabled", "max_entries", "max_bytes", "ttl", "directory", "providers", "embeddings"], what: "cache setting")
        var limits = CacheLimits()
        if let e = v.int(n, "max_entries") {
            if e < 1 { v.problem(n["max_entries"]!, "cache.max_entries must be at least 1") } else { limits.maxEntries = e }
        }
        if let b = size(n, "max_bytes") { limits.maxBytes = b }
        if let t = n["ttl"] {
            if case .null = t.json { limits.ttl = nil } else { limits.ttl = duration(n, "ttl") ?? limits.ttl }
        }
        if let d = v.string(n, "directory") {
            limits.directory = d == "~" ? home : d.hasPrefix("~/") ? FileSystem.join(home, String(d.dropFirst(2))) : d
            if !(limits.directory!.hasPrefix("/")) {
                v.problem(n["directory"]!, "cache.directory must be an absolute path (or start with ~/), got '\(d)'")
                limits.directory = nil
            }
        }
        let providers = v.stringList(n, "providers")
        if let providers { for p in providers { settings.locations["cache.providers:\(p)"] = n["providers"]!.location } }
        settings.cache = .init(
            enabled: v.bool(n, "enabled") ?? true, limits: limits, providers: providers, embeddings: v.bool(n, "embeddings") ?? true, location: n.location)
    }

    // MARK: limits

    static var limitKeys: [(String, WritableKeyPath<RateLimits, Int?>)] {
        [
            ("requests_per_minute", \.requestsPerMinute), ("tokens_per_minute", \.tokensPerMinute), ("request_burst", \.requestBurst),
            ("token_burst", \.tokenBurst),
        ]
    }

    /// One mapping of limits (a provider's, or one of its models' at `path`).
    mutating func rateLimits(_ n: YAMLNode, _ path: String) -> RateLimits {
        var l = RateLimits()
        for (key, keyPath) in Self.limitKeys {
            if let x = v.int(n, key) {
                if x < 1 { v.problem(n[key]!, "\(path).\(key) must be at least 1") } else { l[keyPath: keyPath] = x }
            }
        }
        return l
    }

    mutating func limits(_ n: YAMLNode) {
        guard let pairs = mapping(n, "limits") else { return }
        for p in pairs {
            let name = p.key.scalar ?? ""
            guard mapping(p.value, "limits.\(name)") != nil else { continue }
            v.unknownKeys(p.value, allowed: Self.limitKeys.map(\.0) + ["models"], what: "limit")
            let l = rateLimits(p.value, "limits.\(name)")
            var models: [String: RateLimits] = [:]
            if let m = p.value["models"], let modelPairs = mapping(m, "limits.\(name).models") {
                for mp in modelPairs {
                    let model = mp.key.scalar ?? ""
                    let path = "limits.\(name).models.\(model)"
                    guard mapping(mp.value, path) != nil else { continue }
                    v.unknownKeys(mp.value, allowed: Self.limitKeys.map(\.0), what: "limit")
                    let ml = rateLimits(mp.value, path)
                    if ml.isEmpty {
                        if mp.value["requests_per_minute"] == nil && mp.value["tokens_per_minute"] == nil {
                            v.problem(mp.value, "\(path) sets neither requests_per_minute nor tokens_per_minute")
                        }
                        continue
                    }
                    models[model] = ml
                }
            }
            if l.isEmpty && models.isEmpty {
                if p.value["requests_per_minute"] == nil && p.value["tokens_per_minute"] == nil && p.value["models"] == nil {
                    v.problem(p.value, "limits.\(name) sets neither requests_per_minute nor tokens_per_minute")
                }
                continue
            }
            settings.limits[name] = l
            if !models.isEmpty { settings.modelLimits[name] = models }
            settings.locations["limits:\(name)"] = p.key.location
        }
    }

    // MARK: circuit_breakers

    mutating func circuitBreakers(_ n: YAMLNode) {
        guard let pairs = mapping(n, "circuit_breakers") else { return }
        for p in pairs {
            let name = p.key.scalar ?? ""
            guard mapping(p.value, "circuit_breakers.\(name)") != nil else { continue }
            v.unknownKeys(p.value, allowed: ["failures", "open_secs"], what: "circuit breaker setting")
            var c = CircuitBreakerSettings()
            var valid = true
            if let f = v.int(p.value, "failures") {
                if f < 1 {
                    v.problem(p.value["failures"]!, "circuit_breakers.\(name).failures must be at least 1, got \(f)")
                    valid = false
                } else { c.failures = f }
            } else if p.value["failures"] != nil { valid = false }
            if let node = p.value["open_secs"] {
                if let d = Self.parseDuration(node), d > .zero, d <= .seconds(86400) { c.open = d } else {
                    v.problem(node, "circuit_breakers.\(name).open_secs must be a number of seconds above 0 and at most 86400 (a day), got '\(node.scalar ?? node.kindName)'")
                    valid = false
                }
            }
            if !valid { continue }
            settings.circuitBreakers[name] = c
            settings.locations["circuit_breakers:\(name)"] = p.key.location
        }
    }

    // MARK: shared

    static let sharedKeys = ["store", "prefix", "username", "password", "connect_timeout", "command_timeout", "on_failure", "retry_interval", "cluster"]

    mutating func shared(_ n: YAMLNode) {
        guard mapping(n, "shared") != nil else { return }
        v.unknownKeys(n, allowed: Self.sharedKeys, what: "shared setting")
        var s = SharedSettings()
        var valid = true
        if let store = v.string(n, "store", required: true) {
            switch SharedSettings.parseURL(store) {
            case .success(let a): (s.host, s.port, s.database) = (a.host, a.port, a.db)
            case .failure(let why):
                v.problem(n["store"]!, "shared.store: \(why.message)")
                valid = false
            }
        } else { valid = false }
        if let p = v.string(n, "prefix") {
            if p.isEmpty || p.contains(where: { $0 == " " || $0 == "\n" }) {
                v.problem(n["prefix"]!, "shared.prefix must be non-empty, without spaces, got '\(p)'")
            } else { s.prefix = p }
        }
        s.username = v.string(n, "username")
        if let pw = v.string(n, "password") {
            if pw.isEmpty { v.problem(n["password"]!, "shared.password is empty (is its variable set?)") } else { s.password = Secret(pw) }
        }
        for (key, path) in [("connect_timeout", \SharedSettings.connectTimeout), ("command_timeout", \.commandTimeout), ("retry_interval", \.retryInterval)] {
            if let d = duration(n, key) {
                if d <= .zero || d > .seconds(60) {
                    v.problem(n[key]!, "shared.\(key) must be more than 0 and at most 60s, got '\(n[key]!.scalar ?? "")'")
                } else { s[keyPath: path] = d }
            }
        }
        if let f = v.string(n, "on_failure") {
            if let p = SharedSettings.OnFailure(rawValue: f) { s.onFailure = p } else {
                v.problem(n["on_failure"]!, "shared.on_failure is 'open' (go on under local limits) or 'closed' (refuse requests), got '\(f)'")
            }
        }
        if let c = n["cluster"] {
            if case .bool(let b) = c.json { s.cluster = b } else {
                v.problem(
                    c, "shared.cluster is true (a Redis Cluster: a cache miss then takes two round trips, the lookup's and the limiter's) "
                        + "or false (one server or a single-primary managed one), got '\(c.scalar ?? c.kindName)'")
            }
        }
        if valid { settings.shared = s }
    }

    // MARK: budgets

    mutating func budgets(_ n: YAMLNode) {
        guard mapping(n, "budgets") != nil else { return }
        v.unknownKeys(n, allowed: ["period", "labels"], what: "budgets setting")
        if let p = v.string(n, "period") {
            if let period = BudgetSettings.Period(rawValue: p) { settings.budgets.period = period } else {
                v.problem(n["period"]!, "budgets.period is day, month or total (UTC), got '\(p)'")
            }
        }
        guard let labels = n["labels"], let pairs = mapping(labels, "budgets.labels") else { return }
        for p in pairs {
            let name = p.key.scalar ?? ""
            guard let eq = name.firstIndex(of: "="), eq != name.startIndex, name.index(after: eq) != name.endIndex else {
                v.problem(p.key, "a budget is named LABEL=VALUE (team=research, agent=reviewer), got '\(name)'")
                continue
            }
            let usd: Double?
            switch p.value.json {
            case .integer(let i): usd = Double(i)
            case .number(let d): usd = d
            default: usd = nil
            }
            guard let usd, usd > 0, usd.isFinite else {
                v.problem(p.value, "budgets.labels.\(name) is an amount of US dollars above 0 (5.00), got '\(p.value.scalar ?? p.value.kindName)'")
                continue
            }
            settings.budgets.labels[name] = usd
        }
    }

    // MARK: Cross-section checks

    /// Names defined twice, and chains or routes that contain themselves.
    mutating func crossCheck() {
        for name in Set(settings.fallbacks.keys).intersection(settings.routes.keys).sorted() {
            let at = settings.locations[name]!
            v.problems.append(SourceProblem(at, "'\(name)' is defined both as a fallback chain and as a route"))
        }
        let graph: [String: [String]] = settings.fallbacks.mapValues { $0.chain.map(\.name) }
            .merging(settings.routes.mapValues { $0.candidates.map(\.name) }) { a, _ in a }
        var reported: Set<String> = []
        for start in graph.keys.sorted() {
            var path: [String] = []
            func visit(_ n: String) -> [String]? {
                if let i = path.firstIndex(of: n) { return Array(path[i...]) + [n] }
                guard let next = graph[n] else { return nil }
                path.append(n)
                defer { path.removeLast() }
                for m in next { if let cycle = visit(m) { return cycle } }
                return nil
            }
            if let cycle = visit(start), reported.insert(Set(cycle).sorted().joined(separator: ",")).inserted {
                v.problems.append(SourceProblem(settings.locations[cycle[0]]!, "'\(cycle[0])' contains itself: \(cycle.joined(separator: " -> "))"))
            }
        }
    }

    // MARK: Values

    mutating func errorKinds(_ n: YAMLNode, _ key: String) -> Set<ProviderError.Kind>? {
        guard let list = v.stringList(n, key) else { return nil }
        var out: Set<ProviderError.Kind> = []
        let names = ProviderError.Kind.all.map(\.rawValue)
        for (i, s) in list.enumerated() {
            if names.contains(s) { out.insert(ProviderError.Kind(rawValue: s)) } else {
                let node: YAMLNode
                if case .sequence(let items) = n[key]!.value, i < items.count { node = items[i] } else { node = n[key]! }
                let hint = closest(s, in: names).map { " (did you mean '\($0)'?)" } ?? ""
                v.problem(node, "unknown error kind '\(s)'\(hint); kinds: \(names.joined(separator: ", "))")
            }
        }
        return out
    }

    /// A duration: a number of seconds, or a number with a unit: "250ms",
    /// "2s", "1.5m", "1h".
    mutating func duration(_ n: YAMLNode, _ key: String) -> Duration? {
        guard let node = n[key] else { return nil }
        if let d = Self.parseDuration(node) { return d }
        v.problem(node, "'\(key)' must be a duration (seconds, or a number with ms, s, m or h: 500ms, 2s, 1m), got '\(node.scalar ?? node.kindName)'")
        return nil
    }

    static func parseDuration(_ node: YAMLNode) -> Duration? {
        switch node.json {
        case .integer(let i) where i >= 0: return .seconds(i)
        case .number(let d) where d >= 0 && d.isFinite: return Duration(secondsDouble: d)
        case .string(let s):
            let text = s.trimmingSpaces
            for (unit, scale) in [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)] where text.hasSuffix(unit) {
                let number = String(text.dropLast(unit.count)).trimmingSpaces
                if let x = Double(number), x >= 0, x.isFinite, !number.isEmpty { return Duration(secondsDouble: x * scale) }
            }
            return nil
        default: return nil
        }
    }

    /// A size in bytes: a number, or with a unit: "512KB", "64MB", "1GB"
    /// (powers of 1024).
    mutating func size(_ n: YAMLNode, _ key: String) -> Int? {
        guard let node = n[key] else { return nil }
        switch node.json {
        case .integer(let i) where i > 0: return i
        case .string(let s):
            let text = s.trimmingSpaces.uppercased()
            for (unit, scale) in [("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("B", 1)] where text.hasSuffix(unit) {
                if let x = Double(String(text.dropLast(unit.count)).trimmingSpaces), x > 0 { return Int(x * Double(scale)) }
            }
        default: break
        }
        v.problem(node, "'\(key)' must be a size (bytes, or a number with KB, MB or GB), got '\(node.scalar ?? node.kindName)'")
        return nil
    }
}

extension String {
    /// Lowercase letters, digits and '-', starting with a letter or digit.
    var isValidName: Bool { PluginManifest.isValidID(self) }
}
