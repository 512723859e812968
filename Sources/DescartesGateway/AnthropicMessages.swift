import Descartes

/// Anthropic's Messages API (`POST /v1/messages`,
/// `POST /v1/messages/count_tokens`) in and out.
enum AnthropicMessages {
    struct Parsed: Sendable {
        var request: ModelRequest
        var model: String
        var stream: Bool
    }

    /// Members passed to the backend as provider options, as given (an
    /// Anthropic upstream takes them).
    static let passedThrough = ["thinking", "top_k", "service_tier", "container", "mcp_servers"]

    /// - Parameter countOnly: `count_tokens` (no `max_tokens`, no `stream`).
    static func parse(_ doc: JSONValue, countOnly: Bool = false) throws(GatewayError) -> Parsed {
        guard case .object(let o) = doc else { throw .invalidRequest("the body is a JSON object") }
        guard let model = o["model"]?.stringValue, !model.isEmpty else { throw .invalidRequest("model: Field required") }
        guard let list = o["messages"]?.arrayValue else { throw .invalidRequest("messages: Field required") }
        var r = ModelRequest(messages: [])
        if !countOnly {
            guard let max = o["max_tokens"]?.intValue, max > 0 else { throw .invalidRequest("max_tokens: Field required (a positive integer)") }
            r.maxTokens = max
        }
        var system: [Message] = []
        switch o["system"] {
        case .string(let s)?: r.systemPrompt = s
        case .array(let blocks)?:
            var texts: [String] = []
            for (j, b) in blocks.enumerated() {
                guard b["type"]?.stringValue == "text", let t = b["text"]?.stringValue else {
                    throw .invalidRequest("system.\(j): only text blocks are supported")
                }
                texts.append(t)
                if let c = try cacheControl(b, at: "system.\(j)") {
                    system.append(Message(role: .system, content: texts.joined(separator: "\n\n"), cacheControl: c))
                    texts = []
                }
            }
            // Without breakpoints the system prompt, as before; with them, one
            // system message per breakpoint (and one for the text after the last).
            if system.isEmpty {
                r.systemPrompt = texts.joined(separator: "\n\n")
            } else if !texts.isEmpty {
                system.append(.system(texts.joined(separator: "\n\n")))
            }
        case nil, .null?: break
        default: throw .invalidRequest("system: a string or an array of text blocks")
        }
        r.messages = system
        for (i, m) in list.enumerated() {
            let at = "messages.\(i)"
            guard let role = m["role"]?.stringValue, ["user", "assistant", "system"].contains(role) else {
                throw .invalidRequest("\(at).role: 'user' or 'assistant'")
            }
            let blocks: [JSONValue]
            switch m["content"] {
            case .string(let s)?: blocks = [["type": "text", "text": .string(s)]]
            case .array(let a)?: blocks = a
            default: throw .invalidRequest("\(at).content: a string or an array of content blocks")
            }
            if role == "system" {
                // Not Anthropic's own form, but Claude Code sends it (and
                // does not retry without it): a system message in place.
                var msg = Message.system(blocks.compactMap { $0["type"]?.stringValue == "text" ? $0["text"]?.stringValue : nil }.joined())
                for (j, b) in blocks.enumerated() { msg.cacheControl = try cacheControl(b, at: "\(at).content.\(j)") ?? msg.cacheControl }
                r.messages.append(msg)
                continue
            }
            // A block with cache_control ends a message, so the breakpoint
            // reaches the backend at the same place (Message.cacheControl).
            let breakpoints = try blocks.enumerated().map { (j, b) throws(GatewayError) in try cacheControl(b, at: "\(at).content.\(j)") }
            if role == "user" {
                // Tool results first (Anthropic requires them first in the turn).
                var pending = Message.user("")
                var parts: [Message] = []
                for (j, b) in blocks.enumerated() {
                    switch b["type"]?.stringValue {
                    case "text": pending.content += b["text"]?.stringValue ?? ""
                    case "image":
                        // Backends put images before the text: keep the
                        // client's order where a breakpoint depends on it.
                        if !pending.content.isEmpty && breakpoints.contains(where: { $0 != nil }) {
                            parts.append(pending)
                            pending = .user("")
                        }
                        pending.images.append(try image(b["source"], at: "\(at).content.\(j)"))
                    case "tool_result":
                        guard let id = b["tool_use_id"]?.stringValue else { throw .invalidRequest("\(at).content.\(j).tool_use_id: Field required") }
                        var output: String
                        var cache = breakpoints[j]
                        switch b["content"] {
                        case .string(let s)?: output = s
                        case .array(let inner)?:
                            output = inner.compactMap { $0["type"]?.stringValue == "text" ? $0["text"]?.stringValue : nil }.joined()
                            // A breakpoint inside the result marks the result (its text is one block here).
                            for (k, x) in inner.enumerated() { cache = try cacheControl(x, at: "\(at).content.\(j).content.\(k)") ?? cache }
                        default: output = ""
                        }
                        // A failed tool: marked (an Anthropic backend sends is_error on) and
                        // said in the text, for the backends whose wire has no such mark.
                        let failed = b["is_error"]?.boolValue == true
                        if failed { output = "Error: " + output }
                        var result = Message.tool(callID: id, output, isError: failed)
                        result.cacheControl = cache
                        r.messages.append(result)
                        continue
                    default:
                        throw .invalidRequest("\(at).content.\(j): block type '\(b["type"]?.stringValue ?? "?")' is not supported (text, image, tool_result)")
                    }
                    if let c = breakpoints[j] {
                        pending.cacheControl = c
                        parts.append(pending)
                        pending = .user("")
                    }
                }
                if !pending.content.isEmpty || !pending.images.isEmpty || (parts.isEmpty && !blocks.contains(where: { $0["type"]?.stringValue == "tool_result" })) {
                    parts.append(pending)
                }
                r.messages += parts
            } else {
                var msg = Message.assistant("")
                var ended = false
                for (j, b) in blocks.enumerated() {
                    switch b["type"]?.stringValue {
                    case "text": msg.content += b["text"]?.stringValue ?? ""
                    case "tool_use":
                        guard let id = b["id"]?.stringValue, let name = b["name"]?.stringValue else {
                            throw .invalidRequest("\(at).content.\(j): a tool_use block needs id and name")
                        }
                        msg.toolCalls.append(ToolCall(id: id, name: name, arguments: (b["input"] ?? [:]).jsonText))
                    case "thinking":
                        // Every reasoning block, in order and as given (an
                        // Anthropic backend checks each one's signature), and
                        // the joined view for the other backends.
                        guard let t = b["thinking"]?.stringValue else { throw .invalidRequest("\(at).content.\(j).thinking: Field required") }
                        let signature = b["signature"]?.stringValue
                        msg.reasoningBlocks.append(.thinking(t, signature: signature))
                        msg.reasoning = (msg.reasoning ?? "") + t
                        if let signature { msg.reasoningSignature = signature }
                    case "redacted_thinking":
                        guard let data = b["data"]?.stringValue else { throw .invalidRequest("\(at).content.\(j).data: Field required") }
                        msg.reasoningBlocks.append(.redacted(data))
                    default:
                        throw .invalidRequest(
                            "\(at).content.\(j): block type '\(b["type"]?.stringValue ?? "?")' is not supported (text, tool_use, thinking, redacted_thinking)")
                    }
                    if let c = breakpoints[j] {
                        msg.cacheControl = c
                        r.messages.append(msg)
                        ended = true
                        msg = .assistant("")
                    }
                }
                if !ended || msg != .assistant("") { r.messages.append(msg) }
            }
        }
        guard !list.isEmpty else { throw .invalidRequest("messages: at least one message is required") }
        r.temperature = o["temperature"]?.doubleValue
        r.topP = o["top_p"]?.doubleValue
        r.stop = o["stop_sequences"]?.arrayValue?.compactMap(\.stringValue) ?? []
        for (i, t) in (o["tools"]?.arrayValue ?? []).enumerated() {
            guard let name = t["name"]?.stringValue else { throw .invalidRequest("tools.\(i).name: Field required") }
            if let type = t["type"]?.stringValue, type != "custom" {
                throw .invalidRequest("tools.\(i): server tools ('\(type)') are not supported by the gateway; custom tools only")
            }
            r.tools.append(
                Tool(
                    name: name, description: t["description"]?.stringValue ?? "", parameters: t["input_schema"] ?? ["type": "object", "properties": [:]],
                    cacheControl: try cacheControl(t, at: "tools.\(i)")))
        }
        if let c = o["tool_choice"], !c.isNull {
            switch c["type"]?.stringValue {
            case "auto": r.toolChoice = .auto
            case "any": r.toolChoice = .required
            case "none": r.toolChoice = ToolChoice.none
            case "tool":
                guard let name = c["name"]?.stringValue else { throw .invalidRequest("tool_choice.name: Field required") }
                r.toolChoice = .tool(name)
            default: throw .invalidRequest("tool_choice.type: auto, any, tool or none")
            }
        }
        if let user = o["metadata"]?["user_id"]?.stringValue { r.metadata["user"] = user }
        for key in passedThrough { if let v = o[key], !v.isNull { r.options[key] = v } }
        // Structured outputs: `output_config.format` (and the beta's
        // top-level `output_format`) become the request's response format,
        // which every backend maps its own way and the host checks; the rest
        // of `output_config` (`effort`) is passed on.
        if let c = o["output_config"], !c.isNull {
            guard case .object(var config) = c else { throw .invalidRequest("output_config: Input should be a valid dictionary") }
            if let f = config["format"], !f.isNull { r.responseFormat = try responseFormat(f, param: "output_config.format") }
            config["format"] = nil
            if !config.isEmpty { r.options["output_config"] = .object(config) }
        }
        if let f = o["output_format"], !f.isNull { r.responseFormat = try responseFormat(f, param: "output_format") }
        return Parsed(request: r, model: model, stream: !countOnly && o["stream"]?.boolValue == true)
    }

    /// Anthropic's structured-output format, `{"type": "json_schema",
    /// "schema": {...}}`, as the request's response format (named `output`:
    /// Anthropic's takes no name; strict where OpenAI's strict mode would
    /// take the schema, so a route to an OpenAI backend does not refuse it).
    static func responseFormat(_ f: JSONValue, param: String) throws(GatewayError) -> ResponseFormat {
        guard f["type"]?.stringValue == "json_schema" else { throw .invalidRequest("\(param).type: Input should be 'json_schema'") }
        guard let schema = f["schema"], case .object = schema else { throw .invalidRequest("\(param).schema: Field required (a JSON Schema object)") }
        let format = ResponseFormat.jsonSchema(name: "output", schema: schema, strict: JSONSchema.meetsStrictMode(schema))
        do { try format.checkSchema() } catch { throw .invalidRequest("\(param).schema: \(error.description)") }
        return format
    }

    /// A block's (or tool's) `cache_control`, passed on as given: an object
    /// with a `type` (Anthropic's API checks the rest).
    static func cacheControl(_ block: JSONValue, at: String) throws(GatewayError) -> JSONValue? {
        switch block["cache_control"] {
        case nil, .null?: return nil
        case let c? where c["type"]?.stringValue != nil && c.objectValue != nil: return c
        default: throw .invalidRequest("\(at).cache_control: an object with a type, such as {\"type\": \"ephemeral\"}")
        }
    }

    static func image(_ source: JSONValue?, at: String) throws(GatewayError) -> ImageInput {
        switch source?["type"]?.stringValue {
        case "base64":
            guard let type = source?["media_type"]?.stringValue, ImageInput.mediaTypes.contains(type), let data = source?["data"]?.stringValue else {
                throw .invalidRequest("\(at).source: media_type (image/png, image/jpeg, image/gif, image/webp) and data are required")
            }
            return ImageInput(.data(mediaType: type, base64: data))
        case "url":
            guard let url = source?["url"]?.stringValue, url.hasPrefix("https://") || url.hasPrefix("http://") else {
                throw .invalidRequest("\(at).source.url: an http(s) URL")
            }
            return .url(url)
        default: throw .invalidRequest("\(at).source.type: base64 or url")
        }
    }

    static func stopReason(_ f: FinishReason) -> String {
        switch f {
        case .maxTokens: return "max_tokens"
        case .toolUse: return "tool_use"
        case .contentFilter: return "refusal"
        default: return "end_turn"
        }
    }

    /// Anthropic counts cache reads and writes apart from `input_tokens`.
    static func usage(_ u: Usage) -> JSONValue {
        [
            "input_tokens": .integer(max(0, u.inputTokens - u.cacheReadTokens - u.cacheWriteTokens)), "output_tokens": .integer(u.outputTokens),
            "cache_creation_input_tokens": .integer(u.cacheWriteTokens), "cache_read_input_tokens": .integer(u.cacheReadTokens),
        ]
    }

    static func message(_ r: ModelResponse, id: String, model: String) -> JSONValue {
        // Every reasoning block, in order, each thinking block with its own
        // signature (which the client sends back with the next turn; one
        // without text carries a signature a backend needs back).
        var content = reasoningBlocks(r).map(block)
        if !r.content.isEmpty || r.toolCalls.isEmpty { content.append(["type": "text", "text": .string(r.content)]) }
        for c in r.toolCalls {
            content.append(["type": "tool_use", "id": .string(c.id), "name": .string(c.name), "input": c.parsedArguments ?? [:]])
        }
        return [
            "id": .string(id), "type": "message", "role": "assistant", "model": .string(model), "content": .array(content),
            "stop_reason": .string(stopReason(r.finishReason)), "stop_sequence": .null, "usage": usage(r.usage),
        ]
    }

    /// The answer's reasoning blocks; for a response without them (a
    /// backend that is not a plugin), one thinking block of its joined
    /// reasoning and signature, when it has either.
    static func reasoningBlocks(_ r: ModelResponse) -> [ReasoningBlock] {
        if !r.reasoningBlocks.isEmpty { return r.reasoningBlocks }
        let signature = r.reasoningSignature
        if !(r.reasoning ?? "").isEmpty || signature != nil { return [.thinking(r.reasoning ?? "", signature: signature ?? "")] }
        return []
    }

    /// A reasoning block as Anthropic's content block (an unsigned thinking
    /// block's `signature` is empty: the member is required).
    static func block(_ b: ReasoningBlock) -> JSONValue {
        switch b {
        case .thinking(let t, let sig): return ["type": "thinking", "thinking": .string(t), "signature": .string(sig ?? "")]
        case .redacted(let data): return ["type": "redacted_thinking", "data": .string(data)]
        }
    }

    /// Turns stream events into Anthropic's SSE events: `message_start`,
    /// then per content block `content_block_start`, `content_block_delta`s
    /// and `content_block_stop` (a `ping` after the first block starts), then
    /// `message_delta` and `message_stop`. A thinking block ends with its
    /// `signature_delta` when the backend streams the signature
    /// (`.reasoningSignature`, which closes the block: reasoning after it
    /// opens the next one); one that gives it only with the answer gets it
    /// at the end, on a thinking block of its own when the first one was
    /// closed. A redacted block (`.reasoningRedacted`) is a
    /// `redacted_thinking` block whose start carries its data, stopped
    /// at once, as Anthropic streams it.
    struct EventWriter {
        let id: String
        let model: String
        private var started = false
        /// The open block: its index and kind ("text", "thinking", "tool_use").
        private var open: (index: Int, kind: String)?
        private var nextIndex = 0
        /// Upstream tool-call index -> block index.
        private var toolBlocks: [Int: Int] = [:]
        /// Whether a thinking signature was sent.
        private var signed = false

        init(id: String, model: String) {
            self.id = id
            self.model = model
        }

        static func sse(_ name: String, _ doc: JSONValue) -> [UInt8] {
            var out = Array("event: \(name)\ndata: ".utf8)
            doc.write(to: &out)
            out.append(contentsOf: [10, 10])
            return out
        }

        private mutating func start() -> [UInt8] {
            guard !started else { return [] }
            started = true
            let message: JSONValue = [
                "id": .string(id), "type": "message", "role": "assistant", "model": .string(model), "content": [], "stop_reason": .null,
                "stop_sequence": .null, "usage": ["input_tokens": 0, "output_tokens": 0],
            ]
            return Self.sse("message_start", ["type": "message_start", "message": message])
        }

        private mutating func close() -> [UInt8] {
            guard let o = open else { return [] }
            open = nil
            return Self.sse("content_block_stop", ["type": "content_block_stop", "index": .integer(o.index)])
        }

        private mutating func openBlock(_ kind: String, _ block: JSONValue) -> (Int, [UInt8]) {
            var out = close()
            let index = nextIndex
            nextIndex += 1
            open = (index, kind)
            out += Self.sse("content_block_start", ["type": "content_block_start", "index": .integer(index), "content_block": block])
            if index == 0 { out += Self.sse("ping", ["type": "ping"]) }
            return (index, out)
        }

        private mutating func ensure(_ kind: String, _ block: JSONValue) -> (Int, [UInt8]) {
            if let o = open, o.kind == kind { return (o.index, []) }
            return openBlock(kind, block)
        }

        static let thinkingStart: JSONValue = ["type": "thinking", "thinking": "", "signature": ""]

        /// A `signature_delta` on the thinking block (Anthropic sends it
        /// last, before the block's `content_block_stop`); a thinking block
        /// is opened for it when none is.
        private mutating func signature(_ sig: String) -> [UInt8] {
            signed = true
            let (i, b) = ensure("thinking", Self.thinkingStart)
            return b + Self.sse("content_block_delta", ["type": "content_block_delta", "index": .integer(i), "delta": ["type": "signature_delta", "signature": .string(sig)]])
        }

        mutating func bytes(_ event: StreamEvent) -> [UInt8] {
            switch event {
            case .start, .usage, .notice: return []
            default: break
            }
            var out = start()
            switch event {
            case .textDelta(let t):
                let (i, b) = ensure("text", ["type": "text", "text": ""])
                out += b
                out += Self.sse("content_block_delta", ["type": "content_block_delta", "index": .integer(i), "delta": ["type": "text_delta", "text": .string(t)]])
            case .reasoningDelta(let t):
                let (i, b) = ensure("thinking", Self.thinkingStart)
                out += b
                out += Self.sse(
                    "content_block_delta", ["type": "content_block_delta", "index": .integer(i), "delta": ["type": "thinking_delta", "thinking": .string(t)]])
            case .reasoningSignature(let sig):
                out += signature(sig)
                out += close()
            case .reasoningRedacted(let data):
                out += openBlock("redacted_thinking", block(.redacted(data))).1
                out += close()
            case .toolCallStart(let index, let callID, let name):
                let (i, b) = openBlock("tool_use", ["type": "tool_use", "id": .string(callID), "name": .string(name), "input": [:]])
                toolBlocks[index] = i
                out += b
            case .toolCallDelta(let index, let arguments):
                guard let i = toolBlocks[index] else { break }
                out += Self.sse(
                    "content_block_delta",
                    ["type": "content_block_delta", "index": .integer(i), "delta": ["type": "input_json_delta", "partial_json": .string(arguments)]])
            case .toolCallEnd(let index):
                if let i = toolBlocks[index], open?.index == i { out += close() }
            case .finish(let r):
                // A backend that gives the signature only with the answer:
                // on the open thinking block, else on a thinking block of its own.
                if !signed, let sig = r.reasoningSignature { out += signature(sig) }
                if nextIndex == 0 { out += ensure("text", ["type": "text", "text": ""]).1 }
                out += close()
                out += Self.sse(
                    "message_delta",
                    ["type": "message_delta", "delta": ["stop_reason": .string(stopReason(r.finishReason)), "stop_sequence": .null], "usage": usage(r.usage)])
                out += Self.sse("message_stop", ["type": "message_stop"])
            case .start, .usage, .notice: break
            }
            return out
        }

        /// A failure after the stream began: Anthropic's `error` event.
        static func error(_ e: GatewayError) -> [UInt8] { sse("error", e.anthropic) }
    }
}

extension Gateway {
    func messages(_ request: HTTPRequest, _ exchange: HTTPExchange, key: GatewaySettings.Key?, _ record: inout AccessRecord) async {
        let parsed: AnthropicMessages.Parsed
        let target: (backend: any ModelBackend, name: String, model: String?)
        do throws(GatewayError) {
            parsed = try AnthropicMessages.parse(try body(request))
            record.model = parsed.model
            target = try self.target(parsed.model, key: key)
        } catch {
            return send(error, .anthropic, exchange, &record)
        }
        record.provider = target.name
        var modelRequest = parsed.request
        let limit = arm(target.name, exchange, &record)
        modelRequest.deadlines.total = min(modelRequest.deadlines.total ?? limit, limit)
        if let m = target.model { modelRequest.model = m }
        if let key { key.label(&modelRequest.metadata) }
        // Approvals are the gateway's configuration, never the client's.
        modelRequest.approval = approval(for: target.name)
        record.stream = parsed.stream
        let id = "msg_" + Self.randomID()
        if !parsed.stream {
            do {
                let r = try await target.backend.complete(modelRequest)
                record.usage = r.usage
                record.costUSD = r.costUSD
                json(200, AnthropicMessages.message(r, id: id, model: parsed.model), exchange, &record)
            } catch {
                send(GatewayError(ProviderError.from(error, provider: target.name)), .anthropic, exchange, &record)
            }
            return
        }
        var writer = AnthropicMessages.EventWriter(id: id, model: parsed.model)
        await stream(target.backend, modelRequest, name: target.name, exchange, &record, dialect: .anthropic) { event in
            writer.bytes(event)
        } failure: { e in
            AnthropicMessages.EventWriter.error(e)
        }
    }

    func countTokens(_ request: HTTPRequest, _ exchange: HTTPExchange, key: GatewaySettings.Key?, _ record: inout AccessRecord) async {
        let parsed: AnthropicMessages.Parsed
        let target: (backend: any ModelBackend, name: String, model: String?)
        do throws(GatewayError) {
            parsed = try AnthropicMessages.parse(try body(request), countOnly: true)
            record.model = parsed.model
            target = try self.target(parsed.model, key: key)
        } catch {
            return send(error, .anthropic, exchange, &record)
        }
        record.provider = target.name
        var modelRequest = parsed.request
        let limit = arm(target.name, exchange, &record)
        modelRequest.deadlines.total = min(modelRequest.deadlines.total ?? limit, limit)
        if let m = target.model { modelRequest.model = m }
        do {
            let estimate = try await target.backend.estimateTokens(modelRequest)
            json(200, ["input_tokens": .integer(estimate.tokens)], exchange, &record)
        } catch {
            send(GatewayError(ProviderError.from(error, provider: target.name)), .anthropic, exchange, &record)
        }
    }
}
