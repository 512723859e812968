import Descartes
import Glibc
import Testing
import DescartesSupport

/// Every command, run with a known fake key in every place a key can come
/// from (environment, .env, ${file:...}, a credential helper, --set, the
/// prompt itself, a plugin's log), and all of its output searched for it.
///
/// The fake key has no credential shape (no `sk-` prefix, no `Bearer`), so
/// only the host's knowledge that it is a secret can mask it: shape-based
/// redaction cannot make this test pass by accident.
@Suite(.serialized) struct SecretLeakTests {
    static let marker = "LEAKCHECK"
    static let fake = "fake-\(marker)-7f3a9c2e5b1d"

    let plugins = PluginDir().addEcho()
    let project = TempDir("descartes-leak")

    init() throws {
        plugins.dir.write(
            "keyed.yaml",
            """
            manifest_version: 1
            provider: keyed
            version: 1.0.0
            library: \(CCompiler.echoLibrary)
            factory: echo
            abi: 1
            mode: api
            config:
              api_key: {type: string, required: true, secret: true, env: KEYED_API_KEY}
              prefix: {type: string}
              delay_ms: {type: integer}
            """)
        plugins.dir.write(
            "rulebreaker.yaml",
            "manifest_version: 1\nprovider: rulebreaker\nversion: 0.0.1\nlibrary: libdescartes-rulebreaker.so\nabi: 1\nmode: local\nconfig:\n  breaks: {type: string}\n  api_key: {type: string, secret: true}\n"
        )
        project.write("key.txt", Self.fake + "\n")
        project.write(".env", "LEAK_KEY=\(Self.fake)\n")
        let helper = project.write("helper.sh", "#!/bin/sh\necho '\(Self.fake)'\n", mode: 0o755)
        project.write(
            ".descartes/providers.yaml",
            """
            providers:
              k-file: {plugin: keyed, api_key: "${file:../key.txt}"}
              k-dotenv: {plugin: keyed, api_key: "${LEAK_KEY}"}
              k-helper: {plugin: keyed, api_key_helper: [\(helper)]}
              k-typo: {plugin: keyed, api_key: x1234567, delay_ms: "${file:../key.txt}"}
              rb: {plugin: rulebreaker, breaks: log-secret, api_key: "${LEAK_KEY}"}
            retry:
              max_attempts: 2
            audit:
              enabled: true
              file: \(project.file("audit.jsonl"))
              prompts: true
              replies: true
            """)
    }

    func run(_ args: [String], stdin: String? = nil) async -> ProcResult {
        var env = Environment.current()
        env["NO_COLOR"] = "1"
        env["DESCARTES_PLUGIN_PATH"] = plugins.path
        env["HOME"] = project.file("home")
        env["KEYED_API_KEY"] = Self.fake
        return await Proc.run(["env", "-C", project.path, TestEnv.descartes] + args, env: env, stdin: stdin)
    }

    @Test func noCommandPrintsTheKey() async throws {
        let cc = await CCompiler.compile(
            [FileSystem.join(TestEnv.root, "Tests/Fixtures/plugins/rulebreaker.c")], output: plugins.dir.file("libdescartes-rulebreaker.so"))
        #expect(cc.status == 0, "\(cc)")
        let prompt = "my key is \(Self.fake), keep it"
        let commands: [[String]] = [
            ["--help"], ["--version"], ["plugins", "list"], ["plugins", "list", "--json"], ["--verbose", "plugins", "list"],
            ["plugins", "info", "keyed"], ["plugins", "info", "keyed", "--json"], ["plugins", "verify"], ["plugins", "verify", "--json"],
            ["plugins", "verify", "keyed", "--set", "api_key=\(Self.fake)"], ["plugins", "verify", "--conformance", "keyed"],
            ["plugins", "verify", "--conformance", "keyed", "--json"],
            ["complete", "-p", "keyed", prompt], ["complete", "-p", "keyed", "--stream", prompt], ["complete", "-p", "keyed", "--json", prompt],
            ["complete", "-p", "keyed", "--stream", "--json", prompt], ["--verbose", "complete", "-p", "k-file", prompt],
            ["complete", "-p", "k-dotenv", "--json", prompt], ["complete", "-p", "k-helper", "--stream", prompt],
            ["complete", "-p", "keyed", "--set", "api_key=\(Self.fake)", prompt],
            ["complete", "-p", "keyed", "--set", "delay_ms=300", "--timeout", "0.2", "--json", prompt],
            ["complete", "-p", "keyed", "--set", "delay_ms=300", "--timeout", "0.2", prompt],
            ["complete", "-p", "k-typo", prompt], ["complete", "-p", "k-typo", "--json", prompt],
            ["--verbose", "complete", "-p", "rb", "x"], ["--verbose", "complete", "-p", "rb", "--json", "x"],
            ["config", "show"], ["config", "show", "--json"], ["config", "show", "k-file"], ["config", "show", "k-typo", "--json"],
            ["config", "check"], ["config", "check", "--json"], ["log"], ["log", "--json"], ["log", "-n", "100"],
            ["plugins", "disable", "rulebreaker"], ["plugins", "enable", "rulebreaker"],
            ["complete", "-p", "keyed", "-"],
        ]
        var outputs = 0
        for args in commands {
            let r = await run(args, stdin: args.last == "-" ? prompt : nil)
            #expect(!r.stdout.contains(Self.marker), "stdout of \(args): \(r.stdout)")
            #expect(!r.stderr.contains(Self.marker), "stderr of \(args): \(r.stderr)")
            outputs += r.stdout.count + r.stderr.count
        }
        #expect(outputs > 10_000)

        // Not vacuous: the key reached the plugin and came back, masked.
        let echoed = await run(["complete", "-p", "k-helper", prompt])
        #expect(echoed.stdout == "my key is [REDACTED], keep it\n", "\(echoed)")
        let logged = await run(["--verbose", "complete", "-p", "rb", "x"])
        #expect(logged.stderr.contains("using key [REDACTED]"), "\(logged.stderr)")
        let typo = await run(["complete", "-p", "k-typo", "x"])
        #expect(typo.stderr.contains("key 'delay_ms' of provider 'k-typo' must be an integer, got string\n"), "\(typo.stderr)")
        let warned = await run(["complete", "-p", "keyed", "--set", "api_key=\(Self.fake)", "x"])
        #expect(warned.stderr.contains("warning: --set api_key=... puts a secret on the command line"))
        // Nor in the audit log, which records prompts and replies here.
        let audit = try FileSystem.readText(project.file("audit.jsonl"), limit: 1 << 22)
        #expect(audit.contains("my key is [REDACTED], keep it"))
        #expect(!audit.contains(Self.marker))
    }
}
