import Descartes
import Testing
import DescartesSupport

/// What masking secrets costs on the hot path: every streamed text fragment
/// the CLI prints passes through the redactor. Run with
/// DESCARTES_BENCH=1 swift test --filter RedactionBenchmarks (numbers are for
/// the build you run: debug by default).
@Suite struct RedactionBenchmarks {
    @Test(.enabled(if: Environment.get("DESCARTES_BENCH") == "1", "DESCARTES_BENCH=1"))
    func redactingStreamedFragments() {
        let r = Redactor()
        for i in 0..<5 { r.register("registered-secret-value-\(i)-0123456789") }
        let fragments = ["Hello", " there", ",", " the", " answer", " is", " 42", ".\n", " risk-averse", " max_tokens: 100"]
        let n = 200_000
        var bytes = 0
        let t0 = ContinuousClock.now
        for i in 0..<n {
            let out = r.redact(fragments[i % fragments.count])
            bytes += out.utf8.count
        }
        let perFragment = (ContinuousClock.now - t0) / n
        let page = String(repeating: "The model said: use Authorization: Bearer abcdefgh12345678 and keep sk-proj-abc123456789xyz safe. ", count: 10_000)
        let t1 = ContinuousClock.now
        let masked = r.redact(page)
        let perMB = (ContinuousClock.now - t1) * (1_000_000.0 / Double(page.utf8.count))
        print("redaction: \(n) fragments, \(perFragment) each; a \(page.utf8.count / 1000) kB text with a key every 100 bytes: \(perMB) per MB")
        #expect(bytes > 0)
        #expect(!masked.contains("abcdefgh12345678"))
    }
}
