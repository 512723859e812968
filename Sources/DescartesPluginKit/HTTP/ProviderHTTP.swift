import Glibc
internal import DescartesSupport

/// What every HTTP provider plugin needs besides its wire format: error
/// mapping by status, Retry-After parsing, bounded excerpts of bodies, and
/// the transport rules of the original design (warn when a key would travel
/// over plain HTTP to a host that is not loopback).
public enum ProviderHTTP {
    /// The error for a non-2xx response.
    ///
    /// - 400, 404, 409, 413, 422 and other 4xx: `api` (the provider's message kept)
    /// - 401, 403: `authentication`
    /// - 429: `rateLimited`, carrying `retry-after-ms` / `retry-after`
    /// - 408, 500, 502, 503, 504, 529 and other 5xx: `providerUnavailable`
    ///   (with any Retry-After the server gave)
    /// - 3xx: `http` (redirects are never followed)
    ///
    /// `message` and `type` are what the provider's error body said (see
    /// `errorFields`); the result's message carries the status and them.
    public static func error(
        status: Int, headers: HTTPHeaders, message: String?, type: String?, code: String? = nil, endpoint: String
    ) -> ProviderError {
        let said = [type.map { "\($0)" }, message].compactMap { $0 }.joined(separator: ": ")
        let text = said.isEmpty ? "HTTP \(status)" : "HTTP \(status): \(said)"
        var e: ProviderError
        if (300...399).contains(status) {
            let location = headers["location"].map { " to \($0)" } ?? ""
            e = ProviderError(.http, "HTTP \(status): redirect\(location) refused (redirects are never followed, so credentials never reach another host)")
        } else {
            e = ProviderError(kind(forStatus: status), text)
        }
        e.status = status
        e.providerType = type ?? code
        e.retryAfter = retryAfter(headers)
        return e
    }

    /// The error kind an HTTP status stands for (see `error(status:...)`);
    /// also used for statuses providers report inside a 200 stream.
    public static func kind(forStatus status: Int) -> ProviderError.Kind {
        switch status {
        case 401, 403: return .authentication
        case 429: return .rateLimited
        case 408, 500...599: return .providerUnavailable
        case 300...399: return .http
        default: return .api
        }
    }

    /// The error kind a provider's own error type names, when it names one
    /// this mapping knows: OpenAI's and Anthropic's `type` values
    /// (`rate_limit_error`, `overloaded_error`, `authentication_error`,
    /// `server_error`, ...). Nil for anything else (`invalid_request_error`
    /// is left to the status).
    public static func kind(forErrorType type: String?) -> ProviderError.Kind? {
        guard let t = type?.lowercased() else { return nil }
        if t.contains("rate_limit") || t == "tokens" || t == "requests" { return .rateLimited }
        if t.contains("authentication") || t.contains("permission") || t == "invalid_api_key" { return .authentication }
        if t.contains("overloaded") || t == "server_error" || t == "api_error" || t.contains("unavailable") || t == "timeout" {
            return .providerUnavailable
        }
        if t.contains("invalid_request") || t.contains("not_found") || t.contains("request_too_large") { return .api }
        return nil
    }

    /// The wait a response asks for: `retry-after-ms` (milliseconds), else
    /// `retry-after` as seconds (fractions allowed) or an HTTP date.
    public static func retryAfter(_ headers: HTTPHeaders, now: Int = Int(time(nil))) -> Duration? {
        if let ms = headers["retry-after-ms"].flatMap({ Double($0.trimmingSpaces) }), ms >= 0 {
            return .milliseconds(Int(ms.rounded(.up)))
        }
        guard let v = headers["retry-after"]?.trimmingSpaces, !v.isEmpty else { return nil }
        if let s = Double(v), s >= 0 { return .milliseconds(Int((s * 1000).rounded(.up))) }
        if let date = httpDate(v) { return .seconds(max(0, date - now)) }
        return nil
    }

    /// Seconds since the epoch for an IMF-fixdate ("Wed, 21 Oct 2015 07:28:00 GMT"),
    /// the form RFC 9110 requires senders to use.
    public static func httpDate(_ s: String) -> Int? {
        let parts = s.split(separator: " ")
        guard parts.count == 6, parts[5] == "GMT", let day = Int(parts[1]), let year = Int(parts[3]) else { return nil }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let month = months.firstIndex(of: String(parts[2])) else { return nil }
        let hms = parts[4].split(separator: ":").compactMap { Int($0) }
        guard hms.count == 3 else { return nil }
        var t = tm()
        t.tm_year = Int32(year - 1900)
        t.tm_mon = Int32(month)
        t.tm_mday = Int32(day)
        t.tm_hour = Int32(hms[0])
        t.tm_min = Int32(hms[1])
        t.tm_sec = Int32(hms[2])
        return Int(timegm(&t))
    }

    /// The `message` and `type` (or `code`) of a JSON error body in the
    /// shapes providers use: `{"error": {"message", "type", "code"}}`
    /// (OpenAI and compatibles, Anthropic), `{"error": "text"}` (Ollama),
    /// `{"message": ...}`, `{"detail": ...}`. Nil fields when the body says
    /// nothing usable (the caller then shows an excerpt).
    public static func errorFields(_ body: [UInt8]) -> (message: String?, type: String?, code: String?) {
        guard let doc = try? JSONValue.parse(bytes: body) else { return (nil, nil, nil) }
        if let e = doc["error"] {
            if let s = e.stringValue { return (s, nil, nil) }
            let code = e["code"].flatMap { $0.stringValue ?? ($0.intValue.map(String.init)) }
            return (e["message"]?.stringValue, e["type"]?.stringValue, code)
        }
        if let m = doc["message"]?.stringValue { return (m, doc["type"]?.stringValue, nil) }
        if let d = doc["detail"] { return (d.stringValue ?? d.jsonText, nil, nil) }
        return (nil, nil, nil)
    }

    /// At most `limit` bytes of a body, as text, for error messages.
    public static func excerpt(_ body: [UInt8], limit: Int = 300) -> String {
        if body.isEmpty { return "(empty body)" }
        let cut = body.count > limit
        let text = String(decoding: body.prefix(limit), as: UTF8.self)
        return cut ? text + "... (\(body.count) bytes)" : text
    }

    /// The error for a non-2xx response from its body: the provider's own
    /// message when it has one, a bounded excerpt otherwise.
    public static func error(status: Int, headers: HTTPHeaders, body: [UInt8], endpoint: String) -> ProviderError {
        let f = errorFields(body)
        return error(
            status: status, headers: headers, message: f.message ?? (f.type == nil ? excerpt(body) : nil), type: f.type,
            code: f.code, endpoint: endpoint)
    }

    /// True for hosts on the loopback interface (127.0.0.0/8, ::1, localhost).
    public static func isLoopback(url: String) -> Bool {
        guard let host = host(of: url) else { return false }
        return host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "[::1]"
    }

    /// The host part of an http(s) URL.
    public static func host(of url: String) -> String? {
        guard let schemeEnd = url.range(of: "://") else { return nil }
        var rest = url[schemeEnd.upperBound...]
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        if rest.hasPrefix("[") {
            if let close = rest.firstIndex(of: "]") { return String(rest[...close]) }
            return nil
        }
        if let colon = rest.firstIndex(of: ":") { rest = rest[..<colon] }
        return rest.isEmpty ? nil : String(rest).lowercased()
    }

    /// A warning when a credential would be sent over plain http:// to a
    /// host that is not loopback, or nil.
    public static func plainHTTPWarning(endpoint: String, hasCredential: Bool) -> String? {
        guard hasCredential, endpoint.lowercased().hasPrefix("http://"), !isLoopback(url: endpoint) else { return nil }
        return "the API key will be sent unencrypted over plain http:// to \(host(of: endpoint) ?? endpoint); use https:// unless this network is trusted"
    }

    /// RFC 3986 percent-encoding of everything but the unreserved characters
    /// (`A-Z a-z 0-9 - _ . ~`), for a query value or a path segment (a model
    /// id with `:` or `/`, a page token). Upper-case hex digits, as SigV4's
    /// canonical URI requires.
    public static func percentEncoded(_ s: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.append(b)
            default:
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// `base` + "/" + `path`, with exactly one slash between them.
    public static func join(_ base: String, _ path: String) -> String {
        var b = Substring(base)
        while b.hasSuffix("/") { b = b.dropLast() }
        var p = Substring(path)
        while p.hasPrefix("/") { p = p.dropFirst() }
        return b + "/" + p
    }
}
