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

/// Masks secret values in text. Every secret the host resolves (API keys,
/// tokens) is registered here, and every log line, error message and trace
/// passes through `redact` before it leaves the process.
public final class Redactor: Sendable {
    public static let shared = Redactor()
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

/// Where log records go: stderr, one line each, prefixed with the source.
public final class LogSink: Sendable {
    public static let shared = LogSink()
    private let levelValue = Atomic<UInt32>(LogLevel.warning.rawValue)
    private let writeLock = Lock<Void>(())
    /// Extra destinations (tests capture logs here).
    private let taps = Lock<[@Sendable (LogLevel, String, String) -> Void]>([])

    public init() {}

    public var level: LogLevel {
        get { LogLevel(rawValue: levelValue.load(ordering: .relaxed)) ?? .warning }
        set { levelValue.store(newValue.rawValue, ordering: .relaxed) }
    }

    public func isEnabled(_ l: LogLevel) -> Bool { l.rawValue <= levelValue.load(ordering: .relaxed) }

    public func addTap(_ tap: @escaping @Sendable (LogLevel, String, String) -> Void) {
        taps.withLock { $0.append(tap) }
    }

    /// Logs `message` from `source` (e.g. "plugin openai") after redaction.
    public func log(_ l: LogLevel, _ source: String, _ message: @autoclosure () -> String) {
        guard isEnabled(l) else { return }
        let text = Redactor.shared.redact(message())
        let line = "descartes: \(source): \(l): \(text)\n"
        writeLock.withLock { _ in
            var bytes = Array(line.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + off, $0.count - off) }
                if n <= 0 { break }
                off += n
            }
        }
        for t in taps.withLock({ $0 }) { t(l, source, text) }
    }
}
