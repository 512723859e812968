import Descartes

/// OpenAI's embeddings (`POST /v1/embeddings`) in and out: the request body
/// into an `EmbeddingRequest`, `Embeddings` into OpenAI's `list` of
/// `embedding`s, as floats or as base64 (little-endian float32).
enum OpenAIEmbeddings {
    struct Parsed: Sendable {
        var request: EmbeddingRequest
        var model: String
        var base64: Bool
    }

    static func parse(_ doc: JSONValue) throws(GatewayError) -> Parsed {
        guard case .object(let o) = doc else { throw .invalidRequest("the body is a JSON object") }
        guard let model = o["model"]?.stringValue, !model.isEmpty else { throw .invalidRequest("'model' is required", param: "model") }
        let inputs: [String]
        switch o["input"] {
        case .string(let s)?:
            inputs = [s]
        case .array(let list)?:
            guard !list.isEmpty else { throw .invalidRequest("'input' is an empty array: give at least one string", param: "input") }
            var texts: [String] = []
            for (i, v) in list.enumerated() {
                switch v {
                case .string(let s): texts.append(s)
                case .integer, .number, .array:
                    throw .invalidRequest(
                        "input[\(i)] is a token array (or token): the gateway embeds text only; send the input as a string or an array of strings",
                        param: "input")
                default:
                    throw .invalidRequest("input[\(i)] is \(v.typeName): 'input' is a string or an array of strings", param: "input")
                }
            }
            inputs = texts
        case nil, .null?:
            throw .invalidRequest("'input' is required: a string or an array of strings", param: "input")
        case let v?:
            throw .invalidRequest("'input' is \(v.typeName): it is a string or an array of strings", param: "input")
        }
        var dimensions: Int? = nil
        if let d = o["dimensions"], !d.isNull {
            guard let n = d.intValue, n > 0 else { throw .invalidRequest("'dimensions' is a positive integer, not \(d.jsonText)", param: "dimensions") }
            dimensions = n
        }
        var base64 = false
        if let f = o["encoding_format"], !f.isNull {
            switch f.stringValue {
            case "float": base64 = false
            case "base64": base64 = true
            default: throw .invalidRequest("'encoding_format' is \"float\" or \"base64\", not \(f.jsonText)", param: "encoding_format")
            }
        }
        return Parsed(request: EmbeddingRequest(inputs, dimensions: dimensions), model: model, base64: base64)
    }

    /// A vector as OpenAI's base64: the float32s' little-endian bytes.
    static func base64(_ v: [Float]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(v.count * 4)
        for f in v {
            let b = f.bitPattern.littleEndian
            withUnsafeBytes(of: b) { bytes.append(contentsOf: $0) }
        }
        return Base64.encode(bytes)
    }

    /// A float as JSON: its shortest decimal (0.1, not 0.10000000149011612).
    static func number(_ f: Float) -> JSONValue {
        .number(Double(f.description) ?? Double(f))
    }

    /// `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}`
    static func list(_ e: Embeddings, model: String, base64: Bool) -> JSONValue {
        let data: [JSONValue] = e.vectors.enumerated().map { i, v in
            ["object": "embedding", "index": .integer(i), "embedding": base64 ? .string(Self.base64(v)) : .array(v.map(number))]
        }
        let n = e.usage.inputTokens
        return ["object": "list", "data": .array(data), "model": .string(model), "usage": ["prompt_tokens": .integer(n), "total_tokens": .integer(n)]]
    }
}

extension Gateway {
    // MARK: OpenAI embeddings

    func embeddings(_ request: HTTPRequest, _ exchange: HTTPExchange, key: GatewaySettings.Key?, _ record: inout AccessRecord) async {
        let parsed: OpenAIEmbeddings.Parsed
        let target: (backend: any ModelBackend, name: String, model: String?)
        do throws(GatewayError) {
            parsed = try OpenAIEmbeddings.parse(try body(request))
            record.model = parsed.model
            target = try self.target(parsed.model, key: key)
        } catch {
            return send(error, .openAI, exchange, &record)
        }
        record.provider = target.name
        arm(target.name, exchange, &record)
        var embedRequest = parsed.request
        embedRequest.model = target.model
        do {
            let e = try await target.backend.embed(embedRequest)
            guard e.vectors.count == embedRequest.inputs.count else {
                throw ProviderError(
                    .invalidResponse, "the backend answered \(e.vectors.count) vectors for \(embedRequest.inputs.count) inputs", provider: target.name)
            }
            record.usage = Usage(inputTokens: e.usage.inputTokens)
            json(200, OpenAIEmbeddings.list(e, model: parsed.model, base64: parsed.base64), exchange, &record)
        } catch {
            var e = ProviderError.from(error, provider: target.name)
            if e.kind == .unsupportedFeature {
                e = ProviderError(
                    .unsupportedFeature, "the model '\(parsed.model)' cannot embed text (\(target.name): \(e.message))",
                    provider: nil)
            }
            var g = GatewayError(e)
            if e.kind == .unsupportedFeature {
                g.param = "model"
                g.code = "model_not_supported"
            }
            send(g, .openAI, exchange, &record)
        }
    }
}
