// libFuzzer target: the SSE decoder, fed the input cut into reads at
// boundaries the input itself chooses (its first byte), so every split of
// CR, LF and multi-byte sequences across reads is reachable.
import DescartesPluginKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let step = Int(data[0]) % 17 + 1
    let bytes = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    var d = SSEDecoder(maxLineBytes: 4096)
    var events = 0
    do {
        var i = 0
        while i < bytes.count {
            let piece = UnsafeRawBufferPointer(rebasing: bytes[i..<min(i + step, bytes.count)])
            try d.feed(piece) { e in
                events += 1
                _ = e.isDone
                _ = e.named("message")
            }
            i += step
        }
        try d.finish { _ in events += 1 }
    } catch {}
    return 0
}
