// A `ModelRequest` as an Anthropic Messages API body (POST /v1/messages and
// POST /v1/messages/count_tokens).
import DescartesPluginKit

enum AnthropicRequest {
    enum Purpose {
        case stream, complete, countTokens
    }

    /// The request body.
    ///
    /// - The system prompt and any `system` messages go to the top-level
    ///   `system` (joined by a blank line).
    /// - Consecutive messages of one role are merged into one turn, so tool
    ///   results (`tool` messages) become `tool_result` blocks of one user
    ///   turn, as the API requires; a failed tool's (`Message.isError`) is
    ///   marked `is_error`.
    /// - Assistant turns carry their reasoning blocks first, in order and
    ///   unmodified (`Message.reasoningToSendBack`: each `thinking` block
    ///   with its own signature, each `redacted_thinking` with its data;
    ///   needed when thinking and tool use mix, and a thinking block without
    ///   a signature is not sent), their text, and `tool_use` blocks whose
    ///   `input` is the parsed arguments.
    /// - `max_tokens` is always sent (the request's, else `defaultMaxTokens`).
    /// - A message's or tool's own breakpoint (`Message.cacheControl`,
    ///   `Tool.cacheControl`) becomes the `cache_control` of its last block
    ///   or of the tool, as given; a system message's ends a `system` block.
    /// - Option `cache_control` (e.g. `{"type": "ephemeral"}` or with
    ///   `"ttl": "1h"`) marks prompt-cache breakpoints on the last system
    ///   block, the last tool and the last block of the last message (those
    ///   that have none of their own): the whole prompt prefix is cached.
    ///   Every other option is copied to the top level as given (`thinking`,
    ///   `top_k`, `metadata`, `service_tier`...).
    /// - `responseFormat` `.jsonSchema` becomes `output_config.format`
    ///   (`{"type": "json_schema", "schema": ...}`, structured outputs, no
    ///   beta header): the answer is the JSON as text, streamed as it is
    ///   written. Models before Claude Sonnet 4.5 / Opus 4.1 / Haiku 4.5
    ///   refuse it (the API's 400, reported as `api`).
    static func encode(_ r: ModelRequest, purpose: Purpose, defaultModel: String?, defaultMaxTokens: Int) -> [UInt8] {
        let cache = r.options["cache_control"].flatMap { $0.isNull ? nil : $0 }
        var w = JSONWriter(capacity: 1024)
        var written: Set<String> = ["model", "messages", "system", "stream", "max_tokens", "cache_control"]
        w.beginObject()
        if let model = r.model ?? defaultModel { w.field("model", model) }
        if purpose != .countTokens { w.field("max_tokens", r.maxTokens ?? defaultMaxTokens) }

        var system = self.system(r)
        if let cache, !system.isEmpty, system[system.count - 1]["cache_control"] == nil {
            system[system.count - 1] = marked(system[system.count - 1], cache)
        }
        if system.count == 1, system[0]["cache_control"] == nil, let text = system[0]["text"]?.stringValue {
            w.field("system", text)
        } else if !system.isEmpty {
            w.field("system", .array(system))
        }

        var turns = self.turns(r.messages)
        if let cache, !turns.isEmpty, let lastBlock = turns[turns.count - 1].blocks.last, lastBlock["cache_control"] == nil {
            turns[turns.count - 1].blocks[turns[turns.count - 1].blocks.count - 1] = marked(lastBlock, cache)
        }
        w.beginArray(key: "messages")
        for t in turns {
            w.beginObject()
            w.field("role", t.role)
            w.field("content", .array(t.blocks))
            w.endObject()
        }
        w.endArray()

        if purpose == .stream { w.field("stream", true) }
        if purpose != .countTokens {
            if let t = r.temperature { w.field("temperature", t); written.insert("temperature") }
            if let p = r.topP { w.field("top_p", p); written.insert("top_p") }
            if !r.stop.isEmpty {
                w.field("stop_sequences", .array(r.stop.map { .string($0) }))
                written.insert("stop_sequences")
            }
        }
        if !r.tools.isEmpty {
            w.beginArray(key: "tools")
            for (i, t) in r.tools.enumerated() {
                var o: JSONObject = ["name": .string(t.name)]
                if !t.description.isEmpty { o["description"] = .string(t.description) }
                o["input_schema"] = t.parameters
                if let c = t.cacheControl ?? (i == r.tools.count - 1 ? cache : nil) { o["cache_control"] = c }
                w.value(.object(o))
            }
            w.endArray()
            written.insert("tools")
        }
        if let choice = r.toolChoice {
            switch choice {
            case .auto: w.field("tool_choice", ["type": "auto"] as JSONValue)
            case .none: w.field("tool_choice", ["type": "none"] as JSONValue)
            case .required: w.field("tool_choice", ["type": "any"] as JSONValue)
            case .tool(let name): w.field("tool_choice", ["type": "tool", "name": .string(name)] as JSONValue)
            }
            written.insert("tool_choice")
        }
        // Structured output, natively: `output_config.format` (merged into
        // an `output_config` option, which may carry `effort`). `.json`
        // has no form here (the plugin refuses it before encoding).
        if purpose != .countTokens, case .jsonSchema(_, let schema, _) = r.responseFormat {
            var config = r.options["output_config"]?.objectValue ?? [:]
            config["format"] = ["type": "json_schema", "schema": schema]
            w.field("output_config", .object(config))
            written.insert("output_config")
        }
        // count_tokens takes only what shapes the prompt.
        let countable: Set<String> = ["thinking", "mcp_servers"]
        for m in r.options where !written.contains(m.key) {
            if purpose == .countTokens && !countable.contains(m.key) { continue }
            w.field(m.key, m.value)
            written.insert(m.key)
        }
        w.endObject()
        return w.bytes
    }

    /// `block` with `cache_control` set to `c`.
    static func marked(_ block: JSONValue, _ c: JSONValue) -> JSONValue {
        guard case .object(var o) = block else { return block }
        o["cache_control"] = c
        return .object(o)
    }

    /// The top-level `system` text blocks: the system prompt and the system
    /// messages, joined by a blank line, with a new block after each one that
    /// carries a cache breakpoint (`Message.cacheControl`), so each
    /// breakpoint ends a block. A breakpoint on an empty system message
    /// marks the block before it.
    static func system(_ r: ModelRequest) -> [JSONValue] {
        var blocks: [JSONValue] = []
        for (text, cache) in r.systemSegments {
            if !text.isEmpty {
                blocks.append(cache.map { ["type": "text", "text": .string(text), "cache_control": $0] } ?? ["type": "text", "text": .string(text)])
            } else if let cache, let last = blocks.last {
                blocks[blocks.count - 1] = marked(last, cache)
            }
        }
        return blocks
    }

    struct Turn {
        var role: String
        var blocks: [JSONValue]
    }

    /// Messages (without `system` ones) as alternating turns of content
    /// blocks. A message's cache breakpoint (`cacheControl`) goes on the last
    /// block it adds (on the turn's block before it when it adds none).
    static func turns(_ messages: [Message]) -> [Turn] {
        var out: [Turn] = []
        var cache: JSONValue?
        func add(_ role: String, _ blocks: [JSONValue]) {
            var blocks = blocks
            if let cache {
                if let last = blocks.last {
                    blocks[blocks.count - 1] = marked(last, cache)
                } else if let turn = out.last, turn.role == role, let last = turn.blocks.last {
                    out[out.count - 1].blocks[turn.blocks.count - 1] = marked(last, cache)
                }
            }
            guard !blocks.isEmpty else { return }
            if let last = out.last, last.role == role {
                out[out.count - 1].blocks += blocks
            } else {
                out.append(Turn(role: role, blocks: blocks))
            }
        }
        for m in messages {
            cache = m.cacheControl
            switch m.role {
            case .system:
                continue
            case .user:
                // Images first, then the text, as Anthropic's guide advises.
                add("user", m.images.map(\.anthropicBlock) + (m.content.isEmpty ? [] : [["type": "text", "text": .string(m.content)]]))
            case .tool:
                var block: JSONObject = ["type": "tool_result", "tool_use_id": .string(m.toolCallID ?? "")]
                if !m.content.isEmpty { block["content"] = .string(m.content) }
                if m.isError { block["is_error"] = true }
                add("user", [.object(block)])
            case .assistant:
                var blocks = m.anthropicReasoningBlocks
                if !m.content.isEmpty { blocks.append(["type": "text", "text": .string(m.content)]) }
                for c in m.toolCalls {
                    var input: JSONValue = [:]
                    if case .object(let o)? = try? JSONValue.parse(c.arguments.isEmpty ? "{}" : c.arguments) { input = .object(o) }
                    blocks.append(["type": "tool_use", "id": .string(c.id), "name": .string(c.name), "input": input])
                }
                add("assistant", blocks)
            }
        }
        return out
    }
}
