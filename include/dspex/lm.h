/*
 * lm.h — the LM client actor: one server process per configured model that
 * puts the cache, the circuit breakers, the retry policy and the fallback
 * models around dx_lm_call.
 *
 * The server never blocks its mailbox on an LM call. For each request it
 * looks in the cache (a hit is answered at once); otherwise it picks the
 * first endpoint (the primary model, then the fallbacks in order) whose
 * breaker lets a call through, and the upstream call — dx_lm_call with the
 * retry policy (dx_retry_next_delay_ms, sleeping between attempts) — is
 * made by the first caller itself, inside dx_lm_client_complete*, which
 * the server tells which endpoint to use and monitors (it "leads the
 * flight"; a stream's is made by a monitored worker process). The leader
 * reports the outcome back; if it dies, stops at its own deadline or never
 * got its lead, the callers who joined get a worker instead. A leader that
 * sees the client die cancels its call and returns DX_EDOWN. When the
 * retries on an endpoint are used up
 * (or the error is not retried) it reports the failure; the server records
 * it in that endpoint's breaker and, if the failure is one another endpoint
 * might not share, starts a worker on the next endpoint whose breaker
 * allows (the leader then waits for it like any caller). Fallback policy: only a retryable-kind error (dx_retry_is_retryable
 * with the client's policy: rate limits, overload, server errors, timeouts,
 * connection failures...) or an endpoint whose breaker is now open moves the
 * call on. auth, bad_request and not_found are the caller's fault — every
 * endpoint would refuse the same request the same way — so they are
 * answered at once with that error. A success is recorded, stored in the cache (under
 * the primary model's key, whichever endpoint answered) and replied to
 * every caller. Stopping the client kills its workers, cancelling their
 * transfers (leaders cancel theirs); callers still waiting get DX_EDOWN. Killing it (dx_kill, a
 * crash, dx_runtime_stop) does the same: the client's state is tied to
 * its process (dx_ptie), so when the server ends without terminating, its
 * state is freed and its workers ended as the process ends.
 *
 * Identical requests (same cache key) that arrive while one is in flight
 * wait on the same upstream call: one call, every caller gets a copy of
 * the answer. Per call (dx_lm_client_complete_opt) a caller may give a
 * cache namespace (a rollout id: the same request under another namespace
 * is a different key, so a fresh sample) and a cache mode: USE reads and
 * writes; BYPASS neither reads nor writes; REFRESH skips the read but
 * stores the fresh answer. BYPASS and REFRESH callers never join a flight
 * in progress, and USE callers never join theirs.
 *
 * Rate limiting (opts.ratelimit, a ratelimit.h limiter owned by the
 * server): admission happens in the server before a worker starts, once per
 * distinct request (its retries and fallbacks run under that one admission;
 * coalesced callers take none). A request the limiter refuses now waits in
 * the limiter's bounded FIFO with the caller's deadline (its timeout_ms); a
 * timer wakes the server when the head may go or a deadline passes. A
 * waiter past its deadline gets DX_ETIMEDOUT; a full queue (or a request
 * whose token estimate exceeds tpm) gets DX_ELIMIT at once. The slot is
 * released when the request ends, and the token charge corrected from the
 * estimate (prompt characters / 4 + max_tokens) to the response's usage.
 *
 * History, usage and telemetry: every finished distinct request is noted
 * once (coalesced callers share their flight's note) — a cache hit, an
 * answer, or a failure (an untyped one, such as an open breaker or the
 * limiter's refusal, as kind timeout for DX_ETIMEDOUT and cancelled
 * otherwise, its message naming the dspex code). The note is a
 * dx_lmhistory entry (the last opts.history_size), a dx_usage_acc count
 * (answered requests only: a cache hit as a cached call without tokens)
 * priced from opts.prices over the built-in defaults, and a telemetry
 * "lm.call" STOP or EXCEPTION (model, duration since the request arrived,
 * tokens of upstream answers, cache_hit, retries = attempts - 1, error
 * kind) sharing its ref with the START emitted when the request began (a
 * cache hit emits both at once). Events are emitted from the server
 * process, but for direct calls' STARTs.
 *
 * Direct calls: a plain call (not a stream) with cache mode BYPASS, to a
 * client with one endpoint, no rate limit and that endpoint's breaker
 * closed, has nothing to ask the client: no cache, no flight to join, no
 * admission, no endpoint to choose. dx_lm_client_complete_opt makes it in
 * the caller at once, with the client's retry policy and attempt timeout,
 * watching the client as a leader does, and reports it afterwards; the
 * client notes it in its history, usage, stats (`direct`) and breaker and
 * emits its STOP or EXCEPTION, whose START the caller emitted. The report
 * of an answer is not waited for; that of a provider's error is, so the
 * caller's next call already meets the breaker it may have opened. A
 * direct caller killed mid-call is noted as cancelled. Such calls are
 * counted in in_flight while under way and in requests once reported. A
 * caller done with its request once the call returns
 * (dx_lm_client_complete_giving) leaves the request's messages to the
 * history and shares the answer with it; other callers' are copied.
 */
#ifndef DSPEX_LM_H
#define DSPEX_LM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "breaker.h"
#include "export.h"
#include "lmcache.h"
#include "provider.h"
#include "ratelimit.h"
#include "retry.h"
#include "server.h"
#include "supervisor.h"
#include "usage.h"

#define DX_LM_CLIENT_MAX_FALLBACKS 8
#define DX_LM_CLIENT_MAX_HEADERS 32

/* An endpoint: a model string ("openai/gpt-4o-mini") with its base URL and
 * key (either may be NULL: the provider's defaults, see dx_lm_config_new). */
typedef struct dx_lm_endpoint {
    const char *model;
    const char *base_url;
    const char *api_key;
} dx_lm_endpoint;

/* A header for one endpoint only (dx_lm_client_opts.endpoint_headers): a
 * fallback provider's own key or beta flag, a primary gateway's route,
 * that the other endpoints must not be sent. */
typedef struct dx_lm_endpoint_header {
    size_t endpoint;    /* 0: the primary; k: fallbacks[k - 1] */
    const char *header; /* "Name: value", as dx_lm_config_add_header */
} dx_lm_endpoint_header;

/* Options of a client. Everything is copied by dx_lm_client_start. */
typedef struct dx_lm_client_opts {
    dx_lm_endpoint primary;
    /* Tried in order when the endpoint before fails with a retryable-kind
     * error (once its retries are used up) or its breaker is open; see the
     * fallback policy above. At most
     * DX_LM_CLIENT_MAX_FALLBACKS. */
    const dx_lm_endpoint *fallbacks;
    size_t n_fallbacks;
    /* NULL = dx_retry_policy_default. */
    const dx_retry_policy *retry;
    /* NULL = dx_breaker_config_default (one breaker per endpoint). Every
     * state change of every endpoint's breaker is emitted as a telemetry
     * event (kind DX_TELEMETRY_EVENT, name "lm.breaker", model = the
     * endpoint's model, state / from_state / failure_rate / calls from the
     * dx_breaker_event); then on_event, if set, is called with its ud. Both
     * run in the server process. */
    const dx_breaker_config *breaker;
    /* SQLite cache file; NULL = memory only. An unusable file is not an
     * error: the client caches in memory. */
    const char *cache_path;
    /* NULL = dx_lmcache defaults. */
    const dx_lmcache_limits *cache_limits;
    /* Per attempt (dx_lm_call_opts.timeout_ms); 0 = dx_lm_call's default. */
    int64_t attempt_timeout_ms;
    /* Seed of the retry jitter generator (a schedule replays from it). */
    uint64_t seed;
    /* NULL = unlimited. Copied; validated by dx_ratelimit_new. */
    const dx_ratelimit_config *ratelimit;
    /* Calls kept for dx_lm_client_inspect_history; 0 = 100, at most
     * DX_LMHISTORY_MAX_CAPACITY (else DX_EINVAL). */
    size_t history_size;
    /* JSON price overrides (dx_usage_prices_load_json) over the built-in
     * defaults; NULL = defaults. Bad JSON fails the start (DX_EINVAL). */
    const char *prices;
    /* The user's own headers, "Name: value", sent with every request to
     * every endpoint (a gateway's key or route; see
     * dx_lm_config_add_header, which each endpoint's config gets them
     * through: a header it refuses fails the start with DX_EINVAL). At
     * most DX_LM_CLIENT_MAX_HEADERS. */
    const char *const *headers;
    size_t n_headers;
    /* Headers for one endpoint each, sent to it after `headers` (so one of
     * the same name replaces the client's for that endpoint). An endpoint
     * number past the fallbacks, or a header the config refuses, fails the
     * start with DX_EINVAL. At most DX_LM_CLIENT_MAX_HEADERS in all. */
    const dx_lm_endpoint_header *endpoint_headers;
    size_t n_endpoint_headers;
} dx_lm_client_opts;

/* What a completed call gives back. Free with dx_lm_result_free. */
typedef struct dx_lm_result {
    dx_lm_response *response;
    /* The model string of the endpoint that answered; for a cache hit the
     * primary's (the cache is keyed by the primary model). */
    char *model_used;
    bool cached;  /* answered from the cache (no upstream call) */
    int attempts; /* upstream attempts made for this answer, all
                         endpoints; 0 when cached */
} dx_lm_result;

DX_API void dx_lm_result_free(dx_lm_result *r);

/* Start a client server. sopts may be NULL (not linked, not registered).
 * DX_OK: *pid is the server. DX_EINVAL (no primary model, too many
 * fallbacks, a bad policy/breaker/rate limit config); an endpoint that
 * dx_lm_config_new refuses fails the start with its code (DX_EINVAL,
 * DX_ENOENT, DX_ENOKEY); DX_ENOMEM. Process. */
DX_API int dx_lm_client_start(const dx_lm_client_opts *opts,
                              const dx_server_opts *sopts, dx_pid *pid);

/* Complete req (copied into the message; the caller keeps req) through the
 * client, waiting up to timeout_ms (DX_INFINITY = forever).
 *   DX_OK: *out is the caller's (dx_lm_result_free).
 *   DX_EPROVIDER: every endpoint failed; err (may be NULL) holds the last
 *     endpoint's error.
 *   DX_EOPEN: every endpoint's breaker is open; no call was made.
 *   DX_ETIMEDOUT: no answer in time (the work goes on; its answer is
 *     cached), or the request was still queued by the rate limiter at its
 *     deadline (then no work was done).
 *   DX_ELIMIT: the rate limiter's queue is full, or the request's token
 *     estimate exceeds the configured tpm.
 *   DX_ENOPROC / DX_EDOWN: the client is not alive / died.
 *   DX_EINVAL, DX_ENOMEM.
 * On any failure *out is NULL. Process. */
DX_API int dx_lm_client_complete(dx_pid client, const dx_lm_request *req,
                                 int64_t timeout_ms, dx_lm_result **out,
                                 dx_lm_error *err);

/* Per-call cache control. ns: the cache namespace (a rollout id); NULL or
 * "" = none. cache_mode: see the top of this file. */
typedef struct dx_lm_client_call_opts {
    const char *ns;
    dx_lmcache_mode cache_mode;
} dx_lm_client_call_opts;

/* dx_lm_client_complete with per-call options (copied; NULL = no namespace,
 * DX_LMCACHE_USE). Same results; DX_EINVAL for an unknown cache_mode. */
DX_API int dx_lm_client_complete_opt(dx_pid client, const dx_lm_request *req,
                                     const dx_lm_client_call_opts *copts,
                                     int64_t timeout_ms, dx_lm_result **out,
                                     dx_lm_error *err);

/* dx_lm_client_complete_opt for a caller done with req once the call
 * returns, which only reads the answer (Predict and ReAct are such
 * callers). On a call the client has nothing to add to (the cache
 * bypassed) its history keeps req's messages instead of a copy of them,
 * and shares the answer in *out instead of copying it. So req may come
 * back without its messages (n_messages 0): free it as usual; and the
 * answer is read-only: read it and free it (dx_lm_result_free), do not
 * change it. Same results otherwise. Process. */
DX_API int dx_lm_client_complete_giving(dx_pid client, dx_lm_request *req,
                                        const dx_lm_client_call_opts *copts,
                                        int64_t timeout_ms, dx_lm_result **out,
                                        dx_lm_error *err);

/* ---- streaming ------------------------------------------------------------
 *
 * A caller may ask for the answer's text as it arrives. The callback runs
 * in the calling process, inside dx_lm_client_complete_stream, once per
 * piece of text of choice 0, in order; the concatenation of what it got
 * equals the final response's text (choice 0) whenever the call succeeds.
 * The final reply is then returned as by dx_lm_client_complete_opt.
 *
 *   - A cache hit delivers the whole text as one piece.
 *   - The worker that makes the upstream call streams (request->stream on
 *     its copy; the cache key ignores it) and sends each text delta to the
 *     server, which forwards it to every streaming caller of that flight.
 *   - A streaming caller joining a flight in progress first gets the text
 *     so far as one piece, then the rest as it comes. A flight started by a
 *     non-streaming caller is not streamed: a streaming caller joining it
 *     gets the whole text as one piece when it ends.
 *   - Retries and fallbacks never duplicate text: once a delta of an
 *     attempt has been forwarded, that flight is not retried nor moved to
 *     another endpoint; a failure after it is the call's failure (before
 *     the first delta the retry policy and the fallbacks apply as usual).
 *   - Text deltas of a call that timed out on the caller's side stay in
 *     its mailbox tagged with the call's reference, like a late reply.
 */
typedef void (*dx_lm_text_fn)(const char *text, size_t len, void *ud);

/* dx_lm_client_complete_opt with on_text called for each piece of text as
 * described above (on_text may be NULL: then it is the plain call). Same
 * results and ownership; the callback is not called after the function
 * returns, and on a failure the text it got so far is all there is.
 * Process only (DX_ENOTPROC from a host thread). */
DX_API int dx_lm_client_complete_stream(dx_pid client, const dx_lm_request *req,
                                        const dx_lm_client_call_opts *copts,
                                        int64_t timeout_ms,
                                        dx_lm_text_fn on_text, void *ud,
                                        dx_lm_result **out, dx_lm_error *err);

/* The client's usage totals so far (its name is the primary model).
 * DX_OK, DX_EINVAL (NULL out), DX_ENOPROC, DX_ETIMEDOUT. Process. */
DX_API int dx_lm_client_usage(dx_pid client, dx_usage_acc *out);

/* The last n calls (all when 0) as dx_lmhistory_inspect text, oldest first:
 * *text_out is the caller's (dx_free). DX_OK, DX_EINVAL, DX_ENOMEM,
 * DX_ENOPROC, DX_ETIMEDOUT. Process. */
DX_API int dx_lm_client_inspect_history(dx_pid client, size_t n,
                                        char **text_out);

/* Counters of a client, for tests and introspection. */
typedef struct dx_lm_client_stats {
    uint64_t requests;   /* completes received */
    uint64_t cache_hits; /* answered from the cache */
    uint64_t coalesced;  /* joined an identical request in flight */
    /* upstream calls started, one per endpoint tried: by the caller that
     * leads its own flight, or by a worker process */
    uint64_t workers;
    uint64_t fallbacks;     /* times a later endpoint was tried */
    uint64_t failures;      /* completes answered with an error */
    uint64_t rate_waits;    /* requests that had to queue for the limiter */
    uint64_t rate_expired;  /* queued requests that reached their deadline */
    uint64_t rate_rejected; /* refused by the limiter (DX_ELIMIT) */
    uint64_t streamed;      /* upstream calls made streaming */
    /* workers or leading callers that died without reporting and were
     * replaced by a worker (once per request, never after streamed text
     * went out; a leader only when others joined its flight) */
    uint64_t worker_respawns;
    /* of the upstream calls, those made by the caller without asking the
     * client first (a plain call bypassing the cache, to a client with one
     * endpoint, no rate limit and its breaker closed); counted in requests
     * and workers when the caller reports them, after the call */
    uint64_t direct;
    size_t in_flight; /* distinct requests being worked on or queued */
    size_t queued;    /* of those, waiting for the limiter */
    /* Breaker state per endpoint, primary first (CLOSED past the last). */
    dx_breaker_state breakers[1 + DX_LM_CLIENT_MAX_FALLBACKS];
} dx_lm_client_stats;

/* Snapshot of the counters. DX_ENOPROC, DX_ETIMEDOUT. Process. */
DX_API int dx_lm_client_stats_get(dx_pid client, dx_lm_client_stats *out);

/* ---- a client under a supervisor ----------------------------------------
 *
 * Fill *spec so a supervisor (supervisor.h) starts the client as a child:
 * permanent, a worker, the default shutdown, with a start function that
 * runs dx_lm_client_start linked to the supervisor, trapping exits (so a
 * supervisor shutdown runs the client's terminate) and registered under
 * `name` (NULL: not registered). Callers find the current client with
 * dx_whereis(name) — or dx_lm_client_complete_named — so after a restart
 * they reach the new one; a call in flight when the client dies gets
 * DX_EDOWN (never a hang), and a restarted client with a cache_path
 * answers what the dead one stored.
 *
 * Ownership: spec->arg is a deep copy of opts and name, allocated here and
 * owned by the caller of this function. It must stay valid while any
 * supervisor holding the spec lives (each restart reads it), so free it
 * with dx_lm_client_child_spec_free only after that supervisor has exited
 * (or if it was never started). id is borrowed, as in dx_child_spec (the
 * supervisor copies it at start). The breaker's ud is copied as a pointer:
 * what it points to must outlive the supervisor too. Fields may be changed
 * after the call (restart, shutdown_ms, ...), except start and arg.
 *
 * DX_OK; DX_EINVAL (NULL spec or opts, no primary model, too many
 * fallbacks, a name longer than 255 bytes); DX_ENOMEM (*spec zeroed).
 * Whether the endpoints and configs are valid is found out at start, as
 * with dx_lm_client_start. Any thread. */
DX_API int dx_lm_client_child_spec(dx_child_spec *spec, const char *id,
                                   const dx_lm_client_opts *opts,
                                   const char *name);

/* Free the options copy held by a spec from dx_lm_client_child_spec and
 * clear spec->arg. NULL spec or arg: no-op. */
DX_API void dx_lm_client_child_spec_free(dx_child_spec *spec);

/* dx_lm_client_complete to the client registered under name, as it is at
 * the moment of the call. DX_ENOPROC when no process has that name (e.g.
 * while its supervisor restarts it); otherwise as dx_lm_client_complete.
 * Process. */
DX_API int dx_lm_client_complete_named(const char *name,
                                       const dx_lm_request *req,
                                       int64_t timeout_ms, dx_lm_result **out,
                                       dx_lm_error *err);

#endif
