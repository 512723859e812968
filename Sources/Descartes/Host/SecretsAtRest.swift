internal import CDescartesHost
import DescartesSupport

/// Keeps the API keys a process holds out of core files, out of other
/// processes' reach and out of the Swift runtime's crash report (issue 16:
/// core dumps of `descartes` and the plugin host held the full key, and the
/// crash report printed 16 key bytes from the memory a register pointed at).
///
/// `protect` sets `prctl(PR_SET_DUMPABLE, 0)` and a soft `RLIMIT_CORE` of
/// 0: no core file is written (whatever limit is raised later), and
/// ptrace(2)'s access checks treat the process as not dumpable.
/// `ProviderFactory` does it before it resolves a
/// provider's secrets, so every host using it is covered (a library leaves
/// the hard limit and the crash handlers to its host). `descartes`,
/// `descartes-bench` and `descartes-plugin-host` do it first thing with
/// `crashReport: false`: the hard limit goes to 0 as well, and the crash
/// signals go back to the kernel, so a crash is a plain signal death with
/// no report.
///
/// For debugging a crash, set `DESCARTES_ALLOW_CORE_DUMPS=1` in the
/// environment: nothing is changed (the limits the process was started
/// with, and the Swift crash report, stay). Children started later are
/// dumpable again (execve resets the flag) under their own limits.
package enum SecretsAtRest {
    /// The environment variable that keeps core dumps and the crash report.
    package static let allowVariable = "DESCARTES_ALLOW_CORE_DUMPS"

    /// Whether the environment asks to keep dumps (for debugging).
    package static var allowed: Bool { Environment.get(allowVariable) == "1" }

    private static let once: Void = { _ = descartes_protect_secrets(0) }()

    /// Turns dumps off for this process unless allowed; `crashReport:
    /// false` (for executables: a library must not take a host's handlers
    /// or hard limit away) also sets the hard core limit to 0 and resets
    /// the crash signals' handlers. Returns whether dumps are off.
    @discardableResult
    package static func protect(crashReport: Bool = true) -> Bool {
        if allowed { return false }
        if !crashReport { return descartes_protect_secrets(1) == 0 }
        once
        return true
    }
}
