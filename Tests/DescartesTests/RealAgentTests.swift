import Descartes
import DescartesSupport
import Testing

/// Real agent CLIs against `descartes serve`. They run in `make test`'s
/// last phase, with the real-model suite: a Node.js agent starting takes a
/// core for a while.
@Suite(.serialized) struct RealAgentTests {
    /// The real `claude` CLI (Claude Code, the binary of the claude-agent-sdk
    /// wheel) headless, with ANTHROPIC_BASE_URL pointed at a gateway on
    /// 127.0.0.1 serving the echo plugin and its gateway key as
    /// ANTHROPIC_API_KEY (Tests/Gateway/claude_cli.py drives both): it gets
    /// its answer, streamed, in one request.
    @Test func claudeCLIGetsAnAnswerThroughTheGateway() async throws {
        let claude = try ClaudeBinary.require()
        let plugins = PluginDir().addEcho()
        defer { withExtendedLifetime(plugins) {} }
        var env = Environment.current()
        env["DESCARTES"] = TestEnv.descartes
        env["DESCARTES_PLUGIN_PATH"] = plugins.path
        env["CLAUDE"] = claude
        let r = await Proc.run(["python3", "-u", FileSystem.join(TestEnv.root, "Tests/Gateway/claude_cli.py")], env: env, timeout: .seconds(300))
        try #require(r.status == 0, "\(r)")
        let summary = try JSONValue.parse(r.stdout)
        let result = try #require(summary["result"].flatMap { $0.isNull ? nil : $0 }, "claude printed no result line: \(r.stdout)")
        #expect(summary["claude_exit"]?.intValue == 0, "\(r.stdout)")
        #expect(result["is_error"]?.boolValue == false, "\(r.stdout)")
        // The echo plugin answers with the prompt itself.
        #expect(result["result"]?.stringValue == summary["prompt"]?.stringValue, "\(r.stdout)")
        let access = summary["access"]?.arrayValue ?? []
        #expect(access.count == 1, "one request, no retry: \(access)")
        let line = try #require(access.first)
        #expect(line["path"]?.stringValue == "/v1/messages")
        #expect(line["status"]?.intValue == 200)
        #expect(line["stream"]?.boolValue == true)
        #expect(line["key"]?.stringValue == "claude-cli")
        #expect(summary["key_in_log"]?.boolValue == false)
        #expect(summary["gateway_exit"]?.intValue == 0, "\(r.stdout)")
    }
}
