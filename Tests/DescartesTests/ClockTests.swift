import Descartes
import DescartesPluginKit
import DescartesSupport
import Testing

/// The clock every timed mechanism reads: the manual clock tests drive, and
/// the real one underneath by default.
@Suite struct ClockTests {
    let clock = ManualClock()

    @Test func aManualSleepEndsWhenTheClockPassesItsDeadline() async throws {
        let woke = Locked<[Int]>([])
        let start = clock.now
        let tasks = (1...3).map { n in
            Task { [clock] in
                try await clock.sleep(for: .milliseconds(100 * n))
                woke.withLock { $0.append(n) }
            }
        }
        try await clock.waitForSleeps(3)
        #expect(clock.pending.sleeps == [.milliseconds(100), .milliseconds(200), .milliseconds(300)])
        clock.advance(by: .milliseconds(199))
        // The 100 ms sleep woke; the other two wait for 1 and 101 ms more.
        #expect(clock.pending.sleeps == [.milliseconds(1), .milliseconds(101)])
        try await tasks[0].value
        #expect(woke.withLock { $0 } == [1])
        clock.advance(to: start + .seconds(10))
        for t in tasks { try await t.value }
        #expect(woke.withLock { $0.sorted() } == [1, 2, 3])
        #expect(clock.pending == ManualClock.Pending(sleeps: [], timers: []))
        #expect(clock.now - start == .seconds(10))
        // A deadline that passed does not wait.
        try await clock.sleep(until: start)
    }

    @Test func cancellingAManualSleepEndsItAtOnce() async throws {
        let sleeping = Task { [clock] in try await clock.sleep(for: .seconds(3600)) }
        try await clock.waitForSleeps(1)
        sleeping.cancel()
        await #expect(throws: CancellationError.self) { try await sleeping.value }
        #expect(clock.pending.sleeps.isEmpty)
        // Cancelled before it began: it does not begin.
        let early = Task { [clock] in
            withUnsafeCurrentTask { $0?.cancel() }
            try await clock.sleep(for: .seconds(1))
        }
        await #expect(throws: CancellationError.self) { try await early.value }
        #expect(clock.pending.sleeps.isEmpty)
    }

    @Test func waitingForTheCodeUnderTestGivesUpAfterItsLimit() async throws {
        // Nothing will ever sleep: the wait fails (in real time) instead of hanging the test.
        let error = await #expect(throws: ManualClock.WaitTimeout.self) {
            try await clock.wait(until: { $0.sleeps.count == 1 }, limit: .milliseconds(50))
        }
        #expect(error?.description.contains("sleeps [], timers []") == true)
        // A condition that already holds returns at once.
        try await clock.wait(until: { $0.sleeps.isEmpty }, limit: .zero)
    }

    @Test func theRealClockSleepsOnTheContinuousClockAndHonoursCancellation() async throws {
        let real = DescartesClock()
        #expect(real == .continuous && real != DescartesClock(clock))
        let before = ContinuousClock.now
        try await real.sleep(for: .milliseconds(20))
        #expect(ContinuousClock.now - before >= .milliseconds(20))
        // An hour's sleep ends with the task's cancellation (it would
        // otherwise return normally, and the expectation fail).
        let sleeping = Task { try await real.sleep(for: .seconds(3600)) }
        sleeping.cancel()
        await #expect(throws: CancellationError.self) { try await sleeping.value }
    }

    @Test func theManualWallClockMovesWithIt() {
        let c = DescartesClock(clock)
        let t0 = c.unixTime
        clock.advance(by: .milliseconds(1999))
        #expect(c.unixTime == t0 + 1)
        clock.advance(by: .milliseconds(1))
        #expect(c.unixTime == t0 + 2)
    }

    // MARK: The kit's deadline budget

    @Test func theBudgetCountsWhatIsLeftOnItsClock() {
        let budget = DeadlineBudget(
            Deadlines(connect: .seconds(2), firstToken: .seconds(5), idle: .seconds(1), total: .seconds(8)), clock: DescartesClock(clock))
        #expect(budget.elapsed == .zero)
        #expect(budget.timeouts() == HTTPTimeouts(connect: 2000, firstByte: 5000, idle: 1000, total: 8000))
        #expect(budget.beforeFirstToken()! == ("first_token", .seconds(5), .seconds(5)))
        clock.advance(by: .milliseconds(4500))
        #expect(budget.elapsed == .milliseconds(4500))
        // The next attempt gets what is left; connect and idle apply to each attempt whole.
        #expect(budget.timeouts() == HTTPTimeouts(connect: 2000, firstByte: 500, idle: 1000, total: 3500))
        #expect(budget.beforeFirstToken()! == ("first_token", .seconds(5), .milliseconds(500)))
        clock.advance(by: .seconds(1))
        // Spent: 1 ms each (never 0, which would mean no limit), and the
        // error names the caller's limit, not what was left.
        #expect(budget.timeouts() == HTTPTimeouts(connect: 2000, firstByte: 1, idle: 1000, total: 2500))
        #expect(budget.beforeFirstToken()!.left == .milliseconds(-500))
        let e = budget.expired("first_token", while: "waiting for the model to load")
        #expect(e.message == "the first token deadline of 5 s passed waiting for the model to load")
        #expect(e.kind == .timeout && e.deadline == "first_token")
    }

    @Test func aTotalDeadlineShorterThanTheFirstTokensBindsFirst() {
        let budget = DeadlineBudget(Deadlines(firstToken: .seconds(5), total: .seconds(3)), clock: DescartesClock(clock))
        clock.advance(by: .seconds(1))
        #expect(budget.beforeFirstToken()! == ("total", .seconds(3), .seconds(2)))
    }

    // MARK: docs/reliability.md

    @Test func theDocsExampleRunsAsWritten() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                .error(503, #"{"error":{"message":"The server is overloaded","type":"server_error"}}"#),
                .json(#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}]}"#),
            ]
        ])
        let plugins = PluginDir().addManifest("openai")
        let catalog = PluginCatalog.discover(PluginSearch(directories: [.init(path: plugins.path, origin: "test")]))
        let config: [String: JSONValue] = ["endpoint": .string("\(server.url)/v1"), "api_key": "sk-clock-doc-test-0a1b2c3d"]
        // docs/reliability.md, begin
        let clock = ManualClock()
        let factory = ProviderFactory(catalog: catalog, clock: DescartesClock(clock))
        let backend = RetryBackend(try factory.create("openai", config: config), policy: RetryPolicy(jitter: 0), clock: DescartesClock(clock))

        let answer = Task { try await backend.complete(ModelRequest(prompt: "Hello")) }
        // The first attempt gets a 503: the retry layer sleeps its first backoff, 500 ms.
        try await clock.wait(until: { $0.sleeps == [.milliseconds(500)] })
        clock.advance(by: .milliseconds(500))
        print(try await answer.value.content)
        // docs/reliability.md, end
        let r = try await answer.value
        #expect(r.content == "Hello")
        #expect(r.attempts.map(\.error.status) == [503])
        #expect(try await server.requests().count == 2)
        await backend.shutdown()

        // What ran above is the doc's example, as written.
        let doc = try FileSystem.readText(FileSystem.join(TestEnv.root, "docs/reliability.md"), limit: 1 << 20)
        let section = try #require(doc.firstRange(of: "\n## Time: one injectable clock\n"))
        let open = try #require(doc[section.upperBound...].firstRange(of: "```swift\n"))
        let close = try #require(doc[open.upperBound...].firstRange(of: "\n```\n"))
        let example = String(doc[open.upperBound..<close.lowerBound])
        let source = try FileSystem.readText(FileSystem.join(TestEnv.root, "Tests/DescartesTests/ClockTests.swift"), limit: 1 << 20)
        let begin = try #require(source.firstRange(of: "// docs/reliability.md, begin\n"))
        let end = try #require(source[begin.upperBound...].firstRange(of: "\n        // docs/reliability.md, end"))
        let ran = source[begin.upperBound..<end.lowerBound].split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("        ") ? String($0.dropFirst(8)) : String($0) }.joined(separator: "\n")
        #expect(ran == example)
    }
}
