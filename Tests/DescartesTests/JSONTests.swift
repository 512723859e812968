import Descartes
import Testing

@Suite struct JSONTests {
    @Test func roundTripsDocuments() throws {
        let text = #"{"a":1,"b":[true,false,null],"c":"x\"y\\z\n\u00e9","d":-2.5,"e":{},"f":[],"g":12345678901234}"#
        let v = try JSONValue.parse(text)
        #expect(v["a"] == .integer(1))
        #expect(v["c"]?.stringValue == "x\"y\\z\né")
        #expect(v["d"] == .number(-2.5))
        #expect(v["g"]?.intValue == 12345678901234)
        #expect(try JSONValue.parse(v.jsonText) == v)
        // Key order is kept.
        #expect(v.objectValue?.keys == ["a", "b", "c", "d", "e", "f", "g"])
    }

    @Test func decodesSurrogatePairsAndRepairsLoneOnes() throws {
        #expect(try JSONValue.parse(#""\ud83d\ude00""#).stringValue == "😀")
        #expect(try JSONValue.parse(#""\ud83d x""#).stringValue == "\u{FFFD} x")
    }

    @Test(arguments: [
        ("", "unexpected end of input"), ("{", "unexpected end"), (#"{"a" 1}"#, "expected ':'"), ("[1,]", "unexpected character"),
        ("tru", "invalid literal"), (#""abc"#, "unterminated string"), ("1 2", "unexpected data after"), ("\"\u{01}\"", "control character"),
        (#""\q""#, "invalid escape"), ("01x", "unexpected data after"),
        // Found by the json fuzz target: a Double overflows to infinity, which writes back as null.
        ("-111111e11111111111111", "number out of range"), ("[1e400]", "number out of range"),
    ])
    func rejectsInvalidText(_ text: String, _ expected: String) {
        #expect(throws: JSONParseError.self) { try JSONValue.parse(text) }
        do { _ = try JSONValue.parse(text) } catch { #expect(error.message.contains(expected), "\(text): \(error)") }
    }

    @Test func limitsNesting() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        do {
            _ = try JSONValue.parse(deep)
            Issue.record("expected a nesting error")
        } catch {
            #expect(error.message.contains("nesting"))
        }
    }

    @Test func writerProducesValidJSON() throws {
        var w = JSONWriter()
        w.beginObject()
        w.field("s", "a\u{01}\"b")
        w.beginArray(key: "xs")
        w.value(1)
        w.value(2.5)
        w.null()
        w.beginObject()
        w.endObject()
        w.endArray()
        w.field("none", nil as String?)
        w.field("t", true)
        w.endObject()
        let v = try JSONValue.parse(w.string)
        #expect(v == ["s": "a\u{01}\"b", "xs": [1, 2.5, nil, [:]], "t": true])
    }

    @Test func readerSkipsWhatItDoesNotNeed() throws {
        let chunk = #"{"id":"x","choices":[{"index":0,"delta":{"content":"Hi \u00e9"},"finish_reason":null}],"usage":null}"#
        var bytes = Array(chunk.utf8)
        let text: String? = try bytes.withUnsafeMutableBytes { raw in
            var r = JSONReader(UnsafeRawBufferPointer(raw))
            var found: String? = nil
            try r.forEachMember { r, key in
                guard key == "choices" else { return }
                try r.forEachElement { r, _ in
                    try r.forEachMember { r, key in
                        guard key == "delta" else { return }
                        try r.forEachMember { r, key in
                            if key == "content" { found = try r.readString() }
                        }
                    }
                }
            }
            return found
        }
        #expect(text == "Hi é")
    }

    @Test func utf8JoinerNeverSplitsACharacter() {
        let text = "héllo wörld 😀 ok"
        let bytes = Array(text.utf8)
        for cut in 1..<bytes.count {
            var j = UTF8Joiner()
            var out = bytes[0..<cut].withUnsafeBytes { j.append($0) }
            out += bytes[cut...].withUnsafeBytes { j.append($0) }
            out += j.flush()
            #expect(out == text)
            #expect(!out.contains("\u{FFFD}"))
        }
    }
}
