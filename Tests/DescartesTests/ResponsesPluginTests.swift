import Descartes
import Testing
import DescartesSupport

/// OpenAI's Responses API (factory `openai-responses` of libdescartes-openai.so)
/// through the C ABI against the loopback scripted server: recorded streams
/// and bodies of the real API (Tests/Fixtures/recorded/openai-responses,
/// from pydantic-ai's cassettes, README there) replayed byte for byte, whole
/// and cut into 1- and 7-byte pieces, against the sidecars its reference
/// extractor computed from the final response objects; and scripted events
/// for what no recording has (response.failed, error events, incomplete
/// answers, cut streams, encrypted reasoning carried into the next turn).
@Suite(.serialized) struct ResponsesPluginTests {
    static let key = "sk-responses-test-0123456789"
    let plugins = PluginDir().addManifest("openai-responses")

    func backend(_ server: ServerSlot, _ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        var config: [String: JSONValue] = ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)]
        for (k, v) in extra { config[k] = v }
        return try plugins.factory().create("openai-responses", config: config)
    }

    static let dir = "openai-responses"
    /// Recordings kept in the repository (the shared fixtures have none of this API).
    static let recorded = FileSystem.join(TestEnv.root, "Tests/Fixtures/recorded")

    static func recording(_ name: String) throws -> String {
        try FileSystem.readText(FileSystem.join(recorded, name), limit: 1 << 26)
    }

    static func files() -> [String] {
        let all = (try? FileSystem.list(FileSystem.join(recorded, dir))) ?? []
        return all.filter { ($0.hasSuffix(".sse") || $0.hasSuffix(".json")) && !$0.hasSuffix(".request.json") && !$0.hasSuffix(".expected.json") }
            .sorted()
    }

    /// A recorded request as the `ModelRequest` that should produce it.
    static func modelRequest(_ v: JSONValue) -> ModelRequest {
        var messages: [Message] = []
        var pendingCalls: [ToolCall] = []
        func flushCalls() {
            if !pendingCalls.isEmpty { messages.append(Message(role: .assistant, content: "", toolCalls: pendingCalls)) }
            pendingCalls = []
        }
        for item in v["input"]?.arrayValue ?? [] {
            switch item["type"]?.stringValue {
            case "function_call":
                pendingCalls.append(ToolCall(
                    id: item["call_id"]?.stringValue ?? "", name: item["name"]?.stringValue ?? "", arguments: item["arguments"]?.stringValue ?? ""))
            case "function_call_output":
                flushCalls()
                messages.append(.tool(callID: item["call_id"]?.stringValue ?? "", item["output"]?.stringValue ?? ""))
            default:
                flushCalls()
                let text = item["content"]?.stringValue ?? ""
                messages.append(item["role"]?.stringValue == "assistant" ? Message(role: .assistant, content: text) : .user(text))
            }
        }
        flushCalls()
        var r = ModelRequest(messages: messages, model: v["model"]?.stringValue)
        if let i = v["instructions"]?.stringValue, !i.isEmpty { r.systemPrompt = i }
        r.temperature = v["temperature"]?.doubleValue
        r.tools = (v["tools"]?.arrayValue ?? []).map {
            Tool(name: $0["name"]?.stringValue ?? "", description: $0["description"]?.stringValue ?? "", parameters: $0["parameters"] ?? [:])
        }
        if v["tool_choice"]?.stringValue == "auto" { r.toolChoice = .auto }
        if let reasoning = v["reasoning"] { r.options["reasoning"] = reasoning }
        return r
    }

    @Test func theTranscriptsAreAllThere() {
        #expect(Self.files().count == 6)
    }

    @Test func everyRecordedTranscriptAgreesWithItsExpectedResult() async throws {
        var checked = 0
        for file in Self.files() {
            let stem = String(file.prefix(upTo: file.lastIndex(of: ".")!))
            let body = try Self.recording("\(Self.dir)/\(file)")
            let expected = try JSONValue.parse(Self.recording("\(Self.dir)/\(stem).expected.json"))
            let recorded = try JSONValue.parse(Self.recording("\(Self.dir)/\(stem).request.json"))
            let request = Self.modelRequest(recorded)
            let status = file.contains("-error-") ? Int(file.split(separator: "-")[2].prefix(3)) ?? 400 : 200
            // 1-byte pieces only for the smaller streams (the 190 KB one is 190,000 sends).
            let splits: [String?] = file.hasSuffix(".sse") ? (body.utf8.count < 20_000 ? [nil, "bytes:1", "bytes:7"] : [nil, "bytes:7"]) : [nil]
            for split in splits {
                let server = try await ServerSlot.make()
                let b = try backend(server)
                let response: ScriptedServer.Response =
                    file.hasSuffix(".sse") ? .stream(body, split: split) : .json(body, status: status)
                try await server.script(["POST /v1/responses": [response]])
                let streamed = recorded["stream"]?.boolValue == true
                let seen = streamed ? await Observed.stream(b, request) : await Observed.complete(b, request)
                Self.check(seen, expected, "\(file) split \(split ?? "none")")
                let sent = try #require(try await server.requests().first)
                Self.compare(sent, recorded, streamed: streamed, file)
                await b.shutdown()
            }
            checked += 1
        }
        #expect(checked == 6)
    }

    static func check(_ seen: Observed, _ exp: JSONValue, _ name: String) {
        let c = Comment(rawValue: "\(name): \(seen)")
        if let err = exp["error"], !err.isNull {
            let e = seen.error
            #expect(e?.kind == .api, c)
            #expect(e?.message.contains(err["message"]?.stringValue ?? "?") == true, c)
            #expect(e?.providerType == err["type"]?.stringValue, c)
            return
        }
        #expect(seen.error == nil, c)
        #expect(seen.text == exp["text"]?.stringValue ?? "", c)
        #expect(seen.reasoning == exp["reasoning"]?.stringValue ?? "", c)
        guard let r = seen.response else { return }
        #expect(r.id == exp["response_id"]?.stringValue, c)
        let calls = (exp["tool_calls"]?.arrayValue ?? []).map {
            ToolCall(id: $0["id"]?.stringValue ?? "", name: $0["name"]?.stringValue ?? "", arguments: $0["arguments"]?.stringValue ?? "")
        }
        #expect(r.toolCalls == calls, c)
        #expect(exp["finish_reason"]?.stringValue == "completed", c)
        #expect(r.finishReason == (calls.isEmpty ? .stop : .toolUse), c)
        if let u = exp["usage"], !u.isNull {
            #expect(r.usage == Usage(
                inputTokens: u["input_tokens"]?.intValue ?? -1, outputTokens: u["output_tokens"]?.intValue ?? -1,
                cacheReadTokens: u["input_tokens_details"]?["cached_tokens"]?.intValue ?? 0,
                reasoningTokens: u["output_tokens_details"]?["reasoning_tokens"]?.intValue ?? 0), c)
        }
    }

    /// The body sent says what the recorded one said: model, the turns,
    /// tools, stream, temperature and reasoning settings.
    static func compare(_ sent: ScriptedServer.Request, _ recorded: JSONValue, streamed: Bool, _ name: String) {
        let c = Comment(rawValue: "\(name): \(sent.body)")
        #expect(sent.path == "/v1/responses", c)
        #expect(sent.header("authorization") == "Bearer \(key)", c)
        guard let body = sent.json else {
            Issue.record(c)
            return
        }
        #expect(body["model"] == recorded["model"], c)
        #expect(body["stream"]?.boolValue ?? false == streamed, c)
        #expect(body["temperature"]?.doubleValue == recorded["temperature"]?.doubleValue, c)
        if let reasoning = recorded["reasoning"] { #expect(body["reasoning"] == reasoning, c) }
        #expect(body["tools"]?.arrayValue?.map { $0["name"] } == recorded["tools"]?.arrayValue?.map { $0["name"] }, c)
        // Turns: the same items in the same order (user text as an input_text part).
        func shape(_ items: [JSONValue]) -> [String] {
            items.map { i in
                switch i["type"]?.stringValue {
                case "function_call": "call \(i["call_id"]?.stringValue ?? "") \(i["name"]?.stringValue ?? "") \(i["arguments"]?.stringValue ?? "")"
                case "function_call_output": "output \(i["call_id"]?.stringValue ?? "") \(i["output"]?.stringValue ?? "")"
                default: "\(i["role"]?.stringValue ?? "") \(i["content"]?.stringValue ?? i["content"]?[0]?["text"]?.stringValue ?? "")"
                }
            }
        }
        #expect(shape(body["input"]?.arrayValue ?? []) == shape(recorded["input"]?.arrayValue ?? []), c)
    }

    // MARK: Scripted events

    static func sse(_ events: [(String, String)]) -> String {
        events.map { "event: \($0.0)\ndata: \($0.1)\n\n" }.joined()
    }

    static let created = #"{"type":"response.created","sequence_number":0,"response":{"id":"resp_abc","object":"response","created_at":1760000000,"status":"in_progress","model":"gpt-5-mini-2025-08-07","output":[],"usage":null}}"#

    /// A reasoning model's turn: two summary parts, an encrypted reasoning
    /// item, text, a function call, usage with cached and reasoning tokens.
    static let reasoningTurn = sse([
        ("response.created", created),
        ("response.output_item.added", #"{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"rs_1","type":"reasoning","summary":[]}}"#),
        ("response.reasoning_summary_part.added", #"{"type":"response.reasoning_summary_part.added","sequence_number":2,"item_id":"rs_1","output_index":0,"summary_index":0,"part":{"type":"summary_text","text":""}}"#),
        ("response.reasoning_summary_text.delta", #"{"type":"response.reasoning_summary_text.delta","sequence_number":3,"item_id":"rs_1","output_index":0,"summary_index":0,"delta":"**Plan** look up "}"#),
        ("response.reasoning_summary_text.delta", #"{"type":"response.reasoning_summary_text.delta","sequence_number":4,"item_id":"rs_1","output_index":0,"summary_index":0,"delta":"the weather"}"#),
        ("response.reasoning_summary_part.added", #"{"type":"response.reasoning_summary_part.added","sequence_number":5,"item_id":"rs_1","output_index":0,"summary_index":1,"part":{"type":"summary_text","text":""}}"#),
        ("response.reasoning_summary_text.delta", #"{"type":"response.reasoning_summary_text.delta","sequence_number":6,"item_id":"rs_1","output_index":0,"summary_index":1,"delta":"**Call** weather(Oslo)"}"#),
        ("response.output_item.done", #"{"type":"response.output_item.done","sequence_number":7,"output_index":0,"item":{"id":"rs_1","type":"reasoning","encrypted_content":"gAAAAB-encrypted==","summary":[{"type":"summary_text","text":"**Plan** look up the weather"},{"type":"summary_text","text":"**Call** weather(Oslo)"}]}}"#),
        ("response.output_item.added", #"{"type":"response.output_item.added","sequence_number":8,"output_index":1,"item":{"id":"msg_1","type":"message","status":"in_progress","content":[],"role":"assistant"}}"#),
        ("response.output_text.delta", #"{"type":"response.output_text.delta","sequence_number":9,"item_id":"msg_1","output_index":1,"content_index":0,"delta":"Checking Oslo","logprobs":[]}"#),
        ("response.output_text.delta", #"{"type":"response.output_text.delta","sequence_number":10,"item_id":"msg_1","output_index":1,"content_index":0,"delta":" – one moment.","logprobs":[]}"#),
        ("response.output_item.added", #"{"type":"response.output_item.added","sequence_number":11,"output_index":2,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_w1","name":"weather"}}"#),
        ("response.function_call_arguments.delta", #"{"type":"response.function_call_arguments.delta","sequence_number":12,"item_id":"fc_1","output_index":2,"delta":"{\"city\":"}"#),
        ("response.function_call_arguments.delta", #"{"type":"response.function_call_arguments.delta","sequence_number":13,"item_id":"fc_1","output_index":2,"delta":"\"Oslo\"}"}"#),
        ("response.output_item.done", #"{"type":"response.output_item.done","sequence_number":14,"output_index":2,"item":{"id":"fc_1","type":"function_call","status":"completed","arguments":"{\"city\":\"Oslo\"}","call_id":"call_w1","name":"weather"}}"#),
        ("response.completed", #"{"type":"response.completed","sequence_number":15,"response":{"id":"resp_abc","object":"response","status":"completed","model":"gpt-5-mini-2025-08-07","output":[],"usage":{"input_tokens":300,"input_tokens_details":{"cached_tokens":256},"output_tokens":120,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":420}}}"#),
    ])

    @Test(arguments: [nil, "bytes:3", "lines"] as [String?])
    func reasoningSummariesTextACallAndTheEncryptedReasoningForTheNextTurn(_ split: String?) async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/responses": [.stream(Self.reasoningTurn, split: split)]])
        let b = try backend(server, ["reasoning_summary": "auto"])
        var request = ModelRequest(prompt: "weather in Oslo?")
        request.tools = [Tool(name: "weather", description: "Weather", parameters: ["type": "object", "properties": ["city": ["type": "string"]]])]
        let seen = await Observed.stream(b, request)
        let r = try #require(seen.response, "\(seen)")
        #expect(seen.reasoning == "**Plan** look up the weather\n\n**Call** weather(Oslo)")
        #expect(seen.text == "Checking Oslo – one moment.")
        #expect(r.toolCalls == [ToolCall(id: "call_w1", name: "weather", arguments: #"{"city":"Oslo"}"#)])
        #expect(r.finishReason == .toolUse)
        #expect(r.id == "resp_abc")
        #expect(r.model == "gpt-5-mini-2025-08-07")
        #expect(r.usage == Usage(inputTokens: 300, outputTokens: 120, cacheReadTokens: 256, reasoningTokens: 64))
        // gpt-5-mini: 44 plain input at $0.25, 256 cache reads at $0.025, 120 output at $2.00.
        let cost = (44 * 0.25 + 256 * 0.025 + 120 * 2.00) / 1e6
        #expect(r.costUSD.map { abs($0 - cost) < 1e-12 } == true, "\(String(describing: r.costUSD))")
        let signature = try #require(r.metadata["reasoning_signature"]?.stringValue)
        let first = try #require(try await server.requests().first?.json)
        #expect(first["store"] == false)
        #expect(first["include"] == ["reasoning.encrypted_content"])
        #expect(first["reasoning"] == ["summary": "auto"])
        #expect(first["tools"]?[0]?["strict"] == false)

        // The next turn carries the reasoning item back, before the assistant's text and call.
        let next = ModelRequest(messages: [
            .user("weather in Oslo?"),
            Message(role: .assistant, content: r.content, toolCalls: r.toolCalls, reasoning: r.reasoning, reasoningSignature: signature),
            .tool(callID: "call_w1", "-3C, snow"),
        ])
        _ = await Observed.stream(b, next)
        let second = try #require(try await server.requests().last?.json)
        let input = try #require(second["input"]?.arrayValue)
        #expect(input.map { $0["type"]?.stringValue ?? $0["role"]?.stringValue ?? "" } == ["user", "reasoning", "assistant", "function_call", "function_call_output"])
        #expect(input[1]["id"] == "rs_1")
        #expect(input[1]["encrypted_content"] == "gAAAAB-encrypted==")
        #expect(input[3] == ["type": "function_call", "call_id": "call_w1", "name": "weather", "arguments": #"{"city":"Oslo"}"#])
        #expect(input[4] == ["type": "function_call_output", "call_id": "call_w1", "output": "-3C, snow"])
        await b.shutdown()
    }

    @Test func sendsTheRequestAsConfiguredAndPreviousResponseIDWhenTheCallerOptsIn() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/responses": [.stream(Self.reasoningTurn)]])
        let b = try backend(server, ["store": true, "model": "gpt-5"])
        var r = ModelRequest(
            messages: [.system("Answer in French."), Message(role: .user, content: "what is this?", images: [.url("https://example.org/cat.png")])],
            maxTokens: 800, temperature: 0.3, topP: 0.9, systemPrompt: "Be brief.", toolChoice: .tool("weather"))
        r.tools = [Tool(name: "weather", description: "", parameters: ["type": "object"])]
        r.options = ["previous_response_id": "resp_prev1", "reasoning": ["effort": "low"], "truncation": "auto", "tools": [["type": "web_search"]]]
        _ = await Observed.stream(b, r)
        let body = try #require(try await server.requests().first?.json)
        #expect(body["model"] == "gpt-5")
        #expect(body["instructions"] == "Be brief.")
        #expect(body["input"] == [
            ["role": "system", "content": "Answer in French."],
            ["role": "user", "content": [["type": "input_text", "text": "what is this?"], ["type": "input_image", "image_url": "https://example.org/cat.png"]]],
        ])
        #expect(body["store"] == true)
        #expect(body["include"] == nil)
        #expect(body["previous_response_id"] == "resp_prev1")
        #expect(body["reasoning"] == ["effort": "low"])
        #expect(body["truncation"] == "auto")
        #expect(body["max_output_tokens"] == 800)
        #expect(body["tool_choice"] == ["type": "function", "name": "weather"])
        // Built-in tools from options follow the function tools.
        #expect(body["tools"]?.arrayValue?.map { $0["type"] } == ["function", "web_search"])
        #expect(body["stream"] == true)
        // Stop sequences do not exist in this API.
        var stop = ModelRequest(prompt: "x")
        stop.stop = ["###"]
        #expect(await Observed.stream(b, stop).error?.kind == .unsupportedFeature)
        await b.shutdown()
    }

    @Test func failedResponsesErrorEventsIncompleteAnswersAndCutStreams() async throws {
        let server = try await ServerSlot.make()
        let failed = Self.sse([
            ("response.created", Self.created),
            ("response.failed", #"{"type":"response.failed","sequence_number":1,"response":{"id":"resp_abc","object":"response","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"output":[],"usage":null}}"#),
        ])
        let errorEvent = Self.sse([
            ("response.created", Self.created),
            ("error", #"{"type":"error","sequence_number":1,"code":"rate_limit_exceeded","message":"Rate limit reached for gpt-5-mini on tokens per min (TPM).","param":null}"#),
        ])
        let incomplete = Self.sse([
            ("response.created", Self.created),
            ("response.output_text.delta", #"{"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Once upon"}"#),
            ("response.incomplete", #"{"type":"response.incomplete","sequence_number":2,"response":{"id":"resp_abc","object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"gpt-5-mini-2025-08-07","output":[],"usage":{"input_tokens":10,"output_tokens":16,"output_tokens_details":{"reasoning_tokens":12}}}}"#),
        ])
        let cut = Self.sse([
            ("response.created", Self.created),
            ("response.output_text.delta", #"{"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hel"}"#),
        ])
        try await server.script(["POST /v1/responses": [.stream(failed), .stream(errorEvent), .stream(incomplete), .stream(cut)]])
        let b = try backend(server)
        let f = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(f.kind == .providerUnavailable)
        #expect(f.providerType == "server_error")
        #expect(f.message.contains("The model failed to generate a response."))
        let e = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(e.kind == .rateLimited)
        #expect(e.message.contains("Rate limit reached"))
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        let r = try #require(seen.response, "\(seen)")
        #expect(r.text == "Once upon")
        #expect(r.finishReason == .maxTokens)
        #expect(r.metadata["incomplete_reason"] == "max_output_tokens")
        #expect(r.usage == Usage(inputTokens: 10, outputTokens: 16, reasoningTokens: 12))
        #expect(await Observed.stream(b, ModelRequest(prompt: "x")).error?.kind == .streamClosed)
        await b.shutdown()
    }

    @Test func httpErrorsMapByStatus() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/responses": [
            .error(429, #"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#, headers: [("retry-after-ms", "750")]),
            .error(401, #"{"error":{"message":"Incorrect API key provided: sk-respo*****6789.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#),
            .error(400, #"{"error":{"message":"Previous response with id 'resp_gone' not found.","type":"invalid_request_error","param":"previous_response_id","code":"previous_response_not_found"}}"#),
        ]])
        let b = try backend(server)
        let limited = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(limited.kind == .rateLimited && limited.retryAfter == .milliseconds(750))
        #expect(try #require(await Observed.complete(b, ModelRequest(prompt: "x")).error).kind == .authentication)
        let gone = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(gone.kind == .api && gone.message.contains("Previous response with id 'resp_gone' not found"))
        await b.shutdown()
    }
}
