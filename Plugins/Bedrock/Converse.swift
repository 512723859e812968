// Bedrock's Converse API: a `ModelRequest` as a Converse body (one shape
// for Anthropic, Meta, Mistral, Amazon and the other models on Bedrock),
// the ConverseStream events, a whole Converse answer, and Bedrock's errors.
import DescartesPluginKit

enum ConverseRequest {
    /// Members of the Converse request an option may set at the top level;
    /// every other option goes into `additionalModelRequestFields` (what is
    /// particular to one model family: `top_k`, Anthropic's `thinking`...).
    static let topLevel: Set<String> = [
        "additionalModelRequestFields", "additionalModelResponseFieldPaths", "guardrailConfig", "performanceConfig",
        "promptVariables", "requestMetadata",
    ]

    /// The body.
    ///
    /// - The system prompt and `system` messages are `system: [{text}]`.
    /// - Cache breakpoints (`Message.cacheControl`, `Tool.cacheControl`) are
    ///   `cachePoint` blocks after the message's content, the system text or
    ///   the tool's spec.
    /// - Consecutive messages of one role are merged into one turn; tool
    ///   results are `toolResult` blocks of a user turn (`json` content when
    ///   the result is a JSON object, `text` otherwise).
    /// - Assistant turns: their reasoning blocks first, in order and
    ///   unmodified (`Message.reasoningToSendBack`: `reasoningContent`
    ///   `reasoningText` with its own signature, or `redactedContent`; an
    ///   unsigned thinking block is not sent), text, `toolUse` blocks with
    ///   the parsed input.
    /// - Images are `image` blocks with base64 `bytes`; a URL image is refused
    ///   (Converse takes bytes or an S3 location only).
    /// - `inferenceConfig`: maxTokens, temperature, topP, stopSequences.
    /// - `toolConfig`: `toolSpec`s with `inputSchema.json`; tool choice
    ///   `auto` -> `{auto: {}}`, `required` -> `{any: {}}`, a name ->
    ///   `{tool: {name}}`; `none` sends no toolChoice (Converse has none).
    /// - A response format (`.json`, `.jsonSchema`) is a forced tool:
    ///   `toolConfig` with one `toolSpec` named `answerTool` whose input
    ///   schema is the format's (any object for `.json`), and `toolChoice
    ///   {tool: {name}}`; the tool's input is the answer (`ConverseStream`
    ///   delivers it as text). Converse has no JSON mode of its own for
    ///   every model; a forced tool works for the models that take
    ///   `toolChoice.tool` (Anthropic's Claude, Mistral Large, Amazon Nova).
    ///   A request with tools of its own cannot have one too
    ///   (`unsupported_feature`).
    static func encode(_ r: ModelRequest) throws(ProviderError) -> [UInt8] {
        var body = JSONObject()
        body["messages"] = .array(try turns(r.messages).map { ["role": .string($0.role), "content": .array($0.blocks)] })
        let system = self.system(r)
        if !system.isEmpty { body["system"] = .array(system) }
        var inference = JSONObject()
        if let m = r.maxTokens { inference["maxTokens"] = .integer(m) }
        if let t = r.temperature { inference["temperature"] = .number(t) }
        if let p = r.topP { inference["topP"] = .number(p) }
        if !r.stop.isEmpty { inference["stopSequences"] = .array(r.stop.map { .string($0) }) }
        if !inference.isEmpty { body["inferenceConfig"] = .object(inference) }
        if let schema = answerSchema(r.responseFormat) {
            guard r.tools.isEmpty else {
                throw ProviderError(
                    .unsupportedFeature,
                    "Bedrock's structured output is a forced tool ('\(answerTool)'), so a request asking for \(r.responseFormat == .json ? "JSON" : "a JSON schema") cannot carry tools of its own (it has \(r.tools.count))")
            }
            body["toolConfig"] = [
                "tools": [["toolSpec": ["name": .string(answerTool), "description": "Give your answer: its input is the whole answer, as the schema describes it.", "inputSchema": ["json": schema]]]],
                "toolChoice": ["tool": ["name": .string(answerTool)]],
            ]
        } else if !r.tools.isEmpty {
            var config: JSONObject = [
                "tools": .array(r.tools.flatMap { t -> [JSONValue] in
                    var spec: JSONObject = ["name": .string(t.name)]
                    if !t.description.isEmpty { spec["description"] = .string(t.description) }
                    var schema: JSONValue = ["type": "object", "properties": [:]]
                    if case .object(let o) = t.parameters, !o.isEmpty { schema = t.parameters }
                    spec["inputSchema"] = ["json": schema]
                    return [["toolSpec": .object(spec)]] + (t.cacheControl == nil ? [] : [cachePoint])
                })
            ]
            switch r.toolChoice {
            case .auto?: config["toolChoice"] = ["auto": [:]]
            case .required?: config["toolChoice"] = ["any": [:]]
            case .tool(let name)?: config["toolChoice"] = ["tool": ["name": .string(name)]]
            case .none?, nil: break
            }
            body["toolConfig"] = .object(config)
        }
        var additional = JSONObject()
        for m in r.options {
            if m.key == "additional_model_request_fields" || m.key == "additionalModelRequestFields", case .object(let o) = m.value {
                for a in o { additional[a.key] = a.value }
            } else if topLevel.contains(m.key) {
                body[m.key] = m.value
            } else if m.key == "guardrail_config" {
                body["guardrailConfig"] = m.value
            } else if !["messages", "system", "inferenceConfig", "toolConfig"].contains(m.key) {
                additional[m.key] = m.value
            }
        }
        if !additional.isEmpty { body["additionalModelRequestFields"] = .object(additional) }
        return JSONValue.object(body).jsonBytes
    }

    /// The forced tool whose input is a structured answer.
    static let answerTool = "structured_answer"

    /// The input schema of `answerTool` for a response format (nil: text).
    static func answerSchema(_ f: ResponseFormat) -> JSONValue? {
        switch f {
        case .text: return nil
        case .json: return ["type": "object"]
        case .jsonSchema(_, let schema, _): return schema
        }
    }

    /// Converse's prompt-cache breakpoint: the block after what a
    /// `cacheControl` marks (Converse has no TTL choice: a given `ttl` is
    /// not sent).
    static let cachePoint: JSONValue = ["cachePoint": ["type": "default"]]

    /// `system`: the system prompt and system messages, joined by a blank
    /// line, with a `cachePoint` after each system message that has a cache
    /// breakpoint.
    static func system(_ r: ModelRequest) -> [JSONValue] {
        var blocks: [JSONValue] = []
        for (text, cache) in r.systemSegments {
            if !text.isEmpty { blocks.append(["text": .string(text)]) }
            if cache != nil, !blocks.isEmpty, blocks.last != cachePoint { blocks.append(cachePoint) }
        }
        return blocks
    }

    /// Messages as turns; a message with a cache breakpoint is followed by a
    /// `cachePoint` block.
    static func turns(_ messages: [Message]) throws(ProviderError) -> [(role: String, blocks: [JSONValue])] {
        var out: [(role: String, blocks: [JSONValue])] = []
        var cache = false
        func add(_ role: String, _ blocks: [JSONValue]) {
            var blocks = blocks
            if cache, !blocks.isEmpty || out.last?.role == role { blocks.append(cachePoint) }
            guard !blocks.isEmpty else { return }
            if let last = out.last, last.role == role { out[out.count - 1].blocks += blocks } else { out.append((role, blocks)) }
        }
        for m in messages {
            cache = m.cacheControl != nil
            switch m.role {
            case .system:
                continue
            case .user:
                var blocks: [JSONValue] = []
                for image in m.images {
                    guard case .data(let type, let b64) = image.source else {
                        throw ProviderError(.unsupportedFeature, "Bedrock's Converse API takes image bytes, not URLs: fetch the image and send its bytes")
                    }
                    blocks.append(["image": ["format": .string(String(type.dropFirst("image/".count))), "source": ["bytes": .string(b64)]]])
                }
                if !m.content.isEmpty { blocks.append(["text": .string(m.content)]) }
                add("user", blocks)
            case .tool:
                let content: JSONValue
                if case .object(let o)? = try? JSONValue.parse(m.content) { content = [["json": .object(o)]] } else { content = [["text": .string(m.content)]] }
                var result: JSONObject = ["toolUseId": .string(m.toolCallID ?? ""), "content": content]
                if m.isError { result["status"] = "error" }
                add("user", [["toolResult": .object(result)]])
            case .assistant:
                var blocks: [JSONValue] = []
                for b in m.reasoningToSendBack {
                    switch b {
                    case .thinking(let text, let sig?) where !sig.isEmpty:
                        blocks.append(["reasoningContent": ["reasoningText": ["text": .string(text), "signature": .string(sig)]]])
                    case .thinking: continue  // unsigned (another provider's): Claude refuses it
                    case .redacted(let data): blocks.append(["reasoningContent": ["redactedContent": .string(data)]])
                    }
                }
                if !m.content.isEmpty { blocks.append(["text": .string(m.content)]) }
                for c in m.toolCalls {
                    var input: JSONValue = [:]
                    if case .object(let o)? = try? JSONValue.parse(c.arguments.isEmpty ? "{}" : c.arguments) { input = .object(o) }
                    blocks.append(["toolUse": ["toolUseId": .string(c.id), "name": .string(c.name), "input": input]])
                }
                add("assistant", blocks)
            }
        }
        return out
    }
}

/// The state of one ConverseStream answer, fed message by message.
///
/// Events (`:message-type` `event`, named by `:event-type`): `messageStart`,
/// `contentBlockStart` (a `toolUse` start with id and name),
/// `contentBlockDelta` (`text`, `toolUse.input` fragments,
/// `reasoningContent.text` / `.signature` / `.redactedContent`, each
/// reasoning block its own, its signature sent when it stops),
/// `contentBlockStop`,
/// `messageStop` (the stop reason), `metadata` (usage, after messageStop).
/// `:message-type` `exception` (`:exception-type` `throttlingException`,
/// `modelStreamErrorException`, `validationException`,
/// `internalServerException`, `serviceUnavailableException`) ends the
/// answer with that error. There is no terminal event after `metadata`: the
/// stream ends with the body, and it must have carried `messageStop`.
struct ConverseStream {
    var started = false
    var stopReason: String?
    var tools: [Int: Int] = [:]  // content block index -> tool call index
    var toolArgs: Set<Int> = []
    var toolCount = 0
    /// The open reasoning block's signature, and the last block's (the Finish's metadata).
    var signature = ""
    var lastSignature: String?
    var usage: JSONValue?
    var latencyMS: Int?
    var model: String?
    /// The request asked for structured output: `ConverseRequest.answerTool`'s
    /// input is the answer, delivered as text (its fragments as they come),
    /// not as a tool call.
    var structured = false
    /// Content blocks that are the answer tool's.
    var answerBlocks: Set<Int> = []

    mutating func ensureStarted(_ call: EventBatcher) {
        if started { return }
        started = true
        call.start(id: nil, model: model)
    }

    mutating func message(_ m: EventStreamDecoder.Message, _ call: EventBatcher) throws(ProviderError) {
        let type = m.header(":message-type") ?? "event"
        let payload: JSONValue
        do { payload = m.payload.count == 0 ? [:] : try JSONValue.parse(m.payload) } catch {
            throw ProviderError(.invalidResponse, "an event-stream message whose payload is not JSON (\(error)): \(ProviderHTTP.excerpt(Array(m.payload)))")
        }
        if type == "exception" {
            throw BedrockErrors.error(type: m.header(":exception-type") ?? "exception", message: payload["message"]?.stringValue ?? payload["Message"]?.stringValue, status: nil, headers: HTTPHeaders(), inStream: true)
        }
        if type == "error" {
            throw BedrockErrors.error(type: m.header(":error-code") ?? "error", message: m.header(":error-message"), status: nil, headers: HTTPHeaders(), inStream: true)
        }
        guard type == "event" else { return }
        switch m.header(":event-type") {
        case "messageStart":
            ensureStarted(call)
        case "contentBlockStart":
            ensureStarted(call)
            if let use = payload["start"]?["toolUse"], let block = payload["contentBlockIndex"]?.intValue {
                if structured && use["name"]?.stringValue == ConverseRequest.answerTool {
                    answerBlocks.insert(block)
                    return
                }
                let i = toolCount
                toolCount += 1
                tools[block] = i
                call.toolCallStart(index: i, id: use["toolUseId"]?.stringValue ?? "", name: use["name"]?.stringValue ?? "")
            }
        case "contentBlockDelta":
            ensureStarted(call)
            guard let delta = payload["delta"] else { return }
            if let t = delta["text"]?.stringValue, !t.isEmpty { call.text(t) }
            if let r = delta["reasoningContent"] {
                if let t = r["text"]?.stringValue, !t.isEmpty { call.reasoning(t) }
                if let s = r["signature"]?.stringValue { signature += s }
                if let d = r["redactedContent"]?.stringValue { call.reasoningRedacted(d) }
            }
            if let input = delta["toolUse"]?["input"]?.stringValue, let block = payload["contentBlockIndex"]?.intValue, answerBlocks.contains(block) {
                if !input.isEmpty { call.text(input) }
            } else if let input = delta["toolUse"]?["input"]?.stringValue, let block = payload["contentBlockIndex"]?.intValue, let i = tools[block], !input.isEmpty {
                toolArgs.insert(i)
                call.toolCallDelta(index: i, input)
            }
        case "contentBlockStop":
            // The reasoning block is complete: its signature before what follows.
            endReasoning(call)
            if let block = payload["contentBlockIndex"]?.intValue, let i = tools.removeValue(forKey: block) {
                if !toolArgs.contains(i) { call.toolCallDelta(index: i, "{}") }
                call.toolCallEnd(index: i)
            }
        case "messageStop":
            ensureStarted(call)
            stopReason = payload["stopReason"]?.stringValue ?? "end_turn"
        case "metadata":
            if let u = payload["usage"], u.objectValue != nil { usage = u }
            latencyMS = payload["metrics"]?["latencyMs"]?.intValue
        default:
            break  // unknown events are ignored
        }
    }

    /// The open reasoning block ends: its signature, when it has one.
    mutating func endReasoning(_ call: EventBatcher) {
        guard !signature.isEmpty else { return }
        lastSignature = signature
        call.reasoningSignature(signature)
        signature = ""
    }

    mutating func finish(_ call: EventBatcher) -> Wire.Finish {
        ensureStarted(call)
        endReasoning(call)
        for (_, i) in tools.sorted(by: { $0.key < $1.key }) {
            if !toolArgs.contains(i) { call.toolCallDelta(index: i, "{}") }
            call.toolCallEnd(index: i)
        }
        tools = [:]
        var reason = Self.finishReason(stopReason)
        // The forced answer tool "used" is the answer given.
        if structured && reason == .toolUse && toolCount == 0 { reason = .stop }
        var meta = JSONObject()
        if let raw = stopReason, raw != reason.rawValue { meta["provider_finish_reason"] = .string(raw) }
        if let s = lastSignature { meta["thinking_signature"] = .string(s) }
        if let l = latencyMS { meta["latency_ms"] = .integer(l) }
        return Wire.Finish(finishReason: reason, usage: usage.map(Self.usage), model: model, metadata: meta)
    }

    /// Converse's `inputTokens` leaves out cache reads and writes (as
    /// Anthropic's does); ours counts every input token.
    static func usage(_ u: JSONValue) -> Usage {
        let input = u["inputTokens"]?.intValue ?? 0
        let read = u["cacheReadInputTokens"]?.intValue ?? 0
        let write = u["cacheWriteInputTokens"]?.intValue ?? 0
        return Usage(inputTokens: input + read + write, outputTokens: u["outputTokens"]?.intValue ?? 0, cacheReadTokens: read, cacheWriteTokens: write)
    }

    /// `end_turn`, `stop_sequence` -> stop; `max_tokens`,
    /// `model_context_window_exceeded` -> maxTokens; `tool_use` -> toolUse;
    /// `guardrail_intervened`, `content_filtered` -> contentFilter.
    static func finishReason(_ raw: String?) -> FinishReason {
        switch raw {
        case nil, "end_turn", "stop_sequence": return .stop
        case "max_tokens", "model_context_window_exceeded": return .maxTokens
        case "tool_use": return .toolUse
        case "guardrail_intervened", "content_filtered": return .contentFilter
        case let r?: return FinishReason(rawValue: r)
        }
    }

    /// A whole Converse answer.
    static func whole(_ body: [UInt8], model: String?, structured: Bool = false, _ call: EventBatcher) throws(ProviderError) -> Wire.Finish {
        guard case .object(let o)? = try? JSONValue.parse(bytes: body) else {
            throw ProviderError(.invalidResponse, "the answer is not a JSON Converse response: \(ProviderHTTP.excerpt(body))")
        }
        guard let content = o["output"]?["message"]?["content"]?.arrayValue else {
            throw ProviderError(.invalidResponse, "the answer has no output.message.content: \(ProviderHTTP.excerpt(body))")
        }
        var s = ConverseStream()
        s.model = model
        s.structured = structured
        s.ensureStarted(call)
        // Blocks in order: each reasoning block with its own signature, the
        // redacted ones in their places (as the stream gives them).
        for b in content {
            if let t = b["text"]?.stringValue, !t.isEmpty { call.text(t) }
            if let r = b["reasoningContent"]?["reasoningText"] {
                if let t = r["text"]?.stringValue, !t.isEmpty { call.reasoning(t) }
                s.signature = r["signature"]?.stringValue ?? ""
                s.endReasoning(call)
            }
            if let d = b["reasoningContent"]?["redactedContent"]?.stringValue { call.reasoningRedacted(d) }
            if let use = b["toolUse"], structured, use["name"]?.stringValue == ConverseRequest.answerTool {
                call.text((use["input"] ?? [:]).jsonText)
            } else if let use = b["toolUse"] {
                call.toolCall(
                    index: s.toolCount,
                    ToolCall(id: use["toolUseId"]?.stringValue ?? "", name: use["name"]?.stringValue ?? "", arguments: (use["input"] ?? [:]).jsonText))
                s.toolCount += 1
            }
        }
        s.stopReason = o["stopReason"]?.stringValue
        s.usage = o["usage"]
        s.latencyMS = o["metrics"]?["latencyMs"]?.intValue
        return s.finish(call)
    }
}

/// Bedrock's errors: the exception's name in the `x-amzn-ErrorType` header
/// (`ThrottlingException:http://internal.amazon.com/coral/...`) or the
/// body's `__type`, the text in `message` (or `Message`).
enum BedrockErrors {
    static func error(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError {
        let doc = try? JSONValue.parse(bytes: body)
        var type = headers["x-amzn-errortype"] ?? doc?["__type"]?.stringValue
        if let t = type, let colon = t.firstIndex(of: ":") { type = String(t[..<colon]) }
        if let t = type, let hash = t.lastIndex(of: "#") { type = String(t[t.index(after: hash)...]) }
        let message = doc?["message"]?.stringValue ?? doc?["Message"]?.stringValue ?? (doc == nil ? ProviderHTTP.excerpt(body) : nil)
        return error(type: type, message: message, status: status, headers: headers, inStream: false)
    }

    /// - `ThrottlingException`, `ServiceQuotaExceededException`: `rateLimited`
    /// - `ModelNotReadyException` (429: the model is being loaded; AWS's SDKs
    ///   retry it), `InternalServerException`, `ServiceUnavailableException`,
    ///   `ModelTimeoutException`, `ModelStreamErrorException`:
    ///   `providerUnavailable`
    /// - `ValidationException`, `ResourceNotFoundException`,
    ///   `ModelErrorException`, `ConflictException`: `api`
    /// - `AccessDeniedException`, `UnrecognizedClientException`,
    ///   `InvalidSignatureException`, `ExpiredTokenException`,
    ///   `IncompleteSignatureException`, `MissingAuthenticationTokenException`:
    ///   `authentication`
    /// - anything else by its status.
    static func error(type rawType: String?, message: String?, status: Int?, headers: HTTPHeaders, inStream: Bool) -> ProviderError {
        // In a stream the exception names start lowercase (throttlingException).
        let type = rawType.map { $0.prefix(1).uppercased() + $0.dropFirst() }
        let kind: ProviderError.Kind
        switch type {
        case "ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException": kind = .rateLimited
        case "ModelNotReadyException", "InternalServerException", "ServiceUnavailableException", "ModelTimeoutException",
            "ModelStreamErrorException", "InternalFailure", "ServiceUnavailable":
            kind = .providerUnavailable
        case "ValidationException", "ResourceNotFoundException", "ModelErrorException", "ConflictException", "SerializationException":
            kind = .api
        case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
            "IncompleteSignatureException", "MissingAuthenticationTokenException", "IncompleteSignature", "MissingAuthenticationToken":
            kind = .authentication
        default:
            kind = status.map { ProviderHTTP.kind(forStatus: $0) } ?? .api
        }
        let said = [type, message].compactMap { $0 }.joined(separator: ": ")
        var e = ProviderError(kind, inStream ? "the stream reported \(said.isEmpty ? "an exception" : said)" : (said.isEmpty ? "HTTP \(status ?? 0)" : "HTTP \(status ?? 0): \(said)"))
        e.status = status
        e.providerType = type
        e.retryAfter = ProviderHTTP.retryAfter(headers)
        if let status, (300...399).contains(status) { e = ProviderHTTP.error(status: status, headers: headers, message: message, type: type, endpoint: "") }
        return e
    }
}
