/*
 * test_server.c — the server behaviour: start (init success, failure code,
 * crash, timeout), call/cast/info, call timeouts with the late reply
 * dropped, deferred replies with dx_reply, stopping (DX_SRV_STOP, cast stop,
 * dx_server_stop, parent exit with trap_exit) and the call failure paths
 * (dead server, server dying mid-call, calling yourself, no handle_call).
 */
#include "dspex/server.h"
#include "kernel_test_util.h"

enum {
    T_GET = 1,
    T_ADD,
    T_SLOW,
    T_DEFER,
    T_RELEASE,
    T_STOP,
    T_CRASH,
    T_CALL_SELF,
    T_CAST_STOP,
    T_KEEP,
    T_DROP,
};

enum { INIT_OK = 0, INIT_FAIL, INIT_CRASH, INIT_SLOW };

typedef struct counter {
    int64_t count;
    dx_from pending;
    bool has_pending;
    void *kept;
} counter;

static atomic_int terminate_calls;
static char terminate_reason[128];
static atomic_int infos;
static atomic_int reply_rc = 1;
static atomic_int ptr_frees;
static atomic_int slow_terminate;

static void count_ptr_free(void *p)
{
    atomic_fetch_add(&ptr_frees, 1);
    dx_free(p);
}

static int64_t int_of(const dx_msg *m)
{
    int64_t v = -1;
    if (m == NULL || !dx_int_value(m->term, &v))
        return -1;
    return v;
}

static int c_init(void *arg, void **state, dx_term **stop_reason)
{
    switch ((int)(intptr_t)arg) {
    case INIT_FAIL:
        *stop_reason = dx_atom("bad_arg");
        return DX_EINVAL;
    case INIT_CRASH:
        dx_exit_self(dx_atom("init_boom"));
    case INIT_SLOW:
        dx_sleep(5000);
        break;
    default:
        break;
    }
    /* Process memory: a server that crashes (no terminate) leaks nothing. */
    counter *c = dx_pcalloc(1, sizeof *c);
    if (c == NULL)
        return DX_ENOMEM;
    *state = c;
    return DX_OK;
}

static dx_srv_ret c_call(void *state, dx_msg *req, dx_from from, dx_msg **reply,
                         dx_term **stop_reason)
{
    counter *c = state;
    switch (req->tag) {
    case T_GET:
        *reply = dx_msg_new(T_GET);
        (*reply)->term = dx_int(c->count);
        return DX_SRV_REPLY;
    case T_ADD:
        c->count += int_of(req);
        *reply = dx_msg_new(T_ADD);
        (*reply)->term = dx_int(c->count);
        return DX_SRV_REPLY;
    case T_SLOW:
        dx_sleep(int_of(req));
        *reply = dx_msg_new(T_SLOW);
        (*reply)->term = dx_atom("late");
        return DX_SRV_REPLY;
    case T_DEFER:
        c->pending = from;
        c->has_pending = true;
        return DX_SRV_NOREPLY;
    case T_STOP:
        *reply = dx_msg_new(T_STOP);
        (*reply)->term = dx_atom("ok_stopping");
        *stop_reason = dx_atom("stopped_by_call");
        return DX_SRV_STOP;
    case T_CRASH:
        dx_exit_self(dx_atom("boom"));
    case T_CALL_SELF: {
        dx_msg *r = NULL;
        int rc = dx_call(dx_self(), dx_msg_new(T_GET), 1000, &r);
        dx_msg_free(r);
        *reply = dx_msg_new(T_CALL_SELF);
        (*reply)->term = dx_int(rc);
        return DX_SRV_REPLY;
    }
    default:
        *reply = dx_msg_new(0);
        return DX_SRV_REPLY;
    }
}

static dx_srv_ret c_cast(void *state, dx_msg *msg, dx_term **stop_reason)
{
    counter *c = state;
    switch (msg->tag) {
    case T_ADD:
        c->count += int_of(msg);
        return DX_SRV_NOREPLY;
    case T_RELEASE:
        if (c->has_pending) {
            dx_msg *r = dx_msg_new(T_DEFER);
            r->term = dx_int(99);
            atomic_store(&reply_rc, dx_reply(c->pending, r));
            c->has_pending = false;
        }
        return DX_SRV_NOREPLY;
    case T_CAST_STOP:
        *stop_reason = dx_atom("cast_stop");
        return DX_SRV_STOP;
    case T_KEEP:
        dx_free(c->kept); /* never more than one */
        c->kept = dx_msg_take_ptr(msg);
        KT_CHECK(msg->ptr == NULL);
        return DX_SRV_NOREPLY;
    default: /* T_DROP and others: the runtime frees the message */
        return DX_SRV_NOREPLY;
    }
}

static dx_srv_ret c_info(void *state, dx_msg *msg, dx_term **stop_reason)
{
    (void)state;
    (void)msg;
    (void)stop_reason;
    atomic_fetch_add(&infos, 1);
    return DX_SRV_NOREPLY;
}

static void c_terminate(void *state, const dx_term *reason)
{
    counter *c = state;
    kt_fmt(reason, terminate_reason, sizeof terminate_reason);
    if (c->kept != NULL)
        count_ptr_free(c->kept);
    dx_pfree(c);
    if (atomic_load(&slow_terminate))
        dx_sleep(500);
    atomic_fetch_add(&terminate_calls, 1);
}

static const dx_server_ops counter_ops = {
    .name = "kt_counter",
    .init = c_init,
    .handle_call = c_call,
    .handle_cast = c_cast,
    .handle_info = c_info,
    .terminate = c_terminate,
};

static dx_pid start_counter(void)
{
    dx_pid pid = DX_NOPID;
    KT_CHECK_RC(dx_server_start(&counter_ops, (void *)(intptr_t)INIT_OK, NULL,
                                &pid, NULL),
                DX_OK);
    return pid;
}

/* Calls tag with an integer term; returns the integer reply or -1. */
static int64_t call_int(dx_pid s, int64_t tag, int64_t v, int *rc_out)
{
    dx_msg *req = dx_msg_new(tag);
    req->term = dx_int(v);
    dx_msg *rep = NULL;
    int rc = dx_call(s, req, 5000, &rep);
    if (rc_out != NULL)
        *rc_out = rc;
    int64_t r = rc == DX_OK ? int_of(rep) : -1;
    dx_msg_free(rep);
    return r;
}

static int cast_int(dx_pid s, int64_t tag, int64_t v)
{
    dx_msg *m = dx_msg_new(tag);
    m->term = dx_int(v);
    return dx_cast(s, m);
}

/* ---- start -------------------------------------------------------------- */

static void serve_body(void *arg)
{
    (void)arg;
    dx_pid s = start_counter();
    if (!KT_CHECK(dx_is_alive(s)))
        return;
    int rc;
    KT_CHECK_EQ(call_int(s, T_GET, 0, &rc), 0);
    KT_CHECK_RC(rc, DX_OK);
    KT_CHECK_RC(cast_int(s, T_ADD, 5), DX_OK);
    KT_CHECK_EQ(call_int(s, T_ADD, 10, NULL), 15);
    dx_msg *rep = NULL;
    KT_CHECK_RC(dx_call(s, dx_msg_new(T_GET), DX_INFINITY, &rep), DX_OK);
    KT_CHECK_EQ(int_of(rep), 15);
    KT_CHECK_EQ(rep == NULL ? 0 : rep->kind, DX_MSG_REPLY);
    dx_msg_free(rep);
    /* Plain messages go to handle_info. */
    KT_CHECK_RC(dx_send_tag(s, 100), DX_OK);
    KT_CHECK_RC(dx_send_tag(s, 101), DX_OK);
    KT_CHECK_EQ(call_int(s, T_GET, 0, NULL), 15);
    KT_CHECK_EQ(atomic_load(&infos), 2);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(s, &info), DX_OK))
        KT_CHECK(strstr(info.label, "kt_counter") != NULL);
    /* The calls left no monitor behind on the caller. */
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK)) {
        KT_CHECK_EQ(info.monitors, 0);
        KT_CHECK_EQ(info.mailbox_len, 0);
    }
    dx_ref r;
    KT_CHECK_RC(dx_monitor(s, &r), DX_OK);
    KT_CHECK_RC(dx_server_stop(s, NULL, 5000), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 5000), "normal");
}

Test(server, start_then_call_cast_and_info_reach_the_callbacks, .timeout = 30)
{
    kt_body_test(2, serve_body, NULL);
    cr_expect_eq(atomic_load(&terminate_calls), 1);
    cr_expect_str_eq(terminate_reason, "normal");
}

static size_t base_count;

static void init_fail_body(void *arg)
{
    (void)arg;
    dx_pid s = DX_NOPID;
    dx_term *why = NULL;
    KT_CHECK_RC(dx_server_start(&counter_ops, (void *)(intptr_t)INIT_FAIL, NULL,
                                &s, &why),
                DX_EINVAL);
    KT_CHECK_REASON_ATOM(why, "bad_arg");
    /* No reason wanted: still the code. */
    KT_CHECK_RC(dx_server_start(&counter_ops, (void *)(intptr_t)INIT_FAIL, NULL,
                                NULL, NULL),
                DX_EINVAL);
    KT_CHECK_RC(dx_server_start(&counter_ops, (void *)(intptr_t)INIT_CRASH,
                                NULL, &s, NULL),
                DX_EDOWN);
    dx_server_opts o = {.timeout_ms = 50};
    KT_CHECK_RC(dx_server_start(&counter_ops, (void *)(intptr_t)INIT_SLOW, &o,
                                &s, NULL),
                DX_ETIMEDOUT);
}

Test(server, init_failure_crash_and_timeout_fail_the_start, .timeout = 30)
{
    kt_start(2);
    base_count = dx_process_count();
    kt_run(init_fail_body, NULL);
    /* The timed-out server was killed: nothing is left. */
    KT_HOST_WAIT_UNTIL(dx_process_count() == base_count, 5000);
    cr_expect_eq(dx_process_count(), base_count);
    kt_stop();
    kt_assert_clean();
    cr_expect_eq(atomic_load(&terminate_calls), 0);
}

Test(server, start_from_a_host_thread_returns_enotproc, .timeout = 30)
{
    kt_start(1);
    dx_pid s = DX_NOPID;
    cr_expect_eq(dx_server_start(&counter_ops, (void *)(intptr_t)INIT_OK, NULL,
                                 &s, NULL),
                 DX_ENOTPROC);
    dx_pid p;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &p), DX_OK);
    dx_msg *rep = NULL;
    cr_expect_eq(dx_call(p, dx_msg_new(T_GET), 100, &rep), DX_ENOTPROC);
    cr_expect_eq(dx_server_stop(p, NULL, 100), DX_ENOTPROC);
    cr_expect(dx_is_alive(p));
    kt_stop();
}

/* ---- call timeouts and late replies ------------------------------------- */

static void late_reply_body(void *arg)
{
    (void)arg;
    dx_pid s = start_counter();
    dx_msg *req = dx_msg_new(T_SLOW);
    req->term = dx_int(200);
    dx_msg *rep = NULL;
    KT_CHECK_RC(dx_call(s, req, 50, &rep), DX_ETIMEDOUT);
    KT_CHECK(rep == NULL);
    /* The server handles calls in order: once this one is answered, the
     * late reply to the slow one has been sent. */
    int rc;
    KT_CHECK_EQ(call_int(s, T_GET, 0, &rc), 0);
    KT_CHECK_RC(rc, DX_OK);
    dx_msg *m = NULL;
    KT_CHECK_RC(dx_receive_any(100, &m), DX_ETIMEDOUT);
    dx_msg_free(m);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK)) {
        KT_CHECK_EQ(info.mailbox_len, 0);
        KT_CHECK_EQ(info.monitors, 0);
    }
    /* Same with a deferred reply released after the caller gave up. */
    req = dx_msg_new(T_DEFER);
    KT_CHECK_RC(dx_call(s, req, 30, &rep), DX_ETIMEDOUT);
    KT_CHECK_RC(cast_int(s, T_RELEASE, 0), DX_OK);
    KT_CHECK_EQ(call_int(s, T_GET, 0, NULL), 0);
    KT_CHECK_RC(dx_receive_any(100, &m), DX_ETIMEDOUT);
    KT_CHECK_RC(dx_server_stop(s, NULL, 5000), DX_OK);
}

Test(server, call_timeout_returns_etimedout_and_the_late_reply_is_dropped,
     .timeout = 30)
{
    kt_body_test(2, late_reply_body, NULL);
}

/* ---- deferred replies --------------------------------------------------- */

static dx_pid the_server;

static void releaser(void *arg)
{
    (void)arg;
    dx_sleep(20);
    cast_int(the_server, T_RELEASE, 0);
}

static void deferred_body(void *arg)
{
    (void)arg;
    the_server = start_counter();
    KT_CHECK_RC(dx_spawn(releaser, NULL, NULL), DX_OK);
    dx_msg *rep = NULL;
    if (KT_CHECK_RC(dx_call(the_server, dx_msg_new(T_DEFER), 5000, &rep),
                    DX_OK)) {
        KT_CHECK_EQ(int_of(rep), 99);
        dx_msg_free(rep);
    }
    KT_CHECK_RC(atomic_load(&reply_rc), DX_OK);
    KT_CHECK_RC(dx_server_stop(the_server, NULL, 5000), DX_OK);
}

Test(server, a_deferred_reply_with_dx_reply_reaches_the_caller, .timeout = 30)
{
    kt_body_test(2, deferred_body, NULL);
}

static void deferring_caller(void *arg)
{
    (void)arg;
    dx_msg *rep = NULL;
    dx_call(the_server, dx_msg_new(T_DEFER), DX_INFINITY, &rep);
    dx_msg_free(rep);
}

static void reply_dead_body(void *arg)
{
    (void)arg;
    the_server = start_counter();
    dx_pid c;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_monitor(deferring_caller, NULL, &c, &r), DX_OK);
    /* Once the caller waits, its request is queued; a call of ours queued
     * behind it returns once the server holds the pending call. */
    dx_proc_info info = {0};
    int64_t deadline = dx_now_ms() + 10000;
    while (dx_now_ms() < deadline && !(dx_process_info(c, &info) == DX_OK &&
                                       info.status == DX_PROC_WAITING))
        dx_sleep(1);
    KT_CHECK_EQ(info.status, DX_PROC_WAITING);
    KT_CHECK_EQ(call_int(the_server, T_GET, 0, NULL), 0);
    KT_CHECK_RC(dx_kill(c), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 5000), "killed");
    KT_CHECK_RC(cast_int(the_server, T_RELEASE, 0), DX_OK);
    KT_CHECK_EQ(call_int(the_server, T_GET, 0, NULL), 0);
    KT_CHECK_RC(atomic_load(&reply_rc), DX_ENOPROC);
    KT_CHECK_RC(dx_server_stop(the_server, NULL, 5000), DX_OK);
}

Test(server, dx_reply_to_a_dead_caller_returns_enoproc, .timeout = 30)
{
    kt_body_test(2, reply_dead_body, NULL);
}

/* ---- stopping ----------------------------------------------------------- */

static void stop_call_body(void *arg)
{
    (void)arg;
    dx_pid s = start_counter();
    dx_ref r;
    KT_CHECK_RC(dx_monitor(s, &r), DX_OK);
    dx_msg *rep = NULL;
    if (KT_CHECK_RC(dx_call(s, dx_msg_new(T_STOP), 5000, &rep), DX_OK)) {
        KT_CHECK(dx_is_atom(rep->term, "ok_stopping"));
        dx_msg_free(rep);
    }
    KT_CHECK_REASON_ATOM(kt_await_down(r, 5000), "stopped_by_call");
    KT_CHECK_EQ(atomic_load(&terminate_calls), 1);
}

Test(server, srv_stop_from_handle_call_replies_then_terminates_with_reason,
     .timeout = 30)
{
    kt_body_test(2, stop_call_body, NULL);
    cr_expect_str_eq(terminate_reason, "stopped_by_call");
}

static void stop_cast_body(void *arg)
{
    (void)arg;
    dx_pid s = start_counter();
    dx_ref r;
    KT_CHECK_RC(dx_monitor(s, &r), DX_OK);
    KT_CHECK_RC(cast_int(s, T_CAST_STOP, 0), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 5000), "cast_stop");
    KT_CHECK_EQ(atomic_load(&terminate_calls), 1);
}

Test(server, srv_stop_from_handle_cast_terminates_with_reason, .timeout = 30)
{
    kt_body_test(2, stop_cast_body, NULL);
    cr_expect_str_eq(terminate_reason, "cast_stop");
}

static void server_stop_body(void *arg)
{
    (void)arg;
    dx_pid s = start_counter();
    dx_ref r;
    KT_CHECK_RC(dx_monitor(s, &r), DX_OK);
    KT_CHECK_RC(dx_server_stop(s, dx_atom("bye"), 5000), DX_OK);
    /* Terminate ran before dx_server_stop returned. */
    KT_CHECK_EQ(atomic_load(&terminate_calls), 1);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 5000), "bye");
    KT_CHECK(!dx_is_alive(s));
    KT_CHECK_RC(dx_server_stop(s, NULL, 1000), DX_ENOPROC);
}

Test(server, server_stop_runs_terminate_with_the_reason, .timeout = 30)
{
    kt_body_test(2, server_stop_body, NULL);
    cr_expect_str_eq(terminate_reason, "bye");
}

static void server_stop_slow_body(void *arg)
{
    (void)arg;
    atomic_store(&slow_terminate, 1);
    dx_pid s = start_counter();
    dx_ref r;
    KT_CHECK_RC(dx_monitor(s, &r), DX_OK);
    KT_CHECK_RC(dx_server_stop(s, NULL, 50), DX_ETIMEDOUT);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 5000), "normal");
    KT_CHECK_EQ(kt_drain(), 0);
}

Test(server, server_stop_times_out_while_terminate_runs, .timeout = 30)
{
    kt_body_test(2, server_stop_slow_body, NULL);
    cr_expect_eq(atomic_load(&terminate_calls), 1);
}

static dx_pid trapping_server;

static void parent_of_server(void *arg)
{
    (void)arg;
    dx_server_opts o = {.link = true, .trap_exit = true};
    KT_CHECK_RC(dx_server_start(&counter_ops, (void *)(intptr_t)INIT_OK, &o,
                                &trapping_server, NULL),
                DX_OK);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.links, 1);
    if (KT_CHECK_RC(dx_process_info(trapping_server, &info), DX_OK))
        KT_CHECK(info.trap_exit);
    dx_exit_self(dx_atom("parent_gone"));
}

static void parent_exit_body(void *arg)
{
    (void)arg;
    dx_pid p;
    dx_ref pr;
    KT_CHECK_RC(dx_spawn_monitor(parent_of_server, NULL, &p, &pr), DX_OK);
    KT_CHECK_REASON_ATOM(kt_await_down(pr, 5000), "parent_gone");
    /* The server may be gone already; its terminate is what counts. */
    int64_t deadline = dx_now_ms() + 5000;
    while (atomic_load(&terminate_calls) == 0 && dx_now_ms() < deadline)
        dx_sleep(1);
    KT_CHECK_EQ(atomic_load(&terminate_calls), 1);
    deadline = dx_now_ms() + 5000;
    while (dx_is_alive(trapping_server) && dx_now_ms() < deadline)
        dx_sleep(1);
    KT_CHECK(!dx_is_alive(trapping_server));
}

Test(server, a_trapping_linked_server_terminates_when_its_parent_exits,
     .timeout = 30)
{
    kt_body_test(2, parent_exit_body, NULL);
    cr_expect_str_eq(terminate_reason, "parent_gone");
}

/* ---- call failure paths ------------------------------------------------- */

static void call_dead_body(void *arg)
{
    (void)arg;
    dx_pid s = start_counter();
    KT_CHECK_RC(dx_server_stop(s, NULL, 5000), DX_OK);
    dx_msg *req = dx_msg_new(T_GET);
    req->ptr = dx_malloc(8);
    req->ptr_free = count_ptr_free;
    dx_msg *rep = NULL;
    KT_CHECK_RC(dx_call(s, req, 1000, &rep), DX_ENOPROC);
    KT_CHECK(rep == NULL);
    KT_CHECK_EQ(atomic_load(&ptr_frees), 1);
    KT_CHECK_RC(
        dx_call_named("kt_no_such_server", dx_msg_new(T_GET), 1000, &rep),
        DX_ENOPROC);
    KT_CHECK_EQ(kt_drain(), 0);
}

Test(server, call_to_a_dead_server_returns_enoproc_and_frees_the_request,
     .timeout = 30)
{
    kt_body_test(2, call_dead_body, NULL);
}

static void call_crash_body(void *arg)
{
    (void)arg;
    dx_pid s = start_counter();
    dx_msg *rep = NULL;
    KT_CHECK_RC(dx_call(s, dx_msg_new(T_CRASH), 5000, &rep), DX_EDOWN);
    KT_CHECK(!dx_is_alive(s));
    /* Terminate is not run on a crash; the DOWN of the call's own monitor
     * did not leak into the mailbox. */
    KT_CHECK_EQ(atomic_load(&terminate_calls), 0);
    KT_CHECK_EQ(kt_drain(), 0);
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.monitors, 0);
}

Test(server, a_server_dying_during_a_call_gives_edown, .timeout = 30)
{
    kt_body_test(2, call_crash_body, NULL);
}

static void call_self_body(void *arg)
{
    (void)arg;
    dx_msg *rep = NULL;
    KT_CHECK_RC(dx_call(dx_self(), dx_msg_new(T_GET), 1000, &rep), DX_EDEADLK);
    dx_pid s = start_counter();
    int rc;
    KT_CHECK_RC((int)call_int(s, T_CALL_SELF, 0, &rc), DX_EDEADLK);
    KT_CHECK_RC(rc, DX_OK);
    KT_CHECK_RC(dx_server_stop(s, NULL, 5000), DX_OK);
}

Test(server, calling_yourself_returns_edeadlk, .timeout = 30)
{
    kt_body_test(2, call_self_body, NULL);
}

static int bare_state;

static int bare_init(void *arg, void **state, dx_term **stop_reason)
{
    (void)arg;
    (void)stop_reason;
    *state = &bare_state; /* static: without terminate nothing frees it */
    return DX_OK;
}

static const dx_server_ops bare_ops = {
    .name = "kt_bare",
    .init = bare_init,
};

static void bare_body(void *arg)
{
    (void)arg;
    dx_pid s = DX_NOPID;
    KT_CHECK_RC(
        dx_server_start(&bare_ops, (void *)(intptr_t)INIT_OK, NULL, &s, NULL),
        DX_OK);
    dx_ref r;
    KT_CHECK_RC(dx_monitor(s, &r), DX_OK);
    /* Casts and infos without callbacks are dropped, not fatal. */
    KT_CHECK_RC(cast_int(s, T_ADD, 1), DX_OK);
    KT_CHECK_RC(dx_send_tag(s, 100), DX_OK);
    dx_proc_info info = {0};
    int64_t deadline = dx_now_ms() + 5000;
    while (dx_now_ms() < deadline &&
           !(dx_process_info(s, &info) == DX_OK && info.mailbox_len == 0 &&
             info.status == DX_PROC_WAITING))
        dx_sleep(1);
    KT_CHECK(dx_is_alive(s));
    dx_msg *rep = NULL;
    KT_CHECK_RC(dx_call(s, dx_msg_new(T_GET), 5000, &rep), DX_EDOWN);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 5000), "bad_call");
}

Test(server, without_handle_call_a_call_stops_the_server_with_bad_call,
     .timeout = 30)
{
    kt_body_test(2, bare_body, NULL);
}

/* ---- names, links, payload ownership ------------------------------------ */

static void named_body(void *arg)
{
    (void)arg;
    dx_server_opts o = {.name = "kt_srv", .link = true};
    dx_pid s = DX_NOPID;
    KT_CHECK_RC(
        dx_server_start(&counter_ops, (void *)(intptr_t)INIT_OK, &o, &s, NULL),
        DX_OK);
    KT_CHECK(dx_pid_eq(dx_whereis("kt_srv"), s));
    dx_proc_info info;
    if (KT_CHECK_RC(dx_process_info(dx_self(), &info), DX_OK))
        KT_CHECK_EQ(info.links, 1);
    dx_msg *req = dx_msg_new(T_ADD);
    req->term = dx_int(4);
    dx_msg *rep = NULL;
    if (KT_CHECK_RC(dx_call_named("kt_srv", req, 5000, &rep), DX_OK)) {
        KT_CHECK_EQ(int_of(rep), 4);
        dx_msg_free(rep);
    }
    dx_trap_exit(true); /* the linked server's normal exit is a message */
    KT_CHECK_RC(dx_server_stop(s, NULL, 5000), DX_OK);
    KT_CHECK(dx_pid_is_none(dx_whereis("kt_srv")));
    kt_drain();
}

Test(server, a_named_linked_server_answers_call_named, .timeout = 30)
{
    kt_body_test(2, named_body, NULL);
}

static void ownership_body(void *arg)
{
    (void)arg;
    dx_pid s = start_counter();
    /* Not taken by the callback: freed after it returns. */
    dx_msg *m = dx_msg_new(T_DROP);
    m->ptr = dx_malloc(8);
    m->ptr_free = count_ptr_free;
    KT_CHECK_RC(dx_cast(s, m), DX_OK);
    KT_CHECK_EQ(call_int(s, T_GET, 0, NULL), 0);
    KT_CHECK_EQ(atomic_load(&ptr_frees), 1);
    /* Taken: the server owns it until terminate frees it. */
    m = dx_msg_new(T_KEEP);
    m->ptr = dx_malloc(8);
    m->ptr_free = count_ptr_free;
    KT_CHECK_RC(dx_cast(s, m), DX_OK);
    KT_CHECK_EQ(call_int(s, T_GET, 0, NULL), 0);
    KT_CHECK_EQ(atomic_load(&ptr_frees), 1);
    KT_CHECK_RC(dx_server_stop(s, NULL, 5000), DX_OK);
    KT_CHECK_EQ(atomic_load(&ptr_frees), 2);
}

Test(server, callbacks_own_the_payloads_they_take, .timeout = 30)
{
    kt_body_test(2, ownership_body, NULL);
}

static atomic_int host_ready;

static void host_cast_body(void *arg)
{
    (void)arg;
    the_server = start_counter();
    atomic_store(&host_ready, 1);
    dx_msg *m = NULL;
    if (KT_CHECK_RC(dx_receive_tag(1, 10000, &m), DX_OK))
        dx_msg_free(m);
    KT_CHECK_EQ(call_int(the_server, T_GET, 0, NULL), 3);
    KT_CHECK_RC(dx_server_stop(the_server, NULL, 5000), DX_OK);
}

Test(server, cast_works_from_a_host_thread, .timeout = 30)
{
    kt_start(2);
    dx_pid body;
    cr_assert_eq(dx_spawn(host_cast_body, NULL, &body), DX_OK);
    KT_HOST_WAIT_UNTIL(atomic_load(&host_ready), 10000);
    cr_assert(atomic_load(&host_ready));
    cr_expect_eq(cast_int(the_server, T_ADD, 3), DX_OK);
    cr_expect_eq(dx_send_tag(body, 1), DX_OK);
    kt_host_join(body);
    kt_stop();
    kt_assert_clean();
}

Test(server, a_cast_of_nothing_or_with_a_negative_tag_is_einval, .timeout = 30)
{
    kt_start(1);
    dx_pid a;
    cr_assert_eq(dx_spawn(kt_wait_msg_fn, NULL, &a), DX_OK);
    cr_expect_eq(dx_cast(a, NULL), DX_EINVAL);
    /* Negative tags are the runtime's own; the message is freed. */
    cr_expect_eq(dx_cast(a, dx_msg_new(-5)), DX_EINVAL);
    cr_assert_eq(dx_send_tag(a, 1), DX_OK);
    kt_host_join(a);
    kt_stop();
}
