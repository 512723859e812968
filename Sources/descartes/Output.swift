import Descartes
import Glibc
import DescartesSupport

/// Writes to stdout/stderr with explicit flushing (streamed tokens must
/// appear as they arrive) and masks secrets on the way out.
enum Out {
    static func write(_ s: String, to fd: Int32 = 1) {
        var text = Redactor.shared.redact(s)
        text.withUTF8 { buf in
            var off = 0
            while off < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    return
                }
                off += n
            }
        }
    }
    static func line(_ s: String = "") { write(s + "\n") }
    static func err(_ s: String) { write(s + "\n", to: 2) }

    static let colour: Bool = {
        isatty(1) != 0 && Environment.get("NO_COLOR").map(\.isEmpty) ?? true && Environment.get("TERM") != "dumb"
    }()

    static func bold(_ s: String) -> String { colour ? "\u{1B}[1m\(s)\u{1B}[0m" : s }
    static func dim(_ s: String) -> String { colour ? "\u{1B}[2m\(s)\u{1B}[0m" : s }
    static func red(_ s: String) -> String { colour ? "\u{1B}[31m\(s)\u{1B}[0m" : s }
    static func green(_ s: String) -> String { colour ? "\u{1B}[32m\(s)\u{1B}[0m" : s }

    /// Left-aligned columns, two spaces apart.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func fmt(_ r: [String]) -> String {
            var out = ""
            for (i, c) in r.enumerated() {
                if i == r.count - 1 { out += c } else { out += c + String(repeating: " ", count: widths[i] - c.count + 2) }
            }
            return out
        }
        return ([bold(fmt(header))] + rows.map(fmt)).joined(separator: "\n")
    }
}

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
