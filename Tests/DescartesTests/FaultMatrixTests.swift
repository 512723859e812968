import Descartes
import Glibc
import Testing
import DescartesSupport

/// The fault matrix: every class of fault an HTTP provider or a headless
/// child can produce, run through the real plugins (`openai`, `anthropic`,
/// `headless-cli`, `claude-code-cli`) loaded through the C ABI, against a
/// real HTTP server on 127.0.0.1 or a real misbehaving child process.
///
/// Every case asserts the same three things:
/// 1. the outcome: the error kind (and, for a timeout, which deadline fired),
///    or a clean answer where the fault is survivable;
/// 2. the call returned within its bound: the deadline that must end it
///    plus `slack`, else the request's total deadline (nothing hangs);
/// 3. no secret anywhere: not in the error (message, details, type), the
///    events (text, notices), the response's metadata, the host's log
///    records (`LogSink` tap), the CLI's stdout and stderr when the case is
///    also run through `descartes complete`, nor in any request that reached
///    another host after a redirect. The servers and children echo the
///    secret back wherever they can, so this assertion can fail.
///
/// `docs/fault-matrix.md` is this table; `theDocumentIsTheMatrix` keeps it in
/// sync (`DESCARTES_UPDATE_DOCS=1` rewrites it).
@Suite(.serialized, .timeLimit(.minutes(10))) struct FaultMatrixTests {
    @Test(arguments: FaultMatrix.cases)
    func fault(_ c: FaultCase) async throws {
        let log = LogCapture.shared
        let logStart = log.lines.withLock { $0.count }
        let o = try await c.run()
        let elapsed = o.elapsed

        // 1. The outcome.
        switch c.outcome {
        case .error(let kind, let deadline):
            let e = try #require(o.error, "\(c): expected \(kind), got an answer: \(o)")
            #expect(e.kind == kind, "\(c): \(e)")
            if let deadline { #expect(e.deadline == deadline, "\(c): \(e)") }
        case .answer:
            #expect(o.error == nil, "\(c): \(o)")
            #expect(o.response != nil, "\(c): \(o)")
        }
        // 2. Within its bound.
        let bound = c.bound * Sanitizer.timeScale
        expectWithin(elapsed, bound, "\(c): took \(elapsed), bound \(bound)")
        if let cli = o.cli {
            if case .error(let kind, _) = c.outcome {
                #expect(cli.status != 0, "\(c): the CLI succeeded: \(cli)")
                #expect(cli.stderr.contains("\(kind)"), "\(c): the CLI did not name \(kind): \(cli)")
            } else {
                #expect(cli.status == 0, "\(c): \(cli)")
            }
            // The CLI sets only a total deadline (--timeout), the longest of any case's.
            let cliBound = (max(c.bound, FaultMatrix.httpDeadlines.total!, FaultMatrix.headlessTotal) + FaultMatrix.slack) * Sanitizer.timeScale
            expectWithin(cli.duration, cliBound, "\(c): the CLI took \(cli.duration)")
        }
        // 3. No secret anywhere.
        let logs = log.lines.withLock { Array($0[logStart...]) }
        var places: [(String, String)] = [("error", o.error.map { "\($0) \($0.providerType ?? "") \($0.details)" } ?? "")]
        for e in o.events { places.append(("event", "\(e)")) }
        if let r = o.response { places.append(("response metadata", JSONValue.object(r.metadata).jsonText)) }
        for l in logs { places.append(("log", l)) }
        if let cli = o.cli { places += [("CLI stdout", cli.stdout), ("CLI stderr", cli.stderr)] }
        for r in o.elsewhere { places.append(("a request to another host", "\(r.method) \(r.path) \(r.headers) \(r.body)")) }
        for (where_, text) in places {
            #expect(!text.contains(c.secret), "\(c): the secret leaked into the \(where_): \(text.prefix(300))")
        }
        #expect(o.elsewhere.isEmpty, "\(c): the redirect was followed: \(o.elsewhere.map(\.path))")
        if let leftover = o.leftoverProcesses { #expect(leftover.isEmpty, "\(c): processes left behind: \(leftover)") }
    }

    @Test func theDocumentIsTheMatrix() throws {
        let path = FileSystem.join(TestEnv.root, "docs/fault-matrix.md")
        let generated = FaultMatrix.document()
        if Environment.get("DESCARTES_UPDATE_DOCS") == "1" {
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            var bytes = Array(generated.utf8)
            _ = write(fd, &bytes, bytes.count)
            close(fd)
        }
        let text = try FileSystem.readText(path, limit: 1 << 20)
        #expect(text == generated, "docs/fault-matrix.md is out of date: run DESCARTES_UPDATE_DOCS=1 swift test --filter theDocumentIsTheMatrix")
    }
}

// MARK: - The matrix

enum FaultOutcome: Sendable, CustomStringConvertible {
    case error(ProviderError.Kind, deadline: String? = nil)
    case answer

    var description: String {
        switch self {
        case .error(let k, let d): return d.map { "`\(k)` (\($0))" } ?? "`\(k)`"
        case .answer: return "an answer"
        }
    }
}

/// What one case saw.
struct FaultObservation: CustomStringConvertible {
    var events: [StreamEvent] = []
    var response: ModelResponse?
    var error: ProviderError?
    /// The same fault through `descartes complete`, when run.
    var cli: ProcResult?
    /// Requests that reached the other host of a redirect.
    var elsewhere: [ScriptedServer.Request] = []
    /// Children of a headless case still alive after the call.
    var leftoverProcesses: [Int32]?
    /// How long the call took (through the library, not the CLI).
    var elapsed: Duration = .zero
    var description: String { "error=\(String(describing: error)) response=\(response.map { "\($0.finishReason)" } ?? "-") events=\(events.count)" }
}

struct FaultCase: Sendable, CustomTestStringConvertible, CustomStringConvertible {
    enum Driver: Sendable {
        case http(HTTPDialect, HTTPFault, complete: Bool)
        case headless(HeadlessFlavor, String)
        case realClaude(RealClaudeFault)
    }
    let provider: String
    let fault: String
    /// What the server or child does.
    let how: String
    let outcome: FaultOutcome
    /// The call must return within this.
    let bound: Duration
    let secret: String
    let driver: Driver

    var testDescription: String { "\(provider): \(fault)" }
    var description: String { testDescription }

    func run() async throws -> FaultObservation {
        switch driver {
        case .http(let d, let f, let complete): return try await HTTPFaults.run(d, f, complete: complete, case: self)
        case .headless(let flavor, let fault): return try await HeadlessFaults.run(flavor, fault, case: self)
        case .realClaude(let f): return try await HeadlessFaults.runRealClaude(f, case: self)
        }
    }
}

enum FaultMatrix {
    /// Room a loaded 2-core CI machine needs beyond a deadline; a call that
    /// ignored its deadline would run for the server's or child's whole
    /// stall (minutes), far beyond it.
    static let slack: Duration = .seconds(2)

    /// Deadlines of every HTTP request unless a case says otherwise.
    static let httpDeadlines = Deadlines(connect: .seconds(3), firstToken: .seconds(5), idle: .seconds(5), total: .seconds(8))
    /// The total deadline of a headless request.
    static let headlessTotal: Duration = .seconds(8)

    static let cases: [FaultCase] = httpCases(.openai) + httpCases(.anthropic) + httpCases(.ollama) + headlessCases(.jsonLines) + headlessCases(.claudeStandIn) + realClaudeCases

    static func httpCases(_ d: HTTPDialect) -> [FaultCase] {
        var out: [FaultCase] = []
        let statuses: [(Int, ProviderError.Kind)] = [
            (400, .api), (401, .authentication), (403, .authentication), (404, .api), (408, .providerUnavailable), (409, .api),
            (413, .api), (422, .api), (429, .rateLimited), (500, .providerUnavailable), (502, .providerUnavailable),
            (503, .providerUnavailable), (504, .providerUnavailable), (529, .providerUnavailable),
        ]
        for (s, k) in statuses {
            for complete in [false, true] {
                // Ollama answers 503 while it loads a model: asked again
                // until the first-token deadline.
                let retried = d.provider == "ollama" && s == 503
                out.append(
                    FaultCase(
                        provider: d.provider, fault: "HTTP \(s)\(complete ? " (complete)" : "")",
                        how: retried ? "503 quoting the key, every time (asked again until the deadline)" : "an error body that quotes the key",
                        outcome: retried ? .error(.timeout, deadline: "first_token") : .error(k),
                        bound: retried ? httpDeadlines.firstToken! + slack : httpDeadlines.total!, secret: d.key,
                        driver: .http(d, .status(s), complete: complete)))
            }
        }
        func add(_ f: HTTPFault, _ name: String, _ how: String, _ outcome: FaultOutcome, bound: Duration? = nil) {
            out.append(
                FaultCase(
                    provider: d.provider, fault: name, how: how, outcome: outcome, bound: bound ?? httpDeadlines.total!, secret: d.key,
                    driver: .http(d, f, complete: false)))
        }
        add(.redirect, "redirect to another host", "302 to http://localhost:PORT/elsewhere", .error(.http))
        add(.refused, "connection refused", "nothing listens on the port", .error(.providerUnavailable))
        add(.resetBeforeHeaders, "reset before headers", "reads the request, sends RST", .error(.providerUnavailable))
        add(.closeBeforeHeaders, "closed before headers", "reads the request, closes", .error(.providerUnavailable))
        add(.resetMidStream, "reset mid-stream", "headers and 3 events, then RST", .error(.streamClosed))
        add(.closeMidEvent, "truncated mid-event", "closes inside an event (chunked framing unfinished)", .error(.streamClosed))
        add(.noTerminal, "truncated stream", "a clean end without the terminal event", .error(.streamClosed))
        add(.malformedJSON, "malformed JSON in an event", "an event's data is cut JSON quoting the key", .error(.invalidResponse))
        add(.invalidUTF8, "invalid UTF-8 in an event", "bytes FF FE inside a text delta", .answer)
        add(.endlessLine, "an endless line", "a 20 MiB line without a newline", .error(.invalidResponse))
        if d.provider == "ollama" {
            add(.oversized, "a body over the size limit (complete)", "a 65 MiB answer (whole answers are read up to 64 MiB)", .error(.invalidResponse))
        } else {
            add(.oversized, "a body over the size limit", "2 MiB of events, max_response_mb: 1", .error(.invalidResponse))
        }
        // Ollama's stream is lines of JSON: its error line names no kind
        // (the model's own failure), and it does not look at the content
        // type: HTML without a newline is a stream cut inside a line.
        let ollama = d.provider == "ollama"
        add(.errorEvent, "an error event in a 200 stream", "an error event quoting the key after some text", .error(ollama ? .api : .providerUnavailable))
        add(.html, "HTML instead of an event stream", "200 text/html quoting the key", .error(ollama ? .streamClosed : .invalidResponse))
        add(
            .hang, "accepts and never answers", "reads the request, never answers", .error(.timeout, deadline: "first_token"),
            bound: .milliseconds(500) + slack)
        add(
            .trickleIdle, "a byte a second", "one event, then a byte a second (idle deadline 500 ms)", .error(.timeout, deadline: "idle"),
            bound: .milliseconds(500) + slack)
        add(
            .tricklePastTotal, "a byte every 100 ms", "bytes keep coming, never an event (total deadline 1 s)",
            .error(.timeout, deadline: "total"), bound: .seconds(1) + slack)
        return out
    }

    static func headlessCases(_ f: HeadlessFlavor) -> [FaultCase] {
        let total = headlessTotal
        var out: [FaultCase] = []
        func add(_ fault: String, _ name: String, _ how: String, _ outcome: FaultOutcome, bound: Duration? = nil) {
            out.append(
                FaultCase(
                    provider: f.provider, fault: name, how: how, outcome: outcome, bound: bound ?? total, secret: f.secret,
                    driver: .headless(f, fault)))
        }
        add("exit", "exit status 3", "stderr quotes the key, exit 3", .error(.process))
        add("exit-silent", "exit status 2, no output", "exit 2", .error(.process))
        add("segv", "SIGSEGV", "some output, then kill -SEGV itself", .error(.process))
        add("abort", "SIGABRT", "some output, then kill -ABRT itself", .error(.process))
        add("kill", "SIGKILL", "some output, then kill -KILL itself", .error(.process))
        add("term", "SIGTERM", "some output, then kill -TERM itself", .error(.process))
        add("garbage", "garbage on stdout", "lines that are not JSON, quoting the key; exit 0", f.garbageOutcome)
        add("truncated", "truncated output", "a start and some text, no terminal event; exit 0", .error(.streamClosed))
        add("badutf8", "invalid UTF-8", "FF FE inside a JSON string and a non-UTF-8 line; then a proper end", .answer)
        add("endless", "an endless line", "an unending line without a newline (max_output_mb: 8)", .error(.process))
        add("flood", "a flood of output", "`yes KEY` forever (max_output_mb: 8)", .error(.process))
        add("hang", "hangs", "some output, then sleeps (total deadline 1.5 s)", .error(.timeout, deadline: "total"), bound: .milliseconds(1500) + slack)
        add("trickle", "a byte a second", "some output, then a byte a second (idle deadline 500 ms)", .error(.timeout, deadline: "idle"), bound: .milliseconds(500) + slack)
        add("missing", "the program is missing", "command names no file", .error(.config))
        return out
    }

    static let realClaudeCases: [FaultCase] = {
        let p = "claude-code-cli (real claude)"
        return [
            FaultCase(
                provider: p, fault: "API 401", how: "the API server answers 401 quoting the key", outcome: .error(.authentication),
                bound: .seconds(60), secret: ClaudeHarness.apiKey, driver: .realClaude(.status401)),
            FaultCase(
                provider: p, fault: "API 529", how: "the API server answers 529 overloaded_error", outcome: .error(.providerUnavailable),
                bound: .seconds(60), secret: ClaudeHarness.apiKey, driver: .realClaude(.status529)),
            FaultCase(
                provider: p, fault: "API never answers", how: "the API server hangs (total deadline 6 s)",
                outcome: .error(.timeout, deadline: "total"), bound: .seconds(6) + slack, secret: ClaudeHarness.apiKey,
                driver: .realClaude(.hang)),
        ]
    }()

    /// docs/fault-matrix.md, from the cases.
    static func document() -> String {
        var s = """
            # Fault matrix

            What every plugin does under each fault, as `Tests/DescartesTests/FaultMatrixTests.swift`
            runs it: the real plugins (`libdescartes-openai.so`, `libdescartes-anthropic.so`,
            `libdescartes-ollama.so`, `libdescartes-headless-cli.so`, `libdescartes-claude-code.so`)
            loaded through the C ABI,
            against a real HTTP server on 127.0.0.1 (`Tests/Servers/scripted_server.py`) or a real
            misbehaving child (`Tests/Fixtures/faults/child.sh`, and the real `claude` binary).

            Every case asserts the same three things:

            1. **the outcome**: the error kind (for a timeout, which deadline fired), or a clean
               answer where the fault is survivable (invalid UTF-8 becomes U+FFFD);
            2. **the bound**: the call returned within it (the deadline that must end it plus
               \(slack.components.seconds) s for a loaded CI machine, else the request's total deadline:
               \(httpDeadlines.total!.components.seconds) s for HTTP, \(headlessTotal.components.seconds) s for headless);
            3. **no secret anywhere**: the server or child echoes the API key back wherever it can
               (error bodies, events, stderr, garbage lines), and the key appears in none of: the
               error (message, details, provider type), the events (text, notices), the response's
               metadata, the host's log records (`LogSink` tap), `descartes complete`'s stdout and
               stderr (every case that is not a timeout also runs through the CLI, which must exit
               non-zero naming the kind), and the requests that reached the other host of a redirect
               (there must be none: redirects are never followed). Headless cases also check that no
               process of the child's group is left.

            Run it: `swift test --filter FaultMatrixTests` (part of `make test` and CI). This file is
            generated from the suite (`DESCARTES_UPDATE_DOCS=1 swift test --filter theDocumentIsTheMatrix`)
            and a test fails when they differ.

            | # | provider | fault | what the server or child does | outcome | bound |
            | --- | --- | --- | --- | --- | --- |

            """
        for (i, c) in cases.enumerated() {
            let ms = Int(c.bound.components.seconds * 1000 + c.bound.components.attoseconds / 1_000_000_000_000_000)
            let bound = ms % 1000 == 0 ? "\(ms / 1000) s" : "\(Double(ms) / 1000) s"
            s += "| \(i + 1) | \(c.provider) | \(c.fault) | \(c.how) | \(c.outcome) | \(bound) |\n"
        }
        s += """

            \(cases.count) cases. Timeouts are asserted with the deadline that fired; HTTP statuses run
            both streamed and with `complete`. Ollama's stream is NDJSON, so its \"events\" are lines.

            """
        s += HostFaults.document()
        return s
    }
}
