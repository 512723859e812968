// OpenAI's Responses API (factory "openai-responses" of libdescartes-openai.so):
// `POST {endpoint}/responses`, streamed as typed server-sent events or whole.
//
// A factory of its own rather than a setting of "openai": its manifest says
// what only this API does (reasoning carried across turns, server-side state
// with previous_response_id), it has its own conformance spec and prices can
// be routed to it by name, and the chat-completions instance stays what every
// compatible server also speaks. Both share this library's HTTP settings,
// headers and model list.
//
// Stateless by default (`store: false`): the encrypted reasoning items of an
// answer come back as its `reasoning_signature` (the items' JSON) and are sent
// again before the assistant turn they belong to, so a reasoning model keeps
// its reasoning across turns without OpenAI storing anything.
// `previous_response_id` (a request option, with `store: true`) chains
// stored responses instead.
import DescartesOpenAIChat

final class ResponsesBackend: DescartesBackend {
    let context: BackendContext
    let settings: HTTPSettings
    let http: HTTPClient
    let chat: ChatClient
    let defaultModel: String?
    let store: Bool
    let reasoningSummary: String?

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        settings = try HTTPSettings(context, defaultEndpoint: "https://api.openai.com/v1")
        let headers = OpenAIBackend.headers(context, settings)
        defaultModel = context.string("model")
        store = context.bool("store") ?? false
        let summary = context.string("reasoning_summary") ?? ""
        guard ["", "auto", "concise", "detailed", "none"].contains(summary) else {
            throw ProviderError(.config, "key 'reasoning_summary': '\(summary)' is none of auto, concise, detailed, none")
        }
        reasoningSummary = summary.isEmpty || summary == "none" ? nil : summary
        http = HTTPClient(name: "\(context.provider):\(context.instance)")
        chat = ChatClient(
            server: ChatServer(
                baseURL: settings.endpoint, headers: headers, secret: settings.apiKey, caBundle: settings.caBundle,
                proxy: settings.proxy, maxResponseBytes: settings.maxResponseBytes, defaultTimeouts: settings.defaultTimeouts),
            http: http)
        if let warning = settings.plainHTTPWarning { context.log(.warning, warning) }
    }

    func healthCheck(_ call: PluginCall) { chat.healthCheck(call, provider: context.instance) }
    func listModels(_ call: PluginCall) { chat.listModels(call) }
    func complete(_ request: ModelRequest, _ call: PluginCall) { exchange(request, call, stream: false) }
    func stream(_ request: ModelRequest, _ call: PluginCall) { exchange(request, call, stream: true) }

    func exchange(_ request: ModelRequest, _ call: PluginCall, stream: Bool) {
        let body: [UInt8]
        do throws(ProviderError) {
            body = try ResponsesRequest.encode(
                request, stream: stream, defaultModel: defaultModel, store: store, reasoningSummary: reasoningSummary)
        } catch {
            return call.fail(error)
        }
        let server = chat.server
        let consumer = ResponsesConsumer(call: call, server: server, model: request.model ?? defaultModel)
        let req = server.request(
            "POST", "responses", body: body, accept: stream ? "text/event-stream" : "application/json",
            timeouts: HTTPTimeouts(request.deadlines))
        StreamResponseHandler(call: call, endpoint: server.baseURL, framing: stream ? .serverSentEvents : .document, consumer: consumer)
            .start(req, on: http)
    }

    func shutdown(_ call: PluginCall) {
        http.shutdown()
        call.finish(result: [:])
    }
}

/// A `ModelRequest` as a `POST /responses` body.
enum ResponsesRequest {
    /// - The system prompt is `instructions`; `system` messages are input
    ///   messages of role `system`.
    /// - User messages are `input_text` (and `input_image`) parts; assistant
    ///   messages are, in order, the reasoning items of their
    ///   `reasoningSignature` (when it is this API's: a JSON array of
    ///   `reasoning` items), their text, and a `function_call` item per tool
    ///   call; tool results are `function_call_output` items.
    /// - Tools are `{"type": "function", name, description, parameters,
    ///   "strict": false}` (the API's default is strict, which rejects most
    ///   schemas written for chat completions); tool choice
    ///   `auto`/`none`/`required`/`{"type": "function", "name"}`.
    /// - `maxTokens` is `max_output_tokens`. Stop sequences do not exist in
    ///   this API: a request with them is refused (`unsupported_feature`).
    /// - `responseFormat` is `text.format`: `{"type": "json_schema", name,
    ///   schema, strict}` or `{"type": "json_object"}`.
    /// - `store` as configured; unstored, `include: ["reasoning.encrypted_content"]`
    ///   asks for the reasoning to carry. `reasoning.summary` when configured.
    /// - `options` members are copied to the top level (`previous_response_id`,
    ///   `reasoning`, `text`, `truncation`, ...), except members written above
    ///   (`reasoning`, `include` and `store` from options win); `options.tools`
    ///   (built-in tools) follow the function tools.
    static func encode(
        _ r: ModelRequest, stream: Bool, defaultModel: String?, store: Bool, reasoningSummary: String?
    ) throws(ProviderError) -> [UInt8] {
        guard r.stop.isEmpty else {
            throw ProviderError(.unsupportedFeature, "the Responses API has no stop sequences; use the openai provider (chat completions) for 'stop'")
        }
        guard let model = r.model ?? defaultModel, !model.isEmpty else {
            throw ProviderError(.api, "no model: the request names none and key 'model' is not set")
        }
        var body = JSONObject()
        body["model"] = .string(model)
        if let system = r.systemPrompt, !system.isEmpty { body["instructions"] = .string(system) }
        var input: [JSONValue] = []
        for m in r.messages {
            switch m.role {
            case .system:
                input.append(["role": "system", "content": .string(m.content)])
            case .user:
                var parts: [JSONValue] = []
                if !m.content.isEmpty || m.images.isEmpty { parts.append(["type": "input_text", "text": .string(m.content)]) }
                for image in m.images { parts.append(["type": "input_image", "image_url": .string(image.urlString)]) }
                input.append(["role": "user", "content": .array(parts)])
            case .assistant:
                if let sig = m.reasoningSignature, let items = reasoningItems(sig) { input += items }
                if !m.content.isEmpty { input.append(["role": "assistant", "content": .string(m.content)]) }
                for c in m.toolCalls {
                    input.append(["type": "function_call", "call_id": .string(c.id), "name": .string(c.name), "arguments": .string(c.arguments)])
                }
            case .tool:
                guard let id = m.toolCallID, !id.isEmpty else {
                    throw ProviderError(.api, "a tool message has no tool_call_id: the Responses API ties every output to its call")
                }
                input.append(["type": "function_call_output", "call_id": .string(id), "output": .string(m.content)])
            }
        }
        body["input"] = .array(input)
        if stream { body["stream"] = true }
        body["store"] = .bool(store)
        if !store { body["include"] = ["reasoning.encrypted_content"] }
        if let summary = reasoningSummary { body["reasoning"] = ["summary": .string(summary)] }
        if let n = r.maxTokens { body["max_output_tokens"] = .integer(n) }
        if let t = r.temperature { body["temperature"] = .number(t) }
        if let p = r.topP { body["top_p"] = .number(p) }
        // Function tools, then built-in ones given as options.tools ([{"type": "web_search"}]).
        let builtIn = r.options["tools"]?.arrayValue ?? []
        if !r.tools.isEmpty || !builtIn.isEmpty {
            body["tools"] = .array(r.tools.map { t in
                var o: JSONObject = ["type": "function", "name": .string(t.name)]
                if !t.description.isEmpty { o["description"] = .string(t.description) }
                o["parameters"] = t.parameters
                o["strict"] = false
                return .object(o)
            } + builtIn)
        }
        if let choice = r.toolChoice {
            switch choice {
            case .auto: body["tool_choice"] = "auto"
            case .none: body["tool_choice"] = "none"
            case .required: body["tool_choice"] = "required"
            case .tool(let name): body["tool_choice"] = ["type": "function", "name": .string(name)]
            }
        }
        // The response format is `text.format` (merged into a `text`
        // option, which may carry `verbosity`).
        switch r.responseFormat {
        case .text: break
        case .json, .jsonSchema:
            var text = r.options["text"]?.objectValue ?? [:]
            if case .jsonSchema(let name, let schema, let strict) = r.responseFormat {
                text["format"] = ["type": "json_schema", "name": .string(name), "schema": schema, "strict": .bool(strict)]
            } else {
                text["format"] = ["type": "json_object"]
            }
            body["text"] = .object(text)
        }
        let written = Set(body.keys)
        for m in r.options where !written.contains(m.key) || m.key == "reasoning" || m.key == "include" || m.key == "store" {
            body[m.key] = m.value
        }
        return JSONValue.object(body).jsonBytes
    }

    /// The reasoning items a `reasoningSignature` of this API holds, or nil
    /// for another provider's signature (an Anthropic one is not JSON).
    static func reasoningItems(_ signature: String) -> [JSONValue]? {
        guard signature.hasPrefix("["), let v = try? JSONValue.parse(signature), let items = v.arrayValue,
            !items.isEmpty, items.allSatisfy({ $0["type"]?.stringValue == "reasoning" })
        else { return nil }
        return items
    }
}

/// An answer of the Responses API, streamed (typed events) or whole (the
/// response object), for `StreamResponseHandler`.
///
/// Events read: `response.created`/`in_progress` (id and model),
/// `output_item.added` (a function call starts), `output_text.delta` and
/// `refusal.delta` (text), `reasoning_summary_text.delta` and
/// `reasoning_text.delta` (reasoning; summary parts after the first are set
/// apart by a blank line), `function_call_arguments.delta`,
/// `output_item.done` (reasoning items kept; a call whose arguments did not
/// stream), `response.completed`/`incomplete` (terminal: status, usage),
/// `response.failed` and `error` (the call fails with the error they carry).
/// Others (content parts, annotations, built-in tool progress) are skipped.
final class ResponsesConsumer: StreamConsumer, @unchecked Sendable {
    let events: EventBatcher
    let server: ChatServer
    let model: String?
    var id: String?
    var answerModel: String?
    var started = false
    var emitted = false
    var refused = false
    /// Function calls by output item id, in order of appearance.
    var calls: [(item: String, id: String, name: String, argsSeen: Bool)] = []
    var reasoningItems: [JSONValue] = []
    var usage: Usage?
    var status: String?
    var incompleteReason: String?
    var ended = false

    init(call: PluginCall, server: ChatServer, model: String?) {
        events = EventBatcher(call: call)
        self.server = server
        self.model = model
    }

    func flush() { events.flush() }

    func event(_ event: SSEDecoder.Event) throws(ProviderError) -> Bool {
        if event.data.count == 0 || event.isDone { return false }
        let v: JSONValue
        do { v = try JSONValue.parse(event.data) } catch {
            throw ProviderError(.invalidResponse, "unreadable Responses event data (\(error)): \(ProviderHTTP.excerpt(Array(event.data)))")
        }
        let type = v["type"]?.stringValue ?? event.nameString
        switch type {
        case "response.created", "response.in_progress", "response.queued":
            if let r = v["response"] { header(r) }
        case "response.output_item.added":
            if let item = v["item"], item["type"]?.stringValue == "function_call" { callStarted(item) }
        case "response.output_text.delta":
            text(v["delta"]?.stringValue)
        case "response.refusal.delta":
            if let d = v["delta"]?.stringValue, !d.isEmpty { refused = true }
            text(v["delta"]?.stringValue)
        case "response.reasoning_summary_text.delta", "response.reasoning_text.delta":
            reasoning(v["delta"]?.stringValue)
        case "response.reasoning_summary_part.added":
            if (v["summary_index"]?.intValue ?? 0) > 0 { reasoning("\n\n") }
        case "response.function_call_arguments.delta":
            guard let item = v["item_id"]?.stringValue, let i = calls.firstIndex(where: { $0.item == item }),
                let d = v["delta"]?.stringValue, !d.isEmpty
            else { break }
            calls[i].argsSeen = true
            events.toolCallDelta(index: i, d)
        case "response.output_item.done":
            guard let item = v["item"] else { break }
            itemDone(item)
        case "response.completed", "response.incomplete":
            if let r = v["response"] { ending(r) }
            return true
        case "response.failed":
            throw server.scrub(Self.failure(v["response"]?["error"] ?? .null, status: v["response"]?["status"]?.stringValue))
        case "error":
            throw server.scrub(Self.failure(v["error"] ?? v, status: nil))
        default:
            break
        }
        return false
    }

    func wholeBody(_ body: [UInt8], headers: HTTPHeaders) throws(ProviderError) -> Wire.Finish {
        let r: JSONValue
        do { r = try JSONValue.parse(bytes: body) } catch {
            throw ProviderError(.invalidResponse, "unreadable Responses answer (\(error)): \(ProviderHTTP.excerpt(body))")
        }
        if r["status"]?.stringValue == "failed" { throw server.scrub(Self.failure(r["error"] ?? .null, status: "failed")) }
        guard r["object"]?.stringValue == "response" || r["output"] != nil else {
            throw ProviderError(.invalidResponse, "HTTP 200, but not a response object: \(ProviderHTTP.excerpt(body))")
        }
        header(r)
        for item in r["output"]?.arrayValue ?? [] {
            switch item["type"]?.stringValue {
            case "reasoning":
                var first = true
                for s in item["summary"]?.arrayValue ?? [] {
                    if !first { reasoning("\n\n") }
                    reasoning(s["text"]?.stringValue)
                    first = false
                }
                for c in item["content"]?.arrayValue ?? [] where c["type"]?.stringValue == "reasoning_text" {
                    reasoning(c["text"]?.stringValue)
                }
                reasoningItems.append(item)
            case "message":
                for c in item["content"]?.arrayValue ?? [] {
                    if c["type"]?.stringValue == "output_text" { text(c["text"]?.stringValue) }
                    if c["type"]?.stringValue == "refusal" {
                        refused = true
                        text(c["refusal"]?.stringValue)
                    }
                }
            case "function_call":
                callStarted(item)
                itemDone(item)
            default:
                break
            }
        }
        ending(r)
        return try result()
    }

    func finish(sawTerminal: Bool) throws(ProviderError) -> Wire.Finish {
        guard ended else {
            throw ProviderError(.streamClosed, "the stream ended before response.completed (or response.incomplete)")
        }
        return try result()
    }

    func httpError(status: Int, headers: HTTPHeaders, body: [UInt8]) -> ProviderError {
        server.httpError(status: status, headers: headers, body: body, method: "POST", path: "responses", model: model)
    }

    func transportError(_ error: HTTPError, mapped: ProviderError) -> ProviderError { server.scrub(mapped) }

    // MARK: Pieces

    private func header(_ r: JSONValue) {
        if id == nil { id = r["id"]?.stringValue }
        if answerModel == nil { answerModel = r["model"]?.stringValue }
        ensureStarted()
    }

    private func ensureStarted() {
        if started { return }
        started = true
        events.start(id: id, model: answerModel ?? model)
    }

    private func text(_ s: String?) {
        guard let s, !s.isEmpty else { return }
        ensureStarted()
        emitted = true
        events.text(s)
    }

    private func reasoning(_ s: String?) {
        guard let s, !s.isEmpty else { return }
        ensureStarted()
        emitted = true
        events.reasoning(s)
    }

    private func callStarted(_ item: JSONValue) {
        let itemID = item["id"]?.stringValue ?? item["call_id"]?.stringValue ?? "item-\(calls.count)"
        guard !calls.contains(where: { $0.item == itemID }) else { return }
        ensureStarted()
        let callID = item["call_id"]?.stringValue ?? itemID
        let name = item["name"]?.stringValue ?? ""
        calls.append((itemID, callID, name, false))
        events.toolCallStart(index: calls.count - 1, id: callID, name: name)
    }

    private func itemDone(_ item: JSONValue) {
        switch item["type"]?.stringValue {
        case "reasoning":
            reasoningItems.append(item)
        case "function_call":
            callStarted(item)
            let itemID = item["id"]?.stringValue ?? item["call_id"]?.stringValue ?? ""
            if let i = calls.firstIndex(where: { $0.item == itemID }), !calls[i].argsSeen,
                let args = item["arguments"]?.stringValue, !args.isEmpty
            {
                calls[i].argsSeen = true
                events.toolCallDelta(index: i, args)
            }
        default:
            break
        }
    }

    private func ending(_ r: JSONValue) {
        header(r)
        ended = true
        status = r["status"]?.stringValue
        incompleteReason = r["incomplete_details"]?["reason"]?.stringValue
        if let u = r["usage"], u.objectValue != nil {
            var usage = Usage()
            usage.inputTokens = u["input_tokens"]?.intValue ?? 0
            usage.outputTokens = u["output_tokens"]?.intValue ?? 0
            usage.cacheReadTokens = u["input_tokens_details"]?["cached_tokens"]?.intValue ?? 0
            usage.reasoningTokens = u["output_tokens_details"]?["reasoning_tokens"]?.intValue ?? 0
            self.usage = usage
        }
    }

    private func result() throws(ProviderError) -> Wire.Finish {
        ensureStarted()
        for i in calls.indices { events.toolCallEnd(index: i) }
        let reason: FinishReason
        switch (status, incompleteReason) {
        case ("incomplete", "max_output_tokens"?): reason = .maxTokens
        case ("incomplete", "content_filter"?): reason = .contentFilter
        case ("incomplete", _): reason = FinishReason(rawValue: incompleteReason ?? "incomplete")
        default: reason = !calls.isEmpty ? .toolUse : refused ? .contentFilter : .stop
        }
        if !emitted && calls.isEmpty, let why = EmptyAnswer.problem(said: false, finish: reason, field: "status", raw: status) {
            throw ProviderError(.invalidResponse, "HTTP 200, but \(why)")
        }
        var meta = JSONObject()
        if let status, status != "completed" { meta["provider_status"] = .string(status) }
        if let incompleteReason { meta["incomplete_reason"] = .string(incompleteReason) }
        if refused { meta["refusal"] = true }
        // The encrypted reasoning, to send back with the assistant turn (Message.reasoningSignature).
        if !reasoningItems.isEmpty { meta["reasoning_signature"] = .string(JSONValue.array(reasoningItems).jsonText) }
        if let id { meta["response_id"] = .string(id) }
        return Wire.Finish(finishReason: reason, usage: usage, model: answerModel ?? model, id: id, metadata: meta)
    }

    /// The error of `response.failed` (`response.error`) or of an `error`
    /// event: its code mapped like an HTTP error type (`rate_limit_exceeded`
    /// -> rate_limited, `server_error` -> provider_unavailable, ...), `api`
    /// otherwise.
    static func failure(_ e: JSONValue, status: String?) -> ProviderError {
        let code = e["code"]?.stringValue ?? e["type"]?.stringValue
        let message = e["message"]?.stringValue ?? (e == .null ? "no error given" : Wire.excerpt(e.jsonText))
        let kind = ProviderHTTP.kind(forErrorType: code) ?? .api
        var out = ProviderError(
            kind, "the response \(status == "failed" ? "failed" : "stream reported an error")\(code.map { ": \($0)" } ?? ""): \(message)")
        out.providerType = code
        return out
    }
}
