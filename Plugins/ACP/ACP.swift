// Any Agent Client Protocol agent (provider `acp`): the agent program runs as
// a child process of the kit's process runtime and is spoken to with ACP,
// JSON-RPC 2.0 over its stdin and stdout (ACPConnection.swift):
//
//   initialize        protocol version 1; the client offers no file system
//                     and no terminal (it answers those methods "not found")
//   authenticate      when `auth_method` is set
//   session/new       (or session/load, to continue a session this backend
//                     no longer holds, when the agent can load sessions)
//   session/prompt    the turn; session/update notifications stream as
//                     events (ACPTurn.swift); session/request_permission is
//                     answered by the approver
//   session/cancel    when the call is cancelled; the process is stopped if
//                     the turn has not ended within kill_grace_ms
//
// A request without a session runs in a process of its own, closed after
// the turn. A session (request option `session: true`, then `session_id`)
// keeps its process for later turns, one turn at a time. docs/headless.md
// is the user's guide.
import DescartesPluginKit
import DescartesSupport

struct ACPSettings {
    /// Answer to permission requests when the request carries no approval
    /// policy: allow or deny (default deny).
    var allowByDefault: Bool
    var authMethod: String?
    var sessionIdle: Duration
    var maxSessions: Int
    /// Whether `health` runs one cheap real turn after the handshake.
    var healthTurn: Bool
    /// Where `session/new` puts the agent: `cwd`, else the host's.
    var environment: [String: String]

    init(_ c: BackendContext) throws(ProviderError) {
        switch c.string("permissions") ?? "deny" {
        case "deny": allowByDefault = false
        case "allow": allowByDefault = true
        case let other:
            throw ProviderError(.config, "key 'permissions': '\(other)' is not allow or deny")
        }
        authMethod = c.string("auth_method").flatMap { $0.isEmpty ? nil : $0 }
        let idle = c.int("session_idle_secs") ?? 900
        guard idle > 0 else { throw ProviderError(.config, "key 'session_idle_secs': must be positive, got \(idle)") }
        sessionIdle = .seconds(idle)
        maxSessions = c.int("max_sessions") ?? 8
        healthTurn = c.bool("health_turn") ?? true
        guard maxSessions > 0 else { throw ProviderError(.config, "key 'max_sessions': must be positive, got \(maxSessions)") }
        environment = [:]
        if let key = c.string("api_key"), !key.isEmpty {
            guard let name = c.string("api_key_env"), !name.isEmpty else {
                throw ProviderError(.config, "key 'api_key' is set but 'api_key_env' (the variable the agent reads it from) is not")
            }
            guard !name.contains("=") else { throw ProviderError(.config, "key 'api_key_env': '\(name)' is not a valid variable name") }
            environment[name] = key
        }
    }
}

/// The request options this backend reads.
struct ACPOptions {
    var startSession = false
    var sessionID: String?
    var endSession = false
    var cwd: String?

    init(_ o: JSONObject) throws(ProviderError) {
        startSession = o["session"]?.boolValue ?? false
        sessionID = o["session_id"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
        endSession = o["end_session"]?.boolValue ?? false
        if let d = o["cwd"]?.stringValue, !d.isEmpty {
            guard d.hasPrefix("/") else { throw ProviderError(.config, "request option 'cwd': '\(d)' is not an absolute path") }
            cwd = d
        }
    }

    var wantsSession: Bool { startSession || sessionID != nil }
}

final class ACPBackend: DescartesBackend {
    let context: BackendContext
    let settings: ACPSettings
    let agent: HeadlessAgent
    let sessions = Lock<[String: ACPConnection]>([:])

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        settings = try ACPSettings(context)
        agent = try HeadlessAgent(context, defaultCommand: nil, environment: settings.environment)
    }

    deinit { closeAll() }

    /// session/request_permission goes to the host when the request has a policy.
    var asksApprovals: Bool { true }

    func initialize(_ call: PluginCall) {
        agent.initialize(call) { "ACP agent \($0.path)" }
    }

    /// Starts the agent, runs the handshake (initialize, session/new), then
    /// one cheap real turn ("Reply with the single word OK.") so that an
    /// agent which cannot reach its model (a dead endpoint, a bad key, a
    /// 429) is unhealthy with that error's kind. The turn runs in an empty
    /// scratch directory with no turn attached to the connection, so every
    /// permission the agent asks for is answered `cancelled`: nothing it
    /// would need to ask for runs. `health_turn: false` stops after the
    /// handshake, and the report says the model was not checked. The
    /// agent's info and capabilities are the details.
    func healthCheck(_ call: PluginCall) {
        let task = Task.detached { [self] in
            do throws(ProviderError) {
                let started = ContinuousClock.now
                let scratch = settings.healthTurn ? try ScratchDirectory(prefix: "descartes-acp-health") : nil
                defer { scratch?.remove() }
                let (conn, session) = try await connect(call, deadline: .now + .seconds(60), cwd: scratch?.path, load: nil)
                defer { conn.close(grace: agent.config.exitGrace) }
                var details: JSONObject = ["session_id": .string(session), "handshake_ms": .integer((ContinuousClock.now - started).milliseconds)]
                for k in ["agentInfo", "agentCapabilities", "authMethods"] { if let v = conn.agent[k] { details[k] = v } }
                let name = conn.agentName ?? conn.program
                guard settings.healthTurn else {
                    details["checked"] = "handshake"
                    call.finish(result: [
                        "message": .string(
                            "\(name) answered initialize and session/new (ACP version 1); no turn was run (health_turn: false): the model and the credentials were not checked"),
                        "details": .object(details),
                    ])
                    return
                }
                let turnStarted = ContinuousClock.now
                conn.link.child?.setDeadline(.now + .seconds(60))
                let answer: JSONValue
                do throws(ProviderError) {
                    answer = try await conn.call(
                        "session/prompt", ["sessionId": .string(session), "prompt": [["type": "text", "text": "Reply with the single word OK."]]])
                } catch {
                    var e = error
                    e.message = "the health turn failed: " + e.message
                    throw e
                }
                details["checked"] = "turn"
                details["turn_ms"] = .integer((ContinuousClock.now - turnStarted).milliseconds)
                if let stop = answer["stopReason"] { details["stop_reason"] = stop }
                call.finish(result: [
                    "message": .string("\(name) answered initialize, session/new and a one-turn request (ACP version 1)"),
                    "details": .object(details),
                ])
            } catch {
                call.fail(error)
            }
        }
        call.onCancel { task.cancel() }
    }

    func complete(_ request: ModelRequest, _ call: PluginCall) { run(request, call) }
    func stream(_ request: ModelRequest, _ call: PluginCall) { run(request, call) }

    func shutdown(_ call: PluginCall) {
        closeAll()
        agent.shutdown(call)
    }

    private func closeAll() {
        let all = sessions.withLock { s -> [ACPConnection] in
            defer { s = [:] }
            return Array(s.values)
        }
        for c in all { c.close(grace: agent.config.exitGrace) }
    }

    // MARK: Connecting

    /// Starts the agent and opens a session (new, or `load`). The process
    /// runs under `deadline` until the handshake is over; cancelling `call`
    /// terminates it.
    func connect(_ call: PluginCall, deadline: ContinuousClock.Instant?, cwd: String?, load: String?) async throws(ProviderError)
        -> (ACPConnection, String)
    {
        let program = try agent.program()
        let conn = ACPConnection(program: program.name)
        try agent.spawn(
            agent.spec(program, arguments: agent.config.args, keepInputOpen: true, deadline: deadline, cwd: cwd), link: conn.link,
            handlers: conn.handlers)
        // Cancelled during the handshake: the process goes (a session's
        // later turns are cancelled with session/cancel instead).
        let handshaking = Lock(true)
        let link = conn.link
        call.onCancel { if handshaking.withLock({ $0 }) { link.terminate() } }
        defer { handshaking.withLock { $0 = false } }
        let dir = cwd ?? agent.config.cwd ?? FileSystem.currentDirectory()
        do {
            let id = try await conn.open(cwd: dir, load: load, authMethod: settings.authMethod, clientVersion: "1.0.0")
            return (conn, id)
        } catch {
            conn.link.terminate()
            throw error
        }
    }

    // MARK: Running a turn

    func run(_ request: ModelRequest, _ call: PluginCall) {
        let task = Task.detached { [self] in
            do throws(ProviderError) {
                let options = try ACPOptions(request.options)
                let prompt = try Self.prompt(request, session: options.sessionID != nil)
                try await turn(request, call, options, prompt)
            } catch {
                call.fail(error)
            }
        }
        _ = task
    }

    private func turn(_ request: ModelRequest, _ call: PluginCall, _ options: ACPOptions, _ prompt: [JSONValue]) async throws(ProviderError) {
        let deadline = agent.config.deadline(request)
        let conn: ACPConnection
        let session: String
        var spawned = false
        if let id = options.sessionID, let live = sessions.withLock({ $0[id] }), live.isAlive {
            conn = live
            session = id
        } else {
            if options.wantsSession { try makeRoom() }
            (conn, session) = try await connect(call, deadline: deadline, cwd: options.cwd, load: options.sessionID)
            spawned = true
            if options.wantsSession { sessions.withLock { $0[session] = conn } }
        }
        guard await conn.acquire(call) else {
            if call.isCancelled { return }
            throw ProviderError(.backend, "session \(session) ended while this turn waited for it")
        }
        let keep = options.wantsSession && !options.endSession
        let grace = agent.config.exitGrace
        let killGrace = agent.config.killGrace
        var meta: JSONObject = [:]
        if options.wantsSession {
            meta["session_spawned"] = .bool(spawned)
        }
        // The host's policy when the request carries one (ABI 1.2), else
        // the `permissions` key.
        let approver: ACPApprover = request.approval?.asksHost == true ? HostApprover() : FixedApprover(allow: settings.allowByDefault)
        let table = sessions
        let turn = ACPTurn(call: call, connection: conn, sessionID: session, approver: approver, metadata: meta) { failed in
            conn.link.child?.setDeadline(nil)
            if keep && conn.isAlive {
                conn.releaseTurn()
            } else {
                table.withLock { if $0[session] === conn { $0[session] = nil } }
                conn.releaseTurn()
                conn.close(grace: grace)
            }
            _ = failed
        }
        conn.attach(turn)
        conn.link.child?.setDeadline(deadline)
        call.start(id: session, model: nil)
        call.onCancel {
            turn.cancel()
            // The agent must answer the prompt with stopReason cancelled;
            // one that does not within the kill grace is stopped.
            conn.link.child?.setDeadline(.now + killGrace)
        }
        conn.request("session/prompt", ["sessionId": .string(session), "prompt": .array(prompt)]) { turn.finished($0) }
    }

    /// Closes idle sessions past `session_idle_secs`, then the least
    /// recently used idle one if `max_sessions` are open.
    private func makeRoom() throws(ProviderError) {
        let now = ContinuousClock.now
        let all = sessions.withLock { Array($0) }
        var open = 0
        for (id, c) in all {
            if !c.isAlive || (c.isIdle && now - c.lastUsed > settings.sessionIdle) {
                sessions.withLock { if $0[id] === c { $0[id] = nil } }
                c.close(grace: agent.config.exitGrace)
            } else {
                open += 1
            }
        }
        guard open >= settings.maxSessions else { return }
        guard let (id, c) = sessions.withLock({ Array($0) }).filter({ $0.value.isIdle }).min(by: { $0.value.lastUsed < $1.value.lastUsed })
        else {
            throw ProviderError(.backend, "all \(settings.maxSessions) sessions of this backend are busy (max_sessions); end one or raise the limit")
        }
        sessions.withLock { if $0[id] === c { $0[id] = nil } }
        c.close(grace: agent.config.exitGrace)
    }

    /// The prompt's content blocks. ACP has no system prompt and no way to
    /// hand an agent an earlier conversation: outside a session, both come
    /// first as a text block of their own; in a session the agent holds the
    /// conversation, so only the new user messages are sent.
    static func prompt(_ r: ModelRequest, session: Bool) throws(ProviderError) -> [JSONValue] {
        let turn = try AgentTurn(
            r, agent: "the agent", toolsReason: "an ACP agent runs its own tools; tools defined by the caller cannot be passed to it")
        let system = turn.system
        let history = turn.history
        let new = turn.newTurn
        if new.contains(where: { !$0.images.isEmpty }) {
            throw ProviderError(.unsupportedFeature, "the acp backend sends text prompts only; images are not passed to the agent")
        }
        var blocks: [JSONValue] = []
        var preamble: [String] = []
        if !system.isEmpty { preamble.append("Instructions:\n" + system.joined(separator: "\n\n")) }
        if !session && !history.isEmpty {
            preamble.append(
                "The conversation so far:\n"
                    + history.map { "\($0.role == .assistant ? "assistant" : $0.role.rawValue): \($0.content)" }.joined(separator: "\n"))
        }
        if !preamble.isEmpty { blocks.append(["type": "text", "text": .string(preamble.joined(separator: "\n\n"))]) }
        for m in new { blocks.append(["type": "text", "text": .string(m.content)]) }
        return blocks
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(
        abi: abi, host: host, name: "acp", version: "1.0.0",
        factories: [
            BackendFactory(id: "acp", description: "Any Agent Client Protocol agent (JSON-RPC over stdio)") {
                try ACPBackend($0)
            }
        ])
}
