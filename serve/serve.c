/*
 * serve.c — the service behind the HTTP core: the served programs
 * (refcounted, reloaded when their file changes), routing and auth on the
 * loop thread, the dispatcher process and the dynamic supervisor whose
 * temporary children run one request each, the JSON bodies of predict,
 * batch and the OpenAI-compatible chat route, and the Prometheus metrics.
 *
 * A request's trip: the loop thread parses and routes it, then sends it to
 * the dispatcher, which starts a child of the request supervisor for it.
 * The child runs the program with dx_module_call (yet another process, so
 * a crash in the program is a DX_EDOWN here and answers 500), then hands
 * the answer back with dx__serve_answer. If the child itself dies before
 * answering, the supervisor frees its job and the job's destructor
 * answers 500 for it, so no accepted request goes unanswered.
 *
 * A streaming request (SSE /predict, the chat route's "stream") runs its
 * program with a stream listener (dx_call_opts.on_chunk) that turns each
 * piece of an output field into an event and sends it at once
 * (dx__serve_stream_send); the listener's state is in the heap, because
 * the program's process writes it while the request's process waits.
 */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/lm.h"
#include "dspex/log.h"
#include "dspex/program.h"
#include "dspex/runtime.h"
#include "dspex/supervisor.h"
#include "serve_int.h"

#define TAG_REQ 1
#define TAG_STOP 2

const char *const dx__route_names[DX__R_COUNT] = {
    "predict", "batch",   "chat",      "programs", "models",
    "healthz", "metrics", "dashboard", "other",
};

const double dx__hist_bounds[DX__HIST_BUCKETS - 1] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10,
};

/* ---- programs ---------------------------------------------------------- */

static void free_strv(char **v)
{
    for (size_t i = 0; v != NULL && v[i] != NULL; i++)
        dx_free(v[i]);
    dx_free(v);
}

static char **copy_strv(const char *const *v, size_t *n_out)
{
    size_t n = 0;
    while (v != NULL && v[n] != NULL)
        n++;
    char **out = dx_calloc(n + 1, sizeof *out);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if ((out[i] = dx_strdup(v[i])) == NULL) {
            free_strv(out);
            return NULL;
        }
    if (n_out != NULL)
        *n_out = n;
    return out;
}

void dx__prog_unref(dx__prog *p)
{
    if (p == NULL || atomic_fetch_sub(&p->refs, 1) != 1)
        return;
    dx_module_free(p->owned);
    free_strv(p->inputs);
    free_strv(p->outputs);
    dx_free(p);
}

/* Field names of the role of the lone predictor's signature. */
static char **sig_fields(const dx_module *m, bool inputs, size_t *n)
{
    dx_named_predictor *preds = NULL;
    size_t np = 0;
    *n = 0;
    if (dx_module_predictors(m, &preds, &np) != DX_OK || np != 1) {
        dx_free(preds);
        return NULL;
    }
    const dx_signature *s = dx_predict_signature(preds[0].predict);
    dx_free(preds);
    size_t k = inputs ? dx_signature_n_inputs(s) : dx_signature_n_outputs(s);
    const char *names[128];
    if (k > 127)
        k = 127;
    for (size_t i = 0; i < k; i++)
        names[i] =
            (inputs ? dx_signature_input(s, i) : dx_signature_output(s, i))
                ->name;
    names[k] = NULL;
    return copy_strv(names, n);
}

static int make_prog(const dx_module *m, dx_module *owned, char *const *inputs,
                     dx__prog **out)
{
    dx__prog *p = dx_calloc(1, sizeof *p);
    if (p == NULL)
        return DX_ENOMEM;
    atomic_init(&p->refs, 1);
    p->owned = owned;
    p->module = m;
    p->inputs = inputs ? copy_strv((const char *const *)inputs, &p->ninputs)
                       : sig_fields(m, true, &p->ninputs);
    p->outputs = sig_fields(m, false, &p->noutputs);
    *out = p;
    return DX_OK;
}

static int load_prog(dx__named_prog *np, dx__prog **out, dx_diag *diag)
{
    if (np->path == NULL)
        return make_prog(np->module, NULL, np->inputs, out);
    struct stat st;
    if (stat(np->path, &st) == 0)
        np->mtime_ns =
            (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    dx_module *m = NULL;
    int rc = dx_program_load(np->path, &m, diag);
    if (rc != DX_OK)
        return rc;
    rc = make_prog(m, m, np->inputs, out);
    if (rc != DX_OK)
        dx_module_free(m);
    return rc;
}

static dx__named_prog *find_named(dx_serve *srv, const char *name)
{
    for (size_t i = 0; i < srv->nprogs; i++)
        if (strcmp(srv->progs[i].name, name) == 0)
            return &srv->progs[i];
    return NULL;
}

/* A reference to the current program called name, or NULL. Any thread. */
static dx__prog *acquire(dx_serve *srv, const char *name)
{
    dx__named_prog *np = find_named(srv, name);
    if (np == NULL)
        return NULL;
    pthread_mutex_lock(&srv->prog_mu);
    dx__prog *p = atomic_load(&np->cur);
    atomic_fetch_add(&p->refs, 1);
    pthread_mutex_unlock(&srv->prog_mu);
    return p;
}

static int reload_one(dx_serve *srv, dx__named_prog *np, dx_diag *diag)
{
    dx__prog *p = NULL;
    int rc = load_prog(np, &p, diag);
    if (rc != DX_OK) {
        dx_logf(DX_LOG_ERROR,
                "serve: program %s: reload failed, keeping the old one: "
                "%s",
                np->name, diag && diag->msg[0] ? diag->msg : dx_strerror(rc));
        return rc;
    }
    pthread_mutex_lock(&srv->prog_mu);
    dx__prog *old = atomic_exchange(&np->cur, p);
    pthread_mutex_unlock(&srv->prog_mu);
    dx__prog_unref(old);
    atomic_fetch_add(&srv->st_reloads, 1);
    dx_logf(DX_LOG_INFO, "serve: program %s reloaded from %s", np->name,
            np->path);
    return DX_OK;
}

void dx__serve_check_reload(dx_serve *srv)
{
    pthread_mutex_lock(&srv->reload_mu);
    for (size_t i = 0; i < srv->nprogs; i++) {
        dx__named_prog *np = &srv->progs[i];
        struct stat st;
        if (np->path == NULL || stat(np->path, &st) != 0)
            continue;
        int64_t m =
            (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        if (m != np->mtime_ns) {
            dx_diag d = {0};
            np->mtime_ns = m; /* a broken file is tried again when it changes */
            reload_one(srv, np, &d);
        }
    }
    pthread_mutex_unlock(&srv->reload_mu);
}

int dx_serve_reload(dx_serve *srv, dx_diag *diag)
{
    if (srv == NULL)
        return DX_EINVAL;
    int first = DX_OK;
    pthread_mutex_lock(&srv->reload_mu);
    for (size_t i = 0; i < srv->nprogs; i++) {
        if (srv->progs[i].path == NULL)
            continue;
        dx_diag d = {0};
        int rc = reload_one(srv, &srv->progs[i], &d);
        if (rc != DX_OK && first == DX_OK) {
            first = rc;
            if (diag != NULL)
                *diag = d;
        }
    }
    pthread_mutex_unlock(&srv->reload_mu);
    return first;
}

/* ---- answers ----------------------------------------------------------- */

void dx__serve_error(dx__sreq *r, int status, const char *code, const char *fmt,
                     ...)
{
    char msg[DX_DIAG_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dx__buf b = {0};
    int rc = dx__buf_str(&b, "{\"error\":{\"message\":");
    if (rc == 0)
        rc = dx__buf_json_str(&b, msg);
    if (rc == 0 && (r->route == DX__R_CHAT || r->route == DX__R_MODELS))
        /* OpenAI's shape, so its clients show the message */
        rc = dx__buf_fmt(&b,
                         ",\"type\":\"%s\",\"param\":null,\"code\":\"%s\","
                         "\"request_id\":\"%s\"}}",
                         status >= 500 ? "server_error"
                                       : "invalid_request_error",
                         code, r->rid);
    else if (rc == 0)
        rc = dx__buf_fmt(&b, ",\"code\":\"%s\",\"request_id\":\"%s\"}}", code,
                         r->rid);
    const char *extra =
        status == 401 ? "WWW-Authenticate: Bearer realm=\"dspex\"\r\n" : NULL;
    if (rc != 0)
        dx__serve_answer(r, 500, NULL, NULL, "{}", 2);
    else
        dx__serve_answer(r, status, NULL, extra, b.p, b.len);
    dx__buf_free(&b);
}

static void answer_json(dx__sreq *r, int status, cJSON *body)
{
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    if (text == NULL)
        dx__serve_error(r, 500, "internal", "out of memory");
    else
        dx__serve_answer(r, status, NULL, NULL, text, strlen(text));
    cJSON_free(text);
    cJSON_Delete(body);
}

/* ---- metrics (loop thread part) ---------------------------------------- */

void dx__serve_record(dx_serve *srv, dx__route route, int status,
                      double seconds)
{
    dx__route_stats *s = &srv->rstats[route];
    size_t i = 0;
    while (i < s->nstatus && s->status[i] != status)
        i++;
    if (i == s->nstatus && s->nstatus < DX__MAX_STATUS_KINDS)
        s->status[s->nstatus++] = status;
    if (i < s->nstatus)
        s->count[i]++;
    size_t b = 0;
    while (b < DX__HIST_BUCKETS - 1 && seconds > dx__hist_bounds[b])
        b++;
    s->hist[b]++;
    s->sum_s += seconds;
    s->n++;
}

char *dx__serve_metrics_pre(dx_serve *srv)
{
    dx__buf b = {0};
    int rc = dx__buf_str(
        &b, "# HELP dspex_http_requests_total HTTP requests answered, by "
            "route and status.\n# TYPE dspex_http_requests_total counter\n");
    for (int r = 0; rc == 0 && r < DX__R_COUNT; r++)
        for (size_t i = 0; rc == 0 && i < srv->rstats[r].nstatus; i++)
            rc = dx__buf_fmt(
                &b,
                "dspex_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                dx__route_names[r], srv->rstats[r].status[i],
                (unsigned long long)srv->rstats[r].count[i]);
    if (rc == 0)
        rc = dx__buf_str(&b, "# HELP dspex_http_request_duration_seconds "
                             "Time from parsed request to queued answer.\n"
                             "# TYPE dspex_http_request_duration_seconds "
                             "histogram\n");
    for (int r = 0; rc == 0 && r < DX__R_COUNT; r++) {
        const dx__route_stats *s = &srv->rstats[r];
        if (s->n == 0)
            continue;
        uint64_t cum = 0;
        for (int i = 0; rc == 0 && i < DX__HIST_BUCKETS; i++) {
            cum += s->hist[i];
            if (i < DX__HIST_BUCKETS - 1)
                rc = dx__buf_fmt(&b,
                                 "dspex_http_request_duration_seconds_bucket{"
                                 "route=\"%s\",le=\"%g\"} %llu\n",
                                 dx__route_names[r], dx__hist_bounds[i],
                                 (unsigned long long)cum);
            else
                rc = dx__buf_fmt(&b,
                                 "dspex_http_request_duration_seconds_bucket{"
                                 "route=\"%s\",le=\"+Inf\"} %llu\n",
                                 dx__route_names[r], (unsigned long long)cum);
        }
        if (rc == 0)
            rc = dx__buf_fmt(
                &b,
                "dspex_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
                "dspex_http_request_duration_seconds_count{route=\"%s\"} "
                "%llu\n",
                dx__route_names[r], s->sum_s, dx__route_names[r],
                (unsigned long long)s->n);
    }
    if (rc == 0)
        rc = dx__buf_fmt(&b,
                         "# TYPE dspex_http_connections_open gauge\n"
                         "dspex_http_connections_open %u\n"
                         "# TYPE dspex_http_requests_running gauge\n"
                         "dspex_http_requests_running %u\n"
                         "# TYPE dspex_http_requests_waiting gauge\n"
                         "dspex_http_requests_waiting %u\n"
                         "# TYPE dspex_http_rejected_busy_total counter\n"
                         "dspex_http_rejected_busy_total %llu\n"
                         "# TYPE dspex_request_crashes_total counter\n"
                         "dspex_request_crashes_total %llu\n"
                         "# TYPE dspex_program_reloads_total counter\n"
                         "dspex_program_reloads_total %llu\n",
                         srv->nopen, srv->nrunning, srv->nwaiting,
                         (unsigned long long)atomic_load(&srv->st_busy),
                         (unsigned long long)atomic_load(&srv->st_crashed),
                         (unsigned long long)atomic_load(&srv->st_reloads));
    if (rc != 0) {
        dx__buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* ---- routing (loop thread) --------------------------------------------- */

/* Constant-time in the token's content: every byte of the longer of the two
 * is looked at whatever matches. */
static bool token_ok(const dx_serve *srv, const char *auth)
{
    if (srv->token == NULL)
        return true;
    if (strncasecmp(auth, "Bearer ", 7) != 0)
        return false;
    const char *got = auth + 7;
    size_t glen = strlen(got);
    size_t n = glen > srv->token_len ? glen : srv->token_len;
    volatile unsigned char diff = (unsigned char)(glen != srv->token_len);
    for (size_t i = 0; i < n; i++) {
        unsigned char a = i < glen ? (unsigned char)got[i] : 0;
        unsigned char t = i < srv->token_len ? (unsigned char)srv->token[i] : 0;
        diff |= a ^ t;
    }
    return diff == 0;
}

static void list_programs(dx_serve *srv, dx__sreq *r)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "programs");
    for (size_t i = 0; arr != NULL && i < srv->nprogs; i++) {
        dx__prog *p = acquire(srv, srv->progs[i].name);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", srv->progs[i].name);
        cJSON_AddStringToObject(o, "kind",
                                srv->progs[i].path ? "file" : "module");
        cJSON *in = cJSON_AddArrayToObject(o, "inputs");
        for (size_t k = 0; k < p->ninputs; k++)
            cJSON_AddItemToArray(in, cJSON_CreateString(p->inputs[k]));
        cJSON *out = cJSON_AddArrayToObject(o, "outputs");
        for (size_t k = 0; k < p->noutputs; k++)
            cJSON_AddItemToArray(out, cJSON_CreateString(p->outputs[k]));
        cJSON_AddItemToArray(arr, o);
        dx__prog_unref(p);
    }
    answer_json(r, 200, root);
}

/* The programs as OpenAI's model objects: clients of the chat route (SDKs,
 * chat front ends, gateways) list /v1/models to find what they may name in
 * "model", and some check it before their first call. */
static cJSON *model_object(const dx_serve *srv, const char *name)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", name);
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", (double)srv->started_s);
    cJSON_AddStringToObject(o, "owned_by", "dspex");
    return o;
}

static void list_models(dx_serve *srv, dx__sreq *r, const char *one)
{
    if (one != NULL) {
        for (size_t i = 0; i < srv->nprogs; i++)
            if (strcmp(srv->progs[i].name, one) == 0) {
                answer_json(r, 200, model_object(srv, one));
                return;
            }
        dx__serve_error(r, 404, "model_not_found",
                        "no program named \"%s\" (GET /v1/models lists "
                        "them)",
                        one);
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *arr = cJSON_AddArrayToObject(root, "data");
    for (size_t i = 0; arr != NULL && i < srv->nprogs; i++)
        cJSON_AddItemToArray(arr, model_object(srv, srv->progs[i].name));
    answer_json(r, 200, root);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The value of `token=` in a query string, percent-decoded into buf. An
 * escape is exactly two hex digits: the "%2x" sscanf this replaces also
 * took one ("%5" at the end of the URL), and the two bytes then skipped
 * included the terminating NUL, so the loop read on past the URL's end (a
 * heap-buffer-overflow under ASan; input fuzz/corpus/serve_http/
 * regress-token-escape). A '%' that starts no escape is kept as it is. */
static const char *query_token(const char *query, char *buf, size_t cap)
{
    const char *p = query;
    while (p != NULL && *p) {
        if (strncmp(p, "token=", 6) == 0) {
            size_t n = 0;
            for (p += 6; *p && *p != '&' && n + 1 < cap; p++) {
                int hi, lo;
                if (*p == '%' && (hi = hex_digit(p[1])) >= 0 &&
                    (lo = hex_digit(p[2])) >= 0) {
                    buf[n++] = (char)(hi << 4 | lo);
                    p += 2;
                } else {
                    buf[n++] = *p == '+' ? ' ' : *p;
                }
            }
            buf[n] = '\0';
            return buf;
        }
        p = strchr(p, '&');
        if (p != NULL)
            p++;
    }
    return NULL;
}

void dx__serve_route(dx_serve *srv, dx__sreq *r, const char *method,
                     const char *path, const char *query, const char *auth)
{
    bool get = strcmp(method, "GET") == 0;
    bool post = strcmp(method, "POST") == 0;
    char qt[512], hdr[600]; /* the dashboard's ?token=, as a header */
    if (strcmp(path, "/healthz") == 0) {
        r->route = DX__R_HEALTHZ;
        if (!get) {
            dx__serve_error(r, 405, "method_not_allowed", "%s wants GET", path);
            return;
        }
        static const char ok[] = "{\"status\":\"ok\"}";
        {
            dx__serve_answer(r, 200, NULL, NULL, ok, sizeof ok - 1);
            return;
        }
    }
    static const char pre[] = "/v1/programs/";
    const size_t plen = sizeof pre - 1;
    const char *slash = NULL;
    /* A plain loop, not strchr: gcc 12 with ASan at -O2 takes path + plen,
     * after the prefix compared equal, for a read past the literal. */
    if (strncmp(path, pre, plen) == 0)
        for (const char *q = path + plen; *q != '\0' && slash == NULL; q++)
            if (*q == '/')
                slash = q;
    if (slash != NULL && strcmp(slash, "/predict") == 0)
        r->route = DX__R_PREDICT;
    else if (slash != NULL && strcmp(slash, "/batch") == 0)
        r->route = DX__R_BATCH;
    else if (strcmp(path, "/v1/chat/completions") == 0)
        r->route = DX__R_CHAT;
    else if (strcmp(path, "/v1/programs") == 0)
        r->route = DX__R_PROGRAMS;
    else if (strcmp(path, "/v1/models") == 0 ||
             strncmp(path, "/v1/models/", 11) == 0)
        r->route = DX__R_MODELS;
    else if (strcmp(path, "/metrics") == 0)
        r->route = DX__R_METRICS;
    else if (strcmp(path, "/dashboard") == 0 ||
             strcmp(path, "/dashboard/events") == 0) {
        /* Browsers cannot set a header on a page load or an EventSource,
         * so these two also take the token as ?token=. */
        r->route = DX__R_DASHBOARD;
        const char *t = query_token(query, qt, sizeof qt);
        if (t != NULL && auth[0] == '\0') {
            snprintf(hdr, sizeof hdr, "Bearer %s", t);
            auth = hdr;
        }
    } else {
        dx__serve_error(r, 404, "not_found", "no route %s %s", method, path);
        return;
    }
    if (!token_ok(srv, auth)) {
        dx__serve_error(r, 401, "unauthorized",
                        "missing or wrong bearer token");
        return;
    }
    switch (r->route) {
    case DX__R_DASHBOARD:
        if (!get) {
            dx__serve_error(r, 405, "method_not_allowed", "%s wants GET", path);
            return;
        }
        if (strcmp(path, "/dashboard/events") == 0) {
            const char *lim = strstr(query, "limit=");
            long limit = lim ? strtol(lim + 6, NULL, 10) : 0;
            dx__serve_subscribe(srv, r,
                                limit > 0 && limit < 1000000 ? (int)limit : 0);
            return;
        }
        dx__serve_answer(r, 200, "text/html; charset=utf-8",
                         "Cache-Control: no-cache\r\n", dx__dashboard_html,
                         dx__dashboard_html_len);
        return;
    case DX__R_PROGRAMS:
        if (!get) {
            dx__serve_error(r, 405, "method_not_allowed", "%s wants GET", path);
            return;
        }
        {
            list_programs(srv, r);
            return;
        }
    case DX__R_MODELS:
        if (!get) {
            dx__serve_error(r, 405, "method_not_allowed", "%s wants GET", path);
            return;
        }
        list_models(srv, r, path[10] == '/' ? path + 11 : NULL);
        return;
    case DX__R_METRICS:
        if (!get) {
            dx__serve_error(r, 405, "method_not_allowed", "%s wants GET", path);
            return;
        }
        if ((r->pre = dx__serve_metrics_pre(srv)) == NULL) {
            dx__serve_error(r, 500, "internal", "out of memory");
            return;
        }
        {
            dx__serve_submit(srv, r);
            return;
        }
    case DX__R_CHAT:
        if (!post) {
            dx__serve_error(r, 405, "method_not_allowed", "%s wants POST",
                            path);
            return;
        }
        {
            dx__serve_submit(srv, r);
            return;
        }
    default: {
        size_t n = (size_t)(slash - (path + plen));
        if (!post) {
            dx__serve_error(r, 405, "method_not_allowed", "%s wants POST",
                            path);
            return;
        }
        if (n == 0 || n >= sizeof r->program) {
            dx__serve_error(r, 404, "unknown_program",
                            "no program named \"%.*s\"", (int)n, path + plen);
            return;
        }
        memcpy(r->program, path + plen, n);
        r->program[n] = '\0';
        if ((r->prog = acquire(srv, r->program)) == NULL) {
            dx__serve_error(r, 404, "unknown_program",
                            "no program named \"%s\" (GET /v1/programs "
                            "lists them)",
                            r->program);
            return;
        }
        {
            dx__serve_submit(srv, r);
            return;
        }
    }
    }
}

/* ---- the dispatcher and the request processes --------------------------- */

typedef struct job {
    dx__sreq *r;
    bool posted; /* the child answered (or is answering) */
} job;

static void job_free(void *extra)
{
    job *j = extra;
    if (!j->posted) {
        dx_serve *srv = j->r->srv;
        atomic_fetch_add(&srv->st_crashed, 1);
        dx_logf(DX_LOG_ERROR,
                "serve: request %s: its process ended without answering",
                j->r->rid);
        dx__serve_error(j->r, 500, "crashed",
                        "the request process crashed (request id %s)",
                        j->r->rid);
    }
    dx_free(j);
}

static void run_request(job *j);

static void worker_main(void *arg)
{
    dx_set_label("dx_serve:request");
    dx_trap_exit(true);
    run_request(arg);
}

static int worker_start(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    return dx_spawn_link(worker_main, extra, pid_out);
}

static void dispatcher_main(void *arg)
{
    dx_serve *srv = arg;
    dx_set_label("dx_serve:dispatcher");
    dx_trap_exit(true);
    dx_child_spec tmpl = {
        .start = worker_start,
        .arg = srv,
        .restart = DX_SUP_TEMPORARY,
        /* A request process traps exits and is waited for, never killed:
         * the program it runs (another process, see dx_module_call) reads
         * the module, which must outlive it. dx_module_call returns at
         * most a second past the deadline. */
        .shutdown_ms = srv->deadline_ms + 2000,
        .extra_free = job_free,
    };
    dx_sup_spec spec = {
        .name = "dx_serve.requests",
        .strategy = DX_SUP_SIMPLE_ONE_FOR_ONE,
        .children = &tmpl,
        .nchildren = 1,
    };
    /* The first server of a runtime names its supervisor (observers show
     * it); another one in the same runtime goes unnamed. */
    int rc = dx_sup_start_link(&spec, &srv->sup, NULL);
    if (rc == DX_EEXIST) {
        spec.name = NULL;
        rc = dx_sup_start_link(&spec, &srv->sup, NULL);
    }
    if (rc == DX_OK)
        rc = dx_spawn_link(dx__observer_main, srv, &srv->observer);
    atomic_store(&srv->start_rc, rc);
    if (rc != DX_OK)
        return;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            continue;
        if (m->tag == TAG_REQ) {
            dx__sreq *r = dx_msg_take_ptr(m);
            dx_msg_free(m);
            job *j = dx_calloc(1, sizeof *j);
            dx_pid pid;
            if (j != NULL)
                j->r = r;
            int src = j ? dx_sup_start_dynamic(srv->sup, j, &pid) : DX_ENOMEM;
            if (src != DX_OK) {
                dx_free(j);
                dx__serve_error(r, 500, "internal",
                                "cannot start a process for the request: %s",
                                dx_strerror(src));
            }
        } else if (m->tag == TAG_STOP) {
            dx_msg_free(m);
            dx_kill(srv->observer);
            dx_sup_stop(srv->sup, NULL, DX_INFINITY);
            return;
        } else if (m->tag == DX_TAG_EXIT && dx_pid_eq(m->from, srv->observer)) {
            /* The dashboard's observer died: start another (its state is
             * only counters; the next snapshot rebuilds the rest). */
            dx_msg_free(m);
            dx_logf(DX_LOG_ERROR, "serve: the dashboard observer died; "
                                  "starting it again");
            if (dx_spawn_link(dx__observer_main, srv, &srv->observer) != DX_OK)
                srv->observer = DX_NOPID;
        } else if (m->tag == DX_TAG_EXIT && dx_pid_eq(m->from, srv->sup)) {
            dx_msg_free(m);
            dx_logf(DX_LOG_ERROR,
                    "serve: the request supervisor ended; no more "
                    "requests can run");
            return;
        } else {
            dx_msg_free(m);
        }
    }
}

void dx__serve_dispatch(dx_serve *srv, dx__sreq *r)
{
    if (dx_send_ptr(srv->dispatcher, TAG_REQ, r, NULL) != DX_OK)
        dx__serve_error(r, 500, "internal", "the dispatcher is gone");
}

/* ---- request bodies ---------------------------------------------------- */

/* Give the answer for j's request. After this the process must not touch
 * the request. */
static void post_json(job *j, int status, cJSON *body)
{
    j->posted = true;
    answer_json(j->r, status, body);
}

static void post_error(job *j, int status, const char *code, const char *fmt,
                       ...) DX_PRINTF(4, 5);
static void post_error(job *j, int status, const char *code, const char *fmt,
                       ...)
{
    char msg[DX_DIAG_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    j->posted = true;
    dx__serve_error(j->r, status, code, "%s", msg);
}

/* Nesting deeper than max (outside strings) is refused before cJSON builds
 * anything, so a hostile body cannot make the parser recurse deeply. */
static bool depth_ok(const char *s, size_t n, int max)
{
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max)
                return false;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return true;
}

/* Parse the body, or post a 400 that says where it is broken. */
static cJSON *parse_body(job *j)
{
    dx__sreq *r = j->r;
    if (r->body_len == 0) {
        post_error(j, 400, "bad_json", "the request body is empty; send JSON");
        return NULL;
    }
    if (!depth_ok(r->body, r->body_len, r->srv->max_depth)) {
        post_error(j, 400, "json_too_deep",
                   "the JSON body nests deeper than %d levels",
                   r->srv->max_depth);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(r->body, r->body_len, &end, false);
    if (root == NULL) {
        int line = 1, col = 1;
        const char *stop = end ? end : r->body;
        for (const char *p = r->body; p < stop && *p; p++) {
            if (*p == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        post_error(j, 400, "bad_json",
                   "request body: line %d, column %d: not "
                   "valid JSON",
                   line, col);
        return NULL;
    }
    return root;
}

static cJSON *usage_json(const dx_usage_acc *u)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "lm_calls", (double)u->calls);
    cJSON_AddNumberToObject(o, "cached_calls", (double)u->cached_calls);
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)u->input_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", (double)u->output_tokens);
    cJSON_AddNumberToObject(o, "total_tokens",
                            (double)(u->input_tokens + u->output_tokens));
    cJSON_AddNumberToObject(o, "cost_usd", u->cost_usd);
    return o;
}

/* The outcome of one program run. */
typedef struct run_out {
    int status; /* 200 or the error's HTTP status */
    const char *code;
    char msg[DX_DIAG_MAX + 128];
    cJSON *outputs; /* 200: owned */
    dx_usage_acc usage;
    char model[128];
} run_out;

/* ---- streaming a run as it goes ---------------------------------------- */

#define MAX_LIVE_FIELDS 64

/* A run's live answer: the stream listener's state. In the heap: the
 * program's process writes it while the request process waits in
 * dx_module_call, which returns only once that process is gone. */
typedef struct live {
    dx__sreq *r;
    bool chat;
    bool failed; /* a piece could not go out: send no more */
    /* predict: the fields that had pieces (their value is not repeated) */
    char *fields[MAX_LIVE_FIELDS];
    size_t nfields;
    /* chat: the field whose pieces are the message content (the program's
     * one output; NULL: the content comes whole at the end), the content
     * sent so far, and the chunk ids. */
    const char *content_field;
    dx__buf content;
    char id[64];
    long long created;
} live;

static const char predict_ctype[] = "text/event-stream";
static const char chat_ctype[] = "text/event-stream; charset=utf-8";
static const char sse_headers[] = "Cache-Control: no-cache\r\n";

static void live_free(live *lv)
{
    if (lv == NULL)
        return;
    for (size_t i = 0; i < lv->nfields; i++)
        dx_free(lv->fields[i]);
    dx__buf_free(&lv->content);
    dx_free(lv);
}

static void live_send(live *lv, const char *data, size_t len)
{
    if (!lv->failed &&
        dx__serve_stream_send(lv->r, lv->chat ? chat_ctype : predict_ctype,
                              sse_headers, data, len) != DX_OK)
        lv->failed = true;
}

/* One OpenAI chunk: delta {role?, content?}, finish_reason (NULL: null),
 * or, with usage, the usage chunk (no choices). */
static char *chat_chunk(const live *lv, const char *model, const char *content,
                        size_t len, bool role, const char *finish,
                        const cJSON *usage)
{
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddStringToObject(ch, "id", lv->id);
    cJSON_AddStringToObject(ch, "object", "chat.completion.chunk");
    cJSON_AddNumberToObject(ch, "created", (double)lv->created);
    cJSON_AddStringToObject(ch, "model", model);
    cJSON *choices = cJSON_AddArrayToObject(ch, "choices");
    if (usage == NULL) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *delta = cJSON_AddObjectToObject(c, "delta");
        if (role)
            cJSON_AddStringToObject(delta, "role", "assistant");
        if (content != NULL) {
            char *t = dx_malloc(len + 1);
            if (t != NULL) {
                memcpy(t, content, len);
                t[len] = '\0';
                cJSON_AddStringToObject(delta, "content", t);
                dx_free(t);
            }
        }
        cJSON_AddNullToObject(c, "logprobs");
        if (finish != NULL)
            cJSON_AddStringToObject(c, "finish_reason", finish);
        else
            cJSON_AddNullToObject(c, "finish_reason");
        cJSON_AddItemToArray(choices, c);
    } else {
        cJSON_AddItemToObject(ch, "usage", cJSON_Duplicate(usage, true));
    }
    char *t = cJSON_PrintUnformatted(ch);
    cJSON_Delete(ch);
    if (t == NULL)
        return NULL;
    size_t n = strlen(t);
    char *ev = dx_malloc(n + 9);
    if (ev != NULL) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, t, n);
        memcpy(ev + 6 + n, "\n\n", 3);
    }
    cJSON_free(t);
    return ev;
}

static void live_send_str(live *lv, char *ev)
{
    if (ev == NULL) {
        lv->failed = true;
        return;
    }
    live_send(lv, ev, strlen(ev));
    dx_free(ev);
}

/* The stream listener (dx_call_opts.on_chunk), in the program's process. */
static void live_chunk(const char *predictor, const char *field,
                       const char *text, size_t len, void *ud)
{
    live *lv = ud;
    if (lv->failed)
        return;
    if (lv->chat) {
        if (lv->content_field == NULL || strcmp(field, lv->content_field) != 0)
            return;
        if (!dx__serve_stream_begun(lv->r))
            live_send_str(
                lv, chat_chunk(lv, lv->r->program, "", 0, true, NULL, NULL));
        live_send_str(
            lv, chat_chunk(lv, lv->r->program, text, len, false, NULL, NULL));
        if (dx__buf_append(&lv->content, text, len) != 0)
            lv->failed = true;
        return;
    }
    bool known = false;
    for (size_t i = 0; i < lv->nfields && !known; i++)
        known = strcmp(lv->fields[i], field) == 0;
    if (!known && lv->nfields < MAX_LIVE_FIELDS &&
        (lv->fields[lv->nfields] = dx_strdup(field)) != NULL)
        lv->nfields++;
    dx__buf b = {0};
    int rc = dx__buf_str(&b, "event: field\ndata: {\"field\":");
    if (rc == 0)
        rc = dx__buf_json_str(&b, field);
    if (rc == 0)
        rc = dx__buf_str(&b, ",\"predictor\":");
    if (rc == 0)
        rc = dx__buf_json_str(&b, predictor);
    if (rc == 0)
        rc = dx__buf_str(&b, ",\"chunk\":");
    char *t = rc == 0 ? dx_malloc(len + 1) : NULL;
    if (t != NULL) {
        memcpy(t, text, len);
        t[len] = '\0';
        rc = dx__buf_json_str(&b, t);
        dx_free(t);
    } else {
        rc = DX_ENOMEM;
    }
    if (rc == 0)
        rc = dx__buf_str(&b, "}\n\n");
    if (rc == 0)
        live_send(lv, b.p, b.len);
    else
        lv->failed = true;
    dx__buf_free(&b);
}

static bool live_had(const live *lv, const char *field)
{
    for (size_t i = 0; lv != NULL && i < lv->nfields; i++)
        if (strcmp(lv->fields[i], field) == 0)
            return true;
    return false;
}

static int64_t remaining_ms(const dx__sreq *r)
{
    return r->srv->deadline_ms - (dx_now_ms() - r->t0_ms);
}

/* Check and run one inputs object. */
static void run_one(dx__sreq *r, dx__prog *p, const cJSON *inputs, live *lv,
                    run_out *o)
{
    memset(o, 0, sizeof *o);
    dx_usage_acc_init(&o->usage, NULL);
    if (!cJSON_IsObject(inputs)) {
        o->status = 400;
        o->code = "bad_inputs";
        snprintf(o->msg, sizeof o->msg, "\"inputs\" must be a JSON object");
        return;
    }
    for (size_t i = 0; i < p->ninputs; i++)
        if (!cJSON_HasObjectItem(inputs, p->inputs[i])) {
            o->status = 422;
            o->code = "missing_input";
            snprintf(o->msg, sizeof o->msg,
                     "missing input field \"%s\" (program %s wants: ",
                     p->inputs[i], r->program);
            for (size_t k = 0; k < p->ninputs; k++) {
                size_t l = strlen(o->msg);
                snprintf(o->msg + l, sizeof o->msg - l, "%s%s", k ? ", " : "",
                         p->inputs[k]);
            }
            size_t l = strlen(o->msg);
            snprintf(o->msg + l, sizeof o->msg - l, ")");
            return;
        }
    int64_t left = remaining_ms(r);
    if (left <= 0) {
        o->status = 504;
        o->code = "deadline";
        snprintf(o->msg, sizeof o->msg,
                 "the request waited past its deadline of %lld ms",
                 (long long)r->srv->deadline_ms);
        return;
    }
    dx_example *ex = dx_example_new();
    int rc = ex ? DX_OK : DX_ENOMEM;
    for (const cJSON *it = inputs->child; rc == DX_OK && it; it = it->next)
        rc = dx_example_set_value(ex, it->string, it);
    dx_call_opts co = {
        .lm_name = r->srv->lm_name,
        .adapter = r->srv->adapter,
        .timeout_ms = left,
        .on_chunk = lv ? live_chunk : NULL,
        .chunk_ud = lv,
    };
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    if (rc == DX_OK)
        rc = dx_module_call(p->module, ex, &co, &pred, NULL, &d);
    dx_example_free(ex);
    if (pred != NULL) {
        o->usage = *dx_prediction_usage(pred);
        const char *model = dx_prediction_model(pred);
        snprintf(o->model, sizeof o->model, "%s", model ? model : "");
    }
    if (rc == DX_OK) {
        char *text = NULL;
        rc = dx_example_to_json(dx_prediction_fields(pred), &text);
        o->outputs = text ? cJSON_Parse(text) : NULL;
        dx_free(text);
        dx_prediction_free(pred);
        if (o->outputs != NULL) {
            o->status = 200;
            return;
        }
        rc = DX_ENOMEM;
    }
    dx_prediction_free(pred);
    const char *what = d.msg[0] ? d.msg : dx_strerror(rc);
    switch (rc) {
    case DX_ETIMEDOUT:
        o->status = 504;
        o->code = "deadline";
        snprintf(o->msg, sizeof o->msg,
                 "the program did not finish within the deadline (%lld ms)",
                 (long long)r->srv->deadline_ms);
        return;
    case DX_EDOWN:
        atomic_fetch_add(&r->srv->st_crashed, 1);
        dx_logf(DX_LOG_ERROR, "serve: request %s: program %s crashed: %s",
                r->rid, r->program, what);
        o->status = 500;
        o->code = "crashed";
        snprintf(o->msg, sizeof o->msg,
                 "the program crashed (request id %s): %s", r->rid, what);
        return;
    case DX_EINVAL:
    case DX_ETYPE:
    case DX_ESYNTAX:
    case DX_ESTATE:
        o->status = 422;
        o->code = "bad_inputs";
        break;
    case DX_EPROVIDER:
    case DX_EPARSE:
    case DX_EHTTP:
    case DX_ECONNECT:
    case DX_ERESET:
        o->status = 502;
        o->code = "lm_failed";
        break;
    case DX_EOPEN:
    case DX_EBUSY:
    case DX_ELIMIT:
    case DX_ENOLM:
        o->status = 503;
        o->code = "lm_unavailable";
        break;
    default:
        o->status = 500;
        o->code = "internal";
        break;
    }
    snprintf(o->msg, sizeof o->msg, "%s", what);
}

static void do_predict(job *j)
{
    dx__sreq *r = j->r;
    cJSON *root = parse_body(j);
    if (root == NULL)
        return;
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(root, "inputs");
    if (!cJSON_IsObject(inputs)) {
        cJSON_Delete(root);
        {
            post_error(j, 400, "bad_inputs",
                       "the body must be {\"inputs\": {field: value, ...}}");
            return;
        }
    }
    run_out o;
    bool sse = r->want_sse ||
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream"));
    live *lv = sse ? dx_calloc(1, sizeof *lv) : NULL;
    if (lv != NULL)
        lv->r = r;
    run_one(r, r->prog, inputs, lv, &o);
    cJSON_Delete(root);
    bool begun = lv != NULL && dx__serve_stream_begun(r);
    if (o.status != 200) {
        /* Mid-stream, the error answer becomes the stream's last event
         * ("event: error", dx__serve_answer). */
        live_free(lv);
        post_error(j, o.status, o.code, "%s", o.msg);
        return;
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "request_id", r->rid);
    cJSON_AddStringToObject(out, "program", r->program);
    cJSON_AddItemToObject(out, "outputs", o.outputs);
    cJSON_AddItemToObject(out, "usage", usage_json(&o.usage));
    if (o.model[0])
        cJSON_AddStringToObject(out, "model", o.model);
    if (!sse) {
        post_json(j, 200, out);
        return;
    }
    /* Server-sent events: the pieces streamed so far (if any) went out as
     * "field" events with a "chunk"; now one "field" event with the whole
     * "value" for each output that had no pieces, then the result. */
    dx__buf b = {0};
    int rc = 0;
    for (const cJSON *f = o.outputs->child; rc == 0 && f; f = f->next) {
        if (live_had(lv, f->string))
            continue;
        cJSON *ev = cJSON_CreateObject();
        cJSON_AddStringToObject(ev, "field", f->string);
        cJSON_AddItemToObject(ev, "value", cJSON_Duplicate(f, true));
        char *t = cJSON_PrintUnformatted(ev);
        rc = t ? dx__buf_fmt(&b, "event: field\ndata: %s\n\n", t) : DX_ENOMEM;
        cJSON_free(t);
        cJSON_Delete(ev);
    }
    char *t = cJSON_PrintUnformatted(out);
    if (rc == 0)
        rc = t ? dx__buf_fmt(&b, "event: done\ndata: %s\n\n", t) : DX_ENOMEM;
    cJSON_free(t);
    cJSON_Delete(out);
    live_free(lv);
    j->posted = true;
    if (begun) {
        if (rc == 0)
            (void)dx__serve_stream_send(r, predict_ctype, sse_headers, b.p,
                                        b.len);
        dx__serve_stream_end(r);
    } else if (rc != 0) {
        dx__serve_error(r, 500, "internal", "out of memory");
    } else {
        dx__serve_answer(r, 200, predict_ctype, sse_headers, b.p, b.len);
    }
    dx__buf_free(&b);
}

static void do_batch(job *j)
{
    dx__sreq *r = j->r;
    cJSON *root = parse_body(j);
    if (root == NULL)
        return;
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(root, "inputs");
    if (!cJSON_IsArray(items)) {
        cJSON_Delete(root);
        {
            post_error(j, 400, "bad_inputs",
                       "the body must be {\"inputs\": [{...}, ...]}");
            return;
        }
    }
    int n = cJSON_GetArraySize(items);
    if (n > DX_SERVE_MAX_BATCH) {
        cJSON_Delete(root);
        {
            post_error(j, 413, "batch_too_large",
                       "a batch holds at most %d items, this one %d",
                       DX_SERVE_MAX_BATCH, n);
            return;
        }
    }
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "request_id", r->rid);
    cJSON_AddStringToObject(out, "program", r->program);
    cJSON *results = cJSON_AddArrayToObject(out, "results");
    dx_usage_acc total;
    dx_usage_acc_init(&total, NULL);
    int failed = 0;
    for (const cJSON *it = items->child; it; it = it->next) {
        run_out o;
        run_one(r, r->prog, it, NULL, &o);
        dx_usage_acc_merge(&total, &o.usage);
        cJSON *res = cJSON_CreateObject();
        if (o.status == 200) {
            cJSON_AddItemToObject(res, "outputs", o.outputs);
            cJSON_AddItemToObject(res, "usage", usage_json(&o.usage));
        } else {
            failed++;
            cJSON *e = cJSON_AddObjectToObject(res, "error");
            cJSON_AddNumberToObject(e, "status", o.status);
            cJSON_AddStringToObject(e, "code", o.code);
            cJSON_AddStringToObject(e, "message", o.msg);
        }
        cJSON_AddItemToArray(results, res);
    }
    cJSON_Delete(root);
    cJSON_AddNumberToObject(out, "failed", failed);
    cJSON_AddItemToObject(out, "usage", usage_json(&total));
    post_json(j, 200, out);
}

/* The text of an OpenAI message's content: a string, or the text parts of
 * an array of parts joined. NULL if none. Owned by the caller (dx_free). */
static char *content_text(const cJSON *content)
{
    if (cJSON_IsString(content))
        return dx_strdup(content->valuestring);
    if (!cJSON_IsArray(content))
        return NULL;
    dx__buf b = {0};
    for (const cJSON *part = content->child; part; part = part->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(t) && dx__buf_str(&b, t->valuestring) != 0) {
            dx__buf_free(&b);
            return NULL;
        }
    }
    return b.p ? b.p : dx_strdup("");
}

/* The end of a chat stream that began: what the content still lacks
 * (normally nothing: the pieces were the content), the finish chunk, the
 * usage chunk when asked for, [DONE]. If the pieces are not a prefix of
 * the content (a program whose several predictors write the output
 * field), nothing more of the content is sent. */
static void chat_finish(job *j, live *lv, const char *content,
                        const dx_usage_acc *u, bool include_usage)
{
    dx__sreq *r = j->r;
    j->posted = true;
    size_t have = lv->content.len, n = strlen(content);
    if (have < n &&
        memcmp(content, lv->content.p ? lv->content.p : "", have) == 0)
        live_send_str(lv, chat_chunk(lv, r->program, content + have, n - have,
                                     false, NULL, NULL));
    live_send_str(lv, chat_chunk(lv, r->program, NULL, 0, false, "stop", NULL));
    if (include_usage) {
        cJSON *usage = cJSON_CreateObject();
        cJSON_AddNumberToObject(usage, "prompt_tokens",
                                (double)u->input_tokens);
        cJSON_AddNumberToObject(usage, "completion_tokens",
                                (double)u->output_tokens);
        cJSON_AddNumberToObject(usage, "total_tokens",
                                (double)(u->input_tokens + u->output_tokens));
        live_send_str(lv,
                      chat_chunk(lv, r->program, NULL, 0, false, NULL, usage));
        cJSON_Delete(usage);
    }
    static const char done[] = "data: [DONE]\n\n";
    live_send(lv, done, sizeof done - 1);
    dx__serve_stream_end(r);
}

static void do_chat(job *j)
{
    dx__sreq *r = j->r;
    cJSON *root = parse_body(j);
    if (root == NULL)
        return;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    bool stream =
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream"));
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    bool include_usage =
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
    if (!cJSON_IsString(model) || !cJSON_IsArray(msgs)) {
        cJSON_Delete(root);
        {
            post_error(j, 400, "invalid_request",
                       "the body needs \"model\" (a program name) and "
                       "\"messages\"");
            return;
        }
    }
    /* A program answers once per request; n choices would be n copies of
     * one answer (the LM client's cache), so more than one is refused
     * rather than silently given one. */
    const cJSON *n_choices = cJSON_GetObjectItemCaseSensitive(root, "n");
    if (n_choices != NULL && !cJSON_IsNull(n_choices) &&
        !(cJSON_IsNumber(n_choices) && n_choices->valuedouble == 1)) {
        cJSON_Delete(root);
        post_error(j, 400, "invalid_request",
                   "\"n\" must be 1: a program gives one answer per "
                   "request");
        return;
    }
    snprintf(r->program, sizeof r->program, "%s", model->valuestring);
    if ((r->prog = acquire(r->srv, r->program)) == NULL) {
        cJSON_Delete(root);
        {
            post_error(j, 404, "model_not_found",
                       "no program named \"%s\" (GET /v1/models lists "
                       "them)",
                       r->program);
            return;
        }
    }
    const cJSON *last = NULL;
    for (const cJSON *m = msgs->child; m; m = m->next) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (cJSON_IsString(role) && strcmp(role->valuestring, "user") == 0)
            last = m;
    }
    char *text =
        last ? content_text(cJSON_GetObjectItemCaseSensitive(last, "content"))
             : NULL;
    if (text == NULL) {
        cJSON_Delete(root);
        {
            post_error(j, 400, "invalid_request",
                       "no user message with text content");
            return;
        }
    }
    /* A JSON object in the message fills the inputs by name; plain text
     * fills the program's one input. */
    dx__prog *p = r->prog;
    cJSON *inputs = cJSON_Parse(text);
    if (!cJSON_IsObject(inputs)) {
        cJSON_Delete(inputs);
        inputs = NULL;
        if (p->ninputs == 1) {
            inputs = cJSON_CreateObject();
            cJSON_AddStringToObject(inputs, p->inputs[0], text);
        }
    }
    dx_free(text);
    if (inputs == NULL) {
        cJSON_Delete(root);
        {
            post_error(j, 422, "missing_input",
                       "program %s has %zu inputs: send them as a JSON "
                       "object in the user message",
                       r->program, p->ninputs);
            return;
        }
    }
    /* Streamed: the pieces of the program's one output are the content
     * as they come; with several outputs the content (a JSON object of
     * them) comes whole at the end. */
    live *lv = stream ? dx_calloc(1, sizeof *lv) : NULL;
    if (lv != NULL) {
        lv->r = r;
        lv->chat = true;
        lv->content_field = p->noutputs == 1 ? p->outputs[0] : NULL;
        lv->content.max = DX__STREAM_MAX_PENDING;
        snprintf(lv->id, sizeof lv->id, "chatcmpl-%s", r->rid);
        lv->created = (long long)time(NULL);
    }
    run_out o;
    run_one(r, p, inputs, lv, &o);
    cJSON_Delete(inputs);
    cJSON_Delete(root);
    bool begun = lv != NULL && dx__serve_stream_begun(r);
    if (o.status != 200) {
        live_free(lv); /* mid-stream: an "event: error" ends the stream */
        post_error(j, o.status, o.code, "%s", o.msg);
        return;
    }
    /* The assistant message: the one output's text, else all outputs as a
     * JSON object. */
    char *content = NULL;
    const cJSON *only = o.outputs->child;
    if (only != NULL && only->next == NULL && cJSON_IsString(only))
        content = dx_strdup(only->valuestring);
    else {
        char *t = cJSON_PrintUnformatted(o.outputs);
        content = t ? dx_strdup(t) : NULL;
        cJSON_free(t);
    }
    cJSON_Delete(o.outputs);
    if (content == NULL) {
        live_free(lv);
        post_error(j, 500, "internal", "out of memory");
        return;
    }
    if (begun) {
        chat_finish(j, lv, content, &o.usage, include_usage);
        live_free(lv);
        dx_free(content);
        return;
    }
    live_free(lv);
    char id[64];
    snprintf(id, sizeof id, "chatcmpl-%s", r->rid);
    long long created = (long long)time(NULL);
    cJSON *usage = cJSON_CreateObject();
    cJSON_AddNumberToObject(usage, "prompt_tokens",
                            (double)o.usage.input_tokens);
    cJSON_AddNumberToObject(usage, "completion_tokens",
                            (double)o.usage.output_tokens);
    cJSON_AddNumberToObject(
        usage, "total_tokens",
        (double)(o.usage.input_tokens + o.usage.output_tokens));
    if (!stream) {
        cJSON *out = cJSON_CreateObject();
        cJSON_AddStringToObject(out, "id", id);
        cJSON_AddStringToObject(out, "object", "chat.completion");
        cJSON_AddNumberToObject(out, "created", (double)created);
        cJSON_AddStringToObject(out, "model", r->program);
        cJSON *choices = cJSON_AddArrayToObject(out, "choices");
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", content);
        cJSON_AddNullToObject(c, "logprobs");
        cJSON_AddStringToObject(c, "finish_reason", "stop");
        cJSON_AddItemToArray(choices, c);
        cJSON_AddItemToObject(out, "usage", usage);
        dx_free(content);
        {
            post_json(j, 200, out);
            return;
        }
    }
    /* OpenAI's stream: a role chunk, the content, a finish chunk, the usage
     * chunk when asked for, then [DONE]. */
    dx__buf b = {0};
    int rc = 0;
    for (int k = 0; rc == 0 && k < 4; k++) {
        if (k == 3 && !include_usage)
            break;
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddStringToObject(ch, "id", id);
        cJSON_AddStringToObject(ch, "object", "chat.completion.chunk");
        cJSON_AddNumberToObject(ch, "created", (double)created);
        cJSON_AddStringToObject(ch, "model", r->program);
        cJSON *choices = cJSON_AddArrayToObject(ch, "choices");
        if (k < 3) {
            cJSON *c = cJSON_CreateObject();
            cJSON_AddNumberToObject(c, "index", 0);
            cJSON *delta = cJSON_AddObjectToObject(c, "delta");
            if (k == 0) {
                cJSON_AddStringToObject(delta, "role", "assistant");
                cJSON_AddStringToObject(delta, "content", "");
            } else if (k == 1) {
                cJSON_AddStringToObject(delta, "content", content);
            }
            cJSON_AddNullToObject(c, "logprobs");
            if (k == 2)
                cJSON_AddStringToObject(c, "finish_reason", "stop");
            else
                cJSON_AddNullToObject(c, "finish_reason");
            cJSON_AddItemToArray(choices, c);
        } else {
            cJSON_AddItemToObject(ch, "usage", cJSON_Duplicate(usage, true));
        }
        char *t = cJSON_PrintUnformatted(ch);
        rc = t ? dx__buf_fmt(&b, "data: %s\n\n", t) : DX_ENOMEM;
        cJSON_free(t);
        cJSON_Delete(ch);
    }
    if (rc == 0)
        rc = dx__buf_str(&b, "data: [DONE]\n\n");
    cJSON_Delete(usage);
    dx_free(content);
    j->posted = true;
    if (rc != 0)
        dx__serve_error(r, 500, "internal", "out of memory");
    else
        dx__serve_answer(r, 200, "text/event-stream; charset=utf-8",
                         "Cache-Control: no-cache\r\n", b.p, b.len);
    dx__buf_free(&b);
}

static void do_metrics(job *j)
{
    dx__sreq *r = j->r;
    dx_serve *srv = r->srv;
    dx__buf b = {0};
    int rc = dx__buf_str(&b, r->pre);
    dx_pid lm = dx_whereis(srv->lm_name);
    dx_lm_client_stats st;
    dx_usage_acc u;
    if (rc == 0 && !dx_pid_is_none(lm) &&
        dx_lm_client_stats_get(lm, &st) == DX_OK &&
        dx_lm_client_usage(lm, &u) == DX_OK) {
        rc = dx__buf_fmt(
            &b,
            "# TYPE dspex_lm_requests_total counter\n"
            "dspex_lm_requests_total{client=\"%s\"} %llu\n"
            "# TYPE dspex_lm_cache_hits_total counter\n"
            "dspex_lm_cache_hits_total{client=\"%s\"} %llu\n"
            "# TYPE dspex_lm_failures_total counter\n"
            "dspex_lm_failures_total{client=\"%s\"} %llu\n"
            "# TYPE dspex_lm_in_flight gauge\n"
            "dspex_lm_in_flight{client=\"%s\"} %zu\n"
            "# TYPE dspex_lm_calls_total counter\n"
            "dspex_lm_calls_total{client=\"%s\"} %lld\n"
            "# TYPE dspex_lm_tokens_total counter\n"
            "dspex_lm_tokens_total{client=\"%s\",kind=\"input\"} %lld\n"
            "dspex_lm_tokens_total{client=\"%s\",kind=\"output\"} %lld\n"
            "# TYPE dspex_lm_cost_usd_total counter\n"
            "dspex_lm_cost_usd_total{client=\"%s\"} %.6f\n"
            "# HELP dspex_lm_breaker_state 0 closed, 1 open, 2 half-open "
            "(dspex/breaker.h).\n# TYPE dspex_lm_breaker_state gauge\n"
            "dspex_lm_breaker_state{client=\"%s\",endpoint=\"0\"} %d\n",
            srv->lm_name, (unsigned long long)st.requests, srv->lm_name,
            (unsigned long long)st.cache_hits, srv->lm_name,
            (unsigned long long)st.failures, srv->lm_name, st.in_flight,
            srv->lm_name, (long long)u.calls, srv->lm_name,
            (long long)u.input_tokens, srv->lm_name, (long long)u.output_tokens,
            srv->lm_name, u.cost_usd, srv->lm_name, (int)st.breakers[0]);
    }
    dx_proc_info *ps = NULL;
    size_t np = 0;
    if (rc == 0 && dx_process_list(&ps, &np) == DX_OK) {
        size_t total = 0, maxq = 0;
        for (size_t i = 0; i < np; i++) {
            total += ps[i].mailbox_len;
            if (ps[i].mailbox_len > maxq)
                maxq = ps[i].mailbox_len;
        }
        rc = dx__buf_fmt(&b,
                         "# TYPE dspex_processes gauge\ndspex_processes %zu\n"
                         "# TYPE dspex_mailbox_messages gauge\n"
                         "dspex_mailbox_messages %zu\n"
                         "# TYPE dspex_mailbox_max gauge\n"
                         "dspex_mailbox_max %zu\n"
                         "# TYPE dspex_process_mailbox gauge\n",
                         np, total, maxq);
        for (size_t i = 0; rc == 0 && i < np; i++)
            if (ps[i].name[0])
                rc = dx__buf_fmt(&b, "dspex_process_mailbox{name=\"%s\"} %zu\n",
                                 ps[i].name, ps[i].mailbox_len);
        dx_free(ps);
    }
    dx_sup_counts sc;
    if (rc == 0 && dx_sup_count_children(srv->sup, &sc) == DX_OK)
        rc = dx__buf_fmt(&b,
                         "# TYPE dspex_supervisor_restarts_total counter\n"
                         "dspex_supervisor_restarts_total{supervisor="
                         "\"requests\"} %llu\n"
                         "# TYPE dspex_supervisor_children gauge\n"
                         "dspex_supervisor_children{supervisor=\"requests\"} "
                         "%zu\n",
                         (unsigned long long)sc.restarts, sc.active);
    j->posted = true;
    if (rc != 0)
        dx__serve_error(r, 500, "internal", "out of memory");
    else
        dx__serve_answer(r, 200, "text/plain; version=0.0.4; charset=utf-8",
                         NULL, b.p, b.len);
    dx__buf_free(&b);
}

static void run_request(job *j)
{
    switch (j->r->route) {
    case DX__R_PREDICT: {
        do_predict(j);
        return;
    }
    case DX__R_BATCH: {
        do_batch(j);
        return;
    }
    case DX__R_CHAT: {
        do_chat(j);
        return;
    }
    case DX__R_METRICS: {
        do_metrics(j);
        return;
    }
    default: {
        post_error(j, 500, "internal", "unroutable request");
        return;
    }
    }
}

/* ---- lifecycle --------------------------------------------------------- */

static bool name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= DX_SERVE_MAX_NAME)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

static void free_srv(dx_serve *srv)
{
    for (size_t i = 0; i < srv->nprogs; i++) {
        dx__prog_unref(atomic_load(&srv->progs[i].cur));
        dx_free(srv->progs[i].path);
        free_strv(srv->progs[i].inputs);
    }
    if (srv->token != NULL) {
        /* volatile: the wipe must not be optimized away */
        volatile char *t = srv->token;
        for (size_t i = 0; i < srv->token_len; i++)
            t[i] = 0;
        dx_free(srv->token);
    }
    pthread_mutex_destroy(&srv->prog_mu);
    pthread_mutex_destroy(&srv->reload_mu);
    pthread_mutex_destroy(&srv->mu);
    dx_free(srv);
}

static void stop_dispatcher(dx_serve *srv)
{
    /* Bounded: the supervisor waits for its requests, which end at most
     * a second past their deadline. */
    if (dx_send_tag(srv->dispatcher, TAG_STOP) == DX_OK)
        dx_wait_exit(srv->dispatcher, -1, NULL);
}

int dx_serve_start(const dx_serve_opts *opts, dx_serve **out, dx_diag *diag)
{
    if (out == NULL || opts == NULL)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "serve: no options");
    *out = NULL;
    if (!dx_runtime_running())
        return dx_diag_set(diag, DX_ESTATE, 0, 0,
                           "serve: the runtime is not running");
    if (opts->nprograms == 0 || opts->nprograms > DX_SERVE_MAX_PROGRAMS ||
        opts->programs == NULL)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "serve: give 1..%d programs",
                           DX_SERVE_MAX_PROGRAMS);
    if (opts->port < 0 || opts->port > 65535)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "serve: bad port %d",
                           opts->port);
    for (size_t i = 0; i < opts->nprograms; i++) {
        const dx_serve_program *p = &opts->programs[i];
        if (!name_ok(p->name))
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "serve: program %zu: bad name (1..%d of "
                               "A-Z a-z 0-9 _ . -)",
                               i, DX_SERVE_MAX_NAME - 1);
        if ((p->path == NULL) == (p->module == NULL))
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "serve: program %s: give a path or a module",
                               p->name);
        for (size_t k = 0; k < i; k++)
            if (strcmp(opts->programs[k].name, p->name) == 0)
                return dx_diag_set(diag, DX_EINVAL, 0, 0,
                                   "serve: program %s given twice", p->name);
    }
    dx_serve *srv = dx_calloc(1, sizeof *srv);
    if (srv == NULL)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "serve: out of memory");
    pthread_mutex_init(&srv->prog_mu, NULL);
    pthread_mutex_init(&srv->reload_mu, NULL);
    pthread_mutex_init(&srv->mu, NULL);
    srv->max_body =
        opts->max_body_bytes ? opts->max_body_bytes : DX_SERVE_DEFAULT_MAX_BODY;
    srv->max_depth = opts->max_json_depth > 0 ? opts->max_json_depth
                                              : DX_SERVE_DEFAULT_MAX_DEPTH;
    srv->max_conns = opts->max_connections ? opts->max_connections
                                           : DX_SERVE_DEFAULT_MAX_CONNECTIONS;
    srv->max_conc = opts->max_concurrency ? opts->max_concurrency
                                          : DX_SERVE_DEFAULT_CONCURRENCY;
    srv->queue_bound =
        opts->queue_bound ? opts->queue_bound : DX_SERVE_DEFAULT_QUEUE;
    srv->deadline_ms = opts->deadline_ms > 0 ? opts->deadline_ms
                                             : DX_SERVE_DEFAULT_DEADLINE_MS;
    srv->retry_after_s = opts->retry_after_s > 0 ? opts->retry_after_s : 1;
    srv->reload_check_ms =
        opts->reload_check_ms == 0 ? 1000 : opts->reload_check_ms;
    srv->adapter = opts->adapter;
    srv->dash_interval_ms =
        opts->dashboard_interval_ms > 0 ? opts->dashboard_interval_ms : 1000;
    srv->t_start_ms = dx_now_ms();
    snprintf(srv->lm_name, sizeof srv->lm_name, "%s",
             opts->lm_name ? opts->lm_name : "lm");
    srv->started_s = (int64_t)time(NULL);
    srv->rid_prefix = (uint32_t)((uint64_t)time(NULL) * 2654435761u ^
                                 (uint64_t)(uintptr_t)srv);
    int rc = DX_OK;
    if (opts->token != NULL && opts->token[0] != '\0') {
        srv->token = dx_strdup(opts->token);
        srv->token_len = strlen(opts->token);
        if (srv->token == NULL)
            rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "serve: out of memory");
    }
    for (size_t i = 0; rc == DX_OK && i < opts->nprograms; i++) {
        const dx_serve_program *p = &opts->programs[i];
        dx__named_prog *np = &srv->progs[srv->nprogs];
        snprintf(np->name, sizeof np->name, "%s", p->name);
        np->module = p->module;
        if (p->path != NULL && (np->path = dx_strdup(p->path)) == NULL)
            rc = DX_ENOMEM;
        if (rc == DX_OK && p->inputs != NULL &&
            (np->inputs = copy_strv(p->inputs, NULL)) == NULL)
            rc = DX_ENOMEM;
        dx__prog *cur = NULL;
        if (rc == DX_OK)
            rc = load_prog(np, &cur, diag);
        if (rc == DX_ENOMEM)
            dx_diag_set(diag, rc, 0, 0, "serve: out of memory");
        atomic_init(&np->cur, cur);
        srv->nprogs++;
    }
    if (rc != DX_OK) {
        free_srv(srv);
        return rc;
    }
    atomic_store(&srv->start_rc, 1);
    rc = dx_spawn(dispatcher_main, srv, &srv->dispatcher);
    if (rc == DX_OK) {
        while (atomic_load(&srv->start_rc) == 1) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        rc = atomic_load(&srv->start_rc);
        if (rc != DX_OK)
            dx_wait_exit(srv->dispatcher, 5000, NULL);
    }
    if (rc != DX_OK) {
        free_srv(srv);
        return dx_diag_set(diag, rc, 0, 0,
                           "serve: cannot start the request supervisor: %s",
                           dx_strerror(rc));
    }
    rc = dx__http_start(srv, opts->host ? opts->host : "127.0.0.1", opts->port);
    if (rc != DX_OK) {
        stop_dispatcher(srv);
        free_srv(srv);
        return dx_diag_set(diag, rc, 0, 0, "serve: cannot listen on %s:%d: %s",
                           opts->host ? opts->host : "127.0.0.1", opts->port,
                           rc == DX_EINVAL ? "bad address"
                                           : "bind/listen failed");
    }
    *out = srv;
    return DX_OK;
}

int dx_serve_port(const dx_serve *srv)
{
    return srv ? srv->port : 0;
}

void dx_serve_stats_get(const dx_serve *srv, dx_serve_stats *out)
{
    dx_serve *s = (dx_serve *)srv; /* atomic loads want non-const */
    out->requests = atomic_load(&s->st_requests);
    out->responses = atomic_load(&s->st_responses);
    out->rejected_busy = atomic_load(&s->st_busy);
    out->crashed = atomic_load(&s->st_crashed);
    out->reloads = atomic_load(&s->st_reloads);
    out->connections_open = atomic_load(&s->st_open);
    out->in_flight = atomic_load(&s->st_running);
    out->queued = atomic_load(&s->st_waiting);
}

int dx_serve_stop(dx_serve *srv, int64_t drain_ms)
{
    if (srv == NULL)
        return DX_EINVAL;
    int rc = dx__http_stop(srv, drain_ms);
    stop_dispatcher(srv);
    free_srv(srv);
    return rc;
}
