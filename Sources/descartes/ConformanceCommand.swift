import Descartes
import DescartesCommandLine
import DescartesSupport
import DescartesConformance

/// `descartes plugins verify --conformance NAME`: the conformance suite.
enum ConformanceCommand {
    /// Where the spec for a plugin is, in the documented order.
    /// Where the spec for a plugin is: the manifest's `conformance:`, else
    /// `conformance/<provider>.yaml` beside the manifest, else in
    /// `<prefix>/share/descartes/conformance/`; then the same two places
    /// under the name of the manifest's factory (a provider that only adds
    /// a manifest to an existing library shares that library's spec).
    static func specPath(for manifest: PluginManifest) -> (path: String?, tried: [String]) {
        if let named = manifest.conformance { return (named, [named]) }
        var tried: [String] = []
        let prefix = FileSystem.executablePath().map { FileSystem.directory(of: FileSystem.directory(of: $0)) }
        for name in [manifest.provider, manifest.factory] where !tried.contains(where: { $0.hasSuffix("/\(name).yaml") }) {
            var candidates = [FileSystem.join(FileSystem.directory(of: manifest.file), "conformance/\(name).yaml")]
            if let prefix { candidates.append(FileSystem.join(prefix, "share/descartes/conformance/\(name).yaml")) }
            for c in candidates {
                tried.append(c)
                if FileSystem.exists(c) { return (c, tried) }
            }
        }
        return (nil, tried)
    }

    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        var settings: [String: JSONValue]
        do { settings = try Commands.settings(args) } catch { usageFailure(error) }
        let inProcess = args.flag(.inProcess)
        // The suite's child process (see Conformance.runIsolated): rows go
        // to the parent on the channel, the --set values come on stdin.
        let channel = inProcess ? Conformance.Channel.fromEnvironment() : nil
        var resume: Set<String> = []
        var spent: Duration = .zero
        if channel != nil {
            guard let input = Conformance.ChildInput.read() else {
                Out.err("Error: \(Conformance.channelVariable) is set but stdin does not carry the suite's input (it is set by descartes for its own child process)")
                return .usage
            }
            settings = input.overrides
            resume = input.resume
            spent = input.spent
        }
        guard let name = args.value(.conformance), !name.isEmpty else {
            usageFailure(args.mistake("--conformance needs a plugin NAME"))
        }
        if args.value(.timeout) != nil {
            usageFailure(args.mistake("--timeout bounds verifying, not --conformance (the suite's checks have their own deadlines)"))
        }
        if let extra = args.positional.first {
            usageFailure(args.mistake("unexpected argument '\(extra)' (the conformance suite runs one plugin: --conformance NAME)"))
        }
        let json = args.flag(.json)
        let catalog = Commands.catalog(globals)
        // An unknown name, or one discovery refused, with the reason `plugins list` gives.
        let manifest: PluginManifest
        do { manifest = try ProviderFactory(catalog: catalog, loader: Out.loader, logSink: Out.logSink).manifest(for: name) } catch {
            failure(error, json: json)
        }

        let spec: ConformanceSpec
        var specNote: String
        if let given = args.value(.spec) {
            let path = given.hasPrefix("/") ? given : FileSystem.join(FileSystem.currentDirectory(), given)
            do { spec = try ConformanceSpec.load(path: path) } catch {
                Out.err("Error: invalid conformance spec:")
                for p in error.problems { Out.err("  \(p)") }
                return .config
            }
            specNote = path
        } else {
            let (found, tried) = specPath(for: manifest)
            if let found {
                do { spec = try ConformanceSpec.load(path: found) } catch {
                    Out.err("Error: invalid conformance spec:")
                    for p in error.problems { Out.err("  \(p)") }
                    return .config
                }
                specNote = found
            } else {
                spec = .builtIn()
                specNote = "built-in (one text scenario with the plugin's defaults; none of \(tried.joined(separator: ", ")) exists)"
            }
        }
        let environment = Commands.configuration(globals).environment
        let progress: @Sendable (String) -> Void = { line in Out.err(Out.dim("descartes: conformance: \(line)")) }
        if let channel {
            _ = await Conformance.run(
                provider: name, catalog: catalog, spec: spec, environment: environment, overrides: settings, loader: Out.loader, progress: progress,
                resume: resume, spent: spent, onStep: { channel.step($0) }, report: { channel.result($0) })
            channel.done()
            return .ok
        }
        if !json {
            Out.line("Conformance of '\(name)' (\(manifest.libraryPath))")
            Out.line(Out.dim("spec: \(specNote)\(inProcess ? "; in this process (--in-process)" : "")"))
        }
        let report: @Sendable (Conformance.Result) -> Void = { r in
            if !json {
                let mark: String
                switch r.outcome {
                case .pass: mark = Out.green("ok  ")
                case .fail: mark = Out.red("FAIL")
                case .skip: mark = Out.dim("skip")
                }
                let padded = r.check + String(repeating: " ", count: max(1, 20 - r.check.count))
                Out.line("  \(mark)  \(padded)\(r.detail)")
            }
        }
        let results: [Conformance.Result]
        if inProcess {
            results = await Conformance.run(
                provider: name, catalog: catalog, spec: spec, environment: environment, overrides: settings, loader: Out.loader, progress: progress,
                report: report)
        } else {
            // In a child process: this program again, with --in-process
            // and nothing secret in its argv (the --set values go on its stdin).
            guard let exe = FileSystem.executablePath() else {
                Out.err("Error: cannot find this program's own path (/proc/self/exe) to run the suite in a child process; --in-process runs it here")
                return .software
            }
            var argv = [exe]
            if globals.verbose { argv.append(Option.verbose.name) }
            if let file = globals.configFile { argv += [Option.config.name, file] }
            argv += ["plugins", "verify", Option.conformance.name, name, Option.inProcess.name]
            if !specNote.hasPrefix("built-in") {
                argv += [Option.spec.name, spec.file.hasPrefix("/") ? spec.file : FileSystem.join(FileSystem.currentDirectory(), spec.file)]
            }
            results = await Conformance.runIsolated(
                command: argv, environment: Environment.current(), overrides: settings, budget: spec.budget, report: report)
        }
        let failed = results.filter { $0.outcome == .fail }.count
        let passed = results.filter { $0.outcome == .pass }.count
        let skipped = results.filter { $0.outcome == .skip }.count
        if json {
            let doc: JSONObject = [
                "plugin": .string(name), "spec": .string(specNote), "failed": .integer(failed), "passed": .integer(passed), "skipped": .integer(skipped),
                "checks": .array(
                    results.map { r in
                        ["check": .string(r.check), "outcome": .string(r.outcome.rawValue), "detail": .string(r.detail), "duration_ms": .integer(r.duration.milliseconds)]
                    }),
            ]
            Out.line(JSONValue.object(doc).prettyText())
        } else {
            Out.line("\(passed) passed, \(failed) failed, \(skipped) skipped")
        }
        return failed == 0 ? .ok : .failure
    }
}
