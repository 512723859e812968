import Descartes
import DescartesGateway
import DescartesSupport
import Glibc
import Testing

/// The gateway's issued keys, their rate limits and budgets shared through
/// providers.yaml's `shared:` section (docs/scaling.md, docs/gateway.md):
/// two `descartes serve` processes standing for two hosts (each with its
/// own keys database, one redis-server on 127.0.0.1), keys issued and
/// revoked by `descartes keys` on either, requests sent with curl (the key
/// on its stdin, never in argv).
@Suite struct SharedGatewayKeysTests {
    let plugins = PluginDir().addManifest("openai")
    let work = TempDir("descartes-shared-keys")
    /// Each test's keys under its own prefix on the suite's server.
    let prefix = "k\(UInt32.random(in: 0...UInt32.max)):"

    /// An answer costing $0.009 (20,000 input and 10,000 output tokens of gpt-4o-mini).
    static let answer: JSONValue = [
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [["index": 0, "message": ["role": "assistant", "content": "counted"], "finish_reason": "stop"]],
        "usage": ["prompt_tokens": 20000, "completion_tokens": 10000, "total_tokens": 30000],
    ]

    static func countingServer() async throws -> ScriptedServer {
        let s = try await ScriptedServer.start()
        try await s.script(["POST /v1/chat/completions": []], default: .json(answer))
        return s
    }

    /// providers.yaml of host `host`: its own keys database, the shared section.
    func config(_ host: String, _ server: ScriptedServer, _ redis: RedisServer, _ extra: String = "") -> String {
        work.write(
            "\(host).yaml",
            """
            providers:
              counted: {plugin: openai, endpoint: "\(server.url)/v1", api_key: "sk-upstream-0123456789"}
            server:
              keys_database: \(work.file("\(host)-keys.sqlite3"))
            shared:
              store: \(redis.url)
              prefix: "\(prefix)"
            \(extra)
            """)
    }

    var env: [String: String] { ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"] }

    func keys(_ args: [String], _ config: String) async -> ProcResult {
        await Proc.descartes(["keys"] + args + ["--config", config], env: env)
    }

    /// A gateway on 127.0.0.1:0; its URL.
    func gateway(_ config: String, _ name: String) async throws -> (BackgroundServer, String) {
        var e = Environment.current()
        for (k, v) in env { e[k] = v }
        e["NO_COLOR"] = "1"
        let gw = try await BackgroundServer.start(
            [TestEnv.descartes, "serve", "--config", config, "--listen", "127.0.0.1:0"], log: work.file("\(name).log"), env: e)
        let url = try #require(gw.firstLine.split(separator: " ").last.map(String.init), "\(gw.firstLine) \(gw.log)")
        return (gw, url)
    }

    /// A chat completion through the gateway at `url` with `key`: status and body.
    func ask(_ url: String, _ key: String) async -> (status: Int, body: String) {
        let body = #"{"model":"counted/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#
        let r = await Proc.run(
            [
                "curl", "-s", "-H", "@-", "-H", "Content-Type: application/json", "-d", body, "-w", "\n%{http_code}",
                url + "/v1/chat/completions",
            ], stdin: "Authorization: Bearer \(key)\n", timeout: .seconds(60))
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? -1, lines.dropLast().joined(separator: "\n"))
    }

    /// `GET /metrics` of the gateway at `url`.
    func metrics(_ url: String, _ key: String) async -> String {
        await Proc.run(["curl", "-s", "-H", "@-", url + "/metrics"], stdin: "Authorization: Bearer \(key)\n", timeout: .seconds(60)).stdout
    }

    /// Issues a key with `options` through host `config`; its secret.
    func issue(_ name: String, _ options: [String], _ config: String) async throws -> String {
        let r = await keys(["create", "--name", name] + options, config)
        #expect(r.status == 0, "\(r)")
        let secret = String(r.stdout.split(separator: "\n").first ?? "")
        try #require(secret.hasPrefix("dsk-"), "\(r)")
        return secret
    }

    /// Asks `url` until the answer's status is `status`, for up to 20 s (a
    /// revocation reaches another host's gateway within
    /// `SharedGatewayKeys.lookupTTL`, 1 s; no bound on time is asserted).
    func until(_ status: Int, _ url: String, _ key: String) async -> Int {
        var last = 0
        for _ in 0..<100 {
            last = await ask(url, key).status
            if last == status { return last }
            try? await Task.sleep(for: .milliseconds(200))
        }
        return last
    }

    // MARK: The key store

    @Test func aKeyIssuedOnOneHostIsAcceptedByBothGatewaysAndARevocationOnTheOtherRefusedByBoth() async throws {
        let redis = try RedisServer.shared()
        let server = try await Self.countingServer()
        let hostA = config("a", server, redis)
        let hostB = config("b", server, redis)
        let secret = try await issue("team-a", [], hostA)
        let (gwA, a) = try await gateway(hostA, "a")
        defer { gwA.stop() }
        let (gwB, b) = try await gateway(hostB, "b")
        defer { gwB.stop() }
        // B's own database has no key at all: it requires one all the same
        // (the shared store says one was issued), and accepts A's.
        #expect(await ask(a, secret).status == 200)
        #expect(await ask(b, secret).status == 200, "\(gwB.log)")
        #expect(await ask(b, "dsk-" + String(repeating: "0", count: 64)).status == 401)
        #expect(await ask(b, "").status == 401)

        // The record is the key's hash and settings: never its secret.
        let store = redis.store(prefix: prefix)
        let names = try #require(try store.run([[Array("KEYS".utf8), Array("\(prefix)gwkeys:*".utf8)]]).get().first?.items)
        #expect(names.count == 3, "\(names)")
        func text(_ v: RedisValue) -> String {
            switch v {
            case .string(let b): return String(decoding: b, as: UTF8.self)
            case .array(let a): return a.map(text).joined(separator: " ")
            default: return "\(v)"
            }
        }
        var everything = ""
        for n in names.compactMap(\.bytes) {
            let type = try store.run([[Array("TYPE".utf8), n]]).get().first
            let dump = try store.run([[Array(((type == .status("hash")) ? "HGETALL" : "GET").utf8), n]]).get()
            everything += String(decoding: n, as: UTF8.self) + " " + dump.map(text).joined(separator: " ") + "\n"
        }
        #expect(everything.contains(StoredGatewayKey.hash(of: secret)) && everything.contains("team-a"), "\(everything)")
        #expect(!everything.contains(String(secret.dropFirst(4))), "\(everything)")

        // Revoked through host B (whose file never had it): refused by both.
        let revoked = await keys(["revoke", "team-a"], hostB)
        #expect(revoked.status == 0, "\(revoked)")
        #expect(revoked.stderr.contains("every gateway sharing the store refuses it within 1 s"), "\(revoked)")
        #expect(await until(401, a, secret) == 401, "\(gwA.log)")
        #expect(await until(401, b, secret) == 401, "\(gwB.log)")
        // A's database had it: A revoked it there too.
        #expect(gwA.log.contains("gateway key 'team-a' was revoked on another host (the shared store says so); revoked in "), "\(gwA.log)")
        // A second revocation finds nothing anywhere.
        let again = await keys(["revoke", "team-a"], hostB)
        #expect(again.status == 78 && again.stderr.contains("no active gateway key named 'team-a'"), "\(again)")
        // The name is free again on every host; a key of an active name is refused on the other.
        _ = try await issue("team-a", [], hostB)
        let clash = await keys(["create", "--name", "team-a"], hostA)
        #expect(clash.status == 78, "\(clash)")
        #expect(clash.stderr.contains("has an active gateway key named 'team-a' (issued on another host"), "\(clash)")
        #expect(clash.stdout.isEmpty, "no key printed: \(clash)")
        // The key A's file took before the store refused it is revoked
        // there; A's list has its two revoked keys and B's active one
        // (from the store).
        let listed = try JSONValue.parse(await keys(["list", "--json"], hostA).stdout)
        let rows = try #require(listed["keys"]?.arrayValue)
        #expect(rows.count == 3 && rows.filter { $0["revoked"]?.stringValue != nil }.count == 2, "\(listed)")
        #expect(rows.filter { $0["revoked"] == .null }.map { $0["name"]?.stringValue } == ["team-a"], "\(listed)")
    }

    // MARK: Limits and budgets per key

    @Test func aKeysRequestsPerMinuteAreSharedByTwoGateways() async throws {
        let redis = try RedisServer.shared()
        let server = try await Self.countingServer()
        let breakers = "circuit_breakers:\n  counted: {failures: 5, open_secs: 30}"
        let hostA = config("a", server, redis, breakers)
        let hostB = config("b", server, redis, breakers)
        // 2 requests a minute, a burst of 2: the third waits 30 s.
        let secret = try await issue("limited", ["--rpm", "2"], hostA)
        let (gwA, a) = try await gateway(hostA, "a")
        defer { gwA.stop() }
        let (gwB, b) = try await gateway(hostB, "b")
        defer { gwB.stop() }
        #expect(await ask(a, secret).status == 200)
        #expect(await ask(b, secret).status == 200)
        for url in [a, b] {
            let r = await ask(url, secret)
            #expect(r.status == 429, "\(r)")
            #expect(r.body.contains("the gateway key 'limited' is over its rate limit (2 requests/min)"), "\(r)")
        }
        #expect(try await server.requests().count == 2)
        // /metrics: the store's state and the breaker's.
        let m = await metrics(b, secret)
        for line in [
            "descartes_shared_store_up 1", "descartes_circuit_breaker_state{provider=\"counted\",state=\"closed\"} 1",
            "descartes_circuit_breaker_state{provider=\"counted\",state=\"open\"} 0", "descartes_circuit_breaker_opened_total{provider=\"counted\"} 0",
        ] {
            #expect(m.contains(line + "\n"), "\(line) in \(m)")
        }
        #expect(m.contains("descartes_shared_store_commands_total "), "\(m)")
        #expect(m.contains("descartes_shared_store_after_answer_round_trips_total "), "\(m)")
        #expect(m.contains("descartes_shared_store_dropped_commands_total 0\n"), "\(m)")
    }

    @Test func aKeysBudgetSpentFromTwoGatewaysRefusesTheNextRequestInBoth() async throws {
        let redis = try RedisServer.shared()
        let server = try await Self.countingServer()
        let hostA = config("a", server, redis)
        let hostB = config("b", server, redis)
        let secret = try await issue("budgeted", ["--budget-usd", "0.01", "--period", "day"], hostA)
        let (gwA, a) = try await gateway(hostA, "a")
        defer { gwA.stop() }
        let (gwB, b) = try await gateway(hostB, "b")
        defer { gwB.stop() }
        // $0.009 each: after one from each gateway, $0.018 is spent.
        #expect(await ask(a, secret).status == 200)
        #expect(await ask(b, secret).status == 200)
        for url in [a, b] {
            let r = await ask(url, secret)
            #expect(r.status == 429, "\(r)")
            #expect(r.body.contains("the gateway key 'budgeted' has spent its budget of $0.01 for this day ("), "\(r)")
            #expect(r.body.contains("($0.018 spent)"), "\(r)")
        }
        #expect(try await server.requests().count == 2)
        // One counter in Redis, by the key's hash and the day, expiring after it.
        let store = redis.store(prefix: prefix)
        let names = try #require(try store.run([[Array("KEYS".utf8), Array("\(prefix)spend:gwkey-*".utf8)]]).get().first?.items)
        #expect(names.count == 1, "\(names)")
        let ttl = try store.run([[Array("TTL".utf8), try #require(names.first?.bytes)]]).get().first?.int ?? 0
        #expect(ttl > 3600 && ttl <= 86_400 + 3600, "TTL \(ttl)")
    }

    // MARK: Round trips

    /// A request of a key with a rate limit and a budget costs one round
    /// trip to admit (the limit script, the budget's MGET along), and the
    /// key's lookup at most one per `lookupTTL`.
    /// `descartes keys list` on a host with `shared:` lists the keys issued
    /// on every host, with what they spent through every gateway (the
    /// shared counter), and a revocation made on another host.
    @Test func keysListShowsEveryHostsKeysAndTheirSharedSpend() async throws {
        let redis = try RedisServer.shared()
        let server = try await Self.countingServer()
        let hostA = config("a", server, redis)
        let hostB = config("b", server, redis)
        let secret = try await issue("listed", ["--budget-usd", "1", "--period", "day"], hostA)
        // Another gateway's debit, in the shared counter only.
        let store = redis.store(prefix: prefix)
        let day = BudgetPeriod.day.window(unixMS: Int(time(nil)) * 1000)
        let counter = store.key("spend", "\(SharedGatewayKeys.bucket(hash: StoredGatewayKey.hash(of: secret))):\(day)")
        _ = try store.run([[Array("INCRBYFLOAT".utf8), counter, Array("0.25".utf8)]]).get()
        func listed(_ config: String) async throws -> JSONValue {
            let r = await keys(["list", "--json"], config)
            #expect(r.status == 0, "\(r)")
            let doc = try JSONValue.parse(r.stdout)
            #expect(doc["shared_store"]?.stringValue == redis.url, "\(r.stdout)")
            return try #require(doc["keys"]?.arrayValue?.first { $0["name"]?.stringValue == "listed" }, "\(r.stdout)")
        }
        // B's own database has no key: the store's record and spend.
        let onB = try await listed(hostB)
        #expect(onB["spent_usd"]?.doubleValue == 0.25 && onB["budget_usd"]?.doubleValue == 1 && onB["revoked"] == .null, "\(onB)")
        // A's database has the key, spent nothing here: the store's spend.
        #expect(try await listed(hostA)["spent_usd"]?.doubleValue == 0.25)
        #expect(await keys(["revoke", "listed"], hostA).status == 0)
        #expect(try await listed(hostB)["revoked"]?.stringValue != nil)
        #expect(!(await keys(["list"], hostB)).stdout.contains(secret))
    }

    @Test func admittingAKeysRequestIsOneRoundTrip() async throws {
        let redis = try RedisServer.shared()
        let store = redis.store(prefix: prefix)
        let secret = StoredGatewayKey.newSecret()
        let stored = StoredGatewayKey(
            name: "measured", hash: StoredGatewayKey.hash(of: secret), budgetUSD: 1, period: .day, requestsPerMinute: 1000,
            tokensPerMinute: 1_000_000, createdUnixMS: 1)
        #expect(try SharedGatewayKeys(store: store).create(stored).get())
        let ring = KeyRing(configured: [], store: nil, shared: store, loopback: true, notice: { _ in })
        let key = try #require(ring.key(for: secret))
        #expect(key.name == "measured" && key.limits.requestsPerMinute == 1000)
        // The first admission may load the script (EVALSHA, then EVAL).
        _ = try await ring.admit(key)
        let before = store.stats.roundTrips
        let admission = try await ring.admit(key)
        #expect(store.stats.roundTrips - before == 1)
        #expect(admission.sharedLimits != nil)
        // After the answer, one more once the caller has it: the tokens'
        // correction with the debit along, queued (measured on the second:
        // the first may load the script, which no other test may have
        // loaded into this server yet).
        ring.settle(key, admission, usage: Usage(inputTokens: 900, outputTokens: 100), costUSD: 0.5)
        await store.flush()
        let answered = store.stats
        ring.settle(key, admission, usage: Usage(inputTokens: 900, outputTokens: 100), costUSD: 0.25)
        #expect(store.stats.queued - answered.queued == 3)
        await store.flush()
        #expect(store.stats.roundTrips - answered.roundTrips == 1)
        let day = BudgetPeriod.day.window(unixMS: Int(time(nil)) * 1000)
        let spent = try store.run([[Array("GET".utf8), store.key("spend", "\(KeyRing.bucket(key)):\(day)")]]).get().first?.bytes
        #expect(spent.map { String(decoding: $0, as: UTF8.self) } == "0.75")
        // Within the lookup's time to live the key is not asked for again.
        let lookups = store.stats.roundTrips
        #expect(ring.key(for: secret)?.name == "measured")
        #expect(store.stats.roundTrips - lookups <= 1)
        #expect(store.stats.failures == 0)
    }
}
