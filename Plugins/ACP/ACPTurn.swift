// One prompt turn of an ACP session: the `session/update` notifications the
// agent sends while it works, turned into plugin events, and the
// `session/prompt` response that ends it.
//
//   agent_message_chunk   text            -> TEXT
//   agent_thought_chunk   text            -> REASONING
//   tool_call             id, title, kind, status, rawInput
//                                         -> a notice; metadata tool_calls
//   tool_call_update      status, content -> a notice when it ends; metadata
//   plan                  entries         -> a notice; metadata plan
//   usage_update          used, size, cost (cumulative for the session)
//                                         -> metadata context; cost_usd
//   user_message_chunk, available_commands_update, current_mode_update,
//   config_option_update, session_info_update: not part of the answer
//
// A tool the agent started (status in_progress or completed) and text the
// caller received are side effects: a turn failing after them is never run
// again by the host (HeadlessOutput.marked).
import DescartesPluginKit

final class ACPTurn: @unchecked Sendable {
    let call: PluginCall
    let connection: ACPConnection
    let sessionID: String
    /// Decides the agent's permission requests.
    let approver: ACPApprover
    /// Extra metadata for the response (the session, the agent).
    let metadata: JSONObject
    /// Called once the turn has ended (on the runner's thread, or the
    /// canceller's), whatever the outcome.
    let onEnd: @Sendable (_ cancelledOrFailed: Bool) -> Void

    private struct State {
        var out: HeadlessOutput
        var emittedText = false
        var lastMessageID: String?
        var toolCalls: [JSONObject] = []
        var toolNames: [String] = []
        var plan: JSONValue?
        var context: JSONObject?
        var costTotal: Double?
        var denials: [JSONObject] = []
        /// Permission requests not answered yet, by JSON-RPC id.
        var asking: [String: JSONValue] = [:]
        var cancelled = false
        var ended = false
    }
    private let state: Lock<State>

    init(
        call: PluginCall, connection: ACPConnection, sessionID: String, approver: ACPApprover, metadata: JSONObject,
        onEnd: @escaping @Sendable (Bool) -> Void
    ) {
        self.call = call
        self.connection = connection
        self.sessionID = sessionID
        self.approver = approver
        self.metadata = metadata
        self.onEnd = onEnd
        state = Lock(State(out: HeadlessOutput(call: call, program: connection.program, finalEvent: "session/prompt response")))
    }

    // MARK: Updates (runner thread)

    func update(_ u: JSONObject) {
        switch u["sessionUpdate"]?.stringValue ?? "" {
        case "agent_message_chunk":
            guard let t = u["content"]?["text"]?.stringValue, !t.isEmpty else { return }
            let messageID = u["messageId"]?.stringValue
            let paragraph = state.withLock { s -> Bool? in
                if s.ended || s.out.ended { return nil }
                // A later message of the same turn starts a new paragraph.
                defer {
                    if !s.emittedText { s.out.did("written text") }
                    s.emittedText = true
                    if let messageID { s.lastMessageID = messageID }
                }
                return s.emittedText && messageID != nil && s.lastMessageID != nil && messageID != s.lastMessageID
            }
            guard let paragraph else { return }
            if paragraph { call.text("\n\n") }
            call.text(t)
        case "agent_thought_chunk":
            guard let t = u["content"]?["text"]?.stringValue, !t.isEmpty, live else { return }
            call.reasoning(t)
        case "tool_call":
            toolCall(u, new: true)
        case "tool_call_update":
            toolCall(u, new: false)
        case "plan":
            let entries = u["entries"]?.arrayValue ?? []
            state.withLock { $0.plan = .array(entries) }
            let text = entries.map { e in "[\(e["status"]?.stringValue ?? "?")] \(e["content"]?.stringValue ?? "")" }.joined(separator: "; ")
            if live { call.notice("info", "\(connection.program) plan: \(Wire.excerpt(text, limit: 500))") }
        case "usage_update":
            state.withLock { s in
                var c: JSONObject = [:]
                if let used = u["used"] { c["used"] = used }
                if let size = u["size"] { c["size"] = size }
                s.context = c
                if u["cost"]?["currency"]?.stringValue?.uppercased() == "USD", let a = u["cost"]?["amount"]?.doubleValue {
                    s.costTotal = a
                }
            }
        default:
            break
        }
    }

    private var live: Bool { state.withLock { !$0.ended && !$0.out.ended } }

    private func toolCall(_ u: JSONObject, new: Bool) {
        guard let id = u["toolCallId"]?.stringValue else { return }
        let (notice, _) = state.withLock { s -> (String?, Bool) in
            var entry: JSONObject
            let i = s.toolCalls.firstIndex { $0["id"]?.stringValue == id }
            if let i { entry = s.toolCalls[i] } else { entry = ["id": .string(id), "status": "pending"] }
            let before = entry["status"]?.stringValue
            if let t = u["title"]?.stringValue { entry["title"] = .string(t) }
            if let k = u["kind"]?.stringValue { entry["kind"] = .string(k) }
            if let st = u["status"]?.stringValue { entry["status"] = .string(st) }
            if let input = u["rawInput"], !input.isNull { entry["input"] = input }
            if let output = u["rawOutput"], !output.isNull { entry["output"] = .string(Wire.excerpt(output.stringValue ?? output.jsonText, limit: 2000)) }
            if let content = u["content"]?.arrayValue {
                let text = content.compactMap { $0["content"]?["text"]?.stringValue }.joined(separator: "\n")
                if !text.isEmpty { entry["result"] = .string(Wire.excerpt(text, limit: 2000)) }
            }
            if let i { s.toolCalls[i] = entry } else { s.toolCalls.append(entry) }
            let status = entry["status"]?.stringValue ?? "pending"
            let title = entry["title"]?.stringValue ?? id
            // The agent ran (or is running) the tool: not to be run twice.
            if status == "in_progress" || status == "completed" || (status == "failed" && before == "in_progress") {
                s.toolNames.append(title)
                var seen: Set<String> = []
                let names = s.toolNames.filter { seen.insert($0).inserted }
                s.out.did("run tools: " + names.joined(separator: ", "), replacing: "run tools: ")
            }
            if s.ended || s.out.ended { return (nil, false) }
            if new { return ("\(connection.program) tool call \(id) \(title) (\(entry["kind"]?.stringValue ?? "other")): \(status)", true) }
            if status != before, status == "completed" || status == "failed" {
                return ("\(connection.program) tool call \(id) \(title): \(status)", true)
            }
            return (nil, false)
        }
        if let notice { call.notice("info", Wire.excerpt(notice, limit: 500)) }
    }

    // MARK: Permission requests (runner thread)

    /// `session/request_permission`: the approver decides; the answer picks
    /// the agent's allow_once (or allow_always) option, or reject_once (or
    /// reject_always). A turn that is cancelled answers `cancelled`.
    func permission(id: JSONValue, _ params: JSONObject) {
        let key = id.jsonText
        let tool = params["toolCall"]?.objectValue ?? [:]
        let toolID = tool["toolCallId"]?.stringValue ?? ""
        let known = state.withLock { s -> JSONObject? in
            s.asking[key] = id
            return s.toolCalls.first { $0["id"]?.stringValue == toolID }
        }
        if state.withLock({ $0.cancelled || $0.ended }) { return answer(key, allow: nil, reason: nil, options: []) }
        let options = params["options"]?.arrayValue ?? []
        let title = tool["title"]?.stringValue ?? known?["title"]?.stringValue ?? toolID
        let input = tool["rawInput"] ?? known?["input"] ?? .object([:])
        let kind = tool["kind"]?.stringValue ?? known?["kind"]?.stringValue
        let question = ApprovalRequest(id: toolID.isEmpty ? key : toolID, tool: title, input: input, kind: kind)
        approver.decide(question, call) { [self] allow, reason in
            answer(key, allow: allow, reason: reason, options: options, question: question)
        }
    }

    /// Answers permission request `key` once: `allow` nil is `cancelled`.
    private func answer(_ key: String, allow: Bool?, reason: String?, options: [JSONValue], question: ApprovalRequest? = nil) {
        let id = state.withLock { s -> JSONValue? in
            guard let id = s.asking.removeValue(forKey: key) else { return nil }
            if allow == false, let q = question {
                var d: JSONObject = ["tool_call_id": .string(q.id), "tool_name": .string(q.tool), "input": q.input]
                if let reason { d["reason"] = .string(reason) }
                s.denials.append(d)
            }
            return id
        }
        guard let id else { return }
        func option(_ kinds: [String]) -> String? {
            for k in kinds { if let o = options.first(where: { $0["kind"]?.stringValue == k }), let id = o["optionId"]?.stringValue { return id } }
            return nil
        }
        let chosen: String?
        switch allow {
        case true?: chosen = option(["allow_once", "allow_always"])
        case false?: chosen = option(["reject_once", "reject_always"])
        case nil: chosen = nil
        }
        if let chosen {
            connection.respond(id, result: ["outcome": ["outcome": "selected", "optionId": .string(chosen)]])
        } else {
            // No option of that kind (or the turn was cancelled): nothing
            // is allowed.
            connection.respond(id, result: ["outcome": ["outcome": "cancelled"]])
        }
        if let q = question, let allow, live {
            call.notice("info", Wire.excerpt("\(connection.program) asked to run \(q.tool): \(allow ? "allowed" : "denied")\(reason.map { " (\($0))" } ?? "")", limit: 500))
        }
    }

    // MARK: Noise and stderr

    func noise(_ bytes: UnsafeRawBufferPointer) { state.withLock { _ = $0.out.object(bytes) } }
    func stderr(_ bytes: UnsafeRawBufferPointer) { state.withLock { $0.out.stderr(bytes) } }

    // MARK: The end

    /// The `session/prompt` response (runner thread).
    func finished(_ result: Result<JSONValue, ProviderError>) {
        let ending = state.withLock { s -> (JSONObject, Bool)? in
            guard !s.ended, s.out.end() else { return nil }
            s.ended = true
            return ([:], s.cancelled)
        }
        guard let (_, cancelled) = ending else { return }
        let doc: JSONValue
        switch result {
        case .failure(let e):
            call.fail(state.withLock { $0.out.marked(e) })
            onEnd(true)
            return
        case .success(let d): doc = d
        }
        let stop = doc["stopReason"]?.stringValue ?? ""
        var reason: FinishReason
        switch stop {
        case "end_turn": reason = .stop
        case "max_tokens": reason = .maxTokens
        case "max_turn_requests": reason = FinishReason(rawValue: "max_turns")
        case "refusal": reason = .contentFilter
        case "cancelled":
            call.fail(state.withLock { $0.out.marked(ProviderError(.cancelled, cancelled ? "the request was cancelled" : "\(connection.program) cancelled the turn (stopReason cancelled)")) })
            onEnd(true)
            return
        case "": reason = .stop
        default: reason = FinishReason(rawValue: stop)
        }
        let s = state.withLock { $0 }
        var meta = metadata
        meta["session_id"] = .string(sessionID)
        meta["stop_reason"] = .string(stop)
        if let n = connection.agentName { meta["agent"] = .string(n) }
        if !s.toolCalls.isEmpty { meta["tool_calls"] = .array(s.toolCalls.map { .object($0) }) }
        if let p = s.plan { meta["plan"] = p }
        if let c = s.context { meta["context"] = .object(c) }
        if !s.denials.isEmpty {
            meta["permission_denials"] = .array(s.denials.map { .object($0) })
            // The agent went on without a tool it was refused: not `stop`.
            if reason == .stop { reason = .toolDenied }
        }
        var cost: Double? = nil
        let before = connection.exchangeCost(s.costTotal)
        if let total = s.costTotal {
            meta["session_cost_usd"] = .number(total)
            cost = max(0, total - (before ?? 0))
        }
        call.finish(Wire.Finish(finishReason: reason, usage: Self.usage(doc["usage"]), costUSD: cost, metadata: meta))
        onEnd(false)
    }

    /// PromptResponse.usage (unstable in ACP; the Python SDK sends it):
    /// this turn's tokens.
    static func usage(_ v: JSONValue?) -> Usage? {
        guard case .object(let u)? = v else { return nil }
        return Usage(
            inputTokens: u["inputTokens"]?.intValue ?? 0, outputTokens: u["outputTokens"]?.intValue ?? 0,
            cacheReadTokens: u["cachedReadTokens"]?.intValue ?? 0, cacheWriteTokens: u["cachedWriteTokens"]?.intValue ?? 0,
            reasoningTokens: u["thoughtTokens"]?.intValue ?? 0)
    }

    /// The caller cancelled: `session/cancel`, every open permission
    /// request answered `cancelled` (the protocol requires both). The
    /// caller has its `cancelled` error from the kit already.
    func cancel() {
        let open = state.withLock { s -> [String]? in
            if s.ended || s.cancelled { return nil }
            s.cancelled = true
            return Array(s.asking.keys)
        }
        guard let open else { return }
        connection.notify("session/cancel", ["sessionId": .string(sessionID)])
        for k in open { answer(k, allow: nil, reason: nil, options: []) }
    }

    /// The process ended before the response.
    func exited(_ exit: ChildExit) {
        let e = state.withLock { s -> ProviderError? in
            guard !s.ended, s.out.end() else { return nil }
            s.ended = true
            return s.out.marked(s.out.unfinished(exit))
        }
        guard let e else { return }
        call.fail(e)
        onEnd(true)
    }
}

/// Decides the agent's permission requests.
protocol ACPApprover: Sendable {
    /// Calls `answer` once: allowed or not, with a reason for a denial.
    func decide(_ q: ApprovalRequest, _ call: PluginCall, _ answer: @escaping @Sendable (Bool, String?) -> Void)
}

/// The backend's `permissions` setting: every request allowed, or every
/// request denied.
struct FixedApprover: ACPApprover {
    let allow: Bool
    func decide(_ q: ApprovalRequest, _ call: PluginCall, _ answer: @escaping @Sendable (Bool, String?) -> Void) {
        answer(allow, allow ? nil : "denied by the backend's permissions setting (deny)")
    }
}

/// The request's approval policy, applied by the host (ABI 1.2): each
/// permission request becomes an APPROVAL event.
struct HostApprover: ACPApprover {
    func decide(_ q: ApprovalRequest, _ call: PluginCall, _ answer: @escaping @Sendable (Bool, String?) -> Void) {
        call.askApproval(q) { d in
            switch d {
            case .allow: answer(true, nil)
            case .deny(let reason): answer(false, reason)
            }
        }
    }
}
