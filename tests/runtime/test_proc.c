/*
 * test_proc.c — process life cycle: spawn (plain, linked, monitored, with
 * options), self, exit, liveness, ownership of the spawn argument,
 * process-owned memory and introspection (dx_process_info/list/count).
 */
#include "kernel_test_util.h"

/* ---- spawn and self ---------------------------------------------------- */

static atomic_int ran_with;
static dx_pid seen_self;

static void record_arg_and_self(void *arg)
{
    atomic_store(&ran_with, *(const int *)arg);
    seen_self = dx_self();
}

Test(proc, spawn_runs_the_function_with_its_argument_and_exits_normal,
     .timeout = 30)
{
    static const int value = 42;
    kt_start(2);
    dx_term *reason = kt_run_reason(record_arg_and_self, (void *)&value);
    cr_expect(dx_is_atom(reason, "normal"));
    dx_term_free(reason);
    cr_expect(!dx_pid_is_none(kt_last_pid()));
    cr_expect_eq(atomic_load(&ran_with), 42);
    cr_expect(dx_pid_eq(seen_self, kt_last_pid()),
              "dx_self() inside differs from the spawned pid");
    kt_stop();
}

static void sleep_then_exit(void *arg)
{
    dx_sleep(300);
    dx_exit_self(dx_atom((const char *)arg));
}

/* The wait starts well within the 300 ms the target sleeps. */
Test(proc, wait_exit_returns_the_reason_of_a_process_exiting_meanwhile,
     .timeout = 30)
{
    kt_start(2);
    dx_pid pid;
    cr_assert_eq(dx_spawn(sleep_then_exit, "boom", &pid), DX_OK);
    dx_term *reason = NULL;
    cr_assert_eq(dx_wait_exit(pid, KT_WAIT_MS, &reason), DX_OK);
    char buf[64];
    cr_expect(dx_is_atom(reason, "boom"), "reason %s",
              kt_fmt(reason, buf, sizeof buf));
    dx_term_free(reason);
    cr_expect(!dx_is_alive(pid));
    kt_stop();
}

Test(proc, self_is_nopid_on_a_host_thread, .timeout = 30)
{
    cr_expect(dx_pid_is_none(dx_self()));
    kt_start(1);
    cr_expect(dx_pid_is_none(dx_self()));
    kt_stop();
}

Test(proc, spawn_without_a_running_runtime_returns_estate, .timeout = 30)
{
    dx_pid pid = DX_NOPID;
    cr_expect_eq(dx_spawn(kt_wait_msg_fn, NULL, &pid), DX_ESTATE);
}

Test(proc, spawned_pids_are_distinct_and_not_reused, .timeout = 30)
{
    kt_start(2);
    enum { N = 64 };
    dx_pid pids[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(dx_spawn(kt_exit_with_fn, "normal", &pids[i]), DX_OK);
        kt_host_join(pids[i]);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            cr_assert(!dx_pid_eq(pids[i], pids[j]),
                      "pid %d reused as pid %d after the first exited", i, j);
    kt_stop();
}

/* ---- exit reasons ------------------------------------------------------- */

static void exit_with_tuple(void *arg)
{
    (void)arg;
    dx_exit_self(dx_tuple(2, dx_atom("boom"), dx_int(7)));
}

static void exit_with_null(void *arg)
{
    (void)arg;
    dx_exit_self(NULL);
}

Test(proc, exit_self_ends_the_process_with_the_given_reason, .timeout = 30)
{
    kt_start(2);
    dx_term *reason = kt_run_reason(exit_with_tuple, NULL);
    dx_term *want = dx_tuple(2, dx_atom("boom"), dx_int(7));
    char buf[128];
    cr_expect(dx_term_equal(reason, want), "reason %s",
              kt_fmt(reason, buf, sizeof buf));
    dx_term_free(want);
    dx_term_free(reason);

    reason = kt_run_reason(exit_with_null, NULL);
    cr_expect(dx_is_atom(reason, "normal"), "NULL reason gave %s",
              kt_fmt(reason, buf, sizeof buf));
    dx_term_free(reason);
    kt_stop();
}

Test(proc, is_alive_follows_the_process_life, .timeout = 30)
{
    kt_start(2);
    dx_pid pid;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &pid), DX_OK);
    cr_expect(dx_is_alive(pid));
    cr_assert_eq(dx_send_tag(pid, 1), DX_OK);
    kt_host_join(pid);
    cr_expect(!dx_is_alive(pid));
    cr_expect(!dx_is_alive(DX_NOPID));
    kt_stop();
}

Test(proc, wait_exit_on_a_dead_pid_returns_enoproc_with_reason_noproc,
     .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(kt_exit_with_fn, "normal", &pid), DX_OK);
    kt_host_join(pid);
    dx_term *reason = NULL;
    cr_expect_eq(dx_wait_exit(pid, KT_WAIT_MS, &reason), DX_ENOPROC);
    cr_expect(dx_is_atom(reason, "noproc"));
    dx_term_free(reason);
    kt_stop();
}

Test(proc, wait_exit_times_out_on_a_live_process, .timeout = 30)
{
    kt_start(1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &pid), DX_OK);
    cr_expect_eq(dx_wait_exit(pid, 20, NULL), DX_ETIMEDOUT);
    cr_expect(dx_is_alive(pid));
    cr_assert_eq(dx_send_tag(pid, 1), DX_OK);
    kt_host_join(pid);
    kt_stop();
}

/* ---- spawn_link / spawn_monitor / spawn options ------------------------- */

static dx_pid child;

static void spawn_link_body(void *arg)
{
    (void)arg;
    dx_trap_exit(true);
    KT_CHECK_RC(dx_spawn_link(kt_exit_with_fn, "boom", &child), DX_OK);
    dx_msg *m = NULL;
    if (!KT_CHECK_RC(dx_receive_tag(DX_TAG_EXIT, 5000, &m), DX_OK))
        return;
    KT_CHECK(dx_pid_eq(m->from, child));
    KT_CHECK(dx_is_atom(m->term, "boom"));
    dx_msg_free(m);
}

Test(proc, spawn_link_links_the_child_to_the_caller, .timeout = 30)
{
    kt_body_test(2, spawn_link_body, NULL);
}

static void spawn_monitor_body(void *arg)
{
    (void)arg;
    dx_pid pid;
    dx_ref ref = DX_NOREF;
    KT_CHECK_RC(dx_spawn_monitor(kt_exit_with_fn, "boom", &pid, &ref), DX_OK);
    KT_CHECK(ref.id != 0);
    dx_msg *m = NULL;
    if (!KT_CHECK_RC(dx_receive_tag(DX_TAG_DOWN, 5000, &m), DX_OK))
        return;
    KT_CHECK(dx_ref_eq(m->ref, ref));
    KT_CHECK(dx_pid_eq(m->from, pid));
    KT_CHECK(dx_is_atom(m->term, "boom"));
    dx_msg_free(m);
    /* The monitor did not link: this process is still here. */
}

Test(proc, spawn_monitor_delivers_down_with_ref_pid_and_reason, .timeout = 30)
{
    kt_body_test(2, spawn_monitor_body, NULL);
}

static void spawn_opts_body(void *arg)
{
    (void)arg;
    dx_spawn_opts o = {.link = true,
                       .monitor = true,
                       .trap_exit = true,
                       .name = "kt_opts_child",
                       .label = "kt:label-from-opts"};
    dx_pid pid;
    dx_ref ref = DX_NOREF;
    dx_trap_exit(true);
    if (!KT_CHECK_RC(dx_spawn_opt(kt_wait_msg_fn, NULL, &o, &pid, &ref), DX_OK))
        return;
    KT_CHECK(ref.id != 0);
    KT_CHECK(dx_pid_eq(dx_whereis("kt_opts_child"), pid));
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(pid, &info), DX_OK)) {
        KT_CHECK(strcmp(info.name, "kt_opts_child") == 0);
        KT_CHECK(strcmp(info.label, "kt:label-from-opts") == 0);
        KT_CHECK(info.trap_exit);
        KT_CHECK_EQ(info.links, 1);
    }
    KT_CHECK_RC(dx_send_tag(pid, 1), DX_OK);
    dx_term *reason = kt_await_down(ref, 5000);
    KT_CHECK_REASON_ATOM(reason, "normal");
    /* Linked and trapping: the normal exit arrives as a message. */
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(DX_TAG_EXIT, 5000, &m), DX_OK)) {
        KT_CHECK(dx_pid_eq(m->from, pid));
        KT_CHECK(dx_is_atom(m->term, "normal"));
        dx_msg_free(m);
    }
}

Test(proc, spawn_opt_applies_link_monitor_trap_exit_name_and_label,
     .timeout = 30)
{
    kt_body_test(2, spawn_opts_body, NULL);
}

Test(proc, spawn_link_from_a_host_thread_returns_enotproc, .timeout = 30)
{
    kt_start(1);
    size_t base = dx_process_count();
    dx_pid pid = DX_NOPID;
    dx_ref ref = DX_NOREF;
    cr_expect_eq(dx_spawn_link(kt_wait_msg_fn, NULL, &pid), DX_ENOTPROC);
    cr_expect_eq(dx_spawn_monitor(kt_wait_msg_fn, NULL, &pid, &ref),
                 DX_ENOTPROC);
    cr_expect_eq(dx_process_count(), base, "a failed spawn left a process");
    kt_stop();
}

/* ---- ownership of the spawn argument ------------------------------------ */

static atomic_int arg_frees;
static atomic_int arg_runs;

static void count_arg_free(void *arg)
{
    atomic_fetch_add(&arg_frees, 1);
    dx_free(arg);
}

static void touch_arg(void *arg)
{
    atomic_fetch_add(&arg_runs, 1);
    *(int *)arg += 1;
}

static void touch_arg_then_crash(void *arg)
{
    touch_arg(arg);
    dx_exit_self(dx_atom("boom"));
}

static int spawn_counted(dx_proc_fn fn, dx_pid *pid)
{
    int *arg = dx_malloc(sizeof *arg);
    cr_assert_not_null(arg);
    *arg = 0;
    dx_spawn_opts o = {.arg_free = count_arg_free};
    int rc = dx_spawn_opt(fn, arg, &o, pid, NULL);
    if (rc != DX_OK)
        dx_free(arg);
    return rc;
}

Test(proc, arg_free_runs_exactly_once_on_normal_exit_and_on_crash,
     .timeout = 30)
{
    kt_start(2);
    dx_pid a, b;
    cr_assert_eq(spawn_counted(touch_arg, &a), DX_OK);
    kt_host_join(a);
    cr_expect_eq(atomic_load(&arg_frees), 1);
    cr_assert_eq(spawn_counted(touch_arg_then_crash, &b), DX_OK);
    kt_host_join(b);
    cr_expect_eq(atomic_load(&arg_frees), 2);
    kt_stop();
    cr_expect_eq(atomic_load(&arg_frees), 2, "arg_free ran again at stop");
    cr_expect_eq(atomic_load(&arg_runs), 2);
}

/* With one scheduler held by this body, the children cannot run before it
 * parks, so they are killed before running. */
static dx_pid unstarted[16];

static void kill_before_run_body(void *arg)
{
    (void)arg;
    for (int i = 0; i < 16; i++) {
        int *a = dx_malloc(sizeof *a);
        *a = 0;
        dx_spawn_opts o = {.arg_free = count_arg_free};
        KT_CHECK_RC(dx_spawn_opt(touch_arg, a, &o, &unstarted[i], NULL), DX_OK);
    }
    dx_ref refs[16];
    for (int i = 0; i < 16; i++)
        KT_CHECK_RC(dx_monitor(unstarted[i], &refs[i]), DX_OK);
    for (int i = 0; i < 16; i++)
        KT_CHECK_RC(dx_kill(unstarted[i]), DX_OK);
    for (int i = 0; i < 16; i++)
        KT_CHECK_REASON_ATOM(kt_await_down(refs[i], 5000), "killed");
}

Test(proc, arg_free_runs_once_when_killed_before_running, .timeout = 30)
{
    kt_body_test(1, kill_before_run_body, NULL);
    cr_expect_eq(atomic_load(&arg_frees), 16);
    cr_log_info("%d of 16 killed children ran their function",
                atomic_load(&arg_runs));
}

static void touch_arg_then_park(void *arg)
{
    touch_arg(arg);
    kt_park_fn(NULL);
}

Test(proc, arg_free_runs_for_every_process_ended_by_stop, .timeout = 30)
{
    kt_start(1);
    /* Some children may not have started when stop comes; the others are
     * parked in receive. Stop ends them all. */
    for (int i = 0; i < 20; i++) {
        dx_pid pid;
        cr_assert_eq(spawn_counted(touch_arg_then_park, &pid), DX_OK);
    }
    kt_stop();
    cr_expect_eq(atomic_load(&arg_frees), 20);
}

Test(proc, failed_spawn_leaves_the_argument_with_the_caller, .timeout = 30)
{
    kt_start(1);
    dx_pid holder;
    dx_spawn_opts named = {.name = "kt_taken"};
    cr_assert_eq(dx_spawn_opt(kt_wait_msg_fn, NULL, &named, &holder, NULL),
                 DX_OK);
    size_t base = dx_process_count();
    int *arg = dx_malloc(sizeof *arg);
    cr_assert_not_null(arg);
    dx_spawn_opts o = {.name = "kt_taken", .arg_free = count_arg_free};
    dx_pid pid = DX_NOPID;
    cr_expect_eq(dx_spawn_opt(touch_arg, arg, &o, &pid, NULL), DX_EEXIST);
    cr_expect_eq(atomic_load(&arg_frees), 0, "arg_free ran on failed spawn");
    cr_expect_eq(dx_process_count(), base);
    dx_free(arg);
    cr_assert_eq(dx_send_tag(holder, 1), DX_OK);
    kt_host_join(holder);
    kt_stop();
    cr_expect_eq(atomic_load(&arg_frees), 0);
    cr_expect_eq(atomic_load(&arg_runs), 0);
}

/* ---- process-owned memory ----------------------------------------------- */

static void palloc_body(void *arg)
{
    (void)arg;
    unsigned char *p = dx_palloc(100);
    if (!KT_CHECK(p != NULL))
        return;
    memset(p, 0xab, 100);
    unsigned char *z = dx_pcalloc(50, 4);
    if (KT_CHECK(z != NULL)) {
        bool zero = true;
        for (int i = 0; i < 200; i++)
            zero = zero && z[i] == 0;
        KT_CHECK(zero);
    }
    p = dx_prealloc(p, 100000);
    if (!KT_CHECK(p != NULL))
        return;
    bool kept = true;
    for (int i = 0; i < 100; i++)
        kept = kept && p[i] == 0xab;
    KT_CHECK(kept);
    memset(p, 1, 100000);
    dx_yield(); /* parked and resumed: the memory is still ours */
    KT_CHECK(p[99999] == 1);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK(info.memory_bytes >= 100000);
    dx_pfree(z);
    dx_pfree(p);
    dx_pfree(NULL);
    /* Left for the runtime to free at exit. */
    KT_CHECK(dx_palloc(5000) != NULL);
}

Test(proc, palloc_family_allocates_process_memory, .timeout = 30)
{
    kt_body_test(2, palloc_body, NULL);
}

Test(proc, palloc_from_a_host_thread_returns_null, .timeout = 30)
{
    kt_start(1);
    cr_expect_null(dx_palloc(16));
    cr_expect_null(dx_pcalloc(2, 8));
    kt_stop();
}

/* ---- introspection ------------------------------------------------------ */

static atomic_int handled_done;

/* Takes 5 messages, then waits for a tag that never comes. */
static void introspect_target(void *arg)
{
    (void)arg;
    dx_set_label("kt:introspect");
    dx_trap_exit(true);
    for (int i = 0; i < 5; i++) {
        dx_msg *m = NULL;
        if (KT_CHECK_RC(dx_receive_tag(7, 5000, &m), DX_OK))
            dx_msg_free(m);
    }
    atomic_store(&handled_done, 1);
    kt_park_fn(NULL);
}

Test(proc, process_info_reports_name_label_status_mailbox_and_counters,
     .timeout = 30)
{
    kt_start(2);
    size_t base = dx_process_count();
    dx_pid pid;
    cr_assert_eq(dx_spawn(introspect_target, NULL, &pid), DX_OK);
    cr_assert_eq(dx_register("kt_introspect", pid), DX_OK);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(dx_send_tag(pid, 7), DX_OK);
    KT_HOST_WAIT_UNTIL(atomic_load(&handled_done), 10000);
    cr_assert(atomic_load(&handled_done), "the 5 messages were not taken");
    for (int i = 0; i < 3; i++)
        cr_assert_eq(dx_send_tag(pid, 1), DX_OK);

    /* Wait until it is parked with the 3 unread messages. */
    dx_proc_info info;
    int64_t deadline = dx_now_ms() + 10000;
    do {
        cr_assert_eq(dx_process_info(pid, &info), DX_OK);
        if (info.status == DX_PROC_WAITING && info.mailbox_len == 3)
            break;
        kt_host_sleep_ms(2);
    } while (dx_now_ms() < deadline);

    cr_expect(dx_pid_eq(info.pid, pid));
    cr_expect_str_eq(info.name, "kt_introspect");
    cr_expect_str_eq(info.label, "kt:introspect");
    cr_expect_eq(info.status, DX_PROC_WAITING, "status %s",
                 dx_proc_status_name(info.status));
    cr_expect_eq(info.mailbox_len, 3);
    cr_expect_eq(info.messages_handled, 5);
    cr_expect(info.trap_exit);
    cr_expect_eq(info.links, 0);
    cr_expect_gt(info.memory_bytes, 0);
    cr_expect_gt(info.reductions, 0);
    cr_expect(info.scheduler >= 0 && info.scheduler < 2, "scheduler %d",
              info.scheduler);
    cr_expect_eq(dx_process_count(), base + 1);

    dx_proc_info *all = NULL;
    size_t n = 0;
    cr_assert_eq(dx_process_list(&all, &n), DX_OK);
    cr_expect_eq(n, base + 1);
    bool found = false;
    for (size_t i = 0; i < n; i++) {
        if (dx_pid_eq(all[i].pid, pid)) {
            found = true;
            cr_expect_str_eq(all[i].name, "kt_introspect");
            cr_expect_str_eq(all[i].label, "kt:introspect");
        }
    }
    cr_expect(found, "dx_process_list lacks the process");
    dx_free(all);

    cr_assert_eq(dx_kill(pid), DX_OK);
    kt_host_join(pid);
    cr_expect_eq(dx_process_info(pid, &info), DX_ENOPROC);
    /* How soon the count drops is a_process_is_gone_when_its_down_arrives's
     * business; here only that it does. */
    KT_HOST_WAIT_UNTIL(dx_process_count() == base, 5000);
    cr_expect_eq(dx_process_count(), base);
    kt_stop();
}

static void label_truncate_body(void *arg)
{
    (void)arg;
    char long_label[200];
    memset(long_label, 'x', sizeof long_label - 1);
    long_label[sizeof long_label - 1] = '\0';
    dx_set_label(long_label);
    long_label[0] = 'y'; /* copied: changing ours changes nothing */
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK)) {
        KT_CHECK_EQ(strlen(info.label), 63);
        KT_CHECK(info.label[0] == 'x');
        KT_CHECK(info.status == DX_PROC_RUNNING);
        KT_CHECK_EQ(info.mailbox_len, 0);
    }
}

Test(proc, set_label_copies_and_truncates_to_63_bytes, .timeout = 30)
{
    kt_body_test(1, label_truncate_body, NULL);
}

static void link_monitor_counts_body(void *arg)
{
    (void)arg;
    dx_pid a, b;
    dx_ref r1, r2;
    KT_CHECK_RC(dx_spawn_link(kt_wait_msg_fn, NULL, &a), DX_OK);
    KT_CHECK_RC(dx_spawn(kt_wait_msg_fn, NULL, &b), DX_OK);
    KT_CHECK_RC(dx_monitor(a, &r1), DX_OK);
    KT_CHECK_RC(dx_monitor(b, &r2), DX_OK);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK)) {
        KT_CHECK_EQ(info.links, 1);
        KT_CHECK_EQ(info.monitors, 2);
        KT_CHECK(!info.trap_exit);
    }
    KT_CHECK_RC(dx_demonitor(r2, true), DX_OK);
    KT_CHECK_RC(dx_unlink(a), DX_OK);
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK)) {
        KT_CHECK_EQ(info.links, 0);
        KT_CHECK_EQ(info.monitors, 1);
    }
    dx_send_tag(a, 1);
    dx_send_tag(b, 1);
    KT_CHECK_REASON_ATOM(kt_await_down(r1, 5000), "normal");
}

Test(proc, process_info_counts_links_and_monitors, .timeout = 30)
{
    kt_body_test(2, link_monitor_counts_body, NULL);
}

Test(proc, status_names_are_distinct, .timeout = 30)
{
    const char *names[] = {dx_proc_status_name(DX_PROC_RUNNABLE),
                           dx_proc_status_name(DX_PROC_RUNNING),
                           dx_proc_status_name(DX_PROC_WAITING),
                           dx_proc_status_name(DX_PROC_EXITING)};
    for (int i = 0; i < 4; i++) {
        cr_assert_not_null(names[i]);
        for (int j = 0; j < i; j++)
            cr_expect_str_neq(names[i], names[j]);
    }
}

Test(proc, process_count_returns_to_baseline_after_exits, .timeout = 60)
{
    kt_start(2);
    size_t base = dx_process_count();
    enum { N = 200 };
    static dx_pid pids[N];
    for (int i = 0; i < N; i++)
        cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &pids[i]), DX_OK);
    cr_expect_eq(dx_process_count(), base + N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(dx_send_tag(pids[i], 1), DX_OK);
    for (int i = 0; i < N; i++)
        kt_host_join(pids[i]);
    KT_HOST_WAIT_UNTIL(dx_process_count() == base, 5000);
    cr_expect_eq(dx_process_count(), base);
    kt_stop();
    cr_expect_eq(dx_process_count(), 0);
}

/* Snapshots of processes that are ending with links and monitors: the
 * snapshot reads the sets' lengths while the exit empties them (the
 * ThreadSanitizer build checks they do not race). */
static void linked_then_exit(void *arg)
{
    dx_pid peer = *(dx_pid *)arg;
    dx_ref r;
    (void)dx_link(peer);
    (void)dx_monitor(peer, &r);
    dx_msg *m = NULL;
    if (dx_receive_tag(1, 10000, &m) == DX_OK)
        dx_msg_free(m);
}

Test(proc, snapshots_of_ending_linked_processes_are_consistent, .timeout = 60)
{
    kt_start(2);
    size_t base = dx_process_count();
    enum { N = 200 };
    static dx_pid pids[N], peer;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &peer), DX_OK);
    for (int i = 0; i < N; i++)
        cr_assert_eq(dx_spawn(linked_then_exit, &peer, &pids[i]), DX_OK);
    for (int i = 0; i < N; i++)
        cr_assert_eq(dx_send_tag(pids[i], 1), DX_OK);
    /* Snapshot while they end (the peer stays). */
    int rounds = 0;
    while (dx_process_count() > base + 1 && rounds++ < 100000) {
        dx_proc_info *all = NULL;
        size_t n = 0;
        cr_assert_eq(dx_process_list(&all, &n), DX_OK);
        for (size_t i = 0; i < n; i++) {
            cr_assert_leq(all[i].links, N);
            cr_assert_leq(all[i].monitors, 1);
        }
        dx_free(all);
    }
    cr_expect_gt(rounds, 0, "no snapshot taken while they ended");
    for (int i = 0; i < N; i++)
        kt_host_join(pids[i]);
    cr_assert_eq(dx_send_tag(peer, 1), DX_OK);
    kt_host_join(peer);
    KT_HOST_WAIT_UNTIL(dx_process_count() == base, 5000);
    kt_stop();
}

/* Once a process's DOWN reports it dead, it is no longer counted and its
 * argument has been released. The child's arg_free holds its scheduler
 * thread until the watcher has looked (or 200 ms passed), so a runtime that
 * told the monitors first is caught whenever the two run on different
 * schedulers (host spawns are spread over them); a correct one always
 * passes. */
static atomic_int slow_frees;
static atomic_int watcher_looked;
static dx_pid gone_child;
static size_t count_at_down = 99;
static int frees_at_down = 99;
static bool alive_at_down = true;

static void slow_arg_free(void *arg)
{
    (void)arg;
    for (int i = 0; i < 200 && !atomic_load(&watcher_looked); i++)
        kt_host_sleep_ms(1);
    atomic_fetch_add(&slow_frees, 1);
}

static void gone_watcher(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    if (!KT_CHECK_RC(dx_receive_tag(1, 10000, &m), DX_OK))
        return;
    dx_msg_free(m);
    size_t base = dx_process_count() - 1; /* the child */
    dx_ref r;
    KT_CHECK_RC(dx_monitor(gone_child, &r), DX_OK);
    KT_CHECK_RC(dx_send_tag(gone_child, 1), DX_OK);
    dx_term_free(kt_await_down(r, 10000));
    count_at_down = dx_process_count() - base;
    frees_at_down = atomic_load(&slow_frees);
    alive_at_down = dx_is_alive(gone_child);
    atomic_store(&watcher_looked, 1);
}

Test(proc, a_process_is_gone_when_its_down_arrives, .timeout = 30)
{
    kt_start(2);
    dx_pid w;
    cr_assert_eq(dx_spawn(gone_watcher, NULL, &w), DX_OK);
    dx_spawn_opts o = {.arg_free = slow_arg_free};
    cr_assert_eq(dx_spawn_opt(kt_wait_msg_fn, NULL, &o, &gone_child, NULL),
                 DX_OK);
    cr_assert_eq(dx_send_tag(w, 1), DX_OK);
    kt_host_join(w);
    kt_stop();
    kt_assert_clean();
    cr_expect(!alive_at_down);
    cr_expect_eq(count_at_down, 0,
                 "dx_process_count() still counted the process after its "
                 "DOWN arrived");
    cr_expect_eq(frees_at_down, 1, "arg_free had not run when DOWN arrived");
}

/* ---- failure paths of the message API ------------------------------------- */

/* An allocator that fails the next allocation made on one thread (the test
 * thread), and never another thread's: the runtime keeps running while the
 * calls under test see their allocation refused. */
static _Thread_local int fail_next_here;

static void *fail_malloc(size_t size, void *ud)
{
    (void)ud;
    if (fail_next_here) {
        fail_next_here = 0;
        return NULL;
    }
    return malloc(size);
}

static void *fail_realloc(void *ptr, size_t size, void *ud)
{
    (void)ud;
    if (fail_next_here) {
        fail_next_here = 0;
        return NULL;
    }
    return realloc(ptr, size);
}

static void fail_free(void *ptr, void *ud)
{
    (void)ud;
    free(ptr);
}

static const dx_allocator thread_failing = {fail_malloc, fail_realloc,
                                            fail_free, NULL};
static atomic_int ptr_freed;

static void count_free(void *p)
{
    (void)p;
    atomic_fetch_add(&ptr_freed, 1);
}

static void restore_allocator(void)
{
    dx_set_allocator(NULL);
}

Test(proc, sends_and_snapshots_fail_cleanly_when_memory_runs_out, .timeout = 30,
     .fini = restore_allocator)
{
    dx_set_allocator(&thread_failing);
    kt_start(1);
    dx_pid a;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &a), DX_OK);

    /* The term and the pointer are the callee's either way. */
    dx_term *lost = dx_str("lost");
    fail_next_here = 1;
    cr_expect_eq(dx_send_term(a, 3, lost), DX_ENOMEM);
    int x = 0;
    fail_next_here = 1;
    cr_expect_eq(dx_send_ptr(a, 3, &x, count_free), DX_ENOMEM);
    cr_expect_eq(atomic_load(&ptr_freed), 1);
    dx_proc_info *list = NULL;
    size_t n = 99;
    fail_next_here = 1;
    cr_expect_eq(dx_process_list(&list, &n), DX_ENOMEM);
    fail_next_here = 1;
    cr_expect_eq(dx_wait_exit(a, 10, NULL), DX_ENOMEM);
    fail_next_here = 0;

    /* Nothing was half-done: the process still gets its message. */
    cr_assert_eq(dx_send_tag(a, 1), DX_OK);
    kt_host_join(a);
    kt_stop();
}

Test(proc, messages_to_nowhere_and_null_messages_are_refused, .timeout = 30)
{
    kt_start(1);
    cr_expect_eq(dx_send(dx_self(), NULL), DX_EINVAL);
    cr_expect_null(dx_msg_take_term(NULL));
    cr_expect_null(dx_msg_take_ptr(NULL));
    /* A pid of another node while this one is not in a cluster. */
    dx_pid remote = {.id = ((uint64_t)7 << 52) | 1};
    cr_expect_eq(dx_send_term(remote, 3, dx_atom("hello")), DX_ENOPROC);
    kt_stop();
}
