import DescartesSupport
/// `providers.yaml`: named provider instances and the settings of the
/// middlewares, merged from the project, user and system files.
///
/// ```yaml
/// providers:
///   anthropic:
///     api_key: ${ANTHROPIC_API_KEY}
///   lab-vllm:
///     plugin: vllm                 # the manifest's provider id, when it differs from the name
///     endpoint: http://gpu-box:8000/v1
///   community-x:
///     isolation: process           # run it in a descartes-plugin-host helper (docs/isolation.md)
///     memory_limit_mb: 1024        # the helper's address-space limit
/// retry: ...                       # sections read by the middleware layer
/// audit: {enabled: true}
/// ```
///
/// Files, highest precedence first (`--config FILE` replaces the search):
/// 1. `.descartes/providers.yaml` in the current directory or its nearest
///    ancestor that has one (the project),
/// 2. `$XDG_CONFIG_HOME/descartes/providers.yaml`, by default
///    `~/.config/descartes/providers.yaml` (the user),
/// 3. `/etc/descartes/providers.yaml` (the system).
///
/// Merging: an instance's keys are merged one by one (a project file can
/// change a user instance's `endpoint` and keep its `api_key`); a section's
/// top-level keys likewise; anything else, the higher file wins whole.
///
/// Loading reads and checks the files' structure and reports every problem
/// at once, each with file:line:column. References (`${VAR}`, ...) are
/// expanded when an instance or section is used, so a variable that only an
/// unused instance needs does not stop the others (`config check` expands
/// everything).
public struct ProvidersConfig: Sendable {
    /// Sections read by the middleware layer (retry, fallback chains,
    /// routing, cache, rate limits); this loader merges them, expands their
    /// references and hands them over as `YAMLNode`s (see `section(_:)`).
    package static let middlewareSections = ["retry", "fallbacks", "routes", "cache", "limits", "circuit_breakers", "shared", "budgets"]
    package static let topLevelKeys = ["providers", "audit", "server"] + middlewareSections
    /// Keys of an instance that the host reads itself; every other key is
    /// the plugin's configuration, checked against its manifest.
    package static let instanceKeys = ["plugin", "api_key_helper", "api_key_helper_ttl"] + IsolationSetting.keys

    /// Where a file was looked for and what happened.
    package struct Location: Sendable {
        package enum Scope: String, Sendable {
            case explicit = "--config", project, user, system
        }
        package enum Status: Sendable, Equatable {
            case loaded, missing
            case refused(String)
        }
        package var path: String
        package var scope: Scope
        package var status: Status
    }

    /// One instance as the files define it (references not yet expanded).
    package struct Instance: Sendable {
        package struct Entry: Sendable {
            package var key: String
            package var keyNode: YAMLNode
            package var node: YAMLNode
        }
        package var name: String
        /// Where the instance is named in the highest-precedence file.
        package var location: SourcePosition
        /// The plugin (manifest provider id); the instance name by default.
        package var plugin: String
        package var pluginLocation: SourcePosition?
        /// The plugin's config keys, merged across files.
        package var entries: [Entry]
        package var helper: [String]?
        package var helperLocation: SourcePosition?
        package var helperTTL: Duration
        /// `isolation` and `memory_limit_mb`, merged key by key.
        package var isolation = IsolationSetting()
    }

    /// Every file looked for, in precedence order.
    package var locations: [Location]
    package var instances: [Instance] {
        didSet { index = Self.index(instances) }
    }
    /// Where each instance is in `instances`, by name (kept with it).
    private var index: [String: Int] = [:]

    private static func index(_ instances: [Instance]) -> [String: Int] {
        var out: [String: Int] = [:]
        out.reserveCapacity(instances.count)
        for (i, inst) in instances.enumerated() where out[inst.name] == nil { out[inst.name] = i }
        return out
    }
    /// Merged top-level sections other than `providers`, by key.
    package var sections: [String: YAMLNode]
    /// Expands references; knows the environment and `.env`.
    package var interpolator: Interpolator
    /// The project directory (nearest ancestor with `.descartes/`), if any.
    package var projectDirectory: String?
    /// Problems found while loading (syntax, structure, refused files).
    public var problems: [SourceProblem]

    package var loadedFiles: [String] { locations.filter { $0.status == .loaded }.map(\.path) }

    package func instance(_ name: String) -> Instance? { index[name].map { instances[$0] } }

    /// The environment for manifests' `env` variables: the process
    /// environment over `.env`.
    public var environment: [String: String] { interpolator.dotenv.merging(interpolator.environment) { _, process in process } }

    package init(
        locations: [Location] = [], instances: [Instance] = [], sections: [String: YAMLNode] = [:],
        interpolator: Interpolator = Interpolator(environment: [:]), projectDirectory: String? = nil, problems: [SourceProblem] = []
    ) {
        self.locations = locations
        self.instances = instances
        index = Self.index(instances)
        self.sections = sections
        self.interpolator = interpolator
        self.projectDirectory = projectDirectory
        self.problems = problems
    }

    // MARK: Search

    /// What decides the search.
    public struct Options: Sendable {
        /// `--config FILE`: read this file only.
        public var explicitFile: String?
        public var currentDirectory: String
        public var environment: [String: String]
        /// Holds the system files (`providers.yaml`, `plugins.yaml`).
        public var systemDirectory: String
        /// Skip the project and user files and `.env` (secure execution:
        /// the invoking user controls the working directory and $HOME).
        public var systemOnly: Bool

        /// `systemOnly` nil: when the process runs setuid/setgid, or as root
        /// under a policy that says so (docs/policy.md).
        public init(
            explicitFile: String? = nil, currentDirectory: String = FileSystem.currentDirectory(),
            environment: [String: String] = Environment.current(), systemDirectory: String? = nil,
            systemOnly: Bool? = nil
        ) {
            self.explicitFile = explicitFile
            self.currentDirectory = currentDirectory
            self.environment = environment
            self.systemDirectory = systemDirectory ?? ProvidersConfig.systemDirectory(environment: environment)
            self.systemOnly = systemOnly ?? ProvidersConfig.ignoresUserFiles
        }
    }

    /// Whether the project and user files and `.env` are ignored: when the
    /// process runs setuid/setgid, or as root on a host whose system policy
    /// sets `ignore_environment_as_root` (see docs/policy.md).
    package static var ignoresUserFiles: Bool {
        if Environment.isSecureExecution { return true }
        guard Environment.isRoot else { return false }
        var system = PluginPolicy()
        system.read(PluginPolicy.systemFile(), scope: .system)
        return system.ignoreEnvironmentAsRoot
    }

    /// `/etc/descartes`. An unprivileged process may point it elsewhere
    /// with `DESCARTES_SYSTEM_CONFIG_DIR` (to try a policy before
    /// installing it, and for tests); root and setuid processes always use
    /// `/etc/descartes`.
    package static func systemDirectory(environment: [String: String] = Environment.current()) -> String {
        if !FileTrust.enforced, let d = environment["DESCARTES_SYSTEM_CONFIG_DIR"], d.hasPrefix("/") { return d }
        return "/etc/descartes"
    }

    /// The user's config directory: `$XDG_CONFIG_HOME/descartes`, by default
    /// `~/.config/descartes`.
    package static func userDirectory(environment: [String: String]) -> String {
        if let x = environment["XDG_CONFIG_HOME"], x.hasPrefix("/") { return FileSystem.join(x, "descartes") }
        let home = environment["HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? Environment.homeDirectory
        return FileSystem.join(home, ".config/descartes")
    }

    /// The nearest directory, from `start` up, that holds `.descartes/`.
    package static func projectDirectory(from start: String) -> String? {
        var dir = start
        while true {
            if FileSystem.isDirectory(FileSystem.join(dir, ".descartes")) { return dir }
            let parent = FileSystem.directory(of: dir)
            if parent == dir || dir == "/" { return nil }
            dir = parent
        }
    }

    /// The files to read, highest precedence first.
    package static func searchPaths(_ o: Options) -> (paths: [(String, Location.Scope)], project: String?) {
        if let f = o.explicitFile {
            let path = f.hasPrefix("/") ? f : FileSystem.join(o.currentDirectory, f)
            return ([(path, .explicit)], o.systemOnly ? nil : projectDirectory(from: o.currentDirectory))
        }
        var out: [(String, Location.Scope)] = []
        var project: String? = nil
        if !o.systemOnly {
            // The nearest ancestor with a providers.yaml (a `.descartes/`
            // without one, e.g. holding only plugins.yaml, does not stop the walk).
            var dir = o.currentDirectory
            while true {
                let candidate = FileSystem.join(dir, ".descartes/providers.yaml")
                if FileSystem.exists(candidate) {
                    out.append((candidate, .project))
                    project = dir
                    break
                }
                let parent = FileSystem.directory(of: dir)
                if parent == dir || dir == "/" { break }
                dir = parent
            }
            if project == nil { project = projectDirectory(from: o.currentDirectory) }
            out.append((FileSystem.join(userDirectory(environment: o.environment), "providers.yaml"), .user))
        }
        out.append((FileSystem.join(o.systemDirectory, "providers.yaml"), .system))
        return (out, project)
    }

    /// Finds, reads and merges the files. Never throws: problems are in
    /// `problems` (a missing `--config` file is one).
    public static func load(_ options: Options = Options()) -> ProvidersConfig {
        let (paths, project) = searchPaths(options)
        var locations: [Location] = []
        var documents: [(file: String, root: YAMLNode)] = []
        var problems: [SourceProblem] = []
        for (path, scope) in paths {
            guard FileSystem.exists(path) else {
                locations.append(Location(path: path, scope: scope, status: .missing))
                if scope == .explicit {
                    problems.append(SourceProblem(SourcePosition(file: path, line: 1, column: 1), "no such file (given with --config)"))
                }
                continue
            }
            if FileTrust.enforced, let why = FileTrust.problem(path) {
                locations.append(Location(path: path, scope: scope, status: .refused(why)))
                problems.append(SourceProblem(SourcePosition(file: path, line: 1, column: 1), why))
                continue
            }
            locations.append(Location(path: path, scope: scope, status: .loaded))
            do {
                let text = try FileSystem.readText(path, limit: 4 << 20)
                if let root = try YAML.parse(text, file: path) { documents.append((path, root)) }
            } catch let e as FileSystemError {
                problems.append(SourceProblem(SourcePosition(file: path, line: 1, column: 1), e.reason))
            } catch let e as SourceError {
                problems += e.problems
            } catch {
                problems.append(SourceProblem(SourcePosition(file: path, line: 1, column: 1), "\(error)"))
            }
        }

        // .env in the project directory (or the current directory).
        var dotenv: [String: String] = [:]
        var dotenvFile: String? = nil
        if !options.systemOnly {
            let candidate = FileSystem.join(project ?? options.currentDirectory, ".env")
            if FileSystem.exists(candidate) {
                if FileTrust.enforced, let why = FileTrust.problem(candidate) {
                    problems.append(SourceProblem(SourcePosition(file: candidate, line: 1, column: 1), why))
                } else {
                    do {
                        let parsed = DotEnv.parse(try FileSystem.readText(candidate, limit: 1 << 20), file: candidate)
                        dotenv = parsed.values
                        dotenvFile = candidate
                        problems += parsed.problems
                    } catch {
                        problems.append(SourceProblem(SourcePosition(file: candidate, line: 1, column: 1), error.reason))
                    }
                }
            }
        }

        var config = merge(documents, problems: &problems)
        config.locations = locations
        config.projectDirectory = project
        config.interpolator = Interpolator(environment: options.environment, dotenv: dotenv, dotenvFile: dotenvFile)
        return config
    }

    /// Merges parsed documents, highest precedence first, checking their
    /// structure.
    package static func merge(_ documents: [(file: String, root: YAMLNode)], problems: inout [SourceProblem]) -> ProvidersConfig {
        var v = NodeValidator(file: "")
        var instances: [Instance] = []
        var sections: [String: YAMLNode] = [:]
        for (_, root) in documents {
            guard case .mapping(let pairs) = root.value else {
                v.problem(root, "providers.yaml is a mapping with the keys \(topLevelKeys.joined(separator: ", ")), got a \(root.kindName)")
                continue
            }
            v.unknownKeys(root, allowed: topLevelKeys, what: "top-level key")
            for pair in pairs {
                guard let key = pair.key.scalar, topLevelKeys.contains(key) else { continue }
                if key == "providers" {
                    readProviders(pair.value, into: &instances, &v)
                } else if let existing = sections[key] {
                    sections[key] = mergeMappings(existing, pair.value)
                } else {
                    sections[key] = pair.value
                }
            }
        }
        problems += v.problems
        return ProvidersConfig(instances: instances, sections: sections, problems: problems)
    }

    /// `higher` with the keys of `lower` it lacks, when both are mappings;
    /// otherwise `higher`.
    static func mergeMappings(_ higher: YAMLNode, _ lower: YAMLNode) -> YAMLNode {
        guard case .mapping(var pairs) = higher.value, case .mapping(let more) = lower.value else { return higher }
        for p in more where !pairs.contains(where: { $0.key.scalar == p.key.scalar }) { pairs.append(p) }
        var merged = higher
        merged.value = .mapping(pairs)
        return merged
    }

    static func isValidInstanceName(_ s: String) -> Bool {
        guard let f = s.utf8.first, (f >= 0x61 && f <= 0x7A) || (f >= 0x30 && f <= 0x39) else { return false }
        return s.utf8.allSatisfy {
            ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".")
        }
    }

    static func readProviders(_ node: YAMLNode, into instances: inout [Instance], _ v: inout NodeValidator) {
        guard case .mapping(let pairs) = node.value else {
            if case .scalar(let s, _) = node.value, case .null = YAMLNode.resolvePlain(s) { return }  // `providers:` left empty
            v.problem(node, "'providers' is a mapping of instance names to their settings, got a \(node.kindName)")
            return
        }
        // Instances by name, so each file's entries find theirs in constant
        // time (a scan per instance made 20,000 instances take seconds).
        var byName: [String: Int] = [:]
        for (i, inst) in instances.enumerated() { byName[inst.name] = i }
        for pair in pairs {
            let name = pair.key.scalar ?? ""
            guard isValidInstanceName(name) else {
                v.problem(pair.key, "provider instance name '\(name)' must be lowercase letters, digits, '-', '_' and '.', starting with a letter or digit")
                continue
            }
            var body: [(key: YAMLNode, value: YAMLNode)] = []
            switch pair.value.value {
            case .mapping(let p): body = p
            case .scalar(let s, _) where YAMLNode.resolvePlain(s) == .null: body = []  // `openai:` with nothing under it
            default:
                v.problem(pair.value, "provider '\(name)': its settings are a mapping (plugin, api_key_helper, isolation and the plugin's config keys), got a \(pair.value.kindName)")
                continue
            }
            let index: Int
            if let i = byName[name] {
                index = i
            } else {
                instances.append(Instance(name: name, location: pair.key.location, plugin: name, entries: [], helperTTL: CredentialHelper.defaultTTL))
                index = instances.count - 1
                byName[name] = index
            }
            var inst = instances[index]
            for p in body {
                let key = p.key.scalar ?? ""
                // A higher-precedence file already set it.
                let seen = inst.entries.contains { $0.key == key } || (key == "plugin" && inst.pluginLocation != nil)
                    || (key == "api_key_helper" && inst.helperLocation != nil)
                    || (key == "isolation" && inst.isolation.modeLocation != nil)
                    || (key == "memory_limit_mb" && inst.isolation.memoryLocation != nil)
                if seen { continue }
                switch key {
                case "plugin":
                    guard let s = p.value.scalar, !s.isEmpty, PluginManifest.isValidID(s) else {
                        v.problem(p.value, "provider '\(name)': 'plugin' names a plugin's provider id (lowercase letters, digits and '-')")
                        continue
                    }
                    inst.plugin = s
                    inst.pluginLocation = p.value.location
                case "api_key_helper":
                    switch p.value.value {
                    case .sequence(let items) where !items.isEmpty && items.allSatisfy({ $0.scalar != nil }):
                        inst.helper = items.map { $0.scalar! }
                    case .scalar(let s, _) where !s.trimmingSpaces.isEmpty:
                        inst.helper = s.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
                    default:
                        v.problem(p.value, "provider '\(name)': 'api_key_helper' is a command, as a list of arguments ([secret-tool, lookup, service, x]) or one line split at spaces (run without a shell)")
                        continue
                    }
                    inst.helperLocation = p.value.location
                case "api_key_helper_ttl":
                    guard case .integer(let secs) = p.value.json, secs >= 0 else {
                        v.problem(p.value, "provider '\(name)': 'api_key_helper_ttl' is a number of seconds (0 runs the helper every time)")
                        continue
                    }
                    inst.helperTTL = .seconds(secs)
                case "isolation":
                    inst.isolation.read(isolation: p.value, memory: nil, what: "provider '\(name)'", &v)
                case "memory_limit_mb":
                    inst.isolation.read(isolation: nil, memory: p.value, what: "provider '\(name)'", &v)
                default:
                    if !PluginManifest.isValidConfigName(key) {
                        v.problem(p.key, "provider '\(name)': '\(key)' is not a config key name (lowercase letters, digits and '_')")
                        continue
                    }
                    inst.entries.append(Instance.Entry(key: key, keyNode: p.key, node: p.value))
                }
            }
            instances[index] = inst
        }
    }

    // MARK: Using an instance

    /// An instance's values with references expanded.
    package struct Resolved: Sendable {
        package var name: String
        package var plugin: String
        package var location: SourcePosition
        package var values: [String: ConfigValidation.Explicit]
        /// The key the credential helper fills, when it was not run.
        package var helperPending: [String]?
    }

    /// Expands an instance's values (and runs its `api_key_helper` when
    /// `runHelper` and no `api_key` is written). Reports every problem.
    /// The helper's key is registered in `redactor` (a factory passes its own).
    package func resolve(_ instance: Instance, runHelper: Bool = true, redactor: Redactor = Redactor()) -> Result<Resolved, SourceError> {
        let (resolved, problems, _) = expandInstance(instance, runHelper: runHelper, redactor: redactor)
        if !problems.isEmpty { return .failure(SourceError(problems)) }
        return .success(resolved)
    }

    /// `resolve` without stopping at the first bad key: what expanded, every
    /// problem, and the keys written whose value could not be expanded.
    func expandInstance(_ instance: Instance, runHelper: Bool, redactor: Redactor) -> (Resolved, [SourceProblem], unexpanded: Set<String>) {
        var problems: [SourceProblem] = []
        var unexpanded: Set<String> = []
        var values: [String: ConfigValidation.Explicit] = [:]
        for e in instance.entries {
            var secret = false
            var via: [String] = []
            let what = "key '\(e.key)' of provider '\(instance.name)'"
            guard let value = expand(e.node, what: what, problems: &problems, secret: &secret, via: &via) else {
                unexpanded.insert(e.key)
                continue
            }
            var x = ConfigValidation.Explicit(value: value, origin: e.node.location.description)
            x.position = e.node.location
            x.keyPosition = e.keyNode.location
            x.secret = secret
            x.via = via
            values[e.key] = x
        }
        var pending: [String]? = nil
        if let helper = instance.helper, let at = instance.helperLocation {
            if values["api_key"] != nil {
                problems.append(SourceProblem(at, "provider '\(instance.name)': both 'api_key' and 'api_key_helper' are set; keep one"))
            } else if runHelper {
                do {
                    let key = try CredentialHelper.key(helper, ttl: instance.helperTTL, redactor: redactor)
                    var x = ConfigValidation.Explicit(value: .string(key.reveal()), origin: "api_key_helper \(helper[0]) (\(at))")
                    x.position = at
                    x.secret = true
                    x.via = ["api_key_helper \(helper[0])"]
                    values["api_key"] = x
                } catch {
                    problems.append(SourceProblem(at, "provider '\(instance.name)': \(error.description)"))
                }
            } else {
                pending = helper
            }
        }
        return (Resolved(name: instance.name, plugin: instance.plugin, location: instance.location, values: values, helperPending: pending), problems, unexpanded)
    }

    /// A node's value as JSON with references expanded in every scalar.
    func expand(_ node: YAMLNode, what: String, problems: inout [SourceProblem], secret: inout Bool, via: inout [String]) -> JSONValue? {
        guard let expanded = expandNode(node, what: what, problems: &problems, secret: &secret, via: &via) else { return nil }
        return expanded.json
    }

    func expandNode(_ node: YAMLNode, what: String, problems: inout [SourceProblem], secret: inout Bool, via: inout [String]) -> YAMLNode? {
        interpolator.expandNode(node, what: what, problems: &problems, secret: &secret, via: &via)
    }

    // MARK: Sections

    /// A top-level section (`retry`, `fallbacks`, `routes`, `cache`,
    /// `limits`, `audit`), merged across files, with references expanded in
    /// every scalar. Nil when no file has it.
    ///
    /// This is the seam with the middleware layer: it reads its settings
    /// from these nodes (each keeps its file:line:column for messages; see
    /// `middlewareSections()` for all five at once) and registers a checker
    /// in `ProvidersConfig.sectionCheckers` so that `descartes config check`
    /// reports its problems with the others.
    ///
    /// - Throws: `SourceError` listing every reference that cannot be expanded.
    package func section(_ key: String) throws(SourceError) -> YAMLNode? {
        guard let node = sections[key] else { return nil }
        var problems: [SourceProblem] = []
        var secret = false
        var via: [String] = []
        let expanded = expandNode(node, what: "section '\(key)'", problems: &problems, secret: &secret, via: &via)
        if !problems.isEmpty { throw SourceError(problems) }
        return expanded
    }

    /// Every middleware section present (`retry`, `fallbacks`, `routes`,
    /// `cache`, `limits`), merged and expanded, by name: what the middleware
    /// layer's reader takes.
    ///
    /// - Throws: `SourceError` listing every reference that cannot be
    ///   expanded, in all of them.
    package func middlewareSections() throws(SourceError) -> [String: YAMLNode] {
        var out: [String: YAMLNode] = [:]
        var problems: [SourceProblem] = []
        for key in ProvidersConfig.middlewareSections {
            do {
                if let n = try section(key) { out[key] = n }
            } catch { problems += error.problems }
        }
        if !problems.isEmpty { throw SourceError(problems) }
        return out
    }

    /// Every problem in the configuration: the files' structure, every
    /// instance's references and values against its plugin's manifest, and
    /// each section's own checks. What `descartes config check` prints.
    package func check(catalog: PluginCatalog, checkers: [ConfigSectionChecker] = ProvidersConfig.sectionCheckers) -> [SourceProblem] {
        var all = startupProblems(catalog: catalog, checkers: checkers)
        // `server:` (descartes serve's), which other commands do not read.
        if sections["server"] != nil {
            do {
                if case .failure(let e) = GatewaySettings.read(try section("server"), raw: sections["server"]) { all += e.problems }
            } catch { all += error.problems }
        }
        for inst in instances { all += problems(of: inst, catalog: catalog).filter { !all.contains($0) } }
        return all
    }
}

/// Checks top-level sections of providers.yaml for another part of the
/// library: the middleware layer owns `retry`, `fallbacks`, `routes`,
/// `cache` and `limits`, and checks them together (a fallback chain names
/// routes and instances).
package struct ConfigSectionChecker: Sendable {
    /// The sections it reads.
    package var keys: [String]
    /// Returns every problem in the (merged, expanded) sections present,
    /// each with the file:line:column of the node at fault.
    package var check: @Sendable ([String: YAMLNode], ProvidersConfig) -> [SourceProblem]

    package init(keys: [String], check: @escaping @Sendable ([String: YAMLNode], ProvidersConfig) -> [SourceProblem]) {
        self.keys = keys
        self.check = check
    }
}
