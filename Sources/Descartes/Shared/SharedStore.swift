import DescartesSupport
import Glibc

/// The `shared:` section of providers.yaml: the Redis server through which
/// every process and host with the same section shares its rate limits,
/// cool-downs and response cache (docs/scaling.md).
///
/// ```yaml
/// shared:
///   store: redis://127.0.0.1:6379/0   # redis://HOST[:PORT][/DB]; rediss:// is refused (no TLS in Debian's hiredis 0.14)
///   prefix: "descartes:"              # every key starts with it
///   password: ${REDIS_PASSWORD}       # from the environment or a file only; masked everywhere
///   connect_timeout: 250ms
///   command_timeout: 100ms            # and never past the request's own deadline
///   on_failure: open                  # open: go on under the local limits; closed: refuse requests
///   retry_interval: 1s                # how often a store that failed is tried again
///   cluster: false                    # true for a Redis Cluster: no script spans the cache and the limits
/// ```
public struct SharedSettings: Sendable, Hashable, CustomStringConvertible {
    public enum OnFailure: String, Sendable, Hashable { case open, closed }

    public var host = "127.0.0.1"
    public var port = 6379
    public var database = 0
    public var prefix = "descartes:"
    public var username: String?
    public var password: Secret?
    public var connectTimeout: Duration = .milliseconds(250)
    public var commandTimeout: Duration = .milliseconds(100)
    public var onFailure = OnFailure.open
    public var retryInterval: Duration = .seconds(1)
    /// The store is a Redis Cluster (`cluster: true`): a script's keys must
    /// then lie in one hash slot, so a cache miss looks the entry up and
    /// takes the limiter's share in two round trips rather than one script
    /// (docs/scaling.md, "Round trips per request").
    public var cluster = false

    public init() {}

    /// The store's address without credentials, for messages.
    public var store: String { "redis://\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)" }
    public var description: String { store }

    /// Reads `redis://HOST[:PORT][/DB]`; nil and why when it is not one.
    static func parseURL(_ s: String) -> Result<(host: String, port: Int, db: Int), SharedStoreFailure> {
        func bad(_ m: String) -> Result<(host: String, port: Int, db: Int), SharedStoreFailure> { .failure(SharedStoreFailure(message: m)) }
        if s.hasPrefix("rediss://") {
            return bad(
                "'rediss://' (Redis over TLS) needs hiredis with TLS (hiredis_ssl, 1.0 or later); Debian 12's libhiredis 0.14 has none. "
                    + "Use redis:// to a TLS tunnel on this host (stunnel, spiped) or a private network")
        }
        guard s.hasPrefix("redis://") else { return bad("the store is redis://HOST[:PORT][/DB], got '\(s)'") }
        var rest = Substring(s.dropFirst(8))
        if rest.contains("@") { return bad("put no credentials in the store's address; use 'password: ${VAR}' (and 'username:')") }
        var db = 0
        if let slash = rest.firstIndex(of: "/") {
            let d = rest[rest.index(after: slash)...]
            if !d.isEmpty {
                guard let n = Int(d), (0...15).contains(n) else { return bad("the database number in '\(s)' is 0 to 15, got '\(d)'") }
                db = n
            }
            rest = rest[..<slash]
        }
        var host = String(rest)
        var port = 6379
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return bad("unclosed '[' in '\(s)'") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { return bad("the port in '\(s)' is 1 to 65535") }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else { return bad("the port in '\(s)' is 1 to 65535") }
            port = p
        }
        if host.isEmpty { return bad("no host in '\(s)'") }
        return .success((host, port, db))
    }
}

/// The connection to the shared store of one `SharedSettings`, shared by
/// every backend of the process (`SharedStore.shared(_:logSink:)`).
///
/// Each call is one round trip (commands pipelined), bounded by the command
/// timeout and the caller's deadline. When a call fails (refused, reset, no
/// answer in time) the store counts as down: one warning is logged for the
/// outage, later calls fail at once without touching the network, and one
/// call every `retryInterval` tries again; the first that succeeds ends the
/// outage (one notice), with no restart. Callers then fall back to their
/// local state (`on_failure: open`) or refuse (`closed`).
public final class SharedStore: Sendable {
    public let settings: SharedSettings
    let logSink: LogSink

    /// What the store has done so far (`health`, `/metrics`).
    public struct Stats: Sendable, Hashable {
        /// Round trips that got their replies.
        public var roundTrips = 0
        /// The commands those round trips carried (pipelined: one round
        /// trip can carry several, e.g. a cache lookup's GET and PTTL).
        public var commands = 0
        /// Calls that failed (and calls refused at once during an outage).
        public var failures = 0
        /// Outages begun (one notice each).
        public var outages = 0
        /// Whether the last call got its replies.
        public var available = true
        /// Why the last failed call failed.
        public var lastError: String?
        /// Commands sent after an answer (`send`), queued.
        public var queued = 0
        /// Of `roundTrips`, those that sent queued commands (after answers,
        /// off the requests' time).
        public var afterRoundTrips = 0
        /// Of those, commands dropped because the queue was full (the
        /// store slower than the requests for long).
        public var dropped = 0
    }

    private struct State {
        var idle: [Connection] = []
        var generation = 0
        var down = false
        var nextProbe: ContinuousClock.Instant = .now
        var stats = Stats()
    }

    /// A connection moved between tasks under the lock: used by one at a time.
    private struct Connection: @unchecked Sendable { let c: RedisConnection }

    private let state = Lock(State())

    package init(settings: SharedSettings, logSink: LogSink) {
        self.settings = settings
        self.logSink = logSink
        if let p = settings.password { logSink.redactor.register(p) }
    }

    private static let registry = Lock<[SharedSettings: SharedStore]>([:])

    /// The process-wide store of `settings`: every `ReliableProviders` with
    /// the same section shares its connections and outage state.
    public static func shared(_ settings: SharedSettings, logSink: LogSink = LogSink()) -> SharedStore {
        registry.withLock { r in
            if let s = r[settings] { return s }
            let s = SharedStore(settings: settings, logSink: logSink)
            r[settings] = s
            return s
        }
    }

    public var stats: Stats { state.withLock { $0.stats } }

    /// A key under the configured prefix.
    package func key(_ parts: String...) -> [UInt8] { Array((settings.prefix + parts.joined(separator: ":")).utf8) }

    /// Runs `commands` in one round trip. The timeout is the command
    /// timeout, or `deadline` when shorter; during an outage the call fails
    /// at once unless it is the one probe of the retry interval.
    package func run(_ commands: [[[UInt8]]], deadline: Duration? = nil) -> Result<[RedisValue], SharedStoreFailure> {
        let now = ContinuousClock.now
        let (conn, generation, refusal): (Connection?, Int, SharedStoreFailure?) = state.withLock { s in
            if s.down {
                if now < s.nextProbe {
                    s.stats.failures += 1
                    return (nil, s.generation, SharedStoreFailure(message: "the shared store \(settings.store) is unavailable: \(s.stats.lastError ?? "down")"))
                }
                // This call is the probe; the others keep failing fast.
                s.nextProbe = now + settings.retryInterval
            }
            return (s.idle.popLast(), s.generation, nil)
        }
        if let refusal { return .failure(refusal) }
        var timeout = settings.commandTimeout
        if let deadline { timeout = max(.milliseconds(1), min(timeout, deadline)) }
        do throws(SharedStoreFailure) {
            let c: RedisConnection
            if let conn { c = conn.c } else {
                let connect = deadline.map { max(.milliseconds(1), min($0, settings.connectTimeout)) } ?? settings.connectTimeout
                c = try RedisConnection(settings, timeout: connect, generation: generation)
            }
            let replies = try c.pipeline(commands, timeout: timeout)
            let wasDown = state.withLock { s in
                let was = s.down
                s.down = false
                s.stats.roundTrips += 1
                s.stats.commands += commands.count
                s.stats.available = true
                if c.generation == s.generation && s.idle.count < 16 { s.idle.append(Connection(c: c)) }
                return was
            }
            if wasDown { logSink.log(.warning, "shared", "the shared store \(settings.store) answers again: shared limits, cool-downs and cache resume") }
            return .success(replies)
        } catch {
            let began = state.withLock { s in
                let began = !s.down
                s.down = true
                s.nextProbe = ContinuousClock.now + settings.retryInterval
                s.stats.failures += 1
                s.stats.available = false
                s.stats.lastError = error.message
                // Pooled connections may be as broken (a restarted server).
                s.generation += 1
                s.idle.removeAll()
                if began { s.stats.outages += 1 }
                return began
            }
            if began {
                let then = settings.onFailure == .open
                    ? "requests go on under each process's local limits (on_failure: open)" : "requests that need it are refused (on_failure: closed)"
                logSink.log(.warning, "shared", "the shared store \(settings.store) failed: \(error.message); \(then) until it answers again")
            }
            return .failure(error)
        }
    }

    /// Runs one Lua script (EVALSHA, or EVAL the first time the server has
    /// not seen it): one round trip in the usual case.
    package func eval(_ script: LuaScript, keys: [[UInt8]], args: [String], deadline: Duration? = nil) -> Result<RedisValue, SharedStoreFailure> {
        eval(script, keys: keys, args: args, along: [], deadline: deadline).map { $0.script }
    }

    /// Runs one Lua script and `along` (other commands, such as a budget's
    /// MGET) in one round trip: the script's result and the replies of
    /// `along`. When the server has not seen the script yet, the script
    /// alone goes again with EVAL (a second round trip, once per server;
    /// `along` ran once).
    package func eval(_ script: LuaScript, keys: [[UInt8]], args: [String], along: [[[UInt8]]], deadline: Duration? = nil)
        -> Result<(script: RedisValue, along: [RedisValue]), SharedStoreFailure>
    {
        let tail = [Array(String(keys.count).utf8)] + keys + args.map { Array($0.utf8) }
        func split(_ r: [RedisValue]) -> Result<(script: RedisValue, along: [RedisValue]), SharedStoreFailure> {
            Self.scriptResult(r.first ?? .null).map { ($0, Array(r.dropFirst())) }
        }
        switch run([[Array("EVALSHA".utf8), Array(script.sha1.utf8)] + tail] + along, deadline: deadline) {
        case .failure(let f): return .failure(f)
        case .success(let r):
            if case .error(let e) = r.first, e.hasPrefix("NOSCRIPT") {
                let replies = Array(r.dropFirst())
                return run([[Array("EVAL".utf8), Array(script.source.utf8)] + tail], deadline: deadline).flatMap { split($0 + replies) }
            }
            return split(r)
        }
    }

    static func scriptResult(_ v: RedisValue) -> Result<RedisValue, SharedStoreFailure> {
        if case .error(let e) = v { return .failure(SharedStoreFailure(message: "the shared store refused a script: \(e.prefix(200))")) }
        return .success(v)
    }

    // MARK: Writes after the answer

    /// What `send` queued and the task that sends it.
    private struct Behind {
        var pending: [[[UInt8]]] = []
        /// The scripts of queued EVALSHAs, by SHA-1 (for NOSCRIPT).
        var scripts: [String: LuaScript] = [:]
        var sending = false
        /// Commands ever queued, and ever done with (sent, failed or
        /// dropped): a flush waits for what was queued before it only.
        var queued = 0
        var done = 0
        var waiters: [(upTo: Int, c: CheckedContinuation<Void, Never>)] = []
    }
    private let behind = Lock(Behind())

    /// The most commands queued; beyond it the oldest are dropped (counted
    /// in `Stats.dropped`), so a store slower than the requests costs no
    /// unbounded memory.
    static let queueBound = 8192

    /// Sends `commands` after the caller has moved on: the writes that
    /// follow an answer (the cache's `SET`, the token bucket's correction,
    /// a budget's debit), so that none of them is on the caller's time.
    /// Inside a `SharedScope` (a request through the cache layer) they wait
    /// for the request's end and go as one batch; otherwise at once. One
    /// background task sends every batch queued meanwhile in one pipeline
    /// (one round trip), bounded by the command timeout; during an outage
    /// they are dropped, as a synchronous write would fail. `flush()` waits
    /// for them (a backend's shutdown: a one-shot command loses none).
    package func send(_ commands: [[[UInt8]]], scripts: [LuaScript] = []) {
        guard !commands.isEmpty else { return }
        if let scope = SharedScope.current, scope.store === self, scope.hold(commands, scripts: scripts) { return }
        enqueue(commands, scripts: scripts)
    }

    /// Runs `script` after the caller has moved on (`send`), with `along`.
    package func send(_ script: LuaScript, keys: [[UInt8]], args: [String], along: [[[UInt8]]] = []) {
        send([Self.evalsha(script, keys: keys, args: args)] + along, scripts: [script])
    }

    static func evalsha(_ script: LuaScript, keys: [[UInt8]], args: [String]) -> [[UInt8]] {
        [Array("EVALSHA".utf8), Array(script.sha1.utf8), Array(String(keys.count).utf8)] + keys + args.map { Array($0.utf8) }
    }

    func enqueue(_ commands: [[[UInt8]]], scripts: [LuaScript]) {
        let start: Bool = behind.withLock { b in
            b.pending += commands
            b.queued += commands.count
            for s in scripts { b.scripts[s.sha1] = s }
            let over = b.pending.count - Self.queueBound
            if over > 0 {
                b.pending.removeFirst(over)
                b.done += over
                state.withLock { $0.stats.dropped += over }
            }
            state.withLock { $0.stats.queued += commands.count }
            if b.sending { return false }
            b.sending = true
            return true
        }
        if start { Task.detached { await self.drain() } }
    }

    /// How long the sender lets writes gather before it sends them (unless
    /// a `flush` waits): under load, the writes of the requests answered
    /// meanwhile go in one round trip, so the store's work after the
    /// answers (on both hosts' CPUs) grows with the batches, not the
    /// requests. A write reaches Redis this much later.
    static let gatherFor: Duration = .milliseconds(2)

    /// Sends what is queued, batch after batch, until nothing is.
    private func drain() async {
        var finished = 0
        while true {
            if behind.withLock({ $0.waiters.isEmpty }) { try? await Task.sleep(for: Self.gatherFor) }
            let (batch, scripts, ready) = behind.withLock { b -> ([[[UInt8]]], [String: LuaScript], [CheckedContinuation<Void, Never>]) in
                b.done += finished
                let done = b.done
                let ready = b.waiters.filter { $0.upTo <= done }.map(\.c)
                b.waiters.removeAll { $0.upTo <= done }
                if b.pending.isEmpty { b.sending = false }
                defer { b.pending = [] }
                return (b.pending, b.scripts, ready)
            }
            for c in ready { c.resume() }
            if batch.isEmpty { return }
            finished = batch.count
            guard case .success(let replies) = run(batch) else { continue }
            state.withLock { $0.stats.afterRoundTrips += 1 }
            // A script the server has not seen yet: again with its source.
            var again: [[[UInt8]]] = []
            for (command, reply) in zip(batch, replies) {
                if case .error(let e) = reply, e.hasPrefix("NOSCRIPT"), command.count > 1,
                    let script = scripts[String(decoding: command[1], as: UTF8.self)]
                {
                    again.append([Array("EVAL".utf8), Array(script.source.utf8)] + command.dropFirst(2))
                }
            }
            if !again.isEmpty, case .success = run(again) { state.withLock { $0.stats.afterRoundTrips += 1 } }
        }
    }

    /// Returns once everything `send` queued before the call was sent (or
    /// failed, or was dropped); what others queue meanwhile is not waited for.
    public func flush() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let idle = behind.withLock { b in
                if b.done >= b.queued { return true }
                b.waiters.append((b.queued, c))
                return false
            }
            if idle { c.resume() }
        }
    }

    /// PING, timed: `descartes health` and the gateway's `/ready`.
    public func ping(timeout: Duration? = nil) -> Result<Duration, SharedStoreFailure> {
        let start = ContinuousClock.now
        switch run([[Array("PING".utf8)]], deadline: timeout) {
        case .success(let r):
            if case .status("PONG") = r.first { return .success(ContinuousClock.now - start) }
            return .failure(SharedStoreFailure(message: "\(settings.store) answered PING with \(r.first.map { "\($0)" } ?? "nothing")"))
        case .failure(let f): return .failure(f)
        }
    }
}

/// A Lua script run on the server, known by its SHA-1 (EVALSHA).
package struct LuaScript: Sendable {
    package let source: String
    package let sha1: String
    package init(_ source: String) {
        self.source = source
        sha1 = SHA1.hex(Array(source.utf8))
    }
}

/// SHA-1, for EVALSHA's script names only (not for anything secret).
enum SHA1 {
    static func hex(_ message: [UInt8]) -> String {
        var h: [UInt32] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0]
        var m = message
        let bits = UInt64(message.count) * 8
        m.append(0x80)
        while m.count % 64 != 56 { m.append(0) }
        for i in (0..<8).reversed() { m.append(UInt8(truncatingIfNeeded: bits >> (UInt64(i) * 8))) }
        var w = [UInt32](repeating: 0, count: 80)
        for chunk in stride(from: 0, to: m.count, by: 64) {
            for i in 0..<16 {
                w[i] = UInt32(m[chunk + 4 * i]) << 24 | UInt32(m[chunk + 4 * i + 1]) << 16 | UInt32(m[chunk + 4 * i + 2]) << 8 | UInt32(m[chunk + 4 * i + 3])
            }
            for i in 16..<80 {
                let x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]
                w[i] = x << 1 | x >> 31
            }
            var (a, b, c, d, e) = (h[0], h[1], h[2], h[3], h[4])
            for i in 0..<80 {
                let f: UInt32
                let k: UInt32
                switch i {
                case 0..<20: (f, k) = ((b & c) | (~b & d), 0x5A82_7999)
                case 20..<40: (f, k) = (b ^ c ^ d, 0x6ED9_EBA1)
                case 40..<60: (f, k) = ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC)
                default: (f, k) = (b ^ c ^ d, 0xCA62_C1D6)
                }
                let t = (a << 5 | a >> 27) &+ f &+ e &+ k &+ w[i]
                (e, d, c, b, a) = (d, c, b << 30 | b >> 2, a, t)
            }
            h[0] = h[0] &+ a
            h[1] = h[1] &+ b
            h[2] = h[2] &+ c
            h[3] = h[3] &+ d
            h[4] = h[4] &+ e
        }
        return h.map { v in
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 8 - s.count) + s
        }.joined()
    }
}
