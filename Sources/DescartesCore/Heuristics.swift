// Estimates shared by the host (routing, rate limits) and the plugin kit
// (the default estimate_tokens), so both count the same way.

/// A token-count estimate without a tokenizer.
public enum Heuristics {
    /// About four characters per token for English text, plus a few tokens of
    /// framing per message: the rule of thumb OpenAI and Anthropic document.
    /// Images count as `imageTokens` each. `method` is "heuristic:chars/4"
    /// (with "+images" when there are some).
    public static func tokens(_ r: ModelRequest) -> TokenEstimate {
        var chars = r.systemPrompt?.count ?? 0
        var images = 0
        for m in r.messages {
            chars += m.content.count
            for c in m.toolCalls { chars += c.name.count + c.arguments.count }
            for i in m.images { images += imageTokens(i) }
        }
        for t in r.tools { chars += t.name.count + t.description.count + t.parameters.jsonText.count }
        let framing = 3 * r.messages.count + 3
        return TokenEstimate(
            tokens: (chars + 3) / 4 + framing + images, exact: false, method: images > 0 ? "heuristic:chars/4+images" : "heuristic:chars/4")
    }

    /// An image's tokens: width x height / 750 (Anthropic's published rule;
    /// OpenAI's tiles come to less), at most 1,600 (providers scale large
    /// images down first), and 1,600 when the size cannot be read (a URL, or
    /// a format whose header is not parsed here).
    public static func imageTokens(_ image: ImageInput) -> Int {
        guard let (w, h) = ImageSize.of(image) else { return 1600 }
        return max(1, min(1600, (w * h + 749) / 750))
    }
}

/// Pixel sizes read from image headers (PNG, GIF, JPEG), for estimates.
public enum ImageSize {
    public static func of(_ image: ImageInput) -> (Int, Int)? {
        guard case .data(_, let b64) = image.source else { return nil }
        // The header is in the first bytes for PNG and GIF; JPEG's frame
        // header may come after metadata, so decode up to 64 KiB.
        guard let b = Base64.decode(bytes: b64.utf8.prefix(87_380)) else { return nil }
        return of(bytes: b)
    }

    public static func of(bytes b: [UInt8]) -> (Int, Int)? {
        func be16(_ i: Int) -> Int { Int(b[i]) << 8 | Int(b[i + 1]) }
        func be32(_ i: Int) -> Int { be16(i) << 16 | be16(i + 2) }
        switch ImageInput.sniff(b) {
        case "image/png"?:
            guard b.count >= 24 else { return nil }
            return (be32(16), be32(20))
        case "image/gif"?:
            guard b.count >= 10 else { return nil }
            return (Int(b[6]) | Int(b[7]) << 8, Int(b[8]) | Int(b[9]) << 8)
        case "image/jpeg"?:
            var i = 2
            while i + 9 < b.count {
                guard b[i] == 0xFF else { return nil }
                let marker = b[i + 1]
                if marker == 0xFF { i += 1; continue }
                // Start of frame (baseline, progressive, ...): height, width.
                if (0xC0...0xCF).contains(marker) && ![0xC4, 0xC8, 0xCC].contains(marker) {
                    return (be16(i + 7), be16(i + 5))
                }
                i += 2 + be16(i + 2)
            }
            return nil
        default:
            return nil
        }
    }
}
