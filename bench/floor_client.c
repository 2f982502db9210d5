/*
 * floor_client.c — the bare epoll client of floor_client.h. Level-triggered
 * epoll, one connection state per socket: writing a request, then reading
 * its answer until the headers and Content-Length bytes of body are in.
 * A connection that fails counts its request as failed and is replaced by
 * a new one for the next request, so a run always ends.
 */
#include "floor_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct fconn {
    int fd;
    const floor_request *req; /* in flight, or NULL */
    long index;               /* its number in sending order */
    double started;
    size_t sent;
    char *in;
    size_t in_len, in_cap;
    bool connected;
} fconn;

typedef struct floor_run_state {
    int ep, port;
    const floor_request *reqs;
    size_t nreqs;
    long n, next, done;
    floor_result *out;
} floor_run_state;

static double now_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool conn_open(floor_run_state *st, fconn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return false;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)st->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->connected = false;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0 &&
        errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(st->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    return true;
}

/* Take the next request for c, or leave it idle when none is left. */
static void conn_take(floor_run_state *st, fconn *c)
{
    c->index = st->next;
    c->started = now_s(CLOCK_MONOTONIC);
    c->req = st->next < st->n ? &st->reqs[st->next++ % st->nreqs] : NULL;
    c->sent = 0;
    c->in_len = 0;
}

/* Write what the socket takes; then wait for the answer (or for room). */
static bool conn_write(floor_run_state *st, fconn *c)
{
    while (c->req != NULL && c->sent < c->req->len) {
        ssize_t w = send(c->fd, c->req->bytes + c->sent, c->req->len - c->sent,
                         MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN)
            break;
        if (w <= 0)
            return false;
        c->sent += (size_t)w;
    }
    struct epoll_event ev = {
        .events = c->req != NULL && c->sent < c->req->len ? EPOLLOUT : EPOLLIN,
        .data.ptr = c};
    return epoll_ctl(st->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0;
}

/* 1: the answer is complete (status in *status); 0: more to read. */
static int answer_complete(const fconn *c, int *status)
{
    const char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    size_t head = (size_t)(end - c->in) + 4;
    *status = c->in_len > 12 ? (int)strtol(c->in + 9, NULL, 10) : 0;
    size_t body = 0;
    for (const char *p = c->in; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            break;
        if (strncasecmp(p, "content-length:", 15) == 0)
            body = (size_t)strtoul(p + 15, NULL, 10);
        p = eol + 1;
    }
    return c->in_len >= head + body;
}

static void conn_fail(floor_run_state *st, fconn *c)
{
    if (c->req != NULL) {
        st->out->failed++;
        st->done++;
    }
    close(c->fd);
    c->fd = -1;
    conn_take(st, c);
    if (c->req != NULL && !conn_open(st, c)) {
        st->out->failed++;
        st->done++;
        c->req = NULL;
    }
}

static void conn_event(floor_run_state *st, fconn *c, uint32_t events)
{
    if (!c->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            conn_fail(st, c);
            return;
        }
        c->connected = true;
        if (!conn_write(st, c))
            conn_fail(st, c);
        return;
    }
    if (events & EPOLLOUT) {
        if (!conn_write(st, c))
            conn_fail(st, c);
        return;
    }
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 16384;
            char *p = realloc(c->in, cap);
            if (p == NULL) {
                conn_fail(st, c);
                return;
            }
            c->in = p;
            c->in_cap = cap;
        }
        ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            conn_fail(st, c);
            return;
        }
        c->in_len += (size_t)r;
        int status = 0;
        if (c->req != NULL && answer_complete(c, &status)) {
            if (st->out->latency_ms != NULL)
                st->out->latency_ms[c->index] =
                    (now_s(CLOCK_MONOTONIC) - c->started) * 1e3;
            if (status == 200)
                st->out->answered++;
            else
                st->out->failed++;
            st->done++;
            conn_take(st, c);
            if (!conn_write(st, c))
                conn_fail(st, c);
            return;
        }
    }
}

/* Open every connection with nothing to send and wait until each
 * handshake is done; false if one fails or none of them moves for 10 s. */
static bool preconnect_all(floor_run_state *st, fconn *conns, long conc)
{
    for (long i = 0; i < conc; i++)
        if (!conn_open(st, &conns[i]))
            return false;
    struct epoll_event evs[256];
    for (long up = 0; up < conc;) {
        int k = epoll_wait(st->ep, evs, 256, 10000);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        for (int i = 0; i < k; i++) {
            fconn *c = evs[i].data.ptr;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0 || (evs[i].events & (EPOLLERR | EPOLLHUP)))
                return false;
            if (c->connected)
                continue;
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            if (epoll_ctl(st->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
                return false;
            c->connected = true;
            up++;
        }
    }
    return true;
}

int floor_run(int port, const floor_request *reqs, size_t nreqs, long n,
              long conc, bool preconnect, floor_result *out)
{
    double *latency_ms = out->latency_ms;
    memset(out, 0, sizeof *out);
    out->latency_ms = latency_ms;
    floor_run_state st = {
        .port = port, .reqs = reqs, .nreqs = nreqs, .n = n, .out = out};
    st.ep = epoll_create1(EPOLL_CLOEXEC);
    if (st.ep < 0 || nreqs == 0 || conc <= 0)
        return -1;
    fconn *conns = calloc((size_t)conc, sizeof *conns);
    if (conns == NULL) {
        close(st.ep);
        return -1;
    }
    for (long i = 0; i < conc; i++)
        conns[i].fd = -1;
    bool ok = !preconnect || preconnect_all(&st, conns, conc);
    double w0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; ok && i < conc; i++) {
        fconn *c = &conns[i];
        conn_take(&st, c);
        if (c->req == NULL)
            continue;
        if (preconnect ? !conn_write(&st, c) : !conn_open(&st, c)) {
            if (preconnect) {
                conn_fail(&st, c);
                continue;
            }
            out->failed++;
            st.done++;
            c->req = NULL;
        }
    }
    struct epoll_event evs[256];
    while (ok && st.done < n) {
        int k = epoll_wait(st.ep, evs, 256, 10000);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break; /* no progress in 10 s: give up, the rest count failed */
        for (int i = 0; i < k; i++)
            conn_event(&st, evs[i].data.ptr, evs[i].events);
    }
    out->wall_s = now_s(CLOCK_MONOTONIC) - w0;
    out->cpu_s = now_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    out->failed += n - st.done;
    for (long i = 0; i < conc; i++) {
        if (conns[i].fd >= 0)
            close(conns[i].fd);
        free(conns[i].in);
    }
    free(conns);
    close(st.ep);
    return ok ? 0 : -1;
}
