// descartes: the command-line interface to the Descartes plugin host.
//
// Output contract: results on stdout (`--json` for machines), diagnostics on
// stderr; `Error: ...` then usage then "See 'descartes --help'" with exit 64
// for usage mistakes; other failures exit with the sysexits(3) status of the
// error's kind (see ExitCode).
import Descartes
import Glibc
import DescartesSupport

let topHelp = """
    descartes \(descartesVersion): one interface to every kind of LLM backend, loaded as plugins.

    Usage: descartes [--verbose] [--config FILE] <command> [options]

    Commands:
      plugins list [--json]             List installed plugins (reads manifests only; loads nothing)
      plugins info NAME [--json]        Show one plugin's manifest: models, prices, config keys
      plugins verify [NAME...] [--json] Load, negotiate and create each plugin with its defaults
      plugins verify --conformance NAME Run a plugin through the conformance suite
      plugins enable|disable NAME       Edit the plugin policy (user file, or --system)
      complete -p PROVIDER PROMPT       Run one completion (--stream to print text as it arrives)
      models -p PROVIDER                List the models a provider offers now
      health [-p PROVIDER]              Check with a real call that providers can serve requests
      tokens -p PROVIDER TEXT           Count (or estimate) the input tokens of a text
      batch -p PROVIDER FILE            Run one request per line of FILE (JSON lines), results in order
      config show [NAME] [--json]       The merged providers.yaml, where each value came from, secrets masked
      config check                      Report every problem in the configuration files
      log [-n N] [--json]               The last audit log entries and totals per provider
      bench -p PROVIDER [-n N] [-c K]   Time N requests through a provider (make bench, docs/benchmarks.md)

    Global options:
      -v, --verbose   Narrate plugin discovery and loading on stderr (accepted anywhere)
      --config FILE   Read this providers.yaml instead of searching the project, user and system files
      -h, --help      Show help (also after any command)
      --version       Print the version

    Exit status: 0 ok, 64 usage, 65 bad request data, 69 provider unavailable,
    70 internal error, 75 rate limited or timed out, 77 authentication, 78 configuration.

    Plugins are searched in $DESCARTES_PLUGIN_PATH, ~/.local/share/descartes/plugins,
    <prefix>/lib/descartes/plugins (next to this executable), then the system directories;
    never the current directory; /etc/descartes/plugins.yaml can enable, disable and require
    them. See 'descartes plugins list --verbose'.

    Provider instances and middleware settings come from .descartes/providers.yaml (project),
    ~/.config/descartes/providers.yaml (user) and /etc/descartes/providers.yaml (system), the
    earlier overriding the later; keys also from the environment and .env. See 'descartes config show'.
    """

/// Global state from the command line.
struct Globals {
    var verbose = false
    /// `--config FILE`: read this providers.yaml instead of searching.
    var configFile: String?
}

func usageFailure(_ e: UsageError) -> Never {
    Out.err("Error: \(e.message)")
    Out.err("Usage: \(Commands.usage(for: e.command))")
    Out.err("See 'descartes \(e.command.isEmpty ? "" : e.command + " ")--help'.")
    exit(ExitCode.usage.rawValue)
}

func failure(_ e: ProviderError, json: Bool = false) -> Never {
    if json {
        Out.line(JSONValue.object(["error": Wire.json(e)]).jsonText)
    }
    Out.err("Error: \(e)")
    exit(ExitCode.for(e).rawValue)
}

/// The entry point is synchronous: the command runs as a task on the
/// cooperative pool while the main thread waits for its exit status. An
/// `async` main would park the main thread in `dispatch_main()`, which
/// nothing here needs (no main actor, no main queue) and which valgrind
/// 3.19 cannot follow (it crashes in libdispatch's `sigsuspend`), so the
/// CLI could not be profiled with callgrind (docs/benchmarks.md).
@main
struct Main {
    static func main() {
        var args = Array(CommandLine.arguments.dropFirst())
        var globals = Globals()
        // --verbose and --config FILE are accepted anywhere before `--`.
        var rest: [String] = []
        var i = 0
        while i < args.count {
            let a = args[i]
            i += 1
            if a == "--" {
                rest += args[(i - 1)...]
                break
            }
            if a == "--verbose" || a == "-v" {
                globals.verbose = true
            } else if a == "--config" || a.hasPrefix("--config=") {
                var value: String
                if a == "--config" {
                    guard i < args.count else { usageFailure(UsageError("option '--config' needs a FILE", command: "")) }
                    value = args[i]
                    i += 1
                } else {
                    value = String(a.dropFirst("--config=".count))
                }
                if globals.configFile != nil { usageFailure(UsageError("option '--config' given twice", command: "")) }
                if value.isEmpty { usageFailure(UsageError("option '--config' needs a FILE", command: "")) }
                if !value.hasPrefix("/") { value = FileSystem.join(FileSystem.currentDirectory(), value) }
                globals.configFile = value
            } else {
                rest.append(a)
            }
        }
        args = rest
        if globals.verbose { LogSink.shared.level = .debug }

        guard let first = args.first else {
            Out.err(topHelp)
            exit(ExitCode.usage.rawValue)
        }
        switch first {
        case "--version", "version":
            Out.line("descartes \(descartesVersion) (plugin ABI \(descartesABIVersion))")
            exit(0)
        case "-h", "--help", "help":
            if args.count > 1 {
                Out.line(Commands.help(for: args.dropFirst().joined(separator: " ")))
            } else {
                Out.line(topHelp)
            }
            exit(0)
        default:
            break
        }
        let done = ExitStatusBox()
        let command = args
        let g = globals
        Task.detached {
            let status = await Commands.run(command, globals: g)
            done.post(status)
        }
        exit(done.wait().rawValue)
    }
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
