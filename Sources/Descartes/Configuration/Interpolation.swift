import DescartesSupport
/// Expands references in configuration values:
///
/// | written | becomes |
/// | --- | --- |
/// | `${VAR}` | the variable's value; an error when it is unset |
/// | `${VAR:-default}` | the value, or `default` when unset or empty (`default` may hold references) |
/// | `${file:/path}` | the file's content without its trailing newline (a secret) |
/// | `$$` | a literal `$` |
///
/// Variables come from `extra` first (names a caller defines, such as the
/// conformance suite's `server`; none for providers.yaml), then the process
/// environment, then the project's `.env` file. A relative `${file:...}` path is relative to
/// the directory of the file the value is written in; `~/` is the home
/// directory.
package struct Interpolator: Sendable {
    package var environment: [String: String]
    package var dotenv: [String: String]
    package var extra: [String: String]
    /// `.env`'s path, for saying where a value came from.
    package var dotenvFile: String?

    package init(environment: [String: String], dotenv: [String: String] = [:], extra: [String: String] = [:], dotenvFile: String? = nil) {
        self.environment = environment
        self.dotenv = dotenv
        self.extra = extra
        self.dotenvFile = dotenvFile
    }

    /// The result of expanding one value.
    package struct Expansion: Sendable {
        package var text: String
        /// A `${file:...}` contributed to the value: treat it as a secret.
        package var fromFile: Bool
        /// The references used, as written (`${ANTHROPIC_API_KEY}`), for
        /// `config show`.
        package var references: [String]
        /// Where each variable was found ("environment", ".env").
        package var origins: [String]
    }

    /// The largest file `${file:...}` reads.
    package static let fileLimit = 64 * 1024

    /// A variable's value and where it was found.
    package func lookup(_ name: String) -> (value: String, origin: String)? {
        if let v = extra[name] { return (v, "built-in") }
        if let v = environment[name] { return (v, "environment") }
        if let v = dotenv[name] { return (v, dotenvFile.map { "\($0)" } ?? ".env") }
        return nil
    }

    /// Whether `text` holds anything to expand.
    package static func needsExpansion(_ text: String) -> Bool { text.utf8.contains(UInt8(ascii: "$")) }

    /// Expands `text`, written at `position` (for messages) in a file whose
    /// directory is `baseDirectory`. `what` names the value in problems
    /// ("key 'api_key' of provider 'anthropic'").
    package func expand(_ text: String, at position: SourcePosition, what: String, baseDirectory: String) -> Result<Expansion, SourceError> {
        var state = Expansion(text: "", fromFile: false, references: [], origins: [])
        let chars = Array(text.unicodeScalars)
        var problem: SourceProblem? = nil
        let out = expandRange(chars, 0, chars.count, &state, &problem, position, what, baseDirectory)
        if let problem { return .failure(SourceError([problem])) }
        state.text = out
        return .success(state)
    }

    /// Expands chars[start..<end].
    private func expandRange(
        _ c: [Unicode.Scalar], _ start: Int, _ end: Int, _ state: inout Expansion, _ problem: inout SourceProblem?,
        _ position: SourcePosition, _ what: String, _ base: String
    ) -> String {
        var out = String.UnicodeScalarView()
        var i = start
        while i < end {
            let ch = c[i]
            guard ch == "$", i + 1 < end else {
                out.append(ch)
                i += 1
                continue
            }
            if c[i + 1] == "$" {
                out.append("$")
                i += 2
                continue
            }
            guard c[i + 1] == "{" else {
                out.append(ch)
                i += 1
                continue
            }
            // Find the matching brace (references nest inside defaults).
            var depth = 0
            var j = i + 1
            var close = -1
            while j < end {
                if c[j] == "{" && c[j - 1] == "$" { depth += 1 }
                else if c[j] == "}" {
                    depth -= 1
                    if depth == 0 { close = j; break }
                }
                j += 1
            }
            guard close >= 0 else {
                problem = problem ?? SourceProblem(position, "\(what): unterminated '${' (write '$$' for a literal '$')")
                return String(out)
            }
            let inner = String(String.UnicodeScalarView(c[(i + 2)..<close]))
            state.references.append("${\(inner)}")
            if let value = reference(c, i + 2, close, inner, &state, &problem, position, what, base) {
                out.append(contentsOf: value.unicodeScalars)
            }
            if problem != nil { return String(out) }
            i = close + 1
        }
        return String(out)
    }

    private func reference(
        _ c: [Unicode.Scalar], _ start: Int, _ end: Int, _ inner: String, _ state: inout Expansion,
        _ problem: inout SourceProblem?, _ position: SourcePosition, _ what: String, _ base: String
    ) -> String? {
        if inner.hasPrefix("file:") {
            let rawPath = expandRange(c, start + 5, end, &state, &problem, position, what, base)
            if problem != nil { return nil }
            var path = rawPath
            if path.hasPrefix("~/") { path = FileSystem.join(Environment.homeDirectory, String(path.dropFirst(2))) }
            if !path.hasPrefix("/") { path = FileSystem.join(base, path) }
            state.fromFile = true
            state.origins.append("file \(path)")
            do {
                var text = try FileSystem.readText(path, limit: Interpolator.fileLimit)
                if text.hasSuffix("\r\n") { text.removeLast(2) } else if text.hasSuffix("\n") { text.removeLast() }
                return text
            } catch {
                problem = SourceProblem(position, "\(what): cannot read ${file:\(rawPath)}: \(error.reason)")
                return nil
            }
        }
        // NAME or NAME:-default
        var nameEnd = start
        while nameEnd < end, c[nameEnd] != ":" { nameEnd += 1 }
        let name = String(String.UnicodeScalarView(c[start..<nameEnd]))
        guard Interpolator.isValidName(name) else {
            problem = SourceProblem(
                position, "\(what): '${\(inner)}' is not a reference: write ${NAME}, ${NAME:-default} or ${file:/path} (NAME is letters, digits and '_')")
            return nil
        }
        var defaultStart: Int? = nil
        if nameEnd < end {
            guard nameEnd + 1 < end, c[nameEnd + 1] == "-" else {
                problem = SourceProblem(position, "\(what): '${\(inner)}': after the variable name only ':-default' is understood")
                return nil
            }
            defaultStart = nameEnd + 2
        }
        let found = lookup(name)
        if let found, !(defaultStart != nil && found.value.isEmpty) {
            state.origins.append("\(name) from \(found.origin)")
            return found.value
        }
        if let d = defaultStart {
            return expandRange(c, d, end, &state, &problem, position, what, base)
        }
        problem = SourceProblem(
            position, "\(what): the variable \(name) is not set (set it in the environment or in .env, or write ${\(name):-default})")
        return nil
    }

    static func isValidName(_ s: String) -> Bool {
        guard let f = s.utf8.first, f == UInt8(ascii: "_") || (f | 0x20 >= 0x61 && f | 0x20 <= 0x7A) else { return false }
        return s.utf8.allSatisfy { $0 == UInt8(ascii: "_") || ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) }
    }
}

extension Interpolator {
    package func expandNode(_ node: YAMLNode, what: String, problems: inout [SourceProblem], secret: inout Bool, via: inout [String]) -> YAMLNode? {
        switch node.value {
        case .scalar(let s, let quoted):
            guard Interpolator.needsExpansion(s) else { return node }
            switch expand(s, at: node.location, what: what, baseDirectory: FileSystem.directory(of: node.location.file)) {
            case .success(let x):
                if x.fromFile { secret = true }
                via.append(x.references.joined(separator: " ") + (x.origins.isEmpty ? "" : " (\(x.origins.joined(separator: ", ")))"))
                var out = node
                // An unquoted value reads as if the expansion had been written
                // there (`port: ${PORT}` is an integer); a quoted one stays a string.
                out.value = .scalar(x.text, quoted: quoted || x.text.isEmpty)
                return out
            case .failure(let e):
                problems += e.problems
                return nil
            }
        case .sequence(let items):
            var out: [YAMLNode] = []
            var ok = true
            for i in items {
                if let x = expandNode(i, what: what, problems: &problems, secret: &secret, via: &via) { out.append(x) } else { ok = false }
            }
            guard ok else { return nil }
            var n = node
            n.value = .sequence(out)
            return n
        case .mapping(let pairs):
            var out: [(key: YAMLNode, value: YAMLNode)] = []
            var ok = true
            for p in pairs {
                if let x = expandNode(p.value, what: what, problems: &problems, secret: &secret, via: &via) { out.append((p.key, x)) } else { ok = false }
            }
            guard ok else { return nil }
            var n = node
            n.value = .mapping(out)
            return n
        }
    }
}

/// A `.env` file: `NAME=value` lines, read when present and never written.
///
/// Accepted: blank lines, `# comments`, an optional `export ` before the
/// name, values unquoted (trimmed; ` #` starts a comment), in single quotes
/// (taken literally) or in double quotes (`\n`, `\t`, `\"`, `\\` escapes).
/// Values are not interpolated.
package enum DotEnv {
    package static func parse(_ text: String, file: String) -> (values: [String: String], problems: [SourceProblem]) {
        var values: [String: String] = [:]
        var problems: [SourceProblem] = []
        var lineNo = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNo += 1
            var line = Substring(rawLine)
            if line.hasSuffix("\r") { line = line.dropLast() }
            let indent = line.prefix { $0 == " " || $0 == "\t" }.count
            line = line.dropFirst(indent)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("export ") { line = line.dropFirst(7).drop { $0 == " " } }
            guard let eq = line.firstIndex(of: "=") else {
                problems.append(SourceProblem(SourcePosition(file: file, line: lineNo, column: indent + 1), "expected NAME=value"))
                continue
            }
            let name = String(line[..<eq]).trimmingSpaces
            guard Interpolator.isValidName(name) else {
                problems.append(
                    SourceProblem(SourcePosition(file: file, line: lineNo, column: indent + 1), "'\(name)' is not a variable name (letters, digits and '_')"))
                continue
            }
            var value = line[line.index(after: eq)...].drop { $0 == " " || $0 == "\t" }
            let valueColumn = rawLine.count - value.count + 1
            if value.hasPrefix("'") {
                value = value.dropFirst()
                guard let close = value.firstIndex(of: "'") else {
                    problems.append(SourceProblem(SourcePosition(file: file, line: lineNo, column: valueColumn), "unterminated single quote in the value of \(name)"))
                    continue
                }
                values[name] = String(value[..<close])
            } else if value.hasPrefix("\"") {
                var out = ""
                var escaped = false
                var closed = false
                for ch in value.dropFirst() {
                    if escaped {
                        switch ch {
                        case "n": out.append("\n")
                        case "t": out.append("\t")
                        case "r": out.append("\r")
                        default: out.append(ch)
                        }
                        escaped = false
                    } else if ch == "\\" {
                        escaped = true
                    } else if ch == "\"" {
                        closed = true
                        break
                    } else {
                        out.append(ch)
                    }
                }
                guard closed else {
                    problems.append(SourceProblem(SourcePosition(file: file, line: lineNo, column: valueColumn), "unterminated double quote in the value of \(name)"))
                    continue
                }
                values[name] = out
            } else {
                var v = String(value)
                if let hash = v.range(of: " #") { v = String(v[..<hash.lowerBound]) }
                values[name] = v.trimmingSpaces
            }
        }
        return (values, problems)
    }
}
