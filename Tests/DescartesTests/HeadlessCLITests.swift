import Descartes
import Glibc
import Testing
import DescartesSupport

/// The generic headless adapter (`headless-cli`) through the built
/// `libdescartes-headless-cli.so`, with child programs that behave well and
/// badly (Tests/Fixtures/headless). These also exercise the plugin kit's
/// process runtime: spawning, line framing, deadlines, process groups,
/// reaping, the environment and the sandbox.
@Suite(.serialized, .timeLimit(.minutes(3))) struct HeadlessCLITests {
    static let plugins = PluginDir().addRepositoryPlugin("headless-cli", library: "headless-cli")

    func backend(_ config: [String: JSONValue], instance: String? = nil) throws -> any ModelBackend {
        try Self.plugins.factory().create("headless-cli", config: config, instance: instance)
    }

    func script(_ name: String, protocol p: String = "json-lines", _ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        var c: [String: JSONValue] = ["command": .string(HeadlessFixtures.path(name)), "protocol": .string(p)]
        for (k, v) in extra { c[k] = v }
        return try backend(c)
    }

    // MARK: json-lines, behaving well

    @Test func jsonLinesStreamsEventsAsTheyCome() async throws {
        let b = try script("echo_events.py", ["args": ["--model", "{model}"]])
        var request = ModelRequest(prompt: "one two three", model: "m-1")
        request.options = ["echo_request": true]
        let c = await collect(b.stream(request))
        let r = try #require(c.response, "\(String(describing: c.error))")
        #expect(c.text == "one two three")
        #expect(c.textDeltas == 3)
        #expect(c.events.first == .start(id: "echo-1", model: "m-1"))
        #expect(r.reasoning == "echoing 3 words")
        #expect(r.finishReason == .stop)
        #expect(r.usage.inputTokens == 13 && r.usage.outputTokens == 3)
        #expect(r.costUSD == 0.001)
        // {model} was substituted in argv; the request arrived whole on stdin.
        #expect(r.metadata["argv"] == ["--model", "m-1"])
        #expect(r.metadata["request"]?["messages"]?[0]?["content"] == "one two three")
        #expect(r.metadata["request"]?["model"] == "m-1")
        await b.shutdown()
    }

    @Test func jsonLinesToolCallsWholeAndStreamed() async throws {
        let b = try script("echo_events.py")
        var request = ModelRequest(prompt: "call them")
        request.options = ["tools": 2]
        let r = try await b.complete(request)
        #expect(r.finishReason == .toolUse)
        #expect(r.toolCalls.map(\.name) == ["tool_0", "tool_1"])
        #expect(r.toolCalls[1].parsedArguments == ["n": 1])
        request.options = ["stream_tool": true]
        let s = try await b.complete(request)
        #expect(s.toolCalls == [ToolCall(id: "call_s", name: "streamed", arguments: #"{"a":1}"#)])
        await b.shutdown()
    }

    @Test func jsonLinesErrorEventKeepsKindStatusAndRetryAfter() async throws {
        let b = try script("echo_events.py")
        var request = ModelRequest(prompt: "x")
        request.options = [
            "error": [
                "kind": "rate_limited", "message": "slow down", "status": 429, "retry_after_ms": 1500, "provider_type": "rate_limit_error",
                "side_effects": [],
            ]
        ]
        let e = await providerError { _ = try await b.complete(request) }
        #expect(e?.kind == .rateLimited)
        #expect(e?.status == 429)
        #expect(e?.retryAfter == .milliseconds(1500))
        #expect(e?.providerType == "rate_limit_error")
        #expect(e?.message == "slow down")
        #expect(e?.sideEffects == [])  // the program said it had done nothing: retryable
        #expect(e?.isRetryable == true)
        // Without "side_effects" the program may have acted (an agent): not repeatable.
        request.options = ["error": ["kind": "rate_limited", "message": "slow down", "status": 429]]
        let acted = await providerError { _ = try await b.complete(request) }
        #expect(acted?.message.hasPrefix("slow down (the turn had already started echo_events.py, which may have acted") == true, "\(String(describing: acted))")
        #expect(acted?.isRetryable == false)
        await b.shutdown()
    }

    // MARK: Badly behaved children

    @Test func garbageOnStdoutIsAnInvalidResponseWithCleanDiagnostics() async throws {
        let b = try script("garbage.sh")
        let c = await collect(b.stream(ModelRequest(prompt: "x")))
        #expect(c.error?.kind == .invalidResponse)
        #expect(c.error?.message.contains("4 stdout lines that are not JSON") == true, "\(String(describing: c.error))")
        // Escape codes stripped, the lines kept as notices.
        #expect(c.notices.contains { $0.contains("WARNING: this tool prints colours") })
        #expect(c.notices.contains { $0.contains("Loading model...") && $0.contains("done") })
        #expect(!c.notices.contains { $0.contains("\u{1B}") })
        await b.shutdown()
    }

    @Test func exitOneWithStderrIsAProcessErrorCarryingTheMessage() async throws {
        let b = try script("fail.sh")
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "x")) }
        #expect(e?.kind == .process)
        #expect(e?.status == 1)
        #expect(e?.message.contains("exited with status 1") == true)
        #expect(e?.message.contains(#"error: model "nope" is not installed"#) == true, "\(String(describing: e))")
        #expect(e?.message.contains("\u{1B}") == false)
        await b.shutdown()
    }

    @Test func aSignalIsReportedWithItsName() async throws {
        let b = try script("signal.sh")
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "x")) }
        #expect(e?.kind == .process)
        #expect(e?.status == 128 + 11)
        #expect(e?.message.contains("killed by signal 11 (SIGSEGV)") == true, "\(String(describing: e))")
        #expect(e?.message.contains("about to crash") == true)
        await b.shutdown()
    }

    @Test func aHangEndsAtTheDeadlineWithItsProcessGroupGone() async throws {
        let mark = ProcScan.newMark()
        let b = try script("hang.sh", ["env": ["DESCARTES_TEST_MARK": .string(mark)], "kill_grace_ms": 500])
        var request = ModelRequest(prompt: "x")
        request.deadlines.total = .milliseconds(1500)
        let start = ContinuousClock.now
        let c = await collect(b.stream(request))
        let elapsed = ContinuousClock.now - start
        #expect(c.text == "partial answer")
        #expect(c.error?.kind == .timeout)
        #expect(c.error?.deadline == "total")
        // Generous: the deadline is 1.5 s; anything under 10 s proves it did
        // not wait for the 300 s sleep.
        expectWithin(elapsed, .seconds(10))
        // The shell and its `sleep` child (same group) are both gone.
        #expect(await ProcScan.eventually { ProcScan.marked(mark).isEmpty }, "still running: \(ProcScan.marked(mark))")
        await b.shutdown()
    }

    @Test func cancellingTheStreamKillsTheProcessGroup() async throws {
        let mark = ProcScan.newMark()
        let b = try script("hang.sh", ["env": ["DESCARTES_TEST_MARK": .string(mark)]])
        for try await event in b.stream(ModelRequest(prompt: "x")) {
            if case .textDelta = event { break }  // leaving the loop cancels the request
        }
        #expect(await ProcScan.eventually { ProcScan.marked(mark).isEmpty }, "still running: \(ProcScan.marked(mark))")
        await b.shutdown()
    }

    @Test func shutdownEndsRunningChildren() async throws {
        let mark = ProcScan.newMark()
        let b = try script("hang.sh", ["env": ["DESCARTES_TEST_MARK": .string(mark)], "kill_grace_ms": 500])
        let stream = b.stream(ModelRequest(prompt: "x"))
        let consumer = Task { await collect(stream) }
        #expect(await ProcScan.eventually { ProcScan.marked(mark).count == 2 })  // the shell and its sleep
        let start = ContinuousClock.now
        await b.shutdown()
        expectWithin(ContinuousClock.now - start, .seconds(10))
        let c = await consumer.value
        #expect(c.error?.kind == .cancelled, "\(String(describing: c.error))")
        #expect(await ProcScan.eventually { ProcScan.marked(mark).isEmpty }, "still running: \(ProcScan.marked(mark))")
    }

    @Test func aHugeSingleLineArrivesWhole() async throws {
        let b = try script("huge_line.py", ["args": ["8"]])
        let r = try await b.complete(ModelRequest(prompt: "x"))
        #expect(r.content.utf8.count == 8 << 20)
        #expect(r.metadata["length"] == .integer(8 << 20))
        #expect(r.content.hasPrefix("0123456789abcdef0123"))
        await b.shutdown()
    }

    @Test func outputSplitMidLineAndMidCharacterIsReassembled() async throws {
        let b = try script("split_writes.py")
        let r = try await b.complete(ModelRequest(prompt: "x"))
        #expect(r.content == "héllo wörld 😀")
        #expect(r.usage.inputTokens == 3 && r.usage.outputTokens == 2)
        await b.shutdown()
    }

    @Test func aGrandchildHoldingThePipeDoesNotHoldTheAnswer() async throws {
        let mark = ProcScan.newMark()
        let b = try script("grandchild.sh", protocol: "text", ["env": ["DESCARTES_TEST_MARK": .string(mark)]])
        let start = ContinuousClock.now
        let r = try await b.complete(ModelRequest(prompt: "x"))
        // The grandchild sleeps 300 s with stdout open; the answer ends when
        // the child exits plus the drain period (0.5 s).
        expectWithin(ContinuousClock.now - start, .seconds(20))
        #expect(r.content == "answer from the child\n")
        #expect(await ProcScan.eventually { ProcScan.marked(mark).isEmpty }, "still running: \(ProcScan.marked(mark))")
        await b.shutdown()
    }

    @Test func aChildWritingTooMuchIsKilled() async throws {
        let b = try backend(["command": "yes", "protocol": "text", "max_output_mb": 1])
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "x")) }
        #expect(e?.kind == .process)
        #expect(e?.message.contains("more output than allowed") == true, "\(String(describing: e))")
        await b.shutdown()
    }

    @Test func aChildThatNeverReadsStdinDoesNotBreakTheHost() async throws {
        // 4 MiB of prompt into a pipe nobody reads: EPIPE, not SIGPIPE.
        let b = try backend(["command": "true", "protocol": "text"])
        let r = try await b.complete(ModelRequest(prompt: String(repeating: "x", count: 4 << 20)))
        #expect(r.content == "")
        await b.shutdown()
    }

    // MARK: Text protocol

    @Test func textProtocolTemplatesThePromptAndStripsEscapes() async throws {
        // (printf takes no `--` after its format: end_options off.)
        let b = try backend([
            "command": "printf", "protocol": "text", "args": [#"\033[1mbold\033[0m %s|%s"#, "{prompt}", "{model}"], "model": "tiny",
            "end_options": false,
        ])
        let c = await collect(b.stream(ModelRequest(prompt: "hello there")))
        let r = try #require(c.response, "\(String(describing: c.error))")
        #expect(r.content == "bold hello there|tiny")
        #expect(r.usage.estimated)
        #expect(r.model == "tiny")
        await b.shutdown()
    }

    @Test func textProtocolSendsTheConversationOnStdin() async throws {
        let b = try backend(["command": "cat", "protocol": "text"])
        let r = try await b.complete(
            ModelRequest(messages: [.system("Be brief."), .user("Hi"), .assistant("Hello!"), .user("Bye")]))
        #expect(r.content == "Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Bye\n")
        await b.shutdown()
    }

    // MARK: Sandbox, environment, resolution

    @Test func theChildRunsWithNoNewPrivsAndItsLimits() async throws {
        let b = try backend([
            "command": "cat", "args": ["/proc/self/status", "/proc/self/limits"], "protocol": "text",
            "limit_open_files": 64, "limit_cpu_seconds": 30, "limit_file_size_mb": 1, "nice": 7,
        ])
        let r = try await b.complete(ModelRequest(prompt: "x"))
        let lines = r.content.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("NoNewPrivs:") && $0.hasSuffix("1") })
        func limit(_ name: String) -> [Substring]? {
            lines.first { $0.hasPrefix(name) }.map { $0.dropFirst(name.count).split(separator: " ") }
        }
        #expect(limit("Max open files")?.prefix(2) == ["64", "64"])
        #expect(limit("Max cpu time")?.prefix(2) == ["30", "31"])
        #expect(limit("Max file size")?.prefix(2) == ["1048576", "1048576"])
        await b.shutdown()

        // Niceness: field 19 of /proc/self/stat.
        let niced = try backend(["command": "cat", "args": ["/proc/self/stat"], "protocol": "text", "nice": 7])
        let stat = try await niced.complete(ModelRequest(prompt: "x")).content
        let fields = stat[stat.lastIndex(of: ")")!...].split(separator: " ")
        #expect(fields[17] == "7", "\(stat)")
        await niced.shutdown()

        let off = try backend(["command": "cat", "args": ["/proc/self/status"], "protocol": "text", "no_new_privs": false])
        let r2 = try await off.complete(ModelRequest(prompt: "x"))
        #expect(r2.content.split(separator: "\n").contains { $0.hasPrefix("NoNewPrivs:") && $0.hasSuffix("0") })
        await off.shutdown()
    }

    @Test func workingDirectoryAndPATHLookup() async throws {
        let dir = TempDir("descartes-cwd")
        let b = try backend(["command": "pwd", "protocol": "text", "cwd": .string(dir.path)])
        let r = try await b.complete(ModelRequest(prompt: "x"))
        #expect(r.content == dir.path + "\n")
        await b.shutdown()

        // Not found: config (never retried), naming what was searched.
        let missing = try backend(["command": "descartes-no-such-program", "protocol": "text"])
        let e = await providerError { _ = try await missing.complete(ModelRequest(prompt: "x")) }
        #expect(e?.kind == .config)
        #expect(e?.isRetryable == false)
        #expect(e?.message.contains("not found in PATH") == true)

        // A relative command is refused when the backend is created.
        let relative = await providerError { _ = try backend(["command": "./echo_events.py"]) }
        #expect(relative?.kind == .config)

        // A relative PATH entry is ignored even when it holds the program.
        let cwd = FileSystem.currentDirectory()
        let fixtures = FileSystem.join(TestEnv.root, "Tests/Fixtures/headless")
        if fixtures.hasPrefix(cwd + "/") {
            let rel = String(fixtures.dropFirst(cwd.count + 1))
            let b2 = try backend(["command": "echo_events.py", "env": ["PATH": .string("\(rel)::/usr/bin:/bin")]])
            let e2 = await providerError { _ = try await b2.complete(ModelRequest(prompt: "x")) }
            #expect(e2?.kind == .config)
            #expect(e2?.message.contains("2 empty or relative entries ignored") == true, "\(String(describing: e2))")
            let b3 = try backend(["command": "echo_events.py", "env": ["PATH": .string("\(fixtures):/usr/bin:/bin")]])
            #expect(try await b3.complete(ModelRequest(prompt: "found")).content == "found")
        }
    }

    @Test func theEnvironmentIsScrubbedThroughTheCLI() async throws {
        let r = await Proc.descartes(
            [
                "complete", "-p", "headless-cli", "--set", "command=env", "--set", "protocol=text",
                "--set", "pass_env=DESCARTES_TEST_PASS_*", "--set", "env=DESCARTES_TEST_SET=set-value", "x",
            ],
            env: [
                "DESCARTES_PLUGIN_PATH": Self.plugins.path, "OPENAI_API_KEY": "sk-test-not-for-children",
                "ANTHROPIC_AUTH_TOKEN": "tok-not-for-children", "CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli",
                "DESCARTES_TEST_PASS_TOKEN": "kept", "DESCARTES_TEST_PLAIN": "visible",
            ])
        #expect(r.status == 0, "\(r)")
        let vars = Set(r.stdout.split(separator: "\n").map(String.init))
        #expect(vars.contains("DESCARTES_TEST_PLAIN=visible"))
        #expect(vars.contains("DESCARTES_TEST_PASS_TOKEN=kept"))
        #expect(vars.contains("DESCARTES_TEST_SET=set-value"))
        #expect(!r.stdout.contains("sk-test-not-for-children"))
        #expect(!r.stdout.contains("tok-not-for-children"))
        #expect(!vars.contains { $0.hasPrefix("CLAUDECODE=") || $0.hasPrefix("CLAUDE_CODE_") })
    }

    // MARK: Scale and hygiene

    @Test func oneThreadCarriesManyChildrenAndNoneIsLeftUnreaped() async throws {
        let instance = "conc-\(UInt32.random(in: 0...99999))"
        // `sleep` under a name of this test's own, so the zombie check below
        // counts this test's children only.
        let dir = TempDir("descartes-conc")
        let sleeper = dir.file("sl-\(instance)")
        try #require(symlink("/bin/sleep", sleeper) == 0)
        let b = try backend(["command": .string(sleeper), "args": ["1"], "protocol": "text"], instance: instance)
        let threadName = "dp-" + String(instance.prefix(12))
        let sampler = Task {
            var most = 0
            while !Task.isCancelled {
                most = max(most, ProcScan.threads(named: threadName))
                try? await Task.sleep(for: .milliseconds(100))
            }
            return most
        }
        try await withThrowingTaskGroup(of: ModelResponse.self) { group in
            for _ in 0..<24 { group.addTask { try await b.complete(ModelRequest(prompt: "x")) } }
            for try await r in group { #expect(r.finishReason == .stop) }
        }
        sampler.cancel()
        #expect(await sampler.value == 1)
        await b.shutdown()
        // The thread ends right after shutdown's answer.
        #expect(await ProcScan.eventually(.seconds(5)) { ProcScan.threads(named: threadName) == 0 })
        let name = FileSystem.basename(sleeper)
        #expect(await ProcScan.eventually(.seconds(5)) { ProcScan.zombieChildren(named: name).isEmpty }, "zombies: \(ProcScan.zombieChildren(named: name))")
    }

    @Test func healthCheckRunsTheProgram() async throws {
        let b = try backend(["command": "python3", "health_args": ["--version"]])
        let h = try await b.healthCheck()
        #expect(h.message.hasPrefix("Python 3"))
        let plain = try backend(["command": "python3"])
        #expect(try await plain.healthCheck().message.hasSuffix("python3 is executable"))
        await b.shutdown()
    }
}
