// Reading Gemini answers: `GenerateContentResponse` chunks (each SSE event
// of streamGenerateContent?alt=sse is one), a whole response, the JSON
// array streamGenerateContent answers without alt=sse, and Google's error
// bodies (google.rpc.Status with RetryInfo and ErrorInfo details).
import DescartesPluginKit

/// The state of one answer, fed chunk by chunk.
///
/// Each chunk is a whole `GenerateContentResponse`: the parts of its first
/// candidate are the deltas (`text`; `text` with `thought: true` is
/// reasoning; `functionCall` is a whole call, several in one chunk or
/// across chunks when the model calls in parallel), `usageMetadata` is
/// cumulative (the last one counts), `finishReason` comes with the last
/// chunk, and `promptFeedback.blockReason` with no candidate means the
/// prompt was blocked. An `error` member (a stream that failed after it
/// began) ends the answer with that error.
struct GeminiStream {
    var id: String?
    var model: String?
    var started = false
    var finishReason: String?
    var blockReason: String?
    var safety: [JSONValue] = []
    var tools = 0
    var signature: String?
    var usage: JSONValue?
    var citations: [JSONValue] = []

    mutating func ensureStarted(_ call: EventBatcher) {
        if started { return }
        started = true
        call.start(id: id, model: model)
    }

    /// One chunk (`GenerateContentResponse`).
    mutating func chunk(_ v: JSONValue, _ call: EventBatcher) throws(ProviderError) {
        if let e = v["error"] { throw GeminiErrors.error(status: e["code"]?.intValue, error: e, headers: HTTPHeaders(), mid: true) }
        if id == nil { id = v["responseId"]?.stringValue }
        if model == nil { model = v["modelVersion"]?.stringValue }
        ensureStarted(call)
        if let u = v["usageMetadata"], u.objectValue != nil { usage = u }
        if let b = v["promptFeedback"]?["blockReason"]?.stringValue { blockReason = b }
        guard let candidate = v["candidates"]?[0] else { return }
        if let parts = candidate["content"]?["parts"]?.arrayValue {
            for p in parts {
                if let sig = p["thoughtSignature"]?.stringValue, signature == nil { signature = sig }
                if let fc = p["functionCall"] {
                    let i = tools
                    tools += 1
                    let id = fc["id"]?.stringValue ?? "\(GeminiRequest.madeUpIDPrefix)\(i)"
                    call.toolCallStart(index: i, id: id, name: fc["name"]?.stringValue ?? "")
                    call.toolCallDelta(index: i, (fc["args"] ?? [:]).jsonText)
                    call.toolCallEnd(index: i)
                } else if let t = p["text"]?.stringValue, !t.isEmpty {
                    if p["thought"]?.boolValue == true { call.reasoning(t) } else { call.text(t) }
                }
            }
        }
        if let f = candidate["finishReason"]?.stringValue { finishReason = f }
        if let r = candidate["safetyRatings"]?.arrayValue, !r.isEmpty { safety = r }
        if let c = candidate["citationMetadata"]?["citations"]?.arrayValue { citations += c }
    }

    /// Whether the answer reached its end: a finish reason, or a blocked prompt.
    var ended: Bool { finishReason != nil || blockReason != nil }

    mutating func finish(_ call: EventBatcher) -> Wire.Finish {
        ensureStarted(call)
        var reason: FinishReason
        var meta = JSONObject()
        if let b = blockReason, finishReason == nil {
            reason = .contentFilter
            meta["block_reason"] = .string(b)
        } else {
            reason = Self.finishReason(finishReason)
            if reason == .stop && tools > 0 { reason = .toolUse }
        }
        if let raw = finishReason, raw != reason.rawValue { meta["provider_finish_reason"] = .string(raw) }
        if let s = signature { meta["thought_signature"] = .string(s) }
        if reason == .contentFilter && !safety.isEmpty { meta["safety_ratings"] = .array(safety) }
        if !citations.isEmpty { meta["citations"] = .array(citations) }
        return Wire.Finish(finishReason: reason, usage: usage.map(Self.usage), model: model, id: id, metadata: meta)
    }

    /// Our usage from `usageMetadata`: input counts the prompt (which
    /// includes `cachedContentTokenCount`, reported apart as cache reads)
    /// and tool-use prompt tokens; output counts the candidates and the
    /// thoughts (`thoughtsTokenCount`, also reported as reasoning tokens).
    static func usage(_ u: JSONValue) -> Usage {
        let prompt = u["promptTokenCount"]?.intValue ?? 0
        let toolPrompt = u["toolUsePromptTokenCount"]?.intValue ?? 0
        let candidates = u["candidatesTokenCount"]?.intValue ?? 0
        let thoughts = u["thoughtsTokenCount"]?.intValue ?? 0
        let cached = u["cachedContentTokenCount"]?.intValue ?? 0
        return Usage(
            inputTokens: prompt + toolPrompt, outputTokens: candidates + thoughts, cacheReadTokens: cached, reasoningTokens: thoughts)
    }

    /// `STOP` -> stop (toolUse when the answer called functions);
    /// `MAX_TOKENS` -> maxTokens; the safety stops (`SAFETY`, `RECITATION`,
    /// `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`, `IMAGE_SAFETY`,
    /// `IMAGE_PROHIBITED_CONTENT`, `IMAGE_RECITATION`, and Vertex AI's
    /// `MODEL_ARMOR`: a Model Armor template blocked the answer) -> contentFilter;
    /// `MALFORMED_FUNCTION_CALL`, `UNEXPECTED_TOOL_CALL` -> error; others
    /// (`LANGUAGE`, `OTHER`...) lowercased as they are.
    static func finishReason(_ raw: String?) -> FinishReason {
        switch raw {
        case nil, "STOP", "FINISH_REASON_UNSPECIFIED": return .stop
        case "MAX_TOKENS": return .maxTokens
        case "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT",
            "IMAGE_RECITATION", "MODEL_ARMOR":
            return .contentFilter
        case "MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS": return .error
        case let r?: return FinishReason(rawValue: r.lowercased())
        }
    }

    /// A whole answer: one `GenerateContentResponse`, or the JSON array of
    /// them that streamGenerateContent sends without `alt=sse`.
    static func whole(_ body: [UInt8], _ call: EventBatcher) throws(ProviderError) -> Wire.Finish {
        let doc: JSONValue
        do { doc = try JSONValue.parse(bytes: body) } catch {
            throw ProviderError(.invalidResponse, "the answer is not JSON (\(error)): \(ProviderHTTP.excerpt(body))")
        }
        var s = GeminiStream()
        let chunks = doc.arrayValue ?? [doc]
        for c in chunks {
            guard c.objectValue != nil else {
                throw ProviderError(.invalidResponse, "the answer is not a GenerateContentResponse: \(ProviderHTTP.excerpt(body))")
            }
            try s.chunk(c, call)
        }
        if !s.ended && s.tools == 0 && chunks.allSatisfy({ $0["candidates"] == nil }) {
            throw ProviderError(.invalidResponse, "the answer has no candidates: \(ProviderHTTP.excerpt(body))")
        }
        return s.finish(call)
    }
}

/// Google's errors: `{"error": {"code", "message", "status", "details"}}`
/// (a `google.rpc.Status`), alone or as the first element of an array.
enum GeminiErrors {
    /// The error for a non-2xx answer.
    ///
    /// - `RESOURCE_EXHAUSTED` (429): `rateLimited`, with the delay of the
    ///   `google.rpc.RetryInfo` detail (`"retryDelay": "34s"`), else the
    ///   Retry-After header;
    /// - an `ErrorInfo` reason `API_KEY_INVALID` (Gemini answers a bad key
    ///   with 400 `INVALID_ARGUMENT`), `API_KEY_SERVICE_BLOCKED`,
    ///   `ACCESS_TOKEN_EXPIRED`, `CREDENTIALS_MISSING`, and the statuses
    ///   `UNAUTHENTICATED`, `PERMISSION_DENIED`: `authentication`;
    /// - `UNAVAILABLE`, `INTERNAL`, `DEADLINE_EXCEEDED`: `providerUnavailable`;
    /// - anything else by its HTTP status (`ProviderHTTP.kind(forStatus:)`).
    static func error(status: Int, headers: HTTPHeaders, body: [UInt8], endpoint: String) -> ProviderError {
        let doc = try? JSONValue.parse(bytes: body)
        guard let e = (doc?.arrayValue?.first ?? doc)?["error"], e.objectValue != nil else {
            return ProviderHTTP.error(status: status, headers: headers, body: body, endpoint: endpoint)
        }
        return error(status: status, error: e, headers: headers, mid: false)
    }

    static func error(status httpStatus: Int?, error e: JSONValue, headers: HTTPHeaders, mid: Bool) -> ProviderError {
        let status = httpStatus ?? e["code"]?.intValue ?? 500
        let rpc = e["status"]?.stringValue
        let message = e["message"]?.stringValue ?? Wire.excerpt(e.jsonText)
        var reasons: [String] = []
        var retry: Duration? = nil
        for d in e["details"]?.arrayValue ?? [] {
            let type = d["@type"]?.stringValue ?? ""
            if type.hasSuffix("google.rpc.ErrorInfo"), let r = d["reason"]?.stringValue { reasons.append(r) }
            if type.hasSuffix("google.rpc.RetryInfo"), let delay = d["retryDelay"] { retry = parseDuration(delay) }
        }
        let said = [rpc, reasons.first].compactMap { $0 }.joined(separator: " ")
        var err: ProviderError
        if mid {
            err = ProviderError(.api, "the stream reported \(said.isEmpty ? "an error" : said): \(message)")
        } else {
            err = ProviderHTTP.error(status: status, headers: headers, message: message, type: said.isEmpty ? nil : said, endpoint: "")
        }
        err.status = status
        err.providerType = reasons.first ?? rpc
        let authReasons: Set<String> = ["API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "ACCESS_TOKEN_EXPIRED", "CREDENTIALS_MISSING", "ACCESS_TOKEN_TYPE_UNSUPPORTED"]
        if rpc == "RESOURCE_EXHAUSTED" || status == 429 {
            err.kind = .rateLimited
        } else if rpc == "UNAUTHENTICATED" || rpc == "PERMISSION_DENIED" || reasons.contains(where: authReasons.contains) {
            err.kind = .authentication
        } else if rpc == "UNAVAILABLE" || rpc == "INTERNAL" || rpc == "DEADLINE_EXCEEDED" {
            err.kind = .providerUnavailable
        } else if mid {
            err.kind = ProviderHTTP.kind(forStatus: status)
        }
        if let retry { err.retryAfter = retry } else if err.retryAfter == nil { err.retryAfter = ProviderHTTP.retryAfter(headers) }
        return err
    }

    /// A protobuf JSON `Duration` ("34s", "1.500s", "0.25s"), or an object
    /// `{"seconds": N, "nanos": M}`.
    static func parseDuration(_ v: JSONValue) -> Duration? {
        if let s = v.stringValue, s.hasSuffix("s"), let secs = Double(s.dropLast()), secs >= 0, secs < 1e9 {
            return .milliseconds(Int((secs * 1000).rounded(.up)))
        }
        if let secs = v["seconds"]?.intValue ?? v["seconds"]?.stringValue.flatMap({ Int($0) }) {
            let nanos = v["nanos"]?.intValue ?? 0
            return .milliseconds(secs * 1000 + (nanos + 999_999) / 1_000_000)
        }
        return nil
    }
}
