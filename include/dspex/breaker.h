/*
 * breaker.h — a circuit breaker for one LM endpoint.
 *
 * Count-based sliding window, as resilience4j's: over the last `window`
 * recorded calls, once at least `min_calls` are in it, a failure rate at or
 * above `failure_threshold` opens the breaker. Open, it rejects every call
 * at once for `open_ms`; then it is half-open and lets `half_open_calls`
 * probes through. When all probes have reported, a failure rate below the
 * threshold closes it (with an empty window), otherwise it opens again for
 * another `open_ms`. Open → half-open happens in dx_breaker_allow when the
 * time has come (there is no timer).
 *
 * What counts as a failure is a set of error kinds. The default is the
 * endpoint's own trouble: connection, timeout, server_error and overloaded.
 * Not rate_limited: a 429 says the endpoint is up and our quota is spent;
 * the rate limiter and Retry-After pace that, and opening the breaker would
 * only add a second, blind wait. Not auth, bad_request, not_found, conflict
 * or malformed_response: the endpoint answered, and the fault is the
 * caller's (or the codec's); those record as successes. Cancelled calls are
 * not recorded at all (dx_breaker_record_error ignores them, freeing a
 * half-open probe slot).
 *
 * Every call that dx_breaker_allow let through must be recorded exactly once
 * (success, failure or ignored). Results arriving while open are dropped:
 * the window was emptied when it opened.
 *
 * State changes call the config's on_event synchronously, in order, from
 * inside allow/record. No I/O, no clock, no locks: one owning process passes
 * now_ms and owns the breaker.
 */
#ifndef DSPEX_BREAKER_H
#define DSPEX_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#include "export.h"
#include "provider.h"

typedef enum dx_breaker_state {
    DX_BREAKER_CLOSED,
    DX_BREAKER_OPEN,
    DX_BREAKER_HALF_OPEN,
} dx_breaker_state;

typedef struct dx_breaker dx_breaker;

/* A state change. failure_rate (0..1) and calls describe the window (or the
 * probes) that caused it; both are 0 for open → half-open. */
typedef struct dx_breaker_event {
    dx_breaker_state from;
    dx_breaker_state to;
    double failure_rate;
    uint32_t calls;
    int64_t at_ms;
} dx_breaker_event;

typedef void (*dx_breaker_event_fn)(dx_breaker *b, const dx_breaker_event *ev,
                                    void *ud);

#define DX_BREAKER_MAX_WINDOW 4096

/* Bit for an error kind in failure_kinds. */
#define DX_BREAKER_KIND(k) (1u << (unsigned)(k))

typedef struct dx_breaker_config {
    uint32_t window;          /* calls in the sliding window, 1..MAX_WINDOW */
    uint32_t min_calls;       /* calls needed before the rate counts */
    double failure_threshold; /* open at rate >= this, in (0, 1] */
    int64_t open_ms;          /* how long open rejects */
    uint32_t half_open_calls; /* probes allowed when half-open, >= 1 */
    uint32_t failure_kinds;   /* DX_BREAKER_KIND bits */
    dx_breaker_event_fn on_event; /* may be NULL */
    void *ud;
} dx_breaker_config;

/* window 20, min_calls 10, threshold 0.5, open 30,000 ms, 3 probes, failure
 * kinds connection|timeout|server_error|overloaded, no callback. */
DX_API void dx_breaker_config_default(dx_breaker_config *c);

/* New closed breaker (config copied). DX_OK with *out the caller's
 * (dx_breaker_free); DX_EINVAL for a config outside the ranges above;
 * DX_ENOMEM. */
DX_API int dx_breaker_new(const dx_breaker_config *c, dx_breaker **out);
DX_API void dx_breaker_free(dx_breaker *b);

/* May a call go now? true: go, and record its outcome later. false: reject
 * it; *wait_ms (may be NULL) is the time left open, or 0 when half-open with
 * all probes out (ask again after one reports). */
DX_API bool dx_breaker_allow(dx_breaker *b, int64_t now_ms, int64_t *wait_ms);

/* Record an allowed call's outcome. */
DX_API void dx_breaker_record(dx_breaker *b, bool failure, int64_t now_ms);

/* Record from an error (NULL or kind NONE = success), classified by the
 * config's failure_kinds; cancelled calls are not recorded. */
DX_API void dx_breaker_record_error(dx_breaker *b, const dx_lm_error *e,
                                    int64_t now_ms);

/* An allowed call that ended without an outcome (cancelled): frees its probe
 * slot if half-open, otherwise nothing. */
DX_API void dx_breaker_record_ignored(dx_breaker *b);

DX_API dx_breaker_state dx_breaker_get_state(const dx_breaker *b);
DX_API const char *dx_breaker_state_name(dx_breaker_state s);

typedef struct dx_breaker_stats {
    dx_breaker_state state;
    uint32_t calls;      /* in the window (or probes reported, half-open) */
    uint32_t failures;   /* of those */
    double failure_rate; /* failures / calls, 0 when no calls */
    uint64_t rejected;   /* calls refused since creation */
    uint64_t opened;     /* times it went to open */
} dx_breaker_stats;

DX_API dx_breaker_stats dx_breaker_get_stats(const dx_breaker *b);

#endif
