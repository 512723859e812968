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
