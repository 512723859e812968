import DescartesSupport
import Descartes

/// How the conformance suite exercises one plugin: the configuration to
/// create it with, and scenarios that make it answer, stream slowly, hang or
/// fail. The suite knows no provider's wire format; the spec's author does,
/// and scripts a local HTTP server (for API plugins) or names a command
/// (for headless plugins, through their config) for each scenario. See
/// docs/conformance.md.
///
/// ```yaml
/// provider: openai
/// config: {endpoint: "${server}/v1", api_key: conformance-key-0123456789}
/// scenarios:
///   text:                       # a normal answer: complete, stream, concurrency
///     prompt: Say hello
///     server:
///       routes:
///         "POST /v1/chat/completions":
///           - {headers: {content-type: text/event-stream}, body_file: openai/text.sse}
///     expect: {text: "Hello there"}
///   slow:                       # keeps streaming for a long time: cancellation, total deadline, shutdown
///     server: {routes: {...}}
///   hang:                       # never answers: first-token deadline
///     server: {routes: {"POST /v1/chat/completions": [{action: hang}]}}
///   errors:
///     - name: bad key
///       server: {routes: {"POST /v1/chat/completions": [{status: 401, body: ...}]}}
///       expect: {kind: authentication, status: 401}
/// invalid_config:
///   - config: {endpoint: "not a url"}
///     expect: {kind: config}
/// concurrency: 8
/// tolerance_ms: 2000
/// ```
///
/// In every config value `${server}` is the scenario's server URL and
/// `${spec_dir}` the spec's directory; other `${...}` references expand from
/// the environment as in providers.yaml.
public struct ConformanceSpec: Sendable {
    public struct Expectation: Sendable {
        /// The whole answer text, or a part of it.
        public var text: String?
        public var contains: String?
        /// For failures: the error kind, HTTP status, retry-after.
        public var kind: String?
        public var status: Int?
        public var retryAfterMS: Int?
    }

    public struct Scenario: Sendable {
        public var name: String
        public var prompt: String
        /// Provider-specific request options (`ModelRequest.options`).
        public var options: JSONObject = [:]
        /// For error scenarios: `complete` (the default) or `stream`.
        public var operation = "complete"
        /// Config keys over the spec's base config (unexpanded).
        package var config: [(key: String, node: YAMLNode)]
        var routes: [String: [ConformanceServer.Response]]?
        public var expect: Expectation
        public var location: SourcePosition
        /// What every request the plugin sends to this scenario's server
        /// must carry (the text scenario only).
        public var request: RequestExpectation?
    }

    /// `request:` of the text scenario: what reaches the wire. Every
    /// request the text scenario's server receives is checked.
    public struct RequestExpectation: Sendable {
        /// Which requests are checked: those with this method and one of
        /// these paths (nil, empty: any). Others the scenario's server gets
        /// (a health check, a model list) are not.
        public var method: String?
        public var paths: [String] = []
        /// Query parameters that must be present, with their value ("*": any).
        public var query: [(name: String, value: String)] = []
        /// Headers that must be present (names case-insensitive), with their
        /// value ("*": any). Values are never printed, only named.
        public var headers: [(name: String, value: String)] = []
        /// Body members by JSON path (`$.messages[0].role`), with their value
        /// ("*": present, any value).
        public var body: [(path: String, value: JSONValue)] = []
        /// The suite sends a system prompt and expects it in the body.
        public var systemPrompt = false
        /// The suite sends max_tokens and expects the number in the body.
        public var maxTokens = false
        public var location: SourcePosition
    }

    public var file: String
    public var provider: String?
    package var config: [(key: String, node: YAMLNode)] = []
    public var model: String?
    public var text: Scenario
    public var slow: Scenario?
    public var hang: Scenario?
    public var errors: [Scenario] = []
    public var invalidConfigs: [Scenario] = []
    public var concurrency = 8
    public var tolerance: Duration = .seconds(2)
    /// How long a start function (initialize, complete, stream, ...) may
    /// take to return its handle: the ABI's first rule is that it returns
    /// at once, the work going on the plugin's own threads.
    public var startLimit: Duration = .milliseconds(50)
    /// The whole suite's wall-clock budget: checks not started when it has
    /// passed are not run, and the suite fails saying so.
    public var budget: Duration = .seconds(300)
    /// Checks the spec's author skips, each with the reason printed in its
    /// place (for a test fixture, not a provider: a provider's spec skips
    /// nothing it can be asked to do).
    public var skip: [String: String] = [:]

    /// The checks a spec may skip.
    public static let skippable = ["health_check", "optional operations", "concurrency", "errors", "cancel", "deadlines", "shutdown", "secrets"]

    static let defaultPrompt = "Descartes conformance check: answer in a few words."

    /// The spec used when a plugin has none: one text scenario with the
    /// plugin's defaults and environment, no server.
    public static func builtIn(file: String = "(built-in)") -> ConformanceSpec {
        ConformanceSpec(
            file: file,
            text: Scenario(
                name: "text", prompt: defaultPrompt, config: [], routes: nil, expect: Expectation(),
                location: SourcePosition(file: file, line: 1, column: 1)))
    }

    static let knownKeys = ["provider", "config", "model", "scenarios", "invalid_config", "concurrency", "tolerance_ms", "start_limit_ms", "budget_s", "skip"]
    static let scenarioKeys = ["name", "prompt", "options", "operation", "config", "server", "expect", "request"]
    static let requestKeys = ["method", "path", "query", "headers", "body", "system_prompt", "max_tokens"]
    static let responseKeys = ["status", "reason", "headers", "body", "body_file", "chunks", "split", "chunk_delay_ms", "framing", "delay_ms", "action", "match"]

    public static func load(path: String) throws(SourceError) -> ConformanceSpec {
        let text: String
        do { text = try FileSystem.readText(path, limit: 4 << 20) } catch {
            throw SourceError([SourceProblem(SourcePosition(file: path, line: 1, column: 1), error.reason)])
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(SourceError) -> ConformanceSpec {
        guard let root = try YAML.parse(text, file: file) else {
            throw SourceError([SourceProblem(SourcePosition(file: file, line: 1, column: 1), "the conformance spec is empty")])
        }
        var v = NodeValidator(file: file)
        guard case .mapping = root.value else {
            v.problem(root, "a conformance spec is a mapping (\(knownKeys.joined(separator: ", ")))")
            throw SourceError(v.problems)
        }
        v.unknownKeys(root, allowed: knownKeys, what: "conformance spec key")
        var spec = builtIn(file: file)
        spec.provider = v.string(root, "provider")
        spec.model = v.string(root, "model")
        spec.config = configPairs(root["config"], &v)
        if let n = v.int(root, "concurrency") {
            if n < 1 || n > 256 { v.problem(root["concurrency"]!, "'concurrency' is between 1 and 256") } else { spec.concurrency = n }
        }
        if let t = v.int(root, "tolerance_ms") {
            if t < 0 { v.problem(root["tolerance_ms"]!, "'tolerance_ms' is a number of milliseconds") } else { spec.tolerance = .milliseconds(t) }
        }
        if let t = v.int(root, "start_limit_ms") {
            if t < 1 { v.problem(root["start_limit_ms"]!, "'start_limit_ms' is a positive number of milliseconds") } else { spec.startLimit = .milliseconds(t) }
        }
        if let t = v.int(root, "budget_s") {
            if t < 1 { v.problem(root["budget_s"]!, "'budget_s' is a positive number of seconds") } else { spec.budget = .seconds(t) }
        }
        if let sk = root["skip"] {
            if case .mapping(let pairs) = sk.value {
                for p in pairs {
                    let check = p.key.scalar ?? ""
                    guard skippable.contains(check) else {
                        v.problem(p.key, "'\(check)' cannot be skipped (\(skippable.joined(separator: ", ")))")
                        continue
                    }
                    guard let why = p.value.scalar, !why.isEmpty else {
                        v.problem(p.value, "say why '\(check)' is skipped")
                        continue
                    }
                    spec.skip[check] = why
                }
            } else {
                v.problem(sk, "'skip' maps check names to the reason they are skipped")
            }
        }
        let dir = FileSystem.directory(of: file)
        if let scenarios = root["scenarios"] {
            if case .mapping(let pairs) = scenarios.value {
                for p in pairs {
                    let key = p.key.scalar ?? ""
                    switch key {
                    case "text", "slow", "hang":
                        guard let s = scenario(key, p.value, dir: dir, &v) else { continue }
                        if key != "text", let r = p.value["request"] {
                            v.problem(r, "'request' expectations belong to the text scenario (its requests are the ones checked)")
                        }
                        if key == "text", let r = s.request, s.routes == nil {
                            v.problems.append(SourceProblem(r.location, "'request' needs the scenario's 'server': the suite checks what that server receives"))
                        }
                        if key == "text" { spec.text = s } else if key == "slow" { spec.slow = s } else { spec.hang = s }
                    case "errors":
                        guard case .sequence(let items) = p.value.value else {
                            v.problem(p.value, "'errors' is a list of scenarios, each with an 'expect: {kind: ...}'")
                            continue
                        }
                        for (i, item) in items.enumerated() {
                            guard let s = scenario("error \(i + 1)", item, dir: dir, &v) else { continue }
                            if s.expect.kind == nil { v.problem(item, "an error scenario says which error it expects: expect: {kind: authentication}") }
                            spec.errors.append(s)
                        }
                    default:
                        let hint = closest(key, in: ["text", "slow", "hang", "errors"]).map { " (did you mean '\($0)'?)" } ?? ""
                        v.problem(p.key, "unknown scenario '\(key)'\(hint): text, slow, hang or errors")
                    }
                }
            } else {
                v.problem(scenarios, "'scenarios' is a mapping: text, slow, hang, errors")
            }
        }
        if let inv = root["invalid_config"] {
            if case .sequence(let items) = inv.value {
                for (i, item) in items.enumerated() {
                    guard let s = scenario("invalid config \(i + 1)", item, dir: dir, &v) else { continue }
                    spec.invalidConfigs.append(s)
                }
            } else {
                v.problem(inv, "'invalid_config' is a list of {config: {...}, expect: {kind: config}}")
            }
        }
        if !v.problems.isEmpty { throw SourceError(v.problems) }
        return spec
    }

    static func configPairs(_ node: YAMLNode?, _ v: inout NodeValidator) -> [(key: String, node: YAMLNode)] {
        guard let node else { return [] }
        guard case .mapping(let pairs) = node.value else {
            v.problem(node, "'config' is a mapping of the plugin's config keys to values")
            return []
        }
        return pairs.map { ($0.key.scalar ?? "", $0.value) }
    }

    static func scenario(_ name: String, _ node: YAMLNode, dir: String, _ v: inout NodeValidator) -> Scenario? {
        guard case .mapping = node.value else {
            v.problem(node, "a scenario is a mapping (\(scenarioKeys.joined(separator: ", ")))")
            return nil
        }
        v.unknownKeys(node, allowed: scenarioKeys, what: "scenario key")
        var s = Scenario(
            name: v.string(node, "name") ?? name, prompt: v.string(node, "prompt") ?? defaultPrompt, config: configPairs(node["config"], &v),
            routes: nil, expect: Expectation(), location: node.location)
        if let op = v.string(node, "operation") {
            if op == "complete" || op == "stream" { s.operation = op } else { v.problem(node["operation"]!, "'operation' is complete or stream") }
        }
        if let o = node["options"] {
            if case .object(let obj) = o.json { s.options = obj } else { v.problem(o, "'options' is a mapping of request options passed to the plugin") }
        }
        if let e = node["expect"] {
            if case .mapping = e.value {
                v.unknownKeys(e, allowed: ["text", "contains", "kind", "status", "retry_after_ms"], what: "expect key")
                s.expect = Expectation(
                    text: v.string(e, "text"), contains: v.string(e, "contains"), kind: v.string(e, "kind"), status: v.int(e, "status"),
                    retryAfterMS: v.int(e, "retry_after_ms"))
                if let k = s.expect.kind, !ProviderError.Kind.all.map(\.rawValue).contains(k) {
                    v.problem(e["kind"]!, "unknown error kind '\(k)' (\(ProviderError.Kind.all.map(\.rawValue).joined(separator: ", ")))")
                }
            } else {
                v.problem(e, "'expect' is a mapping: {text, contains} for answers, {kind, status, retry_after_ms} for errors")
            }
        }
        if let r = node["request"] { s.request = request(r, &v) }
        if let server = node["server"] {
            guard case .mapping = server.value else {
                v.problem(server, "'server' is a mapping: {routes: {\"METHOD /path\": [RESPONSE, ...]}}")
                return s
            }
            v.unknownKeys(server, allowed: ["routes"], what: "server key")
            var routes: [String: [ConformanceServer.Response]] = [:]
            if let r = server["routes"], case .mapping(let pairs) = r.value {
                for p in pairs {
                    let route = p.key.scalar ?? ""
                    let parts = route.split(separator: " ")
                    guard parts.count == 2, parts[1].hasPrefix("/") else {
                        v.problem(p.key, "a route is \"METHOD /path\" (or \"* /path\"), got '\(route)'")
                        continue
                    }
                    var list: [YAMLNode] = []
                    switch p.value.value {
                    case .sequence(let items): list = items
                    case .mapping: list = [p.value]
                    default: v.problem(p.value, "a route's value is a response or a list of responses served in order")
                    }
                    routes[route] = list.compactMap { response($0, dir: dir, &v) }
                }
            } else {
                v.problem(server, "'server' needs 'routes': {\"METHOD /path\": [RESPONSE, ...]}")
            }
            s.routes = routes
        }
        return s
    }

    static func request(_ node: YAMLNode, _ v: inout NodeValidator) -> RequestExpectation? {
        guard case .mapping = node.value else {
            v.problem(node, "'request' is a mapping (\(requestKeys.joined(separator: ", ")))")
            return nil
        }
        v.unknownKeys(node, allowed: requestKeys, what: "request key")
        var r = RequestExpectation(location: node.location)
        r.method = v.string(node, "method")
        if let p = node["path"] {
            switch p.value {
            case .sequence(let items): r.paths = items.compactMap(\.scalar)
            default: r.paths = p.scalar.map { [$0] } ?? []
            }
            if r.paths.isEmpty || r.paths.contains(where: { !$0.hasPrefix("/") }) {
                v.problem(p, "'path' is a path starting with '/', or a list of them (the query goes in 'query')")
            }
        }
        func pairs(_ key: String) -> [(String, String)] {
            guard let m = node[key] else { return [] }
            guard case .mapping(let items) = m.value else {
                v.problem(m, "'\(key)' maps names to values (\"*\": present with any value)")
                return []
            }
            return items.map { ($0.key.scalar ?? "", $0.value.scalar ?? $0.value.json.jsonText) }
        }
        r.query = pairs("query").map { (name: $0.0, value: $0.1) }
        r.headers = pairs("headers").map { (name: $0.0.lowercased(), value: $0.1) }
        if let b = node["body"] {
            if case .mapping(let items) = b.value {
                for item in items {
                    let path = item.key.scalar ?? ""
                    if JSONPath.parse(path) == nil {
                        v.problem(item.key, "'\(path)' is not a JSON path like $.messages[0].content")
                        continue
                    }
                    r.body.append((path: path, value: item.value.json))
                }
            } else {
                v.problem(b, "'body' maps JSON paths ($.model, $.messages[0].role) to values (\"*\": present)")
            }
        }
        if let sp = node["system_prompt"] {
            if case .bool(let on) = sp.json { r.systemPrompt = on } else { v.problem(sp, "'system_prompt' is true or false") }
        }
        if let mt = node["max_tokens"] {
            if case .bool(let on) = mt.json { r.maxTokens = on } else { v.problem(mt, "'max_tokens' is true or false") }
        }
        return r
    }

    static func response(_ node: YAMLNode, dir: String, _ v: inout NodeValidator) -> ConformanceServer.Response? {
        guard case .mapping = node.value else {
            v.problem(node, "a response is a mapping (\(responseKeys.joined(separator: ", ")))")
            return nil
        }
        v.unknownKeys(node, allowed: responseKeys, what: "response key")
        var r = ConformanceServer.Response()
        r.status = v.int(node, "status") ?? 200
        r.reason = v.string(node, "reason")
        r.delayMS = v.int(node, "delay_ms") ?? 0
        r.action = v.string(node, "action")
        if let a = r.action, a != "hang" && a != "close" { v.problem(node["action"]!, "'action' is hang or close") }
        if let m = node["match"] {
            if case .mapping = m.value {
                v.unknownKeys(m, allowed: ["body"], what: "match key")
                r.bodyContains = v.string(m, "body")
            } else {
                v.problem(m, "'match' is {body: TEXT}: the response answers only requests whose body contains TEXT")
            }
        }
        r.framing = v.string(node, "framing") ?? "length"
        if !["length", "chunked", "close"].contains(r.framing) { v.problem(node["framing"]!, "'framing' is length, chunked or close") }
        if let h = node["headers"] {
            switch h.value {
            case .mapping(let pairs): r.headers = pairs.map { ($0.key.scalar ?? "", $0.value.scalar ?? $0.value.json.jsonText) }
            case .sequence(let items):
                for i in items {
                    if case .sequence(let kv) = i.value, kv.count == 2, let k = kv[0].scalar, let val = kv[1].scalar { r.headers.append((k, val)) } else {
                        v.problem(i, "a header is [name, value]")
                    }
                }
            default: v.problem(h, "'headers' maps names to values")
            }
        }
        var body: [UInt8]? = nil
        if let b = v.string(node, "body") { body = Array(b.utf8) }
        if let f = v.string(node, "body_file") {
            let path = f.hasPrefix("/") ? f : FileSystem.join(dir, f)
            do { body = try FileSystem.readBytes(path, limit: 16 << 20) } catch { v.problem(node["body_file"]!, "cannot read \(path): \(error.reason)") }
        }
        let delay = v.int(node, "chunk_delay_ms") ?? 0
        if let body {
            if let split = v.string(node, "split") {
                if split == "lines" {
                    var start = 0
                    for (i, b) in body.enumerated() where b == 0x0A {
                        r.chunks.append(.init(data: Array(body[start...i]), delayMS: delay, repeatCount: 1))
                        start = i + 1
                    }
                    if start < body.count { r.chunks.append(.init(data: Array(body[start...]), delayMS: delay, repeatCount: 1)) }
                } else if split.hasPrefix("bytes:"), let n = Int(split.dropFirst(6)), n > 0 {
                    for start in stride(from: 0, to: body.count, by: n) {
                        r.chunks.append(.init(data: Array(body[start..<min(start + n, body.count)]), delayMS: delay, repeatCount: 1))
                    }
                } else {
                    v.problem(node["split"]!, "'split' is lines or bytes:N")
                }
            } else {
                r.chunks.append(.init(data: body, delayMS: 0, repeatCount: 1))
            }
        }
        if let c = node["chunks"] {
            guard case .sequence(let items) = c.value else {
                v.problem(c, "'chunks' is a list of {data or data_file, delay_ms, repeat}")
                return r
            }
            for i in items {
                guard case .mapping = i.value else {
                    v.problem(i, "a chunk is {data: TEXT, delay_ms: N, repeat: N}")
                    continue
                }
                v.unknownKeys(i, allowed: ["data", "data_file", "delay_ms", "repeat"], what: "chunk key")
                var data = Array((v.string(i, "data") ?? "").utf8)
                if let f = v.string(i, "data_file") {
                    let path = f.hasPrefix("/") ? f : FileSystem.join(dir, f)
                    do { data = try FileSystem.readBytes(path, limit: 16 << 20) } catch { v.problem(i["data_file"]!, "cannot read \(path): \(error.reason)") }
                }
                r.chunks.append(.init(data: data, delayMS: v.int(i, "delay_ms") ?? delay, repeatCount: v.int(i, "repeat") ?? 1))
            }
        }
        return r
    }
}

/// A JSON path as request expectations write it: `$`, then `.name` or
/// `[index]` steps (`$.messages[0].content`; the leading `$.` optional).
enum JSONPath {
    enum Step: Equatable {
        case member(String)
        case index(Int)
    }

    static func parse(_ text: String) -> [Step]? {
        var rest = Substring(text)
        if rest.hasPrefix("$") { rest = rest.dropFirst() } else { rest = "." + rest }
        var steps: [Step] = []
        while let c = rest.first {
            if c == "." {
                rest = rest.dropFirst()
                let name = rest.prefix { $0 != "." && $0 != "[" }
                guard !name.isEmpty else { return nil }
                steps.append(.member(String(name)))
                rest = rest.dropFirst(name.count)
            } else if c == "[" {
                guard let close = rest.firstIndex(of: "]"), let n = Int(rest[rest.index(after: rest.startIndex)..<close]), n >= 0 else { return nil }
                steps.append(.index(n))
                rest = rest[rest.index(after: close)...]
            } else {
                return nil
            }
        }
        return steps.isEmpty ? nil : steps
    }

    /// The value at `path` in `doc`, or nil.
    static func value(_ path: String, in doc: JSONValue) -> JSONValue? {
        guard let steps = parse(path) else { return nil }
        var v: JSONValue? = doc
        for s in steps {
            switch s {
            case .member(let name): v = v?[name]
            case .index(let i): v = v?[i]
            }
        }
        return v
    }
}
