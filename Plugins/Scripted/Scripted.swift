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
//   "retry_after:<ms>"    set the retry-after hint of later "error" steps of this script
//   "echo-options"        emit the request's options, minus these scripting ones, as JSON text
//   "echo-model"          emit the model asked for ("" for the default) as text
//   "echo-metadata"       emit the request's metadata as JSON text
//   "crash:segv"          dereference a null pointer (SIGSEGV) -- for isolation tests
//   "crash:abort"         abort() (SIGABRT)
//   "leak"                allocate and touch memory without bound until the process dies
//
// Scripts that change from one call to the next (retries, fallbacks, caches):
// the option "sequence" is a list of scripts; the n-th call (0-based) carrying
// the same option "sequence_id" (default "default") runs script n, the last
// one repeating. The health check reports "calls" (completions started),
// "sequences" ({id: calls so far}) and "alive" ({instance: backends of this
// library not yet freed}: the host's destroy, seen from the plugin).
//
// Chains of several providers: the option "by_instance" maps an instance
// name to the script (or, with "sequence", the list of scripts) that
// instance runs instead.
import DescartesPluginKit
import Glibc

final class ScriptedBackend: DescartesBackend {
    let context: BackendContext
    /// Calls running now and initializations so far, reported by the health
    /// check so tests can see cancellation reach the plugin.
    let counters = Lock((active: 0, initializations: 0, calls: 0))
    let sequences = Lock<[String: Int]>([:])
    let batches = Lock<[String: Batch]>([:])
    let initDelay: Int
    let failInit: String?
    /// Backends of this library alive, by instance name.
    static let alive = Lock<[String: Int]>([:])

    init(_ context: BackendContext) throws(ProviderError) {
        self.context = context
        initDelay = context.int("init_delay_ms") ?? 0
        failInit = context.string("fail_init")
        // Counted before a throw: deinit runs for a rejected one too.
        Self.alive.withLock { $0[context.instance, default: 0] += 1 }
        if context.string("greeting") == "reject" {
            throw ProviderError(.config, "key 'greeting': the value 'reject' is rejected by the plugin")
        }
    }

    deinit { Self.alive.withLock { $0[context.instance, default: 0] -= 1 } }

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

    /// Embeds each input as [characters, words, vowels] (cut to
    /// `dimensions`); an input "error:<kind>:<msg>" fails the call that way.
    func embed(_ request: EmbeddingRequest, _ call: PluginCall) {
        if let bad = request.inputs.first(where: { $0.hasPrefix("error:") }) {
            let parts = bad.split(separator: ":", maxSplits: 2).map(String.init)
            return call.fail(ProviderError(ProviderError.Kind(rawValue: parts.count > 1 ? parts[1] : "backend"), parts.count > 2 ? parts[2] : "scripted"))
        }
        var vectors = request.inputs.map { text -> [Float] in
            [Float(text.count), Float(text.split(separator: " ").count), Float(text.filter { "aeiou".contains($0) }.count)]
        }
        if let d = request.dimensions { vectors = vectors.map { Array($0.prefix(d)) } }
        let words = request.inputs.reduce(0) { $0 + $1.split(separator: " ").count }
        call.finish(
            embeddings: Embeddings(
                vectors: vectors, dimensions: request.dimensions.map { min($0, 3) } ?? 3, model: request.model ?? "scripted-embed",
                usage: Usage(inputTokens: words)))
    }

    func healthCheck(_ call: PluginCall) {
        let c = counters.withLock { $0 }
        let seqs = sequences.withLock { $0 }
        let alive = Self.alive.withLock { $0 }
        call.finish(result: [
            "message": .string("scripted backend '\(context.instance)' is healthy"),
            "details": [
                "active": .integer(c.active), "initializations": .integer(c.initializations), "calls": .integer(c.calls),
                "sequences": .object(JSONObject(seqs.sorted { $0.key < $1.key }.map { (key: $0.key, value: .integer($0.value)) })),
                "alive": .object(JSONObject(alive.sorted { $0.key < $1.key }.map { (key: $0.key, value: .integer($0.value)) })),
            ],
        ])
    }

    func listModels(_ call: PluginCall) {
        call.finish(json: Wire.encode(models: [ModelInfo(id: "scripted-small", contextLength: 4096), ModelInfo(id: "scripted-large", contextLength: 32768)]))
    }

    func stream(_ request: ModelRequest, _ call: PluginCall) {
        var options = request.options
        if let mine = options["by_instance"]?[context.instance] {
            if options["sequence"] != nil { options["sequence"] = mine } else { options["script"] = mine }
        }
        var steps = options["script"]?.arrayValue?.compactMap(\.stringValue) ?? context.list("default_script") ?? ["words"]
        if let seq = options["sequence"]?.arrayValue, !seq.isEmpty {
            let id = request.options["sequence_id"]?.stringValue ?? "default"
            let n = sequences.withLock { s -> Int in
                defer { s[id, default: 0] += 1 }
                return s[id, default: 0]
            }
            steps = seq[min(n, seq.count - 1)].arrayValue?.compactMap(\.stringValue) ?? []
        }
        let initialRetryAfter = request.options["retry_after_ms"]?.intValue
        let ignoreCancel = steps.contains("ignore-cancel")
        let prompt = request.messages.last { $0.role == .user }?.content ?? ""
        let model = request.model ?? "scripted-small"
        counters.withLock {
            $0.active += 1
            $0.calls += 1
        }
        let task = Task.detached { [self] in
            defer { counters.withLock { $0.active -= 1 } }
            var retryAfter = initialRetryAfter
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
                case "retry_after": retryAfter = Int(arg)
                case "echo-options":
                    var o = request.options
                    for k in ["script", "sequence", "sequence_id", "by_instance", "retry_after_ms"] { o[k] = nil }
                    call.text(JSONValue.object(o).jsonText)
                case "echo-model": call.text(request.model ?? "")
                case "echo-metadata":
                    call.text(JSONValue.object(JSONObject(request.metadata.sorted { $0.key < $1.key }.map { (key: $0.key, value: .string($0.value)) })).jsonText)
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

// A provider batch API in memory, for the host's side of the
// "descartes.batch/1" extension (the real ones live in the OpenAI and
// Anthropic plugins). A batch ends after as many status polls as the first
// request's option "batch_polls" (default 1); a request whose script has an
// "error:<kind>:<msg>" step gets that error as its result, the others their
// prompt back; option "batch_submit_error" refuses the whole submission.
extension ScriptedBackend: DescartesBatchBackend {
    struct Batch {
        var requests: [BatchRequest]
        var polls = 0
        var pollsNeeded: Int
        var state = "in_progress"
    }

    func submitBatch(_ requests: [BatchRequest], _ call: PluginCall) {
        if let e = requests.first?.request.options["batch_submit_error"]?.stringValue {
            call.fail(ProviderError(.api, e, status: 400))
            return
        }
        let id = batches.withLock { b -> String in
            let id = "batch_\(b.count + 1)"
            b[id] = Batch(requests: requests, pollsNeeded: requests.first?.request.options["batch_polls"]?.intValue ?? 1)
            return id
        }
        call.finish(result: BatchWire.status(id: id, state: "in_progress", providerStatus: "validating", total: requests.count, succeeded: 0, failed: 0))
    }

    func batchStatus(id: String, _ call: PluginCall) {
        let batch = batches.withLock { b -> Batch? in
            guard var batch = b[id] else { return nil }
            batch.polls += 1
            if batch.state == "in_progress" && batch.polls >= batch.pollsNeeded { batch.state = "ended" }
            b[id] = batch
            return batch
        }
        guard let batch else { return call.fail(ProviderError(.api, "no batch '\(id)'", status: 404)) }
        let failed = batch.requests.filter { ScriptedBackend.batchError($0.request) != nil }.count
        let done = batch.state == "ended"
        call.finish(result: BatchWire.status(
            id: id, state: batch.state, providerStatus: done ? "completed" : batch.state, total: batch.requests.count,
            succeeded: done ? batch.requests.count - failed : 0, failed: done ? failed : 0))
    }

    func batchResults(id: String, _ call: PluginCall) {
        guard let batch = batches.withLock({ $0[id] }) else { return call.fail(ProviderError(.api, "no batch '\(id)'", status: 404)) }
        guard batch.state == "ended" else { return call.fail(ProviderError(.api, "batch '\(id)' has not ended", status: 400)) }
        // The provider's order is not the input's: reversed, to prove the host matches by id.
        let items = batch.requests.reversed().map { r -> JSONValue in
            if let e = ScriptedBackend.batchError(r.request) { return BatchWire.result(customID: r.customID, error: e) }
            let prompt = r.request.messages.last { $0.role == .user }?.content ?? ""
            let n = prompt.split(separator: " ").count
            return BatchWire.result(
                customID: r.customID, content: prompt,
                finish: Wire.Finish(finishReason: .stop, usage: Usage(inputTokens: n * 1000, outputTokens: n * 1000), model: r.request.model ?? "scripted-small", id: "msg_\(r.customID)"))
        }
        call.finish(json: BatchWire.results(items, priceFactor: 0.5))
    }

    func cancelBatch(id: String, _ call: PluginCall) {
        let found = batches.withLock { b -> Bool in
            guard b[id] != nil else { return false }
            b[id]!.state = "cancelled"
            return true
        }
        guard found else { return call.fail(ProviderError(.api, "no batch '\(id)'", status: 404)) }
        call.finish(result: BatchWire.status(id: id, state: "cancelled", providerStatus: "cancelled"))
    }

    static func batchError(_ r: ModelRequest) -> ProviderError? {
        for step in r.options["script"]?.arrayValue?.compactMap(\.stringValue) ?? [] where step.hasPrefix("error:") {
            let (kind, message) = split(String(step.dropFirst(6)))
            return ProviderError(ProviderError.Kind(rawValue: kind), message)
        }
        return nil
    }
}
