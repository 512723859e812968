/*
 * EXAMPLE PLUGIN, written in plain C against descartes/plugin.h alone.
 *
 * It is the template a third party copies to add a provider: one file, no
 * Swift, built with
 *
 *     cc -std=c11 -shared -fPIC -fvisibility=hidden -pthread \
 *        $(pkg-config --cflags descartes-plugin) -o libdescartes-echo.so echo.c
 *
 * It reads and writes JSON with descartes/json.h, the helpers installed
 * beside plugin.h (header-only: nothing to link). openai-c.c, the second
 * example, adds the network: libcurl, server-sent events, error mapping.
 *
 * and installed with its manifest (echo.yaml) in a plugin directory. It is a
 * real backend, not a stub: it "answers" by streaming the last user message
 * back word by word, honours cancellation and deadlines, reports usage, and
 * follows every ownership and threading rule of the ABI. What a real provider
 * adds is the network (or child process) part inside `run_stream`
 * (openai-c.c shows it).
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
#include <descartes/json.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The content of the last "user" message of a Request document. */
static char *last_user_message(dk_json request) {
    dk_json m = {0};
    char *last = NULL;
    while (dk_json_next(dk_json_get(request, "messages"), &m, NULL)) {
        char *content = dk_json_eq(dk_json_get(m, "role"), "user") ? dk_json_str(dk_json_get(m, "content")) : NULL;
        if (content) {
            free(last);
            last = content;
        }
    }
    return last;
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

/* An Error document: {"kind": ..., "message": ...}. */
static void error_doc(dk_buf *b, const char *kind, const char *message) {
    dk_put_open(b, '{');
    dk_put_kstr(b, "kind", kind);
    dk_put_kstr(b, "message", message);
    dk_put_close(b, '}');
}

static void emit_error(descartes_call_t *c, const char *kind, const char *message) {
    dk_buf b = {0};
    error_doc(&b, kind, message);
    emit(c, DESCARTES_EVENT_ERROR, 0, b.data, b.len);
    dk_buf_free(&b);
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
    dk_json request = dk_json_parse(c->input, c->input_len);
    char *prompt = last_user_message(request);
    if (!prompt) {
        emit_error(c, "json", "the request has no user message");
        return;
    }
    long long total_ms = -1; /* the request's total deadline, if any */
    dk_json_int(dk_json_path(request, "deadlines.total_ms"), &total_ms);
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
    char *prompt = last_user_message(dk_json_parse(c->input, c->input_len));
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
    dk_buf b = {0};
    error_doc(&b, kind, message);
    if (on_error) on_error(ctx, b.data, b.len);
    dk_buf_free(&b);
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
    dk_json config = dk_json_parse(args->config, args->config_length);
    long long delay_ms = 0;
    dk_json_int(dk_json_get(config, "delay_ms"), &delay_ms);
    b->delay_ms = delay_ms > 60000 ? 60001 : (long)delay_ms;
    b->prefix = dk_json_str(dk_json_get(config, "prefix"));
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
