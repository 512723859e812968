import CHiredis
import Glibc

/// A reply from Redis, copied out of hiredis's reply object.
package enum RedisValue: Sendable, Hashable {
    case string([UInt8])
    case integer(Int)
    case array([RedisValue])
    case null
    case status(String)
    case error(String)

    package var int: Int? {
        switch self {
        case .integer(let i): return i
        case .string(let b): return Int(String(decoding: b, as: UTF8.self))
        default: return nil
        }
    }
    package var bytes: [UInt8]? { if case .string(let b) = self { return b } else { return nil } }
    package var items: [RedisValue]? { if case .array(let a) = self { return a } else { return nil } }
}

/// Why a command to the shared store did not get an answer.
public struct SharedStoreFailure: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }

    package init(message: String) { self.message = message }

    /// `ProviderError.providerType` of the refusal below: the store is
    /// down, not the provider, so a circuit breaker does not count it.
    package static let refusalType = "shared_store_unavailable"

    /// What a request that needs the store gets while it does not answer
    /// and `shared.on_failure` is `closed`.
    package func refusal(provider: String? = nil) -> ProviderError {
        ProviderError(
            .providerUnavailable, "\(message) (shared.on_failure: closed refuses requests while it is)", provider: provider,
            providerType: Self.refusalType)
    }
}

/// One blocking connection to Redis through hiredis (not thread-safe: used
/// by one task at a time, from `SharedStore`'s pool).
///
/// Connecting is hiredis's non-blocking connect bounded by a timeout
/// (`redisConnectWithTimeout`); every command is bounded by the socket's
/// receive and send timeouts (`redisSetTimeout`), set to what is left of the
/// caller's deadline when that is shorter than the command timeout. A
/// connection that failed once (I/O error, timeout, protocol error) is not
/// used again: hiredis leaves it in an unknown state.
final class RedisConnection {
    private let context: UnsafeMutablePointer<redisContext>
    private var timeout: Duration = .zero
    let generation: Int

    static func timeval(_ d: Duration) -> Glibc.timeval {
        let us = max(1000, d.microseconds)
        return Glibc.timeval(tv_sec: us / 1_000_000, tv_usec: Int(us % 1_000_000))
    }

    /// Connects within `timeout` (also the bound of AUTH and SELECT).
    init(_ s: SharedSettings, timeout: Duration, generation: Int) throws(SharedStoreFailure) {
        self.generation = generation
        guard let c = redisConnectWithTimeout(s.host, Int32(s.port), Self.timeval(timeout)) else {
            throw SharedStoreFailure(message: "cannot connect to \(s.store): out of memory")
        }
        if c.pointee.err != 0 {
            let why = Self.errorText(c)
            redisFree(c)
            throw SharedStoreFailure(message: "cannot connect to \(s.store): \(why)")
        }
        context = c
        var setup: [[String]] = []
        if let p = s.password {
            setup.append(s.username.map { ["AUTH", $0, p.reveal()] } ?? ["AUTH", p.reveal()])
        }
        if s.database != 0 { setup.append(["SELECT", String(s.database)]) }
        if !setup.isEmpty {
            let replies = try pipeline(setup.map { $0.map { Array($0.utf8) } }, timeout: timeout)
            for r in replies {
                // The reply names neither the password nor the user.
                if case .error(let e) = r { throw SharedStoreFailure(message: "\(s.store) refused the connection's setup: \(e.prefix(120))") }
            }
        }
    }

    deinit { redisFree(context) }

    static func errorText(_ c: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: c.pointee.errstr) { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            let n = bytes.firstIndex(of: 0) ?? bytes.count
            var text = String(decoding: bytes[..<n], as: UTF8.self)
            if c.pointee.err == REDIS_ERR_IO && (text.contains("temporarily unavailable") || text.contains("timed out")) {
                text = "no answer in time"
            }
            return text
        }
    }

    /// Sends `commands` at once (one write) and reads their replies: one
    /// round trip. Each reply may be a Redis error (`.error`); a failure to
    /// get the replies at all throws.
    func pipeline(_ commands: [[[UInt8]]], timeout: Duration) throws(SharedStoreFailure) -> [RedisValue] {
        if timeout != self.timeout {
            guard redisSetTimeout(context, Self.timeval(timeout)) == REDIS_OK else {
                throw SharedStoreFailure(message: "cannot set the command timeout: \(Self.errorText(context))")
            }
            self.timeout = timeout
        }
        for args in commands {
            let count = args.count
            let ptrs = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: count)
            let lens = UnsafeMutablePointer<Int>.allocate(capacity: count)
            var owned: [UnsafeMutablePointer<UInt8>] = []
            for (i, a) in args.enumerated() {
                let p = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, a.count))
                a.withUnsafeBufferPointer { if let b = $0.baseAddress { p.initialize(from: b, count: a.count) } }
                owned.append(p)
                ptrs[i] = UnsafeRawPointer(p).assumingMemoryBound(to: CChar.self)
                lens[i] = a.count
            }
            let rc = redisAppendCommandArgv(context, Int32(count), ptrs, lens)
            for p in owned { p.deallocate() }
            ptrs.deallocate()
            lens.deallocate()
            guard rc == REDIS_OK else { throw SharedStoreFailure(message: Self.errorText(context)) }
        }
        var out: [RedisValue] = []
        for _ in commands {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
                throw SharedStoreFailure(message: Self.errorText(context))
            }
            let reply = raw.assumingMemoryBound(to: redisReply.self)
            out.append(Self.value(reply))
            freeReplyObject(raw)
        }
        return out
    }

    static func value(_ r: UnsafeMutablePointer<redisReply>) -> RedisValue {
        let p = r.pointee
        func text() -> [UInt8] {
            guard let s = p.str else { return [] }
            return Array(UnsafeRawBufferPointer(start: s, count: p.len).bindMemory(to: UInt8.self))
        }
        switch p.type {
        case REDIS_REPLY_STRING: return .string(text())
        case REDIS_REPLY_INTEGER: return .integer(Int(p.integer))
        case REDIS_REPLY_NIL: return .null
        case REDIS_REPLY_STATUS: return .status(String(decoding: text(), as: UTF8.self))
        case REDIS_REPLY_ERROR: return .error(String(decoding: text(), as: UTF8.self))
        case REDIS_REPLY_ARRAY:
            var items: [RedisValue] = []
            for i in 0..<p.elements { if let e = p.element[i] { items.append(value(e)) } }
            return .array(items)
        default: return .null
        }
    }
}

extension Duration {
    var microseconds: Int {
        let (s, a) = components
        return Int(s) * 1_000_000 + Int(a / 1_000_000_000_000)
    }
}
