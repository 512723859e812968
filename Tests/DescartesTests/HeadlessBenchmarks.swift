import Descartes
import Glibc
import Testing
import DescartesSupport

/// Measurements for the headless backends, run on demand (not timed tests):
///
///     make bench-headless        # = DESCARTES_BENCH=1 swift test --filter HeadlessBenchmarks
///
/// Each prints a line per measurement: median and mean wall-clock time of
/// one request as the caller sees it (ModelBackend.complete), against the
/// scripted Anthropic server on 127.0.0.1.
@Suite(.serialized, .enabled(if: Environment.get("DESCARTES_BENCH") != nil)) struct HeadlessBenchmarks {
    static let rounds = Int(Environment.get("DESCARTES_BENCH_ROUNDS") ?? "") ?? 10

    struct Stats: CustomStringConvertible {
        var samples: [Duration]
        var median: Duration { samples.sorted()[samples.count / 2] }
        var mean: Duration { samples.reduce(.zero, +) / samples.count }
        var description: String {
            func ms(_ d: Duration) -> String {
                let tenths = Int((d.seconds * 10_000).rounded())
                return "\(tenths / 10).\(abs(tenths % 10)) ms"
            }
            return "median \(ms(median)), mean \(ms(mean)), n=\(samples.count)"
        }
    }

    static func time(_ body: () async throws -> Void) async rethrows -> Duration {
        let start = ContinuousClock.now
        try await body()
        return ContinuousClock.now - start
    }

    @Test func claudeSessionTurnVersusFreshSpawn() async throws {
        let h = try await ClaudeHarness()
        try await h.serve([ClaudeHarness.sse("messages-stream-text.sse")])  // repeats
        let b = try h.backend(["nice": 0])  // the tests' niceness off: nothing competes here

        // Fresh: one claude process per request.
        _ = try await b.complete(ModelRequest(prompt: "warm up"))
        var fresh: [Duration] = []
        for i in 0..<Self.rounds {
            fresh.append(try await Self.time { _ = try await b.complete(ModelRequest(prompt: "fresh \(i)")) })
        }

        // Session: the first turn starts the process, later turns reuse it.
        var first = ModelRequest(prompt: "session start")
        first.options = ["session": true]
        var firstTurn: Duration = .zero
        var id = ""
        firstTurn = try await Self.time { id = try await b.complete(first).metadata["session_id"]?.stringValue ?? "" }
        var later: [Duration] = []
        for i in 0..<Self.rounds {
            var r = ModelRequest(prompt: "turn \(i)")
            r.options = ["session_id": .string(id)]
            later.append(try await Self.time {
                let resp = try await b.complete(r)
                #expect(resp.metadata["session_spawned"] == false)
            })
        }
        await b.shutdown()
        let f = Stats(samples: fresh)
        let s = Stats(samples: later)
        print("bench claude-code-cli fresh spawn per request: \(f)")
        print("bench claude-code-cli session first turn (spawn): \(Stats(samples: [firstTurn]))")
        print("bench claude-code-cli session later turn: \(s)")
        print("bench claude-code-cli saving per later turn: \(Stats(samples: [f.median - s.median])) (median)")
    }

    @Test func processRuntimeRoundTrip() async throws {
        // The runtime's own cost: spawn, pipes, poll loop, reaping, the ABI,
        // for a child that does nothing (`true`), one request at a time and
        // 50 at once.
        let plugins = PluginDir().addRepositoryPlugin("headless-cli", library: "headless-cli")
        let b = try plugins.factory().create("headless-cli", config: ["command": "true", "protocol": "text"])
        _ = try await b.complete(ModelRequest(prompt: "x"))
        var one: [Duration] = []
        for _ in 0..<(Self.rounds * 10) {
            one.append(try await Self.time { _ = try await b.complete(ModelRequest(prompt: "x")) })
        }
        let concurrent = try await Self.time {
            try await withThrowingTaskGroup(of: Void.self) { g in
                for _ in 0..<50 { g.addTask { _ = try await b.complete(ModelRequest(prompt: "x")) } }
                try await g.waitForAll()
            }
        }
        await b.shutdown()
        print("bench headless-cli `true` round trip, sequential: \(Stats(samples: one))")
        print("bench headless-cli `true` x50 concurrent, total: \(Stats(samples: [concurrent]))")
    }
}
