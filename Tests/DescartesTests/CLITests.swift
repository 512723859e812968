import Descartes
import Testing
import DescartesSupport

/// The `descartes` executable, run as a user runs it: output and exit codes.
@Suite struct CLITests {
    let plugins = PluginDir().addEcho()

    func cli(_ args: [String], env: [String: String] = [:], stdin: String? = nil) async -> ProcResult {
        var e = env
        if e["DESCARTES_PLUGIN_PATH"] == nil { e["DESCARTES_PLUGIN_PATH"] = plugins.path }
        e["HOME"] = e["HOME"] ?? "/nonexistent"
        return await Proc.descartes(args, env: e, stdin: stdin)
    }

    @Test func versionAndHelp() async {
        let v = await cli(["--version"])
        #expect(v.status == 0)
        #expect(v.stdout == "descartes \(descartesVersion) (plugin ABI 1)\n")
        let h = await cli(["--help"])
        #expect(h.status == 0)
        #expect(h.stdout.contains("plugins list"))
        for command in [["plugins", "list"], ["plugins", "info"], ["plugins", "verify"], ["complete"], ["plugins"]] {
            let r = await cli(command + ["--help"])
            #expect(r.status == 0, "\(command)")
            #expect(r.stdout.hasPrefix("Usage: descartes \(command.joined(separator: " "))"), "\(command): \(r.stdout)")
        }
    }

    @Test func usageErrorsFollowTheContract() async {
        for args in [["complete", "hi"], ["plugins", "frobnicate"], ["frobnicate"], ["complete", "-p", "echo", "--bogus", "x"], ["plugins", "info"]] {
            let r = await cli(args)
            #expect(r.status == 64, "\(args): \(r)")
            #expect(r.stderr.hasPrefix("Error: "), "\(args)")
            #expect(r.stderr.contains("\nUsage: descartes"), "\(args)")
            #expect(r.stderr.contains("See 'descartes"), "\(args)")
            #expect(r.stdout.isEmpty)
        }
    }

    @Test func pluginsListShowsEveryManifestAndWhyOneIsBroken() async throws {
        plugins.dir.write("zbroken.yaml", "manifest_version: 1\nprovider: zbroken\nmode: [\n")
        let r = await cli(["plugins", "list"])
        #expect(r.status == 0)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("NAME"))
        #expect(lines.contains { $0.hasPrefix("echo ") && $0.contains("1.0.0") && $0.contains("local") && $0.contains("available") && $0.contains("libdescartes-echo.so") })
        #expect(r.stdout.contains("zbroken.yaml:4:1: did not find expected node content"), "\(r.stdout)")

        let j = await cli(["plugins", "list", "--json"])
        let doc = try JSONValue.parse(j.stdout)
        let list = try #require(doc["plugins"]?.arrayValue)
        #expect(list.count == 2)
        let echo = try #require(list.first { $0["name"] == "echo" })
        #expect(echo["status"] == "available")
        #expect(echo["abi"] == 1)
        #expect(echo["config"]?[0]?["name"] == "delay_ms")
        #expect(echo["config"]?[0]?["default"] == 0)
        let broken = try #require(list.first { $0["manifest"]?.stringValue?.hasSuffix("zbroken.yaml") == true })
        #expect(broken["status"] == "invalid manifest")
        #expect(broken["problems"]?[0]?["line"] == 4)
    }

    @Test func verboseNarratesDiscoveryFromAnywhereOnTheLine() async {
        let r = await cli(["plugins", "list", "--verbose"])
        #expect(r.stderr.contains("discovery: search \(plugins.path) (DESCARTES_PLUGIN_PATH): 1 manifest"))
        #expect(r.stderr.contains("(user data directory)"))
        #expect(r.stderr.contains("/usr/lib/descartes/plugins (system)"))
        let r2 = await cli(["-v", "plugins", "list"])
        #expect(r2.stderr == r.stderr)
    }

    @Test func pluginsInfoShowsTheManifest() async throws {
        let r = await cli(["plugins", "info", "echo", "--json"])
        #expect(r.status == 0)
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["factory"] == "echo")
        #expect(doc["models"]?[0]?["id"] == "echo-1")
        #expect(await cli(["plugins", "info", "echo"]).stdout.contains("delay_ms  integer"))
        #expect(await cli(["plugins", "info", "nope"]).status == 78)
    }

    @Test func verifyFailsForABrokenPluginAndPassesOtherwise() async throws {
        #expect(await cli(["plugins", "verify"]).status == 0)
        plugins.dir.write("libdescartes-junk.so", "junk")
        plugins.dir.write("junk.yaml", "manifest_version: 1\nprovider: junk\nversion: 1.0.0\nlibrary: libdescartes-junk.so\nabi: 1\nmode: api\n")
        plugins.dir.write(
            "needskey.yaml",
            "manifest_version: 1\nprovider: needskey\nversion: 1.0.0\nlibrary: \(CCompiler.echoLibrary)\nfactory: echo\nabi: 1\nmode: api\nconfig:\n  api_key: {type: string, required: true, secret: true, env: NEEDSKEY_API_KEY}\n"
        )
        let r = await cli(["plugins", "verify", "--json"])
        #expect(r.status == 1)
        let doc = try JSONValue.parse(r.stdout)
        let results = try #require(doc["results"]?.arrayValue)
        #expect(results.first { $0["name"] == "echo" }?["ok"] == true)
        let junk = try #require(results.first { $0["name"] == "junk" })
        #expect(junk["ok"] == false)
        #expect(junk["error"]?["message"]?.stringValue?.contains("libdescartes-junk.so: not a loadable shared object") == true)
        let needs = try #require(results.first { $0["name"] == "needskey" })
        #expect(needs["ok"] == true)
        #expect(needs["missing_config"]?[0]?.stringValue?.contains("NEEDSKEY_API_KEY") == true)
        #expect(await cli(["plugins", "verify", "echo", "needskey"]).status == 0)
    }

    @Test func completePrintsTheAnswer() async throws {
        let plain = await cli(["complete", "-p", "echo", "hello", "world"])
        #expect(plain.status == 0)
        #expect(plain.stdout == "hello world\n")
        let streamed = await cli(["complete", "--stream", "-p", "echo", "--set", "delay_ms=1", "hello streamed world"])
        #expect(streamed.stdout == "hello streamed world\n")
        let stdin = await cli(["complete", "-p", "echo", "-"], stdin: "from stdin\n")
        #expect(stdin.stdout == "from stdin\n")
        let json = try JSONValue.parse(await cli(["complete", "-p", "echo", "--json", "x y"]).stdout)
        #expect(json["content"] == "x y")
        #expect(json["finish_reason"] == "stop")
        #expect(json["usage"]?["output_tokens"] == 2)
        #expect(json["provider"] == "echo")
    }

    @Test func streamJSONPrintsOneEventPerLine() async throws {
        let r = await cli(["complete", "-p", "echo", "--stream", "--json", "a b"])
        #expect(r.status == 0)
        let events = try r.stdout.split(separator: "\n").map { try JSONValue.parse(String($0)) }
        #expect(events.map { $0["type"]?.stringValue ?? "" } == ["start", "text", "text", "finish"])
        #expect(events[2]["text"] == " b")
        #expect(events[3]["response"]?["content"] == "a b")
    }

    @Test func failuresExitWithTheirSysexitsStatus() async throws {
        let config = await cli(["complete", "-p", "echo", "--set", "delay_ms=soon", "x"])
        #expect(config.status == 78)
        #expect(config.stderr.contains("key 'delay_ms' from config must be an integer, got string ('soon')"))
        #expect(config.stderr.contains("echo.yaml"))
        #expect(await cli(["complete", "-p", "nothing", "x"]).status == 78)
        let timeout = await cli(["complete", "-p", "echo", "--set", "delay_ms=500", "--timeout", "0.3", "one two three"])
        #expect(timeout.status == 75)
        #expect(timeout.stderr.contains("timeout: the total deadline of 300 ms passed"))
        // The process ends promptly: the cancelled call and the shutdown that
        // follows it do not wait for the plugin's 500 ms pause.
        expectWithin(timeout.duration, .seconds(3))
        for _ in 0..<5 {
            let json = await cli(["complete", "-p", "echo", "--json", "--set", "delay_ms=500", "--timeout", "0.2", "one two"])
            #expect(try JSONValue.parse(json.stdout)["error"]?["kind"] == "timeout")
            expectWithin(json.duration, .seconds(3))
        }
        plugins.dir.write("ghost.yaml", "manifest_version: 1\nprovider: ghost\nversion: 1.0.0\nlibrary: libdescartes-ghost.so\nabi: 1\nmode: api\n")
        #expect(await cli(["complete", "-p", "ghost", "x"]).status == 69)
    }

    /// The design card's promise: a third party builds a plugin outside the
    /// tree against the installed header with pkg-config, drops it with its
    /// manifest in a directory on DESCARTES_PLUGIN_PATH, and the installed
    /// `descartes` lists and uses it. Nothing is rebuilt.
    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func aCPluginBuiltOutOfTreeWorksWithTheInstalledHost() async throws {
        let prefix = try #require(TestEnv.prefix)
        let work = TempDir("third-party")
        let source = work.write("myecho.c", try FileSystem.readText(FileSystem.join(TestEnv.root, "Plugins/EchoC/echo.c"), limit: 1 << 20))
        let pc = await Proc.run(["pkg-config", "--cflags", "descartes-plugin"], env: ["PKG_CONFIG_PATH": "\(prefix)/lib/pkgconfig", "PATH": "/usr/bin:/bin"])
        #expect(pc.status == 0, "\(pc)")
        #expect(pc.stdout.contains("-I\(prefix)/include"))
        let flags = pc.stdout.split(separator: " ").map { String($0).trimmingCharacters() }.filter { !$0.isEmpty }
        try FileSystem.makeDirectories(work.file("plugins"))
        let cc = await Proc.run(["cc", "-shared", "-fPIC", "-pthread"] + flags + ["-o", work.file("plugins/libdescartes-myecho.so"), source])
        #expect(cc.status == 0, "\(cc)")
        work.write("plugins/myecho.yaml", """
            manifest_version: 1
            provider: myecho
            version: 2.0.0
            description: A third party's plugin
            library: libdescartes-myecho.so
            factory: echo
            abi: 1
            mode: local
            config:
              delay_ms: {type: integer, default: 0}
              prefix: {type: string, default: "[myecho] "}
            """)
        let host = "\(prefix)/bin/descartes"
        let env = ["DESCARTES_PLUGIN_PATH": work.file("plugins"), "HOME": work.path, "NO_COLOR": "1", "PATH": "/usr/bin:/bin"]
        let list = await Proc.run([host, "plugins", "list"], env: env)
        #expect(list.status == 0)
        #expect(list.stdout.split(separator: "\n").contains { $0.hasPrefix("myecho") && $0.contains("2.0.0") && $0.contains("available") })
        // The installed plugins are listed too (from the prefix).
        #expect(list.stdout.split(separator: "\n").contains { $0.hasPrefix("echo ") })
        let answer = await Proc.run([host, "complete", "-p", "myecho", "--stream", "third party works"], env: env)
        #expect(answer.status == 0, "\(answer)")
        #expect(answer.stdout == "[myecho] third party works\n")
        let verify = await Proc.run([host, "plugins", "verify", "myecho"], env: env)
        #expect(verify.status == 0, "\(verify)")
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\n" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\n" { s = s.dropLast() }
        return String(s)
    }
}
