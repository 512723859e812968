import Descartes
import Testing

/// The retry:, fallbacks:, routes:, cache: and limits: sections of
/// providers.yaml: parsing with positions, and the backends built from them.
@Suite struct ReliabilityConfigTests {
    static let full = """
        providers:            # not ours: left to the providers.yaml loader
          openai: {api_key: x}
        retry:
          max_attempts: 4
          initial_delay: 250ms
          max_delay: 10s
          multiplier: 3
          jitter: 0
          max_retry_after: 2m
          budget: 90
          attempt_timeout: 1.5m
          on: [rate_limited, provider_unavailable]
          restart_streams: true
          providers:
            ollama: {max_attempts: 1}
        fallbacks:
          resilient:
            chain:
              - anthropic
              - claude-code-cli
              - {provider: ollama, model: "llama3.2:3b"}
            on: [rate_limited, timeout, authentication]
          quick: [openai, ollama]
        routes:
          auto:
            candidates: [ollama, {provider: openai, model: gpt-4o-mini}, anthropic]
            strategy: rules
            requires: [tools]
            fallback: false
            expected_output_tokens: 300
            rules:
              - when: {contains: [prove, step by step]}
                use: anthropic
              - when: {max_input_tokens: 2000, tools: false}
                use: ollama
          thrifty:
            candidates: [openai, anthropic]
            strategy: cheapest
        cache:
          max_entries: 500
          max_bytes: 16MB
          ttl: 30m
          directory: ~/.cache/descartes/responses
          providers: [openai, anthropic]
        limits:
          openai: {requests_per_minute: 500, tokens_per_minute: 200000}
          anthropic: {requests_per_minute: 50, request_burst: 5}
        """

    @Test func everySectionIsRead() throws {
        let s = try ReliabilitySettings.parse(yaml: Self.full, file: "providers.yaml", home: "/home/u")
        #expect(s.retry.maxAttempts == 4)
        #expect(s.retry.initialDelay == .milliseconds(250))
        #expect(s.retry.maxDelay == .seconds(10))
        #expect(s.retry.multiplier == 3)
        #expect(s.retry.jitter == 0)
        #expect(s.retry.maxRetryAfter == .seconds(120))
        #expect(s.retry.budget == .seconds(90))
        #expect(s.retry.attemptTimeout == .seconds(90))
        #expect(s.retry.retryOn == [.rateLimited, .providerUnavailable])
        #expect(s.retry.restartStreams)
        // An override starts from the section's own values.
        #expect(s.retryByProvider["ollama"]?.maxAttempts == 1)
        #expect(s.retryByProvider["ollama"]?.initialDelay == .milliseconds(250))

        let resilient = try #require(s.fallbacks["resilient"])
        #expect(resilient.chain.map(\.name) == ["anthropic", "claude-code-cli", "ollama"])
        #expect(resilient.chain[2].model == "llama3.2:3b")
        #expect(resilient.policy.on == [.rateLimited, .timeout, .authentication])
        #expect(s.fallbacks["quick"]?.chain.map(\.name) == ["openai", "ollama"])
        #expect(s.fallbacks["quick"]?.policy == FallbackPolicy())

        let auto = try #require(s.routes["auto"])
        #expect(auto.candidates.map(\.name) == ["ollama", "openai", "anthropic"])
        #expect(auto.candidates[1].model == "gpt-4o-mini")
        #expect(auto.policy.requires == ["tools"])
        #expect(auto.policy.fallback == false)
        #expect(auto.policy.expectedOutputTokens == 300)
        #expect(auto.policy.strategy == .rules([
            RouteRule(when: RouteCondition(containsAny: ["prove", "step by step"]), use: "anthropic"),
            RouteRule(when: RouteCondition(maxInputTokens: 2000, tools: false), use: "ollama"),
        ]))
        #expect(s.routes["thrifty"]?.policy.strategy == .cheapest)

        let cache = try #require(s.cache)
        #expect(cache.enabled)
        #expect(cache.limits == CacheLimits(maxEntries: 500, maxBytes: 16 << 20, ttl: .seconds(1800), directory: "/home/u/.cache/descartes/responses"))
        #expect(cache.providers == ["openai", "anthropic"])
        #expect(s.limits["openai"] == RateLimits(requestsPerMinute: 500, tokensPerMinute: 200_000))
        #expect(s.limits["anthropic"] == RateLimits(requestsPerMinute: 50, requestBurst: 5))

        let known: Set<String> = ["openai", "anthropic", "claude-code-cli", "ollama"]
        #expect(s.check(knownProviders: known).isEmpty)
    }

    @Test func everyProblemIsReportedWithItsPosition() {
        let text = """
            retry:
              max_attempts: 0
              initial_delay: soon
              jiter: 0.1
              on: [rate_limited, rate_limit]
            fallbacks:
              chain-a: [openai, openai]
              Bad_Name: [openai]
              loop-a: [loop-b]
            routes:
              loop-b: {candidates: [loop-a]}
              picky:
                candidates: [openai]
                strategy: fastest
              ruled:
                candidates: [openai, ollama]
                rules:
                  - when: {max_input_tokens: many}
                    use: anthropic
            cache:
              max_bytes: lots
              directory: relative/dir
            limits:
              openai: {requests_per_minute: 0}
              ollama: {}
            """
        do {
            _ = try ReliabilitySettings.parse(yaml: text, file: "/etc/descartes/providers.yaml", home: "/home/u")
            Issue.record("expected problems")
        } catch {
            let messages = error.problems.map(\.description)
            let expected = [
                "/etc/descartes/providers.yaml:2:17: retry.max_attempts must be at least 1 (1 disables retries)",
                "/etc/descartes/providers.yaml:3:18: 'initial_delay' must be a duration (seconds, or a number with ms, s, m or h: 500ms, 2s, 1m), got 'soon'",
                "/etc/descartes/providers.yaml:4:3: unknown retry setting 'jiter' (did you mean 'jitter'?)",
                "/etc/descartes/providers.yaml:5:22: unknown error kind 'rate_limit' (did you mean 'rate_limited'?); kinds: backend, initialization, api, authentication, process, json, http, config, rate_limited, provider_unavailable, unsupported_feature, stream_closed, timeout, invalid_response, cancelled",
                "/etc/descartes/providers.yaml:7:21: fallback chain 'chain-a' names 'openai' twice",
                "/etc/descartes/providers.yaml:8:3: fallback chain name 'Bad_Name' must be lowercase letters, digits and '-'",
                "/etc/descartes/providers.yaml:14:15: route 'picky': unknown strategy 'fastest' (ordered, cheapest, rules)",
                "/etc/descartes/providers.yaml:18:34: 'max_input_tokens' must be an integer, got string 'many'",
                "/etc/descartes/providers.yaml:19:14: route 'ruled': rule uses 'anthropic', which is not one of its candidates (openai, ollama)",
                "/etc/descartes/providers.yaml:21:14: 'max_bytes' must be a size (bytes, or a number with KB, MB or GB), got 'lots'",
                "/etc/descartes/providers.yaml:22:14: cache.directory must be an absolute path (or start with ~/), got 'relative/dir'",
                "/etc/descartes/providers.yaml:24:33: limits.openai.requests_per_minute must be at least 1",
                "/etc/descartes/providers.yaml:25:11: limits.ollama sets neither requests_per_minute nor tokens_per_minute",
                "/etc/descartes/providers.yaml:9:3: 'loop-a' contains itself: loop-a -> loop-b -> loop-a",
            ]
            for e in expected { #expect(messages.contains(e), "missing: \(e)\ngot:\n\(messages.joined(separator: "\n"))") }
            #expect(messages.count == expected.count, "\(messages.joined(separator: "\n"))")
        }
    }

    @Test func namesAreCheckedAgainstTheProviders() throws {
        let s = try ReliabilitySettings.parse(
            yaml: """
                fallbacks:
                  chain: [openai, antropic, auto]
                  openai: [ollama]
                routes:
                  auto: {candidates: [ollama]}
                limits:
                  olama: {requests_per_minute: 5}
                """, file: "p.yaml")
        let problems = s.check(knownProviders: ["openai", "anthropic", "ollama"]).map(\.description)
        #expect(problems.contains("p.yaml:2:19: fallback chain 'chain' names 'antropic', which is not a provider, fallback chain or route (did you mean 'anthropic'?)"))
        #expect(problems.contains("p.yaml:3:3: 'openai' is both a provider and a fallback chain or route; rename one"))
        #expect(problems.contains("p.yaml:7:3: limits names 'olama', which is not a provider (did you mean 'ollama'?)"))
        #expect(problems.count == 3, "\(problems)")
    }

    // MARK: Built backends

    let dir = PluginDir().addScripted(provider: "primary").addScripted(provider: "backup").addEcho()

    func providers(_ yaml: String, overrides: ReliableProviders.Overrides = .init()) throws -> ReliableProviders {
        let settings = try ReliabilitySettings.parse(yaml: yaml, file: "providers.yaml")
        #expect(settings.check(knownProviders: ["primary", "backup", "echo"]).isEmpty)
        return ReliableProviders(settings: settings, factory: dir.factory(), overrides: overrides)
    }

    @Test func aChainFromTheConfigRetriesThenFallsBackAcrossPlugins() async throws {
        let p = try providers("""
            retry: {max_attempts: 2, initial_delay: 10ms, jitter: 0}
            fallbacks:
              resilient: [primary, echo]
            """)
        let b = try p.backend("resilient")
        #expect(b.name == "resilient")
        let r = try await b.complete(.perInstance(["primary": ["error:provider_unavailable:down"]], prompt: "the echo answers"))
        #expect(r.provider == "echo")
        #expect(r.content == "the echo answers")
        #expect(r.attempts.map(\.provider) == ["primary", "primary"])
        await p.shutdown()
    }

    @Test func providersAreSharedAndCreatedOnFirstUse() async throws {
        let p = try providers("""
            fallbacks:
              a: [primary, backup]
              b: [backup, primary]
            """)
        let a = try p.backend("a")
        let b = try p.backend("b")
        _ = try await a.complete(.script(["text:x"]))
        _ = try await b.complete(.script(["text:x"]))
        // One plugin instance per provider: primary answered a, backup b.
        let primary = try p.backend("primary")
        #expect(try await pluginCalls(primary) == 1)
    }

    @Test func theCacheAndRetryOverridesApply() async throws {
        let p = try providers("""
            retry: {max_attempts: 5, initial_delay: 10ms}
            cache: {providers: [primary]}
            """, overrides: .init(retries: 0))
        let primary = try p.backend("primary")
        let err = try #require(await providerError { _ = try await primary.complete(.script(["error:provider_unavailable:down"])) })
        #expect(err.attempts.isEmpty)  // --retries 0 wins over the file
        _ = try await primary.complete(.script(["text:once"]))
        #expect(try await primary.complete(.script(["text:once"])).metadata["cache"] == "hit")
        #expect(p.cache?.stats.hits == 1)
        let backup = try p.backend("backup")
        _ = try await backup.complete(.script(["text:twice"]))
        #expect(try await backup.complete(.script(["text:twice"])).metadata["cache"] == nil)
    }

    @Test func aRouteFromTheConfigExplainsItself() async throws {
        let seen = Locked<[String]>([])
        let p = try providers("""
            routes:
              auto:
                candidates: [echo, primary]
                rules:
                  - when: {tools: true}
                    use: primary
            """, overrides: .init(routeObserver: { d in seen.withLock { $0.append(d.description) } }))
        let b = try p.backend("auto")
        var r = ModelRequest.script(["text:tooled"])
        r.tools = [Tool(name: "t")]
        let answer = try await b.complete(r)
        #expect(answer.provider == "primary")
        #expect(seen.withLock { $0.first?.contains("echo: rejected: lacks tools") } == true)
    }

    @Test func everyMiddlewareRunsOnTheFactorysClock() async throws {
        let clock = ManualClock()
        let settings = try ReliabilitySettings.parse(
            yaml: """
                retry: {max_attempts: 2, initial_delay: 1s, jitter: 0}
                cache: {ttl: 60s}
                limits:
                  primary: {requests_per_minute: 30, request_burst: 1}
                fallbacks:
                  resilient: [primary, backup]
                """, file: "providers.yaml")
        let p = ReliableProviders(settings: settings, factory: dir.factory(clock: DescartesClock(clock)))
        #expect(p.clock == DescartesClock(clock))
        let b = try p.backend("resilient")
        // The chain's total deadline: primary hangs until the host's timer
        // fires at 2 s on the manual clock, and by then the chain's own
        // deadline has passed too, so it does not move on to backup.
        let hung = Task { try await b.complete(.perInstance(["primary": ["hang"], "backup": ["text:too late"]], deadlines: Deadlines(total: .seconds(2)))) }
        try await clock.wait(until: { $0.timers == [.seconds(2)] })
        clock.advance(by: .seconds(2))
        let err = try #require(await providerError { _ = try await hung.value })
        #expect(err.kind == .timeout && err.message == "the total deadline of 2 s passed")
        #expect(try await pluginCalls(p.backend("backup")) == 0)
        // The retry waits 1 s, then the rate limit (one request every 2 s) 1 s more.
        let retried = Task { try await b.complete(.sequence([["error:provider_unavailable:down"], ["text:ok"]])) }
        try await clock.wait(until: { $0.sleeps == [.seconds(1)] })
        clock.advance(by: .seconds(1))
        try await clock.wait(until: { $0.sleeps == [.seconds(1)] })
        clock.advance(by: .seconds(1))
        #expect(try await retried.value.content == "ok")
        // The cache's time to live: a hit, then, 60 s later, a miss.
        #expect(try await b.complete(.sequence([["error:provider_unavailable:down"], ["text:ok"]])).metadata["cache"] == "hit")
        clock.advance(by: .seconds(60))
        let fresh = try await b.complete(.sequence([["error:provider_unavailable:down"], ["text:ok"]]))
        #expect(fresh.metadata["cache"] == nil && fresh.content == "ok")
        await p.shutdown()
    }

    @Test func anUnknownProviderNamedDirectlyFailsAtOnce() throws {
        let p = try providers("")
        #expect(throws: ProviderError.self) { _ = try p.backend("nonesuch") }
    }
}
