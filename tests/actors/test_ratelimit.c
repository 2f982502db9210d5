/*
 * test_ratelimit.c — the admission limiter: RPM holds under a flood of 200
 * callers, TPM charges estimates and corrects them with real usage, the
 * concurrency cap, the queue bound, strict FIFO order and deadline expiry.
 * Time is passed in; the flood is simulated by jumping the clock to the
 * waits the limiter reports.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "dspex/error.h"
#include "dspex/ratelimit.h"

#define CALLERS 200

static dx_ratelimit *make(int64_t rpm, int64_t burst, int64_t tpm,
                          uint32_t conc, uint32_t waiters)
{
    dx_ratelimit_config c = {.rpm = rpm,
                             .rpm_burst = burst,
                             .tpm = tpm,
                             .max_concurrency = conc,
                             .max_waiters = waiters};
    dx_ratelimit *rl = NULL;
    cr_assert_eq(dx_ratelimit_new(&c, 0, &rl), DX_OK);
    return rl;
}

/* 200 callers arrive at t = 0: each tries to get in, the rest queue; then
 * the clock jumps to whenever the limiter says the head can go. Calls end
 * at once. Records start times and checks FIFO order. */
static void flood(dx_ratelimit *rl, int64_t *starts)
{
    static int ids[CALLERS];
    int n = 0, queued = 0;
    for (int i = 0; i < CALLERS; i++) {
        ids[i] = i;
        int64_t wait;
        int rc = dx_ratelimit_try_admit(rl, 0, 0, &wait);
        if (rc == DX_OK) {
            cr_assert_eq(queued, 0, "nobody overtakes a queued caller");
            starts[n++] = 0;
            dx_ratelimit_release(rl, 0, 0, 0);
        } else {
            cr_assert_eq(rc, DX_EBUSY);
            cr_assert_eq(dx_ratelimit_enqueue(rl, &ids[i], 0, 0), DX_OK);
            queued++;
        }
    }
    int64_t now = 0;
    while (n < CALLERS) {
        int64_t wait;
        int *w = dx_ratelimit_next_ready(rl, now, &wait);
        if (!w) {
            cr_assert_gt(wait, 0, "a non-empty queue reports a wait");
            now += wait;
            continue;
        }
        cr_assert_eq(*w, n, "FIFO: caller %d went as number %d", *w, n);
        starts[n++] = now;
        dx_ratelimit_release(rl, 0, 0, now);
    }
    cr_assert_null(dx_ratelimit_next_ready(rl, now, NULL));
}

/* Most call starts in any window [t, t + len) (starts are sorted). */
static int max_in_window(const int64_t *starts, int n, int64_t len)
{
    int best = 0;
    for (int i = 0, j = 0; i < n; i++) {
        while (starts[j] + len <= starts[i])
            j++;
        if (i - j + 1 > best)
            best = i - j + 1;
    }
    return best;
}

Test(ratelimit, rpm_with_burst_one_never_exceeds_the_limit_per_minute,
     .timeout = 20)
{
    dx_ratelimit *rl = make(60, 1, 0, 0, 256);
    static int64_t starts[CALLERS];
    flood(rl, starts);
    cr_assert_eq(max_in_window(starts, CALLERS, 60000), 60,
                 "exactly the limit in every full minute");
    cr_assert_eq(starts[CALLERS - 1], 199000, "and no slower than it");
    dx_ratelimit_free(rl);
}

Test(ratelimit, rpm_bucket_allows_a_burst_then_the_steady_rate, .timeout = 20)
{
    dx_ratelimit *rl = make(60, 0, 0, 0, 256);
    static int64_t starts[CALLERS];
    flood(rl, starts);
    cr_assert_eq(starts[59], 0, "a full bucket admits 60 at once");
    cr_assert_eq(starts[60], 1000, "then one per second");
    /* Bucket law: over [a, b) at most capacity + rate * (b - a). */
    for (int i = 0; i < CALLERS; i++)
        for (int j = i; j < CALLERS; j++)
            cr_assert_leq((int64_t)(j - i + 1),
                          60 + (starts[j] - starts[i]) / 1000, "calls %d..%d",
                          i, j);
    cr_assert_eq(max_in_window(starts, CALLERS, 60000), 119);
    dx_ratelimit_free(rl);
}

Test(ratelimit, tpm_charges_the_estimate_and_corrects_with_usage, .timeout = 10)
{
    dx_ratelimit *rl = make(0, 0, 1000, 0, 0);
    int64_t wait;
    cr_assert_eq(dx_ratelimit_try_admit(rl, 400, 0, &wait), DX_OK);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 400, 0, &wait), DX_OK);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 400, 0, &wait), DX_EBUSY);
    cr_assert_eq(wait, 12000, "200 tokens missing at 1000/min");

    /* The first call really used 900: the bucket goes to -300. */
    dx_ratelimit_release(rl, 400, 900, 0);
    cr_assert_float_eq(dx_ratelimit_get_stats(rl).tokens_available, -300.0,
                       1e-9);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 400, 0, &wait), DX_EBUSY);
    cr_assert_eq(wait, 42000, "700 tokens missing at 1000/min");

    /* The second used 100: 300 come back. */
    dx_ratelimit_release(rl, 400, 100, 0);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 400, 0, &wait), DX_EBUSY);
    cr_assert_eq(wait, 24000);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 400, 24000, &wait), DX_OK);
    cr_assert_float_eq(dx_ratelimit_get_stats(rl).tokens_available, 0.0, 1e-9);
    dx_ratelimit_free(rl);
}

Test(ratelimit, corrections_never_fill_past_capacity, .timeout = 10)
{
    dx_ratelimit *rl = make(0, 0, 1000, 0, 0);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 500, 0, NULL), DX_OK);
    dx_ratelimit_release(rl, 500, 0, 60000);
    cr_assert_float_eq(dx_ratelimit_get_stats(rl).tokens_available, 1000.0,
                       1e-9);
    dx_ratelimit_free(rl);
}

Test(ratelimit, estimate_above_tpm_can_never_be_admitted, .timeout = 10)
{
    dx_ratelimit *rl = make(0, 0, 1000, 0, 4);
    int dummy;
    cr_assert_eq(dx_ratelimit_try_admit(rl, 1001, 0, NULL), DX_ELIMIT);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &dummy, 1001, 0), DX_ELIMIT);
    cr_assert_eq(dx_ratelimit_try_admit(rl, -1, 0, NULL), DX_EINVAL);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 1000, 0, NULL), DX_OK);
    dx_ratelimit_free(rl);
}

Test(ratelimit, concurrency_cap_waits_for_a_release, .timeout = 10)
{
    dx_ratelimit *rl = make(0, 0, 0, 2, 4);
    int64_t wait = 0;
    cr_assert_eq(dx_ratelimit_try_admit(rl, 0, 0, NULL), DX_OK);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 0, 0, NULL), DX_OK);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 0, 5000, &wait), DX_EBUSY);
    cr_assert_eq(wait, -1, "only a release helps, not time");
    int a;
    cr_assert_eq(dx_ratelimit_enqueue(rl, &a, 0, 0), DX_OK);
    cr_assert_null(dx_ratelimit_next_ready(rl, 9000, &wait));
    cr_assert_eq(wait, -1);
    dx_ratelimit_release(rl, 0, -1, 9000);
    cr_assert_eq(dx_ratelimit_next_ready(rl, 9000, NULL), &a);
    cr_assert_eq(dx_ratelimit_get_stats(rl).in_flight, 2);
    dx_ratelimit_free(rl);
}

Test(ratelimit, queue_is_bounded, .timeout = 10)
{
    dx_ratelimit *rl = make(1, 0, 0, 0, 3);
    int w[4];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(dx_ratelimit_enqueue(rl, &w[i], 0, 0), DX_OK);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &w[3], 0, 0), DX_ELIMIT);
    cr_assert_eq(dx_ratelimit_get_stats(rl).queued, 3);
    cr_assert_eq(dx_ratelimit_enqueue(rl, NULL, 0, 0), DX_EINVAL);
    /* Leaving makes room again, and the ring wraps. */
    cr_assert_eq(dx_ratelimit_next_ready(rl, 0, NULL), &w[0]);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &w[3], 0, 0), DX_OK);
    int64_t now = 0;
    for (int i = 1; i < 4; i++) {
        int64_t wait;
        cr_assert_null(dx_ratelimit_next_ready(rl, now, &wait));
        cr_assert_eq(wait, 60000, "rpm 1: a minute between calls");
        now += wait;
        cr_assert_eq(dx_ratelimit_next_ready(rl, now, NULL), &w[i]);
    }
    dx_ratelimit_free(rl);

    rl = make(0, 0, 0, 0, 0);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &w[0], 0, 0), DX_ELIMIT,
                 "max_waiters 0: nobody may wait");
    dx_ratelimit_free(rl);
}

Test(ratelimit, a_small_request_does_not_overtake_a_big_head, .timeout = 10)
{
    dx_ratelimit *rl = make(0, 0, 1000, 0, 4);
    int big, small;
    cr_assert_eq(dx_ratelimit_try_admit(rl, 800, 0, NULL), DX_OK);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &big, 900, 0), DX_OK);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &small, 100, 0), DX_OK);
    int64_t wait;
    cr_assert_null(dx_ratelimit_next_ready(rl, 0, &wait),
                   "200 tokens would fit the small one, but it is second");
    cr_assert_eq(wait, 42000);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 100, 0, &wait), DX_EBUSY,
                 "a newcomer does not overtake the queue either");
    cr_assert_eq(wait, -1);
    cr_assert_eq(dx_ratelimit_next_ready(rl, 42000, NULL), &big);
    cr_assert_null(dx_ratelimit_next_ready(rl, 42000, &wait));
    cr_assert_eq(wait, 6000);
    cr_assert_eq(dx_ratelimit_next_ready(rl, 48000, NULL), &small);
    dx_ratelimit_free(rl);
}

typedef struct expired {
    void *w[8];
    int n;
} expired;

static void on_expire(dx_ratelimit *rl, void *w, void *ud)
{
    (void)rl;
    expired *e = ud;
    if (e->n < 8)
        e->w[e->n++] = w;
}

Test(ratelimit, waiters_past_their_deadline_are_removed_in_order, .timeout = 10)
{
    dx_ratelimit *rl = make(1, 0, 0, 0, 8);
    cr_assert_eq(dx_ratelimit_try_admit(rl, 0, 0, NULL), DX_OK);
    int a, b, c, d;
    cr_assert_eq(dx_ratelimit_enqueue(rl, &a, 0, 100), DX_OK);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &b, 0, 50), DX_OK);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &c, 0, 0), DX_OK);
    cr_assert_eq(dx_ratelimit_enqueue(rl, &d, 0, 60), DX_OK);
    cr_assert_eq(dx_ratelimit_next_deadline(rl), 50);

    expired e = {0};
    cr_assert_eq(dx_ratelimit_expire(rl, 49, on_expire, &e), 0);
    cr_assert_eq(dx_ratelimit_expire(rl, 60, on_expire, &e), 2);
    cr_assert_eq(e.n, 2);
    cr_assert_eq(e.w[0], &b);
    cr_assert_eq(e.w[1], &d);
    cr_assert_eq(dx_ratelimit_next_deadline(rl), 100);
    cr_assert_eq(dx_ratelimit_get_stats(rl).queued, 2);

    cr_assert_eq(dx_ratelimit_next_ready(rl, 60000, NULL), &a,
                 "the survivors keep their order");
    cr_assert_eq(dx_ratelimit_expire(rl, INT64_MAX, on_expire, &e), 0,
                 "a waiter without a deadline never expires");
    cr_assert_eq(dx_ratelimit_next_deadline(rl), -1);
    cr_assert_eq(dx_ratelimit_next_ready(rl, 120000, NULL), &c);
    dx_ratelimit_free(rl);
}

Test(ratelimit, rejects_invalid_configs, .timeout = 10)
{
    dx_ratelimit *rl = (dx_ratelimit *)1;
    dx_ratelimit_config c = {.rpm = 10, .rpm_burst = 11};
    cr_assert_eq(dx_ratelimit_new(&c, 0, &rl), DX_EINVAL);
    cr_assert_null(rl);
    c = (dx_ratelimit_config){.tpm = -1};
    cr_assert_eq(dx_ratelimit_new(&c, 0, &rl), DX_EINVAL);
    c = (dx_ratelimit_config){.rpm = DX_RATELIMIT_MAX + 1};
    cr_assert_eq(dx_ratelimit_new(&c, 0, &rl), DX_EINVAL);
    dx_ratelimit_free(NULL);
}

Test(ratelimit, unlimited_admits_everyone, .timeout = 10)
{
    dx_ratelimit *rl = make(0, 0, 0, 0, 0);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(dx_ratelimit_try_admit(rl, 1000000, 0, NULL), DX_OK);
    cr_assert_eq(dx_ratelimit_get_stats(rl).in_flight, 1000);
    dx_ratelimit_free(rl);
}
