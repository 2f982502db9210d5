/*
 * dspex.c — the `dspex` command: run, evaluate, optimize and inspect the
 * prompts of declarative programs (program.h), and serve the local LM
 * server.
 *
 *   dspex prompt   PROGRAM.json | --module KIND --signature SIG ...
 *   dspex run      PROGRAM.json --input k=v ...
 *   dspex eval     PROGRAM.json DATA.jsonl|.csv --metric NAME ...
 *   dspex optimize PROGRAM.json TRAIN.jsonl --optimizer NAME -o OUT.json
 *   dspex lm-server [--port P] [--latency-ms L] [--faults SPEC[:COUNT]]
 *
 * Exit codes: 0 success, 1 the work failed (an LM error, a failed
 * evaluation...), 2 bad usage or bad input (a malformed file, an unknown
 * metric), with a one-line error naming the file, line and column where
 * there is one.
 */
#include <errno.h>
#include <math.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/evaluate.h"
#include "dspex/http.h"
#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/optimize.h"
#include "dspex/program.h"
#include "dspex/runtime.h"
#include "dspex/serve.h"
#include "dspex/sim.h"
#include "dspex/supervisor.h"
#include "dspex/telemetry.h"
#include "dspex/teleprompt.h"

#define EXIT_USAGE 2

static const char *prog_name = "dspex";

static int fail_usage(const char *fmt, ...) DX_PRINTF(1, 2);
static int fail_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_USAGE;
}

/* A diag from loading user input: usage-class errors exit 2, others 1. */
static int fail_diag(const dx_diag *d, int rc)
{
    fprintf(stderr, "%s: %s\n", prog_name,
            d->msg[0] ? d->msg : dx_strerror(rc));
    return (rc == DX_ESYNTAX || rc == DX_EINVAL || rc == DX_EIO ||
            rc == DX_ENOENT)
               ? EXIT_USAGE
               : 1;
}

/* ---- shared options ------------------------------------------------------ */

typedef struct common {
    const char *model;
    const char *judge_model; /* --judge-model: the judged metrics' LM */
    const char *base_url;
    const char *api_key;
    const char *headers[DX_LM_CLIENT_MAX_HEADERS]; /* --header, in order */
    size_t n_headers;
    const char *adapter;
    const char *cache;
    dx_example *inputs; /* --input k=v */
    const char *module_kind;
    const char *signature;
    const char *instructions;
    const char *demos;
    const char *state;
    bool json;
    int64_t timeout_ms;
} common;

static int add_input(common *c, const char *kv, bool as_json)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return fail_usage("--input wants key=value, got \"%s\"", kv);
    char key[256];
    size_t kn = (size_t)(eq - kv);
    if (kn >= sizeof key)
        return fail_usage("--input: key too long");
    memcpy(key, kv, kn);
    key[kn] = '\0';
    if (!c->inputs)
        c->inputs = dx_example_new();
    dx_diag d = {0};
    int rc = as_json ? dx_example_set_json(c->inputs, key, eq + 1, &d)
                     : dx_example_set_str(c->inputs, key, eq + 1);
    if (rc != DX_OK)
        return fail_usage("--input %s: %s", key,
                          d.msg[0] ? d.msg : dx_strerror(rc));
    return 0;
}

/* The config file: $DSPEX_CONFIG, else ~/.config/dspex/config.json —
 * {"model": "...", "base_url": "...", "api_key_env": "VAR",
 *  "headers": {"Name": "value", ...}}. Read once; a file that is missing
 * is no error, one that is malformed is. base_url and headers belong to
 * the config's endpoint: --model or --base-url naming another leaves them
 * out, so a gateway's key never goes to another server. */
static char cfg_model[256], cfg_base_url[512], cfg_key[512];
static char cfg_header_text[DX_LM_CLIENT_MAX_HEADERS][1024];
static const char *cfg_headers[DX_LM_CLIENT_MAX_HEADERS];
static size_t cfg_n_headers;
static bool cfg_loaded;

/* The config's "headers" object into cfg_headers, each checked as
 * --header checks it. 0, or the exit status. */
static int config_headers(const char *path, const cJSON *headers)
{
    if (!cJSON_IsObject(headers))
        return fail_usage("%s: \"headers\": expected an object of "
                          "\"Name\": \"value\" strings",
                          path);
    for (const cJSON *h = headers->child; h; h = h->next) {
        if (!cJSON_IsString(h))
            return fail_usage("%s: \"headers\": \"%s\": expected a string",
                              path, h->string);
        if (cfg_n_headers == DX_LM_CLIENT_MAX_HEADERS)
            return fail_usage("%s: \"headers\": at most %d", path,
                              DX_LM_CLIENT_MAX_HEADERS);
        char *line = cfg_header_text[cfg_n_headers];
        int len = snprintf(line, sizeof cfg_header_text[0], "%s: %s", h->string,
                           h->valuestring);
        char why[160];
        if (len < 0 || (size_t)len >= sizeof cfg_header_text[0])
            return fail_usage("%s: \"headers\": \"%s\": longer than %zu "
                              "bytes",
                              path, h->string, sizeof cfg_header_text[0] - 1);
        if (dx_lm_header_explain(line, why, sizeof why) != DX_OK)
            return fail_usage("%s: \"headers\": %s", path, why);
        cfg_headers[cfg_n_headers++] = line;
    }
    return 0;
}

static int load_config(void)
{
    if (cfg_loaded)
        return 0;
    cfg_loaded = true;
    char path[1024];
    const char *env = getenv("DSPEX_CONFIG");
    const char *home = getenv("HOME");
    if (env && env[0])
        snprintf(path, sizeof path, "%s", env);
    else if (home && home[0])
        snprintf(path, sizeof path, "%s/.config/dspex/config.json", home);
    else
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (env && env[0])
            return fail_usage("%s: %s", path, strerror(errno));
        return 0;
    }
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *doc = cJSON_ParseWithLength(buf, n);
    if (!cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        return fail_usage("%s: not a JSON object", path);
    }
    static const char *const known[] = {"model", "base_url", "api_key_env"};
    for (const cJSON *it = doc->child; it; it = it->next) {
        bool ok = false;
        for (size_t i = 0; i < 3; i++)
            ok = ok || strcmp(it->string, known[i]) == 0;
        int rc = 0;
        if (strcmp(it->string, "headers") == 0)
            rc = config_headers(path, it);
        else if (!ok || !cJSON_IsString(it))
            rc = fail_usage("%s: \"%s\": expected one of model, base_url, "
                            "api_key_env (each a string) or headers",
                            path, it->string);
        if (rc != 0) {
            cJSON_Delete(doc);
            return rc;
        }
    }
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(doc, "model")))
        snprintf(cfg_model, sizeof cfg_model, "%s", v->valuestring);
    if ((v = cJSON_GetObjectItemCaseSensitive(doc, "base_url")))
        snprintf(cfg_base_url, sizeof cfg_base_url, "%s", v->valuestring);
    if ((v = cJSON_GetObjectItemCaseSensitive(doc, "api_key_env"))) {
        const char *key = getenv(v->valuestring);
        if (key)
            snprintf(cfg_key, sizeof cfg_key, "%s", key);
    }
    cJSON_Delete(doc);
    return 0;
}

/* --model, else $DSPEX_MODEL, else the config file, else the simulator. */
static const char *model_or_default(const common *c)
{
    if (c->model)
        return c->model;
    const char *env = getenv("DSPEX_MODEL");
    if (env && env[0])
        return env;
    return cfg_model[0] ? cfg_model : "sim/base";
}

static dx_adapter_kind adapter_of(const common *c)
{
    return c->adapter && strcmp(c->adapter, "json") == 0 ? DX_ADAPTER_JSON
                                                         : DX_ADAPTER_CHAT;
}

/* The program: a file, or one inline module; then --state and --demos. */
static int load_program(const common *c, const char *path, dx_module **out)
{
    dx_diag d = {0};
    int rc;
    if (path && (c->module_kind || c->signature || c->instructions)) {
        return fail_usage("--module, --signature and --instructions declare "
                          "a program in place of PROGRAM.json: give one or "
                          "the other, not both");
    } else if (path) {
        rc = dx_program_load(path, out, &d);
    } else if (c->module_kind && c->signature) {
        rc = dx_program_single(c->module_kind, c->signature, c->instructions,
                               out, &d);
    } else {
        return fail_usage("give a PROGRAM.json, or --module and --signature");
    }
    if (rc != DX_OK)
        return fail_diag(&d, rc);
    if (c->state && (rc = dx_module_load(*out, c->state, &d)) != DX_OK) {
        dx_module_free(*out);
        return fail_diag(&d, rc);
    }
    if (c->demos) {
        dx_dataset *ds = NULL;
        if ((rc = dx_dataset_load(c->demos, NULL, 0, &ds, &d)) != DX_OK) {
            dx_module_free(*out);
            return fail_diag(&d, rc);
        }
        dx_named_predictor *preds = NULL;
        size_t np = 0;
        dx_module_predictors(*out, &preds, &np);
        for (size_t i = 0; i < np; i++)
            dx_predict_set_demos(preds[i].predict,
                                 (const dx_example *const *)ds->items, ds->n);
        dx_free(preds);
        dx_dataset_free(ds);
    }
    return 0;
}

/* ---- the runtime and the LM client -------------------------------------- */

static _Atomic int client_rc = 1;
static dx_lm_client_opts client_opts;
/* --judge-model: a second client, registered as "judge", for the judged
 * metrics; judge_opts.primary.model is NULL without one. */
static dx_lm_client_opts judge_opts;
/* The LM clients run under a supervisor of their own ("dspex.lm"), which
 * restarts one under its name ("lm", "judge") if it crashes, as every LM
 * client of a dspex application should; the dashboard of `dspex serve`
 * shows it. */
static dx_child_spec client_specs[2];
static size_t n_client_specs;
static dx_pid client_sup;

static void free_client_specs(void)
{
    for (size_t i = 0; i < n_client_specs; i++)
        dx_lm_client_child_spec_free(&client_specs[i]);
    n_client_specs = 0;
}

static void start_client(void *arg)
{
    (void)arg;
    /* A model string or key the client would refuse is reported plainly,
     * before a supervisor logs the failed start. */
    dx_lm_config *check = NULL;
    int rc = dx_lm_config_new(client_opts.primary.model,
                              client_opts.primary.base_url,
                              client_opts.primary.api_key, &check);
    dx_lm_config_free(check);
    if (rc == DX_OK) {
        rc =
            dx_lm_client_child_spec(&client_specs[0], "lm", &client_opts, "lm");
        n_client_specs = rc == DX_OK ? 1 : 0;
    }
    if (rc == DX_OK && judge_opts.primary.model) {
        rc = dx_lm_client_child_spec(&client_specs[1], "judge", &judge_opts,
                                     "judge");
        n_client_specs += rc == DX_OK;
    }
    if (rc == DX_OK) {
        dx_sup_spec sup = {.name = "dspex.lm",
                           .strategy = DX_SUP_ONE_FOR_ONE,
                           .intensity = 5,
                           .period_s = 10,
                           .children = client_specs,
                           .nchildren = n_client_specs};
        rc = dx_sup_start_link(&sup, &client_sup, NULL);
        /* This starter ends now; its exit must not take the tree along. */
        if (rc == DX_OK)
            dx_unlink(client_sup);
        /* A client that cannot start says why only when started directly
         * (the supervisor reports DX_EINIT): ask it for the message. */
        if (rc == DX_EINIT) {
            dx_pid probe;
            rc = dx_lm_client_start(&client_opts, NULL, &probe);
            if (rc == DX_OK) {
                dx_server_stop(probe, NULL, 5000);
                rc = DX_EINIT;
            }
        }
    }
    if (rc != DX_OK)
        free_client_specs();
    atomic_store(&client_rc, rc);
}

/* Where `dspex inspect` finds the last command's LM calls. */
static void history_path(char *out, size_t cap)
{
    const char *dir = getenv("DSPEX_HOME");
    const char *home = getenv("HOME");
    if (dir && dir[0])
        snprintf(out, cap, "%s/history.txt", dir);
    else
        snprintf(out, cap, "%s/.cache/dspex/history.txt",
                 home && home[0] ? home : "/tmp");
}

static void mkdirs_for(const char *path)
{
    char d[1024];
    snprintf(d, sizeof d, "%s", path);
    for (char *p = d + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(d, 0755);
            *p = '/';
        }
}

static void stop_client(void *arg)
{
    (void)arg;
    /* Keep the calls for `dspex inspect` (the program's, then the
     * judge's); losing them is not an error of the command that made
     * them. */
    FILE *f = NULL;
    const char *const names[] = {"lm", "judge"};
    for (size_t i = 0; i < 2; i++) {
        dx_pid lm = dx_whereis(names[i]);
        char *text = NULL;
        if (!dx_pid_is_none(lm) &&
            dx_lm_client_inspect_history(lm, 0, &text) == DX_OK && text) {
            if (!f) {
                char path[1024];
                history_path(path, sizeof path);
                mkdirs_for(path);
                f = fopen(path, "w");
            }
            if (f)
                fputs(text, f);
        }
        dx_free(text);
    }
    if (f)
        fclose(f);
    /* Stopping the supervisor stops the clients for good (stopping a
     * client alone would have it restarted). */
    if (!dx_pid_is_none(client_sup) &&
        dx_sup_stop(client_sup, NULL, 10000) == DX_OK)
        free_client_specs();
    client_sup = DX_NOPID;
    atomic_store(&client_rc, 0);
}

static void wait_flag(void)
{
    while (atomic_load(&client_rc) == 1) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
}

/* The first Ctrl-C stops evaluations cleanly (they report what finished);
 * a second one ends the command at once, as Ctrl-C does by default. */
static volatile sig_atomic_t sigint_seen;

static void on_sigint(int sig)
{
    if (sigint_seen) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    sigint_seen = 1;
    dx_evaluate_cancel_all();
}

static int start_lm(const common *c)
{
    int cfg_rc = load_config();
    if (cfg_rc)
        return cfg_rc;
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    /* The config's headers go with its endpoint, first, so a --header of
     * the same name replaces one. */
    static const char *headers[DX_LM_CLIENT_MAX_HEADERS];
    size_t n_headers = 0;
    if (!c->model && !c->base_url)
        for (size_t i = 0; i < cfg_n_headers; i++)
            headers[n_headers++] = cfg_headers[i];
    if (n_headers + c->n_headers > DX_LM_CLIENT_MAX_HEADERS)
        return fail_usage("at most %d headers, the config file's and "
                          "--header's together",
                          DX_LM_CLIENT_MAX_HEADERS);
    for (size_t i = 0; i < c->n_headers; i++)
        headers[n_headers++] = c->headers[i];
    if (dx_runtime_start(NULL) != DX_OK)
        return fail_usage("cannot start the runtime");
    client_opts = (dx_lm_client_opts){
        .primary = {model_or_default(c),
                    c->base_url                    ? c->base_url
                    : cfg_base_url[0] && !c->model ? cfg_base_url
                                                   : NULL,
                    c->api_key   ? c->api_key
                    : cfg_key[0] ? cfg_key
                                 : NULL},
        .cache_path = c->cache,
        .headers = headers,
        .n_headers = n_headers,
    };
    judge_opts = (dx_lm_client_opts){0};
    if (c->judge_model) {
        /* The program's base URL and key go with a judge of the same
         * provider (another model on the same server); any other provider
         * uses its own defaults and key variable. */
        const char *slash = strchr(c->judge_model, '/');
        const char *pm = client_opts.primary.model;
        bool same = slash && strncmp(pm, c->judge_model,
                                     (size_t)(slash - c->judge_model) + 1) == 0;
        judge_opts.primary = (dx_lm_endpoint){
            c->judge_model, same ? client_opts.primary.base_url : NULL,
            same ? client_opts.primary.api_key : NULL};
        if (same) {
            judge_opts.headers = headers;
            judge_opts.n_headers = n_headers;
        }
        char why[256];
        if (dx_lm_config_explain(
                judge_opts.primary.model, judge_opts.primary.base_url,
                judge_opts.primary.api_key, why, sizeof why) != DX_OK) {
            dx_runtime_stop();
            return fail_usage("judge model %s: %s", c->judge_model, why);
        }
    }
    dx_pid pid;
    atomic_store(&client_rc, 1);
    dx_spawn(start_client, NULL, &pid);
    wait_flag();
    int rc = atomic_load(&client_rc);
    if (rc != DX_OK) {
        dx_runtime_stop();
        char why[256];
        if (dx_lm_config_explain(
                client_opts.primary.model, client_opts.primary.base_url,
                client_opts.primary.api_key, why, sizeof why) != DX_OK)
            return fail_usage("model %s: %s", model_or_default(c), why);
        return fail_usage("model %s: %s", model_or_default(c), dx_strerror(rc));
    }
    return 0;
}

/* --concurrency N above the transport's default means N calls at once: an
 * HTTP/1.1 server (a local one, an OpenAI-compatible proxy) takes one per
 * connection, so let the transport open that many, and the process hold
 * that many descriptors, as far as the hard limit allows. */
static void room_for_calls(long concurrency)
{
    if (concurrency <= DX_HTTP_DEFAULT_HOST_CONNECTIONS)
        return;
    long conns = concurrency;
    const rlim_t spare = 256; /* files, the cache, the server's own */
    const rlim_t need = (rlim_t)conns + spare;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need
                          ? rl.rlim_max
                          : need;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
            conns = rl.rlim_cur > spare + DX_HTTP_DEFAULT_HOST_CONNECTIONS
                        ? (long)(rl.rlim_cur - spare)
                        : DX_HTTP_DEFAULT_HOST_CONNECTIONS;
            fprintf(stderr,
                    "dspex: at most %ld connections per LM server (the "
                    "descriptor limit is %llu); calls beyond them queue\n",
                    conns, (unsigned long long)rl.rlim_cur);
        }
    }
    dx_http_limits lim = {.max_host_connections = conns,
                          .max_idle_connections = conns};
    (void)dx_http_set_limits(&lim);
}

static void stop_lm(void)
{
    dx_pid pid;
    atomic_store(&client_rc, 1);
    if (dx_spawn(stop_client, NULL, &pid) == DX_OK)
        wait_flag();
    dx_runtime_stop();
}

/* ---- options ------------------------------------------------------------ */

enum {
    OPT_MODEL = 1000,
    OPT_BASE_URL,
    OPT_API_KEY,
    OPT_ADAPTER,
    OPT_CACHE,
    OPT_INPUT_JSON,
    OPT_MODULE,
    OPT_SIGNATURE,
    OPT_INSTRUCTIONS,
    OPT_DEMOS,
    OPT_STATE,
    OPT_JSON,
    OPT_METRIC,
    OPT_CONCURRENCY,
    OPT_OUT,
    OPT_SAVE_CSV,
    OPT_SAVE_JSON,
    OPT_INPUTS,
    OPT_MAX_ERRORS,
    OPT_TABLE,
    OPT_FAILURE_SCORE,
    OPT_OPTIMIZER,
    OPT_VALSET,
    OPT_REPORT,
    OPT_CHECKPOINT,
    OPT_PORT,
    OPT_HOST,
    OPT_LATENCY,
    OPT_FAULTS,
    OPT_TIMEOUT,
    OPT_CANDIDATES,
    OPT_MAX_DEMOS,
    OPT_MAX_LABELED,
    OPT_TASK,
    OPT_FRAC,
    OPT_FIELD,
    OPT_JUDGE_MODEL,
    OPT_HEADER,
    OPT_RESUME,
};

static const struct option long_opts[] = {
    {"help", no_argument, NULL, 'h'},
    {"model", required_argument, NULL, OPT_MODEL},
    {"base-url", required_argument, NULL, OPT_BASE_URL},
    {"api-key", required_argument, NULL, OPT_API_KEY},
    {"header", required_argument, NULL, OPT_HEADER},
    {"adapter", required_argument, NULL, OPT_ADAPTER},
    {"cache", required_argument, NULL, OPT_CACHE},
    {"input", required_argument, NULL, 'i'},
    {"input-json", required_argument, NULL, OPT_INPUT_JSON},
    {"module", required_argument, NULL, OPT_MODULE},
    {"signature", required_argument, NULL, OPT_SIGNATURE},
    {"instructions", required_argument, NULL, OPT_INSTRUCTIONS},
    {"demos", required_argument, NULL, OPT_DEMOS},
    {"state", required_argument, NULL, OPT_STATE},
    {"json", no_argument, NULL, OPT_JSON},
    {"metric", required_argument, NULL, OPT_METRIC},
    {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
    {"out", required_argument, NULL, OPT_OUT},
    {"save-as-csv", required_argument, NULL, OPT_SAVE_CSV},
    {"save-as-json", required_argument, NULL, OPT_SAVE_JSON},
    {"output", required_argument, NULL, 'o'},
    {"inputs", required_argument, NULL, OPT_INPUTS},
    {"max-errors", required_argument, NULL, OPT_MAX_ERRORS},
    {"table", required_argument, NULL, OPT_TABLE},
    {"failure-score", required_argument, NULL, OPT_FAILURE_SCORE},
    {"optimizer", required_argument, NULL, OPT_OPTIMIZER},
    {"valset", required_argument, NULL, OPT_VALSET},
    {"report", required_argument, NULL, OPT_REPORT},
    {"checkpoint", required_argument, NULL, OPT_CHECKPOINT},
    {"seed", required_argument, NULL, 's'},
    {"port", required_argument, NULL, OPT_PORT},
    {"host", required_argument, NULL, OPT_HOST},
    {"latency-ms", required_argument, NULL, OPT_LATENCY},
    {"faults", required_argument, NULL, OPT_FAULTS},
    {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
    {"candidates", required_argument, NULL, OPT_CANDIDATES},
    {"max-demos", required_argument, NULL, OPT_MAX_DEMOS},
    {"max-labeled", required_argument, NULL, OPT_MAX_LABELED},
    {"task", required_argument, NULL, OPT_TASK},
    {"frac", required_argument, NULL, OPT_FRAC},
    {"field", required_argument, NULL, OPT_FIELD},
    {"judge-model", required_argument, NULL, OPT_JUDGE_MODEL},
    {"resume", no_argument, NULL, OPT_RESUME},
    {NULL, 0, NULL, 0},
};

typedef struct args {
    common c;
    const char *metric;
    const char *frac;  /* --frac, checked with the metric */
    const char *field; /* --field: the compared field (metric.field) */
    long concurrency;
    const char *out;
    bool resume; /* eval --resume: keep --out's finished rows */
    const char *save_csv, *save_json; /* DSPy's save_as_csv / save_as_json */
    const char *output;
    const char *inputs;
    long max_errors;
    long table_rows;      /* --table: rows shown (0 = all) */
    double failure_score; /* --failure-score */
    const char *optimizer;
    const char *valset;
    const char *report;
    const char *checkpoint;
    long seed;
    long port;
    bool port_given;
    const char *host;
    long latency_ms;
    const char *faults;
    long candidates;
    long max_demos;
    long max_labeled;
    const char *task;
    char *pos[16];
    int npos;
} args;

static int parse_long(const char *opt, const char *s, long lo, long hi,
                      long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || *end || v < lo || v > hi)
        return fail_usage("%s wants a number in %ld..%ld, got \"%s\"", opt, lo,
                          hi, s);
    *out = v;
    return 0;
}

/* A whole, finite decimal number. */
static bool read_number(const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

/* The options each command reads; parse_args refuses any other by name, so
 * `dspex eval --optimizer copro` or `dspex serve --input q=x` says the
 * option does nothing there instead of running without it. Lists end in 0;
 * -h / --help go with every command. */
#define PROGRAM_OPTS                                                           \
    OPT_MODULE, OPT_SIGNATURE, OPT_INSTRUCTIONS, OPT_DEMOS, OPT_STATE
#define LM_OPTS OPT_MODEL, OPT_BASE_URL, OPT_API_KEY, OPT_CACHE, OPT_HEADER
#define SCORING_OPTS                                                           \
    OPT_METRIC, OPT_FIELD, OPT_FRAC, OPT_JUDGE_MODEL, OPT_INPUTS,              \
        OPT_CONCURRENCY
static const int prompt_takes[] = {PROGRAM_OPTS, 'i', OPT_INPUT_JSON,
                                   OPT_ADAPTER, 0};
static const int run_takes[] = {
    PROGRAM_OPTS, LM_OPTS,  'i',         OPT_INPUT_JSON,
    OPT_ADAPTER,  OPT_JSON, OPT_TIMEOUT, 0};
static const int eval_takes[] = {PROGRAM_OPTS,
                                 LM_OPTS,
                                 SCORING_OPTS,
                                 OPT_ADAPTER,
                                 OPT_TIMEOUT,
                                 OPT_OUT,
                                 OPT_SAVE_CSV,
                                 OPT_SAVE_JSON,
                                 OPT_TABLE,
                                 OPT_MAX_ERRORS,
                                 OPT_FAILURE_SCORE,
                                 OPT_RESUME,
                                 0};
static const int optimize_takes[] = {PROGRAM_OPTS,
                                     LM_OPTS,
                                     SCORING_OPTS,
                                     OPT_ADAPTER,
                                     OPT_TIMEOUT,
                                     OPT_OPTIMIZER,
                                     'o',
                                     OPT_VALSET,
                                     OPT_REPORT,
                                     OPT_CHECKPOINT,
                                     's',
                                     OPT_CANDIDATES,
                                     OPT_MAX_DEMOS,
                                     OPT_MAX_LABELED,
                                     0};
static const int lm_server_takes[] = {OPT_PORT, OPT_HOST, OPT_LATENCY,
                                      OPT_FAULTS, 0};
static const int demo_takes[] = {LM_OPTS, OPT_TASK, OPT_OUT, OPT_CONCURRENCY,
                                 0};
static const int serve_takes[] = {
    LM_OPTS, OPT_ADAPTER, OPT_TIMEOUT, OPT_PORT, OPT_HOST, OPT_CONCURRENCY, 0};

static bool command_takes(const int *takes, int ch)
{
    for (; *takes != 0; takes++)
        if (*takes == ch)
            return true;
    return false;
}

static int parse_args(int argc, char **argv, args *a, const int *takes,
                      void (*help)(void))
{
    optind = 1;
    opterr = 0; /* our messages name the command and its --help */
    int ch, rc = 0, long_index = -1;
    while (rc == 0 && (ch = getopt_long(argc, argv, ":hi:o:s:", long_opts,
                                        &long_index)) != -1) {
        /* optind has moved past the option (and its value, when apart). */
        const char *spelled = argv[optind - 1];
        if (ch == ':' && command_takes(takes, optopt))
            return fail_usage("%s wants a value (see dspex %s --help)", spelled,
                              argv[0]);
        if (ch == '?') {
            char name[64];
            if (optopt != 0)
                snprintf(name, sizeof name, "-%c", optopt);
            else
                snprintf(name, sizeof name, "%s", spelled);
            return fail_usage("unknown option %s (see dspex %s --help)", name,
                              argv[0]);
        }
        int opt = ch == ':' ? optopt : ch;
        if (opt != 'h' && !command_takes(takes, opt)) {
            char name[64];
            if (long_index >= 0) /* as the user spelled it: long or short */
                snprintf(name, sizeof name, "--%s", long_opts[long_index].name);
            else
                snprintf(name, sizeof name, "-%c", opt);
            return fail_usage("%s is not an option of dspex %s (see dspex %s "
                              "--help)",
                              name, argv[0], argv[0]);
        }
        long_index = -1;
        switch (ch) {
        case 'h':
            help();
            exit(0);
        case OPT_MODEL:
            a->c.model = optarg;
            break;
        case OPT_JUDGE_MODEL:
            a->c.judge_model = optarg;
            break;
        case OPT_BASE_URL:
            a->c.base_url = optarg;
            break;
        case OPT_API_KEY:
            a->c.api_key = optarg;
            break;
        case OPT_HEADER: {
            char why[160];
            if (dx_lm_header_explain(optarg, why, sizeof why) != DX_OK)
                return fail_usage("--header: %s", why);
            if (a->c.n_headers == DX_LM_CLIENT_MAX_HEADERS)
                return fail_usage("--header: at most %d headers",
                                  DX_LM_CLIENT_MAX_HEADERS);
            a->c.headers[a->c.n_headers++] = optarg;
            break;
        }
        case OPT_ADAPTER:
            if (strcmp(optarg, "chat") != 0 && strcmp(optarg, "json") != 0)
                return fail_usage("--adapter wants chat or json");
            a->c.adapter = optarg;
            break;
        case OPT_CACHE:
            a->c.cache = optarg;
            break;
        case 'i':
            rc = add_input(&a->c, optarg, false);
            break;
        case OPT_INPUT_JSON:
            rc = add_input(&a->c, optarg, true);
            break;
        case OPT_MODULE:
            a->c.module_kind = optarg;
            break;
        case OPT_SIGNATURE:
            a->c.signature = optarg;
            break;
        case OPT_INSTRUCTIONS:
            a->c.instructions = optarg;
            break;
        case OPT_DEMOS:
            a->c.demos = optarg;
            break;
        case OPT_STATE:
            a->c.state = optarg;
            break;
        case OPT_JSON:
            a->c.json = true;
            break;
        case OPT_METRIC:
            a->metric = optarg;
            break;
        case OPT_FRAC:
            a->frac = optarg;
            break;
        case OPT_FIELD:
            a->field = optarg;
            break;
        case OPT_CONCURRENCY:
            rc =
                parse_long("--concurrency", optarg, 1, 100000, &a->concurrency);
            break;
        case OPT_OUT:
            a->out = optarg;
            break;
        case OPT_RESUME:
            a->resume = true;
            break;
        case OPT_SAVE_CSV:
            a->save_csv = optarg;
            break;
        case OPT_SAVE_JSON:
            a->save_json = optarg;
            break;
        case 'o':
            a->output = optarg;
            break;
        case OPT_INPUTS:
            a->inputs = optarg;
            break;
        case OPT_TABLE:
            rc = parse_long("--table", optarg, 0, 1L << 30, &a->table_rows);
            break;
        case OPT_FAILURE_SCORE:
            if (!read_number(optarg, &a->failure_score))
                rc = fail_usage("--failure-score wants a number, got \"%s\"",
                                optarg);
            break;
        case OPT_MAX_ERRORS:
            rc =
                parse_long("--max-errors", optarg, 0, 1L << 30, &a->max_errors);
            break;
        case OPT_OPTIMIZER:
            a->optimizer = optarg;
            break;
        case OPT_VALSET:
            a->valset = optarg;
            break;
        case OPT_REPORT:
            a->report = optarg;
            break;
        case OPT_CHECKPOINT:
            a->checkpoint = optarg;
            break;
        case 's':
            rc = parse_long("--seed", optarg, 0, 1L << 30, &a->seed);
            break;
        case OPT_PORT:
            rc = parse_long("--port", optarg, 0, 65535, &a->port);
            a->port_given = true;
            break;
        case OPT_HOST:
            a->host = optarg;
            break;
        case OPT_LATENCY:
            rc = parse_long("--latency-ms", optarg, 0, 3600000, &a->latency_ms);
            break;
        case OPT_FAULTS:
            a->faults = optarg;
            break;
        case OPT_TIMEOUT: {
            long v = 0;
            rc = parse_long("--timeout-ms", optarg, 1, 86400000, &v);
            a->c.timeout_ms = v;
            break;
        }
        case OPT_CANDIDATES:
            rc = parse_long("--candidates", optarg, 1, 1000, &a->candidates);
            break;
        case OPT_MAX_DEMOS:
            rc = parse_long("--max-demos", optarg, 1, 1000, &a->max_demos);
            break;
        case OPT_TASK:
            a->task = optarg;
            break;
        case OPT_MAX_LABELED:
            rc = parse_long("--max-labeled", optarg, 0, 1000, &a->max_labeled);
            break;
        default: /* in long_opts but not handled: a bug here */
            return fail_usage("option %s is not handled", spelled);
        }
    }
    for (int i = optind; rc == 0 && i < argc; i++) {
        if (a->npos == (int)(sizeof a->pos / sizeof *a->pos))
            return fail_usage("too many arguments");
        a->pos[a->npos++] = argv[i];
    }
    return rc;
}

/* The program file and the data file of eval and optimize: PROGRAM.json
 * DATA, or DATA alone when --module / --signature declare the program.
 * false when the count is wrong. */
static bool program_and_data(const args *a, const char **program,
                             const char **data)
{
    bool declared = a->c.module_kind != NULL || a->c.signature != NULL;
    if (a->npos != (declared ? 1 : 2))
        return false;
    *program = declared ? NULL : a->pos[0];
    *data = a->pos[a->npos - 1];
    return true;
}

static void print_json_value(FILE *f, const cJSON *v)
{
    char *t = cJSON_PrintUnformatted(v);
    fputs(t ? t : "null", f);
    cJSON_free(t);
}

/* ---- prompt --------------------------------------------------------------- */

static void help_prompt(void)
{
    puts("usage: dspex prompt PROGRAM.json [--input k=v]... [--adapter "
         "chat|json]\n"
         "       dspex prompt --module predict|chain_of_thought --signature "
         "SIG\n"
         "                    [--instructions TEXT] [--demos FILE.jsonl]\n"
         "                    [--state DSPY_STATE.json] [--input k=v]...\n\n"
         "Print, as JSON, the messages the program's first predictor would "
         "send\n"
         "for these inputs, without calling an LM.");
}

static int cmd_prompt_body(args *ap)
{
    args a = *ap;
    int rc = 0;
    dx_module *m = NULL;
    if ((rc = load_program(&a.c, a.npos ? a.pos[0] : NULL, &m)) != 0)
        return rc;
    dx_named_predictor *preds = NULL;
    size_t np = 0;
    dx_module_predictors(m, &preds, &np);
    dx_lm_request *req = dx_lm_request_new(NULL);
    const dx_module *p = preds[0].predict;
    const dx_example *const *demos = NULL;
    size_t nd = dx_predict_n_demos(p);
    const dx_example **dv = dx_calloc(nd ? nd : 1, sizeof *dv);
    for (size_t i = 0; i < nd; i++)
        dv[i] = dx_predict_demo(p, i);
    demos = dv;
    dx_example *empty = dx_example_new();
    dx_diag d = {0};
    rc = dx_adapter_format(adapter_of(&a.c), dx_predict_signature(p), demos, nd,
                           a.c.inputs ? a.c.inputs : empty, req, &d);
    if (rc == DX_OK) {
        static const char *const roles[] = {"system", "user", "assistant",
                                            "tool"};
        cJSON *arr = cJSON_CreateArray();
        for (size_t i = 0; i < req->n_messages; i++) {
            cJSON *msg = cJSON_CreateObject();
            cJSON_AddStringToObject(msg, "role", roles[req->messages[i].role]);
            cJSON_AddStringToObject(msg, "content", req->messages[i].content);
            cJSON_AddItemToArray(arr, msg);
        }
        char *t = cJSON_Print(arr);
        puts(t);
        cJSON_free(t);
        cJSON_Delete(arr);
    } else {
        fprintf(stderr, "%s: %s\n", prog_name, d.msg);
    }
    dx_free(dv);
    dx_free(preds);
    dx_example_free(empty);
    dx_lm_request_free(req);
    dx_module_free(m);
    return rc == DX_OK ? 0 : 1;
}

static int cmd_prompt(int argc, char **argv)
{
    args a = {0};
    int rc = parse_args(argc, argv, &a, prompt_takes, help_prompt);
    if (rc == 0)
        rc = cmd_prompt_body(&a);
    dx_example_free(a.c.inputs); /* --input values, whatever happened */
    return rc;
}

/* ---- run ------------------------------------------------------------------ */

static void help_run(void)
{
    puts(
        "usage: dspex run PROGRAM.json --input k=v... [--json] [--model M]\n"
        "                 [--base-url URL] [--api-key KEY] [--adapter "
        "chat|json]\n"
        "                 [--input-json k=JSON]... [--timeout-ms MS]\n\n"
        "Run the program once and print its prediction. The model defaults to\n"
        "$DSPEX_MODEL, else the offline simulator sim/base. Instead of\n"
        "PROGRAM.json, --module and --signature (with --instructions, "
        "--demos,\n"
        "--state) declare one, as for dspex prompt; so do they for eval and\n"
        "optimize.");
}

static int cmd_run_body(args *ap)
{
    args a = *ap;
    int rc = 0;
    dx_module *m = NULL;
    if ((rc = load_program(&a.c, a.npos ? a.pos[0] : NULL, &m)) != 0)
        return rc;
    if (!a.c.inputs) {
        dx_module_free(m);
        return fail_usage("give the program's inputs with --input k=v");
    }
    if ((rc = start_lm(&a.c)) != 0) {
        dx_module_free(m);
        return rc;
    }
    dx_call_opts co = {.adapter = adapter_of(&a.c),
                       .timeout_ms = a.c.timeout_ms};
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    rc = dx_module_call(m, a.c.inputs, &co, &pred, NULL, &d);
    if (rc == DX_OK) {
        const dx_example *f = dx_prediction_fields(pred);
        if (a.c.json) {
            char *t = NULL;
            dx_example_to_json(f, &t);
            puts(t ? t : "{}");
            dx_free(t);
        } else {
            for (size_t i = 0; i < dx_example_len(f); i++) {
                const cJSON *v = dx_example_value(f, i);
                printf("%s: ", dx_example_key(f, i));
                if (cJSON_IsString(v))
                    fputs(v->valuestring, stdout);
                else
                    print_json_value(stdout, v);
                putchar('\n');
            }
        }
    } else {
        fprintf(stderr, "%s: %s\n", prog_name, d.msg);
    }
    dx_prediction_free(pred);
    stop_lm();
    dx_module_free(m);
    return rc == DX_OK ? 0 : 1;
}

static int cmd_run(int argc, char **argv)
{
    args a = {0};
    int rc = parse_args(argc, argv, &a, run_takes, help_run);
    if (rc == 0)
        rc = cmd_run_body(&a);
    dx_example_free(a.c.inputs); /* --input values, whatever happened */
    return rc;
}

/* ---- datasets --------------------------------------------------------------- */

/* Split "a,b,c" into keys (pointers into a copy the caller frees). */
static size_t split_keys(const char *s, char **copy, const char **keys,
                         size_t max)
{
    *copy = dx_strdup(s ? s : "");
    size_t n = 0;
    char *save = NULL;
    for (char *t = strtok_r(*copy, ",", &save); t && n < max;
         t = strtok_r(NULL, ",", &save))
        keys[n++] = t;
    return n;
}

/* Load a dataset and designate its inputs: --inputs, or else the first
 * predictor's input fields that the first example has (a ReAct agent's
 * `trajectory` or a RAG step's `context` are made by the program, not
 * given). Every example must have them. */
static int load_data(const char *path, const char *inputs_opt,
                     const dx_module *m, dx_dataset **out)
{
    int rc = 0;
    dx_diag d = {0};
    int r = dx_dataset_load(path, NULL, 0, out, &d); /* JSONL, JSON or CSV */
    if (r != DX_OK)
        return fail_diag(&d, r);
    const char *keys[64];
    char *copy = NULL;
    size_t nk = 0;
    if (inputs_opt) {
        nk = split_keys(inputs_opt, &copy, keys, 64);
    } else {
        dx_named_predictor *preds = NULL;
        size_t np = 0;
        dx_module_predictors(m, &preds, &np);
        const dx_signature *s =
            np ? dx_predict_signature(preds[0].predict) : NULL;
        const dx_example *first = (*out)->n ? (*out)->items[0] : NULL;
        for (size_t i = 0; s && i < dx_signature_n_inputs(s) && nk < 64; i++) {
            const char *name = dx_signature_input(s, i)->name;
            if (first && dx_example_has(first, name))
                keys[nk++] = name;
        }
        /* None given at all: name them all in the error below. */
        for (size_t i = 0; nk == 0 && s && i < dx_signature_n_inputs(s); i++)
            keys[nk++] = dx_signature_input(s, i)->name;
        dx_free(preds);
    }
    for (size_t i = 0; rc == 0 && i < (*out)->n; i++) {
        for (size_t k = 0; k < nk; k++)
            if (!dx_example_has((*out)->items[i], keys[k])) {
                rc = fail_usage("%s: example %zu has no input field \"%s\"",
                                path, i + 1, keys[k]);
                break;
            }
        if (rc == 0)
            dx_example_with_inputs((*out)->items[i], keys, nk);
    }
    if (rc != 0) {
        dx_dataset_free(*out);
        *out = NULL;
    }
    dx_free(copy);
    return rc;
}

/* --metric NAME [--frac F] [--field NAME]: F is DSPy's
 * answer_exact_match(frac=F), a match being token F1 >= F, so it belongs
 * to exact_match only; the field is the label and output compared. */
static int metric_of(const char *name, const char *frac, const char *field,
                     const char *judge_model, dx_metric *m)
{
    dx_metric_kind k;
    if (!name)
        name = "exact_match";
    if (dx_metric_from_name(name, &k) != DX_OK)
        return fail_usage("unknown metric \"%s\" (exact_match, f1, "
                          "passage_match, semantic_f1, "
                          "complete_and_grounded)",
                          name);
    *m = (dx_metric){.kind = k};
    if (field && !*field)
        return fail_usage("--field wants a field name");
    m->field = field;
    if (judge_model) {
        if (k != DX_METRIC_SEMANTIC_F1 && k != DX_METRIC_COMPLETE_AND_GROUNDED)
            return fail_usage("--judge-model goes with --metric semantic_f1 "
                              "or complete_and_grounded, not %s",
                              name);
        m->judge_lm_name = "judge"; /* the client start_lm starts */
    }
    if (!frac)
        return 0;
    if (k != DX_METRIC_EXACT_MATCH)
        return fail_usage("--frac goes with --metric exact_match, not %s",
                          name);
    double v;
    if (!read_number(frac, &v) || !(v > 0 && v <= 1))
        return fail_usage("--frac wants a number in (0, 1], got \"%s\"", frac);
    m->frac = v;
    return 0;
}

/* ---- eval ------------------------------------------------------------------ */

static void help_eval(void)
{
    puts(
        "usage: dspex eval PROGRAM.json DATA.jsonl|DATA.csv [--metric "
        "exact_match|f1|\n"
        "                  passage_match|semantic_f1|complete_and_grounded]\n"
        "                  [--field NAME] [--judge-model M] [--frac F]\n"
        "                  [--concurrency N]\n"
        "                  [--inputs a,b] [--out results.jsonl] [--max-errors "
        "N]\n"
        "                  [--save-as-csv F.csv] [--save-as-json F.json] "
        "[--table N]\n"
        "                  [--failure-score X] [--timeout-ms MS] [--resume]\n"
        "                  [--model M]\n\n"
        "Evaluate the program on the dataset and print the score and a table.\n"
        "--module and --signature (see dspex run --help) declare the program\n"
        "in place of PROGRAM.json; then only DATA follows.\n"
        "--out writes dspex's rows (prediction, score, error, latency, "
        "tokens,\n"
        "cost) in dataset order when the evaluation ends; while it runs,\n"
        "each row goes to FILE.partial as its example finishes. --resume\n"
        "(with --out) reads the rows an earlier run left (FILE.partial of a\n"
        "killed run, else FILE) and runs only the examples without a row or\n"
        "whose row is an error; without --resume, a FILE.partial left\n"
        "there stops the command (exit 2) rather than be started over.\n"
        "Each row names its run (\"run_key\": the program, metric and\n"
        "model); --resume refuses rows of another run (exit 2).\n"
        "--save-as-csv and --save-as-json write the files DSPy's\n"
        "Evaluate(save_as_csv=..., save_as_json=...) does (example and\n"
        "prediction fields, and the score under the metric's DSPy name).\n"
        "--field NAME is the label the metric compares with the program's\n"
        "output of that name (default answer; response for the judged\n"
        "metrics).\n"
        "semantic_f1 and complete_and_grounded are DSPy's SemanticF1 and\n"
        "CompleteAndGrounded: the program's LM judges each answer (field\n"
        "`response` against the example's, with its `question`; the\n"
        "prediction's `context` for groundedness); --judge-model M judges\n"
        "with another model (with --base-url and --api-key when it is of\n"
        "the same provider as --model).\n"
        "--table N shows the first N rows (default 20, 0 = all), as DSPy's\n"
        "display_table=N; --failure-score X is what a failed example scores\n"
        "(default 0), as DSPy's failure_score; --timeout-ms MS fails an\n"
        "example still running after MS (default 120000).\n"
        "--frac F (0 < F <= 1): exact_match counts token F1 >= F as a match,\n"
        "as DSPy's answer_exact_match(frac=F) does. Exits 1 when every\n"
        "example that finished failed (the first error on stderr).\n"
        "Ctrl-C stops the evaluation: the examples that finished are shown\n"
        "and written, and the exit status is 130. A second Ctrl-C ends the\n"
        "command at once.");
}

/* true (and why, on stderr) when examples finished and every one failed:
 * a wrong key, model or URL, or a program that cannot run. The score is
 * then no measure of the program, whatever max_errors says. */
static bool all_failed(const dx_eval_result *r)
{
    if (r->n_done == 0 || r->n_errors < r->n_done)
        return false;
    const char *first = NULL;
    for (size_t i = 0; i < r->n && first == NULL; i++)
        if (r->rows[i].done && r->rows[i].error != DX_OK)
            first = r->rows[i].error_msg ? r->rows[i].error_msg
                                         : dx_strerror(r->rows[i].error);
    /* A label the data names otherwise is the usual cause: say how. */
    bool field_missing = first && strstr(first, " has no \"") != NULL;
    fprintf(stderr, "%s: every example failed (%zu of %zu); the first: %s%s\n",
            prog_name, r->n_errors, r->n_done, first ? first : "?",
            field_missing ? " (--field NAME names the field to compare)" : "");
    return true;
}

/* --resume: the rows an earlier run of this command left: in
 * OUT.partial when it did not finish (killed, or its last write failed),
 * else in OUT (a finished or cancelled run's); *path_out says which, and
 * *cut_out whether its last line was cut short. *out stays NULL when
 * there is neither. 0, or the exit status, with the files left as they
 * are. */
static int read_earlier_rows(const char *out_path, const char *partial,
                             const dx_dataset *ds, dx_eval_result **out,
                             const char **path_out, size_t *cut_out)
{
    size_t cut = 0;
    dx_diag d = {0};
    const char *path = partial;
    int rc = dx_eval_result_read_jsonl(path, ds, out, &cut, &d);
    if (rc == DX_ENOENT) {
        path = out_path;
        rc = dx_eval_result_read_jsonl(path, ds, out, &cut, &d);
    }
    if (rc == DX_ENOENT) {
        fprintf(stderr,
                "%s: neither %s nor %s exists yet: evaluating every "
                "example\n",
                prog_name, out_path, partial);
        return 0;
    }
    if (rc != DX_OK) {
        fprintf(stderr, "%s: --resume: %s; the file is left as it is\n",
                prog_name, d.msg);
        return rc == DX_ENOMEM ? 1 : EXIT_USAGE;
    }
    *path_out = path;
    *cut_out = cut;
    return 0;
}

/* What --resume takes from the rows read (read_earlier_rows). */
static void say_resuming(const dx_eval_result *r, const char *path, size_t cut)
{
    size_t ok = r->n_done - r->n_errors;
    fprintf(stderr,
            "%s: resuming from %s: %zu of %zu examples finished without an "
            "error; running the other %zu%s\n",
            prog_name, path, ok, r->n, r->n - ok,
            cut ? " (its last line was cut short; that example runs again)"
                : "");
}

static int cmd_eval_body(args *ap)
{
    args a = *ap;
    int rc = 0;
    const char *program = NULL, *data = NULL;
    if (!program_and_data(&a, &program, &data))
        return fail_usage("eval wants PROGRAM.json and DATA, or DATA with "
                          "--module and --signature (see --help)");
    dx_metric metric;
    if ((rc = metric_of(a.metric, a.frac, a.field, a.c.judge_model, &metric)) !=
        0)
        return rc;
    if (a.resume && !a.out)
        return fail_usage("--resume wants --out FILE: the rows file of the "
                          "earlier run, which this one completes");
    dx_module *m = NULL;
    if ((rc = load_program(&a.c, program, &m)) != 0)
        return rc;
    dx_dataset *ds = NULL;
    if ((rc = load_data(data, a.inputs, m, &ds)) != 0) {
        dx_module_free(m);
        return rc;
    }
    /* Rows go to OUT.partial as examples finish, so a run that is killed
     * leaves them for --resume; the run's end writes OUT whole, in dataset
     * order, and removes it. OUT itself is replaced only then, as before
     * there was a journal. */
    char partial[4096] = "";
    if (a.out && (size_t)snprintf(partial, sizeof partial, "%s.partial",
                                  a.out) >= sizeof partial) {
        dx_dataset_free(ds);
        dx_module_free(m);
        return fail_usage("--out: the path is too long");
    }
    /* A partial file is what a killed run left: hours of LM calls, maybe.
     * Only --resume (which continues it) or the user removes it. */
    if (a.out && !a.resume && access(partial, F_OK) == 0) {
        dx_dataset_free(ds);
        dx_module_free(m);
        return fail_usage("%s holds the rows of a run that did not finish: "
                          "add --resume to continue it, or remove the file "
                          "to start over",
                          partial);
    }
    dx_eval_opts eo = {
        .metric = metric,
        .concurrency = (size_t)a.concurrency,
        .max_errors = (size_t)a.max_errors,
        .failure_score = a.failure_score,
        .call = {.adapter = adapter_of(&a.c)},
        .example_timeout_ms = a.c.timeout_ms,
    };
    dx_eval_result *earlier = NULL;
    const char *earlier_path = NULL;
    size_t earlier_cut = 0;
    if (a.resume &&
        (rc = read_earlier_rows(a.out, partial, ds, &earlier, &earlier_path,
                                &earlier_cut)) != 0) {
        dx_dataset_free(ds);
        dx_module_free(m);
        return rc;
    }
    if ((rc = start_lm(&a.c)) != 0) {
        dx_eval_result_free(earlier);
        dx_dataset_free(ds);
        dx_module_free(m);
        return rc;
    }
    /* The rows name the program, metric and model they came from (the
     * model as the client resolved it: flag, config file or default), so
     * a --resume after any of them changed is refused instead of mixing
     * another program's answers into this one's score. Not the endpoint:
     * the same model served again on another port is the same run. */
    char run_key[DX_EVAL_RUN_KEY_LEN] = "";
    char lm_text[1024];
    snprintf(lm_text, sizeof lm_text, "model=%s judge=%s",
             client_opts.primary.model ? client_opts.primary.model : "",
             a.c.judge_model ? a.c.judge_model : "");
    if (a.out && dx_eval_run_key(m, &eo, lm_text, run_key) == DX_OK)
        eo.run_key = run_key;
    if (earlier && eo.run_key && earlier->run_key &&
        strcmp(earlier->run_key, eo.run_key) != 0) {
        fprintf(stderr,
                "%s: --resume: the rows in %s are of another program, metric "
                "or model (run key %s; this command's is %s); the file is "
                "left as it is: run the command that wrote it, or remove "
                "the file to start over\n",
                prog_name, earlier_path, earlier->run_key, eo.run_key);
        dx_eval_result_free(earlier);
        stop_lm();
        dx_dataset_free(ds);
        dx_module_free(m);
        return EXIT_USAGE;
    }
    if (earlier)
        say_resuming(earlier, earlier_path, earlier_cut);
    room_for_calls(a.concurrency);
    dx_eval_journal *journal = NULL;
    dx_diag jd = {0};
    if (a.out &&
        dx_eval_journal_open(partial, earlier, &journal, &jd) != DX_OK) {
        fprintf(stderr, "%s: %s\n", prog_name, jd.msg);
        dx_eval_result_free(earlier);
        stop_lm();
        dx_dataset_free(ds);
        dx_module_free(m);
        return 1;
    }
    eo.on_row = journal ? dx_eval_journal_row : NULL;
    eo.on_row_ud = journal;
    eo.resume = earlier;
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    /* A Ctrl-C while the runtime and the LM client started asked for a
     * cancel that no evaluation was there to see. */
    bool skipped = sigint_seen;
    if (skipped) {
        fprintf(stderr, "%s: cancelled before the evaluation started\n",
                prog_name);
    } else if ((rc = dx_evaluate(m, ds, &eo, &r, &d)) == DX_OK) {
        dx_eval_result_print(r, stdout, (size_t)a.table_rows);
        /* A row the journal could not write is in the whole file now. */
        bool journal_ok = dx_eval_journal_close(journal, &jd) == DX_OK;
        journal = NULL;
        if (a.out && dx_eval_result_write_jsonl(r, a.out, &d) != DX_OK) {
            fprintf(stderr, "%s: %s\n", prog_name, d.msg);
            if (!journal_ok)
                fprintf(stderr, "%s: %s\n", prog_name, jd.msg);
            else
                fprintf(stderr, "%s: the rows are in %s; --resume reads them\n",
                        prog_name, partial);
            rc = DX_EIO;
        } else if (a.out) {
            unlink(partial);
        }
        if (a.save_csv && dx_eval_result_save_dspy(r, &metric, DX_EVAL_FILE_CSV,
                                                   a.save_csv, &d) != DX_OK) {
            fprintf(stderr, "%s: %s\n", prog_name, d.msg);
            rc = DX_EIO;
        }
        if (a.save_json &&
            dx_eval_result_save_dspy(r, &metric, DX_EVAL_FILE_JSON, a.save_json,
                                     &d) != DX_OK) {
            fprintf(stderr, "%s: %s\n", prog_name, d.msg);
            rc = DX_EIO;
        }
        if (rc == DX_OK && all_failed(r))
            rc = DX_EPROVIDER; /* exit 1: a script must not take 0 % */
    } else {
        fprintf(stderr, "%s: %s\n", prog_name, d.msg);
    }
    bool cancelled = skipped || (r != NULL && r->cancelled);
    if (journal) { /* not closed above: the evaluation did not finish */
        if (dx_eval_journal_close(journal, &jd) != DX_OK)
            fprintf(stderr, "%s: %s\n", prog_name, jd.msg);
        if (skipped && !earlier)
            unlink(partial); /* nothing ran: no rows to keep */
    }
    dx_eval_result_free(r);
    dx_eval_result_free(earlier);
    stop_lm();
    dx_dataset_free(ds);
    dx_module_free(m);
    if (cancelled)
        return 128 + SIGINT; /* cut short: what a shell reports for Ctrl-C */
    return rc == DX_OK ? 0 : 1;
}

static int cmd_eval(int argc, char **argv)
{
    args a = {.table_rows = 20};
    int rc = parse_args(argc, argv, &a, eval_takes, help_eval);
    if (rc == 0)
        rc = cmd_eval_body(&a);
    dx_example_free(a.c.inputs); /* --input values, whatever happened */
    return rc;
}

/* ---- optimize --------------------------------------------------------------- */

static void help_optimize(void)
{
    puts("usage: dspex optimize PROGRAM.json TRAIN.jsonl -o OPTIMIZED.json\n"
         "           --optimizer labeled|bootstrap|random-search|copro|mipro\n"
         "           [--valset VAL.jsonl] [--metric NAME] [--field NAME]\n"
         "           [--judge-model M]\n"
         "           [--frac F] [--seed S]\n"
         "           [--candidates N] [--max-demos N] [--max-labeled N]\n"
         "           [--report R.html] [--checkpoint FILE] [--concurrency N]\n"
         "           [--model M]\n\n"
         "Optimize the program's demos (and, with copro / mipro, its\n"
         "instructions) and save the result (declaration + state).\n"
         "--metric, --field and --judge-model are dspex eval's (see its\n"
         "--help); so is declaring the program with --module and\n"
         "--signature.\n"
         "Ctrl-C stops the optimization (exit status 130, nothing saved);\n"
         "with --checkpoint, the same command resumes it. A second Ctrl-C\n"
         "ends the command at once.");
}

/* Live progress of an optimization: the optimize.* telemetry events, one
 * line each on stderr. */
static void progress_listener(void *arg)
{
    (void)arg;
    dx_telemetry_subscribe(dx_self(), "optimize.");
    double best = -1;
    long runs = 0, passed = 0;
    int64_t last_runs_line = 0;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_tag(DX_TELEMETRY_TAG, DX_INFINITY, &m) != DX_OK)
            return;
        const dx_telemetry_event *e = m->ptr;
        bool trial = strcmp(e->name, "optimize.trial") == 0;
        if (trial && e->kind == DX_TELEMETRY_STOP &&
            strcmp(e->model, "bootstrap") == 0) {
            /* Teacher runs are many and quick: a line every 2 s. */
            runs++;
            passed += e->score > 0;
            if (dx_now_ms() - last_runs_line >= 2000) {
                last_runs_line = dx_now_ms();
                fprintf(stderr, "bootstrap: %ld teacher runs, %ld passed\n",
                        runs, passed);
            }
        } else if (trial && e->kind == DX_TELEMETRY_STOP)
            fprintf(stderr, "%s: trial %lld done, score %.2f\n", e->model,
                    (long long)e->trial, e->score);
        else if (!trial && e->score > best) {
            best = e->score;
            fprintf(stderr, "%s: best so far %.2f (trial %lld)\n", e->model,
                    e->score, (long long)e->trial);
        }
        dx_msg_free(m);
    }
}

static int cmd_optimize_body(args *ap)
{
    args a = *ap;
    int rc = 0;
    const char *program = NULL, *data = NULL;
    if (!program_and_data(&a, &program, &data) || !a.optimizer || !a.output)
        return fail_usage("optimize wants PROGRAM.json TRAIN.jsonl (or "
                          "TRAIN.jsonl with --module and --signature) "
                          "--optimizer NAME -o OUT.json (see --help)");
    const char *opts[] = {"labeled", "bootstrap", "random-search", "copro",
                          "mipro"};
    int which = -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(a.optimizer, opts[i]) == 0)
            which = i;
    if (which < 0)
        return fail_usage("unknown optimizer \"%s\" (labeled, bootstrap, "
                          "random-search, copro, mipro)",
                          a.optimizer);
    dx_metric metric;
    if ((rc = metric_of(a.metric, a.frac, a.field, a.c.judge_model, &metric)) !=
        0)
        return rc;
    dx_module *m = NULL;
    if ((rc = load_program(&a.c, program, &m)) != 0)
        return rc;
    dx_dataset *train = NULL, *val = NULL;
    if ((rc = load_data(data, a.inputs, m, &train)) != 0 ||
        (a.valset && (rc = load_data(a.valset, a.inputs, m, &val)) != 0)) {
        dx_dataset_free(train);
        dx_module_free(m);
        return rc;
    }
    if ((rc = start_lm(&a.c)) != 0) {
        dx_dataset_free(train);
        dx_dataset_free(val);
        dx_module_free(m);
        return rc;
    }
    room_for_calls(a.concurrency);
    dx_tp_opts o = {
        .metric = metric,
        .max_bootstrapped_demos = (size_t)a.max_demos,
        .max_labeled_demos = (size_t)a.max_labeled,
        .num_candidates = (size_t)a.candidates,
        .concurrency = (size_t)a.concurrency,
        .call = {.adapter = adapter_of(&a.c), .timeout_ms = a.c.timeout_ms},
        .checkpoint_path = a.checkpoint,
        .report_path = a.report,
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    dx_module *best = NULL;
    dx_pid listener;
    dx_spawn(progress_listener, NULL, &listener);
    /* Supervised: a crash of the optimizer's process is restarted and
     * resumes from the checkpoint (--checkpoint, else a temporary one). */
    const dx_optimizer_kind kinds[] = {DX_OPT_LABELED, DX_OPT_BOOTSTRAP,
                                       DX_OPT_RANDOM_SEARCH, DX_OPT_COPRO,
                                       DX_OPT_MIPRO};
    dx_optimize_spec spec = {
        .kind = kinds[which],
        .student = m,
        .trainset = train,
        .valset = val,
        .opts = o,
        .mipro = {.seed = a.seed, .has_seed = a.seed != 0},
        .labeled_k = (size_t)a.max_labeled,
    };
    /* As for eval: a Ctrl-C before the optimizer records where it starts
     * would go unseen. */
    rc = sigint_seen ? DX_ECANCELED : dx_optimize(&spec, &r, &d);
    if (r) {
        best = r->program;
        r->program = NULL;
        if (r->score >= 0)
            printf("best score: %.2f\n", r->score);
        if (which != 0)
            printf("trials: %zu, LM calls: %lld (%lld cached), %.1f s\n",
                   r->n_trials, (long long)r->usage.calls,
                   (long long)r->usage.cached_calls, r->wall_s);
        if (r->restarts)
            printf("the optimizer crashed and was restarted %zu time%s\n",
                   r->restarts, r->restarts == 1 ? "" : "s");
    }
    if (rc == DX_OK) {
        rc = dx_program_save(best, a.output, &d);
        if (rc == DX_OK)
            printf("saved %s\n", a.output);
    }
    if (rc == DX_ECANCELED)
        fprintf(stderr, "%s: optimization cancelled%s\n", prog_name,
                a.checkpoint ? "; run the same command to resume from "
                               "the checkpoint"
                             : "");
    else if (rc != DX_OK)
        fprintf(stderr, "%s: %s\n", prog_name,
                d.msg[0] ? d.msg : dx_strerror(rc));
    dx_module_free(best);
    dx_tp_result_free(r);
    stop_lm();
    dx_dataset_free(train);
    dx_dataset_free(val);
    dx_module_free(m);
    if (rc == DX_ECANCELED)
        return 128 + SIGINT; /* what a shell reports for Ctrl-C */
    return rc == DX_OK ? 0 : 1;
}

static int cmd_optimize(int argc, char **argv)
{
    args a = {0};
    int rc = parse_args(argc, argv, &a, optimize_takes, help_optimize);
    if (rc == 0)
        rc = cmd_optimize_body(&a);
    dx_example_free(a.c.inputs); /* --input values, whatever happened */
    return rc;
}

/* ---- lm-server ---------------------------------------------------------------- */

static void help_lm_server(void)
{
    puts("usage: dspex lm-server [--port P] [--host ADDR] [--latency-ms L]\n"
         "                       [--faults SPEC[:COUNT]]\n\n"
         "Serve the local LM server (OpenAI, Anthropic and Gemini wire "
         "formats)\n"
         "until SIGINT/SIGTERM. Prints \"listening on HOST:PORT\" when ready.");
}

static int cmd_lm_server_body(args *ap)
{
    args a = *ap;
    int rc = 0;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    dx_lmserver_opts o = {
        .host = a.host ? a.host : "127.0.0.1",
        .port = (int)a.port,
        .latency_ms = (uint64_t)a.latency_ms,
    };
    dx_lmserver *srv = NULL;
    if ((rc = dx_lmserver_start(&o, &srv)) != DX_OK)
        return fail_usage("cannot listen on %s:%ld: %s", o.host, a.port,
                          dx_strerror(rc));
    if (a.faults) {
        /* SPEC or SPEC@COUNT (COUNT default: every request for a long
         * time). */
        char spec[256];
        snprintf(spec, sizeof spec, "%s", a.faults);
        unsigned count = 1000000;
        char *at = strrchr(spec, '@');
        if (at) {
            *at = '\0';
            count = (unsigned)strtoul(at + 1, NULL, 10);
        }
        if (dx_lmserver_inject(srv, spec, count) != DX_OK) {
            dx_lmserver_stop_free(srv);
            return fail_usage("--faults: unknown fault spec \"%s\"", spec);
        }
    }
    printf("listening on %s:%d\n", o.host, dx_lmserver_port(srv));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    dx_lmserver_stop_free(srv);
    return 0;
}

static int cmd_lm_server(int argc, char **argv)
{
    args a = {0};
    int rc = parse_args(argc, argv, &a, lm_server_takes, help_lm_server);
    if (rc == 0)
        rc = cmd_lm_server_body(&a);
    dx_example_free(a.c.inputs); /* --input values, whatever happened */
    return rc;
}

/* ---- inspect ----------------------------------------------------------------- */

static void help_inspect(void)
{
    puts("usage: dspex inspect [--last N]\n\n"
         "Print the LM calls of the last run, eval, optimize or demo (like "
         "DSPy's\n"
         "inspect_history): messages, response, usage, latency, model, cache "
         "hit.\n"
         "They are kept in $DSPEX_HOME/history.txt (default\n"
         "~/.cache/dspex/history.txt).");
}

static int cmd_inspect(int argc, char **argv)
{
    long last = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            help_inspect();
            return 0;
        }
        if (strcmp(argv[i], "--last") == 0 && i + 1 < argc) {
            int rc = parse_long("--last", argv[++i], 1, 1000000, &last);
            if (rc)
                return rc;
        } else if (strcmp(argv[i], "--last") == 0) {
            return fail_usage(
                "--last wants a value (see dspex inspect --help)");
        } else {
            return fail_usage("unknown argument \"%s\" (see dspex inspect "
                              "--help)",
                              argv[i]);
        }
    }
    char path[1024];
    history_path(path, sizeof path);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: no LM calls recorded yet (%s)\n", prog_name, path);
        return 1;
    }
    /* Each call starts with a "[<UTC time>] <model>" line
     * (dx_lmhistory_inspect's format); with --last N print only the last N
     * of them. */
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = dx_malloc((size_t)size + 1);
    size_t got = text ? fread(text, 1, (size_t)size, f) : 0;
    fclose(f);
    if (!text)
        return 1;
    text[got] = '\0';
    const char *start = text;
    if (last > 0) {
        long seen = 0;
        for (const char *p = text + got; p > text; p--) {
            bool line_start = p - 1 == text || p[-2] == '\n';
            if (line_start && p[-1] == '[' && p[0] >= '0' && p[0] <= '9' &&
                ++seen == last) {
                start = p - 1;
                break;
            }
        }
    }
    fputs(start, stdout);
    dx_free(text);
    return 0;
}

/* ---- demo ------------------------------------------------------------------ */

static void help_demo(void)
{
    puts("usage: dspex demo [--task capitals|arithmetic|classify|twohop]\n"
         "                  [--model M] [--base-url URL] [--api-key KEY]\n"
         "                  [--cache FILE.db] [--out DIR] [--concurrency N]\n"
         "\n"
         "The main job, end to end: build a program for a bundled task,\n"
         "evaluate it on the dev split, optimize it (BootstrapFewShot, random\n"
         "search, MIPROv2), evaluate each on the test split, print a\n"
         "before/after table and save the best program and the optimizer's\n"
         "report. Runs offline on the sim model (a deterministic simulator,\n"
         "not a language model) unless --model or $DSPEX_MODEL names a real\n"
         "one; --base-url, --api-key and --cache are as for dspex run (see\n"
         "dspex --help).");
}

/* The program each task starts from. */
static int demo_program(dx_sim_task t, dx_module **out, dx_diag *d)
{
    switch (t) {
    case DX_SIM_ARITHMETIC:
        return dx_program_single("chain_of_thought", "question -> answer", NULL,
                                 out, d);
    case DX_SIM_CLASSIFY:
        return dx_program_single(
            "predict",
            "text -> label: Literal['positive', 'negative', "
            "'neutral']",
            NULL, out, d);
    default:
        return dx_program_single("predict", "question -> answer", NULL, out, d);
    }
}

static int demo_eval(const dx_module *m, const dx_dataset *ds,
                     const dx_metric *metric, size_t conc, double *score)
{
    dx_eval_opts eo = {.metric = *metric,
                       .concurrency = conc,
                       .progress = DX_EVAL_PROGRESS_OFF};
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    int rc = dx_evaluate(m, ds, &eo, &r, &d);
    if (rc != DX_OK) {
        fprintf(stderr, "%s: %s\n", prog_name, d.msg);
        return rc;
    }
    *score = r->score;
    dx_eval_result_free(r);
    return DX_OK;
}

static int cmd_demo_body(args *ap)
{
    args a = *ap;
    int rc = 0;
    const char *task_name = a.task ? a.task : "capitals";
    dx_sim_task task;
    if (dx_sim_task_from_name(task_name, &task) != DX_OK)
        return fail_usage("unknown task \"%s\" (capitals, arithmetic, "
                          "classify, twohop)",
                          task_name);
    const char *dir = a.out ? a.out : "dspex-demo";
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return fail_usage("%s: %s", dir, strerror(errno));
    dx_dataset *train = NULL, *dev = NULL, *test = NULL;
    if (dx_sim_generate(task, "train", DX_SIM_DEFAULT_SEED, DX_SIM_TRAIN_SIZE,
                        &train) != DX_OK ||
        dx_sim_generate(task, "dev", DX_SIM_DEFAULT_SEED, DX_SIM_DEV_SIZE,
                        &dev) != DX_OK ||
        dx_sim_generate(task, "test", DX_SIM_DEFAULT_SEED, DX_SIM_TEST_SIZE,
                        &test) != DX_OK) {
        dx_dataset_free(train);
        dx_dataset_free(dev);
        return fail_usage("cannot generate the %s task's data", task_name);
    }
    dx_module *base = NULL;
    dx_diag d = {0};
    if ((rc = demo_program(task, &base, &d)) != DX_OK) {
        dx_dataset_free(train);
        dx_dataset_free(dev);
        dx_dataset_free(test);
        return fail_diag(&d, rc);
    }
    if ((rc = start_lm(&a.c)) != 0) {
        dx_module_free(base);
        dx_dataset_free(train);
        dx_dataset_free(dev);
        dx_dataset_free(test);
        return rc;
    }
    dx_metric metric = {.kind = DX_METRIC_EXACT_MATCH,
                        .field = task == DX_SIM_CLASSIFY ? "label" : "answer"};
    size_t conc = a.concurrency ? (size_t)a.concurrency : 16;
    printf("dspex demo: task %s on %s (train %zu, dev %zu, test %zu)\n",
           task_name, model_or_default(&a.c), train->n, dev->n, test->n);
    double t0 = (double)dx_now_ms();

    typedef struct row {
        const char *name;
        dx_module *prog;
        double dev, test;
    } row;
    row rows[4] = {{"baseline (zero-shot)", base, 0, 0}};
    size_t nrows = 1;
    char report[512];
    snprintf(report, sizeof report, "%s/report.html", dir);
    dx_tp_opts o = {
        .metric = metric,
        .max_bootstrapped_demos = 4,
        .max_labeled_demos = 4,
        .num_candidates = 6,
        .concurrency = conc,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_tp_result *r = NULL;
    rc = dx_bootstrap_fewshot(base, NULL, train, &o, &r, &d);
    if (rc == DX_OK) {
        rows[nrows++] = (row){"BootstrapFewShot", r->program, 0, 0};
        r->program = NULL;
        dx_tp_result_free(r);
        r = NULL;
        o.report_path = report;
        rc = dx_random_search(base, NULL, train, dev, &o, &r, &d);
    }
    if (rc == DX_OK) {
        rows[nrows++] =
            (row){"random search (BootstrapFewShot x 9)", r->program, 0, 0};
        r->program = NULL;
        dx_tp_result_free(r);
        r = NULL;
        dx_mipro_opts mp = {.auto_mode = DX_MIPRO_AUTO_LIGHT};
        o.report_path = NULL;
        rc = dx_mipro(base, train, dev, &o, &mp, &r, &d);
    }
    if (rc == DX_OK) {
        rows[nrows++] = (row){"MIPROv2 (light)", r->program, 0, 0};
        r->program = NULL;
        dx_tp_result_free(r);
    } else {
        fprintf(stderr, "%s: %s\n", prog_name, d.msg);
    }
    for (size_t i = 0; rc == DX_OK && i < nrows; i++) {
        rc = demo_eval(rows[i].prog, dev, &metric, conc, &rows[i].dev);
        if (rc == DX_OK)
            rc = demo_eval(rows[i].prog, test, &metric, conc, &rows[i].test);
    }
    if (rc == DX_OK) {
        size_t best = 0;
        for (size_t i = 1; i < nrows; i++)
            if (rows[i].dev > rows[best].dev)
                best = i;
        printf("\n%-38s %8s %8s\n", "program", "dev", "test");
        for (size_t i = 0; i < nrows; i++)
            printf("%-38s %7.2f%% %7.2f%%%s\n", rows[i].name, rows[i].dev,
                   rows[i].test, i == best ? "  <- best on dev" : "");
        char path[512];
        snprintf(path, sizeof path, "%s/optimized.json", dir);
        if ((rc = dx_program_save(rows[best].prog, path, &d)) == DX_OK)
            printf("\nsaved %s and %s (%.1f s)\n", path, report,
                   ((double)dx_now_ms() - t0) / 1000.0);
        else
            fprintf(stderr, "%s: %s\n", prog_name, d.msg);
    }
    for (size_t i = 0; i < nrows; i++)
        dx_module_free(rows[i].prog);
    stop_lm();
    dx_dataset_free(train);
    dx_dataset_free(dev);
    dx_dataset_free(test);
    return rc == DX_OK ? 0 : 1;
}

static int cmd_demo(int argc, char **argv)
{
    args a = {0};
    int rc = parse_args(argc, argv, &a, demo_takes, help_demo);
    if (rc == 0)
        rc = cmd_demo_body(&a);
    dx_example_free(a.c.inputs); /* --input values, whatever happened */
    return rc;
}

/* ---- serve ------------------------------------------------------------------ */

static void help_serve(void)
{
    puts("usage: dspex serve [NAME=]PROGRAM.json... [--port P] [--host H]\n"
         "                   [--concurrency N] [--timeout-ms MS] [--model M]\n"
         "                   [--base-url URL] [--api-key KEY] [--adapter "
         "chat|json]\n\n"
         "Serve programs over HTTP (docs/serving.md): POST\n"
         "/v1/programs/NAME/predict, /v1/programs/NAME/batch,\n"
         "/v1/chat/completions (model = NAME), GET /v1/programs,\n"
         "/v1/models, /healthz, /metrics, /dashboard. NAME defaults to the\n"
         "file name without .json. Binds 127.0.0.1:8080 unless told\n"
         "otherwise (--port 0: any free port). $DSPEX_SERVE_TOKEN, when\n"
         "set, is the bearer token every route but /healthz requires.\n"
         "SIGHUP reloads the program files (they are also reloaded when\n"
         "they change); SIGTERM or Ctrl-C stops accepting, finishes the\n"
         "requests in flight and exits 0.");
}

static int cmd_serve_body(args *ap)
{
    args a = *ap;
    if (a.npos == 0)
        return fail_usage("serve wants at least one PROGRAM.json (see --help)");
    static char names[16][DX_SERVE_MAX_NAME];
    dx_serve_program progs[16];
    memset(progs, 0, sizeof progs);
    for (int i = 0; i < a.npos; i++) {
        const char *arg = a.pos[i];
        const char *eq = strchr(arg, '=');
        if (eq != NULL) {
            snprintf(names[i], sizeof names[i], "%.*s", (int)(eq - arg), arg);
            progs[i].path = eq + 1;
        } else {
            const char *base = strrchr(arg, '/');
            base = base ? base + 1 : arg;
            size_t n = strlen(base);
            if (n > 5 && strcmp(base + n - 5, ".json") == 0)
                n -= 5;
            snprintf(names[i], sizeof names[i], "%.*s", (int)n, base);
            progs[i].path = arg;
        }
        progs[i].name = names[i];
    }
    /* Block the signals before any thread starts, so every thread inherits
     * the mask and only sigwait below sees them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    int rc = start_lm(&a.c);
    if (rc != 0)
        return rc;
    room_for_calls(a.concurrency);
    const char *token = getenv("DSPEX_SERVE_TOKEN");
    dx_serve_opts o = {
        .host = a.host ? a.host : "127.0.0.1",
        .port = a.port_given ? (int)a.port : 8080,
        .programs = progs,
        .nprograms = (size_t)a.npos,
        .max_concurrency = (unsigned)a.concurrency,
        .deadline_ms = a.c.timeout_ms,
        .token = token,
        .adapter = adapter_of(&a.c),
    };
    dx_serve *srv = NULL;
    dx_diag d = {0};
    if ((rc = dx_serve_start(&o, &srv, &d)) != DX_OK) {
        stop_lm();
        return fail_diag(&d, rc);
    }
    printf("listening on %s:%d\n", o.host, dx_serve_port(srv));
    fflush(stdout);
    for (;;) {
        int sig = 0;
        sigwait(&set, &sig);
        if (sig != SIGHUP)
            break;
        dx_diag rd = {0};
        if (dx_serve_reload(srv, &rd) != DX_OK)
            fprintf(stderr, "%s: reload: %s\n", prog_name, rd.msg);
    }
    rc = dx_serve_stop(srv, 30000);
    stop_lm();
    if (rc != DX_OK) {
        fprintf(stderr,
                "%s: serve: requests still running after 30 s were "
                "cut off\n",
                prog_name);
        return 1;
    }
    return 0;
}

static int cmd_serve(int argc, char **argv)
{
    args a = {0};
    int rc = parse_args(argc, argv, &a, serve_takes, help_serve);
    if (rc == 0)
        rc = cmd_serve_body(&a);
    dx_example_free(a.c.inputs); /* --input values, whatever happened */
    return rc;
}

/* ---- main --------------------------------------------------------------------- */

static void help_main(void)
{
    puts("usage: dspex COMMAND [ARGS]\n\n"
         "Commands:\n"
         "  prompt     print the messages a program would send, without an LM\n"
         "  run        run a program once and print its prediction\n"
         "  eval       evaluate a program on a dataset\n"
         "  optimize   optimize a program's demos (labeled, bootstrap,\n"
         "             random-search) and save it\n"
         "  lm-server  serve the local LM server\n"
         "  serve      serve programs over HTTP (API, metrics, OpenAI-style "
         "chat)\n"
         "  inspect    print the LM calls of the last command\n"
         "  demo       the main job on the offline sim model: baseline,\n"
         "             optimize, compare on the test split\n\n"
         "`dspex COMMAND --help` for a command's options. Models: --model\n"
         "openai/..., anthropic/..., gemini/..., openai-compatible/... with\n"
         "--base-url, or $DSPEX_MODEL, or a config file ($DSPEX_CONFIG, else\n"
         "~/.config/dspex/config.json: {\"model\", \"base_url\", "
         "\"api_key_env\"});\n"
         "keys from the provider's usual variable (OPENAI_API_KEY, ...) or\n"
         "--api-key. Commands that call an LM (run, eval, optimize, demo,\n"
         "serve) also take --cache FILE.db: LM answers kept in a SQLite file\n"
         "across runs (else in memory for the one run), and --header\n"
         "'Name: value' (repeatable): a header sent with every LM request,\n"
         "e.g. a gateway's key, in place of dspex's own of that name (its\n"
         "value is never shown by dspex inspect). A command refuses options\n"
         "it does not use.");
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return help_main(), EXIT_USAGE;
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 ||
        strcmp(cmd, "help") == 0) {
        help_main();
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"prompt", cmd_prompt},       {"run", cmd_run},
        {"eval", cmd_eval},           {"optimize", cmd_optimize},
        {"lm-server", cmd_lm_server}, {"demo", cmd_demo},
        {"inspect", cmd_inspect},     {"serve", cmd_serve},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        if (strcmp(cmd, cmds[i].name) == 0)
            return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "%s: unknown command \"%s\" (see dspex --help)\n",
            prog_name, cmd);
    return EXIT_USAGE;
}
