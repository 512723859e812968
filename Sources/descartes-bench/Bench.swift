// descartes-bench: times requests through one provider (BenchCommand.swift).
// Its own executable, built by `make bench` and not installed: the shipped
// `descartes` carries no benchmark code. Its options are declared with every
// other command's, in DescartesCommandLine/CommandTable.swift.
import Descartes
import DescartesCommandLine
import Glibc

@main
struct Bench {
    static func main() {
        // Keys are loaded from here on: no core file or crash report may hold them.
        SecretsAtRest.protect(crashReport: false)
        let command = Command.named(.bench)
        let (globals, rest) = start(command)
        if rest.first == Option.version.name {
            Out.line("descartes-bench \(descartesVersion) (plugin ABI \(descartesABIVersion))")
            exit(0)
        }
        if Arguments.wantsHelp(rest) {
            Out.line(rest.contains(Option.json.name) ? Command.json(program: command.program).prettyText() : command.help)
            exit(0)
        }
        let args: Arguments
        do { args = try Arguments(rest, command: command) } catch { usageFailure(error) }
        runAndExit { await BenchCommand.run(args, globals: globals) }
    }
}
