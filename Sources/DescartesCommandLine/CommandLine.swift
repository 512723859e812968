// The command line as data: each option, argument and command is declared
// once (CommandTable.swift), and the parser, the usage line, `--help`, the
// JSON description (`--help --json`) and the usage errors are all made from
// those declarations. Shared by `descartes` and `descartes-bench`.
import DescartesCore

// MARK: Declarations

/// One option, declared once: its spellings, its value, what it does, and
/// the commands that take it.
package struct Option: Sendable {
    /// The long form, "--provider".
    package let name: String
    /// The short form, "-p", if any.
    package let short: String?
    /// The name of its value in usage and help ("PROVIDER"); nil for a flag.
    package let value: String?
    /// What it does; lines after the first continue it. A command's `Use`
    /// may say it differently.
    package let help: String
    /// Given more than once, every value is kept; otherwise a second one is
    /// a usage error.
    package let repeatable: Bool
    /// The long name of the option it only makes sense with.
    package let needs: String?
    /// The heading it is listed under in help, below the plain options.
    package let section: String?
    /// The commands that take it, and how each uses it.
    package let uses: [CommandID: Use]

    package init(
        _ name: String, short: String? = nil, value: String? = nil, help: String, repeatable: Bool = false,
        needs: String? = nil, section: String? = nil, in uses: [CommandID: Use] = [:]
    ) {
        self.name = name
        self.short = short
        self.value = value
        self.help = help
        self.repeatable = repeatable
        self.needs = needs
        self.section = section
        self.uses = uses
    }

    /// "-p PROVIDER", "--json": how usage and messages write it.
    package var synopsis: String { (short ?? name) + (value.map { " " + $0 } ?? "") }

    /// "-p, --provider PROVIDER": how help lists it.
    package var label: String { (short.map { $0 + ", " } ?? "") + name + (value.map { " " + $0 } ?? "") }

    package func spelled(_ s: String) -> Bool { s == name || s == short }
}

/// How one command uses an option: required or not, shown in the command's
/// line of the top help or not, and its help when the option's own text is
/// not precise enough for that command.
package struct Use: Sendable, ExpressibleByStringLiteral {
    package var help: String?
    package var required = false
    /// Listed in the command's line of `descartes --help`.
    package var key = false

    package init(help: String? = nil, required: Bool = false, key: Bool = false) {
        self.help = help
        self.required = required
        self.key = key
    }
    package init(stringLiteral help: String) { self.help = help }

    package static let plain = Use()
    package static let required = Use(required: true)
    package static let key = Use(key: true)
    package static func required(_ help: String) -> Use { Use(help: help, required: true) }
    package static func key(_ help: String) -> Use { Use(help: help, key: true) }
}

/// A positional argument of a command.
package struct Argument: Sendable {
    package enum Count: Sendable {
        /// Exactly one.
        case one
        /// None or one.
        case optional
        /// Any number.
        case many
        /// One or more, joined with spaces (a prompt typed unquoted).
        case words
    }
    /// "PROMPT"
    package let name: String
    package let count: Count
    package let help: String
    /// "-" stands for standard input.
    package let stdin: Bool

    package init(_ name: String, _ count: Count, help: String, stdin: Bool = false) {
        self.name = name
        self.count = count
        self.help = help
        self.stdin = stdin
    }

    var synopsis: String {
        let n = name + (stdin ? "|-" : "")
        switch count {
        case .one, .words: return n
        case .optional: return "[\(n)]"
        case .many: return "[\(name)...]"
        }
    }
}

/// A command: "descartes plugins verify", a group such as "descartes
/// plugins", a program such as "descartes-bench".
package struct Command: Sendable {
    package let id: CommandID
    /// One line, for the list of commands.
    package let summary: String
    package let arguments: [Argument]
    /// Paragraphs between the usage line and the options.
    package let about: String
    /// Paragraphs after the options.
    package let notes: String

    package init(_ id: CommandID, summary: String, arguments: [Argument] = [], about: String, notes: String = "") {
        self.id = id
        self.summary = summary
        self.arguments = arguments
        self.about = about
        self.notes = notes
    }

    /// "descartes plugins verify"
    package var path: String { id.rawValue }
    /// The program that runs it ("descartes", "descartes-bench").
    package var program: String { String(path.prefix { $0 != " " }) }
    /// The words after the program ("plugins verify").
    package var words: [String] { path.split(separator: " ").dropFirst().map(String.init) }

    /// The options it takes, in the table's order.
    package var options: [Option] { Option.all.filter { $0.uses[id] != nil } }
    /// The commands one word below it (a group's subcommands, a program's commands).
    package var children: [Command] {
        // One word more than this path: "PATH WORD" (paths are single-spaced).
        let prefix = path + " "
        return Command.all.filter { c in
            c.path.hasPrefix(prefix) && !c.path.utf8.dropFirst(prefix.utf8.count).contains(UInt8(ascii: " "))
        }
    }
    package static func named(_ id: CommandID) -> Command { all.first { $0.id == id }! }

    func use(_ o: Option) -> Use { o.uses[id] ?? .plain }
    func help(_ o: Option) -> String { use(o).help ?? o.help }
}

/// A usage mistake: printed as `Error: ...`, then the command's usage, then
/// where to read more; exit status 64.
package struct UsageError: Error, Sendable {
    package var message: String
    package var command: Command
    package init(_ message: String, command: Command) {
        self.message = message
        self.command = command
    }
}

// MARK: Parsing

/// The arguments of one command, parsed against its declared options and
/// arguments.
///
/// Options may come before or after positional arguments; `--` ends options;
/// `-` alone is a positional argument (stdin). `--timeout=5` and
/// `--timeout 5` are both accepted. The first unknown option is reported,
/// with the nearest known one.
package struct Arguments: Sendable {
    package let command: Command
    private var flags: Set<String> = []
    private var values: [String: [String]] = [:]
    package private(set) var positional: [String] = []

    package init(_ args: [String], command: Command) throws(UsageError) {
        self.command = command
        let options = command.options
        var i = 0
        var onlyPositional = false
        while i < args.count {
            let a = args[i]
            i += 1
            if onlyPositional || a == "-" || !a.hasPrefix("-") {
                positional.append(a)
                continue
            }
            if a == "--" {
                onlyPositional = true
                continue
            }
            var name = a
            var inline: String? = nil
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") {
                name = String(a[..<eq])
                inline = String(a[a.index(after: eq)...])
            }
            guard let opt = options.first(where: { $0.spelled(name) }) else {
                throw UsageError(Self.unknown(name, in: command), command: command)
            }
            if let value = opt.value {
                let v: String
                if let inline {
                    v = inline
                } else {
                    guard i < args.count else { throw UsageError("option '\(name)' needs a value (\(value))", command: command) }
                    v = args[i]
                    i += 1
                }
                if !opt.repeatable, values[opt.name] != nil {
                    throw UsageError("option '\(name)' given twice", command: command)
                }
                values[opt.name, default: []].append(v)
            } else {
                if inline != nil { throw UsageError("option '\(name)' takes no value", command: command) }
                flags.insert(opt.name)
            }
        }
        for o in options {
            let given = flags.contains(o.name) || values[o.name] != nil
            if command.use(o).required && !given { throw UsageError("missing \(o.synopsis)", command: command) }
            if given, let needed = o.needs, !flags.contains(needed), values[needed] == nil {
                throw UsageError("\(o.name) goes with \(needed)", command: command)
            }
        }
        try checkPositional()
    }

    private func checkPositional() throws(UsageError) {
        var rest = positional[...]
        for a in command.arguments {
            switch a.count {
            case .one, .words:
                guard !rest.isEmpty else {
                    let what = a.stdin ? " (or '-' to read it from stdin)" : ": " + a.help.prefix(1).lowercased() + a.help.dropFirst()
                    throw UsageError("missing \(a.name)\(what)", command: command)
                }
                rest = a.count == .one ? rest.dropFirst() : []
            case .optional: rest = rest.dropFirst()
            case .many: rest = []
            }
        }
        if let extra = rest.first { throw UsageError("unexpected argument '\(extra)'", command: command) }
    }

    /// Why `name` is not an option of `command`, and what was probably meant.
    package static func unknown(_ name: String, in command: Command) -> String {
        var message = "unknown option '\(name)'"
        let known = command.options.flatMap { [$0.name] + ($0.short.map { [$0] } ?? []) } + Option.globals.map(\.name)
        if let near = nearest(name, in: known) {
            message += " (did you mean '\(near)'?)"
        } else {
            let elsewhere = Command.all.filter { c in c.options.contains { $0.spelled(name) } }.map(\.path)
            if !elsewhere.isEmpty { message += " (taken by \(elsewhere.map { "'\($0)'" }.joined(separator: ", ")))" }
        }
        return message
    }

    /// The candidate closest to `word`: within a third of its length in
    /// edits (transpositions count one), or one it abbreviates.
    package static func nearest(_ word: String, in candidates: [String]) -> String? {
        let limit = max(1, word.count / 3)
        var best: (String, Int)? = nil
        for c in candidates {
            var d = editDistance(word, c)
            if d > limit, word.count >= 4, c.hasPrefix(word) { d = limit }
            if d <= limit, best.map({ d < $0.1 }) ?? true { best = (c, d) }
        }
        return best?.0
    }

    /// Optimal string alignment distance (Levenshtein with adjacent transpositions).
    static func editDistance(_ a: String, _ b: String) -> Int {
        let s = Array(a), t = Array(b)
        if s.isEmpty || t.isEmpty { return max(s.count, t.count) }
        var d = [[Int]](repeating: [Int](repeating: 0, count: t.count + 1), count: s.count + 1)
        for i in 0...s.count { d[i][0] = i }
        for j in 0...t.count { d[0][j] = j }
        for i in 1...s.count {
            for j in 1...t.count {
                let cost = s[i - 1] == t[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1, j > 1, s[i - 1] == t[j - 2], s[i - 2] == t[j - 1] { d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1) }
            }
        }
        return d[s.count][t.count]
    }

    package func flag(_ o: Option) -> Bool { flags.contains(o.name) }
    package func value(_ o: Option) -> String? { values[o.name]?.last }
    package func all(_ o: Option) -> [String] { values[o.name] ?? [] }

    package func int(_ o: Option) throws(UsageError) -> Int? {
        guard let v = value(o) else { return nil }
        guard let i = Int(v) else { throw mistake("option '\(o.name)' needs an integer, got '\(v)'") }
        return i
    }

    package func double(_ o: Option) throws(UsageError) -> Double? {
        guard let v = value(o) else { return nil }
        guard let d = Double(v), d.isFinite else { throw mistake("option '\(o.name)' needs a number, got '\(v)'") }
        return d
    }

    /// A usage error of this command.
    package func mistake(_ message: String) -> UsageError { UsageError(message, command: command) }

    /// Whether `args` asks for help (`-h` or `--help` before any `--`).
    package static func wantsHelp(_ args: [String]) -> Bool {
        for a in args {
            if a == "--" { return false }
            if Option.helpFlag.spelled(a) { return true }
        }
        return false
    }
}

// MARK: Usage and help

extension Command {
    /// The usage line, wrapped under its first word after "Usage: ".
    package var usage: String {
        var tokens: [String] = []
        let opts = options
        for o in opts where use(o).required { tokens.append(o.synopsis) }
        for o in opts where !use(o).required { tokens.append("[\(o.synopsis)]" + (o.repeatable ? "..." : "")) }
        if !children.isEmpty {
            // A program or a group: its global options, its commands.
            if words.isEmpty { tokens += [Option.verbose, Option.config].map { "[\($0.synopsis)]" } }
            tokens.append(words.isEmpty ? "<command>" : "<\(children.map { $0.words.last! }.joined(separator: "|"))>")
            tokens.append("[options]")
        }
        tokens += arguments.map(\.synopsis)
        return Self.wrap(path, tokens, indent: "Usage: ".count + path.count + 1)
    }

    /// The command as listed by its program's help: its words, required
    /// options, arguments and key options.
    package var synopsis: String {
        let opts = options
        var tokens = opts.filter { use($0).required }.map(\.synopsis) + arguments.map(\.synopsis)
        tokens += opts.filter { use($0).key && !use($0).required }.map { "[\($0.synopsis)]" }
        return (words + tokens).joined(separator: " ")
    }

    /// The whole `--help` text.
    package var help: String {
        var out = "Usage: \(usage)\n"
        if !about.isEmpty { out += "\n\(about)\n" }
        if !children.isEmpty {
            out += "\nSubcommands:\n" + Self.columns(children.map { ($0.words.last!, $0.summary) })
        }
        if arguments.contains(where: { !$0.help.isEmpty }) {
            out += "\nArguments:\n" + Self.columns(arguments.map { ($0.name + ($0.stdin ? "|-" : "") + ($0.count == .many ? "..." : ""), $0.help) })
        }
        let opts = options
        let sections = [nil] + opts.compactMap(\.section).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        let globals = Option.globals.map { ($0.label, $0.help) }
        let width = Self.labelWidth(opts.map(\.label) + globals.map(\.0))
        for s in sections {
            let rows = opts.filter { $0.section == s }.map { o -> (String, String) in
                var text = help(o)
                if use(o).required { text += " (required)" }
                if o.repeatable { text += " (repeatable)" }
                return (o.label, text)
            }
            if rows.isEmpty { continue }
            out += "\n\(s ?? "Options"):\n" + Self.columns(rows, width: width)
        }
        out += "\nGlobal options:\n" + Self.columns(globals, width: width)
        if !notes.isEmpty { out += "\n\(notes)\n" }
        return String(out.dropLast())
    }

    /// The command, its arguments and options as JSON (`--help --json`).
    package var json: JSONValue {
        var o: JSONObject = ["command": .string(path), "summary": .string(summary), "usage": .string(usage)]
        o["arguments"] = .array(
            arguments.map { a in
                ["name": .string(a.name), "count": .string("\(a.count)"), "stdin": .bool(a.stdin), "help": .string(a.help)]
            })
        o["options"] = .array(
            options.map { opt in
                var x: JSONObject = [
                    "name": .string(opt.name), "help": .string(help(opt)), "repeatable": .bool(opt.repeatable),
                    "required": .bool(use(opt).required),
                ]
                x["short"] = opt.short.map { .string($0) } ?? .null
                x["value"] = opt.value.map { .string($0) } ?? .null
                x["needs"] = opt.needs.map { .string($0) } ?? .null
                return .object(x)
            })
        o["global_options"] = .array(Option.globals.map { .string($0.name) })
        o["subcommands"] = .array(children.map { .string($0.path) })
        return .object(o)
    }

    /// Every command of `program`, as JSON.
    package static func json(program: String) -> JSONValue {
        .object(["program": .string(program), "commands": .array(all.filter { $0.program == program }.map(\.json))])
    }

    package static func labelWidth(_ labels: [String]) -> Int { min(26, (labels.map(\.count).max() ?? 0)) + 2 }

    /// Two columns: `label` at two spaces, `text` at `width`, its lines
    /// wrapped at 100 characters and continued in the column; a label wider
    /// than the column puts its text one line down.
    package static func columns(_ rows: [(String, String)], width: Int? = nil) -> String {
        let w = width ?? labelWidth(rows.map(\.0))
        var out = ""
        let pad = String(repeating: " ", count: 2 + w)
        for (label, text) in rows {
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).flatMap { fold(String($0), 100 - pad.count) }
            if label.count + 2 > w {
                out += "  \(label)\n"
                for l in lines { out += pad + l + "\n" }
            } else {
                out += "  " + label + String(repeating: " ", count: w - label.count) + (lines.first ?? "") + "\n"
                for l in lines.dropFirst() { out += pad + l + "\n" }
            }
        }
        return out
    }

    /// `line` cut at spaces into lines of at most `limit` characters (a
    /// longer word stays whole).
    static func fold(_ line: String, _ limit: Int) -> [String] {
        var lines: [String] = []
        var current = ""
        for word in line.split(separator: " ", omittingEmptySubsequences: false) {
            if !current.isEmpty && current.count + 1 + word.count > limit {
                lines.append(current)
                current = String(word)
            } else {
                current += (current.isEmpty ? "" : " ") + word
            }
        }
        return lines + [current]
    }

    /// `head` then `tokens`, lines of at most 100 characters, continuation
    /// lines indented by `indent`.
    static func wrap(_ head: String, _ tokens: [String], indent: Int) -> String {
        var lines = [head]
        var lineHasToken = false
        for t in tokens {
            let used = lines[lines.count - 1].count + (lines.count == 1 ? "Usage: ".count : 0)
            if lineHasToken && used + 1 + t.count > 100 {
                lines.append(String(repeating: " ", count: indent) + t)
            } else {
                lines[lines.count - 1] += " " + t
            }
            lineHasToken = true
        }
        return lines.joined(separator: "\n")
    }
}
