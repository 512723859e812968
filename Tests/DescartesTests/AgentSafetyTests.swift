import Descartes
import Glibc
import Testing
import DescartesSupport

/// What an orchestrator running coding agents through the host must be able
/// to count on (issue 15): no agent process outlives the host, however the
/// host ends.
@Suite(.serialized, .timeLimit(.minutes(3))) struct AgentSafetyTests {
    static let plugins = PluginDir().addRepositoryPlugin("headless-cli", library: "headless-cli")

    /// Starts `argv` in a process group of its own, output to /dev/null.
    static func start(_ argv: [String], env: [String: String]) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attr, 0)
        var pid: pid_t = -1
        let cargs = argv.map { strdup($0) } + [nil]
        let cenv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        let rc = posix_spawn(&pid, argv[0], &actions, &attr, cargs, cenv)
        for p in cargs { free(p) }
        for p in cenv { free(p) }
        posix_spawn_file_actions_destroy(&actions)
        posix_spawnattr_destroy(&attr)
        return rc == 0 ? pid : -1
    }

    /// Reaps `pid` (polling, so the test's threads never block): the raw wait status.
    static func reap(_ pid: pid_t, within: Duration = .seconds(30)) async -> Int32? {
        let end = ContinuousClock.now + within
        while ContinuousClock.now < end {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return status }
            if r < 0 && errno != EINTR { return nil }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return nil
    }

    static func comm(_ pid: Int32) -> String {
        ProcScan.read("/proc/\(pid)/comm").map { String(decoding: $0, as: UTF8.self).trimmingCharacters() } ?? ""
    }

    /// `kill -TERM`, `-HUP` or `-KILL` to a host running an agent (a shell
    /// script whose own child sleeps, in process and through `--isolate`):
    /// nothing carrying the run's mark is left afterwards. SIGTERM and
    /// SIGHUP end the CLI with 128 + the signal.
    @Test(arguments: [SIGTERM, SIGHUP, SIGKILL], [false, true])
    func noDescendantOutlivesTheHost(signal sig: Int32, isolate: Bool) async throws {
        let dir = TempDir("descartes-orphans")
        let agent = dir.write("agent.sh", "#!/bin/sh\nsleep 300\nexit 0\n", mode: 0o755)
        let mark = ProcScan.newMark()
        var env = Environment.current()
        env["NO_COLOR"] = "1"
        env["DESCARTES_PLUGIN_PATH"] = Self.plugins.path
        env["DESCARTES_TEST_MARK"] = mark
        let argv = [TestEnv.descartes, "complete"] + (isolate ? ["--isolate"] : []) + [
            "-p", "headless-cli", "--set", "command=\(agent)", "--set", "protocol=text", "--timeout", "120", "hello",
        ]
        let host = Self.start(argv, env: env)
        try #require(host > 0)
        // The agent's own child is running.
        let started = await ProcScan.eventually(.seconds(30)) { ProcScan.marked(mark).contains { Self.comm($0) == "sleep" } }
        #expect(started, "the agent never started")
        kill(host, sig)
        let status = await Self.reap(host)
        if sig == SIGKILL {
            #expect(status.map { $0 & 0x7f } == SIGKILL, "status \(String(describing: status))")
        } else {
            #expect(status.map { $0 & 0x7f } == 0, "status \(String(describing: status))")
            #expect(status.map { ($0 >> 8) & 0xff } == 128 + sig, "status \(String(describing: status))")
        }
        let gone = await ProcScan.eventually(.seconds(10)) { ProcScan.marked(mark).isEmpty }
        let left = ProcScan.marked(mark)
        #expect(gone, "left running: \(left.map { "\($0) \(Self.comm($0))" })")
        for pid in left { kill(pid, SIGKILL) }
    }

    // MARK: No turn runs twice

    static func lines(_ path: String) -> Int {
        ((try? FileSystem.readText(path, limit: 1 << 20)) ?? "").split(separator: "\n").count
    }

    static let quickRetry = RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(10), jitter: 0)

    /// A json-lines agent that appends a line to a file, then fails with a
    /// 500-type error: the retry middleware does not run it again (the file
    /// has one line) and the error says why; with `repeatable: true` it is
    /// retried (three lines), so the check above can fail.
    @Test func anAgentThatActedIsNeverRetried() async throws {
        let dir = TempDir("descartes-once")
        let log = dir.file("effects.log")
        let agent = dir.write("agent.sh", """
            #!/bin/sh
            cat >/dev/null
            echo ran >> "$EFFECTS_LOG"
            echo '{"type":"error","kind":"provider_unavailable","status":500,"message":"upstream 500"}'
            """, mode: 0o755)
        func backend(_ repeatable: Bool) throws -> any ModelBackend {
            try Self.plugins.factory().create(
                "headless-cli",
                config: ["command": .string(agent), "env": ["EFFECTS_LOG": .string(log)], "repeatable": .bool(repeatable)])
        }
        let once = RetryBackend(try backend(false), policy: Self.quickRetry)
        let e = await providerError { _ = try await once.complete(ModelRequest(prompt: "append a line")) }
        #expect(e?.kind == .providerUnavailable)
        #expect(e?.status == 500)
        #expect(e?.message.contains("the turn had already started agent.sh, which may have acted") == true, "\(String(describing: e))")
        #expect(e?.sideEffects.isEmpty == false)
        #expect(Self.lines(log) == 1)
        // Nor does a fallback chain hand the same turn to its next provider.
        let chain = FallbackBackend(name: "chain", [.init(try backend(false)), .init(try backend(false))])
        _ = await providerError { _ = try await chain.complete(ModelRequest(prompt: "append a line")) }
        #expect(Self.lines(log) == 2)
        // A program declared repeatable is retried as before.
        let again = RetryBackend(try backend(true), policy: Self.quickRetry)
        _ = await providerError { _ = try await again.complete(ModelRequest(prompt: "append a line")) }
        #expect(Self.lines(log) == 5)
        await once.shutdown()
        await chain.shutdown()
        await again.shutdown()
    }

    /// Claude Code's stream-json for a turn that ran Bash and then hit an
    /// API 500 (the shapes of HEADLESS-NOTES: the tool_use, its result, a
    /// synthetic assistant message, a `result` with `subtype: success`,
    /// `is_error` and `api_error_status`, exit 1). The fake appends to a
    /// file, as the Bash tool would have: one line after the retry layer.
    @Test func aClaudeTurnThatRanToolsIsNeverRetried() async throws {
        let dir = TempDir("descartes-once-claude")
        let log = dir.file("effects.log")
        let sid = "0b6f2a3e-1111-4222-8333-944445555666"
        let claude = dir.write("claude", """
            #!/bin/sh
            cat >/dev/null
            echo '{"type":"system","subtype":"init","session_id":"\(sid)","model":"claude-haiku-4-5","tools":["Bash"],"claude_code_version":"2.1.331"}'
            echo '{"type":"assistant","message":{"model":"claude-haiku-4-5","id":"msg_1","type":"message","role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"echo ran >> effects.log"}}]},"parent_tool_use_id":null,"session_id":"\(sid)"}'
            echo ran >> "$EFFECTS_LOG"
            echo '{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"","is_error":false}]},"parent_tool_use_id":null,"session_id":"\(sid)"}'
            echo '{"type":"assistant","message":{"model":"<synthetic>","id":"msg_2","type":"message","role":"assistant","content":[{"type":"text","text":"API Error: 500 Internal server error"}]},"parent_tool_use_id":null,"session_id":"\(sid)","is_api_error_message":true}'
            echo '{"type":"result","subtype":"success","is_error":true,"api_error_status":500,"duration_ms":12,"num_turns":2,"result":"API Error: 500 Internal server error","session_id":"\(sid)","total_cost_usd":0}'
            exit 1
            """, mode: 0o755)
        let inner = try ClaudeHarness.plugins.factory().create(
            "claude-code-cli", config: ["command": .string(claude), "env": ["EFFECTS_LOG": .string(log)]])
        let b = RetryBackend(inner, policy: Self.quickRetry)
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "append a line")) }
        #expect(e?.kind == .providerUnavailable)
        #expect(e?.status == 500)
        #expect(e?.message.contains("the turn had already run tools: Bash") == true, "\(String(describing: e))")
        #expect(e?.sideEffects == ["run tools: Bash"])
        #expect(Self.lines(log) == 1)
        // The same 500 before any tool ran is retried (three attempts).
        let clean = dir.write("claude-clean", """
            #!/bin/sh
            cat >/dev/null
            echo "attempt max_retries=$CLAUDE_CODE_MAX_RETRIES" >> "$EFFECTS_LOG"
            echo '{"type":"system","subtype":"init","session_id":"\(sid)","model":"claude-haiku-4-5","tools":[]}'
            echo '{"type":"result","subtype":"success","is_error":true,"api_error_status":500,"result":"API Error: 500","session_id":"\(sid)"}'
            exit 1
            """, mode: 0o755)
        let attempts = dir.file("attempts.log")
        let retried = RetryBackend(
            try ClaudeHarness.plugins.factory().create(
                "claude-code-cli", config: ["command": .string(clean), "env": ["EFFECTS_LOG": .string(attempts)]]),
            policy: Self.quickRetry)
        let e2 = await providerError { _ = try await retried.complete(ModelRequest(prompt: "hi")) }
        #expect(e2?.kind == .providerUnavailable)
        #expect(e2?.sideEffects == [])
        #expect(Self.lines(attempts) == 3)
        // Claude Code's own retries are off unless configured: the host's policy decides.
        #expect((try? FileSystem.readText(attempts, limit: 4096))?.hasPrefix("attempt max_retries=0\n") == true)
        await b.shutdown()
        await retried.shutdown()
    }

    // MARK: A prompt is never an option

    /// A text CLI taking its prompt as an argument (argparse, like most):
    /// a prompt of `--help` is the prompt (`--` goes before it by default),
    /// and options after `{prompt}`, which `--` would turn into operands,
    /// are refused before anything runs.
    @Test func aPromptArgumentIsNeverTakenAsAnOption() async throws {
        let dir = TempDir("descartes-dashdash")
        let cli = dir.write("ask.py", """
            #!/usr/bin/env python3
            import argparse
            p = argparse.ArgumentParser(prog="ask")
            p.add_argument("-m", "--model", default="none")
            p.add_argument("prompt")
            a = p.parse_args()
            print("model=%s prompt=%s" % (a.model, a.prompt))
            """, mode: 0o755)
        let b = try Self.plugins.factory().create(
            "headless-cli", config: ["command": .string(cli), "protocol": "text", "args": ["-m", "{model}", "{prompt}"], "model": "tiny"])
        let r = try await b.complete(ModelRequest(prompt: "--help"))
        #expect(r.content == "model=tiny prompt=--help\n", "\(r.content)")
        await b.shutdown()
        let e = await providerError {
            _ = try Self.plugins.factory().create(
                "headless-cli", config: ["command": .string(cli), "protocol": "text", "args": ["{prompt}", "-m", "x"]])
        }
        #expect(e?.kind == .config)
        #expect(e?.message.contains("'-m' after {prompt}") == true, "\(String(describing: e))")
        // The old behaviour, asked for explicitly: the program sees an option.
        let unsafe = try Self.plugins.factory().create(
            "headless-cli", config: ["command": .string(cli), "protocol": "text", "args": ["{prompt}"], "end_options": false])
        let u = try await unsafe.complete(ModelRequest(prompt: "--help"))
        #expect(u.content.hasPrefix("usage: ask"), "\(u.content)")
        await unsafe.shutdown()
    }

    // MARK: Refused before spawning, denied tools

    /// A bad permission_mode is `config` naming the key and the allowed
    /// values, before anything runs (the command does not even exist); a
    /// missing program is `config` too, and the retry layer does not ask
    /// again.
    @Test func badConfigAndAMissingProgramAreRefusedOnce() async throws {
        let e = await providerError {
            _ = try ClaudeHarness.plugins.factory().create(
                "claude-code-cli", config: ["command": "/nonexistent/claude", "permission_mode": "bogus"])
        }
        #expect(e?.kind == .config)
        #expect(e?.message.contains("key 'permission_mode': 'bogus' is not a permission mode (default, acceptEdits") == true, "\(String(describing: e))")
        // (`true` would run, and end without a result, if the option were not refused first.)
        let runs = try ClaudeHarness.plugins.factory().create("claude-code-cli", config: ["command": "/bin/true"])
        var request = ModelRequest(prompt: "x")
        request.options = ["permission_mode": "yolo"]
        let o = await providerError { _ = try await runs.complete(request) }
        await runs.shutdown()
        let b = try ClaudeHarness.plugins.factory().create("claude-code-cli", config: ["command": "/nonexistent/claude"])
        #expect(o?.kind == .config)
        #expect(o?.message.contains("request option 'permission_mode': 'yolo'") == true, "\(String(describing: o))")
        let missing = RetryBackend(b, policy: Self.quickRetry)
        let m = await providerError { _ = try await missing.complete(ModelRequest(prompt: "x")) }
        #expect(m?.kind == .config)
        #expect(m?.message.contains("cannot run '/nonexistent/claude'") == true, "\(String(describing: m))")
        #expect(m?.attempts.count ?? 0 <= 1)  // asked once
        await missing.shutdown()
    }

    /// A turn in which Claude Code was refused a tool ends with
    /// `tool_denied`, not `stop`; the CLI prints the answer, names the tool
    /// and exits 77.
    @Test func aDeniedToolIsItsOwnFinishReason() async throws {
        let dir = TempDir("descartes-denied")
        let sid = "0b6f2a3e-1111-4222-8333-944445555777"
        let claude = dir.write("claude", """
            #!/bin/sh
            cat >/dev/null
            echo '{"type":"system","subtype":"init","session_id":"\(sid)","model":"claude-haiku-4-5","tools":["Write"]}'
            echo '{"type":"assistant","message":{"model":"claude-haiku-4-5","id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"I could not write the file."}]},"parent_tool_use_id":null,"session_id":"\(sid)"}'
            echo '{"type":"result","subtype":"success","is_error":false,"stop_reason":"end_turn","result":"I could not write the file.","session_id":"\(sid)","permission_denials":[{"tool_name":"Write","tool_use_id":"toolu_9","tool_input":{"file_path":"/tmp/x","content":"y"}}],"usage":{"input_tokens":5,"output_tokens":7}}'
            """, mode: 0o755)
        let b = try ClaudeHarness.plugins.factory().create("claude-code-cli", config: ["command": .string(claude)])
        let r = try await b.complete(ModelRequest(prompt: "write /tmp/x"))
        #expect(r.finishReason == .toolDenied)
        #expect(r.metadata["permission_denials"]?[0]?["tool_name"] == "Write")
        await b.shutdown()
        let cli = await Proc.descartes(
            ["complete", "-p", "claude-code-cli", "--set", "command=\(claude)", "--json", "write /tmp/x"],
            env: ["DESCARTES_PLUGIN_PATH": ClaudeHarness.plugins.path])
        #expect(cli.status == 77, "\(cli)")
        #expect((try? JSONValue.parse(cli.stdout))?["finish_reason"] == "tool_denied", "\(cli.stdout)")
        #expect(cli.stderr.contains("the agent was denied Write"), "\(cli.stderr)")
    }

    // MARK: Secrets given to a CLI stay secret

    /// A token handed to a generic CLI through `env` (plainly, or from
    /// `${file:}` in providers.yaml) is masked when
    /// the program echoes it: in the error (stderr tail), and in the answer
    /// the CLI prints.
    @Test func credentialsGivenThroughEnvAreMaskedEverywhere() async throws {
        let dir = TempDir("descartes-envsecret")
        let token = "tok-agent-secret-5551234-abcdef"
        let leaky = dir.write("leaky.sh", """
            #!/bin/sh
            cat >/dev/null
            echo "using $MY_SERVICE_TOKEN"
            echo "auth failed for $MY_SERVICE_TOKEN" >&2
            exit "${LEAKY_EXIT:-1}"
            """, mode: 0o755)
        let b = try Self.plugins.factory().create(
            "headless-cli", config: ["command": .string(leaky), "protocol": "text", "env": ["MY_SERVICE_TOKEN": .string(token)]])
        let e = try #require(await providerError { _ = try await b.complete(ModelRequest(prompt: "x")) })
        #expect(e.message.contains("auth failed for"), "\(e)")
        #expect(!e.message.contains(token), "\(e)")
        await b.shutdown()

        // Through the CLI, the token from a file named in providers.yaml:
        // the answer and the error are masked.
        let tokenFile = dir.write("token", token + "\n")
        let config = dir.write("providers.yaml", """
            providers:
              leaky:
                plugin: headless-cli
                command: \(leaky)
                protocol: text
                env:
                  MY_SERVICE_TOKEN: ${file:\(tokenFile)}
                  LEAKY_EXIT: "0"
            """)
        let ok = await Proc.descartes(["--config", config, "complete", "-p", "leaky", "x"], env: ["DESCARTES_PLUGIN_PATH": Self.plugins.path])
        #expect(ok.status == 0, "\(ok)")
        #expect(ok.stdout.hasPrefix("using "), "\(ok.stdout)")
        #expect(!ok.stdout.contains(token) && !ok.stderr.contains(token), "\(ok)")
        let failed = await Proc.descartes(
            ["--config", config, "complete", "-p", "leaky", "--set", "env=MY_SERVICE_TOKEN=\(token),LEAKY_EXIT=3", "x"],
            env: ["DESCARTES_PLUGIN_PATH": Self.plugins.path])
        #expect(failed.status != 0, "\(failed)")
        #expect(failed.stderr.contains("auth failed for"), "\(failed.stderr)")
        #expect(!failed.stdout.contains(token) && !failed.stderr.contains(token), "\(failed)")
    }
}
