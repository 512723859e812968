import Descartes
import DescartesSupport
import Testing

/// The embeddings cache (`CacheBackend.embed`, providers.yaml's
/// `cache.embeddings`): libdescartes-openai.so through the C ABI against a
/// loopback server that counts what it is asked; it must see only the
/// texts the cache has not seen.
@Suite struct EmbeddingCacheTests {
    static let key = "sk-openai-embed-test-1a2b3c4d5e"
    let plugins = PluginDir().addManifest("openai")

    static func answer(_ vectors: [[Double]], tokens: Int) -> ScriptedServer.Response {
        let data: [JSONValue] = vectors.enumerated().map { i, v in
            ["object": "embedding", "index": .integer(i), "embedding": .array(v.map { .number($0) })]
        }
        return .json(["object": "list", "data": .array(data), "model": "text-embedding-3-small", "usage": ["prompt_tokens": .integer(tokens), "total_tokens": .integer(tokens)]])
    }

    /// The texts each request to /v1/embeddings asked for, in order.
    static func inputs(_ server: ServerSlot) async throws -> [[String]] {
        try await server.requests().filter { $0.path == "/v1/embeddings" }.map { r in (r.json?["input"]?.arrayValue ?? []).compactMap(\.stringValue) }
    }

    @Test func onlyTheMissesReachTheProviderInOrderAndTheDiskStoreAnswersTheNextCache() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/embeddings": [
                Self.answer([[1, 0], [0, 1]], tokens: 4),  // a, b
                Self.answer([[0.5, 0.25]], tokens: 2),  // c
                Self.answer([[9, 9, 9]], tokens: 1),  // a at 3 dimensions
            ]
        ])
        let dir = TempDir("embedding-cache")
        let plain = try plugins.factory().create("openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
        let cache = ResponseCache(limits: CacheLimits(directory: dir.file("store")))
        let b = CacheBackend(plain, cache: cache)

        let first = try await b.embed(["a", "b"])
        #expect(first.vectors == [[1, 0], [0, 1]])
        #expect(first.usage.inputTokens == 4)
        // Hits and misses mixed, a missed text twice: only "c" is sent, once; the order is the inputs'.
        let mixed = try await b.embed(["b", "c", "a", "c"])
        #expect(mixed.vectors == [[0, 1], [0.5, 0.25], [1, 0], [0.5, 0.25]])
        #expect(mixed.dimensions == 2)
        #expect(mixed.usage.inputTokens == 2)
        #expect(mixed.model == "text-embedding-3-small")
        // All seen: the provider is not called.
        let seen = try await b.embed(["c", "a"])
        #expect(seen.vectors == [[0.5, 0.25], [1, 0]])
        #expect(seen.usage.inputTokens == 0)
        #expect(seen.model == "text-embedding-3-small")
        #expect(try await Self.inputs(server) == [["a", "b"], ["c"]])

        // A fresh cache on the same directory (another process) answers from the disk.
        let next = CacheBackend(plain, cache: ResponseCache(limits: CacheLimits(directory: dir.file("store"))))
        #expect(try await next.embed(["b", "c"]).vectors == [[0, 1], [0.5, 0.25]])
        #expect(try await Self.inputs(server).count == 2)
        // The dimensions asked for are part of the key, as are the model and the provider instance.
        #expect(try await next.embed(EmbeddingRequest(["a"], dimensions: 3)).vectors == [[9, 9, 9]])
        #expect(try await Self.inputs(server) == [["a", "b"], ["c"], ["a"]])
        #expect(
            ResponseCache.embeddingKey("a", model: nil, dimensions: nil, namespace: "openai")
                != ResponseCache.embeddingKey("a", model: "text-embedding-3-large", dimensions: nil, namespace: "openai"))
        #expect(
            ResponseCache.embeddingKey("a", model: nil, dimensions: nil, namespace: "openai")
                != ResponseCache.embeddingKey("a", model: nil, dimensions: nil, namespace: "lab"))
        // Not cached when told not to.
        let off = CacheBackend(plain, cache: cache, embeddings: false)
        _ = try? await off.embed(["a"])
        #expect(try await Self.inputs(server).count == 4)
        await plain.shutdown()
    }

    /// providers.yaml's `cache:` turns it on for `descartes embed` (one
    /// process each: the disk store carries it over); `embeddings: false`
    /// turns it off; `config check` names a bad value at its line.
    @Test func descartesEmbedUsesTheCacheOfProvidersYaml() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/embeddings": [
                Self.answer([[1, 2], [3, 4]], tokens: 4),  // one, two
                Self.answer([[5, 6]], tokens: 2),  // three
            ]
        ])
        let work = TempDir("embedding-cache-cli")
        let config = work.write(
            "providers.yaml",
            """
            providers:
              lab: {plugin: openai, endpoint: "\(server.url)/v1", api_key: "${LAB_KEY}"}
            cache:
              directory: \(work.file("store"))
            """)
        let env = ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent", "LAB_KEY": Self.key]
        let first = await Proc.descartes(["--config", config, "embed", "-p", "lab", "one", "two"], env: env)
        #expect(first.status == 0, "\(first)")
        let second = await Proc.descartes(["--config", config, "embed", "-p", "lab", "two", "three", "one"], env: env)
        #expect(second.status == 0, "\(second)")
        #expect(try JSONValue.parse(second.stdout)["embeddings"] == [[3.0, 4.0], [5.0, 6.0], [1.0, 2.0]])
        #expect(try await Self.inputs(server) == [["one", "two"], ["three"]])
        // --no-cache asks the provider.
        let bypass = await Proc.descartes(["--config", config, "embed", "-p", "lab", "--no-cache", "three"], env: env)
        #expect(bypass.status == 0, "\(bypass)")
        #expect(try await Self.inputs(server) == [["one", "two"], ["three"], ["three"]])

        let bad = work.write("bad.yaml", "cache:\n  directory: \(work.file("store"))\n  embeddings: sometimes\n")
        let check = await Proc.descartes(["--config", bad, "config", "check"], env: env)
        #expect(check.status != 0, "\(check)")
        #expect((check.stdout + check.stderr).contains("bad.yaml:3:15"), "\(check)")
        #expect((check.stdout + check.stderr).contains("'embeddings' must be true or false"), "\(check)")
    }

    /// `SemanticCacheBackend`: a request close enough to an earlier one is
    /// answered with its answer; one further away, or one with tools, goes
    /// to the provider (the latter without being embedded at all).
    @Test func theSemanticPathAnswersNearDuplicatesAndNeverRequestsWithTools() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/embeddings": [
                Self.answer([[1, 0]], tokens: 3),  // "capital of France?"
                Self.answer([[0.99, 0.1]], tokens: 3),  // "France's capital?": 0.995
                Self.answer([[0.6, 0.8]], tokens: 3),  // "capital of Peru?": 0.6
            ],
            "POST /v1/chat/completions": [
                ToolLoopTests.openAIAnswer(["role": "assistant", "content": "Paris"], finish: "stop", prompt: 10, completion: 1),
                ToolLoopTests.openAIAnswer(["role": "assistant", "content": "Lima"], finish: "stop", prompt: 10, completion: 1),
                ToolLoopTests.openAIAnswer(["role": "assistant", "content": "with tools"], finish: "stop", prompt: 10, completion: 1),
            ],
        ])
        let plain = try plugins.factory().create("openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
        let b = SemanticCacheBackend(plain, cache: SemanticCache(embedder: plain, threshold: 0.95))
        let first = try await b.complete("capital of France?")
        #expect(first.text == "Paris")
        #expect(first.metadata["cache"] == nil)
        let near = try await b.complete("France's capital?")
        #expect(near.text == "Paris")
        #expect(near.metadata["cache"] == "semantic")
        #expect(near.metadata["similarity"]?.doubleValue.map { $0 > 0.99 && $0 < 1 } == true)
        #expect(near.costUSD == 0)
        let far = try await b.complete("capital of Peru?")
        #expect(far.text == "Lima")
        var withTools = ModelRequest(prompt: "France's capital?")
        withTools.tools = [ToolLoopTests.weatherTool]
        #expect(try await b.complete(withTools).text == "with tools")
        #expect(SemanticCache.text(of: ModelRequest(messages: [.user("x"), .tool(callID: "c", "y")])) == nil)
        let sent = try await server.requests()
        #expect(sent.filter { $0.path == "/v1/chat/completions" }.count == 3)
        // Three conversations embedded, in the role-tagged form; the request with tools was not.
        #expect(try await Self.inputs(server) == [["user: capital of France?"], ["user: France's capital?"], ["user: capital of Peru?"]])
        await plain.shutdown()
    }
}
