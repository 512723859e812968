/*
 * bench/replay.c -- a stand-in for `claude` that costs nothing: reads its
 * stdin to the end (the request), then writes the file named by
 * $DESCARTES_BENCH_REPLAY (a real claude's stream-json output, recorded by
 * bench/run.py) to stdout and exits 0. Its arguments are ignored.
 *
 * Run directly and through the claude-code-cli plugin, it isolates what the
 * plugin adds to a request (spawn, pipes, parsing, the ABI, the host) from
 * the seconds Claude Code itself takes to start.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void) {
    char buf[65536];
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) != 0) {
        if (n < 0 && errno != EINTR) break;
    }
    const char *path = getenv("DESCARTES_BENCH_REPLAY");
    if (!path) { fprintf(stderr, "replay: DESCARTES_BENCH_REPLAY is not set\n"); return 78; }
    int fd = open(path, O_RDONLY);
    if (fd < 0) { perror(path); return 66; }
    while ((n = read(fd, buf, sizeof buf)) != 0) {
        if (n < 0) { if (errno == EINTR) continue; perror(path); return 74; }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, (size_t)(n - off));
            if (w < 0) { if (errno == EINTR) continue; return 74; }
            off += w;
        }
    }
    close(fd);
    return 0;
}
