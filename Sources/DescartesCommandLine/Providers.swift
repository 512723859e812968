// Reading the configuration and creating providers the way every command
// does: plugin discovery narrated with --verbose, providers.yaml with its
// problems reported (exit 78), --set values, the audit log.
import Descartes
import Glibc

package enum Commands {
    /// Discovers plugins, narrating with --verbose.
    package static func catalog(_ globals: Globals) -> PluginCatalog {
        let catalog = PluginCatalog.discover()
        if globals.verbose {
            for line in catalog.trace { Out.err("descartes: discovery: \(line)") }
        }
        return catalog
    }

    /// Reads providers.yaml (and .env); on any problem in the files prints
    /// every one and exits 78.
    package static func configuration(_ globals: Globals) -> ProvidersConfig {
        let config = ProvidersConfig.load(.init(explicitFile: globals.configFile))
        if globals.verbose {
            for l in config.locations { Out.err("descartes: config: \(l.path) (\(l.scope.rawValue)): \(describe(l.status))") }
            if let env = config.interpolator.dotenvFile { Out.err("descartes: config: \(env): \(config.interpolator.dotenv.count) variables") }
        }
        if !config.problems.isEmpty {
            Out.err("Error: invalid configuration (\(config.problems.count) problem\(config.problems.count == 1 ? "" : "s")):")
            for p in config.problems { Out.err("  \(p)") }
            exit(ExitCode.config.rawValue)
        }
        return config
    }

    /// What became of a configuration file, in words.
    package static func describe(_ status: ProvidersConfig.Location.Status) -> String {
        switch status {
        case .loaded: return "read"
        case .missing: return "not found"
        case .refused(let why): return "refused: \(why)"
        }
    }

    /// The plugins and the configuration, for commands that create backends.
    package static func factory(_ globals: Globals) -> ProviderFactory { setup(globals).factory }

    /// What every command that uses providers starts from: the plugins, the
    /// configuration (files, `.env`, environment) and the middleware
    /// sections, checked as `descartes config check` checks them
    /// (`ProvidersConfig.startupProblems`): on any problem, every one is
    /// printed and the process exits 78.
    package static func setup(_ globals: Globals) -> Setup {
        switch setupOrProblems(globals, configuration(globals)) {
        case .success(let s): return s
        case .failure(let e):
            Out.err("Error: invalid configuration (\(e.problems.count) problem\(e.problems.count == 1 ? "" : "s")):")
            for p in e.problems { Out.err("  \(p)") }
            exit(ExitCode.config.rawValue)
        }
    }

    /// `setup` from a configuration already read, with its problems
    /// returned rather than ending the process (`serve`'s reload keeps
    /// running on a bad file).
    package static func setupOrProblems(_ globals: Globals, _ config: ProvidersConfig) -> Result<Setup, SourceError> {
        if !config.problems.isEmpty { return .failure(SourceError(config.problems)) }
        let catalog = catalog(globals)
        let problems = config.startupProblems(catalog: catalog)
        if !problems.isEmpty { return .failure(SourceError(problems)) }
        var factory = ProviderFactory(
            catalog: catalog, loader: Out.loader, environment: config.environment, configuration: config, logSink: Out.logSink)
        factory.operationDeadline = globals.operationDeadline
        return .success(Setup(factory: factory, settings: config.reliabilitySettings(catalog: catalog).0))
    }

    /// `--set KEY=VALUE` values as config.
    package static func settings(_ args: Arguments) throws(UsageError) -> [String: JSONValue] {
        var out: [String: JSONValue] = [:]
        for s in args.all(.set) {
            guard let eq = s.firstIndex(of: "="), eq != s.startIndex else {
                throw args.mistake("--set needs KEY=VALUE, got '\(s)'")
            }
            out[String(s[..<eq])] = .string(String(s[s.index(after: eq)...]))
        }
        return out
    }

    /// `--max-tokens N` and `--temperature T`, checked once for every
    /// command that takes them (`complete`, `chat`): nil when not given.
    package static func sampling(_ args: Arguments) throws(UsageError) -> (maxTokens: Int?, temperature: Double?) {
        let n = try args.int(.maxTokens)
        if let n, n <= 0 { throw args.mistake("--max-tokens must be positive") }
        let t = try args.double(.temperature)
        if let t, !(t >= 0) { throw args.mistake("--temperature must be a number >= 0") }
        return (n, t)
    }

    /// `--set` puts values in argv, which other users can read (ps): say so
    /// for a key the manifest marks secret.
    package static func warnAboutSecretsOnTheCommandLine(_ settings: [String: JSONValue], plugin: String, factory: ProviderFactory) {
        guard let m = try? factory.manifest(for: plugin) else { return }
        for key in settings.keys.sorted() where m.configKey(key)?.secret == true {
            Out.err(
                "descartes: warning: --set \(key)=... puts a secret on the command line, where other users can read it (ps); "
                    + "use an environment variable\(m.configKey(key)!.env.first.map { " (\($0))" } ?? ""), .env, or ${file:...} in providers.yaml")
        }
    }

    /// The audit log when providers.yaml enables it.
    package static func auditLog(_ config: ProvidersConfig?) throws(ProviderError) -> AuditLog? {
        guard let config else { return nil }
        do {
            let settings = try config.auditSettings()
            // A record names the plugin of the provider that answered (an
            // instance's, or the plugin itself).
            return settings.enabled ? AuditLog(settings, logSink: Out.logSink, plugins: { config.instance($0)?.plugin ?? $0 }) : nil
        } catch {
            throw ProviderError(.config, "invalid 'audit' section (\(error.problems.count) problem\(error.problems.count == 1 ? "" : "s"))", details: error.problems.map(\.description))
        }
    }
}

/// The plugins, the configuration and its middleware settings: what a
/// provider name (an instance, a plugin, a fallback chain, a route) means
/// for every command.
package struct Setup: Sendable {
    package var factory: ProviderFactory
    package let settings: ReliabilitySettings

    package init(factory: ProviderFactory, settings: ReliabilitySettings) {
        self.factory = factory
        self.settings = settings
    }

    /// What `name` names, or the process exits 78 with a did-you-mean over
    /// instances, chains, routes and plugins.
    package func resolve(_ name: String, json: Bool = false) -> ProviderName {
        do { return try factory.resolveName(name, settings: settings) } catch { failure(error, json: json) }
    }

    /// The providers of the configuration, `config` (`--set`) going to the
    /// provider named `target`.
    package func providers(
        _ overrides: ReliableProviders.Overrides = .init(), target: String? = nil, config: [String: JSONValue] = [:]
    ) -> ReliableProviders {
        ReliableProviders(settings: settings, factory: factory, overrides: overrides) { name in name == target ? config : [:] }
    }

    /// The backend for one name as `models`, `tokens` and `health` use it:
    /// no retries, no response cache (unless `cache`: descartes-bench
    /// `--cache`); a chain or route as configured.
    /// `--set` values need a provider, not a chain or route.
    package func probe(
        _ name: String, settings config: [String: JSONValue], json: Bool, cache: Bool = false
    ) -> (backend: any ModelBackend, providers: ReliableProviders) {
        let what = resolve(name, json: json)
        if !config.isEmpty, what.plugin == nil {
            failure(ProviderError(.config, "--set applies to one provider; '\(name)' is a \(what)", provider: name), json: json)
        }
        if let plugin = what.plugin { Commands.warnAboutSecretsOnTheCommandLine(config, plugin: plugin, factory: factory) }
        let providers = self.providers(.init(retries: 0, noCache: !cache), target: name, config: config)
        do { return (try providers.backend(name), providers) } catch { failure(error, json: json) }
    }
}
