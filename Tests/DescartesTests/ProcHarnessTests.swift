import DescartesSupport
import Glibc
import Testing

/// The test harness's own deadline (`Proc.run`, Support/Support.swift): no
/// test waits on a program past the timeout it gave, whatever the program
/// or what it started does (issue 16: a full `make test` sat 17 minutes in
/// its timed phase, the suite's 5-minute time limit notwithstanding, since
/// a test awaiting `Proc.run` cannot be cancelled). Each case here made the
/// old `Proc.run` wait until the program's own end (bounded at 30 s by the
/// programs, so that the old harness fails these tests instead of hanging).
@Suite struct ProcHarnessTests {
    /// Whether `pid` is gone (or a zombie: killed, not yet reaped by init).
    static func gone(_ pid: Int32) -> Bool {
        guard let line = try? FileSystem.readText("/proc/\(pid)/stat", limit: 4096), let nameEnd = line.lastIndex(of: ")") else { return true }
        return line[line.index(after: nameEnd)...].split(separator: " ").first == "Z"
    }

    /// A grandchild in a session of its own (out of the program's process
    /// group, as a crash reporter or a plugin's helper is) keeps writing to
    /// the inherited stdout after the program exits. Before, the run killed
    /// the program's group at the timeout and then read on for as long as
    /// output kept coming: 30 s here, forever for a process that never stops.
    @Test func aGrandchildHoldingTheOutputEndsAtTheTimeout() async throws {
        let script = "setsid sh -c 'echo grandchild $$; i=0; while [ $i -lt 150 ]; do echo tick; sleep 0.2; i=$((i+1)); done' & sleep 0.3; exit 0"
        let r = await Proc.run(["/bin/sh", "-c", script], timeout: .seconds(2))
        expectWithin(r.duration, .seconds(2 + 5), "\(r)")
        let timedOut = try #require(r.timedOut, "\(r)")
        #expect(timedOut.contains { $0.contains("holding its output") }, "\(r)")
        #expect(r.description.contains("killed at its timeout; still there then: "), "\(r)")
        // What it wrote before the timeout was kept; the grandchild was killed.
        let line = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("grandchild ") }, "\(r)")
        let pid = try #require(Int32(line.dropFirst("grandchild ".count)), "\(r)")
        #expect(r.stdout.contains("tick"), "\(r)")
        var dead = false
        for _ in 0..<100 where !dead {
            dead = Self.gone(pid)
            if !dead { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(dead, "the grandchild \(pid) is still running")
    }

    /// The program closes its stdout and stderr and keeps running: end of
    /// file on both pipes. Before, the run then waited for its exit with no
    /// bound (30 s here).
    @Test func aProgramClosingItsOutputIsKilledAtTheTimeout() async {
        let r = await Proc.run(["/bin/sh", "-c", "exec >&- 2>&-; exec sleep 30"], timeout: .seconds(1))
        expectWithin(r.duration, .seconds(1 + 5), "\(r)")
        #expect(r.timedOut != nil && r.signal == SIGKILL, "\(r)")
    }

    /// stdin is fed as the program takes it: 1 MiB through `cat` (more than
    /// a pipe holds either way) comes back whole, a program that never
    /// reads its stdin is killed at the timeout, and one that closes it
    /// ends the feeding. Before, the whole input
    /// was written before any output was read: `cat` filled its stdout and
    /// stopped reading, and the run waited until `timeout 30` ended it.
    @Test func stdinIsFedAsTheProgramTakesIt() async {
        let input = String(repeating: "0123456789abcde\n", count: 65536)
        let r = await Proc.run(["timeout", "30", "cat"], stdin: input, timeout: .seconds(20))
        expectWithin(r.duration, .seconds(10), "status \(r.status), \(r.stdout.utf8.count) bytes back, stderr \(r.stderr)")
        #expect(r.status == 0 && r.timedOut == nil && r.stdout == input, "status \(r.status), \(r.stdout.utf8.count) bytes back, stderr \(r.stderr)")
        let deaf = await Proc.run(["timeout", "30", "sleep", "30"], stdin: input, timeout: .seconds(1))
        expectWithin(deaf.duration, .seconds(1 + 5), "\(deaf)")
        #expect(deaf.timedOut != nil && deaf.signal == SIGKILL, "\(deaf)")
        // A program that exits without reading: the rest is dropped (EPIPE; no SIGPIPE for the test runner).
        let gone = await Proc.run(["/bin/sh", "-c", "exec 0<&-; exit 4"], stdin: input, timeout: .seconds(20))
        #expect(gone.status == 4 && gone.timedOut == nil, "\(gone)")
    }

    /// An ordinary run: status and both streams, nothing timed out.
    @Test func aProgramThatEndsGivesItsStatusAndOutput() async {
        let r = await Proc.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], timeout: .seconds(60))
        #expect(r.status == 3 && r.signal == nil && r.timedOut == nil, "\(r)")
        #expect(r.stdout == "out\n" && r.stderr == "err\n", "\(r)")
    }
}
