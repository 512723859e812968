// Estimates shared by the host (routing, rate limits) and the plugin kit
// (the default estimate_tokens), so both count the same way.

/// A token-count estimate without a tokenizer.
public enum Heuristics {
    /// About four characters per token for English text, plus a few tokens of
    /// framing per message: the rule of thumb OpenAI and Anthropic document.
    /// `method` is "heuristic:chars/4".
    public static func tokens(_ r: ModelRequest) -> TokenEstimate {
        var chars = r.systemPrompt?.count ?? 0
        for m in r.messages {
            chars += m.content.count
            for c in m.toolCalls { chars += c.name.count + c.arguments.count }
        }
        for t in r.tools { chars += t.name.count + t.description.count + t.parameters.jsonText.count }
        let framing = 3 * r.messages.count + 3
        return TokenEstimate(tokens: (chars + 3) / 4 + framing, exact: false, method: "heuristic:chars/4")
    }
}
