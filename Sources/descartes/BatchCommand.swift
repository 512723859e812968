import Descartes
import DescartesCommandLine
import Glibc
import DescartesSupport

/// `descartes batch -p P requests.jsonl`: one request per line (a Request
/// document of docs/abi.md), one result per line in input order, each with
/// its index and a response or an error; progress on stderr.
enum BatchCommand {
    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        // --timeout bounds the whole batch, from here.
        let began = ContinuousClock.now
        var globals = globals
        let reliability: ReliabilityOptions
        let settings: [String: JSONValue]
        let concurrency: Int
        var timeout: Duration? = nil
        do throws(UsageError) {
            reliability = try ReliabilityOptions(args, globals: globals)
            // --status, --results and --cancel name a batch; FILE is optional for them.
            let needsFile = !(args.value(.status) != nil || args.value(.results) != nil || args.value(.cancel) != nil)
            if needsFile && args.positional.isEmpty { throw args.mistake("missing FILE (or '-' to read it from stdin)") }
            settings = try Commands.settings(args)
            concurrency = try args.int(.concurrency) ?? 4
            guard concurrency >= 1 else { throw args.mistake("--concurrency must be at least 1") }
            if let t = try args.double(.timeout) {
                guard t > 0 else { throw args.mistake("--timeout must be positive") }
                timeout = .milliseconds(Int(t * 1000))
                globals.timeout = t
            }
            if ProviderBatchOptions.wanted(args) { try ProviderBatchOptions.check(args, reliability: reliability) }
        } catch { usageFailure(error) }
        let provider = args.value(.provider)!
        let model = args.value(.model)

        // Read the whole input first: a missing file is reported before anything runs.
        var bytes: [UInt8] = []
        if let path = args.positional.first {
            do {
                bytes = path == "-" ? readAll(0) : try FileSystem.readBytes(path, limit: 1 << 30)
            } catch {
                Out.err("Error: cannot read \(path): \(error.reason)")
                return .noInput
            }
        }
        var lines: [(line: Int, text: String)] = []
        for (i, l) in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            let text = String(decoding: l, as: UTF8.self)
            if !text.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) { lines.append((i + 1, text)) }
        }
        let requests: [Result<ModelRequest, ProviderError>] = lines.map { l in
            BatchRunner.parse(l.text).map { r in
                var r = r
                if r.model == nil { r.model = model }
                if let timeout, r.deadlines.total == nil { r.deadlines.total = timeout }
                return r
            }.mapError { e in
                var e = e
                e.message = "line \(l.line): \(e.message)"
                return e
            }
        }
        let customIDs: [String?] = lines.map { (try? JSONValue.parse($0.text))?["custom_id"]?.stringValue }

        let output: Int32
        if let file = args.value(.output) {
            output = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            if output < 0 {
                Out.err("Error: cannot write \(file): \(String(cString: strerror(errno)))")
                return .cantCreate
            }
        } else {
            output = 1
        }
        defer { if output != 1 { close(output) } }

        if ProviderBatchOptions.wanted(args) {
            return await ProviderBatchOptions.run(
                args, provider: provider, config: settings, requests: requests, lines: lines.map(\.line), customIDs: customIDs,
                output: output, globals: globals)
        }

        let built: ReliabilityOptions.Built
        do { built = try reliability.build(provider, config: settings, globals: globals) } catch { failure(error) }

        let quiet = args.flag(.quiet)
        let progress = Progress(total: requests.count, enabled: !quiet)
        let failed = Lock(0)
        let start = ContinuousClock.now
        var batch = BatchRunner(backend: built.backend, concurrency: concurrency, streaming: reliability.stats)
        if let timeout, let t = globals.timeout { batch.deadline = (began + timeout, Out.seconds(t)) }
        let runner = batch
        let task = Task {
            await runner.run(requests, progress: { progress.update($0) }) { index, result in
                var o: JSONObject = ["index": .integer(index), "line": .integer(lines[index].line)]
                if let id = customIDs[index] { o["custom_id"] = .string(id) }
                switch result {
                case .success(let r): o["response"] = Wire.json(r)
                case .failure(let e):
                    o["error"] = Wire.json(e)
                    failed.withLock { $0 += 1 }
                }
                writeLine(output, JSONValue.object(o).jsonText)
            }
        }
        let interrupts = Interrupts { task.cancel() }
        await task.value
        interrupts.stop()
        progress.finish(elapsed: ContinuousClock.now - start)
        await built.providers.shutdown()
        interrupts.exitIfTerminated()
        if let meter = built.meter { printTotals(meter.totals, elapsed: ContinuousClock.now - start, cache: built.providers.cache?.stats) }
        return failed.withLock { $0 } == 0 ? .ok : .failure
    }

    static func readAll(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return out
    }

    static func writeLine(_ fd: Int32, _ text: String) {
        if fd == 1 {
            Out.line(text)
            return
        }
        var bytes = Array((Out.logSink.redactor.redact(text) + "\n").utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            off += n
        }
    }

    static func printTotals(_ t: UsageMeter.Totals, elapsed: Duration, cache: ResponseCache.Stats?) {
        Out.err("descartes: stats: \(t.requests) requests sent, \(t.failures) failed, \(t.failedAttempts) failed attempts retried or fallen back, \(t.cacheHits) from the cache")
        Out.err("descartes: stats: tokens: \(t.usage.inputTokens) in, \(t.usage.outputTokens) out; wall time \(ReliabilityOptions.formatDuration(elapsed))")
        var cost = "cost: $\(ReliabilityOptions.formatUSD(t.costUSD))"
        if t.unpricedRequests > 0 { cost += " (\(t.unpricedRequests) answers had no price)" }
        Out.err("descartes: stats: \(cost)")
    }

    /// Progress on stderr: rewritten in place on a terminal, a line at most
    /// every second otherwise.
    final class Progress: Sendable {
        let total: Int
        let enabled: Bool
        let tty = isatty(2) != 0
        let state = Lock<(last: ContinuousClock.Instant?, latest: BatchRunner.Progress?)>((nil, nil))

        init(total: Int, enabled: Bool) {
            self.total = total
            self.enabled = enabled
        }

        func update(_ p: BatchRunner.Progress) {
            guard enabled else { return }
            let now = ContinuousClock.now
            let show = state.withLock { s -> Bool in
                s.latest = p
                if let last = s.last, now - last < (tty ? .milliseconds(100) : .seconds(1)) { return false }
                s.last = now
                return true
            }
            if show { emit(p, final: false) }
        }

        func finish(elapsed: Duration) {
            guard enabled else { return }
            let p = state.withLock { $0.latest } ?? BatchRunner.Progress(total: total, done: 0, failed: 0, running: 0)
            emit(p, final: true, elapsed: elapsed)
        }

        private func emit(_ p: BatchRunner.Progress, final: Bool, elapsed: Duration? = nil) {
            var text = "descartes: batch: \(p.done)/\(p.total) done, \(p.failed) failed"
            if !final { text += ", \(p.running) running" }
            if let elapsed { text += " in \(ReliabilityOptions.formatDuration(elapsed))" }
            if tty {
                Out.write("\r\u{1B}[K" + text + (final ? "\n" : ""), to: 2)
            } else {
                Out.err(text)
            }
        }
    }
}
