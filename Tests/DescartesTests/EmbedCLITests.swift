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

    @Test func embedFailsClearlyWhereItCannot() async {
        let old = await cli(["embed", "-p", "echo10", "text"])
        #expect(old.status != 0, "\(old)")
        #expect(old.stdout.contains("unsupported_feature"), "\(old)")
        let none = await cli(["embed", "-p", "scripted"])
        #expect(none.status == 64, "\(none)")
    }
}
