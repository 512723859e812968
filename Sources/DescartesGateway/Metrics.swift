import Descartes
import DescartesSupport

/// The gateway's counters and histograms, in Prometheus' text exposition
/// format (version 0.0.4) for `GET /metrics`.
///
/// Labels are bounded: `endpoint` is one of the gateway's paths
/// (`/v1/responses/{id}` for every stored response's, `other` for the rest), `provider` and `model` are names the configuration
/// resolved (a request whose model did not resolve has them empty), `key`
/// is a key's name from providers.yaml (never its secret; empty without
/// keys), `kind` an error kind. A client cannot make up label values.
final class GatewayMetrics: Sendable {
    /// Seconds: request duration and time to first token.
    static let buckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]

    struct Histogram: Sendable {
        var counts = [Int](repeating: 0, count: GatewayMetrics.buckets.count)
        var count = 0
        var sum = 0.0

        mutating func observe(_ seconds: Double) {
            for (i, b) in GatewayMetrics.buckets.enumerated() where seconds <= b { counts[i] += 1 }
            count += 1
            sum += seconds
        }
    }

    /// A rendered label set (`endpoint="...",key="..."`) -> value.
    struct State: Sendable {
        var requests: [String: Int] = [:]
        var errors: [String: Int] = [:]
        var duration: [String: Histogram] = [:]
        var firstToken: [String: Histogram] = [:]
        var tokens: [String: Int] = [:]
        var cost: [String: Double] = [:]
        var clientGone: [String: Int] = [:]
        var inFlight = 0
    }

    private let state = Lock(State())
    static let endpoints: Set<String> = [
        "/v1/chat/completions", "/chat/completions", "/v1/responses", "/responses", "/v1/models", "/models", "/v1/messages",
        "/v1/messages/count_tokens", "/health", "/ready", "/metrics", "/v1/embeddings", "/embeddings",
    ]

    /// `name="value",...` with Prometheus' escapes (backslash, quote, newline).
    static func labels(_ pairs: [(String, String)]) -> String {
        pairs.map { k, v in
            var e = ""
            for c in v {
                switch c {
                case "\\": e += "\\\\"
                case "\"": e += "\\\""
                case "\n": e += "\\n"
                default: e.append(c)
                }
            }
            return "\(k)=\"\(e)\""
        }.joined(separator: ",")
    }

    func begin() { state.withLock { $0.inFlight += 1 } }

    /// Counts a finished request.
    func record(_ r: AccessRecord) {
        let endpoint = Self.endpoints.contains(r.path) ? r.path : Gateway.storedResponseID(r.path) != nil ? "/v1/responses/{id}" : "other"
        // Only a model the configuration resolved is a label value.
        let provider = r.provider ?? ""
        let model = r.provider == nil ? "" : (r.model ?? "")
        let key = r.key ?? ""
        let seconds = Self.seconds(ContinuousClock.now - r.start)
        let who = [("endpoint", endpoint), ("provider", provider), ("model", model), ("key", key)]
        let requestLabels = Self.labels(who + [("status", String(r.status))])
        let what = Self.labels([("provider", provider), ("model", model), ("key", key)])
        state.withLock { s in
            s.inFlight -= 1
            s.requests[requestLabels, default: 0] += 1
            if let kind = r.error { s.errors[Self.labels(who + [("kind", kind)]), default: 0] += 1 }
            s.duration[Self.labels([("endpoint", endpoint), ("provider", provider), ("model", model)]), default: Histogram()].observe(seconds)
            if let first = r.firstByte {
                let ttft = Self.seconds(first - r.start)
                s.firstToken[Self.labels([("endpoint", endpoint), ("provider", provider), ("model", model)]), default: Histogram()].observe(ttft)
            }
            if let u = r.usage {
                for (type, n) in [
                    ("input", u.inputTokens), ("output", u.outputTokens), ("cache_read", u.cacheReadTokens), ("cache_write", u.cacheWriteTokens),
                    ("reasoning", u.reasoningTokens),
                ] where n > 0 {
                    s.tokens[what + ",type=\"\(type)\"", default: 0] += n
                }
            }
            if let c = r.costUSD { s.cost[what, default: 0] += c }
            if r.clientGone { s.clientGone[Self.labels(who), default: 0] += 1 }
        }
    }

    static func seconds(_ d: Duration) -> Double {
        let (s, atto) = d.components
        return Double(s) + Double(atto) / 1e18
    }

    static func number(_ d: Double) -> String {
        if d == d.rounded() && abs(d) < 1e15 { return String(Int(d)) }
        return String(d)
    }

    /// The text exposition.
    /// The text of `GET /metrics`; `shared`: the shared store's counters
    /// when providers.yaml has a `shared:` section; `breakers`: the
    /// process's circuit breakers (`circuit_breakers:`), whose state is kept
    /// in step with the shared store's and decides alone while it is down.
    func render(shared: SharedStore.Stats? = nil, breakers: [CircuitBreaker] = []) -> String {
        let s = state.withLock { $0 }
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func counters<V>(_ name: String, _ values: [String: V], _ format: (V) -> String) {
            for (labels, v) in values.sorted(by: { $0.key < $1.key }) { out += "\(name){\(labels)} \(format(v))\n" }
        }
        func histograms(_ name: String, _ values: [String: Histogram]) {
            for (labels, h) in values.sorted(by: { $0.key < $1.key }) {
                for (i, b) in Self.buckets.enumerated() { out += "\(name)_bucket{\(labels),le=\"\(Self.number(b))\"} \(h.counts[i])\n" }
                out += "\(name)_bucket{\(labels),le=\"+Inf\"} \(h.count)\n"
                out += "\(name)_sum{\(labels)} \(Self.number(h.sum))\n"
                out += "\(name)_count{\(labels)} \(h.count)\n"
            }
        }
        family("descartes_gateway_requests_total", "counter", "Requests answered, by endpoint, provider, model, key name and HTTP status.")
        counters("descartes_gateway_requests_total", s.requests) { String($0) }
        family("descartes_gateway_errors_total", "counter", "Requests that failed, by error kind (the backend's, or the gateway's own: unauthorized, not_found, ...).")
        counters("descartes_gateway_errors_total", s.errors) { String($0) }
        family("descartes_gateway_request_duration_seconds", "histogram", "Time from the request to the end of its answer.")
        histograms("descartes_gateway_request_duration_seconds", s.duration)
        family("descartes_gateway_time_to_first_token_seconds", "histogram", "Streams: time from the request to its first content sent.")
        histograms("descartes_gateway_time_to_first_token_seconds", s.firstToken)
        family("descartes_gateway_tokens_total", "counter", "Tokens as the backends reported them, by type (input, output, cache_read, cache_write, reasoning).")
        counters("descartes_gateway_tokens_total", s.tokens) { String($0) }
        family("descartes_gateway_cost_usd_total", "counter", "Cost in US dollars of the answers whose cost is known (manifest prices).")
        counters("descartes_gateway_cost_usd_total", s.cost) { Self.number($0) }
        family("descartes_gateway_client_gone_total", "counter", "Streams whose client went away before the end (the upstream call was cancelled).")
        counters("descartes_gateway_client_gone_total", s.clientGone) { String($0) }
        family("descartes_gateway_requests_in_flight", "gauge", "Requests being answered now.")
        out += "descartes_gateway_requests_in_flight \(s.inFlight)\n"
        if let shared {
            family("descartes_shared_store_up", "gauge", "1 while the shared store (providers.yaml shared:) answers, 0 during an outage.")
            out += "descartes_shared_store_up \(shared.available ? 1 : 0)\n"
            family("descartes_shared_store_round_trips_total", "counter", "Round trips to the shared store that got their replies.")
            out += "descartes_shared_store_round_trips_total \(shared.roundTrips)\n"
            family("descartes_shared_store_failures_total", "counter", "Calls to the shared store that failed or were skipped during an outage.")
            out += "descartes_shared_store_failures_total \(shared.failures)\n"
            family("descartes_shared_store_outages_total", "counter", "Outages of the shared store (each told once in the log).")
            out += "descartes_shared_store_outages_total \(shared.outages)\n"
            family("descartes_shared_store_commands_total", "counter", "Commands those round trips carried (pipelined: several per round trip).")
            out += "descartes_shared_store_commands_total \(shared.commands)\n"
            family(
                "descartes_shared_store_after_answer_round_trips_total", "counter",
                "Of the round trips, those the background sender made with the writes that follow answers (off the requests' time).")
            out += "descartes_shared_store_after_answer_round_trips_total \(shared.afterRoundTrips)\n"
            family("descartes_shared_store_queued_commands_total", "counter", "Commands queued to be sent after an answer (cache entries, token corrections, debits).")
            out += "descartes_shared_store_queued_commands_total \(shared.queued)\n"
            family("descartes_shared_store_dropped_commands_total", "counter", "Of those, commands dropped because the queue was full.")
            out += "descartes_shared_store_dropped_commands_total \(shared.dropped)\n"
        }
        if !breakers.isEmpty {
            let sorted = breakers.sorted { $0.provider < $1.provider }
            family("descartes_circuit_breaker_state", "gauge", "1 for the state each provider's circuit breaker is in (closed, open, half_open), 0 for the others.")
            for b in sorted {
                let phase = b.phase
                for p in [CircuitBreaker.Phase.closed, .open, .halfOpen] {
                    out += "descartes_circuit_breaker_state{provider=\"\(b.provider)\",state=\"\(p.rawValue)\"} \(p == phase ? 1 : 0)\n"
                }
            }
            family("descartes_circuit_breaker_opened_total", "counter", "Times each provider's circuit breaker opened in this process.")
            for b in sorted { out += "descartes_circuit_breaker_opened_total{provider=\"\(b.provider)\"} \(b.stats.opened)\n" }
        }
        return out
    }
}
