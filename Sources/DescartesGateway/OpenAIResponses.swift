import Descartes
import DescartesSupport
import Glibc

/// OpenAI's Responses API (`POST /v1/responses`) in and out: `input` items
/// and `instructions` into a `ModelRequest`, a `ModelResponse` into a
/// `response` object, stream events into the `response.*` event sequence.
///
/// Responses are stored (`store`, true unless the request says false) in
/// the gateway's response store, and `previous_response_id` continues one
/// (`Gateway.responses`); `conversation`, `prompt`, `item_reference` and
/// `background` are refused. A client may also send the whole conversation
/// in `input` each time (the output items of a response may be sent back as
/// input as they are).
enum OpenAIResponses {
    struct Parsed: Sendable {
        var request: ModelRequest
        var model: String
        var stream: Bool
        /// Request members the `response` object repeats (instructions,
        /// tools, tool_choice, temperature, ...).
        var echo: JSONObject
        /// Function name -> the `namespace` tool it came from.
        var namespaces: [String: String] = [:]
        /// `store`: whether the response is kept (the API's default: true).
        var store = true
        var previousResponseID: String?
        /// `instructions` (not carried to a later response, as in OpenAI's API).
        var instructions: String?
        /// The system and developer messages that open `input` (kept with
        /// the stored conversation, as input items are).
        var inputSystem: String?
    }

    /// OpenAI's hosted tools: the gateway cannot run them, so they are not
    /// offered to the model (Codex sends `web_search` on every request).
    static let hostedTools: Set<String> = [
        "web_search", "web_search_preview", "web_search_2025_08_26", "file_search", "code_interpreter", "image_generation", "computer",
        "computer_use_preview", "mcp", "local_shell", "tool_search",
    ]

    static let toolChoiceForms = "tool_choice is auto, none, required or {\"type\": \"function\", \"name\"}"

    static func parse(_ doc: JSONValue) throws(GatewayError) -> Parsed {
        guard case .object(let o) = doc else { throw .invalidRequest("the body is a JSON object") }
        guard let model = o["model"]?.stringValue, !model.isEmpty else { throw .invalidRequest("'model' is required", param: "model") }
        for stateful in ["conversation", "prompt"] where o[stateful].map({ !$0.isNull }) ?? false {
            throw .invalidRequest(
                "'\(stateful)' is not supported: the gateway stores no conversations or prompts; send the conversation in 'input' or continue a response with 'previous_response_id'",
                param: stateful)
        }
        var previous: String?
        switch o["previous_response_id"] {
        case .string(let id)? where !id.isEmpty: previous = id
        case nil, .null?: break
        default: throw .invalidRequest("'previous_response_id' is the id of a stored response (resp_...)", param: "previous_response_id")
        }
        var store = true
        switch o["store"] {
        case .bool(let b)?: store = b
        case nil, .null?: break
        default: throw .invalidRequest("'store' is true or false", param: "store")
        }
        if o["background"]?.boolValue == true {
            throw .invalidRequest("background responses are not supported by the gateway", param: "background")
        }
        var r = ModelRequest(messages: [])
        var systems: [String] = []
        var instructionsText: String?
        if let instructions = o["instructions"], !instructions.isNull {
            guard let s = instructions.stringValue else { throw .invalidRequest("'instructions' is a string", param: "instructions") }
            instructionsText = s
        }
        switch o["input"] {
        case .string(let s)?:
            r.messages.append(.user(s))
        case .array(let items)?:
            try inputItems(items, into: &r, systems: &systems)
        case nil, .null?:
            throw .invalidRequest("'input' is required: a string or an array of input items", param: "input")
        default:
            throw .invalidRequest("'input' is a string or an array of input items", param: "input")
        }
        let inputSystem = systems.isEmpty ? nil : systems.joined(separator: "\n\n")
        r.systemPrompt = joinedSystem([instructionsText, inputSystem])
        guard !r.messages.isEmpty else { throw .invalidRequest("'input' has no message", param: "input") }

        var echo: JSONObject = [:]
        var namespaces: [String: String] = [:]
        r.maxTokens = o["max_output_tokens"]?.intValue
        r.temperature = o["temperature"]?.doubleValue
        r.topP = o["top_p"]?.doubleValue
        func function(_ t: JSONValue, at: String, namespace: String?) throws(GatewayError) {
            guard let name = t["name"]?.stringValue, !name.isEmpty else {
                throw .invalidRequest("\(at) is {\"type\": \"function\", \"name\", \"parameters\", ...}", param: "tools")
            }
            guard !r.tools.contains(where: { $0.name == name }) else {
                throw .invalidRequest("\(at): a second tool named '\(name)' (names are unique, namespaces included)", param: "tools")
            }
            let parameters = t["parameters"].flatMap { $0.isNull ? nil : $0 } ?? ["type": "object", "properties": [:]]
            r.tools.append(Tool(name: name, description: t["description"]?.stringValue ?? "", parameters: parameters))
            if let namespace { namespaces[name] = namespace }
        }
        for (i, t) in (o["tools"]?.arrayValue ?? []).enumerated() {
            let type = t["type"]?.stringValue ?? "?"
            switch type {
            case "function": try function(t, at: "tools[\(i)]", namespace: nil)
            case "namespace":
                // Functions grouped under a name: offered as functions; a
                // call names its namespace again.
                guard let ns = t["name"]?.stringValue else { throw .invalidRequest("tools[\(i)]: a namespace tool needs a name", param: "tools") }
                for (j, f) in (t["tools"]?.arrayValue ?? []).enumerated() {
                    guard f["type"]?.stringValue ?? "function" == "function" else {
                        throw .invalidRequest(
                            "tools[\(i)].tools[\(j)]: tool type '\(f["type"]?.stringValue ?? "?")' is not supported in a namespace (function)", param: "tools")
                    }
                    try function(f, at: "tools[\(i)].tools[\(j)]", namespace: ns)
                }
            case _ where hostedTools.contains(type):
                continue
            default:
                throw .invalidRequest(
                    "tools[\(i)]: tool type '\(type)' is not supported by the gateway (function, namespace; OpenAI's hosted tools are left out)",
                    param: "tools")
            }
        }
        if let tools = o["tools"]?.arrayValue { echo["tools"] = .array(tools) }
        switch o["tool_choice"] {
        case .string("auto")?: r.toolChoice = .auto
        case .string("none")?: r.toolChoice = ToolChoice.none
        case .string("required")?: r.toolChoice = .required
        case .object(let c)?:
            guard c["type"]?.stringValue == "function", let name = c["name"]?.stringValue else { throw .invalidRequest(toolChoiceForms, param: "tool_choice") }
            r.toolChoice = .tool(name)
        case nil, .null?: break
        default: throw .invalidRequest(toolChoiceForms, param: "tool_choice")
        }
        if let c = o["tool_choice"], !c.isNull { echo["tool_choice"] = c }
        if case .object(let meta)? = o["metadata"] {
            for (k, v) in meta { if let s = v.stringValue { r.metadata[k] = s } }
            echo["metadata"] = .object(meta)
        }
        if let user = o["safety_identifier"]?.stringValue ?? o["user"]?.stringValue { r.metadata["user"] = user }
        // Structured output: the request's response format (the backend maps it).
        if let format = o["text"]?["format"], !format.isNull {
            r.responseFormat = try OpenAIChat.responseFormat(format["type"]?.stringValue, format, param: "text.format")
            echo["text"] = ["format": format]
        }
        if let effort = o["reasoning"]?["effort"]?.stringValue { r.options["reasoning_effort"] = .string(effort) }
        if let p = o["parallel_tool_calls"]?.boolValue { r.options["parallel_tool_calls"] = .bool(p) }
        if let v = o["service_tier"], !v.isNull { r.options["service_tier"] = v }
        for k in ["instructions", "temperature", "top_p", "max_output_tokens", "parallel_tool_calls", "reasoning", "user", "safety_identifier"] {
            if let v = o[k], !v.isNull { echo[k] = v }
        }
        echo["store"] = .bool(store)
        if let previous { echo["previous_response_id"] = .string(previous) }
        return Parsed(
            request: r, model: model, stream: o["stream"]?.boolValue ?? false, echo: echo, namespaces: namespaces, store: store,
            previousResponseID: previous, instructions: instructionsText, inputSystem: inputSystem)
    }

    /// System texts joined by a blank line (nil when there is none).
    static func joinedSystem(_ parts: [String?]) -> String? {
        let given = parts.compactMap { $0 }
        return given.isEmpty ? nil : given.joined(separator: "\n\n")
    }

    /// `input` as an array: messages (with or without `type: message`),
    /// `function_call`, `function_call_output` and `reasoning` items.
    /// Function calls following an assistant message join it; reasoning
    /// joins the assistant message after it.
    static func inputItems(_ items: [JSONValue], into r: inout ModelRequest, systems: inout [String]) throws(GatewayError) {
        var reasoning: String?
        /// The assistant message being built (appended when something else comes).
        var assistant: Message?
        func flush() {
            if let a = assistant { r.messages.append(a) }
            assistant = nil
        }
        for (i, item) in items.enumerated() {
            let param = "input[\(i)]"
            guard case .object(let o) = item else { throw .invalidRequest("\(param) is an object (an input item)", param: param) }
            let type = o["type"]?.stringValue ?? (o["role"] != nil ? "message" : "?")
            switch type {
            case "message":
                guard let role = o["role"]?.stringValue else { throw .invalidRequest("\(param).role is required", param: param) }
                switch role {
                case "system", "developer":
                    let text = try text(o["content"], param: "\(param).content", allowed: ["input_text"])
                    flush()
                    if r.messages.isEmpty { systems.append(text) } else { r.messages.append(.system(text)) }
                case "user":
                    flush()
                    let (text, images) = try userContent(o["content"], param: "\(param).content")
                    r.messages.append(.user(text, images: images))
                case "assistant":
                    flush()
                    var msg = Message.assistant(try Self.text(o["content"], param: "\(param).content", allowed: ["output_text", "input_text", "refusal"]))
                    msg.reasoning = reasoning
                    reasoning = nil
                    assistant = msg
                default:
                    throw .invalidRequest("\(param).role '\(role)' is not supported (user, assistant, system, developer)", param: param)
                }
            case "function_call":
                guard let callID = o["call_id"]?.stringValue, let name = o["name"]?.stringValue else {
                    throw .invalidRequest("\(param): a function_call item needs call_id and name", param: param)
                }
                let call = ToolCall(id: callID, name: name, arguments: o["arguments"]?.stringValue ?? "{}")
                if assistant == nil {
                    var msg = Message.assistant("")
                    msg.reasoning = reasoning
                    reasoning = nil
                    assistant = msg
                }
                assistant?.toolCalls.append(call)
            case "function_call_output":
                guard let callID = o["call_id"]?.stringValue else {
                    throw .invalidRequest("\(param): a function_call_output item needs call_id", param: param)
                }
                flush()
                r.messages.append(.tool(callID: callID, try text(o["output"], param: "\(param).output", allowed: ["input_text", "output_text"])))
            case "reasoning":
                var parts: [String] = []
                for p in (o["content"]?.arrayValue ?? []) { if let t = p["text"]?.stringValue { parts.append(t) } }
                if parts.isEmpty { for p in (o["summary"]?.arrayValue ?? []) { if let t = p["text"]?.stringValue { parts.append(t) } } }
                flush()
                reasoning = (reasoning.map { $0 + "\n" } ?? "") + parts.joined(separator: "\n")
            case "item_reference":
                throw .invalidRequest("\(param): item_reference is not supported: the gateway stores no items; send the item itself", param: param)
            default:
                throw .invalidRequest(
                    "\(param): item type '\(type)' is not supported by the gateway (message, function_call, function_call_output, reasoning)", param: param)
            }
        }
        flush()
    }

    /// Content as text: a string, or parts of the allowed types.
    static func text(_ v: JSONValue?, param: String, allowed: Set<String>) throws(GatewayError) -> String {
        switch v {
        case .string(let s)?: return s
        case nil, .null?: return ""
        case .array(let parts)?:
            var out = ""
            for p in parts {
                let type = p["type"]?.stringValue ?? "?"
                guard allowed.contains(type) else {
                    throw .invalidRequest("\(param): part type '\(type)' is not supported here (\(allowed.sorted().joined(separator: ", ")))", param: param)
                }
                out += p["text"]?.stringValue ?? p["refusal"]?.stringValue ?? ""
            }
            return out
        default: throw .invalidRequest("\(param) is a string or an array of parts", param: param)
        }
    }

    /// A user message: `input_text` and `input_image` parts (an image by
    /// data or http(s) URL; `file_id` needs OpenAI's file store).
    static func userContent(_ v: JSONValue?, param: String) throws(GatewayError) -> (String, [ImageInput]) {
        guard case .array(let parts)? = v else { return (try text(v, param: param, allowed: ["input_text"]), []) }
        var text = ""
        var images: [ImageInput] = []
        for (j, p) in parts.enumerated() {
            switch p["type"]?.stringValue {
            case "input_text": text += p["text"]?.stringValue ?? ""
            case "input_image":
                guard let url = p["image_url"]?.stringValue else {
                    throw .invalidRequest("\(param)[\(j)]: input_image needs image_url (file_id is not supported by the gateway)", param: param)
                }
                images.append(try OpenAIChat.image(url, param: "\(param)[\(j)]"))
            default:
                throw .invalidRequest(
                    "\(param)[\(j)]: part type '\(p["type"]?.stringValue ?? "?")' is not supported by the gateway (input_text, input_image)", param: param)
            }
        }
        return (text, images)
    }

    static func usage(_ u: Usage) -> JSONValue {
        [
            "input_tokens": .integer(u.inputTokens),
            "input_tokens_details": ["cached_tokens": .integer(u.cacheReadTokens), "cache_write_tokens": .integer(u.cacheWriteTokens)],
            "output_tokens": .integer(u.outputTokens), "output_tokens_details": ["reasoning_tokens": .integer(u.reasoningTokens)],
            "total_tokens": .integer(u.totalTokens),
        ]
    }

    static func messageItem(id: String, text: String, status: String) -> JSONValue {
        [
            "id": .string(id), "type": "message", "role": "assistant", "status": .string(status),
            "content": status == "in_progress" && text.isEmpty ? [] : [outputText(text)],
        ]
    }

    static func outputText(_ text: String) -> JSONValue { ["type": "output_text", "text": .string(text), "annotations": [], "logprobs": []] }

    static func reasoningItem(id: String, text: String, status: String) -> JSONValue {
        [
            "id": .string(id), "type": "reasoning", "summary": [], "status": .string(status),
            "content": status == "in_progress" && text.isEmpty ? [] : [["type": "reasoning_text", "text": .string(text)]],
        ]
    }

    static func functionCallItem(id: String, call: ToolCall, status: String, namespaces: [String: String] = [:]) -> JSONValue {
        var o: JSONObject = [
            "id": .string(id), "type": "function_call", "status": .string(status), "call_id": .string(call.id), "name": .string(call.name),
            "arguments": .string(call.arguments),
        ]
        if let ns = namespaces[call.name] { o["namespace"] = .string(ns) }
        return .object(o)
    }

    /// A whole answer's output items: reasoning, the message, the function calls.
    static func output(_ r: ModelResponse, namespaces: [String: String] = [:]) -> [JSONValue] {
        var items: [JSONValue] = []
        if let reasoning = r.reasoning, !reasoning.isEmpty { items.append(reasoningItem(id: "rs_" + Gateway.randomID(), text: reasoning, status: "completed")) }
        if !r.content.isEmpty || r.toolCalls.isEmpty { items.append(messageItem(id: "msg_" + Gateway.randomID(), text: r.content, status: "completed")) }
        for c in r.toolCalls { items.append(functionCallItem(id: "fc_" + Gateway.randomID(), call: c, status: "completed", namespaces: namespaces)) }
        return items
    }

    /// `completed`, or `incomplete` with its reason.
    static func status(_ f: FinishReason) -> (String, JSONValue) {
        switch f {
        case .maxTokens: return ("incomplete", ["reason": "max_output_tokens"])
        case .contentFilter: return ("incomplete", ["reason": "content_filter"])
        default: return ("completed", .null)
        }
    }

    /// The `response` object.
    static func response(
        id: String, model: String, created: Int, echo: JSONObject, status: String, output: [JSONValue], usage: Usage? = nil,
        incomplete: JSONValue = .null, error: JSONValue = .null
    ) -> JSONValue {
        var o: JSONObject = [
            "id": .string(id), "object": "response", "created_at": .integer(created), "status": .string(status), "background": false,
            "error": error, "incomplete_details": incomplete, "instructions": echo["instructions"] ?? .null,
            "max_output_tokens": echo["max_output_tokens"] ?? .null, "model": .string(model), "output": .array(output),
            "parallel_tool_calls": echo["parallel_tool_calls"] ?? true, "previous_response_id": echo["previous_response_id"] ?? .null,
            "reasoning": echo["reasoning"] ?? ["effort": .null, "summary": .null], "store": echo["store"] ?? false,
            "temperature": echo["temperature"] ?? .null, "text": echo["text"] ?? ["format": ["type": "text"]],
            "tool_choice": echo["tool_choice"] ?? "auto", "tools": echo["tools"] ?? [], "top_p": echo["top_p"] ?? .null,
            "truncation": "disabled", "usage": usage.map(Self.usage) ?? .null, "user": echo["user"] ?? .null, "metadata": echo["metadata"] ?? [:],
        ]
        if status == "completed" || status == "incomplete" { o["completed_at"] = .integer(Int(time(nil))) }
        return .object(o)
    }

    /// A whole answer as a `response`.
    static func response(_ r: ModelResponse, id: String, model: String, created: Int, echo: JSONObject, namespaces: [String: String] = [:]) -> JSONValue {
        let (status, incomplete) = status(r.finishReason)
        return response(
            id: id, model: model, created: created, echo: echo, status: status, output: output(r, namespaces: namespaces), usage: r.usage,
            incomplete: incomplete)
    }

    /// Turns stream events into the Responses event sequence:
    /// `response.created`, `response.in_progress`, per output item
    /// `response.output_item.added`, its parts and deltas
    /// (`response.content_part.added`, `response.output_text.delta`,
    /// `response.reasoning_text.delta`, `response.function_call_arguments.delta`)
    /// and their `.done` events, `response.output_item.done`; then
    /// `response.completed` (or `response.incomplete`). Every event has a
    /// `sequence_number`, from 0. No `[DONE]`.
    struct EventWriter {
        let id: String
        let model: String
        let created: Int
        let echo: JSONObject
        var namespaces: [String: String] = [:]
        /// Given the answer and the final `response`, stores it and returns
        /// the `response` to send (before `response.completed` is sent, so a
        /// client that continues it at once finds it).
        var save: (@Sendable (ModelResponse, JSONValue) -> JSONValue)?
        private var sequence = 0
        private var started = false
        private enum Kind { case message, reasoning, call(Int) }
        private struct Item {
            var kind: Kind
            var id: String
            var text = ""
            var call: ToolCall?
            var done = false
        }
        private var items: [Item] = []
        /// The open message or reasoning item (an output index).
        private var open: Int?
        /// Upstream tool-call index -> output index.
        private var calls: [Int: Int] = [:]

        init(id: String, model: String, created: Int, echo: JSONObject) {
            self.id = id
            self.model = model
            self.created = created
            self.echo = echo
        }

        private mutating func event(_ type: String, _ fields: JSONObject) -> [UInt8] {
            var o = fields
            o["type"] = .string(type)
            o["sequence_number"] = .integer(sequence)
            sequence += 1
            var out = Array("event: \(type)\ndata: ".utf8)
            JSONValue.object(o).write(to: &out)
            out.append(contentsOf: [10, 10])
            return out
        }

        private func itemJSON(_ item: Item, status: String) -> JSONValue {
            switch item.kind {
            case .message: return messageItem(id: item.id, text: item.text, status: status)
            case .reasoning: return reasoningItem(id: item.id, text: item.text, status: status)
            case .call: return functionCallItem(id: item.id, call: item.call ?? ToolCall(id: "", name: "", arguments: ""), status: status, namespaces: namespaces)
            }
        }

        private mutating func start() -> [UInt8] {
            guard !started else { return [] }
            started = true
            let r = response(id: id, model: model, created: created, echo: echo, status: "in_progress", output: [])
            return event("response.created", ["response": r]) + event("response.in_progress", ["response": r])
        }

        private mutating func add(_ item: Item) -> (Int, [UInt8]) {
            let index = items.count
            items.append(item)
            var out = event("response.output_item.added", ["output_index": .integer(index), "item": itemJSON(item, status: "in_progress")])
            switch item.kind {
            case .message:
                out += event(
                    "response.content_part.added",
                    ["item_id": .string(item.id), "output_index": .integer(index), "content_index": 0, "part": outputText("")])
            case .reasoning:
                out += event(
                    "response.content_part.added",
                    ["item_id": .string(item.id), "output_index": .integer(index), "content_index": 0, "part": ["type": "reasoning_text", "text": ""]])
            case .call: break
            }
            return (index, out)
        }

        private mutating func finish(_ index: Int) -> [UInt8] {
            guard index < items.count, !items[index].done else { return [] }
            items[index].done = true
            let item = items[index]
            let at: JSONObject = ["item_id": .string(item.id), "output_index": .integer(index)]
            var out: [UInt8] = []
            switch item.kind {
            case .message:
                var f = at
                f["content_index"] = 0
                f["text"] = .string(item.text)
                f["logprobs"] = []
                out += event("response.output_text.done", f)
                f = at
                f["content_index"] = 0
                f["part"] = outputText(item.text)
                out += event("response.content_part.done", f)
            case .reasoning:
                var f = at
                f["content_index"] = 0
                f["text"] = .string(item.text)
                out += event("response.reasoning_text.done", f)
                f = at
                f["content_index"] = 0
                f["part"] = ["type": "reasoning_text", "text": .string(item.text)]
                out += event("response.content_part.done", f)
            case .call:
                var f = at
                f["arguments"] = .string(item.call?.arguments ?? "")
                f["name"] = .string(item.call?.name ?? "")
                out += event("response.function_call_arguments.done", f)
            }
            out += event("response.output_item.done", ["output_index": .integer(index), "item": itemJSON(item, status: "completed")])
            if open == index { open = nil }
            return out
        }

        /// The open text item of a kind, added if need be (closing another).
        private mutating func textItem(_ reasoning: Bool) -> (Int, [UInt8]) {
            if let o = open {
                switch items[o].kind {
                case .message where !reasoning, .reasoning where reasoning: return (o, [])
                default: break
                }
            }
            var out = open.map { finish($0) } ?? []
            let (index, added) = add(Item(kind: reasoning ? .reasoning : .message, id: (reasoning ? "rs_" : "msg_") + Gateway.randomID()))
            open = index
            out += added
            return (index, out)
        }

        private mutating func text(_ t: String, reasoning: Bool) -> [UInt8] {
            var (index, out) = textItem(reasoning)
            items[index].text += t
            out += event(
                reasoning ? "response.reasoning_text.delta" : "response.output_text.delta",
                reasoning
                    ? ["item_id": .string(items[index].id), "output_index": .integer(index), "content_index": 0, "delta": .string(t)]
                    : ["item_id": .string(items[index].id), "output_index": .integer(index), "content_index": 0, "delta": .string(t), "logprobs": []])
            return out
        }

        private mutating func startCall(_ upstreamIndex: Int, _ call: ToolCall) -> [UInt8] {
            var out = open.map { finish($0) } ?? []
            let (index, added) = add(Item(kind: .call(upstreamIndex), id: "fc_" + Gateway.randomID(), call: call))
            calls[upstreamIndex] = index
            out += added
            return out
        }

        private mutating func arguments(_ index: Int, _ delta: String) -> [UInt8] {
            items[index].call?.arguments += delta
            return event("response.function_call_arguments.delta", ["item_id": .string(items[index].id), "output_index": .integer(index), "delta": .string(delta)])
        }

        /// The SSE bytes for one event (empty when it has none).
        mutating func bytes(_ e: StreamEvent) -> [UInt8] {
            switch e {
            case .start, .usage, .notice, .reasoningSignature, .reasoningRedacted: return []
            default: break
            }
            var out = start()
            switch e {
            case .textDelta(let t): out += text(t, reasoning: false)
            case .reasoningDelta(let t): out += text(t, reasoning: true)
            case .toolCallStart(let index, let callID, let name):
                out += startCall(index, ToolCall(id: callID, name: name, arguments: ""))
            case .toolCallDelta(let index, let delta):
                if let i = calls[index] { out += arguments(i, delta) }
            case .toolCallEnd(let index):
                if let i = calls[index] { out += finish(i) }
            case .finish(let r):
                // A backend that sent the answer only whole: its parts as deltas now.
                if !items.contains(where: { if case .message = $0.kind { return true } else { return false } }), !r.content.isEmpty || r.toolCalls.isEmpty {
                    if let reasoning = r.reasoning, !reasoning.isEmpty,
                        !items.contains(where: { if case .reasoning = $0.kind { return true } else { return false } })
                    {
                        out += text(reasoning, reasoning: true)
                    }
                    if !r.content.isEmpty || items.isEmpty { out += text(r.content, reasoning: false) }
                }
                if calls.isEmpty {
                    for (i, c) in r.toolCalls.enumerated() {
                        out += startCall(i, ToolCall(id: c.id, name: c.name, arguments: ""))
                        out += arguments(calls[i]!, c.arguments)
                    }
                }
                for i in items.indices { out += finish(i) }
                let (status, incomplete) = OpenAIResponses.status(r.finishReason)
                var final = response(
                    id: id, model: model, created: created, echo: echo, status: status, output: items.map { itemJSON($0, status: "completed") },
                    usage: r.usage, incomplete: incomplete)
                if let save { final = save(r, final) }
                out += event(status == "completed" ? "response.completed" : "response.incomplete", ["response": final])
            case .start, .usage, .notice, .reasoningSignature, .reasoningRedacted: break
            }
            return out
        }

        /// A failure after the stream began: an `error` event, then
        /// `response.failed` with the error and the output so far.
        mutating func failure(_ e: GatewayError) -> [UInt8] {
            let code = e.code ?? (e.status == 429 ? "rate_limit_exceeded" : e.status < 500 ? "invalid_prompt" : "server_error")
            var out = event("error", ["code": .string(code), "message": .string(e.message), "param": e.param.map { .string($0) } ?? .null])
            let failed = response(
                id: id, model: model, created: created, echo: echo, status: "failed",
                output: items.map { itemJSON($0, status: $0.done ? "completed" : "incomplete") },
                error: ["code": .string(code), "message": .string(e.message)])
            out += event("response.failed", ["response": failed])
            return out
        }
    }
}

extension Gateway {
    /// Whose a stored response is: an issued key by its hash, a key of
    /// providers.yaml by its name, "" without keys.
    static func responseOwner(_ key: GatewaySettings.Key?) -> String {
        guard let key else { return "" }
        return key.hash.map { "sha256:" + $0 } ?? "key:" + key.name
    }

    /// OpenAI's 404 for a response id that is not stored (or is another key's).
    static func noResponse(_ id: String, previous: Bool = false) -> GatewayError {
        .notFound(
            "\(previous ? "Previous response" : "Response") with id '\(id)' not found.", param: previous ? "previous_response_id" : nil)
    }

    func responses(_ request: HTTPRequest, _ exchange: HTTPExchange, key: GatewaySettings.Key?, _ record: inout AccessRecord) async {
        let parsed: OpenAIResponses.Parsed
        let target: (backend: any ModelBackend, name: String, model: String?)
        let owner = Self.responseOwner(key)
        var previous: StoredResponse?
        var prior: [StoredMessage] = []
        var priorSystem: String?
        do throws(GatewayError) {
            parsed = try OpenAIResponses.parse(try body(request))
            record.model = parsed.model
            target = try self.target(parsed.model, key: key)
            if let id = parsed.previousResponseID {
                // The earlier turns, read before the call (a request with
                // neither this nor `store` touches no database).
                guard let store = responseStore else { throw Self.noResponse(id, previous: true) }
                let found: StoredResponse?
                do throws(ConversationStoreError) {
                    found = try store.response(id, owner: owner)
                    if let p = found {
                        prior = try store.messages(p.conversationID, limit: p.messageCount)
                        priorSystem = try store.conversation(p.conversationID)?.system
                    }
                } catch {
                    notice("descartes serve: the response store: \(error.message)")
                    throw GatewayError.storeFailed()
                }
                guard let found else { throw Self.noResponse(id, previous: true) }
                previous = found
            }
        } catch {
            return send(error, .openAI, exchange, &record)
        }
        record.provider = target.name
        var modelRequest = parsed.request
        if previous != nil {
            modelRequest.messages = prior.map(\.message) + modelRequest.messages
            modelRequest.systemPrompt = OpenAIResponses.joinedSystem([parsed.instructions, priorSystem, parsed.inputSystem])
        }
        let limit = arm(target.name, exchange, &record)
        modelRequest.deadlines.total = min(modelRequest.deadlines.total ?? limit, limit)
        if let m = target.model { modelRequest.model = m }
        if let key { key.label(&modelRequest.metadata) }
        // Approvals are the gateway's configuration, never the client's.
        modelRequest.approval = approval(for: target.name)
        record.stream = parsed.stream
        let id = "resp_" + Self.randomID()
        let created = Int(time(nil))
        // Stores the answer (when asked to) and gives the response to send:
        // `store: false` in it when it could not be stored.
        let save: @Sendable (ModelResponse, JSONValue) -> JSONValue = { [self, parsed, previous, prior, priorSystem] r, doc in
            guard parsed.store else { return doc }
            guard let store = responseStore else { return Self.unstored(doc) }
            let now = AccessRecord.unixMS()
            let turn = parsed.request.messages.map { StoredMessage($0, unixMS: now) }
                + [StoredMessage(.assistant(r), usage: r.usage, provider: target.name, model: r.model, unixMS: now)]
            do throws(ConversationStoreError) {
                try store.storeResponse(
                    StoredResponse(id: id, owner: owner, createdUnixMS: now, response: doc.jsonText), turn: turn, previous: previous, prior: prior,
                    provider: target.name, model: r.model, system: OpenAIResponses.joinedSystem([priorSystem, parsed.inputSystem]),
                    purgeBeforeUnixMS: now - settings.responsesRetentionDays * 86_400_000)
                return doc
            } catch {
                notice("descartes serve: response \(id) was answered but not stored (store: false in it): \(error.message)")
                return Self.unstored(doc)
            }
        }
        if !parsed.stream {
            do {
                let r = try await target.backend.complete(modelRequest)
                record.usage = r.usage
                record.costUSD = r.costUSD
                let doc = OpenAIResponses.response(r, id: id, model: parsed.model, created: created, echo: parsed.echo, namespaces: parsed.namespaces)
                json(200, save(r, doc), exchange, &record)
            } catch {
                send(GatewayError(ProviderError.from(error, provider: target.name)), .openAI, exchange, &record)
            }
            return
        }
        var w = OpenAIResponses.EventWriter(id: id, model: parsed.model, created: created, echo: parsed.echo)
        w.namespaces = parsed.namespaces
        if parsed.store { w.save = save }
        let writer = Lock(w)
        await stream(target.backend, modelRequest, name: target.name, exchange, &record, dialect: .openAI) { event in
            writer.withLock { $0.bytes(event) }
        } failure: { e in
            writer.withLock { $0.failure(e) }
        }
    }

    /// A response object that says it was not stored.
    static func unstored(_ doc: JSONValue) -> JSONValue {
        guard case .object(var o) = doc else { return doc }
        o["store"] = false
        return .object(o)
    }

    /// `GET /v1/responses/{id}`: the stored response object; `DELETE`:
    /// removes it (OpenAI's deletion object). Another key's response, or
    /// one not stored, is OpenAI's 404.
    func storedResponse(_ request: HTTPRequest, id: String, _ exchange: HTTPExchange, key: GatewaySettings.Key?, _ record: inout AccessRecord) {
        let owner = Self.responseOwner(key)
        guard let store = responseStore else { return send(Self.noResponse(id), .openAI, exchange, &record) }
        do throws(ConversationStoreError) {
            if request.method == "DELETE" {
                guard try store.deleteResponse(id, owner: owner) else { return send(Self.noResponse(id), .openAI, exchange, &record) }
                return json(200, ["id": .string(id), "object": "response", "deleted": true], exchange, &record)
            }
            guard let stored = try store.response(id, owner: owner), let doc = try? JSONValue.parse(stored.response) else {
                return send(Self.noResponse(id), .openAI, exchange, &record)
            }
            json(200, doc, exchange, &record)
        } catch {
            notice("descartes serve: the response store: \(error.message)")
            send(.storeFailed(), .openAI, exchange, &record)
        }
    }
}
