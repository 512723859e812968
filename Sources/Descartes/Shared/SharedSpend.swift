/// Spend counters in the shared store (`SpendCounter.shared`): one Redis
/// float per budget and period (`descartes:spend:team=research:2026-12-07`),
/// read with MGET before a request and raised with INCRBYFLOAT (atomic on
/// the server, so two hosts debiting at once both count) after its answer,
/// once the caller has it (`SharedStore.send`), expiring an hour after its
/// period ends.
package struct SharedSpend: Sendable {
    package let store: SharedStore

    package init(store: SharedStore) { self.store = store }

    func key(_ id: String) -> [UInt8] { store.key("spend", id) }

    /// What each of `ids` spent so far (one round trip).
    package func spent(_ ids: [String], deadline: Duration?) -> Result<[Double], SharedStoreFailure> {
        store.run([spentCommand(ids)], deadline: deadline).map { spent(ids, from: $0.first) }
    }

    /// The command that reads what `ids` spent (MGET), to send along another
    /// (`SharedStore.eval(_:keys:args:along:deadline:)`).
    package func spentCommand(_ ids: [String]) -> [[UInt8]] { [Array("MGET".utf8)] + ids.map(key) }

    /// What `ids` spent, from the reply of `spentCommand(ids)`.
    package func spent(_ ids: [String], from reply: RedisValue?) -> [Double] {
        let values = reply?.items ?? []
        return ids.indices.map { i in
            i < values.count ? values[i].bytes.flatMap { Double(String(decoding: $0, as: UTF8.self)) } ?? 0 : 0
        }
    }

    /// Adds `usd` to each of `ids`, after the caller has moved on
    /// (`SharedStore.send`: with the request's other writes, one round trip).
    package func debit(_ ids: [String], usd: Double, ttlSeconds: Int?) {
        store.send(debitCommands(ids, usd: usd, ttlSeconds: ttlSeconds))
    }

    /// The commands of `debit`, to send along another
    /// (`SharedStore.eval(_:keys:args:along:deadline:)`).
    package func debitCommands(_ ids: [String], usd: Double, ttlSeconds: Int?) -> [[[UInt8]]] {
        var commands: [[[UInt8]]] = []
        for id in ids {
            commands.append([Array("INCRBYFLOAT".utf8), key(id), Array(String(usd).utf8)])
            if let ttlSeconds { commands.append([Array("EXPIRE".utf8), key(id), Array(String(ttlSeconds).utf8)]) }
        }
        return commands
    }
}
