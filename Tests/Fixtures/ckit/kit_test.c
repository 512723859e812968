/* Unit tests of the C helpers installed with plugin.h (descartes/json.h,
 * descartes/sse.h), in C: built with the installed headers by
 * CKitTests (Tests/DescartesTests/CKitTests.swift), with -Werror and under
 * AddressSanitizer and UBSan, then run. Prints one line per failed check
 * and "N checks, M failed"; exits 1 when any failed. */
#include <descartes/json.h>
#include <descartes/sse.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

static int checks, failures;

#define CHECK(cond)                                                      \
    do {                                                                 \
        checks++;                                                        \
        if (!(cond)) {                                                   \
            failures++;                                                  \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
        }                                                                \
    } while (0)

static dk_json parse(const char *s) { return dk_json_parse(s, strlen(s)); }

/* The decoded string at path in doc, compared with want (want_len bytes). */
static int str_is(const char *doc, const char *path, const char *want, size_t want_len) {
    size_t n = 0;
    char *s = dk_json_strn(dk_json_path(parse(doc), path), &n);
    int ok = s && n == want_len && memcmp(s, want, n) == 0 && s[n] == '\0';
    if (!ok) printf("  %s %s -> '%s' (%zu bytes)\n", doc, path, s ? s : "(null)", n);
    free(s);
    return ok;
}
#define STR_IS(doc, path, want) str_is(doc, path, want, sizeof want - 1)

static void test_validation(void) {
    const char *valid[] = {
        "0", "-0", "1.5", "-2.5e-3", "1E+2", "true", "false", "null", "\"\"", "[]", "{}", " \n\t{\"a\" : [1, 2.5e-3, -0, true, false, null, \"x\"]} \r\n",
        "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"", "[[[[]]]]", "{\"a\":{\"b\":{}}}", "\"\\u0000\"",
    };
    for (size_t i = 0; i < sizeof valid / sizeof *valid; i++) {
        if (!dk_json_parse(valid[i], strlen(valid[i])).p) printf("  rejected: %s\n", valid[i]);
        CHECK(dk_json_parse(valid[i], strlen(valid[i])).p != NULL);
    }
    const char *invalid[] = {
        "", "  ", "{", "[1,]", "{\"a\":1,}", "{\"a\"}", "{a:1}", "01", "1.", ".5", "-", "1e", "+1", "tru", "nul", "\"\\x\"",
        "\"a\tb\"", "\"\xff\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"abc", "[1] 2", "[1 2]", "{\"a\":1 \"b\":2}", "\"\\u12\"",
        "\"\\u12G4\"", "'a'", "[", "]", "NaN", "Infinity",
    };
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++) {
        if (dk_json_parse(invalid[i], strlen(invalid[i])).p) printf("  accepted: %s\n", invalid[i]);
        CHECK(dk_json_parse(invalid[i], strlen(invalid[i])).p == NULL);
    }
    /* A NUL inside the given length is not JSON; bytes after len are not read. */
    CHECK(dk_json_parse("[1]\0", 4).p == NULL);
    CHECK(dk_json_parse("[1]garbage", 3).p != NULL);
    CHECK(dk_json_parse(NULL, 0).p == NULL);
    /* Depth: DK_JSON_MAX_DEPTH nested arrays pass, one more does not. */
    char deep[2 * DK_JSON_MAX_DEPTH + 3];
    for (int extra = 0; extra <= 1; extra++) {
        size_t d = DK_JSON_MAX_DEPTH + (size_t)extra, i = 0;
        for (size_t k = 0; k < d; k++) deep[i++] = '[';
        for (size_t k = 0; k < d; k++) deep[i++] = ']';
        CHECK((dk_json_parse(deep, i).p != NULL) == (extra == 0));
    }
}

static void test_strings(void) {
    CHECK(STR_IS("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"", "", "a\"b\\c/d\b\f\n\r\t"));
    CHECK(STR_IS("\"\\u00e9\\u00C9\"", "", "\xc3\xa9\xc3\x89"));
    CHECK(STR_IS("\"\\u20ac\"", "", "\xe2\x82\xac"));
    CHECK(STR_IS("\"\\ud83d\\ude00!\"", "", "\xf0\x9f\x98\x80!"));           /* a surrogate pair */
    CHECK(STR_IS("\"\\uD83D\\uDE00\"", "", "\xf0\x9f\x98\x80"));
    CHECK(STR_IS("\"\\ud83dx\"", "", "\xef\xbf\xbdx"));                       /* lone high surrogate */
    CHECK(STR_IS("\"\\ude00\"", "", "\xef\xbf\xbd"));                         /* lone low surrogate */
    CHECK(STR_IS("\"\\ud83d\\u0041\"", "", "\xef\xbf\xbd" "A"));              /* high, then not a low one */
    CHECK(STR_IS("\"\\ud83d\\ud83d\\ude00\"", "", "\xef\xbf\xbd\xf0\x9f\x98\x80"));
    CHECK(STR_IS("\"a\\u0000b\"", "", "a\0b"));                               /* NUL kept, length says so */
    CHECK(STR_IS("\"caf\xc3\xa9\"", "", "caf\xc3\xa9"));                      /* raw UTF-8 as is */
    CHECK(STR_IS("\"\"", "", ""));
    CHECK(dk_json_str(parse("12")) == NULL);
    CHECK(dk_json_str(parse("null")) == NULL);
    CHECK(dk_json_eq(parse("\"k\\u0065y\""), "key"));
    CHECK(!dk_json_eq(parse("\"keys\""), "key"));
    CHECK(!dk_json_eq(parse("\"ke\""), "key"));
}

static void test_lookup(void) {
    const char *doc = "{\"a\":{\"b\":[{\"c\":1},{\"c\":\"two\",\"d\":[true,false,null]}]},\"k\\u0065y\":7,\"dup\":1,\"dup\":2,"
                      "\"e\":[], \"n\" : -12 }";
    dk_json v = parse(doc);
    long long i = 0;
    CHECK(dk_json_type(v) == DK_JSON_OBJECT);
    CHECK(STR_IS(doc, "a.b[1].c", "two"));
    CHECK(dk_json_int(dk_json_path(v, "a.b[0].c"), &i) == 0 && i == 1);
    CHECK(dk_json_bool(dk_json_path(v, "a.b[1].d[0]")) == 1);
    CHECK(dk_json_bool(dk_json_path(v, "a.b[1].d[1]")) == 0);
    CHECK(dk_json_type(dk_json_path(v, "a.b[1].d[2]")) == DK_JSON_NULL);
    CHECK(dk_json_bool(dk_json_path(v, "a.b[1].d[2]")) == -1);
    CHECK(dk_json_type(dk_json_path(v, "a.b[1].d[3]")) == DK_JSON_ABSENT);    /* past the end */
    CHECK(dk_json_type(dk_json_path(v, "a.x")) == DK_JSON_ABSENT);            /* missing */
    CHECK(dk_json_type(dk_json_path(v, "a.b.c")) == DK_JSON_ABSENT);          /* a name on an array */
    CHECK(dk_json_type(dk_json_path(v, "a[0]")) == DK_JSON_ABSENT);           /* an index on an object */
    CHECK(dk_json_type(dk_json_path(v, "a.b[x]")) == DK_JSON_ABSENT);         /* not an index */
    CHECK(dk_json_type(dk_json_path(dk_json_path(v, "nothing"), "a")) == DK_JSON_ABSENT); /* chains */
    CHECK(dk_json_int(dk_json_get(v, "key"), &i) == 0 && i == 7);            /* an escaped key */
    CHECK(dk_json_int(dk_json_get(v, "dup"), &i) == 0 && i == 1);            /* the first of two */
    CHECK(dk_json_int(dk_json_get(v, "n"), &i) == 0 && i == -12);
    CHECK(dk_json_count(dk_json_get(v, "e")) == 0);
    CHECK(dk_json_count(dk_json_path(v, "a.b")) == 2);
    CHECK(dk_json_count(v) == 6);
    CHECK(dk_json_count(parse("\"not a container\"")) == 0);
    /* Iteration gives keys and values in order. */
    dk_json val = {0}, key;
    const char *keys[] = {"a", "key", "dup", "dup", "e", "n"};
    size_t at = 0;
    while (dk_json_next(v, &val, &key)) {
        CHECK(at < 6 && dk_json_eq(key, keys[at]));
        at++;
    }
    CHECK(at == 6);
    /* A value's text is a slice of the document, usable as raw JSON. */
    dk_json b = dk_json_path(v, "a.b[0]");
    CHECK(b.n == 7 && memcmp(b.p, "{\"c\":1}", 7) == 0);
}

static void test_numbers(void) {
    long long i = 0;
    double d = 0;
    CHECK(dk_json_int(parse("0"), &i) == 0 && i == 0);
    CHECK(dk_json_int(parse("-17"), &i) == 0 && i == -17);
    CHECK(dk_json_int(parse("9223372036854775807"), &i) == 0 && i == 9223372036854775807LL);
    CHECK(dk_json_int(parse("-9223372036854775808"), &i) == 0 && i == (-9223372036854775807LL - 1));
    CHECK(dk_json_int(parse("9223372036854775808"), &i) == -1);                 /* overflow */
    CHECK(dk_json_int(parse("1.5"), &i) == -1);
    CHECK(dk_json_int(parse("1e3"), &i) == -1);
    CHECK(dk_json_int(parse("\"12\""), &i) == -1);
    CHECK(dk_json_num(parse("1.5"), &d) == 0 && d == 1.5);
    CHECK(dk_json_num(parse("-2.5e3"), &d) == 0 && d == -2500);
    CHECK(dk_json_num(parse("1E2"), &d) == 0 && d == 100);
    CHECK(dk_json_num(parse("-0"), &d) == 0 && d == 0);
    CHECK(dk_json_num(parse("true"), &d) == -1);
}

static void test_writer(void) {
    dk_buf b = {0};
    dk_put_open(&b, '{');
    dk_put_key(&b, "s");
    dk_put_str(&b, "q\"b\\n\n\x01\x1f\x7f caf\xc3\xa9");
    dk_put_key(&b, "bad");
    dk_put_strn(&b, "a\xff" "b\xc3", 4); /* not UTF-8: a stray byte, a cut sequence */
    dk_put_key(&b, "i");
    dk_put_int(&b, -42);
    dk_put_key(&b, "x");
    dk_put_num(&b, 0.25);
    dk_put_key(&b, "nan");
    dk_put_num(&b, NAN);
    dk_put_key(&b, "t");
    dk_put_bool(&b, 1);
    dk_put_key(&b, "z");
    dk_put_null(&b);
    dk_put_key(&b, "nil");
    dk_put_str(&b, NULL);
    dk_put_key(&b, "arr");
    dk_put_open(&b, '[');
    dk_put_open(&b, '[');
    dk_put_close(&b, ']');
    dk_put_open(&b, '[');
    dk_put_int(&b, 1);
    dk_put_open(&b, '{');
    dk_put_close(&b, '}');
    dk_put_close(&b, ']');
    dk_put_raw(&b, "{\"r\":[1]}", 9);
    dk_put_str(&b, "");
    dk_put_close(&b, ']');
    dk_put_close(&b, '}');
    const char *want = "{\"s\":\"q\\\"b\\\\n\\n\\u0001\\u001f\x7f caf\xc3\xa9\",\"bad\":\"a\xef\xbf\xbd" "b\xef\xbf\xbd\","
                       "\"i\":-42,\"x\":0.25,\"nan\":null,\"t\":true,\"z\":null,\"nil\":null,\"arr\":[[],[1,{}],{\"r\":[1]},\"\"]}";
    if (strcmp(b.data, want) != 0) printf("  wrote %s\n  want  %s\n", b.data, want);
    CHECK(!b.failed && strcmp(b.data, want) == 0 && b.len == strlen(want));
    /* What it wrote reads back. */
    CHECK(STR_IS(b.data, "s", "q\"b\\n\n\x01\x1f\x7f caf\xc3\xa9"));
    /* Every byte 1..127 survives a round trip. */
    char all[128];
    for (int c = 1; c < 128; c++) all[c - 1] = (char)c;
    all[127] = '\0';
    dk_buf_clear(&b);
    dk_put_str(&b, all);
    CHECK(str_is(b.data, "", all, 127));
    /* A member in one call. */
    dk_buf_clear(&b);
    dk_put_open(&b, '{');
    dk_put_kstr(&b, "a", "x");
    dk_put_kint(&b, "b", 7);
    dk_put_kraw(&b, "c", "[true]", 6);
    dk_put_close(&b, '}');
    CHECK(strcmp(b.data, "{\"a\":\"x\",\"b\":7,\"c\":[true]}") == 0);
    /* printf and consume */
    dk_buf_clear(&b);
    dk_buf_printf(&b, "%s-%d", "x", 5);
    for (int k = 0; k < 100; k++) dk_buf_printf(&b, "%0300d", k); /* longer than the small buffer */
    CHECK(b.len == 3 + 100 * 300 && memcmp(b.data, "x-5", 3) == 0);
    dk_buf_consume(&b, 3);
    CHECK(b.len == 100 * 300 && b.data[b.len] == '\0' && b.data[0] == '0');
    dk_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0);
}

/* ---- SSE ---- */

typedef struct {
    char log[4096];
    int count, stop_at;
} sink_t;

static int on_event(void *ctx, const dk_sse_event *e) {
    sink_t *s = (sink_t *)ctx;
    size_t n = strlen(s->log);
    snprintf(s->log + n, sizeof s->log - n, "[%s|%.*s|%s]", e->event, (int)e->data_len, e->data, e->id);
    CHECK(e->data[e->data_len] == '\0');
    s->count++;
    return s->count == s->stop_at ? 7 : 0;
}

static const char sse_body[] =
    ": a comment, ignored\r\n"
    "data: one\r\n\r\n"                         /* CRLF */
    "event: delta\n"
    "data:two\n"                                /* no space after the colon */
    "data:  three\n"                            /* one space dropped, the second kept */
    "id: 42\n\n"
    "data\r\r"                                  /* CR alone; a field without colon: empty data */
    "event: ping\n\n"                           /* no data: not dispatched */
    "retry: 100\n"
    "data: {\"a\":\"x\\ny\"}\n"
    "unknown: field\n"
    "\n"
    "data: tail without end";

static const char sse_want[] = "[message|one|][delta|two\n three|42][message||42][message|{\"a\":\"x\\ny\"}|42]";

static void test_sse(void) {
    size_t n = sizeof sse_body - 1;
    /* Whole, one byte at a time, and split in two at every position. */
    for (size_t split = 0; split <= n + 1; split++) {
        sink_t sink = {{0}, 0, 0};
        dk_sse sse = {0};
        int rc = 0;
        if (split == n + 1) {
            for (size_t i = 0; i < n && !rc; i++) rc = dk_sse_feed(&sse, sse_body + i, 1, on_event, &sink);
        } else {
            rc = dk_sse_feed(&sse, sse_body, split, on_event, &sink);
            if (!rc) rc = dk_sse_feed(&sse, sse_body + split, n - split, on_event, &sink);
        }
        int cut = dk_sse_finish(&sse);
        if (strcmp(sink.log, sse_want) != 0) printf("  split %zu: %s\n", split, sink.log);
        CHECK(rc == 0 && strcmp(sink.log, sse_want) == 0 && cut == 1);
        dk_sse_free(&sse);
    }
    /* A CR LF pair split across reads is one line end, not two. */
    sink_t sink = {{0}, 0, 0};
    dk_sse sse = {0};
    CHECK(dk_sse_feed(&sse, "data: a\r", 8, on_event, &sink) == 0);
    CHECK(dk_sse_feed(&sse, "\n", 1, on_event, &sink) == 0 && sink.count == 0);
    CHECK(dk_sse_feed(&sse, "", 0, on_event, &sink) == 0);
    CHECK(dk_sse_feed(&sse, "\r\n", 2, on_event, &sink) == 0 && sink.count == 1);
    CHECK(dk_sse_finish(&sse) == 0);
    /* The callback's nonzero return stops the feed and is returned. */
    sink_t stop = {{0}, 0, 1};
    CHECK(dk_sse_feed(&sse, "data: 1\n\ndata: 2\n\n", 18, on_event, &stop) == 7 && stop.count == 1);
    dk_sse_free(&sse);
    /* Bounded: a line or an event over max_line fails. */
    dk_sse small = {0};
    small.lines.max_line = 16;
    sink_t s2 = {{0}, 0, 0};
    CHECK(dk_sse_feed(&small, "data: 0123456789", 16, on_event, &s2) == 0);
    CHECK(dk_sse_feed(&small, "ABCDEF\n", 7, on_event, &s2) == DK_LINES_TOO_LONG);
    dk_sse_free(&small);
    dk_sse many = {0};
    many.lines.max_line = 16;
    CHECK(dk_sse_feed(&many, "data: 01234\ndata: 56789\ndata: abcdef\n", 37, on_event, &s2) == DK_LINES_TOO_LONG && s2.count == 0);
    dk_sse_free(&many);
}

/* ---- NDJSON ---- */

static int on_line(void *ctx, const char *line, size_t n) {
    sink_t *s = (sink_t *)ctx;
    size_t at = strlen(s->log);
    dk_json v = dk_json_parse(line, n);
    long long i = -1;
    dk_json_int(dk_json_get(v, "a"), &i);
    snprintf(s->log + at, sizeof s->log - at, "<%lld>", i);
    s->count++;
    return 0;
}

static void test_ndjson(void) {
    static const char body[] = "{\"a\":1}\r\n\n  \n{\"a\":2}\n{\"a\":\r3}";
    size_t n = sizeof body - 1;
    for (size_t split = 0; split <= n; split++) {
        sink_t sink = {{0}, 0, 0};
        dk_ndjson j = {{{0}, 0, 0, 0}, NULL, NULL};
        int rc = dk_ndjson_feed(&j, body, split, on_line, &sink);
        if (!rc) rc = dk_ndjson_feed(&j, body + split, n - split, on_line, &sink);
        if (!rc) rc = dk_ndjson_finish(&j, on_line, &sink);
        if (strcmp(sink.log, "<1><2><3>") != 0) printf("  split %zu: %s\n", split, sink.log);
        CHECK(rc == 0 && strcmp(sink.log, "<1><2><3>") == 0);
        dk_ndjson_free(&j);
    }
}

int main(void) {
    test_validation();
    test_strings();
    test_lookup();
    test_numbers();
    test_writer();
    test_sse();
    test_ndjson();
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
