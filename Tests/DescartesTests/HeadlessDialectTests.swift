import Descartes
import Glibc
import Testing
import DescartesSupport

/// Dialects of `headless-cli` (docs/headless.md, "Dialects"): a CLI's
/// stdin, exit statuses, error and usage lines and answer, declared in
/// configuration. Programs here are `/bin/sh -c SCRIPT`, which print what
/// real CLIs print.
@Suite(.serialized, .timeLimit(.minutes(3))) struct HeadlessDialectTests {
    static let plugins = PluginDir().addRepositoryPlugin("headless-cli", library: "headless-cli")

    /// `sh -c script sh PROMPT`: the prompt is $1.
    func shell(_ script: String, _ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        var c: [String: JSONValue] = [
            "command": "/bin/sh", "protocol": "text", "args": ["-c", .string(script), "sh", "{prompt}"], "end_options": false,
        ]
        for (k, v) in extra { c[k] = v }
        return try Self.plugins.factory().create("headless-cli", config: c)
    }

    func failure(_ b: any ModelBackend, _ prompt: String = "hi") async -> ProviderError? {
        do {
            _ = try await b.complete(ModelRequest(prompt: prompt))
            return nil
        } catch let e as ProviderError {
            return e
        } catch {
            return nil
        }
    }

    @Test func anAgentThatPrintsAnAuthenticationErrorAndExitsZeroFailsAsAuthentication() async throws {
        let script = "echo 'Thinking...'; echo 'litellm.AuthenticationError: invalid x-api-key'; exit 0"
        // Without a dialect this is an answer:
        let plain = try shell(script)
        #expect(try await plain.complete(ModelRequest(prompt: "hi")).content.contains("AuthenticationError"))
        await plain.shutdown()
        let b = try shell(script, ["error_patterns": ["rate_limited": "RateLimitError", "authentication": "AuthenticationError|invalid x-api-key"]])
        let e = try #require(await failure(b))
        #expect(e.kind == .authentication, "\(e)")
        #expect(e.status == 0)
        #expect(e.providerType == "error_patterns")
        #expect(e.message.contains("stdout matching error_patterns.authentication: litellm.AuthenticationError: invalid x-api-key"), "\(e.message)")
        await b.shutdown()
    }

    @Test func theFirstPatternInOrderDecidesAndScanLimitsTheStreams() async throws {
        // One line matching two patterns: the one declared first wins.
        let b = try shell(
            "echo 'Error: Error code: 429 - slow down' >&2; exit 1",
            ["error_patterns": ["rate_limited": "Error code: 429", "api": "^Error: "]])
        #expect(await failure(b)?.kind == .rateLimited)
        await b.shutdown()
        // scan: stderr: an answer that says "Error: " on stdout is an answer.
        let c = try shell(
            "echo 'Error: is a word'; echo 'Token usage: 3 input, 4 output' >&2",
            ["error_patterns": ["api": "^Error: "], "scan": "stderr", "usage_patterns": ["input_tokens": "([0-9]+) input"]])
        let r = try await c.complete(ModelRequest(prompt: "hi"))
        #expect(r.content == "Error: is a word\n")
        #expect(r.usage.inputTokens == 3)
        await c.shutdown()
        let d = try shell("echo 'Error: is a word'", ["error_patterns": ["api": "^Error: "]])
        #expect(await failure(d)?.kind == .api)
        await d.shutdown()
    }

    @Test func exitCodesMapToKindsAndOtherStatusesStayProcess() async throws {
        let b = try shell("echo 'quota exceeded' >&2; exit \"$1\"", ["exit_codes": ["3": "rate_limited", "4": "authentication"]])
        let e3 = try #require(await failure(b, "3"))
        #expect(e3.kind == .rateLimited)
        #expect(e3.status == 3)
        #expect(e3.message.contains("quota exceeded"))
        #expect(await failure(b, "4")?.kind == .authentication)
        #expect(await failure(b, "5")?.kind == .process)
        await b.shutdown()
    }

    @Test func aiderStyleOutputGivesTheLastBlockUsageAndCost() async throws {
        let script = """
            printf 'Aider v0.86.1\\nMain model: gpt-4o with diff edit format\\n\\n'
            printf 'Tokens: 2.1k sent, 1,150 received. Cost: $0.0123 message, $0.05 session.\\n\\n'
            printf 'The answer is 42.\\nIt always was.\\n\\n'
            """
        let b = try shell(
            script,
            [
                "answer": "last_block",
                "usage_patterns": [
                    "input_tokens": "Tokens: ([0-9.,]+[kM]?) sent", "output_tokens": "sent, ([0-9.,]+[kM]?) received",
                    "cost_usd": "Cost: (\\$[0-9.]+) message",
                ],
            ])
        let r = try await b.complete(ModelRequest(prompt: "hi"))
        #expect(r.content == "The answer is 42.\nIt always was.")
        #expect(r.usage.inputTokens == 2100)
        #expect(r.usage.outputTokens == 1150)
        #expect(!r.usage.estimated)
        #expect(r.costUSD == 0.0123)
        await b.shutdown()
    }

    @Test func anAnswerPatternPicksItsGroupAndAMissIsAnInvalidResponse() async throws {
        let b = try shell(
            "printf 'banner\\n<answer>line one\\nline two</answer>\\nbye\\n'",
            ["answer": "pattern", "answer_pattern": "<answer>(.*)</answer>"])
        #expect(try await b.complete(ModelRequest(prompt: "hi")).content == "line one\nline two")
        await b.shutdown()
        let c = try shell("echo nothing here", ["answer": "pattern", "answer_pattern": "<answer>(.*)</answer>"])
        let e = try #require(await failure(c))
        #expect(e.kind == .invalidResponse)
        #expect(e.message.contains("does not match answer_pattern '<answer>(.*)</answer>'"))
        await c.shutdown()
    }

    @Test func stdinCarriesNoneThePromptOrTheRequest() async throws {
        func run(_ stdin: String) async throws -> String {
            let b = try Self.plugins.factory().create("headless-cli", config: ["command": "cat", "protocol": "text", "stdin": .string(stdin)])
            let content = try await b.complete(ModelRequest(prompt: "say hi", model: "m1")).content
            await b.shutdown()
            return content
        }
        #expect(try await run("none") == "")
        #expect(try await run("prompt") == "say hi\n")
        let doc = try JSONValue.parse(try await run("request"))
        #expect(doc["model"]?.stringValue == "m1")
        #expect(doc["messages"]?[0]?["content"]?.stringValue == "say hi")
    }

    @Test func envKeysPassConfigKeysThroughTheEnvironmentNeverArgv() async throws {
        let b = try shell(
            "echo \"token=$MY_TOKEN args=$*\"", ["model": "tok-from-config", "env_keys": ["MY_TOKEN": "model", "UNSET_VAR": "missing"]])
        #expect(try await b.complete(ModelRequest(prompt: "p")).content == "token=tok-from-config args=p\n")
        await b.shutdown()
    }

    /// docs/headless.md's aider instance, as written, through the CLI, with
    /// a stand-in `aider` that prints what aider prints: the answer is the
    /// last block, usage and cost are read, the key reaches it in its
    /// environment; then the same stand-in failing as aider does.
    @Test func theDocsAiderInstanceWorksAsWritten() async throws {
        let doc = try FileSystem.readText(FileSystem.join(TestEnv.root, "docs/headless.md"), limit: 1 << 22)
        let after = try #require(doc.firstRange(of: "An aider-like agent, as a `providers.yaml` instance:"))
        let rest = doc[after.upperBound...]
        let open = try #require(rest.firstRange(of: "```yaml\n"))
        let close = try #require(rest[open.upperBound...].firstRange(of: "```"))
        let dir = TempDir("descartes-dialect-doc")
        let config = dir.write("providers.yaml", String(rest[open.upperBound..<close.lowerBound]))
        _ = dir.write(
            "bin/aider",
            """
            #!/bin/sh
            [ "$OPENAI_API_KEY" = "sk-doc-example-key" ] || { echo "litellm.AuthenticationError: OpenAIException - invalid api key $OPENAI_API_KEY"; exit 0; }
            printf 'Aider v0.86.1\\nMain model: gpt-4o with diff edit format\\n\\n'
            printf 'Tokens: 2.1k sent, 1,150 received. Cost: $0.0123 message, $0.05 session.\\n\\n'
            printf 'Answer to: %s\\n' "$4"
            """, mode: 0o755)
        func run(_ key: String) async -> ProcResult {
            await Proc.descartes(
                ["complete", "--config", config, "-p", "aider", "--json", "--retries", "0", "Fix it"],
                env: ["DESCARTES_PLUGIN_PATH": Self.plugins.path, "OPENAI_API_KEY": key, "PATH": dir.file("bin") + ":/usr/bin:/bin"])
        }
        let ok = await run("sk-doc-example-key")
        #expect(ok.status == 0, "\(ok)")
        let r = try JSONValue.parse(ok.stdout)
        #expect(r["content"]?.stringValue == "Answer to: Fix it", "\(ok.stdout)")
        #expect(r["usage"]?["input_tokens"]?.intValue == 2100)
        #expect(r["usage"]?["output_tokens"]?.intValue == 1150)
        #expect(r["cost_usd"]?.doubleValue == 0.0123, "\(ok.stdout)")
        // The stand-in echoes the wrong key; api_key is secret: masked.
        let bad = await run("wrong-doc-key-77")
        #expect(bad.status == 77, "\(bad)")
        let said = bad.stdout + bad.stderr  // (--json may print the error on stdout)
        #expect(said.contains("authentication"), "\(bad)")
        #expect(said.contains("invalid api key [REDACTED]"), "\(bad)")
        #expect(!bad.stderr.contains("wrong-doc-key-77") && !bad.stdout.contains("wrong-doc-key-77"), "\(bad)")
    }

    @Test func badRulesAreConfigErrorsNamingKeyAndValue() throws {
        func error(_ extra: [String: JSONValue]) -> String {
            do {
                _ = try shell("true", extra)
                return "(created)"
            } catch {
                return "\(error)"
            }
        }
        #expect(error(["error_patterns": ["authentication": "(unclosed"]]).contains("key 'error_patterns.authentication': '(unclosed' is not a POSIX extended regular expression"))
        #expect(error(["error_patterns": ["auth": "x"]]).contains("key 'error_patterns': 'auth' (for pattern 'x') is not an error kind"))
        #expect(error(["exit_codes": ["0": "api"]]).contains("key 'exit_codes': '0' is not an exit status (1 to 255)"))
        #expect(error(["exit_codes": ["2": "oops"]]).contains("key 'exit_codes': 'oops' (for status 2) is not an error kind"))
        #expect(error(["usage_patterns": ["tokens": "x"]]).contains("key 'usage_patterns': 'tokens' is not one of input_tokens, output_tokens, cost_usd"))
        #expect(error(["usage_patterns": ["cost_usd": "[z-a]"]]).contains("key 'usage_patterns.cost_usd': '[z-a]'"))
        #expect(error(["answer": "first_block"]).contains("key 'answer': 'first_block' is not one of all, last_block, pattern"))
        #expect(error(["answer": "pattern"]).contains("key 'answer': 'pattern' needs answer_pattern"))
        #expect(error(["stdin": "file"]).contains("key 'stdin': 'file' is not one of none, prompt, request"))
        #expect(error(["scan": "stdio"]).contains("key 'scan': 'stdio' is not one of stdout, stderr, both"))
        #expect(error(["protocol": "json-lines", "answer": "last_block"]).contains("key 'answer': applies to protocol text only"))
    }
}
