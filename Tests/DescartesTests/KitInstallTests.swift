import Descartes
import Testing
import DescartesSupport

/// The Swift plugin kit `make install` installs (share/descartes/swift/descartes,
/// issue 20 item 7) is the repository's: the same sources, and a manifest
/// (support/swift-kit/Package.swift) declaring the kit's targets exactly as
/// the repository's Package.swift does. Building a plugin against it is
/// PluginKitDocTests.theSwiftWalkthroughWorksAsWritten (minutes: run with
/// DESCARTES_SLOW_TESTS=1).
@Suite struct KitInstallTests {
    static let targets = ["CDescartesPlugin", "CCurl", "CCurlShim", "CProcessShim", "DescartesCore", "DescartesSupport", "DescartesPluginKit"]

    /// Every file under `dir`, relative to it, sorted.
    static func files(_ dir: String, _ base: String = "") throws -> [String] {
        var out: [String] = []
        for name in try FileSystem.list(FileSystem.join(dir, base)).sorted() {
            let rel = base.isEmpty ? name : "\(base)/\(name)"
            if FileSystem.isDirectory(FileSystem.join(dir, rel)) { out += try files(dir, rel) } else { out.append(rel) }
        }
        return out
    }

    /// `swift package dump-package` of the package at `dir`: its targets by name.
    static func targets(of dir: String) async throws -> [String: JSONValue] {
        let scratch = TempDir("kit-dump")
        let r = await Proc.run(["swift", "package", "--package-path", dir, "--scratch-path", scratch.path, "dump-package"], timeout: .seconds(180))
        #expect(r.status == 0, "\(dir): \(r)")
        var out: [String: JSONValue] = [:]
        for t in try JSONValue.parse(r.stdout)["targets"]?.arrayValue ?? [] {
            if let name = t["name"]?.stringValue { out[name] = t }
        }
        return out
    }

    @Test(.enabled(if: TestEnv.prefix != nil, "needs the prefix `make test` installs into"))
    func theInstalledKitIsTheRepositorysKit() async throws {
        let prefix = try #require(TestEnv.prefix)
        let kit = "\(prefix)/share/descartes/swift/descartes"
        let pc = await Proc.run(["pkg-config", "--variable=swiftkitdir", "descartes-plugin"], env: ["PKG_CONFIG_PATH": "\(prefix)/lib/pkgconfig", "PATH": "/usr/bin:/bin"])
        #expect(pc.stdout == "\(kit)\n", "\(pc)")
        #expect(try FileSystem.list(kit).sorted() == ["Package.swift", "Sources"])
        #expect(try FileSystem.list("\(kit)/Sources").sorted() == Self.targets.sorted())
        #expect(
            try FileSystem.readText("\(kit)/Package.swift", limit: 1 << 20)
                == FileSystem.readText(FileSystem.join(TestEnv.root, "support/swift-kit/Package.swift"), limit: 1 << 20))
        for target in Self.targets {
            let installed = "\(kit)/Sources/\(target)", source = FileSystem.join(TestEnv.root, "Sources/\(target)")
            let names = try Self.files(installed)
            #expect(names == (try Self.files(source)), "\(target)")
            for name in names {
                #expect(
                    try FileSystem.readText("\(installed)/\(name)", limit: 1 << 22) == FileSystem.readText("\(source)/\(name)", limit: 1 << 22),
                    "\(target)/\(name) differs from the checkout's")
            }
        }
        // Declared alike: the kit's targets as SwiftPM reads both manifests.
        let mine = try await Self.targets(of: kit)
        let repository = try await Self.targets(of: TestEnv.root)
        #expect(Set(mine.keys) == Set(Self.targets))
        for (name, target) in mine {
            #expect(target == repository[name], "target \(name) is declared differently in support/swift-kit/Package.swift and Package.swift")
        }
    }
}
