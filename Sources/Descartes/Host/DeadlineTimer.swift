import Glibc
import DescartesSupport

/// One thread that fires deadlines for every call in the process.
///
/// Why a thread and not `Task.sleep`: the host promises that no call
/// outlives its deadline, and Swift's cooperative pool has one thread per
/// core; an application that blocks those threads would delay every
/// deadline. This thread only computes and cancels (the plugin's `cancel` is
/// documented as prompt), so it stays responsive whatever the pool does. It
/// also costs one heap entry per call instead of one task.
///
/// On a `ManualClock` the action is the manual clock's to run instead, when
/// a test's `advance` passes `when`: no real time goes by.
final class DeadlineTimer: @unchecked Sendable {
    static let shared = DeadlineTimer()

    /// A scheduled action, for `cancel`.
    struct Token: Equatable, Sendable {
        let id: UInt64
        let manual: ManualClock?

        static func == (a: Token, b: Token) -> Bool { a.id == b.id && a.manual === b.manual }
    }

    struct Entry {
        var when: ContinuousClock.Instant
        var id: UInt64
        var action: @Sendable () -> Void
    }

    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var heap: [Entry] = []
    private var live: Set<UInt64> = []
    private var nextID: UInt64 = 1
    private var started = false

    /// The process has one (`shared`); tests make their own.
    init() {
        pthread_mutex_init(&mutex, nil)
        initMonotonicCondition(&cond)
    }

    /// Runs `action` when `clock` reaches `when` (at once if it passed),
    /// unless cancelled first: on the timer thread for the real clock, in
    /// the manual clock's `advance` for a manual one. Returns a token for
    /// `cancel`.
    @discardableResult
    func schedule(at when: ContinuousClock.Instant, on clock: DescartesClock, _ action: @escaping @Sendable () -> Void) -> Token {
        if let manual = clock.manual { return Token(id: manual.schedule(at: when, action), manual: manual) }
        pthread_mutex_lock(&mutex)
        if !started {
            started = true
            startThread()
        }
        let id = nextID
        nextID += 1
        push(Entry(when: when, id: id, action: action))
        live.insert(id)
        let isFirst = heap[0].id == id
        pthread_mutex_unlock(&mutex)
        if isFirst { pthread_cond_signal(&cond) }
        return Token(id: id, manual: nil)
    }

    /// Forgets a scheduled action (no-op if it already ran).
    ///
    /// A cancelled entry is left in the heap, to be dropped when it reaches
    /// the top; but most calls end long before their total deadline (minutes
    /// away), and the entries of every call that ended in those minutes
    /// stayed (about 100 bytes each with the action and its weak reference:
    /// a gateway answering 5,000 requests/s kept 3 million of them). Once
    /// cancelled entries are half the heap, they are all dropped here.
    func cancel(_ token: Token) {
        if let manual = token.manual { return manual.cancel(token.id) }
        var dropped: [Entry] = []
        pthread_mutex_lock(&mutex)
        live.remove(token.id)
        if heap.count >= Self.compactAt && live.count < heap.count / 2 {
            var kept: [Entry] = []
            kept.reserveCapacity(live.count)
            for e in heap {
                if live.contains(e.id) { kept.append(e) } else { dropped.append(e) }
            }
            heap = kept
            for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
        }
        pthread_mutex_unlock(&mutex)
        // Released outside the lock, as the timer thread does: an action may
        // hold the last reference to something whose deinit cancels another token.
        dropped.removeAll()
    }

    /// The heap size from which cancelled entries are dropped in `cancel`.
    static let compactAt = 64

    /// Entries in the heap, cancelled ones included (for tests).
    var pending: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return heap.count
    }

    private func startThread() {
        var tid = pthread_t()
        let me = Unmanaged.passUnretained(self).toOpaque()
        pthread_create(&tid, nil, { arg in
            Unmanaged<DeadlineTimer>.fromOpaque(arg!).takeUnretainedValue().loop()
            return nil
        }, me)
        pthread_detach(tid)
    }

    private func loop() {
        pthread_mutex_lock(&mutex)
        while true {
            // Drop cancelled entries at the top. They are released outside
            // the lock: an entry's action may hold the last reference to a
            // call whose deinit cancels another token of this timer (a
            // HostCall ending its backend's calls), which takes the lock.
            var dropped: [Entry] = []
            while let top = heap.first, !live.contains(top.id) { dropped.append(pop()) }
            if !dropped.isEmpty {
                pthread_mutex_unlock(&mutex)
                dropped.removeAll()
                pthread_mutex_lock(&mutex)
                continue
            }
            // Only the top's time is kept, not a copy of the entry: a copy
            // would hold its action (and the call it may hold the last
            // reference to) until the end of this iteration, after the lock
            // is taken again below, and that call's deinit, cancelling
            // another token, would then wait for this lock for ever (seen:
            // a stuck call's grace check, ReliabilityConfigTests).
            guard let when = heap.first?.when else {
                pthread_cond_wait(&cond, &mutex)
                continue
            }
            let now = ContinuousClock.now
            if when <= now {
                // The entry (and what its action holds) goes before the lock is taken again.
                do {
                    let e = pop()
                    live.remove(e.id)
                    pthread_mutex_unlock(&mutex)
                    e.action()
                }
                pthread_mutex_lock(&mutex)
                continue
            }
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            let wait = when - now
            let c = wait.components
            var sec = ts.tv_sec + Int(c.seconds)
            var nsec = ts.tv_nsec + Int(c.attoseconds / 1_000_000_000)
            if nsec >= 1_000_000_000 {
                sec += 1
                nsec -= 1_000_000_000
            }
            var deadline = timespec(tv_sec: sec, tv_nsec: nsec)
            pthread_cond_timedwait(&cond, &mutex, &deadline)
        }
    }

    // MARK: Binary heap ordered by `when`

    private func push(_ e: Entry) {
        heap.append(e)
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if heap[parent].when <= heap[i].when { break }
            heap.swapAt(parent, i)
            i = parent
        }
    }

    private func pop() -> Entry {
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            siftDown(0)
        }
        return top
    }

    private func siftDown(_ start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < heap.count && heap[l].when < heap[m].when { m = l }
            if r < heap.count && heap[r].when < heap[m].when { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
    }
}
