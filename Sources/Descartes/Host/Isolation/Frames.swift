import Glibc

/// The protocol between the host and `descartes-plugin-host`, the helper
/// process that runs an isolated plugin. It carries the C ABI itself, call
/// for call, over a Unix stream socket (fd 3 in the helper):
///
///     frame = u32 length (little-endian, of what follows) | u8 type | payload
///
/// host -> helper                         helper -> host
///   CREATE    JSON {library, factory,       CREATED   JSON {"library"?: Library, "error"?: Error}
///             provider, instance, config}
///   EXTENSION u8 first | id (UTF-8)         EXTENDED  u8 first | u8 slots | u16 offered
///   START     u64 call | u8 code | input    EVENT     u64 call | u32 type | u32 index | data
///   CANCEL    u64 call                      LOG       u32 level | message
///   RELEASE   u64 call
///   ANSWER    u64 call | JSON (ABI 1.2: answer_approval; CREATED says
///             {"answer_approval": true} when the plugin has it)
///   DESTROY   (empty)                       (the helper exits after DESTROY)
///
/// CREATED's `library` (once the library loaded, even when create then
/// failed): {"name", "version", "abi", "factories": [id]}, for `plugins verify`.
///
/// An operation's code is its index in `BackendOperation.base` (0-7: the seven of 1.0, then `embed`) for
/// the operations of descartes_backend_t. Extensions are forwarded by id,
/// whatever they are: EXTENSION asks the helper for the backend's extension
/// `id` and gives it the codes `first ..< first + 16` for its slots; the
/// helper answers how many slots the plugin's struct has and which of them
/// (bit k of `offered`) are not NULL (`slots` 0: no such extension). START
/// with code `first + k` then runs slot k.
///
/// A socket (not pipes) so that writing to a helper that died returns an
/// error instead of raising SIGPIPE in the host (MSG_NOSIGNAL).
package enum Frame {
    package static let create: UInt8 = 1
    package static let start: UInt8 = 2
    package static let cancel: UInt8 = 3
    package static let release: UInt8 = 4
    package static let destroy: UInt8 = 5
    package static let `extension`: UInt8 = 6
    package static let answer: UInt8 = 7
    package static let created: UInt8 = 10
    package static let event: UInt8 = 11
    package static let log: UInt8 = 12
    package static let extended: UInt8 = 13

    /// The largest frame accepted (a corrupt length never allocates more).
    package static let maxLength = 256 << 20

    /// The code of the first slot of the first extension; each extension
    /// gets a block of `BackendExtension.maxSlots` codes after it.
    package static let firstExtensionCode = 16
    /// How many extensions one isolated backend can forward (the codes end
    /// where the host's operation trampolines do).
    package static let maxExtensions = 8
}

/// Writes frames to a socket; safe from any thread.
package final class FrameWriter: Sendable {
    package let fd: Int32
    private let lock = Lock<Bool>(true)  // false once a write failed

    package init(fd: Int32) { self.fd = fd }

    /// Sends one frame; returns false if the peer is gone.
    @discardableResult
    package func send(_ type: UInt8, _ parts: UnsafeRawBufferPointer...) -> Bool {
        var header = [UInt8](repeating: 0, count: 5)
        let length = UInt32(1 + parts.reduce(0) { $0 + $1.count })
        withUnsafeBytes(of: length.littleEndian) { for i in 0..<4 { header[i] = $0[i] } }
        header[4] = type
        return lock.withLock { ok -> Bool in
            guard ok else { return false }
            var all = header.withUnsafeBytes { writeAll($0) }
            for p in parts where all && p.count > 0 { all = writeAll(p) }
            if !all { ok = false }
            return all
        }
    }

    package func send(_ type: UInt8, bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { send(type, $0) }
    }

    private func writeAll(_ b: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < b.count {
            let n = Glibc.send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += n
        }
        return true
    }
}

/// Reads frames from a socket (one reader thread).
package struct FrameReader {
    package let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0

    package init(fd: Int32) {
        self.fd = fd
        buffer.reserveCapacity(1 << 16)
    }

    /// The next frame, or nil at end of stream (or on a corrupt length).
    package mutating func next() -> (type: UInt8, payload: ArraySlice<UInt8>)? {
        while true {
            let available = buffer.count - start
            if available >= 5 {
                let length = buffer.withUnsafeBytes { raw -> Int in
                    var v: UInt32 = 0
                    for i in 0..<4 { v |= UInt32(raw[start + i]) << (8 * UInt32(i)) }
                    return Int(v)
                }
                if length < 1 || length > Frame.maxLength { return nil }
                if available >= 4 + length {
                    let type = buffer[start + 4]
                    let payload = buffer[(start + 5)..<(start + 4 + length)]
                    start += 4 + length
                    return (type, payload)
                }
            }
            // Compact, then read more.
            if start > 0 {
                buffer.removeFirst(start)
                start = 0
            }
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}

extension ArraySlice where Element == UInt8 {
    /// A little-endian integer at `offset` from the slice's start.
    package func le<T: FixedWidthInteger>(_ offset: Int, as: T.Type) -> T {
        var v: T = 0
        let base = startIndex + offset
        for i in 0..<MemoryLayout<T>.size { v |= T(self[base + i]) << (8 * i) }
        return v
    }
}

extension FixedWidthInteger {
    /// Little-endian bytes.
    package var leBytes: [UInt8] { withUnsafeBytes(of: littleEndian) { Array($0) } }
}
