import Descartes
import Foundation
import DescartesSupport
import Testing

/// The Swift on-ramp (issue 17): complete("text"), response.text,
/// ModelRequest(prompt:system:), Codable requests and responses, and an
/// error that names the plugin search when nothing is installed.
@Suite struct OnRampTests {
    let plugins = PluginDir().addEcho()

    @Test func theConveniencesWorkAsWritten() async throws {
        let text = try await plugins.factory().withBackend("echo") { backend in
            try await backend.complete("one two three").text
        }
        #expect(text == "one two three")
        let request = ModelRequest(prompt: "Summarize this", system: "You are terse.")
        #expect(request.systemPrompt == "You are terse.")
        #expect(request.messages.map(\.content) == ["Summarize this"])
    }

    @Test func requestsAndResponsesAreCodable() throws {
        var request = ModelRequest(prompt: "hello", system: "be brief", model: "m1")
        request.metadata = ["agent": "planner"]
        request.maxTokens = 40
        let data = try JSONEncoder().encode(request)
        let back = try JSONDecoder().decode(ModelRequest.self, from: data)
        #expect(back.messages.map(\.content) == ["hello"])
        #expect(back.systemPrompt == "be brief" && back.model == "m1" && back.maxTokens == 40)
        #expect(back.metadata == ["agent": "planner"])

        let response = ModelResponse(content: "hi there", usage: Usage(inputTokens: 3, outputTokens: 2), model: "m1", costUSD: 0.5, provider: "echo")
        let decoded = try JSONDecoder().decode(ModelResponse.self, from: try JSONEncoder().encode(response))
        #expect(decoded.text == "hi there")
        #expect(decoded.usage.inputTokens == 3 && decoded.usage.outputTokens == 2)
        #expect(decoded.costUSD == 0.5 && decoded.provider == "echo" && decoded.model == "m1")
        // A bad document is refused with the member at fault.
        #expect(throws: (any Error).self) { try JSONDecoder().decode(ModelRequest.self, from: Data(#"{"messages": 3}"#.utf8)) }
    }

    @Test func noPluginsFoundNamesTheSearch() throws {
        let empty = TempDir("descartes-noplugins")
        let factory = ProviderFactory(catalog: .discover(PluginSearch(directories: [.init(path: empty.path, origin: "test")])))
        do {
            _ = try factory.backend("openai")
            Issue.record("created a backend with no plugins")
        } catch {
            #expect(error.message.contains("DESCARTES_PLUGIN_PATH"), "\(error.message)")
            #expect(error.message.contains("no plugins are installed"), "\(error.message)")
        }
    }
}

/// README.md's fallback example, compiled here as written, and the same
/// chain run with a provider that cannot be created (issue 17: the old
/// example threw while being built, so it never fell back).
@Suite struct ReadmeFallbackTests {
    func readmeExample() async throws {
        // README.md, begin
        let settings = try ReliabilitySettings.parse(yaml: """
            retry: {max_attempts: 4}
            fallbacks:
              resilient:
                chain: [anthropic, {provider: ollama, model: "llama3.2"}]
            """, file: "inline")
        let providers = ReliableProviders(settings: settings, factory: try ProviderFactory.standard())
        let answer = try await providers.backend("resilient").complete("Hello")
        print(answer.text, answer.provider)   // who answered; answer.attempts: who failed first
        await providers.shutdown()
        // README.md, end
    }

    @Test func theReadmeExampleIsTheOneCompiledHere() throws {
        let readme = try FileSystem.readText(FileSystem.join(TestEnv.root, "README.md"), limit: 1 << 20)
        let intro = try #require(readme.firstRange(of: "From Swift, a chain's providers are created on first use"))
        let open = try #require(readme[intro.upperBound...].firstRange(of: "```swift\n"))
        let close = try #require(readme[open.upperBound...].firstRange(of: "\n```\n"))
        let example = String(readme[open.upperBound..<close.lowerBound])
        let source = try FileSystem.readText(FileSystem.join(TestEnv.root, "Tests/DescartesTests/OnRampTests.swift"), limit: 1 << 20)
        let begin = try #require(source.firstRange(of: "// README.md, begin\n"))
        let end = try #require(source[begin.upperBound...].firstRange(of: "\n        // README.md, end"))
        let compiled = source[begin.upperBound..<end.lowerBound].split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("        ") ? String($0.dropFirst(8)) : String($0) }.joined(separator: "\n")
        #expect(compiled == example)
    }

    @Test func aProviderThatCannotBeCreatedFallsBack() async throws {
        let plugins = PluginDir().addEcho().addManifest("anthropic")
        let settings = try ReliabilitySettings.parse(yaml: """
            retry: {max_attempts: 4}
            fallbacks:
              resilient:
                chain: [anthropic, echo]
            """, file: "inline")
        // No ANTHROPIC_API_KEY: anthropic cannot be created.
        let providers = ReliableProviders(settings: settings, factory: plugins.factory(environment: [:]))
        let answer = try await providers.backend("resilient").complete("Hello there")
        #expect(answer.text == "Hello there")
        #expect(answer.provider == "echo")
        #expect(answer.attempts.map(\.provider) == ["anthropic"])
        #expect(answer.attempts.first?.error.kind == .config)
        await providers.shutdown()
        // Config values from interpolated strings.
        let base = "http://127.0.0.1:9"
        let config: [String: JSONValue] = ["endpoint": "\(base)/v1"]
        #expect(config["endpoint"] == .string("http://127.0.0.1:9/v1"))
    }
}

/// Typed throws on the Swift API (issue 17): every operation of a backend
/// throws `ProviderError` and a stream's `Failure` is `ProviderError`, so a
/// caller reads `error.kind` without casting. (On a tree where they threw
/// `any Error`, this does not compile.)
@Suite struct TypedThrowsTests {
    let plugins = PluginDir().addEcho()

    @Test func everyOperationThrowsProviderError() async throws {
        let backend = try plugins.factory().backend("echo")
        await backend.shutdown()
        var kinds: [ProviderError.Kind] = []
        do { try await backend.initialize() } catch { kinds.append(error.kind) }
        do { _ = try await backend.healthCheck() } catch { kinds.append(error.kind) }
        do { _ = try await backend.complete("hello") } catch { kinds.append(error.kind) }
        do { _ = try await backend.listModels() } catch { kinds.append(error.kind) }
        do { _ = try await backend.estimateTokens("hello") } catch { kinds.append(error.kind) }
        do { _ = try await backend.collect(ModelRequest(prompt: "hello")) } catch { kinds.append(error.kind) }
        do {
            for try await _ in backend.stream("hello") {}
        } catch {
            let typed: ProviderError = error
            kinds.append(typed.kind)
        }
        // Shut down: each operation says so, as a ProviderError.
        #expect(kinds == Array(repeating: .backend, count: 7), "\(kinds)")
        #expect(ModelStream.Failure.self == ProviderError.self)
    }

    @Test func aStreamReportsOtherErrorsAsProviderErrors() async {
        struct Odd: Error {}
        let (stream, continuation) = ModelStream.makeStream(provider: "mine")
        continuation.yield(.textDelta("a"))
        continuation.finish(throwing: Odd())
        var seen = 0
        do {
            for try await _ in stream { seen += 1 }
            Issue.record("the stream did not fail")
        } catch {
            #expect(error.kind == .backend && error.provider == "mine", "\(error)")
        }
        #expect(seen == 1)
    }
}
