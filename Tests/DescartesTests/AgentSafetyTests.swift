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
}
