import Descartes
import Glibc
import Testing
import DescartesSupport

/// The operations commands end to end: config show/check, instances used
/// with -p, the audit log and `descartes log`, the plugin policy as ops
/// use it.
@Suite struct OperationsCLITests {
    let plugins = PluginDir().addEcho()

    /// Runs the CLI in `directory` (for the project file search).
    func cli(_ args: [String], in directory: String? = nil, env: [String: String] = [:]) async -> ProcResult {
        var e = env
        e["DESCARTES_PLUGIN_PATH"] = e["DESCARTES_PLUGIN_PATH"] ?? plugins.path
        e["HOME"] = e["HOME"] ?? "/nonexistent"
        let argv = directory.map { ["env", "-C", $0, TestEnv.descartes] } ?? [TestEnv.descartes]
        var full = Environment.current()
        full["NO_COLOR"] = "1"
        for (k, v) in e { full[k] = v }
        return await Proc.run(argv + args, env: full)
    }

    func project(_ yaml: String, env dotenv: String? = nil) -> TempDir {
        let p = TempDir("descartes-project")
        p.write(".descartes/providers.yaml", yaml)
        if let dotenv { p.write(".env", dotenv) }
        try! FileSystem.makeDirectories(p.file("src/deep"))
        return p
    }

    @Test func instancesFromTheProjectFileAreUsedByName() async throws {
        let p = project(
            """
            providers:
              shouty:
                plugin: echo
                prefix: "${GREETING:-HEY} "
                delay_ms: ${DELAY}
            """, env: "DELAY=1\nGREETING=hi\n")
        // From a subdirectory: the nearest ancestor's .descartes/ is found.
        let r = await cli(["complete", "-p", "shouty", "hello", "world"], in: p.file("src/deep"))
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "hi hello world\n")
        // --set wins over the file; the environment wins over .env.
        #expect(await cli(["complete", "-p", "shouty", "--set", "prefix=", "x"], in: p.path).stdout == "x\n")
        #expect(await cli(["complete", "-p", "shouty", "x"], in: p.path, env: ["GREETING": "yo"]).stdout == "yo x\n")
        // --config replaces the search.
        let other = TempDir()
        let file = other.write("alt.yaml", "providers:\n  quiet:\n    plugin: echo\n    prefix: \"... \"\n")
        #expect(await cli(["--config", file, "complete", "-p", "quiet", "x"], in: p.path).stdout == "... x\n")
        let notThere = await cli(["complete", "-p", "shouty", "--config", file, "x"], in: p.path)
        #expect(notThere.status == 78)
        #expect(notThere.stderr.contains("unknown provider 'shouty'"))
    }

    @Test func configShowSaysWhereEveryValueCameFrom() async throws {
        let secretDir = TempDir()
        let keyFile = secretDir.write("key", "sk-from-file-0123456789\n")
        let p = project(
            """
            providers:
              shouty:
                plugin: echo
                prefix: ${file:\(keyFile)}
                delay_ms: ${DELAY}
            retry:
              max_attempts: ${TRIES:-3}
              api_key: sk-in-a-section-0123456789
            """, env: "DELAY=7\n")
        let file = p.file(".descartes/providers.yaml")
        let r = await cli(["config", "show"], in: p.path)
        #expect(r.status == 0, "\(r)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.contains(file) && $0.contains("project") && $0.contains("read") })
        #expect(lines.contains { $0.contains("/etc/descartes/providers.yaml") && $0.contains("not found") })
        #expect(lines.contains { $0.hasPrefix("    delay_ms: 7") && $0.contains("# \(file):5:15 via ${DELAY} (DELAY from \(p.path)/.env)") }, "\(r.stdout)")
        #expect(lines.contains { $0.hasPrefix("    prefix: [REDACTED]") && $0.contains("via ${file:\(keyFile)}") }, "\(r.stdout)")
        #expect(lines.contains { $0.hasPrefix("  max_attempts: 3") })
        #expect(lines.contains { $0.hasPrefix("  api_key: \"[REDACTED]\"") })
        #expect(!r.stdout.contains("sk-from-file") && !r.stdout.contains("sk-in-a-section"))

        let json = try JSONValue.parse(await cli(["config", "show", "--json"], in: p.path).stdout)
        let delay = try #require(json["providers"]?["shouty"]?["config"]?["delay_ms"])
        #expect(delay["value"] == 7)
        #expect(delay["source"]?.stringValue?.hasPrefix("\(file):5:15") == true)
        #expect(json["providers"]?["shouty"]?["config"]?["prefix"]?["value"] == "[REDACTED]")
        #expect(json["sections"]?["retry"]?["value"]?["max_attempts"] == 3)

        // A plugin used by its id, with no file.
        let plain = await cli(["config", "show", "echo"], in: "/")
        #expect(plain.stdout.contains("    delay_ms: 0") && plain.stdout.contains("# default ("), "\(plain)")
    }

    @Test func everyProblemIsListedWithFileLineColumnAndKey() async throws {
        let p = project(
            """
            providers:
              broken:
                plugin: echo
                prefx: x
                delay_ms: soon
              missing-var:
                plugin: echo
                prefix: ${NOT_SET_ANYWHERE_X}
              ghost:
                plugin: nope
            retri: {}
            """)
        let file = p.file(".descartes/providers.yaml")
        let check = await cli(["config", "check"], in: p.path)
        #expect(check.status == 78, "\(check)")
        for expected in [
            "\(file):11:1: unknown top-level key 'retri' (did you mean 'retry'?)",
            "\(file):4:5: unknown key 'prefx' for provider 'broken' (did you mean 'prefix'?)",
            "\(file):5:15: key 'delay_ms' of provider 'broken' must be an integer, got string ('soon')",
            "\(file):8:13: key 'prefix' of provider 'missing-var': the variable NOT_SET_ANYWHERE_X is not set",
            "\(file):10:13: provider 'ghost': no plugin 'nope' is installed",
        ] {
            #expect(check.stderr.contains(expected), "missing \(expected) in \(check.stderr)")
        }
        #expect(check.stderr.hasPrefix("5 problems:"))
        // A structural problem stops every command that reads the files.
        let complete = await cli(["complete", "-p", "echo", "x"], in: p.path)
        #expect(complete.status == 78)
        #expect(complete.stderr.contains("\(file):11:1: unknown top-level key 'retri'"))
    }

    @Test func theAuditLogRecordsEveryRequestAndLogSummarizesIt() async throws {
        let state = TempDir()
        let log = state.file("audit/audit.jsonl")
        let p = project(
            """
            providers:
              e1: {plugin: echo}
              e2: {plugin: echo, delay_ms: 200}
            audit:
              enabled: true
              file: \(log)
            """)
        #expect(await cli(["complete", "-p", "e1", "one two"], in: p.path).status == 0)
        #expect(await cli(["complete", "-p", "e1", "--stream", "three"], in: p.path).status == 0)
        let timedOut = await cli(["complete", "-p", "e2", "--timeout", "0.1", "a b c d"], in: p.path)
        #expect(timedOut.status == 75)
        #expect(FileSystem.info(log)!.mode & 0o777 == 0o600)
        let r = await cli(["log"], in: p.path)
        #expect(r.status == 0, "\(r)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        // `log` answers from the ledger beside the JSON-lines export.
        #expect(lines.first == "\(state.file("audit/audit.sqlite3")): 3 entries")
        #expect(lines.contains { $0.contains(" e1 ") && $0.contains(" ok ") && $0.contains("2/2") })
        #expect(lines.contains { $0.contains(" e2 ") && $0.contains("error: timeout") })
        #expect(lines.contains { $0.hasPrefix("e1 ") && $0.split(separator: " ", omittingEmptySubsequences: true).prefix(5) == ["e1", "2", "0", "3", "3"] }, "\(r.stdout)")
        #expect(lines.contains { $0.hasPrefix("e2 ") && $0.split(separator: " ", omittingEmptySubsequences: true).prefix(3) == ["e2", "1", "1"] })
        let json = try JSONValue.parse(await cli(["log", "--json", "-n", "1"], in: p.path).stdout)
        #expect(json["entries"]?.arrayValue?.count == 1)
        #expect(json["entries"]?[0]?["error_kind"] == "timeout")
        #expect(json["totals"]?[0]?["requests"] == 2)
        // Not enabled, no file: says how to enable it.
        let off = await cli(["log"], in: "/", env: ["XDG_STATE_HOME": state.file("none")])
        #expect(off.status == 78)
        #expect(off.stderr.contains("the audit log is not enabled"))
    }

    /// Runs the CLI as an unprivileged user when the tests run as root, so
    /// that DESCARTES_SYSTEM_CONFIG_DIR (honoured for unprivileged
    /// processes only) can point the host's policy at a test directory.
    ///
    /// The executable is a copy in `bin` (the checkout may sit in a
    /// directory only root can enter, as a CI clone in `mktemp -d` does).
    func asOps(_ args: [String], etc: String, home: String, bin: String) async -> ProcResult {
        var env = ["DESCARTES_PLUGIN_PATH": FileSystem.join(FileSystem.directory(of: bin), "plugins"), "HOME": home, "DESCARTES_SYSTEM_CONFIG_DIR": etc, "NO_COLOR": "1", "PATH": "/usr/bin:/bin"]
        env["LD_LIBRARY_PATH"] = Environment.get("LD_LIBRARY_PATH")
        let exe = FileSystem.join(bin, "descartes")
        let argv = geteuid() == 0 ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", exe] : [exe]
        return await Proc.run(argv + args, env: env.compactMapValues { $0 })
    }

    @Test func opsDisableAPluginForTheHostAndSeeItGoneWithTheReason() async throws {
        let dir = TempDir("descartes-policy")
        let etc = dir.file("etc")
        let home = dir.file("home")
        try FileSystem.makeDirectories(etc)
        try FileSystem.makeDirectories(home)
        dir.write("etc/plugins.yaml", "# the host's policy\nrequired: []\n")
        // The unprivileged user must reach the executable and the plugin, so
        // both are copies in the test's directory (the checkout, and the
        // prefix in it, may sit in a directory only root can enter, as a CI
        // clone in `mktemp -d` does); it owns the test's files.
        let bin = dir.file("bin")
        try FileSystem.makeDirectories(bin)
        try FileSystem.makeDirectories(dir.file("plugins"))
        #expect(await Proc.run(["cp", TestEnv.descartes, bin]).status == 0)
        #expect(await Proc.run(["cp", "-L", CCompiler.echoLibrary, dir.file("plugins/libdescartes-echo.so")]).status == 0)
        dir.write("plugins/echo.yaml", try FileSystem.readText(FileSystem.join(TestEnv.root, "manifests/echo.yaml"), limit: 1 << 20))
        if geteuid() == 0 { _ = await Proc.run(["chown", "-R", "65534:65534", dir.path]); chmod(dir.path, 0o755) }

        let before = await asOps(["plugins", "list"], etc: etc, home: home, bin: bin)
        #expect(before.status == 0, "\(before)")
        #expect(before.stdout.split(separator: "\n").contains { $0.hasPrefix("echo ") && $0.contains("available") && $0.contains("enabled") }, "\(before)")

        let disable = await asOps(["plugins", "disable", "echo", "--system"], etc: etc, home: home, bin: bin)
        #expect(disable.status == 0, "\(disable)")
        #expect(disable.stdout.contains("\(etc)/plugins.yaml: added 'echo' to 'disable'"))
        #expect(try FileSystem.readText(FileSystem.join(etc, "plugins.yaml"), limit: 1000) == "# the host's policy\nrequired: []\ndisable:\n  - echo\n")

        let after = await asOps(["plugins", "list"], etc: etc, home: home, bin: bin)
        #expect(after.stdout.split(separator: "\n").contains { $0.hasPrefix("echo ") && $0.contains("disabled") }, "\(after)")
        #expect(after.stdout.contains("disabled by \(etc)/plugins.yaml:4:5 (system policy: disable 'echo')"), "\(after)")
        let use = await asOps(["complete", "-p", "echo", "hi"], etc: etc, home: home, bin: bin)
        #expect(use.status == 69)
        #expect(use.stderr.contains("disabled by \(etc)/plugins.yaml:4:5"))

        // A user cannot undo it; ops can.
        let userEnable = await asOps(["plugins", "enable", "echo"], etc: etc, home: home, bin: bin)
        #expect(userEnable.status == 78)
        #expect(userEnable.stderr.contains("the host's policy keeps it off"))
        let enable = await asOps(["plugins", "enable", "echo", "--system"], etc: etc, home: home, bin: bin)
        #expect(enable.status == 0, "\(enable)")
        #expect(await asOps(["complete", "-p", "echo", "back"], etc: etc, home: home, bin: bin).stdout == "back\n")

        // A required plugin that is missing fails every provider, naming the rule.
        dir.write("etc/plugins.yaml", "required: [openai]\n")
        if geteuid() == 0 { _ = await Proc.run(["chown", "65534:65534", FileSystem.join(etc, "plugins.yaml")]) }
        let required = await asOps(["complete", "-p", "echo", "x"], etc: etc, home: home, bin: bin)
        #expect(required.status == 69, "\(required)")
        #expect(required.stderr.contains("required plugin 'openai' (\(etc)/plugins.yaml:1:12) is not installed"))
        #expect(await asOps(["plugins", "list"], etc: etc, home: home, bin: bin).status == 1)
    }

    @Test(.enabled(if: geteuid() == 0, "root's file checks"))
    func asRootAPluginOthersCouldHaveWrittenIsRefused() async throws {
        chmod(plugins.path, 0o755)
        chmod(plugins.dir.file("echo.yaml"), 0o666)
        let r = await cli(["plugins", "list"])
        #expect(r.stdout.contains("echo.yaml: file is writable by others (mode 666) (refused: the process runs as root)"), "\(r)")
        let use = await cli(["complete", "-p", "echo", "x"])
        #expect(use.status == 69)
    }
}
