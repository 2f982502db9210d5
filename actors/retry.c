/*
 * retry.c — the retry policy (retry.h): which errors are retried, the
 * jittered exponential backoff, Retry-After and the total deadline. Pure
 * arithmetic on caller-owned state.
 */
#include "dspex/retry.h"

#include <stddef.h>

void dx_retry_policy_default(dx_retry_policy *p)
{
    p->max_attempts = 3;
    p->initial_delay_ms = 500;
    p->max_delay_ms = 8000;
    p->jitter = 0.25;
    p->max_retry_after_ms = 60000;
    p->retry_malformed = false;
}

/* splitmix64: tiny, any seed (0 too) gives a good stream, and the state is
 * one word the caller can store. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void dx_retry_state_init(dx_retry_state *s, int64_t deadline_ms, uint64_t seed)
{
    s->attempts = 1;
    s->deadline_ms = deadline_ms;
    s->rng = seed;
    s->last_delay_ms = 0;
}

const char *dx_retry_reason_name(dx_retry_reason r)
{
    switch (r) {
    case DX_RETRY_BACKOFF:
        return "backoff";
    case DX_RETRY_AFTER:
        return "retry_after";
    case DX_RETRY_GIVE_UP_NOT_RETRYABLE:
        return "not_retryable";
    case DX_RETRY_GIVE_UP_EXHAUSTED:
        return "exhausted";
    case DX_RETRY_GIVE_UP_DEADLINE:
        return "deadline";
    case DX_RETRY_GIVE_UP_RETRY_AFTER:
        return "retry_after_too_long";
    }
    return "unknown";
}

bool dx_retry_is_retryable(const dx_retry_policy *p, const dx_lm_error *e)
{
    switch (e->kind) {
    case DX_LM_ERR_AUTH:
    case DX_LM_ERR_BAD_REQUEST:
    case DX_LM_ERR_NOT_FOUND:
    case DX_LM_ERR_CANCELLED:
    case DX_LM_ERR_NONE:
        /* The caller's fault or choice: the same request fails again. */
        return false;
    case DX_LM_ERR_MALFORMED_RESPONSE:
        /* An error status whose body did not decode is still judged by its
         * status (a proxy's HTML 502 is a server error). */
        if (e->status == 408 || e->status == 409 || e->status == 429 ||
            e->status >= 500)
            return true;
        return p->retry_malformed;
    default:
        return dx_lm_error_retryable(e->kind);
    }
}

static int64_t backoff_ms(const dx_retry_policy *p, dx_retry_state *s)
{
    int n = s->attempts - 1; /* retries already taken */
    int64_t d = p->initial_delay_ms > 0 ? p->initial_delay_ms : 0;
    for (int i = 0; i < n && d < p->max_delay_ms; i++)
        d *= 2;
    if (d > p->max_delay_ms)
        d = p->max_delay_ms;
    double j = p->jitter < 0 ? 0 : (p->jitter > 1 ? 1 : p->jitter);
    /* 53 random bits make a double in [0, 1). */
    double u = (double)(next_rand(&s->rng) >> 11) / 9007199254740992.0;
    return (int64_t)((double)d * (1.0 - j * u));
}

int64_t dx_retry_next_delay_ms(const dx_retry_policy *p, dx_retry_state *s,
                               const dx_lm_error *e, int64_t now_ms,
                               dx_retry_reason *why)
{
    dx_retry_reason r;
    int64_t delay = -1;
    uint64_t rng = s->rng;

    if (!dx_retry_is_retryable(p, e)) {
        r = DX_RETRY_GIVE_UP_NOT_RETRYABLE;
    } else if (s->attempts >= p->max_attempts) {
        r = DX_RETRY_GIVE_UP_EXHAUSTED;
    } else if (e->retry_after_ms > p->max_retry_after_ms) {
        r = DX_RETRY_GIVE_UP_RETRY_AFTER;
    } else {
        if (e->retry_after_ms > 0) {
            delay = e->retry_after_ms;
            r = DX_RETRY_AFTER;
        } else {
            delay = backoff_ms(p, s);
            r = DX_RETRY_BACKOFF;
        }
        if (s->deadline_ms > 0 && now_ms + delay >= s->deadline_ms) {
            delay = -1;
            r = DX_RETRY_GIVE_UP_DEADLINE;
        }
    }
    if (why)
        *why = r;
    if (delay < 0) {
        s->rng = rng; /* giving up leaves the state as it was */
        return -1;
    }
    s->attempts++;
    s->last_delay_ms = delay;
    return delay;
}
