/*
 * eval_bench.c — Evaluate against the local LM server with a fixed latency
 * per request: wall time against the ideal ceil(N/C) x latency, and CPU per
 * example beyond the HTTP exchange.
 *
 *   eval-bench <n> <latency_ms> <concurrency>...
 *
 * For each concurrency C: dx_evaluate of a Predict ("question -> answer",
 * JSONAdapter so each example is exactly one LM call, the client's cache
 * bypassed) over n distinct questions. Then the baseline: the very requests
 * the program sends (formatted by the same adapter before the clock starts)
 * as plain dx_lm_call from C processes at once (no program, no client),
 * whose CPU is the HTTP exchange: encoding, the transport, the server's
 * share, decoding. The difference per example is what Evaluate, the
 * program, the adapter, the LM client and the metric add. CPU is the whole
 * OS process's (the server threads included, in both).
 * The baseline's wall time against the same ideal shows how much of the
 * gap is the transport's. Schedulers: DX_SCHEDULERS, else one per CPU.
 *
 * Then the floor (floor_client.h): the same requests, as the bytes the
 * transport sends, from a bare one-thread epoll client with the runtime
 * stopped, against the same server. Its wall time is what the server, the
 * kernel and the machine leave for any client; the gap between it and the
 * baseline is the transport's, between the baseline and the evaluation
 * Evaluate's. The floor runs twice: with connections it opens (floor_)
 * and with connections opened before its clock starts (floor_warm_).
 *
 * Then the machine's floor (null_server.h): the same bare client against
 * a server that only reads each request and answers it with canned bytes
 * after the latency, as many threads as the local LM server, again with
 * connections opened by the run (machine_) and before it (machine_warm_).
 * Neither dspex nor the local LM server is in it: what it leaves of the
 * ideal is the kernel's and the machine's, a bound no client or server on
 * these cores can beat. DX_EVAL_BENCH_FLOOR=0 leaves out both floors
 * (their fields are then 0).
 *
 * DX_EVAL_BENCH_CALLGRIND=eval or =baseline, under valgrind --tool=callgrind
 * --instr-atstart=no, counts only that phase's instructions (every
 * thread's), so two runs compare an evaluated example's path with a plain
 * call's function by function (docs/benchmarks.md).
 *
 * DX_EVAL_BENCH_WARM=1 first makes max(C) plain calls at once, so the
 * evaluations start with their connections open (a service that has been
 * running), and so does each baseline. By default each evaluation opens
 * them, as a first run does (dx_http_close_idle before it), and so does
 * each baseline.
 *
 * DX_EVAL_BENCH_ROUNDS=R (default 1) runs R rounds per C, each an
 * evaluation of the n examples and then their baseline, so the two sides
 * alternate and a slow minute of the machine falls on both. CPU, switches,
 * faults and threads are then per example over all rounds; wall_s and
 * baseline_wall_s are the rounds' medians; overhead_rounds_us lists each
 * round's overhead and overhead_median_us is their median (at 1 in flight
 * the figure to quote: one round's overhead can move by tens of us).
 * connections, the wave fields and example_p50_ms/p99 are the last
 * round's.
 *
 * Prints per C:
 *   RESULT sys=dspex bench=evaluate n=.. latency_ms=.. concurrency=..
 *   rounds=.. wall_s=.. ideal_s=.. ratio=.. cpu_us_per_example=..
 *   baseline_cpu_us_per_example=.. overhead_us=.. overhead_median_us=..
 *   overhead_rounds_us=<a>,<b>,.. csw_per_example=..
 *   baseline_csw_per_example=.. example_p50_ms=..
 *   example_p99_ms=.. baseline_wall_s=.. baseline_ratio=.. warm=0|1
 *   connections=<opened by the evaluation>
 *   wave_mean_ms=<a>,<b>,.. wave_max_ms=<a>,<b>,..
 *   floor_wall_s=.. floor_ratio=.. floor_cpu_us_per_example=..
 *   floor_wave_mean_ms=.. floor_wave_max_ms=.. floor_warm_ratio=..
 *   machine_ratio=.. machine_warm_ratio=.. machine_cpu_us_per_example=..
 *   threads_us=sched:..,io:..,server:..,other:.. baseline_threads_us=..
 *   faults_per_example=.. baseline_faults_per_example=..
 * where wave k is examples k*C .. (k+1)*C-1 in dataset order (the ones
 * that start k-th on their slot): its mean and slowest latency show
 * whether the gap is a start-up cost or paid in every wave; threads_us
 * splits the CPU per example by thread group (schedulers, I/O lanes, the
 * server, the rest), so the overhead shows whose it is; faults are minor
 * page faults per example (memory touched for the first time, or again
 * after the allocator gave it back).
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_START_INSTRUMENTATION                                        \
    do {                                                                       \
    } while (0)
#define CALLGRIND_STOP_INSTRUMENTATION                                         \
    do {                                                                       \
    } while (0)
#endif

#include "dspex/adapter.h"
#include "dspex/alloc.h"
#include "dspex/evaluate.h"
#include "dspex/http.h"
#include "dspex/lm.h"
#include "dspex/lm_call.h"
#include "dspex/lmserver.h"
#include "bench_server.h"
#include "dspex/provider.h"
#include "floor_client.h"
#include "null_server.h"
#include "dspex/runtime.h"

static char url[128];
static long N;
static long latency_ms;

#define MAX_ROUNDS 64

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Context switches of the whole OS process so far (every thread's, both
 * kinds): each is a thread that slept and was woken, or was preempted. */
static double switches(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_nvcsw + (double)ru.ru_nivcsw;
}

/* Minor page faults of the whole OS process so far: pages the kernel had
 * to map on first touch (fresh memory, or memory the allocator gave back). */
static double page_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_minflt;
}

/* CPU time of the OS process's threads so far, thread by thread, with
 * each thread's group: the schedulers (dx-sched-*), the I/O lanes
 * (dx-io*), the local LM server (dx-lmserver*) and the rest (main,
 * timers, ...). From /proc/self/task/<tid>/schedstat, whose first field is
 * the thread's time on a CPU in ns. */
enum { GRP_SCHED, GRP_IO, GRP_SERVER, GRP_OTHER, GRP_N };
static const char *const grp_name[GRP_N] = {"sched", "io", "server", "other"};

enum { MAX_THREADS = 256 };
typedef struct thread_reading {
    int n;
    struct {
        long tid;
        int grp;
        double us;
    } t[MAX_THREADS];
} thread_reading;

static void thread_read(thread_reading *r)
{
    r->n = 0;
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && r->n < MAX_THREADS) {
        if (e->d_name[0] == '.')
            continue;
        char path[64], comm[32] = "";
        unsigned long long on_cpu_ns = 0;
        snprintf(path, sizeof path, "/proc/self/task/%.16s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            if (fgets(comm, sizeof comm, f) == NULL)
                comm[0] = '\0';
            fclose(f);
        }
        snprintf(path, sizeof path, "/proc/self/task/%.16s/schedstat",
                 e->d_name);
        f = fopen(path, "r");
        if (f != NULL) {
            if (fscanf(f, "%llu", &on_cpu_ns) != 1)
                on_cpu_ns = 0;
            fclose(f);
        }
        int g = strncmp(comm, "dx-sched", 8) == 0       ? GRP_SCHED
                : strncmp(comm, "dx-io", 5) == 0        ? GRP_IO
                : strncmp(comm, "dx-lmserver", 11) == 0 ? GRP_SERVER
                                                        : GRP_OTHER;
        r->t[r->n].tid = strtol(e->d_name, NULL, 10);
        r->t[r->n].grp = g;
        r->t[r->n].us = (double)on_cpu_ns / 1e3;
        r->n++;
    }
    closedir(d);
}

/* Add to out[] the CPU each thread spent between readings a and b, by
 * group. A thread that started in between counts from zero; one that
 * ended in between is left out, its CPU after a no longer readable (it
 * was subtracted whole before, which showed a helper thread that outlives
 * an evaluation as negative CPU of the baseline after it). */
static void thread_diff(const thread_reading *a, const thread_reading *b,
                        double out[GRP_N])
{
    for (int i = 0; i < b->n; i++) {
        double before = 0;
        for (int k = 0; k < a->n; k++)
            if (a->t[k].tid == b->t[i].tid) {
                before = a->t[k].us;
                break;
            }
        out[b->t[i].grp] += b->t[i].us - before;
    }
}

/* "sched:12.3,io:4.5,server:6.7,other:0.1": us per example, of us summed
 * over examples. */
static void thread_field(const double us[GRP_N], double examples, char *out,
                         size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    for (int g = 0; g < GRP_N && len < cap; g++)
        len += (size_t)snprintf(out + len, cap - len, "%s%s:%.1f", g ? "," : "",
                                grp_name[g], us[g] / examples);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n-1] (n > 0), v left as it was. */
static double median(const double *v, int n)
{
    double s[MAX_ROUNDS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* ---- baseline: plain dx_lm_call from C processes ----------------------- */

enum { BASE_DONE = 1 }; /* a baseline worker's message: it is done */

typedef struct base_job {
    dx_lm_config *cfg;
    dx_lm_request **reqs; /* the program's requests, formatted beforehand */
    long calls;           /* requests to make in all */
    atomic_long next;
    dx_pid waiter; /* told by each worker when it is done */
    long errors;
} base_job;

static base_job BJ;

/* The baseline's requests as the bytes curl sends, for the floor client. */
static floor_request *FLOOR;
static char **floor_bytes;

/* Encode request i as a complete HTTP/1.1 request to url. */
static bool floor_encode(long i, const dx_lm_request *req)
{
    dx_lm_http h;
    dx_lm_error err = {0};
    char *full = NULL;
    if (dx_lm_encode(BJ.cfg, req, &h, &err) != DX_OK) {
        dx_lm_error_clear(&err);
        return false;
    }
    bool ok = dx_lm_http_url(BJ.cfg, &h, &full) == DX_OK;
    /* "http://host:port/path": the path starts at the third "/". */
    const char *path = ok ? strchr(full + strlen("http://"), '/') : NULL;
    size_t cap = h.body_len + 1024;
    for (size_t k = 0; k < h.n_headers; k++)
        cap += strlen(h.headers[k]) + 2;
    char *b = path != NULL ? dx_malloc(cap) : NULL;
    if (b != NULL) {
        size_t len = (size_t)snprintf(
            b, cap, "%s %s HTTP/1.1\r\nHost: %.*s\r\n", h.method, path,
            (int)(path - full - strlen("http://")), full + strlen("http://"));
        for (size_t k = 0; k < h.n_headers; k++)
            len += (size_t)snprintf(b + len, cap - len, "%s\r\n", h.headers[k]);
        len += (size_t)snprintf(b + len, cap - len,
                                "Content-Length: %zu\r\n\r\n", h.body_len);
        memcpy(b + len, h.body, h.body_len);
        floor_bytes[i] = b;
        FLOOR[i] = (floor_request){b, len + h.body_len};
    }
    dx_free(full);
    dx_lm_http_free(&h);
    return b != NULL;
}

static void base_worker(void *arg)
{
    (void)arg;
    long i;
    while ((i = atomic_fetch_add(&BJ.next, 1)) < BJ.calls) {
        dx_lm_response *res = NULL;
        dx_lm_error err = {0};
        if (dx_lm_call(BJ.cfg, BJ.reqs[i % N], NULL, &res, &err) != DX_OK)
            BJ.errors++;
        dx_lm_response_free(res);
        dx_lm_error_clear(&err);
    }
    dx_send_tag(BJ.waiter, BASE_DONE);
}

/* calls plain requests from procs processes at once; returns when done.
 * Waits for a message from each (not polling, whose wake-ups would be
 * counted as the plain calls' CPU: at 1 in flight, more than the calls). */
static void run_baseline(long calls, long procs)
{
    BJ.calls = calls;
    BJ.waiter = dx_self();
    atomic_store(&BJ.next, 0);
    long started = 0;
    for (long p = 0; p < procs; p++) {
        dx_pid pid;
        started += dx_spawn(base_worker, NULL, &pid) == DX_OK;
    }
    if (started == 0)
        BJ.errors++;
    for (long p = 0; p < started; p++) {
        dx_msg *m = NULL;
        if (dx_receive_tag(BASE_DONE, DX_INFINITY, &m) == DX_OK)
            dx_msg_free(m);
    }
}

/* Mean and slowest of each wave of c latencies (lat[0..n-1], in dataset
 * order), as two fields named prefix"wave_mean_ms" and prefix"wave_max_ms". */
static void wave_fields(const double *lat, size_t n, long c, const char *prefix,
                        char *out, size_t cap)
{
    char means[256] = "", maxes[256] = "";
    size_t lm = 0, lx = 0;
    for (size_t w = 0; w * (size_t)c < n && w < 16; w++) {
        double sum = 0, mx = 0;
        size_t k = 0;
        for (size_t i = w * (size_t)c; i < n && i < (w + 1) * (size_t)c;
             i++, k++) {
            sum += lat[i];
            if (lat[i] > mx)
                mx = lat[i];
        }
        lm += (size_t)snprintf(means + lm, sizeof means - lm, "%s%.1f",
                               w ? "," : "", sum / (double)k);
        lx += (size_t)snprintf(maxes + lx, sizeof maxes - lx, "%s%.1f",
                               w ? "," : "", mx);
        if (lm >= sizeof means || lx >= sizeof maxes)
            break;
    }
    /* A field cut short at cap is still a readable line: the caller's
     * buffers hold every wave of the runs the bench makes. */
    int len = snprintf(out, cap, "%swave_mean_ms=%s %swave_max_ms=%s", prefix,
                       means, prefix, maxes);
    if (len < 0 && cap > 0)
        out[0] = '\0';
}

/* ---- the run ----------------------------------------------------------- */

/* Closes the connections kept for reuse, so the next run opens its own as
 * a first run does, and gives the server time to see the closes. */
static void close_connections(void)
{
    dx_http_close_idle();
    dx_sleep(50);
}

typedef struct bench {
    long conc[8];
    int nconc;
    int rounds; /* DX_EVAL_BENCH_ROUNDS: (evaluation, baseline) pairs per C */
    /* Per C: sums over its rounds, and each round's walls and overhead. */
    double cpu[8], base_cpu[8], p50[8], p99[8];
    double walls[8][MAX_ROUNDS], base_walls[8][MAX_ROUNDS];
    double round_overhead_us[8][MAX_ROUNDS];
    double csw[8], base_csw[8];                       /* context switches */
    double flt[8], base_flt[8];                       /* minor page faults */
    double threads[8][GRP_N], base_threads[8][GRP_N]; /* CPU by thread group */
    uint64_t conns[8]; /* connections the evaluation opened */
    char waves[8][512];
    long errors;
    bool warm; /* DX_EVAL_BENCH_WARM: connections opened before */
    char first_error[DX_DIAG_MAX + 64];
} bench;

static bench B;

/* DX_EVAL_BENCH_CALLGRIND names the phase callgrind counts (none: all). */
static bool counting(const char *phase)
{
    const char *which = getenv("DX_EVAL_BENCH_CALLGRIND");
    return which != NULL && strcmp(which, phase) == 0;
}

/* One round at concurrency B.conc[k]: the evaluation, then the baseline,
 * each measured on its own and added to the run's sums. Rounds alternate
 * the two, so a stretch of the machine running slower (this VM's CPU per
 * example drifts by tens of us from one minute to the next) falls on both
 * sides of a round instead of on one side of the comparison. */
static void run_round(dx_pid client, dx_module *prog, dx_dataset *ds, int k,
                      int rd)
{
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = (size_t)B.conc[k],
        .progress = DX_EVAL_PROGRESS_OFF,
        .call = {.lm = client,
                 .adapter = DX_ADAPTER_JSON,
                 .cache_mode = DX_LMCACHE_BYPASS},
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    if (!B.warm && (k > 0 || rd > 0))
        close_connections(); /* the last baseline's */
    uint64_t conns0 = dx_http_connections_opened();
    double w0 = clock_s(CLOCK_MONOTONIC);
    double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    double s0 = switches(), f0 = page_faults();
    static thread_reading t0, t1; /* large: not on a process's stack */
    thread_read(&t0);
    if (counting("eval"))
        CALLGRIND_START_INSTRUMENTATION;
    int rc = dx_evaluate(prog, ds, &o, &r, &d);
    if (counting("eval"))
        CALLGRIND_STOP_INSTRUMENTATION;
    thread_read(&t1);
    thread_diff(&t0, &t1, B.threads[k]);
    B.csw[k] += switches() - s0;
    B.flt[k] += page_faults() - f0;
    double cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    B.cpu[k] += cpu;
    B.walls[k][rd] = clock_s(CLOCK_MONOTONIC) - w0;
    B.conns[k] = dx_http_connections_opened() - conns0;
    double *lat = rc == DX_OK ? dx_calloc(r->n + 1, sizeof *lat) : NULL;
    if (lat != NULL) {
        for (size_t i = 0; i < r->n; i++)
            lat[i] = r->rows[i].latency_ms;
        wave_fields(lat, r->n, B.conc[k], "", B.waves[k], sizeof B.waves[k]);
        dx_free(lat);
    }
    if (rc == DX_OK) {
        B.p50[k] = r->latency_p50_ms;
        B.p99[k] = r->latency_p99_ms;
    }
    if (rc != DX_OK || r->n_errors) {
        if (B.errors++ == 0)
            snprintf(B.first_error, sizeof B.first_error, "%s",
                     rc != DX_OK ? d.msg : r->rows[0].error_msg);
    }
    dx_eval_result_free(r);

    /* Baseline with the same concurrency, on connections of its own
     * when the evaluation opened its own: opening them is part of the
     * HTTP exchange, whose CPU the baseline is there to measure. */
    if (!B.warm)
        close_connections();
    c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    w0 = clock_s(CLOCK_MONOTONIC);
    s0 = switches();
    f0 = page_faults();
    thread_read(&t0);
    if (counting("baseline"))
        CALLGRIND_START_INSTRUMENTATION;
    run_baseline(N, B.conc[k]);
    if (counting("baseline"))
        CALLGRIND_STOP_INSTRUMENTATION;
    thread_read(&t1);
    thread_diff(&t0, &t1, B.base_threads[k]);
    B.base_csw[k] += switches() - s0;
    B.base_flt[k] += page_faults() - f0;
    double base_cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    B.base_cpu[k] += base_cpu;
    B.base_walls[k][rd] = clock_s(CLOCK_MONOTONIC) - w0;
    B.round_overhead_us[k][rd] = (cpu - base_cpu) * 1e6 / (double)N;
}

static void bench_main(void *arg)
{
    (void)arg;
    dx_lm_client_opts co = {
        .primary = {"openai-compatible/bench-model", url, "sk-bench"},
    };
    dx_pid client;
    if (dx_lm_client_start(&co, NULL, &client) != DX_OK) {
        B.errors = 1;
        return;
    }
    dx_signature *s = NULL;
    dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL);
    dx_module *prog = dx_predict_new(s, NULL);
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    for (long i = 0; i < N; i++) {
        dx_example *ex = dx_example_new();
        char q[64];
        snprintf(q, sizeof q, "evaluation question number %ld", i);
        dx_example_set_str(ex, "question", q);
        dx_example_set_str(ex, "answer", "x");
        dx_example_with_inputs(ex, in, 1);
        dx_dataset_append(ds, ex);
    }
    dx_lm_config_new("openai-compatible/bench-model", url, "sk-bench", &BJ.cfg);
    /* The baseline sends what the program sends: the same adapter's
     * messages and response format for each example's inputs. */
    BJ.reqs = dx_calloc((size_t)N, sizeof *BJ.reqs);
    FLOOR = dx_calloc((size_t)N, sizeof *FLOOR);
    floor_bytes = dx_calloc((size_t)N, sizeof *floor_bytes);
    if (BJ.reqs == NULL || FLOOR == NULL || floor_bytes == NULL)
        B.errors = 1;
    for (long i = 0; BJ.reqs != NULL && i < N; i++) {
        BJ.reqs[i] = dx_lm_request_new(NULL);
        if (BJ.reqs[i] == NULL ||
            dx_adapter_format(DX_ADAPTER_JSON, s, NULL, 0, ds->items[i],
                              BJ.reqs[i], NULL) != DX_OK ||
            !floor_encode(i, BJ.reqs[i])) {
            B.errors = 1;
            break;
        }
    }

    if (B.errors) {
        snprintf(B.first_error, sizeof B.first_error,
                 "could not format the baseline's requests");
        B.nconc = 0; /* nothing to measure */
    }
    if (B.warm) {
        long most = 0;
        for (int k = 0; k < B.nconc; k++)
            most = B.conc[k] > most ? B.conc[k] : most;
        run_baseline(most, most);
    }
    for (int k = 0; k < B.nconc; k++)
        for (int rd = 0; rd < B.rounds; rd++)
            run_round(client, prog, ds, k, rd);
    for (long i = 0; BJ.reqs != NULL && i < N; i++)
        dx_lm_request_free(BJ.reqs[i]);
    dx_free(BJ.reqs);
    dx_signature_unref(s);
    dx_lm_config_free(BJ.cfg);
    dx_dataset_free(ds);
    dx_module_free(prog);
    dx_server_stop(client, NULL, 5000);
}

static void floor_failed(const char *who, const floor_result *r)
{
    fprintf(stderr, "%s: %ld of %ld requests failed\n", who,
            r->failed ? r->failed : N, N);
    B.errors++;
}

/* The machine's floor: the bare client against the null server (as many
 * threads as the local LM server), with connections opened by the run
 * and opened before it. */
static void machine_floor(long conc, floor_result *fresh, floor_result *warm)
{
    null_server *ns = null_server_start(bench_server_threads(), latency_ms);
    if (ns == NULL) {
        floor_failed("null server", &(floor_result){0});
        return;
    }
    fresh->latency_ms = warm->latency_ms = NULL;
    if (floor_run(null_server_port(ns), FLOOR, (size_t)N, N, conc, false,
                  fresh) != 0 ||
        fresh->failed > 0)
        floor_failed("floor client, null server", fresh);
    if (floor_run(null_server_port(ns), FLOOR, (size_t)N, N, conc, true,
                  warm) != 0 ||
        warm->failed > 0)
        floor_failed("floor client, null server, preconnected", warm);
    null_server_stop(ns);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s <n> <latency_ms> <concurrency>...\n",
                argv[0]);
        return 2;
    }
    N = strtol(argv[1], NULL, 10);
    latency_ms = strtol(argv[2], NULL, 10);
    B.warm = getenv("DX_EVAL_BENCH_WARM") != NULL &&
             strcmp(getenv("DX_EVAL_BENCH_WARM"), "0") != 0;
    const char *rounds_env = getenv("DX_EVAL_BENCH_ROUNDS");
    B.rounds = rounds_env != NULL ? (int)strtol(rounds_env, NULL, 10) : 1;
    if (B.rounds < 1 || B.rounds > MAX_ROUNDS) {
        fprintf(stderr, "DX_EVAL_BENCH_ROUNDS: 1 to %d\n", MAX_ROUNDS);
        return 2;
    }
    for (int i = 3; i < argc && B.nconc < 8; i++)
        B.conc[B.nconc++] = strtol(argv[i], NULL, 10);
    if (N <= 0 || latency_ms < 0 || B.nconc == 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    dx_lmserver *srv = NULL;
    dx_lmserver_opts so = {.latency_ms = (uint64_t)latency_ms,
                           .threads = bench_server_threads(),
                           .max_connections = 8192};
    if (dx_lmserver_start(&so, &srv) != DX_OK)
        return 1;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    dx_pid pid;
    if (dx_runtime_start(&(dx_runtime_opts){.schedulers = 0}) != DX_OK ||
        dx_spawn(bench_main, NULL, &pid) != DX_OK)
        return 1;
    /* Blocks without polling: a wake-up every few ms here would be counted
     * in every run's CPU per example (at 1 in flight, ~60 us of it). */
    dx_term *why = NULL;
    dx_wait_exit(pid, DX_INFINITY, &why);
    dx_term_free(why);
    dx_runtime_stop();
    /* The floor: the same requests from the bare client, the runtime gone,
     * against the same server (whose connections from the runs above are
     * closed by now, so it opens its own as a first run does). */
    floor_result fl[8] = {{0}}, fl_warm[8] = {{0}};
    floor_result mach[8] = {{0}}, mach_warm[8] = {{0}};
    char floor_waves[8][512] = {""};
    double *floor_lat = dx_calloc((size_t)N, sizeof *floor_lat);
    const char *floor_env = getenv("DX_EVAL_BENCH_FLOOR");
    bool floor_on = floor_env == NULL || strcmp(floor_env, "0") != 0;
    for (int k = 0;
         floor_on && k < B.nconc && FLOOR != NULL && floor_lat && !B.errors;
         k++) {
        fl[k].latency_ms = floor_lat;
        if (floor_run(dx_lmserver_port(srv), FLOOR, (size_t)N, N, B.conc[k],
                      false, &fl[k]) != 0 ||
            fl[k].failed > 0)
            floor_failed("floor client", &fl[k]);
        wave_fields(floor_lat, (size_t)N, B.conc[k], "floor_", floor_waves[k],
                    sizeof floor_waves[k]);
        fl_warm[k].latency_ms = NULL;
        if (floor_run(dx_lmserver_port(srv), FLOOR, (size_t)N, N, B.conc[k],
                      true, &fl_warm[k]) != 0 ||
            fl_warm[k].failed > 0)
            floor_failed("floor client, preconnected", &fl_warm[k]);
        machine_floor(B.conc[k], &mach[k], &mach_warm[k]);
    }
    dx_free(floor_lat);
    for (long i = 0; floor_bytes != NULL && i < N; i++)
        dx_free(floor_bytes[i]);
    dx_free(floor_bytes);
    dx_free(FLOOR);
    dx_lmserver_stop_free(srv);
    if (B.errors || BJ.errors)
        fprintf(stderr, "errors: %ld evaluate, %ld baseline (first: %s)\n",
                B.errors, BJ.errors, B.first_error);
    for (int k = 0; k < B.nconc; k++) {
        long c = B.conc[k];
        double ideal = (double)((N + c - 1) / c) * (double)latency_ms / 1000.0;
        double examples = (double)N * B.rounds;
        double cpu_us = B.cpu[k] * 1e6 / examples;
        double base_us = B.base_cpu[k] * 1e6 / examples;
        double wall = median(B.walls[k], B.rounds);
        double base_wall = median(B.base_walls[k], B.rounds);
        char threads[96], base_threads[96], rounds[MAX_ROUNDS * 12] = "";
        thread_field(B.threads[k], examples, threads, sizeof threads);
        thread_field(B.base_threads[k], examples, base_threads,
                     sizeof base_threads);
        for (int rd = 0, len = 0; rd < B.rounds; rd++)
            len += snprintf(rounds + len, sizeof rounds - (size_t)len, "%s%.1f",
                            rd ? "," : "", B.round_overhead_us[k][rd]);
        printf("RESULT sys=dspex bench=evaluate n=%ld latency_ms=%ld "
               "concurrency=%ld rounds=%d wall_s=%.3f ideal_s=%.3f ratio=%.4f "
               "cpu_us_per_example=%.1f baseline_cpu_us_per_example=%.1f "
               "overhead_us=%.1f overhead_median_us=%.1f "
               "overhead_rounds_us=%s csw_per_example=%.1f "
               "baseline_csw_per_example=%.1f example_p50_ms=%.1f "
               "example_p99_ms=%.1f "
               "baseline_wall_s=%.3f baseline_ratio=%.4f warm=%d "
               "connections=%" PRIu64 " %s floor_wall_s=%.3f "
               "floor_ratio=%.4f floor_cpu_us_per_example=%.1f %s "
               "floor_warm_ratio=%.4f machine_ratio=%.4f "
               "machine_warm_ratio=%.4f machine_cpu_us_per_example=%.1f "
               "threads_us=%s baseline_threads_us=%s "
               "faults_per_example=%.1f baseline_faults_per_example=%.1f\n",
               N, latency_ms, c, B.rounds, wall, ideal, wall / ideal, cpu_us,
               base_us, cpu_us - base_us,
               median(B.round_overhead_us[k], B.rounds), rounds,
               B.csw[k] / examples, B.base_csw[k] / examples, B.p50[k],
               B.p99[k], base_wall, base_wall / ideal, B.warm ? 1 : 0,
               B.conns[k], B.waves[k], fl[k].wall_s, fl[k].wall_s / ideal,
               fl[k].cpu_s * 1e6 / (double)N, floor_waves[k],
               fl_warm[k].wall_s / ideal, mach[k].wall_s / ideal,
               mach_warm[k].wall_s / ideal, mach[k].cpu_s * 1e6 / (double)N,
               threads, base_threads, B.flt[k] / examples,
               B.base_flt[k] / examples);
    }
    return B.errors || BJ.errors ? 1 : 0;
}
