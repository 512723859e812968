import Descartes
import DescartesSupport
import Testing

/// What a factory owns and when a backend ends: each factory's log sink and
/// redactor (no process-wide list of secrets, no process-wide log), and
/// `withBackend`, which shuts a backend down and destroys it on every path.
@Suite struct LifetimeTests {
    let dir = PluginDir().addScripted().addEcho()

    /// A sink that keeps every record, at `level`.
    final class Records: Sendable {
        let lines = Lock<[String]>([])
        let sink: LogSink
        init(level: LogLevel = .debug) {
            let lines = self.lines
            sink = LogSink(level: level) { level, source, message in lines.withLock { $0.append("\(level) \(source): \(message)") } }
        }
        var all: [String] { lines.withLock { $0 } }
        func contains(_ s: String) -> Bool { all.contains { $0.contains(s) } }
    }

    func factory(_ records: Records) -> ProviderFactory {
        ProviderFactory(
            catalog: .discover(PluginSearch(directories: [.init(path: dir.path, origin: "test")])), environment: [:], logSink: records.sink)
    }

    /// How many backends of instance `name` the scripted library still holds,
    /// asked through another backend of the same library.
    func alive(_ name: String, in f: ProviderFactory) async throws -> Int {
        let probe = try f.create("scripted", instance: "probe-\(name)")
        let n = try await probe.healthCheck().details["alive"]?[name]?.intValue ?? 0
        await probe.shutdown()
        return n
    }

    /// Polls `alive` until it is `want` (the plugin frees its backend on a
    /// thread of its own that may still be returning from a callback).
    func waitAlive(_ name: String, _ want: Int, in f: ProviderFactory) async throws -> Int {
        var n = -1
        for _ in 0..<200 {
            n = try await alive(name, in: f)
            if n == want { return n }
            try await Task.sleep(for: .milliseconds(10))
        }
        return n
    }

    @Test func eachFactoryLogsToItsOwnSinkAndMasksItsOwnSecrets() async throws {
        let a = Records()
        let b = Records()
        let fa = factory(a)
        let fb = factory(b)
        let key = "tok-lifetime-0123456789"
        // The plugin's own record (the C example logs its creation at debug)
        // goes to the sink of the factory that created the backend.
        let echo = try fa.create("echo", instance: "echo-a")
        #expect(a.contains("debug provider echo-a: echo backend created"), "\(a.all)")
        #expect(!b.contains("echo-a"), "\(b.all)")
        // A secret resolved by one factory is masked by that factory alone.
        let s = try fa.create("scripted", config: ["token": .string(key)], instance: "scripted-a")
        var notices: [String] = []
        for try await e in s.stream(.script(["notice:the token is \(key)", "words"], prompt: "hi")) {
            if case .notice(_, let m) = e { notices.append(m) }
        }
        #expect(notices == ["the token is [REDACTED]"])
        #expect(a.contains("provider scripted-a: the token is [REDACTED]"), "\(a.all)")
        #expect(!a.all.joined().contains(key))
        #expect(fa.redactor.redact("x \(key) y") == "x [REDACTED] y")
        #expect(fb.redactor.redact("x \(key) y") == "x \(key) y")
        // The level is the sink's: a factory at warning hears nothing of debug.
        let quiet = Records(level: .warning)
        let fq = factory(quiet)
        let e2 = try fq.create("echo", instance: "echo-quiet")
        #expect(!quiet.contains("echo backend created"))
        // Middlewares built on a factory log to its sink.
        let providers = ReliableProviders(settings: ReliabilitySettings(), factory: fa)
        #expect(providers.logSink === fa.logSink)
        await echo.shutdown()
        await s.shutdown()
        await e2.shutdown()
    }

    @Test func withBackendShutsDownAndDestroysWhenTheBodyReturns() async throws {
        // A provider name of its own: the library's count is per instance name.
        dir.addScripted(provider: "scoped-return")
        let records = Records()
        let f = factory(records)
        var kept: (any ModelBackend)? = nil
        let text = try await f.withBackend("scoped-return", overrides: ["greeting": "hi"]) { b in
            kept = b
            return try await b.complete(.script(["words"], prompt: "scoped call")).content
        }
        #expect(text == "scoped call")
        // Shut down before withBackend returned: it serves nothing more...
        let e = try #require(await providerError { _ = try await kept!.complete(ModelRequest(prompt: "again")) })
        #expect(e.message.contains("has been shut down"), "\(e)")
        // ...and the plugin freed it (destroy ran on the way out, no thread of its own).
        #expect(try await waitAlive("scoped-return", 0, in: f) == 0)
        kept = nil
        #expect(!records.contains("released without shutdown"), "\(records.all)")
    }

    struct BodyFailed: Error {}

    @Test func withBackendShutsDownWhenTheBodyThrows() async throws {
        dir.addScripted(provider: "scoped-throw")
        let records = Records()
        let f = factory(records)
        var kept: (any ModelBackend)? = nil
        await #expect(throws: BodyFailed.self) {
            try await f.withBackend("scoped-throw") { b in
                kept = b
                _ = try await b.complete(.script(["words"], prompt: "then fail"))
                throw BodyFailed()
            }
        }
        let e = try #require(await providerError { _ = try await kept!.listModels() })
        #expect(e.message.contains("has been shut down"), "\(e)")
        #expect(try await waitAlive("scoped-throw", 0, in: f) == 0)
        // A creation error is thrown as it is, and nothing is left behind.
        let unknown = try #require(await providerError { try await f.withBackend("no-such-provider") { _ in } })
        #expect(unknown.kind == .config)
    }

    @Test func aBackendDroppedWithoutShutdownIsReportedNotShutDownBehindTheCallersBack() async throws {
        let records = Records()
        let f = factory(records)
        // Used, then dropped: a warning on the factory's sink; the plugin's
        // backend is left allocated (deinit starts nothing).
        do {
            let b = try f.create("scripted", instance: "lifetime-forgotten")
            _ = try await b.complete(.script(["words"], prompt: "used once"))
        }
        // (The last reference may be the call's, let go on the plugin's thread
        // just after the answer: the warning comes when it does.)
        for _ in 0..<200 where !records.contains("provider lifetime-forgotten") { try await Task.sleep(for: .milliseconds(10)) }
        #expect(records.contains("warning provider lifetime-forgotten: released without shutdown()"), "\(records.all)")
        #expect(try await alive("lifetime-forgotten", in: f) == 1)
        // Never used, then dropped: destroyed there and then, quietly.
        do { _ = try f.create("scripted", instance: "lifetime-never-used") }
        #expect(try await waitAlive("lifetime-never-used", 0, in: f) == 0)
        #expect(!records.contains("lifetime-never-used"), "\(records.all)")
    }

    // MARK: README.md

    /// The README's example, compiled here as written (it is not run: it
    /// searches the standard plugin path).
    func readmeExample() async throws {
        // README.md, begin
        let log = LogSink(level: .info) { level, source, message in
            print("\(level) \(source): \(message)")  // or your logger; secrets are already masked
        }
        let factory = try ProviderFactory.standard(logSink: log)
        let reply = try await factory.withBackend("echo") { backend in
            try await backend.complete(ModelRequest(prompt: "Hello"))
        }
        // README.md, end
        _ = reply
    }

    @Test func theReadmeExampleIsTheOneCompiledHere() throws {
        let readme = try FileSystem.readText(FileSystem.join(TestEnv.root, "README.md"), limit: 1 << 20)
        let intro = try #require(readme.firstRange(of: "`withBackend` shuts a backend down"))
        let open = try #require(readme[intro.upperBound...].firstRange(of: "```swift\n"))
        let close = try #require(readme[open.upperBound...].firstRange(of: "\n```\n"))
        let example = String(readme[open.upperBound..<close.lowerBound])
        let source = try FileSystem.readText(FileSystem.join(TestEnv.root, "Tests/DescartesTests/LifetimeTests.swift"), limit: 1 << 20)
        let begin = try #require(source.firstRange(of: "// README.md, begin\n"))
        let end = try #require(source[begin.upperBound...].firstRange(of: "\n        // README.md, end"))
        let compiled = source[begin.upperBound..<end.lowerBound].split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("        ") ? String($0.dropFirst(8)) : String($0) }.joined(separator: "\n")
        #expect(compiled == example)
    }
}
