/*
 * test_blocking.c — dx_run_blocking: a blocking call runs on a blocking
 * thread while the other processes of its scheduler go on; its result comes
 * back to the caller; a caller that times out or is killed is free at once
 * and the call's argument and result are freed when it returns; calls
 * beyond the threads wait their turn; a call whose caller left before it
 * started does not run; off a process nothing runs; dx_runtime_stop waits
 * for the calls still running; a fault in a call (a NULL write, runaway
 * recursion) ends its caller with the fault's reason, or nobody when the
 * caller gave up, and the thread goes on.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "dspex/blocking.h"
#include "dx_config.h"
#include "kernel_test_util.h"
#include "kt_faults.h"

static atomic_int arg_frees, result_frees, calls_run, ticks;

static void count_arg_free(void *p)
{
    atomic_fetch_add(&arg_frees, 1);
    dx_free(p);
}

static void count_result_free(void *p)
{
    atomic_fetch_add(&result_frees, 1);
    dx_free(p);
}

static void reset_counts(void)
{
    atomic_store(&arg_frees, 0);
    atomic_store(&result_frees, 0);
    atomic_store(&calls_run, 0);
    atomic_store(&ticks, 0);
}

/* The argument: how long to block (ms) and a number to hand back. */
typedef struct nap {
    long ms;
    long id;
} nap;

static nap *nap_new(long ms, long id)
{
    nap *n = dx_malloc(sizeof *n);
    if (n)
        *n = (nap){ms, id};
    return n;
}

/* Blocks its thread as a blocking library would (nanosleep), then returns
 * a heap copy of its id. */
static void *blocking_nap(void *arg)
{
    const nap *n = arg;
    atomic_fetch_add(&calls_run, 1);
    struct timespec ts = {n->ms / 1000, (n->ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
    long *id = dx_malloc(sizeof *id);
    if (id)
        *id = n->id;
    return id;
}

static void ticker(void *arg)
{
    (void)arg;
    for (;;) {
        atomic_fetch_add(&ticks, 1);
        dx_sleep(1);
    }
}

static void leaves_the_scheduler_body(void *arg)
{
    (void)arg;
    dx_pid t;
    KT_CHECK_RC(dx_spawn(ticker, NULL, &t), DX_OK);
    dx_sleep(5);
    int before = atomic_load(&ticks);
    void *result = NULL;
    KT_CHECK_RC(dx_run_blocking(blocking_nap, nap_new(200, 42), count_arg_free,
                                count_result_free, 10000, &result),
                DX_OK);
    /* One scheduler: the ticker ran only because the nap was elsewhere. */
    KT_CHECK(atomic_load(&ticks) - before >= 20);
    KT_CHECK(result != NULL && *(long *)result == 42);
    dx_free(result);
    KT_CHECK_EQ(atomic_load(&arg_frees), 1);
    KT_CHECK_EQ(atomic_load(&result_frees), 0);
    dx_kill(t);
}

Test(blocking, a_blocking_call_leaves_its_scheduler_to_the_others,
     .timeout = 30)
{
    reset_counts();
    kt_body_test(1, leaves_the_scheduler_body, NULL);
}

static void timeout_body(void *arg)
{
    (void)arg;
    int64_t t0 = dx_now_ms();
    void *result = (void *)1;
    KT_CHECK_RC(dx_run_blocking(blocking_nap, nap_new(300, 7), count_arg_free,
                                count_result_free, 50, &result),
                DX_ETIMEDOUT);
    KT_CHECK(result == NULL);
    KT_CHECK(dx_now_ms() - t0 < 250);
    /* The call goes on and frees what it had when it returns. */
    KT_CHECK_EQ(atomic_load(&result_frees), 0);
    for (int i = 0; i < 300 && atomic_load(&result_frees) == 0; i++)
        dx_sleep(10);
    KT_CHECK_EQ(atomic_load(&calls_run), 1);
    KT_CHECK_EQ(atomic_load(&arg_frees), 1);
    KT_CHECK_EQ(atomic_load(&result_frees), 1);
}

Test(blocking, a_call_that_outlasts_its_timeout_goes_on_and_frees_its_result,
     .timeout = 30)
{
    reset_counts();
    kt_body_test(2, timeout_body, NULL);
}

static void waits_for_ever(void *arg)
{
    (void)arg;
    void *result = NULL;
    dx_run_blocking(blocking_nap, nap_new(400, 1), count_arg_free,
                    count_result_free, DX_INFINITY, &result);
    KT_CHECK(!"a killed caller went on");
}

static void killed_body(void *arg)
{
    (void)arg;
    dx_pid p;
    dx_ref ref;
    KT_CHECK_RC(dx_spawn_monitor(waits_for_ever, NULL, &p, &ref), DX_OK);
    /* Killed once the call runs (a slow start, as under valgrind, would
     * otherwise make it a call abandoned before it started). */
    for (int i = 0; i < 5000 && atomic_load(&calls_run) == 0; i++)
        dx_sleep(1);
    KT_CHECK_EQ(atomic_load(&calls_run), 1);
    int64_t t0 = dx_now_ms();
    dx_kill(p);
    dx_term *reason = kt_await_down(ref, 5000);
    KT_CHECK(dx_now_ms() - t0 < 200);
    dx_term_free(reason);
    for (int i = 0; i < 300 && atomic_load(&result_frees) == 0; i++)
        dx_sleep(10);
    KT_CHECK_EQ(atomic_load(&arg_frees), 1);
    KT_CHECK_EQ(atomic_load(&result_frees), 1);
}

Test(blocking, a_caller_killed_while_it_waits_ends_at_once, .timeout = 30)
{
    reset_counts();
    kt_body_test(2, killed_body, NULL);
}

/* More callers than threads: each gets its own result. */
#define MANY 150

static atomic_int many_ok, many_done;

/* Block ms in a call that hands back id; count it when it does. */
static void call_and_count(long id, long ms)
{
    void *result = NULL;
    int rc = dx_run_blocking(blocking_nap, nap_new(ms, id), count_arg_free,
                             count_result_free, 30000, &result);
    if (rc == DX_OK && result && *(long *)result == id)
        atomic_fetch_add(&many_ok, 1);
    dx_free(result);
    atomic_fetch_add(&many_done, 1);
}

static void many_caller(void *arg)
{
    call_and_count((long)(intptr_t)arg, 10);
}

static void many_body(void *arg)
{
    (void)arg;
    for (long i = 0; i < MANY; i++)
        KT_CHECK_RC(dx_spawn(many_caller, (void *)(intptr_t)i, NULL), DX_OK);
    for (int i = 0; i < 3000 && atomic_load(&many_done) < MANY; i++)
        dx_sleep(10);
    KT_CHECK_EQ(atomic_load(&many_ok), MANY);
    KT_CHECK_EQ(atomic_load(&calls_run), MANY);
    KT_CHECK_EQ(atomic_load(&arg_frees), MANY);
}

Test(blocking, calls_beyond_the_threads_wait_their_turn_and_all_run,
     .timeout = 60)
{
    reset_counts();
    atomic_store(&many_ok, 0);
    atomic_store(&many_done, 0);
    kt_body_test(2, many_body, NULL);
}

static atomic_bool gate_open;

/* Holds its thread until the test opens the gate (at most 30 s), so the
 * pool stays full however slowly its threads start. */
static void *gated_call(void *arg)
{
    const nap *n = arg;
    atomic_fetch_add(&calls_run, 1);
    for (int i = 0; i < 30000 && !atomic_load(&gate_open); i++)
        nanosleep(&(struct timespec){0, 1000000L}, NULL);
    long *id = dx_malloc(sizeof *id);
    if (id)
        *id = n->id;
    return id;
}

static void gated_caller(void *arg)
{
    long id = (long)(intptr_t)arg;
    void *result = NULL;
    int rc = dx_run_blocking(gated_call, nap_new(0, id), count_arg_free,
                             count_result_free, 60000, &result);
    if (rc == DX_OK && result && *(long *)result == id)
        atomic_fetch_add(&many_ok, 1);
    dx_free(result);
    atomic_fetch_add(&many_done, 1);
}

/* Queued behind held calls on a full pool, then abandoned: never runs. */
static void abandoned_body(void *arg)
{
    (void)arg;
    atomic_store(&gate_open, false);
    /* Fill every thread with a call held until the one below is gone. */
    for (int i = 0; i < DX_BLOCKING_MAX_THREADS; i++)
        KT_CHECK_RC(dx_spawn(gated_caller, (void *)(intptr_t)i, NULL), DX_OK);
    for (int i = 0;
         i < 20000 && atomic_load(&calls_run) < DX_BLOCKING_MAX_THREADS; i++)
        dx_sleep(1);
    KT_CHECK_EQ(atomic_load(&calls_run), DX_BLOCKING_MAX_THREADS);
    void *result = NULL;
    KT_CHECK_RC(dx_run_blocking(blocking_nap, nap_new(10, -1), count_arg_free,
                                count_result_free, 1, &result),
                DX_ETIMEDOUT);
    atomic_store(&gate_open, true);
    for (int i = 0;
         i < 3000 && atomic_load(&many_done) < DX_BLOCKING_MAX_THREADS; i++)
        dx_sleep(10);
    dx_sleep(50);
    KT_CHECK_EQ(atomic_load(&many_ok), DX_BLOCKING_MAX_THREADS);
    KT_CHECK_EQ(atomic_load(&calls_run), DX_BLOCKING_MAX_THREADS);
    KT_CHECK_EQ(atomic_load(&arg_frees), DX_BLOCKING_MAX_THREADS + 1);
    KT_CHECK_EQ(atomic_load(&result_frees), 0);
}

Test(blocking, a_call_abandoned_before_it_started_does_not_run, .timeout = 60)
{
    reset_counts();
    atomic_store(&many_ok, 0);
    atomic_store(&many_done, 0);
    kt_body_test(2, abandoned_body, NULL);
}

Test(blocking, off_a_process_nothing_runs_and_the_argument_is_freed,
     .timeout = 30)
{
    reset_counts();
    kt_start(1);
    void *result = (void *)1;
    cr_expect_eq(dx_run_blocking(blocking_nap, nap_new(1, 1), count_arg_free,
                                 count_result_free, 100, &result),
                 DX_ENOTPROC);
    cr_expect_null(result);
    cr_expect_eq(dx_run_blocking(NULL, nap_new(1, 1), count_arg_free,
                                 count_result_free, 100, &result),
                 DX_EINVAL);
    cr_expect_eq(atomic_load(&arg_frees), 2);
    cr_expect_eq(atomic_load(&calls_run), 0);
    kt_stop();
}

/* dx_runtime_stop waits for a call still running (its caller is gone by
 * then), and a runtime started again has its threads again. */
static void fire_and_forget_body(void *arg)
{
    (void)arg;
    dx_pid p;
    KT_CHECK_RC(dx_spawn(waits_for_ever, NULL, &p), DX_OK);
    dx_sleep(30);
}

Test(blocking, stop_waits_for_the_calls_still_running, .timeout = 30)
{
    reset_counts();
    kt_start(2);
    kt_run(fire_and_forget_body, NULL);
    kt_stop();
    cr_expect_eq(atomic_load(&calls_run), 1);
    cr_expect_eq(atomic_load(&arg_frees), 1);
    cr_expect_eq(atomic_load(&result_frees), 1);
    reset_counts();
    kt_body_test(1, leaves_the_scheduler_body, NULL);
}

/* ---- faults in a blocking call --------------------------------------------- */

/* Fault isolation is off under ThreadSanitizer (test_crash.c says why),
 * and valgrind does not follow a jump out of a handler on an alternate
 * stack (the crash suite is left out of its run for the same reason); the
 * other builds run these. */
#define SKIP_FAULTS_UNDER_TSAN_OR_VALGRIND()                                   \
    do {                                                                       \
        if (DX_SANITIZE_THREAD)                                                \
            cr_skip_test("fault isolation is off under ThreadSanitizer");      \
        if (KT_RUNNING_ON_VALGRIND)                                            \
            cr_skip_test("valgrind does not follow the fault's jump");         \
    } while (0)

/* Sleeps n->ms, then writes through NULL. */
static void *faulting_call(void *arg)
{
    const nap *n = arg;
    atomic_fetch_add(&calls_run, 1);
    struct timespec ts = {n->ms / 1000, (n->ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
    kt_write_null();
    return NULL;
}

static void *recursing_call(void *arg)
{
    (void)arg;
    atomic_fetch_add(&calls_run, 1);
    int reached = kt_recurse(0); /* never returns */
    long *depth = dx_malloc(sizeof *depth);
    if (depth)
        *depth = reached;
    return depth;
}

static void calls_faulting(void *arg)
{
    void *result = NULL;
    dx_run_blocking(arg == NULL ? faulting_call : recursing_call, nap_new(0, 0),
                    count_arg_free, count_result_free, 10000, &result);
    KT_CHECK(!"the caller of a faulting call went on");
}

/* The caller ends with the reason want_tag (a tagged tuple) or want_atom;
 * the thread, its arg freed, serves the next call. */
static void fault_ends_caller(void *kind, const char *want_tag,
                              const char *want_atom)
{
    dx_pid p;
    dx_ref ref;
    KT_CHECK_RC(dx_spawn_monitor(calls_faulting, kind, &p, &ref), DX_OK);
    dx_term *reason = kt_await_down(ref, 10000);
    bool ok = want_tag ? kt_is_tagged_tuple(reason, want_tag)
                       : dx_is_atom(reason, want_atom);
    if (!ok) {
        char got[128], note[200];
        kt_fmtbuf(note, sizeof note, "the caller's reason: %s, want %s",
                  kt_fmt(reason, got, sizeof got),
                  want_tag ? want_tag : want_atom);
        kt_note(__FILE__, __LINE__, note);
    }
    dx_term_free(reason);
    KT_CHECK_EQ(atomic_load(&calls_run), 1);
    KT_CHECK_EQ(atomic_load(&arg_frees), 1);
    KT_CHECK_EQ(atomic_load(&result_frees), 0);
    void *result = NULL;
    KT_CHECK_RC(dx_run_blocking(blocking_nap, nap_new(5, 7), count_arg_free,
                                count_result_free, 10000, &result),
                DX_OK);
    KT_CHECK(result != NULL && *(long *)result == 7);
    dx_free(result);
}

static void segv_body(void *arg)
{
    (void)arg;
    fault_ends_caller(NULL, "segv", NULL);
}

Test(blocking, a_fault_in_the_call_ends_its_caller_with_the_faults_reason,
     .timeout = 30)
{
    SKIP_FAULTS_UNDER_TSAN_OR_VALGRIND();
    reset_counts();
    kt_body_test(2, segv_body, NULL);
}

static void overflow_body(void *arg)
{
    (void)arg;
    fault_ends_caller((void *)1, NULL, "stack_overflow");
}

Test(blocking, a_runaway_recursion_in_the_call_ends_its_caller_with_overflow,
     .timeout = 60)
{
    SKIP_FAULTS_UNDER_TSAN_OR_VALGRIND();
    reset_counts();
    kt_body_test(2, overflow_body, NULL);
}

/* A caller that stopped waiting is not touched by the fault. */
static void gave_up_body(void *arg)
{
    (void)arg;
    void *result = NULL;
    KT_CHECK_RC(dx_run_blocking(faulting_call, nap_new(150, 0), count_arg_free,
                                count_result_free, 20, &result),
                DX_ETIMEDOUT);
    for (int i = 0; i < 500 && atomic_load(&arg_frees) == 0; i++)
        dx_sleep(10);
    KT_CHECK_EQ(atomic_load(&arg_frees), 1);
    KT_CHECK_RC(dx_run_blocking(blocking_nap, nap_new(5, 9), count_arg_free,
                                count_result_free, 10000, &result),
                DX_OK);
    KT_CHECK(result != NULL && *(long *)result == 9);
    dx_free(result);
}

Test(blocking, a_fault_after_its_caller_gave_up_leaves_the_caller_alone,
     .timeout = 30)
{
    SKIP_FAULTS_UNDER_TSAN_OR_VALGRIND();
    reset_counts();
    kt_body_test(2, gave_up_body, NULL);
}
