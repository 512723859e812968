/// Where a plugin runs, as an operator writes it: `isolation: process` (in a
/// `descartes-plugin-host` helper) or `isolation: in_process`, and the
/// helper's address-space limit `memory_limit_mb`. Read from a plugin's
/// entry under `plugins:` in plugins.yaml and from a provider instance in
/// providers.yaml (docs/isolation.md).
package struct IsolationSetting: Sendable, Equatable {
    package enum Mode: String, Sendable, Equatable {
        case inProcess = "in_process"
        case process
    }

    /// The keys it is written with.
    package static let keys = ["isolation", "memory_limit_mb"]
    /// The smallest helper a Swift runtime starts in (the CLI's
    /// `--memory-limit` has the same floor).
    package static let minimumMemoryMB = 64

    package var mode: Mode?
    package var modeLocation: SourcePosition?
    /// `memory_limit_mb`: applies when the plugin runs isolated (whoever
    /// chose that).
    package var memoryMB: Int?
    package var memoryLocation: SourcePosition?

    package init(mode: Mode? = nil, memoryMB: Int? = nil) {
        self.mode = mode
        self.memoryMB = memoryMB
    }

    package var isEmpty: Bool { mode == nil && memoryMB == nil }

    /// Reads `isolation` (when `isolation` is given) and `memory_limit_mb`
    /// (when `memory` is), reporting a bad value at its node; `what` names
    /// the owner in messages ("plugin 'x'", "provider 'y'").
    mutating func read(isolation: YAMLNode?, memory: YAMLNode?, what: String, _ v: inout NodeValidator) {
        if let n = isolation {
            if let s = n.scalar, let m = Mode(rawValue: s) {
                mode = m
                modeLocation = n.location
            } else {
                let got = n.scalar.map { "'\($0)'" } ?? "a \(n.kindName)"
                v.problem(n, "\(what): 'isolation' is 'process' (run the plugin in a descartes-plugin-host helper) or 'in_process', got \(got)")
            }
        }
        if let n = memory {
            if case .integer(let mb) = n.json, mb >= IsolationSetting.minimumMemoryMB {
                memoryMB = mb
                memoryLocation = n.location
            } else {
                v.problem(n, "\(what): 'memory_limit_mb' is the isolation helper's address-space limit in MiB, an integer of at least \(IsolationSetting.minimumMemoryMB), got '\(n.scalar ?? n.kindName)'")
            }
        }
        if mode == .inProcess, memoryMB != nil, let at = memoryLocation {
            v.problems.append(SourceProblem(at, "\(what): 'memory_limit_mb' limits an isolated plugin's helper; this one says 'isolation: in_process'"))
        }
    }
}

/// What the policy files decide about where one plugin runs, and why.
package struct IsolationDecision: Sendable, Equatable {
    /// Run it in a helper process.
    package var process: Bool
    /// The helper's memory limit in MiB, when a file sets one.
    package var memoryMB: Int?
    /// The settings that decided, each as "file:line:col (what)".
    package var reasons: [String]

    package init(process: Bool = false, memoryMB: Int? = nil, reasons: [String] = []) {
        self.process = process
        self.memoryMB = memoryMB
        self.reasons = reasons
    }

    /// Adds a setting: `process` if it says so (nobody below can undo
    /// that), the lower of the memory limits.
    mutating func add(_ s: IsolationSetting, source: String) {
        if s.mode == .process {
            process = true
            reasons.append("\(s.modeLocation.map { "\($0)" } ?? "?") (\(source): isolation: process)")
        }
        if let mb = s.memoryMB {
            memoryMB = min(memoryMB ?? mb, mb)
            reasons.append("\(s.memoryLocation.map { "\($0)" } ?? "?") (\(source): memory_limit_mb: \(mb))")
        }
    }
}
