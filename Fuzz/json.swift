// libFuzzer target: the JSON documents the host decodes from a plugin's
// events (Request, Finish, Usage, Error, model lists, token counts) and the
// response assembly, through the same functions the ABI bridge uses.
import DescartesCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    _ = Wire.decodeError(bytes, provider: "fuzz")
    guard let doc = try? JSONValue.parse(bytes) else { return 0 }
    // Round trip: what we write, we read back the same.
    if (try? JSONValue.parse(doc.jsonText)) != doc, !doc.jsonText.contains("nan") {
        fatalError("JSON round trip changed the document")
    }
    _ = try? Wire.decodeRequest(doc)
    _ = try? Wire.decodeFinish(doc)
    _ = try? Wire.decodeUsage(doc)
    _ = try? Wire.decodeModels(doc)
    _ = try? Wire.decodeTokenEstimate(doc)
    _ = Wire.decodeHealth(doc)
    if let r = try? Wire.decodeRequest(doc) {
        // Encoding a decoded request and decoding it again is stable.
        let again = Wire.encode(r)
        guard let doc2 = try? JSONValue.parse(bytes: again), let r2 = try? Wire.decodeRequest(doc2) else {
            fatalError("a decoded request did not survive encoding")
        }
        if r2 != r { fatalError("request round trip changed the request") }
    }
    var a = ResponseAssembler(provider: "fuzz")
    if case .array(let events)? = doc["events"] {
        for e in events.prefix(64) {
            let index = e["index"]?.intValue ?? 0
            let text = Array((e["text"]?.stringValue ?? "").utf8)
            text.withUnsafeBytes { b in
                switch e["type"]?.stringValue {
                case "text": a.appendText(b)
                case "start": _ = try? a.startToolCall(index: index, id: e["id"]?.stringValue ?? "", name: "f")
                case "delta": try? a.appendToolArguments(index: index, b)
                case "end": try? a.endToolCall(index: index)
                default: a.appendReasoning(b)
                }
            }
        }
        _ = a.response(Wire.Finish(finishReason: .stop))
    }
    return 0
}
