import Descartes
import Glibc
import Testing

/// libdescartes-ollama.so, loaded through the C ABI, against a scripted
/// server on 127.0.0.1 speaking Ollama's native API byte for byte: the
/// recorded transcripts (../shared/fixtures/provider-transcripts/ollama) and
/// what they do not cover (tool calls in NDJSON, a model still loading,
/// errors, cut streams).
@Suite(.serialized) struct OllamaTests {
    static let version = #"{"version":"0.12.6"}"#

    static func tags(_ names: [String]) -> String {
        let models = names.map { n in
            #"{"name":"\#(n)","model":"\#(n)","modified_at":"2026-01-28T18:30:00.000000000Z","size":815319791,"digest":"8648f39daa8fbf5b18c7b4e6a8fb4990c692751d49917417b8842ca5758e7ffc","details":{"parent_model":"","format":"gguf","family":"gemma3","families":["gemma3"],"parameter_size":"999.89M","quantization_level":"Q4_K_M"}}"#
        }
        return #"{"models":[\#(models.joined(separator: ","))]}"#
    }

    static func show(contextLength: Int = 32768, capabilities: [String] = ["completion", "tools", "thinking"], numCtx: Int? = nil) -> String {
        let caps = capabilities.map { "\"\($0)\"" }.joined(separator: ",")
        let params = numCtx.map { #"num_ctx                        \#($0)\nstop                           \"<end_of_turn>\""# } ?? #"stop                           \"<end_of_turn>\""#
        return ##"{"license":"Gemma Terms of Use","modelfile":"# Modelfile\nFROM gemma3\n","parameters":"\##(params)","template":"{{ .Prompt }}","details":{"parent_model":"","format":"gguf","family":"gemma3","families":["gemma3"],"parameter_size":"999.89M","quantization_level":"Q4_K_M"},"model_info":{"general.architecture":"gemma3","general.parameter_count":999885952,"gemma3.context_length":\##(contextLength),"gemma3.embedding_length":1152},"capabilities":[\##(caps)],"modified_at":"2026-01-28T18:30:00Z"}"##
    }

    /// A server with the metadata routes scripted and `chat` for /api/chat.
    static func server(
        models: [String] = ["gemma3:1b", "gpt-oss:120b"], show: String = show(), chat: [ScriptedServer.Response]
    ) async throws -> ScriptedServer {
        let s = try await ScriptedServer.start()
        try await s.script([
            "GET /api/version": [.json(version)],
            "GET /api/tags": [.json(tags(models))],
            "POST /api/show": [.json(show)],
            "POST /api/chat": chat,
        ])
        return s
    }

    static func backend(_ server: ScriptedServer, config: [String: JSONValue] = [:], environment: [String: String] = [:]) throws -> (any ModelBackend, PluginDir) {
        let dir = PluginDir().addBuilt(provider: "ollama")
        var c = config
        if c["endpoint"] == nil { c["endpoint"] = .string(server.url) }
        return (try dir.factory(environment: environment).create("ollama", config: c), dir)
    }

    static func ndjson(_ name: String, split: String = "lines", delay: Int = 0) throws -> ScriptedServer.Response {
        .stream(try TestEnv.transcript("ollama/\(name).ndjson"), contentType: "application/x-ndjson", split: split, chunkDelayMs: delay)
    }

    struct Collected {
        var events: [StreamEvent] = []
        var response: ModelResponse?
        var text: String { events.compactMap { if case .textDelta(let t) = $0 { t } else { nil } }.joined() }
        var reasoning: String { events.compactMap { if case .reasoningDelta(let t) = $0 { t } else { nil } }.joined() }
        var notices: [String] { events.compactMap { if case .notice(_, let m) = $0 { m } else { nil } } }
    }

    static func collect(_ b: any ModelBackend, _ r: ModelRequest) async throws -> Collected {
        var c = Collected()
        for try await e in b.stream(r) {
            c.events.append(e)
            if case .finish(let resp) = e { c.response = resp }
        }
        return c
    }

    /// The expected view of a transcript (its .expected.json sidecar).
    struct Expected {
        var text: String
        var reasoning: String
        var toolCalls: [(id: String?, name: String, arguments: JSONValue)]
        var finishReason: String?
        var usage: JSONObject?
        var error: String?

        init(_ name: String) throws {
            let doc = try JSONValue.parse(try TestEnv.transcript("ollama/\(name).expected.json"))
            text = doc["text"]?.stringValue ?? ""
            reasoning = doc["reasoning"]?.stringValue ?? ""
            toolCalls = (doc["tool_calls"]?.arrayValue ?? []).map {
                ($0["id"]?.stringValue, $0["name"]?.stringValue ?? "", (try? JSONValue.parse($0["arguments"]?.stringValue ?? "")) ?? .null)
            }
            finishReason = doc["finish_reason"]?.stringValue
            usage = doc["usage"]?.objectValue
            error = doc["error"]?.stringValue
        }

        /// Checks a response against the sidecar. Our normalised view maps
        /// Ollama's fields: prompt_eval_count -> input_tokens, eval_count ->
        /// output_tokens, the *_duration fields into metadata; done_reason
        /// "stop" with tool calls -> finish reason tool_use (Ollama says
        /// "stop" even when the model called a tool).
        func check(_ r: ModelResponse, _ label: String) {
            #expect(r.content == text, "\(label): text")
            #expect((r.reasoning ?? "") == reasoning, "\(label): reasoning")
            #expect(r.toolCalls.count == toolCalls.count, "\(label): tool calls")
            for (got, want) in zip(r.toolCalls, toolCalls) {
                #expect(got.name == want.name, "\(label): tool name")
                if let id = want.id { #expect(got.id == id, "\(label): tool call id") }
                #expect(got.parsedArguments == want.arguments, "\(label): tool arguments")
            }
            let reason = finishReason == "stop" && !toolCalls.isEmpty ? "tool_use" : finishReason
            #expect(r.finishReason.rawValue == reason, "\(label): finish reason")
            if let u = usage {
                #expect(r.usage.inputTokens == u["prompt_eval_count"]?.intValue, "\(label): input tokens")
                #expect(r.usage.outputTokens == u["eval_count"]?.intValue, "\(label): output tokens")
                #expect(!r.usage.estimated, "\(label): usage reported by the server")
                for k in ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"] {
                    #expect(r.metadata[k] == u[k], "\(label): metadata \(k)")
                }
            }
        }
    }

    // MARK: Recorded transcripts

    @Test(arguments: ["chat-stream-text", "chat-stream-text-2026", "chat-stream-thinking-cloud"])
    func replaysRecordedStreams(_ name: String) async throws {
        let expected = try Expected(name)
        let recorded = try JSONValue.parse(try TestEnv.transcript("ollama/\(name).request.json"))
        let model = recorded["model"]!.stringValue!
        // Whole lines, small pieces that cut lines and UTF-8 sequences, and one byte at a time.
        let splits = ["lines", "bytes:7", "bytes:1"]
        let server = try await Self.server(chat: try splits.map { try Self.ndjson(name, split: $0) })
        let (b, _) = try Self.backend(server)
        for split in splits {
            let c = try await Self.collect(b, ModelRequest(prompt: "Count from 1 to 5", model: model))
            let r = try #require(c.response)
            expected.check(r, "\(name) split \(split)")
            #expect(c.text == expected.text)
            #expect(c.reasoning == expected.reasoning)
            #expect(r.model == model)
            if case .start(_, let m)? = c.events.first { #expect(m == model) } else { Issue.record("the first event is not start") }
        }
        await b.shutdown()
    }

    @Test(arguments: ["chat-nonstream-thinking-cloud", "chat-nonstream-tool-call-cloud"])
    func replaysRecordedAnswers(_ name: String) async throws {
        let expected = try Expected(name)
        let server = try await Self.server(chat: [.json(try TestEnv.transcript("ollama/\(name).json"))])
        let (b, _) = try Self.backend(server)
        let recorded = try JSONValue.parse(try TestEnv.transcript("ollama/\(name).request.json"))
        var request = ModelRequest(prompt: "What's the weather like in San Francisco?", model: recorded["model"]!.stringValue!)
        if let tools = recorded["tools"]?.arrayValue {
            request.tools = tools.map { t in
                Tool(name: t["function"]!["name"]!.stringValue!, description: t["function"]!["description"]!.stringValue!, parameters: t["function"]!["parameters"]!)
            }
        }
        let r = try await b.complete(request)
        expected.check(r, name)
        // complete uses "stream": false, and the tools went out in Ollama's shape.
        let chat = try #require(try await server.requests().last { $0.path == "/api/chat" }?.json)
        #expect(chat["stream"] == false)
        if let tools = recorded["tools"] {
            #expect(chat["tools"]?[0]?["type"] == "function")
            #expect(chat["tools"]?[0]?["function"]?["parameters"] == tools[0]?["function"]?["parameters"])
        }
        await b.shutdown()
    }

    @Test(arguments: ["chat-error-400-context-length", "chat-error-400-no-tools"])
    func replaysRecordedErrors(_ name: String) async throws {
        let expected = try Expected(name)
        let body = try TestEnv.transcript("ollama/\(name).json")
        let server = try await Self.server(chat: [.json(body, status: 400)])
        let (b, _) = try Self.backend(server)
        for streaming in [false, true] {
            let request = ModelRequest(prompt: "Which date do we have today?", model: "gemma3:1b")
            let e = await providerError {
                if streaming { _ = try await Self.collect(b, request) } else { _ = try await b.complete(request) }
            }
            #expect(e?.kind == .api)
            #expect(e?.status == 400)
            #expect(e?.message.contains(expected.error!) == true, "\(e?.message ?? "no error")")
        }
        await b.shutdown()
    }

    // MARK: The request

    @Test func encodesTheRequestInOllamasShape() async throws {
        let server = try await Self.server(chat: [try Self.ndjson("chat-stream-text")])
        let (b, _) = try Self.backend(server, config: ["keep_alive": "10m"])
        var r = ModelRequest(
            messages: [
                .user("What is the weather in Paris?"),
                .assistant("", toolCalls: [ToolCall(id: "call_1", name: "get_weather", arguments: #"{"city":"Paris"}"#)]),
                .tool(callID: "call_1", "18 C, sunny"),
            ], model: "gemma3:1b", maxTokens: 50, temperature: 0, topP: 0.9, systemPrompt: "Be brief.",
            tools: [Tool(name: "get_weather", description: "Weather for a city", parameters: ["type": "object", "properties": ["city": ["type": "string"]]])],
            stop: ["\n\n"], seed: 7, options: ["mirostat": 0])
        r.options["num_predict"] = 60  // an explicit option wins over max_tokens
        _ = try await Self.collect(b, r)
        let chat = try #require(try await server.requests().last { $0.path == "/api/chat" }?.json)
        #expect(chat["model"] == "gemma3:1b")
        #expect(chat["stream"] == true)
        #expect(chat["truncate"] == false)
        #expect(chat["keep_alive"] == "10m")
        let msgs = try #require(chat["messages"]?.arrayValue)
        #expect(msgs.count == 4)
        #expect(msgs[0] == ["role": "system", "content": "Be brief."])
        #expect(msgs[2]["tool_calls"]?[0]?["function"]?["arguments"] == ["city": "Paris"])  // an object, not a string
        #expect(msgs[3]["role"] == "tool")
        #expect(msgs[3]["tool_name"] == "get_weather")
        #expect(msgs[3]["tool_call_id"] == "call_1")
        let o = try #require(chat["options"])
        #expect(o["num_predict"] == 60)
        #expect(o["temperature"]?.doubleValue == 0)
        #expect(o["top_p"]?.doubleValue == 0.9)
        #expect(o["stop"] == ["\n\n"])
        #expect(o["seed"] == 7)
        #expect(o["mirostat"] == 0)
        #expect(o["num_ctx"] == 4096)  // always explicit: Ollama's own default would cut long prompts
        #expect(chat["tools"]?[0]?["function"]?["name"] == "get_weather")
        await b.shutdown()
    }

    @Test func sizesTheContextToThePromptAndNeverShrinksIt() async throws {
        let server = try await Self.server(show: Self.show(contextLength: 32768), chat: [try Self.ndjson("chat-stream-text")])
        let (b, _) = try Self.backend(server)
        func numCtx(_ prompt: String, options: JSONObject = [:]) async throws -> Int? {
            var r = ModelRequest(prompt: prompt, model: "gemma3:1b")
            r.options = options
            _ = try await b.complete(r)
            return try await server.requests().last { $0.path == "/api/chat" }?.json?["options"]?["num_ctx"]?.intValue
        }
        #expect(try await numCtx("short") == 4096)
        // ~20,000 bytes of prompt: about 6,700 tokens at 3 bytes each, plus the answer's reserve.
        #expect(try await numCtx(String(repeating: "lorem ipsum ", count: 1700)) == 8192)
        // Sizes only grow per model (Ollama reloads a model when num_ctx changes).
        #expect(try await numCtx("short again") == 8192)
        // Capped by the model's own context length.
        #expect(try await numCtx(String(repeating: "lorem ipsum ", count: 20000)) == 32768)
        // The caller's num_ctx is sent as given.
        #expect(try await numCtx("short", options: ["num_ctx": 2048]) == 2048)
        await b.shutdown()
    }

    @Test func aModelfileNumCtxIsTheFloorAndConfigFixesIt() async throws {
        let server = try await Self.server(show: Self.show(contextLength: 131072, numCtx: 16384), chat: [try Self.ndjson("chat-stream-text")])
        let (b, _) = try Self.backend(server)
        _ = try await b.complete(ModelRequest(prompt: "hi", model: "gemma3:1b"))
        #expect(try await server.requests().last { $0.path == "/api/chat" }?.json?["options"]?["num_ctx"] == 16384)
        await b.shutdown()
        let (fixed, _) = try Self.backend(server, config: ["num_ctx": 3000])
        _ = try await fixed.complete(ModelRequest(prompt: "hi", model: "gemma3:1b"))
        #expect(try await server.requests().last { $0.path == "/api/chat" }?.json?["options"]?["num_ctx"] == 3000)
        await fixed.shutdown()
    }

    // MARK: Models

    @Test func anUnknownModelFailsBeforeTheRequest() async throws {
        let server = try await Self.server(models: ["gemma3:1b", "llama3.2:latest"], chat: [try Self.ndjson("chat-stream-text")])
        let (b, _) = try Self.backend(server)
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "hi", model: "qwen3:8b")) }
        #expect(e?.kind == .api)
        #expect(e?.message.contains("'qwen3:8b' is not installed") == true)
        #expect(e?.message.contains("installed: gemma3:1b, llama3.2:latest") == true)
        #expect(e?.message.contains("ollama pull qwen3:8b") == true)
        let seen = try await server.requests()
        #expect(!seen.contains { $0.path == "/api/chat" })
        // The list was fetched once at initialization and once more to see a fresh pull.
        #expect(seen.filter { $0.path == "/api/tags" }.count == 2)
        // A name without a tag means ":latest", as in Ollama's own CLI.
        _ = try await b.complete(ModelRequest(prompt: "hi", model: "llama3.2"))
        #expect(try await server.requests().last { $0.path == "/api/chat" }?.json?["model"] == "llama3.2:latest")
        await b.shutdown()
    }

    @Test func theDefaultModelComesFromConfigOrTheOnlyOneInstalled() async throws {
        let one = try await Self.server(models: ["gemma3:1b"], chat: [try Self.ndjson("chat-stream-text")])
        let (b1, _) = try Self.backend(one)
        _ = try await b1.complete(ModelRequest(prompt: "hi"))
        #expect(try await one.requests().last { $0.path == "/api/chat" }?.json?["model"] == "gemma3:1b")
        await b1.shutdown()

        let two = try await Self.server(models: ["gemma3:1b", "gpt-oss:120b"], chat: [try Self.ndjson("chat-stream-text")])
        let (b2, _) = try Self.backend(two)
        let e = await providerError { _ = try await b2.complete(ModelRequest(prompt: "hi")) }
        #expect(e?.kind == .config)
        #expect(e?.message.contains("installed: gemma3:1b, gpt-oss:120b") == true)
        await b2.shutdown()
        let (b3, _) = try Self.backend(two, environment: ["OLLAMA_MODEL": "gpt-oss:120b"])
        _ = try await b3.complete(ModelRequest(prompt: "hi"))
        #expect(try await two.requests().last { $0.path == "/api/chat" }?.json?["model"] == "gpt-oss:120b")
        await b3.shutdown()
    }

    @Test func toolsOnAModelWithoutToolSupportFailBeforeTheRequest() async throws {
        let server = try await Self.server(show: Self.show(capabilities: ["completion", "vision"]), chat: [try Self.ndjson("chat-stream-text")])
        let (b, _) = try Self.backend(server)
        var r = ModelRequest(prompt: "Which date do we have today?", model: "gemma3:1b")
        r.tools = [Tool(name: "getTime", description: "Get the current time.")]
        let e = await providerError { _ = try await b.complete(r) }
        #expect(e?.kind == .unsupportedFeature)
        #expect(e?.message.contains("does not support tools (its capabilities: completion, vision)") == true)
        #expect(try await !server.requests().contains { $0.path == "/api/chat" })
        await b.shutdown()
    }

    @Test func listsModelsWithTheirDetails() async throws {
        let server = try await Self.server(models: ["gemma3:1b", "gpt-oss:120b"], show: Self.show(contextLength: 131072), chat: [])
        let (b, _) = try Self.backend(server)
        let models = try await b.listModels()
        #expect(models.map(\.id) == ["gemma3:1b", "gpt-oss:120b"])
        #expect(models.allSatisfy { $0.contextLength == 131072 })
        #expect(models[0].details["parameter_size"] == "999.89M")
        #expect(models[0].details["capabilities"] == ["completion", "tools", "thinking"])
        let shows = try await server.requests().filter { $0.path == "/api/show" }.compactMap { $0.json?["model"]?.stringValue }
        #expect(Set(shows) == ["gemma3:1b", "gpt-oss:120b"])
        let health = try await b.healthCheck()
        #expect(health.message == "Ollama 0.12.6 is answering at \(server.url)")
        #expect(health.details["models"] == 2)
        // Ollama has no tokenizer endpoint: the estimate says it is one.
        let t = try await b.estimateTokens(ModelRequest(prompt: "Hello there, how are you?", model: "gemma3:1b"))
        #expect(!t.exact)
        #expect(t.method.hasPrefix("heuristic"))
        await b.shutdown()
    }

    // MARK: Streams the recordings do not cover

    @Test func streamsToolCallsFromNDJSON() async throws {
        // Local Ollama sends each tool call whole in one line, without ids;
        // several calls may share a line or come one per line.
        let body = [
            #"{"model":"qwen3:8b","created_at":"2026-02-01T10:00:00.1Z","message":{"role":"assistant","content":"","thinking":"Two cities, two calls."},"done":false}"#,
            #"{"model":"qwen3:8b","created_at":"2026-02-01T10:00:00.2Z","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Paris","unit":"celsius"}}},{"function":{"index":1,"name":"get_weather","arguments":{"city":"Tōkyō"}}}]},"done":false}"#,
            #"{"model":"qwen3:8b","created_at":"2026-02-01T10:00:00.3Z","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_x1","function":{"name":"get_time","arguments":{}}}]},"done":false}"#,
            #"{"model":"qwen3:8b","created_at":"2026-02-01T10:00:00.4Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":1200000000,"load_duration":20000000,"prompt_eval_count":180,"prompt_eval_duration":100000000,"eval_count":61,"eval_duration":900000000}"#,
        ].joined(separator: "\n") + "\n"
        let server = try await Self.server(models: ["qwen3:8b"], chat: [.stream(body, contentType: "application/x-ndjson", split: "bytes:11")])
        let (b, _) = try Self.backend(server)
        var r = ModelRequest(prompt: "Weather in Paris and Tokyo, and the time?", model: "qwen3:8b")
        r.tools = [Tool(name: "get_weather"), Tool(name: "get_time")]
        let c = try await Self.collect(b, r)
        let resp = try #require(c.response)
        #expect(resp.finishReason == .toolUse)
        #expect(resp.toolCalls.map(\.name) == ["get_weather", "get_weather", "get_time"])
        #expect(resp.toolCalls[0].parsedArguments == ["city": "Paris", "unit": "celsius"])
        #expect(resp.toolCalls[1].parsedArguments == ["city": "Tōkyō"])
        #expect(resp.toolCalls[2].parsedArguments == [:])
        #expect(resp.toolCalls[2].id == "call_x1")
        #expect(!resp.toolCalls[0].id.isEmpty && resp.toolCalls[0].id != resp.toolCalls[1].id)
        #expect(resp.reasoning == "Two cities, two calls.")
        #expect(resp.usage == Usage(inputTokens: 180, outputTokens: 61))
        #expect(resp.metadata["eval_tokens_per_second"]?.doubleValue == 67.78)
        let starts = c.events.compactMap { if case .toolCallStart(let i, _, _) = $0 { i } else { nil } }
        #expect(starts == [0, 1, 2])
        await b.shutdown()
    }

    @Test func anErrorLineInsideTheStreamFailsTheCall() async throws {
        let body = #"""
        {"model":"gemma3:1b","created_at":"2026-02-01T10:00:00Z","message":{"role":"assistant","content":"Hel"},"done":false}
        {"error":"an error was encountered while running the model: unexpected EOF"}

        """#
        let server = try await Self.server(chat: [.stream(body, contentType: "application/x-ndjson", split: "lines")])
        let (b, _) = try Self.backend(server)
        var texts: [String] = []
        let e = await providerError {
            for try await ev in b.stream(ModelRequest(prompt: "hi", model: "gemma3:1b")) {
                if case .textDelta(let t) = ev { texts.append(t) }
            }
        }
        #expect(texts == ["Hel"])
        #expect(e?.kind == .api)
        #expect(e?.message.contains("unexpected EOF") == true)
        await b.shutdown()
    }

    @Test func aStreamCutBeforeItsLastLineIsClosed() async throws {
        let text = try TestEnv.transcript("ollama/chat-stream-text.ndjson")
        let cut = String(text.utf8.prefix(900))!
        // Ended cleanly in the middle of a line, then reset by the server.
        let server = try await Self.server(chat: [
            .stream(cut, contentType: "application/x-ndjson", split: "lines"), try Self.ndjson("chat-stream-text").with(["reset_after": 900]),
        ])
        let (b, _) = try Self.backend(server)
        for _ in 0..<2 {
            let e = await providerError { _ = try await Self.collect(b, ModelRequest(prompt: "hi", model: "gemma3:1b")) }
            #expect(e?.kind == .streamClosed, "\(String(describing: e))")
        }
        await b.shutdown()
    }

    @Test func anEndlessStreamEndsAtTheSizeCapWithinTheDeadline() async throws {
        // Lines as fast as the server can send them, never the final one,
        // and the connection then left open: only the response-size cap
        // (max_response_mb, as for every HTTP plugin) ends it before the
        // request's deadline.
        let line = #"{"model":"gemma3:1b","created_at":"2026-02-01T10:00:00Z","message":{"role":"assistant","content":"and on "},"done":false}"# + "\n"
        let body = String(repeating: line, count: (4 << 20) / line.utf8.count)
        let endless = ScriptedServer.Response.stream(body, contentType: "application/x-ndjson").with(["hang_after": .integer(body.utf8.count)])
        let server = try await Self.server(chat: [endless])
        let (b, _) = try Self.backend(server, config: ["max_response_mb": 1])
        var r = ModelRequest(prompt: "hi", model: "gemma3:1b")
        r.deadlines = Deadlines(total: .seconds(60))
        let start = ContinuousClock.now
        var text = 0
        let e = await providerError {
            for try await ev in b.stream(r) { if case .textDelta(let t) = ev { text += t.utf8.count } }
        }
        #expect(e?.kind == .invalidResponse, "\(String(describing: e))")
        #expect(e?.message.contains("larger than 1048576 bytes") == true, "\(String(describing: e))")
        #expect(text > 0 && text < 1 << 20, "\(text) bytes of text")
        // The cap ended it, not the 60 s deadline.
        expectWithin(ContinuousClock.now - start, .seconds(30))
        await b.shutdown()

        let dir = PluginDir().addBuilt(provider: "ollama")
        let bad = await providerError { _ = try dir.factory().create("ollama", config: ["endpoint": .string(server.url), "max_response_mb": 0]) }
        #expect(bad?.kind == .config)
        #expect(bad?.message.contains("max_response_mb") == true, "\(String(describing: bad))")
    }

    @Test func connectionRefusedAsksWhetherOllamaIsRunning() async throws {
        // A port nothing listens on: bind one, then close it.
        let server = try await ScriptedServer.start()
        let url = "http://127.0.0.1:\(server.port)"
        kill(server.pid, SIGKILL)
        try await Task.sleep(for: .milliseconds(100))
        let dir = PluginDir().addBuilt(provider: "ollama")
        let b = try dir.factory().create("ollama", config: ["endpoint": .string(url)])
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "hi", model: "gemma3:1b")) }
        #expect(e?.kind == .providerUnavailable)
        #expect(e?.message.contains("is Ollama running at \(url)?") == true, "\(e?.message ?? "")")
        let h = await providerError { _ = try await b.healthCheck() }
        #expect(h?.kind == .providerUnavailable)
        await b.shutdown()
    }

    @Test func theEndpointComesFromOllamaHostAsOllamasToolsReadIt() async throws {
        let server = try await Self.server(chat: [try Self.ndjson("chat-stream-text")])
        let dir = PluginDir().addBuilt(provider: "ollama")
        // OLLAMA_HOST without a scheme; OLLAMA_ENDPOINT wins over it when both are set.
        let b = try dir.factory(environment: ["OLLAMA_HOST": "127.0.0.1:\(server.port)"]).create("ollama")
        #expect(try await b.complete(ModelRequest(prompt: "hi", model: "gemma3:1b")).content == "Okay, here we go!\n\n1, 2, 3, 4, 5\n")
        await b.shutdown()
        let both = try dir.factory(environment: ["OLLAMA_HOST": "127.0.0.1:1", "OLLAMA_ENDPOINT": "\(server.url)/"]).create("ollama")
        #expect(try await both.healthCheck().message.contains(server.url))
        await both.shutdown()
    }

    @Test func aNonOllamaServerIsNamedAtInitialization() async throws {
        let server = try await ScriptedServer.start()
        try await server.script([:])  // 404 for everything, like an OpenAI-compatible server
        let (b, _) = try Self.backend(server)
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "hi", model: "gemma3:1b")) }
        #expect(e?.kind == .initialization)
        #expect(e?.message.contains("does not speak Ollama's API") == true)
        await b.shutdown()
    }

    // MARK: A model still loading

    // "Waits within the deadline": Ollama holds its answer back until the
    // model is in memory, so a slow first byte is waited for until the
    // request's first_token deadline (or its total one, timeout_secs by
    // default) and no sooner; a 503 ("server busy", a proxy's "loading") is
    // asked again with backoff until then. A notice tells the caller why it
    // waits. Past the deadline the error is a timeout naming it.

    @Test func waitsForAModelThatIsLoadingWithinTheDeadline() async throws {
        let server = try await Self.server(chat: [try Self.ndjson("chat-stream-text").with(["delay_ms": 4000])])
        let (b, _) = try Self.backend(server)
        var r = ModelRequest(prompt: "hi", model: "gemma3:1b")
        r.deadlines = Deadlines(firstToken: .seconds(20))
        let c = try await Self.collect(b, r)
        #expect(c.response?.content == "Okay, here we go!\n\n1, 2, 3, 4, 5\n")
        // The notice comes after 2 s without an answer.
        #expect(c.notices.contains { $0.contains("probably loading 'gemma3:1b'") && $0.contains("first token deadline (20 s)") }, "\(c.notices)")
        await b.shutdown()
    }

    @Test func aModelLoadingPastTheDeadlineTimesOutNamingIt() async throws {
        let server = try await Self.server(chat: [try Self.ndjson("chat-stream-text").with(["delay_ms": 10_000])])
        let (b, _) = try Self.backend(server)
        var r = ModelRequest(prompt: "hi", model: "gemma3:1b")
        r.deadlines = Deadlines(firstToken: .milliseconds(700))
        let start = ContinuousClock.now
        let e = await providerError { _ = try await b.complete(r) }
        #expect(e?.kind == .timeout)
        #expect(e?.deadline == "first_token")
        // Well before the server would have answered (10 s): the deadline ended it.
        expectWithin(ContinuousClock.now - start, .seconds(8))
        await b.shutdown()
    }

    @Test func aBusyServerIsAskedAgainWithinTheDeadline() async throws {
        let busy = ScriptedServer.Response.json(#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#, status: 503)
        let server = try await Self.server(chat: [busy, busy, try Self.ndjson("chat-stream-text")])
        let (b, _) = try Self.backend(server)
        let c = try await Self.collect(b, ModelRequest(prompt: "hi", model: "gemma3:1b"))
        #expect(c.response?.content == "Okay, here we go!\n\n1, 2, 3, 4, 5\n")
        #expect(try await server.requests().filter { $0.path == "/api/chat" }.count == 3)
        #expect(c.notices.contains { $0.contains("server busy") })
        await b.shutdown()

        let always = try await Self.server(chat: [busy.with(["headers": [["content-type", "application/json"], ["retry-after", "0.2"]]])])
        let (b2, _) = try Self.backend(always)
        var r = ModelRequest(prompt: "hi", model: "gemma3:1b")
        r.deadlines = Deadlines(total: .milliseconds(1500))
        let e = await providerError { _ = try await b2.complete(r) }
        #expect(e?.kind == .timeout)
        #expect(e?.deadline == "total")
        // Retry-After 0.2 s honoured: several attempts, not a hot loop.
        let n = try await always.requests().filter { $0.path == "/api/chat" }.count
        #expect(n >= 3 && n <= 10, "\(n) attempts")
        await b2.shutdown()
    }

    @Test func cancellingStopsTheTransfer() async throws {
        let server = try await Self.server(chat: [try Self.ndjson("chat-stream-text", split: "lines", delay: 300)])
        let (b, _) = try Self.backend(server)
        let task = Task {
            var n = 0
            for try await e in b.stream(ModelRequest(prompt: "hi", model: "gemma3:1b")) {
                if case .textDelta = e { n += 1 }
            }
            return n
        }
        // 23 lines 300 ms apart: about 7 s if nothing stopped it.
        try await Task.sleep(for: .milliseconds(800))
        let cancelledAt = ContinuousClock.now
        task.cancel()
        // A cancelled stream ends (quietly, or with a cancelled error) at once.
        let n = (try? await task.value) ?? 0
        expectWithin(ContinuousClock.now - cancelledAt, .seconds(3))
        #expect(n < 20)

        let whole = Task { try await b.complete(ModelRequest(prompt: "hi", model: "gemma3:1b")) }
        try await Task.sleep(for: .milliseconds(800))
        let start = ContinuousClock.now
        whole.cancel()
        let e = await providerError { _ = try await whole.value }
        #expect(e?.kind == .cancelled)
        expectWithin(ContinuousClock.now - start, .seconds(3))
        await b.shutdown()
    }

    @Test func runsTheSameInItsOwnProcess() async throws {
        let server = try await Self.server(chat: [try Self.ndjson("chat-stream-text", split: "bytes:7")])
        let dir = PluginDir().addBuilt(provider: "ollama")
        let b = try dir.factory().create("ollama", config: ["endpoint": .string(server.url)], isolation: .process(Sanitizer.limits()))
        let c = try await Self.collect(b, ModelRequest(prompt: "Count from 1 to 5", model: "gemma3:1b"))
        try Expected("chat-stream-text").check(#require(c.response), "isolated")
        #expect(try await b.listModels().count == 2)
        await b.shutdown()
    }

    // MARK: The CLI

    @Test func theCLIPrintsTheWordsAsTheyArrive() async throws {
        let server = try await Self.server(models: ["gemma3:1b"], chat: [try Self.ndjson("chat-stream-text", split: "lines", delay: 60)])
        let dir = PluginDir().addBuilt(provider: "ollama")
        let out = await Proc.descartesTimed(
            ["complete", "-p", "ollama", "--stream", "Count from 1 to 5"],
            env: ["DESCARTES_PLUGIN_PATH": dir.path, "OLLAMA_HOST": server.url])
        #expect(out.status == 0, "\(out.stderr)")
        #expect(out.text == "Okay, here we go!\n\n1, 2, 3, 4, 5\n")
        // 23 lines 60 ms apart: the words reach stdout over about 1.3 s, not
        // all at the end. Half of that spread proves it, on a loaded machine too.
        let spread = (out.pieces.last?.at ?? .zero) - (out.pieces.first?.at ?? .zero)
        #expect(out.pieces.count >= 5, "\(out.pieces.count) reads")
        #expect(spread > .milliseconds(600), "\(spread)")
    }

    // MARK: Embeddings (ABI 1.1)

    @Test func embedsThroughApiEmbed() async throws {
        let s = try await ScriptedServer.start()
        try await s.script([
            "GET /api/version": [.json(Self.version)],
            "GET /api/tags": [.json(Self.tags(["embeddinggemma:latest", "gemma3:1b"]))],
            "POST /api/embed": [
                .json(#"{"model":"embeddinggemma:latest","embeddings":[[0.010071029,-0.0017594862,0.05007221],[-0.0098027075,0.06042469,0.025257962]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}"#),
                .json(#"{"error":"\"nosuch\" does not support embeddings"}"#, status: 400),
            ],
        ])
        let (b, _) = try Self.backend(s)
        let e = try await b.embed(["Why is the sky blue?", "Why is the grass green?"], model: "embeddinggemma")
        #expect(e.vectors == [[0.010071029, -0.0017594862, 0.05007221], [-0.0098027075, 0.06042469, 0.025257962]])
        #expect(e.dimensions == 3)
        #expect(e.model == "embeddinggemma:latest")
        #expect(e.usage.inputTokens == 8)
        let sent = try #require(try await s.requests().last(where: { $0.path == "/api/embed" })?.json)
        #expect(sent["model"]?.stringValue == "embeddinggemma:latest")
        #expect(sent["input"] == ["Why is the sky blue?", "Why is the grass green?"])
        let refused = try #require(await providerError { _ = try await b.embed(["x"], model: "gemma3:1b") })
        #expect(refused.kind == .api, "\(refused)")
        #expect(refused.message.contains("does not support embeddings"), "\(refused.message)")
        // A model that is not installed is named with what is.
        let missing = try #require(await providerError { _ = try await b.embed(["x"], model: "nomic-embed-text") })
        #expect(missing.message.contains("ollama pull nomic-embed-text"), "\(missing.message)")
        await b.shutdown()
    }
}
