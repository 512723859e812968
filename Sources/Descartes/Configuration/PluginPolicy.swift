import Glibc
import DescartesSupport

/// The host's plugin policy: `/etc/descartes/plugins.yaml`, narrowed by the
/// user's `$XDG_CONFIG_HOME/descartes/plugins.yaml`.
///
/// ```yaml
/// enable: [openai, anthropic, "ollama*"]  # an allowlist (globs); absent: every plugin not disabled
/// disable: [claude-code-cli]              # globs; wins over enable
/// required: [openai]                      # must be installed, enabled and loadable (PAM's "required")
/// search: [/opt/descartes/plugins]        # more plugin directories
/// sha256:                                 # pins: the library must have this digest to be loaded
///   libdescartes-openai.so: 3f5e...       #   by file name, or by absolute path
/// ignore_environment_as_root: false       # system file only: see docs/policy.md
/// plugins:                                # per plugin (globs; in each file the first entry that sets a key decides)
///   claude-code-cli: {isolation: process, memory_limit_mb: 2048}
///   "community-*": {isolation: process}
/// ```
///
/// The user file can only narrow the system's: its `disable`, `required` and
/// pins add to the system's, and its `enable` list further restricts what
/// the system allows. It cannot enable what the system disables, nor run in
/// process what the system isolates (either file's `isolation: process`
/// isolates; the lower memory limit applies).
package struct PluginPolicy: Sendable {
    package enum Scope: String, Sendable {
        case system, user
    }

    /// One pattern and where it is written.
    package struct Rule: Sendable {
        package var pattern: String
        package var location: SourcePosition
        package var scope: Scope

        package func matches(_ name: String) -> Bool { fnmatch(pattern, name, 0) == 0 }
    }

    /// A `plugins:` entry: settings for the plugins a glob matches.
    package struct PluginRule: Sendable {
        package var pattern: String
        package var location: SourcePosition
        package var scope: Scope
        package var isolation: IsolationSetting

        package func matches(_ name: String) -> Bool { fnmatch(pattern, name, 0) == 0 }
    }

    package struct Pin: Sendable {
        /// A library file name (`libdescartes-openai.so`) or absolute path.
        package var library: String
        /// 64 lowercase hex digits.
        package var sha256: String
        package var location: SourcePosition
    }

    /// A policy file and what became of it.
    package struct File: Sendable {
        package var path: String
        package var scope: Scope
        package var status: ProvidersConfig.Location.Status
    }

    package var files: [File] = []
    /// Allowlists: the system's and the user's (nil when a file has none).
    package var systemEnable: [Rule]?
    package var userEnable: [Rule]?
    package var disable: [Rule] = []
    package var required: [Rule] = []
    package var search: [PluginSearch.Directory] = []
    package var pins: [Pin] = []
    /// Per-plugin settings (`plugins:`), in file order, the system's first.
    package var pluginRules: [PluginRule] = []
    /// Root ignores `DESCARTES_PLUGIN_PATH` and the user's directories and
    /// files, as setuid processes always do (system file only).
    package var ignoreEnvironmentAsRoot = false
    /// Problems in the files. A policy with problems fails closed: no plugin
    /// is enabled.
    package var problems: [SourceProblem] = []

    package init() {}

    /// No policy at all: every plugin is enabled.
    package static let none = PluginPolicy()

    static let knownKeys = ["enable", "disable", "required", "search", "sha256", "ignore_environment_as_root", "plugins"]
    /// The keys of a `plugins:` entry.
    static let pluginKeys = IsolationSetting.keys

    // MARK: Loading

    package static func systemFile(environment: [String: String] = Environment.current()) -> String {
        FileSystem.join(ProvidersConfig.systemDirectory(environment: environment), "plugins.yaml")
    }

    package static func userFile(environment: [String: String] = Environment.current()) -> String {
        FileSystem.join(ProvidersConfig.userDirectory(environment: environment), "plugins.yaml")
    }

    /// The host's policy: the system file, then (unless the process runs
    /// setuid, or as root with `ignore_environment_as_root`) the user's.
    package static func standard(environment: [String: String] = Environment.current()) -> PluginPolicy {
        var policy = PluginPolicy()
        policy.read(systemFile(environment: environment), scope: .system)
        if Environment.isSecureExecution || (Environment.isRoot && policy.ignoreEnvironmentAsRoot) {
            policy.files.append(File(path: userFile(environment: environment), scope: .user, status: .refused("ignored: the process runs with elevated privileges")))
        } else {
            policy.read(userFile(environment: environment), scope: .user)
        }
        return policy
    }

    /// Adds a file's rules to the policy (a missing file adds nothing).
    package mutating func read(_ path: String, scope: Scope) {
        guard FileSystem.exists(path) else {
            files.append(File(path: path, scope: scope, status: .missing))
            return
        }
        if FileTrust.enforced, let why = FileTrust.problem(path) {
            files.append(File(path: path, scope: scope, status: .refused(why)))
            problems.append(SourceProblem(SourcePosition(file: path, line: 1, column: 1), why))
            return
        }
        files.append(File(path: path, scope: scope, status: .loaded))
        do {
            let text = try FileSystem.readText(path, limit: 1 << 20)
            add(text, file: path, scope: scope)
        } catch {
            problems.append(SourceProblem(SourcePosition(file: path, line: 1, column: 1), error.reason))
        }
    }

    /// Adds rules from a file's text.
    package mutating func add(_ text: String, file: String, scope: Scope) {
        let root: YAMLNode
        do {
            guard let r = try YAML.parse(text, file: file) else { return }
            root = r
        } catch {
            problems += error.problems
            return
        }
        var v = NodeValidator(file: file)
        guard case .mapping = root.value else {
            v.problem(root, "a plugin policy is a mapping with the keys \(PluginPolicy.knownKeys.joined(separator: ", ")), got a \(root.kindName)")
            problems += v.problems
            return
        }
        v.unknownKeys(root, allowed: PluginPolicy.knownKeys, what: "policy key")
        func rules(_ key: String) -> [Rule]? {
            guard let node = root[key] else { return nil }
            if case .scalar(let s, _) = node.value, case .null = YAMLNode.resolvePlain(s) { return [] }
            guard case .sequence(let items) = node.value else {
                v.problem(node, "'\(key)' is a list of plugin names or globs, got a \(node.kindName)")
                return nil
            }
            var out: [Rule] = []
            for i in items {
                guard let s = i.scalar, !s.isEmpty else {
                    v.problem(i, "'\(key)' holds plugin names or globs (strings) only")
                    continue
                }
                out.append(Rule(pattern: s, location: i.location, scope: scope))
            }
            return out
        }
        if let e = rules("enable") {
            switch scope {
            case .system: systemEnable = (systemEnable ?? []) + e
            case .user: userEnable = (userEnable ?? []) + e
            }
        }
        disable += rules("disable") ?? []
        required += rules("required") ?? []
        if let s = v.stringList(root, "search") {
            for (i, dir) in s.enumerated() {
                let at = root["search"].flatMap { node -> SourcePosition? in
                    if case .sequence(let items) = node.value, i < items.count { return items[i].location }
                    return nil
                } ?? root.location
                guard dir.hasPrefix("/") else {
                    v.problems.append(SourceProblem(at, "search directory '\(dir)' must be an absolute path"))
                    continue
                }
                search.append(PluginSearch.Directory(path: dir, origin: "\(scope == .system ? "policy" : "user policy") \(at)"))
            }
        }
        if let node = root["sha256"] {
            if case .mapping(let pairs) = node.value {
                for p in pairs {
                    let lib = p.key.scalar ?? ""
                    let digest = (p.value.scalar ?? "").lowercased()
                    guard digest.count == 64, digest.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
                        v.problem(p.value, "the sha256 pin of '\(lib)' must be 64 hexadecimal digits (sha256sum prints it)")
                        continue
                    }
                    guard !lib.isEmpty, lib.hasPrefix("/") || !lib.contains("/") else {
                        v.problem(p.key, "a pin names a library by file name (libdescartes-x.so) or absolute path, got '\(lib)'")
                        continue
                    }
                    pins.append(Pin(library: lib, sha256: digest, location: p.value.location))
                }
            } else {
                v.problem(node, "'sha256' maps library file names (or absolute paths) to their SHA-256 digests, got a \(node.kindName)")
            }
        }
        if let node = root["plugins"] {
            switch node.value {
            case .mapping(let pairs):
                for p in pairs {
                    let pattern = p.key.scalar ?? ""
                    guard !pattern.isEmpty else {
                        v.problem(p.key, "'plugins' is keyed by plugin names or globs (strings)")
                        continue
                    }
                    let what = "plugin '\(pattern)'"
                    guard case .mapping = p.value.value else {
                        v.problem(p.value, "\(what): its settings are a mapping (\(PluginPolicy.pluginKeys.joined(separator: ", "))), got a \(p.value.kindName)")
                        continue
                    }
                    v.unknownKeys(p.value, allowed: PluginPolicy.pluginKeys, what: "key of \(what)")
                    var setting = IsolationSetting()
                    setting.read(isolation: p.value["isolation"], memory: p.value["memory_limit_mb"], what: what, &v)
                    pluginRules.append(PluginRule(pattern: pattern, location: p.key.location, scope: scope, isolation: setting))
                }
            case .scalar(let s, _) where YAMLNode.resolvePlain(s) == .null:
                break
            default:
                v.problem(node, "'plugins' maps plugin names or globs to their settings (\(PluginPolicy.pluginKeys.joined(separator: ", "))), got a \(node.kindName)")
            }
        }
        if let b = v.bool(root, "ignore_environment_as_root") {
            if scope == .system { ignoreEnvironmentAsRoot = b } else {
                v.problem(root["ignore_environment_as_root"]!, "'ignore_environment_as_root' belongs in the system policy (\(PluginPolicy.systemFile())), not a user's")
            }
        }
        problems += v.problems
    }

    // MARK: Deciding

    /// Whether a plugin may be used, and why, in words that name the file
    /// and line that decided.
    package struct Decision: Sendable, Equatable {
        package var enabled: Bool
        package var reason: String
        package init(enabled: Bool, reason: String) {
            self.enabled = enabled
            self.reason = reason
        }
    }

    package func decision(for provider: String) -> Decision {
        if !problems.isEmpty {
            return Decision(enabled: false, reason: "the plugin policy is invalid (\(problems[0])); no plugin is enabled until it is fixed")
        }
        for scope in [Scope.system, .user] {
            if let r = disable.first(where: { $0.scope == scope && $0.matches(provider) }) {
                return Decision(enabled: false, reason: "disabled by \(r.location) (\(scope) policy: disable '\(r.pattern)')")
            }
        }
        var enabledBy: Rule? = nil
        for (scope, list) in [(Scope.system, systemEnable), (.user, userEnable)] {
            guard let list else { continue }
            guard let r = list.first(where: { $0.matches(provider) }) else {
                let at = list.first?.location.description ?? files.first { $0.scope == scope }?.path ?? "?"
                return Decision(enabled: false, reason: "not in the \(scope) policy's enable list (\(at))")
            }
            enabledBy = enabledBy ?? r
        }
        if let r = enabledBy { return Decision(enabled: true, reason: "enabled by \(r.location) (enable '\(r.pattern)')") }
        return Decision(enabled: true, reason: files.contains { $0.status == .loaded } ? "enabled: no policy rule disables it" : "enabled: no policy file")
    }

    /// Where `provider` runs: in each file the first matching `plugins:`
    /// entry that sets `isolation` (and the first that sets
    /// `memory_limit_mb`) decides; either file's `process` isolates it, and
    /// the lower memory limit applies.
    package func isolation(for provider: String) -> IsolationDecision {
        var d = IsolationDecision()
        for scope in [Scope.system, .user] {
            let mine = pluginRules.filter { $0.scope == scope && $0.matches(provider) }
            var s = IsolationSetting()
            if let r = mine.first(where: { $0.isolation.mode != nil }) {
                s.mode = r.isolation.mode
                s.modeLocation = r.isolation.modeLocation
            }
            if let r = mine.first(where: { $0.isolation.memoryMB != nil }) {
                s.memoryMB = r.isolation.memoryMB
                s.memoryLocation = r.isolation.memoryLocation
            }
            d.add(s, source: "\(scope.rawValue) policy")
        }
        return d
    }

    /// The rule that requires `provider`, if any.
    package func requirement(for provider: String) -> Rule? { required.first { $0.matches(provider) } }

    /// The pin for a library, by absolute path first, then file name.
    package func pin(for libraryPath: String) -> Pin? {
        if pins.isEmpty { return nil }
        let real = FileSystem.realPath(libraryPath) ?? libraryPath
        return pins.first { $0.library == libraryPath || $0.library == real }
            ?? pins.first { !$0.library.hasPrefix("/") && $0.library == FileSystem.basename(real) }
    }
}
