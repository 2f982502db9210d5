/*
 * optimize_bench.c — do the optimizers keep the configured concurrency
 * busy? BootstrapFewShot over a 200-example trainset and random search (8
 * candidates, a 200-example valset) against the local LM server holding
 * every answer for a fixed latency, answering as the sim model
 * (openai-compatible/sim/base over HTTP, so answers parse and metrics
 * vary).
 *
 *   optimize-bench <latency_ms> <concurrency>
 *
 * The ideal for C requests in flight, each taking the latency, is
 * C / latency calls per second; the sequential minimum of a run making K
 * LM calls is K x latency / C. Prints one line per optimizer:
 *   RESULT sys=dspex bench=optimize_<name> latency_ms=.. concurrency=..
 *   lm_calls=.. wall_s=.. ideal_s=.. busy=..   (busy = ideal_s / wall_s)
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "bench_server.h"
#include "dspex/runtime.h"
#include "dspex/sim.h"
#include "dspex/teleprompt.h"

static char url[128];
static dx_lmserver *srv;

static int64_t server_requests(void)
{
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    return (int64_t)st.requests;
}
static long latency_ms, concurrency;

typedef struct bench {
    int64_t calls[2];
    double wall[2];
    char error[DX_DIAG_MAX + 32];
    _Atomic int done;
} bench;

static bench B;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void bench_main(void *arg)
{
    (void)arg;
    dx_lm_client_opts co = {
        .primary = {"openai-compatible/sim/base", url, "sk-bench"},
    };
    dx_pid client;
    if (dx_lm_client_start(&co, NULL, &client) != DX_OK) {
        snprintf(B.error, sizeof B.error, "client start failed");
        atomic_store(&B.done, 1);
        return;
    }
    dx_dataset *train = NULL, *val = NULL;
    dx_sim_generate(DX_SIM_CLASSIFY, "train", 7, 200, &train);
    dx_sim_generate(DX_SIM_CLASSIFY, "dev", 7, 200, &val);
    dx_signature *s = NULL;
    dx_signature_parse("text -> label: Literal['positive', 'negative', "
                       "'neutral']",
                       NULL, NULL, 0, &s, NULL);
    dx_module *student = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH, .field = "label"},
        .concurrency = (size_t)concurrency,
        .max_labeled_demos = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
        .call = {.lm = client, .cache_mode = DX_LMCACHE_BYPASS},
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    /* Every train example bootstrapped: 200 teacher runs. */
    o.max_bootstrapped_demos = 200;
    double t0 = now_s();
    int64_t r0 = server_requests();
    if (train && val &&
        dx_bootstrap_fewshot(student, NULL, train, &o, &r, &d) == DX_OK) {
        B.wall[0] = now_s() - t0;
        B.calls[0] = server_requests() - r0;
        dx_tp_result_free(r);
        r = NULL;
        o.max_bootstrapped_demos = 4;
        o.num_candidates = 5; /* seeds -3..4: 8 candidates */
        t0 = now_s();
        r0 = server_requests();
        if (dx_random_search(student, NULL, train, val, &o, &r, &d) == DX_OK) {
            B.wall[1] = now_s() - t0;
            B.calls[1] = server_requests() - r0;
            dx_tp_result_free(r);
        } else {
            snprintf(B.error, sizeof B.error, "random search: %s", d.msg);
        }
    } else {
        snprintf(B.error, sizeof B.error, "bootstrap: %s", d.msg);
    }
    dx_module_free(student);
    dx_dataset_free(train);
    dx_dataset_free(val);
    dx_server_stop(client, NULL, 5000);
    atomic_store(&B.done, 1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s <latency_ms> <concurrency>\n", argv[0]);
        return 2;
    }
    latency_ms = strtol(argv[1], NULL, 10);
    concurrency = strtol(argv[2], NULL, 10);
    if (latency_ms <= 0 || concurrency <= 0)
        return 2;
    dx_lmserver_opts so = {.latency_ms = (uint64_t)latency_ms,
                           .threads = bench_server_threads()};
    if (dx_lmserver_start(&so, &srv) != DX_OK)
        return 1;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    dx_pid pid;
    if (dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}) != DX_OK ||
        dx_spawn(bench_main, NULL, &pid) != DX_OK)
        return 1;
    while (!atomic_load(&B.done)) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    dx_runtime_stop();
    dx_lmserver_stop_free(srv);
    if (B.error[0]) {
        fprintf(stderr, "error: %s\n", B.error);
        return 1;
    }
    const char *names[2] = {"bootstrap_200", "random_search_8x200"};
    for (int i = 0; i < 2; i++) {
        double ideal = (double)B.calls[i] * (double)latency_ms / 1000.0 /
                       (double)concurrency;
        printf("RESULT sys=dspex bench=optimize_%s latency_ms=%ld "
               "concurrency=%ld lm_calls=%lld wall_s=%.3f ideal_s=%.3f "
               "busy=%.3f\n",
               names[i], latency_ms, concurrency, (long long)B.calls[i],
               B.wall[i], ideal, ideal / B.wall[i]);
    }
    return 0;
}
