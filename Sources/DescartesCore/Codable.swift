// Codable conformances for the types an application stores or sends on:
// JSONValue, and requests and responses in the documents of the plugin ABI
// (docs/abi.md), so `JSONEncoder().encode(response)` writes what
// `Wire.json(response)` is and decoding checks what `Wire` checks.

/// An object member's name as a coding key.
private struct MemberName: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension JSONValue: Codable {
    public init(from decoder: any Decoder) throws {
        if let c = try? decoder.container(keyedBy: MemberName.self) {
            var o = JSONObject()
            for k in c.allKeys { o[k.stringValue] = try c.decode(JSONValue.self, forKey: k) }
            self = .object(o)
            return
        }
        if var a = try? decoder.unkeyedContainer() {
            var items: [JSONValue] = []
            while !a.isAtEnd { items.append(try a.decode(JSONValue.self)) }
            self = .array(items)
            return
        }
        let s = try decoder.singleValueContainer()
        if s.decodeNil() {
            self = .null
        } else if let b = try? s.decode(Bool.self) {
            self = .bool(b)
        } else if let i = try? s.decode(Int.self) {
            self = .integer(i)
        } else if let d = try? s.decode(Double.self) {
            self = .number(d)
        } else {
            self = .string(try s.decode(String.self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .null:
            var s = encoder.singleValueContainer()
            try s.encodeNil()
        case .bool(let b):
            var s = encoder.singleValueContainer()
            try s.encode(b)
        case .integer(let i):
            var s = encoder.singleValueContainer()
            try s.encode(i)
        case .number(let d):
            var s = encoder.singleValueContainer()
            try s.encode(d)
        case .string(let t):
            var s = encoder.singleValueContainer()
            try s.encode(t)
        case .array(let items):
            var a = encoder.unkeyedContainer()
            for i in items { try a.encode(i) }
        case .object(let o):
            var c = encoder.container(keyedBy: MemberName.self)
            for m in o { try c.encode(m.value, forKey: MemberName(stringValue: m.key)) }
        }
    }
}

/// A request is encoded as its ABI document (`Wire.json`) and decoded
/// with `Wire.decodeRequest` (a `WireError` names the member at fault).
extension ModelRequest: Codable {
    public init(from decoder: any Decoder) throws {
        self = try Wire.decodeRequest(try JSONValue(from: decoder))
    }

    public func encode(to encoder: any Encoder) throws { try Wire.json(self).encode(to: encoder) }
}

/// A response is encoded as its ABI document (`Wire.json`) and decoded
/// with `Wire.decodeResponse`.
extension ModelResponse: Codable {
    public init(from decoder: any Decoder) throws {
        self = try Wire.decodeResponse(try JSONValue(from: decoder))
    }

    public func encode(to encoder: any Encoder) throws { try Wire.json(self).encode(to: encoder) }
}
