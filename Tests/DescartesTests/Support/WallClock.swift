import DescartesSupport
import Testing

/// Wall-clock bounds: a test's last resort (time comes from an injectable
/// clock where it can), kept for what only the real clock can show: that a
/// hung plugin, server or child is abandoned at its deadline.
///
/// A bound on elapsed time measures the machine as much as the product:
/// on two cores, with the whole suite starting hundreds of processes at
/// once, a call due in 300 ms was seen answered 5 s later. So every test
/// asserting one runs in `make test`'s timed phase, after the rest and a
/// few at a time (the tests listed in `Tests/timed-tests.txt`); a test not
/// listed there that asserts a bound fails in the untimed phase, saying so.
func expectWithin(
    _ elapsed: Duration, _ bound: Duration, _ comment: @autoclosure () -> String = "",
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let what = comment()
    // Near misses are printed, so that a bound about to fail is seen
    // before it does.
    if elapsed >= bound * 4 / 5 && elapsed < bound {
        print("wall clock: \(Test.current?.name ?? "a test") took \(elapsed) of its \(bound) bound (\(sourceLocation.fileName):\(sourceLocation.line))")
    }
    #expect(elapsed < bound, "took \(elapsed), bound \(bound)\(what.isEmpty ? "" : ": \(what)")", sourceLocation: sourceLocation)
    if Environment.get("DESCARTES_TEST_PHASE") == "untimed" {
        Issue.record(
            "\(Test.current?.name ?? "this test") asserts a wall-clock bound but runs in the untimed phase: list it in Tests/timed-tests.txt",
            sourceLocation: sourceLocation)
    }
}
