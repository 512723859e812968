import DescartesSupport

/// The response cache's entries in the shared store: a hit in one process
/// is a hit in every other (`ResponseCache.shared`).
///
/// One Redis string per entry, named by the SHA-256 of the cache's canonical
/// key (`ResponseCache.key(for:namespace:)`) under the prefix, holding the
/// same JSON document as the disk store (the full key inside, checked on
/// read; secrets the factory knows redacted). Entries expire with the
/// cache's `ttl` (Redis's own expiry); their number and size are bounded by
/// the server's `maxmemory` and eviction policy (docs/scaling.md:
/// `allkeys-lru` or `volatile-lru`), not by `max_entries`/`max_bytes`,
/// which bound each process's memory only.
package struct SharedCache: Sendable {
    package let store: SharedStore
    package let ttl: Duration?

    package init(store: SharedStore, ttl: Duration?) {
        self.store = store
        self.ttl = ttl
    }

    func redisKey(_ key: String) -> [UInt8] { store.key("cache", SHA256.hex(key)) }

    /// The document kept for `key` and the time it has left (GET and PTTL
    /// in one round trip); nil on a miss or when the store does not answer.
    func get(_ key: String) -> (JSONValue, Duration?)? {
        let k = redisKey(key)
        guard case .success(let r) = store.run([[Array("GET".utf8), k], [Array("PTTL".utf8), k]]), r.count == 2,
            let bytes = r[0].bytes, let doc = try? JSONValue.parse(bytes: bytes)
        else { return nil }
        let left = r[1].int.flatMap { $0 > 0 ? Duration.milliseconds($0) : nil }
        return (doc, left)
    }

    /// Keeps `document` under `key` with the cache's time to live.
    @discardableResult
    func set(_ key: String, _ document: [UInt8]) -> Bool {
        var cmd = [Array("SET".utf8), redisKey(key), document]
        if let ttl { cmd += [Array("PX".utf8), Array(String(max(1, ttl.milliseconds)).utf8)] }
        guard case .success(let r) = store.run([cmd]), case .status = r.first else { return false }
        return true
    }
}
