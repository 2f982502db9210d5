/*
 * serve.h — the HTTP service: serve dspex programs over HTTP/1.1 from
 * inside a running runtime.
 *
 * dx_serve_start() binds a socket and starts a thread of its own with a
 * libuv loop that accepts connections, parses requests (keep-alive and
 * pipelining, answered in order), checks auth and limits and routes. Each
 * request that runs a program (or gathers metrics) runs in a process of its
 * own, started under a dynamic supervisor (simple_one_for_one, temporary
 * children) owned by the server; the program itself runs through
 * dx_module_call, so a crash in it answers that one request with 500 and
 * its request id, and the service keeps serving.
 *
 * Routes (docs/serving.md has the bodies):
 *   POST /v1/programs/{name}/predict   {"inputs": {...}} → outputs, usage
 *   POST /v1/programs/{name}/batch     {"inputs": [{...}, ...]} → results
 *   POST /v1/chat/completions          OpenAI-compatible; model = program
 *   GET  /v1/programs                  names and input/output fields
 *   GET  /healthz                      {"status":"ok"} (no auth)
 *   GET  /metrics                      Prometheus text format
 *   GET  /dashboard                    the observer page (embedded)
 *   GET  /dashboard/events             its snapshots, server-sent events
 *
 * Backpressure: at most max_concurrency requests run at once; up to
 * queue_bound more wait for a process; past that a request is answered 503
 * with Retry-After at once, so memory stays bounded under overload.
 *
 * Threads: start, reload and stop are for host threads (not processes, not
 * the server's own thread); port and stats may be called from any thread.
 * The runtime must be running from start until stop returns, and the LM
 * client the programs use (registered as lm_name) must be started by the
 * caller.
 */
#ifndef DSPEX_SERVE_H
#define DSPEX_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "diag.h"
#include "export.h"
#include "module.h"

#define DX_SERVE_DEFAULT_MAX_BODY (1024u * 1024u)
#define DX_SERVE_DEFAULT_MAX_DEPTH 64
#define DX_SERVE_DEFAULT_MAX_CONNECTIONS 1024
#define DX_SERVE_DEFAULT_CONCURRENCY 256
#define DX_SERVE_DEFAULT_QUEUE 1024
#define DX_SERVE_DEFAULT_DEADLINE_MS 30000
#define DX_SERVE_MAX_PROGRAMS 64
#define DX_SERVE_MAX_NAME 64
/* Most items one batch request may hold. */
#define DX_SERVE_MAX_BATCH 256

typedef struct dx_serve dx_serve;

/* One program to serve: either a declarative program file (path; the
 * server loads it, owns the result and reloads it when the file changes)
 * or a module built in C (module; borrowed, it must outlive the server). */
typedef struct dx_serve_program {
    /* The name in the URL: 1..63 bytes of [A-Za-z0-9_.-] (copied). */
    const char *name;
    const char *path;
    const dx_module *module;
    /* Input fields a request must give (NULL-terminated, copied). NULL:
     * the inputs of the program's predictor when it has exactly one, else
     * none are checked before the program runs. */
    const char *const *inputs;
} dx_serve_program;

typedef struct dx_serve_opts {
    const char *host; /* IPv4 or IPv6 literal; NULL = "127.0.0.1" */
    int port;         /* 0 = ephemeral (read it with dx_serve_port) */
    const dx_serve_program *programs;
    size_t nprograms;         /* 1..DX_SERVE_MAX_PROGRAMS */
    size_t max_body_bytes;    /* larger bodies get 413; 0 = default */
    int max_json_depth;       /* deeper bodies get 400; 0 = default */
    unsigned max_connections; /* more are closed at accept; 0 = default */
    unsigned max_concurrency; /* requests running at once; 0 = default */
    /* Requests waiting for a process beyond max_concurrency; more get 503.
     * 0 = default; use max_concurrency to bound the total. */
    unsigned queue_bound;
    /* Per request, from the moment it is parsed, queueing included; past
     * it the answer is 504. 0 = default. */
    int64_t deadline_ms;
    /* Bearer token every route but /healthz requires (copied; compared in
     * constant time; never logged or echoed). NULL or "": no auth. */
    const char *token;
    /* Registered name of the LM client programs use; NULL = "lm". */
    const char *lm_name;
    dx_adapter_kind adapter;
    /* Seconds sent in Retry-After with a 503; 0 = 1. */
    int retry_after_s;
    /* How often program files are checked for a new mtime; 0 = 1000 ms,
     * negative = never (dx_serve_reload still works). */
    int64_t reload_check_ms;
    /* How often /dashboard/events sends a snapshot; 0 = 1000 ms. */
    int64_t dashboard_interval_ms;
} dx_serve_opts;

/* Load the programs, start the supervisor and the server thread, bind and
 * listen. On DX_OK *out is the running server (stop it with
 * dx_serve_stop). Errors (then *out is NULL and nothing is left behind):
 * DX_EINVAL (bad options: diag says which), DX_ESTATE (runtime not
 * running), what dx_program_load returns for a program file (diag says
 * where), DX_ESYS (bind/listen/thread failed, e.g. the port is taken),
 * DX_ENOMEM. Host thread. */
DX_API int dx_serve_start(const dx_serve_opts *opts, dx_serve **out,
                          dx_diag *diag);

/* The bound TCP port. Any thread. */
DX_API int dx_serve_port(const dx_serve *srv);

/* Load every program file again now. New requests use the new programs;
 * requests already running finish on the old ones (each holds a
 * reference). A file that fails to load keeps its old program and the
 * error is returned (diag says which file and where); the others are still
 * reloaded. Host thread. */
DX_API int dx_serve_reload(dx_serve *srv, dx_diag *diag);

typedef struct dx_serve_stats {
    uint64_t requests;         /* complete requests parsed */
    uint64_t responses;        /* responses queued for sending */
    uint64_t rejected_busy;    /* answered 503 by backpressure */
    uint64_t crashed;          /* request processes that crashed */
    uint64_t reloads;          /* program reloads that succeeded */
    uint64_t connections_open; /* at the moment of the call */
    uint64_t in_flight;        /* requests running in a process */
    uint64_t queued;           /* requests waiting for a process */
} dx_serve_stats;

/* Snapshot of the counters. Any thread. */
DX_API void dx_serve_stats_get(const dx_serve *srv, dx_serve_stats *out);

/* Graceful stop: stop accepting, answer requests that arrive on open
 * connections with 503, let accepted requests finish and their responses
 * be written (at most drain_ms; negative = as long as it takes), then
 * close every connection, stop the supervisor (which waits for requests
 * still running past the drain time: at most their deadline plus a
 * second), join the thread and free everything.
 * Returns DX_OK when every accepted request was answered, DX_ETIMEDOUT if
 * the drain time ran out first. NULL is DX_EINVAL. Host thread. */
DX_API int dx_serve_stop(dx_serve *srv, int64_t drain_ms);

#endif
