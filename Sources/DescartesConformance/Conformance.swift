internal import CDescartesPlugin
import Descartes
import DescartesSupport

/// The conformance suite: runs one plugin, through its C ABI, through the
/// battery every plugin must pass (what `descartes plugins verify
/// --conformance NAME` prints), against servers and commands its spec
/// names. See docs/conformance.md.
///
/// Checks, in order: ABI negotiation, config validation, initialize,
/// health check, complete, stream, the optional operations, concurrent
/// requests, errors mapped, cancellation mid-stream, deadlines (total and
/// first token), shutdown with requests in flight (then destroy), exactly
/// one terminal event per call and the other event rules, and that no
/// secret from the config appears in anything the plugin reported.
public enum Conformance {
    public struct Result: Sendable {
        public enum Outcome: String, Sendable {
            case pass = "ok", fail = "FAIL", skip = "skip"
        }
        public var check: String
        public var outcome: Outcome
        public var detail: String
        public var duration: Duration
    }

    /// Runs the suite for `provider` and reports each check as it finishes.
    ///
    /// - Parameters:
    ///   - overrides: config values over the spec's (`--set`).
    ///   - report: called with each result in order.
    /// - Returns: every result.
    ///   - resume: checks done already, by a child process that died
    ///     (`runIsolated`): not run again; `abi` and `config` are redone
    ///     silently (a failure is still reported).
    ///   - spent: how much of the spec's budget earlier child processes spent.
    ///   - onStep: called with each check's name before it runs (and with
    ///     `abi`, `config`, `destroy` and `events` for the steps around
    ///     them), so a process watching this one knows what was running
    ///     when it died.
    public static func run(
        provider: String, catalog: PluginCatalog, spec: ConformanceSpec, environment: [String: String],
        overrides: [String: JSONValue] = [:], loader: PluginLoader = .shared, progress: @escaping @Sendable (String) -> Void = { _ in },
        resume: Set<String> = [], spent: Duration = .zero, onStep: @escaping @Sendable (String) -> Void = { _ in },
        report: @escaping @Sendable (Result) -> Void = { _ in }
    ) async -> [Result] {
        let run = Run(provider: provider, catalog: catalog, spec: spec, environment: environment, overrides: overrides, loader: loader, report: report)
        run.progress = progress
        run.resumed = resume
        run.began = .now - spent
        run.onStep = onStep
        await run.all()
        return run.results.withLock { $0 }
    }
}

/// One run of the suite.
final class Run: @unchecked Sendable {
    let provider: String
    let catalog: PluginCatalog
    let spec: ConformanceSpec
    let environment: [String: String]
    let overrides: [String: JSONValue]
    let loader: PluginLoader
    let report: @Sendable (Conformance.Result) -> Void
    /// A line before each check (the CLI prints it on stderr).
    var progress: @Sendable (String) -> Void = { _ in }
    /// Checks a previous child process did (see `Conformance.run`).
    var resumed: Set<String> = []
    /// The name of each step as it begins.
    var onStep: @Sendable (String) -> Void = { _ in }
    /// The checks over every call of the run, which after a restart see
    /// only the calls of this process.
    static let wholeRunChecks: Set<String> = ["start", "start times", "events", "secrets"]
    let results = Lock<[Conformance.Result]>([])
    /// Start functions that did not return within `spec.startLimit`, by
    /// operation; and whether the `start` check has failed already.
    let lateStarts = Lock<(byOp: [String: Int], reported: Bool)>(([:], false))
    /// After this many starts of one function past `lateFactor` times the
    /// limit, the suite says so at once: one late start can be a loaded
    /// machine preempting the call (20 conformance runs side by side on two
    /// cores saw single starts of 60-110 ms), a plugin that blocks does it
    /// every time.
    static let lateStartsToFail = 3
    static let lateFactor = 4
    /// Past this many times the limit, even one call fails the check.
    static let blockedFactor = 20
    /// When the suite began, for its budget.
    var began = ContinuousClock.now
    /// Every call started, for the event-rule check.
    let calls = Lock<[RawCall]>([])
    /// Everything the plugin logged.
    let logs = Lock<[String]>([])
    /// The suite's own sink: plugins log everything to it (`trace`; the
    /// records are kept in `logs` and checked for secrets), and its redactor
    /// masks the spec's secrets in the results.
    let logSink = LogSink(level: .trace)
    /// Secret config values, for the leak check.
    let secrets = Lock<Set<String>>([])
    var manifest: PluginManifest!
    var library: PluginLibrary!
    var servers: [String: ConformanceServer] = [:]
    var backends: [RawBackend] = []

    init(
        provider: String, catalog: PluginCatalog, spec: ConformanceSpec, environment: [String: String], overrides: [String: JSONValue],
        loader: PluginLoader, report: @escaping @Sendable (Conformance.Result) -> Void
    ) {
        self.provider = provider
        self.catalog = catalog
        self.spec = spec
        self.environment = environment
        self.overrides = overrides
        self.loader = loader
        self.report = report
    }

    var tolerance: Duration { spec.tolerance }
    /// How long an answer that should come at once may take.
    let answerLimit: Duration = .seconds(30)

    func record(_ check: String, _ outcome: Conformance.Result.Outcome, _ detail: String, since start: ContinuousClock.Instant) {
        var detail = detail
        if !resumed.isEmpty && Self.wholeRunChecks.contains(check) && outcome != .skip {
            detail += " (over the calls made after the suite's child process was restarted: the calls before it died are not counted)"
        }
        let r = Conformance.Result(check: check, outcome: outcome, detail: logSink.redactor.redact(detail), duration: .now - start)
        results.withLock { $0.append(r) }
        // Redone after a restart: said the first time.
        if !resumed.isEmpty && (check == "abi" || check == "config") && outcome == .pass { return }
        report(r)
    }

    // MARK: Setting up

    /// The expanded, validated config for a scenario, as the plugin gets it.
    func configBytes(_ s: ConformanceSpec.Scenario) -> Swift.Result<[UInt8], Why> {
        // A scenario without a server of its own (an invalid_config case)
        // gets the text scenario's: its `${server}` is a working endpoint,
        // so each case is refused for what it changes, not for an empty URL.
        let server = servers[s.name]?.url ?? servers[spec.text.name]?.url ?? ""
        let interp = Interpolator(environment: environment, extra: ["server": server, "spec_dir": FileSystem.directory(of: spec.file)])
        var values: [String: ConfigValidation.Explicit] = [:]
        var problems: [SourceProblem] = []
        for (key, node) in spec.config + s.config {
            var secret = false
            var via: [String] = []
            guard let x = interp.expandNode(node, what: "key '\(key)'", problems: &problems, secret: &secret, via: &via) else { continue }
            var e = ConfigValidation.Explicit(value: x.json, origin: node.location.description)
            e.position = node.location
            values[key] = e
        }
        for (k, v) in overrides { values[k] = ConfigValidation.Explicit(value: v, origin: "--set") }
        if !problems.isEmpty { return .failure(Why(problems.map(\.description).joined(separator: "; "))) }
        let outcome = ConfigValidation.check(manifest: manifest, instance: provider, values: values, environment: environment, at: s.location)
        if !outcome.details.isEmpty { return .failure(Why(outcome.details.joined(separator: "; "))) }
        secrets.withLock { set in for v in outcome.secrets where v.utf8.count >= 4 { set.insert(v) } }
        for v in outcome.secrets { logSink.redactor.register(v) }
        return .success(JSONValue.object(outcome.config).jsonBytes)
    }

    /// Creates a backend for a scenario, or says why not.
    func create(_ s: ConformanceSpec.Scenario) -> Swift.Result<RawBackend, ProviderError> {
        switch configBytes(s) {
        case .failure(let why): return .failure(ProviderError(.config, why.text))
        case .success(let bytes):
            let table = HostTable(source: "conformance \(provider)", log: logSink) { [self] level, text in self.logs.withLock { $0.append("\(level): \(text)") } }
            do throws(ProviderError) {
                let raw = try library.createBackend(factory: manifest.factory, provider: provider, instance: provider, config: bytes, table: table, redactor: logSink.redactor)
                let b = RawBackend(raw: raw, table: table, library: library)
                backends.append(b)
                return .success(b)
            } catch {
                return .failure(error)
            }
        }
    }

    func start(_ b: RawBackend, _ op: BackendOperation, _ input: [UInt8]) -> RawCall {
        let c = b.start(op, input, bound: spec.startLimit * Self.lateFactor) { [self] c in lateStart(c) }
        calls.withLock { $0.append(c) }
        return c
    }

    /// A start function still running past `spec.startLimit`: on the third
    /// time for one function the `start` check fails, at once, naming it.
    func lateStart(_ c: RawCall) {
        let (n, report) = lateStarts.withLock { l -> (Int, Bool) in
            l.byOp[c.op.name, default: 0] += 1
            let n = l.byOp[c.op.name]!
            let report = n == Self.lateStartsToFail && !l.reported
            if report { l.reported = true }
            return (n, report)
        }
        guard report else { return }
        record(
            "start", .fail,
            "the plugin's \(c.op.name) did not return within \(fmt(spec.startLimit * Self.lateFactor)) (\(Self.lateFactor) x start_limit_ms \(fmt(spec.startLimit))) \(n) times (this time still running after \(fmt(c.startDuration ?? .zero))): a start function must return its handle at once and do the work on the plugin's own threads (docs/abi.md); the suite goes on",
            since: c.started)
    }

    /// How long the start functions took, over every call of the run: a
    /// function fails when even its fastest call took longer than the limit
    /// (it blocks every time; two calls at least, so one preempted call is
    /// not a verdict), when one call took `blockedFactor` times the limit,
    /// or when `lateStartsToFail` calls took `lateFactor` times it (already
    /// said at once).
    func checkStartTimes() {
        let t0 = ContinuousClock.now
        var byOp: [String: [Duration]] = [:]
        var order: [String] = []
        for c in calls.withLock({ $0 }) {
            guard let d = c.startDuration else { continue }
            if byOp[c.op.name] == nil { order.append(c.op.name) }
            byOp[c.op.name, default: []].append(d)
        }
        let limit = spec.startLimit
        var slow: [String] = []
        var notes: [String] = []
        for op in order {
            let times = byOp[op]!
            let late = times.filter { $0 > limit }.count
            let slowest = times.max()!
            let veryLate = times.filter { $0 > limit * Self.lateFactor }.count
            if (times.count >= 2 && times.min()! > limit) || slowest > limit * Self.blockedFactor || veryLate >= Self.lateStartsToFail {
                slow.append("\(op): \(late) of \(times.count) calls took longer than \(fmt(limit)) to return (slowest \(fmt(slowest)), fastest \(fmt(times.min()!)))")
            } else {
                notes.append("\(op) \(fmt(slowest))")
            }
        }
        let already = lateStarts.withLock { $0.reported }
        if slow.isEmpty {
            var late = 0
            for times in byOp.values { late += times.filter { d in d > limit }.count }
            record(
                "start", .pass,
                "start functions return at once (limit \(fmt(limit))\(late > 0 ? "; \(late) single late call\(late == 1 ? "" : "s"), not repeated: a loaded machine" : "")); slowest: \(notes.joined(separator: ", "))",
                since: t0)
        } else {
            record(already ? "start times" : "start", .fail, slow.joined(separator: "; ") + " (limit \(fmt(limit)), spec 'start_limit_ms')", since: t0)
        }
    }

    /// Runs one check unless the suite's budget has passed (then the first
    /// check not run fails saying so, and the rest are not run).
    var overBudget = false
    func step(_ name: String, _ body: () async -> Void) async {
        if resumed.contains(name) { return }
        let elapsed = ContinuousClock.now - began
        if elapsed > spec.budget {
            if !overBudget {
                overBudget = true
                record(name, .fail, "not run: the suite's budget of \(fmt(spec.budget)) passed (\(fmt(elapsed)) elapsed; spec 'budget_s'); neither were the checks after it", since: .now)
            }
            return
        }
        progress("\(name) (\(fmt(elapsed)) of the \(fmt(spec.budget)) budget spent)")
        onStep(name)
        await body()
    }

    /// What the suite sends when a spec expects the system prompt and
    /// max_tokens on the wire (distinctive, so they are found in the body).
    static let systemPromptProbe = "Conformance system prompt 5e1d: answer briefly."
    static let maxTokensProbe = 173

    func request(_ s: ConformanceSpec.Scenario, deadlines: Deadlines = Deadlines()) -> [UInt8] {
        var r = ModelRequest(prompt: s.prompt, model: spec.model)
        r.options = s.options
        r.deadlines = deadlines
        if s.request?.systemPrompt == true { r.systemPrompt = Self.systemPromptProbe }
        if s.request?.maxTokens == true { r.maxTokens = Self.maxTokensProbe }
        return Wire.encode(r)
    }

    /// Runs one operation to its end; releases the handle.
    func finish(_ b: RawBackend, _ op: BackendOperation, _ input: [UInt8], limit: Duration? = nil) async -> (RawCall, RawCall.Event?) {
        let c = start(b, op, input)
        let t = await c.waitTerminal(limit ?? answerLimit)
        b.release(c)
        return (c, t)
    }

    static func describe(_ c: RawCall, _ t: RawCall.Event?) -> String {
        guard let t else {
            if c.noHandle || c.returnedNoHandle { return "the plugin returned no handle" }
            if !c.hasReturned { return "no terminal event, and its \(c.op.name) function has not returned (after \(fmt(c.startDuration ?? .zero)))" }
            return "no terminal event"
        }
        if t.type == DESCARTES_EVENT_ERROR, let e = c.error { return "ERROR \(e.kind)\(e.status.map { " (\($0))" } ?? ""): \(Wire.excerpt(e.message, limit: 160))" }
        return "RESULT \(Wire.excerpt(t.text, limit: 160))"
    }

    /// Whether an answer matches what the scenario expects.
    func matches(_ text: String, _ e: ConformanceSpec.Expectation) -> String? {
        if let want = e.text, text != want { return "the text is '\(Wire.excerpt(text, limit: 120))', the spec expects '\(Wire.excerpt(want, limit: 120))'" }
        if let part = e.contains, !text.contains(part) { return "the text '\(Wire.excerpt(text, limit: 120))' does not contain '\(part)'" }
        if e.text == nil && e.contains == nil && text.isEmpty { return "the answer is empty" }
        return nil
    }

    // MARK: The checks

    func all() async {
        let t0 = ContinuousClock.now
        onStep("abi")
        guard let entry = catalog.entry(for: provider), let m = entry.manifest, entry.status == .available else {
            let why = catalog.entry(for: provider).map { "\($0.file): \($0.reason ?? $0.status.label)" } ?? "no plugin '\(provider)' is installed"
            record("abi", .fail, why, since: t0)
            return
        }
        manifest = m
        if let p = spec.provider, p != provider && p != m.factory {
            record("abi", .fail, "the spec \(spec.file) is for '\(p)', not '\(provider)' (nor its factory '\(m.factory)')", since: t0)
            return
        }
        do { library = try loader.load(path: m.libraryPath, sha256: entry.pin) } catch {
            record("abi", .fail, "\(error)", since: t0)
            return
        }
        guard library.factory(m.factory) != nil else {
            record("abi", .fail, "\(library.path) registers \(library.factoryIDs.joined(separator: ", ")), not '\(m.factory)' (named by \(m.file))", since: t0)
            return
        }
        if library.abiVersion > m.abi {
            record("abi", .fail, "the library answers ABI \(library.abiVersion), newer than its manifest's \(m.abi)", since: t0)
            return
        }
        record(
            "abi", .pass,
            "\(FileSystem.basename(library.path)): \(library.name) \(library.version) answers ABI \(library.abiVersion) to an offer of \(descartesABIVersion); factories: \(library.factoryIDs.joined(separator: ", "))",
            since: t0)

        // One server per scenario that scripts one.
        let scenarios = [spec.text] + [spec.slow, spec.hang].compactMap { $0 } + spec.errors + spec.invalidConfigs
        for s in scenarios {
            if let routes = s.routes {
                do { servers[s.name] = try ConformanceServer(routes: routes) } catch {
                    record("setup", .fail, "cannot start the server for scenario '\(s.name)': \(error)", since: t0)
                    return
                }
            }
        }
        defer { for s in servers.values { s.stop() } }

        progress(resumed.isEmpty ? "config (creating the backend)" : "config again, in a new child process after a crash (creating the backend)")
        onStep("config")
        guard let text = await checkConfig() else { await cleanUp(); return }
        await step("initialize") { await checkInitialize(text) }
        if !skipped("health_check") { await step("health_check") { await checkHealth(text) } }
        await step("complete") { await checkComplete(text) }
        if spec.text.request != nil {
            // The requests of complete and stream were received by the
            // servers of a child process that died during them.
            if resumed.contains("complete") && !resumed.contains("request") {
                onStep("request")
                record("request", .skip, "not checked: the suite's child process died during 'complete' or 'stream', whose requests it checks", since: .now)
            } else {
                await step("request") { checkRequests() }
            }
        }
        if !skipped("optional operations") { await step("optional operations") { await checkOptional(text) } }
        if !skipped("concurrency") { await step("concurrency") { await checkConcurrency(text) } }
        if !skipped("errors") { await step("errors") { await checkErrors() } }
        if !skipped("cancel") { await step("cancel") { await checkCancel() } }
        if !skipped("deadlines") { await step("deadlines") { await checkDeadlines() } }
        if !skipped("shutdown") { await step("shutdown") { await checkShutdown() } }
        if !resumed.contains("destroy") {
            onStep("destroy")
            await cleanUp()
        }
        // The plugin's threads may still report (late events) while the
        // last checks look at what it did.
        onStep("events")
        if !resumed.isEmpty && calls.withLock({ $0.isEmpty }) {
            // Every call was made by child processes that died.
            for check in ["start", "events"] + (skipped("secrets") ? [] : ["secrets"]) {
                record(check, .skip, "not checked: the calls it looks at were made in a suite's child process that died", since: .now)
            }
            return
        }
        checkStartTimes()
        await checkEvents()
        if !skipped("secrets") { checkSecrets() }
    }

    /// Records a skip the spec asks for.
    func skipped(_ check: String) -> Bool {
        if resumed.contains(check) { return true }
        guard let why = spec.skip[check] else { return false }
        record(check, .skip, "skipped by the spec: \(why)", since: .now)
        return true
    }

    func checkConfig() async -> RawBackend? {
        let t0 = ContinuousClock.now
        let created: RawBackend
        switch create(spec.text) {
        case .failure(let e):
            record("config", .fail, "cannot create the backend from the spec's config: \(e.message)\(e.details.isEmpty ? "" : ": " + e.details.joined(separator: "; "))", since: t0)
            return nil
        case .success(let b): created = b
        }
        let took = ContinuousClock.now - t0
        var notes = ["created in \(fmt(took))"]
        var failed: [String] = []
        // create must not block on I/O (that is initialize's job).
        if took > .seconds(1) { failed.append("create took \(fmt(took)); it must not wait for the network or a child process") }
        for s in spec.invalidConfigs {
            let want = s.expect.kind ?? "config"
            switch configBytes(s) {
            case .failure(let why):
                notes.append("'\(s.name)' refused by the manifest (\(why.text))")
            case .success:
                switch create(s) {
                case .success(let b):
                    failed.append("'\(s.name)' (\(s.location)) was accepted; the plugin must refuse it with a \(want) error")
                    backends.removeAll { $0 === b }
                    _ = await b.destroy(within: tolerance)
                case .failure(let e):
                    // The whole refusal, details too: they name the key.
                    let said = e.message + (e.details.isEmpty ? "" : ": " + e.details.joined(separator: "; "))
                    if e.kind.rawValue == want {
                        notes.append("'\(s.name)' refused: \(said)")
                    } else {
                        failed.append("'\(s.name)' refused with \(e.kind), the spec expects \(want): \(said)")
                    }
                }
            }
        }
        record("config", failed.isEmpty ? .pass : .fail, (failed.isEmpty ? notes : failed).joined(separator: "; "), since: t0)
        return created
    }

    func checkInitialize(_ b: RawBackend) async {
        let t0 = ContinuousClock.now
        let (c, t) = await finish(b, .initialize, Array("{}".utf8))
        if c.noHandle {
            record("initialize", .fail, "initialize is missing from the backend's table", since: t0)
        } else {
            record("initialize", t?.type == DESCARTES_EVENT_RESULT ? .pass : .fail, Run.describe(c, t), since: t0)
        }
    }

    func checkHealth(_ b: RawBackend) async {
        let t0 = ContinuousClock.now
        guard BackendOperation.healthCheck.function(in: b.raw) != nil else {
            record("health_check", .skip, "not implemented (optional)", since: t0)
            return
        }
        let (c, t) = await finish(b, .healthCheck, Array("{}".utf8))
        record("health_check", t?.type == DESCARTES_EVENT_RESULT ? .pass : .fail, Run.describe(c, t), since: t0)
    }

    /// The answer text of the text scenario, from `complete`.
    var completeText: String?

    /// How many requests the text scenario's server had received before
    /// `complete` ran: `request` checks those of complete and stream only
    /// (not a health check's or initialize's).
    var requestsBeforeComplete = 0

    func checkComplete(_ b: RawBackend) async {
        requestsBeforeComplete = servers[spec.text.name]?.requests.count ?? 0
        for op in [BackendOperation.complete, .stream] {
            let t0 = ContinuousClock.now
            guard op.function(in: b.raw) != nil else {
                record(op.name, .fail, "\(op.name) is missing from the backend's table", since: t0)
                continue
            }
            let (c, t) = await finish(b, op, request(spec.text))
            guard let t, t.type == DESCARTES_EVENT_RESULT else {
                record(op.name, .fail, Run.describe(c, t), since: t0)
                continue
            }
            var problems: [String] = []
            do { _ = try Wire.decodeFinish(try JSONValue.parse(t.text)) } catch { problems.append("the RESULT is not a Finish document: \(error)") }
            if let why = matches(c.text, spec.text.expect) { problems.append(why) }
            let textEvents = c.events.filter { $0.type == DESCARTES_EVENT_TEXT }.count
            if op == .stream, textEvents == 0 { problems.append("no TEXT event before the RESULT") }
            if op == .stream, let first = completeText, first != c.text, spec.text.expect.text == nil {
                problems.append("stream's text '\(Wire.excerpt(c.text, limit: 80))' differs from complete's '\(Wire.excerpt(first, limit: 80))'")
            }
            if op == .complete { completeText = c.text }
            record(
                op.name, problems.isEmpty ? .pass : .fail,
                problems.isEmpty ? "'\(Wire.excerpt(c.text, limit: 60))' in \(textEvents) TEXT event\(textEvents == 1 ? "" : "s"), then \(Wire.excerpt(t.text, limit: 100))" : problems.joined(separator: "; "),
                since: t0)
        }
    }

    /// The text scenario's `request:` expectations, against every request
    /// its server received (from complete and stream). Header values are
    /// never printed (a key is a header value): only their names.
    func checkRequests() {
        let t0 = ContinuousClock.now
        guard let want = spec.text.request, let server = servers[spec.text.name] else { return }
        let all = Array(server.requests.dropFirst(requestsBeforeComplete))
        let received = all.filter { r in (want.method.map { $0 == r.method } ?? true) && (want.paths.isEmpty || want.paths.contains(r.path)) }
        let route = "\(want.method ?? "*") \(want.paths.isEmpty ? "*" : want.paths.joined(separator: " or "))"
        guard !received.isEmpty else {
            let got = uniqued(all.map { "\($0.method) \($0.path)" }).joined(separator: ", ")
            record("request", .fail, "no \(route) request reached the text scenario's server (it received: \(got.isEmpty ? "nothing" : got))", since: t0)
            return
        }
        var failed: [String] = []
        for (i, r) in received.enumerated() {
            let which = received.count == 1 ? "the request" : "request \(i + 1) of \(received.count) (\(r.method) \(r.path))"
            var wrong: [String] = []
            let query = Self.queryItems(r.query)
            for q in want.query {
                guard let got = query.first(where: { $0.0 == q.name })?.1 else {
                    wrong.append("query parameter '\(q.name)' missing (query: '\(Wire.excerpt(r.query, limit: 200))')")
                    continue
                }
                if q.value != "*" && got != q.value { wrong.append("query parameter '\(q.name)' is '\(got)', expected '\(q.value)'") }
            }
            for h in want.headers {
                let got = r.headers.filter { $0.0.lowercased() == h.name }.map(\.1)
                if got.isEmpty {
                    wrong.append("header '\(h.name)' missing (sent: \(r.headers.map { $0.0.lowercased() }.joined(separator: ", ")))")
                } else if h.value != "*" && !got.contains(h.value) {
                    wrong.append("header '\(h.name)' does not have the value the spec expects (values are not shown: they may be keys)")
                }
            }
            let doc = try? JSONValue.parse(bytes: r.body)
            if (!want.body.isEmpty || want.maxTokens) && doc == nil {
                wrong.append("the body is not JSON (\(r.body.count) bytes)")
            }
            if let doc {
                for b in want.body {
                    guard let got = JSONPath.value(b.path, in: doc) else {
                        wrong.append("body member \(b.path) missing")
                        continue
                    }
                    if b.value != "*" && !Self.sameJSON(got, b.value) { wrong.append("body member \(b.path) is \(Wire.excerpt(got.jsonText, limit: 120)), expected \(b.value.jsonText)") }
                }
                if want.maxTokens && !Self.contains(doc, number: Self.maxTokensProbe) {
                    wrong.append("max_tokens (\(Self.maxTokensProbe), sent with the request) is nowhere in the body")
                }
            }
            if want.systemPrompt && !String(decoding: r.body, as: UTF8.self).contains(Self.systemPromptProbe) {
                wrong.append("the system prompt ('\(Self.systemPromptProbe)', sent with the request) is not in the body: it was dropped")
            }
            if !wrong.isEmpty { failed.append("\(which): \(wrong.joined(separator: ", "))") }
        }
        var checked: [String] = []
        checked.append(route)
        if !want.query.isEmpty { checked.append("query \(want.query.map(\.name).joined(separator: ", "))") }
        if !want.headers.isEmpty { checked.append("headers \(want.headers.map(\.name).joined(separator: ", "))") }
        if !want.body.isEmpty { checked.append("body \(want.body.map(\.path).joined(separator: ", "))") }
        if want.systemPrompt { checked.append("the system prompt") }
        if want.maxTokens { checked.append("max_tokens") }
        record(
            "request", failed.isEmpty ? .pass : .fail,
            failed.isEmpty ? "\(received.count) request\(received.count == 1 ? "" : "s") carried \(checked.joined(separator: "; "))" : Array(uniqued(failed).prefix(3)).joined(separator: "; "),
            since: t0)
    }

    /// `a=1&b=x%20y` as (name, value) pairs, percent-decoded.
    static func queryItems(_ query: String) -> [(String, String)] {
        query.split(separator: "&").map { item in
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String {
                var out: [UInt8] = []
                var bytes = Array(s.utf8)[...]
                while let b = bytes.popFirst() {
                    if b == UInt8(ascii: "%"), bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
                        out.append(v)
                        bytes = bytes.dropFirst(2)
                    } else {
                        out.append(b == UInt8(ascii: "+") ? UInt8(ascii: " ") : b)
                    }
                }
                return String(decoding: out, as: UTF8.self)
            }
            return (decode(parts[0]), parts.count > 1 ? decode(parts[1]) : "")
        }
    }

    /// Equal as JSON values, numbers compared by value (1 and 1.0 alike).
    static func sameJSON(_ a: JSONValue, _ b: JSONValue) -> Bool {
        if a == b { return true }
        if let x = a.doubleValue, let y = b.doubleValue, a.stringValue == nil, b.stringValue == nil { return x == y }
        return false
    }

    /// Whether `number` is the value of some member or element of `doc`.
    static func contains(_ doc: JSONValue, number: Int) -> Bool {
        switch doc {
        case .integer(let n): return n == number
        case .number(let d): return d == Double(number)
        case .array(let items): return items.contains { contains($0, number: number) }
        case .object(let o): return o.members.contains { contains($0.value, number: number) }
        default: return false
        }
    }

    func checkOptional(_ b: RawBackend) async {
        let t0 = ContinuousClock.now
        var notes: [String] = []
        var failed: [String] = []
        for (op, input) in [(BackendOperation.listModels, Array("{}".utf8)), (.estimateTokens, request(spec.text))] {
            guard op.function(in: b.raw) != nil else {
                notes.append("\(op.name): not implemented")
                continue
            }
            let (c, t) = await finish(b, op, input)
            guard let t else {
                failed.append("\(op.name): no terminal event within \(fmt(answerLimit))")
                continue
            }
            if t.type == DESCARTES_EVENT_ERROR {
                notes.append("\(op.name): \(Run.describe(c, t))")
                continue
            }
            do {
                let doc = try JSONValue.parse(t.text)
                if op == .listModels {
                    let models = try Wire.decodeModels(doc)
                    notes.append("list_models: \(models.count) model\(models.count == 1 ? "" : "s")")
                } else {
                    let est = try Wire.decodeTokenEstimate(doc)
                    notes.append("estimate_tokens: \(est.tokens) (\(est.method))")
                }
            } catch {
                failed.append("\(op.name): the RESULT does not follow docs/abi.md: \(error)")
            }
        }
        record("optional operations", failed.isEmpty ? .pass : .fail, (failed.isEmpty ? notes : failed).joined(separator: "; "), since: t0)
    }

    func checkConcurrency(_ b: RawBackend) async {
        let t0 = ContinuousClock.now
        let n = spec.concurrency
        let started = (0..<n).map { _ in start(b, .stream, request(spec.text)) }
        var failed: [String] = []
        for (i, c) in started.enumerated() {
            let t = await c.waitTerminal(answerLimit)
            b.release(c)
            if t?.type != DESCARTES_EVENT_RESULT {
                failed.append("request \(i + 1): \(Run.describe(c, t))")
            } else if let why = matches(c.text, spec.text.expect) ?? (spec.text.expect.text == nil ? completeText.flatMap { $0 == c.text ? nil : "request \(i + 1) answered '\(Wire.excerpt(c.text, limit: 60))'" } : nil) {
                failed.append("request \(i + 1): \(why)")
            }
        }
        var detail = "\(n) concurrent streams on one backend all finished correctly in \(fmt(.now - t0))"
        // Long requests must run side by side, not one after another: four
        // slow streams started together on a fresh backend each send text
        // within the tolerance.
        if failed.isEmpty, case .success(let slow) = await slowBackend() {
            let long = (0..<4).map { _ in start(slow, .stream, request(spec.slow!)) }
            let limit = tolerance + .seconds(1)
            var late = 0
            var slowest: Duration = .zero
            for c in long {
                if let first = await c.waitFirstContent(limit - (.now - c.started)) {
                    slowest = max(slowest, first.at - c.started)
                } else {
                    late += 1
                }
            }
            for c in long { slow.cancel(c) }
            for c in long {
                _ = await c.waitTerminal(tolerance + .seconds(10))
                slow.release(c)
            }
            if late > 0 {
                failed.append(
                    "\(late) of 4 slow streams started together sent nothing within \(fmt(limit)): the plugin runs long requests one after another (an HTTP client waiting to multiplex on one connection does this)")
            } else {
                detail += "; 4 slow streams started together all streaming within \(fmt(slowest))"
            }
        }
        record("concurrency", failed.isEmpty ? .pass : .fail, failed.isEmpty ? detail : failed.prefix(3).joined(separator: "; "), since: t0)
    }

    func checkErrors() async {
        let t0 = ContinuousClock.now
        guard !spec.errors.isEmpty else {
            record("errors", .skip, "the spec has no error scenarios", since: t0)
            return
        }
        var notes: [String] = []
        var failed: [String] = []
        for s in spec.errors {
            let b: RawBackend
            switch create(s) {
            case .failure(let e):
                failed.append("'\(s.name)': cannot create the backend: \(e.message)")
                continue
            case .success(let x): b = x
            }
            _ = await finish(b, .initialize, Array("{}".utf8))
            let (c, t) = await finish(b, s.operation == "stream" ? .stream : .complete, request(s))
            guard let t, t.type == DESCARTES_EVENT_ERROR, let e = c.error else {
                failed.append("'\(s.name)': expected an ERROR of kind \(s.expect.kind ?? "?"), got \(Run.describe(c, t))")
                continue
            }
            var wrong: [String] = []
            if let k = s.expect.kind, e.kind.rawValue != k { wrong.append("kind \(e.kind), expected \(k)") }
            if let st = s.expect.status, e.status != st { wrong.append("status \(e.status.map(String.init) ?? "none"), expected \(st)") }
            if let ra = s.expect.retryAfterMS, e.retryAfter?.milliseconds != ra {
                wrong.append("retry_after_ms \(e.retryAfter.map { String($0.milliseconds) } ?? "none"), expected \(ra)")
            }
            if wrong.isEmpty {
                notes.append("'\(s.name)' -> \(e.kind)\(e.status.map { " (\($0))" } ?? "")")
            } else {
                failed.append("'\(s.name)': \(wrong.joined(separator: ", ")) (message: \(Wire.excerpt(e.message, limit: 100)))")
            }
        }
        record("errors", failed.isEmpty ? .pass : .fail, (failed.isEmpty ? notes : failed).joined(separator: "; "), since: t0)
    }

    /// A backend for the slow scenario, initialized.
    func slowBackend() async -> Swift.Result<RawBackend, Why> {
        guard let s = spec.slow else { return .failure(Why("the spec has no 'slow' scenario")) }
        switch create(s) {
        case .failure(let e): return .failure(Why("cannot create the backend for 'slow': \(e.message)"))
        case .success(let b):
            _ = await finish(b, .initialize, Array("{}".utf8))
            return .success(b)
        }
    }

    func checkCancel() async {
        let t0 = ContinuousClock.now
        let b: RawBackend
        switch await slowBackend() {
        case .failure(let why):
            record("cancel", .skip, why.text, since: t0)
            return
        case .success(let x): b = x
        }
        var failed: [String] = []
        var notes: [String] = []
        // Mid-stream: after the first piece of the answer.
        let c = start(b, .stream, request(spec.slow!))
        if await c.waitFirstContent(answerLimit) == nil {
            failed.append("the slow scenario produced no text before \(c.terminal == nil ? "\(fmt(answerLimit)) passed" : "its end: \(Run.describe(c, c.terminal))")")
        }
        if c.terminal != nil && failed.isEmpty { failed.append("the slow scenario ended before it could be cancelled: \(Run.describe(c, c.terminal))") }
        let cancelledAt = ContinuousClock.now
        b.cancel(c)
        let t = await c.waitTerminal(tolerance + .seconds(10))
        b.release(c)
        if let t {
            let took = t.at - cancelledAt
            if took > tolerance { failed.append("mid-stream: the terminal event came \(fmt(took)) after cancel (limit \(fmt(tolerance)))") }
            if c.error?.kind != .cancelled && failed.isEmpty { failed.append("mid-stream: ended with \(Run.describe(c, t)), expected ERROR cancelled") }
            notes.append("mid-stream: ERROR cancelled \(fmt(took)) after cancel")
        } else {
            failed.append("mid-stream: no terminal event within \(fmt(tolerance + .seconds(10))) of cancel")
        }
        // At once, before anything arrived.
        let early = start(b, .stream, request(spec.slow!))
        let earlyAt = ContinuousClock.now
        b.cancel(early)
        let t2 = await early.waitTerminal(tolerance + .seconds(10))
        b.release(early)
        if let t2 {
            let took = t2.at - earlyAt
            if took > tolerance { failed.append("right after start: the terminal event came \(fmt(took)) after cancel (limit \(fmt(tolerance)))") }
            if early.error?.kind != .cancelled { failed.append("right after start: ended with \(Run.describe(early, t2)), expected ERROR cancelled") }
            notes.append("right after start: \(fmt(took))")
        } else {
            failed.append("right after start: no terminal event within \(fmt(tolerance + .seconds(10))) of cancel")
        }
        // cancel after the end and twice is harmless: the suite calls it
        // once more on each finished call (before release).
        record("cancel", failed.isEmpty ? .pass : .fail, (failed.isEmpty ? notes : failed).joined(separator: "; "), since: t0)
    }

    func checkDeadlines() async {
        let t0 = ContinuousClock.now
        var failed: [String] = []
        var notes: [String] = []
        var ran = false
        if case .success(let b) = await slowBackend() {
            ran = true
            let total: Duration = .milliseconds(1000)
            let c = start(b, .stream, request(spec.slow!, deadlines: Deadlines(total: total)))
            let t = await c.waitTerminal(total + tolerance + .seconds(10))
            b.release(c)
            if let t {
                let took = t.at - c.started
                if c.error?.kind != .timeout { failed.append("total \(fmt(total)): ended with \(Run.describe(c, t)), expected ERROR timeout") }
                if took > total + tolerance { failed.append("total \(fmt(total)): the plugin answered after \(fmt(took)) (limit \(fmt(total + tolerance)))") }
                if took < total - .milliseconds(100) && c.error?.kind == .timeout { failed.append("total \(fmt(total)): timed out early, after \(fmt(took))") }
                notes.append("total \(fmt(total)): timeout after \(fmt(took))")
            } else {
                failed.append("total \(fmt(total)): no terminal event within \(fmt(total + tolerance + .seconds(10)))")
            }
        }
        if let h = spec.hang {
            ran = true
            switch create(h) {
            case .failure(let e): failed.append("cannot create the backend for 'hang': \(e.message)")
            case .success(let b):
                // Against a provider that never answers, the call must end
                // by its total deadline; ending at the first-token deadline
                // is better still (the host enforces that one too).
                let first: Duration = .milliseconds(800)
                let total: Duration = .milliseconds(2000)
                let c = start(b, .complete, request(h, deadlines: Deadlines(firstToken: first, total: total)))
                let t = await c.waitTerminal(total + tolerance + .seconds(10))
                b.release(c)
                if let t {
                    let took = t.at - c.started
                    if c.error?.kind != .timeout { failed.append("a provider that never answers: ended with \(Run.describe(c, t)), expected ERROR timeout") }
                    if took > total + tolerance {
                        failed.append("a provider that never answers: the plugin answered after \(fmt(took)), past the total deadline of \(fmt(total)) (limit \(fmt(total + tolerance)))")
                    } else if took < total - .milliseconds(100) {
                        notes.append("a provider that never answers: timeout at the first-token deadline (\(fmt(first))), after \(fmt(took))")
                    } else {
                        notes.append("a provider that never answers: timeout at the total deadline (\(fmt(total))), after \(fmt(took)); the first-token deadline (\(fmt(first))) is left to the host")
                    }
                } else {
                    failed.append("a provider that never answers: no terminal event within \(fmt(total + tolerance + .seconds(10)))")
                }
            }
        }
        if !ran {
            record("deadlines", .skip, "the spec has neither a 'slow' nor a 'hang' scenario", since: t0)
            return
        }
        record("deadlines", failed.isEmpty ? .pass : .fail, (failed.isEmpty ? notes : failed).joined(separator: "; "), since: t0)
    }

    func checkShutdown() async {
        let t0 = ContinuousClock.now
        let b: RawBackend
        var scenario = spec.text
        var inFlight = true
        switch await slowBackend() {
        case .success(let x):
            b = x
            scenario = spec.slow!
        case .failure:
            inFlight = false
            guard case .success(let x) = create(spec.text) else {
                record("shutdown", .fail, "cannot create a backend", since: t0)
                return
            }
            b = x
            _ = await finish(b, .initialize, Array("{}".utf8))
        }
        let running = (0..<4).map { _ in start(b, .stream, request(scenario)) }
        if inFlight {
            let until = ContinuousClock.now + tolerance + .seconds(1)
            for c in running { _ = await c.waitFirstContent(max(.zero, until - .now)) }
        }
        let at = ContinuousClock.now
        let s = start(b, .shutdown, Array("{}".utf8))
        let limit = tolerance * 2
        var failed: [String] = []
        let st = await s.waitTerminal(limit + .seconds(10))
        for c in running { _ = await c.waitTerminal(.milliseconds(200)) }
        let ended = running.filter { $0.terminal != nil }
        if ended.count < running.count { failed.append("\(running.count - ended.count) of \(running.count) calls in flight got no terminal event") }
        if let st {
            if st.type != DESCARTES_EVENT_RESULT { failed.append("shutdown ended with \(Run.describe(s, st))") }
            if st.at - at > limit { failed.append("shutdown took \(fmt(st.at - at)) (limit \(fmt(limit)))") }
            if let late = ended.compactMap(\.terminal).first(where: { $0.at > st.at }) {
                failed.append("a call's terminal event came \(fmt(late.at - st.at)) after shutdown's RESULT; it must come first")
            }
        } else {
            failed.append("shutdown has no terminal event after \(fmt(limit + .seconds(10)))")
        }
        for c in running { b.release(c) }
        b.release(s)
        var destroyed = false
        if failed.isEmpty {
            backends.removeAll { $0 === b }
            destroyed = await b.destroy(within: .seconds(5))
            if !destroyed { failed.append("destroy did not return within 5 s") }
        }
        let kinds = ended.compactMap { $0.error?.kind.rawValue ?? ($0.terminal.map { _ in "result" }) }
        record(
            "shutdown", failed.isEmpty ? .pass : .fail,
            failed.isEmpty
                ? "\(inFlight ? "with \(running.count) streams in flight" : "after \(running.count) short streams (no 'slow' scenario)"): they ended (\(Set(kinds).sorted().joined(separator: ", "))) before shutdown's RESULT, \(fmt(st!.at - at)) after it started; destroy returned"
                : failed.joined(separator: "; "),
            since: t0)
    }

    /// Shuts down and destroys every backend still open.
    func cleanUp() async {
        for b in backends {
            let s = b.start(.shutdown, Array("{}".utf8), bound: spec.startLimit) { _ in }
            if await s.waitTerminal(.seconds(10)) != nil {
                b.release(s)
                _ = await b.destroy(within: .seconds(5))
            }
        }
        backends.removeAll()
    }

    func checkEvents() async {
        let t0 = ContinuousClock.now
        // Late events have a moment to show up.
        try? await Task.sleep(for: .milliseconds(300))
        let all = calls.withLock { $0 }
        var failed: [String] = []
        for c in all where !c.noHandle && !c.returnedNoHandle {
            let events = c.events
            if c.terminalCount == 0 { failed.append("\(c.op.name): no terminal event") }
            if c.terminalCount > 1 { failed.append("\(c.op.name): \(c.terminalCount) terminal events") }
            if c.afterTerminal > 0 { failed.append("\(c.op.name): \(c.afterTerminal) event\(c.afterTerminal == 1 ? "" : "s") after the terminal one") }
            var started: Set<Int> = []
            var ended: Set<Int> = []
            for (i, e) in events.enumerated() {
                switch e.type {
                case DESCARTES_EVENT_START:
                    if i != 0 { failed.append("\(c.op.name): START is not the first event") }
                case DESCARTES_EVENT_TOOL_CALL_START:
                    if !started.insert(e.index).inserted { failed.append("\(c.op.name): tool call \(e.index) started twice") }
                case DESCARTES_EVENT_TOOL_CALL_DELTA:
                    if !started.contains(e.index) || ended.contains(e.index) { failed.append("\(c.op.name): tool call \(e.index) delta outside its start and end") }
                case DESCARTES_EVENT_TOOL_CALL_END:
                    if !started.contains(e.index) || !ended.insert(e.index).inserted { failed.append("\(c.op.name): tool call \(e.index) ended without a start, or twice") }
                case DESCARTES_EVENT_USAGE:
                    if (try? Wire.decodeUsage(try JSONValue.parse(e.text))) == nil { failed.append("\(c.op.name): a USAGE event is not a Usage document") }
                case DESCARTES_EVENT_NOTICE:
                    if (try? JSONValue.parse(e.text))?["message"]?.stringValue == nil { failed.append("\(c.op.name): a NOTICE event has no message") }
                case DESCARTES_EVENT_ERROR:
                    if (try? JSONValue.parse(e.text))?["kind"]?.stringValue == nil { failed.append("\(c.op.name): an ERROR event is not an Error document") }
                default: break
                }
            }
        }
        let unique = Array(uniqued(failed).prefix(5))
        record(
            "events", failed.isEmpty ? .pass : .fail,
            failed.isEmpty ? "\(all.count) calls, each with exactly one terminal event and nothing after it; tool-call, usage and error documents well formed" : unique.joined(separator: "; "),
            since: t0)
    }

    func checkSecrets() {
        let t0 = ContinuousClock.now
        let values = secrets.withLock { $0 }
        guard !values.isEmpty else {
            record("secrets", .skip, "no secret config value to look for", since: t0)
            return
        }
        var leaks: [String] = []
        for line in logs.withLock({ $0 }) where values.contains(where: { line.contains($0) }) { leaks.append("a log record") }
        for c in calls.withLock({ $0 }) {
            for e in c.events where values.contains(where: { e.text.contains($0) }) { leaks.append("a \(c.op.name) event of type \(e.type)") }
        }
        record(
            "secrets", leaks.isEmpty ? .pass : .fail,
            leaks.isEmpty ? "no secret config value in \(logs.withLock { $0.count }) log records or any event" : "a secret config value appears in \(Array(uniqued(leaks)).joined(separator: ", "))",
            since: t0)
    }
}

/// A duration for people: "<1 ms", "12 ms", "1.25 s".
func fmt(_ d: Duration) -> String { d.shortText }

/// A reason, as an error value.
struct Why: Error {
    var text: String
    init(_ text: String) { self.text = text }
}

/// Strings in first-seen order without repeats.
func uniqued(_ items: [String]) -> [String] {
    var seen: Set<String> = []
    return items.filter { seen.insert($0).inserted }
}
