// Ollama's native API, request side: the /api/chat body, endpoint
// normalisation, and the model metadata documents (/api/tags, /api/show).
import DescartesPluginKit

enum OllamaWire {
    /// Members of `request.options` that are top-level fields of /api/chat,
    /// not entries of its `options` object.
    static let topLevel: Set<String> = ["keep_alive", "format", "think", "truncate"]

    /// The /api/chat body.
    ///
    /// - `system` becomes a leading system message; `max_tokens`,
    ///   `temperature`, `top_p`, `stop` and `seed` become the Ollama options
    ///   `num_predict`, `temperature`, `top_p`, `stop`, `seed`;
    /// - every member of `request.options` is passed through as given
    ///   (`keep_alive`, `format`, `think`, `truncate` at the top level, the
    ///   rest inside `options`, overriding the mapped fields);
    /// - `responseFormat` becomes `format` ("json", or the schema itself);
    /// - `num_ctx` is always set (the caller's, or `numCtx`), and `truncate`
    ///   is false unless the caller says otherwise, so a prompt that does not
    ///   fit is an error instead of being cut silently.
    static func chatBody(
        _ r: ModelRequest, model: String, stream: Bool, numCtx: Int?, keepAlive: JSONValue?, tools: [Tool]
    ) throws(ProviderError) -> [UInt8] {
        var w = JSONWriter(capacity: 1024)
        w.beginObject()
        w.field("model", model)
        w.beginArray(key: "messages")
        if let s = r.systemPrompt, !s.isEmpty {
            w.beginObject()
            w.field("role", "system")
            w.field("content", s)
            w.endObject()
        }
        var toolNames: [String: String] = [:]
        for (i, m) in r.messages.enumerated() {
            w.beginObject()
            w.field("role", m.role.rawValue)
            w.field("content", m.content)
            switch m.role {
            case .assistant:
                if let t = m.reasoning, !t.isEmpty { w.field("thinking", t) }
                if !m.toolCalls.isEmpty {
                    w.beginArray(key: "tool_calls")
                    for (j, c) in m.toolCalls.enumerated() {
                        toolNames[c.id] = c.name
                        w.beginObject()
                        if !c.id.isEmpty { w.field("id", c.id) }
                        w.beginObject(key: "function")
                        w.field("name", c.name)
                        w.key("arguments")
                        w.raw(try arguments(c, path: "messages[\(i)].tool_calls[\(j)]"))
                        w.endObject()
                        w.endObject()
                    }
                    w.endArray()
                }
            case .tool:
                if let id = m.toolCallID {
                    w.field("tool_call_id", id)
                    if let name = toolNames[id] { w.field("tool_name", name) }
                }
            default:
                if let n = m.name { w.field("name", n) }
                if !m.images.isEmpty {
                    // Ollama takes the bytes only (base64), no URL.
                    w.beginArray(key: "images")
                    for (j, image) in m.images.enumerated() {
                        guard case .data(_, let b64) = image.source else {
                            throw ProviderError(.unsupportedFeature, "messages[\(i)].images[\(j)]: Ollama takes an image's bytes, not a URL: download it and send the data")
                        }
                        w.value(b64)
                    }
                    w.endArray()
                }
            }
            w.endObject()
        }
        w.endArray()
        w.field("stream", stream)
        if !tools.isEmpty {
            w.beginArray(key: "tools")
            for t in tools {
                w.beginObject()
                w.field("type", "function")
                w.beginObject(key: "function")
                w.field("name", t.name)
                w.field("description", t.description)
                w.field("parameters", t.parameters)
                w.endObject()
                w.endObject()
            }
            w.endArray()
        }
        if r.options["truncate"] == nil { w.field("truncate", false) }
        if r.options["keep_alive"] == nil, let k = keepAlive { w.field("keep_alive", k) }
        // The response format: `format` is "json" or a JSON Schema, which
        // Ollama turns into a grammar. An explicit `format` option wins.
        if r.options["format"] == nil {
            switch r.responseFormat {
            case .text: break
            case .json: w.field("format", "json")
            case .jsonSchema(_, let schema, _): w.field("format", schema)
            }
        }
        for m in r.options where topLevel.contains(m.key) { w.field(m.key, m.value) }

        var opts = JSONObject()
        if let n = numCtx { opts["num_ctx"] = .integer(n) }
        if let n = r.maxTokens { opts["num_predict"] = .integer(n) }
        if let t = r.temperature { opts["temperature"] = .number(t) }
        if let p = r.topP { opts["top_p"] = .number(p) }
        if !r.stop.isEmpty { opts["stop"] = .array(r.stop.map { .string($0) }) }
        if let s = r.seed { opts["seed"] = .integer(s) }
        for m in r.options where !topLevel.contains(m.key) { opts[m.key] = m.value }
        if !opts.isEmpty { w.field("options", .object(opts)) }
        w.endObject()
        return w.bytes
    }

    /// A tool call's arguments as the JSON object Ollama requires.
    static func arguments(_ c: ToolCall, path: String) throws(ProviderError) -> [UInt8] {
        let text = c.arguments.isEmpty ? "{}" : c.arguments
        guard let v = try? JSONValue.parse(text), case .object = v else {
            throw ProviderError(
                .api, "\(path) (\(c.name)): the arguments are not a JSON object, which Ollama requires: \(Wire.excerpt(text, limit: 80))")
        }
        return v.jsonBytes
    }

    // MARK: Endpoint

    /// The server's base URL from `endpoint`, `OLLAMA_ENDPOINT` or
    /// `OLLAMA_HOST`, read as Ollama's own tools read OLLAMA_HOST: a bare
    /// "host", "host:port" or ":port" means http on port 11434 unless given;
    /// "http://host" keeps the scheme's port; a trailing slash is dropped.
    static func normalize(endpoint raw: String) throws(ProviderError) -> String {
        var s = Substring(raw)
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "/" { s = s.dropLast() }
        guard !s.isEmpty else { throw ProviderError(.config, "key 'endpoint': empty") }
        var scheme = "http"
        var rest = s
        if let r = s.range(of: "://") {
            scheme = s[..<r.lowerBound].lowercased()
            rest = s[r.upperBound...]
            guard scheme == "http" || scheme == "https" else {
                throw ProviderError(.config, "key 'endpoint': '\(raw)' is not an http:// or https:// URL")
            }
            return "\(scheme)://\(rest)"
        }
        // No scheme: OLLAMA_HOST style.
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var hostPort = rest[..<slash]
        let path = rest[slash...]
        let hasPort: Bool
        if hostPort.hasPrefix("[") {
            hasPort = hostPort.range(of: "]:") != nil
        } else {
            hasPort = hostPort.contains(":")
        }
        if hostPort.hasPrefix(":") { hostPort = "127.0.0.1" + hostPort }
        if hostPort.isEmpty { hostPort = "127.0.0.1" }
        return "\(scheme)://\(hostPort)\(hasPort ? "" : ":11434")\(path)"
    }
}

/// A model Ollama has installed (/api/tags).
struct InstalledModel: Sendable {
    var name: String
    var details: JSONObject
}

/// What /api/show says about a model.
struct ModelDetails: Sendable {
    /// The model's trained context length (`<arch>.context_length`).
    var contextLength: Int?
    /// "completion", "tools", "vision", "thinking", "embedding", ...; nil
    /// when the server does not say (older servers).
    var capabilities: [String]?
    /// `num_ctx` from the model's Modelfile parameters, if it sets one.
    var modelfileNumCtx: Int?
    var family: String?

    static func parse(_ doc: JSONValue) -> ModelDetails {
        var d = ModelDetails()
        if let info = doc["model_info"]?.objectValue {
            let arch = info["general.architecture"]?.stringValue
            if let arch, let n = info["\(arch).context_length"]?.intValue {
                d.contextLength = n
            } else {
                d.contextLength = info.first { $0.key.hasSuffix(".context_length") }?.value.intValue
            }
        }
        d.capabilities = doc["capabilities"]?.arrayValue?.compactMap(\.stringValue)
        if let params = doc["parameters"]?.stringValue {
            for line in params.split(separator: "\n") {
                let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if parts.count >= 2, parts[0] == "num_ctx", let n = Int(parts[1]) { d.modelfileNumCtx = n }
            }
        }
        d.family = doc["details"]?["family"]?.stringValue
        return d
    }
}

extension Substring {
    func range(of target: String) -> Range<Substring.Index>? {
        let t = Array(target.utf8)
        guard !t.isEmpty else { return nil }
        var i = startIndex
        while i != endIndex {
            var j = i
            var k = 0
            while k < t.count, j != endIndex, self.utf8[j] == t[k] {
                j = self.utf8.index(after: j)
                k += 1
            }
            if k == t.count { return i..<j }
            i = self.index(after: i)
        }
        return nil
    }
}
