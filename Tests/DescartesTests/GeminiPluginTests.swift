import Descartes
import Testing

/// libdescartes-gemini.so (factories gemini and vertex) through the C ABI
/// against a real HTTP server on 127.0.0.1 speaking the Gemini wire format:
/// SSE with CRLF line ends, thought parts, parallel function calls, usage
/// with cached and thought tokens, safety stops, Google's error bodies,
/// countTokens, models.list, and Vertex AI's resource paths and bearer token.
@Suite struct GeminiPluginTests {
    static let key = "AIzaSyTest0011223344556677889900aabbccdd"
    static let token = "ya29.test-access-token-00112233445566"
    let plugins = PluginDir().addManifest("gemini").addManifest("vertex")

    func gemini(_ server: ServerSlot, _ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        var config: [String: JSONValue] = ["endpoint": .string("\(server.url)/v1beta"), "api_key": .string(Self.key)]
        for (k, v) in extra { config[k] = v }
        return try plugins.factory().create("gemini", config: config)
    }

    func vertex(_ server: ServerSlot) throws -> any ModelBackend {
        try plugins.factory().create(
            "vertex",
            config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.token), "project": "my-proj", "location": "europe-west4"])
    }

    static let streamPath = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    static let generatePath = "/v1beta/models/gemini-2.5-flash:generateContent"

    /// One SSE event as Google sends it: `data: {json}` and CRLF line ends.
    static func event(_ json: String) -> String { "data: \(json)\r\n\r\n" }

    /// Thoughts, text with a multi-byte character, two function calls in one
    /// chunk (the first with the thought signature) and a third in the next,
    /// usage growing chunk by chunk (the last counts).
    static let fullStream: String = [
        #"{"candidates": [{"content": {"parts": [{"text": "**Planning** I should look up both cities.", "thought": true}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 120,"totalTokenCount": 140,"thoughtsTokenCount": 20},"modelVersion": "gemini-2.5-flash","responseId": "resp-01"}"#,
        #"{"candidates": [{"content": {"parts": [{"text": "Voilà, "}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 120,"candidatesTokenCount": 2,"totalTokenCount": 142,"thoughtsTokenCount": 20},"modelVersion": "gemini-2.5-flash","responseId": "resp-01"}"#,
        #"{"candidates": [{"content": {"parts": [{"text": "checking."}, {"functionCall": {"name": "weather","args": {"city": "Paris"}},"thoughtSignature": "c2lnLTE="}, {"functionCall": {"name": "weather","args": {"city": "Rome"}}}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 120,"candidatesTokenCount": 30,"totalTokenCount": 170,"thoughtsTokenCount": 20},"modelVersion": "gemini-2.5-flash","responseId": "resp-01"}"#,
        #"{"candidates": [{"content": {"parts": [{"functionCall": {"id": "fc-3", "name": "time","args": {}}}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 120,"candidatesTokenCount": 40,"totalTokenCount": 180,"cachedContentTokenCount": 100,"thoughtsTokenCount": 20,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 120}],"cacheTokensDetails": [{"modality": "TEXT","tokenCount": 100}]},"modelVersion": "gemini-2.5-flash","responseId": "resp-01"}"#,
    ].map(event).joined()

    @Test(arguments: [nil, "bytes:1", "bytes:7", "lines"] as [String?])
    func aStreamWithThoughtsTextAndParallelCalls(_ split: String?) async throws {
        let server = try await ServerSlot.make()
        try await server.script([Self.streamPath: [.stream(Self.fullStream, split: split)]].keyed("POST"))
        let b = try gemini(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "weather in Paris and Rome, and the time?"))
        let r = try #require(seen.response, "\(seen)")
        #expect(seen.reasoning == "**Planning** I should look up both cities.")
        #expect(seen.text == "Voilà, checking.")
        #expect(r.toolCalls == [
            ToolCall(id: "gemini-call-0", name: "weather", arguments: #"{"city":"Paris"}"#),
            ToolCall(id: "gemini-call-1", name: "weather", arguments: #"{"city":"Rome"}"#),
            ToolCall(id: "fc-3", name: "time", arguments: "{}"),
        ])
        #expect(r.finishReason == .toolUse)
        #expect(r.metadata["provider_finish_reason"] == "STOP")
        #expect(r.metadata["thought_signature"] == "c2lnLTE=")
        #expect(r.id == "resp-01")
        #expect(r.model == "gemini-2.5-flash")
        // promptTokenCount includes the cached tokens; output counts the thoughts too.
        #expect(r.usage == Usage(inputTokens: 120, outputTokens: 60, cacheReadTokens: 100, reasoningTokens: 20))
        // gemini-2.5-flash: 20 plain input at $0.30, 100 cache reads at $0.03, 60 output at $2.50.
        let cost = (20 * 0.30 + 100 * 0.03 + 60 * 2.50) / 1e6
        #expect(r.costUSD.map { abs($0 - cost) < 1e-12 } == true, "\(String(describing: r.costUSD))")
        let sent = try #require(try await server.requests().first)
        #expect(sent.path == Self.streamPath)
        #expect(sent.query == "alt=sse")
        #expect(sent.header("x-goog-api-key") == Self.key)
        #expect(sent.header("authorization") == nil)
        #expect(sent.header("accept") == "text/event-stream")
        await b.shutdown()
    }

    @Test func sendsTheGenerateContentRequest() async throws {
        let server = try await ServerSlot.make()
        try await server.script([Self.streamPath: [.stream(Self.fullStream)]].keyed("POST"))
        let b = try gemini(server)
        let schema: JSONValue = [
            "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "additionalProperties": false,
            "properties": [
                "city": ["type": "string", "examples": ["Paris"]],
                "unit": ["const": "celsius"],
                "when": ["type": ["string", "null"], "format": "date-time"],
                "place": ["$ref": "#/$defs/Place"],
                "count": ["type": "integer", "enum": [1, 2], "exclusiveMinimum": 0],
            ],
            "required": ["city"],
            "$defs": ["Place": ["type": "object", "properties": ["name": ["type": "string"]], "additionalProperties": false]],
        ]
        var r = ModelRequest(
            messages: [
                .system("Also be kind."),
                .user("weather in Paris and Rome?"),
                Message(
                    role: .assistant, content: "Checking.",
                    toolCalls: [ToolCall(id: "gemini-call-0", name: "weather", arguments: #"{"city":"Paris"}"#), ToolCall(id: "fc-9", name: "weather", arguments: #"{"city":"Rome"}"#)],
                    reasoning: "two calls", reasoningSignature: "c2ln"),
                .tool(callID: "gemini-call-0", "18C"),
                .tool(callID: "fc-9", #"{"temp": 25}"#),
                .user("and tomorrow?"),
            ],
            maxTokens: 500, temperature: 0.5, topP: 0.9, systemPrompt: "Be brief.",
            tools: [Tool(name: "weather", description: "Weather", parameters: schema)],
            toolChoice: .tool("weather"), stop: ["###"])
        r.options = [
            "response_format": ["type": "json_schema", "json_schema": ["name": "w", "schema": ["type": "object", "properties": ["ok": ["type": "boolean"]], "additionalProperties": false]]],
            "top_k": 40,
            "safetySettings": [["category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"]],
            "tools": [["googleSearch": [:]]],
        ]
        let seen = await Observed.stream(b, r)
        #expect(seen.response != nil, "\(seen)")
        // What was dropped from the schemas is said, in a notice.
        let notices = seen.events.compactMap { e -> String? in if case .notice(_, let m) = e { return m }; return nil }
        #expect(notices.contains { $0.contains("tool 'weather'") && $0.contains("additionalProperties") && $0.contains("exclusiveMinimum") }, "\(notices)")
        let sent = try #require(try await server.requests().first)
        let body = try #require(sent.json)
        #expect(body["systemInstruction"] == ["parts": [["text": "Be brief.\n\nAlso be kind."]]])
        let contents = try #require(body["contents"]?.arrayValue)
        #expect(contents.map { $0["role"] } == ["user", "model", "user"])
        #expect(contents[1]["parts"] == [
            ["text": "Checking."],
            ["functionCall": ["name": "weather", "args": ["city": "Paris"]], "thoughtSignature": "c2ln"],
            ["functionCall": ["name": "weather", "args": ["city": "Rome"], "id": "fc-9"]],
        ])
        // Tool results are named after their calls; text becomes {"output": ...}.
        #expect(contents[2]["parts"] == [
            ["functionResponse": ["name": "weather", "response": ["output": "18C"]]],
            ["functionResponse": ["name": "weather", "response": ["temp": 25], "id": "fc-9"]],
            ["text": "and tomorrow?"],
        ])
        let decl = try #require(body["tools"]?[0]?["functionDeclarations"]?[0])
        #expect(decl["name"] == "weather")
        #expect(decl["parameters"] == [
            "type": "object",
            "properties": [
                "city": ["example": "Paris", "type": "string"],
                "unit": ["enum": ["celsius"], "type": "string"],
                "when": ["type": "string", "nullable": true, "format": "date-time"],
                "place": ["type": "object", "properties": ["name": ["type": "string"]]],
                "count": ["type": "integer"],
            ],
            "required": ["city"],
        ])
        #expect(body["tools"]?[1] == ["googleSearch": [:]])  // Gemini's own tools after the declarations
        #expect(body["toolConfig"] == ["functionCallingConfig": ["mode": "ANY", "allowedFunctionNames": ["weather"]]])
        let gen = try #require(body["generationConfig"])
        #expect(gen["temperature"] == 0.5)
        #expect(gen["topP"] == 0.9)
        #expect(gen["maxOutputTokens"] == 500)
        #expect(gen["stopSequences"] == ["###"])
        #expect(gen["topK"] == 40)
        #expect(gen["responseMimeType"] == "application/json")
        #expect(gen["responseSchema"] == ["type": "object", "properties": ["ok": ["type": "boolean"]]])
        #expect(gen["thinkingConfig"] == ["includeThoughts": true])
        #expect(body["safetySettings"] == [["category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"]])
        #expect(body["response_format"] == nil && body["top_k"] == nil)
        await b.shutdown()
    }

    @Test func completeReadsAWholeResponse() async throws {
        let server = try await ServerSlot.make()
        let whole = #"{"candidates": [{"content": {"parts": [{"text": "thinking...", "thought": true}, {"text": "Hello!"}],"role": "model"},"finishReason": "MAX_TOKENS","index": 0}],"usageMetadata": {"promptTokenCount": 4,"candidatesTokenCount": 2,"totalTokenCount": 16,"thoughtsTokenCount": 10},"modelVersion": "gemini-2.5-pro","responseId": "r2"}"#
        try await server.script(["POST /v1beta/models/gemini-2.5-pro:generateContent": [.json(whole)]])
        let b = try gemini(server, ["include_thoughts": false])
        let seen = await Observed.complete(b, ModelRequest(prompt: "hi", model: "models/gemini-2.5-pro"))
        let r = try #require(seen.response, "\(seen)")
        #expect(r.content == "Hello!")
        #expect(r.reasoning == "thinking...")
        #expect(r.finishReason == .maxTokens)
        #expect(r.usage == Usage(inputTokens: 4, outputTokens: 12, reasoningTokens: 10))
        let body = try #require(try await server.requests().first?.json)
        #expect(body["generationConfig"] == nil)  // include_thoughts off, nothing else set
        await b.shutdown()
    }

    /// streamGenerateContent without alt=sse answers one JSON array of
    /// chunks; a server that does so is read too.
    @Test func aJSONArrayOfChunksIsReadWhole() async throws {
        let server = try await ServerSlot.make()
        let array = "[{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"}}]}\r\n,\r\n{\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}]}]"
        try await server.script([Self.streamPath: [.stream(array, contentType: "application/json")]].keyed("POST"))
        let b = try gemini(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.text == "Hello", "\(seen)")
        #expect(seen.response?.finishReason == .stop)
        await b.shutdown()
    }

    // MARK: Safety, cuts, errors

    @Test func safetyStopsAreContentFilter() async throws {
        let server = try await ServerSlot.make()
        let stopped = Self.event(#"{"candidates": [{"content": {"parts": [{"text": "Here is how"}],"role": "model"},"index": 0}]}"#)
            + Self.event(#"{"candidates": [{"content": {"role": "model"},"finishReason": "SAFETY","index": 0,"safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT","probability": "HIGH","blocked": true}]}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8}}"#)
        let blocked = Self.event(#"{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.5-flash"}"#)
        try await server.script([Self.streamPath: [.stream(stopped), .stream(blocked)]].keyed("POST"))
        let b = try gemini(server)
        let first = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(first.text == "Here is how")
        #expect(first.response?.finishReason == .contentFilter, "\(first)")
        #expect(first.response?.metadata["provider_finish_reason"] == "SAFETY")
        #expect(first.response?.metadata["safety_ratings"]?[0]?["category"] == "HARM_CATEGORY_DANGEROUS_CONTENT")
        let second = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(second.text == "")
        #expect(second.response?.finishReason == .contentFilter, "\(second)")
        #expect(second.response?.metadata["block_reason"] == "PROHIBITED_CONTENT")
        await b.shutdown()
    }

    @Test func aStreamWithoutAFinishReasonWasCut() async throws {
        let server = try await ServerSlot.make()
        let full = Self.fullStream
        let cut = String(full[..<full.range(of: "data: ", options: .backwards)!.lowerBound])
        try await server.script([Self.streamPath: [.stream(full).with(["reset_after": .integer(full.utf8.count / 2)]), .stream(cut)]].keyed("POST"))
        let b = try gemini(server)
        let reset = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(reset.error?.kind == .streamClosed, "\(reset)")
        let clean = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(clean.error?.kind == .streamClosed, "\(clean)")
        #expect(clean.error?.message.contains("finishReason") == true)
        await b.shutdown()
    }

    @Test func anErrorInsideTheStreamEndsIt() async throws {
        let server = try await ServerSlot.make()
        let body = Self.event(#"{"candidates": [{"content": {"parts": [{"text": "Half"}],"role": "model"},"index": 0}]}"#)
            + Self.event(#"{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}"#)
        try await server.script([Self.streamPath: [.stream(body)]].keyed("POST"))
        let b = try gemini(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.text == "Half")
        #expect(seen.error?.kind == .providerUnavailable, "\(seen)")
        #expect(seen.error?.providerType == "UNAVAILABLE")
        #expect(seen.error?.message.contains("overloaded") == true)
        await b.shutdown()
    }

    static let quota = #"{"error": {"code": 429, "message": "You exceeded your current quota, please check your plan and billing details.", "status": "RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count", "quotaId": "GenerateContentPaidTierInputTokensPerModelPerMinute"}]}, {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}, {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "21.5s"}]}}"#
    static let badKey = #"{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}, {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "API key not valid. Please pass a valid API key."}]}}"#

    @Test(arguments: [
        (429, quota, ProviderError.Kind.rateLimited, "RESOURCE_EXHAUSTED", 21_500),
        (400, badKey, .authentication, "API_KEY_INVALID", nil),
        (400, #"{"error": {"code": 400, "message": "* GenerateContentRequest.contents: contents is not specified\n", "status": "INVALID_ARGUMENT"}}"#, .api, "INVALID_ARGUMENT", nil),
        (403, #"{"error": {"code": 403, "message": "Method doesn't allow unregistered callers.", "status": "PERMISSION_DENIED"}}"#, .authentication, "PERMISSION_DENIED", nil),
        (404, #"{"error": {"code": 404, "message": "models/gemini-9 is not found for API version v1beta", "status": "NOT_FOUND"}}"#, .api, "NOT_FOUND", nil),
        (500, #"{"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}"#, .providerUnavailable, "INTERNAL", nil),
        (503, #"{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}"#, .providerUnavailable, "UNAVAILABLE", nil),
        (504, #"{"error": {"code": 504, "message": "Deadline expired before operation could complete.", "status": "DEADLINE_EXCEEDED"}}"#, .providerUnavailable, "DEADLINE_EXCEEDED", nil),
    ] as [(Int, String, ProviderError.Kind, String, Int?)])
    func mapsGoogleErrors(_ status: Int, _ body: String, _ kind: ProviderError.Kind, _ type: String, _ retryMS: Int?) async throws {
        let server = try await ServerSlot.make()
        // Streamed and whole requests get the same error; a 429 also carries a Retry-After the RetryInfo overrides.
        let headers: [(String, String)] = status == 429 ? [("retry-after", "60")] : []
        try await server.script([
            Self.streamPath: [.error(status, body, headers: headers)], Self.generatePath: [.error(status, "[" + body + "]", headers: headers)],
        ].keyed("POST"))
        let b = try gemini(server)
        for streaming in [true, false] {
            let seen = streaming ? await Observed.stream(b, ModelRequest(prompt: "x")) : await Observed.complete(b, ModelRequest(prompt: "x"))
            let e = try #require(seen.error, "\(seen)")
            #expect(e.kind == kind, "\(e)")
            #expect(e.status == status)
            #expect(e.providerType == type)
            #expect(e.retryAfter == retryMS.map { .milliseconds($0) })
            #expect(!e.message.contains(Self.key))
        }
        await b.shutdown()
    }

    // MARK: Other operations

    @Test func countTokensAndModels() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1beta/models/gemini-2.5-flash:countTokens": [.json(#"{"totalTokens": 31, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 31}]}"#)],
            "GET /v1beta/models": [
                .json(#"{"models": [{"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash", "inputTokenLimit": 1048576, "outputTokenLimit": 65536, "supportedGenerationMethods": ["generateContent", "countTokens"], "thinking": true}], "nextPageToken": "page+2/="}"#),
                .json(#"{"models": [{"name": "models/embedding-001", "inputTokenLimit": 2048, "supportedGenerationMethods": ["embedContent"]}]}"#),
            ],
        ])
        let b = try gemini(server)
        var r = ModelRequest(prompt: "count me", system: "sys")
        r.tools = [Tool(name: "f", description: "", parameters: [:])]
        let t = try await b.estimateTokens(r)
        #expect(t == TokenEstimate(tokens: 31, exact: true, method: "api:countTokens"))
        let models = try await b.listModels()
        #expect(models.map(\.id) == ["gemini-2.5-flash", "embedding-001"])
        #expect(models[0].contextLength == 1_048_576)
        #expect(models[0].details["max_output"] == 65536)
        let sent = try await server.requests()
        let count = try #require(sent.first { $0.path.hasSuffix(":countTokens") })
        #expect(count.json?["generateContentRequest"]?["model"] == "models/gemini-2.5-flash")
        #expect(count.json?["generateContentRequest"]?["systemInstruction"] == ["parts": [["text": "sys"]]])
        #expect(count.json?["generateContentRequest"]?["tools"]?[0]?["functionDeclarations"]?[0] == ["name": "f"])
        #expect(count.json?["generateContentRequest"]?["generationConfig"] == nil)
        let pages = sent.filter { $0.path == "/v1beta/models" }.map(\.query)
        #expect(pages == ["pageSize=1000", "pageSize=1000&pageToken=page%2B2%2F%3D"])
        await b.shutdown()
    }

    @Test func aModelIdThatIsNotAPathSegmentIsRefused() async throws {
        let server = try await ServerSlot.make()
        let b = try gemini(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "x", model: "../files/x"))
        #expect(seen.error?.kind == .api, "\(seen)")
        #expect(try await server.requests().isEmpty)
        await b.shutdown()
    }

    // MARK: Vertex AI

    @Test func vertexUsesTheProjectPathAndABearerToken() async throws {
        let server = try await ServerSlot.make()
        let base = "/v1/projects/my-proj/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
        try await server.script([
            "POST \(base):streamGenerateContent": [.stream(Self.fullStream)],
            "POST \(base):countTokens": [.json(#"{"totalTokens": 7, "totalBillableCharacters": 20}"#)],
        ])
        let b = try vertex(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.response?.toolCalls.count == 3, "\(seen)")
        let t = try await b.estimateTokens(ModelRequest(prompt: "count me"))
        #expect(t.tokens == 7 && t.exact)
        let health = try await b.healthCheck()
        #expect(health.message.contains(":countTokens answered 200"))
        let sent = try await server.requests()
        #expect(sent.count == 3)
        #expect(sent[0].query == "alt=sse")
        for q in sent {
            #expect(q.header("authorization") == "Bearer \(Self.token)")
            #expect(q.header("x-goog-api-key") == nil)
        }
        // Vertex's countTokens takes contents at the top level.
        #expect(sent[1].json?["contents"]?[0]?["parts"]?[0]?["text"] == "count me")
        #expect(sent[1].json?["generateContentRequest"] == nil)
        await b.shutdown()
    }

    @Test func vertexNeedsAProject() throws {
        #expect(throws: ProviderError.self) {
            _ = try plugins.factory(environment: [:]).create("vertex", config: ["api_key": "t", "project": ""])
        }
    }
}

extension Dictionary where Key == String, Value == [ScriptedServer.Response] {
    /// Routes keyed by path alone, under one method.
    func keyed(_ method: String) -> [String: [ScriptedServer.Response]] {
        Dictionary(uniqueKeysWithValues: map { ("\(method) \($0.key)", $0.value) })
    }
}
