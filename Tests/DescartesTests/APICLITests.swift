import Descartes
import Testing
import DescartesSupport

/// The `descartes` executable with the API plugins, pointed at a real
/// server on 127.0.0.1 through OPENAI_ENDPOINT / ANTHROPIC_ENDPOINT, as a
/// user runs it: `complete` (streamed and not, with tools), `models`,
/// `health`, `tokens`.
@Suite struct APICLITests {
    static let openAIKey = "sk-cli-openai-5566778899"
    static let anthropicKey = "sk-ant-cli-1122334455"
    let plugins = PluginDir().addManifest("openai").addManifest("anthropic").addManifest("vllm")

    func cli(_ args: [String], _ server: ServerSlot?, env: [String: String] = [:], stdin: String? = nil) async -> ProcResult {
        var e = env
        e["DESCARTES_PLUGIN_PATH"] = plugins.path
        e["HOME"] = "/nonexistent"
        if let server {
            e["OPENAI_ENDPOINT"] = e["OPENAI_ENDPOINT"] ?? "\(server.url)/v1"
            e["OPENAI_API_KEY"] = e["OPENAI_API_KEY"] ?? Self.openAIKey
            e["ANTHROPIC_ENDPOINT"] = e["ANTHROPIC_ENDPOINT"] ?? "\(server.url)/v1"
            e["ANTHROPIC_API_KEY"] = e["ANTHROPIC_API_KEY"] ?? Self.anthropicKey
        }
        let r = await Proc.descartes(args, env: e, stdin: stdin)
        for key in [Self.openAIKey, Self.anthropicKey] {
            #expect(!r.stdout.contains(key) && !r.stderr.contains(key), "a key was printed: \(r)")
        }
        return r
    }

    static func openAIChunk(_ content: String, finish: String? = nil) -> String {
        "data: " + #"{"id":"c1","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":\#(JSONValue.string(content).jsonText)},"finish_reason":\#(finish.map { "\"\($0)\"" } ?? "null")}]}"# + "\n\n"
    }

    /// A stream whose second half comes a second after its first.
    static func slowStream(_ first: String, _ second: String, _ end: String) -> ScriptedServer.Response {
        ScriptedServer.Response([
            "status": 200, "framing": "chunked", "headers": [["content-type", "text/event-stream"]],
            "chunks": [["data": .string(first), "delay_ms": 0], ["data": .string(second + end), "delay_ms": 1200]],
        ])
    }

    /// When `text` first appeared on stdout.
    static func arrival(_ r: ProcResult, _ text: String) -> Duration? {
        var seen = ""
        for (at, piece) in r.stdoutTimeline {
            seen += piece
            if seen.contains(text) { return at }
        }
        return nil
    }

    @Test func completeStreamsOpenAITextAsItArrives() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                Self.slowStream(Self.openAIChunk("Hello from"), Self.openAIChunk(" the stream.", finish: "stop"), "data: [DONE]\n\n")
            ]
        ])
        let r = await cli(["complete", "-p", "openai", "--stream", "Say hello"], server)
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "Hello from the stream.\n")
        let first = try #require(Self.arrival(r, "Hello from"))
        let last = try #require(Self.arrival(r, "the stream."))
        // The first words were printed before the rest was even sent.
        #expect(last - first >= .milliseconds(900), "\(r.stdoutTimeline)")
        let sent = try #require(try await server.requests().first)
        #expect(sent.header("authorization") == "Bearer \(Self.openAIKey)")
        #expect(sent.json?["stream"] == true)
        #expect(sent.json?["messages"]?[0]?["content"] == "Say hello")
    }

    @Test func aKeyTheModelRepeatsIsMaskedEvenCutAcrossDeltas() async throws {
        // Not shaped like any provider's key: only registration catches it.
        let key = "zz-custom-key-000111222333"
        for json in [false, true] {
            let server = try await ServerSlot.make()
            let body = ["Your key is zz-cus", "tom-key-000", "111222333, ", "keep it."].map { Self.openAIChunk($0) }.joined()
                + Self.openAIChunk("", finish: "stop") + "data: [DONE]\n\n"
            try await server.script(["POST /v1/chat/completions": [.stream(body, split: "lines")]])
            let r = await cli(["complete", "-p", "openai", "--stream"] + (json ? ["--json"] : []) + ["Repeat my key"], server, env: ["OPENAI_API_KEY": key])
            #expect(r.status == 0, "\(r)")
            #expect(!r.stdout.contains("000111222333") && !r.stdout.contains("111222333") && !r.stderr.contains("111222333"), "\(r.stdout)")
            if json {
                let texts = r.stdout.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }.filter { $0["type"] == "text" }
                #expect(texts.compactMap { $0["text"]?.stringValue }.joined() == "Your key is [REDACTED], keep it.")
            } else {
                #expect(r.stdout == "Your key is [REDACTED], keep it.\n")
            }
        }
    }

    @Test func completeStreamsAnthropicTextAsItArrives() async throws {
        let server = try await ServerSlot.make()
        func event(_ name: String, _ data: String) -> String { "event: \(name)\ndata: \(data)\n\n" }
        let start = event("message_start", #"{"type":"message_start","message":{"id":"msg_1","model":"claude-haiku-4-5-20251001","usage":{"input_tokens":5,"output_tokens":1}}}"#)
            + event("content_block_start", #"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#)
            + event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Bonjour"}}"#)
        let rest = event("content_block_delta", #"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" à vous."}}"#)
            + event("content_block_stop", #"{"type":"content_block_stop","index":0}"#)
            + event("message_delta", #"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#)
        try await server.script(["POST /v1/messages": [Self.slowStream(start, rest, event("message_stop", #"{"type":"message_stop"}"#))]])
        let r = await cli(["complete", "-p", "anthropic", "--stream", "--system", "Speak French", "--max-tokens", "50", "Hello"], server)
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "Bonjour à vous.\n")
        let first = try #require(Self.arrival(r, "Bonjour"))
        let last = try #require(Self.arrival(r, "à vous."))
        #expect(last - first >= .milliseconds(900), "\(r.stdoutTimeline)")
        let body = try #require(try await server.requests().first?.json)
        #expect(body["system"] == "Speak French")
        #expect(body["max_tokens"] == 50)
    }

    @Test func completeSendsOptionsAndToolsAndShowsToolCalls() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(try TestEnv.transcript("openai/chat-nonstream-tool-call.json"))]])
        let tools = TempDir("descartes-tools")
        let file = tools.write(
            "tools.json",
            #"[{"name": "lookup_population", "description": "Population of a country", "parameters": {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}}, {"name": "noop"}]"#)
        let r = await cli(
            ["complete", "-p", "openai", "--system", "You are terse.", "--max-tokens", "40", "--temperature", "0.3", "--tools", file,
             "--tool-choice", "required", "How many people live in Crumpet?"], server)
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.contains(#"tool call call_TTY8UFNo7rNCaOBUNtlRSvMG: lookup_population({"country":"Crumpet"})"#), "\(r.stdout)")
        let body = try #require(try await server.requests().first?.json)
        #expect(body["messages"]?[0] == ["role": "system", "content": "You are terse."])
        #expect(body["max_completion_tokens"] == 40)
        #expect(body["temperature"]?.doubleValue == 0.3)
        #expect(body["tool_choice"] == "required")
        #expect(body["tools"]?[0]?["function"]?["name"] == "lookup_population")
        #expect(body["tools"]?[0]?["function"]?["parameters"]?["required"] == ["country"])
        #expect(body["tools"]?[1]?["function"]?["parameters"] == ["type": "object", "properties": [:]])

        // The same with --json: the tool calls in the document.
        let j = await cli(["complete", "-p", "openai", "--json", "--tools", file, "population?"], server)
        let doc = try JSONValue.parse(j.stdout)
        #expect(doc["tool_calls"]?[0]?["name"] == "lookup_population")
        #expect(doc["finish_reason"] == "tool_use")
    }

    @Test func aBadToolsFileIsADataErrorNamingTheProblem() async throws {
        let dir = TempDir("descartes-tools")
        let cases: [(String, String)] = [
            ("{}", "expected a JSON array"),
            (#"[{"description": "x"}]"#, #"item 0: "name" must be a non-empty string"#),
            (#"[{"name": "a", "parameters": "string"}]"#, #"item 0 ("a"): "parameters" must be a JSON Schema object"#),
            (#"[{"name": "a", "parameters": {"type": "array"}}]"#, #"must describe an object"#),
            (#"[{"name": "a"}, {"name": "a"}]"#, #"item 1: the name "a" is used twice"#),
            (#"[{"name": "a", "params": {}}]"#, #"unknown key "params""#),
            ("[", "not JSON"),
        ]
        for (i, (text, message)) in cases.enumerated() {
            let file = dir.write("t\(i).json", text)
            let r = await cli(["complete", "-p", "openai", "--tools", file, "x"], nil, env: ["OPENAI_API_KEY": Self.openAIKey])
            #expect(r.status == 65, "\(text): \(r)")
            #expect(r.stderr.hasPrefix("Error: \(file)"), "\(r.stderr)")
            #expect(r.stderr.contains(message), "\(text): \(r.stderr)")
        }
        let missing = await cli(["complete", "-p", "openai", "--tools", dir.file("nope.json"), "x"], nil, env: ["OPENAI_API_KEY": Self.openAIKey])
        #expect(missing.status == 65)
        #expect(missing.stderr.contains("nope.json"))
        for bad in [["--max-tokens", "0"], ["--max-tokens", "many"], ["--temperature", "-1"]] {
            let r = await cli(["complete", "-p", "openai"] + bad + ["x"], nil)
            #expect(r.status == 64, "\(bad): \(r)")
        }
    }

    @Test func completeReportsProviderErrorsWithTheirExitStatus() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                .error(401, #"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#),
                .error(429, #"{"error":{"message":"Rate limit reached","type":"requests"}}"#, headers: [("retry-after", "4")]),
            ]
        ])
        let auth = await cli(["complete", "-p", "openai", "--stream", "x"], server)
        #expect(auth.status == 77, "\(auth)")
        #expect(auth.stderr.contains("authentication (401): HTTP 401: invalid_request_error: Incorrect API key provided"), "\(auth.stderr)")
        let limited = await cli(["complete", "-p", "openai", "--json", "x"], server)
        #expect(limited.status == 75)
        let doc = try JSONValue.parse(limited.stdout)
        #expect(doc["error"]?["kind"] == "rate_limited")
        #expect(doc["error"]?["retry_after_ms"] == 4000)
    }

    @Test func modelsListsWhatTheProviderOffers() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "GET /v1/models": [.json(#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","owned_by":"system"},{"id":"ft:custom","object":"model","owned_by":"me"}]}"#)]
        ])
        let r = await cli(["models", "-p", "openai"], server)
        #expect(r.status == 0, "\(r)")
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("MODEL") == true)
        #expect(lines.contains { $0.hasPrefix("gpt-4o-mini") && $0.contains("128000") && $0.contains("system") && $0.hasSuffix("yes") })
        #expect(lines.contains { $0.hasPrefix("ft:custom") && $0.contains("me") })
        let j = await cli(["models", "-p", "openai", "--json"], server)
        let doc = try JSONValue.parse(j.stdout)
        #expect(doc["provider"] == "openai")
        #expect(doc["models"]?[0]?["id"] == "gpt-4o-mini")
        #expect(doc["models"]?[0]?["context_length"] == 128000)
        #expect(doc["models"]?[1]?["in_manifest"] == false)
        #expect(await cli(["models"], server).status == 64)
    }

    @Test func healthChecksOneOrEveryProvider() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["GET /v1/models": [.json(#"{"object":"list","data":[{"id":"gpt-4o-mini"}]}"#)]])
        let one = await cli(["health", "-p", "openai"], server)
        #expect(one.status == 0, "\(one)")
        #expect(one.stdout.contains("openai") && one.stdout.contains("healthy") && one.stdout.contains("answered 200"))

        // Every provider: openai healthy, anthropic skipped (no key), vllm
        // unhealthy (nothing listens at its endpoint).
        let all = await cli(["health", "--json"], server, env: ["ANTHROPIC_API_KEY": "", "VLLM_ENDPOINT": "http://127.0.0.1:9/v1"])
        #expect(all.status == 1, "\(all)")
        let doc = try JSONValue.parse(all.stdout)
        let results = try #require(doc["results"]?.arrayValue)
        #expect(results.map { $0["name"] } == ["anthropic", "openai", "vllm"])
        #expect(results[0]["skipped"]?.stringValue?.contains("ANTHROPIC_API_KEY") == true)
        #expect(results[1]["healthy"] == true)
        #expect(results[2]["healthy"] == false)
        #expect(results[2]["error"]?["kind"] == "provider_unavailable")
        #expect(doc["healthy"] == 1 && doc["unhealthy"] == 1 && doc["skipped"] == 1)

        // A wrong key: unhealthy, saying why, with the authentication exit status.
        try await server.script(["GET /v1/models": [.error(401, #"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#)]])
        let bad = await cli(["health", "-p", "openai"], server)
        #expect(bad.status == 77, "\(bad)")
        #expect(bad.stdout.contains("unhealthy") && bad.stdout.contains("Incorrect API key provided"))
    }

    @Test func healthGivesUpAfterItsTimeout() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["GET /v1/models": [.hang]])
        let r = await cli(["health", "-p", "openai", "--timeout", "0.5", "--json"], server)
        #expect(r.status == 75, "\(r)")
        expectWithin(r.duration, .seconds(10))
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["results"]?[0]?["error"]?["kind"] == "timeout")
    }

    @Test func tokensCountsExactlyOrEstimates() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/messages/count_tokens": [.json(#"{"input_tokens":17}"#)]])
        let exact = await cli(["tokens", "-p", "anthropic", "-m", "claude-haiku-4-5", "How many tokens is this?"], server)
        #expect(exact.status == 0, "\(exact)")
        #expect(exact.stdout == "17 tokens (exact, api:count_tokens)\n")
        let j = await cli(["tokens", "-p", "anthropic", "--json", "-"], server, stdin: "from stdin\n")
        let doc = try JSONValue.parse(j.stdout)
        #expect(doc["tokens"] == 17 && doc["exact"] == true && doc["method"] == "api:count_tokens")
        let body = try #require(try await server.requests().last?.json)
        #expect(body["messages"]?[0]?["content"]?[0]?["text"] == "from stdin")
        let estimate = await cli(["tokens", "-p", "openai", "--json", String(repeating: "abcd", count: 25)], server)
        let e = try JSONValue.parse(estimate.stdout)
        #expect(e["exact"] == false && e["method"] == "heuristic:chars/4" && e["tokens"] == 31)
        #expect(await cli(["tokens", "-p", "openai"], server).status == 64)
    }

    @Test func aProxyFromTheEnvironmentIsUsedUnlessNoProxySaysOtherwise() async throws {
        // A server of its own: it sees CONNECT requests, which have no path prefix.
        let proxy = try await ScriptedServer.start()
        let env = ["HTTPS_PROXY": proxy.url, "OPENAI_ENDPOINT": "https://127.0.0.9/v1", "OPENAI_API_KEY": Self.openAIKey]
        let via = await cli(["models", "-p", "openai"], nil, env: env)
        #expect(via.status != 0)  // the proxy refuses the tunnel
        let seen = try await proxy.requests()
        #expect(seen.map(\.method) == ["CONNECT"], "\(seen.map { "\($0.method) \($0.path)" })")
        #expect(seen.first?.path == "127.0.0.9:443")
        // The key never reaches the proxy: it travels inside the (refused) tunnel.
        #expect(seen.allSatisfy { $0.header("authorization") == nil })
        var direct = env
        direct["NO_PROXY"] = "127.0.0.9"
        let r = await cli(["models", "-p", "openai"], nil, env: direct)
        #expect(r.status == 69, "\(r)")  // nothing listens on 127.0.0.9:443
        #expect(try await proxy.requests().count == 1)
    }

    @Test func theNewCommandsHaveHelp() async {
        for command in ["models", "health", "tokens"] {
            let r = await cli([command, "--help"], nil)
            #expect(r.status == 0)
            #expect(r.stdout.hasPrefix("Usage: descartes \(command)"))
        }
        let top = await cli(["--help"], nil)
        #expect(top.stdout.contains("models -p PROVIDER") && top.stdout.contains("health [-p PROVIDER]") && top.stdout.contains("tokens -p PROVIDER"))
        let complete = await cli(["complete", "--help"], nil)
        #expect(complete.stdout.contains("--tools FILE.json"))
    }
}

/// The repository's manifests of the API providers, as installed.
@Suite struct APIManifestTests {
    static let family = ["deepseek", "groq", "github-models", "vllm", "llamacpp-openai", "mistral", "openrouter", "zai"]

    @Test func pluginsListShowsEveryProviderAndTheFamilySharesOneLibrary() async throws {
        let plugins = PluginDir().addManifest("openai").addManifest("anthropic")
        for p in Self.family { plugins.addManifest(p) }
        var env = ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"]
        for v in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GITHUB_TOKEN", "GH_TOKEN"] { env[v] = "" }
        let r = await Proc.descartes(["plugins", "list", "--json"], env: env)
        #expect(r.status == 0, "\(r)")
        let list = try #require(try JSONValue.parse(r.stdout)["plugins"]?.arrayValue)
        #expect(Set(list.compactMap { $0["name"]?.stringValue }) == Set(["openai", "anthropic"] + Self.family))
        for p in list {
            #expect(p["status"] == "available", "\(p)")
            let name = p["name"]?.stringValue ?? ""
            let lib = p["library"]?.stringValue ?? ""
            #expect(lib.hasSuffix(name == "anthropic" ? "libdescartes-anthropic.so" : "libdescartes-openai.so"), "\(name): \(lib)")
            #expect(p["factory"] == (name == "anthropic" ? "anthropic" : "openai"))
            let keys = (p["config"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
            for k in ["api_key", "endpoint", "model", "timeout_secs", "ca_bundle", "proxy", "headers", "max_response_mb"] {
                #expect(keys.contains(k), "\(name) lacks \(k)")
            }
            let key = p["config"]?.arrayValue?.first { $0["name"] == "api_key" }
            #expect(key?["secret"] == true, "\(name)")
            #expect(key?["env"]?.arrayValue?.isEmpty == false, "\(name)")
        }
        // Loading each works; those without a key say what to set.
        let v = await Proc.descartes(["plugins", "verify"], env: env)
        #expect(v.status == 0, "\(v)")
        #expect(v.stdout.contains("deepseek") && v.stdout.contains("DEEPSEEK_API_KEY"))
        #expect(!v.stdout.contains("FAIL"))
    }

    @Test func everyModelWithAPriceSaysWhereItCameFrom() throws {
        for name in ["openai", "anthropic", "deepseek", "groq"] {
            let text = try FileSystem.readText(FileSystem.join(TestEnv.root, "manifests/\(name).yaml"), limit: 1 << 20)
            #expect(text.contains("price: {"), "\(name)")
            #expect(text.contains("# Prices:") && text.contains("change"), "\(name): the manifest must say where prices came from and that they change")
        }
    }
}
