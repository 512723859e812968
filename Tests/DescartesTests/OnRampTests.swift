import Descartes
import Foundation
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
