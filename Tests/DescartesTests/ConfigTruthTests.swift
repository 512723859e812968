import Descartes
import Testing
import DescartesSupport

/// One resolver for provider names and one reading of the configuration
/// (providers.yaml, .env, the environment) for every command (issue 17).
@Suite struct ConfigTruthTests {
    let plugins = PluginDir().addScripted().addEcho()
    let work = TempDir("descartes-truth")

    /// The CLI run from the project directory `work` (its
    /// .descartes/providers.yaml and .env), HOME elsewhere.
    func cli(_ args: [String], env: [String: String] = [:]) async -> ProcResult {
        var e = Environment.current()
        e["NO_COLOR"] = "1"
        e["DESCARTES_PLUGIN_PATH"] = plugins.path
        e["HOME"] = work.file("home")
        e["XDG_CONFIG_HOME"] = nil
        e["XDG_STATE_HOME"] = work.file("state")
        for (k, v) in env { e[k] = v }
        let quoted = ([TestEnv.descartes] + args).map { "'" + $0.replacingAll("'", with: "'\\''") + "'" }.joined(separator: " ")
        return await Proc.run(["/bin/sh", "-c", "cd '\(work.path)' && exec \(quoted)"], env: e)
    }

    func project(_ yaml: String, dotenv: String? = nil) {
        work.write(".descartes/providers.yaml", yaml)
        if let dotenv { work.write(".env", dotenv) }
    }

    static let chains = """
        providers:
          sc:
            plugin: scripted
            greeting: ${GREET}
        fallbacks:
          both:
            chain: [sc, echo]
        routes:
          any:
            candidates: [echo, sc]
        """

    @Test func healthWithoutProviderReadsTheConfigurationAndDotenv() async throws {
        project(Self.chains, dotenv: "GREET=bonjour\n")
        let r = await cli(["health", "--json"])
        #expect(r.status == 0, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        let results = try #require(doc["results"]?.arrayValue)
        let names = results.compactMap { $0["name"]?.stringValue }
        // The instance stands for its plugin; the other plugin is listed by its id.
        #expect(names == ["echo", "sc"], "\(r)")
        let sc = try #require(results.first { $0["name"] == "sc" })
        #expect(sc["healthy"] == true, "\(r)")
        #expect(sc["message"]?.stringValue?.contains("'sc'") == true, "\(r)")
    }

    @Test func chainAndRouteNamesWorkWhereverAProviderNameGoes() async throws {
        project(Self.chains, dotenv: "GREET=bonjour\n")
        for name in ["both", "any", "sc"] {
            let models = await cli(["models", "-p", name, "--json"])
            #expect(models.status == 0, "models -p \(name): \(models)")
            let tokens = await cli(["tokens", "-p", name, "--json", "three words here"])
            #expect(tokens.status == 0, "tokens -p \(name): \(tokens)")
            let health = await cli(["health", "-p", name, "--json"])
            #expect(health.status == 0, "health -p \(name): \(health)")
            let complete = await cli(["complete", "-p", name, "hello"])
            #expect(complete.status == 0, "complete -p \(name): \(complete)")
        }
        // --set needs one provider, not a chain.
        let set = await cli(["models", "-p", "both", "--set", "greeting=x"])
        #expect(set.status == 78, "\(set)")
        #expect(set.stderr.contains("'both' is a fallback chain 'both'"), "\(set)")
    }

    @Test func unknownNamesGetADidYouMeanOverEveryKind() async throws {
        project(Self.chains, dotenv: "GREET=bonjour\n")
        for (typo, meant) in [("bth", "both"), ("anyy", "any"), ("sx", "sc"), ("ecko", "echo")] {
            for args in [["models", "-p", typo], ["tokens", "-p", typo, "x"], ["health", "-p", typo], ["complete", "-p", typo, "x"]] {
                let r = await cli(args)
                #expect(r.status == 78, "\(args): \(r)")
                #expect(r.stderr.contains("unknown provider '\(typo)'"), "\(args): \(r)")
                #expect(r.stderr.contains("Did you mean '\(meant)'?"), "\(args): \(r)")
                #expect(r.stderr.contains("fallback chains: both"), "\(args): \(r)")
                #expect(r.stderr.contains("routes: any"), "\(args): \(r)")
                #expect(r.stderr.contains("instances: sc"), "\(args): \(r)")
            }
        }
    }

    @Test func fallbackNamesAreCheckedBeforeAnythingRuns() async throws {
        project("providers: {}\n")
        let r = await cli(["complete", "-p", "echo", "--fallback", "scripted,nosuch", "--json", "hello"])
        #expect(r.status == 78, "\(r)")
        #expect(r.stderr.contains("unknown provider 'nosuch'"), "\(r)")
        // Nothing was asked of echo: no answer on stdout, only the error.
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["content"] == nil && doc["error"]?["kind"] == "config", "\(r)")
    }

    @Test func pluginsDisableOfAnUnknownNameFailsNamingIt() async throws {
        let r = await cli(["plugins", "disable", "nosuch"])
        #expect(r.status == 78, "\(r)")
        #expect(r.stderr.contains("no plugin 'nosuch' is installed"), "\(r)")
        #expect(r.stderr.contains("installed: echo, scripted"), "\(r)")
        #expect(!FileSystem.exists(work.file("home/.config/descartes/plugins.yaml")))
        let typo = await cli(["plugins", "disable", "ecko"])
        #expect(typo.status == 78 && typo.stderr.contains("Did you mean 'echo'?"), "\(typo)")
        let ok = await cli(["plugins", "disable", "echo"])
        #expect(ok.status == 0, "\(ok)")
        let glob = await cli(["plugins", "disable", "future-*"])
        #expect(glob.status == 0, "\(glob)")
    }

    @Test func configCheckRunsWhatStartUpRuns() async throws {
        project(
            """
            providers:
              sc:
                plugin: scripted
            fallbacks:
              safe:
                chain: [sc, nosuch]
            """)
        let check = await cli(["config", "check"])
        #expect(check.status == 78, "\(check)")
        #expect(check.stderr.contains("fallback chain 'safe' names 'nosuch', which is not a provider"), "\(check)")
        // What start-up says is exactly that.
        let complete = await cli(["complete", "-p", "echo", "hi"])
        #expect(complete.status == 78, "\(complete)")
        #expect(complete.stderr.contains("fallback chain 'safe' names 'nosuch'"), "\(complete)")
        let health = await cli(["health"])
        #expect(health.status == 78, "\(health)")
    }

    @Test func anUnsetVariableDoesNotHideTheInstancesOtherProblems() async throws {
        project(
            """
            providers:
              sc:
                plugin: scripted
                greeting: ${DESCARTES_TEST_UNSET_VARIABLE}
                init_delay_ms: soon
                bogus_key: 1
            """)
        let r = await cli(["config", "check", "--json"])
        #expect(r.status == 78, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        let messages = (doc["problems"]?.arrayValue ?? []).compactMap { $0["message"]?.stringValue }
        #expect(messages.contains { $0.contains("DESCARTES_TEST_UNSET_VARIABLE") }, "\(messages)")
        #expect(messages.contains { $0.contains("init_delay_ms") }, "\(messages)")
        #expect(messages.contains { $0.contains("unknown key 'bogus_key'") }, "\(messages)")
        #expect(!messages.contains { $0.contains("missing required key 'greeting'") }, "\(messages)")
    }

    /// The Swift API's entry point reads and checks the configuration as
    /// the CLI does, and resolves the same names.
    @Test func theSwiftEntryPointChecksAndResolvesAsTheCLIDoes() throws {
        let file = work.write(
            "p.yaml",
            """
            providers:
              sc: {plugin: scripted}
            fallbacks:
              safe: {chain: [sc, nosuch]}
            """)
        do {
            _ = try ProviderFactory.standard(configFile: file)
            Issue.record("a chain naming a missing provider was accepted")
        } catch {
            #expect(error.kind == .config)
            #expect(error.details.contains { $0.contains("fallback chain 'safe' names 'nosuch'") }, "\(error.details)")
        }
        let config = ProvidersConfig.load(.init(explicitFile: work.write("q.yaml", Self.chains), currentDirectory: work.path))
        let factory = plugins.factory()
        var withConfig = factory
        withConfig.configuration = config
        let (settings, problems) = config.reliabilitySettings(catalog: factory.catalog)
        #expect(problems.isEmpty, "\(problems)")
        #expect(try withConfig.resolveName("both", settings: settings) == .chain("both"))
        #expect(try withConfig.resolveName("any", settings: settings) == .route("any"))
        #expect(try withConfig.resolveName("sc", settings: settings) == .instance("sc", plugin: "scripted"))
        #expect(try withConfig.resolveName("echo", settings: settings) == .plugin("echo"))
        #expect(throws: ProviderError.self) { try withConfig.resolveName("bth", settings: settings) }
    }

    @Test func configShowMasksSecretTypedKeysNotNamesWithToken() async throws {
        let own = PluginDir().addScripted(
            extraConfig: """
              max_tokens: {type: integer, default: 512}
              max_tokens_field: {type: string, default: max_completion_tokens}
              header_doc: {type: string, description: "sent as Authorization: Bearer TOKEN on every request"}
            """)
        project(
            """
            providers:
              sc:
                plugin: scripted
                max_tokens: 2048
                token: not-shown-anywhere
                api_token: also-not-shown
            """)
        let r = await cli(["config", "show", "sc", "--json"], env: ["DESCARTES_PLUGIN_PATH": own.path])
        let doc = try JSONValue.parse(r.stdout)
        let keys = try #require(doc["providers"]?["sc"]?["config"])
        #expect(keys["max_tokens"]?["value"] == 2048, "\(r)")
        #expect(keys["max_tokens"]?["secret"] == false)
        #expect(keys["max_tokens_field"]?["value"] == "max_completion_tokens", "\(r)")
        #expect(keys["token"]?["secret"] == true)
        #expect(keys["api_token"]?["secret"] == true)
        #expect(!r.stdout.contains("not-shown-anywhere") && !r.stdout.contains("also-not-shown"))
        let text = await cli(["config", "show", "sc"], env: ["DESCARTES_PLUGIN_PATH": own.path])
        #expect(text.stdout.contains("max_tokens: 2048"), "\(text)")
        #expect(text.stdout.contains("max_tokens_field: max_completion_tokens"), "\(text)")

        // plugins info prints the manifest's documentation as written.
        let info = await cli(["plugins", "info", "scripted"], env: ["DESCARTES_PLUGIN_PATH": own.path])
        #expect(info.status == 0, "\(info)")
        #expect(info.stdout.contains("sent as Authorization: Bearer TOKEN on every request"), "\(info)")
        let infoJSON = await cli(["plugins", "info", "scripted", "--json"], env: ["DESCARTES_PLUGIN_PATH": own.path])
        #expect(infoJSON.stdout.contains("Authorization: Bearer TOKEN"), "\(infoJSON)")
    }

    @Test func toolsToAProviderWithoutToolsAreRefusedLikeImages() async throws {
        let tools = work.write("tools.json", #"[{"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]"#)
        let r = await cli(["complete", "-p", "echo", "--tools", tools, "hello"])
        let i = await cli(["complete", "-p", "echo", "--image", "http://127.0.0.1:9/i.png", "hello"])
        #expect(i.stderr.contains("does not take images"), "\(i)")
        #expect(r.status == i.status && r.status != 0, "\(r)")
        #expect(r.stderr.contains("'echo' does not take tools (the request has 1)"), "\(r)")
        #expect(r.stderr.contains("lists no 'tools' capability"), "\(r)")
        #expect(r.stdout.isEmpty)
        // A plugin that takes tools gets them.
        let ok = await cli(["complete", "-p", "scripted", "--tools", tools, "hello"])
        #expect(ok.status == 0, "\(ok)")
    }
}
