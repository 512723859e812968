import Descartes
import DescartesCommandLine
import DescartesSupport
import Glibc

/// `--approve ask`: each tool use the agent asks for is a y/N question on
/// the terminal (stderr), answered on stdin, one question at a time. Only
/// "y" or "yes" allows; anything else, end of input included, denies.
enum TerminalApproval {
    private static let one = Lock(())

    static func ask(_ q: ApprovalRequest) async -> ApprovalDecision {
        await withCheckedContinuation { (c: CheckedContinuation<ApprovalDecision, Never>) in
            let started = detachThread { c.resume(returning: one.withLock { _ in question(q) }) }
            if !started { c.resume(returning: .deny(reason: "could not ask on the terminal (no thread)")) }
        }
    }

    private static func question(_ q: ApprovalRequest) -> ApprovalDecision {
        let what = Out.logSink.redactor.redact("\(q.tool)\(q.kind.map { " (\($0))" } ?? ""): \(Wire.excerpt(q.subject, limit: 300))")
        Out.write("descartes: the agent asks to run \(what)\nallow? [y/N] ", to: 2)
        var line: [UInt8] = []
        var b: UInt8 = 0
        while read(0, &b, 1) == 1 && b != 0x0A { if line.count < 64 { line.append(b) } }
        let answer = String(decoding: line, as: UTF8.self).lowercased().filter { $0 != " " && $0 != "\r" }
        return answer == "y" || answer == "yes" ? .allow : .deny(reason: "denied on the terminal")
    }
}
