import Descartes
import Testing

/// Azure OpenAI (factory `azure` of libdescartes-openai.so) through the C ABI
/// against the loopback scripted server answering as Azure does: a request
/// without the scripted `api-key` (or Entra ID bearer token) or without the
/// scripted `api-version` gets Azure's own 401/404 bodies, streams open with a
/// choice-less chunk of prompt filter results (id and model empty), every
/// chunk carries content filter results, keys come sorted.
@Suite struct AzurePluginTests {
    static let key = "0123456789abcdef0123456789abcdef"
    static let token = "eyJ0eXAiOiJKV1QiLCJhbGciOi.entra-test-token.sig"
    static let version = "2024-10-21"
    static let deploymentPath = "/openai/deployments/gpt-4o-mini/chat/completions"
    let plugins = PluginDir().addManifest("azure")

    func azure(_ server: ServerSlot, _ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        var config: [String: JSONValue] = [
            "endpoint": .string(server.url), "api_key": .string(Self.key), "api_version": .string(Self.version),
            "deployment": "gpt-4o-mini",
        ]
        for (k, v) in extra { config[k] = v }
        return try plugins.factory().create("azure", config: config)
    }

    static let safe = #"{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}"#
    static let promptFilter = #"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":\#(safe)}]}"#

    static func chunk(_ delta: String, finish: String? = nil, filter: String = safe) -> String {
        #"{"choices":[{"content_filter_results":\#(filter),"delta":\#(delta),"finish_reason":\#(finish.map { "\"\($0)\"" } ?? "null"),"index":0,"logprobs":null}],"created":1748977994,"id":"chatcmpl-BeRMQ69PcNQmy9a0f0C0VlLsdOy9H","model":"gpt-4o-mini-2024-07-18","object":"chat.completion.chunk","system_fingerprint":"fp_ee1d74bde0","usage":null}"#
    }

    static let usage = #"{"choices":[],"created":1748977994,"id":"chatcmpl-BeRMQ69PcNQmy9a0f0C0VlLsdOy9H","model":"gpt-4o-mini-2024-07-18","object":"chat.completion.chunk","system_fingerprint":"fp_ee1d74bde0","usage":{"completion_tokens":21,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":60,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":40},"total_tokens":81}}"#

    static func sse(_ events: [String]) -> String { events.map { "data: \($0)\n\n" }.joined() + "data: [DONE]\n\n" }

    static let toolStream = sse([
        promptFilter,
        chunk(#"{"content":"","refusal":null,"role":"assistant"}"#, filter: "{}"),
        chunk(#"{"content":"Checking "}"#),
        chunk(#"{"content":"Zürich."}"#),
        chunk(#"{"tool_calls":[{"function":{"arguments":"","name":"weather"},"id":"call_q1","index":0,"type":"function"}]}"#, filter: "{}"),
        chunk(#"{"tool_calls":[{"function":{"arguments":"{\"city\":"},"index":0}]}"#, filter: "{}"),
        chunk(#"{"tool_calls":[{"function":{"arguments":"\"Zürich\"}"},"index":0}]}"#, filter: "{}"),
        chunk("{}", finish: "tool_calls", filter: "{}"),
        usage,
    ])

    @Test(arguments: [nil, "bytes:1", "bytes:9", "lines"] as [String?])
    func aDeploymentStreamWithFilterResultsAToolCallAndUsage(_ split: String?) async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            Self.deploymentPath: [.stream(Self.toolStream, split: split).with(["azure": ["api_key": .string(Self.key), "api_version": .string(Self.version)]])]
        ].keyed("POST"))
        let b = try azure(server)
        var request = ModelRequest(prompt: "weather in Zürich?")
        request.tools = [Tool(name: "weather", description: "Weather", parameters: ["type": "object"])]
        let seen = await Observed.stream(b, request)
        let r = try #require(seen.response, "\(seen)")
        #expect(seen.text == "Checking Zürich.")
        #expect(r.toolCalls == [ToolCall(id: "call_q1", name: "weather", arguments: #"{"city":"Zürich"}"#)])
        #expect(r.finishReason == .toolUse)
        // The first chunk's empty id and model are not the answer's.
        #expect(r.id == "chatcmpl-BeRMQ69PcNQmy9a0f0C0VlLsdOy9H")
        #expect(r.model == "gpt-4o-mini-2024-07-18")
        #expect(r.usage == Usage(inputTokens: 60, outputTokens: 21, cacheReadTokens: 40))
        // Azure's filter results, as last seen.
        #expect(r.metadata["prompt_filter_results"]?[0]?["content_filter_results"]?["hate"]?["severity"] == "safe")
        #expect(r.metadata["content_filter_results"]?["violence"]?["filtered"] == false)
        // gpt-4o-mini: 20 plain input at $0.15, 40 cache reads at $0.075, 21 output at $0.60.
        let cost = (20 * 0.15 + 40 * 0.075 + 21 * 0.60) / 1e6
        #expect(r.costUSD.map { abs($0 - cost) < 1e-12 } == true, "\(String(describing: r.costUSD))")
        let req = try #require(try await server.requests().first)
        #expect(req.azure == "ok")
        #expect(req.query == "api-version=\(Self.version)")
        #expect(req.header("api-key") == Self.key)
        #expect(req.header("authorization") == nil)
        #expect(req.json?["model"] == "gpt-4o-mini")
        #expect(req.json?["stream_options"]?["include_usage"] == true)
        await b.shutdown()
    }

    @Test func theV1FormWithAnEntraIDTokenAndAWholeAnswer() async throws {
        let server = try await ServerSlot.make()
        let body = #"{"choices":[{"content_filter_results":\#(Self.safe),"finish_reason":"stop","index":0,"logprobs":null,"message":{"annotations":[],"content":"Grüezi!","refusal":null,"role":"assistant"}}],"created":1758119573,"id":"chatcmpl-CGnVFG8AVBjwC9UPyLDLxehmdOSth","model":"gpt-4.1-2025-04-14","object":"chat.completion","prompt_filter_results":[{"prompt_index":0,"content_filter_results":\#(Self.safe)}],"system_fingerprint":"fp_3dfb47c1f3","usage":{"completion_tokens":3,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":11,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":0},"total_tokens":14}}"#
        try await server.script(["POST /openai/v1/chat/completions": [.json(body).with(["azure": ["bearer": .string(Self.token)]])]])
        // The endpoint as the portal shows it, with /openai/v1/: the suffix is dropped.
        let b = try azure(server, ["endpoint": .string("\(server.url)/openai/v1/"), "auth": "entra_id", "api_key": .string(Self.token), "api_version": "v1"])
        let r = try await b.complete(ModelRequest(prompt: "hello", model: "my-gpt41"))
        #expect(r.text == "Grüezi!")
        #expect(r.finishReason == .stop)
        #expect(r.usage == Usage(inputTokens: 11, outputTokens: 3))
        #expect(r.metadata["prompt_filter_results"] != nil)
        let sent = try #require(try await server.requests().first)
        #expect(sent.path == "/openai/v1/chat/completions")
        #expect(sent.query == "")
        #expect(sent.header("authorization") == "Bearer \(Self.token)")
        #expect(sent.header("api-key") == nil)
        #expect(sent.json?["model"] == "my-gpt41")
        #expect(sent.azure == "ok")
        await b.shutdown()
    }

    @Test func aWrongCredentialOrAMissingVersionIsAnsweredAsAzureDoes() async throws {
        let server = try await ServerSlot.make()
        let route = [Self.deploymentPath: [ScriptedServer.Response.stream(Self.toolStream).with(["azure": ["api_key": .string(Self.key), "api_version": .string(Self.version)]])]].keyed("POST")
        try await server.script(route)
        let wrongKey = try azure(server, ["api_key": "ffffffffffffffffffffffffffffffff"])
        let e = try #require(await Observed.stream(wrongKey, ModelRequest(prompt: "x")).error)
        #expect(e.kind == .authentication)
        #expect(e.status == 401)
        #expect(e.message.contains("Access denied due to invalid subscription key"), "\(e.message)")
        #expect(!e.message.contains("ffffffffffffffffffffffffffffffff"))
        await wrongKey.shutdown()
        let wrongVersion = try azure(server, ["api_version": "2023-05-15"])
        let v = try #require(await Observed.stream(wrongVersion, ModelRequest(prompt: "x")).error)
        #expect(v.kind == .api)
        #expect(v.status == 404)
        #expect(v.message.contains("Resource not found") && v.message.contains("api-version=2023-05-15"), "\(v.message)")
        await wrongVersion.shutdown()
        #expect(try await server.requests().compactMap(\.azure) == ["no or a wrong api-key header", "api-version is ['2023-05-15'], not '2024-10-21'"])
    }

    @Test func aFilteredAnswerIsAContentFilterStopWithTheCategoryNamed() async throws {
        let server = try await ServerSlot.make()
        let flagged = #"{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":true,"severity":"medium"}}"#
        try await server.script([Self.deploymentPath: [.stream(Self.sse([
            Self.promptFilter,
            Self.chunk(#"{"content":"","refusal":null,"role":"assistant"}"#, filter: "{}"),
            Self.chunk(#"{"content":"The duel began"}"#),
            Self.chunk("{}", finish: "content_filter", filter: flagged),
            Self.usage,
        ]))]].keyed("POST"))
        let b = try azure(server)
        let seen = await Observed.stream(b, ModelRequest(prompt: "a story"))
        let r = try #require(seen.response, "\(seen)")
        #expect(seen.text == "The duel began")
        #expect(r.finishReason == .contentFilter)
        #expect(r.metadata["content_filter_results"]?["violence"]?["severity"] == "medium")
        await b.shutdown()
    }

    @Test func aFilteredPromptIsAnAPIErrorOfTypeContentFilterNamingTheCategories() async throws {
        let server = try await ServerSlot.make()
        let body = #"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":true,"detected":true},"self_harm":{"filtered":true,"severity":"medium"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}}}"#
        try await server.script([Self.deploymentPath: [.error(400, body)]].keyed("POST"))
        let b = try azure(server)
        for streamed in [true, false] {
            let seen = streamed ? await Observed.stream(b, ModelRequest(prompt: "x")) : await Observed.complete(b, ModelRequest(prompt: "x"))
            let e = try #require(seen.error)
            #expect(e.kind == .api)
            #expect(e.status == 400)
            #expect(e.providerType == "content_filter")
            #expect(!e.isRetryable)
            #expect(e.message.contains("Azure's content filter refused the prompt (filtered: jailbreak (detected), self_harm (severity medium))"), "\(e.message)")
            #expect(e.message.contains("content management policy"))
        }
        await b.shutdown()
    }

    @Test func a429WaitsForRetryAfterMsAndOtherErrorsMapByStatus() async throws {
        let server = try await ServerSlot.make()
        try await server.script([Self.deploymentPath: [
            .error(
                429, #"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 2 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}}"#,
                headers: [("retry-after", "2"), ("retry-after-ms", "1500"), ("x-ratelimit-remaining-requests", "0")]),
            .error(404, #"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}"#),
            .error(503, #"{"error":{"code":"ServiceUnavailable","message":"The service is temporarily unable to process your request. Please try again later."}}"#),
        ]].keyed("POST"))
        let b = try azure(server)
        let limited = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(limited.kind == .rateLimited)
        #expect(limited.retryAfter == .milliseconds(1500))
        #expect(limited.message.contains("exceeded token rate limit"))
        let missing = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(missing.kind == .api)
        #expect(missing.providerType == "DeploymentNotFound")
        #expect(missing.message.contains("model 'gpt-4o-mini'") && missing.message.contains("deployments/gpt-4o-mini/chat/completions"), "\(missing.message)")
        let down = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(down.kind == .providerUnavailable)
        await b.shutdown()
    }

    @Test func listsModelsAndChecksHealthAtTheResource() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["GET /openai/models": [
            .json(#"{"data":[{"capabilities":{"chat_completion":true,"completion":false,"embeddings":false,"fine_tune":false,"inference":true},"created_at":1721001600,"deprecation":{"inference":1752537600},"id":"gpt-4o-mini-2024-07-18","lifecycle_status":"generally-available","object":"model","status":"succeeded"}],"object":"list"}"#)
                .with(["azure": ["api_key": .string(Self.key), "api_version": .string(Self.version)]])
        ]])
        let b = try azure(server)
        #expect(try await b.listModels().map(\.id) == ["gpt-4o-mini-2024-07-18"])
        let health = try await b.healthCheck()
        #expect(health.message.contains("answered 200"), "\(health.message)")
        #expect(try await server.requests().allSatisfy { $0.azure == "ok" })
        await b.shutdown()
    }

    @Test func deploymentNamesAreOneEncodedPathSegmentAndARequestNeedsOne() async throws {
        let server = try await ServerSlot.make()
        let b = try azure(server, ["deployment": ""])
        let none = try #require(await Observed.stream(b, ModelRequest(prompt: "x")).error)
        #expect(none.kind == .api)
        #expect(none.message.contains("no deployment"), "\(none.message)")
        _ = await Observed.stream(b, ModelRequest(prompt: "x", model: "a/b c"))
        #expect(try await server.requests().map(\.path) == ["/openai/deployments/a%2Fb%20c/chat/completions"])
        await b.shutdown()
    }

    @Test func embeddingsGoToTheDeploymentsEmbeddingsPath() async throws {
        let server = try await ServerSlot.make()
        let answer = #"{"data":[{"embedding":[0.25,-0.5],"index":0,"object":"embedding"}],"model":"text-embedding-3-small","object":"list","usage":{"prompt_tokens":2,"total_tokens":2}}"#
        try await server.script([
            "/openai/deployments/emb-small/embeddings": [.json(answer).with(["azure": ["api_key": .string(Self.key), "api_version": .string(Self.version)]])]
        ].keyed("POST"))
        let b = try azure(server)
        let e = try await b.embed(EmbeddingRequest(["hello"], model: "emb-small"))
        #expect(e.vectors == [[0.25, -0.5]])
        #expect(try await server.requests().first?.azure == "ok")
        await b.shutdown()
    }

    @Test func badSettingsAreConfigErrorsNamingTheKey() async throws {
        let server = try await ServerSlot.make()
        func fails(_ extra: [String: JSONValue], _ key: String) {
            do {
                _ = try azure(server, extra)
                Issue.record("accepted \(extra)")
            } catch {
                let e = error as? ProviderError
                #expect(e?.kind == .config && e?.message.contains("'\(key)'") == true, "\(error)")
            }
        }
        fails(["auth": "managed_identity"], "auth")
        fails(["api_version": "2024-10-21&x=1"], "api_version")
        fails(["api_key": ""], "api_key")
        do {
            _ = try plugins.factory().create("azure", config: ["api_key": .string(Self.key)])
            Issue.record("no endpoint accepted")
        } catch {
            #expect("\(error)".contains("endpoint"), "\(error)")
        }
    }
}
