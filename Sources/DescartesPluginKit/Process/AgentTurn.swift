import DescartesCore

/// A request split the way an agent CLI takes a turn: the system prompt and
/// system messages apart, the conversation so far (up to and including the
/// last assistant or tool message), and the user messages after it, which
/// are what this turn sends.
///
/// The checks every agent plugin makes are here too: caller-defined tools
/// are refused (an agent runs its own), what follows the last answer must be
/// user messages, and there must be at least one.
public struct AgentTurn: Sendable {
    /// The request's system prompt (when not empty), then every system
    /// message, in order.
    public var system: [String]
    /// The earlier conversation, without system messages.
    public var history: [Message]
    /// The user messages after the last answer: never empty.
    public var newTurn: [Message]

    /// - Parameters:
    ///   - agent: how errors name the agent ("claude", "codex", "the agent").
    ///   - toolsReason: why caller-defined tools cannot be passed (the
    ///     whole sentence of the `unsupported_feature` error).
    public init(_ r: ModelRequest, agent: String, toolsReason: String) throws(ProviderError) {
        guard r.tools.isEmpty else { throw ProviderError(.unsupportedFeature, toolsReason) }
        var sys: [String] = []
        if let s = r.systemPrompt, !s.isEmpty { sys.append(s) }
        var turns: [Message] = []
        for m in r.messages {
            if m.role == .system { sys.append(m.content) } else { turns.append(m) }
        }
        system = sys
        let split = (turns.lastIndex { $0.role == .assistant || $0.role == .tool }).map { $0 + 1 } ?? 0
        history = Array(turns[..<split])
        newTurn = Array(turns[split...])
        if let bad = newTurn.first(where: { $0.role != .user }) {
            throw ProviderError(.config, "the messages after the last assistant message must be user messages, found \(bad.role.rawValue)")
        }
        guard !newTurn.isEmpty else {
            throw ProviderError(.config, "the request must end with a user message (\(agent) answers the user)")
        }
    }

    /// The system parts joined by blank lines, or nil when there are none.
    public var joinedSystem: String? { system.isEmpty ? nil : system.joined(separator: "\n\n") }
}
