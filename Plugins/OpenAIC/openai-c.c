/*
 * EXAMPLE PLUGIN: a client of any OpenAI-compatible chat-completions server
 * (OpenAI, vLLM, llama.cpp's server, a gateway) in plain C over libcurl: it
 * streams server-sent events and maps HTTP and transport failures to the
 * ABI's error kinds (docs/abi.md, "Which kind"), with the helpers installed
 * beside plugin.h (descartes/json.h, descartes/sse.h). docs/writing-a-plugin.md
 * ("An HTTP plugin in C") builds it and runs the conformance suite on it.
 * Config: endpoint (".../v1"), api_key, model. Each call runs on a thread of
 * its own driving one libcurl transfer, waking every 100 ms to see cancel and
 * shutdown (many calls in flight would share one curl_multi loop instead).
 * FAULT(name) is 0 unless built with -DOPENAI_C_FAULTS: then OPENAI_C_FAULT=name
 * turns one mistake on, for the conformance suite or a sanitizer to catch
 * (docs/conformance.md lists them). Delete them in your copy.
 */
#define _POSIX_C_SOURCE 200809L
#include <descartes/plugin.h>
#include <descartes/json.h>
#include <descartes/sse.h>
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <strings.h>
#include <time.h>

#ifdef OPENAI_C_FAULTS
#define FAULT(name) (getenv("OPENAI_C_FAULT") && strcmp(getenv("OPENAI_C_FAULT"), name) == 0)
#else
#define FAULT(name) 0
#endif

typedef struct backend {
    descartes_backend_t base; /* first: a descartes_backend_t* is a backend_t* */
    char *endpoint, *key, *model;
    pthread_mutex_t lock; /* guards workers */
    pthread_cond_t idle;  /* signalled when `workers` changes */
    int workers;          /* threads that may still touch the backend */
    atomic_int closing;  /* shutdown started: calls in flight end as cancelled */
} backend_t;

enum { OP_INITIALIZE, OP_COMPLETE, OP_STREAM, OP_SHUTDOWN }; /* complete and stream: the same request */

struct descartes_call {
    atomic_int refs, cancelled; /* refs: the worker's (until its terminal event returned) and the host's (until release) */
    backend_t *b;
    int op;
    descartes_event_fn on_event;
    void *ctx;
    char *input; /* the Request, copied */
    size_t input_len;
    /* The answer, as libcurl's callbacks see it (on the worker thread). */
    long status, retry_after_ms;
    dk_sse sse;        /* a 200 answer */
    dk_buf body;       /* any other answer: an error */
    dk_buf error;      /* the Error document the stream ended with */
    int chunks, done; /* chunks seen; [DONE] seen */
    char *finish, *model, *id;
    long long in_tokens, out_tokens;
};

static void emit(descartes_call_t *c, uint32_t type, const char *data, size_t n) {
    descartes_event_t e = {.struct_size = sizeof e, .type = type, .data = data, .data_length = n};
    c->on_event(c->ctx, &e); /* for this call, one at a time: only its worker thread emits */
}

/* An Error document {"kind", "message", key?: value} into out, left open
 * for more members: close it with dk_put_close(out, '}'). */
static void error_open(dk_buf *out, const char *kind, const char *message, const char *key, const char *value) {
    dk_buf_clear(out);
    dk_put_open(out, '{');
    dk_put_kstr(out, "kind", kind);
    dk_put_kstr(out, "message", message);
    if (key && value) dk_put_kstr(out, key, value);
}

static void emit_error(descartes_call_t *c, const char *kind, const char *message, const char *key, const char *value) {
    dk_buf doc = {0};
    error_open(&doc, kind, message, key, value);
    dk_put_close(&doc, '}');
    emit(c, DESCARTES_EVENT_ERROR, doc.data, doc.len);
    dk_buf_free(&doc);
}

static void unref(descartes_call_t *c) {
    if (atomic_fetch_sub(&c->refs, 1) != 1) return;
    free(c->input), free(c->finish), free(c->model), free(c->id);
    dk_buf_free(&c->body), dk_buf_free(&c->error), dk_sse_free(&c->sse);
    free(c);
}

/* What one chunk of the stream says: text, and for the RESULT the model,
 * id, finish reason and usage (START is optional: RESULT says it all). */
static void note_chunk(descartes_call_t *c, dk_json doc) {
    dk_json choice = dk_json_path(doc, "choices[0]"), usage = dk_json_get(doc, "usage");
    if (!c->chunks++) c->model = dk_json_str(dk_json_get(doc, "model")), c->id = dk_json_str(dk_json_get(doc, "id"));
    char *finish = dk_json_str(dk_json_get(choice, "finish_reason"));
    if (finish) free(c->finish), c->finish = finish;
    dk_json_int(dk_json_get(usage, "prompt_tokens"), &c->in_tokens);
    dk_json_int(dk_json_get(usage, "completion_tokens"), &c->out_tokens);
    size_t n = 0;
    char *text = dk_json_strn(dk_json_path(choice, "delta.content"), &n);
    if (n) emit(c, DESCARTES_EVENT_TEXT, text, n);
    free(text);
    if (n && c->op == OP_STREAM && FAULT("crash-stream")) raise(SIGSEGV); /* a stream crashes after its first text */
}

/* One server-sent event: a chunk, an error in a 200 stream, or [DONE]. */
static int on_sse(void *arg, const dk_sse_event *e) {
    descartes_call_t *c = arg;
    if (strcmp(e->data, "[DONE]") == 0) return c->done = 1, 0;
    dk_json doc = dk_json_parse(e->data, e->data_len);
    char excerpt[81];
    snprintf(excerpt, sizeof excerpt, "%.80s", e->data);
    if (!doc.p) {
        error_open(&c->error, "invalid_response", "a stream event is not JSON", "excerpt", excerpt);
    } else if (dk_json_get(doc, "error").p) {
        char *message = dk_json_str(dk_json_path(doc, "error.message"));
        dk_json type = dk_json_path(doc, "error.type");
        int quota = dk_json_eq(type, "rate_limit_error") || dk_json_eq(type, "insufficient_quota");
        error_open(&c->error, quota ? "rate_limited" : "api", message ? message : excerpt, NULL, NULL);
        free(message);
    } else {
        note_chunk(c, doc);
        return 0;
    }
    dk_put_close(&c->error, '}');
    return 1; /* stops the transfer */
}

static size_t on_body(char *data, size_t size, size_t count, void *arg) {
    descartes_call_t *c = arg;
    size_t n = size * count;
    if (c->status == 200) {
        int rc = dk_sse_feed(&c->sse, data, n, on_sse, c);
        if (rc < 0) error_open(&c->error, "invalid_response", "a stream event is over 8 MiB", NULL, NULL), dk_put_close(&c->error, '}');
        return rc ? 0 : n; /* 0: libcurl stops with CURLE_WRITE_ERROR */
    }
    if (c->body.len + n > ((size_t)64 << 20)) return 0; /* bounded */
    return dk_buf_add(&c->body, data, n) == 0 ? n : 0;
}

static size_t on_header(char *data, size_t size, size_t count, void *arg) {
    descartes_call_t *c = arg;
    size_t n = size * count;
    char h[128] = ""; /* the line, NUL-terminated (libcurl's is not) */
    memcpy(h, data, n < sizeof h - 1 ? n : sizeof h - 1);
    if (strncmp(h, "HTTP/", 5) == 0) /* a new head (after a 100 Continue, say) */
        c->status = strtol(h + strcspn(h, " "), NULL, 10), c->retry_after_ms = -1;
    else if (strncasecmp(h, "retry-after-ms:", 15) == 0)
        c->retry_after_ms = strtol(h + 15, NULL, 10);
    else if (strncasecmp(h, "retry-after:", 12) == 0 && c->retry_after_ms < 0 && strtol(h + 12, NULL, 10) > 0)
        c->retry_after_ms = strtol(h + 12, NULL, 10) * 1000; /* seconds; an HTTP date is ignored */
    return n;
}

/* A status other than 200, as the table in docs/abi.md says. */
static void emit_http_error(descartes_call_t *c) {
    dk_json err = dk_json_get(dk_json_parse(c->body.data, c->body.len), "error");
    char *message = dk_json_str(dk_json_get(err, "message")), *code = dk_json_str(dk_json_get(err, "code"));
    if (!code) code = dk_json_str(dk_json_get(err, "type"));
    long s = c->status;
    int bad_key = code && (strcmp(code, "invalid_api_key") == 0 || strcmp(code, "API_KEY_INVALID") == 0);
    const char *kind = s == 401 || s == 403 || bad_key ? "authentication" : s == 429 ? "rate_limited"
                       : s == 408 || s >= 500 ? "provider_unavailable" : s >= 400 ? "api" : "http"; /* 3xx: never followed */
    char fallback[64];
    snprintf(fallback, sizeof fallback, "HTTP %ld from the server", s);
    dk_buf doc = {0};
    error_open(&doc, kind, message ? message : fallback, "provider_type", code);
    dk_put_kint(&doc, "status", s);
    if (s == 429 && c->retry_after_ms >= 0) dk_put_kint(&doc, "retry_after_ms", c->retry_after_ms);
    dk_put_close(&doc, '}');
    emit(c, DESCARTES_EVENT_ERROR, doc.data, doc.len);
    dk_buf_free(&doc), free(message), free(code);
}

/* The request body: the ABI's Request in OpenAI's words. */
static void build_body(descartes_call_t *c, dk_json req, dk_buf *out) {
    static const char *const keep[] = {"role", "content", "name", "tool_call_id"};
    static const char *const pass[] = {"max_tokens", "temperature", "top_p", "stop", "seed"};
    dk_json model = dk_json_get(req, "model"), system = dk_json_get(req, "system"), m = {0};
    dk_put_open(out, '{');
    if (model.p) dk_put_kraw(out, "model", model.p, model.n);
    else dk_put_kstr(out, "model", c->b->model);
    dk_put_key(out, "messages");
    dk_put_open(out, '[');
    if (system.p && !FAULT("no-system")) { /* the Request's system prompt is OpenAI's first message */
        dk_put_open(out, '{'), dk_put_kstr(out, "role", "system");
        dk_put_kraw(out, "content", system.p, system.n), dk_put_close(out, '}');
    }
    while (dk_json_next(dk_json_get(req, "messages"), &m, NULL)) {
        dk_put_open(out, '{');
        for (size_t i = 0; i < sizeof keep / sizeof *keep; i++) {
            dk_json v = dk_json_get(m, keep[i]);
            if (v.p) dk_put_kraw(out, keep[i], v.p, v.n);
        }
        dk_put_close(out, '}');
    }
    dk_put_close(out, ']');
    for (size_t i = 0; i < sizeof pass / sizeof *pass; i++) {
        dk_json v = dk_json_get(req, pass[i]);
        if (v.p && !(i == 0 && FAULT("no-max-tokens"))) dk_put_kraw(out, pass[i], v.p, v.n);
    }
    dk_put_kraw(out, "stream", "true", 4);
    dk_put_kraw(out, "stream_options", "{\"include_usage\":true}", 22);
    dk_put_close(out, '}');
}

/* The transfer: libcurl's result; *stopped when cancel or shutdown ended it first. */
static CURLcode transfer(descartes_call_t *c, const char *url, const char *auth, dk_buf *body, long long total_ms,
                         long long connect_ms, int *stopped, int *connected) {
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (auth && !FAULT("no-key")) headers = curl_slist_append(headers, auth);
    CURL *h = curl_easy_init();
    CURLM *multi = curl_multi_init();
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body->data);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)body->len);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (total_ms > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)total_ms);
    if (connect_ms > 0) curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms);
    curl_multi_add_handle(multi, h);
    int running = 1, msgs;
    while (running && !(*stopped = (atomic_load(&c->cancelled) && !FAULT("ignore-cancel")) || atomic_load(&c->b->closing))) {
        if (curl_multi_perform(multi, &running) != CURLM_OK) break;
        if (running) curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    CURLcode rc = CURLE_OK;
    for (CURLMsg *msg; (msg = curl_multi_info_read(multi, &msgs)) != NULL;)
        if (msg->msg == CURLMSG_DONE) rc = msg->data.result;
    curl_off_t connect_time = 0;
    curl_easy_getinfo(h, CURLINFO_CONNECT_TIME_T, &connect_time);
    *connected = connect_time > 0;
    curl_multi_remove_handle(multi, h);
    curl_easy_cleanup(h), curl_multi_cleanup(multi), curl_slist_free_all(headers);
    return rc;
}

/* Runs one completion: exactly one terminal event. */
static void run_completion(descartes_call_t *c) {
    backend_t *b = c->b;
    dk_json req = dk_json_parse(c->input, c->input_len);
    long long total_ms = 0, connect_ms = 0;
    dk_json_int(dk_json_path(req, "deadlines.total_ms"), &total_ms);
    dk_json_int(dk_json_path(req, "deadlines.connect_ms"), &connect_ms);
    dk_buf body = {0}, url = {0}, auth = {0};
    build_body(c, req, &body);
    dk_buf_printf(&url, "%s/chat/completions", b->endpoint);
    dk_buf_printf(&auth, "Authorization: Bearer %s", b->key ? b->key : "");
    int stopped = 0, connected = 0;
    CURLcode rc = CURLE_OK;
    if (req.p && !body.failed && !url.failed && !auth.failed)
        rc = transfer(c, url.data, b->key && *b->key ? auth.data : NULL, &body, total_ms, connect_ms, &stopped, &connected);
    if (auth.len) memset(auth.data, 0, auth.len); /* the key */
    dk_buf_free(&auth), dk_buf_free(&url);
    if (!req.p || body.failed) {
        emit_error(c, "json", req.p ? "out of memory" : "the request is not JSON", NULL, NULL);
    } else if (stopped) {
        emit_error(c, "cancelled", "the request was cancelled", NULL, NULL);
    } else if (c->error.len) { /* the stream said what went wrong */
        emit(c, DESCARTES_EVENT_ERROR, c->error.data, c->error.len);
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        int at_connect = !connected && connect_ms > 0 && (total_ms == 0 || connect_ms < total_ms);
        emit_error(c, "timeout", "the request's deadline passed", "deadline", at_connect ? "connect" : "total");
    } else if (rc != CURLE_OK) {
        char message[600];
        snprintf(message, sizeof message, "%s: %s", b->endpoint, curl_easy_strerror(rc));
        int tls = rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION;
        emit_error(c, tls ? "http" : c->status == 0 ? "provider_unavailable" : "stream_closed", message, NULL, NULL);
    } else if (c->status != 200) {
        emit_http_error(c);
    } else if (!c->chunks && !c->done) {
        emit_error(c, "invalid_response", "a 200 answer without server-sent events", NULL, NULL);
    } else if ((dk_sse_finish(&c->sse) || !c->done) && !c->finish) {
        emit_error(c, "stream_closed", "the stream ended before its last event", NULL, NULL);
    } else {
        const char *f = !c->finish || strcmp(c->finish, "stop") == 0 ? "stop"
                        : strcmp(c->finish, "length") == 0           ? "max_tokens"
                        : strcmp(c->finish, "tool_calls") == 0       ? "tool_use"
                                                                     : c->finish;
        char usage[96];
        int un = snprintf(usage, sizeof usage, "{\"input_tokens\":%lld,\"output_tokens\":%lld}", c->in_tokens, c->out_tokens);
        dk_buf result = {0};
        dk_put_open(&result, '{');
        dk_put_kstr(&result, "finish_reason", f);
        if (c->model) dk_put_kstr(&result, "model", c->model);
        if (c->id) dk_put_kstr(&result, "id", c->id);
        if (c->in_tokens || c->out_tokens) dk_put_kraw(&result, "usage", usage, (size_t)un);
        dk_put_close(&result, '}');
        for (int i = FAULT("double-terminal") ? 2 : 1; i > 0; i--) emit(c, DESCARTES_EVENT_RESULT, result.data, result.len);
        dk_buf_free(&result);
    }
    dk_buf_free(&body);
}

/* +1 before a worker thread starts, -1 when it can no longer touch b. */
static void count_worker(backend_t *b, int delta) {
    pthread_mutex_lock(&b->lock);
    b->workers += delta;
    pthread_cond_broadcast(&b->idle); /* shutdown waits for 1 (itself), destroy for 0 */
    pthread_mutex_unlock(&b->lock);
}

static void *worker(void *arg) {
    descartes_call_t *c = arg;
    backend_t *b = c->b;
    if (c->op == OP_SHUTDOWN) { /* after every other call */
        pthread_mutex_lock(&b->lock);
        while (b->workers > 1) pthread_cond_wait(&b->idle, &b->lock);
        pthread_mutex_unlock(&b->lock);
    }
    if (c->op == OP_INITIALIZE || c->op == OP_SHUTDOWN) emit(c, DESCARTES_EVENT_RESULT, "{}", 2);
    else run_completion(c);
    unref(c); /* the worker's reference: the terminal event has returned */
    if (FAULT("uaf-destroy")) nanosleep(&(struct timespec){0, 20000000}, NULL);
    count_worker(b, -1);
    return NULL;
}

/* Starts a call: never blocks, the work is on the worker thread. */
static descartes_call_t *start(descartes_backend_t *self, int op, const char *in, size_t n, descartes_event_fn f, void *ctx) {
    backend_t *b = (backend_t *)self;
    descartes_call_t *c = calloc(1, sizeof *c);
    if (!c || !(c->input = malloc(n + 1))) return free(c), NULL;
    memcpy(c->input, in, n); /* borrowed only during this call: copy */
    c->input[n] = '\0', c->input_len = n;
    atomic_init(&c->refs, 2), atomic_init(&c->cancelled, 0);
    c->b = b, c->on_event = f, c->ctx = ctx, c->op = op;
    if (op == OP_SHUTDOWN) atomic_store(&b->closing, 1);
    count_worker(b, 1);
    pthread_t t;
    if (pthread_create(&t, NULL, worker, c) == 0) return pthread_detach(t), c;
    count_worker(b, -1);
    emit_error(c, "backend", "cannot start a thread", NULL, NULL);
    unref(c);
    return c;
}

static descartes_call_t *op_initialize(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_INITIALIZE, i, n, f, c); }
static descartes_call_t *op_complete(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_COMPLETE, i, n, f, c); }
static descartes_call_t *op_stream(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_STREAM, i, n, f, c); }
static descartes_call_t *op_shutdown(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_SHUTDOWN, i, n, f, c); }
static void op_cancel(descartes_backend_t *self, descartes_call_t *c) { (void)self, atomic_store(&c->cancelled, 1); }
static void op_release(descartes_backend_t *self, descartes_call_t *c) { (void)self, unref(c); }

static void free_backend(backend_t *b) { free(b->endpoint), free(b->key), free(b->model), free(b); }

static void op_destroy(descartes_backend_t *self) {
    backend_t *b = (backend_t *)self;
    pthread_mutex_lock(&b->lock); /* a worker may still be returning from its terminal event */
    while (b->workers > 0 && !FAULT("uaf-destroy")) pthread_cond_wait(&b->idle, &b->lock);
    pthread_mutex_unlock(&b->lock);
    pthread_mutex_destroy(&b->lock), pthread_cond_destroy(&b->idle), free_backend(b);
}

static descartes_backend_t *create(const descartes_factory_t *f, const descartes_create_args_t *a, descartes_json_fn on_error, void *ectx) {
    (void)f;
    dk_json config = dk_json_parse(a->config, a->config_length);
    backend_t *b = calloc(1, sizeof *b);
    const char *problem = NULL;
    if (!b) return on_error(ectx, "{\"kind\":\"backend\",\"message\":\"out of memory\"}", 44), NULL;
    b->endpoint = dk_json_str(dk_json_get(config, "endpoint"));
    b->key = dk_json_str(dk_json_get(config, "api_key"));
    b->model = dk_json_str(dk_json_get(config, "model"));
    size_t n = b->endpoint ? strlen(b->endpoint) : 0;
    while (n && b->endpoint[n - 1] == '/') b->endpoint[--n] = '\0';
    if (n == 0 || (strncmp(b->endpoint, "http://", 7) != 0 && strncmp(b->endpoint, "https://", 8) != 0))
        problem = "key 'endpoint': must be an http:// or https:// URL";
    else if (!b->model)
        problem = "key 'model': missing (the manifest gives it a default)";
    if (problem) {
        dk_buf err = {0};
        error_open(&err, "config", problem, NULL, NULL);
        dk_put_close(&err, '}');
        on_error(ectx, err.data, err.len);
        return dk_buf_free(&err), free_backend(b), NULL;
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->idle, NULL);
    /* complete is stream's request: the host assembles the answer from TEXT events either way.
     * health_check, list_models, estimate_tokens: NULL, the host's defaults. */
    b->base = (descartes_backend_t){.struct_size = sizeof b->base, .plugin_data = b, .initialize = op_initialize,
        .complete = op_complete, .stream = op_stream, .shutdown = op_shutdown, .cancel = op_cancel, .release = op_release, .destroy = op_destroy};
    return &b->base;
}

static const descartes_factory_t factory = {sizeof(descartes_factory_t), "openai", "OpenAI-compatible chat completions, in C over libcurl", create};
static const descartes_factory_t *const factories[] = {&factory};
static const descartes_library_t library = {sizeof(descartes_library_t), 1, "openai-c", "1.0.0", 1, factories, NULL};

DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(uint32_t host_abi_version, const descartes_host_t *host) {
    if ((void)host, FAULT("crash-entry")) raise(SIGSEGV); /* loading the library kills its process */
    if (host_abi_version < 1 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return NULL;
    return &library;
}
