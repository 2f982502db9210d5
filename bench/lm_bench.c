/*
 * lm_bench.c — cost of the LM client actor per call, against the local LM
 * server running in this same OS process (on its own thread).
 *
 *   lm-bench hit <n>      one caller, n identical completes after one
 *                         warm-up: every one a cache hit
 *   lm-bench miss <n>     one caller, n distinct completes through the
 *                         client, then n distinct plain dx_lm_call calls
 *                         (no client) as the baseline of the HTTP exchange
 *   lm-bench callers <n>  1,000 caller processes at once, each making
 *                         n/1000 distinct completes
 *
 * CPU is the whole process's (CLOCK_PROCESS_CPUTIME_ID), so it includes the
 * local server's thread and the I/O loop. For `miss` both measurements
 * include that same server work, so their difference is what the client
 * actor adds on top of the HTTP exchange.
 *
 * Prints one line:
 *   RESULT sys=dspex bench=lm_<mode> n=<n> time_s=.. rate=.. unit=calls/s
 *   cpu_us_per_call=.. [baseline_cpu_us_per_call=.. overhead_us=..]
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "dspex/lm.h"
#include "dspex/lm_call.h"
#include "dspex/lmserver.h"
#include "dspex/runtime.h"

#define N_CALLERS 1000
#define CALL_TIMEOUT_MS 120000
#define TAG_DONE 1

typedef enum { MODE_HIT, MODE_MISS, MODE_CALLERS } bench_mode;

/* What the measuring process fills in; read by main after it exits. */
typedef struct bench {
    bench_mode mode;
    long n;
    char url[128];
    double wall_s;
    double cpu_us_per_call;
    double base_cpu_us_per_call;
    double base_wall_s;
    long errors;
    dx_lm_client_stats stats;
    _Atomic int done;
} bench;

static bench B;

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static dx_lm_request *question(const char *fmt, long a, long b)
{
    char text[96];
    snprintf(text, sizeof text, fmt, a, b);
    dx_lm_request *req = dx_lm_request_new(NULL);
    if (req != NULL &&
        dx_lm_request_add_message(req, DX_LM_USER, text) != DX_OK) {
        dx_lm_request_free(req);
        return NULL;
    }
    return req;
}

/* The first failure is printed; the count tells the rest. */
static void report(int rc, const dx_lm_error *err)
{
    static atomic_flag said = ATOMIC_FLAG_INIT;
    if (!atomic_flag_test_and_set(&said))
        fprintf(stderr, "first failure: %s (%s %d: %s)\n", dx_err_name(rc),
                dx_lm_error_kind_name(err->kind), err->status, err->message);
}

/* One complete through the client; false on any failure. */
static bool complete(dx_pid client, const dx_lm_request *req)
{
    dx_lm_result *res = NULL;
    dx_lm_error err = {0};
    int rc = dx_lm_client_complete(client, req, CALL_TIMEOUT_MS, &res, &err);
    dx_lm_result_free(res);
    if (rc != DX_OK)
        report(rc, &err);
    return rc == DX_OK;
}

static void run_hit(dx_pid client)
{
    dx_lm_request *req = question("the same question %ld%ld", 0, 0);
    if (req == NULL || !complete(client, req)) {
        B.errors++;
        dx_lm_request_free(req);
        return;
    }
    double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double w0 = clock_s(CLOCK_MONOTONIC);
    for (long i = 0; i < B.n; i++)
        if (!complete(client, req))
            B.errors++;
    B.wall_s = clock_s(CLOCK_MONOTONIC) - w0;
    B.cpu_us_per_call =
        (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0) * 1e6 / (double)B.n;
    dx_lm_request_free(req);
}

/* The HTTP exchange alone: dx_lm_call from this process, no client. */
static void run_baseline(void)
{
    dx_lm_config *cfg = NULL;
    if (dx_lm_config_new("openai-compatible/bench", B.url, "sk-bench", &cfg) !=
        DX_OK) {
        B.errors++;
        return;
    }
    dx_lm_call_opts o = {.timeout_ms = CALL_TIMEOUT_MS};
    double c0 = 0, w0 = 0;
    /* call -1 is a warm-up (connection set-up), not measured */
    for (long i = -1; i < B.n; i++) {
        if (i == 0) {
            c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            w0 = clock_s(CLOCK_MONOTONIC);
        }
        dx_lm_request *req = question("baseline question %ld %ld", i, 0);
        dx_lm_response *resp = NULL;
        dx_lm_error err = {0};
        int rc = req ? dx_lm_call(cfg, req, &o, &resp, &err) : DX_ENOMEM;
        if (rc != DX_OK) {
            report(rc, &err);
            B.errors++;
        }
        dx_lm_response_free(resp);
        dx_lm_request_free(req);
    }
    B.base_wall_s = clock_s(CLOCK_MONOTONIC) - w0;
    B.base_cpu_us_per_call =
        (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0) * 1e6 / (double)B.n;
    dx_lm_config_free(cfg);
}

static void run_miss(dx_pid client)
{
    run_baseline();
    double c0 = 0, w0 = 0;
    for (long i = -1; i < B.n; i++) {
        if (i == 0) {
            c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            w0 = clock_s(CLOCK_MONOTONIC);
        }
        dx_lm_request *req = question("client question %ld %ld", i, 0);
        if (req == NULL || !complete(client, req))
            B.errors++;
        dx_lm_request_free(req);
    }
    B.wall_s = clock_s(CLOCK_MONOTONIC) - w0;
    B.cpu_us_per_call =
        (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0) * 1e6 / (double)B.n;
}

typedef struct caller {
    dx_pid client;
    dx_pid parent;
    long id;
    long k;
    long errors;
} caller;

static caller callers[N_CALLERS];

static void caller_main(void *arg)
{
    caller *c = arg;
    for (long j = 0; j < c->k; j++) {
        dx_lm_request *req = question("caller %ld question %ld", c->id, j);
        if (req == NULL || !complete(c->client, req))
            c->errors++;
        dx_lm_request_free(req);
    }
    dx_send_tag(c->parent, TAG_DONE);
}

static void run_callers(dx_pid client)
{
    long k = B.n / N_CALLERS;
    double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double w0 = clock_s(CLOCK_MONOTONIC);
    int started = 0;
    for (int i = 0; i < N_CALLERS; i++) {
        callers[i] =
            (caller){.client = client, .parent = dx_self(), .id = i, .k = k};
        dx_pid pid;
        if (dx_spawn(caller_main, &callers[i], &pid) == DX_OK)
            started++;
        else
            B.errors += k;
    }
    for (int i = 0; i < started; i++) {
        dx_msg *m;
        if (dx_receive_tag(TAG_DONE, CALL_TIMEOUT_MS * 2, &m) != DX_OK) {
            B.errors++;
            break;
        }
        dx_msg_free(m);
    }
    B.wall_s = clock_s(CLOCK_MONOTONIC) - w0;
    B.cpu_us_per_call = (clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0) * 1e6 /
                        (double)(k * N_CALLERS);
    for (int i = 0; i < started; i++)
        B.errors += callers[i].errors;
    B.n = k * N_CALLERS;
}

static void bench_main(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {.model = "openai-compatible/bench",
                    .base_url = B.url,
                    .api_key = "sk-bench"},
        .attempt_timeout_ms = CALL_TIMEOUT_MS,
    };
    dx_pid client;
    int rc = dx_lm_client_start(&o, NULL, &client);
    if (rc != DX_OK) {
        fprintf(stderr, "client start: %s\n", dx_err_name(rc));
        B.errors++;
        atomic_store(&B.done, 1);
        return;
    }
    switch (B.mode) {
    case MODE_HIT:
        run_hit(client);
        break;
    case MODE_MISS:
        run_miss(client);
        break;
    case MODE_CALLERS:
        run_callers(client);
        break;
    }
    dx_lm_client_stats_get(client, &B.stats);
    dx_server_stop(client, NULL, 10000);
    atomic_store(&B.done, 1);
}

static int usage(void)
{
    fprintf(stderr, "usage: lm-bench hit|miss|callers <n>\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return usage();
    if (strcmp(argv[1], "hit") == 0)
        B.mode = MODE_HIT;
    else if (strcmp(argv[1], "miss") == 0)
        B.mode = MODE_MISS;
    else if (strcmp(argv[1], "callers") == 0)
        B.mode = MODE_CALLERS;
    else
        return usage();
    B.n = strtol(argv[2], NULL, 10);
    if (B.n < 1 || (B.mode == MODE_CALLERS && B.n < N_CALLERS))
        return usage();

    /* 1,000 callers mean up to 1,000 connections on each side, all in
     * this process */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);

    dx_lmserver *srv = NULL;
    int rc = dx_lmserver_start(NULL, &srv);
    if (rc != DX_OK) {
        fprintf(stderr, "lmserver: %s\n", dx_err_name(rc));
        return 1;
    }
    snprintf(B.url, sizeof B.url, "http://127.0.0.1:%d/v1",
             dx_lmserver_port(srv));
    if (dx_runtime_start(NULL) != DX_OK) {
        fprintf(stderr, "runtime did not start\n");
        dx_lmserver_stop_free(srv);
        return 1;
    }
    dx_pid pid;
    if (dx_spawn(bench_main, NULL, &pid) == DX_OK)
        dx_wait_exit(pid, -1, NULL);
    dx_runtime_stop();
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    dx_lmserver_stop_free(srv);
    if (!atomic_load(&B.done))
        B.errors++;

    fprintf(stderr,
            "errors=%ld client: requests=%llu cache_hits=%llu workers=%llu "
            "failures=%llu; server: requests=%llu connections=%llu\n",
            B.errors, (unsigned long long)B.stats.requests,
            (unsigned long long)B.stats.cache_hits,
            (unsigned long long)B.stats.workers,
            (unsigned long long)B.stats.failures,
            (unsigned long long)st.requests,
            (unsigned long long)st.connections_accepted);
    double rate = B.wall_s > 0 ? (double)B.n / B.wall_s : 0.0;
    printf("RESULT sys=dspex bench=lm_%s n=%ld time_s=%.3f rate=%.0f "
           "unit=calls/s cpu_us_per_call=%.2f",
           argv[1], B.n, B.wall_s, rate, B.cpu_us_per_call);
    if (B.mode == MODE_MISS)
        printf(" baseline_cpu_us_per_call=%.2f overhead_us=%.2f"
               " baseline_rate=%.0f",
               B.base_cpu_us_per_call,
               B.cpu_us_per_call - B.base_cpu_us_per_call,
               B.base_wall_s > 0 ? (double)B.n / B.base_wall_s : 0.0);
    printf("\n");
    return B.errors == 0 ? 0 : 1;
}
