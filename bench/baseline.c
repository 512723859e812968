/*
 * bench/baseline.c -- the C baseline of the benchmark suite: the physical
 * limit descartes is compared to, doing the same work with libcurl (multi
 * interface, one thread) and cJSON (Debian's libcjson-dev).
 *
 *   baseline complete openai|anthropic URL N [--expect FILE]
 *       N sequential non-streamed completions (an OpenAI chat completion or
 *       an Anthropic message): build the request JSON, POST it, parse the
 *       answer, copy out the message's text.
 *   baseline stream openai|anthropic|ollama URL N [--concurrency K] [--expect FILE]
 *       N streamed completions, K at once on one multi handle: split the
 *       body into server-sent events (or NDJSON lines), parse every chunk,
 *       extract its text delta and append it to the stream's text.
 *   baseline spawn N STDIN_FILE -- COMMAND [ARG...]
 *       runs COMMAND N times one after another (posix_spawn, no shell),
 *       writes STDIN_FILE to its stdin, reads its stdout to the end.
 *
 * Prints one JSON line: requests, seconds, requests_per_second, cpu_seconds
 * (user + system over the timed part, getrusage), voluntary_switches (the
 * process's voluntary context switches over the timed part), chunks (text
 * deltas parsed), text_bytes, text_matches (every stream's joined text equal
 * byte for byte to --expect FILE; null without it), peak_rss_kb, threads_peak,
 * and per-request latencies in ms (median, mean, min, max).
 *
 * What descartes does that this does too, per request: build the request
 * document, a fresh header list, reset and configure a reused easy handle,
 * accept any content encoding; per chunk: frame it, parse its JSON, copy the
 * text out. What it skips: everything a library does beyond that (deadlines,
 * cancellation, error mapping, an async interface, a plugin boundary).
 *
 * Build: cc -O2 -o baseline bench/baseline.c -lcurl -lcjson
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- small helpers ------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void buf_append(buf_t *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) { perror("realloc"); exit(70); }
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A field of /proc/self/status ("Threads", "VmHWM"): its number, or -1. */
static long status_field(const char *name) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    size_t len = strlen(name);
    long n = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, name, len) == 0 && line[len] == ':') { n = atol(line + len + 1); break; }
    }
    fclose(f);
    return n;
}

static int threads_now(void) { return (int)status_field("Threads"); }

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Voluntary context switches of the whole process so far (every thread). */
static long voluntary_switches(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_nvcsw;
}

/* The peak RSS of this process image in KiB. Not getrusage's ru_maxrss:
 * Linux carries that over exec from the parent (a Python runner's 18 MB). */
static long peak_rss_kb(void) { return status_field("VmHWM"); }

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "baseline: cannot open %s: %s\n", path, strerror(errno)); exit(66); }
    buf_t b = {0};
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf_append(&b, tmp, n);
    fclose(f);
    if (!b.p) buf_append(&b, "", 0);
    *len = b.n;
    return b.p;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_result(const char *mode, int requests, int concurrency, double seconds, double cpu, long switches,
                         long chunks, size_t text_bytes, int matches, long rss, int threads, double *lat, int nlat) {
    qsort(lat, (size_t)nlat, sizeof *lat, cmp_double);
    double sum = 0;
    for (int i = 0; i < nlat; i++) sum += lat[i];
    printf("{\"tool\":\"baseline\",\"mode\":\"%s\",\"requests\":%d,\"concurrency\":%d,\"seconds\":%.6f,"
           "\"requests_per_second\":%.1f,\"cpu_seconds\":%.6f,\"voluntary_switches\":%ld,\"chunks\":%ld,\"text_bytes\":%zu,\"text_matches\":%s,"
           "\"peak_rss_kb\":%ld,\"threads_peak\":%d,"
           "\"latency_ms\":{\"median\":%.3f,\"mean\":%.3f,\"min\":%.3f,\"max\":%.3f}}\n",
           mode, requests, concurrency, seconds, requests / seconds, cpu, switches, chunks, text_bytes,
           matches < 0 ? "null" : matches ? "true" : "false", rss, threads,
           nlat ? lat[nlat / 2] * 1e3 : 0, nlat ? sum / nlat * 1e3 : 0, nlat ? lat[0] * 1e3 : 0,
           nlat ? lat[nlat - 1] * 1e3 : 0);
}

/* ---- transfers ---------------------------------------------------------- */

enum format { OPENAI, ANTHROPIC, OLLAMA };

typedef struct {
    CURL *easy;
    struct curl_slist *headers;
    char *body;           /* the request document (cJSON_PrintUnformatted) */
    int streaming;
    enum format format;
    buf_t whole;          /* a non-streamed answer */
    buf_t line;           /* a line cut by a read boundary */
    buf_t data;           /* the current event's data lines */
    int skip_lf;          /* the last read ended in CR */
    int done;             /* saw the stream's terminal event */
    buf_t text;           /* the joined text */
    char finish[32];
    long input_tokens, output_tokens;
    long chunks;
    double started;
} xfer_t;

static const char *PROMPT = "Say hello to the benchmark in one short sentence.";

static char *request_body(enum format f, int streaming) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", f == ANTHROPIC ? "claude-haiku-4-5" : f == OLLAMA ? "llama3.2:1b" : "gpt-4o-mini");
    cJSON *msgs = cJSON_AddArrayToObject(o, "messages");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", PROMPT);
    cJSON_AddItemToArray(msgs, m);
    if (f == ANTHROPIC) cJSON_AddNumberToObject(o, "max_tokens", 4096);
    cJSON_AddBoolToObject(o, "stream", streaming);
    if (f == OPENAI && streaming) {
        cJSON *so = cJSON_AddObjectToObject(o, "stream_options");
        cJSON_AddBoolToObject(so, "include_usage", 1);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void text_of_string(xfer_t *x, const cJSON *s) {
    if (cJSON_IsString(s) && s->valuestring[0]) {
        buf_append(&x->text, s->valuestring, strlen(s->valuestring));
        x->chunks++;
    }
}

/* One event's data (SSE) or one line (NDJSON). */
static void chunk(xfer_t *x, const char *d, size_t n) {
    if (x->format == OPENAI && n == 6 && memcmp(d, "[DONE]", 6) == 0) {
        x->done = 1;
        return;
    }
    cJSON *root = cJSON_ParseWithLength(d, n);
    if (!root) { fprintf(stderr, "baseline: a chunk is not JSON: %.*s\n", (int)(n > 200 ? 200 : n), d); exit(65); }
    if (x->format == OPENAI) {
        cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
        cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
        if (c0) {
            cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
            if (delta) text_of_string(x, cJSON_GetObjectItemCaseSensitive(delta, "content"));
            cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");
            if (cJSON_IsString(fr)) snprintf(x->finish, sizeof x->finish, "%s", fr->valuestring);
        }
        cJSON *u = cJSON_GetObjectItemCaseSensitive(root, "usage");
        if (cJSON_IsObject(u)) {
            x->input_tokens = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens"));
            x->output_tokens = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "completion_tokens"));
        }
    } else if (x->format == ANTHROPIC) {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "type"));
        if (type && strcmp(type, "content_block_delta") == 0) {
            cJSON *delta = cJSON_GetObjectItemCaseSensitive(root, "delta");
            const char *dt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(delta, "type"));
            if (dt && strcmp(dt, "text_delta") == 0) text_of_string(x, cJSON_GetObjectItemCaseSensitive(delta, "text"));
        } else if (type && strcmp(type, "message_delta") == 0) {
            cJSON *delta = cJSON_GetObjectItemCaseSensitive(root, "delta");
            const char *sr = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(delta, "stop_reason"));
            if (sr) snprintf(x->finish, sizeof x->finish, "%s", sr);
            cJSON *u = cJSON_GetObjectItemCaseSensitive(root, "usage");
            if (u) x->output_tokens = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "output_tokens"));
        } else if (type && strcmp(type, "message_stop") == 0) {
            x->done = 1;
        }
    } else {
        cJSON *msg = cJSON_GetObjectItemCaseSensitive(root, "message");
        if (msg) text_of_string(x, cJSON_GetObjectItemCaseSensitive(msg, "content"));
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "done"))) {
            const char *r = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "done_reason"));
            if (r) snprintf(x->finish, sizeof x->finish, "%s", r);
            x->done = 1;
        }
    }
    cJSON_Delete(root);
}

/* One complete line of the body. */
static void line(xfer_t *x, const char *l, size_t n) {
    if (x->format == OLLAMA) {
        if (n) chunk(x, l, n);
        return;
    }
    if (n == 0) {  /* a blank line dispatches the event */
        if (x->data.n) chunk(x, x->data.p, x->data.n);
        x->data.n = 0;
        return;
    }
    if (l[0] == ':') return;
    if (n >= 5 && memcmp(l, "data:", 5) == 0) {
        size_t v = (n > 5 && l[5] == ' ') ? 6 : 5;
        if (x->data.n) buf_append(&x->data, "\n", 1);
        buf_append(&x->data, l + v, n - v);
    }
    /* event:, id:, retry: are not needed: the data's "type" names the event. */
}

static size_t on_stream(char *p, size_t size, size_t nmemb, void *ud) {
    xfer_t *x = ud;
    size_t n = size * nmemb, i = 0, start = 0;
    if (x->done) return n;
    if (x->skip_lf && n && p[0] == '\n') i = start = 1;
    x->skip_lf = 0;
    for (; i < n; i++) {
        char c = p[i];
        if (c != '\n' && c != '\r') continue;
        if (x->line.n) {
            buf_append(&x->line, p + start, i - start);
            line(x, x->line.p, x->line.n);
            x->line.n = 0;
        } else {
            line(x, p + start, i - start);
        }
        if (c == '\r') {
            if (i + 1 < n) { if (p[i + 1] == '\n') i++; } else x->skip_lf = 1;
        }
        start = i + 1;
    }
    if (start < n) buf_append(&x->line, p + start, n - start);
    return n;
}

static size_t on_whole(char *p, size_t size, size_t nmemb, void *ud) {
    xfer_t *x = ud;
    buf_append(&x->whole, p, size * nmemb);
    return size * nmemb;
}

static void configure(xfer_t *x, const char *url, const char *key) {
    curl_easy_reset(x->easy);
    x->body = request_body(x->format, x->streaming);
    x->headers = NULL;
    char h[256];
    if (x->format == ANTHROPIC) {
        snprintf(h, sizeof h, "x-api-key: %s", key);
        x->headers = curl_slist_append(x->headers, h);
        x->headers = curl_slist_append(x->headers, "anthropic-version: 2023-06-01");
    } else {
        snprintf(h, sizeof h, "Authorization: Bearer %s", key);
        x->headers = curl_slist_append(x->headers, h);
    }
    x->headers = curl_slist_append(x->headers, "User-Agent: descartes-baseline/1.0");
    x->headers = curl_slist_append(x->headers, "Content-Type: application/json");
    x->headers = curl_slist_append(x->headers, x->streaming ? (x->format == OLLAMA ? "Accept: application/x-ndjson" : "Accept: text/event-stream")
                                                            : "Accept: application/json");
    curl_easy_setopt(x->easy, CURLOPT_URL, url);
    curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(x->easy, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->body);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(x->body));
    curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, x->streaming ? on_stream : on_whole);
    curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    x->whole.n = x->line.n = x->data.n = 0;
    x->text.n = 0;
    x->skip_lf = x->done = 0;
    x->finish[0] = 0;
    x->chunks = 0;
}

static void release_request(xfer_t *x) {
    curl_slist_free_all(x->headers);
    x->headers = NULL;
    cJSON_free(x->body);
    x->body = NULL;
}

/* The text of a whole chat completion or message. */
static void parse_whole(xfer_t *x) {
    cJSON *root = cJSON_ParseWithLength(x->whole.p, x->whole.n);
    if (!root) { fprintf(stderr, "baseline: the answer is not JSON\n"); exit(65); }
    x->text.n = 0;
    if (x->format == ANTHROPIC) {
        /* content: the text blocks' texts joined. */
        cJSON *block;
        cJSON_ArrayForEach(block, cJSON_GetObjectItemCaseSensitive(root, "content")) {
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(block, "type"));
            if (t && strcmp(t, "text") == 0) text_of_string(x, cJSON_GetObjectItemCaseSensitive(block, "text"));
        }
        const char *sr = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "stop_reason"));
        if (sr) snprintf(x->finish, sizeof x->finish, "%s", sr);
        cJSON *u = cJSON_GetObjectItemCaseSensitive(root, "usage");
        if (u) {
            x->input_tokens = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "input_tokens"));
            x->output_tokens = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "output_tokens"));
        }
        cJSON_Delete(root);
        return;
    }
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), 0);
    cJSON *msg = cJSON_GetObjectItemCaseSensitive(c0, "message");
    text_of_string(x, cJSON_GetObjectItemCaseSensitive(msg, "content"));
    const char *fr = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c0, "finish_reason"));
    if (fr) snprintf(x->finish, sizeof x->finish, "%s", fr);
    cJSON *u = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (u) {
        x->input_tokens = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens"));
        x->output_tokens = (long)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(u, "completion_tokens"));
    }
    cJSON_Delete(root);
}

static int run_http(const char *mode, enum format f, int streaming, const char *url, int n, int concurrency, const char *expect) {
    const char *key = "sk-bench-0123456789abcdef";
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *multi = curl_multi_init();
    if (concurrency < 1) concurrency = 1;
    if (concurrency > n) concurrency = n;
    xfer_t *xs = calloc((size_t)concurrency, sizeof *xs);
    double *lat = calloc((size_t)n, sizeof *lat);
    /* Texts kept for the check, one per stream (the last request's for complete). */
    buf_t *texts = calloc((size_t)n, sizeof *texts);
    for (int i = 0; i < concurrency; i++) {
        xs[i].easy = curl_easy_init();
        xs[i].format = f;
        xs[i].streaming = streaming;
    }
    int started = 0, finished = 0, threads = threads_now();
    long chunks = 0;
    size_t text_bytes = 0;
    double t0 = now_s(), c0 = cpu_s();
    long s0 = voluntary_switches();
    for (int i = 0; i < concurrency; i++) {
        configure(&xs[i], url, key);
        xs[i].started = now_s();
        curl_multi_add_handle(multi, xs[i].easy);
        started++;
    }
    unsigned loops = 0;
    while (finished < n) {
        int running = 0;
        curl_multi_perform(multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            xfer_t *x;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            long status = 0;
            curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
            if (msg->data.result != CURLE_OK || status != 200) {
                fprintf(stderr, "baseline: transfer failed: %s (HTTP %ld)\n", curl_easy_strerror(msg->data.result), status);
                exit(69);
            }
            curl_multi_remove_handle(multi, x->easy);
            if (!streaming) parse_whole(x);
            else if (x->line.n) line(x, x->line.p, x->line.n), line(x, "", 0);
            if (streaming && !x->done) { fprintf(stderr, "baseline: a stream ended before its terminal event\n"); exit(69); }
            lat[finished] = now_s() - x->started;
            chunks += x->chunks;
            text_bytes += x->text.n;
            texts[finished] = x->text;  /* kept for the check; the next request starts a new one */
            memset(&x->text, 0, sizeof x->text);
            finished++;
            release_request(x);
            if (started < n) {
                configure(x, url, key);
                x->started = now_s();
                curl_multi_add_handle(multi, x->easy);
                started++;
            }
        }
        if ((++loops & 63) == 0) { int t = threads_now(); if (t > threads) threads = t; }
        if (finished < n) curl_multi_poll(multi, NULL, 0, 1000, NULL);
    }
    double seconds = now_s() - t0, cpu = cpu_s() - c0;
    long switches = voluntary_switches() - s0;
    long rss = peak_rss_kb();
    int t = threads_now();
    if (t > threads) threads = t;
    int matches = -1;
    if (expect) {
        size_t len;
        char *want = read_file(expect, &len);
        matches = 1;
        for (int i = 0; i < n; i++) {
            if (texts[i].n != len || memcmp(texts[i].p ? texts[i].p : "", want, len) != 0) matches = 0;
        }
        free(want);
    }
    print_result(mode, n, concurrency, seconds, cpu, switches, chunks, text_bytes, matches, rss, threads, lat, n);
    for (int i = 0; i < concurrency; i++) curl_easy_cleanup(xs[i].easy);
    curl_multi_cleanup(multi);
    curl_global_cleanup();
    return matches == 0 ? 1 : 0;
}

/* ---- spawn: a command run directly -------------------------------------- */

static int run_spawn(int n, const char *stdin_file, char **argv) {
    size_t in_len;
    char *in = read_file(stdin_file, &in_len);
    double *lat = calloc((size_t)n, sizeof *lat);
    char buf[65536];
    size_t out_bytes = 0;
    double t0 = now_s(), c0 = cpu_s();
    long s0 = voluntary_switches();
    for (int i = 0; i < n; i++) {
        double s = now_s();
        int pin[2], pout[2];
        if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC)) { perror("pipe"); return 70; }
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, pin[0], 0);
        posix_spawn_file_actions_adddup2(&fa, pout[1], 1);
        pid_t pid;
        int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        close(pin[0]);
        close(pout[1]);
        if (rc) { fprintf(stderr, "baseline: cannot run %s: %s\n", argv[0], strerror(rc)); return 69; }
        size_t off = 0;
        while (off < in_len) {
            ssize_t w = write(pin[1], in + off, in_len - off);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            off += (size_t)w;
        }
        close(pin[1]);
        for (;;) {
            ssize_t r = read(pout[0], buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            out_bytes += (size_t)r;
        }
        close(pout[0]);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { fprintf(stderr, "baseline: %s failed (status %d)\n", argv[0], st); return 69; }
        lat[i] = now_s() - s;
    }
    double seconds = now_s() - t0;
    print_result("spawn", n, 1, seconds, cpu_s() - c0, voluntary_switches() - s0, 0, out_bytes, -1, peak_rss_kb(), threads_now(), lat, n);
    return 0;
}

static int usage(void) {
    fprintf(stderr,
            "usage: baseline complete openai|anthropic URL N [--expect FILE]\n"
            "       baseline stream openai|anthropic|ollama URL N [--concurrency K] [--expect FILE]\n"
            "       baseline spawn N STDIN_FILE -- COMMAND [ARG...]\n");
    return 64;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    if (strcmp(argv[1], "spawn") == 0) {
        if (argc < 6 || strcmp(argv[4], "--") != 0) return usage();
        return run_spawn(atoi(argv[2]), argv[3], argv + 5);
    }
    const char *expect = NULL;
    int concurrency = 1;
    int pos = 0;
    const char *args[4] = {0};
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc) expect = argv[++i];
        else if (strcmp(argv[i], "--concurrency") == 0 && i + 1 < argc) concurrency = atoi(argv[++i]);
        else if (pos < 4) args[pos++] = argv[i];
        else return usage();
    }
    if (pos != 3) return usage();
    enum format f;
    if (strcmp(args[0], "openai") == 0) f = OPENAI;
    else if (strcmp(args[0], "anthropic") == 0) f = ANTHROPIC;
    else if (strcmp(args[0], "ollama") == 0) f = OLLAMA;
    else return usage();
    if (strcmp(argv[1], "complete") == 0 && f != OLLAMA) {
        return run_http("complete", f, 0, args[1], atoi(args[2]), 1, expect);
    }
    if (strcmp(argv[1], "stream") == 0) {
        return run_http("stream", f, 1, args[1], atoi(args[2]), concurrency, expect);
    }
    return usage();
}
