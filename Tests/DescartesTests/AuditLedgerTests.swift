import Descartes
import Glibc
import Testing
import DescartesSupport
import DescartesSQLite
import Synchronization

/// The audit and spend ledger in SQLite (issue 17): one row per attempt,
/// labels, the provider that answered and the chain it came through,
/// unknown costs kept unknown, cache hits marked, several writers at once.
@Suite struct AuditLedgerTests {
    let plugins = PluginDir().addScripted().addEcho().addScripted(provider: "free", prices: false)
    let work = TempDir("descartes-ledger")

    func cli(_ args: [String], stdin: String? = nil) async -> ProcResult {
        await Proc.descartes(
            ["--config", work.file("providers.yaml")] + args,
            env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": work.file("home"), "XDG_STATE_HOME": work.file("state")], stdin: stdin)
    }

    func config(_ extra: String = "") {
        work.write(
            "providers.yaml",
            """
            providers:
              down: {plugin: scripted, fail_init: down for maintenance}
              e1: {plugin: echo}
            fallbacks:
              both:
                chain: [down, e1]
            audit:
              enabled: true
            \(extra)
            """)
    }

    var database: String { work.file("state/descartes/audit.sqlite3") }

    @Test func labelsTheAnsweringProviderAndTheChainReachTheLedger() async throws {
        config()
        let r = await cli(["complete", "-p", "both", "--label", "agent=a1", "--label", "team=infra", "hello there"])
        #expect(r.status == 0, "\(r)")
        #expect(AuditLedger.isDatabase(database))
        #expect(FileSystem.info(database)!.mode & 0o777 == 0o600)
        let ledger = AuditLedger(file: database)
        let rows = try ledger.recent(.init(), count: 10)
        #expect(rows.count == 2, "\(rows)")
        #expect(rows.map(\.provider) == ["down", "e1"])
        #expect(rows.map(\.via) == ["both", "both"])
        #expect(rows.map(\.plugin) == ["scripted", "echo"])
        #expect(rows.map(\.outcome) == ["error", "ok"])
        #expect(rows.map(\.final) == [false, true])
        #expect(rows[1].inputTokens == 2 && rows[1].outputTokens == 2)
        #expect(rows.allSatisfy { $0.labels == ["agent": "a1", "team": "infra"] })
        #expect(Set(rows.map(\.requestID)).count == 1)

        // The JSON-lines export names who answered, and the labels.
        let line = try JSONValue.parse(try FileSystem.readText(work.file("state/descartes/audit.jsonl"), limit: 1 << 20))
        #expect(line["instance"] == "both")
        #expect(line["provider"] == "e1")
        #expect(line["plugin"] == "echo")
        #expect(line["labels"] == ["agent": "a1", "team": "infra"])

        // "What did agent a1 cost today", in one command, from SQLite.
        _ = await cli(["complete", "-p", "e1", "--label", "agent=a2", "other words here"])
        let byAgent = await cli(["log", "--group-by", "label:agent", "--since", "1d", "--json"])
        #expect(byAgent.status == 0, "\(byAgent)")
        let doc = try JSONValue.parse(byAgent.stdout)
        #expect(doc["file"] == .string(database))
        let totals = try #require(doc["totals"]?.arrayValue)
        let a1 = try #require(totals.first { $0["label:agent"] == "a1" })
        #expect(a1["requests"] == 1)
        #expect(a1["attempts"] == 2)
        #expect(a1["errors"] == 1)
        #expect(a1["input_tokens"] == 2)
        let a2 = try #require(totals.first { $0["label:agent"] == "a2" })
        #expect(a2["input_tokens"] == 3)
        let onlyA1 = try JSONValue.parse(await cli(["log", "--label", "agent=a1", "--json"]).stdout)
        #expect(onlyA1["entries"]?.arrayValue?.count == 2)
        let byProvider = try JSONValue.parse(await cli(["log", "-p", "e1", "--json"]).stdout)
        #expect(byProvider["totals"]?.arrayValue?.map { $0["provider"]?.stringValue } == ["e1"])
        #expect(byProvider["totals"]?[0]?["requests"] == 2)
        let future = try JSONValue.parse(await cli(["log", "--since", "0s", "--group-by", "day", "--json"]).stdout)
        #expect(future["group_by"] == "day")
        let text = await cli(["log", "--group-by", "label:team"])
        #expect(text.status == 0, "\(text)")
        #expect(text.stdout.contains("TEAM"), "\(text)")
        #expect(text.stdout.split(separator: "\n").contains { $0.hasPrefix("infra ") }, "\(text)")
        let bad = await cli(["log", "--group-by", "colour"])
        #expect(bad.status == 64, "\(bad)")
        let badSince = await cli(["log", "--since", "yesterday"])
        #expect(badSince.status == 64, "\(badSince)")
    }

    @Test func unknownCostsStayUnknownAndCacheHitsAreMarkedNotConsumed() async throws {
        config(
            """
            cache:
              enabled: true
            """)
        // "free" has no prices: its cost is unknown, not 0.
        #expect(await cli(["complete", "-p", "free", "--label", "agent=x", "one two three"]).status == 0)
        // The same request twice through a cached provider: the second is a hit.
        #expect(await cli(["complete", "-p", "e1", "--label", "agent=x", "four five"]).status == 0)
        let ledger = AuditLedger(file: database)
        let free = try ledger.totals(.init(provider: "free"), groupBy: .provider)
        #expect(free.count == 1)
        #expect(free[0].costUSD == nil)
        #expect(free[0].unknownCost == 1)
        let rows = try ledger.recent(.init(provider: "free"), count: 5)
        #expect(rows.count == 1 && rows[0].costUSD == nil)
        let doc = try JSONValue.parse(await cli(["log", "-p", "free", "--json"]).stdout)
        #expect(doc["totals"]?[0]?["cost_usd"] == .null)
        #expect(doc["entries"]?[0]?["cost_usd"] == .null)
        // Within one process the response cache answers the second time.
        let batch = work.write("b.jsonl", #"{"messages": [{"role": "user", "content": "same words"}]}"# + "\n" + #"{"messages": [{"role": "user", "content": "same words"}]}"# + "\n")
        let b = await cli(["batch", "-p", "e1", "-c", "1", batch])
        #expect(b.status == 0, "\(b)")
        let e1 = try ledger.recent(.init(provider: "e1"), count: 10)
        #expect(e1.map(\.cached) == [false, false, true], "\(e1)")
        let t = try ledger.totals(.init(provider: "e1"), groupBy: nil)
        #expect(t[0].cacheHits == 1)
        #expect(t[0].requests == 3)
        // Tokens of the hit were not consumed: 2 (four five) + 2 (same words).
        #expect(t[0].inputTokens == 4, "\(t)")
        #expect(t[0].costUSD == 0)
    }

    @Test func threeConcurrentWriterProcessesLoseNothing() async throws {
        config()
        var lines = ""
        for i in 0..<40 { lines += JSONValue.object(["messages": [["role": "user", "content": .string("request \(i)")]]]).jsonText + "\n" }
        let input = work.write("in.jsonl", lines)
        // Three processes, each with four requests in flight, all at once.
        async let a = cli(["batch", "-p", "e1", "-c", "4", "--quiet", "-o", work.file("a.out"), input])
        async let b = cli(["batch", "-p", "e1", "-c", "4", "--quiet", "-o", work.file("b.out"), input])
        async let c = cli(["batch", "-p", "e1", "-c", "4", "--quiet", "-o", work.file("c.out"), input])
        let results = await [a, b, c]
        for r in results { #expect(r.status == 0, "\(r)") }
        let ledger = AuditLedger(file: database)
        #expect(try ledger.count() == 120)
        let t = try ledger.totals(.init(provider: "e1"), groupBy: nil)
        #expect(t[0].requests == 120)
        #expect(t[0].inputTokens == 240)
        // The export has one line per request too.
        let exported = try FileSystem.readText(work.file("state/descartes/audit.jsonl"), limit: 1 << 24).split(separator: "\n")
        #expect(exported.count == 120)
    }

    /// The first writers of a new ledger race to switch it to WAL, which
    /// SQLite answers with BUSY at once (no busy handler) while another
    /// connection holds any lock: the switch waits like every other write
    /// instead of losing the row (seen as 118 of 120 rows under load).
    @Test func aNewLedgerOpenElsewhereStillTakesTheFirstRow() throws {
        let file = work.file("race/audit.sqlite3")
        try FileSystem.makeDirectories(work.file("race"), mode: 0o700)
        // Another process's connection, in the rollback journal a new file
        // starts with, in the middle of a write (BEGIN IMMEDIATE holds the
        // RESERVED lock; without the retry the switch fails in 4 ms).
        let other = try SQLiteDatabase(path: file)
        try other.execute("CREATE TABLE held (x); BEGIN IMMEDIATE;")
        let ledger = AuditLedger(file: file)
        let row = AuditLedger.Row(unixMS: 1_700_000_000_000, requestID: "r1", operation: "complete", provider: "e1", outcome: "ok")
        let done = Mutex<Result<Void, AuditLedgerError>?>(nil)
        Proc.onThread {
            let r = Result { () throws(AuditLedgerError) in try ledger.append([row]) }
            done.withLock { $0 = r }
        }
        usleep(300_000)
        #expect(done.withLock { $0 } == nil, "the append should wait while the other connection holds its lock")
        try other.execute("COMMIT")
        var waited = 0
        while done.withLock({ $0 }) == nil && waited < 10_000 {
            usleep(10_000)
            waited += 10
        }
        let result = try #require(done.withLock { $0 })
        if case .failure(let e) = result { Issue.record("the append failed: \(e)") }
        #expect(try ledger.count() == 1)
    }
}
