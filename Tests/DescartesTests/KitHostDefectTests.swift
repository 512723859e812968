import Descartes
import Glibc
import Testing
import DescartesSupport

/// The host defects issue 20 found while writing a plugin as a third party:
/// Ctrl-C during a stream, text held for redaction lost on an error, and
/// the optional functions' defaults.
@Suite struct KitHostDefectTests {
    let plugins = PluginDir().addEcho().addScripted()
    let work = TempDir("descartes-kit-host")

    func env() -> [String: String] {
        ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": work.file("home"), "XDG_STATE_HOME": work.file("state")]
    }

    /// A cancelled consumer of a stream gets `cancelled`, never the plain end
    /// of the sequence (AsyncThrowingStream's answer to a cancelled
    /// iterating task), which callers took for a stream that closed early.
    @Test func cancellingTheIteratingTaskThrowsCancelled() async throws {
        for _ in 0..<20 {
            let (stream, continuation) = ModelStream.makeStream(provider: "p")
            continuation.yield(.textDelta("a"))
            let started = Lock(false)
            let task = Task { () async -> Result<Int, ProviderError> in
                var n = 0
                do throws(ProviderError) {
                    for try await _ in stream {
                        n += 1
                        started.withLock { $0 = true }
                    }
                } catch {
                    return .failure(error)
                }
                return .success(n)
            }
            while !started.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(1)) }
            task.cancel()
            switch await task.value {
            case .success(let n): Issue.record("the stream ended normally after \(n) event(s) instead of throwing cancelled")
            case .failure(let e): #expect(e.kind == .cancelled, "\(e)")
            }
            continuation.finish()
        }
        // A stream that finished before the cancellation ends normally.
        let (done, c2) = ModelStream.makeStream(provider: "p")
        c2.yield(.finish(ModelResponse(content: "x")))
        c2.finish()
        let t = Task { () async throws(ProviderError) -> Int in
            withUnsafeCurrentTask { $0?.cancel() }
            var n = 0
            for try await _ in done { n += 1 }
            return n
        }
        #expect(try await t.value == 1)
    }

    /// Ctrl-C in the middle of `complete --stream` with the C example ends
    /// as `cancelled` with status 130, every time (it was 69 stream_closed
    /// in 5 of 8 tries).
    @Test func ctrlCDuringAStreamIsAlwaysCancelled() async {
        var e = Environment.current()
        for (k, v) in env() { e[k] = v }
        let out = work.file("out")
        let line = [TestEnv.descartes, "complete", "-p", "echo", "--stream", "--set", "delay_ms=50", Array(repeating: "word", count: 400).joined(separator: " ")]
            .map { "'\($0)'" }.joined(separator: " ")
        // The shell waits until the first words were printed (at most 20 s),
        // interrupts the CLI and exits with its status.
        let script = "rm -f '\(out)'; \(line) >'\(out)' 2>'\(out).err' & pid=$!; i=0; while [ ! -s '\(out)' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; kill -INT $pid; wait $pid; s=$?; cat '\(out).err' >&2; exit $s"
        for attempt in 1...6 {
            let r = await Proc.run(["/bin/sh", "-c", script], env: e, timeout: .seconds(60))
            #expect(r.status == 130, "attempt \(attempt): \(r)")
            #expect(r.stderr.contains("cancelled"), "attempt \(attempt): \(r.stderr)")
        }
    }

    /// Text held back because it could be the start of a secret is shown
    /// (masked as needed) before the error, never dropped.
    @Test func textHeldForRedactionIsShownBeforeAnError() async {
        let secret = "kit20-secret-token-Zq81"
        work.write(
            "providers.yaml",
            """
            providers:
              s:
                plugin: scripted
                token: \(secret)
                default_script: ["text:the answer is ki", "error:backend:the connection dropped"]
            """)
        for extra in [[], ["--json"]] {
            let r = await Proc.descartes(["--config", work.file("providers.yaml"), "complete", "-p", "s", "--stream", "--retries", "0"] + extra + ["hi"], env: env())
            #expect(r.status == 70, "\(r)")
            #expect(r.stdout.contains(extra.isEmpty ? "the answer is ki" : #""the answer is "#), "\(r)")
            if !extra.isEmpty { #expect(r.stdout.contains(#""ki""#) || r.stdout.contains("the answer is ki"), "\(r.stdout)") }
            #expect(r.stderr.contains("the connection dropped"), "\(r)")
            #expect(!r.stdout.contains(secret) && !r.stderr.contains(secret))
        }
    }

    /// A plugin that leaves health_check and estimate_tokens NULL (the
    /// rulebreaker fixture) gets their documented defaults, in process and
    /// isolated alike.
    @Test func nullOptionalFunctionsGetTheirDefaults() async throws {
        let lib = plugins.dir.file("libdescartes-rulebreaker.so")
        let cc = await CCompiler.compile([FileSystem.join(TestEnv.root, "Tests/Fixtures/plugins/rulebreaker.c")], output: lib)
        #expect(cc.status == 0, "\(cc)")
        plugins.dir.write(
            "rulebreaker.yaml",
            """
            manifest_version: 1
            provider: rulebreaker
            version: 0.0.1
            library: libdescartes-rulebreaker.so
            abi: 1
            mode: local
            config:
              breaks: {type: string}
              api_key: {type: string, secret: true}
            """)
        work.write("providers.yaml", "providers:\n  rb: {plugin: rulebreaker}\n  rb-iso: {plugin: rulebreaker, isolation: process}\n")
        for name in ["rb", "rb-iso"] {
            let h = await Proc.descartes(["--config", work.file("providers.yaml"), "health", "-p", name], env: env())
            #expect(h.status == 0, "\(name): \(h)")
            #expect(h.stdout.contains("not implemented"), "\(name): \(h)")
            #expect(!h.stdout.contains("unhealthy"), "\(name): \(h)")
            let j = await Proc.descartes(["--config", work.file("providers.yaml"), "health", "-p", name, "--json"], env: env())
            let doc = try JSONValue.parse(j.stdout)
            #expect(doc["results"]?[0]?["implemented"] == .bool(false), "\(j)")
            #expect(doc["unhealthy"] == 0 && doc["not_implemented"] == 1, "\(j)")
            let t = await Proc.descartes(["--config", work.file("providers.yaml"), "tokens", "-p", name, "one two three four"], env: env())
            #expect(t.status == 0, "\(name): \(t)")
            #expect(t.stdout.contains("estimated, heuristic:chars/4 (the plugin does not count tokens"), "\(name): \(t)")
        }
    }
}
