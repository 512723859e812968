/// JSON forms of responses, stream events and errors, for what the host
/// keeps or writes itself: the response cache's disk store, and batch
/// results. (The ABI's own documents are in `Wire`.) Field names follow
/// docs/abi.md and the CLI's `--json` output.
public enum ResponseCodec {
    public static func encode(_ r: ModelResponse) -> JSONValue {
        var o: JSONObject = [
            "provider": .string(r.provider), "model": .string(r.model), "content": .string(r.content),
            "finish_reason": .string(r.finishReason.rawValue), "usage": Wire.encode(r.usage),
            "tool_calls": .array(r.toolCalls.map { ["id": .string($0.id), "name": .string($0.name), "arguments": .string($0.arguments)] }),
        ]
        if let reasoning = r.reasoning { o["reasoning"] = .string(reasoning) }
        if let id = r.id { o["id"] = .string(id) }
        o["cost_usd"] = r.costUSD.map { .number($0) } ?? .null
        o["attempts"] = .array(r.attempts.map(encode))
        if !r.metadata.isEmpty { o["metadata"] = .object(r.metadata) }
        return .object(o)
    }

    public static func encode(_ a: Attempt) -> JSONValue {
        ["provider": .string(a.provider), "error": encode(a.error), "duration_ms": .integer(a.duration.milliseconds)]
    }

    public static func encode(_ e: ProviderError) -> JSONValue {
        var o: JSONObject = ["kind": .string(e.kind.rawValue), "message": .string(e.message)]
        if let p = e.provider { o["provider"] = .string(p) }
        if let s = e.status { o["status"] = .integer(s) }
        if let t = e.providerType { o["provider_type"] = .string(t) }
        if let r = e.retryAfter { o["retry_after_ms"] = .integer(r.milliseconds) }
        if let d = e.deadline { o["deadline"] = .string(d) }
        if !e.details.isEmpty { o["details"] = .array(e.details.map { .string($0) }) }
        if !e.attempts.isEmpty { o["attempts"] = .array(e.attempts.map(encode)) }
        return .object(o)
    }

    public static func decodeResponse(_ v: JSONValue) throws(WireError) -> ModelResponse {
        guard case .object(let o) = v else { throw WireError("response: expected an object") }
        var r = ModelResponse()
        r.content = o["content"]?.stringValue ?? ""
        r.reasoning = o["reasoning"]?.stringValue
        r.finishReason = FinishReason(rawValue: o["finish_reason"]?.stringValue ?? "stop")
        if let u = o["usage"], !u.isNull { r.usage = try Wire.decodeUsage(u) }
        r.toolCalls = try (o["tool_calls"]?.arrayValue ?? []).enumerated().map { (i, c) throws(WireError) in
            try Wire.decodeToolCall(c, "response.tool_calls[\(i)]")
        }
        r.model = o["model"]?.stringValue ?? ""
        r.id = o["id"]?.stringValue
        r.costUSD = o["cost_usd"]?.doubleValue
        r.provider = o["provider"]?.stringValue ?? ""
        r.metadata = o["metadata"]?.objectValue ?? [:]
        r.attempts = (o["attempts"]?.arrayValue ?? []).map(decodeAttempt)
        return r
    }

    public static func decodeAttempt(_ v: JSONValue) -> Attempt {
        Attempt(
            provider: v["provider"]?.stringValue ?? "", error: decodeError(v["error"] ?? .null),
            duration: .milliseconds(v["duration_ms"]?.intValue ?? 0))
    }

    public static func decodeError(_ v: JSONValue) -> ProviderError {
        var e = ProviderError(
            ProviderError.Kind(rawValue: v["kind"]?.stringValue ?? "backend"), v["message"]?.stringValue ?? "",
            provider: v["provider"]?.stringValue, status: v["status"]?.intValue, providerType: v["provider_type"]?.stringValue,
            retryAfter: v["retry_after_ms"]?.intValue.map { .milliseconds($0) }, deadline: v["deadline"]?.stringValue,
            details: v["details"]?.arrayValue?.compactMap(\.stringValue) ?? [])
        e.attempts = (v["attempts"]?.arrayValue ?? []).map(decodeAttempt)
        return e
    }

    /// A stream event; `finish` carries the whole response.
    public static func encode(_ e: StreamEvent) -> JSONValue {
        switch e {
        case .start(let id, let model):
            var o: JSONObject = ["type": "start"]
            if let id { o["id"] = .string(id) }
            if let model { o["model"] = .string(model) }
            return .object(o)
        case .textDelta(let t): return ["type": "text", "text": .string(t)]
        case .reasoningDelta(let t): return ["type": "reasoning", "text": .string(t)]
        case .toolCallStart(let i, let id, let name): return ["type": "tool_call_start", "index": .integer(i), "id": .string(id), "name": .string(name)]
        case .toolCallDelta(let i, let a): return ["type": "tool_call_delta", "index": .integer(i), "arguments": .string(a)]
        case .toolCallEnd(let i): return ["type": "tool_call_end", "index": .integer(i)]
        case .usage(let u): return ["type": "usage", "usage": Wire.encode(u)]
        case .notice(let level, let message): return ["type": "notice", "level": .string(level), "message": .string(message)]
        case .finish(let r): return ["type": "finish", "response": encode(r)]
        }
    }

    public static func decodeEvent(_ v: JSONValue) throws(WireError) -> StreamEvent {
        let index = v["index"]?.intValue ?? 0
        switch v["type"]?.stringValue {
        case "start": return .start(id: v["id"]?.stringValue, model: v["model"]?.stringValue)
        case "text": return .textDelta(v["text"]?.stringValue ?? "")
        case "reasoning": return .reasoningDelta(v["text"]?.stringValue ?? "")
        case "tool_call_start": return .toolCallStart(index: index, id: v["id"]?.stringValue ?? "", name: v["name"]?.stringValue ?? "")
        case "tool_call_delta": return .toolCallDelta(index: index, arguments: v["arguments"]?.stringValue ?? "")
        case "tool_call_end": return .toolCallEnd(index: index)
        case "usage": return .usage(try Wire.decodeUsage(v["usage"] ?? .null))
        case "notice": return .notice(level: v["level"]?.stringValue ?? "info", message: v["message"]?.stringValue ?? "")
        case "finish": return .finish(try decodeResponse(v["response"] ?? .null))
        case let t: throw WireError("event: unknown type \(t.map { "'\($0)'" } ?? "(none)")")
        }
    }
}

extension JSONValue {
    /// The same value with every object's members sorted by key: one text
    /// per meaning, for cache keys.
    var canonical: JSONValue {
        switch self {
        case .array(let a): return .array(a.map(\.canonical))
        case .object(let o):
            return .object(JSONObject(o.members.map { (key: $0.key, value: $0.value.canonical) }.sorted { $0.key < $1.key }))
        default: return self
        }
    }
}
