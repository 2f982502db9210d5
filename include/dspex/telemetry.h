/*
 * telemetry.h — events about LM calls (and anything else) that any process
 * can subscribe to.
 *
 * An event is a fixed-size struct (strings are truncated, never allocated)
 * saying that something named like "lm.call" started, stopped or failed
 * (or, kind EVENT, just happened: "lm.breaker"), with its model, duration,
 * tokens, cache hit, retries, error kind and a correlation reference.
 * dx_telemetry_emit copies it to every subscriber whose prefix the name
 * starts with, as a message tagged DX_TELEMETRY_TAG whose ptr is a
 * dx_telemetry_event (freed with the message).
 *
 * Events from one emitter reach a subscriber in the order emitted.
 * Subscribers that have died are dropped when an emit finds them gone.
 *
 * Threads: every function may be called from any thread (processes and
 * host threads); the subscriber table is guarded by a mutex.
 */
#ifndef DSPEX_TELEMETRY_H
#define DSPEX_TELEMETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "export.h"
#include "provider.h"
#include "term.h"

/* Tag of the messages subscribers receive (a user tag, so >= 0). */
#define DX_TELEMETRY_TAG 0x74656c65
/* Subscriptions held at once (all processes together). */
#define DX_TELEMETRY_MAX_SUBSCRIBERS 64
/* Longest prefix, and the size of the event's string fields. */
#define DX_TELEMETRY_NAME_MAX 64
#define DX_TELEMETRY_MODEL_MAX 128

typedef enum dx_telemetry_kind {
    DX_TELEMETRY_START,
    DX_TELEMETRY_STOP,
    DX_TELEMETRY_EXCEPTION,
    /* Something happened at one moment, with no start to pair with (e.g.
     * "lm.breaker", a circuit breaker changing state). */
    DX_TELEMETRY_EVENT,
} dx_telemetry_kind;

typedef struct dx_telemetry_event {
    dx_telemetry_kind kind;
    char name[DX_TELEMETRY_NAME_MAX];   /* e.g. "lm.call" */
    char model[DX_TELEMETRY_MODEL_MAX]; /* "" when not about a model */
    int64_t duration_us;                /* STOP / EXCEPTION */
    int64_t input_tokens;
    int64_t output_tokens;
    bool cache_hit;
    int retries;
    dx_lm_error_kind error_kind; /* EXCEPTION; DX_LM_ERR_NONE otherwise */
    dx_ref ref;                  /* ties a start to its stop/exception */
    /* "lm.breaker" (kind EVENT): the endpoint's breaker went from
     * from_state to state (dx_breaker_state values, breaker.h);
     * failure_rate (0..1) and calls describe the window or probes that
     * caused it (both 0 for open -> half-open). 0 for other events. */
    int state;
    int from_state;
    double failure_rate;
    uint32_t calls;
    /* "optimize.trial" / "optimize.best": the trial's id (a candidate
     * seed, a train example index) and its score (percent); model holds
     * the optimizer's name. 0 for other events. */
    int64_t trial;
    double score;
} dx_telemetry_event;

/* Set e->name and e->model from strings (truncated to fit; model may be
 * NULL for ""). */
DX_API void dx_telemetry_event_set(dx_telemetry_event *e,
                                   dx_telemetry_kind kind, const char *name,
                                   const char *model);

/* Subscribe `subscriber` to events whose name starts with prefix ("" for
 * all; copied). DX_OK; DX_EINVAL (no pid, NULL prefix, prefix of
 * DX_TELEMETRY_NAME_MAX bytes or more); DX_EEXIST (same pid and prefix
 * already subscribed); DX_ELIMIT (table full, after dropping dead
 * subscribers); DX_ENOPROC (subscriber is not alive); DX_ESTATE (runtime
 * not running). */
DX_API int dx_telemetry_subscribe(dx_pid subscriber, const char *prefix);

/* Remove subscriber's subscription to prefix, or all of its subscriptions
 * when prefix is NULL. DX_OK, DX_ENOENT (nothing matched), DX_EINVAL (no
 * pid). Messages already sent stay in the mailbox. */
DX_API int dx_telemetry_unsubscribe(dx_pid subscriber, const char *prefix);

/* Send a copy of *e to each matching subscriber (one message per
 * subscription). Subscribers found dead are removed. DX_OK (also with no
 * subscribers), DX_EINVAL (NULL e), DX_ESTATE (runtime not running),
 * DX_ENOMEM (some subscribers may then have missed the event). */
DX_API int dx_telemetry_emit(const dx_telemetry_event *e);

/* Number of subscriptions held (dead ones not yet dropped included); a
 * lock-free read, so an emitter can skip building an event nobody gets. */
DX_API int dx_telemetry_count(void);

/* Drop every subscription. Pids are only unique within one run of the
 * runtime, so call this after dx_runtime_stop when the runtime will be
 * started again in the same OS process. */
DX_API void dx_telemetry_reset(void);

#endif
