/*
 * ratelimit.h — admission control for one LM endpoint: requests per minute,
 * tokens per minute, calls in flight, and a bounded FIFO of callers waiting
 * for their turn.
 *
 * RPM and TPM are token buckets refilled continuously (limit/60,000 per ms),
 * the way providers count, each holding at most its capacity: rpm_burst
 * requests (default rpm) and tpm tokens. A bucket starts full. So over any
 * interval of length T at most capacity + limit * T / 60 s calls start: a
 * full bucket allows a burst of `capacity` and then one call per 60 s/limit.
 * With rpm_burst = 1 no 60-second window ever holds more than rpm starts;
 * with the default (rpm) a window right after an idle spell can hold up to
 * 2 * rpm - 1, matching a provider bucket of the same size.
 *
 * Tokens are charged with the caller's estimate at admission and corrected
 * with the real usage at release; a correction upward may drive the bucket
 * below zero, which delays the next calls until it has refilled.
 *
 * Waiters are opaque pointers the limiter never dereferences or frees. The
 * queue is strictly FIFO: while anyone waits, dx_ratelimit_try_admit admits
 * no one, and only the head can leave by dx_ratelimit_next_ready.
 *
 * Arithmetic is exact: levels are kept in limit-milliseconds (one request
 * = 60,000 units, refill = limit units per ms), so there is no rounding.
 *
 * No I/O, no clock, no locks: one owning process passes now_ms (never
 * decreasing; an earlier value refills nothing) and owns the limiter.
 */
#ifndef DSPEX_RATELIMIT_H
#define DSPEX_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "export.h"

typedef struct dx_ratelimit dx_ratelimit;

/* Largest rpm, tpm or token count accepted (keeps the arithmetic in range). */
#define DX_RATELIMIT_MAX 1000000000000LL

typedef struct dx_ratelimit_config {
    int64_t rpm;              /* requests per minute; 0 = no limit */
    int64_t rpm_burst;        /* RPM bucket capacity in requests; 0 = rpm */
    int64_t tpm;              /* tokens per minute; 0 = no limit */
    uint32_t max_concurrency; /* calls in flight; 0 = no limit */
    uint32_t max_waiters;     /* queue bound; 0 = callers cannot wait */
} dx_ratelimit_config;

/* A limiter with full buckets at now_ms (config copied). DX_OK with *out
 * the caller's (dx_ratelimit_free); DX_EINVAL for negative values, limits
 * above DX_RATELIMIT_MAX or rpm_burst > rpm; DX_ENOMEM. */
DX_API int dx_ratelimit_new(const dx_ratelimit_config *c, int64_t now_ms,
                            dx_ratelimit **out);
/* Frees the limiter; waiters still queued are forgotten, not touched (drain
 * them first with dx_ratelimit_expire(rl, INT64_MAX, ...)). NULL: no-op. */
DX_API void dx_ratelimit_free(dx_ratelimit *rl);

/* Admit a call estimated at est_tokens (>= 0) now, if nobody is queued and
 * the buckets and the concurrency cap allow. DX_OK: one request and
 * est_tokens are charged and a concurrency slot is taken; release it with
 * dx_ratelimit_release. DX_EBUSY: not now; *wait_ms (may be NULL) is the
 * time until the buckets would allow it, or -1 when it waits on a release
 * (concurrency cap) or on waiters ahead (enqueue it). DX_ELIMIT: est_tokens
 * exceeds tpm, so it can never be admitted. DX_EINVAL: est_tokens out of
 * range. Nothing is charged unless DX_OK. */
DX_API int dx_ratelimit_try_admit(dx_ratelimit *rl, int64_t est_tokens,
                                  int64_t now_ms, int64_t *wait_ms);

/* An admitted call ended: free its concurrency slot and correct the token
 * charge from est_tokens to actual_tokens (< 0: unknown, keep the estimate).
 * The bucket never rises above its capacity but may fall below zero. */
DX_API void dx_ratelimit_release(dx_ratelimit *rl, int64_t est_tokens,
                                 int64_t actual_tokens, int64_t now_ms);

/* Queue a waiter (non-NULL) at the tail. deadline_ms is absolute; <= 0 for
 * none. DX_OK; DX_ELIMIT when the queue is full or est_tokens exceeds tpm;
 * DX_EINVAL for a NULL waiter or est_tokens out of range. */
DX_API int dx_ratelimit_enqueue(dx_ratelimit *rl, void *waiter,
                                int64_t est_tokens, int64_t deadline_ms);

/* If the head waiter can be admitted now, admit it (charged as by
 * try_admit) and return it; otherwise NULL, with *wait_ms (may be NULL)
 * the time until the head could go, or -1 when the queue is empty or the
 * head waits on a release. Never returns a waiter behind the head. Call it
 * again until NULL: several may be ready. Does not look at deadlines. */
DX_API void *dx_ratelimit_next_ready(dx_ratelimit *rl, int64_t now_ms,
                                     int64_t *wait_ms);

typedef void (*dx_ratelimit_expire_fn)(dx_ratelimit *rl, void *waiter,
                                       void *ud);

/* Remove every waiter whose deadline is <= now_ms, calling fn (may be NULL)
 * for each in queue order; the others keep their order. Returns how many
 * were removed. fn must not call into the limiter. */
DX_API size_t dx_ratelimit_expire(dx_ratelimit *rl, int64_t now_ms,
                                  dx_ratelimit_expire_fn fn, void *ud);

/* Earliest deadline among the waiters, or -1 when none has one. */
DX_API int64_t dx_ratelimit_next_deadline(const dx_ratelimit *rl);

typedef struct dx_ratelimit_stats {
    uint32_t in_flight;
    size_t queued;
    double requests_available; /* RPM bucket level; 0 if unlimited */
    double tokens_available;   /* TPM bucket level (may be < 0) */
} dx_ratelimit_stats;

/* Levels as of the last call that refilled them (try_admit, release,
 * next_ready). */
DX_API dx_ratelimit_stats dx_ratelimit_get_stats(const dx_ratelimit *rl);

#endif
