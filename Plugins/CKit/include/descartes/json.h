/*
 * descartes/json.h -- a small JSON reader and writer for plugins written in C.
 *
 * Installed beside descartes/plugin.h (the same `pkg-config --cflags
 * descartes-plugin`). Header-only: every function is `static inline`, so
 * there is nothing to link and nothing is exported from your library.
 * C11, no dependency beyond the C library. docs/writing-a-plugin.md,
 * "Helpers for C", shows each call; Plugins/OpenAIC/openai-c.c uses them all.
 *
 * Writing: a dk_buf is a growable, always NUL-terminated byte buffer. The
 * dk_put_* functions append JSON to it and place the commas themselves:
 *
 *     dk_buf b = {0};
 *     dk_put_open(&b, '{');
 *     dk_put_kstr(&b, "model", "gpt-4o-mini");     (key and value in one call)
 *     dk_put_key(&b, "stream"); dk_put_bool(&b, 1);
 *     dk_put_close(&b, '}');    -> {"model":"gpt-4o-mini","stream":true}
 *     if (b.failed) ... out of memory;  ...  dk_buf_free(&b);
 *
 * An allocation failure sets `failed` and makes every later append a no-op,
 * so check it once at the end. Strings are escaped as RFC 8259 asks; bytes
 * that are not valid UTF-8 become U+FFFD.
 *
 * Reading: a dk_json is one JSON value's text inside a document you hold
 * (pointer + length; nothing is copied or allocated). dk_json_parse checks
 * the whole document against RFC 8259 once (depth at most DK_JSON_MAX_DEPTH)
 * and returns its value, or an absent value (p == NULL) when the text is
 * not exactly one valid JSON value. Lookups return absent values for
 * anything missing or of the wrong type, so they chain without checks:
 *
 *     dk_json doc = dk_json_parse(text, len);
 *     dk_json delta = dk_json_path(doc, "choices[0].delta.content");
 *     char *s = dk_json_str(delta);     malloc'd and decoded, or NULL
 *
 * \u escapes are decoded to UTF-8, surrogate pairs joined; a lone
 * surrogate becomes U+FFFD. Numbers are read with dk_json_int (integers
 * only, range-checked) and dk_json_num.
 *
 * A dk_json points into the text it came from: keep the text alive while
 * you use it. Thread-safety: none needed, there is no global state.
 */
#ifndef DESCARTES_JSON_H
#define DESCARTES_JSON_H

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DK_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define DK_PRINTF(f, a)
#endif

/* ======================================================================
 * dk_buf: a growable byte buffer
 * ====================================================================== */

typedef struct dk_buf {
    char *data;   /* NUL-terminated once anything was added; NULL before */
    size_t len;   /* bytes, without the NUL */
    size_t cap;
    int failed;   /* an allocation failed: the content is incomplete */
    int comma;    /* (dk_put_*) a value was just written: the next needs a ',' */
} dk_buf;

/* Appends n bytes. Returns 0, or -1 (and sets failed) when out of memory. */
static inline int dk_buf_add(dk_buf *b, const void *s, size_t n) {
    if (b->failed) return -1;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) { b->failed = 1; return -1; }
            cap *= 2;
        }
        char *p = (char *)realloc(b->data, cap);
        if (!p) { b->failed = 1; return -1; }
        b->data = p;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static inline int dk_buf_str(dk_buf *b, const char *s) { return dk_buf_add(b, s, strlen(s)); }

/* Appends printf-formatted text. */
static inline int dk_buf_printf(dk_buf *b, const char *fmt, ...) DK_PRINTF(2, 3);
static inline int dk_buf_printf(dk_buf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) { b->failed = 1; return -1; }
    if ((size_t)n < sizeof small) return dk_buf_add(b, small, (size_t)n);
    char *big = (char *)malloc((size_t)n + 1);
    if (!big) { b->failed = 1; return -1; }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = dk_buf_add(b, big, (size_t)n);
    free(big);
    return rc;
}

/* Drops the first n bytes (n <= len). */
static inline void dk_buf_consume(dk_buf *b, size_t n) {
    if (n >= b->len) { b->len = 0; } else { memmove(b->data, b->data + n, b->len - n); b->len -= n; }
    if (b->data) b->data[b->len] = '\0';
}

/* Empties the buffer, keeping its memory (and clearing failed). */
static inline void dk_buf_clear(dk_buf *b) { dk_buf_consume(b, b->len); b->failed = 0; b->comma = 0; }

static inline void dk_buf_free(dk_buf *b) { free(b->data); memset(b, 0, sizeof *b); }

/* ======================================================================
 * UTF-8
 * ====================================================================== */

/* The length (1-4) of the valid UTF-8 sequence at s (n bytes available),
 * or 0 when it is not one (overlong forms and surrogates included). */
static inline size_t dk_utf8_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    if (s[0] < 0x80) return 1;
    size_t len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 ? 2 : 0;
    if (len == 0 || s[0] > 0xF4 || len > n) return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (len == 3 && s[0] == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
    if (len == 3 && s[0] == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
    if (len == 4 && s[0] == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
    if (len == 4 && s[0] == 0xF4 && s[1] >= 0x90) return 0; /* > U+10FFFF */
    return len;
}

/* Appends code point cp (<= 0x10FFFF, not a surrogate) as UTF-8. */
static inline int dk_utf8_put(dk_buf *b, uint32_t cp) {
    unsigned char out[4];
    size_t n;
    if (cp < 0x80) { out[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { out[0] = (unsigned char)(0xC0 | cp >> 6); out[1] = (unsigned char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | cp >> 12); out[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        out[0] = (unsigned char)(0xF0 | cp >> 18); out[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F)); out[3] = (unsigned char)(0x80 | (cp & 0x3F)); n = 4;
    }
    return dk_buf_add(b, out, n);
}

/* ======================================================================
 * Writing JSON
 * ====================================================================== */

static inline void dk__sep(dk_buf *b) {
    if (b->comma) dk_buf_add(b, ",", 1);
    b->comma = 0;
}

/* '{' or '['. */
static inline void dk_put_open(dk_buf *b, char c) { dk__sep(b); dk_buf_add(b, &c, 1); b->comma = 0; }
/* '}' or ']'. */
static inline void dk_put_close(dk_buf *b, char c) { dk_buf_add(b, &c, 1); b->comma = 1; }

/* The n bytes at s as a JSON string literal, without the separator logic. */
static inline void dk__put_literal(dk_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    dk_buf_add(b, "\"", 1);
    size_t i = 0, run = 0; /* [i-run, i) is a run of bytes copied as they are */
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[6] = {'\\', 'u', '0', '0', 0, 0};
        size_t len = c < 0x80 ? 1 : dk_utf8_len((const unsigned char *)s + i, n - i);
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        if (esc == NULL && c >= 0x20 && len > 0) { i += len; run += len; continue; }
        dk_buf_add(b, s + i - run, run);
        run = 0;
        if (esc) dk_buf_add(b, esc, 2);
        else if (c < 0x20) { u[4] = hex[c >> 4]; u[5] = hex[c & 15]; dk_buf_add(b, u, 6); }
        else dk_buf_add(b, "\xEF\xBF\xBD", 3); /* not UTF-8: U+FFFD */
        i++;
    }
    dk_buf_add(b, s + i - run, run);
    dk_buf_add(b, "\"", 1);
}

/* An object member's key (NUL-terminated); its value follows. */
static inline void dk_put_key(dk_buf *b, const char *key) {
    dk__sep(b);
    dk__put_literal(b, key, strlen(key));
    dk_buf_add(b, ":", 1);
    b->comma = 0;
}

static inline void dk_put_strn(dk_buf *b, const char *s, size_t n) { dk__sep(b); dk__put_literal(b, s, n); b->comma = 1; }
/* A NUL-terminated string; NULL writes null. */
static inline void dk_put_str(dk_buf *b, const char *s) {
    if (!s) { dk__sep(b); dk_buf_add(b, "null", 4); b->comma = 1; return; }
    dk_put_strn(b, s, strlen(s));
}
static inline void dk_put_int(dk_buf *b, long long v) { dk__sep(b); dk_buf_printf(b, "%lld", v); b->comma = 1; }
/* A number; NaN and infinities (which JSON cannot hold) are written null. */
static inline void dk_put_num(dk_buf *b, double v) {
    dk__sep(b);
    if (isfinite(v)) dk_buf_printf(b, "%.17g", v);
    else dk_buf_add(b, "null", 4);
    b->comma = 1;
}
static inline void dk_put_bool(dk_buf *b, int v) { dk__sep(b); dk_buf_str(b, v ? "true" : "false"); b->comma = 1; }
static inline void dk_put_null(dk_buf *b) { dk__sep(b); dk_buf_add(b, "null", 4); b->comma = 1; }
/* n bytes that already are one JSON value (a dk_json's text, say). */
static inline void dk_put_raw(dk_buf *b, const char *json, size_t n) { dk__sep(b); dk_buf_add(b, json, n); b->comma = 1; }

/* A member in one call: key, then the value as above. */
static inline void dk_put_kstr(dk_buf *b, const char *key, const char *s) { dk_put_key(b, key); dk_put_str(b, s); }
static inline void dk_put_kint(dk_buf *b, const char *key, long long v) { dk_put_key(b, key); dk_put_int(b, v); }
static inline void dk_put_kraw(dk_buf *b, const char *key, const char *json, size_t n) { dk_put_key(b, key); dk_put_raw(b, json, n); }

/* ======================================================================
 * Reading JSON
 * ====================================================================== */

typedef struct dk_json {
    const char *p; /* the value's first byte; NULL: absent */
    size_t n;      /* the value's length in bytes */
} dk_json;

enum {
    DK_JSON_ABSENT = 0,
    DK_JSON_NULL,
    DK_JSON_FALSE,
    DK_JSON_TRUE,
    DK_JSON_NUMBER,
    DK_JSON_STRING,
    DK_JSON_ARRAY,
    DK_JSON_OBJECT
};

#ifndef DK_JSON_MAX_DEPTH
#define DK_JSON_MAX_DEPTH 128
#endif

static inline const char *dk__ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static inline int dk__hex4(const char *p, const char *end, uint32_t *out) {
    if (end - p < 4) return -1;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Checks the string literal at p ('"'); returns the byte after it, or NULL.
 * With out, also decodes it there. */
static inline const char *dk__string(const char *p, const char *end, dk_buf *out) {
    p++;
    const char *run = p;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            if (out) dk_buf_add(out, run, (size_t)(p - run));
            return p + 1;
        }
        if (c < 0x20) return NULL;
        if (c >= 0x80) {
            size_t len = dk_utf8_len((const unsigned char *)p, (size_t)(end - p));
            if (len == 0) return NULL;
            p += len;
            continue;
        }
        if (c != '\\') { p++; continue; }
        if (out) dk_buf_add(out, run, (size_t)(p - run));
        if (++p >= end) return NULL;
        char e = *p++;
        static const char names[] = "\"\\/bfnrt", bytes[] = "\"\\/\b\f\n\r\t";
        const char *simple = e ? strchr(names, e) : NULL;
        if (simple) {
            if (out) dk_buf_add(out, &bytes[simple - names], 1);
        } else if (e == 'u') {
            uint32_t cp, lo;
            if (dk__hex4(p, end, &cp) != 0) return NULL;
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u' && dk__hex4(p + 2, end, &lo) == 0 &&
                lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (cp >= 0xD800 && cp < 0xE000) {
                cp = 0xFFFD; /* a lone surrogate */
            }
            if (out) dk_utf8_put(out, cp);
        } else {
            return NULL;
        }
        run = p;
    }
    return NULL;
}

static inline const char *dk__digits(const char *p, const char *end) {
    const char *s = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    return p > s ? p : NULL;
}

static inline const char *dk__number(const char *p, const char *end) {
    if (p < end && *p == '-') p++;
    if (p < end && *p == '0') p++;
    else if (!(p = dk__digits(p, end))) return NULL;
    if (p < end && *p == '.' && !(p = dk__digits(p + 1, end))) return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!(p = dk__digits(p, end))) return NULL;
    }
    return p;
}

/* Checks the value at p (no leading whitespace); returns the byte after
 * it, or NULL when it is not valid JSON. */
static inline const char *dk__value(const char *p, const char *end, int depth) {
    if (p >= end) return NULL;
    switch (*p) {
    case '"': return dk__string(p, end, NULL);
    case '{':
    case '[': {
        char close = *p == '{' ? '}' : ']';
        if (depth >= DK_JSON_MAX_DEPTH) return NULL;
        p = dk__ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                if (p >= end || *p != '"' || !(p = dk__string(p, end, NULL))) return NULL;
                p = dk__ws(p, end);
                if (p >= end || *p != ':') return NULL;
                p = dk__ws(p + 1, end);
            }
            if (!(p = dk__value(p, end, depth + 1))) return NULL;
            p = dk__ws(p, end);
            if (p >= end) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p = dk__ws(p + 1, end);
        }
    }
    case 't': return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f': return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n': return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default: return (*p == '-' || (*p >= '0' && *p <= '9')) ? dk__number(p, end) : NULL;
    }
}

/* The document's value: absent unless text[0..len) is exactly one valid
 * JSON value (whitespace around it allowed). */
static inline dk_json dk_json_parse(const char *text, size_t len) {
    dk_json none = {NULL, 0};
    if (!text) return none;
    const char *end = text + len, *p = dk__ws(text, end);
    const char *after = dk__value(p, end, 0);
    if (!after || dk__ws(after, end) != end) return none;
    dk_json v = {p, (size_t)(after - p)};
    return v;
}

static inline int dk_json_type(dk_json v) {
    if (!v.p || v.n == 0) return DK_JSON_ABSENT;
    switch (v.p[0]) {
    case 'n': return DK_JSON_NULL;
    case 'f': return DK_JSON_FALSE;
    case 't': return DK_JSON_TRUE;
    case '"': return DK_JSON_STRING;
    case '[': return DK_JSON_ARRAY;
    case '{': return DK_JSON_OBJECT;
    default: return DK_JSON_NUMBER;
    }
}

/* Iterates over an array's elements or an object's members. Start with
 * *value = (dk_json){0}; each call moves to the next one and returns 1, or
 * returns 0 at the end (or when c is not a container). For an object,
 * *key (when not NULL) is the member's key, a string value. */
static inline int dk_json_next(dk_json c, dk_json *value, dk_json *key) {
    int t = dk_json_type(c);
    if (t != DK_JSON_ARRAY && t != DK_JSON_OBJECT) return 0;
    const char *end = c.p + c.n;
    const char *p = value->p ? dk__ws(value->p + value->n, end) : dk__ws(c.p + 1, end);
    if (value->p) {
        if (p >= end || *p != ',') return 0;
        p = dk__ws(p + 1, end);
    }
    if (p >= end || *p == '}' || *p == ']') return 0;
    if (t == DK_JSON_OBJECT) {
        const char *k = p;
        if (*p != '"' || !(p = dk__string(p, end, NULL))) return 0;
        if (key) { key->p = k; key->n = (size_t)(p - k); }
        p = dk__ws(p, end);
        if (p >= end || *p != ':') return 0;
        p = dk__ws(p + 1, end);
    }
    const char *after = dk__value(p, end, 0);
    if (!after) return 0;
    value->p = p;
    value->n = (size_t)(after - p);
    return 1;
}

/* The number of elements or members (0 for anything else). */
static inline size_t dk_json_count(dk_json c) {
    size_t n = 0;
    dk_json v = {NULL, 0};
    while (dk_json_next(c, &v, NULL)) n++;
    return n;
}

/* True when v is a string whose decoded value is the n bytes at s. */
static inline int dk_json_eqn(dk_json v, const char *s, size_t n) {
    if (dk_json_type(v) != DK_JSON_STRING) return 0;
    if (!memchr(v.p, '\\', v.n)) return v.n == n + 2 && memcmp(v.p + 1, s, n) == 0;
    dk_buf d;
    memset(&d, 0, sizeof d);
    dk_buf_add(&d, "", 0);
    int eq = dk__string(v.p, v.p + v.n, &d) && !d.failed && d.len == n && memcmp(d.data, s, n) == 0;
    dk_buf_free(&d);
    return eq;
}

static inline int dk_json_eq(dk_json v, const char *s) { return dk_json_eqn(v, s, strlen(s)); }

/* The value of the object's first member named key (absent if none). */
static inline dk_json dk_json_get(dk_json obj, const char *key) {
    dk_json v = {NULL, 0}, k;
    if (dk_json_type(obj) != DK_JSON_OBJECT) return v;
    while (dk_json_next(obj, &v, &k))
        if (dk_json_eq(k, key)) return v;
    dk_json none = {NULL, 0};
    return none;
}

/* The array's element i (absent if none). */
static inline dk_json dk_json_at(dk_json arr, size_t i) {
    dk_json v = {NULL, 0};
    if (dk_json_type(arr) != DK_JSON_ARRAY) return v;
    while (dk_json_next(arr, &v, NULL))
        if (i-- == 0) return v;
    dk_json none = {NULL, 0};
    return none;
}

/* Follows a path of member names and [indices]: "choices[0].delta.content",
 * "[2].name", "error.message". A name runs to the next '.' or '['; use
 * dk_json_get for names holding those. */
static inline dk_json dk_json_path(dk_json v, const char *path) {
    char name[256];
    const char *p = path;
    while (*p && v.p) {
        if (*p == '.') { p++; continue; }
        if (*p == '[') {
            char *after;
            errno = 0;
            unsigned long long i = strtoull(p + 1, &after, 10);
            if (after == p + 1 || *after != ']' || errno) { v.p = NULL; break; }
            v = dk_json_at(v, (size_t)i);
            p = after + 1;
            continue;
        }
        size_t n = strcspn(p, ".[");
        if (n >= sizeof name) { v.p = NULL; break; }
        memcpy(name, p, n);
        name[n] = '\0';
        v = dk_json_get(v, name);
        p += n;
    }
    if (!v.p) v.n = 0;
    return v;
}

/* The decoded string (UTF-8, NUL-terminated, malloc'd: free it), its length
 * in *len when len is not NULL (it may hold a NUL decoded from \u0000).
 * NULL when v is not a string, or out of memory. */
static inline char *dk_json_strn(dk_json v, size_t *len) {
    if (dk_json_type(v) != DK_JSON_STRING) return NULL;
    dk_buf d;
    memset(&d, 0, sizeof d);
    dk_buf_add(&d, "", 0);
    if (!dk__string(v.p, v.p + v.n, &d) || d.failed) { dk_buf_free(&d); return NULL; }
    if (len) *len = d.len;
    return d.data;
}

static inline char *dk_json_str(dk_json v) { return dk_json_strn(v, NULL); }

/* An integer number (no fraction, no exponent) that fits a long long:
 * 0 and *out set, or -1. */
static inline int dk_json_int(dk_json v, long long *out) {
    char tmp[32];
    if (dk_json_type(v) != DK_JSON_NUMBER || v.n >= sizeof tmp || memchr(v.p, '.', v.n) || memchr(v.p, 'e', v.n) ||
        memchr(v.p, 'E', v.n))
        return -1;
    memcpy(tmp, v.p, v.n);
    tmp[v.n] = '\0';
    errno = 0;
    char *after;
    long long x = strtoll(tmp, &after, 10);
    if (errno || *after) return -1;
    *out = x;
    return 0;
}

/* Any number: 0 and *out set, or -1. */
static inline int dk_json_num(dk_json v, double *out) {
    char tmp[64];
    if (dk_json_type(v) != DK_JSON_NUMBER || v.n >= sizeof tmp) return -1;
    memcpy(tmp, v.p, v.n);
    tmp[v.n] = '\0';
    *out = strtod(tmp, NULL);
    return 0;
}

/* 1 for true, 0 for false, -1 for anything else. */
static inline int dk_json_bool(dk_json v) {
    int t = dk_json_type(v);
    return t == DK_JSON_TRUE ? 1 : t == DK_JSON_FALSE ? 0 : -1;
}

#ifdef __cplusplus
}
#endif

#endif /* DESCARTES_JSON_H */
