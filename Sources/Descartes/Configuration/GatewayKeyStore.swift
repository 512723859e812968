internal import DescartesSQLite
import DescartesSupport
import Glibc

/// A gateway key issued by `descartes keys create`, as stored: its name,
/// the SHA-256 of its secret (never the secret), what it may use and spend,
/// and the labels its requests carry to the audit ledger.
package struct StoredGatewayKey: Sendable, Equatable {
    /// The store's own identifier (spend is counted by it, so a revoked
    /// key's spend does not carry over to a new key of the same name).
    package var id: String
    package var name: String
    /// Lowercase hex SHA-256 of the key's UTF-8 bytes.
    package var hash: String
    /// Globs over model names; empty: every model.
    package var models: [String]
    package var budgetUSD: Double?
    package var period: BudgetPeriod
    package var requestsPerMinute: Int?
    package var tokensPerMinute: Int?
    package var labels: [String: String]
    package var createdUnixMS: Int
    package var revokedUnixMS: Int?
    /// What it spent in the period that `spentPeriod` names (filled by `keys(now:)`).
    package var spentUSD: Double = 0
    package var spentPeriod: String = ""

    package init(
        id: String = "", name: String, hash: String, models: [String] = [], budgetUSD: Double? = nil, period: BudgetPeriod = .total,
        requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil, labels: [String: String] = [:], createdUnixMS: Int,
        revokedUnixMS: Int? = nil
    ) {
        self.id = id
        self.name = name
        self.hash = hash
        self.models = models
        self.budgetUSD = budgetUSD
        self.period = period
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.labels = labels
        self.createdUnixMS = createdUnixMS
        self.revokedUnixMS = revokedUnixMS
    }

    /// The hash stored for `secret`: SHA-256, hex. A fast hash is right
    /// here (docs/gateway.md): the secrets are 256 random bits, so there is
    /// no dictionary to search, and the gateway hashes on every request.
    package static func hash(of secret: String) -> String {
        var h = SHA256()
        h.update(Array(secret.utf8))
        return h.finalize()
    }

    /// A new secret: `dsk-` and 32 bytes (256 bits) from the system's
    /// random source (getrandom), in hex.
    package static func newSecret() -> String {
        var rng = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdef".utf8)
        var out = Array("dsk-".utf8)
        for _ in 0..<32 {
            let b = UInt8.random(in: 0...255, using: &rng)
            out += [digits[Int(b >> 4)], digits[Int(b & 15)]]
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// What a gateway key's budget counts: the spend of one UTC day, one UTC
/// month, or all time (the label budgets' periods, one type for both).
package typealias BudgetPeriod = BudgetSettings.Period

extension BudgetSettings.Period {
    /// The period that `unixMS` falls in: `2026-12-07`, `2026-12`, `total`.
    package func window(unixMS: Int) -> String { window(unixTime: unixMS / 1000) }
}

package struct GatewayKeyStoreError: Error, CustomStringConvertible, Sendable {
    package var description: String
    package init(_ description: String) { self.description = description }
}

/// Where issued gateway keys live. The gateway reads them (and notices a
/// change, a revocation, without a restart); `descartes keys` writes them.
///
/// The embedded implementation is SQLite (`SQLiteGatewayKeyStore`); a
/// shared one (Redis, for several gateway hosts) implements the same
/// operations, each atomic in the store.
package protocol GatewayKeyStore: Sendable {
    /// Where the keys are, for messages (a file, a URL without credentials).
    var location: String { get }
    /// A value that differs whenever someone else (another process) changed
    /// the keys or their spend since the last call; nil while the store holds
    /// nothing (no file yet). Called on every request: cheap.
    func version() throws(GatewayKeyStoreError) -> Int?
    /// The keys (without the revoked ones unless `revoked`), each with its
    /// spend in its current period at `nowUnixMS`.
    func keys(nowUnixMS: Int, revoked: Bool) throws(GatewayKeyStoreError) -> [StoredGatewayKey]
    /// Adds a key; refused when a key of that name is not revoked.
    func create(_ key: StoredGatewayKey) throws(GatewayKeyStoreError)
    /// Revokes the key of that name; false when there is none.
    func revoke(name: String, nowUnixMS: Int) throws(GatewayKeyStoreError) -> Bool
    /// Adds `usd` to the key's spend in `period` (atomically; several
    /// gateways may debit one key).
    func debit(keyID: String, period: String, usd: Double) throws(GatewayKeyStoreError)
}

/// Gateway keys in an SQLite file (mode 0600, its directory 0700), by
/// default `$XDG_STATE_HOME/descartes/gateway-keys.sqlite3` beside the
/// audit ledger. The file is created by the first `descartes keys create`;
/// until then the store is empty and nothing is created.
package final class SQLiteGatewayKeyStore: GatewayKeyStore {
    package let path: String
    package var location: String { path }
    private let db = Lock<SQLiteDatabase?>(nil)

    package init(path: String) {
        self.path = path
    }

    static let schema = """
        CREATE TABLE IF NOT EXISTS keys (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            models TEXT NOT NULL DEFAULT '[]',
            budget_usd REAL,
            period TEXT NOT NULL DEFAULT 'total',
            rpm INTEGER,
            tpm INTEGER,
            labels TEXT NOT NULL DEFAULT '{}',
            created_ms INTEGER NOT NULL,
            revoked_ms INTEGER
        );
        CREATE UNIQUE INDEX IF NOT EXISTS keys_active_name ON keys(name) WHERE revoked_ms IS NULL;
        CREATE TABLE IF NOT EXISTS spend (
            key_id INTEGER NOT NULL,
            period_start TEXT NOT NULL,
            usd REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, period_start)
        );
        """

    private func wrap(_ e: SQLiteError) -> GatewayKeyStoreError { GatewayKeyStoreError("gateway keys: \(e.message)") }

    /// The open database; nil while there is no file (unless `create`).
    private func open(_ s: inout SQLiteDatabase?, create: Bool) throws(GatewayKeyStoreError) -> SQLiteDatabase? {
        if let d = s { return d }
        if !create && access(path, F_OK) != 0 { return nil }
        let dir = FileSystem.directory(of: path)
        if create && !FileSystem.isDirectory(dir) {
            do { try FileSystem.makeDirectories(dir, mode: 0o700) } catch {
                throw GatewayKeyStoreError("gateway keys: cannot create the directory \(dir): \(error)")
            }
        }
        do {
            let d = try SQLiteDatabase(path: path, create: create, mode: 0o600)
            try d.retryingWhileBusy { () throws(SQLiteError) in try d.execute("PRAGMA journal_mode=WAL") }
            try d.execute("PRAGMA synchronous=NORMAL")
            try d.transaction { () throws(SQLiteError) in try d.execute(Self.schema) }
            s = d
            return d
        } catch {
            throw wrap(error)
        }
    }

    private func with<T>(create: Bool, _ body: (SQLiteDatabase?) throws(SQLiteError) -> T) throws(GatewayKeyStoreError) -> T {
        try db.withLock { (s: inout SQLiteDatabase?) throws(GatewayKeyStoreError) -> T in
            let d = try open(&s, create: create)
            do throws(SQLiteError) { return try body(d) } catch { throw wrap(error) }
        }
    }

    package func version() throws(GatewayKeyStoreError) -> Int? {
        try with(create: false) { d throws(SQLiteError) -> Int? in
            guard let d else { return nil }
            return try d.query("PRAGMA data_version").first?.first?.int ?? 0
        }
    }

    package func keys(nowUnixMS: Int, revoked: Bool) throws(GatewayKeyStoreError) -> [StoredGatewayKey] {
        try with(create: false) { d throws(SQLiteError) -> [StoredGatewayKey] in
            guard let d else { return [] }
            let rows = try d.query(
                "SELECT id, name, hash, models, budget_usd, period, rpm, tpm, labels, created_ms, revoked_ms FROM keys"
                    + (revoked ? "" : " WHERE revoked_ms IS NULL") + " ORDER BY name, id")
            var out: [StoredGatewayKey] = []
            for r in rows {
                let models = (try? JSONValue.parse(r[3].string ?? "[]"))?.arrayValue?.compactMap(\.stringValue) ?? []
                var labels: [String: String] = [:]
                if case .object(let o)? = try? JSONValue.parse(r[8].string ?? "{}") {
                    for m in o { if let s = m.value.stringValue { labels[m.key] = s } }
                }
                var k = StoredGatewayKey(
                    id: r[0].string ?? "", name: r[1].string ?? "", hash: r[2].string ?? "", models: models, budgetUSD: r[4].double,
                    period: BudgetPeriod(rawValue: r[5].string ?? "") ?? .total, requestsPerMinute: r[6].int, tokensPerMinute: r[7].int,
                    labels: labels, createdUnixMS: r[9].int ?? 0, revokedUnixMS: r[10].int)
                k.spentPeriod = k.period.window(unixMS: nowUnixMS)
                k.spentUSD =
                    try d.query("SELECT usd FROM spend WHERE key_id = ? AND period_start = ?", [r[0], .text(k.spentPeriod)]).first?.first?.double
                    ?? 0
                out.append(k)
            }
            return out
        }
    }

    package func create(_ key: StoredGatewayKey) throws(GatewayKeyStoreError) {
        let exists = try with(create: true) { d throws(SQLiteError) -> Bool in
            try d!.transaction { () throws(SQLiteError) -> Bool in
                if !(try d!.query("SELECT 1 FROM keys WHERE name = ? AND revoked_ms IS NULL", [.text(key.name)]).isEmpty) { return true }
                let labels = JSONValue.object(JSONObject(key.labels.sorted { $0.key < $1.key }.map { (key: $0.key, value: JSONValue.string($0.value)) }))
                try d!.query(
                    "INSERT INTO keys (name, hash, models, budget_usd, period, rpm, tpm, labels, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        .text(key.name), .text(key.hash), .text(JSONValue.array(key.models.map { .string($0) }).jsonText),
                        key.budgetUSD.map { .real($0) } ?? .null, .text(key.period.rawValue), key.requestsPerMinute.map { .integer($0) } ?? .null,
                        key.tokensPerMinute.map { .integer($0) } ?? .null, .text(labels.jsonText), .integer(key.createdUnixMS),
                    ])
                return false
            }
        }
        if exists { throw GatewayKeyStoreError("a gateway key named '\(key.name)' exists already in \(path) (revoke it first: descartes keys revoke \(key.name))") }
    }

    package func revoke(name: String, nowUnixMS: Int) throws(GatewayKeyStoreError) -> Bool {
        try with(create: false) { d throws(SQLiteError) -> Bool in
            guard let d else { return false }
            try d.query("UPDATE keys SET revoked_ms = ? WHERE name = ? AND revoked_ms IS NULL", [.integer(nowUnixMS), .text(name)])
            return try d.query("SELECT changes()").first?.first?.int ?? 0 > 0
        }
    }

    package func debit(keyID: String, period: String, usd: Double) throws(GatewayKeyStoreError) {
        guard let id = Int(keyID) else { throw GatewayKeyStoreError("gateway keys: \(path): no key with id '\(keyID)'") }
        try with(create: false) { d throws(SQLiteError) in
            _ = try d?.query(
                "INSERT INTO spend (key_id, period_start, usd) VALUES (?, ?, ?) ON CONFLICT (key_id, period_start) DO UPDATE SET usd = usd + excluded.usd",
                [.integer(id), .text(period), .real(usd)])
        }
    }
}
