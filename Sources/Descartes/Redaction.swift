/// Finds credentials by their shape, for the text the host prints, logs or
/// returns: values the host was never told about (a server echoing a key
/// back in an error, a header dumped in a trace) are masked too.
///
/// What is masked, `[REDACTED]` in place of the value:
/// - `Authorization` / `Proxy-Authorization` values, keeping the scheme
///   (`Authorization: Bearer [REDACTED]`), and any `Bearer <token>` or
///   `Basic <token>`;
/// - values of credential fields, as headers, JSON members, query or form
///   parameters (`x-api-key: ...`, `"api_key": "..."`, `?key=...`,
///   `access_token=...`, `password=...`) when the value looks like a key
///   (at least 8 characters and a digit, or at least 20 characters);
/// - well-known key prefixes at a word boundary: `sk-` (OpenAI, Anthropic's
///   `sk-ant-`), `AIza` (Google), `ghp_`/`gho_`/`ghs_`/`ghu_`/`github_pat_`,
///   `xox?-` (Slack), `hf_`, `gsk_`, `xai-`, `glpat-`, `r8_`, `AKIA` (AWS),
///   `dsk-` (the keys `descartes keys create` issues).
///
/// It works on bytes, allocates only when it masks something, and leaves
/// ordinary prose alone ("risk-averse", "max_tokens: 100", "api_key (string)").
enum KeyShapes {
    static let mask = Array(Secret.mask.utf8)

    /// Credential field names, lowercase, matched case-insensitively at a
    /// word boundary and followed by a separator (`:` or `=`, optionally
    /// after a closing quote).
    static let fieldNames: [[UInt8]] = [
        "x-api-key", "api-key", "api_key", "apikey", "x-goog-api-key", "access_token", "refresh_token", "id_token",
        "client_secret", "secret_key", "auth_token", "x-auth-token", "session_token", "password", "passwd", "key",
    ].map { Array($0.utf8) }

    static let authorizationNames: [[UInt8]] = ["authorization", "proxy-authorization"].map { Array($0.utf8) }
    static let schemes: [[UInt8]] = ["bearer", "basic", "token", "digest", "apikey"].map { Array($0.utf8) }

    /// Prefixes of provider keys, with the least number of characters that
    /// must follow for the text to count as a key.
    static let prefixes: [(prefix: [UInt8], minimum: Int)] = [
        ("sk-", 8), ("AIza", 30), ("ghp_", 20), ("gho_", 20), ("ghs_", 20), ("ghu_", 20), ("github_pat_", 20),
        ("xoxb-", 10), ("xoxp-", 10), ("xoxa-", 10), ("xoxs-", 10), ("hf_", 20), ("gsk_", 20), ("xai-", 20),
        ("glpat-", 20), ("r8_", 20), ("AKIA", 16), ("dsk-", 32),
    ].map { (Array($0.0.utf8), $0.1) }

    static let bearer = Array("bearer ".utf8)
    static let basic = Array("basic ".utf8)

    /// Per lowercased first byte: the field names starting with it.
    static let fieldsByFirstByte: [[[UInt8]]] = {
        var t = [[[UInt8]]](repeating: [], count: 256)
        for n in fieldNames { t[Int(n[0])].append(n) }
        return t
    }()

    /// Per first byte (case kept): the key prefixes starting with it.
    static let prefixesByFirstByte: [[(prefix: [UInt8], minimum: Int)]] = {
        var t = [[(prefix: [UInt8], minimum: Int)]](repeating: [], count: 256)
        for p in prefixes { t[Int(p.prefix[0])].append(p) }
        return t
    }()

    static func isWordByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
    }

    static func isTokenByte(_ b: UInt8) -> Bool {
        isWordByte(b) || b == 0x2E || b == 0x2B || b == 0x2F || b == 0x3D || b == 0x7E
    }

    static func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b + 32 : b }

    /// Whether `bytes[i...]` starts with `word`, ignoring ASCII case.
    static func matches(_ bytes: UnsafeBufferPointer<UInt8>, _ i: Int, _ word: [UInt8], caseInsensitive: Bool) -> Bool {
        guard i + word.count <= bytes.count else { return false }
        for k in 0..<word.count {
            let b = bytes[i + k]
            if caseInsensitive ? lower(b) != word[k] : b != word[k] { return false }
        }
        return true
    }

    /// The end of a token starting at `i` (key characters only).
    static func tokenEnd(_ bytes: UnsafeBufferPointer<UInt8>, _ i: Int) -> Int {
        var j = i
        while j < bytes.count, isTokenByte(bytes[j]) { j += 1 }
        // A sentence's full stop is not part of the key.
        while j > i, bytes[j - 1] == 0x2E { j -= 1 }
        return j
    }

    static func looksLikeKey(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Bool {
        let n = end - start
        if n >= 20 { return true }
        guard n >= 8 else { return false }
        for k in start..<end where bytes[k] >= 0x30 && bytes[k] <= 0x39 { return true }
        return false
    }

    /// After a field name at `i` ending at `nameEnd`: the start of its value
    /// if a separator follows (`"api_key": "`, `x-api-key: `, `key=`), else nil.
    static func valueStart(_ bytes: UnsafeBufferPointer<UInt8>, _ nameEnd: Int) -> Int? {
        var j = nameEnd
        if j < bytes.count, bytes[j] == 0x22 || bytes[j] == 0x27 { j += 1 }  // closing quote of a JSON member
        while j < bytes.count, bytes[j] == 0x20 || bytes[j] == 0x09 { j += 1 }
        guard j < bytes.count, bytes[j] == 0x3A || bytes[j] == 0x3D else { return nil }  // ':' or '='
        j += 1
        while j < bytes.count, bytes[j] == 0x20 || bytes[j] == 0x09 { j += 1 }
        if j < bytes.count, bytes[j] == 0x22 || bytes[j] == 0x27 { j += 1 }  // opening quote
        return j
    }

    /// Finds the next credential at or after `from`: the range to replace.
    static func nextMatch(_ bytes: UnsafeBufferPointer<UInt8>, from: Int) -> Range<Int>? {
        var i = from
        while i < bytes.count {
            let b = bytes[i]
            let boundary = i == 0 || !isWordByte(bytes[i - 1])
            if boundary {
                let l = lower(b)
                // Authorization headers: mask the credential, keep the scheme.
                if l == 0x61 || l == 0x70 {
                    for name in authorizationNames where matches(bytes, i, name, caseInsensitive: true) {
                        if let v = valueStart(bytes, i + name.count) {
                            var start = v
                            for s in schemes where matches(bytes, v, s, caseInsensitive: true) && v + s.count < bytes.count && bytes[v + s.count] == 0x20 {
                                start = v + s.count + 1
                            }
                            let end = tokenEnd(bytes, start)
                            if end - start >= 4 { return start..<end }
                        }
                    }
                }
                // "Bearer <token>", "Basic <token>" anywhere.
                if l == 0x62, matches(bytes, i, bearer, caseInsensitive: true) || matches(bytes, i, basic, caseInsensitive: true) {
                    let start = i + (lower(bytes[i + 1]) == 0x65 ? 7 : 6)
                    let end = tokenEnd(bytes, start)
                    if end - start >= 8 { return start..<end }
                }
                // Credential fields.
                for name in fieldsByFirstByte[Int(l)] where matches(bytes, i, name, caseInsensitive: true) {
                    let nameEnd = i + name.count
                    if nameEnd < bytes.count, isWordByte(bytes[nameEnd]) { continue }
                    if let v = valueStart(bytes, nameEnd) {
                        let end = tokenEnd(bytes, v)
                        if looksLikeKey(bytes, v, end) { return v..<end }
                    }
                }
                // Key prefixes.
                for (prefix, minimum) in prefixesByFirstByte[Int(b)] where matches(bytes, i, prefix, caseInsensitive: false) {
                    let end = tokenEnd(bytes, i + prefix.count)
                    if end - (i + prefix.count) >= minimum { return i..<end }
                }
            }
            i += 1
        }
        return nil
    }

    /// `text` with every credential-shaped value masked.
    static func redact(_ text: String) -> String {
        var text = text
        return text.withUTF8 { bytes -> String in
            guard var match = nextMatch(bytes, from: 0) else { return String(decoding: bytes, as: UTF8.self) }
            var out: [UInt8] = []
            out.reserveCapacity(bytes.count)
            var copied = 0
            while true {
                out.append(contentsOf: bytes[copied..<match.lowerBound])
                out.append(contentsOf: mask)
                copied = match.upperBound
                guard let next = nextMatch(bytes, from: match.upperBound) else { break }
                match = next
            }
            out.append(contentsOf: bytes[copied...])
            return String(decoding: out, as: UTF8.self)
        }
    }
}

/// Masks secrets in text that arrives in pieces (a streamed answer printed
/// as it comes): a registered secret or a credential cut across two pieces
/// is masked whole, which redacting each piece alone would miss.
///
/// It holds back only what could still become a secret: the longest end of
/// the text that begins a registered secret, and a trailing run of key
/// characters that begins like a provider key (`sk-`, `ghp_`, ...) or stands
/// where a credential's value would (after `: `, `=`, `Bearer `), up to 512
/// bytes. Ordinary words pass at once. The last 64 bytes already printed are
/// kept as context, so a field name printed earlier still marks its value.
/// `finish()` returns what is held.
public struct StreamRedactor: Sendable {
    let redactor: Redactor
    var pending: [UInt8] = []
    var context: [UInt8] = []
    static let maxHeldRun = 512
    static let contextBytes = 64

    public init(_ redactor: Redactor) { self.redactor = redactor }

    /// The part of everything pushed so far that can be shown, masked.
    public mutating func push(_ text: String) -> String {
        pending.append(contentsOf: text.utf8)
        let hold = Self.held(pending, context: context, secrets: redactor.registered())
        return emit(count: pending.count - hold)
    }

    /// The rest, masked.
    public mutating func finish() -> String { emit(count: pending.count) }

    mutating func emit(count: Int) -> String {
        guard count > 0 else { return "" }
        let part = Array(pending[..<count])
        pending.removeFirst(count)
        let shown: String
        if context.isEmpty {
            shown = redactor.redact(String(decoding: part, as: UTF8.self))
        } else {
            // Masked with its context; the context's own masked form is cut
            // off again (a credential never straddles the two: it was held).
            let before = redactor.redact(String(decoding: context, as: UTF8.self))
            let both = redactor.redact(String(decoding: context + part, as: UTF8.self))
            shown = both.hasPrefix(before) ? String(both.dropFirst(before.count)) : redactor.redact(String(decoding: part, as: UTF8.self))
        }
        context.append(contentsOf: part)
        if context.count > Self.contextBytes {
            // Cut at a character boundary.
            var cut = context.count - Self.contextBytes
            while cut < context.count, context[cut] & 0xC0 == 0x80 { cut += 1 }
            context.removeFirst(cut)
        }
        return shown
    }

    /// How many bytes at the end of `text` to hold back.
    static func held(_ text: [UInt8], context: [UInt8], secrets: [String]) -> Int {
        var hold = 0
        // The longest end of the text that is the start of a secret.
        for s in secrets {
            let s = Array(s.utf8)
            var n = min(s.count - 1, text.count)
            while n > hold {
                if text[(text.count - n)...].elementsEqual(s[..<n]) { hold = n; break }
                n -= 1
            }
        }
        // A trailing run of key characters that may be (the start of) a credential.
        var start = text.count
        while start > 0, KeyShapes.isTokenByte(text[start - 1]) { start -= 1 }
        let run = text[start...]
        if !run.isEmpty && run.count <= maxHeldRun && (startsLikeKey(run) || inValuePosition(context + text[..<start])) {
            hold = max(hold, run.count)
        }
        return hold
    }

    static func startsLikeKey(_ run: ArraySlice<UInt8>) -> Bool {
        KeyShapes.prefixes.contains { p in run.starts(with: p.prefix) || p.prefix.starts(with: run) }
    }

    /// Whether what comes before a run puts it where a credential's value goes.
    static func inValuePosition(_ before: [UInt8]) -> Bool {
        var i = before.count
        if i > 0, before[i - 1] == 0x22 || before[i - 1] == 0x27 { i -= 1 }
        let spaces = i
        while i > 0, before[i - 1] == 0x20 || before[i - 1] == 0x09 { i -= 1 }
        if i > 0, before[i - 1] == 0x3A || before[i - 1] == 0x3D { return true }
        if spaces > i {
            // "Bearer ", "Basic ", "token ".
            var w = i
            while w > 0, KeyShapes.isWordByte(before[w - 1]) { w -= 1 }
            let word = before[w..<i].map(KeyShapes.lower)
            return KeyShapes.schemes.contains { $0.elementsEqual(word) }
        }
        return false
    }
}
