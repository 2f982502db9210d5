/*
 * dist_eval_bench.c — distributed Evaluate speed-up: the same Evaluate
 * (Predict, N examples, `conc` examples in flight per node) run by 1 and
 * by 3 worker nodes (child OS processes) against the local LM server with a
 * fixed latency per request. Starts its own epmd on a private port.
 *
 *   dist-eval-bench [n] [latency_ms] [conc]     (defaults 96 100 4)
 *   RESULT sys=dspex bench=dist_evaluate n=.. latency_ms=.. conc=..
 *          nodes=.. wall_s=.. ideal_s=.. speedup=..
 */
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dspex/dist_eval.h"
#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "bench_server.h"
#include "dspex/module.h"
#include "dspex/node.h"
#include "dspex/signature.h"

#define COOKIE "dxbench"

static long N = 96, latency_ms = 100, conc = 4;
static char **g_argv;
static _Atomic int done;
static double wall;
static int nodes;

static void quiet_exec(char *const argv[])
{
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execvp(argv[0], argv);
    _exit(127);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* argv: self --worker NAME COORD URL N CONC */
static void worker_main(void *arg)
{
    (void)arg;
    dx_lm_client_opts co = {
        .primary = {"openai-compatible/bench-model", g_argv[5], "sk-bench"}};
    if (dx_lm_client_start(&co, &(dx_server_opts){.name = "lm"}, NULL) != DX_OK)
        return;
    dx_signature *s = NULL;
    dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL);
    dx_module *prog = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    long n = strtol(g_argv[6], NULL, 10);
    for (long i = 0; i < n; i++) {
        dx_example *ex = dx_example_new();
        char q[64];
        snprintf(q, sizeof q, "evaluation question number %ld", i);
        dx_example_set_str(ex, "question", q);
        dx_example_set_str(ex, "answer", "x");
        dx_example_with_inputs(ex, in, 1);
        dx_dataset_append(ds, ex);
    }
    dx_eval_opts *eo = dx_calloc(1, sizeof(*eo));
    eo->metric.kind = DX_METRIC_EXACT_MATCH;
    eo->concurrency = (size_t)strtol(g_argv[7], NULL, 10);
    eo->progress = DX_EVAL_PROGRESS_OFF;
    eo->call.lm_name = "lm";
    dx_dist_eval_worker(g_argv[4], NULL, prog, ds, eo, 30000, NULL, NULL, NULL);
    dx_free(eo);
    dx_module_free(prog);
    dx_dataset_free(ds);
}

static int run_worker(void)
{
    dx_runtime_start(&(dx_runtime_opts){.schedulers = 1});
    if (dx_node_start(&(dx_node_opts){.name = g_argv[3], .cookie = COOKIE}) !=
        DX_OK)
        return 1;
    dx_pid pid;
    dx_spawn(worker_main, NULL, &pid);
    dx_wait_exit(pid, DX_INFINITY, NULL);
    dx_node_stop();
    return 0;
}

static void coordinator(void *arg)
{
    (void)arg;
    dx_dist_eval_opts o = {.shard_size = (size_t)conc,
                           .min_workers = (size_t)nodes,
                           .timeout_ms = 600000};
    dx_dist_eval_result *r = NULL;
    double t0 = 0;
    /* The clock starts when the last worker has asked: min_workers holds
     * the first shard back until then. */
    t0 = now_s();
    int rc = dx_dist_evaluate((size_t)N, &o, &r);
    wall = rc == DX_OK && r->n_done == (size_t)N ? now_s() - t0 : -1;
    dx_dist_eval_result_free(r);
    atomic_store(&done, 1);
}

static double run_nodes(int k, const char *self, const char *url)
{
    nodes = k;
    atomic_store(&done, 0);
    dx_spawn(coordinator, NULL, NULL);
    while (dx_whereis("dx_dist_eval").id == 0)
        nanosleep(&(struct timespec){0, 2000000}, NULL);
    pid_t kids[8];
    char ns[16], cs[16];
    snprintf(ns, sizeof ns, "%ld", N);
    snprintf(cs, sizeof cs, "%ld", conc);
    for (int i = 0; i < k; i++) {
        char name[64];
        snprintf(name, sizeof name, "w%d_%d@127.0.0.1", i, (int)getpid());
        kids[i] = fork();
        if (kids[i] == 0) {
            char *a[] = {g_argv[0],   "--worker", "x", name, (char *)self,
                         (char *)url, ns,         cs,  NULL};
            quiet_exec(a);
        }
    }
    while (!atomic_load(&done))
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    for (int i = 0; i < k; i++) {
        kill(kids[i], SIGKILL);
        waitpid(kids[i], NULL, 0);
    }
    return wall;
}

int main(int argc, char **argv)
{
    g_argv = argv;
    if (argc > 7 && strcmp(argv[1], "--worker") == 0)
        return run_worker();
    if (argc > 1)
        N = strtol(argv[1], NULL, 10);
    if (argc > 2)
        latency_ms = strtol(argv[2], NULL, 10);
    if (argc > 3)
        conc = strtol(argv[3], NULL, 10);
    setvbuf(stdout, NULL, _IOLBF, 0);
    char port[16];
    snprintf(port, sizeof port, "%d", 26000 + (int)(getpid() % 9000));
    setenv("ERL_EPMD_PORT", port, 1);
    pid_t e = fork();
    if (e == 0) {
        char *a[] = {"epmd",
                     "-daemon",
                     "-address",
                     "127.0.0.1",
                     "-port",
                     port,
                     "-relaxed_command_check",
                     NULL};
        quiet_exec(a);
    }
    waitpid(e, NULL, 0);
    sleep(1);
    dx_lmserver *srv = NULL;
    dx_lmserver_opts so = {.latency_ms = (uint64_t)latency_ms,
                           .threads = bench_server_threads()};
    if (dx_lmserver_start(&so, &srv) != DX_OK)
        return 1;
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    dx_runtime_start(&(dx_runtime_opts){.schedulers = 1});
    char self[64];
    snprintf(self, sizeof self, "coord%d@127.0.0.1", (int)getpid());
    if (dx_node_start(&(dx_node_opts){.name = self, .cookie = COOKIE}) != DX_OK)
        return 1;
    double w1 = 0;
    int ks[2] = {1, 3};
    for (int i = 0; i < 2; i++) {
        double w = run_nodes(ks[i], self, url);
        if (i == 0)
            w1 = w;
        double ideal = (double)((N + conc * ks[i] - 1) / (conc * ks[i])) *
                       latency_ms / 1000.0;
        printf("RESULT sys=dspex bench=dist_evaluate n=%ld latency_ms=%ld "
               "conc=%ld nodes=%d wall_s=%.3f ideal_s=%.3f speedup=%.2f\n",
               N, latency_ms, conc, ks[i], w, ideal, w > 0 ? w1 / w : 0);
    }
    dx_node_stop();
    dx_runtime_stop();
    dx_lmserver_stop_free(srv);
    pid_t k = fork();
    if (k == 0) {
        char *a[] = {"epmd", "-port", port, "-kill", NULL};
        quiet_exec(a);
    }
    waitpid(k, NULL, 0);
    return 0;
}
