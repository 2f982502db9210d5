/*
 * bench_restart.c — `runtime-bench restart <n>`: how long a supervisor takes
 * to replace a crashed worker.
 *
 * One one_for_one supervisor holds one permanent worker, a server
 * registered as "bench_worker". Each sample: kill the worker (untrappable),
 * then wait until its replacement has run init (it tells the driver), is
 * the pid registered under the name, and has answered a call. The sample
 * ends when the call returns. n samples; the line reports their p50 and p99
 * (nearest rank) in microseconds, in runtime_bench.c's RESULT format.
 *
 * The logger is off while it runs (the BEAM side runs with logger level
 * none), so the numbers are restarts, not formatting. The supervisor's
 * intensity is set above n: dspex keeps the restart window in a ring, so one
 * supervisor takes all n restarts at a constant cost per restart.
 */
#include <dspex/log.h>
#include <dspex/runtime.h>
#include <dspex/server.h>
#include <dspex/supervisor.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int dx_bench_restart(long n);

#define WORKER_NAME "bench_worker"
#define TAG_STARTED 7
#define TAG_PING 8
#define WAIT_MS 60000

static dx_pid driver;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int w_init(void *arg, void **state, dx_term **stop_reason)
{
    (void)arg;
    (void)stop_reason;
    *state = NULL;
    return dx_send_tag(driver, TAG_STARTED) == DX_OK ? DX_OK : DX_EINIT;
}

static dx_srv_ret w_call(void *state, dx_msg *request, dx_from from,
                         dx_msg **reply, dx_term **stop_reason)
{
    (void)state;
    (void)request;
    (void)from;
    (void)stop_reason;
    *reply = dx_msg_new(TAG_PING);
    return DX_SRV_REPLY;
}

static const dx_server_ops worker_ops = {
    .name = "bench_worker",
    .init = w_init,
    .handle_call = w_call,
};

static int w_start(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    dx_server_opts o = {.link = true, .name = WORKER_NAME};
    return dx_server_start(&worker_ops, NULL, &o, pid_out, NULL);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples (the BEAM side's rule). */
static double pct_us(const int64_t *sorted, long n, int p)
{
    long rank = ((long)p * n + 99) / 100;
    if (rank < 1)
        rank = 1;
    return (double)sorted[rank - 1] / 1000.0;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "runtime-bench: restart: %s: %s (%s)\n", what,
            dx_err_name(rc), dx_strerror(rc));
    return 1;
}

/* The new worker's start notice: its pid is the sender. */
static int await_started(dx_pid *pid)
{
    dx_msg *m = NULL;
    int rc = dx_receive_tag(TAG_STARTED, WAIT_MS, &m);
    if (rc != DX_OK)
        return rc;
    *pid = m->from;
    dx_msg_free(m);
    return DX_OK;
}

/* Kept out of line so the sample loop's frame stays small: the driver's
 * stack is copied each time it parks. */
static __attribute__((noinline)) int run(long n, int64_t *lat)
{
    dx_child_spec child = {
        .id = "worker", .start = w_start, .shutdown_ms = DX_SUP_BRUTAL_KILL};
    dx_sup_spec spec = {.strategy = DX_SUP_ONE_FOR_ONE,
                        .intensity = n > 1000000 ? 2000000000 : (int)n + 1,
                        .period_s = 1,
                        .children = &child,
                        .nchildren = 1};
    dx_pid sup, cur;
    int rc = dx_sup_start_link(&spec, &sup, NULL);
    if (rc != DX_OK)
        return fail("dx_sup_start_link", rc);
    if ((rc = await_started(&cur)) != DX_OK)
        return fail("first start", rc);

    for (long i = 0; i < n; i++) {
        int64_t t0 = now_ns();
        dx_kill(cur);
        dx_pid next;
        if ((rc = await_started(&next)) != DX_OK)
            return fail("waiting for the replacement", rc);
        if (!dx_pid_eq(dx_whereis(WORKER_NAME), next))
            return fail("replacement not registered", DX_ENOENT);
        dx_msg *reply = NULL;
        rc = dx_call(next, dx_msg_new(TAG_PING), WAIT_MS, &reply);
        if (rc != DX_OK)
            return fail("calling the replacement", rc);
        dx_msg_free(reply);
        lat[i] = now_ns() - t0;
        cur = next;
    }
    /* Every sample must have been one restart by the supervisor. */
    dx_sup_counts k;
    rc = dx_sup_count_children(sup, &k);
    if (rc != DX_OK)
        return fail("dx_sup_count_children", rc);
    if (k.restarts != (uint64_t)n) {
        fprintf(stderr, "runtime-bench: restart: %llu restarts, expected %ld\n",
                (unsigned long long)k.restarts, n);
        return 1;
    }
    rc = dx_sup_stop(sup, NULL, WAIT_MS);
    if (rc != DX_OK)
        return fail("dx_sup_stop", rc);
    return 0;
}

int dx_bench_restart(long n)
{
    if (n < 1)
        return 1;
    driver = dx_self();
    int64_t *lat = dx_malloc((size_t)n * sizeof *lat);
    if (lat == NULL)
        return fail("samples", DX_ENOMEM);
    dx_log_level old = dx_log_set_level(DX_LOG_NONE);
    int64_t t0 = now_ns();
    int status = run(n, lat);
    double secs = (double)(now_ns() - t0) / 1e9;
    dx_log_set_level(old);
    if (status == 0) {
        qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
        printf("RESULT sys=dspex bench=restart n=%ld time_s=%.6f rate=%.1f "
               "unit=restarts/s sched=%d p50_us=%.1f p99_us=%.1f\n",
               n, secs, secs > 0 ? (double)n / secs : 0.0,
               dx_runtime_schedulers(), pct_us(lat, n, 50), pct_us(lat, n, 99));
        fflush(stdout);
    }
    dx_free(lat);
    return status;
}
