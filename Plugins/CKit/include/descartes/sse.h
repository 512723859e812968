/*
 * descartes/sse.h -- line decoders for streamed HTTP bodies: server-sent
 * events (text/event-stream, what OpenAI, Anthropic and most providers
 * stream) and newline-delimited JSON (Ollama, Bedrock-style JSON lines).
 *
 * Installed beside descartes/plugin.h; header-only (static inline), uses
 * descartes/json.h's dk_buf. Feed it the body's bytes exactly as they arrive
 * (a libcurl write callback's chunks: a line or an event may be split
 * anywhere, a CR LF pair included); it calls you once per complete line
 * or event:
 *
 *     static int on_event(void *ctx, const dk_sse_event *e) {
 *         ... e->event ("message" unless the server named it), e->data
 *         return 0;                 (nonzero stops: dk_sse_feed returns it)
 *     }
 *     dk_sse sse = {0};
 *     rc = dk_sse_feed(&sse, chunk, n, on_event, ctx);    per chunk
 *     if (dk_sse_finish(&sse)) ... the body ended inside an event
 *     dk_sse_free(&sse);
 *
 * SSE is decoded as the WHATWG HTML standard says: lines end with CR LF,
 * LF or CR; a line starting with ':' is a comment; "field: value" drops one
 * space after the colon; several `data:` lines join with '\n'; an empty
 * line dispatches the event (none when no `data:` came); `id:` is kept
 * until changed; `retry:` is ignored. NDJSON: lines end with LF (a CR
 * before it is dropped), empty lines are skipped, and dk_lines_finish
 * delivers a last line that has no LF.
 *
 * Memory is bounded: a line longer than max_line bytes (default
 * DK_LINES_MAX, 8 MiB; set the field before the first feed) fails the feed
 * with DK_LINES_TOO_LONG. Errors are negative, so a callback's positive
 * "stop" value is never mistaken for one.
 */
#ifndef DESCARTES_SSE_H
#define DESCARTES_SSE_H

#include <descartes/json.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef DK_LINES_MAX
#define DK_LINES_MAX ((size_t)8 << 20)
#endif

enum {
    DK_LINES_NOMEM = -1,    /* out of memory */
    DK_LINES_TOO_LONG = -2  /* a line over max_line bytes */
};

/* A complete line, without its terminator; borrowed until you return. */
typedef int (*dk_line_fn)(void *ctx, const char *line, size_t n);

typedef struct dk_lines {
    dk_buf partial;   /* the start of a line not yet ended */
    size_t max_line;  /* 0: DK_LINES_MAX */
    int cr_ends;      /* a lone CR ends a line too (SSE); else it is dropped before LF */
    int after_cr;     /* (cr_ends) the last chunk ended with CR: skip one LF */
} dk_lines;

/* Feeds n bytes; calls fn for each line they complete. Returns 0, a
 * negative DK_LINES_* error, or fn's nonzero return (which stops it). */
static inline int dk_lines_feed(dk_lines *l, const char *bytes, size_t n, dk_line_fn fn, void *ctx) {
    size_t max = l->max_line ? l->max_line : DK_LINES_MAX;
    const char *p = bytes, *end = bytes + n;
    if (n == 0) return 0;
    if (l->after_cr && *p == '\n') p++;
    l->after_cr = 0;
    while (p < end) {
        const char *eol = p;
        while (eol < end && *eol != '\n' && !(l->cr_ends && *eol == '\r')) eol++;
        if (eol == end) break;
        const char *line = p;
        size_t len = (size_t)(eol - p);
        if (l->partial.len) {
            if (l->partial.len + len > max) return DK_LINES_TOO_LONG;
            if (dk_buf_add(&l->partial, p, len) != 0) return DK_LINES_NOMEM;
            line = l->partial.data;
            len = l->partial.len;
        } else if (len > max) {
            return DK_LINES_TOO_LONG;
        }
        if (!l->cr_ends && len && line[len - 1] == '\r') len--;
        p = eol + 1;
        if (*eol == '\r') {
            if (p < end && *p == '\n') p++;
            else if (p == end) l->after_cr = 1;
        }
        int rc = fn(ctx, line, len);
        dk_buf_clear(&l->partial);
        if (rc) return rc;
    }
    if (p < end) {
        if (l->partial.len + (size_t)(end - p) > max) return DK_LINES_TOO_LONG;
        if (dk_buf_add(&l->partial, p, (size_t)(end - p)) != 0) return DK_LINES_NOMEM;
    }
    return 0;
}

/* The stream ended: delivers a last line without terminator, if any. */
static inline int dk_lines_finish(dk_lines *l, dk_line_fn fn, void *ctx) {
    if (!l->partial.len) return 0;
    size_t len = l->partial.len;
    if (!l->cr_ends && l->partial.data[len - 1] == '\r') len--;
    int rc = fn(ctx, l->partial.data, len);
    dk_buf_clear(&l->partial);
    return rc;
}

static inline void dk_lines_free(dk_lines *l) { dk_buf_free(&l->partial); }

/* ---- NDJSON: one JSON text per line ---- */

typedef struct dk_ndjson {
    dk_lines lines;
    dk_line_fn fn;
    void *ctx;
} dk_ndjson;

static inline int dk__ndjson_line(void *arg, const char *line, size_t n) {
    dk_ndjson *j = (dk_ndjson *)arg;
    const char *end = line + n, *p = dk__ws(line, end);
    return p == end ? 0 : j->fn(j->ctx, line, n);
}

/* Calls fn with each non-empty line (parse it with dk_json_parse). */
static inline int dk_ndjson_feed(dk_ndjson *j, const char *bytes, size_t n, dk_line_fn fn, void *ctx) {
    j->fn = fn;
    j->ctx = ctx;
    return dk_lines_feed(&j->lines, bytes, n, dk__ndjson_line, j);
}

static inline int dk_ndjson_finish(dk_ndjson *j, dk_line_fn fn, void *ctx) {
    j->fn = fn;
    j->ctx = ctx;
    return dk_lines_finish(&j->lines, dk__ndjson_line, j);
}

static inline void dk_ndjson_free(dk_ndjson *j) { dk_lines_free(&j->lines); }

/* ---- Server-sent events ---- */

typedef struct dk_sse_event {
    const char *event; /* NUL-terminated; "message" when no `event:` line came */
    const char *data;  /* the `data:` lines joined with '\n', NUL-terminated */
    size_t data_len;
    const char *id;    /* the last `id:` seen, NUL-terminated ("" if none) */
} dk_sse_event;

typedef int (*dk_sse_fn)(void *ctx, const dk_sse_event *e);

typedef struct dk_sse {
    dk_lines lines;   /* its max_line bounds an event's data too */
    dk_buf data, event, id;
    int has_data;
    dk_sse_fn fn;
    void *ctx;
} dk_sse;

static inline int dk__sse_line(void *arg, const char *line, size_t n) {
    dk_sse *s = (dk_sse *)arg;
    size_t max = s->lines.max_line ? s->lines.max_line : DK_LINES_MAX;
    if (n == 0) { /* dispatch */
        int rc = 0;
        if (s->has_data) {
            dk_sse_event e;
            dk_buf_add(&s->event, "", 0);
            dk_buf_add(&s->id, "", 0);
            if (s->data.failed || s->event.failed || s->id.failed) return DK_LINES_NOMEM;
            e.event = s->event.len ? s->event.data : "message";
            e.data = s->data.data;
            e.data_len = s->data.len - 1; /* without the last '\n' */
            s->data.data[e.data_len] = '\0';
            e.id = s->id.data;
            rc = s->fn(s->ctx, &e);
        }
        dk_buf_clear(&s->data);
        dk_buf_clear(&s->event);
        s->has_data = 0;
        return rc;
    }
    if (line[0] == ':') return 0; /* a comment */
    const char *colon = (const char *)memchr(line, ':', n);
    size_t name = colon ? (size_t)(colon - line) : n;
    const char *value = colon ? colon + 1 : line + n;
    if (value < line + n && *value == ' ') value++;
    size_t vlen = (size_t)(line + n - value);
    if (name == 4 && memcmp(line, "data", 4) == 0) {
        if (s->data.len + vlen + 1 > max) return DK_LINES_TOO_LONG;
        dk_buf_add(&s->data, value, vlen);
        dk_buf_add(&s->data, "\n", 1);
        s->has_data = 1;
    } else if (name == 5 && memcmp(line, "event", 5) == 0) {
        dk_buf_clear(&s->event);
        dk_buf_add(&s->event, value, vlen);
    } else if (name == 2 && memcmp(line, "id", 2) == 0 && !memchr(value, '\0', vlen)) {
        dk_buf_clear(&s->id);
        dk_buf_add(&s->id, value, vlen);
    }
    return s->data.failed || s->event.failed || s->id.failed ? DK_LINES_NOMEM : 0;
}

/* Feeds n bytes of the body; calls fn once per event they complete.
 * Returns 0, a negative DK_LINES_* error, or fn's nonzero return. */
static inline int dk_sse_feed(dk_sse *s, const char *bytes, size_t n, dk_sse_fn fn, void *ctx) {
    s->lines.cr_ends = 1;
    s->fn = fn;
    s->ctx = ctx;
    return dk_lines_feed(&s->lines, bytes, n, dk__sse_line, s);
}

/* The body ended. Returns 1 when it ended inside an event (data received
 * but no empty line after it, or a line cut short): that event is dropped,
 * as the standard says, and a stream that needed it was cut. Else 0. */
static inline int dk_sse_finish(dk_sse *s) {
    int cut = s->has_data || s->lines.partial.len > 0;
    dk_buf_clear(&s->data);
    dk_buf_clear(&s->event);
    dk_buf_clear(&s->lines.partial);
    s->has_data = 0;
    return cut;
}

static inline void dk_sse_free(dk_sse *s) {
    dk_lines_free(&s->lines);
    dk_buf_free(&s->data);
    dk_buf_free(&s->event);
    dk_buf_free(&s->id);
}

#ifdef __cplusplus
}
#endif

#endif /* DESCARTES_SSE_H */
