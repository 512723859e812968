// TEST FIXTURE, not a provider: a Swift plugin whose behaviour each request
// scripts, so the test suite can drive the host through the plugin kit and
// the C ABI exactly as a real plugin would (delays, hangs, errors, tool
// calls, rule violations). It is built but never installed.
//
// The script is the request option "script" (else the config key
// "default_script", so the CLI can drive it), a list of steps run in order:
//   "words"               stream the last user message back word by word
//   "text:<s>"            emit <s> as one text event
//   "reasoning:<s>"       emit <s> as reasoning
//   "sleep:<ms>"          wait (cancellation still works)
//   "hang"                never finish (until cancelled)
//   "tools:<n>"           n tool calls, their argument fragments interleaved
//   "usage:<in>,<out>"    a usage event
//   "notice:<s>"          a notice event
//   "error:<kind>:<msg>"  fail with that error kind (retry_after_ms from option "retry_after_ms")
//   "finish:<reason>"     finish with that reason (default: "stop" at the end)
//   "after-terminal"      emit a text event after the terminal event (a rule violation)
//   "ignore-cancel"       keep going when cancelled (a misbehaving plugin)
//   "crash:segv"          dereference a null pointer (SIGSEGV) -- for isolation tests
//   "crash:abort"         abort() (SIGABRT)
//   "leak"                allocate and touch memory without bound until the process dies
import DescartesPluginKit
import Glibc

final class ScriptedBackend: DescartesBackend {
    let context: BackendContext
    /// Calls running now and initializations so far, reported by the health
    /// check so tests can see cancellation reach the plugin.
    let counters = Lock((active: 0, initializations: 0))
    let initDelay: Int
    let failInit: String?

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        initDelay = context.int("init_delay_ms") ?? 0
        failInit = context.string("fail_init")
        if context.string("greeting") == "reject" {
            throw ProviderError(.config, "key 'greeting': the value 'reject' is rejected by the plugin")
        }
    }

    func initialize(_ call: PluginCall) {
        counters.withLock { $0.initializations += 1 }
        Task.detached { [self] in
            if initDelay > 0 { try? await Task.sleep(for: .milliseconds(initDelay)) }
            if let failInit {
                call.fail(ProviderError(.initialization, failInit))
            } else {
                call.finish(result: ["message": "scripted ready"])
            }
        }
    }

    func healthCheck(_ call: PluginCall) {
        let c = counters.withLock { $0 }
        call.finish(result: [
            "message": .string("scripted backend '\(context.instance)' is healthy"),
            "details": ["active": .integer(c.active), "initializations": .integer(c.initializations)],
        ])
    }

    func listModels(_ call: PluginCall) {
        call.finish(json: Wire.encode(models: [ModelInfo(id: "scripted-small", contextLength: 4096), ModelInfo(id: "scripted-large", contextLength: 32768)]))
    }

    func stream(_ request: ModelRequest, _ call: PluginCall) {
        let steps = request.options["script"]?.arrayValue?.compactMap(\.stringValue) ?? context.list("default_script") ?? ["words"]
        let retryAfter = request.options["retry_after_ms"]?.intValue
        let ignoreCancel = steps.contains("ignore-cancel")
        let prompt = request.messages.last { $0.role == .user }?.content ?? ""
        let model = request.model ?? "scripted-small"
        counters.withLock { $0.active += 1 }
        let task = Task.detached { [self] in
            defer { counters.withLock { $0.active -= 1 } }
            call.start(id: "scripted-1", model: model)
            var reason = "stop"
            var outputWords = 0
            for step in steps {
                if call.isCancelled && !ignoreCancel { return }
                let (name, arg) = ScriptedBackend.split(step)
                switch name {
                case "words":
                    for (i, w) in prompt.split(separator: " ").enumerated() {
                        call.text(i == 0 ? String(w) : " " + w)
                        outputWords += 1
                    }
                case "text": call.text(arg)
                case "reasoning": call.reasoning(arg)
                case "sleep":
                    let ms = Int(arg) ?? 0
                    if ignoreCancel {
                        // Sleep through cancellation.
                        let until = ContinuousClock.now + .milliseconds(ms)
                        while ContinuousClock.now < until { try? await Task.sleep(for: until - ContinuousClock.now) }
                    } else {
                        try? await Task.sleep(for: .milliseconds(ms))
                    }
                case "hang":
                    // Until cancelled (or, ignoring cancellation, for at most two minutes).
                    let limit = ContinuousClock.now + .seconds(120)
                    while (!call.isCancelled || ignoreCancel) && ContinuousClock.now < limit { try? await Task.sleep(for: .milliseconds(10)) }
                    return
                case "tools":
                    let n = Int(arg) ?? 1
                    for i in 0..<n { call.toolCallStart(index: i, id: "call_\(i)", name: "tool_\(i)") }
                    for i in 0..<n { call.toolCallDelta(index: i, "{\"n\":") }
                    for i in 0..<n { call.toolCallDelta(index: i, "\(i)}") }
                    for i in 0..<n { call.toolCallEnd(index: i) }
                    reason = "tool_use"
                case "usage":
                    let parts = arg.split(separator: ",").compactMap { Int($0) }
                    call.usage(Usage(inputTokens: parts.first ?? 0, outputTokens: parts.dropFirst().first ?? 0))
                case "notice": call.notice("info", arg)
                case "error":
                    let (kind, message) = ScriptedBackend.split(arg)
                    call.fail(
                        ProviderError(
                            ProviderError.Kind(rawValue: kind), message, status: kind == "rate_limited" ? 429 : nil,
                            retryAfter: retryAfter.map { .milliseconds($0) }))
                    return
                case "finish": reason = arg
                case "crash":
                    if arg == "abort" { abort() }
                    let null = UnsafeMutablePointer<Int>(bitPattern: 8)!
                    null.pointee = 42
                case "leak":
                    // 64 MiB at a time, each page touched so it is really used.
                    while true {
                        let block = UnsafeMutableRawPointer.allocate(byteCount: 64 << 20, alignment: 4096)
                        var off = 0
                        while off < 64 << 20 {
                            block.storeBytes(of: 1, toByteOffset: off, as: UInt8.self)
                            off += 4096
                        }
                    }
                case "after-terminal":
                    call.finish(Wire.Finish(finishReason: FinishReason(rawValue: reason)))
                    call.text("too late")
                    return
                default: break
                }
            }
            call.finish(
                Wire.Finish(
                    finishReason: FinishReason(rawValue: reason),
                    usage: Usage(inputTokens: prompt.split(separator: " ").count, outputTokens: outputWords), model: model))
        }
        if !ignoreCancel { call.onCancel { task.cancel() } }
    }

    static func split(_ s: String) -> (String, String) {
        guard let i = s.firstIndex(of: ":") else { return (s, "") }
        return (String(s[..<i]), String(s[s.index(after: i)...]))
    }
}

@_cdecl("descartes_plugin_entry")
public func descartesPluginEntry(_ abi: UInt32, _ host: UnsafeRawPointer?) -> UnsafeRawPointer? {
    PluginExport.entry(
        abi: abi, host: host, name: "scripted", version: "0.1.0",
        factories: [
            BackendFactory(id: "scripted", description: "Test fixture: replies scripted by each request") { try ScriptedBackend($0) }
        ])
}
