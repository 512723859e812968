// Claude Code run headless (provider `claude-code-cli`): every request runs
//
//   claude -p --output-format stream-json --verbose --input-format stream-json
//          [--include-partial-messages] [--model M] [--system-prompt S |
//          --append-system-prompt S] [--max-turns N] [--tools=...]
//          [--allowed-tools=...] [--disallowed-tools=...] [--permission-mode M]
//          [--no-session-persistence] [--session-id ID | --resume TRANSCRIPT]
//
// as a child process of the kit's process runtime, with the user's new
// message(s) as stream-json lines on stdin, the earlier conversation (if
// any) in a transcript file, and the stream-json output parsed into events
// (ClaudeStream.swift). Session mode keeps the process for later turns
// (ClaudeSession.swift). docs/headless.md is the user's guide.
import DescartesPluginKit
import Glibc

final class ClaudeCodeBackend: DescartesBackend {
    let context: BackendContext
    let settings: ClaudeSettings
    let agent: HeadlessAgent
    let sessions = SessionTable()

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        settings = try ClaudeSettings(context)
        agent = try HeadlessAgent(context, defaultCommand: "claude", environment: settings.environment)
    }

    deinit { sessions.closeAll() }

    /// can_use_tool control requests go to the host (one-shot requests and
    /// session turns).
    var asksApprovals: Bool { true }

    func initialize(_ call: PluginCall) {
        agent.initialize(call) { "claude at \($0.path)" }
    }

    /// `claude --version`, then one cheap real turn with the backend's
    /// environment (`-p --output-format json --max-turns 1 --tools=`, a
    /// one-word answer): healthy only if Claude Code reached its model with
    /// its credentials. `health_turn: false` checks the version only and
    /// says so.
    func healthCheck(_ call: PluginCall) {
        let settings = self.settings
        agent.probe(call, arguments: ["--version"]) { [agent] program, exit, version in
            guard exit.succeeded, !version.isEmpty else {
                call.fail(exit.error("claude --version"))
                return
            }
            var details: JSONObject = ["version": .string(version), "path": .string(program.path)]
            guard settings.healthTurn else {
                details["checked"] = "version"
                call.finish(result: [
                    "message": .string("\(version) at \(program.path); only `claude --version` was checked (health_turn: false): the API and the credentials were not"),
                    "details": .object(details),
                ])
                return
            }
            var args = ["-p", "--output-format", "json", "--max-turns", "1", "--tools=", "--no-session-persistence"]
            if let m = settings.model { args += ["--model", m] }
            args.append("Reply with the single word OK.")
            let started = ContinuousClock.now
            let base = details
            agent.probe(call, arguments: args, timeout: .seconds(60)) { _, turnExit, output in
                var details = base
                let doc = (try? JSONValue.parse(output))?.objectValue
                let text = doc?["result"]?.stringValue ?? ""
                if turnExit.succeeded, doc?["is_error"]?.boolValue != true {
                    details["checked"] = "turn"
                    details["turn_ms"] = .integer((ContinuousClock.now - started).milliseconds)
                    if let m = doc?["modelUsage"]?.objectValue?.keys.sorted().first { details["model"] = .string(m) }
                    call.finish(result: [
                        "message": .string("\(version) at \(program.path) answered a one-turn request"),
                        "details": .object(details),
                    ])
                    return
                }
                guard let doc, doc["is_error"]?.boolValue == true else {
                    call.fail(turnExit.error("claude -p (health turn)", context: output.isEmpty ? "" : ": " + Wire.excerpt(output, limit: 500)))
                    return
                }
                let message = "the health turn failed: " + (text.isEmpty ? "Claude Code reported an error" : text)
                let status = doc["api_error_status"]?.intValue
                let apiError = doc["api_error"]?.stringValue
                let kind: ProviderError.Kind
                switch status {
                case 401?, 403?: kind = .authentication
                case 429?: kind = .rateLimited
                case let s? where s >= 500 || s == 408: kind = .providerUnavailable
                case _?: kind = .api
                case nil: kind = apiError == "connection_failed" ? .providerUnavailable : .api
                }
                call.fail(ProviderError(kind, message, status: status, providerType: apiError))
            }
        }
    }

    func complete(_ request: ModelRequest, _ call: PluginCall) { run(request, call, partial: false) }

    func stream(_ request: ModelRequest, _ call: PluginCall) { run(request, call, partial: true) }

    func shutdown(_ call: PluginCall) {
        sessions.closeAll()
        agent.shutdown(call)
    }

    // MARK: Running a turn

    func run(_ request: ModelRequest, _ call: PluginCall, partial: Bool) {
        do throws(ProviderError) {
            let options = try ClaudeOptions(request.options)
            let input = try ClaudeInput(request)
            if options.wantsSession {
                if request.responseFormat != .text {
                    throw ProviderError(
                        .unsupportedFeature,
                        "claude-code-cli takes a response format in one-shot requests only: a session's process keeps the --json-schema it was started with")
                }
                try runInSession(request, call, options, input)
            } else {
                try runOnce(request, call, options, input, partial: partial)
            }
        } catch {
            call.fail(error)
        }
    }

    /// One process for one request: stdin is closed after the user lines,
    /// the answer ends with the `result` line, and the process then has
    /// `exit_grace_ms` to exit before its group is terminated.
    func runOnce(_ request: ModelRequest, _ call: PluginCall, _ options: ClaudeOptions, _ input: ClaudeInput, partial: Bool) throws(ProviderError) {
        let program = try agent.program()
        let (scratch, resume) = try Self.resumeFile(input, sessionID: AgentID.random())
        let asksHost = request.approval?.asksHost == true
        let args = claudeArguments(
            settings: settings, options: options, model: request.model ?? settings.model, system: input.system,
            partial: partial, sessionID: nil, resume: resume, extra: agent.config.args, hostApprovals: asksHost,
            schema: claudeSchema(request.responseFormat))
        let turn = ClaudeTurn(call: call, partial: partial)
        turn.structured = request.responseFormat != .text
        turn.asksHost = asksHost
        let grace = agent.config.exitGrace
        // With approvals, stdin stays open for the control responses until the result.
        let spec = agent.spec(
            program, arguments: args, input: input.stdinLines, keepInputOpen: asksHost, deadline: agent.config.deadline(request),
            cwd: options.cwd)
        do {
            try agent.start(call, spec) { link in
                turn.respond = { link.child?.write($0) }
                turn.onResult = { _ in
                    if asksHost { link.child?.closeInput() }
                    link.done(exitWithin: grace)
                }
                return ChildHandlers(
                    stdout: { turn.line($0) }, stderr: { turn.stderr($0) },
                    exit: { exit in
                        turn.exited(exit)
                        scratch?.remove()
                    })
            }
        } catch {
            scratch?.remove()
            throw error
        }
    }

    /// A turn of a session: continue the live process, or start one (with
    /// the request's earlier conversation when it has one).
    ///
    /// One turn at a time per session, and one process per session id: a
    /// turn that finds its session busy (a concurrent turn, or a cancelled
    /// or timed-out one whose interrupt has not been answered yet), or its
    /// process being started or on its way out, waits for it, polling every
    /// 20 ms, until the request's deadline (cancelling the request ends the
    /// wait).
    func runInSession(_ request: ModelRequest, _ call: PluginCall, _ options: ClaudeOptions, _ input: ClaudeInput) throws(ProviderError) {
        guard let id = options.sessionID else {
            // A new session: a new id, nobody else can hold it.
            let id = AgentID.random()
            _ = sessions.claim(id)
            try startSession(id: id, restarted: false, request, call, options, input)
            return
        }
        try agent.whenFree(call, deadline: agent.config.deadline(request), "session \(id)") { [self] () throws(ProviderError) -> Bool in
            try tryTurn(id: id, request, call, options, input)
        }
    }

    /// Runs the turn now if session `id` can take it: true when it was
    /// started, false when the caller must wait.
    private func tryTurn(id: String, _ request: ModelRequest, _ call: PluginCall, _ options: ClaudeOptions, _ input: ClaudeInput) throws(ProviderError) -> Bool {
        switch sessions.claim(id) {
        case .starting:
            return false
        case .yours:
            try startSession(id: id, restarted: true, request, call, options, input)
            return true
        case .session(let session):
            // A process that is exiting (interrupt unanswered, end_session)
            // leaves the table when it has been reaped; then a new one starts.
            guard session.isAlive else { return false }
            let turn = ClaudeTurn(call: call, partial: true, costBefore: session.totalCost)
            turn.metadata = ["session_id": .string(id), "session_spawned": false]
            sessionApprovals(turn, request, session)
            let begun: Int?
            do { begun = try session.begin(turn, closeAfter: options.endSession) } catch { return false }
            guard let n = begun else { return false }
            turn.metadata["session_turn"] = .integer(n)
            session.link.child?.write(input.stdinLines)
            call.onCancel { session.interrupt() }
            return true
        }
    }

    /// Starts the process of session `id` (claimed by the caller) with this turn.
    private func startSession(
        id: String, restarted: Bool, _ request: ModelRequest, _ call: PluginCall, _ options: ClaudeOptions, _ input: ClaudeInput
    ) throws(ProviderError) {
        var scratch: ScratchDirectory? = nil
        do {
            try sessions.makeRoom(idle: settings.sessionIdle, limit: settings.maxSessions)
            let program = try agent.program()
            let (dir, resume) = try Self.resumeFile(input, sessionID: id)
            scratch = dir
            let args = claudeArguments(
                settings: settings, options: options, model: request.model ?? settings.model, system: input.system,
                partial: true, sessionID: id, resume: resume, extra: agent.config.args, hostApprovals: true)
            let table = sessions
            let session = ClaudeSession(
                id: id, scratch: dir, interruptGrace: agent.config.killGrace, exitGrace: agent.config.exitGrace,
                permissionMode: options.permissionMode ?? settings.permissionMode ?? "default", onEnd: { table.remove($0) })
            let turn = ClaudeTurn(call: call, partial: true)
            turn.metadata = [
                "session_id": .string(id), "session_spawned": true, "session_restarted": .bool(restarted),
            ]
            sessionApprovals(turn, request, session)
            let n = try session.begin(turn, closeAfter: options.endSession) ?? 1
            turn.metadata["session_turn"] = .integer(n)
            try agent.spawn(
                agent.spec(program, arguments: args, input: input.stdinLines, keepInputOpen: true, cwd: options.cwd), link: session.link,
                handlers: session.handlers)
            sessions.add(session)
            call.onCancel { session.interrupt() }
        } catch {
            sessions.abandon(id)
            scratch?.remove()
            throw error
        }
    }

    /// A session's process always runs with `--permission-prompt-tool
    /// stdio`, since its flags are those of its first turn: each turn's
    /// can_use_tool requests are answered by that turn's policy when it has
    /// one, and otherwise denied, as Claude Code itself does in `-p` mode
    /// without a prompt tool: it asks only about a tool use its permission
    /// mode (and `allowed_tools`) does not already allow, and denies it when
    /// there is nobody to ask.
    private func sessionApprovals(_ turn: ClaudeTurn, _ request: ModelRequest, _ session: ClaudeSession) {
        turn.asksHost = request.approval?.asksHost == true
        turn.noPolicyReason =
            "permission_mode '\(session.permissionMode)' of this session does not allow it without asking, and the request carries no approval policy"
        let link = session.link
        turn.respond = { link.child?.write($0) }
    }

    /// The earlier conversation as a transcript for `--resume`, in a scratch
    /// directory of its own; nothing when there is none.
    static func resumeFile(_ input: ClaudeInput, sessionID id: String) throws(ProviderError) -> (ScratchDirectory?, String?) {
        if input.history.isEmpty { return (nil, nil) }
        let dir = try ScratchDirectory(prefix: "descartes-claude")
        do { return (dir, try dir.write("\(id).jsonl", ClaudeInput.transcript(input.history, sessionID: id))) } catch {
            dir.remove()
            throw error
        }
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(
        abi: abi, host: host, name: "claude-code", version: "1.0.0",
        factories: [
            BackendFactory(id: "claude-code-cli", description: "Claude Code (the claude CLI) run headless") {
                try ClaudeCodeBackend($0)
            }
        ])
}
