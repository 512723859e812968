import Descartes
import Glibc
import Testing
import DescartesSupport

/// `plugins verify` and `health` load each plugin in a helper process
/// (issue 20 item 3, issue 16): a plugin that crashes in its entry point is
/// one failed row naming the signal, and the others are still checked.
@Suite struct KitVerifyTests {
    let plugins = PluginDir().addEcho()
    let work = TempDir("descartes-kit-verify")

    init() async {
        let lib = plugins.dir.file("libdescartes-crashentry.so")
        let cc = await CCompiler.compile(
            [FileSystem.join(TestEnv.root, "Tests/Fixtures/plugins/rulebreaker.c")], output: lib, flags: ["-DRULEBREAKER_CRASH_IN_ENTRY"])
        #expect(cc.status == 0, "\(cc)")
        plugins.dir.write(
            "crashentry.yaml",
            "manifest_version: 1\nprovider: crashentry\nversion: 0.0.1\nlibrary: libdescartes-crashentry.so\nfactory: rulebreaker\nabi: 1\nmode: local\n")
        // A manifest discovery refuses (not YAML the manifest reader takes).
        plugins.dir.write("brokenmf.yaml", "manifest_version: 1\nprovider: brokenmf\nversion: [not, a, string\n")
    }

    func cli(_ args: [String]) async -> ProcResult {
        await Proc.descartes(
            args, env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": work.file("home"), "XDG_STATE_HOME": work.file("state")],
            timeout: .seconds(120))
    }

    @Test func aPluginCrashingInItsEntryPointIsAFailedRowAndTheOthersAreVerified() async throws {
        let r = await cli(["plugins", "verify", "--json", "crashentry", "echo"])
        #expect(r.status == 1, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        let rows = doc["results"]?.arrayValue ?? []
        let crash = rows.first { $0["name"]?.stringValue == "crashentry" }
        let echo = rows.first { $0["name"]?.stringValue == "echo" }
        #expect(crash?["ok"] == .bool(false), "\(r.stdout)")
        #expect(crash?["error"]?["kind"]?.stringValue == "process", "\(r.stdout)")
        #expect(crash?["error"]?["message"]?.stringValue?.contains("SIGSEGV") == true, "\(r.stdout)")
        #expect(echo?["ok"] == .bool(true), "\(r.stdout)")
        #expect(echo?["library"]?.stringValue == "echo", "\(r.stdout)")
        // The table, for every available plugin.
        let all = await cli(["plugins", "verify"])
        #expect(all.status == 1, "\(all)")
        #expect(all.stdout.contains("SIGSEGV") && all.stdout.contains("echo"), "\(all)")
        // --in-process is for a debugger: the crash is the command's own.
        let inProcess = await cli(["plugins", "verify", "--in-process", "crashentry", "echo"])
        #expect(inProcess.signal == SIGSEGV || inProcess.status == 128 + SIGSEGV, "\(inProcess)")
    }

    @Test func healthSurvivesAPluginCrashingAtLoad() async throws {
        let r = await cli(["health", "--json"])
        #expect(r.status == 1, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        let rows = doc["results"]?.arrayValue ?? []
        let crash = rows.first { $0["name"]?.stringValue == "crashentry" }
        #expect(crash?["healthy"] == .bool(false), "\(r.stdout)")
        #expect(crash?["error"]?["message"]?.stringValue?.contains("SIGSEGV") == true, "\(r.stdout)")
        #expect(rows.first { $0["name"]?.stringValue == "echo" }?["healthy"] == .bool(true), "\(r.stdout)")
    }

    @Test func verifyInfoAndConformanceOfARefusedManifestSayWhy() async {
        let list = await cli(["plugins", "list"])
        // The reason `plugins list` gives, by its file:line:column.
        let reason = list.stdout.split(separator: "\n").first { $0.hasPrefix("  /") && $0.contains("brokenmf.yaml:") }.map { String($0).trimmingCharacters() }
        #expect(reason != nil, "\(list)")
        guard let reason else { return }
        for args in [["plugins", "verify", "brokenmf"], ["plugins", "info", "brokenmf"], ["plugins", "verify", "--conformance", "brokenmf"]] {
            let r = await cli(args)
            #expect(r.status != 0, "\(args): \(r)")
            #expect((r.stdout + r.stderr).contains(reason), "\(args) should say '\(reason)': \(r)")
            #expect(!(r.stdout + r.stderr).contains("unknown provider"), "\(args): \(r)")
        }
    }
}
