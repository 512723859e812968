import Descartes
import DescartesSupport
import Testing

/// `descartes complete --schema FILE|FIELDS`, run as a user runs it against
/// an OpenAI-compatible server on 127.0.0.1: the schema that went out, the
/// JSON printed, and the errors for a bad schema or a non-conforming answer.
@Suite struct SchemaCLITests {
    let plugins = PluginDir().addManifest("openai")

    func cli(_ args: [String], _ server: ServerSlot?) async -> ProcResult {
        var e = ["DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent", "OPENAI_API_KEY": APICLITests.openAIKey]
        if let server { e["OPENAI_ENDPOINT"] = "\(server.url)/v1" }
        return await Proc.descartes(["complete", "-p", "openai"] + args, env: e)
    }

    @Test func theConciseFormIsSentStrictAndTheJSONIsPrinted() async throws {
        let server = try await ServerSlot.make()
        let answer = #"{"name": "Ada", "age": 36, "bio": "Wrote the first program.", "score": 0.9, "alive": false}"#
        try await server.script(["POST /v1/chat/completions": [.json(StructuredOutputTests.chat(answer))]])
        let r = await cli(["--schema", "name, age int, bio: their biography, score float, alive bool", "Ada Lovelace"], server)
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == answer + "\n")
        let sent = try #require(try await server.requests().last?.json)
        let expected: JSONValue = [
            "type": "object",
            "properties": [
                "name": ["type": "string"], "age": ["type": "integer"], "bio": ["type": "string", "description": "their biography"],
                "score": ["type": "number"], "alive": ["type": "boolean"],
            ],
            "required": ["name", "age", "bio", "score", "alive"], "additionalProperties": false,
        ]
        #expect(sent["response_format"] == ["type": "json_schema", "json_schema": ["name": "answer", "schema": expected, "strict": true]])
    }

    @Test func aSchemaFileIsAJSONSchemaOrTheConciseFormOneFieldALine() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(StructuredOutputTests.chat(#"{"tags": ["a"]}"#)), .json(StructuredOutputTests.chat(#"{"title": "T", "summary": "S"}"#))]])
        let dir = TempDir("descartes-schema")
        let json = dir.write("tagged list.json", #"{"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}"#)
        let r = await cli(["--schema", json, "x"], server)
        #expect(r.status == 0, "\(r)")
        // Named after the file; not strict (the schema does not require every property).
        #expect(
            try await server.requests().last?.json?["response_format"]?["json_schema"]
                == ["name": "tagged_list", "schema": ["type": "object", "properties": ["tags": ["type": "array", "items": ["type": "string"]]]], "strict": false])
        // Newline-separated: a description may hold commas.
        let concise = dir.write("article.txt", "title\nsummary: two sentences, no more\n")
        let c = await cli(["--schema", concise, "x"], server)
        #expect(c.status == 0, "\(c)")
        let schema = try #require(try await server.requests().last?.json?["response_format"]?["json_schema"]?["schema"])
        #expect(schema["properties"]?["summary"] == ["type": "string", "description": "two sentences, no more"])
    }

    @Test func aBadSchemaIsADataErrorNamingTheField() async throws {
        let dir = TempDir("descartes-schema")
        let cases: [([String], String)] = [
            (["--schema", "name, age integr"], "Error: --schema: field 2 ('age integr'): unknown type 'integr' (expected str, int, float or bool)"),
            (["--schema", "name, name int"], "Error: --schema: field 2 ('name int'): 'name' is named twice"),
            (["--schema", "full name str"], "Error: --schema: field 1 ('full name str'): expected NAME [TYPE][: DESCRIPTION], got 3 words before the description"),
            (["--schema", ", ,"], "Error: --schema: no fields (expected e.g. 'name, age int, bio: their biography')"),
            (["--schema", #"{"type": "object", "properties": {"age": {"type": "int"}}}"#], #"Error: --schema: properties.age.type: "int" is not a type"#),
            (["--schema", dir.write("bad.json", "{\"type\": ")], "Error: --schema \(dir.file("bad.json")): not JSON"),
            (["--schema", dir.file("missing.json")], "Error: --schema: "),
        ]
        for (args, message) in cases {
            let r = await cli(args + ["x"], nil)
            #expect(r.status == 65, "\(args): \(r)")
            #expect(r.stderr.hasPrefix(message), "\(args): \(r.stderr)")
        }
    }

    @Test func anAnswerThatDoesNotConformFailsWithTheFailingPath() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(StructuredOutputTests.chat(#"{"name": "Ada", "age": "forty"}"#))]])
        let r = await cli(["--schema", "name, age int", "Ada"], server)
        #expect(r.status != 0, "\(r)")
        #expect(r.stderr.contains(#"'openai' answered JSON that does not match schema 'answer': $.age: expected integer, got string "forty""#), "\(r.stderr)")
    }
}
