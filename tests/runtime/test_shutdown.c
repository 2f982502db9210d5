/*
 * test_shutdown.c — dx_runtime_stop with work still going on: processes
 * spinning on dx_yield or send/receive, waiting in receive, sleep or a call,
 * trapping exits, never started, spawning more; undelivered messages and
 * spawn arguments freed; a host thread waiting on a process released; the
 * runtime usable again afterwards.
 */
#include <pthread.h>

#include "dspex/server.h"
#include "kernel_test_util.h"

static atomic_int arg_frees;
static atomic_int ptr_frees;

static void count_arg_free(void *arg)
{
    (void)arg;
    atomic_fetch_add(&arg_frees, 1);
}

static void count_ptr_free(void *p)
{
    atomic_fetch_add(&ptr_frees, 1);
    dx_free(p);
}

static int spawn_counted(dx_proc_fn fn, const dx_spawn_opts *base, dx_pid *pid)
{
    dx_spawn_opts o = base != NULL ? *base : (dx_spawn_opts){0};
    o.arg_free = count_arg_free;
    return dx_spawn_opt(fn, NULL, &o, pid, NULL);
}

static void yield_loop(void *arg)
{
    (void)arg;
    for (;;)
        dx_yield();
}

static void send_receive_loop(void *arg)
{
    (void)arg;
    for (;;) {
        dx_send_tag(dx_self(), 1);
        dx_msg *m = NULL;
        if (dx_receive_tag(1, 0, &m) == DX_OK)
            dx_msg_free(m);
    }
}

static void sleep_loop(void *arg)
{
    (void)arg;
    for (;;)
        dx_sleep(3600 * 1000);
}

static void finish_stop(int expected_frees)
{
    int64_t t0 = dx_now_ms();
    kt_stop();
    cr_log_info("dx_runtime_stop took %lld ms", (long long)(dx_now_ms() - t0));
    cr_expect(!dx_runtime_running());
    cr_expect_eq(dx_process_count(), 0);
    cr_expect_eq(atomic_load(&arg_frees), expected_frees,
                 "%d of %d processes ended", atomic_load(&arg_frees),
                 expected_frees);
}

Test(shutdown, stop_ends_processes_busy_with_yield_or_send_receive,
     .timeout = 60)
{
    kt_start(2);
    for (int i = 0; i < 50; i++)
        cr_assert_eq(spawn_counted(yield_loop, NULL, NULL), DX_OK);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(spawn_counted(send_receive_loop, NULL, NULL), DX_OK);
    kt_host_sleep_ms(50); /* let them all get going */
    finish_stop(70);
}

/* A server that never answers: its callers wait in dx_call forever. */
static int mute_init(void *arg, void **state, dx_term **stop_reason)
{
    (void)arg;
    (void)stop_reason;
    *state = NULL;
    return DX_OK;
}

static dx_srv_ret mute_call(void *state, dx_msg *req, dx_from from,
                            dx_msg **reply, dx_term **stop_reason)
{
    (void)state;
    (void)req;
    (void)from;
    (void)reply;
    (void)stop_reason;
    return DX_SRV_NOREPLY;
}

static const dx_server_ops mute_ops = {
    .name = "kt_mute",
    .init = mute_init,
    .handle_call = mute_call,
};

static dx_pid mute;
static atomic_int mute_ready;

static void mute_owner(void *arg)
{
    (void)arg;
    KT_CHECK_RC(dx_server_start(&mute_ops, NULL, NULL, &mute, NULL), DX_OK);
    atomic_store(&mute_ready, 1);
    kt_park_fn(NULL);
}

static void stuck_caller(void *arg)
{
    (void)arg;
    dx_msg *rep = NULL;
    dx_call(mute, dx_msg_new(1), DX_INFINITY, &rep);
    dx_msg_free(rep);
    kt_park_fn(NULL);
}

static void timer_holder(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++) {
        dx_msg *m = dx_msg_new(INT64_MAX - 1);
        m->ptr = dx_malloc(8);
        m->ptr_free = count_ptr_free;
        dx_send_after(3600 * 1000, dx_self(), m, NULL);
    }
    kt_park_fn(NULL);
}

Test(shutdown, stop_ends_processes_waiting_in_receive_sleep_call_or_trapping,
     .timeout = 60)
{
    kt_start(2);
    cr_assert_eq(spawn_counted(mute_owner, NULL, NULL), DX_OK);
    KT_HOST_WAIT_UNTIL(atomic_load(&mute_ready), 10000);
    cr_assert(atomic_load(&mute_ready));
    int n = 1;
    dx_spawn_opts trapping = {.trap_exit = true};
    for (int i = 0; i < 10; i++, n += 5) {
        cr_assert_eq(spawn_counted(kt_park_fn, NULL, NULL), DX_OK);
        cr_assert_eq(spawn_counted(sleep_loop, NULL, NULL), DX_OK);
        cr_assert_eq(spawn_counted(stuck_caller, NULL, NULL), DX_OK);
        cr_assert_eq(spawn_counted(kt_park_fn, &trapping, NULL), DX_OK);
        cr_assert_eq(spawn_counted(yield_loop, &trapping, NULL), DX_OK);
    }
    cr_assert_eq(spawn_counted(timer_holder, NULL, NULL), DX_OK);
    n++;
    kt_host_sleep_ms(50);
    finish_stop(n);
    kt_assert_clean();
    cr_expect_eq(atomic_load(&ptr_frees), 5, "pending timer messages leaked");
}

static void hoarder(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100; i++)
        dx_send_ptr(dx_self(), 7, dx_malloc(16), count_ptr_free);
    kt_park_fn(NULL);
}

Test(shutdown, stop_frees_undelivered_messages, .timeout = 30)
{
    kt_start(1);
    dx_pid h;
    cr_assert_eq(spawn_counted(hoarder, NULL, &h), DX_OK);
    dx_proc_info info = {0};
    KT_HOST_WAIT_UNTIL(
        dx_process_info(h, &info) == DX_OK && info.mailbox_len == 100, 10000);
    cr_expect_eq(info.mailbox_len, 100);
    /* And some sent from the host to a process that never reads them. */
    for (int i = 0; i < 10; i++)
        cr_assert_eq(dx_send_ptr(h, 8, dx_malloc(16), count_ptr_free), DX_OK);
    finish_stop(1);
    cr_expect_eq(atomic_load(&ptr_frees), 110);
}

Test(shutdown, stop_ends_processes_that_never_started, .timeout = 30)
{
    kt_start(1);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(spawn_counted(yield_loop, NULL, NULL), DX_OK);
    finish_stop(100);
}

static atomic_int spawned_ok;

static void spawner(void *arg)
{
    (void)arg;
    for (int i = 0;; i++) {
        if (i < 20000 && spawn_counted(yield_loop, NULL, NULL) == DX_OK)
            atomic_fetch_add(&spawned_ok, 1);
        if (i % 16 == 0)
            dx_yield();
    }
}

Test(shutdown, stop_ends_processes_that_keep_spawning, .timeout = 60)
{
    kt_start(2);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(spawn_counted(spawner, NULL, NULL), DX_OK);
    kt_host_sleep_ms(100);
    kt_stop();
    cr_expect_eq(dx_process_count(), 0);
    /* The two spawners plus every child they made. A spawner ended inside
     * a dx_spawn that had already made its child did not count it. */
    int frees = atomic_load(&arg_frees) - 2;
    int made = atomic_load(&spawned_ok);
    cr_log_info("%d children made before stop", made);
    cr_expect(frees >= made && frees <= made + 2, "%d children made, %d ended",
              made, frees);
}

static atomic_int waiter_rc = 1;
static char waiter_reason[64];
static dx_pid waited;

static void *host_waiter(void *arg)
{
    (void)arg;
    dx_term *reason = NULL;
    atomic_store(&waiter_rc, dx_wait_exit(waited, -1, &reason));
    kt_fmt(reason, waiter_reason, sizeof waiter_reason);
    dx_term_free(reason);
    return NULL;
}

Test(shutdown, a_host_thread_waiting_on_a_process_is_released_by_stop,
     .timeout = 30)
{
    kt_start(1);
    cr_assert_eq(spawn_counted(kt_park_fn, NULL, &waited), DX_OK);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, host_waiter, NULL), 0);
    kt_host_sleep_ms(50);
    kt_stop();
    pthread_join(th, NULL);
    int rc = atomic_load(&waiter_rc);
    cr_expect(rc == DX_OK || rc == DX_ENOPROC, "dx_wait_exit gave %s",
              dx_err_name(rc));
    if (rc == DX_OK)
        cr_expect_str_eq(waiter_reason, "shutdown");
}

Test(shutdown, after_stop_spawn_fails_and_send_frees_the_message, .timeout = 30)
{
    kt_start(1);
    dx_pid p;
    cr_assert_eq(spawn_counted(kt_park_fn, NULL, &p), DX_OK);
    kt_stop();
    cr_expect_eq(spawn_counted(kt_park_fn, NULL, NULL), DX_ESTATE);
    int rc = dx_send_ptr(p, 1, dx_malloc(8), count_ptr_free);
    cr_expect(rc == DX_ENOPROC || rc == DX_ESTATE, "rc %s", dx_err_name(rc));
    cr_expect_eq(atomic_load(&ptr_frees), 1);
    cr_expect(!dx_is_alive(p));
    cr_expect_eq(atomic_load(&arg_frees), 1);
}

static void small_work(void *arg)
{
    (void)arg;
    dx_pid c;
    dx_ref r;
    KT_CHECK_RC(dx_spawn_monitor(kt_wait_msg_fn, NULL, &c, &r), DX_OK);
    dx_send_tag(c, 1);
    KT_CHECK_REASON_ATOM(kt_await_down(r, 10000), "normal");
}

Test(shutdown, the_runtime_works_again_after_a_busy_stop, .timeout = 60)
{
    for (int round = 0; round < 3; round++) {
        kt_start(2);
        for (int i = 0; i < 30; i++)
            cr_assert_eq(spawn_counted(send_receive_loop, NULL, NULL), DX_OK);
        kt_run(small_work, NULL);
        kt_stop();
    }
    kt_assert_clean();
    cr_expect_eq(atomic_load(&arg_frees), 90);
}
