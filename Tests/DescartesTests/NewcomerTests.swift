import Descartes
import Testing
import DescartesSupport

/// The "done when", against the prefix `make test` installs into:
/// a newcomer writes a manifest for an OpenAI-compatible server with no
/// code (docs/writing-a-plugin.md, "No code at all"), uses it by name and as
/// a providers.yaml instance with its own settings, and the conformance
/// suite passes it with the OpenAI spec the install ships.
@Suite struct NewcomerTests {
    static var openaiLibrary: String? {
        TestEnv.prefix.map { "\($0)/lib/descartes/plugins/libdescartes-openai.so" }.flatMap { FileSystem.exists($0) ? $0 : nil }
    }

    @Test(.enabled(if: openaiLibrary != nil, "needs the openai plugin installed in the test prefix"))
    func aManifestWithNoCodeServesAnOpenAICompatibleServer() async throws {
        let prefix = try #require(TestEnv.prefix)
        let library = try #require(Self.openaiLibrary)
        let server = try await ScriptedServer.start()
        let sse = try FileSystem.readText(FileSystem.join(TestEnv.root, "conformance/openai/text.sse"), limit: 1 << 20)
        try await server.script(["POST /v1/chat/completions": [.stream(sse, split: "lines")]])

        let home = TempDir("newcomer-home")
        let plugins = home.file(".local/share/descartes/plugins")
        home.write(
            ".local/share/descartes/plugins/lab.yaml",
            """
            manifest_version: 1
            provider: lab
            version: 1.0.0
            description: Our vLLM box
            library: \(library)
            factory: openai
            abi: 1
            mode: api
            default_model: qwen2.5-7b-instruct
            config:
              endpoint: {type: string, default: "\(server.url)/v1"}
              api_key: {type: string, secret: true, env: LAB_API_KEY}
            """)
        let env = ["HOME": home.path, "NO_COLOR": "1", "PATH": "/usr/bin:/bin", "LAB_API_KEY": "lab-key-0123456789"]
        let exe = "\(prefix)/bin/descartes"
        let list = await Proc.run([exe, "plugins", "list"], env: env)
        #expect(list.stdout.split(separator: "\n").contains { $0.hasPrefix("lab ") && $0.contains("available") }, "\(list)")
        #expect(await Proc.run([exe, "plugins", "verify", "lab"], env: env).status == 0)
        let answer = await Proc.run([exe, "complete", "-p", "lab", "--stream", "Hello"], env: env)
        #expect(answer.status == 0, "\(answer)")
        #expect(answer.stdout == "Hello there, conformance!\n")
        let seen = try await server.requests()
        #expect(seen.last?.header("authorization") == "Bearer lab-key-0123456789")

        // A second instance of the same server: providers.yaml, no second manifest.
        home.write(".config/descartes/providers.yaml", "providers:\n  lab-big:\n    plugin: lab\n    api_key: ${file:~/.lab-big-key}\n")
        home.write(".lab-big-key", "big-key-0123456789\n")
        let big = await Proc.run([exe, "complete", "-p", "lab-big", "--stream", "Hello"], env: env)
        #expect(big.stdout == "Hello there, conformance!\n", "\(big)")
        #expect(try await server.requests().last?.header("authorization") == "Bearer big-key-0123456789")

        // The installed OpenAI spec covers the manifest (by its factory).
        let conformance = await Proc.run([exe, "plugins", "verify", "--conformance", "lab"], env: env, timeout: .seconds(300))
        #expect(conformance.status == 0, "\(conformance)")
        #expect(conformance.stdout.contains("spec: \(prefix)/share/descartes/conformance/openai.yaml"))
        _ = plugins
    }
}
