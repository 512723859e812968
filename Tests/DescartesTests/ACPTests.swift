import Descartes
import Glibc
import Testing
import DescartesSupport

/// The Python interpreter that has the official ACP SDK (PyPI
/// `agent-client-protocol`, support/deps.sh test), by its absolute path.
enum ACPPython {
    static let path: String? = {
        let r = Proc.runBlocking(["python3", "-c", "import acp, sys; print(sys.executable)"], timeout: .seconds(60))
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        return r.status == 0 && line.hasPrefix("/") ? line : nil
    }()

    static func require() throws -> String {
        try #require(path, "python3 with the ACP SDK is needed: pip install agent-client-protocol==0.12.1 (support/deps.sh test)")
    }
}

/// The acp plugin driving Tests/Servers/acp_agent.py, a scripted agent built
/// on the official ACP Python SDK (its AgentSideConnection speaks the protocol).
final class ACPHarness: @unchecked Sendable {
    static let plugins = PluginDir().addRepositoryPlugin("acp", library: "acp")

    let state = TempDir("descartes-acp-state")
    let mark = ProcScan.newMark()
    let python: String
    var sideEffects: String { state.file("side-effects.txt") }

    init() throws { python = try ACPPython.require() }

    func config(_ extra: [String: JSONValue] = [:]) -> [String: JSONValue] {
        var c: [String: JSONValue] = [
            "command": .string(python), "args": [.string(FileSystem.join(TestEnv.root, "Tests/Servers/acp_agent.py"))],
            "env": [
                "ACP_TEST_STATE": .string(state.path), "ACP_TEST_FILE": .string(sideEffects), "DESCARTES_TEST_MARK": .string(mark),
            ],
            "kill_grace_ms": 1000, "exit_grace_ms": 1000, "cwd": .string(state.path),
        ]
        for (k, v) in extra { c[k] = v }
        return c
    }

    func backend(_ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
        try Self.plugins.factory().create("acp", config: config(extra))
    }

    var running: [Int32] { ProcScan.marked(mark) }
    func gone() async -> Bool { await ProcScan.eventually { ProcScan.marked(self.mark).isEmpty } }
}

@Suite(.serialized, .timeLimit(.minutes(5))) struct ACPTests {
    @Test func completeStreamsTextThoughtsUsageAndCost() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        let r = try await b.complete(ModelRequest(prompt: "hello there"))
        #expect(r.content == "echo: hello there")
        #expect(r.reasoning == "thinking about hello there")
        #expect(r.finishReason == .stop)
        #expect(r.usage.inputTokens == 11 && r.usage.outputTokens == 5 && r.usage.reasoningTokens == 2)
        #expect(r.costUSD == 0.25)
        #expect(r.metadata["agent"] == "scripted-acp-agent 1.0.0")
        #expect(r.metadata["stop_reason"] == "end_turn")
        #expect(r.metadata["context"]?["size"] == 200000)
        // One process per request without a session, gone after it.
        #expect(await h.gone(), "still running: \(h.running)")

        let c = await collect(b.stream(ModelRequest(prompt: "streamed")))
        #expect(c.error == nil, "\(String(describing: c.error))")
        #expect(c.textDeltas == 2)
        #expect(c.text == "echo: streamed")
        #expect(c.events.contains { if case .reasoningDelta("thinking about streamed") = $0 { return true } else { return false } })
        await b.shutdown()
        #expect(await h.gone())
    }

    /// A conversation outside a session reaches the agent as one text
    /// block before the new message (ACP has no history to hand over), the
    /// system prompt first.
    @Test func historyAndSystemPromptComeFirstOutsideASession() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        var r = ModelRequest(messages: [.user("one"), .assistant("uno"), .user("two")])
        r.systemPrompt = "be brief"
        let out = try await b.complete(r)
        #expect(out.content == "echo: Instructions:\nbe brief\n\nThe conversation so far:\nuser: one\nassistant: uno two")
        await b.shutdown()
    }

    @Test func aSessionKeepsItsProcessAndIsLoadedByANewBackend() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        var first = ModelRequest(prompt: "first")
        first.options = ["session": true]
        let r1 = try await b.complete(first)
        let id = try #require(r1.metadata["session_id"]?.stringValue)
        #expect(r1.metadata["session_spawned"] == true)
        let pids = h.running
        #expect(pids.count == 1)

        var second = ModelRequest(messages: [.user("first"), .assistant(r1.content), .user("second")])
        second.options = ["session_id": .string(id)]
        let r2 = try await b.complete(second)
        // Only the new message went to the live process, which remembers.
        #expect(r2.content == "echo: second (earlier: first)")
        #expect(r2.metadata["session_spawned"] == false)
        #expect(r2.costUSD == 0.25 && r2.metadata["session_cost_usd"] == 0.5)
        #expect(h.running == pids)

        // Another backend (a new host process, say) continues the session
        // with session/load; the history the agent replays while loading is
        // not part of the answer.
        let other = try h.backend()
        var third = ModelRequest(prompt: "third")
        third.options = ["session_id": .string(id), "end_session": true]
        let r3 = try await other.complete(third)
        #expect(r3.content == "echo: third (earlier: first | second)")
        #expect(r3.metadata["session_spawned"] == true)
        await other.shutdown()
        await b.shutdown()
        #expect(await h.gone(), "still running: \(h.running)")
    }

    @Test(arguments: [
        ("ERROR -32000", ProviderError.Kind.authentication, nil as Int?),
        ("ERROR -32603 429", .rateLimited, 429),
        ("ERROR -32603 503", .providerUnavailable, 503),
        ("ERROR -32603", .api, nil),
        ("ERROR -32602", .config, nil),
    ])
    func errorsAreMappedToKinds(prompt: String, kind: ProviderError.Kind, status: Int?) async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: prompt)) }
        #expect(e?.kind == kind, "\(String(describing: e))")
        #expect(e?.status == status)
        #expect(e?.message.contains("answered session/prompt with error") == true, "\(String(describing: e))")
        await b.shutdown()
        #expect(await h.gone())
    }

    @Test func aCrashAfterTextIsNotRunAgain() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        let e = await providerError { _ = try await b.complete(ModelRequest(prompt: "CRASH")) }
        #expect(e?.kind == .process, "\(String(describing: e))")
        #expect(e?.sideEffects == ["written text"])
        #expect(e?.message.contains("it is not run again") == true)
        await b.shutdown()
    }

    @Test func cancellingSendsSessionCancelAndLeavesNothingRunning() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        let task = Task { await collect(b.stream(ModelRequest(prompt: "SLOW"))) }
        #expect(await ProcScan.eventually { !h.running.isEmpty })
        try await Task.sleep(for: .milliseconds(800))
        task.cancel()
        let c = await task.value
        #expect(c.error?.kind == .cancelled, "\(String(describing: c.error))")
        // The agent answered session/cancel (stopReason cancelled) and, its
        // stdin closed, exited.
        #expect(await h.gone(), "still running: \(h.running)")

        // One that ignores session/cancel is stopped after kill_grace_ms.
        let hang = Task { await collect(b.stream(ModelRequest(prompt: "HANG"))) }
        #expect(await ProcScan.eventually { !h.running.isEmpty })
        try await Task.sleep(for: .milliseconds(800))
        hang.cancel()
        #expect(await hang.value.error?.kind == .cancelled)
        #expect(await h.gone(), "still running: \(h.running)")
        await b.shutdown()
    }

    /// A cancelled session turn ends with session/cancel; the session's
    /// process stays and takes the next turn.
    @Test func aCancelledSessionTurnKeepsTheSession() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        var first = ModelRequest(prompt: "one")
        first.options = ["session": true]
        let id = try #require(try await b.complete(first).metadata["session_id"]?.stringValue)
        var slow = ModelRequest(prompt: "SLOW")
        slow.options = ["session_id": .string(id)]
        let task = Task { await collect(b.stream(slow)) }
        try await Task.sleep(for: .milliseconds(800))
        task.cancel()
        #expect(await task.value.error?.kind == .cancelled)
        var next = ModelRequest(prompt: "two")
        next.options = ["session_id": .string(id)]
        let r = try await b.complete(next)
        #expect(r.content == "echo: two (earlier: one)")
        #expect(r.metadata["session_spawned"] == false)
        await b.shutdown()
        #expect(await h.gone())
    }

    @Test func toolCallsPlansAndPermissionsByConfiguration() async throws {
        let h = try ACPHarness()
        // Default: the agent's permission requests are denied.
        let b = try h.backend()
        let denied = try await b.complete(ModelRequest(prompt: "TOOL first"))
        #expect(denied.content == "not allowed")
        #expect(denied.finishReason == .toolDenied)
        #expect(denied.metadata["permission_denials"]?[0]?["tool_name"] == "append line")
        #expect(denied.metadata["tool_calls"]?[0]?["status"] == "failed")
        #expect(!FileSystem.exists(h.sideEffects))

        let allowing = try h.backend(["permissions": "allow"])
        let c = await collect(allowing.stream(ModelRequest(prompt: "TOOL second")))
        let r = try #require(c.response, "\(String(describing: c.error))")
        #expect(r.content == "ran")
        #expect(r.finishReason == .stop)
        #expect(r.metadata["tool_calls"]?[0]?["status"] == "completed")
        #expect(r.metadata["tool_calls"]?[0]?["kind"] == "execute")
        #expect(c.notices.contains { $0.contains("tool call") && $0.contains("append line") && $0.contains("completed") }, "\(c.notices)")
        #expect(try FileSystem.readText(h.sideEffects, limit: 1000) == "second\n")

        let planned = await collect(b.stream(ModelRequest(prompt: "PLAN")))
        #expect(planned.response?.metadata["plan"]?[1]?["content"] == "write the fix")
        #expect(planned.notices.contains { $0.contains("plan: [completed] read the code; [pending] write the fix") }, "\(planned.notices)")
        let cut = try await b.complete(ModelRequest(prompt: "MAXTOKENS"))
        #expect(cut.finishReason == .maxTokens)
        await b.shutdown()
        await allowing.shutdown()
    }

    @Test func healthRunsTheHandshakeAndBadConfigIsRefused() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        let report = try await b.healthCheck()
        #expect(report.message.contains("scripted-acp-agent 1.0.0 answered initialize, session/new and a one-turn request"), "\(report.message)")
        #expect(report.details["checked"] == "turn" && report.details["stop_reason"] == "end_turn", "\(report.details)")
        #expect(report.details["agentCapabilities"]?["loadSession"] == true)
        await b.shutdown()
        #expect(await h.gone())

        // The health turn's prompt scripted, through the agent's environment.
        func every(_ prompt: String, _ extra: [String: JSONValue] = [:]) throws -> any ModelBackend {
            var env = h.config()["env"]?.objectValue ?? [:]
            env["ACP_TEST_EVERY_PROMPT"] = .string(prompt)
            var c = extra
            c["env"] = .object(env)
            return try h.backend(c)
        }
        // The model unreachable: unhealthy, with the error's kind.
        let refused = await providerError { _ = try await every("ERROR -32603 401").healthCheck() }
        #expect(refused?.kind == .authentication && refused?.message.hasPrefix("the health turn failed: ") == true, "\(String(describing: refused))")
        // A tool the agent asks for during the health turn is refused: nothing
        // runs, and the agent still answered (healthy).
        let asking = try await every("TOOL from-health").healthCheck()
        #expect(asking.details["checked"] == "turn")
        #expect(!FileSystem.exists(h.sideEffects), "the health turn ran a tool")
        // health_turn: false: the handshake only, and it says so.
        let handshake = try await every("ERROR -32603 401", ["health_turn": false]).healthCheck()
        #expect(handshake.message.contains("no turn was run (health_turn: false)"), "\(handshake.message)")
        #expect(await h.gone())

        #expect(throws: ProviderError.self) { _ = try h.backend(["permissions": "sometimes"]) }
        let e = await providerError { _ = try h.backend(["api_key": "sk-secret-value-123456"]) }
        #expect(e?.kind == .config && e?.message.contains("api_key_env") == true)
        #expect(e?.message.contains("sk-secret-value") == false)

        // A program that does not speak ACP: the handshake fails, naming it.
        let cat = try h.backend(["command": "/bin/cat", "args": ["/dev/null"]])
        let notACP = await providerError { _ = try await cat.complete(ModelRequest(prompt: "x")) }
        #expect(notACP?.kind == .streamClosed, "\(String(describing: notACP))")
        #expect(notACP?.message.contains("before answering initialize") == true)
        await cat.shutdown()
    }

    // MARK: Approvals (ABI 1.2)

    /// The agent's session/request_permission becomes an APPROVAL event;
    /// the request's policy denies it: the tool does not run, the turn ends
    /// tool_denied, the reason reaches the metadata and a notice.
    @Test(arguments: [false, true])
    func anApprovalAskedAndDeniedByThePolicy(isolated: Bool) async throws {
        let h = try ACPHarness()
        // The backend's own setting would allow it: the request's policy wins.
        let b = try ACPHarness.plugins.factory().create(
            "acp", config: h.config(["permissions": "allow"]), isolation: isolated ? ProviderFactory.Isolation.process() : ProviderFactory.Isolation.inProcess)
        var r = ModelRequest(prompt: "TOOL forbidden")
        r.approval = .denyAll
        let c = await collect(b.stream(r))
        let out = try #require(c.response, "\(String(describing: c.error))")
        #expect(out.content == "not allowed")
        #expect(out.finishReason == .toolDenied)
        #expect(out.metadata["permission_denials"]?[0]?["reason"] == "the approval policy denies every tool use")
        #expect(c.notices.contains { $0.contains("approval: append line(echo forbidden >> $ACP_TEST_FILE) denied") }, "\(c.notices)")
        #expect(!FileSystem.exists(h.sideEffects))
        await b.shutdown()
        #expect(await h.gone())
    }

    @Test func rulesAndAHandlerDecide() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        var allowed = ModelRequest(prompt: "TOOL yes")
        // ACP names no tool: a rule matches the tool call's title or kind,
        // its pattern the input's command.
        allowed.approval = try .rules(["execute(echo yes *)"])
        let r1 = try await b.complete(allowed)
        #expect(r1.content == "ran" && r1.finishReason == .stop)
        var refused = ModelRequest(prompt: "TOOL no")
        refused.approval = try .rules(["execute(echo yes *)", "Read"])
        let r2 = try await b.complete(refused)
        #expect(r2.finishReason == .toolDenied)
        #expect(r2.metadata["permission_denials"]?[0]?["reason"]?.stringValue?.contains("no approval rule allows append line(echo no >> $ACP_TEST_FILE)") == true)

        let seen = Lock<[ApprovalRequest]>([])
        var asked = ModelRequest(prompt: "TOOL handled")
        asked.approval = .handler { q in
            seen.withLock { $0.append(q) }
            try? await Task.sleep(for: .milliseconds(200))  // a person thinking
            return .deny(reason: "not on a Friday")
        }
        let r3 = try await b.complete(asked)
        #expect(r3.finishReason == .toolDenied)
        #expect(r3.metadata["permission_denials"]?[0]?["reason"] == "not on a Friday")
        let q = try #require(seen.withLock { $0.first })
        #expect(q.tool == "append line" && q.kind == "execute")
        #expect(q.input["command"] == "echo handled >> $ACP_TEST_FILE")
        #expect(try FileSystem.readText(h.sideEffects, limit: 1000) == "yes\n")
        await b.shutdown()
    }

    /// Cancelled while the handler has not answered: the agent's permission
    /// request is answered `cancelled`, nothing runs, nothing is left.
    @Test func cancelledWhileAnApprovalIsPending() async throws {
        let h = try ACPHarness()
        let b = try h.backend()
        var r = ModelRequest(prompt: "TOOL never")
        r.approval = .handler { _ in
            try? await Task.sleep(for: .seconds(30))
            return .allow
        }
        let task = Task { await collect(b.stream(r)) }
        #expect(await ProcScan.eventually { !h.running.isEmpty })
        try await Task.sleep(for: .milliseconds(1000))
        task.cancel()
        #expect(await task.value.error?.kind == .cancelled)
        #expect(await h.gone(), "still running: \(h.running)")
        #expect(!FileSystem.exists(h.sideEffects))
        await b.shutdown()
    }

    @Test func theCLIApprovesWithRulesAndRefusesAskWithoutATerminal() async throws {
        let h = try ACPHarness()
        let plugins = PluginDir().addBuilt(provider: "acp")
        let config = TempDir("descartes-acp-cli")
        var yaml = "providers:\n  agent:\n    plugin: acp\n    command: \(h.python)\n"
        yaml += "    args: [\(FileSystem.join(TestEnv.root, "Tests/Servers/acp_agent.py"))]\n"
        yaml += "    env: {ACP_TEST_STATE: \(h.state.path), ACP_TEST_FILE: \(h.sideEffects), DESCARTES_TEST_MARK: \(h.mark)}\n"
        try FileSystem.makeDirectories(config.file("descartes"))
        config.write("descartes/providers.yaml", yaml)
        let env = ["DESCARTES_PLUGIN_PATH": plugins.path, "XDG_CONFIG_HOME": config.path]
        func cli(_ approve: String) async -> ProcResult {
            var e = Environment.current()
            e["NO_COLOR"] = "1"
            for (k, v) in env { e[k] = v }
            return await Proc.run([TestEnv.descartes, "complete", "-p", "agent", "--approve", approve, "TOOL", "cli"], env: e, stdin: "", timeout: .seconds(60))
        }
        let d = await cli("Read")
        #expect(d.status == 77, "\(d)")
        #expect(d.stdout == "not allowed\n", "\(d)")
        #expect(d.stderr.contains("denied append line"), "\(d)")
        let a = await cli("execute(echo cli *)")
        #expect(a.status == 0 && a.stdout == "ran\n", "\(a)")
        let ask = await cli("ask")
        #expect(ask.status == 64 && ask.stderr.contains("stdin is not a terminal"), "\(ask)")
        #expect(try FileSystem.readText(h.sideEffects, limit: 1000) == "cli\n")
        #expect(await h.gone())
    }

    /// The gateway applies its configured policy (server.approvals) to an
    /// ACP instance; a bad rule is refused at start naming the file.
    @Test func theGatewayAppliesItsApprovalPolicy() async throws {
        let h = try ACPHarness()
        let plugins = PluginDir().addBuilt(provider: "acp")
        let dir = TempDir("descartes-acp-gateway")
        var yaml = "providers:\n  agent:\n    plugin: acp\n    command: \(h.python)\n"
        yaml += "    args: [\(FileSystem.join(TestEnv.root, "Tests/Servers/acp_agent.py"))]\n"
        yaml += "    env: {ACP_TEST_STATE: \(h.state.path), ACP_TEST_FILE: \(h.sideEffects), DESCARTES_TEST_MARK: \(h.mark)}\n"
        yaml += "    permissions: allow\n"
        let good = dir.write("providers.yaml", yaml + "server:\n  approvals:\n    agent: [Read]\n")
        let bad = dir.write("bad.yaml", yaml + "server:\n  approvals:\n    agent: ['Bash(git *']\n")
        let driver = """
            import json, os, subprocess, sys, urllib.request
            gw = subprocess.Popen([os.environ["DESCARTES"], "serve", "--config", sys.argv[1], "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            url = gw.stdout.readline().decode().split()[-1]
            try:
                body = json.dumps({"model": "agent", "messages": [{"role": "user", "content": "TOOL gateway"}]}).encode()
                r = urllib.request.urlopen(urllib.request.Request(url + "/v1/chat/completions", body, {"content-type": "application/json"}), timeout=60)
                doc = json.load(r)
                print(doc["choices"][0]["message"]["content"], doc["choices"][0]["finish_reason"])
            finally:
                gw.terminate()
                gw.wait(timeout=20)
            """
        var env = Environment.current()
        env["DESCARTES"] = TestEnv.descartes
        env["DESCARTES_PLUGIN_PATH"] = plugins.path
        env["HOME"] = "/nonexistent"
        let r = await Proc.run(["python3", "-c", driver, good], env: env, timeout: .seconds(120))
        #expect(r.status == 0, "\(r)")
        // The backend would allow it; the gateway's rules (Read only) deny.
        #expect(r.stdout.hasPrefix("not allowed "), "\(r)")
        #expect(!FileSystem.exists(h.sideEffects))
        let refused = await Proc.descartes(["serve", "--config", bad, "--listen", "127.0.0.1:0"], env: ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"])
        #expect(refused.status == 78, "\(refused)")
        #expect(refused.stderr.contains("bad.yaml") && refused.stderr.contains("server.approvals.agent"), "\(refused)")
        #expect(await h.gone())
    }
}
