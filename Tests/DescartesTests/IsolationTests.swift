import Descartes
import Glibc
import Testing
import DescartesSupport

/// `isolation: process`: a plugin in a `descartes-plugin-host` helper that
/// crashes, aborts or leaks takes down only its helper.
@Suite struct IsolationTests {
    let dir = PluginDir().addScripted().addEcho()

    func isolated(_ config: [String: JSONValue] = [:], limits: ProcessLimits = .isolatedPlugin) throws -> any ModelBackend {
        try dir.factory(environment: ["SCRIPTED_TEST_TOKEN": "tok-isolated-secret-987654"]).create("scripted", config: config, isolation: .process(Sanitizer.limits(limits)))
    }

    /// The helper processes that are children of this test process.
    func helperPIDs() -> [pid_t] {
        let me = getpid()
        return ((try? FileSystem.list("/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            guard let stat = try? FileSystem.readText("/proc/\(pid)/stat", limit: 4096) else { return false }
            // pid (comm) state ppid ...
            guard let close = stat.lastIndex(of: ")") else { return false }
            let comm = stat[stat.index(after: stat.firstIndex(of: "(")!)..<close]
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            return comm == "descartes-plugi" && fields.count > 1 && Int32(fields[1]) == me
        }
    }

    @Test func anIsolatedPluginBehavesLikeAnInProcessOne() async throws {
        let b = try isolated()
        let r = try await b.complete(.script(["words", "tools:2"], prompt: "through a helper"))
        #expect(r.content == "through a helper")
        #expect(r.toolCalls.count == 2)
        #expect(r.finishReason == .toolUse)
        var texts: [String] = []
        for try await e in b.stream(.script(["words"], prompt: "a b c")) { if case .textDelta(let t) = e { texts.append(t) } }
        #expect(texts == ["a", " b", " c"])
        let err = try #require(await providerError { _ = try await b.complete(.script(["error:rate_limited:slow down"], options: ["retry_after_ms": 700])) })
        #expect(err.kind == .rateLimited)
        #expect(err.retryAfter == .milliseconds(700))
        #expect(try await b.listModels().count == 2)
        // Deadlines and cancellation cross the process boundary too.
        let t = try #require(await providerError { _ = try await b.complete(.script(["hang"], deadlines: Deadlines(total: .milliseconds(200)))) })
        #expect(t.kind == .timeout)
        await b.shutdown()
    }

    @Test(arguments: [("crash:segv", "SIGSEGV"), ("crash:abort", "SIGABRT")])
    func aCrashingPluginTakesDownOnlyItsHelper(_ step: String, _ signal: String) async throws {
        let b = try isolated()
        let other = try isolated()
        let echo = try dir.factory().create("echo")
        #expect(try await b.complete(.script(["text:before"])).content == "before")
        // A call in flight when the plugin crashes fails too.
        let inFlight = Task { try await b.complete(.script(["sleep:5000"])) }
        try await Task.sleep(for: .milliseconds(100))
        let err = try #require(await providerError { _ = try await b.complete(.script([step])) })
        #expect(err.kind == .process)
        #expect(err.message.contains("was killed by signal"), "\(err.message)")
        #expect(err.message.contains(signal), "\(err.message)")
        guard case .failure(let e as ProviderError) = await inFlight.result else { Issue.record("the call in flight should fail"); return }
        #expect(e.kind == .process)
        // The others keep serving.
        #expect(try await other.complete(.script(["text:still up"])).content == "still up")
        #expect(try await echo.complete(ModelRequest(prompt: "echo up")).content == "echo up")
        // And the crashed one serves again, from a new helper that was initialized first.
        #expect(try await b.complete(.script(["text:after"])).content == "after")
        #expect(try await b.healthCheck().details["initializations"] == 1)
        await b.shutdown()
        await other.shutdown()
    }

    @Test(.disabled(if: Sanitizer.active, "a sanitized helper cannot start under RLIMIT_AS (its shadow memory)"))
    func aLeakingPluginHitsItsMemoryLimitInsteadOfTheMachine() async throws {
        let b = try isolated(limits: ProcessLimits(memoryBytes: 512 << 20))
        let start = ContinuousClock.now
        let err = try #require(await providerError { _ = try await b.complete(.script(["leak"])) })
        #expect(err.kind == .process)
        #expect(err.message.contains("was killed by signal") || err.message.contains("exited with status"), "\(err.message)")
        expectWithin(ContinuousClock.now - start, .seconds(30))
        #expect(try await b.complete(.script(["text:recovered"])).content == "recovered")
        await b.shutdown()
    }

    @Test func aCrashLoopStopsTheRestarts() async throws {
        let b = try isolated()
        for _ in 0..<3 {
            let e = try #require(await providerError { _ = try await b.complete(.script(["crash:segv"])) })
            #expect(e.message.contains("SIGSEGV"))
        }
        let e = try #require(await providerError { _ = try await b.complete(.script(["text:x"])) })
        #expect(e.kind == .process)
        #expect(e.message.contains("crashed 3 times within a minute"))
    }

    @Test func secretsNeverAppearInTheHelpersArguments() async throws {
        let b = try isolated()
        _ = try await b.complete(.script(["text:x"]))
        // Other tests' helpers come and go: read what is still there (ours is,
        // while `b` lives).
        var read = 0
        for pid in helperPIDs() {
            // (A helper that has exited but is not yet reaped, a zombie, has an empty cmdline.)
            guard let cmdline = try? FileSystem.readText("/proc/\(pid)/cmdline", limit: 1 << 16), !cmdline.isEmpty else { continue }
            read += 1
            #expect(!cmdline.contains("tok-isolated-secret-987654"))
            #expect(cmdline.hasPrefix(TestEnv.binDir + "/descartes-plugin-host"))
        }
        #expect(read >= 1)
        await b.shutdown()
    }

    @Test func cancellationReachesTheIsolatedPlugin() async throws {
        let b = try isolated()
        let task = Task { try await b.complete(.script(["hang"])) }
        try await Task.sleep(for: .milliseconds(200))
        let start = ContinuousClock.now
        task.cancel()
        guard case .failure(let e as ProviderError) = await task.result else { Issue.record("expected cancellation"); return }
        #expect(e.kind == .cancelled)
        expectWithin(ContinuousClock.now - start, .seconds(5))
        // The plugin saw it: nothing is running in the helper.
        var active = -1
        for _ in 0..<100 {
            active = try await b.healthCheck().details["active"]?.intValue ?? -1
            if active == 0 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(active == 0)
        await b.shutdown()
    }

    @Test func createErrorsComeBackFromTheHelper() async throws {
        let err = try #require(await providerError { _ = try dir.factory().create("scripted", config: ["greeting": "reject"], isolation: .process(Sanitizer.limits())) })
        #expect(err.message.contains("create failed: key 'greeting'"))
    }

    @Test(.disabled(if: Sanitizer.active, "the CLI's helper runs under RLIMIT_AS, and a sanitizer turns the in-process crash into its own report"))
    func theCLIIsolatesAPluginOnRequest() async throws {
        let env = ["DESCARTES_PLUGIN_PATH": dir.path]
        // In process, a crashing plugin takes the CLI down with it...
        let inProcess = await Proc.descartes(["complete", "-p", "scripted", "--set", "default_script=crash:segv", "x"], env: env)
        #expect(inProcess.signal == SIGSEGV, "\(inProcess)")
        // ...isolated, it takes down only its helper: the CLI reports it.
        let isolated = await Proc.descartes(["complete", "-p", "scripted", "--isolate", "--set", "default_script=crash:segv", "x"], env: env)
        #expect(isolated.signal == nil && isolated.status != 0, "\(isolated)")
        #expect(isolated.stderr.contains("process") && isolated.stderr.contains("SIGSEGV"), "\(isolated)")
        // And an isolated plugin that behaves answers as usual.
        let ok = await Proc.descartes(["complete", "-p", "scripted", "--isolate", "--memory-limit", "512", "through the helper"], env: env)
        #expect(ok.status == 0 && ok.stdout.contains("through the helper"), "\(ok)")
        let bad = await Proc.descartes(["complete", "-p", "scripted", "--memory-limit", "1", "x"], env: env)
        #expect(bad.status == 64 && bad.stderr.contains("--memory-limit"), "\(bad)")
    }
}
