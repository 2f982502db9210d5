/*
 * http.h — the HTTP transport on the I/O loop: libcurl's multi interface,
 * and for plain HTTP to a server named by IP address or localhost (a local
 * model server, the local LM server) dspex's own HTTP/1.1 client, which costs a
 * fraction of curl's CPU per request. The contract below holds for both;
 * DX_HTTP_CURL=1 in the environment sends everything through curl.
 *
 * A process (or host thread) submits a request; one of the I/O threads (the
 * next in turn) runs it on its connection cache (keep-alive reuse per host, HTTP/2 multiplexing
 * over TLS where the server offers it) and the outcome arrives as a message
 * to `reply_to`: tag = the request's tag, ref = the request's ref, ptr = a
 * dx_http_response. With stream = true a 2xx response's body arrives first as
 * chunk messages (same tag and ref, ptr = dx_http_chunk), in order, then the
 * completion. Exactly one completion arrives per accepted request, unless
 * reply_to is dead (then it is dropped and freed).
 *
 * A transfer ends early when dx_http_cancel() is called for its ref (the
 * completion then carries DX_ECANCELED) and when the reply_to process exits:
 * its transfers are cancelled and their connections closed — at once if
 * it had a transfer running for 250 ms or more before, else when its first
 * transfer has run that long (processes are watched for their exit only
 * once a transfer of theirs runs that long, so short calls cost nothing).
 *
 * Transport errors are dx_err codes in dx_http_response.err; an HTTP status
 * of 4xx/5xx is not a transport error (err is DX_OK, status says it).
 * docs/internals/http.md describes the design.
 */
#ifndef DSPEX_HTTP_H
#define DSPEX_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "runtime.h"
#include "term.h"

/* Defaults used when a request leaves a field 0. */
#define DX_HTTP_DEFAULT_TIMEOUT_MS 300000
#define DX_HTTP_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DX_HTTP_DEFAULT_MAX_RESPONSE (16u * 1024u * 1024u)
/* dx_http_limits' defaults (see there). */
#define DX_HTTP_DEFAULT_HOST_CONNECTIONS 256
#define DX_HTTP_DEFAULT_IDLE_CONNECTIONS 256
#define DX_HTTP_DEFAULT_IDLE_AGE_MS 118000
/* Response header limits: more is DX_ELIMIT. */
#define DX_HTTP_MAX_HEADERS 128
#define DX_HTTP_MAX_HEADER_BYTES (64u * 1024u)
/* Request limits: more is DX_EINVAL at submit. */
#define DX_HTTP_MAX_REQUEST_HEADERS 64

typedef struct dx_http_request {
    const char
        *method; /* "GET", "POST", ...; NULL = "GET" (or "POST" with a body) */
    const char *url; /* http:// or https:// */
    /* "Name: value" lines without CR/LF. */
    const char *const *headers;
    size_t nheaders;
    const char *body; /* may contain NULs; NULL when body_len is 0 */
    size_t body_len;
    /* Whole transfer, queueing for a connection included; 0 = default,
     * negative = none. */
    int64_t timeout_ms;
    /* Until the connection is up; 0 = default, negative = none. */
    int64_t connect_timeout_ms;
    /* Deliver a 2xx body as chunk messages instead of in the completion. */
    bool stream;
    /* Body bytes allowed (streamed bytes count too); 0 = default. More is
     * an error (DX_ELIMIT), never a larger buffer. */
    size_t max_response_bytes;
} dx_http_request;

typedef struct dx_http_header {
    char *name;  /* as the server spelled it */
    char *value; /* leading and trailing blanks removed */
} dx_http_header;

typedef struct dx_http_response {
    /* DX_OK, or: DX_ETIMEDOUT (timeout_ms passed), DX_ECONNECT (no
     * connection: refused, unresolvable, connect timeout), DX_ERESET (the
     * connection closed or reset before the response ended), DX_ELIMIT
     * (body or headers over their limit), DX_ECANCELED (dx_http_cancel, the
     * requester died, or the I/O loop stopped), DX_EINVAL (bad URL),
     * DX_ENOMEM, DX_EHTTP (anything else: TLS, protocol). */
    int err;
    char message[256]; /* what went wrong, for people; "" on DX_OK */
    long status;       /* HTTP status; 0 if none was received */
    /* Headers of the final response, in order received. */
    dx_http_header *headers;
    size_t nheaders;
    /* Body, NUL-terminated (the NUL is not counted). Empty for a streamed
     * 2xx response; a streamed non-2xx body is collected here so an error
     * document parses in one piece. */
    char *body;
    size_t body_len;
    size_t streamed_bytes; /* body bytes sent as chunk messages */
    int http_version;      /* 10, 11, 20, 0 if unknown */
    /* Microseconds from the start of the transfer. */
    int64_t total_us;
    int64_t connect_us;
    int64_t ttfb_us; /* first response byte */
} dx_http_response;

/* One piece of a streamed body, in arrival order. */
typedef struct dx_http_chunk {
    size_t len;
    char data[]; /* len bytes, then a NUL */
} dx_http_chunk;

/* Submit a request. Everything req points to is copied before this returns:
 * the caller keeps nothing. On DX_OK *ref_out (may be NULL) identifies the
 * request and exactly one completion message will be sent to reply_to
 * (tag = tag, which must be >= 0). Errors (nothing is sent): DX_EINVAL (no
 * URL, negative tag, no reply_to, a header with CR/LF, too many headers),
 * DX_ENOMEM, DX_ESTATE (I/O loop stopping). Starts the I/O threads if needed.
 * Any thread. */
DX_API int dx_http_submit(const dx_http_request *req, dx_pid reply_to,
                          int64_t tag, dx_ref *ref_out);

/* Submit req (not streamed) and wait in the calling process for its
 * completion: DX_OK with *out the response, the caller's
 * (dx_http_response_free), whose err says whether the exchange worked.
 * The transport ends the exchange at req's timeout; should its completion
 * still not have come 5 s later, the request is cancelled and the
 * cancelled completion taken. req is copied at submission; memory the
 * caller keeps across the wait is lost if the process is killed there
 * unless it is tied (dx_ptie_new). DX_ENOTPROC off a process, DX_EINVAL (a
 * streamed req, no out, or as dx_http_submit), DX_ENOMEM, DX_ESTATE. */
DX_API int dx_http_fetch(const dx_http_request *req, dx_http_response **out);

/* Cancel a request: if it has not completed, its transfer stops and the
 * completion carries DX_ECANCELED. A ref that already completed or never
 * existed is ignored. DX_OK when the cancel was handed to the I/O threads
 * (also when none runs: then nothing is in flight).
 * Any thread. */
DX_API int dx_http_cancel(dx_ref ref);

/* The completion in a message from the transport, or NULL if m is not one.
 * The message still owns it; take it with dx_msg_take_ptr() to keep it past
 * dx_msg_free() (then free it with dx_http_response_free). */
DX_API dx_http_response *dx_http_msg_response(const dx_msg *m);
/* The streamed chunk in a message, or NULL if m is not one. Owned by m. */
DX_API const dx_http_chunk *dx_http_msg_chunk(const dx_msg *m);

/* Free a response and everything in it. NULL is a no-op. Any thread. */
DX_API void dx_http_response_free(dx_http_response *r);

/* Last header named name (ASCII case-insensitive), or NULL. The value is
 * owned by r. */
DX_API const char *dx_http_response_header(const dx_http_response *r,
                                           const char *name);

/* Connection limits. Each I/O thread (io.h) has a connection cache of its
 * own, and a limit is shared out across them so the parts add up to it
 * exactly: with four threads, max_host_connections 256 lets each open 64.
 * A limit smaller than the number of threads leaves the extra threads out
 * of use for new transfers (max_host_connections 1 still means one). */
typedef struct dx_http_limits {
    /* Connections to one host (queued requests wait); 0 = no limit.
     * Default 256. */
    long max_host_connections;
    /* Connections in all; 0 = no limit. Default 0. */
    long max_total_connections;
    /* Idle connections kept for reuse; 0 = curl's default (four per
     * transfer running, so the cache shrinks as a burst drains). Default
     * 256: LM traffic comes in bursts (the waves of an evaluation, the
     * trials of an optimizer), and each burst would otherwise open most of
     * its connections again. */
    long max_idle_connections;
    /* How long a connection may have been idle and still be reused, in
     * ms; an older one is closed instead and the request opens a new one.
     * 0 = the default, DX_HTTP_DEFAULT_IDLE_AGE_MS (curl's own, 118 s):
     * a firewall or NAT between here and the server may have forgotten a
     * connection idle that long without telling either end, and a request
     * sent on it would wait, unanswered, for its whole timeout. */
    long max_idle_age_ms;
} dx_http_limits;

/* Set the limits for transfers that start from now on (each I/O thread
 * puts them in force before its next transfer starts). A lower limit closes
 * no connection: idle ones kept from before are still reused. Copied.
 * Starts the I/O threads if they are not running. DX_OK; DX_EINVAL for a
 * negative field; DX_ESTATE/DX_ESYS/DX_ENOMEM as dx_io_start (the limits
 * are stored even then, for when the I/O runs). Any thread. */
DX_API int dx_http_set_limits(const dx_http_limits *limits);

/* Close the connections kept idle for reuse, on every I/O thread, so the
 * next requests open new ones: after a burst, to hand the server back the
 * connections it holds for us (up to max_idle_connections), or to measure
 * a first run again. Each I/O thread does it in order with the work handed
 * to it, so every transfer submitted after this returns finds no idle
 * connection from before. Transfers running keep their connections, and
 * their connections are kept when they end. One exception: curl keeps the
 * connections of a thread on which one of its transfers (https, a proxy,
 * a host name) is running at the time, as it has no call that closes only
 * idle ones. DX_OK, also when the I/O threads are not running (nothing is
 * open); DX_ENOMEM. Any thread. */
DX_API int dx_http_close_idle(void);

/* Set up the transport's process-wide state (libcurl's global state, with
 * its TLS library's configuration) now instead of on the first request,
 * which would otherwise pay ~1-2 ms for it while every other first request
 * waits. dx_lm_client_start calls it (and ignores a failure, which every
 * HTTP request then reports). Idempotent; DX_OK, or DX_EINIT when libcurl
 * cannot start. The I/O threads still start on first use, so a program
 * that hosts the loop (dx_io_start_hosted) may do so after starting its
 * clients. Any thread. */
DX_API int dx_http_global_init(void);

/* Transfers running on the I/O threads right now (racy by nature), and how
 * many TCP connections were opened since the loop started. Any thread. */
DX_API size_t dx_http_in_flight(void);
DX_API uint64_t dx_http_connections_opened(void);

#endif
