
/// Ties one child process to the call it serves.
///
/// `attach` may come after the child's first output (the runner's thread can
/// report before `spawn` has returned to the caller), so both `done` and
/// `terminate` are remembered and applied when the child arrives.
public final class ChildLink: Sendable {
    private struct State {
        var child: ChildProcess?
        var exitGrace: Duration?
        var terminate = false
    }
    private let state = Lock(State())

    public init() {}

    public var child: ChildProcess? { state.withLock { $0.child } }

    public func attach(_ child: ChildProcess) {
        let (grace, kill) = state.withLock { s -> (Duration?, Bool) in
            s.child = child
            return (s.exitGrace, s.terminate)
        }
        if kill { child.terminate() } else if let grace { child.expectExit(within: grace) }
    }

    /// The call has its answer: the child should exit on its own within
    /// `grace`, after which its process group is terminated.
    public func done(exitWithin grace: Duration) {
        let child = state.withLock { s -> ChildProcess? in
            s.exitGrace = grace
            return s.child
        }
        child?.expectExit(within: grace)
    }

    /// Terminates the child (cancellation).
    public func terminate() {
        let child = state.withLock { s -> ChildProcess? in
            s.terminate = true
            return s.child
        }
        child?.terminate()
    }
}

/// Counts stderr lines a call forwards as notices, so a chatty child cannot
/// flood the caller: the first `limit` lines, then one line saying how many
/// more there were (all of them still reach the stderr tail kept for errors).
public struct NoticeBudget: Sendable {
    public let limit: Int
    public private(set) var used = 0
    public private(set) var suppressed = 0

    public init(limit: Int = 50) { self.limit = limit }

    /// True when another notice may be sent.
    public mutating func take() -> Bool {
        if used < limit {
            used += 1
            return true
        }
        suppressed += 1
        return false
    }
}
