import Glibc
import DescartesSupport

/// The `audit:` section of providers.yaml.
///
/// ```yaml
/// audit:
///   enabled: true
///   database: ~/.local/state/descartes/audit.sqlite3  # the ledger (default: $XDG_STATE_HOME/descartes/audit.sqlite3,
///                                                     #  or beside `file` when only that is set)
///   file: ~/.local/state/descartes/audit.jsonl   # the JSON-lines export (default $XDG_STATE_HOME/descartes/audit.jsonl)
///   prompts: false     # also record the request's messages (JSON lines only)
///   replies: false     # also record the answer's text (JSON lines only)
/// ```
public struct AuditSettings: Sendable, Equatable {
    public var enabled: Bool = false
    /// Absolute path of the JSON-lines log (one line per request: the export).
    public var file: String
    /// Absolute path of the SQLite ledger (one row per attempt: what
    /// `descartes log` reads).
    public var database: String
    public var prompts: Bool = false
    public var replies: Bool = false
    /// Where `file` was set (or nil for the default).
    public var fileLocation: SourcePosition?

    public init(file: String, database: String? = nil, enabled: Bool = false, prompts: Bool = false, replies: Bool = false) {
        self.file = file
        self.database = database ?? FileSystem.join(FileSystem.directory(of: file), "audit.sqlite3")
        self.enabled = enabled
        self.prompts = prompts
        self.replies = replies
    }

    static let knownKeys = ["enabled", "file", "database", "prompts", "replies"]

    /// `$XDG_STATE_HOME/descartes/audit.jsonl`, by default
    /// `~/.local/state/descartes/audit.jsonl`.
    public static func defaultFile(environment: [String: String] = Environment.current()) -> String {
        if let x = environment["XDG_STATE_HOME"], x.hasPrefix("/") { return FileSystem.join(x, "descartes/audit.jsonl") }
        let home = environment["HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? Environment.homeDirectory
        return FileSystem.join(home, ".local/state/descartes/audit.jsonl")
    }

    /// `$XDG_STATE_HOME/descartes/audit.sqlite3`, by default
    /// `~/.local/state/descartes/audit.sqlite3`.
    public static func defaultDatabase(environment: [String: String] = Environment.current()) -> String {
        FileSystem.join(FileSystem.directory(of: defaultFile(environment: environment)), "audit.sqlite3")
    }

    /// Reads the (expanded) section; nil means the defaults (disabled).
    package static func read(_ node: YAMLNode?, environment: [String: String] = Environment.current()) -> Result<AuditSettings, SourceError> {
        var s = AuditSettings(file: defaultFile(environment: environment))
        guard let node else { return .success(s) }
        var v = NodeValidator(file: node.location.file)
        guard case .mapping = node.value else {
            v.problem(node, "'audit' is a mapping: {enabled: true, file: PATH, prompts: false, replies: false}")
            return .failure(SourceError(v.problems))
        }
        v.unknownKeys(node, allowed: knownKeys, what: "key of 'audit'")
        s.enabled = v.bool(node, "enabled") ?? false
        s.prompts = v.bool(node, "prompts") ?? false
        s.replies = v.bool(node, "replies") ?? false
        if let f = v.string(node, "file") {
            var path = f
            if path.hasPrefix("~/") { path = FileSystem.join(Environment.homeDirectory, String(path.dropFirst(2))) }
            let at = node["file"]!.location
            if !path.hasPrefix("/") { path = FileSystem.join(FileSystem.directory(of: at.file), path) }
            s.file = path
            s.fileLocation = at
            s.database = FileSystem.join(FileSystem.directory(of: path), "audit.sqlite3")
        }
        if let f = v.string(node, "database") {
            var path = f
            if path.hasPrefix("~/") { path = FileSystem.join(Environment.homeDirectory, String(path.dropFirst(2))) }
            if !path.hasPrefix("/") { path = FileSystem.join(FileSystem.directory(of: node["database"]!.location.file), path) }
            s.database = path
        }
        if !v.problems.isEmpty { return .failure(SourceError(v.problems)) }
        return .success(s)
    }
}

extension ProvidersConfig {
    /// The audit settings (defaults when no file has an `audit:` section).
    public func auditSettings() throws(SourceError) -> AuditSettings {
        try AuditSettings.read(try section("audit"), environment: interpolator.environment).get()
    }
}

/// The audit log: one row per attempt in the SQLite ledger
/// (`AuditLedger`, what `descartes log` reads), and one JSON line per
/// request appended to a file only its owner can read (mode 0600, in a
/// directory created 0700), the export for other tools.
///
/// A record holds the time, provider instance, plugin, model, outcome or
/// error kind, tokens, cost, duration and the attempts and fallback chain;
/// the prompt and the reply only when configured; never a secret (every
/// line passes through the redactor). See docs/configuration.md.
public final class AuditLog: Sendable {
    public let settings: AuditSettings

    /// Masks every line (its redactor) and hears of failed writes.
    public let logSink: LogSink

    /// The ledger (`settings.database`).
    public let ledger: AuditLedger

    /// The plugin of a provider instance (nil: not known), to name the
    /// plugin of the provider that actually answered.
    let plugins: @Sendable (String) -> String?

    public init(_ settings: AuditSettings, logSink: LogSink = LogSink(), plugins: @escaping @Sendable (String) -> String? = { _ in nil }) {
        self.settings = settings
        self.logSink = logSink
        self.plugins = plugins
        ledger = AuditLedger(file: settings.database)
    }

    /// Appends one record as one line, with a single write(2) on a file
    /// opened O_APPEND, so concurrent processes do not interleave records.
    public func append(_ record: JSONObject) throws(FileSystemError) {
        let line = logSink.redactor.redact(JSONValue.object(record).jsonText) + "\n"
        let dir = FileSystem.directory(of: settings.file)
        if !FileSystem.isDirectory(dir) { try FileSystem.makeDirectories(dir, mode: 0o700) }
        let fd = open(settings.file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if fd < 0 { throw FileSystem.systemError(settings.file) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FileSystem.systemError(settings.file) }
        guard st.st_uid == geteuid() else {
            throw FileSystemError(path: settings.file, reason: "the audit log is owned by uid \(st.st_uid), not by this user; refusing to write to it")
        }
        // An existing file that others can read is narrowed to its owner.
        if st.st_mode & 0o077 != 0 { fchmod(fd, 0o600) }
        var bytes = Array(line.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FileSystem.systemError(settings.file)
            }
            off += n
        }
    }

    /// `backend` with every request recorded. `plugin` is the plugin's
    /// provider id (the instance's `plugin:`).
    public func wrap(_ backend: any ModelBackend, plugin: String) -> any ModelBackend {
        AuditedBackend(inner: backend, log: self, plugin: plugin)
    }

    /// The current time as RFC 3339 UTC with milliseconds.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return timestamp(unixMS: Int(ts.tv_sec) * 1000 + Int(ts.tv_nsec / 1_000_000))
    }

    /// A time in milliseconds since the epoch as RFC 3339 UTC with milliseconds
    /// (what the log's `time` field holds; `descartes log` prints the ledger's
    /// times the same way).
    package static func timestamp(unixMS: Int) -> String {
        var t = time_t(unixMS / 1000)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        func pad(_ v: Int, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(pad(Int(tm.tm_year) + 1900, 4))-\(pad(Int(tm.tm_mon) + 1, 2))-\(pad(Int(tm.tm_mday), 2))T"
            + "\(pad(Int(tm.tm_hour), 2)):\(pad(Int(tm.tm_min), 2)):\(pad(Int(tm.tm_sec), 2)).\(pad(unixMS % 1000, 3))Z"
    }

    func record(
        operation: String, instance: String, plugin: String, request: ModelRequest, started: String, duration: Duration,
        result: Result<ModelResponse, ProviderError>
    ) -> JSONObject {
        // The provider that answered (or failed last), and its plugin.
        let answered: String
        switch result {
        case .success(let r): answered = r.provider.isEmpty ? instance : r.provider
        case .failure(let e): answered = e.attempts.last?.provider ?? e.provider ?? instance
        }
        var o: JSONObject = [
            "time": .string(started), "instance": .string(instance),
            "plugin": .string(answered == instance ? plugin : (plugins(answered) ?? plugin)), "operation": .string(operation),
        ]
        if answered != instance {
            o["provider"] = .string(answered)
        }
        var labels = request.metadata
        if let key = labels.removeValue(forKey: AuditLedger.gatewayKeyLabel) { o["gateway_key"] = .string(key) }
        if !labels.isEmpty {
            o["labels"] = .object(JSONObject(labels.sorted { $0.key < $1.key }.map { (key: $0.key, value: JSONValue.string($0.value)) }))
        }
        switch result {
        case .success(let r):
            o["model"] = .string(r.model.isEmpty ? (request.model ?? "") : r.model)
            o["outcome"] = "ok"
            o["finish_reason"] = .string(r.finishReason.rawValue)
            o["tokens"] = [
                "input": .integer(r.usage.inputTokens), "output": .integer(r.usage.outputTokens),
                "cache_read": .integer(r.usage.cacheReadTokens), "cache_write": .integer(r.usage.cacheWriteTokens),
                "reasoning": .integer(r.usage.reasoningTokens),
            ]
            o["cost_usd"] = r.costUSD.map { .number($0) } ?? .null
            o["cached"] = .bool(r.metadata["cache"] == "hit")
            o["duration_ms"] = .integer(duration.milliseconds)
            o["attempts"] = .array(
                r.attempts.map { a in
                    ["provider": .string(a.provider), "error_kind": .string(a.error.kind.rawValue), "duration_ms": .integer(a.duration.milliseconds)]
                })
            o["chain"] = .array((r.attempts.map(\.provider) + [r.provider.isEmpty ? instance : r.provider]).map { .string($0) })
            if settings.replies { o["reply"] = .string(r.content) }
        case .failure(let e):
            o["model"] = request.model.map { .string($0) } ?? .null
            o["outcome"] = "error"
            o["error_kind"] = .string(e.kind.rawValue)
            if let s = e.status { o["status"] = .integer(s) }
            o["tokens"] = .null
            o["cost_usd"] = .null
            o["duration_ms"] = .integer(duration.milliseconds)
            // The attempts that failed before the last (which is the error).
            o["attempts"] = .array(
                e.attempts.dropLast().map { a in
                    ["provider": .string(a.provider), "error_kind": .string(a.error.kind.rawValue), "duration_ms": .integer(a.duration.milliseconds)]
                })
            o["chain"] = .array((e.attempts.isEmpty ? [e.provider ?? instance] : e.attempts.map(\.provider)).map { .string($0) })
        }
        if settings.prompts {
            var messages: [JSONValue] = []
            if let sys = request.systemPrompt { messages.append(["role": "system", "content": .string(sys)]) }
            for m in request.messages { messages.append(["role": .string(m.role.rawValue), "content": .string(m.content)]) }
            o["prompt"] = .array(messages)
        }
        return o
    }

    func write(_ record: JSONObject, source: String) {
        do { try append(record) } catch {
            logSink.log(.warning, source, "cannot write the audit log: \(error)")
        }
    }

    /// Records one request: its attempts in the ledger, one line in the
    /// JSON-lines export.
    func finish(
        operation: String, instance: String, plugin: String, request: ModelRequest, started: String, unixMS: Int, duration: Duration,
        result: Result<ModelResponse, ProviderError>
    ) {
        let rows = AuditLedger.rows(
            operation: operation, name: instance, request: request, unixMS: unixMS, duration: duration, result: result,
            plugin: { [plugins] p in p == instance ? plugin : plugins(p) })
        do { try ledger.append(rows) } catch {
            logSink.log(.warning, "audit", "cannot write the audit ledger: \(logSink.redactor.redact(error.description))")
        }
        write(record(operation: operation, instance: instance, plugin: plugin, request: request, started: started, duration: duration, result: result), source: "audit")
    }
}

/// A backend whose completions are recorded in the audit log.
final class AuditedBackend: ModelBackend, Sendable {
    let inner: any ModelBackend
    let log: AuditLog
    let plugin: String

    init(inner: any ModelBackend, log: AuditLog, plugin: String) {
        self.inner = inner
        self.log = log
        self.plugin = plugin
    }

    var name: String { inner.name }
    var mode: ModelProviderMode { inner.mode }
    func initialize() async throws(ProviderError) { try await inner.initialize() }
    func healthCheck() async throws(ProviderError) -> HealthReport { try await inner.healthCheck() }
    func listModels() async throws(ProviderError) -> [ModelInfo] { try await inner.listModels() }
    func estimateTokens(_ request: ModelRequest) async throws(ProviderError) -> TokenEstimate { try await inner.estimateTokens(request) }
    func shutdown() async { await inner.shutdown() }

    /// An embedding is recorded as operation "embed": its model, input
    /// tokens and outcome (no texts, whatever `prompts` says).
    func embed(_ request: EmbeddingRequest) async throws(ProviderError) -> Embeddings {
        let started = AuditLog.timestamp()
        let unixMS = AuditLedger.nowUnixMS()
        let t0 = ContinuousClock.now
        let asked = ModelRequest(messages: [], model: request.model)
        do {
            let e = try await inner.embed(request)
            let r = ModelResponse(usage: e.usage, model: e.model, provider: e.provider)
            log.finish(operation: "embed", instance: name, plugin: plugin, request: asked, started: started, unixMS: unixMS, duration: .now - t0, result: .success(r))
            return e
        } catch {
            log.finish(operation: "embed", instance: name, plugin: plugin, request: asked, started: started, unixMS: unixMS, duration: .now - t0, result: .failure(error))
            throw error
        }
    }

    static func providerError(_ error: Error, _ name: String) -> ProviderError {
        if let e = error as? ProviderError { return e }
        if error is CancellationError { return ProviderError(.cancelled, "the request was cancelled", provider: name) }
        return ProviderError(.backend, "\(error)", provider: name)
    }

    func complete(_ request: ModelRequest) async throws(ProviderError) -> ModelResponse {
        let started = AuditLog.timestamp()
        let unixMS = AuditLedger.nowUnixMS()
        let t0 = ContinuousClock.now
        do {
            let r = try await inner.complete(request)
            log.finish(operation: "complete", instance: name, plugin: plugin, request: request, started: started, unixMS: unixMS, duration: .now - t0, result: .success(r))
            return r
        } catch {
            let e = AuditedBackend.providerError(error, name)
            log.finish(operation: "complete", instance: name, plugin: plugin, request: request, started: started, unixMS: unixMS, duration: .now - t0, result: .failure(e))
            throw error
        }
    }

    func stream(_ request: ModelRequest) -> ModelStream {
        let (stream, continuation) = ModelStream.makeStream(provider: name)
        let started = AuditLog.timestamp()
        let unixMS = AuditLedger.nowUnixMS()
        let t0 = ContinuousClock.now
        let task = Task { [inner, log, plugin, name] in
            // The record is written before the caller sees the end of the
            // stream, so a caller that exits right after still has it.
            func write(_ result: Result<ModelResponse, ProviderError>) {
                log.finish(
                    operation: "stream", instance: name, plugin: plugin, request: request, started: started, unixMS: unixMS, duration: .now - t0,
                    result: result)
            }
            var written = false
            do {
                for try await event in inner.stream(request) {
                    if case .finish(let r) = event, !written {
                        write(.success(r))
                        written = true
                    }
                    continuation.yield(event)
                }
                if !written { write(.failure(ProviderError(.streamClosed, "the stream ended without a finish event", provider: name))) }
                continuation.finish()
            } catch {
                var e = AuditedBackend.providerError(error, name)
                if Task.isCancelled { e = ProviderError(.cancelled, "the request was cancelled", provider: name) }
                if !written { write(.failure(e)) }
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { termination in
            if case .cancelled = termination { task.cancel() }
        }
        return stream
    }
}
