/*
 * floor_client.h — the least a client can do against the local LM server:
 * one thread, one epoll set, requests already encoded as HTTP/1.1 bytes,
 * each of `conc` keep-alive connections with one request in flight. No
 * runtime, no curl, no JSON: what it measures is the server's, the
 * kernel's and the machine's share of a benchmark, the floor under what any
 * client of the same requests can reach on the same cores.
 *
 * The caller owns the requests and the result; nothing is kept after
 * floor_run returns.
 */
#ifndef DSPEX_BENCH_FLOOR_CLIENT_H
#define DSPEX_BENCH_FLOOR_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct floor_request {
    const char *bytes; /* a complete HTTP/1.1 request with Content-Length */
    size_t len;
} floor_request;

typedef struct floor_result {
    double wall_s; /* first connect (preconnected: first request) to last
                      answer */
    double cpu_s;  /* the whole OS process's, the server threads included */
    long answered; /* answers with status 200 */
    long failed;   /* anything else: connect or I/O errors, other statuses */
    double *latency_ms; /* per request in sending order, when not NULL: the
                           caller's array of n (unanswered: 0) */
} floor_result;

/* Send n requests (reqs[i % nreqs]) to 127.0.0.1:port over conc
 * connections opened at the start, each sending its next request when its
 * answer is complete. With preconnect, the connections are opened and
 * their handshakes done before the clock starts, as for a service whose
 * connections are already open. Returns 0, or -1 when the epoll set cannot
 * be made or a preconnection fails. */
int floor_run(int port, const floor_request *reqs, size_t nreqs, long n,
              long conc, bool preconnect, floor_result *out);

#endif
