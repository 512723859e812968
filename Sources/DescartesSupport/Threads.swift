import Glibc

/// Runs `body` on a new detached thread (for work that must not run on the
/// caller's thread: Swift's cooperative pool, or a plugin's callback).
/// Returns false, without running it, when no thread could be made.
@discardableResult
package func detachThread(_ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ b: @escaping @Sendable () -> Void) { body = b }
    }
    var tid = pthread_t()
    let arg = Unmanaged.passRetained(Box(body)).toOpaque()
    guard pthread_create(&tid, nil, { p in
        Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().body()
        return nil
    }, arg) == 0 else {
        Unmanaged<Box>.fromOpaque(arg).release()
        return false
    }
    pthread_detach(tid)
    return true
}

/// Threads that call into plugins, so that a plugin function that never
/// returns blocks one of these and not its caller (Swift's cooperative pool,
/// a caller waiting on its deadline).
///
/// A job goes to an idle worker when there is one, else to a new worker:
/// a worker stuck forever in a plugin is never waited for, and the pool
/// keeps working without it. Workers idle for 10 s exit.
package final class PluginThreads: @unchecked Sendable {
    package static let shared = PluginThreads()

    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var jobs: [@Sendable () -> Void] = []
    private var idle = 0

    private init() {
        pthread_mutex_init(&mutex, nil)
        initMonotonicCondition(&cond)
    }

    /// Runs `job` on a worker. When no thread can be made, runs it here.
    package func run(_ job: @escaping @Sendable () -> Void) {
        // Every job goes through the queue, so no thread keeps a job (and
        // what it captured) alive after running it.
        pthread_mutex_lock(&mutex)
        jobs.append(job)
        let needThread = idle < jobs.count
        pthread_mutex_unlock(&mutex)
        if !needThread {
            pthread_cond_signal(&cond)
            return
        }
        if !detachThread({ [self] in work() }) {
            // No thread: run what is queued here.
            pthread_mutex_lock(&mutex)
            let queued = jobs
            jobs.removeAll()
            pthread_mutex_unlock(&mutex)
            for j in queued { j() }
        }
    }

    private func work() {
        pthread_mutex_lock(&mutex)
        while true {
            if !jobs.isEmpty {
                let job = jobs.removeFirst()
                pthread_mutex_unlock(&mutex)
                job()
                pthread_mutex_lock(&mutex)
                continue
            }
            idle += 1
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            ts.tv_sec += 10
            var timedOut = false
            while jobs.isEmpty && !timedOut {
                timedOut = pthread_cond_timedwait(&cond, &mutex, &ts) == ETIMEDOUT
            }
            idle -= 1
            if jobs.isEmpty {
                pthread_mutex_unlock(&mutex)
                return
            }
            let job = jobs.removeFirst()
            pthread_mutex_unlock(&mutex)
            job()
            pthread_mutex_lock(&mutex)
        }
    }

    /// Runs `job` on a worker and waits for it at most `seconds` (real
    /// time). Returns its result, or nil when it did not return in time:
    /// the job is then abandoned (it keeps its thread until it returns, if
    /// ever) and its result, if any, dropped.
    package func run<T: Sendable>(within seconds: Double, _ job: @escaping @Sendable () -> T) -> T? {
        runAll(within: seconds, [job])[0]
    }
}

extension PluginThreads {
    /// Runs every job on a worker of its own, all at once, and waits for
    /// them until `seconds` (real time) have passed since the call: each
    /// job's result, or nil for a job still running then (abandoned as
    /// `run(within:)` abandons one). For a command whose deadline bounds
    /// the whole of its work rather than each piece of it.
    package func runAll<T: Sendable>(within seconds: Double, _ jobs: [@Sendable () -> T]) -> [T?] {
        let slots = jobs.map { _ in Slot<T>() }
        for (job, slot) in zip(jobs, slots) {
            run {
                let v = job()
                pthread_mutex_lock(&slot.mutex)
                slot.value = v
                slot.done = true
                pthread_cond_broadcast(&slot.cond)
                pthread_mutex_unlock(&slot.mutex)
            }
        }
        // One deadline for all: each slot is waited for until the same instant.
        var ts = monotonicDeadline(after: seconds)
        return slots.map { slot in
            pthread_mutex_lock(&slot.mutex)
            defer { pthread_mutex_unlock(&slot.mutex) }
            while !slot.done {
                if pthread_cond_timedwait(&slot.cond, &slot.mutex, &ts) == ETIMEDOUT && !slot.done { return nil }
            }
            return slot.value
        }
    }

    /// Runs `job` on a worker (never on Swift's cooperative pool, whose few
    /// threads a job blocked in a plugin would take from every task) and
    /// awaits its result; nil when the calling task is cancelled first (the
    /// job then runs on, and its result is dropped). For a blocking plugin
    /// function (loading, `create`) called from async code.
    package func value<T: Sendable>(_ job: @escaping @Sendable () -> T) async -> T? {
        let waiter = Waiter<T>()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
                guard waiter.attach(c) else { return }
                run { waiter.finish(job()) }
            }
        } onCancel: {
            waiter.finish(nil)
        }
    }
}

/// The continuation `PluginThreads.value` waits on, resumed once: by the
/// job's result or by cancellation, whichever comes first.
private final class Waiter<T: Sendable>: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var continuation: CheckedContinuation<T?, Never>?
    private var finished = false
    init() { pthread_mutex_init(&mutex, nil) }

    /// False when it was already finished (cancelled before it began): `c` is then resumed with nil.
    func attach(_ c: CheckedContinuation<T?, Never>) -> Bool {
        pthread_mutex_lock(&mutex)
        if finished {
            pthread_mutex_unlock(&mutex)
            c.resume(returning: nil)
            return false
        }
        continuation = c
        pthread_mutex_unlock(&mutex)
        return true
    }

    func finish(_ v: T?) {
        pthread_mutex_lock(&mutex)
        finished = true
        let c = continuation
        continuation = nil
        pthread_mutex_unlock(&mutex)
        c?.resume(returning: v)
    }
}

/// Where a job run by `PluginThreads.run(within:)` leaves its result.
private final class Slot<T>: @unchecked Sendable {
    var mutex = pthread_mutex_t()
    var cond = pthread_cond_t()
    var value: T?
    var done = false
    init() {
        pthread_mutex_init(&mutex, nil)
        initMonotonicCondition(&cond)
    }
}
