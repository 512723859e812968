/// One HTTP request for `HTTPClient`.
public struct HTTPRequest: Sendable {
    public var method: String
    public var url: String
    /// Request headers, in order. Never log these: they carry credentials.
    public var headers: [(String, String)]
    public var body: [UInt8]
    public var timeouts: HTTPTimeouts
    /// The most response-body bytes accepted before the transfer is aborted
    /// with `responseTooLarge` (a stream's total, too).
    public var maxResponseBytes: Int
    /// A CA bundle file to verify the server with, instead of the system's.
    public var caBundle: String?
    /// A proxy URL ("http://proxy:3128"); nil uses `HTTPS_PROXY`/`NO_PROXY`
    /// from the environment, as libcurl does.
    public var proxy: String?

    public init(
        method: String = "GET", url: String, headers: [(String, String)] = [], body: [UInt8] = [],
        timeouts: HTTPTimeouts = HTTPTimeouts(), maxResponseBytes: Int = 64 << 20, caBundle: String? = nil,
        proxy: String? = nil
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeouts = timeouts
        self.maxResponseBytes = maxResponseBytes
        self.caBundle = caBundle
        self.proxy = proxy
    }
}

/// Time limits of one transfer, in milliseconds (nil: none).
public struct HTTPTimeouts: Sendable, Hashable {
    /// Establishing the TCP (and TLS) connection.
    public var connect: Int?
    /// From the start until the first byte of the response (headers).
    public var firstByte: Int?
    /// Between two reads of the response.
    public var idle: Int?
    /// The whole transfer.
    public var total: Int?

    public init(connect: Int? = nil, firstByte: Int? = nil, idle: Int? = nil, total: Int? = nil) {
        self.connect = connect
        self.firstByte = firstByte
        self.idle = idle
        self.total = total
    }

    /// The request's deadlines, as the host passed them.
    public init(_ d: Deadlines, defaultTotal: Int? = nil) {
        connect = d.connect?.milliseconds
        firstByte = d.firstToken?.milliseconds
        idle = d.idle?.milliseconds
        total = d.total?.milliseconds ?? defaultTotal
    }
}

/// Response headers (names compared case-insensitively).
public struct HTTPHeaders: Sendable {
    public var fields: [(name: String, value: String)] = []
    public init() {}
    /// The last value of the field `name`, compared without regard to ASCII case.
    public subscript(name: String) -> String? {
        fields.last { HTTPHeaders.sameName($0.name, name) }?.value
    }

    static func sameName(_ a: String, _ b: String) -> Bool {
        let x = a.utf8, y = b.utf8
        guard x.count == y.count else { return false }
        for (p, q) in zip(x, y) where p != q {
            // ASCII letters differ by 0x20 between cases.
            guard p | 0x20 == q | 0x20, (p | 0x20) >= 0x61, (p | 0x20) <= 0x7A else { return false }
        }
        return true
    }
}

/// Why a transfer failed below the provider's own API.
public struct HTTPError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// Nothing answered at the address (refused, unresolvable, unreachable).
        case unreachable
        /// A deadline passed: "connect", "first_token", "idle" or "total".
        case timeout(String)
        /// The connection ended before the response was complete.
        case closed
        /// TLS failed (certificate, handshake).
        case tls
        /// The response exceeded `maxResponseBytes`.
        case tooLarge
        /// The handler asked to stop (its own reason is reported separately).
        case aborted
        /// `cancel()` was called.
        case cancelled
        /// Anything else libcurl reports.
        case other
    }
    public var kind: Kind
    public var message: String
    /// Whether the response headers had arrived when it failed.
    public var afterHeaders: Bool

    public init(_ kind: Kind, _ message: String, afterHeaders: Bool = false) {
        self.kind = kind
        self.message = message
        self.afterHeaders = afterHeaders
    }
    public var description: String { message }

    /// The ProviderError a backend reports for this failure.
    public func providerError(endpoint: String) -> ProviderError {
        switch kind {
        case .unreachable: return ProviderError(.providerUnavailable, "\(message) (\(endpoint))")
        case .timeout(let which):
            return ProviderError(.timeout, message, deadline: which)
        case .closed:
            return afterHeaders
                ? ProviderError(.streamClosed, "the connection closed before the response was complete: \(message)")
                : ProviderError(.providerUnavailable, "the server closed the connection without answering: \(message) (\(endpoint))")
        case .tls: return ProviderError(.http, "TLS: \(message)")
        case .tooLarge: return ProviderError(.invalidResponse, message)
        case .aborted: return ProviderError(.backend, message)
        case .cancelled: return ProviderError(.cancelled, "the request was cancelled")
        case .other: return ProviderError(.http, message)
        }
    }
}

/// Receives one transfer's response. Every method is called on the client's
/// loop thread, in order: `head` once (the final status, after any 1xx),
/// `body` zero or more times, then `end` exactly once. A handler must not
/// block: it decodes and hands events on.
public protocol HTTPResponseHandler: AnyObject {
    func head(status: Int, headers: HTTPHeaders)
    /// Body bytes as they arrive (borrowed for the call). Return false to
    /// abort the transfer (`end` then gets `.aborted`).
    func body(_ bytes: UnsafeRawBufferPointer) -> Bool
    /// The transfer ended: nil when the whole response was received.
    func end(_ error: HTTPError?)
}
