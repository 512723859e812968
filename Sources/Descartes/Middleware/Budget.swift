import DescartesSupport
import Glibc

/// Spend budgets per request label (providers.yaml `budgets:`): a label
/// `team=research` with $5.00 a day refuses a request labelled so once the
/// answers of that day labelled so cost $5.00.
///
/// ```yaml
/// budgets:
///   period: day            # day (UTC), month (UTC) or total
///   labels:
///     team=research: 5.00  # LABEL=VALUE: US dollars per period
///     agent=reviewer: 0.50
/// ```
///
/// The labels are the request's metadata (`--label team=research`,
/// `ModelRequest.metadata`), as the audit ledger records them.
public struct BudgetSettings: Sendable, Hashable {
    public enum Period: String, Sendable, Hashable, CaseIterable {
        case day, month, total

        /// The period `unixTime` falls in: `2026-12-07`, `2026-12`, `total`.
        public func window(unixTime: Int) -> String {
            if self == .total { return "total" }
            var t = time_t(unixTime)
            var parts = tm()
            gmtime_r(&t, &parts)
            func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
            let ym = "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))"
            return self == .month ? ym : "\(ym)-\(two(parts.tm_mday))"
        }

        /// Seconds from `unixTime` to the start of the next period (nil: never).
        public func secondsLeft(unixTime: Int) -> Int? {
            switch self {
            case .total: return nil
            case .day: return 86_400 - unixTime % 86_400
            case .month:
                var t = time_t(unixTime)
                var parts = tm()
                gmtime_r(&t, &parts)
                parts.tm_mon += 1
                parts.tm_mday = 1
                parts.tm_hour = 0
                parts.tm_min = 0
                parts.tm_sec = 0
                return Int(timegm(&parts)) - unixTime
            }
        }
    }

    public var period = Period.day
    /// `LABEL=VALUE` -> US dollars per period.
    public var labels: [String: Double] = [:]

    public init(period: Period = .day, labels: [String: Double] = [:]) {
        self.period = period
        self.labels = labels
    }

    /// The budgets a request with `metadata` falls under, by name.
    func matching(_ metadata: [String: String]) -> [(name: String, usd: Double)] {
        labels.sorted { $0.key < $1.key }.compactMap { name, usd in
            guard let eq = name.firstIndex(of: "=") else { return nil }
            return metadata[String(name[..<eq])] == String(name[name.index(after: eq)...]) ? (name, usd) : nil
        }
    }
}

/// What the answers under each budget cost in each period: in this process
/// (the default), or in the shared store for every process (`shared:`).
public final class SpendCounter: Sendable {
    private let local = Lock<[String: Double]>([:])
    /// The shared store's counters, used while it answers.
    package let shared: SharedSpend?

    package init(shared: SharedSpend?) { self.shared = shared }

    public convenience init() { self.init(shared: nil) }

    /// The process-wide counter (every `ReliableProviders` without a
    /// shared store shares it).
    public static let process = SpendCounter()

    /// What `ids` spent: in the shared store when it answers, else here.
    /// Both count at least what is known to be spent (the store every
    /// process's debits once sent, here this process's at once), so the
    /// larger of the two is taken: a debit this process has not sent yet
    /// (`SharedStore.send`) already counts for its next request.
    func spent(_ ids: [String], deadline: Duration?) throws(ProviderError) -> [Double] {
        let here = local.withLock { m in ids.map { m[$0] ?? 0 } }
        if let shared {
            switch shared.spent(ids, deadline: deadline) {
            case .success(let v): return zip(v, here).map { max($0, $1) }
            case .failure(let f):
                if shared.store.settings.onFailure == .closed {
                    throw f.refusal()
                }
            }
        }
        return here
    }

    /// Adds `usd` to every one of `ids` (atomically in the shared store;
    /// here too, so the local counts are close when the store goes down).
    func debit(_ ids: [String], usd: Double, ttl: Int?) {
        guard usd > 0, !ids.isEmpty else { return }
        local.withLock { m in for id in ids { m[id, default: 0] += usd } }
        shared?.debit(ids, usd: usd, ttlSeconds: ttl)
    }
}

/// Refuses a request whose labels' budgets are spent, and debits each
/// answer's cost to them. Cache hits cost nothing and are not refused (the
/// cache is outside this layer); an answer whose cost is unknown (no
/// manifest price) debits nothing.
public struct BudgetBackend: WrappingBackend {
    public let inner: any ModelBackend
    public let settings: BudgetSettings
    public let counter: SpendCounter
    /// What the period is read from (`unixTime`).
    public let clock: DescartesClock

    public init(_ inner: any ModelBackend, settings: BudgetSettings, counter: SpendCounter = .process, clock: DescartesClock = .continuous) {
        self.inner = inner
        self.settings = settings
        self.counter = counter
        self.clock = clock
    }

    /// The counters of the budgets `request` falls under, in this period.
    func admit(_ request: ModelRequest) throws(ProviderError) -> [String] {
        let budgets = settings.matching(request.metadata)
        guard !budgets.isEmpty else { return [] }
        let now = clock.unixTime
        let window = settings.period.window(unixTime: now)
        let ids = budgets.map { "\($0.name):\(window)" }
        let spent = try counter.spent(ids, deadline: request.deadlines.total)
        for (b, s) in zip(budgets, spent) where s >= b.usd {
            let left = settings.period.secondsLeft(unixTime: now)
            let when = settings.period == .total ? "" : " for this \(settings.period.rawValue) (\(window), UTC)"
            throw ProviderError(
                .rateLimited, "the budget of \(b.name) ($\(Self.money(b.usd))\(when)) is spent ($\(Self.money(s)))",
                provider: inner.name, retryAfter: left.map { .seconds($0) })
        }
        return ids
    }

    static func money(_ d: Double) -> String {
        let cents = Int((d * 10_000).rounded())
        let frac = String(cents % 10_000)
        return "\(cents / 10_000).\(String(repeating: "0", count: 4 - frac.count))\(frac)"
    }

    func debit(_ ids: [String], _ r: ModelResponse) {
        guard let cost = r.costUSD, cost > 0 else { return }
        let left = settings.period.secondsLeft(unixTime: clock.unixTime)
        counter.debit(ids, usd: cost, ttl: left.map { $0 + 3600 })
    }

    public func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        let ids = try admit(request)
        let r = try await inner.complete(request)
        debit(ids, r)
        return r
    }

    public func stream(_ request: ModelRequest) -> ModelStream {
        let me = self
        return Streams.make(provider: inner.name) { out in
            let ids = try me.admit(request)
            for try await event in me.inner.stream(request) {
                if case .finish(let r) = event { me.debit(ids, r) }
                out.yield(event)
            }
        }
    }
}
