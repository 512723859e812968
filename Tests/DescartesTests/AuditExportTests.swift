import Descartes
import DescartesSQLite
import Testing
import DescartesSupport

/// `descartes log --file EXPORT` reads the JSON-lines export through the
/// ledger's own totals (issue 17: the export's summary summed unknown costs
/// as 0 and counted cache hits' tokens), and the gateway key column.
@Suite struct AuditExportTests {
    let plugins = PluginDir().addScripted().addEcho().addScripted(provider: "free", prices: false)
    let work = TempDir("descartes-export")

    func cli(_ args: [String]) async -> ProcResult {
        await Proc.descartes(
            ["--config", work.file("providers.yaml")] + args,
            env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": work.file("home"), "XDG_STATE_HOME": work.file("state")])
    }

    var export: String { work.file("state/descartes/audit.jsonl") }
    var database: String { work.file("state/descartes/audit.sqlite3") }

    @Test func theExportIsTotalledAsTheLedgerIs() async throws {
        work.write(
            "providers.yaml",
            """
            providers:
              down: {plugin: scripted, fail_init: down for maintenance}
              e1: {plugin: echo}
            fallbacks:
              both:
                chain: [down, e1]
            cache:
              enabled: true
            audit:
              enabled: true
            """)
        #expect(await cli(["complete", "-p", "both", "--label", "agent=a1", "--label", "gateway_key=team-infra", "hello there"]).status == 0)
        // No prices: the cost is unknown, not 0.
        #expect(await cli(["complete", "-p", "free", "--label", "agent=a2", "one two three"]).status == 0)
        // The same request twice in one process: the second is a cache hit.
        let same = #"{"messages": [{"role": "user", "content": "same words"}]}"#
        let batch = work.write("b.jsonl", same + "\n" + same + "\n")
        #expect(await cli(["batch", "-p", "e1", "-c", "1", batch]).status == 0)

        for by in ["provider", "label:agent", "via", "gateway_key", "model"] {
            let fromLedger = try JSONValue.parse(await cli(["log", "--group-by", by, "--json"]).stdout)
            let fromExport = try JSONValue.parse(await cli(["log", "--file", export, "--group-by", by, "--json"]).stdout)
            #expect(fromLedger["file"] == .string(database))
            #expect(fromExport["file"] == .string(export))
            #expect(fromExport["export_records"] == 4)
            #expect(fromExport["totals"] == fromLedger["totals"], "--group-by \(by): export \(fromExport["totals"] ?? .null), ledger \(fromLedger["totals"] ?? .null)")
            #expect(fromExport["records"] == fromLedger["records"])
        }
        let doc = try JSONValue.parse(await cli(["log", "--file", export, "--json"]).stdout)
        let totals = try #require(doc["totals"]?.arrayValue)
        let free = try #require(totals.first { $0["provider"] == "free" })
        #expect(free["cost_usd"] == .null)
        #expect(free["unknown_cost"] == 1)
        let e1 = try #require(totals.first { $0["provider"] == "e1" })
        #expect(e1["cache_hits"] == 1)
        // hello there (2) + same words (2); the hit consumed nothing.
        #expect(e1["input_tokens"] == 4, "\(e1)")
        let down = try #require(totals.first { $0["provider"] == "down" })
        #expect(down["errors"] == 1 && down["requests"] == 0)

        // Filters work on an export too.
        let a1 = await cli(["log", "--file", export, "--label", "agent=a1", "--since", "1d", "--json"])
        #expect(a1.status == 0, "\(a1)")
        #expect(try JSONValue.parse(a1.stdout)["entries"]?.arrayValue?.map { $0["provider"]?.stringValue } == ["down", "e1"])

        // The gateway key has its own column, not a label, in both.
        let rows = try AuditLedger(file: database).recent(.init(gatewayKey: "team-infra"), count: 10)
        #expect(rows.map(\.provider) == ["down", "e1"])
        #expect(rows.allSatisfy { $0.gatewayKey == "team-infra" && $0.labels == ["agent": "a1"] })
        let line = try JSONValue.parse(String(try FileSystem.readText(export, limit: 1 << 20).split(separator: "\n")[0]))
        #expect(line["gateway_key"] == "team-infra")
        #expect(line["labels"] == ["agent": "a1"])
        let byKey = try JSONValue.parse(await cli(["log", "--group-by", "gateway_key", "--json"]).stdout)
        #expect(byKey["totals"]?.arrayValue?.compactMap { $0["gateway_key"]?.stringValue } == ["team-infra"])
        let text = await cli(["log", "--file", export, "--group-by", "key"])
        #expect(text.status == 0 && text.stdout.contains("GATEWAY KEY"), "\(text)")
    }

    @Test func anExportWithUnreadableLinesIsCountedAndTotalled() throws {
        let file = work.write(
            "audit.jsonl",
            """
            {"time":"2026-12-07T01:00:00.000Z","instance":"a","outcome":"ok","tokens":{"input":10,"output":5},"cost_usd":0.5}
            {"time":"2026-12-07T01:00:01.000Z","instance":"b","outcome":"error","error_kind":"timeout","tokens":null,"cost_usd":null}
            not json
            {"time":"2026-12-07T01:00:02.500Z","instance":"a","outcome":"ok","tokens":{"input":1,"output":2},"cost_usd":0.25}
            {"time":"2026-12-07T01:00:03.000Z","instance":"a","outcome":"ok","tokens":{"input":7,"output":7},"cost_usd":null}
            {"time":"2026-12-07T01:00:04.000Z","instance":"a","outcome":"ok","tokens":{"input":9,"output":9},"cost_usd":0,"cached":true}

            """)
        let ledger = AuditLedger(file: work.file("loaded.sqlite3"))
        let load = try ledger.load(export: file)
        #expect(load == AuditLedger.ExportLoad(records: 5, unreadable: 1))
        let totals = try ledger.totals(.init(), groupBy: .provider)
        #expect(totals.map(\.key) == ["a", "b"])
        let a = totals[0]
        #expect(a.requests == 4 && a.errors == 0 && a.cacheHits == 1)
        #expect(a.inputTokens == 18 && a.outputTokens == 14)
        #expect(a.costUSD == 0.75 && a.unknownCost == 1)
        #expect(totals[1].errors == 1 && totals[1].costUSD == nil)
        #expect(try ledger.recent(.init(), count: 1).first?.unixMS == AuditLedger.unixMS(rfc3339: "2026-12-07T01:00:04.000Z"))
        #expect(AuditLedger.unixMS(rfc3339: "2026-12-07T01:00:02.500Z") == 1_796_605_202_500)
        #expect(try ledger.totals(.init(sinceUnixMS: 1_796_605_202_000), groupBy: nil).first?.requests == 3)
    }

    @Test func aLedgerMadeBeforeTheGatewayKeyColumnGainsIt() throws {
        let file = work.file("old.sqlite3")
        do {
            let db = try SQLiteDatabase(path: file)
            try db.execute(
                """
                CREATE TABLE attempts (
                    id INTEGER PRIMARY KEY, unix_ms INTEGER NOT NULL, time TEXT NOT NULL, request_id TEXT NOT NULL, operation TEXT NOT NULL,
                    via TEXT, provider TEXT NOT NULL, plugin TEXT, model TEXT, outcome TEXT NOT NULL, error_kind TEXT, status INTEGER,
                    input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER, cache_write_tokens INTEGER, reasoning_tokens INTEGER,
                    cost_usd REAL, cached INTEGER NOT NULL DEFAULT 0, duration_ms INTEGER NOT NULL DEFAULT 0, labels TEXT NOT NULL DEFAULT '{}',
                    final INTEGER NOT NULL DEFAULT 1);
                INSERT INTO attempts (unix_ms, time, request_id, operation, provider, outcome) VALUES (1, 'then', 'r0', 'complete', 'old', 'ok');
                """)
        }
        // Read first (descartes log on an old ledger), then written.
        #expect(try AuditLedger(file: file).recent(.init(), count: 5).map(\.gatewayKey) == [nil])
        let ledger = AuditLedger(file: file)
        try ledger.append([AuditLedger.Row(unixMS: 2, requestID: "r1", operation: "complete", provider: "new", outcome: "ok", gatewayKey: "k1")])
        let rows = try ledger.recent(.init(), count: 5)
        #expect(rows.map(\.provider) == ["old", "new"])
        #expect(rows.map(\.gatewayKey) == [nil, "k1"])
    }
}
