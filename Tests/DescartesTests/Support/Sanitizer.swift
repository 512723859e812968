import Descartes
import DescartesSupport

/// Which sanitizer runs the suite (`make sanitize` sets DESCARTES_SANITIZER).
enum Sanitizer {
    /// "address" or "thread", or nil for a plain build.
    static let current: String? = Environment.get("DESCARTES_SANITIZER").flatMap { $0.isEmpty ? nil : $0 }

    static var active: Bool { current != nil }

    /// How much slower than a plain debug build work may run: bounds on
    /// elapsed time that are about the product (the fault matrix's) scale by
    /// this. AddressSanitizer costs about 2x, ThreadSanitizer 5 to 15x.
    static var timeScale: Int {
        switch current {
        case "address"?: return 3
        case "thread"?: return 10
        default: return 1
        }
    }

    /// Limits for isolation helpers: a sanitized helper reserves terabytes
    /// of address space for its shadow memory, so it cannot start under an
    /// RLIMIT_AS.
    static func limits(_ l: ProcessLimits = .isolatedPlugin) -> ProcessLimits {
        var l = l
        if active { l.memoryBytes = nil }
        return l
    }
}
