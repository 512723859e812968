import Descartes
import Glibc
import Testing

/// libdescartes-llamacpp.so, through the C ABI, against a scripted server on
/// 127.0.0.1 speaking llama-server's and llama-cpp-python's dialects: usage
/// and timings in the last chunk (llama-server), no usage at all
/// (llama-cpp-python), their tokenizers, 503 while loading, /health.
/// The same plugin against a real model: RealModelTests.
@Suite(.serialized) struct LlamaCppTests {
    /// A stream in llama-server's shape (b5000 and later): a role chunk with
    /// null content, one chunk per token, `usage` and `timings` on the
    /// finish chunk, then [DONE].
    static func llamaServerStream(_ words: [String], finish: String = "stop", usage: Bool = true) -> String {
        var out = ""
        func chunk(_ choice: String, extra: String = "") -> String {
            #"data: {"choices":[\#(choice)],"created":1764000000,"id":"chatcmpl-Qz4mB1","model":"gemma-3-270m-q4_k_m.gguf","system_fingerprint":"b6950-2bf1d3e4","object":"chat.completion.chunk"\#(extra)}"# + "\n\n"
        }
        out += chunk(#"{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}"#)
        for w in words {
            let escaped = JSONValue.string(w).jsonText
            out += chunk(#"{"finish_reason":null,"index":0,"delta":{"content":\#(escaped)}}"#)
        }
        let u = usage
            ? #","usage":{"completion_tokens":\#(words.count),"prompt_tokens":11,"total_tokens":\#(words.count + 11)},"timings":{"prompt_n":11,"prompt_ms":21.5,"prompt_per_token_ms":1.95,"prompt_per_second":511.6,"predicted_n":\#(words.count),"predicted_ms":80.2,"predicted_per_token_ms":20.05,"predicted_per_second":49.9}"#
            : ""
        out += chunk(#"{"finish_reason":"\#(finish)","index":0,"delta":{}}"#, extra: u)
        out += "data: [DONE]\n\n"
        return out
    }

    /// The same answer as llama-cpp-python's server streams it: no usage,
    /// `logprobs: null` on every choice.
    static func pythonStream(_ words: [String], finish: String = "length") -> String {
        var out = ""
        func chunk(_ delta: String, _ reason: String) -> String {
            #"data: {"id": "chatcmpl-5e2a", "model": "gemma-3-270m", "created": 1795539854, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": \#(delta), "logprobs": null, "finish_reason": \#(reason)}]}"# + "\r\n\r\n"
        }
        out += chunk(#"{"role": "assistant"}"#, "null")
        for w in words { out += chunk(#"{"content": \#(JSONValue.string(w).jsonText)}"#, "null") }
        out += chunk("{}", "\"\(finish)\"")
        out += "data: [DONE]\r\n\r\n"
        return out
    }

    static let models = #"{"object":"list","data":[{"id":"gemma-3-270m-q4_k_m.gguf","object":"model","created":1764000000,"owned_by":"llamacpp","meta":{"vocab_type":1,"n_vocab":262144,"n_ctx_train":32768,"n_embd":640,"n_params":268098176,"size":253113024}}]}"#

    static func backend(_ server: ScriptedServer, config: [String: JSONValue] = [:]) throws -> (any ModelBackend, PluginDir) {
        let dir = PluginDir().addBuilt(provider: "llamacpp")
        var c = config
        if c["endpoint"] == nil { c["endpoint"] = .string(server.url + "/v1") }
        return (try dir.factory().create("llamacpp", config: c), dir)
    }

    static func sse(_ body: String, split: String = "lines", delay: Int = 0) -> ScriptedServer.Response {
        .stream(body, contentType: "text/event-stream", split: split, chunkDelayMs: delay)
    }

    static func collect(_ b: any ModelBackend, _ r: ModelRequest) async throws -> OllamaTests.Collected {
        try await OllamaTests.collect(b, r)
    }

    @Test func streamsWithTheServersUsageAndTimings() async throws {
        let words = ["Paris", " is", " the", " capital", " of", " France", "."]
        let server = try await ScriptedServer.start()
        try await server.script([
            "GET /v1/models": [.json(Self.models)],
            "POST /v1/chat/completions": [Self.sse(Self.llamaServerStream(words), split: "bytes:9")],
        ])
        let (b, _) = try Self.backend(server)
        let c = try await Self.collect(b, ModelRequest(prompt: "The capital of France?"))
        let r = try #require(c.response)
        #expect(c.text == words.joined())
        #expect(r.finishReason == .stop)
        #expect(r.usage == Usage(inputTokens: 11, outputTokens: 7))
        #expect(r.model == "gemma-3-270m-q4_k_m.gguf")
        #expect(r.metadata["timings"]?["predicted_per_second"]?.doubleValue == 49.9)
        // The request asked for usage, in the dialect's shape.
        let sent = try #require(try await server.requests().last { $0.path == "/v1/chat/completions" }?.json)
        #expect(sent["stream"] == true)
        #expect(sent["stream_options"]?["include_usage"] == true)
        await b.shutdown()
    }

    @Test func completesWithoutStreaming() async throws {
        let body = #"{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant","content":"The capital of France is devenue\npaying for"}}],"created":1764000000,"model":"gemma-3-270m-q4_k_m.gguf","system_fingerprint":"b6950-2bf1d3e4","object":"chat.completion","usage":{"completion_tokens":10,"prompt_tokens":14,"total_tokens":24},"id":"chatcmpl-7Yt","timings":{"prompt_n":14,"prompt_ms":20.0,"predicted_n":10,"predicted_ms":150.0}}"#
        let server = try await ScriptedServer.start()
        try await server.script(["GET /v1/models": [.json(Self.models)], "POST /v1/chat/completions": [.json(body)]])
        let (b, _) = try Self.backend(server, config: ["model": "gemma"])
        var req = ModelRequest(prompt: "The capital of France is")
        req.maxTokens = 10
        let r = try await b.complete(req)
        #expect(r.content == "The capital of France is devenue\npaying for")
        #expect(r.finishReason == .maxTokens)
        #expect(r.usage == Usage(inputTokens: 14, outputTokens: 10))
        #expect(r.metadata["provider_finish_reason"] == "length")
        let sent = try #require(try await server.requests().last { $0.path == "/v1/chat/completions" }?.json)
        #expect(sent["stream"] == nil)
        #expect(sent["model"] == "gemma")  // the configured default model
        #expect(sent["max_tokens"] == 10)
        await b.shutdown()
    }

    // MARK: Usage a stream did not report

    @Test func countsAStreamWithTheServersTokenizerWhenItReportsNoUsage() async throws {
        // llama-cpp-python: /extras/tokenize includes BOS (one token for "").
        let server = try await ScriptedServer.start()
        try await server.script([
            "GET /v1/models": [.json(#"{"object":"list","data":[{"id":"gemma-3-270m","object":"model","owned_by":"me","permissions":[]}]}"#)],
            "POST /v1/chat/completions": [Self.sse(Self.pythonStream(["The", " capital", " of", " France"]))],
            "POST /tokenize": [.json(#"{"detail":"Not Found"}"#, status: 404)],
            "POST /extras/tokenize": [
                .json(#"{"tokens":[2]}"#),  // "": the overhead
                .json(#"{"tokens":[2,818,5279,529,7001]}"#),  // the answer: 4 tokens and BOS
                .json(#"{"tokens":[2,818,5279,529,7001,563]}"#),  // the prompt's text
            ],
        ])
        let (b, _) = try Self.backend(server)
        let c = try await Self.collect(b, ModelRequest(prompt: "The capital of France is"))
        let r = try #require(c.response)
        #expect(r.finishReason == .maxTokens)
        #expect(r.usage.outputTokens == 4)
        // The prompt's 6 tokens (BOS included) and an estimate of the template's: marked estimated.
        #expect(r.usage.inputTokens == 6 + 5 * 1 + 3)
        #expect(r.usage.estimated)
        #expect(r.metadata["usage_counted"]?.stringValue?.contains("/extras/tokenize") == true)
        let seen = try await server.requests().filter { $0.path == "/extras/tokenize" }.compactMap { $0.json?["input"]?.stringValue }
        #expect(seen == ["", "The capital of France", "The capital of France is"])
        await b.shutdown()
    }

    @Test func countsThePromptThroughLlamaServersTemplateWhenItCan() async throws {
        let server = try await ScriptedServer.start()
        try await server.script([
            "GET /v1/models": [.json(Self.models)],
            "POST /v1/chat/completions": [Self.sse(Self.llamaServerStream(["Hi", " there"], usage: false))],
            "POST /tokenize": [
                .json(#"{"tokens":[17]}"#),  // detection
                .json(#"{"tokens":[9259,993]}"#),  // the answer
                .json(#"{"tokens":[2,105,2364,107,9259,106,107,105,4368,107]}"#),  // the rendered prompt
            ],
            "POST /apply-template": [.json(#"{"prompt":"<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"}"#)],
        ])
        let (b, _) = try Self.backend(server)
        let r = try await Self.collect(b, ModelRequest(prompt: "Hello")).response
        #expect(r?.usage == Usage(inputTokens: 10, outputTokens: 2, estimated: true))
        #expect(r?.metadata["usage_counted"]?.stringValue?.contains("chat template renders it") == true)
        let tokenized = try await server.requests().filter { $0.path == "/tokenize" }.compactMap(\.json)
        #expect(tokenized.last?["content"] == "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n")
        #expect(tokenized.last?["add_special"] == true)
        await b.shutdown()
    }

    @Test func estimatesFromTheStreamWithoutATokenizer() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /v1/models": [.json(Self.models)], "POST /v1/chat/completions": [Self.sse(Self.pythonStream(["a", "b", "c"], finish: "stop"))]])
        let (b, _) = try Self.backend(server)
        let r = try await Self.collect(b, ModelRequest(prompt: "Hello")).response
        #expect(r?.usage.outputTokens == 3)
        #expect(r?.usage.estimated == true)
        #expect(r?.metadata["usage_counted"]?.stringValue?.contains("no tokenizer endpoint") == true)
        let t = try await b.estimateTokens(ModelRequest(prompt: "Hello there"))
        #expect(!t.exact)
        #expect(t.method == "heuristic:chars/4 (the server has no tokenizer endpoint)")
        await b.shutdown()
    }

    // MARK: estimate_tokens

    @Test func estimatesTokensExactlyThroughTheServersTokenizer() async throws {
        // llama-server: the prompt as its template renders it.
        let s1 = try await ScriptedServer.start()
        try await s1.script([
            "GET /v1/models": [.json(Self.models)],
            "POST /tokenize": [.json(#"{"tokens":[17]}"#), .json(#"{"tokens":[2,105,2364,107,9259,106,107,105,4368,107]}"#)],
            "POST /apply-template": [.json(#"{"prompt":"<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"}"#)],
        ])
        let (b1, _) = try Self.backend(s1)
        let t1 = try await b1.estimateTokens(ModelRequest(prompt: "Hello"))
        #expect(t1 == TokenEstimate(tokens: 10, exact: true, method: "server:/apply-template+/tokenize"))
        #expect(try await s1.requests().last { $0.path == "/apply-template" }?.json?["messages"] == [["role": "user", "content": "Hello"]])
        await b1.shutdown()

        // llama-cpp-python: the text's tokens.
        let s2 = try await ScriptedServer.start()
        try await s2.script([
            "GET /v1/models": [.json(Self.models)],
            "POST /extras/tokenize": [.json(#"{"tokens":[2]}"#), .json(#"{"tokens":[2,9259,1902]}"#)],
        ])
        let (b2, _) = try Self.backend(s2)
        let t2 = try await b2.estimateTokens(ModelRequest(prompt: "Hello there"))
        #expect(t2.tokens == 3)
        #expect(t2.exact)
        #expect(t2.method.hasPrefix("server:/extras/tokenize"))
        await b2.shutdown()
    }

    // MARK: Loading, health, models, errors

    @Test func waitsWhileTheServerLoadsItsModel() async throws {
        let loading = ScriptedServer.Response.json(#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#, status: 503)
        let server = try await ScriptedServer.start()
        try await server.script([
            "GET /v1/models": [loading],
            "GET /health": [loading, .json(#"{"status":"ok"}"#)],
            "POST /v1/chat/completions": [loading, loading, Self.sse(Self.llamaServerStream(["ok"]))],
        ])
        let (b, _) = try Self.backend(server)
        let h = await providerError { _ = try await b.healthCheck() }
        #expect(h?.kind == .providerUnavailable)
        #expect(h?.message.contains("Loading model") == true)
        let c = try await Self.collect(b, ModelRequest(prompt: "hi"))
        #expect(c.response?.content == "ok")
        #expect(c.notices.contains { $0.contains("Loading model") })
        #expect(try await server.requests().filter { $0.path == "/v1/chat/completions" }.count == 3)
        #expect(try await b.healthCheck().message.contains(": ok"))
        await b.shutdown()

        let never = try await ScriptedServer.start()
        try await never.script(["GET /v1/models": [.json(Self.models)], "POST /v1/chat/completions": [loading]])
        let (b2, _) = try Self.backend(never)
        var r = ModelRequest(prompt: "hi")
        r.deadlines = Deadlines(firstToken: .seconds(1))
        let e = await providerError { _ = try await b2.complete(r) }
        #expect(e?.kind == .timeout)
        #expect(e?.deadline == "first_token")
        await b2.shutdown()
    }

    @Test func healthFallsBackToTheModelListWithoutAHealthEndpoint() async throws {
        let server = try await ScriptedServer.start()
        try await server.script([
            "GET /v1/models": [.json(#"{"object":"list","data":[{"id":"gemma-3-270m","object":"model","owned_by":"me","permissions":[]}]}"#)],
            "GET /health": [.json(#"{"detail":"Not Found"}"#, status: 404)],
        ])
        let (b, _) = try Self.backend(server)
        let h = try await b.healthCheck()
        #expect(h.message.contains("answers GET /v1/models with 1 model (it has no /health)"))
        await b.shutdown()
    }

    @Test func listsModelsWithLlamaServersMeta() async throws {
        let server = try await ScriptedServer.start()
        try await server.script(["GET /v1/models": [.json(Self.models)]])
        let (b, _) = try Self.backend(server)
        let m = try await b.listModels()
        #expect(m.map(\.id) == ["gemma-3-270m-q4_k_m.gguf"])
        #expect(m.first?.contextLength == 32768)
        #expect(m.first?.details["n_params"] == 268098176)
        await b.shutdown()
    }

    @Test func errorsKeepTheServersMessage() async throws {
        let server = try await ScriptedServer.start()
        try await server.script([
            "GET /v1/models": [.json(Self.models)],
            "POST /v1/chat/completions": [
                .json(#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":4100,"n_ctx":4096}}"#, status: 400),
                Self.sse(#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"par"}}],"object":"chat.completion.chunk"}"# + "\n\n" + #"data: {"error":{"code":500,"message":"Failed to decode the batch","type":"server_error"}}"# + "\n\n"),
            ],
        ])
        let (b, _) = try Self.backend(server)
        let e1 = await providerError { _ = try await b.complete(ModelRequest(prompt: "long")) }
        #expect(e1?.kind == .api)
        #expect(e1?.status == 400)
        #expect(e1?.message.contains("exceeds the available context size") == true)
        let e2 = await providerError { _ = try await Self.collect(b, ModelRequest(prompt: "x")) }
        #expect(e2?.message.contains("Failed to decode the batch") == true)
        #expect(e2?.kind == .providerUnavailable)
        await b.shutdown()
    }

    @Test func connectionRefusedSaysHowToStartTheServer() async throws {
        let server = try await ScriptedServer.start()
        let url = "http://127.0.0.1:\(server.port)/v1"
        kill(server.pid, SIGKILL)
        try await Task.sleep(for: .milliseconds(100))
        let dir = PluginDir().addBuilt(provider: "llamacpp")
        let b = try dir.factory(environment: ["LLAMACPP_ENDPOINT": url]).create("llamacpp")
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "hi")) }
        #expect(e?.kind == .providerUnavailable)
        #expect(e?.message.contains("is the llama.cpp server running there?") == true, "\(e?.message ?? "")")
        await b.shutdown()
    }

    @Test func theCLIPrintsTheWordsAsTheyArrive() async throws {
        let words = (1...20).map { " word\($0)" }
        let server = try await ScriptedServer.start()
        try await server.script(["GET /v1/models": [.json(Self.models)], "POST /v1/chat/completions": [Self.sse(Self.llamaServerStream(words), delay: 60)]])
        let dir = PluginDir().addBuilt(provider: "llamacpp")
        let out = await Proc.descartesTimed(
            ["complete", "-p", "llamacpp", "--stream", "Count"], env: ["DESCARTES_PLUGIN_PATH": dir.path, "LLAMACPP_ENDPOINT": server.url + "/v1"])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.text == words.joined() + "\n")
        // 23 events 60 ms apart: the words reach stdout over about 1.3 s.
        let spread = (out.pieces.last?.at ?? .zero) - (out.pieces.first?.at ?? .zero)
        #expect(out.pieces.count >= 5, "\(out.pieces.count) reads")
        #expect(spread > .milliseconds(600), "\(spread)")
    }
}
