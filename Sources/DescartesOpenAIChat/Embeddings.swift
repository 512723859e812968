// Embeddings in OpenAI's wire format (POST /embeddings), which OpenAI,
// llama.cpp's server, vLLM and most compatible servers speak: ABI 1.1's
// `embed` for every plugin built on this dialect.
import DescartesPluginKit

extension ChatClient {
    /// `POST /embeddings` with `{"model", "input": [..], "encoding_format":
    /// "float", "dimensions"?}`; the answer's `data[i].embedding` put back in
    /// input order by `index`, `usage.prompt_tokens` as the input tokens.
    /// `defaultModel`: the model when the request names none (nil: the
    /// request must name one, and the error says which key would).
    public func embed(_ request: EmbeddingRequest, _ call: PluginCall, defaultModel: String?, modelKey: String = "embedding_model") {
        guard let model = request.model ?? defaultModel, !model.isEmpty else {
            return call.fail(ProviderError(.api, "no embedding model: the request names none and key '\(modelKey)' is not set"))
        }
        var body: JSONObject = ["model": .string(model), "input": .array(request.inputs.map { .string($0) }), "encoding_format": "float"]
        if let d = request.dimensions { body["dimensions"] = .integer(d) }
        let server = self.server
        let path = server.modelPath(model, "embeddings")
        let req = server.request("POST", path, body: JSONValue.object(body).jsonBytes, timeouts: HTTPTimeouts(request.deadlines))
        let count = request.inputs.count
        let transfer = http.fetch(req) { result in
            switch result {
            case .failure(let e):
                call.fail(server.scrub(e.providerError(endpoint: server.baseURL)))
            case .success(let r):
                guard (200..<300).contains(r.status) else {
                    call.fail(server.httpError(status: r.status, headers: r.headers, body: r.body, method: "POST", path: path, model: model))
                    return
                }
                do throws(ProviderError) {
                    call.finish(embeddings: try OpenAIEmbeddings.decode(r.body, inputs: count, where: "POST \(server.url(path))", status: r.status))
                } catch {
                    call.fail(error)
                }
            }
        }
        call.onCancel { transfer.cancel() }
    }
}

/// Reads OpenAI's embedding list.
public enum OpenAIEmbeddings {
    /// `{"data": [{"index": i, "embedding": [number]}], "model", "usage": {"prompt_tokens"}}`
    /// into one vector per input, in input order; an answer that does not
    /// fit (not a list, a missing or repeated index, a base64 string, vectors
    /// of different lengths, fewer or more than asked) is `invalid_response`
    /// naming what.
    public static func decode(_ body: [UInt8], inputs: Int, where place: String, status: Int) throws(ProviderError) -> Embeddings {
        func bad(_ why: String) -> ProviderError {
            ProviderError(.invalidResponse, "\(place): \(why)", status: status)
        }
        guard let doc = try? JSONValue.parse(bytes: body), let data = doc["data"]?.arrayValue else {
            throw bad("not an embedding list: \(ProviderHTTP.excerpt(body))")
        }
        guard data.count == inputs else { throw bad("\(data.count) embeddings for \(inputs) inputs") }
        var rows = [[Float]?](repeating: nil, count: data.count)
        for (i, item) in data.enumerated() {
            let index = item["index"]?.intValue ?? i
            guard index >= 0, index < data.count, rows[index] == nil else { throw bad("data[\(i)].index \(index) is out of range or repeated") }
            guard let numbers = item["embedding"]?.arrayValue else {
                throw bad("data[\(i)].embedding: expected an array of numbers, got \(item["embedding"]?.typeName ?? "nothing")")
            }
            var v: [Float] = []
            v.reserveCapacity(numbers.count)
            for (j, x) in numbers.enumerated() {
                guard let d = x.doubleValue, d.isFinite else { throw bad("data[\(i)].embedding[\(j)]: expected a finite number, got \(x.typeName)") }
                v.append(Float(d))
            }
            rows[index] = v
        }
        let vectors = rows.map { $0! }
        let dimensions = vectors.first?.count ?? 0
        if let k = vectors.firstIndex(where: { $0.count != dimensions }) {
            throw bad("data[\(k)]: \(vectors[k].count) numbers, but the first embedding has \(dimensions)")
        }
        var usage = Usage()
        if let p = doc["usage"]?["prompt_tokens"]?.intValue { usage.inputTokens = p }
        return Embeddings(vectors: vectors, dimensions: dimensions, model: doc["model"]?.stringValue ?? "", usage: usage)
    }
}
