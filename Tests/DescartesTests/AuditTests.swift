import Descartes
import Glibc
import Testing
import DescartesSupport

/// The audit log: one owner-only JSON line per request, never a secret;
/// totals per provider when read back.
@Suite struct AuditTests {
    let plugins = PluginDir().addScripted().addEcho()

    func settings(_ dir: TempDir, prompts: Bool = false, replies: Bool = false) -> AuditSettings {
        AuditSettings(file: dir.file("state/descartes/audit.jsonl"), enabled: true, prompts: prompts, replies: replies)
    }

    func lines(_ file: String) throws -> [JSONValue] {
        try FileSystem.readText(file, limit: 1 << 20).split(separator: "\n").map { try JSONValue.parse(String($0)) }
    }

    @Test func everyRequestAppendsOneLine() async throws {
        let dir = TempDir()
        let log = AuditLog(settings(dir))
        let factory = plugins.factory()
        let echo = log.wrap(try factory.create("echo"), plugin: "echo")
        _ = try await echo.complete(ModelRequest(prompt: "one two three"))
        for try await _ in echo.stream(ModelRequest(prompt: "streamed words")) {}
        let scripted = log.wrap(try factory.create("scripted", instance: "lab"), plugin: "scripted")
        _ = try await scripted.complete(.script(["text:hi"], prompt: "secret prompt text"))
        let failed = await providerError { _ = try await scripted.complete(.script(["error:rate_limited:slow down"])) }
        #expect(failed?.kind == .rateLimited)

        let file = log.settings.file
        let info = try #require(FileSystem.info(file))
        #expect(info.mode & 0o777 == 0o600, "mode \(String(info.mode & 0o777, radix: 8))")
        #expect(FileSystem.info(FileSystem.directory(of: file))!.mode & 0o777 == 0o700)
        let records = try lines(file)
        #expect(records.count == 4)
        #expect(records.map { $0["operation"]?.stringValue ?? "" } == ["complete", "stream", "complete", "complete"])
        #expect(records[0]["instance"] == "echo")
        #expect(records[0]["plugin"] == "echo")
        #expect(records[0]["model"] == "echo-1")
        #expect(records[0]["outcome"] == "ok")
        #expect(records[0]["tokens"]?["output"] == 3)
        #expect(records[0]["cost_usd"]?.doubleValue == 0)
        #expect(records[0]["chain"] == ["echo"])
        #expect(records[0]["duration_ms"]?.intValue != nil)
        #expect(records[0]["time"]?.stringValue?.count == 24, "RFC 3339 with milliseconds: \(records[0]["time"] ?? nil)")
        #expect(records[2]["instance"] == "lab")
        #expect(records[2]["plugin"] == "scripted")
        // The scripted plugin counts the prompt's three words as input; the
        // manifest prices input at 1 USD per million tokens.
        #expect(records[2]["tokens"]?["input"] == 3)
        #expect(records[2]["cost_usd"]?.doubleValue == 3.0 / 1_000_000)
        #expect(records[3]["outcome"] == "error")
        #expect(records[3]["error_kind"] == "rate_limited")
        #expect(records[3]["status"] == 429)
        // Prompts and replies only when asked for.
        let text = try FileSystem.readText(file, limit: 1 << 20)
        #expect(!text.contains("secret prompt text"))
        #expect(!text.contains("\"reply\""))
    }

    @Test func promptsAndRepliesWhenConfiguredButNeverASecret() async throws {
        let dir = TempDir()
        let factory = plugins.factory()
        let log = AuditLog(settings(dir, prompts: true, replies: true), logSink: factory.logSink)
        factory.redactor.register("sk-audit-test-key-0123456789")
        let echo = log.wrap(try factory.create("echo"), plugin: "echo")
        _ = try await echo.complete(ModelRequest(prompt: "my key is sk-audit-test-key-0123456789 ok"))
        let records = try lines(log.settings.file)
        #expect(records[0]["prompt"]?[0]?["role"] == "user")
        #expect(records[0]["prompt"]?[0]?["content"] == "my key is [REDACTED] ok")
        #expect(records[0]["reply"] == "my key is [REDACTED] ok")
        #expect(try !FileSystem.readText(log.settings.file, limit: 1 << 20).contains("sk-audit-test-key"))
    }

    @Test func anExistingFileIsNarrowedAndAForeignOneRefused() throws {
        let dir = TempDir()
        let s = settings(dir)
        try FileSystem.makeDirectories(FileSystem.directory(of: s.file))
        dir.write("state/descartes/audit.jsonl", "", mode: 0o644)
        chmod(s.file, 0o644)
        try AuditLog(s).append(["instance": "x"])
        #expect(FileSystem.info(s.file)!.mode & 0o777 == 0o600)
        if geteuid() == 0 {
            chown(s.file, 65534, 65534)
            #expect(throws: FileSystemError.self) { try AuditLog(s).append(["instance": "x"]) }
        }
    }

    @Test func cancelledStreamsAreRecorded() async throws {
        let dir = TempDir()
        let log = AuditLog(settings(dir))
        let scripted = log.wrap(try plugins.factory().create("scripted"), plugin: "scripted")
        for try await event in scripted.stream(.script(["text:first", "hang"])) {
            if case .textDelta = event { break }
        }
        // The record is written when the cancelled stream winds down.
        var records: [JSONValue] = []
        for _ in 0..<200 {
            records = (try? lines(log.settings.file)) ?? []
            if !records.isEmpty { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(records.count == 1)
        #expect(records.first?["error_kind"] == "cancelled")
    }

    @Test func theSectionIsReadWithPositions() throws {
        let root = try #require(try YAML.parse("audit:\n  enabled: yes please\n  file: logs/a.jsonl\n  prompt: true\n", file: "/cfg/providers.yaml"))
        guard case .failure(let e) = AuditSettings.read(root["audit"]) else { Issue.record("accepted"); return }
        #expect(e.problems.map(\.description) == [
            "/cfg/providers.yaml:4:3: unknown key of 'audit' 'prompt' (did you mean 'prompts'?)",
            "/cfg/providers.yaml:2:12: 'enabled' must be true or false, got string 'yes please'",
        ])
        let ok = try #require(try YAML.parse("audit: {enabled: true, file: logs/a.jsonl}", file: "/cfg/providers.yaml"))
        let s = try AuditSettings.read(ok["audit"]).get()
        #expect(s.enabled)
        #expect(s.file == "/cfg/logs/a.jsonl")
        #expect(try AuditSettings.read(nil, environment: ["XDG_STATE_HOME": "/state"]).get().file == "/state/descartes/audit.jsonl")
    }
}
