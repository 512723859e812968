import Descartes
import DescartesCommandLine
import DescartesSupport

enum PluginsCommand {
    static func keysSummary(_ m: PluginManifest) -> String {
        m.config.map { k in k.name + (k.required ? "!" : "") + (k.secret ? "*" : "") }.joined(separator: " ")
    }

    static func list(_ args: Arguments, globals: Globals) -> ExitCode {
        let catalog = Commands.catalog(globals)

        if args.flag(.json) {
            let plugins: [JSONValue] = catalog.entries.map { e in
                var o = e.manifest.map(Render.manifest) ?? JSONObject()
                o["manifest"] = .string(e.file)
                o["status"] = .string(e.status.label)
                o["reason"] = e.reason.map { .string($0) } ?? .null
                o["search_dir"] = .string(e.directory.path)
                if let d = e.policy { o["policy"] = ["enabled": .bool(d.enabled), "reason": .string(d.reason)] }
                if let r = e.requiredBy { o["required_by"] = .string(r.location.description) }
                if let p = e.pin { o["sha256_pin"] = .string(p.sha256) }
                if let m = e.manifest {
                    let d = catalog.policy.isolation(for: m.provider)
                    o["isolation"] = [
                        "mode": .string(d.process ? "process" : "in_process"),
                        "memory_limit_mb": d.memoryMB.map { .integer($0) } ?? .null,
                        "decided_by": .array(d.reasons.map { .string($0) }),
                    ]
                }
                if !e.problems.isEmpty {
                    o["problems"] = .array(
                        e.problems.map { p in
                            ["file": .string(p.location.file), "line": .integer(p.location.line), "column": .integer(p.location.column), "message": .string(p.message)]
                        })
                }
                return .object(o)
            }
            let search: [JSONValue] = catalog.search.directories.map { ["path": .string($0.path), "origin": .string($0.origin)] }
            let required = catalog.requiredProblems
            Out.line(
                JSONValue.object([
                    "plugins": .array(plugins), "search": .array(search),
                    "policy_files": .array(catalog.policy.files.filter { $0.status == .loaded }.map { .string($0.path) }),
                    "required_problems": .array(required.map { .string($0) }),
                ]).prettyText())
            return required.isEmpty ? .ok : .failure
        }

        if catalog.entries.isEmpty {
            Out.line("No plugins found. Searched:")
            for d in catalog.search.directories { Out.line("  \(d.path) (\(d.origin))") }
            return .ok
        }
        var rows: [[String]] = []
        for e in catalog.entries {
            let status = e.status == .available ? Out.green(e.status.label) : Out.red(e.status.label)
            var policy = e.policy.map { $0.enabled ? "enabled" : "disabled" } ?? "-"
            if e.requiredBy != nil { policy += ", required" }
            if e.pin != nil { policy += ", pinned" }
            if let m = e.manifest, catalog.policy.isolation(for: m.provider).process { policy += ", isolated" }
            if let m = e.manifest {
                rows.append([m.provider, m.version, m.mode.rawValue, "\(m.abi)", status, policy, m.libraryName, keysSummary(m)])
            } else {
                rows.append([FileSystem.basename(e.file), "-", "-", "-", status, policy, "-", ""])
            }
        }
        Out.line(Out.table(["NAME", "VERSION", "MODE", "ABI", "STATUS", "POLICY", "LIBRARY", "CONFIG (! required, * secret)"], rows))
        if globals.verbose {
            for e in catalog.entries { if let m = e.manifest, let d = e.policy { Out.err("descartes: policy: \(m.provider): \(d.reason)") } }
            for e in catalog.entries {
                guard let m = e.manifest else { continue }
                let d = catalog.policy.isolation(for: m.provider)
                if !d.reasons.isEmpty { Out.err("descartes: policy: \(m.provider): \(d.process ? "isolated" : "in process"): \(d.reasons.joined(separator: "; "))") }
            }
        }
        let broken = catalog.entries.filter { $0.status != .available }
        if !broken.isEmpty {
            Out.line("")
            for e in broken {
                Out.line("\(e.manifest?.provider ?? FileSystem.basename(e.file)): \(e.status.label):")
                if e.problems.isEmpty {
                    Out.line("  \(e.reason ?? "")")
                } else {
                    for p in e.problems { Out.line("  \(p)") }
                }
            }
        }
        let required = catalog.requiredProblems
        if !required.isEmpty {
            Out.line("")
            for r in required { Out.line(Out.red("required: ") + r) }
            return .failure
        }
        return .ok
    }

    static func info(_ args: Arguments, globals: Globals) -> ExitCode {
        let name = args.positional[0]
        let catalog = Commands.catalog(globals)
        guard let entry = catalog.entry(for: name), let m = entry.manifest else {
            let invalid = catalog.entries.first { FileSystem.basename($0.file).hasPrefix(name + ".") }
            if let invalid {
                Out.err("Error: \(invalid.file): \(invalid.status.label)")
                for p in invalid.problems { Out.err("  \(p)") }
                return .config
            }
            failure(ProviderError(.config, "unknown plugin '\(name)'; installed: \(catalog.availableProviders.joined(separator: ", "))"))
        }
        if args.flag(.json) {
            var o = Render.manifest(m)
            o["manifest"] = .string(entry.file)
            o["status"] = .string(entry.status.label)
            o["reason"] = entry.reason.map { .string($0) } ?? .null
            Out.documentation(JSONValue.object(o).prettyText())
            return .ok
        }
        Out.documentation("\(Out.bold(m.provider)) \(m.version) (\(m.mode.rawValue) mode, plugin ABI \(m.abi))")
        if !m.description.isEmpty { Out.documentation(m.description) }
        Out.documentation("")
        Out.documentation("manifest:      \(entry.file)")
        Out.documentation("library:       \(m.libraryPath)")
        Out.documentation("factory:       \(m.factory)")
        Out.documentation("status:        \(entry.status.label)\(entry.reason.map { " (\($0))" } ?? "")")
        Out.documentation("capabilities:  \(m.capabilities.isEmpty ? "-" : m.capabilities.joined(separator: ", "))")
        Out.documentation("default model: \(m.defaultModel ?? "-")")
        if !m.models.isEmpty {
            Out.documentation("")
            let rows = m.models.map { model -> [String] in
                let price = model.prices.map { p in
                    "$\(p.input) in / $\(p.output) out" + (p.cacheRead.map { " / $\($0) cache read" } ?? "") + (p.cacheWrite.map { " / $\($0) cache write" } ?? "")
                } ?? "-"
                return [model.id, model.contextLength.map(String.init) ?? "-", price]
            }
            Out.documentation(Out.table(["MODEL", "CONTEXT", "PRICE (USD per million tokens)"], rows))
        }
        if !m.config.isEmpty {
            Out.documentation("")
            let rows = m.config.map { k -> [String] in
                [
                    k.name, k.type.rawValue, k.required ? "yes" : "no", k.secret ? "yes" : "no",
                    k.defaultValue.map { $0.stringValue ?? $0.jsonText } ?? "-", k.env.isEmpty ? "-" : k.env.joined(separator: ", "),
                    k.description,
                ]
            }
            Out.documentation(Out.table(["KEY", "TYPE", "REQUIRED", "SECRET", "DEFAULT", "ENV", "DESCRIPTION"], rows))
        }
        return .ok
    }

    static func verify(_ args: Arguments, globals: Globals) -> ExitCode {
        let settings: [String: JSONValue]
        let timeout: Double
        do throws(UsageError) {
            settings = try Commands.settings(args)
            timeout = try args.double(.timeout) ?? 30
            guard timeout > 0 else { throw args.mistake("--timeout must be positive") }
        } catch { usageFailure(error) }
        let catalog = Commands.catalog(globals)
        var factory = ProviderFactory(catalog: catalog, loader: Out.loader, logSink: Out.logSink)
        // Each plugin's load (dlopen and its entry point) and create run
        // under this deadline: a plugin that hangs there is a failed row,
        // and the others are still verified.
        factory.operationDeadline = .milliseconds(Int(timeout * 1000))
        var names = args.positional
        var results: [JSONValue] = []
        var failed = 0
        var rows: [[String]] = []
        for r in catalog.requiredProblems {
            failed += 1
            rows.append(["(policy)", Out.red("FAIL"), r])
            results.append(["name": "(policy)", "ok": false, "error": .string(r)])
        }
        // Entries that are not available are reported as failures too, unless names were given.
        if names.isEmpty {
            names = catalog.availableProviders
            for e in catalog.entries where e.status != .available {
                if case .shadowed = e.status { continue }
                // A plugin the policy turns off is not broken.
                if case .disabled = e.status { continue }
                failed += 1
                let n = e.manifest?.provider ?? FileSystem.basename(e.file)
                rows.append([n, Out.red("FAIL"), "\(e.file): \(e.reason ?? e.status.label)"])
                results.append(["name": .string(n), "ok": false, "error": .string("\(e.file): \(e.reason ?? e.status.label)")])
            }
        }
        // --timeout bounds the whole command: every plugin is verified at
        // once, each on a thread of its own (a plugin function that never
        // returns blocks only its thread), and a plugin still loading or
        // creating when the deadline passes is a failed row naming it.
        let isolated = !args.flag(.inProcess)
        let verifier = factory
        let verbose = globals.verbose
        // (A quarter second past it, so that a plugin's own load or create
        // deadline, the same --timeout, is reported as what it is.)
        let outcomes = PluginThreads.shared.runAll(
            within: timeout + 0.25,
            names.map { name in
                { @Sendable () -> Result<ProviderFactory.Verification, ProviderError> in
                    if verbose { Out.err("descartes: verify: loading \(name)") }
                    do throws(ProviderError) { return .success(try verifier.verify(name, config: settings, isolated: isolated)) } catch {
                        return .failure(error)
                    }
                }
            })
        for (name, outcome) in zip(names, outcomes) {
            do throws(ProviderError) {
                guard let outcome else {
                    throw ProviderError(
                        .timeout,
                        "not verified within the command's deadline of \(Out.seconds(timeout)) (--timeout): loading or creating the plugin did not return by then",
                        provider: name, deadline: "total")
                }
                let r = try outcome.get()
                let loaded = "\(r.library) \(r.version), factories: \(r.factories.joined(separator: ", "))"
                if !r.undeclaredKeys.isEmpty, let own = r.ownManifest {
                    // Keys the library does not know: a value set for one is ignored or refused.
                    let why = "config key\(r.undeclaredKeys.count == 1 ? "" : "s") \(r.undeclaredKeys.map { "'\($0)'" }.joined(separator: ", ")) of \((try? factory.manifest(for: name).file) ?? name) \(r.undeclaredKeys.count == 1 ? "is" : "are") not declared by the library's own manifest \(own)"
                    failed += 1
                    rows.append([name, Out.red("FAIL"), "\(loaded); \(why)"])
                    results.append(["name": .string(name), "ok": false, "library": .string(r.library), "version": .string(r.version), "undeclared_config": .array(r.undeclaredKeys.map { .string($0) }), "error": ["kind": "config", "message": .string(why)]])
                } else if r.missingConfig.isEmpty {
                    rows.append([name, Out.green("ok"), loaded])
                } else {
                    rows.append([name, "ok, needs config", "\(loaded); " + r.missingConfig.joined(separator: "; ")])
                }
                // (A plugin failed for undeclared keys has its row above, not a second one saying ok.)
                if !r.undeclaredKeys.isEmpty && r.ownManifest != nil { continue }
                results.append([
                    "name": .string(name), "ok": true, "library": .string(r.library), "version": .string(r.version),
                    "missing_config": .array(r.missingConfig.map { .string($0) }),
                ])
            } catch {
                failed += 1
                rows.append([name, Out.red("FAIL"), error.description])
                results.append(["name": .string(name), "ok": false, "error": Wire.json(error)])
            }
        }
        if args.flag(.json) {
            Out.line(JSONValue.object(["results": .array(results), "failed": .integer(failed)]).prettyText())
        } else {
            Out.line(Out.table(["NAME", "RESULT", "DETAIL"], rows))
            Out.line("\(rows.count - failed) ok, \(failed) failed")
        }
        return failed == 0 ? .ok : .failure
    }
}
