// Small text helpers shared by the host, the kit and the tools (the host
// links no Foundation). `package`: none of this is public API.

import DescartesCore

extension StringProtocol {
    /// The text without leading and trailing spaces, tabs, CRs and LFs.
    package var trimmingSpaces: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" || c == "\n" || c == "\r" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\n" || c == "\r" { s = s.dropLast() }
        return String(s)
    }
}

extension String {
    /// Every occurrence of `target` replaced by `replacement`.
    package func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.range(of: target) {
            out += rest[..<r.lowerBound]
            out += replacement
            rest = rest[r.upperBound...]
        }
        out += rest
        return out
    }

    /// The first occurrence of `target` (byte-wise, UTF-8).
    package func range(of target: String) -> Range<String.Index>? {
        guard let r = self[...].range(of: target) else { return nil }
        return r.lowerBound..<r.upperBound
    }
}

extension Substring {
    /// The first occurrence of `target` (byte-wise, UTF-8).
    package func range(of target: String) -> Range<Substring.Index>? {
        let t = Array(target.utf8)
        guard let first = t.first else { return nil }
        let u = self.utf8
        var i = u.startIndex
        while i != u.endIndex {
            if u[i] == first {
                var j = i
                var k = 0
                while k < t.count, j != u.endIndex, u[j] == t[k] {
                    j = u.index(after: j)
                    k += 1
                }
                if k == t.count { return i..<j }
            }
            i = u.index(after: i)
        }
        return nil
    }
}

/// The closest candidate by edit distance, when close enough to be a typo
/// (for "did you mean" hints).
package func closest(_ word: String, in candidates: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count)
        for i in 1...a.count {
            var cur = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }
    let w = Array(word)
    let best = candidates.map { ($0, distance(w, Array($0))) }.min { $0.1 < $1.1 }
    guard let best, best.1 <= max(1, word.count / 3) else { return nil }
    return best.0
}

extension Duration {
    /// As a message names a deadline or a wait, exact to the millisecond:
    /// "300 ms", "2 s", "1.5 s". The host's and the kit's errors use it.
    package var exactText: String {
        let ms = milliseconds
        if ms % 1000 == 0 { return "\(ms / 1000) s" }
        if ms >= 1000 { return "\(Double(ms) / 1000) s" }
        return "\(ms) ms"
    }

    /// For a summary or a table, to the hundredth of a second (cut, not
    /// rounded): "<1 ms", "12 ms", "1.25 s", "2 s". The CLI's stats and the
    /// conformance report use it.
    package var shortText: String {
        let us = components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000
        if us < 1000 { return "<1 ms" }
        if us < 1_000_000 { return "\(us / 1000) ms" }
        let centis = us / 10_000
        var frac = centis % 100 < 10 ? "0\(centis % 100)" : "\(centis % 100)"
        while frac.hasSuffix("0") { frac.removeLast() }
        return frac.isEmpty ? "\(centis / 100) s" : "\(centis / 100).\(frac) s"
    }
}
