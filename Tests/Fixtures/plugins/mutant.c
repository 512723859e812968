/* Test fixture: a small OpenAI-compatible plugin in C (libcurl) that gets
 * one thing about its requests wrong, chosen by config "fault", so the
 * conformance suite's request expectations are seen to catch each:
 *   (empty)          nothing wrong: it passes
 *   no-key           never sends its api_key (no Authorization header)
 *   no-system        drops the request's system prompt
 *   no-max-tokens    ignores the request's max_tokens
 * Config: endpoint (".../v1"), api_key, model, fault. POST
 * {endpoint}/chat/completions, whole for complete and SSE for stream; the
 * JSON it reads and writes is only what this needs (a real plugin uses a
 * JSON library). One thread per call; cancel aborts the transfer. Never
 * installed. */
#define _GNU_SOURCE
#include <descartes/plugin.h>

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    descartes_backend_t base;
    char endpoint[512], key[256], model[128], fault[64];
    pthread_mutex_t lock;
    pthread_cond_t idle;
    int workers;
} backend_t;

struct descartes_call {
    atomic_int refs, cancelled;
    backend_t *b;
    descartes_event_fn on_event;
    void *ctx;
    int op; /* 0 init/shutdown/other, 1 complete, 2 stream */
    char *input;
    size_t input_len;
    char *body; /* what the server answered (complete) or the unparsed rest (stream) */
    size_t body_len;
};

static void unref(descartes_call_t *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1) {
        free(c->input);
        free(c->body);
        free(c);
    }
}

static void emit(descartes_call_t *c, uint32_t type, const char *data, size_t n) {
    descartes_event_t e;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    e.type = type;
    e.data = data;
    e.data_length = n;
    c->on_event(c->ctx, &e);
}

/* The JSON string value of "key" in text (the first one), unescaped
 * (\" \\ \n only), into out; 0 when absent. */
static int string_member(const char *text, size_t n, const char *key, char *out, size_t cap) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = memmem(text, n, pattern, strlen(pattern));
    if (!p) return 0;
    p += strlen(pattern);
    while (p < text + n && *p == ' ') p++;
    if (p >= text + n || *p != '"') return 0;
    p++;
    size_t i = 0;
    while (p < text + n && *p != '"' && i + 1 < cap) {
        if (*p == '\\' && p + 1 < text + n) {
            p++;
            out[i++] = *p == 'n' ? '\n' : *p;
        } else {
            out[i++] = *p;
        }
        p++;
    }
    out[i] = '\0';
    return 1;
}

/* Appends s to a JSON document as a string literal (quotes, backslashes
 * and newlines escaped: enough for this fixture). */
static void json_string(char *out, size_t cap, const char *s) {
    size_t n = strlen(out);
    if (n + 2 >= cap) return;
    out[n++] = '"';
    for (; *s && n + 3 < cap; s++) {
        if (*s == '"' || *s == '\\') out[n++] = '\\';
        if (*s == '\n') { out[n++] = '\\'; out[n++] = 'n'; continue; }
        out[n++] = *s;
    }
    out[n++] = '"';
    out[n] = '\0';
}

static int fault(backend_t *b, const char *what) { return strcmp(b->fault, what) == 0; }

/* The SSE lines received so far: a TEXT event per non-empty delta. */
static void stream_lines(descartes_call_t *c) {
    char *start = c->body, *nl;
    while ((nl = memchr(start, '\n', c->body_len - (size_t)(start - c->body))) != NULL) {
        *nl = '\0';
        char text[4096];
        if (strncmp(start, "data: {", 7) == 0 && string_member(start, strlen(start), "content", text, sizeof text) && text[0])
            emit(c, DESCARTES_EVENT_TEXT, text, strlen(text));
        start = nl + 1;
    }
    size_t rest = c->body_len - (size_t)(start - c->body);
    memmove(c->body, start, rest);
    c->body_len = rest;
}

static size_t on_data(char *data, size_t size, size_t count, void *arg) {
    descartes_call_t *c = arg;
    size_t n = size * count;
    char *grown = realloc(c->body, c->body_len + n + 1);
    if (!grown) return 0;
    c->body = grown;
    memcpy(c->body + c->body_len, data, n);
    c->body_len += n;
    c->body[c->body_len] = '\0';
    if (c->op == 2) stream_lines(c);
    return n;
}

static int on_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t x, curl_off_t y) {
    (void)a, (void)b, (void)x, (void)y;
    return atomic_load(&((descartes_call_t *)arg)->cancelled) ? 1 : 0;
}

static void run_completion(descartes_call_t *c) {
    backend_t *b = c->b;
    char prompt[8192], system[4096], body[16384], url[600];
    char max_tokens[32] = "";
    string_member(c->input, c->input_len, "content", prompt, sizeof prompt);
    int has_system = string_member(c->input, c->input_len, "system", system, sizeof system);
    const char *mt = memmem(c->input, c->input_len, "\"max_tokens\":", 13);
    if (mt) snprintf(max_tokens, sizeof max_tokens, "%d", atoi(mt + 13));

    snprintf(body, sizeof body, "{\"model\":");
    json_string(body, sizeof body, b->model);
    strcat(body, ",\"messages\":[");
    if (has_system && !fault(b, "no-system")) {
        strcat(body, "{\"role\":\"system\",\"content\":");
        json_string(body, sizeof body, system);
        strcat(body, "},");
    }
    strcat(body, "{\"role\":\"user\",\"content\":");
    json_string(body, sizeof body, prompt);
    strcat(body, "}]");
    if (max_tokens[0] && !fault(b, "no-max-tokens")) {
        strcat(body, ",\"max_tokens\":");
        strcat(body, max_tokens);
    }
    strcat(body, c->op == 2 ? ",\"stream\":true}" : ",\"stream\":false}");

    snprintf(url, sizeof url, "%s/chat/completions", b->endpoint);
    char auth[300];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", b->key);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (!fault(b, "no-key")) headers = curl_slist_append(headers, auth);
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, c);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    curl_slist_free_all(headers);

    char doc[512];
    if (atomic_load(&c->cancelled)) {
        snprintf(doc, sizeof doc, "{\"kind\":\"cancelled\",\"message\":\"the request was cancelled\"}");
        emit(c, DESCARTES_EVENT_ERROR, doc, strlen(doc));
    } else if (rc != CURLE_OK) {
        snprintf(doc, sizeof doc, "{\"kind\":\"http\",\"message\":\"%s\"}", curl_easy_strerror(rc));
        emit(c, DESCARTES_EVENT_ERROR, doc, strlen(doc));
    } else if (status != 200) {
        const char *kind = status == 401 || status == 403 ? "authentication" : status == 429 ? "rate_limited" : "api";
        snprintf(doc, sizeof doc, "{\"kind\":\"%s\",\"status\":%ld,\"message\":\"HTTP %ld\"}", kind, status, status);
        emit(c, DESCARTES_EVENT_ERROR, doc, strlen(doc));
    } else {
        char text[8192];
        if (c->op == 1 && c->body && string_member(c->body, c->body_len, "content", text, sizeof text))
            emit(c, DESCARTES_EVENT_TEXT, text, strlen(text));
        const char *fin = "{\"finish_reason\":\"stop\"}";
        emit(c, DESCARTES_EVENT_RESULT, fin, strlen(fin));
    }
}

static void *worker(void *arg) {
    descartes_call_t *c = arg;
    backend_t *b = c->b;
    if (c->op == 0) {
        emit(c, DESCARTES_EVENT_RESULT, "{}", 2);
    } else if (c->op == 3) {
        pthread_mutex_lock(&b->lock);
        while (b->workers > 1) pthread_cond_wait(&b->idle, &b->lock);
        pthread_mutex_unlock(&b->lock);
        emit(c, DESCARTES_EVENT_RESULT, "{}", 2);
    } else {
        run_completion(c);
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
    if (!c || !(c->input = malloc(n + 1))) {
        free(c);
        return NULL;
    }
    memcpy(c->input, in, n);
    c->input[n] = '\0';
    c->input_len = n;
    atomic_init(&c->refs, 2);
    atomic_init(&c->cancelled, 0);
    c->b = b;
    c->on_event = f;
    c->ctx = ctx;
    c->op = op;
    pthread_mutex_lock(&b->lock);
    b->workers++;
    pthread_mutex_unlock(&b->lock);
    pthread_t t;
    if (pthread_create(&t, NULL, worker, c) != 0) {
        pthread_mutex_lock(&b->lock);
        b->workers--;
        pthread_mutex_unlock(&b->lock);
        free(c->input);
        free(c);
        return NULL;
    }
    pthread_detach(t);
    return c;
}

static descartes_call_t *op_init(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, 0, i, n, f, c); }
static descartes_call_t *op_complete(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, 1, i, n, f, c); }
static descartes_call_t *op_stream(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, 2, i, n, f, c); }
static descartes_call_t *op_shutdown(descartes_backend_t *s, const char *i, size_t n, descartes_event_fn f, void *c) { return start(s, 3, i, n, f, c); }
static void op_cancel(descartes_backend_t *self, descartes_call_t *c) { (void)self, atomic_store(&c->cancelled, 1); }
static void op_release(descartes_backend_t *self, descartes_call_t *c) { (void)self, unref(c); }

static void op_destroy(descartes_backend_t *self) {
    backend_t *b = (backend_t *)self;
    pthread_mutex_lock(&b->lock);
    while (b->workers > 0) pthread_cond_wait(&b->idle, &b->lock);
    pthread_mutex_unlock(&b->lock);
    free(b);
}

static descartes_backend_t *create(const descartes_factory_t *f, const descartes_create_args_t *a, descartes_json_fn on_error, void *ectx) {
    (void)f, (void)on_error, (void)ectx;
    backend_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    string_member(a->config, a->config_length, "endpoint", b->endpoint, sizeof b->endpoint);
    string_member(a->config, a->config_length, "api_key", b->key, sizeof b->key);
    if (!string_member(a->config, a->config_length, "model", b->model, sizeof b->model)) strcpy(b->model, "gpt-4o-mini");
    string_member(a->config, a->config_length, "fault", b->fault, sizeof b->fault);
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->idle, NULL);
    b->base.struct_size = sizeof(descartes_backend_t);
    b->base.initialize = op_init;
    b->base.complete = op_complete;
    b->base.stream = op_stream;
    b->base.shutdown = op_shutdown;
    b->base.cancel = op_cancel;
    b->base.release = op_release;
    b->base.destroy = op_destroy;
    return &b->base;
}

static const descartes_factory_t factory = {sizeof(descartes_factory_t), "mutant", "an OpenAI-compatible client with one fault", create};
static const descartes_factory_t *const factories[] = {&factory};
static const descartes_library_t library = {sizeof(descartes_library_t), 1, "mutant", "0.0.1", 1, factories, NULL};

DESCARTES_EXPORT const descartes_library_t *descartes_plugin_entry(uint32_t v, const descartes_host_t *host) {
    (void)host;
    return v >= 1 ? &library : NULL;
}
