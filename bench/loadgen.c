/* The gateway benchmark's load generator (bench/run.py, workload 7): HTTP/1.1
 * keep-alive POSTs to one URL on 127.0.0.1, from one thread with epoll.
 *
 *   loadgen --port P --path PATH --body FILE [--header 'K: V']... --duration S
 *           (--rate R [--connections C] | --closed C) [--stream] [--hold N]
 *
 * --rate R: open loop. Request i is due at start + i/R; it goes out on a
 *   free connection (C of them, default 256) and its latency counts from
 *   when it was due, so a server that falls behind is charged for the wait
 *   (no coordinated omission). Stops sending at --duration and waits at
 *   most 10 s more for answers.
 * --closed C: C connections each sending the next request as soon as the
 *   last answer is complete, for --duration: the highest rate the server
 *   sustains, and the latency at it.
 * --stream: also the time to the first SSE event ("data:") and the events
 *   per second of each answer.
 * --hold N: N connections each send one (streamed) request at once, read
 *   them concurrently, and the line "HOLDING" is printed on stderr once every
 *   one has received its first event, so the caller can read the server's
 *   memory with N streams open; then they are read to their end.
 *
 * Prints one JSON object: requests, errors, seconds, rate (answers/s),
 * latency_us {p50, p90, p99, p999, max}, and with --stream ttft_us {...},
 * events, events_per_second. An answer is an error unless its status is 200
 * and its body is complete (Content-Length, or chunked to its last chunk).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

typedef struct {
    int fd;
    int busy;
    double due;      /* when the request in flight was due (open loop) or sent */
    double first;    /* first event seen (stream), 0 if none yet */
    long events;
    /* response parsing */
    char *buf;
    size_t len, cap;
    int headers_done, status, chunked;
    long content_length; /* -1: unknown */
    size_t body_start;   /* offset of the body in buf (headers parsed) */
    size_t consumed;     /* body bytes consumed (content-length mode) */
    size_t scan;         /* where to look for "data:" next */
    int done;
} Conn;

static int port;
static char *request;
static size_t request_len;
static int stream_mode;

static double *lat, *ttft;
static size_t nlat, ntttf, caplat;
static long errors, events_total;

static void record(double l, double t) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof(double));
        ttft = realloc(ttft, caplat * sizeof(double));
    }
    lat[nlat++] = l;
    if (t >= 0) ttft[ntttf++] = t;
}

static int connect_one(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static void reset(Conn *c) {
    c->len = 0;
    c->headers_done = c->status = c->chunked = 0;
    c->content_length = -1;
    c->body_start = c->consumed = c->scan = 0;
    c->first = 0;
    c->events = 0;
    c->done = 0;
}

static int send_request(Conn *c, double due) {
    reset(c);
    c->busy = 1;
    c->due = due;
    size_t off = 0;
    while (off < request_len) {
        ssize_t n = write(c->fd, request + off, request_len - off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue; /* small requests: the socket buffer takes them */
            return -1;
        }
        off += (size_t)n;
    }
    return 0;
}

/* Counts SSE events ("data:" at a line start) in the body seen so far. */
static void count_events(Conn *c, double t) {
    if (!stream_mode) return;
    size_t from = c->scan > c->body_start ? c->scan : c->body_start;
    for (size_t i = from; i + 5 <= c->len; i++) {
        if (memcmp(c->buf + i, "data:", 5) == 0 && (i == c->body_start || c->buf[i - 1] == '\n')) {
            if (c->events == 0) c->first = t;
            c->events++;
        }
    }
    c->scan = c->len >= 4 ? c->len - 4 : 0;
    if (c->scan < from) c->scan = from;
}

/* Whether the response in c->buf is complete. */
static int complete(Conn *c) {
    if (!c->headers_done) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) return 0;
        c->headers_done = 1;
        c->body_start = (size_t)(end - c->buf) + 4;
        c->status = atoi(c->buf + 9);
        c->buf[c->body_start - 1] = 0;
        for (char *p = c->buf; p < c->buf + c->body_start; p++) *p = (*p >= 'A' && *p <= 'Z') ? *p + 32 : *p;
        char *cl = strstr(c->buf, "\ncontent-length:");
        if (cl) c->content_length = atol(cl + 16);
        if (strstr(c->buf, "\ntransfer-encoding: chunked")) c->chunked = 1;
        c->buf[c->body_start - 1] = '\n';
    }
    if (c->content_length >= 0) return c->len - c->body_start >= (size_t)c->content_length;
    if (c->chunked) {
        /* Walk the chunks from the start of the body each time (bodies are small or read in large pieces). */
        size_t p = c->body_start;
        for (;;) {
            char *eol = memmem(c->buf + p, c->len - p, "\r\n", 2);
            if (!eol) return 0;
            long size = strtol(c->buf + p, NULL, 16);
            size_t data = (size_t)(eol - c->buf) + 2;
            if (size == 0) return memmem(c->buf + data - 2, c->len - (data - 2), "\r\n\r\n", 4) != NULL;
            if (c->len < data + (size_t)size + 2) return 0;
            p = data + (size_t)size + 2;
        }
    }
    return 0; /* no length: this client does not handle close-delimited bodies */
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void percentiles(const char *name, double *v, size_t n) {
    qsort(v, n, sizeof(double), cmp);
#define P(q) (n ? v[(size_t)((q) * (n - 1))] * 1e6 : 0)
    printf("\"%s\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, \"max\": %.1f}", name, P(0.5), P(0.9), P(0.99), P(0.999),
           n ? v[n - 1] * 1e6 : 0);
#undef P
}

int main(int argc, char **argv) {
    const char *path = NULL, *body_file = NULL;
    char headers[4096] = "";
    double rate = 0, duration = 5;
    int connections = 256, closed = 0, hold = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--port") && v) port = atoi(v), i++;
        else if (!strcmp(a, "--path") && v) path = v, i++;
        else if (!strcmp(a, "--body") && v) body_file = v, i++;
        else if (!strcmp(a, "--header") && v) {
            strncat(headers, v, sizeof headers - strlen(headers) - 3);
            strcat(headers, "\r\n");
            i++;
        } else if (!strcmp(a, "--rate") && v) rate = atof(v), i++;
        else if (!strcmp(a, "--duration") && v) duration = atof(v), i++;
        else if (!strcmp(a, "--connections") && v) connections = atoi(v), i++;
        else if (!strcmp(a, "--closed") && v) closed = atoi(v), i++;
        else if (!strcmp(a, "--hold") && v) hold = atoi(v), i++;
        else if (!strcmp(a, "--stream")) stream_mode = 1;
        else {
            fprintf(stderr, "loadgen: unknown argument '%s' (see bench/loadgen.c)\n", a);
            return 64;
        }
    }
    if (!port || !path || !body_file || (!rate && !closed && !hold)) {
        fprintf(stderr, "loadgen: needs --port, --path, --body and one of --rate, --closed, --hold\n");
        return 64;
    }
    FILE *f = fopen(body_file, "rb");
    if (!f) die(body_file);
    static char body[1 << 16];
    size_t blen = fread(body, 1, sizeof body, f);
    fclose(f);
    request = malloc(blen + 8192);
    request_len = (size_t)sprintf(request,
                                  "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n",
                                  path, port, blen, headers);
    memcpy(request + request_len, body, blen);
    request_len += blen;

    int n = closed ? closed : hold ? hold : connections;
    Conn *conns = calloc((size_t)n, sizeof(Conn));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; i++) {
        conns[i].fd = connect_one();
        conns[i].cap = 1 << 16;
        conns[i].buf = malloc(conns[i].cap);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &e);
    }
    double start = now(), stop = start + duration;
    long due_index = 0, sent = 0, answered = 0;
    int *free_list = malloc(sizeof(int) * (size_t)n), nfree = 0;
    for (int i = n - 1; i >= 0; i--) free_list[nfree++] = i;
    int holding_said = 0;
    if (hold) {
        for (int i = 0; i < n; i++) send_request(&conns[i], now()), sent++;
        nfree = 0;
        stop = start; /* nothing more to send */
    }
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (!hold && t < stop) {
            if (closed) {
                while (nfree > 0) {
                    int i = free_list[--nfree];
                    if (send_request(&conns[i], t) != 0) errors++;
                    sent++;
                }
            } else {
                while (start + due_index / rate <= t && nfree > 0) {
                    double due = start + due_index / rate;
                    int i = free_list[--nfree];
                    if (send_request(&conns[i], due) != 0) errors++;
                    sent++;
                    due_index++;
                }
            }
        }
        if (sent == answered + errors && (hold || t >= stop)) break;
        if (t > stop + 10) break; /* answers still out after 10 s: counted as errors below */
        /* Wake at the next request's due time (epoll_pwait2's nanoseconds:
         * epoll_wait's milliseconds would send most requests late). */
        struct timespec wait = {0, 100000000};
        if (rate && !hold && t < stop) {
            double next = start + due_index / rate - t;
            if (next < 0) next = 0;
            if (next < 0.1) wait.tv_nsec = (long)(next * 1e9);
        }
        int k = epoll_pwait2(ep, evs, 256, &wait, NULL);
        if (k < 0 && errno == ENOSYS) k = epoll_wait(ep, evs, 256, (int)(wait.tv_nsec / 1000000) + 1);
        t = now();
        for (int j = 0; j < k; j++) {
            Conn *c = &conns[evs[j].data.u32];
            for (;;) {
                if (c->cap - c->len < 16384) {
                    c->cap *= 2;
                    c->buf = realloc(c->buf, c->cap);
                }
                ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                if (r <= 0) {
                    /* closed by the server */
                    if (c->busy) errors++, c->busy = 0;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->fd = connect_one();
                    struct epoll_event e = {.events = EPOLLIN, .data.u32 = evs[j].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
                    if (!hold) free_list[nfree++] = (int)evs[j].data.u32;
                    break;
                }
                c->len += (size_t)r;
            }
            if (!c->busy) continue;
            count_events(c, t);
            if (complete(c)) {
                c->busy = 0;
                if (c->status != 200) errors++;
                else {
                    record(t - c->due, stream_mode ? (c->first ? c->first - c->due : t - c->due) : -1);
                    events_total += c->events;
                    answered++;
                }
                if (!hold) free_list[nfree++] = (int)evs[j].data.u32;
            }
        }
        if (hold && !holding_said) {
            int all = 1;
            for (int i = 0; i < n && all; i++) all = !conns[i].busy || conns[i].events > 0;
            if (all) {
                fprintf(stderr, "HOLDING\n");
                holding_said = 1;
                usleep(500000); /* the caller reads the server's memory now */
            }
        }
    }
    double elapsed = now() - start;
    long lost = sent - answered - errors;
    /* Open loop: requests that fell due while every connection was busy and were never sent. */
    long unsent = rate && (long)(rate * duration) > sent ? (long)(rate * duration) - sent : 0;
    printf("{\"requests\": %ld, \"answered\": %ld, \"errors\": %ld, \"seconds\": %.3f, \"rate\": %.1f, ", sent, answered, errors + lost, elapsed,
           answered / (elapsed > 0 ? elapsed : 1));
    if (rate) printf("\"offered_rate\": %.1f, \"unsent\": %ld, ", rate, unsent);
    percentiles("latency_us", lat, nlat);
    if (stream_mode) {
        printf(", ");
        percentiles("ttft_us", ttft, ntttf);
        printf(", \"events\": %ld, \"events_per_second\": %.1f", events_total, events_total / (elapsed > 0 ? elapsed : 1));
    }
    printf("}\n");
    return 0;
}
