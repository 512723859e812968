import Glibc

/// Initializes `cond` so that `pthread_cond_timedwait` measures its deadline
/// on CLOCK_MONOTONIC (immune to the wall clock being set); pair it with
/// `monotonicDeadline(after:)`.
package func initMonotonicCondition(_ cond: UnsafeMutablePointer<pthread_cond_t>) {
    var attr = pthread_condattr_t()
    pthread_condattr_init(&attr)
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
    pthread_cond_init(cond, &attr)
    pthread_condattr_destroy(&attr)
}

/// The absolute CLOCK_MONOTONIC time `seconds` from now, for
/// `pthread_cond_timedwait` on a condition made by `initMonotonicCondition`.
package func monotonicDeadline(after seconds: Double) -> timespec {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    let whole = seconds.rounded(.down)
    ts.tv_sec += Int(whole)
    ts.tv_nsec += Int((seconds - whole) * 1e9)
    if ts.tv_nsec >= 1_000_000_000 {
        ts.tv_sec += 1
        ts.tv_nsec -= 1_000_000_000
    }
    return ts
}
