import Descartes
import DescartesCommandLine
import Glibc
import DescartesSupport

/// The reliability and routing options shared by `complete` and `batch`:
/// retries, fallbacks, stats, routing explanations, the response cache.
struct ReliabilityOptions {
    var retries: Int?
    var fallbacks: [String] = []
    var stats = false
    var explain = false
    var noCache = false

    init(_ args: Arguments, globals: Globals) throws(UsageError) {
        if let r = try args.int(.retries) {
            guard r >= 0 else { throw args.mistake("--retries must be 0 or more") }
            retries = r
        }
        if let f = args.value(.fallback) {
            fallbacks = f.split(separator: ",").map { $0.trimmingSpaces }.filter { !$0.isEmpty }
            guard !fallbacks.isEmpty else { throw args.mistake("--fallback needs provider names, e.g. --fallback ollama,echo") }
        }
        stats = args.flag(.stats)
        explain = args.flag(.explain) || globals.verbose
        noCache = args.flag(.noCache)
    }

    /// What `build` makes: the backend to call, the providers behind it (to
    /// shut down), and the meter `--stats` reads.
    struct Built {
        var backend: any ModelBackend
        var providers: ReliableProviders
        var meter: UsageMeter?
        /// `provider` is one headless agent with sessions (its manifest says
        /// `sessions`: claude-code-cli, codex-cli, acp) and no --fallback
        /// follows it: a conversation with it goes on in the agent's session.
        var agentSessions = false
    }

    /// The backend for `provider`: its route, chain or middleware stack from
    /// the settings, then the `--fallback` providers; `config` (`--set`)
    /// applies to `provider` itself.
    /// - Parameter audit: wraps the whole (the audit log, when enabled), so a
    ///   record sees who answered and the attempts before.
    /// What `complete` and `batch` run: the provider with the middlewares
    /// the options and providers.yaml ask for, audited when the audit log is
    /// on; secrets given with --set are warned about first.
    /// `isolation` (complete's --isolate) overrides how `provider` runs.
    func build(
        _ provider: String, config: [String: JSONValue], globals: Globals, isolation: ProviderFactory.Isolation? = nil
    ) throws(ProviderError) -> Built {
        var setup = Commands.setup(globals)
        // Every name, -p's and --fallback's, is checked before anything runs.
        let what = try setup.factory.resolveName(provider, settings: setup.settings)
        for name in fallbacks { _ = try setup.factory.resolveName(name, settings: setup.settings) }
        if let isolation { setup.factory.isolationOverrides[provider] = isolation }
        let plugin = what.plugin ?? provider
        Commands.warnAboutSecretsOnTheCommandLine(config, plugin: plugin, factory: setup.factory)
        var built = try build(
            provider, config: config, factory: setup.factory, settings: setup.settings,
            audit: Commands.auditLog(setup.factory.configuration).map { log in { log.wrap($0, plugin: plugin) } })
        if fallbacks.isEmpty, what.plugin != nil, case .some(let manifest) = try? setup.factory.manifest(for: plugin) {
            built.agentSessions = manifest.capabilities.contains("sessions")
        }
        return built
    }

    func build(
        _ provider: String, config: [String: JSONValue], factory: ProviderFactory, settings: ReliabilitySettings,
        audit: ((any ModelBackend) -> any ModelBackend)? = nil
    ) throws(ProviderError) -> Built {
        var overrides = ReliableProviders.Overrides(retries: retries, noCache: noCache)
        if explain {
            overrides.routeObserver = { d in
                for line in d.description.split(separator: "\n") { Out.err("descartes: \(line)") }
            }
        }
        // Instances of providers.yaml by name (`ProviderFactory.backend`);
        // --set applies to -p's provider only.
        let providers = ReliableProviders(settings: settings, factory: factory, overrides: overrides) { name in
            name == provider ? config : [:]
        }
        var backend = try providers.chain(provider, then: fallbacks)
        if let audit { backend = audit(backend) }
        var meter: UsageMeter? = nil
        if stats {
            let m = UsageMeter()
            backend = StatsBackend(backend, meter: m)
            meter = m
        }
        return Built(backend: backend, providers: providers, meter: meter)
    }

    /// `stats` as JSON (for `--json --stats`).
    static func json(_ s: RequestStats, cache: ResponseCache.Stats?) -> JSONValue {
        var o: JSONObject = [
            "provider": .string(s.provider), "model": .string(s.model), "streamed": .bool(s.streamed),
            "duration_ms": .integer(s.duration.milliseconds), "usage": Wire.json(s.usage),
            "failed_attempts": .integer(s.failedAttempts), "cached": .bool(s.cached),
        ]
        o["time_to_first_token_ms"] = s.timeToFirstToken.map { .integer($0.milliseconds) } ?? .null
        o["tokens_per_second"] = s.tokensPerSecond.map { .number(($0 * 10).rounded() / 10) } ?? .null
        o["cost_usd"] = s.costUSD.map { .number($0) } ?? .null
        if let c = cache { o["cache"] = ["hits": .integer(c.hits), "misses": .integer(c.misses), "entries": .integer(c.entries)] }
        return .object(o)
    }

    /// A response document with its stats added.
    static func with(stats: RequestStats, cache: ResponseCache.Stats?, _ doc: JSONValue) -> JSONValue {
        guard case .object(var o) = doc else { return doc }
        o["stats"] = json(stats, cache: cache)
        return .object(o)
    }

    /// `stats` for people, on stderr.
    static func print(_ s: RequestStats, cache: ResponseCache.Stats?) {
        var lines: [String] = []
        var who = "provider \(s.provider)"
        if !s.model.isEmpty { who += " (\(s.model))" }
        if s.cached { who += ", from the cache" }
        if s.failedAttempts > 0 { who += ", after \(s.failedAttempts) failed attempt\(s.failedAttempts == 1 ? "" : "s")" }
        lines.append(who)
        var timing = s.timeToFirstToken.map { "time to first token \(formatDuration($0)), " } ?? ""
        timing += "total \(formatDuration(s.duration))"
        if let tps = s.tokensPerSecond { timing += ", \(formatRate(tps)) tokens/s" }
        lines.append(timing)
        var tokens = "tokens: \(s.usage.inputTokens) in, \(s.usage.outputTokens) out"
        if s.usage.cacheReadTokens > 0 || s.usage.cacheWriteTokens > 0 {
            tokens += " (prompt cache: \(s.usage.cacheReadTokens) read, \(s.usage.cacheWriteTokens) written)"
        }
        if s.usage.reasoningTokens > 0 { tokens += ", \(s.usage.reasoningTokens) reasoning" }
        if s.usage.estimated { tokens += " (estimated)" }
        lines.append(tokens)
        lines.append("cost: " + (s.costUSD.map { "$\(formatUSD($0))" } ?? "unknown (no prices in the manifest)"))
        if let c = cache { lines.append("response cache: \(c.hits) hit\(c.hits == 1 ? "" : "s"), \(c.misses) miss\(c.misses == 1 ? "" : "es"), \(c.entries) entr\(c.entries == 1 ? "y" : "ies")") }
        for l in lines { Out.err("descartes: stats: \(l)") }
    }

    static func formatDuration(_ d: Duration) -> String { d.shortText }

    static func formatRate(_ r: Double) -> String { "\((r * 10).rounded() / 10)" }

    /// Dollars with six decimals ("0.000123"), without exponent notation.
    static func formatUSD(_ c: Double) -> String {
        let micros = Int((c * 1_000_000).rounded())
        let whole = micros / 1_000_000
        let frac = String(micros % 1_000_000)
        return "\(whole).\(String(repeating: "0", count: 6 - frac.count))\(frac)"
    }
}
