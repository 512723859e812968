import Descartes
import Testing

/// libdescartes-anthropic.so through the C ABI against a real HTTP server on
/// 127.0.0.1 speaking the Messages API: every event type, tool use and tool
/// results, thinking, prompt caching, token counting, models, errors.
@Suite struct AnthropicPluginTests {
    static let key = "sk-ant-test-00112233445566"
    let plugins = PluginDir().addManifest("anthropic")

    func backend(_ server: ServerSlot, _ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        var config: [String: JSONValue] = ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)]
        for (k, v) in extra { config[k] = v }
        return try plugins.factory().create("anthropic", config: config)
    }

    static func event(_ name: String, _ data: String, crlf: Bool = false) -> String {
        let nl = crlf ? "\r\n" : "\n"
        return "event: \(name)\(nl)data: \(data)\(nl)\(nl)"
    }

    static let messageStart = #"{"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1}}}"#

    /// A stream with every event type: thinking (with an empty last delta and
    /// a signature), text (with a multi-byte character), a tool call whose
    /// arguments are split, a ping, then message_delta and message_stop.
    static func fullStream(crlf: Bool = false) -> String {
        var s = event("message_start", messageStart, crlf: crlf)
        s += event("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#, crlf: crlf)
        s += event("ping", #"{"type": "ping"}"#, crlf: crlf)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think"}}"#, crlf: crlf)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":""}}"#, crlf: crlf)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2lnbmF0dXJl"}}"#, crlf: crlf)
        s += event("content_block_stop", #"{"type":"content_block_stop","index":0}"#, crlf: crlf)
        s += event("content_block_start", #"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#, crlf: crlf)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Voilà: "}}"#, crlf: crlf)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"the weather."}}"#, crlf: crlf)
        s += event("content_block_stop", #"{"type":"content_block_stop","index":1}"#, crlf: crlf)
        s += event("content_block_start", #"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01","name":"weather","input":{}}}"#, crlf: crlf)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}"#, crlf: crlf)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Pa"}}"#, crlf: crlf)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"ris\"}"}}"#, crlf: crlf)
        s += event("content_block_stop", #"{"type":"content_block_stop","index":2}"#, crlf: crlf)
        s += event("message_delta", #"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":42}}"#, crlf: crlf)
        s += event("message_stop", #"{"type":"message_stop"}"#, crlf: crlf)
        return s
    }

    @Test(arguments: [nil, "bytes:1", "bytes:4"] as [String?])
    func everyEventTypeOfAStream(_ split: String?) async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/messages": [.stream(Self.fullStream(crlf: split == "bytes:4"), split: split)]])
        let b = try backend(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "weather in Paris?"))
        let r = try #require(seen.response, "\(seen)")
        #expect(seen.reasoning == "Let me think")
        #expect(seen.text == "Voilà: the weather.")
        // The signature_delta comes through when the thinking block stops: after the thinking, before the text.
        let signed = try #require(seen.events.firstIndex(of: .reasoningSignature("c2lnbmF0dXJl")), "\(seen.events)")
        #expect(seen.events.lastIndex { if case .reasoningDelta = $0 { true } else { false } }.map { $0 < signed } == true)
        #expect(seen.events.firstIndex { if case .textDelta = $0 { true } else { false } }.map { signed < $0 } == true)
        #expect(r.metadata["thinking_signature"] == "c2lnbmF0dXJl")
        #expect(r.toolCalls == [ToolCall(id: "toolu_01", name: "weather", arguments: #"{"city": "Paris"}"#)])
        #expect(r.finishReason == .toolUse)
        #expect(r.id == "msg_01")
        #expect(r.model == "claude-sonnet-4-5-20250929")
        #expect(r.metadata["thinking_signature"] == "c2lnbmF0dXJl")
        // Prompt caching: Anthropic's input_tokens excludes cached tokens; ours includes them.
        #expect(r.usage == Usage(inputTokens: 2112, outputTokens: 42, cacheReadTokens: 2000, cacheWriteTokens: 100))
        // Sonnet 4.5 prices: 12 plain input at $3, 2000 cache reads at $0.30, 100 cache writes at $3.75, 42 output at $15.
        let cost = (12 * 3.0 + 2000 * 0.30 + 100 * 3.75 + 42 * 15.0) / 1e6
        #expect(r.costUSD.map { abs($0 - cost) < 1e-12 } == true, "\(String(describing: r.costUSD))")
        let starts = seen.events.filter { if case .start = $0 { return true }; return false }
        #expect(starts.count == 1)
        await b.shutdown()
    }

    @Test func anErrorEventMidStreamEndsIt() async throws {
        let server = try await ServerSlot.make()
        var body = Self.event("message_start", Self.messageStart)
        body += Self.event("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#)
        body += Self.event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Half an"}}"#)
        body += Self.event("error", #"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
        try await server.script(["POST /v1/messages": [.stream(body)]])
        let b = try backend(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.text == "Half an")
        #expect(seen.error?.kind == .providerUnavailable)
        #expect(seen.error?.providerType == "overloaded_error")
        #expect(seen.error?.message.contains("Overloaded") == true)
        await b.shutdown()
    }

    @Test func aStreamCutBeforeMessageStopIsStreamClosed() async throws {
        let server = try await ServerSlot.make()
        let full = Self.fullStream()
        let cut = full.replacingOccurrences(of: Self.event("message_stop", #"{"type":"message_stop"}"#), with: "")
        #expect(cut != full)
        try await server.script([
            "POST /v1/messages": [.stream(full).with(["reset_after": .integer(full.utf8.count / 2)]), .stream(cut)]
        ])
        let b = try backend(server)
        let reset = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(reset.error?.kind == .streamClosed, "\(reset)")
        let clean = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(clean.error?.kind == .streamClosed, "\(clean)")
        #expect(clean.error?.message.contains("message_stop") == true)
        await b.shutdown()
    }

    @Test func eventsWithoutEventLinesAreReadByTheirType() async throws {
        let server = try await ServerSlot.make()
        let body = Self.fullStream().split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("event:") }
            .joined(separator: "\n")
        try await server.script(["POST /v1/messages": [.stream(body)]])
        let b = try backend(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.text == "Voilà: the weather.")
        #expect(seen.response?.toolCalls.count == 1)
        await b.shutdown()
    }

    /// Interleaved thinking: two thinking blocks, each with its own
    /// signature, a redacted_thinking block between them, then a tool
    /// call, as Anthropic streams them and as a whole message.
    static let signatures = [
        "EoQDCm0IDhgCKkCDzGs2kL2PgnDCZU/nM2wG2P1VIXCRHVnhDDzBQxNF1fl4QBXEKLxRItNJ2MwFdW9eeZPhsxSQIxD54cv3zs29MhljbGF1ZGUtaGFpa3UtNC01LTIwMjUxMDAxOABCCHRoaW5raW5nEgy/OWlwTmmqUjC6L70a",
        "ErcBCkgIBhABGAIiQHv1o+2/Ts9c5Y0bq3k1fXq8pT0mH1lQ9aJ6eZ2wC8sV7dR4gN0uK3yI9bL5tE6hM2jW1oP8cA4fG7xS2nD0vXQSDLk3Zq+8uQwPbD6o9RoMhT2y",
    ]
    static let redacted = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB9URj2pLmN3kF8/dW5hR7xJ0aP1oLs9yTcM=="
    static let interleaved: [ReasoningBlock] = [
        .thinking("First, the city.", signature: signatures[0]), .redacted(redacted), .thinking("Then the tool.", signature: signatures[1]),
    ]

    static func interleavedStream() -> String {
        var s = event("message_start", messageStart)
        s += event("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#)
        s += event("ping", #"{"type": "ping"}"#)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"First, "}}"#)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"the city."}}"#)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"\#(signatures[0])"}}"#)
        s += event("content_block_stop", #"{"type":"content_block_stop","index":0}"#)
        s += event("content_block_start", #"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"\#(redacted)"}}"#)
        s += event("content_block_stop", #"{"type":"content_block_stop","index":1}"#)
        s += event("content_block_start", #"{"type":"content_block_start","index":2,"content_block":{"type":"thinking","thinking":"","signature":""}}"#)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":2,"delta":{"type":"thinking_delta","thinking":"Then the tool."}}"#)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":2,"delta":{"type":"signature_delta","signature":"\#(signatures[1])"}}"#)
        s += event("content_block_stop", #"{"type":"content_block_stop","index":2}"#)
        s += event("content_block_start", #"{"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_01","name":"weather","input":{}}}"#)
        s += event("content_block_delta", #"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Paris\"}"}}"#)
        s += event("content_block_stop", #"{"type":"content_block_stop","index":3}"#)
        s += event("message_delta", #"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":42}}"#)
        s += event("message_stop", #"{"type":"message_stop"}"#)
        return s
    }

    static let interleavedMessage: JSONValue = [
        "id": "msg_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "stop_reason": "tool_use", "stop_sequence": .null,
        "usage": ["input_tokens": 12, "output_tokens": 42],
        "content": [
            ["type": "thinking", "thinking": "First, the city.", "signature": .string(signatures[0])],
            ["type": "redacted_thinking", "data": .string(redacted)],
            ["type": "thinking", "thinking": "Then the tool.", "signature": .string(signatures[1])],
            ["type": "tool_use", "id": "toolu_01", "name": "weather", "input": ["city": "Paris"]],
        ],
    ]

    /// Every reasoning block of an answer is kept, in order, each thinking
    /// block with its own signature (streamed when it stops), the redacted
    /// one in its place; sent back with the next turn (`Message.assistant`
    /// of the answer), the upstream gets the same blocks, unmodified, before
    /// the tool_use.
    @Test(arguments: [true, false])
    func interleavedThinkingBlocksGoBackExactly(_ streamed: Bool) async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/messages": [streamed ? .stream(Self.interleavedStream(), split: "bytes:7") : .json(Self.interleavedMessage), .json(Self.interleavedMessage)]
        ])
        let b = try backend(server)
        let question = ModelRequest(prompt: "weather in Paris?")
        let seen = streamed ? await Observed.stream(b, question) : await Observed.complete(b, question)
        let r = try #require(seen.response, "\(seen)")
        #expect(r.reasoningBlocks == Self.interleaved)
        #expect(r.reasoning == "First, the city.Then the tool.")
        #expect(r.metadata["thinking_signature"] == .string(Self.signatures[1]))
        #expect(r.metadata["redacted_thinking"] == nil)
        #expect(r.toolCalls.map(\.id) == ["toolu_01"])
        #expect(r.toolCalls.first?.parsedArguments == ["city": "Paris"])
        if streamed {
            // Each signature ends its block; the redacted block comes between them.
            let reasoningEvents = seen.events.compactMap { e -> String? in
                switch e {
                case .reasoningDelta: return "thinking"
                case .reasoningSignature(let s): return "signature \(Self.signatures.firstIndex(of: s) ?? -1)"
                case .reasoningRedacted(let d): return d == Self.redacted ? "redacted" : "redacted?"
                case .toolCallStart: return "tool"
                default: return nil
                }
            }
            #expect(reasoningEvents.reduce(into: [String]()) { if $0.last != $1 { $0.append($1) } } == [
                "thinking", "signature 0", "redacted", "thinking", "signature 1", "tool",
            ])
        }
        var next = question
        next.messages += [.assistant(r), .tool(callID: "toolu_01", "18C")]
        _ = await Observed.complete(b, next)
        let sent = try #require(try await server.requests().last?.json)
        #expect(sent["messages"]?[1]?["content"] == [
            ["type": "thinking", "thinking": "First, the city.", "signature": .string(Self.signatures[0])],
            ["type": "redacted_thinking", "data": .string(Self.redacted)],
            ["type": "thinking", "thinking": "Then the tool.", "signature": .string(Self.signatures[1])],
            ["type": "tool_use", "id": "toolu_01", "name": "weather", "input": ["city": "Paris"]],
        ])
        await b.shutdown()
    }

    /// A caller that sets only `reasoning` and `reasoningSignature` sends
    /// one thinking block; an unsigned block (another provider's reasoning)
    /// is not sent to Anthropic, which would refuse it.
    @Test func theJoinedViewAloneSendsOneBlockAndUnsignedBlocksStayHome() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/messages": [.json(Self.interleavedMessage), .json(Self.interleavedMessage)]])
        let b = try backend(server)
        for (message, expected) in [
            (Message(role: .assistant, content: "ok", reasoning: "joined", reasoningSignature: "c2ln"),
             [["type": "thinking", "thinking": "joined", "signature": "c2ln"], ["type": "text", "text": "ok"]] as JSONValue),
            (Message(role: .assistant, content: "ok", reasoning: "mine", reasoningBlocks: [.thinking("mine", signature: nil), .redacted("ZGF0YQ==")]),
             [["type": "redacted_thinking", "data": "ZGF0YQ=="], ["type": "text", "text": "ok"]] as JSONValue),
        ] {
            _ = await Observed.complete(b, ModelRequest(messages: [.user("a"), message, .user("b")]))
            let sent = try #require(try await server.requests().last?.json)
            #expect(sent["messages"]?[1]?["content"] == expected)
        }
        await b.shutdown()
    }

    // MARK: Requests

    @Test func sendsTheMessagesRequest() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/messages": [.stream(Self.fullStream())]])
        let b = try backend(server, ["beta": ["prompt-caching-2024-07-31", "token-efficient-tools-2025-02-19"]])
        var r = ModelRequest(
            messages: [
                .system("Also be kind."),
                .user("weather in Paris and Rome?"),
                Message(
                    role: .assistant, content: "Checking.",
                    toolCalls: [ToolCall(id: "toolu_a", name: "weather", arguments: #"{"city":"Paris"}"#), ToolCall(id: "toolu_b", name: "weather", arguments: #"{"city":"Rome"}"#)],
                    reasoning: "two calls", reasoningSignature: "sig=="),
                .tool(callID: "toolu_a", "18C"),
                .tool(callID: "toolu_b", "25C"),
                .user("and tomorrow?"),
            ],
            temperature: 0.5, systemPrompt: "Be brief.", tools: [Tool(name: "weather", description: "Weather", parameters: ["type": "object", "properties": ["city": ["type": "string"]]])],
            toolChoice: .required, stop: ["###"])
        r.options = ["cache_control": ["type": "ephemeral"], "thinking": ["type": "enabled", "budget_tokens": 1024], "top_k": 5]
        _ = await Observed.stream(b, r)
        let sent = try #require(try await server.requests().first)
        #expect(sent.path == "/v1/messages" && sent.query.isEmpty)
        #expect(sent.header("x-api-key") == Self.key)
        #expect(sent.header("anthropic-version") == "2023-06-01")
        #expect(sent.header("anthropic-beta") == "prompt-caching-2024-07-31,token-efficient-tools-2025-02-19")
        #expect(sent.header("authorization") == nil)
        let body = try #require(sent.json)
        #expect(body["model"] == "claude-sonnet-4-5")  // the manifest's default
        #expect(body["max_tokens"] == 4096)  // always sent: the manifest's default
        #expect(body["stream"] == true)
        #expect(body["stop_sequences"] == ["###"])
        #expect(body["tool_choice"] == ["type": "any"])
        #expect(body["thinking"] == ["type": "enabled", "budget_tokens": 1024])
        #expect(body["top_k"] == 5)
        #expect(body["cache_control"] == nil)
        // The system prompt at the top level, with a cache breakpoint.
        #expect(body["system"] == [["type": "text", "text": "Be brief.\n\nAlso be kind.", "cache_control": ["type": "ephemeral"]]])
        #expect(body["tools"]?[0] == ["name": "weather", "description": "Weather", "input_schema": ["type": "object", "properties": ["city": ["type": "string"]]], "cache_control": ["type": "ephemeral"]])
        let msgs = try #require(body["messages"]?.arrayValue)
        #expect(msgs.map { $0["role"] } == ["user", "assistant", "user"])
        #expect(msgs[1]["content"] == [
            ["type": "thinking", "thinking": "two calls", "signature": "sig=="],
            ["type": "text", "text": "Checking."],
            ["type": "tool_use", "id": "toolu_a", "name": "weather", "input": ["city": "Paris"]],
            ["type": "tool_use", "id": "toolu_b", "name": "weather", "input": ["city": "Rome"]],
        ])
        // Both tool results and the next question in one user turn; the last block is a cache breakpoint.
        #expect(msgs[2]["content"] == [
            ["type": "tool_result", "tool_use_id": "toolu_a", "content": "18C"],
            ["type": "tool_result", "tool_use_id": "toolu_b", "content": "25C"],
            ["type": "text", "text": "and tomorrow?", "cache_control": ["type": "ephemeral"]],
        ])
        await b.shutdown()
    }

    /// Breakpoints of the request's own (`Message.cacheControl`,
    /// `Tool.cacheControl`) land on exactly those blocks, as given (a ttl
    /// included): a system message ends a `system` block, a message's goes
    /// on its last block, consecutive messages of one turn stay blocks of
    /// that turn. Nothing else is marked.
    @Test func perMessageAndPerToolBreakpointsLandOnTheirBlocks() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/messages": [.stream(Self.fullStream())]])
        let b = try backend(server)
        let hour: JSONValue = ["type": "ephemeral", "ttl": "1h"]
        let short: JSONValue = ["type": "ephemeral"]
        let r = ModelRequest(
            messages: [
                Message(role: .system, content: "You are terse.", cacheControl: hour),
                .system("Today is Monday."),
                Message(role: .user, content: "Here is a long document.", cacheControl: short),
                .user("What does it say?"),
                Message(role: .assistant, content: "", toolCalls: [ToolCall(id: "toolu_a", name: "search", arguments: #"{"q":"x"}"#)]),
                Message(role: .tool, content: "found", toolCallID: "toolu_a", cacheControl: short),
                Message(role: .user, content: "", cacheControl: hour),  // no block of its own: marks the one before
            ],
            tools: [
                Tool(name: "search", cacheControl: short),
                Tool(name: "fetch"),
            ])
        _ = await Observed.stream(b, r)
        let body = try #require(try await server.requests().first?.json)
        #expect(body["system"] == [
            ["type": "text", "text": "You are terse.", "cache_control": ["type": "ephemeral", "ttl": "1h"]],
            ["type": "text", "text": "Today is Monday."],
        ])
        #expect(body["tools"]?[0]?["cache_control"] == ["type": "ephemeral"])
        #expect(body["tools"]?[1]?["cache_control"] == nil)
        let msgs = try #require(body["messages"]?.arrayValue)
        #expect(msgs.map { $0["role"] } == ["user", "assistant", "user"])
        #expect(msgs[0]["content"] == [
            ["type": "text", "text": "Here is a long document.", "cache_control": ["type": "ephemeral"]],
            ["type": "text", "text": "What does it say?"],
        ])
        #expect(msgs[1]["content"]?[0]?["cache_control"] == nil)
        #expect(msgs[2]["content"] == [["type": "tool_result", "tool_use_id": "toolu_a", "content": "found", "cache_control": ["type": "ephemeral", "ttl": "1h"]]])
        // Without any breakpoint the system prompt stays a string.
        _ = await Observed.stream(b, ModelRequest(prompt: "x", system: "be brief"))
        #expect(try await server.requests().last?.json?["system"] == "be brief")
        await b.shutdown()
    }

    @Test func completeReadsAWholeMessage() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/messages": [.json(try TestEnv.transcript("anthropic/messages-nonstream-parallel-tool-use.json"))]])
        let b = try backend(server, ["max_tokens": 256])
        let r = try await b.complete(ModelRequest(prompt: "Denver?", model: "claude-sonnet-4-5"))
        #expect(r.toolCalls.map(\.name) == ["get_weather", "get_elevation"])
        #expect(r.toolCalls[0].parsedArguments == ["city": "Denver"])
        #expect(r.finishReason == .toolUse)
        let body = try #require(try await server.requests().first?.json)
        #expect(body["stream"] == nil)
        #expect(body["max_tokens"] == 256)
        await b.shutdown()
    }

    /// An HTTP 200 that says nothing (no content blocks, or an empty text
    /// block) with `end_turn` is no answer; `max_tokens` or a refusal
    /// explains an empty one (issue 16, the OpenAI dialect's rule).
    @Test func emptySuccessfulAnswersAreInvalidResponses() async throws {
        func message(_ content: String, _ stop: String) -> String {
            #"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":\#(content),"stop_reason":"\#(stop)","usage":{"input_tokens":3,"output_tokens":0}}"#
        }
        var empty = Self.event("message_start", Self.messageStart)
        empty += Self.event("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#)
        empty += Self.event("content_block_stop", #"{"type":"content_block_stop","index":0}"#)
        empty += Self.event("message_delta", #"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":0}}"#)
        empty += Self.event("message_stop", #"{"type":"message_stop"}"#)
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/messages": [
                .json(message("[]", "end_turn")),
                .json(message(#"[{"type":"text","text":""}]"#, "end_turn")),
                .stream(empty),
                .json(message("[]", "max_tokens")),
                .json(message("[]", "refusal")),
            ]
        ])
        let b = try backend(server)
        let none = await Observed.complete(b, ModelRequest(prompt: "x"))
        #expect(none.error?.kind == .invalidResponse, "\(none)")
        #expect(none.error?.message == "HTTP 200, but the answer is empty (no text, no tool call) with stop_reason 'end_turn'", "\(none)")
        let blank = await Observed.complete(b, ModelRequest(prompt: "x"))
        #expect(blank.error?.kind == .invalidResponse, "\(blank)")
        let streamed = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(streamed.error?.kind == .invalidResponse, "\(streamed)")
        #expect(streamed.error?.message.contains("with stop_reason 'end_turn'") == true, "\(streamed)")
        let cut = await Observed.complete(b, ModelRequest(prompt: "x"))
        #expect(cut.error == nil && cut.response?.finishReason == .maxTokens, "\(cut)")
        let refused = await Observed.complete(b, ModelRequest(prompt: "x"))
        #expect(refused.error == nil && refused.response?.finishReason == .contentFilter, "\(refused)")
        await b.shutdown()
    }

    // MARK: Errors

    @Test(arguments: [
        (400, ProviderError.Kind.api, "invalid_request_error"), (401, .authentication, "authentication_error"),
        (403, .authentication, "permission_error"), (404, .api, "not_found_error"), (429, .rateLimited, "rate_limit_error"),
        (500, .providerUnavailable, "api_error"), (502, .providerUnavailable, "api_error"), (503, .providerUnavailable, "api_error"),
        (529, .providerUnavailable, "overloaded_error"),
    ])
    func mapsEveryErrorStatus(_ status: Int, _ kind: ProviderError.Kind, _ type: String) async throws {
        let server = try await ServerSlot.make()
        let body = #"{"type":"error","error":{"type":"\#(type)","message":"Details from Anthropic"},"request_id":"req_1"}"#
        try await server.script(["POST /v1/messages": [.error(status, body, headers: status == 429 ? [("retry-after", "3")] : [])]])
        let b = try backend(server)
        for streamed in [true, false] {
            let request = ModelRequest(prompt: "x", model: "claude-nope")
            let seen = streamed ? await Observed.stream(b, request) : await Observed.complete(b, request)
            let e = try #require(seen.error)
            #expect(e.kind == kind)
            #expect(e.status == status)
            #expect(e.providerType == type)
            #expect(e.message.hasPrefix("HTTP \(status): \(type): Details from Anthropic"), "\(e.message)")
            #expect(!e.message.contains(Self.key))
            if status == 404 { #expect(e.message.contains("claude-nope")) }
            if status == 429 { #expect(e.retryAfter == .seconds(3)) }
        }
        await b.shutdown()
    }

    @Test func deadlinesAndCancellation() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/messages": [.hang]])
        let b = try backend(server)
        var r = ModelRequest(prompt: "x")
        r.deadlines = Deadlines(firstToken: .milliseconds(300))
        let start = ContinuousClock.now
        let timedOut = await Observed.stream(b, r)
        #expect(timedOut.error?.kind == .timeout && timedOut.error?.deadline == "first_token")
        expectWithin(ContinuousClock.now - start, .seconds(10))
        let task = Task { await Observed.stream(b, ModelRequest(prompt: "x")) }
        try await server.waitForRequests(2)
        task.cancel()
        #expect(await task.value.error?.kind == .cancelled)
        await b.shutdown()
    }

    // MARK: Tokens, models, health

    @Test func countsTokensThroughTheAPIElseEstimates() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/messages/count_tokens": [
                .json(#"{"input_tokens":1234}"#), .error(404, #"{"type":"error","error":{"type":"not_found_error","message":"Not found"}}"#),
                .error(401, #"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#),
            ]
        ])
        let b = try backend(server)
        var request = ModelRequest(prompt: String(repeating: "word ", count: 40), model: "claude-haiku-4-5")
        request.systemPrompt = "sys"
        request.maxTokens = 99
        request.tools = [Tool(name: "t", parameters: ["type": "object"])]
        let exact = try await b.estimateTokens(request)
        #expect(exact == TokenEstimate(tokens: 1234, exact: true, method: "api:count_tokens"))
        let body = try #require(try await server.requests().first?.json)
        #expect(body["model"] == "claude-haiku-4-5" && body["system"] == "sys" && body["tools"]?[0]?["name"] == "t")
        #expect(body["max_tokens"] == nil && body["stream"] == nil)
        let estimated = try await b.estimateTokens(request)
        #expect(!estimated.exact)
        #expect(estimated.method.hasPrefix("heuristic:chars/4"))
        #expect(estimated.tokens > 40)
        let e = await providerError { _ = try await b.estimateTokens(request) }
        #expect(e?.kind == .authentication)
        await b.shutdown()

        // Unreachable: the heuristic.
        let port: Int
        do {
            let own = try await ScriptedServer.start()
            port = own.port
        }
        try await Task.sleep(for: .milliseconds(100))
        let offline = try plugins.factory().create("anthropic", config: ["endpoint": .string("http://127.0.0.1:\(port)/v1"), "api_key": .string(Self.key)])
        let t = try await offline.estimateTokens(ModelRequest(prompt: "abcdabcd"))
        #expect(!t.exact && t.method.hasPrefix("heuristic:chars/4"))
        await offline.shutdown()
    }

    @Test func listsModelsAcrossPagesAndChecksHealth() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "GET /v1/models": [
                .json(#"{"data":[{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"}],"has_more":true,"first_id":"claude-sonnet-4-5-20250929","last_id":"claude-sonnet-4-5-20250929"}"#),
                .json(#"{"data":[{"type":"model","id":"claude-haiku-4-5-20251001","display_name":"Claude Haiku 4.5","created_at":"2025-10-01T00:00:00Z"}],"has_more":false,"first_id":"claude-haiku-4-5-20251001","last_id":"claude-haiku-4-5-20251001"}"#),
                .json(#"{"data":[],"has_more":false}"#),
                .error(401, #"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#),
            ]
        ])
        let b = try backend(server)
        let models = try await b.listModels()
        #expect(models.map(\.id) == ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"])
        #expect(models[0].details["display_name"] == "Claude Sonnet 4.5")
        let health = try await b.healthCheck()
        #expect(health.message.contains("answered 200"))
        let e = await providerError { _ = try await b.healthCheck() }
        #expect(e?.kind == .authentication)
        #expect(e?.message.contains("invalid x-api-key") == true)
        let sent = try await server.requests()
        #expect(sent.map(\.query) == ["limit=1000", "limit=1000&after_id=claude-sonnet-4-5-20250929", "limit=1", "limit=1"])
        #expect(sent.allSatisfy { $0.header("x-api-key") == Self.key })
        await b.shutdown()
    }
}
