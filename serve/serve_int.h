/*
 * serve_int.h — the seam inside serve/: the HTTP core (http.c: the loop
 * thread, sockets, parsing, in-order responses, backpressure, drain) and
 * the service (serve.c: programs, routing, the request processes, JSON
 * bodies, metrics). The core hands one parsed request (a dx__sreq) to
 * dx__serve_route on the loop thread; an answer comes back through
 * dx__serve_answer from any thread.
 */
#ifndef DSPEX_SERVE_INT_H
#define DSPEX_SERVE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf_int.h"
#include "dspex/serve.h"

/* Routes, also the label of the metrics. */
typedef enum dx__route {
    DX__R_PREDICT = 0,
    DX__R_BATCH,
    DX__R_CHAT,
    DX__R_PROGRAMS,
    DX__R_MODELS, /* GET /v1/models[/NAME]: the programs as OpenAI models */
    DX__R_HEALTHZ,
    DX__R_METRICS,
    DX__R_DASHBOARD,
    DX__R_OTHER,
    DX__R_COUNT,
} dx__route;

extern const char *const dx__route_names[DX__R_COUNT];

/* A program as served: refcounted, so a reload swaps in a new one while
 * running requests keep theirs. */
typedef struct dx__prog {
    atomic_int refs;
    dx_module *owned; /* loaded from a file (freed with the last ref) */
    const dx_module *module;
    char **inputs; /* required inputs, NULL-terminated (owned) */
    size_t ninputs;
    char **outputs; /* output fields when known (owned) */
    size_t noutputs;
} dx__prog;

void dx__prog_unref(dx__prog *p);

typedef struct dx__sreq dx__sreq;
typedef struct dx__conn dx__conn;

/* One request, from parse to the written response. Owned by the loop
 * thread, except while a request process works on it (between dispatch and
 * dx__serve_answer), when only that process touches it. */
struct dx__sreq {
    dx__sreq *next;  /* in the connection's response order */
    dx__sreq *qnext; /* in the wait queue or the answered queue */
    dx_serve *srv;
    dx__conn *conn; /* NULL once the connection is gone */
    uint64_t seq;
    char rid[32]; /* request id, in every answer and log line */
    dx__route route;
    char program[DX_SERVE_MAX_NAME];
    dx__prog *prog; /* a reference, or NULL */
    char *body;     /* NUL-terminated, owned */
    size_t body_len;
    bool want_sse; /* Accept: text/event-stream */
    bool close_after;
    int64_t t0_ms;  /* parsed (dx_now_ms): the deadline counts from here */
    uint64_t t0_ns; /* parsed (uv_hrtime): for the latency histogram */
    char *pre;      /* /metrics: the loop thread's part, owned */
    /* The answer: the whole HTTP response (status line to body). */
    bool answered;
    bool dispatched;
    /* Answered 504 by the deadline sweep while its process still ran: a
     * stand-in took its place in the connection's order, and its own
     * answer, when it comes, is dropped. */
    bool superseded;
    int status;
    char *resp;
    size_t resp_len;
    /* A streamed answer (dx__serve_stream_send): under srv->mu, the bytes
     * not yet handed to the loop (chunked encoding, head first), whether
     * it began and ended, and whether r sits on the answered queue. */
    dx__buf spend;
    bool streaming, s_ended, s_queued;
    /* Loop thread: it has seen the stream begin (then the deadline sweep
     * leaves r alone: the run's own deadline ends the stream). */
    bool stream_seen;
    bool s_end_seen; /* loop thread: ... and its end */
    dx__sreq *lnext; /* loop thread: in a batch of answered requests */
};

/* Build the full HTTP response for r (status line, headers, body) and hand
 * it back to the loop thread. ctype may be NULL (application/json);
 * extra_headers ("Name: v\r\n"...) may be NULL. Takes nothing; copies.
 * Any thread; after it returns the caller must not touch r again. */
void dx__serve_answer(dx__sreq *r, int status, const char *ctype,
                      const char *extra_headers, const char *body,
                      size_t body_len);
/* A streamed answer, from the request's process (or its program's, never
 * both at once): the first call sends the head (status 200, ctype,
 * extra_headers, chunked transfer encoding), every call one chunk of data.
 * DX_OK; DX_ELIMIT when more than DX__STREAM_MAX_PENDING bytes wait for a
 * slow client (then end the stream); DX_ENOMEM. Any thread. */
#define DX__STREAM_MAX_PENDING (4u << 20)
int dx__serve_stream_send(dx__sreq *r, const char *ctype,
                          const char *extra_headers, const char *data,
                          size_t len);
/* Whether r's stream has begun (its answer must go on in the stream). */
bool dx__serve_stream_begun(dx__sreq *r);
/* End r's stream; afterwards the caller must not touch r. An answer given
 * with dx__serve_answer to a request whose stream began (its process died
 * mid-stream) goes out as an "event: error" with that body, then the end.
 * Any thread. */
void dx__serve_stream_end(dx__sreq *r);
/* An error answer: {"error":{"code","message","request_id"}} (OpenAI's
 * shape for the chat route). */
void dx__serve_error(dx__sreq *r, int status, const char *code, const char *fmt,
                     ...) DX_PRINTF(4, 5);

#define DX__HIST_BUCKETS 14
extern const double dx__hist_bounds[DX__HIST_BUCKETS - 1];

/* Per (route, status) counts; loop thread only. */
#define DX__MAX_STATUS_KINDS 24
typedef struct dx__route_stats {
    int status[DX__MAX_STATUS_KINDS];
    uint64_t count[DX__MAX_STATUS_KINDS];
    size_t nstatus;
    uint64_t hist[DX__HIST_BUCKETS]; /* latency buckets (cumulative later) */
    double sum_s;
    uint64_t n;
} dx__route_stats;

typedef struct dx__named_prog {
    char name[DX_SERVE_MAX_NAME];
    char *path;              /* NULL for a C module */
    const dx_module *module; /* C module (borrowed) */
    char **inputs;           /* configured inputs (owned) or NULL */
    _Atomic(dx__prog *) cur; /* swapped under srv->prog_mu */
    int64_t mtime_ns;        /* under srv->reload_mu */
} dx__named_prog;

struct dx_serve {
    /* Configuration (read-only after start). */
    size_t max_body;
    int max_depth;
    unsigned max_conns, max_conc, queue_bound;
    int64_t deadline_ms;
    char *token;
    size_t token_len;
    char lm_name[64];
    dx_adapter_kind adapter;
    int retry_after_s;
    int64_t reload_check_ms;
    dx__named_prog progs[DX_SERVE_MAX_PROGRAMS];
    size_t nprogs;
    pthread_mutex_t prog_mu;
    /* One reload at a time (the loop's mtime check, dx_serve_reload). */
    pthread_mutex_t reload_mu;
    uint32_t rid_prefix;
    int64_t started_s; /* Unix time of the start: the models' "created" */

    /* The runtime side. */
    atomic_int start_rc; /* the dispatcher's start result; 1 = not yet */
    dx_pid dispatcher;
    dx_pid sup;

    /* The loop thread. */
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t async; /* answers arrived, or stop asked */
    uv_timer_t reload_timer;
    uv_timer_t drain_timer;
    uv_timer_t deadline_timer; /* sweeps for requests past their deadline */
    pthread_t thread;
    int port;
    bool listening;
    dx__conn *conns;
    unsigned nopen;
    dx__sreq *wait_head, *wait_tail; /* waiting for a process */
    unsigned nwaiting;
    unsigned nrunning;
    unsigned nowed; /* parsed, response not yet written */
    uint64_t seq;
    bool draining;
    int64_t drain_ms;
    bool drain_timed_out;
    dx__route_stats rstats[DX__R_COUNT];

    /* Answers from processes, and the stop request. */
    pthread_mutex_t mu;
    dx__sreq *done_head, *done_tail;
    bool stop_asked;
    bool loop_gone; /* the loop has ended: answers are freed by stop */

    /* The dashboard: watchers, the observer and its latest snapshot. */
    atomic_int dash_subs;
    int64_t dash_interval_ms;
    int64_t t_start_ms;
    dx_pid observer;
    char *snap_next; /* under mu */

    atomic_uint_fast64_t st_requests, st_responses, st_busy, st_crashed,
        st_reloads, st_open, st_running, st_waiting;
};

/* Loop thread: route a parsed request (serve.c). Answers at once for the
 * routes that need no process, else dispatches. */
void dx__serve_route(dx_serve *srv, dx__sreq *r, const char *method,
                     const char *path, const char *query, const char *auth);
/* Loop thread: answer r with the head of an event stream and keep its
 * connection as a dashboard watcher (http.c); the stream ends after limit
 * snapshots (0: when the client leaves). */
void dx__serve_subscribe(dx_serve *srv, dx__sreq *r, int limit);
/* Any thread: a new dashboard snapshot (JSON text, taken) for every
 * watcher; a snapshot not yet sent is replaced (http.c). */
void dx__serve_post_snapshot(dx_serve *srv, char *json);
/* The observer process (observe.c); arg is the server. */
void dx__observer_main(void *arg);
/* The embedded page (generated from dashboard.html). */
extern const char dx__dashboard_html[];
extern const size_t dx__dashboard_html_len;
/* Loop thread: run r in a process now or queue it (http.c). */
void dx__serve_submit(dx_serve *srv, dx__sreq *r);
/* Loop thread: hand r to the dispatcher (serve.c). */
void dx__serve_dispatch(dx_serve *srv, dx__sreq *r);
/* Loop thread: render the HTTP counters as Prometheus text. */
char *dx__serve_metrics_pre(dx_serve *srv);
/* Loop thread: record one answer in the metrics. */
void dx__serve_record(dx_serve *srv, dx__route route, int status,
                      double seconds);
/* Loop thread: check program files' mtimes and reload changed ones. */
void dx__serve_check_reload(dx_serve *srv);
void dx__sreq_free(dx__sreq *r);

/* http.c lifecycle. */
int dx__http_start(dx_serve *srv, const char *host, int port);
/* Ask the loop to drain and stop, wait for the thread. */
int dx__http_stop(dx_serve *srv, int64_t drain_ms);

#endif
