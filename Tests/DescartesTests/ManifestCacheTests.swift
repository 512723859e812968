import Glibc
import Testing
import DescartesSupport
import Descartes

/// The manifest cache (`ManifestCache`) answers a manifest only while its
/// file is the one it read: any change of content, even of the same size
/// with the modification time set back, a file renamed over it, a damaged
/// cache or another executable's makes it read the file again.
@Suite struct ManifestCacheTests {
    static let text = """
        manifest_version: 1
        provider: cached
        version: 0.0.1
        description: a manifest read through the cache
        library: libdescartes-echo.so
        factory: echo
        abi: 1
        mode: local
        capabilities: [stream, tools]
        default_model: small
        models:
          - id: small
            context: 4096
            max_output: 1024
            price: {input: 1.5, output: 2.0, cache_read: 0.1}
            capabilities: [tools]
          - id: bare
        config:
          api_key: {type: string, required: true, secret: true, env: [CACHED_KEY, OTHER_KEY]}
          retries: {type: integer, default: 3, description: how many}
          ratio: {type: number, default: 0.25}
          stop: {type: list, default: [a, "b"]}
          headers: {type: map, default: {x-a: "1", x-b: two}}
          verbose: {type: boolean, default: false}
        conformance: spec.yaml
        """

    /// Files written now are "racily clean": wait until their times are
    /// more than a second old, so the cache may keep them.
    func settle() { usleep(1_100_000) }

    func setModified(_ path: String, _ id: FileSystem.Identity) {
        var times = [
            timespec(tv_sec: Int(id.modified / 1_000_000_000), tv_nsec: Int(id.modified % 1_000_000_000)),
            timespec(tv_sec: Int(id.modified / 1_000_000_000), tv_nsec: Int(id.modified % 1_000_000_000)),
        ]
        #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)
    }

    @Test func answersOnlyWhileTheFileIsTheOneItRead() throws {
        let dir = TempDir("descartes-manifest-cache")
        let good = dir.write("cached.yaml", Self.text)
        let bad = dir.write("bad.yaml", "manifest_version: 1\nprovider: bad\nversin: 1\n")
        let cacheFile = dir.file("cache/manifests.cache")
        settle()
        let parsed = try PluginManifest.load(path: good)

        let first = ManifestCache(path: cacheFile)
        #expect(try first.load(path: good) == parsed)
        #expect(throws: SourceError.self) { try first.load(path: bad) }
        first.save()
        #expect(first.misses == 2 && first.hits == 0)
        #expect(FileSystem.info(cacheFile).map { $0.mode & 0o777 } == 0o600)

        // Read from the cache: the same manifest; the invalid one is read
        // (never kept) and fails with the same problems, file and line.
        let second = ManifestCache(path: cacheFile)
        #expect(try second.load(path: good) == parsed)
        #expect(second.declaredProvider(path: good) == "cached")
        var problems: [SourceProblem] = []
        do { _ = try second.load(path: bad) } catch { problems = error.problems }
        do { _ = try PluginManifest.load(path: bad) } catch { #expect(problems == error.problems) }
        #expect(!problems.isEmpty && problems[0].location.file == bad)
        #expect(second.hits == 1 && second.misses == 1)

        // The same size, the modification time set back: the status-change
        // time tells.
        let before = try #require(FileSystem.identity(good))
        dir.write("cached.yaml", Self.text.replacingOccurrences(of: "version: 0.0.1", with: "version: 0.0.2"))
        setModified(good, before)
        let after = try #require(FileSystem.identity(good))
        #expect(after.size == before.size && after.modified == before.modified && after.inode == before.inode)
        let third = ManifestCache(path: cacheFile)
        #expect(try third.load(path: good).version == "0.0.2")
        #expect(third.declaredProvider(path: good) == nil)
        #expect(third.hits == 0 && third.misses == 1)
        third.save()

        // Kept once settled; then a file renamed over it.
        settle()
        let fourth = ManifestCache(path: cacheFile)
        #expect(try fourth.load(path: good).version == "0.0.2")
        fourth.save()
        #expect(ManifestCache(path: cacheFile).declaredProvider(path: good) == "cached")
        let other = dir.write("other.tmp", Self.text.replacingOccurrences(of: "provider: cached", with: "provider: renamed"))
        #expect(rename(other, good) == 0)
        let fifth = ManifestCache(path: cacheFile)
        #expect(try fifth.load(path: good).provider == "renamed")
        #expect(fifth.hits == 0 && fifth.misses == 1)
        // Freshly written: read, and not kept (racily clean).
        fifth.save()
        let sixth = ManifestCache(path: cacheFile)
        #expect(try sixth.load(path: good).provider == "renamed")
        #expect(sixth.hits == 0 && sixth.misses == 1)
    }

    @Test func aDamagedCacheOrAnotherExecutablesIsIgnored() throws {
        let dir = TempDir("descartes-manifest-cache")
        let good = dir.write("cached.yaml", Self.text)
        let cacheFile = dir.file("manifests.cache")
        settle()
        let first = ManifestCache(path: cacheFile)
        let parsed = try first.load(path: good)
        first.save()
        #expect(ManifestCache(path: cacheFile).declaredProvider(path: good) == "cached")
        // Another executable's cache.
        let other = ManifestCache(path: cacheFile, host: [1, 2, 3])
        #expect(other.declaredProvider(path: good) == nil)
        #expect(try other.load(path: good) == parsed)
        #expect(other.hits == 0)
        // Every truncation of a valid cache is refused, none crashes.
        first.save()
        let whole = try FileSystem.readBytes(cacheFile, limit: 1 << 20)
        for cut in stride(from: 0, to: whole.count, by: max(1, whole.count / 97)) {
            try FileSystem.writeAtomically(cacheFile, Array(whole[0..<cut]), mode: 0o600)
            let c = ManifestCache(path: cacheFile)
            #expect(c.declaredProvider(path: good) == nil)
            #expect(try c.load(path: good) == parsed)
        }
        // Writable by others: not trusted.
        try FileSystem.writeAtomically(cacheFile, whole, mode: 0o600)
        #expect(ManifestCache(path: cacheFile).declaredProvider(path: good) == "cached")
        chmod(cacheFile, 0o666)
        #expect(ManifestCache(path: cacheFile).declaredProvider(path: good) == nil)
    }

    @Test func discoveryThroughTheCacheFindsWhatItFindsWithout() throws {
        let plugins = PluginDir()
        plugins.dir.write("one.yaml", Self.text.replacingOccurrences(of: "provider: cached", with: "provider: one"))
        plugins.dir.write("two.yaml", Self.text.replacingOccurrences(of: "provider: cached", with: "provider: one"))
        plugins.dir.write("three.yaml", "provider: [not, a, scalar]\n")
        plugins.dir.write("four.yaml", Self.text.replacingOccurrences(of: "provider: cached", with: "provider: four"))
        let cacheDir = TempDir("descartes-manifest-cache")
        let cacheFile = FileSystem.join(cacheDir.path, "manifests.cache")
        settle()
        let search = PluginSearch(directories: [.init(path: plugins.path, origin: "test")])
        func summary(_ c: PluginCatalog) -> [String] {
            c.entries.map { "\($0.file) \($0.status.label) \($0.reason ?? "") \(String(describing: $0.manifest))" }
        }
        let plain = summary(PluginCatalog.discover(search, policy: .none))
        let writing = ManifestCache(path: cacheFile)
        #expect(summary(PluginCatalog.discover(search, policy: .none, cache: writing)) == plain)
        let reading = ManifestCache(path: cacheFile)
        #expect(summary(PluginCatalog.discover(search, policy: .none, cache: reading)) == plain)
        #expect(writing.misses == 4 && reading.hits == 3 && reading.misses == 1)
    }
}
