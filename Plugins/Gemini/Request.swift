// A `ModelRequest` as a Gemini `GenerateContentRequest` body (the Gemini API's
// models/{m}:generateContent and :streamGenerateContent, and Vertex AI's
// publishers/google/models/{m}:... take the same body), and the JSON-schema
// translation for `responseSchema`.
import DescartesPluginKit

enum GeminiRequest {
    enum Purpose {
        case generate
        /// Gemini API `countTokens`: `{"generateContentRequest": {model, ...}}`.
        case countTokensWrapped(model: String)
        /// Vertex AI `countTokens`: contents, systemInstruction and tools at the top level.
        case countTokensPlain
    }

    /// `generationConfig` members an option may name, in the API's
    /// camelCase, with the snake_case spelling accepted too.
    static let generationKeys: [String: String] = [
        "topK": "topK", "top_k": "topK", "candidateCount": "candidateCount", "candidate_count": "candidateCount",
        "presencePenalty": "presencePenalty", "presence_penalty": "presencePenalty",
        "frequencyPenalty": "frequencyPenalty", "frequency_penalty": "frequencyPenalty",
        "responseMimeType": "responseMimeType", "response_mime_type": "responseMimeType",
        "responseSchema": "responseSchema", "response_schema": "responseSchema",
        "responseJsonSchema": "responseJsonSchema", "response_json_schema": "responseJsonSchema",
        "thinkingConfig": "thinkingConfig", "thinking_config": "thinkingConfig",
        "responseModalities": "responseModalities", "response_modalities": "responseModalities",
        "responseLogprobs": "responseLogprobs", "logprobs": "logprobs", "mediaResolution": "mediaResolution",
        "media_resolution": "mediaResolution", "speechConfig": "speechConfig",
    ]

    /// The body.
    ///
    /// - The system prompt and `system` messages become `systemInstruction`.
    /// - Turns alternate `user` / `model`; consecutive messages of one role
    ///   are merged; tool results are `functionResponse` parts of a user
    ///   turn, named after the call they answer (found by its id in the
    ///   assistant turns before), with the result as `{"output": text}`
    ///   unless the text is a JSON object.
    /// - Assistant turns: `thought` text is not sent back (Gemini does not
    ///   take it), the message's `reasoningSignature` goes back as the
    ///   `thoughtSignature` of its first function call (or first part), as
    ///   Gemini 2.5 and 3 require for function calling with thinking.
    /// - `generationConfig`: temperature, topP, maxOutputTokens,
    ///   stopSequences, seed, the options above, `thinkingConfig
    ///   {includeThoughts: true}` when `includeThoughts` and the request set
    ///   none, and a JSON schema from option `response_format` (OpenAI's
    ///   shape) translated by `GeminiSchema`.
    /// - Every other option is copied to the top level (`safetySettings`,
    ///   `cachedContent`, `labels`...).
    static func encode(
        _ r: ModelRequest, purpose: Purpose, includeThoughts: Bool, notes: inout [String]
    ) -> [UInt8] {
        var body = JSONObject()
        body["contents"] = .array(contents(r.messages))
        let systemText = ([r.systemPrompt].compactMap { $0 } + r.messages.filter { $0.role == .system }.map(\.content))
            .filter { !$0.isEmpty }.joined(separator: "\n\n")
        if !systemText.isEmpty { body["systemInstruction"] = ["parts": [["text": .string(systemText)]]] }
        if !r.tools.isEmpty {
            var decls: [JSONValue] = []
            for t in r.tools {
                var d: JSONObject = ["name": .string(t.name)]
                if !t.description.isEmpty { d["description"] = .string(t.description) }
                if case .object(let o) = t.parameters, !o.isEmpty {
                    var dropped: [String] = []
                    d["parameters"] = GeminiSchema.translate(t.parameters, dropped: &dropped)
                    if !dropped.isEmpty { notes.append("tool '\(t.name)': " + GeminiSchema.describe(dropped)) }
                }
                decls.append(.object(d))
            }
            body["tools"] = [["functionDeclarations": .array(decls)]]
        }
        // Option `tools`: Gemini's own tools (googleSearch, codeExecution,
        // urlContext...), added after the function declarations.
        if case .array(let extra)? = r.options["tools"], !extra.isEmpty {
            body["tools"] = .array((body["tools"]?.arrayValue ?? []) + extra)
        }
        if let choice = r.toolChoice {
            let config: JSONValue
            switch choice {
            case .auto: config = ["mode": "AUTO"]
            case .none: config = ["mode": "NONE"]
            case .required: config = ["mode": "ANY"]
            case .tool(let name): config = ["mode": "ANY", "allowedFunctionNames": [.string(name)]]
            }
            body["toolConfig"] = ["functionCallingConfig": config]
        }

        var gen = JSONObject()
        if let t = r.temperature { gen["temperature"] = .number(t) }
        if let p = r.topP { gen["topP"] = .number(p) }
        if let m = r.maxTokens { gen["maxOutputTokens"] = .integer(m) }
        if !r.stop.isEmpty { gen["stopSequences"] = .array(r.stop.map { .string($0) }) }
        if let s = r.seed { gen["seed"] = .integer(s) }
        // The response format: JSON by MIME type, and the schema as
        // `responseJsonSchema` (JSON Schema as written: $ref, anyOf,
        // additionalProperties and all; not translated into the OpenAPI
        // subset of `responseSchema`). Options below may still override.
        switch r.responseFormat {
        case .text: break
        case .json: gen["responseMimeType"] = "application/json"
        case .jsonSchema(_, let schema, _):
            gen["responseMimeType"] = "application/json"
            gen["responseJsonSchema"] = schema
        }
        var top = JSONObject()
        for m in r.options {
            if m.key == "response_format" {
                applyResponseFormat(m.value, to: &gen, notes: &notes)
            } else if m.key == "generationConfig" || m.key == "generation_config", case .object(let o) = m.value {
                for g in o { gen[g.key] = g.value }
            } else if let g = generationKeys[m.key] {
                if g == "responseSchema" {
                    var dropped: [String] = []
                    gen[g] = GeminiSchema.translate(m.value, dropped: &dropped)
                    if !dropped.isEmpty { notes.append("responseSchema: " + GeminiSchema.describe(dropped)) }
                    if gen["responseMimeType"] == nil { gen["responseMimeType"] = "application/json" }
                } else {
                    gen[g] = m.value
                }
            } else if !["contents", "systemInstruction", "tools", "toolConfig"].contains(m.key) {
                top[m.key] = m.value
            }
        }
        if includeThoughts && gen["thinkingConfig"] == nil { gen["thinkingConfig"] = ["includeThoughts": true] }

        switch purpose {
        case .generate:
            if !gen.isEmpty { body["generationConfig"] = .object(gen) }
            for m in top { body[m.key] = m.value }
            return JSONValue.object(body).jsonBytes
        case .countTokensPlain:
            // Vertex's CountTokensRequest: contents, systemInstruction, tools (and generationConfig).
            return JSONValue.object(body).jsonBytes
        case .countTokensWrapped(let model):
            var inner: JSONObject = ["model": .string("models/\(model)")]
            for m in body { inner[m.key] = m.value }
            return JSONValue.object(["generateContentRequest": .object(inner)]).jsonBytes
        }
    }

    /// OpenAI's `response_format`: `{"type": "json_schema", "json_schema":
    /// {"schema": ...}}` becomes `responseMimeType: application/json` with
    /// the translated `responseSchema`; `{"type": "json_object"}` the MIME
    /// type alone; `{"type": "text"}` nothing.
    static func applyResponseFormat(_ v: JSONValue, to gen: inout JSONObject, notes: inout [String]) {
        switch v["type"]?.stringValue {
        case "json_schema":
            gen["responseMimeType"] = "application/json"
            if let schema = v["json_schema"]?["schema"] ?? v["schema"] {
                var dropped: [String] = []
                gen["responseSchema"] = GeminiSchema.translate(schema, dropped: &dropped)
                if !dropped.isEmpty { notes.append("responseSchema: " + GeminiSchema.describe(dropped)) }
            }
        case "json_object":
            gen["responseMimeType"] = "application/json"
        default:
            break
        }
    }

    /// Ids this plugin made up for calls Gemini sent without one; they are
    /// not sent back.
    static let madeUpIDPrefix = "gemini-call-"

    /// Messages (without `system` ones) as alternating `user`/`model` contents.
    static func contents(_ messages: [Message]) -> [JSONValue] {
        var out: [(role: String, parts: [JSONValue])] = []
        var callNames: [String: String] = [:]
        func add(_ role: String, _ parts: [JSONValue]) {
            guard !parts.isEmpty else { return }
            if let last = out.last, last.role == role { out[out.count - 1].parts += parts } else { out.append((role, parts)) }
        }
        for m in messages {
            switch m.role {
            case .system:
                continue
            case .user:
                var parts: [JSONValue] = m.images.map(Self.imagePart)
                if !m.content.isEmpty { parts.append(["text": .string(m.content)]) }
                add("user", parts)
            case .tool:
                let id = m.toolCallID ?? ""
                let name = callNames[id] ?? m.name ?? id
                let response: JSONValue
                if case .object(let o)? = try? JSONValue.parse(m.content) { response = .object(o) } else { response = ["output": .string(m.content)] }
                var fr: JSONObject = ["name": .string(name), "response": response]
                if !id.isEmpty && !id.hasPrefix(madeUpIDPrefix) { fr["id"] = .string(id) }
                add("user", [["functionResponse": .object(fr)]])
            case .assistant:
                var parts: [JSONObject] = []
                if !m.content.isEmpty { parts.append(["text": .string(m.content)]) }
                var firstCall: Int? = nil
                for c in m.toolCalls {
                    callNames[c.id] = c.name
                    var args: JSONValue = [:]
                    if case .object(let o)? = try? JSONValue.parse(c.arguments.isEmpty ? "{}" : c.arguments) { args = .object(o) }
                    var fc: JSONObject = ["name": .string(c.name), "args": args]
                    if !c.id.isEmpty && !c.id.hasPrefix(madeUpIDPrefix) { fc["id"] = .string(c.id) }
                    if firstCall == nil { firstCall = parts.count }
                    parts.append(["functionCall": .object(fc)])
                }
                if let sig = m.reasoningSignature, !sig.isEmpty, !parts.isEmpty {
                    parts[firstCall ?? 0]["thoughtSignature"] = .string(sig)
                }
                add("model", parts.map { .object($0) })
            }
        }
        return out.map { ["role": .string($0.role), "parts": .array($0.parts)] }
    }

    /// An image as `inlineData` (base64) or `fileData` (a URL: Gemini takes
    /// gs:// and https:// URIs it can reach).
    static func imagePart(_ image: ImageInput) -> JSONValue {
        switch image.source {
        case .data(let type, let b64): return ["inlineData": ["mimeType": .string(type), "data": .string(b64)]]
        case .url(let u): return ["fileData": ["mimeType": .string(Self.mimeType(ofURL: u)), "fileUri": .string(u)]]
        }
    }

    static func mimeType(ofURL u: String) -> String {
        let l = u.lowercased()
        if l.hasSuffix(".png") { return "image/png" }
        if l.hasSuffix(".gif") { return "image/gif" }
        if l.hasSuffix(".webp") { return "image/webp" }
        return "image/jpeg"
    }
}

/// JSON Schema as Gemini's `Schema` (an OpenAPI 3.0 subset), which rejects
/// most of JSON Schema's keywords with a 400 instead of ignoring them. What
/// can be said another way is translated; the rest is dropped, and the
/// caller is told which keywords went where (a notice).
///
/// - `$ref` to `#/$defs/X` or `#/definitions/X` is inlined (a reference
///   cycle deeper than 8 levels is cut with a bare `{"type": "object"}`);
/// - `type: ["string", "null"]` becomes `type: "string", nullable: true`;
///   `anyOf`/`oneOf` with a `{"type": "null"}` branch likewise; `oneOf` is
///   `anyOf`;
/// - `const: X` becomes `enum: ["X"]` (Gemini enums are strings);
/// - `allOf` with one member is that member;
/// - enums of numbers are dropped (Gemini takes string enums only);
/// - `examples` becomes `example` (its first item);
/// - kept as they are: type, format, title, description, nullable, enum,
///   items, properties, required, minItems, maxItems, minProperties,
///   maxProperties, minLength, maxLength, pattern, minimum, maximum,
///   anyOf, propertyOrdering, default, example;
/// - everything else is dropped (`additionalProperties`, `$schema`, `$id`,
///   `exclusiveMinimum`, `patternProperties`, `uniqueItems`, `not`, ...).
enum GeminiSchema {
    static let kept: Set<String> = [
        "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required", "minItems", "maxItems",
        "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "minimum", "maximum", "anyOf", "propertyOrdering",
        "default", "example",
    ]

    static func translate(_ schema: JSONValue, dropped: inout [String]) -> JSONValue {
        let defs = (schema["$defs"]?.objectValue ?? JSONObject()).members + (schema["definitions"]?.objectValue ?? JSONObject()).members
        var d = JSONObject()
        for m in defs { d[m.key] = m.value }
        return node(schema, path: "$", defs: d, depth: 0, dropped: &dropped)
    }

    static func describe(_ dropped: [String]) -> String {
        "dropped what Gemini's schema rejects: " + dropped.prefix(12).joined(separator: ", ") + (dropped.count > 12 ? " (and \(dropped.count - 12) more)" : "")
    }

    static func node(_ v: JSONValue, path: String, defs: JSONObject, depth: Int, dropped: inout [String]) -> JSONValue {
        guard case .object(var o) = v else { return v }
        if let ref = o["$ref"]?.stringValue {
            let name = ref.split(separator: "/").last.map(String.init) ?? ref
            guard depth < 8, let target = defs[name] else {
                dropped.append("$ref \(ref) at \(path)")
                return ["type": "object"]
            }
            var merged = target.objectValue ?? JSONObject()
            for m in o where m.key != "$ref" { merged[m.key] = m.value }
            return node(.object(merged), path: path, defs: defs, depth: depth + 1, dropped: &dropped)
        }
        if let all = o["allOf"]?.arrayValue, all.count == 1, case .object(let only) = all[0] {
            o["allOf"] = nil
            for m in only where o[m.key] == nil { o[m.key] = m.value }
        }
        if let one = o["oneOf"], o["anyOf"] == nil {
            o["anyOf"] = one
            o["oneOf"] = nil
        }
        var out = JSONObject()
        if case .array(let types)? = o["type"] {
            let names = types.compactMap(\.stringValue)
            let nonNull = names.filter { $0 != "null" }
            if nonNull.count == 1 { out["type"] = .string(nonNull[0]) } else if nonNull.count > 1 {
                out["anyOf"] = .array(nonNull.map { ["type": .string($0)] })
            }
            if names.contains("null") { out["nullable"] = true }
            o["type"] = nil
        }
        if let c = o["const"] {
            out["enum"] = [.string(c.stringValue ?? c.jsonText)]
            if o["type"] == nil && out["type"] == nil { out["type"] = "string" }
            o["const"] = nil
        }
        if let ex = o["examples"]?.arrayValue, let first = ex.first, o["example"] == nil {
            out["example"] = first
            o["examples"] = nil
        }
        for m in o {
            let here = "\(path).\(m.key)"
            switch m.key {
            case "$defs", "definitions":
                continue
            case "properties":
                var props = JSONObject()
                for p in m.value.objectValue ?? JSONObject() {
                    props[p.key] = node(p.value, path: "\(path).properties.\(p.key)", defs: defs, depth: depth, dropped: &dropped)
                }
                out["properties"] = .object(props)
            case "items":
                out["items"] = node(m.value, path: "\(path).items", defs: defs, depth: depth, dropped: &dropped)
            case "anyOf":
                var branches: [JSONValue] = []
                for (i, b) in (m.value.arrayValue ?? []).enumerated() {
                    if b["type"]?.stringValue == "null" && b.objectValue?.count == 1 {
                        out["nullable"] = true
                        continue
                    }
                    branches.append(node(b, path: "\(path).anyOf[\(i)]", defs: defs, depth: depth, dropped: &dropped))
                }
                if branches.count == 1, case .object(let only) = branches[0] {
                    for b in only where out[b.key] == nil { out[b.key] = b.value }
                } else if !branches.isEmpty {
                    out["anyOf"] = .array(branches)
                }
            case "enum":
                let values = m.value.arrayValue ?? []
                if values.allSatisfy({ $0.stringValue != nil }) {
                    out["enum"] = m.value
                } else {
                    dropped.append("enum of non-strings at \(path)")
                }
            default:
                if kept.contains(m.key) { out[m.key] = m.value } else { dropped.append(here) }
            }
        }
        return .object(out)
    }
}
