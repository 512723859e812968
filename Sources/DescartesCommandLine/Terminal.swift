// What `descartes` and `descartes-bench` share besides the command table:
// output, exit statuses, the usage-error contract, the global options, and
// running a command's task from a synchronous main.
import Descartes
import DescartesSupport
import Glibc

/// Writes to stdout/stderr with explicit flushing (streamed tokens must
/// appear as they arrive) and masks secrets on the way out.
package enum Out {
    /// The program's one log sink: every factory the CLI builds logs to it
    /// (stderr; `--verbose` lowers it to debug) and registers the secrets
    /// it resolves in its redactor, which masks everything printed.
    package static let logSink = LogSink()
    /// The program's plugin loader, whose libraries log to `logSink` too.
    package static let loader = PluginLoader(logSink: logSink)

    package static func write(_ s: String, to fd: Int32 = 1) { raw(logSink.redactor.redact(s), to: fd) }

    /// Writes text already masked.
    private static func raw(_ s: String, to fd: Int32 = 1) {
        var text = s
        text.withUTF8 { buf in
            var off = 0
            while off < buf.count {
                let n = Glibc.write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    return
                }
                off += n
            }
        }
    }
    package static func line(_ s: String = "") { write(s + "\n") }
    /// A line of documentation (a manifest's own text): registered secrets
    /// are masked, but not text shaped like a credential, which there is an
    /// example ("Authorization: Bearer $KEY"), not a value.
    package static func documentation(_ s: String = "") { raw(logSink.redactor.redactRegistered(s) + "\n") }
    package static func err(_ s: String) { write(s + "\n", to: 2) }
    /// A secret the user asked to see, unmasked, on stdout: the gateway key
    /// `descartes keys create` issues, printed this once.
    package static func issuedSecret(_ s: String) { raw(s + "\n") }

    package static let colour: Bool = {
        isatty(1) != 0 && Environment.get("NO_COLOR").map(\.isEmpty) ?? true && Environment.get("TERM") != "dumb"
    }()

    package static func bold(_ s: String) -> String { colour ? "\u{1B}[1m\(s)\u{1B}[0m" : s }
    package static func dim(_ s: String) -> String { colour ? "\u{1B}[2m\(s)\u{1B}[0m" : s }
    package static func red(_ s: String) -> String { colour ? "\u{1B}[31m\(s)\u{1B}[0m" : s }
    package static func green(_ s: String) -> String { colour ? "\u{1B}[32m\(s)\u{1B}[0m" : s }

    /// Left-aligned columns, two spaces apart.
    package static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func fmt(_ r: [String]) -> String {
            var out = ""
            for (i, c) in r.enumerated() {
                if i == r.count - 1 { out += c } else { out += c + String(repeating: " ", count: widths[i] - c.count + 2) }
            }
            return out
        }
        return ([bold(fmt(header))] + rows.map(fmt)).joined(separator: "\n")
    }
}

/// Exit statuses, from sysexits(3).
/// Every exit status the CLI uses; README.md ("Exit statuses") lists each
/// one, and ExitCodeTests checks the table against this enum and walks a
/// path to every status.
package enum ExitCode: Int32, Sendable, CaseIterable {
    case ok = 0
    /// A check found failures: health (a provider unhealthy), plugins
    /// list/verify, conformance, batch (some requests failed), bench --expect.
    case failure = 1
    case usage = 64
    case dataError = 65
    case noInput = 66
    case unavailable = 69
    case software = 70
    case cantCreate = 73
    case tempFail = 75
    /// The provider's answer broke the protocol (a malformed stream or document).
    case protocolError = 76
    case noPermission = 77
    case config = 78
    case interrupted = 130

    /// The status for a provider error of this kind.
    package static func `for`(_ e: ProviderError) -> ExitCode {
        switch e.kind {
        case .config: return .config
        case .authentication: return .noPermission
        case .rateLimited, .timeout: return .tempFail
        case .providerUnavailable, .initialization, .http, .streamClosed, .process: return .unavailable
        case .api, .unsupportedFeature: return .dataError
        case .invalidResponse, .json: return .protocolError
        case .cancelled: return .interrupted
        default: return .software
        }
    }
}

/// The swift-argument-parser contract: `Error: ...`, the command's usage,
/// where its help is; exit 64.
package func usageFailure(_ e: UsageError) -> Never {
    Out.err("Error: \(e.message)")
    Out.err("Usage: \(e.command.usage)")
    Out.err("See '\(e.command.path) --help'.")
    exit(ExitCode.usage.rawValue)
}

/// A provider error as the CLI reports it: `Error: ...` on stderr (and with
/// `json`, `{"error": ...}` on stdout), exit status by its kind.
package func failure(_ e: ProviderError, json: Bool = false) -> Never {
    if json {
        Out.line(JSONValue.object(["error": Wire.json(e)]).jsonText)
    }
    Out.err("Error: \(e)")
    exit(ExitCode.for(e).rawValue)
}

/// What the global options (`--verbose`, `--config FILE`) set.
package struct Globals: Sendable {
    package var verbose = false
    /// `--config FILE`, made absolute: read this providers.yaml instead of searching.
    package var configFile: String?
    /// The command's `--timeout` in seconds, when it has one: also the
    /// host's deadline on loading, creating, initializing and shutting down
    /// plugins (`ProviderFactory.operationDeadline`).
    package var timeout: Double?

    package init(verbose: Bool = false, configFile: String? = nil) {
        self.verbose = verbose
        self.configFile = configFile
    }

    /// `timeout` as the factory's operation deadline.
    package var operationDeadline: Duration? { timeout.map { .milliseconds(Int($0 * 1000)) } }

    /// Takes the global options out of `args` (anywhere before `--`) and
    /// returns them with the rest. Mistakes are reported against `command`
    /// (the program).
    package static func extract(_ args: [String], for command: Command) throws(UsageError) -> (Globals, [String]) {
        var g = Globals()
        var rest: [String] = []
        var i = 0
        while i < args.count {
            let a = args[i]
            i += 1
            if a == "--" {
                rest += args[(i - 1)...]
                break
            }
            if Option.verbose.spelled(a) {
                g.verbose = true
            } else if a == Option.config.name || a.hasPrefix(Option.config.name + "=") {
                var value: String
                if a == Option.config.name {
                    guard i < args.count else { throw UsageError("option '\(a)' needs a value (FILE)", command: command) }
                    value = args[i]
                    i += 1
                } else {
                    value = String(a.dropFirst(Option.config.name.count + 1))
                }
                if g.configFile != nil { throw UsageError("option '\(Option.config.name)' given twice", command: command) }
                if value.isEmpty { throw UsageError("option '\(Option.config.name)' needs a value (FILE)", command: command) }
                if !value.hasPrefix("/") { value = FileSystem.join(FileSystem.currentDirectory(), value) }
                g.configFile = value
            } else {
                rest.append(a)
            }
        }
        return (g, rest)
    }
}

/// The start of a program whose command is `command`: takes the global
/// options out of the command line (a mistake there is a usage error) and
/// applies `--verbose`; returns them with the rest of the line.
package func start(_ command: Command) -> (Globals, [String]) {
    let globals: Globals
    let rest: [String]
    do { (globals, rest) = try Globals.extract(Array(CommandLine.arguments.dropFirst()), for: command) } catch { usageFailure(error) }
    if globals.verbose { Out.logSink.level = .debug }
    return (globals, rest)
}

/// Runs a program's command as a task on the cooperative pool while the main
/// thread waits for its exit status, then exits with it.
///
/// The entry point is synchronous: an `async` main would park the main thread
/// in `dispatch_main()`, which nothing here needs (no main actor, no main
/// queue) and which valgrind 3.19 cannot follow (it crashes in libdispatch's
/// `sigsuspend`), so the programs could not be profiled with callgrind
/// (docs/benchmarks.md).
package func runAndExit(_ body: @escaping @Sendable () async -> ExitCode) -> Never {
    let done = ExitStatusBox()
    Task.detached {
        done.post(await body())
    }
    exit(done.wait().rawValue)
}

/// The command's exit status, handed from its task to the waiting main thread.
final class ExitStatusBox: @unchecked Sendable {
    private var semaphore = sem_t()
    private var status = ExitCode.software

    init() { sem_init(&semaphore, 0, 0) }

    func post(_ s: ExitCode) {
        status = s
        sem_post(&semaphore)
    }

    func wait() -> ExitCode {
        while sem_wait(&semaphore) != 0 {}  // EINTR
        return status
    }
}
