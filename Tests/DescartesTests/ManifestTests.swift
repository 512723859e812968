import Descartes
import DescartesSupport
import Glibc
import Testing

@Suite struct YAMLTests {
    @Test func reportsSyntaxErrorsWithLineAndColumn() {
        do {
            _ = try YAML.parse("a: 1\nb: [1, 2\nc: 3\n", file: "bad.yaml")
            Issue.record("expected an error")
        } catch {
            let p = error.problems[0]
            #expect(p.location.file == "bad.yaml")
            #expect(p.location.line >= 2)
            #expect(error.description.hasPrefix("bad.yaml:"))
        }
    }

    @Test func readsTypedScalars() throws {
        let n = try #require(try YAML.parse("a: 1\nb: true\nc: '1'\nd: 2.5\ne: ~\nf: [x, 'y']\n", file: "t.yaml"))
        #expect(n.json == ["a": 1, "b": true, "c": "1", "d": 2.5, "e": nil, "f": ["x", "y"]])
        #expect(n["a"]?.location.line == 1)
        #expect(n["f"]?.location.line == 6)
    }

    @Test func refusesAliasBombs() {
        var doc = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1..<9 { doc += "a\(i): &a\(i) [*a\(i-1), *a\(i-1), *a\(i-1), *a\(i-1), *a\(i-1), *a\(i-1), *a\(i-1), *a\(i-1), *a\(i-1), *a\(i-1)]\n" }
        let start = ContinuousClock.now
        do {
            _ = try YAML.parse(doc, file: "bomb.yaml")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("more than"))
        }
        expectWithin(ContinuousClock.now - start, .seconds(10))
    }

    @Test func rejectsDuplicateKeys() {
        #expect(throws: SourceError.self) { try YAML.parse("a: 1\na: 2\n", file: "d.yaml") }
    }
}

@Suite struct ManifestTests {
    static let valid = """
        manifest_version: 1
        provider: demo
        version: 1.2.3
        library: libdescartes-demo.so
        abi: 1
        mode: api
        capabilities: [stream, tools]
        default_model: m1
        models:
          - id: m1
            context: 8192
            price: {input: 3, output: 15, cache_read: 0.3, cache_write: 3.75}
        config:
          api_key: {type: string, required: true, secret: true, env: DEMO_API_KEY}
          endpoint: {type: string, default: "https://demo.example/v1", env: [DEMO_ENDPOINT, DEMO_HOST]}
          timeout_secs: {type: integer, default: 30}
          verbose: {type: boolean, default: false}
        """

    @Test func parsesAValidManifest() throws {
        let m = try PluginManifest.parse(Self.valid, file: "/plugins/demo.yaml")
        #expect(m.provider == "demo")
        #expect(m.factory == "demo")
        #expect(m.libraryPath == "/plugins/libdescartes-demo.so")
        #expect(m.mode == .api)
        #expect(m.models.first?.prices == ModelPrices(input: 3, output: 15, cacheRead: 0.3, cacheWrite: 3.75))
        #expect(m.configKey("endpoint")?.env == ["DEMO_ENDPOINT", "DEMO_HOST"])
        #expect(m.configKey("timeout_secs")?.defaultValue == .integer(30))
    }

    @Test func reportsEveryProblemAtOnceWithPositions() {
        let text = """
            manifest_version: 1
            provider: Demo_X
            version: 1
            librery: libx.so
            abi: one
            mode: cloud
            config:
              key: {type: strng}
              other: {type: integer, default: abc}
            """
        do {
            _ = try PluginManifest.parse(text, file: "/p/x.yaml")
            Issue.record("expected errors")
        } catch {
            let text = error.description
            #expect(text.contains("/p/x.yaml:2:11: provider id 'Demo_X'"))
            #expect(text.contains("/p/x.yaml:4:1: unknown manifest key 'librery' (did you mean 'library'?)"))
            #expect(text.contains("missing required key 'library'"))
            #expect(text.contains("/p/x.yaml:5:6: 'abi' must be an integer"))
            #expect(text.contains("unknown mode 'cloud'"))
            #expect(text.contains("unknown type 'strng'"))
            #expect(text.contains("default must be an integer"))
            #expect(error.problems.count == 7)
        }
    }

    @Test func reportsAnUnknownManifestVersionAsSuch() {
        do {
            _ = try PluginManifest.parse("manifest_version: 2\nprovider: x\nnew_field: 1\n", file: "v2.yaml")
            Issue.record("expected an error")
        } catch {
            #expect(error.problems.count == 1)
            #expect(error.description == "v2.yaml:1:19: unknown manifest_version 2 (this host reads 1...1)")
        }
    }

    @Test func returnsPromptlyIsABooleanOffByDefault() throws {
        #expect(try PluginManifest.parse(Self.valid, file: "/plugins/demo.yaml").returnsPromptly == false)
        #expect(try PluginManifest.parse(Self.valid + "\nreturns_promptly: true", file: "/plugins/demo.yaml").returnsPromptly)
        do {
            _ = try PluginManifest.parse(Self.valid + "\nreturns_promptly: soon", file: "/plugins/demo.yaml")
            Issue.record("expected an error")
        } catch {
            #expect(error.problems.count == 1)
            #expect(error.description == "/plugins/demo.yaml:18:19: 'returns_promptly' must be true or false, got string 'soon'", "\(error)")
        }
    }

    /// A plugin whose manifest says `returns_promptly: true` is called on
    /// the caller's thread: the echo plugin answers initialize, health and
    /// models inside the operation function (the terminal event before the
    /// handle is returned) and complete and stream from its own thread, and
    /// every one of them reaches the caller.
    @Test func aPromptPluginIsAnsweredInlineAndFromItsOwnThreads() async throws {
        let d = PluginDir().addEcho()
        let echo = try FileSystem.readText(d.dir.file("echo.yaml"), limit: 1 << 20)
        d.dir.write("echo.yaml", echo.replacingAll("\nmode: local\n", with: "\nmode: local\nreturns_promptly: true\n"))
        let f = d.factory()
        #expect(f.catalog.entry(for: "echo")?.manifest?.returnsPromptly == true)
        let b = try f.create("echo")
        try await b.initialize()
        _ = try await b.healthCheck()
        #expect(try await b.listModels().map(\.id) == ["echo-1"])
        for i in 0..<20 {
            let r = try await b.complete(ModelRequest(prompt: "ping \(i)"))
            #expect(r.content.contains("ping \(i)"), "\(r.content)")
        }
        var text = ""
        for try await e in b.stream(ModelRequest(prompt: "streamed")) {
            if case .textDelta(let t) = e { text += t }
        }
        #expect(text.contains("streamed"), "\(text)")
        await b.shutdown()
    }

    @Test func pricesCacheTokensSeparately() {
        let p = ModelPrices(input: 3, output: 15, cacheRead: 0.3, cacheWrite: 3.75)
        let u = Usage(inputTokens: 1_000_000, outputTokens: 1_000_000, cacheReadTokens: 500_000, cacheWriteTokens: 100_000)
        // 400k plain input * 3 + 1M output * 15 + 500k * 0.3 + 100k * 3.75, per million
        #expect(abs(p.cost(of: u) - (1.2 + 15 + 0.15 + 0.375)) < 1e-9)
    }
}

@Suite struct EnvironmentTests {
    /// Split at the first `=` byte: a value may hold `=` and start with a
    /// combining mark (which, as a `Character`, swallows the `=` before it).
    @Test func splitsEachEntryAtItsFirstEqualsByte() {
        let entries = ["PLAIN=1", "URL=a=b=c", "MARK=\u{301}x", "EMPTY=", "NOEQUALS", "PLAIN=2", "CAF\u{E9}=\u{1F680}"]
        let c = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: entries.count + 1)
        defer {
            for i in 0..<entries.count { free(c[i]) }
            c.deallocate()
        }
        for (i, e) in entries.enumerated() { c[i] = strdup(e) }
        c[entries.count] = nil
        #expect(Environment.dictionary(c) == ["PLAIN": "2", "URL": "a=b=c", "MARK": "\u{301}x", "EMPTY": "", "CAF\u{E9}": "\u{1F680}"])
    }
}

@Suite struct ConfigValidationTests {
    static let manifest = try! PluginManifest.parse(ManifestTests.valid, file: "/plugins/demo.yaml")

    @Test func appliesExplicitThenEnvironmentThenDefault() throws {
        let (config, secrets) = try ConfigValidation.resolve(
            manifest: Self.manifest, instance: "demo", explicit: ["timeout_secs": "45"],
            environment: ["DEMO_API_KEY": "k-123456", "DEMO_HOST": "http://h"])
        #expect(config["api_key"] == "k-123456")
        #expect(config["endpoint"] == "http://h")
        #expect(config["timeout_secs"] == 45)
        #expect(config["verbose"] == false)
        #expect(secrets == ["k-123456"])
    }

    @Test func reportsMissingUnknownAndMistypedKeysTogetherNamingTheManifest() {
        do {
            _ = try ConfigValidation.resolve(
                manifest: Self.manifest, instance: "demo", explicit: ["timeout_secs": "soon", "verbos": true, "verbose": 3], environment: [:])
            Issue.record("expected an error")
        } catch {
            #expect(error.kind == .config)
            #expect(error.message.contains("/plugins/demo.yaml"))
            #expect(error.details.count == 4)
            #expect(error.details.contains { $0.contains("unknown key 'verbos' (did you mean 'verbose'?)") })
            #expect(error.details.contains { $0.contains("missing required key 'api_key'") && $0.contains("DEMO_API_KEY") })
            #expect(error.details.contains { $0.contains("key 'timeout_secs' from config must be an integer, got string ('soon')") })
            #expect(error.details.contains { $0.contains("key 'verbose' from config must be a boolean, got integer") })
        }
    }

    @Test func neverEchoesASecretValue() {
        do {
            _ = try ConfigValidation.resolve(manifest: Self.manifest, instance: "demo", explicit: ["api_key": ["sk-very-secret-value"]], environment: [:])
            Issue.record("expected an error")
        } catch {
            #expect(!error.description.contains("sk-very-secret-value"))
        }
    }
}
