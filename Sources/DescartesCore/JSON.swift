// A small JSON library with no Foundation dependency.
//
// Why our own: the host and every plugin start in a few milliseconds only if
// they avoid Foundation (ICU alone costs 15-20 ms to load), and the streaming
// hot path needs a parser that does not allocate per token. `JSONValue` is the
// document model used everywhere off the hot path; `JSONReader` is the
// byte-level scanner underneath it that plugins also use directly to pull a
// few fields out of a stream chunk without building a document.

/// A JSON value. Objects keep their members in document order.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits in `Int`.
    case integer(Int)
    /// Any other number.
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)
}

/// A JSON object: members in document order, looked up by key.
///
/// Objects in this domain are small (a handful of keys), so a linear scan
/// beats hashing and keeps the order that tool arguments and schemas need.
public struct JSONObject: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral {
    public var members: [(key: String, value: JSONValue)]

    public init() { members = [] }
    public init(_ members: [(key: String, value: JSONValue)]) { self.members = members }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        members = elements.map { (key: $0.0, value: $0.1) }
    }

    public subscript(key: String) -> JSONValue? {
        get {
            for m in members where m.key == key { return m.value }
            return nil
        }
        set {
            if let i = members.firstIndex(where: { $0.key == key }) {
                if let newValue { members[i].value = newValue } else { members.remove(at: i) }
            } else if let newValue {
                members.append((key: key, value: newValue))
            }
        }
    }

    public var keys: [String] { members.map(\.key) }
    public var count: Int { members.count }
    public var isEmpty: Bool { members.isEmpty }
    public func makeIterator() -> IndexingIterator<[(key: String, value: JSONValue)]> { members.makeIterator() }

    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        guard a.members.count == b.members.count else { return false }
        for (x, y) in zip(a.members, b.members) where x.key != y.key || x.value != y.value { return false }
        return true
    }
    public func hash(into h: inout Hasher) {
        h.combine(members.count)
        for m in members { h.combine(m.key); h.combine(m.value) }
    }
}

// MARK: - Accessors

extension JSONValue {
    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }
    public subscript(index: Int) -> JSONValue? {
        if case .array(let a) = self, index >= 0, index < a.count { return a[index] }
        return nil
    }
    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var intValue: Int? {
        switch self {
        case .integer(let i): return i
        case .number(let d) where d.rounded() == d && abs(d) < 9.0e15: return Int(d)
        default: return nil
        }
    }
    public var doubleValue: Double? {
        switch self {
        case .integer(let i): return Double(i)
        case .number(let d): return d
        default: return nil
        }
    }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var objectValue: JSONObject? { if case .object(let o) = self { return o }; return nil }
    public var isNull: Bool { if case .null = self { return true }; return false }

    /// The JSON type's name, for error messages ("string", "integer", ...).
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .integer: return "integer"
        case .number: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByFloatLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral,
    ExpressibleByStringInterpolation
{
    public init(stringLiteral value: String) { self = .string(value) }
    /// `"\(base)/v1"` as a config value.
    public init(stringInterpolation: DefaultStringInterpolation) { self = .string(String(stringInterpolation: stringInterpolation)) }
    public init(integerLiteral value: Int) { self = .integer(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .number(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self = .object(JSONObject(elements.map { (key: $0.0, value: $0.1) }))
    }
    public init(nilLiteral: ()) { self = .null }
}

// MARK: - Errors

/// A JSON text that could not be parsed; `offset` is the byte offset of the fault.
public struct JSONParseError: Error, Sendable, CustomStringConvertible, Equatable {
    public var message: String
    public var offset: Int
    public init(_ message: String, offset: Int) {
        self.message = message
        self.offset = offset
    }
    public var description: String { "\(message) at byte \(offset)" }
}

// MARK: - Parsing

extension JSONValue {
    /// Parses one JSON text (surrounding whitespace allowed, nothing else).
    public static func parse(_ text: String) throws(JSONParseError) -> JSONValue {
        var copy = text
        return try copy.withUTF8 { buf in Result { () throws(JSONParseError) in try parse(UnsafeRawBufferPointer(buf)) } }.get()
    }

    /// Parses one JSON text from UTF-8 bytes.
    public static func parse(bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        try bytes.withUnsafeBytes { buf in Result { () throws(JSONParseError) in try parse(buf) } }.get()
    }

    /// Parses one JSON text from a borrowed buffer.
    public static func parse(_ buffer: UnsafeRawBufferPointer) throws(JSONParseError) -> JSONValue {
        var r = JSONReader(buffer)
        let v = try r.readValue()
        r.skipWhitespace()
        if !r.atEnd { throw JSONParseError("unexpected data after the JSON value", offset: r.position) }
        return v
    }
}

/// A forward-only scanner over a UTF-8 JSON text in a borrowed buffer.
///
/// It allocates nothing unless asked for a `String` or a `JSONValue`, so a
/// plugin can walk a stream chunk, skip what it does not need, and copy out
/// only the text delta. Nesting is limited to `maxDepth` levels so hostile
/// input cannot exhaust the stack.
public struct JSONReader {
    public let buffer: UnsafeRawBufferPointer
    public private(set) var position: Int = 0
    public static let maxDepth = 256
    private var depth = 0

    public init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

    @inline(__always) public var atEnd: Bool { position >= buffer.count }

    @inline(__always) func peekByte() -> UInt8? {
        position < buffer.count ? buffer[position] : nil
    }

    @inline(__always) public mutating func skipWhitespace() {
        while position < buffer.count {
            let c = buffer[position]
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { position += 1 } else { break }
        }
    }

    /// The kind of the next value, after skipping whitespace; nil at the end.
    public mutating func peekKind() -> Kind? {
        skipWhitespace()
        guard let c = peekByte() else { return nil }
        switch c {
        case UInt8(ascii: "{"): return .object
        case UInt8(ascii: "["): return .array
        case UInt8(ascii: "\""): return .string
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return .bool
        case UInt8(ascii: "n"): return .null
        default: return .number
        }
    }

    public enum Kind { case object, array, string, number, bool, null }

    func fail(_ message: String) -> JSONParseError { JSONParseError(message, offset: position) }

    @inline(__always) mutating func expect(_ byte: UInt8, _ what: StaticString) throws(JSONParseError) {
        skipWhitespace()
        guard position < buffer.count, buffer[position] == byte else {
            throw fail(atEnd ? "unexpected end of input, expected \(what)" : "expected \(what)")
        }
        position += 1
    }

    // MARK: Structure walking
    //
    // Iterator style, so the hot path needs no closures:
    //
    //     try r.beginObject()
    //     while let key = try r.nextKey() {
    //         if key == "content" { text = try r.readString() } else { try r.skipValue() }
    //     }
    //
    // `nextKey` and `nextElement` check the commas and consume the closing
    // bracket. Every value must be consumed (read or skipped) before asking
    // for the next key or element.

    /// One bit per open container: set once it has an item (a comma is due
    /// before the next one). Inline storage: no allocation per document.
    private var hasItem: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    private func itemBit(_ d: Int) -> Bool {
        let word: UInt64
        switch d >> 6 {
        case 0: word = hasItem.0
        case 1: word = hasItem.1
        case 2: word = hasItem.2
        default: word = hasItem.3
        }
        return word & (1 << UInt64(d & 63)) != 0
    }

    private mutating func setItemBit(_ d: Int, _ on: Bool) {
        let mask: UInt64 = 1 << UInt64(d & 63)
        switch d >> 6 {
        case 0: hasItem.0 = on ? hasItem.0 | mask : hasItem.0 & ~mask
        case 1: hasItem.1 = on ? hasItem.1 | mask : hasItem.1 & ~mask
        case 2: hasItem.2 = on ? hasItem.2 | mask : hasItem.2 & ~mask
        default: hasItem.3 = on ? hasItem.3 | mask : hasItem.3 & ~mask
        }
    }

    private mutating func open(_ byte: UInt8, _ what: StaticString) throws(JSONParseError) {
        try expect(byte, what)
        if depth >= Self.maxDepth { throw fail("nesting deeper than \(Self.maxDepth) levels") }
        depth += 1
        setItemBit(depth, false)
    }

    /// Consumes the `{` of an object.
    public mutating func beginObject() throws(JSONParseError) { try open(UInt8(ascii: "{"), "'{'") }

    /// Consumes the `[` of an array.
    public mutating func beginArray() throws(JSONParseError) { try open(UInt8(ascii: "["), "'['") }

    /// The next member's key, positioned at its value; nil (with the `}`
    /// consumed) after the last member.
    public mutating func nextKey() throws(JSONParseError) -> JSONKey? {
        skipWhitespace()
        guard let c = peekByte() else { throw fail("unexpected end of input in object") }
        if c == UInt8(ascii: "}") {
            position += 1
            depth -= 1
            return nil
        }
        if itemBit(depth) {
            guard c == UInt8(ascii: ",") else { throw fail("expected ',' or '}' in object") }
            position += 1
            skipWhitespace()
        }
        setItemBit(depth, true)
        let key = try readKey()
        try expect(UInt8(ascii: ":"), "':'")
        return key
    }

    /// True when another element follows (positioned at it); false (with
    /// the `]` consumed) after the last one.
    public mutating func nextElement() throws(JSONParseError) -> Bool {
        skipWhitespace()
        guard let c = peekByte() else { throw fail("unexpected end of input in array") }
        if c == UInt8(ascii: "]") {
            position += 1
            depth -= 1
            return false
        }
        if itemBit(depth) {
            guard c == UInt8(ascii: ",") else { throw fail("expected ',' or ']' in array") }
            position += 1
            skipWhitespace()
        }
        setItemBit(depth, true)
        return true
    }

    /// Walks the members of an object, calling `body` with each key
    /// positioned at the member's value. A value `body` does not consume is
    /// skipped.
    public mutating func forEachMember(_ body: (inout JSONReader, JSONKey) throws -> Void) throws {
        try beginObject()
        while let key = try nextKey() {
            let before = position
            try body(&self, key)
            if position == before { try skipValue() }
        }
    }

    /// Walks the elements of an array; an element `body` does not consume is
    /// skipped.
    public mutating func forEachElement(_ body: (inout JSONReader, Int) throws -> Void) throws {
        try beginArray()
        var i = 0
        while try nextElement() {
            let before = position
            try body(&self, i)
            if position == before { try skipValue() }
            i += 1
        }
    }

    mutating func readKey() throws(JSONParseError) -> JSONKey {
        guard peekByte() == UInt8(ascii: "\"") else { throw fail(atEnd ? "unexpected end of input, expected a key" : "expected a string key") }
        let (start, end, escaped) = try scanString()
        return JSONKey(buffer: buffer, start: start, end: end, escaped: escaped)
    }

    /// Scans a string token starting at the opening quote; returns the byte
    /// range of its contents and whether it contains escapes.
    @inline(__always)
    mutating func scanString() throws(JSONParseError) -> (Int, Int, Bool) {
        position += 1  // opening quote
        let start = position
        var escaped = false
        let count = buffer.count
        while position < count {
            let c = buffer[position]
            if c == UInt8(ascii: "\"") {
                let end = position
                position += 1
                return (start, end, escaped)
            }
            if c == UInt8(ascii: "\\") {
                escaped = true
                position += 2
                continue
            }
            if c < 0x20 { throw fail("control character in string") }
            position += 1
        }
        position = count
        throw fail("unterminated string")
    }

    /// Skips one value of any kind, validating its syntax.
    public mutating func skipValue() throws(JSONParseError) {
        guard let kind = peekKind() else { throw fail("unexpected end of input, expected a value") }
        switch kind {
        case .object:
            try beginObject()
            while try nextKey() != nil { try skipValue() }
        case .array:
            try beginArray()
            while try nextElement() { try skipValue() }
        case .string: _ = try scanString()
        case .number: _ = try scanNumber()
        case .bool, .null: _ = try readLiteral()
        }
    }

    // MARK: Scalars

    /// Reads a string value, decoding escapes.
    public mutating func readString() throws(JSONParseError) -> String {
        skipWhitespace()
        guard peekByte() == UInt8(ascii: "\"") else { throw fail("expected a string") }
        let (s, e, esc) = try scanString()
        return try decodeString(start: s, end: e, escaped: esc)
    }

    /// Reads a string value and hands its decoded UTF-8 bytes to `body`
    /// without creating a `String` when it has no escapes.
    public mutating func withStringBytes<R>(
        _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        skipWhitespace()
        guard peekByte() == UInt8(ascii: "\"") else { throw fail("expected a string") }
        let (s, e, esc) = try scanString()
        if !esc { return try body(UnsafeRawBufferPointer(rebasing: buffer[s..<e])) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(e - s)
        try JSONReader.unescape(buffer, s, e, into: &bytes, offset: s)
        return try bytes.withUnsafeBytes { b in try body(b) }
    }

    /// Reads a string, or returns nil for `null`.
    public mutating func readOptionalString() throws(JSONParseError) -> String? {
        if peekKind() == .null {
            _ = try readLiteral()
            return nil
        }
        return try readString()
    }

    func decodeString(start: Int, end: Int, escaped: Bool) throws(JSONParseError) -> String {
        if !escaped {
            return String(decoding: UnsafeRawBufferPointer(rebasing: buffer[start..<end]), as: UTF8.self)
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(end - start)
        try JSONReader.unescape(buffer, start, end, into: &bytes, offset: start)
        return String(decoding: bytes, as: UTF8.self)
    }

    static func hexValue(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(c - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(c - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    static func unescape(
        _ buffer: UnsafeRawBufferPointer, _ start: Int, _ end: Int, into out: inout [UInt8], offset: Int
    ) throws(JSONParseError) {
        var i = start
        func hex4(_ at: Int) throws(JSONParseError) -> UInt32 {
            guard at + 4 <= end else { throw JSONParseError("truncated \\u escape", offset: at) }
            var v: UInt32 = 0
            for k in 0..<4 {
                guard let h = hexValue(buffer[at + k]) else { throw JSONParseError("invalid \\u escape", offset: at) }
                v = v << 4 | h
            }
            return v
        }
        while i < end {
            let c = buffer[i]
            if c != UInt8(ascii: "\\") {
                out.append(c)
                i += 1
                continue
            }
            guard i + 1 < end else { throw JSONParseError("truncated escape", offset: i) }
            let e = buffer[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4(i)
                i += 4
                if scalar >= 0xD800 && scalar < 0xDC00 {
                    // High surrogate: combine with a following low surrogate if present.
                    if i + 6 <= end, buffer[i] == UInt8(ascii: "\\"), buffer[i + 1] == UInt8(ascii: "u") {
                        let low = try hex4(i + 2)
                        if low >= 0xDC00 && low < 0xE000 {
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                            i += 6
                        } else {
                            scalar = 0xFFFD
                        }
                    } else {
                        scalar = 0xFFFD
                    }
                } else if scalar >= 0xDC00 && scalar < 0xE000 {
                    scalar = 0xFFFD
                }
                appendUTF8(scalar, to: &out)
            default:
                throw JSONParseError("invalid escape '\\\(Character(Unicode.Scalar(e)))'", offset: i - 2)
            }
        }
    }

    static func appendUTF8(_ v: UInt32, to out: inout [UInt8]) {
        if v < 0x80 {
            out.append(UInt8(v))
        } else if v < 0x800 {
            out.append(UInt8(0xC0 | (v >> 6)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        } else if v < 0x10000 {
            out.append(UInt8(0xE0 | (v >> 12)))
            out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        } else {
            out.append(UInt8(0xF0 | (v >> 18)))
            out.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        }
    }

    mutating func readLiteral() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        func match(_ lit: StaticString) -> Bool {
            let n = lit.utf8CodeUnitCount
            guard position + n <= buffer.count else { return false }
            let p = lit.utf8Start
            for k in 0..<n where buffer[position + k] != p[k] { return false }
            return true
        }
        if match("true") { position += 4; return .bool(true) }
        if match("false") { position += 5; return .bool(false) }
        if match("null") { position += 4; return .null }
        throw fail("invalid literal")
    }

    /// Reads `true` or `false`.
    public mutating func readBool() throws(JSONParseError) -> Bool {
        guard case .bool(let b) = try readLiteral() else { throw fail("expected a boolean") }
        return b
    }

    /// Scans a number token; returns its range and whether it is an integer.
    mutating func scanNumber() throws(JSONParseError) -> (Int, Int, Bool) {
        let start = position
        var isInt = true
        if peekByte() == UInt8(ascii: "-") { position += 1 }
        var digits = 0
        while let c = peekByte(), c >= 0x30 && c <= 0x39 { position += 1; digits += 1 }
        if digits == 0 { throw fail(atEnd ? "unexpected end of input, expected a value" : "unexpected character") }
        if peekByte() == UInt8(ascii: ".") {
            isInt = false
            position += 1
            var f = 0
            while let c = peekByte(), c >= 0x30 && c <= 0x39 { position += 1; f += 1 }
            if f == 0 { throw fail("invalid number") }
        }
        if let c = peekByte(), c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
            isInt = false
            position += 1
            if let s = peekByte(), s == UInt8(ascii: "+") || s == UInt8(ascii: "-") { position += 1 }
            var x = 0
            while let c = peekByte(), c >= 0x30 && c <= 0x39 { position += 1; x += 1 }
            if x == 0 { throw fail("invalid number") }
        }
        return (start, position, isInt)
    }

    /// Reads a number as `.integer` when exact, otherwise `.number`.
    public mutating func readNumber() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        let (s, e, isInt) = try scanNumber()
        if isInt && e - s <= 18 {
            var v = 0
            var i = s
            let neg = buffer[i] == UInt8(ascii: "-")
            if neg { i += 1 }
            while i < e { v = v &* 10 &+ Int(buffer[i] &- 0x30); i += 1 }
            return .integer(neg ? -v : v)
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: buffer[s..<e]), as: UTF8.self)
        if isInt, let v = Int(text) { return .integer(v) }
        guard let d = Double(text) else { throw JSONParseError("invalid number", offset: s) }
        // RFC 8259 lets a parser limit the range: a number beyond a Double's
        // is an error, not an infinity (which JSON cannot write back).
        guard d.isFinite else { throw JSONParseError("number out of range", offset: s) }
        return .number(d)
    }

    /// Reads an integer (a number without fraction), or nil for `null`.
    public mutating func readOptionalInt() throws(JSONParseError) -> Int? {
        switch peekKind() {
        case .null:
            _ = try readLiteral()
            return nil
        case .number:
            return try readNumber().intValue
        default:
            try skipValue()
            return nil
        }
    }

    /// Reads any value into a document.
    public mutating func readValue() throws(JSONParseError) -> JSONValue {
        guard let kind = peekKind() else { throw fail("unexpected end of input, expected a value") }
        switch kind {
        case .string: return .string(try readString())
        case .number: return try readNumber()
        case .bool, .null: return try readLiteral()
        case .array:
            var a: [JSONValue] = []
            try beginArray()
            while try nextElement() { a.append(try readValue()) }
            return .array(a)
        case .object:
            var o: [(key: String, value: JSONValue)] = []
            try beginObject()
            while let k = try nextKey() {
                let key = try k.decoded()
                o.append((key: key, value: try readValue()))
            }
            return .object(JSONObject(o))
        }
    }

    /// The raw bytes of the next value (for passing sub-documents through
    /// without re-encoding them).
    public mutating func readRawValue() throws(JSONParseError) -> UnsafeRawBufferPointer {
        skipWhitespace()
        let s = position
        try skipValue()
        return UnsafeRawBufferPointer(rebasing: buffer[s..<position])
    }
}

/// An object key as scanned: compared against ASCII literals without
/// allocating, decoded to a `String` on demand.
public struct JSONKey {
    @usableFromInline let buffer: UnsafeRawBufferPointer
    @usableFromInline let start: Int
    @usableFromInline let end: Int
    @usableFromInline let escaped: Bool

    /// True when the key equals `literal` (an ASCII string without escapes).
    ///
    /// Inlinable, so a parser in another module (every plugin) compares
    /// against a literal whose length is a constant: a key of another
    /// length is told apart in a compare or two. Called, it cost about 47
    /// instructions a comparison, a hundred comparisons per OpenAI stream
    /// chunk: 16% of the plugin's work per chunk (bench/run.py --profile
    /// stream-openai).
    @inlinable @inline(__always)
    public func equals(_ literal: StaticString) -> Bool {
        let n = literal.utf8CodeUnitCount
        if escaped { return escapedEquals(literal) }
        guard end - start == n else { return false }
        let p = literal.utf8Start
        for k in 0..<n where buffer[start &+ k] != p[k] { return false }
        return true
    }

    /// The comparison of a key written with escapes: decoded first.
    @usableFromInline func escapedEquals(_ literal: StaticString) -> Bool {
        (try? decoded()) == literal.description
    }

    @inlinable @inline(__always)
    public static func == (key: JSONKey, literal: StaticString) -> Bool { key.equals(literal) }

    public func decoded() throws(JSONParseError) -> String {
        if !escaped { return String(decoding: UnsafeRawBufferPointer(rebasing: buffer[start..<end]), as: UTF8.self) }
        var bytes: [UInt8] = []
        try JSONReader.unescape(buffer, start, end, into: &bytes, offset: start)
        return String(decoding: bytes, as: UTF8.self)
    }
}

// MARK: - Writing

/// What an encoder writes to: JSON text (`JSONWriter`) or a document
/// (`JSONTreeWriter`). An encoder written once against it produces both, so
/// no type needs a second encoder, and nothing is encoded to text only to
/// be parsed back.
public protocol JSONOutput {
    mutating func beginObject()
    mutating func endObject()
    mutating func beginArray()
    mutating func endArray()
    /// A key inside an object; the next write is its value.
    mutating func key(_ k: String)
    mutating func value(_ s: String)
    mutating func value(_ i: Int)
    mutating func value(_ d: Double)
    mutating func value(_ b: Bool)
    mutating func null()
    mutating func value(_ v: JSONValue)
}

extension JSONOutput {
    @inlinable public mutating func beginObject(key k: String) { key(k); beginObject() }
    @inlinable public mutating func beginArray(key k: String) { key(k); beginArray() }

    /// `"key": value` in one call; nil values are omitted.
    @inlinable public mutating func field(_ k: String, _ v: String?) { if let v { key(k); value(v) } }
    @inlinable public mutating func field(_ k: String, _ v: Int?) { if let v { key(k); value(v) } }
    @inlinable public mutating func field(_ k: String, _ v: Double?) { if let v { key(k); value(v) } }
    @inlinable public mutating func field(_ k: String, _ v: Bool?) { if let v { key(k); value(v) } }
    @inlinable public mutating func field(_ k: String, _ v: JSONValue?) { if let v { key(k); value(v) } }
}

/// Appends JSON text to a byte buffer. Used to build request bodies and ABI
/// payloads without an intermediate document.
public struct JSONWriter: JSONOutput {
    public var bytes: [UInt8]
    /// One entry per open container: true while nothing has been written in it.
    private var first: [Bool] = []
    /// True right after `key(_:)`: the next write is that key's value.
    private var afterKey = false

    public init(capacity: Int = 256) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public var string: String { String(decoding: bytes, as: UTF8.self) }

    /// Writes the comma that separates this item from the previous one.
    @inline(__always) mutating func prefix() {
        if afterKey {
            afterKey = false
            return
        }
        if let f = first.last {
            if f { first[first.count - 1] = false } else { bytes.append(UInt8(ascii: ",")) }
        }
    }

    public mutating func beginObject() { prefix(); bytes.append(UInt8(ascii: "{")); first.append(true) }
    public mutating func endObject() { first.removeLast(); bytes.append(UInt8(ascii: "}")) }
    public mutating func beginArray() { prefix(); bytes.append(UInt8(ascii: "[")); first.append(true) }
    public mutating func endArray() { first.removeLast(); bytes.append(UInt8(ascii: "]")) }

    public mutating func key(_ k: String) {
        prefix()
        JSONWriter.appendEscaped(k, to: &bytes)
        bytes.append(UInt8(ascii: ":"))
        afterKey = true
    }

    public mutating func value(_ s: String) { prefix(); JSONWriter.appendEscaped(s, to: &bytes) }
    public mutating func value(_ i: Int) { prefix(); bytes.append(contentsOf: String(i).utf8) }
    public mutating func value(_ d: Double) { prefix(); JSONWriter.appendNumber(d, to: &bytes) }
    public mutating func value(_ b: Bool) { prefix(); bytes.append(contentsOf: (b ? "true" : "false").utf8) }
    public mutating func null() { prefix(); bytes.append(contentsOf: "null".utf8) }
    public mutating func value(_ v: JSONValue) { prefix(); v.write(to: &bytes) }
    /// Writes pre-encoded JSON text as the next value (trusted to be valid).
    public mutating func raw(_ json: some Sequence<UInt8>) { prefix(); bytes.append(contentsOf: json) }

    static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    public static func appendEscaped(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { buf in
            var runStart = 0
            var i = 0
            let n = buf.count
            while i < n {
                let c = buf[i]
                if c >= 0x20 && c != 0x22 && c != 0x5C {
                    i += 1
                    continue
                }
                if runStart < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: buf[runStart..<i])) }
                out.append(0x5C)
                switch c {
                case 0x22: out.append(0x22)
                case 0x5C: out.append(0x5C)
                case 0x0A: out.append(UInt8(ascii: "n"))
                case 0x0D: out.append(UInt8(ascii: "r"))
                case 0x09: out.append(UInt8(ascii: "t"))
                case 0x08: out.append(UInt8(ascii: "b"))
                case 0x0C: out.append(UInt8(ascii: "f"))
                default:
                    out.append(contentsOf: [UInt8(ascii: "u"), 0x30, 0x30, hex[Int(c >> 4)], hex[Int(c & 0xF)]])
                }
                i += 1
                runStart = i
            }
            if runStart < n { out.append(contentsOf: UnsafeBufferPointer(rebasing: buf[runStart..<n])) }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Writes a double. An integral value keeps a fraction ("1.0"), so a
    /// document read back has the same `.number` it was written from
    /// (`.integer` values are written without one).
    static func appendNumber(_ d: Double, to out: inout [UInt8]) {
        if !d.isFinite {
            out.append(contentsOf: "null".utf8)
        } else if d.rounded() == d && abs(d) < 1e15 {
            out.append(contentsOf: String(Int(d)).utf8)
            out.append(contentsOf: ".0".utf8)
        } else {
            out.append(contentsOf: d.description.utf8)
        }
    }
}

/// Builds a `JSONValue` from the same calls `JSONWriter` takes (members in
/// the order written; a repeated key is kept twice, as the text would be).
public struct JSONTreeWriter: JSONOutput {
    /// One open container, and the key it is the value of (nil in an array
    /// or at the top).
    private struct Frame {
        var isObject: Bool
        var members: [(key: String, value: JSONValue)] = []
        var items: [JSONValue] = []
        var key: String?
    }
    private var frames: [Frame] = []
    private var pendingKey: String?
    /// The document, once its outermost value is complete.
    public private(set) var value: JSONValue = .null

    public init() {}

    private mutating func add(_ v: JSONValue) {
        guard !frames.isEmpty else {
            value = v
            return
        }
        let i = frames.count - 1
        if frames[i].isObject {
            frames[i].members.append((key: pendingKey ?? "", value: v))
            pendingKey = nil
        } else {
            frames[i].items.append(v)
        }
    }

    private mutating func begin(object: Bool) {
        frames.append(Frame(isObject: object, key: pendingKey))
        pendingKey = nil
    }

    private mutating func end() {
        guard let f = frames.popLast() else { return }
        pendingKey = f.key
        add(f.isObject ? .object(JSONObject(f.members)) : .array(f.items))
    }

    public mutating func beginObject() { begin(object: true) }
    public mutating func endObject() { end() }
    public mutating func beginArray() { begin(object: false) }
    public mutating func endArray() { end() }
    public mutating func key(_ k: String) { pendingKey = k }
    public mutating func value(_ s: String) { add(.string(s)) }
    public mutating func value(_ i: Int) { add(.integer(i)) }
    public mutating func value(_ d: Double) { add(.number(d)) }
    public mutating func value(_ b: Bool) { add(.bool(b)) }
    public mutating func null() { add(.null) }
    public mutating func value(_ v: JSONValue) { add(v) }
}

extension JSONValue {
    /// Appends this value's compact JSON text.
    public func write(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .integer(let i): out.append(contentsOf: String(i).utf8)
        case .number(let d): JSONWriter.appendNumber(d, to: &out)
        case .string(let s): JSONWriter.appendEscaped(s, to: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                v.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            out.append(UInt8(ascii: "{"))
            for (i, m) in o.members.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSONWriter.appendEscaped(m.key, to: &out)
                out.append(UInt8(ascii: ":"))
                m.value.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// Compact JSON text.
    public var jsonText: String {
        var out: [UInt8] = []
        write(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// The same value with every object's members sorted by key: one text
    /// per meaning (cache keys).
    package var canonical: JSONValue {
        switch self {
        case .array(let a): return .array(a.map(\.canonical))
        case .object(let o):
            return .object(JSONObject(o.members.map { (key: $0.key, value: $0.value.canonical) }.sorted { $0.key < $1.key }))
        default: return self
        }
    }

    /// Compact JSON bytes.
    public var jsonBytes: [UInt8] {
        var out: [UInt8] = []
        write(to: &out)
        return out
    }

    /// Indented JSON text for humans (two spaces, keys in document order).
    public func prettyText(indent: Int = 0) -> String {
        let pad = String(repeating: "  ", count: indent + 1)
        let end = String(repeating: "  ", count: indent)
        switch self {
        case .array(let a) where !a.isEmpty:
            return "[\n" + a.map { pad + $0.prettyText(indent: indent + 1) }.joined(separator: ",\n") + "\n" + end + "]"
        case .object(let o) where !o.isEmpty:
            return "{\n"
                + o.members.map { pad + JSONValue.string($0.key).jsonText + ": " + $0.value.prettyText(indent: indent + 1) }
                .joined(separator: ",\n") + "\n" + end + "}"
        default:
            return jsonText
        }
    }
}

extension JSONValue: CustomStringConvertible {
    public var description: String { jsonText }
}
