import Glibc

/// An incremental line splitter for newline-delimited streams (NDJSON from
/// Ollama, JSON lines from a headless CLI), fed with bytes as they arrive.
///
/// Lines end in LF; a CR before the LF is dropped. Empty lines are skipped.
/// A line cut by a read boundary is buffered until complete; a whole line
/// inside one read is handed over without copying. A line longer than
/// `maxLineBytes` fails (set it to `Int.max` to accept any length).
public struct LineDecoder {
    public struct LineTooLong: Error, CustomStringConvertible {
        public var limit: Int
        public var description: String { "a line is longer than \(limit) bytes" }
    }

    public let maxLineBytes: Int
    private var partial: [UInt8] = []

    public init(maxLineBytes: Int = 16 << 20) {
        self.maxLineBytes = maxLineBytes
    }

    /// Bytes held back waiting for the end of their line.
    public var pendingBytes: Int { partial.count }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ onLine: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard let base = bytes.baseAddress else { return }
        var start = 0
        let n = bytes.count
        var i = 0
        while i < n {
            // The next LF, with memchr (vectorized in glibc) rather than a
            // byte-at-a-time loop (as SSEDecoder.lineEnd).
            guard let lf = memchr(base + i, 0x0A, n - i) else { break }
            i = base.distance(to: UnsafeRawPointer(lf))
            if partial.isEmpty {
                try emit(UnsafeRawBufferPointer(rebasing: bytes[start..<i]), onLine)
            } else {
                partial.append(contentsOf: bytes[start..<i])
                if partial.count > maxLineBytes { throw LineTooLong(limit: maxLineBytes) }
                let whole = partial
                partial.removeAll(keepingCapacity: true)
                try whole.withUnsafeBytes { try emit($0, onLine) }
            }
            i += 1
            start = i
        }
        if start < n {
            partial.append(contentsOf: bytes[start..<n])
            if partial.count > maxLineBytes { throw LineTooLong(limit: maxLineBytes) }
        }
    }

    /// Ends the stream: a last line without its newline is handed over.
    public mutating func finish(_ onLine: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard !partial.isEmpty else { return }
        let whole = partial
        partial.removeAll()
        try whole.withUnsafeBytes { try emit($0, onLine) }
    }

    @inline(__always)
    private func emit(_ line: UnsafeRawBufferPointer, _ onLine: (UnsafeRawBufferPointer) throws -> Void) throws {
        var end = line.count
        if end > 0 && line[end - 1] == 0x0D { end -= 1 }
        if end == 0 { return }
        if end > maxLineBytes { throw LineTooLong(limit: maxLineBytes) }
        try onLine(UnsafeRawBufferPointer(rebasing: line[0..<end]))
    }
}
