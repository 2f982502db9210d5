/*
 * test_monitor.c — monitors and references: exactly one DOWN per monitor
 * with ref, pid and reason; an immediate DOWN `noproc` for a dead pid;
 * demonitor with and without flush (a DOWN after demonitor never arrives);
 * a monitor racing its target's exit gets its DOWN though the runtime is
 * otherwise idle;
 * monitors do not link; a waiting target files monitor signals when it next
 * runs (they are not messages); refs are unique across threads.
 */
#include <stdlib.h>

#include "kernel_test_util.h"

static bool down_pending(dx_ref ref)
{
    dx_match m = {
        .fields = DX_MATCH_TAG | DX_MATCH_REF, .tag = DX_TAG_DOWN, .ref = ref};
    dx_msg *msg = NULL;
    if (dx_receive(&m, 0, &msg) != DX_OK)
        return false;
    dx_msg_free(msg);
    return true;
}

static void down_body(void *arg)
{
    (void)arg;
    dx_pid t;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    dx_ref r = DX_NOREF;
    KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
    KT_CHECK(r.id != 0);
    KT_CHECK_RC(dx_exit(t, dx_atom("boom")), DX_OK);
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(DX_TAG_DOWN, 10000, &m), DX_OK)) {
        KT_CHECK(dx_ref_eq(m->ref, r));
        KT_CHECK(dx_pid_eq(m->from, t));
        KT_CHECK(dx_is_atom(m->term, "boom"));
        dx_msg_free(m);
    }
    /* Exactly one; and the monitor did not take this process down. */
    KT_CHECK_RC(dx_receive_tag(DX_TAG_DOWN, 50, &m), DX_ETIMEDOUT);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.monitors, 0);
}

Test(monitor, down_carries_ref_pid_and_reason_exactly_once, .timeout = 30)
{
    kt_body_test(2, down_body, NULL);
}

static void normal_down_body(void *arg)
{
    (void)arg;
    dx_pid t;
    dx_ref r;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
    dx_send_tag(t, 1);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "normal");
    /* Killed: the reason is killed. */
    KT_CHECK_RC(dx_spawn(kt_park_fn, NULL, &t), DX_OK);
    KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
    KT_CHECK_RC(dx_kill(t), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "killed");
}

Test(monitor, down_reports_normal_and_killed_exits, .timeout = 30)
{
    kt_body_test(2, normal_down_body, NULL);
}

static void dead_pid_body(void *arg)
{
    (void)arg;
    dx_pid t;
    dx_ref r0;
    KT_CHECK_RC(dx_spawn_monitor(kt_exit_with_fn, "normal", &t, &r0), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r0, 10000), "normal");

    dx_ref r = DX_NOREF;
    KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
    KT_CHECK(r.id != 0);
    dx_msg *m = NULL;
    /* "At once": no exit has to happen for it to be delivered. */
    if (KT_CHECK_RC(dx_receive_tag(DX_TAG_DOWN, 0, &m), DX_OK)) {
        KT_CHECK(dx_ref_eq(m->ref, r));
        KT_CHECK(dx_pid_eq(m->from, t));
        KT_CHECK(dx_is_atom(m->term, "noproc"));
        dx_msg_free(m);
    }
    KT_CHECK_RC(dx_receive_tag(DX_TAG_DOWN, 50, &m), DX_ETIMEDOUT);
}

Test(monitor, monitoring_a_dead_pid_gives_an_immediate_noproc_down,
     .timeout = 30)
{
    kt_body_test(2, dead_pid_body, NULL);
}

static void several_body(void *arg)
{
    (void)arg;
    dx_pid t;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    dx_ref r[3];
    for (int i = 0; i < 3; i++)
        KT_CHECK_RC(dx_monitor(t, &r[i]), DX_OK);
    KT_CHECK(!dx_ref_eq(r[0], r[1]) && !dx_ref_eq(r[1], r[2]) &&
             !dx_ref_eq(r[0], r[2]));
    dx_send_tag(t, 1);
    for (int i = 0; i < 3; i++)
        KT_CHECK_REASON_ATOM(kt_await_down(r[i], 10000), "normal");
    dx_msg *m = NULL;
    KT_CHECK_RC(dx_receive_tag(DX_TAG_DOWN, 50, &m), DX_ETIMEDOUT);
}

Test(monitor, each_monitor_gets_its_own_down, .timeout = 30)
{
    kt_body_test(2, several_body, NULL);
}

static void demonitor_body(void *arg)
{
    (void)arg;
    dx_pid t;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    dx_ref gone, keep;
    KT_CHECK_RC(dx_monitor(t, &gone), DX_OK);
    KT_CHECK_RC(dx_monitor(t, &keep), DX_OK);
    KT_CHECK_RC(dx_demonitor(gone, false), DX_OK);
    KT_CHECK_RC(dx_demonitor(gone, false), DX_ENOENT);
    dx_send_tag(t, 1);
    KT_CHECK_REASON_ATOM(kt_await_down(keep, 10000), "normal");
    /* Give a stray DOWN time to arrive: it must not. */
    dx_msg *m = NULL;
    dx_match match = {.fields = DX_MATCH_REF, .ref = gone};
    KT_CHECK_RC(dx_receive(&match, 100, &m), DX_ETIMEDOUT);
    KT_CHECK_EQ(kt_drain(), 0);
}

Test(monitor, no_down_arrives_after_demonitor, .timeout = 30)
{
    kt_body_test(2, demonitor_body, NULL);
}

/* Many rounds of demonitor(flush) racing the target's exit on another
 * scheduler: whichever wins, no DOWN for the removed monitor is left. */
static void demonitor_race_body(void *arg)
{
    (void)arg;
    for (int i = 0; i < 200; i++) {
        dx_pid t;
        dx_ref r, keep;
        KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
        KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
        KT_CHECK_RC(dx_monitor(t, &keep), DX_OK);
        dx_send_tag(t, 1);
        int rc = dx_demonitor(r, true);
        KT_CHECK(rc == DX_OK || rc == DX_ENOENT);
        dx_term_free(kt_await_down(keep, 10000));
        if (!KT_CHECK(!down_pending(r)))
            break;
        kt_drain();
    }
}

Test(monitor, demonitor_racing_the_exit_never_leaks_a_down, .timeout = 60)
{
    kt_body_test(2, demonitor_race_body, NULL);
}

/* A monitor set up while its target exits, on another scheduler: the
 * signal can reach the target after its exit was processed, and is then
 * answered when the dead process is reclaimed. That happened only when its
 * scheduler ran again, so with nothing else to do both schedulers slept and
 * the DOWN never came (seen as dx_wait_exit hanging under TSan). Each
 * round leaves the runtime idle except for the waiting watcher. */
static void monitor_exit_race_body(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20000; i++) {
        dx_pid t;
        dx_spawn_opts so = {.spread = true}; /* on the other scheduler */
        if (!KT_CHECK_RC(dx_spawn_opt(kt_exit_with_fn, "normal", &so, &t, NULL),
                         DX_OK))
            break;
        dx_ref r;
        if (!KT_CHECK_RC(dx_monitor(t, &r), DX_OK))
            break;
        dx_match m = {.fields = DX_MATCH_TAG | DX_MATCH_REF,
                      .tag = DX_TAG_DOWN,
                      .ref = r};
        dx_msg *down = NULL;
        /* No DOWN within 5 s: the one owed was never sent. */
        if (!KT_CHECK_RC(dx_receive(&m, 5000, &down), DX_OK))
            break;
        KT_CHECK(dx_is_atom(down->term, "normal") ||
                 dx_is_atom(down->term, "noproc"));
        dx_msg_free(down);
    }
}

Test(monitor, a_monitor_racing_the_exit_gets_its_down_on_an_idle_runtime,
     .timeout = 120)
{
    kt_body_test(2, monitor_exit_race_body, NULL);
}

static void flush_body(void *arg)
{
    (void)arg;
    dx_pid t;
    dx_ref r;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
    dx_send_tag(dx_self(), 5); /* unrelated message that must survive */
    dx_send_tag(t, 1);
    /* Wait until the DOWN sits in the mailbox (2 messages). */
    dx_proc_info info = {0};
    int64_t deadline = dx_now_ms() + 10000;
    while (dx_now_ms() < deadline) {
        if (dx_process_info(dx_self(), &info) == DX_OK && info.mailbox_len >= 2)
            break;
        dx_sleep(1);
    }
    KT_CHECK_EQ(info.mailbox_len, 2);
    int rc = dx_demonitor(r, true);
    KT_CHECK(rc == DX_OK || rc == DX_ENOENT);
    KT_CHECK(!down_pending(r));
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_any(0, &m), DX_OK)) {
        KT_CHECK_EQ(m->tag, 5);
        dx_msg_free(m);
    }
    KT_CHECK_EQ(kt_drain(), 0);
}

Test(monitor, demonitor_with_flush_removes_a_down_already_received,
     .timeout = 30)
{
    kt_body_test(2, flush_body, NULL);
}

static void demonitor_errors_body(void *arg)
{
    (void)arg;
    KT_CHECK_RC(dx_demonitor(dx_make_ref(), false), DX_ENOENT);
    KT_CHECK_RC(dx_demonitor(DX_NOREF, true), DX_ENOENT);
    /* A removed monitor is no longer active. */
    dx_pid t;
    dx_ref r;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
    KT_CHECK_RC(dx_demonitor(r, true), DX_OK);
    KT_CHECK_RC(dx_demonitor(r, true), DX_ENOENT);
    dx_send_tag(t, 1);
}

Test(monitor, demonitor_of_an_unknown_ref_returns_enoent, .timeout = 30)
{
    kt_body_test(1, demonitor_errors_body, NULL);
}

Test(monitor, monitor_from_a_host_thread_returns_enotproc, .timeout = 30)
{
    kt_start(1);
    dx_pid t;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    dx_ref r = DX_NOREF;
    cr_expect_eq(dx_monitor(t, &r), DX_ENOTPROC);
    cr_expect_eq(dx_demonitor(r, false), DX_ENOTPROC);
    cr_assert_eq(dx_send_tag(t, 1), DX_OK);
    kt_host_join(t);
    kt_stop();
}

/* The monitored process's own monitor count and the watcher's. */
static void counts_body(void *arg)
{
    (void)arg;
    dx_pid t;
    dx_ref r;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.monitors, 1);
    if (KT_CHECK_RC(dx_process_info(t, &info), DX_OK))
        KT_CHECK_EQ(info.monitors, 0);
    KT_CHECK_RC(dx_demonitor(r, false), DX_OK);
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.monitors, 0);
    dx_send_tag(t, 1);
}

Test(monitor, monitors_count_on_the_watcher, .timeout = 30)
{
    kt_body_test(1, counts_body, NULL);
}

/* A process waiting in a receive is not woken for monitor signals: it
 * files them with its next message, or on its way out. They are not
 * messages (mailbox_len leaves them out), a thousand watch/unwatch pairs
 * pile up no further than the backlog that wakes it anyway, and the one
 * monitor left still gets exactly one DOWN with the real reason. */
static void quiet_body(void *arg)
{
    bool by_kill = arg != NULL;
    dx_pid t;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &t), DX_OK);
    dx_proc_info info;
    for (int i = 0; i < 10000; i++) {
        if (dx_process_info(t, &info) == DX_OK &&
            info.status == DX_PROC_WAITING)
            break;
        dx_sleep(1);
    }
    for (int i = 0; i < 1000; i++) {
        dx_ref r;
        KT_CHECK_RC(dx_monitor(t, &r), DX_OK);
        KT_CHECK_RC(dx_demonitor(r, false), DX_OK);
    }
    dx_ref kept;
    KT_CHECK_RC(dx_monitor(t, &kept), DX_OK);
    if (KT_CHECK_RC(dx_process_info(t, &info), DX_OK))
        KT_CHECK_EQ(info.mailbox_len, 0);
    if (by_kill) {
        KT_CHECK_RC(dx_exit(t, dx_atom("shutdown")), DX_OK);
        KT_CHECK_REASON_ATOM(kt_await_down(kept, 10000), "shutdown");
    } else {
        KT_CHECK_RC(dx_send_tag(t, 1), DX_OK);
        KT_CHECK_REASON_ATOM(kt_await_down(kept, 10000), "normal");
    }
    dx_msg *m = NULL;
    KT_CHECK_RC(dx_receive_tag(DX_TAG_DOWN, 50, &m), DX_ETIMEDOUT);
}

Test(monitor, a_waiting_target_files_monitors_when_it_next_runs, .timeout = 30)
{
    kt_body_test(2, quiet_body, NULL);
}

Test(monitor, a_waiting_target_answers_monitors_it_never_filed_when_it_dies,
     .timeout = 30)
{
    kt_body_test(2, quiet_body, (void *)1);
}

/* ---- references --------------------------------------------------------- */

enum { REF_MAKERS = 4, REFS_EACH = 20000 };
static uint64_t refs[REF_MAKERS * REFS_EACH];

static void make_refs_fn(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < REFS_EACH; i++) {
        refs[id * REFS_EACH + i] = dx_make_ref().id;
        if (i % 1000 == 0)
            dx_yield();
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

Test(monitor, refs_are_unique_across_processes_and_threads, .timeout = 60)
{
    kt_start(2);
    dx_pid pids[REF_MAKERS - 1];
    for (int i = 0; i < REF_MAKERS - 1; i++)
        cr_assert_eq(dx_spawn(make_refs_fn, (void *)(intptr_t)i, &pids[i]),
                     DX_OK);
    /* The host thread makes its share at the same time. */
    for (int i = 0; i < REFS_EACH; i++)
        refs[(REF_MAKERS - 1) * REFS_EACH + i] = dx_make_ref().id;
    for (int i = 0; i < REF_MAKERS - 1; i++)
        kt_host_join(pids[i]);
    kt_stop();
    size_t n = REF_MAKERS * REFS_EACH;
    qsort(refs, n, sizeof refs[0], cmp_u64);
    cr_expect_neq(refs[0], 0, "a zero (DX_NOREF) ref was made");
    for (size_t i = 1; i < n; i++)
        cr_assert_neq(refs[i], refs[i - 1], "duplicate ref %llu",
                      (unsigned long long)refs[i]);
}
