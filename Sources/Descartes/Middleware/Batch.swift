/// Runs many requests through one backend with a bounded number in flight,
/// surviving individual failures, and delivers the results in input order.
///
/// ```swift
/// let requests: [Result<ModelRequest, ProviderError>] = lines.map(BatchRunner.parse)
/// await BatchRunner(backend: backend, concurrency: 8).run(requests) { index, result in
///     print(index, result)          // 0, 1, 2, ... whatever order they finish in
/// }
/// ```
public struct BatchRunner: Sendable {
    public let backend: any ModelBackend
    /// Requests in flight at most.
    public let concurrency: Int
    /// Use `stream` (and collect) rather than `complete`, so that a stats
    /// layer sees time to first token.
    public let streaming: Bool

    /// The whole batch's deadline (the CLI's `--timeout`): a request
    /// started before it runs under what is left of it (its own total
    /// deadline, if shorter, stays); one whose turn comes after it is not
    /// sent and is reported as a `timeout` error saying so. `length` names
    /// it in that error ("3 s").
    package var deadline: (at: ContinuousClock.Instant, length: String)?

    public init(backend: any ModelBackend, concurrency: Int = 4, streaming: Bool = false) {
        self.backend = backend
        self.concurrency = max(1, concurrency)
        self.streaming = streaming
    }

    /// Progress so far.
    public struct Progress: Sendable, Hashable {
        public var total: Int
        public var done: Int
        public var failed: Int
        public var running: Int

        public init(total: Int, done: Int, failed: Int, running: Int) {
            self.total = total
            self.done = done
            self.failed = failed
            self.running = running
        }
    }

    /// Reads one JSON line: a Request document as in docs/abi.md.
    public static func parse(_ line: String) -> Result<ModelRequest, ProviderError> {
        let doc: JSONValue
        do { doc = try JSONValue.parse(line) } catch {
            return .failure(ProviderError(.json, "not a JSON document: \(error)"))
        }
        do { return .success(try Wire.decodeRequest(doc)) } catch {
            return .failure(ProviderError(.json, "not a request: \(error)"))
        }
    }

    /// Runs `requests` (an entry that failed to parse is reported as its
    /// result without being sent). `emit` is called once per request, in
    /// input order, one call at a time; `progress` after each completion.
    /// Cancelling the calling task cancels the requests in flight; those
    /// not started are reported as cancelled.
    public func run(
        _ requests: [Result<ModelRequest, ProviderError>],
        progress: (@Sendable (Progress) -> Void)? = nil,
        emit: (Int, Result<ModelResponse, ProviderError>) async -> Void
    ) async {
        let backend = self.backend
        let streaming = self.streaming
        let deadline = self.deadline
        var state = Progress(total: requests.count, done: 0, failed: 0, running: 0)
        var pending: [Int: Result<ModelResponse, ProviderError>] = [:]
        var nextToEmit = 0
        await withTaskGroup(of: (Int, Result<ModelResponse, ProviderError>).self) { group in
            var nextToStart = 0
            func startNext() -> Bool {
                guard nextToStart < requests.count else { return false }
                let i = nextToStart
                nextToStart += 1
                let input = requests[i]
                state.running += 1
                group.addTask {
                    guard case .success(var request) = input else {
                        if case .failure(let e) = input { return (i, .failure(e)) }
                        return (i, .failure(ProviderError(.backend, "unreachable")))
                    }
                    if Task.isCancelled {
                        return (i, .failure(ProviderError(.cancelled, "the batch was cancelled", provider: backend.name)))
                    }
                    var clamped = false
                    if let deadline {
                        let left = deadline.at - ContinuousClock.now
                        guard left > .zero else {
                            return (
                                i,
                                .failure(
                                    ProviderError(
                                        .timeout, "not sent: the batch's total deadline of \(deadline.length) passed before its turn", provider: backend.name,
                                        deadline: "total"))
                            )
                        }
                        clamped = request.deadlines.total.map { left < $0 } ?? true
                        request.deadlines.total = min(request.deadlines.total ?? left, left)
                    }
                    do {
                        let r = streaming ? try await backend.collect(request) : try await backend.complete(request)
                        return (i, .success(r))
                    } catch {
                        var e = ProviderError.from(error, provider: backend.name)
                        if clamped, let deadline, e.kind == .timeout, e.deadline == "total" {
                            // Its total was what was left of the batch's: say so, not "2.997 s".
                            e.message = "the batch's total deadline of \(deadline.length) passed while it ran"
                        }
                        return (i, .failure(e))
                    }
                }
                return true
            }
            for _ in 0..<concurrency where startNext() {}
            while let (i, result) = await group.next() {
                state.running -= 1
                state.done += 1
                if case .failure = result { state.failed += 1 }
                pending[i] = result
                _ = startNext()
                progress?(state)
                while let r = pending.removeValue(forKey: nextToEmit) {
                    await emit(nextToEmit, r)
                    nextToEmit += 1
                }
            }
        }
    }
}
