/// One provider's circuit breaker kept in the shared store, so that a
/// breaker opened by one process is open for every process and host with
/// the same `shared:` section (`CircuitBreakerBackend.shared`).
///
/// The state is one hash under the provider's hash tag
/// (`PREFIX breaker:{NAME}`: `failures`, `opened` and `until` in µs of the
/// server's clock, `probe`: until when the half-open probe is out, `last`:
/// the last counted failure). Every transition is one Lua script, atomic on
/// the server, timed by the server's TIME: `admitScript` before each
/// attempt (closed: go; open: refuse; past `until`: take the probe if no
/// other process holds it), `recordScript` after one that failed, or that
/// succeeded when the store had counted failures or it was the probe. So a
/// request costs one round trip while the provider is healthy, two after a
/// counted failure.
package struct SharedBreaker: Sendable {
    package let store: SharedStore
    package let provider: String
    package let settings: CircuitBreakerSettings

    package init(store: SharedStore, provider: String, settings: CircuitBreakerSettings) {
        self.store = store
        self.provider = provider
        self.settings = settings
    }

    var key: [UInt8] { store.key("breaker", "{\(provider)}") }

    /// KEYS: the hash. ARGV: the probe's lease in µs, and `peek` to take no
    /// probe (a health check). Returns {0, failures}
    /// (closed: go), {1, failures} (the probe: go), or {2 or 3 (open, or
    /// half-open with the probe out), failures, opened, until, µs left, last}.
    package static let admitScript = LuaScript(
        """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local h = redis.call('HMGET', KEYS[1], 'failures', 'opened', 'until', 'probe', 'last')
        local failures = tonumber(h[1] or '0')
        if not h[3] then return {0, failures} end
        local untilT = tonumber(h[3])
        if ARGV[2] ~= 'peek' and now >= untilT and ((not h[4]) or now >= tonumber(h[4])) then
          redis.call('HSET', KEYS[1], 'probe', string.format('%.0f', now + tonumber(ARGV[1])))
          return {1, failures}
        end
        local code = 2
        if now >= untilT then code = 3 end
        if ARGV[2] == 'peek' and code == 3 then return {1, failures} end
        return {code, failures, h[2] or '0', h[3], string.format('%.0f', math.max(0, untilT - now)), h[5] or ''}
        """)

    /// KEYS: the hash. ARGV: outcome (ok, neutral, cancel, fail), probe
    /// (1/0), failures that open, open µs, the failure's description.
    /// Returns 1 when the breaker is open afterwards.
    package static let recordScript = LuaScript(
        """
        local outcome = ARGV[1]
        local probe = ARGV[2] == '1'
        if outcome == 'ok' then redis.call('DEL', KEYS[1]) return 0 end
        if outcome == 'neutral' then
          if probe then redis.call('DEL', KEYS[1]) end
          return 0
        end
        if outcome == 'cancel' then
          if probe then redis.call('HDEL', KEYS[1], 'probe') end
          return 0
        end
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local open = tonumber(ARGV[4])
        local ttl = math.ceil(open / 1000) + 3600000
        if redis.call('HEXISTS', KEYS[1], 'until') == 1 then
          if not probe then return 1 end
          redis.call('HSET', KEYS[1], 'opened', string.format('%.0f', now), 'until', string.format('%.0f', now + open), 'last', ARGV[5])
          redis.call('HDEL', KEYS[1], 'probe')
          redis.call('PEXPIRE', KEYS[1], ttl)
          return 1
        end
        local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
        redis.call('HSET', KEYS[1], 'last', ARGV[5])
        redis.call('PEXPIRE', KEYS[1], ttl)
        if f >= tonumber(ARGV[3]) then
          redis.call('HSET', KEYS[1], 'opened', string.format('%.0f', now), 'until', string.format('%.0f', now + open))
          return 1
        end
        return 0
        """)

    /// What the store decided.
    package enum Admission: Sendable {
        /// Closed, with this many counted failures so far.
        case pass(failures: Int)
        /// Half-open: this request is the one probe.
        case probe
        /// Open: fail at once with this error; `left` until the probe may go.
        case refused(ProviderError, left: Duration, failures: Int)
    }

    /// Asks the store (one round trip); nil when it does not answer.
    /// `peek`: only says whether it is open (half-open is `.probe`), taking nothing.
    package func admit(peek: Bool = false) -> Admission? {
        switch store.eval(Self.admitScript, keys: [key], args: [String(max(1, settings.open.microseconds)), peek ? "peek" : "go"]) {
        case .failure: return nil
        case .success(let v):
            guard let a = v.items, a.count >= 2, let code = a[0].int, let failures = a[1].int else { return nil }
            switch code {
            case 0: return .pass(failures: failures)
            case 1: return .probe
            default:
                guard a.count >= 6, let opened = a[2].int, let until = a[3].int, let left = a[4].int else { return nil }
                let last = a[5].bytes.map { String(decoding: $0, as: UTF8.self) } ?? ""
                let e = CircuitBreaker.openError(
                    provider: provider, settings: settings, failures: failures, lastError: last.isEmpty ? nil : last, probing: code == 3,
                    openedUnixMS: opened / 1000, untilUnixMS: until / 1000, left: .microseconds(left), shared: true)
                return .refused(e, left: .microseconds(left), failures: failures)
            }
        }
    }

    /// Records an attempt's outcome (nil: answered) in the store, when it
    /// changes anything there.
    package func record(_ error: ProviderError?, _ admission: Admission) {
        let probe: Bool
        let failuresBefore: Int
        switch admission {
        case .pass(let f): (probe, failuresBefore) = (false, f)
        case .probe: (probe, failuresBefore) = (true, 1)
        case .refused: return
        }
        let outcome: String
        if let e = error {
            outcome = e.kind == .cancelled ? "cancel" : CircuitBreaker.counts(e) ? "fail" : "neutral"
        } else {
            outcome = "ok"
        }
        // Nothing to reset: a healthy provider costs no second round trip.
        if (outcome == "ok" && failuresBefore == 0) || ((outcome == "neutral" || outcome == "cancel") && !probe) { return }
        _ = store.eval(
            Self.recordScript, keys: [key],
            args: [
                outcome, probe ? "1" : "0", String(settings.failures), String(max(1, settings.open.microseconds)),
                error.map(CircuitBreaker.describe) ?? "",
            ])
    }
}
