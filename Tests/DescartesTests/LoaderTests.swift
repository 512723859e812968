import Descartes
import Testing
import DescartesSupport

/// Every way a plugin can be broken is skipped with a reason naming its
/// file, and the other plugins keep working.
@Suite struct LoaderTests {
    /// A directory with the echo plugin (healthy) plus whatever a test adds.
    func dirWithEcho() -> PluginDir { PluginDir().addEcho() }

    func fixture(_ name: String, in dir: PluginDir) async -> String {
        let out = dir.dir.file("libdescartes-\(name).so")
        let r = await CCompiler.sharedLibrary([FileSystem.join(TestEnv.root, "Tests/Fixtures/plugins/\(name).c")], output: out)
        #expect(r.status == 0, "\(r.stderr)")
        return out
    }

    func manifest(_ provider: String, library: String, abi: Int = 1, extra: String = "") -> String {
        """
        manifest_version: 1
        provider: \(provider)
        version: 0.0.1
        library: \(library)
        abi: \(abi)
        mode: local
        \(extra)
        """
    }

    /// The echo plugin still loads and answers in this directory.
    func echoStillWorks(_ dir: PluginDir, sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws {
        let catalog = PluginCatalog.discover(PluginSearch(directories: [.init(path: dir.path, origin: "test")]))
        #expect(catalog.entry(for: "echo")?.status == .available, sourceLocation: sourceLocation)
        let backend = try ProviderFactory(catalog: catalog, environment: [:]).create("echo")
        let r = try await backend.complete(ModelRequest(prompt: "still here"))
        #expect(r.content == "still here", sourceLocation: sourceLocation)
    }

    func entry(_ dir: PluginDir, file: String) -> CatalogEntry? {
        PluginCatalog.discover(PluginSearch(directories: [.init(path: dir.path, origin: "test")])).entries.first { $0.file.hasSuffix("/" + file) }
    }

    func createError(_ dir: PluginDir, _ provider: String) -> ProviderError? {
        do {
            _ = try dir.factory().create(provider)
            return nil
        } catch { return error }
    }

    @Test func invalidYAMLIsReportedWithLineAndColumn() async throws {
        let dir = dirWithEcho()
        dir.dir.write("broken.yaml", "manifest_version: 1\nprovider: [unclosed\n")
        let e = try #require(entry(dir, file: "broken.yaml"))
        #expect(e.status == .invalid)
        #expect(e.reason?.contains("broken.yaml:") == true)
        let loc = try #require(e.problems.first?.location)
        #expect(loc.line >= 2 && loc.column >= 1)
        try await echoStillWorks(dir)
    }

    @Test func missingAndMistypedFieldsAreNamed() async throws {
        let dir = dirWithEcho()
        dir.dir.write("partial.yaml", "manifest_version: 1\nprovider: partial\nversion: 1.0\nabi: [1]\nmode: api\n")
        let e = try #require(entry(dir, file: "partial.yaml"))
        #expect(e.status == .invalid)
        #expect(e.problems.map(\.message).contains("missing required key 'library'"))
        #expect(e.problems.contains { $0.message.hasPrefix("'abi' must be an integer") && $0.location.line == 4 })
        try await echoStillWorks(dir)
    }

    @Test func unknownManifestVersionIsIncompatible() async throws {
        let dir = dirWithEcho()
        dir.dir.write("future.yaml", "manifest_version: 7\nprovider: future\n")
        let e = try #require(entry(dir, file: "future.yaml"))
        guard case .incompatible(let why) = e.status else { Issue.record("status \(e.status)"); return }
        #expect(why.contains("future.yaml:1:19: unknown manifest_version 7"))
        try await echoStillWorks(dir)
    }

    @Test func unknownABIVersionIsIncompatible() async throws {
        let dir = dirWithEcho()
        dir.dir.write("abi2.yaml", manifest("abi2", library: CCompiler.echoLibrary, abi: 2, extra: "factory: echo"))
        let e = try #require(entry(dir, file: "abi2.yaml"))
        #expect(e.status == .incompatible("requires plugin ABI 2; this host speaks 1...1"))
        #expect(createError(dir, "abi2")?.kind == .initialization)
        try await echoStillWorks(dir)
    }

    @Test func missingLibraryIsNamed() async throws {
        let dir = dirWithEcho()
        dir.dir.write("ghost.yaml", manifest("ghost", library: "libdescartes-ghost.so"))
        let e = try #require(entry(dir, file: "ghost.yaml"))
        #expect(e.status == .libraryMissing)
        #expect(e.reason == "\(dir.path)/libdescartes-ghost.so: no such file")
        let err = try #require(createError(dir, "ghost"))
        #expect(err.message.contains("libdescartes-ghost.so"))
        try await echoStillWorks(dir)
    }

    @Test func notASharedObjectIsRefusedByTheLoader() async throws {
        let dir = dirWithEcho()
        dir.dir.write("libdescartes-text.so", "this is not an ELF file\n")
        dir.dir.write("text.yaml", manifest("text", library: "libdescartes-text.so"))
        let err = try #require(createError(dir, "text"))
        #expect(err.kind == .initialization)
        #expect(err.message.contains("\(dir.path)/libdescartes-text.so: not a loadable shared object"))
        try await echoStillWorks(dir)
    }

    @Test func missingEntrySymbolIsNamed() async throws {
        let dir = dirWithEcho()
        _ = await fixture("noentry", in: dir)
        dir.dir.write("noentry.yaml", manifest("noentry", library: "libdescartes-noentry.so"))
        let err = try #require(createError(dir, "noentry"))
        #expect(err.message.contains("libdescartes-noentry.so: no entry symbol: the library does not export 'descartes_plugin_entry'"))
        try await echoStillWorks(dir)
    }

    @Test func refusedNegotiationIsNamed() async throws {
        let dir = dirWithEcho()
        _ = await fixture("refuse", in: dir)
        dir.dir.write("refuse.yaml", manifest("refuse", library: "libdescartes-refuse.so"))
        let err = try #require(createError(dir, "refuse"))
        #expect(err.message.contains("libdescartes-refuse.so: ABI negotiation refused"))
        try await echoStillWorks(dir)
    }

    @Test func aLibraryAnsweringANewerABIIsRefused() async throws {
        let dir = dirWithEcho()
        _ = await fixture("abi99", in: dir)
        dir.dir.write("abi99.yaml", manifest("abi99", library: "libdescartes-abi99.so"))
        let err = try #require(createError(dir, "abi99"))
        #expect(err.message.contains("libdescartes-abi99.so: ABI mismatch: the library answered ABI version 99 to an offer of 1"))
        try await echoStillWorks(dir)
    }

    @Test func aMalformedLibraryDescriptionIsRefused() async throws {
        let dir = dirWithEcho()
        _ = await fixture("badlib", in: dir)
        dir.dir.write("badlib.yaml", manifest("badlib", library: "libdescartes-badlib.so"))
        let err = try #require(createError(dir, "badlib"))
        #expect(err.message.contains("libdescartes-badlib.so: malformed library description: factory_count is 3 but factories is NULL"))
        try await echoStillWorks(dir)
    }

    @Test func anUnknownFactoryListsWhatTheLibraryHas() async throws {
        let dir = dirWithEcho()
        dir.dir.write("wrongfactory.yaml", manifest("wrongfactory", library: CCompiler.echoLibrary, extra: "factory: nope"))
        let err = try #require(createError(dir, "wrongfactory"))
        #expect(err.message.contains("unknown factory 'nope'"))
        #expect(err.message.contains("the library registers: echo"))
        try await echoStillWorks(dir)
    }

    @Test func aPluginRejectingItsConfigurationSaysWhy() async throws {
        let dir = dirWithEcho().addScripted()
        let err = try #require(await providerError { _ = try dir.factory().create("scripted", config: ["greeting": "reject"]) })
        #expect(err.kind == .config)
        #expect(err.message.contains("libdescartes-scripted.so: create failed: key 'greeting': the value 'reject' is rejected by the plugin"))
        let echoErr = try #require(await providerError { _ = try dir.factory().create("echo", config: ["delay_ms": 99999]) })
        #expect(echoErr.message.contains("key 'delay_ms' must be between 0 and 60000"))
        try await echoStillWorks(dir)
    }

    @Test func aPluginFailingToInitializeReportsIt() async throws {
        let dir = dirWithEcho().addScripted()
        let backend = try dir.factory().create("scripted", config: ["fail_init": "the model server is not reachable"])
        let err = try #require(await providerError { _ = try await backend.complete(.script(["words"])) })
        #expect(err.kind == .initialization)
        #expect(err.message == "the model server is not reachable")
        try await echoStillWorks(dir)
    }

    @Test func aShadowedManifestIsReported() throws {
        let first = PluginDir().addEcho()
        let second = PluginDir().addEcho()
        let catalog = PluginCatalog.discover(PluginSearch(directories: [.init(path: first.path, origin: "a"), .init(path: second.path, origin: "b")]))
        #expect(catalog.entries.count == 2)
        #expect(catalog.entries[1].status == .shadowed(by: first.dir.file("echo.yaml")))
        #expect(catalog.entry(for: "echo")?.file == first.dir.file("echo.yaml"))
    }

    @Test func theSearchOrderIsDocumentedAndNeverTheCurrentDirectory() {
        let s = PluginSearch.standard(
            environment: ["DESCARTES_PLUGIN_PATH": "/opt/a:relative/b::/opt/c", "HOME": "/home/u"], executable: "/usr/local/bin/descartes", elevated: false)
        #expect(s.directories.map(\.path) == [
            "/opt/a", "/opt/c", "/home/u/.local/share/descartes/plugins", "/home/u/.local/lib/descartes/plugins",
            "/usr/local/lib/descartes/plugins", "/usr/lib/descartes/plugins",
        ])
        #expect(s.notes.contains { $0.contains("ignoring relative entry 'relative/b'") })
        let elevated = PluginSearch.standard(environment: ["DESCARTES_PLUGIN_PATH": "/opt/a", "HOME": "/home/u"], executable: "/opt/x/bin/descartes", elevated: true)
        #expect(elevated.directories.map(\.path) == ["/opt/x/lib/descartes/plugins", "/usr/local/lib/descartes/plugins", "/usr/lib/descartes/plugins"])
    }
}
