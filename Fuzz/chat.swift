// libFuzzer target: the OpenAI chat-completions parser (DescartesOpenAIChat),
// fed an event stream cut into reads at boundaries the input chooses (its
// first byte), every event's data parsed as a chunk, then the answer
// finished. Besides not crashing, what it emits must follow the ABI's rules:
// one start before anything else, a tool call's arguments and end only after
// its start, no call started twice, every call ended once.
import DescartesOpenAIChat

final class CheckingSink: ChatEventSink {
    var started = false
    var calls: [Int: Bool] = [:]  // index -> ended

    func check(_ ok: Bool, _ what: StaticString) {
        if !ok { fatalError("rule broken: \(what)") }
    }
    func start(id: String?, model: String?) {
        check(!started, "a second start")
        started = true
    }
    func text(bytes: UnsafeRawBufferPointer) { check(started, "text before start") }
    func reasoning(bytes: UnsafeRawBufferPointer) { check(started, "reasoning before start") }
    func toolCallStart(index: Int, id: String, name: String) {
        check(started, "a tool call before start")
        check(calls[index] == nil, "a tool call started twice")
        calls[index] = false
    }
    func toolCallDelta(index: Int, bytes: UnsafeRawBufferPointer) { check(calls[index] == false, "arguments outside a started call") }
    func toolCallEnd(index: Int) {
        check(calls[index] == false, "an end outside a started call")
        calls[index] = true
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let step = Int(data[0]) % 31 + 1
    let bytes = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    var d = SSEDecoder(maxLineBytes: 1 << 16)
    var p = ChatResponseParser(captureKeys: ["timings"])
    let sink = CheckingSink()
    var failed = false
    func onEvent(_ e: SSEDecoder.Event) {
        if failed || e.isDone { return }
        do throws(ProviderError) { try p.parse(e.data, sink) } catch {
            if error.message.utf8.count > 2000 { fatalError("an unbounded error message") }
            failed = true
        }
    }
    do {
        var i = 0
        while i < bytes.count {
            try d.feed(UnsafeRawBufferPointer(rebasing: bytes[i..<min(i + step, bytes.count)])) { onEvent($0) }
            i += step
        }
        try d.finish { onEvent($0) }
    } catch {}
    if !failed {
        _ = p.finish(sink)
        for (_, ended) in sink.calls { sink.check(ended, "a tool call never ended") }
    }
    return 0
}
