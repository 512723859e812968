import Descartes
import DescartesCommandLine
import Glibc
import DescartesSupport

/// The agent sessions `descartes complete --session` started, kept between
/// invocations: one JSON file per session (mode 0600, in a 0700 directory)
/// under `$XDG_STATE_HOME/descartes/sessions` (default
/// `~/.local/state/descartes/sessions`, beside the audit log), holding the
/// provider, the turns' user and assistant texts, and when it was used.
///
/// The conversation is what makes a session outlive the process: Codex
/// resumes its saved thread by id and needs none of it, but Claude Code's
/// session process ends with the CLI, and the next invocation's turn starts
/// a new one under the same id with the conversation replayed from it
/// (docs/headless.md, "Sessions from the command line").
struct StoredSession {
    var id: String
    var provider: String
    /// The plugin behind `provider` (an instance of providers.yaml, or the plugin itself).
    var plugin: String
    var created: Int
    var updated: Int
    var turns: Int
    var messages: [Message]

    var json: JSONValue {
        [
            "id": .string(id), "provider": .string(provider), "plugin": .string(plugin), "created": .integer(created), "updated": .integer(updated),
            "turns": .integer(turns),
            "messages": .array(messages.map { ["role": .string($0.role.rawValue), "content": .string($0.content)] }),
        ]
    }

    init(id: String, provider: String, plugin: String, now: Int) {
        self.id = id
        self.provider = provider
        self.plugin = plugin
        created = now
        updated = now
        turns = 0
        messages = []
    }

    init?(_ v: JSONValue) {
        guard let id = v["id"]?.stringValue, let provider = v["provider"]?.stringValue else { return nil }
        self.id = id
        self.provider = provider
        plugin = v["plugin"]?.stringValue ?? provider
        created = v["created"]?.intValue ?? 0
        updated = v["updated"]?.intValue ?? created
        turns = v["turns"]?.intValue ?? 0
        messages = (v["messages"]?.arrayValue ?? []).compactMap { m in
            guard let role = m["role"]?.stringValue.flatMap(Role.init(rawValue:)), let text = m["content"]?.stringValue else { return nil }
            return Message(role: role, content: text)
        }
    }
}

enum SessionStore {
    static func directory(_ environment: [String: String] = Environment.current()) -> String {
        FileSystem.join(FileSystem.directory(of: AuditSettings.defaultFile(environment: environment)), "sessions")
    }

    /// A session id as the agents give them (a UUID): letters, digits and
    /// dashes only, so it is a safe file name.
    static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.count <= 128 && id.utf8.allSatisfy { $0 == 0x2D || ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) }
    }

    static func file(_ id: String) -> String { FileSystem.join(directory(), "\(id).json") }

    static func load(_ id: String) throws(ProviderError) -> StoredSession {
        guard isValidID(id) else {
            throw ProviderError(.config, "--session '\(id)': not a session id (see 'descartes sessions list'; 'new' starts one)")
        }
        let path = file(id)
        guard FileSystem.exists(path) else {
            throw ProviderError(.config, "--session \(id): no such session in \(directory()) (see 'descartes sessions list'; 'new' starts one)")
        }
        let text: String
        do { text = try FileSystem.readText(path, limit: 64 << 20) } catch { throw ProviderError(.config, "--session \(id): \(error)") }
        guard let doc = try? JSONValue.parse(text), let s = StoredSession(doc) else {
            throw ProviderError(.config, "\(path): not a session file (JSON with id and provider)")
        }
        return s
    }

    static func save(_ s: StoredSession) throws(ProviderError) {
        let dir = directory()
        do {
            try FileSystem.makeDirectories(dir, mode: 0o700)
            try FileSystem.writeAtomically(file(s.id), s.json.prettyText().utf8.map { $0 } + [0x0A], mode: 0o600)
        } catch {
            throw ProviderError(.config, "cannot save session \(s.id) in \(dir): \(error)")
        }
    }

    /// Every stored session, most recently used first.
    static func all() -> [StoredSession] {
        let dir = directory()
        let names = (try? FileSystem.list(dir)) ?? []
        return names.filter { $0.hasSuffix(".json") }.compactMap { name -> StoredSession? in
            guard let text = try? FileSystem.readText(FileSystem.join(dir, name), limit: 64 << 20) else { return nil }
            return (try? JSONValue.parse(text)).flatMap(StoredSession.init)
        }.sorted { $0.updated > $1.updated }
    }

    static var now: Int { Int(time(nil)) }
}

enum SessionsCommand {
    /// `descartes sessions list`: id, provider, turns, last use, first prompt.
    static func list(_ args: Arguments, globals: Globals) -> ExitCode {
        let sessions = SessionStore.all()
        if args.flag(.json) {
            Out.line(
                JSONValue.object([
                    "directory": .string(SessionStore.directory()),
                    "sessions": .array(sessions.map { s in
                        ["id": .string(s.id), "provider": .string(s.provider), "turns": .integer(s.turns), "created": .integer(s.created), "updated": .integer(s.updated)]
                    }),
                ]).prettyText())
            return .ok
        }
        if sessions.isEmpty {
            Out.line("No sessions in \(SessionStore.directory()) (start one with: descartes complete -p PROVIDER --session new PROMPT)")
            return .ok
        }
        var rows: [[String]] = []
        for s in sessions {
            let first = s.messages.first { $0.role == .user }?.content ?? ""
            rows.append([s.id, s.provider, String(s.turns), timestamp(s.updated), Wire.excerpt(first.split(separator: "\n").first.map(String.init) ?? "", limit: 40)])
        }
        Out.line(Out.table(["ID", "PROVIDER", "TURNS", "LAST USED", "FIRST PROMPT"], rows))
        return .ok
    }

    /// `descartes sessions close ID...`: forgets the sessions (their files).
    static func close(_ args: Arguments, globals: Globals) -> ExitCode {
        if args.positional.isEmpty { usageFailure(args.mistake("give the id of each session to close ('descartes sessions list')")) }
        var status = ExitCode.ok
        for id in args.positional {
            do throws(ProviderError) {
                let s = try SessionStore.load(id)
                guard unlink(SessionStore.file(id)) == 0 else {
                    throw ProviderError(.config, "cannot remove \(SessionStore.file(id)): \(String(cString: strerror(errno)))")
                }
                var note = ""
                if s.plugin == "codex-cli" { note = " (Codex keeps the thread's own rollout file in its CODEX_HOME)" }
                Out.line("closed session \(id) (\(s.provider), \(s.turns) turn\(s.turns == 1 ? "" : "s"))\(note)")
            } catch {
                Out.err("Error: \(error)")
                status = ExitCode.for(error)
            }
        }
        return status
    }

    static func timestamp(_ t: Int) -> String {
        var tt = time_t(t)
        var tm = tm()
        gmtime_r(&tt, &tm)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday)) \(two(tm.tm_hour)):\(two(tm.tm_min))Z"
    }
}
