import DescartesSupport

/// One request's dealings with the shared store, from the cache layer
/// (`CacheBackend`) down to the limiter (`RateLimitedBackend`), passed as a
/// task-local (`current`) so that the layers between (budgets, retries, the
/// circuit breaker) need not know of it:
///
/// - the limiter's admission that the cache's lookup took in the same
///   script (`SharedLimits.lookupScript`): the first attempt uses it
///   (`takeAdmission`) instead of running its own script; retries charge as
///   before; when no attempt used it (a budget or an open breaker refused the
///   request first, or the disk store had the answer), `finish` gives it back;
/// - the writes that follow the answer (`SharedStore.send`: the cache's
///   `SET`, the token bucket's correction, a budget's debit), held until the
///   request ends and then queued as one batch, sent in one round trip after
///   the caller has its answer.
package final class SharedScope: Sendable {
    @TaskLocal package static var current: SharedScope?

    package let store: SharedStore

    private struct Admission {
        var outcome: SharedLimits.Outcome
        var limits: SharedLimits
        var model: String?
    }

    private struct State {
        var admission: Admission?
        var held: [[[UInt8]]] = []
        var scripts: [LuaScript] = []
        var finished = false
    }
    private let state = Lock(State())

    package init(store: SharedStore) { self.store = store }

    /// Keeps the outcome of the limiter's check that `limits` made for
    /// `model`, for the first attempt.
    package func admitted(_ outcome: SharedLimits.Outcome, by limits: SharedLimits, model: String?) {
        state.withLock { $0.admission = Admission(outcome: outcome, limits: limits, model: model) }
    }

    /// The admission taken for `limits`'s provider and `model`, once: nil
    /// for a later attempt, another provider or another store.
    package func takeAdmission(for limits: SharedLimits, model: String?) -> SharedLimits.Outcome? {
        state.withLock { s in
            guard let a = s.admission, a.limits.provider == limits.provider, a.limits.store === limits.store, a.model == model else { return nil }
            s.admission = nil
            return a.outcome
        }
    }

    /// Holds `commands` for the batch at the request's end; false once it
    /// ended (the caller then queues them itself).
    func hold(_ commands: [[[UInt8]]], scripts: [LuaScript]) -> Bool {
        state.withLock { s in
            guard !s.finished else { return false }
            s.held += commands
            s.scripts += scripts
            return true
        }
    }

    /// Ends the request: gives back an admission no attempt used, and
    /// queues everything held as one batch.
    package func finish() {
        let (held, scripts, unused) = state.withLock { s -> ([[[UInt8]]], [LuaScript], Admission?) in
            s.finished = true
            defer {
                s.held = []
                s.admission = nil
            }
            return (s.held, s.scripts, s.admission)
        }
        var commands = held
        var all = scripts
        if let unused, case .wait(_, let charged) = unused.outcome,
            let call = unused.limits.adjustCall(requests: -1, tokens: -charged, model: unused.model)
        {
            commands.append(SharedStore.evalsha(SharedLimits.adjustScript, keys: call.keys, args: call.args))
            all.append(SharedLimits.adjustScript)
        }
        if !commands.isEmpty { store.enqueue(commands, scripts: all) }
    }
}
