/* Test fixture: a plugin that breaks the ABI's rules on purpose, so the
 * conformance suite can be seen to catch each break. Config "breaks" is a
 * string naming what to do wrong, any of:
 *   after-terminal   a TEXT event after the RESULT
 *   two-terminals    a second RESULT after the first
 *   ignore-cancel    cancel does nothing; a stream whose prompt is "slow"
 *                    sends one word, then finishes 4 s later regardless
 *   log-secret       logs its api_key at debug level
 *   blocking-start   complete's and stream's functions do the whole call on
 *                    the caller's thread after a 300 ms "connect", events
 *                    and all, before returning (the ABI's first rule broken)
 *   crash-stream     stream crashes the process (SIGSEGV)
 * Built with -DRULEBREAKER_CRASH_IN_ENTRY, descartes_plugin_entry itself
 * crashes (SIGSEGV), before the host learns anything about the library.
 * Every call runs on a thread of its own; everything else follows the ABI
 * (release after the terminal event, shutdown waits for its calls, destroy
 * for its threads). Never installed. */
#define _GNU_SOURCE
#include <descartes/plugin.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    descartes_backend_t base;
    const descartes_host_t *host;
    char breaks[256];
    char key[256];
    pthread_mutex_t lock;
    pthread_cond_t idle;
    int workers;
} backend_t;

struct descartes_call {
    atomic_int refs;
    atomic_int cancelled;
    backend_t *b;
    descartes_event_fn on_event;
    void *ctx;
    int op;
    int slow;
};

enum { OP_INIT, OP_STREAM, OP_SHUTDOWN, OP_OTHER };

static int breaks(backend_t *b, const char *what) { return strstr(b->breaks, what) != NULL; }

static void unref(descartes_call_t *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1) free(c);
}

static void emit(descartes_call_t *c, uint32_t type, const char *data) {
    descartes_event_t e;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    e.type = type;
    e.data = data;
    e.data_length = strlen(data);
    c->on_event(c->ctx, &e);
}

static void *worker(void *arg) {
    descartes_call_t *c = arg;
    backend_t *b = c->b;
    switch (c->op) {
    case OP_STREAM:
        if (c->slow) {
            emit(c, DESCARTES_EVENT_TEXT, "first");
            for (int i = 0; i < 400; i++) {
                if (atomic_load(&c->cancelled) && !breaks(b, "ignore-cancel")) break;
                usleep(10000);
            }
            if (atomic_load(&c->cancelled) && !breaks(b, "ignore-cancel")) {
                emit(c, DESCARTES_EVENT_ERROR, "{\"kind\":\"cancelled\",\"message\":\"cancelled\"}");
                break;
            }
            emit(c, DESCARTES_EVENT_RESULT, "{\"finish_reason\":\"stop\"}");
            break;
        }
        emit(c, DESCARTES_EVENT_TEXT, "one");
        emit(c, DESCARTES_EVENT_TEXT, " two");
        emit(c, DESCARTES_EVENT_RESULT, "{\"finish_reason\":\"stop\"}");
        if (breaks(b, "after-terminal")) emit(c, DESCARTES_EVENT_TEXT, " late");
        if (breaks(b, "two-terminals")) emit(c, DESCARTES_EVENT_RESULT, "{\"finish_reason\":\"stop\"}");
        break;
    case OP_SHUTDOWN:
        pthread_mutex_lock(&b->lock);
        while (b->workers > 1) pthread_cond_wait(&b->idle, &b->lock);
        pthread_mutex_unlock(&b->lock);
        emit(c, DESCARTES_EVENT_RESULT, "{}");
        break;
    default:
        if (breaks(b, "log-secret") && b->host && b->host->log) {
            char line[300];
            snprintf(line, sizeof line, "using key %s", b->key);
            b->host->log(b->host, DESCARTES_LOG_DEBUG, line, strlen(line));
        }
        emit(c, DESCARTES_EVENT_RESULT, "{}");
    }
    unref(c);
    pthread_mutex_lock(&b->lock);
    b->workers--;
    pthread_cond_broadcast(&b->idle);
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

static descartes_call_t *start(descartes_backend_t *self, int op, const char *in, size_t n, descartes_event_fn f, void *ctx) {
    backend_t *b = (backend_t *)self;
    descartes_call_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    atomic_init(&c->refs, 2);
    atomic_init(&c->cancelled, 0);
    c->b = b;
    c->on_event = f;
    c->ctx = ctx;
    c->op = op;
    /* The prompt "slow" asks for a slow stream. */
    c->slow = op == OP_STREAM && n > 0 && memmem(in, n, "\"content\":\"slow\"", 16) != NULL;
    pthread_mutex_lock(&b->lock);
    b->workers++;
    pthread_mutex_unlock(&b->lock);
    if (op == OP_STREAM && breaks(b, "crash-stream")) raise(SIGSEGV);
    if (op == OP_STREAM && breaks(b, "blocking-start")) {
        /* The handle is the caller's once this returns; the worker's own
         * reference is given back as it ends, as on a thread. */
        usleep(300000);
        worker(c);
        return c;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, worker, c) != 0) {
        pthread_mutex_lock(&b->lock);
        b->workers--;
        pthread_mutex_unlock(&b->lock);
        free(c);
        return NULL;
    }
    pthread_detach(t);
    return c;
}

static descartes_call_t *op_init(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_INIT, i, n, f, c); }
static descartes_call_t *op_stream(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_STREAM, i, n, f, c); }
static descartes_call_t *op_shutdown(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, OP_SHUTDOWN, i, n, f, c); }

static void op_cancel(descartes_backend_t *self, descartes_call_t *c) {
    (void)self;
    atomic_store(&c->cancelled, 1);
}

static void op_release(descartes_backend_t *self, descartes_call_t *c) {
    (void)self;
    unref(c);
}

static void op_destroy(descartes_backend_t *self) {
    backend_t *b = (backend_t *)self;
    pthread_mutex_lock(&b->lock);
    while (b->workers > 0) pthread_cond_wait(&b->idle, &b->lock);
    pthread_mutex_unlock(&b->lock);
    free(b);
}

/* Copies the string value of "key" in a flat JSON object (enough here). */
static void member(const char *json, size_t n, const char *key, char *out, size_t cap) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *p = memmem(json, n, pattern, strlen(pattern));
    out[0] = '\0';
    if (!p) return;
    p += strlen(pattern);
    size_t i = 0;
    while (p < json + n && *p != '"' && i + 1 < cap) out[i++] = *p++;
    out[i] = '\0';
}

static descartes_backend_t *create(const descartes_factory_t *f, const descartes_create_args_t *a, descartes_json_fn on_error, void *ectx) {
    (void)f;
    (void)on_error;
    (void)ectx;
    backend_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->host = a->host;
    member(a->config, a->config_length, "breaks", b->breaks, sizeof b->breaks);
    member(a->config, a->config_length, "api_key", b->key, sizeof b->key);
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->idle, NULL);
    b->base.struct_size = sizeof(descartes_backend_t);
    b->base.initialize = op_init;
    b->base.complete = op_stream;
    b->base.stream = op_stream;
    b->base.shutdown = op_shutdown;
    b->base.cancel = op_cancel;
    b->base.release = op_release;
    b->base.destroy = op_destroy;
    return &b->base;
}

static const descartes_factory_t factory = {sizeof(descartes_factory_t), "rulebreaker", "breaks the rules", create};
static const descartes_factory_t *const factories[] = {&factory};
static const descartes_library_t library = {sizeof(descartes_library_t), 1, "rulebreaker", "0.0.1", 1, factories, NULL};

DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(uint32_t v, const descartes_host_t *host) {
    (void)host;
#ifdef RULEBREAKER_CRASH_IN_ENTRY
    raise(SIGSEGV);
#endif
    return v >= 1 ? &library : NULL;
}
