import Descartes
import DescartesCommandLine
import Glibc
import Synchronization
import DescartesSupport

/// `descartes-bench`: runs many requests through one provider the way a
/// Swift caller does (`ProviderFactory` -> the plugin through the C ABI ->
/// `ModelBackend.complete` / `stream`) and reports what it cost: requests per
/// second, per-request latency, peak RSS, the most threads the process had,
/// and whether every answer's text equals an expected file byte for byte.
/// `make bench` (bench/run.py) drives it against a local nginx and compares it
/// with a C client (bench/baseline.c) doing the same work; docs/benchmarks.md.
enum BenchCommand {
    struct Settings {
        var requests = 100
        var concurrency = 1
        var warmup = 1
        var streaming = false
        var session = false
        var request = ModelRequest(prompt: "Say hello to the benchmark in one short sentence.")
        /// Through the configured response cache (`--cache`).
        var cache = false
        /// Every prompt made distinct with this tag (`--vary`).
        var vary: String?

        /// The request numbered `n` (warm-ups: `warmup` true).
        func request(_ template: ModelRequest, _ n: Int, warmup: Bool = false) -> ModelRequest {
            guard let vary, !template.messages.isEmpty else { return template }
            var r = template
            r.messages[r.messages.count - 1].content += " [\(vary) \(warmup ? "w" : "")\(n)]"
            return r
        }
    }

    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        var globals = globals
        var s = Settings()
        let config: [String: JSONValue]
        do throws(UsageError) {
            guard args.positional.isEmpty else { throw args.mistake("unexpected argument '\(args.positional[0])' (the prompt is --prompt TEXT)") }
            config = try Commands.settings(args)
            s.requests = try args.int(.requests) ?? s.requests
            s.concurrency = try args.int(.concurrency) ?? s.concurrency
            s.warmup = try args.int(.warmup) ?? s.warmup
            guard s.requests > 0 else { throw args.mistake("--requests must be positive") }
            guard s.concurrency > 0 else { throw args.mistake("--concurrency must be positive") }
            guard s.warmup >= 0 else { throw args.mistake("--warmup must not be negative") }
            s.streaming = args.flag(.stream)
            s.session = args.flag(.session)
            s.cache = args.flag(.cache)
            s.vary = args.value(.vary)
            if let v = s.vary, v.isEmpty { throw args.mistake("--vary needs a non-empty TAG") }
            if s.session && s.concurrency > 1 { throw args.mistake("--session runs one turn at a time (no --concurrency)") }
            s.request = ModelRequest(prompt: args.value(.prompt) ?? "Say hello to the benchmark in one short sentence.", model: args.value(.model))
            if let t = try args.double(.timeout) {
                guard t > 0 else { throw args.mistake("--timeout must be positive") }
                s.request.deadlines.total = .milliseconds(Int(t * 1000))
                globals.timeout = t
            }
        } catch { usageFailure(error) }
        let json = args.flag(.json)
        let provider = args.value(.provider)!
        var expected: [UInt8]? = nil
        if let file = args.value(.expect) {
            do { expected = Array(try FileSystem.readText(file, limit: 1 << 30).utf8) } catch {
                Out.err("Error: --expect: \(error)")
                return .dataError
            }
        }

        // The path `descartes complete` takes: providers.yaml and the
        // environment, --set on top, the audit log if one is configured.
        // A chain or route name works as for `complete` (no retries and no
        // response cache, unless --cache: they would distort the measurement).
        let setup = Commands.setup(globals)
        let (created, providers) = setup.probe(provider, settings: config, json: json, cache: s.cache)
        let backend: any ModelBackend
        do {
            let plugin = setup.resolve(provider, json: json).plugin ?? provider
            backend = try Commands.auditLog(setup.factory.configuration).map { $0.wrap(created, plugin: plugin) } ?? created
        } catch { failure(error, json: json) }

        let outcome: Result<Report, ProviderError>
        do {
            outcome = .success(
                try await measure(backend, s) {
                    // What the requests sent after their answers counts too.
                    await providers.sharedStore?.flush()
                    return counters(providers, cache: s.cache)
                })
        } catch let e as ProviderError {
            outcome = .failure(e)
        } catch {
            outcome = .failure(ProviderError(.backend, "\(error)", provider: provider))
        }
        await providers.shutdown()
        var report: Report
        switch outcome {
        case .failure(let e): failure(e, json: json)
        case .success(let r): report = r
        }
        if let expected {
            report.textMatches = report.texts.allSatisfy { $0.utf8.elementsEqual(expected) }
        }
        if json {
            Out.line(report.json(provider: provider, settings: s).jsonText)
        } else {
            Out.line(report.human(provider: provider, settings: s))
        }
        return report.textMatches == false ? .failure : .ok
    }

    // MARK: Measuring

    struct Report {
        var seconds: Double
        var cpuSeconds: Double
        /// Voluntary context switches of the process over the timed part
        /// (every thread: a thread that blocks to hand work to another).
        var voluntarySwitches: Int
        var latencies: [Double]
        var texts: [String]
        var events: Int
        var peakRSSKB: Int
        var threadsPeak: Int
        var threadsPeakByName: [String: Int]
        var firstTurn: Double?
        var textMatches: Bool?
        /// What the timed requests did to the shared store and the cache
        /// (`counters(_:cache:)`, after minus before).
        var counters: [String: Int] = [:]

        var textBytes: Int { texts.reduce(0) { $0 + $1.utf8.count } }

        func stats() -> (median: Double, p99: Double, mean: Double, min: Double, max: Double) {
            let l = latencies.sorted()
            guard !l.isEmpty else { return (0, 0, 0, 0, 0) }
            return (l[l.count / 2], l[min(l.count - 1, l.count * 99 / 100)], l.reduce(0, +) / Double(l.count), l[0], l[l.count - 1])
        }

        func json(provider: String, settings s: Settings) -> JSONValue {
            let st = stats()
            func ms(_ x: Double) -> JSONValue { .number((x * 1e6).rounded() / 1e3) }
            var o: JSONObject = [
                "tool": "descartes", "provider": .string(provider), "mode": .string(s.streaming ? "stream" : "complete"),
                "requests": .integer(latencies.count), "concurrency": .integer(s.concurrency),
                "seconds": .number((seconds * 1e6).rounded() / 1e6),
                "requests_per_second": .number((Double(latencies.count) / seconds * 10).rounded() / 10),
                "cpu_seconds": .number((cpuSeconds * 1e6).rounded() / 1e6),
                "voluntary_switches": .integer(voluntarySwitches),
                "events": .integer(events), "text_bytes": .integer(textBytes),
                "text_matches": textMatches.map { .bool($0) } ?? .null,
                "peak_rss_kb": .integer(peakRSSKB), "threads_peak": .integer(threadsPeak),
                "threads_peak_by_name": .object(JSONObject(threadsPeakByName.sorted { $0.key < $1.key }.map { (key: $0.key, value: JSONValue.integer($0.value)) })),
                "latency_ms": ["median": ms(st.median), "p99": ms(st.p99), "mean": ms(st.mean), "min": ms(st.min), "max": ms(st.max)],
            ]
            if let f = firstTurn { o["session_first_turn_ms"] = ms(f) }
            for group in ["shared_store", "cache"] {
                let members = counters.filter { $0.key.hasPrefix(group + ".") }.sorted { $0.key < $1.key }
                if members.isEmpty { continue }
                o[group] = .object(JSONObject(members.map { (key: String($0.key.dropFirst(group.count + 1)), value: JSONValue.integer($0.value)) }))
            }
            return .object(o)
        }

        func human(provider: String, settings s: Settings) -> String {
            let st = stats()
            func ms(_ x: Double) -> String { fixed(x * 1000, 3) + " ms" }
            var rows: [[String]] = [
                ["provider", provider + (s.streaming ? " (stream)" : " (complete)") + (s.session ? ", session turns" : "")],
                ["requests", "\(latencies.count), \(s.concurrency) at a time"],
                ["wall time", fixed(seconds, 3) + " s (cpu " + fixed(cpuSeconds, 3) + " s, \(voluntarySwitches) voluntary context switches)"],
                ["rate", fixed(Double(latencies.count) / seconds, 1) + " requests/s"],
                ["latency", "median \(ms(st.median)), p99 \(ms(st.p99)), mean \(ms(st.mean)), min \(ms(st.min)), max \(ms(st.max))"],
                ["text", "\(textBytes) bytes in \(events) events" + (textMatches.map { $0 ? ", matches the expected text" : ", DIFFERS from the expected text" } ?? "")],
                ["peak RSS", "\(peakRSSKB / 1024) MiB (\(peakRSSKB) KiB)"],
                ["threads", "\(threadsPeak) at most"],
            ]
            if let f = firstTurn { rows.insert(["first turn", ms(f) + " (starts the session)"], at: 4) }
            if let trips = counters["shared_store.round_trips"] {
                rows.append([
                    "shared store",
                    "\(trips) round trips (\(counters["shared_store.after_round_trips"] ?? 0) of them after answers; \(counters["shared_store.commands"] ?? 0) commands), "
                        + "\(counters["shared_store.failures"] ?? 0) failures",
                ])
            }
            if let hits = counters["cache.hits"] {
                rows.append(["cache", "\(hits) hits (\(counters["cache.shared_hits"] ?? 0) from the shared store), \(counters["cache.misses"] ?? 0) misses"])
            }
            return Out.table(["measure", "value"], rows)
        }
    }

    /// The shared store's and the cache's counts now, when there are any.
    static func counters(_ providers: ReliableProviders, cache: Bool) -> [String: Int] {
        var out: [String: Int] = [:]
        if let st = providers.sharedStore?.stats {
            out["shared_store.round_trips"] = st.roundTrips
            out["shared_store.commands"] = st.commands
            out["shared_store.failures"] = st.failures
            out["shared_store.after_round_trips"] = st.afterRoundTrips
        }
        if cache, let c = providers.cache?.stats {
            out["cache.hits"] = c.hits
            out["cache.shared_hits"] = c.sharedHits
            out["cache.misses"] = c.misses
        }
        return out
    }

    static func measure(_ backend: any ModelBackend, _ s: Settings, counters: () async -> [String: Int] = { [:] }) async throws -> Report {
        // Warm-up: loads and initializes the plugin, opens a connection.
        for i in 0..<s.warmup { _ = try await once(backend, s.request(s.request, i, warmup: true), streaming: s.streaming) }

        var first: Double? = nil
        var template = s.request
        if s.session {
            var r = s.request
            r.options["session"] = true
            let start = ContinuousClock.now
            let answer = try await once(backend, r, streaming: s.streaming)
            first = (ContinuousClock.now - start).secondsDouble
            guard let id = answer.response.metadata["session_id"]?.stringValue else {
                throw ProviderError(.unsupportedFeature, "the provider started no session (no session_id in the answer's metadata)", provider: backend.name)
            }
            template.options["session_id"] = .string(id)
        }

        // Threads come and go only with concurrency; one request at a time
        // is counted at the end (a sampling thread would also show up in
        // callgrind profiles of a slowed-down process).
        let sampler = s.concurrency > 1 ? ThreadSampler() : nil
        let before = await counters()
        let cpu0 = cpuSeconds()
        let switches0 = voluntarySwitches()
        let start = ContinuousClock.now
        let results: [(latency: Double, answer: Answer)]
        if s.concurrency == 1 {
            var out: [(Double, Answer)] = []
            out.reserveCapacity(s.requests)
            for i in 0..<s.requests {
                let r = s.request(template, i)
                let t = ContinuousClock.now
                let a = try await once(backend, r, streaming: s.streaming)
                out.append(((ContinuousClock.now - t).secondsDouble, a))
            }
            results = out
        } else {
            let next = Counter()
            let request = template
            let (total, streaming, settings) = (s.requests, s.streaming, s)
            results = try await withThrowingTaskGroup(of: [(Double, Answer)].self) { group in
                for _ in 0..<min(s.concurrency, s.requests) {
                    group.addTask {
                        var mine: [(Double, Answer)] = []
                        while case let i = next.value.add(1, ordering: .relaxed).oldValue, i < total {
                            let r = settings.request(request, i)
                            let t = ContinuousClock.now
                            let a = try await once(backend, r, streaming: streaming)
                            mine.append(((ContinuousClock.now - t).secondsDouble, a))
                        }
                        return mine
                    }
                }
                var all: [(Double, Answer)] = []
                for try await part in group { all += part }
                return all
            }
        }
        let seconds = (ContinuousClock.now - start).secondsDouble
        let cpu = cpuSeconds() - cpu0
        let switches = voluntarySwitches() - switches0
        let after = await counters()
        let threads = sampler?.stop() ?? (total: ThreadSampler.count(), byName: ThreadSampler.byName())
        return Report(
            seconds: seconds, cpuSeconds: cpu, voluntarySwitches: switches, latencies: results.map(\.latency), texts: results.map(\.answer.text),
            events: results.reduce(0) { $0 + $1.answer.events }, peakRSSKB: ProcStatus.field("VmHWM"), threadsPeak: threads.total,
            threadsPeakByName: threads.byName,
            firstTurn: first, counters: after.reduce(into: [:]) { d, kv in d[kv.key] = kv.value - (before[kv.key] ?? 0) })
    }

    final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    struct Answer: Sendable {
        var text: String
        var events: Int
        var response: ModelResponse
    }

    /// One request as a caller makes it: a stream's text deltas joined as
    /// they arrive, or a completion's content.
    static func once(_ backend: any ModelBackend, _ request: ModelRequest, streaming: Bool) async throws -> Answer {
        guard streaming else {
            let r = try await backend.complete(request)
            return Answer(text: r.content, events: 1, response: r)
        }
        var text = ""
        var events = 0
        for try await event in backend.stream(request) {
            switch event {
            case .textDelta(let t):
                text += t
                events += 1
            case .finish(let r):
                return Answer(text: text, events: events, response: r)
            default:
                break
            }
        }
        throw ProviderError(.streamClosed, "the stream ended without a finish event", provider: backend.name)
    }

    static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
    }

    static func voluntarySwitches() -> Int {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return u.ru_nvcsw
    }

    static func fixed(_ x: Double, _ digits: Int) -> String {
        var p = 1.0
        for _ in 0..<digits { p *= 10 }
        let v = Int((x * p).rounded())
        let whole = v / Int(p)
        var frac = String(abs(v % Int(p)))
        while frac.count < digits { frac = "0" + frac }
        return digits == 0 ? "\(whole)" : "\(whole).\(frac)"
    }
}

extension Duration {
    var secondsDouble: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}

/// Counts the process's threads (/proc/self/status) every 10 ms on a thread
/// of its own, which it leaves out of the count.
final class ThreadSampler: @unchecked Sendable {
    private let stopping = Atomic<Bool>(false)
    private let peak = Atomic<Int>(0)
    /// The most threads of each name seen at once (`/proc/self/task/*/comm`):
    /// tells the plugin's transfer loops ("descartes-http") from the host's
    /// call threads and the Swift runtime's.
    private let peaks = Mutex<[String: Int]>([:])
    private var thread = pthread_t()
    /// The sampler's own thread id, left out of the counts by name.
    fileprivate let ownThread = Atomic<Int>(0)

    init() {
        peak.store(Self.count(), ordering: .relaxed)
        let me = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            let s = Unmanaged<ThreadSampler>.fromOpaque(arg!).takeRetainedValue()
            s.ownThread.store(ThreadSampler.thisThreadID(), ordering: .relaxed)
            while !s.stopping.load(ordering: .relaxed) {
                s.sample()
                usleep(10_000)
            }
            return nil
        }, me)
    }

    private func sample() {
        let n = Self.count() - 1
        if n > peak.load(ordering: .relaxed) { peak.store(n, ordering: .relaxed) }
        let now = Self.byName(except: ownThread.load(ordering: .relaxed))
        peaks.withLock { p in for (name, c) in now where c > p[name, default: 0] { p[name] = c } }
    }

    /// Stops sampling; returns the most threads seen (the sampler excluded)
    /// and the most of each name.
    func stop() -> (total: Int, byName: [String: Int]) {
        stopping.store(true, ordering: .relaxed)
        pthread_join(thread, nil)
        sample()
        return (total: max(peak.load(ordering: .relaxed), Self.count() - 1), byName: peaks.withLock { $0 })
    }

    static func count() -> Int { ProcStatus.field("Threads") }

    /// The calling thread's id, from /proc/thread-self ("PID/task/TID").
    static func thisThreadID() -> Int {
        var buf = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/thread-self", &buf, buf.count - 1)
        guard n > 0 else { return 0 }
        let link = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return link.split(separator: "/").last.flatMap { Int($0) } ?? 0
    }

    /// The threads of this process now, counted by name.
    static func byName(except skipped: Int = 0) -> [String: Int] {
        var out: [String: Int] = [:]
        for tid in (try? FileSystem.list("/proc/self/task")) ?? [] where tid != String(skipped) {
            guard var name = try? FileSystem.readText("/proc/self/task/\(tid)/comm", limit: 64) else { continue }
            if name.hasSuffix("\n") { name.removeLast() }
            out[name, default: 0] += 1
        }
        return out
    }
}

/// A number from /proc/self/status: "Threads" (threads now), "VmHWM" (the
/// peak RSS of this process image in KiB; not getrusage's ru_maxrss, which
/// Linux carries over exec from the parent process).
enum ProcStatus {
    static func field(_ name: String) -> Int {
        let fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { buf -> Int in
            let n = read(fd, buf.baseAddress, buf.count)
            guard n > 0 else { return 0 }
            var key = "\n\(name):"
            return key.withUTF8 { k -> Int in
                var i = 0
                outer: while i + k.count < n {
                    for j in 0..<k.count where buf[i + j] != k[j] {
                        i += 1
                        continue outer
                    }
                    var j = i + k.count
                    while j < n && (buf[j] == 0x20 || buf[j] == 0x09) { j += 1 }
                    var v = 0
                    while j < n && buf[j] >= 0x30 && buf[j] <= 0x39 {
                        v = v * 10 + Int(buf[j] - 0x30)
                        j += 1
                    }
                    return v
                }
                return 0
            }
        }
    }
}
