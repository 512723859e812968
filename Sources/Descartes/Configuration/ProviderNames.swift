import DescartesSupport

/// What a provider name means: the one place every command (and
/// `ProviderFactory.standard()` users) asks. A name is, in this order, a
/// route or a fallback chain of providers.yaml, a provider instance of
/// providers.yaml, or an installed plugin's provider id.
public enum ProviderName: Sendable, Equatable, CustomStringConvertible {
    case route(String)
    case chain(String)
    case instance(String, plugin: String)
    case plugin(String)

    public var name: String {
        switch self {
        case .route(let n), .chain(let n), .instance(let n, _), .plugin(let n): return n
        }
    }

    /// The plugin it runs on, for an instance or a plugin.
    public var plugin: String? {
        switch self {
        case .instance(_, let p): return p
        case .plugin(let p): return p
        case .route, .chain: return nil
        }
    }

    public var description: String {
        switch self {
        case .route(let n): return "route '\(n)'"
        case .chain(let n): return "fallback chain '\(n)'"
        case .instance(let n, let p): return "provider instance '\(n)' (plugin '\(p)')"
        case .plugin(let n): return "plugin '\(n)'"
        }
    }
}

extension ProvidersConfig {
    /// The middleware sections (`retry`, `fallbacks`, `routes`, `cache`,
    /// `limits`) read and checked, names included: a chain or route that
    /// names something that is neither an instance, an installed plugin,
    /// nor another chain or route is a problem, with a did-you-mean.
    package func reliabilitySettings(catalog: PluginCatalog) -> (ReliabilitySettings, [SourceProblem]) {
        let sections: [String: YAMLNode]
        do { sections = try middlewareSections() } catch { return (ReliabilitySettings(), error.problems) }
        let (settings, problems) = ReliabilitySettings.parse(sections)
        if !problems.isEmpty { return (settings, problems) }
        // No section names a provider: nothing to check, and no need to
        // read every plugin's manifest (a one-shot command reads one).
        if sections.isEmpty { return (settings, []) }
        let known = Set(instances.map(\.name)).union(catalog.availableProviders)
        return (settings, settings.check(knownProviders: known))
    }

    /// What every command checks when it starts, before it uses any
    /// provider: the files' structure, every section (references expanded,
    /// `audit`, the middleware sections and the names they use). Any of
    /// these stops every command (exit 78); a problem with one instance's
    /// values stops only what uses that instance. `check(catalog:)` is this
    /// plus every instance's problems.
    package func startupProblems(catalog: PluginCatalog, checkers: [ConfigSectionChecker] = ProvidersConfig.sectionCheckers) -> [SourceProblem] {
        var all = problems
        var expanded: [String: YAMLNode] = [:]
        // `server:` is descartes serve's alone (checked there, and by `check`).
        for (key, _) in sections.sorted(by: { $0.key < $1.key }) where key != "server" {
            do {
                guard let node = try section(key) else { continue }
                expanded[key] = node
                if key == "audit" {
                    if case .failure(let e) = AuditSettings.read(node) { all += e.problems }
                }
            } catch { all += error.problems }
        }
        for checker in checkers {
            let mine = expanded.filter { checker.keys.contains($0.key) }
            if !mine.isEmpty { all += checker.check(mine, self) }
        }
        // The names the middleware sections use (when they parse at all:
        // the checker above reported what does not).
        if !ReliabilitySettings.sections.contains(where: { sections[$0] != nil }) { return all }
        if let sections = try? middlewareSections() {
            let (settings, parseProblems) = ReliabilitySettings.parse(sections)
            if parseProblems.isEmpty {
                let known = Set(instances.map(\.name)).union(catalog.availableProviders)
                all += settings.check(knownProviders: known)
            }
        }
        return all
    }

    /// Every problem with one instance: its references (an unset `${VAR}`
    /// does not hide the others), its plugin, and its values against the
    /// plugin's manifest.
    package func problems(of inst: Instance, catalog: PluginCatalog) -> [SourceProblem] {
        var all: [SourceProblem] = []
        let (resolved, expansionProblems, unexpanded) = expandInstance(inst, runHelper: false, redactor: Redactor())
        all += expansionProblems
        guard let entry = catalog.entry(for: inst.plugin), let manifest = entry.manifest else {
            let installed = catalog.availableProviders
            let hint = closest(inst.plugin, in: installed).map { " (did you mean '\($0)'?)" } ?? ""
            all.append(
                SourceProblem(
                    inst.pluginLocation ?? inst.location,
                    "provider '\(inst.name)': no plugin '\(inst.plugin)' is installed\(hint); installed: \(installed.joined(separator: ", "))"))
            return all
        }
        var values = resolved.values
        if resolved.helperPending != nil, manifest.configKey("api_key") != nil, values["api_key"] == nil {
            values["api_key"] = ConfigValidation.Explicit(value: .string("(from api_key_helper)"), origin: "api_key_helper")
        }
        let outcome = ConfigValidation.check(
            manifest: manifest, instance: inst.name, values: values, environment: environment, at: inst.location, unexpanded: unexpanded)
        all += outcome.problems.filter { p in !all.contains(p) }
        return all
    }
}

extension ProviderFactory {
    /// What `name` names (a route, a fallback chain, an instance of the
    /// configuration, an installed plugin), or a `config` error that says
    /// what it could have been: did-you-mean over every kind, and the lists.
    public func resolveName(_ name: String, settings: ReliabilitySettings) throws(ProviderError) -> ProviderName {
        if settings.routes[name] != nil { return .route(name) }
        if settings.fallbacks[name] != nil { return .chain(name) }
        if let inst = configuration?.instance(name) { return .instance(name, plugin: inst.plugin) }
        if catalog.entry(for: name) != nil { return .plugin(name) }
        let instances = configuration?.instances.map(\.name) ?? []
        let chains = settings.fallbacks.keys.sorted()
        let routes = settings.routes.keys.sorted()
        let plugins = catalog.availableProviders
        let hint = closest(name, in: instances + chains + routes + plugins).map { " Did you mean '\($0)'?" } ?? ""
        var known: [String] = []
        if !instances.isEmpty { known.append("instances: \(instances.joined(separator: ", "))") }
        if !chains.isEmpty { known.append("fallback chains: \(chains.joined(separator: ", "))") }
        if !routes.isEmpty { known.append("routes: \(routes.joined(separator: ", "))") }
        known.append(plugins.isEmpty ? "no plugins are installed" : "plugins: \(plugins.joined(separator: ", "))")
        throw ProviderError(
            .config, "unknown provider '\(name)' (\(known.joined(separator: "; ")))\(hint)", provider: name,
            details: ["plugins searched in: \(catalog.search.directories.map(\.path).joined(separator: ", "))"])
    }
}
