import Descartes
import Testing

/// One codec per type (`Wire`): the document and the bytes come from the
/// same encoder, and every host-side form decodes back to what was encoded.
@Suite struct WireTests {
    static let request = ModelRequest(
        messages: [
            .system("be brief"),
            .user("what is \"this\"?\n", images: [.url("https://example.com/a.png")]),
            Message(
                role: .assistant, content: "", toolCalls: [ToolCall(id: "c1", name: "look", arguments: #"{"q":"é"}"#)],
                reasoning: "hm", reasoningSignature: "sig"),
            Message(role: .tool, content: "found", toolCallID: "c1", cacheControl: ["type": "ephemeral", "ttl": "1h"]),
        ],
        model: "m-1", maxTokens: 64, temperature: 0.5, topP: 1, systemPrompt: "sys",
        tools: [Tool(name: "look", description: "looks", parameters: ["type": "object", "properties": ["q": ["type": "string"]]], cacheControl: ["type": "ephemeral"])],
        toolChoice: .tool("look"), stop: ["\n\n", "END"], seed: 7, metadata: ["b": "2", "a": "1"],
        options: ["num_ctx": 4096, "nested": ["x": [1, 2.5, true, .null]]],
        deadlines: Deadlines(connect: .milliseconds(1500), total: .seconds(30)))

    @Test func theRequestsDocumentIsItsBytes() throws {
        let bytes = Wire.encode(Self.request)
        let doc = Wire.json(Self.request)
        #expect(doc.jsonBytes == bytes)
        #expect(try JSONValue.parse(bytes: bytes) == doc)
        #expect(try Wire.decodeRequest(doc) == Self.request)
        // The minimal request as well (no optional member written).
        let small = ModelRequest(prompt: "hi")
        #expect(Wire.json(small).jsonBytes == Wire.encode(small))
        #expect(Wire.json(small).jsonText == #"{"messages":[{"role":"user","content":"hi"}]}"#)
    }

    /// `cache_control` on a message or a tool is an object; anything else
    /// is refused naming the member.
    @Test func cacheControlIsAnObject() throws {
        let bad = try JSONValue.parse(#"{"messages":[{"role":"user","content":"hi","cache_control":"ephemeral"}]}"#)
        let e1 = #expect(throws: WireError.self) { try Wire.decodeRequest(bad) }
        #expect(e1?.message.hasPrefix("request.messages[0].cache_control: expected an object") == true, "\(String(describing: e1))")
        let tool = try JSONValue.parse(#"{"messages":[],"tools":[{"name":"t","cache_control":[1]}]}"#)
        let e2 = #expect(throws: WireError.self) { try Wire.decodeRequest(tool) }
        #expect(e2?.message.hasPrefix("request.tools[0].cache_control: expected an object") == true, "\(String(describing: e2))")
        let null = try JSONValue.parse(#"{"messages":[{"role":"user","content":"hi","cache_control":null}]}"#)
        #expect(try Wire.decodeRequest(null).messages[0].cacheControl == nil)
    }

    @Test func anErrorKeepsItsProviderAndAttempts() throws {
        let first = ProviderError(.rateLimited, "slow down", provider: "a", status: 429, retryAfter: .milliseconds(1200))
        let e = ProviderError(
            .timeout, "the total deadline of 2 s passed", provider: "b", providerType: "t", deadline: "total",
            details: ["one", "two"], attempts: [Attempt(provider: "a", error: first, duration: .milliseconds(40))])
        let doc = Wire.json(e)
        #expect(doc.jsonBytes == Wire.encode(e))
        #expect(
            doc.jsonText
                == #"{"kind":"timeout","message":"the total deadline of 2 s passed","provider":"b","provider_type":"t","deadline":"total","details":["one","two"],"attempts":[{"provider":"a","error":{"kind":"rate_limited","message":"slow down","provider":"a","status":429,"retry_after_ms":1200},"duration_ms":40}]}"#
        )
        let back = Wire.decodeError(doc, provider: nil)
        #expect(back == e)
        // The provider the host knows wins over the document's.
        #expect(Wire.decodeError(doc, provider: "c").provider == "c")
        // The bytes form decodes the same, and a broken document says so.
        #expect(Wire.encode(e).withUnsafeBytes { Wire.decodeError($0, provider: nil) } == e)
        #expect(Wire.decodeError(["message": "x"], provider: "p").kind == .invalidResponse)
    }

    @Test func responsesAndEventsDecodeToWhatWasEncoded() throws {
        var r = ModelResponse()
        r.content = "hello"
        r.reasoning = "because"
        r.finishReason = .toolUse
        r.usage = Usage(inputTokens: 3, outputTokens: 5, cacheReadTokens: 1, reasoningTokens: 2)
        r.toolCalls = [ToolCall(id: "x", name: "f", arguments: "{}")]
        r.model = "m"
        r.id = "r1"
        r.costUSD = 0.25
        r.provider = "p"
        r.metadata = ["session": "s"]
        r.attempts = [Attempt(provider: "q", error: ProviderError(.api, "no"), duration: .milliseconds(9))]
        r.reasoningBlocks = [.thinking("be", signature: "c2ln"), .redacted("ZGF0YQ=="), .thinking("cause", signature: nil)]
        #expect(try Wire.decodeResponse(Wire.json(r)) == r)
        let events: [StreamEvent] = [
            .start(id: "i", model: "m"), .textDelta("a"), .reasoningDelta("b"), .reasoningSignature("c2ln"), .reasoningRedacted("ZGF0YQ=="),
            .toolCallStart(index: 0, id: "x", name: "f"),
            .toolCallDelta(index: 0, arguments: "{}"), .toolCallEnd(index: 0), .usage(r.usage),
            .notice(level: "info", message: "n"), .finish(r),
        ]
        for e in events { #expect(try Wire.decodeEvent(Wire.json(e)) == e) }
        #expect(Wire.json(r.toolCalls[0]).jsonText == #"{"id":"x","name":"f","arguments":"{}"}"#)
    }

    /// A message's reasoning blocks (ABI 1.4) go out in order and come
    /// back the same; a malformed one is refused naming where it is.
    @Test func reasoningBlocksRoundTripAndAreChecked() throws {
        let blocks: [ReasoningBlock] = [.thinking("a", signature: "s1"), .redacted("ZA=="), .thinking("b", signature: "s2"), .thinking("c", signature: nil)]
        let m = Message(role: .assistant, content: "x", reasoning: "abc", reasoningSignature: "s2", reasoningBlocks: blocks)
        let doc = Wire.json(ModelRequest(messages: [.user("q"), m]))
        #expect(doc["messages"]?[1]?["reasoning_blocks"] == [
            ["type": "thinking", "text": "a", "signature": "s1"], ["type": "redacted", "data": "ZA=="],
            ["type": "thinking", "text": "b", "signature": "s2"], ["type": "thinking", "text": "c"],
        ])
        #expect(try Wire.decodeRequest(doc).messages[1] == m)
        // An older host's message (no member) has none: the joined view is what it sends.
        #expect(Wire.json(ModelRequest(messages: [.user("q")]))["messages"]?[0]?["reasoning_blocks"] == nil)
        for (bad, said) in [
            (["type": "secret"] as JSONValue, "request.messages[0].reasoning_blocks[0].type: 'secret', expected 'thinking' or 'redacted'"),
            (["type": "redacted"], "request.messages[0].reasoning_blocks[0]: a redacted block needs \"data\""),
            (["type": "thinking", "text": 3], "request.messages[0].reasoning_blocks[0].text: expected a string, got"),
        ] {
            let doc: JSONValue = ["messages": [["role": "assistant", "content": "", "reasoning_blocks": [bad]]]]
            #expect(throws: WireError.self) { try Wire.decodeRequest(doc) }
            do { _ = try Wire.decodeRequest(doc) } catch { #expect(error.message.hasPrefix(said), "\(error)") }
        }
        // The answer's blocks become the next turn's.
        let answer = ModelResponse(content: "x", reasoning: "ab", reasoningBlocks: blocks)
        #expect(Message.assistant(answer).reasoningBlocks == blocks)
        #expect(Message.assistant(answer).reasoningToSendBack == blocks)
        #expect(Message(role: .assistant, content: "", reasoning: "r", reasoningSignature: "s").reasoningToSendBack == [.thinking("r", signature: "s")])
        #expect(Message(role: .assistant, content: "", reasoning: "r").reasoningToSendBack == [])
    }

    /// The host's blocks from a plugin's events: a signature ends its
    /// thinking block, a redacted block stands in its place, and a plugin
    /// that signs only with its answer (metadata) has that signature on
    /// its last thinking block, or on a block of its own without text.
    @Test func theAssemblerBuildsReasoningBlocksFromTheEvents() {
        func reasoning(_ a: inout ResponseAssembler, _ s: String) {
            var s = s
            s.withUTF8 { a.appendReasoning(UnsafeRawBufferPointer($0)) }
        }
        var streamed = ResponseAssembler(provider: "p")
        reasoning(&streamed, "fir")
        reasoning(&streamed, "st")
        streamed.signReasoning("s1")
        streamed.appendRedactedReasoning("ZA==")
        reasoning(&streamed, "then")
        let r = streamed.response(Wire.Finish(finishReason: .stop, metadata: ["thinking_signature": "s1"]))
        // A streamed signature was seen: the metadata's is not put on the unsigned last block.
        #expect(r.reasoningBlocks == [.thinking("first", signature: "s1"), .redacted("ZA=="), .thinking("then", signature: nil)])
        #expect(r.reasoning == "firstthen")
        var late = ResponseAssembler(provider: "p")
        reasoning(&late, "x")
        #expect(late.response(Wire.Finish(finishReason: .stop, metadata: ["thought_signature": "g"])).reasoningBlocks == [.thinking("x", signature: "g")])
        let bare = ResponseAssembler(provider: "p")
        #expect(bare.response(Wire.Finish(finishReason: .stop, metadata: ["reasoning_signature": "[]"])).reasoningBlocks == [.thinking("", signature: "[]")])
        #expect(bare.response(Wire.Finish(finishReason: .stop)).reasoningBlocks == [])
        var redactedOnly = ResponseAssembler(provider: "p")
        redactedOnly.appendRedactedReasoning("ZA==")
        #expect(redactedOnly.hasOutput)
        #expect(redactedOnly.response(Wire.Finish(finishReason: .stop)).reasoningBlocks == [.redacted("ZA==")])
    }

    @Test func theTreeWriterBuildsWhatTheTextWriterWrites() throws {
        func write<W: JSONOutput>(_ w: inout W) {
            w.beginObject()
            w.field("a", 1)
            w.beginArray(key: "list")
            w.value("x")
            w.beginObject()
            w.field("deep", true)
            w.endObject()
            w.beginArray()
            w.endArray()
            w.null()
            w.endArray()
            w.beginObject(key: "empty")
            w.endObject()
            w.field("skipped", nil as String?)
            w.field("n", 2.5)
            w.endObject()
        }
        var text = JSONWriter()
        var tree = JSONTreeWriter()
        write(&text)
        write(&tree)
        #expect(tree.value.jsonBytes == text.bytes)
        #expect(text.string == #"{"a":1,"list":["x",{"deep":true},[],null],"empty":{},"n":2.5}"#)
    }
}
