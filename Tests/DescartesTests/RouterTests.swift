import Descartes
import Testing

extension PluginDir {
    /// The scripted plugin under `provider`, with the manifest facts a
    /// router reads.
    @discardableResult
    func addRoutable(_ provider: String, mode: String = "api", capabilities: [String], model: String, context: Int, price: (Double, Double)?) -> PluginDir {
        dir.write(
            "\(provider).yaml",
            """
            manifest_version: 1
            provider: \(provider)
            version: 0.1.0
            library: \(TestEnv.swiftPlugin("scripted"))
            factory: scripted
            abi: 1
            mode: \(mode)
            capabilities: [\(capabilities.joined(separator: ", "))]
            default_model: \(model)
            models:
              - id: \(model)
                context: \(context)
            \(price.map { "    price: {input: \($0.0), output: \($0.1)}" } ?? "")
            config:
              greeting: {type: string, default: hello}
            """)
        return self
    }
}

/// Routing by capability, context, cost and rules, with --explain's reasons.
@Suite struct RouterTests {
    let dir = PluginDir()
        .addRoutable("local", mode: "local", capabilities: ["stream"], model: "small-1", context: 2048, price: (0, 0))
        .addRoutable("cheap", capabilities: ["stream", "tools"], model: "cheap-1", context: 16000, price: (0.15, 0.6))
        .addRoutable("smart", capabilities: ["stream", "tools", "vision", "reasoning"], model: "smart-1", context: 200_000, price: (3, 15))

    func candidates(_ names: [String]) throws -> [RouteCandidate] {
        let f = dir.factory()
        return try names.map { RouteCandidate(try f.create($0), manifest: try f.manifest(for: $0)) }
    }

    @Test func capabilitiesAndContextDecideWhoIsEligible() throws {
        let router = RouterBackend(name: "auto", candidates: try candidates(["local", "cheap", "smart"]))
        var withTools = ModelRequest(prompt: "what is the weather")
        withTools.tools = [Tool(name: "weather")]
        let d = router.decide(withTools)
        #expect(d.required == ["tools"])
        #expect(d.order == ["cheap", "smart"])
        #expect(d.verdicts[0].rejected == "lacks tools")

        var vision = ModelRequest(prompt: "describe the picture")
        vision.metadata["requires"] = "vision"
        #expect(router.decide(vision).order == ["smart"])

        let long = ModelRequest(prompt: String(repeating: "word ", count: 4000))  // about 5000 tokens
        let dl = router.decide(long)
        #expect(dl.order == ["cheap", "smart"])
        #expect(dl.verdicts[0].rejected?.hasPrefix("context of 2048 tokens is too small") == true)

        var thinking = ModelRequest(prompt: "think hard")
        thinking.options["thinking"] = ["type": "enabled"]
        #expect(router.decide(thinking).order == ["smart"])
    }

    @Test func cheapestFirstByManifestPrices() throws {
        let router = RouterBackend(name: "auto", candidates: try candidates(["smart", "cheap", "local"]), policy: RoutePolicy(strategy: .cheapest))
        let d = router.decide(ModelRequest(prompt: "hello"))
        #expect(d.order == ["local", "cheap", "smart"])
        let smart = try #require(d.verdicts.first { $0.candidate == "smart" })
        // About 8 input tokens and 512 expected output at $3/$15 per million.
        #expect(smart.estimatedCostUSD! > 0.0075 && smart.estimatedCostUSD! < 0.008)
    }

    @Test func rulesStateASimpleComplexityRule() throws {
        let rules: [RouteRule] = [
            RouteRule(when: RouteCondition(containsAny: ["prove", "step by step"]), use: "smart"),
            RouteRule(when: RouteCondition(maxInputTokens: 200, tools: false), use: "local"),
        ]
        let router = RouterBackend(name: "auto", candidates: try candidates(["cheap", "local", "smart"]), policy: RoutePolicy(strategy: .rules(rules)))
        #expect(router.decide(ModelRequest(prompt: "hi there")).order == ["local", "cheap", "smart"])
        #expect(router.decide(ModelRequest(prompt: "Prove that there are infinitely many primes")).order == ["smart", "cheap", "local"])
        let big = router.decide(ModelRequest(prompt: String(repeating: "a long story ", count: 100)))
        #expect(big.order == ["cheap", "local", "smart"])
        #expect(big.reason == "strategy: rules; no rule chose an eligible candidate, so the configured order")
        var tools = ModelRequest(prompt: "hi")
        tools.tools = [Tool(name: "t")]
        #expect(router.decide(tools).order == ["cheap", "smart"])
    }

    @Test func theExplanationSaysWhy() throws {
        var policy = RoutePolicy(strategy: .cheapest)
        policy.requires = ["tools"]
        let router = RouterBackend(name: "auto", candidates: try candidates(["smart", "local", "cheap"]), policy: policy)
        let text = router.decide(ModelRequest(prompt: "hello")).description
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0] == "route 'auto': input about 8 tokens, needs tools")
        #expect(lines[1].hasPrefix("  smart: eligible, estimated $0.007"))
        #expect(lines[2] == "  local: rejected: lacks tools, estimated $0")
        #expect(lines[3].hasPrefix("  cheap: eligible, estimated $0.0003"))
        #expect(lines[4] == "  strategy: cheapest first (expecting 512 output tokens)")
        #expect(lines[5] == "  order: cheap -> smart")
    }

    @Test func theChosenProviderAnswersAndFailuresMoveDownTheOrder() async throws {
        let seen = Locked<[RouteDecision]>([])
        let f = dir.factory()
        var list = try candidates(["local", "cheap", "smart"])
        list[1] = RouteCandidate(try f.create("cheap"), manifest: try f.manifest(for: "cheap"), model: "cheap-1")
        let router = RouterBackend(
            name: "auto", candidates: list, policy: RoutePolicy(strategy: .cheapest),
            observer: { d in seen.withLock { $0.append(d) } })
        let r = try await router.complete(.perInstance(["local": ["echo-model"]]))
        #expect(r.provider == "local")
        #expect(r.content == "")  // no model named: the provider's default, not the request's
        var request = ModelRequest.perInstance(["local": ["error:provider_unavailable:down"], "cheap": ["echo-model"]])
        request.model = "not-for-routes"
        let r2 = try await router.complete(request)
        #expect(r2.provider == "cheap")
        #expect(r2.content == "cheap-1")
        #expect(r2.attempts.map(\.provider) == ["local"])
        #expect(seen.withLock { $0.count } == 2)
    }

    @Test func noEligibleCandidateIsAClearError() async throws {
        let router = RouterBackend(name: "auto", candidates: try candidates(["local"]))
        var r = ModelRequest(prompt: "hi")
        r.tools = [Tool(name: "t")]
        let err = try #require(await providerError { _ = try await router.complete(r) })
        #expect(err.kind == .unsupportedFeature)
        #expect(err.message == "no provider of route 'auto' can serve this request")
        #expect(err.details == ["local: lacks tools"])
    }

    @Test func routingFactsDoNotReachTheProvider() async throws {
        let router = RouterBackend(name: "auto", candidates: try candidates(["smart"]))
        var r = ModelRequest.script(["echo-metadata"])
        r.metadata = ["requires": "vision", "trace": "kept"]
        let answer = try await router.complete(r)
        #expect(try JSONValue.parse(answer.content) == ["trace": "kept"])
    }
}
