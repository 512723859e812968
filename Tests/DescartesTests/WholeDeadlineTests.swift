import DescartesCore
import DescartesSupport
import Testing

@testable import Descartes

/// The last "no command outlives its deadline" gaps of issue 16: a
/// command's `--timeout` bounds the whole command, not each plugin or line
/// (H26).
extension HostFaultTests {
    /// The blocker plugin under another provider name, hanging where `block`
    /// says unless told otherwise, declaring `timeout_secs`.
    static func hangingManifest(_ provider: String, block: String) -> String {
        Blocker.manifest()
            .replacingOccurrences(of: "provider: blocker", with: "provider: \(provider)\nfactory: blocker")
            .replacingOccurrences(of: "block: {type: string}", with: "block: {type: string, default: \(block)}")
            + "\n  timeout_secs: {type: integer}\n"
    }

    /// `plugins verify`, `batch` (10 lines) and `health` with `--timeout 3`
    /// against several hanging plugins at once, in process and isolated:
    /// each command ends within 5 s with every row and line present. Before,
    /// `--timeout` bounded each plugin or line: verify took 3 s per hanging
    /// plugin (9.1 s for three), batch 3 s per round of `--concurrency`
    /// lines (6-9.5 s), health 3 s per pair of hanging creates, which held
    /// Swift's two cooperative threads (14 s).
    @Test func theWholeCommandHonoursItsTimeout() async throws {
        let d = PluginDir().addEcho()
        d.dir.write("blocker.yaml", Blocker.manifest())
        for name in ["hang-a", "hang-b", "hang-c"] { d.dir.write("\(name).yaml", Self.hangingManifest(name, block: "create")) }
        var yaml = "providers:\n"
        for name in ["b-create", "b-create2", "b-create3"] { yaml += "  \(name): {plugin: blocker, block: create}\n" }
        let hangs = ["initialize", "initialize-silent", "start"]
        for block in hangs {
            yaml += "  b-\(block): {plugin: blocker, block: \(block)}\n"
            yaml += "  b-\(block)-iso: {plugin: blocker, block: \(block), isolation: process}\n"
        }
        let config = d.dir.write("providers.yaml", yaml)
        let requests = d.dir.write("requests.jsonl", String(repeating: "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n", count: 10))
        var runs: [(what: String, argv: [String])] = []
        let verify = [TestEnv.descartes, "plugins", "verify", "--timeout", "3", "hang-a", "hang-b", "hang-c", "echo"]
        runs.append(("verify", verify))
        runs.append(("verify", verify + ["--in-process"]))
        for block in hangs {
            for p in ["b-\(block)", "b-\(block)-iso"] {
                runs.append(("batch", [TestEnv.descartes, "--config", config, "batch", "-p", p, "--timeout", "3", "-q", requests]))
            }
        }
        runs.append(("health", [TestEnv.descartes, "--config", config, "health", "--json", "--timeout", "3"]))
        runs.append(("health", [TestEnv.descartes, "--config", config, "health", "--json", "--in-process", "--timeout", "3"]))
        var env = Environment.current()
        env["DESCARTES_PLUGIN_PATH"] = d.path
        env["HOME"] = "/nonexistent"
        env["NO_COLOR"] = "1"
        let e = env
        var results: [(String, [String], ProcResult)] = []
        for batch in stride(from: 0, to: runs.count, by: 4) {
            results += await withTaskGroup(of: (String, [String], ProcResult).self) { g in
                for run in runs[batch..<min(batch + 4, runs.count)] {
                    g.addTask { (run.what, run.argv, await Proc.run(run.argv, env: e, timeout: .seconds(60))) }
                }
                var all: [(String, [String], ProcResult)] = []
                for await r in g { all.append(r) }
                return all
            }
        }
        #expect(results.count == runs.count)
        for (what, argv, r) in results {
            let shown = argv.dropFirst().joined(separator: " ")
            expectWithin(r.duration, .seconds(5 * Sanitizer.timeScale), "\(shown): \(r)")
            switch what {
            case "verify":
                // Each hanging plugin is a failed row naming the deadline; echo is verified.
                #expect(r.status == 1, "\(shown): \(r)")
                for name in ["hang-a", "hang-b", "hang-c"] {
                    let row = r.stdout.split(separator: "\n").first { $0.hasPrefix(name + " ") }.map(String.init) ?? ""
                    #expect(row.contains("FAIL") && row.contains("timeout") && row.contains("3 s"), "\(shown): \(name): \(r)")
                }
                #expect(r.stdout.contains("1 ok, 3 failed"), "\(shown): \(r)")
            case "batch":
                // Every line has its answer line, in order; each is an error here.
                #expect(r.status == 1, "\(shown): \(r)")
                let lines = r.stdout.split(separator: "\n").map(String.init)
                #expect(lines.count == 10, "\(shown): \(r)")
                for (i, line) in lines.enumerated() {
                    let doc = try JSONValue.parse(line)
                    #expect(doc["index"] == .integer(i) && doc["error"]?["kind"] != nil, "\(shown): \(line)")
                    if let message = doc["error"]?["message"]?.stringValue, message.hasPrefix("not sent") {
                        #expect(message == "not sent: the batch's total deadline of 3 s passed before its turn", "\(shown): \(line)")
                        #expect(doc["error"]?["kind"]?.stringValue == "timeout", "\(shown): \(line)")
                    }
                }
            default:
                // A row for every provider; the hanging ones unhealthy, echo healthy.
                #expect(r.status == 1, "\(shown): \(r)")
                let rows = try JSONValue.parse(r.stdout)["results"]?.arrayValue ?? []
                func row(_ name: String) -> JSONValue? { rows.first { $0["name"]?.stringValue == name } }
                for name in ["b-create", "b-create2", "b-create3"] + hangs.filter({ $0 != "start" }).flatMap({ ["b-\($0)", "b-\($0)-iso"] }) {
                    #expect(row(name)?["healthy"] == .bool(false) && row(name)?["error"]?["kind"]?.stringValue == "timeout", "\(shown): \(name): \(r.stdout)")
                }
                #expect(row("echo")?["healthy"] == .bool(true), "\(shown): \(r.stdout)")
            }
        }
    }
}
