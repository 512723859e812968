// libFuzzer target: YAML (libyaml) and the manifest loader, including
// config validation against what the manifest declares.
import Descartes

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeRawBufferPointer(start: data, count: size), as: UTF8.self)
    _ = try? YAML.parse(text, file: "fuzz.yaml")
    if let m = try? PluginManifest.parse(text, file: "/fuzz/fuzz.yaml") {
        var explicit: [String: JSONValue] = [:]
        for k in m.config.prefix(8) { explicit[k.name] = .string("1") }
        _ = try? ConfigValidation.resolve(manifest: m, instance: "fuzz", explicit: explicit, environment: ["X": "y"])
    }
    return 0
}
