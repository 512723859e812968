import Descartes

/// An answer that is an error: the HTTP status and what each protocol's
/// error document says. Made by the gateway itself (a wrong key, a bad
/// body, an unknown model) or from a backend's `ProviderError`.
package struct GatewayError: Error, Sendable {
    var status: Int
    /// OpenAI's `error.type`.
    var openAIType: String
    /// Anthropic's `error.type`.
    var anthropicType: String
    var message: String
    /// OpenAI's `error.code` (e.g. "model_not_found", "invalid_api_key").
    var code: String?
    /// OpenAI's `error.param`: the request member at fault.
    var param: String?
    /// Seconds for `Retry-After` (429, 503).
    var retryAfter: Int?
    /// The backend error's kind, for the access log.
    var kind: String
    /// Anthropic's status when it differs from OpenAI's (402 for a spent budget).
    var anthropicStatus: Int?

    /// The status for a protocol.
    func status(_ anthropic: Bool) -> Int { anthropic ? anthropicStatus ?? status : status }

    init(
        status: Int, openAIType: String, anthropicType: String, message: String, code: String? = nil, param: String? = nil,
        retryAfter: Int? = nil, kind: String
    ) {
        self.status = status
        self.openAIType = openAIType
        self.anthropicType = anthropicType
        self.message = message
        self.code = code
        self.param = param
        self.retryAfter = retryAfter
        self.kind = kind
    }

    static func invalidRequest(_ message: String, param: String? = nil) -> GatewayError {
        GatewayError(
            status: 400, openAIType: "invalid_request_error", anthropicType: "invalid_request_error", message: message, param: param,
            kind: "bad_request")
    }

    static func unauthorized(_ message: String) -> GatewayError {
        GatewayError(
            status: 401, openAIType: "invalid_request_error", anthropicType: "authentication_error", message: message, code: "invalid_api_key",
            kind: "unauthorized")
    }

    static func forbidden(_ message: String) -> GatewayError {
        GatewayError(status: 403, openAIType: "permission_error", anthropicType: "permission_error", message: message, kind: "forbidden")
    }

    static func notFound(_ message: String, code: String? = nil, param: String? = nil) -> GatewayError {
        GatewayError(
            status: 404, openAIType: "invalid_request_error", anthropicType: "not_found_error", message: message, code: code, param: param,
            kind: "not_found")
    }

    static func methodNotAllowed(_ message: String) -> GatewayError {
        GatewayError(status: 405, openAIType: "invalid_request_error", anthropicType: "invalid_request_error", message: message, kind: "method")
    }

    static func tooLarge(_ limit: Int) -> GatewayError {
        GatewayError(
            status: 413, openAIType: "invalid_request_error", anthropicType: "request_too_large",
            message: "the request body is larger than the gateway's limit of \(limit) bytes (server.max_body_mb in providers.yaml)",
            kind: "too_large")
    }

    /// A gateway key's budget is spent: what OpenAI answers for an account
    /// out of credit (429 `insufficient_quota`), and Anthropic's 402
    /// `billing_error`; with `x-should-retry: false`, which both SDKs obey
    /// (retrying cannot help).
    static func budgetSpent(_ message: String) -> GatewayError {
        var e = GatewayError(
            status: 429, openAIType: "insufficient_quota", anthropicType: "billing_error", message: message, code: "insufficient_quota",
            kind: "budget_spent")
        e.anthropicStatus = 402
        return e
    }

    /// The response store failed (its file is named in the gateway's log, not to the client).
    static func storeFailed() -> GatewayError {
        GatewayError(
            status: 500, openAIType: "server_error", anthropicType: "api_error",
            message: "the gateway's response store failed (its log says why)", kind: "store")
    }

    static func unavailable(_ message: String) -> GatewayError {
        GatewayError(status: 503, openAIType: "server_error", anthropicType: "overloaded_error", message: message, kind: "shutting_down")
    }

    /// A backend's error as the client sees it. The status says whose fault
    /// it is: the request's (4xx), the upstream's (502, 503, 504), or ours
    /// (500). An upstream's authentication failure is 502, never 401, so a
    /// client never takes it for a wrong gateway key.
    init(_ e: ProviderError) {
        message = e.message
        if let p = e.provider, !message.hasPrefix(p) { message = "\(p): \(message)" }
        kind = e.kind.rawValue
        code = nil
        param = nil
        retryAfter = nil
        switch e.kind {
        case .api:
            // The upstream refused the request: its own 4xx passes through
            // (400, 404 unknown model, 413, 422); anything else is a 400.
            let s = e.status ?? 400
            status = [400, 404, 409, 413, 422].contains(s) ? s : 400
            openAIType = "invalid_request_error"
            anthropicType = status == 404 ? "not_found_error" : status == 413 ? "request_too_large" : "invalid_request_error"
        case .unsupportedFeature:
            status = 400
            openAIType = "invalid_request_error"
            anthropicType = "invalid_request_error"
        case .rateLimited:
            status = 429
            openAIType = "rate_limit_error"
            anthropicType = "rate_limit_error"
            code = "rate_limit_exceeded"
            retryAfter = e.retryAfter.map { d in
                let (s, atto) = d.components
                return max(1, Int(s) + (atto > 0 ? 1 : 0))
            } ?? 1
        case .timeout:
            status = 504
            openAIType = "timeout_error"
            anthropicType = "timeout_error"
        case .providerUnavailable, .initialization:
            status = 503
            openAIType = "server_error"
            anthropicType = "overloaded_error"
            retryAfter = e.retryAfter.map { d in max(1, Int(d.components.seconds)) }
        case .authentication:
            status = 502
            openAIType = "upstream_error"
            anthropicType = "api_error"
            code = "upstream_authentication_failed"
            message = "the upstream provider refused the gateway's credentials: \(message)"
        case .http, .streamClosed, .invalidResponse, .json, .process:
            status = 502
            openAIType = "upstream_error"
            anthropicType = "api_error"
        case .cancelled:
            status = 499
            openAIType = "server_error"
            anthropicType = "api_error"
        default:  // backend, config
            status = 500
            openAIType = "server_error"
            anthropicType = "api_error"
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}`
    var openAI: JSONValue {
        ["error": ["message": .string(message), "type": .string(openAIType), "param": param.map { .string($0) } ?? .null, "code": code.map { .string($0) } ?? .null]]
    }

    /// `{"type": "error", "error": {"type", "message"}}`
    var anthropic: JSONValue {
        ["type": "error", "error": ["type": .string(anthropicType), "message": .string(message)]]
    }

    var headers: [(String, String)] {
        var h: [(String, String)] = [("Content-Type", "application/json")]
        if let r = retryAfter { h.append(("Retry-After", String(r))) }
        if status == 401 { h.append(("WWW-Authenticate", "Bearer")) }
        if kind == "budget_spent" { h.append(("x-should-retry", "false")) }
        return h
    }
}
