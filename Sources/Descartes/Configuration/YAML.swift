internal import CYaml
import DescartesCore

/// A position in a source file, 1-based, for error messages.
public struct SourcePosition: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }
    public var description: String { "\(file):\(line):\(column)" }
}

/// A problem found in a file, with where it is.
public struct SourceProblem: Sendable, Hashable, CustomStringConvertible {
    public var location: SourcePosition
    public var message: String
    public init(_ location: SourcePosition, _ message: String) {
        self.location = location
        self.message = message
    }
    public var description: String { "\(location): \(message)" }
}

/// One or more problems in one file. Loaders collect every problem they can
/// find rather than stopping at the first.
public struct SourceError: Error, Sendable, CustomStringConvertible {
    public var problems: [SourceProblem]
    public init(_ problems: [SourceProblem]) { self.problems = problems }
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// A node of a YAML document, with its position.
package struct YAMLNode: Sendable {
    package enum Value: Sendable {
        /// A scalar and whether it was quoted (quoted scalars are always strings).
        case scalar(String, quoted: Bool)
        case sequence([YAMLNode])
        case mapping([(key: YAMLNode, value: YAMLNode)])
    }
    package var value: Value
    package var location: SourcePosition

    /// A scalar's text, or nil for collections.
    package var scalar: String? { if case .scalar(let s, _) = value { return s }; return nil }

    /// The YAML 1.2 core-schema reading of a scalar: null, bool, int, float or
    /// string. Collections become arrays and objects.
    package var json: JSONValue {
        switch value {
        case .scalar(let s, let quoted):
            return quoted ? .string(s) : YAMLNode.resolvePlain(s)
        case .sequence(let items):
            return .array(items.map(\.json))
        case .mapping(let pairs):
            return .object(JSONObject(pairs.map { (key: $0.key.scalar ?? $0.key.json.jsonText, value: $0.value.json) }))
        }
    }

    package var kindName: String {
        switch value {
        case .scalar(let s, let quoted): return quoted ? "string" : YAMLNode.resolvePlain(s).typeName
        case .sequence: return "list"
        case .mapping: return "mapping"
        }
    }

    /// How YAML's core schema reads an unquoted scalar: null, bool,
    /// integer, float or string.
    package static func resolvePlain(_ s: String) -> JSONValue {
        switch s {
        case "", "~", "null", "Null", "NULL": return .null
        case "true", "True", "TRUE": return .bool(true)
        case "false", "False", "FALSE": return .bool(false)
        default: break
        }
        if let first = s.utf8.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+") || (first >= 0x30 && first <= 0x39) || first == UInt8(ascii: ".") {
            let body = s.hasPrefix("+") ? String(s.dropFirst()) : s
            if let i = Int(body), !body.contains("_") { return .integer(i) }
            if body.hasPrefix("0x"), let i = Int(body.dropFirst(2), radix: 16) { return .integer(i) }
            if body.hasPrefix("0o"), let i = Int(body.dropFirst(2), radix: 8) { return .integer(i) }
            if body.allSatisfy({ "0123456789.eE+-".contains($0) }), let d = Double(body) { return .number(d) }
        }
        switch s {
        case ".inf", ".Inf", ".INF", "+.inf": return .number(.infinity)
        case "-.inf", "-.Inf", "-.INF": return .number(-.infinity)
        default: return .string(s)
        }
    }

    /// For mappings: the value for `key`, or nil.
    package subscript(key: String) -> YAMLNode? {
        if case .mapping(let pairs) = value {
            for p in pairs where p.key.scalar == key { return p.value }
        }
        return nil
    }
}

/// Parses YAML with libyaml.
package enum YAML {
    /// The most nodes one file may expand to (aliases included), so a
    /// "billion laughs" document fails instead of exhausting memory.
    package static let maxNodes = 100_000
    /// The deepest nesting accepted.
    package static let maxDepth = 128

    /// Parses the first document of `text`. Returns nil for an empty file.
    /// Throws `SourceError` naming file, line and column on invalid YAML.
    package static func parse(_ text: String, file: String) throws(SourceError) -> YAMLNode? {
        var bytes = Array(text.utf8)
        return try parse(bytes: &bytes, file: file)
    }

    package static func parse(bytes: inout [UInt8], file: String) throws(SourceError) -> YAMLNode? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else {
            throw SourceError([SourceProblem(SourcePosition(file: file, line: 1, column: 1), "cannot initialize the YAML parser")])
        }
        defer { yaml_parser_delete(&parser) }
        return try bytes.withUnsafeMutableBufferPointer { buf throws(SourceError) -> YAMLNode? in
            yaml_parser_set_input_string(&parser, buf.baseAddress, buf.count)
            yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
            var builder = Builder(file: file)
            return try builder.run(&parser)
        }
    }

    /// The text of the scalar that top-level key `key` of `bytes`'s first
    /// document maps to, read only as far as that key: how plugin discovery
    /// tells which provider a manifest declares without building and
    /// checking the whole document (PluginCatalog's lookup of one provider).
    /// nil when the document does not say so plainly before that point: it
    /// is not a mapping, has no such key, the value is a collection or an
    /// alias, or libyaml finds a problem first. `parse` reads the same key
    /// to the same text (a duplicate key makes that document invalid).
    package static func topLevelScalar(_ key: String, in bytes: [UInt8]) -> String? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return nil }
        defer { yaml_parser_delete(&parser) }
        return bytes.withUnsafeBufferPointer { buf -> String? in
            // The text is handed to libyaml 512 bytes at a time: given it
            // whole, libyaml decodes all of it before the first event, and
            // the key is usually on the first lines.
            var input = (base: buf.baseAddress, count: buf.count, offset: 0)
            return withUnsafeMutablePointer(to: &input) { state -> String? in
                yaml_parser_set_input(
                    &parser,
                    { data, buffer, size, read in
                        let s = data!.assumingMemoryBound(to: (base: UnsafePointer<UInt8>?, count: Int, offset: Int).self)
                        let n = min(size, 512, s.pointee.count - s.pointee.offset)
                        if n > 0 { buffer!.update(from: s.pointee.base! + s.pointee.offset, count: n) }
                        s.pointee.offset += n
                        read!.pointee = n
                        return 1
                    }, state)
                yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
                var event = yaml_event_t()
                // Depth 1 is the root mapping, whose events alternate key, value.
                var depth = 0
                var atKey = true
                var wanted = false
                while yaml_parser_parse(&parser, &event) == 1 {
                    defer { yaml_event_delete(&event) }
                    switch event.type {
                    case YAML_MAPPING_START_EVENT, YAML_SEQUENCE_START_EVENT:
                        if depth == 0 && event.type != YAML_MAPPING_START_EVENT { return nil }
                        // A collection as a key, or as the value asked for.
                        if depth == 1 && (atKey || wanted) { return nil }
                        depth += 1
                    case YAML_MAPPING_END_EVENT, YAML_SEQUENCE_END_EVENT:
                        depth -= 1
                        if depth <= 0 { return nil }
                        if depth == 1 { atKey = true }
                    case YAML_SCALAR_EVENT:
                        if depth == 0 { return nil }
                        guard depth == 1 else { continue }
                        let s = event.data.scalar
                        let text = YAML.Builder.text(s.value, Int(s.length))
                        if atKey {
                            wanted = text == key
                            atKey = false
                        } else {
                            if wanted { return text }
                            atKey = true
                        }
                    case YAML_ALIAS_EVENT:
                        if depth == 1 {
                            if atKey || wanted { return nil }
                            atKey = true
                        }
                    case YAML_STREAM_END_EVENT, YAML_DOCUMENT_END_EVENT:
                        return nil
                    default:
                        break
                    }
                }
                return nil
            }
        }
    }

    struct Builder {
        let file: String
        /// Anchored nodes and their expanded sizes (in nodes).
        var anchors: [String: (node: YAMLNode, size: Int)] = [:]
        var nodeCount = 0
        /// An open collection. A class, so that adding a child appends in
        /// place (an enum payload taken out and put back copied the array:
        /// quadratic in the children), with the mapping's keys in a set for
        /// the duplicate check (a scan of the pairs was quadratic too).
        final class Frame {
            let head: YAMLNode
            let anchor: String?
            let isMapping: Bool
            var items: [YAMLNode] = []
            var pairs: [(key: YAMLNode, value: YAMLNode)] = []
            var keys: Set<String> = []
            var pendingKey: YAMLNode?
            init(head: YAMLNode, anchor: String?, isMapping: Bool) {
                self.head = head
                self.anchor = anchor
                self.isMapping = isMapping
            }
        }
        /// Expanded size of each open collection, parallel to `stack`.
        var sizes: [Int] = []
        var stack: [Frame] = []
        var root: YAMLNode?
        var documents = 0

        init(file: String) { self.file = file }

        func loc(_ m: yaml_mark_t) -> SourcePosition {
            SourcePosition(file: file, line: Int(m.line) + 1, column: Int(m.column) + 1)
        }

        func error(_ m: yaml_mark_t, _ msg: String) -> SourceError {
            SourceError([SourceProblem(loc(m), msg)])
        }

        static func text(_ p: UnsafeMutablePointer<yaml_char_t>?, _ n: Int) -> String {
            guard let p else { return "" }
            return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
        }

        static func cstr(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? {
            guard let p else { return nil }
            return String(cString: UnsafeRawPointer(p).assumingMemoryBound(to: CChar.self))
        }

        /// Adds a finished node of expanded size `size` to the open collection.
        mutating func add(_ node: YAMLNode, size: Int, at mark: yaml_mark_t) throws(SourceError) {
            nodeCount += size
            if nodeCount > YAML.maxNodes { throw error(mark, "document expands to more than \(YAML.maxNodes) nodes") }
            if !sizes.isEmpty { sizes[sizes.count - 1] += size }
            guard let top = stack.last else {
                root = node
                return
            }
            if !top.isMapping {
                top.items.append(node)
            } else if let k = top.pendingKey {
                if let key = k.scalar, !top.keys.insert(key).inserted {
                    throw SourceError([SourceProblem(k.location, "duplicate key '\(key)'")])
                }
                top.pairs.append((key: k, value: node))
                top.pendingKey = nil
            } else {
                guard node.scalar != nil else {
                    throw SourceError([SourceProblem(node.location, "mapping keys must be scalars")])
                }
                top.pendingKey = node
            }
        }

        mutating func run(_ parser: inout yaml_parser_t) throws(SourceError) -> YAMLNode? {
            var event = yaml_event_t()
            while true {
                guard yaml_parser_parse(&parser, &event) == 1 else {
                    let problem = YAML.Builder.cstrChar(parser.problem) ?? "invalid YAML"
                    var msg = problem
                    if let ctx = YAML.Builder.cstrChar(parser.context) { msg = "\(problem) \(ctx)" }
                    throw error(parser.problem_mark, msg)
                }
                defer { yaml_event_delete(&event) }
                let mark = event.start_mark
                switch event.type {
                case YAML_STREAM_END_EVENT:
                    return root
                case YAML_DOCUMENT_START_EVENT:
                    documents += 1
                    if documents > 1 { throw error(mark, "only one YAML document per file is allowed") }
                case YAML_SCALAR_EVENT:
                    let s = event.data.scalar
                    let value = YAML.Builder.text(s.value, Int(s.length))
                    let quoted = s.style == YAML_SINGLE_QUOTED_SCALAR_STYLE || s.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE
                        || s.style == YAML_LITERAL_SCALAR_STYLE || s.style == YAML_FOLDED_SCALAR_STYLE
                    let node = YAMLNode(value: .scalar(value, quoted: quoted), location: loc(mark))
                    if let a = YAML.Builder.cstr(s.anchor) { anchors[a] = (node, 1) }
                    try add(node, size: 1, at: mark)
                case YAML_ALIAS_EVENT:
                    let name = YAML.Builder.cstr(event.data.alias.anchor) ?? ""
                    guard let anchored = anchors[name] else { throw error(mark, "unknown alias '*\(name)'") }
                    try add(anchored.node, size: anchored.size, at: mark)
                case YAML_SEQUENCE_START_EVENT:
                    if stack.count >= YAML.maxDepth { throw error(mark, "nesting deeper than \(YAML.maxDepth) levels") }
                    let head = YAMLNode(value: .sequence([]), location: loc(mark))
                    stack.append(Frame(head: head, anchor: YAML.Builder.cstr(event.data.sequence_start.anchor), isMapping: false))
                    sizes.append(1)
                case YAML_SEQUENCE_END_EVENT:
                    guard let frame = stack.popLast(), !frame.isMapping else {
                        throw error(mark, "unbalanced sequence")
                    }
                    var head = frame.head
                    let anchor = frame.anchor
                    head.value = .sequence(frame.items)
                    let size = sizes.removeLast()
                    if let anchor { anchors[anchor] = (head, size) }
                    nodeCount -= size - 1  // the children were counted as they were added
                    try add(head, size: size, at: mark)
                case YAML_MAPPING_START_EVENT:
                    if stack.count >= YAML.maxDepth { throw error(mark, "nesting deeper than \(YAML.maxDepth) levels") }
                    let head = YAMLNode(value: .mapping([]), location: loc(mark))
                    stack.append(Frame(head: head, anchor: YAML.Builder.cstr(event.data.mapping_start.anchor), isMapping: true))
                    sizes.append(1)
                case YAML_MAPPING_END_EVENT:
                    guard let frame = stack.popLast(), frame.isMapping else {
                        throw error(mark, "unbalanced mapping")
                    }
                    var head = frame.head
                    let anchor = frame.anchor
                    head.value = .mapping(frame.pairs)
                    let size = sizes.removeLast()
                    if let anchor { anchors[anchor] = (head, size) }
                    nodeCount -= size - 1  // the children were counted as they were added
                    try add(head, size: size, at: mark)
                default:
                    break
                }
            }
        }

        static func cstrChar(_ p: UnsafePointer<CChar>?) -> String? {
            guard let p else { return nil }
            return String(cString: p)
        }
    }
}
