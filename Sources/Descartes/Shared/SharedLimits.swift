/// One provider's rate limits and cool-down kept in the shared store, so
/// that every process and host with the same `shared:` section draws from
/// the same buckets (`RateLimitedBackend.shared`).
///
/// The algorithm is GCRA (the generic cell rate algorithm): per bucket the
/// store keeps one number, the theoretical arrival time (TAT), instead of a
/// level and a timestamp. A request costing `n` moves the TAT by `n`
/// emission intervals (60 s / per-minute limit) from max(TAT, now) and may
/// go when the TAT is within a burst's worth of intervals of now: the same
/// arithmetic as the in-process token bucket (`RateLimiter`: level =
/// burst - (TAT - now) / interval), hence the same waits. GCRA rather than
/// a sliding window because it needs one key and one small write per
/// bucket, reserves ahead (so a request knows at once how long to wait,
/// which is the in-process limiter's semantics) and has no window edges to
/// double a burst.
///
/// Each check is one Lua script on the server (atomic; the server's TIME is
/// the clock, so hosts' clocks do not matter): both buckets and the
/// provider's pause, one round trip.
package struct SharedLimits: Sendable {
    package let store: SharedStore
    package let provider: String
    package let limits: RateLimits
    /// The limits of models with their own (`limits.NAME.models`), by name:
    /// buckets under the provider's hash tag, checked in the same script.
    package let models: [String: RateLimits]

    package init(store: SharedStore, provider: String, limits: RateLimits, models: [String: RateLimits] = [:]) {
        self.store = store
        self.provider = provider
        self.limits = limits
        self.models = models
    }

    /// Keys share a hash tag, so a Redis Cluster keeps one provider's keys
    /// on one node (a script's keys must be).
    var pauseKey: [UInt8] { store.key("limit", "{\(provider)}", "pause") }
    var requestsKey: [UInt8] { store.key("limit", "{\(provider)}", "requests") }
    var tokensKey: [UInt8] { store.key("limit", "{\(provider)}", "tokens") }

    /// The GCRA check over the pause at `KEYS[k0]` and the buckets after it
    /// (the body of `acquireScript` and `lookupScript`; `k0` set before it).
    /// ARGV: the longest wait in µs (-1: none), then per bucket: µs per
    /// unit, capacity, cost. Returns {granted (1/0), wait µs}; a refusal
    /// changes nothing.
    static let gcra = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local maxwait = tonumber(ARGV[1])
        local wait = 0
        local paused = tonumber(redis.call('GET', KEYS[k0]) or '0')
        if paused > now then wait = paused - now end
        local tats = {}
        for i = k0 + 1, #KEYS do
          local a = 2 + (i - k0 - 1) * 3
          local interval = tonumber(ARGV[a])
          local capacity = tonumber(ARGV[a + 1])
          local cost = math.min(tonumber(ARGV[a + 2]), capacity)
          local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
          if tat < now then tat = now end
          tat = tat + cost * interval
          local w = tat - capacity * interval - now
          if w > wait then wait = w end
          tats[i] = tat
        end
        if maxwait >= 0 and wait > maxwait then return {0, math.ceil(wait)} end
        for i = k0 + 1, #KEYS do
          redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1000)
        end
        return {1, math.ceil(wait)}
        """

    /// KEYS: the pause, then one per bucket. ARGV: as `gcra`.
    package static let acquireScript = LuaScript("local k0 = 1\n" + gcra)

    /// A cache miss's one round trip (`ResponseCache.lookup(_:admitting:)`):
    /// KEYS: the cache entry, then `acquireScript`'s keys; ARGV: its
    /// arguments. Returns {entry, its PTTL} when the entry is there
    /// (nothing charged: a hit never reaches the provider), else
    /// `acquireScript`'s answer. Its keys span two hash slots (the entry's
    /// and the provider's): not for a Redis Cluster (`shared.cluster`).
    package static let lookupScript = LuaScript(
        """
        local entry = redis.call('GET', KEYS[1])
        if entry then return {entry, redis.call('PTTL', KEYS[1])} end
        local k0 = 2

        """ + gcra)

    /// KEYS: buckets. ARGV: per bucket: µs per unit, units to add (negative
    /// gives back). The TAT never goes below now (a bucket is never fuller
    /// than its burst).
    package static let adjustScript = LuaScript(
        """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        for i = 1, #KEYS do
          local interval = tonumber(ARGV[i * 2 - 1])
          local units = tonumber(ARGV[i * 2])
          local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
          if tat < now then tat = now end
          tat = tat + units * interval
          if tat > now then
            redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
          else
            redis.call('DEL', KEYS[i])
          end
        end
        return 1
        """)

    /// KEYS: the pause. ARGV: µs from now. Keeps the later of the two.
    package static let pauseScript = LuaScript(
        """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local untilT = now + tonumber(ARGV[1])
        local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
        if cur >= untilT then return 0 end
        redis.call('SET', KEYS[1], string.format('%.0f', untilT), 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1)
        return 1
        """)

    /// µs per request or token, and the bucket's size, as `RateLimiter.Bucket`.
    static func bucket(perMinute: Int, burst: Int?) -> (interval: Double, capacity: Int) {
        (60_000_000 / Double(perMinute), max(1, burst ?? perMinute))
    }

    /// A model's buckets: `PREFIX limit:{PROVIDER}:model:MODEL:requests`.
    func modelKey(_ model: String, _ bucket: String) -> [UInt8] { store.key("limit", "{\(provider)}", "model", model, bucket) }

    typealias Bucket = (key: [UInt8], interval: Double, capacity: Int, tokens: Bool)

    static func buckets(_ limits: RateLimits, requests: [UInt8], tokens: [UInt8]) -> [Bucket] {
        var out: [Bucket] = []
        if let r = limits.requestsPerMinute {
            let b = Self.bucket(perMinute: r, burst: limits.requestBurst)
            out.append((requests, b.interval, b.capacity, false))
        }
        if let t = limits.tokensPerMinute {
            let b = Self.bucket(perMinute: t, burst: limits.tokenBurst)
            out.append((tokens, b.interval, b.capacity, true))
        }
        return out
    }

    /// The provider's buckets, and `model`'s when it has limits of its own.
    func buckets(model: String? = nil) -> [Bucket] {
        var out = Self.buckets(limits, requests: requestsKey, tokens: tokensKey)
        if let model, let own = models[model] {
            out += Self.buckets(own, requests: modelKey(model, "requests"), tokens: modelKey(model, "tokens"))
        }
        return out
    }

    static func number(_ d: Double) -> String { luaNumber(d) }

    /// The outcome of a check in the store.
    package enum Outcome: Sendable {
        /// Granted: wait this long first.
        case wait(Duration, charged: Int)
        /// The wait would pass `maxWait`: nothing was taken.
        case refused(Duration)
        /// The store did not answer.
        case unavailable(SharedStoreFailure)
    }

    /// The call of `acquireScript` that takes one request and `tokens`
    /// tokens, and the tokens it charges.
    package func acquireCall(tokens: Int, maxWait: Duration?, model: String? = nil) -> (keys: [[UInt8]], args: [String], charged: Int) {
        var args = [maxWait.map { String($0.microseconds) } ?? "-1"]
        var keys = [pauseKey]
        var charged = 0
        for b in buckets(model: model) {
            let cost = b.tokens ? min(max(0, tokens), b.capacity) : 1
            if b.tokens { charged = max(charged, cost) }
            keys.append(b.key)
            args += [Self.number(b.interval), String(b.capacity), String(cost)]
        }
        return (keys, args, charged)
    }

    /// Takes one request and `tokens` tokens in the store (one round trip).
    package func acquire(tokens: Int, maxWait: Duration?, model: String? = nil) -> Outcome {
        let call = acquireCall(tokens: tokens, maxWait: maxWait, model: model)
        return outcome(store.eval(Self.acquireScript, keys: call.keys, args: call.args, deadline: maxWait), charged: call.charged)
    }

    /// What `acquireScript`'s answer (or failure) means.
    package func outcome(_ result: Result<RedisValue, SharedStoreFailure>, charged: Int) -> Outcome {
        switch result {
        case .failure(let f): return .unavailable(f)
        case .success(let v):
            guard let a = v.items, a.count == 2, let granted = a[0].int, let us = a[1].int else {
                return .unavailable(SharedStoreFailure(message: "unexpected answer from the rate-limit script: \(v)"))
            }
            let wait = Duration.microseconds(max(0, us))
            return granted == 1 ? .wait(wait, charged: charged) : .refused(wait)
        }
    }

    /// Adds `tokens` to the token buckets and `requests` to the request
    /// buckets, the provider's and `model`'s (negative: gives them back,
    /// at most a bucket's size, what `acquire` charged it), e.g. the
    /// usage's correction of the estimate, or a cancelled wait's reservation:
    /// after the caller has moved on (`SharedStore.send`).
    package func adjust(requests: Int = 0, tokens: Int = 0, model: String? = nil) {
        guard let call = adjustCall(requests: requests, tokens: tokens, model: model) else { return }
        store.send(Self.adjustScript, keys: call.keys, args: call.args)
    }

    /// The call of `adjustScript` that `adjust` makes; nil when it changes nothing.
    package func adjustCall(requests: Int = 0, tokens: Int = 0, model: String? = nil) -> (keys: [[UInt8]], args: [String])? {
        var keys: [[UInt8]] = []
        var args: [String] = []
        for b in buckets(model: model) {
            let units = b.tokens ? (tokens < 0 ? -min(-tokens, b.capacity) : tokens) : requests
            guard units != 0 else { continue }
            keys.append(b.key)
            args += [Self.number(b.interval), String(units)]
        }
        return keys.isEmpty ? nil : (keys, args)
    }

    /// Pauses the provider for every process for `duration` (a `Retry-After`).
    package func pause(for duration: Duration) {
        _ = store.eval(Self.pauseScript, keys: [pauseKey], args: [String(max(1, duration.microseconds))])
    }
}

/// A non-negative number as Lua's tonumber reads it, to the thousandth,
/// without exponent notation.
func luaNumber(_ d: Double) -> String {
    let milli = Int((max(0, d) * 1000).rounded())
    let frac = String(milli % 1000)
    return "\(milli / 1000).\(String(repeating: "0", count: 3 - frac.count))\(frac)"
}
