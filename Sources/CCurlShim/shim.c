#include "CCurlShim.h"
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>

CURLcode descartes_curl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode descartes_curl_setopt_off(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode descartes_curl_setopt_pointer(CURL *handle, CURLoption option, const void *value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode descartes_curl_setopt_data_fn(CURL *handle, CURLoption option, descartes_curl_data_fn fn) {
    return curl_easy_setopt(handle, option, fn);
}
CURLcode descartes_curl_setopt_xferinfo_fn(CURL *handle, descartes_curl_xferinfo_fn fn) {
    return curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, fn);
}
CURLcode descartes_curl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode descartes_curl_getinfo_off(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode descartes_curl_getinfo_string(CURL *handle, CURLINFO info, const char **value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode descartes_curl_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLMcode descartes_curl_multi_setopt_long(CURLM *multi, CURLMoption option, long value) {
    return curl_multi_setopt(multi, option, value);
}
const curl_version_info_data *descartes_curl_version_info(void) {
    return curl_version_info(CURLVERSION_NOW);
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result = CURLE_OK;
static void global_init(void) { global_result = curl_global_init(CURL_GLOBAL_DEFAULT); }
CURLcode descartes_curl_global_init_once(void) {
    pthread_once(&global_once, global_init);
    return global_result;
}

/* ---- the multi_socket loop ------------------------------------------------ */

long long descartes_monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CURLMOPT_SOCKETFUNCTION: keep the epoll set in step with what libcurl wants
 * to know about each socket. A socket libcurl has not seen with us yet
 * (socketp NULL: curl_multi_assign marks the others) is added, one already
 * in the set is modified; libcurl forgets the mark when it removes the socket. */
static int loop_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    (void)easy;
    descartes_curl_loop *loop = userp;
    if (what == CURL_POLL_REMOVE) {
        /* The socket may be closed already (then the kernel dropped it). */
        epoll_ctl(loop->epoll_fd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.data.fd = s;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ev.events |= EPOLLIN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ev.events |= EPOLLOUT;
    int op = socketp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(loop->epoll_fd, op, s, &ev) != 0) {
        /* Out of step (a descriptor number reused): the other operation. */
        epoll_ctl(loop->epoll_fd, op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s, &ev);
    }
    if (!socketp && loop->multi) curl_multi_assign(loop->multi, s, loop);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: remember when libcurl wants to be called. */
static int loop_timer(CURLM *multi, long timeout_ms, void *userp) {
    (void)multi;
    descartes_curl_loop *loop = userp;
    loop->timer_at = timeout_ms < 0 ? -1 : descartes_monotonic_ms() + timeout_ms;
    return 0;
}

int descartes_curl_loop_init(descartes_curl_loop *loop, CURLM *multi) {
    loop->timer_at = -1;
    loop->multi = multi;
    loop->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epoll_fd < 0) return errno;
    loop->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->wake_fd < 0) {
        int e = errno;
        close(loop->epoll_fd);
        return e;
    }
    struct epoll_event ev = {0};
    ev.events = EPOLLIN;
    ev.data.fd = loop->wake_fd;
    if (epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, loop->wake_fd, &ev) != 0) {
        int e = errno;
        close(loop->wake_fd);
        close(loop->epoll_fd);
        return e;
    }
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, loop_socket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, loop);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, loop_timer);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, loop);
    return 0;
}

void descartes_curl_loop_close(descartes_curl_loop *loop) {
    close(loop->wake_fd);
    close(loop->epoll_fd);
}

void descartes_curl_loop_wake(const descartes_curl_loop *loop) {
    uint64_t one = 1;
    ssize_t r;
    do {
        r = write(loop->wake_fd, &one, sizeof one);
    } while (r < 0 && errno == EINTR);
}

int descartes_curl_loop_wait(const descartes_curl_loop *loop, int timeout_ms, int *fds, int *flags, int max) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = epoll_wait(loop->epoll_fd, evs, max, timeout_ms);
    if (n < 0) return 0;
    int out = 0;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.fd == loop->wake_fd) {
            uint64_t v;
            while (read(loop->wake_fd, &v, sizeof v) > 0) {}
            continue;
        }
        int f = 0;
        if (evs[i].events & EPOLLIN) f |= CURL_CSELECT_IN;
        if (evs[i].events & EPOLLOUT) f |= CURL_CSELECT_OUT;
        if (evs[i].events & (EPOLLERR | EPOLLHUP)) f |= CURL_CSELECT_ERR;
        fds[out] = evs[i].data.fd;
        flags[out] = f;
        out++;
    }
    return out;
}

void descartes_name_this_thread(const char *name) {
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}
