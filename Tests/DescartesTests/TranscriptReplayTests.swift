import Descartes
import Testing
import DescartesSupport

/// Every recorded provider transcript (../shared/fixtures/provider-transcripts,
/// except Ollama's) replayed byte for byte by a real HTTP server on
/// 127.0.0.1 to the real plugin, loaded through ProviderFactory from a
/// plugin directory holding the built library and the repository's manifest.
/// Each stream is served whole and cut into 1-byte and 7-byte pieces. (The
/// cases run one after another: a 1-byte replay is CPU work for the server,
/// and other suites' timed tests share the machine.)
///
/// What the plugin extracts (text, reasoning, tool calls, finish reason,
/// usage, error) is compared with each `.expected.json`, which a reference
/// extractor computed from the recording. Where our normalized view
/// deliberately differs, the expectation is mapped, and said so:
///
/// - finish reasons: OpenAI `length` -> `max_tokens`, `tool_calls` ->
///   `tool_use`; Anthropic `end_turn`/`stop_sequence` -> `stop`; a `stop`
///   with tool calls is `tool_use` (docs/abi.md);
/// - usage: OpenAI `prompt_tokens`/`completion_tokens` -> input/output,
///   `cached_tokens` (DeepSeek: `prompt_cache_hit_tokens`) -> cache read,
///   `reasoning_tokens` -> reasoning; Anthropic's `input_tokens` excludes
///   cached tokens, ours includes them (input = input + cache read + cache
///   write), `thinking_tokens` -> reasoning;
/// - errors: the expected error's message must appear in ours, whose kind
///   follows the status; text and reasoning seen before an in-stream error
///   must equal the expected ones;
/// - non-streamed Anthropic tool arguments (compact JSON of `input`) are
///   compared as parsed JSON, as the transcripts' README says.
///
/// The request the plugin sent is compared with `.request.json` where there
/// is one: the recorded request is turned into a `ModelRequest`, sent, and
/// the body the server received must carry the same model, messages, tools,
/// tool choice, limits, stream flags and pass-through options.
@Suite(.serialized) struct TranscriptReplayTests {
    /// Transcript directory -> the provider (manifest) that serves it.
    static let openAIFamily: [(dir: String, provider: String)] = [
        ("openai", "openai"), ("deepseek", "deepseek"), ("groq", "groq"), ("mistral", "mistral"),
        ("openrouter", "openrouter"), ("zai", "zai"), ("openai-compatible", "vllm"),
    ]

    static let key = "sk-test-replay-0123456789"

    static func files(_ dir: String) -> [String] {
        let all = (try? FileSystem.list(FileSystem.join(TestEnv.transcripts, dir))) ?? []
        return all.filter { ($0.hasSuffix(".sse") || $0.hasSuffix(".json")) && !$0.hasSuffix(".request.json") && !$0.hasSuffix(".expected.json") }
            .sorted()
    }

    static func statusOf(_ file: String) -> Int {
        // "chat-error-429.json" -> 429
        let parts = file.split(separator: "-")
        guard let i = parts.firstIndex(of: "error"), i + 1 < parts.count else { return 200 }
        return Int(parts[i + 1].prefix(3)) ?? 200
    }

    let plugins = PluginDir()

    init() {
        for (_, p) in Self.openAIFamily { plugins.addManifest(p) }
        plugins.addManifest("anthropic")
    }

    /// A backend of `provider` pointed at a fresh slot of the shared server.
    func backend(_ provider: String) async throws -> (ServerSlot, any ModelBackend) {
        let server = try await ServerSlot.make()
        let b = try plugins.factory().create(provider, config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
        return (server, b)
    }

    // MARK: The OpenAI family

    @Test func theTranscriptsAreAllThere() {
        #expect(Self.openAIFamily.map { Self.files($0.dir).count }.reduce(0, +) == 22)
        #expect(Self.files("anthropic").count == 11)
    }

    @Test(arguments: openAIFamily.map(\.dir))
    func everyOpenAIFamilyTranscript(_ dir: String) async throws {
        let provider = Self.openAIFamily.first { $0.dir == dir }!.provider
        var checked = 0
        do {
            for file in Self.files(dir) {
                let name = "\(dir)/\(file)"
                let stem = String(file.prefix(upTo: file.lastIndex(of: ".")!))
                let body = try TestEnv.transcript(name)
                let expected = try JSONValue.parse(TestEnv.transcript("\(dir)/\(stem).expected.json"))
                let recordedRequest = try? JSONValue.parse(TestEnv.transcript("\(dir)/\(stem).request.json"))
                let request = recordedRequest.map(Self.modelRequest(openAI:)) ?? ModelRequest(prompt: "replay", model: "replay-model")
                let status = Self.statusOf(file)
                if file.hasSuffix(".sse") {
                    for split in [nil, "bytes:1", "bytes:7"] as [String?] {
                        let (server, b) = try await backend(provider)
                        defer { Task { await b.shutdown() } }
                        try await server.script(["POST /v1/chat/completions": [.stream(body, split: split)]])
                        let seen = await Observed.stream(b, request)
                        Self.checkOpenAI(seen, expected, "\(name) split \(split ?? "none")")
                        let sent = try await server.requests()
                        #expect(sent.count == 1)
                        if let sent = sent.first {
                            Self.checkHeaders(sent, provider: provider, name)
                            if let recordedRequest { Self.compareOpenAIRequest(sent, recordedRequest, streamed: true, provider: provider, name) }
                        }
                    }
                } else {
                    let (server, b) = try await backend(provider)
                    defer { Task { await b.shutdown() } }
                    try await server.script(["POST /v1/chat/completions": [.json(body, status: status)]])
                    let seen = await Observed.complete(b, request)
                    Self.checkOpenAI(seen, expected, "\(name) complete")
                    if status != 200 { #expect(seen.error?.status == status, "\(name)") }
                    if let sent = try await server.requests().first, let recordedRequest {
                        Self.compareOpenAIRequest(sent, recordedRequest, streamed: false, provider: provider, name)
                    }
                    // The same body to a stream request: an error status is the
                    // same error; a 200 JSON body (a server that ignored
                    // stream: true) is read whole.
                    let streamed = await Observed.stream(b, request)
                    Self.checkOpenAI(streamed, expected, "\(name) as a stream")
                }
                checked += 1
            }
        }
        #expect(checked > 0)
    }

    static func checkOpenAI(_ seen: Observed, _ exp: JSONValue, _ name: String) {
        let c = Comment(rawValue: "\(name): \(seen)")
        #expect(seen.text == exp["text"]?.stringValue ?? "", c)
        #expect(seen.reasoning == exp["reasoning"]?.stringValue ?? "", c)
        if let err = exp["error"], !err.isNull {
            #expect(seen.error != nil, c)
            let e = seen.error
            let message = err["message"]?.stringValue ?? err.stringValue ?? ""
            #expect(e?.message.contains(message) == true, c)
            let status = err["status_code"]?.intValue ?? err["code"]?.intValue
            let kind: ProviderError.Kind = status.map { $0 == 429 ? .rateLimited : ($0 >= 500 ? .providerUnavailable : .api) } ?? .api
            #expect(e?.kind == kind, c)
            #expect(e?.message.contains(key) == false, c)
            return
        }
        #expect(seen.error == nil, c)
        guard let r = seen.response else { return }
        let expCalls = (exp["tool_calls"]?.arrayValue ?? []).map {
            ToolCall(id: $0["id"]?.stringValue ?? "", name: $0["name"]?.stringValue ?? "", arguments: $0["arguments"]?.stringValue ?? "")
        }
        #expect(r.toolCalls.map(\.name) == expCalls.map(\.name), c)
        #expect(r.toolCalls.map(\.arguments) == expCalls.map { $0.arguments.isEmpty ? "{}" : $0.arguments }, c)
        for (got, want) in zip(r.toolCalls, expCalls) where !want.id.isEmpty { #expect(got.id == want.id, c) }
        // Tool-call events of a stream: started once each, in order, with the ids kept.
        guard !seen.events.isEmpty else { return checkFinish(r, exp, expCalls, c) }
        let starts = seen.events.compactMap { e -> String? in if case .toolCallStart(_, let id, _) = e { return id }; return nil }
        #expect(starts.count == expCalls.count, c)
        let ends = seen.events.filter { if case .toolCallEnd = $0 { return true }; return false }.count
        #expect(ends == expCalls.count, c)
        checkFinish(r, exp, expCalls, c)
    }

    static func checkFinish(_ r: ModelResponse, _ exp: JSONValue, _ expCalls: [ToolCall], _ c: Comment) {
        let raw = exp["finish_reason"]?.stringValue
        var finish: FinishReason =
            switch raw {
            case "length": .maxTokens
            case "tool_calls": .toolUse
            case "content_filter": .contentFilter
            case nil: expCalls.isEmpty ? .stop : .toolUse
            case let s?: FinishReason(rawValue: s)
            }
        if finish == .stop && !expCalls.isEmpty { finish = .toolUse }
        #expect(r.finishReason == finish, c)

        if let u = exp["usage"], !u.isNull {
            let cached = u["prompt_tokens_details"]?["cached_tokens"]?.intValue ?? u["prompt_cache_hit_tokens"]?.intValue ?? 0
            let want = Usage(
                inputTokens: u["prompt_tokens"]?.intValue ?? 0, outputTokens: u["completion_tokens"]?.intValue ?? 0,
                cacheReadTokens: cached, reasoningTokens: u["completion_tokens_details"]?["reasoning_tokens"]?.intValue ?? 0)
            #expect(r.usage == want, c)
            if let cost = u["cost"]?.doubleValue { #expect(r.costUSD == cost, c) }
        }
    }

    /// Credentials travel in headers, never in the URL.
    static func checkHeaders(_ sent: ScriptedServer.Request, provider: String, _ name: String) {
        #expect(!sent.path.contains(key) && !sent.query.contains(key), "\(name)")
        if provider == "anthropic" {
            #expect(sent.header("x-api-key") == key, "\(name)")
            #expect(sent.header("anthropic-version") == "2023-06-01", "\(name)")
            #expect(sent.header("authorization") == nil, "\(name)")
        } else {
            #expect(sent.header("authorization") == "Bearer \(key)", "\(name)")
        }
        #expect(sent.header("content-type") == "application/json", "\(name)")
    }

    // MARK: OpenAI requests

    /// A recorded chat-completions request as the `ModelRequest` that
    /// should produce it.
    static func modelRequest(openAI v: JSONValue) -> ModelRequest {
        var r = ModelRequest(messages: [])
        r.model = v["model"]?.stringValue
        for m in v["messages"]?.arrayValue ?? [] {
            var role = m["role"]?.stringValue ?? "user"
            if role == "developer" { role = "system" }
            var msg = Message(role: Role(rawValue: role) ?? .user, content: text(of: m["content"]))
            msg.toolCalls = (m["tool_calls"]?.arrayValue ?? []).map {
                ToolCall(id: $0["id"]?.stringValue ?? "", name: $0["function"]?["name"]?.stringValue ?? "", arguments: $0["function"]?["arguments"]?.stringValue ?? "")
            }
            msg.toolCallID = m["tool_call_id"]?.stringValue
            r.messages.append(msg)
        }
        r.maxTokens = v["max_completion_tokens"]?.intValue ?? v["max_tokens"]?.intValue
        r.temperature = v["temperature"]?.doubleValue
        r.topP = v["top_p"]?.doubleValue
        r.seed = v["seed"]?.intValue
        r.tools = (v["tools"]?.arrayValue ?? []).map {
            let f = $0["function"] ?? $0
            return Tool(name: f["name"]?.stringValue ?? "", description: f["description"]?.stringValue ?? "", parameters: f["parameters"] ?? [:])
        }
        switch v["tool_choice"] {
        case .string("auto")?: r.toolChoice = .auto
        case .string("none")?: r.toolChoice = ToolChoice.none
        case .string("required")?: r.toolChoice = .required
        case .object(let o)?: r.toolChoice = o["function"]?["name"]?.stringValue.map { .tool($0) }
        default: break
        }
        let modelled: Set<String> = [
            "model", "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p", "seed", "tools", "tool_choice", "stream",
            "stream_options",
        ]
        for m in v.objectValue ?? [:] where !modelled.contains(m.key) { r.options[m.key] = m.value }
        return r
    }

    static func text(of content: JSONValue?) -> String {
        switch content {
        case .string(let s)?: return s
        case .array(let parts)?: return parts.compactMap { $0["text"]?.stringValue }.joined()
        default: return ""
        }
    }

    /// The body the plugin sent against the recorded one. Deliberate
    /// differences: `developer` messages are sent as `system` (the ABI has no
    /// developer role); a tool's `strict` flag and an empty description are
    /// not sent (the ABI's Tool has neither); `stream: false` is not sent
    /// (absent means false); `stream_options.include_usage` is asked for on
    /// every stream unless the manifest turns it off (Mistral).
    static func compareOpenAIRequest(_ sent: ScriptedServer.Request, _ recorded: JSONValue, streamed: Bool, provider: String, _ name: String) {
        guard let got = sent.json else {
            Issue.record("\(name): the request body is not JSON")
            return
        }
        let c = Comment(rawValue: name)
        #expect(got["model"] == recorded["model"], c)
        #expect(got["stream"] == (streamed ? true : nil), c)
        if streamed {
            #expect(got["stream_options"] == (provider == "mistral" ? nil : ["include_usage": true]), c)
        }
        let gotMessages = got["messages"]?.arrayValue ?? []
        let recMessages = recorded["messages"]?.arrayValue ?? []
        #expect(gotMessages.count == recMessages.count, c)
        for (g, r) in zip(gotMessages, recMessages) {
            let role = r["role"]?.stringValue == "developer" ? "system" : r["role"]?.stringValue
            #expect(g["role"]?.stringValue == role, c)
            #expect(text(of: g["content"]) == text(of: r["content"]), c)
            #expect(g["tool_call_id"] == r["tool_call_id"], c)
            let gc = (g["tool_calls"]?.arrayValue ?? []).map { [$0["id"], $0["function"]?["name"], $0["function"]?["arguments"]] }
            let rc = (r["tool_calls"]?.arrayValue ?? []).map { [$0["id"], $0["function"]?["name"], $0["function"]?["arguments"]] }
            #expect(gc == rc, c)
        }
        let gotTools = got["tools"]?.arrayValue ?? []
        let recTools = recorded["tools"]?.arrayValue ?? []
        #expect(gotTools.map { $0["function"]?["name"] } == recTools.map { $0["function"]?["name"] }, c)
        #expect(gotTools.map { $0["function"]?["parameters"] } == recTools.map { $0["function"]?["parameters"] }, c)
        #expect(gotTools.map { $0["function"]?["description"] ?? "" } == recTools.map { $0["function"]?["description"] ?? "" }, c)
        for k in ["tool_choice", "n", "reasoning", "thinking"] {
            #expect(got[k] == recorded[k], "\(name): \(k)")
        }
        for k in ["temperature", "top_p"] { #expect(got[k]?.doubleValue == recorded[k]?.doubleValue, "\(name): \(k)") }
        // The limit goes in the member the manifest names (max_tokens for
        // most compatible servers); the value must be the recorded one.
        let limit = { (v: JSONValue) in v["max_completion_tokens"]?.intValue ?? v["max_tokens"]?.intValue }
        #expect(limit(got) == limit(recorded), c)
        if provider == "openai" { #expect(got["max_tokens"] == nil, c) }
    }

    // MARK: Anthropic

    @Test func everyAnthropicTranscript() async throws {
        var checked = 0
        for file in Self.files("anthropic") {
            let name = "anthropic/\(file)"
            let stem = String(file.prefix(upTo: file.lastIndex(of: ".")!))
            let body = try TestEnv.transcript(name)
            let expected = try JSONValue.parse(TestEnv.transcript("anthropic/\(stem).expected.json"))
            let recordedRequest = try? JSONValue.parse(TestEnv.transcript("anthropic/\(stem).request.json"))
            let request = recordedRequest.map(Self.modelRequest(anthropic:)) ?? ModelRequest(prompt: "replay", model: "claude-replay")
            let status = Self.statusOf(file)
            if file.hasSuffix(".sse") {
                for split in [nil, "bytes:1", "bytes:7"] as [String?] {
                    let (server, b) = try await backend("anthropic")
                    defer { Task { await b.shutdown() } }
                    try await server.script(["POST /v1/messages": [.stream(body, split: split)]])
                    let seen = await Observed.stream(b, request)
                    Self.checkAnthropic(seen, expected, streamed: true, "\(name) split \(split ?? "none")")
                    if let sent = try await server.requests().first {
                        Self.checkHeaders(sent, provider: "anthropic", name)
                        if let recordedRequest { Self.compareAnthropicRequest(sent, recordedRequest, streamed: true, name) }
                    }
                }
            } else {
                let (server, b) = try await backend("anthropic")
                defer { Task { await b.shutdown() } }
                try await server.script(["POST /v1/messages": [.json(body, status: status)]])
                let seen = await Observed.complete(b, request)
                Self.checkAnthropic(seen, expected, streamed: false, "\(name) complete")
                if status != 200 { #expect(seen.error?.status == status, "\(name)") }
                if let sent = try await server.requests().first, let recordedRequest {
                    Self.compareAnthropicRequest(sent, recordedRequest, streamed: false, name)
                }
                let streamed = await Observed.stream(b, request)
                Self.checkAnthropic(streamed, expected, streamed: false, "\(name) as a stream")
            }
            checked += 1
        }
        #expect(checked == 11)
    }

    static func checkAnthropic(_ seen: Observed, _ exp: JSONValue, streamed: Bool, _ name: String) {
        let c = Comment(rawValue: "\(name): \(seen)")
        if let err = exp["error"], !err.isNull {
            #expect(seen.error != nil, c)
            let e = seen.error
            #expect(e?.message.contains(err["message"]?.stringValue ?? "") == true, c)
            #expect(e?.kind == .api, c)
            #expect(e?.providerType == err["type"]?.stringValue, c)
            return
        }
        #expect(seen.error == nil, c)
        #expect(seen.text == exp["text"]?.stringValue ?? "", c)
        #expect(seen.reasoning == exp["reasoning"]?.stringValue ?? "", c)
        guard let r = seen.response else { return }
        let expCalls = exp["tool_calls"]?.arrayValue ?? []
        #expect(r.toolCalls.map(\.id) == expCalls.map { $0["id"]?.stringValue ?? "" }, c)
        #expect(r.toolCalls.map(\.name) == expCalls.map { $0["name"]?.stringValue ?? "" }, c)
        #expect(r.toolCalls.map(\.parsedArguments) == expCalls.map { try? JSONValue.parse($0["arguments"]?.stringValue ?? "") }, c)
        if streamed {
            #expect(r.toolCalls.map(\.arguments) == expCalls.map { $0["arguments"]?.stringValue ?? "" }, c)
        }
        let finish: FinishReason =
            switch exp["finish_reason"]?.stringValue {
            case "end_turn", "stop_sequence", nil: .stop
            case "max_tokens": .maxTokens
            case "tool_use": .toolUse
            case let s?: FinishReason(rawValue: s)
            }
        #expect(r.finishReason == finish, c)
        if exp["finish_reason"]?.stringValue == "stop_sequence" { #expect(r.metadata["stop_sequence"] != nil, c) }
        if !(exp["reasoning"]?.stringValue ?? "").isEmpty { #expect(r.metadata["thinking_signature"]?.stringValue?.isEmpty == false, c) }
        if let u = exp["usage"], !u.isNull {
            let read = u["cache_read_input_tokens"]?.intValue ?? 0
            let write = u["cache_creation_input_tokens"]?.intValue ?? 0
            let want = Usage(
                inputTokens: (u["input_tokens"]?.intValue ?? 0) + read + write, outputTokens: u["output_tokens"]?.intValue ?? 0,
                cacheReadTokens: read, cacheWriteTokens: write, reasoningTokens: u["output_tokens_details"]?["thinking_tokens"]?.intValue ?? 0)
            #expect(r.usage == want, c)
        }
    }

    static func modelRequest(anthropic v: JSONValue) -> ModelRequest {
        var r = ModelRequest(messages: [])
        r.model = v["model"]?.stringValue
        for m in v["messages"]?.arrayValue ?? [] {
            r.messages.append(Message(role: m["role"]?.stringValue == "assistant" ? .assistant : .user, content: text(of: m["content"])))
        }
        r.systemPrompt = v["system"]?.stringValue
        r.maxTokens = v["max_tokens"]?.intValue
        r.temperature = v["temperature"]?.doubleValue
        r.stop = v["stop_sequences"]?.arrayValue?.compactMap(\.stringValue) ?? []
        r.tools = (v["tools"]?.arrayValue ?? []).map {
            Tool(name: $0["name"]?.stringValue ?? "", description: $0["description"]?.stringValue ?? "", parameters: $0["input_schema"] ?? [:])
        }
        switch v["tool_choice"]?["type"]?.stringValue {
        case "auto": r.toolChoice = .auto
        case "any": r.toolChoice = .required
        case "none": r.toolChoice = ToolChoice.none
        case "tool": r.toolChoice = .tool(v["tool_choice"]?["name"]?.stringValue ?? "")
        default: break
        }
        let modelled: Set<String> = ["model", "messages", "system", "max_tokens", "temperature", "stop_sequences", "tools", "tool_choice", "stream"]
        for m in v.objectValue ?? [:] where !modelled.contains(m.key) { r.options[m.key] = m.value }
        return r
    }

    /// Deliberate differences: content is always sent as text blocks (a
    /// plain string in the recording compares by its text); a tool's
    /// `strict` flag is not sent; `stream: false` is not sent.
    static func compareAnthropicRequest(_ sent: ScriptedServer.Request, _ recorded: JSONValue, streamed: Bool, _ name: String) {
        guard let got = sent.json else {
            Issue.record("\(name): the request body is not JSON")
            return
        }
        let c = Comment(rawValue: name)
        #expect(sent.path == "/v1/messages", c)
        #expect(got["model"] == recorded["model"], c)
        #expect(got["stream"] == (streamed ? true : nil), c)
        for k in ["max_tokens", "stop_sequences", "tool_choice", "thinking", "output_config", "system"] {
            #expect(got[k] == recorded[k], "\(name): \(k)")
        }
        #expect(got["temperature"]?.doubleValue == recorded["temperature"]?.doubleValue, c)
        let gm = got["messages"]?.arrayValue ?? []
        let rm = recorded["messages"]?.arrayValue ?? []
        #expect(gm.map { $0["role"] } == rm.map { $0["role"] }, c)
        #expect(gm.map { text(of: $0["content"]) } == rm.map { text(of: $0["content"]) }, c)
        let gt = got["tools"]?.arrayValue ?? []
        let rt = recorded["tools"]?.arrayValue ?? []
        #expect(gt.map { $0["name"] } == rt.map { $0["name"] }, c)
        #expect(gt.map { $0["input_schema"] } == rt.map { $0["input_schema"] }, c)
        #expect(gt.map { $0["description"] ?? "" } == rt.map { $0["description"] ?? "" }, c)
    }
}
