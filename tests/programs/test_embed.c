/*
 * test_embed.c — the embedding API (embed.h) as a host program uses it:
 * asynchronous calls from many host threads, each callback exactly once
 * with its own answer; crashes, deadlines and cancels reported through the
 * callback; callbacks on the host's libuv loop thread; shutdown draining
 * what finishes in time and cancelling the rest; application trees with an
 * LM client on the sim model.
 *
 * Most tests call an "Echo" module written in C (no LM): it sleeps
 * inputs.sleep_ms, crashes when inputs.crash is set, and answers
 * echo = inputs.n, so timing and failures are under the test's control.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <uv.h>

#include "dspex/embed.h"
#include "dspex/io.h"
#include "dspex/lm.h"
#include "dspex/program.h"
#include "dx_config.h"
#include "lm_fixture.h"

#define MAX_CALLS 256

/* This suite starts its runtime through the embedding and needs only
 * crash_now and host_sleep_ms from the shared fixture. */
__attribute__((unused)) static void (*const unused_fixture[])(void) = {
    fixture_setup, fixture_teardown};

static volatile unsigned long spin_turns;

static int echo_forward(dx_ctx *ctx, const dx_module *self,
                        const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)self;
    int64_t ms = (int64_t)dx_example_get_num(in, "sleep_ms", 0);
    if (ms > 0)
        dx_sleep(ms);
    if (ms < 0)
        for (;;)
            spin_turns++; /* an endless loop that never calls the runtime */
    if (dx_example_has(in, "crash"))
        crash_now();
    *out = dx_prediction_new();
    if (!*out)
        return DX_ENOMEM;
    return dx_example_set_int(dx_prediction_fields_mut(*out), "echo",
                              (int64_t)dx_example_get_num(in, "n", -1));
}

static dx_module *echo_module(void)
{
    dx_module *m = dx_module_new("Echo", echo_forward, NULL, NULL, NULL);
    cr_assert_not_null(m);
    return m;
}

static dx_example *echo_inputs(int n, int sleep_ms, bool crash)
{
    dx_example *in = dx_example_new();
    cr_assert_not_null(in);
    cr_assert_eq(dx_example_set_int(in, "n", n), DX_OK);
    cr_assert_eq(dx_example_set_int(in, "sleep_ms", sleep_ms), DX_OK);
    if (crash)
        cr_assert_eq(dx_example_set_bool(in, "crash", true), DX_OK);
    return in;
}

/* What the callbacks saw, per call index (ud = &record->slot[i]). */
typedef struct slot {
    struct record *rec;
    int n;
    atomic_int calls;
    atomic_int rc;
    atomic_int echo;
    char diag[DX_DIAG_MAX];
    bool on_loop; /* ran on the loop thread */
} slot;

typedef struct record {
    slot slot[MAX_CALLS];
    atomic_int total;
    atomic_int mismatches;
    pthread_t loop_thread;
    uv_loop_t *loop;
    int stop_at; /* uv_stop once this many callbacks ran (loop tests) */
    dx_embed *e;
    dx_module *m;
    atomic_int call_while_closing; /* rc of a call made from a callback */
    atomic_int shutdown_from_cb;   /* rc of a shutdown from a callback */
} record;

static record *record_new(void)
{
    record *r = dx_calloc(1, sizeof *r);
    cr_assert_not_null(r);
    for (int i = 0; i < MAX_CALLS; i++) {
        r->slot[i].rec = r;
        r->slot[i].n = i;
        atomic_init(&r->slot[i].rc, 1);
        atomic_init(&r->slot[i].echo, -1);
    }
    atomic_init(&r->call_while_closing, 1);
    atomic_init(&r->shutdown_from_cb, 1);
    return r;
}

static void on_done(dx_embed_call *call, int rc, dx_prediction *pred,
                    const dx_diag *diag, void *ud)
{
    (void)call;
    slot *s = ud;
    record *r = s->rec;
    atomic_fetch_add(&s->calls, 1);
    atomic_store(&s->rc, rc);
    snprintf(s->diag, sizeof s->diag, "%s", diag->msg);
    if (rc == DX_OK) {
        int echo =
            (int)dx_example_get_num(dx_prediction_fields(pred), "echo", -2);
        atomic_store(&s->echo, echo);
        if (echo != s->n)
            atomic_fetch_add(&r->mismatches, 1);
    } else if (pred) {
        atomic_fetch_add(&r->mismatches, 1); /* failures carry no pred */
    }
    dx_prediction_free(pred);
    if (r->loop) {
        s->on_loop = pthread_equal(pthread_self(), r->loop_thread);
        if (r->e && dx_pid_is_none(dx_self())) {
            dx_example *in = echo_inputs(0, 0, false);
            atomic_store(&r->call_while_closing,
                         dx_embed_call_async(r->e, r->m, in, NULL, on_done,
                                             &r->slot[MAX_CALLS - 1], NULL));
            dx_example_free(in);
            atomic_store(&r->shutdown_from_cb,
                         dx_embed_shutdown(r->e, 0, NULL));
        }
    }
    if (atomic_fetch_add(&r->total, 1) + 1 == r->stop_at && r->loop)
        uv_stop(r->loop);
}

static dx_embed *embed_new_on(int schedulers, size_t max_calls)
{
    dx_embed *e = NULL;
    dx_runtime_opts ro = {.schedulers = schedulers};
    dx_embed_opts o = {.runtime = &ro, .max_calls = max_calls};
    cr_assert_eq(dx_embed_start(&o, &e), DX_OK);
    cr_assert(dx_runtime_running());
    return e;
}

static dx_embed *embed_new(size_t max_calls)
{
    return embed_new_on(2, max_calls);
}

static int call(dx_embed *e, const dx_module *m, record *r, int i, int sleep_ms,
                bool crash, int64_t timeout_ms, dx_embed_call **out)
{
    dx_example *in = echo_inputs(i, sleep_ms, crash);
    dx_call_opts o = {.timeout_ms = timeout_ms};
    int rc = dx_embed_call_async(e, m, in, &o, on_done, &r->slot[i], out);
    dx_example_free(in); /* copied by the call */
    return rc;
}

TestSuite(embed, .timeout = 60);

/* ---- many host threads ------------------------------------------------ */

#define THREADS 4
#define PER_THREAD 40

typedef struct submitter {
    dx_embed *e;
    const dx_module *m;
    record *r;
    int first;
    int failures;
} submitter;

static void *submit_and_wait(void *arg)
{
    submitter *s = arg;
    dx_embed_call *calls[PER_THREAD];
    for (int i = 0; i < PER_THREAD; i++)
        if (call(s->e, s->m, s->r, s->first + i, i % 4, false, 0, &calls[i]) !=
            DX_OK)
            s->failures++;
    /* Wait in reverse order: a handle's wait does not depend on order. */
    for (int i = PER_THREAD; i-- > 0;) {
        if (dx_embed_call_wait(calls[i], 20000) != DX_OK)
            s->failures++;
        /* The callback has returned: its record is complete. */
        if (atomic_load(&s->r->slot[s->first + i].calls) != 1)
            s->failures++;
        dx_embed_call_release(calls[i]);
    }
    return NULL;
}

Test(embed, calls_from_many_host_threads_each_complete_once_with_own_answer)
{
    dx_embed *e = embed_new(0);
    dx_module *m = echo_module();
    record *r = record_new();
    pthread_t th[THREADS];
    submitter sub[THREADS];
    for (int t = 0; t < THREADS; t++) {
        sub[t] = (submitter){.e = e, .m = m, .r = r, .first = t * PER_THREAD};
        cr_assert_eq(pthread_create(&th[t], NULL, submit_and_wait, &sub[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        cr_expect_eq(sub[t].failures, 0, "thread %d: %d failures", t,
                     sub[t].failures);
    }
    for (int i = 0; i < THREADS * PER_THREAD; i++) {
        cr_expect_eq(atomic_load(&r->slot[i].calls), 1, "call %d ran %d", i,
                     atomic_load(&r->slot[i].calls));
        cr_expect_eq(atomic_load(&r->slot[i].rc), DX_OK, "call %d: %s", i,
                     r->slot[i].diag);
        cr_expect_eq(atomic_load(&r->slot[i].echo), i);
    }
    cr_expect_eq(atomic_load(&r->mismatches), 0);
    cr_expect_eq(dx_embed_in_flight(e), 0);
    dx_embed_report rep;
    cr_assert_eq(dx_embed_shutdown(e, 1000, &rep), DX_OK);
    cr_expect_eq(rep.drained, 0);
    cr_expect_eq(rep.cancelled, 0);
    cr_expect(!dx_runtime_running(), "the embedding started it, so stops it");
    dx_module_free(m);
    dx_free(r);
}

/* ---- failures through the callback -------------------------------------- */

Test(embed, crashing_program_reports_edown_and_the_next_call_works)
{
    dx_embed *e = embed_new(0);
    dx_module *m = echo_module();
    record *r = record_new();
    dx_embed_call *c = NULL;
    cr_assert_eq(call(e, m, r, 0, 0, true, 0, &c), DX_OK);
    cr_assert_eq(dx_embed_call_wait(c, 20000), DX_OK);
    dx_embed_call_release(c);
    cr_expect_eq(atomic_load(&r->slot[0].rc), DX_EDOWN, "%s",
                 dx_err_name(atomic_load(&r->slot[0].rc)));
    cr_expect(strstr(r->slot[0].diag, "died") != NULL, "%s", r->slot[0].diag);
    cr_expect(strstr(r->slot[0].diag, "Echo") != NULL, "%s", r->slot[0].diag);

    cr_assert_eq(call(e, m, r, 1, 0, false, 0, &c), DX_OK);
    cr_assert_eq(dx_embed_call_wait(c, 20000), DX_OK);
    dx_embed_call_release(c);
    cr_expect_eq(atomic_load(&r->slot[1].rc), DX_OK, "%s", r->slot[1].diag);
    cr_expect_eq(atomic_load(&r->slot[1].echo), 1);
    cr_expect_eq(atomic_load(&r->slot[0].calls), 1);
    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    dx_module_free(m);
    dx_free(r);
}

Test(embed, deadline_passed_ends_the_call_with_etimedout)
{
    dx_embed *e = embed_new(0);
    dx_module *m = echo_module();
    record *r = record_new();
    dx_embed_call *c = NULL;
    cr_assert_eq(call(e, m, r, 0, 30000, false, 100, &c), DX_OK);
    cr_assert_eq(dx_embed_call_wait(c, 20000), DX_OK);
    dx_embed_call_release(c);
    cr_expect_eq(atomic_load(&r->slot[0].rc), DX_ETIMEDOUT, "%s",
                 dx_err_name(atomic_load(&r->slot[0].rc)));
    cr_expect(strstr(r->slot[0].diag, "no result within 100 ms") != NULL, "%s",
              r->slot[0].diag);
    cr_expect_eq(atomic_load(&r->slot[0].calls), 1);
    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    dx_module_free(m);
    dx_free(r);
}

/* On one scheduler the call's watcher shares it with the program, so a
 * program in an endless loop keeps the watcher from running to enforce the
 * deadline: the runtime's own deadline for the program's process stops
 * it, and the call still ends with DX_ETIMEDOUT. */
Test(embed, a_program_looping_on_the_watchers_scheduler_ends_with_etimedout)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("fault isolation is off under ThreadSanitizer");
    dx_embed *e = embed_new_on(1, 0);
    dx_module *m = echo_module();
    record *r = record_new();
    dx_embed_call *c = NULL;
    cr_assert_eq(call(e, m, r, 0, -1, false, 100, &c), DX_OK);
    cr_assert_eq(dx_embed_call_wait(c, 20000), DX_OK);
    dx_embed_call_release(c);
    cr_expect_eq(atomic_load(&r->slot[0].rc), DX_ETIMEDOUT, "%s",
                 dx_err_name(atomic_load(&r->slot[0].rc)));
    cr_expect(strstr(r->slot[0].diag, "no result within 100 ms") != NULL, "%s",
              r->slot[0].diag);
    cr_assert_eq(call(e, m, r, 1, 0, false, 0, &c), DX_OK);
    cr_assert_eq(dx_embed_call_wait(c, 20000), DX_OK);
    dx_embed_call_release(c);
    cr_expect_eq(atomic_load(&r->slot[1].rc), DX_OK, "%s", r->slot[1].diag);
    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    dx_module_free(m);
    dx_free(r);
}

Test(embed, cancel_ends_a_running_call_and_a_finished_one_is_enoent)
{
    dx_embed *e = embed_new(0);
    dx_module *m = echo_module();
    record *r = record_new();
    dx_embed_call *c = NULL;
    cr_assert_eq(call(e, m, r, 0, 30000, false, 0, &c), DX_OK);
    cr_expect_eq(dx_embed_call_wait(c, 50), DX_ETIMEDOUT);
    cr_assert_eq(dx_embed_call_cancel(c), DX_OK);
    cr_assert_eq(dx_embed_call_wait(c, 20000), DX_OK);
    cr_expect_eq(atomic_load(&r->slot[0].rc), DX_ECANCELED, "%s",
                 dx_err_name(atomic_load(&r->slot[0].rc)));
    cr_expect_eq(dx_embed_call_cancel(c), DX_ENOENT);
    dx_embed_call_release(c);
    cr_expect_eq(atomic_load(&r->slot[0].calls), 1);
    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    dx_module_free(m);
    dx_free(r);
}

/* ---- shutdown ------------------------------------------------------------ */

Test(embed, shutdown_drains_calls_that_finish_in_time_and_cancels_the_rest)
{
    dx_embed *e = embed_new(0);
    dx_module *m = echo_module();
    record *r = record_new();
    for (int i = 0; i < 3; i++)
        cr_assert_eq(call(e, m, r, i, 50, false, 0, NULL), DX_OK);
    for (int i = 3; i < 6; i++)
        cr_assert_eq(call(e, m, r, i, 60000, false, 0, NULL), DX_OK);
    cr_expect_eq(dx_embed_in_flight(e), 6);
    dx_embed_report rep;
    cr_assert_eq(dx_embed_shutdown(e, 1000, &rep), DX_OK);
    for (int i = 0; i < 6; i++) {
        cr_expect_eq(atomic_load(&r->slot[i].calls), 1, "call %d ran %d", i,
                     atomic_load(&r->slot[i].calls));
        cr_expect_eq(atomic_load(&r->slot[i].rc), i < 3 ? DX_OK : DX_ECANCELED,
                     "call %d: %s (%s)", i,
                     dx_err_name(atomic_load(&r->slot[i].rc)), r->slot[i].diag);
    }
    cr_expect_eq(rep.drained, 3);
    cr_expect_eq(rep.cancelled, 3);
    cr_expect(!dx_runtime_running());
    dx_module_free(m);
    dx_free(r);
}

Test(embed, the_limit_refuses_calls_and_their_callbacks_never_run)
{
    dx_embed *e = embed_new(2);
    dx_module *m = echo_module();
    record *r = record_new();
    cr_assert_eq(call(e, m, r, 0, 60000, false, 0, NULL), DX_OK);
    cr_assert_eq(call(e, m, r, 1, 60000, false, 0, NULL), DX_OK);
    dx_embed_call *c = (dx_embed_call *)&c; /* must be cleared */
    cr_expect_eq(call(e, m, r, 2, 0, false, 0, &c), DX_ELIMIT);
    cr_expect_null(c);
    cr_expect_eq(
        dx_embed_call_async(e, m, NULL, NULL, on_done, &r->slot[3], NULL),
        DX_EINVAL);
    dx_example *in = echo_inputs(4, 0, false);
    cr_expect_eq(dx_embed_call_async(e, m, in, NULL, NULL, NULL, NULL),
                 DX_EINVAL);
    dx_example_free(in);
    dx_embed_report rep;
    cr_assert_eq(dx_embed_shutdown(e, 0, &rep), DX_OK);
    cr_expect_eq(rep.cancelled, 2);
    cr_expect_eq(atomic_load(&r->total), 2);
    for (int i = 2; i < 5; i++)
        cr_expect_eq(atomic_load(&r->slot[i].calls), 0);
    dx_module_free(m);
    dx_free(r);
}

Test(embed, a_runtime_started_by_the_host_keeps_running_after_shutdown)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    dx_embed *e = NULL;
    cr_assert_eq(dx_embed_start(NULL, &e), DX_OK);
    dx_module *m = echo_module();
    dx_example *in = echo_inputs(7, 0, false);
    dx_prediction *p = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_embed_call_sync(e, m, in, NULL, &p, &d), DX_OK, "%s",
                 d.msg);
    cr_expect_eq(dx_example_get_num(dx_prediction_fields(p), "echo", -1), 7);
    dx_prediction_free(p);
    dx_example_free(in);

    in = echo_inputs(8, 0, true);
    cr_expect_eq(dx_embed_call_sync(e, m, in, NULL, &p, &d), DX_EDOWN);
    cr_expect_null(p);
    cr_expect(strstr(d.msg, "died") != NULL, "%s", d.msg);
    dx_example_free(in);

    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    cr_expect(dx_runtime_running());
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_module_free(m);
}

/* ---- races ---------------------------------------------------------------- */

typedef struct canceller {
    dx_embed *e;
    const dx_module *m;
    record *r;
    int first;
    int failures;
} canceller;

/* Start calls and cancel each at once, racing its start and its end. */
static void *submit_and_cancel(void *arg)
{
    canceller *s = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        dx_embed_call *c = NULL;
        if (call(s->e, s->m, s->r, s->first + i, i % 3, false, 0, &c) !=
            DX_OK) {
            s->failures++;
            continue;
        }
        int rc = dx_embed_call_cancel(c);
        if (rc != DX_OK && rc != DX_ENOENT)
            s->failures++;
        if (dx_embed_call_wait(c, 20000) != DX_OK)
            s->failures++;
        dx_embed_call_release(c);
    }
    return NULL;
}

Test(embed, cancels_racing_starts_and_ends_still_call_back_exactly_once)
{
    dx_embed *e = embed_new(0);
    dx_module *m = echo_module();
    record *r = record_new();
    pthread_t th[2];
    canceller cs[2];
    for (int t = 0; t < 2; t++) {
        cs[t] = (canceller){.e = e, .m = m, .r = r, .first = t * PER_THREAD};
        cr_assert_eq(pthread_create(&th[t], NULL, submit_and_cancel, &cs[t]),
                     0);
    }
    for (int t = 0; t < 2; t++) {
        pthread_join(th[t], NULL);
        cr_expect_eq(cs[t].failures, 0);
    }
    for (int i = 0; i < 2 * PER_THREAD; i++) {
        int rc = atomic_load(&r->slot[i].rc);
        cr_expect_eq(atomic_load(&r->slot[i].calls), 1, "call %d ran %d", i,
                     atomic_load(&r->slot[i].calls));
        cr_expect(rc == DX_OK || rc == DX_ECANCELED, "call %d: %s", i,
                  dx_err_name(rc));
        if (rc == DX_OK)
            cr_expect_eq(atomic_load(&r->slot[i].echo), i);
    }
    cr_expect_eq(atomic_load(&r->mismatches), 0);
    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    dx_module_free(m);
    dx_free(r);
}

Test(embed, runtime_stopped_under_calls_still_calls_back_with_ecanceled)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    dx_embed *e = NULL;
    cr_assert_eq(dx_embed_start(NULL, &e), DX_OK);
    dx_module *m = echo_module();
    record *r = record_new();
    dx_embed_call *c = NULL;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(call(e, m, r, i, 60000, false, 0, i == 0 ? &c : NULL),
                     DX_OK);
    cr_expect_eq(dx_embed_call_wait(c, 50), DX_ETIMEDOUT);
    /* The host stops the runtime itself, with the calls in flight. */
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    cr_assert_eq(dx_embed_call_wait(c, 20000), DX_OK);
    dx_embed_call_release(c);
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(atomic_load(&r->slot[i].calls), 1);
        cr_expect_eq(atomic_load(&r->slot[i].rc), DX_ECANCELED, "%s",
                     r->slot[i].diag);
    }
    /* The watcher or the program may hear of the stop first; either way
     * the diag says so. */
    cr_expect(strstr(r->slot[0].diag, "runtime stopped") != NULL, "%s",
              r->slot[0].diag);
    cr_expect_eq(dx_embed_in_flight(e), 0);
    dx_example *in = echo_inputs(9, 0, false);
    cr_expect_eq(
        dx_embed_call_async(e, m, in, NULL, on_done, &r->slot[9], NULL),
        DX_ESTATE);
    dx_example_free(in);
    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    dx_module_free(m);
    dx_free(r);
}

/* ---- out of memory -------------------------------------------------------- */

/* Fails the Nth allocation made on the thread that armed it, so the
 * runtime's own threads keep working while the host's calls fail. */
static _Thread_local bool oom_armed;
static _Thread_local long oom_at, oom_count;

static bool oom_now(void)
{
    return oom_armed && oom_count++ == oom_at;
}

static void *oom_malloc(size_t size, void *ud)
{
    (void)ud;
    return oom_now() ? NULL : malloc(size);
}

static void *oom_realloc(void *p, size_t size, void *ud)
{
    (void)ud;
    return oom_now() ? NULL : realloc(p, size);
}

static void oom_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const dx_allocator oom_allocator = {oom_malloc, oom_realloc, oom_free,
                                           NULL};

static void oom_arm(long at)
{
    oom_at = at;
    oom_count = 0;
    oom_armed = true;
}

Test(embed, out_of_memory_fails_cleanly_and_never_calls_back)
{
    dx_set_allocator(&oom_allocator);
    /* Starting: every failure leaves nothing running. */
    dx_embed *e = NULL;
    int rc = DX_ENOMEM;
    long at;
    for (at = 0; at < 100000 && rc != DX_OK; at++) {
        oom_arm(at);
        rc = dx_embed_start(NULL, &e);
        oom_armed = false;
        if (rc != DX_OK) {
            cr_assert(rc == DX_ENOMEM || rc == DX_ESYS, "%s", dx_err_name(rc));
            cr_assert_null(e);
            cr_assert(!dx_runtime_running());
        }
    }
    cr_assert_eq(rc, DX_OK);
    cr_expect_gt(at, 1, "the start allocates, so some start failed");

    dx_module *m = echo_module();
    record *r = record_new();
    /* The runtime aborts when it cannot grow a run queue (not recoverable,
     * docs/internals/runtime.md): grow the queues first, with a burst. */
    for (int i = 1; i <= 64; i++)
        cr_assert_eq(call(e, m, r, i, 0, false, 0, NULL), DX_OK);
    while (dx_embed_in_flight(e) > 0)
        host_sleep_ms(1);
    dx_example *in = echo_inputs(0, 0, false);
    dx_call_opts o = {.lm_name = "lm", .rollout_id = "r1"};
    rc = DX_ENOMEM;
    long failures = 0;
    for (at = 0; at < 100000 && rc != DX_OK; at++) {
        dx_embed_call *c = (dx_embed_call *)&c;
        oom_arm(at);
        rc = dx_embed_call_async(e, m, in, &o, on_done, &r->slot[0], &c);
        oom_armed = false;
        if (rc != DX_OK) {
            failures++;
            cr_assert_eq(rc, DX_ENOMEM, "%s", dx_err_name(rc));
            cr_assert_null(c);
            cr_assert_eq(dx_embed_in_flight(e), 0);
        } else {
            cr_assert_eq(dx_embed_call_wait(c, 20000), DX_OK);
            dx_embed_call_release(c);
        }
    }
    cr_assert_eq(rc, DX_OK);
    cr_expect_geq(failures, 4, "copies, names and the spawn allocate");
    cr_expect_eq(atomic_load(&r->slot[0].calls), 1,
                 "only the call that "
                 "started calls back");
    cr_expect_eq(atomic_load(&r->slot[0].rc), DX_OK, "%s", r->slot[0].diag);
    dx_example_free(in);
    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    cr_expect(!dx_runtime_running());
    dx_set_allocator(NULL);
    dx_module_free(m);
    dx_free(r);
}

/* ---- waiting from the wrong place -------------------------------------- */

static dx_embed_call *proc_call;
static atomic_int proc_wait_rc = 1;

static void wait_in_process(void *arg)
{
    (void)arg;
    atomic_store(&proc_wait_rc, dx_embed_call_wait(proc_call, 0));
}

Test(embed, waiting_from_a_process_is_refused)
{
    dx_embed *e = embed_new(0);
    dx_module *m = echo_module();
    record *r = record_new();
    cr_assert_eq(call(e, m, r, 0, 0, false, 0, &proc_call), DX_OK);
    dx_pid pid;
    cr_assert_eq(dx_spawn(wait_in_process, NULL, &pid), DX_OK);
    for (int i = 0; i < 2000 && atomic_load(&proc_wait_rc) == 1; i++)
        host_sleep_ms(5);
    cr_expect_eq(atomic_load(&proc_wait_rc), DX_ESTATE);
    cr_assert_eq(dx_embed_call_wait(proc_call, 20000), DX_OK);
    dx_embed_call_release(proc_call);
    cr_assert_eq(dx_embed_shutdown(e, 0, NULL), DX_OK);
    dx_module_free(m);
    dx_free(r);
}

/* ---- the host's loop ----------------------------------------------------- */

typedef struct loop_submitter {
    dx_embed *e;
    const dx_module *m;
    record *r;
    int first, count;
    int failures;
} loop_submitter;

static void *submit_only(void *arg)
{
    loop_submitter *s = arg;
    for (int i = 0; i < s->count; i++)
        if (call(s->e, s->m, s->r, s->first + i, i % 3, false, 0, NULL) !=
            DX_OK)
            s->failures++;
    return NULL;
}

static atomic_int other_thread_shutdown_rc = 1;

static void *shutdown_from_other_thread(void *arg)
{
    atomic_store(&other_thread_shutdown_rc, dx_embed_shutdown(arg, 0, NULL));
    return NULL;
}

Test(embed, callbacks_run_on_the_attached_loop_thread_and_shutdown_there)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    dx_embed *e = embed_new(0);
    cr_assert_eq(dx_embed_attach_loop(e, &loop), DX_OK);
    cr_expect_eq(dx_embed_attach_loop(e, &loop), DX_EEXIST);
    dx_module *m = echo_module();
    record *r = record_new();
    r->loop = &loop;
    r->loop_thread = pthread_self();
    r->stop_at = 2 * 20;

    pthread_t th[2];
    loop_submitter sub[2];
    for (int t = 0; t < 2; t++) {
        sub[t] = (loop_submitter){
            .e = e, .m = m, .r = r, .first = t * 20, .count = 20};
        cr_assert_eq(pthread_create(&th[t], NULL, submit_only, &sub[t]), 0);
    }
    for (int t = 0; t < 2; t++) {
        pthread_join(th[t], NULL);
        cr_expect_eq(sub[t].failures, 0);
    }
    /* No callback can have run yet: they wait for this thread's loop. */
    cr_expect_eq(atomic_load(&r->total), 0);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 1, "stopped by uv_stop");
    cr_assert_eq(atomic_load(&r->total), 40);
    for (int i = 0; i < 40; i++) {
        cr_expect_eq(atomic_load(&r->slot[i].calls), 1);
        cr_expect_eq(atomic_load(&r->slot[i].rc), DX_OK, "%d: %s", i,
                     r->slot[i].diag);
        cr_expect(r->slot[i].on_loop, "call %d's callback ran elsewhere", i);
    }
    cr_expect_eq(atomic_load(&r->mismatches), 0);

    /* Waiting on the loop thread for a loop-delivered call would never
     * end; a blocking call still works here (it is not routed through
     * the loop). */
    dx_embed_call *c = NULL;
    cr_assert_eq(call(e, m, r, 40, 0, false, 0, &c), DX_OK);
    cr_expect_eq(dx_embed_call_wait(c, 0), DX_EDEADLK);
    dx_example *in = echo_inputs(41, 0, false);
    dx_prediction *p = NULL;
    cr_assert_eq(dx_embed_call_sync(e, m, in, NULL, &p, NULL), DX_OK);
    dx_prediction_free(p);
    dx_example_free(in);

    /* Only this thread may shut the embedding down. */
    pthread_t other;
    cr_assert_eq(pthread_create(&other, NULL, shutdown_from_other_thread, e),
                 0);
    pthread_join(other, NULL);
    cr_expect_eq(atomic_load(&other_thread_shutdown_rc), DX_ESTATE);

    /* One call still in flight at shutdown: cancelled, and its callback
     * runs here, inside the shutdown; from it a new call is refused and a
     * nested shutdown too. */
    cr_assert_eq(call(e, m, r, 42, 60000, false, 0, NULL), DX_OK);
    r->e = e;
    r->m = m;
    dx_embed_report rep;
    cr_assert_eq(dx_embed_shutdown(e, 100, &rep), DX_OK);
    cr_expect_eq(atomic_load(&r->slot[40].calls), 1, "delivered inline");
    cr_expect(r->slot[40].on_loop);
    cr_expect_eq(atomic_load(&r->slot[42].calls), 1);
    cr_expect_eq(atomic_load(&r->slot[42].rc), DX_ECANCELED, "%s",
                 r->slot[42].diag);
    cr_expect(r->slot[42].on_loop);
    cr_expect_eq(atomic_load(&r->call_while_closing), DX_ESTATE);
    cr_expect_eq(atomic_load(&r->shutdown_from_cb), DX_EDEADLK);
    cr_expect_eq(atomic_load(&r->slot[MAX_CALLS - 1].calls), 0);
    cr_expect_eq(rep.cancelled, 1);
    dx_embed_call_release(c); /* handles outlive the embedding */

    /* The embedding's handle is closing; one more turn finishes it. */
    cr_expect_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_expect_eq(uv_loop_close(&loop), 0);
    dx_module_free(m);
    dx_free(r);
}

/* ---- an application tree with an LM client ---------------------------- */

static const char capitals[] =
    "{\"program\": {\"modules\": [{\"name\": \"answer\", \"module\": "
    "\"predict\", \"signature\": \"question -> answer\"}]}}";

Test(embed, an_application_with_a_sim_lm_client_serves_a_program)
{
    dx_embed *e = embed_new(0);
    dx_lm_client_opts lo = {.primary = {"sim/strong", NULL, NULL}};
    dx_child_spec child;
    cr_assert_eq(dx_lm_client_child_spec(&child, "lm", &lo, "lm"), DX_OK);
    dx_sup_spec root = {
        .name = "embed_test_root", .children = &child, .nchildren = 1};
    dx_pid root_pid;
    cr_assert_eq(dx_embed_app_start(e, &root, &root_pid, NULL), DX_OK);
    cr_expect(dx_is_alive(root_pid));
    cr_expect(!dx_pid_is_none(dx_whereis("lm")));

    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(
        dx_program_parse(capitals, strlen(capitals), "capitals", &m, &d), DX_OK,
        "%s", d.msg);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", "What is the capital of France?");
    dx_prediction *p = NULL;
    cr_assert_eq(dx_embed_call_sync(e, m, in, NULL, &p, &d), DX_OK, "%s",
                 d.msg);
    const char *answer = dx_prediction_get_str(p, "answer", "");
    cr_expect(answer[0] != '\0', "an answer");
    cr_expect_gt(dx_prediction_usage(p)->calls, 0);
    dx_prediction_free(p);
    dx_example_free(in);

    dx_embed_report rep;
    cr_assert_eq(dx_embed_shutdown(e, 1000, &rep), DX_OK);
    cr_expect_eq(rep.apps, 1);
    dx_lm_client_child_spec_free(&child);
    dx_module_free(m);
}

/* ---- the runtime's I/O on the host's loop ------------------------------ */

typedef struct hosted_result {
    uv_loop_t *loop;
    pthread_t loop_thread;
    int rc;
    bool on_loop;
    char answer[64];
} hosted_result;

static void hosted_done(dx_embed_call *call, int rc, dx_prediction *pred,
                        const dx_diag *diag, void *ud)
{
    (void)call;
    (void)diag;
    hosted_result *h = ud;
    h->rc = rc;
    h->on_loop = pthread_equal(pthread_self(), h->loop_thread);
    snprintf(h->answer, sizeof h->answer, "%s",
             pred ? dx_prediction_get_str(pred, "answer", "") : "");
    dx_prediction_free(pred);
    uv_stop(h->loop);
}

/* A host whose one libuv loop runs both the runtime's HTTP transfers
 * (dx_io_start_hosted) and the completions (dx_embed_attach_loop): a
 * program call against the local LM server completes with no I/O thread
 * of dspex's own, and everything dspex opened on the loop is closed at
 * the end. */
Test(embed, a_hosts_loop_runs_the_lm_io_and_the_completions)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    dx_embed *e = embed_new(0);
    cr_assert_eq(dx_io_start_hosted(&loop), DX_OK);
    cr_assert_eq(dx_embed_attach_loop(e, &loop), DX_OK);

    dx_lmserver *ls = NULL;
    cr_assert_eq(dx_lmserver_start(NULL, &ls), DX_OK);
    char base[128];
    snprintf(base, sizeof base, "http://127.0.0.1:%d/v1", dx_lmserver_port(ls));
    cr_assert_eq(dx_lmserver_push_reply(
                     ls, "[[ ## answer ## ]]\nLima\n\n[[ ## completed ## ]]"),
                 DX_OK);
    dx_lm_client_opts lo = {
        .primary = {"openai-compatible/test", base, "sk-test"}};
    dx_child_spec child;
    cr_assert_eq(dx_lm_client_child_spec(&child, "lm", &lo, "lm"), DX_OK);
    dx_sup_spec root = {
        .name = "hosted_io_root", .children = &child, .nchildren = 1};
    cr_assert_eq(dx_embed_app_start(e, &root, NULL, NULL), DX_OK);

    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(
        dx_program_parse(capitals, strlen(capitals), "capitals", &m, &d), DX_OK,
        "%s", d.msg);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", "What is the capital of Peru?");
    hosted_result h = {.loop = &loop, .loop_thread = pthread_self(), .rc = -1};
    cr_assert_eq(dx_embed_call_async(e, m, in, NULL, hosted_done, &h, NULL),
                 DX_OK);
    dx_example_free(in);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 1, "stopped by the callback");
    cr_assert_eq(h.rc, DX_OK);
    cr_assert(h.on_loop);
    cr_assert_str_eq(h.answer, "Lima");
    dx_lmserver_stats st;
    dx_lmserver_stats_get(ls, &st);
    cr_assert_eq(st.requests, 1, "the answer came over HTTP");
    cr_assert(dx_io_on_loop_thread(), "this thread is the I/O loop's");

    cr_assert_eq(dx_embed_shutdown(e, 1000, NULL), DX_OK);
    dx_lm_client_child_spec_free(&child);
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0, "dspex left nothing open");
    cr_assert_eq(uv_loop_close(&loop), 0);
    dx_lmserver_stop_free(ls);
    dx_module_free(m);
}
