/*
 * embed_bench.c — what an embedded program call costs a host (embed.h):
 * throughput and latency of dx_embed_call_async with a window of calls in
 * flight, with callbacks on a runtime thread or on the host's libuv loop,
 * and of dx_embed_call_sync one at a time.
 *
 *   embed-bench <mode> <program> <n> [window]
 *     mode     async   callbacks on a runtime thread; each callback
 *                      starts the next call, keeping `window` in flight
 *              loop    the same with callbacks on the host's libuv loop
 *                      (dx_embed_attach_loop)
 *              sync    dx_embed_call_sync from one host thread, in a row
 *     program  echo    a C module that answers at once (no LM): the
 *                      embedding's own cost (two processes, copies, the
 *                      completion hop)
 *              predict a Predict on sim/base through an LM client whose
 *                      cache answers (the first call computes): the
 *                      cached path of a served request
 *     window   calls in flight (default 64; 1 for sync)
 *
 * Prints one line:
 *   RESULT sys=dspex bench=embed_<mode>_<program> n=.. window=.. time_s=..
 *     calls_per_s=.. cpu_us_per_call=.. p50_us=.. p99_us=.. errors=..
 * Latency is from the start of a call to its callback.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "dspex/embed.h"
#include "dspex/lm.h"
#include "dspex/program.h"

typedef struct bench {
    dx_embed *e;
    dx_module *m;
    dx_example *in;
    uv_loop_t *loop; /* loop mode */
    long n;
    atomic_long started;
    atomic_long finished;
    atomic_long errors;
    double *lat_us; /* per call, by index */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} bench;

static bench B;

typedef struct call_ud {
    long i;
    double t0;
} call_ud;

static double now_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int echo_forward(dx_ctx *ctx, const dx_module *self,
                        const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)self;
    *out = dx_prediction_new();
    if (!*out)
        return DX_ENOMEM;
    return dx_example_set_str(dx_prediction_fields_mut(*out), "answer",
                              dx_example_get_str(in, "question", ""));
}

static void start_next(void);

static void on_done(dx_embed_call *call, int rc, dx_prediction *pred,
                    const dx_diag *diag, void *ud)
{
    (void)call;
    (void)diag;
    call_ud *u = ud;
    B.lat_us[u->i] = (now_s(CLOCK_MONOTONIC) - u->t0) * 1e6;
    free(u);
    if (rc != DX_OK)
        atomic_fetch_add(&B.errors, 1);
    dx_prediction_free(pred);
    start_next();
    if (atomic_fetch_add(&B.finished, 1) + 1 == B.n) {
        if (B.loop) {
            uv_stop(B.loop);
        } else {
            pthread_mutex_lock(&B.mu);
            pthread_cond_signal(&B.cv);
            pthread_mutex_unlock(&B.mu);
        }
    }
}

static void start_next(void)
{
    long i = atomic_fetch_add(&B.started, 1);
    if (i >= B.n)
        return;
    call_ud *u = malloc(sizeof *u);
    if (!u)
        abort();
    *u = (call_ud){.i = i, .t0 = now_s(CLOCK_MONOTONIC)};
    int rc = dx_embed_call_async(B.e, B.m, B.in, NULL, on_done, u, NULL);
    if (rc != DX_OK) { /* counted as finished at once */
        free(u);
        B.lat_us[i] = 0;
        atomic_fetch_add(&B.errors, 1);
        atomic_fetch_add(&B.finished, 1);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: embed-bench async|loop|sync echo|predict <n> "
                        "[window]\n");
        return 2;
    }
    const char *mode = argv[1], *prog = argv[2];
    B.n = strtol(argv[3], NULL, 10);
    long window = argc > 4 ? strtol(argv[4], NULL, 10) : 64;
    bool sync = strcmp(mode, "sync") == 0;
    if (sync)
        window = 1;
    if (B.n <= 0 || window <= 0 ||
        (!sync && strcmp(mode, "async") && strcmp(mode, "loop")) ||
        (strcmp(prog, "echo") && strcmp(prog, "predict"))) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    B.lat_us = calloc((size_t)B.n, sizeof *B.lat_us);
    pthread_mutex_init(&B.mu, NULL);
    pthread_cond_init(&B.cv, NULL);

    dx_runtime_opts ro = {.schedulers = 2};
    if (!B.lat_us ||
        dx_embed_start(&(dx_embed_opts){.runtime = &ro}, &B.e) != DX_OK)
        return 1;
    dx_lm_client_opts lo = {.primary = {"sim/base", NULL, NULL}};
    dx_child_spec child = {0};
    dx_diag d = {0};
    if (strcmp(prog, "echo") == 0) {
        B.m = dx_module_new("Echo", echo_forward, NULL, NULL, NULL);
    } else {
        dx_sup_spec root = {.children = &child, .nchildren = 1};
        if (dx_lm_client_child_spec(&child, "lm", &lo, "lm") != DX_OK ||
            dx_embed_app_start(B.e, &root, NULL, NULL) != DX_OK ||
            dx_program_single("predict", "question -> answer", NULL, &B.m,
                              &d) != DX_OK)
            return 1;
    }
    B.in = dx_example_new();
    dx_example_set_str(B.in, "question", "What is the capital of Peru?");

    uv_loop_t loop;
    if (strcmp(mode, "loop") == 0) {
        uv_loop_init(&loop);
        B.loop = &loop;
        dx_embed_attach_loop(B.e, &loop);
    }

    double w0 = now_s(CLOCK_MONOTONIC), c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
    if (sync) {
        for (long i = 0; i < B.n; i++) {
            double t0 = now_s(CLOCK_MONOTONIC);
            dx_prediction *p = NULL;
            if (dx_embed_call_sync(B.e, B.m, B.in, NULL, &p, NULL) != DX_OK)
                atomic_fetch_add(&B.errors, 1);
            dx_prediction_free(p);
            B.lat_us[i] = (now_s(CLOCK_MONOTONIC) - t0) * 1e6;
        }
    } else {
        for (long k = 0; k < window; k++)
            start_next();
        if (B.loop) {
            uv_run(&loop, UV_RUN_DEFAULT);
        } else {
            pthread_mutex_lock(&B.mu);
            while (atomic_load(&B.finished) < B.n)
                pthread_cond_wait(&B.cv, &B.mu);
            pthread_mutex_unlock(&B.mu);
        }
    }
    double wall = now_s(CLOCK_MONOTONIC) - w0;
    double cpu = now_s(CLOCK_PROCESS_CPUTIME_ID) - c0;

    dx_embed_shutdown(B.e, 1000, NULL);
    if (B.loop) {
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
    dx_lm_client_child_spec_free(&child);
    dx_module_free(B.m);
    dx_example_free(B.in);

    qsort(B.lat_us, (size_t)B.n, sizeof *B.lat_us, cmp_double);
    printf("RESULT sys=dspex bench=embed_%s_%s n=%ld window=%ld time_s=%.4f "
           "calls_per_s=%.0f cpu_us_per_call=%.3f p50_us=%.1f p99_us=%.1f "
           "errors=%ld\n",
           mode, prog, B.n, window, wall, (double)B.n / wall,
           cpu * 1e6 / (double)B.n, B.lat_us[B.n / 2],
           B.lat_us[(size_t)((double)B.n * 0.99)], atomic_load(&B.errors));
    free(B.lat_us);
    return atomic_load(&B.errors) ? 1 : 0;
}
