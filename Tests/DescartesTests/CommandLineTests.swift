import Descartes
import DescartesSupport
import Testing

/// The command line is one table (Sources/DescartesCommandLine/CommandTable.swift):
/// every command's `--help` lists every option its parser takes, the parser
/// takes every option the help lists, and a mistake is named with the nearest
/// right spelling, in the swift-argument-parser contract (`Error: ...`, the
/// usage, "See '... --help'.", exit 64).
@Suite struct CommandLineTests {
    /// Each program and how to run it.
    static let programs: [(name: String, path: String)] = [("descartes", TestEnv.descartes), ("descartes-bench", bench)]
    static let bench = FileSystem.join(TestEnv.binDir, "descartes-bench")

    func run(_ program: String, _ args: [String]) async -> ProcResult {
        let empty = TempDir()
        return await Proc.run([program] + args, env: ["DESCARTES_PLUGIN_PATH": empty.path, "HOME": "/nonexistent"], timeout: .seconds(60))
    }

    @Test(arguments: programs.map(\.path))
    func everyCommandsHelpListsEveryOptionItTakesAndTakesEveryOptionItLists(_ program: String) async throws {
        let dump = await run(program, ["--help", "--json"])
        #expect(dump.status == 0, "\(dump)")
        let commands = try #require(try JSONValue.parse(dump.stdout)["commands"]?.arrayValue)
        #expect(commands.count >= 1)
        var probed = 0
        for c in commands {
            let path = try #require(c["command"]?.stringValue)
            let words = path.split(separator: " ").dropFirst().map(String.init)
            let help = await run(program, words + ["--help"])
            #expect(help.status == 0, "\(path) --help: \(help)")
            // (`descartes --help` starts with its name and version.)
            let start = help.stdout.hasPrefix("Usage: ")
                ? help.stdout.startIndex : help.stdout.firstRange(of: "\nUsage: ").map { help.stdout.index(after: $0.lowerBound) }
            let text = start.map { String(help.stdout[$0...]) } ?? ""
            #expect(text.hasPrefix("Usage: \(path) "), "\(path): \(help.stdout)")
            let usage = text.firstRange(of: "\n\n").map { String(text[..<$0.lowerBound]) } ?? text
            for g in c["global_options"]?.arrayValue ?? [] {
                #expect(help.stdout.contains("--\(g.stringValue!.dropFirst(2))"), "\(path) --help lacks the global option \(g)")
            }
            for o in c["options"]?.arrayValue ?? [] {
                let name = try #require(o["name"]?.stringValue)
                let short = o["short"]?.stringValue
                let value = o["value"]?.stringValue
                // Listed in the options, with its value, and in the usage line.
                let label = (short.map { $0 + ", " } ?? "") + name + (value.map { " " + $0 } ?? "")
                #expect(help.stdout.contains("\n  \(label) "), "\(path) --help does not list \(label)")
                let inUsage = (short ?? name) + (value.map { " " + $0 } ?? "")
                #expect(usage.contains(inUsage), "\(path)'s usage line lacks \(inUsage): \(usage)")
                // Taken by the parser: the first unknown option is then the one after it.
                for spelling in [name] + (short.map { [$0] } ?? []) {
                    let r = await run(program, words + [spelling] + (value == nil ? [] : ["1"]) + ["--zz-not-an-option"])
                    #expect(r.status == 64, "\(path) \(spelling): \(r)")
                    #expect(r.stderr.hasPrefix("Error: unknown option '--zz-not-an-option'"), "\(path) does not take \(spelling): \(r.stderr)")
                    probed += 1
                }
            }
        }
        #expect(probed >= 10)
    }

    /// No option is read outside the table: every `--name` the command-line
    /// code mentions is declared there, for some command or globally.
    @Test func everyOptionTheCodeMentionsIsDeclared() async throws {
        var declared: Set<String> = []
        for (_, program) in Self.programs {
            let doc = try JSONValue.parse(await run(program, ["--help", "--json"]).stdout)
            for c in doc["commands"]?.arrayValue ?? [] {
                for o in c["options"]?.arrayValue ?? [] { declared.insert(o["name"]!.stringValue!) }
                for g in c["global_options"]?.arrayValue ?? [] { declared.insert(g.stringValue!) }
            }
        }
        declared.insert("--version")
        var mentioned: [String: String] = [:]
        for dir in ["Sources/descartes", "Sources/descartes-bench", "Sources/DescartesCommandLine"] {
            let full = FileSystem.join(TestEnv.root, dir)
            for file in try FileSystem.list(full) where file.hasSuffix(".swift") {
                let text = Array(try FileSystem.readText(FileSystem.join(full, file), limit: 1 << 20).utf8)
                var i = 0
                while i + 2 < text.count {
                    if text[i] == UInt8(ascii: "-"), text[i + 1] == UInt8(ascii: "-"), (i == 0 || text[i - 1] != UInt8(ascii: "-")),
                        text[i + 2] >= UInt8(ascii: "a") && text[i + 2] <= UInt8(ascii: "z")
                    {
                        var j = i + 2
                        while j < text.count, (text[j] >= UInt8(ascii: "a") && text[j] <= UInt8(ascii: "z")) || text[j] == UInt8(ascii: "-") { j += 1 }
                        mentioned[String(decoding: text[i..<j], as: UTF8.self), default: file] = file
                        i = j
                    } else {
                        i += 1
                    }
                }
            }
        }
        #expect(mentioned.count >= 20)
        for (name, file) in mentioned.sorted(by: { $0.key < $1.key }) {
            #expect(declared.contains(name), "\(file) mentions \(name), which no command declares")
        }
    }

    @Test func anUnknownOptionIsNamedWithTheNearestOne() async {
        let cases: [([String], String, String)] = [
            (["complete", "-p", "echo", "--jsno", "hi"], "'--jsno' (did you mean '--json'?)", "complete"),
            (["batch", "-p", "echo", "--concurency", "2", "f"], "'--concurency' (did you mean '--concurrency'?)", "batch"),
            (["log", "--line", "3"], "'--line' (did you mean '--lines'?)", "log"),
            (["plugins", "verify", "--conformence", "echo"], "'--conformence' (did you mean '--conformance'?)", "plugins verify"),
            (["complete", "-p", "echo", "-json", "hi"], "'-json' (did you mean '--json'?)", "complete"),
            // Not close to anything of this command, but another command's.
            (["models", "-p", "echo", "--stream"], "'--stream' (taken by 'descartes complete'", "models"),
            (["tokens", "-p", "echo", "--zzz", "x"], "'--zzz'\n", "tokens"),
        ]
        for (args, named, command) in cases {
            let r = await run(TestEnv.descartes, args)
            #expect(r.status == 64, "\(args): \(r)")
            #expect(r.stderr.hasPrefix("Error: unknown option \(named)"), "\(args): \(r.stderr)")
            #expect(r.stderr.contains("\nUsage: descartes \(command) "), "\(args): \(r.stderr)")
            #expect(r.stderr.hasSuffix("\nSee 'descartes \(command) --help'.\n"), "\(args): \(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
        // Commands and subcommands the same way.
        let command = await run(TestEnv.descartes, ["compelte", "-p", "echo", "hi"])
        #expect(command.status == 64)
        #expect(command.stderr.hasPrefix("Error: unknown command 'compelte' (did you mean 'complete'?)\nUsage: descartes "), "\(command.stderr)")
        let sub = await run(TestEnv.descartes, ["plugins", "lsit"])
        #expect(sub.status == 64)
        #expect(sub.stderr.hasPrefix("Error: unknown subcommand 'lsit' (did you mean 'list'?)\nUsage: descartes plugins "), "\(sub.stderr)")
        let none = await run(TestEnv.descartes, ["config", "frobnicate"])
        #expect(none.stderr.hasPrefix("Error: unknown subcommand 'frobnicate' (show or check)"), "\(none.stderr)")
    }

    /// The other usage mistakes the table makes: a missing value, a repeated
    /// option, a flag given a value, a required option or argument missing,
    /// an option without the one it goes with.
    @Test func usageMistakesNameWhatIsWrong() async {
        let cases: [([String], String)] = [
            (["log", "-n"], "option '-n' needs a value (N)"),
            (["complete", "-p", "a", "-p", "b", "hi"], "option '-p' given twice"),
            (["plugins", "list", "--json=yes"], "option '--json' takes no value"),
            (["models"], "missing -p PROVIDER"),
            (["complete", "-p", "echo"], "missing PROMPT (or '-' to read it from stdin)"),
            (["plugins", "info"], "missing NAME: the plugin (its provider id)"),
            (["config", "check", "extra"], "unexpected argument 'extra'"),
            (["plugins", "verify", "--spec", "x.yaml"], "--spec goes with --conformance"),
            (["complete", "-p", "echo", "--max-tokens", "lots", "hi"], "option '--max-tokens' needs an integer, got 'lots'"),
            (["--config"], "option '--config' needs a value (FILE)"),
            // One check for both commands that take them (Commands.sampling).
            (["complete", "-p", "echo", "--max-tokens", "0", "hi"], "--max-tokens must be positive"),
            (["chat", "-p", "echo", "--max-tokens", "0"], "--max-tokens must be positive"),
            (["complete", "-p", "echo", "--temperature", "-0.5", "hi"], "--temperature must be a number >= 0"),
            (["chat", "-p", "echo", "--temperature", "-1"], "--temperature must be a number >= 0"),
        ]
        for (args, message) in cases {
            let r = await run(TestEnv.descartes, args)
            #expect(r.status == 64, "\(args): \(r)")
            #expect(r.stderr.hasPrefix("Error: \(message)\nUsage: descartes"), "\(args): \(r.stderr)")
        }
    }

    /// `descartes-bench` (its own executable, not in `descartes`): the same
    /// options and output as the subcommand it was, through the C example plugin.
    @Test func descartesBenchTimesRequestsAndChecksEveryAnswer() async throws {
        let plugins = PluginDir().addEcho()
        let dir = TempDir()
        let env = ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"]
        let expected = dir.write("expected.txt", "one two three")
        let r = await Proc.run(
            [Self.bench, "-p", "echo", "-n", "6", "-c", "2", "--prompt", "one two three", "--expect", expected, "--json"], env: env)
        #expect(r.status == 0, "\(r)")
        let doc = try JSONValue.parse(r.stdout)
        #expect(doc["tool"] == "descartes" && doc["provider"] == "echo" && doc["mode"] == "complete")
        #expect(doc["requests"] == 6 && doc["concurrency"] == 2 && doc["text_matches"] == true)
        #expect(doc["text_bytes"]?.intValue == 6 * 13)
        for key in ["seconds", "requests_per_second", "cpu_seconds", "voluntary_switches", "events", "peak_rss_kb", "threads_peak"] {
            #expect(doc[key] != nil, "\(key) missing: \(r.stdout)")
        }
        #expect(doc["latency_ms"]?["median"] != nil)

        // A different answer: exit 1, said in the table.
        let other = dir.write("other.txt", "something else")
        let differs = await Proc.run([Self.bench, "-p", "echo", "-n", "2", "--stream", "--prompt", "one two three", "--expect", other], env: env)
        #expect(differs.status == 1, "\(differs)")
        #expect(differs.stdout.contains("echo (stream)"), "\(differs.stdout)")
        #expect(differs.stdout.contains("DIFFERS from the expected text"), "\(differs.stdout)")

        // Its usage errors follow the contract, under its own name.
        let usage = await Proc.run([Self.bench, "-n", "2"], env: env)
        #expect(usage.status == 64)
        #expect(usage.stderr.hasPrefix("Error: missing -p PROVIDER\nUsage: descartes-bench -p PROVIDER"), "\(usage.stderr)")
        #expect(usage.stderr.hasSuffix("See 'descartes-bench --help'.\n"))
        // And `descartes` no longer has it, and says where it went.
        let gone = await Proc.run([TestEnv.descartes, "bench", "-p", "echo"], env: env)
        #expect(gone.status == 64)
        #expect(gone.stderr.hasPrefix("Error: unknown command 'bench' (the benchmark is its own executable, descartes-bench"), "\(gone.stderr)")
    }

    /// docs/benchmarks.md shows descartes-bench's usage as the program prints it.
    @Test func theBenchmarkDocShowsTheRealUsage() async throws {
        let doc = try FileSystem.readText(FileSystem.join(TestEnv.root, "docs/benchmarks.md"), limit: 1 << 20)
        let section = try #require(doc.firstRange(of: "## `descartes-bench`\n\n```text\n"))
        let rest = doc[section.upperBound...]
        let block = String(rest[..<(try #require(rest.firstRange(of: "\n```"))).lowerBound])
        let help = await Proc.run([Self.bench, "--help"])
        let usage = help.stdout.firstRange(of: "\n\n").map { String(help.stdout[..<$0.lowerBound]) } ?? ""
        #expect(block == usage, "docs/benchmarks.md shows:\n\(block)\ndescartes-bench prints:\n\(usage)")
    }
}
