import Descartes
import Testing
import DescartesSupport

/// The helpers for C plugins installed beside plugin.h (descartes/json.h,
/// descartes/sse.h), unit-tested in C (Tests/Fixtures/ckit/kit_test.c:
/// escapes, \u surrogates, nesting, numbers, invalid documents, the
/// writer's escaping and commas, SSE and NDJSON split at every byte, CR LF
/// across reads, comments, multi-line data, the line bound), built with the
/// headers `make install` installed when the tests run through it.
@Suite struct CKitTests {
    /// The directory holding descartes/json.h: the installed one, else the checkout's.
    static var include: String {
        if let prefix = TestEnv.prefix, FileSystem.exists("\(prefix)/include/descartes/json.h") { return "\(prefix)/include" }
        return CCompiler.helpers
    }

    @Test(arguments: [["-O0"], ["-O2", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]])
    func theHelpersPassTheirTestsInC(_ flags: [String]) async {
        let dir = TempDir("ckit")
        let cc = await Proc.run(
            ["cc", "-std=c11", "-Wall", "-Wextra", "-pedantic", "-Werror", "-g", "-I", Self.include] + flags
                + [FileSystem.join(TestEnv.root, "Tests/Fixtures/ckit/kit_test.c"), "-o", dir.file("kit_test"), "-lm"])
        #expect(cc.status == 0, "\(cc)")
        let r = await Proc.run([dir.file("kit_test")], env: ["ASAN_OPTIONS": "detect_leaks=1"])
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.hasSuffix(" checks, 0 failed\n"), "\(r.stdout)")
        let count = Int(r.stdout.split(separator: "\n").last?.split(separator: " ").first ?? "") ?? 0
        #expect(count > 900, "\(r.stdout)")
    }

    /// Both headers compile as C99, C11 and C++17 with every warning an error.
    @Test(arguments: [["cc", "-std=c99", "-x", "c"], ["cc", "-std=c11", "-x", "c"], ["c++", "-std=c++17", "-x", "c++"]])
    func theHeadersCompileStrictly(_ compiler: [String]) async {
        let dir = TempDir("ckit-headers")
        let src = dir.write("probe.txt", "#include <descartes/sse.h>\n#include <descartes/json.h>\nint main(void) { dk_buf b; memset(&b, 0, sizeof b); dk_put_int(&b, 1); dk_buf_free(&b); return 0; }\n")
        let r = await Proc.run(compiler + ["-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only", "-I", Self.include, src])
        #expect(r.status == 0, "\(compiler): \(r)")
    }
}
