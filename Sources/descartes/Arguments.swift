import Descartes

/// Exit statuses, from sysexits(3).
enum ExitCode: Int32 {
    case ok = 0
    case failure = 1
    case usage = 64
    case dataError = 65
    case noInput = 66
    case unavailable = 69
    case software = 70
    case cantCreate = 73
    case tempFail = 75
    case noPermission = 77
    case config = 78
    case interrupted = 130

    /// The status for a provider error of this kind.
    static func `for`(_ e: ProviderError) -> ExitCode {
        switch e.kind {
        case .config: return .config
        case .authentication: return .noPermission
        case .rateLimited, .timeout: return .tempFail
        case .providerUnavailable, .initialization, .http, .streamClosed, .process: return .unavailable
        case .api, .unsupportedFeature: return .dataError
        case .cancelled: return .interrupted
        default: return .software
        }
    }
}

/// A command-line mistake: printed as `Error: ...`, then usage, exit 64.
struct UsageError: Error {
    var message: String
    var command: String
    init(_ message: String, command: String) {
        self.message = message
        self.command = command
    }
}

/// The arguments of one command, parsed against its declared options.
///
/// Options may come before or after positional arguments; `--` ends options;
/// `-` alone is a positional argument (stdin). `--name=value` and
/// `--name value` are both accepted.
struct Arguments {
    struct Option {
        var names: [String]
        var takesValue: Bool
        var repeatable: Bool = false
    }

    let command: String
    private(set) var flags: Set<String> = []
    private(set) var values: [String: [String]] = [:]
    private(set) var positional: [String] = []

    init(_ args: [String], command: String, options: [Option]) throws(UsageError) {
        self.command = command
        var i = 0
        var onlyPositional = false
        func find(_ name: String) -> Option? { options.first { $0.names.contains(name) } }
        while i < args.count {
            let a = args[i]
            i += 1
            if onlyPositional || a == "-" || !a.hasPrefix("-") {
                positional.append(a)
                continue
            }
            if a == "--" {
                onlyPositional = true
                continue
            }
            var name = a
            var inline: String? = nil
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") {
                name = String(a[..<eq])
                inline = String(a[a.index(after: eq)...])
            }
            guard let opt = find(name) else {
                throw UsageError("unknown option '\(name)'", command: command)
            }
            let key = opt.names[0]
            if opt.takesValue {
                let value: String
                if let inline {
                    value = inline
                } else {
                    guard i < args.count else { throw UsageError("option '\(name)' needs a value", command: command) }
                    value = args[i]
                    i += 1
                }
                if !opt.repeatable, values[key] != nil {
                    throw UsageError("option '\(name)' given twice", command: command)
                }
                values[key, default: []].append(value)
            } else {
                if inline != nil { throw UsageError("option '\(name)' takes no value", command: command) }
                flags.insert(key)
            }
        }
    }

    func flag(_ name: String) -> Bool { flags.contains(name) }
    func value(_ name: String) -> String? { values[name]?.last }
    func all(_ name: String) -> [String] { values[name] ?? [] }

    func int(_ name: String) throws(UsageError) -> Int? {
        guard let v = value(name) else { return nil }
        guard let i = Int(v) else { throw UsageError("option '\(name)' needs an integer, got '\(v)'", command: command) }
        return i
    }

    func double(_ name: String) throws(UsageError) -> Double? {
        guard let v = value(name) else { return nil }
        guard let d = Double(v) else { throw UsageError("option '\(name)' needs a number, got '\(v)'", command: command) }
        return d
    }
}
