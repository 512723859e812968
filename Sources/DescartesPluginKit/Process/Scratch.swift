import Glibc

/// Session ids: version 4 UUIDs (the form Claude Code's `--session-id` requires; Codex's
/// thread ids, version 7, pass `isValid` too).
public enum AgentID {
    public static func random() -> String {
        var g = SystemRandomNumberGenerator()
        var b = (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) }
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        let hex = b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }
        return hex[0..<4].joined() + "-" + hex[4..<6].joined() + "-" + hex[6..<8].joined() + "-" + hex[8..<10].joined()
            + "-" + hex[10..<16].joined()
    }

    public static func isValid(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard u.count == 36 else { return false }
        for (i, c) in u.enumerated() {
            if [8, 13, 18, 23].contains(i) {
                if c != UInt8(ascii: "-") { return false }
            } else if !((c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46)) {
                return false
            }
        }
        return true
    }
}

/// A private directory for files handed to a child (a transcript, a JSON
/// schema), removed with its contents.
public final class ScratchDirectory: @unchecked Sendable {
    public let path: String

    /// A new directory `$TMPDIR/<prefix>-XXXXXX` (mode 0700, mkdtemp).
    public init(prefix: String = "descartes") throws(ProviderError) {
        let base = ChildEnvironment.host()["TMPDIR"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? "/tmp"
        var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw ProviderError(.process, "cannot create a directory in \(base): \(String(cString: strerror(errno)))")
        }
        path = String(cString: p)
    }

    /// Writes `bytes` to `name` (mode 0600) and returns its path.
    public func write(_ name: String, _ bytes: [UInt8]) throws(ProviderError) -> String {
        let file = path + "/" + name
        let fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ProviderError(.process, "cannot write \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw ProviderError(.process, "cannot write \(file): \(String(cString: strerror(errno)))") }
            off += n
        }
        return file
    }

    public func remove() {
        if let d = opendir(path) {
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
                if name != "." && name != ".." { unlink(path + "/" + name) }
            }
            closedir(d)
        }
        rmdir(path)
    }
}
