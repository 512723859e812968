import DescartesOpenAIChat
import Testing

/// The OpenAI chat-completions dialect (DescartesOpenAIChat) on its own:
/// request bodies, chunk parsing and tool-call assembly. The plugins that
/// use it are tested through the C ABI in OpenAIPluginTests and
/// TranscriptReplayTests.
@Suite struct OpenAIChatTests {
    /// Records what a parser emits, as the host would assemble it.
    final class Recorder: ChatEventSink {
        var log: [String] = []
        var text: [UInt8] = []
        var reasoning: [UInt8] = []
        var calls: [Int: (id: String, name: String, args: [UInt8], ended: Bool)] = [:]
        var order: [Int] = []
        var starts = 0

        func start(id: String?, model: String?) {
            starts += 1
            log.append("start")
        }
        func text(bytes: UnsafeRawBufferPointer) { text.append(contentsOf: bytes) }
        func reasoning(bytes: UnsafeRawBufferPointer) { reasoning.append(contentsOf: bytes) }
        func toolCallStart(index: Int, id: String, name: String) {
            log.append("tool_start \(index) \(id) \(name)")
            #expect(calls[index] == nil, "a tool call started twice")
            calls[index] = (id, name, [], false)
            order.append(index)
        }
        func toolCallDelta(index: Int, bytes: UnsafeRawBufferPointer) {
            #expect(calls[index] != nil, "arguments before the start")
            #expect(calls[index]?.ended == false)
            calls[index]?.args.append(contentsOf: bytes)
        }
        func toolCallEnd(index: Int) {
            log.append("tool_end \(index)")
            calls[index]?.ended = true
        }
        var textString: String { String(decoding: text, as: UTF8.self) }
        var toolCalls: [ToolCall] {
            order.map { ToolCall(id: calls[$0]!.id, name: calls[$0]!.name, arguments: String(decoding: calls[$0]!.args, as: UTF8.self)) }
        }
    }

    /// Feeds one chunk's JSON text to a parser.
    static func feed(_ p: inout ChatResponseParser, _ text: String, _ sink: Recorder) throws(ProviderError) {
        var text = text
        try text.withUTF8 { b in Result { () throws(ProviderError) in try p.parse(UnsafeRawBufferPointer(b), sink) } }.get()
    }

    func parse(_ chunks: [String]) throws -> (Recorder, Wire.Finish) {
        let rec = Recorder()
        var p = ChatResponseParser()
        for c in chunks { try Self.feed(&p, c, rec) }
        let f = p.finish(rec)
        return (rec, f)
    }

    // MARK: Requests

    @Test func encodesARequestWithToolsAndResults() throws {
        var r = ModelRequest(
            messages: [
                .user("weather in Paris and Rome?"),
                .assistant("", toolCalls: [ToolCall(id: "call_1", name: "weather", arguments: #"{"city":"Paris"}"#)]),
                .tool(callID: "call_1", "18C"),
            ], model: "gpt-4o", maxTokens: 100, temperature: 0.5, systemPrompt: "Be brief.",
            tools: [Tool(name: "weather", description: "Current weather", parameters: ["type": "object", "properties": ["city": ["type": "string"]]])],
            toolChoice: .tool("weather"), stop: ["\n\n"], seed: 7, options: ["parallel_tool_calls": false, "model": "ignored"])
        r.topP = 0.9
        let body = try JSONValue.parse(bytes: ChatRequest.encode(r, stream: true, options: ChatRequestOptions(maxTokensField: "max_completion_tokens")))
        #expect(body["model"] == "gpt-4o")
        #expect(body["stream"] == true)
        #expect(body["stream_options"] == ["include_usage": true])
        #expect(body["max_completion_tokens"] == 100)
        #expect(body["max_tokens"] == nil)
        #expect(body["temperature"] == 0.5)
        #expect(body["top_p"] == 0.9)
        #expect(body["stop"] == ["\n\n"])
        #expect(body["seed"] == 7)
        #expect(body["parallel_tool_calls"] == false)
        let msgs = try #require(body["messages"]?.arrayValue)
        #expect(msgs.count == 4)
        #expect(msgs[0] == ["role": "system", "content": "Be brief."])
        #expect(msgs[2]["content"] == .null)
        #expect(msgs[2]["tool_calls"]?[0] == ["id": "call_1", "type": "function", "function": ["name": "weather", "arguments": #"{"city":"Paris"}"#]])
        #expect(msgs[3] == ["role": "tool", "content": "18C", "tool_call_id": "call_1"])
        #expect(body["tools"]?[0]?["type"] == "function")
        #expect(body["tools"]?[0]?["function"]?["name"] == "weather")
        #expect(body["tools"]?[0]?["function"]?["parameters"]?["properties"]?["city"]?["type"] == "string")
        #expect(body["tool_choice"] == ["type": "function", "function": ["name": "weather"]])

        let plain = try JSONValue.parse(bytes: ChatRequest.encode(ModelRequest(prompt: "hi"), stream: false, options: ChatRequestOptions(defaultModel: "m", includeUsage: true)))
        #expect(plain["model"] == "m")
        #expect(plain["stream"] == nil)
        #expect(plain["stream_options"] == nil)
        let noUsage = try JSONValue.parse(bytes: ChatRequest.encode(ModelRequest(prompt: "hi"), stream: true, options: ChatRequestOptions(includeUsage: false)))
        #expect(noUsage["stream"] == true && noUsage["stream_options"] == nil && noUsage["model"] == nil)
    }

    // MARK: Streams

    @Test func assemblesThreeParallelToolCallsInterleavedByIndex() throws {
        func tc(_ i: Int, id: String? = nil, name: String? = nil, _ args: String) -> String {
            var f: [String] = []
            if let name { f.append("\"name\":\"\(name)\"") }
            f.append("\"arguments\":\(JSONValue.string(args).jsonText)")
            return #"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":\#(i),\#(id.map { "\"id\":\"\($0)\"," } ?? "")"function":{\#(f.joined(separator: ","))}}]}}]}"#
        }
        let (rec, f) = try parse([
            #"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}"#,
            tc(0, id: "call_a", name: "a", ""), tc(1, id: "call_b", name: "b", #"{"x""#), tc(2, id: "call_c", name: "c", ""),
            tc(0, #"{"p":"#), tc(2, #"{"q":1"#), tc(1, #":2}"#), tc(0, "true}"), tc(2, "}"),
            #"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            #"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#,
        ])
        #expect(rec.toolCalls == [
            ToolCall(id: "call_a", name: "a", arguments: #"{"p":true}"#), ToolCall(id: "call_b", name: "b", arguments: #"{"x":2}"#),
            ToolCall(id: "call_c", name: "c", arguments: #"{"q":1}"#),
        ])
        #expect(rec.log.filter { $0.hasPrefix("tool_end") } == ["tool_end 0", "tool_end 1", "tool_end 2"])
        #expect(rec.starts == 1 && rec.log[0] == "start")
        #expect(f.finishReason == .toolUse)
        #expect(f.usage == Usage(inputTokens: 10, outputTokens: 5, cacheReadTokens: 4, reasoningTokens: 2))
        #expect(f.id == "c1" && f.model == "m")
    }

    @Test func keysCallsByIdThenContinuesTheLastOne() throws {
        // No index (Mistral); then a delta with neither index nor id continues the last call.
        let (rec, f) = try parse([
            #"{"choices":[{"delta":{"tool_calls":[{"id":"A","function":{"name":"one","arguments":"{\"a\":"}}]}}]}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"1}"}}]}}]}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"id":"B","function":{"name":"two","arguments":"{}"}}]}}]}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"id":"A","function":{"arguments":""}}]}}]}"#,
        ])
        #expect(rec.toolCalls == [ToolCall(id: "A", name: "one", arguments: #"{"a":1}"#), ToolCall(id: "B", name: "two", arguments: "{}")])
        // No finish reason, but tool calls: tool use.
        #expect(f.finishReason == .toolUse)
    }

    @Test func holdsArgumentsUntilTheNameArrivesAndKeepsTheFirstId() throws {
        let (rec, _) = try parse([
            #"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_1","function":{"arguments":"{\"k\""}}]}}]}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"index":1,"function":{"name":"late","arguments":":1}"}}]}}]}"#,
            #"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"other","function":{"name":"ignored"}}]}}]}"#,
        ])
        #expect(rec.toolCalls == [ToolCall(id: "call_1", name: "late", arguments: #"{"k":1}"#)])
        #expect(rec.log.contains("tool_start 0 call_1 late"))
    }

    @Test func readsContentPartsReasoningAndRefusals() throws {
        let (rec, f) = try parse([
            #"{"choices":[{"delta":{"content":[{"type":"thinking","thinking":[{"type":"text","text":"hmm, "}]}]}}]}"#,
            #"{"choices":[{"delta":{"reasoning_content":"deep "}}]}"#,
            #"{"choices":[{"delta":{"reasoning":"groq"}}]}"#,
            #"{"choices":[{"delta":{"content":[{"type":"text","text":"Hi \u00e9\n"}]}}]}"#,
            #"{"choices":[{"delta":{"content":"there","reasoning":null}}]}"#,
            #"{"choices":[{"delta":{"refusal":" (refused)"},"finish_reason":"content_filter"}]}"#,
        ])
        #expect(String(decoding: rec.reasoning, as: UTF8.self) == "hmm, deep groq")
        #expect(rec.textString == "Hi é\nthere (refused)")
        #expect(f.finishReason == .contentFilter)
        #expect(f.metadata["refusal"] == true)
    }

    @Test func mapsFinishReasonsAndKeepsTheProvidersOwn() throws {
        #expect(ChatResponseParser.finishReason("stop", hasToolCalls: false) == .stop)
        #expect(ChatResponseParser.finishReason("length", hasToolCalls: false) == .maxTokens)
        #expect(ChatResponseParser.finishReason("tool_calls", hasToolCalls: true) == .toolUse)
        #expect(ChatResponseParser.finishReason("function_call", hasToolCalls: true) == .toolUse)
        #expect(ChatResponseParser.finishReason("content_filter", hasToolCalls: false) == .contentFilter)
        #expect(ChatResponseParser.finishReason("sensitive", hasToolCalls: false) == .contentFilter)
        #expect(ChatResponseParser.finishReason(nil, hasToolCalls: false) == .stop)
        #expect(ChatResponseParser.finishReason("eos_token", hasToolCalls: false).rawValue == "eos_token")
        let (_, f) = try parse([#"{"choices":[{"delta":{"content":"x"},"finish_reason":"length"}]}"#])
        #expect(f.finishReason == .maxTokens)
        #expect(f.metadata["provider_finish_reason"] == "length")
    }

    @Test func anInBandErrorEndsTheStreamWithItsKind() throws {
        let rec = Recorder()
        var p = ChatResponseParser()
        func feed(_ s: String) throws(ProviderError) { try Self.feed(&p, s, rec) }
        try feed(#"{"choices":[{"delta":{"reasoning":"We need"}}]}"#)
        do {
            try feed(#"{"id":"gen-1","error":{"code":400,"message":"Token limit reached"},"choices":[]}"#)
            Issue.record("no error")
        } catch {
            #expect(error.kind == .api)
            #expect(error.status == 400)
            #expect(error.message.contains("Token limit reached"))
        }
        let e = ChatResponseParser.inBandError(["message": "slow down", "type": "rate_limit_error"])
        #expect(e.kind == .rateLimited && e.status == nil && e.providerType == "rate_limit_error")
        let g = ChatResponseParser.inBandError(["message": "bad tool", "type": "invalid_request_error", "code": "tool_use_failed", "status_code": 400])
        #expect(g.kind == .api && g.status == 400 && g.message.contains("invalid_request_error tool_use_failed: bad tool"))
        #expect(ChatResponseParser.inBandError(["message": "boom", "type": "server_error"]).kind == .providerUnavailable)
    }

    @Test func unreadableDataIsAnInvalidResponseWithABoundedExcerpt() {
        for bad in ["{\"choices\":[{\"delta\":{\"content\":\"x\"", "<html>" + String(repeating: "x", count: 2000), "{} trailing"] {
            do {
                _ = try parse([bad])
                Issue.record("accepted \(bad.prefix(20))")
            } catch let e as ProviderError {
                #expect(e.kind == .invalidResponse)
                #expect(e.message.count < 500)
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test func readsAWholeNonStreamedBody() throws {
        let body = try TestEnv.transcript("openai/chat-nonstream-tool-call.json")
        let (rec, f) = try parse([body])
        #expect(rec.toolCalls.count == 1)
        #expect(rec.toolCalls[0].name == "lookup_population")
        #expect(f.finishReason == .toolUse)
        #expect(f.usage?.inputTokens ?? 0 > 0)
    }

    @Test func capturesNamedTopLevelMembers() throws {
        let rec = Recorder()
        var p = ChatResponseParser(captureKeys: ["timings"])
        try Self.feed(&p, #"{"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}],"timings":{"predicted_n":3}}"#, rec)
        #expect(p.finish(rec).metadata["timings"] == ["predicted_n": 3])
    }
}
