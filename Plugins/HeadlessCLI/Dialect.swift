// A CLI's dialect, declared in configuration, not code (docs/headless.md,
// "Dialects"): what goes on its stdin, which exit statuses and which lines
// of its output mean which error kind, where the answer is in its stdout,
// where its usage and cost are printed, and which config keys (secrets)
// reach it through its environment.
import DescartesPluginKit
import Glibc

/// A POSIX extended regular expression (glibc's regcomp), compiled once
/// when the backend is created; `regexec` on it is safe from any thread.
final class Pattern: @unchecked Sendable {
    let source: String
    private let regex: UnsafeMutablePointer<regex_t>

    /// - Parameter lines: `^`, `$` and `.` work per line (REG_NEWLINE);
    ///   otherwise `.` also matches a newline (for a pattern over the whole
    ///   output).
    /// - Throws: `config` naming `key` and the pattern.
    init(_ source: String, key: String, lines: Bool = true) throws(ProviderError) {
        let compiled = UnsafeMutablePointer<regex_t>.allocate(capacity: 1)
        let rc = regcomp(compiled, source, REG_EXTENDED | (lines ? REG_NEWLINE : 0))
        guard rc == 0 else {
            var buf = [CChar](repeating: 0, count: 256)
            regerror(rc, compiled, &buf, buf.count)
            compiled.deallocate()
            let reason = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ProviderError(.config, "key '\(key)': '\(source)' is not a POSIX extended regular expression: \(reason)")
        }
        self.source = source
        regex = compiled
    }

    deinit {
        regfree(regex)
        regex.deallocate()
    }

    /// The first match in `text`: its first group if that took part in the
    /// match, else the whole match. Nil: no match.
    func capture(_ text: String) -> String? {
        var bytes = Array(text.utf8)
        bytes.append(0)
        var m = [regmatch_t](repeating: regmatch_t(), count: 2)
        let found = bytes.withUnsafeBufferPointer { b in
            b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) { regexec(regex, $0, 2, &m, 0) == 0 }
        }
        guard found else { return nil }
        let g = m[1].rm_so >= 0 ? m[1] : m[0]
        return String(decoding: bytes[Int(g.rm_so)..<Int(g.rm_eo)], as: UTF8.self)
    }
}

struct Dialect: Sendable {
    /// What the program gets on stdin.
    enum Stdin: String, Sendable {
        /// Nothing: stdin is closed at once.
        case closed = "none"
        /// The prompt as text.
        case prompt
        /// The request as one JSON document (docs/abi.md).
        case request
    }

    /// Where the answer is in stdout.
    enum Answer: Sendable {
        /// All of it, streamed as it arrives.
        case all
        /// The last block of lines separated by blank lines.
        case lastBlock
        /// The first match of a pattern over the whole output (its first
        /// group, if it has one).
        case pattern(Pattern)
    }

    enum UsageField: String, CaseIterable, Sendable {
        case inputTokens = "input_tokens", outputTokens = "output_tokens", costUSD = "cost_usd"
    }

    /// Nil: the protocol's default (json-lines: request; text: none when an
    /// argument holds {prompt}, else prompt).
    var stdin: Stdin?
    var exitCodes: [Int: ProviderError.Kind] = [:]
    /// In the order declared; the first line that matches one decides.
    var errorPatterns: [(kind: ProviderError.Kind, pattern: Pattern)] = []
    var answer = Answer.all
    var usagePatterns: [(field: UsageField, pattern: Pattern)] = []
    /// Where the patterns are looked for (`scan`).
    var scanStdout = true
    var scanStderr = true
    /// Variables for the child from other config keys (`env_keys`).
    var environment: [String: String] = [:]

    /// Output lines need reading (not only streaming through).
    var scansOutput: Bool { !errorPatterns.isEmpty || !usagePatterns.isEmpty }
    var scansStdout: Bool { scansOutput && scanStdout }
    var scansStderr: Bool { scansOutput && scanStderr }
    var holdsAnswer: Bool {
        if case .all = answer { return false }
        return true
    }
    /// Any rule only the text protocol applies is set.
    var textOnly: String? {
        if !exitCodes.isEmpty { return "exit_codes" }
        if !errorPatterns.isEmpty { return "error_patterns" }
        if holdsAnswer { return "answer" }
        if !usagePatterns.isEmpty { return "usage_patterns" }
        return nil
    }

    init() {}

    /// Reads and checks the dialect keys; every pattern is compiled here.
    /// - Throws: `config` naming the key and the value at fault.
    init(_ c: BackendContext) throws(ProviderError) {
        if let s = c.string("stdin"), !s.isEmpty {
            guard let v = Stdin(rawValue: s) else {
                throw ProviderError(.config, "key 'stdin': '\(s)' is not one of none, prompt, request")
            }
            stdin = v
        }
        func kind(_ key: String, _ name: String, for what: String) throws(ProviderError) -> ProviderError.Kind {
            guard let k = ProviderError.Kind.all.first(where: { $0.rawValue == name }), k != .cancelled, k != .timeout else {
                throw ProviderError(
                    .config,
                    "key '\(key)': '\(name)' (for \(what)) is not an error kind; one of \(ProviderError.Kind.all.filter { $0 != .cancelled && $0 != .timeout }.map(\.rawValue).joined(separator: ", "))"
                )
            }
            return k
        }
        for m in c.config["exit_codes"]?.objectValue ?? JSONObject() {
            guard let code = Int(m.key), (1...255).contains(code) else {
                throw ProviderError(.config, "key 'exit_codes': '\(m.key)' is not an exit status (1 to 255)")
            }
            exitCodes[code] = try kind("exit_codes", m.value.stringValue ?? m.value.jsonText, for: "status \(code)")
        }
        for m in c.config["error_patterns"]?.objectValue ?? JSONObject() {
            let k = try kind("error_patterns", m.key, for: "pattern '\(m.value.stringValue ?? m.value.jsonText)'")
            guard let source = m.value.stringValue, !source.isEmpty else {
                throw ProviderError(.config, "key 'error_patterns': the pattern for \(m.key) is empty")
            }
            errorPatterns.append((k, try Pattern(source, key: "error_patterns.\(m.key)")))
        }
        let answerMode = c.string("answer") ?? "all"
        let answerPattern = c.string("answer_pattern").flatMap { $0.isEmpty ? nil : $0 }
        switch (answerMode, answerPattern) {
        case ("all", nil): answer = .all
        case ("last_block", nil): answer = .lastBlock
        case ("pattern", let p?): answer = .pattern(try Pattern(p, key: "answer_pattern", lines: false))
        case ("pattern", nil): throw ProviderError(.config, "key 'answer': 'pattern' needs answer_pattern (a POSIX extended regular expression)")
        case ("all", _?), ("last_block", _?):
            throw ProviderError(.config, "key 'answer_pattern' is set but answer is '\(answerMode)'; set answer: pattern")
        default: throw ProviderError(.config, "key 'answer': '\(answerMode)' is not one of all, last_block, pattern")
        }
        for m in c.config["usage_patterns"]?.objectValue ?? JSONObject() {
            guard let field = UsageField(rawValue: m.key) else {
                throw ProviderError(
                    .config,
                    "key 'usage_patterns': '\(m.key)' is not one of \(UsageField.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard let source = m.value.stringValue, !source.isEmpty else {
                throw ProviderError(.config, "key 'usage_patterns': the pattern for \(m.key) is empty")
            }
            usagePatterns.append((field, try Pattern(source, key: "usage_patterns.\(m.key)")))
        }
        switch c.string("scan") ?? "both" {
        case "both": break
        case "stdout": scanStderr = false
        case "stderr": scanStdout = false
        case let other: throw ProviderError(.config, "key 'scan': '\(other)' is not one of stdout, stderr, both")
        }
        for m in c.config["env_keys"]?.objectValue ?? JSONObject() {
            guard !m.key.isEmpty, !m.key.contains("=") else {
                throw ProviderError(.config, "key 'env_keys': '\(m.key)' is not a valid variable name")
            }
            guard let key = m.value.stringValue, !key.isEmpty else {
                throw ProviderError(.config, "key 'env_keys': \(m.key) names no config key")
            }
            // A key left unset sets no variable (the program may have its own
            // credentials); a key that is not a string cannot be one.
            switch c.config[key] {
            case nil, .null?: continue
            case .string(let v)?: if !v.isEmpty { environment[m.key] = v }
            case let other?:
                throw ProviderError(.config, "key 'env_keys': \(m.key) names key '\(key)', which is a \(other.typeName), not a string")
            }
        }
    }

    /// A usage or cost figure as CLIs print it: "1,234", "2.1k", "$0.0123".
    static func number(_ text: String) -> Double? {
        var s = text.filter { $0 != "," && $0 != "$" && $0 != " " }
        var scale = 1.0
        if let last = s.last, "kKmM".contains(last) {
            scale = last == "k" || last == "K" ? 1_000 : 1_000_000
            s.removeLast()
        }
        // (Only plain finite figures: "nan" or "1e400" is not a count.)
        guard s.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), let d = Double(s), d * scale < 1e15 else { return nil }
        return d * scale
    }

    /// The last block of `text`: its lines after the last run of blank
    /// lines that has text after it, without surrounding blank lines.
    static func lastBlock(_ text: String) -> String {
        var blocks: [[Substring]] = [[]]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) {
                if !blocks[blocks.count - 1].isEmpty { blocks.append([]) }
            } else {
                blocks[blocks.count - 1].append(line)
            }
        }
        return (blocks.last { !$0.isEmpty } ?? []).joined(separator: "\n")
    }
}
