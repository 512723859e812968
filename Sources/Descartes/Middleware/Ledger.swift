import Glibc
import DescartesSupport
internal import DescartesSQLite

/// A failure to write or read the audit ledger: the file and SQLite's words.
public struct AuditLedgerError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}

/// The audit and spend ledger: one SQLite database (WAL mode, mode 0600),
/// one row per attempt, written by every process that uses the providers
/// and read by `descartes log`. See docs/configuration.md ("The audit
/// ledger") for the columns and why SQLite.
///
/// A row names the provider that made the attempt (for a chain, the one
/// that answered, and each that failed before it), the chain or route the
/// request came through (`via`), the request's `metadata` labels, tokens
/// with prompt-cache reads and writes apart, the cost (NULL when unknown,
/// never 0), and whether the answer came from the response cache.
public final class AuditLedger: Sendable {
    /// One attempt.
    public struct Row: Sendable, Equatable {
        public var unixMS: Int
        public var requestID: String
        public var operation: String
        public var via: String?
        public var provider: String
        public var plugin: String?
        public var model: String?
        public var outcome: String
        public var errorKind: String?
        public var status: Int?
        public var inputTokens: Int?
        public var outputTokens: Int?
        public var cacheReadTokens: Int?
        public var cacheWriteTokens: Int?
        public var reasoningTokens: Int?
        public var costUSD: Double?
        public var cached: Bool
        public var durationMS: Int
        public var labels: [String: String]
        /// The name (or id) of the key a server such as the gateway served
        /// the request for, from the request's `gateway_key` label
        /// (`AuditLedger.gatewayKeyLabel`); never the key itself.
        public var gatewayKey: String?
        /// The request's last attempt (the answer, or the error it ended with).
        public var final: Bool

        public init(
            unixMS: Int, requestID: String, operation: String, via: String? = nil, provider: String, plugin: String? = nil, model: String? = nil,
            outcome: String, errorKind: String? = nil, status: Int? = nil, inputTokens: Int? = nil, outputTokens: Int? = nil,
            cacheReadTokens: Int? = nil, cacheWriteTokens: Int? = nil, reasoningTokens: Int? = nil, costUSD: Double? = nil,
            cached: Bool = false, durationMS: Int = 0, labels: [String: String] = [:], gatewayKey: String? = nil, final: Bool = true
        ) {
            self.unixMS = unixMS
            self.requestID = requestID
            self.operation = operation
            self.via = via
            self.provider = provider
            self.plugin = plugin
            self.model = model
            self.outcome = outcome
            self.errorKind = errorKind
            self.status = status
            self.inputTokens = inputTokens
            self.outputTokens = outputTokens
            self.cacheReadTokens = cacheReadTokens
            self.cacheWriteTokens = cacheWriteTokens
            self.reasoningTokens = reasoningTokens
            self.costUSD = costUSD
            self.cached = cached
            self.durationMS = durationMS
            self.labels = labels
            self.gatewayKey = gatewayKey
            self.final = final
        }
    }

    /// What to select.
    public struct Query: Sendable {
        public var provider: String?
        public var model: String?
        public var labels: [(name: String, value: String)] = []
        /// Rows at or after this time (Unix milliseconds).
        public var sinceUnixMS: Int?
        /// Rows served for this gateway key (its name).
        public var gatewayKey: String?
        public init(
            provider: String? = nil, model: String? = nil, labels: [(name: String, value: String)] = [], sinceUnixMS: Int? = nil,
            gatewayKey: String? = nil
        ) {
            self.provider = provider
            self.model = model
            self.labels = labels
            self.sinceUnixMS = sinceUnixMS
            self.gatewayKey = gatewayKey
        }
    }

    /// How totals are grouped.
    public enum GroupBy: Sendable, Equatable {
        case provider, model, day, via, gatewayKey
        case label(String)

        /// `provider`, `model`, `day`, `via`, `gateway_key`, or `label:NAME`.
        public init?(_ text: String) {
            switch text {
            case "provider": self = .provider
            case "model": self = .model
            case "day": self = .day
            case "via", "chain", "route": self = .via
            case "gateway_key", "key": self = .gatewayKey
            default:
                guard text.hasPrefix("label:"), text.count > 6 else { return nil }
                self = .label(String(text.dropFirst(6)))
            }
        }

        public var description: String {
            switch self {
            case .provider: return "provider"
            case .model: return "model"
            case .day: return "day"
            case .via: return "via"
            case .gatewayKey: return "gateway_key"
            case .label(let n): return "label:\(n)"
            }
        }
    }

    /// Totals of one group. Tokens and cost leave out answers from the
    /// response cache (nothing was consumed); `costUSD` is nil when no row
    /// of the group has a known cost, and `unknownCost` counts the answers
    /// whose cost is unknown.
    public struct Totals: Sendable, Equatable {
        public var key: String?
        public var requests = 0
        public var attempts = 0
        public var errors = 0
        public var inputTokens = 0
        public var outputTokens = 0
        public var cacheReadTokens = 0
        public var cacheWriteTokens = 0
        public var costUSD: Double?
        public var unknownCost = 0
        public var cacheHits = 0
    }

    /// The reserved `metadata` label a server that serves requests for API
    /// keys of its own (the gateway) sets to the key's name or id, never
    /// the key: the ledger keeps it in the `gateway_key` column (not among
    /// the labels), so `descartes log --group-by gateway_key` answers what
    /// each key spent.
    public static let gatewayKeyLabel = "gateway_key"

    public let file: String
    private let connection: Lock<SQLiteDatabase?>

    public init(file: String) {
        self.file = file
        connection = Lock(nil)
    }

    static let schema = """
        CREATE TABLE IF NOT EXISTS attempts (
            id INTEGER PRIMARY KEY,
            unix_ms INTEGER NOT NULL,
            time TEXT NOT NULL,
            request_id TEXT NOT NULL,
            operation TEXT NOT NULL,
            via TEXT,
            provider TEXT NOT NULL,
            plugin TEXT,
            model TEXT,
            outcome TEXT NOT NULL,
            error_kind TEXT,
            status INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cache_read_tokens INTEGER,
            cache_write_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost_usd REAL,
            cached INTEGER NOT NULL DEFAULT 0,
            duration_ms INTEGER NOT NULL DEFAULT 0,
            labels TEXT NOT NULL DEFAULT '{}',
            final INTEGER NOT NULL DEFAULT 1,
            gateway_key TEXT
        );
        CREATE INDEX IF NOT EXISTS attempts_time ON attempts (unix_ms);
        CREATE INDEX IF NOT EXISTS attempts_request ON attempts (request_id);
        """

    /// The open connection (opened, and the schema made, on first use).
    private func withDatabase<T>(create: Bool, _ body: (SQLiteDatabase) throws(SQLiteError) -> T) throws(SQLiteError) -> T {
        try connection.withLock { (c: inout SQLiteDatabase?) throws(SQLiteError) -> T in
            if c == nil {
                if create {
                    let dir = FileSystem.directory(of: file)
                    if !FileSystem.isDirectory(dir) {
                        do { try FileSystem.makeDirectories(dir, mode: 0o700) } catch {
                            throw SQLiteError(code: 0, message: "\(file): cannot create its directory: \(error)")
                        }
                    }
                }
                var db = try SQLiteDatabase(path: file, create: create, readOnly: !create)
                if !create, try !Self.hasGatewayKey(db) {
                    // A ledger made before the gateway_key column, read
                    // first: it gains the column as a writer would add it.
                    db = try SQLiteDatabase(path: file, create: false, readOnly: false)
                    try db.transaction { () throws(SQLiteError) in try Self.addGatewayKey(db) }
                }
                if create {
                    // WAL: readers do not block the writer nor the writer
                    // them; several processes append at once, each waiting
                    // for the others' short transactions (busy timeout).
                    // (Switching to WAL answers BUSY at once while another
                    // process has the new file open: retried.)
                    _ = try db.retryingWhileBusy { () throws(SQLiteError) in try db.query("PRAGMA journal_mode=WAL") }
                    try db.execute("PRAGMA synchronous=NORMAL")
                    try db.transaction { () throws(SQLiteError) in
                        try db.execute(Self.schema)
                        // A ledger made before the gateway_key column gains it
                        // (in the same transaction: one process adds it).
                        try Self.addGatewayKey(db)
                    }
                }
                c = db
            }
            return try body(c!)
        }
    }

    /// Whether the attempts table has the gateway_key column (true when
    /// there is no table yet: nothing to add it to).
    static func hasGatewayKey(_ db: SQLiteDatabase) throws(SQLiteError) -> Bool {
        let columns = try db.query("PRAGMA table_info(attempts)")
        return columns.isEmpty || columns.contains { $0.count > 1 && $0[1].string == "gateway_key" }
    }

    /// Adds the gateway_key column to a ledger made before it (call in a transaction).
    static func addGatewayKey(_ db: SQLiteDatabase) throws(SQLiteError) {
        if try !hasGatewayKey(db) { try db.execute("ALTER TABLE attempts ADD COLUMN gateway_key TEXT") }
    }

    /// Appends the attempts of one request in one transaction.
    public func append(_ rows: [Row]) throws(AuditLedgerError) {
        do { try insert(rows) } catch { throw AuditLedgerError(message: error.message) }
    }

    func insert(_ rows: [Row]) throws(SQLiteError) {
        guard !rows.isEmpty else { return }
        try withDatabase(create: true) { db throws(SQLiteError) in
            try db.transaction { () throws(SQLiteError) in
                for r in rows {
                    let labels = JSONValue.object(JSONObject(r.labels.sorted { $0.key < $1.key }.map { (key: $0.key, value: JSONValue.string($0.value)) })).jsonText
                    try db.query(
                        """
                        INSERT INTO attempts (unix_ms, time, request_id, operation, via, provider, plugin, model, outcome, error_kind, status,
                            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd, cached, duration_ms,
                            labels, final, gateway_key)
                        VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', ? / 1000.0, 'unixepoch'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                        [
                            .integer(r.unixMS), .integer(r.unixMS), .text(r.requestID), .text(r.operation), Self.text(r.via), .text(r.provider),
                            Self.text(r.plugin), Self.text(r.model), .text(r.outcome), Self.text(r.errorKind), Self.int(r.status),
                            Self.int(r.inputTokens), Self.int(r.outputTokens), Self.int(r.cacheReadTokens), Self.int(r.cacheWriteTokens),
                            Self.int(r.reasoningTokens), r.costUSD.map { .real($0) } ?? .null, .integer(r.cached ? 1 : 0), .integer(r.durationMS),
                            .text(labels), .integer(r.final ? 1 : 0), Self.text(r.gatewayKey),
                        ])
                }
            }
        }
    }

    static func text(_ s: String?) -> SQLiteValue { s.map { .text($0) } ?? .null }
    static func int(_ i: Int?) -> SQLiteValue { i.map { .integer($0) } ?? .null }

    /// The WHERE clause and its values for `q`.
    static func filter(_ q: Query) -> (String, [SQLiteValue]) {
        var clauses: [String] = []
        var values: [SQLiteValue] = []
        if let p = q.provider {
            // A chain or route name finds what came through it too.
            clauses.append("(provider = ? OR via = ?)")
            values += [.text(p), .text(p)]
        }
        if let m = q.model {
            clauses.append("model = ?")
            values.append(.text(m))
        }
        for l in q.labels {
            clauses.append("json_extract(labels, ?) = ?")
            values += [.text(labelPath(l.name)), .text(l.value)]
        }
        if let s = q.sinceUnixMS {
            clauses.append("unix_ms >= ?")
            values.append(.integer(s))
        }
        if let k = q.gatewayKey {
            clauses.append("gateway_key = ?")
            values.append(.text(k))
        }
        return (clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND "), values)
    }

    /// A JSON path for a label name (quoted, so any name works).
    static func labelPath(_ name: String) -> String {
        "$.\"" + name.replacingAll("\"", with: "\\\"") + "\""
    }

    /// Totals per group (one group, key nil, without `groupBy`), largest
    /// cost first, then by key.
    public func totals(_ q: Query, groupBy: GroupBy?) throws(AuditLedgerError) -> [Totals] {
        do { return try selectTotals(q, groupBy: groupBy) } catch { throw AuditLedgerError(message: error.message) }
    }

    func selectTotals(_ q: Query, groupBy: GroupBy?) throws(SQLiteError) -> [Totals] {
        guard FileSystem.exists(file) else { return [] }
        let (whereClause, values) = Self.filter(q)
        var keyValues: [SQLiteValue] = []
        let key: String
        switch groupBy {
        case nil: key = "NULL"
        case .provider?: key = "provider"
        case .model?: key = "model"
        case .via?: key = "via"
        case .gatewayKey?: key = "gateway_key"
        case .day?: key = "strftime('%Y-%m-%d', unix_ms / 1000, 'unixepoch')"
        case .label(let n)?:
            key = "json_extract(labels, ?)"
            keyValues.append(.text(Self.labelPath(n)))
        }
        let sql = """
            SELECT \(key) AS k, SUM(final), COUNT(*), SUM(outcome != 'ok'),
                SUM(CASE WHEN cached = 0 THEN input_tokens ELSE 0 END), SUM(CASE WHEN cached = 0 THEN output_tokens ELSE 0 END),
                SUM(CASE WHEN cached = 0 THEN cache_read_tokens ELSE 0 END), SUM(CASE WHEN cached = 0 THEN cache_write_tokens ELSE 0 END),
                SUM(CASE WHEN cached = 0 THEN cost_usd END), SUM(outcome = 'ok' AND cached = 0 AND cost_usd IS NULL), SUM(cached)
            FROM attempts \(whereClause) GROUP BY k ORDER BY SUM(CASE WHEN cached = 0 THEN cost_usd END) DESC, k
            """
        let rows = try withDatabase(create: false) { db throws(SQLiteError) in try db.query(sql, keyValues + values) }
        return rows.map { r in
            var t = Totals()
            t.key = r[0].string
            t.requests = r[1].int ?? 0
            t.attempts = r[2].int ?? 0
            t.errors = r[3].int ?? 0
            t.inputTokens = r[4].int ?? 0
            t.outputTokens = r[5].int ?? 0
            t.cacheReadTokens = r[6].int ?? 0
            t.cacheWriteTokens = r[7].int ?? 0
            t.costUSD = r[8].double
            t.unknownCost = r[9].int ?? 0
            t.cacheHits = r[10].int ?? 0
            return t
        }
    }

    /// The last `count` attempts that match, oldest first.
    public func recent(_ q: Query, count: Int) throws(AuditLedgerError) -> [Row] {
        do { return try selectRecent(q, count: count) } catch { throw AuditLedgerError(message: error.message) }
    }

    func selectRecent(_ q: Query, count: Int) throws(SQLiteError) -> [Row] {
        guard FileSystem.exists(file), count > 0 else { return [] }
        let (whereClause, values) = Self.filter(q)
        let sql = """
            SELECT unix_ms, request_id, operation, via, provider, plugin, model, outcome, error_kind, status, input_tokens, output_tokens,
                cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd, cached, duration_ms, labels, final, gateway_key
            FROM attempts \(whereClause) ORDER BY id DESC LIMIT ?
            """
        let rows = try withDatabase(create: false) { db throws(SQLiteError) in try db.query(sql, values + [.integer(count)]) }
        return rows.reversed().map { r in
            var labels: [String: String] = [:]
            if let text = r[18].string, case .object(let o)? = try? JSONValue.parse(text) {
                for m in o { if let s = m.value.stringValue { labels[m.key] = s } }
            }
            return Row(
                unixMS: r[0].int ?? 0, requestID: r[1].string ?? "", operation: r[2].string ?? "", via: r[3].string, provider: r[4].string ?? "",
                plugin: r[5].string, model: r[6].string, outcome: r[7].string ?? "", errorKind: r[8].string, status: r[9].int,
                inputTokens: r[10].int, outputTokens: r[11].int, cacheReadTokens: r[12].int, cacheWriteTokens: r[13].int,
                reasoningTokens: r[14].int, costUSD: r[15].double, cached: r[16].int == 1, durationMS: r[17].int ?? 0, labels: labels,
                gatewayKey: r[20].string, final: r[19].int == 1)
        }
    }

    /// The number of rows (attempts).
    public func count() throws(AuditLedgerError) -> Int {
        guard FileSystem.exists(file) else { return 0 }
        do {
            return try withDatabase(create: false) { db throws(SQLiteError) in try db.query("SELECT COUNT(*) FROM attempts") }.first?.first?.int ?? 0
        } catch { throw AuditLedgerError(message: error.message) }
    }

    /// Whether `path` is an SQLite database (its header).
    public static func isDatabase(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 16)
        guard read(fd, &header, 16) == 16 else { return false }
        return header == Array("SQLite format 3".utf8) + [0]
    }

    /// The current time in Unix milliseconds.
    static func nowUnixMS() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec / 1_000_000)
    }

    /// A new request id: 16 random hex digits.
    static func requestID() -> String {
        let n = UInt64.random(in: 0...UInt64.max)
        let hex = String(n, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The rows of one request: each failed attempt, then the answer (or
    /// the error it ended with). `via` is the name the caller used when
    /// another provider answered (a chain, a route); `plugin` names an
    /// instance's plugin.
    static func rows(
        operation: String, name: String, request: ModelRequest, unixMS: Int, duration: Duration,
        result: Result<ModelResponse, ProviderError>, plugin: (String) -> String?
    ) -> [Row] {
        let id = requestID()
        func via(_ provider: String) -> String? { provider == name ? nil : name }
        var labels = request.metadata
        let gatewayKey = labels.removeValue(forKey: gatewayKeyLabel)
        var rows: [Row] = []
        func failed(_ a: Attempt, final: Bool) -> Row {
            Row(
                unixMS: unixMS, requestID: id, operation: operation, via: via(a.provider), provider: a.provider, plugin: plugin(a.provider),
                model: request.model, outcome: "error", errorKind: a.error.kind.rawValue, status: a.error.status,
                durationMS: a.duration.milliseconds, labels: labels, gatewayKey: gatewayKey, final: final)
        }
        switch result {
        case .success(let r):
            for a in r.attempts { rows.append(failed(a, final: false)) }
            let provider = r.provider.isEmpty ? name : r.provider
            let spent = r.attempts.reduce(Duration.zero) { $0 + $1.duration }
            rows.append(
                Row(
                    unixMS: unixMS, requestID: id, operation: operation, via: via(provider), provider: provider, plugin: plugin(provider),
                    model: r.model.isEmpty ? request.model : r.model, outcome: "ok", inputTokens: r.usage.inputTokens,
                    outputTokens: r.usage.outputTokens, cacheReadTokens: r.usage.cacheReadTokens, cacheWriteTokens: r.usage.cacheWriteTokens,
                    reasoningTokens: r.usage.reasoningTokens, costUSD: r.costUSD, cached: r.metadata["cache"] == "hit",
                    durationMS: max(0, (duration - spent).milliseconds), labels: labels, gatewayKey: gatewayKey, final: true))
        case .failure(let e):
            if e.attempts.isEmpty {
                rows.append(failed(Attempt(provider: e.provider ?? name, error: e, duration: duration), final: true))
            } else {
                for (i, a) in e.attempts.enumerated() { rows.append(failed(a, final: i == e.attempts.count - 1)) }
            }
        }
        return rows
    }
}
