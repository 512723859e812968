import DescartesCore

/// Checks a provider configuration against its manifest's declared keys.
public enum ConfigValidation {
    public enum Coerced: Sendable {
        case success(JSONValue)
        case failure(String)
    }

    /// Converts `value` to `type`. Strings (from the command line and the
    /// environment) are parsed; other mismatches fail.
    public static func coerce(_ value: JSONValue, to type: ConfigType) -> Coerced {
        switch (type, value) {
        case (.string, .string): return .success(value)
        case (.string, .integer(let i)): return .success(.string(String(i)))
        case (.string, .number(let d)): return .success(.string(d.description))
        case (.integer, .integer): return .success(value)
        case (.integer, .number(let d)) where d.rounded() == d && abs(d) < 9e15: return .success(.integer(Int(d)))
        case (.integer, .string(let s)):
            if let i = Int(s.trimmingSpaces) { return .success(.integer(i)) }
        case (.number, .integer(let i)): return .success(.number(Double(i)))
        case (.number, .number): return .success(value)
        case (.number, .string(let s)):
            if let d = Double(s.trimmingSpaces) { return .success(.number(d)) }
        case (.boolean, .bool): return .success(value)
        case (.boolean, .string(let s)):
            switch s.trimmingSpaces.lowercased() {
            case "true", "1", "yes", "on": return .success(.bool(true))
            case "false", "0", "no", "off": return .success(.bool(false))
            default: break
            }
        case (.list, .array(let items)):
            var out: [JSONValue] = []
            for i in items {
                switch i {
                case .string: out.append(i)
                case .integer, .number, .bool: out.append(.string(i.jsonText))
                default: return .failure("must be a list of strings")
                }
            }
            return .success(.array(out))
        case (.list, .string(let s)):
            // From the command line or the environment: comma-separated.
            if s.isEmpty { return .success(.array([])) }
            return .success(.array(s.split(separator: ",", omittingEmptySubsequences: false).map { .string(String($0).trimmingSpaces) }))
        case (.map, .object(let o)):
            var out = JSONObject()
            for m in o {
                switch m.value {
                case .string: out[m.key] = m.value
                case .integer, .number, .bool: out[m.key] = .string(m.value.jsonText)
                default: return .failure("must map names to strings")
                }
            }
            return .success(.object(out))
        case (.map, .string(let s)):
            // KEY=VALUE,KEY2=VALUE2
            var out = JSONObject()
            for part in s.split(separator: ",") {
                guard let eq = part.firstIndex(of: "=") else { return .failure("must be NAME=VALUE pairs separated by commas") }
                out[String(part[..<eq]).trimmingSpaces] = .string(String(part[part.index(after: eq)...]))
            }
            return .success(.object(out))
        default: break
        }
        return .failure("must be \(article(type)) \(type.rawValue), got \(value.typeName)")
    }

    static func article(_ t: ConfigType) -> String {
        switch t {
        case .integer: return "an"
        default: return "a"
        }
    }

    /// The configuration a plugin receives: explicit values, then each key's
    /// environment variables, then its default; checked against the
    /// manifest. Reports every problem at once, naming the manifest file.
    ///
    /// - Returns: the config object and the secret values it holds (for
    ///   redaction).
    public static func resolve(
        manifest: PluginManifest, instance: String, explicit: [String: JSONValue], environment: [String: String]
    ) throws(ProviderError) -> (config: JSONObject, secrets: [String]) {
        var problems: [String] = []
        var config = JSONObject()
        var secrets: [String] = []
        let known = manifest.config.map(\.name)
        for name in explicit.keys.sorted() where manifest.configKey(name) == nil {
            let hint = closest(name, in: known).map { " (did you mean '\($0)'?)" } ?? ""
            let list = known.isEmpty ? "it declares none" : "it declares: \(known.joined(separator: ", "))"
            problems.append("unknown key '\(name)'\(hint); \(list)")
        }
        for key in manifest.config {
            var raw: JSONValue? = nil
            var source = "config"
            if let v = explicit[key.name], !v.isNull {
                raw = v
            } else if let (name, value) = key.env.lazy.compactMap({ n in environment[n].map { (n, $0) } }).first(where: { !$0.1.isEmpty }) {
                raw = .string(value)
                source = "environment variable \(name)"
            } else if let d = key.defaultValue {
                raw = d
                source = "default"
            }
            guard let raw else {
                if key.required {
                    let envHint = key.env.isEmpty ? "" : " or the environment variable \(key.env.joined(separator: " / "))"
                    problems.append("missing required key '\(key.name)' (\(key.type.rawValue)): set it in the config\(envHint)")
                }
                continue
            }
            switch coerce(raw, to: key.type) {
            case .success(let v):
                config[key.name] = v
                if key.secret, case .string(let s) = v, !s.isEmpty { secrets.append(s) }
            case .failure(let msg):
                let shown = key.secret ? "" : (raw.stringValue.map { " ('\(Wire.excerpt($0, limit: 60))')" } ?? "")
                problems.append("key '\(key.name)' from \(source) \(msg)\(shown)")
            }
        }
        if !problems.isEmpty {
            throw ProviderError(
                .config,
                "invalid configuration for '\(instance)' (\(problems.count) problem\(problems.count == 1 ? "" : "s"), checked against \(manifest.file))",
                provider: instance, details: problems)
        }
        return (config, secrets)
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
