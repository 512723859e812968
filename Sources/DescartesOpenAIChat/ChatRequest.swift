// The OpenAI chat-completions dialect, shared by every plugin that speaks it
// (libdescartes-openai.so and its OpenAI-compatible family, and the local
// llama.cpp plugin). Each plugin links its own copy statically; nothing of it
// crosses the C ABI.
//
// This file: a `ModelRequest` as a `POST /chat/completions` body.
@_exported import DescartesPluginKit

/// How a request body is written for one server.
public struct ChatRequestOptions: Sendable {
    /// The model when the request names none.
    public var defaultModel: String?
    /// The member that carries `ModelRequest.maxTokens`: `max_tokens` (what
    /// every compatible server reads) or `max_completion_tokens` (what
    /// OpenAI's reasoning models require; OpenAI reads it for all models).
    public var maxTokensField: String
    /// Ask for usage in the last chunk (`stream_options.include_usage`).
    /// Some older compatible servers reject `stream_options`.
    public var includeUsage: Bool
    /// Members added to every body (from configuration), before the
    /// request's own `options`.
    public var extraBody: JSONObject
    /// How `ResponseFormat.jsonSchema` is written.
    public var schemaForm: SchemaForm

    /// The `response_format` member a JSON-schema request is sent as.
    public enum SchemaForm: Sendable {
        /// OpenAI's: `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
        case jsonSchema
        /// `{"type": "json_object", "schema": {...}}`: the only form
        /// llama-cpp-python's server takes (its `response_format.type` is
        /// `text` or `json_object`; `json_schema` is refused with a 422), and
        /// one llama-server takes too. Both turn the schema into a grammar.
        case jsonObjectWithSchema
    }

    public init(
        defaultModel: String? = nil, maxTokensField: String = "max_tokens", includeUsage: Bool = true,
        extraBody: JSONObject = [:], schemaForm: SchemaForm = .jsonSchema
    ) {
        self.defaultModel = defaultModel
        self.maxTokensField = maxTokensField
        self.includeUsage = includeUsage
        self.extraBody = extraBody
        self.schemaForm = schemaForm
    }
}

public enum ChatRequest {
    /// The JSON body of `POST /chat/completions` for `r`.
    ///
    /// - `systemPrompt` becomes a leading `system` message.
    /// - Assistant messages carry their `tool_calls` (content `null` when
    ///   empty); `tool` messages their `tool_call_id`.
    /// - Tools are `{"type": "function", "function": {name, description,
    ///   parameters}}`; `toolChoice` maps to `auto`/`none`/`required`/
    ///   `{"type": "function", "function": {"name": ...}}`.
    /// - `options` members are copied to the top level as given (the ABI's
    ///   "provider-specific members, passed through"), except members this
    ///   encoder already wrote, which are not repeated.
    public static func encode(_ r: ModelRequest, stream: Bool, options o: ChatRequestOptions) -> [UInt8] {
        var w = JSONWriter(capacity: 1024)
        var written: Set<String> = ["model", "messages", "stream", "stream_options"]
        w.beginObject()
        if let model = r.model ?? o.defaultModel { w.field("model", model) }
        w.beginArray(key: "messages")
        if let system = r.systemPrompt {
            w.beginObject()
            w.field("role", "system")
            w.field("content", system)
            w.endObject()
        }
        for m in r.messages { writeMessage(m, &w) }
        w.endArray()
        if stream {
            w.field("stream", true)
            if o.includeUsage {
                w.beginObject(key: "stream_options")
                w.field("include_usage", true)
                w.endObject()
            }
        }
        func mark(_ k: String) { written.insert(k) }
        if let n = r.maxTokens { w.field(o.maxTokensField, n); mark(o.maxTokensField) }
        if let t = r.temperature { w.field("temperature", t); mark("temperature") }
        if let p = r.topP { w.field("top_p", p); mark("top_p") }
        if !r.stop.isEmpty {
            w.beginArray(key: "stop")
            for s in r.stop { w.value(s) }
            w.endArray()
            mark("stop")
        }
        if let s = r.seed { w.field("seed", s); mark("seed") }
        if !r.tools.isEmpty {
            w.beginArray(key: "tools")
            for t in r.tools {
                w.beginObject()
                w.field("type", "function")
                w.beginObject(key: "function")
                w.field("name", t.name)
                if !t.description.isEmpty { w.field("description", t.description) }
                w.field("parameters", t.parameters)
                w.endObject()
                w.endObject()
            }
            w.endArray()
            mark("tools")
        }
        if let choice = r.toolChoice {
            w.key("tool_choice")
            switch choice {
            case .auto: w.value("auto")
            case .none: w.value("none")
            case .required: w.value("required")
            case .tool(let name):
                w.beginObject()
                w.field("type", "function")
                w.beginObject(key: "function")
                w.field("name", name)
                w.endObject()
                w.endObject()
            }
            mark("tool_choice")
        }
        switch r.responseFormat {
        case .text: break
        case .json:
            w.field("response_format", ["type": "json_object"] as JSONValue)
            mark("response_format")
        case .jsonSchema(let name, let schema, let strict):
            switch o.schemaForm {
            case .jsonSchema:
                w.field("response_format", ["type": "json_schema", "json_schema": ["name": .string(name), "schema": schema, "strict": .bool(strict)]] as JSONValue)
            case .jsonObjectWithSchema:
                w.field("response_format", ["type": "json_object", "schema": schema] as JSONValue)
            }
            mark("response_format")
        }
        for source in [o.extraBody, r.options] {
            for m in source where !written.contains(m.key) {
                w.field(m.key, m.value)
                written.insert(m.key)
            }
        }
        w.endObject()
        return w.bytes
    }

    static func writeMessage(_ m: Message, _ w: inout JSONWriter) {
        w.beginObject()
        w.field("role", m.role.rawValue)
        if m.role == .assistant && m.content.isEmpty && !m.toolCalls.isEmpty {
            w.key("content")
            w.null()
        } else if !m.images.isEmpty {
            // A user message with images: content parts, the text first.
            w.beginArray(key: "content")
            if !m.content.isEmpty {
                w.beginObject()
                w.field("type", "text")
                w.field("text", m.content)
                w.endObject()
            }
            for image in m.images {
                w.beginObject()
                w.field("type", "image_url")
                w.beginObject(key: "image_url")
                w.field("url", image.urlString)
                w.endObject()
                w.endObject()
            }
            w.endArray()
        } else {
            w.field("content", m.content)
        }
        if let name = m.name, m.role != .tool { w.field("name", name) }
        if !m.toolCalls.isEmpty {
            w.beginArray(key: "tool_calls")
            for c in m.toolCalls {
                w.beginObject()
                w.field("id", c.id)
                w.field("type", "function")
                w.beginObject(key: "function")
                w.field("name", c.name)
                w.field("arguments", c.arguments.isEmpty ? "{}" : c.arguments)
                w.endObject()
                w.endObject()
            }
            w.endArray()
        }
        if m.role == .tool { w.field("tool_call_id", m.toolCallID ?? "") }
        w.endObject()
    }
}
