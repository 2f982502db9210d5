/*
 * test_breaker.c — the circuit breaker: opens on the failure rate over the
 * window once the minimum calls are in, rejects fast while open, lets the
 * configured probes through half-open, closes or re-opens on their outcome,
 * and reports every transition in order. Time is passed in.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "dspex/breaker.h"
#include "dspex/error.h"
#include "dspex/provider.h"

#define MAX_EVENTS 16

typedef struct events {
    dx_breaker_event ev[MAX_EVENTS];
    dx_breaker_state seen_state[MAX_EVENTS];
    int n;
} events;

static void on_event(dx_breaker *b, const dx_breaker_event *ev, void *ud)
{
    events *e = ud;
    if (e->n < MAX_EVENTS) {
        e->ev[e->n] = *ev;
        e->seen_state[e->n] = dx_breaker_get_state(b);
        e->n++;
    }
}

/* window 10, min 5, threshold 0.5, open 1000 ms, 2 probes. */
static dx_breaker *make(events *evs)
{
    dx_breaker_config c;
    dx_breaker_config_default(&c);
    c.window = 10;
    c.min_calls = 5;
    c.failure_threshold = 0.5;
    c.open_ms = 1000;
    c.half_open_calls = 2;
    c.on_event = on_event;
    c.ud = evs;
    dx_breaker *b = NULL;
    cr_assert_eq(dx_breaker_new(&c, &b), DX_OK);
    return b;
}

static void call(dx_breaker *b, bool failure, int64_t now)
{
    cr_assert(dx_breaker_allow(b, now, NULL), "call at %lld rejected",
              (long long)now);
    dx_breaker_record(b, failure, now);
}

Test(breaker, rejects_invalid_configs, .timeout = 10)
{
    dx_breaker_config c;
    dx_breaker *b = (dx_breaker *)1;
    dx_breaker_config_default(&c);
    c.window = 0;
    cr_assert_eq(dx_breaker_new(&c, &b), DX_EINVAL);
    cr_assert_null(b);
    dx_breaker_config_default(&c);
    c.min_calls = c.window + 1;
    cr_assert_eq(dx_breaker_new(&c, &b), DX_EINVAL);
    dx_breaker_config_default(&c);
    c.failure_threshold = 0;
    cr_assert_eq(dx_breaker_new(&c, &b), DX_EINVAL);
    dx_breaker_config_default(&c);
    c.half_open_calls = 0;
    cr_assert_eq(dx_breaker_new(&c, &b), DX_EINVAL);
    dx_breaker_free(NULL);
}

Test(breaker, stays_closed_below_the_minimum_calls, .timeout = 10)
{
    events evs = {0};
    dx_breaker *b = make(&evs);
    for (int i = 0; i < 4; i++)
        call(b, true, i);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_CLOSED,
                 "4 failures of 4 are under min_calls 5");
    cr_assert_eq(evs.n, 0);
    call(b, true, 4);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_OPEN);
    cr_assert_eq(evs.n, 1);
    cr_assert_eq(evs.ev[0].from, DX_BREAKER_CLOSED);
    cr_assert_eq(evs.ev[0].to, DX_BREAKER_OPEN);
    cr_assert_eq(evs.ev[0].calls, 5);
    cr_assert_float_eq(evs.ev[0].failure_rate, 1.0, 1e-9);
    cr_assert_eq(evs.seen_state[0], DX_BREAKER_OPEN);
    dx_breaker_free(b);
}

Test(breaker, opens_at_the_threshold_rate_over_the_window, .timeout = 10)
{
    events evs = {0};
    dx_breaker *b = make(&evs);
    /* 6 successes then failures: 4 of 10 stays closed... */
    for (int i = 0; i < 6; i++)
        call(b, false, i);
    for (int i = 0; i < 4; i++)
        call(b, true, 10 + i);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_CLOSED);
    dx_breaker_stats s = dx_breaker_get_stats(b);
    cr_assert_eq(s.calls, 10);
    cr_assert_eq(s.failures, 4);
    /* ...the 5th failure pushes the oldest success out: 5 of 10 = 0.5. */
    call(b, true, 20);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_OPEN);
    cr_assert_eq(evs.n, 1);
    cr_assert_eq(evs.ev[0].calls, 10);
    cr_assert_float_eq(evs.ev[0].failure_rate, 0.5, 1e-9);
    cr_assert_eq(evs.ev[0].at_ms, 20);
    dx_breaker_free(b);
}

Test(breaker, old_failures_slide_out_of_the_window, .timeout = 10)
{
    events evs = {0};
    dx_breaker *b = make(&evs);
    for (int i = 0; i < 6; i++)
        call(b, false, i);
    for (int i = 0; i < 4; i++)
        call(b, true, 10 + i);
    for (int i = 0; i < 6; i++)
        call(b, false, 20 + i);
    /* The window is now F F F F S S S S S S; one more failure pushes the
     * oldest failure out, so it stays at 4 of 10. */
    call(b, true, 30);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_CLOSED);
    dx_breaker_stats s = dx_breaker_get_stats(b);
    cr_assert_eq(s.calls, 10);
    cr_assert_eq(s.failures, 4);
    cr_assert_float_eq(s.failure_rate, 0.4, 1e-9);
    cr_assert_eq(evs.n, 0);
    dx_breaker_free(b);
}

Test(breaker, open_rejects_fast_with_the_time_left, .timeout = 10)
{
    events evs = {0};
    dx_breaker *b = make(&evs);
    for (int i = 0; i < 5; i++)
        call(b, true, 100);
    int64_t wait = -1;
    cr_assert_not(dx_breaker_allow(b, 100, &wait));
    cr_assert_eq(wait, 1000);
    cr_assert_not(dx_breaker_allow(b, 850, &wait));
    cr_assert_eq(wait, 250);
    cr_assert_not(dx_breaker_allow(b, 1099, &wait));
    cr_assert_eq(wait, 1);
    /* A late result while open changes nothing. */
    dx_breaker_record(b, false, 1099);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_OPEN);
    dx_breaker_stats s = dx_breaker_get_stats(b);
    cr_assert_eq(s.rejected, 3);
    cr_assert_eq(s.opened, 1);
    dx_breaker_free(b);
}

Test(breaker, half_open_admits_only_the_probes_then_closes, .timeout = 10)
{
    events evs = {0};
    dx_breaker *b = make(&evs);
    for (int i = 0; i < 5; i++)
        call(b, true, 0);
    int64_t wait = -1;
    cr_assert(dx_breaker_allow(b, 1000, &wait), "open_ms elapsed: probe 1");
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_HALF_OPEN);
    cr_assert(dx_breaker_allow(b, 1001, NULL), "probe 2");
    cr_assert_not(dx_breaker_allow(b, 1002, &wait), "no third probe");
    cr_assert_eq(wait, 0);
    dx_breaker_record(b, false, 1010);
    /* While half open the stats count the probes, not the old window. */
    dx_breaker_stats st = dx_breaker_get_stats(b);
    cr_assert_eq(st.state, DX_BREAKER_HALF_OPEN);
    cr_assert_eq(st.calls, 1);
    cr_assert_eq(st.failures, 0);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_HALF_OPEN);
    dx_breaker_record(b, false, 1020);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_CLOSED);

    cr_assert_eq(evs.n, 3);
    cr_assert_eq(evs.ev[1].from, DX_BREAKER_OPEN);
    cr_assert_eq(evs.ev[1].to, DX_BREAKER_HALF_OPEN);
    cr_assert_eq(evs.ev[1].at_ms, 1000);
    cr_assert_eq(evs.ev[2].from, DX_BREAKER_HALF_OPEN);
    cr_assert_eq(evs.ev[2].to, DX_BREAKER_CLOSED);
    cr_assert_eq(evs.ev[2].calls, 2);
    cr_assert_float_eq(evs.ev[2].failure_rate, 0.0, 1e-9);

    /* Closed again with an empty window: 4 failures do not re-open. */
    for (int i = 0; i < 4; i++)
        call(b, true, 2000);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_CLOSED);
    dx_breaker_free(b);
}

Test(breaker, failed_probes_open_it_again, .timeout = 10)
{
    events evs = {0};
    dx_breaker *b = make(&evs);
    for (int i = 0; i < 5; i++)
        call(b, true, 0);
    call(b, false, 1000);
    call(b, true, 1001); /* 1 of 2 = 0.5: at the threshold */
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_OPEN);
    int64_t wait = -1;
    cr_assert_not(dx_breaker_allow(b, 1500, &wait));
    cr_assert_eq(wait, 501, "a new open period from the failed probe");

    const dx_breaker_state want[][2] = {
        {DX_BREAKER_CLOSED, DX_BREAKER_OPEN},
        {DX_BREAKER_OPEN, DX_BREAKER_HALF_OPEN},
        {DX_BREAKER_HALF_OPEN, DX_BREAKER_OPEN},
    };
    cr_assert_eq(evs.n, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(evs.ev[i].from, want[i][0], "event %d", i);
        cr_assert_eq(evs.ev[i].to, want[i][1], "event %d", i);
    }
    cr_assert_float_eq(evs.ev[2].failure_rate, 0.5, 1e-9);
    cr_assert_eq(dx_breaker_get_stats(b).opened, 2);
    dx_breaker_free(b);
}

Test(breaker, cancelled_probe_frees_its_slot, .timeout = 10)
{
    events evs = {0};
    dx_breaker *b = make(&evs);
    for (int i = 0; i < 5; i++)
        call(b, true, 0);
    cr_assert(dx_breaker_allow(b, 1000, NULL));
    cr_assert(dx_breaker_allow(b, 1000, NULL));
    cr_assert_not(dx_breaker_allow(b, 1000, NULL));
    dx_lm_error e;
    dx_lm_error_clear(&e);
    e.kind = DX_LM_ERR_CANCELLED;
    dx_breaker_record_error(b, &e, 1001);
    cr_assert(dx_breaker_allow(b, 1002, NULL), "the slot is free again");
    dx_breaker_free(b);
}

Test(breaker, only_endpoint_faults_count_as_failures_by_default, .timeout = 10)
{
    events evs = {0};
    dx_breaker *b = make(&evs);
    dx_lm_error e;
    dx_lm_error_clear(&e);
    const dx_lm_error_kind caller[] = {
        DX_LM_ERR_AUTH,         DX_LM_ERR_BAD_REQUEST,
        DX_LM_ERR_NOT_FOUND,    DX_LM_ERR_CONFLICT,
        DX_LM_ERR_RATE_LIMITED, DX_LM_ERR_MALFORMED_RESPONSE,
    };
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < sizeof caller / sizeof caller[0]; i++) {
            cr_assert(dx_breaker_allow(b, 0, NULL));
            e.kind = caller[i];
            dx_breaker_record_error(b, &e, 0);
        }
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_CLOSED);
    cr_assert_eq(dx_breaker_get_stats(b).failures, 0);

    const dx_lm_error_kind endpoint[] = {
        DX_LM_ERR_CONNECTION, DX_LM_ERR_TIMEOUT,      DX_LM_ERR_SERVER_ERROR,
        DX_LM_ERR_OVERLOADED, DX_LM_ERR_SERVER_ERROR,
    };
    for (size_t i = 0; i < sizeof endpoint / sizeof endpoint[0]; i++) {
        cr_assert(dx_breaker_allow(b, 0, NULL));
        e.kind = endpoint[i];
        dx_breaker_record_error(b, &e, 0);
    }
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_OPEN,
                 "5 endpoint failures in the last 10 calls");
    dx_breaker_free(b);
}

Test(breaker, failure_kinds_are_configurable, .timeout = 10)
{
    dx_breaker_config c;
    dx_breaker_config_default(&c);
    c.window = 4;
    c.min_calls = 2;
    c.failure_kinds = DX_BREAKER_KIND(DX_LM_ERR_RATE_LIMITED);
    dx_breaker *b = NULL;
    cr_assert_eq(dx_breaker_new(&c, &b), DX_OK);
    dx_lm_error e;
    dx_lm_error_clear(&e);
    e.kind = DX_LM_ERR_SERVER_ERROR;
    dx_breaker_record_error(b, &e, 0);
    dx_breaker_record_error(b, &e, 0);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_CLOSED);
    e.kind = DX_LM_ERR_RATE_LIMITED;
    dx_breaker_record_error(b, &e, 0);
    dx_breaker_record_error(b, &e, 0);
    cr_assert_eq(dx_breaker_get_state(b), DX_BREAKER_OPEN);
    cr_assert_str_eq(dx_breaker_state_name(DX_BREAKER_HALF_OPEN), "half_open");
    cr_assert_str_eq(dx_breaker_state_name(DX_BREAKER_OPEN), "open");
    cr_assert_str_eq(dx_breaker_state_name(DX_BREAKER_CLOSED), "closed");
    cr_assert_str_eq(dx_breaker_state_name((dx_breaker_state)42), "unknown");
    dx_breaker_free(b);
}
