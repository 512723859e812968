import Descartes
import DescartesCommandLine
import Glibc
import DescartesSupport

/// `descartes plugins enable|disable NAME [--system]`: edits the policy file.
enum PolicyCommand {
    static func edit(_ args: Arguments, globals: Globals) -> ExitCode {
        let sub = args.command.words.last!
        let name = args.positional[0]
        guard !name.isEmpty, !name.contains("\n") else { usageFailure(args.mistake("invalid plugin NAME")) }
        let action = PolicyEditor.Action(rawValue: sub)!
        let system = args.flag(.systemPolicy)
        let file = system ? PluginPolicy.systemFile() : PluginPolicy.userFile()

        // A plain name must be a plugin that is installed (whatever the
        // policy says of it now); a glob may match none yet.
        if !name.contains(where: { "*?[".contains($0) }) {
            let catalog = Commands.catalog(globals)
            let installed = Set(catalog.entries.compactMap { $0.manifest?.provider }).sorted()
            if !installed.contains(name) {
                let hint = closest(name, in: installed).map { " Did you mean '\($0)'?" } ?? ""
                failure(
                    ProviderError(
                        .config,
                        "cannot \(sub) '\(name)': no plugin '\(name)' is installed (\(installed.isEmpty ? "no plugins are installed" : "installed: \(installed.joined(separator: ", "))"); searched \(catalog.search.directories.map(\.path).joined(separator: ", ")))\(hint); "
                            + "a glob (e.g. '\(name)*') is written as given"))
            }
        }

        // The user's file can only narrow the system's.
        if !system && action == .enable {
            var systemPolicy = PluginPolicy()
            systemPolicy.read(PluginPolicy.systemFile(), scope: .system)
            let d = systemPolicy.decision(for: name)
            if !d.enabled {
                Out.err("Error: cannot enable '\(name)' in your policy (\(file)): the host's policy keeps it off: \(d.reason).")
                Out.err("Your file can only narrow the host's; to change the host's: descartes plugins enable \(name) --system (as root)")
                return .config
            }
        }

        var text = ""
        if FileSystem.exists(file) {
            do { text = try FileSystem.readText(file, limit: 1 << 20) } catch {
                failure(ProviderError(.config, "cannot read \(file): \(error.reason)"))
            }
        }
        let edit: PolicyEditor.Edit
        do { edit = try PolicyEditor.apply(action, name: name, to: text, file: file) } catch {
            Out.err("Error: cannot \(sub) '\(name)' in \(file):")
            for p in error.problems { Out.err("  \(p)") }
            return .config
        }
        if edit.changes.isEmpty {
            Out.line("\(file) already \(action == .enable ? "allows" : "disables") '\(name)'; nothing changed.")
        } else {
            let mode = FileSystem.info(file).map { mode_t($0.mode & 0o777) } ?? 0o644
            do {
                try FileSystem.makeDirectories(FileSystem.directory(of: file))
                try FileSystem.writeAtomically(file, Array(edit.text.utf8), mode: mode)
            } catch {
                let hint = error.errno == EACCES || error.errno == EPERM ? (system ? " (the host's policy needs root)" : "") : ""
                Out.err("Error: cannot write \(error)\(hint)")
                return error.errno == EACCES || error.errno == EPERM ? .noPermission : .config
            }
            for c in edit.changes { Out.line("\(file): \(c)") }
        }
        // What the whole policy now says.
        let policy = PluginPolicy.standard()
        let d = policy.decision(for: name)
        Out.line("'\(name)' is now \(d.enabled ? "enabled" : "disabled"): \(d.reason)")
        if action == .enable && !d.enabled { return .config }
        return .ok
    }
}
