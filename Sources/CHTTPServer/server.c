// See include/CHTTPServer.h. Locking: each request has a mutex guarding its
// answer (pending response, stream buffer, suspended flag). The server thread
// may call MHD_suspend_connection with it held (only it suspends, always
// inside a libmicrohttpd callback); an application thread never calls into
// libmicrohttpd with it held, and resumes a connection only after it saw
// (under the mutex) that the server thread had suspended it, so a resume
// never comes before its suspend.
#define _GNU_SOURCE
#include "CHTTPServer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <dlfcn.h>
#include <microhttpd.h>

// libmicrohttpd (and GnuTLS, which it links) is loaded when the first server
// starts, not when the program does: linked, it was loaded, relocated and
// initialized at every start of the CLI, `serve` or not (about 5.3 million
// instructions and 160 page faults of a `descartes --version` of 14 million;
// docs/benchmarks.md, "Where a one-shot command's time goes"). The functions
// this file calls, by the names it calls them.
#ifndef DESCARTES_MHD_SONAME
#define DESCARTES_MHD_SONAME "libmicrohttpd.so.12"
#endif
static struct {
    __typeof__(MHD_start_daemon) *start_daemon;
    __typeof__(MHD_stop_daemon) *stop_daemon;
    __typeof__(MHD_quiesce_daemon) *quiesce_daemon;
    __typeof__(MHD_is_feature_supported) *is_feature_supported;
    __typeof__(MHD_get_connection_info) *get_connection_info;
    __typeof__(MHD_lookup_connection_value) *lookup_connection_value;
    __typeof__(MHD_suspend_connection) *suspend_connection;
    __typeof__(MHD_resume_connection) *resume_connection;
    __typeof__(MHD_queue_response) *queue_response;
    __typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
    __typeof__(MHD_create_response_from_callback) *create_response_from_callback;
    __typeof__(MHD_add_response_header) *add_response_header;
    __typeof__(MHD_destroy_response) *destroy_response;
} mhd;
static pthread_once_t mhd_once = PTHREAD_ONCE_INIT;
static char mhd_error[512];

static void mhd_load(void) {
    // The library's soname, then the development symlink (another soname).
    void *h = dlopen(DESCARTES_MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libmicrohttpd.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(mhd_error, sizeof mhd_error, "cannot load libmicrohttpd (%s): %s", DESCARTES_MHD_SONAME, why ? why : "not found");
        return;
    }
#define MHD_SYMBOL(field, name)                                                                          \
    if (!(*(void **)&mhd.field = dlsym(h, name))) {                                                      \
        snprintf(mhd_error, sizeof mhd_error, "%s has no function %s", DESCARTES_MHD_SONAME, name);      \
        return;                                                                                          \
    }
    MHD_SYMBOL(start_daemon, "MHD_start_daemon")
    MHD_SYMBOL(stop_daemon, "MHD_stop_daemon")
    MHD_SYMBOL(quiesce_daemon, "MHD_quiesce_daemon")
    MHD_SYMBOL(is_feature_supported, "MHD_is_feature_supported")
    MHD_SYMBOL(get_connection_info, "MHD_get_connection_info")
    MHD_SYMBOL(lookup_connection_value, "MHD_lookup_connection_value")
    MHD_SYMBOL(suspend_connection, "MHD_suspend_connection")
    MHD_SYMBOL(resume_connection, "MHD_resume_connection")
    MHD_SYMBOL(queue_response, "MHD_queue_response")
    MHD_SYMBOL(create_response_from_buffer, "MHD_create_response_from_buffer")
    MHD_SYMBOL(create_response_from_callback, "MHD_create_response_from_callback")
    MHD_SYMBOL(add_response_header, "MHD_add_response_header")
    MHD_SYMBOL(destroy_response, "MHD_destroy_response")
#undef MHD_SYMBOL
}

// Every call below goes through the table (filled before any server exists).
#define MHD_start_daemon (*mhd.start_daemon)
#define MHD_stop_daemon (*mhd.stop_daemon)
#define MHD_quiesce_daemon (*mhd.quiesce_daemon)
#define MHD_is_feature_supported (*mhd.is_feature_supported)
#define MHD_get_connection_info (*mhd.get_connection_info)
#define MHD_lookup_connection_value (*mhd.lookup_connection_value)
#define MHD_suspend_connection (*mhd.suspend_connection)
#define MHD_resume_connection (*mhd.resume_connection)
#define MHD_queue_response (*mhd.queue_response)
#define MHD_create_response_from_buffer (*mhd.create_response_from_buffer)
#define MHD_create_response_from_callback (*mhd.create_response_from_callback)
#define MHD_add_response_header (*mhd.add_response_header)
#define MHD_destroy_response (*mhd.destroy_response)

struct descartes_http_server {
    struct MHD_Daemon *daemon;
    int fd;
    unsigned port;
    size_t body_limit;
    descartes_http_request_fn on_request;
    descartes_http_closed_fn on_closed;
    void *ctx;
    atomic_uint active;
    char *tls_cert, *tls_key;  // PEM, with TLS
};

struct descartes_http_request {
    pthread_mutex_t mu;
    int refs;                      // libmicrohttpd's, and the application's from on_request until its answer ends
    struct MHD_Connection *conn;   // NULL once libmicrohttpd is done with the request
    descartes_http_server *server;
    char method[16];
    char *path;
    char peer[64];
    char *body;
    size_t body_len, body_cap;
    int too_large;
    int dispatched;
    int answered;                  // the application started its answer
    void *user;
    // The answer.
    unsigned status;
    struct MHD_Response *pending;  // made by the application, queued by the server thread
    int suspended;
    int closed;
    char *buf;                     // stream bytes not yet handed to libmicrohttpd
    size_t len, off, cap;
    int ended;
};

static void release(struct descartes_http_request *r) {
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left > 0) return;
    if (r->pending) MHD_destroy_response(r->pending);
    pthread_mutex_destroy(&r->mu);
    free(r->path);
    free(r->body);
    free(r->buf);
    free(r);
}

static void add_headers(struct MHD_Response *resp, const char *headers) {
    if (!headers) return;
    const char *p = headers;
    while (*p) {
        const char *eol = strstr(p, "\r\n");
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        const char *colon = memchr(p, ':', n);
        if (colon) {
            char *name = strndup(p, (size_t)(colon - p));
            const char *v = colon + 1;
            while (v < p + n && *v == ' ') v++;
            char *value = strndup(v, (size_t)(p + n - v));
            if (name && value) MHD_add_response_header(resp, name, value);
            free(name);
            free(value);
        }
        p += n;
        if (eol) p += 2;
    }
}

// Queues the pending answer if there is one, else suspends the connection
// until the application gives one. Server thread, inside the access handler.
static enum MHD_Result queue_or_suspend(struct descartes_http_request *r, struct MHD_Connection *conn) {
    pthread_mutex_lock(&r->mu);
    struct MHD_Response *resp = r->pending;
    r->pending = NULL;
    if (!resp) {
        r->suspended = 1;
        MHD_suspend_connection(conn);
        pthread_mutex_unlock(&r->mu);
        return MHD_YES;
    }
    unsigned status = r->status;
    pthread_mutex_unlock(&r->mu);
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static void dispatch(descartes_http_server *s, struct descartes_http_request *r) {
    pthread_mutex_lock(&r->mu);
    r->dispatched = 1;
    r->refs++;  // the application's
    pthread_mutex_unlock(&r->mu);
    s->on_request(s->ctx, r);
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                      const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    descartes_http_server *s = cls;
    struct descartes_http_request *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        pthread_mutex_init(&r->mu, NULL);
        r->refs = 1;
        r->conn = conn;
        r->server = s;
        snprintf(r->method, sizeof r->method, "%s", method);
        r->path = strdup(url ? url : "/");
        const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (info && info->client_addr) {
            const struct sockaddr *sa = info->client_addr;
            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->peer, sizeof r->peer);
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->peer, sizeof r->peer);
        }
        *con_cls = r;
        atomic_fetch_add(&s->active, 1);
        // A declared length over the limit is refused before the body is read.
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->body_limit) {
            r->too_large = 1;
            dispatch(s, r);
            return queue_or_suspend(r, conn);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!r->dispatched && !r->too_large) {
            size_t n = *upload_size;
            if (r->body_len + n > s->body_limit) {
                r->too_large = 1;
                free(r->body);
                r->body = NULL;
                r->body_len = r->body_cap = 0;
            } else {
                if (r->body_len + n > r->body_cap) {
                    size_t cap = r->body_cap ? r->body_cap : 4096;
                    while (cap < r->body_len + n) cap *= 2;
                    if (cap > s->body_limit) cap = s->body_limit;
                    char *b = realloc(r->body, cap);
                    if (!b) return MHD_NO;
                    r->body = b;
                    r->body_cap = cap;
                }
                memcpy(r->body + r->body_len, upload, n);
                r->body_len += n;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (!r->dispatched) dispatch(s, r);
    return queue_or_suspend(r, conn);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)conn;
    descartes_http_server *s = cls;
    struct descartes_http_request *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    pthread_mutex_lock(&r->mu);
    r->conn = NULL;
    r->closed = 1;
    int dispatched = r->dispatched;
    void *user = r->user;
    pthread_mutex_unlock(&r->mu);
    if (dispatched) s->on_closed(s->ctx, user, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    atomic_fetch_sub(&s->active, 1);
    release(r);
}

// Hands stream bytes to libmicrohttpd; with none waiting, suspends the
// connection until the application writes or ends (server thread).
static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max) {
    (void)pos;
    struct descartes_http_request *r = cls;
    pthread_mutex_lock(&r->mu);
    if (r->len > r->off) {
        size_t n = r->len - r->off;
        if (n > max) n = max;
        memcpy(out, r->buf + r->off, n);
        r->off += n;
        if (r->off == r->len) r->off = r->len = 0;
        pthread_mutex_unlock(&r->mu);
        return (ssize_t)n;
    }
    if (r->ended || !r->conn) {
        pthread_mutex_unlock(&r->mu);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

// Gives `resp` to the server thread (NULL: only wake it). Returns -1 when
// the client is gone.
static int hand_over(struct descartes_http_request *r, unsigned status, struct MHD_Response *resp) {
    pthread_mutex_lock(&r->mu);
    if (r->closed || r->answered) {
        pthread_mutex_unlock(&r->mu);
        if (resp) MHD_destroy_response(resp);
        return -1;
    }
    r->answered = 1;
    r->status = status;
    r->pending = resp;
    struct MHD_Connection *wake = r->suspended ? r->conn : NULL;
    r->suspended = 0;
    pthread_mutex_unlock(&r->mu);
    if (wake) MHD_resume_connection(wake);
    return 0;
}

int descartes_http_respond(descartes_http_request *r, unsigned status, const char *headers, const void *body, size_t length) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(length, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    int rc = -1;
    if (resp) {
        add_headers(resp, headers);
        rc = hand_over(r, status, resp);
    }
    release(r);
    return rc;
}

int descartes_http_stream_begin(descartes_http_request *r, unsigned status, const char *headers) {
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, reader, r, NULL);
    if (!resp) return -1;
    add_headers(resp, headers);
    return hand_over(r, status, resp);
}

long descartes_http_stream_write(descartes_http_request *r, const void *data, size_t length) {
    pthread_mutex_lock(&r->mu);
    if (r->closed) {
        pthread_mutex_unlock(&r->mu);
        return -1;
    }
    if (r->off > 0 && r->off == r->len) r->off = r->len = 0;
    if (r->len + length > r->cap) {
        // Move what is left to the front before growing.
        if (r->off > 0) {
            memmove(r->buf, r->buf + r->off, r->len - r->off);
            r->len -= r->off;
            r->off = 0;
        }
        if (r->len + length > r->cap) {
            size_t cap = r->cap ? r->cap : 4096;
            while (cap < r->len + length) cap *= 2;
            char *b = realloc(r->buf, cap);
            if (!b) {
                pthread_mutex_unlock(&r->mu);
                return -1;
            }
            r->buf = b;
            r->cap = cap;
        }
    }
    memcpy(r->buf + r->len, data, length);
    r->len += length;
    long backlog = (long)(r->len - r->off);
    struct MHD_Connection *wake = (r->suspended && !r->pending) ? r->conn : NULL;
    if (wake) r->suspended = 0;
    pthread_mutex_unlock(&r->mu);
    if (wake) MHD_resume_connection(wake);
    return backlog;
}

void descartes_http_stream_end(descartes_http_request *r) {
    pthread_mutex_lock(&r->mu);
    r->ended = 1;
    struct MHD_Connection *wake = (r->suspended && !r->pending && !r->closed) ? r->conn : NULL;
    if (wake) r->suspended = 0;
    pthread_mutex_unlock(&r->mu);
    if (wake) MHD_resume_connection(wake);
    release(r);
}

const char *descartes_http_method(const descartes_http_request *r) { return r->method; }
const char *descartes_http_path(const descartes_http_request *r) { return r->path ? r->path : "/"; }
const char *descartes_http_peer(const descartes_http_request *r) { return r->peer; }
const char *descartes_http_header(const descartes_http_request *r, const char *name) {
    return r->conn ? MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name) : NULL;
}
const char *descartes_http_body(const descartes_http_request *r, size_t *length) {
    *length = r->body_len;
    return r->body;
}
int descartes_http_body_too_large(const descartes_http_request *r) { return r->too_large; }
void descartes_http_set_user(descartes_http_request *r, void *user) {
    pthread_mutex_lock(&r->mu);
    r->user = user;
    pthread_mutex_unlock(&r->mu);
}

static int listen_on(const char *host, unsigned port, char *error, size_t error_len) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char service[16];
    snprintf(service, sizeof service, "%u", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(error, error_len, "cannot resolve listen address '%s': %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    int err = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) snprintf(error, error_len, "cannot listen on %s:%u: %s", host, port, strerror(err));
    return fd;
}

descartes_http_server *descartes_http_start(const char *host, unsigned port, unsigned threads, size_t body_limit,
                                            unsigned idle_timeout_s, const char *tls_cert, const char *tls_key,
                                            descartes_http_request_fn on_request,
                                            descartes_http_closed_fn on_closed, void *ctx, char *error, size_t error_len) {
    pthread_once(&mhd_once, mhd_load);
    if (mhd_error[0]) {
        snprintf(error, error_len, "%s", mhd_error);
        return NULL;
    }
    if ((tls_cert || tls_key) && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        snprintf(error, error_len, "this libmicrohttpd was built without TLS (MHD_FEATURE_TLS)");
        return NULL;
    }
    descartes_http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(error, error_len, "out of memory");
        return NULL;
    }
    s->fd = listen_on(host, port, error, error_len);
    if (s->fd < 0) {
        free(s);
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(s->fd, (struct sockaddr *)&ss, &sl) == 0) {
        s->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    s->body_limit = body_limit;
    s->on_request = on_request;
    s->on_closed = on_closed;
    s->ctx = ctx;
    atomic_init(&s->active, 0);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (tls_cert && tls_key) {
        // The same options, and the certificate and key (libmicrohttpd copies neither: they outlive the daemon in `s`).
        s->tls_cert = strdup(tls_cert);
        s->tls_key = strdup(tls_key);
        s->daemon = MHD_start_daemon(
            flags | MHD_USE_TLS, 0, NULL, NULL, access_handler, s,
            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)s->fd,
            MHD_OPTION_NOTIFY_COMPLETED, completed, s,
            MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)(threads > 1 ? threads : 0),
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)idle_timeout_s,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned int)4096,
            MHD_OPTION_HTTPS_MEM_CERT, s->tls_cert,
            MHD_OPTION_HTTPS_MEM_KEY, s->tls_key,
            MHD_OPTION_END);
    } else {
        s->daemon = MHD_start_daemon(
            flags, 0, NULL, NULL, access_handler, s,
            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)s->fd,
            MHD_OPTION_NOTIFY_COMPLETED, completed, s,
            MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)(threads > 1 ? threads : 0),
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)idle_timeout_s,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned int)4096,
            MHD_OPTION_END);
    }
    if (!s->daemon) {
        snprintf(error, error_len, "libmicrohttpd could not start on %s:%u%s", host, port,
                 s->tls_cert ? ": is the TLS certificate or key not PEM, or not a pair?" : "");
        close(s->fd);
        free(s->tls_cert);
        free(s->tls_key);
        free(s);
        return NULL;
    }
    return s;
}

unsigned descartes_http_port(const descartes_http_server *s) { return s->port; }

void descartes_http_quiesce(descartes_http_server *s) {
    MHD_socket fd = MHD_quiesce_daemon(s->daemon);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    s->fd = -1;
}

unsigned descartes_http_active(const descartes_http_server *s) {
    return atomic_load(&((descartes_http_server *)s)->active);
}

void descartes_http_stop(descartes_http_server *s) {
    // libmicrohttpd closes the listening socket it was given (unless quiesced).
    MHD_stop_daemon(s->daemon);
    free(s->tls_cert);
    free(s->tls_key);
    free(s);
}
