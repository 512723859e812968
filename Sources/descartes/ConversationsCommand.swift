import Descartes
import DescartesCommandLine
import Glibc
import DescartesSupport

/// One conversation as `complete` and `chat` hold it while they run: the
/// stored record (nil until its first answer is recorded), the messages
/// sent before each new prompt, and the system prompt. One mechanism for
/// both commands: `request` makes what a turn sends, `record` stores the
/// turn once it is answered.
///
/// With a headless agent that has sessions (`Built.agentSessions`), the
/// session id an answer reports is stored with the conversation, and a
/// turn that continues it asks for that session (request option
/// `session_id`; `session` when none is stored): the agent goes on in its
/// own session instead of being handed the transcript, which Codex refuses
/// and Claude Code replays only when its session process is gone
/// (docs/headless.md). The messages still go with it, as `complete
/// --session` sends them. A conversation's first turn asks for a session
/// only when `sessionFromTheStart` (`chat`, which will have more turns): a
/// one-shot `complete` stays what it was (Claude Code's one process per
/// turn, Codex's ephemeral turn, which leaves no thread to resume).
struct ConversationThread {
    let store: ConversationStore
    /// The provider the turns go to (`-p`).
    let provider: String
    let agentSessions: Bool
    let sessionFromTheStart: Bool
    private(set) var stored: StoredConversation?
    private(set) var history: [Message] = []
    var system: String?

    /// A new conversation, or with `continuing`, that one with its messages.
    init(
        store: ConversationStore, provider: String, agentSessions: Bool, sessionFromTheStart: Bool, continuing: (StoredConversation, [Message])?,
        system: String?
    ) {
        self.store = store
        self.provider = provider
        self.agentSessions = agentSessions
        self.sessionFromTheStart = sessionFromTheStart
        stored = continuing?.0
        history = continuing?.1 ?? []
        self.system = system ?? continuing?.0.system
    }

    /// `-c` (the most recent conversation) or `--conversation ID`, loaded
    /// with its messages; nil for neither.
    static func continued(_ args: Arguments, store: ConversationStore) throws(ProviderError) -> (StoredConversation, [Message])? {
        let found: StoredConversation?
        do {
            if let id = args.value(.conversation) {
                guard ConversationStore.isValidID(id), let c = try store.conversation(id) else {
                    throw ProviderError(.config, "--conversation \(id): no such conversation in \(store.file) (see 'descartes conversations list')")
                }
                found = c
            } else if args.flag(.continueConversation) {
                guard let c = try store.latest() else {
                    throw ProviderError(.config, "-c: no conversation to continue in \(store.file) (every 'descartes complete' starts one)")
                }
                found = c
            } else {
                found = nil
            }
            guard let found else { return nil }
            return (found, try store.messages(found.id).map(\.message))
        } catch let e as ConversationStoreError {
            throw ProviderError(.config, e.message)
        } catch let e as ProviderError {
            throw e
        } catch {
            throw ProviderError(.config, "\(error)")
        }
    }

    /// What a turn sends: the conversation's messages, then `turn`'s.
    func request(_ turn: ModelRequest) -> ModelRequest {
        var r = turn
        r.messages = history + r.messages
        if r.systemPrompt == nil { r.systemPrompt = system }
        if agentSessions && (stored != nil || sessionFromTheStart) && r.options["session"] == nil && r.options["session_id"] == nil {
            // The agent's session goes on only with the provider that started it.
            if let s = stored?.agentSession, stored?.provider == provider {
                r.options["session_id"] = .string(s)
            } else {
                r.options["session"] = true
            }
        }
        return r
    }

    /// Stores the turn (`prompt`, then the answer `r`), starting the
    /// conversation on its first answer; returns it as stored.
    @discardableResult
    mutating func record(_ prompt: Message, _ r: ModelResponse) throws(ConversationStoreError) -> StoredConversation {
        let asked = Self.nowUnixMS()
        var c: StoredConversation
        if let stored { c = stored } else { c = ConversationStore.new(provider: provider, system: system, title: prompt.content, unixMS: asked) }
        c.provider = provider
        if !r.model.isEmpty { c.model = r.model }
        c.system = system
        if agentSessions, let id = r.metadata["session_id"]?.stringValue, !id.isEmpty { c.agentSession = id }
        let answer = Message.assistant(r)
        let answered = Self.nowUnixMS()
        try store.append(
            [StoredMessage(prompt, unixMS: asked), StoredMessage(answer, usage: r.usage, provider: r.provider, model: r.model, unixMS: answered)], to: c)
        c.messageCount += 2
        c.updatedUnixMS = answered
        stored = c
        history += [prompt, answer]
        return c
    }

    /// Forgets the conversation: the next turn starts a new one (`!reset`).
    mutating func reset() {
        stored = nil
        history = []
    }

    static func nowUnixMS() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec / 1_000_000)
    }
}

/// `descartes conversations list|show|export|delete`.
enum ConversationsCommand {
    static var store: ConversationStore { ConversationStore(file: ConversationStore.defaultFile()) }

    static func fail(_ e: ConversationStoreError) -> Never {
        failure(ProviderError(.config, e.message))
    }

    /// The conversation the one positional argument names, with its messages.
    static func load(_ args: Arguments) -> (StoredConversation, [StoredMessage]) {
        let id = args.positional[0]
        let store = store
        do throws(ConversationStoreError) {
            guard ConversationStore.isValidID(id), let c = try store.conversation(id) else {
                failure(ProviderError(.config, "no conversation \(id) in \(store.file) (see 'descartes conversations list')"))
            }
            return (c, try store.messages(id))
        } catch { fail(error) }
    }

    static func list(_ args: Arguments, globals: Globals) -> ExitCode {
        let store = store
        let n: Int
        do throws(UsageError) {
            n = try args.int(.lines) ?? 20
            guard n > 0 else { throw args.mistake("--lines must be positive") }
        } catch { usageFailure(error) }
        let all: [StoredConversation]
        do throws(ConversationStoreError) { all = try store.list(limit: n) } catch { fail(error) }
        if args.flag(.json) {
            Out.line(JSONValue.object(["database": .string(store.file), "conversations": .array(all.map(json))]).prettyText())
            return .ok
        }
        if all.isEmpty {
            Out.line("No conversations in \(store.file) (every 'descartes complete' and 'descartes chat' records one)")
            return .ok
        }
        let rows = all.map { c in
            [c.id, c.provider, c.model ?? "", String(c.messageCount), SessionsCommand.timestamp(c.updatedUnixMS / 1000), Wire.excerpt(c.title, limit: 40)]
        }
        Out.line(Out.table(["ID", "PROVIDER", "MODEL", "MESSAGES", "LAST USED", "TITLE"], rows))
        return .ok
    }

    static func show(_ args: Arguments, globals: Globals) -> ExitCode {
        let (c, messages) = load(args)
        if args.flag(.json) {
            Out.line(export(c, messages).prettyText())
            return .ok
        }
        Out.line(Out.dim("conversation \(c.id) with \(c.provider), \(c.messageCount) messages"))
        if let s = c.system { Out.line(Out.dim("system: ") + s) }
        for m in messages {
            var head = m.message.role.rawValue
            if let model = m.model { head += " (\(model)" + (m.usage.map { ", \($0.inputTokens) in, \($0.outputTokens) out" } ?? "") + ")" }
            Out.line(Out.dim(head + ":"))
            Out.line(m.message.content)
            for call in m.message.toolCalls { Out.line(Out.dim("tool call \(call.id): \(call.name)(\(call.arguments))")) }
        }
        return .ok
    }

    static func export(_ args: Arguments, globals: Globals) -> ExitCode {
        let format = args.value(.format) ?? "json"
        guard ["json", "markdown"].contains(format) else { usageFailure(args.mistake("--format is json or markdown, got '\(format)'")) }
        let (c, messages) = load(args)
        if format == "json" {
            Out.line(export(c, messages).prettyText())
            return .ok
        }
        var out = "# \(c.title.isEmpty ? c.id : c.title)\n\n"
        out += "Conversation `\(c.id)` with `\(c.provider)`" + (c.model.map { " (`\($0)`)" } ?? "") + ", started \(SessionsCommand.timestamp(c.createdUnixMS / 1000)).\n"
        if let s = c.system { out += "\n## System\n\n\(s)\n" }
        for m in messages {
            out += "\n## \(m.message.role.rawValue.prefix(1).uppercased() + m.message.role.rawValue.dropFirst())"
            if let model = m.model { out += " (\(model))" }
            out += "\n\n\(m.message.content)\n"
            for call in m.message.toolCalls { out += "\n- tool call `\(call.id)`: `\(call.name)(\(call.arguments))`\n" }
        }
        Out.write(out)
        return .ok
    }

    static func delete(_ args: Arguments, globals: Globals) -> ExitCode {
        if args.positional.isEmpty { usageFailure(args.mistake("give the id of each conversation to delete ('descartes conversations list')")) }
        let store = store
        var status = ExitCode.ok
        for id in args.positional {
            do throws(ConversationStoreError) {
                if ConversationStore.isValidID(id), try store.delete(id) {
                    Out.line("deleted conversation \(id)")
                } else {
                    Out.err("Error: no conversation \(id) in \(store.file)")
                    status = .config
                }
            } catch { fail(error) }
        }
        return status
    }

    static func json(_ c: StoredConversation) -> JSONValue {
        var o: JSONObject = [
            "id": .string(c.id), "provider": .string(c.provider), "title": .string(c.title), "messages": .integer(c.messageCount),
            "created": .integer(c.createdUnixMS / 1000), "updated": .integer(c.updatedUnixMS / 1000),
        ]
        o["model"] = c.model.map { .string($0) } ?? .null
        o["agent_session"] = c.agentSession.map { .string($0) } ?? .null
        return .object(o)
    }

    /// `export --format json`: the conversation and every message with what is known of it.
    static func export(_ c: StoredConversation, _ messages: [StoredMessage]) -> JSONValue {
        guard case .object(var o) = json(c) else { return .null }
        o["system"] = c.system.map { .string($0) } ?? .null
        o["messages"] = .array(
            messages.map { m in
                var doc: JSONObject = ["role": .string(m.message.role.rawValue), "content": .string(m.message.content)]
                if !m.message.toolCalls.isEmpty { doc["tool_calls"] = .array(m.message.toolCalls.map { Wire.json($0) }) }
                if let id = m.message.toolCallID { doc["tool_call_id"] = .string(id) }
                if let u = m.usage { doc["usage"] = Wire.json(u) }
                if let p = m.provider { doc["provider"] = .string(p) }
                if let model = m.model { doc["model"] = .string(model) }
                doc["time"] = .integer(m.unixMS)
                return .object(doc)
            })
        return .object(o)
    }
}
