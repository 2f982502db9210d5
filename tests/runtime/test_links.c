/*
 * test_links.c — links and exit signals: propagation of abnormal exits,
 * normal exits ignored unless trapped, trap_exit turning signals into
 * DX_TAG_EXIT messages, kill being untrappable (seen as `killed`), linking
 * to a dead pid (`noproc`), unlink, and the host-thread error paths.
 */
#include "kernel_test_util.h"

enum { TAG_ALIVE = 42, TAG_LINK = 43, TAG_ACK = 44, TAG_REPORT = 45 };

static dx_pid body;

/* Waits for one message; answers TAG_ALIVE to its sender, exits `done`. */
static void answer_alive_fn(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    if (dx_receive_any(10000, &m) != DX_OK)
        return;
    dx_send_tag(m->from, TAG_ALIVE);
    dx_msg_free(m);
    dx_exit_self(dx_atom("done"));
}

/* Waits for one trapped exit and reports it to `body` as
 * {TAG_REPORT, {FromPid, Reason}}. */
static void report_exit_fn(void *arg)
{
    (void)arg;
    dx_trap_exit(true);
    dx_msg *m = NULL;
    if (dx_receive_tag(DX_TAG_EXIT, 10000, &m) != DX_OK)
        return;
    dx_send_term(body, TAG_REPORT,
                 dx_tuple(2, dx_pid_term(m->from), dx_msg_take_term(m)));
    dx_msg_free(m);
    dx_exit_self(dx_atom("done"));
}

/* Links to whatever pid it is sent (TAG_LINK, term = pid), acks, parks. */
static void linker_fn(void *arg)
{
    (void)arg;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_tag(TAG_LINK, DX_INFINITY, &m) != DX_OK)
            continue;
        dx_pid to = DX_NOPID;
        dx_pid_value(m->term, &to);
        dx_msg_free(m);
        KT_CHECK_RC(dx_link(to), DX_OK);
        dx_send_tag(body, TAG_ACK);
    }
}

static bool wait_report(dx_pid from, const char *reason)
{
    dx_msg *m = NULL;
    if (!KT_CHECK_RC(dx_receive_tag(TAG_REPORT, 10000, &m), DX_OK))
        return false;
    dx_pid got = DX_NOPID;
    bool ok = KT_CHECK(dx_pid_value(dx_term_at(m->term, 0), &got)) &&
              KT_CHECK(dx_pid_eq(got, from));
    const dx_term *why = dx_term_at(m->term, 1);
    if (!dx_is_atom(why, reason)) {
        char t[128], buf[200];
        kt_fmtbuf(buf, sizeof buf, "trapped reason %s, want %s",
                  kt_fmt(why, t, sizeof t), reason);
        kt_note(__FILE__, __LINE__, buf);
        ok = false;
    }
    dx_msg_free(m);
    return ok;
}

/* ---- propagation -------------------------------------------------------- */

/* Spawns a linked child exiting with the reason in arg, then waits. */
static void parent_of_crasher(void *arg)
{
    dx_pid c;
    KT_CHECK_RC(dx_spawn_link(kt_exit_with_fn, arg, &c), DX_OK);
    dx_ref r;
    KT_CHECK_RC(dx_monitor(c, &r), DX_OK);
    dx_term *why = kt_await_down(r, 10000);
    dx_term_free(why);
    /* Give an exit signal that is still on its way time to land. */
    dx_msg *m = NULL;
    dx_receive_tag(TAG_ALIVE, 50, &m);
    dx_exit_self(dx_atom("survived"));
}

static void abnormal_kills_body(void *arg)
{
    (void)arg;
    dx_pid p;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_monitor(parent_of_crasher, "boom", &p, &r), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "boom");
}

Test(links, abnormal_exit_of_a_linked_process_kills_a_non_trapping_peer,
     .timeout = 30)
{
    kt_body_test(2, abnormal_kills_body, NULL);
}

static void normal_ignored_body(void *arg)
{
    (void)arg;
    dx_pid p;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_monitor(parent_of_crasher, "normal", &p, &r), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "survived");
}

Test(links, normal_exit_of_a_linked_process_does_not_kill_the_peer,
     .timeout = 30)
{
    kt_body_test(2, normal_ignored_body, NULL);
}

static void trapped_body(void *arg)
{
    (void)arg;
    KT_CHECK(!dx_trap_exit(true));
    const char *reasons[] = {"boom", "normal"};
    for (int i = 0; i < 2; i++) {
        dx_pid c;
        KT_CHECK_RC(dx_spawn_link(kt_exit_with_fn, (void *)reasons[i], &c),
                    DX_OK);
        dx_msg *m = NULL;
        if (!KT_CHECK_RC(dx_receive_tag(DX_TAG_EXIT, 10000, &m), DX_OK))
            continue;
        KT_CHECK(dx_pid_eq(m->from, c));
        KT_CHECK(dx_is_atom(m->term, reasons[i]));
        dx_msg_free(m);
    }
    /* Still running after both. */
    KT_CHECK(dx_is_alive(dx_self()));
}

Test(links, trap_exit_turns_exit_signals_into_exit_messages, .timeout = 30)
{
    kt_body_test(2, trapped_body, NULL);
}

static void trap_flag_body(void *arg)
{
    (void)arg;
    KT_CHECK(!dx_trap_exit(true));
    KT_CHECK(dx_trap_exit(true));
    KT_CHECK(dx_trap_exit(false));
    KT_CHECK(!dx_trap_exit(false));
}

Test(links, trap_exit_returns_the_previous_setting, .timeout = 30)
{
    kt_body_test(1, trap_flag_body, NULL);
}

static void bidirectional_body(void *arg)
{
    (void)arg;
    body = dx_self();
    /* r waits for a trapped exit; p links to r and crashes. */
    dx_pid r, p;
    dx_ref rr;
    dx_spawn_opts o = {.monitor = true, .trap_exit = true};
    KT_CHECK_RC(dx_spawn_opt(report_exit_fn, NULL, &o, &r, &rr), DX_OK);
    KT_CHECK_RC(dx_spawn(linker_fn, NULL, &p), DX_OK);
    KT_CHECK_RC(dx_send_term(p, TAG_LINK, dx_pid_term(r)), DX_OK);
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(TAG_ACK, 10000, &m), DX_OK))
        dx_msg_free(m);
    KT_CHECK_RC(dx_exit(p, dx_atom("boom")), DX_OK);
    wait_report(p, "boom");
    KT_CHECK_REASON_ATOM(kt_await_down(rr, 10000), "done");
}

Test(links, a_link_made_by_one_side_signals_the_other, .timeout = 30)
{
    kt_body_test(2, bidirectional_body, NULL);
}

static void chain_body(void *arg)
{
    (void)arg;
    body = dx_self();
    dx_pid p[3];
    dx_ref r[3];
    for (int i = 0; i < 3; i++)
        KT_CHECK_RC(dx_spawn_monitor(linker_fn, NULL, &p[i], &r[i]), DX_OK);
    /* p0 - p1 - p2 */
    for (int i = 0; i < 2; i++) {
        KT_CHECK_RC(dx_send_term(p[i], TAG_LINK, dx_pid_term(p[i + 1])), DX_OK);
        dx_msg *m = NULL;
        if (KT_CHECK_RC(dx_receive_tag(TAG_ACK, 10000, &m), DX_OK))
            dx_msg_free(m);
    }
    KT_CHECK_RC(dx_exit(p[2], dx_atom("boom")), DX_OK);
    for (int i = 0; i < 3; i++)
        KT_CHECK_REASON_ATOM(kt_await_down(r[i], 10000), "boom");
}

Test(links, an_exit_propagates_along_a_chain_of_links, .timeout = 30)
{
    kt_body_test(2, chain_body, NULL);
}

/* ---- unlink ------------------------------------------------------------- */

static void unlink_child(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    if (dx_receive_any(10000, &m) == DX_OK)
        dx_msg_free(m);
    dx_exit_self(dx_atom("boom"));
}

static void unlinker(void *arg)
{
    (void)arg;
    dx_pid c;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_link(unlink_child, NULL, &c), DX_OK);
    KT_CHECK_RC(dx_monitor(c, &r), DX_OK);
    KT_CHECK_RC(dx_unlink(c), DX_OK);
    dx_send_tag(c, 1);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "boom");
    dx_msg *m = NULL;
    dx_receive_tag(TAG_ALIVE, 50, &m);
    dx_exit_self(dx_atom("survived"));
}

static void unlink_body(void *arg)
{
    (void)arg;
    dx_pid p;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_monitor(unlinker, NULL, &p, &r), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "survived");
}

Test(links, unlink_stops_exit_propagation, .timeout = 30)
{
    kt_body_test(2, unlink_body, NULL);
}

static void link_twice_body(void *arg)
{
    (void)arg;
    dx_pid c;
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &c), DX_OK);
    KT_CHECK_RC(dx_link(c), DX_OK);
    KT_CHECK_RC(dx_link(c), DX_OK);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.links, 1);
    KT_CHECK_RC(dx_unlink(c), DX_OK);
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.links, 0);
    if (KT_CHECK_RC(dx_process_info(c, &info), DX_OK))
        KT_CHECK_EQ(info.links, 0);
    KT_CHECK_RC(dx_exit(c, dx_atom("boom")), DX_OK);
    KT_CHECK_REASON_ATOM(kt_join(c, 10000), "boom");
}

Test(links, linking_twice_makes_one_link, .timeout = 30)
{
    kt_body_test(2, link_twice_body, NULL);
}

/* ---- linking to a dead pid --------------------------------------------- */

static atomic_int dead_link_rc = 1; /* 1 = dx_link never returned */
static dx_pid dead_pid;

static void link_dead_untrapped(void *arg)
{
    (void)arg;
    atomic_store(&dead_link_rc, dx_link(dead_pid));
    dx_msg *m = NULL;
    dx_receive_tag(TAG_ALIVE, 200, &m);
    dx_exit_self(dx_atom("survived"));
}

static void link_dead_body(void *arg)
{
    (void)arg;
    dx_ref r0;
    KT_CHECK_RC(dx_spawn_monitor(kt_exit_with_fn, "normal", &dead_pid, &r0),
                DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r0, 10000), "normal");

    dx_pid p;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_monitor(link_dead_untrapped, NULL, &p, &r), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "noproc");
    int rc = atomic_load(&dead_link_rc);
    KT_CHECK(rc == 1 || rc == DX_ENOPROC);

    /* Trapping: the return code and a noproc exit message. */
    dx_trap_exit(true);
    KT_CHECK_RC(dx_link(dead_pid), DX_ENOPROC);
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(DX_TAG_EXIT, 10000, &m), DX_OK)) {
        KT_CHECK(dx_pid_eq(m->from, dead_pid));
        KT_CHECK(dx_is_atom(m->term, "noproc"));
        dx_msg_free(m);
    }
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.links, 0);
}

Test(links, linking_to_a_dead_pid_delivers_noproc, .timeout = 30)
{
    kt_body_test(2, link_dead_body, NULL);
}

/* ---- dx_exit and dx_kill ------------------------------------------------ */

static void kill_body(void *arg)
{
    (void)arg;
    dx_trap_exit(true);
    dx_spawn_opts o = {.link = true, .monitor = true, .trap_exit = true};
    dx_pid t;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_opt(kt_park_fn, NULL, &o, &t, &r), DX_OK);
    KT_CHECK_RC(dx_kill(t), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "killed");
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(DX_TAG_EXIT, 10000, &m), DX_OK)) {
        KT_CHECK(dx_pid_eq(m->from, t));
        KT_CHECK(dx_is_atom(m->term, "killed"));
        dx_msg_free(m);
    }
    /* dx_exit with the atom kill is the same thing. */
    KT_CHECK_RC(dx_spawn_opt(kt_park_fn, NULL, &o, &t, &r), DX_OK);
    KT_CHECK_RC(dx_exit(t, dx_atom("kill")), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "killed");
    if (KT_CHECK_RC(dx_receive_tag(DX_TAG_EXIT, 10000, &m), DX_OK)) {
        KT_CHECK(dx_is_atom(m->term, "killed"));
        dx_msg_free(m);
    }
}

Test(links, kill_cannot_be_trapped_and_links_see_killed, .timeout = 30)
{
    kt_body_test(2, kill_body, NULL);
}

static void exit_normal_body(void *arg)
{
    (void)arg;
    body = dx_self();
    /* Not trapping: a normal exit signal is ignored. */
    dx_pid t;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_monitor(answer_alive_fn, NULL, &t, &r), DX_OK);
    KT_CHECK_RC(dx_exit(t, dx_atom("normal")), DX_OK);
    KT_CHECK_RC(dx_exit(t, NULL), DX_OK);
    KT_CHECK_RC(dx_send_tag(t, 1), DX_OK);
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(TAG_ALIVE, 10000, &m), DX_OK))
        dx_msg_free(m);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "done");

    /* Trapping: it becomes a message from the sender. */
    dx_spawn_opts o = {.monitor = true, .trap_exit = true};
    KT_CHECK_RC(dx_spawn_opt(report_exit_fn, NULL, &o, &t, &r), DX_OK);
    KT_CHECK_RC(dx_exit(t, dx_atom("normal")), DX_OK);
    wait_report(dx_self(), "normal");
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "done");
}

Test(links, exit_normal_is_ignored_unless_the_target_traps_exits, .timeout = 30)
{
    kt_body_test(2, exit_normal_body, NULL);
}

static void exit_other_body(void *arg)
{
    (void)arg;
    body = dx_self();
    dx_pid t;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_monitor(kt_park_fn, NULL, &t, &r), DX_OK);
    KT_CHECK_RC(dx_exit(t, dx_atom("boom")), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "boom");

    dx_spawn_opts o = {.monitor = true, .trap_exit = true};
    KT_CHECK_RC(dx_spawn_opt(report_exit_fn, NULL, &o, &t, &r), DX_OK);
    KT_CHECK_RC(dx_exit(t, dx_atom("boom")), DX_OK);
    wait_report(dx_self(), "boom");
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "done");

    KT_CHECK_RC(dx_exit(t, dx_atom("boom")), DX_ENOPROC);
    KT_CHECK_RC(dx_kill(t), DX_ENOPROC);
}

Test(links, exit_with_another_reason_ends_the_target_or_is_trapped,
     .timeout = 30)
{
    kt_body_test(2, exit_other_body, NULL);
}

static dx_pid host_targets[2];
static atomic_int watcher_ready;

/* Monitors both targets, then reports their exit reasons. */
static void host_exit_watcher(void *arg)
{
    (void)arg;
    dx_ref r[2];
    for (int i = 0; i < 2; i++)
        KT_CHECK_RC(dx_monitor(host_targets[i], &r[i]), DX_OK);
    atomic_store(&watcher_ready, 1);
    KT_CHECK_REASON_ATOM(kt_await_down(r[0], 10000), "boom");
    KT_CHECK_REASON_ATOM(kt_await_down(r[1], 10000), "killed");
}

Test(links, exit_and_kill_work_from_a_host_thread, .timeout = 30)
{
    kt_start(2);
    cr_assert_eq(dx_spawn(kt_park_fn, NULL, &host_targets[0]), DX_OK);
    dx_spawn_opts o = {.trap_exit = true};
    cr_assert_eq(dx_spawn_opt(kt_park_fn, NULL, &o, &host_targets[1], NULL),
                 DX_OK);
    dx_pid w;
    cr_assert_eq(dx_spawn(host_exit_watcher, NULL, &w), DX_OK);
    KT_HOST_WAIT_UNTIL(atomic_load(&watcher_ready), 10000);
    cr_assert(atomic_load(&watcher_ready));
    cr_expect_eq(dx_exit(host_targets[0], dx_atom("boom")), DX_OK);
    cr_expect_eq(dx_kill(host_targets[1]), DX_OK);
    kt_host_join(w);
    kt_host_join(host_targets[0]);
    kt_host_join(host_targets[1]);
    cr_expect_eq(dx_exit(host_targets[0], dx_atom("boom")), DX_ENOPROC);
    cr_expect_eq(dx_kill(host_targets[1]), DX_ENOPROC);
    kt_stop();
    kt_assert_clean();
}

Test(links, link_and_unlink_from_a_host_thread_return_enotproc, .timeout = 30)
{
    kt_start(1);
    dx_pid a;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &a), DX_OK);
    cr_expect_eq(dx_link(a), DX_ENOTPROC);
    cr_expect_eq(dx_unlink(a), DX_ENOTPROC);
    cr_expect_eq(dx_kill(a), DX_OK);
    kt_host_join(a);
    kt_stop();
}
