import Descartes
import DescartesSupport
import Testing

/// The Swift on-ramp's entry points read one configuration (issue 17:
/// "`create` and `standard().backend` resolve configuration differently").
/// `ProviderFactory.create` (the README's quick start),
/// `ProviderFactory.standard().backend` and `standard().withBackend` (the
/// README's scoped form) must give the same backend for the same name: the
/// providers.yaml instance with its settings, `.env` interpolated, `config`
/// values over the file's. Before, `create` read neither providers.yaml nor
/// `.env` (an instance name was an unknown provider, and a plugin's
/// settings in the file were ignored) and `standard()` ignored the plugin
/// policy the CLI and `create` honour.
///
/// The standard locations depend on the working directory, shared by every
/// test of this process: the comparison runs in a process of its own (this
/// test binary, one test) started in a project directory.
@Suite struct EntryPointTests {
    static let marker = "DESCARTES_ENTRY_POINT_CHILD"

    /// What each entry point answers for `name`, `config` given.
    static func answers(_ name: String, _ config: [String: JSONValue] = [:]) async throws -> [String] {
        let created = try ProviderFactory.create(name, config: config)
        let a = try await created.complete("hi").text
        await created.shutdown()
        let standard = try ProviderFactory.standard().backend(name, overrides: config)
        let b = try await standard.complete("hi").text
        await standard.shutdown()
        let c = try await ProviderFactory.standard().withBackend(name, overrides: config) { try await $0.complete("hi").text }
        return [a, b, c]
    }

    @Test(.enabled(if: Environment.get(Self.marker) == "1", "run by theEntryPointsReadOneConfiguration in a project directory"))
    func entryPointsChild() async throws {
        // A plugin's own name, configured in providers.yaml.
        let echo = try await Self.answers("echo")
        #expect(echo == Array(repeating: "yaml> hi", count: 3))
        // An instance of another name, its value from .env.
        let shouty = try await Self.answers("shouty")
        #expect(shouty == Array(repeating: "dotenv:hi", count: 3))
        // Values given in Swift win over the file's, in every entry point.
        let given = try await Self.answers("shouty", ["prefix": "given> "])
        #expect(given == Array(repeating: "given> hi", count: 3))
        // A plugin the host's policy disables is refused by each.
        for entry in 0..<2 {
            let e = try #require(await providerError {
                _ = entry == 0 ? try ProviderFactory.create("offecho") : try ProviderFactory.standard().backend("offecho")
            })
            #expect(e.kind == .initialization, "\(entry): \(e)")
            #expect(e.message.contains("disabled") || e.details.joined().contains("disabled"), "\(entry): \(e)")
        }
    }

    @Test func theEntryPointsReadOneConfiguration() async throws {
        let plugins = PluginDir().addEcho()
        plugins.dir.write("offecho.yaml", try FileSystem.readText(plugins.dir.file("echo.yaml"), limit: 1 << 20)
            .replacingOccurrences(of: "provider: echo", with: "provider: offecho"))
        let project = TempDir("descartes-entry-points")
        try FileSystem.makeDirectories(project.file(".descartes"))
        try FileSystem.makeDirectories(project.file("home/.config/descartes"))
        project.write(".descartes/providers.yaml", """
            providers:
              echo: {prefix: "yaml> "}
              shouty: {plugin: echo, prefix: "${SHOUT_PREFIX}"}
            """)
        project.write(".env", "SHOUT_PREFIX=dotenv:\n")
        project.write("home/.config/descartes/plugins.yaml", "disable: [offecho]\n")
        var env = Environment.current()
        env["DESCARTES_PLUGIN_PATH"] = plugins.path
        env["HOME"] = project.file("home")
        env["XDG_CONFIG_HOME"] = project.file("home/.config")
        env["NO_COLOR"] = "1"
        env[Self.marker] = "1"
        let exe = try #require(FileSystem.executablePath())
        let r = await Proc.run(
            ["/bin/sh", "-c", "cd \"$1\" && shift && exec \"$@\"", "sh", project.path,
             exe, "--testing-library", "swift-testing", "--filter", "EntryPointTests/entryPointsChild"],
            env: env, timeout: .seconds(120))
        let report = r.stdout + r.stderr
        #expect(r.status == 0 && report.contains("Test run with 1 test in 1 suite passed"), "\(r)")
    }
}

/// `withBackend(_:_:)` rethrows its body's own error type (typed throws):
/// a body that throws only `ProviderError` makes the call throw
/// `ProviderError`, so `error.kind` needs no cast (this does not compile
/// where it threw `any Error`); the backend is shut down either way.
@Suite struct TypedWithBackendTests {
    @Test func theBodysErrorTypeIsRethrown() async throws {
        let plugins = PluginDir().addEcho()
        let backend = try plugins.factory().backend("echo")
        var kind: ProviderError.Kind? = nil
        do throws(ProviderError) {
            _ = try await withBackend(backend) { (b) async throws(ProviderError) -> String in
                _ = try await b.complete("hi")
                throw ProviderError(.api, "the body's own error")
            }
        } catch {
            kind = error.kind
        }
        #expect(kind == .api)
        // Shut down: a later call is refused.
        #expect(await providerError { _ = try await backend.complete("hi") } != nil)
        // An untyped body still compiles and rethrows as before.
        struct Mine: Error {}
        await #expect(throws: Mine.self) { try await withBackend(try plugins.factory().backend("echo")) { _ in throw Mine() } }
    }
}
