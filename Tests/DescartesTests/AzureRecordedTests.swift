import Descartes
import DescartesSupport
import Testing

/// Azure OpenAI (factory `azure` of libdescartes-openai.so) through the C ABI
/// against the loopback scripted server replaying answers real Azure OpenAI
/// deployments sent (Tests/Fixtures/recorded/azure, from Mirascope's
/// cassettes; README there), byte for byte, whole and cut into 1- and 7-byte
/// pieces, compared with what azure_expected.py derived from each body:
/// text, parallel tool calls, usage, the prompt and completion filter
/// results, and the content-filter refusal.
@Suite(.serialized) struct AzureRecordedTests {
    static let key = "0123456789abcdef0123456789abcdef"
    let plugins = PluginDir().addManifest("azure")

    /// The recorded URL form: a dated `api-version` with the deployment in
    /// the path, or `/openai/v1/` with the deployment as the body's model.
    static func version(_ rec: Recorded) -> String {
        rec.query?.split(separator: "&").first { $0.hasPrefix("api-version=") }.map { String($0.dropFirst("api-version=".count)) } ?? "v1"
    }

    func backend(_ server: ServerSlot, _ rec: Recorded) throws -> any ModelBackend {
        try plugins.factory().create(
            "azure", config: ["endpoint": .string(server.url), "api_key": .string(Self.key), "api_version": .string(Self.version(rec))])
    }

    /// A recorded chat request as the `ModelRequest` that should produce it.
    static func modelRequest(_ v: JSONValue) -> ModelRequest {
        var messages: [Message] = []
        for m in v["messages"]?.arrayValue ?? [] {
            let text = m["content"]?.stringValue ?? ""
            switch m["role"]?.stringValue {
            case "system", "developer": messages.append(.system(text))
            case "assistant":
                let calls = (m["tool_calls"]?.arrayValue ?? []).map {
                    ToolCall(
                        id: $0["id"]?.stringValue ?? "", name: $0["function"]?["name"]?.stringValue ?? "",
                        arguments: $0["function"]?["arguments"]?.stringValue ?? "")
                }
                messages.append(Message(role: .assistant, content: text, toolCalls: calls))
            case "tool": messages.append(.tool(callID: m["tool_call_id"]?.stringValue ?? "", text))
            default: messages.append(.user(text))
            }
        }
        var r = ModelRequest(messages: messages, model: v["model"]?.stringValue)
        r.temperature = v["temperature"]?.doubleValue
        r.maxTokens = v["max_tokens"]?.intValue ?? v["max_completion_tokens"]?.intValue
        r.tools = (v["tools"]?.arrayValue ?? []).map {
            Tool(
                name: $0["function"]?["name"]?.stringValue ?? "", description: $0["function"]?["description"]?.stringValue ?? "",
                parameters: $0["function"]?["parameters"] ?? ["type": "object"])
        }
        switch v["tool_choice"]?.stringValue {
        case "none": r.toolChoice = ToolChoice.none
        case "auto": r.toolChoice = .auto
        case "required": r.toolChoice = .required
        default: break
        }
        return r
    }

    @Test func theRecordingsAreAllThere() throws {
        let files = Recorded.files("azure")
        #expect(files.count == 7)
        let all = try files.map { try Recorded("azure", $0) }
        #expect(all.contains { Self.version($0) == "v1" } && all.contains { Self.version($0) == "2024-10-21" })
        #expect(all.contains { $0.expected["content_filter_error"]?.arrayValue?.isEmpty == false })
        #expect(all.filter { $0.ext == "sse" }.allSatisfy { $0.expected["prompt_filter_results"]?.arrayValue?.isEmpty == false })
    }

    @Test func theSidecarsAreWhatTheReferenceExtractorComputes() async {
        let r = await Recorded.extractorCheck("azure", "azure_expected.py")
        #expect(r.status == 0 && r.stdout.isEmpty, "\(r)")
    }

    @Test func everyRecordedAnswerAgreesWithItsExpectedResult() async throws {
        var checked = 0
        for file in Recorded.files("azure") {
            let rec = try Recorded("azure", file)
            let request = Self.modelRequest(rec.requestBody)
            let streamed = rec.requestBody["stream"]?.boolValue == true
            let version = Self.version(rec)
            for split in rec.splits {
                let server = try await ServerSlot.make()
                // The /openai/v1/ form takes no api-version.
                var azure: JSONObject = ["api_key": .string(Self.key)]
                if version != "v1" { azure["api_version"] = .string(version) }
                try await server.script(["POST \(rec.path)": [rec.response(split: split).with(["azure": .object(azure)])]])
                let b = try backend(server, rec)
                let seen = streamed ? await Observed.stream(b, request) : await Observed.complete(b, request)
                Self.check(seen, rec.expected, "\(file) split \(split.map(String.init) ?? "none")")
                let sent = try #require(try await server.requests().first)
                #expect(sent.azure == "ok", "\(file): \(sent.azure ?? "-")")
                #expect(sent.path.hasSuffix(rec.path), "\(file): \(sent.path)")
                Self.compare(sent, rec.requestBody, file)
                await b.shutdown()
            }
            checked += 1
        }
        #expect(checked == 7)
    }

    static func check(_ seen: Observed, _ exp: JSONValue, _ name: String) {
        let c = Comment(rawValue: "\(name): \(seen)")
        if let err = exp["error"], !err.isNull {
            let e = seen.error
            #expect(e?.kind == .api, c)
            #expect(e?.status == 400, c)
            #expect(e?.providerType == err["code"]?.stringValue, c)
            #expect(e?.message.contains(err["message"]?.stringValue ?? "?") == true, c)
            for category in exp["content_filter_error"]?.arrayValue ?? [] {
                #expect(e?.message.contains(category.stringValue ?? "?") == true, c)
            }
            #expect(e?.message.contains(key) == false, c)
            return
        }
        #expect(seen.error == nil, c)
        #expect(seen.text == exp["text"]?.stringValue ?? "", c)
        guard let r = seen.response else {
            Issue.record(c)
            return
        }
        #expect(r.id == exp["response_id"]?.stringValue, c)
        #expect(r.model == exp["model"]?.stringValue, c)
        let calls = (exp["tool_calls"]?.arrayValue ?? []).map {
            ToolCall(id: $0["id"]?.stringValue ?? "", name: $0["name"]?.stringValue ?? "", arguments: $0["arguments"]?.stringValue ?? "")
        }
        #expect(r.toolCalls == calls, c)
        let finish: FinishReason =
            switch exp["finish_reason"]?.stringValue {
            case "stop": .stop
            case "tool_calls": .toolUse
            case "length": .maxTokens
            case "content_filter": .contentFilter
            case let other: FinishReason(rawValue: "unmapped \(other ?? "nil")")
            }
        #expect(r.finishReason == finish, c)
        if let u = exp["usage"], !u.isNull {
            #expect(r.usage == Usage(
                inputTokens: u["prompt_tokens"]?.intValue ?? -1, outputTokens: u["completion_tokens"]?.intValue ?? -1,
                cacheReadTokens: u["prompt_tokens_details"]?["cached_tokens"]?.intValue ?? 0,
                reasoningTokens: u["completion_tokens_details"]?["reasoning_tokens"]?.intValue ?? 0), c)
        }
        // Absent from the metadata where the extractor found none (null).
        for key in ["prompt_filter_results", "content_filter_results"] {
            if let want = exp[key], !want.isNull {
                #expect(r.metadata[key] == want, c)
            } else {
                #expect(r.metadata[key] == Optional<JSONValue>.none, c)
            }
        }
    }

    /// The body sent says what the recorded one said: model, turns, tools, tool choice.
    static func compare(_ sent: ScriptedServer.Request, _ recorded: JSONValue, _ name: String) {
        let c = Comment(rawValue: "\(name): \(sent.body)")
        #expect(sent.header("api-key") == key, c)
        guard let body = sent.json else {
            Issue.record(c)
            return
        }
        #expect(body["model"] == recorded["model"], c)
        #expect((body["stream"]?.boolValue ?? false) == (recorded["stream"]?.boolValue ?? false), c)
        func shape(_ v: JSONValue) -> [String] {
            (v["messages"]?.arrayValue ?? []).map { m in
                let calls = (m["tool_calls"]?.arrayValue ?? []).map { "\($0["id"]?.stringValue ?? "") \($0["function"]?["name"]?.stringValue ?? "")" }
                return "\(m["role"]?.stringValue ?? ""): \(m["content"]?.stringValue ?? "") \(calls) \(m["tool_call_id"]?.stringValue ?? "")"
            }
        }
        #expect(shape(body) == shape(recorded), c)
        #expect(body["tools"]?.arrayValue?.map { $0["function"]?["name"] } == recorded["tools"]?.arrayValue?.map { $0["function"]?["name"] }, c)
        #expect(body["tool_choice"] == recorded["tool_choice"], c)
    }
}
