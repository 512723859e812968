import Descartes
import Testing

/// `ModelBackend.runTools` through the real plugins over the C ABI, against
/// scripted servers on 127.0.0.1 speaking the OpenAI, Anthropic and Ollama
/// wire formats: the second request carries the tool results in that
/// provider's exact shape; calls of one turn run concurrently; errors and
/// unknown tools go back to the model; the turn limit keeps the transcript;
/// cancellation reaches the model call and the handlers.
@Suite struct ToolLoopTests {
    static let weatherTool = Tool(
        name: "weather", description: "Weather for a city", parameters: ["type": "object", "properties": ["city": ["type": "string"]], "required": ["city"]])

    /// Counts the handlers running at once; each waits (up to 30 s) until
    /// `expected` are running, so calls run one after another are seen as
    /// a peak of 1, not as a hang.
    actor Rendezvous {
        let expected: Int
        var running = 0
        var arrived = 0
        var peak = 0
        init(_ expected: Int) { self.expected = expected }
        func enter() async {
            running += 1
            arrived += 1
            peak = max(peak, running)
            for _ in 0..<3000 {
                if arrived >= expected { return }
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        func leave() { running -= 1 }
    }

    /// A weather handler that meets the others of its turn at `rendezvous`.
    static func weather(_ rendezvous: Rendezvous) -> ToolHandler {
        ToolHandler(weatherTool) { args in
            await rendezvous.enter()
            await rendezvous.leave()
            switch args["city"]?.stringValue {
            case "Paris": return "18C"
            case "Rome": return "25C"
            case let city: throw ProviderError(.api, "no station in \(city ?? "nowhere")")
            }
        }
    }

    // MARK: OpenAI

    static let openAIKey = "sk-openai-test-9f8e7d6c5b4a"

    static func openAI(_ server: ServerSlot) throws -> (any ModelBackend, PluginDir) {
        let plugins = PluginDir().addManifest("openai")
        return (try plugins.factory().create("openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(openAIKey)]), plugins)
    }

    static func openAIAnswer(_ message: JSONValue, finish: String, prompt: Int, completion: Int) -> ScriptedServer.Response {
        .json([
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [["index": 0, "message": message, "finish_reason": .string(finish)]],
            "usage": ["prompt_tokens": .integer(prompt), "completion_tokens": .integer(completion), "total_tokens": .integer(prompt + completion)],
        ])
    }

    static func openAICall(_ id: String, _ name: String, _ arguments: String) -> JSONValue {
        ["id": .string(id), "type": "function", "function": ["name": .string(name), "arguments": .string(arguments)]]
    }

    @Test func openAIParallelCallsErrorsAndUnknownToolsGoBackAsToolMessages() async throws {
        let server = try await ServerSlot.make()
        let calls: [JSONValue] = [
            Self.openAICall("call_a", "weather", #"{"city":"Paris"}"#),
            Self.openAICall("call_b", "weather", #"{"city":"Rome"}"#),
            Self.openAICall("call_c", "weather", #"{"city":"Oslo"}"#),
            Self.openAICall("call_d", "launch", #"{}"#),
            Self.openAICall("call_e", "weather", #"{"city": "Par"#),
        ]
        try await server.script([
            "POST /v1/chat/completions": [
                Self.openAIAnswer(["role": "assistant", "content": .null, "tool_calls": .array(calls)], finish: "tool_calls", prompt: 20, completion: 7),
                Self.openAIAnswer(["role": "assistant", "content": "Paris 18C, Rome 25C."], finish: "stop", prompt: 60, completion: 9),
            ]
        ])
        let (b, _) = try Self.openAI(server)
        // The three weather calls meet: they run at once.
        let rendezvous = Rendezvous(3)
        let result = try await b.runTools(ModelRequest(prompt: "Weather in Paris, Rome and Oslo?"), tools: [Self.weather(rendezvous)])
        #expect(await rendezvous.peak == 3)
        #expect(result.outcome == .finished)
        #expect(result.text == "Paris 18C, Rome 25C.")
        #expect(result.turns == 2)
        #expect(result.usage == Usage(inputTokens: 80, outputTokens: 16))
        #expect(result.pendingToolCalls.isEmpty)
        #expect(result.messages.map(\.role) == [.user, .assistant, .tool, .tool, .tool, .tool, .tool, .assistant])
        #expect(result.messages[2...6].map(\.isError) == [false, false, true, true, true])

        let sent = try await server.requests()
        #expect(sent.count == 2)
        let first = try #require(sent[0].json)
        #expect(first["tools"] == [["type": "function", "function": ["name": "weather", "description": "Weather for a city", "parameters": Self.weatherTool.parameters]]])
        let second = try #require(sent[1].json)
        #expect(second["tools"] == first["tools"])
        let msgs = try #require(second["messages"]?.arrayValue)
        #expect(msgs.count == 7)
        #expect(msgs[0] == ["role": "user", "content": "Weather in Paris, Rome and Oslo?"])
        #expect(msgs[1] == ["role": "assistant", "content": .null, "tool_calls": .array(calls)])
        // One tool message per call, in the order of the calls; OpenAI has no error mark, so the text says it.
        #expect(msgs[2] == ["role": "tool", "content": "18C", "tool_call_id": "call_a"])
        #expect(msgs[3] == ["role": "tool", "content": "25C", "tool_call_id": "call_b"])
        #expect(msgs[4] == ["role": "tool", "content": "error: api: no station in Oslo", "tool_call_id": "call_c"])
        #expect(msgs[5] == ["role": "tool", "content": "error: there is no tool named 'launch' (tools: weather)", "tool_call_id": "call_d"])
        #expect(msgs[6] == ["role": "tool", "content": #"error: the arguments are not a JSON object: {"city": "Par"#, "tool_call_id": "call_e"])
        await b.shutdown()
    }

    @Test func theTurnLimitKeepsTheTranscriptAndLeavesTheLastCallsUnrun() async throws {
        let server = try await ServerSlot.make()
        // The model asks for the weather forever (the last scripted answer repeats).
        try await server.script([
            "POST /v1/chat/completions": [
                Self.openAIAnswer(["role": "assistant", "content": "", "tool_calls": [Self.openAICall("call_1", "weather", #"{"city":"Paris"}"#)]], finish: "tool_calls", prompt: 5, completion: 2)
            ]
        ])
        let (b, _) = try Self.openAI(server)
        let ran = Rendezvous(1)
        var request = ModelRequest(prompt: "Weather?")
        request.toolChoice = .required
        let result = try await b.runTools(request, tools: [Self.weather(ran)], maxTurns: 2)
        #expect(result.outcome == .turnLimitReached)
        #expect(result.turns == 2)
        #expect(result.usage == Usage(inputTokens: 10, outputTokens: 4))
        #expect(result.pendingToolCalls == [ToolCall(id: "call_1", name: "weather", arguments: #"{"city":"Paris"}"#)])
        // Ran once (after the first answer), not after the second.
        #expect(result.messages.map(\.role) == [.user, .assistant, .tool, .assistant])
        #expect(result.messages[2].content == "18C")
        let sent = try await server.requests()
        #expect(sent.count == 2)
        // `required` applies to the first turn only.
        #expect(sent[0].json?["tool_choice"] == "required")
        #expect(sent[1].json?["tool_choice"] == "auto")
        // The transcript is a request of its own: going on sends it as it is.
        _ = try await b.runTools(ModelRequest(messages: result.messages), tools: [Self.weather(ran)], maxTurns: 1)
        #expect(try await server.requests().last?.json?["messages"]?.arrayValue?.count == 4)
        await b.shutdown()
    }

    @Test func cancellingTheCallerCancelsTheToolsInFlight() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                Self.openAIAnswer(["role": "assistant", "content": "", "tool_calls": [Self.openAICall("call_1", "slow", "{}")]], finish: "tool_calls", prompt: 5, completion: 2)
            ]
        ])
        let (b, _) = try Self.openAI(server)
        let started = AsyncStream<Void>.makeStream()
        let ended = AsyncStream<Bool>.makeStream()
        let slow = ToolHandler(name: "slow") { _ in
            started.continuation.yield()
            // Waits for the cancellation; nothing else ends it.
            while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
            ended.continuation.yield(Task.isCancelled)
            return "done"
        }
        let loop = Task { () -> Result<ToolLoopResult, ProviderError> in
            do throws(ProviderError) { return .success(try await b.runTools(ModelRequest(prompt: "go"), tools: [slow])) } catch { return .failure(error) }
        }
        var s = started.stream.makeAsyncIterator()
        _ = await s.next()
        loop.cancel()
        var e = ended.stream.makeAsyncIterator()
        #expect(await e.next() == true)
        let outcome = await loop.value
        guard case .failure(let error) = outcome else { Issue.record("the loop went on: \(outcome)"); return }
        #expect(error.kind == .cancelled)
        #expect(error.sideEffects == ["ran tools: slow"])
        // No second model call.
        #expect(try await server.requests().count == 1)
        await b.shutdown()
    }

    @Test func cancellingTheCallerCancelsTheModelCallInFlight() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.hang]])
        let (b, _) = try Self.openAI(server)
        let loop = Task { () -> Result<ToolLoopResult, ProviderError> in
            do throws(ProviderError) {
                return .success(try await b.runTools(ModelRequest(prompt: "go"), tools: [ToolHandler(name: "never") { _ in "x" }]))
            } catch { return .failure(error) }
        }
        try await server.waitForRequests(1)
        loop.cancel()
        let outcome = await loop.value
        guard case .failure(let error) = outcome else { Issue.record("the loop answered: \(outcome)"); return }
        #expect(error.kind == .cancelled)
        #expect(error.sideEffects.isEmpty)
        await b.shutdown()
    }

    // MARK: Anthropic

    static func anthropicAnswer(_ content: JSONValue, stop: String, input: Int, output: Int) -> ScriptedServer.Response {
        .json([
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": content,
            "stop_reason": .string(stop), "stop_sequence": .null, "usage": ["input_tokens": .integer(input), "output_tokens": .integer(output)],
        ])
    }

    @Test func anthropicResultsAreOneUserTurnWithFailuresMarkedIsError() async throws {
        let server = try await ServerSlot.make()
        let assistant: JSONValue = [
            ["type": "thinking", "thinking": "Two cities.", "signature": "c2ln"],
            ["type": "text", "text": "Checking."],
            ["type": "tool_use", "id": "toolu_a", "name": "weather", "input": ["city": "Paris"]],
            ["type": "tool_use", "id": "toolu_b", "name": "weather", "input": ["city": "Oslo"]],
        ]
        try await server.script([
            "POST /v1/messages": [
                Self.anthropicAnswer(assistant, stop: "tool_use", input: 30, output: 12),
                Self.anthropicAnswer([["type": "text", "text": "Paris is 18C; Oslo has no station."]], stop: "end_turn", input: 80, output: 10),
            ]
        ])
        let plugins = PluginDir().addManifest("anthropic")
        let b = try plugins.factory().create("anthropic", config: ["endpoint": .string("\(server.url)/v1"), "api_key": "sk-ant-test-00112233445566"])
        let result = try await b.runTools(ModelRequest(prompt: "Paris and Oslo?"), tools: [Self.weather(Rendezvous(2))])
        #expect(result.outcome == .finished)
        #expect(result.text == "Paris is 18C; Oslo has no station.")
        #expect(result.usage == Usage(inputTokens: 110, outputTokens: 22))
        #expect(result.costUSD.map { abs($0 - (110 * 3.0 + 22 * 15.0) / 1e6) < 1e-12 } == true, "\(String(describing: result.costUSD))")
        let sent = try await server.requests()
        #expect(sent.count == 2)
        let msgs = try #require(sent[1].json?["messages"]?.arrayValue)
        #expect(msgs.count == 3)
        // The answer goes back as it came, the thinking block with its signature first.
        #expect(msgs[1] == ["role": "assistant", "content": assistant])
        #expect(msgs[2] == [
            "role": "user",
            "content": [
                ["type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"],
                ["type": "tool_result", "tool_use_id": "toolu_b", "content": "error: api: no station in Oslo", "is_error": true],
            ],
        ])
        await b.shutdown()
    }

    // MARK: Ollama

    @Test func ollamaResultsAreToolMessagesNamingTheTool() async throws {
        let call: JSONValue = ["role": "assistant", "content": "", "tool_calls": [["id": "call_o1", "function": ["index": 0, "name": "weather", "arguments": ["city": "Rome"]]]]]
        let server = try await OllamaTests.server(chat: [
            .json(["model": "gemma3:1b", "created_at": "2026-03-03T23:44:44Z", "message": call, "done": true, "done_reason": "stop", "prompt_eval_count": 40, "eval_count": 8]),
            .json([
                "model": "gemma3:1b", "created_at": "2026-03-03T23:44:45Z", "message": ["role": "assistant", "content": "25C in Rome."], "done": true,
                "done_reason": "stop", "prompt_eval_count": 60, "eval_count": 5,
            ]),
        ])
        let (b, _) = try OllamaTests.backend(server)
        let result = try await b.runTools(ModelRequest(prompt: "Rome?", model: "gemma3:1b"), tools: [Self.weather(Rendezvous(1))])
        #expect(result.outcome == .finished)
        #expect(result.text == "25C in Rome.")
        #expect(result.usage == Usage(inputTokens: 100, outputTokens: 13))
        let chats = try await server.requests().filter { $0.path == "/api/chat" }
        #expect(chats.count == 2)
        let msgs = try #require(chats[1].json?["messages"]?.arrayValue)
        #expect(msgs.count == 3)
        #expect(msgs[1] == ["role": "assistant", "content": "", "tool_calls": [["id": "call_o1", "function": ["name": "weather", "arguments": ["city": "Rome"]]]]])
        #expect(msgs[2] == ["role": "tool", "content": "25C", "tool_call_id": "call_o1", "tool_name": "weather"])
        await b.shutdown()
    }
}
