import Descartes
import Testing

/// Circuit breakers (`CircuitBreakerBackend`, `circuit_breakers:`): open
/// after N consecutive failed attempts of the kinds that mean the provider is
/// unwell, fail at once while open, let one probe through after `open_secs`.
/// Time is a manual clock's: nothing sleeps.
@Suite struct CircuitBreakerTests {
    let clock = ManualClock()
    var time: DescartesClock { DescartesClock(clock) }

    /// Answers with the next scripted outcome (the last repeats), counting calls.
    final class Scripted: ModelBackend, Sendable {
        let name: String
        let outcomes: Lock<[Result<String, ProviderError>]>
        let calls = Lock(0)
        init(_ name: String, _ outcomes: [Result<String, ProviderError>]) {
            self.name = name
            self.outcomes = Lock(outcomes)
        }
        var mode: ModelProviderMode { .api }
        var count: Int { calls.withLock { $0 } }
        func initialize() async throws(ProviderError) {}
        func healthCheck() async throws(ProviderError) -> HealthReport { HealthReport(message: "ok") }
        func listModels() async throws(ProviderError) -> [ModelInfo] { [] }
        func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate { Heuristics.tokens(request) }
        func shutdown() async {}
        func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
            calls.withLock { $0 += 1 }
            let next = outcomes.withLock { o in o.count > 1 ? o.removeFirst() : o[0] }
            switch next {
            case .success(let text):
                var r = ModelResponse()
                r.content = text
                r.provider = name
                return r
            case .failure(let e): throw e
            }
        }
        func stream(_ request: ModelRequest) -> ModelStream {
            ModelStream(failing: ProviderError(.unsupportedFeature, "complete only", provider: name))
        }
    }

    static func unavailable(_ p: String = "flaky") -> ProviderError { ProviderError(.providerUnavailable, "503 overloaded", provider: p, status: 503) }
    static let request = ModelRequest(prompt: "hi")

    @Test func opensAfterNFailuresFailsFastThenOneProbeClosesIt() async throws {
        let up = Scripted("flaky", [.failure(Self.unavailable()), .failure(Self.unavailable()), .failure(Self.unavailable()), .success("back")])
        let breaker = CircuitBreaker(provider: "flaky", settings: CircuitBreakerSettings(failures: 3, open: .seconds(30)), clock: time)
        let b = CircuitBreakerBackend(up, breaker: breaker)
        for i in 1...3 {
            let e = try #require(await providerError { _ = try await b.complete(Self.request) })
            #expect(e.status == 503, "attempt \(i)")
            #expect(breaker.phase == (i < 3 ? .closed : .open))
        }
        // Open: fails at once, upstream sees nothing.
        let fast = try #require(await providerError { _ = try await b.complete(Self.request) })
        #expect(fast.kind == .providerUnavailable)
        #expect(fast.providerType == CircuitBreaker.openType)
        #expect(fast.message.contains("circuit breaker of flaky is open since"), "\(fast.message)")
        #expect(fast.message.contains(" until "), "\(fast.message)")
        #expect(fast.message.contains("3 consecutive failed attempts; last: provider_unavailable (503)"), "\(fast.message)")
        #expect(up.count == 3)
        clock.advance(by: .seconds(29))
        _ = await providerError { _ = try await b.complete(Self.request) }
        #expect(up.count == 3)
        // Half-open after 30 s: the probe goes, succeeds, and closes it.
        clock.advance(by: .seconds(1))
        #expect(breaker.phase == .halfOpen)
        let r = try await b.complete(Self.request)
        #expect(r.content == "back")
        #expect(up.count == 4)
        #expect(breaker.phase == .closed && breaker.failures == 0)
        #expect(breaker.stats == CircuitBreaker.Stats(opened: 1, rejected: 2, probes: 1))
    }

    @Test func halfOpenLetsOneProbeThroughAndItsFailureReopens() async throws {
        let breaker = CircuitBreaker(provider: "p", settings: CircuitBreakerSettings(failures: 1, open: .seconds(10)), clock: time)
        breaker.record(Self.unavailable("p"), try breaker.admit())
        #expect(breaker.phase == .open)
        clock.advance(by: .seconds(10))
        let probe = try breaker.admit()
        #expect(probe == .probe)
        // While the probe is out, everyone else still fails at once.
        let other = try #require(await providerError { _ = try breaker.admit() })
        #expect(other.message.contains("a probe request is on its way"), "\(other.message)")
        breaker.record(ProviderError(.timeout, "no answer", provider: "p", deadline: "total"), probe)
        #expect(breaker.phase == .open)
        #expect(breaker.stats.opened == 2)
        clock.advance(by: .seconds(9))
        #expect(await providerError { _ = try breaker.admit() } != nil)
        clock.advance(by: .seconds(1))
        // A cancelled probe lets the next request be the probe.
        let p2 = try breaker.admit()
        breaker.record(ProviderError(.cancelled, "cancelled", provider: "p"), p2)
        #expect(try breaker.admit() == .probe)
    }

    @Test func onlyTheKindsThatMeanTheProviderIsUnwellCount() async throws {
        let counted: [ProviderError] = [
            Self.unavailable(), ProviderError(.timeout, "t", deadline: "first_token"), ProviderError(.http, "connection refused"),
            ProviderError(.streamClosed, "closed"), ProviderError(.api, "internal", status: 500), ProviderError(.backend, "bad gateway", status: 502),
        ]
        let notCounted: [ProviderError] = [
            ProviderError(.api, "invalid_request", status: 400), ProviderError(.authentication, "bad key", status: 401),
            ProviderError(.rateLimited, "slow down", status: 429), ProviderError(.cancelled, "cancelled"),
            // The shared store down under on_failure: closed: not the provider's fault.
            SharedStoreFailure(message: "the shared store redis://127.0.0.1:1 does not answer").refusal(provider: "p"),
        ]
        for e in counted { #expect(CircuitBreaker.counts(e), "\(e)") }
        for e in notCounted { #expect(!CircuitBreaker.counts(e), "\(e)") }
        let breaker = CircuitBreaker(provider: "p", settings: CircuitBreakerSettings(failures: 2, open: .seconds(5)), clock: time)
        for e in notCounted + notCounted { breaker.record(e, try breaker.admit()) }
        #expect(breaker.phase == .closed && breaker.failures == 0)
        // Consecutive: a success in between resets the count.
        breaker.record(Self.unavailable(), try breaker.admit())
        breaker.record(nil, try breaker.admit())
        breaker.record(Self.unavailable(), try breaker.admit())
        #expect(breaker.phase == .closed && breaker.failures == 1)
        breaker.record(Self.unavailable(), try breaker.admit())
        #expect(breaker.phase == .open)
    }

    @Test func theRetryLayerDoesNotRetryAnOpenBreaker() async throws {
        let up = Scripted("flaky", [.failure(Self.unavailable())])
        let breaker = CircuitBreaker(provider: "flaky", settings: CircuitBreakerSettings(failures: 2, open: .seconds(30)), clock: time)
        let b = RetryBackend(CircuitBreakerBackend(up, breaker: breaker), policy: RetryPolicy(maxAttempts: 5, initialDelay: .zero, jitter: 0), clock: time)
        let e = try #require(await providerError { _ = try await b.complete(Self.request) })
        // Two attempts reached the provider and opened the breaker; the third failed at once and ended it.
        #expect(up.count == 2)
        #expect(e.providerType == CircuitBreaker.openType, "\(e)")
        #expect(e.attempts.count == 3)
    }

    @Test func aFallbackChainSkipsAnOpenProviderAtOnce() async throws {
        let primary = Scripted("primary", [.failure(Self.unavailable("primary"))])
        let backup = Scripted("backup", [.success("from backup")])
        let breaker = CircuitBreaker(provider: "primary", settings: CircuitBreakerSettings(failures: 1, open: .seconds(60)), clock: time)
        let chain = FallbackBackend(name: "chain", [.init(CircuitBreakerBackend(primary, breaker: breaker)), .init(backup)], clock: time)
        #expect(try await chain.complete(Self.request).content == "from backup")
        #expect(primary.count == 1)
        for _ in 0..<5 {
            let r = try await chain.complete(Self.request)
            #expect(r.content == "from backup")
            #expect(r.attempts.first?.error.providerType == CircuitBreaker.openType)
        }
        #expect(primary.count == 1, "an open breaker sends nothing to its provider")
        #expect(backup.count == 6)
    }

    @Test func aHealthCheckSaysTheBreakerIsOpenWithoutTakingTheProbe() async throws {
        let up = Scripted("flaky", [.failure(Self.unavailable())])
        let breaker = CircuitBreaker(provider: "flaky", settings: CircuitBreakerSettings(failures: 1, open: .seconds(5)), clock: time)
        let b = CircuitBreakerBackend(up, breaker: breaker)
        #expect(try await b.healthCheck().message == "ok")
        _ = await providerError { _ = try await b.complete(Self.request) }
        let e = try #require(await providerError { _ = try await b.healthCheck() })
        #expect(e.providerType == CircuitBreaker.openType && e.message.contains("is open since"), "\(e)")
        clock.advance(by: .seconds(5))
        #expect(try await b.healthCheck().message == "ok")
        #expect(try breaker.admit() == .probe, "the health check took no probe")
    }

    @Test func theSectionIsReadAndCheckedWithFileLineAndKey() throws {
        let s = try ReliabilitySettings.parse(
            yaml: """
                circuit_breakers:
                  openai: {failures: 5, open_secs: 30}
                  ollama: {open_secs: 2.5}
                """, file: "providers.yaml")
        #expect(s.circuitBreakers["openai"] == CircuitBreakerSettings(failures: 5, open: .seconds(30)))
        #expect(s.circuitBreakers["ollama"] == CircuitBreakerSettings(failures: 5, open: .milliseconds(2500)))
        do {
            _ = try ReliabilitySettings.parse(
                yaml: """
                    circuit_breakers:
                      openai: {failures: 0, open_secs: -1, half_open: 3}
                      ollama: 5
                    """, file: "providers.yaml")
            Issue.record("expected problems")
        } catch {
            let text = "\(error)"
            #expect(text.contains("providers.yaml:2:"), "\(text)")
            #expect(text.contains("circuit_breakers.openai.failures must be at least 1, got 0"), "\(text)")
            #expect(text.contains("circuit_breakers.openai.open_secs must be a number of seconds above 0"), "\(text)")
            #expect(text.contains("half_open"), "\(text)")
            #expect(text.contains("providers.yaml:3:") && text.contains("circuit_breakers.ollama must be a mapping"), "\(text)")
        }
        #expect(s.check(knownProviders: ["openai"]).map(\.message).contains { $0.contains("circuit_breakers names 'ollama', which is not a provider") })
    }
}
