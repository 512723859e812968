import Descartes
import DescartesCommandLine
import Glibc
import DescartesSupport

/// JSON renderings of manifests for `--json` output (results render
/// through `Wire.json`).
enum Render {
    static func configKey(_ k: ConfigKey) -> JSONValue {
        var o: JSONObject = ["name": .string(k.name), "type": .string(k.type.rawValue), "required": .bool(k.required), "secret": .bool(k.secret)]
        o["default"] = k.defaultValue ?? .null
        o["env"] = .array(k.env.map { .string($0) })
        if !k.description.isEmpty { o["description"] = .string(k.description) }
        return .object(o)
    }

    static func manifest(_ m: PluginManifest) -> JSONObject {
        var o: JSONObject = [
            "name": .string(m.provider), "version": .string(m.version), "mode": .string(m.mode.rawValue),
            "abi": .integer(m.abi), "library": .string(m.libraryPath), "factory": .string(m.factory),
            "description": .string(m.description), "capabilities": .array(m.capabilities.map { .string($0) }),
            "config": .array(m.config.map(configKey)),
        ]
        o["default_model"] = m.defaultModel.map { .string($0) } ?? .null
        o["models"] = .array(
            m.models.map { model in
                var mo: JSONObject = ["id": .string(model.id)]
                mo["context"] = model.contextLength.map { .integer($0) } ?? .null
                if let p = model.prices {
                    var po: JSONObject = ["input": .number(p.input), "output": .number(p.output)]
                    if let r = p.cacheRead { po["cache_read"] = .number(r) }
                    if let w = p.cacheWrite { po["cache_write"] = .number(w) }
                    mo["price"] = .object(po)
                }
                if !model.capabilities.isEmpty { mo["capabilities"] = .array(model.capabilities.map { .string($0) }) }
                return .object(mo)
            })
        return o
    }
}
