import Descartes
import Glibc

/// OpenAI's chat completions (`POST /v1/chat/completions`) in and out: the
/// request body into a `ModelRequest`, a `ModelResponse` into a
/// `chat.completion`, stream events into `chat.completion.chunk`s.
enum OpenAIChat {
    /// A parsed request: what to ask, of which model name, how to answer.
    struct Parsed: Sendable {
        var request: ModelRequest
        var model: String
        var stream: Bool
        var includeUsage: Bool
    }

    /// Members passed to the backend as provider options, as given: an
    /// OpenAI-compatible upstream takes them; another refuses or ignores them.
    static let passedThrough = [
        "frequency_penalty", "presence_penalty", "logit_bias", "parallel_tool_calls", "reasoning_effort",
        "service_tier", "prediction", "modalities", "store",
    ]

    /// OpenAI's response format (chat's `response_format`, whose schema is
    /// in `json_schema`; the Responses API's `text.format`, which holds
    /// `name`, `schema`, `strict` itself) as the request's `responseFormat`:
    /// the backend maps it to what its provider does best, and the host
    /// checks the answer against it (docs/structured-output.md).
    static func responseFormat(_ type: String?, _ spec: JSONValue, param: String) throws(GatewayError) -> ResponseFormat {
        switch type {
        case "text"?: return .text
        case "json_object"?: return .json
        case "json_schema"?:
            guard let name = spec["name"]?.stringValue, !name.isEmpty, case .object? = spec["schema"] else {
                throw .invalidRequest("\(param) of type json_schema needs a name and a schema object", param: param)
            }
            let format = ResponseFormat.jsonSchema(name: name, schema: spec["schema"]!, strict: spec["strict"]?.boolValue ?? false)
            do { try format.checkSchema() } catch { throw .invalidRequest("\(param) schema: \(error.description)", param: param) }
            return format
        default:
            throw .invalidRequest("\(param).type is text, json_object or json_schema", param: param)
        }
    }

    static func parse(_ doc: JSONValue) throws(GatewayError) -> Parsed {
        guard case .object(let o) = doc else { throw .invalidRequest("the body is a JSON object") }
        guard let model = o["model"]?.stringValue, !model.isEmpty else { throw .invalidRequest("'model' is required", param: "model") }
        guard let list = o["messages"]?.arrayValue, !list.isEmpty else {
            throw .invalidRequest("'messages' is a non-empty array", param: "messages")
        }
        var r = ModelRequest(messages: [])
        var systems: [String] = []
        for (i, m) in list.enumerated() {
            let param = "messages[\(i)]"
            guard let role = m["role"]?.stringValue else { throw .invalidRequest("\(param).role is required", param: param) }
            switch role {
            case "system", "developer":
                let text = try textContent(m["content"], param: "\(param).content")
                // Leading system messages are the system prompt; later ones stay in place.
                if r.messages.isEmpty { systems.append(text) } else { r.messages.append(.system(text)) }
            case "user":
                let (text, images) = try userContent(m["content"], param: "\(param).content")
                var msg = Message.user(text, images: images)
                msg.name = m["name"]?.stringValue
                r.messages.append(msg)
            case "assistant":
                var calls: [ToolCall] = []
                for (j, c) in (m["tool_calls"]?.arrayValue ?? []).enumerated() {
                    guard let id = c["id"]?.stringValue, let name = c["function"]?["name"]?.stringValue else {
                        throw .invalidRequest("\(param).tool_calls[\(j)] needs id and function.name", param: "\(param).tool_calls")
                    }
                    calls.append(ToolCall(id: id, name: name, arguments: c["function"]?["arguments"]?.stringValue ?? "{}"))
                }
                let content = m["content"].flatMap { $0.isNull ? nil : $0 }
                var msg = Message.assistant(try content.map { v throws(GatewayError) in try textContent(v, param: "\(param).content") } ?? "", toolCalls: calls)
                msg.reasoning = m["reasoning_content"]?.stringValue
                r.messages.append(msg)
            case "tool":
                guard let id = m["tool_call_id"]?.stringValue else {
                    throw .invalidRequest("\(param).tool_call_id is required for a tool message", param: param)
                }
                r.messages.append(.tool(callID: id, try textContent(m["content"], param: "\(param).content")))
            default:
                throw .invalidRequest("\(param).role '\(role)' is not supported (system, developer, user, assistant, tool)", param: param)
            }
        }
        if !systems.isEmpty { r.systemPrompt = systems.joined(separator: "\n\n") }
        guard !r.messages.isEmpty else { throw .invalidRequest("'messages' has no user message", param: "messages") }

        if let n = o["n"]?.intValue, n != 1 { throw .invalidRequest("only n = 1 is supported", param: "n") }
        if o["logprobs"]?.boolValue == true { throw .invalidRequest("logprobs are not supported by the gateway", param: "logprobs") }
        r.maxTokens = o["max_completion_tokens"]?.intValue ?? o["max_tokens"]?.intValue
        r.temperature = o["temperature"]?.doubleValue
        r.topP = o["top_p"]?.doubleValue
        r.seed = o["seed"]?.intValue
        switch o["stop"] {
        case .string(let s)?: r.stop = [s]
        case .array(let a)?: r.stop = a.compactMap(\.stringValue)
        default: break
        }
        for (i, t) in (o["tools"]?.arrayValue ?? []).enumerated() {
            guard t["type"]?.stringValue ?? "function" == "function", let f = t["function"], let name = f["name"]?.stringValue else {
                throw .invalidRequest("tools[\(i)] is {\"type\": \"function\", \"function\": {\"name\", ...}}", param: "tools")
            }
            r.tools.append(
                Tool(name: name, description: f["description"]?.stringValue ?? "", parameters: f["parameters"] ?? ["type": "object", "properties": [:]]))
        }
        switch o["tool_choice"] {
        case .string("auto")?: r.toolChoice = .auto
        case .string("none")?: r.toolChoice = ToolChoice.none
        case .string("required")?: r.toolChoice = .required
        case .object?:
            guard let name = o["tool_choice"]?["function"]?["name"]?.stringValue else {
                throw .invalidRequest("tool_choice is auto, none, required or {\"type\": \"function\", \"function\": {\"name\"}}", param: "tool_choice")
            }
            r.toolChoice = .tool(name)
        case nil, .null?: break
        default: throw .invalidRequest("tool_choice is auto, none, required or {\"type\": \"function\", \"function\": {\"name\"}}", param: "tool_choice")
        }
        if case .object(let meta)? = o["metadata"] {
            for (k, v) in meta { if let s = v.stringValue { r.metadata[k] = s } }
        }
        if let user = o["user"]?.stringValue { r.metadata["user"] = user }
        for key in passedThrough { if let v = o[key], !v.isNull { r.options[key] = v } }
        if let f = o["response_format"], !f.isNull {
            r.responseFormat = try responseFormat(f["type"]?.stringValue, f["json_schema"] ?? [:], param: "response_format")
        }
        let stream = o["stream"]?.boolValue ?? false
        return Parsed(request: r, model: model, stream: stream, includeUsage: stream && o["stream_options"]?["include_usage"]?.boolValue == true)
    }

    /// A message's content as text: a string, or an array of text parts.
    static func textContent(_ v: JSONValue?, param: String) throws(GatewayError) -> String {
        switch v {
        case .string(let s)?: return s
        case nil, .null?: return ""
        case .array(let parts)?:
            var out = ""
            for p in parts {
                guard p["type"]?.stringValue == "text", let t = p["text"]?.stringValue else {
                    throw .invalidRequest("\(param): only text parts are supported here", param: param)
                }
                out += t
            }
            return out
        default: throw .invalidRequest("\(param) is a string or an array of parts", param: param)
        }
    }

    /// A user message's text and images (`image_url` parts: data URLs or http(s)).
    static func userContent(_ v: JSONValue?, param: String) throws(GatewayError) -> (String, [ImageInput]) {
        guard case .array(let parts)? = v else { return (try textContent(v, param: param), []) }
        var text = ""
        var images: [ImageInput] = []
        for p in parts {
            switch p["type"]?.stringValue {
            case "text": text += p["text"]?.stringValue ?? ""
            case "image_url":
                guard let url = p["image_url"]?["url"]?.stringValue else { throw .invalidRequest("\(param): image_url.url is required", param: param) }
                images.append(try image(url, param: param))
            default:
                throw .invalidRequest("\(param): part type '\(p["type"]?.stringValue ?? "?")' is not supported (text, image_url)", param: param)
            }
        }
        return (text, images)
    }

    static func image(_ url: String, param: String) throws(GatewayError) -> ImageInput {
        if url.hasPrefix("data:") {
            // data:image/png;base64,....
            guard let comma = url.firstIndex(of: ","), url[..<comma].hasSuffix(";base64") else {
                throw .invalidRequest("\(param): an image data URL is data:TYPE;base64,DATA", param: param)
            }
            let type = String(url[url.index(url.startIndex, offsetBy: 5)..<comma].dropLast(";base64".count))
            guard ImageInput.mediaTypes.contains(type) else {
                throw .invalidRequest("\(param): image type '\(type)' is not supported (png, jpeg, gif, webp)", param: param)
            }
            return ImageInput(.data(mediaType: type, base64: String(url[url.index(after: comma)...])))
        }
        guard url.hasPrefix("https://") || url.hasPrefix("http://") else {
            throw .invalidRequest("\(param): an image is a data URL or an http(s) URL", param: param)
        }
        return .url(url)
    }

    static func finishReason(_ f: FinishReason) -> String {
        switch f {
        case .maxTokens: return "length"
        case .toolUse: return "tool_calls"
        case .contentFilter: return "content_filter"
        default: return "stop"
        }
    }

    static func usage(_ u: Usage) -> JSONValue {
        [
            "prompt_tokens": .integer(u.inputTokens), "completion_tokens": .integer(u.outputTokens), "total_tokens": .integer(u.totalTokens),
            "prompt_tokens_details": ["cached_tokens": .integer(u.cacheReadTokens)],
            "completion_tokens_details": ["reasoning_tokens": .integer(u.reasoningTokens)],
        ]
    }

    static func toolCall(_ c: ToolCall) -> JSONValue {
        ["id": .string(c.id), "type": "function", "function": ["name": .string(c.name), "arguments": .string(c.arguments)]]
    }

    /// A whole answer as a `chat.completion`.
    static func completion(_ r: ModelResponse, id: String, model: String, created: Int) -> JSONValue {
        var message: JSONObject = ["role": "assistant", "content": r.content.isEmpty && !r.toolCalls.isEmpty ? .null : .string(r.content), "refusal": .null]
        if !r.toolCalls.isEmpty { message["tool_calls"] = .array(r.toolCalls.map(toolCall)) }
        if let reasoning = r.reasoning, !reasoning.isEmpty { message["reasoning_content"] = .string(reasoning) }
        return [
            "id": .string(id), "object": "chat.completion", "created": .integer(created), "model": .string(model),
            "choices": [["index": 0, "message": .object(message), "logprobs": .null, "finish_reason": .string(finishReason(r.finishReason))]],
            "usage": usage(r.usage), "system_fingerprint": .null,
        ]
    }

    /// Turns stream events into `chat.completion.chunk` SSE lines.
    struct ChunkWriter {
        let id: String
        let model: String
        let created: Int
        let includeUsage: Bool
        private var started = false

        init(id: String, model: String, created: Int, includeUsage: Bool) {
            self.id = id
            self.model = model
            self.created = created
            self.includeUsage = includeUsage
        }

        func chunk(delta: JSONValue, finish: String? = nil) -> JSONValue {
            var o: JSONObject = [
                "id": .string(id), "object": "chat.completion.chunk", "created": .integer(created), "model": .string(model),
                "system_fingerprint": .null,
                "choices": [["index": 0, "delta": delta, "logprobs": .null, "finish_reason": finish.map { .string($0) } ?? .null]],
            ]
            if includeUsage { o["usage"] = .null }
            return .object(o)
        }

        static func sse(_ doc: JSONValue) -> [UInt8] {
            var out = Array("data: ".utf8)
            doc.write(to: &out)
            out.append(contentsOf: [10, 10])
            return out
        }

        /// The SSE bytes for one event (empty when it has none).
        mutating func bytes(_ event: StreamEvent) -> [UInt8] {
            var out: [UInt8] = []
            if !started {
                started = true
                out += Self.sse(chunk(delta: ["role": "assistant", "content": "", "refusal": .null]))
            }
            switch event {
            case .textDelta(let t):
                out += Self.sse(chunk(delta: ["content": .string(t)]))
            case .reasoningDelta(let t):
                out += Self.sse(chunk(delta: ["reasoning_content": .string(t)]))
            case .toolCallStart(let index, let callID, let name):
                out += Self.sse(
                    chunk(delta: ["tool_calls": [["index": .integer(index), "id": .string(callID), "type": "function", "function": ["name": .string(name), "arguments": ""]]]]))
            case .toolCallDelta(let index, let arguments):
                out += Self.sse(chunk(delta: ["tool_calls": [["index": .integer(index), "function": ["arguments": .string(arguments)]]]]))
            case .finish(let r):
                out += Self.sse(chunk(delta: [:], finish: finishReason(r.finishReason)))
                if includeUsage {
                    out += Self.sse([
                        "id": .string(id), "object": "chat.completion.chunk", "created": .integer(created), "model": .string(model),
                        "system_fingerprint": .null, "choices": [], "usage": usage(r.usage),
                    ])
                }
                out += Array("data: [DONE]\n\n".utf8)
            case .start, .toolCallEnd, .usage, .notice, .reasoningSignature, .reasoningRedacted:
                break
            }
            return out
        }

        /// A failure after the stream began: OpenAI's error object as a data line.
        static func error(_ e: GatewayError) -> [UInt8] { sse(e.openAI) }
    }
}
