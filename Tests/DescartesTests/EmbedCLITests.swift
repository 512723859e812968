import Descartes
import DescartesSupport
import Testing

/// `descartes embed`, run as a user runs it.
@Suite struct EmbedCLITests {
    let plugins = PluginDir().addScripted().addEcho10()

    func cli(_ args: [String], stdin: String? = nil) async -> ProcResult {
        await Proc.descartes(args, env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"], stdin: stdin)
    }

    @Test func embedPrintsOneVectorPerTextAsJSON() async throws {
        let r = await cli(["embed", "-p", "scripted", "hello world", "a"])
        #expect(r.status == 0, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["provider"]?.stringValue == "scripted")
        #expect(doc["model"]?.stringValue == "scripted-embed")
        #expect(doc["dimensions"]?.intValue == 3)
        #expect(doc["usage"]?["input_tokens"]?.intValue == 3)
        #expect(doc["embeddings"] == [[11.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
        // '-': one text per non-empty line of stdin.
        let lines = await cli(["embed", "-p", "scripted", "-m", "mini", "-"], stdin: "one two\n\nthree\n")
        #expect(lines.status == 0, "\(lines)")
        let d = try JSONValue.parse(lines.stdout)
        #expect(d["embeddings"]?.arrayValue?.count == 2)
        #expect(d["model"]?.stringValue == "mini")
    }

    /// `--similar`: the texts ranked by cosine similarity to the query's
    /// vector, against a loopback OpenAI server whose vectors are fixed:
    /// the query and the texts go in one request, the query first.
    @Test func similarRanksTheTextsByCosine() async throws {
        let server = try await ServerSlot.make()
        // q, then "far" (orthogonal), "near" (almost q), "between" (45 degrees), "opposite".
        let vectors: [[Double]] = [[1, 0], [0, 1], [1, 0.1], [1, 1], [-1, 0]]
        let data: [JSONValue] = vectors.enumerated().map { i, v in ["object": "embedding", "index": .integer(i), "embedding": .array(v.map { .number($0) })] }
        try await server.script([
            "POST /v1/embeddings": [.json(["object": "list", "data": .array(data), "model": "text-embedding-3-small", "usage": ["prompt_tokens": 5, "total_tokens": 5]])]
        ])
        let dir = PluginDir().addManifest("openai")
        let work = TempDir("embed-similar")
        let config = work.write("providers.yaml", "providers:\n  lab: {plugin: openai, endpoint: \"\(server.url)/v1\", api_key: \"${LAB_KEY}\"}\n")
        let env = ["DESCARTES_PLUGIN_PATH": dir.path, "HOME": "/nonexistent", "LAB_KEY": "sk-openai-embed-test-1a2b3c4d5e"]
        let lines = "far\nnear\nbetween\nopposite\n"
        let r = await Proc.descartes(["--config", config, "embed", "-p", "lab", "--similar", "q"], env: env, stdin: lines)
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "0.9950\tnear\n0.7071\tbetween\n0.0000\tfar\n-1.0000\topposite\n", "\(r)")
        #expect(try await server.requests().first?.json?["input"] == ["q", "far", "near", "between", "opposite"])
        let json = await Proc.descartes(["--config", config, "embed", "-p", "lab", "--similar", "q", "--top", "2", "--json", "far", "near", "between", "opposite"], env: env)
        #expect(json.status == 0, "\(json)")
        let doc = try JSONValue.parse(json.stdout)
        #expect(doc["query"] == "q")
        #expect(doc["model"] == "text-embedding-3-small")
        #expect(doc["results"]?.arrayValue?.map { $0["text"] } == ["near", "between"])
        #expect(doc["results"]?[0]?["index"] == 1)
        #expect(doc["results"]?[0]?["score"]?.doubleValue.map { abs($0 - 1 / (1.01 as Double).squareRoot()) < 1e-6 } == true)
        let noQuery = await Proc.descartes(["--config", config, "embed", "-p", "lab", "--top", "2", "a"], env: env)
        #expect(noQuery.status == 64, "\(noQuery)")
    }

    @Test func embedFailsClearlyWhereItCannot() async {
        let old = await cli(["embed", "-p", "echo10", "text"])
        #expect(old.status != 0, "\(old)")
        #expect(old.stdout.contains("unsupported_feature"), "\(old)")
        let none = await cli(["embed", "-p", "scripted"])
        #expect(none.status == 64, "\(none)")
    }
}
