import Descartes
import DescartesSupport
import Glibc
import Testing

/// ABI 1.1's `embed`, through the C ABI in process and in an isolated
/// helper, and the proof that a plugin built against the 1.0 header keeps
/// working in a 1.1 host.
@Suite struct EmbedTests {
    let dir = PluginDir().addScripted().addEcho().addEcho10()

    static let isolations: [ProviderFactory.Isolation] = [.inProcess, .process(Sanitizer.limits(.isolatedPlugin))]

    @Test(arguments: isolations)
    func aPluginEmbedsABatchThroughTheABI(_ isolation: ProviderFactory.Isolation) async throws {
        let b = try dir.factory().create("scripted", isolation: isolation)
        let e = try await b.embed(["hello world", "a", "one two three"])
        #expect(e.vectors == [[11, 2, 3], [1, 1, 1], [13, 3, 5]])
        #expect(e.dimensions == 3)
        #expect(e.model == "scripted-embed")
        #expect(e.usage.inputTokens == 6)
        #expect(e.provider == "scripted")
        // The request's model and dimensions reach the plugin.
        let short = try await b.embed(EmbeddingRequest(["hello world"], model: "tiny", dimensions: 2))
        #expect(short.vectors == [[11, 2]])
        #expect(short.dimensions == 2)
        #expect(short.model == "tiny")
        // The plugin's errors come back as they were sent.
        let err = try #require(await providerError { _ = try await b.embed(["fine", "error:rate_limited:too many texts"]) })
        #expect(err.kind == .rateLimited)
        #expect(err.message.contains("too many texts"))
        await b.shutdown()
    }

    @Test(arguments: isolations)
    func aPluginBuiltAgainstABI10KeepsWorking(_ isolation: ProviderFactory.Isolation) async throws {
        let old = try dir.factory().create("echo10", isolation: isolation)
        // It loads and answers as before...
        #expect(try await old.complete("built against one point oh").content == "built against one point oh")
        var words: [String] = []
        for try await e in old.stream("still streaming") { if case .textDelta(let t) = e { words.append(t) } }
        #expect(words.joined() == "still streaming")
        #expect(try await old.estimateTokens("four words in here").tokens > 0)
        // ...and has no embed: its struct ends before the member.
        let err = try #require(await providerError { _ = try await old.embed(["text"]) })
        #expect(err.kind == .unsupportedFeature, "\(err)")
        #expect(err.message.contains("embed"), "\(err.message)")
        // Still usable after the refusal.
        #expect(try await old.complete("after").content == "after")
        await old.shutdown()
    }

    @Test func oneAndOnePointOnePluginsWorkSideBySide() async throws {
        let factory = dir.factory()
        let old = try factory.create("echo10")
        let current = try factory.create("echo")
        let swift = try factory.create("scripted", isolation: .process(Sanitizer.limits(.isolatedPlugin)))
        async let a = old.complete("from the old one")
        async let b = current.complete("from the current one")
        async let c = swift.embed(["x y"])
        #expect(try await a.content == "from the old one")
        #expect(try await b.content == "from the current one")
        #expect(try await c.vectors == [[3, 2, 0]])
        // The current C example does not implement embed either (NULL).
        #expect(try #require(await providerError { _ = try await current.embed(["t"]) }).kind == .unsupportedFeature)
        for x in [old, current, swift] { await x.shutdown() }
    }

    /// 1.1 only appended: every struct of the 1.0 header has the same size
    /// and field offsets in the current header, except descartes_backend_t,
    /// which grew by `embed` after its last 1.0 field.
    @Test func theCurrentHeaderOnlyAppendsTo10() async throws {
        let dir = TempDir()
        let probe = dir.write(
            "probe.c",
            """
            #include <descartes/plugin.h>
            #include <stdio.h>
            #define F(t, f) printf(#t "." #f " %zu\\n", offsetof(t, f));
            #define S(t) printf("sizeof " #t " %zu\\n", sizeof(t));
            int main(void) {
                S(descartes_host_t) F(descartes_host_t, get_extension)
                S(descartes_event_t) F(descartes_event_t, data_length)
                S(descartes_batch_extension_t) F(descartes_batch_extension_t, cancel_batch)
                S(descartes_create_args_t) F(descartes_create_args_t, config_length)
                S(descartes_factory_t) F(descartes_factory_t, create)
                S(descartes_library_t) F(descartes_library_t, unload)
                F(descartes_backend_t, initialize) F(descartes_backend_t, health_check) F(descartes_backend_t, complete)
                F(descartes_backend_t, stream) F(descartes_backend_t, list_models) F(descartes_backend_t, estimate_tokens)
                F(descartes_backend_t, shutdown) F(descartes_backend_t, cancel) F(descartes_backend_t, release)
                F(descartes_backend_t, get_extension) F(descartes_backend_t, destroy)
                printf("backend end %zu\\n", offsetof(descartes_backend_t, destroy) + sizeof(void (*)(void)));
                printf("abi %u\\n", DESCARTES_ABI_VERSION);
            #ifdef DESCARTES_ABI_MINOR
                printf("embed %zu size %zu\\n", offsetof(descartes_backend_t, embed), sizeof(descartes_backend_t));
            #else
                printf("size %zu\\n", sizeof(descartes_backend_t));
            #endif
                return 0;
            }
            """)
        func run(_ include: String, _ label: String) async throws -> [String] {
            let exe = dir.file("probe-\(label)")
            let cc = await Proc.run(["cc", "-std=c11", "-I", include, probe, "-o", exe], timeout: .seconds(60))
            #expect(cc.status == 0, "\(cc.stderr)")
            let r = await Proc.run([exe], timeout: .seconds(10))
            return r.stdout.split(separator: "\n").map(String.init)
        }
        let old = try await run(FileSystem.join(TestEnv.root, "Tests/Fixtures/abi-1.0"), "old")
        let new = try await run(FileSystem.join(TestEnv.root, "Sources/CDescartesPlugin/include"), "new")
        #expect(old.count == new.count && old.count > 20)
        #expect(Array(old.dropLast()) == Array(new.dropLast()))
        // The 1.0 backend struct ends where 1.1's embed begins.
        let end = try #require(old.first { $0.hasPrefix("backend end ") }).split(separator: " ").last!
        let oldSize = old.last!.split(separator: " ").last!
        #expect(end == oldSize)
        #expect(new.last!.hasPrefix("embed \(end) size "), "\(new.last!)")
    }

    @Test func embeddingsDocumentsRoundTripAndAreChecked() throws {
        let e = Embeddings(vectors: [[0.1, -2.5, 3], [1e-8, 0, 7]], model: "m", usage: Usage(inputTokens: 4))
        let text = String(decoding: Wire.encode(e), as: UTF8.self)
        #expect(text.contains("0.1,"), "\(text)")  // the shortest form of the Float, not 0.10000000149011612
        let back = try Wire.decodeEmbeddings(try JSONValue.parse(bytes: Wire.encode(e)))
        #expect(back == e)
        let ragged = try JSONValue.parse(bytes: Array(#"{"embeddings": [[1, 2], [3]], "dimensions": 2}"#.utf8))
        #expect(throws: WireError.self) { try Wire.decodeEmbeddings(ragged) }
        do { _ = try Wire.decodeEmbeddings(ragged) } catch { #expect(error.message == "embeddings[1]: 1 numbers, but the vectors have 2 dimensions") }
        let notNumber = try JSONValue.parse(bytes: Array(#"{"embeddings": [[1, "x"]]}"#.utf8))
        do { _ = try Wire.decodeEmbeddings(notNumber) } catch { #expect(error.message == "embeddings[0][1]: expected a finite number, got string") }
        let req = EmbeddingRequest(["a", "b"], model: "m", dimensions: 8, deadlines: Deadlines(total: .seconds(2)))
        #expect(try Wire.decodeEmbeddingRequest(try JSONValue.parse(bytes: Wire.encode(req))) == req)
    }

    /// A backend an application implements without embed refuses it; the
    /// middlewares pass embed through to what they wrap.
    @Test func theDefaultRefusesAndMiddlewaresForward() async throws {
        struct Plain: ModelBackend {
            var name: String { "plain" }
            var mode: ModelProviderMode { .local }
            func initialize() async throws(ProviderError) {}
            func healthCheck() async throws(ProviderError) -> HealthReport { HealthReport(message: "ok") }
            func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse { ModelResponse(content: "x") }
            func stream(_ request: ModelRequest) -> ModelStream { ModelStream(failing: ProviderError(.backend, "no")) }
            func listModels() async throws(ProviderError) -> [ModelInfo] { [] }
            func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate { TokenEstimate(tokens: 1, exact: false, method: "x") }
            func shutdown() async {}
        }
        let err = try #require(await providerError { _ = try await Plain().embed(["t"]) })
        #expect(err.kind == .unsupportedFeature)
        #expect(err.message == "'plain' cannot embed text")
        let scripted = try dir.factory().create("scripted")
        let chain = FallbackBackend(name: "chain", [.init(Plain()), .init(RetryBackend(scripted))])
        let e = try await chain.embed(["a b"])
        #expect(e.vectors == [[3, 2, 1]])
        #expect(e.provider == "scripted")
        await chain.shutdown()
    }

    /// A chain embeds with its first provider that can embed and does not
    /// fall back when that one fails: the next provider's vectors would be
    /// in another model's space (before, a 503 from the first sent the
    /// request on, and an index got vectors of two models).
    @Test func aChainDoesNotMixVectorsOfTwoModels() async throws {
        struct Down: ModelBackend {
            var name: String { "down" }
            var mode: ModelProviderMode { .local }
            func initialize() async throws(ProviderError) {}
            func healthCheck() async throws(ProviderError) -> HealthReport { HealthReport(message: "ok") }
            func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse { ModelResponse(content: "x") }
            func stream(_ request: ModelRequest) -> ModelStream { ModelStream(failing: ProviderError(.backend, "no")) }
            func listModels() async throws(ProviderError) -> [ModelInfo] { [] }
            func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate { TokenEstimate(tokens: 1, exact: false, method: "x") }
            func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings {
                throw ProviderError(.providerUnavailable, "HTTP 503", provider: "down")
            }
            func shutdown() async {}
        }
        let scripted = try dir.factory().create("scripted")
        let chain = FallbackBackend(name: "chain", [.init(Down()), .init(scripted)])
        let err = try #require(await providerError { _ = try await chain.embed(["a b"]) })
        #expect(err.kind == .providerUnavailable)
        #expect(err.provider == "down")
        // Nothing that can embed at all: the refusal says so for the chain.
        struct Mute: ModelBackend {
            var name: String { "mute" }
            var mode: ModelProviderMode { .local }
            func initialize() async throws(ProviderError) {}
            func healthCheck() async throws(ProviderError) -> HealthReport { HealthReport(message: "ok") }
            func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse { ModelResponse(content: "x") }
            func stream(_ request: ModelRequest) -> ModelStream { ModelStream(failing: ProviderError(.backend, "no")) }
            func listModels() async throws(ProviderError) -> [ModelInfo] { [] }
            func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate { TokenEstimate(tokens: 1, exact: false, method: "x") }
            func shutdown() async {}
        }
        let none = FallbackBackend(name: "none", [.init(Mute()), .init(Mute())])
        let refused = try #require(await providerError { _ = try await none.embed(["a"]) })
        #expect(refused.kind == .unsupportedFeature)
        #expect(refused.message == "no provider in chain 'none' can embed text")
        await chain.shutdown()
    }
}

