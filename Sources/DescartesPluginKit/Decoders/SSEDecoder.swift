import Glibc

/// An incremental Server-Sent Events decoder (the WHATWG event-stream
/// format), fed with bytes exactly as they arrive from the network.
///
/// - Lines end in LF, CR or CRLF, also when a CR and its LF arrive in
///   different reads.
/// - `data:` lines accumulate (joined with "\n"); one space after the colon
///   is removed; `event:` names the event; `id:` is kept; `retry:` is parsed.
/// - Lines starting with `:` are comments (keep-alive pings), ignored.
/// - A blank line dispatches the event; `finish()` dispatches a trailing
///   event that had no blank line.
/// - A line longer than `maxLineBytes` fails the stream instead of growing
///   memory without bound.
///
/// Copies: a line that lies whole inside one read is not copied; a line cut
/// by a read boundary is buffered until complete. Data bytes are gathered
/// once per event.
public struct SSEDecoder {
    public struct Event {
        /// The event name ("message" when the stream gives none).
        public var name: UnsafeRawBufferPointer
        public var data: UnsafeRawBufferPointer
        public var id: String?
        /// True when the name is the default "message".
        public var isDefaultName: Bool
        public var nameString: String { String(decoding: name, as: UTF8.self) }
        public var dataString: String { String(decoding: data, as: UTF8.self) }
    }

    public struct LineTooLong: Error, CustomStringConvertible {
        public var limit: Int
        public var description: String { "an event-stream line is longer than \(limit) bytes" }
    }

    public let maxLineBytes: Int
    private var partial: [UInt8] = []
    private var data: [UInt8] = []
    private var name: [UInt8] = []
    private var hasData = false
    private var lastID: String? = nil
    /// The previous read ended with CR: a leading LF of the next one belongs to it.
    private var skipLF = false
    /// The server's requested reconnection delay, if it sent `retry:`.
    public private(set) var retryMillis: Int? = nil

    public init(maxLineBytes: Int = 16 << 20) {
        self.maxLineBytes = maxLineBytes
        data.reserveCapacity(1024)
    }

    /// Feeds bytes; `onEvent` is called for each complete event, with
    /// buffers valid only during the call.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ onEvent: (Event) throws -> Void) throws {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var i = 0
        let n = bytes.count
        if skipLF {
            if bytes[0] == 0x0A { i = 1 }
            skipLF = false
        }
        var lineStart = i
        while i < n {
            i = Self.lineEnd(base, from: i, count: n)
            if i == n { break }
            let c = bytes[i]
            // A complete line: bytes[lineStart..<i], after `partial`.
            if partial.isEmpty {
                try line(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<i]), onEvent)
            } else {
                partial.append(contentsOf: bytes[lineStart..<i])
                let whole = partial
                partial.removeAll(keepingCapacity: true)
                try whole.withUnsafeBytes { try line($0, onEvent) }
            }
            if c == 0x0D {
                if i + 1 < n {
                    if bytes[i + 1] == 0x0A { i += 1 }
                } else {
                    skipLF = true
                }
            }
            i += 1
            lineStart = i
        }
        if lineStart < n {
            partial.append(contentsOf: bytes[lineStart..<n])
            if partial.count > maxLineBytes { throw LineTooLong(limit: maxLineBytes) }
        }
    }

    /// Where the line starting at `from` ends: the first LF or CR, or
    /// `count` when there is none. With memchr (vectorized in glibc): a
    /// byte-at-a-time loop cost about 16 instructions a byte, 5,300 per
    /// OpenAI stream chunk (bench/run.py --profile stream-openai). A CR is
    /// looked for only before the LF (streams use LF; CR and CRLF are rare).
    @inline(__always)
    private static func lineEnd(_ base: UnsafeRawPointer, from: Int, count: Int) -> Int {
        var end = count
        if let lf = memchr(base + from, 0x0A, count - from) { end = base.distance(to: UnsafeRawPointer(lf)) }
        if end > from, let cr = memchr(base + from, 0x0D, end - from) { end = base.distance(to: UnsafeRawPointer(cr)) }
        return end
    }

    /// Ends the stream: a last line without its newline is processed, and an
    /// event without its blank line is dispatched.
    public mutating func finish(_ onEvent: (Event) throws -> Void) throws {
        if !partial.isEmpty {
            let whole = partial
            partial.removeAll()
            try whole.withUnsafeBytes { try line($0, onEvent) }
        }
        try dispatch(onEvent)
    }

    private mutating func line(_ l: UnsafeRawBufferPointer, _ onEvent: (Event) throws -> Void) throws {
        if l.count > maxLineBytes { throw LineTooLong(limit: maxLineBytes) }
        if l.isEmpty {
            try dispatch(onEvent)
            return
        }
        if l[0] == UInt8(ascii: ":") { return }  // comment
        var colon = 0
        while colon < l.count && l[colon] != UInt8(ascii: ":") { colon += 1 }
        let field = UnsafeRawBufferPointer(rebasing: l[0..<colon])
        var valueStart = min(colon + 1, l.count)
        if valueStart < l.count && l[valueStart] == UInt8(ascii: " ") { valueStart += 1 }
        let value = UnsafeRawBufferPointer(rebasing: l[valueStart..<l.count])
        if equals(field, "data") {
            if hasData { data.append(0x0A) }
            data.append(contentsOf: value)
            hasData = true
            if data.count > maxLineBytes { throw LineTooLong(limit: maxLineBytes) }
        } else if equals(field, "event") {
            name.removeAll(keepingCapacity: true)
            name.append(contentsOf: value)
        } else if equals(field, "id") {
            if !value.contains(0) { lastID = String(decoding: value, as: UTF8.self) }
        } else if equals(field, "retry") {
            if let v = Int(String(decoding: value, as: UTF8.self)) { retryMillis = v }
        }
        // Other fields are ignored, as the format says.
    }

    private mutating func dispatch(_ onEvent: (Event) throws -> Void) throws {
        defer {
            data.removeAll(keepingCapacity: true)
            name.removeAll(keepingCapacity: true)
            hasData = false
        }
        guard hasData else { return }
        let isDefault = name.isEmpty
        let id = lastID
        try data.withUnsafeBytes { d in
            if isDefault {
                try "message".utf8.withContiguousStorageIfAvailable { m in
                    try onEvent(Event(name: UnsafeRawBufferPointer(m), data: d, id: id, isDefaultName: true))
                }
            } else {
                try name.withUnsafeBytes { nm in
                    try onEvent(Event(name: nm, data: d, id: id, isDefaultName: false))
                }
            }
        }
    }

    @inline(__always)
    private func equals(_ b: UnsafeRawBufferPointer, _ s: StaticString) -> Bool {
        guard b.count == s.utf8CodeUnitCount else { return false }
        let p = s.utf8Start
        for k in 0..<b.count where b[k] != p[k] { return false }
        return true
    }
}

extension SSEDecoder.Event {
    /// True when the event's name equals `s`.
    public func named(_ s: StaticString) -> Bool {
        guard name.count == s.utf8CodeUnitCount else { return false }
        let p = s.utf8Start
        for k in 0..<name.count where name[k] != p[k] { return false }
        return true
    }

    /// True when the data is exactly `[DONE]` (OpenAI's end marker).
    public var isDone: Bool {
        data.count == 6 && data[0] == UInt8(ascii: "[") && data[1] == UInt8(ascii: "D") && data[5] == UInt8(ascii: "]")
    }
}
