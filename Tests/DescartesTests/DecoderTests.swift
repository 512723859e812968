import DescartesPluginKit
import Testing

@Suite struct SSEDecoderTests {
    struct E: Equatable {
        var name: String
        var data: String
    }

    func decode(_ pieces: [[UInt8]]) throws -> [E] {
        var d = SSEDecoder()
        var out: [E] = []
        for p in pieces {
            try p.withUnsafeBytes { b in try d.feed(b) { out.append(E(name: $0.nameString, data: $0.dataString)) } }
        }
        try d.finish { out.append(E(name: $0.nameString, data: $0.dataString)) }
        return out
    }

    /// Every way of cutting the stream into two reads gives the same events.
    func everySplit(_ text: String) throws -> [E] {
        let bytes = Array(text.utf8)
        let whole = try decode([bytes])
        for cut in 0...bytes.count {
            #expect(try decode([Array(bytes[0..<cut]), Array(bytes[cut...])]) == whole, "cut at \(cut)")
        }
        #expect(try decode(bytes.map { [$0] }) == whole, "byte by byte")
        return whole
    }

    @Test func handlesLFCRAndCRLFLineEnds() throws {
        for eol in ["\n", "\r", "\r\n"] {
            let text = ["event: a", "data: 1", "", "data: 2", "data:3", "", ""].joined(separator: eol)
            #expect(try everySplit(text) == [E(name: "a", data: "1"), E(name: "message", data: "2\n3")], "eol \(eol.debugDescription)")
        }
    }

    @Test func ignoresCommentsAndUnknownFieldsAndDispatchesATrailingEvent() throws {
        let text = ": ping\n\nretry: 3000\nfoo: bar\ndata:  two spaces\n\n: keep-alive\ndata: last"
        #expect(try everySplit(text) == [E(name: "message", data: " two spaces"), E(name: "message", data: "last")])
    }

    @Test func eventWithoutDataIsNotDispatched() throws {
        #expect(try everySplit("event: ping\n\ndata: x\n\n") == [E(name: "message", data: "x")])
    }

    @Test func refusesAnEndlessLine() {
        var d = SSEDecoder(maxLineBytes: 1000)
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 400)
        #expect(throws: SSEDecoder.LineTooLong.self) {
            for _ in 0..<5 { try chunk.withUnsafeBytes { try d.feed($0) { _ in } } }
        }
    }

    @Test func decodesRecordedTranscriptsTheSameWhateverTheReads() throws {
        for name in ["openai/chat-stream-text-usage.sse", "anthropic/messages-stream-thinking.sse", "deepseek/chat-stream-reasoning.sse", "groq/chat-stream-error-event.sse"] {
            let text = try TestEnv.transcript(name)
            let whole = try decode([Array(text.utf8)])
            #expect(!whole.isEmpty, "\(name)")
            let bytes = Array(text.utf8)
            for size in [1, 3, 7, 64, 1000] {
                let pieces = stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min($0 + size, bytes.count)]) }
                #expect(try decode(pieces) == whole, "\(name) in pieces of \(size)")
            }
        }
    }
}

@Suite struct LineDecoderTests {
    func lines(_ pieces: [String]) throws -> [String] {
        var d = LineDecoder()
        var out: [String] = []
        for p in pieces { try Array(p.utf8).withUnsafeBytes { b in try d.feed(b) { out.append(String(decoding: $0, as: UTF8.self)) } } }
        try d.finish { out.append(String(decoding: $0, as: UTF8.self)) }
        return out
    }

    @Test func splitsAcrossReadsDropsCRAndEmptyLines() throws {
        #expect(try lines(["{\"a\":", "1}\r\n\n{\"b\"", ":2}\n", "{\"c\":3}"]) == ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"])
    }

    @Test func refusesAnEndlessLine() {
        var d = LineDecoder(maxLineBytes: 100)
        #expect(throws: LineDecoder.LineTooLong.self) {
            for _ in 0..<3 { try Array(repeating: UInt8(ascii: "x"), count: 60).withUnsafeBytes { try d.feed($0) { _ in } } }
        }
    }
}
