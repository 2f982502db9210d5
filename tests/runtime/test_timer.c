/*
 * test_timer.c — timers: dx_send_after delivers once, not before its time
 * and in deadline order; cancel before firing returns DX_OK and the message
 * never comes (and is freed); cancel after firing or of an unknown ref
 * returns DX_ENOENT; messages for dead targets and pending timers at stop
 * are freed; the monotonic clock; a receive timeout that is no longer
 * wanted does not wake its scheduler.
 */
#include <dirent.h>
#include <errno.h>
#include <unistd.h>

#include "dx_config.h"

#include "kernel_test_util.h"

static atomic_int ptr_frees;

static void count_ptr_free(void *p)
{
    atomic_fetch_add(&ptr_frees, 1);
    dx_free(p);
}

static dx_msg *counted_msg(int64_t tag)
{
    dx_msg *m = dx_msg_new(tag);
    if (m != NULL) {
        m->ptr = dx_malloc(8);
        m->ptr_free = count_ptr_free;
    }
    return m;
}

static void deliver_body(void *arg)
{
    (void)arg;
    int64_t t0 = dx_now_ms();
    dx_ref tref = DX_NOREF;
    KT_CHECK_RC(dx_send_after(40, dx_self(), dx_msg_new(7), &tref), DX_OK);
    KT_CHECK(tref.id != 0);
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(7, 10000, &m), DX_OK)) {
        KT_CHECK(dx_now_ms() - t0 >= 40);
        dx_msg_free(m);
    }
    KT_CHECK_RC(dx_receive_tag(7, 60, &m), DX_ETIMEDOUT);
    /* Fired: it can no longer be cancelled. */
    KT_CHECK_RC(dx_cancel_timer(tref), DX_ENOENT);
}

Test(timer, send_after_delivers_once_after_the_delay, .timeout = 30)
{
    kt_body_test(2, deliver_body, NULL);
}

static void cancel_body(void *arg)
{
    (void)arg;
    dx_ref tref;
    KT_CHECK_RC(dx_send_after(50, dx_self(), counted_msg(8), &tref), DX_OK);
    KT_CHECK_RC(dx_cancel_timer(tref), DX_OK);
    KT_CHECK_EQ(atomic_load(&ptr_frees), 1);
    dx_msg *m = NULL;
    KT_CHECK_RC(dx_receive_tag(8, 150, &m), DX_ETIMEDOUT);
    KT_CHECK_RC(dx_cancel_timer(tref), DX_ENOENT);
    KT_CHECK_RC(dx_cancel_timer(dx_make_ref()), DX_ENOENT);
    KT_CHECK_RC(dx_cancel_timer(DX_NOREF), DX_ENOENT);
}

Test(timer, cancel_before_firing_returns_ok_and_no_message_comes, .timeout = 30)
{
    kt_body_test(2, cancel_body, NULL);
    cr_expect_eq(atomic_load(&ptr_frees), 1);
}

static void order_body(void *arg)
{
    (void)arg;
    int64_t delays[] = {60, 20, 40, 0, 30};
    for (int i = 0; i < 5; i++) {
        dx_msg *m = dx_msg_new(1);
        m->term = dx_int(delays[i]);
        KT_CHECK_RC(dx_send_after(delays[i], dx_self(), m, NULL), DX_OK);
    }
    int64_t prev = -1;
    for (int i = 0; i < 5; i++) {
        dx_msg *m = NULL;
        if (!KT_CHECK_RC(dx_receive_tag(1, 10000, &m), DX_OK))
            return;
        int64_t v = -1;
        dx_int_value(m->term, &v);
        KT_CHECK(v > prev);
        prev = v;
        dx_msg_free(m);
    }
}

Test(timer, timers_fire_in_deadline_order, .timeout = 30)
{
    kt_body_test(1, order_body, NULL);
}

enum { MANY = 1000 };
static unsigned char seen[MANY];

static void many_body(void *arg)
{
    (void)arg;
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < MANY; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        dx_msg *m = dx_msg_new(2);
        m->term = dx_int(i);
        KT_CHECK_RC(dx_send_after((int64_t)(x % 50), dx_self(), m, NULL),
                    DX_OK);
    }
    for (int i = 0; i < MANY; i++) {
        dx_msg *m = NULL;
        if (!KT_CHECK_RC(dx_receive_tag(2, 10000, &m), DX_OK))
            return;
        int64_t v = -1;
        if (KT_CHECK(dx_int_value(m->term, &v) && v >= 0 && v < MANY))
            seen[v]++;
        dx_msg_free(m);
    }
    dx_msg *m = NULL;
    KT_CHECK_RC(dx_receive_tag(2, 60, &m), DX_ETIMEDOUT);
}

Test(timer, a_thousand_timers_each_deliver_exactly_once, .timeout = 30)
{
    kt_body_test(2, many_body, NULL);
    for (int i = 0; i < MANY; i++)
        cr_expect_eq(seen[i], 1, "timer %d delivered %d times", i, seen[i]);
}

/* A cancel that races the firing: exactly one of "cancelled" and
 * "delivered" happens for each timer. */
static void race_body(void *arg)
{
    (void)arg;
    int delivered = 0, cancelled = 0;
    enum { N = 300 };
    static dx_ref trefs[N];
    for (int i = 0; i < N; i++)
        KT_CHECK_RC(dx_send_after(i % 3, dx_self(), dx_msg_new(3), &trefs[i]),
                    DX_OK);
    dx_sleep(1);
    for (int i = 0; i < N; i++) {
        int rc = dx_cancel_timer(trefs[i]);
        if (rc == DX_OK)
            cancelled++;
        else
            KT_CHECK_RC(rc, DX_ENOENT);
    }
    dx_msg *m = NULL;
    while (dx_receive_tag(3, 100, &m) == DX_OK) {
        delivered++;
        dx_msg_free(m);
    }
    KT_CHECK_EQ(delivered + cancelled, N);
}

Test(timer, cancel_racing_the_firing_gives_exactly_one_outcome, .timeout = 30)
{
    kt_body_test(2, race_body, NULL);
}

Test(timer, send_after_works_from_a_host_thread, .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &pid), DX_OK);
    dx_ref tref;
    cr_expect_eq(dx_send_after(10, pid, dx_msg_new(1), &tref), DX_OK);
    kt_host_join(pid);
    cr_expect_eq(dx_cancel_timer(tref), DX_ENOENT);
    kt_stop();
}

Test(timer, a_timer_for_a_dead_process_frees_its_message, .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(kt_park_fn, NULL, &pid), DX_OK);
    cr_expect_eq(dx_send_after(20, pid, counted_msg(1), NULL), DX_OK);
    cr_assert_eq(dx_kill(pid), DX_OK);
    kt_host_join(pid);
    KT_HOST_WAIT_UNTIL(atomic_load(&ptr_frees) == 1, 5000);
    cr_expect_eq(atomic_load(&ptr_frees), 1);
    /* To a pid already dead when the timer is set: freed as well, whether
     * at once (an error) or when it fires. */
    int rc = dx_send_after(5, pid, counted_msg(1), NULL);
    cr_expect(rc == DX_OK || rc == DX_ENOPROC, "rc %s", dx_err_name(rc));
    KT_HOST_WAIT_UNTIL(atomic_load(&ptr_frees) == 2, 5000);
    cr_expect_eq(atomic_load(&ptr_frees), 2);
    kt_stop();
    cr_expect_eq(atomic_load(&ptr_frees), 2);
}

Test(timer, pending_timers_are_freed_at_stop, .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(kt_park_fn, NULL, &pid), DX_OK);
    for (int i = 0; i < 10; i++)
        cr_expect_eq(dx_send_after(600000, pid, counted_msg(1), NULL), DX_OK);
    kt_stop();
    cr_expect_eq(atomic_load(&ptr_frees), 10);
}

Test(timer, a_timer_to_a_process_in_receive_wakes_it, .timeout = 30)
{
    kt_start(2);
    dx_pid pid;
    cr_assert_eq(dx_spawn(kt_park_fn, NULL, &pid), DX_OK);
    dx_msg *m = dx_msg_new(INT64_MAX); /* the tag kt_park_fn waits for */
    cr_assert_eq(dx_send_after(30, pid, m, NULL), DX_OK);
    dx_proc_info info;
    KT_HOST_WAIT_UNTIL(dx_process_info(pid, &info) == DX_OK &&
                           info.messages_handled >= 1,
                       10000);
    cr_assert_eq(dx_process_info(pid, &info), DX_OK);
    cr_expect_geq(info.messages_handled, 1);
    cr_expect_eq(info.mailbox_len, 0);
    kt_stop();
}

Test(timer, now_ms_is_monotonic, .timeout = 30)
{
    int64_t prev = dx_now_ms();
    for (int i = 0; i < 100000; i++) {
        int64_t t = dx_now_ms();
        cr_assert_geq(t, prev);
        prev = t;
    }
}

Test(timer, send_after_refuses_nothing_negative_times_and_no_runtime,
     .timeout = 30)
{
    kt_start(1);
    dx_pid a;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &a), DX_OK);
    dx_ref tref = {.id = 42};
    cr_expect_eq(dx_send_after(10, a, NULL, &tref), DX_EINVAL);
    cr_expect_eq(tref.id, 0u, "the timer ref is cleared on failure");
    cr_expect_eq(dx_send_after(-1, a, dx_msg_new(5), &tref), DX_EINVAL);
    cr_assert_eq(dx_send_tag(a, 1), DX_OK);
    kt_host_join(a);
    kt_stop();
    cr_expect_eq(dx_send_after(10, a, dx_msg_new(5), &tref), DX_ESTATE);
}

static atomic_int received_early;

/* Five receives with a 300 ms timeout, each answered 2 ms into its wait,
 * then a receive without one. */
static void early_then_park(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++) {
        dx_msg *m = NULL;
        KT_CHECK_RC(dx_send_after(2, dx_self(), dx_msg_new(5), NULL), DX_OK);
        if (KT_CHECK_RC(dx_receive_tag(5, 300, &m), DX_OK))
            dx_msg_free(m);
    }
    atomic_store(&received_early, 1);
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(6, DX_INFINITY, &m), DX_OK))
        dx_msg_free(m);
}

/* The timeout of those receives is not wanted any more: the scheduler,
 * with nothing else to do, sleeps through their deadline instead of waking
 * for it (a wake-up for nothing per such receive at low load). */
Test(timer, a_timeout_no_receive_wants_does_not_wake_the_scheduler,
     .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(early_then_park, NULL, &pid), DX_OK);
    KT_HOST_WAIT_UNTIL(atomic_load(&received_early), 10000);
    struct timespec settle = {0, 50 * 1000000}, past = {0, 500 * 1000000};
    nanosleep(&settle, NULL); /* the scheduler is asleep by then */
    long before = kt_thread_sleeps("dx-sched-0");
    cr_assert_geq(before, 0, "no thread named dx-sched-0");
    nanosleep(&past, NULL); /* past the 300 ms deadlines */
    long after = kt_thread_sleeps("dx-sched-0");
    cr_expect_eq(after - before, 0, "the scheduler woke %ld times for nothing",
                 after - before);
    cr_assert_eq(dx_send_tag(pid, 6), DX_OK);
    kt_stop();
}

/* ---- kill deadlines (dx_spawn_opts.kill_after_ms) ------------------------ */

static void wait_for_anything(void *arg)
{
    (void)arg;
    dx_match any = {0};
    dx_msg *m = NULL;
    if (dx_receive(&any, DX_INFINITY, &m) == DX_OK)
        dx_msg_free(m);
    dx_exit_self(dx_atom("got_a_message"));
}

static void kill_deadline_body(void *arg)
{
    (void)arg;
    int64_t t0 = dx_now_ms();
    dx_spawn_opts o = {.monitor = true, .kill_after_ms = 150};
    dx_pid pid;
    dx_ref ref;
    if (!KT_CHECK_RC(dx_spawn_opt(wait_for_anything, NULL, &o, &pid, &ref),
                     DX_OK))
        return;
    dx_term *reason = kt_await_down(ref, KT_WAIT_MS);
    int64_t took = dx_now_ms() - t0;
    KT_CHECK(reason != NULL && dx_is_atom(reason, "killed"));
    KT_CHECK(took >= 150); /* never before its deadline */
    dx_term_free(reason);
}

Test(timer, a_process_still_alive_at_its_kill_deadline_is_killed, .timeout = 30)
{
    kt_body_test(2, kill_deadline_body, NULL);
}

static void end_at_once(void *arg)
{
    (void)arg;
}

static void wait_300_ms(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    dx_receive_tag(1, 300, &m); /* nobody sends it */
    dx_msg_free(m);
}

/* Processes that end before their deadline take it with them. Their
 * control blocks are reused at once on one scheduler, so a deadline left
 * behind would kill whichever process took the block. */
static void ended_deadlines_body(void *arg)
{
    (void)arg;
    enum { N = 200 };
    dx_spawn_opts quick = {.monitor = true, .kill_after_ms = 100};
    for (int i = 0; i < N; i++) {
        dx_ref ref;
        if (!KT_CHECK_RC(dx_spawn_opt(end_at_once, NULL, &quick, NULL, &ref),
                         DX_OK))
            return;
        dx_term *reason = kt_await_down(ref, KT_WAIT_MS);
        KT_CHECK(reason != NULL && dx_is_atom(reason, "normal"));
        dx_term_free(reason);
    }
    dx_spawn_opts plain = {.monitor = true};
    dx_ref refs[N];
    for (int i = 0; i < N; i++)
        if (!KT_CHECK_RC(
                dx_spawn_opt(wait_300_ms, NULL, &plain, NULL, &refs[i]), DX_OK))
            return;
    int killed = 0;
    for (int i = 0; i < N; i++) {
        dx_term *reason = kt_await_down(refs[i], KT_WAIT_MS);
        killed += reason == NULL || !dx_is_atom(reason, "normal");
        dx_term_free(reason);
    }
    KT_CHECK_EQ(killed, 0);
}

Test(timer, a_process_that_ends_before_its_kill_deadline_takes_it_along,
     .timeout = 30)
{
    kt_body_test(1, ended_deadlines_body, NULL);
}

/* ---- sleep(), usleep() and nanosleep() in process code ------------------- */

static atomic_int other_ran;

static void mark_ran(void *arg)
{
    (void)arg;
    atomic_store(&other_ran, 1);
}

/* Spawns a process on this (only) scheduler, sleeps with `how`, and checks
 * that the other ran meanwhile and that the sleep lasted. */
static void sleep_and_check(int how)
{
    atomic_store(&other_ran, 0);
    if (!KT_CHECK_RC(dx_spawn(mark_ran, NULL, NULL), DX_OK))
        return;
    int64_t t0 = dx_now_ms();
    switch (how) {
    case 0:
        KT_CHECK_EQ(usleep(100 * 1000), 0);
        break;
    case 1: {
        struct timespec req = {0, 100 * 1000000}, rem = {5, 5};
        KT_CHECK_EQ(nanosleep(&req, &rem), 0);
        KT_CHECK(rem.tv_sec == 0 && rem.tv_nsec == 0);
        break;
    }
    default:
        KT_CHECK_EQ(sleep(1), 0);
        break;
    }
    int64_t took = dx_now_ms() - t0;
    KT_CHECK(atomic_load(&other_ran)); /* the scheduler was not held */
    KT_CHECK(took >= (how == 2 ? 1000 : 100));
}

static void sleeps_park_body(void *arg)
{
    (void)arg;
    for (int how = 0; how < 3; how++)
        sleep_and_check(how);
    struct timespec bad = {0, 1000000000};
    errno = 0;
    KT_CHECK_EQ(nanosleep(&bad, NULL), -1);
    KT_CHECK_EQ(errno, EINVAL);
}

Test(timer, sleep_usleep_and_nanosleep_in_a_process_park_only_the_process,
     .timeout = 30)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("ThreadSanitizer's own sleep() comes first");
    kt_body_test(1, sleeps_park_body, NULL);
}

static void sleep_an_hour(void *arg)
{
    (void)arg;
    sleep(3600);
    dx_exit_self(dx_atom("slept"));
}

static void killed_sleeper_body(void *arg)
{
    (void)arg;
    dx_pid pid;
    dx_ref ref;
    dx_spawn_opts o = {.monitor = true};
    if (!KT_CHECK_RC(dx_spawn_opt(sleep_an_hour, NULL, &o, &pid, &ref), DX_OK))
        return;
    dx_sleep(50); /* it is asleep by now */
    KT_CHECK_RC(dx_kill(pid), DX_OK);
    dx_term *reason = kt_await_down(ref, 5000);
    KT_CHECK(reason != NULL && dx_is_atom(reason, "killed"));
    dx_term_free(reason);
}

/* Its scheduler is free, and the kill is acted on at once, with or without
 * fault isolation. */
Test(timer, a_process_in_sleep_is_killed_at_once, .timeout = 30)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("ThreadSanitizer's own sleep() comes first");
    kt_body_test(1, killed_sleeper_body, NULL);
}

/* Elsewhere they are the C library's: a host thread sleeps as before. */
Test(timer, sleep_on_a_host_thread_is_the_c_librarys, .timeout = 30)
{
    kt_start(1);
    int64_t t0 = dx_now_ms();
    cr_expect_eq(usleep(50 * 1000), 0);
    struct timespec req = {0, 50 * 1000000};
    cr_expect_eq(nanosleep(&req, NULL), 0);
    cr_expect_geq(dx_now_ms() - t0, 100);
    kt_stop();
}
