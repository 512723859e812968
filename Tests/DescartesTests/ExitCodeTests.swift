import Descartes
import DescartesCommandLine
import Glibc
import Testing
import DescartesSupport

/// Every exit status the CLI uses is in README.md's table, the table lists
/// nothing else, and a path leads to each one (issue 17).
@Suite struct ExitCodeTests {
    let plugins = PluginDir().addScripted().addEcho()
    let work = TempDir("descartes-exit")

    /// The statuses of README.md's "Exit statuses" table.
    static func documented() throws -> [Int32: String] {
        let readme = try FileSystem.readText(FileSystem.join(TestEnv.root, "README.md"), limit: 1 << 20)
        guard let start = readme.range(of: "| status | meaning |") else { return [:] }
        var out: [Int32: String] = [:]
        for line in readme[start.upperBound...].split(separator: "\n").dropFirst() {
            guard line.hasPrefix("| ") else { break }
            let cells = line.split(separator: "|").map { $0.trimmingSpaces }
            guard cells.count >= 2 else { continue }
            for code in cells[0].split(separator: ",") {
                if let n = Int32(code.trimmingSpaces) { out[n] = cells[1] }
            }
        }
        return out
    }

    @Test func theTableListsEveryStatusAndNothingElse() throws {
        let table = try Self.documented()
        // SIGHUP and SIGTERM end the CLI as Ctrl-C does, with 128 + the signal.
        let used = Set(ExitCode.allCases.map(\.rawValue)).union([128 + SIGHUP, 128 + SIGTERM])
        #expect(Set(table.keys) == used, "README lists \(table.keys.sorted()), the CLI uses \(used.sorted())")
    }

    func cli(_ args: [String], stdin: String? = nil) async -> ProcResult {
        await Proc.descartes(
            ["--config", work.file("providers.yaml")] + args,
            env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": work.file("home"), "XDG_STATE_HOME": work.file("state")], stdin: stdin)
    }

    /// The status of `descartes ARGS` after SIGNAL reached it mid-request.
    func signalled(_ signal: Int32, _ args: [String]) async -> ProcResult {
        var e = Environment.current()
        e["DESCARTES_PLUGIN_PATH"] = plugins.path
        e["HOME"] = work.file("home")
        let line = ([TestEnv.descartes, "--config", work.file("providers.yaml")] + args).map { "'\($0)'" }.joined(separator: " ")
        // The shell waits until the request is under way (the plugin is
        // sleeping), signals the CLI, and exits with the CLI's status.
        return await Proc.run(["/bin/sh", "-c", "\(line) & pid=$!; sleep 1; kill -\(signal) $pid; wait $pid"], env: e)
    }

    @Test func aPathLeadsToEveryStatus() async throws {
        work.write(
            "providers.yaml",
            """
            providers:
              down: {plugin: scripted, fail_init: down for maintenance}
              broken: {plugin: scripted, default_script: ["error:backend:the plugin's own failure"]}
              limited: {plugin: scripted, default_script: ["error:rate_limited:slow down"]}
              garbled: {plugin: scripted, default_script: ["error:invalid_response:not JSON"]}
              denied: {plugin: scripted, default_script: ["error:authentication:bad key"]}
              slow: {plugin: scripted, default_script: ["sleep:20000", "words"]}
            """)
        let tools = work.write("tools.json", #"[{"name": "t"}]"#)
        var reached: [Int32: [String]] = [:]
        func expect(_ status: Int32, _ args: [String], _ r: ProcResult) {
            #expect(r.status == status, "\(args): \(r)")
            reached[r.status, default: []].append(args.joined(separator: " "))
        }
        let cases: [(Int32, [String])] = [
            (0, ["complete", "-p", "echo", "hi"]),
            (1, ["health"]),  // 'down' cannot start
            (64, ["complete", "-p", "echo"]),
            (65, ["complete", "-p", "echo", "--tools", tools, "hi"]),
            (66, ["batch", "-p", "echo", work.file("nope.jsonl")]),
            (69, ["complete", "-p", "down", "hi"]),
            (70, ["complete", "-p", "broken", "hi"]),
            (73, ["batch", "-p", "echo", "-o", work.file("no/such/dir/out.jsonl"), "-"]),
            (75, ["complete", "-p", "limited", "--retries", "0", "hi"]),
            (76, ["complete", "-p", "garbled", "hi"]),
            (77, ["complete", "-p", "denied", "hi"]),
            (78, ["complete", "-p", "nosuch", "hi"]),
        ]
        for (status, args) in cases {
            expect(status, args, await cli(args, stdin: args.last == "-" ? #"{"messages": [{"role": "user", "content": "x"}]}"# + "\n" : nil))
        }
        for s in [SIGINT, SIGHUP, SIGTERM] {
            let args = ["complete", "-p", "slow", "hi"]
            expect(128 + s, args + ["(signal \(s))"], await signalled(s, args))
        }
        let table = try Self.documented()
        #expect(Set(reached.keys) == Set(table.keys), "reached \(reached.keys.sorted()), documented \(table.keys.sorted())")
    }
}
