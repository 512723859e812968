// One Agent Client Protocol connection: an agent process spoken to with
// JSON-RPC 2.0, one message per line, on its stdin and stdout (ACP's stdio
// transport). The connection sends requests and notifications, matches
// responses to requests by id, routes the agent's `session/update`
// notifications and `session/request_permission` requests to the turn in
// flight, and answers every other agent request (fs/*, terminal/*: this
// client advertises none of them) with "method not found".
//
// Everything the agent writes arrives on the process runner's thread, in
// order: a turn sees all its updates before the `session/prompt` response
// that ends it, as the protocol promises.
import DescartesPluginKit

/// A JSON-RPC error object from the agent.
typealias RPCError = JSONRPCPeer.Failure

final class ACPConnection: @unchecked Sendable {
    typealias Reply = @Sendable (Result<JSONValue, ProviderError>) -> Void

    let link = ChildLink()
    /// Request ids and the replies waiting for them (the plugin kit's).
    let peer: JSONRPCPeer
    /// The program's file name, for messages ("vibe-acp").
    let program: String
    /// What `initialize` answered (agentCapabilities, agentInfo, authMethods).
    private(set) var agent: JSONObject = [:]
    /// The agent's session this connection serves (one per connection).
    private(set) var sessionID: String?

    private struct State {
        var turn: ACPTurn?
        var exit: ChildExit?
        /// Stdout lines that were not JSON while no turn ran (for the
        /// error of a failed handshake).
        var noise: [String] = []
        var closing = false
        var busy = false
        var waiters: [(id: Int, resume: @Sendable (Bool) -> Void)] = []
        var nextWaiter = 0
        var lastUsed = ContinuousClock.now
        var costBefore: Double?
    }
    private let state = Lock(State())

    init(program: String) {
        self.program = program
        let link = self.link
        peer = JSONRPCPeer(write: { link.child?.write($0) })
    }

    var isAlive: Bool { state.withLock { $0.exit == nil && !$0.closing } }
    var isIdle: Bool { state.withLock { $0.exit == nil && !$0.closing && !$0.busy } }
    var lastUsed: ContinuousClock.Instant { state.withLock { $0.lastUsed } }

    // MARK: Sending

    /// Sends request `method` and calls `reply` (on the runner's thread)
    /// with its result, its error mapped to a ProviderError, or the
    /// process's exit if it ends first.
    func request(_ method: String, _ params: JSONObject, _ reply: @escaping Reply) {
        if let failed = state.withLock({ $0.exit }) { return reply(.failure(exitError(failed, waitingFor: method))) }
        peer.request(method, params) { [self] r in
            switch r {
            case .success(let v): reply(.success(v))
            case .failure(let f) where f.ended:
                // The exit is recorded before the peer is told.
                let exit = state.withLock { $0.exit }
                reply(.failure(exit.map { exitError($0, waitingFor: method) } ?? ProviderError(.streamClosed, "\(program) ended before answering \(method)")))
            case .failure(let f): reply(.failure(ACPErrors.map(f, method: method, program: program)))
            }
        }
    }

    /// `request` for code that awaits.
    func call(_ method: String, _ params: JSONObject) async throws(ProviderError) -> JSONValue {
        let r = await withCheckedContinuation { (c: CheckedContinuation<Result<JSONValue, ProviderError>, Never>) in
            request(method, params) { c.resume(returning: $0) }
        }
        return try r.get()
    }

    func notify(_ method: String, _ params: JSONObject) { peer.notify(method, params) }

    func respond(_ id: JSONValue, result: JSONValue) { peer.respond(id, result: result) }

    func respond(_ id: JSONValue, code: Int, message: String) { peer.respond(id, code: code, message: message) }

    // MARK: The handshake

    /// `initialize` (protocol version 1; no file system and no terminal
    /// offered), `authenticate` with `authMethod` when given, then
    /// `session/load` of `load` (when the agent can load sessions) or
    /// `session/new`. Returns the agent's session id.
    func open(cwd: String, load: String?, authMethod: String?, clientVersion: String) async throws(ProviderError) -> String {
        let initResult = try await call(
            "initialize",
            [
                "protocolVersion": 1,
                "clientCapabilities": ["fs": ["readTextFile": false, "writeTextFile": false], "terminal": false],
                "clientInfo": ["name": "descartes", "title": "Descartes", "version": .string(clientVersion)],
            ])
        guard case .object(let info) = initResult else {
            throw ProviderError(.invalidResponse, "\(program): the initialize result is not an object: \(Wire.excerpt(initResult.jsonText, limit: 300))")
        }
        let version = info["protocolVersion"]?.intValue
        guard version == 1 else {
            throw ProviderError(
                .initialization,
                "\(program) speaks Agent Client Protocol version \(version.map(String.init) ?? "(none given)"); this client speaks version 1")
        }
        agent = info
        if let method = authMethod {
            _ = try await call("authenticate", ["methodId": .string(method)])
        }
        let mcp: JSONValue = .array([])
        if let id = load {
            guard info["agentCapabilities"]?["loadSession"]?.boolValue == true else {
                throw ProviderError(
                    .config,
                    "request option 'session_id': '\(id)' is not a live session of this backend, and \(program) cannot load sessions (its agentCapabilities.loadSession is not true); start a new session with option session: true")
            }
            _ = try await call("session/load", ["sessionId": .string(id), "cwd": .string(cwd), "mcpServers": mcp])
            sessionID = id
            return id
        }
        let made = try await call("session/new", ["cwd": .string(cwd), "mcpServers": mcp])
        guard let id = made["sessionId"]?.stringValue, !id.isEmpty else {
            throw ProviderError(.invalidResponse, "\(program): session/new answered without a sessionId: \(Wire.excerpt(made.jsonText, limit: 300))")
        }
        sessionID = id
        return id
    }

    /// Who the agent says it is ("vibe 2.1.0"), for metadata.
    var agentName: String? {
        guard let i = agent["agentInfo"]?.objectValue, let n = i["name"]?.stringValue else { return nil }
        return i["version"]?.stringValue.map { "\(n) \($0)" } ?? n
    }

    // MARK: Turns (one at a time per connection)

    /// Waits until no other turn runs on this connection, then holds it.
    /// False when `call` was cancelled first or the connection ended.
    func acquire(_ call: PluginCall) async -> Bool {
        let (now, id) = state.withLock { s -> (Bool?, Int) in
            if s.exit != nil || s.closing { return (false, 0) }
            if !s.busy {
                s.busy = true
                return (true, 0)
            }
            s.nextWaiter += 1
            return (nil, s.nextWaiter)
        }
        if let now { return now }
        let got = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            state.withLock { $0.waiters.append((id, { c.resume(returning: $0) })) }
            call.onCancel { [self] in
                let w = state.withLock { s -> (@Sendable (Bool) -> Void)? in
                    guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return s.waiters.remove(at: i).resume
                }
                w?(false)
            }
        }
        return got
    }

    /// Lets the next waiting turn run (or marks the connection idle).
    func releaseTurn() {
        let next = state.withLock { s -> (@Sendable (Bool) -> Void)? in
            s.turn = nil
            s.lastUsed = .now
            if s.waiters.isEmpty || s.exit != nil || s.closing {
                s.busy = false
                return nil
            }
            return s.waiters.removeFirst().resume
        }
        next?(true)
    }

    /// Makes `turn` the one that receives updates and permission requests.
    func attach(_ turn: ACPTurn) { state.withLock { $0.turn = turn } }

    /// The session's cumulative cost before the current turn (usage_update
    /// reports a running total), and records the new total.
    func exchangeCost(_ total: Double?) -> Double? {
        state.withLock { s in
            defer { if let total { s.costBefore = total } }
            return s.costBefore
        }
    }

    // MARK: Ending

    /// Ends the connection: stdin closes (an ACP agent exits at end of
    /// input); a process still running after `grace` is terminated.
    func close(grace: Duration) {
        let waiters = state.withLock { s -> [@Sendable (Bool) -> Void] in
            s.closing = true
            defer { s.waiters = [] }
            return s.waiters.map(\.resume)
        }
        for w in waiters { w(false) }
        guard let child = link.child else { return }
        child.closeInput()
        child.expectExit(within: grace)
    }

    // MARK: The agent's output (runner thread)

    var handlers: ChildHandlers {
        ChildHandlers(
            stdout: { [self] line in self.line(line) },
            stderr: { [self] line in state.withLock { $0.turn }?.stderr(line) },
            exit: { [self] exit in exited(exit) })
    }

    private func line(_ bytes: UnsafeRawBufferPointer) {
        guard let first = bytes.firstIndex(where: { $0 != 0x20 && $0 != 0x09 }), bytes[first] == UInt8(ascii: "{"),
            case .object(let o)? = try? JSONValue.parse(bytes)
        else {
            noise(bytes)
            return
        }
        // The answer to one of our requests goes to its reply.
        switch peer.receive(o) {
        case .request(let id, let method, let params)?:
            agentRequest(id: id, method: method, params)
        case .notification(let method, let params)? where method == "session/update":
            let turn = state.withLock { $0.turn }
            if let turn, params["sessionId"]?.stringValue == sessionID, case .object(let u)? = params["update"] {
                turn.update(u)
            }
            // Updates outside a turn (the history session/load replays)
            // are not part of any answer.
        default:
            break
        }
    }

    private func agentRequest(id: JSONValue, method: String, _ params: JSONObject) {
        switch method {
        case "session/request_permission":
            let turn = state.withLock { $0.turn }
            guard let turn, params["sessionId"]?.stringValue == sessionID else {
                // No turn to ask for: nothing may run.
                respond(id, result: ["outcome": ["outcome": "cancelled"]])
                return
            }
            turn.permission(id: id, params)
        default:
            // initialize said fs and terminal are not offered.
            respond(id, code: -32601, message: "method not found: \(method) (this client offers no file system, terminal or other client methods)")
        }
    }

    private func noise(_ bytes: UnsafeRawBufferPointer) {
        if let turn = state.withLock({ $0.turn }) {
            turn.noise(bytes)
            return
        }
        let text = ANSIStripper.clean(bytes)
        guard !text.isEmpty else { return }
        state.withLock { if $0.noise.count < 10 { $0.noise.append(Wire.excerpt(text, limit: 300)) } }
    }

    private func exited(_ exit: ChildExit) {
        let (turn, waiters) = state.withLock { s -> (ACPTurn?, [@Sendable (Bool) -> Void]) in
            s.exit = exit
            defer {
                s.turn = nil
                s.waiters = []
            }
            return (s.turn, s.waiters.map(\.resume))
        }
        // The turn reports a session/prompt the process did not answer.
        for p in peer.ended() where p.method != "session/prompt" {
            p.reply(.failure(RPCError(code: 0, message: "", ended: true)))
        }
        turn?.exited(exit)
        for w in waiters { w(false) }
    }

    /// The error for a request the process ended before answering.
    private func exitError(_ exit: ChildExit, waitingFor method: String) -> ProviderError {
        let noise = state.withLock { $0.noise }
        var context = " before answering \(method)"
        if !noise.isEmpty { context += " (output: " + noise.joined(separator: " | ") + ")" }
        guard exit.succeeded else { return exit.error(program, context: context) }
        var message = "\(program) exited with status 0\(context)"
        if !exit.stderrTail.isEmpty { message += "; stderr: " + exit.stderrTail }
        return ProviderError(.streamClosed, message)
    }
}

/// JSON-RPC and ACP error codes as error kinds.
enum ACPErrors {
    /// Maps an agent's error response to `request`'s failure:
    ///
    /// | code | meaning | kind |
    /// | --- | --- | --- |
    /// | -32000 | authentication required | authentication |
    /// | -32800 | request cancelled | cancelled |
    /// | -32601 | method not found | unsupported_feature |
    /// | -32600, -32602 | invalid request or params | config |
    /// | -32700 | parse error (of what we sent) | backend |
    /// | -32002 | resource not found | api |
    /// | -32603, others | internal error | by the HTTP status the data or message names (401/403 authentication, 429 rate_limited, 5xx provider_unavailable), else by the text ("invalid api key", "unauthorized": authentication; "rate limit": rate_limited), else api |
    static func map(_ e: RPCError, method: String, program: String) -> ProviderError {
        var text = "\(program) answered \(method) with error \(e.code)"
        if !e.message.isEmpty { text += ": \(e.message)" }
        if let d = e.data, !d.isNull { text += " (\(Wire.excerpt(d.stringValue ?? d.jsonText, limit: 500)))" }
        let type = "jsonrpc_\(e.code)"
        switch e.code {
        case -32000: return ProviderError(.authentication, text, providerType: type)
        case -32800: return ProviderError(.cancelled, text, providerType: type)
        case -32601: return ProviderError(.unsupportedFeature, text, providerType: type)
        case -32600, -32602: return ProviderError(.config, text, providerType: type)
        case -32700: return ProviderError(.backend, text, providerType: type)
        default: break
        }
        let status = httpStatus(e)
        let kind: ProviderError.Kind
        let lower = text.lowercased()
        switch status {
        case 401?, 403?: kind = .authentication
        case 429?: kind = .rateLimited
        case let s? where s >= 500 || s == 408: kind = .providerUnavailable
        // Without a status, what agents say (Mistral's vibe answers a bad
        // key with its own code -31002 "Invalid API key").
        case nil where ["invalid api key", "incorrect api key", "unauthorized", "authentication failed"].contains(where: lower.contains):
            kind = .authentication
        case nil where lower.contains("rate limit"): kind = .rateLimited
        default: kind = .api
        }
        return ProviderError(kind, text, status: status, providerType: type)
    }

    /// An HTTP status the agent reports with an internal error: a
    /// `status`, `status_code` or `statusCode` number in `data`, or
    /// "status 429" / "HTTP 503" / "Error code: 401" / "Client error '400"
    /// in the text.
    static func httpStatus(_ e: RPCError) -> Int? {
        if case .object(let d)? = e.data {
            for k in ["status", "status_code", "statusCode", "http_status"] {
                if let s = d[k]?.intValue, (100...599).contains(s) { return s }
            }
        }
        let text = e.message + " " + (e.data?.stringValue ?? e.data?.jsonText ?? "")
        let lower = Array(text.lowercased().utf8)
        // httpx (Python agents) says "Client error '429 Too Many Requests'".
        for marker in ["status code ", "status ", "http ", "error code: ", "status_code=", "client error '", "server error '"] {
            let m = Array(marker.utf8)
            var i = 0
            while i + m.count + 3 <= lower.count {
                if Array(lower[i..<(i + m.count)]) == m {
                    let digits = lower[(i + m.count)..<(i + m.count + 3)]
                    if digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                        i + m.count + 3 == lower.count || !(lower[i + m.count + 3] >= 0x30 && lower[i + m.count + 3] <= 0x39),
                        let n = Int(String(decoding: digits, as: UTF8.self)), (100...599).contains(n)
                    {
                        return n
                    }
                }
                i += 1
            }
        }
        return nil
    }
}
