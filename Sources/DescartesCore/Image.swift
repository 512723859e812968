// Images given to a model with a user message (the ABI's `images` member,
// docs/abi.md), and the base64 coding they travel in.

/// An image attached to a user message: its bytes (base64, with a media
/// type) or a URL the provider fetches itself.
public struct ImageInput: Sendable, Hashable {
    public enum Source: Sendable, Hashable {
        /// Base64 text (standard alphabet, padded) of an image of `mediaType`.
        case data(mediaType: String, base64: String)
        /// An `https:` (or `http:`) URL; not every provider accepts one.
        case url(String)
    }

    public var source: Source

    public init(_ source: Source) { self.source = source }

    /// An image from its bytes; the media type is read from the bytes when
    /// not given (PNG, JPEG, GIF, WebP).
    public init(bytes: [UInt8], mediaType: String? = nil) throws(ImageError) {
        guard let type = mediaType ?? Self.sniff(bytes) else {
            throw ImageError("not a PNG, JPEG, GIF or WebP image (its first bytes: \(bytes.prefix(8).map { String($0, radix: 16) }.joined(separator: " ")))")
        }
        guard Self.mediaTypes.contains(type) else {
            throw ImageError("unsupported image type \(type) (\(Self.mediaTypes.sorted().joined(separator: ", ")))")
        }
        source = .data(mediaType: type, base64: Base64.encode(bytes))
    }

    public static func url(_ url: String) -> ImageInput { ImageInput(.url(url)) }

    /// The media types every vision provider takes.
    public static let mediaTypes: Set<String> = ["image/png", "image/jpeg", "image/gif", "image/webp"]

    /// The media type of an image from its first bytes, or nil.
    public static func sniff(_ b: [UInt8]) -> String? {
        if b.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return "image/png" }
        if b.starts(with: [0xFF, 0xD8, 0xFF]) { return "image/jpeg" }
        if b.starts(with: Array("GIF87a".utf8)) || b.starts(with: Array("GIF89a".utf8)) { return "image/gif" }
        if b.count >= 12, b.starts(with: Array("RIFF".utf8)), Array(b[8..<12]) == Array("WEBP".utf8) { return "image/webp" }
        return nil
    }

    /// A `data:` URL for data, the URL itself otherwise (OpenAI's
    /// `image_url.url`).
    public var urlString: String {
        switch source {
        case .data(let type, let b64): return "data:\(type);base64,\(b64)"
        case .url(let u): return u
        }
    }

    /// The size of the image's bytes (0 for a URL).
    public var byteCount: Int {
        guard case .data(_, let b64) = source else { return 0 }
        let padding = b64.utf8.reversed().prefix(2).filter { $0 == UInt8(ascii: "=") }.count
        return b64.utf8.count / 4 * 3 - padding
    }
}

public struct ImageError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Base64 (RFC 4648, standard alphabet, padded).
public enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], alphabet[Int(n & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest > 0 {
            let n = UInt32(bytes[i]) << 16 | (rest == 2 ? UInt32(bytes[i + 1]) << 8 : 0)
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)]]
            out += rest == 2 ? [alphabet[Int(n >> 6 & 63)], UInt8(ascii: "=")] : [UInt8(ascii: "="), UInt8(ascii: "=")]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes of base64 text, or nil if it is not valid base64 (padding
    /// optional; no whitespace).
    public static func decode(_ text: String) -> [UInt8]? { decode(bytes: text.utf8) }

    public static func decode(bytes text: some Collection<UInt8>) -> [UInt8]? {
        var out = [UInt8]()
        out.reserveCapacity(text.count / 4 * 3)
        var acc: UInt32 = 0
        var bits = 0
        var padding = 0
        for c in text {
            if c == UInt8(ascii: "=") { padding += 1; continue }
            guard padding == 0 else { return nil }
            let v: UInt8
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = c - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): v = c - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c - UInt8(ascii: "0") + 52
            case UInt8(ascii: "+"): v = 62
            case UInt8(ascii: "/"): v = 63
            default: return nil
            }
            acc = acc << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
            }
        }
        guard padding <= 2, bits < 6 else { return nil }
        return out
    }
}
