import DescartesCore

extension ModelRequest {
    /// The request's system text (`systemPrompt`, then each `system`
    /// message, joined by blank lines) cut at its cache breakpoints, for
    /// providers that mark a breakpoint after a system block (Anthropic's
    /// `cache_control`, Bedrock's `cachePoint`).
    ///
    /// Each segment is the text since the previous breakpoint and the
    /// breakpoint that ends it; the last segment has none. A segment's text
    /// is empty when a breakpoint follows another with no text between
    /// (a `system` message with empty content): the provider marks what it
    /// sent before, if anything. Empty parts are skipped, never joined.
    public var systemSegments: [(text: String, breakpoint: JSONValue?)] {
        var out: [(text: String, breakpoint: JSONValue?)] = []
        var text = ""
        let parts = [(systemPrompt ?? "", nil as JSONValue?)] + messages.filter { $0.role == .system }.map { ($0.content, $0.cacheControl) }
        for (part, cache) in parts {
            if !part.isEmpty { text += (text.isEmpty ? "" : "\n\n") + part }
            guard let cache else { continue }
            out.append((text, cache))
            text = ""
        }
        if !text.isEmpty { out.append((text, nil)) }
        return out
    }
}
