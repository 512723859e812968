import Descartes
import Glibc
import Testing
import DescartesSupport

/// Mutant plugins, each failed by the conformance suite with a message that
/// names its fault (issue 20): what a request carries (the HTTP C example,
/// Plugins/OpenAIC/openai-c.c, built with its fault switches, one fault per
/// OPENAI_C_FAULT value), a start function that blocks (rulebreaker.c),
/// and `invalid_config` cases refused for what they change.
@Suite struct KitConformanceTests {
    let plugins = PluginDir()

    init() async throws {
        let mutant = await CCompiler.compile(
            [FileSystem.join(TestEnv.root, "Plugins/OpenAIC/openai-c.c")], output: plugins.dir.file("libdescartes-openai-c.so"),
            flags: ["-DOPENAI_C_FAULTS", "-Wl,--no-as-needed", "-lcurl"])
        #expect(mutant.status == 0, "\(mutant)")
        plugins.dir.write("openai-c.yaml", try FileSystem.readText(FileSystem.join(TestEnv.root, "Plugins/OpenAIC/openai-c.yaml"), limit: 1 << 20))
        let rb = await CCompiler.compile(
            [FileSystem.join(TestEnv.root, "Tests/Fixtures/plugins/rulebreaker.c")], output: plugins.dir.file("libdescartes-rulebreaker.so"))
        #expect(rb.status == 0, "\(rb)")
        plugins.dir.write(
            "rulebreaker.yaml",
            "manifest_version: 1\nprovider: rulebreaker\nversion: 0.0.1\nlibrary: libdescartes-rulebreaker.so\nabi: 1\nmode: local\nconfig:\n  breaks: {type: string}\n  api_key: {type: string, secret: true}\n")
    }

    func conformance(_ name: String, spec: String, _ extra: [String] = [], pluginPath: Bool = true, fault: String? = nil) async -> ProcResult {
        var env = ["HOME": "/nonexistent"]
        if pluginPath { env["DESCARTES_PLUGIN_PATH"] = plugins.path }
        if let fault { env["OPENAI_C_FAULT"] = fault }
        return await Proc.descartes(
            ["plugins", "verify", "--conformance", name, "--spec", FileSystem.join(TestEnv.root, spec)] + extra, env: env, timeout: .seconds(180))
    }

    /// The row of `check`: its outcome and detail.
    func row(_ r: ProcResult, _ check: String) -> (outcome: String, detail: String)? { Self.row(r, check) }

    static func row(_ r: ProcResult, _ check: String) -> (outcome: String, detail: String)? {
        for line in r.stdout.split(separator: "\n") where line.hasPrefix("  ") {
            let body = line.dropFirst(2)
            let outcome = String(body.prefix(4)).trimmingCharacters()
            let rest = body.dropFirst(6)
            if String(rest.prefix(20)).trimmingCharacters() == check { return (outcome, String(rest.dropFirst(20))) }
        }
        return nil
    }

    @Test func theCorrectMutantPassesItsRequestChecks() async {
        let r = await conformance("openai-c", spec: "Tests/Fixtures/conformance/mutant.yaml")
        #expect(r.status == 0, "\(r)")
        #expect(row(r, "request")?.outcome == "ok", "\(r.stdout)")
        #expect(row(r, "request")?.detail.contains("headers authorization") == true, "\(r.stdout)")
    }

    @Test(arguments: [
        ("no-key", "header 'authorization' missing"),
        ("no-system", "the system prompt ('Conformance system prompt 5e1d: answer briefly.', sent with the request) is not in the body: it was dropped"),
        ("no-max-tokens", "max_tokens (173, sent with the request) is nowhere in the body"),
    ])
    func aRequestFaultIsNamed(_ fault: String, _ message: String) async {
        let r = await conformance("openai-c", spec: "Tests/Fixtures/conformance/mutant.yaml", fault: fault)
        #expect(r.status == 1, "\(fault): \(r)")
        let request = row(r, "request")
        #expect(request?.outcome == "FAIL", "\(fault): \(r.stdout)")
        #expect(request?.detail.contains(message) == true, "\(fault): \(r.stdout)")
        // The key is never printed, whatever the fault.
        #expect(!r.stdout.contains("sk-mutant-conformance-0123456789abcdef") && !r.stderr.contains("sk-mutant-conformance-0123456789abcdef"))
        // The rest of the run is not disturbed.
        #expect(row(r, "stream")?.outcome == "ok", "\(fault): \(r.stdout)")
    }

    /// A stream function that does the whole request before returning is
    /// named at once (the third late call), and the suite goes on: a
    /// plugin that blocked once made it silent for minutes and then blamed
    /// concurrency.
    @Test func aBlockingStartIsNamedAtOnceAndTheSuiteGoesOn() async {
        let r = await conformance("rulebreaker", spec: "Tests/Fixtures/conformance/rulebreaker.yaml", ["--set", "breaks=blocking-start"])
        #expect(r.status == 1, "\(r)")
        let start = row(r, "start")
        #expect(start?.outcome == "FAIL", "\(r.stdout)")
        #expect(start?.detail.hasPrefix("the plugin's stream did not return within 200 ms (4 x start_limit_ms 50 ms) 3 times") == true, "\(r.stdout)")
        // Printed when it happened, before the checks after it.
        let lines = r.stdout.split(separator: "\n")
        let at = lines.firstIndex { $0.contains(" start ") && $0.contains("FAIL") }
        let shutdown = lines.firstIndex { $0.contains(" shutdown ") }
        #expect(at != nil && shutdown != nil && at! < shutdown!, "\(r.stdout)")
        #expect(row(r, "start times")?.detail.contains("stream: ") == true, "\(r.stdout)")
        #expect(row(r, "concurrency")?.outcome == "ok", "not blamed on concurrency: \(r.stdout)")
        // Progress on stderr.
        #expect(r.stderr.contains("descartes: conformance: cancel ("), "\(r.stderr)")
    }

    /// An `invalid_config` case is refused for the key it changes, with the
    /// refusal quoted whole: `${server}` is the text scenario's server there
    /// (it was empty, so every case was refused on `endpoint`).
    @Test func invalidConfigCasesAreRefusedForWhatTheyChange() async {
        let r = await conformance("bedrock", spec: "conformance/bedrock.yaml", pluginPath: false)
        #expect(r.status == 0, "\(r)")
        let config = row(r, "config")?.detail ?? ""
        #expect(config.contains("'not a region' refused:") && config.contains("key 'region': 'us-east-1/../x' is not an AWS region"), "\(r.stdout)")
        #expect(config.contains("key 'secret_access_key': missing while 'access_key_id' is set"), "\(r.stdout)")
        #expect(!config.contains("key 'endpoint'"), "\(r.stdout)")
    }
}

/// The suite runs the plugin in a child process (issue 20 item 3): the HTTP
/// C example built with its fault switches crashes in its entry point or
/// in a stream, sends two terminal events or ignores cancel, and each is a
/// failed row naming the fault, with exit 1 (not 139), the other rows
/// still there, within a minute. `--in-process` runs it in the CLI's own
/// process, as before.
@Suite struct ConformanceIsolationTests {
    let plugins = PluginDir()
    static let spec = "Tests/Fixtures/conformance/openai-c-crashes.yaml"
    static let key = "sk-crashes-conformance-0123456789abcdef"

    init() async throws {
        let mutant = await CCompiler.compile(
            [FileSystem.join(TestEnv.root, "Plugins/OpenAIC/openai-c.c")], output: plugins.dir.file("libdescartes-openai-c.so"),
            flags: ["-DOPENAI_C_FAULTS", "-Wl,--no-as-needed", "-lcurl"])
        #expect(mutant.status == 0, "\(mutant)")
        plugins.dir.write("openai-c.yaml", try FileSystem.readText(FileSystem.join(TestEnv.root, "Plugins/OpenAIC/openai-c.yaml"), limit: 1 << 20))
    }

    func conformance(fault: String?, _ extra: [String] = []) async -> ProcResult {
        var env = ["HOME": "/nonexistent", "DESCARTES_PLUGIN_PATH": plugins.path]
        if let fault { env["OPENAI_C_FAULT"] = fault }
        return await Proc.descartes(
            ["plugins", "verify", "--conformance", "openai-c", "--spec", FileSystem.join(TestEnv.root, Self.spec)] + extra, env: env, timeout: .seconds(120))
    }

    func row(_ r: ProcResult, _ check: String) -> (outcome: String, detail: String)? { KitConformanceTests.row(r, check) }

    @Test(arguments: [
        ("crash-entry", "abi", "the plugin crashed (SIGSEGV) during 'abi' (loading the library and calling its entry point), in the suite's child process; no check can run without the library"),
        ("crash-stream", "stream", "the plugin crashed (SIGSEGV) during 'stream', in the suite's child process; the suite goes on in a new child process"),
        ("double-terminal", "events", "stream: 2 terminal events"),
        ("ignore-cancel", "cancel", "after cancel (limit 1 s)"),
    ])
    func aFaultIsAFailedRowNamingIt(_ fault: String, _ check: String, _ message: String) async {
        let r = await conformance(fault: fault)
        #expect(r.status == 1 && r.signal == nil, "\(fault): \(r)")
        let failed = row(r, check)
        #expect(failed?.outcome == "FAIL", "\(fault): \(r.stdout)")
        #expect(failed?.detail.contains(message) == true, "\(fault): \(r.stdout)")
        #expect(!r.stdout.contains(Self.key) && !r.stderr.contains(Self.key), "\(fault)")
        expectWithin(r.duration, .seconds(60), fault)
        if fault == "crash-entry" {
            // Nothing can run without the library: one row.
            #expect(r.stdout.contains("0 passed, 1 failed, 0 skipped"), "\(r.stdout)")
            return
        }
        // The rows before and after the fault are there.
        for ok in ["abi", "config", "initialize", "complete", "errors"] + (fault == "crash-stream" ? [] : ["request"]) {
            #expect(row(r, ok)?.outcome == "ok", "\(fault): \(ok): \(r.stdout)")
        }
        #expect(row(r, "secrets") != nil && row(r, "shutdown") != nil, "\(fault): \(r.stdout)")
    }

    /// After a crash the suite goes on in a new child process: every check
    /// that streams fails naming the crash, the others pass, and --json
    /// carries the same rows.
    @Test func aCrashingStreamFailsEveryCheckThatStreamsAndNoOther() async throws {
        let r = await conformance(fault: "crash-stream", ["--json"])
        #expect(r.status == 1, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        var rows: [String: (String, String)] = [:]
        for c in doc["checks"]?.arrayValue ?? [] {
            rows[c["check"]?.stringValue ?? "?"] = (c["outcome"]?.stringValue ?? "?", c["detail"]?.stringValue ?? "")
        }
        for check in ["concurrency", "cancel", "deadlines", "shutdown"] {
            #expect(rows[check]?.0 == "FAIL", "\(check): \(r.stdout)")
            #expect(rows[check]?.1.hasPrefix("the plugin crashed (SIGSEGV) during '\(check)', in the suite's child process") == true, "\(check): \(r.stdout)")
        }
        #expect(rows["complete"]?.0 == "ok" && rows["errors"]?.0 == "ok", "\(r.stdout)")
        // The requests of complete and stream died with the first child.
        #expect(rows["request"]?.0 == "skip" && rows["request"]?.1.hasPrefix("not checked: the suite's child process died during 'complete' or 'stream'") == true, "\(r.stdout)")
        // Every call was made by a child that died: not checked, and said so.
        #expect(rows["events"]?.0 == "skip" && rows["events"]?.1.contains("made in a suite's child process that died") == true, "\(r.stdout)")
        #expect(doc["failed"] == 5, "\(r.stdout)")
    }

    /// --in-process: the suite in the CLI's own process, as before (for a
    /// debugger or a sanitizer): the clean example passes, and a crash is
    /// the command's own.
    @Test func inProcessRunsTheSuiteInTheCLIsOwnProcess() async {
        let clean = await conformance(fault: nil, ["--in-process"])
        #expect(clean.status == 0, "\(clean)")
        #expect(clean.stdout.contains("; in this process (--in-process)"), "\(clean.stdout)")
        #expect(row(clean, "cancel")?.outcome == "ok" && row(clean, "events")?.outcome == "ok", "\(clean.stdout)")
        let crash = await conformance(fault: "crash-entry", ["--in-process"])
        #expect(crash.signal == SIGSEGV || crash.status == 128 + SIGSEGV, "\(crash)")
    }
}
