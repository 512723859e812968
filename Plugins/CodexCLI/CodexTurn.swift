// Reads `codex exec --json` for one turn and turns it into plugin events.
// Events seen from codex 0.147 (one JSON object a line):
//
//   thread.started   {thread_id}: the session id (`codex exec resume <id>`)
//   turn.started
//   item.started / item.updated / item.completed  {item: {id, type, ...}}:
//       agent_message {text}         the answer (whole, at item.completed)
//       reasoning {text}             a reasoning summary
//       command_execution {command, aggregated_output, exit_code, status}
//       file_change {changes: [{path, kind}], status}
//       mcp_tool_call {server, tool, arguments, result, error, status}
//       web_search {query}
//       todo_list {items: [{text, completed}]}
//       error {message}              a warning that does not end the turn
//                                    ("Model metadata for `m` not found")
//   error            {message}: a retry ("Reconnecting... 2/5 (...)") or the
//                    error a turn.failed repeats
//   turn.completed   {usage: input_tokens, cached_input_tokens,
//                    cache_write_input_tokens, output_tokens,
//                    reasoning_output_tokens}: for the whole thread, so a
//                    resumed turn reports the sum of all its turns
//   turn.failed      {error: {message}}
//
// Codex runs a command or edits a file as soon as it reports the item:
// each one is a side effect, and a turn failing after it is never repeated.
import DescartesPluginKit

final class CodexTurn: @unchecked Sendable {
    let call: PluginCall
    /// The thread's usage before this turn (a resumed session), subtracted
    /// from turn.completed's running total.
    let usageBefore: Usage?
    var model: String?
    var metadata: JSONObject = [:]
    /// Called (on the runner's thread) when the turn has its final event.
    var onEnd: (@Sendable () -> Void)?

    private var out: HeadlessOutput
    private var threadID: String?
    private var messages = 0
    private var toolUses: [String: JSONObject] = [:]
    private var toolOrder: [String] = []
    private var commands: [String] = []
    private var files: [String] = []
    private var mcpTools: [String] = []
    private var plan: JSONValue?
    private var lastError: String?
    /// Commands codex refused because they asked for approval (its stderr
    /// log: "approval policy is Never; reject command ...").
    private var denials: [JSONValue] = []

    init(call: PluginCall, usageBefore: Usage? = nil) {
        self.call = call
        self.usageBefore = usageBefore
        out = HeadlessOutput(call: call, program: "codex", finalEvent: "turn.completed")
    }

    private func fail(_ e: ProviderError) { call.fail(out.marked(e)) }

    func line(_ bytes: UnsafeRawBufferPointer) {
        guard let o = out.object(bytes) else { return }
        switch o["type"]?.stringValue ?? "" {
        case "thread.started":
            threadID = o["thread_id"]?.stringValue
            if !out.ended { call.start(id: threadID, model: model) }
        case "item.started", "item.updated": if let item = o["item"]?.objectValue { self.item(item, completed: false) }
        case "item.completed": if let item = o["item"]?.objectValue { self.item(item, completed: true) }
        case "error":
            let message = o["message"]?.stringValue ?? ""
            lastError = message
            if !out.ended && !message.isEmpty { call.notice("warning", "codex: \(message)") }
        case "turn.completed": completed(o)
        case "turn.failed":
            onEnd?()
            guard out.end() else { return }
            fail(Self.error(o["error"]?["message"]?.stringValue ?? lastError ?? "codex reported a failed turn without a message"))
        default: break  // turn.started, later additions
        }
    }

    func stderr(_ bytes: UnsafeRawBufferPointer) {
        out.stderr(bytes)
        // codex exec has nobody to ask: a command needing approval is
        // refused to the model, and only this log line says so.
        guard !out.ended else { return }
        let text = ANSIStripper.clean(bytes)
        if let r = text.firstRange(of: "reject command") {
            let start = text.firstRange(of: "error=").map(\.upperBound) ?? r.lowerBound
            denials.append(["tool_name": "exec_command", "message": .string(Wire.excerpt(String(text[start...]), limit: 500))])
        }
    }

    // MARK: Items

    private func item(_ item: JSONObject, completed: Bool) {
        guard !out.ended else { return }
        let id = item["id"]?.stringValue ?? ""
        switch item["type"]?.stringValue ?? "" {
        case "agent_message":
            guard completed, let t = item["text"]?.stringValue, !t.isEmpty else { return }
            // Each message of the turn (before and after its commands) is
            // part of the answer, a paragraph each.
            if messages > 0 { call.text("\n\n") }
            call.text(t)
            messages += 1
            out.did("written text")
        case "reasoning":
            if completed, let t = item["text"]?.stringValue, !t.isEmpty { call.reasoning(t) }
        case "command_execution":
            let command = item["command"]?.stringValue ?? ""
            if toolUses[id] == nil {
                commands.append(command)
                out.did("run commands: " + commands.joined(separator: "; "), replacing: "run commands: ")
                call.notice("info", "codex ran \(Wire.excerpt(command, limit: 200))")
            }
            var use: JSONObject = ["id": .string(id), "type": "command_execution", "command": .string(command)]
            if let s = item["status"] { use["status"] = s }
            if let c = item["exit_code"], !c.isNull { use["exit_code"] = c }
            if let output = item["aggregated_output"]?.stringValue, !output.isEmpty {
                use["output"] = .string(Wire.excerpt(output, limit: 2000))
            }
            record(id, use)
        case "file_change":
            let changes = item["changes"]?.arrayValue ?? []
            let paths = changes.compactMap { $0["path"]?.stringValue }
            if toolUses[id] == nil || completed {
                for p in paths where !files.contains(p) { files.append(p) }
                if !files.isEmpty { out.did("changed files: " + files.joined(separator: ", "), replacing: "changed files: ") }
            }
            if completed { call.notice("info", "codex changed \(paths.joined(separator: ", "))") }
            var use: JSONObject = ["id": .string(id), "type": "file_change", "changes": .array(changes)]
            if let s = item["status"] { use["status"] = s }
            record(id, use)
        case "mcp_tool_call":
            let name = "\(item["server"]?.stringValue ?? "?").\(item["tool"]?.stringValue ?? "?")"
            if toolUses[id] == nil {
                mcpTools.append(name)
                out.did("called MCP tools: " + mcpTools.joined(separator: ", "), replacing: "called MCP tools: ")
                call.notice("info", "codex called \(name)")
            }
            var use: JSONObject = ["id": .string(id), "type": "mcp_tool_call", "name": .string(name)]
            for k in ["arguments", "status", "error"] { if let v = item[k], !v.isNull { use[k] = v } }
            if let r = item["result"], !r.isNull { use["result"] = .string(Wire.excerpt(r.jsonText, limit: 2000)) }
            record(id, use)
        case "web_search":
            let query = item["query"]?.stringValue ?? ""
            if toolUses[id] == nil { call.notice("info", "codex searched the web for \(Wire.excerpt(query, limit: 200))") }
            record(id, ["id": .string(id), "type": "web_search", "query": .string(query)])
        case "todo_list":
            plan = item["items"]
        case "error":
            if completed, let m = item["message"]?.stringValue { call.notice("warning", "codex: \(m)") }
        default:
            break
        }
    }

    private func record(_ id: String, _ use: JSONObject) {
        if toolUses[id] == nil { toolOrder.append(id) }
        toolUses[id] = use
    }

    // MARK: The end

    private func completed(_ o: JSONObject) {
        onEnd?()
        guard out.end() else { return }
        var meta = metadata
        if let t = threadID { meta["session_id"] = .string(t) }
        if !toolOrder.isEmpty { meta["tool_uses"] = .array(toolOrder.compactMap { toolUses[$0].map(JSONValue.object) }) }
        if let plan { meta["plan"] = plan }
        var reason = FinishReason.stop
        if !denials.isEmpty {
            meta["permission_denials"] = .array(denials)
            reason = .toolDenied
        }
        var usage = Self.usage(o["usage"])
        if let total = usage, let before = usageBefore {
            meta["thread_usage"] = Wire.json(total)
            usage = Usage(
                inputTokens: max(0, total.inputTokens - before.inputTokens),
                outputTokens: max(0, total.outputTokens - before.outputTokens),
                cacheReadTokens: max(0, total.cacheReadTokens - before.cacheReadTokens),
                cacheWriteTokens: max(0, total.cacheWriteTokens - before.cacheWriteTokens),
                reasoningTokens: max(0, total.reasoningTokens - before.reasoningTokens))
        }
        call.finish(Wire.Finish(finishReason: reason, usage: usage, model: model, id: threadID, metadata: meta))
    }

    /// turn.completed's usage (or a rollout's total_token_usage). OpenAI's
    /// input_tokens already include the cached ones; reasoning tokens are
    /// part of output_tokens.
    static func usage(_ v: JSONValue?) -> Usage? {
        guard case .object(let u)? = v else { return nil }
        return Usage(
            inputTokens: u["input_tokens"]?.intValue ?? 0, outputTokens: u["output_tokens"]?.intValue ?? 0,
            cacheReadTokens: u["cached_input_tokens"]?.intValue ?? 0, cacheWriteTokens: u["cache_write_input_tokens"]?.intValue ?? 0,
            reasoningTokens: u["reasoning_output_tokens"]?.intValue ?? 0)
    }

    /// A turn.failed message as an error kind. Codex 0.147 says only text:
    /// "unexpected status 401 Unauthorized: <body>, url: ..." for an HTTP
    /// error it does not retry, "exceeded retry limit, last status: 429 Too
    /// Many Requests" for one it gave up retrying, "We're currently
    /// experiencing high demand, ..." for a 500, "stream disconnected before
    /// completion: ..." when the connection failed or the stream broke (or
    /// the server sent response.failed), and the response body itself for a
    /// 400.
    static func error(_ message: String) -> ProviderError {
        let status = statusIn(message)
        var kind: ProviderError.Kind
        var type: String? = nil
        switch status {
        case 401?, 403?: kind = .authentication
        case 429?: kind = .rateLimited
        case let s? where s >= 500 || s == 408: kind = .providerUnavailable
        case _?: kind = .api
        case nil:
            if message.hasPrefix("stream disconnected before completion") || message.contains("error sending request") {
                kind = .providerUnavailable
                type = "stream_disconnected"
            } else if message.contains("experiencing high demand") {
                kind = .providerUnavailable
                type = "server_error"
            } else if message.contains("usage limit") || message.contains("Quota exceeded") {
                kind = .rateLimited
                type = "usage_limit"
            } else {
                kind = .api
            }
        }
        var text = message
        // A 400 comes back as the response body: say its message, keep its type.
        if message.hasPrefix("{"), let body = try? JSONValue.parse(message), let e = body["error"]?.objectValue {
            text = e["message"]?.stringValue ?? message
            type = e["code"]?.stringValue ?? e["type"]?.stringValue
        }
        return ProviderError(kind, "codex: " + text, status: status, providerType: type)
    }

    /// The HTTP status in "unexpected status 401 ..." or "last status: 429 ...".
    static func statusIn(_ message: String) -> Int? {
        for marker in ["unexpected status ", "last status: "] {
            guard let r = message.firstRange(of: marker) else { continue }
            let digits = message[r.upperBound...].prefix { $0.isNumber }
            if digits.count == 3, let s = Int(digits) { return s }
        }
        return nil
    }

    /// The process ended. Without turn.completed or turn.failed the turn
    /// failed: codex refusing its configuration is `config`, a clean exit
    /// `stream_closed`, anything else the exit itself.
    func exited(_ exit: ChildExit) {
        guard out.end() else { return }
        if let r = exit.stderrTail.firstRange(of: "Error loading config") {
            fail(ProviderError(.config, "codex refused its configuration: " + Wire.excerpt(String(exit.stderrTail[r.lowerBound...]), limit: 600)))
            return
        }
        fail(out.unfinished(exit, detail: lastError.map { ": " + $0 } ?? ""))
    }
}
