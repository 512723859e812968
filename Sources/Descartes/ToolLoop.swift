// The tool loop: a conversation in which the model calls tools the caller
// implements, run until the model answers without calling one (issue 18).
// It is built on `ModelBackend.complete` alone, so it works the same over
// every backend and middleware; the wire formats differ only in how each
// plugin writes the `tool` messages it appends (docs/abi.md, "Request").

/// A tool the model may call, with the code that runs it
/// (`ModelBackend.runTools`).
///
/// `run` gets the call's arguments parsed (an object; `{}` when the model
/// sent none) and returns the result text the model reads. What it throws
/// is not the loop's failure: the error's description goes back to the
/// model as the tool's result, marked as an error (`Message.isError`), and
/// the model decides what to do next. `run` is called on a task of its own,
/// concurrently with the other calls of the same turn, and that task is
/// cancelled when the caller's is: a handler that does slow work should
/// check `Task.isCancelled` (or call cancellable APIs).
public struct ToolHandler: Sendable {
    /// What the model is told about the tool (name, description, JSON
    /// Schema of the arguments).
    public var tool: Tool
    /// Runs one call: the parsed arguments in, the result text out.
    public var run: @Sendable (JSONValue) async throws -> String

    public init(_ tool: Tool, run: @escaping @Sendable (JSONValue) async throws -> String) {
        self.tool = tool
        self.run = run
    }

    /// A handler for a tool described in place:
    /// `ToolHandler(name: "add", parameters: schema) { args in ... }`.
    public init(
        name: String, description: String = "", parameters: JSONValue = ["type": "object", "properties": [:]],
        run: @escaping @Sendable (JSONValue) async throws -> String
    ) {
        self.init(Tool(name: name, description: description, parameters: parameters), run: run)
    }
}

/// What `ModelBackend.runTools` ends with.
public struct ToolLoopResult: Sendable {
    /// Why the loop stopped.
    public enum Outcome: Sendable, Hashable {
        /// The model answered without calling a tool: `response` is its answer.
        case finished
        /// The model was still calling tools after `maxTurns` model calls:
        /// `pendingToolCalls` are the calls of the last answer, not run.
        /// Call `runTools` again with `messages` to go on.
        case turnLimitReached
    }

    public var outcome: Outcome
    /// The whole conversation: the request's messages, then each answer of
    /// the model (an assistant message with its tool calls, reasoning and
    /// signature) and the results of its calls, one `tool` message per call
    /// in the order of the calls, and the last answer. It is a valid
    /// `ModelRequest.messages` for the next request.
    public var messages: [Message]
    /// The model's last answer.
    public var response: ModelResponse
    /// The tool calls of the last answer that were not run (empty unless
    /// `outcome` is `turnLimitReached`).
    public var pendingToolCalls: [ToolCall]
    /// How many times the model was called.
    public var turns: Int
    /// The usage of every model call, summed (`estimated` when any was).
    public var usage: Usage
    /// The cost of every model call, summed; nil when any call's is unknown.
    public var costUSD: Double?

    /// The last answer's text.
    public var text: String { response.content }
}

extension ModelBackend {
    /// Runs a conversation in which the model may call `tools`, until it
    /// answers without calling one or `maxTurns` model calls have been made.
    ///
    /// Each turn sends the conversation so far (`complete`); when the answer
    /// calls tools, every call of that answer runs at once, each in a child
    /// task, and their results are appended in the order of the calls
    /// before the next turn. A call the loop cannot answer with its handler's
    /// output gets an error result instead (`Message.isError`, which the
    /// Anthropic and Bedrock plugins mark as such on the wire, and which
    /// the others send as text): an unknown tool (the result names the
    /// tools there are), arguments that are not a JSON object, or a handler
    /// that threw (its error's description). The model reads it and carries
    /// on.
    ///
    /// The request's own `tools` are sent too, before the handlers' (a call
    /// to one without a handler is an unknown tool). A `toolChoice` of
    /// `.required` or `.tool(name)` applies to the first turn only: later
    /// turns are `.auto`, so that the model can answer.
    ///
    /// ```swift
    /// let add = ToolHandler(
    ///     name: "add", description: "Adds two integers",
    ///     parameters: ["type": "object", "properties": ["a": ["type": "integer"], "b": ["type": "integer"]], "required": ["a", "b"]]
    /// ) { args in
    ///     guard let a = args["a"]?.intValue, let b = args["b"]?.intValue else { throw ProviderError(.api, "a and b must be integers") }
    ///     return String(a + b)
    /// }
    /// let result = try await backend.runTools(ModelRequest(prompt: "What is 2 + 3?"), tools: [add], maxTurns: 5)
    /// if result.outcome == .turnLimitReached { print("still calling", result.pendingToolCalls.map(\.name)) }
    /// print(result.text, result.usage.totalTokens)
    /// ```
    ///
    /// (The same example is in docs/providers.md, "Tool loops", where a test
    /// compiles it.)
    ///
    /// - Parameters:
    ///   - maxTurns: the most model calls to make (at least 1). When the
    ///     last one still calls tools, the result's `outcome` is
    ///     `turnLimitReached` and those calls are left unrun in
    ///     `pendingToolCalls`, the transcript kept.
    /// - Throws: `ProviderError` when a model call fails (the turns before
    ///   it are lost; the error's `sideEffects` name the tools that ran), or
    ///   `cancelled` when the calling task is cancelled: the model call in
    ///   flight is cancelled, and so are the handlers' tasks.
    public func runTools(_ request: ModelRequest, tools: [ToolHandler], maxTurns: Int = 10) async throws(ProviderError) -> ToolLoopResult {
        guard maxTurns >= 1 else { throw ProviderError(.config, "runTools: maxTurns must be at least 1, got \(maxTurns)", provider: name) }
        var handlers: [String: ToolHandler] = [:]
        for h in tools {
            guard handlers[h.tool.name] == nil else {
                throw ProviderError(.config, "runTools: two handlers for the tool '\(h.tool.name)'", provider: name)
            }
            handlers[h.tool.name] = h
        }
        var next = request
        let own = Set(request.tools.map(\.name))
        next.tools = request.tools + tools.map(\.tool).filter { !own.contains($0.name) }
        var usage = Usage()
        var cost: Double? = 0
        var ran: [String] = []
        var turns = 0
        while true {
            let response: ModelResponse
            do {
                response = try await complete(next)
            } catch {
                var e = error
                if !ran.isEmpty { e.sideEffects.append("ran tools: " + ran.joined(separator: ", ")) }
                throw e
            }
            turns += 1
            usage = Self.sum(usage, response.usage)
            cost = cost.flatMap { c in response.costUSD.map { c + $0 } }
            next.messages.append(.assistant(response))
            let done = response.toolCalls.isEmpty
            if done || turns == maxTurns {
                return ToolLoopResult(
                    outcome: done ? .finished : .turnLimitReached, messages: next.messages, response: response,
                    pendingToolCalls: response.toolCalls, turns: turns, usage: usage, costUSD: cost)
            }
            let results = await Self.run(response.toolCalls, handlers)
            if Task.isCancelled {
                throw ProviderError(
                    .cancelled, "the tool loop was cancelled while its tools ran", provider: name,
                    sideEffects: ["ran tools: " + (ran + response.toolCalls.map(\.name)).joined(separator: ", ")])
            }
            ran += response.toolCalls.map(\.name)
            next.messages += results
            switch next.toolChoice {
            case .required?, .tool?: next.toolChoice = .auto
            default: break
            }
        }
    }

    /// Runs the calls of one answer concurrently; their results in the order
    /// of the calls.
    private static func run(_ calls: [ToolCall], _ handlers: [String: ToolHandler]) async -> [Message] {
        await withTaskGroup(of: (Int, Message).self) { group in
            for (i, call) in calls.enumerated() {
                group.addTask { (i, await answer(call, handlers[call.name], known: handlers.keys.sorted())) }
            }
            var out = [Message?](repeating: nil, count: calls.count)
            for await (i, m) in group { out[i] = m }
            return out.compactMap { $0 }
        }
    }

    /// One call's result: the handler's output, or an error result.
    private static func answer(_ call: ToolCall, _ handler: ToolHandler?, known: [String]) async -> Message {
        guard let handler else {
            let offered = known.isEmpty ? "none" : known.joined(separator: ", ")
            return .tool(callID: call.id, "error: there is no tool named '\(call.name)' (tools: \(offered))", isError: true)
        }
        let arguments: JSONValue
        if call.arguments.allSatisfy(\.isWhitespace) {
            arguments = [:]
        } else if let parsed = try? JSONValue.parse(call.arguments), case .object = parsed {
            arguments = parsed
        } else {
            return .tool(callID: call.id, "error: the arguments are not a JSON object: \(Wire.excerpt(call.arguments))", isError: true)
        }
        do {
            return .tool(callID: call.id, try await handler.run(arguments))
        } catch {
            return .tool(callID: call.id, "error: \(error)", isError: true)
        }
    }

    private static func sum(_ a: Usage, _ b: Usage) -> Usage {
        Usage(
            inputTokens: a.inputTokens + b.inputTokens, outputTokens: a.outputTokens + b.outputTokens,
            cacheReadTokens: a.cacheReadTokens + b.cacheReadTokens, cacheWriteTokens: a.cacheWriteTokens + b.cacheWriteTokens,
            reasoningTokens: a.reasoningTokens + b.reasoningTokens, estimated: a.estimated || b.estimated)
    }
}
