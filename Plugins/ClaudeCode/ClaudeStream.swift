// Reads Claude Code's `--output-format stream-json` for one turn and turns
// it into plugin events. Line types seen from Claude Code 2.1.331:
//
//   system        subtype init (session_id, model, tools, claude_code_version),
//                 api_retry (attempt, retry_delay_ms, error_status), status,
//                 thinking_tokens, ...
//   stream_event  with --include-partial-messages: the API's SSE events
//                 (message_start, content_block_delta text_delta /
//                 thinking_delta, ...), tagged with api_message_id
//   assistant     each completed content block (text, thinking, tool_use) of
//                 the model's message; on an API error a synthetic message
//                 (model "<synthetic>", is_api_error_message) with the error
//   user          tool results Claude Code fed back to the model
//   result        the end of the turn: subtype success or error_*, is_error,
//                 api_error_status, usage, total_cost_usd (cumulative per
//                 process), model_usage_since_last_result, duration_ms, ...
//   control_response  the answer to an interrupt we sent
//
// Lines that are not JSON are stripped of escape codes and kept as
// diagnostics (notices, and the text of an error if the turn fails).
import DescartesPluginKit

final class ClaudeTurn: @unchecked Sendable {
    let call: PluginCall
    let partial: Bool
    /// The process's total cost before this turn (sessions), to report the
    /// turn's own cost.
    let costBefore: Double
    /// Called with the result line (on the runner's thread), success or not.
    var onResult: (@Sendable (JSONObject) -> Void)?
    /// Extra metadata for the response (session, spawn timing).
    var metadata: JSONObject = [:]
    /// The request carries an approval policy: can_use_tool control
    /// requests are asked of the host (ABI 1.2); otherwise denied.
    var asksHost = false
    /// The request asked for structured output (`--json-schema`): the
    /// answer is the result's `structured_output`, as one text delta at the
    /// end; the model's own text (what it said around the StructuredOutput
    /// tool call) is not the answer and is not delivered.
    var structured = false
    /// The reason a can_use_tool request is denied when the request has no
    /// policy.
    var noPolicyReason = "the request carries no approval policy"
    /// Writes a line to claude's stdin (control responses).
    var respond: (@Sendable ([UInt8]) -> Void)?
    /// Tool uses the host refused (answers come on the host's thread).
    private let hostDenials = Lock<[JSONValue]>([])

    // Runner thread only from here on.
    /// Lines, noise and stderr; the turn's end.
    private var out: HeadlessOutput
    private var sessionID: String?
    private var initModel: String?
    private var version: String?
    private var started = false
    private var streamedMessages: Set<String> = []
    private var lastTextMessage: String?
    private var emittedText = false
    private var lastModel: String?
    private var lastMessageID: String?
    private var toolUses: [JSONObject] = []
    private var apiErrorText: String?
    private var lastRetryDelayMs: Int?
    private var toolNames: [String] = []

    static func distinct(_ names: [String]) -> [String] {
        var seen: Set<String> = []
        return names.filter { seen.insert($0).inserted }
    }

    private func fail(_ e: ProviderError) { call.fail(out.marked(e)) }

    init(call: PluginCall, partial: Bool, costBefore: Double = 0) {
        self.call = call
        self.partial = partial
        self.costBefore = costBefore
        out = HeadlessOutput(call: call, program: "claude", finalEvent: "result")
    }

    // MARK: Lines

    func line(_ bytes: UnsafeRawBufferPointer) {
        // Lines that are not JSON become notices, and part of the error if
        // the turn fails.
        guard let o = out.object(bytes) else { return }
        switch o["type"]?.stringValue ?? "" {
        case "system": system(o)
        case "stream_event": if partial && isTopLevel(o) { streamEvent(o) }
        case "assistant": if isTopLevel(o) { assistant(o) }
        case "user": if isTopLevel(o) { user(o) }
        case "result": result(o)
        case "control_request": controlRequest(o)
        default: break  // control_response, rate_limit_event, later additions
        }
    }

    func stderr(_ bytes: UnsafeRawBufferPointer) { out.stderr(bytes) }

    /// Sub-agents' messages carry the tool use that started them; only the
    /// main conversation is the answer.
    private func isTopLevel(_ o: JSONObject) -> Bool {
        switch o["parent_tool_use_id"] {
        case nil, .null?: return true
        default: return false
        }
    }

    private func system(_ o: JSONObject) {
        switch o["subtype"]?.stringValue {
        case "init":
            sessionID = o["session_id"]?.stringValue ?? sessionID
            initModel = o["model"]?.stringValue ?? initModel
            version = o["claude_code_version"]?.stringValue ?? version
            if !started && !out.ended {
                started = true
                call.start(id: sessionID, model: initModel)
            }
        case "api_retry":
            let attempt = o["attempt"]?.intValue ?? 0
            let maxRetries = o["max_retries"]?.intValue ?? 0
            lastRetryDelayMs = o["retry_delay_ms"]?.intValue
            let status = o["error_status"]?.intValue.map { "status \($0)" } ?? (o["error"]?.stringValue ?? "an error")
            if !out.ended {
                call.notice(
                    "warning",
                    "claude: API request failed (\(status)); retry \(attempt) of \(maxRetries) in \(lastRetryDelayMs ?? 0) ms")
            }
        default:
            break
        }
    }

    private func streamEvent(_ o: JSONObject) {
        guard case .object(let e)? = o["event"] else { return }
        let messageID = o["api_message_id"]?.stringValue ?? lastMessageID ?? ""
        switch e["type"]?.stringValue {
        case "message_start":
            let id = e["message"]?["id"]?.stringValue ?? messageID
            streamedMessages.insert(id)
            lastMessageID = id
        case "content_block_delta":
            streamedMessages.insert(messageID)
            guard let d = e["delta"]?.objectValue else { return }
            switch d["type"]?.stringValue {
            case "text_delta": if let t = d["text"]?.stringValue { emitText(t, message: messageID) }
            case "thinking_delta": if let t = d["thinking"]?.stringValue, !t.isEmpty, !out.ended { call.reasoning(t) }
            default: break  // input_json_delta: the tool use arrives whole in the assistant line
            }
        default:
            break
        }
    }

    private func emitText(_ t: String, message: String) {
        guard !t.isEmpty, !out.ended, !structured else { return }
        // Text of a later message of the same turn (after tool use) starts a
        // new paragraph.
        if emittedText && lastTextMessage != message { call.text("\n\n") }
        call.text(t)
        if !emittedText { out.did("written text") }
        emittedText = true
        lastTextMessage = message
    }

    private func assistant(_ o: JSONObject) {
        guard case .object(let m)? = o["message"] else { return }
        let model = m["model"]?.stringValue
        if model == "<synthetic>" || o["is_api_error_message"]?.boolValue == true {
            // Claude Code's rendering of an API error; the result follows.
            apiErrorText = m["content"]?[0]?["text"]?.stringValue ?? apiErrorText
            return
        }
        let id = m["id"]?.stringValue ?? ""
        if let model { lastModel = model }
        if !id.isEmpty { lastMessageID = id }
        let fromStream = partial && streamedMessages.contains(id)
        for block in m["content"]?.arrayValue ?? [] {
            switch block["type"]?.stringValue {
            case "text":
                if !fromStream, let t = block["text"]?.stringValue { emitText(t, message: id) }
            case "thinking":
                if !fromStream, let t = block["thinking"]?.stringValue, !t.isEmpty, !out.ended { call.reasoning(t) }
            case "tool_use":
                let input = block["input"] ?? [:]
                let name = block["name"]?.stringValue ?? ""
                toolUses.append([
                    "id": block["id"] ?? "", "name": .string(name), "input": input,
                ])
                // Claude Code runs the tool as soon as it has this line: a
                // turn failing after it must not run again.
                toolNames.append(name)
                out.did("run tools: " + Self.distinct(toolNames).joined(separator: ", "), replacing: "run tools: ")
                if !out.ended { call.notice("info", "claude used tool \(name) \(Wire.excerpt(input.jsonText, limit: 200))") }
            default:
                break
            }
        }
    }

    private func user(_ o: JSONObject) {
        for block in o["message"]?["content"]?.arrayValue ?? [] where block["type"]?.stringValue == "tool_result" {
            guard let id = block["tool_use_id"]?.stringValue, let i = toolUses.firstIndex(where: { $0["id"]?.stringValue == id }) else {
                continue
            }
            var text = ""
            switch block["content"] {
            case .string(let s)?: text = s
            case .array(let parts)?: text = parts.compactMap { $0["text"]?.stringValue }.joined(separator: "\n")
            default: break
            }
            toolUses[i]["is_error"] = .bool(block["is_error"]?.boolValue ?? false)
            toolUses[i]["result"] = .string(Wire.excerpt(text, limit: 2000))
        }
    }

    // MARK: Approvals

    /// `can_use_tool` (with `--permission-prompt-tool stdio`): the host's
    /// policy decides; the answer is a control_response with behavior
    /// allow (the input unchanged) or deny (the reason as its message).
    private func controlRequest(_ o: JSONObject) {
        guard let req = o["request"]?.objectValue, req["subtype"]?.stringValue == "can_use_tool",
            let id = o["request_id"]?.stringValue
        else { return }
        let tool = req["tool_name"]?.stringValue ?? ""
        let input = req["input"] ?? .object([:])
        let respond = self.respond
        let denials = hostDenials
        let answer: @Sendable (ApprovalDecision) -> Void = { d in
            let inner: JSONValue
            switch d {
            case .allow: inner = ["behavior": "allow", "updatedInput": input]
            case .deny(let reason):
                inner = ["behavior": "deny", "message": .string(reason)]
                denials.withLock { $0.append(["tool_name": .string(tool), "tool_use_id": req["tool_use_id"] ?? .null, "tool_input": input, "reason": .string(reason)]) }
            }
            let line: JSONValue = [
                "type": "control_response", "response": ["subtype": "success", "request_id": .string(id), "response": inner],
            ]
            var bytes = line.jsonBytes
            bytes.append(0x0A)
            respond?(bytes)
        }
        if asksHost {
            call.askApproval(ApprovalRequest(id: id, tool: tool, input: input)) { answer($0) }
        } else {
            answer(.deny(reason: noPolicyReason))
        }
    }

    // MARK: The end

    private func result(_ o: JSONObject) {
        onResult?(o)
        guard out.end() else { return }
        let subtype = o["subtype"]?.stringValue ?? "success"
        let isError = o["is_error"]?.boolValue ?? false
        let text = o["result"]?.stringValue ?? apiErrorText ?? ""
        let errors = o["errors"]?.arrayValue?.compactMap(\.stringValue) ?? []

        if let status = o["api_error_status"]?.intValue {
            fail(apiError(status: status, type: o["api_error_type"]?.stringValue, message: text.isEmpty ? "API error \(status)" : text))
            return
        }
        var reason: FinishReason
        switch subtype {
        case "success":
            if isError {
                fail(statuslessError(o, text: text))
                return
            }
            reason = finishReason(o["stop_reason"]?.stringValue)
        case "error_max_turns":
            // The turn limit cut the agent off; what it said so far, its
            // usage and cost are still the answer.
            reason = FinishReason(rawValue: "max_turns")
        case "error_max_budget_usd":
            reason = FinishReason(rawValue: "max_budget")
        default:
            let message = (errors + [text]).filter { !$0.isEmpty }.joined(separator: "; ")
            fail(ProviderError(.backend, "Claude Code ended the turn with \(subtype)\(message.isEmpty ? "" : ": " + message)", providerType: subtype))
            return
        }
        var meta = metadata
        meta["session_id"] = o["session_id"] ?? sessionID.map { .string($0) } ?? .null
        meta["subtype"] = .string(subtype)
        if let v = version { meta["claude_code_version"] = .string(v) }
        for k in ["num_turns", "duration_ms", "duration_api_ms", "stop_reason", "terminal_reason", "total_cost_usd"] {
            if let v = o[k], !v.isNull { meta[k] = v }
        }
        // The denials this plugin answered carry their reason; Claude
        // Code's own list (tool_name, tool_use_id, tool_input) has none.
        let refused = hostDenials.withLock { $0 }
        if let denials = refused.isEmpty ? o["permission_denials"]?.arrayValue : refused, !denials.isEmpty {
            meta["permission_denials"] = .array(denials)
            // A turn that ended without a tool it was refused did not do
            // what was asked: not `stop`.
            if reason == .stop { reason = .toolDenied }
        }
        if !errors.isEmpty { meta["errors"] = .array(errors.map { .string($0) }) }
        if !toolUses.isEmpty { meta["tool_uses"] = .array(toolUses.map { .object($0) }) }
        if structured {
            // The structured answer; without one (the model never called the
            // tool), the result's text, for the host's check to report.
            if let v = o["structured_output"], !v.isNull { call.text(v.jsonText) } else if !text.isEmpty { call.text(text) }
        }
        call.finish(
            Wire.Finish(
                finishReason: reason, usage: usage(o["usage"]), model: lastModel ?? initModel, id: lastMessageID,
                costUSD: cost(o), metadata: meta))
    }

    private func finishReason(_ stop: String?) -> FinishReason {
        switch stop {
        case nil, "end_turn"?, "stop_sequence"?: return .stop
        case "max_tokens"?: return .maxTokens
        case "refusal"?: return .contentFilter
        case "tool_use"?: return .stop  // Claude Code ran the tools itself
        case let other?: return FinishReason(rawValue: other)
        }
    }

    /// The turn's cost: the per-result model usage when present, else the
    /// difference of the process's running total.
    private func cost(_ o: JSONObject) -> Double? {
        if case .object(let per)? = o["model_usage_since_last_result"], !per.isEmpty {
            return per.reduce(0.0) { $0 + ($1.value["costUSD"]?.doubleValue ?? 0) }
        }
        guard let total = o["total_cost_usd"]?.doubleValue else { return nil }
        return max(0, total - costBefore)
    }

    private func usage(_ v: JSONValue?) -> Usage? {
        guard case .object(let u)? = v else { return nil }
        let input = u["input_tokens"]?.intValue ?? 0
        let cacheRead = u["cache_read_input_tokens"]?.intValue ?? 0
        let cacheWrite = u["cache_creation_input_tokens"]?.intValue ?? 0
        return Usage(
            inputTokens: input + cacheRead + cacheWrite, outputTokens: u["output_tokens"]?.intValue ?? 0,
            cacheReadTokens: cacheRead, cacheWriteTokens: cacheWrite,
            reasoningTokens: u["output_tokens_details"]?["thinking_tokens"]?.intValue ?? 0)
    }

    /// Markers of a failed connection in Claude Code's error text (Node's
    /// error codes and its own wording), for versions that do not say
    /// `api_error: connection_failed`.
    static let connectionMarkers = [
        "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "EPIPE",
        "Connection error", "Connection refused", "Connection dropped", "socket hang up", "fetch failed",
    ]

    /// An error `result` without an HTTP status. Claude Code 2.1.331 says
    /// `"api_error_status": null, "api_error": "connection_failed"` (and
    /// "API Error: Connection refused ... (ECONNREFUSED)" or "Connection
    /// dropped (ECONNRESET)") when it could not reach the API: the provider
    /// is unavailable, which is retried (when nothing ran). Anything else is
    /// `api`, typed with `api_error` when there is one (never the subtype
    /// "success").
    private func statuslessError(_ o: JSONObject, text: String) -> ProviderError {
        let apiError = o["api_error"]?.stringValue
        let message = text.isEmpty ? "Claude Code reported an error without a message" : text
        if apiError == "connection_failed" || Self.connectionMarkers.contains(where: { text.contains($0) }) {
            return ProviderError(.providerUnavailable, message, providerType: apiError ?? "connection_failed")
        }
        return ProviderError(.api, message, providerType: apiError ?? o["terminal_reason"]?.stringValue)
    }

    private func apiError(status: Int, type: String?, message: String) -> ProviderError {
        let kind: ProviderError.Kind
        switch status {
        case 401, 403: kind = .authentication
        case 429: kind = .rateLimited
        case 408, 500, 502, 503, 504, 529: kind = .providerUnavailable
        default: kind = status >= 500 ? .providerUnavailable : .api
        }
        return ProviderError(
            kind, message, status: status, providerType: type,
            retryAfter: kind == .rateLimited ? lastRetryDelayMs.map { .milliseconds($0) } : nil)
    }

    /// The process ended. Without a result line the turn failed:
    /// `stream_closed` for a clean exit, otherwise the exit itself.
    func exited(_ exit: ChildExit) {
        guard out.end() else { return }
        fail(out.unfinished(exit, detail: apiErrorText.map { ": " + $0 } ?? ""))
    }
}
