import Descartes
import DescartesCommandLine
import DescartesSupport
import Glibc

/// `descartes log`: the last attempts in the audit ledger (SQLite) and
/// totals, filtered and grouped; `--file` may name a JSON-lines export,
/// which is loaded into a temporary ledger and read the same way.
enum LogCommand {
    static func run(_ args: Arguments, globals: Globals) -> ExitCode {
        let count: Int
        var query = AuditLedger.Query()
        var groupBy: AuditLedger.GroupBy = .provider
        do throws(UsageError) {
            count = try args.int(.lines) ?? 20
            guard count >= 0 else { throw args.mistake("-n needs a number of entries (0 or more)") }
            query.provider = args.value(.provider)
            query.model = args.value(.model)
            for l in args.all(.label) {
                guard let eq = l.firstIndex(of: "="), eq != l.startIndex else { throw args.mistake("--label needs KEY=VALUE, got '\(l)'") }
                query.labels.append((String(l[..<eq]), String(l[l.index(after: eq)...])))
            }
            if let s = args.value(.since) {
                guard let age = age(s) else { throw args.mistake("--since needs an age: 30m, 1h, 1d, 1w or seconds, got '\(s)'") }
                query.sinceUnixMS = nowUnixMS() - age * 1000
            }
            if let g = args.value(.groupBy) {
                guard let by = AuditLedger.GroupBy(g) else {
                    throw args.mistake("--group-by needs provider, model, day, via, gateway_key or label:NAME, got '\(g)'")
                }
                groupBy = by
            }
        } catch { usageFailure(error) }

        let file: String
        var ledger: AuditLedger
        // A JSON-lines export, loaded into a temporary ledger.
        var export: (load: AuditLedger.ExportLoad, directory: String)?
        if let f = args.value(.file) {
            file = f.hasPrefix("/") ? f : FileSystem.join(FileSystem.currentDirectory(), f)
            ledger = AuditLedger(file: file)
            if FileSystem.exists(file) && !AuditLedger.isDatabase(file) {
                var template = Array(FileSystem.join(Environment.get("TMPDIR").flatMap { $0.hasPrefix("/") ? $0 : nil } ?? "/tmp", "descartes-log.XXXXXX").utf8CString)
                guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
                    failure(ProviderError(.config, "cannot read the audit log \(file): cannot create a temporary directory: \(String(cString: strerror(errno)))"))
                }
                ledger = AuditLedger(file: FileSystem.join(dir, "export.sqlite3"))
                do { export = (try ledger.load(export: file), dir) } catch {
                    removeScratch(dir)
                    failure(ProviderError(.config, "cannot read the audit log \(file): \(error)"))
                }
            }
        } else {
            let config = Commands.configuration(globals)
            let settings: AuditSettings
            do { settings = try config.auditSettings() } catch {
                Out.err("Error: invalid 'audit' section:")
                for p in error.problems { Out.err("  \(p)") }
                return .config
            }
            if !settings.enabled && !FileSystem.exists(settings.database) {
                Out.err("descartes: the audit log is not enabled (set 'audit: {enabled: true}' in providers.yaml; see 'descartes config show')")
                return .config
            }
            file = settings.database
            ledger = AuditLedger(file: file)
        }
        defer { if let export { removeScratch(export.directory) } }
        let recent: [AuditLedger.Row]
        let totals: [AuditLedger.Totals]
        let records: Int
        do {
            recent = try ledger.recent(query, count: count)
            totals = try ledger.totals(query, groupBy: groupBy)
            records = try ledger.count()
        } catch {
            if let export { removeScratch(export.directory) }
            failure(ProviderError(.config, "cannot read the audit ledger: \(error)"))
        }

        if args.flag(.json) {
            var doc: JSONObject = [
                "file": .string(file), "records": .integer(records), "group_by": .string(groupBy.description),
                "entries": .array(recent.map(json)), "totals": .array(totals.map { json($0, groupBy) }),
            ]
            if let export {
                doc["export_records"] = .integer(export.load.records)
                doc["unreadable_lines"] = .integer(export.load.unreadable)
            }
            Out.line(JSONValue.object(doc).prettyText())
            return .ok
        }
        if !FileSystem.exists(file) {
            Out.line("No audit entries yet (\(file) does not exist).")
            return .ok
        }
        let unreadable = export.map { $0.load.unreadable > 0 ? ", \($0.load.unreadable) unreadable line\($0.load.unreadable == 1 ? "" : "s")" : "" } ?? ""
        Out.line(Out.dim("\(file): \(records) entr\(records == 1 ? "y" : "ies")\(unreadable)"))
        if !recent.isEmpty {
            let rows: [[String]] = recent.map { e in
                let outcome = e.outcome == "ok" ? (e.cached ? "ok (cache hit)" : "ok") : "error: \(e.errorKind ?? "?")"
                let tokens = e.inputTokens.map { "\($0)/\(e.outputTokens ?? 0)" } ?? "-"
                let labels = e.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                return [
                    AuditLog.timestamp(unixMS: e.unixMS), e.provider, e.model ?? "-", outcome, tokens, cost(e.costUSD), "\(e.durationMS) ms", e.via ?? "",
                    labels,
                ]
            }
            Out.line(Out.table(["TIME", "PROVIDER", "MODEL", "OUTCOME", "TOKENS IN/OUT", "COST", "DURATION", "VIA", "LABELS"], rows))
            Out.line("")
        }
        let heading: String
        switch groupBy {
        case .provider: heading = "PROVIDER"
        case .model: heading = "MODEL"
        case .day: heading = "DAY"
        case .via: heading = "VIA"
        case .gatewayKey: heading = "GATEWAY KEY"
        case .label(let n): heading = n.uppercased()
        }
        let rows: [[String]] = totals.map { t in
            [
                t.key ?? "-", "\(t.requests)", "\(t.errors)", "\(t.inputTokens)", "\(t.outputTokens)",
                "\(t.cacheReadTokens)/\(t.cacheWriteTokens)", cost(t.costUSD) + (t.unknownCost > 0 ? " (+\(t.unknownCost) unknown)" : ""),
                "\(t.cacheHits)",
            ]
        }
        Out.line(Out.table([heading, "REQUESTS", "ERRORS", "INPUT TOKENS", "OUTPUT TOKENS", "CACHE R/W", "COST (USD)", "CACHE HITS"], rows))
        return .ok
    }

    static func json(_ e: AuditLedger.Row) -> JSONValue {
        var o: JSONObject = [
            "time": .string(AuditLog.timestamp(unixMS: e.unixMS)), "request_id": .string(e.requestID), "operation": .string(e.operation),
            "provider": .string(e.provider), "outcome": .string(e.outcome),
        ]
        o["via"] = e.via.map { .string($0) } ?? .null
        o["plugin"] = e.plugin.map { .string($0) } ?? .null
        o["model"] = e.model.map { .string($0) } ?? .null
        if let k = e.errorKind { o["error_kind"] = .string(k) }
        if let s = e.status { o["status"] = .integer(s) }
        if let i = e.inputTokens {
            o["tokens"] = [
                "input": .integer(i), "output": .integer(e.outputTokens ?? 0), "cache_read": .integer(e.cacheReadTokens ?? 0),
                "cache_write": .integer(e.cacheWriteTokens ?? 0), "reasoning": .integer(e.reasoningTokens ?? 0),
            ]
        } else {
            o["tokens"] = .null
        }
        o["cost_usd"] = e.costUSD.map { .number($0) } ?? .null
        o["cached"] = .bool(e.cached)
        o["duration_ms"] = .integer(e.durationMS)
        o["labels"] = .object(JSONObject(e.labels.sorted { $0.key < $1.key }.map { (key: $0.key, value: JSONValue.string($0.value)) }))
        o["gateway_key"] = e.gatewayKey.map { .string($0) } ?? .null
        o["final"] = .bool(e.final)
        return .object(o)
    }

    static func json(_ t: AuditLedger.Totals, _ by: AuditLedger.GroupBy) -> JSONValue {
        var o: JSONObject = [:]
        o[by.description] = t.key.map { .string($0) } ?? .null
        // The instance, as the JSON-lines summary names it.
        if by == .provider { o["instance"] = t.key.map { .string($0) } ?? .null }
        o["requests"] = .integer(t.requests)
        o["attempts"] = .integer(t.attempts)
        o["errors"] = .integer(t.errors)
        o["input_tokens"] = .integer(t.inputTokens)
        o["output_tokens"] = .integer(t.outputTokens)
        o["cache_read_tokens"] = .integer(t.cacheReadTokens)
        o["cache_write_tokens"] = .integer(t.cacheWriteTokens)
        o["cost_usd"] = t.costUSD.map { .number($0) } ?? .null
        o["unknown_cost"] = .integer(t.unknownCost)
        o["cache_hits"] = .integer(t.cacheHits)
        return .object(o)
    }

    /// An age in seconds: "90" (seconds), "30s", "30m", "1h", "1d", "1w".
    static func age(_ s: String) -> Int? {
        guard let last = s.last else { return nil }
        let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
        if let unit = units[last], let n = Int(s.dropLast()), n >= 0 { return n * unit }
        if let n = Int(s), n >= 0 { return n }
        return nil
    }

    static func nowUnixMS() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec / 1_000_000)
    }

    /// Removes the temporary ledger an export was loaded into.
    static func removeScratch(_ dir: String) {
        for name in ["export.sqlite3", "export.sqlite3-wal", "export.sqlite3-shm", "export.sqlite3-journal"] {
            unlink(FileSystem.join(dir, name))
        }
        rmdir(dir)
    }

    /// Dollars with enough digits for fractions of a cent.
    static func cost(_ d: Double?) -> String {
        guard let d else { return "-" }
        if d == 0 { return "0" }
        let micro = Int((d * 1_000_000).rounded())
        let whole = micro / 1_000_000
        var frac = String(micro % 1_000_000)
        frac = String(repeating: "0", count: 6 - frac.count) + frac
        while frac.hasSuffix("0") { frac.removeLast() }
        return frac.isEmpty ? "\(whole)" : "\(whole).\(frac)"
    }
}
