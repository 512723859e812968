import Descartes
import Testing

extension ModelRequest {
    /// A request for scripted plugins under several instance names, each
    /// running its own script.
    static func perInstance(_ scripts: [String: [String]], prompt: String = "hello scripted world", deadlines: Deadlines = Deadlines()) -> ModelRequest {
        var byInstance = JSONObject()
        for (k, v) in scripts.sorted(by: { $0.key < $1.key }) { byInstance[k] = .array(v.map { .string($0) }) }
        return ModelRequest(messages: [.user(prompt)], options: ["by_instance": .object(byInstance), "script": ["words"]], deadlines: deadlines)
    }
}

/// Fallback chains over real plugins (the scripted Swift plugin under two
/// names, and the C echo plugin), through the C ABI.
@Suite struct FallbackTests {
    let dir = PluginDir().addScripted(provider: "primary").addScripted(provider: "backup").addEcho()

    func backend(_ name: String) throws -> any ModelBackend { try dir.factory().create(name) }

    @Test func aRateLimitedPrimaryFallsBackAndTheResponseSaysWho() async throws {
        let chain = FallbackBackend(name: "chain", [.init(try backend("primary")), .init(try backend("backup"))])
        let r = try await chain.complete(.perInstance(["primary": ["retry_after:100", "error:rate_limited:slow down"], "backup": ["text:from backup"]]))
        #expect(r.provider == "backup")
        #expect(r.content == "from backup")
        #expect(r.attempts.count == 1)
        #expect(r.attempts[0].provider == "primary")
        #expect(r.attempts[0].error.kind == .rateLimited)
        #expect(r.attempts[0].error.status == 429)
        #expect(r.attempts[0].error.retryAfter == .milliseconds(100))
    }

    @Test func whenEveryProviderFailsTheErrorListsThemAll() async throws {
        let primary = try backend("primary")
        let backup = try backend("backup")
        let chain = FallbackBackend(name: "chain", [.init(primary), .init(backup)])
        let err = try #require(await providerError {
            _ = try await chain.complete(.perInstance(["primary": ["error:provider_unavailable:primary is down"], "backup": ["error:authentication:bad key"]]))
        })
        #expect(err.kind == .authentication)
        #expect(err.provider == "backup")
        #expect(err.attempts.map(\.provider) == ["primary", "backup"])
        #expect(err.attempts.map(\.error.kind) == [.providerUnavailable, .authentication])
        #expect(try await pluginCalls(primary) == 1)
        #expect(try await pluginCalls(backup) == 1)
    }

    @Test func aCPluginAnswersAfterASwiftOne() async throws {
        let chain = FallbackBackend(name: "chain", [.init(try backend("primary")), .init(try backend("echo"), model: .providerDefault)])
        var request = ModelRequest.script(["error:timeout:slow"], prompt: "echo answers this")
        request.model = "scripted-large"
        let r = try await chain.complete(request)
        #expect(r.provider == "echo")
        #expect(r.content == "echo answers this")
        #expect(r.model == "echo-1")
        #expect(r.attempts.map(\.error.kind) == [.timeout])
    }

    @Test func aBadRequestDoesNotMoveOn() async throws {
        let backup = try backend("backup")
        let chain = FallbackBackend(name: "chain", [.init(try backend("primary")), .init(backup)])
        let err = try #require(await providerError {
            _ = try await chain.complete(.perInstance(["primary": ["error:api:max_tokens is too large"], "backup": ["text:never"]]))
        })
        #expect(err.kind == .api)
        #expect(err.provider == "primary")
        #expect(err.attempts.isEmpty)
        #expect(try await pluginCalls(backup) == 0)
    }

    @Test func theKindsThatMoveOnAreConfigurable() async throws {
        let backup = try backend("backup")
        let chain = FallbackBackend(name: "chain", [.init(try backend("primary")), .init(backup)], policy: FallbackPolicy(on: [.rateLimited]))
        let err = try #require(await providerError {
            _ = try await chain.complete(.perInstance(["primary": ["error:provider_unavailable:down"], "backup": ["text:never"]]))
        })
        #expect(err.kind == .providerUnavailable)
        #expect(try await pluginCalls(backup) == 0)
    }

    @Test func retriesInsideAChainAreFlattenedIntoItsAttempts() async throws {
        let primary = RetryBackend(try backend("primary"), policy: RetryPolicy(maxAttempts: 3, initialDelay: .milliseconds(10), jitter: 0))
        let chain = FallbackBackend(name: "chain", [.init(primary), .init(try backend("backup"))])
        let r = try await chain.complete(.perInstance(["primary": ["error:provider_unavailable:down"], "backup": ["text:finally"]]))
        #expect(r.provider == "backup")
        #expect(r.content == "finally")
        #expect(r.attempts.map(\.provider) == ["primary", "primary", "primary"])
        #expect(r.attempts.allSatisfy { $0.error.attempts.isEmpty && $0.duration > .zero })
    }

    @Test func aProviderThatCannotBeCreatedIsAFailedAttempt() async throws {
        let factory = dir.factory()
        let missing = LazyBackend(name: "anthropic", mode: .api) { try factory.create("anthropic") }
        let chain = FallbackBackend(name: "chain", [.init(missing), .init(try backend("backup"))])
        let r = try await chain.complete(.script(["text:from backup"]))
        #expect(r.provider == "backup")
        #expect(r.attempts.count == 1)
        #expect(r.attempts[0].provider == "anthropic")
        #expect(r.attempts[0].error.kind == .config)
        #expect(r.attempts[0].error.message.contains("unknown provider 'anthropic'"))
    }

    @Test func eachProviderGetsItsModel() async throws {
        let chain = FallbackBackend(name: "chain", [
            .init(try backend("primary")),
            .init(try backend("backup"), model: .named("scripted-large")),
        ])
        var request = ModelRequest.perInstance(["primary": ["echo-model", "error:timeout:slow"], "backup": ["echo-model"]])
        request.model = "asked-for"
        let r = try await chain.complete(request)
        #expect(r.provider == "backup")
        #expect(r.content == "scripted-large")
        let first = FallbackBackend(name: "c", [.init(try backend("primary")), .init(try backend("backup"), model: .providerDefault)])
        let r2 = try await first.complete(request)
        #expect(r2.content == "")  // the backup was asked for its default model (none named)
    }

    @Test func aStreamFallsBackBeforeItsFirstTokenOnly() async throws {
        let chain = FallbackBackend(name: "chain", [.init(try backend("primary")), .init(try backend("echo"), model: .providerDefault)])
        var texts: [String] = []
        var finish: ModelResponse?
        var notices: [String] = []
        for try await e in chain.stream(.script(["error:stream_closed:cut early"], prompt: "streamed by echo")) {
            if case .textDelta(let t) = e { texts.append(t) }
            if case .notice(_, let m) = e { notices.append(m) }
            if case .finish(let r) = e { finish = r }
        }
        #expect(texts.joined() == "streamed by echo")
        #expect(finish?.provider == "echo")
        #expect(finish?.attempts.map(\.error.kind) == [.streamClosed])
        #expect(notices == ["primary failed (stream_closed): falling back to echo"])

        // Once text reached the caller, the chain does not move on.
        let backup = try backend("backup")
        let strict = FallbackBackend(name: "strict", [.init(try backend("primary")), .init(backup)])
        texts = []
        let err = try #require(await providerError {
            for try await e in strict.stream(.perInstance(["primary": ["text:half an ans", "error:stream_closed:cut"], "backup": ["text:never"]])) {
                if case .textDelta(let t) = e { texts.append(t) }
            }
        })
        #expect(texts == ["half an ans"])
        #expect(err.kind == .streamClosed)
        #expect(try await pluginCalls(backup) == 0)
    }
}
