import Descartes
import DescartesSupport
import Glibc

/// The suite in a child process (what `descartes plugins verify
/// --conformance` does unless `--in-process`): a plugin that crashes, in
/// its entry point or in any call, is a failed row naming the signal and
/// the check that was running, not the end of the run.
///
/// The child is the CLI itself, run with `--in-process` and the
/// environment variable `channelVariable` naming the descriptor it writes
/// to (fd 3): one JSON document a line, `{"step": NAME}` before each check,
/// `{"result": {...}}` for each row, `{"done": true}` at the end. Its
/// stdin carries `{"set": {...}, "resume": [...], "spent_ms": N}`: the
/// `--set` values (which may be keys: never in argv), the checks already
/// done and the part of the budget spent. When
/// the child dies before `done`, the check it was running fails naming
/// the signal, and a new child redoes `abi` and `config` silently and goes
/// on with the checks after it.
extension Conformance {
    /// The environment variable that tells the CLI it is the suite's child
    /// process, and the descriptor of its channel.
    public static let channelVariable = "DESCARTES_CONFORMANCE_CHANNEL"

    /// How long past the spec's budget a child may run before it is killed:
    /// a check started just before the budget ran out runs to its own end
    /// (its waits are bounded: 30 s for an answer, a few tolerances for
    /// cancel and shutdown).
    public static let budgetMargin: Duration = .seconds(120)

    /// Steps after which no new child can do anything: before `config` the
    /// plugin has no backend; `destroy` and `events` end the run, and the
    /// checks over every call of the run (start times, events, secrets)
    /// would see none of the dead child's calls.
    static let finalSteps: Set<String> = ["abi", "config", "destroy", "events"]

    /// What a step is, for a crash row.
    static func stepDescription(_ step: String) -> String {
        switch step {
        case "abi": return "'abi' (loading the library and calling its entry point)"
        case "config": return "'config' (creating the backend)"
        case "destroy": return "'destroy' (shutting down and destroying the backends left open)"
        case "events": return "the last checks (start times, events, secrets), while the plugin's threads could still report"
        default: return "'\(step)'"
        }
    }

    /// Runs the suite in child processes started from `command` (the CLI's
    /// argv, with `--in-process`; nothing secret in it) and reports each
    /// row as it arrives.
    ///
    /// - Parameters:
    ///   - environment: the children's whole environment.
    ///   - overrides: the `--set` values, sent on the child's stdin.
    ///   - budget: the spec's; a child still running `budgetMargin` after
    ///     it is killed.
    public static func runIsolated(
        command: [String], environment: [String: String], overrides: [String: JSONValue], budget: Duration,
        report: @escaping @Sendable (Result) -> Void
    ) async -> [Result] {
        await withCheckedContinuation { (k: CheckedContinuation<[Result], Never>) in
            let started = detachThread {
                k.resume(returning: Supervisor(command: command, environment: environment, overrides: overrides, budget: budget, report: report).run())
            }
            if !started {
                let r = Result(check: "abi", outcome: .fail, detail: "cannot start a thread to watch the suite's child process", duration: .zero)
                report(r)
                k.resume(returning: [r])
            }
        }
    }

    /// The child's side of the channel: writes each line whole.
    public final class Channel: @unchecked Sendable {
        let fd: Int32
        let lock = Lock(())

        /// The channel the environment names, or nil when this is no child.
        public static func fromEnvironment() -> Channel? {
            guard let v = Environment.get(channelVariable), let fd = Int32(v), fd >= 3, fcntl(fd, F_GETFD) >= 0 else { return nil }
            // Not inherited by what the plugin starts (it would hold the
            // parent's end of the channel open after this process died).
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            // Nor is the variable: a `descartes` the plugin runs is no child of the suite.
            unsetenv(channelVariable)
            return Channel(fd: fd)
        }

        init(fd: Int32) { self.fd = fd }

        public func step(_ name: String) { send(["step": .string(name)]) }
        public func result(_ r: Result) {
            send([
                "result": .object([
                    "check": .string(r.check), "outcome": .string(r.outcome.rawValue), "detail": .string(r.detail), "duration_ms": .integer(r.duration.milliseconds),
                ])
            ])
        }
        public func done() { send(["done": .bool(true)]) }

        func send(_ doc: JSONObject) {
            var bytes = JSONValue.object(doc).jsonBytes
            bytes.append(UInt8(ascii: "\n"))
            lock.withLock { _ in
                var off = 0
                while off < bytes.count {
                    let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { return }
                    off += n
                }
            }
        }
    }

    /// What the parent sends on the child's stdin.
    public struct ChildInput: Sendable {
        public var overrides: [String: JSONValue]
        public var resume: Set<String>
        /// The budget earlier children spent.
        public var spent: Duration

        /// Reads it from stdin (to its end).
        public static func read() -> ChildInput? {
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                bytes.append(contentsOf: buf[0..<n])
            }
            guard let doc = try? JSONValue.parse(bytes: bytes), case .object(let set)? = doc["set"] else { return nil }
            var overrides: [String: JSONValue] = [:]
            for (k, v) in set.members { overrides[k] = v }
            return ChildInput(
                overrides: overrides, resume: Set((doc["resume"]?.arrayValue ?? []).compactMap(\.stringValue)),
                spent: .milliseconds(doc["spent_ms"]?.intValue ?? 0))
        }
    }
}

/// The parent's side: starts children until one finishes the suite.
final class Supervisor: @unchecked Sendable {
    let command: [String]
    let environment: [String: String]
    let overrides: [String: JSONValue]
    let budget: Duration
    let report: @Sendable (Conformance.Result) -> Void
    let began = ContinuousClock.now
    var results: [Conformance.Result] = []
    /// Every step a child began or reported: not run again.
    var done: Set<String> = []
    /// A limit on restarts, whatever the spec (each restart moves past one
    /// check, so this is never reached by a spec's own checks).
    static let maxChildren = 40

    init(
        command: [String], environment: [String: String], overrides: [String: JSONValue], budget: Duration,
        report: @escaping @Sendable (Conformance.Result) -> Void
    ) {
        self.command = command
        self.environment = environment
        self.overrides = overrides
        self.budget = budget
        self.report = report
    }

    func record(_ check: String, _ detail: String, since: ContinuousClock.Instant) {
        let r = Conformance.Result(check: check, outcome: .fail, detail: detail, duration: .now - since)
        results.append(r)
        report(r)
    }

    func run() -> [Conformance.Result] {
        for _ in 0..<Self.maxChildren {
            switch runChild() {
            case .finished, .stop: return results
            case .restart: continue
            }
        }
        return results
    }

    enum Outcome { case finished, restart, stop }

    /// One child, to its end.
    func runChild() -> Outcome {
        let t0 = ContinuousClock.now
        var current = "abi"
        let channel: (read: Int32, write: Int32)
        do throws(SpawnError) { channel = try Spawner.pipe() } catch {
            record(current, "cannot start the suite's child process: \(error)", since: t0)
            return .stop
        }
        // The child's stdin: a socket, so that writing to a child already
        // dead is an error here, not SIGPIPE.
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            record(current, "cannot start the suite's child process: socketpair: \(String(cString: strerror(errno)))", since: t0)
            close(channel.read)
            close(channel.write)
            return .stop
        }
        let input = (read: pair[1], write: pair[0])
        var env = environment
        env[Conformance.channelVariable] = "3"
        // The Swift runtime's crash report would hold a dying child for
        // seconds (and print the suite's frames, not the plugin's).
        if env["SWIFT_BACKTRACE"] == nil { env["SWIFT_BACKTRACE"] = "enable=no" }
        let pid: Int32
        do throws(SpawnError) {
            // stdout to stderr: the parent's stdout is the report (--json).
            pid = try Spawner.spawn(SpawnRequest(path: command[0], arguments: command, environment: env, stdin: input.read, stdout: 2, stderr: 2, fd3: channel.write))
        } catch {
            for fd in [channel.read, channel.write, input.read, input.write] { close(fd) }
            record(current, "cannot start the suite's child process \(command[0]): \(error)", since: t0)
            return .stop
        }
        close(channel.write)
        close(input.read)
        // The --set values and what is done, then end of file.
        var doc = JSONObject()
        doc["set"] = .object(JSONObject(overrides.sorted { $0.key < $1.key }.map { (key: $0.key, value: $0.value) }))
        doc["resume"] = .array(done.sorted().map { .string($0) })
        doc["spent_ms"] = .integer((ContinuousClock.now - began).milliseconds)
        let bytes = JSONValue.object(doc).jsonBytes
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { send(input.write, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            off += n
        }
        close(input.write)

        let killAt = began + budget + Conformance.budgetMargin
        var finished = false
        var killedForTime = false
        var pending: [UInt8] = []
        var eof = false
        var exitedAt: ContinuousClock.Instant? = nil
        var buf = [UInt8](repeating: 0, count: 65536)
        func take(_ line: ArraySlice<UInt8>) {
            guard let doc = try? JSONValue.parse(bytes: Array(line)) else { return }
            if let s = doc["step"]?.stringValue {
                current = s
                done.insert(s)
            } else if let r = doc["result"], let check = r["check"]?.stringValue, let o = r["outcome"]?.stringValue.flatMap(Conformance.Result.Outcome.init(rawValue:)) {
                let result = Conformance.Result(
                    check: check, outcome: o, detail: r["detail"]?.stringValue ?? "", duration: .milliseconds(r["duration_ms"]?.intValue ?? 0))
                results.append(result)
                done.insert(check)
                report(result)
            } else if doc["done"]?.boolValue == true {
                finished = true
            }
        }
        while !eof {
            if ContinuousClock.now > killAt {
                killedForTime = true
                break
            }
            // Dead, and what it wrote read: a descendant holding the
            // channel open must not keep the parent waiting.
            if let at = exitedAt, ContinuousClock.now - at > .milliseconds(500) { break }
            if exitedAt == nil && Spawner.exited(pid) == true { exitedAt = .now }
            var p = pollfd(fd: channel.read, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 100)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { continue }
            let n = buf.withUnsafeMutableBytes { read(channel.read, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                eof = true
            } else {
                pending.append(contentsOf: buf[0..<n])
            }
            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                take(pending[..<nl])
                pending.removeSubrange(...nl)
            }
        }
        close(channel.read)
        // Its whole group goes (what the plugin started with it), then it is reaped.
        Spawner.forget(pid)
        if !finished { kill(-pid, SIGKILL) }
        var status: Int32 = 0
        var r: pid_t
        if finished {
            // It is exiting: give it a moment, then make sure.
            let until = ContinuousClock.now + .seconds(5)
            while Spawner.exited(pid) == false && ContinuousClock.now < until { usleep(10_000) }
            kill(-pid, SIGKILL)
        }
        repeat { r = waitpid(pid, &status, 0) } while r < 0 && errno == EINTR
        if finished { return .finished }

        // `complete` makes two rows: a crash after the first is in stream.
        let row = current == "complete" && results.contains(where: { $0.check == "complete" }) ? "stream" : current
        let during = Conformance.stepDescription(row)
        if killedForTime {
            record(
                row,
                "the suite's child process was still running \(during) \((ContinuousClock.now - began).shortText) after the suite began, past its budget of \(budget.shortText) (spec 'budget_s') and a margin of \(Conformance.budgetMargin.shortText): it was killed; the checks after it were not run",
                since: t0)
            return .stop
        }
        let how: String
        if r == pid && status & 0x7f != 0 {
            let sig = status & 0x7f
            how = "the plugin crashed (\(signalName(sig))) during \(during), in the suite's child process"
        } else if r == pid {
            how = "the suite's child process exited with status \((status >> 8) & 0xff) during \(during) before the suite finished (the plugin may have called exit, or a sanitizer stopped it: see its stderr)"
        } else {
            how = "the suite's child process ended during \(during) before the suite finished"
        }
        if Conformance.finalSteps.contains(current) {
            let after = current == "abi" || current == "config" ? "; no check can run without \(current == "abi" ? "the library" : "a backend")" : ""
            record(row, how + after, since: t0)
            return .stop
        }
        record(row, how + "; the suite goes on in a new child process", since: t0)
        return .restart
    }
}
