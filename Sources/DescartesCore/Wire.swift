// The JSON documents of the C ABI (docs/abi.md), version 1, for the value
// types of Types.swift, and the JSON forms the host writes itself (responses,
// stream events, errors with their attempts: the CLI's --json output, the
// response cache, batch results). The host encodes requests and decodes
// results; the plugin kit does the reverse. Decoders are lenient about
// absent optional fields and strict about types, and name the field at fault.
//
// One encoder per type. Each produces a document (`Wire.json`) or bytes
// (`Wire.encode`) from the same code: the request, the hot path, through a
// `JSONOutput` (text without an intermediate document); the rest as a
// `JSONValue` whose text is the bytes.

extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int {
        let c = components
        return Int(c.seconds) * 1000 + Int(c.attoseconds / 1_000_000_000_000_000)
    }
    /// Seconds as a floating-point number.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}

/// A document that does not match the ABI schema.
public struct WireError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum Wire {
    // MARK: Request

    public static func encode(_ r: ModelRequest) -> [UInt8] {
        var w = JSONWriter(capacity: 512)
        write(r, to: &w)
        return w.bytes
    }

    public static func json(_ r: ModelRequest) -> JSONValue {
        var w = JSONTreeWriter()
        write(r, to: &w)
        return w.value
    }

    static func write<W: JSONOutput>(_ r: ModelRequest, to w: inout W) {
        w.beginObject()
        w.field("model", r.model)
        w.beginArray(key: "messages")
        for m in r.messages {
            w.beginObject()
            w.field("role", m.role.rawValue)
            w.field("content", m.content)
            if !m.toolCalls.isEmpty {
                w.beginArray(key: "tool_calls")
                for c in m.toolCalls { writeToolCall(c, &w) }
                w.endArray()
            }
            w.field("tool_call_id", m.toolCallID)
            w.field("name", m.name)
            w.field("reasoning", m.reasoning)
            w.field("reasoning_signature", m.reasoningSignature)
            if !m.reasoningBlocks.isEmpty { w.field("reasoning_blocks", json(m.reasoningBlocks)) }
            if !m.images.isEmpty {
                w.beginArray(key: "images")
                for image in m.images {
                    w.beginObject()
                    switch image.source {
                    case .data(let type, let b64):
                        w.field("media_type", type)
                        w.field("data", b64)
                    case .url(let u): w.field("url", u)
                    }
                    w.endObject()
                }
                w.endArray()
            }
            if let c = m.cacheControl { w.field("cache_control", c) }
            if m.isError { w.field("is_error", true) }
            w.endObject()
        }
        w.endArray()
        w.field("system", r.systemPrompt)
        w.field("max_tokens", r.maxTokens)
        w.field("temperature", r.temperature)
        w.field("top_p", r.topP)
        if !r.stop.isEmpty {
            w.beginArray(key: "stop")
            for s in r.stop { w.value(s) }
            w.endArray()
        }
        w.field("seed", r.seed)
        if !r.tools.isEmpty {
            w.beginArray(key: "tools")
            for t in r.tools {
                w.beginObject()
                w.field("name", t.name)
                w.field("description", t.description)
                w.field("parameters", t.parameters)
                if let c = t.cacheControl { w.field("cache_control", c) }
                w.endObject()
            }
            w.endArray()
        }
        if let choice = r.toolChoice {
            w.key("tool_choice")
            switch choice {
            case .auto: w.value("auto")
            case .none: w.value("none")
            case .required: w.value("required")
            case .tool(let name): w.value(["name": .string(name)] as JSONValue)
            }
        }
        if !r.metadata.isEmpty {
            w.beginObject(key: "metadata")
            for (k, v) in r.metadata.sorted(by: { $0.key < $1.key }) { w.field(k, v) }
            w.endObject()
        }
        if !r.options.isEmpty { w.field("options", .object(r.options)) }
        if r.responseFormat != .text { w.field("response_format", json(r.responseFormat)) }
        // ABI 1.2: the host answers APPROVAL events for this request.
        if r.approval != nil { w.field("approvals", "host" as String) }
        if !r.deadlines.isEmpty {
            w.beginObject(key: "deadlines")
            w.field("connect_ms", r.deadlines.connect?.milliseconds)
            w.field("first_token_ms", r.deadlines.firstToken?.milliseconds)
            w.field("idle_ms", r.deadlines.idle?.milliseconds)
            w.field("total_ms", r.deadlines.total?.milliseconds)
            w.endObject()
        }
        w.endObject()
    }

    static func decodeImage(_ v: JSONValue, _ path: String) throws(WireError) -> ImageInput {
        guard case .object(let o) = v else { throw WireError("\(path): expected an object") }
        if let url = try string(o, "url", in: path) {
            guard o["data"] == nil else { throw WireError("\(path): either \"url\" or \"data\", not both") }
            guard url.hasPrefix("https://") || url.hasPrefix("http://") else {
                throw WireError("\(path).url: expected an http(s) URL, got \"\(Wire.excerpt(url))\"")
            }
            return .url(url)
        }
        guard let data = try string(o, "data", in: path) else { throw WireError("\(path): missing \"data\" (base64) or \"url\"") }
        guard let type = try string(o, "media_type", in: path) else { throw WireError("\(path): missing \"media_type\"") }
        guard ImageInput.mediaTypes.contains(type) else {
            throw WireError("\(path).media_type: \"\(Wire.excerpt(type))\" is not one of \(ImageInput.mediaTypes.sorted().joined(separator: ", "))")
        }
        guard !data.isEmpty, data.utf8.count % 4 == 0, Base64.decode(data) != nil else {
            throw WireError("\(path).data: not base64 (standard alphabet, padded)")
        }
        return ImageInput(.data(mediaType: type, base64: data))
    }

    static func writeToolCall<W: JSONOutput>(_ c: ToolCall, _ w: inout W) {
        w.beginObject()
        w.field("id", c.id)
        w.field("name", c.name)
        w.field("arguments", c.arguments)
        w.endObject()
    }

    public static func decodeRequest(_ v: JSONValue) throws(WireError) -> ModelRequest {
        guard case .object(let o) = v else { throw WireError("request: expected an object, got \(v.typeName)") }
        var r = ModelRequest(messages: [])
        r.model = try string(o, "model", in: "request")
        guard let msgs = o["messages"] else { throw WireError("request: missing \"messages\"") }
        guard case .array(let arr) = msgs else { throw WireError("request.messages: expected an array") }
        for (i, m) in arr.enumerated() {
            let path = "request.messages[\(i)]"
            guard case .object(let mo) = m else { throw WireError("\(path): expected an object") }
            guard let roleText = try string(mo, "role", in: path) else { throw WireError("\(path): missing \"role\"") }
            guard let role = Role(rawValue: roleText) else {
                throw WireError("\(path).role: unknown role \"\(roleText)\" (system, user, assistant, tool)")
            }
            var msg = Message(role: role, content: try string(mo, "content", in: path) ?? "")
            if let calls = mo["tool_calls"] {
                guard case .array(let ca) = calls else { throw WireError("\(path).tool_calls: expected an array") }
                for (j, c) in ca.enumerated() { msg.toolCalls.append(try decodeToolCall(c, "\(path).tool_calls[\(j)]")) }
            }
            msg.toolCallID = try string(mo, "tool_call_id", in: path)
            msg.name = try string(mo, "name", in: path)
            msg.reasoning = try string(mo, "reasoning", in: path)
            msg.reasoningSignature = try string(mo, "reasoning_signature", in: path)
            msg.reasoningBlocks = try decodeReasoningBlocks(mo["reasoning_blocks"], "\(path).reasoning_blocks")
            if let images = mo["images"] {
                guard case .array(let ia) = images else { throw WireError("\(path).images: expected an array") }
                guard ia.isEmpty || role == .user else { throw WireError("\(path).images: only user messages carry images") }
                for (j, x) in ia.enumerated() { msg.images.append(try decodeImage(x, "\(path).images[\(j)]")) }
            }
            msg.cacheControl = try cacheControl(mo, in: path)
            switch mo["is_error"] {
            case nil, .null?: break
            case .bool(let b)?: msg.isError = b
            case let v?: throw WireError("\(path).is_error: expected a boolean, got \(v.typeName)")
            }
            r.messages.append(msg)
        }
        r.systemPrompt = try string(o, "system", in: "request")
        r.maxTokens = try int(o, "max_tokens", in: "request")
        r.temperature = try double(o, "temperature", in: "request")
        r.topP = try double(o, "top_p", in: "request")
        if let stop = o["stop"] {
            guard case .array(let sa) = stop else { throw WireError("request.stop: expected an array of strings") }
            r.stop = try sa.map { (x: JSONValue) throws(WireError) -> String in
                guard case .string(let s) = x else { throw WireError("request.stop: expected strings") }
                return s
            }
        }
        r.seed = try int(o, "seed", in: "request")
        if let tools = o["tools"] {
            guard case .array(let ta) = tools else { throw WireError("request.tools: expected an array") }
            for (i, t) in ta.enumerated() {
                let path = "request.tools[\(i)]"
                guard case .object(let to) = t else { throw WireError("\(path): expected an object") }
                guard let name = try string(to, "name", in: path) else { throw WireError("\(path): missing \"name\"") }
                r.tools.append(
                    Tool(
                        name: name, description: try string(to, "description", in: path) ?? "",
                        parameters: to["parameters"] ?? ["type": "object", "properties": [:]], cacheControl: try cacheControl(to, in: path)))
            }
        }
        if let choice = o["tool_choice"] {
            switch choice {
            case .string("auto"): r.toolChoice = .auto
            case .string("none"): r.toolChoice = ToolChoice.none
            case .string("required"): r.toolChoice = .required
            case .object(let co):
                guard let name = co["name"]?.stringValue else { throw WireError("request.tool_choice: missing \"name\"") }
                r.toolChoice = .tool(name)
            case .null: break
            default: throw WireError("request.tool_choice: expected \"auto\", \"none\", \"required\" or {\"name\": ...}")
            }
        }
        if let meta = o["metadata"] {
            guard case .object(let mo) = meta else { throw WireError("request.metadata: expected an object") }
            for m in mo {
                guard case .string(let s) = m.value else { throw WireError("request.metadata.\(m.key): expected a string") }
                r.metadata[m.key] = s
            }
        }
        if let f = o["response_format"] { r.responseFormat = try decodeResponseFormat(f) }
        if let a = o["approvals"] {
            guard a.stringValue == "host" else { throw WireError("request.approvals: expected \"host\", got \(a.jsonText)") }
            r.approval = .host
        }
        if let opts = o["options"] {
            guard case .object(let oo) = opts else { throw WireError("request.options: expected an object") }
            r.options = oo
        }
        if let d = o["deadlines"] {
            guard case .object(let dobj) = d else { throw WireError("request.deadlines: expected an object") }
            func ms(_ k: String) throws(WireError) -> Duration? {
                try int(dobj, k, in: "request.deadlines").map { .milliseconds($0) }
            }
            r.deadlines = Deadlines(
                connect: try ms("connect_ms"), firstToken: try ms("first_token_ms"), idle: try ms("idle_ms"),
                total: try ms("total_ms"))
        }
        return r
    }

    /// A message's or tool's `cache_control`: an object, passed on as given
    /// (absent or null: none).
    static func cacheControl(_ o: JSONObject, in path: String) throws(WireError) -> JSONValue? {
        switch o["cache_control"] {
        case nil, .null?: return nil
        case .object(let c)?: return .object(c)
        case let v?: throw WireError("\(path).cache_control: expected an object such as {\"type\": \"ephemeral\"}, got \(v.typeName)")
        }
    }

    /// Reasoning blocks (ABI 1.4): `{"type": "thinking", "text",
    /// "signature"?}` and `{"type": "redacted", "data"}`, in order.
    public static func json(_ blocks: [ReasoningBlock]) -> JSONValue {
        .array(
            blocks.map { b in
                switch b {
                case .thinking(let t, let sig):
                    var o: JSONObject = ["type": "thinking", "text": .string(t)]
                    if let sig { o["signature"] = .string(sig) }
                    return .object(o)
                case .redacted(let data): return ["type": "redacted", "data": .string(data)]
                }
            })
    }

    public static func decodeReasoningBlocks(_ v: JSONValue?, _ path: String) throws(WireError) -> [ReasoningBlock] {
        switch v {
        case nil, .null?: return []
        case .array(let a)?:
            return try a.enumerated().map { (i, b) throws(WireError) in
                let at = "\(path)[\(i)]"
                guard case .object(let o) = b else { throw WireError("\(at): expected an object") }
                switch try string(o, "type", in: at) {
                case "thinking": return .thinking(try string(o, "text", in: at) ?? "", signature: try string(o, "signature", in: at))
                case "redacted":
                    guard let data = try string(o, "data", in: at) else { throw WireError("\(at): a redacted block needs \"data\"") }
                    return .redacted(data)
                case let t: throw WireError("\(at).type: \(t.map { "'\($0)'" } ?? "missing"), expected 'thinking' or 'redacted'")
                }
            }
        case let v?: throw WireError("\(path): expected an array, got \(v.typeName)")
        }
    }

    public static func decodeToolCall(_ v: JSONValue, _ path: String) throws(WireError) -> ToolCall {
        guard case .object(let o) = v else { throw WireError("\(path): expected an object") }
        return ToolCall(
            id: try string(o, "id", in: path) ?? "", name: try string(o, "name", in: path) ?? "",
            arguments: try string(o, "arguments", in: path) ?? "{}")
    }

    // MARK: Usage

    public static func encode(_ u: Usage) -> [UInt8] { json(u).jsonBytes }

    public static func json(_ u: Usage) -> JSONValue {
        var o: JSONObject = ["input_tokens": .integer(u.inputTokens), "output_tokens": .integer(u.outputTokens)]
        if u.cacheReadTokens != 0 { o["cache_read_tokens"] = .integer(u.cacheReadTokens) }
        if u.cacheWriteTokens != 0 { o["cache_write_tokens"] = .integer(u.cacheWriteTokens) }
        if u.reasoningTokens != 0 { o["reasoning_tokens"] = .integer(u.reasoningTokens) }
        if u.estimated { o["estimated"] = true }
        return .object(o)
    }

    public static func decodeUsage(_ v: JSONValue) throws(WireError) -> Usage {
        guard case .object(let o) = v else { throw WireError("usage: expected an object") }
        return Usage(
            inputTokens: try int(o, "input_tokens", in: "usage") ?? 0,
            outputTokens: try int(o, "output_tokens", in: "usage") ?? 0,
            cacheReadTokens: try int(o, "cache_read_tokens", in: "usage") ?? 0,
            cacheWriteTokens: try int(o, "cache_write_tokens", in: "usage") ?? 0,
            reasoningTokens: try int(o, "reasoning_tokens", in: "usage") ?? 0,
            estimated: o["estimated"]?.boolValue ?? false)
    }

    // MARK: Finish (the RESULT of complete/stream)

    /// The fields of a Finish document.
    public struct Finish: Sendable {
        public var finishReason: FinishReason
        public var usage: Usage?
        public var model: String?
        public var id: String?
        public var costUSD: Double?
        public var metadata: JSONObject
        public init(
            finishReason: FinishReason, usage: Usage? = nil, model: String? = nil, id: String? = nil,
            costUSD: Double? = nil, metadata: JSONObject = [:]
        ) {
            self.finishReason = finishReason
            self.usage = usage
            self.model = model
            self.id = id
            self.costUSD = costUSD
            self.metadata = metadata
        }
    }

    public static func encode(_ f: Finish) -> [UInt8] { json(f).jsonBytes }

    public static func json(_ f: Finish) -> JSONValue {
        var o: JSONObject = ["finish_reason": .string(f.finishReason.rawValue)]
        if let u = f.usage { o["usage"] = json(u) }
        if let m = f.model { o["model"] = .string(m) }
        if let id = f.id { o["id"] = .string(id) }
        if let c = f.costUSD { o["cost_usd"] = .number(c) }
        if !f.metadata.isEmpty { o["metadata"] = .object(f.metadata) }
        return .object(o)
    }

    public static func decodeFinish(_ v: JSONValue) throws(WireError) -> Finish {
        guard case .object(let o) = v else { throw WireError("finish: expected an object") }
        guard let reason = try string(o, "finish_reason", in: "finish") else {
            throw WireError("finish: missing \"finish_reason\"")
        }
        var f = Finish(finishReason: FinishReason(rawValue: reason))
        if let u = o["usage"], !u.isNull { f.usage = try decodeUsage(u) }
        f.model = try string(o, "model", in: "finish")
        f.id = try string(o, "id", in: "finish")
        f.costUSD = try double(o, "cost_usd", in: "finish")
        if let m = o["metadata"] {
            guard case .object(let mo) = m else { throw WireError("finish.metadata: expected an object") }
            f.metadata = mo
        }
        return f
    }

    // MARK: Error

    /// The Error document. `provider` and `attempts` (what failed on the way
    /// to this error: retries, fallbacks) are the host's; a plugin's errors
    /// have neither.
    public static func encode(_ e: ProviderError) -> [UInt8] { json(e).jsonBytes }

    public static func json(_ e: ProviderError) -> JSONValue {
        var o: JSONObject = ["kind": .string(e.kind.rawValue), "message": .string(e.message)]
        if let p = e.provider { o["provider"] = .string(p) }
        if let s = e.status { o["status"] = .integer(s) }
        if let t = e.providerType { o["provider_type"] = .string(t) }
        if let r = e.retryAfter { o["retry_after_ms"] = .integer(r.milliseconds) }
        if let d = e.deadline { o["deadline"] = .string(d) }
        if !e.details.isEmpty { o["details"] = .array(e.details.map { .string($0) }) }
        if !e.sideEffects.isEmpty { o["side_effects"] = .array(e.sideEffects.map { .string($0) }) }
        if !e.attempts.isEmpty { o["attempts"] = .array(e.attempts.map(json)) }
        return .object(o)
    }

    /// Decodes an Error document. Never fails: a malformed document becomes
    /// an `invalid_response` error that says so.
    public static func decodeError(_ bytes: UnsafeRawBufferPointer, provider: String?) -> ProviderError {
        let v: JSONValue
        do { v = try JSONValue.parse(bytes) } catch {
            return ProviderError(
                .invalidResponse, "the plugin reported an error that is not JSON (\(error))", provider: provider)
        }
        return decodeError(v, provider: provider)
    }

    /// An Error document from a plugin: a `kind` outside the ABI's list
    /// becomes `invalid_response`, its message naming the kind the plugin
    /// sent (docs/abi.md, "Documents").
    public static func decodePluginError(_ bytes: UnsafeRawBufferPointer, provider: String?) -> ProviderError {
        var e = decodeError(bytes, provider: provider)
        if !ProviderError.Kind.all.contains(e.kind) {
            e.message = "the plugin reported an error of unknown kind '\(e.kind.rawValue)': \(e.message)"
            e.kind = .invalidResponse
        }
        return e
    }

    /// Decodes an Error document; `provider`, when given, names the
    /// provider (whatever the document says).
    public static func decodeError(_ v: JSONValue, provider: String?) -> ProviderError {
        guard case .object(let o) = v, let kind = o["kind"]?.stringValue else {
            return ProviderError(
                .invalidResponse, "the plugin reported an error without a \"kind\": \(excerpt(v.jsonText))",
                provider: provider)
        }
        var e = ProviderError(
            ProviderError.Kind(rawValue: kind), o["message"]?.stringValue ?? "(no message)",
            provider: provider ?? o["provider"]?.stringValue)
        e.status = o["status"]?.intValue
        e.providerType = o["provider_type"]?.stringValue
        if let ms = o["retry_after_ms"]?.intValue { e.retryAfter = .milliseconds(ms) }
        e.deadline = o["deadline"]?.stringValue
        e.details = o["details"]?.arrayValue?.compactMap(\.stringValue) ?? []
        e.sideEffects = o["side_effects"]?.arrayValue?.compactMap(\.stringValue) ?? []
        e.attempts = (o["attempts"]?.arrayValue ?? []).map(decodeAttempt)
        return e
    }

    /// An attempt that failed before the answer (or the final error).
    public static func json(_ a: Attempt) -> JSONValue {
        ["provider": .string(a.provider), "error": json(a.error), "duration_ms": .integer(a.duration.milliseconds)]
    }

    public static func decodeAttempt(_ v: JSONValue) -> Attempt {
        Attempt(
            provider: v["provider"]?.stringValue ?? "", error: decodeError(v["error"] ?? .null, provider: nil),
            duration: .milliseconds(v["duration_ms"]?.intValue ?? 0))
    }

    // MARK: Response and stream events (the host's own forms)

    public static func json(_ c: ToolCall) -> JSONValue {
        var w = JSONTreeWriter()
        writeToolCall(c, &w)
        return w.value
    }

    /// A whole response, as the CLI prints it and the cache stores it.
    public static func json(_ r: ModelResponse) -> JSONValue {
        var o: JSONObject = [
            "provider": .string(r.provider), "model": .string(r.model), "content": .string(r.content),
            "finish_reason": .string(r.finishReason.rawValue), "usage": json(r.usage),
            "tool_calls": .array(r.toolCalls.map(json)),
        ]
        if let reasoning = r.reasoning { o["reasoning"] = .string(reasoning) }
        if !r.reasoningBlocks.isEmpty { o["reasoning_blocks"] = json(r.reasoningBlocks) }
        if let id = r.id { o["id"] = .string(id) }
        o["cost_usd"] = r.costUSD.map { .number($0) } ?? .null
        o["attempts"] = .array(r.attempts.map(json))
        if !r.metadata.isEmpty { o["metadata"] = .object(r.metadata) }
        return .object(o)
    }

    public static func decodeResponse(_ v: JSONValue) throws(WireError) -> ModelResponse {
        guard case .object(let o) = v else { throw WireError("response: expected an object") }
        var r = ModelResponse()
        r.content = o["content"]?.stringValue ?? ""
        r.reasoning = o["reasoning"]?.stringValue
        r.reasoningBlocks = try decodeReasoningBlocks(o["reasoning_blocks"], "response.reasoning_blocks")
        r.finishReason = FinishReason(rawValue: o["finish_reason"]?.stringValue ?? "stop")
        if let u = o["usage"], !u.isNull { r.usage = try decodeUsage(u) }
        r.toolCalls = try (o["tool_calls"]?.arrayValue ?? []).enumerated().map { (i, c) throws(WireError) in
            try decodeToolCall(c, "response.tool_calls[\(i)]")
        }
        r.model = o["model"]?.stringValue ?? ""
        r.id = o["id"]?.stringValue
        r.costUSD = o["cost_usd"]?.doubleValue
        r.provider = o["provider"]?.stringValue ?? ""
        r.metadata = o["metadata"]?.objectValue ?? [:]
        r.attempts = (o["attempts"]?.arrayValue ?? []).map(decodeAttempt)
        return r
    }

    /// A stream event, as `--json --stream` prints it; `finish` carries the
    /// whole response.
    public static func json(_ e: StreamEvent) -> JSONValue {
        switch e {
        case .start(let id, let model):
            var o: JSONObject = ["type": "start"]
            if let id { o["id"] = .string(id) }
            if let model { o["model"] = .string(model) }
            return .object(o)
        case .textDelta(let t): return ["type": "text", "text": .string(t)]
        case .reasoningDelta(let t): return ["type": "reasoning", "text": .string(t)]
        case .reasoningSignature(let s): return ["type": "reasoning_signature", "signature": .string(s)]
        case .reasoningRedacted(let d): return ["type": "reasoning_redacted", "data": .string(d)]
        case .toolCallStart(let i, let id, let name): return ["type": "tool_call_start", "index": .integer(i), "id": .string(id), "name": .string(name)]
        case .toolCallDelta(let i, let a): return ["type": "tool_call_delta", "index": .integer(i), "arguments": .string(a)]
        case .toolCallEnd(let i): return ["type": "tool_call_end", "index": .integer(i)]
        case .usage(let u): return ["type": "usage", "usage": json(u)]
        case .notice(let level, let message): return ["type": "notice", "level": .string(level), "message": .string(message)]
        case .finish(let r): return ["type": "finish", "response": json(r)]
        }
    }

    public static func decodeEvent(_ v: JSONValue) throws(WireError) -> StreamEvent {
        let index = v["index"]?.intValue ?? 0
        switch v["type"]?.stringValue {
        case "start": return .start(id: v["id"]?.stringValue, model: v["model"]?.stringValue)
        case "text": return .textDelta(v["text"]?.stringValue ?? "")
        case "reasoning": return .reasoningDelta(v["text"]?.stringValue ?? "")
        case "reasoning_signature": return .reasoningSignature(v["signature"]?.stringValue ?? "")
        case "reasoning_redacted": return .reasoningRedacted(v["data"]?.stringValue ?? "")
        case "tool_call_start": return .toolCallStart(index: index, id: v["id"]?.stringValue ?? "", name: v["name"]?.stringValue ?? "")
        case "tool_call_delta": return .toolCallDelta(index: index, arguments: v["arguments"]?.stringValue ?? "")
        case "tool_call_end": return .toolCallEnd(index: index)
        case "usage": return .usage(try decodeUsage(v["usage"] ?? .null))
        case "notice": return .notice(level: v["level"]?.stringValue ?? "info", message: v["message"]?.stringValue ?? "")
        case "finish": return .finish(try decodeResponse(v["response"] ?? .null))
        case let t: throw WireError("event: unknown type \(t.map { "'\($0)'" } ?? "(none)")")
        }
    }

    // MARK: Other results

    public static func encode(models: [ModelInfo]) -> [UInt8] { json(models: models).jsonBytes }

    public static func json(models: [ModelInfo]) -> JSONValue {
        JSONValue.object([
            "models": .array(
                models.map { m in
                    var o: JSONObject = ["id": .string(m.id)]
                    if let c = m.contextLength { o["context_length"] = .integer(c) }
                    if let b = m.ownedBy { o["owned_by"] = .string(b) }
                    if !m.details.isEmpty { o["details"] = .object(m.details) }
                    return .object(o)
                })
        ])
    }

    public static func decodeModels(_ v: JSONValue) throws(WireError) -> [ModelInfo] {
        guard case .array(let arr)? = v["models"] else { throw WireError("models: expected {\"models\": [...]}") }
        return try arr.enumerated().map { (i, m) throws(WireError) -> ModelInfo in
            guard case .object(let o) = m, let id = o["id"]?.stringValue else {
                throw WireError("models[\(i)]: expected an object with an \"id\"")
            }
            return ModelInfo(
                id: id, contextLength: o["context_length"]?.intValue, ownedBy: o["owned_by"]?.stringValue,
                details: o["details"]?.objectValue ?? [:])
        }
    }

    public static func encode(_ t: TokenEstimate) -> [UInt8] { json(t).jsonBytes }

    public static func json(_ t: TokenEstimate) -> JSONValue {
        ["tokens": .integer(t.tokens), "exact": .bool(t.exact), "method": .string(t.method)]
    }

    public static func decodeTokenEstimate(_ v: JSONValue) throws(WireError) -> TokenEstimate {
        guard let n = v["tokens"]?.intValue else { throw WireError("tokens: expected {\"tokens\": int, ...}") }
        return TokenEstimate(tokens: n, exact: v["exact"]?.boolValue ?? false, method: v["method"]?.stringValue ?? "")
    }

    public static func encode(_ h: HealthReport) -> [UInt8] { json(h).jsonBytes }

    public static func json(_ h: HealthReport) -> JSONValue {
        var o: JSONObject = ["message": .string(h.message)]
        if !h.details.isEmpty { o["details"] = .object(h.details) }
        return .object(o)
    }

    public static func decodeHealth(_ v: JSONValue) -> HealthReport {
        HealthReport(message: v["message"]?.stringValue ?? "healthy", details: v["details"]?.objectValue ?? [:])
    }

    // MARK: Response format (ABI 1.1: the Request's "response_format")

    /// {"type": "text"} | {"type": "json"} | {"type": "json_schema",
    /// "name": string, "schema": object, "strict": bool}.
    public static func json(_ f: ResponseFormat) -> JSONValue {
        switch f {
        case .text: return ["type": "text"]
        case .json: return ["type": "json"]
        case .jsonSchema(let name, let schema, let strict):
            return ["type": "json_schema", "name": .string(name), "schema": schema, "strict": .bool(strict)]
        }
    }

    public static func decodeResponseFormat(_ v: JSONValue) throws(WireError) -> ResponseFormat {
        guard case .object(let o) = v else { throw WireError("request.response_format: expected an object, got \(v.typeName)") }
        switch try string(o, "type", in: "request.response_format") {
        case "text"?: return .text
        case "json"?: return .json
        case "json_schema"?:
            guard let name = try string(o, "name", in: "request.response_format"), !name.isEmpty else {
                throw WireError("request.response_format.name: a json_schema format needs a name")
            }
            guard case .object? = o["schema"] else {
                throw WireError("request.response_format.schema: expected a JSON Schema object, got \(o["schema"]?.typeName ?? "nothing")")
            }
            return .jsonSchema(name: name, schema: o["schema"]!, strict: o["strict"]?.boolValue ?? true)
        case let t:
            throw WireError("request.response_format.type: expected \"text\", \"json\" or \"json_schema\", got \(t.map { "\"\($0)\"" } ?? "nothing")")
        }
    }

    // MARK: Embeddings (ABI 1.1: the input and RESULT of `embed`)

    /// The Embed input document: {"input": [string], "model"?, "dimensions"?, "deadlines"?}.
    public static func json(_ r: EmbeddingRequest) -> JSONValue {
        var o: JSONObject = ["input": .array(r.inputs.map { .string($0) })]
        if let m = r.model { o["model"] = .string(m) }
        if let d = r.dimensions { o["dimensions"] = .integer(d) }
        if !r.deadlines.isEmpty {
            var d = JSONObject()
            if let v = r.deadlines.connect { d["connect_ms"] = .integer(v.milliseconds) }
            if let v = r.deadlines.firstToken { d["first_token_ms"] = .integer(v.milliseconds) }
            if let v = r.deadlines.idle { d["idle_ms"] = .integer(v.milliseconds) }
            if let v = r.deadlines.total { d["total_ms"] = .integer(v.milliseconds) }
            o["deadlines"] = .object(d)
        }
        return .object(o)
    }

    public static func encode(_ r: EmbeddingRequest) -> [UInt8] { json(r).jsonBytes }

    public static func decodeEmbeddingRequest(_ v: JSONValue) throws(WireError) -> EmbeddingRequest {
        guard case .object(let o) = v else { throw WireError("embed: expected an object") }
        guard case .array(let items)? = o["input"] else { throw WireError("embed.input: expected an array of strings") }
        var inputs: [String] = []
        for (i, item) in items.enumerated() {
            guard let s = item.stringValue else { throw WireError("embed.input[\(i)]: expected a string, got \(item.typeName)") }
            inputs.append(s)
        }
        var r = EmbeddingRequest(inputs, model: try string(o, "model", in: "embed"), dimensions: try int(o, "dimensions", in: "embed"))
        if let d = o["deadlines"] {
            guard case .object(let dobj) = d else { throw WireError("embed.deadlines: expected an object") }
            func ms(_ k: String) throws(WireError) -> Duration? { try int(dobj, k, in: "embed.deadlines").map { .milliseconds($0) } }
            r.deadlines = Deadlines(
                connect: try ms("connect_ms"), firstToken: try ms("first_token_ms"), idle: try ms("idle_ms"), total: try ms("total_ms"))
        }
        return r
    }

    /// The Embeddings RESULT: {"embeddings": [[number]], "dimensions": int,
    /// "model"?: string, "usage"?: Usage}. Numbers are written in the
    /// shortest form that reads back as the same Float.
    public static func json(_ e: Embeddings) -> JSONValue {
        var o: JSONObject = [
            "embeddings": .array(e.vectors.map { v in .array(v.map { .number(Double($0.description) ?? Double($0)) }) }),
            "dimensions": .integer(e.dimensions),
        ]
        if !e.model.isEmpty { o["model"] = .string(e.model) }
        o["usage"] = json(e.usage)
        return .object(o)
    }

    public static func encode(_ e: Embeddings) -> [UInt8] { json(e).jsonBytes }

    /// Reads an Embeddings RESULT; every vector must be an array of finite
    /// numbers as long as `dimensions` (or, without it, as the first).
    public static func decodeEmbeddings(_ v: JSONValue) throws(WireError) -> Embeddings {
        guard case .object(let o) = v else { throw WireError("embeddings: expected an object") }
        guard case .array(let rows)? = o["embeddings"] else { throw WireError("embeddings: expected {\"embeddings\": [[number]], ...}") }
        var vectors: [[Float]] = []
        vectors.reserveCapacity(rows.count)
        let declared = try int(o, "dimensions", in: "embeddings")
        for (i, row) in rows.enumerated() {
            guard case .array(let items) = row else { throw WireError("embeddings[\(i)]: expected an array of numbers, got \(row.typeName)") }
            var vector: [Float] = []
            vector.reserveCapacity(items.count)
            for (j, x) in items.enumerated() {
                guard let d = x.doubleValue, d.isFinite else { throw WireError("embeddings[\(i)][\(j)]: expected a finite number, got \(x.typeName)") }
                vector.append(Float(d))
            }
            let expected = declared ?? vectors.first?.count ?? vector.count
            guard vector.count == expected else {
                throw WireError("embeddings[\(i)]: \(vector.count) numbers, but the vectors have \(expected) dimensions")
            }
            vectors.append(vector)
        }
        let usage = try o["usage"].map { (u) throws(WireError) in try decodeUsage(u) } ?? Usage()
        return Embeddings(vectors: vectors, dimensions: declared ?? vectors.first?.count ?? 0, model: try string(o, "model", in: "embeddings") ?? "", usage: usage)
    }

    // MARK: Helpers

    static func string(_ o: JSONObject, _ k: String, in path: String) throws(WireError) -> String? {
        switch o[k] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        case let v?: throw WireError("\(path).\(k): expected a string, got \(v.typeName)")
        }
    }

    static func int(_ o: JSONObject, _ k: String, in path: String) throws(WireError) -> Int? {
        switch o[k] {
        case nil, .null?: return nil
        case let v?:
            guard let i = v.intValue else { throw WireError("\(path).\(k): expected an integer, got \(v.typeName)") }
            return i
        }
    }

    static func double(_ o: JSONObject, _ k: String, in path: String) throws(WireError) -> Double? {
        switch o[k] {
        case nil, .null?: return nil
        case let v?:
            guard let d = v.doubleValue else { throw WireError("\(path).\(k): expected a number, got \(v.typeName)") }
            return d
        }
    }

    /// At most `limit` characters of `text`, with an ellipsis when cut.
    public static func excerpt(_ text: String, limit: Int = 200) -> String {
        text.count <= limit ? text : String(text.prefix(limit)) + "..."
    }
}
