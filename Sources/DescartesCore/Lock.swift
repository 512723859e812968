import Glibc

/// A mutual-exclusion lock that owns the value it protects: the project's
/// replacement for `Synchronization.Mutex`, with the same `withLock` shape.
///
/// Why not `Mutex`: on Linux it hands a contended lock over in the kernel
/// (a priority-inheritance futex), which ThreadSanitizer cannot see, so every
/// contended `withLock` is reported as a data race and TSan runs of the test
/// suite are useless. This is a plain `pthread_mutex_t` (which TSan
/// intercepts) on the heap, so the lock never moves; the value lives in its
/// own heap cell too, so `withLock` hands it out `inout` without Swift's
/// dynamic exclusivity check on a class property. `make bench-lock` compares
/// the two (docs/hardening.md has the numbers).
///
/// ```swift
/// let counts = Lock([String: Int]())
/// counts.withLock { $0["a", default: 0] += 1 }
/// ```
public final class Lock<Value>: @unchecked Sendable {
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline let storage: UnsafeMutablePointer<Value>

    public init(_ initialValue: Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
        storage = .allocate(capacity: 1)
        storage.initialize(to: initialValue)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        storage.deinitialize(count: 1)
        storage.deallocate()
    }

    /// Runs `body` with the value while holding the lock. Not reentrant:
    /// calling `withLock` on the same lock from inside `body` deadlocks.
    @inlinable
    public func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&storage.pointee)
    }

    /// Like `withLock`, but returns nil at once when another thread holds
    /// the lock.
    @inlinable
    public func withLockIfAvailable<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&storage.pointee)
    }
}
