import Descartes
import DescartesSupport
import Testing

/// A library user's SwiftPM build finds plugins with no environment
/// variable (issue 17): the build's own plugins are searched when nothing is
/// installed, and the search order is the documented one.
@Suite struct SwiftPMDiscoveryTests {
    let installed = PluginDir().addEcho()

    @Test func thisPackagesBuildFindsTheLibrariesItMade() throws {
        // This test binary is a SwiftPM build of this package.
        let exe = try #require(FileSystem.executablePath())
        let build = try #require(PluginSearch.swiftPMBuild(executable: exe))
        #expect(FileSystem.realPath(build.path) == FileSystem.realPath(FileSystem.join(TestEnv.root, "manifests")))
        let catalog = PluginCatalog.discover(PluginSearch(directories: [build]))
        // libdescartes-openai.so is a product of `swift build`; the C echo
        // plugin is built by make only, so its manifest is skipped.
        #expect(catalog.availableProviders.contains("openai"), "\(catalog.trace)")
        #expect(catalog.availableProviders.contains("groq"), "\(catalog.trace)")
        #expect(!catalog.availableProviders.contains("echo"))
        #expect(catalog.trace.contains { $0.contains("echo.yaml: skipped (libdescartes-echo.so was not built)") }, "\(catalog.trace)")
        let openai = catalog.entries.first { $0.manifest?.provider == "openai" }?.manifest
        #expect(openai?.libraryPath == FileSystem.join(FileSystem.directory(of: exe), "libdescartes-openai.so"))
    }

    @Test func aPackageDependingOnDescartesFindsItsCheckoutWhenNothingIsInstalled() async throws {
        let t = TempDir("spm-app")
        let checkout = "app/.build/checkouts/descartes"
        t.write("\(checkout)/Sources/CDescartesPlugin/include/descartes/plugin.h", "")
        t.write("\(checkout)/manifests/echo.yaml", try FileSystem.readText(FileSystem.join(TestEnv.root, "manifests/echo.yaml"), limit: 1 << 20))
        t.write("\(checkout)/manifests/gone.yaml", "manifest_version: 1\nprovider: gone\nversion: 1.0.0\nlibrary: libdescartes-gone.so\nabi: 1\nmode: api\n")
        let bin = "app/.build/x86_64-unknown-linux-gnu/debug"
        let exe = t.write("\(bin)/app", "")
        t.symlink(CCompiler.echoLibrary, "\(bin)/libdescartes-echo.so")
        let build = try #require(PluginSearch.swiftPMBuild(executable: exe))
        #expect(build.path == t.file("\(checkout)/manifests") && build.libraries == t.file(bin))

        let nothing = PluginCatalog.discover(PluginSearch(directories: [.init(path: t.file("none"), origin: "test")]))
        let catalog = nothing.withSwiftPMBuild(executable: exe)
        #expect(catalog.availableProviders == ["echo"], "\(catalog.trace)")
        let text = try await ProviderFactory(catalog: catalog).withBackend("echo") { backend in
            try await backend.complete("found without DESCARTES_PLUGIN_PATH").text
        }
        #expect(text == "found without DESCARTES_PLUGIN_PATH")

        // Something installed: the build is not searched.
        let some = PluginCatalog.discover(PluginSearch(directories: [.init(path: installed.path, origin: "test")]))
        #expect(some.withSwiftPMBuild(executable: exe).search.directories.count == 1)
        // Not a SwiftPM build.
        #expect(PluginSearch.swiftPMBuild(executable: "/usr/local/bin/descartes") == nil)
    }

    @Test func theSearchOrderIncludesTheUserInstallPrefix() {
        let s = PluginSearch.standard(environment: ["HOME": "/home/u"], executable: "/opt/x/bin/app", elevated: false)
        #expect(s.directories.map(\.path) == [
            "/home/u/.local/share/descartes/plugins", "/home/u/.local/lib/descartes/plugins", "/opt/x/lib/descartes/plugins",
            "/usr/local/lib/descartes/plugins", "/usr/lib/descartes/plugins",
        ])
    }
}
