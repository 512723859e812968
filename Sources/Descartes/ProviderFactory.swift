internal import CDescartesPlugin
import Synchronization

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

    public init(
        catalog: PluginCatalog = .discover(), loader: PluginLoader = .shared,
        environment: [String: String] = Environment.current()
    ) {
        self.catalog = catalog
        self.loader = loader
        self.environment = environment
    }

    /// Creates a backend for `name` with the standard plugin search.
    ///
    /// - Parameters:
    ///   - name: a provider id from a manifest (`openai`, `anthropic`,
    ///     `claude-code-cli`, `ollama`, `headless-cli`, ...).
    ///   - config: values for the manifest's config keys; absent keys come
    ///     from their environment variables, then their defaults.
    /// - Throws: `ProviderError` of kind `config` listing every problem at
    ///   once (unknown provider, missing required key, unknown key, wrong
    ///   type), naming the manifest file; of kind `initialization` when the
    ///   library cannot be loaded or refuses the configuration.
    public static func create(_ name: String, config: [String: JSONValue] = [:]) throws(ProviderError) -> any ModelBackend {
        try ProviderFactory().create(name, config: config)
    }

    /// Creates a backend for provider `name`, under the instance name
    /// `instance` (defaults to the provider id).
    public func create(
        _ name: String, config: [String: JSONValue] = [:], instance: String? = nil, isolation: Isolation = .inProcess
    ) throws(ProviderError) -> any ModelBackend {
        try createPluginBackend(name, config: config, instance: instance, isolation: isolation)
    }

    /// Where a plugin runs.
    public enum Isolation: Sendable, Hashable {
        /// Loaded into this process (the fastest).
        case inProcess
        /// In a `descartes-plugin-host` helper process that speaks the same
        /// ABI over a socket: a plugin that crashes, aborts or leaks takes
        /// down only its helper, and its callers get `process` errors.
        case process(ProcessLimits = ProcessLimits())
    }

    /// The manifest for `name`, or a `config` error listing what is installed.
    public func manifest(for name: String) throws(ProviderError) -> PluginManifest {
        guard let entry = catalog.entry(for: name) else {
            let installed = catalog.availableProviders
            let list = installed.isEmpty ? "no plugins are installed" : "installed: \(installed.joined(separator: ", "))"
            let hint = closest(name, in: installed).map { " Did you mean '\($0)'?" } ?? ""
            throw ProviderError(
                .config,
                "unknown provider '\(name)' (\(list); searched \(catalog.search.directories.map(\.path).joined(separator: ", ")))\(hint)",
                provider: name)
        }
        guard let m = entry.manifest, entry.status == .available else {
            throw ProviderError(.initialization, "provider '\(name)' is not usable: \(entry.file): \(entry.reason ?? entry.status.label)", provider: name)
        }
        return m
    }

    func createPluginBackend(
        _ name: String, config: [String: JSONValue], instance: String?, isolation: Isolation = .inProcess
    ) throws(ProviderError) -> PluginBackend {
        let instanceName = instance ?? name
        let manifest = try manifest(for: name)
        let (resolved, secrets) = try ConfigValidation.resolve(
            manifest: manifest, instance: instanceName, explicit: config, environment: environment)
        for s in secrets { Redactor.shared.register(s) }

        let configBytes = JSONValue.object(resolved).jsonBytes
        let raw: UnsafeMutablePointer<descartes_backend_t>
        let owner: AnyObject
        let table = HostTable(source: "provider \(instanceName)")
        switch isolation {
        case .inProcess:
            let library: PluginLibrary
            do { library = try loader.load(path: manifest.libraryPath) } catch {
                throw ProviderError(.initialization, "cannot load plugin for '\(name)': \(error)", provider: instanceName)
            }
            if library.factory(manifest.factory) == nil {
                throw ProviderError(
                    .initialization,
                    "\(library.path): unknown factory '\(manifest.factory)' (named by \(manifest.file)); the library registers: \(library.factoryIDs.joined(separator: ", "))",
                    provider: instanceName)
            }
            raw = try library.createBackend(factory: manifest.factory, provider: name, instance: instanceName, config: configBytes, table: table)
            owner = library
        case .process(let limits):
            let proxy = try ProcessBackend.start(
                manifest: manifest, provider: name, instance: instanceName, config: configBytes, limits: limits)
            raw = proxy.raw
            owner = proxy
        }
        var defaults = Deadlines(total: .seconds(600))
        if let t = resolved["timeout_secs"]?.intValue, t > 0 { defaults.total = .seconds(t) }
        return PluginBackend(name: instanceName, manifest: manifest, owner: owner, raw: raw, hostTable: table, defaultDeadlines: defaults)
    }

    /// What `verify` found.
    public struct Verification: Sendable {
        public var library: String
        public var version: String
        public var factories: [String]
        /// Required config keys with no value (the plugin loads, but cannot
        /// be created until they are set), each with where to set it.
        public var missingConfig: [String]
    }

    /// Loads and negotiates the library of `name`, finds its factory, and
    /// creates a backend from `config`, the environment and the defaults,
    /// without running a request: what `plugins verify` does.
    ///
    /// - Throws: any failure to load, negotiate or create, except that
    ///   required keys without a value are reported in `missingConfig`.
    public func verify(_ name: String, config: [String: JSONValue] = [:]) throws(ProviderError) -> Verification {
        let manifest = try manifest(for: name)
        let library: PluginLibrary
        do { library = try loader.load(path: manifest.libraryPath) } catch {
            throw ProviderError(.initialization, "cannot load plugin for '\(name)': \(error)", provider: name)
        }
        var result = Verification(library: library.name, version: library.version, factories: library.factoryIDs, missingConfig: [])
        do {
            _ = try createPluginBackend(name, config: config, instance: nil)
        } catch {
            guard error.kind == .config, !error.details.isEmpty, error.details.allSatisfy({ $0.hasPrefix("missing required key") }) else {
                throw error
            }
            result.missingConfig = error.details
        }
        return result
    }
}

/// Receives a synchronous error document from a plugin's create.
package final class ErrorBox: @unchecked Sendable {
    var bytes: [UInt8] = []
}
