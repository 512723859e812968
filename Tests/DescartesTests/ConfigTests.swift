import Descartes
import Glibc
import Testing
import DescartesSupport

/// providers.yaml: search, merge, references, positions in every problem,
/// instances used through ProviderFactory, .env, credential helpers.
@Suite struct ConfigTests {
    let interpolator = Interpolator(
        environment: ["HOME_DIR": "/home/x", "EMPTY": "", "PORT": "8080", "KEY": "from-env"], dotenv: ["KEY": "from-dotenv", "ONLY_DOTENV": "dv"],
        dotenvFile: "/p/.env")
    let at = SourcePosition(file: "/p/providers.yaml", line: 3, column: 14)

    func expand(_ s: String, base: String = "/p") -> Result<Interpolator.Expansion, SourceError> {
        interpolator.expand(s, at: at, what: "key 'k' of provider 'p'", baseDirectory: base)
    }

    @Test func referencesExpand() throws {
        #expect(try expand("${HOME_DIR}/bin").get().text == "/home/x/bin")
        #expect(try expand("a ${PORT} b ${PORT}").get().text == "a 8080 b 8080")
        #expect(try expand("${MISSING:-fallback}").get().text == "fallback")
        #expect(try expand("${EMPTY:-fallback}").get().text == "fallback")
        #expect(try expand("${EMPTY}").get().text == "")
        #expect(try expand("${MISSING:-${PORT}}").get().text == "8080")
        #expect(try expand("${MISSING:-}").get().text == "")
        #expect(try expand("cost $$5 and $PLAIN").get().text == "cost $5 and $PLAIN")
        // The process environment wins over .env; .env fills what it lacks.
        #expect(try expand("${KEY}").get().text == "from-env")
        let dv = try expand("${ONLY_DOTENV}").get()
        #expect(dv.text == "dv")
        #expect(dv.origins == ["ONLY_DOTENV from /p/.env"])
        #expect(try expand("${PORT}").get().fromFile == false)
    }

    @Test func fileReferencesReadSecretsRelativeToTheConfigFile() throws {
        let dir = TempDir()
        dir.write("secrets/key", "sk-from-a-file-0123\n")
        let x = try expand("${file:secrets/key}", base: dir.path).get()
        #expect(x.text == "sk-from-a-file-0123")
        #expect(x.fromFile)
        #expect(try expand("${file:\(dir.file("secrets/key"))}").get().text == "sk-from-a-file-0123")
        guard case .failure(let e) = expand("${file:secrets/nope}", base: dir.path) else { Issue.record("expected a failure"); return }
        #expect(e.problems[0].description.hasPrefix("/p/providers.yaml:3:14: key 'k' of provider 'p': cannot read ${file:secrets/nope}"))
    }

    @Test func badReferencesNamePositionAndVariable() {
        for (text, message) in [
            ("${NOT_SET}", "the variable NOT_SET is not set"), ("${UNCLOSED", "unterminated '${'"), ("${1BAD}", "'${1BAD}' is not a reference"),
            ("${A:+x}", "only ':-default' is understood"),
        ] {
            guard case .failure(let e) = expand(text) else {
                Issue.record("\(text) expanded")
                continue
            }
            #expect(e.problems.count == 1)
            #expect(e.problems[0].location == at)
            #expect(e.problems[0].message.hasPrefix("key 'k' of provider 'p': "), "\(e.problems[0])")
            #expect(e.problems[0].message.contains(message), "\(e.problems[0])")
        }
    }

    @Test func dotEnvFilesAreParsedWithLineNumbers() {
        let text = """
            # comment
            export A=1
            B = two words   # trailing comment
            C='lit ${x} # kept'
            D="line\\nbreak \\"q\\""
            E=
            not a line
            1X=3
            F="unterminated
            """
        let (values, problems) = DotEnv.parse(text, file: "/p/.env")
        #expect(values["A"] == "1")
        #expect(values["B"] == "two words")
        #expect(values["C"] == "lit ${x} # kept")
        #expect(values["D"] == "line\nbreak \"q\"")
        #expect(values["E"] == "")
        #expect(values["F"] == nil)
        #expect(problems.map(\.location.line) == [7, 8, 9])
        #expect(problems[0].description == "/p/.env:7:1: expected NAME=value")
    }

    /// A project with a subdirectory, a user and a system directory.
    struct Layout {
        let root = TempDir("descartes-config")
        var project: String { root.file("project") }
        var sub: String { root.file("project/src/deep") }
        var home: String { root.file("home") }
        var system: String { root.file("etc") }

        init() {
            try! FileSystem.makeDirectories(root.file("project/src/deep"))
            try! FileSystem.makeDirectories(root.file("home"))
            try! FileSystem.makeDirectories(root.file("etc"))
        }

        func options(_ env: [String: String] = [:], explicit: String? = nil) -> ProvidersConfig.Options {
            var e = env
            e["HOME"] = home
            return ProvidersConfig.Options(explicitFile: explicit, currentDirectory: sub, environment: e, systemDirectory: system, systemOnly: false)
        }
    }

    @Test func filesAreFoundAndMergedKeyByKey() throws {
        let l = Layout()
        l.root.write("project/.descartes/providers.yaml", """
            providers:
              lab:
                endpoint: http://project:8000/v1
            retry:
              max_attempts: 5
            """)
        l.root.write("home/.config/descartes/providers.yaml", """
            providers:
              lab:
                plugin: vllm
                endpoint: http://user:8000/v1
                api_key: ${LAB_KEY}
              other: {}
            retry:
              max_attempts: 2
              backoff_ms: 100
            fallbacks:
              default: [lab, other]
            """)
        l.root.write("etc/providers.yaml", "providers:\n  sys:\n    plugin: echo\n")
        l.root.write("project/.env", "LAB_KEY=sk-lab-0123456789\n")
        let c = ProvidersConfig.load(l.options())
        #expect(c.problems.isEmpty, "\(c.problems)")
        #expect(c.locations.map(\.scope) == [.project, .user, .system])
        #expect(c.locations.allSatisfy { $0.status == .loaded })
        #expect(c.projectDirectory == l.project)
        #expect(c.instances.map(\.name) == ["lab", "other", "sys"])
        let lab = try #require(c.instance("lab"))
        #expect(lab.plugin == "vllm")
        #expect(lab.entries.map(\.key) == ["endpoint", "api_key"])
        let r = try c.resolve(lab).get()
        #expect(r.values["endpoint"]?.value == "http://project:8000/v1")
        #expect(r.values["endpoint"]?.position?.file.hasSuffix("project/.descartes/providers.yaml") == true)
        #expect(r.values["api_key"]?.value == "sk-lab-0123456789")
        #expect(r.values["api_key"]?.via == ["${LAB_KEY} (LAB_KEY from \(l.project)/.env)"])
        // Sections merge their top-level keys, the higher file winning.
        let retry = try #require(try c.section("retry"))
        #expect(retry.json == ["max_attempts": 5, "backoff_ms": 100])
        #expect(retry["max_attempts"]?.location.file.hasSuffix("project/.descartes/providers.yaml") == true)
        #expect(try c.section("fallbacks")?.json == ["default": ["lab", "other"]])
        #expect(try c.section("cache") == nil)

        // --config replaces the search (the project's .env is still read).
        let only = ProvidersConfig.load(l.options(explicit: l.root.file("etc/providers.yaml")))
        #expect(only.locations.map(\.scope) == [.explicit])
        #expect(only.instances.map(\.name) == ["sys"])
        let missing = ProvidersConfig.load(l.options(explicit: l.root.file("nope.yaml")))
        #expect(missing.problems.first?.message == "no such file (given with --config)")
    }

    @Test func everyStructuralProblemIsListedWithItsPosition() {
        let l = Layout()
        l.root.write("project/.descartes/providers.yaml", """
            providers:
              Bad_Name:
                x: 1
              ok:
                plugin: Not Valid
                api_key_helper: {a: b}
                api_key_helper_ttl: soon
                Endpoint: x
              listy: [1, 2]
            retri: 3
            """)
        l.root.write("home/.config/descartes/providers.yaml", "providers: [\n")
        let c = ProvidersConfig.load(l.options())
        let text = c.problems.map(\.description)
        let file = l.root.file("project/.descartes/providers.yaml")
        for expected in [
            "\(file):2:3: provider instance name 'Bad_Name' must be lowercase",
            "\(file):5:13: provider 'ok': 'plugin' names a plugin's provider id",
            "\(file):6:21: provider 'ok': 'api_key_helper' is a command",
            "\(file):7:25: provider 'ok': 'api_key_helper_ttl' is a number of seconds",
            "\(file):8:5: provider 'ok': 'Endpoint' is not a config key name",
            "\(file):9:10: provider 'listy': its settings are a mapping",
            "\(file):10:1: unknown top-level key 'retri' (did you mean 'retry'?)",
            "\(l.home)/.config/descartes/providers.yaml:2:1:",
        ] {
            #expect(text.contains { $0.hasPrefix(expected) }, "missing: \(expected)\nin: \(text.joined(separator: "\n"))")
        }
        #expect(c.problems.count == 8, "\(text.joined(separator: "\n"))")
    }

    @Test func unexpandedReferencesOnlyFailTheInstanceThatUsesThem() throws {
        let l = Layout()
        l.root.write("project/.descartes/providers.yaml", """
            providers:
              needs-var:
                plugin: echo
                prefix: ${DEFINITELY_NOT_SET_X}
                delay_ms: ${ALSO_NOT_SET}
              fine:
                plugin: echo
                prefix: "${GREETING:-hi} "
                delay_ms: ${DELAY}
            """)
        let c = ProvidersConfig.load(l.options(["DELAY": "3"]))
        #expect(c.problems.isEmpty)
        guard case .failure(let e) = c.resolve(c.instance("needs-var")!) else { Issue.record("resolved"); return }
        // Both problems, not just the first, each with line and column.
        #expect(e.problems.map(\.location.line) == [4, 5])
        #expect(e.problems[0].message.contains("DEFINITELY_NOT_SET_X"))
        let fine = try c.resolve(c.instance("fine")!).get()
        #expect(fine.values["prefix"]?.value == "hi ")
        // An unquoted expansion reads as YAML would: an integer.
        #expect(fine.values["delay_ms"]?.value == 3)
    }

    @Test func instancesAreUsedByNameThroughTheFactory() async throws {
        let l = Layout()
        let plugins = PluginDir().addEcho()
        l.root.write("project/.descartes/secret-prefix", ">> \n")
        l.root.write("project/.descartes/providers.yaml", """
            providers:
              loud:
                plugin: echo
                prefix: ${file:secret-prefix}
              echo:
                delay_ms: 1
              typo:
                plugin: echo
                prefx: x
                delay_ms: soon
              ghost:
                plugin: no-such-plugin
            """)
        let config = ProvidersConfig.load(l.options())
        let factory = ProviderFactory(
            catalog: .discover(PluginSearch(directories: [.init(path: plugins.path, origin: "test")])), environment: config.environment,
            configuration: config)
        let loud = try factory.backend("loud")
        #expect(loud.name == "loud")
        #expect(try await loud.complete(ModelRequest(prompt: "hello")).content == ">> hello")
        // An instance named like its plugin.
        #expect(try await factory.backend("echo").complete(ModelRequest(prompt: "a b")).content == "a b")
        // --set overrides the file.
        #expect(try await factory.backend("loud", overrides: ["prefix": "! "]).complete(ModelRequest(prompt: "x")).content == "! x")

        let typo = try #require(await providerError { _ = try factory.backend("typo") })
        #expect(typo.kind == .config)
        let file = l.root.file("project/.descartes/providers.yaml")
        #expect(typo.details.contains { $0.hasPrefix("\(file):9:5: unknown key 'prefx' for provider 'typo' (did you mean 'prefix'?)") }, "\(typo.details)")
        #expect(typo.details.contains { $0 == "\(file):10:15: key 'delay_ms' of provider 'typo' must be an integer, got string ('soon')" }, "\(typo.details)")
        #expect(typo.details.count == 2)

        let ghost = try #require(await providerError { _ = try factory.backend("ghost") })
        #expect(ghost.message.contains("unknown provider 'no-such-plugin'"))

        // `check` reports every instance's problems at once.
        let problems = config.check(catalog: factory.catalog).map(\.description)
        #expect(problems.count == 3, "\(problems)")
        #expect(problems.contains { $0.hasPrefix("\(file):12:13: provider 'ghost': no plugin 'no-such-plugin' is installed") })
    }

    @Test func missingRequiredKeysAreReportedWhereTheInstanceIsDefined() async throws {
        let l = Layout()
        let plugins = PluginDir().addEcho()
        plugins.dir.write(
            "keyed.yaml",
            "manifest_version: 1\nprovider: keyed\nversion: 1.0.0\nlibrary: \(CCompiler.echoLibrary)\nfactory: echo\nabi: 1\nmode: api\nconfig:\n  api_key: {type: string, required: true, secret: true, env: KEYED_TEST_API_KEY}\n  prefix: {type: string}\n"
        )
        l.root.write("project/.descartes/providers.yaml", "providers:\n  k1:\n    plugin: keyed\n")
        let config = ProvidersConfig.load(l.options())
        let search = PluginSearch(directories: [.init(path: plugins.path, origin: "test")])
        let noKey = ProviderFactory(catalog: .discover(search), environment: [:], configuration: config)
        let e = try #require(await providerError { _ = try noKey.backend("k1") })
        #expect(e.details == ["\(l.root.file("project/.descartes/providers.yaml")):2:3: provider 'k1' is missing required key 'api_key' (string): set it here or the environment variable KEYED_TEST_API_KEY"])
        // The original design's way, an environment variable, works with or without the file.
        let withEnv = ProviderFactory(catalog: .discover(search), environment: ["KEYED_TEST_API_KEY": "sk-env-0123456789"], configuration: config)
        #expect(try await withEnv.backend("k1").complete(ModelRequest(prompt: "ok")).content == "ok")
        #expect(try await withEnv.backend("keyed").complete(ModelRequest(prompt: "ok")).content == "ok")
        // Registered in that factory's redactor (LifetimeTests: not in any other).
        #expect(withEnv.redactor.redact("sk-env-0123456789") == "[REDACTED]")
    }

    /// A helper's key, fetched off the cooperative pool (helpers run synchronously).
    func key(
        _ argv: [String], ttl: Duration, timeout: Duration = CredentialHelper.defaultTimeout, redactor: Redactor = Redactor()
    ) async -> Result<Secret, CredentialHelper.Failure> {
        (try? await Proc.offPool { () -> Result<Secret, CredentialHelper.Failure> in
            do throws(CredentialHelper.Failure) { return .success(try CredentialHelper.key(argv, ttl: ttl, timeout: timeout, redactor: redactor)) } catch { return .failure(error) }
        }) ?? .failure(CredentialHelper.Failure(description: "offPool failed"))
    }

    @Test func credentialHelpersRunWithoutAShellAndAreCached() async throws {
        let dir = TempDir()
        let counter = dir.file("runs")
        let helper = dir.write(
            "helper.sh", "#!/bin/sh\necho run >> \(counter)\nprintf 'sk-helper-%s\\nsecond line\\n' \"$1\"\n", mode: 0o755)
        let redactor = Redactor()
        let k = try await key([helper, "a b; rm -rf /"], ttl: .seconds(60), redactor: redactor).get()
        // The argument reached the helper as one argv element: no shell.
        #expect(k.reveal() == "sk-helper-a b; rm -rf /")
        #expect("\(k)" == "[REDACTED]")
        _ = try await key([helper, "a b; rm -rf /"], ttl: .seconds(60)).get()
        #expect(try FileSystem.readText(counter, limit: 100) == "run\n", "cached for the TTL")
        _ = try await key([helper, "a b; rm -rf /"], ttl: .zero).get()
        #expect(try FileSystem.readText(counter, limit: 100) == "run\nrun\n", "a zero TTL runs it every time")
        // What the helper printed is masked from now on, by the caller's redactor.
        #expect(redactor.redact("got sk-helper-a b; rm -rf / here").hasPrefix("got [REDACTED]"))

        let failing = dir.write("fail.sh", "#!/bin/sh\necho 'vault locked: token sk-leaked-0123456789abc' >&2\nexit 3\n", mode: 0o755)
        guard case .failure(let error) = await key([failing], ttl: .zero) else {
            Issue.record("no error")
            return
        }
        #expect(error.description.contains("exited with status 3"))
        #expect(error.description.contains("vault locked"))
        #expect(!error.description.contains("sk-leaked"), "\(error)")
        let slow = dir.write("slow.sh", "#!/bin/sh\nsleep 30\n", mode: 0o755)
        let t0 = ContinuousClock.now
        guard case .failure(let slowError) = await key([slow], ttl: .zero, timeout: .milliseconds(300)) else {
            Issue.record("no error")
            return
        }
        #expect(slowError.description.contains("did not finish within 300 ms and was killed"))
        // Killed at the timeout, not after the 30 s sleep (generous bound for a loaded machine).
        expectWithin(ContinuousClock.now - t0, .seconds(10))
        guard case .failure = await key([dir.file("missing-helper")], ttl: .zero) else { Issue.record("no error"); return }
        let empty = dir.write("empty.sh", "#!/bin/sh\necho\n", mode: 0o755)
        guard case .failure(let emptyError) = await key([empty], ttl: .zero) else { Issue.record("no error"); return }
        #expect(emptyError.description.contains("printed nothing on its first line"))
    }

    @Test func anInstanceTakesItsKeyFromItsHelper() async throws {
        let l = Layout()
        let plugins = PluginDir()
        plugins.dir.symlink(CCompiler.echoLibrary, "libdescartes-echo.so")
        plugins.dir.write(
            "keyed.yaml",
            "manifest_version: 1\nprovider: keyed\nversion: 1.0.0\nlibrary: libdescartes-echo.so\nfactory: echo\nabi: 1\nmode: api\nconfig:\n  api_key: {type: string, required: true, secret: true}\n  prefix: {type: string}\n"
        )
        let helper = l.root.write("helper.sh", "#!/bin/sh\necho sk-from-helper-98765\n", mode: 0o755)
        l.root.write("project/.descartes/providers.yaml", """
            providers:
              viahelper:
                plugin: keyed
                api_key_helper: [\(helper)]
              both:
                plugin: keyed
                api_key: x1234567
                api_key_helper: \(helper) --flag
            """)
        let config = ProvidersConfig.load(l.options())
        #expect(config.problems.isEmpty, "\(config.problems)")
        let factory = ProviderFactory(
            catalog: .discover(PluginSearch(directories: [.init(path: plugins.path, origin: "test")])), environment: [:], configuration: config)
        #expect(try await factory.backend("viahelper").complete(ModelRequest(prompt: "with a helper")).content == "with a helper")
        #expect(factory.redactor.redact("sk-from-helper-98765") == "[REDACTED]")
        let both = try #require(await providerError { _ = try factory.backend("both") })
        #expect(both.details.first?.contains("both 'api_key' and 'api_key_helper' are set") == true)
        #expect(config.instance("both")?.helper == [helper, "--flag"])
    }

    @Test func theMiddlewareSectionsReachTheirCheckerMergedAndExpanded() throws {
        let l = Layout()
        l.root.write("project/.descartes/providers.yaml", "retry:\n  max_attempts: ${TRIES}\nfallbacks:\n  main: [a, b]\n")
        l.root.write("home/.config/descartes/providers.yaml", "retry:\n  backoff_ms: 100\nroutes: {cheap: {}}\n")
        let c = ProvidersConfig.load(l.options(["TRIES": "4"]))
        let sections = try c.middlewareSections()
        #expect(Set(sections.keys) == ["retry", "fallbacks", "routes"])
        #expect(sections["retry"]?.json == ["max_attempts": 4, "backoff_ms": 100])
        let seen = Lock<[String]>([])
        let checker = ConfigSectionChecker(keys: ProvidersConfig.middlewareSections) { nodes, _ in
            seen.withLock { $0 = nodes.keys.sorted() }
            guard let n = nodes["retry"]?["max_attempts"] else { return [] }
            return [SourceProblem(n.location, "max_attempts \(n.json) is too many for this test")]
        }
        let problems = c.check(catalog: PluginCatalog.discover(PluginSearch(directories: [])), checkers: [checker])
        #expect(seen.withLock { $0 } == ["fallbacks", "retry", "routes"])
        #expect(problems.map(\.description) == ["\(l.root.file("project/.descartes/providers.yaml")):2:17: max_attempts 4 is too many for this test"])
        // An unset variable in a section is reported like any other.
        let bad = ProvidersConfig.load(l.options())
        #expect(throws: SourceError.self) { try bad.middlewareSections() }
    }
}
