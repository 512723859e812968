// How a ModelRequest becomes a `claude` command line, stdin and (for a
// conversation with earlier answers) a transcript file.
import DescartesPluginKit
import Glibc

/// The plugin's own configuration (the shared keys are in HeadlessConfig).
struct ClaudeSettings: Sendable {
    var model: String?
    var systemPrompt: String?
    var appendSystemPrompt: String?
    /// `append` (default): the request's system prompt goes to
    /// `--append-system-prompt`, keeping Claude Code's own; `replace`:
    /// `--system-prompt`.
    var replaceSystemPrompt: Bool
    var maxTurns: Int?
    var tools: [String]?
    var allowedTools: [String]?
    var disallowedTools: [String]?
    var permissionMode: String?
    var apiKey: String?
    var maxRetries: Int?
    var persistSessions: Bool
    var sessionIdle: Duration
    var maxSessions: Int
    /// `health_turn` (default true): the health check runs one real turn.
    var healthTurn: Bool

    init(_ c: BackendContext) throws(ProviderError) {
        func text(_ k: String) -> String? { c.string(k).flatMap { $0.isEmpty ? nil : $0 } }
        model = text("model")
        systemPrompt = text("system_prompt")
        appendSystemPrompt = text("append_system_prompt")
        switch text("system_prompt_mode") ?? "append" {
        case "append": replaceSystemPrompt = false
        case "replace": replaceSystemPrompt = true
        case let other: throw ProviderError(.config, "key 'system_prompt_mode': '\(other)' is not append or replace")
        }
        maxTurns = c.int("max_turns")
        if let m = maxTurns, m < 1 { throw ProviderError(.config, "key 'max_turns': must be at least 1, got \(m)") }
        tools = c.list("tools")
        allowedTools = c.list("allowed_tools")
        disallowedTools = c.list("disallowed_tools")
        permissionMode = text("permission_mode")
        try Self.checkPermissionMode(permissionMode, "key 'permission_mode'")
        apiKey = text("api_key")
        // 0 unless set: nested retries (Claude Code's ten inside each of the
        // host's attempts) would make a permanent 429 take minutes; the
        // host's policy decides (docs/headless.md, "Retries").
        maxRetries = c.int("max_retries") ?? 0
        if let r = maxRetries, r < 0 { throw ProviderError(.config, "key 'max_retries': must not be negative, got \(r)") }
        persistSessions = c.bool("persist_sessions") ?? false
        healthTurn = c.bool("health_turn") ?? true
        let idle = c.int("session_idle_secs") ?? 900
        guard idle > 0 else { throw ProviderError(.config, "key 'session_idle_secs': must be positive, got \(idle)") }
        sessionIdle = .seconds(idle)
        maxSessions = c.int("max_sessions") ?? 8
        guard maxSessions > 0 else { throw ProviderError(.config, "key 'max_sessions': must be positive, got \(maxSessions)") }
    }

    /// Variables the plugin adds to the child's environment: the key (never
    /// in argv) and the retry count.
    var environment: [String: String] {
        var e: [String: String] = [:]
        if let apiKey { e["ANTHROPIC_API_KEY"] = apiKey }
        if let maxRetries { e["CLAUDE_CODE_MAX_RETRIES"] = String(maxRetries) }
        return e
    }
}

/// What the caller asked for in `ModelRequest.options` (docs/headless.md).
extension ClaudeSettings {
    /// The values `claude --permission-mode` takes (Claude Code 2.1.331:
    /// its --help lists all but `default`, which it also accepts).
    static let permissionModes = ["default", "acceptEdits", "auto", "bypassPermissions", "manual", "dontAsk", "plan"]

    /// Refuses an unknown mode before anything is spawned (Claude Code would
    /// exit 1 with a usage error, reported as `process`).
    static func checkPermissionMode(_ mode: String?, _ what: String) throws(ProviderError) {
        guard let mode, !permissionModes.contains(mode) else { return }
        throw ProviderError(.config, "\(what): '\(mode)' is not a permission mode (\(permissionModes.joined(separator: ", ")))")
    }
}

struct ClaudeOptions {
    /// Start a session (a process kept alive across turns).
    var startSession = false
    /// Continue this session.
    var sessionID: String?
    /// Close the session after this turn.
    var endSession = false
    var maxTurns: Int?
    var permissionMode: String?
    var allowedTools: [String]?
    var disallowedTools: [String]?
    var cwd: String?

    init(_ o: JSONObject) throws(ProviderError) {
        func strings(_ k: String) throws(ProviderError) -> [String]? {
            guard let v = o[k], !v.isNull else { return nil }
            if let s = v.stringValue { return s.split(separator: ",").map(String.init) }
            guard let a = v.arrayValue else { throw ProviderError(.config, "request option '\(k)': expected a list of strings") }
            return a.compactMap(\.stringValue)
        }
        startSession = o["session"]?.boolValue ?? false
        sessionID = o["session_id"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
        endSession = o["end_session"]?.boolValue ?? false
        if let v = o["max_turns"], !v.isNull {
            guard let n = v.intValue, n >= 1 else { throw ProviderError(.config, "request option 'max_turns': expected a positive integer") }
            maxTurns = n
        }
        permissionMode = o["permission_mode"]?.stringValue
        try ClaudeSettings.checkPermissionMode(permissionMode, "request option 'permission_mode'")
        allowedTools = try strings("allowed_tools")
        disallowedTools = try strings("disallowed_tools")
        if let d = o["cwd"]?.stringValue, !d.isEmpty {
            guard d.hasPrefix("/") else { throw ProviderError(.config, "request option 'cwd': '\(d)' is not an absolute path") }
            cwd = d
        }
        if let s = sessionID, !AgentID.isValid(s) {
            throw ProviderError(.config, "request option 'session_id': '\(s)' is not a session id this backend returned")
        }
    }

    var wantsSession: Bool { startSession || sessionID != nil }
}

/// A request split the way `claude` takes it.
struct ClaudeInput {
    /// The earlier conversation (up to and including the last assistant
    /// message), replayed through a transcript and `--resume`.
    var history: [Message]
    /// The user messages after it, sent on stdin as stream-json lines.
    var newTurn: [Message]
    var system: String?

    init(_ r: ModelRequest) throws(ProviderError) {
        let turn = try AgentTurn(
            r, agent: "claude",
            toolsReason: "claude-code-cli runs Claude Code's own tools; tools defined by the caller cannot be passed to it (choose them with the 'tools' and 'allowed_tools' config keys)"
        )
        system = turn.joinedSystem
        history = turn.history
        newTurn = turn.newTurn
    }

    /// stdin: the new user message as one stream-json line. Several user
    /// messages in a row become one message with a text block each: every
    /// stream-json user line is a turn of its own (even one marked
    /// `shouldQuery: false` answers with an empty result line), and the
    /// request is one turn.
    var stdinLines: [UInt8] {
        let content: JSONValue =
            newTurn.count == 1 && newTurn[0].images.isEmpty
            ? .string(newTurn[0].content)
            : .array(newTurn.flatMap { m in
                // Images before their message's text, as the Messages API advises.
                m.images.map(\.anthropicBlock) + (m.content.isEmpty ? [] : [["type": "text", "text": .string(m.content)]])
            })
        var out = JSONValue.object(["type": "user", "message": ["role": "user", "content": content]]).jsonBytes
        out.append(0x0A)
        return out
    }

    /// The history as a Claude Code transcript (JSON lines of user and
    /// assistant entries chained by uuid), for `--resume <file>`.
    ///
    /// `--input-format stream-json` cannot carry it: Claude Code appends an
    /// assistant line to the conversation at once but queues user lines
    /// until a turn starts, so [user, assistant, user] arrives at the API as
    /// [assistant, user, user] (checked against Claude Code 2.1.331).
    static func transcript(_ history: [Message], sessionID: String) -> [UInt8] {
        var out: [UInt8] = []
        var parent: String? = nil
        var pendingResults: [JSONValue] = []
        func entry(_ type: String, _ message: JSONObject) {
            let uuid = AgentID.random()
            let o: JSONObject = [
                "parentUuid": parent.map { .string($0) } ?? .null, "isSidechain": false, "type": .string(type),
                "message": .object(message), "uuid": .string(uuid), "sessionId": .string(sessionID), "userType": "external",
            ]
            JSONValue.object(o).write(to: &out)
            out.append(0x0A)
            parent = uuid
        }
        func flushResults() {
            if pendingResults.isEmpty { return }
            entry("user", ["role": "user", "content": .array(pendingResults)])
            pendingResults = []
        }
        for m in history {
            switch m.role {
            case .tool:
                pendingResults.append([
                    "type": "tool_result", "tool_use_id": .string(m.toolCallID ?? ""), "content": .string(m.content),
                ])
            case .user:
                flushResults()
                let content: JSONValue =
                    m.images.isEmpty
                    ? .string(m.content)
                    : .array(m.images.map(\.anthropicBlock) + (m.content.isEmpty ? [] : [["type": "text", "text": .string(m.content)]]))
                entry("user", ["role": "user", "content": content])
            case .assistant:
                flushResults()
                // Every reasoning block with its own signature, in order (a
                // joined text under the last signature would be refused).
                var blocks = m.anthropicReasoningBlocks
                if !m.content.isEmpty { blocks.append(["type": "text", "text": .string(m.content)]) }
                for c in m.toolCalls {
                    let input = (try? JSONValue.parse(c.arguments)).flatMap { $0.objectValue.map(JSONValue.object) } ?? [:]
                    blocks.append(["type": "tool_use", "id": .string(c.id), "name": .string(c.name), "input": input])
                }
                if blocks.isEmpty { blocks.append(["type": "text", "text": ""]) }
                entry("assistant", ["role": "assistant", "content": .array(blocks)])
            case .system:
                break
            }
        }
        flushResults()
        return out
    }
}

/// The schema `--json-schema` takes for a response format (nil for text):
/// the request's, or any object for `.json`.
func claudeSchema(_ f: ResponseFormat) -> JSONValue? {
    switch f {
    case .text: return nil
    case .json: return ["type": "object"]
    case .jsonSchema(_, let schema, _): return schema
    }
}

/// The command line for one process.
func claudeArguments(
    settings s: ClaudeSettings, options o: ClaudeOptions, model: String?, system: String?, partial: Bool,
    sessionID: String?, resume: String?, extra: [String], hostApprovals: Bool = false, schema: JSONValue? = nil
) -> [String] {
    var a = ["-p", "--output-format", "stream-json", "--verbose", "--input-format", "stream-json"]
    if partial { a.append("--include-partial-messages") }
    if let model { a += ["--model", model] }
    if let p = s.systemPrompt { a += ["--system-prompt", p] }
    var append: [String] = []
    if let p = s.appendSystemPrompt { append.append(p) }
    if let system {
        if s.replaceSystemPrompt && s.systemPrompt == nil { a += ["--system-prompt", system] } else { append.append(system) }
    }
    if !append.isEmpty { a += ["--append-system-prompt", append.joined(separator: "\n\n")] }
    if let n = o.maxTurns ?? s.maxTurns { a += ["--max-turns", String(n)] }
    // `--opt=value` keeps these variadic options from taking the next argument.
    if let t = s.tools { a.append("--tools=" + t.joined(separator: ",")) }
    if let t = o.allowedTools ?? s.allowedTools, !t.isEmpty { a.append("--allowed-tools=" + t.joined(separator: ",")) }
    if let t = o.disallowedTools ?? s.disallowedTools, !t.isEmpty { a.append("--disallowed-tools=" + t.joined(separator: ",")) }
    if let m = o.permissionMode ?? s.permissionMode { a += ["--permission-mode", m] }
    if !s.persistSessions { a.append("--no-session-persistence") }
    // Permission prompts come to us as can_use_tool control requests.
    if hostApprovals { a += ["--permission-prompt-tool", "stdio"] }
    if let resume { a += ["--resume", resume] } else if let sessionID { a += ["--session-id", sessionID] }
    // Structured output: Claude Code gives the model a StructuredOutput tool
    // with this input schema, asks again until it is called, and reports
    // the input as the result's `structured_output`.
    if let schema { a += ["--json-schema", schema.jsonText] }
    return a + extra
}
