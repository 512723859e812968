import Testing
import DescartesSupport

/// The plugin author's docs are installed together (issue 20): every doc
/// an installed doc or plugin.h names is installed with it, so the links
/// hold in `<prefix>/share/descartes/doc`.
@Suite struct KitDocsTests {
    @Test func theInstalledDocsNameOnlyInstalledDocs() throws {
        let makefile = try FileSystem.readText(FileSystem.join(TestEnv.root, "Makefile"), limit: 1 << 20)
        // PLUGIN_DOCS, with its continuation lines.
        var words: [Substring] = []
        var inList = false
        for line in makefile.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("PLUGIN_DOCS") { inList = true }
            guard inList else { continue }
            words += line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if !line.hasSuffix("\\") { break }
        }
        let installed = Set(words.filter { $0.hasPrefix("docs/") }.map { String($0.dropFirst(5)) })
        #expect(installed.contains("abi.md"), "PLUGIN_DOCS not found in the Makefile: \(words)")
        let existing = Set(try FileSystem.list(FileSystem.join(TestEnv.root, "docs")).filter { $0.hasSuffix(".md") })
        let sources = installed.sorted().map { "docs/" + $0 } + ["Sources/CDescartesPlugin/include/descartes/plugin.h"]
        for file in sources {
            let text = try FileSystem.readText(FileSystem.join(TestEnv.root, file), limit: 1 << 22)
            for name in Self.mdNames(text).sorted() where existing.contains(name) {
                #expect(installed.contains(name), "\(file) names \(name), which make install does not install with it (PLUGIN_DOCS)")
            }
        }
    }

    /// Every `name.md` in `text` (lowercase letters, digits, '-').
    static func mdNames(_ text: String) -> Set<String> {
        let b = Array(text.utf8)
        var out: Set<String> = []
        var i = 0
        while i + 2 < b.count {
            if b[i] == UInt8(ascii: "."), b[i + 1] == UInt8(ascii: "m"), b[i + 2] == UInt8(ascii: "d") {
                var j = i
                while j > 0, isNameByte(b[j - 1]) { j -= 1 }
                if j < i { out.insert(String(decoding: b[j..<(i + 3)], as: UTF8.self)) }
            }
            i += 1
        }
        return out
    }

    static func isNameByte(_ c: UInt8) -> Bool { (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x2D }
}
