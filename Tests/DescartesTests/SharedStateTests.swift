import Descartes
import Glibc
import Testing
import DescartesSupport

/// providers.yaml's `shared:` section: rate limits, cool-downs and the
/// response cache shared through a real redis-server on 127.0.0.1 by
/// separate `descartes` processes, against a counting HTTP server (the
/// scripted server, which stamps every request with its own clock).
@Suite struct SharedStateTests {
    static let key = "sk-shared-state-test-0a1b2c3d4e5f"
    let plugins = PluginDir().addManifest("openai")
    let work = TempDir("descartes-shared")
    /// Each test's keys under its own prefix on the suite's server.
    let prefix = "t\(UInt32.random(in: 0...UInt32.max)):"

    static let answer: JSONValue = [
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [["index": 0, "message": ["role": "assistant", "content": "counted"], "finish_reason": "stop"]],
        "usage": ["prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4],
    ]
    static let rateLimited = #"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#

    /// A counting server answering every chat completion with `answer`
    /// (after `first`, in order).
    static func countingServer(first: [ScriptedServer.Response] = []) async throws -> ScriptedServer {
        let s = try await ScriptedServer.start()
        try await s.script(["POST /v1/chat/completions": first], default: .json(answer))
        return s
    }

    /// providers.yaml: instance `counted` at `server`, `extra` sections.
    func config(_ server: ScriptedServer, _ extra: String, name: String = "providers.yaml") -> String {
        work.write(
            name,
            """
            providers:
              counted:
                plugin: openai
                endpoint: \(server.url)/v1
                api_key: ${COUNTED_KEY}
            \(extra)
            """)
    }

    func shared(_ redis: RedisServer, _ more: String = "") -> String {
        """
        shared:
          store: \(redis.url)
          prefix: "\(prefix)"
        \(more)
        """
    }

    var env: [String: String] { ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent", "COUNTED_KEY": Self.key] }

    func cli(_ args: [String], config: String, timeout: Duration = .seconds(60)) async -> ProcResult {
        await Proc.descartes(["--config", config] + args, env: env, timeout: timeout)
    }

    func bench(_ args: [String], config: String) async -> ProcResult {
        var e = Environment.current()
        e["NO_COLOR"] = "1"
        for (k, v) in env { e[k] = v }
        return await Proc.run([FileSystem.join(TestEnv.binDir, "descartes-bench"), "--config", config] + args, env: e, timeout: .seconds(120))
    }

    /// The most requests the server saw within any `window` seconds.
    static func busiest(_ times: [Double], window: Double) -> Int {
        let t = times.sorted()
        var best = 0
        var j = 0
        for i in t.indices {
            while t[i] - t[j] > window { j += 1 }
            best = max(best, i - j + 1)
        }
        return best
    }

    // MARK: Configuration

    @Test func theSectionIsCheckedWithFileLineAndKey() async throws {
        let server = try await Self.countingServer()
        let bad = config(
            server,
            """
            shared:
              store: rediss://127.0.0.1:6380/0
              password: hunter2-in-the-file
              on_failure: maybe
              command_timeout: 0ms
              colour: blue
              cluster: sometimes
            """)
        let r = await cli(["config", "check"], config: bad)
        #expect(r.status == 78, "\(r)")
        let out = r.stdout + r.stderr
        #expect(out.contains("providers.yaml:7:10: shared.store: 'rediss://' (Redis over TLS) needs hiredis with TLS"), "\(out)")
        #expect(out.contains("providers.yaml:8:13: shared.password is written in the file"), "\(out)")
        #expect(out.contains("shared.on_failure is 'open' (go on under local limits) or 'closed' (refuse requests), got 'maybe'"), "\(out)")
        #expect(out.contains("shared.command_timeout must be more than 0"), "\(out)")
        #expect(out.contains("shared.cluster is true (a Redis Cluster"), "\(out)")
        #expect(out.contains("unknown shared setting 'colour'") || out.contains("'colour'"), "\(out)")
        #expect(!out.contains("hunter2-in-the-file"), "the password is never printed: \(out)")

        let credentials = config(server, "shared: {store: \"redis://user:pw@127.0.0.1:6379\"}", name: "cred.yaml")
        let c = await cli(["config", "check"], config: credentials)
        #expect(c.status == 78)
        #expect((c.stdout + c.stderr).contains("put no credentials in the store's address"), "\(c)")
    }

    @Test func healthChecksTheStoreAndNamesItWithoutThePassword() async throws {
        let redis = try RedisServer.shared()
        let server = try await Self.countingServer()
        let good = config(server, shared(redis))
        let ok = await cli(["health", "-p", "counted", "--json"], config: good)
        let doc = try JSONValue.parse(ok.stdout)
        let store = try #require(doc["results"]?.arrayValue?.first { $0["name"]?.stringValue == "shared store" }, "\(ok)")
        #expect(store["healthy"] == true, "\(ok)")
        #expect(store["message"]?.stringValue == "\(redis.url)", "\(ok)")

        // A port nothing listens on: unhealthy, saying which store and why.
        let downConfig = work.write("down.yaml", """
            providers:
              counted: {plugin: openai, endpoint: \(server.url)/v1, api_key: "${COUNTED_KEY}"}
            shared: {store: "redis://127.0.0.1:\(RedisServer.freePort())/0", password: "${COUNTED_KEY}"}
            """)
        let down = await cli(["health", "-p", "counted"], config: downConfig)
        #expect(down.status != 0, "\(down)")
        #expect(down.stdout.contains("shared store") && down.stdout.contains("unhealthy"), "\(down)")
        #expect(down.stdout.contains("cannot connect to redis://127.0.0.1:"), "\(down)")
        #expect(!(down.stdout + down.stderr).contains(Self.key), "\(down)")
    }

    // MARK: Rate limits and cool-downs

    /// Three processes under 600 requests/min (10/s) with a burst of 2: the
    /// server sees at most 2 + 10 per second from all of them together with
    /// `shared:`, and about three times that without.
    @Test func threeProcessesShareOneRequestLimit() async throws {
        let redis = try RedisServer.shared()
        let limits = "limits:\n  counted: {requests_per_minute: 600, request_burst: 2}"
        func run(_ config: String) async throws -> [Double] {
            let server = try await Self.countingServer()
            let file = self.config(server, limits + "\n" + config, name: "p\(UInt32.random(in: 0...UInt32.max)).yaml")
            async let a = bench(["-p", "counted", "-n", "12", "--warmup", "0", "--concurrency", "2"], config: file)
            async let b = bench(["-p", "counted", "-n", "12", "--warmup", "0", "--concurrency", "2"], config: file)
            async let c = bench(["-p", "counted", "-n", "12", "--warmup", "0", "--concurrency", "2"], config: file)
            for r in await [a, b, c] { #expect(r.status == 0, "\(r)") }
            return try await server.requests().map(\.time)
        }
        let sharedTimes = try await run(shared(redis))
        #expect(sharedTimes.count == 36)
        // 2 at once, then one every 100 ms: within any second at most 2 + 10
        // (+1 for the edges of the window and the server's clock).
        let busiestShared = Self.busiest(sharedTimes, window: 1.0)
        #expect(busiestShared <= 13, "busiest second with shared limits: \(busiestShared)")
        #expect((sharedTimes.max()! - sharedTimes.min()!) >= 3.0, "36 requests at 10/s after a burst of 2 take 3.4 s")

        let localTimes = try await run("")
        #expect(localTimes.count == 36)
        let busiestLocal = Self.busiest(localTimes, window: 1.0)
        #expect(busiestLocal > 20, "each process alone lets 10/s through: \(busiestLocal)")
    }

    /// A model's own limit (`limits.counted.models.gpt-4o-mini`, 1 a minute)
    /// is shared by two processes: the second is refused (its deadline is
    /// shorter than the minute's wait) while another model still goes.
    /// Without `shared:` each process has its own bucket and both go.
    @Test func aModelsOwnLimitIsSharedByTwoProcesses() async throws {
        let redis = try RedisServer.shared()
        let limits = "limits:\n  counted:\n    requests_per_minute: 6000\n    models: {gpt-4o-mini: {requests_per_minute: 1, request_burst: 1}}"
        let server = try await Self.countingServer()
        let file = config(server, limits + "\n" + shared(redis))
        func ask(_ model: String, _ config: String) async -> ProcResult {
            await cli(["complete", "-p", "counted", "-m", model, "--retries", "0", "--timeout", "5", "hi"], config: config)
        }
        let first = await ask("gpt-4o-mini", file)
        #expect(first.status == 0, "\(first)")
        let second = await ask("gpt-4o-mini", file)
        #expect(second.status != 0, "\(second)")
        #expect(second.stderr.contains("the shared rate limit (6000 requests/min; gpt-4o-mini: 1 requests/min) would delay this request"), "\(second)")
        let other = await ask("gpt-4o", file)
        #expect(other.status == 0, "\(other)")
        #expect(try await server.requests().count == 2)
        // The model's bucket is under the provider's hash tag.
        let store = redis.store(prefix: prefix)
        let names = try #require(try store.run([[Array("KEYS".utf8), Array("\(prefix)limit:{counted}:model:*".utf8)]]).get().first?.items)
        #expect(names.compactMap(\.bytes).map { String(decoding: $0, as: UTF8.self) } == ["\(prefix)limit:{counted}:model:gpt-4o-mini:requests"])

        let local = config(server, limits, name: "local.yaml")
        for _ in 0..<2 {
            let r = await ask("gpt-4o-mini", local)
            #expect(r.status == 0, "each process its own bucket: \(r)")
        }
    }

    /// A 429 with `Retry-After: 2` seen by one process pauses the others:
    /// no request reaches the server for 2 s.
    @Test func aRetryAfterSeenByOneProcessPausesTheOthers() async throws {
        let redis = try RedisServer.shared()
        // (The scripted server repeats a route's last response: the answer follows.)
        let server = try await Self.countingServer(first: [.json(Self.rateLimited, status: 429, headers: [("retry-after", "2")]), .json(Self.answer)])
        let file = config(server, shared(redis))
        let first = await cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        #expect(first.status != 0, "\(first)")
        #expect(first.stderr.contains("429") || first.stderr.contains("rate"), "\(first)")
        async let b = cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        async let c = cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        for r in await [b, c] {
            #expect(r.status == 0, "\(r)")
            #expect(r.stdout == "counted\n")
        }
        let t = try await server.requests().map(\.time)
        #expect(t.count == 3)
        for later in t.dropFirst() {
            #expect(later - t[0] >= 1.95, "a request \(later - t[0]) s after the 429 (Retry-After: 2)")
        }
    }

    /// A circuit breaker opened by one process is open for the others: they
    /// fail at once, sending nothing upstream, until `open_secs` has passed;
    /// then one probe goes, and its answer closes the breaker for everyone.
    /// open_secs is long (10 min) so the other processes, however slowly
    /// they start on a loaded machine, run while it is open; what happens
    /// after open_secs is the next test's.
    @Test func aBreakerOpenedByOneProcessIsOpenForTheOthers() async throws {
        let redis = try RedisServer.shared()
        let down = #"{"error":{"message":"overloaded","type":"server_error"}}"#
        let server = try await Self.countingServer(first: [.json(down, status: 503)])
        let file = config(server, shared(redis) + "\ncircuit_breakers:\n  counted: {failures: 1, open_secs: 600}")
        let first = await cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        #expect(first.status != 0, "\(first)")
        #expect(first.stderr.contains("503"), "\(first)")
        async let b = cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        async let c = cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        for r in await [b, c] {
            #expect(r.status != 0, "\(r)")
            #expect(r.stderr.contains("circuit breaker (shared) of counted is open since"), "\(r)")
        }
        #expect(try await server.requests().count == 1, "an open breaker sends nothing upstream")
    }

    /// After open_secs (by the store's clock) the next request, from any
    /// process, is the probe: it is answered and closes the breaker. Only a
    /// lower bound on time is checked, so a slow machine cannot fail it.
    @Test func afterOpenSecsTheNextProcessIsTheProbeAndClosesIt() async throws {
        let redis = try RedisServer.shared()
        let down = #"{"error":{"message":"overloaded","type":"server_error"}}"#
        let server = try await Self.countingServer(first: [.json(down, status: 503), .json(Self.answer)])
        let file = config(server, shared(redis) + "\ncircuit_breakers:\n  counted: {failures: 1, open_secs: 2}")
        let first = await cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        #expect(first.status != 0 && first.stderr.contains("503"), "\(first)")
        try await Task.sleep(for: .milliseconds(2100))
        let probe = await cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        #expect(probe.status == 0, "\(probe)")
        let after = await cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: file)
        #expect(after.status == 0 && after.stdout == "counted\n", "\(after)")
        let t = try await server.requests().map(\.time)
        #expect(t.count == 3)
        if t.count == 3 { #expect(t[1] - t[0] >= 1.95, "the probe went \(t[1] - t[0]) s after the breaker opened (open_secs: 2)") }
    }

    // MARK: Cache

    @Test func anAnswerCachedByOneProcessIsAHitInAnother() async throws {
        let redis = try RedisServer.shared()
        let server = try await Self.countingServer()
        let file = config(server, shared(redis) + "\ncache: {enabled: true, ttl: 60s}")
        let written = ContinuousClock.now
        let a = await cli(["complete", "-p", "counted", "--json", "the same question"], config: file)
        #expect(a.status == 0, "\(a)")
        let b = await cli(["complete", "-p", "counted", "--json", "the same question"], config: file)
        #expect(b.status == 0, "\(b)")
        #expect(try JSONValue.parse(b.stdout)["content"] == "counted")
        #expect(try JSONValue.parse(b.stdout)["metadata"]?["cache"] == "hit", "\(b)")
        #expect(try await server.requests().count == 1)
        // The entry lives in Redis under the prefix, with the cache's time to live.
        let store = redis.store(prefix: prefix)
        let keys = try store.run([[Array("KEYS".utf8), Array("\(prefix)cache:*".utf8)]]).get()
        let names = try #require(keys.first?.items)
        #expect(names.count == 1)
        let ttl = try store.run([[Array("PTTL".utf8), try #require(names.first?.bytes)]]).get().first?.int ?? 0
        // At most 60 s, less at least by the time since the entry could
        // have been written (not a fixed margin: under load the two CLI runs
        // alone can take seconds).
        let since = ContinuousClock.now - written
        let sinceMs = Int(since.components.seconds * 1000 + since.components.attoseconds / 1_000_000_000_000_000)
        #expect(ttl > 0 && ttl <= 60_000 && ttl >= 60_000 - sinceMs - 1, "PTTL \(ttl) ms, \(sinceMs) ms after the first request")
        // A different question is a miss.
        let c = await cli(["complete", "-p", "counted", "--json", "another question"], config: file)
        #expect(try JSONValue.parse(c.stdout)["metadata"]?["cache"] == nil)
        #expect(try await server.requests().count == 2)
    }

    // MARK: Budgets

    /// $0.01 a day for team=research, each answer costing $0.009 (20,000
    /// input and 10,000 output tokens of gpt-4o-mini): two processes spend it
    /// together, and the next request of either is refused.
    @Test func aBudgetSpentFromTwoProcessesRefusesTheNextRequestInBoth() async throws {
        let redis = try RedisServer.shared()
        var answer = Self.answer.objectValue!
        answer["usage"] = ["prompt_tokens": 20000, "completion_tokens": 10000, "total_tokens": 30000]
        let server = try await ScriptedServer.start()
        try await server.script(["POST /v1/chat/completions": []], default: .json(.object(answer)))
        let file = config(server, shared(redis) + "\nbudgets:\n  period: day\n  labels:\n    team=research: 0.01")
        func ask(_ label: String = "team=research") async -> ProcResult {
            await cli(["complete", "-p", "counted", "--retries", "0", "--label", label, "hi"], config: file)
        }
        let a = await ask()
        #expect(a.status == 0, "\(a)")
        let b = await ask()
        #expect(b.status == 0, "\(b)")
        async let a2 = ask()
        async let b2 = ask()
        for r in await [a2, b2] {
            #expect(r.status != 0, "\(r)")
            #expect(r.stderr.contains("the budget of team=research ($0.0100 for this day ("), "\(r)")
            #expect(r.stderr.contains("is spent ($0.0180)"), "\(r)")
        }
        #expect(try await server.requests().count == 2)
        // Another team's requests are not held back.
        let other = await ask("team=infra")
        #expect(other.status == 0, "\(other)")
        // The spend is in Redis, under the prefix, for today.
        let store = redis.store(prefix: prefix)
        let day = BudgetSettings.Period.day.window(unixTime: Int(time(nil)))
        let v = try store.run([[Array("GET".utf8), store.key("spend", "team=research:\(day)")]]).get()
        #expect(v.first?.bytes.flatMap { Double(String(decoding: $0, as: UTF8.self)) }.map { abs($0 - 0.018) < 1e-9 } == true, "\(v)")
    }

    @Test func theDocsExampleIsAValidSection() async throws {
        let redis = try RedisServer.shared()
        let doc = try FileSystem.readText(FileSystem.join(TestEnv.root, "docs/scaling.md"), limit: 1 << 20)
        let lines = doc.split(separator: "\n", omittingEmptySubsequences: false)
        let start = try #require(lines.firstIndex(of: "```yaml"))
        let end = try #require(lines[(start + 1)...].firstIndex(of: "```"))
        let block = lines[(start + 1)..<end].joined(separator: "\n")
        let file = work.write("docs.yaml", block.replacingAll("redis://127.0.0.1:6379/0", with: redis.url))
        let r = await Proc.descartes(["--config", file, "config", "check"], env: env.merging(["REDIS_PASSWORD": "not-used-here-1234"]) { $1 })
        #expect(r.status == 0, "\(r)")
    }

    // MARK: The store failing

    /// While the store does not answer, a provider's breaker is the
    /// process's own: two counted failures open it here, and the third
    /// request fails at once without reaching the provider; /metrics-style
    /// state (`CircuitBreaker.phase`) says open.
    @Test func aBreakerFallsBackToItsLocalStateWhileTheStoreIsDown() async throws {
        let redis = try RedisServer()
        let name = "failing-\(UInt32.random(in: 0...UInt32.max))"
        let settings = try ReliabilitySettings.parse(
            yaml: "circuit_breakers:\n  \(name): {failures: 2, open_secs: 600}\n" + shared(redis, "  retry_interval: 60s"), file: "inline")
        redis.kill()
        let seen = Lock<[Int]>([])
        let p = ReliableProviders(
            settings: settings, overrides: .init(retries: 0),
            create: { Counting(name: $0, seen: seen, store: Lock(nil), failure: ProviderError(.providerUnavailable, "overloaded", provider: $0, status: 503)) },
            manifest: { _ in nil })
        let b = try p.backend(name)
        for _ in 0..<2 {
            let e = try #require(await providerError { _ = try await b.complete(ModelRequest(prompt: "hi")) })
            #expect(e.status == 503, "\(e)")
        }
        let refused = try #require(await providerError { _ = try await b.complete(ModelRequest(prompt: "hi")) })
        #expect(refused.providerType == CircuitBreaker.openType, "\(refused)")
        #expect(seen.withLock { $0.count } == 2, "the third never reached the provider")
        let store = try #require(p.sharedStore)
        #expect(!store.stats.available && store.stats.outages == 1)
        let breaker = CircuitBreaker.shared(for: name, settings: try #require(settings.circuitBreakers[name]), clock: p.clock)
        #expect(breaker.phase == .open && breaker.stats.opened == 1)
    }

    /// Redis killed by pid mid-run and restarted: no request fails, the
    /// outage is told once, and the shared limit is back in Redis after.
    /// 100 requests at 20 a second take 5 s, so the restart (1.5 s in, later
    /// when the machine is loaded) comes well before the run ends.
    @Test func redisKilledMidRunThenRestarted() async throws {
        let redis = try RedisServer()
        let server = try await Self.countingServer()
        let file = config(server, "limits:\n  counted: {requests_per_minute: 1200, request_burst: 1}\n" + shared(redis, "  retry_interval: 100ms"))
        async let run = bench(["-p", "counted", "-n", "100", "--warmup", "0"], config: file)
        // The outage starts once the run is under way (its 5th request
        // answered), not after a fixed time: under load the bench process
        // alone can take longer than any fixed wait to start.
        let started = ContinuousClock.now
        while try await server.requests().count < 5, ContinuousClock.now - started < .seconds(60) {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(try await server.requests().count >= 5, "the run never got under way")
        redis.kill()
        try await Task.sleep(for: .milliseconds(700))
        try redis.start()
        let r = await run
        #expect(r.status == 0, "\(r)")
        #expect(try await server.requests().count == 100)
        let failed = r.stderr.split(separator: "\n").filter { $0.contains("the shared store \(redis.url) failed") }
        #expect(failed.count == 1, "one notice per outage: \(r.stderr)")
        #expect(r.stderr.contains("the shared store \(redis.url) answers again"), "\(r.stderr)")
        // The restarted server (its statistics start at zero) ran the
        // limiter's script: the shared limit took over again.
        let store = redis.store(prefix: prefix)
        let info = try store.run([[Array("INFO".utf8), Array("commandstats".utf8)]]).get()
        let text = info.first?.bytes.map { String(decoding: $0, as: UTF8.self) } ?? ""
        #expect(text.contains("cmdstat_evalsha:calls=") || text.contains("cmdstat_eval:calls="), "\(text)")
    }

    /// A server that accepts connections and never answers: requests finish
    /// within their deadline under the local limits (open), or are refused
    /// at once naming the store (closed).
    @Test func aSilentStoreNeverHoldsARequestPastItsDeadline() async throws {
        let (fd, port) = Self.silentListener()
        defer { close(fd) }
        let server = try await Self.countingServer()
        let open = config(server, "cache: {enabled: true}\nshared: {store: \"redis://127.0.0.1:\(port)/0\", command_timeout: 200ms}", name: "open.yaml")
        let start = ContinuousClock.now
        let r = await cli(["complete", "-p", "counted", "--timeout", "3", "hi"], config: open)
        expectWithin(ContinuousClock.now - start, .seconds(3), "a request with a 3 s deadline, the store silent")
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "counted\n")
        let notices = r.stderr.split(separator: "\n").filter { $0.contains("the shared store redis://127.0.0.1:\(port)/0 failed: no answer in time") }
        #expect(notices.count == 1, "\(r.stderr)")

        let closed = config(server, "shared: {store: \"redis://127.0.0.1:\(port)/0\", command_timeout: 200ms, on_failure: closed}", name: "closed.yaml")
        let c = await cli(["complete", "-p", "counted", "--retries", "0", "hi"], config: closed)
        #expect(c.status != 0)
        #expect(c.stderr.contains("is unavailable") || c.stderr.contains("no answer in time"), "\(c)")
        #expect(c.stderr.contains("on_failure: closed"), "\(c)")
        #expect(try await server.requests().count == 1)
    }

    /// A socket on 127.0.0.1 that listens and never accepts: connecting
    /// succeeds (the kernel's backlog), nothing is ever answered.
    static func silentListener() -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 64)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return (fd, Int(UInt16(bigEndian: a.sin_port)))
    }

    // MARK: Round trips

    /// Answers at once, noting how many round trips the store had made when
    /// the request reached it (what ran before it was sent upstream).
    /// `Counting` backends behind `settings` and the store they share:
    /// each call records in `seen` the store's round trips so far.
    static func counting(_ settings: ReliabilitySettings) throws -> (ReliableProviders, SharedStore, Lock<[Int]>) {
        let seen = Lock<[Int]>([])
        let storeBox = Lock<SharedStore?>(nil)
        let providers = ReliableProviders(
            settings: settings, create: { Counting(name: $0, seen: seen, store: storeBox) }, manifest: { _ in nil })
        let store = try #require(providers.sharedStore)
        storeBox.withLock { $0 = store }
        return (providers, store, seen)
    }

    struct Counting: ModelBackend {
        let name: String
        let seen: Lock<[Int]>
        let store: Lock<SharedStore?>
        /// What every request fails with, when set.
        var failure: ProviderError? = nil
        var mode: ModelProviderMode { .api }
        func initialize() async throws(ProviderError) {}
        func healthCheck() async throws(ProviderError) -> HealthReport { HealthReport(message: "ok") }
        func listModels() async throws(ProviderError) -> [ModelInfo] { [] }
        func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate { Heuristics.tokens(request) }
        func shutdown() async {}
        func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
            let trips = store.withLock { $0?.stats.roundTrips ?? -1 }
            seen.withLock { $0.append(trips) }
            if let failure { throw failure }
            var r = ModelResponse()
            r.content = "counted"
            r.provider = name
            // Far from the estimate: the token bucket's correction always runs.
            r.usage = Usage(inputTokens: 900, outputTokens: 100)
            return r
        }
        func stream(_ request: ModelRequest) -> ModelStream {
            ModelStream(failing: ProviderError(.unsupportedFeature, "complete only", provider: name))
        }
    }

    /// The round trips to the store per request, counted by the store
    /// (docs/scaling.md, "Round trips per request"): before the request is
    /// sent, one, a miss's included (the lookup and the limiter's check in
    /// one script), a hit one, limits without the cache one; after the
    /// answer, the writes (the cache's SET, the token bucket's correction)
    /// go as one batch once the caller has the answer: none are left when
    /// `complete` returns but queued, and `flush` sends them in one.
    @Test func roundTripsPerRequest() async throws {
        let redis = try RedisServer.shared()
        let settings = try ReliabilitySettings.parse(
            yaml: """
                limits:
                  counted: {requests_per_minute: 100000}
                  tokened: {requests_per_minute: 100000, tokens_per_minute: 100000000}
                cache: {enabled: true}
                \(shared(redis))
                """, file: "inline")
        let seen = Lock<[Int]>([])
        let storeBox = Lock<SharedStore?>(nil)
        func providers(noCache: Bool = false) -> ReliableProviders {
            let p = ReliableProviders(
                settings: settings, overrides: .init(noCache: noCache), create: { Counting(name: $0, seen: seen, store: storeBox) },
                manifest: { _ in nil })
            storeBox.withLock { $0 = p.sharedStore }
            return p
        }
        // (before the request, in all) for a miss; a hit; without the cache;
        // and the commands queued after the answer by a miss.
        let expected: [String: (miss: (Int, Int), hit: Int, uncached: (Int, Int), queued: Int)] = [
            "plain": ((1, 2), 1, (1, 1), 1),  // no limits: the shared cool-down's check only
            "counted": ((1, 2), 1, (1, 1), 1),
            "tokened": ((1, 2), 1, (1, 2), 2),
        ]
        for (name, want) in expected.sorted(by: { $0.key < $1.key }) {
            let first = providers()
            let store = try #require(first.sharedStore)
            // The first request may load the scripts (EVALSHA, then EVAL).
            _ = try await first.backend(name).complete(ModelRequest(prompt: "warm-up \(name)"))
            _ = try await providers(noCache: true).backend(name).complete(ModelRequest(prompt: "warm-up \(name)"))
            func trips(_ p: ReliableProviders, _ prompt: String) async throws -> (before: Int?, total: Int, queued: Int) {
                await store.flush()
                let start = store.stats
                let calls = seen.withLock { $0.count }
                _ = try await p.backend(name).complete(ModelRequest(prompt: prompt))
                let queued = store.stats.queued - start.queued
                await store.flush()
                let before: Int? = seen.withLock { s -> Int? in s.count > calls ? s.last! - start.roundTrips : nil }
                return (before, store.stats.roundTrips - start.roundTrips, queued)
            }
            let miss = try await trips(first, "question for \(name)")
            #expect(miss.before == want.miss.0 && miss.total == want.miss.1 && miss.queued == want.queued, "\(name), a miss: \(miss)")
            // A new process's cache: memory empty, the entry in Redis.
            let hit = try await trips(providers(), "question for \(name)")
            #expect(hit.before == nil && hit.total == want.hit && hit.queued == 0, "\(name), a hit: \(hit)")
            let uncached = try await trips(providers(noCache: true), "question for \(name)")
            #expect(uncached.before == want.uncached.0 && uncached.total == want.uncached.1, "\(name), no cache: \(uncached)")
            #expect(store.stats.failures == 0 && store.stats.dropped == 0)
        }
    }

    /// With `cluster: true` no script spans the entry's slot and the
    /// provider's: a miss looks up (GET+PTTL), then the limiter checks.
    @Test func aClusterKeepsTheLookupAndTheLimiterApart() async throws {
        let redis = try RedisServer.shared()
        let settings = try ReliabilitySettings.parse(
            yaml: """
                limits:
                  clustered: {requests_per_minute: 100000}
                cache: {enabled: true}
                \(shared(redis, "  cluster: true\n"))
                """, file: "inline")
        #expect(settings.shared?.cluster == true)
        let (providers, store, seen) = try Self.counting(settings)
        _ = try await providers.backend("clustered").complete(ModelRequest(prompt: "warm-up"))
        await store.flush()
        let start = store.stats.roundTrips
        _ = try await providers.backend("clustered").complete(ModelRequest(prompt: "a question \(UInt64.random(in: 0...UInt64.max))"))
        #expect(seen.withLock { $0.last } == start + 2)
        await store.flush()
        #expect(store.stats.roundTrips == start + 3)
    }

    /// A miss's lookup takes the limiter's share for the first attempt; a
    /// request refused before it reaches the limiter (here by its budget)
    /// gives the share back after it ends, and a request that reaches it
    /// keeps it.
    @Test func anAdmissionNoAttemptUsedIsGivenBack() async throws {
        let redis = try RedisServer.shared()
        let settings = try ReliabilitySettings.parse(
            yaml: """
                limits:
                  refunded: {requests_per_minute: 1}
                cache: {enabled: true}
                budgets: {period: total, labels: {team=spent: 0.5}}
                \(shared(redis))
                """, file: "inline")
        let (providers, store, seen) = try Self.counting(settings)
        let bucket = store.key("limit", "{refunded}", "requests")
        _ = try store.run([[Array("DEL".utf8), bucket], [Array("SET".utf8), store.key("spend", "team=spent:total"), Array("1".utf8)]]).get()
        var refused = ModelRequest(prompt: "refused \(UInt64.random(in: 0...UInt64.max))")
        refused.metadata = ["team": "spent"]
        await #expect(throws: ProviderError.self) { try await providers.backend("refunded").complete(refused) }
        #expect(seen.withLock { $0.isEmpty })
        await store.flush()
        // Taken by the lookup (the TAT one interval ahead), then given back.
        // (One request a minute: the admitted request's bucket then lives a
        // minute, so a slow run still finds it below; at 60 a minute it
        // expired after a second, and a loaded CI run lost it.)
        #expect(try store.run([[Array("GET".utf8), bucket]]).get().first == .null)
        _ = try await providers.backend("refunded").complete(ModelRequest(prompt: "admitted \(UInt64.random(in: 0...UInt64.max))"))
        await store.flush()
        #expect(seen.withLock { $0.count } == 1)
        #expect(try store.run([[Array("GET".utf8), bucket]]).get().first?.int != nil)
        #expect(store.stats.failures == 0)
    }

    // MARK: Pieces

    @Test func scriptNamesAreTheSHA1RedisComputes() throws {
        let redis = try RedisServer.shared()
        let store = redis.store(prefix: prefix)
        for script in [SharedLimits.acquireScript, SharedLimits.lookupScript, SharedLimits.adjustScript, SharedLimits.pauseScript] {
            let r = try store.run([[Array("SCRIPT".utf8), Array("LOAD".utf8), Array(script.source.utf8)]]).get()
            #expect(r.first?.bytes.map { String(decoding: $0, as: UTF8.self) } == script.sha1)
        }
    }

    /// The GCRA script's waits are the in-process token bucket's. A wait is
    /// counted from when Redis ran the script, so each is checked together
    /// with the time since the first call (`elapsed`): on a loaded machine the
    /// calls themselves take time, and the reservations stay where they were.
    @Test func theSharedBucketWaitsAsTheLocalOne() throws {
        let redis = try RedisServer.shared()
        let store = redis.store(prefix: prefix)
        let limits = SharedLimits(store: store, provider: "p", limits: RateLimits(requestsPerMinute: 60, requestBurst: 2))
        let start = ContinuousClock.now
        var waits: [Duration] = []
        var elapsed: [Duration] = []
        for _ in 0..<4 {
            guard case .wait(let w, _) = limits.acquire(tokens: 0, maxWait: nil) else { Issue.record("not granted"); return }
            waits.append(w)
            elapsed.append(ContinuousClock.now - start)
        }
        // A burst of 2, then one per second, reserved ahead: the k-th
        // reservation is k - 1 seconds after the first call.
        #expect(waits[0] == .zero && waits[1] == .zero)
        #expect(waits[2] + elapsed[2] > .milliseconds(900) && waits[2] <= .seconds(1), "\(waits) \(elapsed)")
        #expect(waits[3] + elapsed[3] > .milliseconds(1900) && waits[3] <= .seconds(2), "\(waits) \(elapsed)")
        // A wait past maxWait is refused and takes nothing.
        guard case .refused(let w) = limits.acquire(tokens: 0, maxWait: .milliseconds(500)) else { Issue.record("not refused"); return }
        let refusedAt = ContinuousClock.now - start
        #expect(w + refusedAt > .milliseconds(2900), "\(w) after \(refusedAt)")
        guard case .wait(let again, _) = limits.acquire(tokens: 0, maxWait: nil) else { Issue.record("not granted"); return }
        let againAt = ContinuousClock.now - start
        #expect(again + againAt > .milliseconds(2900) && again <= .seconds(3), "\(again) after \(againAt)")
    }
}
