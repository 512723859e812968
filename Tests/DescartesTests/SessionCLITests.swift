import Descartes
import Glibc
import Testing
import DescartesSupport

/// `descartes complete --session new|ID` and `descartes sessions`, with the
/// real agents: a session outlives the CLI process that started it.
@Suite(.serialized, .timeLimit(.minutes(5))) struct SessionCLITests {
    /// The CLI's environment: the plugins, a state directory of the test's own.
    static func environment(_ plugins: PluginDir, state: TempDir) -> [String: String] {
        var env = Environment.current()
        env["NO_COLOR"] = "1"
        env["DESCARTES_PLUGIN_PATH"] = plugins.path
        env["XDG_STATE_HOME"] = state.path
        env["XDG_CONFIG_HOME"] = state.file("config")
        return env
    }

    /// `--set` arguments for every key of a harness's config.
    static func sets(_ config: [String: JSONValue]) -> [String] {
        config.sorted { $0.key < $1.key }.flatMap { (k, v) -> [String] in
            let value: String
            switch v {
            case .object(let o): value = o.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.stringValue ?? $0.value.jsonText)" }.joined(separator: ",")
            case .array(let a): value = a.compactMap(\.stringValue).joined(separator: ",")
            default: value = v.stringValue ?? v.jsonText
            }
            return ["--set", "\(k)=\(value)"]
        }
    }

    static func sessionID(_ stderr: String) -> String? {
        guard let r = stderr.firstRange(of: "descartes: session ") else { return nil }
        return String(stderr[r.upperBound...].prefix { $0 != "," })
    }

    @Test func aCodexSessionContinuesInALaterInvocation() async throws {
        let h = try await CodexHarness()
        try await h.serve([CodexHarness.answer("First answer"), CodexHarness.answer("Second answer")])
        let state = TempDir("descartes-sessions-state")
        let env = Self.environment(CodexHarness.plugins, state: state)
        let base = [TestEnv.descartes, "complete", "-p", "codex-cli"] + Self.sets(h.config())
        let first = await Proc.run(base + ["--session", "new", "first question"], env: env)
        #expect(first.status == 0, "\(first)")
        #expect(first.stdout == "First answer\n")
        let id = try #require(Self.sessionID(first.stderr), "\(first.stderr)")
        #expect(first.stderr.contains("turn 1"))

        let second = await Proc.run(base + ["--session", id, "second question"], env: env)
        #expect(second.status == 0, "\(second)")
        #expect(second.stdout == "Second answer\n")
        #expect(second.stderr.contains("descartes: session \(id), turn 2"), "\(second.stderr)")
        #expect(try await h.conversations().last == ["user: first question", "assistant: First answer", "user: second question"])

        let list = await Proc.run([TestEnv.descartes, "sessions", "list", "--json"], env: env)
        #expect(list.status == 0, "\(list)")
        let sessions = try JSONValue.parse(list.stdout)["sessions"]?.arrayValue ?? []
        #expect(sessions.count == 1)
        #expect(sessions.first?["id"]?.stringValue == id)
        #expect(sessions.first?["provider"]?.stringValue == "codex-cli")
        #expect(sessions.first?["turns"]?.intValue == 2)
        let table = await Proc.run([TestEnv.descartes, "sessions", "list"], env: env)
        #expect(table.stdout.contains(id) && table.stdout.contains("first question"), "\(table)")

        // Another provider cannot continue it; an unknown id is refused.
        let wrong = await Proc.run([TestEnv.descartes, "complete", "-p", "claude-code-cli", "--session", id, "hi"], env: env)
        #expect(wrong.status == 78, "\(wrong)")
        #expect(wrong.stderr.contains("belongs to provider 'codex-cli'"), "\(wrong.stderr)")

        let close = await Proc.run([TestEnv.descartes, "sessions", "close", id], env: env)
        #expect(close.status == 0, "\(close)")
        #expect(close.stdout.contains("closed session \(id) (codex-cli, 2 turns)"))
        let gone = await Proc.run(base + ["--session", id, "third"], env: env)
        #expect(gone.status == 78, "\(gone)")
        #expect(gone.stderr.contains("no such session"), "\(gone.stderr)")
        #expect(try await h.server.requests().count == 2)
    }

    /// A provider without sessions is refused before anything runs.
    @Test func aProviderWithoutSessionsIsRefused() async throws {
        let plugins = PluginDir().addEcho()
        let state = TempDir("descartes-sessions-state")
        let r = await Proc.run(
            [TestEnv.descartes, "complete", "-p", "echo", "--session", "new", "hi"], env: Self.environment(plugins, state: state))
        #expect(r.status != 0)
        #expect(r.stderr.contains("echo has no sessions"), "\(r.stderr)")
        #expect(!FileSystem.exists(state.file("descartes/sessions")))
    }

    /// Claude Code's session process ends with the CLI; the next
    /// invocation's turn replays the stored conversation under the same id.
    @Test func aClaudeSessionContinuesInALaterInvocation() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse"), ClaudeHarness.sse("messages-stream-text.sse")])
        let state = TempDir("descartes-sessions-state")
        let env = Self.environment(ClaudeHarness.plugins, state: state)
        let base = [TestEnv.descartes, "complete", "-p", "claude-code-cli"] + Self.sets(h.config())
        let first = await Proc.run(base + ["--session", "new", "first question"], env: env)
        #expect(first.status == 0, "\(first)")
        let id = try #require(Self.sessionID(first.stderr), "\(first.stderr)")
        let second = await Proc.run(base + ["--session", id, "second question"], env: env)
        #expect(second.status == 0, "\(second)")
        #expect(second.stderr.contains("descartes: session \(id), turn 2"), "\(second.stderr)")
        let conversations = try await h.conversations()
        #expect(conversations.count == 2)
        #expect(conversations.last == ["user: first question", "assistant: Hello", "user: second question"], "\(conversations)")
    }
}
