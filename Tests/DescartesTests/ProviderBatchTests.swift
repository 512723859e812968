import Descartes
import Testing

/// The host's side of the "descartes.batch/1" ABI extension, driven through
/// the scripted plugin's in-memory batch API, in process and isolated (the
/// helper process forwards extensions by id).
@Suite struct ProviderBatchTests {
    let dir = PluginDir().addScripted().addEcho()

    static let places: [ProviderFactory.Isolation] = [.inProcess, .process(Sanitizer.limits())]

    func batches(_ isolation: ProviderFactory.Isolation = .inProcess) throws -> ProviderBatches {
        try ProviderBatches(try dir.factory().create("scripted", isolation: isolation))
    }

    @Test(arguments: places) func submitPollFetchMatchedByCustomID(_ isolation: ProviderFactory.Isolation) async throws {
        let b = try batches(isolation)
        var first = ModelRequest.script(["text:x"], prompt: "one two", options: ["batch_polls": 3])
        first.model = "scripted-small"
        let submitted = try await b.submit([
            ("a", first),
            ("b", .script(["error:api:context too long"], prompt: "too long")),
            ("c", .script(["text:x"], prompt: "three")),
        ])
        #expect(submitted.id == "batch_1")
        #expect(submitted.state == .inProgress)
        #expect(submitted.providerStatus == "validating")
        #expect(submitted.total == 3)

        let seen = Locked<[ProviderBatchStatus.State]>([])
        let final = try await b.wait(submitted.id, every: .milliseconds(20)) { s in seen.withLock { $0.append(s.state) } }
        #expect(seen.withLock { $0 } == [.inProgress, .inProgress, .ended])
        #expect(final.state == .ended && final.providerStatus == "completed")
        #expect(final.succeeded == 2 && final.failed == 1)

        let results = try await b.results(submitted.id)
        #expect(results.map(\.customID) == ["c", "b", "a"])  // the provider's order
        let byID = Dictionary(uniqueKeysWithValues: results.map { ($0.customID, $0.result) })
        let a = try byID["a"]!.get()
        #expect(a.content == "one two")
        #expect(a.provider == "scripted")
        #expect(a.usage == Usage(inputTokens: 2000, outputTokens: 2000))
        // Manifest prices ($1 in, $2 out per million) at the batch's half price.
        #expect(a.costUSD == (2000 * 1.0 + 2000 * 2.0) / 1_000_000 * 0.5)
        guard case .failure(let e) = byID["b"]! else { Issue.record("b should have failed"); return }
        #expect(e.kind == .api && e.message == "context too long")
    }

    @Test(arguments: places) func cancelAndErrors(_ isolation: ProviderFactory.Isolation) async throws {
        let b = try batches(isolation)
        let s = try await b.submit([("only", .script(["text:x"], options: ["batch_polls": 100]))])
        let c = try await b.cancel(s.id)
        #expect(c.state == .cancelled)
        let err = try #require(await providerError { _ = try await b.status("batch_999") })
        #expect(err.kind == .api && err.status == 404)
        let refused = try #require(await providerError { _ = try await b.submit([("x", .script([], options: ["batch_submit_error": "bad file"]))]) })
        #expect(refused.message == "bad file")
    }

    @Test func customIDsAreCheckedBeforeAnythingIsSent() async throws {
        let b = try batches()
        let err = try #require(await providerError { _ = try await b.submit([("ok-1", ModelRequest(prompt: "x")), ("ok-1", ModelRequest(prompt: "y")), ("bad id!", ModelRequest(prompt: "z"))]) })
        #expect(err.kind == .api)
        #expect(err.details == ["custom_id 'ok-1' appears twice", "custom_id 'bad id!': 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'"])
    }

    @Test func anIsolatedPluginKeepsItsExtensionAcrossARestart() async throws {
        let backend = try dir.factory().create("scripted", isolation: .process(Sanitizer.limits()))
        let b = try ProviderBatches(backend)
        let first = try await b.submit([("a", .script(["text:x"], prompt: "one"))])
        #expect(try await b.status(first.id).state == .ended)
        // The helper dies; the next call starts a new one, which learns the
        // extension again before the batch call reaches it.
        let crash = try #require(await providerError { _ = try await backend.complete(.script(["crash:segv"])) })
        #expect(crash.kind == .process)
        let again = try await b.submit([("b", .script(["text:x"], prompt: "two words"))])
        #expect(again.id == "batch_1")  // a new plugin instance: its batches start over
        let results = try await b.results(try await b.wait(again.id, every: .milliseconds(10)).id)
        #expect(try results.map { try $0.result.get().content } == ["two words"])
        await backend.shutdown()
    }

    @Test(arguments: places) func aPluginWithoutTheExtensionSaysSo(_ isolation: ProviderFactory.Isolation) throws {
        #expect(throws: ProviderError.self) { _ = try ProviderBatches(try dir.factory().create("echo", isolation: isolation)) }
        do { _ = try ProviderBatches(try dir.factory().create("echo")) } catch {
            #expect(error.kind == .unsupportedFeature)
            #expect(error.message == "provider 'echo' has no batch API (its plugin does not offer descartes.batch/1)")
        }
        // Middlewares around a provider are looked through.
        let wrapped = RetryBackend(CacheBackend(try dir.factory().create("scripted"), cache: ResponseCache()))
        #expect(try ProviderBatches(wrapped).provider == "scripted")
    }
}
