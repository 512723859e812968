import Descartes
import Glibc
import Testing
import DescartesSupport

/// Conversations: the SQLite store, `complete -c` and `--conversation`,
/// `descartes conversations`, and `descartes chat` (through a pipe, and as a
/// person types it in a terminal: tmux).
@Suite struct ConversationTests {
    static let key = "sk-conv-openai-99887766"
    let plugins = PluginDir().addManifest("openai").addEcho()

    /// The CLI's environment: the plugins, a data directory of the test's own, the loopback server.
    func env(_ data: TempDir, _ server: ServerSlot? = nil) -> [String: String] {
        var e = ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent", "XDG_DATA_HOME": data.path]
        if let server {
            e["OPENAI_ENDPOINT"] = "\(server.url)/v1"
            e["OPENAI_API_KEY"] = Self.key
        }
        return e
    }

    static func answer(_ text: String) -> ScriptedServer.Response {
        .json([
            "id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [["index": 0, "message": ["role": "assistant", "content": .string(text)], "finish_reason": "stop"]],
            "usage": ["prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7],
        ])
    }

    static func chunk(_ content: String, finish: String? = nil) -> String {
        "data: " + #"{"id":"c1","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":\#(JSONValue.string(content).jsonText)},"finish_reason":\#(finish.map { "\"\($0)\"" } ?? "null")}]}"# + "\n\n"
    }

    /// A streamed answer: `first` at once, `rest` after `pause` ms.
    static func streamed(_ first: String, _ rest: String, pause: Int = 0) -> ScriptedServer.Response {
        ScriptedServer.Response([
            "status": 200, "framing": "chunked", "headers": [["content-type", "text/event-stream"]],
            "chunks": [
                ["data": .string(chunk(first)), "delay_ms": 0],
                ["data": .string(chunk(rest) + chunk("", finish: "stop") + "data: [DONE]\n\n"), "delay_ms": .integer(pause)],
            ],
        ])
    }

    /// Each request's messages as "role: content".
    static func conversations(_ server: ServerSlot) async throws -> [[String]] {
        try await server.requests().filter { $0.path.hasSuffix("/chat/completions") }.map { r in
            (r.json?["messages"]?.arrayValue ?? []).map { "\($0["role"]?.stringValue ?? ""): \($0["content"]?.stringValue ?? "")" }
        }
    }

    // MARK: The store

    @Test func theStoreKeepsMessagesWithToolCallsAndUsage() throws {
        let dir = TempDir("descartes-conv")
        let store = ConversationStore(file: dir.file("sub/conversations.db"))
        #expect(try store.list().isEmpty)
        #expect(try store.latest() == nil)
        #expect(!FileSystem.exists(dir.file("sub/conversations.db")), "reading makes no file")
        var c = try store.create(provider: "openai", system: "Be brief", title: "\n  What is 2+2?  \nsecond line", unixMS: 1_000)
        #expect(c.title == "What is 2+2?")
        #expect(ConversationStore.isValidID(c.id))
        let call = ToolCall(id: "call_1", name: "add", arguments: #"{"a":2,"b":2}"#)
        c.model = "gpt-4o-mini"
        c.agentSession = "sess-1"
        try store.append(
            [
                StoredMessage(Message(role: .user, content: "What is 2+2?"), unixMS: 1_000),
                StoredMessage(
                    Message(role: .assistant, content: "", toolCalls: [call]), usage: Usage(inputTokens: 9, outputTokens: 3), provider: "openai",
                    model: "gpt-4o-mini", unixMS: 1_500),
                StoredMessage(Message(role: .tool, content: "4", toolCallID: "call_1"), unixMS: 1_600),
            ], to: c)
        let back = try #require(try store.conversation(c.id))
        #expect(back.messageCount == 3 && back.model == "gpt-4o-mini" && back.agentSession == "sess-1" && back.system == "Be brief")
        #expect(back.updatedUnixMS == 1_600)
        let messages = try store.messages(c.id)
        #expect(messages.map(\.message.role) == [.user, .assistant, .tool])
        #expect(messages[1].message.toolCalls == [call])
        #expect(messages[1].usage?.outputTokens == 3)
        #expect(messages[2].message.toolCallID == "call_1")
        let other = try store.create(provider: "echo", system: nil, title: "later", unixMS: 2_000)
        #expect(try store.latest()?.id == other.id)
        #expect(try store.list().map(\.id) == [other.id, c.id])
        #expect(try store.delete(c.id))
        #expect(try !store.delete(c.id))
        #expect(try store.messages(c.id).isEmpty)
        var mode = stat()
        stat(dir.file("sub/conversations.db"), &mode)
        #expect(mode.st_mode & 0o777 == 0o600)
    }

    /// A file of a newer schema is refused, not written.
    @Test func aNewerSchemaIsRefused() async throws {
        let dir = TempDir("descartes-conv")
        let file = dir.file("conversations.db")
        _ = try ConversationStore(file: file).create(provider: "echo", system: nil, title: "x", unixMS: 1)
        let r = await Proc.run(["python3", "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA user_version = 7'); c.commit()", file])
        #expect(r.status == 0, "\(r)")
        #expect(throws: ConversationStoreError.self) { try ConversationStore(file: file).list() }
        do { _ = try ConversationStore(file: file).list() } catch { #expect(error.message.contains("schema version 7"), "\(error)") }
    }

    /// The gateway's stored responses: a response continues another
    /// (appended at the conversation's tip, a branch otherwise), is its
    /// owner's only, and deleting one removes the messages no other
    /// response needs; responses older than the cutoff are purged as
    /// another is stored. A version 1 file gains the table.
    @Test func storedResponsesContinueBranchDeleteAndPurge() async throws {
        let dir = TempDir("descartes-conv")
        let file = dir.file("responses.db")
        let store = ConversationStore(file: file)
        _ = try store.create(provider: "echo", system: nil, title: "x", unixMS: 1)
        let v1 = await Proc.run([
            "python3", "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('DROP TABLE responses'); c.execute('PRAGMA user_version = 1'); c.commit()",
            file,
        ])
        #expect(v1.status == 0, "\(v1)")
        let store2 = ConversationStore(file: file)
        func turn(_ q: String, _ a: String, at t: Int) -> [StoredMessage] { [StoredMessage(.user(q), unixMS: t), StoredMessage(.assistant(a), unixMS: t)] }
        func texts(_ r: StoredResponse) throws -> [String] { try store2.messages(r.conversationID, limit: r.messageCount).map(\.message.content) }
        func save(_ id: String, _ owner: String, _ t: [StoredMessage], after previous: StoredResponse?, at ms: Int, purge: Int? = nil) throws -> StoredResponse {
            let prior = try previous.map { try store2.messages($0.conversationID, limit: $0.messageCount) } ?? []
            try store2.storeResponse(
                StoredResponse(id: id, owner: owner, createdUnixMS: ms, response: "{\"id\":\"\(id)\"}"), turn: t, previous: previous, prior: prior,
                provider: "upstream", model: "m", system: nil, purgeBeforeUnixMS: purge)
            return try #require(try store2.response(id, owner: owner))
        }
        let day = 86_400_000
        let r1 = try save("resp_1", "key:a", turn("q1", "a1", at: day), after: nil, at: day)
        #expect(try store2.response("resp_1", owner: "key:b") == nil)
        #expect(r1.response == "{\"id\":\"resp_1\"}" && r1.messageCount == 2)
        let r2 = try save("resp_2", "key:a", turn("q2", "a2", at: 2 * day), after: r1, at: 2 * day)
        #expect(r2.conversationID == r1.conversationID, "the tip is appended to")
        #expect(try texts(r2) == ["q1", "a1", "q2", "a2"])
        let r3 = try save("resp_3", "key:a", turn("q3", "a3", at: 3 * day), after: r1, at: 3 * day)
        #expect(r3.conversationID != r1.conversationID, "not the tip: a branch")
        #expect(try texts(r3) == ["q1", "a1", "q3", "a3"])
        #expect(try !store2.deleteResponse("resp_2", owner: "key:b"))
        #expect(try store2.deleteResponse("resp_2", owner: "key:a"))
        #expect(try store2.response("resp_2", owner: "key:a") == nil)
        #expect(try store2.messages(r1.conversationID).map(\.message.content) == ["q1", "a1"], "resp_2's turn is gone, resp_1's kept")
        // Now resp_1 is the tip again.
        let r4 = try save("resp_4", "key:a", turn("q4", "a4", at: 4 * day), after: r1, at: 4 * day)
        #expect(r4.conversationID == r1.conversationID)
        // Stored on day 40 with a 30-day retention: resp_1 (day 1) and
        // resp_3 (day 3) go; resp_4's conversation was updated on day 4: it goes too.
        _ = try save("resp_5", "key:a", turn("q5", "a5", at: 40 * day), after: nil, at: 40 * day, purge: 10 * day)
        for gone in ["resp_1", "resp_3", "resp_4"] { #expect(try store2.response(gone, owner: "key:a") == nil, "\(gone)") }
        #expect(try store2.conversation(r3.conversationID) == nil && store2.messages(r1.conversationID).isEmpty)
        #expect(try store2.response("resp_5", owner: "key:a") != nil)
        #expect(try store2.deleteResponse("resp_5", owner: "key:a"))
        #expect(try store2.list().isEmpty, "every conversation is gone (the first one, made before any response, was purged too)")
    }

    /// Two processes recording at once (the file created by both): no turn lost.
    @Test func twoProcessesRecordAtOnce() async throws {
        let data = TempDir("descartes-conv")
        let env = env(data)
        let perProcess = 12
        let script = (0..<perProcess).map { i in "\"$D\" complete -p echo \"from $1 number \(i)\" >/dev/null || exit 1" }.joined(separator: "\n")
        async let a = Proc.run(["sh", "-c", script, "sh", "A"], env: Environment.current().merging(env.merging(["D": TestEnv.descartes]) { $1 }) { $1 })
        async let b = Proc.run(["sh", "-c", script, "sh", "B"], env: Environment.current().merging(env.merging(["D": TestEnv.descartes]) { $1 }) { $1 })
        let (ra, rb) = await (a, b)
        #expect(ra.status == 0 && rb.status == 0, "\(ra)\n\(rb)")
        #expect(!ra.stderr.contains("not recorded") && !rb.stderr.contains("not recorded"), "\(ra.stderr)\(rb.stderr)")
        let all = try ConversationStore(file: data.file("descartes/conversations.db")).list()
        #expect(all.count == 2 * perProcess)
        #expect(Set(all.map(\.title)).count == 2 * perProcess)
        #expect(all.allSatisfy { $0.messageCount == 2 })
    }

    // MARK: complete

    @Test func completeContinuesTheLatestOrANamedConversation() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [Self.answer("Paris."), Self.answer("About 2.1 million."), Self.answer("Lyon.")]])
        let data = TempDir("descartes-conv")
        let env = env(data, server)
        let first = await Proc.descartes(["complete", "-p", "openai", "--system", "Answer in one line", "Capital of France?"], env: env)
        #expect(first.status == 0, "\(first)")
        #expect(first.stdout == "Paris.\n")
        let second = await Proc.descartes(["complete", "-p", "openai", "-c", "--json", "Its population?"], env: env)
        #expect(second.status == 0, "\(second)")
        let id = try #require(try JSONValue.parse(second.stdout)["conversation_id"]?.stringValue)
        // A new conversation beside it; --conversation goes back to the first.
        let other = await Proc.descartes(["complete", "-p", "echo", "unrelated"], env: env)
        #expect(other.status == 0, "\(other)")
        let third = await Proc.descartes(["complete", "-p", "openai", "--conversation", id, "And its second city?"], env: env)
        #expect(third.status == 0, "\(third)")
        #expect(third.stdout == "Lyon.\n")
        let sent = try await Self.conversations(server)
        #expect(sent.count == 3)
        #expect(sent[1] == ["system: Answer in one line", "user: Capital of France?", "assistant: Paris.", "user: Its population?"], "\(sent)")
        #expect(sent[2].suffix(3) == ["user: Its population?", "assistant: About 2.1 million.", "user: And its second city?"], "\(sent)")
        #expect(sent[2].first == "system: Answer in one line", "the stored system prompt goes on")
        let stored = try #require(try ConversationStore(file: data.file("descartes/conversations.db")).conversation(id))
        #expect(stored.messageCount == 6 && stored.provider == "openai" && stored.model == "gpt-4o-mini" && stored.title == "Capital of France?")
        for r in [first, second, third] { #expect(!r.stdout.contains(Self.key) && !r.stderr.contains(Self.key)) }
    }

    /// `--no-history` and `DESCARTES_NO_HISTORY=1` write nothing: no file
    /// for a fresh data directory, and a continued conversation only read.
    @Test func noHistoryRecordsNothing() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [Self.answer("Paris."), Self.answer("Lyon."), Self.answer("Nice.")]])
        let data = TempDir("descartes-conv")
        var env = env(data, server)
        let db = data.file("descartes/conversations.db")
        let off = await Proc.descartes(["complete", "-p", "openai", "--no-history", "--json", "Capital of France?"], env: env)
        #expect(off.status == 0, "\(off)")
        #expect(try JSONValue.parse(off.stdout)["conversation_id"] == .null)
        #expect(!FileSystem.exists(db), "--no-history created \(db)")
        env["DESCARTES_NO_HISTORY"] = "1"
        let offByEnv = await Proc.descartes(["complete", "-p", "openai", "Second city?"], env: env)
        #expect(offByEnv.status == 0, "\(offByEnv)")
        #expect(!FileSystem.exists(db), "DESCARTES_NO_HISTORY=1 created \(db)")
        env["DESCARTES_NO_HISTORY"] = "0"
        let on = await Proc.descartes(["complete", "-p", "openai", "--json", "Third?"], env: env)
        #expect(on.status == 0, "\(on)")
        let id = try #require(try JSONValue.parse(on.stdout)["conversation_id"]?.stringValue)
        #expect(try ConversationStore(file: db).conversation(id)?.messageCount == 2)
    }

    @Test func unknownOrMissingConversationsAreClearErrors() async throws {
        let data = TempDir("descartes-conv")
        let env = env(data)
        let none = await Proc.descartes(["complete", "-p", "echo", "-c", "hi"], env: env)
        #expect(none.status == 78, "\(none)")
        #expect(none.stderr.contains("-c: no conversation to continue in \(data.path)/descartes/conversations.db"), "\(none.stderr)")
        let unknown = await Proc.descartes(["complete", "-p", "echo", "--conversation", "01nosuchconversation000000", "hi"], env: env)
        #expect(unknown.status == 78, "\(unknown)")
        #expect(unknown.stderr.contains("--conversation 01nosuchconversation000000: no such conversation"), "\(unknown.stderr)")
        let both = await Proc.descartes(["complete", "-p", "echo", "-c", "--conversation", "x", "hi"], env: env)
        #expect(both.status == 64, "\(both)")
        let withSession = await Proc.descartes(["complete", "-p", "echo", "-c", "--session", "new", "hi"], env: env)
        #expect(withSession.status == 64, "\(withSession)")
        #expect(withSession.stderr.contains("give one of them"), "\(withSession.stderr)")
    }

    /// With an agent that has sessions, the conversation goes on in the
    /// agent's session: Codex refuses earlier answers outside one, so the
    /// second turn (`complete -c`, another process) only works if it resumed
    /// the thread `chat`'s first turn started.
    @Test func aCodexConversationGoesOnInItsSession() async throws {
        let h = try await CodexHarness()
        try await h.serve([CodexHarness.answer("First answer"), CodexHarness.answer("Second answer")])
        let data = TempDir("descartes-conv")
        var env = SessionCLITests.environment(CodexHarness.plugins, state: data)
        env["XDG_DATA_HOME"] = data.path
        let sets = SessionCLITests.sets(h.config())
        let base = [TestEnv.descartes, "complete", "-p", "codex-cli"] + sets
        let first = await Proc.run([TestEnv.descartes, "chat", "-p", "codex-cli"] + sets, env: env, stdin: "first question\n")
        #expect(first.status == 0, "\(first)")
        #expect(first.stdout == "First answer\n")
        let stored = try #require(try ConversationStore(file: data.file("descartes/conversations.db")).latest())
        let session = try #require(stored.agentSession, "the agent's session id is stored with the conversation")
        let second = await Proc.run(base + ["-c", "second question"], env: env)
        #expect(second.status == 0, "\(second)")
        #expect(second.stdout == "Second answer\n")
        #expect(try await h.conversations().last == ["user: first question", "assistant: First answer", "user: second question"])
        let after = try #require(try ConversationStore(file: data.file("descartes/conversations.db")).conversation(stored.id))
        #expect(after.agentSession == session && after.messageCount == 4)
    }

    // MARK: conversations

    @Test func conversationsListShowExportDelete() async throws {
        let data = TempDir("descartes-conv")
        let env = env(data)
        let empty = await Proc.descartes(["conversations", "list"], env: env)
        #expect(empty.status == 0 && empty.stdout.contains("No conversations"), "\(empty)")
        let start = await Proc.descartes(["complete", "-p", "echo", "--json", "hello there"], env: env)
        #expect(start.status == 0, "\(start)")
        let more = await Proc.descartes(["complete", "-p", "echo", "-c", "--json", "and again"], env: env)
        let id = try #require(try JSONValue.parse(more.stdout)["conversation_id"]?.stringValue, "\(more)")

        let list = await Proc.descartes(["conversations", "list", "--json"], env: env)
        #expect(list.status == 0, "\(list)")
        let items = try JSONValue.parse(list.stdout)["conversations"]?.arrayValue ?? []
        #expect(items.count == 1)
        #expect(items.first?["id"]?.stringValue == id)
        #expect(items.first?["messages"]?.intValue == 4)
        #expect(items.first?["title"]?.stringValue == "hello there")
        let table = await Proc.descartes(["conversations", "list"], env: env)
        #expect(table.stdout.contains(id) && table.stdout.contains("hello there") && table.stdout.contains("echo"), "\(table)")

        let show = await Proc.descartes(["conversations", "show", id], env: env)
        #expect(show.status == 0, "\(show)")
        #expect(show.stdout.contains("user:\nhello there\n") && show.stdout.contains("user:\nand again\n"), "\(show.stdout)")

        let json = await Proc.descartes(["conversations", "export", id], env: env)
        let doc = try JSONValue.parse(json.stdout)
        #expect(doc["id"]?.stringValue == id)
        let messages = doc["messages"]?.arrayValue ?? []
        #expect(messages.map { $0["role"]?.stringValue ?? "" } == ["user", "assistant", "user", "assistant"])
        #expect(messages[0]["content"] == "hello there")
        #expect(messages[1]["provider"] == "echo" && messages[1]["usage"]?["output_tokens"] != nil, "\(messages[1])")

        let md = await Proc.descartes(["conversations", "export", id, "--format", "markdown"], env: env)
        #expect(md.status == 0, "\(md)")
        #expect(md.stdout.hasPrefix("# hello there\n"), "\(md.stdout)")
        #expect(md.stdout.contains("\n## User\n\nand again\n") && md.stdout.contains("\n## Assistant"), "\(md.stdout)")
        let badFormat = await Proc.descartes(["conversations", "export", id, "--format", "yaml"], env: env)
        #expect(badFormat.status == 64 && badFormat.stderr.contains("json or markdown"), "\(badFormat)")

        let unknown = await Proc.descartes(["conversations", "show", "01nosuchconversation000000"], env: env)
        #expect(unknown.status == 78 && unknown.stderr.contains("no conversation 01nosuchconversation000000"), "\(unknown)")
        let delete = await Proc.descartes(["conversations", "delete", id], env: env)
        #expect(delete.status == 0 && delete.stdout.contains("deleted conversation \(id)"), "\(delete)")
        let again = await Proc.descartes(["conversations", "delete", id], env: env)
        #expect(again.status != 0, "\(again)")
        let after = await Proc.descartes(["conversations", "list", "--json"], env: env)
        #expect(try JSONValue.parse(after.stdout)["conversations"] == [])
    }

    // MARK: chat

    /// Stdin not a terminal: each line a turn, the ! commands work.
    @Test func chatFromAPipe() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                Self.streamed("One", "."), Self.streamed("Two", "."), Self.streamed("Three", "."), Self.streamed("Four", "."),
            ]
        ])
        let data = TempDir("descartes-conv")
        let env = env(data, server)
        let input = """
            first question
            !system Be terse
            !multi
            line one
            line two
            !end
            !reset
            fresh start
            !exit
            never sent

            """
        let r = await Proc.descartes(["chat", "-p", "openai"], env: env, stdin: input)
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "One.\nTwo.\nThree.\n", "\(r)")
        let sent = try await Self.conversations(server)
        #expect(sent.count == 3, "\(sent)")
        #expect(sent[0] == ["user: first question"])
        #expect(sent[1] == ["system: Be terse", "user: first question", "assistant: One.", "user: line one\nline two"], "\(sent)")
        #expect(sent[2] == ["system: Be terse", "user: fresh start"], "\(sent)")
        // Two conversations stored; chat -c goes on with the latest.
        let resumed = await Proc.descartes(["chat", "-p", "openai", "-c"], env: env, stdin: "and then?\n")
        #expect(resumed.status == 0, "\(resumed)")
        let last = try #require(try await Self.conversations(server).last)
        #expect(last == ["system: Be terse", "user: fresh start", "assistant: Three.", "user: and then?"], "\(last)")
        #expect(try ConversationStore(file: data.file("descartes/conversations.db")).list().map(\.messageCount) == [4, 4])
    }

    /// As a person uses it: typed in a terminal (tmux), an answer streaming
    /// slowly cancelled with Ctrl-C, the next turn answered, Ctrl-D ends;
    /// `chat -c` later goes on with the turns that were answered.
    @Test func chatInATerminalCancelsAnAnswerWithCtrlC() async throws {
        let server = try await ServerSlot.make()
        try await server.script([
            "POST /v1/chat/completions": [
                Self.streamed("Hello", " there."), Self.streamed("A long", " story that never comes.", pause: 30_000),
                Self.streamed("Short", " answer."), Self.streamed("Still", " here."),
            ]
        ])
        let data = TempDir("descartes-conv")
        let tmux = try await Tmux.start(
            [TestEnv.descartes, "chat", "-p", "openai"], env: env(data, server).merging(["NO_COLOR": "1"]) { $1 })
        try await tmux.expect("Chatting with")
        try await tmux.type("hi")
        try await tmux.expect("Hello there.")
        try await tmux.type("tell me a story")
        try await tmux.expect("A long")
        try await tmux.keys("C-c")
        try await tmux.expect("(cancelled")
        try await tmux.type("then briefly")
        try await tmux.expect("Short answer.")
        let going = try await tmux.running()
        #expect(going, "the chat went on after Ctrl-C")
        try await tmux.keys("C-d")
        try await tmux.expectExit()

        let sent = try await Self.conversations(server)
        #expect(sent.count == 3, "\(sent)")
        #expect(sent[2] == ["user: hi", "assistant: Hello there.", "user: then briefly"], "the cancelled turn is not kept: \(sent)")
        // "(cancelled" showed within expect's 20 s, while the rest of that
        // answer was 30 s away: the request was stopped, not waited out.

        // Resumed in a new terminal: Ctrl-C at the empty prompt ends it.
        let again = try await Tmux.start(
            [TestEnv.descartes, "chat", "-p", "openai", "-c"], env: env(data, server).merging(["NO_COLOR": "1"]) { $1 })
        try await again.expect("continuing conversation")
        try await again.type("more?")
        try await again.expect("Still here.")
        try await again.keys("C-c")
        try await again.expectExit()
        let last = try #require(try await Self.conversations(server).last)
        #expect(last == ["user: hi", "assistant: Hello there.", "user: then briefly", "assistant: Short answer.", "user: more?"], "\(last)")
    }
}

extension ConversationTests {
    /// Ctrl-C during an agent's answer stops the agent's process (the
    /// plugin ends its process group: the script and its `sleep`) and the
    /// chat goes on: the next turn is answered by a new one.
    @Test func ctrlCInAChatWithAnAgentStopsItsProcess() async throws {
        let dir = TempDir("descartes-conv")
        let agent = dir.write("agent", """
            #!/bin/sh
            [ "$1" = "--" ] && shift
            case "$1" in
              *wait*) echo "Working on it"; sleep 60; echo "never";;
              *) echo "Answered: $1";;
            esac
            """, mode: 0o755)
        let mark = ProcScan.newMark()
        let plugins = PluginDir().addRepositoryPlugin("headless-cli", library: "headless-cli")
        let env = ["DESCARTES_PLUGIN_PATH": plugins.path, "XDG_DATA_HOME": dir.path, "XDG_STATE_HOME": dir.path, "NO_COLOR": "1"]
        let tmux = try await Tmux.start(
            [
                TestEnv.descartes, "chat", "-p", "headless-cli", "--set", "command=\(agent)", "--set", "protocol=text", "--set", "args={prompt}",
                "--set", "env=DESCARTES_TEST_MARK=\(mark)",
            ], env: env)
        try await tmux.expect("Chatting with")
        try await tmux.type("wait for it")
        try await tmux.expect("Working on it")
        #expect(!ProcScan.marked(mark).isEmpty, "the agent runs")
        try await tmux.keys("C-c")
        try await tmux.expect("(cancelled")
        let gone = await ProcScan.eventually(.seconds(10)) { ProcScan.marked(mark).isEmpty }
        #expect(gone, "\(ProcScan.marked(mark))")
        try await tmux.type("and now?")
        try await tmux.expect("Answered: and now?")
        try await tmux.type("!exit")
        try await tmux.expectExit()
    }

    /// The same with the real `codex`: a chat is a session (each later turn
    /// `codex exec resume`), Ctrl-C while codex waits for its model stops
    /// codex, and the next turn resumes the thread and is answered. The
    /// scripted model answers by what the request asks (a resumed turn
    /// carries the earlier ones, so the newest question is matched first).
    @Test func ctrlCInAChatWithTheRealCodexThenTheNextTurnIsAnswered() async throws {
        let h = try await CodexHarness()
        try await h.server.script([
            "POST /v1/responses": [
                CodexHarness.answer("the second answer").with(["match": "second question"]),
                ScriptedServer.Response.hang.with(["match": "first question"]),
                CodexHarness.answer("the zeroth answer").with(["match": "zeroth question"]),
            ]
        ])
        let dir = TempDir("descartes-conv")
        let config = dir.write(
            "providers.yaml",
            """
            providers:
              cx:
                plugin: codex-cli
                command: \(h.codex)
                api_key: \(CodexHarness.apiKey)
                base_url: \(h.server.url)/v1
                codex_home: \(h.codexHome.path)
                model: test-model
                cwd: \(h.work.path)
                env: {HOME: \(h.home.path), DESCARTES_TEST_MARK: \(h.mark), PATH: /usr/bin:/bin}
            """)
        let env = ["DESCARTES_PLUGIN_PATH": CodexHarness.plugins.path, "XDG_DATA_HOME": dir.path, "XDG_STATE_HOME": dir.path, "NO_COLOR": "1"]
        let tmux = try await Tmux.start([TestEnv.descartes, "--config", config, "chat", "-p", "cx"], env: env)
        try await tmux.expect("Chatting with cx")
        try await tmux.type("zeroth question")
        try await tmux.expect("the zeroth answer")
        try await tmux.type("first question")
        var asked = false
        for _ in 0..<400 where !asked {
            asked = ((try? await h.server.requests()) ?? []).contains { $0.body.contains("first question") }
            if !asked { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(asked, "codex never sent the first question")
        try await tmux.keys("C-c")
        try await tmux.expect("(cancelled")
        #expect(await ProcScan.eventually(.seconds(10)) { ProcScan.marked(h.mark).isEmpty }, "\(ProcScan.marked(h.mark))")
        try await tmux.type("second question")
        try await tmux.expect("the second answer")
        // The answered turn resumed the thread: its request carries the zeroth turn.
        let last = try #require(try await h.server.requests().last)
        #expect(last.body.contains("zeroth question") && last.body.contains("second question"))
        try await tmux.type("!exit")
        try await tmux.expectExit()
        #expect(await ProcScan.eventually { ProcScan.marked(h.mark).isEmpty })
    }
}

/// A terminal a test types into: a tmux session on a server of its own
/// (`tmux -S`, its socket in a temporary directory), its screen read with capture-pane.
final class Tmux: @unchecked Sendable {
    let socket: String
    private let exitFile: String
    private let dir: TempDir

    private init(socket: String, dir: TempDir) {
        self.socket = socket
        self.dir = dir
        exitFile = dir.file("exit-status")
    }

    deinit {
        _ = system("tmux -S '\(socket)' kill-server 2>/dev/null")
    }

    /// Starts `argv` in a new 120x40 terminal with `env` added.
    static func start(_ argv: [String], env: [String: String]) async throws -> Tmux {
        let dir = TempDir("descartes-tmux")
        // The server's socket is in the test's directory, removed with it.
        let t = Tmux(socket: dir.file("tmux.sock"), dir: dir)
        let exports = env.sorted { $0.key < $1.key }.map { "\($0.key)=\(shellQuote($0.value))" }.joined(separator: " ")
        // The shell survives the Ctrl-C a test types (a trap, not an ignore:
        // the program still gets SIGINT as it would from a terminal).
        let command = "trap : INT; env \(exports) \(argv.map(shellQuote).joined(separator: " ")); echo $? > \(shellQuote(t.exitFile))"
        let r = await Proc.run(["tmux", "-S", t.socket, "new-session", "-d", "-x", "120", "-y", "40", "bash", "-c", command])
        guard r.status == 0 else { throw ScriptedServer.StartError(description: "tmux new-session: \(r)") }
        return t
    }

    static func shellQuote(_ s: String) -> String { "'" + s.replacingAll("'", with: "'\\''") + "'" }

    func screen() async throws -> String {
        await Proc.run(["tmux", "-S", socket, "capture-pane", "-p"]).stdout
    }

    /// Sends tmux key names ("C-c", "Enter").
    func keys(_ names: String...) async throws {
        _ = await Proc.run(["tmux", "-S", socket, "send-keys"] + names)
    }

    /// Types `text` and Enter.
    func type(_ text: String) async throws {
        _ = await Proc.run(["tmux", "-S", socket, "send-keys", "-l", text])
        try await keys("Enter")
    }

    /// Whether the screen shows `text` within 20 s.
    func waitFor(_ text: String) async throws -> Bool {
        for _ in 0..<200 {
            if try await screen().contains(text) { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    func running() async throws -> Bool { !FileSystem.exists(exitFile) }

    /// Records an issue, with the screen, when `text` does not show within 20 s.
    func expect(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        if try await waitFor(text) { return }
        let shown = try await screen()
        Issue.record("the terminal never showed \"\(text)\"; it shows:\n\(shown)", sourceLocation: sourceLocation)
    }

    /// Records an issue, with the screen, when the program does not end within 20 s.
    func expectExit(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        if try await waitForExit() { return }
        let shown = try await screen()
        Issue.record("the program did not end; the terminal shows:\n\(shown)", sourceLocation: sourceLocation)
    }

    /// Whether the program ended within 20 s.
    func waitForExit() async throws -> Bool {
        for _ in 0..<200 {
            if FileSystem.exists(exitFile) { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }
}
