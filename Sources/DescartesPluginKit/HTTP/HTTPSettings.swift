import Glibc

/// The configuration every HTTP provider plugin reads the same way, checked
/// when the backend is created: `endpoint`, `api_key`, `ca_bundle`, `proxy`,
/// `timeout_secs`, `headers` (extra request headers) and `max_response_mb`.
///
/// Transport security as the design asks: there is no key that turns
/// certificate verification off; `ca_bundle` names the CAs to trust instead
/// of the system's. A proxy comes from `proxy`, else from the environment as
/// libcurl reads it (`HTTPS_PROXY`/`https_proxy`, `http_proxy`, `NO_PROXY`).
public struct HTTPSettings: Sendable {
    /// The API base URL, without a trailing slash.
    public var endpoint: String
    /// The credential, when one is configured. Never log it.
    public var apiKey: String?
    public var caBundle: String?
    public var proxy: String?
    /// The configured request timeout, used for calls that carry no
    /// deadlines of their own (list, health).
    public var timeoutSecs: Int?
    /// Extra headers from the `headers` map, in the map's order.
    public var extraHeaders: [(String, String)]
    /// The largest response body read (`max_response_mb`, default 64 MiB).
    public var maxResponseBytes: Int

    /// Reads and checks the keys.
    ///
    /// - Throws: `config`, naming the key and what is wrong with its value.
    public init(_ context: BackendContext, defaultEndpoint: String) throws(ProviderError) {
        var endpoint = context.string("endpoint") ?? defaultEndpoint
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        let lower = endpoint.lowercased()
        guard lower.hasPrefix("https://") || lower.hasPrefix("http://"), ProviderHTTP.host(of: endpoint) != nil else {
            throw ProviderError(.config, "key 'endpoint': '\(endpoint)' is not an http:// or https:// URL with a host")
        }
        if endpoint.contains("?") || endpoint.contains("#") {
            throw ProviderError(.config, "key 'endpoint': '\(endpoint)' must not have a query or fragment (credentials never travel in URLs)")
        }
        self.endpoint = endpoint
        let key = context.string("api_key")
        apiKey = (key?.isEmpty ?? true) ? nil : key
        if let k = apiKey, k.contains("\n") || k.contains("\r") {
            throw ProviderError(.config, "key 'api_key': the value contains a line break")
        }
        caBundle = context.string("ca_bundle").flatMap { $0.isEmpty ? nil : $0 }
        if let ca = caBundle, access(ca, R_OK) != 0 {
            throw ProviderError(.config, "key 'ca_bundle': cannot read '\(ca)': \(String(cString: strerror(errno)))")
        }
        proxy = context.string("proxy").flatMap { $0.isEmpty ? nil : $0 }
        if let p = proxy {
            let schemes = ["http://", "https://", "socks4://", "socks4a://", "socks5://", "socks5h://"]
            guard schemes.contains(where: { p.lowercased().hasPrefix($0) }) else {
                throw ProviderError(.config, "key 'proxy': '\(p)' must start with one of \(schemes.joined(separator: ", "))")
            }
        }
        timeoutSecs = context.int("timeout_secs")
        if let t = timeoutSecs, t <= 0 {
            throw ProviderError(.config, "key 'timeout_secs': must be positive, got \(t)")
        }
        var extra: [(String, String)] = []
        if let o = context.config["headers"]?.objectValue {
            for m in o {
                guard let v = m.value.stringValue else { continue }
                if m.key.isEmpty || m.key.contains(":") || m.key.contains(" ") || m.key.contains("\n") || v.contains("\n") || v.contains("\r") {
                    throw ProviderError(.config, "key 'headers': '\(m.key)' is not a valid header")
                }
                extra.append((m.key, v))
            }
        }
        extraHeaders = extra
        maxResponseBytes = try Self.maxResponseBytes(context)
    }

    /// `max_response_mb` (default 64) in bytes: the largest answer read, a
    /// stream's total too. For a plugin that reads its other keys itself.
    public static func maxResponseBytes(_ context: BackendContext) throws(ProviderError) -> Int {
        let mb = context.int("max_response_mb") ?? 64
        guard mb > 0, mb <= 1 << 20 else {
            throw ProviderError(.config, "key 'max_response_mb': must be between 1 and 1048576, got \(mb)")
        }
        return mb << 20
    }

    /// Limits for the small calls that carry no deadlines (models, health,
    /// token counts): 10 s to connect, `timeout_secs` in all but at most
    /// 60 s (`timeout_secs` is sized for completions).
    public var defaultTimeouts: HTTPTimeouts {
        HTTPTimeouts(connect: 10_000, total: min(timeoutSecs ?? 60, 60) * 1000)
    }

    /// The warning to log when the key would travel over plain http:// to a
    /// host that is not loopback.
    public var plainHTTPWarning: String? {
        ProviderHTTP.plainHTTPWarning(endpoint: endpoint, hasCredential: apiKey != nil)
    }
}

extension HTTPSettings {
    /// A request to `endpoint`/`path` with the plugin's `headers`
    /// (credentials and version headers, then `extraHeaders`), a
    /// Content-Type for a body, `Accept`, and these settings' response
    /// limit, CA bundle and proxy; `timeouts` default to `defaultTimeouts`.
    public func request(
        _ method: String, _ path: String, headers: [(String, String)], body: [UInt8] = [], accept: String = "application/json",
        timeouts: HTTPTimeouts? = nil
    ) -> HTTPRequest {
        var h = headers
        if !body.isEmpty { h.append(("Content-Type", "application/json")) }
        h.append(("Accept", accept))
        return HTTPRequest(
            method: method, url: ProviderHTTP.join(endpoint, path), headers: h, body: body, timeouts: timeouts ?? defaultTimeouts,
            maxResponseBytes: maxResponseBytes, caBundle: caBundle, proxy: proxy)
    }

    /// `e`, a provider's mapping of a non-2xx answer to `path`, made
    /// actionable and safe: a 404 whose message names neither is given the
    /// model and the URL; the credential, and any of `secrets`, that the
    /// server echoed back is masked.
    public func explained(_ e: ProviderError, status: Int, path: String, model: String?, secrets: [String?] = []) -> ProviderError {
        var e = e
        if status == 404 {
            var notes: [String] = []
            if let model, !e.message.contains(model) { notes.append("model '\(model)'") }
            notes.append(ProviderHTTP.join(endpoint, path))
            e.message += " (\(notes.joined(separator: ", ")))"
        }
        for secret in ([apiKey] + secrets).compactMap({ $0 }) where secret.utf8.count >= 4 && e.message.contains(secret) {
            e.message = e.message.split(separator: secret, omittingEmptySubsequences: false).joined(separator: "[REDACTED]")
        }
        return e
    }
}

extension HTTPSettings {
    /// A health check's result for a probe of `method` `path` that `status`
    /// answered: the message `health` prints and the details it reports
    /// (endpoint, status, latency since `start`).
    public func healthReport(instance: String, _ method: String, _ path: String, status: Int, since start: ContinuousClock.Instant) -> JSONValue {
        let ms = (ContinuousClock.now - start).milliseconds
        return [
            "message": .string("\(instance): \(method) \(ProviderHTTP.join(endpoint, path)) answered \(status) in \(ms) ms"),
            "details": ["endpoint": .string(endpoint), "status": .integer(status), "latency_ms": .integer(ms)],
        ]
    }
}
