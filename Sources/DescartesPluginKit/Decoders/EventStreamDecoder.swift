/// Decodes AWS's binary event-stream framing
/// (`application/vnd.amazon.eventstream`, Bedrock's ConverseStream) fed in
/// arbitrary pieces: a message may be cut anywhere across reads.
///
/// A message is:
///
///     total length (4, big-endian) | headers length (4) | prelude CRC32 (4)
///     headers | payload | message CRC32 (4)
///
/// The prelude CRC covers the first 8 bytes, the message CRC everything
/// before it (CRC-32, the ISO-HDLC polynomial zlib uses). A header is a
/// name (1-byte length, then the bytes), a type byte and a value: 0/1
/// true/false, 2 byte, 3 short, 4 integer, 5 long, 6 byte array (2-byte
/// length), 7 string (2-byte length), 8 timestamp (8 bytes), 9 UUID (16).
///
/// Every violation (a CRC mismatch, a length out of range, a header running
/// past its section, an unknown type) throws `Malformed` naming it; after
/// one the decoder is unusable, as the stream is (lengths cannot be trusted
/// to find the next message).
public struct EventStreamDecoder {
    public struct Message {
        /// The headers whose values are strings (`:event-type`,
        /// `:message-type`, `:content-type`, `:exception-type`, ...);
        /// other header types are checked and skipped.
        public var headers: [(name: String, value: String)]
        /// The payload (borrowed for the callback's duration).
        public var payload: UnsafeRawBufferPointer

        public func header(_ name: String) -> String? { headers.first { $0.name == name }?.value }
    }

    public struct Malformed: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// The largest message accepted (AWS's limit is 16 MiB of payload).
    public let maxMessageBytes: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var broken = false

    public init(maxMessageBytes: Int = 16 << 20 + 128 << 10) {
        self.maxMessageBytes = maxMessageBytes
    }

    /// Bytes held for a message not yet complete.
    public var pendingBytes: Int { buffer.count - start }

    /// Feeds bytes; `onMessage` gets every message they complete, in order.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ onMessage: (Message) throws -> Void) throws {
        if broken { throw Malformed(message: "the event stream is already broken") }
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
        while buffer.count - start >= 12 {
            let total = Self.u32(buffer, start)
            let headersLength = Self.u32(buffer, start + 4)
            guard total >= 16, total <= maxMessageBytes else {
                broken = true
                throw Malformed(message: "a message length of \(total) bytes (16 to \(maxMessageBytes) allowed)")
            }
            guard headersLength <= total - 16 else {
                broken = true
                throw Malformed(message: "headers of \(headersLength) bytes in a message of \(total)")
            }
            let preludeCRC = Self.u32(buffer, start + 8)
            let computed = buffer.withUnsafeBytes { CRC32.checksum(UnsafeRawBufferPointer(rebasing: $0[start..<start + 8])) }
            guard UInt32(preludeCRC) == computed else {
                broken = true
                throw Malformed(message: "prelude CRC mismatch (sent \(Self.hex(UInt32(preludeCRC))), computed \(Self.hex(computed)))")
            }
            guard buffer.count - start >= total else { break }
            let messageCRC = Self.u32(buffer, start + total - 4)
            let m = start
            let result: Result<Void, any Error> = buffer.withUnsafeBytes { raw in
                let whole = UnsafeRawBufferPointer(rebasing: raw[m..<m + total - 4])
                let c = CRC32.checksum(whole)
                guard UInt32(messageCRC) == c else {
                    return .failure(Malformed(message: "message CRC mismatch (sent \(Self.hex(UInt32(messageCRC))), computed \(Self.hex(c)))"))
                }
                do {
                    let headers = try Self.headers(UnsafeRawBufferPointer(rebasing: raw[m + 12..<m + 12 + headersLength]))
                    let payload = UnsafeRawBufferPointer(rebasing: raw[m + 12 + headersLength..<m + total - 4])
                    try onMessage(Message(headers: headers, payload: payload))
                    return .success(())
                } catch {
                    return .failure(error)
                }
            }
            start += total
            if case .failure(let e) = result {
                if e is Malformed { broken = true }
                throw e
            }
        }
        if start > 1 << 16 && start * 2 > buffer.count {
            buffer.removeFirst(start)
            start = 0
        }
    }

    /// The end of the body: bytes of a message left over mean it was cut.
    public func finish() throws {
        if pendingBytes > 0 { throw Malformed(message: "the stream ended inside a message (\(pendingBytes) bytes of it)") }
    }

    static func u32(_ b: [UInt8], _ i: Int) -> Int {
        Int(b[i]) << 24 | Int(b[i + 1]) << 16 | Int(b[i + 2]) << 8 | Int(b[i + 3])
    }

    static func hex(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: 8 - s.count) + s
    }

    static func headers(_ h: UnsafeRawBufferPointer) throws(Malformed) -> [(name: String, value: String)] {
        var out: [(name: String, value: String)] = []
        var i = 0
        func need(_ n: Int, _ what: String) throws(Malformed) {
            guard i + n <= h.count else { throw Malformed(message: "a header's \(what) runs past the headers (at byte \(i))") }
        }
        while i < h.count {
            try need(1, "name length")
            let nameLength = Int(h[i])
            i += 1
            try need(nameLength, "name")
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: h[i..<i + nameLength]), as: UTF8.self)
            i += nameLength
            try need(1, "type")
            let type = h[i]
            i += 1
            switch type {
            case 0, 1: break
            case 2: try need(1, "value"); i += 1
            case 3: try need(2, "value"); i += 2
            case 4: try need(4, "value"); i += 4
            case 5, 8: try need(8, "value"); i += 8
            case 9: try need(16, "value"); i += 16
            case 6, 7:
                try need(2, "value length")
                let n = Int(h[i]) << 8 | Int(h[i + 1])
                i += 2
                try need(n, "value")
                if type == 7 { out.append((name, String(decoding: UnsafeRawBufferPointer(rebasing: h[i..<i + n]), as: UTF8.self))) }
                i += n
            default:
                throw Malformed(message: "header '\(name)' has unknown value type \(type)")
            }
        }
        return out
    }
}

/// CRC-32 (ISO-HDLC: reflected polynomial 0xEDB88320, as zlib's crc32).
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: UnsafeRawBufferPointer, _ seed: UInt32 = 0) -> UInt32 {
        var c = ~seed
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return ~c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { checksum($0) } }

    /// One event-stream message with string headers (for tests and fuzz seeds).
    public static func eventStreamMessage(headers: [(String, String)], payload: [UInt8]) -> [UInt8] {
        var h: [UInt8] = []
        for (name, value) in headers {
            h.append(UInt8(name.utf8.count))
            h += Array(name.utf8)
            h.append(7)
            h += [UInt8(value.utf8.count >> 8), UInt8(value.utf8.count & 0xFF)]
            h += Array(value.utf8)
        }
        let total = 16 + h.count + payload.count
        func be(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
        var m = be(total) + be(h.count)
        m += be(Int(checksum(m)))
        m += h + payload
        m += be(Int(checksum(m)))
        return m
    }
}
