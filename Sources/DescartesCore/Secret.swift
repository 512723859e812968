/// A value that must never be printed: an API key, a token, a password.
///
/// Every way Swift turns a value into text (`description`, string
/// interpolation, `debugDescription`, `dump`, `Mirror`) yields `[REDACTED]`,
/// so a secret that ends up in a log line, an error message, a `--verbose`
/// trace or a crash message by mistake prints nothing. The only way to the
/// text is `reveal()`, called where the value leaves the process on purpose
/// (the config document handed to a plugin).
///
/// ```swift
/// let key = Secret("sk-live-...")
/// print("using \(key)")   // using [REDACTED]
/// ```
public struct Secret: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// What every rendering of a secret prints.
    public static let mask = "[REDACTED]"

    private let value: String

    public init(_ value: String) { self.value = value }

    /// The secret's text. Call it only where the value is handed on to the
    /// thing that needs it, never to build a message.
    public func reveal() -> String { value }

    public var isEmpty: Bool { value.isEmpty }

    public var description: String { Secret.mask }
    public var debugDescription: String { Secret.mask }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }

    /// Compares in time independent of where the values differ.
    public static func == (a: Secret, b: Secret) -> Bool {
        let x = Array(a.value.utf8)
        let y = Array(b.value.utf8)
        var diff = UInt8(truncatingIfNeeded: x.count ^ y.count)
        for i in 0..<max(x.count, y.count) {
            diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
        }
        return diff == 0
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(value) }
}
