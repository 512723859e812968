import Descartes
import DescartesPluginKit
import DescartesSupport
import Testing

/// libdescartes-bedrock.so through the C ABI against the loopback scripted
/// server replaying answers the real Bedrock runtime sent
/// (Tests/Fixtures/recorded/bedrock, from pydantic-ai's cassettes; README
/// there): ConverseStream's binary application/vnd.amazon.eventstream bodies
/// byte for byte (their CRCs are the service's), whole and cut into 1- and
/// 7-byte pieces, Converse's JSON answers and HTTP errors, each compared with
/// what bedrock_expected.py derived from the body. Every replay first checks
/// the request's SigV4 signature with botocore's signer, as
/// BedrockPluginTests does.
@Suite(.serialized) struct BedrockRecordedTests {
    static let keyID = "AKIDTEST00112233"
    static let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYTESTKEY0011"
    static let region = "us-east-1"
    let plugins = PluginDir().addManifest("bedrock")

    func backend(_ server: ServerSlot) throws -> any ModelBackend {
        try plugins.factory(environment: ["HOME": "/nonexistent"]).create(
            "bedrock",
            config: [
                "endpoint": .string(server.url), "region": .string(Self.region), "access_key_id": .string(Self.keyID),
                "secret_access_key": .string(Self.secret),
            ])
    }

    /// The model id and operation of a recorded path (/model/{id}/{op}).
    static func target(_ path: String) -> (model: String, operation: String) {
        let s = path.split(separator: "/").map(String.init)
        return (s[1].replacingOccurrences(of: "%3A", with: ":"), s[2])
    }

    /// A recorded Converse request as the `ModelRequest` that should produce it.
    static func modelRequest(_ v: JSONValue, model: String) -> ModelRequest {
        var messages: [Message] = []
        for m in v["messages"]?.arrayValue ?? [] {
            let blocks = m["content"]?.arrayValue ?? []
            let text = blocks.compactMap { $0["text"]?.stringValue }.joined()
            if m["role"]?.stringValue == "assistant" {
                let calls = blocks.compactMap { $0["toolUse"] }.map {
                    ToolCall(id: $0["toolUseId"]?.stringValue ?? "", name: $0["name"]?.stringValue ?? "", arguments: ($0["input"] ?? [:]).jsonText)
                }
                messages.append(Message(role: .assistant, content: text, toolCalls: calls))
            } else {
                for r in blocks.compactMap({ $0["toolResult"] }) {
                    let c = r["content"]?[0]
                    messages.append(.tool(callID: r["toolUseId"]?.stringValue ?? "", c?["text"]?.stringValue ?? (c?["json"] ?? [:]).jsonText))
                }
                if !text.isEmpty { messages.append(.user(text)) }
            }
        }
        var r = ModelRequest(messages: messages, model: model)
        let system = (v["system"]?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined()
        if !system.isEmpty { r.systemPrompt = system }
        r.temperature = v["inferenceConfig"]?["temperature"]?.doubleValue
        r.topP = v["inferenceConfig"]?["topP"]?.doubleValue
        r.maxTokens = v["inferenceConfig"]?["maxTokens"]?.intValue
        r.tools = (v["toolConfig"]?["tools"]?.arrayValue ?? []).compactMap { $0["toolSpec"] }.map {
            Tool(name: $0["name"]?.stringValue ?? "", description: $0["description"]?.stringValue ?? "", parameters: $0["inputSchema"]?["json"] ?? ["type": "object"])
        }
        if let extra = v["additionalModelRequestFields"] { r.options["additionalModelRequestFields"] = extra }
        return r
    }

    @Test func theRecordingsAreAllThereWithValidFrames() throws {
        let files = Recorded.files("bedrock")
        #expect(files.count == 11)
        let streams = try files.filter { $0.hasSuffix(".eventstream") }.map { try Recorded("bedrock", $0) }
        #expect(streams.count == 5)
        // What the service sent, frame by frame: the CRCs check out and the padding "p" is there.
        for s in streams {
            var decoder = EventStreamDecoder()
            var messages: [(type: String?, payload: String)] = []
            try s.body.withUnsafeBytes { bytes in
                try decoder.feed(bytes) { messages.append(($0.header(":message-type"), String(decoding: $0.payload, as: UTF8.self))) }
            }
            try decoder.finish()
            #expect(messages.count > 4, "\(s.name)")
            #expect(messages.allSatisfy { $0.type == "event" }, "\(s.name)")
            #expect(messages.allSatisfy { $0.payload.contains(#""p":""#) }, "\(s.name)")
        }
    }

    @Test func theSidecarsAreWhatTheReferenceExtractorComputes() async {
        let r = await Recorded.extractorCheck("bedrock", "bedrock_expected.py")
        #expect(r.status == 0 && r.stdout.isEmpty, "\(r)")
    }

    @Test func everyRecordedAnswerAgreesWithItsExpectedResult() async throws {
        var checked = 0
        for file in Recorded.files("bedrock") {
            let rec = try Recorded("bedrock", file)
            let (model, operation) = Self.target(rec.path)
            let request = Self.modelRequest(rec.requestBody, model: model)
            let streamed = operation == "converse-stream"
            for split in rec.splits {
                let server = try await ServerSlot.make()
                let signed = rec.response(split: split).with([
                    "sigv4": ["secret_key": .string(Self.secret), "access_key": .string(Self.keyID), "region": .string(Self.region), "service": "bedrock"]
                ])
                try await server.script(["POST \(rec.path)": [signed]])
                let b = try backend(server)
                let seen = streamed ? await Observed.stream(b, request) : await Observed.complete(b, request)
                Self.check(seen, rec.expected, "\(file) split \(split.map(String.init) ?? "none")")
                let sent = try #require(try await server.requests().first)
                Self.compare(sent, rec, file)
                await b.shutdown()
            }
            checked += 1
        }
        #expect(checked == 11)
    }

    static func check(_ seen: Observed, _ exp: JSONValue, _ name: String) {
        let c = Comment(rawValue: "\(name): \(seen)")
        if let err = exp["error"], !err.isNull {
            let e = seen.error
            // The cassettes kept no x-amzn-ErrorType header: a 400 is a ValidationException, `api` either way.
            #expect(e?.kind == .api, c)
            #expect(e?.status == 400, c)
            #expect(e?.message.contains(err["message"]?.stringValue ?? "?") == true, c)
            #expect(e?.message.contains(secret) == false, c)
            return
        }
        #expect(seen.error == nil, c)
        #expect(seen.text == exp["text"]?.stringValue ?? "", c)
        #expect(seen.reasoning == exp["reasoning"]?.stringValue ?? "", c)
        guard let r = seen.response else {
            Issue.record(c)
            return
        }
        let calls = exp["tool_calls"]?.arrayValue ?? []
        #expect(r.toolCalls.map(\.id) == calls.map { $0["id"]?.stringValue ?? "" }, c)
        #expect(r.toolCalls.map(\.name) == calls.map { $0["name"]?.stringValue ?? "" }, c)
        for (got, want) in zip(r.toolCalls, calls) {
            #expect(try! JSONValue.parse(got.arguments) == JSONValue.parse(want["arguments"]?.stringValue ?? ""), c)
        }
        let finish: FinishReason =
            switch exp["finish_reason"]?.stringValue {
            case "end_turn", "stop_sequence": .stop
            case "tool_use": .toolUse
            case "max_tokens": .maxTokens
            case "guardrail_intervened", "content_filtered": .contentFilter
            case let other: FinishReason(rawValue: "unmapped \(other ?? "nil")")
            }
        #expect(r.finishReason == finish, c)
        let u = exp["usage"] ?? [:]
        let read = u["cacheReadInputTokens"]?.intValue ?? 0
        let write = u["cacheWriteInputTokens"]?.intValue ?? 0
        // Converse's inputTokens leaves cache reads and writes out; ours counts them.
        #expect(r.usage == Usage(
            inputTokens: (u["inputTokens"]?.intValue ?? 0) + read + write, outputTokens: u["outputTokens"]?.intValue ?? 0, cacheReadTokens: read,
            cacheWriteTokens: write), c)
        #expect(u["totalTokens"]?.intValue == r.usage.inputTokens + r.usage.outputTokens, c)
    }

    /// The request sent says what the recorded one said: the operation and
    /// model, the turns (text, tool uses and results), system text, inference
    /// settings, tools, additional model fields.
    static func compare(_ sent: ScriptedServer.Request, _ rec: Recorded, _ name: String) {
        let c = Comment(rawValue: "\(name): \(sent.path) \(sent.body)")
        #expect(sent.path.hasSuffix(rec.path), c)
        #expect(sent.header("authorization")?.hasPrefix("AWS4-HMAC-SHA256 Credential=\(keyID)/") == true, c)
        guard let body = sent.json else {
            Issue.record(c)
            return
        }
        let recorded = rec.requestBody
        func turns(_ v: JSONValue) -> [String] {
            (v["messages"]?.arrayValue ?? []).map { m in
                let blocks = m["content"]?.arrayValue ?? []
                var parts = [blocks.compactMap { $0["text"]?.stringValue }.joined()]
                parts += blocks.compactMap { $0["toolUse"] }.map { "use \($0["toolUseId"]?.stringValue ?? "") \($0["name"]?.stringValue ?? "")" }
                parts += blocks.compactMap { $0["toolResult"] }.map { "result \($0["toolUseId"]?.stringValue ?? "")" }
                return "\(m["role"]?.stringValue ?? ""): \(parts.joined(separator: " | "))"
            }
        }
        #expect(turns(body) == turns(recorded), c)
        func system(_ v: JSONValue) -> String { (v["system"]?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined() }
        #expect(system(body) == system(recorded), c)
        for key in ["temperature", "topP", "maxTokens"] {
            #expect(body["inferenceConfig"]?[key]?.doubleValue == recorded["inferenceConfig"]?[key]?.doubleValue, c)
        }
        func tools(_ v: JSONValue) -> [String] { (v["toolConfig"]?["tools"]?.arrayValue ?? []).compactMap { $0["toolSpec"]?["name"]?.stringValue } }
        #expect(tools(body) == tools(recorded), c)
        #expect(body["additionalModelRequestFields"] == recorded["additionalModelRequestFields"], c)
    }
}
