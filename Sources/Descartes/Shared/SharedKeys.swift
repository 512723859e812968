import DescartesSupport

/// The gateway's issued keys in the shared store, so that a key issued by
/// `descartes keys create` on one host is accepted by every host's gateway
/// with the same `shared:` section, and a key revoked on one is refused by
/// all (docs/scaling.md, docs/gateway.md).
///
/// Each key is one Redis hash named by the SHA-256 of its secret (never the
/// secret): `PREFIX gwkeys:{keys}:hash:HEX` with the fields of
/// `StoredGatewayKey` (`name`, `models` and `labels` as JSON, `budget_usd`,
/// `period`, `rpm`, `tpm`, `created_ms`, `revoked_ms` once revoked), beside
/// an index of the active keys by name (`PREFIX gwkeys:{keys}:name:NAME`,
/// holding the hash) and a marker that some key was ever issued
/// (`PREFIX gwkeys:{keys}:issued`, so that revoking every key never opens a
/// gateway). The keys have no expiry (`volatile-*` eviction policies never
/// evict them) and share one hash tag, so that the scripts that create and
/// revoke a key, each atomic on the server, touch one Redis Cluster slot.
///
/// The SQLite store of each host (`SQLiteGatewayKeyStore`) stays the local
/// copy: `descartes keys` writes both, and the gateway reads this one while
/// it answers and its own file while it does not.
package struct SharedGatewayKeys: Sendable {
    package let store: SharedStore

    package init(store: SharedStore) { self.store = store }

    /// How long a gateway keeps what the store said of a key before it
    /// asks again: a revocation on another host reaches every gateway
    /// within this (plus a command's time), and each gateway asks the store
    /// about each key in use at most once per this.
    package static let lookupTTL: Duration = .seconds(1)

    func recordKey(_ hash: String) -> [UInt8] { store.key("gwkeys", "{keys}", "hash", hash) }
    func nameKey(_ name: String) -> [UInt8] { store.key("gwkeys", "{keys}", "name", name) }
    var issuedKey: [UInt8] { store.key("gwkeys", "{keys}", "issued") }

    /// KEYS: the record, the name's index, the marker. ARGV: the hash, then
    /// field/value pairs. Returns 1, or 0 when an active key has the name.
    package static let createScript = LuaScript(
        """
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        local fields = {}
        for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('DEL', KEYS[1])
        redis.call('HSET', KEYS[1], unpack(fields))
        redis.call('SET', KEYS[2], ARGV[1])
        redis.call('SET', KEYS[3], '1')
        return 1
        """)

    /// KEYS: the name's index. ARGV: the records' key prefix, the time of
    /// revocation (ms). Returns the revoked key's hash, or false.
    package static let revokeScript = LuaScript(
        """
        local hash = redis.call('GET', KEYS[1])
        if not hash then return false end
        redis.call('HSET', ARGV[1] .. hash, 'revoked_ms', ARGV[2])
        redis.call('DEL', KEYS[1])
        return hash
        """)

    /// Writes `key` (its hash and settings, never a secret) as an active key.
    /// - Returns: false when the store has an active key of that name.
    package func create(_ key: StoredGatewayKey) -> Result<Bool, SharedStoreFailure> {
        let labels = JSONValue.object(JSONObject(key.labels.sorted { $0.key < $1.key }.map { (key: $0.key, value: JSONValue.string($0.value)) }))
        var fields: [String] = [
            "name", key.name, "models", JSONValue.array(key.models.map { .string($0) }).jsonText, "period", key.period.rawValue,
            "labels", labels.jsonText, "created_ms", String(key.createdUnixMS),
        ]
        if let b = key.budgetUSD { fields += ["budget_usd", String(b)] }
        if let r = key.requestsPerMinute { fields += ["rpm", String(r)] }
        if let t = key.tokensPerMinute { fields += ["tpm", String(t)] }
        return store.eval(Self.createScript, keys: [recordKey(key.hash), nameKey(key.name), issuedKey], args: [key.hash] + fields)
            .map { $0.int == 1 }
    }

    /// Revokes the active key named `name`; its hash, or nil when the store
    /// has no active key of that name.
    package func revoke(name: String, nowUnixMS: Int) -> Result<String?, SharedStoreFailure> {
        let prefix = String(decoding: store.key("gwkeys", "{keys}", "hash", ""), as: UTF8.self)
        return store.eval(Self.revokeScript, keys: [nameKey(name)], args: [prefix, String(nowUnixMS)])
            .map { $0.bytes.map { String(decoding: $0, as: UTF8.self) } }
    }

    /// What the store says of the key whose secret hashes to `hash`.
    package enum Lookup: Sendable {
        /// Issued and not revoked.
        case active(StoredGatewayKey)
        /// Issued, then revoked.
        case revoked
        /// Not in the store (issued before `shared:` was configured, or
        /// while the store was down: only the issuing host's file has it).
        case absent
    }

    /// Reads one key's record (one round trip, `HGETALL`).
    package func lookup(hash: String, deadline: Duration? = nil) -> Result<Lookup, SharedStoreFailure> {
        store.run([[Array("HGETALL".utf8), recordKey(hash)]], deadline: deadline).map { (replies: [RedisValue]) -> Lookup in
            guard let key = Self.record(hash: hash, replies.first) else { return .absent }
            return key.revokedUnixMS == nil ? .active(key) : .revoked
        }
    }

    /// The key a record's `HGETALL` reply holds; nil when it is empty.
    static func record(hash: String, _ reply: RedisValue?) -> StoredGatewayKey? {
        let items = reply?.items ?? []
        guard !items.isEmpty else { return nil }
        var f: [String: String] = [:]
        var i = 0
        while i + 1 < items.count {
            if let k = items[i].bytes, let v = items[i + 1].bytes { f[String(decoding: k, as: UTF8.self)] = String(decoding: v, as: UTF8.self) }
            i += 2
        }
        let models = (try? JSONValue.parse(f["models"] ?? "[]"))?.arrayValue?.compactMap(\.stringValue) ?? []
        var labels: [String: String] = [:]
        if case .object(let o)? = try? JSONValue.parse(f["labels"] ?? "{}") {
            for m in o { if let s = m.value.stringValue { labels[m.key] = s } }
        }
        return StoredGatewayKey(
            name: f["name"] ?? "", hash: hash, models: models, budgetUSD: f["budget_usd"].flatMap(Double.init),
            period: BudgetPeriod(rawValue: f["period"] ?? "") ?? .total, requestsPerMinute: f["rpm"].flatMap { Int($0) },
            tokensPerMinute: f["tpm"].flatMap { Int($0) }, labels: labels, createdUnixMS: f["created_ms"].flatMap { Int($0) } ?? 0,
            revokedUnixMS: f["revoked_ms"].flatMap { Int($0) })
    }

    /// The name of a key's buckets and spend counter in the store
    /// (`PREFIX limit:{gwkey-HASH}:...`, `PREFIX spend:gwkey-HASH:PERIOD`),
    /// from the hex SHA-256 of its secret.
    package static func bucket(hash: String) -> String { "gwkey-" + hash.prefix(32) }

    /// Every key the store has, revoked ones too, each with what it spent
    /// in its period at `nowUnixMS` (`descartes keys list`): `SCAN` over the
    /// records, then their `HGETALL`s in one round trip and the spend
    /// counters' `MGET` in another.
    package func list(nowUnixMS: Int) -> Result<[StoredGatewayKey], SharedStoreFailure> {
        let pattern = store.key("gwkeys", "{keys}", "hash", "*")
        let head = store.key("gwkeys", "{keys}", "hash", "").count
        var hashes: [String] = []
        var cursor = "0"
        repeat {
            switch store.run([[Array("SCAN".utf8), Array(cursor.utf8), Array("MATCH".utf8), pattern, Array("COUNT".utf8), Array("1000".utf8)]]) {
            case .failure(let f): return .failure(f)
            case .success(let r):
                guard let page = r.first?.items, page.count == 2, let next = page[0].bytes, let names = page[1].items else {
                    return .failure(SharedStoreFailure(message: "unexpected answer to SCAN from \(store.settings.store): \(r)"))
                }
                cursor = String(decoding: next, as: UTF8.self)
                for name in names { if let b = name.bytes { hashes.append(String(decoding: b.dropFirst(head), as: UTF8.self)) } }
            }
        } while cursor != "0"
        hashes = Array(Set(hashes)).sorted()
        guard !hashes.isEmpty else { return .success([]) }
        let records: [RedisValue]
        switch store.run(hashes.map { [Array("HGETALL".utf8), recordKey($0)] }) {
        case .failure(let f): return .failure(f)
        case .success(let r): records = r
        }
        var keys = zip(hashes, records).compactMap { Self.record(hash: $0, $1) }
        let spend = SharedSpend(store: store)
        let ids = keys.map { "\(Self.bucket(hash: $0.hash)):\($0.period.window(unixMS: nowUnixMS))" }
        switch spend.spent(ids, deadline: nil) {
        case .failure(let f): return .failure(f)
        case .success(let spent):
            for i in keys.indices {
                keys[i].spentUSD = spent[i]
                keys[i].spentPeriod = keys[i].period.window(unixMS: nowUnixMS)
            }
        }
        return .success(keys.sorted { ($0.createdUnixMS, $0.name) < ($1.createdUnixMS, $1.name) })
    }

    /// Whether any key was ever issued through the store.
    package func anyIssued(deadline: Duration? = nil) -> Result<Bool, SharedStoreFailure> {
        store.run([[Array("EXISTS".utf8), issuedKey]], deadline: deadline).map { $0.first?.int == 1 }
    }
}
