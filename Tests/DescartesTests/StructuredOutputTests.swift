import Descartes
import DescartesSupport
import Testing

/// Structured output, first-class (issue 18, item 3): the host checks every
/// answer against the request's response format (complete and streamed, in
/// `PluginBackend`, where every backend the factory makes passes), and each
/// plugin maps the format to its provider's own form, asserted on the exact
/// body a loopback server received, through the C ABI.
@Suite struct StructuredOutputTests {
    let plugins = PluginDir().addManifest("openai").addManifest("anthropic").addManifest("openai-responses").addManifest("gemini")
    static let person: JSONValue = [
        "type": "object", "properties": ["name": ["type": "string"], "age": ["type": "integer"]], "required": ["name", "age"],
        "additionalProperties": false,
    ]
    static let asPerson = ResponseFormat.jsonSchema(name: "person", schema: person, strict: true)

    static func request(_ format: ResponseFormat = asPerson, model: String? = nil) -> ModelRequest {
        var r = ModelRequest(prompt: "Ada Lovelace, at 36", model: model)
        r.responseFormat = format
        return r
    }

    /// A chat-completions answer whose content is `content`.
    static func chat(_ content: String, finish: String = "stop") -> String {
        #"{"id":"chatcmpl-9","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":\#(JSONValue.string(content).jsonText)},"finish_reason":"\#(finish)"}],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29}}"#
    }

    /// The same answer as a chat-completions stream, one chunk per piece.
    static func chatStream(_ pieces: [String]) -> String {
        var s = ""
        for p in pieces {
            s += #"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":\#(JSONValue.string(p).jsonText)},"finish_reason":null}]}"# + "\n\n"
        }
        s += #"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"# + "\n\n"
        return s + "data: [DONE]\n\n"
    }

    func openAI(_ server: ServerSlot) throws -> any ModelBackend {
        try plugins.factory().create(
            "openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": "sk-format-test-0a1b2c3d"])
    }

    // MARK: The host's check

    @Test func anAnswerThatDoesNotMatchTheSchemaIsAnInvalidResponseNamingThePathAndTheProvider() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(Self.chat(#"{"name":"Ada","age":"thirty-six"}"#)), .json(Self.chat(#"{"name":"Ada","age":36}"#))]])
        let b = try openAI(server)
        let e = try #require(await providerError { _ = try await b.complete(Self.request()) })
        #expect(e.kind == .invalidResponse)
        #expect(e.provider == "openai")
        #expect(e.message == #"'openai' answered JSON that does not match schema 'person': $.age: expected integer, got string "thirty-six""#)
        #expect(e.sideEffects.isEmpty)  // an API call: nothing ran
        // Not retried by default.
        #expect(RetryPolicy().decide(e, attempt: 1) == .stop(reason: "invalid_response errors are not retried"))
        // The conforming answer passes untouched.
        #expect(try await b.complete(Self.request()).content == #"{"name":"Ada","age":36}"#)
        await b.shutdown()
    }

    @Test func aStreamDeliversThePartialJSONThenFailsAtTheEnd() async throws {
        let server = try await ServerSlot.make()
        let bad = [#"{"name":"#, #""Ada","#, #""age":"#, #"-1.5}"#]
        let good = [#"{"name":"#, #""Ada","#, #""age":36}"#]
        try await server.script(["POST /v1/chat/completions": [.stream(Self.chatStream(bad)), .stream(Self.chatStream(good))]])
        let b = try openAI(server)
        var texts: [String] = []
        var failure: ProviderError? = nil
        do {
            for try await event in b.stream(Self.request()) {
                if case .textDelta(let t) = event { texts.append(t) }
                if case .finish = event { Issue.record("a non-conforming stream finished") }
            }
        } catch { failure = error }
        #expect(texts.joined() == bad.joined())  // the text arrived as it came
        #expect(failure?.kind == .invalidResponse)
        #expect(failure?.message.hasSuffix("$.age: expected integer, got number -1.5") == true, "\(String(describing: failure))")
        let seen = await Observed.stream(b, Self.request())
        #expect(seen.text == good.joined())
        #expect(seen.response?.content == good.joined())
        await b.shutdown()
    }

    @Test func aFencedAnswerIsDeliveredWithoutItsFenceAndProseIsNotJSON() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                .json(Self.chat("```json\n{\"name\": \"Ada\", \"age\": 36}\n```")), .json(Self.chat("Sure! {\"name\": \"Ada\"}")),
                .json(Self.chat("{\"name\": \"Ada\", \"age\": 3", finish: "length")),
            ]
        ])
        let b = try openAI(server)
        #expect(try await b.complete(Self.request()).content == #"{"name": "Ada", "age": 36}"#)
        let prose = try #require(await providerError { _ = try await b.complete(Self.request(.json)) })
        #expect(prose.kind == .invalidResponse)
        #expect(prose.message.hasPrefix("'openai' answered something that is not JSON: $: not JSON ("), "\(prose.message)")
        let cut = try #require(await providerError { _ = try await b.complete(Self.request()) })
        #expect(cut.message.contains("(the answer was cut at the token limit: finish reason max_tokens): $: not JSON ("), "\(cut.message)")
        await b.shutdown()
    }

    @Test func aSchemaTheHostCannotApplyIsRefusedBeforeAnythingIsSent() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(Self.chat("{}"))]])
        let b = try openAI(server)
        let e = try #require(
            await providerError { _ = try await b.complete(Self.request(.jsonSchema(name: "p", schema: ["type": "object", "properties": ["age": ["type": "int"]]]))) })
        #expect(e.kind == .api)
        #expect(e.message.hasPrefix(#"response_format.schema (JSON matching schema 'p'): properties.age.type: "int" is not a type"#), "\(e.message)")
        #expect(try await server.requests().isEmpty)
        await b.shutdown()
    }

    // MARK: Each backend's form

    @Test func ollamaGetsFormat() async throws {
        let answer = { (content: String) in
            #"{"model":"gemma3:1b","created_at":"2026-02-01T10:00:00Z","message":{"role":"assistant","content":\#(JSONValue.string(content).jsonText)},"done_reason":"stop","done":true,"prompt_eval_count":18,"eval_count":9}"#
        }
        let server = try await OllamaTests.server(chat: [.json(answer(#"{"name":"Ada","age":36}"#)), .json(answer("{}")), .json(answer(#"{"name":"Ada","age":"36"}"#))])
        let (b, _) = try OllamaTests.backend(server)
        #expect(try await b.complete(Self.request(model: "gemma3:1b")).content == #"{"name":"Ada","age":36}"#)
        #expect(try await server.requests().last { $0.path == "/api/chat" }?.json?["format"] == Self.person)
        _ = try await b.complete(Self.request(.json, model: "gemma3:1b"))
        #expect(try await server.requests().last { $0.path == "/api/chat" }?.json?["format"] == "json")
        let e = try #require(await providerError { _ = try await b.complete(Self.request(model: "gemma3:1b")) })
        #expect(e.message == #"'ollama' answered JSON that does not match schema 'person': $.age: expected integer, got string "36""#)
        await b.shutdown()
    }

    /// The OpenAI-compatible manifests (groq here; deepseek, mistral,
    /// openrouter, vllm, zai, github-models, azure, llamacpp-openai alike)
    /// send OpenAI's own `response_format`: whether the model behind takes a
    /// schema is the server's to say (its 400 is an `invalid_request`), and
    /// the host still checks what comes back.
    @Test func anOpenAICompatibleManifestSendsOpenAIsResponseFormat() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(Self.chat(#"{"name":"Ada","age":36}"#)), .json(Self.chat(#"{"name":"Ada"}"#))]])
        let dir = PluginDir().addManifest("groq")  // kept: the directory goes with it
        let b = try dir.factory().create(
            "groq", config: ["endpoint": .string("\(server.url)/v1"), "api_key": "gsk-format-test-0a1b2c3d"])
        defer { withExtendedLifetime(dir) {} }
        #expect(try await b.complete(Self.request(model: "llama-3.3-70b-versatile")).content == #"{"name":"Ada","age":36}"#)
        let sent = try #require(try await server.requests().last?.json)
        #expect(sent["response_format"] == ["type": "json_schema", "json_schema": ["name": "person", "schema": Self.person, "strict": true]])
        let e = try #require(await providerError { _ = try await b.complete(Self.request(model: "llama-3.3-70b-versatile")) })
        #expect(e.message == #"'groq' answered JSON that does not match schema 'person': $.age: required property is missing"#, "\(e.message)")
        await b.shutdown()
    }

    /// llama-cpp-python's server (0.3.36) takes `response_format.type` `text`
    /// or `json_object` only, with the schema beside it; llama-server takes
    /// that form too.
    @Test func llamaCppGetsAJSONObjectFormatWithTheSchema() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /v1/models": [.json(LlamaCppTests.models)], "POST /v1/chat/completions": [.json(Self.chat(#"{"name":"Ada","age":36}"#)), .json(Self.chat("{}"))]])
        let (b, _) = try LlamaCppTests.backend(server)
        #expect(try await b.complete(Self.request()).content == #"{"name":"Ada","age":36}"#)
        let sent = try #require(try await server.requests().last { $0.path == "/v1/chat/completions" }?.json)
        #expect(sent["response_format"] == ["type": "json_object", "schema": Self.person])
        _ = try await b.complete(Self.request(.json))
        #expect(try await server.requests().last { $0.path == "/v1/chat/completions" }?.json?["response_format"] == ["type": "json_object"])
        await b.shutdown()
    }

    @Test func anthropicGetsOutputConfigFormatAndRefusesSchemalessJSON() async throws {
        let server = try await ServerSlot.make()
        let message = #"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"{\"name\":\"Ada\",\"age\":36}"}],"stop_reason":"end_turn","usage":{"input_tokens":30,"output_tokens":9}}"#
        try await server.script(["POST /v1/messages": [.json(message)]])
        let b = try plugins.factory().create(
            "anthropic", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(AnthropicPluginTests.key)])
        var r = Self.request(model: "claude-sonnet-4-5")
        r.options["output_config"] = ["effort": "low"]
        #expect(try await b.complete(r).content == #"{"name":"Ada","age":36}"#)
        let sent = try #require(try await server.requests().last?.json)
        #expect(sent["output_config"] == ["effort": "low", "format": ["type": "json_schema", "schema": Self.person]])
        #expect(try await server.requests().last?.header("anthropic-beta")?.contains("structured-outputs") != true)
        let e = try #require(await providerError { _ = try await b.complete(Self.request(.json, model: "claude-sonnet-4-5")) })
        #expect(e.kind == .unsupportedFeature)
        #expect(e.message.contains("take a JSON Schema, not \"any JSON\""), "\(e.message)")
        #expect(try await server.requests().count == 1)
        await b.shutdown()
    }

    @Test func openAIResponsesGetsTextFormat() async throws {
        let server = try await ServerSlot.make()
        let answer = #"{"id":"resp_1","object":"response","status":"completed","model":"gpt-5-mini","output":[{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"{\"name\":\"Ada\",\"age\":36}","annotations":[]}]}],"usage":{"input_tokens":20,"output_tokens":9,"total_tokens":29}}"#
        try await server.script(["POST /v1/responses": [.json(answer), .json(answer)]])
        let b = try plugins.factory().create(
            "openai-responses", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(ResponsesPluginTests.key)])
        var r = Self.request(model: "gpt-5-mini")
        r.options["text"] = ["verbosity": "low"]
        #expect(try await b.complete(r).content == #"{"name":"Ada","age":36}"#)
        #expect(
            try await server.requests().last?.json?["text"]
                == ["verbosity": "low", "format": ["type": "json_schema", "name": "person", "schema": Self.person, "strict": true]])
        _ = try await b.complete(Self.request(.json, model: "gpt-5-mini"))
        #expect(try await server.requests().last?.json?["text"] == ["format": ["type": "json_object"]])
        await b.shutdown()
    }

    @Test func geminiGetsAMimeTypeAndTheSchemaAsWritten() async throws {
        let server = try await ServerSlot.make()
        let answer = #"{"candidates":[{"content":{"parts":[{"text":"{\"name\":\"Ada\",\"age\":36}"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":9,"totalTokenCount":13},"modelVersion":"gemini-2.5-flash"}"#
        try await server.script([GeminiPluginTests.generatePath: [.json(answer), .json(answer)]].keyed("POST"))
        let b = try plugins.factory().create(
            "gemini", config: ["endpoint": .string("\(server.url)/v1beta"), "api_key": .string(GeminiPluginTests.key), "include_thoughts": false])
        #expect(try await b.complete(Self.request(model: "gemini-2.5-flash")).content == #"{"name":"Ada","age":36}"#)
        #expect(
            try await server.requests().last?.json?["generationConfig"]
                == ["responseMimeType": "application/json", "responseJsonSchema": Self.person])
        _ = try await b.complete(Self.request(.json, model: "gemini-2.5-flash"))
        #expect(try await server.requests().last?.json?["generationConfig"] == ["responseMimeType": "application/json"])
        await b.shutdown()
    }
}
