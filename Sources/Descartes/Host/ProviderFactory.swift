internal import CDescartesPlugin
import DescartesSupport

/// Creates backends by provider name: finds the manifest, checks the
/// configuration against it, loads the library on first use, and asks the
/// library's factory for a backend.
///
/// ```swift
/// let backend = try ProviderFactory.create("openai", config: ["api_key": "..."])
/// let answer = try await backend.complete(ModelRequest(prompt: "Hello"))
/// ```
public struct ProviderFactory: Sendable {
    public let catalog: PluginCatalog
    public let loader: PluginLoader
    /// The environment consulted for config keys' `env` variables.
    public var environment: [String: String]
    /// Named provider instances and their settings (providers.yaml), if any.
    public var configuration: ProvidersConfig?
    /// Where to run a provider, by instance name (or plugin provider id),
    /// chosen by the caller (the CLI's `--isolate`): wins over the policy
    /// files. A call's own `isolation:` argument wins over this.
    public var isolationOverrides: [String: Isolation] = [:]
    /// Where a plugin runs when neither the caller nor an override asks
    /// (nil: in process, unless the policy files isolate it). `health` and
    /// `plugins verify` set `.process`: a plugin crashing while it loads is
    /// then that provider's failure, not the command's end.
    package var defaultIsolation: Isolation? = nil
    /// The clock of the backends it creates (their deadlines) and of the
    /// middlewares `ReliableProviders` builds over them: the real one, or a
    /// `ManualClock` in tests.
    public var clock: DescartesClock
    /// Where the backends and middlewares it builds log (plugins' records
    /// through the ABI included), and the redactor that masks the secrets it
    /// resolves: registered here, not in any process-wide list, and released
    /// with the factory and its backends. By default a sink of its own that
    /// writes warnings and errors to stderr; pass one to route records to
    /// your logger (`LogSink(level:handler:)`).
    public let logSink: LogSink
    /// The factory's redactor (`logSink.redactor`): masks every secret the
    /// factory resolved, and credential shapes, in text you print.
    public var redactor: Redactor { logSink.redactor }
    /// The host's deadline for each plugin operation no request bounds:
    /// loading the library (dlopen and its entry point), `create`,
    /// `initialize` for a health check or a model list, `shutdown` (at most
    /// 30 s). Nil: 30 s for loading and `create`, the provider's own
    /// timeout (`timeout_secs`, default 600 s) for the others. The CLI sets
    /// it from `--timeout`. A plugin function still running when it passes
    /// is abandoned and its backend quarantined (docs/fault-matrix.md).
    public var operationDeadline: Duration?
    /// The most one call to a plugin may send (events, bytes), whatever the
    /// plugin's own limits.
    public var callLimits = CallLimits()

    public init(
        catalog: PluginCatalog = .discover(), loader: PluginLoader = .shared,
        environment: [String: String] = Environment.current(), configuration: ProvidersConfig? = nil,
        clock: DescartesClock = .continuous, logSink: LogSink = LogSink()
    ) {
        self.catalog = catalog
        self.loader = loader
        self.environment = environment
        self.configuration = configuration
        self.clock = clock
        self.logSink = logSink
    }

    /// A factory for this process: plugins found on the standard search path
    /// under the host's policy, providers.yaml and `.env` from the standard
    /// locations (or `configFile` alone).
    ///
    /// - Throws: `ProviderError` of kind `config` listing every problem in
    ///   the configuration files, each with file:line:column: what
    ///   `ProvidersConfig.startupProblems` finds, as every command does.
    public static func standard(configFile: String? = nil, logSink: LogSink = LogSink()) throws(ProviderError) -> ProviderFactory {
        let config = ProvidersConfig.load(.init(explicitFile: configFile))
        // The CLI's catalog: the standard search under the host's plugin policy.
        let catalog = PluginCatalog.discover()
        // What every command of the CLI checks when it starts.
        let problems = config.startupProblems(catalog: catalog)
        if !problems.isEmpty {
            throw ProviderError(
                .config, "invalid configuration (\(problems.count) problem\(problems.count == 1 ? "" : "s"))",
                details: problems.map(\.description))
        }
        return ProviderFactory(catalog: catalog, environment: config.environment, configuration: config, logSink: logSink)
    }

    /// Creates the backend `name` names: an instance of providers.yaml
    /// (its plugin, with its settings), else a plugin's provider id with no
    /// settings but the environment and defaults. `overrides` (`--set`) win
    /// over the file.
    ///
    /// - Throws: `ProviderError` of kind `config` listing every problem with
    ///   the instance, each naming file:line:column and the key.
    public func backend(_ name: String, overrides: [String: JSONValue] = [:], isolation: Isolation? = nil) throws(ProviderError) -> any ModelBackend {
        let (plugin, values, at) = try instanceValues(name, overrides: overrides)
        let chosen = effectiveIsolation(
            plugin: plugin, instance: name, requested: isolation ?? isolationOverrides[name] ?? isolationOverrides[plugin] ?? defaultIsolation)
        return try createPluginBackend(plugin, values: values, instance: name, at: at, isolation: chosen)
    }

    /// The plugin and the explicit config values for `name` (see `backend`).
    package func instanceValues(
        _ name: String, overrides: [String: JSONValue] = [:], runHelper: Bool = true
    ) throws(ProviderError) -> (plugin: String, values: [String: ConfigValidation.Explicit], at: SourcePosition?) {
        var values: [String: ConfigValidation.Explicit] = [:]
        var plugin = name
        var at: SourcePosition? = nil
        if let config = configuration, let inst = config.instance(name) {
            switch config.resolve(inst, runHelper: runHelper, redactor: redactor) {
            case .failure(let e):
                throw ProviderError(
                    .config,
                    "invalid configuration for provider '\(name)' (\(e.problems.count) problem\(e.problems.count == 1 ? "" : "s"))",
                    provider: name, details: e.problems.map(\.description))
            case .success(let r):
                values = r.values
                plugin = r.plugin
                at = r.location
            }
        }
        for (k, v) in overrides { values[k] = ConfigValidation.Explicit(value: v, origin: "config") }
        return (plugin, values, at)
    }

    /// Creates the backend `name` names as the CLI does:
    /// `try standard().backend(name, overrides: config)`. The standard plugin
    /// search under the host's policy, providers.yaml (an instance by name,
    /// its settings) and `.env` from the standard locations.
    ///
    /// - Parameters:
    ///   - name: an instance of providers.yaml, or a provider id from a
    ///     manifest (`openai`, `anthropic`, `claude-code-cli`, `ollama`,
    ///     `headless-cli`, ...).
    ///   - config: values for the manifest's config keys, over the file's;
    ///     absent keys come from their environment variables (and `.env`),
    ///     then their defaults.
    /// - Throws: `ProviderError` of kind `config` listing every problem at
    ///   once (in the configuration files, as `standard()`; unknown
    ///   provider, missing required key, unknown key, wrong type, naming
    ///   the manifest file); of kind `initialization` when the library
    ///   cannot be loaded or refuses the configuration.
    public static func create(_ name: String, config: [String: JSONValue] = [:]) throws(ProviderError) -> any ModelBackend {
        try standard().backend(name, overrides: config)
    }

    /// Creates a backend for provider `name`, under the instance name
    /// `instance` (defaults to the provider id).
    public func create(
        _ name: String, config: [String: JSONValue] = [:], instance: String? = nil, isolation: Isolation? = nil
    ) throws(ProviderError) -> any ModelBackend {
        try createPluginBackend(
            name, values: config.mapValues { ConfigValidation.Explicit(value: $0) }, instance: instance, at: nil,
            isolation: effectiveIsolation(
                plugin: name, instance: nil, requested: isolation ?? instance.flatMap { isolationOverrides[$0] } ?? isolationOverrides[name] ?? defaultIsolation))
    }

    /// Creates the backend `name` names (as `backend(_:overrides:isolation:)`
    /// does), runs `body` with it, and shuts it down when `body` returns or
    /// throws (or its task is cancelled): the plugin's `shutdown`, then its
    /// `destroy`, before this returns. The scoped way to use a backend; a
    /// backend dropped without `shutdown()` stays allocated in its plugin
    /// until the process exits.
    ///
    /// ```swift
    /// let answer = try await ProviderFactory().withBackend("echo") { backend in
    ///     try await backend.complete(ModelRequest(prompt: "Hello"))
    /// }
    /// ```
    ///
    /// - Throws: the creation error (`ProviderError`), or what `body` threw.
    public func withBackend<T>(
        _ name: String, overrides: [String: JSONValue] = [:], isolation: Isolation? = nil,
        _ body: (any ModelBackend) async throws -> T
    ) async throws -> T {
        try await Descartes.withBackend(try backend(name, overrides: overrides, isolation: isolation), body)
    }

    /// Where a plugin runs.
    public enum Isolation: Sendable, Hashable {
        /// Loaded into this process (the fastest).
        case inProcess
        /// In a `descartes-plugin-host` helper process that speaks the same
        /// ABI over a socket: a plugin that crashes, aborts or leaks takes
        /// down only its helper, and its callers get `process` errors.
        case process(ProcessLimits = .isolatedPlugin)
    }

    /// Where the plugin `plugin` runs when created as `instance` (a
    /// providers.yaml instance, or nil), given what the caller asked for
    /// (`requested`, nil: nothing). The plugin policy's `isolation: process`
    /// (plugins.yaml) and the instance's (providers.yaml) cannot be undone by
    /// the caller or a lower file: the plugin runs isolated if any of them
    /// says so, under the lowest memory limit any of them sets (default
    /// `ProcessLimits.isolatedPlugin`). See docs/isolation.md.
    package func effectiveIsolation(plugin: String, instance: String?, requested: Isolation?) -> Isolation {
        let d = isolationDecision(plugin: plugin, instance: instance)
        var limits: ProcessLimits
        switch requested {
        case .process(let l)?: limits = l
        case .inProcess?, nil:
            guard d.process else { return .inProcess }
            limits = .isolatedPlugin
        }
        if let mb = d.memoryMB { limits.memoryBytes = min(limits.memoryBytes ?? (mb << 20), mb << 20) }
        return .process(limits)
    }

    /// What the policy files say about where `plugin` (as `instance`) runs,
    /// with the settings that decided.
    package func isolationDecision(plugin: String, instance: String?) -> IsolationDecision {
        var d = catalog.policy.isolation(for: plugin)
        if let name = instance, let inst = configuration?.instance(name) { d.add(inst.isolation, source: "providers.yaml") }
        return d
    }

    /// The manifest for `name`, or a `config` error listing what is installed.
    public func manifest(for name: String) throws(ProviderError) -> PluginManifest {
        guard let entry = catalog.anyEntry(for: name) else {
            let installed = catalog.availableProviders
            let list = installed.isEmpty ? "no plugins are installed" : "installed: \(installed.joined(separator: ", "))"
            var hint = closest(name, in: installed).map { " Did you mean '\($0)'?" } ?? ""
            if installed.isEmpty {
                // A library user's first stumble: a SwiftPM build installs no manifests.
                hint += " Plugins are manifests (NAME.yaml) found in $DESCARTES_PLUGIN_PATH (colon-separated directories),"
                    + " ~/.local/share/descartes/plugins, ~/.local/lib/descartes/plugins, the executable's ../lib/descartes/plugins,"
                    + " /usr/local/lib/descartes/plugins, /usr/lib/descartes/plugins, then a SwiftPM build's own (make install puts them"
                    + " in PREFIX/lib/descartes/plugins; docs/manifest.md): set DESCARTES_PLUGIN_PATH to a directory holding them."
            }
            throw ProviderError(
                .config,
                "unknown provider '\(name)' (\(list); searched \(catalog.search.directories.map(\.path).joined(separator: ", ")))\(hint)",
                provider: name)
        }
        guard let m = entry.manifest, entry.status == .available else {
            throw ProviderError(
                .initialization, "provider '\(name)' is not usable: \(entry.file): \(entry.status.label)\(entry.problems.isEmpty ? entry.reason.map { " (\($0))" } ?? "" : "")",
                provider: name, details: entry.problems.map(\.description))
        }
        return m
    }

    /// A credential a headless plugin hands its child through `env`
    /// (`GITHUB_TOKEN=...`, however it was written: plain, `${VAR}`,
    /// `${file:}`) is a secret like any other: a program that echoes it in
    /// an error or its output has it masked. Names as the child's
    /// environment scrubs them (ending in `_KEY`, `_APIKEY`, `_TOKEN`,
    /// `_SECRET`, `_PASSWORD`, `_PASSWD`, `_CREDENTIALS`). (A variable kept
    /// from the host's environment with `pass_env` is the caller's explicit
    /// choice and is not registered.)
    func registerChildCredentials(_ config: JSONObject) {
        let suffixes = ["_KEY", "_APIKEY", "_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_CREDENTIALS"]
        func credential(_ name: String) -> Bool {
            let upper = name.uppercased()
            return suffixes.contains { upper.hasSuffix($0) } || ["KEY", "TOKEN", "SECRET", "PASSWORD", "APIKEY"].contains(upper)
        }
        if case .object(let env)? = config["env"] {
            for (k, v) in env where credential(k) { if let s = v.stringValue, !s.isEmpty { redactor.register(s) } }
        }
    }

    func createPluginBackend(
        _ name: String, values: [String: ConfigValidation.Explicit], instance: String?, at: SourcePosition?,
        isolation: Isolation = .inProcess, libraryReport: LibraryReport? = nil
    ) throws(ProviderError) -> PluginBackend {
        let instanceName = instance ?? name
        // Secrets are loaded from here on: none may rest in a core file.
        SecretsAtRest.protect()
        for v in values.values where v.secret { if case .string(let s) = v.value { redactor.register(s) } }
        try catalog.checkRequired(loader: loader)
        let manifest = try manifest(for: name)
        let outcome = try ConfigValidation.resolve(manifest: manifest, instance: instanceName, values: values, environment: environment, at: at)
        let resolved = outcome.config
        for s in outcome.secrets { redactor.register(s) }
        registerChildCredentials(resolved)

        let configBytes = JSONValue.object(resolved).jsonBytes
        let raw: UnsafeMutablePointer<descartes_backend_t>
        let owner: AnyObject
        let table = HostTable(source: "provider \(instanceName)", log: logSink)
        let pin = catalog.entry(for: name)?.pin
        switch isolation {
        case .inProcess:
            let library: PluginLibrary
            do { library = try loader.load(path: manifest.libraryPath, sha256: pin, within: operationDeadline) } catch {
                throw ProviderError(.initialization, "cannot load plugin for '\(name)': \(error)", provider: instanceName)
            }
            libraryReport?.set(library.report)
            if library.factory(manifest.factory) == nil {
                throw ProviderError(
                    .initialization,
                    "\(library.path): unknown factory '\(manifest.factory)' (named by \(manifest.file)); the library registers: \(library.factoryIDs.joined(separator: ", "))",
                    provider: instanceName)
            }
            raw = try library.createBackend(
                factory: manifest.factory, provider: name, instance: instanceName, config: configBytes, table: table, redactor: redactor,
                within: operationDeadline)
            owner = library
        case .process(let limits):
            // The helper process loads the library: check its pin here first.
            if let pin {
                do { try loader.verify(path: manifest.libraryPath, sha256: pin) } catch {
                    throw ProviderError(.initialization, "cannot load plugin for '\(name)': \(error)", provider: instanceName)
                }
            }
            let proxy = try ProcessBackend.start(
                manifest: manifest, provider: name, instance: instanceName, config: configBytes, limits: limits, log: logSink,
                createWithin: operationDeadline ?? PluginLoader.defaultLoadDeadline, libraryReport: libraryReport)
            raw = proxy.raw
            owner = proxy
        }
        var defaults = Deadlines(total: .seconds(600))
        if let t = resolved["timeout_secs"]?.intValue, t > 0 { defaults.total = .seconds(t) }
        return PluginBackend(
            name: instanceName, manifest: manifest, owner: owner, raw: raw, hostTable: table, defaultDeadlines: defaults, clock: clock, log: logSink,
            hostDeadline: operationDeadline, callLimits: callLimits)
    }

    /// What `verify` found.
    package struct Verification: Sendable {
        package var library: String
        package var version: String
        package var factories: [String]
        /// Required config keys with no value (the plugin loads, but cannot
        /// be created until they are set), each with where to set it.
        package var missingConfig: [String]
        /// Config keys this manifest declares that the library's own
        /// manifest (`ownManifest`) does not: the library does not know them.
        package var undeclaredKeys: [String] = []
        package var ownManifest: String? = nil
    }

    /// Loads and negotiates the library of `name`, finds its factory, and
    /// creates a backend from `config`, the environment and the defaults,
    /// without running a request: what `plugins verify` does. `isolated`
    /// (the CLI's default) does all of it in a `descartes-plugin-host`
    /// helper process, so a plugin that crashes in its entry point or its
    /// create fails with a `process` error naming the signal instead of
    /// ending the caller; the backend is destroyed at once either way.
    ///
    /// - Throws: any failure to load, negotiate or create, except that
    ///   required keys without a value are reported in `missingConfig`, and
    ///   so is a `config` refusal of the plugin's create when no
    ///   configuration was given.
    package func verify(_ name: String, config: [String: JSONValue] = [:], isolated: Bool = false) throws(ProviderError) -> Verification {
        let manifest = try manifest(for: name)
        let report = LibraryReport()
        if !isolated {
            // Loaded here first so that a library that cannot load says so
            // before any config is looked at (isolated, the helper does it).
            do { report.set(try loader.load(path: manifest.libraryPath, sha256: catalog.entry(for: name)?.pin, within: operationDeadline).report) } catch {
                throw ProviderError(.initialization, "cannot load plugin for '\(name)': \(error)", provider: name)
            }
        }
        var missing: [String] = []
        do {
            _ = try createPluginBackend(
                name, values: config.mapValues { ConfigValidation.Explicit(value: $0) }, instance: nil, at: nil,
                isolation: isolated ? .process(.isolatedPlugin) : .inProcess, libraryReport: report)
        } catch {
            guard error.kind == .config else { throw error }
            if !error.details.isEmpty, error.details.allSatisfy({ $0.hasPrefix("missing required key") }) {
                missing = error.details
            } else if config.isEmpty && report.library != nil {
                // Given no configuration at all, the plugin's own create
                // asked for some (Bedrock without AWS credentials): it
                // loaded and answered; what it needs is configuration.
                missing = [error.message]
            } else {
                throw error
            }
        }
        var library = report.library
        if library == nil && isolated {
            // Refused before the helper started (a required key without a
            // value): the library is described by a helper of its own.
            library = try describeIsolated(manifest, name: name)
        }
        guard let library else { throw ProviderError(.initialization, "\(manifest.libraryPath): the library did not describe itself", provider: name) }
        var result = Verification(
            library: library["name"]?.stringValue ?? "", version: library["version"]?.stringValue ?? "",
            factories: library["factories"]?.arrayValue?.compactMap(\.stringValue) ?? [], missingConfig: missing)
        if let own = catalog.ownManifest(of: manifest) {
            result.ownManifest = own.file
            result.undeclaredKeys = manifest.config.map(\.name).filter { own.configKey($0) == nil }
        }
        return result
    }

    /// Loads the library of `manifest` in a helper process and creates
    /// nothing: CREATE naming a factory no library can register (its id
    /// starts with NUL) is answered with the library's description and an
    /// unknown-factory refusal, and the helper exits.
    private func describeIsolated(_ manifest: PluginManifest, name: String) throws(ProviderError) -> JSONValue? {
        // A library the policy pins is checked before any helper loads it.
        if let pin = catalog.entry(for: name)?.pin {
            do { try loader.verify(path: manifest.libraryPath, sha256: pin) } catch {
                throw ProviderError(.initialization, "cannot load plugin for '\(name)': \(error)", provider: name)
            }
        }
        let report = LibraryReport()
        var probe = manifest
        probe.factory = "\u{0}describe"
        do {
            _ = try ProcessBackend.start(
                manifest: probe, provider: name, instance: name, config: Array("{}".utf8), limits: .isolatedPlugin, log: logSink,
                createWithin: operationDeadline ?? PluginLoader.defaultLoadDeadline, libraryReport: report)
        } catch {
            if report.library == nil { throw error }
        }
        return report.library
    }
}

/// Receives a synchronous error document from a plugin's create.
package final class ErrorBox: @unchecked Sendable {
    var bytes: [UInt8] = []
}
