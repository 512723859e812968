import Descartes
import Testing

/// The providers' own batch APIs in the OpenAI and Anthropic plugins
/// ("descartes.batch/1"), against the scripted server speaking their wire
/// formats: the upload, the batch objects, the polls, the result files.
@Suite struct ProviderBatchPluginTests {
    static let key = "sk-batch-test-5f4e3d2c1b0a"
    let plugins = PluginDir().addManifest("openai").addManifest("anthropic")
    let work = TempDir("descartes-provider-batch")

    // MARK: OpenAI

    static func openaiBatch(_ status: String, counts: (Int, Int, Int) = (3, 0, 0), output: String? = nil, errors: String? = nil) -> ScriptedServer.Response {
        var o: JSONObject = [
            "id": "batch_abc123", "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file-in1",
            "completion_window": "24h", "status": .string(status), "created_at": 1_764_000_000, "expires_at": 1_764_086_400,
            "request_counts": ["total": .integer(counts.0), "completed": .integer(counts.1), "failed": .integer(counts.2)],
            "errors": .null, "output_file_id": output.map { .string($0) } ?? .null, "error_file_id": errors.map { .string($0) } ?? .null,
        ]
        if status == "failed" { o["errors"] = ["object": "list", "data": [["code": "invalid_json_line", "line": 2, "message": "This line is not parseable as valid JSON."]]] }
        return .json(.object(o))
    }

    static let outputFile = [
        #"{"id":"batch_req_1","custom_id":"first","response":{"status_code":200,"request_id":"req_1","body":{"id":"chatcmpl-b1","object":"chat.completion","created":1764000100,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":2000,"completion_tokens":1000,"total_tokens":3000}}},"error":null}"#,
        #"{"id":"batch_req_2","custom_id":"second","response":{"status_code":200,"request_id":"req_2","body":{"id":"chatcmpl-b2","object":"chat.completion","created":1764000101,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_w","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":30,"completion_tokens":12,"total_tokens":42}}},"error":null}"#,
    ].joined(separator: "\n") + "\n"
    static let errorFile =
        #"{"id":"batch_req_3","custom_id":"third","response":{"status_code":400,"request_id":"req_3","body":{"error":{"message":"max_tokens is too large: 999999.","type":"invalid_request_error","param":"max_tokens","code":null}}},"error":null}"# + "\n"

    /// In process, and isolated in a helper process (which forwards the
    /// extension by id).
    @Test(arguments: [ProviderFactory.Isolation.inProcess, .process(Sanitizer.limits())])
    func openAIUploadsCreatesPollsAndReadsBothFiles(_ isolation: ProviderFactory.Isolation) async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/files": [.json(#"{"id":"file-in1","object":"file","bytes":1234,"created_at":1764000000,"filename":"batch.jsonl","purpose":"batch"}"#)],
            "POST /v1/batches": [Self.openaiBatch("validating")],
            "GET /v1/batches/batch_abc123": [
                Self.openaiBatch("in_progress", counts: (3, 1, 0)), Self.openaiBatch("finalizing", counts: (3, 2, 1)),
                Self.openaiBatch("completed", counts: (3, 2, 1), output: "file-out", errors: "file-err"),
            ],
            "GET /v1/files/file-out/content": [.json(Self.outputFile, headers: [("content-type", "application/octet-stream")])],
            "GET /v1/files/file-err/content": [.json(Self.errorFile)],
            "POST /v1/batches/batch_abc123/cancel": [Self.openaiBatch("cancelling")],
        ])
        let backend = try plugins.factory().create(
            "openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)], isolation: isolation)
        let batches = try ProviderBatches(backend)
        var tooBig = ModelRequest(prompt: "long story")
        tooBig.maxTokens = 999_999
        var tooled = ModelRequest(prompt: "weather in Oslo?")
        tooled.tools = [Tool(name: "weather", parameters: ["type": "object", "properties": ["city": ["type": "string"]]])]
        let submitted = try await batches.submit([("first", ModelRequest(prompt: "capital of France?")), ("second", tooled), ("third", tooBig)])
        #expect(submitted.id == "batch_abc123")
        #expect(submitted.state == .inProgress && submitted.providerStatus == "validating")
        #expect(submitted.createdAt == 1_764_000_000 && submitted.expiresAt == 1_764_086_400)

        // What went over the wire: a multipart upload of the JSON lines, then the batch.
        let seen = try await server.requests()
        #expect(seen.map { "\($0.method) \($0.path)" } == ["POST /v1/files", "POST /v1/batches"])
        #expect(seen.allSatisfy { $0.header("authorization") == "Bearer \(Self.key)" })
        let upload = seen[0]
        let contentType = try #require(upload.header("content-type"))
        #expect(contentType.hasPrefix("multipart/form-data; boundary="))
        #expect(upload.body.contains("Content-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"))
        #expect(upload.body.contains("name=\"file\"; filename=\"batch.jsonl\""))
        // (In Swift "\r\n" is one Character: split on both.)
        let lines = upload.body.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }).compactMap { try? JSONValue.parse(String($0)) }.filter { $0["custom_id"] != nil }
        #expect(lines.map { $0["custom_id"]?.stringValue } == ["first", "second", "third"])
        #expect(lines.allSatisfy { $0["method"] == "POST" && $0["url"] == "/v1/chat/completions" })
        #expect(lines[0]["body"]?["model"] == "gpt-4o-mini")
        #expect(lines[0]["body"]?["messages"]?[0]?["content"] == "capital of France?")
        #expect(lines[0]["body"]?["stream"] == nil || lines[0]["body"]?["stream"] == false)
        #expect(lines[1]["body"]?["tools"]?[0]?["function"]?["name"] == "weather")
        #expect(lines[2]["body"]?["max_completion_tokens"] == 999_999)  // the manifest's max_tokens_field
        #expect(seen[1].json == ["input_file_id": "file-in1", "endpoint": "/v1/chat/completions", "completion_window": "24h"])

        let final = try await batches.wait(submitted.id, every: .milliseconds(20))
        #expect(final.state == .ended && final.providerStatus == "completed")
        #expect(final.total == 3 && final.succeeded == 2 && final.failed == 1)

        let results = try await batches.results(submitted.id)
        #expect(results.map(\.customID) == ["first", "second", "third"])
        let first = try results[0].result.get()
        #expect(first.content == "Paris.")
        #expect(first.model == "gpt-4o-mini-2024-07-18")
        #expect(first.usage == Usage(inputTokens: 2000, outputTokens: 1000))
        // gpt-4o-mini at $0.15 in and $0.60 out per million, half price in a batch.
        #expect(abs(first.costUSD! - (2000 * 0.15 + 1000 * 0.60) / 1_000_000 * 0.5) < 1e-12)
        let second = try results[1].result.get()
        #expect(second.finishReason == .toolUse)
        #expect(second.toolCalls == [ToolCall(id: "call_w", name: "weather", arguments: #"{"city":"Oslo"}"#)])
        guard case .failure(let e) = results[2].result else { Issue.record("third should have failed"); return }
        #expect(e.kind == .api && e.status == 400)
        #expect(e.message.contains("max_tokens is too large"))

        let cancelling = try await batches.cancel(submitted.id)
        #expect(cancelling.state == .cancelling)
        let all = try await server.requests()
        #expect(all.contains { $0.method == "GET" && $0.path == "/v1/files/file-err/content" })
        await backend.shutdown()
    }

    @Test func openAIBatchErrorsArePlain() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/files": [.error(401, #"{"error":{"message":"Incorrect API key provided: \#(Self.key)","type":"invalid_request_error","code":"invalid_api_key"}}"#)],
            "GET /v1/batches/batch_abc123": [Self.openaiBatch("failed", counts: (0, 0, 0))],
        ])
        let batches = try ProviderBatches(try plugins.factory().create("openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)]))
        let e = try #require(await providerError { _ = try await batches.submit([("a", ModelRequest(prompt: "x"))]) })
        #expect(e.kind == .authentication)
        #expect(!e.message.contains(Self.key))
        let failed = try await batches.status("batch_abc123")
        #expect(failed.state == .failed)
        #expect(failed.message == "line 2: This line is not parseable as valid JSON.")
        let notYet = try #require(await providerError { _ = try await batches.results("batch_abc123") })
        #expect(notYet.kind == .api)
        #expect(notYet.message == "batch batch_abc123 is failed, not ended: no results yet")
    }

    @Test func theCLIRunsAProviderBatchEndToEnd() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/files": [.json(#"{"id":"file-in1","object":"file","purpose":"batch"}"#)],
            "POST /v1/batches": [Self.openaiBatch("validating")],
            "GET /v1/batches/batch_abc123": [Self.openaiBatch("in_progress"), Self.openaiBatch("completed", counts: (3, 2, 1), output: "file-out", errors: "file-err")],
            "GET /v1/files/file-out/content": [.json(Self.outputFile)],
            "GET /v1/files/file-err/content": [.json(Self.errorFile)],
        ])
        let input = [
            #"{"custom_id": "second", "messages": [{"role": "user", "content": "weather in Oslo?"}]}"#,
            #"{"custom_id": "first", "messages": [{"role": "user", "content": "capital of France?"}]}"#,
            #"{"custom_id": "third", "max_tokens": 999999, "messages": [{"role": "user", "content": "long story"}]}"#,
        ].joined(separator: "\n")
        let file = work.write("requests.jsonl", input)
        let r = await Proc.descartes(
            ["batch", "-p", "openai", "--set", "endpoint=\(server.url)/v1", "--provider-batch", "--poll-interval", "0.05", file],
            env: ["DESCARTES_PLUGIN_PATH": plugins.path, "OPENAI_API_KEY": Self.key, "HOME": "/nonexistent"])
        #expect(r.status == 1, "\(r)")  // one request failed
        let out = r.stdout.split(separator: "\n").map { try! JSONValue.parse(String($0)) }
        // In input order, whatever the order of the provider's files.
        #expect(out.map { $0["custom_id"]?.stringValue } == ["second", "first", "third"])
        #expect(out.map { $0["index"]?.intValue } == [0, 1, 2])
        #expect(out[1]["response"]?["content"] == "Paris.")
        #expect(out[0]["response"]?["tool_calls"]?[0]?["name"] == "weather")
        #expect(out[2]["error"]?["status"] == 400)
        #expect(r.stderr.contains("descartes: batch: batch batch_abc123: ended (completed), 2 succeeded, 1 failed of 3"), "\(r.stderr)")
        #expect(!r.stdout.contains(Self.key) && !r.stderr.contains(Self.key))
    }

    // MARK: Anthropic

    static func anthropicBatch(_ status: String, resultsURL: String? = nil, cancelled: Bool = false, counts: JSONValue = ["processing": 3, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0]) -> ScriptedServer.Response {
        .json([
            "id": "msgbatch_01ABC", "type": "message_batch", "processing_status": .string(status), "request_counts": counts,
            "ended_at": status == "ended" ? "2026-11-24T18:00:00Z" : .null, "created_at": "2026-11-24T17:00:00.123456Z",
            "expires_at": "2026-11-25T17:00:00+00:00", "archived_at": .null,
            "cancel_initiated_at": cancelled ? "2026-11-24T17:30:00Z" : .null, "results_url": resultsURL.map { .string($0) } ?? .null,
        ])
    }

    static let anthropicResults = [
        #"{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: 999999 > 64000, which is the maximum allowed"}}}}"#,
        #"{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_01X","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","content":[{"type":"thinking","thinking":"Short.","signature":"sig"},{"type":"text","text":"Hello"},{"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Oslo"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":100,"cache_read_input_tokens":1000,"cache_creation_input_tokens":0,"output_tokens":50}}}}"#,
        #"{"custom_id":"c","result":{"type":"expired"}}"#,
    ].joined(separator: "\n") + "\n"

    @Test func anthropicCreatesPollsAndReadsTheResultsFromItsOwnHost() async throws {
        let server = try await ServerSlot.make()
        // A results_url on another host is not followed (the API key would
        // go with it): the plugin reads the endpoint's own path instead.
        try await server.script([
            "POST /v1/messages/batches": [Self.anthropicBatch("in_progress")],
            "GET /v1/messages/batches/msgbatch_01ABC": [
                Self.anthropicBatch("in_progress"),
                Self.anthropicBatch("ended", resultsURL: "https://batch-results.example.invalid/v1/messages/batches/msgbatch_01ABC/results",
                                    counts: ["processing": 0, "succeeded": 1, "errored": 1, "canceled": 0, "expired": 1]),
            ],
            "GET /v1/messages/batches/msgbatch_01ABC/results": [.json(Self.anthropicResults, headers: [("content-type", "application/binary")])],
            "POST /v1/messages/batches/msgbatch_01ABC/cancel": [Self.anthropicBatch("canceling", cancelled: true)],
        ])
        let backend = try plugins.factory().create("anthropic", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
        let batches = try ProviderBatches(backend)
        var big = ModelRequest(prompt: "a long story", model: "claude-haiku-4-5")
        big.maxTokens = 999_999
        let submitted = try await batches.submit([
            ("a", ModelRequest(prompt: "hi", model: "claude-haiku-4-5")), ("b", big), ("c", ModelRequest(prompt: "late", model: "claude-haiku-4-5")),
        ])
        #expect(submitted.id == "msgbatch_01ABC" && submitted.state == .inProgress)
        #expect(submitted.total == 3)
        #expect(submitted.createdAt == 1_795_539_600)  // 2026-11-24T17:00:00Z
        #expect(submitted.expiresAt == 1_795_626_000)

        let sent = try #require(try await server.requests().first)
        #expect(sent.header("x-api-key") == Self.key)
        #expect(sent.header("anthropic-version") == "2023-06-01")
        let reqs = try #require(sent.json?["requests"]?.arrayValue)
        #expect(reqs.map { $0["custom_id"]?.stringValue } == ["a", "b", "c"])
        #expect(reqs[0]["params"]?["model"] == "claude-haiku-4-5")
        #expect(reqs[0]["params"]?["messages"]?[0]?["role"] == "user")
        #expect(reqs[0]["params"]?["stream"] == nil)
        #expect(reqs[1]["params"]?["max_tokens"] == 999_999)

        let final = try await batches.wait(submitted.id, every: .milliseconds(20))
        #expect(final.state == .ended)
        #expect(final.succeeded == 1 && final.failed == 2 && final.total == 3)
        let results = try await batches.results(submitted.id)
        let byID = Dictionary(uniqueKeysWithValues: results.map { ($0.customID, $0.result) })
        let a = try byID["a"]!.get()
        #expect(a.content == "Hello")
        #expect(a.reasoning == "Short.")
        #expect(a.finishReason == .toolUse)
        #expect(a.toolCalls == [ToolCall(id: "toolu_1", name: "weather", arguments: #"{"city":"Oslo"}"#)])
        #expect(a.usage == Usage(inputTokens: 1100, outputTokens: 50, cacheReadTokens: 1000))
        #expect(a.model == "claude-haiku-4-5-20251001")
        #expect(a.costUSD != nil && a.costUSD! > 0)
        guard case .failure(let eb) = byID["b"]!, case .failure(let ec) = byID["c"]! else { Issue.record("b and c should have failed"); return }
        #expect(eb.kind == .api && eb.providerType == "invalid_request_error")
        #expect(ec.kind == .timeout)
        let paths = try await server.requests().map(\.path)
        #expect(paths.last == "/v1/messages/batches/msgbatch_01ABC/results")

        let c = try await batches.cancel(submitted.id)
        #expect(c.state == .cancelling)
        await backend.shutdown()
    }
}
