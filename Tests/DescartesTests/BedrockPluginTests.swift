import Descartes
import DescartesPluginKit
import DescartesSupport
import Testing

/// libdescartes-bedrock.so through the C ABI against a real HTTP server on
/// 127.0.0.1 speaking Bedrock's Converse API: AWS event-stream frames (CRCs,
/// the "p" padding, frames cut anywhere across reads), tool use, reasoning,
/// usage, Bedrock's exceptions. Every scripted answer first verifies the
/// request's SigV4 signature with botocore's own signer
/// (Tests/Servers/scripted_server.py, `sigv4`): a request signed wrongly
/// gets AWS's 403 InvalidSignatureException, which these tests would see.
@Suite struct BedrockPluginTests {
    static let keyID = "AKIDTEST00112233"
    static let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYTESTKEY0011"
    static let token = "FwoGZXIvYXdzEBYaDHRlc3Qtc2Vzc2lvbi10b2tlbg=="
    static let model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    static let streamPath = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"
    static let wholePath = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    let plugins = PluginDir().addManifest("bedrock")

    func backend(_ server: ServerSlot, _ extra: [String: JSONValue] = [:], token: Bool = true) throws -> any ModelBackend {
        var config: [String: JSONValue] = [
            "endpoint": .string(server.url), "region": "eu-west-3", "access_key_id": .string(Self.keyID), "secret_access_key": .string(Self.secret),
        ]
        if token { config["session_token"] = .string(Self.token) }
        for (k, v) in extra { config[k] = v }
        return try plugins.factory(environment: ["HOME": "/nonexistent"]).create("bedrock", config: config)
    }

    /// What the server checks each request's signature with.
    static func signed(_ r: ScriptedServer.Response, token: String? = token, region: String = "eu-west-3") -> ScriptedServer.Response {
        var v: JSONObject = ["secret_key": .string(secret), "access_key": .string(keyID), "region": .string(region), "service": "bedrock"]
        if let token { v["session_token"] = .string(token) }
        return r.with(["sigv4": .object(v)])
    }

    static func frame(_ event: String, _ payload: String, type: String = "event") -> [UInt8] {
        let headers: [(String, String)] = type == "event"
            ? [(":event-type", event), (":content-type", "application/json"), (":message-type", "event")]
            : [(":exception-type", event), (":content-type", "application/json"), (":message-type", "exception")]
        return CRC32.eventStreamMessage(headers: headers, payload: Array(payload.utf8))
    }

    /// Reasoning with a signature, text with a multi-byte character, two
    /// tool uses with their input cut in pieces, then messageStop and
    /// metadata (usage with cache reads and writes).
    static let fullStream: [UInt8] = [
        frame("messageStart", #"{"p":"abcdefghijklmnopqrstu","role":"assistant"}"#),
        frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"Two cities, "}},"p":"abc"}"#),
        frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"two calls."}},"p":"abcdefgh"}"#),
        frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"RXVTaWc="}},"p":"ab"}"#),
        frame("contentBlockStop", #"{"contentBlockIndex":0,"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL"}"#),
        frame("contentBlockDelta", #"{"contentBlockIndex":1,"delta":{"text":"Voilà, "},"p":"abcdefghijklmn"}"#),
        frame("contentBlockDelta", #"{"contentBlockIndex":1,"delta":{"text":"checking."},"p":"abcd"}"#),
        frame("contentBlockStop", #"{"contentBlockIndex":1,"p":"abcdefghij"}"#),
        frame("contentBlockStart", #"{"contentBlockIndex":2,"p":"abcdefgh","start":{"toolUse":{"name":"weather","toolUseId":"tooluse_A1"}}}"#),
        frame("contentBlockDelta", #"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{\"city\": \"Pa"}},"p":"abcdefghijklmnop"}"#),
        frame("contentBlockDelta", #"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"ris\"}"}},"p":"abcdefg"}"#),
        frame("contentBlockStop", #"{"contentBlockIndex":2,"p":"abcdefghijklmnopqrstuvwxyzABC"}"#),
        frame("contentBlockStart", #"{"contentBlockIndex":3,"p":"abcdefgh","start":{"toolUse":{"name":"weather","toolUseId":"tooluse_B2"}}}"#),
        frame("contentBlockDelta", #"{"contentBlockIndex":3,"delta":{"toolUse":{"input":"{\"city\": \"Rome\"}"}},"p":"abcdefg"}"#),
        frame("contentBlockStop", #"{"contentBlockIndex":3,"p":"abcdefghijklmnopqrstuvwxyzABC"}"#),
        frame("messageStop", #"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGH","stopReason":"tool_use"}"#),
        frame("metadata", #"{"metrics":{"latencyMs":1021},"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ","usage":{"cacheReadInputTokens":2000,"cacheWriteInputTokens":100,"inputTokens":12,"outputTokens":42,"totalTokens":2154}}"#),
    ].flatMap { $0 }

    static func stream(_ bytes: [UInt8], split: Int? = nil) -> ScriptedServer.Response {
        guard let split else { return .pieces([bytes], contentType: "application/vnd.amazon.eventstream") }
        return .pieces(stride(from: 0, to: bytes.count, by: split).map { Array(bytes[$0..<min($0 + split, bytes.count)]) }, contentType: "application/vnd.amazon.eventstream")
    }

    @Test(arguments: [nil, 1, 5, 64] as [Int?])
    func aSignedStreamWithReasoningTextAndParallelTools(_ split: Int?) async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST \(Self.streamPath)": [Self.signed(Self.stream(Self.fullStream, split: split))]])
        let b = try backend(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "weather in Paris and Rome?"))
        let r = try #require(seen.response, "\(seen)")
        #expect(seen.reasoning == "Two cities, two calls.")
        #expect(seen.text == "Voilà, checking.")
        #expect(r.toolCalls == [
            ToolCall(id: "tooluse_A1", name: "weather", arguments: #"{"city": "Paris"}"#),
            ToolCall(id: "tooluse_B2", name: "weather", arguments: #"{"city": "Rome"}"#),
        ])
        #expect(r.finishReason == .toolUse)
        #expect(r.metadata["thinking_signature"] == "RXVTaWc=")
        // The signature is streamed when the reasoning block stops, before the text.
        let signed = try #require(seen.events.firstIndex(of: .reasoningSignature("RXVTaWc=")), "\(seen.events)")
        #expect(seen.events.firstIndex { if case .textDelta = $0 { true } else { false } }.map { signed < $0 } == true)
        #expect(r.metadata["latency_ms"] == 1021)
        #expect(r.model == Self.model)
        #expect(r.usage == Usage(inputTokens: 2112, outputTokens: 42, cacheReadTokens: 2000, cacheWriteTokens: 100))
        // Claude Sonnet 4.5 on Bedrock: 12 plain input at $3, 2000 cache reads at $0.30, 100 writes at $3.75, 42 output at $15.
        let cost = (12 * 3.0 + 2000 * 0.30 + 100 * 3.75 + 42 * 15.0) / 1e6
        #expect(r.costUSD.map { abs($0 - cost) < 1e-12 } == true, "\(String(describing: r.costUSD))")
        let sent = try #require(try await server.requests().first)
        #expect(sent.path == Self.streamPath)
        #expect(sent.header("x-amz-security-token") == Self.token)
        let auth = try #require(sent.header("authorization"))
        #expect(auth.hasPrefix("AWS4-HMAC-SHA256 Credential=\(Self.keyID)/"))
        #expect(auth.contains("/eu-west-3/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token, Signature="))
        #expect(sent.header("accept") == "application/vnd.amazon.eventstream")
        #expect(!sent.headers.contains { $0.1.contains(Self.secret) })
        await b.shutdown()
    }

    /// Claude's interleaved thinking through Converse: two reasoning blocks,
    /// each with its own signature, and a redacted one between them, kept
    /// in order streamed and not; the next turn sends each back as it came.
    @Test(arguments: [true, false])
    func everyReasoningBlockGoesBackExactly(_ streamed: Bool) async throws {
        let stream: [UInt8] = [
            Self.frame("messageStart", #"{"p":"abc","role":"assistant"}"#),
            Self.frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"First."}},"p":"abc"}"#),
            Self.frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"U2lnT25l"}},"p":"ab"}"#),
            Self.frame("contentBlockStop", #"{"contentBlockIndex":0,"p":"abcd"}"#),
            Self.frame("contentBlockDelta", #"{"contentBlockIndex":1,"delta":{"reasoningContent":{"redactedContent":"UmVkYWN0ZWQ="}},"p":"ab"}"#),
            Self.frame("contentBlockStop", #"{"contentBlockIndex":1,"p":"abcd"}"#),
            Self.frame("contentBlockDelta", #"{"contentBlockIndex":2,"delta":{"reasoningContent":{"text":"Second."}},"p":"abc"}"#),
            Self.frame("contentBlockDelta", #"{"contentBlockIndex":2,"delta":{"reasoningContent":{"signature":"U2lnVHdv"}},"p":"ab"}"#),
            Self.frame("contentBlockStop", #"{"contentBlockIndex":2,"p":"abcd"}"#),
            Self.frame("contentBlockDelta", #"{"contentBlockIndex":3,"delta":{"text":"Done."},"p":"abcd"}"#),
            Self.frame("contentBlockStop", #"{"contentBlockIndex":3,"p":"abcd"}"#),
            Self.frame("messageStop", #"{"p":"abcd","stopReason":"end_turn"}"#),
        ].flatMap { $0 }
        let whole = #"{"output":{"message":{"role":"assistant","content":[{"reasoningContent":{"reasoningText":{"text":"First.","signature":"U2lnT25l"}}},{"reasoningContent":{"redactedContent":"UmVkYWN0ZWQ="}},{"reasoningContent":{"reasoningText":{"text":"Second.","signature":"U2lnVHdv"}}},{"text":"Done."}]}},"stopReason":"end_turn"}"#
        let server = try await ServerSlot.make()
        try await server.script(
            [Self.streamPath: [Self.signed(Self.stream(stream, split: 5))], Self.wholePath: [Self.signed(.json(whole)), Self.signed(.json(whole))]].keyed("POST"))
        let b = try backend(server)
        let seen = streamed ? await Observed.stream(b, ModelRequest(prompt: "x")) : await Observed.complete(b, ModelRequest(prompt: "x"))
        let r = try #require(seen.response, "\(seen)")
        let blocks: [ReasoningBlock] = [.thinking("First.", signature: "U2lnT25l"), .redacted("UmVkYWN0ZWQ="), .thinking("Second.", signature: "U2lnVHdv")]
        #expect(r.reasoningBlocks == blocks)
        #expect(r.reasoning == "First.Second.")
        #expect(r.metadata["thinking_signature"] == "U2lnVHdv")
        #expect(r.content == "Done.")
        _ = await Observed.complete(b, ModelRequest(messages: [.user("x"), .assistant(r), .user("y")]))
        let sent = try #require(try await server.requests().last?.json)
        #expect(sent["messages"]?[1]?["content"] == [
            ["reasoningContent": ["reasoningText": ["text": "First.", "signature": "U2lnT25l"]]],
            ["reasoningContent": ["redactedContent": "UmVkYWN0ZWQ="]],
            ["reasoningContent": ["reasoningText": ["text": "Second.", "signature": "U2lnVHdv"]]],
            ["text": "Done."],
        ])
        await b.shutdown()
    }

    /// The verifier is real: a wrong secret is refused by botocore's signer.
    @Test func aSignatureMadeWithTheWrongSecretIsRefused() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST \(Self.wholePath)": [Self.signed(.json(#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn"}"#))]])
        let good = try backend(server)
        #expect(try await good.complete(ModelRequest(prompt: "x")).content == "hi")
        let bad = try backend(server, ["secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYTESTKEY0012"])
        let e = try #require(await providerError { _ = try await bad.complete(ModelRequest(prompt: "x")) })
        #expect(e.kind == .authentication, "\(e)")
        #expect(e.providerType == "InvalidSignatureException")
        #expect(!e.message.contains("TESTKEY0012"))
        await good.shutdown()
        await bad.shutdown()
    }

    @Test func sendsTheConverseRequest() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /model/amazon.nova-lite-v1%3A0/converse-stream": [Self.signed(Self.stream(Self.fullStream))]])
        let b = try backend(server)
        var r = ModelRequest(
            messages: [
                .system("Also be kind."),
                .user("weather in Paris and Rome?"),
                Message(
                    role: .assistant, content: "Checking.",
                    toolCalls: [ToolCall(id: "tooluse_a", name: "weather", arguments: #"{"city":"Paris"}"#), ToolCall(id: "tooluse_b", name: "weather", arguments: #"{"city":"Rome"}"#)],
                    reasoning: "two calls", reasoningSignature: "sig=="),
                .tool(callID: "tooluse_a", "error: no station in Paris", isError: true),
                .tool(callID: "tooluse_b", #"{"temp": 25}"#),
                .user("and tomorrow?"),
            ],
            model: "amazon.nova-lite-v1:0", maxTokens: 300, temperature: 0.5, topP: 0.9, systemPrompt: "Be brief.",
            tools: [Tool(name: "weather", description: "Weather", parameters: ["type": "object", "properties": ["city": ["type": "string"]]])],
            toolChoice: .required, stop: ["###"])
        r.options = ["top_k": 40, "guardrailConfig": ["guardrailIdentifier": "gr-1", "guardrailVersion": "1"]]
        let seen = await Observed.stream(b, r)
        #expect(seen.response != nil, "\(seen)")
        let body = try #require(try await server.requests().first?.json)
        #expect(body["system"] == [["text": "Be brief.\n\nAlso be kind."]])
        let msgs = try #require(body["messages"]?.arrayValue)
        #expect(msgs.map { $0["role"] } == ["user", "assistant", "user"])
        #expect(msgs[1]["content"] == [
            ["reasoningContent": ["reasoningText": ["text": "two calls", "signature": "sig=="]]],
            ["text": "Checking."],
            ["toolUse": ["toolUseId": "tooluse_a", "name": "weather", "input": ["city": "Paris"]]],
            ["toolUse": ["toolUseId": "tooluse_b", "name": "weather", "input": ["city": "Rome"]]],
        ])
        #expect(msgs[2]["content"] == [
            // A failed tool's result (Message.isError) has status error.
            ["toolResult": ["toolUseId": "tooluse_a", "content": [["text": "error: no station in Paris"]], "status": "error"]],
            ["toolResult": ["toolUseId": "tooluse_b", "content": [["json": ["temp": 25]]]]],
            ["text": "and tomorrow?"],
        ])
        #expect(body["inferenceConfig"] == ["maxTokens": 300, "temperature": 0.5, "topP": 0.9, "stopSequences": ["###"]])
        #expect(body["toolConfig"] == [
            "tools": [["toolSpec": ["name": "weather", "description": "Weather", "inputSchema": ["json": ["type": "object", "properties": ["city": ["type": "string"]]]]]]],
            "toolChoice": ["any": [:]],
        ])
        #expect(body["guardrailConfig"] == ["guardrailIdentifier": "gr-1", "guardrailVersion": "1"])
        #expect(body["additionalModelRequestFields"] == ["top_k": 40])
        await b.shutdown()
    }

    /// A response format is a forced tool whose input is the answer: its
    /// fragments arrive as text, the answer is not a tool call, and the
    /// finish reason is `stop`; a request with tools of its own is refused.
    @Test func aResponseFormatIsAForcedToolWhoseInputIsTheAnswer() async throws {
        let server = try await ServerSlot.make()
        let stream: [UInt8] = [
            Self.frame("messageStart", #"{"role":"assistant"}"#),
            Self.frame("contentBlockStart", #"{"contentBlockIndex":0,"start":{"toolUse":{"name":"structured_answer","toolUseId":"tooluse_S1"}}}"#),
            Self.frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{\"name\": \"Ada\", "}}}"#),
            Self.frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"\"age\": 36}"}}}"#),
            Self.frame("contentBlockStop", #"{"contentBlockIndex":0}"#),
            Self.frame("messageStop", #"{"stopReason":"tool_use"}"#),
            Self.frame("metadata", #"{"metrics":{"latencyMs":300},"usage":{"inputTokens":40,"outputTokens":12,"totalTokens":52}}"#),
        ].flatMap { $0 }
        let whole = #"{"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"tooluse_S2","name":"structured_answer","input":{"name":"Ada","age":36}}}]}},"stopReason":"tool_use","usage":{"inputTokens":40,"outputTokens":12,"totalTokens":52},"metrics":{"latencyMs":300}}"#
        try await server.script([Self.streamPath: [Self.signed(Self.stream(stream, split: 7))], Self.wholePath: [Self.signed(.json(whole))]].keyed("POST"))
        let b = try backend(server)
        let schema: JSONValue = ["type": "object", "properties": ["name": ["type": "string"], "age": ["type": "integer"]], "required": ["name", "age"]]
        var r = ModelRequest(prompt: "Ada, 36", model: Self.model)
        r.responseFormat = .jsonSchema(name: "person", schema: schema)
        let seen = await Observed.stream(b, r)
        let answer = try #require(seen.response, "\(seen)")
        #expect(answer.content == #"{"name": "Ada", "age": 36}"#)
        #expect(seen.text == answer.content)
        #expect(answer.toolCalls.isEmpty)
        #expect(answer.finishReason == .stop)
        #expect(try await server.requests().first?.json?["toolConfig"] == [
            "tools": [["toolSpec": ["name": "structured_answer", "description": "Give your answer: its input is the whole answer, as the schema describes it.", "inputSchema": ["json": schema]]]],
            "toolChoice": ["tool": ["name": "structured_answer"]],
        ])
        let complete = try await b.complete(r)
        #expect(try JSONValue.parse(complete.content) == ["name": "Ada", "age": 36])
        #expect(complete.finishReason == .stop)
        r.tools = [Tool(name: "weather", description: "Weather", parameters: ["type": "object"])]
        let e = await providerError { _ = try await b.complete(r) }
        #expect(e?.kind == .unsupportedFeature)
        #expect(try await server.requests().count == 2)
        await b.shutdown()
    }

    /// Cache breakpoints (`cacheControl`) are Converse `cachePoint` blocks
    /// after the system text, the message's content and the tool's spec.
    @Test func cacheBreakpointsAreCachePoints() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /model/amazon.nova-lite-v1%3A0/converse-stream": [Self.signed(Self.stream(Self.fullStream))]])
        let b = try backend(server)
        let cache: JSONValue = ["type": "ephemeral"]
        let r = ModelRequest(
            messages: [
                Message(role: .system, content: "Long instructions.", cacheControl: cache),
                .system("Short ones."),
                Message(role: .user, content: "A long document.", cacheControl: cache),
                .user("Question?"),
            ],
            model: "amazon.nova-lite-v1:0", tools: [Tool(name: "a", cacheControl: cache), Tool(name: "b")])
        let seen = await Observed.stream(b, r)
        #expect(seen.response != nil, "\(seen)")
        let body = try #require(try await server.requests().first?.json)
        #expect(body["system"] == [["text": "Long instructions."], ["cachePoint": ["type": "default"]], ["text": "Short ones."]])
        #expect(body["messages"]?[0]?["content"] == [["text": "A long document."], ["cachePoint": ["type": "default"]], ["text": "Question?"]])
        #expect(body["toolConfig"]?["tools"]?.arrayValue?.count == 3)
        #expect(body["toolConfig"]?["tools"]?[1] == ["cachePoint": ["type": "default"]])
        await b.shutdown()
    }

    @Test func credentialsFromAProfileOfTheSharedFile() async throws {
        let server = try await ServerSlot.make()
        let dir = TempDir("descartes-aws")
        dir.write("credentials", """
            [default]
            aws_access_key_id = AKIDWRONGPROFILE
            aws_secret_access_key = nope

            # the one used
            [dev]
            aws_access_key_id = \(Self.keyID)
            aws_secret_access_key = \(Self.secret)
            aws_session_token = \(Self.token)
            """)
        try await server.script(["POST \(Self.wholePath)": [Self.signed(.json(#"{"output":{"message":{"role":"assistant","content":[{"text":"from dev"}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5}}"#))]])
        let b = try plugins.factory(environment: ["HOME": "/nonexistent"]).create(
            "bedrock", config: ["endpoint": .string(server.url), "region": "eu-west-3", "credentials_file": .string(dir.file("credentials")), "profile": "dev"])
        let r = try await b.complete(ModelRequest(prompt: "x"))
        #expect(r.content == "from dev")
        #expect(r.usage == Usage(inputTokens: 3, outputTokens: 2))
        await b.shutdown()
        // A missing profile is a config error naming the file and the profile.
        #expect {
            _ = try plugins.factory(environment: ["HOME": "/nonexistent"]).create(
                "bedrock", config: ["endpoint": .string(server.url), "credentials_file": .string(dir.file("credentials")), "profile": "prod"])
        } throws: { e in
            let text = "\(e)"
            return text.contains("[prod]") && text.contains(dir.file("credentials"))
        }
    }

    @Test func aBedrockAPIKeyIsABearerTokenAndNothingIsSigned() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST \(Self.wholePath)": [.json(#"{"output":{"message":{"role":"assistant","content":[{"text":"ok"}]}},"stopReason":"end_turn"}"#)]])
        let b = try plugins.factory(environment: ["HOME": "/nonexistent"]).create(
            "bedrock", config: ["endpoint": .string(server.url), "api_key": "ABSKQmVkcm9ja0FQSUtleS10ZXN0"])
        #expect(try await b.complete(ModelRequest(prompt: "x")).content == "ok")
        let sent = try #require(try await server.requests().first)
        #expect(sent.header("authorization") == "Bearer ABSKQmVkcm9ja0FQSUtleS10ZXN0")
        #expect(sent.header("x-amz-date") == nil)
        await b.shutdown()
    }

    // MARK: Errors

    @Test(arguments: [
        (429, "ThrottlingException", ProviderError.Kind.rateLimited), (429, "ModelNotReadyException", .providerUnavailable),
        (400, "ValidationException", .api), (403, "AccessDeniedException", .authentication),
        (403, "UnrecognizedClientException", .authentication), (404, "ResourceNotFoundException", .api),
        (408, "ModelTimeoutException", .providerUnavailable), (424, "ModelErrorException", .api),
        (500, "InternalServerException", .providerUnavailable), (503, "ServiceUnavailableException", .providerUnavailable),
    ])
    func mapsBedrockExceptions(_ status: Int, _ type: String, _ kind: ProviderError.Kind) async throws {
        let server = try await ServerSlot.make()
        let headers = [("x-amzn-ErrorType", "\(type):http://internal.amazon.com/coral/com.amazon.bedrock/"), ("x-amzn-RequestId", "3f1a-test")]
        try await server.script([
            "POST \(Self.streamPath)": [Self.signed(.error(status, #"{"message":"Details from Bedrock"}"#, headers: headers))],
            "POST \(Self.wholePath)": [Self.signed(.error(status, #"{"message":"Details from Bedrock"}"#, headers: headers))],
        ])
        let b = try backend(server)
        for streaming in [true, false] {
            let seen = streaming ? await Observed.stream(b, ModelRequest(prompt: "x")) : await Observed.complete(b, ModelRequest(prompt: "x"))
            let e = try #require(seen.error, "\(seen)")
            #expect(e.kind == kind, "\(e)")
            #expect(e.status == status)
            #expect(e.providerType == type)
            #expect(e.message.contains("Details from Bedrock"))
        }
        await b.shutdown()
    }

    @Test func anExceptionMessageMidStreamEndsIt() async throws {
        let server = try await ServerSlot.make()
        let body = Self.frame("messageStart", #"{"role":"assistant"}"#) + Self.frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"text":"Half"}}"#)
            + Self.frame("throttlingException", #"{"message":"Too many tokens, please wait before trying again."}"#, type: "exception")
        try await server.script(["POST \(Self.streamPath)": [Self.signed(Self.stream(body, split: 3))]])
        let b = try backend(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(seen.text == "Half")
        #expect(seen.error?.kind == .rateLimited, "\(seen)")
        #expect(seen.error?.providerType == "ThrottlingException")
        await b.shutdown()
    }

    @Test func aCorruptFrameOrACutStreamIsAnError() async throws {
        let server = try await ServerSlot.make()
        var corrupt = Self.fullStream
        corrupt[120] ^= 0x20  // inside the second frame's payload: its message CRC no longer matches
        let cut = Array(Self.fullStream.prefix(Self.fullStream.count - 30))
        let noStop = Self.frame("messageStart", #"{"role":"assistant"}"#) + Self.frame("contentBlockDelta", #"{"contentBlockIndex":0,"delta":{"text":"x"}}"#)
        try await server.script(["POST \(Self.streamPath)": [Self.signed(Self.stream(corrupt, split: 9)), Self.signed(Self.stream(cut)), Self.signed(Self.stream(noStop))]])
        let b = try backend(server)
        let first = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(first.error?.kind == .invalidResponse, "\(first)")
        #expect(first.error?.message.contains("CRC mismatch") == true)
        let second = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(second.error?.kind == .streamClosed, "\(second)")
        let third = await Observed.stream(b, ModelRequest(prompt: "x"))
        #expect(third.error?.kind == .streamClosed, "\(third)")
        #expect(third.error?.message.contains("messageStop") == true)
        await b.shutdown()
    }

    /// `ListFoundationModels` on the control plane, signed (the server
    /// checks the signature with botocore): text models only, the provider
    /// as the owner.
    @Test func listsTheFoundationModelsWithASignedGET() async throws {
        let server = try await ServerSlot.make()
        let body = #"{"modelSummaries":[{"customizationsSupported":[],"inferenceTypesSupported":["INFERENCE_PROFILE"],"inputModalities":["TEXT","IMAGE"],"modelArn":"arn:aws:bedrock:eu-west-3::foundation-model/anthropic.claude-sonnet-4-5-20250929-v1:0","modelId":"anthropic.claude-sonnet-4-5-20250929-v1:0","modelLifecycle":{"status":"ACTIVE"},"modelName":"Claude Sonnet 4.5","outputModalities":["TEXT"],"providerName":"Anthropic","responseStreamingSupported":true},{"customizationsSupported":[],"inferenceTypesSupported":["ON_DEMAND"],"inputModalities":["TEXT"],"modelArn":"arn:aws:bedrock:eu-west-3::foundation-model/amazon.titan-embed-text-v2:0","modelId":"amazon.titan-embed-text-v2:0","modelLifecycle":{"status":"ACTIVE"},"modelName":"Titan Text Embeddings V2","outputModalities":["EMBEDDING"],"providerName":"Amazon","responseStreamingSupported":false}]}"#
        try await server.script(["GET /control/foundation-models": [Self.signed(.json(body))]])
        let b = try backend(server, ["control_endpoint": .string("\(server.url)/control")])
        let models = try await b.listModels()
        #expect(models.map(\.id) == ["anthropic.claude-sonnet-4-5-20250929-v1:0"])
        #expect(models.first?.ownedBy == "Anthropic")
        #expect(models.first?.details["inferenceTypesSupported"] == ["INFERENCE_PROFILE"])
        let sent = try #require(try await server.requests().first)
        #expect(sent.method == "GET")
        #expect(sent.header("authorization")?.contains("SignedHeaders=accept;host;x-amz-date;x-amz-security-token,") == true)
        await b.shutdown()
        // A wrong secret: the server's botocore check refuses it, as AWS does.
        let wrong = try backend(server, ["control_endpoint": .string("\(server.url)/control"), "secret_access_key": "wrong/secret/key/0000000000000000000000"])
        let e = await providerError { _ = try await wrong.listModels() }
        #expect(e?.kind == .authentication, "\(String(describing: e))")
        await wrong.shutdown()
    }
}

/// The kit's decoder of AWS's binary event stream, directly.
@Suite struct EventStreamDecoderTests {
    static let messages: [[UInt8]] = [
        CRC32.eventStreamMessage(headers: [(":event-type", "a"), (":message-type", "event")], payload: Array("{\"x\":1}".utf8)),
        CRC32.eventStreamMessage(headers: [], payload: []),
        CRC32.eventStreamMessage(headers: [(":event-type", "ünïcode")], payload: Array(repeating: 0x41, count: 3000)),
    ]

    @Test func crc32MatchesTheStandardCheckValue() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
    }

    @Test func everySplitDecodesTheSameMessages() throws {
        let all = Self.messages.flatMap { $0 }
        for step in [1, 2, 3, 7, 12, 13, 100, all.count] {
            var d = EventStreamDecoder()
            var seen: [(String?, Int)] = []
            var i = 0
            while i < all.count {
                let piece = Array(all[i..<min(i + step, all.count)])
                try piece.withUnsafeBytes { raw in
                    try d.feed(raw) { m in seen.append((m.header(":event-type"), m.payload.count)) }
                }
                i += step
            }
            try d.finish()
            #expect(seen.map(\.0) == ["a", nil, "ünïcode"], "step \(step)")
            #expect(seen.map(\.1) == [7, 0, 3000], "step \(step)")
        }
    }

    @Test func everyFlippedBitIsCaught() {
        let m = Self.messages[0]
        for byte in 0..<m.count {
            var bad = m
            bad[byte] ^= 0x01
            var d = EventStreamDecoder()
            var delivered = 0
            var threw = false
            do {
                try bad.withUnsafeBytes { raw -> Void in try d.feed(raw) { _ in delivered += 1 } }
                try d.finish()
            } catch {
                threw = true
            }
            #expect(threw && delivered == 0, "a flipped bit at byte \(byte) went unnoticed")
        }
    }

    @Test func otherHeaderTypesAreSkippedAndUnknownOnesRefused() throws {
        // A bool (0), an int32 (4), a timestamp (8) and a string (7), built by hand.
        var h: [UInt8] = []
        h += [1] + Array("t".utf8) + [0]
        h += [1] + Array("i".utf8) + [4, 0, 0, 0, 5]
        h += [2] + Array("ts".utf8) + [8] + [UInt8](repeating: 0, count: 8)
        h += [3] + Array(":x-".utf8) + [7, 0, 2] + Array("ok".utf8)
        func message(_ headers: [UInt8]) -> [UInt8] {
            let total = 16 + headers.count
            func be(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
            var m = be(total) + be(headers.count)
            m += be(Int(CRC32.checksum(m))) + headers
            return m + be(Int(CRC32.checksum(m)))
        }
        var d = EventStreamDecoder()
        var got: [(name: String, value: String)] = []
        try message(h).withUnsafeBytes { raw in try d.feed(raw) { got = $0.headers } }
        #expect(got.map(\.name) == [":x-"] && got.map(\.value) == ["ok"])
        var e = EventStreamDecoder()
        #expect(throws: EventStreamDecoder.Malformed.self) {
            try message([1] + Array("u".utf8) + [42]).withUnsafeBytes { raw in try e.feed(raw) { _ in } }
        }
    }
}
