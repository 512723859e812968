import Descartes
import Testing
import DescartesSupport

/// Images with user messages: the ABI's `images` member, what each plugin
/// puts on the wire (checked on the body the scripted server received), the
/// host refusing images for a provider without `vision` before any plugin
/// sees them, the CLI's `--image`, and the real `claude`.
@Suite struct ImageTests {
    /// A 3x2 red PNG.
    static let pngBase64 = "iVBORw0KGgoAAAANSUhEUgAAAAMAAAACCAIAAAASFvFNAAAAEElEQVR4nGP4z8AAQQxwFgBB0gX7h/C5SAAAAABJRU5ErkJggg=="
    static var png: [UInt8] { Base64.decode(pngBase64)! }
    static let key = "sk-image-test-5a4b3c2d1e0f"

    static func request(_ images: [ImageInput]) -> ModelRequest {
        ModelRequest(messages: [.user("What colour is this?", images: images)])
    }

    // MARK: Values and the wire

    @Test func base64MatchesRFC4648() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, coded) in vectors {
            #expect(Base64.encode(Array(plain.utf8)) == coded)
            #expect(Base64.decode(coded) == Array(plain.utf8))
        }
        var g = SystemRandomNumberGenerator()
        for n in 0..<200 {
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
        for bad in ["Zm9v!", "Zg=a", "Z===", "Zm 9v"] { #expect(Base64.decode(bad) == nil, "\(bad)") }
    }

    @Test func mediaTypeAndSizeComeFromTheBytes() throws {
        let image = try ImageInput(bytes: Self.png)
        #expect(image.source == .data(mediaType: "image/png", base64: Self.pngBase64))
        #expect(image.byteCount == Self.png.count)
        #expect(ImageSize.of(image)! == (3, 2))
        #expect(Heuristics.imageTokens(image) == 1)
        // A baseline JPEG's frame header after an APP0 segment: 640 x 480.
        let jpeg: [UInt8] = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0xE0, 0x02, 0x80, 0x03]
        #expect(ImageSize.of(bytes: jpeg)! == (640, 480))
        #expect(Heuristics.imageTokens(try ImageInput(bytes: jpeg)) == 410)
        #expect(Heuristics.imageTokens(.url("https://example.com/a.png")) == 1600)
        let estimate = Heuristics.tokens(Self.request([image]))
        #expect(estimate.method == "heuristic:chars/4+images")
        #expect(throws: ImageError.self) { try ImageInput(bytes: Array("not an image".utf8)) }
        do {
            _ = try ImageInput(bytes: Array("%PDF-1.7".utf8))
        } catch {
            #expect(error.description.contains("not a PNG, JPEG, GIF or WebP image"))
        }
    }

    @Test func theRequestDocumentCarriesImagesBothWays() throws {
        let r = Self.request([try ImageInput(bytes: Self.png), .url("https://example.com/cat.jpg")])
        let doc = try JSONValue.parse(bytes: Wire.encode(r))
        let images = try #require(doc["messages"]?[0]?["images"]?.arrayValue)
        #expect(images[0] == ["media_type": "image/png", "data": .string(Self.pngBase64)])
        #expect(images[1] == ["url": "https://example.com/cat.jpg"])
        #expect(try Wire.decodeRequest(doc) == r)
    }

    @Test(arguments: [
        (#"{"role":"assistant","content":"x","images":[{"url":"https://a/b.png"}]}"#, "request.messages[0].images: only user messages carry images"),
        (#"{"role":"user","content":"x","images":[{"media_type":"image/bmp","data":"AAAA"}]}"#, "request.messages[0].images[0].media_type: \"image/bmp\" is not one of"),
        (#"{"role":"user","content":"x","images":[{"media_type":"image/png","data":"AA!A"}]}"#, "request.messages[0].images[0].data: not base64"),
        (#"{"role":"user","content":"x","images":[{"media_type":"image/png"}]}"#, "request.messages[0].images[0]: missing \"data\" (base64) or \"url\""),
        (#"{"role":"user","content":"x","images":[{"url":"file:///etc/passwd"}]}"#, "request.messages[0].images[0].url: expected an http(s) URL"),
        (#"{"role":"user","content":"x","images":{"url":"https://a/b.png"}}"#, "request.messages[0].images: expected an array"),
    ])
    func aBadImageIsNamedByItsPath(_ message: String, _ error: String) throws {
        let doc = try JSONValue.parse(#"{"messages":[\#(message)]}"#)
        #expect {
            try Wire.decodeRequest(doc)
        } throws: { e in
            "\(e)".contains(error)
        }
    }

    // MARK: The plugins, on the wire

    @Test func openAISendsContentPartsWithADataURL() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Red."},"finish_reason":"stop"}],"usage":{"prompt_tokens":90,"completion_tokens":2}}"#)]])
        let plugins = PluginDir().addManifest("openai")
        let b = try plugins.factory().create("openai", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
        let r = try await b.complete(Self.request([try ImageInput(bytes: Self.png), .url("https://example.com/cat.jpg")]))
        #expect(r.content == "Red.")
        let body = try #require(try await server.requests().first?.json)
        #expect(body["messages"]?[0]?["content"] == [
            ["type": "text", "text": "What colour is this?"],
            ["type": "image_url", "image_url": ["url": .string("data:image/png;base64,\(Self.pngBase64)")]],
            ["type": "image_url", "image_url": ["url": "https://example.com/cat.jpg"]],
        ])
        await b.shutdown()
    }

    @Test func anthropicSendsImageBlocksBeforeTheText() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/messages": [.json(#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Red."}],"stop_reason":"end_turn","usage":{"input_tokens":20,"output_tokens":2}}"#)]])
        let plugins = PluginDir().addManifest("anthropic")
        let b = try plugins.factory().create("anthropic", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
        let r = try await b.complete(Self.request([try ImageInput(bytes: Self.png), .url("https://example.com/cat.jpg")]))
        #expect(r.content == "Red.")
        let body = try #require(try await server.requests().first?.json)
        #expect(body["messages"]?[0]?["content"] == [
            ["type": "image", "source": ["type": "base64", "media_type": "image/png", "data": .string(Self.pngBase64)]],
            ["type": "image", "source": ["type": "url", "url": "https://example.com/cat.jpg"]],
            ["type": "text", "text": "What colour is this?"],
        ])
        await b.shutdown()
    }

    @Test func ollamaSendsTheBytesAndRefusesAURL() async throws {
        let done = #"{"model":"gemma3:1b","created_at":"2026-01-28T18:30:00Z","message":{"role":"assistant","content":"Red."},"done":true,"done_reason":"stop","prompt_eval_count":270,"eval_count":2}"#
        let server = try await OllamaTests.server(chat: [.json(done)])
        let (b, _) = try OllamaTests.backend(server, config: ["model": "gemma3:1b"])
        let r = try await b.complete(Self.request([try ImageInput(bytes: Self.png)]))
        #expect(r.content == "Red.")
        let body = try #require(try await server.requests().first { $0.path == "/api/chat" }?.json)
        #expect(body["messages"]?[0]?["images"] == [.string(Self.pngBase64)])
        #expect(body["messages"]?[0]?["content"] == "What colour is this?")
        await #expect {
            try await b.complete(Self.request([.url("https://example.com/cat.jpg")]))
        } throws: { e in
            let e = e as? ProviderError
            return e?.kind == .unsupportedFeature && e?.message.contains("messages[0].images[0]: Ollama takes an image's bytes, not a URL") == true
        }
        #expect(try await server.requests().filter { $0.path == "/api/chat" }.count == 1)
        await b.shutdown()
    }

    // MARK: The host

    @Test func aProviderWithoutVisionNeverSeesTheImage() async throws {
        let server = try await ServerSlot.make()
        let plugins = PluginDir().addManifest("deepseek")
        let b = try plugins.factory().create("deepseek", config: ["endpoint": .string("\(server.url)/v1"), "api_key": .string(Self.key)])
        let request = Self.request([try ImageInput(bytes: Self.png)])
        for seen in [await Observed.complete(b, request), await Observed.stream(b, request)] {
            let e = try #require(seen.error)
            #expect(e.kind == .unsupportedFeature)
            #expect(e.message.contains("'deepseek' does not take images (messages[0] has 1)"), "\(e.message)")
            #expect(e.message.contains("deepseek.yaml lists no 'vision' capability"), "\(e.message)")
        }
        #expect(try await server.requests().isEmpty)
        // Images on an assistant message: a bad request, whoever the provider.
        var wrong = ModelRequest(messages: [.user("a"), .assistant("b"), .user("c")])
        wrong.messages[1].images = [.url("https://example.com/cat.jpg")]
        let seen = await Observed.complete(b, wrong)
        #expect(seen.error?.kind == .api)
        #expect(seen.error?.message.contains("messages[1] (assistant): only user messages carry images") == true)
        await b.shutdown()
    }

    // MARK: The CLI

    @Test func theCLISendsAnImageFileAndNamesABadOne() async throws {
        let server = try await ServerSlot.make()
        try await server.script(["POST /v1/chat/completions": [.json(#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Red."},"finish_reason":"stop"}]}"#)]])
        let dir = TempDir("descartes-image-cli")
        let png = dir.file("red.png")
        try FileSystem.writeAtomically(png, Self.png)
        let plugins = PluginDir().addManifest("openai")
        let env = ["OPENAI_API_KEY": Self.key, "OPENAI_ENDPOINT": "\(server.url)/v1", "DESCARTES_PLUGIN_PATH": plugins.path, "HOME": "/nonexistent"]
        let ok = await Proc.descartes(["complete", "-p", "openai", "--retries", "0", "--image", png, "What colour?"], env: env)
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout.contains("Red."))
        let body = try #require(try await server.requests().first?.json)
        #expect(body["messages"]?[0]?["content"]?[1]?["image_url"]?["url"] == .string("data:image/png;base64,\(Self.pngBase64)"))

        let text = dir.file("notes.txt")
        try FileSystem.writeAtomically(text, Array("hello".utf8))
        let bad = await Proc.descartes(["complete", "-p", "openai", "--image", text, "What colour?"], env: env)
        #expect(bad.status == 65)
        #expect(bad.stderr.contains("--image \(text): not a PNG, JPEG, GIF or WebP image"), "\(bad.stderr)")
        let missing = await Proc.descartes(["complete", "-p", "openai", "--image", dir.file("absent.png"), "What colour?"], env: env)
        #expect(missing.status == 65)
        #expect(missing.stderr.contains("--image \(dir.file("absent.png"))"), "\(missing.stderr)")
        #expect(try await server.requests().count == 1)
    }
}
