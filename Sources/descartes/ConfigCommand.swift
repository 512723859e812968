import Descartes
import DescartesCommandLine

/// `descartes config show|check`: the merged providers.yaml and its problems.
enum ConfigCommand {
    /// Keys whose values are masked when no manifest types them (a key
    /// the plugin does not declare, a section's key): one of the words of
    /// the name (split at '_', '-' and '.') names a credential. Words, not
    /// substrings: `max_tokens` and `max_tokens_field` are not secrets,
    /// `api_token` and `password` are. A key the manifest declares is
    /// masked when it is typed secret (or its value came from a secret
    /// source), whatever its name.
    static func looksSecret(_ key: String) -> Bool {
        let words = key.lowercased().split(whereSeparator: { $0 == "_" || $0 == "-" || $0 == "." }).map(String.init)
        let credentials: Set<String> = ["key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials", "authorization"]
        return words.contains { credentials.contains($0) }
    }

    /// One key of an instance, as shown.
    struct Shown {
        var key: String
        var value: JSONValue
        var secret: Bool
        var source: String
    }

    struct InstanceView {
        var name: String
        var plugin: String
        var location: String?
        var manifest: String?
        var keys: [Shown]
    }

    /// Says where a value came from, in words.
    static func describe(_ source: String, key: String, values: [String: ConfigValidation.Explicit], config: ProvidersConfig, manifest: PluginManifest?) -> String {
        if let v = values[key], source == v.origin {
            return v.via.isEmpty ? source : "\(source) via \(v.via.joined(separator: ", "))"
        }
        if source.hasPrefix("environment variable ") {
            let name = String(source.dropFirst("environment variable ".count))
            if config.interpolator.environment[name] == nil, config.interpolator.dotenv[name] != nil {
                return "\(name) from \(config.interpolator.dotenvFile ?? ".env")"
            }
            return source
        }
        if source == "default", let m = manifest { return "default (\(m.file))" }
        return source
    }

    /// The view of one instance (or of a plugin used without settings) and
    /// the problems found with it.
    static func view(
        name: String, instance: ProvidersConfig.Instance?, config: ProvidersConfig, catalog: PluginCatalog
    ) -> (InstanceView, [SourceProblem]) {
        var problems: [SourceProblem] = []
        let plugin = instance?.plugin ?? name
        var view = InstanceView(name: name, plugin: plugin, location: instance?.location.description, manifest: nil, keys: [])
        var values: [String: ConfigValidation.Explicit] = [:]
        var pendingHelper: [String]? = nil
        var helperAt: String? = nil
        if let instance {
            switch config.resolve(instance, runHelper: false) {
            case .failure(let e):
                problems += e.problems
                // Show what is written, unexpanded.
                for entry in instance.entries {
                    values[entry.key] = ConfigValidation.Explicit(value: .string(entry.node.scalar ?? "(\(entry.node.kindName))"), origin: entry.node.location.description)
                    values[entry.key]!.via = ["(not expanded: see the problems below)"]
                }
            case .success(let r):
                values = r.values
                pendingHelper = r.helperPending
            }
            helperAt = instance.helperLocation?.description
        }
        let entry = catalog.entry(for: plugin)
        guard let manifest = entry?.manifest, entry?.status == .available else {
            if let instance {
                let reason = entry.map { "plugin '\(plugin)' is not usable: \($0.reason ?? $0.status.label)" }
                    ?? "no plugin '\(plugin)' is installed; installed: \(catalog.availableProviders.joined(separator: ", "))"
                problems.append(SourceProblem(instance.pluginLocation ?? instance.location, "provider '\(name)': \(reason)"))
            }
            for key in values.keys.sorted() {
                let v = values[key]!
                view.keys.append(Shown(key: key, value: v.value, secret: v.secret || looksSecret(key), source: describe(v.origin, key: key, values: values, config: config, manifest: nil)))
            }
            return (view, problems)
        }
        view.manifest = manifest.file
        if pendingHelper != nil, manifest.configKey("api_key") != nil {
            values["api_key"] = ConfigValidation.Explicit(value: .string("(from api_key_helper)"), origin: "api_key_helper")
        }
        let outcome = ConfigValidation.check(
            manifest: manifest, instance: name, values: values, environment: config.environment, at: instance?.location)
        problems += outcome.problems.filter { p in !problems.contains(p) }
        for key in manifest.config {
            if key.name == "api_key", let helper = pendingHelper {
                view.keys.append(
                    Shown(key: key.name, value: .string("[from api_key_helper]"), secret: false,
                          source: "api_key_helper '\(helper.joined(separator: " "))' at \(helperAt ?? "?") (run when the provider is used)"))
                continue
            }
            guard let value = outcome.config[key.name] else { continue }
            let secret = key.secret || values[key.name]?.secret == true
            let source = describe(outcome.sources[key.name] ?? "?", key: key.name, values: values, config: config, manifest: manifest)
            view.keys.append(Shown(key: key.name, value: value, secret: secret, source: source))
        }
        // Keys written in the file that the manifest does not declare.
        for key in values.keys.sorted() where manifest.configKey(key) == nil {
            let v = values[key]!
            view.keys.append(Shown(key: key, value: v.value, secret: v.secret || looksSecret(key), source: "\(v.origin) (unknown to \(manifest.provider))"))
        }
        return (view, problems)
    }

    static func show(_ args: Arguments, globals: Globals) -> ExitCode {
        let config = ProvidersConfig.load(.init(explicitFile: globals.configFile))
        let catalog = Commands.catalog(globals)
        var problems = config.problems
        var views: [InstanceView] = []
        if let name = args.positional.first {
            let inst = config.instance(name)
            if inst == nil && catalog.entry(for: name) == nil {
                failure(ProviderError(.config, "'\(name)' is neither a provider instance in the configuration nor an installed plugin"))
            }
            let (v, p) = view(name: name, instance: inst, config: config, catalog: catalog)
            views.append(v)
            problems += p
        } else {
            for inst in config.instances {
                let (v, p) = view(name: inst.name, instance: inst, config: config, catalog: catalog)
                views.append(v)
                problems += p
            }
        }
        var sections: [(key: String, node: YAMLNode?, raw: YAMLNode)] = []
        if args.positional.isEmpty {
            for key in ProvidersConfig.topLevelKeys where config.sections[key] != nil {
                do { sections.append((key, try config.section(key), config.sections[key]!)) } catch {
                    problems += error.problems
                    sections.append((key, nil, config.sections[key]!))
                }
            }
        }

        if args.flag(.json) {
            var files: [JSONValue] = []
            for l in config.locations {
                var o: JSONObject = ["path": .string(l.path), "scope": .string(l.scope.rawValue)]
                switch l.status {
                case .loaded: o["status"] = "loaded"
                case .missing: o["status"] = "missing"
                case .refused(let why):
                    o["status"] = "refused"
                    o["reason"] = .string(why)
                }
                files.append(.object(o))
            }
            var providers = JSONObject()
            for v in views {
                var keys = JSONObject()
                for k in v.keys {
                    keys[k.key] = ["value": k.secret ? .string(Secret.mask) : k.value, "secret": .bool(k.secret), "source": .string(k.source)]
                }
                var o: JSONObject = ["plugin": .string(v.plugin), "config": .object(keys)]
                o["location"] = v.location.map { .string($0) } ?? .null
                o["manifest"] = v.manifest.map { .string($0) } ?? .null
                providers[v.name] = .object(o)
            }
            var sectionDoc = JSONObject()
            for s in sections {
                sectionDoc[s.key] = ["value": masked(shown(s)), "source": .string(s.raw.location.description)]
            }
            let doc: JSONObject = [
                "files": .array(files), "dotenv": config.interpolator.dotenvFile.map { .string($0) } ?? .null,
                "providers": .object(providers), "sections": .object(sectionDoc),
                "problems": .array(problems.map(problemJSON)),
            ]
            Out.line(JSONValue.object(doc).prettyText())
            return problems.isEmpty ? .ok : .config
        }

        Out.line(Out.bold("Configuration files") + " (the first overrides the others):")
        var rows: [[String]] = []
        for l in config.locations { rows.append(["  " + l.path, l.scope.rawValue, Commands.describe(l.status)]) }
        Out.line(Out.table(["  FILE", "SCOPE", "STATUS"], rows))
        if let env = config.interpolator.dotenvFile {
            Out.line("  \(env)  (.env, \(config.interpolator.dotenv.count) variable\(config.interpolator.dotenv.count == 1 ? "" : "s"))")
        }
        Out.line("")
        var lines: [(String, String)] = []
        if views.isEmpty {
            lines.append(("providers: {}", "no provider instances are configured; plugins are used by their ids"))
        } else {
            lines.append(("providers:", ""))
            for v in views {
                lines.append(("  \(v.name):", v.location ?? "not in any file: the plugin's defaults and environment"))
                lines.append(("    plugin: \(v.plugin)", v.manifest.map { "manifest \($0)" } ?? "not installed"))
                for k in v.keys {
                    lines.append(("    \(k.key): \(k.secret ? Secret.mask : inline(k.value))", k.source))
                }
            }
        }
        for s in sections {
            lines.append(("\(s.key):", s.raw.location.description))
            for l in block(masked(shown(s)), indent: 2) { lines.append((l, "")) }
        }
        let width = min(56, lines.map { $0.0.count }.max() ?? 0)
        for (text, comment) in lines {
            if comment.isEmpty {
                Out.line(text)
            } else {
                Out.line(text + String(repeating: " ", count: max(1, width - text.count + 2)) + Out.dim("# " + comment))
            }
        }
        if !problems.isEmpty {
            Out.line("")
            Out.line(Out.red("\(problems.count) problem\(problems.count == 1 ? "" : "s"):"))
            for p in problems { Out.line("  \(p)") }
            return .config
        }
        return .ok
    }

    static func check(_ args: Arguments, globals: Globals) -> ExitCode {
        let config = ProvidersConfig.load(.init(explicitFile: globals.configFile))
        let catalog = Commands.catalog(globals)
        let problems = config.check(catalog: catalog)
        if args.flag(.json) {
            Out.line(JSONValue.object(["files": .array(config.loadedFiles.map { .string($0) }), "problems": .array(problems.map(problemJSON))]).prettyText())
        } else if problems.isEmpty {
            let files = config.loadedFiles
            Out.line("ok: \(files.isEmpty ? "no configuration files" : files.joined(separator: ", ")); \(config.instances.count) provider instance\(config.instances.count == 1 ? "" : "s")")
        } else {
            Out.err("\(problems.count) problem\(problems.count == 1 ? "" : "s"):")
            for p in problems { Out.err("  \(p)") }
        }
        return problems.isEmpty ? .ok : .config
    }

    static func problemJSON(_ p: SourceProblem) -> JSONValue {
        ["file": .string(p.location.file), "line": .integer(p.location.line), "column": .integer(p.location.column), "message": .string(p.message)]
    }

    /// Masks the values of secret-looking keys in a section.
    /// A section as shown: expanded, except `server:` and `shared:` (their
    /// secrets are references by rule; the references are shown, never the values).
    static func shown(_ s: (key: String, node: YAMLNode?, raw: YAMLNode)) -> JSONValue {
        (s.key == "server" || s.key == "shared" ? s.raw : s.node ?? s.raw).json
    }

    static func masked(_ v: JSONValue) -> JSONValue {
        switch v {
        case .object(let o):
            var out = JSONObject()
            for m in o { out[m.key] = looksSecret(m.key) && !(m.value.objectValue != nil || m.value.arrayValue != nil) ? .string(Secret.mask) : masked(m.value) }
            return .object(out)
        case .array(let a): return .array(a.map(masked))
        default: return v
        }
    }

    /// A value in YAML's flow style.
    static func inline(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .integer(let i): return String(i)
        case .number(let d): return d.description
        case .string(let s): return scalar(s)
        case .array(let a): return "[" + a.map(inline).joined(separator: ", ") + "]"
        case .object(let o): return "{" + o.map { "\(scalar($0.key)): \(inline($0.value))" }.joined(separator: ", ") + "}"
        }
    }

    static func scalar(_ s: String) -> String { YAMLText.scalar(s) }

    /// A value in YAML's block style, one line per entry.
    static func block(_ v: JSONValue, indent: Int) -> [String] {
        let pad = String(repeating: " ", count: indent)
        switch v {
        case .object(let o):
            var out: [String] = []
            for m in o {
                switch m.value {
                case .object(let inner) where !inner.isEmpty:
                    out.append("\(pad)\(scalar(m.key)):")
                    out += block(m.value, indent: indent + 2)
                case .array(let items) where items.contains(where: { $0.objectValue != nil }):
                    out.append("\(pad)\(scalar(m.key)):")
                    out += block(m.value, indent: indent + 2)
                default:
                    out.append("\(pad)\(scalar(m.key)): \(inline(m.value))")
                }
            }
            return out
        case .array(let items):
            var out: [String] = []
            for i in items {
                let inner = block(i, indent: indent + 2)
                if i.objectValue != nil, let first = inner.first {
                    out.append("\(pad)- " + first.dropFirst(indent + 2))
                    out += inner.dropFirst()
                } else {
                    out.append("\(pad)- \(inline(i))")
                }
            }
            return out
        default:
            return ["\(pad)\(inline(v))"]
        }
    }
}
