import DescartesCore
import DescartesSupport
import Testing

@testable import Descartes

/// The last "no command outlives its deadline" gaps of issue 16: a
/// command's `--timeout` bounds the whole command, not each plugin or line
/// (H26), and every gateway request has a total deadline (H27).
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
        let results = await Self.runFourAtATime(runs.map { ($0.what, $0.argv, [:]) }, pluginPath: d.path)
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

    /// `descartes serve` with providers whose plugin hangs in start or in
    /// create, `timeout_secs: 3`, driven by a real HTTP client: each such
    /// request is answered with the dialect's timeout error (504, OpenAI's
    /// and Anthropic's error JSON) within 4 s, streamed or not, the access
    /// log says `timeout`, and a request to echo sent meanwhile is answered
    /// at once (a hanging create holds no lock or thread others need).
    /// Before, the hanging start was answered after about 10 s (three
    /// attempts of 3 s) and a hanging create held its request 30 s.
    @Test func aGatewayRequestEndsAtItsDeadline() async throws {
        let d = PluginDir().addEcho()
        d.dir.write("slowpoke.yaml", Self.hangingManifest("slowpoke", block: "ok"))
        let config = d.dir.write(
            "providers.yaml",
            """
            providers:
              hangs-start: {plugin: slowpoke, block: start, timeout_secs: 3}
              hangs-create: {plugin: slowpoke, block: create, timeout_secs: 3}
              hangs-create2: {plugin: slowpoke, block: create, timeout_secs: 3}

            """)
        let driver = """
            import json, os, subprocess, sys, threading, time, urllib.request, urllib.error
            log = open(sys.argv[2], "w")
            gw = subprocess.Popen([os.environ["DESCARTES"], "serve", "--config", sys.argv[1], "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
            url = gw.stdout.readline().decode().split()[-1]
            def ask(name, path, model, stream=False, delay=0):
                time.sleep(delay)
                if path == "/v1/messages":
                    body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                else:
                    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
                start = time.monotonic()
                req = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
                try:
                    r = urllib.request.urlopen(req, timeout=60)
                    status, text = r.status, r.read().decode()
                except urllib.error.HTTPError as e:
                    status, text = e.code, e.read().decode()
                out[name] = {"status": status, "seconds": time.monotonic() - start, "body": text}
            out = {}
            asks = [("start", "/v1/chat/completions", "hangs-start", False, 0), ("start-stream", "/v1/chat/completions", "hangs-start", True, 0),
                    ("create", "/v1/messages", "hangs-create", False, 0), ("create-stream", "/v1/messages", "hangs-create2", True, 0),
                    ("create-again", "/v1/chat/completions", "hangs-create", False, 0.2), ("echo", "/v1/chat/completions", "echo", False, 0.5)]
            threads = [threading.Thread(target=ask, args=a) for a in asks]
            for t in threads: t.start()
            for t in threads: t.join()
            gw.terminate()
            gw.wait(timeout=40)
            print(json.dumps(out))
            """
        let log = d.dir.file("access.log")
        var env = Environment.current()
        env["DESCARTES"] = TestEnv.descartes
        env["DESCARTES_PLUGIN_PATH"] = d.path
        env["HOME"] = "/nonexistent"
        let r = await Proc.run(["python3", "-c", driver, config, log], env: env, timeout: .seconds(120))
        #expect(r.status == 0, "\(r)")
        let out = try JSONValue.parse(r.stdout)
        for name in ["start", "start-stream", "create", "create-stream", "create-again"] {
            let a = out[name]
            #expect(a?["status"] == .integer(504), "\(name): \(r.stdout)")
            let seconds = a?["seconds"]?.doubleValue ?? 99
            expectWithin(.milliseconds(Int(seconds * 1000)), .seconds(4 * Sanitizer.timeScale), "\(name): \(r.stdout)")
            let body = try JSONValue.parse(a?["body"]?.stringValue ?? "")
            if name.hasPrefix("create"), name != "create-again" {
                // Anthropic's error document.
                #expect(body["type"]?.stringValue == "error" && body["error"]?["type"]?.stringValue == "timeout_error", "\(name): \(body)")
            } else {
                #expect(body["error"]?["type"]?.stringValue == "timeout_error", "\(name): \(body)")
            }
            let message = body["error"]?["message"]?.stringValue ?? ""
            #expect(message.contains("3 s"), "\(name): \(message)")
        }
        // Answered while the others hang.
        #expect(out["echo"]?["status"] == .integer(200), "\(r.stdout)")
        expectWithin(.milliseconds(Int((out["echo"]?["seconds"]?.doubleValue ?? 99) * 1000)), .seconds(2 * Sanitizer.timeScale), "echo: \(r.stdout)")
        let lines = try FileSystem.readText(log, limit: 1 << 20).split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
        let timeouts = lines.filter { $0["error"]?.stringValue == "timeout" && $0["status"] == .integer(504) }
        #expect(timeouts.count == 5, "\(lines)")
    }
}
