@testable import Descartes
import DescartesCore
import Testing

/// The timer thread behind every host deadline (Sources/Descartes/Host/DeadlineTimer.swift).
@Suite struct DeadlineTimerTests {
    /// Holds the only reference an action has to something whose release
    /// cancels another token of the same timer, as a HostCall's does.
    final class CancelsOnRelease: Sendable {
        let timer: DeadlineTimer
        let other: DeadlineTimer.Token
        init(_ timer: DeadlineTimer, _ other: DeadlineTimer.Token) {
            self.timer = timer
            self.other = other
        }
        deinit { timer.cancel(other) }
    }

    /// A cancelled entry dropped by the timer thread may release the last
    /// reference to a call whose deinit cancels another token of the same
    /// timer. The thread used to drop it while holding its own lock, and
    /// cancel took that lock again: the thread deadlocked and no deadline of
    /// the process fired again (seen as a 10 minute stall of the test suite).
    @Test func releasingADroppedEntryMayCancelAnotherToken() async throws {
        let timer = DeadlineTimer()  // its own: a regression deadlocks this one only
        let clock = DescartesClock.continuous
        let far = timer.schedule(at: .now + .seconds(3600), on: clock) {}
        var holder: CancelsOnRelease? = CancelsOnRelease(timer, far)
        let dropped = timer.schedule(at: .now + .milliseconds(200), on: clock) { [holder] in _ = holder }
        holder = nil
        // Scheduled before the drop, so that the test never waits on the
        // timer's lock itself.
        let fired = Lock(false)
        timer.schedule(at: .now + .milliseconds(600), on: clock) { fired.withLock { $0 = true } }
        timer.cancel(dropped)  // the timer thread drops it at 200 ms, releasing the holder
        // Polled rather than awaited: in the failure this guards against the
        // action never runs, and the test must fail, not wait for it.
        for _ in 0..<200 where !fired.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(50)) }
        #expect(fired.withLock { $0 }, "an entry scheduled after the dropped one never fired: the timer thread is stuck")
    }

    /// A call cancels its deadline check when it ends, mostly minutes
    /// before the check was due (the total deadline). The cancelled entries
    /// used to wait in the heap until then: a busy gateway kept one per
    /// request answered in the last ten minutes. Past half the heap they go
    /// at once, and what is still scheduled fires in order.
    @Test func cancelledEntriesDoNotAccumulate() async throws {
        let timer = DeadlineTimer()
        let clock = DescartesClock.continuous
        let fired = Lock<[Int]>([])
        // Two live entries, due soon, scheduled among thousands cancelled
        // ones, their deadlines from one instant and the earlier one first:
        // under load the loop took longer than the 150 ms between them, so
        // a later-scheduled earlier deadline was already behind the other.
        let base = ContinuousClock.now
        for i in 0..<5000 {
            let t = timer.schedule(at: .now + .seconds(600 + i % 7), on: clock) {}
            if i == 1000 { timer.schedule(at: base + .milliseconds(150), on: clock) { fired.withLock { $0.append(1) } } }
            if i == 3000 { timer.schedule(at: base + .milliseconds(300), on: clock) { fired.withLock { $0.append(2) } } }
            timer.cancel(t)
        }
        #expect(timer.pending < DeadlineTimer.compactAt * 2, "\(timer.pending) entries kept for 5,000 cancelled and 2 live")
        for _ in 0..<500 where fired.withLock({ $0.count }) < 2 { try await Task.sleep(for: .milliseconds(20)) }
        #expect(fired.withLock { $0 } == [1, 2])
    }
}
