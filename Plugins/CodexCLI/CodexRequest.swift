// How a ModelRequest becomes a `codex exec` command line and its stdin.
import DescartesPluginKit
import Glibc

/// The plugin's own configuration (the shared keys are in HeadlessConfig).
struct CodexSettings: Sendable {
    var model: String?
    var profile: String?
    var sandbox: String?
    var approvalPolicy: String?
    /// CODEX_HOME for the child: its config, logins and saved sessions.
    var codexHome: String?
    /// A Responses API endpoint: the plugin defines a model provider for it.
    var baseURL: String?
    var apiKey: String?
    var maxRetries: Int
    var skipGitRepoCheck: Bool
    var developerInstructions: String?
    var reasoningEffort: String?
    var healthTurn: Bool

    /// The values of `codex exec --sandbox` (codex 0.147).
    static let sandboxes = ["read-only", "workspace-write", "danger-full-access"]
    /// `codex exec` 0.147 runs every turn with approval `never`, whatever
    /// `approval_policy` says (measured: under `on-request` and `untrusted`
    /// a command asking for escalation was refused with "approval policy is
    /// Never; reject command"): nobody is there to ask. Other values are
    /// refused rather than silently ignored.
    static let approvalPolicies = ["never"]
    static let reasoningEfforts = ["minimal", "low", "medium", "high", "xhigh"]

    init(_ c: BackendContext) throws(ProviderError) {
        func text(_ k: String) -> String? { c.string(k).flatMap { $0.isEmpty ? nil : $0 } }
        model = text("model")
        sandbox = text("sandbox")
        try Self.check(sandbox, Self.sandboxes, "key 'sandbox'")
        approvalPolicy = text("approval_policy")
        if let a = approvalPolicy, !Self.approvalPolicies.contains(a) {
            throw ProviderError(
                .config,
                "key 'approval_policy': '\(a)' cannot apply: codex exec runs with approval never whatever the config says (a command asking for more than the sandbox allows is refused, and the answer's finish_reason is tool_denied); choose what codex may do with 'sandbox', or give the request an approval policy (--approve): codex then runs as codex app-server and asks")
        }
        reasoningEffort = text("reasoning_effort")
        try Self.check(reasoningEffort, Self.reasoningEfforts, "key 'reasoning_effort'")
        codexHome = text("codex_home")
        if let h = codexHome {
            guard h.hasPrefix("/") else { throw ProviderError(.config, "key 'codex_home': '\(h)' is not an absolute path") }
            var st = stat()
            guard stat(h, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                throw ProviderError(.config, "key 'codex_home': '\(h)' is not a directory (create it, or unset the key to use codex's own ~/.codex)")
            }
        }
        profile = text("profile")
        if let p = profile, p.contains("/") || p.hasPrefix(".") {
            throw ProviderError(.config, "key 'profile': '\(p)' is not a profile name (codex reads $CODEX_HOME/<name>.config.toml)")
        }
        baseURL = text("base_url")
        if let u = baseURL, !(u.hasPrefix("http://") || u.hasPrefix("https://")) {
            throw ProviderError(.config, "key 'base_url': '\(u)' is not an http(s) URL")
        }
        apiKey = text("api_key")
        maxRetries = c.int("max_retries") ?? 0
        guard maxRetries >= 0 else { throw ProviderError(.config, "key 'max_retries': must not be negative, got \(maxRetries)") }
        skipGitRepoCheck = c.bool("skip_git_repo_check") ?? true
        developerInstructions = text("developer_instructions")
        healthTurn = c.bool("health_turn") ?? true
    }

    /// Refuses a value codex would reject only after it started (it exits
    /// with "Error loading config.toml: unknown variant").
    static func check(_ value: String?, _ allowed: [String], _ what: String) throws(ProviderError) {
        guard let value, !allowed.contains(value) else { return }
        throw ProviderError(.config, "\(what): '\(value)' is not one of \(allowed.joined(separator: ", "))")
    }

    /// Variables the plugin sets for codex: the key (never in argv) and the
    /// home. `CODEX_API_KEY` is what `codex exec` reads for its own OpenAI
    /// provider, and the `env_key` of the provider defined for `base_url`.
    var environment: [String: String] {
        var e: [String: String] = [:]
        if let apiKey { e["CODEX_API_KEY"] = apiKey }
        if let codexHome { e["CODEX_HOME"] = codexHome }
        return e
    }

    /// The CODEX_HOME codex will use in `environment` (the child's).
    static func home(_ environment: [String: String]) -> String? {
        if let h = environment["CODEX_HOME"], h.hasPrefix("/") { return h }
        if let h = environment["HOME"], h.hasPrefix("/") { return h + "/.codex" }
        return nil
    }

    /// Codex ignores a `--profile` whose file is missing (0.147): refused
    /// here instead, naming the file.
    func checkProfile(_ environment: [String: String]) throws(ProviderError) {
        guard let profile, let home = Self.home(environment) else { return }
        let file = "\(home)/\(profile).config.toml"
        guard access(file, R_OK) == 0 else {
            throw ProviderError(
                .config, "key 'profile': '\(profile)' has no file \(file) (codex 0.147 reads a profile from $CODEX_HOME/<name>.config.toml and ignores a missing one)")
        }
    }
}

/// What the caller asked for in `ModelRequest.options` (docs/headless.md).
struct CodexOptions {
    /// Start a session: the thread is saved so that later turns resume it.
    var startSession = false
    /// Resume this thread (`codex exec resume <id>`).
    var sessionID: String?
    var sandbox: String?
    var cwd: String?

    init() {}

    init(_ o: JSONObject) throws(ProviderError) {
        startSession = o["session"]?.boolValue ?? false
        sessionID = o["session_id"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
        if let s = sessionID, !AgentID.isValid(s) {
            throw ProviderError(.config, "request option 'session_id': '\(s)' is not a codex thread id (a UUID from thread.started)")
        }
        sandbox = o["sandbox"]?.stringValue
        try CodexSettings.check(sandbox, CodexSettings.sandboxes, "request option 'sandbox'")
        if let d = o["cwd"]?.stringValue, !d.isEmpty {
            guard d.hasPrefix("/") else { throw ProviderError(.config, "request option 'cwd': '\(d)' is not an absolute path") }
            cwd = d
        }
    }

    var persistent: Bool { startSession || sessionID != nil }
}

/// A request split the way `codex exec` takes it: the new user text on
/// stdin, the system prompt as developer instructions.
struct CodexInput {
    var prompt: String
    var system: String?

    init(_ r: ModelRequest, resuming: Bool) throws(ProviderError) {
        let turn = try AgentTurn(
            r, agent: "codex",
            toolsReason: "codex-cli runs Codex's own tools; tools defined by the caller cannot be passed to it (choose what it may do with the 'sandbox' and 'approval_policy' keys)"
        )
        system = turn.joinedSystem
        if !turn.history.isEmpty && !resuming {
            throw ProviderError(
                .unsupportedFeature,
                "codex-cli cannot be given earlier answers: a conversation continues in a Codex session (request option session: true, then session_id; `descartes complete --session`)"
            )
        }
        prompt = turn.newTurn.map(\.content).filter { !$0.isEmpty }.joined(separator: "\n\n")
        guard !prompt.isEmpty else {
            throw ProviderError(.config, "the request must end with a user message with text (codex answers the user)")
        }
    }
}

/// A TOML basic string (for `-c key=value`, whose value codex parses as TOML).
func tomlString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        default:
            if u.value < 0x20 || u.value == 0x7F {
                let hex = String(u.value, radix: 16, uppercase: true)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}

/// The command line for one turn: `codex exec` options, the extra `args`,
/// `resume <thread>` for a session's later turn, and `-` (the prompt is read
/// from stdin: never parsed as an option, never in `ps`, no length limit).
func codexArguments(
    settings s: CodexSettings, options o: CodexOptions, model: String?, system: String?, schema: String?, extra: [String]
) -> [String] {
    var a = ["exec", "--json", "--color", "never"]
    if s.skipGitRepoCheck { a.append("--skip-git-repo-check") }
    if !o.persistent { a.append("--ephemeral") }
    if let model { a += ["-m", model] }
    if let p = s.profile { a += ["--profile", p] }
    a += codexConfigArguments(settings: s, options: o, system: system, approvalPolicy: s.approvalPolicy)
    if let schema { a += ["--output-schema", schema] }
    a += extra
    if let id = o.sessionID { a += ["resume", id] }
    a.append("-")
    return a
}

/// The `-c key=value` overrides `codex exec` and `codex app-server` share:
/// the sandbox, the approval policy, the reasoning effort, the developer
/// instructions (the `developer_instructions` key and the request's
/// system prompt) and, with `base_url`, a model provider of our own.
func codexConfigArguments(settings s: CodexSettings, options o: CodexOptions, system: String?, approvalPolicy: String?) -> [String] {
    var a: [String] = []
    // `-c` rather than -s: `codex exec resume` takes no --sandbox.
    if let sb = o.sandbox ?? s.sandbox { a += ["-c", "sandbox_mode=" + tomlString(sb)] }
    if let ap = approvalPolicy { a += ["-c", "approval_policy=" + tomlString(ap)] }
    if let e = s.reasoningEffort { a += ["-c", "model_reasoning_effort=" + tomlString(e)] }
    let instructions = [s.developerInstructions, system].compactMap { $0 }.joined(separator: "\n\n")
    if !instructions.isEmpty { a += ["-c", "developer_instructions=" + tomlString(instructions)] }
    if let url = s.baseURL {
        // A provider of our own: its retries are ours to set (codex's
        // built-in provider cannot be overridden), its key is CODEX_API_KEY.
        a += [
            "-c", "model_provider=\"descartes\"",
            "-c",
            "model_providers.descartes={ name = \"descartes\", base_url = \(tomlString(url)), env_key = \"CODEX_API_KEY\", wire_api = \"responses\", request_max_retries = \(s.maxRetries), stream_max_retries = \(s.maxRetries) }",
        ]
    }
    return a
}
