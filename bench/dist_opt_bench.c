/*
 * dist_opt_bench.c — distributed optimization speed-up: random search
 * (Predict, num_candidates 4 so 7 candidates, each scored on V valset
 * examples) whose candidate evaluations run here (dx_evaluate, `conc`
 * examples in flight) or on 1 and 3 worker nodes (child OS processes,
 * `conc` in flight each) against the local LM server with a fixed latency
 * per request. Building the candidates (bootstrap on a 2-example
 * trainset) runs on the optimizer's node in every case. The LM cache is
 * bypassed, so candidates that happen to be the same program cost the same
 * wherever they run. Starts its own epmd on a private port.
 *
 *   dist-opt-bench [V] [latency_ms] [conc]     (defaults 48 100 4)
 *   RESULT sys=dspex bench=dist_random_search val=.. candidates=7
 *          latency_ms=.. conc=.. nodes=local|1|3 wall_s=.. speedup=..
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
#include "dspex/teleprompt.h"

#define COOKIE "dxbench"

static long V = 48, latency_ms = 100, conc = 4;
static char **g_argv;
static _Atomic int done;
static double wall;
static dx_tp_evaluator ev;
static bool use_ev;
static char rollout[32];
static dx_module *student;
static dx_dataset *train, *val;

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

static dx_dataset *questions(const char *what, long n)
{
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    for (long i = 0; ds && i < n; i++) {
        dx_example *ex = dx_example_new();
        char q[64];
        snprintf(q, sizeof q, "%s question number %ld", what, i);
        dx_example_set_str(ex, "question", q);
        dx_example_set_str(ex, "answer", "x");
        dx_example_with_inputs(ex, in, 1);
        dx_dataset_append(ds, ex);
    }
    return ds;
}

static dx_module *program(void)
{
    dx_signature *s = NULL;
    dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL);
    dx_module *m = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    return m;
}

static int start_lm(const char *url)
{
    dx_lm_client_opts co = {
        .primary = {"openai-compatible/bench-model", url, "sk-bench"}};
    return dx_lm_client_start(&co, &(dx_server_opts){.name = "lm"}, NULL);
}

/* argv: self --worker x NAME COORD URL V CONC */
static void worker_main(void *arg)
{
    (void)arg;
    if (start_lm(g_argv[5]) != DX_OK)
        return;
    dx_module *prog = program();
    dx_dataset *ds = questions("evaluation", strtol(g_argv[6], NULL, 10));
    dx_eval_opts *eo = dx_calloc(1, sizeof(*eo));
    eo->metric.kind = DX_METRIC_EXACT_MATCH;
    eo->concurrency = (size_t)strtol(g_argv[7], NULL, 10);
    eo->progress = DX_EVAL_PROGRESS_OFF;
    eo->call.lm_name = "lm";
    eo->call.cache_mode = DX_LMCACHE_BYPASS;
    dx_dist_tp_worker(g_argv[4], NULL, prog, ds, eo, 60000, NULL, NULL, NULL);
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

static void optimizer(void *arg)
{
    (void)arg;
    dx_tp_opts o = {.metric = {.kind = DX_METRIC_EXACT_MATCH},
                    .max_bootstrapped_demos = 1,
                    .max_labeled_demos = 2,
                    .num_candidates = 4,
                    .concurrency = (size_t)conc,
                    .call = {.lm_name = "lm",
                             .rollout_id = rollout,
                             .cache_mode = DX_LMCACHE_BYPASS},
                    .progress = DX_EVAL_PROGRESS_OFF,
                    .evaluator = use_ev ? &ev : NULL};
    dx_tp_result *r = NULL;
    double t0 = now_s();
    int rc = dx_random_search(student, NULL, train, val, &o, &r, NULL);
    wall = rc == DX_OK && r->n_trials == 7 ? now_s() - t0 : -1;
    dx_tp_result_free(r);
    atomic_store(&done, 1);
}

static void wait_done(void)
{
    while (!atomic_load(&done))
        nanosleep(&(struct timespec){0, 10000000}, NULL);
}

/* k = 0: evaluate here; else on k worker nodes. */
static double run_nodes(int k, const char *self, const char *url)
{
    atomic_store(&done, 0);
    snprintf(rollout, sizeof rollout, "run-%d", k); /* no cache hits */
    use_ev = k > 0;
    dx_dist_tp *h = NULL;
    pid_t kids[8];
    if (k > 0) {
        if (dx_dist_tp_start(&(dx_dist_tp_opts){.shard_size = (size_t)conc,
                                                .min_workers = (size_t)k},
                             &h) != DX_OK)
            return -1;
        ev = dx_dist_tp_evaluator(h);
        char vs[16], cs[16];
        snprintf(vs, sizeof vs, "%ld", V);
        snprintf(cs, sizeof cs, "%ld", conc);
        for (int i = 0; i < k; i++) {
            char name[64];
            snprintf(name, sizeof name, "w%d_%d@127.0.0.1", i, (int)getpid());
            kids[i] = fork();
            if (kids[i] == 0) {
                char *a[] = {g_argv[0],   "--worker", "x", name, (char *)self,
                             (char *)url, vs,         cs,  NULL};
                quiet_exec(a);
            }
        }
        /* Let the workers connect before the clock starts. */
        dx_dist_tp_stats st;
        do {
            nanosleep(&(struct timespec){0, 20000000}, NULL);
            dx_dist_tp_get_stats(h, &st);
        } while (st.workers < (size_t)k);
    }
    dx_spawn(optimizer, NULL, NULL);
    wait_done();
    if (k > 0) {
        dx_dist_tp_stop(h);
        for (int i = 0; i < k; i++) {
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
        }
    }
    return wall;
}

static void setup(void *arg)
{
    start_lm(arg);
    student = program();
    train = questions("training", 2);
    val = questions("evaluation", V);
    atomic_store(&done, 1);
}

int main(int argc, char **argv)
{
    g_argv = argv;
    if (argc > 7 && strcmp(argv[1], "--worker") == 0)
        return run_worker();
    if (argc > 1)
        V = strtol(argv[1], NULL, 10);
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
    static char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    dx_runtime_start(&(dx_runtime_opts){.schedulers = 1});
    char self[64];
    snprintf(self, sizeof self, "coord%d@127.0.0.1", (int)getpid());
    if (dx_node_start(&(dx_node_opts){.name = self, .cookie = COOKIE}) != DX_OK)
        return 1;
    atomic_store(&done, 0);
    dx_spawn(setup, url, NULL);
    wait_done();
    double w1 = 0;
    int ks[3] = {0, 1, 3};
    for (int i = 0; i < 3; i++) {
        double w = run_nodes(ks[i], self, url);
        if (i == 1)
            w1 = w;
        char nodes[16];
        snprintf(nodes, sizeof nodes, "%d", ks[i]);
        printf("RESULT sys=dspex bench=dist_random_search val=%ld "
               "candidates=7 latency_ms=%ld conc=%ld nodes=%s wall_s=%.3f "
               "speedup=%.2f\n",
               V, latency_ms, conc, ks[i] ? nodes : "local", w,
               w > 0 && i > 0 ? w1 / w : 0);
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
