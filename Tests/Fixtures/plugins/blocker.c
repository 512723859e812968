/* Test fixture: a plugin that hangs where it is told to, so the host's own
 * deadlines can be seen to end every operation without its cooperation.
 * Config "block" names where (one word):
 *   create           create never returns
 *   initialize       initialize's function never returns
 *   initialize-silent initialize returns a handle, never answers, ignores cancel
 *   gated-initialize initialize answers once the file named by config "gate"
 *                    exists; complete and stream never answer (a handle,
 *                    cancel ignored)
 *   start            complete's and stream's function never returns
 *   shutdown         shutdown's function never returns
 *   late             complete answers, then, after the host released the
 *                    call, sends a TEXT event on it (an ABI violation)
 *   system-crash     complete starts `sleep 317` with system() in the
 *                    background, then crashes (SIGSEGV)
 *   close-fds        complete closes every descriptor from 3 up (as a
 *                    plugin that daemonizes a child with closefrom() does),
 *                    then never returns: the isolation helper's socket to
 *                    the host is gone while the helper lives on (isolated
 *                    only: in process it would close the host's files)
 *   crash-holding-key complete crashes (SIGSEGV) with two registers (rdi,
 *                    rsi) pointing at the config's "token" value, the way
 *                    a crash inside an HTTP client holds the key
 * The environment variable BLOCKER_BLOCK_ENTRY=1 makes descartes_plugin_entry
 * itself hang. Anything else answers "ok". Never installed. */
#define _GNU_SOURCE
#include <descartes/plugin.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    descartes_backend_t base;
    char block[64];
    char gate[512];
    char *config; /* a copy, with its NUL */
} backend_t;

struct descartes_call {
    atomic_int refs;
    descartes_event_fn on_event;
    void *ctx;
    int late;
};

/* Faults with the key's address in rdi and rsi (elsewhere: just faults). */
static __attribute__((noinline)) void crash_holding(const char *key) {
#if defined(__x86_64__)
    __asm__ volatile("movq %0, %%rdi\n\tmovq %0, %%rsi\n\tmovb $0, 0" : : "r"(key) : "rdi", "rsi", "memory");
#else
    (void)key;
#endif
    raise(SIGSEGV);
}

static void hang(void) {
    for (;;) pause();
}

static int blocks(backend_t *b, const char *what) { return strcmp(b->block, what) == 0; }

static void emit(descartes_event_fn f, void *ctx, uint32_t type, const char *data) {
    descartes_event_t e;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    e.type = type;
    e.data = data;
    e.data_length = strlen(data);
    f(ctx, &e);
}

static void unref(descartes_call_t *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1) free(c);
}

static void *late_worker(void *arg) {
    descartes_call_t *c = arg;
    descartes_event_fn f = c->on_event;
    void *ctx = c->ctx;
    emit(f, ctx, DESCARTES_EVENT_TEXT, "ok");
    emit(f, ctx, DESCARTES_EVENT_RESULT, "{\"finish_reason\":\"stop\"}");
    usleep(200000); /* the host has released the call by now */
    emit(f, ctx, DESCARTES_EVENT_TEXT, " late");
    emit(f, ctx, DESCARTES_EVENT_RESULT, "{\"finish_reason\":\"stop\"}");
    unref(c);
    return NULL;
}

static descartes_call_t *answer(descartes_event_fn f, void *ctx, const char *text, const char *result) {
    descartes_call_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    atomic_init(&c->refs, 1);
    if (text) emit(f, ctx, DESCARTES_EVENT_TEXT, text);
    emit(f, ctx, DESCARTES_EVENT_RESULT, result);
    return c;
}

struct gated {
    descartes_call_t *call;
    char gate[512];
};

static void *gate_worker(void *arg) {
    struct gated *g = arg;
    while (access(g->gate, F_OK) != 0) usleep(5000);
    emit(g->call->on_event, g->call->ctx, DESCARTES_EVENT_RESULT, "{}");
    unref(g->call);
    free(g);
    return NULL;
}

static descartes_call_t *silent(void) {
    descartes_call_t *c = calloc(1, sizeof *c);
    if (c) atomic_init(&c->refs, 1);
    return c;
}

static descartes_call_t *op_init(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *ctx) {
    (void)i;
    (void)n;
    backend_t *b = (backend_t *)s;
    if (blocks(b, "initialize")) hang();
    if (blocks(b, "initialize-silent")) return silent();
    if (blocks(b, "gated-initialize")) {
        descartes_call_t *c = silent();
        struct gated *g = calloc(1, sizeof *g);
        pthread_t t;
        if (!c || !g) {
            free(c);
            free(g);
            return NULL;
        }
        atomic_init(&c->refs, 2);
        c->on_event = f;
        c->ctx = ctx;
        g->call = c;
        memcpy(g->gate, b->gate, sizeof g->gate);
        if (pthread_create(&t, NULL, gate_worker, g) != 0) {
            free(c);
            free(g);
            return NULL;
        }
        pthread_detach(t);
        return c;
    }
    return answer(f, ctx, NULL, "{}");
}

static descartes_call_t *op_complete(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *ctx) {
    (void)i;
    (void)n;
    backend_t *b = (backend_t *)s;
    if (blocks(b, "start")) hang();
    if (blocks(b, "gated-initialize")) return silent();
    if (blocks(b, "system-crash")) {
        if (system("sleep 317 &") != 0) { /* started in the background either way */
        }
        raise(SIGSEGV);
    }
    if (blocks(b, "close-fds")) {
        for (int fd = 3; fd < 1024; fd++) close(fd);
        hang();
    }
    if (blocks(b, "crash-holding-key")) {
        const char *key = strstr(b->config, "\"token\":\"");
        crash_holding(key ? key + 9 : b->config);
    }
    if (blocks(b, "late")) {
        descartes_call_t *c = calloc(1, sizeof *c);
        if (!c) return NULL;
        atomic_init(&c->refs, 2);
        c->on_event = f;
        c->ctx = ctx;
        pthread_t t;
        if (pthread_create(&t, NULL, late_worker, c) != 0) {
            free(c);
            return NULL;
        }
        pthread_detach(t);
        return c;
    }
    return answer(f, ctx, "ok", "{\"finish_reason\":\"stop\"}");
}

static descartes_call_t *op_health(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *ctx) {
    (void)s;
    (void)i;
    (void)n;
    return answer(f, ctx, NULL, "{\"message\":\"fine\"}");
}

static descartes_call_t *op_shutdown(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *ctx) {
    (void)i;
    (void)n;
    if (blocks((backend_t *)s, "shutdown")) hang();
    return answer(f, ctx, NULL, "{}");
}

static void op_cancel(descartes_backend_t *self, descartes_call_t *c) {
    (void)self;
    (void)c;
}

static void op_release(descartes_backend_t *self, descartes_call_t *c) {
    (void)self;
    unref(c);
}

static void op_destroy(descartes_backend_t *self) {
    free(((backend_t *)self)->config);
    free(self);
}

static descartes_backend_t *create(const descartes_factory_t *f, const descartes_create_args_t *a, descartes_json_fn on_error, void *ectx) {
    (void)f;
    (void)on_error;
    (void)ectx;
    backend_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->config = calloc(1, a->config_length + 1);
    if (!b->config) {
        free(b);
        return NULL;
    }
    memcpy(b->config, a->config, a->config_length);
    const char *p = memmem(a->config, a->config_length, "\"block\":\"", 9);
    if (p) {
        p += 9;
        size_t k = 0;
        while (p < a->config + a->config_length && *p != '"' && k + 1 < sizeof b->block) b->block[k++] = *p++;
    }
    p = memmem(a->config, a->config_length, "\"gate\":\"", 8);
    if (p) {
        p += 8;
        size_t k = 0;
        while (p < a->config + a->config_length && *p != '"' && k + 1 < sizeof b->gate) b->gate[k++] = *p++;
    }
    if (blocks(b, "create")) hang();
    b->base.struct_size = sizeof(descartes_backend_t);
    b->base.initialize = op_init;
    b->base.health_check = op_health;
    b->base.complete = op_complete;
    b->base.stream = op_complete;
    b->base.shutdown = op_shutdown;
    b->base.cancel = op_cancel;
    b->base.release = op_release;
    b->base.destroy = op_destroy;
    return &b->base;
}

static const descartes_factory_t factory = {sizeof(descartes_factory_t), "blocker", "hangs where told", create};
static const descartes_factory_t *const factories[] = {&factory};
static const descartes_library_t library = {sizeof(descartes_library_t), 1, "blocker", "0.0.1", 1, factories, NULL};

DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(uint32_t v, const descartes_host_t *host) {
    (void)host;
    const char *e = getenv("BLOCKER_BLOCK_ENTRY");
    if (e && strcmp(e, "1") == 0) hang();
    return v >= 1 ? &library : NULL;
}
