/*
 * fuzz_http_common.h — drives an HTTP server in this process with raw
 * bytes over loopback: connect, send the input, half-close, read the reply
 * until the server closes or a short timeout (a fault spec in the input may
 * ask the server to stall; that is behaviour, not a finding). Used by
 * fuzz_lmserver_http.c; the `dspex serve` HTTP service gets its own target
 * by starting its server once and calling fuzz_http_exchange on its port
 * (see the note in fuzz/meson.build).
 */
#ifndef DSPEX_FUZZ_HTTP_COMMON_H
#define DSPEX_FUZZ_HTTP_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"

/* Reply bytes kept for the invariant (the rest is read and dropped). */
#define FUZZ_HTTP_KEEP 64

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
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
        if (rc != 0 && errno != EADDRNOTAVAIL && errno != EAGAIN)
            break;
        if (rc != 0)
            usleep(10000);
    }
    if (rc != 0) {
        fprintf(stderr, "fuzz_http_exchange: connect: %s\n", strerror(errno));
        abort();
    }
    size_t off = 0;
    while (off < size) {
        ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
        if (n <= 0)
            break; /* the server closed on a bad request: fine */
        off += (size_t)n;
    }
    if (half_close)
        shutdown(fd, SHUT_WR);
    size_t got = 0;
    char buf[4096];
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, timeout_ms) <= 0)
            break;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            break;
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
