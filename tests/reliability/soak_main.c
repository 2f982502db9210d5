/*
 * soak_main.c — the load of scripts/soak.sh (built as dspex-soak, not a
 * test): for a given number of seconds, round after round of dx_evaluate
 * (a Predict over 32 fresh questions, 8 at a time, cache bypassed so every
 * call goes upstream) through the local LM server, with faults from every
 * class the server has injected before each round (rate limits, 5xx,
 * overload, auth, slow answers, stalls, resets mid-body, truncated
 * streams, malformed JSON, wrong content type). At the same time the same
 * program is served over HTTP (dx_serve) and SERVE_CLIENTS threads post to
 * it on keep-alive connections: predict requests (some with the streaming
 * answer), and every eighth one malformed. A sampler thread prints the
 * process's resident set size once a second.
 *
 * Output (one line each, machine-readable):
 *   sample <seconds since start> <rss KiB> <malloc'd bytes in use, KiB>
 *          procs=<live processes> mailbox=<messages waiting, all processes>
 *          pmem=<process memory KiB> http=<transfers in flight>
 *          srvconns=<LM server connections open>
 *   round <n> done=<examples finished> errors=<failed examples>
 *   soak rounds=<n> examples=<n> errors=<n> lost=<n> served=<n>
 *        serve_errors=<n> serve_lost=<n>
 * lost counts examples an evaluation did not finish (must stay 0);
 * served counts HTTP requests answered 200, serve_errors those answered
 * with an error status (a malformed request must get 400, an LM fault may
 * give 502/504), serve_lost those that got no HTTP answer at all (must
 * stay 0).
 * Exit status 0 unless setup failed or an example was lost.
 * DX_SOAK_NO_FAULTS=1 runs the same load without faults.
 */
#include <inttypes.h>
#include <curl/curl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/evaluate.h"
#include "dspex/http.h"
#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/module.h"
#include "dspex/runtime.h"
#include "dspex/serve.h"
#include "dspex/server.h"

static dx_lmserver *srv;
static char url[128];
static _Atomic int start_rc = 1;
static atomic_bool stop_sampler;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static double t0;

static void *sampler(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_sampler)) {
        /* In-use heap beside RSS: growth of the first is memory held,
         * growth of the second alone is the allocator's fragmentation. */
        struct mallinfo2 mi = mallinfo2();
        /* What the runtime holds, to tell which part grows. */
        size_t nproc = 0, mailbox = 0, pmem = 0;
        dx_proc_info *ps = NULL;
        if (dx_process_list(&ps, &nproc) == DX_OK) {
            for (size_t i = 0; i < nproc; i++) {
                mailbox += ps[i].mailbox_len;
                pmem += ps[i].memory_bytes;
            }
            dx_free(ps);
        }
        dx_lmserver_stats st = {0};
        dx_lmserver_stats_get(srv, &st);
        printf("sample %.1f %ld %zu procs=%zu mailbox=%zu pmem=%zu http=%zu "
               "srvconns=%" PRIu64 "\n",
               now_s() - t0, rss_kib(), mi.uordblks / 1024, nproc, mailbox,
               pmem / 1024, dx_http_in_flight(), st.connections_open);
        fflush(stdout);
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static const dx_lmcache_limits soak_cache_limits = {.max_entries = 256};

static void start_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/soak-model", url, "sk-soak"},
        /* A stalled answer costs one attempt, not the example. */
        .attempt_timeout_ms = 1500,
        /* The served requests are all distinct and cached: a small cache
         * is full within the warm-up, so what follows measures eviction,
         * not a cache filling up to its default 10,000 entries. */
        .cache_limits = &soak_cache_limits,
    };
    dx_server_opts so = {.name = "lm"};
    atomic_store(&start_rc, dx_lm_client_start(&o, &so, NULL));
}

/* dx_server_stop is for processes: stop the client from one. */
static void stop_client(void *arg)
{
    (void)arg;
    dx_pid lm = dx_whereis("lm");
    atomic_store(&start_rc,
                 dx_pid_is_none(lm) ? DX_OK : dx_server_stop(lm, NULL, 5000));
}

static double any_answer(const dx_example *ex, const dx_prediction *p,
                         const dx_trace *t, void *ud)
{
    (void)ex;
    (void)t;
    (void)ud;
    return dx_prediction_get_str(p, "answer", "")[0] ? 1.0 : 0.0;
}

/* ---- HTTP load on the served program ---------------------------------- */

#define SERVE_CLIENTS 2

static dx_serve *service;
static atomic_bool stop_load;
static atomic_long served, serve_errors, serve_lost, serve_bad_status;

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return size * n;
}

static void *serve_client(void *arg)
{
    long id = (long)(intptr_t)arg;
    CURL *h = curl_easy_init();
    if (h == NULL)
        return NULL;
    char url[128], body[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/programs/qa/predict",
             dx_serve_port(service));
    struct curl_slist *hdrs =
        curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    for (long i = 0; !atomic_load(&stop_load); i++) {
        bool malformed = i % 8 == 7;
        if (malformed)
            snprintf(body, sizeof body, "{\"inputs\": {\"question\": ");
        else
            snprintf(body, sizeof body,
                     "{\"inputs\": {\"question\": \"client %ld request "
                     "%ld\"}%s}",
                     id, i, i % 4 == 1 ? ", \"stream\": true" : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        long status = 0;
        if (curl_easy_perform(h) != CURLE_OK) {
            atomic_fetch_add(&serve_lost, 1);
            continue;
        }
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200 && !malformed)
            atomic_fetch_add(&served, 1);
        else if ((malformed && status == 400) || status == 502 ||
                 status == 503 || status == 504)
            atomic_fetch_add(&serve_errors, 1);
        else
            atomic_fetch_add(&serve_bad_status, 1);
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return NULL;
}

static const char *const faults[] = {
    "rate_limit:0",
    "overloaded",
    "server_error",
    "server_error:502",
    "auth",
    "slow:50",
    "stall",
    "reset_mid_body",
    "truncated_sse",
    "malformed_json",
    "wrong_content_type",
};

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 600;
    /* DX_SOAK_NO_FAULTS=1: the same load without faults, to tell growth
     * that faults cause from growth the load alone causes. */
    bool no_faults = getenv("DX_SOAK_NO_FAULTS") != NULL;
    t0 = now_s();
    if (dx_lmserver_start(NULL, &srv) != DX_OK)
        return 2;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    if (dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}) != DX_OK)
        return 2;
    dx_pid pid;
    if (dx_spawn(start_client, NULL, &pid) != DX_OK)
        return 2;
    for (int i = 0; i < 1000 && atomic_load(&start_rc) == 1; i++)
        nanosleep(&(struct timespec){0, 5000000}, NULL);
    if (atomic_load(&start_rc) != DX_OK)
        return 2;

    dx_signature *s = NULL;
    if (dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL) !=
        DX_OK)
        return 2;
    dx_module *prog = dx_predict_new(s, NULL);
    dx_signature_unref(s);

    dx_serve_program sp = {.name = "qa", .module = prog};
    dx_serve_opts svo = {.programs = &sp, .nprograms = 1};
    dx_diag sd = {0};
    if (dx_serve_start(&svo, &service, &sd) != DX_OK) {
        fprintf(stderr, "soak: serve: %s\n", sd.msg);
        return 2;
    }
    pthread_t load[SERVE_CLIENTS];
    for (long i = 0; i < SERVE_CLIENTS; i++)
        pthread_create(&load[i], NULL, serve_client, (void *)(intptr_t)i);

    pthread_t th;
    pthread_create(&th, NULL, sampler, NULL);
    unsigned seed = 12345;
    long rounds = 0, examples = 0, errors = 0, lost = 0;
    while (now_s() - t0 < seconds) {
        dx_dataset *ds = dx_dataset_new();
        const char *in[] = {"question"};
        for (int i = 0; i < 32; i++) {
            dx_example *ex = dx_example_new();
            char q[64];
            snprintf(q, sizeof q, "round %ld question %d", rounds, i);
            dx_example_set_str(ex, "question", q);
            dx_example_with_inputs(ex, in, 1);
            dx_dataset_append(ds, ex);
        }
        for (int k = 0; k < 4 && !no_faults; k++) {
            seed = seed * 1103515245u + 12345u;
            dx_lmserver_inject(
                srv, faults[(seed >> 16) % (sizeof faults / sizeof faults[0])],
                1 + (seed >> 8) % 2);
        }
        dx_eval_opts eo = {
            .metric = {.kind = DX_METRIC_CUSTOM, .fn = any_answer},
            .concurrency = 8,
            .example_timeout_ms = 20000,
            .progress = DX_EVAL_PROGRESS_OFF,
            .call = {.cache_mode = DX_LMCACHE_BYPASS},
        };
        dx_eval_result *r = NULL;
        dx_diag d = {0};
        if (dx_evaluate(prog, ds, &eo, &r, &d) != DX_OK) {
            fprintf(stderr, "soak: evaluate: %s\n", d.msg);
            lost += 32;
        } else {
            examples += (long)r->n_done;
            errors += (long)r->n_errors;
            lost += (long)(r->n - r->n_done);
            printf("round %ld done=%zu errors=%zu\n", rounds, r->n_done,
                   r->n_errors);
            dx_eval_result_free(r);
        }
        dx_dataset_free(ds);
        rounds++;
    }
    atomic_store(&stop_load, true);
    for (int i = 0; i < SERVE_CLIENTS; i++)
        pthread_join(load[i], NULL);
    atomic_store(&stop_sampler, true);
    pthread_join(th, NULL);
    dx_serve_stop(service, 5000);
    printf("soak rounds=%ld examples=%ld errors=%ld lost=%ld served=%ld "
           "serve_errors=%ld serve_lost=%ld serve_bad_status=%ld\n",
           rounds, examples, errors, lost, atomic_load(&served),
           atomic_load(&serve_errors), atomic_load(&serve_lost),
           atomic_load(&serve_bad_status));
    dx_module_free(prog);
    atomic_store(&start_rc, 1);
    if (dx_spawn(stop_client, NULL, &pid) == DX_OK)
        for (int i = 0; i < 2000 && atomic_load(&start_rc) == 1; i++)
            nanosleep(&(struct timespec){0, 5000000}, NULL);
    dx_runtime_stop();
    dx_lmserver_stop_free(srv);
    return lost == 0 && atomic_load(&serve_lost) == 0 &&
                   atomic_load(&serve_bad_status) == 0
               ? 0
               : 1;
}
