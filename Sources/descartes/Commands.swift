import Descartes
import DescartesCommandLine

/// Dispatch: finds the command the words name (CommandTable.swift), answers
/// `--help`, parses the rest against the command's declaration and runs it.
extension Commands {
    static func run(_ argv: [String], globals: Globals) async -> ExitCode {
        let (command, rest) = resolve(argv)
        if Arguments.wantsHelp(rest) {
            printHelp(command, json: rest.contains(Option.json.name))
            return .ok
        }
        let args: Arguments
        do { args = try Arguments(rest, command: command) } catch { usageFailure(error) }
        switch command.id {
        case .pluginsList: return PluginsCommand.list(args, globals: globals)
        case .pluginsInfo: return PluginsCommand.info(args, globals: globals)
        case .pluginsVerify:
            if args.value(.conformance) != nil { return await ConformanceCommand.run(args, globals: globals) }
            return PluginsCommand.verify(args, globals: globals)
        case .pluginsEnable, .pluginsDisable: return PolicyCommand.edit(args, globals: globals)
        case .complete: return await CompleteCommand.run(args, globals: globals)
        case .models: return await ModelsCommand.run(args, globals: globals)
        case .health: return await HealthCommand.run(args, globals: globals)
        case .tokens: return await TokensCommand.run(args, globals: globals)
        case .embed: return await EmbedCommand.run(args, globals: globals)
        case .batch: return await BatchCommand.run(args, globals: globals)
        case .configShow: return ConfigCommand.show(args, globals: globals)
        case .configCheck: return ConfigCommand.check(args, globals: globals)
        case .log: return LogCommand.run(args, globals: globals)
        case .serve: return await ServeCommand.run(args, globals: globals)
        case .keysCreate: return KeysCommand.create(args, globals: globals)
        case .keysList: return KeysCommand.list(args, globals: globals)
        case .keysRevoke: return KeysCommand.revoke(args, globals: globals)
        case .sessionsList: return SessionsCommand.list(args, globals: globals)
        case .sessionsClose: return SessionsCommand.close(args, globals: globals)
        case .chat: return await ChatCommand.run(args, globals: globals)
        case .conversationsList: return ConversationsCommand.list(args, globals: globals)
        case .conversationsShow: return ConversationsCommand.show(args, globals: globals)
        case .conversationsExport: return ConversationsCommand.export(args, globals: globals)
        case .conversationsDelete: return ConversationsCommand.delete(args, globals: globals)
        case .descartes, .plugins, .config, .keys, .sessions, .conversations, .bench: preconditionFailure("resolve returns a command of descartes, never a group")
        }
    }

    /// The command `argv` names and the words after it. Stops at a group
    /// when help is asked for; any other mistake is a usage error.
    static func resolve(_ argv: [String]) -> (Command, [String]) {
        var command = Command.named(.descartes)
        var rest = argv[...]
        while !command.children.isEmpty {
            guard let word = rest.first, !word.hasPrefix("-") else {
                if Arguments.wantsHelp(Array(rest)) { break }
                if let word = rest.first {
                    usageFailure(UsageError(Arguments.unknown(word, in: command), command: command))
                }
                usageFailure(UsageError("missing subcommand (\(alternatives(command)))", command: command))
            }
            guard let next = command.children.first(where: { $0.words.last == word }) else {
                let names = command.children.map { $0.words.last! }
                var message = "unknown \(command.id == .descartes ? "command" : "subcommand") '\(word)'"
                if command.id == .descartes && word == "bench" {
                    message += " (the benchmark is its own executable, descartes-bench, which 'make bench' builds: docs/benchmarks.md)"
                } else if let near = Arguments.nearest(word, in: names) {
                    message += " (did you mean '\(near)'?)"
                } else if command.id != .descartes {
                    message += " (\(alternatives(command)))"
                }
                usageFailure(UsageError(message, command: command))
            }
            command = next
            rest = rest.dropFirst()
        }
        return (command, Array(rest))
    }

    /// "list, info, verify, enable or disable"
    static func alternatives(_ group: Command) -> String {
        let names = group.children.map { $0.words.last! }
        return names.count < 2 ? names.joined() : names.dropLast().joined(separator: ", ") + " or " + names.last!
    }

    static func printHelp(_ command: Command, json: Bool) {
        if json {
            Out.line((command.id == .descartes ? Command.json(program: command.program) : command.json).prettyText())
        } else {
            Out.line(command.id == .descartes ? topHelp : command.help)
        }
    }

    /// `descartes --help`: the program, its commands, the global options.
    static var topHelp: String {
        let root = Command.named(.descartes)
        let leaves = Command.all.filter { $0.program == root.program && $0.children.isEmpty && $0.id != .descartes }
        var out = "descartes \(descartesVersion): one interface to every kind of LLM backend, loaded as plugins.\n\n"
        out += "Usage: \(root.usage)\n\n"
        out += "Commands:\n" + Command.columns(leaves.map { ($0.synopsis, $0.summary) })
        out += "\nGlobal options:\n" + Command.columns((Option.globals + [.version]).map { ($0.label, $0.help) })
        out += "\n" + root.notes
        return out
    }
}
