/*
 * http_bench.c — throughput and latency of the HTTP transport with many
 * requests in flight against a local keep-alive server.
 *
 *   http-bench <n_concurrent> <total>
 *
 * The server runs in a forked child (one epoll loop), so its sockets do not
 * count against this process's descriptor limit: n concurrent HTTP/1.1
 * requests need n connections on each side. Up to 100 dspex processes each
 * keep their share of the n requests in flight until `total` have been
 * answered. The thread count is sampled while they run; the transport's
 * promise is that it does not grow with n.
 *
 * Prints one line:
 *   RESULT sys=dspex bench=http n=<total> concurrency=<n> time_s=.. rate=..
 *   unit=req/s threads=<max seen> p50_us=.. p99_us=..
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/http.h"
#include "dspex/io.h"
#include "dspex/runtime.h"

#define MAX_WORKERS 100
#define SRV_BUF 4096

/* ------------------------------------------------------------------ */
/* Server (child process)                                               */
/* ------------------------------------------------------------------ */

typedef struct sconn {
    char in[SRV_BUF];
    size_t len;
} sconn;

static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                            "Content-Type: application/json\r\n\r\nok";

static void serve(int lfd, int parent_fd)
{
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.fd = parent_fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, parent_fd, &ev);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    size_t maxfd = (size_t)rl.rlim_cur;
    sconn **conns = calloc(maxfd, sizeof *conns);
    if (conns == NULL)
        _exit(1);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == parent_fd)
                _exit(0); /* the parent closed its end: done */
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if ((size_t)c >= maxfd) {
                        close(c);
                        continue;
                    }
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[c] = calloc(1, sizeof **conns);
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            sconn *s = conns[fd];
            if (s == NULL)
                continue;
            ssize_t r = recv(fd, s->in + s->len, SRV_BUF - s->len, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN) ||
                (r < 0 && s->len == SRV_BUF)) {
                close(fd);
                free(s);
                conns[fd] = NULL;
                continue;
            }
            if (r < 0)
                continue;
            s->len += (size_t)r;
            /* GET requests only: each header block is one request */
            char *end;
            while ((end = memmem(s->in, s->len, "\r\n\r\n", 4)) != NULL) {
                size_t used = (size_t)(end - s->in) + 4;
                memmove(s->in, s->in + used, s->len - used);
                s->len -= used;
                if (send(fd, reply, sizeof reply - 1, MSG_NOSIGNAL) < 0)
                    break;
            }
        }
    }
}

static pid_t start_server(int *port, int *keep_fd)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(lfd, 65535) != 0) {
        perror("server socket");
        exit(1);
    }
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    *port = ntohs(a.sin_port);
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        exit(1);
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(p[1]);
        serve(lfd, p[0]);
        _exit(0);
    }
    close(p[0]);
    close(lfd);
    *keep_fd = p[1];
    return pid;
}

/* ------------------------------------------------------------------ */
/* Clients (dspex processes)                                            */
/* ------------------------------------------------------------------ */

typedef struct worker {
    int in_flight; /* requests to keep in flight */
    int todo;      /* requests to complete */
    int64_t *lat_us;
    int done;
    int errors;
} worker;

static worker workers[MAX_WORKERS];
static char target[64];

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void client(void *arg)
{
    worker *w = arg;
    int64_t *started = dx_malloc((size_t)w->in_flight * sizeof *started);
    if (started == NULL)
        return;
    dx_http_request req = {
        .url = target, .timeout_ms = 120000, .connect_timeout_ms = 60000};
    int submitted = 0;
    for (int i = 0; i < w->in_flight && submitted < w->todo; i++, submitted++) {
        started[i] = now_us();
        if (dx_http_submit(&req, dx_self(), i, NULL) != DX_OK)
            w->errors++;
    }
    while (w->done + w->errors < w->todo) {
        dx_msg *m;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            break;
        dx_http_response *r = dx_http_msg_response(m);
        if (r == NULL) {
            dx_msg_free(m);
            continue;
        }
        int slot = (int)m->tag;
        if (r->err == DX_OK && r->status == 200)
            w->lat_us[w->done++] = now_us() - started[slot];
        else
            w->errors++;
        dx_msg_free(m);
        if (submitted < w->todo) {
            started[slot] = now_us();
            if (dx_http_submit(&req, dx_self(), slot, NULL) != DX_OK)
                w->errors++;
            submitted++;
        }
    }
    dx_free(started);
}

static int threads_now(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "Threads:", 8) == 0)
            n = (int)strtol(line + 8, NULL, 10);
    fclose(f);
    return n;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long conc = argc > 1 ? strtol(argv[1], NULL, 10) : 1000;
    long total = argc > 2 ? strtol(argv[2], NULL, 10) : 20000;
    if (conc < 1 || total < conc) {
        fprintf(stderr, "usage: http-bench <n_concurrent> <total >= n>\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if ((long)rl.rlim_cur < conc + 256)
            fprintf(stderr,
                    "warning: RLIMIT_NOFILE %ld is low for %ld "
                    "connections\n",
                    (long)rl.rlim_cur, conc);
    }
    signal(SIGPIPE, SIG_IGN);
    int port, keep;
    pid_t srv = start_server(&port, &keep);
    snprintf(target, sizeof target, "http://127.0.0.1:%d/x", port);

    if (dx_runtime_start(NULL) != DX_OK) {
        fprintf(stderr, "runtime did not start\n");
        return 1;
    }
    /* every request its own connection if need be: n in flight means n on
     * the wire, not n queued inside curl */
    dx_http_limits lim = {.max_host_connections = 0};
    dx_http_set_limits(&lim);

    int nw = conc < MAX_WORKERS ? (int)conc : MAX_WORKERS;
    for (int i = 0; i < nw; i++) {
        workers[i].in_flight = (int)(conc / nw + (i < conc % nw));
        workers[i].todo = (int)(total / nw + (i < total % nw));
        workers[i].lat_us =
            dx_malloc((size_t)workers[i].todo * sizeof(int64_t));
    }
    int threads_before = threads_now();
    int64_t t0 = now_us();
    dx_pid pids[MAX_WORKERS];
    for (int i = 0; i < nw; i++)
        dx_spawn(client, &workers[i], &pids[i]);
    int threads_max = threads_before;
    size_t peak = 0;
    for (int i = 0; i < nw; i++) {
        while (dx_wait_exit(pids[i], 10, NULL) == DX_ETIMEDOUT) {
            int t = threads_now();
            if (t > threads_max)
                threads_max = t;
            size_t f = dx_http_in_flight();
            if (f > peak)
                peak = f;
        }
    }
    double secs = (double)(now_us() - t0) / 1e6;

    size_t nlat = 0;
    long errors = 0;
    for (int i = 0; i < nw; i++) {
        nlat += (size_t)workers[i].done;
        errors += workers[i].errors;
    }
    int64_t *all = dx_malloc((nlat ? nlat : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < nw; i++) {
        memcpy(all + k, workers[i].lat_us,
               (size_t)workers[i].done * sizeof *all);
        k += (size_t)workers[i].done;
        dx_free(workers[i].lat_us);
    }
    qsort(all, nlat, sizeof *all, cmp_i64);
    int64_t p50 = nlat ? all[nlat / 2] : 0;
    int64_t p99 = nlat ? all[(nlat * 99) / 100] : 0;
    dx_free(all);
    uint64_t conns = dx_http_connections_opened();

    dx_io_stop();
    dx_runtime_stop();
    close(keep);
    waitpid(srv, NULL, 0);

    fprintf(stderr,
            "answered=%zu errors=%ld peak_in_flight=%zu connections=%llu "
            "threads_before=%d\n",
            nlat, errors, peak, (unsigned long long)conns, threads_before);
    printf("RESULT sys=dspex bench=http n=%ld concurrency=%ld time_s=%.3f "
           "rate=%.0f unit=req/s threads=%d p50_us=%lld p99_us=%lld\n",
           total, conc, secs, secs > 0 ? (double)nlat / secs : 0.0, threads_max,
           (long long)p50, (long long)p99);
    return errors == 0 ? 0 : 1;
}
