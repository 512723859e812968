// A validator for the subset of JSON Schema that providers' structured output
// accepts (OpenAI's strict schemas, Anthropic's, Gemini's, Ollama's and
// llama.cpp's grammars all take about the same keywords), so that the host,
// the plugin kit and the gateway check an answer the same way and say where
// it went wrong: `$.people[2].age: expected integer, got string "forty"`.

/// A JSON Schema, checked once when made (`init(_:)`), that validates values
/// and reports the first place a value does not conform.
///
/// The keywords it applies (the rest are ignored, so that a schema written
/// for a provider, with `description`, `title`, `format`, `pattern`,
/// `default`, `examples`, `propertyOrdering`, ..., is still usable; an
/// ignored keyword never fails a value):
///
/// - `type`: a name or a list of names (`"string"`, `"number"`, `"integer"`,
///   `"boolean"`, `"object"`, `"array"`, `"null"`). An integer is also a
///   number; a number with no fractional part (`3.0`) is also an integer.
/// - objects: `properties`, `required`, `additionalProperties` (`false`, or a
///   schema for the members `properties` does not name).
/// - arrays: `items` (a schema for every item, or a list of schemas, one per
///   position), `prefixItems`, `minItems`, `maxItems`.
/// - strings: `minLength`, `maxLength` (counted in Unicode code points).
/// - numbers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`
///   (the numeric form of JSON Schema 2019 and later).
/// - any value: `enum`, `const`, `anyOf`, `oneOf`, `allOf`, and `$ref` to a
///   place in the same document (`#`, `#/$defs/name`, `#/definitions/name`,
///   any JSON pointer starting `#/`), recursion included.
/// - `true` and `false` as schemas (anything; nothing).
///
/// A schema whose keywords have the wrong shape (a `type` that names no
/// type, a `required` that is not a list of strings, a `$ref` that points
/// nowhere) is refused by `init(_:)` with `JSONSchemaError`, naming the
/// keyword's place in the schema.
public struct JSONSchema: Sendable, Hashable {
    /// The schema document, as given.
    public let document: JSONValue

    /// Checks that `document` is a schema this validator can apply.
    /// - Throws: `JSONSchemaError` naming the first keyword that is wrong.
    public init(_ document: JSONValue) throws(JSONSchemaError) {
        self.document = document
        try check(document, at: "")
    }

    /// The first place `value` does not conform, or nil when it does.
    public func validate(_ value: JSONValue) -> JSONSchemaViolation? {
        var refs = 0
        return validate(value, document, path: "$", refs: &refs)
    }

    /// Throws the first place `value` does not conform.
    public func check(_ value: JSONValue) throws(JSONSchemaViolation) {
        if let v = validate(value) { throw v }
    }

    /// Whether every object of `schema` names all its properties as
    /// required and allows no others: what OpenAI's strict mode accepts, so
    /// a schema from elsewhere (the CLI's `--schema`, an Anthropic client of
    /// the gateway) can be sent strict only when a strict provider takes it.
    public static func meetsStrictMode(_ schema: JSONValue) -> Bool {
        switch schema {
        case .object(let o):
            if o["type"] == "object" || o["properties"] != nil {
                let names = Set(o["properties"]?.objectValue?.keys ?? [])
                let required = Set(o["required"]?.arrayValue?.compactMap(\.stringValue) ?? [])
                guard o["additionalProperties"] == false, names == required else { return false }
            }
            return o.allSatisfy { m in m.key == "enum" || m.key == "const" || meetsStrictMode(m.value) }
        case .array(let a): return a.allSatisfy(meetsStrictMode)
        default: return true
        }
    }

    // MARK: Checking the schema

    private static let typeNames: Set<String> = ["string", "number", "integer", "boolean", "object", "array", "null"]

    private func check(_ s: JSONValue, at place: String) throws(JSONSchemaError) {
        func fail(_ key: String, _ why: String) -> JSONSchemaError { JSONSchemaError(place: place.isEmpty ? key : "\(place).\(key)", message: why) }
        func sub(_ key: String) -> String { place.isEmpty ? key : "\(place).\(key)" }
        if case .bool = s { return }
        guard case .object(let o) = s else {
            throw JSONSchemaError(place: place.isEmpty ? "(the schema)" : place, message: "expected a schema (an object, or true or false), got \(s.typeName)")
        }
        if let t = o["type"] {
            let names: [JSONValue]
            switch t {
            case .string: names = [t]
            case .array(let a) where !a.isEmpty: names = a
            default: throw fail("type", "expected a type name or a non-empty list of them, got \(t.typeName)")
            }
            for n in names {
                guard let name = n.stringValue, Self.typeNames.contains(name) else {
                    throw fail("type", "\(Self.describe(n, typed: false)) is not a type (expected one of string, number, integer, boolean, object, array, null)")
                }
            }
        }
        if let p = o["properties"] {
            guard case .object(let props) = p else { throw fail("properties", "expected an object of schemas, got \(p.typeName)") }
            for (k, v) in props { try check(v, at: sub("properties.\(k)")) }
        }
        if let r = o["required"] {
            guard case .array(let a) = r, a.allSatisfy({ $0.stringValue != nil }) else {
                throw fail("required", "expected a list of property names, got \(Self.describe(r, typed: false))")
            }
        }
        if let a = o["additionalProperties"] { try check(a, at: sub("additionalProperties")) }
        if let i = o["items"] {
            if case .array(let list) = i {
                for (n, v) in list.enumerated() { try check(v, at: sub("items[\(n)]")) }
            } else {
                try check(i, at: sub("items"))
            }
        }
        for key in ["prefixItems", "anyOf", "oneOf", "allOf"] {
            guard let v = o[key] else { continue }
            guard case .array(let list) = v, !list.isEmpty else { throw fail(key, "expected a non-empty list of schemas, got \(Self.describe(v, typed: false))") }
            for (n, x) in list.enumerated() { try check(x, at: sub("\(key)[\(n)]")) }
        }
        for key in ["minItems", "maxItems", "minLength", "maxLength"] {
            guard let v = o[key] else { continue }
            guard let n = v.intValue, n >= 0 else { throw fail(key, "expected a non-negative integer, got \(Self.describe(v, typed: false))") }
        }
        for key in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
            guard let v = o[key] else { continue }
            guard v.doubleValue != nil else { throw fail(key, "expected a number, got \(Self.describe(v, typed: false))") }
        }
        if let e = o["enum"] {
            guard case .array(let a) = e, !a.isEmpty else { throw fail("enum", "expected a non-empty list of values, got \(Self.describe(e, typed: false))") }
        }
        for key in ["$defs", "definitions"] {
            guard let d = o[key] else { continue }
            guard case .object(let defs) = d else { throw fail(key, "expected an object of schemas, got \(d.typeName)") }
            for (k, v) in defs { try check(v, at: sub("\(key).\(k)")) }
        }
        if let r = o["$ref"] {
            guard let ref = r.stringValue else { throw fail("$ref", "expected a string, got \(r.typeName)") }
            guard resolve(ref) != nil else {
                throw fail("$ref", "\"\(ref)\" points nowhere in this schema (only references inside it are followed: \"#\", \"#/$defs/NAME\", \"#/definitions/NAME\")")
            }
        }
    }

    /// The schema a `$ref` names: a JSON pointer into this document.
    private func resolve(_ ref: String) -> JSONValue? {
        guard ref == "#" || ref.hasPrefix("#/") else { return nil }
        var at = document
        for token in ref.dropFirst(2).split(separator: "/", omittingEmptySubsequences: false) where ref != "#" {
            let key = String(token).replacing("~1", with: "/").replacing("~0", with: "~")
            switch at {
            case .object(let o): guard let next = o[key] else { return nil }; at = next
            case .array(let a): guard let i = Int(key), a.indices.contains(i) else { return nil }; at = a[i]
            default: return nil
            }
        }
        return at
    }

    // MARK: Validating

    /// `refs`: `$ref`s followed at this place of the value without moving
    /// into it; a schema that refers to itself forever is reported, not
    /// followed forever.
    private func validate(_ v: JSONValue, _ s: JSONValue, path: String, refs: inout Int) -> JSONSchemaViolation? {
        func fail(_ why: String) -> JSONSchemaViolation { JSONSchemaViolation(path: path, message: why) }
        switch s {
        case .bool(true): return nil
        case .bool(false): return fail("no value is allowed here (the schema is false), got \(Self.describe(v))")
        case .object(let o):
            if let r = o["$ref"]?.stringValue {
                refs += 1
                guard refs <= 64, let target = resolve(r) else {
                    return fail("the schema's $ref \"\(r)\" \(refs > 64 ? "refers to itself without end" : "points nowhere")")
                }
                if let e = validate(v, target, path: path, refs: &refs) { return e }
            }
            if let t = o["type"] {
                let names = t.arrayValue?.compactMap(\.stringValue) ?? t.stringValue.map { [$0] } ?? []
                if !names.contains(where: { Self.value(v, is: $0) }) {
                    return fail("expected \(names.joined(separator: " or ")), got \(Self.describe(v))")
                }
            }
            if let c = o["const"], !Self.equal(c, v) {
                return fail("expected \(Self.describe(c, typed: false)), got \(Self.describe(v))")
            }
            if let e = o["enum"]?.arrayValue, !e.contains(where: { Self.equal($0, v) }) {
                let shown = e.prefix(8).map { Self.describe($0, typed: false) }.joined(separator: ", ") + (e.count > 8 ? ", ..." : "")
                return fail("expected one of \(shown), got \(Self.describe(v))")
            }
            if let e = combinators(v, o, path: path, refs: &refs) { return e }
            switch v {
            case .object(let members): return object(members, o, path: path)
            case .array(let items): return array(items, o, path: path)
            case .string(let str):
                let n = str.unicodeScalars.count
                if let min = o["minLength"]?.intValue, n < min { return fail("expected at least \(min) characters, got \(n)") }
                if let max = o["maxLength"]?.intValue, n > max { return fail("expected at most \(max) characters, got \(n)") }
            case .integer, .number:
                let x = v.doubleValue!
                if let m = o["minimum"]?.doubleValue, x < m { return fail("expected at least \(Self.describe(o["minimum"]!, typed: false)), got \(Self.describe(v, typed: false))") }
                if let m = o["maximum"]?.doubleValue, x > m { return fail("expected at most \(Self.describe(o["maximum"]!, typed: false)), got \(Self.describe(v, typed: false))") }
                if let m = o["exclusiveMinimum"]?.doubleValue, x <= m { return fail("expected more than \(Self.describe(o["exclusiveMinimum"]!, typed: false)), got \(Self.describe(v, typed: false))") }
                if let m = o["exclusiveMaximum"]?.doubleValue, x >= m { return fail("expected less than \(Self.describe(o["exclusiveMaximum"]!, typed: false)), got \(Self.describe(v, typed: false))") }
            default: break
            }
            return nil
        default:
            return nil  // init(_:) refuses anything else
        }
    }

    private func combinators(_ v: JSONValue, _ o: JSONObject, path: String, refs: inout Int) -> JSONSchemaViolation? {
        if let all = o["allOf"]?.arrayValue {
            for s in all {
                var r = refs
                if let e = validate(v, s, path: path, refs: &r) { return e }
            }
        }
        for key in ["anyOf", "oneOf"] {
            guard let alternatives = o[key]?.arrayValue else { continue }
            var failures: [JSONSchemaViolation] = []
            var matched: [Int] = []
            for (i, s) in alternatives.enumerated() {
                var r = refs
                if let e = validate(v, s, path: path, refs: &r) { failures.append(e) } else { matched.append(i + 1) }
            }
            if matched.isEmpty {
                // Each alternative's own reason: the one that got furthest
                // into the value first (it is most likely the one meant).
                let why = failures.enumerated().sorted { $0.element.path.count > $1.element.path.count }.prefix(3).map { i, e in
                    "alternative \(i + 1): " + (e.path == path ? e.message : e.description)
                }
                return JSONSchemaViolation(path: path, message: "matches none of the \(alternatives.count) \(key) alternatives (\(why.joined(separator: "; ")))")
            }
            if key == "oneOf", matched.count > 1 {
                return JSONSchemaViolation(path: path, message: "matches \(matched.count) oneOf alternatives (\(matched.map(String.init).joined(separator: ", "))), expected exactly one")
            }
        }
        return nil
    }

    private func object(_ members: JSONObject, _ o: JSONObject, path: String) -> JSONSchemaViolation? {
        let props = o["properties"]?.objectValue ?? [:]
        for name in o["required"]?.arrayValue?.compactMap(\.stringValue) ?? [] where members[name] == nil {
            return JSONSchemaViolation(path: Self.member(path, name), message: "required property is missing")
        }
        for (k, value) in members {
            var refs = 0
            if let s = props[k] {
                if let e = validate(value, s, path: Self.member(path, k), refs: &refs) { return e }
            } else if let extra = o["additionalProperties"] {
                if extra == .bool(false) {
                    let allowed = props.keys.isEmpty ? "none" : props.keys.joined(separator: ", ")
                    return JSONSchemaViolation(path: Self.member(path, k), message: "not allowed (additionalProperties is false; the properties are \(allowed))")
                }
                if let e = validate(value, extra, path: Self.member(path, k), refs: &refs) { return e }
            }
        }
        return nil
    }

    private func array(_ items: [JSONValue], _ o: JSONObject, path: String) -> JSONSchemaViolation? {
        if let min = o["minItems"]?.intValue, items.count < min {
            return JSONSchemaViolation(path: path, message: "expected at least \(min) item\(min == 1 ? "" : "s"), got \(items.count)")
        }
        if let max = o["maxItems"]?.intValue, items.count > max {
            return JSONSchemaViolation(path: path, message: "expected at most \(max) item\(max == 1 ? "" : "s"), got \(items.count)")
        }
        // Positional schemas (prefixItems, or items as a list), then the
        // one for every other item (items as a schema).
        let positional = o["prefixItems"]?.arrayValue ?? o["items"]?.arrayValue ?? []
        let rest: JSONValue? = o["items"].flatMap { $0.arrayValue == nil ? $0 : nil }
        for (i, item) in items.enumerated() {
            guard let s = i < positional.count ? positional[i] : rest else { continue }
            var refs = 0
            if let e = validate(item, s, path: "\(path)[\(i)]", refs: &refs) { return e }
        }
        return nil
    }

    // MARK: Helpers

    private static func value(_ v: JSONValue, is type: String) -> Bool {
        switch (type, v) {
        case ("null", .null), ("boolean", .bool), ("string", .string), ("array", .array), ("object", .object): return true
        case ("number", .integer), ("number", .number), ("integer", .integer): return true
        case ("integer", .number(let d)): return d.rounded() == d && d.isFinite
        default: return false
        }
    }

    /// JSON equality: 1 and 1.0 are the same number; objects compare by member, in any order.
    private static func equal(_ a: JSONValue, _ b: JSONValue) -> Bool {
        switch (a, b) {
        case (.integer, .number), (.number, .integer): return a.doubleValue == b.doubleValue
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.object(let x), .object(let y)):
            return x.count == y.count && x.allSatisfy { m in y[m.key].map { equal(m.value, $0) } ?? false }
        default: return a == b
        }
    }

    /// `.name` for a key that reads as an identifier, `["odd key"]` otherwise.
    static func member(_ path: String, _ key: String) -> String {
        let plain = !key.isEmpty && key.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
            && !("0"..."9").contains(key.unicodeScalars.first!)
        return plain ? "\(path).\(key)" : "\(path)[\(JSONValue.string(key).jsonText)]"
    }

    /// `string "forty"`, `integer 3`, `object`, for messages (long text cut).
    static func describe(_ v: JSONValue, typed: Bool = true) -> String {
        let literal: String?
        switch v {
        case .object, .array: return typed ? v.typeName : v.jsonText.count <= 40 ? v.jsonText : v.typeName
        case .null: return "null"
        case .string(let s):
            literal = JSONValue.string(s.unicodeScalars.count <= 40 ? s : String(String.UnicodeScalarView(s.unicodeScalars.prefix(37))) + "...").jsonText
        default: literal = v.jsonText
        }
        return typed ? "\(v.typeName) \(literal!)" : literal!
    }
}

/// Where a value does not conform to a schema: a path into the value
/// (`$` the whole value, `.name` a member, `[2]` an item) and why.
public struct JSONSchemaViolation: Error, Sendable, Hashable, CustomStringConvertible {
    /// `$.people[2].age`.
    public var path: String
    /// `expected integer, got string "forty"`.
    public var message: String
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
    /// `$.people[2].age: expected integer, got string "forty"`.
    public var description: String { "\(path): \(message)" }
}

/// A schema this validator cannot apply: where in the schema (`properties.age.type`) and why.
public struct JSONSchemaError: Error, Sendable, Hashable, CustomStringConvertible {
    public var place: String
    public var message: String
    public init(place: String, message: String) {
        self.place = place
        self.message = message
    }
    /// `properties.age.type: "int" is not a type (...)`.
    public var description: String { "\(place): \(message)" }
}

extension ResponseFormat {
    /// Checks an answer's text against this format: for `.json`, that it is
    /// a JSON object (of any shape); for `.jsonSchema`, that it is JSON the schema
    /// accepts. `.text` accepts anything.
    ///
    /// An answer that is one fenced code block (```` ```json ... ``` ```` or
    /// a bare ```` ``` ````, with only white space around it: some models
    /// add one even when told not to) is checked without the fence, and the
    /// JSON inside is what this returns. Anything else around the JSON (a
    /// sentence before it, a second block) fails: the caller asked for JSON,
    /// not for a search through prose.
    ///
    /// - Returns: the answer to deliver: `content` itself, or the JSON inside
    ///   its fence.
    /// - Throws: `JSONSchemaViolation`: `$: not JSON (...)` or the first
    ///   place the value does not conform; a schema this validator cannot
    ///   apply (`JSONSchema.init`) is reported at `$` too (the host refuses
    ///   such a request before sending it: `checkSchema()`).
    public func conforming(_ content: String) throws(JSONSchemaViolation) -> String {
        if case .text = self { return content }
        let text = Self.unfenced(content) ?? content
        let value: JSONValue
        do { value = try JSONValue.parse(text) } catch {
            let shown = JSONSchema.describe(.string(content.trimmingWhitespace()), typed: false)
            throw JSONSchemaViolation(path: "$", message: content.allSatisfy(\.isWhitespace) ? "not JSON (the answer is empty)" : "not JSON (\(error)): \(shown)")
        }
        if case .json = self, value.objectValue == nil {
            throw JSONSchemaViolation(path: "$", message: "expected a JSON object, got \(JSONSchema.describe(value))")
        }
        if case .jsonSchema(_, let schema, _) = self {
            let s: JSONSchema
            do { s = try JSONSchema(schema) } catch { throw JSONSchemaViolation(path: "$", message: "the schema cannot be applied: \(error)") }
            try s.check(value)
        }
        return text
    }

    /// Checks that a `.jsonSchema` format's schema is one the validator can
    /// apply (nil for other formats).
    public func checkSchema() throws(JSONSchemaError) {
        if case .jsonSchema(_, let schema, _) = self { _ = try JSONSchema(schema) }
    }

    /// The body of an answer that is one fenced code block, or nil.
    static func unfenced(_ content: String) -> String? {
        let t = content.trimmingWhitespace()
        guard t.hasPrefix("```"), t.hasSuffix("```"), t.count >= 6 else { return nil }
        var body = t.dropFirst(3).dropLast(3)
        guard let newline = body.firstIndex(of: "\n") else { return nil }
        let info = body[..<newline].trimmingWhitespace()
        guard info.isEmpty || info.lowercased() == "json" else { return nil }
        body = body[body.index(after: newline)...]
        guard !body.contains("```") else { return nil }
        return String(body).trimmingWhitespace()
    }
}

extension StringProtocol {
    fileprivate func trimmingWhitespace() -> String {
        guard let first = firstIndex(where: { !$0.isWhitespace }), let last = lastIndex(where: { !$0.isWhitespace }) else { return "" }
        return String(self[first...last])
    }
}
