import Descartes
import Glibc
import Testing
import DescartesSupport

/// `descartes serve` (docs/gateway.md): the official OpenAI and Anthropic
/// Python SDKs against the gateway (Tests/Gateway/test_sdk.py starts one
/// gateway and one scripted upstream for its whole suite, on 127.0.0.1),
/// and the refusals of `serve` and its `server:` section.
@Suite struct GatewayTests {
    let plugins = PluginDir().addEcho()

    @Test func theOfficialSDKsWorkAgainstTheGateway() async throws {
        let sdks = await Proc.run(["python3", "-c", "import openai, anthropic, httpx"], timeout: .seconds(60))
        try #require(
            sdks.status == 0,
            "the openai and anthropic Python SDKs are not installed (support/deps.sh test installs them): \(sdks.stderr)")
        let plugins = PluginDir().addEcho().addScripted().addManifest("openai").addManifest("anthropic")
        defer { withExtendedLifetime(plugins) {} }
        var env = Environment.current()
        env["DESCARTES"] = TestEnv.descartes
        env["DESCARTES_PLUGIN_PATH"] = plugins.path
        env["HOME"] = "/nonexistent"
        let r = await Proc.run(
            ["python3", "-u", FileSystem.join(TestEnv.root, "Tests/Gateway/test_sdk.py"), "-v"], env: env, timeout: .seconds(300))
        #expect(r.status == 0, "\(r.stderr)\n\(r.stdout)")
        // unittest's summary: every test ran, none failed.
        #expect(r.stderr.contains("\nOK\n") || r.stderr.hasSuffix("\nOK"), "\(r.stderr)")
        #expect(r.stderr.contains("Ran 52 tests"), "\(r.stderr)")
    }

    /// README.md's gateway example, run as written: `descartes serve` (with
    /// `--listen 127.0.0.1:0` added so the test takes a free port, and that
    /// port put in the example's URL), then the Python example against it.
    @Test func theReadmeExampleRuns() async throws {
        let readme = try FileSystem.readText(FileSystem.join(TestEnv.root, "README.md"), limit: 1 << 20)
        let section = try #require(readme.firstRange(of: "## The gateway: `descartes serve`"))
        let sh = try #require(readme[section.upperBound...].firstRange(of: "```sh checked-by: theReadmeExampleRuns\n"))
        let shEnd = try #require(readme[sh.upperBound...].firstRange(of: "\n```\n"))
        let command = readme[sh.upperBound..<shEnd.lowerBound].split(separator: "#")[0].split(separator: " ").map(String.init)
        #expect(command == ["descartes", "serve"])
        let py = try #require(readme[shEnd.upperBound...].firstRange(of: "```python\n"))
        let pyEnd = try #require(readme[py.upperBound...].firstRange(of: "\n```\n"))
        let example = String(readme[py.upperBound..<pyEnd.lowerBound])
        let driver = """
            import os, subprocess, sys
            gw = subprocess.Popen([os.environ["DESCARTES"], "serve", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            line = gw.stdout.readline().decode().split()
            try:
                exec(os.environ["EXAMPLE"].replace("http://127.0.0.1:4000", line[-1]))
            finally:
                gw.terminate()
                sys.stderr.write("serve exited %d\\n" % gw.wait(timeout=20))
            """
        var env = Environment.current()
        env["DESCARTES"] = TestEnv.descartes
        env["DESCARTES_PLUGIN_PATH"] = plugins.path
        env["HOME"] = "/nonexistent"
        env["EXAMPLE"] = example
        let dir = TempDir("descartes-readme")
        let r = await Proc.run(["env", "-C", dir.path, "python3", "-c", driver], env: env, timeout: .seconds(60))
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "Hello gateway\nHello responses\n", "\(r)")
        #expect(r.stderr.contains("serve exited 0"), "\(r)")
    }

    /// With nothing configured, `/ready` checks the installed plugins at
    /// their defaults; an Ollama that is not running there is reported but
    /// does not make the gateway degraded (it was: a default install said
    /// `degraded` whenever Ollama was not running).
    @Test func unconfiguredPluginsThatCannotBeReachedDoNotDegradeReadiness() async throws {
        let dir = PluginDir().addEcho().addBuilt(provider: "ollama")
        let driver = """
            import json, os, socket, subprocess, sys, urllib.request
            s = socket.socket(); s.bind(("127.0.0.1", 0)); closed = s.getsockname()[1]; s.close()
            env = dict(os.environ, OLLAMA_HOST="127.0.0.1:%d" % closed)
            gw = subprocess.Popen([os.environ["DESCARTES"], "serve", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
            url = gw.stdout.readline().decode().split()[-1]
            try:
                with urllib.request.urlopen(url + "/ready", timeout=20) as r:
                    doc = json.load(r)
                    print(r.status, doc["status"], doc["providers"]["echo"]["status"], doc["providers"]["ollama"]["status"], doc["providers"]["ollama"]["error"])
            finally:
                gw.terminate()
                gw.wait(timeout=20)
            """
        var env = Environment.current()
        env["DESCARTES"] = TestEnv.descartes
        env["DESCARTES_PLUGIN_PATH"] = dir.path
        env["HOME"] = "/nonexistent"
        let work = TempDir("descartes-ready")
        let r = await Proc.run(["env", "-C", work.path, "python3", "-c", driver], env: env, timeout: .seconds(60))
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "200 ready ok unavailable provider_unavailable\n", "\(r)")
    }

    func serve(_ args: [String], yaml: String? = nil, env: [String: String] = [:]) async -> (ProcResult, TempDir) {
        let dir = TempDir("descartes-serve")
        var full = env
        full["DESCARTES_PLUGIN_PATH"] = plugins.path
        full["HOME"] = "/nonexistent"
        let config = dir.write("providers.yaml", yaml ?? "providers: {}\n")
        return (await Proc.descartes(["serve", "--config", config] + args, env: full, timeout: .seconds(30)), dir)
    }

    @Test func withoutKeysOnlyLoopbackIsServed() async {
        let (r, _) = await serve(["--listen", "0.0.0.0:0"])
        #expect(r.status == 69, "\(r)")
        #expect(r.stderr.contains("refusing to serve 0.0.0.0 without keys"), "\(r)")
    }

    @Test func aKeyWrittenInTheFileIsRefused() async {
        let (r, dir) = await serve(
            ["--listen", "127.0.0.1:0"],
            yaml: """
                server:
                  keys:
                    team-a: literal-secret-in-the-file-0123
                """)
        #expect(r.status == 78, "\(r)")
        #expect(r.stderr.contains("\(dir.file("providers.yaml")):3:13: server.keys.team-a: the secret is written in the file"), "\(r)")
        #expect(!r.stderr.contains("literal-secret-in-the-file-0123"), "\(r)")
    }

    @Test func otherCommandsDoNotNeedTheGatewaysKeys() async {
        let (r, _) = await serve([], yaml: "server:\n  keys:\n    team-a: ${UNSET_GATEWAY_KEY_VARIABLE}\n")
        #expect(r.status == 78, "\(r)")
        #expect(r.stderr.contains("UNSET_GATEWAY_KEY_VARIABLE"), "\(r)")
        let dir = TempDir("descartes-serve")
        let config = dir.write("providers.yaml", "server:\n  keys:\n    team-a: ${UNSET_GATEWAY_KEY_VARIABLE}\n")
        let complete = await Proc.descartes(
            ["complete", "--config", config, "-p", "echo", "hi"], env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"])
        #expect(complete.status == 0, "\(complete)")
        #expect(complete.stdout == "hi\n", "\(complete)")
    }

    /// `descartes keys`: the key printed once on stdout, only its hash in a
    /// file only its owner reads, usage errors naming the option.
    @Test func keysAreIssuedListedAndRevoked() async throws {
        let dir = TempDir("descartes-keys")
        let config = dir.write("providers.yaml", "server:\n  keys_database: state/keys.sqlite3\n")
        let env = ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"]
        let empty = await Proc.descartes(["keys", "list", "--config", config], env: env)
        #expect(empty.status == 0 && empty.stdout.contains("no gateway keys issued"), "\(empty)")
        let made = await Proc.descartes(
            ["keys", "create", "--config", config, "--name", "ci", "--budget-usd", "5", "--period", "month", "--rpm", "60", "--models", "echo, openai/*"],
            env: env)
        #expect(made.status == 0, "\(made)")
        let key = String(made.stdout.split(separator: "\n").first ?? "")
        #expect(key.hasPrefix("dsk-") && key.count == 68 && key.dropFirst(4).allSatisfy(\.isHexDigit), "\(made)")
        #expect(!made.stderr.contains(key), "\(made)")
        let file = dir.file("state/keys.sqlite3")
        var st = stat()
        #expect(stat(file, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(stat(dir.file("state"), &st) == 0 && st.st_mode & 0o777 == 0o700)
        let bytes = try FileSystem.readText(file, limit: 1 << 20)
        #expect(!bytes.contains(String(key.dropFirst(4))))
        #expect(bytes.contains(StoredGatewayKey.hash(of: key)))
        let list = await Proc.descartes(["keys", "list", "--config", config], env: env)
        #expect(list.status == 0, "\(list)")
        #expect(list.stdout.contains("ci") && list.stdout.contains("echo,openai/*") && list.stdout.contains("$5.0/month") && !list.stdout.contains(key), "\(list)")
        let again = await Proc.descartes(["keys", "create", "--config", config, "--name", "ci"], env: env)
        #expect(again.status == 78 && again.stderr.contains("a gateway key named 'ci' exists already"), "\(again)")
        for (args, message) in [
            (["--name", "x", "--period", "week", "--budget-usd", "1"], "--period needs day, month or total, got 'week'"),
            (["--name", "x", "--period", "day"], "--period goes with --budget-usd"),
            (["--name", "x", "--rpm", "0"], "--rpm needs a number of requests above 0"),
            (["--name", "has space"], "--name needs a name of printable characters"),
            (["--name", "x", "--label", "gateway_key=y"], "--label gateway_key is the gateway's own"),
        ] {
            let r = await Proc.descartes(["keys", "create", "--config", config] + args, env: env)
            #expect(r.status == 64 && r.stderr.contains(message), "\(args): \(r)")
        }
        let revoked = await Proc.descartes(["keys", "revoke", "--config", config, "ci"], env: env)
        #expect(revoked.status == 0, "\(revoked)")
        let after = await Proc.descartes(["keys", "list", "--config", config, "--json"], env: env)
        let doc = try JSONValue.parse(after.stdout)
        #expect(doc["keys"]?[0]?["revoked"]?.stringValue != nil, "\(after)")
    }

    /// docs/gateway.md's `server:` example passes `config check` (its
    /// secret file and variable supplied here).
    @Test func theDocsServerSectionIsValid() async throws {
        let doc = try FileSystem.readText(FileSystem.join(TestEnv.root, "docs/gateway.md"), limit: 1 << 20)
        let section = try #require(doc.firstRange(of: "## Configuration: the `server:` section"))
        let start = try #require(doc[section.upperBound...].firstRange(of: "```yaml\n"))
        let end = try #require(doc[start.upperBound...].firstRange(of: "\n```\n"))
        let dir = TempDir("descartes-serve-docs")
        let secret = dir.write("team-b", "team-b-secret-from-a-file-0123")
        let yaml = String(doc[start.upperBound..<end.lowerBound]).replacingAll("/run/secrets/gateway-team-b", with: secret)
        #expect(yaml.contains("tls:") && yaml.contains("cors_origins:") && yaml.contains("rpm:"))
        let config = dir.write("providers.yaml", yaml)
        let r = await Proc.descartes(
            ["--config", config, "config", "check"],
            env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent", "TEAM_A_KEY": "team-a-secret-from-env-0123"])
        #expect(r.status == 0, "\(r)")
        #expect(!r.stdout.contains("team-a-secret-from-env-0123") && !r.stderr.contains("team-b-secret-from-a-file-0123"), "\(r)")
    }

    /// server.tls, server.cors_origins and a configured key's limits: each
    /// wrong value named at its file:line:column; TLS files that are not a
    /// certificate and key: `serve` stops naming them (not their content).
    @Test func tlsCorsAndKeyLimitProblemsAreNamed() async throws {
        let (r, dir) = await serve(
            ["--listen", "127.0.0.1:0"],
            yaml: """
                server:
                  tls: {}
                  cors_origins: ["app.example.com", "https://ok.example.com/"]
                  keys:
                    team-a:
                      secret: ${TEAM_A_KEY}
                      rpm: 0
                      labels: [x]
                """, env: ["TEAM_A_KEY": "team-a-secret-from-env-0123"])
        #expect(r.status == 78, "\(r)")
        let file = dir.file("providers.yaml")
        for expected in [
            "\(file):2:8: server.tls needs 'cert': the PEM certificate (chain) file",
            "\(file):2:8: server.tls needs 'key': the PEM private key file",
            "\(file):3:17: server.cors_origins: 'app.example.com' is not an origin",
            "\(file):3:17: server.cors_origins: 'https://ok.example.com/' is not an origin",
            "\(file):7:12: server.keys.team-a.rpm is a number above 0, got 0",
            "\(file):8:15: server.keys.team-a.labels is a mapping of strings",
        ] {
            #expect(r.stderr.contains(expected), "\(expected)\n\(r)")
        }
        let notPEM = TempDir("descartes-serve-tls")
        let cert = notPEM.write("cert.pem", "not a certificate, a secret-looking line 0123\n")
        let key = notPEM.write("key.pem", "not a key either, another secret-looking line 4567\n")
        let (bad, _) = await serve(["--listen", "127.0.0.1:0"], yaml: "server:\n  tls: {cert: \(cert), key: \(key)}\n")
        #expect(bad.status == 69, "\(bad)")
        #expect(bad.stderr.contains("server.tls: cert \(cert), key \(key)"), "\(bad)")
        #expect(!bad.stderr.contains("secret-looking"), "\(bad)")
    }

    /// server.responses_database and server.responses_retention_days:
    /// `config check` names a wrong value at its file:line:column.
    @Test func responseStoreSettingsAreChecked() async throws {
        let dir = TempDir("descartes-serve-responses")
        let config = dir.write("providers.yaml", "server:\n  responses_database: ${STATE}/r.sqlite3\n  responses_retention_days: 0\n")
        let r = await Proc.descartes(
            ["--config", config, "config", "check"], env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent", "STATE": "/tmp"])
        #expect(r.status != 0, "\(r)")
        for expected in [
            "\(config):2:23: server.responses_database is a file path (no ${...} references), e.g. ~/.local/state/descartes/gateway-responses.sqlite3",
            "\(config):3:29: server.responses_retention_days is 1 to 3650, got 0",
        ] {
            #expect(r.stdout.contains(expected) || r.stderr.contains(expected), "\(expected)\n\(r)")
        }
        let good = dir.write("good.yaml", "server:\n  responses_database: state/r.sqlite3\n  responses_retention_days: 7\n")
        let ok = await Proc.descartes(["--config", good, "config", "check"], env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"])
        #expect(ok.status == 0, "\(ok)")
        let settings = try ProvidersConfig.load(.init(explicitFile: good)).gatewaySettings()
        #expect(settings.responsesDatabase == dir.file("state/r.sqlite3") && settings.responsesRetentionDays == 7)
    }

    @Test func listenAddresses() {
        #expect(GatewaySettings.listenAddress("127.0.0.1:4000")! == ("127.0.0.1", 4000))
        #expect(GatewaySettings.listenAddress("[::1]:80")! == ("::1", 80))
        #expect(GatewaySettings.listenAddress("8080")! == ("127.0.0.1", 8080))
        #expect(GatewaySettings.listenAddress("host") == nil)
        #expect(GatewaySettings.listenAddress("h:99999") == nil)
        #expect(GatewaySettings.isLoopback("127.0.0.1") && GatewaySettings.isLoopback("::1") && !GatewaySettings.isLoopback("0.0.0.0"))
    }
}
