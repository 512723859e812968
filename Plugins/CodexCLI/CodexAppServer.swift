// A turn through `codex app-server` (JSON-RPC 2.0 over stdio, protocol v2 of
// codex 0.147), for a request whose approval policy the host applies:
// `codex exec` never asks (a command needing approval is refused), the app
// server asks its client. One process per turn:
//
//   codex app-server [-c ...]        the same -c overrides as codex exec,
//                                    approval_policy "untrusted"
//   -> initialize {clientInfo}       <- {userAgent, codexHome, ...}
//   -> initialized (notification)
//   -> thread/start {cwd, ephemeral} (or thread/resume {threadId}: a session)
//   -> turn/start {threadId, input: [{type: text, ...}], outputSchema?}
//   <- item/started, item/completed  {item: {type: agentMessage | reasoning |
//                                    commandExecution | fileChange |
//                                    mcpToolCall | webSearch | ...}}
//   <- item/agentMessage/delta, item/reasoning/summaryTextDelta: token by token
//   <- item/commandExecution/requestApproval, item/fileChange/requestApproval
//      (requests to us): an APPROVAL event each; answered {decision: accept
//      | decline}
//   <- thread/tokenUsage/updated {tokenUsage: {total, last}}
//   <- error {error, willRetry}, turn/completed {turn: {status, error}}
//   stdin closed: the server exits.
//
// Under approval_policy "untrusted" codex asks before every command that is
// not on its list of known read-only ones (ls, cat, ...), and before file
// changes outside what the sandbox allows. The schema these names come from:
// `codex app-server generate-json-schema` / `generate-ts` (0.147).
import DescartesPluginKit

extension CodexBackend {
    /// One turn through `codex app-server`, its approvals asked of the host.
    func startAppServer(
        _ request: ModelRequest, _ call: PluginCall, _ options: CodexOptions, _ input: CodexInput,
        released: (@Sendable () -> Void)? = nil
    ) throws(ProviderError) {
        if let p = settings.profile {
            throw ProviderError(
                .unsupportedFeature,
                "codex-cli: key 'profile' ('\(p)') applies to codex exec only; a request with an approval policy runs codex app-server, which takes no profile (give its settings as keys)")
        }
        let program = try agent.program()
        var args = ["app-server"]
        args += codexConfigArguments(settings: settings, options: options, system: input.system, approvalPolicy: "untrusted")
        let model = request.model ?? settings.model
        if let model { args += ["-c", "model=" + tomlString(model)] }
        args += agent.config.args
        var schema: JSONValue? = nil
        switch request.responseFormat {
        case .text: break
        case .json:
            throw ProviderError(
                .unsupportedFeature,
                "codex-cli takes a JSON schema for structured output, not free JSON: give response_format json_schema")
        case .jsonSchema(_, let s, _): schema = s
        }
        var metadata: JSONObject = ["transport": "app-server"]
        if options.sessionID != nil { metadata["session_resumed"] = true } else if options.startSession { metadata["session_resumed"] = false }
        let turn = CodexAppTurn(call: call, model: model, metadata: metadata)
        let cwd = options.cwd ?? agent.config.cwd
        let grace = agent.config.exitGrace
        let spec = agent.spec(program, arguments: args, keepInputOpen: true, deadline: agent.config.deadline(request), cwd: options.cwd)
        let link = try agent.start(call, spec) { link in
            turn.onEnd = {
                link.child?.closeInput()
                link.done(exitWithin: grace)
            }
            return ChildHandlers(
                stdout: { turn.line($0) }, stderr: { turn.stderr($0) },
                exit: { exit in
                    turn.exited(exit)
                    released?()
                })
        }
        // The child is attached now: what the peer writes reaches it.
        turn.begin(
            write: { link.child?.write($0) }, prompt: input.prompt, cwd: cwd, ephemeral: !options.persistent, resume: options.sessionID,
            schema: schema)
    }
}

/// Reads one app-server turn and turns it into plugin events.
final class CodexAppTurn: @unchecked Sendable {
    let call: PluginCall
    let model: String?
    let metadata: JSONObject
    /// Called once the turn has its final event (the server may exit).
    var onEnd: (@Sendable () -> Void)?

    private struct State {
        var out: HeadlessOutput
        var peer: JSONRPCPeer?
        var threadID: String?
        var turnID: String?
        var lastMessage: String?
        var emittedText = false
        /// Items by id: a file change's paths for its approval question.
        var items: [String: JSONObject] = [:]
        var toolUses: [String: JSONObject] = [:]
        var toolOrder: [String] = []
        var ran: [String] = []
        var changed: [String] = []
        var declined: Set<String> = []
        var denials: [JSONValue] = []
        var plan: JSONValue?
        /// Per turn id: the thread's token total before the turn's first
        /// model request, and after its latest. (Resuming a thread reports
        /// the thread's total under its last turn's id before this turn
        /// starts.)
        var usage: [String: (before: Usage, total: Usage)] = [:]
        var lastError: String?
    }
    private let state: Lock<State>

    init(call: PluginCall, model: String?, metadata: JSONObject) {
        self.call = call
        self.model = model
        self.metadata = metadata
        state = Lock(State(out: HeadlessOutput(call: call, program: "codex app-server", finalEvent: "turn/completed")))
    }

    // MARK: The handshake and the turn

    func begin(write: @escaping @Sendable ([UInt8]) -> Void, prompt: String, cwd: String?, ephemeral: Bool, resume: String?, schema: JSONValue?) {
        let peer = JSONRPCPeer(write: write)
        state.withLock { $0.peer = peer }
        peer.request("initialize", ["clientInfo": ["name": "descartes", "title": "Descartes", "version": "1.0.0"], "capabilities": .null]) {
            [self] r in
            guard case .success = r else { return failed("initialize", r) }
            peer.notify("initialized")
            var params: JSONObject = [:]
            if let cwd { params["cwd"] = .string(cwd) }
            // The -c overrides say it too; a thread resumed from disk keeps
            // its own otherwise.
            params["approvalPolicy"] = "untrusted"
            let method: String
            if let resume {
                method = "thread/resume"
                params["threadId"] = .string(resume)
            } else {
                method = "thread/start"
                params["ephemeral"] = .bool(ephemeral)
            }
            peer.request(method, params) { [self] r in
                guard case .success(let v) = r, let thread = v["thread"]?["id"]?.stringValue else { return failed(method, r) }
                let live = state.withLock { s -> Bool in
                    s.threadID = thread
                    return !s.out.ended
                }
                if live { call.start(id: thread, model: v["model"]?.stringValue ?? model) }
                var turn: JSONObject = [
                    "threadId": .string(thread), "input": [["type": "text", "text": .string(prompt), "text_elements": []]],
                ]
                if let schema { turn["outputSchema"] = schema }
                peer.request("turn/start", turn) { [self] r in
                    guard case .success(let v) = r else { return failed("turn/start", r) }
                    state.withLock { $0.turnID = v["turn"]?["id"]?.stringValue }
                }
            }
        }
    }

    /// A request of ours the server refused (or the process ended first:
    /// the exit reports that).
    private func failed(_ method: String, _ r: Result<JSONValue, JSONRPCPeer.Failure>) {
        let e: ProviderError
        switch r {
        case .failure(let f) where f.ended: return
        case .failure(let f):
            var text = "codex app-server answered \(method) with error \(f.code): \(f.message)"
            if let d = f.data, !d.isNull { text += " (\(Wire.excerpt(d.jsonText, limit: 300)))" }
            // An unknown thread for thread/resume, bad params: the caller's.
            let kind: ProviderError.Kind = f.code == -32600 || f.code == -32602 || method == "thread/resume" ? .config : .api
            if method == "thread/resume" { text += "; request option 'session_id' names no thread codex can resume" }
            e = ProviderError(kind, text, providerType: "jsonrpc_\(f.code)")
        case .success(let v):
            e = ProviderError(.invalidResponse, "codex app-server answered \(method) without what it needs: \(Wire.excerpt(v.jsonText, limit: 300))")
        }
        end { $0.out.marked(e) }.map { call.fail($0) }
    }

    /// Ends the turn once: `make` builds its final error (or nil to finish
    /// with `finish`), under the lock; the server is then let go.
    private func end(_ make: (inout State) -> ProviderError?) -> ProviderError? {
        let e = state.withLock { s -> ProviderError?? in
            guard s.out.end() else { return .none }
            return .some(make(&s))
        }
        guard let e else { return nil }
        onEnd?()
        return e
    }

    // MARK: The server's output (runner thread)

    func stderr(_ bytes: UnsafeRawBufferPointer) { state.withLock { $0.out.stderr(bytes) } }

    func line(_ bytes: UnsafeRawBufferPointer) {
        let (o, peer) = state.withLock { s in (s.out.object(bytes), s.peer) }
        guard let o, let peer, let incoming = peer.receive(o) else { return }
        switch incoming {
        case .request(let id, let method, let params): serverRequest(peer, id, method, params)
        case .notification(let method, let params): notification(method, params)
        }
    }

    private var live: Bool { state.withLock { !$0.out.ended } }

    private func notification(_ method: String, _ p: JSONObject) {
        switch method {
        case "item/agentMessage/delta":
            guard let t = p["delta"]?.stringValue, !t.isEmpty else { return }
            text(t, item: p["itemId"]?.stringValue ?? "")
        case "item/reasoning/summaryTextDelta":
            if let t = p["delta"]?.stringValue, !t.isEmpty, live { call.reasoning(t) }
        case "item/started": if let item = p["item"]?.objectValue { self.item(item, completed: false) }
        case "item/completed": if let item = p["item"]?.objectValue { self.item(item, completed: true) }
        case "thread/tokenUsage/updated":
            guard let u = p["tokenUsage"]?.objectValue, let total = Self.usage(u["total"]), let turn = p["turnId"]?.stringValue else { return }
            state.withLock { s in
                let before = s.usage[turn]?.before ?? total.minus(Self.usage(u["last"]) ?? Usage())
                s.usage[turn] = (before, total)
            }
        case "turn/plan/updated":
            if let plan = p["plan"] { state.withLock { $0.plan = plan } }
        case "error":
            let message = p["error"]?["message"]?.stringValue ?? ""
            state.withLock { $0.lastError = message }
            if live && !message.isEmpty { call.notice("warning", "codex: \(message)") }
        case "warning", "configWarning", "deprecationNotice":
            let message = p["message"]?.stringValue ?? p["summary"]?.stringValue ?? ""
            if live && !message.isEmpty { call.notice("warning", "codex: \(Wire.excerpt(message, limit: 500))") }
        case "turn/completed":
            if let turn = p["turn"]?.objectValue { completed(turn) }
        default:
            break  // thread/started, turn/started, status changes, later additions
        }
    }

    private func text(_ t: String, item: String) {
        let paragraph = state.withLock { s -> Bool? in
            if s.out.ended { return nil }
            // Each message of the turn (before and after its commands) is
            // part of the answer, a paragraph each.
            defer {
                if !s.emittedText { s.out.did("written text") }
                s.emittedText = true
                s.lastMessage = item
            }
            return s.emittedText && s.lastMessage != item
        }
        guard let paragraph else { return }
        if paragraph { call.text("\n\n") }
        call.text(t)
    }

    private func item(_ item: JSONObject, completed: Bool) {
        let id = item["id"]?.stringValue ?? ""
        let status = item["status"]?.stringValue
        switch item["type"]?.stringValue ?? "" {
        case "agentMessage":
            // Deltas carry the text; a message that came whole still counts.
            guard completed, let t = item["text"]?.stringValue, !t.isEmpty,
                state.withLock({ $0.lastMessage != id })
            else { return }
            text(t, item: id)
        case "commandExecution":
            var use: JSONObject = ["id": .string(id), "type": "command_execution", "command": .string(Self.command(item))]
            if let st = status { use["status"] = .string(st) }
            if let c = item["exitCode"], !c.isNull { use["exit_code"] = c }
            if let output = item["aggregatedOutput"]?.stringValue, !output.isEmpty { use["output"] = .string(Wire.excerpt(output, limit: 2000)) }
            record(id, item, use)
            // It ran (the approval was granted, or it needed none).
            if completed && status != "declined" { ran(id, command: Self.command(item)) }
        case "fileChange":
            var use: JSONObject = ["id": .string(id), "type": "file_change", "changes": item["changes"] ?? []]
            if let st = status { use["status"] = .string(st) }
            record(id, item, use)
            if completed && status == "completed" {
                let paths = (item["changes"]?.arrayValue ?? []).compactMap { $0["path"]?.stringValue }
                changed(paths)
            }
        case "mcpToolCall":
            let name = "\(item["server"]?.stringValue ?? "?").\(item["tool"]?.stringValue ?? "?")"
            var use: JSONObject = ["id": .string(id), "type": "mcp_tool_call", "name": .string(name)]
            for k in ["arguments", "status", "error"] { if let v = item[k], !v.isNull { use[k] = v } }
            record(id, item, use)
            if !completed { ran(id, command: name) }
        case "webSearch":
            record(id, item, ["id": .string(id), "type": "web_search", "query": item["query"] ?? ""])
        default:
            break  // userMessage, reasoning (its deltas came), plan, ...
        }
    }

    private func record(_ id: String, _ item: JSONObject, _ use: JSONObject) {
        state.withLock { s in
            if s.toolUses[id] == nil { s.toolOrder.append(id) }
            s.toolUses[id] = use
            s.items[id] = item
        }
    }

    /// A command (or MCP tool) ran: a side effect, and a notice.
    private func ran(_ id: String, command: String) {
        let notice = state.withLock { s -> Bool in
            guard !s.ran.contains(id) else { return false }
            s.ran.append(id)
            let names = s.ran.compactMap { s.toolUses[$0]?["command"]?.stringValue ?? s.toolUses[$0]?["name"]?.stringValue }
            s.out.did("run commands: " + names.joined(separator: "; "), replacing: "run commands: ")
            return !s.out.ended
        }
        if notice { call.notice("info", "codex ran \(Wire.excerpt(command, limit: 200))") }
    }

    private func changed(_ paths: [String]) {
        let live = state.withLock { s -> Bool in
            for p in paths where !s.changed.contains(p) { s.changed.append(p) }
            if !s.changed.isEmpty { s.out.did("changed files: " + s.changed.joined(separator: ", "), replacing: "changed files: ") }
            return !s.out.ended
        }
        if live { call.notice("info", "codex changed \(paths.joined(separator: ", "))") }
    }

    /// The command the model asked for: codex wraps it (`/bin/bash -lc
    /// '<command>'`); its parsed actions hold it as written.
    static func command(_ o: JSONObject) -> String {
        let actions = (o["commandActions"]?.arrayValue ?? []).compactMap { $0["command"]?.stringValue }
        if actions.count == 1 { return actions[0] }
        return o["command"]?.stringValue ?? ""
    }

    // MARK: Approvals

    /// The server asks: a command or a file change becomes an APPROVAL
    /// event; the host's decision goes back as accept or decline. Requests
    /// this client does not take (user input, MCP elicitation, more
    /// permissions) are refused, which codex takes as a no.
    private func serverRequest(_ peer: JSONRPCPeer, _ rpcID: JSONValue, _ method: String, _ p: JSONObject) {
        let itemID = p["itemId"]?.stringValue ?? rpcID.jsonText
        let question: ApprovalRequest
        switch method {
        case "item/commandExecution/requestApproval":
            var input: JSONObject = ["command": .string(Self.command(p))]
            if let raw = p["command"]?.stringValue { input["shell_command"] = .string(raw) }
            for k in ["cwd", "reason"] { if let v = p[k], !v.isNull { input[k] = v } }
            question = ApprovalRequest(id: itemID, tool: "exec_command", input: .object(input), kind: "execute")
        case "item/fileChange/requestApproval":
            let changes = state.withLock { $0.items[itemID]?["changes"] } ?? []
            let paths = (changes.arrayValue ?? []).compactMap { $0["path"]?.stringValue }
            var input: JSONObject = ["changes": changes]
            // A rule's glob sees the path only when there is one.
            if paths.count == 1 { input["file_path"] = .string(paths[0]) } else { input["paths"] = .array(paths.map { .string($0) }) }
            for k in ["reason", "grantRoot"] { if let v = p[k], !v.isNull { input[k] = v } }
            question = ApprovalRequest(id: itemID, tool: "apply_patch", input: .object(input), kind: "edit")
        default:
            peer.respond(rpcID, code: -32601, message: "descartes does not answer \(method)")
            if live { call.notice("warning", "codex asked \(method), which this client does not answer: refused") }
            return
        }
        call.askApproval(question) { [self] decision in
            let allowed = decision.allowed
            let live = state.withLock { s -> Bool in
                if case .deny(let reason) = decision {
                    s.declined.insert(itemID)
                    s.denials.append([
                        "tool_call_id": .string(itemID), "tool_name": .string(question.tool), "input": question.input, "reason": .string(reason),
                    ])
                }
                return !s.out.ended
            }
            peer.respond(rpcID, result: ["decision": allowed ? "accept" : "decline"])
            // Running from now on: the turn is not to be run twice.
            if allowed && question.tool == "exec_command" { ran(itemID, command: question.subject) }
            if allowed && question.tool == "apply_patch" {
                state.withLock { $0.out.did("changed files: " + question.subject, replacing: "changed files: ") }
            }
            if live {
                var text = "codex asked to run \(question.tool) \(question.subject): \(allowed ? "allowed" : "denied")"
                if case .deny(let reason) = decision { text += " (\(reason))" }
                call.notice("info", Wire.excerpt(text, limit: 500))
            }
        }
    }

    // MARK: The end

    private func completed(_ turn: JSONObject) {
        let status = turn["status"]?.stringValue ?? ""
        var finish: Wire.Finish? = nil
        let e = end { s -> ProviderError? in
            switch status {
            case "completed":
                var meta = metadata
                if let t = s.threadID { meta["session_id"] = .string(t) }
                let uses = s.toolOrder.compactMap { s.toolUses[$0].map(JSONValue.object) }
                if !uses.isEmpty { meta["tool_uses"] = .array(uses) }
                if let plan = s.plan { meta["plan"] = plan }
                var reason = FinishReason.stop
                if !s.denials.isEmpty {
                    meta["permission_denials"] = .array(s.denials)
                    reason = .toolDenied
                }
                var usage: Usage? = nil
                if let id = turn["id"]?.stringValue, let u = s.usage[id] {
                    usage = u.total.minus(u.before)
                    if u.before != Usage() { meta["thread_usage"] = Wire.json(u.total) }
                }
                finish = Wire.Finish(finishReason: reason, usage: usage, model: model, id: s.threadID, metadata: meta)
                return nil
            case "interrupted":
                return s.out.marked(ProviderError(.cancelled, "codex interrupted the turn"))
            default:
                let err = turn["error"]?.objectValue
                let message = err?["message"]?.stringValue ?? s.lastError ?? "codex reported a failed turn without a message"
                return s.out.marked(Self.error(message, info: err?["codexErrorInfo"]))
            }
        }
        if let e { call.fail(e) } else if let finish { call.finish(finish) }
    }

    /// A failed turn's error: the HTTP status codex forwards in
    /// `codexErrorInfo` when it has one, else what its message says
    /// (`CodexTurn.error`, as for codex exec).
    static func error(_ message: String, info: JSONValue?) -> ProviderError {
        var e = CodexTurn.error(message)
        var status: Int? = nil
        if case .object(let o)? = info { status = o.members.compactMap { $0.value["httpStatusCode"]?.intValue }.first }
        let name = info?.stringValue ?? info?.objectValue?.keys.first
        switch (status, name) {
        case (401?, _), (403?, _), (_, "unauthorized"?): e.kind = .authentication
        case (429?, _), (_, "usageLimitExceeded"?): e.kind = .rateLimited
        case (let s?, _) where s >= 500 || s == 408: e.kind = .providerUnavailable
        case (_, "serverOverloaded"?), (_, "internalServerError"?): e.kind = .providerUnavailable
        case (_?, _): e.kind = .api
        default: break
        }
        if let status { e.status = status }
        if e.providerType == nil, let name { e.providerType = name }
        return e
    }

    /// A TokenUsageBreakdown (camelCase) as usage: input includes the
    /// cached tokens, output the reasoning ones.
    static func usage(_ v: JSONValue?) -> Usage? {
        guard case .object(let u)? = v else { return nil }
        return Usage(
            inputTokens: u["inputTokens"]?.intValue ?? 0, outputTokens: u["outputTokens"]?.intValue ?? 0,
            cacheReadTokens: u["cachedInputTokens"]?.intValue ?? 0, cacheWriteTokens: u["cacheWriteInputTokens"]?.intValue ?? 0,
            reasoningTokens: u["reasoningOutputTokens"]?.intValue ?? 0)
    }

    /// The process ended: requests still waiting fail, and a turn without
    /// turn/completed fails with the exit (timeout, cancelled, a crash).
    func exited(_ exit: ChildExit) {
        let peer = state.withLock { $0.peer }
        _ = peer?.ended()
        let e = end { s in
            if let r = exit.stderrTail.firstRange(of: "Error loading config") {
                return ProviderError(.config, "codex refused its configuration: " + Wire.excerpt(String(exit.stderrTail[r.lowerBound...]), limit: 600))
            }
            return s.out.marked(s.out.unfinished(exit, detail: s.lastError.map { ": " + $0 } ?? ""))
        }
        if let e { call.fail(e) }
    }
}

extension Usage {
    /// This usage less `other`, never below zero.
    func minus(_ other: Usage) -> Usage {
        Usage(
            inputTokens: max(0, inputTokens - other.inputTokens), outputTokens: max(0, outputTokens - other.outputTokens),
            cacheReadTokens: max(0, cacheReadTokens - other.cacheReadTokens),
            cacheWriteTokens: max(0, cacheWriteTokens - other.cacheWriteTokens),
            reasoningTokens: max(0, reasoningTokens - other.reasoningTokens))
    }
}
