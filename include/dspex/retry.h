/*
 * retry.h — when and after how long a failed LM call is tried again.
 *
 * The policy of the official OpenAI and Anthropic SDKs, as a pure function of
 * the error, the attempts made so far and the time: retry conflict (409),
 * rate_limited (429), overloaded (503/529), server_error (other 5xx), timeout
 * (408 and transport timeouts) and connection failures; never auth,
 * bad_request, not_found or cancelled; malformed_response only when the
 * policy says so (default no: a 2xx body the codec cannot read is usually the
 * same on the next try, and retrying hides the bug). The wait is
 * min(initial * 2^n, max) * (1 - jitter * U[0,1)) with n the retries already
 * taken (0.5 s, 1 s, 2 s ... 8 s, 0.75..1x), unless the server sent
 * Retry-After.
 *
 * Retry-After: a value in (0, max_retry_after_ms] (default 60 s, Anthropic's
 * bound) is used as the wait, exactly, without jitter: the server said when.
 * A larger value ends the retries (OpenAI's rule, reason
 * DX_RETRY_GIVE_UP_RETRY_AFTER): the server is telling us the quota is gone
 * for a long while, and failing fast lets the client try a fallback model
 * instead of burning attempts on guesses the server already refused. Zero or
 * absent (-1) falls back to the backoff.
 *
 * A total deadline bounds everything: a retry that would start at or after
 * it is not scheduled.
 *
 * No I/O, no clock, no locks: the owning process passes now_ms and owns the
 * state. Randomness comes from a per-state generator seeded by the caller,
 * so a schedule replays from its seed.
 */
#ifndef DSPEX_RETRY_H
#define DSPEX_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "export.h"
#include "provider.h"

typedef struct dx_retry_policy {
    int max_attempts;           /* total, the first included; 1 = no retry */
    int64_t initial_delay_ms;   /* backoff for the first retry */
    int64_t max_delay_ms;       /* backoff cap (before jitter) */
    double jitter;              /* 0..1: delay scaled by 1 - jitter*U[0,1) */
    int64_t max_retry_after_ms; /* larger Retry-After values give up */
    bool retry_malformed;       /* retry malformed_response too */
} dx_retry_policy;

/* The SDK defaults: 3 attempts, 500 ms doubling to 8,000 ms, jitter 0.25,
 * Retry-After honoured up to 60,000 ms, malformed responses not retried. */
DX_API void dx_retry_policy_default(dx_retry_policy *p);

/* One logical call's progress. Fill with dx_retry_state_init; fields may be
 * read (attempts for an x-stainless-retry-count style header, history). */
typedef struct dx_retry_state {
    int attempts;        /* attempts started so far (1 after init) */
    int64_t deadline_ms; /* absolute, same clock as now_ms; 0 = none */
    uint64_t rng;        /* generator state; seeded by init */
    int64_t last_delay_ms;
} dx_retry_state;

/* Start a call: attempts = 1 (the first attempt is under way), the given
 * absolute deadline (0 = none) and the generator seeded from seed (any value,
 * 0 included). */
DX_API void dx_retry_state_init(dx_retry_state *s, int64_t deadline_ms,
                                uint64_t seed);

typedef enum dx_retry_reason {
    DX_RETRY_BACKOFF,               /* retry after the jittered backoff */
    DX_RETRY_AFTER,                 /* retry after the server's Retry-After */
    DX_RETRY_GIVE_UP_NOT_RETRYABLE, /* the error kind is never retried */
    DX_RETRY_GIVE_UP_EXHAUSTED,     /* max_attempts reached */
    DX_RETRY_GIVE_UP_DEADLINE,      /* the retry would start at/after it */
    DX_RETRY_GIVE_UP_RETRY_AFTER,   /* Retry-After above max_retry_after_ms */
} dx_retry_reason;

/* "backoff", "retry_after", "not_retryable", "exhausted", "deadline",
 * "retry_after_too_long"; "unknown" otherwise. Static string. */
DX_API const char *dx_retry_reason_name(dx_retry_reason r);

/* Whether the policy retries error e at all (kind, or HTTP status 408, 409,
 * 429 or >= 500 when the kind alone would not). */
DX_API bool dx_retry_is_retryable(const dx_retry_policy *p,
                                  const dx_lm_error *e);

/* The attempt that just failed with e: how long to wait before the next one.
 * Returns the delay in ms (>= 0) and counts the new attempt in s->attempts;
 * or -1 to give up, leaving s unchanged. *why (may be NULL) says which. */
DX_API int64_t dx_retry_next_delay_ms(const dx_retry_policy *p,
                                      dx_retry_state *s, const dx_lm_error *e,
                                      int64_t now_ms, dx_retry_reason *why);

#endif
