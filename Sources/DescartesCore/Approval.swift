/// Tool approval (ABI 1.2): an agent backend asks the caller before it runs
/// a tool, and the caller's policy answers.
///
/// A request carries the policy (`ModelRequest.approval`); the plugin
/// sends an APPROVAL event per tool use it wants approved, the host decides
/// with the policy, and answers through the backend's `answer_approval`.
/// A request without a policy is never asked: the agent does what its own
/// configuration says (docs/headless.md, "Approvals").

/// A tool use the agent asks to be approved.
public struct ApprovalRequest: Sendable, Hashable {
    /// Unique within the call: the answer names it.
    public var id: String
    /// The tool's name ("Bash"; for an ACP agent, its tool call's title).
    public var tool: String
    /// The tool's input, as the agent gives it.
    public var input: JSONValue
    /// The agent's category of the tool, when it has one (ACP's kind:
    /// read, edit, delete, move, search, execute, think, fetch, other).
    public var kind: String?

    public init(id: String, tool: String, input: JSONValue = .object([:]), kind: String? = nil) {
        self.id = id
        self.tool = tool
        self.input = input
        self.kind = kind
    }

    /// What a rule's pattern is matched against: the input's `command`,
    /// else `file_path`, `path`, `url`, `pattern` or `query` (the first that
    /// is a string), else the input's JSON text.
    public var subject: String {
        for k in ["command", "file_path", "path", "url", "pattern", "query"] {
            if let s = input[k]?.stringValue { return s }
        }
        return input.jsonText
    }
}

/// The answer to an `ApprovalRequest`.
public enum ApprovalDecision: Sendable, Hashable {
    case allow
    /// Refused; the reason reaches the agent where its protocol can carry
    /// it, and the response's metadata.
    case deny(reason: String)

    public var allowed: Bool { if case .allow = self { return true } else { return false } }
}

/// How a request's tool uses are approved: every one allowed, every one
/// denied, rules (`Bash(git *)`), or a handler the caller writes.
///
///     var r = ModelRequest(prompt: "Fix the failing test")
///     r.approval = try .rules(["Read", "Bash(git *)"])     // anything else is denied
///     r.approval = .handler { ask in
///         ask.tool == "Bash" && ask.subject.hasPrefix("rm ") ? .deny(reason: "no deletions") : .allow
///     }
public struct ApprovalPolicy: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case allowAll
        case denyAll
        case rules([ApprovalRule])
        case handler(HandlerBox)
        /// Inside a plugin: the request said the host answers (the Request
        /// document's `"approvals": "host"`).
        case host
    }
    let kind: Kind

    public static let allowAll = ApprovalPolicy(kind: .allowAll)
    public static let denyAll = ApprovalPolicy(kind: .denyAll)
    /// What a plugin finds in a request whose host answers approvals: ask
    /// it (the kit's `PluginCall.askApproval`). The host never holds it.
    public static let host = ApprovalPolicy(kind: .host)

    /// Allowed when one of `patterns` matches, denied otherwise. A pattern
    /// is `Tool` (every use of that tool) or `Tool(glob)` (uses whose
    /// `subject` matches the glob: `*` any run of characters, `?` one).
    /// `Tool` is compared with the tool's name and with its kind, so
    /// `execute(git *)` works for an ACP agent too.
    /// - Throws: `config` naming a pattern that is not of that form.
    public static func rules(_ patterns: [String]) throws(ProviderError) -> ApprovalPolicy {
        var rules: [ApprovalRule] = []
        for p in patterns { rules.append(try ApprovalRule(p)) }
        return ApprovalPolicy(kind: .rules(rules))
    }

    /// `handler` decides each tool use. It may take its time (ask a
    /// person); the request's deadline still runs.
    public static func handler(_ handler: @escaping @Sendable (ApprovalRequest) async -> ApprovalDecision) -> ApprovalPolicy {
        ApprovalPolicy(kind: .handler(HandlerBox(handler)))
    }

    /// True for the policy a plugin receives when the host answers.
    public var asksHost: Bool { kind == .host }

    public func decide(_ r: ApprovalRequest) async -> ApprovalDecision {
        switch kind {
        case .allowAll: return .allow
        case .denyAll: return .deny(reason: "the approval policy denies every tool use")
        case .rules(let rules):
            if rules.contains(where: { $0.matches(r) }) { return .allow }
            return .deny(reason: "no approval rule allows \(r.tool)(\(r.subject)) (rules: \(rules.map(\.pattern).joined(separator: ", ")))")
        case .handler(let box): return await box.handler(r)
        case .host: return .deny(reason: "no approval handler in this process")
        }
    }

    public var description: String {
        switch kind {
        case .allowAll: return "allow"
        case .denyAll: return "deny"
        case .rules(let r): return r.map(\.pattern).joined(separator: ",")
        case .handler: return "handler"
        case .host: return "host"
        }
    }
}

/// One `Tool` or `Tool(glob)` pattern.
struct ApprovalRule: Sendable, Hashable {
    let pattern: String
    let tool: String
    let glob: String?

    init(_ p: String) throws(ProviderError) {
        pattern = p
        let t = String(p.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
        if let open = t.firstIndex(of: "(") {
            guard t.hasSuffix(")"), open != t.startIndex else {
                throw ProviderError(.config, "approval rule '\(p)': expected Tool or Tool(pattern), e.g. Bash(git *)")
            }
            tool = String(t[..<open])
            glob = String(t[t.index(after: open)..<t.index(before: t.endIndex)])
        } else {
            guard !t.isEmpty, !t.contains(")") else {
                throw ProviderError(.config, "approval rule '\(p)': expected Tool or Tool(pattern), e.g. Bash(git *)")
            }
            tool = t
            glob = nil
        }
    }

    func matches(_ r: ApprovalRequest) -> Bool {
        guard r.tool == tool || r.kind == tool else { return false }
        guard let glob else { return true }
        return Self.glob(Array(glob.utf8), Array(r.subject.utf8))
    }

    /// `*` and `?` over bytes (iterative, with one backtrack point).
    static func glob(_ p: [UInt8], _ s: [UInt8]) -> Bool {
        var pi = 0
        var si = 0
        var star = -1
        var mark = 0
        while si < s.count {
            if pi < p.count && (p[pi] == UInt8(ascii: "?") || p[pi] == s[si]) {
                pi += 1
                si += 1
            } else if pi < p.count && p[pi] == UInt8(ascii: "*") {
                star = pi
                mark = si
                pi += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                si = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }
}

/// A handler compared by identity (a request stays Hashable).
final class HandlerBox: Sendable, Hashable {
    let handler: @Sendable (ApprovalRequest) async -> ApprovalDecision
    init(_ h: @escaping @Sendable (ApprovalRequest) async -> ApprovalDecision) { handler = h }
    static func == (a: HandlerBox, b: HandlerBox) -> Bool { a === b }
    func hash(into h: inout Hasher) { h.combine(ObjectIdentifier(self)) }
}
