import Descartes
import DescartesSupport

/// Recordings of the real services kept in the repository
/// (Tests/Fixtures/recorded/<dialect>/, each directory's README names their
/// sources): the body a service sent (`NAME.sse`, `.json`, `.eventstream`),
/// the request it answered with the recorded status and content type
/// (`NAME.request.json`), and what a client must extract from it
/// (`NAME.expected.json`, written by that directory's reference extractor).
struct Recorded {
    static let root = FileSystem.join(TestEnv.root, "Tests/Fixtures/recorded")

    let dir: String
    let name: String
    let ext: String
    let body: [UInt8]
    /// The body's file, which the scripted server reads and sends itself.
    let file: String
    let request: JSONValue
    let expected: JSONValue

    /// The recording's body file names in `dir`, sorted.
    static func files(_ dir: String) -> [String] {
        let all = (try? FileSystem.list(FileSystem.join(root, dir))) ?? []
        return all.filter {
            ($0.hasSuffix(".sse") || $0.hasSuffix(".json") || $0.hasSuffix(".eventstream")) && !$0.hasSuffix(".request.json")
                && !$0.hasSuffix(".expected.json")
        }.sorted()
    }

    /// Runs `dir`'s reference extractor (`script`, stdlib Python) with
    /// `--check` over every recording: each sidecar is what it computes from
    /// the body, so a hand-edited expectation fails here.
    static func extractorCheck(_ dir: String, _ script: String) async -> ProcResult {
        let base = FileSystem.join(root, dir)
        return await Proc.run(["python3", FileSystem.join(base, script), "--check"] + files(dir).map { FileSystem.join(base, $0) }, timeout: .seconds(60))
    }

    init(_ dir: String, _ file: String) throws {
        let dot = file.lastIndex(of: ".")!
        self.dir = dir
        name = String(file[..<dot])
        ext = String(file[file.index(after: dot)...])
        let base = FileSystem.join(Self.root, dir)
        self.file = FileSystem.join(base, file)
        body = try FileSystem.readBytes(self.file, limit: 1 << 26)
        request = try JSONValue.parse(FileSystem.readText(FileSystem.join(base, "\(name).request.json"), limit: 1 << 24))
        expected = try JSONValue.parse(FileSystem.readText(FileSystem.join(base, "\(name).expected.json"), limit: 1 << 24))
    }

    var status: Int { request["response_status"]?.intValue ?? 200 }
    var contentType: String { request["response_content_type"]?.stringValue ?? "application/json" }
    /// The request body the recording answered.
    var requestBody: JSONValue { request["body"] ?? [:] }

    /// The recorded URI's path (no scheme, host or query).
    var path: String {
        var uri = Substring(request["uri"]?.stringValue ?? "")
        if let scheme = uri.range(of: "://") { uri = uri[scheme.upperBound...] }
        if let slash = uri.firstIndex(of: "/") { uri = uri[slash...] }
        if let q = uri.firstIndex(of: "?") { uri = uri[..<q] }
        return String(uri)
    }

    /// The recorded URI's query, if any.
    var query: String? {
        guard let uri = request["uri"]?.stringValue, let q = uri.firstIndex(of: "?") else { return nil }
        return String(uri[uri.index(after: q)...])
    }

    /// The ways to cut the body for a replay: whole, and in 7-byte pieces;
    /// 1-byte pieces as well for bodies under 8 KB (a 17 KB stream in 1-byte
    /// pieces is 17,000 chunked writes).
    var splits: [Int?] { body.count < 8_192 ? [nil, 1, 7] : [nil, 7] }

    /// The body file as the recorded status and content type, whole or in
    /// `split`-byte pieces (chunked framing; the server reads the file).
    func response(split: Int?) -> ScriptedServer.Response {
        var o: JSONObject = [
            "status": .integer(status), "framing": "chunked", "headers": [["content-type", .string(contentType)]], "body_file": .string(file),
        ]
        if let split { o["split"] = .string("bytes:\(split)") }
        return ScriptedServer.Response(o)
    }
}
