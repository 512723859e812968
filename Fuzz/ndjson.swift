// libFuzzer target: the line decoder and the zero-allocation JSON reader
// on each line, as an NDJSON stream (Ollama) is read: split into reads at
// boundaries the input chooses, every line scanned field by field.
import DescartesPluginKit

func scan(_ line: UnsafeRawBufferPointer) throws {
    var r = JSONReader(line)
    guard r.peekKind() == .object else {
        _ = try r.readValue()
        return
    }
    try r.beginObject()
    while let key = try r.nextKey() {
        if key == "message" && r.peekKind() == .object {
            try r.beginObject()
            while let k = try r.nextKey() {
                if k == "content" && r.peekKind() == .string {
                    _ = try r.withStringBytes { $0.count }
                } else {
                    try r.skipValue()
                }
            }
        } else if key == "done" && r.peekKind() == .bool {
            _ = try r.readBool()
        } else {
            _ = try r.readRawValue()
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let step = Int(data[0]) % 13 + 1
    let bytes = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    var d = LineDecoder(maxLineBytes: 4096)
    do {
        var i = 0
        while i < bytes.count {
            try d.feed(UnsafeRawBufferPointer(rebasing: bytes[i..<min(i + step, bytes.count)])) { line in try? scan(line) }
            i += step
        }
        try d.finish { line in try? scan(line) }
    } catch {}
    return 0
}
