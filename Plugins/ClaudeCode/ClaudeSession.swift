// Session mode: one `claude` process kept alive across turns, stream-json in
// and out, so an agent's later turns do not pay for starting Claude Code.
import DescartesPluginKit

final class ClaudeSession: @unchecked Sendable {
    let id: String
    let link = ChildLink()
    let scratch: ScratchDirectory?
    let interruptGrace: Duration
    let exitGrace: Duration
    let onEnd: @Sendable (ClaudeSession) -> Void
    /// The `--permission-mode` the process was started with (its first
    /// turn's), for the reason given when a turn without a policy is asked.
    let permissionMode: String

    private struct State {
        var turn: ClaudeTurn?
        var busy = false
        var alive = true
        /// Stdin was closed: the process is on its way out and takes no turn.
        var closing = false
        var closeAfterTurn = false
        var turns = 0
        var totalCost = 0.0
        var lastUsed = ContinuousClock.now
    }
    private let state = Lock(State())

    init(
        id: String, scratch: ScratchDirectory?, interruptGrace: Duration, exitGrace: Duration, permissionMode: String = "default",
        onEnd: @escaping @Sendable (ClaudeSession) -> Void
    ) {
        self.id = id
        self.permissionMode = permissionMode
        self.scratch = scratch
        self.interruptGrace = interruptGrace
        self.exitGrace = exitGrace
        self.onEnd = onEnd
    }

    /// The process runs and takes turns (it is not closing).
    var isAlive: Bool { state.withLock { $0.alive && !$0.closing } }
    var isIdle: Bool { state.withLock { $0.alive && !$0.closing && !$0.busy } }
    var lastUsed: ContinuousClock.Instant { state.withLock { $0.lastUsed } }
    var totalCost: Double { state.withLock { $0.totalCost } }

    /// Makes `turn` the current one; `input` (its user lines) is written
    /// once the process exists. Returns the turn's number in the session,
    /// or nil while another turn runs (the caller waits its turn).
    func begin(_ turn: ClaudeTurn, closeAfter: Bool) throws(ProviderError) -> Int? {
        let n = try state.withLock { s throws(ProviderError) -> Int? in
            guard s.alive && !s.closing else { throw ProviderError(.backend, "session \(id) has ended") }
            if s.busy { return nil }
            s.busy = true
            s.turn = turn
            s.turns += 1
            s.lastUsed = .now
            if closeAfter { s.closeAfterTurn = true }
            return s.turns
        }
        if n != nil { turn.onResult = { [weak self] o in self?.turnEnded(o) } }
        return n
    }

    // MARK: The process's output (runner thread)

    var handlers: ChildHandlers {
        ChildHandlers(
            stdout: { [self] line in state.withLock { $0.turn }?.line(line) },
            stderr: { [self] line in state.withLock { $0.turn }?.stderr(line) },
            exit: { [self] exit in
                let turn = state.withLock { s -> ClaudeTurn? in
                    s.alive = false
                    s.busy = false
                    defer { s.turn = nil }
                    return s.turn
                }
                turn?.exited(exit)
                scratch?.remove()
                onEnd(self)
            })
    }

    private func turnEnded(_ result: JSONObject) {
        let close = state.withLock { s -> Bool in
            if let total = result["total_cost_usd"]?.doubleValue { s.totalCost = total }
            s.busy = false
            s.turn = nil
            s.lastUsed = .now
            return s.closeAfterTurn
        }
        // An interrupt may have armed a deadline: the turn is over in time.
        link.child?.setDeadline(nil)
        if close { self.close() }
    }

    /// Cancels the turn in flight with a stream-json interrupt, which ends
    /// it with a result and keeps the process; if no result comes within the
    /// grace period, the process is terminated (the session ends).
    func interrupt() {
        guard let child = link.child, state.withLock({ $0.busy }) else { return }
        let request: JSONValue = [
            "type": "control_request", "request_id": .string("descartes-\(AgentID.random())"),
            "request": ["subtype": "interrupt"],
        ]
        var line = request.jsonBytes
        line.append(0x0A)
        child.write(line)
        child.setDeadline(.now + interruptGrace)
    }

    /// Ends the session: stdin closes (Claude Code exits at end of input);
    /// a process still running after the exit grace is terminated.
    func close() {
        state.withLock {
            $0.closeAfterTurn = true
            $0.closing = true
        }
        guard let child = link.child else { return }
        child.closeInput()
        child.expectExit(within: exitGrace)
    }
}

/// The live sessions of one backend.
final class SessionTable: Sendable {
    private let sessions = Lock<[String: ClaudeSession]>([:])
    /// Ids whose process is being started: one process per id at a time.
    private let starting = Lock<Set<String>>([])

    /// What a turn for `id` finds.
    enum Claim {
        /// A live session (it may be busy or on its way out).
        case session(ClaudeSession)
        /// Another turn is starting a process under this id: wait.
        case starting
        /// Nothing: the caller now starts the process, then calls `add` (or `abandon`).
        case yours
    }

    func claim(_ id: String) -> Claim {
        // Lock order: starting, then sessions.
        starting.withLock { st in
            if let s = sessions.withLock({ $0[id] }) { return .session(s) }
            if st.contains(id) { return .starting }
            st.insert(id)
            return .yours
        }
    }

    func abandon(_ id: String) { _ = starting.withLock { $0.remove(id) } }

    func get(_ id: String) -> ClaudeSession? { sessions.withLock { $0[id] } }
    func add(_ s: ClaudeSession) {
        starting.withLock { st in
            sessions.withLock { $0[s.id] = s }
            st.remove(s.id)
        }
    }
    func remove(_ id: String) { sessions.withLock { $0[id] = nil } }
    /// Removes `s` if it is still the session under its id (a restarted
    /// session may have taken the id since).
    func remove(_ s: ClaudeSession) { sessions.withLock { if $0[s.id] === s { $0[s.id] = nil } } }
    var count: Int { sessions.withLock { $0.count } }

    /// Closes sessions idle for longer than `idle`, then, to make room for
    /// one more under `limit`, the least recently used idle one.
    /// - Throws: `backend` when every session is busy and the table is full.
    func makeRoom(idle: Duration, limit: Int) throws(ProviderError) {
        let now = ContinuousClock.now
        let all = sessions.withLock { Array($0.values) }
        var open = 0
        for s in all {
            if s.isIdle && now - s.lastUsed > idle {
                s.close()
                remove(s)
            } else if s.isAlive {
                open += 1
            }
        }
        guard open >= limit else { return }
        let idle = sessions.withLock { Array($0.values) }.filter(\.isIdle).min { $0.lastUsed < $1.lastUsed }
        guard let idle else {
            throw ProviderError(.backend, "all \(limit) sessions of this backend are busy (max_sessions); end one or raise the limit")
        }
        idle.close()
        remove(idle)
    }

    func closeAll() {
        let all = sessions.withLock { s -> [ClaudeSession] in
            defer { s = [:] }
            return Array(s.values)
        }
        for s in all { s.close() }
    }
}
