internal import CProcessShim
internal import DescartesSupport
import Glibc

/// What to run. Never a shell: `executable` is the resolved absolute path
/// given to `execve`, `arguments` its argv after argv[0].
public struct ProcessSpec: Sendable {
    public enum Framing: Sendable {
        /// stdout is delivered line by line (without the newline), lines of
        /// any length.
        case lines
        /// stdout is delivered in the pieces `read` returns, as they arrive.
        case chunks
    }

    public var executable: String
    public var arguments: [String]
    /// argv[0]; defaults to the executable's path.
    public var argv0: String?
    /// The complete environment (see `ChildEnvironment.build`).
    public var environment: [String: String]
    public var workingDirectory: String?
    /// Written to stdin first.
    public var input: [UInt8]
    /// Keep stdin open after `input` (a session: more is written later);
    /// otherwise it is closed once `input` is written.
    public var keepInputOpen: Bool
    public var limits: ProcessLimits
    /// When the child is terminated with reason `.timedOut`.
    public var deadline: ContinuousClock.Instant?
    /// Between SIGTERM and SIGKILL.
    public var killGrace: Duration
    /// After the child exits, how long to wait for its pipes to close (a
    /// grandchild may still hold them) before its process group is killed.
    public var drainAfterExit: Duration
    /// How much of the end of stderr is kept for error messages.
    public var stderrTailBytes: Int
    public var stdoutFraming: Framing

    public init(
        executable: String, arguments: [String] = [], argv0: String? = nil, environment: [String: String] = [:],
        workingDirectory: String? = nil, input: [UInt8] = [], keepInputOpen: Bool = false,
        limits: ProcessLimits = ProcessLimits(), deadline: ContinuousClock.Instant? = nil,
        killGrace: Duration = .seconds(2), drainAfterExit: Duration = .milliseconds(500), stderrTailBytes: Int = 8192,
        stdoutFraming: Framing = .lines
    ) {
        self.executable = executable
        self.arguments = arguments
        self.argv0 = argv0
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.input = input
        self.keepInputOpen = keepInputOpen
        self.limits = limits
        self.deadline = deadline
        self.killGrace = killGrace
        self.drainAfterExit = drainAfterExit
        self.stderrTailBytes = stderrTailBytes
        self.stdoutFraming = stdoutFraming
    }
}

/// How a child ended. Every child is reaped before this is reported.
public struct ChildExit: Sendable, CustomStringConvertible {
    public enum Reason: Sendable, Hashable {
        /// It exited (or was killed by a signal) on its own.
        case exited
        /// Its deadline passed and it was terminated.
        case timedOut
        /// `terminate()` was called (a cancellation, or a child lingering
        /// after `expectExit(within:)`).
        case terminated
        /// It wrote more than `maxOutputBytes` and was killed.
        case outputLimit
    }

    public var pid: Glibc.pid_t
    /// The exit status, or nil when a signal ended it.
    public var status: Int32?
    /// The signal that ended it, if any.
    public var signal: Int32?
    public var reason: Reason
    /// The end of stderr (at most `stderrTailBytes`), escape codes removed.
    public var stderrTail: String
    /// The process group still held stdout or stderr open after the child
    /// exited (a grandchild), and was killed.
    public var killedStragglers: Bool
    public var stdoutBytes: Int
    public var duration: Duration

    /// "exited with status 1", "killed by signal 15 (SIGTERM)".
    public var statusDescription: String {
        if let signal { return "killed by signal \(signal) (\(signalName(signal)))" }
        return "exited with status \(status ?? -1)"
    }

    public var description: String { "pid \(pid) \(statusDescription), reason \(reason)" }

    public var succeeded: Bool { reason == .exited && status == 0 && signal == nil }


    /// The error a headless backend reports for this exit when the child
    /// did not deliver its answer: `timeout`, `cancelled`, or `process` with
    /// the exit status (as `status`) and the stderr tail.
    public func error(_ program: String, context: String = "") -> ProviderError {
        switch reason {
        case .timedOut:
            return ProviderError(.timeout, "\(program) did not finish before its deadline and was terminated", deadline: "total")
        case .terminated:
            return ProviderError(.cancelled, "\(program) was terminated")
        case .outputLimit:
            return ProviderError(.process, "\(program) wrote more output than allowed (max_output_mb) and was killed")
        case .exited:
            var message = "\(program) \(statusDescription)\(context)"
            if !stderrTail.isEmpty { message += ": " + stderrTail }
            return ProviderError(.process, message, status: signal.map { 128 + Int($0) } ?? status.map(Int.init))
        }
    }
}

/// What the runner reports about one child, on the runner's thread. The
/// handlers must return quickly; the buffers are borrowed for the call.
public struct ChildHandlers: Sendable {
    public var stdout: @Sendable (UnsafeRawBufferPointer) -> Void
    public var stderr: @Sendable (UnsafeRawBufferPointer) -> Void
    public var exit: @Sendable (ChildExit) -> Void

    public init(
        stdout: @escaping @Sendable (UnsafeRawBufferPointer) -> Void,
        stderr: @escaping @Sendable (UnsafeRawBufferPointer) -> Void = { _ in },
        exit: @escaping @Sendable (ChildExit) -> Void
    ) {
        self.stdout = stdout
        self.stderr = stderr
        self.exit = exit
    }
}

/// A running child: what a backend can do with it. Every method only queues
/// a command for the runner's thread and returns at once.
public final class ChildProcess: Sendable {
    public let pid: Glibc.pid_t
    let id: UInt64
    let runner: ProcessRunner
    /// How long `spawn` took (fork and exec, until the child's execve).
    public let spawnDuration: Duration
    public let startedAt: ContinuousClock.Instant

    init(pid: pid_t, id: UInt64, runner: ProcessRunner, spawnDuration: Duration, startedAt: ContinuousClock.Instant) {
        self.pid = pid
        self.id = id
        self.runner = runner
        self.spawnDuration = spawnDuration
        self.startedAt = startedAt
    }

    /// Queues bytes for stdin (dropped if stdin is already closed).
    public func write(_ bytes: [UInt8]) { runner.send(.write(id, bytes)) }
    /// Closes stdin once everything queued has been written.
    public func closeInput() { runner.send(.closeInput(id)) }
    /// SIGTERM to the process group, SIGKILL after the grace period.
    public func terminate() { runner.send(.terminate(id)) }
    /// The child should exit by itself now (its work is done); if it has not
    /// within `grace`, it is terminated.
    public func expectExit(within grace: Duration) { runner.send(.expectExit(id, grace)) }
    /// Sets or clears the deadline.
    public func setDeadline(_ deadline: ContinuousClock.Instant?) { runner.send(.deadline(id, deadline)) }
}

/// Runs child processes for one backend instance on one thread.
///
/// A single `poll(2)` loop carries every child of the backend: their stdin
/// writes, stdout and stderr reads, exit notifications (a pidfd per child;
/// `waitid(WNOWAIT)` polling where pidfds are unavailable), deadlines and
/// kill timers. The thread starts with the first child and ends at `close`,
/// so a backend with hundreds of children in flight has one thread for them.
///
/// Guarantees: each child runs in its own process group; on cancel, deadline
/// or output overflow the group gets SIGTERM and, after the grace period,
/// SIGKILL; when the child exits, members of its group still holding its
/// pipes are killed after `drainAfterExit`; every child is reaped (no
/// zombies), and `exit` is reported exactly once per child, after its last
/// output.
public final class ProcessRunner: @unchecked Sendable {
    enum Command: Sendable {
        case add(ChildState)
        case write(UInt64, [UInt8])
        case closeInput(UInt64)
        case terminate(UInt64)
        case expectExit(UInt64, Duration)
        case deadline(UInt64, ContinuousClock.Instant?)
    }

    private struct Shared {
        var commands: [Command] = []
        var started = false
        var closing = false
        var closed = false
        var thread: pthread_t?
        var onClosed: [@Sendable () -> Void] = []
        var nextID: UInt64 = 1
        var live = 0
    }
    private let shared = Lock(Shared())
    private let wakeRead: Int32
    private let wakeWrite: Int32
    /// The label in thread names and messages.
    public let name: String

    // Owned by the loop thread.
    private var children: [UInt64: ChildState] = [:]
    /// Once shutdown began: when the children still running are killed.
    private var shutdownBy: ContinuousClock.Instant?
    private let usePidfd: Bool

    public init(name: String) {
        self.name = name
        var fds: [Int32] = [-1, -1]
        if dsc_pipe(&fds) == 0 {
            _ = dsc_nonblock(fds[0])
            _ = dsc_nonblock(fds[1])
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        // pidfd_open(getpid()) tells whether the kernel has pidfds.
        let probe = dsc_pidfd_open(getpid())
        usePidfd = probe >= 0
        if probe >= 0 { Glibc.close(probe) }
    }

    deinit {
        if wakeRead >= 0 { Glibc.close(wakeRead) }
        if wakeWrite >= 0 { Glibc.close(wakeWrite) }
    }

    /// Children running now.
    public var liveChildren: Int { shared.withLock { $0.live } }

    // MARK: Spawning

    /// Starts a child. Returns promptly (the caller waits only for the
    /// child's execve, about a millisecond).
    ///
    /// - Throws: `process` naming the step that failed (for example
    ///   "chdir /x: No such file or directory"), or `backend` after `close`.
    public func spawn(_ spec: ProcessSpec, handlers: ChildHandlers) throws(ProviderError) -> ChildProcess {
        let id = try shared.withLock { s throws(ProviderError) -> UInt64 in
            if s.closing { throw ProviderError(.backend, "the backend is shutting down") }
            defer { s.nextID += 1 }
            return s.nextID
        }
        var pipes: [(read: Int32, write: Int32)] = []
        do throws(SpawnError) {
            for _ in 0..<3 { pipes.append(try Spawner.pipe()) }
        } catch {
            for p in pipes { Glibc.close(p.read); Glibc.close(p.write) }
            throw ProviderError(.process, "cannot create pipes for \(spec.executable): \(error)")
        }
        let (inPipe, outPipe, errPipe) = (pipes[0], pipes[1], pipes[2])

        let begin = ContinuousClock.now
        let spawned: Result<pid_t, SpawnError>
        do throws(SpawnError) {
            spawned = .success(
                try Spawner.spawn(
                    SpawnRequest(
                        path: spec.executable, arguments: [spec.argv0 ?? spec.executable] + spec.arguments, environment: spec.environment,
                        workingDirectory: spec.workingDirectory, stdin: inPipe.read, stdout: outPipe.write, stderr: errPipe.write,
                        limits: spec.limits)))
        } catch {
            spawned = .failure(error)
        }
        let spawnDuration = ContinuousClock.now - begin
        // The child's ends are its own now (or it failed).
        Glibc.close(inPipe.read)
        Glibc.close(outPipe.write)
        Glibc.close(errPipe.write)
        guard case .success(let pid) = spawned else {
            Glibc.close(inPipe.write)
            Glibc.close(outPipe.read)
            Glibc.close(errPipe.read)
            if case .failure(let e) = spawned { throw ProviderError(.process, "cannot start \(spec.executable): \(e)") }
            preconditionFailure()
        }
        _ = dsc_nonblock(inPipe.write)
        _ = dsc_nonblock(outPipe.read)
        _ = dsc_nonblock(errPipe.read)
        let pidfd = usePidfd ? dsc_pidfd_open(pid) : -1
        let child = ChildProcess(pid: pid, id: id, runner: self, spawnDuration: spawnDuration, startedAt: begin)
        let state = ChildState(
            id: id, pid: pid, pidfd: pidfd, stdin: inPipe.write, stdout: outPipe.read, stderr: errPipe.read, spec: spec,
            handlers: handlers, started: begin)
        // Checked and queued under one lock: a child is either seen by the
        // loop (which ends it at shutdown) or refused here.
        guard enqueue(.add(state), ifOpen: true) else {
            // shutdown() ran meanwhile: nobody will read this child; end it here.
            kill(-pid, SIGKILL)
            state.closeFDs()
            var code: Int32 = 0
            var sig: Int32 = 0
            _ = dsc_reap(pid, 0, &code, &sig)
            if pidfd >= 0 { Glibc.close(pidfd) }
            throw ProviderError(.backend, "the backend is shutting down")
        }
        return child
    }

    // MARK: Commands

    func send(_ c: Command) { _ = enqueue(c, ifOpen: false) }

    /// Queues a command for the loop (starting the loop's thread with the
    /// first one). With `ifOpen`, refuses (false) once shutdown has begun.
    private func enqueue(_ c: Command, ifOpen: Bool) -> Bool {
        var failed: [Command] = []
        let queued = shared.withLock { s -> Bool in
            if ifOpen && s.closing { return false }
            if case .add = c { s.live += 1 }
            s.commands.append(c)
            if !s.started && !s.closing {
                s.started = true
                // Created under the lock so that `close` always finds the
                // thread to join (the thread itself waits for the lock).
                if let t = startLoop() {
                    s.thread = t
                } else {
                    // Without a thread nothing can be watched: end what is queued.
                    s.closing = true
                    s.closed = true
                    failed = s.commands
                    s.commands = []
                }
            }
            return true
        }
        for case .add(let child) in failed {
            kill(-child.pid, SIGKILL)
            finalizeReap(child)
        }
        wake()
        return queued
    }

    private func wake() {
        var b: UInt8 = 1
        _ = Glibc.write(wakeWrite, &b, 1)  // EAGAIN: a wake-up is already pending
    }

    /// Ends every child: stdin closed and SIGTERM to its process group, then
    /// SIGKILL after its grace period; reaps them, reports their exits
    /// (reason `.terminated` for those still running), stops the thread, and
    /// then calls `completion` (on the runner's thread, or at once if it never
    /// started). New spawns are refused from now on. Never blocks: safe from
    /// inside a handler.
    public func shutdown(_ completion: @escaping @Sendable () -> Void = {}) {
        let runNow = shared.withLock { s -> Bool in
            if s.closed || !s.started {
                s.closing = true
                s.closed = true
                return true
            }
            s.closing = true
            s.onClosed.append(completion)
            return false
        }
        if runNow { completion() } else { wake() }
    }

    /// `shutdown`, then waits for the thread to end (unless called on it).
    /// For `deinit` of the backend that owns the runner.
    public func close() {
        shutdown()
        let thread = shared.withLock { s -> pthread_t? in
            defer { s.thread = nil }
            return s.thread
        }
        guard let thread else { return }
        if pthread_equal(thread, pthread_self()) != 0 { pthread_detach(thread) } else { pthread_join(thread, nil) }
    }

    private func startLoop() -> pthread_t? {
        final class Box: @unchecked Sendable {
            let runner: ProcessRunner
            init(_ r: ProcessRunner) { runner = r }
        }
        let arg = Unmanaged.passRetained(Box(self)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { p in
            let box = Unmanaged<Box>.fromOpaque(p!).takeRetainedValue()
            box.runner.loop()
            return nil
        }, arg)
        if rc == 0 { return tid }
        Unmanaged<Box>.fromOpaque(arg).release()
        return nil
    }

    // MARK: The loop (runner thread only below)

    /// The name of the runner's thread in /proc/<pid>/task/*/comm: "dp-"
    /// and the first 12 bytes of the runner's name (the backend instance).
    public var threadName: String { "dp-" + String(decoding: Array(name.utf8.prefix(12)), as: UTF8.self) }

    private func loop() {
        dsc_thread_setup(threadName)
        var buffer = [UInt8](repeating: 0, count: 65536)
        var pollfds: [pollfd] = []
        var targets: [(ChildState, Int)] = []  // 0 stdin, 1 stdout, 2 stderr, 3 pidfd
        while true {
            let (commands, closing) = shared.withLock { s -> ([Command], Bool) in
                defer { s.commands = [] }
                return (s.commands, s.closing)
            }
            for c in commands { apply(c) }
            if closing {
                if shutdownBy == nil {
                    // Ask every child to stop (stdin closed, SIGTERM to its
                    // group); the kill timers and the cap below do the rest.
                    var longest = Duration.zero
                    for c in children.values where !c.exited {
                        c.setReason(.terminated)
                        c.closeStdin()
                        sendTerm(c)
                        longest = max(longest, c.spec.killGrace + c.spec.drainAfterExit)
                    }
                    shutdownBy = .now + longest + .seconds(1)
                }
                if children.isEmpty || ContinuousClock.now >= shutdownBy! {
                    killAll()
                    let callbacks = shared.withLock { s -> [@Sendable () -> Void] in
                        s.closed = true
                        defer { s.onClosed = [] }
                        return s.onClosed
                    }
                    for c in callbacks { c() }
                    // Nobody has claimed the thread to join it (close()
                    // takes it under the lock): detach, so a host that shuts
                    // the backend down and never destroys it (a CLI about to
                    // exit) does not keep a finished, unjoined thread
                    // (ThreadSanitizer reported it as a leak).
                    shared.withLock { s in
                        if let t = s.thread {
                            pthread_detach(t)
                            s.thread = nil
                        }
                    }
                    return
                }
            }

            let now = ContinuousClock.now
            var nextTimer: ContinuousClock.Instant? = shutdownBy
            func timer(_ t: ContinuousClock.Instant?) {
                guard let t else { return }
                if nextTimer == nil || t < nextTimer! { nextTimer = t }
            }
            pollfds.removeAll(keepingCapacity: true)
            targets.removeAll(keepingCapacity: true)
            pollfds.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0))
            var needExitPolling = false
            for c in children.values {
                if c.stdin >= 0 && c.inputOffset < c.input.count {
                    pollfds.append(pollfd(fd: c.stdin, events: Int16(POLLOUT), revents: 0))
                    targets.append((c, 0))
                }
                if c.stdout >= 0 {
                    pollfds.append(pollfd(fd: c.stdout, events: Int16(POLLIN), revents: 0))
                    targets.append((c, 1))
                }
                if c.stderr >= 0 {
                    pollfds.append(pollfd(fd: c.stderr, events: Int16(POLLIN), revents: 0))
                    targets.append((c, 2))
                }
                if !c.exited {
                    if c.pidfd >= 0 {
                        pollfds.append(pollfd(fd: c.pidfd, events: Int16(POLLIN), revents: 0))
                        targets.append((c, 3))
                    } else {
                        needExitPolling = true
                    }
                }
                if !c.exited {
                    timer(c.deadline)
                    timer(c.exitBy)
                    timer(c.killAt)
                }
                timer(c.drainUntil)
            }
            if needExitPolling { timer(now + .milliseconds(20)) }
            var timeout: Int32 = -1
            if let t = nextTimer {
                let d = t - now
                timeout = d <= .zero ? 0 : Int32(min(60_000, (d.milliseconds + 1)))
            }
            let r = pollfds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), timeout) }
            if r < 0 && errno != EINTR { usleep(1000) }
            if r > 0 {
                if pollfds[0].revents != 0 { drainWake() }
                for (i, (c, which)) in targets.enumerated() {
                    let ev = pollfds[i + 1].revents
                    if ev == 0 { continue }
                    switch which {
                    case 0: writeInput(c)
                    case 1: read(c, stdout: true, &buffer)
                    case 2: read(c, stdout: false, &buffer)
                    default: leaderExited(c)
                    }
                }
            }
            if needExitPolling {
                for c in children.values where !c.exited && c.pidfd < 0 {
                    if dsc_exited(c.pid) != 0 { leaderExited(c) }
                }
            }
            fireTimers()
            for c in Array(children.values) where c.readyToFinalize { finalize(c) }
        }
    }

    private func drainWake() {
        var b = [UInt8](repeating: 0, count: 256)
        while Glibc.read(wakeRead, &b, b.count) > 0 {}
    }

    private func apply(_ c: Command) {
        switch c {
        case .add(let child):
            children[child.id] = child
            if child.input.isEmpty && !child.keepInputOpen { child.closeStdin() }
        case .write(let id, let bytes):
            guard let child = children[id], child.stdin >= 0, !bytes.isEmpty else { return }
            if child.inputOffset == child.input.count {
                child.input = bytes
                child.inputOffset = 0
            } else {
                child.input.append(contentsOf: bytes)
            }
        case .closeInput(let id):
            guard let child = children[id] else { return }
            child.keepInputOpen = false
            if child.inputOffset >= child.input.count { child.closeStdin() }
        case .terminate(let id):
            guard let child = children[id] else { return }
            if child.exited {
                // Draining after the child's exit: stop waiting for stragglers.
                child.drainUntil = .now
            } else {
                child.setReason(.terminated)
                sendTerm(child)
            }
        case .expectExit(let id, let grace):
            guard let child = children[id], !child.exited else { return }
            let at = ContinuousClock.now + grace
            if child.exitBy == nil || at < child.exitBy! { child.exitBy = at }
        case .deadline(let id, let at):
            children[id]?.deadline = at
        }
    }

    private func writeInput(_ c: ChildState) {
        while c.stdin >= 0 && c.inputOffset < c.input.count {
            let n = c.input.withUnsafeBytes { buf in
                Glibc.write(c.stdin, buf.baseAddress! + c.inputOffset, buf.count - c.inputOffset)
            }
            if n > 0 {
                c.inputOffset += n
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
            // EPIPE (SIGPIPE is blocked on this thread): the child stopped
            // reading. Whatever it does with that is its exit status's story.
            c.input = []
            c.inputOffset = 0
            c.closeStdin()
            return
        }
        if c.inputOffset >= c.input.count {
            c.input = []
            c.inputOffset = 0
            if !c.keepInputOpen { c.closeStdin() }
        }
    }

    private func read(_ c: ChildState, stdout: Bool, _ buffer: inout [UInt8]) {
        let fd = stdout ? c.stdout : c.stderr
        guard fd >= 0 else { return }
        // A bounded number of reads per wake-up keeps one chatty child from
        // starving the others.
        for _ in 0..<16 {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { return }
            }
            if n <= 0 {
                eof(c, stdout: stdout)
                return
            }
            c.outputBytes += n
            if let limit = c.spec.limits.maxOutputBytes, c.outputBytes > limit {
                c.setReason(.outputLimit)
                kill(-c.pid, SIGKILL)
                c.closeOutput()
                return
            }
            buffer.withUnsafeBytes { raw in
                let chunk = UnsafeRawBufferPointer(rebasing: raw[0..<n])
                if stdout {
                    c.stdoutBytes += n
                    if c.spec.stdoutFraming == .chunks {
                        c.handlers.stdout(chunk)
                    } else {
                        let h = c.handlers.stdout
                        c.stdoutLines.append(chunk) { h($0) }
                    }
                } else {
                    c.keepTail(chunk)
                    let h = c.handlers.stderr
                    c.stderrLines.append(chunk) { h($0) }
                }
            }
            if n < buffer.count { return }
        }
    }

    private func eof(_ c: ChildState, stdout: Bool) {
        if stdout {
            let h = c.handlers.stdout
            c.stdoutLines.finish { h($0) }
            Glibc.close(c.stdout)
            c.stdout = -1
        } else {
            let h = c.handlers.stderr
            c.stderrLines.finish { h($0) }
            Glibc.close(c.stderr)
            c.stderr = -1
        }
    }

    private func leaderExited(_ c: ChildState) {
        guard !c.exited else { return }
        c.exited = true
        c.closeStdin()
        if c.stdout >= 0 || c.stderr >= 0 { c.drainUntil = .now + c.spec.drainAfterExit }
    }

    private func sendTerm(_ c: ChildState) {
        guard !c.termSent, !c.exited else { return }
        c.termSent = true
        kill(-c.pid, SIGTERM)
        c.killAt = .now + c.spec.killGrace
    }

    private func fireTimers() {
        let now = ContinuousClock.now
        for c in children.values {
            if !c.exited {
                if let d = c.deadline, d <= now {
                    c.deadline = nil
                    c.setReason(.timedOut)
                    sendTerm(c)
                }
                if let e = c.exitBy, e <= now {
                    c.exitBy = nil
                    c.setReason(.terminated)
                    sendTerm(c)
                }
                if let k = c.killAt, k <= now {
                    kill(-c.pid, SIGKILL)
                    c.killAt = nil
                }
            }
            if let d = c.drainUntil, d <= now {
                // The child is gone but its group holds the pipes: take what
                // is buffered, then end the group.
                c.drainUntil = nil
                c.killedStragglers = c.stdout >= 0 || c.stderr >= 0
                kill(-c.pid, SIGKILL)
                if c.stdout >= 0 { eof(c, stdout: true) }
                if c.stderr >= 0 { eof(c, stdout: false) }
            }
        }
    }

    private func finalize(_ c: ChildState) {
        children[c.id] = nil
        // Members of the group left behind (a daemonized grandchild that
        // closed its pipes) end with the child. The unreaped leader keeps the
        // group id from being reused until this signal is sent.
        kill(-c.pid, SIGKILL)
        finalizeReap(c)
    }

    private func finalizeReap(_ c: ChildState) {
        c.closeFDs()
        var code: Int32 = -1
        var sig: Int32 = 0
        let reaped = dsc_reap(c.pid, 0, &code, &sig)
        if c.pidfd >= 0 {
            Glibc.close(c.pidfd)
            c.pidfd = -1
        }
        shared.withLock { $0.live -= 1 }
        let exit = ChildExit(
            pid: c.pid, status: reaped == 1 && sig == 0 ? code : nil, signal: reaped == 1 && sig != 0 ? sig : nil,
            reason: c.reason, stderrTail: c.tailText(), killedStragglers: c.killedStragglers, stdoutBytes: c.stdoutBytes,
            duration: .now - c.started)
        c.handlers.exit(exit)
    }

    private func killAll() {
        for c in children.values { kill(-c.pid, SIGKILL) }
        for c in Array(children.values) {
            children[c.id] = nil
            c.setReason(.terminated)
            if c.stdout >= 0 { eof(c, stdout: true) }
            if c.stderr >= 0 { eof(c, stdout: false) }
            finalizeReap(c)
        }
    }
}

/// One child, as the runner's thread sees it.
/// Confined to the runner's thread once handed over (the `.add` command).
final class ChildState: @unchecked Sendable {
    let id: UInt64
    let pid: pid_t
    var pidfd: Int32
    var stdin: Int32
    var stdout: Int32
    var stderr: Int32
    let spec: ProcessSpec
    let handlers: ChildHandlers
    let started: ContinuousClock.Instant
    var input: [UInt8]
    var inputOffset = 0
    var keepInputOpen: Bool
    var stdoutLines = LineBuffer()
    var stderrLines = LineBuffer()
    var tail: [UInt8] = []
    var outputBytes = 0
    var stdoutBytes = 0
    var deadline: ContinuousClock.Instant?
    var exitBy: ContinuousClock.Instant?
    var killAt: ContinuousClock.Instant?
    var drainUntil: ContinuousClock.Instant?
    var exited = false
    var termSent = false
    var killedStragglers = false
    var reason = ChildExit.Reason.exited

    init(
        id: UInt64, pid: pid_t, pidfd: Int32, stdin: Int32, stdout: Int32, stderr: Int32, spec: ProcessSpec,
        handlers: ChildHandlers, started: ContinuousClock.Instant
    ) {
        self.id = id
        self.pid = pid
        self.pidfd = pidfd
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.spec = spec
        self.handlers = handlers
        self.started = started
        self.input = spec.input
        self.keepInputOpen = spec.keepInputOpen
        self.deadline = spec.deadline
    }

    var readyToFinalize: Bool { exited && stdout < 0 && stderr < 0 }

    /// The first reason wins (a timeout stays a timeout when the kill that
    /// follows also looks like a termination).
    func setReason(_ r: ChildExit.Reason) {
        if reason == .exited { reason = r }
    }

    func closeStdin() {
        if stdin >= 0 {
            Glibc.close(stdin)
            stdin = -1
        }
    }

    func closeOutput() {
        if stdout >= 0 {
            Glibc.close(stdout)
            stdout = -1
        }
        if stderr >= 0 {
            Glibc.close(stderr)
            stderr = -1
        }
    }

    func closeFDs() {
        closeStdin()
        closeOutput()
    }

    func keepTail(_ chunk: UnsafeRawBufferPointer) {
        let limit = max(256, spec.stderrTailBytes)
        if chunk.count >= limit {
            tail = Array(chunk[(chunk.count - limit)...])
            return
        }
        tail.append(contentsOf: chunk)
        if tail.count > 2 * limit { tail.removeFirst(tail.count - limit) }
    }

    func tailText() -> String {
        let limit = max(256, spec.stderrTailBytes)
        var bytes = tail.count > limit ? Array(tail[(tail.count - limit)...]) : tail
        // Do not start in the middle of a UTF-8 sequence.
        while let f = bytes.first, f & 0xC0 == 0x80 { bytes.removeFirst() }
        return bytes.withUnsafeBytes { ANSIStripper.clean($0) }
    }
}
