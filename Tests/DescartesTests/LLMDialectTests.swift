import Descartes
import Glibc
import Testing
import DescartesSupport

/// Simon Willison's real `llm` (PyPI llm, installed by support/deps.sh
/// test), or `$DESCARTES_LLM`.
enum LLMBinary {
    static let path: String? = {
        if let p = Environment.get("DESCARTES_LLM"), !p.isEmpty { return p }
        // pip puts llm's script beside the interpreter's other scripts.
        let r = Proc.runBlocking(
            ["python3", "-c", "import os, sysconfig; p = os.path.join(sysconfig.get_path('scripts'), 'llm'); print(p if os.path.exists(p) else '')"],
            timeout: .seconds(30))
        let line = r.stdout.trimmingSpaces
        return r.status == 0 && line.hasPrefix("/") ? line : nil
    }()

    static func require() throws -> String {
        try #require(path, "the llm CLI is needed: support/deps.sh test installs it (pip install llm==0.36), or set DESCARTES_LLM")
    }
}

/// The `llm` dialect (manifests/llm.yaml: headless-cli's library and rules,
/// no code) against the real llm, pointed at a scripted OpenAI-compatible
/// server on 127.0.0.1 (OPENAI_BASE_URL in `env`), with a fresh
/// LLM_USER_PATH (no stored keys, its logs database kept out of HOME).
@Suite(.serialized, .timeLimit(.minutes(3))) struct LLMDialectTests {
    static let plugins = PluginDir().addRepositoryPlugin("llm", library: "headless-cli")
    /// Not shaped like any known key, so only its registration as a secret
    /// (api_key is `secret: true`) can mask it.
    static let apiKey = "dialect15-credential-Zq81"

    static func chunk(_ delta: JSONValue, finish: String? = nil, usage: JSONValue? = nil) -> String {
        var c: JSONObject = ["id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"]
        if let usage {
            c["choices"] = .array([])
            c["usage"] = usage
        } else {
            let choice: JSONObject = ["index": 0, "delta": delta, "finish_reason": finish.map { JSONValue.string($0) } ?? .null]
            c["choices"] = .array([.object(choice)])
        }
        return "data: \(JSONValue.object(c).jsonText)\n\n"
    }

    static let answer = ScriptedServer.Response.stream(
        chunk(["role": "assistant", "content": "Hello from"]) + chunk(["content": " loopback"]) + chunk([:], finish: "stop")
            + chunk([:], usage: ["prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15]) + "data: [DONE]\n\n")

    /// OpenAI's 401, which quotes the key it was given.
    static let unauthorized = ScriptedServer.Response.json(
        ["error": ["message": .string("Incorrect API key provided: \(apiKey)"), "type": "invalid_request_error", "code": "invalid_api_key"]],
        status: 401)

    let llm: String
    let server: ScriptedServer
    let userPath = TempDir("descartes-llm-user")

    init() async throws {
        llm = try LLMBinary.require()
        server = try await ScriptedServer.start()
    }

    func complete(_ args: [String]) async -> ProcResult {
        await Proc.descartes(
            ["complete", "-p", "llm", "--set", "command=\(llm)", "--set", "env=LLM_USER_PATH=\(userPath.path),OPENAI_BASE_URL=\(server.url)/v1"]
                + args,
            env: ["DESCARTES_PLUGIN_PATH": Self.plugins.path, "OPENAI_API_KEY": Self.apiKey])
    }

    @Test func anAnswerStreamsWithTheUsageLlmPrints() async throws {
        try await server.script(["POST /v1/chat/completions": [Self.answer]])
        let r = await complete(["--json", "--", "--help"])
        #expect(r.status == 0, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["content"]?.stringValue == "Hello from loopback\n", "\(r.stdout)")
        #expect(doc["usage"]?["input_tokens"]?.intValue == 11, "\(r.stdout)")
        #expect(doc["usage"]?["output_tokens"]?.intValue == 4)
        #expect(doc["usage"]?["estimated"]?.boolValue != true)
        // llm got the prompt "--help" as its prompt (after --), the key
        // through its environment (the Authorization header), not argv.
        let requests = try await server.requests()
        let request = try #require(requests.last)
        #expect(request.json?["messages"]?[0]?["content"]?.stringValue == "--help")
        #expect(request.json?["model"]?.stringValue == "gpt-4o-mini")
        #expect(request.headers.contains { $0.0.lowercased() == "authorization" && $0.1 == "Bearer \(Self.apiKey)" })
    }

    @Test func aRejectedKeyIsAnAuthenticationErrorWithTheKeyMasked() async throws {
        try await server.script(["POST /v1/chat/completions": [Self.unauthorized]])
        let r = await complete(["hello"])
        #expect(r.status == 77, "\(r)")
        #expect(r.stderr.contains("authentication"), "\(r.stderr)")
        #expect(r.stderr.contains("Error code: 401"), "\(r.stderr)")
        #expect(!r.stderr.contains(Self.apiKey) && !r.stdout.contains(Self.apiKey), "\(r)")
        #expect(r.stderr.contains("Incorrect API key provided: [REDACTED]"), "\(r.stderr)")
    }

    /// `descartes plugins verify`: every key of manifests/llm.yaml is one
    /// the headless-cli library's own manifest declares.
    @Test func theManifestOnlyUsesKeysTheLibraryKnows() async throws {
        let plugins = PluginDir().addRepositoryPlugin("llm", library: "headless-cli").addRepositoryPlugin("headless-cli", library: "headless-cli")
        let r = await Proc.descartes(["plugins", "verify", "--json"], env: ["DESCARTES_PLUGIN_PATH": plugins.path])
        let doc = try JSONValue.parse(r.stdout)
        let rows = (doc["results"]?.arrayValue ?? []).filter { $0["name"]?.stringValue == "llm" }
        #expect(!rows.isEmpty, "\(r)")
        #expect(rows.allSatisfy { $0["ok"]?.boolValue == true && $0["undeclared_config"] == nil }, "\(rows)")
    }

    @Test func aServerErrorIsProviderUnavailable() async throws {
        try await server.script(["POST /v1/chat/completions": [.json(["error": ["message": "overloaded"]], status: 503)]])
        let r = await complete(["--retries", "0", "hello"])
        #expect(r.stderr.contains("provider_unavailable"), "\(r)")
        #expect(r.status == 69)
    }
}
