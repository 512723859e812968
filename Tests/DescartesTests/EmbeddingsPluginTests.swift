import Descartes
import Glibc
import Testing
import DescartesSupport

/// ABI 1.1's `embed` in the HTTP plugins, each through the C ABI against a
/// loopback server speaking its provider's exact wire format.
@Suite struct EmbeddingsPluginTests {
    static let key = "sk-openai-embed-test-1a2b3c4d5e"
    let plugins = PluginDir().addManifest("openai").addManifest("llamacpp")

    /// What OpenAI's /v1/embeddings answers (data out of order, as the API
    /// allows: `index` says whose vector it is).
    static let openAIAnswer = #"""
        {"object":"list","data":[
          {"object":"embedding","index":1,"embedding":[0.25,-0.5,0.125]},
          {"object":"embedding","index":0,"embedding":[-0.0062,0.0151,0.9]}],
         "model":"text-embedding-3-small","usage":{"prompt_tokens":7,"total_tokens":7}}
        """#

    @Test(arguments: [ProviderFactory.Isolation.inProcess, .process(Sanitizer.limits(.isolatedPlugin))])
    func openAIEmbedsThroughV1Embeddings(_ isolation: ProviderFactory.Isolation) async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/embeddings": [.json(Self.openAIAnswer)]])
        let b = try plugins.factory().create(
            "openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)], isolation: isolation)
        let e = try await b.embed(["first text", "second"])
        #expect(e.vectors == [[-0.0062, 0.0151, 0.9], [0.25, -0.5, 0.125]])
        #expect(e.dimensions == 3)
        #expect(e.model == "text-embedding-3-small")
        #expect(e.usage.inputTokens == 7)
        #expect(e.provider == "openai")
        let sent = try #require(try await server.requests().first)
        #expect(sent.header("Authorization") == "Bearer \(Self.key)")
        let body = try #require(sent.json)
        #expect(body["model"]?.stringValue == "text-embedding-3-small")  // the manifest's embedding_model
        #expect(body["input"] == ["first text", "second"])
        #expect(body["encoding_format"]?.stringValue == "float")
        #expect(body["dimensions"] == nil)
        // The request's model and dimensions are sent as asked.
        _ = try await b.embed(EmbeddingRequest(["first text", "second"], model: "text-embedding-3-large", dimensions: 3))
        let second = try #require(try await server.requests().last?.json)
        #expect(second["model"]?.stringValue == "text-embedding-3-large")
        #expect(second["dimensions"]?.intValue == 3)
        await b.shutdown()
    }

    @Test func openAIErrorsAndMalformedAnswersAreNamed() async throws {
        let server = try await ServerSlot.make()
        let b = try plugins.factory().create("openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
        try await server.script([
            "POST /v1/embeddings": [
                .json(#"{"error":{"message":"Incorrect API key provided: sk-op***5e.","type":"invalid_request_error","code":"invalid_api_key"}}"#, status: 401),
                .json(#"{"data":[{"index":0,"embedding":"AAAAAA=="}]}"#),
                .json(#"{"data":[{"index":0,"embedding":[1,2]},{"index":1,"embedding":[3]}]}"#),
                .json(#"{"data":[{"index":0,"embedding":[1,2]}]}"#),
            ]
        ])
        let auth = try #require(await providerError { _ = try await b.embed(["a"]) })
        #expect(auth.kind == .authentication, "\(auth)")
        #expect(!auth.message.contains(Self.key))
        let b64 = try #require(await providerError { _ = try await b.embed(["a"]) })
        #expect(b64.kind == .invalidResponse)
        #expect(b64.message.hasSuffix("data[0].embedding: expected an array of numbers, got string"), "\(b64.message)")
        let ragged = try #require(await providerError { _ = try await b.embed(["a", "b"]) })
        #expect(ragged.message.hasSuffix("data[1]: 1 numbers, but the first embedding has 2"), "\(ragged.message)")
        let short = try #require(await providerError { _ = try await b.embed(["a", "b"]) })
        #expect(short.message.hasSuffix("1 embeddings for 2 inputs"), "\(short.message)")
        await b.shutdown()
    }

    /// llama.cpp's server (llama-server --embeddings, or llama-cpp-python)
    /// speaks OpenAI's /v1/embeddings; it names no model it was not started with.
    @Test func llamaCppEmbedsThroughV1Embeddings() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "GET /v1/models": [.json(#"{"object":"list","data":[{"id":"gemma-3-270m-it-Q8_0.gguf","object":"model","owned_by":"llamacpp"}]}"#)],
            "POST /v1/embeddings": [
                .json(#"{"model":"gemma-3-270m-it-Q8_0.gguf","object":"list","usage":{"prompt_tokens":4,"total_tokens":4},"data":[{"embedding":[0.5,0.25],"index":0,"object":"embedding"}]}"#)
            ]
        ])
        let b = try plugins.factory().create("llamacpp", config: ["endpoint": .string("\(server.url)/v1")])
        let e = try await b.embed(["hello llama"])
        #expect(e.vectors == [[0.5, 0.25]])
        #expect(e.usage.inputTokens == 4)
        let body = try #require(try await server.requests().last(where: { $0.path == "/v1/embeddings" })?.json)
        #expect(body["input"] == ["hello llama"])
        await b.shutdown()
    }
}
