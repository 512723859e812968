import Descartes
import Testing
import DescartesSupport

/// `descartes complete` and `descartes batch` with retries, fallbacks,
/// stats and provider batches, run as a user runs them.
@Suite struct ReliabilityCLITests {
    let plugins = PluginDir().addScripted().addEcho()
    let work = TempDir("descartes-batch")

    func cli(_ args: [String], stdin: String? = nil) async -> ProcResult {
        await Proc.descartes(args, env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"], stdin: stdin)
    }

    /// A JSON line for the batch input.
    static func line(_ prompt: String, script: [String]? = nil, sequence: [[String]]? = nil, extra: JSONObject = [:]) -> String {
        var options = JSONObject()
        if let script { options["script"] = .array(script.map { .string($0) }) }
        if let sequence { options["sequence"] = .array(sequence.map { .array($0.map { .string($0) }) }) }
        var o: JSONObject = ["messages": [["role": "user", "content": .string(prompt)]]]
        if !options.isEmpty { o["options"] = .object(options) }
        for m in extra { o[m.key] = m.value }
        return JSONValue.object(o).jsonText
    }

    @Test func aFailingProviderFallsBackAndJSONSaysWhoAnswered() async throws {
        let r = await cli(["complete", "-p", "scripted", "--set", "fail_init=down for maintenance", "--fallback", "echo", "--json", "answered by echo"])
        #expect(r.status == 0, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["provider"] == "echo")
        #expect(doc["content"] == "answered by echo")
        let attempts = try #require(doc["attempts"]?.arrayValue)
        #expect(attempts.map { $0["provider"]?.stringValue } == ["scripted"])
        #expect(attempts[0]["error"]?["kind"] == "initialization")
        #expect(attempts[0]["error"]?["message"] == "down for maintenance")
        // A --fallback name that leads nowhere is refused before anything runs (issue 17).
        let unknown = await cli(["complete", "-p", "scripted", "--fallback", "nonesuch,echo", "--json", "x"])
        #expect(unknown.status == 78, "\(unknown)")
        #expect(try JSONValue.parse(unknown.stdout)["error"]?["message"]?.stringValue?.hasPrefix("unknown provider 'nonesuch'") == true)
    }

    @Test func whenEveryProviderFailsTheErrorListsTheAttempts() async throws {
        let r = await cli(["complete", "-p", "scripted", "--set", "fail_init=broken", "--fallback", "scripted", "--json", "hi"])
        #expect(r.status == 69)  // the last error: the provider cannot start
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["error"]?["attempts"]?.arrayValue?.map { $0["provider"]?.stringValue } == ["scripted", "scripted"])
        #expect(r.stderr.contains("attempt 1: scripted: initialization"))
    }

    @Test func usageMistakes() async {
        for args in [["--retries", "-1"], ["--retries", "two"], ["--fallback", ","]] {
            let r = await cli(["complete", "-p", "echo"] + args + ["hi"])
            #expect(r.status == 64, "\(args): \(r)")
            #expect(r.stderr.hasPrefix("Error: "))
        }
        let b = await cli(["batch", "-p", "echo"])
        #expect(b.status == 64)
        #expect(b.stderr.hasPrefix("Error: missing FILE"))
        let both = await cli(["batch", "-p", "scripted", "--status", "x", "--cancel", "y"])
        #expect(both.status == 64)
        let missing = await cli(["batch", "-p", "echo", work.file("nope.jsonl")])
        #expect(missing.status == 66)
        #expect(missing.stderr.contains("cannot read \(work.file("nope.jsonl"))"))
    }

    @Test func statsForPeopleAndForMachines() async throws {
        let human = await cli(["complete", "-p", "echo", "--set", "delay_ms=50", "--stats", "one two three four"])
        #expect(human.status == 0, "\(human)")
        #expect(human.stdout == "one two three four\n")
        let lines = human.stderr.split(separator: "\n").map(String.init)
        #expect(lines.contains("descartes: stats: provider echo (echo-1)"))
        let timing = try #require(lines.first { $0.hasPrefix("descartes: stats: time to first token ") })
        #expect(timing.contains(" tokens/s"), "\(timing)")
        #expect(lines.contains("descartes: stats: tokens: 4 in, 4 out"))
        #expect(lines.contains("descartes: stats: cost: $0.000000"))

        let machine = await cli(["complete", "-p", "scripted", "--json", "--stats", "priced words here"])
        let doc = try JSONValue.parse(machine.stdout)
        let stats = try #require(doc["stats"])
        #expect(stats["provider"] == "scripted")
        #expect(stats["time_to_first_token_ms"]?.intValue != nil)
        #expect(stats["usage"] == ["input_tokens": 3, "output_tokens": 3])
        #expect(stats["cost_usd"]?.doubleValue == (3 * 1.0 + 3 * 2.0) / 1_000_000)

        let streamed = await cli(["complete", "-p", "echo", "--stream", "--json", "--stats", "a b"])
        let events = streamed.stdout.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
        #expect(events.last?["type"] == "stats")
        #expect(events.dropLast().last?["type"] == "finish")
    }

    // MARK: providers.yaml

    func configured(_ yaml: String) -> String { work.write("providers.yaml", yaml) }

    @Test func chainsRoutesAndRetriesFromProvidersYaml() async throws {
        let config = configured("""
            providers:
              flaky: {plugin: scripted, fail_init: "down for maintenance"}
            retry: {max_attempts: 2, initial_delay: 10ms}
            fallbacks:
              resilient: [flaky, echo]
            routes:
              auto:
                candidates: [echo, scripted]
                rules:
                  - when: {tools: true}
                    use: scripted
            """)
        let chain = await cli(["--config", config, "complete", "-p", "resilient", "--json", "hi there"])
        #expect(chain.status == 0, "\(chain)")
        let doc = try JSONValue.parse(chain.stdout)
        #expect(doc["provider"] == "echo")
        #expect(doc["attempts"]?.arrayValue?.map { $0["provider"]?.stringValue } == ["flaky"])
        #expect(doc["attempts"]?[0]?["error"]?["kind"] == "initialization")

        let routed = await cli(["--config", config, "complete", "-p", "auto", "--explain", "hello route"])
        #expect(routed.status == 0, "\(routed)")
        #expect(routed.stdout == "hello route\n")
        let why = routed.stderr.split(separator: "\n").map(String.init)
        #expect(why.contains("descartes: route 'auto': input about 9 tokens, needs nothing special"), "\(routed.stderr)")
        #expect(why.contains("descartes:   strategy: rules; no rule chose an eligible candidate, so the configured order"))
        #expect(why.contains("descartes:   order: echo -> scripted"))

        let tools = work.write("tools.json", #"[{"name": "weather", "description": "the weather", "parameters": {"type": "object", "properties": {}}}]"#)
        let tooled = await cli(["--config", config, "complete", "-p", "auto", "--tools", tools, "--explain", "--json", "weather?"])
        #expect(tooled.status == 0, "\(tooled)")
        #expect(try JSONValue.parse(tooled.stdout)["provider"] == "scripted")
        #expect(tooled.stderr.contains("descartes:   echo: rejected: lacks tools"))
        #expect(tooled.stderr.contains("descartes:   strategy: rules; rule 1 (with tools) chose scripted"))
    }

    @Test func problemsInTheSectionsStopTheCommandWithTheirPositions() async throws {
        let config = configured("""
            retry:
              max_attempts: 0
            fallbacks:
              chain: [echo, ecko]
            """)
        let r = await cli(["--config", config, "complete", "-p", "echo", "hi"])
        #expect(r.status == 78, "\(r)")
        #expect(r.stderr.contains("\(config):2:17: retry.max_attempts must be at least 1 (1 disables retries)"), "\(r.stderr)")
        let check = await cli(["--config", config, "config", "check"])
        #expect(check.status != 0)
        #expect(check.stdout.contains("\(config):2:17: retry.max_attempts must be at least 1") || check.stderr.contains("\(config):2:17: retry.max_attempts must be at least 1"), "\(check)")

        let names = configured("fallbacks:\n  chain: [echo, ecko]\n")
        let n = await cli(["--config", names, "complete", "-p", "chain", "hi"])
        #expect(n.status == 78)
        #expect(n.stderr.contains("\(names):2:17: fallback chain 'chain' names 'ecko', which is not a provider, fallback chain or route (did you mean 'echo'?)"), "\(n.stderr)")
    }

    /// A secret the factory knows never rests in the cache directory, even
    /// when the answer quotes it (issue 16: a server echoing the key).
    @Test func theDiskCacheHoldsNoSecret() async throws {
        let secret = "tok-cache-rest-5b7c9d1e3f"
        let config = configured("cache: {directory: \(work.file("cache-secret"))}\nproviders:\n  leaky: {plugin: scripted, token: \(secret)}\n")
        let r = await cli(["--config", config, "complete", "-p", "leaky", "--json", "the key is \(secret) here"])
        #expect(r.status == 0, "\(r)")
        #expect(!r.stdout.contains(secret))
        let files = try FileSystem.list(work.file("cache-secret"))
        #expect(!files.isEmpty)
        for f in files {
            let text = try FileSystem.readText(FileSystem.join(work.file("cache-secret"), f), limit: 1 << 20)
            #expect(!text.contains(secret), "\(f) holds the secret: \(text.prefix(300))")
            #expect(text.contains("[REDACTED]"), "\(text.prefix(300))")
        }
    }

    @Test func theDiskCacheAnswersTheNextProcess() async throws {
        let config = configured("cache: {directory: \(work.file("cache"))}\n")
        let first = await cli(["--config", config, "complete", "-p", "scripted", "--json", "cache this answer"])
        #expect(first.status == 0, "\(first)")
        #expect(try JSONValue.parse(first.stdout)["metadata"]?["cache"] == nil)
        let second = await cli(["--config", config, "complete", "-p", "scripted", "--json", "--stats", "cache this answer"])
        let doc = try JSONValue.parse(second.stdout)
        #expect(doc["content"] == "cache this answer")
        #expect(doc["metadata"]?["cache"] == "hit")
        #expect(doc["cost_usd"]?.doubleValue == 0)
        #expect(doc["stats"]?["cached"] == true)
        #expect(doc["stats"]?["cache"]?["hits"] == 1)
        let bypass = await cli(["--config", config, "complete", "-p", "scripted", "--json", "--no-cache", "cache this answer"])
        #expect(try JSONValue.parse(bypass.stdout)["metadata"]?["cache"] == nil)
        #expect(try FileSystem.list(work.file("cache")).count == 1)
    }

    // MARK: batch

    @Test func batchWritesOneLinePerRequestInInputOrder() async throws {
        let input = [
            Self.line("slow first", script: ["sleep:300", "words"]),
            "{\"messages\": \"not a list\"}",
            Self.line("fails", script: ["error:authentication:bad key"]),
            "",
            Self.line("fast last", script: ["words"], extra: ["custom_id": "mine"]),
        ].joined(separator: "\n") + "\n"
        let path = work.write("in.jsonl", input)
        let r = await cli(["batch", "-p", "scripted", "-c", "3", path])
        #expect(r.status == 1, "\(r)")  // some failed
        let out = r.stdout.split(separator: "\n").map { try! JSONValue.parse(String($0)) }
        #expect(out.count == 4)
        #expect(out.map { $0["index"]?.intValue } == [0, 1, 2, 3])
        #expect(out.map { $0["line"]?.intValue } == [1, 2, 3, 5])
        #expect(out[0]["response"]?["content"] == "slow first")
        #expect(out[1]["error"]?["kind"] == "json")
        #expect(out[1]["error"]?["message"]?.stringValue?.hasPrefix("line 2: not a request") == true)
        #expect(out[2]["error"]?["kind"] == "authentication")
        #expect(out[3]["custom_id"] == "mine")
        #expect(out[3]["response"]?["content"] == "fast last")
        #expect(r.stderr.contains("descartes: batch: 4/4 done, 2 failed in "))

        let quiet = await cli(["batch", "-p", "scripted", "-q", "-o", work.file("out.jsonl"), path])
        #expect(quiet.stderr.isEmpty)
        #expect(quiet.stdout.isEmpty)
        #expect(try FileSystem.readText(work.file("out.jsonl"), limit: 1 << 20).split(separator: "\n").count == 4)
    }

    @Test func batchRetriesHonourRetryAfterPerRequest() async throws {
        let input = Self.line("patience", sequence: [["retry_after:1000", "error:rate_limited:slow down"], ["words"]]) + "\n"
        let start = ContinuousClock.now
        let r = await cli(["batch", "-p", "scripted", "-"], stdin: input)
        let took = ContinuousClock.now - start
        #expect(r.status == 0, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["response"]?["content"] == "patience")
        #expect(doc["response"]?["attempts"]?[0]?["error"]?["kind"] == "rate_limited")
        #expect(doc["response"]?["attempts"]?[0]?["error"]?["retry_after_ms"] == 1000)
        #expect(took >= .milliseconds(1000), "the retry did not wait for retry-after: \(took)")

        let none = await cli(["batch", "-p", "scripted", "--retries", "0", "-"], stdin: input)
        #expect(none.status == 1)
        #expect(try JSONValue.parse(none.stdout)["error"]?["kind"] == "rate_limited")
    }

    @Test func providerBatchSubmitPollFetch() async throws {
        let input = [
            Self.line("alpha beta", extra: ["options": ["batch_polls": 2]]),
            Self.line("refused", script: ["error:api:too long"]),
            Self.line("gamma", extra: ["custom_id": "g"]),
        ].joined(separator: "\n")
        let path = work.write("pb.jsonl", input)
        let r = await cli(["batch", "-p", "scripted", "--provider-batch", "--poll-interval", "0.05", path])
        #expect(r.status == 1, "\(r)")
        let out = r.stdout.split(separator: "\n").map { try! JSONValue.parse(String($0)) }
        #expect(out.map { $0["custom_id"]?.stringValue } == ["req-0", "req-1", "g"])
        #expect(out[0]["response"]?["content"] == "alpha beta")
        #expect(out[0]["response"]?["cost_usd"]?.doubleValue == (2000 * 1.0 + 2000 * 2.0) / 1_000_000 * 0.5)
        #expect(out[1]["error"]?["message"] == "too long")
        #expect(out[2]["index"] == 2)
        #expect(r.stderr.contains("descartes: batch: batch batch_1: in_progress (validating), 0 succeeded, 0 failed of 3"), "\(r.stderr)")
        #expect(r.stderr.contains("ended (completed), 2 succeeded, 1 failed of 3"), "\(r.stderr)")

        // Submit only: the status as JSON, the batch left running.
        let s = await cli(["batch", "-p", "scripted", "--provider-batch", "--submit-only", path])
        #expect(s.status == 0, "\(s)")
        let status = try JSONValue.parse(s.stdout)
        #expect(status["state"] == "in_progress")
        #expect(status["counts"]?["total"] == 3)
        // Each CLI run is a new process with a new in-memory "provider":
        // the id is unknown there, and says so.
        let unknown = await cli(["batch", "-p", "scripted", "--status", status["id"]!.stringValue!])
        #expect(unknown.status == 65)
        #expect(unknown.stderr.contains("no batch 'batch_1'"))

        let echo = await cli(["batch", "-p", "echo", "--provider-batch", path])
        #expect(echo.status == 65)
        #expect(echo.stderr.contains("provider 'echo' has no batch API"))
    }
}
