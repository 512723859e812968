import Descartes
import DescartesSupport
import Glibc

/// The gateway's keys: those providers.yaml configures (`server.keys`) and
/// those `descartes keys create` issued (a `GatewayKeyStore`, read again
/// whenever it changes, so a revocation applies to the next request), with
/// each key's rate limits and spend.
///
/// With a `shared:` section (`Shared`), issued keys are also looked up in
/// the shared store (`SharedGatewayKeys`), which is authoritative while it
/// answers: a key issued on another host is accepted and one revoked there
/// refused, what the store said of a key being kept for
/// `SharedGatewayKeys.lookupTTL`. Each key's requests and tokens per minute
/// are then GCRA buckets in the store (`SharedLimits`, the providers'
/// script, a bucket per key hash) and its budget a spend counter there
/// (`SharedSpend`, debited with INCRBYFLOAT): one round trip admits a
/// request (the limit script with the budget's MGET pipelined). While the
/// store does not answer, the local file, the last answers and the
/// in-process limiters serve (`on_failure: open`), or requests with limits
/// or a budget are refused (`closed`).
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

    /// The shared store's side of the keys (`shared:`).
    package struct Shared: Sendable {
        let keys: SharedGatewayKeys
        let spend: SharedSpend
        package var store: SharedStore { keys.store }

        init(_ store: SharedStore) {
            keys = SharedGatewayKeys(store: store)
            spend = SharedSpend(store: store)
        }
    }

    /// What the shared store said, and when.
    struct Answer<T: Sendable>: Sendable {
        var value: T
        var at: ContinuousClock.Instant
    }

    let store: (any GatewayKeyStore)?
    package let shared: Shared?
    /// Whether the gateway serves only loopback (then no key at all means no key needed).
    let loopback: Bool
    private let state: Lock<State>
    private let limiters = Lock<[String: RateLimiter]>([:])
    /// The shared store's answers by key hash (bounded: `lookups`).
    private let answers = Lock<[String: Answer<SharedGatewayKeys.Lookup>]>([:])
    private let issuedAnywhere = Lock<Answer<Bool>?>(nil)
    let notice: @Sendable (String) -> Void

    /// The most answers kept (a client presenting random keys costs a
    /// lookup each, never memory).
    static let lookups = 4096

    package init(
        configured: [GatewaySettings.Key], store: (any GatewayKeyStore)?, shared: SharedStore? = nil, loopback: Bool,
        notice: @escaping @Sendable (String) -> Void
    ) {
        self.store = store
        self.shared = shared.map(Shared.init)
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
        if state.withLock({ !$0.configured.isEmpty || $0.storePresent }) { return true }
        return issuedThroughSharedStore
    }

    /// Whether the shared store says a key was ever issued (asked at most
    /// once per `SharedGatewayKeys.lookupTTL`; its last answer while it does
    /// not answer).
    var issuedThroughSharedStore: Bool {
        guard let shared else { return false }
        let now = ContinuousClock.now
        if let a = issuedAnywhere.withLock({ $0 }), a.value || now - a.at < SharedGatewayKeys.lookupTTL { return a.value }
        switch shared.keys.anyIssued() {
        case .success(let v):
            issuedAnywhere.withLock { $0 = Answer(value: v, at: now) }
            return v
        case .failure: return issuedAnywhere.withLock { $0?.value ?? false }
        }
    }

    /// Whether requests need a key: some key exists, or the gateway is not
    /// on loopback (where, with no key at all, nothing is served).
    var required: Bool {
        !loopback || any
    }

    /// The key `presented` is, or nil. Configured keys are compared in
    /// constant time; an issued key is found by its SHA-256, which tells a
    /// timing observer nothing about the secret.
    package func key(for presented: String) -> GatewaySettings.Key? {
        if let found = GatewaySettings.key(for: presented, in: state.withLock({ $0.configured })) { return found }
        guard store != nil || shared != nil else { return nil }
        let hash = StoredGatewayKey.hash(of: presented)
        let local = state.withLock { $0.issued[hash] }
        switch sharedLookup(hash) {
        case .active(let stored)?:
            var k = GatewaySettings.Key(stored)
            // The local row's id, where this host's file has the key, for its spend there.
            k.storeID = local?.storeID
            return k
        case .revoked?:
            // Revoked on another host: revoked here too, so that this
            // host's file does not accept it while the store is down.
            if let local, let store {
                do {
                    if try store.revoke(name: local.name, nowUnixMS: Self.nowMS()) {
                        notice("descartes serve: gateway key '\(local.name)' was revoked on another host (the shared store says so); revoked in \(store.location) too")
                    }
                } catch {
                    notice("descartes serve: gateway key '\(local.name)' was revoked on another host; revoking it in \(store.location) failed: \(error.description)")
                }
            }
            return nil
        case .absent?, nil: return local
        }
    }

    /// What the shared store says of the key with `hash`: its answer of the
    /// last `lookupTTL`, else a new one; while it does not answer, its last
    /// answer however old (nil: never asked, or no store).
    func sharedLookup(_ hash: String) -> SharedGatewayKeys.Lookup? {
        guard let shared else { return nil }
        let now = ContinuousClock.now
        let cached = answers.withLock { $0[hash] }
        if let cached, now - cached.at < SharedGatewayKeys.lookupTTL { return cached.value }
        switch shared.keys.lookup(hash: hash) {
        case .success(let answer):
            answers.withLock { a in
                if a.count >= Self.lookups { a = a.filter { now - $0.value.at < SharedGatewayKeys.lookupTTL } }
                if a.count >= Self.lookups { a.removeAll() }
                a[hash] = Answer(value: answer, at: now)
            }
            return answer
        case .failure: return cached?.value
        }
    }

    /// The name of the key's buckets in the shared store: its hash (a
    /// configured key's, of its secret), never its name, which two hosts'
    /// files might give different keys.
    package static func bucket(_ key: GatewaySettings.Key) -> String {
        SharedGatewayKeys.bucket(hash: key.hash ?? StoredGatewayKey.hash(of: String(decoding: key.secret, as: UTF8.self)))
    }

    /// The key's spend counter in the shared store, in the current period.
    static func spendID(_ key: GatewaySettings.Key, period: String) -> String { "\(bucket(key)):\(period)" }

    /// The key's limiter (by name: a configured key and an issued key
    /// never share a name), made or replaced when its limits change.
    func limiter(_ key: GatewaySettings.Key) -> RateLimiter? {
        guard !key.limits.isEmpty else { return nil }
        let id = (key.hash.map { "issued:" + $0 } ?? "configured:") + key.name
        return limiters.withLock { l in
            if let existing = l[id], existing.limits == key.limits { return existing }
            let made = RateLimiter(limits: key.limits)
            l[id] = made
            return made
        }
    }

    /// How a request was admitted, for `settle`.
    package struct Admission: Sendable {
        /// Its tokens are counted in the shared store's buckets.
        package var sharedLimits: SharedLimits?
    }

    /// Lets a request of `key` through, or says why not: the budget spent
    /// (429 `insufficient_quota` for OpenAI clients, 402 `billing_error` for
    /// Anthropic's), or over its requests or tokens per minute (429 with
    /// Retry-After). With the shared store, one round trip: the key's limit
    /// script, with its budget's spend read along.
    package func admit(_ key: GatewaySettings.Key) async throws(GatewayError) -> Admission {
        let now = Self.nowMS()
        let period = key.period.window(unixMS: now)
        let budgeted = key.budgetUSD != nil && key.hash != nil
        var spent: Double?
        var admission = Admission()
        var localLimits = !key.limits.isEmpty
        if let shared, budgeted || !key.limits.isEmpty {
            let spendIDs = budgeted ? [Self.spendID(key, period: period)] : []
            let along = spendIDs.isEmpty ? [] : [shared.spend.spentCommand(spendIDs)]
            let spendReply: Result<RedisValue?, SharedStoreFailure>
            if key.limits.isEmpty {
                spendReply = shared.store.run(along).map(\.first)
            } else {
                let limits = SharedLimits(store: shared.store, provider: Self.bucket(key), limits: key.limits)
                let call = limits.acquireCall(tokens: 0, maxWait: .zero)
                let r = shared.store.eval(SharedLimits.acquireScript, keys: call.keys, args: call.args, along: along)
                spendReply = r.map { $0.along.first }
                switch limits.outcome(r.map { $0.script }, charged: 0) {
                case .wait:
                    admission.sharedLimits = limits
                    localLimits = false
                case .refused(let wait): throw Self.overLimit(key, after: wait)
                case .unavailable(let f):
                    if shared.store.settings.onFailure == .closed { throw GatewayError(f.refusal()) }
                }
            }
            if budgeted {
                switch spendReply {
                case .success(let reply): spent = shared.spend.spent(spendIDs, from: reply).first
                case .failure(let f):
                    if shared.store.settings.onFailure == .closed {
                        admission.sharedLimits?.adjust(requests: -1)
                        throw GatewayError(f.refusal())
                    }
                }
            }
        }
        if let budget = key.budgetUSD, key.hash != nil {
            // A new day or month: the spend starts again. The store's count
            // or this gateway's, the larger: a debit not sent yet
            // (`SharedStore.send`) counts here already.
            let here = key.storeID.flatMap { id in state.withLock { s in s.spend[id].map { $0.period == period ? $0.usd : 0 } } } ?? 0
            let s = max(spent ?? 0, here)
            if s >= budget {
                admission.sharedLimits?.adjust(requests: -1)
                throw .budgetSpent(
                    "the gateway key '\(key.name)' has spent its budget of $\(Self.money(budget))"
                        + (key.period == .total ? "" : " for this \(key.period.rawValue) (\(period), UTC)") + " ($\(Self.money(s)) spent)")
            }
        }
        guard localLimits, let limiter = limiter(key) else { return admission }
        do {
            try await limiter.acquire(tokens: 0, maxWait: .zero)
        } catch {
            throw Self.overLimit(key, after: error.retryAfter ?? .seconds(1))
        }
        return admission
    }

    static func overLimit(_ key: GatewaySettings.Key, after: Duration) -> GatewayError {
        var e = GatewayError(ProviderError(.rateLimited, "", retryAfter: after))
        e.message = "the gateway key '\(key.name)' is over its rate limit (\(key.limits)); retry after \(e.retryAfter ?? 1) s"
        e.kind = "key_rate_limited"
        return e
    }

    /// Counts an answered request against its key: tokens against its
    /// tokens per minute, cost against its budget (kept in the local store,
    /// and with `shared:` in the shared store, where every gateway reads it).
    /// With the shared store, the tokens' correction with the debit
    /// pipelined behind it, sent after the caller has its answer
    /// (`SharedStore.send`; one round trip, with other requests' writes).
    package func settle(_ key: GatewaySettings.Key, _ admission: Admission?, usage: Usage?, costUSD: Double?) {
        let now = Self.nowMS()
        let period = key.period.window(unixMS: now)
        let cost = key.hash != nil ? costUSD.flatMap { $0 > 0 ? $0 : nil } : nil
        // Only a budget reads the shared counter (a key's budget is fixed
        // when it is issued): a key without one costs no round trip here.
        var debit: [[[UInt8]]] = []
        if let shared, let cost, key.budgetUSD != nil {
            let left = key.period.secondsLeft(unixTime: now / 1000)
            debit = shared.spend.debitCommands([Self.spendID(key, period: period)], usd: cost, ttlSeconds: left.map { $0 + 3600 })
        }
        if let usage, usage.totalTokens > 0, key.limits.tokensPerMinute != nil {
            if let limits = admission?.sharedLimits, let call = limits.adjustCall(tokens: usage.totalTokens) {
                limits.store.send(SharedLimits.adjustScript, keys: call.keys, args: call.args, along: debit)
                debit = []
            } else if let limiter = limiter(key) {
                limiter.adjust(tokens: usage.totalTokens)
            }
        }
        if let shared, !debit.isEmpty { shared.store.send(debit) }
        guard let cost else { return }
        guard let id = key.storeID, let store else { return }
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
