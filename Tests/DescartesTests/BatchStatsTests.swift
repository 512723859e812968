import Descartes
import Testing

/// The batch runner (bounded concurrency, input order, failures kept) and
/// the stats layer, as Swift APIs.
@Suite struct BatchStatsTests {
    let dir = PluginDir().addScripted()

    @Test func resultsComeInInputOrderWithFailuresInPlace() async throws {
        let b = try dir.factory().create("scripted")
        // Later requests finish first; one fails; one is not even a request.
        var inputs: [Result<ModelRequest, ProviderError>] = (0..<8).map { i in
            .success(.script(["sleep:\(200 - i * 25)", i == 3 ? "error:provider_unavailable:down" : "text:answer \(i)"]))
        }
        inputs[5] = BatchRunner.parse("{\"messages\": 7}")
        let emitted = Locked<[(Int, String)]>([])
        let progress = Locked<[BatchRunner.Progress]>([])
        let start = ContinuousClock.now
        await BatchRunner(backend: b, concurrency: 4).run(inputs, progress: { p in progress.withLock { $0.append(p) } }) { i, r in
            switch r {
            case .success(let resp): emitted.withLock { $0.append((i, resp.content)) }
            case .failure(let e): emitted.withLock { $0.append((i, "error: \(e.kind): \(e.message)")) }
            }
        }
        let took = ContinuousClock.now - start
        let out = emitted.withLock { $0 }
        #expect(out.map(\.0) == Array(0..<8))
        #expect(out[0].1 == "answer 0")
        #expect(out[3].1 == "error: provider_unavailable: down")
        #expect(out[5].1 == "error: json: not a request: request.messages: expected an array")
        #expect(out[7].1 == "answer 7")
        let last = try #require(progress.withLock { $0.last })
        #expect(last == BatchRunner.Progress(total: 8, done: 8, failed: 2, running: 0))
        // Four at a time, never more.
        #expect(progress.withLock { $0.allSatisfy { $0.running <= 4 } })
        #expect(progress.withLock { $0.first?.running } == 4)
        expectWithin(took, .seconds(30))
        #expect(try await pluginCalls(b) == 7)
    }

    @Test func concurrencyIsBounded() async throws {
        let b = try dir.factory().create("scripted")
        let inputs: [Result<ModelRequest, ProviderError>] = (0..<6).map { _ in .success(.script(["sleep:150", "text:x"])) }
        let start = ContinuousClock.now
        await BatchRunner(backend: b, concurrency: 2).run(inputs) { _, _ in }
        // Three waves of 150 ms.
        #expect(ContinuousClock.now - start >= .milliseconds(440))
    }

    @Test func statsMeasureTimeToFirstTokenTokensAndCost() async throws {
        let meter = UsageMeter()
        let b = StatsBackend(try dir.factory().create("scripted"), meter: meter)
        var events = 0
        for try await _ in b.stream(.script(["sleep:150", "words", "sleep:100", "usage:1000,2000"], prompt: "a b c d")) { events += 1 }
        let s = try #require(meter.last)
        #expect(s.provider == "scripted")
        #expect(s.streamed)
        #expect(s.timeToFirstToken! >= .milliseconds(140))
        expectWithin(s.timeToFirstToken!, .seconds(30))
        #expect(s.duration >= .milliseconds(240))
        #expect(s.usage == Usage(inputTokens: 4, outputTokens: 4))
        // Four tokens over the time from the first one to the end (about
        // 100 ms; measured where the caller sees them).
        let rate = try #require(s.tokensPerSecond)
        #expect(abs(rate - 4 / (s.duration - s.timeToFirstToken!).seconds) < 1e-9)
        #expect(s.costUSD == (4 * 1.0 + 4 * 2.0) / 1_000_000)

        _ = await providerError { _ = try await b.complete(.script(["error:timeout:slow"])) }
        let t = meter.totals
        #expect(t.requests == 2 && t.failures == 1)
        #expect(t.usage.outputTokens == 4)
        #expect(meter.last?.error == .timeout)
    }

    @Test func cacheReadsAndWritesArePricedApart() {
        let p = ModelPrices(input: 3, output: 15, cacheRead: 0.3, cacheWrite: 3.75)
        let u = Usage(inputTokens: 10_000, outputTokens: 1000, cacheReadTokens: 6000, cacheWriteTokens: 2000)
        // 2000 plain input x 3 + 1000 out x 15 + 6000 read x 0.3 + 2000 written x 3.75, per million.
        #expect(abs(p.cost(of: u) - (6000.0 + 15000 + 1800 + 7500) / 1_000_000) < 1e-12)
    }
}
