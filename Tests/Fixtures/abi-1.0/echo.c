/*
 * EXAMPLE PLUGIN, written in plain C against descartes/plugin.h alone.
 *
 * It is the template a third party copies to add a provider: one file, no
 * Swift, built with
 *
 *     cc -std=c11 -shared -fPIC -fvisibility=hidden -pthread \
 *        $(pkg-config --cflags descartes-plugin) -o libdescartes-echo.so echo.c
 *
 * and installed with its manifest (echo.yaml) in a plugin directory. It is a
 * real backend, not a stub: it "answers" by streaming the last user message
 * back word by word, honours cancellation and deadlines, reports usage, and
 * follows every ownership and threading rule of the ABI. What a real provider
 * adds is the network (or child process) part inside `run_stream`.
 *
 * Structure, as the ABI asks:
 *   descartes_plugin_entry -> library (1 factory) -> echo_create -> backend vtable
 *   each operation: a `struct call` (reference-counted: one reference for the
 *   worker that delivers the terminal event, one for the host until `release`)
 *   and, for completions, one worker thread. A real plugin would use a shared
 *   event loop instead of a thread per call.
 */
#define _POSIX_C_SOURCE 200809L
#include <descartes/plugin.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------
 * A growable byte buffer, for building JSON.
 * ---------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static void buf_add(buf_t *b, const char *s, size_t n) {
    if (buf_reserve(b, n) != 0) return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_str(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

/* Appends s as a JSON string literal. */
static void buf_json_string(buf_t *b, const char *s, size_t n) {
    buf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        switch (c) {
        case '"': buf_add(b, "\\\"", 2); break;
        case '\\': buf_add(b, "\\\\", 2); break;
        case '\n': buf_add(b, "\\n", 2); break;
        case '\r': buf_add(b, "\\r", 2); break;
        case '\t': buf_add(b, "\\t", 2); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                buf_add(b, esc, 6);
            } else {
                buf_add(b, (const char *)&s[i], 1);
            }
        }
    }
    buf_add(b, "\"", 1);
}

/* ------------------------------------------------------------------------
 * Just enough JSON reading for this plugin: find a member in an object and
 * decode a string. (A real plugin would use a JSON library.)
 * ---------------------------------------------------------------------- */

typedef struct {
    const char *p, *end;
} scan_t;

static void skip_ws(scan_t *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) s->p++;
}

/* Skips one JSON value; returns 0 on success. */
static int skip_value(scan_t *s, int depth) {
    if (depth > 64) return -1;
    skip_ws(s);
    if (s->p >= s->end) return -1;
    char c = *s->p;
    if (c == '"') {
        for (s->p++; s->p < s->end; s->p++) {
            if (*s->p == '\\') { s->p++; continue; }
            if (*s->p == '"') { s->p++; return 0; }
        }
        return -1;
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        s->p++;
        skip_ws(s);
        if (s->p < s->end && *s->p == close) { s->p++; return 0; }
        for (;;) {
            if (c == '{') {
                if (skip_value(s, depth + 1) != 0) return -1; /* key */
                skip_ws(s);
                if (s->p >= s->end || *s->p != ':') return -1;
                s->p++;
            }
            if (skip_value(s, depth + 1) != 0) return -1;
            skip_ws(s);
            if (s->p >= s->end) return -1;
            if (*s->p == ',') { s->p++; continue; }
            if (*s->p == close) { s->p++; return 0; }
            return -1;
        }
    }
    /* number, true, false, null */
    while (s->p < s->end && strchr(",}] \n\r\t", *s->p) == NULL) s->p++;
    return 0;
}

/* Decodes the JSON string at s (which must point at '"') into a new
 * NUL-terminated buffer. \u escapes outside ASCII become '?' (enough here). */
static char *read_string(scan_t *s) {
    skip_ws(s);
    if (s->p >= s->end || *s->p != '"') return NULL;
    buf_t out = {0};
    buf_add(&out, "", 0);
    for (s->p++; s->p < s->end; s->p++) {
        char c = *s->p;
        if (c == '"') { s->p++; return out.data; }
        if (c != '\\') { buf_add(&out, &c, 1); continue; }
        if (++s->p >= s->end) break;
        switch (*s->p) {
        case 'n': buf_add(&out, "\n", 1); break;
        case 't': buf_add(&out, "\t", 1); break;
        case 'r': buf_add(&out, "\r", 1); break;
        case 'b': buf_add(&out, "\b", 1); break;
        case 'f': buf_add(&out, "\f", 1); break;
        case 'u': {
            if (s->p + 4 >= s->end) goto fail;
            unsigned v = 0;
            if (sscanf(s->p + 1, "%4x", &v) != 1) goto fail;
            char ch = v < 0x80 ? (char)v : '?';
            buf_add(&out, &ch, 1);
            s->p += 4;
            break;
        }
        default: buf_add(&out, s->p, 1);
        }
    }
fail:
    free(out.data);
    return NULL;
}

/* Positions s at the value of member `key` of the object at s. */
static int find_member(scan_t *s, const char *key) {
    skip_ws(s);
    if (s->p >= s->end || *s->p != '{') return -1;
    s->p++;
    for (;;) {
        skip_ws(s);
        if (s->p < s->end && *s->p == '}') return -1;
        char *k = read_string(s);
        if (!k) return -1;
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':') { free(k); return -1; }
        s->p++;
        int match = strcmp(k, key) == 0;
        free(k);
        if (match) { skip_ws(s); return 0; }
        if (skip_value(s, 0) != 0) return -1;
        skip_ws(s);
        if (s->p < s->end && *s->p == ',') { s->p++; continue; }
        return -1;
    }
}

/* The content of the last "user" message of a Request document. */
static char *last_user_message(const char *json, size_t len) {
    scan_t s = {json, json + len};
    if (find_member(&s, "messages") != 0 || *s.p != '[') return NULL;
    s.p++;
    char *last = NULL;
    for (;;) {
        skip_ws(&s);
        if (s.p >= s.end || *s.p == ']') break;
        scan_t m = s;
        char *role = NULL, *content = NULL;
        scan_t r = m;
        if (find_member(&r, "role") == 0) role = read_string(&r);
        scan_t c = m;
        if (find_member(&c, "content") == 0) content = read_string(&c);
        if (role && content && strcmp(role, "user") == 0) {
            free(last);
            last = content;
            content = NULL;
        }
        free(role);
        free(content);
        if (skip_value(&s, 0) != 0) break;
        skip_ws(&s);
        if (s.p < s.end && *s.p == ',') s.p++;
    }
    return last;
}

/* An integer member of the "deadlines" object, or -1. */
static long deadline_ms(const char *json, size_t len, const char *key) {
    scan_t s = {json, json + len};
    if (find_member(&s, "deadlines") != 0) return -1;
    if (find_member(&s, key) != 0) return -1;
    return strtol(s.p, NULL, 10);
}

/* ------------------------------------------------------------------------
 * The backend and its calls.
 * ---------------------------------------------------------------------- */

typedef struct echo_backend {
    descartes_backend_t base; /* first, so a descartes_backend_t* is an echo_backend* */
    const descartes_host_t *host;
    long delay_ms;            /* config "delay_ms": pause between words */
    char *prefix;             /* config "prefix": put before the answer */
    pthread_mutex_t lock;
    pthread_cond_t idle;      /* signalled whenever `workers` drops */
    int workers;              /* threads that may still touch this backend */
    int closing;
} echo_backend_t;

struct descartes_call {
    atomic_int refs; /* 2: the worker's (until the terminal event returned) and the host's (until release) */
    atomic_int cancelled;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    echo_backend_t *backend;
    descartes_event_fn on_event;
    void *ctx;
    char *input;
    size_t input_len;
    int op;
};

enum { OP_INITIALIZE, OP_HEALTH, OP_COMPLETE, OP_STREAM, OP_MODELS, OP_TOKENS, OP_SHUTDOWN };

static void log_msg(echo_backend_t *b, uint32_t level, const char *msg) {
    if (b->host && b->host->log) b->host->log(b->host, level, msg, strlen(msg));
}

static void call_unref(descartes_call_t *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1) {
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->wake);
        free(c->input);
        free(c);
    }
}

static void emit(descartes_call_t *c, uint32_t type, uint32_t index, const char *data, size_t len) {
    descartes_event_t e;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    e.type = type;
    e.index = index;
    e.data = data;
    e.data_length = len;
    c->on_event(c->ctx, &e);
}

/* Emits a NUL-terminated JSON document. */
static void emit_json(descartes_call_t *c, uint32_t type, const char *json) {
    emit(c, type, 0, json, strlen(json));
}

static void emit_error(descartes_call_t *c, const char *kind, const char *message) {
    buf_t b = {0};
    buf_str(&b, "{\"kind\":");
    buf_json_string(&b, kind, strlen(kind));
    buf_str(&b, ",\"message\":");
    buf_json_string(&b, message, strlen(message));
    buf_str(&b, "}");
    emit(c, DESCARTES_EVENT_ERROR, 0, b.data, b.len);
    free(b.data);
}

/* Waits up to ms milliseconds; returns 1 if the call was cancelled. */
static int pause_ms(descartes_call_t *c, long ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&c->lock);
    while (!atomic_load(&c->cancelled)) {
        if (pthread_cond_timedwait(&c->wake, &c->lock, &until) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&c->lock);
    return atomic_load(&c->cancelled);
}

/* True once shutdown has started: running calls stop early. */
static int is_closing(echo_backend_t *b) {
    pthread_mutex_lock(&b->lock);
    int closing = b->closing;
    pthread_mutex_unlock(&b->lock);
    return closing;
}

static size_t count_words(const char *s) {
    size_t n = 0;
    int in = 0;
    for (; *s; s++) {
        int space = *s == ' ' || *s == '\n' || *s == '\t';
        if (!space && !in) n++;
        in = !space;
    }
    return n;
}

/* Streams the last user message back, one word per TEXT event. */
static void run_stream(descartes_call_t *c) {
    echo_backend_t *b = c->backend;
    char *prompt = last_user_message(c->input, c->input_len);
    if (!prompt) {
        emit_error(c, "json", "the request has no user message");
        return;
    }
    long total_ms = deadline_ms(c->input, c->input_len, "total_ms");
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);

    emit_json(c, DESCARTES_EVENT_START, "{\"model\":\"echo-1\"}");
    if (b->prefix && *b->prefix) emit(c, DESCARTES_EVENT_TEXT, 0, b->prefix, strlen(b->prefix));

    size_t words = 0;
    const char *p = prompt;
    while (*p) {
        /* A word and the spaces before it form one fragment. */
        const char *w = p;
        while (*p == ' ' || *p == '\n' || *p == '\t') p++;
        while (*p && *p != ' ' && *p != '\n' && *p != '\t') p++;
        if (p == w) break;
        if (words > 0 && b->delay_ms > 0 && pause_ms(c, b->delay_ms)) {
            free(prompt);
            emit_error(c, "cancelled", "the request was cancelled");
            return;
        }
        if (atomic_load(&c->cancelled) || is_closing(b)) {
            free(prompt);
            emit_error(c, "cancelled", "the request was cancelled");
            return;
        }
        if (total_ms > 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
            if (elapsed > total_ms) {
                free(prompt);
                emit_error(c, "timeout", "the total deadline passed");
                return;
            }
        }
        emit(c, DESCARTES_EVENT_TEXT, 0, w, (size_t)(p - w));
        words++;
    }

    char result[256];
    int n = snprintf(result, sizeof result,
                     "{\"finish_reason\":\"stop\",\"model\":\"echo-1\","
                     "\"usage\":{\"input_tokens\":%zu,\"output_tokens\":%zu}}",
                     count_words(prompt), words);
    free(prompt);
    emit(c, DESCARTES_EVENT_RESULT, 0, result, (size_t)n);
}

static void run_tokens(descartes_call_t *c) {
    char *prompt = last_user_message(c->input, c->input_len);
    char result[160];
    int n = snprintf(result, sizeof result,
                     "{\"tokens\":%zu,\"exact\":true,\"method\":\"echo:words\"}",
                     prompt ? count_words(prompt) : 0);
    free(prompt);
    emit(c, DESCARTES_EVENT_RESULT, 0, result, (size_t)n);
}

static void worker_done(echo_backend_t *b) {
    pthread_mutex_lock(&b->lock);
    b->workers--;
    /* Every change: shutdown waits for 1 (itself), destroy for 0. */
    pthread_cond_broadcast(&b->idle);
    pthread_mutex_unlock(&b->lock);
}

static void *worker(void *arg) {
    descartes_call_t *c = arg;
    echo_backend_t *b = c->backend;
    switch (c->op) {
    case OP_COMPLETE:
    case OP_STREAM: run_stream(c); break;
    case OP_TOKENS: run_tokens(c); break;
    case OP_SHUTDOWN:
        /* Wait until every other worker has finished, then report. */
        pthread_mutex_lock(&b->lock);
        while (b->workers > 1) pthread_cond_wait(&b->idle, &b->lock);
        pthread_mutex_unlock(&b->lock);
        emit_json(c, DESCARTES_EVENT_RESULT, "{}");
        break;
    }
    call_unref(c); /* the worker's reference: the terminal event has returned */
    worker_done(b);
    return NULL;
}

static descartes_call_t *new_call(echo_backend_t *b, int op, const char *input, size_t len,
                                  descartes_event_fn on_event, void *ctx) {
    descartes_call_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    atomic_init(&c->refs, 2);
    atomic_init(&c->cancelled, 0);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->wake, NULL);
    c->backend = b;
    c->on_event = on_event;
    c->ctx = ctx;
    c->op = op;
    c->input = malloc(len + 1);
    if (!c->input) { free(c); return NULL; }
    if (len) memcpy(c->input, input, len); /* borrowed only for the call: copy */
    c->input[len] = '\0';
    c->input_len = len;
    return c;
}

/* Starts `op`: immediate answers are delivered on the caller's thread (the
 * ABI allows it), the rest on a worker thread. */
static descartes_call_t *start(descartes_backend_t *self, int op, const char *input, size_t len,
                               descartes_event_fn on_event, void *ctx) {
    echo_backend_t *b = (echo_backend_t *)self;
    descartes_call_t *c = new_call(b, op, input, len, on_event, ctx);
    if (!c) return NULL;

    pthread_mutex_lock(&b->lock);
    int closing = b->closing && op != OP_SHUTDOWN;
    if (op == OP_SHUTDOWN) b->closing = 1;
    pthread_mutex_unlock(&b->lock);
    if (closing) {
        emit_error(c, "backend", "the backend is shutting down");
        call_unref(c);
        return c;
    }

    switch (op) {
    case OP_INITIALIZE:
        emit_json(c, DESCARTES_EVENT_RESULT, "{\"message\":\"echo ready\"}");
        call_unref(c);
        return c;
    case OP_HEALTH:
        emit_json(c, DESCARTES_EVENT_RESULT, "{\"message\":\"echo is healthy\"}");
        call_unref(c);
        return c;
    case OP_MODELS: {
        emit_json(c, DESCARTES_EVENT_RESULT, "{\"models\":[{\"id\":\"echo-1\",\"context_length\":1000000}]}");
        call_unref(c);
        return c;
    }
    default: break;
    }

    pthread_mutex_lock(&b->lock);
    b->workers++;
    pthread_mutex_unlock(&b->lock);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, worker, c);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        worker_done(b);
        emit_error(c, "backend", "cannot start a worker thread");
        call_unref(c);
    }
    return c;
}

static descartes_call_t *op_initialize(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_INITIALIZE, i, n, f, c); }
static descartes_call_t *op_health(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_HEALTH, i, n, f, c); }
static descartes_call_t *op_complete(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_COMPLETE, i, n, f, c); }
static descartes_call_t *op_stream(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_STREAM, i, n, f, c); }
static descartes_call_t *op_models(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_MODELS, i, n, f, c); }
static descartes_call_t *op_tokens(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_TOKENS, i, n, f, c); }
static descartes_call_t *op_shutdown(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_SHUTDOWN, i, n, f, c); }

static void op_cancel(descartes_backend_t *self, descartes_call_t *c) {
    (void)self;
    pthread_mutex_lock(&c->lock);
    atomic_store(&c->cancelled, 1);
    pthread_cond_broadcast(&c->wake);
    pthread_mutex_unlock(&c->lock);
}

static void op_release(descartes_backend_t *self, descartes_call_t *c) {
    (void)self;
    call_unref(c); /* the host's reference */
}

static void op_destroy(descartes_backend_t *self) {
    echo_backend_t *b = (echo_backend_t *)self;
    /* Wait for workers still finishing (one may have just delivered a
     * terminal event and not yet returned). */
    pthread_mutex_lock(&b->lock);
    while (b->workers > 0) pthread_cond_wait(&b->idle, &b->lock);
    pthread_mutex_unlock(&b->lock);
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->idle);
    free(b->prefix);
    free(b);
}

/* ------------------------------------------------------------------------
 * Factory and entry point.
 * ---------------------------------------------------------------------- */

static void report(descartes_json_fn on_error, void *ctx, const char *kind, const char *message) {
    buf_t b = {0};
    buf_str(&b, "{\"kind\":");
    buf_json_string(&b, kind, strlen(kind));
    buf_str(&b, ",\"message\":");
    buf_json_string(&b, message, strlen(message));
    buf_str(&b, "}");
    if (on_error) on_error(ctx, b.data, b.len);
    free(b.data);
}

static descartes_backend_t *echo_create(const descartes_factory_t *self, const descartes_create_args_t *args,
                                        descartes_json_fn on_error, void *error_ctx) {
    (void)self;
    echo_backend_t *b = calloc(1, sizeof *b);
    if (!b) {
        report(on_error, error_ctx, "backend", "out of memory");
        return NULL;
    }
    b->host = args->host;
    b->delay_ms = 0;

    /* The host validated the config against echo.yaml: delay_ms is an
     * integer, prefix a string, when present. */
    if (args->config && args->config_length) {
        scan_t s = {args->config, args->config + args->config_length};
        if (find_member(&s, "delay_ms") == 0) b->delay_ms = strtol(s.p, NULL, 10);
        scan_t p = {args->config, args->config + args->config_length};
        if (find_member(&p, "prefix") == 0) b->prefix = read_string(&p);
    }
    if (b->delay_ms < 0 || b->delay_ms > 60000) {
        free(b->prefix);
        free(b);
        report(on_error, error_ctx, "config", "key 'delay_ms' must be between 0 and 60000");
        return NULL;
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->idle, NULL);

    b->base.struct_size = sizeof(descartes_backend_t);
    b->base.plugin_data = b;
    b->base.initialize = op_initialize;
    b->base.health_check = op_health;
    b->base.complete = op_complete;
    b->base.stream = op_stream;
    b->base.list_models = op_models;
    b->base.estimate_tokens = op_tokens;
    b->base.shutdown = op_shutdown;
    b->base.cancel = op_cancel;
    b->base.release = op_release;
    b->base.get_extension = NULL;
    b->base.destroy = op_destroy;
    log_msg(b, DESCARTES_LOG_DEBUG, "echo backend created");
    return &b->base;
}

static const descartes_factory_t echo_factory = {
    sizeof(descartes_factory_t),
    "echo",
    "Example plugin in C: streams the prompt back word by word",
    echo_create,
};

static const descartes_factory_t *const factories[] = {&echo_factory};

static const descartes_library_t library = {
    sizeof(descartes_library_t),
    1, /* ABI version implemented */
    "echo",
    "1.0.0",
    1,
    factories,
    NULL, /* unload: nothing to do */
};

DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(uint32_t host_abi_version,
                                                                   const descartes_host_t *host) {
    (void)host;
    if (host_abi_version < 1) return NULL; /* we implement version 1 only */
    return &library;
}
