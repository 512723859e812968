import Descartes
import Glibc
import Testing

/// `isolation: process` as ops write it: per plugin in plugins.yaml, per
/// provider instance in providers.yaml, honoured by `ProviderFactory` and the
/// CLI without `--isolate`.
@Suite struct IsolationPolicyTests {
    let dir = PluginDir().addScripted().addEcho()

    func policy(system: String? = nil, user: String? = nil) -> PluginPolicy {
        var p = PluginPolicy()
        if let system { p.add(system, file: "/etc/descartes/plugins.yaml", scope: .system) }
        if let user { p.add(user, file: "/home/u/.config/descartes/plugins.yaml", scope: .user) }
        return p
    }

    func providers(_ yaml: String, file: String = "/p/providers.yaml") throws -> ProvidersConfig {
        var problems: [SourceProblem] = []
        let root = try #require(try YAML.parse(yaml, file: file))
        var c = ProvidersConfig.merge([(file, root)], problems: &problems)
        c.problems = problems
        return c
    }

    func factory(policy: PluginPolicy = .none, config: ProvidersConfig? = nil) -> ProviderFactory {
        let search = PluginSearch(directories: [.init(path: dir.path, origin: "test")])
        return ProviderFactory(catalog: .discover(search, policy: policy), environment: [:], configuration: config)
    }

    // MARK: Reading

    @Test func thePolicyDecidesPerPluginFirstEntryFirst() {
        let p = policy(
            system: """
                plugins:
                  openai: {isolation: in_process}
                  "*": {isolation: process, memory_limit_mb: 2048}
                """,
            user: """
                plugins:
                  claude-code-cli:
                    memory_limit_mb: 1024
                  openai:
                    isolation: process
                """)
        #expect(p.problems.isEmpty, "\(p.problems)")
        // The system's exception comes before its glob; the user narrows it again.
        #expect(p.isolation(for: "openai").process)
        #expect(p.isolation(for: "openai").memoryMB == 2048)
        #expect(p.isolation(for: "openai").reasons.contains("/home/u/.config/descartes/plugins.yaml:5:16 (user policy: isolation: process)"))
        let claude = p.isolation(for: "claude-code-cli")
        #expect(claude.process && claude.memoryMB == 1024, "the lower limit wins: \(claude)")
        #expect(policy(system: "plugins:\n  \"*\": {isolation: in_process}\n").isolation(for: "x") == IsolationDecision())
        // A user cannot run in process what the system isolates.
        let q = policy(system: "plugins:\n  x: {isolation: process}\n", user: "plugins:\n  x: {isolation: in_process}\n")
        #expect(q.isolation(for: "x").process)
        #expect(!PluginPolicy.none.isolation(for: "x").process)
    }

    @Test func badValuesAreProblemsWithTheirPosition() {
        let p = policy(system: """
            plugins:
              a: {isolation: processs}
              b: {isolation: process, memory_limit_mb: 10}
              c: {isolation: in_process, memory_limit_mb: 512}
              d: {isolaton: process}
              e: process
              f: {memory_limit_mb: lots}
            """)
        let text = p.problems.map(\.description)
        for expected in [
            "/etc/descartes/plugins.yaml:2:18: plugin 'a': 'isolation' is 'process' (run the plugin in a descartes-plugin-host helper) or 'in_process', got 'processs'",
            "/etc/descartes/plugins.yaml:3:44: plugin 'b': 'memory_limit_mb' is the isolation helper's address-space limit in MiB, an integer of at least 64, got '10'",
            "/etc/descartes/plugins.yaml:4:47: plugin 'c': 'memory_limit_mb' limits an isolated plugin's helper; this one says 'isolation: in_process'",
            "/etc/descartes/plugins.yaml:5:7: unknown key of plugin 'd' 'isolaton' (did you mean 'isolation'?)",
            "/etc/descartes/plugins.yaml:6:6: plugin 'e': its settings are a mapping (isolation, memory_limit_mb), got a string",
            "/etc/descartes/plugins.yaml:7:24: plugin 'f': 'memory_limit_mb' is the isolation helper's address-space limit in MiB, an integer of at least 64, got 'lots'",
        ] {
            #expect(text.contains(expected), "missing \(expected) in \(text)")
        }
        // A policy with a problem fails closed, as for every other key.
        #expect(!p.decision(for: "a").enabled)
        let q = policy(system: "plugins: [a]\n")
        #expect(q.problems.map(\.description) == ["/etc/descartes/plugins.yaml:1:10: 'plugins' maps plugin names or globs to their settings (isolation, memory_limit_mb), got a list"])
    }

    @Test func providersYAMLTakesIsolationPerInstance() throws {
        let c = try providers("""
            providers:
              crashy:
                plugin: scripted
                isolation: process
                memory_limit_mb: 768
              typo:
                plugin: scripted
                isolation: yes
              small:
                plugin: scripted
                memory_limit_mb: 0
            """)
        #expect(c.instance("crashy")?.isolation == IsolationSetting(mode: .process, memoryMB: 768).located(c.instance("crashy")!.isolation))
        #expect(c.problems.map(\.description) == [
            "/p/providers.yaml:8:16: provider 'typo': 'isolation' is 'process' (run the plugin in a descartes-plugin-host helper) or 'in_process', got 'yes'",
            "/p/providers.yaml:11:22: provider 'small': 'memory_limit_mb' is the isolation helper's address-space limit in MiB, an integer of at least 64, got '0'",
        ])
        // Host keys are not the plugin's: the manifest check does not see them.
        #expect(c.check(catalog: factory().catalog).filter { $0.message.contains("crashy") }.isEmpty)
    }

    @Test func theFactoryCombinesCallerPolicyAndInstance() throws {
        let p = policy(system: "plugins:\n  scripted: {memory_limit_mb: 1024}\n  echo: {isolation: process}\n")
        let c = try providers("providers:\n  boxed:\n    plugin: scripted\n    isolation: process\n    memory_limit_mb: 2048\n  plain:\n    plugin: scripted\n")
        let f = factory(policy: p, config: c)
        // A memory limit alone does not isolate.
        #expect(f.effectiveIsolation(plugin: "scripted", instance: "plain", requested: nil) == .inProcess)
        // The instance isolates; the policy's lower limit applies.
        #expect(f.effectiveIsolation(plugin: "scripted", instance: "boxed", requested: nil) == .process(ProcessLimits(memoryBytes: 1024 << 20)))
        // The policy isolates echo even when the caller asks for in process.
        #expect(f.effectiveIsolation(plugin: "echo", instance: nil, requested: .inProcess) == .process(.isolatedPlugin))
        // The caller's own limit is lowered by the files', never raised.
        #expect(f.effectiveIsolation(plugin: "scripted", instance: "plain", requested: .process(ProcessLimits(memoryBytes: 512 << 20))) == .process(ProcessLimits(memoryBytes: 512 << 20)))
        #expect(f.effectiveIsolation(plugin: "scripted", instance: "boxed", requested: .process(ProcessLimits(memoryBytes: 4096 << 20))) == .process(ProcessLimits(memoryBytes: 1024 << 20)))
    }

    // MARK: The crash test, by policy

    @Test(.disabled(if: Sanitizer.active, "a sanitized helper cannot start under the policy's RLIMIT_AS (its shadow memory)"))
    func aPluginIsolatedByPolicyCrashesAloneWhileOthersServe() async throws {
        let p = policy(system: "plugins:\n  scripted: {isolation: process, memory_limit_mb: 1024}\n")
        let c = try providers("providers:\n  other:\n    plugin: echo\n")
        let f = factory(policy: p, config: c)
        // No isolation argument anywhere: the policy decides.
        let crashy = try f.create("scripted")
        let other = try f.backend("other")
        #expect(try await crashy.complete(.script(["text:before"])).content == "before")
        let err = try #require(await providerError { _ = try await crashy.complete(.script(["crash:segv"])) })
        #expect(err.kind == .process)
        #expect(err.message.contains("SIGSEGV"), "\(err.message)")
        #expect(try await other.complete(ModelRequest(prompt: "still serving")).content == "still serving")
        #expect(try await crashy.complete(.script(["text:after"])).content == "after")
        await crashy.shutdown()
        await other.shutdown()
    }

    @Test(.disabled(if: Sanitizer.active, "a sanitized helper cannot start under the instance's RLIMIT_AS (its shadow memory)"))
    func anInstanceIsolatedInProvidersYAMLCrashesAlone() async throws {
        let c = try providers("providers:\n  crashy:\n    plugin: scripted\n    isolation: process\n  steady:\n    plugin: scripted\n")
        let f = factory(config: c)
        let crashy = try f.backend("crashy")
        let steady = try f.backend("steady")
        let err = try #require(await providerError { _ = try await crashy.complete(.script(["crash:abort"])) })
        #expect(err.kind == .process)
        #expect(err.message.contains("SIGABRT"), "\(err.message)")
        // The same plugin in process, next to it, is untouched (had the crash
        // happened in this process, the test run would have ended here).
        #expect(try await steady.complete(.script(["text:steady"])).content == "steady")
        await crashy.shutdown()
        await steady.shutdown()
    }

    @Test(.disabled(if: Sanitizer.active, "the CLI's helper runs under RLIMIT_AS"))
    func theCLIHonoursThePolicyWithoutIsolate() async throws {
        let home = TempDir("descartes-home")
        home.write("config/descartes/plugins.yaml", "plugins:\n  scripted:\n    isolation: process\n")
        let config = home.write("providers.yaml", "providers:\n  boxed:\n    plugin: echo\n    isolation: process\n")
        let badConfig = home.write("bad.yaml", "providers:\n  boxed:\n    plugin: echo\n    isolation: sandbox\n")
        let env = ["DESCARTES_PLUGIN_PATH": dir.path, "XDG_CONFIG_HOME": home.file("config"), "HOME": "/nonexistent"]
        // The user's plugins.yaml isolates scripted: its crash is a process error.
        let crash = await Proc.descartes(["complete", "-p", "scripted", "--set", "default_script=crash:segv", "x"], env: env)
        #expect(crash.signal == nil && crash.status != 0, "\(crash)")
        #expect(crash.stderr.contains("process") && crash.stderr.contains("SIGSEGV"), "\(crash)")
        // plugins list says so.
        let list = await Proc.descartes(["plugins", "list"], env: env)
        #expect(list.stdout.split(separator: "\n").contains { $0.hasPrefix("scripted ") && $0.contains("isolated") }, "\(list)")
        // An instance isolated in providers.yaml answers through its helper.
        let ok = await Proc.descartes(["--config", config, "complete", "-p", "boxed", "through the helper"], env: env)
        #expect(ok.status == 0 && ok.stdout.contains("through the helper"), "\(ok)")
        // An unknown value is a config error naming file:line:column.
        let bad = await Proc.descartes(["--config", badConfig, "complete", "-p", "boxed", "x"], env: env)
        #expect(bad.status == 78, "\(bad)")
        #expect(bad.stderr.contains("\(badConfig):4:16: provider 'boxed': 'isolation' is 'process'"), "\(bad)")
    }
}

extension IsolationSetting {
    /// Self with `other`'s source positions (to compare values only).
    fileprivate func located(_ other: IsolationSetting) -> IsolationSetting {
        var s = self
        s.modeLocation = other.modeLocation
        s.memoryLocation = other.memoryLocation
        return s
    }
}
