import Descartes
import DescartesSupport
import Testing

/// libdescartes-gemini.so (factories gemini and vertex) through the C ABI
/// against the loopback scripted server replaying answers the real Gemini
/// API and Vertex AI sent (Tests/Fixtures/recorded/gemini, from the
/// cassettes of pydantic-ai's and Mirascope's test suites; README there),
/// byte for byte, whole and cut into 1- and 7-byte pieces, with the recorded
/// status and content type, compared with what the directory's reference
/// extractor (gemini_expected.py) derived from each body.
@Suite(.serialized) struct GeminiRecordedTests {
    static let key = "AIzaSyTest0011223344556677889900aabbccdd"
    static let token = "ya29.test-access-token-00112233445566"
    let plugins = PluginDir().addManifest("gemini").addManifest("vertex")

    /// A `gemini` instance, or for a Vertex AI recording a `vertex` one with
    /// the recorded project, location and API version.
    func backend(_ server: ServerSlot, _ rec: Recorded) throws -> any ModelBackend {
        let segments = rec.path.split(separator: "/").map(String.init)
        if rec.name.hasPrefix("vertex-") {
            let project = segments[segments.firstIndex(of: "projects")! + 1]
            let location = segments[segments.firstIndex(of: "locations")! + 1]
            return try plugins.factory().create(
                "vertex",
                config: [
                    "endpoint": .string("\(server.url)/\(segments[0])"), "api_key": .string(Self.token), "project": .string(project),
                    "location": .string(location),
                ])
        }
        return try plugins.factory().create("gemini", config: ["endpoint": .string("\(server.url)/\(segments[0])"), "api_key": .string(Self.key)])
    }

    /// The model id and method of a recorded path (".../models/ID:method").
    static func target(_ path: String) -> (model: String, method: String) {
        let last = path.split(separator: "/").last.map(String.init) ?? ""
        let parts = last.split(separator: ":", maxSplits: 1).map(String.init)
        return (parts[0], parts.count > 1 ? parts[1] : "")
    }

    /// A recorded request body as the `ModelRequest` that should produce it.
    static func modelRequest(_ v: JSONValue, model: String) -> ModelRequest {
        var messages: [Message] = []
        var calls = 0
        for content in v["contents"]?.arrayValue ?? [] {
            let parts = content["parts"]?.arrayValue ?? []
            let text = parts.compactMap { $0["text"]?.stringValue }.joined()
            if content["role"]?.stringValue == "model" {
                var toolCalls: [ToolCall] = []
                var signature: String? = nil
                for p in parts {
                    if signature == nil { signature = p["thoughtSignature"]?.stringValue }
                    guard let fc = p["functionCall"] else { continue }
                    toolCalls.append(ToolCall(
                        id: fc["id"]?.stringValue ?? "\(GeminiIDs.prefix)\(calls)", name: fc["name"]?.stringValue ?? "",
                        arguments: (fc["args"] ?? [:]).jsonText))
                    calls += 1
                }
                messages.append(Message(role: .assistant, content: text, toolCalls: toolCalls, reasoningSignature: signature))
            } else {
                for p in parts {
                    guard let fr = p["functionResponse"] else { continue }
                    let id = fr["id"]?.stringValue ?? "\(GeminiIDs.prefix)\(max(calls - 1, 0))"
                    messages.append(.tool(callID: id, fr["response"]?["return_value"]?.stringValue ?? (fr["response"] ?? [:]).jsonText))
                }
                if !text.isEmpty || parts.isEmpty { messages.append(.user(text)) }
            }
        }
        var r = ModelRequest(messages: messages, model: model)
        let system = (v["systemInstruction"]?["parts"]?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined()
        if !system.isEmpty { r.systemPrompt = system }
        r.temperature = v["generationConfig"]?["temperature"]?.doubleValue
        r.topP = v["generationConfig"]?["topP"]?.doubleValue
        r.tools = (v["tools"]?.arrayValue ?? []).flatMap { $0["functionDeclarations"]?.arrayValue ?? [] }.map {
            Tool(
                name: $0["name"]?.stringValue ?? "", description: $0["description"]?.stringValue ?? "",
                parameters: $0["parameters_json_schema"] ?? $0["parametersJsonSchema"] ?? $0["parameters"] ?? ["type": "object"])
        }
        return r
    }

    @Test func theRecordingsAreAllThereAndCoverWhatTheyShould() throws {
        let files = Recorded.files("gemini")
        #expect(files.count == 14)
        let all = try files.map { try Recorded("gemini", $0) }
        // Gemini's SSE keeps Google's CRLF line ends.
        #expect(all.filter { $0.ext == "sse" }.allSatisfy { $0.body.count > 4 && $0.body.suffix(4) == Array("\r\n\r\n".utf8) })
        #expect(all.contains { $0.expected["reasoning"]?.stringValue?.isEmpty == false })
        #expect(all.contains { $0.expected["usage"]?["cachedContentTokenCount"]?.intValue ?? 0 > 0 })
        #expect(all.contains { $0.expected["usage"]?["thoughtsTokenCount"]?.intValue ?? 0 > 0 })
        #expect(all.contains { $0.ext == "sse" && $0.expected["tool_calls"]?.arrayValue?.isEmpty == false })
        #expect(all.contains { $0.expected["error"]?["details"]?[0]?["reason"] == "API_KEY_INVALID" })
    }

    @Test func theSidecarsAreWhatTheReferenceExtractorComputes() async {
        let r = await Recorded.extractorCheck("gemini", "gemini_expected.py")
        #expect(r.status == 0 && r.stdout.isEmpty, "\(r)")
    }

    @Test func everyRecordedAnswerAgreesWithItsExpectedResult() async throws {
        var checked = 0
        for file in Recorded.files("gemini") {
            let rec = try Recorded("gemini", file)
            let (model, method) = Self.target(rec.path)
            let request = Self.modelRequest(rec.requestBody, model: model)
            let streamed = method == "streamGenerateContent"
            for split in rec.splits {
                let server = try await ServerSlot.make()
                try await server.script(["POST \(rec.path)": [rec.response(split: split)]])
                let b = try backend(server, rec)
                let seen = streamed ? await Observed.stream(b, request) : await Observed.complete(b, request)
                Self.check(seen, rec.expected, "\(file) split \(split.map(String.init) ?? "none")")
                let sent = try #require(try await server.requests().first)
                Self.compare(sent, rec, file)
                await b.shutdown()
            }
            checked += 1
        }
        #expect(checked == 14)
    }

    /// What the caller saw against what the extractor found in the body.
    static func check(_ seen: Observed, _ exp: JSONValue, _ name: String) {
        let c = Comment(rawValue: "\(name): \(seen)")
        if let err = exp["error"], !err.isNull {
            let e = seen.error
            let reason = err["details"]?.arrayValue?.first { $0["@type"]?.stringValue?.hasSuffix("google.rpc.ErrorInfo") == true }?["reason"]?.stringValue
            let kind: ProviderError.Kind =
                reason == "API_KEY_INVALID" ? .authentication : err["status"]?.stringValue == "RESOURCE_EXHAUSTED" ? .rateLimited : .api
            #expect(e?.kind == kind, c)
            #expect(e?.status == err["code"]?.intValue, c)
            #expect(e?.providerType == reason ?? err["status"]?.stringValue, c)
            #expect(e?.message.contains(err["message"]?.stringValue ?? "?") == true, c)
            #expect(e?.message.contains(key) == false, c)
            return
        }
        #expect(seen.error == nil, c)
        #expect(seen.text == exp["text"]?.stringValue ?? "", c)
        #expect(seen.reasoning == exp["reasoning"]?.stringValue ?? "", c)
        guard let r = seen.response else { return }
        #expect(r.id == exp["response_id"]?.stringValue, c)
        #expect(r.model == exp["model"]?.stringValue, c)
        let calls = exp["tool_calls"]?.arrayValue ?? []
        #expect(r.toolCalls.map(\.name) == calls.map { $0["name"]?.stringValue ?? "" }, c)
        for (got, want) in zip(r.toolCalls, calls) {
            #expect(try! JSONValue.parse(got.arguments) == JSONValue.parse(want["arguments"]?.stringValue ?? ""), c)
            if let id = want["id"]?.stringValue { #expect(got.id == id, c) } else { #expect(!got.id.isEmpty, c) }
        }
        let raw = exp["finish_reason"]?.stringValue ?? ""
        let finish: FinishReason =
            switch raw {
            case "STOP": calls.isEmpty ? .stop : .toolUse
            case "MAX_TOKENS": .maxTokens
            case "SAFETY", "MODEL_ARMOR": .contentFilter
            case _ where raw.hasPrefix("blocked:"): .contentFilter
            default: FinishReason(rawValue: "unmapped \(raw)")
            }
        #expect(r.finishReason == finish, c)
        if let u = exp["usage"], !u.isNull {
            let thoughts = u["thoughtsTokenCount"]?.intValue ?? 0
            #expect(r.usage == Usage(
                inputTokens: (u["promptTokenCount"]?.intValue ?? 0) + (u["toolUsePromptTokenCount"]?.intValue ?? 0),
                outputTokens: (u["candidatesTokenCount"]?.intValue ?? 0) + thoughts,
                cacheReadTokens: u["cachedContentTokenCount"]?.intValue ?? 0, reasoningTokens: thoughts), c)
        }
    }

    /// The request sent says what the recorded one said: the method and
    /// model, the credential header, system instruction, turns (roles, user
    /// text, function calls and responses by name), tools, temperature.
    static func compare(_ sent: ScriptedServer.Request, _ rec: Recorded, _ name: String) {
        let c = Comment(rawValue: "\(name): \(sent.path) \(sent.body)")
        #expect(sent.path.hasSuffix(rec.path), c)
        if rec.name.hasPrefix("vertex-") {
            #expect(sent.header("authorization") == "Bearer \(token)", c)
        } else {
            #expect(sent.header("x-goog-api-key") == key, c)
        }
        if target(rec.path).method == "streamGenerateContent" { #expect(sent.query == "alt=sse", c) }
        guard let body = sent.json else {
            Issue.record(c)
            return
        }
        let recorded = rec.requestBody
        func system(_ v: JSONValue) -> String { (v["systemInstruction"]?["parts"]?.arrayValue ?? []).compactMap { $0["text"]?.stringValue }.joined() }
        #expect(system(body) == system(recorded), c)
        func shape(_ v: JSONValue) -> [String] {
            (v["contents"]?.arrayValue ?? []).map { content in
                let parts = (content["parts"]?.arrayValue ?? []).compactMap { p -> String? in
                    if let t = p["text"]?.stringValue { return t.isEmpty ? nil : "text \(t)" }
                    if let fc = p["functionCall"] { return "call \(fc["name"]?.stringValue ?? "")" }
                    if let fr = p["functionResponse"] { return "response \(fr["name"]?.stringValue ?? "")" }
                    return nil
                }
                return "\(content["role"]?.stringValue ?? "user"): \(parts.joined(separator: " | "))"
            }
        }
        #expect(shape(body) == shape(recorded), c)
        func tools(_ v: JSONValue) -> [String] {
            (v["tools"]?.arrayValue ?? []).flatMap { $0["functionDeclarations"]?.arrayValue ?? [] }.compactMap { $0["name"]?.stringValue }
        }
        #expect(tools(body) == tools(recorded), c)
        #expect(body["generationConfig"]?["temperature"]?.doubleValue == recorded["generationConfig"]?["temperature"]?.doubleValue, c)
    }
}

/// The plugin's made-up id prefix for calls Gemini sent without an id.
enum GeminiIDs {
    static let prefix = "gemini-call-"
}
