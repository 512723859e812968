/// Edits a plugin policy file's `enable` and `disable` lists in place, for
/// `descartes plugins enable|disable`. Only the lines of the list items
/// change: comments, order and the rest of the file are kept.
package enum PolicyEditor {
    package enum Action: String, Sendable {
        case enable, disable
    }

    /// What an edit did.
    package struct Edit: Sendable {
        /// The file's new text.
        package var text: String
        /// What changed, in words; empty when the file already said so.
        package var changes: [String]
    }

    /// Applies `action` for `name` (a provider id or a glob) to a policy
    /// file's text.
    ///
    /// - `disable`: adds `name` to `disable` and removes it from `enable`.
    /// - `enable`: removes `name` from `disable`, and adds it to `enable`
    ///   when the file has an enable list that does not already allow it.
    ///
    /// - Throws: `SourceError` when the file is not a valid policy, or when
    ///   another `disable` pattern would still match `name`.
    package static func apply(_ action: Action, name: String, to text: String, file: String) throws(SourceError) -> Edit {
        var doc = Document(text: text, file: file)
        try doc.parse()
        var changes: [String] = []
        switch action {
        case .disable:
            if let removed = try doc.remove(name, from: "enable") { changes.append("removed '\(name)' from 'enable' (line \(removed))") }
            if try doc.items("disable").contains(name) {
                // Already there.
            } else {
                try doc.add(name, to: "disable")
                changes.append("added '\(name)' to 'disable'")
            }
        case .enable:
            if let removed = try doc.remove(name, from: "disable") { changes.append("removed '\(name)' from 'disable' (line \(removed))") }
            for rule in try doc.rules("disable") where fnmatchName(rule.pattern, name) {
                throw SourceError([
                    SourceProblem(rule.location, "'\(name)' is still disabled by the pattern '\(rule.pattern)' here; edit the file to narrow it")
                ])
            }
            if let list = try doc.rulesIfPresent("enable"), !list.contains(where: { fnmatchName($0.pattern, name) }) {
                try doc.add(name, to: "enable")
                changes.append("added '\(name)' to 'enable'")
            }
        }
        // The result must still be a valid policy.
        var check = PluginPolicy()
        check.add(doc.text, file: file, scope: .system)
        let problems = check.problems.filter { !$0.message.contains("ignore_environment_as_root") }
        if !problems.isEmpty { throw SourceError(problems) }
        return Edit(text: doc.text, changes: changes)
    }

    static func fnmatchName(_ pattern: String, _ name: String) -> Bool {
        PluginPolicy.Rule(pattern: pattern, location: SourcePosition(file: "", line: 1, column: 1), scope: .system).matches(name)
    }

    /// A policy file as lines, re-parsed after each change.
    struct Document {
        var text: String
        let file: String
        var root: YAMLNode?

        init(text: String, file: String) {
            self.text = text
            self.file = file
        }

        mutating func parse() throws(SourceError) {
            root = try YAML.parse(text, file: file)
            if let root, case .mapping = root.value {} else if root != nil {
                throw SourceError([SourceProblem(root!.location, "a plugin policy is a mapping (enable, disable, required, search, sha256)")])
            }
        }

        var lines: [String] { text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) }

        func pair(_ key: String) -> (key: YAMLNode, value: YAMLNode)? {
            guard case .mapping(let pairs)? = root?.value else { return nil }
            return pairs.first { $0.key.scalar == key }
        }

        func rulesIfPresent(_ key: String) throws(SourceError) -> [PluginPolicy.Rule]? {
            guard let p = pair(key) else { return nil }
            switch p.value.value {
            case .sequence(let items):
                return items.compactMap { i in i.scalar.map { PluginPolicy.Rule(pattern: $0, location: i.location, scope: .system) } }
            case .scalar(let s, _) where YAMLNode.resolvePlain(s) == .null:
                return []
            default:
                throw SourceError([SourceProblem(p.value.location, "'\(key)' is a list of plugin names or globs, got a \(p.value.kindName)")])
            }
        }

        func rules(_ key: String) throws(SourceError) -> [PluginPolicy.Rule] { try rulesIfPresent(key) ?? [] }
        func items(_ key: String) throws(SourceError) -> [String] { try rules(key).map(\.pattern) }

        /// The character at a position (1-based line and column).
        func character(at p: SourcePosition) -> Character? {
            let ls = lines
            guard p.line - 1 < ls.count else { return nil }
            let l = Array(ls[p.line - 1])
            return p.column - 1 < l.count ? l[p.column - 1] : nil
        }

        static func quoted(_ s: String) -> String { YAMLText.scalar(s) }

        /// Removes the item that is exactly `name`; returns its line.
        mutating func remove(_ name: String, from key: String) throws(SourceError) -> Int? {
            guard let p = pair(key), case .sequence(let items) = p.value.value else { return nil }
            guard let index = items.firstIndex(where: { $0.scalar == name }) else { return nil }
            let item = items[index]
            if character(at: p.value.location) == "[" {
                var kept = items
                kept.remove(at: index)
                try replaceFlow(p.value, with: kept.compactMap(\.scalar))
            } else {
                var ls = lines
                ls.remove(at: item.location.line - 1)
                text = ls.joined(separator: "\n")
            }
            try parse()
            return item.location.line
        }

        /// Adds `name` at the end of the list `key`, creating the key if needed.
        mutating func add(_ name: String, to key: String) throws(SourceError) {
            var ls = lines
            if let p = pair(key) {
                switch p.value.value {
                case .sequence(let items) where character(at: p.value.location) == "[":
                    try replaceFlow(p.value, with: items.compactMap(\.scalar) + [name])
                case .sequence(let items) where !items.isEmpty:
                    let last = items.last!
                    let line = Array(ls[last.location.line - 1])
                    // The indentation and dash of the last item's line.
                    let dash = line.firstIndex(of: "-") ?? 0
                    let prefix = String(line[..<dash])
                    ls.insert("\(prefix)- \(Document.quoted(name))", at: last.location.line)
                    text = ls.joined(separator: "\n")
                default:
                    // `key:` with no value: the items go below it.
                    let indent = String(repeating: " ", count: p.key.location.column - 1)
                    ls[p.key.location.line - 1] = "\(indent)\(key):"
                    ls.insert("\(indent)  - \(Document.quoted(name))", at: p.key.location.line)
                    text = ls.joined(separator: "\n")
                }
            } else {
                var t = text
                if !t.isEmpty && !t.hasSuffix("\n") { t += "\n" }
                t += "\(key):\n  - \(Document.quoted(name))\n"
                text = t
            }
            try parse()
        }

        /// Rewrites a flow sequence (`[a, b]`) with new items.
        mutating func replaceFlow(_ node: YAMLNode, with items: [String]) throws(SourceError) {
            let chars = Array(text)
            var offset = 0
            var line = 1
            while line < node.location.line, offset < chars.count {
                if chars[offset] == "\n" { line += 1 }
                offset += 1
            }
            let start = offset + node.location.column - 1
            guard start < chars.count, chars[start] == "[" else {
                throw SourceError([SourceProblem(node.location, "cannot find the list's '[' to edit it")])
            }
            var end = start + 1
            var quote: Character? = nil
            while end < chars.count {
                let c = chars[end]
                if let q = quote {
                    if c == q { quote = nil }
                } else if c == "\"" || c == "'" {
                    quote = c
                } else if c == "]" {
                    break
                }
                end += 1
            }
            guard end < chars.count else { throw SourceError([SourceProblem(node.location, "unterminated '['")]) }
            let replacement = "[" + items.map(Document.quoted).joined(separator: ", ") + "]"
            text = String(chars[..<start]) + replacement + String(chars[(end + 1)...])
        }
    }
}
