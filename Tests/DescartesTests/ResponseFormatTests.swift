import Descartes
import DescartesSupport
import Testing

/// `ModelRequest.responseFormat` (ABI 1.1): carried in the Request document,
/// sent only to plugins that declare `structured_output`, and mapped by the
/// OpenAI plugin to `response_format`.
@Suite struct ResponseFormatTests {
    let plugins = PluginDir().addEcho().addManifest("openai")
    static let person: JSONValue = [
        "type": "object", "properties": ["name": ["type": "string"], "age": ["type": "integer"]], "required": ["name", "age"],
        "additionalProperties": false,
    ]

    @Test func theRequestDocumentCarriesIt() throws {
        for f in [ResponseFormat.json, .jsonSchema(name: "person", schema: Self.person, strict: false)] {
            var r = ModelRequest(prompt: "who?")
            r.responseFormat = f
            let doc = try JSONValue.parse(bytes: Wire.encode(r))
            #expect(try Wire.decodeRequest(doc).responseFormat == f)
        }
        // .text is the default and is not written (a 1.0 plugin sees the request it always saw).
        #expect(Wire.json(ModelRequest(prompt: "x"))["response_format"] == nil)
        let bad = try JSONValue.parse(#"{"messages": [], "response_format": {"type": "json_schema", "name": "p", "schema": "no"}}"#)
        do { _ = try Wire.decodeRequest(bad); Issue.record("accepted a string schema") } catch {
            #expect(error.message == "request.response_format.schema: expected a JSON Schema object, got string")
        }
        let unknown = try JSONValue.parse(#"{"messages": [], "response_format": {"type": "yaml"}}"#)
        do { _ = try Wire.decodeRequest(unknown); Issue.record("accepted yaml") } catch {
            #expect(error.message == #"request.response_format.type: expected "text", "json" or "json_schema", got "yaml""#)
        }
    }

    @Test func aPluginWithoutTheCapabilityIsNeverSentIt() async throws {
        let echo = try plugins.factory().create("echo")
        var r = ModelRequest(prompt: "json please")
        r.responseFormat = .jsonSchema(name: "person", schema: Self.person)
        let e = try #require(await providerError { _ = try await echo.complete(r) })
        #expect(e.kind == .unsupportedFeature)
        #expect(e.message.contains("JSON matching schema 'person'"), "\(e.message)")
        #expect(e.message.contains("'structured_output'"), "\(e.message)")
        // Text is fine.
        #expect(try await echo.complete(ModelRequest(prompt: "plain")).content == "plain")
        await echo.shutdown()
    }

    @Test func openAIGetsResponseFormat() async throws {
        let server = try await ServerSlot.make()
        let answer = #"{"id":"chatcmpl-9","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"{\"name\":\"Ada\",\"age\":36}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29}}"#
        try await server.script(["POST /v1/chat/completions": [.json(answer)]])
        let b = try plugins.factory().create(
            "openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": "sk-format-test-0a1b2c3d"])
        var r = ModelRequest(prompt: "Ada Lovelace, at 36")
        r.responseFormat = .jsonSchema(name: "person", schema: Self.person, strict: true)
        #expect(try await b.complete(r).content == #"{"name":"Ada","age":36}"#)
        let sent = try #require(try await server.requests().last?.json)
        #expect(sent["response_format"] == ["type": "json_schema", "json_schema": ["name": "person", "schema": Self.person, "strict": true]])
        r.responseFormat = .json
        _ = try await b.complete(r)
        #expect(try #require(try await server.requests().last?.json)["response_format"] == ["type": "json_object"])
        r.responseFormat = .text
        _ = try await b.complete(r)
        #expect(try #require(try await server.requests().last?.json)["response_format"] == nil)
        await b.shutdown()
    }
}
