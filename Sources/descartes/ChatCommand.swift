import Descartes
import DescartesCommandLine
@preconcurrency import Dispatch
import Glibc
import DescartesSupport

/// `descartes chat -p PROVIDER [-c|--conversation ID] [--system TEXT]`: a
/// conversation in the terminal. Each turn goes through `ConversationThread`
/// as `complete`'s does (the earlier messages sent, or an agent's session
/// continued; the turn stored), and its answer streams through
/// `CompleteCommand.streamOut`.
///
/// Signals: Ctrl-C while an answer streams cancels that request (the task
/// is cancelled: the plugin stops its transfer, an agent's process group is
/// ended) and the prompt comes back; Ctrl-C at the prompt ends the chat
/// (the terminal drops the half-typed line itself). SIGTERM and SIGHUP end
/// it with 128 + the signal, an answer in flight cancelled first.
enum ChatCommand {
    /// What the signal handler needs: the answer in flight, if any.
    final class Turn: @unchecked Sendable {
        private let current = Lock<Task<Result<ModelResponse, any Error>, Never>?>(nil)
        func set(_ t: Task<Result<ModelResponse, any Error>, Never>?) { current.withLock { $0 = t } }
        /// Cancels the answer in flight; false when there is none (at the prompt).
        func cancel() -> Bool {
            current.withLock { t in
                guard let t else { return false }
                t.cancel()
                return true
            }
        }
    }

    static func run(_ args: Arguments, globals: Globals) async -> ExitCode {
        let settings: [String: JSONValue]
        let reliability: ReliabilityOptions
        var maxTokens: Int? = nil
        var temperature: Double? = nil
        do throws(UsageError) {
            if args.flag(.continueConversation) && args.value(.conversation) != nil {
                throw args.mistake("-c continues the most recent conversation, --conversation ID the one named: give one of them")
            }
            settings = try Commands.settings(args)
            reliability = try ReliabilityOptions(args, globals: globals)
            (maxTokens, temperature) = try Commands.sampling(args)
        } catch { usageFailure(error) }
        let provider = args.value(.provider)!
        let store = ConversationStore(file: ConversationStore.defaultFile())
        let continuing: (StoredConversation, [Message])?
        do throws(ProviderError) { continuing = try ConversationThread.continued(args, store: store) } catch { failure(error) }
        let built: ReliabilityOptions.Built
        do throws(ProviderError) { built = try reliability.build(provider, config: settings, globals: globals) } catch { failure(error) }
        var thread = ConversationThread(
            store: store, provider: provider, agentSessions: built.agentSessions, sessionFromTheStart: true, continuing: continuing, system: args.value(.systemPrompt))

        let terminal = isatty(0) != 0
        let turn = Turn()
        let interrupts = Interrupts(Interrupts.handled, each: true) { sig in
            if turn.cancel() { return }
            // At the prompt: nothing in flight, every turn already stored.
            if sig == SIGINT {
                if terminal { Out.write("\n") }
                exit(ExitCode.ok.rawValue)
            }
            Out.err("descartes: ended by \(signalName(sig))")
            exit(128 + sig)
        }
        if terminal {
            var hello = "Chatting with \(provider)"
            if let (c, messages) = continuing { hello += ", continuing conversation \(c.id) (\(messages.count) messages)" }
            Out.err(Out.dim(hello + ". !multi for several lines, !system TEXT, !reset, !exit or Ctrl-D to end; Ctrl-C cancels an answer."))
        }
        let input = LineReader(fd: 0)
        reading: while true {
            if terminal { Out.write("> ") }
            guard let line = await input.line() else { break }
            var text = line
            let command = line.split(separator: " ", maxSplits: 1).first.map(String.init) ?? ""
            switch command {
            case "!exit", "!quit":
                break reading
            case "!reset":
                thread.reset()
                Out.err(Out.dim("(a new conversation)"))
                continue
            case "!system":
                let s = line.dropFirst(7).drop { $0 == " " }
                thread.system = s.isEmpty ? nil : String(s)
                Out.err(Out.dim(s.isEmpty ? "(no system prompt)" : "(system prompt set)"))
                continue
            case "!multi":
                var lines: [String] = []
                while true {
                    guard let l = await input.line() else { break reading }
                    if l == "!end" { break }
                    lines.append(l)
                }
                text = lines.joined(separator: "\n")
            default:
                break
            }
            if text.allSatisfy(\.isWhitespace) { continue }

            let prompt = Message(role: .user, content: text)
            var request = ModelRequest(messages: [prompt], model: args.value(.model))
            request.maxTokens = maxTokens
            request.temperature = temperature
            request = thread.request(request)
            let backend = built.backend
            let task = Task { () async -> Result<ModelResponse, any Error> in
                do { return .success(try await CompleteCommand.streamOut(backend, request, json: false)) } catch { return .failure(error) }
            }
            turn.set(task)
            let result = await task.value
            turn.set(nil)
            switch result {
            case .success(let r):
                if !r.content.hasSuffix("\n") { Out.line() }
                for c in r.toolCalls { Out.line(Out.dim("tool call \(c.id): \(c.name)(\(c.arguments))")) }
                do { try thread.record(prompt, r) } catch { Out.err("descartes: the turn was not recorded: \(error)") }
            case .failure(let error):
                Out.line()
                if task.isCancelled || (error as? ProviderError)?.kind == .cancelled {
                    Out.err(Out.dim("(cancelled; the turn is not kept)"))
                } else {
                    Out.err("Error: \(error)")
                }
            }
            let sig = interrupts.receivedSignal
            if sig == SIGTERM || sig == SIGHUP { break }
        }
        interrupts.stop()
        await built.providers.shutdown()
        interrupts.exitIfTerminated()
        if terminal { Out.write("\n") }
        return .ok
    }
}

/// Lines of a file descriptor, read on a thread of their own (a read that
/// blocks on the terminal does not hold one of the few threads the answers
/// stream on). The line's newline is not kept; nil at the end of input.
final class LineReader: @unchecked Sendable {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var ended = false
    private let queue = DispatchQueue(label: "descartes.chat.input")

    init(fd: Int32) { self.fd = fd }

    func line() async -> String? {
        await withCheckedContinuation { c in
            queue.async { c.resume(returning: self.readLine()) }
        }
    }

    private func readLine() -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                var line = Array(buffer[..<nl])
                buffer.removeFirst(nl + 1)
                if line.last == 0x0D { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            if ended {
                if buffer.isEmpty { return nil }
                defer { buffer = [] }
                return String(decoding: buffer, as: UTF8.self)
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                ended = true
                continue
            }
            buffer += chunk[0..<n]
        }
    }
}
