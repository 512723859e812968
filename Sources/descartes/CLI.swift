// descartes: the command-line interface to the Descartes plugin host.
//
// Output contract: results on stdout (`--json` for machines), diagnostics on
// stderr; `Error: ...` then usage then "See 'descartes --help'" with exit 64
// for usage mistakes; other failures exit with the sysexits(3) status of the
// error's kind (see ExitCode). Every command and option is declared once, in
// DescartesCommandLine/CommandTable.swift.
import Descartes
import DescartesCommandLine
import Glibc

@main
struct Main {
    static func main() {
        // Keys are loaded from here on: no core file or crash report may hold them.
        SecretsAtRest.protect(crashReport: false)
        let root = Command.named(.descartes)
        let (globals, args) = start(root)

        guard let first = args.first else {
            Out.err(Commands.topHelp)
            exit(ExitCode.usage.rawValue)
        }
        switch first {
        case Option.version.name, "version":
            Out.line("descartes \(descartesVersion) (plugin ABI \(descartesABIVersion))")
            exit(0)
        case Option.helpFlag.name, Option.helpFlag.short, "help":
            // `descartes help plugins list`, `descartes --help --json`.
            let words = args.dropFirst().filter { $0 != Option.json.name }
            let (command, _) = words.isEmpty ? (root, []) : Commands.resolve(Array(words) + [Option.helpFlag.name])
            Commands.printHelp(command, json: args.contains(Option.json.name))
            exit(0)
        default:
            runAndExit { await Commands.run(args, globals: globals) }
        }
    }
}
