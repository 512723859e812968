import Descartes
import Testing

/// The JSON Schema subset validator (`JSONSchema`) and the answer check built
/// on it (`ResponseFormat.conforming`): each failing case names the first
/// failing path and why.
@Suite struct JSONSchemaTests {
    static let people: JSONValue = try! JSONValue.parse(
        #"""
        {"type": "object", "additionalProperties": false, "required": ["people"],
         "properties": {"people": {"type": "array", "minItems": 1, "maxItems": 5, "items": {"$ref": "#/$defs/person"}}},
         "$defs": {"person": {"type": "object", "additionalProperties": false, "required": ["name", "age"],
           "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 10},
                          "age": {"type": "integer", "minimum": 0, "maximum": 150},
                          "role": {"enum": ["admin", "user"]},
                          "nick": {"type": ["string", "null"]},
                          "score": {"type": "number", "exclusiveMaximum": 1}}}}}
        """#)

    func violation(_ schema: JSONValue, _ value: String) throws -> String? {
        try JSONSchema(schema).validate(JSONValue.parse(value))?.description
    }

    @Test func aConformingValuePasses() throws {
        #expect(try violation(Self.people, #"{"people": [{"name": "Ada", "age": 36, "role": "admin", "nick": null, "score": 0.5}, {"name": "Bo", "age": 4.0}]}"#) == nil)
    }

    @Test func theFirstFailingPathIsNamed() throws {
        let cases: [(String, String)] = [
            (#"{"people": [{"name": "A", "age": 1}, {"name": "B", "age": 2}, {"name": "C", "age": "forty"}]}"#,
             #"$.people[2].age: expected integer, got string "forty""#),
            (#"{"people": [{"name": "A", "age": 1.5}]}"#, "$.people[0].age: expected integer, got number 1.5"),
            (#"{"people": [{"name": "A"}]}"#, "$.people[0].age: required property is missing"),
            (#"{"people": [{"name": "A", "age": 1, "email": "a@b"}]}"#,
             "$.people[0].email: not allowed (additionalProperties is false; the properties are name, age, role, nick, score)"),
            (#"{"people": [{"name": "A", "age": 1, "role": "root"}]}"#, #"$.people[0].role: expected one of "admin", "user", got string "root""#),
            (#"{"people": [{"name": "A", "age": 1, "nick": 3}]}"#, "$.people[0].nick: expected string or null, got integer 3"),
            (#"{"people": [{"name": "A", "age": 151}]}"#, "$.people[0].age: expected at most 150, got 151"),
            (#"{"people": [{"name": "A", "age": -1}]}"#, "$.people[0].age: expected at least 0, got -1"),
            (#"{"people": [{"name": "A", "age": 1, "score": 1}]}"#, "$.people[0].score: expected less than 1, got 1"),
            (#"{"people": [{"name": "", "age": 1}]}"#, "$.people[0].name: expected at least 1 characters, got 0"),
            (#"{"people": [{"name": "Ærøskøbing!", "age": 1}]}"#, "$.people[0].name: expected at most 10 characters, got 11"),
            (#"{"people": []}"#, "$.people: expected at least 1 item, got 0"),
            (#"{"people": [{"name":"a","age":1},{"name":"a","age":1},{"name":"a","age":1},{"name":"a","age":1},{"name":"a","age":1},{"name":"a","age":1}]}"#,
             "$.people: expected at most 5 items, got 6"),
            (#"{"people": {"name": "A"}}"#, "$.people: expected array, got object"),
            (#"{}"#, "$.people: required property is missing"),
            (#"["people"]"#, "$: expected object, got array"),
            (#"{"people": [null]}"#, "$.people[0]: expected object, got null"),
        ]
        for (value, expected) in cases {
            #expect(try violation(Self.people, value) == expected, "\(value)")
        }
    }

    @Test func constAnyOfOneOfAllOfAndSchemaValuedAdditionalProperties() throws {
        let s: JSONValue = [
            "type": "object",
            "properties": [
                "kind": ["const": "point"],
                "at": ["anyOf": [["type": "string"], ["type": "array", "items": ["type": "number"], "minItems": 2]]],
                "one": ["oneOf": [["type": "integer"], ["type": "number"]]],
                "both": ["allOf": [["type": "string"], ["maxLength": 2]]],
                "odd key": ["type": "boolean"],
            ],
            "additionalProperties": ["type": "integer"],
        ]
        #expect(try violation(s, #"{"kind": "point", "at": [1, 2.5], "one": 1.5, "both": "ab", "odd key": true, "extra": 3}"#) == nil)
        #expect(try violation(s, #"{"kind": "line"}"#) == #"$.kind: expected "point", got string "line""#)
        #expect(
            try violation(s, #"{"at": [1, "x"]}"#)
                == #"$.at: matches none of the 2 anyOf alternatives (alternative 2: $.at[1]: expected number, got string "x"; alternative 1: expected string, got array)"#)
        #expect(try violation(s, #"{"one": 2}"#) == "$.one: matches 2 oneOf alternatives (1, 2), expected exactly one")
        #expect(try violation(s, #"{"both": "abc"}"#) == "$.both: expected at most 2 characters, got 3")
        #expect(try violation(s, #"{"odd key": 1}"#) == #"$["odd key"]: expected boolean, got integer 1"#)
        #expect(try violation(s, #"{"extra": "no"}"#) == #"$.extra: expected integer, got string "no""#)
    }

    @Test func refsToDefinitionsAndRecursion() throws {
        // A tree (OpenAI's strict schemas are written this way): "#" is the root.
        let tree: JSONValue = [
            "type": "object", "required": ["name", "children"], "additionalProperties": false,
            "properties": ["name": ["type": "string"], "children": ["type": "array", "items": ["$ref": "#"]]],
        ]
        #expect(try violation(tree, #"{"name": "a", "children": [{"name": "b", "children": []}]}"#) == nil)
        #expect(
            try violation(tree, #"{"name": "a", "children": [{"name": "b", "children": [{"name": 7, "children": []}]}]}"#)
                == "$.children[0].children[0].name: expected string, got integer 7")
        let defs: JSONValue = ["$ref": "#/definitions/id", "definitions": ["id": ["type": "string", "maxLength": 3]]]
        #expect(try violation(defs, #""abcd""#) == "$: expected at most 3 characters, got 4")
        // A schema that refers to itself without moving into the value is reported, not followed forever.
        let loop: JSONValue = ["$ref": "#/$defs/a", "$defs": ["a": ["$ref": "#/$defs/a"]]]
        #expect(try violation(loop, "1") == ##"$: the schema's $ref "#/$defs/a" refers to itself without end"##)
    }

    @Test func unknownKeywordsAreIgnoredAndBooleanSchemasApply() throws {
        let s: JSONValue = ["type": "string", "format": "email", "pattern": "^x", "description": "d", "x-vendor": 1]
        #expect(try violation(s, #""not an email""#) == nil)
        #expect(try violation(true, "[1]") == nil)
        #expect(try violation(["properties": ["no": false]], #"{"no": 1}"#) == "$.no: no value is allowed here (the schema is false), got integer 1")
        // Integers are numbers; whole numbers written with a fraction are integers; 1 == 1.0 for enum and const.
        #expect(try violation(["type": "number"], "3") == nil)
        #expect(try violation(["type": "integer"], "3.0") == nil)
        #expect(try violation(["enum": [1, ["a": 1]]], "1.0") == nil)
        #expect(try violation(["const": ["a": 1, "b": [true]]], #"{"b": [true], "a": 1}"#) == nil)
        // Long strings are cut in messages.
        #expect(try violation(["type": "integer"], "\"\(String(repeating: "x", count: 100))\"") == "$: expected integer, got string \"\(String(repeating: "x", count: 37))...\"")
    }

    @Test func aSchemaItCannotApplyIsRefusedNamingTheKeyword() {
        let cases: [(JSONValue, String)] = [
            (["type": "int"], #"type: "int" is not a type (expected one of string, number, integer, boolean, object, array, null)"#),
            (["properties": ["age": ["type": ["string", 3]]]], "properties.age.type: 3 is not a type (expected one of string, number, integer, boolean, object, array, null)"),
            (["required": "name"], #"required: expected a list of property names, got "name""#),
            (["items": ["$ref": "#/$defs/missing"]], ##"items.$ref: "#/$defs/missing" points nowhere in this schema (only references inside it are followed: "#", "#/$defs/NAME", "#/definitions/NAME")"##),
            (["$ref": "https://example.com/s.json"], ##"$ref: "https://example.com/s.json" points nowhere in this schema (only references inside it are followed: "#", "#/$defs/NAME", "#/definitions/NAME")"##),
            (["minItems": -1], "minItems: expected a non-negative integer, got -1"),
            (["maximum": "10"], #"maximum: expected a number, got "10""#),
            (["anyOf": []], "anyOf: expected a non-empty list of schemas, got []"),
            (["properties": ["a": "string"]], "properties.a: expected a schema (an object, or true or false), got string"),
            ("string", "(the schema): expected a schema (an object, or true or false), got string"),
        ]
        for (schema, expected) in cases {
            do {
                _ = try JSONSchema(schema)
                Issue.record("accepted \(schema)")
            } catch {
                #expect(error.description == expected)
            }
        }
    }

    @Test func anAnswerIsCheckedAgainstItsFormat() throws {
        let person = ResponseFormat.jsonSchema(
            name: "person", schema: ["type": "object", "properties": ["age": ["type": "integer"]], "required": ["age"]])
        #expect(try person.conforming(#"{"age": 3}"#) == #"{"age": 3}"#)
        #expect(try ResponseFormat.text.conforming("not json") == "not json")
        #expect(try ResponseFormat.json.conforming(#"{"any": ["shape"]}"#) == #"{"any": ["shape"]}"#)
        // One fenced block: checked and delivered without the fence.
        #expect(try person.conforming("\n```json\n{\"age\": 3}\n```\n") == #"{"age": 3}"#)
        #expect(try ResponseFormat.json.conforming("```\n{}\n```") == "{}")
        func failure(_ f: ResponseFormat, _ content: String) -> String? {
            do { _ = try f.conforming(content); return nil } catch { return error.description }
        }
        #expect(failure(person, #"{"age": "three"}"#) == #"$.age: expected integer, got string "three""#)
        #expect(failure(person, "```json\n{\"age\": \"three\"}\n```") == #"$.age: expected integer, got string "three""#)
        // Prose around the JSON, or two blocks, or a fence of another language: not JSON.
        #expect(failure(.json, "Here it is: {}")?.hasPrefix("$: not JSON (") == true)
        #expect(failure(.json, "```json\n{}\n```\n```json\n{}\n```")?.hasPrefix("$: not JSON (") == true)
        #expect(failure(.json, "```yaml\na: 1\n```")?.hasPrefix("$: not JSON (") == true)
        #expect(failure(.json, "  ") == "$: not JSON (the answer is empty)")
        #expect(failure(.json, "[1, 2]") == "$: expected a JSON object, got array")
        #expect(failure(.json, #"{"age": 3"#)?.hasSuffix(#": "{\"age\": 3""#) == true)
    }
}
