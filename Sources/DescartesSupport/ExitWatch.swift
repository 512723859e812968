import Glibc
internal import CProcessShim

/// Calls `onExit` (on a thread of its own) as soon as process `pid`, a child
/// of this process, exits, without reaping it: the isolation proxy learns
/// that its helper died at once, even when something the helper started
/// still holds the helper's socket open. Returns false when the kernel
/// offers no pidfd (the caller then relies on its socket closing).
@discardableResult
package func watchExit(pid: Int32, _ onExit: @escaping @Sendable () -> Void) -> Bool {
    let fd = dsc_pidfd_open(pid)
    guard fd >= 0 else { return false }
    let started = detachThread {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&p, 1, -1) < 0 && errno == EINTR {}
        close(fd)
        onExit()
    }
    if !started { close(fd) }
    return started
}
