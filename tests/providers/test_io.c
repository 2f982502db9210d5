/*
 * test_io.c — the I/O loop bridge: work handed over with dx_io_call runs on
 * the I/O thread, once, in submission order, before dx_io_stop returns; stop
 * hooks run in reverse order and close their handles; start and stop are
 * idempotent and the loop starts again lazily after a stop, though never
 * for a post (dx_io_post_on); with several
 * lanes, each is a thread of its own with its own order and stop hooks.
 *
 * The bridge does not need the actor runtime, so these tests use host
 * threads only.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <stdatomic.h>
#include <time.h>
#include <uv.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/io.h"

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* ---- order and thread ---- */

#define N_ORDER 200
static int order_seen[N_ORDER];
static atomic_int order_n;
static atomic_int off_loop;

static void record(void *arg)
{
    int i = (int)(intptr_t)arg;
    if (!dx_io_on_loop_thread() || dx_io_loop() == NULL)
        atomic_fetch_add(&off_loop, 1);
    int k = atomic_fetch_add(&order_n, 1);
    if (k < N_ORDER)
        order_seen[k] = i;
}

Test(io, calls_run_on_the_loop_thread_in_submission_order, .timeout = 20)
{
    atomic_store(&order_n, 0);
    atomic_store(&off_loop, 0);
    cr_assert_null(dx_io_loop(), "no loop off the I/O thread");
    cr_assert_not(dx_io_on_loop_thread());
    for (int i = 0; i < N_ORDER; i++)
        cr_assert_eq(dx_io_call(record, (void *)(intptr_t)i), DX_OK);
    cr_assert(dx_io_running(), "the first call starts the loop");
    cr_assert_eq(dx_io_stop(), DX_OK);
    /* stop runs everything already queued before it returns */
    cr_assert_eq(atomic_load(&order_n), N_ORDER);
    cr_assert_eq(atomic_load(&off_loop), 0);
    for (int i = 0; i < N_ORDER; i++)
        cr_assert_eq(order_seen[i], i, "call %d ran out of order", i);
    cr_assert_not(dx_io_running());
}

Test(io, call_rejects_a_null_function, .timeout = 20)
{
    cr_assert_eq(dx_io_call(NULL, NULL), DX_EINVAL);
    cr_assert_not(dx_io_running(), "a refused call starts nothing");
}

/* ---- many submitting threads ---- */

#define N_THREADS 4
#define N_PER 2000
static atomic_int per_thread_last[N_THREADS];
static atomic_int disorder;
static atomic_int total;

static void counted(void *arg)
{
    intptr_t v = (intptr_t)arg;
    int t = (int)(v / N_PER), i = (int)(v % N_PER);
    if (atomic_load(&per_thread_last[t]) != i - 1)
        atomic_fetch_add(&disorder, 1);
    atomic_store(&per_thread_last[t], i);
    atomic_fetch_add(&total, 1);
}

static void *submitter(void *arg)
{
    intptr_t t = (intptr_t)arg;
    for (int i = 0; i < N_PER; i++)
        while (dx_io_call(counted, (void *)(t * N_PER + i)) != DX_OK)
            sleep_ms(1);
    return NULL;
}

Test(io, calls_from_many_threads_all_run_in_each_threads_order, .timeout = 30)
{
    for (int t = 0; t < N_THREADS; t++)
        atomic_store(&per_thread_last[t], -1);
    atomic_store(&disorder, 0);
    atomic_store(&total, 0);
    cr_assert_eq(dx_io_start(), DX_OK);
    pthread_t th[N_THREADS];
    for (intptr_t t = 0; t < N_THREADS; t++)
        cr_assert_eq(pthread_create(&th[t], NULL, submitter, (void *)t), 0);
    for (int t = 0; t < N_THREADS; t++)
        pthread_join(th[t], NULL);
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(atomic_load(&total), N_THREADS * N_PER);
    cr_assert_eq(atomic_load(&disorder), 0);
}

/* ---- lifecycle ---- */

Test(io, start_and_stop_are_idempotent_and_the_loop_restarts, .timeout = 20)
{
    cr_assert_eq(dx_io_stop(), DX_OK, "stop when stopped is fine");
    cr_assert_eq(dx_io_start(), DX_OK);
    cr_assert_eq(dx_io_start(), DX_OK, "start when running is fine");
    cr_assert(dx_io_running());
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_not(dx_io_running());
    atomic_store(&order_n, 0);
    cr_assert_eq(dx_io_call(record, (void *)(intptr_t)0), DX_OK);
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(atomic_load(&order_n), 1, "the loop came back lazily");
}

/* Posting is for work that only matters while the I/O runs (closing idle
 * connections): it runs like a call when the loop runs, and is refused,
 * without starting anything, when it does not. */
Test(io, a_post_never_starts_the_loop, .timeout = 20)
{
    cr_assert_eq(dx_io_stop(), DX_OK);
    atomic_store(&order_n, 0);
    cr_assert_eq(dx_io_post_on(0, record, (void *)(intptr_t)0), DX_ESTATE);
    cr_assert_not(dx_io_running(), "a post started the loop");
    cr_assert_eq(dx_io_post_on(0, NULL, NULL), DX_EINVAL);
    cr_assert_eq(dx_io_start(), DX_OK);
    cr_assert_eq(dx_io_post_on(0, record, (void *)(intptr_t)1), DX_OK);
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(atomic_load(&order_n), 1, "only the post made while running");
    cr_assert_eq(order_seen[0], 1);
    cr_assert_eq(dx_io_post_on(0, record, (void *)(intptr_t)2), DX_ESTATE);
    cr_assert_not(dx_io_running());
}

/* ---- lanes ---- */

#define N_LANE_CALLS 60
static int lane_seen[N_LANE_CALLS];
static pthread_t lane_thread[N_LANE_CALLS];
static atomic_int lane_calls;
static atomic_int lane_hooks;
static _Atomic int hook_lane[4] = {-2, -2, -2, -2};

static void lane_hook(void *arg)
{
    int lane = (int)(intptr_t)arg;
    if (dx_io_lane() == lane)
        atomic_store(&hook_lane[lane], lane);
    atomic_fetch_add(&lane_hooks, 1);
}

static void note_lane(void *arg)
{
    int i = (int)(intptr_t)arg;
    lane_seen[i] = dx_io_lane();
    lane_thread[i] = pthread_self();
    /* Each lane's first call registers a hook on that lane. */
    if (i < 3)
        dx_io_at_stop(lane_hook, (void *)(intptr_t)dx_io_lane());
    atomic_fetch_add(&lane_calls, 1);
}

Test(io, each_lane_is_a_thread_of_its_own, .timeout = 20)
{
    cr_assert_eq(dx_io_set_threads(DX_IO_MAX_THREADS + 1), DX_EINVAL);
    cr_assert_eq(dx_io_set_threads(3), DX_OK);
    cr_assert_eq(dx_io_threads(), 0, "nothing runs before the first use");
    cr_assert_eq(dx_io_lane(), -1);
    for (int i = 0; i < N_LANE_CALLS; i++)
        cr_assert_eq(dx_io_call_on((unsigned)i, note_lane, (void *)(intptr_t)i),
                     DX_OK);
    cr_assert_eq(dx_io_threads(), 3);
    cr_assert_eq(dx_io_set_threads(1), DX_ESTATE, "not while running");
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(atomic_load(&lane_calls), N_LANE_CALLS);
    for (int i = 0; i < N_LANE_CALLS; i++) {
        cr_assert_eq(lane_seen[i], i % 3, "call %d ran on lane %d", i,
                     lane_seen[i]);
        cr_assert(pthread_equal(lane_thread[i], lane_thread[i % 3]),
                  "one lane, one thread");
    }
    cr_assert_not(pthread_equal(lane_thread[0], lane_thread[1]));
    cr_assert_not(pthread_equal(lane_thread[1], lane_thread[2]));
    cr_assert_not(pthread_equal(lane_thread[0], lane_thread[2]));
    cr_assert_eq(atomic_load(&lane_hooks), 3, "every lane ran its hook");
    for (int l = 0; l < 3; l++)
        cr_assert_eq(atomic_load(&hook_lane[l]), l, "hook %d off its lane", l);
    cr_assert_eq(dx_io_threads(), 0);

    /* The default again, and dx_io_call is lane 0. */
    cr_assert_eq(dx_io_set_threads(0), DX_OK);
    atomic_store(&lane_calls, 0);
    lane_seen[10] = -2;
    cr_assert_eq(dx_io_call(note_lane, (void *)(intptr_t)10), DX_OK);
    cr_assert_geq(dx_io_threads(), 1);
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(lane_seen[10], 0);
}

Test(io, at_stop_is_refused_off_the_loop_thread, .timeout = 20)
{
    cr_assert_eq(dx_io_at_stop(record, NULL), DX_ESTATE);
}

/* ---- stop hooks and libuv handles ---- */

static int hook_order[3];
static atomic_int hook_n;
static atomic_int timer_fired;
static atomic_int timer_closed;
static atomic_int nested_ran;
static atomic_int nested_reentrant;
static atomic_int in_call;
static uv_timer_t timer;

static void hook(void *arg)
{
    int k = atomic_fetch_add(&hook_n, 1);
    if (k < 3)
        hook_order[k] = (int)(intptr_t)arg;
}

static void timer_closed_cb(uv_handle_t *h)
{
    (void)h;
    atomic_store(&timer_closed, 1);
}

static void close_timer_hook(void *arg)
{
    hook(arg);
    uv_close((uv_handle_t *)&timer, timer_closed_cb);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
    atomic_fetch_add(&timer_fired, 1);
}

static void nested(void *arg)
{
    (void)arg;
    if (atomic_load(&in_call))
        atomic_store(&nested_reentrant, 1);
    atomic_store(&nested_ran, 1);
}

static void setup_on_loop(void *arg)
{
    (void)arg;
    atomic_store(&in_call, 1);
    uv_timer_init(dx_io_loop(), &timer);
    uv_timer_start(&timer, on_tick, 5, 5);
    dx_io_at_stop(hook, (void *)(intptr_t)1);
    dx_io_at_stop(close_timer_hook, (void *)(intptr_t)2);
    dx_io_at_stop(hook, (void *)(intptr_t)3);
    /* From the loop thread: queued for later, never run re-entrantly. */
    dx_io_call(nested, NULL);
    atomic_store(&in_call, 0);
}

Test(io, stop_hooks_run_in_reverse_order_and_close_handles, .timeout = 20)
{
    atomic_store(&hook_n, 0);
    atomic_store(&timer_fired, 0);
    atomic_store(&timer_closed, 0);
    atomic_store(&nested_ran, 0);
    atomic_store(&nested_reentrant, 0);
    cr_assert_eq(dx_io_call(setup_on_loop, NULL), DX_OK);
    for (int i = 0; i < 2000 && atomic_load(&timer_fired) < 3; i++)
        sleep_ms(1);
    cr_assert_geq(atomic_load(&timer_fired), 3, "libuv timers run");
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(atomic_load(&hook_n), 3);
    cr_assert_eq(hook_order[0], 3);
    cr_assert_eq(hook_order[1], 2);
    cr_assert_eq(hook_order[2], 1);
    cr_assert_eq(atomic_load(&timer_closed), 1);
    cr_assert_eq(atomic_load(&nested_ran), 1);
    cr_assert_eq(atomic_load(&nested_reentrant), 0);

    /* Hooks belong to one life of the loop: a restart runs none. */
    atomic_store(&hook_n, 0);
    cr_assert_eq(dx_io_start(), DX_OK);
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_eq(atomic_load(&hook_n), 0);
}

/* A handle a module forgot to close is closed at stop, not leaked (the
 * ASan build checks that nothing leaks). */
static uv_timer_t forgotten;

static void forget_a_timer(void *arg)
{
    (void)arg;
    uv_timer_init(dx_io_loop(), &forgotten);
    uv_timer_start(&forgotten, on_tick, 100000, 0);
}

Test(io, stop_closes_handles_left_open, .timeout = 20)
{
    cr_assert_eq(dx_io_call(forget_a_timer, NULL), DX_OK);
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_not(dx_io_running());
}

/* ---- hosted: the host's loop and thread ---- */

/* Whether a thread named dx-io exists in this OS process. */
static bool io_thread_exists(void)
{
    bool found = false;
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        char path[300], name[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(name, sizeof name, f) && strncmp(name, "dx-io", 5) == 0)
                found = true;
            fclose(f);
        }
    }
    if (d)
        closedir(d);
    return found;
}

static pthread_t host_thread;
static atomic_int hosted_ran, hosted_off_thread;
static uv_timer_t module_timer;
static atomic_int module_timer_closed;

static void module_timer_closed_cb(uv_handle_t *h)
{
    (void)h;
    atomic_store(&module_timer_closed, 1);
}

static void close_module_timer(void *arg)
{
    (void)arg;
    uv_close((uv_handle_t *)&module_timer, module_timer_closed_cb);
}

static void hosted_work(void *arg)
{
    if (!pthread_equal(pthread_self(), host_thread) || dx_io_loop() != arg)
        atomic_fetch_add(&hosted_off_thread, 1);
    if (atomic_fetch_add(&hosted_ran, 1) == 0) {
        /* A module's handle on the host's loop, closed by its stop hook. */
        uv_timer_init(dx_io_loop(), &module_timer);
        uv_timer_start(&module_timer, on_tick, 100000, 0);
        dx_io_at_stop(close_module_timer, NULL);
    }
}

static void *submit_from_thread(void *loop)
{
    for (int i = 0; i < 50; i++)
        dx_io_call(hosted_work, loop);
    return NULL;
}

Test(io, hosted_work_runs_on_the_hosts_loop_and_stop_spares_its_handles,
     .timeout = 20)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_timer_t host_timer; /* the host's own handle */
    uv_timer_init(&loop, &host_timer);
    uv_timer_start(&host_timer, on_tick, 100000, 0);
    host_thread = pthread_self();
    atomic_store(&hosted_ran, 0);
    atomic_store(&hosted_off_thread, 0);
    atomic_store(&module_timer_closed, 0);
    cr_assert_eq(dx_io_start_hosted(NULL), DX_EINVAL);
    cr_assert_eq(dx_io_start_hosted(&loop), DX_OK);
    cr_assert_eq(dx_io_start_hosted(&loop), DX_ESTATE);
    cr_assert(dx_io_on_loop_thread());
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, submit_from_thread, &loop), 0);
    for (int i = 0; i < 5000 && atomic_load(&hosted_ran) < 50; i++)
        uv_run(&loop, UV_RUN_NOWAIT), sleep_ms(1);
    pthread_join(t, NULL);
    cr_assert_eq(atomic_load(&hosted_ran), 50);
    cr_assert_eq(atomic_load(&hosted_off_thread), 0);
    cr_assert_not(io_thread_exists(), "no I/O thread of its own");

    /* Stop on the loop thread runs the hooks and closes what dspex opened,
     * and nothing of the host's. */
    cr_assert_eq(dx_io_stop(), DX_OK);
    cr_assert_not(dx_io_running());
    cr_assert_not(dx_io_on_loop_thread());
    cr_assert_not(uv_is_closing((uv_handle_t *)&host_timer));
    uv_close((uv_handle_t *)&host_timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once every handle closed */
    cr_assert_eq(atomic_load(&module_timer_closed), 1);
    cr_assert_eq(uv_loop_close(&loop), 0);
    /* Afterwards the threaded loop starts as before. */
    cr_assert_eq(dx_io_start(), DX_OK);
    cr_assert_eq(dx_io_stop(), DX_OK);
}

static void *stop_from_thread(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)dx_io_stop();
}

Test(io, a_hosted_loop_is_stopped_only_on_its_thread, .timeout = 20)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(dx_io_start_hosted(&loop), DX_OK);
    pthread_t t;
    void *rc = NULL;
    cr_assert_eq(pthread_create(&t, NULL, stop_from_thread, NULL), 0);
    pthread_join(t, &rc);
    cr_assert_eq((int)(intptr_t)rc, DX_ESTATE);
    cr_assert(dx_io_running());
    cr_assert_eq(dx_io_stop(), DX_OK);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
}
