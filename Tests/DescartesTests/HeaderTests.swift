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

    static let include = FileSystem.join(TestEnv.root, "Sources/CDescartesPlugin/include")
    static let header = FileSystem.join(include, "descartes/plugin.h")
    static let strict = ["-Wall", "-Wextra", "-pedantic", "-Werror"]
    /// With clang the header's nullability annotations are live: every
    /// pointer must carry one, and a NULL where one says non-null is an error.
    static let nullability = ["-Wnullability-completeness", "-Wnullable-to-nonnull-conversion"]
    /// clang comes with every Swift toolchain (SwiftPM compiles the C targets with it).
    static let clang: String = {
        for dir in (Environment.get("PATH") ?? "").split(separator: ":") where FileSystem.exists("\(dir)/clang") { return "\(dir)/clang" }
        return "clang"
    }()

    @Test(arguments: [
        ["cc", "-std=c11", "-x", "c"],
        ["c++", "-std=c++17", "-x", "c++"],
        ["cc", "-std=c99", "-x", "c"],
        [clang, "-std=c11", "-x", "c"] + nullability,
        [clang, "-std=c++17", "-x", "c++"] + nullability,
        [clang, "-std=c99", "-x", "c"] + nullability,
    ])
    func compilesStrictly(_ compiler: [String]) async {
        let dir = TempDir()
        let src = dir.write("probe.txt", Self.program)
        let r = await Proc.run(compiler + Self.strict + ["-I", Self.include, src, "-o", dir.file("probe")])
        #expect(r.status == 0, "\(compiler.joined(separator: " ")) failed: \(r.stderr)")
        #expect(await Proc.run([dir.file("probe")]).status == 0)
    }

    /// The annotations are not decoration: clang rejects a NULL handle
    /// passed to `cancel`, and accepts one where the header allows it.
    @Test func clangChecksTheNullabilityAnnotations() async {
        let dir = TempDir()
        let bad = dir.write("bad.c", "#include <descartes/plugin.h>\nvoid f(descartes_backend_t *b) { b->cancel(b, 0); }\n")
        let r = await Proc.run([Self.clang, "-std=c11", "-x", "c", "-c"] + Self.strict + Self.nullability + ["-I", Self.include, bad, "-o", dir.file("bad.o")])
        #expect(r.status != 0)
        #expect(r.stderr.contains("null passed to a callee that requires a non-null argument"), "\(r.stderr)")
        let good = dir.write("good.c", "#include <descartes/plugin.h>\nvoid f(descartes_backend_t *b) { b->get_extension = 0; b->plugin_data = 0; }\n")
        let g = await Proc.run([Self.clang, "-std=c11", "-x", "c", "-c"] + Self.strict + Self.nullability + ["-I", Self.include, good, "-o", dir.file("good.o")])
        #expect(g.status == 0, "\(g.stderr)")
    }

    /// Every function (a function pointer in a struct, a function-pointer
    /// type, the entry point) starts its comment with a tag line:
    /// `[tag & tag] since X.Y`, with tags the header defines.
    @Test func everyFunctionHasAThreadTagAndAVersion() throws {
        let text = try FileSystem.readText(Self.header, limit: 1 << 20)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        // The legend: "  [tag]   meaning" lines in the "Thread tags" section.
        let legendStart = try #require(lines.firstIndex { $0.contains(" * Thread tags") })
        let defined = Set(
            lines[legendStart...].prefix(40).compactMap { l -> String? in
                guard let open = l.firstIndex(of: "["), let close = l.firstIndex(of: "]"), l.hasPrefix(" *   [") else { return nil }
                return String(l[l.index(after: open)..<close])
            })
        #expect(defined.count >= 8, "\(defined)")
        var functions: [(name: String, line: Int)] = []
        for (i, l) in lines.enumerated() {
            let code = Self.trim(l, " ")
            if code.hasPrefix("*") || code.hasPrefix("/*") || code.hasPrefix("#") { continue }
            if let r = code.firstRange(of: "(*"), !code.contains("((") {
                let rest = code[r.upperBound...].replacing("DESCARTES_NONNULL ", with: "").replacing("DESCARTES_NULLABLE ", with: "")
                functions.append((String(rest.prefix { $0 != ")" }), i))
            } else if code.hasPrefix("descartes_operation_fn ") {
                functions.append((String(code.split(separator: " ").last!.dropLast()), i))
            } else if code.hasPrefix("DESCARTES_EXPORT") {
                functions.append(("descartes_plugin_entry", i))
            }
        }
        #expect(functions.count == 27, "\(functions.map(\.name))")
        for f in functions {
            // The comment that ends right above the declaration (the entry
            // point shares the comment of its typedef, just above it).
            var j = f.line - 1
            while j >= 0, !lines[j].contains("*/") { j -= 1 }
            guard j >= 0, f.line - j <= (f.name == "descartes_plugin_entry" ? 5 : 1) else {
                Issue.record("\(f.name) (line \(f.line + 1)) has no comment")
                continue
            }
            var k = j
            while k >= 0, !lines[k].contains("/**") { k -= 1 }
            let tagLine = lines[(k + 1)...].map { Self.trim($0, " *") }.first { !$0.isEmpty } ?? ""
            let parts = tagLine.split(separator: "] since ")
            guard parts.count == 2, parts[0].hasPrefix("["), parts[1].split(separator: ".").count == 2 else {
                Issue.record("\(f.name) (line \(f.line + 1)): the comment starts with \"\(tagLine)\", not \"[tags] since X.Y\"")
                continue
            }
            for tag in parts[0].dropFirst().split(separator: "&").map({ Self.trim(String($0), " ") }) {
                #expect(defined.contains(tag), "\(f.name): tag [\(tag)] is not defined in the header's legend")
            }
        }
        // The changelog is linked, and exists.
        #expect(text.contains("docs/abi-changelog.md"))
        #expect(FileSystem.exists(FileSystem.join(TestEnv.root, "docs/abi-changelog.md")))
    }

    static func trim(_ s: String, _ chars: String) -> String {
        String(s.drop { chars.contains($0) }.reversed().drop { chars.contains($0) }.reversed())
    }

    @Test(arguments: ["cc", clang])
    func theCExamplePluginCompilesWithEveryWarning(_ compiler: String) async {
        let dir = TempDir()
        let r = await CCompiler.sharedLibrary(
            [FileSystem.join(TestEnv.root, "Plugins/EchoC/echo.c")], output: dir.file("libdescartes-echo.so"),
            flags: compiler == "cc" ? [] : Self.nullability, compiler: compiler)
        #expect(r.status == 0, "\(compiler): \(r.stderr)")
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
