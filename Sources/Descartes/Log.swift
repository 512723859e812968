import Glibc
import Synchronization
import DescartesSupport

/// Log levels, matching DESCARTES_LOG_* in plugin.h.
public enum LogLevel: UInt32, Sendable, Comparable, CustomStringConvertible {
    case error = 0, warning = 1, info = 2, debug = 3, trace = 4
    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
    public var description: String {
        switch self {
        case .error: return "error"
        case .warning: return "warning"
        case .info: return "info"
        case .debug: return "debug"
        case .trace: return "trace"
        }
    }
}

/// Masks secret values in text. Every secret a `ProviderFactory` resolves
/// (API keys, tokens) is registered in the factory's redactor (its
/// `LogSink`'s), and every log line, error message and trace of the
/// backends it builds passes through `redact` before it leaves them. The
/// list lives as long as the redactor: a factory's secrets go with it.
/// Credential shapes (`Authorization: Bearer ...`, `sk-...`) are masked by
/// every redactor, even an empty one.
public final class Redactor: Sendable {
    private let secrets = Lock<[String]>([])

    public init() {}

    /// Registers a secret value. Values shorter than 4 characters are not
    /// registered (masking them would garble ordinary text).
    public func register(_ secret: String) {
        guard secret.utf8.count >= 4 else { return }
        secrets.withLock { list in
            if !list.contains(secret) {
                list.append(secret)
                // Longest first, so a secret containing another is masked whole.
                list.sort { $0.utf8.count > $1.utf8.count }
            }
        }
    }

    /// The registered values, longest first.
    func registered() -> [String] { secrets.withLock { $0 } }

    /// Registers a `Secret`'s value.
    public func register(_ secret: Secret) { register(secret.reveal()) }

    public static let mask = Secret.mask

    /// `text` with every registered secret, and anything shaped like a
    /// bearer token or API key, replaced by `[REDACTED]`.
    public func redact(_ text: String) -> String {
        var out = text
        let list = secrets.withLock { $0 }
        for s in list where s.utf8.count <= out.utf8.count && out[...].range(of: s) != nil {
            out = out.replacingAll(s, with: Redactor.mask)
        }
        return Redactor.redactKeyShapes(out)
    }

    /// `text` with the registered secrets masked, and nothing else: for
    /// text that is documentation, not data (a manifest's descriptions,
    /// where "Authorization: Bearer ..." is an example to keep).
    package func redactRegistered(_ text: String) -> String {
        var out = text
        for s in registered() where s.utf8.count <= out.utf8.count && out[...].range(of: s) != nil {
            out = out.replacingAll(s, with: Redactor.mask)
        }
        return out
    }

    /// Masks values that look like credentials even when we were never told
    /// about them (a server echoing a key back): see `KeyShapes`.
    static func redactKeyShapes(_ text: String) -> String { KeyShapes.redact(text) }

    /// `error` with its message, details and provider type redacted, for
    /// errors built from what a provider or plugin said.
    public func redact(_ error: ProviderError) -> ProviderError {
        var e = error
        e.message = redact(e.message)
        e.details = e.details.map { redact($0) }
        e.providerType = e.providerType.map { redact($0) }
        return e
    }
}

/// Where a factory's log records go, and which secrets they are masked
/// with. A `ProviderFactory` owns one (`ProviderFactory.log`) and hands it
/// to every backend and middleware it builds, and to the plugins' host
/// tables (the ABI's `log` callback of a backend reaches its factory's
/// sink); nothing in the library logs to a process-wide destination.
///
/// By default records are written to stderr, one line each
/// (`descartes: SOURCE: LEVEL: TEXT`), from `warning` up. An application
/// passes its own handler to route them to its logger:
///
/// ```swift
/// let log = LogSink(level: .info) { level, source, message in
///     print("[\(level)] \(source): \(message)")
/// }
/// let factory = ProviderFactory(log: log)
/// ```
///
/// The handler gets the message already redacted, and may be called from any
/// thread (plugin threads included): it must not block for long.
public final class LogSink: Sendable {
    /// Receives one record: its level, its source ("provider openai",
    /// "retry openai", "cache") and its redacted text.
    public typealias Handler = @Sendable (_ level: LogLevel, _ source: String, _ message: String) -> Void

    /// The secrets masked in every record (and by what the factory returns).
    public let redactor: Redactor
    private let levelValue: Atomic<UInt32>
    private let handler: Handler?
    private let writeLock = Lock<Void>(())
    /// Extra destinations (tests capture logs here).
    private let taps = Lock<[Handler]>([])

    /// A sink at `level` masking with `redactor`; records go to `handler`,
    /// or to stderr when it is nil.
    public init(level: LogLevel = .warning, redactor: Redactor = Redactor(), handler: Handler? = nil) {
        self.redactor = redactor
        self.levelValue = Atomic(level.rawValue)
        self.handler = handler
    }

    /// The most detailed level passed on (plugins ask for it through the
    /// ABI's `log_level` and skip what is below).
    public var level: LogLevel {
        get { LogLevel(rawValue: levelValue.load(ordering: .relaxed)) ?? .warning }
        set { levelValue.store(newValue.rawValue, ordering: .relaxed) }
    }

    public func isEnabled(_ l: LogLevel) -> Bool { l.rawValue <= levelValue.load(ordering: .relaxed) }

    /// Also passes every record (after redaction) to `tap`.
    public func addTap(_ tap: @escaping Handler) {
        taps.withLock { $0.append(tap) }
    }

    /// Logs `message` from `source` (e.g. "plugin openai") after redaction.
    public func log(_ l: LogLevel, _ source: String, _ message: @autoclosure () -> String) {
        guard isEnabled(l) else { return }
        let text = redactor.redact(message())
        if let handler { handler(l, source, text) } else { writeToStandardError("descartes: \(source): \(l): \(text)\n") }
        for t in taps.withLock({ $0 }) { t(l, source, text) }
    }

    private func writeToStandardError(_ line: String) {
        writeLock.withLock { _ in
            var bytes = Array(line.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + off, $0.count - off) }
                if n <= 0 { break }
                off += n
            }
        }
    }
}
