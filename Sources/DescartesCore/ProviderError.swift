/// The one error type every backend reports.
///
/// A struct over an open set of kinds (the original design's fourteen plus
/// `cancelled`), carrying what the provider said: HTTP status, the provider's
/// own error type, a retry-after hint, and which deadline fired. It never holds
/// a secret: messages are built from provider replies and config *names*, and
/// the host masks known secret values before an error leaves it.
public struct ProviderError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The category of an error. Compare with the static members.
    public struct Kind: Sendable, Hashable, CustomStringConvertible {
        /// The wire name (snake_case), as in docs/abi.md.
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The backend failed in a way no other kind describes.
        public static let backend = Kind(rawValue: "backend")
        /// The backend could not be prepared (initialize failed).
        public static let initialization = Kind(rawValue: "initialization")
        /// The provider rejected the request (bad request, unknown model).
        public static let api = Kind(rawValue: "api")
        /// The credentials are missing, wrong or lack permission.
        public static let authentication = Kind(rawValue: "authentication")
        /// A child process failed (exit status, signal, spawn error).
        public static let process = Kind(rawValue: "process")
        /// A JSON document could not be read or written.
        public static let json = Kind(rawValue: "json")
        /// The HTTP exchange failed below the provider's API (TLS, protocol).
        public static let http = Kind(rawValue: "http")
        /// The configuration is invalid.
        public static let config = Kind(rawValue: "config")
        /// The provider asked us to slow down; see `retryAfter`.
        public static let rateLimited = Kind(rawValue: "rate_limited")
        /// The provider cannot be reached or is overloaded.
        public static let providerUnavailable = Kind(rawValue: "provider_unavailable")
        /// The backend does not support what the request asks for.
        public static let unsupportedFeature = Kind(rawValue: "unsupported_feature")
        /// The stream ended before its terminal event.
        public static let streamClosed = Kind(rawValue: "stream_closed")
        /// A deadline passed; see `deadline`.
        public static let timeout = Kind(rawValue: "timeout")
        /// The provider's answer could not be understood.
        public static let invalidResponse = Kind(rawValue: "invalid_response")
        /// The caller cancelled the request.
        public static let cancelled = Kind(rawValue: "cancelled")

        public static let all: [Kind] = [
            .backend, .initialization, .api, .authentication, .process, .json, .http, .config, .rateLimited,
            .providerUnavailable, .unsupportedFeature, .streamClosed, .timeout, .invalidResponse, .cancelled,
        ]
    }

    public var kind: Kind
    /// What went wrong, for humans.
    public var message: String
    /// The provider instance that failed, when known.
    public var provider: String?
    /// The HTTP status or process exit status, when there is one.
    public var status: Int?
    /// The provider's own error type or code (e.g. "rate_limit_error").
    public var providerType: String?
    /// How long the provider asked us to wait before retrying.
    public var retryAfter: Duration?
    /// Which deadline fired, for `.timeout`: "connect", "first_token",
    /// "idle" or "total".
    public var deadline: String?
    /// Further problems, when one error reports several (config validation).
    public var details: [String]
    /// Every attempt that failed on the way to this error, oldest first, this
    /// one last, when a middleware (retry, fallback) made more than one; empty
    /// when the error comes from a single attempt.
    public var attempts: [Attempt]
    /// What the failed request had already done that running it again would
    /// do twice ("ran tools: Bash", "streamed text"): an agent's turn that
    /// acted before it failed. Non-empty: never retried or sent to a
    /// fallback behind the caller's back, whatever the kind.
    public var sideEffects: [String]

    public init(
        _ kind: Kind, _ message: String, provider: String? = nil, status: Int? = nil, providerType: String? = nil,
        retryAfter: Duration? = nil, deadline: String? = nil, details: [String] = [], attempts: [Attempt] = [],
        sideEffects: [String] = []
    ) {
        self.kind = kind
        self.message = message
        self.provider = provider
        self.status = status
        self.providerType = providerType
        self.retryAfter = retryAfter
        self.deadline = deadline
        self.details = details
        self.attempts = attempts
        self.sideEffects = sideEffects
    }

    public var description: String {
        var s = ""
        if let provider { s += "\(provider): " }
        s += "\(kind)"
        if let status { s += " (\(status))" }
        s += ": \(message)"
        for d in details { s += "\n  - \(d)" }
        if attempts.count > 1 {
            for (i, a) in attempts.enumerated() {
                s += "\n  attempt \(i + 1): \(a.provider): \(a.error.kind)"
                if let st = a.error.status { s += " (\(st))" }
                s += " after \(a.duration.milliseconds) ms: \(a.error.message)"
            }
        }
        return s
    }

    /// Whether retrying the same request may succeed (before any output
    /// reached the caller). Never when the request had side effects.
    public var isRetryable: Bool {
        if !sideEffects.isEmpty { return false }
        switch kind {
        case .rateLimited, .providerUnavailable, .timeout, .streamClosed: return true
        case .http: return true
        default: return false
        }
    }
}
