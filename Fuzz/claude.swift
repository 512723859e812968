// libFuzzer target: Claude Code's stream-json parser (ClaudeTurn, in
// Plugins/ClaudeCode/ClaudeStream.swift, compiled into this harness as it is
// into the plugin). The input is cut into lines; the first byte chooses
// partial messages or not, which lines go to stderr instead of stdout, and how
// the child ends (status 0, status 1, a signal) if no result line came.
// Besides not crashing, what it emits must follow the ABI's rules: START at
// most once and before the answer, nothing after the terminal event, exactly
// one terminal event, whose document the host can read; bounded notices.
@testable import DescartesPluginKit
import CDescartesPlugin

final class Rules {
    var started = false
    var answered = false
    var terminals = 0
    var notices = 0

    func check(_ ok: Bool, _ what: StaticString) {
        if !ok { fatalError("rule broken: \(what)") }
    }
}

let onEvent: descartes_event_fn = { ctx, event in
    let r = Unmanaged<Rules>.fromOpaque(ctx!).takeUnretainedValue()
    let e = event!.pointee
    let bytes = UnsafeRawBufferPointer(start: e.data, count: e.data_length)
    r.check(r.terminals == 0, "an event after the terminal event")
    switch Int(e.type) {
    case Int(DESCARTES_EVENT_START):
        r.check(!r.started, "a second START")
        r.check(!r.answered, "START after the answer began")
        r.started = true
    case Int(DESCARTES_EVENT_TEXT), Int(DESCARTES_EVENT_REASONING):
        r.answered = true
        r.check(String(validating: bytes, as: UTF8.self) != nil, "text that is not UTF-8")
    case Int(DESCARTES_EVENT_NOTICE):
        r.notices += 1
        r.check(r.notices <= 200, "unbounded notices")
        r.check((try? JSONValue.parse(bytes))?["message"]?.stringValue != nil, "a notice that is not a document")
    case Int(DESCARTES_EVENT_RESULT):
        r.terminals += 1
        guard let doc = try? JSONValue.parse(bytes), (try? Wire.decodeFinish(doc)) != nil else { fatalError("a RESULT the host cannot read") }
    case Int(DESCARTES_EVENT_ERROR):
        r.terminals += 1
        let err = Wire.decodeError(bytes, provider: "fuzz")
        r.check(err.message.utf8.count < 20_000, "an unbounded error message")
    default:
        break
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let flags = data[0]
    let input = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let rules = Rules()
    let call = PluginCall(onEvent: onEvent, ctx: Unmanaged.passUnretained(rules).toOpaque(), owner: nil)
    let turn = ClaudeTurn(call: call, partial: flags & 1 == 0, costBefore: Double(flags >> 6))
    var start = 0
    var n = 0
    for i in 0...input.count where i == input.count || input[i] == 0x0A {
        let line = UnsafeRawBufferPointer(rebasing: input[start..<i])
        // Every seventh line goes to stderr when bit 1 is set.
        if flags & 2 != 0 && n % 7 == 6 { turn.stderr(line) } else { turn.line(line) }
        start = i + 1
        n += 1
    }
    // The child always exits; a turn that already ended ignores it.
    let how = (flags >> 2) & 3
    turn.exited(
        ChildExit(
            pid: 1, status: how == 2 ? nil : Int32(how), signal: how == 2 ? 11 : nil, reason: how == 3 ? .timedOut : .exited,
            stderrTail: "tail", killedStragglers: false, stdoutBytes: input.count, duration: .zero))
    rules.check(rules.terminals == 1, "not exactly one terminal event")
    withExtendedLifetime(call) {}
    return 0
}
