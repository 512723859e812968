internal import DescartesSQLite
import DescartesSupport
import Glibc

/// A failure to read or write the conversation store: the file and SQLite's words.
package struct ConversationStoreError: Error, CustomStringConvertible, Sendable {
    package var message: String
    package var description: String { message }
    package init(_ message: String) { self.message = message }
}

/// One stored conversation, without its messages.
package struct StoredConversation: Sendable, Equatable {
    /// 26 characters, time-ordered (a ULID in lowercase Crockford base 32).
    package var id: String
    /// The provider it was last continued with (`-p`).
    package var provider: String
    /// The model that last answered, as the provider named it.
    package var model: String?
    package var createdUnixMS: Int
    package var updatedUnixMS: Int
    /// The first line of the first prompt, cut to 80 characters.
    package var title: String
    /// The system prompt its turns are sent with (`--system`, `!system`).
    package var system: String?
    /// The agent's own session, when the provider is a headless agent with
    /// sessions (claude-code-cli, codex-cli, acp): later turns continue it
    /// instead of replaying the transcript.
    package var agentSession: String?
    /// How many messages it holds.
    package var messageCount: Int
}

/// A response the gateway stored (the Responses API's `store`): the
/// conversation it is part of and how many of its messages are the
/// response's (the input it continued, its own input and its answer).
package struct StoredResponse: Sendable, Equatable {
    /// `resp_...`, the id the client was given.
    package var id: String
    /// Whose it is: the gateway key's identity ("" without keys); another owner sees none.
    package var owner: String
    package var conversationID: String
    package var messageCount: Int
    package var createdUnixMS: Int
    /// The `response` object as the client got it (JSON text).
    package var response: String

    package init(id: String, owner: String, conversationID: String = "", messageCount: Int = 0, createdUnixMS: Int, response: String) {
        self.id = id
        self.owner = owner
        self.conversationID = conversationID
        self.messageCount = messageCount
        self.createdUnixMS = createdUnixMS
        self.response = response
    }
}

/// One stored message with what is known of the turn that made it.
package struct StoredMessage: Sendable, Equatable {
    package var message: Message
    /// For an answer: its usage as the provider reported it.
    package var usage: Usage?
    /// For an answer: the provider instance and the model that gave it.
    package var provider: String?
    package var model: String?
    package var unixMS: Int

    package init(_ message: Message, usage: Usage? = nil, provider: String? = nil, model: String? = nil, unixMS: Int) {
        self.message = message
        self.usage = usage
        self.provider = provider
        self.model = model
        self.unixMS = unixMS
    }
}

/// The conversations of `descartes complete` and `descartes chat`: one
/// SQLite database, `$XDG_DATA_HOME/descartes/conversations.db` (default
/// `~/.local/share/descartes/conversations.db`, mode 0600 in a 0700
/// directory), in WAL mode so that several processes (two terminals
/// chatting, a script calling `complete -c`) read and write it at once,
/// each waiting its turn for the others' short write transactions (the
/// busy timeout, 10 s). See docs/conversations.md for the tables.
///
/// It lives in the library, `package` and not public, beside the gateway's
/// key store: the library is what links libsqlite3 (`DescartesSQLite`), and
/// the tests reach it directly. It is not public API: a Swift application
/// holds a conversation as `ModelRequest.messages` and keeps it where it
/// keeps its own data; the file, its place and its schema are the CLI's.
///
/// The schema is versioned with `PRAGMA user_version` (2 today): a newer
/// descartes that changes it migrates a file of an older version inside one
/// write transaction; an older descartes refuses a file of a newer version
/// instead of writing rows it does not understand. Version 2 added the
/// `responses` table (version 1 files gain it, empty).
///
/// The gateway keeps the Responses API's stored responses in a file of its
/// own with the same tables (`server.responses_database`): a response is a
/// conversation and how many of its messages are the response's
/// (`storeResponse`), so that `previous_response_id` continues it.
package final class ConversationStore: Sendable {
    package static let schemaVersion = 2

    package let file: String
    private let connection: Lock<SQLiteDatabase?>

    package init(file: String) {
        self.file = file
        connection = Lock(nil)
    }

    /// Whether the environment turns recording off (`DESCARTES_NO_HISTORY`
    /// set to anything but empty or `0`): for a program that runs
    /// `descartes complete` per call and keeps its own transcript.
    package static func recordingOff(environment: [String: String] = Environment.current()) -> Bool {
        guard let v = environment["DESCARTES_NO_HISTORY"] else { return false }
        return !v.isEmpty && v != "0"
    }

    /// `$XDG_DATA_HOME/descartes/conversations.db`, by default
    /// `~/.local/share/descartes/conversations.db`.
    package static func defaultFile(environment: [String: String] = Environment.current()) -> String {
        if let x = environment["XDG_DATA_HOME"], x.hasPrefix("/") { return FileSystem.join(x, "descartes/conversations.db") }
        let home = environment["HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? Environment.homeDirectory
        return FileSystem.join(home, ".local/share/descartes/conversations.db")
    }

    static let schema = """
        CREATE TABLE IF NOT EXISTS conversations (
            id TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            model TEXT,
            created_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            title TEXT NOT NULL DEFAULT '',
            system TEXT,
            agent_session TEXT
        );
        CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (updated_ms);
        CREATE TABLE IF NOT EXISTS messages (
            id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations (id),
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            tool_calls TEXT,
            tool_call_id TEXT,
            usage TEXT,
            provider TEXT,
            model TEXT,
            unix_ms INTEGER NOT NULL,
            message TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation_id, id);
        CREATE TABLE IF NOT EXISTS responses (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            conversation_id TEXT NOT NULL REFERENCES conversations (id),
            messages INTEGER NOT NULL,
            created_ms INTEGER NOT NULL,
            response TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS responses_created ON responses (created_ms);
        CREATE INDEX IF NOT EXISTS responses_conversation ON responses (conversation_id);
        """

    /// The open connection: opened, switched to WAL and given its schema on
    /// first use. `create` false: a missing file is not made (`nil` back).
    private func withDatabase<T>(create: Bool, _ body: (SQLiteDatabase) throws(SQLiteError) -> T) throws(ConversationStoreError) -> T? {
        do {
            return try connection.withLock { (c: inout SQLiteDatabase?) throws(SQLiteError) -> T? in
                if c == nil {
                    if !create && !FileSystem.exists(file) { return nil }
                    let dir = FileSystem.directory(of: file)
                    if !FileSystem.isDirectory(dir) {
                        do { try FileSystem.makeDirectories(dir, mode: 0o700) } catch {
                            throw SQLiteError(code: 0, message: "\(file): cannot create its directory: \(error)")
                        }
                    }
                    let db = try SQLiteDatabase(path: file, create: true)
                    // Switching to WAL answers BUSY at once while another
                    // process has the new file open: retried.
                    _ = try db.retryingWhileBusy { () throws(SQLiteError) in try db.query("PRAGMA journal_mode=WAL") }
                    try db.execute("PRAGMA synchronous=NORMAL")
                    // Most processes record one turn and exit: the checkpoint
                    // at close (four syncs, about 2.8 ms of a one-shot
                    // `complete`) is left to a later commit that fills the WAL.
                    try db.skipCheckpointOnClose()
                    // ... but the next process to open the file rebuilds its
                    // WAL index by reading every frame of the WAL (SQLite's
                    // recovery: the first connection never trusts the -shm
                    // file), about 2.5 µs of CPU a 4 KiB frame here. With
                    // SQLite's default checkpoint at 1,000 pages the WAL
                    // grows to 4 MB and every start reads half of that on
                    // average (about 1.2 ms); a checkpoint at 64 pages keeps
                    // it under 300 KB, for one checkpoint's syncs every ten
                    // or so recorded turns.
                    try db.execute("PRAGMA wal_autocheckpoint=64")
                    let version = try db.query("PRAGMA user_version").first?.first?.int ?? 0
                    if version > Self.schemaVersion {
                        throw SQLiteError(
                            code: 0,
                            message: "\(file): conversations of schema version \(version), made by a newer descartes (this one knows version \(Self.schemaVersion))")
                    }
                    if version < Self.schemaVersion {
                        // One process makes the tables; the others wait for
                        // its transaction and find them made.
                        try db.transaction { () throws(SQLiteError) in
                            try db.execute(Self.schema)
                            try db.execute("PRAGMA user_version = \(Self.schemaVersion)")
                        }
                    }
                    c = db
                }
                return try body(c!)
            }
        } catch {
            throw ConversationStoreError(error.message)
        }
    }

    private static let columns = "id, provider, model, created_ms, updated_ms, title, system, agent_session, (SELECT count(*) FROM messages WHERE conversation_id = conversations.id)"

    private static func conversation(_ row: [SQLiteValue]) -> StoredConversation {
        StoredConversation(
            id: row[0].string ?? "", provider: row[1].string ?? "", model: row[2].string, createdUnixMS: row[3].int ?? 0,
            updatedUnixMS: row[4].int ?? 0, title: row[5].string ?? "", system: row[6].string, agentSession: row[7].string,
            messageCount: row[8].int ?? 0)
    }

    /// The conversation `id`, nil when there is none.
    package func conversation(_ id: String) throws(ConversationStoreError) -> StoredConversation? {
        let rows = try withDatabase(create: false) { db throws(SQLiteError) in
            try db.query("SELECT \(Self.columns) FROM conversations WHERE id = ?", [.text(id)])
        }
        return rows?.first.map(Self.conversation)
    }

    /// The most recently updated conversation (`-c`), nil when there is none.
    package func latest() throws(ConversationStoreError) -> StoredConversation? {
        try list(limit: 1).first
    }

    /// Conversations, most recently updated first.
    package func list(limit: Int? = nil) throws(ConversationStoreError) -> [StoredConversation] {
        let rows = try withDatabase(create: false) { db throws(SQLiteError) in
            try db.query(
                "SELECT \(Self.columns) FROM conversations ORDER BY updated_ms DESC, id DESC LIMIT ?", [.integer(limit ?? -1)])
        }
        return (rows ?? []).map(Self.conversation)
    }

    /// The messages of conversation `id`, oldest first (its first `limit` when given).
    package func messages(_ id: String, limit: Int? = nil) throws(ConversationStoreError) -> [StoredMessage] {
        let rows = try withDatabase(create: false) { db throws(SQLiteError) in
            try db.query(
                "SELECT message, usage, provider, model, unix_ms FROM messages WHERE conversation_id = ? ORDER BY id LIMIT ?",
                [.text(id), .integer(limit ?? -1)])
        }
        var out: [StoredMessage] = []
        for row in rows ?? [] {
            let message: Message
            do {
                let doc = try JSONValue.parse(row[0].string ?? "")
                guard let m = try Wire.decodeRequest(["messages": [doc]]).messages.first else { throw WireError("no message") }
                message = m
            } catch {
                throw ConversationStoreError("\(file): conversation \(id): a stored message is not a message: \(error)")
            }
            let usage = row[1].string.flatMap { try? JSONValue.parse($0) }.flatMap { try? Wire.decodeUsage($0) }
            out.append(StoredMessage(message, usage: usage, provider: row[2].string, model: row[3].string, unixMS: row[4].int ?? 0))
        }
        return out
    }

    /// A new conversation, not stored until its first `append` (one
    /// write transaction per turn, the first included).
    package static func new(provider: String, system: String?, title: String, unixMS: Int) -> StoredConversation {
        StoredConversation(
            id: newID(unixMS: unixMS), provider: provider, model: nil, createdUnixMS: unixMS, updatedUnixMS: unixMS,
            title: Self.title(title), system: system, agentSession: nil, messageCount: 0)
    }

    /// Starts a conversation with no messages and returns it.
    package func create(provider: String, system: String?, title: String, unixMS: Int) throws(ConversationStoreError) -> StoredConversation {
        let c = Self.new(provider: provider, system: system, title: title, unixMS: unixMS)
        try append([], to: c)
        return c
    }

    /// Appends one turn's messages to `conversation` in one transaction
    /// (storing the conversation first when it has no messages yet, and
    /// is not stored), and stores what the conversation now is: its
    /// provider, model, system prompt and agent session.
    package func append(_ messages: [StoredMessage], to conversation: StoredConversation) throws(ConversationStoreError) {
        _ = try withDatabase(create: true) { db throws(SQLiteError) in
            try db.transaction { () throws(SQLiteError) in
                let updated = max(conversation.updatedUnixMS, messages.map(\.unixMS).max() ?? 0)
                if conversation.messageCount == 0 {
                    try db.query(
                        "INSERT OR IGNORE INTO conversations (id, provider, created_ms, updated_ms, title) VALUES (?, ?, ?, ?, ?)",
                        [.text(conversation.id), .text(conversation.provider), .integer(conversation.createdUnixMS), .integer(updated), .text(conversation.title)])
                }
                let known = try db.query(
                    "UPDATE conversations SET provider = ?, model = ?, updated_ms = ?, system = ?, agent_session = ? WHERE id = ? RETURNING id",
                    [
                        .text(conversation.provider), conversation.model.map { .text($0) } ?? .null, .integer(updated),
                        conversation.system.map { .text($0) } ?? .null, conversation.agentSession.map { .text($0) } ?? .null, .text(conversation.id),
                    ])
                guard !known.isEmpty else {
                    throw SQLiteError(code: 0, message: "\(file): no conversation \(conversation.id) (deleted meanwhile?)")
                }
                try Self.insert(messages, into: conversation.id, db)
            }
        }
    }

    /// Inserts `messages` at the end of conversation `id` (inside the caller's transaction).
    private static func insert(_ messages: [StoredMessage], into id: String, _ db: SQLiteDatabase) throws(SQLiteError) {
        for m in messages {
            let doc = Wire.json(ModelRequest(messages: [m.message]))["messages"]?[0] ?? .null
            let calls: SQLiteValue = m.message.toolCalls.isEmpty ? .null : .text(JSONValue.array(m.message.toolCalls.map { Wire.json($0) }).jsonText)
            try db.query(
                """
                INSERT INTO messages (conversation_id, role, text, tool_calls, tool_call_id, usage, provider, model, unix_ms, message)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    .text(id), .text(m.message.role.rawValue), .text(m.message.content), calls,
                    m.message.toolCallID.map { .text($0) } ?? .null, m.usage.map { .text(Wire.json($0).jsonText) } ?? .null,
                    m.provider.map { .text($0) } ?? .null, m.model.map { .text($0) } ?? .null, .integer(m.unixMS), .text(doc.jsonText),
                ])
        }
    }

    // MARK: The gateway's stored responses

    /// The stored response `id` of `owner` (nil when there is none, or it is another owner's).
    package func response(_ id: String, owner: String) throws(ConversationStoreError) -> StoredResponse? {
        let rows = try withDatabase(create: false) { db throws(SQLiteError) in
            try db.query(
                "SELECT id, owner, conversation_id, messages, created_ms, response FROM responses WHERE id = ? AND owner = ?", [.text(id), .text(owner)])
        }
        guard let row = rows?.first else { return nil }
        return StoredResponse(
            id: row[0].string ?? "", owner: row[1].string ?? "", conversationID: row[2].string ?? "", messageCount: row[3].int ?? 0,
            createdUnixMS: row[4].int ?? 0, response: row[5].string ?? "")
    }

    /// Stores a response in one transaction: `turn` (the request's new
    /// input messages and the answer) continues `previous` (nil: a new
    /// conversation titled by the turn's first message). When `previous`
    /// is the tip of its conversation the turn is appended to it;
    /// otherwise (the conversation went on from it, or was purged
    /// meanwhile) a new conversation holds `prior` (`previous`'s messages,
    /// as read) then the turn. Responses and conversations last updated
    /// before `purgeBeforeUnixMS` are removed first. `response.conversationID`
    /// and `messageCount` are set here.
    package func storeResponse(
        _ response: StoredResponse, turn: [StoredMessage], previous: StoredResponse?, prior: [StoredMessage], provider: String, model: String?,
        system: String?, purgeBeforeUnixMS: Int?
    ) throws(ConversationStoreError) {
        _ = try withDatabase(create: true) { db throws(SQLiteError) in
            try db.transaction { () throws(SQLiteError) in
                if let cutoff = purgeBeforeUnixMS {
                    try db.query("DELETE FROM responses WHERE created_ms < ?", [.integer(cutoff)])
                    try db.query(
                        "DELETE FROM messages WHERE conversation_id IN (SELECT id FROM conversations WHERE updated_ms < ?)", [.integer(cutoff)])
                    try db.query("DELETE FROM conversations WHERE updated_ms < ?", [.integer(cutoff)])
                }
                let now = response.createdUnixMS
                var conversation: String?
                var count = 0
                if let previous {
                    let tip = try db.query("SELECT count(*) FROM messages WHERE conversation_id = ?", [.text(previous.conversationID)]).first?.first?.int
                    if tip == previous.messageCount, tip ?? 0 > 0 {
                        conversation = previous.conversationID
                        count = previous.messageCount
                    }
                }
                if conversation == nil {
                    let id = Self.newID(unixMS: now)
                    let first = (prior + turn).first { $0.message.role == .user }?.message.content ?? ""
                    try db.query(
                        "INSERT INTO conversations (id, provider, created_ms, updated_ms, title) VALUES (?, ?, ?, ?, ?)",
                        [.text(id), .text(provider), .integer(now), .integer(now), .text(Self.title(first))])
                    try Self.insert(prior, into: id, db)
                    conversation = id
                    count = prior.count
                }
                try db.query(
                    "UPDATE conversations SET provider = ?, model = ?, updated_ms = ?, system = ? WHERE id = ?",
                    [.text(provider), model.map { .text($0) } ?? .null, .integer(now), system.map { .text($0) } ?? .null, .text(conversation!)])
                try Self.insert(turn, into: conversation!, db)
                try db.query(
                    "INSERT INTO responses (id, owner, conversation_id, messages, created_ms, response) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        .text(response.id), .text(response.owner), .text(conversation!), .integer(count + turn.count), .integer(now),
                        .text(response.response),
                    ])
            }
        }
    }

    /// Deletes the stored response `id` of `owner` (false when there is
    /// none, or it is another owner's), and the messages no other stored
    /// response of its conversation needs (the conversation too when none
    /// is left).
    package func deleteResponse(_ id: String, owner: String) throws(ConversationStoreError) -> Bool {
        let removed = try withDatabase(create: false) { db throws(SQLiteError) -> Bool in
            try db.transaction { () throws(SQLiteError) -> Bool in
                guard let row = try db.query("DELETE FROM responses WHERE id = ? AND owner = ? RETURNING conversation_id", [.text(id), .text(owner)]).first,
                    let conversation = row[0].string
                else { return false }
                let kept = try db.query("SELECT coalesce(max(messages), 0) FROM responses WHERE conversation_id = ?", [.text(conversation)]).first?.first?.int ?? 0
                try db.query(
                    "DELETE FROM messages WHERE conversation_id = ? AND id NOT IN (SELECT id FROM messages WHERE conversation_id = ? ORDER BY id LIMIT ?)",
                    [.text(conversation), .text(conversation), .integer(kept)])
                if kept == 0 { try db.query("DELETE FROM conversations WHERE id = ?", [.text(conversation)]) }
                return true
            }
        }
        return removed ?? false
    }

    /// Removes conversation `id` and its messages; false when there was none.
    package func delete(_ id: String) throws(ConversationStoreError) -> Bool {
        let removed = try withDatabase(create: false) { db throws(SQLiteError) in
            try db.transaction { () throws(SQLiteError) -> Bool in
                try db.query("DELETE FROM messages WHERE conversation_id = ?", [.text(id)])
                return try !db.query("DELETE FROM conversations WHERE id = ? RETURNING id", [.text(id)]).isEmpty
            }
        }
        return removed ?? false
    }

    /// The title of a conversation whose first prompt is `prompt`: its first
    /// non-empty line, at most 80 characters.
    static func title(_ prompt: String) -> String {
        let line = prompt.split(whereSeparator: \.isNewline).first { !$0.allSatisfy(\.isWhitespace) } ?? ""
        let trimmed = line.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed()
        return Wire.excerpt(String(trimmed), limit: 80)
    }

    /// A new id: 48 bits of milliseconds then 80 random bits, in lowercase
    /// Crockford base 32 (a ULID): ids sort by creation, and two processes
    /// starting a conversation in the same millisecond still differ.
    package static func newID(unixMS: Int) -> String {
        let digits = Array("0123456789abcdefghjkmnpqrstvwxyz".utf8)
        var out: [UInt8] = []
        var t = UInt64(max(0, unixMS))
        for _ in 0..<10 {
            out.append(digits[Int(t & 31)])
            t >>= 5
        }
        out.reverse()
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<16 { out.append(digits[Int(rng.next() & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether `id` could be a conversation id (26 base-32 characters).
    package static func isValidID(_ id: String) -> Bool {
        id.utf8.count == 26 && id.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) }
    }
}
