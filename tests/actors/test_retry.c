/*
 * test_retry.c — the retry policy: which errors are retried, the backoff
 * schedule and its jitter bounds, Retry-After honoured and capped, the total
 * deadline, replay from a seed. Time is passed in; nothing sleeps.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "dspex/provider.h"
#include "dspex/retry.h"

static dx_lm_error err_of(dx_lm_error_kind kind, int status,
                          int64_t retry_after_ms)
{
    dx_lm_error e;
    dx_lm_error_clear(&e);
    e.kind = kind;
    e.status = status;
    e.retry_after_ms = retry_after_ms;
    return e;
}

Test(retry, defaults_match_the_official_sdks, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    cr_assert_eq(p.max_attempts, 3);
    cr_assert_eq(p.initial_delay_ms, 500);
    cr_assert_eq(p.max_delay_ms, 8000);
    cr_assert_float_eq(p.jitter, 0.25, 1e-12);
    cr_assert_eq(p.max_retry_after_ms, 60000);
}

Test(retry, default_schedule_is_two_retries_within_jitter_bounds, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    for (uint64_t seed = 0; seed < 200; seed++) {
        dx_retry_state s;
        dx_retry_state_init(&s, 0, seed);
        dx_lm_error e = err_of(DX_LM_ERR_SERVER_ERROR, 500, -1);
        dx_retry_reason why;
        int64_t d1 = dx_retry_next_delay_ms(&p, &s, &e, 0, &why);
        cr_assert_eq(why, DX_RETRY_BACKOFF);
        cr_assert(d1 >= 375 && d1 <= 500, "first delay %lld", (long long)d1);
        int64_t d2 = dx_retry_next_delay_ms(&p, &s, &e, d1, &why);
        cr_assert(d2 >= 750 && d2 <= 1000, "second delay %lld", (long long)d2);
        cr_assert_eq(s.attempts, 3);
        cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, d1 + d2, &why), -1);
        cr_assert_eq(why, DX_RETRY_GIVE_UP_EXHAUSTED);
        cr_assert_eq(s.attempts, 3, "giving up must not count an attempt");
    }
}

Test(retry, backoff_doubles_and_caps_at_max_delay, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    p.jitter = 0;
    p.max_attempts = 8;
    const int64_t want[] = {500, 1000, 2000, 4000, 8000, 8000, 8000};
    dx_retry_state s;
    dx_retry_state_init(&s, 0, 1);
    dx_lm_error e = err_of(DX_LM_ERR_CONNECTION, 0, -1);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 0, NULL), want[i],
                     "retry %zu", i);
    cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 0, NULL), -1);
}

Test(retry, jitter_spreads_delays_and_replays_from_the_seed, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    dx_lm_error e = err_of(DX_LM_ERR_TIMEOUT, 0, -1);
    int64_t lo = 1000, hi = 0;
    for (uint64_t seed = 0; seed < 100; seed++) {
        dx_retry_state a, b;
        dx_retry_state_init(&a, 0, seed);
        dx_retry_state_init(&b, 0, seed);
        int64_t da = dx_retry_next_delay_ms(&p, &a, &e, 0, NULL);
        int64_t db = dx_retry_next_delay_ms(&p, &b, &e, 0, NULL);
        cr_assert_eq(da, db, "same seed, same delay");
        lo = da < lo ? da : lo;
        hi = da > hi ? da : hi;
    }
    /* 100 draws of 0.75..1.0 x 500 ms cover most of the range. */
    cr_assert(lo < 400 && hi > 475, "jitter range %lld..%lld", (long long)lo,
              (long long)hi);
}

Test(retry, retryable_statuses_and_kinds_are_retried, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    const struct {
        dx_lm_error_kind kind;
        int status;
    } yes[] = {
        {DX_LM_ERR_TIMEOUT, 408},
        {DX_LM_ERR_CONFLICT, 409},
        {DX_LM_ERR_RATE_LIMITED, 429},
        {DX_LM_ERR_SERVER_ERROR, 500},
        {DX_LM_ERR_OVERLOADED, 503},
        {DX_LM_ERR_OVERLOADED, 529},
        {DX_LM_ERR_TIMEOUT, 0},
        {DX_LM_ERR_CONNECTION, 0},
        {DX_LM_ERR_MALFORMED_RESPONSE, 502},
    };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        dx_retry_state s;
        dx_retry_state_init(&s, 0, 7);
        dx_lm_error e = err_of(yes[i].kind, yes[i].status, -1);
        dx_retry_reason why;
        cr_assert_geq(dx_retry_next_delay_ms(&p, &s, &e, 0, &why), 0,
                      "case %zu should retry", i);
        cr_assert_eq(why, DX_RETRY_BACKOFF);
    }
}

Test(retry, caller_errors_stop_at_once, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    const struct {
        dx_lm_error_kind kind;
        int status;
    } no[] = {
        {DX_LM_ERR_AUTH, 401},
        {DX_LM_ERR_AUTH, 403},
        {DX_LM_ERR_BAD_REQUEST, 400},
        {DX_LM_ERR_BAD_REQUEST, 422},
        {DX_LM_ERR_NOT_FOUND, 404},
        {DX_LM_ERR_CANCELLED, 0},
        {DX_LM_ERR_MALFORMED_RESPONSE, 200},
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        dx_retry_state s;
        dx_retry_state_init(&s, 0, 7);
        dx_lm_error e = err_of(no[i].kind, no[i].status, 5000);
        dx_retry_reason why = DX_RETRY_BACKOFF;
        cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 0, &why), -1,
                     "case %zu should not retry", i);
        cr_assert_eq(why, DX_RETRY_GIVE_UP_NOT_RETRYABLE);
        cr_assert_eq(s.attempts, 1);
    }
    p.retry_malformed = true;
    dx_retry_state s;
    dx_retry_state_init(&s, 0, 7);
    dx_lm_error e = err_of(DX_LM_ERR_MALFORMED_RESPONSE, 200, -1);
    cr_assert_geq(dx_retry_next_delay_ms(&p, &s, &e, 0, NULL), 0,
                  "retry_malformed turns malformed 2xx retries on");
}

Test(retry, retry_after_is_used_exactly_without_jitter, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    dx_retry_state s;
    dx_retry_state_init(&s, 0, 3);
    dx_lm_error e = err_of(DX_LM_ERR_RATE_LIMITED, 429, 12345);
    dx_retry_reason why;
    cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 0, &why), 12345);
    cr_assert_eq(why, DX_RETRY_AFTER);
    e.retry_after_ms = 60000; /* the cap itself is honoured */
    cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 0, &why), 60000);
    cr_assert_eq(why, DX_RETRY_AFTER);
}

Test(retry, retry_after_above_the_cap_gives_up, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    dx_retry_state s;
    dx_retry_state_init(&s, 0, 3);
    dx_lm_error e = err_of(DX_LM_ERR_RATE_LIMITED, 429, 60001);
    dx_retry_reason why;
    cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 0, &why), -1);
    cr_assert_eq(why, DX_RETRY_GIVE_UP_RETRY_AFTER);
    p.max_retry_after_ms = 120000; /* OpenAI's bound, if configured */
    cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 0, &why), 60001);
    cr_assert_eq(why, DX_RETRY_AFTER);
}

Test(retry, zero_or_absent_retry_after_falls_back_to_backoff, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    int64_t vals[] = {0, -1};
    for (size_t i = 0; i < 2; i++) {
        dx_retry_state s;
        dx_retry_state_init(&s, 0, 9);
        dx_lm_error e = err_of(DX_LM_ERR_OVERLOADED, 529, vals[i]);
        dx_retry_reason why;
        int64_t d = dx_retry_next_delay_ms(&p, &s, &e, 0, &why);
        cr_assert(d >= 375 && d <= 500);
        cr_assert_eq(why, DX_RETRY_BACKOFF);
    }
}

Test(retry, no_retry_starts_at_or_past_the_deadline, .timeout = 10)
{
    dx_retry_policy p;
    dx_retry_policy_default(&p);
    p.jitter = 0;
    dx_lm_error e = err_of(DX_LM_ERR_SERVER_ERROR, 500, -1);
    dx_retry_reason why;

    dx_retry_state s;
    dx_retry_state_init(&s, 10500, 1);
    cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 10000, &why), -1,
                 "10000 + 500 reaches the deadline");
    cr_assert_eq(why, DX_RETRY_GIVE_UP_DEADLINE);
    cr_assert_eq(s.attempts, 1);
    cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 9999, &why), 500);
    cr_assert_eq(why, DX_RETRY_BACKOFF);

    dx_retry_state_init(&s, 20000, 1);
    e = err_of(DX_LM_ERR_RATE_LIMITED, 429, 30000);
    cr_assert_eq(dx_retry_next_delay_ms(&p, &s, &e, 0, &why), -1,
                 "a Retry-After past the deadline is not waited for");
    cr_assert_eq(why, DX_RETRY_GIVE_UP_DEADLINE);
}

Test(retry, reason_names_are_stable, .timeout = 10)
{
    cr_assert_str_eq(dx_retry_reason_name(DX_RETRY_BACKOFF), "backoff");
    cr_assert_str_eq(dx_retry_reason_name(DX_RETRY_GIVE_UP_DEADLINE),
                     "deadline");
    cr_assert_str_eq(dx_retry_reason_name(DX_RETRY_AFTER), "retry_after");
    cr_assert_str_eq(dx_retry_reason_name(DX_RETRY_GIVE_UP_NOT_RETRYABLE),
                     "not_retryable");
    cr_assert_str_eq(dx_retry_reason_name(DX_RETRY_GIVE_UP_EXHAUSTED),
                     "exhausted");
    cr_assert_str_eq(dx_retry_reason_name(DX_RETRY_GIVE_UP_RETRY_AFTER),
                     "retry_after_too_long");
    cr_assert_str_eq(dx_retry_reason_name((dx_retry_reason)99), "unknown");
}
