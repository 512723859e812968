import DescartesCore
import DescartesSupport

/// Checks a provider configuration against its manifest's declared keys.
package enum ConfigValidation {
    package enum Coerced: Sendable {
        case success(JSONValue)
        case failure(String)
    }

    /// Converts `value` to `type`. Strings (from the command line and the
    /// environment) are parsed; other mismatches fail.
    package static func coerce(_ value: JSONValue, to type: ConfigType) -> Coerced {
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

    /// A value given for a config key: on the command line (`--set`), in
    /// code, or in providers.yaml (then with its positions).
    package struct Explicit: Sendable {
        package var value: JSONValue
        /// Where it came from, for messages: "config", "--set",
        /// "file:line:column".
        package var origin: String
        /// The value's and the key's positions in a file, when it came from one.
        package var position: SourcePosition?
        package var keyPosition: SourcePosition?
        /// The value must be masked even if the manifest does not declare the
        /// key secret (it came from `${file:...}` or a credential helper).
        package var secret: Bool = false
        /// The references it was expanded from (`${OPENAI_API_KEY}`).
        package var via: [String] = []

        package init(value: JSONValue, origin: String = "config") {
            self.value = value
            self.origin = origin
        }
    }

    /// What checking a configuration found.
    package struct Outcome: Sendable {
        /// The config object the plugin receives.
        package var config: JSONObject
        /// Secret values in it (for redaction).
        package var secrets: [String]
        /// Where each key's value came from: "file:line:column",
        /// "environment variable X", "default", "--set", "config".
        package var sources: [String: String]
        /// Every problem, positioned when the value came from a file.
        package var problems: [SourceProblem]
        /// The same problems as lines for an error's details.
        package var details: [String]
    }

    /// The configuration a plugin receives: explicit values, then each key's
    /// environment variables, then its default; checked against the
    /// manifest. Reports every problem at once, naming the manifest file.
    ///
    /// - Returns: the config object and the secret values it holds (for
    ///   redaction).
    package static func resolve(
        manifest: PluginManifest, instance: String, explicit: [String: JSONValue], environment: [String: String]
    ) throws(ProviderError) -> (config: JSONObject, secrets: [String]) {
        let r = try resolve(
            manifest: manifest, instance: instance, values: explicit.mapValues { Explicit(value: $0) }, environment: environment, at: nil)
        return (r.config, r.secrets)
    }

    /// As `resolve(manifest:instance:explicit:environment:)`, for values that
    /// may come from a file: problems with a value or key carry its
    /// file:line:column; missing keys are reported at `at` (where the
    /// instance is defined), when given.
    package static func resolve(
        manifest: PluginManifest, instance: String, values: [String: Explicit], environment: [String: String], at: SourcePosition?
    ) throws(ProviderError) -> Outcome {
        let r = check(manifest: manifest, instance: instance, values: values, environment: environment, at: at)
        if !r.details.isEmpty {
            throw ProviderError(
                .config,
                "invalid configuration for '\(instance)' (\(r.details.count) problem\(r.details.count == 1 ? "" : "s"), checked against \(manifest.file))",
                provider: instance, details: r.details)
        }
        return r
    }

    /// Checks without throwing; see `resolve`.
    /// An http(s) URL whose authority carries user information
    /// (`https://user:pass@host/...`): refused, since URLs end up in errors,
    /// logs and `config show`.
    package static func hasCredentials(_ s: String) -> Bool {
        let lower = s.lowercased()
        guard lower.hasPrefix("http://") || lower.hasPrefix("https://") else { return false }
        let rest = s[s.index(s.firstIndex(of: ":")!, offsetBy: 3)...]
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        return authority.contains("@")
    }

    /// - Parameter unexpanded: keys written whose value could not be read
    ///   (an unset `${VAR}`, reported by the caller): neither missing nor
    ///   checked for type here, but still checked against the manifest's keys.
    package static func check(
        manifest: PluginManifest, instance: String, values: [String: Explicit], environment: [String: String], at: SourcePosition?,
        unexpanded: Set<String> = []
    ) -> Outcome {
        var out = Outcome(config: JSONObject(), secrets: [], sources: [:], problems: [], details: [])
        func problem(_ position: SourcePosition?, _ message: String) {
            if let position {
                out.problems.append(SourceProblem(position, message))
                out.details.append("\(position): \(message)")
            } else {
                out.details.append(message)
                out.problems.append(SourceProblem(SourcePosition(file: manifest.file, line: 1, column: 1), message))
            }
        }
        let known = manifest.config.map(\.name)
        for name in unexpanded.subtracting(values.keys).sorted() where manifest.configKey(name) == nil {
            let hint = closest(name, in: known).map { " (did you mean '\($0)'?)" } ?? ""
            problem(at, "unknown key '\(name)' for provider '\(instance)'\(hint); its plugin '\(manifest.provider)' (\(manifest.file)) declares: \(known.joined(separator: ", "))")
        }
        for name in values.keys.sorted() where manifest.configKey(name) == nil {
            let hint = closest(name, in: known).map { " (did you mean '\($0)'?)" } ?? ""
            let list = known.isEmpty ? "it declares none" : "it declares: \(known.joined(separator: ", "))"
            let v = values[name]!
            if v.keyPosition != nil {
                let declared = known.isEmpty ? "declares no keys" : "declares: \(known.joined(separator: ", "))"
                problem(v.keyPosition, "unknown key '\(name)' for provider '\(instance)'\(hint); its plugin '\(manifest.provider)' (\(manifest.file)) \(declared)")
            } else {
                problem(nil, "unknown key '\(name)'\(hint); \(list)")
            }
        }
        for key in manifest.config where !unexpanded.contains(key.name) || values[key.name] != nil {
            var raw: JSONValue? = nil
            var source = "config"
            var position: SourcePosition? = nil
            var secret = key.secret
            if let v = values[key.name], !v.value.isNull {
                raw = v.value
                source = v.origin
                position = v.position
                secret = secret || v.secret
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
                    if let at {
                        problem(at, "provider '\(instance)' is missing required key '\(key.name)' (\(key.type.rawValue)): set it here\(envHint)")
                    } else {
                        problem(nil, "missing required key '\(key.name)' (\(key.type.rawValue)): set it in the config\(envHint)")
                    }
                }
                continue
            }
            switch coerce(raw, to: key.type) {
            case .success(let v):
                if case .string(let url) = v, hasCredentials(url) {
                    // Never shown: the URL holds a password.
                    let fix = "put the key in 'api_key' (or a header in 'headers'), not in the URL"
                    if position != nil {
                        problem(position, "key '\(key.name)' of provider '\(instance)' is a URL with credentials in it (user:password@host); \(fix)")
                    } else {
                        problem(nil, "key '\(key.name)' from \(source) is a URL with credentials in it (user:password@host); \(fix)")
                    }
                    continue
                }
                out.config[key.name] = v
                out.sources[key.name] = source
                if secret, case .string(let s) = v, !s.isEmpty { out.secrets.append(s) }
            case .failure(let msg):
                let shown = secret ? "" : (raw.stringValue.map { " ('\(Wire.excerpt($0, limit: 60))')" } ?? "")
                if position != nil {
                    problem(position, "key '\(key.name)' of provider '\(instance)' \(msg)\(shown)")
                } else {
                    problem(nil, "key '\(key.name)' from \(source) \(msg)\(shown)")
                }
            }
        }
        return out
    }
}
