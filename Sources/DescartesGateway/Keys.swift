import Descartes
import DescartesSupport
import Glibc

/// The gateway's keys: those providers.yaml configures (`server.keys`) and
/// those `descartes keys create` issued (a `GatewayKeyStore`, read again
/// whenever it changes, so a revocation applies to the next request), with
/// each key's rate limits and spend.
package final class KeyRing: Sendable {
    /// An issued key's spend in its current period.
    struct Spend: Sendable {
        var usd: Double
        var period: String
    }

    struct State: Sendable {
        var configured: [GatewaySettings.Key]
        /// Issued keys by the hex SHA-256 of their secret.
        var issued: [String: GatewaySettings.Key] = [:]
        /// Their spend, by store id.
        var spend: [String: Spend] = [:]
        /// The store's version they were read at (nil: not read yet, or no store file).
        var version: Int?
        var read = false
        /// Whether the store exists (a key was issued, even if revoked since).
        var storePresent = false
        /// A problem reading the store, reported once until it reads again.
        var storeProblem: String?
    }

    let store: (any GatewayKeyStore)?
    /// Whether the gateway serves only loopback (then no key at all means no key needed).
    let loopback: Bool
    private let state: Lock<State>
    private let limiters = Lock<[String: RateLimiter]>([:])
    let notice: @Sendable (String) -> Void

    init(configured: [GatewaySettings.Key], store: (any GatewayKeyStore)?, loopback: Bool, notice: @escaping @Sendable (String) -> Void) {
        self.store = store
        self.loopback = loopback
        self.notice = notice
        state = Lock(State(configured: configured))
    }

    /// Replaces the configured keys (a reloaded providers.yaml).
    func replaceConfigured(_ keys: [GatewaySettings.Key]) {
        state.withLock { $0.configured = keys }
    }

    static func nowMS() -> Int { AccessRecord.unixMS() }

    /// Reads the store again when it changed.
    private func refresh() {
        guard let store else { return }
        do {
            let v = try store.version()
            if state.withLock({ $0.read && $0.version == v }) { return }
            let now = Self.nowMS()
            let keys = v == nil ? [] : try store.keys(nowUnixMS: now, revoked: false)
            var issued: [String: GatewaySettings.Key] = [:]
            var spend: [String: Spend] = [:]
            for k in keys {
                issued[k.hash] = GatewaySettings.Key(k)
                spend[k.id] = Spend(usd: k.spentUSD, period: k.spentPeriod)
            }
            let problem = state.withLock { s -> String? in
                s.issued = issued
                s.spend = spend
                s.version = v
                s.read = true
                s.storePresent = v != nil
                defer { s.storeProblem = nil }
                return s.storeProblem
            }
            if problem != nil { notice("descartes serve: the gateway keys at \(store.location) are readable again") }
        } catch {
            // Keep the keys last read; say so once.
            let first = state.withLock { s -> Bool in
                defer { s.storeProblem = error.description }
                return s.storeProblem == nil
            }
            if first { notice("descartes serve: cannot read the gateway keys (using those read before): \(error.description)") }
        }
    }

    /// Whether any key is configured or was ever issued (the store exists:
    /// revoking every issued key does not open the gateway).
    package var any: Bool {
        refresh()
        return state.withLock { !$0.configured.isEmpty || $0.storePresent }
    }

    /// Whether requests need a key: some key exists, or the gateway is not
    /// on loopback (where, with no key at all, nothing is served).
    var required: Bool {
        !loopback || any
    }

    /// The key `presented` is, or nil. Configured keys are compared in
    /// constant time; an issued key is found by its SHA-256, which tells a
    /// timing observer nothing about the secret.
    func key(for presented: String) -> GatewaySettings.Key? {
        if let found = GatewaySettings.key(for: presented, in: state.withLock({ $0.configured })) { return found }
        guard store != nil else { return nil }
        let hash = StoredGatewayKey.hash(of: presented)
        return state.withLock { $0.issued[hash] }
    }

    /// The key's limiter (by name: a configured key and an issued key
    /// never share a name), made or replaced when its limits change.
    func limiter(_ key: GatewaySettings.Key) -> RateLimiter? {
        guard !key.limits.isEmpty else { return nil }
        let id = (key.storeID.map { "issued:" + $0 } ?? "configured:") + key.name
        return limiters.withLock { l in
            if let existing = l[id], existing.limits == key.limits { return existing }
            let made = RateLimiter(limits: key.limits)
            l[id] = made
            return made
        }
    }

    /// Lets a request of `key` through, or says why not: the budget spent
    /// (429 `insufficient_quota` for OpenAI clients, 402 `billing_error` for
    /// Anthropic's), or over its requests or tokens per minute (429 with
    /// Retry-After).
    func admit(_ key: GatewaySettings.Key) async throws(GatewayError) {
        if let budget = key.budgetUSD, let id = key.storeID {
            let period = key.period.window(unixMS: Self.nowMS())
            // A new day or month: the spend starts again.
            let spent = state.withLock { s in s.spend[id].map { $0.period == period ? $0.usd : 0 } ?? 0 }
            if spent >= budget {
                throw .budgetSpent(
                    "the gateway key '\(key.name)' has spent its budget of $\(Self.money(budget))"
                        + (key.period == .total ? "" : " for this \(key.period.rawValue) (\(period), UTC)") + " ($\(Self.money(spent)) spent)")
            }
        }
        guard let limiter = limiter(key) else { return }
        do {
            try await limiter.acquire(tokens: 0, maxWait: .zero)
        } catch {
            let after = error.retryAfter ?? .seconds(1)
            var e = GatewayError(ProviderError(.rateLimited, "", retryAfter: after))
            e.message = "the gateway key '\(key.name)' is over its rate limit (\(key.limits)); retry after \(e.retryAfter ?? 1) s"
            e.kind = "key_rate_limited"
            throw e
        }
    }

    /// Counts an answered request against its key: tokens against its
    /// tokens per minute, cost against its budget (kept in the store).
    func settle(_ key: GatewaySettings.Key, usage: Usage?, costUSD: Double?) {
        if let usage, usage.totalTokens > 0, key.limits.tokensPerMinute != nil, let limiter = limiter(key) {
            limiter.adjust(tokens: usage.totalTokens)
        }
        guard let id = key.storeID, let store, let cost = costUSD, cost > 0 else { return }
        let period = key.period.window(unixMS: Self.nowMS())
        state.withLock { s in
            var spend = s.spend[id] ?? Spend(usd: 0, period: period)
            if spend.period != period { spend = Spend(usd: 0, period: period) }
            spend.usd += cost
            s.spend[id] = spend
        }
        do { try store.debit(keyID: id, period: period, usd: cost) } catch {
            notice("descartes serve: the spend of gateway key '\(key.name)' ($\(Self.money(cost))) was not saved: \(error.description)")
        }
    }

    static func money(_ d: Double) -> String {
        let cents = (d * 10000).rounded() / 10000
        return String(cents)
    }
}
