import DescartesCore

extension Message {
    /// The message's reasoning as Anthropic Messages content blocks, in
    /// order and unmodified (also what Claude Code's stream-json input
    /// takes): each signed thinking block as `{"type": "thinking",
    /// "thinking", "signature"}`, each redacted one as `{"type":
    /// "redacted_thinking", "data"}`. Anthropic needs them back exactly when
    /// thinking and tool use mix. A thinking block without a signature
    /// (another provider's reasoning) is left out: Anthropic refuses it.
    /// From `reasoningToSendBack`, so a message with only the joined view
    /// (`reasoning` and `reasoningSignature`) gives its one block.
    public var anthropicReasoningBlocks: [JSONValue] {
        reasoningToSendBack.compactMap { b -> JSONValue? in
            switch b {
            case .thinking(let text, let sig?) where !sig.isEmpty:
                return ["type": "thinking", "thinking": .string(text), "signature": .string(sig)]
            case .thinking: return nil
            case .redacted(let data): return ["type": "redacted_thinking", "data": .string(data)]
            }
        }
    }
}
