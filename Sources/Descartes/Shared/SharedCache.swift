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

    /// What `lookup(_:admitting:)` found.
    enum Found {
        /// The entry's document (nil when it is not JSON) and its time left.
        case entry(JSONValue?, Duration?)
        /// No entry: the limiter's check ran instead.
        case admission(SharedLimits.Outcome)
    }

    /// The document kept for `key`, or, when there is none, the outcome of
    /// `limits`'s check for a request of `tokens` (one script, one round
    /// trip: `SharedLimits.lookupScript`; a hit charges nothing).
    func lookup(_ key: String, admitting limits: SharedLimits, tokens: Int, maxWait: Duration?, model: String?) -> Result<Found, SharedStoreFailure> {
        let call = limits.acquireCall(tokens: tokens, maxWait: maxWait, model: model)
        return store.eval(SharedLimits.lookupScript, keys: [redisKey(key)] + call.keys, args: call.args, deadline: maxWait).map { v in
            if let a = v.items, a.count == 2, let bytes = a[0].bytes {
                return .entry(try? JSONValue.parse(bytes: bytes), a[1].int.flatMap { $0 > 0 ? Duration.milliseconds($0) : nil })
            }
            return .admission(limits.outcome(.success(v), charged: call.charged))
        }
    }

    /// Keeps `document` under `key` with the cache's time to live, after
    /// the caller has moved on (`SharedStore.send`).
    func set(_ key: String, _ document: [UInt8]) {
        var cmd = [Array("SET".utf8), redisKey(key), document]
        if let ttl { cmd += [Array("PX".utf8), Array(String(max(1, ttl.milliseconds)).utf8)] }
        store.send([cmd])
    }
}
