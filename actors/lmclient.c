/*
 * lmclient.c — the LM client actor (lm.h): a dx_server that owns the cache,
 * one circuit breaker per endpoint and the table of requests in flight; the
 * upstream calls with retries are made by the first caller of each request
 * itself (it leads the flight) or, for streams, fallbacks and replacements,
 * by worker processes.
 *
 * The server keeps every piece of shared state; who makes a call gets a
 * reference to the endpoint's config (shared, freed by its last holder, so
 * nothing it reads can be freed under it when the server stops) and
 * reports one outcome message.
 * Callers are replied to later (deferred dx_reply), so the mailbox keeps
 * moving while upstream calls run. With a rate limit, a flight the limiter
 * cannot admit yet is itself the limiter's waiter: it sits in s->flights
 * without a worker until pump() admits or expires it.
 *
 * Every finished distinct request (a cache hit, or a flight however it
 * ended) is noted once: a history entry, the usage totals (answered calls
 * only) and a telemetry stop/exception paired with the start emitted when
 * it began.
 */
#include "dspex/lm.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/http.h"
#include "dspex/lm_call.h"
#include "dspex/lmhistory.h"
#include "dspex/log.h"
#include "dspex/runtime.h"
#include "dspex/telemetry.h"
#include "dspex/usage.h"
#include "htab.h"

enum {
    TAG_COMPLETE = 0x4c4d01, /* call: ptr = creq */
    TAG_STATS,               /* call: no payload */
    TAG_REPLY,               /* reply: ptr = answer */
    TAG_DONE,                /* worker → server: ptr = outcome */
    TAG_TICK,                /* timer → server: look at the limiter queue */
    TAG_HISTORY,             /* call: ptr = size_t n */
    TAG_USAGE,               /* call: no payload */
    TAG_WDELTA,              /* worker → server: ptr = wdelta */
    TAG_SDELTA,              /* server → streaming caller: ptr = text */
    TAG_LEAD,                /* reply: ptr = lead (run the flight yourself) */
    TAG_LED,    /* leader → server, cast or call: ptr = outcome */
    TAG_SWEEP,  /* timer → server: look for leads nobody took */
    TAG_DIRECT, /* direct caller → server: ptr = direct_report */
};

#define DEFAULT_HISTORY 100
/* Workers that died without a report are replaced this many times per
 * request. */
#define MAX_RESPAWNS 1
/* A flight led by its caller whose outcome is this late past the caller's
 * deadline (which the leader never runs past) had its lead lost: the
 * caller gave up before the TAG_LEAD reply reached it. */
#define LEAD_GRACE_MS 2000

/* ---- request copies ------------------------------------------------------ */

/* A complete call: the request and the caller's absolute deadline (0 =
 * none), which the server needs while the request waits for the limiter. */
typedef struct creq {
    dx_lm_request *req;
    int64_t deadline_ms;
    char *ns; /* cache namespace; NULL = none */
    dx_lmcache_mode mode;
    /* A streaming caller casts its request (it must keep receiving while
     * it waits) and names itself here; the server answers it with
     * dx_reply(from) as if it had called. */
    bool stream;
    dx_from from;
} creq;

static void creq_free(void *p)
{
    creq *c = p;
    if (c) {
        dx_lm_request_free(c->req);
        dx_free(c->ns);
    }
    dx_free(c);
}

/* What the limiter charges up front: about four characters per prompt
 * token, plus the answer's cap. Corrected from the usage at release. */
static int64_t estimate_tokens(const dx_lm_request *r)
{
    int64_t chars = 0;
    for (size_t i = 0; i < r->n_messages; i++)
        chars += (int64_t)strlen(r->messages[i].content);
    int64_t est = chars / 4 + 1;
    if (r->max_tokens > 0)
        est += r->max_tokens;
    return est < DX_RATELIMIT_MAX ? est : DX_RATELIMIT_MAX;
}

/* A deep copy of a request; NULL on OOM. */
static dx_lm_request *req_copy(const dx_lm_request *r)
{
    dx_lm_request *c = NULL;
    return dx_lm_request_copy(r, &c) == DX_OK ? c : NULL;
}

/* A response copy for the second and later waiters of a coalesced call. */
static dx_lm_response *resp_copy(const dx_lm_response *r)
{
    dx_lm_response *out = NULL;
    return dx_lm_response_copy(r, &out) == DX_OK ? out : NULL;
}

void dx_lm_result_free(dx_lm_result *r)
{
    if (!r)
        return;
    dx_lm_response_free(r->response);
    dx_free(r->model_used);
    dx_free(r);
}

/* ---- messages ------------------------------------------------------------- */

/* The reply to TAG_COMPLETE / TAG_STATS. */
typedef struct answer {
    int rc;
    dx_lm_error err;
    dx_lm_result *result;
    dx_lm_client_stats stats;
    dx_usage_acc usage;
    char *text; /* inspect_history */
} answer;

static void answer_free(void *p)
{
    answer *a = p;
    if (a) {
        dx_lm_result_free(a->result);
        dx_free(a->text);
    }
    dx_free(a);
}

/* What a worker sends back: its flight, how it ended, the answer. */
typedef struct outcome {
    uint64_t flight;
    uint64_t token; /* which worker or leader of the flight reports */
    bool gave_up;   /* a leader stopped at its caller's deadline */
    int rc;
    int attempts;
    dx_lm_error err;
    dx_lm_response *response;
    int64_t usage_tokens; /* from the response's usage; -1 unknown */
    bool emitted;         /* text deltas were sent (no retry, no fallback) */
} outcome;

/* A text delta, worker → server. */
typedef struct wdelta {
    uint64_t flight;
    size_t len;
    char text[]; /* len bytes, NUL-terminated */
} wdelta;

static void outcome_free(void *p)
{
    outcome *o = p;
    if (o)
        dx_lm_response_free(o->response);
    dx_free(o);
}

/* What a direct caller reports (see "calls the client has nothing to add
 * to"): the outcome and what the history needs of the call. */
typedef struct direct_report {
    outcome o;          /* rc, attempts, err, response (the server's copy) */
    dx_lm_request *req; /* the messages alone, for the history: a copy, or
                           a giving caller's own (dx_lm_client_complete_giving) */
    /* A giving caller's request as the call sends it: its fields, with
     * the messages req now holds. Here, not in direct_call's frame, which
     * a waiting caller keeps. */
    dx_lm_request sent;
    int64_t t0_us, t1_us;
    int64_t ended_ms; /* wall clock at the end, the history's timestamp */
    dx_ref tel;       /* ties the caller's telemetry start to the stop */
    /* The caller emitted the stop (or exception) event itself: the report
     * may be handled long after the call (it is sent lazily). */
    bool tel_stopped;
    dx_pid client;
    /* The caller's reference to the published record while the call is
     * under way (counted in its `active`); given back by direct_call_over
     * before the report is sent or freed. */
    struct direct_pub *pub;
} direct_report;

static void direct_report_free(void *p)
{
    direct_report *r = p;
    if (r) {
        dx_lm_response_free(r->o.response);
        dx_lm_request_free(r->req);
    }
    dx_free(r);
}

/* ---- endpoints ------------------------------------------------------------ */

/* An endpoint's config, built once and shared by all who call it (its
 * workers and the callers that lead their own flights): a call only reads
 * it, and the last holder frees it, so it can outlive the server. */
typedef struct shared_cfg {
    atomic_int refs;
    dx_lm_config *cfg;
} shared_cfg;

static shared_cfg *cfg_ref(shared_cfg *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

static void cfg_unref(shared_cfg *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1) {
        dx_lm_config_free(c->cfg);
        dx_free(c);
    }
}

typedef struct endpoint {
    char *model; /* for results, history, usage and telemetry */
    shared_cfg *cfg;
    dx_breaker *breaker;
    /* The primary's, when callers may call it directly: its breaker opens
     * and closes that path. */
    struct direct_pub *pub;
    /* The user's breaker callback, called after the telemetry event. */
    dx_breaker_event_fn user_fn;
    void *user_ud;
} endpoint;

static void pub_set_open(struct direct_pub *p, bool open);

/* Every state change of an endpoint's breaker is an "lm.breaker" event, so
 * a dashboard sees outages without polling the client. Runs in the server
 * process, inside dx_breaker_allow/record. */
static void breaker_changed(dx_breaker *b, const dx_breaker_event *ev, void *ud)
{
    endpoint *e = ud;
    dx_telemetry_event t = {0};
    dx_telemetry_event_set(&t, DX_TELEMETRY_EVENT, "lm.breaker", e->model);
    t.state = (int)ev->to;
    t.from_state = (int)ev->from;
    t.failure_rate = ev->failure_rate;
    t.calls = ev->calls;
    (void)dx_telemetry_emit(&t); /* observers missing an event is not fatal */
    if (e->pub)
        pub_set_open(e->pub, ev->to == DX_BREAKER_CLOSED);
    if (e->user_fn)
        e->user_fn(b, ev, e->user_ud);
}

static void endpoint_clear(endpoint *e)
{
    cfg_unref(e->cfg);
    dx_free(e->model);
    dx_breaker_free(e->breaker);
    memset(e, 0, sizeof *e);
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s)
        return NULL;
    char *d = dx_strdup(s);
    if (!d)
        *oom = true;
    return d;
}

/* Build an endpoint: its config (which checks the model string and URL),
 * shared from here on, and its model name and breaker. */
static int endpoint_init(endpoint *e, size_t index, const dx_lm_endpoint *src,
                         const dx_lm_client_opts *opts,
                         const dx_breaker_config *bc)
{
    if (!src->model)
        return DX_EINVAL;
    dx_lm_config *cfg = NULL;
    int rc = dx_lm_config_new(src->model, src->base_url, src->api_key, &cfg);
    for (size_t i = 0; rc == DX_OK && i < opts->n_headers; i++)
        rc = dx_lm_config_add_header(cfg, opts->headers[i]);
    /* This endpoint's own last: the same name replaces the client's. */
    for (size_t i = 0; rc == DX_OK && i < opts->n_endpoint_headers; i++)
        if (opts->endpoint_headers[i].endpoint == index)
            rc = dx_lm_config_add_header(cfg, opts->endpoint_headers[i].header);
    if (rc != DX_OK) {
        dx_lm_config_free(cfg);
        return rc;
    }
    e->cfg = dx_calloc(1, sizeof *e->cfg);
    if (!e->cfg) {
        dx_lm_config_free(cfg);
        return DX_ENOMEM;
    }
    atomic_init(&e->cfg->refs, 1);
    e->cfg->cfg = cfg;
    e->model = dx_strdup(src->model);
    if (!e->model)
        return DX_ENOMEM;
    /* e lives in the server's heap-held state, so it outlives the breaker. */
    dx_breaker_config mine = *bc;
    e->user_fn = bc->on_event;
    e->user_ud = bc->ud;
    mine.on_event = breaker_changed;
    mine.ud = e;
    return dx_breaker_new(&mine, &e->breaker);
}

/* ---- calls the client has nothing to add to --------------------------------
 *
 * A plain call (not a stream) that bypasses the cache, to a client with one
 * endpoint, no rate limit and that endpoint's breaker closed, needs nothing
 * from the server before it starts: there is no cache to read, no flight to
 * join, no admission and no endpoint to choose. The caller makes such a
 * call at once ("direct") and reports it afterwards (TAG_DIRECT, a cast);
 * the server records the report in the breaker, the history, the usage,
 * the telemetry and the stats as it would a led flight's outcome. That
 * spares the call the request to the server and the lead back, the two
 * trips through the server before the upstream call (eval-bench at 1 in
 * flight: about half of the evaluated example's CPU beyond a plain call;
 * docs/benchmarks.md).
 *
 * The server publishes what a direct caller needs (a direct_pub) in a
 * table keyed by its pid while it runs; its `open` flag follows the
 * breaker, so after a trip calls go through the server again, which
 * refuses them or lets one probe. A published record is shared like a
 * config: the table's reference is the server's, each caller takes its
 * own for the length of its call. */

typedef struct direct_pub {
    dx__hnode by_pid; /* key: the server's pid */
    bool published;
    atomic_int refs;
    atomic_bool open;           /* the breaker is closed */
    atomic_uint_fast64_t calls; /* numbers the calls, for their seeds */
    atomic_size_t active;       /* direct calls under way */
    shared_cfg *cfg;            /* a reference */
    char *model;
    dx_retry_policy policy;
    int64_t attempt_timeout_ms;
    uint64_t seed;
} direct_pub;

/* Every published record, by server pid. Read by each direct caller for
 * the length of a lookup, written at a client's start and stop. */
static pthread_mutex_t pubs_lock = PTHREAD_MUTEX_INITIALIZER;
static dx__htab pubs;

/* Direct calls are allowed (the breaker closed) or not. */
static void pub_set_open(direct_pub *p, bool open)
{
    atomic_store(&p->open, open);
}

static void pub_unref(direct_pub *p)
{
    if (p && atomic_fetch_sub(&p->refs, 1) == 1) {
        cfg_unref(p->cfg);
        dx_free(p->model);
        dx_free(p);
    }
}

/* A new record for endpoint e of a client with these retry settings;
 * NULL on OOM (callers then always go through the server). */
static direct_pub *pub_new(const endpoint *e, const dx_retry_policy *policy,
                           int64_t attempt_timeout_ms, uint64_t seed)
{
    direct_pub *p = dx_calloc(1, sizeof *p);
    char *model = p ? dx_strdup(e->model) : NULL;
    if (!model) {
        dx_free(p);
        return NULL;
    }
    atomic_init(&p->refs, 1);
    atomic_init(&p->open, true);
    atomic_init(&p->calls, 0);
    atomic_init(&p->active, 0);
    p->cfg = cfg_ref(e->cfg);
    p->model = model;
    p->policy = *policy;
    p->attempt_timeout_ms = attempt_timeout_ms;
    p->seed = seed;
    return p;
}

/* List p under server; false when the table cannot grow (the client then
 * takes every call itself). */
static bool pub_publish(direct_pub *p, dx_pid server)
{
    p->by_pid.key = server.id;
    pthread_mutex_lock(&pubs_lock);
    p->published = dx__htab_put(&pubs, &p->by_pid);
    pthread_mutex_unlock(&pubs_lock);
    return p->published;
}

/* Take p out of the table (if it is there) and drop the server's
 * reference. */
static void pub_withdraw(direct_pub *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&pubs_lock);
    if (p->published) {
        dx__htab_del(&pubs, &p->by_pid);
        p->published = false;
        /* Freed when the last client stops, so nothing outlives them. */
        if (pubs.n == 0)
            dx__htab_free(&pubs);
    }
    pthread_mutex_unlock(&pubs_lock);
    pub_unref(p);
}

/* The open record of client, referenced, or NULL: not published (another
 * node's process, a client that is not direct-capable or has stopped) or
 * its breaker is not closed. */
static direct_pub *pub_find(dx_pid client)
{
    pthread_mutex_lock(&pubs_lock);
    /* A pid is published once at most: the first node is the only one. */
    direct_pub *p =
        DX__HTAB_ENTRY(dx__htab_find(&pubs, client.id), direct_pub, by_pid);
    if (p && atomic_load(&p->open))
        atomic_fetch_add(&p->refs, 1);
    else
        p = NULL;
    pthread_mutex_unlock(&pubs_lock);
    return p;
}

/* ---- server state --------------------------------------------------------- */

/* One distinct request being worked on, and everyone waiting for it. */
typedef struct flight {
    struct flight *next, *prev;
    dx__hnode by_id;  /* key: id */
    dx__hnode by_key; /* USE flights only: key: the cache key's first bits */
    uint64_t id;
    dx_lmcache_key key;
    dx_lm_request *req;
    dx_from *waiters;
    bool *wstream; /* per waiter: a streaming caller */
    size_t n_waiters, cap_waiters;
    bool streaming; /* its workers stream (its first caller did) */
    bool emitted;   /* text was forwarded: no retry or fallback now */
    /* The text forwarded so far, for streaming callers who join late. */
    char *sofar;
    size_t sofar_len, sofar_cap;
    size_t ep; /* endpoint the current worker uses */
    dx_pid worker;
    dx_ref mon;
    int attempts;
    bool fell_back;
    bool running; /* a worker is out (else: queued for the limiter) */
    int respawns; /* workers replaced after dying without a report */
    /* Run by its first caller (TAG_LEAD) rather than a worker: worker and
     * mon are then that caller and the monitor of it. */
    bool led;
    uint64_t token; /* of the current worker or leader; reports must match */
    bool admitted;  /* holds a limiter slot */
    int64_t est_tokens;
    int64_t deadline_ms;
    int64_t t0_us; /* when it began, for latency and telemetry */
    dx_ref tel;    /* ties its telemetry start to its stop */
} flight;

typedef struct state {
    endpoint eps[1 + DX_LM_CLIENT_MAX_FALLBACKS];
    size_t n_eps;
    dx_retry_policy policy;
    int64_t attempt_timeout_ms;
    uint64_t seed;
    dx_lmcache *cache;
    /* Every flight, newest first; indexed by id (a worker's report) and,
     * for USE flights, by cache key (callers joining them), so a message
     * costs the same at 1,000 calls in flight as at one. */
    flight *flights;
    dx__htab flights_by_id;
    dx__htab flights_by_key;
    uint64_t next_flight;
    dx_lm_client_stats stats;
    dx_ratelimit *rl; /* NULL: unlimited */
    bool timer_armed;
    int64_t timer_due;
    dx_ref timer;
    /* The sweep for leads nobody took (LEAD_GRACE_MS): armed while a led
     * flight with a deadline is out. */
    bool sweep_armed;
    int64_t sweep_due;
    dx_ref sweep_timer;
    dx_ptie *tie; /* frees the state if the server ends without terminate */
    dx_lmhistory *hist;
    dx_usage_prices *prices;
    dx_usage_acc usage;
    direct_pub *pub; /* NULL: every call goes through the server */
} state;

static void flight_free(flight *f)
{
    dx_lmcache_key_clear(&f->key);
    dx_lm_request_free(f->req);
    dx_free(f->waiters);
    dx_free(f->wstream);
    dx_free(f->sofar);
    dx_free(f);
}

/* owner: called by the server itself (its monitors are its own). */
static void state_free(state *s, bool owner)
{
    if (!s)
        return;
    while (s->flights) {
        flight *f = s->flights;
        s->flights = f->next;
        /* Workers are linked only through the monitor: end them so no
         * upstream call outlives its client. */
        if (f->running) {
            if (owner)
                dx_demonitor(f->mon, true);
            if (!f->led) /* a leader is a caller: it sees the DOWN */
                dx_kill(f->worker);
        }
        flight_free(f);
    }
    dx__htab_free(&s->flights_by_id);
    dx__htab_free(&s->flights_by_key);
    /* The queued flights were freed above: forget them, don't touch them. */
    dx_ratelimit_free(s->rl);
    if (s->timer_armed)
        dx_cancel_timer(s->timer);
    if (s->sweep_armed)
        dx_cancel_timer(s->sweep_timer);
    pub_withdraw(s->pub);
    for (size_t i = 0; i < s->n_eps; i++)
        endpoint_clear(&s->eps[i]);
    dx_lmcache_close(s->cache);
    dx_lmhistory_free(s->hist);
    dx_usage_prices_free(s->prices);
    dx_free(s);
}

/* The tie's free function: the server ended without terminate. Runs on a
 * scheduler thread outside any process, as the server's process ends. */
static void state_orphaned(void *st)
{
    state_free(st, false);
}

/* ---- the worker ------------------------------------------------------------ */

typedef struct job {
    shared_cfg *cfg; /* a reference */
    dx_lm_request *req;
    dx_retry_policy policy;
    int64_t attempt_timeout_ms;
    uint64_t seed;
    uint64_t flight;
    uint64_t token;
    dx_pid server;
    bool stream; /* stream the upstream call, forwarding text deltas */
    /* Held here, not on the worker's stack, so a worker killed mid-call
     * (its client stopped) still frees it through arg_free. */
    outcome *out;
} job;

static void job_free(void *p)
{
    job *j = p;
    if (!j)
        return;
    cfg_unref(j->cfg);
    dx_lm_request_free(j->req);
    outcome_free(j->out);
    dx_free(j);
}

/* Call cfg with req until it answers or policy gives up, into o (rc,
 * attempts, err, response, usage_tokens). A streaming attempt that already
 * forwarded text (o->emitted) is not retried: its callers have that text,
 * and a second attempt would repeat it. deadline_ms (0: none) bounds the
 * attempts and the waits between them: past it o->rc is DX_ETIMEDOUT and
 * o->gave_up set. co carries the stream callback and abort_on_down. */
static void call_upstream(const dx_lm_config *cfg, const dx_lm_request *req,
                          const dx_retry_policy *policy,
                          int64_t attempt_timeout_ms, uint64_t seed,
                          int64_t deadline_ms, dx_lm_call_opts co, outcome *o)
{
    dx_retry_state rs;
    dx_retry_state_init(&rs, 0, seed);
    int64_t per_attempt = attempt_timeout_ms > 0 ? attempt_timeout_ms : 600000;
    for (;;) {
        int64_t left = deadline_ms > 0 ? deadline_ms - dx_now_ms() : 0;
        if (deadline_ms > 0 && left <= 0) {
            o->rc = DX_ETIMEDOUT;
            o->gave_up = true;
            break;
        }
        co.timeout_ms = attempt_timeout_ms;
        if (deadline_ms > 0 && left < per_attempt)
            co.timeout_ms = left;
        o->attempts++;
        dx_lm_error_clear(&o->err);
        o->rc = dx_lm_call(cfg, req, &co, &o->response, &o->err);
        if (o->rc == DX_EPROVIDER && deadline_ms > 0 &&
            dx_now_ms() >= deadline_ms) {
            o->rc = DX_ETIMEDOUT;
            o->gave_up = true;
            break;
        }
        if (o->rc != DX_EPROVIDER || o->emitted)
            break;
        int64_t d =
            dx_retry_next_delay_ms(policy, &rs, &o->err, dx_now_ms(), NULL);
        if (d < 0)
            break;
        if (deadline_ms > 0 && dx_now_ms() + d >= deadline_ms) {
            o->rc = DX_ETIMEDOUT;
            o->gave_up = true;
            break;
        }
        if (d > 0)
            dx_sleep(d);
    }
    o->usage_tokens = o->rc == DX_OK && o->response && o->response->has_usage
                          ? o->response->usage.total_tokens
                          : -1;
}

/* dx_lm_call's delta callback in a streaming worker: forward choice 0's
 * text to the server. A delta that cannot be sent (no memory) is not lost
 * for good: the server sends whatever its callers miss when the flight
 * ends (see on_done). */
static void worker_delta(dx_lm_stream *st, const dx_lm_delta *d, void *ud)
{
    (void)st;
    job *j = ud;
    if (d->kind != DX_LM_DELTA_TEXT || d->choice != 0 || d->text_len == 0)
        return;
    wdelta *w = dx_malloc(sizeof *w + d->text_len + 1);
    if (!w)
        return;
    w->flight = j->flight;
    w->len = d->text_len;
    memcpy(w->text, d->text, d->text_len);
    w->text[d->text_len] = '\0';
    j->out->emitted = true;
    dx_send_ptr(j->server, TAG_WDELTA, w, dx_free);
}

/* Call one endpoint until it answers or the policy gives up, then report. */
static void worker_main(void *arg)
{
    job *j = arg;
    outcome *o = j->out = dx_calloc(1, sizeof *o);
    if (!o)
        dx_exit_self(dx_atom("enomem"));
    o->flight = j->flight;
    o->token = j->token;
    dx_lm_error_clear(&o->err);
    dx_lm_call_opts co = {0};
    if (j->stream) {
        j->req->stream = true;
        co.on_delta = worker_delta;
        co.ud = j;
    }
    call_upstream(j->cfg->cfg, j->req, &j->policy, j->attempt_timeout_ms,
                  j->seed, 0, co, o);
    j->out = NULL;
    dx_send_ptr(j->server, TAG_DONE, o, outcome_free);
}

/* The retry jitter's seed for f on endpoint ep: the same whether a worker
 * or the leading caller makes the call. */
static uint64_t flight_seed(const state *s, const flight *f, size_t ep)
{
    return s->seed + f->id * 0x9e3779b97f4a7c15ull + ep;
}

/* Start a worker for f on endpoint ep. */
static int spawn_worker(state *s, flight *f, size_t ep)
{
    job *j = dx_calloc(1, sizeof *j);
    if (!j)
        return DX_ENOMEM;
    j->cfg = cfg_ref(s->eps[ep].cfg);
    j->req = req_copy(f->req);
    if (!j->req) {
        job_free(j);
        return DX_ENOMEM;
    }
    j->policy = s->policy;
    j->attempt_timeout_ms = s->attempt_timeout_ms;
    j->seed = flight_seed(s, f, ep);
    j->flight = f->id;
    j->token = ++f->token;
    j->server = dx_self();
    j->stream = f->streaming;
    dx_spawn_opts so = {.monitor = true,
                        .label = "dx_lm_client:worker",
                        .arg_free = job_free,
                        .spread = true};
    int rc = dx_spawn_opt(worker_main, j, &so, &f->worker, &f->mon);
    if (rc != DX_OK) {
        job_free(j);
        return rc;
    }
    f->ep = ep;
    f->running = true;
    f->led = false;
    s->stats.workers++;
    if (f->streaming)
        s->stats.streamed++;
    return DX_OK;
}

/* The first endpoint from `from` on whose breaker lets a call through. */
static bool pick_endpoint(state *s, size_t from, size_t *ep)
{
    int64_t now = dx_now_ms();
    for (size_t i = from; i < s->n_eps; i++)
        if (dx_breaker_allow(s->eps[i].breaker, now, NULL)) {
            *ep = i;
            return true;
        }
    return false;
}

/* ---- history, usage, telemetry ------------------------------------------------ */

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The telemetry helpers build their events only when someone subscribed,
 * and never in their callers' frames (DX_NOINLINE): an event is ~200
 * bytes, and direct_call waits on its LM call. */
static DX_NOINLINE void tel_start(const char *model, dx_ref ref)
{
    if (dx_telemetry_count() == 0)
        return;
    dx_telemetry_event e = {0};
    dx_telemetry_event_set(&e, DX_TELEMETRY_START, "lm.call", model);
    e.ref = ref;
    (void)dx_telemetry_emit(&e); /* observers missing an event is not fatal */
}

/* What one finished request was, for note(). */
typedef struct ending {
    const dx_lm_request *req;
    int64_t t0_us;
    int64_t t1_us; /* when it ended; 0: now */
    dx_ref tel;
    const char *model;
    const dx_lm_response *resp; /* NULL unless rc is DX_OK */
    bool cached;
    int attempts;
    int rc;
    const dx_lm_error *err;
    /* Set when the recorder is done with req and resp (a direct caller's
     * report): the history takes them instead of copying them (resp is
     * then *take_resp). */
    dx_lm_request *take_req;
    dx_lm_response **take_resp;
    int64_t ended_ms; /* the history's timestamp; 0: now */
    bool tel_stopped; /* the telemetry event is already emitted */
} ending;

/* The error a finished request is recorded with: the provider's, or for a
 * failure the provider did not type (an open breaker, the limiter, a dead
 * worker) a timeout or a cancellation naming the dspex code. */
/* The kind a finished request is recorded with (ending_error's). */
static dx_lm_error_kind ending_kind(int rc, const dx_lm_error *err)
{
    if (rc == DX_OK)
        return DX_LM_ERR_NONE;
    if (err && err->kind != DX_LM_ERR_NONE)
        return err->kind;
    return rc == DX_ETIMEDOUT ? DX_LM_ERR_TIMEOUT : DX_LM_ERR_CANCELLED;
}

static void ending_error(int rc, const dx_lm_error *err, dx_lm_error *e)
{
    dx_lm_error_clear(e);
    if (rc == DX_OK)
        return;
    if (err && err->kind != DX_LM_ERR_NONE) {
        *e = *err;
        return;
    }
    e->kind = ending_kind(rc, err);
    snprintf(e->message, sizeof e->message, "dspex: %s", dx_err_name(rc));
}

/* The "lm.call" stop event of an answered request, or its exception event
 * (of error kind kind). */
static DX_NOINLINE void tel_stop(const char *model, dx_ref ref, int64_t dur_us,
                                 const dx_lm_usage *u, bool cached,
                                 int attempts, dx_lm_error_kind kind)
{
    if (dx_telemetry_count() == 0)
        return;
    dx_telemetry_event ev = {0};
    dx_telemetry_event_set(&ev,
                           kind == DX_LM_ERR_NONE ? DX_TELEMETRY_STOP
                                                  : DX_TELEMETRY_EXCEPTION,
                           "lm.call", model);
    ev.duration_us = dur_us;
    if (u && !cached) {
        ev.input_tokens = u->input_tokens;
        ev.output_tokens = u->output_tokens;
    }
    ev.cache_hit = cached;
    ev.retries = attempts > 1 ? attempts - 1 : 0;
    ev.error_kind = kind;
    ev.ref = ref;
    (void)dx_telemetry_emit(&ev);
}

/* Record a finished request in the history, the usage totals (answered
 * calls only: a failure's spend is unknown) and telemetry (ending_error
 * says what a failure is recorded as). */
static void note(state *s, const ending *d)
{
    int64_t dur_us = (d->t1_us ? d->t1_us : mono_us()) - d->t0_us;
    dx_lm_error e;
    ending_error(d->rc, d->err, &e);
    dx_lm_usage usage = {0};
    const dx_lm_usage *u = NULL;
    if (d->resp && d->resp->has_usage) {
        usage = d->resp->usage; /* read before the history takes resp */
        u = &usage;
    }
    dx_lmhistory_record rec = {
        .timestamp_ms = d->ended_ms ? d->ended_ms : wall_ms(),
        .model = d->model,
        .request = d->req,
        .response = d->resp,
        .latency_ms = (double)dur_us / 1000.0,
        .cached = d->cached,
        .attempts = d->attempts,
        .error = d->rc != DX_OK ? &e : NULL,
    };
    if (u)
        rec.usage = *u;
    /* A history that cannot grow just misses this entry. */
    if (d->take_req || d->take_resp)
        (void)dx_lmhistory_add_taking(s->hist, &rec, d->take_req, d->take_resp);
    else
        (void)dx_lmhistory_add(s->hist, &rec);
    if (d->rc == DX_OK)
        dx_usage_acc_add(&s->usage, s->prices, d->model, u, d->cached);
    if (!d->tel_stopped)
        tel_stop(d->model, d->tel, dur_us, u, d->cached, d->attempts, e.kind);
}

static void note_flight(state *s, const flight *f, const char *model,
                        const dx_lm_response *resp, int rc,
                        const dx_lm_error *err)
{
    ending d = {.req = f->req,
                .t0_us = f->t0_us,
                .tel = f->tel,
                .model = model,
                .resp = resp,
                .attempts = f->attempts,
                .rc = rc,
                .err = err};
    note(s, &d);
}

/* ---- replies ---------------------------------------------------------------- */

static dx_msg *answer_msg(answer *a)
{
    dx_msg *m = dx_msg_new(TAG_REPLY);
    if (!m) {
        answer_free(a);
        return NULL;
    }
    m->ptr = a;
    m->ptr_free = answer_free;
    return m;
}

static dx_msg *error_msg(int rc, const dx_lm_error *err)
{
    answer *a = dx_calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->rc = rc;
    if (err)
        a->err = *err;
    else
        dx_lm_error_clear(&a->err);
    return answer_msg(a);
}

/* A result owning resp (freed on failure). */
static dx_msg *result_msg(dx_lm_response *resp, const char *model, bool cached,
                          int attempts)
{
    answer *a = dx_calloc(1, sizeof *a);
    dx_lm_result *r = dx_calloc(1, sizeof *r);
    char *m = dx_strdup(model);
    if (!a || !r || !m) {
        dx_free(a);
        dx_free(r);
        dx_free(m);
        dx_lm_response_free(resp);
        return error_msg(DX_ENOMEM, NULL);
    }
    r->response = resp;
    r->model_used = m;
    r->cached = cached;
    r->attempts = attempts;
    a->rc = DX_OK;
    dx_lm_error_clear(&a->err);
    a->result = r;
    return answer_msg(a);
}

static void reply_to(dx_from from, dx_msg *m)
{
    if (m)
        dx_reply(from, m);
    /* With no memory for an answer the caller is left to its timeout; the
     * server keeps going. */
}

/* A streaming caller is not inside dx_call (the runtime drops replies to
 * a process not waiting in one): its answer is a plain message carrying
 * its call's reference, after the text it was sent. */
static void reply_stream(dx_from from, dx_msg *m)
{
    if (!m)
        return;
    m->ref = from.ref;
    (void)dx_send(from.pid, m); /* a caller that is gone needs no answer */
}

static void answer_waiter(const flight *f, size_t i, dx_msg *m)
{
    if (f->wstream[i])
        reply_stream(f->waiters[i], m);
    else
        reply_to(f->waiters[i], m);
}

/* The table key of a cache key: its hex digest's first 16 digits (a
 * SHA-256, so as good as any hash of it). */
static uint64_t key_bits(const dx_lmcache_key *k)
{
    uint64_t v = 0;
    for (int i = 0; i < 16 && k->hex[i]; i++) {
        char c = k->hex[i];
        v = v << 4 | (uint64_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

/* Add f to the flights and their indexes; DX_ENOMEM (f not added) when an
 * index cannot get its first buckets. */
static int link_flight(state *s, flight *f)
{
    f->by_id.key = f->id;
    if (!dx__htab_put(&s->flights_by_id, &f->by_id))
        return DX_ENOMEM;
    if (f->key.mode == DX_LMCACHE_USE) {
        f->by_key.key = key_bits(&f->key);
        if (!dx__htab_put(&s->flights_by_key, &f->by_key)) {
            dx__htab_del(&s->flights_by_id, &f->by_id);
            return DX_ENOMEM;
        }
    }
    f->prev = NULL;
    f->next = s->flights;
    if (s->flights)
        s->flights->prev = f;
    s->flights = f;
    s->stats.in_flight++;
    return DX_OK;
}

static void unlink_flight(state *s, flight *f)
{
    dx__htab_del(&s->flights_by_id, &f->by_id);
    if (f->key.mode == DX_LMCACHE_USE)
        dx__htab_del(&s->flights_by_key, &f->by_key);
    if (f->prev)
        f->prev->next = f->next;
    else
        s->flights = f->next;
    if (f->next)
        f->next->prev = f->prev;
    s->stats.in_flight--;
}

/* f is over: give back its limiter slot, correcting the token charge
 * (actual < 0: unknown), and drop it. */
static void end_flight(state *s, flight *f, int64_t actual_tokens)
{
    if (f->admitted)
        dx_ratelimit_release(s->rl, f->est_tokens, actual_tokens, dx_now_ms());
    unlink_flight(s, f);
    flight_free(f);
}

/* Answer every waiter of f with an error and drop it. */
static void fail_flight(state *s, flight *f, int rc, const dx_lm_error *err)
{
    note_flight(s, f, s->eps[f->ep].model, NULL, rc, err);
    for (size_t i = 0; i < f->n_waiters; i++) {
        s->stats.failures++;
        answer_waiter(f, i, error_msg(rc, err));
    }
    end_flight(s, f, -1);
}

/* ---- callbacks -------------------------------------------------------------- */

typedef struct handoff {
    state *st;
    bool taken;
} handoff;

static int srv_init(void *arg, void **st, dx_term **stop_reason)
{
    (void)stop_reason;
    handoff *h = arg;
    h->taken = true;
    *st = h->st;
    /* Unpublished, the record is only unused: calls go through here. */
    if (h->st->pub)
        (void)pub_publish(h->st->pub, dx_self());
    /* A killed server (dx_kill, a crash, dx_runtime_stop) runs no
     * terminate: the tie frees the state and ends the workers as the
     * process ends, before anyone hears of its death. Without memory for
     * the tie such an end leaks the state. */
    h->st->tie = dx_ptie_new(h->st, state_orphaned);
    return DX_OK;
}

static int add_waiter(flight *f, dx_from from, bool stream)
{
    if (f->n_waiters == f->cap_waiters) {
        size_t cap = f->cap_waiters ? f->cap_waiters * 2 : 4;
        dx_from *w = dx_realloc(f->waiters, cap * sizeof *w);
        if (!w)
            return DX_ENOMEM;
        f->waiters = w;
        bool *ws = dx_realloc(f->wstream, cap * sizeof *ws);
        if (!ws)
            return DX_ENOMEM;
        f->wstream = ws;
        f->cap_waiters = cap;
    }
    f->wstream[f->n_waiters] = stream;
    f->waiters[f->n_waiters++] = from;
    return DX_OK;
}

/* Send len bytes of text to a streaming caller, tagged with its call's
 * reference so its receive loop picks it out. A piece that cannot be sent
 * (no memory) is dropped; the caller's final reply is still whole. */
static void send_text(dx_from to, const char *text, size_t len)
{
    if (len == 0)
        return;
    char *t = dx_malloc(len + 1);
    dx_msg *m = t ? dx_msg_new(TAG_SDELTA) : NULL;
    if (!m) {
        dx_free(t);
        return;
    }
    memcpy(t, text, len);
    t[len] = '\0';
    m->ref = to.ref;
    m->ptr = t;
    m->ptr_free = dx_free;
    (void)dx_send(to.pid, m); /* a caller that is gone needs no text */
}

/* Keep the forwarded text for late joiners. Without memory for it a late
 * joiner gets what it missed at the end instead (on_done). */
static void sofar_add(flight *f, const char *text, size_t len)
{
    if (f->sofar_len + len + 1 > f->sofar_cap) {
        size_t cap = f->sofar_cap ? f->sofar_cap : 256;
        while (cap < f->sofar_len + len + 1)
            cap *= 2;
        char *p = dx_realloc(f->sofar, cap);
        if (!p)
            return;
        f->sofar = p;
        f->sofar_cap = cap;
    }
    memcpy(f->sofar + f->sofar_len, text, len);
    f->sofar_len += len;
    f->sofar[f->sofar_len] = '\0';
}

/* The text of a response's first choice ("" when none). */
static const char *resp_text(const dx_lm_response *r)
{
    return r && r->n_choices > 0 && r->choices[0].text ? r->choices[0].text
                                                       : "";
}

/* Only cache-using requests join: BYPASS and REFRESH callers asked for a
 * fresh answer, and a USE caller must not wait on a BYPASS flight whose
 * answer will not be stored. */
static flight *find_flight(state *s, const dx_lmcache_key *k)
{
    if (k->mode != DX_LMCACHE_USE)
        return NULL;
    for (dx__hnode *n = dx__htab_find(&s->flights_by_key, key_bits(k)); n;
         n = dx__htab_find_next(n)) {
        flight *f = DX__HTAB_ENTRY(n, flight, by_key);
        if (strcmp(f->key.hex, k->hex) == 0 && f->key.len == k->len &&
            memcmp(f->key.canonical, k->canonical, k->len) == 0)
            return f;
    }
    return NULL;
}

/* ---- flights led by their callers --------------------------------------------
 *
 * A flight whose first caller waits in a plain call (not streaming) is run
 * by that caller: the reply to its TAG_COMPLETE is a TAG_LEAD saying which
 * endpoint to call and how to retry, and the caller makes the upstream call
 * in its own process, then sends the outcome back (TAG_LED) for the cache,
 * the history, the usage, the breaker and anyone who joined meanwhile.
 * That spares each call a worker process and two of its four trips
 * between processes (eval-bench: docs/benchmarks.md). Everything a worker
 * would have done stays possible: the caller is monitored, and a leader
 * that dies, stops at its deadline, or never got its lead (its call timed
 * out just before the reply came, which the runtime then drops) is
 * replaced by a worker for the callers who joined, as a dead worker is. A
 * failure another endpoint may take on is sent as a call, so the leader
 * waits for the fallback's answer like any joiner. */

/* What a caller needs to run its flight. */
typedef struct lead {
    uint64_t flight, token;
    shared_cfg *cfg; /* a reference */
    char *model;     /* the endpoint's, for the result */
    dx_retry_policy policy;
    int64_t attempt_timeout_ms;
    uint64_t seed;
    bool may_fall_back; /* a later endpoint could take a failure on */
} lead;

static void lead_free(void *p)
{
    lead *l = p;
    if (l) {
        cfg_unref(l->cfg);
        dx_free(l->model);
    }
    dx_free(l);
}

/* Make sure a sweep comes by due (ms, monotonic) at the latest. */
static void arm_sweep(state *s, int64_t due)
{
    if (s->sweep_armed && s->sweep_due <= due)
        return;
    if (s->sweep_armed)
        dx_cancel_timer(s->sweep_timer);
    s->sweep_armed = false;
    int64_t now = dx_now_ms();
    dx_msg *m = dx_msg_new(TAG_SWEEP);
    /* Without a timer a lost lead waits for the next sweep armed. */
    if (m && dx_send_after(due > now ? due - now : 1, dx_self(), m,
                           &s->sweep_timer) == DX_OK) {
        s->sweep_armed = true;
        s->sweep_due = due;
    }
}

/* Hand f to its first caller on endpoint ep. false: not possible (no
 * memory, or the caller is gone), so a worker should run it. */
static bool lead_flight(state *s, flight *f, size_t ep)
{
    dx_from leader = f->waiters[0];
    lead *l = dx_calloc(1, sizeof *l);
    char *model = l ? dx_strdup(s->eps[ep].model) : NULL;
    dx_msg *m = model ? dx_msg_new(TAG_LEAD) : NULL;
    dx_ref mon;
    if (!m || dx_monitor(leader.pid, &mon) != DX_OK) {
        dx_msg_free(m);
        dx_free(model);
        dx_free(l);
        return false;
    }
    l->flight = f->id;
    l->token = ++f->token;
    l->cfg = cfg_ref(s->eps[ep].cfg);
    l->model = model;
    l->policy = s->policy;
    l->attempt_timeout_ms = s->attempt_timeout_ms;
    l->seed = flight_seed(s, f, ep);
    l->may_fall_back = ep + 1 < s->n_eps;
    m->ptr = l;
    m->ptr_free = lead_free;
    /* The leader is no longer one of those waiting for the answer. */
    f->n_waiters--;
    memmove(f->waiters, f->waiters + 1, f->n_waiters * sizeof *f->waiters);
    memmove(f->wstream, f->wstream + 1, f->n_waiters * sizeof *f->wstream);
    f->worker = leader.pid;
    f->mon = mon;
    f->ep = ep;
    f->running = true;
    f->led = true;
    s->stats.workers++;
    if (f->deadline_ms > 0)
        arm_sweep(s, f->deadline_ms + LEAD_GRACE_MS);
    dx_reply(leader, m);
    return true;
}

/* f's leader will not report: it died (DX_EDOWN), stopped at its deadline
 * (DX_ETIMEDOUT), or its lead was lost. The callers who joined get a worker
 * (after a death only while respawns are left, as for a worker); with none
 * the flight ends. */
static void leader_gone(state *s, flight *f, int rc)
{
    dx_demonitor(f->mon, true);
    dx_breaker_record_ignored(s->eps[f->ep].breaker);
    f->running = false;
    f->led = false;
    f->token++; /* a late report from it no longer counts */
    bool died = rc == DX_EDOWN;
    if (f->n_waiters > 0 && (!died || f->respawns < MAX_RESPAWNS) &&
        spawn_worker(s, f, f->ep) == DX_OK) {
        if (died) {
            f->respawns++;
            s->stats.worker_respawns++;
        }
        return;
    }
    f->running = true; /* as fail_flight expects it */
    fail_flight(s, f, rc, NULL);
}

/* Reclaim the led flights whose leader is this far past its deadline
 * without a word, and arm the next sweep for the rest. */
static void sweep(state *s)
{
    s->sweep_armed = false;
    int64_t now = dx_now_ms(), next = 0;
    flight *f = s->flights;
    while (f) {
        flight *after = f->next;
        if (f->led && f->deadline_ms > 0) {
            int64_t due = f->deadline_ms + LEAD_GRACE_MS;
            if (now >= due)
                leader_gone(s, f, DX_ETIMEDOUT);
            else if (next == 0 || due < next)
                next = due;
        }
        f = after;
    }
    if (next > 0)
        arm_sweep(s, next);
}

/* Pick f's first endpoint and start it: led by its first caller when that
 * caller waits in a plain call, else by a worker. DX_EOPEN when every
 * breaker refuses; else the spawn's code. */
static int begin_flight(state *s, flight *f)
{
    size_t ep;
    if (!pick_endpoint(s, 0, &ep))
        return DX_EOPEN;
    f->fell_back = ep > 0;
    if (!f->streaming && f->n_waiters > 0 && !f->wstream[0] &&
        lead_flight(s, f, ep)) {
        if (ep > 0)
            s->stats.fallbacks++;
        return DX_OK;
    }
    int rc = spawn_worker(s, f, ep);
    if (rc != DX_OK) {
        dx_breaker_record_ignored(s->eps[ep].breaker);
        return rc;
    }
    if (ep > 0)
        s->stats.fallbacks++;
    return DX_OK;
}

static dx_srv_ret handle_complete(state *s, dx_msg *request, dx_from from,
                                  dx_msg **reply)
{
    s->stats.requests++;
    int64_t t0 = mono_us();
    creq *c = dx_msg_take_ptr(request);
    dx_lm_request *req = c ? c->req : NULL;
    int64_t deadline = c ? c->deadline_ms : 0;
    bool stream = c ? c->stream : false;
    /* A BYPASS call neither reads nor stores nor joins a flight, so it
     * needs no key: hashing the canonical request is the most expensive
     * step of this (serial) path. */
    dx_lmcache_key key = {.mode = DX_LMCACHE_BYPASS};
    int rc = req ? DX_OK : DX_EINVAL;
    if (req && c->mode != DX_LMCACHE_BYPASS)
        rc = dx_lmcache_key_make(req, s->eps[0].model, c->ns, &key);
    if (rc == DX_OK)
        key.mode = c->mode;
    if (c)
        dx_free(c->ns);
    dx_free(c);
    if (rc != DX_OK) {
        dx_lm_request_free(req);
        *reply = error_msg(rc, NULL);
        return DX_SRV_REPLY;
    }
    dx_lm_response *hit = NULL;
    if (dx_lmcache_get(s->cache, &key, &hit) == DX_OK) {
        s->stats.cache_hits++;
        dx_lmcache_key_clear(&key);
        ending d = {.req = req,
                    .t0_us = t0,
                    .tel = dx_make_ref(),
                    .model = s->eps[0].model,
                    .resp = hit,
                    .cached = true,
                    .rc = DX_OK};
        tel_start(d.model, d.tel);
        note(s, &d);
        dx_lm_request_free(req);
        if (stream)
            send_text(from, resp_text(hit), strlen(resp_text(hit)));
        *reply = result_msg(hit, s->eps[0].model, true, 0);
        return DX_SRV_REPLY;
    }
    flight *f = find_flight(s, &key);
    if (f) {
        /* Joining costs no admission, queued or running. */
        dx_lmcache_key_clear(&key);
        dx_lm_request_free(req);
        if (add_waiter(f, from, stream) != DX_OK) {
            *reply = error_msg(DX_ENOMEM, NULL);
            return DX_SRV_REPLY;
        }
        if (stream)
            send_text(from, f->sofar, f->sofar_len);
        s->stats.coalesced++;
        return DX_SRV_NOREPLY;
    }
    f = dx_calloc(1, sizeof *f);
    if (!f || add_waiter(f, from, stream) != DX_OK) {
        if (f) {
            dx_free(f->waiters);
            dx_free(f->wstream);
        }
        dx_free(f);
        dx_lmcache_key_clear(&key);
        dx_lm_request_free(req);
        *reply = error_msg(DX_ENOMEM, NULL);
        return DX_SRV_REPLY;
    }
    f->id = ++s->next_flight;
    f->streaming = stream;
    f->key = key;
    f->req = req;
    f->deadline_ms = deadline;
    f->est_tokens = estimate_tokens(req);
    f->t0_us = t0;
    f->tel = dx_make_ref();
    tel_start(s->eps[0].model, f->tel);
    if (s->rl) {
        rc = dx_ratelimit_try_admit(s->rl, f->est_tokens, dx_now_ms(), NULL);
        if (rc == DX_EBUSY) {
            rc = link_flight(s, f);
            if (rc == DX_OK) {
                rc = dx_ratelimit_enqueue(s->rl, f, f->est_tokens, deadline);
                if (rc == DX_OK) {
                    s->stats.rate_waits++;
                    return DX_SRV_NOREPLY; /* pump() arms the timer */
                }
                unlink_flight(s, f);
            }
        }
        if (rc != DX_OK) {
            note_flight(s, f, s->eps[0].model, NULL, rc, NULL);
            flight_free(f);
            s->stats.failures++;
            if (rc == DX_ELIMIT)
                s->stats.rate_rejected++;
            *reply = error_msg(rc, NULL);
            return DX_SRV_REPLY;
        }
        f->admitted = true;
    }
    rc = link_flight(s, f);
    if (rc != DX_OK) {
        if (f->admitted)
            dx_ratelimit_release(s->rl, f->est_tokens, 0, dx_now_ms());
        note_flight(s, f, s->eps[0].model, NULL, rc, NULL);
        flight_free(f);
        s->stats.failures++;
        *reply = error_msg(rc, NULL);
        return DX_SRV_REPLY;
    }
    rc = begin_flight(s, f);
    if (rc != DX_OK) {
        /* Refused before any upstream call: no tokens were spent. */
        note_flight(s, f, s->eps[0].model, NULL, rc, NULL);
        end_flight(s, f, 0);
        s->stats.failures++;
        *reply = error_msg(rc, NULL);
        return DX_SRV_REPLY;
    }
    return DX_SRV_NOREPLY;
}

/* ---- the limiter queue ------------------------------------------------------- */

static void expire_one(dx_ratelimit *rl, void *waiter, void *ud)
{
    (void)rl;
    state *s = ud;
    s->stats.rate_expired++;
    fail_flight(s, waiter, DX_ETIMEDOUT, NULL); /* not admitted: no release */
}

/* Expire the queued flights past their deadline, start those the limiter
 * admits now, and arm one timer for the next moment either can happen. */
static void pump(state *s)
{
    if (!s->rl)
        return;
    int64_t now = dx_now_ms();
    dx_ratelimit_expire(s->rl, now, expire_one, s);
    int64_t wait = -1;
    flight *f;
    while ((f = dx_ratelimit_next_ready(s->rl, now, &wait)) != NULL) {
        f->admitted = true;
        int rc = begin_flight(s, f);
        if (rc != DX_OK)
            fail_flight(s, f, rc, NULL);
    }
    int64_t due = wait >= 0 ? now + (wait > 0 ? wait : 1) : -1;
    int64_t dl = dx_ratelimit_next_deadline(s->rl);
    if (dl > 0 && (due < 0 || dl < due))
        due = dl > now ? dl : now + 1;
    if (due < 0 || (s->timer_armed && s->timer_due <= due))
        return;
    if (s->timer_armed)
        dx_cancel_timer(s->timer);
    s->timer_armed = false;
    dx_msg *m = dx_msg_new(TAG_TICK);
    /* Without a timer the queue still moves on the next message. */
    if (m && dx_send_after(due - now, dx_self(), m, &s->timer) == DX_OK) {
        s->timer_armed = true;
        s->timer_due = due;
    }
}

static size_t count_queued(const state *s)
{
    size_t n = 0;
    for (const flight *f = s->flights; f; f = f->next)
        n += !f->running;
    return n;
}

static flight *flight_by_id(state *s, uint64_t id);
static void on_done(state *s, outcome *o);
static void on_direct(state *s, direct_report *r);

static dx_srv_ret srv_call(void *st, dx_msg *request, dx_from from,
                           dx_msg **reply, dx_term **stop_reason)
{
    (void)stop_reason;
    state *s = st;
    if (request->tag == TAG_COMPLETE) {
        dx_srv_ret r = handle_complete(s, request, from, reply);
        pump(s);
        return r;
    }
    if (request->tag == TAG_LED) {
        /* A leader's failure another endpoint may take on: it waits for
         * the answer as one of the flight's callers. */
        outcome *o = dx_msg_take_ptr(request);
        flight *f = o ? flight_by_id(s, o->flight) : NULL;
        if (!f || o->token != f->token || add_waiter(f, from, false) != DX_OK) {
            *reply = o ? error_msg(o->rc, &o->err) : error_msg(DX_ENOMEM, NULL);
            outcome_free(o);
            return DX_SRV_REPLY;
        }
        on_done(s, o);
        outcome_free(o);
        pump(s);
        return DX_SRV_NOREPLY;
    }
    if (request->tag == TAG_DIRECT) {
        /* A direct caller's failure, reported as a call (see direct_call). */
        if (request->ptr && s->pub)
            on_direct(s, request->ptr);
        *reply = error_msg(DX_OK, NULL);
        return DX_SRV_REPLY;
    }
    if (request->tag == TAG_STATS) {
        answer *a = dx_calloc(1, sizeof *a);
        if (a) {
            a->stats = s->stats;
            a->stats.queued = count_queued(s);
            if (s->pub)
                a->stats.in_flight += atomic_load(&s->pub->active);
            for (size_t i = 0; i < s->n_eps; i++)
                a->stats.breakers[i] = dx_breaker_get_state(s->eps[i].breaker);
        }
        *reply = a ? answer_msg(a) : NULL;
        return DX_SRV_REPLY;
    }
    if (request->tag == TAG_USAGE) {
        answer *a = dx_calloc(1, sizeof *a);
        if (a)
            a->usage = s->usage;
        *reply = a ? answer_msg(a) : NULL;
        return DX_SRV_REPLY;
    }
    if (request->tag == TAG_HISTORY) {
        size_t n = request->ptr ? *(size_t *)request->ptr : 0;
        char probe[1];
        size_t len = dx_lmhistory_inspect(s->hist, n, probe, sizeof probe);
        answer *a = dx_calloc(1, sizeof *a);
        char *text = dx_malloc(len + 1);
        if (!a || !text) {
            dx_free(a);
            dx_free(text);
            *reply = error_msg(DX_ENOMEM, NULL);
            return DX_SRV_REPLY;
        }
        dx_lmhistory_inspect(s->hist, n, text, len + 1);
        a->rc = DX_OK;
        a->text = text;
        *reply = answer_msg(a);
        return DX_SRV_REPLY;
    }
    *reply = error_msg(DX_EINVAL, NULL);
    return DX_SRV_REPLY;
}

static flight *flight_by_id(state *s, uint64_t id)
{
    return DX__HTAB_ENTRY(dx__htab_find(&s->flights_by_id, id), flight, by_id);
}

/* A worker or leader reported: record it, then answer everyone or fall
 * back. */
static void on_done(state *s, outcome *o)
{
    flight *f = flight_by_id(s, o->flight);
    if (!f || o->token != f->token)
        return; /* from one replaced since */
    dx_demonitor(f->mon, true);
    f->attempts += o->attempts;
    f->running = false;
    endpoint *e = &s->eps[f->ep];
    int64_t now = dx_now_ms();
    if (o->rc == DX_OK) {
        dx_breaker_record(e->breaker, false, now);
        /* A cache that cannot store is not the caller's failure. */
        (void)dx_lmcache_put(s->cache, &f->key, o->response, now);
        note_flight(s, f, e->model, o->response, DX_OK, NULL);
        /* Streaming callers get what they have not seen yet: everything
         * when the flight did not stream, else normally nothing. */
        const char *text = resp_text(o->response);
        size_t tlen = strlen(text);
        if (f->sofar_len <= tlen &&
            memcmp(text, f->sofar ? f->sofar : "", f->sofar_len) == 0)
            for (size_t i = 0; i < f->n_waiters; i++)
                if (f->wstream[i])
                    send_text(f->waiters[i], text + f->sofar_len,
                              tlen - f->sofar_len);
        for (size_t i = 0; i < f->n_waiters; i++) {
            dx_lm_response *r =
                i + 1 == f->n_waiters ? o->response : resp_copy(o->response);
            if (i + 1 == f->n_waiters)
                o->response = NULL;
            if (!r) {
                s->stats.failures++;
                answer_waiter(f, i, error_msg(DX_ENOMEM, NULL));
                continue;
            }
            answer_waiter(f, i, result_msg(r, e->model, false, f->attempts));
        }
        end_flight(s, f, o->usage_tokens);
        return;
    }
    if (o->rc == DX_EPROVIDER)
        dx_breaker_record_error(e->breaker, &o->err, now);
    else
        dx_breaker_record_ignored(e->breaker);
    /* Fallback policy (lm.h): move on only from a failure another endpoint
     * might not share. */
    /* Text already forwarded cannot be taken back: no other endpoint. */
    bool move_on = !(f->emitted || o->emitted) &&
                   ((o->rc == DX_EPROVIDER &&
                     dx_retry_is_retryable(&s->policy, &o->err)) ||
                    dx_breaker_get_state(e->breaker) == DX_BREAKER_OPEN);
    size_t next;
    if (move_on && pick_endpoint(s, f->ep + 1, &next)) {
        s->stats.fallbacks++;
        if (spawn_worker(s, f, next) == DX_OK)
            return;
        dx_breaker_record_ignored(s->eps[next].breaker);
    }
    fail_flight(s, f, o->rc, &o->err);
}

/* A direct caller's report: the call is over; record it as on_done
 * records a led flight that nobody joined. */
static void on_direct(state *s, direct_report *r)
{
    s->stats.requests++;
    s->stats.workers++;
    s->stats.direct++;
    if (r->o.rc != DX_OK)
        s->stats.failures++;
    endpoint *e = &s->eps[0];
    int64_t now = dx_now_ms();
    if (r->o.rc == DX_OK)
        dx_breaker_record(e->breaker, false, now);
    else if (r->o.rc == DX_EPROVIDER)
        dx_breaker_record_error(e->breaker, &r->o.err, now);
    else
        dx_breaker_record_ignored(e->breaker);
    ending d = {.req = r->req,
                .t0_us = r->t0_us,
                .t1_us = r->t1_us,
                .tel = r->tel,
                .model = e->model,
                .resp = r->o.rc == DX_OK ? r->o.response : NULL,
                .attempts = r->o.attempts,
                .rc = r->o.rc,
                .err = &r->o.err,
                /* The report's copies are the history's: the report is
                 * freed after this. */
                .take_req = r->req,
                .take_resp = r->o.rc == DX_OK ? &r->o.response : NULL,
                .ended_ms = r->ended_ms,
                .tel_stopped = r->tel_stopped};
    note(s, &d);
}

static dx_srv_ret srv_info(void *st, dx_msg *msg, dx_term **stop_reason)
{
    (void)stop_reason;
    state *s = st;
    if (msg->tag == TAG_DONE) {
        outcome *o = msg->ptr;
        if (o)
            on_done(s, o);
        pump(s);
        return DX_SRV_NOREPLY;
    }
    if (msg->tag == TAG_LED) {
        outcome *o = msg->ptr;
        flight *f = o ? flight_by_id(s, o->flight) : NULL;
        if (f && o->token == f->token && o->rc != DX_OK)
            s->stats.failures++; /* the leader's own answer */
        if (f && o->token == f->token && o->gave_up)
            leader_gone(s, f, DX_ETIMEDOUT);
        else if (f)
            on_done(s, o);
        pump(s);
        return DX_SRV_NOREPLY;
    }
    if (msg->tag == TAG_SWEEP) {
        sweep(s);
        return DX_SRV_NOREPLY;
    }
    if (msg->tag == TAG_DIRECT) {
        if (msg->ptr && s->pub)
            on_direct(s, msg->ptr);
        return DX_SRV_NOREPLY;
    }
    if (msg->tag == TAG_WDELTA) {
        wdelta *w = msg->ptr;
        flight *f = w ? flight_by_id(s, w->flight) : NULL;
        if (f) {
            f->emitted = true;
            sofar_add(f, w->text, w->len);
            for (size_t i = 0; i < f->n_waiters; i++)
                if (f->wstream[i])
                    send_text(f->waiters[i], w->text, w->len);
        }
        return DX_SRV_NOREPLY;
    }
    if (msg->tag == TAG_TICK) {
        if (s->timer_armed && dx_now_ms() >= s->timer_due)
            s->timer_armed = false;
        pump(s);
        return DX_SRV_NOREPLY;
    }
    if (msg->tag == DX_TAG_DOWN) {
        /* A worker died without reporting (it crashed or was killed).
         * Its request never got an answer, and an LM call has no side
         * effects: a new worker takes it over once — unless text already
         * went out to streaming callers, or the deadline has passed. */
        for (flight *f = s->flights; f; f = f->next) {
            if (!f->running || !dx_ref_eq(f->mon, msg->ref))
                continue;
            if (f->led) {
                leader_gone(s, f, DX_EDOWN);
                break;
            }
            dx_breaker_record_ignored(s->eps[f->ep].breaker);
            f->running = false;
            bool again = !f->emitted && f->respawns < MAX_RESPAWNS &&
                         (f->deadline_ms == 0 || dx_now_ms() < f->deadline_ms);
            if (again && spawn_worker(s, f, f->ep) == DX_OK) {
                f->respawns++;
                s->stats.worker_respawns++;
            } else {
                f->running = true; /* as fail_flight expects it */
                fail_flight(s, f, DX_EDOWN, NULL);
            }
            break;
        }
        pump(s);
    }
    return DX_SRV_NOREPLY;
}

/* A streaming caller's request: answered like a call (see creq). */
static dx_srv_ret srv_cast(void *st, dx_msg *msg, dx_term **stop_reason)
{
    (void)stop_reason;
    state *s = st;
    creq *c = msg->tag == TAG_COMPLETE ? msg->ptr : NULL;
    if (!c)
        return DX_SRV_NOREPLY;
    dx_from from = c->from;
    dx_msg *reply = NULL;
    if (handle_complete(s, msg, from, &reply) == DX_SRV_REPLY)
        reply_stream(from, reply);
    pump(s);
    return DX_SRV_NOREPLY;
}

static void srv_terminate(void *st, const dx_term *reason)
{
    (void)reason;
    state *s = st;
    dx_ptie_cut(s->tie);
    state_free(s, true);
}

static const dx_server_ops client_ops = {
    .name = "dx_lm_client",
    .init = srv_init,
    .handle_call = srv_call,
    .handle_cast = srv_cast,
    .handle_info = srv_info,
    .terminate = srv_terminate,
};

/* ---- public API ---------------------------------------------------------------- */

/* The user's headers: not too many, none missing, each endpoint's for an
 * endpoint there is. */
static bool headers_ok(const dx_lm_client_opts *opts)
{
    if (opts->n_headers > DX_LM_CLIENT_MAX_HEADERS ||
        (opts->n_headers > 0 && !opts->headers) ||
        opts->n_endpoint_headers > DX_LM_CLIENT_MAX_HEADERS ||
        (opts->n_endpoint_headers > 0 && !opts->endpoint_headers))
        return false;
    for (size_t i = 0; i < opts->n_headers; i++)
        if (!opts->headers[i])
            return false;
    for (size_t i = 0; i < opts->n_endpoint_headers; i++)
        if (!opts->endpoint_headers[i].header ||
            opts->endpoint_headers[i].endpoint > opts->n_fallbacks)
            return false;
    return true;
}

int dx_lm_client_start(const dx_lm_client_opts *opts,
                       const dx_server_opts *sopts, dx_pid *pid)
{
    if (!opts || !opts->primary.model ||
        opts->n_fallbacks > DX_LM_CLIENT_MAX_FALLBACKS ||
        (opts->n_fallbacks > 0 && !opts->fallbacks) || !headers_ok(opts))
        return DX_EINVAL;
    /* The transport's one-time set-up, here rather than in the first
     * calls, where it held up every example of a first evaluation (eval-bench
     * at 256 in flight: the first request left ~1.2 ms later). Should it
     * fail, the HTTP calls say so (DX_EINIT); a client of the sim provider
     * needs none. */
    (void)dx_http_global_init();
    state *s = dx_calloc(1, sizeof *s);
    if (!s)
        return DX_ENOMEM;
    dx_breaker_config bc;
    if (opts->breaker)
        bc = *opts->breaker;
    else
        dx_breaker_config_default(&bc);
    if (opts->retry)
        s->policy = *opts->retry;
    else
        dx_retry_policy_default(&s->policy);
    int rc = DX_OK;
    if (s->policy.max_attempts < 1)
        rc = DX_EINVAL;
    for (size_t i = 0; rc == DX_OK && i <= opts->n_fallbacks; i++) {
        const dx_lm_endpoint *src =
            i == 0 ? &opts->primary : &opts->fallbacks[i - 1];
        rc = endpoint_init(&s->eps[i], i, src, opts, &bc);
        s->n_eps = i + 1;
    }
    if (rc == DX_OK && opts->ratelimit)
        rc = dx_ratelimit_new(opts->ratelimit, dx_now_ms(), &s->rl);
    if (rc == DX_OK)
        rc = dx_lmhistory_new(opts->history_size ? opts->history_size
                                                 : DEFAULT_HISTORY,
                              &s->hist);
    if (rc == DX_OK)
        rc = dx_usage_prices_new(false, &s->prices);
    if (rc == DX_OK && opts->prices)
        rc = dx_usage_prices_load_json(s->prices, opts->prices, NULL, 0);
    if (rc == DX_OK)
        dx_usage_acc_init(&s->usage, opts->primary.model);
    if (rc == DX_OK) {
        rc = dx_lmcache_open(opts->cache_path, opts->cache_limits, &s->cache);
        if (rc == DX_ECACHEFILE) {
            /* The client still works, caching in memory; but whoever named
             * the file expects answers kept across runs, so say why not. */
            dx_log_field f[] = {
                DX_LOG_STR("model", opts->primary.model),
                DX_LOG_STR("reason", dx_lmcache_error(s->cache)),
            };
            dx_log_event(DX_LOG_WARNING, "lm_cache_in_memory_only", f,
                         sizeof f / sizeof f[0]);
            rc = DX_OK;
        }
    }
    if (rc != DX_OK) {
        state_free(s, true);
        return rc;
    }
    s->attempt_timeout_ms = opts->attempt_timeout_ms;
    s->seed = opts->seed;
    /* Only a call with nothing to choose may skip the server: one
     * endpoint, no limiter (the breaker is watched per call). */
    if (s->n_eps == 1 && !s->rl) {
        s->pub =
            pub_new(&s->eps[0], &s->policy, s->attempt_timeout_ms, s->seed);
        s->eps[0].pub = s->pub;
    }
    handoff *h = dx_calloc(1, sizeof *h);
    if (!h) {
        state_free(s, true);
        return DX_ENOMEM;
    }
    h->st = s;
    dx_server_opts so = sopts ? *sopts : (dx_server_opts){0};
    rc = dx_server_start(&client_ops, h, &so, pid, NULL);
    if (rc != DX_OK && !h->taken)
        state_free(s, true);
    dx_free(h);
    return rc;
}

int dx_lm_client_complete(dx_pid client, const dx_lm_request *req,
                          int64_t timeout_ms, dx_lm_result **out,
                          dx_lm_error *err)
{
    return dx_lm_client_complete_opt(client, req, NULL, timeout_ms, out, err);
}

/* The absolute deadline (ms, monotonic) of a call with timeout_ms, or 0
 * for none (a negative timeout). */
static int64_t deadline_of(int64_t timeout_ms)
{
    return timeout_ms >= 0 ? dx_now_ms() + timeout_ms : 0;
}

/* The TAG_COMPLETE message of a call with its deadline (0: none): *m on
 * DX_OK; DX_EINVAL (bad arguments), DX_ENOMEM. */
static int complete_msg(const dx_lm_request *req,
                        const dx_lm_client_call_opts *copts,
                        int64_t deadline_ms, dx_lm_result **out,
                        dx_lm_error *err, dx_msg **m)
{
    *m = NULL;
    if (err)
        dx_lm_error_clear(err);
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    if (!req)
        return DX_EINVAL;
    dx_lmcache_mode mode = copts ? copts->cache_mode : DX_LMCACHE_USE;
    if (mode != DX_LMCACHE_USE && mode != DX_LMCACHE_BYPASS &&
        mode != DX_LMCACHE_REFRESH)
        return DX_EINVAL;
    const char *ns = copts && copts->ns && copts->ns[0] ? copts->ns : NULL;
    creq *c = dx_calloc(1, sizeof *c);
    bool oom = !c;
    if (c) {
        c->req = req_copy(req);
        c->ns = dup_or_null(ns, &oom);
        c->mode = mode;
    }
    *m = !oom && c->req ? dx_msg_new(TAG_COMPLETE) : NULL;
    if (!*m) {
        creq_free(c);
        return DX_ENOMEM;
    }
    c->deadline_ms = deadline_ms;
    (*m)->ptr = c;
    (*m)->ptr_free = creq_free;
    return DX_OK;
}

/* Unpack a TAG_REPLY (freed here). */
static int take_answer(dx_msg *reply, dx_lm_result **out, dx_lm_error *err)
{
    answer *a = reply->ptr;
    if (!a) {
        dx_msg_free(reply);
        return DX_ENOMEM;
    }
    int rc = a->rc;
    if (err)
        *err = a->err;
    if (rc == DX_OK) {
        *out = a->result;
        a->result = NULL;
    }
    dx_msg_free(reply);
    return rc;
}

/* Run the flight the client handed this caller (see "flights led by
 * their callers"): the upstream call here, watching the client (if it dies
 * the call is cancelled and the answer is DX_EDOWN, as a call to it would
 * have been), then the outcome to the client. o is the caller's, given. */
static int lead_call(dx_pid client, const lead *l, const dx_lm_request *req,
                     int64_t deadline_ms, outcome *o, dx_ptie *o_tie,
                     dx_lm_result **out, dx_lm_error *err)
{
    dx_ref mon;
    bool watching = dx_monitor(client, &mon) == DX_OK;
    dx_lm_call_opts co = {.abort_on_down = watching ? mon : DX_NOREF};
    o->flight = l->flight;
    o->token = l->token;
    dx_lm_error_clear(&o->err);
    /* Killed during the call, this process still frees the outcome (o_tie,
     * the answer in it included); the client learns of the death by its
     * monitor. The tie holds until the demonitor is done too: flushing the
     * DOWN drains the mailbox, where a kill takes effect (chaos test: the
     * outcome leaked when a kill landed there). */
    call_upstream(l->cfg->cfg, req, &l->policy, l->attempt_timeout_ms, l->seed,
                  deadline_ms, co, o);
    if (watching)
        dx_demonitor(mon, true);
    dx_ptie_cut(o_tie);
    if (o->rc == DX_EDOWN) {
        outcome_free(o);
        return DX_EDOWN;
    }
    if (o->rc == DX_OK) {
        /* The client keeps a copy (cache, history, joiners); this caller
         * the answer itself. */
        dx_lm_response *mine = o->response;
        dx_lm_result *r = dx_calloc(1, sizeof *r);
        char *model = r ? dx_strdup(l->model) : NULL;
        o->response = model ? resp_copy(mine) : NULL;
        if (!o->response) {
            o->response = mine; /* the client still gets its answer */
            dx_free(r);
            dx_free(model);
            dx_send_ptr(client, TAG_LED, o, outcome_free);
            return DX_ENOMEM;
        }
        r->response = mine;
        r->model_used = model;
        r->attempts = o->attempts;
        dx_send_ptr(client, TAG_LED, o, outcome_free);
        *out = r;
        return DX_OK;
    }
    int rc = o->rc;
    int64_t left = deadline_ms > 0 ? deadline_ms - dx_now_ms() : DX_INFINITY;
    if (l->may_fall_back && !o->gave_up && (deadline_ms == 0 || left > 0)) {
        dx_msg *m = dx_msg_new(TAG_LED);
        if (m) {
            m->ptr = o;
            m->ptr_free = outcome_free;
            dx_msg *reply = NULL;
            rc = dx_call(client, m, left, &reply);
            return rc == DX_OK ? take_answer(reply, out, err) : rc;
        }
    }
    if (err)
        *err = o->err;
    dx_send_ptr(client, TAG_LED, o, outcome_free);
    return rc;
}

/* The call r reports is no longer under way: give back the caller's
 * reference to the record. */
static void direct_call_over(direct_report *r)
{
    if (r->pub) {
        atomic_fetch_sub(&r->pub->active, 1);
        pub_unref(r->pub);
        r->pub = NULL;
    }
}

/* A direct caller killed during its call (a tie's free function, on a
 * scheduler thread outside any process): the client still hears of the
 * call, as it hears of a leader's death by its monitor. */
static void direct_abandoned(void *p)
{
    direct_report *r = p;
    direct_call_over(r);
    dx_lm_response_free(r->o.response);
    r->o.response = NULL;
    r->o.rc = DX_EDOWN;
    r->t1_us = mono_us();
    dx_send_ptr(r->client, TAG_DIRECT, r, direct_report_free);
}

/* A report zeroed but for its error's message buffer (512 bytes), which
 * only a failure writes (an empty string until then); then cleared as
 * dx_lm_error_clear does. */
static direct_report *report_alloc(void)
{
    direct_report *r = dx_malloc(sizeof *r);
    if (r) {
        size_t skip = offsetof(direct_report, o.err.message),
               after = skip + sizeof r->o.err.message;
        memset(r, 0, skip);
        memset((char *)r + after, 0, sizeof *r - after);
        dx_lm_error_clear(&r->o.err);
    }
    return r;
}

/* A direct call's report, with its copy of the request's messages (the
 * history keeps only those: not the schema, tools and stop words); NULL
 * when out of memory. Not inlined: the request it copies from is a
 * struct that direct_call's frame would carry through the call's wait. */
static DX_NOINLINE direct_report *
direct_report_new(direct_pub *p, const dx_lm_request *req, dx_pid client)
{
    direct_report *r = report_alloc();
    dx_lm_request messages_only = {.messages = req->messages,
                                   .n_messages = req->n_messages};
    dx_lm_request *copy = r ? req_copy(&messages_only) : NULL;
    if (!copy) {
        dx_free(r);
        return NULL;
    }
    r->pub = p;
    r->req = copy;
    r->client = client;
    return r;
}

/* The report of a giving caller's call: it takes the messages from req at
 * once (so a caller killed mid-call is still reported with them) and sends
 * the request through r->sent. NULL when out of memory (req untouched). */
static DX_NOINLINE direct_report *
direct_report_giving(direct_pub *p, dx_lm_request *req, dx_pid client)
{
    direct_report *r = report_alloc();
    dx_lm_request *mine = r ? dx_lm_request_new(NULL) : NULL;
    if (!mine) {
        dx_free(r);
        return NULL;
    }
    mine->messages = req->messages;
    mine->n_messages = req->n_messages;
    req->messages = NULL;
    req->n_messages = 0;
    r->sent = *req;
    r->sent.messages = mine->messages;
    r->sent.n_messages = mine->n_messages;
    r->pub = p;
    r->req = mine;
    r->client = client;
    return r;
}

static int direct_call_end(dx_pid client, direct_pub *p, direct_report *r,
                           int rc, const dx_lm_usage *usage,
                           int64_t deadline_ms);

/* Make a call the client has nothing to add to (see "calls the client has
 * nothing to add to") here, at once, watching the client as a leader does,
 * then report it. p is the caller's reference, given; giving is req itself
 * when the caller gives it (dx_lm_client_complete_giving), else NULL. */
static int direct_call(dx_pid client, direct_pub *p, const dx_lm_request *req,
                       dx_lm_request *giving, int64_t deadline_ms,
                       dx_lm_result **out, dx_lm_error *err)
{
    direct_report *r = giving ? direct_report_giving(p, giving, client)
                              : direct_report_new(p, req, client);
    if (!r) {
        pub_unref(p);
        return DX_ENOMEM;
    }
    if (giving)
        req = &r->sent;
    atomic_fetch_add(&p->active, 1);
    r->tel = dx_make_ref();
    r->t0_us = mono_us();
    tel_start(p->model, r->tel);
    /* Killed during the call, this process still reports it (and frees
     * nothing the report needs); as in lead_call, the tie holds until the
     * demonitor has flushed the mailbox, where a kill takes effect. */
    dx_ptie *tie = dx_ptie_new(r, direct_abandoned);
    dx_ref mon;
    bool watching = dx_monitor(client, &mon) == DX_OK;
    dx_lm_call_opts co = {.abort_on_down = watching ? mon : DX_NOREF};
    /* Numbered apart from the server's flights (the top bit set), so no
     * two calls share a retry jitter. */
    uint64_t n = atomic_fetch_add(&p->calls, 1) | 1ull << 63;
    call_upstream(p->cfg->cfg, req, &p->policy, p->attempt_timeout_ms,
                  p->seed + n * 0x9e3779b97f4a7c15ull, deadline_ms, co, &r->o);
    if (watching)
        dx_demonitor(mon, true);
    dx_ptie_cut(tie);
    r->t1_us = mono_us();
    int rc = r->o.rc;
    /* Read before the answer goes to the caller, for the stop event. */
    dx_lm_usage usage = {0};
    bool has_usage = rc == DX_OK && r->o.response && r->o.response->has_usage;
    if (has_usage)
        usage = r->o.response->usage;
    if (rc == DX_OK) {
        /* The caller gets the answer itself; the client a copy for its
         * history (without memory for one, the call is recorded without its
         * text), or a share of it when the caller only reads it. */
        dx_lm_result *res = dx_calloc(1, sizeof *res);
        char *model = res ? dx_strdup(p->model) : NULL;
        dx_lm_response *copy_for_client =
            !model   ? NULL
            : giving ? dx_lm_response_share(r->o.response)
                     : resp_copy(r->o.response);
        if (model) {
            res->response = r->o.response;
            res->model_used = model;
            res->attempts = r->o.attempts;
            *out = res;
            r->o.response = copy_for_client;
        } else {
            dx_free(res);
            rc = DX_ENOMEM; /* the client still records the answer */
        }
    } else if (err) {
        *err = r->o.err;
    }
    if (rc == DX_EDOWN) {
        /* The client is gone: nobody to report to. */
        direct_call_over(r);
        direct_report_free(r);
        return rc;
    }
    return direct_call_end(client, p, r, rc, has_usage ? &usage : NULL,
                           deadline_ms);
}

/* The end of a direct call that the client is there to hear of: its
 * telemetry, then the report. */
static int direct_call_end(dx_pid client, direct_pub *p, direct_report *r,
                           int rc, const dx_lm_usage *usage,
                           int64_t deadline_ms)
{
    /* The call's telemetry ends here, when it ends, not when the client
     * gets round to the report; so does the history's timestamp. */
    r->ended_ms = wall_ms();
    tel_stop(p->model, r->tel, r->t1_us - r->t0_us, usage, false, r->o.attempts,
             ending_kind(r->o.rc, &r->o.err));
    r->tel_stopped = true;
    direct_call_over(r); /* p is not to be used after this */
    /* Without memory for the message the call goes unrecorded. */
    dx_msg *m = dx_msg_new(TAG_DIRECT);
    if (!m) {
        direct_report_free(r);
        return rc;
    }
    m->ptr = r;
    m->ptr_free = direct_report_free;
    if (rc != DX_EPROVIDER) {
        /* Nobody waits on the report, and an answer never changes what a
         * direct caller may do next (it cannot open the breaker): the
         * client is not woken for it, but handles it before any later
         * message, a caller's request for the history, the usage or the
         * stats included, or with 64 of them (dx_send_lazy). At 1 call in
         * flight that spares the client a run per call. */
        dx_send_lazy(client, m);
        return rc;
    }
    /* A provider's error may open the breaker: wait until the client has
     * recorded it, so this caller's next call already sees the breaker as
     * it is (refused at once when it opened). Failures are rare; answers
     * need no such wait, for they never open a breaker. */
    int64_t left = deadline_ms > 0 ? deadline_ms - dx_now_ms() : 5000;
    dx_msg *ack = NULL;
    /* Not waited for (no time left, the client busy): still recorded. */
    if (dx_call(client, m, left > 0 ? left : 0, &ack) == DX_OK)
        dx_msg_free(ack);
    return rc;
}

static int complete(dx_pid client, const dx_lm_request *req,
                    dx_lm_request *giving, const dx_lm_client_call_opts *copts,
                    int64_t timeout_ms, dx_lm_result **out, dx_lm_error *err);

int dx_lm_client_complete_opt(dx_pid client, const dx_lm_request *req,
                              const dx_lm_client_call_opts *copts,
                              int64_t timeout_ms, dx_lm_result **out,
                              dx_lm_error *err)
{
    return complete(client, req, NULL, copts, timeout_ms, out, err);
}

int dx_lm_client_complete_giving(dx_pid client, dx_lm_request *req,
                                 const dx_lm_client_call_opts *copts,
                                 int64_t timeout_ms, dx_lm_result **out,
                                 dx_lm_error *err)
{
    return complete(client, req, req, copts, timeout_ms, out, err);
}

/* giving: req itself, when its caller gives it (else NULL). */
static int complete(dx_pid client, const dx_lm_request *req,
                    dx_lm_request *giving, const dx_lm_client_call_opts *copts,
                    int64_t timeout_ms, dx_lm_result **out, dx_lm_error *err)
{
    /* One deadline for both sides: the client's for the flight, this
     * caller's if it leads it. */
    int64_t deadline_ms = deadline_of(timeout_ms);
    /* Off a process (a host thread) the call is refused below, as a call
     * to the client would be, and not recorded. */
    if (copts && copts->cache_mode == DX_LMCACHE_BYPASS && req && out &&
        !dx_pid_is_none(dx_self())) {
        direct_pub *p = pub_find(client);
        if (p) {
            if (err)
                dx_lm_error_clear(err);
            *out = NULL;
            return direct_call(client, p, req, giving, deadline_ms, out, err);
        }
    }
    dx_msg *m = NULL;
    int rc = complete_msg(req, copts, deadline_ms, out, err, &m);
    if (rc != DX_OK)
        return rc;
    /* Ready before asking: a caller handed the lead must be able to report
     * back whatever happens. */
    outcome *o = dx_calloc(1, sizeof *o);
    if (!o) {
        dx_msg_free(m);
        return DX_ENOMEM;
    }
    dx_ptie *o_tie = dx_ptie_new(o, outcome_free); /* a kill frees it */
    dx_msg *reply = NULL;
    rc = dx_call(client, m, timeout_ms, &reply);
    if (rc == DX_OK && reply->tag == TAG_LEAD) {
        lead *l = dx_msg_take_ptr(reply);
        dx_msg_free(reply);
        dx_ptie *l_tie = dx_ptie_new(l, lead_free);
        rc = lead_call(client, l, req, deadline_ms, o, o_tie, out, err);
        dx_ptie_cut(l_tie);
        lead_free(l);
        return rc;
    }
    dx_ptie_cut(o_tie);
    outcome_free(o);
    if (rc != DX_OK)
        return rc;
    return take_answer(reply, out, err);
}

/* The call is a cast naming the caller and a monitor reference (creq), so
 * this process can run on_text for each TAG_SDELTA carrying that reference
 * while it waits for the reply, as dx_call would, or for the DOWN. */
int dx_lm_client_complete_stream(dx_pid client, const dx_lm_request *req,
                                 const dx_lm_client_call_opts *copts,
                                 int64_t timeout_ms, dx_lm_text_fn on_text,
                                 void *ud, dx_lm_result **out, dx_lm_error *err)
{
    if (!on_text)
        return dx_lm_client_complete_opt(client, req, copts, timeout_ms, out,
                                         err);
    dx_msg *m = NULL;
    int rc = complete_msg(req, copts, deadline_of(timeout_ms), out, err, &m);
    if (rc != DX_OK)
        return rc;
    dx_ref ref;
    rc = dx_monitor(client, &ref);
    if (rc != DX_OK) {
        dx_msg_free(m);
        return rc;
    }
    creq *c = m->ptr;
    c->stream = true;
    c->from = (dx_from){.pid = dx_self(), .ref = ref};
    rc = dx_cast(client, m);
    if (rc != DX_OK) {
        dx_demonitor(ref, true);
        return rc;
    }
    int64_t deadline = timeout_ms >= 0 ? dx_now_ms() + timeout_ms : -1;
    dx_match mt = {.fields = DX_MATCH_REF, .ref = ref};
    for (;;) {
        int64_t left = DX_INFINITY;
        if (deadline >= 0) {
            left = deadline - dx_now_ms();
            if (left < 0)
                left = 0;
        }
        dx_msg *in = NULL;
        rc = dx_receive(&mt, left, &in);
        if (rc != DX_OK) {
            dx_demonitor(ref, true);
            return rc;
        }
        if (in->tag == TAG_SDELTA) {
            const char *t = in->ptr;
            if (t)
                on_text(t, strlen(t), ud);
            dx_msg_free(in);
            continue;
        }
        if (in->tag == DX_TAG_DOWN) {
            rc = dx_is_atom(in->term, "noproc") ? DX_ENOPROC : DX_EDOWN;
            dx_msg_free(in);
            return rc;
        }
        dx_demonitor(ref, true);
        return take_answer(in, out, err);
    }
}

int dx_lm_client_stats_get(dx_pid client, dx_lm_client_stats *out)
{
    if (!out)
        return DX_EINVAL;
    dx_msg *m = dx_msg_new(TAG_STATS);
    if (!m)
        return DX_ENOMEM;
    dx_msg *reply = NULL;
    int rc = dx_call(client, m, 5000, &reply);
    if (rc != DX_OK)
        return rc;
    answer *a = reply->ptr;
    if (a)
        *out = a->stats;
    else
        rc = DX_ENOMEM;
    dx_msg_free(reply);
    return rc;
}

int dx_lm_client_usage(dx_pid client, dx_usage_acc *out)
{
    if (!out)
        return DX_EINVAL;
    dx_msg *m = dx_msg_new(TAG_USAGE);
    if (!m)
        return DX_ENOMEM;
    dx_msg *reply = NULL;
    int rc = dx_call(client, m, 5000, &reply);
    if (rc != DX_OK)
        return rc;
    answer *a = reply->ptr;
    if (a)
        *out = a->usage;
    else
        rc = DX_ENOMEM;
    dx_msg_free(reply);
    return rc;
}

int dx_lm_client_inspect_history(dx_pid client, size_t n, char **text_out)
{
    if (!text_out)
        return DX_EINVAL;
    *text_out = NULL;
    dx_msg *m = dx_msg_new(TAG_HISTORY);
    size_t *np = dx_malloc(sizeof *np);
    if (!m || !np) {
        dx_msg_free(m);
        dx_free(np);
        return DX_ENOMEM;
    }
    *np = n;
    m->ptr = np;
    m->ptr_free = dx_free;
    dx_msg *reply = NULL;
    int rc = dx_call(client, m, 5000, &reply);
    if (rc != DX_OK)
        return rc;
    answer *a = reply->ptr;
    rc = a ? a->rc : DX_ENOMEM;
    if (rc == DX_OK) {
        *text_out = a->text;
        a->text = NULL;
    }
    dx_msg_free(reply);
    return rc;
}

/* ---- supervision ------------------------------------------------------------ */

#define NAME_MAX_BYTES 255 /* the registry's limit (runtime.h) */

/* A deep copy of a client's options, for a child spec: the supervisor
 * passes it to every (re)start, long after the caller's opts are gone. */
typedef struct held_opts {
    dx_lm_client_opts opts;
    dx_lm_endpoint fallbacks[DX_LM_CLIENT_MAX_FALLBACKS];
    dx_retry_policy retry;
    dx_breaker_config breaker;
    dx_lmcache_limits cache_limits;
    dx_ratelimit_config ratelimit;
    const char *headers[DX_LM_CLIENT_MAX_HEADERS];
    dx_lm_endpoint_header endpoint_headers[DX_LM_CLIENT_MAX_HEADERS];
    char *name;
    /* Every string above, to free. */
    char *owned[3 * (1 + DX_LM_CLIENT_MAX_FALLBACKS) + 3 +
                2 * DX_LM_CLIENT_MAX_HEADERS];
    size_t n_owned;
    bool oom;
} held_opts;

static char *hold(held_opts *h, const char *str)
{
    if (!str)
        return NULL;
    char *d = dx_strdup(str);
    if (!d) {
        h->oom = true;
        return NULL;
    }
    h->owned[h->n_owned++] = d;
    return d;
}

static void held_free(held_opts *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n_owned; i++)
        dx_free(h->owned[i]);
    dx_free(h);
}

static dx_lm_endpoint hold_endpoint(held_opts *h, const dx_lm_endpoint *e)
{
    return (dx_lm_endpoint){hold(h, e->model), hold(h, e->base_url),
                            hold(h, e->api_key)};
}

/* The child spec's start function: arg is a held_opts. */
static int start_child(void *arg, void *extra, dx_pid *pid_out)
{
    (void)extra;
    const held_opts *h = arg;
    dx_server_opts so = {.link = true, .name = h->name, .trap_exit = true};
    return dx_lm_client_start(&h->opts, &so, pid_out);
}

int dx_lm_client_child_spec(dx_child_spec *spec, const char *id,
                            const dx_lm_client_opts *opts, const char *name)
{
    if (!spec)
        return DX_EINVAL;
    memset(spec, 0, sizeof *spec);
    if (!opts || !opts->primary.model ||
        opts->n_fallbacks > DX_LM_CLIENT_MAX_FALLBACKS ||
        (opts->n_fallbacks > 0 && !opts->fallbacks) || !headers_ok(opts) ||
        (name && strlen(name) > NAME_MAX_BYTES))
        return DX_EINVAL;
    held_opts *h = dx_calloc(1, sizeof *h);
    if (!h)
        return DX_ENOMEM;
    h->opts = *opts;
    h->opts.primary = hold_endpoint(h, &opts->primary);
    for (size_t i = 0; i < opts->n_fallbacks; i++)
        h->fallbacks[i] = hold_endpoint(h, &opts->fallbacks[i]);
    h->opts.fallbacks = opts->n_fallbacks > 0 ? h->fallbacks : NULL;
    if (opts->retry) {
        h->retry = *opts->retry;
        h->opts.retry = &h->retry;
    }
    if (opts->breaker) {
        h->breaker = *opts->breaker;
        h->opts.breaker = &h->breaker;
    }
    if (opts->cache_limits) {
        h->cache_limits = *opts->cache_limits;
        h->opts.cache_limits = &h->cache_limits;
    }
    if (opts->ratelimit) {
        h->ratelimit = *opts->ratelimit;
        h->opts.ratelimit = &h->ratelimit;
    }
    for (size_t i = 0; i < opts->n_headers; i++)
        h->headers[i] = hold(h, opts->headers[i]);
    h->opts.headers = opts->n_headers > 0 ? h->headers : NULL;
    for (size_t i = 0; i < opts->n_endpoint_headers; i++)
        h->endpoint_headers[i] =
            (dx_lm_endpoint_header){opts->endpoint_headers[i].endpoint,
                                    hold(h, opts->endpoint_headers[i].header)};
    h->opts.endpoint_headers =
        opts->n_endpoint_headers > 0 ? h->endpoint_headers : NULL;
    h->opts.cache_path = hold(h, opts->cache_path);
    h->opts.prices = hold(h, opts->prices);
    h->name = hold(h, name);
    if (h->oom) {
        held_free(h);
        return DX_ENOMEM;
    }
    spec->id = id;
    spec->start = start_child;
    spec->arg = h;
    spec->restart = DX_SUP_PERMANENT;
    spec->shutdown_ms = DX_SUP_SHUTDOWN_DEFAULT;
    spec->type = DX_SUP_WORKER;
    return DX_OK;
}

void dx_lm_client_child_spec_free(dx_child_spec *spec)
{
    if (!spec || !spec->arg)
        return;
    held_free(spec->arg);
    spec->arg = NULL;
}

int dx_lm_client_complete_named(const char *name, const dx_lm_request *req,
                                int64_t timeout_ms, dx_lm_result **out,
                                dx_lm_error *err)
{
    if (err)
        dx_lm_error_clear(err);
    if (out)
        *out = NULL;
    if (!name || !out)
        return DX_EINVAL;
    dx_pid pid = dx_whereis(name);
    if (dx_pid_is_none(pid))
        return DX_ENOPROC;
    return dx_lm_client_complete(pid, req, timeout_ms, out, err);
}
