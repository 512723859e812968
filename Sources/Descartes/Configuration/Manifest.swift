import DescartesCore
import DescartesSupport

/// The type of a configuration key, as a manifest declares it.
public enum ConfigType: String, Sendable, Hashable, CaseIterable {
    case string, integer, number, boolean
    /// A list of strings.
    case list
    /// A mapping of strings to strings.
    case map
}

/// One configuration key a plugin accepts.
public struct ConfigKey: Sendable, Hashable {
    public var name: String
    public var type: ConfigType
    public var required: Bool
    public var defaultValue: JSONValue?
    /// Environment variables consulted, in order, when no value is given.
    public var env: [String]
    /// A secret is never printed, logged or put in an error.
    public var secret: Bool
    public var description: String

    public init(
        name: String, type: ConfigType, required: Bool = false, defaultValue: JSONValue? = nil, env: [String] = [],
        secret: Bool = false, description: String = ""
    ) {
        self.name = name
        self.type = type
        self.required = required
        self.defaultValue = defaultValue
        self.env = env
        self.secret = secret
        self.description = description
    }
}

/// Prices in US dollars per million tokens.
public struct ModelPrices: Sendable, Hashable {
    public var input: Double
    public var output: Double
    public var cacheRead: Double?
    public var cacheWrite: Double?

    public init(input: Double, output: Double, cacheRead: Double? = nil, cacheWrite: Double? = nil) {
        self.input = input
        self.output = output
        self.cacheRead = cacheRead
        self.cacheWrite = cacheWrite
    }

    /// The cost of `usage` in US dollars. Cache reads and writes are priced
    /// separately when the manifest gives their prices, else as input.
    public func cost(of usage: Usage) -> Double {
        let plainInput = max(0, usage.inputTokens - usage.cacheReadTokens - usage.cacheWriteTokens)
        let total =
            Double(plainInput) * input + Double(usage.outputTokens) * output
            + Double(usage.cacheReadTokens) * (cacheRead ?? input) + Double(usage.cacheWriteTokens) * (cacheWrite ?? input)
        return total / 1_000_000
    }
}

/// A model a manifest lists.
public struct ManifestModel: Sendable, Hashable {
    public var id: String
    public var contextLength: Int?
    public var maxOutputTokens: Int?
    public var prices: ModelPrices?
    public var capabilities: [String]

    public init(id: String, contextLength: Int? = nil, maxOutputTokens: Int? = nil, prices: ModelPrices? = nil, capabilities: [String] = []) {
        self.id = id
        self.contextLength = contextLength
        self.maxOutputTokens = maxOutputTokens
        self.prices = prices
        self.capabilities = capabilities
    }
}

/// A plugin manifest (`<provider>.yaml`): everything the host knows about a
/// provider without loading its library. See docs/manifest.md.
public struct PluginManifest: Sendable, Hashable {
    /// The manifest versions this host reads.
    package static let supportedVersions = 1...1

    /// The manifest file.
    public var file: String
    public var provider: String
    public var version: String
    public var description: String
    /// The library as the manifest names it, and its resolved path (relative
    /// names are relative to the manifest's directory).
    public var libraryName: String
    public var libraryPath: String
    /// The factory id inside the library (defaults to the provider id).
    public var factory: String
    public var abi: Int
    public var mode: ModelProviderMode
    public var capabilities: [String]
    public var defaultModel: String?
    public var models: [ManifestModel]
    public var config: [ConfigKey]
    /// The plugin's conformance spec (docs/conformance.md), resolved
    /// relative to the manifest, when the manifest names one.
    package var conformance: String? = nil
    /// `returns_promptly: true`: the plugin's operation functions only start
    /// the work (queue it on the plugin's own threads, as the plugin kit's
    /// HTTP backends do) and return at once, so the host calls them on the
    /// caller's thread instead of handing each call to a `PluginThreads`
    /// worker (one thread hand-off less per request). Without it a plugin
    /// function that never returns holds a worker, not the caller.
    package var returnsPromptly = false

    public func configKey(_ name: String) -> ConfigKey? { config.first { $0.name == name } }
    public func model(_ id: String) -> ManifestModel? { models.first { $0.id == id } }

    /// Reads and validates a manifest file. Throws `SourceError` listing
    /// every problem found, each with file:line:column.
    package static func load(path: String) throws(SourceError) -> PluginManifest {
        let text: String
        do { text = try FileSystem.readText(path, limit: 1 << 20) } catch {
            throw SourceError([SourceProblem(SourcePosition(file: path, line: 1, column: 1), "\(error)")])
        }
        return try parse(text, file: path)
    }

    /// The provider id the manifest at `path` declares (its top-level
    /// `provider`), read without building or checking the rest; nil when
    /// that cannot be told so cheaply (an unreadable file, or see
    /// `YAML.topLevelScalar`). When `load(path:)` succeeds, its `provider`
    /// is this.
    package static func declaredProvider(path: String) -> String? {
        guard let bytes = try? FileSystem.readBytes(path, limit: 1 << 20) else { return nil }
        return YAML.topLevelScalar("provider", in: bytes)
    }

    static let knownKeys = [
        "manifest_version", "provider", "version", "description", "library", "factory", "abi", "mode", "capabilities",
        "default_model", "models", "config", "conformance", "returns_promptly",
    ]
    static let knownConfigKeyFields = ["type", "required", "default", "env", "secret", "description"]
    static let knownModelFields = ["id", "context", "max_output", "price", "capabilities"]
    static let knownPriceFields = ["input", "output", "cache_read", "cache_write"]

    package static func parse(_ text: String, file: String) throws(SourceError) -> PluginManifest {
        guard let root = try YAML.parse(text, file: file) else {
            throw SourceError([SourceProblem(SourcePosition(file: file, line: 1, column: 1), "the manifest is empty")])
        }
        var v = NodeValidator(file: file)
        guard case .mapping = root.value else {
            v.problem(root, "a manifest is a mapping of keys to values, got a \(root.kindName)")
            throw SourceError(v.problems)
        }
        // The version comes first: a newer format is reported as such rather
        // than as a list of unknown keys.
        if let mv = v.int(root, "manifest_version", required: true), !supportedVersions.contains(mv) {
            v.problem(root["manifest_version"]!, "unknown manifest_version \(mv) (this host reads \(supportedVersions.lowerBound)...\(supportedVersions.upperBound))")
            throw SourceError(v.problems)
        }
        v.unknownKeys(root, allowed: knownKeys, what: "manifest key")
        let provider = v.string(root, "provider", required: true) ?? ""
        if !provider.isEmpty && !isValidID(provider) {
            v.problem(root["provider"]!, "provider id '\(provider)' must be lowercase letters, digits and '-', starting with a letter or digit")
        }
        let version = v.string(root, "version", required: true) ?? ""
        let description = v.string(root, "description") ?? ""
        let library = v.string(root, "library", required: true) ?? ""
        if !library.isEmpty && (library.contains("\0") || library.hasSuffix("/")) {
            v.problem(root["library"]!, "library must name a file")
        }
        let factory = v.string(root, "factory") ?? provider
        let abi = v.int(root, "abi", required: true) ?? 0
        var mode = ModelProviderMode.api
        if let m = v.string(root, "mode", required: true) {
            if let parsed = ModelProviderMode(rawValue: m) { mode = parsed } else {
                v.problem(root["mode"]!, "unknown mode '\(m)' (api, headless, local)")
            }
        }
        let capabilities = v.stringList(root, "capabilities") ?? []
        let defaultModel = v.string(root, "default_model")

        var models: [ManifestModel] = []
        if let mnode = root["models"] {
            if case .sequence(let items) = mnode.value {
                for item in items {
                    guard case .mapping = item.value else {
                        v.problem(item, "each model is a mapping with at least an 'id'")
                        continue
                    }
                    v.unknownKeys(item, allowed: knownModelFields, what: "model key")
                    guard let id = v.string(item, "id", required: true) else { continue }
                    var model = ManifestModel(id: id)
                    model.contextLength = v.int(item, "context")
                    model.maxOutputTokens = v.int(item, "max_output")
                    model.capabilities = v.stringList(item, "capabilities") ?? []
                    if let p = item["price"] {
                        if case .mapping = p.value {
                            v.unknownKeys(p, allowed: knownPriceFields, what: "price key")
                            if let input = v.number(p, "input", required: true), let output = v.number(p, "output", required: true) {
                                model.prices = ModelPrices(
                                    input: input, output: output, cacheRead: v.number(p, "cache_read"),
                                    cacheWrite: v.number(p, "cache_write"))
                            }
                        } else {
                            v.problem(p, "price is a mapping: {input: USD per million tokens, output: ..., cache_read: ..., cache_write: ...}")
                        }
                    }
                    models.append(model)
                }
            } else {
                v.problem(mnode, "models is a list, got a \(mnode.kindName)")
            }
        }

        var config: [ConfigKey] = []
        if let cnode = root["config"] {
            if case .mapping(let pairs) = cnode.value {
                for pair in pairs {
                    let name = pair.key.scalar ?? ""
                    if !isValidConfigName(name) {
                        v.problem(pair.key, "config key '\(name)' must be lowercase letters, digits and '_'")
                    }
                    config.append(contentsOf: v.configKey(name: name, pair.value).map { [$0] } ?? [])
                }
            } else {
                v.problem(cnode, "config is a mapping of key names to their declarations, got a \(cnode.kindName)")
            }
        }

        let conformance = v.string(root, "conformance")
        let returnsPromptly = v.bool(root, "returns_promptly") ?? false
        if !v.problems.isEmpty { throw SourceError(v.problems) }
        let dir = FileSystem.directory(of: file)
        let resolved = library.hasPrefix("/") ? library : FileSystem.join(dir, library)
        var manifest = PluginManifest(
            file: file, provider: provider, version: version, description: description, libraryName: library,
            libraryPath: resolved, factory: factory, abi: abi, mode: mode, capabilities: capabilities,
            defaultModel: defaultModel, models: models, config: config)
        manifest.conformance = conformance.map { $0.hasPrefix("/") ? $0 : FileSystem.join(dir, $0) }
        manifest.returnsPromptly = returnsPromptly
        return manifest
    }

    static func isValidID(_ s: String) -> Bool {
        guard let f = s.utf8.first, (f >= 0x61 && f <= 0x7A) || (f >= 0x30 && f <= 0x39) else { return false }
        return s.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "-") }
    }

    static func isValidConfigName(_ s: String) -> Bool {
        guard let f = s.utf8.first, f >= 0x61 && f <= 0x7A else { return false }
        return s.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "_") }
    }
}

/// Collects problems while reading YAML nodes against an expected shape.
package struct NodeValidator {
    package let file: String
    package var problems: [SourceProblem] = []

    package init(file: String) { self.file = file }

    package mutating func problem(_ node: YAMLNode, _ message: String) {
        problems.append(SourceProblem(node.location, message))
    }

    package mutating func unknownKeys(_ node: YAMLNode, allowed: [String], what: String) {
        guard case .mapping(let pairs) = node.value else { return }
        for p in pairs {
            let k = p.key.scalar ?? ""
            if !allowed.contains(k) {
                let hint = closest(k, in: allowed).map { " (did you mean '\($0)'?)" } ?? ""
                problem(p.key, "unknown \(what) '\(k)'\(hint)")
            }
        }
    }

    package mutating func missing(_ node: YAMLNode, _ key: String) {
        problem(node, "missing required key '\(key)'")
    }

    package mutating func string(_ node: YAMLNode, _ key: String, required: Bool = false) -> String? {
        guard let n = node[key] else {
            if required { missing(node, key) }
            return nil
        }
        guard case .scalar(let s, let quoted) = n.value else {
            problem(n, "'\(key)' must be a string, got a \(n.kindName)")
            return nil
        }
        if !quoted, case .null = YAMLNode.resolvePlain(s) {
            if required { problem(n, "'\(key)' must not be empty") }
            return nil
        }
        return s
    }

    package mutating func int(_ node: YAMLNode, _ key: String, required: Bool = false) -> Int? {
        guard let n = node[key] else {
            if required { missing(node, key) }
            return nil
        }
        guard case .integer(let i) = n.json else {
            problem(n, "'\(key)' must be an integer, got \(n.kindName) '\(n.scalar ?? "")'")
            return nil
        }
        return i
    }

    package mutating func number(_ node: YAMLNode, _ key: String, required: Bool = false) -> Double? {
        guard let n = node[key] else {
            if required { missing(node, key) }
            return nil
        }
        guard let d = n.json.doubleValue else {
            problem(n, "'\(key)' must be a number, got \(n.kindName) '\(n.scalar ?? "")'")
            return nil
        }
        return d
    }

    package mutating func bool(_ node: YAMLNode, _ key: String) -> Bool? {
        guard let n = node[key] else { return nil }
        guard case .bool(let b) = n.json else {
            problem(n, "'\(key)' must be true or false, got \(n.kindName) '\(n.scalar ?? "")'")
            return nil
        }
        return b
    }

    package mutating func stringList(_ node: YAMLNode, _ key: String) -> [String]? {
        guard let n = node[key] else { return nil }
        guard case .sequence(let items) = n.value else {
            problem(n, "'\(key)' must be a list of strings, got a \(n.kindName)")
            return nil
        }
        var out: [String] = []
        for i in items {
            if let s = i.scalar { out.append(s) } else { problem(i, "'\(key)' must contain strings only") }
        }
        return out
    }

    package mutating func configKey(name: String, _ node: YAMLNode) -> ConfigKey? {
        guard case .mapping = node.value else {
            problem(node, "config key '\(name)' is declared with a mapping: {type: string|integer|number|boolean|list|map, required, default, env, secret, description}")
            return nil
        }
        unknownKeys(node, allowed: PluginManifest.knownConfigKeyFields, what: "field of config key '\(name)'")
        guard let typeName = string(node, "type", required: true) else { return nil }
        guard let type = ConfigType(rawValue: typeName) else {
            problem(node["type"]!, "config key '\(name)': unknown type '\(typeName)' (\(ConfigType.allCases.map(\.rawValue).joined(separator: ", ")))")
            return nil
        }
        var key = ConfigKey(name: name, type: type)
        key.required = bool(node, "required") ?? false
        key.secret = bool(node, "secret") ?? false
        key.description = string(node, "description") ?? ""
        if let e = node["env"] {
            switch e.value {
            case .scalar(let s, _): key.env = [s]
            case .sequence: key.env = stringList(node, "env") ?? []
            case .mapping: problem(e, "config key '\(name)': env is a variable name or a list of them")
            }
        }
        if let d = node["default"] {
            switch ConfigValidation.coerce(d.json, to: type) {
            case .success(let value): key.defaultValue = value
            case .failure(let msg): problem(d, "config key '\(name)': default \(msg)")
            }
            if key.secret { problem(d, "config key '\(name)' is secret and cannot have a default in the manifest") }
        }
        return key
    }
}

