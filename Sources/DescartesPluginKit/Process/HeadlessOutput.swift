/// What every reader of an agent's turn does with the child's output, on
/// the runner's thread: the turn's end (after its terminal event nothing
/// more reaches the caller), JSON lines picked out of noise, stderr and
/// noise forwarded as notices without flooding the caller, and the error
/// for a child that ended before its final event.
///
/// A turn reader holds one and asks it first:
///
///     func stdout(_ line: UnsafeRawBufferPointer) {
///         guard !out.ended, let o = out.object(line) else { return }
///         ... (events from `o`; at the final event:)
///         if out.end() { call.finish(...) }
///     }
///     func stderr(_ line: UnsafeRawBufferPointer) { out.stderr(line) }
///     func exited(_ exit: ChildExit) { if out.end() { call.fail(out.unfinished(exit)) } }
public struct HeadlessOutput {
    public let call: PluginCall
    /// Prefixed to notices and named in errors ("claude").
    public let program: String
    /// The event that ends a turn, named when a child ends without it
    /// ("done", "result").
    public let finalEvent: String
    /// The turn has its terminal event (an answer or an error).
    public private(set) var ended = false
    /// Stdout lines that were not JSON objects.
    public private(set) var nonJSONLines = 0
    /// The first of them (20, each at most 300 characters), escape codes
    /// removed: for the error if the turn fails.
    public private(set) var diagnostics: [String] = []
    /// What the turn has done that running it again would do twice ("run
    /// tools: Bash", "written text"), each completing "the turn had already
    /// ...": see `marked`.
    public private(set) var sideEffects: [String] = []
    private var stderrNotices = NoticeBudget()
    private var stdoutNotices = NoticeBudget()

    public init(call: PluginCall, program: String, finalEvent: String) {
        self.call = call
        self.program = program
        self.finalEvent = finalEvent
    }

    /// One stdout line of a JSON-lines protocol: the object it holds. Nil
    /// for a blank line, and for a line that is not a JSON object: that one
    /// is kept (`diagnostics`) and, while the turn runs, sent as a warning
    /// notice "program: text" (at most `NoticeBudget.limit` of them, so a
    /// child printing garbage without end cannot flood the caller).
    public mutating func object(_ line: UnsafeRawBufferPointer) -> JSONObject? {
        var lo = 0
        var hi = line.count
        while lo < hi, line[lo] == 0x20 || line[lo] == 0x09 || line[lo] == 0x0D { lo += 1 }
        while hi > lo, line[hi - 1] == 0x20 || line[hi - 1] == 0x09 || line[hi - 1] == 0x0D { hi -= 1 }
        if lo == hi { return nil }
        let raw = UnsafeRawBufferPointer(rebasing: line[lo..<hi])
        if raw[0] == UInt8(ascii: "{"), case .object(let o)? = try? JSONValue.parse(raw) { return o }
        let text = ANSIStripper.clean(raw)
        nonJSONLines += 1
        if text.isEmpty { return nil }
        if diagnostics.count < 20 { diagnostics.append(Wire.excerpt(text, limit: 300)) }
        if !ended && stdoutNotices.take() { call.notice("warning", "\(program): \(Wire.excerpt(text, limit: 500))") }
        return nil
    }

    /// One stderr line: while the turn runs, an info notice "program: text"
    /// (escape codes removed, budgeted). The runner keeps the tail for
    /// errors either way (`ChildExit.stderrTail`).
    public mutating func stderr(_ line: UnsafeRawBufferPointer) {
        if ended { return }
        let text = ANSIStripper.clean(line)
        if !text.isEmpty && stderrNotices.take() { call.notice("info", "\(program): \(text)") }
    }

    /// Records something the turn did that must not happen twice (once
    /// per distinct text; `replacing` a prefix updates an entry, e.g. the
    /// list of tools run so far).
    public mutating func did(_ what: String, replacing prefix: String? = nil) {
        if let prefix, let i = sideEffects.firstIndex(where: { $0.hasPrefix(prefix) }) {
            sideEffects[i] = what
        } else if !sideEffects.contains(what) {
            sideEffects.append(what)
        }
    }

    /// `e` as the turn's failure: with its side effects (`sideEffects`, plus
    /// `extra`) in `ProviderError.sideEffects` and said in the message ("the
    /// turn had already run tools: Bash; it is not run again"), so the
    /// host's retry and fallback middlewares never repeat it.
    public func marked(_ e: ProviderError, extra: [String] = []) -> ProviderError {
        var e = e
        for s in sideEffects + extra where !e.sideEffects.contains(s) { e.sideEffects.append(s) }
        guard !e.sideEffects.isEmpty, e.kind != .cancelled else { return e }
        e.message += " (the turn had already \(e.sideEffects.joined(separator: " and ")); it is not run again)"
        return e
    }

    /// Marks the turn ended. True the first time: emit the terminal event
    /// then; false after that (emit nothing).
    public mutating func end() -> Bool {
        if ended { return false }
        ended = true
        return true
    }

    /// The error for a child that exited before its final event:
    /// `streamClosed` when it exited cleanly (status 0), else its exit's
    /// (`ChildExit.error`: `timeout`, `cancelled`, or `process` with the
    /// status and the stderr tail). Either names the final event, `detail`
    /// (what the turn knows: an API error it saw) and the diagnostics.
    public func unfinished(_ exit: ChildExit, detail: String = "") -> ProviderError {
        var context = " without a \(finalEvent) event\(detail)"
        if !diagnostics.isEmpty { context += " (output: " + diagnostics.joined(separator: " | ") + ")" }
        guard exit.reason == .exited && exit.status == 0 && exit.signal == nil else { return exit.error(program, context: context) }
        var message = "\(program) exited with status 0\(context)"
        if !exit.stderrTail.isEmpty { message += "; stderr: " + exit.stderrTail }
        return ProviderError(.streamClosed, message)
    }
}
