import Glibc

/// The clock every timed mechanism of Descartes reads: the host's deadlines,
/// the response cache's time to live, rate limits, retry waits and the
/// plugin kit's deadline budget.
///
/// By default it is the real monotonic clock (`ContinuousClock`). Built on a
/// `ManualClock`, time stands still until a test moves it, and everything
/// those mechanisms wait for (an `async` sleep, a deadline the host's timer
/// thread would fire) happens when the manual clock passes it, with no real
/// waiting:
///
/// ```swift
/// let clock = ManualClock()
/// let backend = RetryBackend(plugin, policy: RetryPolicy(jitter: 0), clock: DescartesClock(clock))
/// ```
///
/// Instants are `ContinuousClock.Instant` whichever clock is underneath (a
/// manual clock starts at the real clock's now and moves only when told), so
/// the types that carry instants do not change with the clock; an instant of
/// one clock means nothing to another.
///
/// Why a struct over two cases and not `any Clock<Duration>`: an
/// existential's instants are existentials too (no arithmetic without
/// opening them), and a generic parameter would reach every middleware's
/// public type. Reading the real clock through this costs one nil check.
public struct DescartesClock: Clock, Sendable, Hashable {
    public typealias Instant = ContinuousClock.Instant
    public typealias Duration = Swift.Duration

    /// The manual clock underneath, nil for the real one.
    @usableFromInline package let manual: ManualClock?

    /// The real monotonic clock.
    public init() { manual = nil }

    /// Time as `manual` says.
    public init(_ manual: ManualClock) { self.manual = manual }

    /// The real monotonic clock.
    public static let continuous = DescartesClock()

    @inlinable
    public var now: Instant {
        if let manual { return manual.now }
        return ContinuousClock.now
    }

    public var minimumResolution: Duration {
        manual == nil ? ContinuousClock().minimumResolution : .nanoseconds(1)
    }

    /// Suspends until `deadline` (at once if it passed). Cancelling the task
    /// ends the sleep at once with `CancellationError`.
    public func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        if let manual { try await manual.sleep(until: deadline) } else { try await ContinuousClock().sleep(until: deadline, tolerance: tolerance) }
    }

    /// Seconds since 1970 (for what outlives the process, like the cache's
    /// files): the system's wall clock, or the manual clock's, which moves
    /// with it.
    public var unixTime: Int {
        if let manual { return manual.unixTime }
        return Int(time(nil))
    }

    public static func == (a: DescartesClock, b: DescartesClock) -> Bool { a.manual === b.manual }
    public func hash(into h: inout Hasher) { h.combine(manual.map(ObjectIdentifier.init)) }
}

/// A clock for tests: it stands still until `advance` moves it, then wakes
/// every sleep and fires every scheduled action it passed.
///
/// A test must know the code under test is waiting before it moves the
/// clock, or the move would come too early. `pending` says what waits (the
/// sleeps, the scheduled actions such as the host's deadline checks, each as
/// the time left until it is due), and `wait(until:)` suspends the test
/// until that is as expected:
///
/// ```swift
/// let clock = ManualClock()
/// let task = Task { try await backend.complete(request) }   // retries after 400 ms
/// try await clock.wait(until: { $0.sleeps == [.milliseconds(400)] })
/// clock.advance(by: .milliseconds(400))
/// let answer = try await task.value
/// ```
public final class ManualClock: Clock, @unchecked Sendable {
    public typealias Instant = ContinuousClock.Instant
    public typealias Duration = Swift.Duration

    /// What is waiting on the clock, each as the time left until it is due,
    /// soonest first.
    public struct Pending: Sendable, Hashable, CustomStringConvertible {
        /// `sleep` calls (retry waits, rate-limit waits, ...).
        public var sleeps: [Duration]
        /// Actions scheduled on the clock (the host's deadline checks).
        public var timers: [Duration]

        public init(sleeps: [Duration] = [], timers: [Duration] = []) {
            self.sleeps = sleeps
            self.timers = timers
        }

        public var description: String { "sleeps \(sleeps), timers \(timers)" }
    }

    /// One `sleep`, its phase changed under the clock's lock only.
    private final class Sleeper: @unchecked Sendable {
        enum Phase {
            case starting
            case waiting(CheckedContinuation<Void, Error>)
            case cancelled
            case done
        }
        var phase = Phase.starting
        let deadline: Instant
        init(_ deadline: Instant) { self.deadline = deadline }
    }

    /// One `wait(until:)`: registering (its continuation not yet known),
    /// waiting, or failed before it could register.
    private enum Waiter {
        case registering
        case waiting(condition: @Sendable (Pending) -> Bool, continuation: CheckedContinuation<Void, Error>)
        case failed(any Error)
    }

    private struct State {
        var now: Instant
        var sleepers: [ObjectIdentifier: Sleeper] = [:]
        var timers: [UInt64: (when: Instant, action: @Sendable () -> Void)] = [:]
        var waiters: [UInt64: Waiter] = [:]
        var nextID: UInt64 = 1

        var pending: Pending {
            Pending(
                sleeps: sleepers.values.map { $0.deadline - now }.sorted(),
                timers: timers.values.map { $0.when - now }.sorted())
        }

        /// The waiters whose condition now holds, removed.
        mutating func satisfiedWaiters() -> [CheckedContinuation<Void, Error>] {
            guard !waiters.isEmpty else { return [] }
            let p = pending
            var out: [CheckedContinuation<Void, Error>] = []
            for (id, w) in waiters {
                if case .waiting(let condition, let c) = w, condition(p) {
                    out.append(c)
                    waiters[id] = nil
                }
            }
            return out
        }
    }

    private let state: Lock<State>
    private let origin: Instant
    private let unixOrigin: Int

    /// A clock standing at the real clock's now (and at the real wall
    /// clock's time for `unixTime`).
    public init() {
        let now = ContinuousClock.now
        origin = now
        unixOrigin = Int(time(nil))
        state = Lock(State(now: now))
    }

    public var now: Instant { state.withLock { $0.now } }

    public var minimumResolution: Duration { .nanoseconds(1) }

    /// Seconds since 1970 as this clock sees them: the wall clock when it
    /// was made, plus every advance since.
    public var unixTime: Int { unixOrigin + Int((now - origin).components.seconds) }

    /// What waits on the clock now.
    public var pending: Pending { state.withLock { $0.pending } }

    /// Suspends until the clock reaches `deadline` (returns at once if it
    /// has). Cancelling the task ends the sleep at once with
    /// `CancellationError`.
    public func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        try Task.checkCancellation()
        let sleeper = Sleeper(deadline)
        let key = ObjectIdentifier(sleeper)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                let (outcome, ready) = state.withLock { s -> (Result<Void, Error>?, [CheckedContinuation<Void, Error>]) in
                    if case .cancelled = sleeper.phase { return (.failure(CancellationError()), []) }
                    if deadline <= s.now {
                        sleeper.phase = .done
                        return (.success(()), [])
                    }
                    sleeper.phase = .waiting(c)
                    s.sleepers[key] = sleeper
                    return (nil, s.satisfiedWaiters())
                }
                for w in ready { w.resume() }
                if let outcome { c.resume(with: outcome) }
            }
        } onCancel: {
            let (c, ready) = state.withLock { s -> (CheckedContinuation<Void, Error>?, [CheckedContinuation<Void, Error>]) in
                switch sleeper.phase {
                case .starting:
                    sleeper.phase = .cancelled
                    return (nil, [])
                case .waiting(let c):
                    sleeper.phase = .cancelled
                    s.sleepers[key] = nil
                    return (c, s.satisfiedWaiters())
                case .cancelled, .done:
                    return (nil, [])
                }
            }
            for w in ready { w.resume() }
            c?.resume(throwing: CancellationError())
        }
    }

    /// Moves the clock forward by `duration`.
    public func advance(by duration: Duration) {
        advance(to: now + duration)
    }

    /// Moves the clock to `instant` (never back): every sleep due by then
    /// wakes and every action due by then runs, in the order they were due.
    /// The actions run before this returns; a woken sleep's task goes on
    /// asynchronously (wait for what it does next with `wait(until:)`).
    public func advance(to instant: Instant) {
        var due: [(when: Instant, run: () -> Void)] = []
        let ready = state.withLock { s -> [CheckedContinuation<Void, Error>] in
            guard instant > s.now else { return [] }
            s.now = instant
            for (key, sleeper) in s.sleepers where sleeper.deadline <= instant {
                s.sleepers[key] = nil
                if case .waiting(let c) = sleeper.phase {
                    sleeper.phase = .done
                    due.append((sleeper.deadline, { c.resume() }))
                }
            }
            for (id, t) in s.timers where t.when <= instant {
                s.timers[id] = nil
                due.append((t.when, t.action))
            }
            return s.satisfiedWaiters()
        }
        due.sort { $0.when < $1.when }
        for d in due { d.run() }
        for w in ready { w.resume() }
    }

    /// Suspends until `condition` holds for what waits on the clock (checked
    /// at once, then whenever a sleep or an action is added or removed, or
    /// the clock moves). `condition` runs under the clock's lock: it must not
    /// use the clock.
    ///
    /// - Parameter limit: real time after which the wait fails, so a test
    ///   whose code never waits ends with an error instead of hanging.
    /// - Throws: `ManualClock.WaitTimeout` (with what was pending) after
    ///   `limit`; `CancellationError` when the task is cancelled.
    public func wait(until condition: @escaping @Sendable (Pending) -> Bool, limit: Duration = .seconds(60)) async throws {
        let id = state.withLock { s -> UInt64? in
            if condition(s.pending) { return nil }
            let id = s.nextID
            s.nextID += 1
            s.waiters[id] = .registering
            return id
        }
        guard let id else { return }
        let watchdog = Task { [weak self] in
            try await Task.sleep(for: limit)
            self?.failWaiter(id, WaitTimeout(limit: limit, pending: self?.pending))
        }
        defer { watchdog.cancel() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                let outcome = state.withLock { s -> Result<Void, Error>? in
                    if case .failed(let e) = s.waiters[id] {
                        s.waiters[id] = nil
                        return .failure(e)
                    }
                    if condition(s.pending) {
                        s.waiters[id] = nil
                        return .success(())
                    }
                    s.waiters[id] = .waiting(condition: condition, continuation: c)
                    return nil
                }
                if let outcome { c.resume(with: outcome) }
            }
        } onCancel: {
            failWaiter(id, CancellationError())
        }
    }

    /// Suspends until at least `count` sleeps wait on the clock.
    public func waitForSleeps(_ count: Int = 1, limit: Duration = .seconds(60)) async throws {
        try await wait(until: { $0.sleeps.count >= count }, limit: limit)
    }

    private func failWaiter(_ id: UInt64, _ error: any Error) {
        let c = state.withLock { s -> CheckedContinuation<Void, Error>? in
            switch s.waiters[id] {
            case .registering?:
                s.waiters[id] = .failed(error)
                return nil
            case .waiting(_, let c)?:
                s.waiters[id] = nil
                return c
            case .failed?, nil:
                return nil
            }
        }
        c?.resume(throwing: error)
    }

    /// `wait(until:)` gave up.
    public struct WaitTimeout: Error, CustomStringConvertible {
        public var limit: Duration
        public var pending: Pending?
        public var description: String {
            "nothing expected waited on the manual clock within \(limit) of real time (pending: \(pending.map(\.description) ?? "?"))"
        }
    }

    // MARK: Scheduled actions (the host's deadline timer)

    /// Runs `action` when the clock reaches `when` (inside the `advance`
    /// that passes it; at once if it passed), unless cancelled first.
    /// Returns a token for `cancel`.
    package func schedule(at when: Instant, _ action: @escaping @Sendable () -> Void) -> UInt64 {
        let (id, runNow, ready) = state.withLock { s -> (UInt64, Bool, [CheckedContinuation<Void, Error>]) in
            let id = s.nextID
            s.nextID += 1
            if when <= s.now { return (id, true, []) }
            s.timers[id] = (when, action)
            return (id, false, s.satisfiedWaiters())
        }
        for w in ready { w.resume() }
        if runNow { action() }
        return id
    }

    /// Forgets a scheduled action (no-op if it already ran).
    package func cancel(_ id: UInt64) {
        let ready = state.withLock { s -> [CheckedContinuation<Void, Error>] in
            guard s.timers.removeValue(forKey: id) != nil else { return [] }
            return s.satisfiedWaiters()
        }
        for w in ready { w.resume() }
    }
}
