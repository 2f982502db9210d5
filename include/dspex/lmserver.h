/*
 * lmserver.h — the local LM server: an HTTP/1.1 server that speaks the
 * OpenAI, Anthropic and Gemini wire formats (streaming included), answers
 * from a script, and injects faults on demand.
 *
 * It runs on threads of its own (one by default) with their own libuv
 * loops, independent of the dspex runtime: tests start it next to a
 * runtime on 127.0.0.1 with an ephemeral port, and it never shares the
 * runtime's I/O threads.
 *
 * Answers: a queued exact reply (dx_lmserver_push_reply, FIFO) if any, else
 * a deterministic answer derived from the request: "answer: <last user
 * message>"; a tool call when tools are offered and the last user message
 * says "call <tool> [key=value ...]"; a JSON object when JSON output is
 * requested; "answer: <tool result>" right after a tool result. Usage counts
 * are whitespace-separated words. docs/internals/lmserver.md has the routes,
 * the fault specs and the exact shapes.
 */
#ifndef DSPEX_LMSERVER_H
#define DSPEX_LMSERVER_H

#include <stddef.h>
#include <stdint.h>

#include "export.h"

#define DX_LMSERVER_DEFAULT_MAX_BODY (8u * 1024u * 1024u)
#define DX_LMSERVER_DEFAULT_MAX_CONNECTIONS 4096
/* Longest accepted fault spec and queued reply. */
#define DX_LMSERVER_MAX_FAULT_SPEC 64
#define DX_LMSERVER_MAX_REPLY (1024u * 1024u)
#define DX_LMSERVER_MAX_THREADS 16

typedef struct dx_lmserver dx_lmserver;

typedef struct dx_lmserver_opts {
    const char *host;      /* IPv4 or IPv6 literal; NULL = "127.0.0.1" */
    int port;              /* 0 = ephemeral (read it with dx_lmserver_port) */
    size_t max_body_bytes; /* larger request bodies get 413; 0 = default */
    /* Connections open at once; one more is accepted and closed at once.
     * 0 = default. */
    unsigned max_connections;
    /* Every response is held back this long (a model's latency, for
     * benchmarks); faults' own delays add to it. 0 = none. */
    uint64_t latency_ms;
    /* Server threads, each with a loop and a listening socket of its own
     * on the one port (SO_REUSEPORT; the system shares connections out).
     * 0 = 1; at most
     * DX_LMSERVER_MAX_THREADS. More than one lets a benchmark's server keep
     * up with many clients at once, as a real provider's would. */
    unsigned threads;
} dx_lmserver_opts;

typedef struct dx_lmserver_stats {
    uint64_t requests; /* complete requests parsed (answered or not) */
    uint64_t connections_accepted; /* includes those refused over the limit */
    uint64_t connections_open;     /* at the moment of the call */
    /* The client closed (EOF or error) while a request was half-read or a
     * response was still owed to it. */
    uint64_t connections_closed_early;
    uint64_t faults_applied; /* requests answered with a fault */
    /* Most requests owed an answer at once (parsed, answer not yet fully
     * written): the concurrency clients achieved. */
    uint64_t max_in_flight;
    /* Connections each server thread accepted (the system shares them
     * out); entries past dx_lmserver_opts.threads are 0. */
    uint64_t accepted_by_thread[DX_LMSERVER_MAX_THREADS];
} dx_lmserver_stats;

/* Bind, listen and start the server thread. opts may be NULL (all
 * defaults). On success *out is the server (free it with
 * dx_lmserver_stop_free) and it is already accepting. Errors: DX_EINVAL
 * (bad host, port or out), DX_ESYS (bind/listen/thread failed, e.g. the
 * port is taken), DX_ENOMEM; then *out is NULL and nothing is left behind.
 * Any thread. */
DX_API int dx_lmserver_start(const dx_lmserver_opts *opts, dx_lmserver **out);

/* The bound TCP port. Any thread. */
DX_API int dx_lmserver_port(const dx_lmserver *srv);

/* Stop accepting, close every connection (responses not yet written are
 * dropped, stalled clients see the connection close), join the thread and
 * free everything. NULL is a no-op. Not from the server's own thread. */
DX_API void dx_lmserver_stop_free(dx_lmserver *srv);

/* Queue an exact reply text (copied) for the next chat request (any of the
 * three formats; embeddings do not take one). FIFO. Errors: DX_EINVAL (NULL
 * or longer than DX_LMSERVER_MAX_REPLY), DX_ENOMEM. Any thread. */
DX_API int dx_lmserver_push_reply(dx_lmserver *srv, const char *text);

/* Apply fault `spec` to each of the next `count` model requests (healthz
 * excluded). Specs: rate_limit[:retry_after_s], overloaded,
 * server_error[:5xx], slow:<ms>, stall, reset_mid_body, truncated_sse,
 * malformed_json, wrong_content_type, auth, max_tokens[:words] (the answer
 * cut after that many words, 0 by default, finished at the token limit),
 * bad_request (400),
 * no_json_schema (an OpenAI request asking for a json_schema
 * response_format gets 400, as from a server with JSON mode only; any
 * other request is answered as usual and uses the fault up).
 * Calls queue up FIFO; a request carrying an `x-dx-fault: <spec>` header
 * uses that instead and leaves the queue alone. Errors: DX_EINVAL (unknown
 * spec or count 0), DX_ENOMEM. Any thread. */
DX_API int dx_lmserver_inject(dx_lmserver *srv, const char *spec,
                              unsigned count);

/* Snapshot of the counters. Any thread. */
DX_API void dx_lmserver_stats_get(const dx_lmserver *srv,
                                  dx_lmserver_stats *out);

#endif
