import Descartes
import Testing
import DescartesSupport

/// The ABI header is the contract: it must compile cleanly as C and C++ with
/// every warning an error, with nothing but the header itself.
@Suite struct HeaderTests {
    static let program = """
        #include <descartes/plugin.h>
        static const descartes_library_t *probe(uint32_t v, const descartes_host_t *h) {
            return descartes_plugin_entry(v, h);
        }
        int main(void) {
            descartes_event_t e = {0, 0, 0, 0, 0, 0};
            e.struct_size = sizeof e;
            (void)probe;
            return DESCARTES_HAS_FIELD(&e, descartes_event_t, data_length) ? 0 : 1;
        }
        const descartes_library_t *descartes_plugin_entry(uint32_t v, const descartes_host_t *h) {
            (void)v; (void)h; return 0;
        }
        """

    @Test(arguments: [
        ["cc", "-std=c11", "-x", "c"],
        ["c++", "-std=c++17", "-x", "c++"],
        ["cc", "-std=c99", "-x", "c"],
    ])
    func compilesStrictly(_ compiler: [String]) async {
        let dir = TempDir()
        let src = dir.write("probe.txt", Self.program)
        let r = await Proc.run(
            compiler + ["-Wall", "-Wextra", "-pedantic", "-Werror", "-I", FileSystem.join(TestEnv.root, "Sources/CDescartesPlugin/include"), src, "-o", dir.file("probe")])
        #expect(r.status == 0, "\(compiler.joined(separator: " ")) failed: \(r.stderr)")
        #expect(await Proc.run([dir.file("probe")]).status == 0)
    }

    @Test func theCExamplePluginCompilesWithEveryWarning() async {
        let dir = TempDir()
        let r = await CCompiler.sharedLibrary([FileSystem.join(TestEnv.root, "Plugins/EchoC/echo.c")], output: dir.file("libdescartes-echo.so"))
        #expect(r.status == 0, "\(r.stderr)")
        // Only the entry point is exported.
        let nm = await Proc.run(["nm", "-D", "--defined-only", dir.file("libdescartes-echo.so")])
        let exported = nm.stdout.split(separator: "\n").filter { $0.contains(" T ") }.map { $0.split(separator: " ").last.map(String.init) ?? "" }
        #expect(exported == ["descartes_plugin_entry"])
    }

    @Test func swiftPluginsExportOnlyTheEntryPoint() async {
        let nm = await Proc.run(["nm", "-D", "--defined-only", TestEnv.swiftPlugin("scripted")])
        #expect(nm.status == 0, "\(nm)")
        let global = nm.stdout.split(separator: "\n").filter { line in
            let f = line.split(separator: " ")
            return f.count == 3 && f[1].first!.isUppercase
        }
        #expect(global.map { String($0.split(separator: " ")[2]) } == ["descartes_plugin_entry"])
    }
}
