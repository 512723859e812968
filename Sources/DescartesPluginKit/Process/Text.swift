import Glibc

/// Splits a byte stream into lines, with no limit on a line's length.
///
/// Bytes are appended as they are read; each complete line (without its
/// `\n`) is handed to the caller as a borrowed buffer, valid only during the
/// call. Scanning resumes where it stopped, so a line arriving in many small
/// pieces costs linear time, however long it grows.
public struct LineBuffer {
    private var pending: [UInt8] = []
    /// Bytes of `pending` already known to hold no newline.
    private var scanned = 0

    public init() {}

    /// Bytes held for a line not yet complete.
    public var pendingCount: Int { pending.count }

    /// Appends `chunk` and calls `line` for every line it completes.
    public mutating func append(_ chunk: UnsafeRawBufferPointer, _ line: (UnsafeRawBufferPointer) -> Void) {
        guard let base = chunk.baseAddress, chunk.count > 0 else { return }
        if pending.isEmpty {
            // Fast path: lines entirely inside the chunk are never copied.
            var start = 0
            while start < chunk.count, let nl = memchr(base + start, 0x0A, chunk.count - start) {
                let end = base.distance(to: UnsafeRawPointer(nl))
                line(UnsafeRawBufferPointer(rebasing: chunk[start..<end]))
                start = end + 1
            }
            if start < chunk.count { pending.append(contentsOf: chunk[start...]) }
            scanned = pending.count
            return
        }
        pending.append(contentsOf: chunk)
        var consumed = 0
        pending.withUnsafeBytes { buf in
            let b = buf.baseAddress!
            var from = scanned
            while from < buf.count, let nl = memchr(b + from, 0x0A, buf.count - from) {
                let end = b.distance(to: UnsafeRawPointer(nl))
                line(UnsafeRawBufferPointer(rebasing: buf[consumed..<end]))
                consumed = end + 1
                from = consumed
            }
        }
        if consumed > 0 { pending.removeFirst(consumed) }
        scanned = pending.count
    }

    /// Calls `line` with what remains (a last line without a newline), if any.
    public mutating func finish(_ line: (UnsafeRawBufferPointer) -> Void) {
        guard !pending.isEmpty else { return }
        pending.withUnsafeBytes { line($0) }
        pending = []
        scanned = 0
    }
}

/// Removes terminal escape sequences (ANSI/ECMA-48: CSI `ESC [ ... final`,
/// OSC `ESC ] ... BEL|ST`, and two-byte `ESC x`) and other control
/// characters except tab and newline. Stateful, so a sequence split across
/// two reads is still removed.
public struct ANSIStripper: Sendable {
    private enum State: Sendable { case text, escape, csi, osc, oscEscape }
    private var state = State.text

    public init() {}

    /// Appends `bytes` without escape sequences to `out`.
    public mutating func strip(_ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        for c in bytes {
            switch state {
            case .text:
                if c == 0x1B {
                    state = .escape
                } else if c >= 0x20 || c == 0x09 || c == 0x0A {
                    if c != 0x7F { out.append(c) }
                }
            case .escape:
                if c == UInt8(ascii: "[") {
                    state = .csi
                } else if c == UInt8(ascii: "]") {
                    state = .osc
                } else {
                    state = .text  // a two-byte sequence (ESC c, ESC =, ...)
                }
            case .csi:
                // Parameters and intermediates (0x20-0x3F) until a final byte.
                if c >= 0x40 && c <= 0x7E { state = .text } else if c < 0x20 || c > 0x7E { state = .text }
            case .osc:
                if c == 0x07 { state = .text } else if c == 0x1B { state = .oscEscape }
            case .oscEscape:
                state = c == UInt8(ascii: "\\") ? .text : .osc
            }
        }
    }

    /// `text` without escape sequences or control characters, trimmed.
    public static func clean(_ bytes: UnsafeRawBufferPointer) -> String {
        var s = ANSIStripper()
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        s.strip(bytes, into: &out)
        var lo = 0
        var hi = out.count
        while lo < hi, out[lo] == 0x20 || out[lo] == 0x09 || out[lo] == 0x0A { lo += 1 }
        while hi > lo, out[hi - 1] == 0x20 || out[hi - 1] == 0x09 || out[hi - 1] == 0x0A { hi -= 1 }
        return String(decoding: out[lo..<hi], as: UTF8.self)
    }

    public static func clean(_ text: String) -> String {
        var t = text
        return t.withUTF8 { clean(UnsafeRawBufferPointer($0)) }
    }
}
