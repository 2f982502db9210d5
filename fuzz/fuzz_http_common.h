/*
 * fuzz_http_common.h — drives an HTTP server in this process with raw
 * bytes over loopback: connect, send the input, half-close, read the reply
 * until the server closes or a short timeout (a fault spec in the input may
 * ask the server to stall; that is behaviour, not a finding). Used by
 * fuzz_lmserver_http.c (the local LM server) and fuzz_serve_http.c (the
 * `dspex serve` service), each of which starts its server once and calls
 * fuzz_http_exchange on its port for every input.
 */
#ifndef DSPEX_FUZZ_HTTP_COMMON_H
#define DSPEX_FUZZ_HTTP_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fuzz.h"

/* Reply bytes kept for the invariant (the rest is read and dropped). */
#define FUZZ_HTTP_KEEP 64

/* How the last exchange ended, for a target's report when an invariant
 * fails: the client port, and errno of a failed send or receive (0 when
 * the server closed or the timeout passed). */
static int fuzz_http_local_port;
static int fuzz_http_errno;

/* Every call below may be interrupted: libFuzzer's -timeout arms a
 * SIGALRM timer that fires every few seconds in this thread. Taken for an
 * end of the reply, an interrupted poll made a probe look unanswered ("0
 * bytes after 0 ms, no error") about once in 30,000 to 100,000 inputs. */
static long fuzz_http_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* connect, waiting out an interruption (the connection then completes in
 * the background: wait for it and take its result). */
static int fuzz_http_connect(int fd, const struct sockaddr_in *a)
{
    if (connect(fd, (const struct sockaddr *)a, sizeof *a) == 0)
        return 0;
    if (errno != EINTR)
        return -1;
    struct pollfd p = {fd, POLLOUT, 0};
    while (poll(&p, 1, -1) < 0)
        if (errno != EINTR)
            return -1;
    int err = 0;
    socklen_t elen = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
        return -1;
    errno = err;
    return err == 0 ? 0 : -1;
}

/* Send data to 127.0.0.1:port and read the reply. With half_close the
 * write side is shut after the data (the server sees EOF while it may still
 * owe a response: a path of its own). Returns the number of reply bytes
 * received; head receives the first of them (NUL-terminated). */
static size_t fuzz_http_exchange(int port, const uint8_t *data, size_t size,
                                 bool half_close, int timeout_ms,
                                 char head[FUZZ_HTTP_KEEP + 1])
{
    head[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Close with a reset, not a FIN: a client-side TIME_WAIT per input
     * would use up the ephemeral ports within a minute of fuzzing. */
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    int rc = -1;
    for (int tries = 0; tries < 100 && rc != 0; tries++) {
        rc = fuzz_http_connect(fd, &a);
        if (rc != 0 && errno != EADDRNOTAVAIL && errno != EAGAIN)
            break;
        if (rc != 0)
            usleep(10000);
    }
    if (rc != 0) {
        fprintf(stderr, "fuzz_http_exchange: connect: %s\n", strerror(errno));
        abort();
    }
    struct sockaddr_in local = {0};
    socklen_t llen = sizeof local;
    getsockname(fd, (struct sockaddr *)&local, &llen);
    fuzz_http_local_port = ntohs(local.sin_port);
    fuzz_http_errno = 0;
    size_t off = 0;
    while (off < size) {
        ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fuzz_http_errno = errno;
            break; /* the server closed on a bad request: fine */
        }
        off += (size_t)n;
    }
    if (half_close)
        shutdown(fd, SHUT_WR);
    size_t got = 0;
    char buf[4096];
    long deadline = fuzz_http_now_ms() + timeout_ms;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        long left = deadline - fuzz_http_now_ms();
        int ready = poll(&p, 1, left > 0 ? (int)left : 0);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0)
            break;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fuzz_http_errno = errno;
        if (n <= 0)
            break;
        deadline = fuzz_http_now_ms() + timeout_ms; /* a timeout per wait */
        if (got < FUZZ_HTTP_KEEP) {
            size_t keep = FUZZ_HTTP_KEEP - got;
            if (keep > (size_t)n)
                keep = (size_t)n;
            memcpy(head + got, buf, keep);
            head[got + keep] = '\0';
        }
        got += (size_t)n;
    }
    close(fd);
    return got;
}

#endif
