import Descartes
import DescartesSupport
import Glibc
import Testing

/// Secrets at rest when the crash is not in `descartes` itself (issue 16,
/// rows of `docs/fault-matrix.md` "Host faults"): the benchmark
/// (`descartes-bench`) and an isolated plugin's helper
/// (`descartes-plugin-host`) crashing with registers pointing at the key,
/// core dumps enabled at the OS level (`ulimit -c unlimited`; the kernel's
/// `core_pattern` is whatever this machine has, read below).
extension HostFaultTests {
    /// Where a core file of a process running in `cwd` goes under this
    /// machine's `core_pattern`: `cwd` for a relative pattern (`core`,
    /// `core.%p`), the pattern's directory for an absolute one, nil when the
    /// kernel pipes cores to a program (systemd-coredump, apport: nothing
    /// this test can read without that program's tools).
    static func coreDirectory(cwd: String) -> String? {
        let pattern = ((try? FileSystem.readText("/proc/sys/kernel/core_pattern", limit: 4096)) ?? "core")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if pattern.hasPrefix("|") { return nil }
        if pattern.hasPrefix("/") { return FileSystem.directory(of: pattern) }
        return cwd
    }

    /// The files in `dir` (written by the kernel from a core pattern) that hold `needle`.
    static func filesHolding(_ needle: String, in dir: String) -> [String] {
        ((try? FileSystem.list(dir)) ?? []).map { FileSystem.join(dir, $0) }.filter { Self.holds($0, needle) }
    }

    /// A plugin crashes in `descartes-bench` (in process) or in the helper
    /// of `descartes complete --isolate`, two registers pointing at the
    /// key, the core limit raised to unlimited before the start. Protected
    /// (the default): no crash report and no core file anywhere the
    /// core pattern writes. The control (`DESCARTES_ALLOW_CORE_DUMPS=1` in
    /// the crashing process) shows the test can see what it looks for.
    ///
    /// For the helper, the CLI itself runs with the switch (so its own
    /// hard limit of 0 is not what protects the helper: the helper starts
    /// with an unlimited core limit) and a wrapper named by
    /// `DESCARTES_PLUGIN_HOST` moves into the work directory, asks for the
    /// Swift crash report (`SWIFT_BACKTRACE=enable=yes`) and, protected,
    /// drops the switch before it starts the real helper: what keeps the
    /// key out of the core is the helper's own `SecretsAtRest.protect`.
    @Test(arguments: [("bench", false), ("bench", true), ("helper", false), ("helper", true)])
    func aCrashInTheBenchOrAnIsolatedHelperLeavesTheKeyInNoCoreFile(_ program: String, _ allowed: Bool) async throws {
        let work = TempDir("descartes-core-\(program)")
        let token = "sk-at-rest-\(program)-\(allowed ? "control" : "kept")-\(getpid())-never-shown"
        work.write("providers.yaml", "providers:\n  crash: {plugin: blocker, block: crash-holding-key, token: \"${BLOCKER_TOKEN}\"}\n")
        var e = Environment.current()
        e["DESCARTES_PLUGIN_PATH"] = dir.path
        e["HOME"] = "/nonexistent"
        e["NO_COLOR"] = "1"
        e["BLOCKER_TOKEN"] = token
        e[SecretsAtRest.allowVariable] = nil
        var argv: [String]
        if program == "bench" {
            if allowed { e[SecretsAtRest.allowVariable] = "1" }
            argv = [CommandLineTests.bench, "--config", work.file("providers.yaml"), "-p", "crash", "-n", "1", "--warmup", "0", "--timeout", "20"]
        } else {
            e[SecretsAtRest.allowVariable] = "1"
            let helper = FileSystem.join(TestEnv.binDir, "descartes-plugin-host")
            e["DESCARTES_PLUGIN_HOST"] = work.write(
                "helper.sh",
                """
                #!/bin/sh
                cd '\(work.path)' || exit 99
                export SWIFT_BACKTRACE=enable=yes
                \(allowed ? "" : "unset \(SecretsAtRest.allowVariable)")
                exec '\(helper)' "$@"

                """, mode: 0o755)
            argv = [TestEnv.descartes, "--config", work.file("providers.yaml"), "complete", "-p", "crash", "--isolate", "--timeout", "20", "hi"]
        }
        // Dumps enabled at the OS level for the test, as far as the hard limit allows.
        let script = "ulimit -S -c unlimited 2>/dev/null || ulimit -S -c \"$(ulimit -H -c)\"; cd \"$1\" || exit 99; shift; exec \"$@\""
        let r = await Proc.run(["/bin/sh", "-c", script, "sh", work.path] + argv, env: e, timeout: .seconds(90))
        if program == "bench" {
            #expect(r.signal == SIGSEGV, "\(r)")
        } else {
            // The CLI survives its helper and names the signal.
            #expect(r.signal == nil && r.status != 0, "\(r)")
            #expect(r.stderr.contains("SIGSEGV"), "\(r)")
        }
        let shown = String(token.prefix(16))
        let hex = token.utf8.prefix(16).map { String($0, radix: 16) }.joined(separator: " ")
        let coreDir = Self.coreDirectory(cwd: work.path)
        let cores = coreDir.map { Self.filesHolding(token, in: $0) } ?? []
        if !allowed {
            #expect(!r.stderr.contains(shown) && !r.stderr.contains(hex), "the crash output holds the key: \(r.stderr)")
            #expect(!r.stderr.contains("Program crashed"), "\(r.stderr)")
            #expect(cores.isEmpty, "core files hold the key: \(cores)")
            #expect(Self.cores(in: work.path).isEmpty, "core files were written: \(Self.cores(in: work.path))")
        } else {
            if r.stderr.contains("Program crashed") {
                #expect(r.stderr.contains(shown), "the control's crash report shows no key: \(r.stderr)")
            }
            var limit = rlimit()
            getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit)
            if coreDir != nil && limit.rlim_max > 1 << 20 {
                #expect(!cores.isEmpty, "the control wrote no core file holding the key in \(coreDir!)")
            }
        }
        for c in cores { unlink(c) }
    }
}

/// The commands H21 left out: `batch` and `plugins verify` against every hang.
extension HostFaultTests {
    /// `descartes batch --timeout 3` against each hanging plugin function,
    /// in process and `isolation: process`, and against Ollama and
    /// llama.cpp talking to a loopback server that never answers or never
    /// accepts; `descartes plugins verify --timeout 3` against a plugin
    /// whose entry point or create hangs (verify loads and creates; it
    /// calls nothing else), with the echo plugin verified beside it. Before,
    /// `verify` took no `--timeout` (a usage error) and waited 30 s for each
    /// hanging plugin. Bound: 10 s (alone they take about 3 s; the full
    /// suite on two cores makes a CLI's start late).
    @Test func neitherBatchNorVerifyOutlivesItsTimeout() async throws {
        let d = PluginDir().addEcho().addManifest("ollama").addManifest("llamacpp")
        d.dir.write("blocker.yaml", Blocker.manifest())
        let silent = DeafListener(full: false)
        let blackhole = DeafListener(full: true)
        var yaml = "providers:\n"
        let blocks = ["create", "initialize", "initialize-silent", "start", "shutdown"]
        for block in blocks {
            yaml += "  b-\(block): {plugin: blocker, block: \(block)}\n"
            yaml += "  b-\(block)-iso: {plugin: blocker, block: \(block), isolation: process}\n"
        }
        var servers: [String] = []
        for (server, port) in [("silent", silent.port), ("blackhole", blackhole.port)] {
            for plugin in ["ollama", "llamacpp"] {
                yaml += "  \(plugin)-\(server): {plugin: \(plugin), endpoint: \"http://127.0.0.1:\(port)\", model: m}\n"
                servers.append("\(plugin)-\(server)")
            }
        }
        let config = d.dir.write("providers.yaml", yaml)
        let requests = d.dir.write("requests.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n")
        var runs: [(what: String, argv: [String], env: [String: String])] = []
        for p in blocks.flatMap({ ["b-\($0)", "b-\($0)-iso"] }) + servers {
            runs.append((p, [TestEnv.descartes, "--config", config, "batch", "-p", p, "--timeout", "3", "-q", requests], [:]))
        }
        // verify creates from the manifest's defaults: here, a create that hangs.
        let v = PluginDir().addEcho()
        v.dir.write("blocker.yaml", Blocker.manifest().replacingOccurrences(of: "block: {type: string}", with: "block: {type: string, default: create}"))
        let verifyPath = ["DESCARTES_PLUGIN_PATH": v.path]
        runs.append(("verify create", [TestEnv.descartes, "plugins", "verify", "--timeout", "3", "blocker", "echo"], verifyPath))
        runs.append(("verify entry", [TestEnv.descartes, "plugins", "verify", "--timeout", "3", "blocker", "echo"], verifyPath.merging(["BLOCKER_BLOCK_ENTRY": "1"]) { $1 }))
        runs.append(("verify all", [TestEnv.descartes, "plugins", "verify", "--json", "--timeout", "3"], verifyPath))
        let results = await Self.runFourAtATime(runs, pluginPath: d.path)
        #expect(results.count == runs.count)
        for (what, argv, r) in results {
            let shown = argv.dropFirst().joined(separator: " ")
            expectWithin(r.duration, .seconds(10 * Sanitizer.timeScale), "\(shown): \(r)")
            #expect(r.status != 64, "\(shown): a usage error: \(r)")
            switch what {
            case "verify create", "verify entry":
                // The hanging plugin is a failed row naming its deadline; echo is still verified.
                // verify runs each plugin in a helper, which loads the library and creates the
                // backend in one step: a hanging entry point is reported as that step's deadline.
                #expect(r.status == 1, "\(shown): \(r)")
                #expect(r.stdout.contains("blocker: timeout: isolation: the plugin's create (loading "), "\(shown): \(r)")
                #expect(r.stdout.contains("did not return within 3 s; its helper process was killed"), "\(shown): \(r)")
                #expect(r.stdout.contains("echo") && r.stdout.contains("1 ok, 1 failed"), "\(shown): \(r)")
            case "verify all":
                #expect(r.status == 1, "\(shown): \(r)")
                let doc = try JSONValue.parse(r.stdout)
                let rows = doc["results"]?.arrayValue ?? []
                let blocker = rows.first { $0["name"]?.stringValue == "blocker" }
                #expect(blocker?["ok"] == .bool(false) && blocker?["error"]?["kind"]?.stringValue == "timeout", "\(r.stdout)")
                #expect(rows.contains { $0["name"]?.stringValue == "echo" && $0["ok"] == .bool(true) }, "\(r.stdout)")
            case "b-create", "b-create-iso":
                // The backend is created before any request runs: the command fails at once, naming create.
                #expect(r.status == 75 && r.stderr.contains("create") && r.stderr.contains("did not return within 3 s"), "\(shown): \(r)")
            default:
                // One request: its line of output, an error where the plugin or server cannot answer.
                #expect(r.stdout.split(separator: "\n").count == 1, "\(shown): \(r)")
                let hangs = ["b-initialize", "b-initialize-silent", "b-start"].contains(what.replacingOccurrences(of: "-iso", with: ""))
                if hangs || servers.contains(what) {
                    #expect(r.status != 0 && r.stdout.contains("\"kind\":\"timeout\""), "\(shown): \(r)")
                }
            }
        }
        _ = (silent, blackhole)
    }
}
