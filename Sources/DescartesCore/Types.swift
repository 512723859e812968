// The value types of the request/response model. They are what Swift callers
// use and, through `Wire.swift`, exactly what the JSON documents of the C ABI
// carry (docs/abi.md). Every struct has a defaulted initializer so that fields
// can be added without breaking anyone.

/// How a backend reaches its model.
public enum ModelProviderMode: String, Sendable, Hashable, CaseIterable {
    /// A hosted HTTP API (OpenAI, Anthropic, the OpenAI-compatible family).
    case api
    /// A command-line agent run as a child process (Claude Code, any CLI).
    case headless
    /// A server on the user's own hardware (Ollama, llama.cpp).
    case local
}

/// Who wrote a message.
public enum Role: String, Sendable, Hashable {
    case system, user, assistant, tool
}

/// One message of a conversation.
public struct Message: Sendable, Hashable {
    public var role: Role
    /// The message's text. For `tool` messages, the tool's output.
    public var content: String
    /// For `assistant` messages: the tool calls the model made.
    public var toolCalls: [ToolCall]
    /// For `tool` messages: the id of the call this message answers.
    public var toolCallID: String?
    /// Optional author name (some providers accept one per message).
    public var name: String?
    /// For `assistant` messages: reasoning text and its provider signature,
    /// when a provider needs them sent back on the next turn. The single
    /// block view of `reasoningBlocks`: a message built from an answer or
    /// by the gateway has `reasoning` = the thinking blocks' texts joined
    /// and `reasoningSignature` = the last signature. A caller that sets
    /// only these two (and no `reasoningBlocks`) sends one thinking block
    /// (`reasoningToSendBack`).
    public var reasoning: String?
    public var reasoningSignature: String?
    /// For `assistant` messages: the answer's reasoning blocks, in order,
    /// each with its own signature or the provider's encrypted data, sent
    /// back unmodified on the next turn (Anthropic and Bedrock require
    /// every thinking and redacted_thinking block back when thinking and
    /// tool use mix). `ModelResponse.reasoningBlocks` is what to put here.
    /// Empty: `reasoning` and `reasoningSignature` say it all. In the ABI's
    /// JSON, the message's optional `reasoning_blocks` (ABI 1.4).
    public var reasoningBlocks: [ReasoningBlock]
    /// For `user` messages: images shown to the model with the text. Only
    /// providers whose manifest has the `vision` capability take them.
    public var images: [ImageInput]
    /// A prompt-cache breakpoint at the end of this message: the provider
    /// may cache the prompt up to and including it. Anthropic's
    /// `cache_control` object, as given (`{"type": "ephemeral"}`, with
    /// `"ttl": "1h"` for the longer cache). The Anthropic plugin puts it on
    /// the message's last content block (the top-level `system` block for a
    /// system message), Bedrock a `cachePoint` after it; other providers
    /// cache on their own and ignore it. Nil: no breakpoint. In the ABI's
    /// JSON, the message's optional `cache_control` (docs/abi.md).
    public var cacheControl: JSONValue?
    /// For `tool` messages: the tool failed, and `content` says how. The
    /// Anthropic plugin marks the `tool_result` block `is_error`, Bedrock's
    /// its `toolResult` `status: error`; the other wire formats have no such
    /// mark and send the text alone. In the ABI's JSON, the message's
    /// optional `is_error` (docs/abi.md).
    public var isError: Bool

    public init(
        role: Role, content: String, toolCalls: [ToolCall] = [], toolCallID: String? = nil, name: String? = nil,
        reasoning: String? = nil, reasoningSignature: String? = nil, images: [ImageInput] = [], cacheControl: JSONValue? = nil,
        isError: Bool = false, reasoningBlocks: [ReasoningBlock] = []
    ) {
        self.isError = isError
        self.reasoningBlocks = reasoningBlocks
        self.cacheControl = cacheControl
        self.role = role
        self.content = content
        self.images = images
        self.toolCalls = toolCalls
        self.toolCallID = toolCallID
        self.name = name
        self.reasoning = reasoning
        self.reasoningSignature = reasoningSignature
    }

    public static func system(_ text: String) -> Message { Message(role: .system, content: text) }
    public static func user(_ text: String, images: [ImageInput] = []) -> Message {
        Message(role: .user, content: text, images: images)
    }
    public static func assistant(_ text: String, toolCalls: [ToolCall] = []) -> Message {
        Message(role: .assistant, content: text, toolCalls: toolCalls)
    }
    /// A tool's result; `isError`: the tool failed and `output` says how.
    public static func tool(callID: String, _ output: String, isError: Bool = false) -> Message {
        Message(role: .tool, content: output, toolCallID: callID, isError: isError)
    }
}

/// One block of an answer's reasoning: thinking text with the provider's
/// signature of it, or a block the provider returns encrypted. A provider
/// that signs its reasoning (Anthropic, Bedrock's Claude) checks each block
/// it gets back against its signature, so blocks are kept whole and in
/// order, never merged.
public enum ReasoningBlock: Sendable, Hashable {
    /// Thinking text and its signature (nil: the provider signs none).
    case thinking(String, signature: String?)
    /// Encrypted reasoning (Anthropic's `redacted_thinking` `data`,
    /// Bedrock's `redactedContent`), opaque, sent back as it came.
    case redacted(String)

    /// The thinking text (nil for a redacted block).
    public var text: String? {
        if case .thinking(let t, _) = self { return t }
        return nil
    }

    /// The signature of a thinking block.
    public var signature: String? {
        if case .thinking(_, let s) = self { return s }
        return nil
    }
}

extension Message {
    /// The reasoning blocks to send back to the provider that wrote them:
    /// `reasoningBlocks`, or when there are none one thinking block of
    /// `reasoning` signed with `reasoningSignature` (both present and not
    /// empty), or none.
    public var reasoningToSendBack: [ReasoningBlock] {
        if !reasoningBlocks.isEmpty { return reasoningBlocks }
        if let r = reasoning, !r.isEmpty, let sig = reasoningSignature, !sig.isEmpty { return [.thinking(r, signature: sig)] }
        return []
    }

    /// An assistant message that carries `response` back on the next turn:
    /// its text, tool calls and reasoning (every block, and the joined view).
    public static func assistant(_ response: ModelResponse) -> Message {
        Message(
            role: .assistant, content: response.content, toolCalls: response.toolCalls, reasoning: response.reasoning,
            reasoningSignature: response.reasoningSignature, reasoningBlocks: response.reasoningBlocks)
    }
}

/// A tool the model may call.
public struct Tool: Sendable, Hashable {
    public var name: String
    public var description: String
    /// A JSON Schema object describing the arguments.
    public var parameters: JSONValue
    /// A prompt-cache breakpoint after this tool's definition (as
    /// `Message.cacheControl`: Anthropic's `cache_control`, Bedrock's
    /// `cachePoint`, ignored by other providers).
    public var cacheControl: JSONValue?

    public init(
        name: String, description: String = "", parameters: JSONValue = ["type": "object", "properties": [:]], cacheControl: JSONValue? = nil
    ) {
        self.cacheControl = cacheControl
        self.name = name
        self.description = description
        self.parameters = parameters
    }
}

/// Whether and which tool the model must call.
public enum ToolChoice: Sendable, Hashable {
    case auto
    case none
    case required
    case tool(String)
}

/// A tool call made by the model.
public struct ToolCall: Sendable, Hashable {
    public var id: String
    public var name: String
    /// The arguments as JSON text, exactly as the model produced them.
    public var arguments: String

    public init(id: String, name: String, arguments: String) {
        self.id = id
        self.name = name
        self.arguments = arguments
    }

    /// The arguments parsed, or nil when the model produced invalid JSON.
    public var parsedArguments: JSONValue? { try? JSONValue.parse(arguments) }
}

/// Time limits for one request. The host passes them to the plugin and
/// enforces them itself. A nil limit is not enforced.
public struct Deadlines: Sendable, Hashable {
    /// Establishing the connection (or starting the child process).
    public var connect: Duration?
    /// From the start until the first event of the answer.
    public var firstToken: Duration?
    /// Between two consecutive events.
    public var idle: Duration?
    /// The whole request.
    public var total: Duration?

    public init(connect: Duration? = nil, firstToken: Duration? = nil, idle: Duration? = nil, total: Duration? = nil) {
        self.connect = connect
        self.firstToken = firstToken
        self.idle = idle
        self.total = total
    }

    public var isEmpty: Bool { connect == nil && firstToken == nil && idle == nil && total == nil }
}

/// One request to a model.
public struct ModelRequest: Sendable, Hashable {
    public var messages: [Message]
    /// The model id; nil uses the provider's default.
    public var model: String?
    public var maxTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    /// A system prompt; providers that take it separately (Anthropic) get it
    /// there, others as a leading system message.
    public var systemPrompt: String?
    public var tools: [Tool]
    public var toolChoice: ToolChoice?
    public var stop: [String]
    public var seed: Int?
    /// Caller's labels, passed through and echoed in traces and audit logs.
    public var metadata: [String: String]
    /// Provider-specific options passed through as given (for example
    /// Ollama's `num_ctx`, Anthropic's `cache_control` hints).
    public var options: JSONObject
    public var deadlines: Deadlines
    /// What shape the answer must have (since ABI 1.1): free text (the
    /// default), any JSON object, or JSON matching a schema. Only plugins
    /// whose manifest lists the `structured_output` capability are sent
    /// anything but `.text`; others refuse it with `unsupported_feature`.
    public var responseFormat: ResponseFormat
    /// How the agent's tool uses are approved (since ABI 1.2): nil, the
    /// default, asks nobody (the agent follows its own configuration).
    /// Only plugins that can ask (their backend has `answer_approval`) are
    /// sent it; see `ApprovalPolicy`.
    public var approval: ApprovalPolicy?

    public init(
        messages: [Message], model: String? = nil, maxTokens: Int? = nil, temperature: Double? = nil,
        topP: Double? = nil, systemPrompt: String? = nil, tools: [Tool] = [], toolChoice: ToolChoice? = nil,
        stop: [String] = [], seed: Int? = nil, metadata: [String: String] = [:], options: JSONObject = [:],
        deadlines: Deadlines = Deadlines(), responseFormat: ResponseFormat = .text
    ) {
        self.responseFormat = responseFormat
        self.messages = messages
        self.model = model
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.systemPrompt = systemPrompt
        self.tools = tools
        self.toolChoice = toolChoice
        self.stop = stop
        self.seed = seed
        self.metadata = metadata
        self.options = options
        self.deadlines = deadlines
    }

    /// A one-message request.
    public init(prompt: String, model: String? = nil) {
        self.init(messages: [.user(prompt)], model: model)
    }

    /// A one-message request with a system prompt:
    /// `ModelRequest(prompt: "Summarize this", system: "You are terse.")`.
    public init(prompt: String, system: String?, model: String? = nil) {
        self.init(messages: [.user(prompt)], model: model)
        systemPrompt = system
    }
}

/// Why the model stopped. An "open enum": new reasons can be added without
/// breaking exhaustive switches elsewhere.
public struct FinishReason: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    /// The model finished its answer (or hit a stop sequence).
    public static let stop = FinishReason(rawValue: "stop")
    /// The answer was cut at the token limit.
    public static let maxTokens = FinishReason(rawValue: "max_tokens")
    /// The model wants tool results before it continues.
    public static let toolUse = FinishReason(rawValue: "tool_use")
    /// The provider filtered the answer.
    public static let contentFilter = FinishReason(rawValue: "content_filter")
    /// The answer ended because of an error.
    public static let error = FinishReason(rawValue: "error")
    /// An agent ended its turn after it was refused a tool it asked for
    /// (Claude Code's `permission_denials`): the answer is what it said
    /// without it.
    public static let toolDenied = FinishReason(rawValue: "tool_denied")

    public var description: String { rawValue }
}

/// Token counts of one response.
public struct Usage: Sendable, Hashable {
    public var inputTokens: Int
    public var outputTokens: Int
    /// Input tokens read from the provider's prompt cache.
    public var cacheReadTokens: Int
    /// Input tokens written to the provider's prompt cache.
    public var cacheWriteTokens: Int
    /// Output tokens spent on reasoning, when the provider reports them
    /// (included in `outputTokens`).
    public var reasoningTokens: Int
    /// True when the numbers were estimated rather than reported.
    public var estimated: Bool

    public init(
        inputTokens: Int = 0, outputTokens: Int = 0, cacheReadTokens: Int = 0, cacheWriteTokens: Int = 0,
        reasoningTokens: Int = 0, estimated: Bool = false
    ) {
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
        self.cacheReadTokens = cacheReadTokens
        self.cacheWriteTokens = cacheWriteTokens
        self.reasoningTokens = reasoningTokens
        self.estimated = estimated
    }

    public var totalTokens: Int { inputTokens + outputTokens }
}

/// A failed attempt before the one that answered (retries, fallbacks).
public struct Attempt: Sendable, Hashable {
    public var provider: String
    public var error: ProviderError
    public var duration: Duration

    public init(provider: String, error: ProviderError, duration: Duration) {
        self.provider = provider
        self.error = error
        self.duration = duration
    }
}

/// A model's complete answer.
public struct ModelResponse: Sendable, Hashable {
    public var content: String
    /// Reasoning ("thinking") text, when the model produced any: every
    /// reasoning fragment, joined (the thinking blocks' texts).
    public var reasoning: String?
    /// The reasoning as the provider's blocks, in order: each thinking
    /// block with its own signature, and the encrypted (redacted) ones. The
    /// host builds them from the stream (a REASONING_SIGNATURE event ends a
    /// block, a REASONING_REDACTED event is one); a plugin that signs only
    /// with its answer (`metadata`, see `reasoningSignature`) gets that
    /// signature on its last thinking block. Empty when there was no reasoning.
    public var reasoningBlocks: [ReasoningBlock]
    public var finishReason: FinishReason
    public var usage: Usage
    public var toolCalls: [ToolCall]
    /// The model that answered, as the provider names it.
    public var model: String
    /// The provider's response id, when it gives one.
    public var id: String?
    /// Cost in US dollars: reported by the provider, or computed from the
    /// manifest's prices. Nil when unknown.
    public var costUSD: Double?
    /// The provider instance that answered.
    public var provider: String
    /// Failed attempts before this answer (retries, fallbacks), oldest first.
    public var attempts: [Attempt]
    /// Provider-specific details (timings, session ids, signatures, ...).
    public var metadata: JSONObject

    public init(
        content: String = "", reasoning: String? = nil, finishReason: FinishReason = .stop, usage: Usage = Usage(),
        toolCalls: [ToolCall] = [], model: String = "", id: String? = nil, costUSD: Double? = nil,
        provider: String = "", attempts: [Attempt] = [], metadata: JSONObject = [:], reasoningBlocks: [ReasoningBlock] = []
    ) {
        self.reasoningBlocks = reasoningBlocks
        self.content = content
        self.reasoning = reasoning
        self.finishReason = finishReason
        self.usage = usage
        self.toolCalls = toolCalls
        self.model = model
        self.id = id
        self.costUSD = costUSD
        self.provider = provider
        self.attempts = attempts
        self.metadata = metadata
    }
}

/// One event of a streamed answer. The stream ends with exactly one
/// `.finish`, or throws a `ProviderError`.
public enum StreamEvent: Sendable, Hashable {
    /// The provider accepted the request.
    case start(id: String?, model: String?)
    case textDelta(String)
    case reasoningDelta(String)
    /// The provider's signature of the reasoning block that ends (the
    /// reasoning since the previous signature or redacted block), when it
    /// ends (Anthropic's `signature_delta`); reasoning after it is the next
    /// block. The finish's `ModelResponse.reasoningBlocks` has it too; only
    /// plugins that send it early (ABI 1.3) stream it.
    case reasoningSignature(String)
    /// A reasoning block the provider returns encrypted (Anthropic's
    /// `redacted_thinking` data), whole, in its place (ABI 1.4).
    case reasoningRedacted(String)
    case toolCallStart(index: Int, id: String, name: String)
    case toolCallDelta(index: Int, arguments: String)
    case toolCallEnd(index: Int)
    /// Usage so far (cumulative).
    case usage(Usage)
    /// A diagnostic that is not part of the answer.
    case notice(level: String, message: String)
    /// The assembled response: the last event.
    case finish(ModelResponse)
}

/// A model the provider offers.
public struct ModelInfo: Sendable, Hashable {
    public var id: String
    public var contextLength: Int?
    public var ownedBy: String?
    public var details: JSONObject

    public init(id: String, contextLength: Int? = nil, ownedBy: String? = nil, details: JSONObject = [:]) {
        self.id = id
        self.contextLength = contextLength
        self.ownedBy = ownedBy
        self.details = details
    }
}

/// A token count.
public struct TokenEstimate: Sendable, Hashable {
    public var tokens: Int
    /// True when the provider's own tokenizer counted them.
    public var exact: Bool
    /// How the number was obtained ("server:/tokenize", "heuristic:chars/4").
    public var method: String

    public init(tokens: Int, exact: Bool, method: String) {
        self.tokens = tokens
        self.exact = exact
        self.method = method
    }
}

/// The outcome of a successful health check.
public struct HealthReport: Sendable, Hashable {
    /// The detail set to `false` when the plugin has no health check of its
    /// own (`health_check` NULL or `unsupported_feature`): the backend
    /// initialized and nothing more was checked.
    public static let implementedKey = "implemented"
    /// False when the plugin has no health check (see `implementedKey`).
    public var implemented: Bool { details[Self.implementedKey] != .bool(false) }
    public var message: String
    public var details: JSONObject
    public var latency: Duration

    public init(message: String, details: JSONObject = [:], latency: Duration = .zero) {
        self.message = message
        self.details = details
        self.latency = latency
    }
}

extension ModelResponse {
    /// The answer's text (`content`).
    public var text: String { content }

    /// The provider's signature of the answer's reasoning, to send back as
    /// the next request's `Message.reasoningSignature` (Anthropic and Bedrock
    /// need it when thinking and tool use mix): `metadata.thinking_signature`
    /// (Anthropic, Bedrock), `thought_signature` (Gemini) or
    /// `reasoning_signature` (OpenAI's Responses API), whichever the plugin
    /// set.
    public var reasoningSignature: String? {
        for key in ["thinking_signature", "thought_signature", "reasoning_signature"] {
            if let s = metadata[key]?.stringValue, !s.isEmpty { return s }
        }
        return nil
    }
}

/// What to embed (ABI 1.1): a batch of texts, one vector each.
public struct EmbeddingRequest: Sendable, Hashable {
    /// The texts, in order; the answer has one vector per text, in the same order.
    public var inputs: [String]
    /// The embedding model; nil: the provider's default embedding model.
    public var model: String?
    /// Shorter vectors, for models that can give them (OpenAI's
    /// text-embedding-3 family); nil: the model's own size.
    public var dimensions: Int?
    /// Deadlines; unset ones take the backend's defaults.
    public var deadlines: Deadlines

    public init(_ inputs: [String], model: String? = nil, dimensions: Int? = nil, deadlines: Deadlines = Deadlines()) {
        self.inputs = inputs
        self.model = model
        self.dimensions = dimensions
        self.deadlines = deadlines
    }
}

/// The answer to an `EmbeddingRequest`: one vector per input, in order.
public struct Embeddings: Sendable, Hashable {
    /// One vector per input text, each `dimensions` long.
    public var vectors: [[Float]]
    /// The length of every vector.
    public var dimensions: Int
    /// The model that answered, as the provider names it ("" when it did not say).
    public var model: String
    /// The input tokens the provider counted (`inputTokens`; `estimated`
    /// when it reported none and the plugin estimated them).
    public var usage: Usage
    /// The provider instance that answered.
    public var provider: String

    public init(vectors: [[Float]], dimensions: Int? = nil, model: String = "", usage: Usage = Usage(), provider: String = "") {
        self.vectors = vectors
        self.dimensions = dimensions ?? vectors.first?.count ?? 0
        self.model = model
        self.usage = usage
        self.provider = provider
    }
}

extension Embeddings {
    /// The cosine similarity of two vectors, from -1 to 1 (1: the same
    /// direction); nil when their lengths differ or either is all zeros.
    public static func cosine(_ a: [Float], _ b: [Float]) -> Double? {
        guard a.count == b.count, !a.isEmpty else { return nil }
        var dot = 0.0, na = 0.0, nb = 0.0
        for i in a.indices {
            let x = Double(a[i]), y = Double(b[i])
            dot += x * y
            na += x * x
            nb += y * y
        }
        guard na > 0, nb > 0 else { return nil }
        return dot / (na.squareRoot() * nb.squareRoot())
    }
}

/// The shape a request asks the answer to have (`ModelRequest.responseFormat`).
public enum ResponseFormat: Sendable, Hashable {
    /// Free text.
    case text
    /// A JSON object, of any shape.
    case json
    /// JSON matching `schema` (a JSON Schema object), under `name` (what
    /// providers that want one call it: letters, digits, `_` and `-`).
    /// `strict`: ask the provider to enforce the schema exactly where it can
    /// (OpenAI's strict mode).
    case jsonSchema(name: String, schema: JSONValue, strict: Bool = true)
}
