import Descartes
import Testing
import DescartesSupport

/// The conformance suite, run as plugin authors run it: `descartes plugins
/// verify --conformance NAME`. Every plugin in the tree passes; a plugin
/// that breaks the ABI's rules fails the checks that cover them.
@Suite struct ConformanceTests {
    let plugins = PluginDir().addEcho().addScripted()

    func conformance(_ name: String, spec: String?, extra: [String] = []) async -> ProcResult {
        var args = ["plugins", "verify", "--conformance", name] + extra
        if let spec { args += ["--spec", spec] }
        return await Proc.descartes(args, env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"], timeout: .seconds(180))
    }

    func checks(_ r: ProcResult) -> [String: (outcome: String, detail: String)] {
        var out: [String: (String, String)] = [:]
        for line in r.stdout.split(separator: "\n") where line.hasPrefix("  ") {
            let parts = line.dropFirst(2).split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            guard parts.count == 2 else { continue }
            let rest = parts[1].drop { $0 == " " }
            // The check name is padded to 20 columns.
            let name = String(rest.prefix(20)).trimmingCharacters()
            out[name] = (String(parts[0]), String(rest.dropFirst(20)))
        }
        return out
    }

    @Test func theCExamplePassesEveryCheck() async throws {
        let r = await conformance("echo", spec: FileSystem.join(TestEnv.root, "conformance/echo.yaml"))
        #expect(r.status == 0, "\(r)")
        let c = checks(r)
        for name in ["abi", "config", "initialize", "health_check", "complete", "stream", "optional operations", "concurrency", "cancel", "deadlines", "shutdown", "events"] {
            #expect(c[name]?.outcome == "ok", "\(name): \(c[name].map { "\($0)" } ?? "missing")\n\(r.stdout)")
        }
        #expect(c["config"]?.detail.contains("'delay_ms out of range' refused") == true)
        #expect(c["cancel"]?.detail.hasPrefix("mid-stream: ERROR cancelled") == true)
        #expect(c["deadlines"]?.detail.hasPrefix("total 1 s: timeout after") == true)
        #expect(c["shutdown"]?.detail.hasPrefix("with 4 streams in flight") == true)
        #expect(r.stdout.contains(", 0 failed,"))

        let json = try JSONValue.parse(await conformance("echo", spec: FileSystem.join(TestEnv.root, "conformance/echo.yaml"), extra: ["--json"]).stdout)
        #expect(json["failed"] == 0)
        #expect((json["checks"]?.arrayValue?.count ?? 0) >= 13)
    }

    @Test func theScriptedFixturePassesWithItsSpec() async throws {
        let r = await conformance("scripted", spec: FileSystem.join(TestEnv.root, "Tests/Fixtures/conformance/scripted.yaml"))
        #expect(r.status == 0, "\(r)")
        let c = checks(r)
        #expect(c["errors"]?.outcome == "ok", "\(r.stdout)")
        #expect(c["errors"]?.detail == "'rate limited' -> rate_limited (429); 'bad key' -> authentication")
        #expect(c["config"]?.detail.contains("'a greeting the plugin refuses' refused") == true, "\(r.stdout)")
        #expect(c["config"]?.detail.contains("'a wrong type the manifest refuses' refused by the manifest") == true, "\(r.stdout)")
        #expect(c["deadlines"]?.outcome == "skip")
        #expect(c["deadlines"]?.detail.hasPrefix("skipped by the spec: a test fixture") == true)
        // The token is secret in the manifest: the suite looked for it everywhere.
        #expect(c["secrets"]?.outcome == "ok", "\(r.stdout)")
        #expect(!r.stdout.contains("conformance-secret-token"))
    }

    @Test func aPluginBreakingTheRulesFails() async throws {
        let lib = plugins.dir.file("libdescartes-rulebreaker.so")
        let cc = await CCompiler.compile([FileSystem.join(TestEnv.root, "Tests/Fixtures/plugins/rulebreaker.c")], output: lib)
        #expect(cc.status == 0, "\(cc)")
        plugins.dir.write("rulebreaker.yaml", """
            manifest_version: 1
            provider: rulebreaker
            version: 0.0.1
            library: libdescartes-rulebreaker.so
            abi: 1
            mode: local
            config:
              breaks: {type: string}
              api_key: {type: string, secret: true}
            """)
        let r = await conformance("rulebreaker", spec: FileSystem.join(TestEnv.root, "Tests/Fixtures/conformance/rulebreaker.yaml"))
        #expect(r.status == 1, "\(r)")
        let c = checks(r)
        #expect(c["complete"]?.outcome == "ok", "\(r.stdout)")
        // A text event and a second RESULT after the terminal event.
        #expect(c["events"]?.outcome == "FAIL", "\(r.stdout)")
        #expect(c["events"]?.detail.contains("2 terminal events") == true, "\(r.stdout)")
        #expect(c["events"]?.detail.contains("events after the terminal one") == true, "\(r.stdout)")
        // Ignoring cancellation: the terminal event comes seconds late.
        #expect(c["cancel"]?.outcome == "FAIL", "\(r.stdout)")
        #expect(c["cancel"]?.detail.contains("after cancel (limit 1 s)") == true, "\(r.stdout)")
        // Its streams keep shutdown waiting past the limit.
        #expect(c["shutdown"]?.outcome == "FAIL", "\(r.stdout)")
        // Its key in a log record.
        #expect(c["secrets"]?.outcome == "FAIL", "\(r.stdout)")
        #expect(c["secrets"]?.detail == "a secret config value appears in a log record", "\(r.stdout)")
        #expect(!r.stdout.contains("sk-rulebreaker-secret"))
        #expect(c["health_check"]?.outcome == "skip")
    }

    @Test func specProblemsAreAllReportedWithPositions() async {
        let spec = FileSystem.join(TestEnv.root, "Tests/Fixtures/conformance/broken-spec.yaml")
        let r = await conformance("scripted", spec: spec)
        #expect(r.status == 78, "\(r)")
        for expected in [
            "\(spec):3:3: unknown scenario 'txt' (did you mean 'text'?)",
            "\(spec):5:7: an error scenario says which error it expects",
            "\(spec):7:23: a route is \"METHOD /path\"",
            "\(spec):8:20: unknown error kind 'bogus'",
            "\(spec):9:14: 'concurrency' is between 1 and 256",
            "\(spec):10:8: 'abi' cannot be skipped",
        ] {
            #expect(r.stderr.contains(expected), "missing \(expected) in \(r.stderr)")
        }
    }

    @Test func withoutASpecTheBuiltInCheckRuns() async {
        let r = await conformance("echo", spec: nil)
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.contains("spec: built-in"))
        #expect(checks(r)["cancel"]?.outcome == "skip")
        let unknown = await conformance("nope", spec: nil)
        #expect(unknown.status == 78)
    }
}

/// Every plugin `make install` installs passes the conformance suite with the
/// spec installed beside it, run by the installed CLI as a user would.
@Suite struct InstalledPluginsConformanceTests {
    /// The provider ids of the manifests in the test prefix.
    static let installed: [String] = {
        guard let prefix = TestEnv.prefix else { return [] }
        let dir = FileSystem.join(prefix, "lib/descartes/plugins")
        let names = (try? FileSystem.list(dir)) ?? []
        return names.filter { $0.hasSuffix(".yaml") }.compactMap { try? PluginManifest.load(path: FileSystem.join(dir, $0)).provider }
    }()

    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"), arguments: installed)
    func passes(_ provider: String) async throws {
        let prefix = try #require(TestEnv.prefix)
        let r = await Proc.run(
            ["\(prefix)/bin/descartes", "plugins", "verify", "--conformance", provider],
            env: ["HOME": "/nonexistent", "NO_COLOR": "1", "PATH": "/usr/bin:/bin"], timeout: .seconds(300))
        #expect(r.status == 0, "\(provider):\n\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("spec: \(prefix)/share/descartes/conformance/"), "the installed spec is used: \(r.stdout)")
        #expect(r.stdout.contains(" 0 failed"))
    }

    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func everyInstalledPluginHasASpec() throws {
        let prefix = try #require(TestEnv.prefix)
        #expect(Self.installed.contains("echo"))
        for provider in Self.installed {
            let m = try PluginManifest.load(path: "\(prefix)/lib/descartes/plugins/\(provider).yaml")
            let byProvider = "\(prefix)/share/descartes/conformance/\(provider).yaml"
            let byFactory = "\(prefix)/share/descartes/conformance/\(m.factory).yaml"
            #expect(FileSystem.exists(byProvider) || FileSystem.exists(byFactory), "no conformance spec for \(provider) (conformance/\(provider).yaml or conformance/\(m.factory).yaml)")
        }
    }
}
