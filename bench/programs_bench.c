/*
 * programs_bench.c — framework CPU per Predict / ChainOfThought call, with
 * the LM answered from the LM client's in-memory cache (so what is measured
 * is dspex: formatting, the client round trip and cache lookup, parsing,
 * the prediction), the way DSPy's figure is measured: n calls in a loop,
 * CPU time divided by calls.
 *
 *   programs-bench predict <n>       dx_forward in one process, n calls
 *   programs-bench cot <n>           the same with ChainOfThought
 *   programs-bench predict_call <n>  dx_module_call per call (a process
 *                                    per call, as a served request runs)
 *   programs-bench cot_call <n>
 *   programs-bench format <n>        ChatAdapter format + parse alone
 *                                    (no LM client), the part DSPy
 *                                    measures at 107 us
 *
 * CPU is the whole process's (CLOCK_PROCESS_CPUTIME_ID: schedulers, the I/O
 * thread, the local server's thread). Prints one line:
 *   RESULT sys=dspex bench=<mode> n=<n> time_s=.. cpu_us_per_call=..
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/module.h"
#include "dspex/runtime.h"

typedef enum {
    MODE_PREDICT,
    MODE_COT,
    MODE_PREDICT_CALL,
    MODE_COT_CALL,
    MODE_FORMAT,
} bench_mode;

typedef struct bench {
    bench_mode mode;
    long n;
    char url[128];
    double wall_s, cpu_s;
    long errors;
    char first_error[DX_DIAG_MAX + 16];
    _Atomic int done;
} bench;

static bench B;

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The forward modes run the loop inside one program call: a wrapper
 * module whose forward runs the inner program n times with dx_forward. */
typedef struct loop_ud {
    dx_module *inner;
    long n;
} loop_ud;

static int loop_forward(dx_ctx *ctx, const dx_module *self,
                        const dx_example *in, dx_prediction **out)
{
    loop_ud *ud = dx_module_ud(self);
    double w0 = clock_s(CLOCK_MONOTONIC),
           c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < ud->n; i++) {
        dx_prediction *p = NULL;
        int rc = dx_forward(ctx, ud->inner, in, &p);
        if (rc != DX_OK) {
            if (B.errors++ == 0)
                snprintf(B.first_error, sizeof B.first_error, "%s",
                         dx_ctx_diag(ctx)->msg);
            continue;
        }
        dx_prediction_free(p);
    }
    B.cpu_s = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    B.wall_s = clock_s(CLOCK_MONOTONIC) - w0;
    *out = dx_prediction_new();
    return DX_OK;
}

static dx_module *make_program(bool cot)
{
    dx_signature *s = NULL;
    dx_diag d = {0};
    if (dx_signature_parse("question -> answer", NULL, NULL, 0, &s, &d) !=
        DX_OK) {
        fprintf(stderr, "signature: %s\n", d.msg);
        exit(1);
    }
    dx_module *m =
        cot ? dx_chain_of_thought_new(s, NULL) : dx_predict_new(s, NULL);
    dx_signature_unref(s);
    return m;
}

static void bench_main(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/bench-model", B.url, "sk-bench"},
    };
    dx_pid client;
    if (dx_lm_client_start(&o, NULL, &client) != DX_OK) {
        snprintf(B.first_error, sizeof B.first_error, "client start failed");
        B.errors = 1;
        atomic_store(&B.done, 1);
        return;
    }
    bool cot = B.mode == MODE_COT || B.mode == MODE_COT_CALL;
    dx_module *prog = make_program(cot);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", "What is the capital of France?");
    dx_call_opts co = {.lm = client};

    /* Warm up: the first call reaches the server and fills the cache. */
    dx_prediction *p = NULL;
    dx_diag d = {0};
    if (dx_module_call(prog, in, &co, &p, NULL, &d) != DX_OK) {
        snprintf(B.first_error, sizeof B.first_error, "warm-up: %s", d.msg);
        B.errors = 1;
    }
    dx_prediction_free(p);

    if (B.mode == MODE_PREDICT || B.mode == MODE_COT) {
        /* Not on this process's stack: the loop runs in another process
         * (stacks are shared and copied in copy-stack mode). */
        static loop_ud ud;
        ud = (loop_ud){prog, B.n};
        dx_module *loop = dx_module_new("Loop", loop_forward, &ud, NULL, NULL);
        if (dx_module_call(loop, in, &co, &p, NULL, &d) != DX_OK)
            snprintf(B.first_error, sizeof B.first_error, "%s", d.msg);
        dx_prediction_free(p);
        dx_module_free(loop);
    } else {
        double w0 = clock_s(CLOCK_MONOTONIC);
        double c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        for (long i = 0; i < B.n; i++) {
            if (dx_module_call(prog, in, &co, &p, NULL, &d) != DX_OK) {
                if (B.errors++ == 0)
                    snprintf(B.first_error, sizeof B.first_error, "%s", d.msg);
                continue;
            }
            dx_prediction_free(p);
        }
        B.cpu_s = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        B.wall_s = clock_s(CLOCK_MONOTONIC) - w0;
    }
    dx_example_free(in);
    dx_module_free(prog);
    dx_server_stop(client, NULL, 5000);
    atomic_store(&B.done, 1);
}

/* Format + parse alone, on the host thread. */
static void bench_format(void)
{
    dx_signature *s = NULL;
    dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", "What is the capital of France?");
    const char *answer = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]";
    double w0 = clock_s(CLOCK_MONOTONIC),
           c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < B.n; i++) {
        dx_lm_request *req = dx_lm_request_new(NULL);
        dx_example *out = NULL;
        if (dx_adapter_format(DX_ADAPTER_CHAT, s, NULL, 0, in, req, NULL) !=
                DX_OK ||
            dx_adapter_parse(DX_ADAPTER_CHAT, s, answer, strlen(answer), &out,
                             NULL) != DX_OK)
            B.errors++;
        dx_example_free(out);
        dx_lm_request_free(req);
    }
    B.cpu_s = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    B.wall_s = clock_s(CLOCK_MONOTONIC) - w0;
    dx_example_free(in);
    dx_signature_unref(s);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr,
                "usage: %s predict|cot|predict_call|cot_call|format "
                "<n>\n",
                argv[0]);
        return 2;
    }
    static const char *const names[] = {"predict", "cot", "predict_call",
                                        "cot_call", "format"};
    int mode = -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(argv[1], names[i]) == 0)
            mode = i;
    B.n = strtol(argv[2], NULL, 10);
    if (mode < 0 || B.n <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    B.mode = (bench_mode)mode;
    if (B.mode == MODE_FORMAT) {
        bench_format();
    } else {
        dx_lmserver *srv = NULL;
        if (dx_lmserver_start(NULL, &srv) != DX_OK)
            return 1;
        snprintf(B.url, sizeof B.url, "http://127.0.0.1:%d/v1",
                 dx_lmserver_port(srv));
        /* The first (warm-up) answer in ChatAdapter form; later calls are
         * cache hits. */
        dx_lmserver_push_reply(srv,
                               B.mode == MODE_COT || B.mode == MODE_COT_CALL
                                   ? "[[ ## reasoning ## ]]\nIt is well "
                                     "known.\n\n[[ ## answer ## ]]\nParis"
                                     "\n\n[[ ## completed ## ]]"
                                   : "[[ ## answer ## ]]\nParis\n\n"
                                     "[[ ## completed ## ]]");
        dx_pid pid;
        if (dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}) != DX_OK ||
            dx_spawn(bench_main, NULL, &pid) != DX_OK)
            return 1;
        while (!atomic_load(&B.done)) {
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
        dx_runtime_stop();
        dx_lmserver_stop_free(srv);
    }
    if (B.errors)
        fprintf(stderr, "errors: %ld (first: %s)\n", B.errors, B.first_error);
    printf("RESULT sys=dspex bench=%s n=%ld time_s=%.4f cpu_us_per_call=%.3f "
           "errors=%ld\n",
           names[mode], B.n, B.wall_s, B.cpu_s * 1e6 / (double)B.n, B.errors);
    return B.errors ? 1 : 0;
}
