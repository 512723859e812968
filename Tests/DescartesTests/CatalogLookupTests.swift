import Testing
import DescartesSupport
import Descartes

/// A catalog made by `discover()` looks one provider up without reading and
/// checking every manifest (what a one-shot `descartes complete -p NAME`
/// needs), and answers exactly as full discovery does.
@Suite struct CatalogLookupTests {
    func manifest(_ provider: String, library: String = "libdescartes-echo.so", extra: String = "") -> String {
        """
        manifest_version: 1
        provider: \(provider)
        version: 0.0.1
        library: \(library)
        factory: echo
        abi: 1
        mode: local
        \(extra)
        """
    }

    func search(_ dirs: PluginDir...) -> PluginSearch {
        PluginSearch(directories: dirs.enumerated().map { .init(path: $0.element.path, origin: "test \($0.offset)") })
    }

    /// The lookup's answer and full discovery's, side by side.
    func bothAnswers(_ provider: String, _ s: PluginSearch) -> (lazy: CatalogEntry?, full: CatalogEntry?, lookedUpAlone: Bool) {
        let lazy = PluginCatalog.discovering(s)
        let quick = lazy.entry(for: provider)
        let alone = !lazy.isDiscovered
        return (quick, PluginCatalog.discover(s).entry(for: provider), alone)
    }

    @Test func anAvailableProviderIsFoundWithoutDiscoveringTheRest() throws {
        let first = PluginDir()
        // Manifests before the one asked for, in the same and an earlier
        // directory: other providers, broken ones, one of the same
        // provider that is invalid (so not its entry), one whose provider
        // is not a plain scalar.
        first.dir.write("aaa.yaml", manifest("other"))
        first.dir.write("broken.yaml", "manifest_version: 1\nprovider: [unclosed\n")
        first.dir.write("echo-invalid.yaml", manifest("echo", extra: "mode_typo: local"))
        first.dir.write("listed.yaml", "provider: [echo]\n")
        let second = PluginDir().addEcho()
        second.dir.write("zzz.yaml", manifest("echo"))
        let (quick, full, alone) = bothAnswers("echo", search(first, second))
        let q = try #require(quick)
        let f = try #require(full)
        #expect(alone, "the lookup ran full discovery")
        #expect(q.file == second.dir.file("echo.yaml"))
        #expect(q.file == f.file)
        #expect(q.status == .available && f.status == .available)
        #expect(q.manifest == f.manifest)
        #expect(q.directory == f.directory)
    }

    @Test func theFirstManifestOfAProviderWinsAsInFullDiscovery() throws {
        let first = PluginDir().addEcho()
        let second = PluginDir().addEcho()
        let (quick, full, alone) = bothAnswers("echo", search(first, second))
        #expect(alone)
        #expect(try #require(quick).file == first.dir.file("echo.yaml"))
        #expect(quick?.file == full?.file)
    }

    @Test func aProviderThatIsNotAvailableIsAnsweredByFullDiscovery() throws {
        let dir = PluginDir().addEcho()
        dir.dir.write("gone.yaml", manifest("gone", library: "libdescartes-gone.so"))
        let lazy = PluginCatalog.discovering(search(dir))
        let gone = try #require(lazy.entry(for: "gone"))
        #expect(gone.status == .libraryMissing)
        #expect(lazy.isDiscovered)
        #expect(lazy.entry(for: "nothing") == nil)
        #expect(lazy.availableProviders == ["echo"])
        // After discovery the catalog answers from its entries, as before.
        #expect(lazy.entry(for: "echo")?.file == dir.dir.file("echo.yaml"))
        #expect(lazy.entries.count == 2)
    }

    @Test func theCatalogLoadsAndAnswersWhatTheLookupFound() async throws {
        let dir = PluginDir().addEcho()
        dir.dir.write("aaa.yaml", manifest("other"))
        let catalog = PluginCatalog.discovering(search(dir))
        let backend = try ProviderFactory(catalog: catalog, environment: [:]).create("echo")
        let r = try await backend.complete(ModelRequest(prompt: "one manifest read"))
        #expect(r.content == "one manifest read")
        #expect(!catalog.isDiscovered, "creating a backend ran full discovery")
        await backend.shutdown()
    }

    @Test func theTopLevelScalarIsReadOnlyWhenPlain() {
        func read(_ text: String) -> String? {
            YAML.topLevelScalar("provider", in: Array(text.utf8))
        }
        #expect(read("manifest_version: 1\nprovider: openai\nversion: 1\n") == "openai")
        #expect(read("provider: 'quoted-name'\n") == "quoted-name")
        #expect(read("config:\n  provider: inner\n  deeper: {provider: x}\nprovider: outer\n") == "outer")
        #expect(read("models: [a, {provider: b}]\nprovider: after-a-list\n") == "after-a-list")
        #expect(read("config:\n  provider: inner\n") == nil)
        #expect(read("provider: [a, b]\n") == nil)
        #expect(read("base: &p x\nprovider: *p\n") == nil)
        #expect(read("- provider: x\n") == nil)
        #expect(read("version: [unclosed\nprovider: x\n") == nil)
        #expect(read("") == nil)
        // libyaml is fed 512 bytes at a time: a key further on, after text
        // whose multi-byte characters straddle the pieces.
        let long = "description: \"" + String(repeating: "é🚀x", count: 300) + "\"\nprovider: far-down\n"
        #expect(long.utf8.count > 2048)
        #expect(read(long) == "far-down")
        #expect(read("description: \"" + String(repeating: "é🚀x", count: 300) + "\n") == nil)
    }
}
