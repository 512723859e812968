import DescartesPluginKit
import Testing

/// Which answers `NotReadyPolicy` takes for "not ready yet". The waiting
/// itself runs through the plugins against scripted servers (OllamaTests,
/// LlamaCppTests, the fault matrix's Ollama 503 rows).
struct NotReadyPolicyTests {
    static let budget = DeadlineBudget(Deadlines(total: .seconds(10)))

    @Test func statusesAloneByDefault() {
        let p = NotReadyPolicy(server: "Ollama", budget: Self.budget)
        let e = ProviderError(.providerUnavailable, "HTTP 503: server busy")
        #expect(p.isNotReady(status: 503, body: Array(#"{"error":"server busy"}"#.utf8), error: e))
        #expect(!p.isNotReady(status: 500, body: [], error: e))
        #expect(!p.isNotReady(status: 429, body: [], error: e))
    }

    @Test func markersNarrowAStatusToTheAnswersThatSaySo() {
        let p = NotReadyPolicy(server: "the llama.cpp server", budget: Self.budget, statuses: [503, 500], markers: ["Loading model"])
        let loading = Array(#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#.utf8)
        #expect(p.isNotReady(status: 503, body: loading, error: ProviderError(.providerUnavailable, "HTTP 503")))
        // Found in the error's message too, ASCII case ignored.
        #expect(p.isNotReady(status: 500, body: [], error: ProviderError(.providerUnavailable, "HTTP 500: LOADING MODEL, wait")))
        #expect(!p.isNotReady(status: 503, body: Array("Service Unavailable".utf8), error: ProviderError(.providerUnavailable, "HTTP 503")))
        #expect(!p.isNotReady(status: 502, body: loading, error: ProviderError(.providerUnavailable, "HTTP 502")))
    }
}
