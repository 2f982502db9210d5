/*
 * observe.c — the observer behind GET /dashboard: a process that, while
 * someone watches /dashboard/events, builds a JSON snapshot of the node
 * every interval and hands it to the HTTP core, which sends it to every
 * watcher as one server-sent event.
 *
 * A snapshot holds the supervision trees (every process labelled as a
 * supervisor is asked for its children; processes under none are listed
 * apart), each LM client's counters, usage, breaker state and the latency
 * of its calls (from "lm.call" telemetry), and the optimizations running
 * (from "optimize.trial" / "optimize.best" telemetry: trials, last score,
 * best-so-far curve). Telemetry is subscribed only while someone watches,
 * so an unwatched server pays nothing per LM call.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/breaker.h"
#include "dspex/error.h"
#include "dspex/lm.h"
#include "dspex/runtime.h"
#include "dspex/supervisor.h"
#include "dspex/telemetry.h"
#include "serve_int.h"

#define MAX_MODELS 8
#define MAX_RUNS 8
#define MAX_CURVE 200
#define MAX_TREE_PROCS 2000

typedef struct lat {
    char model[DX_TELEMETRY_MODEL_MAX];
    uint64_t n;
    double sum_ms, last_ms;
} lat;

typedef struct run {
    char name[DX_TELEMETRY_MODEL_MAX];
    uint64_t started, done;
    double last, best;
    bool has_best;
    int64_t t_last_ms;
    double curve[MAX_CURVE][2]; /* trial, best score */
    size_t ncurve;
} run;

typedef struct obs {
    lat lats[MAX_MODELS];
    size_t nlats;
    run runs[MAX_RUNS];
    size_t nruns;
} obs;

static void on_event(obs *o, const dx_telemetry_event *e)
{
    if (strcmp(e->name, "lm.call") == 0 && e->kind == DX_TELEMETRY_STOP) {
        size_t i = 0;
        while (i < o->nlats && strcmp(o->lats[i].model, e->model) != 0)
            i++;
        if (i == o->nlats && o->nlats < MAX_MODELS)
            snprintf(o->lats[o->nlats++].model, DX_TELEMETRY_MODEL_MAX, "%s",
                     e->model);
        if (i < o->nlats) {
            o->lats[i].n++;
            o->lats[i].last_ms = (double)e->duration_us / 1000.0;
            o->lats[i].sum_ms += o->lats[i].last_ms;
        }
        return;
    }
    if (strncmp(e->name, "optimize.", 9) != 0)
        return;
    size_t i = 0;
    while (i < o->nruns && strcmp(o->runs[i].name, e->model) != 0)
        i++;
    if (i == o->nruns) {
        if (o->nruns == MAX_RUNS)
            return;
        memset(&o->runs[i], 0, sizeof o->runs[i]);
        snprintf(o->runs[i].name, sizeof o->runs[i].name, "%s", e->model);
        o->nruns++;
    }
    run *r = &o->runs[i];
    r->t_last_ms = dx_now_ms();
    if (strcmp(e->name, "optimize.trial") == 0) {
        if (e->kind == DX_TELEMETRY_START)
            r->started++;
        else {
            r->done++;
            r->last = e->score;
        }
    } else if (strcmp(e->name, "optimize.best") == 0) {
        r->best = e->score;
        r->has_best = true;
        if (r->ncurve == MAX_CURVE) {
            memmove(r->curve[0], r->curve[1],
                    sizeof r->curve[0] * (MAX_CURVE - 1));
            r->ncurve--;
        }
        r->curve[r->ncurve][0] = (double)r->done;
        r->curve[r->ncurve][1] = e->score;
        r->ncurve++;
    }
}

static void pid_str(dx_pid pid, char *buf, size_t cap)
{
    dx_term *t = dx_pid_term(pid);
    dx_term_format(t, buf, cap);
    dx_term_free(t);
}

typedef struct tnode {
    dx_proc_info info;
    long parent; /* index, or -1 */
    uint64_t restarts;
    bool supervisor;
    bool dynamic_child;
} tnode;

static cJSON *node_json(const tnode *ns, size_t n, size_t i, int depth)
{
    const tnode *t = &ns[i];
    char pid[32];
    pid_str(t->info.pid, pid, sizeof pid);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "pid", pid);
    cJSON_AddStringToObject(o, "name", t->info.name);
    cJSON_AddStringToObject(o, "label", t->info.label);
    cJSON_AddStringToObject(o, "status", dx_proc_status_name(t->info.status));
    cJSON_AddNumberToObject(o, "mailbox", (double)t->info.mailbox_len);
    cJSON_AddNumberToObject(o, "restarts", (double)t->restarts);
    cJSON_AddNumberToObject(o, "memory", (double)t->info.memory_bytes);
    cJSON_AddNumberToObject(o, "reductions", (double)t->info.reductions);
    cJSON_AddStringToObject(o, "kind", t->supervisor ? "supervisor" : "worker");
    if (t->supervisor && depth < 16) {
        cJSON *kids = cJSON_AddArrayToObject(o, "children");
        for (size_t k = 0; k < n; k++)
            if (ns[k].parent == (long)i)
                cJSON_AddItemToArray(kids, node_json(ns, n, k, depth + 1));
    }
    return o;
}

static long find_pid(const tnode *ns, size_t n, dx_pid pid)
{
    for (size_t i = 0; i < n; i++)
        if (dx_pid_eq(ns[i].info.pid, pid))
            return (long)i;
    return -1;
}

static void add_tree(cJSON *root)
{
    dx_proc_info *ps = NULL;
    size_t np = 0;
    if (dx_process_list(&ps, &np) != DX_OK)
        return;
    if (np > MAX_TREE_PROCS)
        np = MAX_TREE_PROCS;
    tnode *ns = dx_calloc(np ? np : 1, sizeof *ns);
    if (ns == NULL) {
        dx_free(ps);
        return;
    }
    for (size_t i = 0; i < np; i++) {
        ns[i].info = ps[i];
        ns[i].parent = -1;
        ns[i].supervisor = strncmp(ps[i].label, "dx_supervisor:", 14) == 0;
    }
    dx_free(ps);
    dx_pid self = dx_self();
    for (size_t i = 0; i < np; i++) {
        if (!ns[i].supervisor || dx_pid_eq(ns[i].info.pid, self))
            continue;
        dx_sup_child *kids = NULL;
        size_t nk = 0;
        if (dx_sup_which_children(ns[i].info.pid, &kids, &nk) != DX_OK)
            continue;
        for (size_t k = 0; k < nk; k++) {
            long at = find_pid(ns, np, kids[k].pid);
            if (at < 0)
                continue;
            ns[at].parent = (long)i;
            ns[at].restarts = kids[k].restarts;
            if (kids[k].id[0] && !ns[at].info.name[0])
                snprintf(ns[at].info.name, sizeof ns[at].info.name, "%s",
                         kids[k].id);
        }
        dx_free(kids);
    }
    cJSON *trees = cJSON_AddArrayToObject(root, "tree");
    cJSON *loose = cJSON_AddArrayToObject(root, "unsupervised");
    for (size_t i = 0; i < np; i++) {
        if (ns[i].parent >= 0)
            continue;
        cJSON_AddItemToArray(ns[i].supervisor ? trees : loose,
                             node_json(ns, np, i, 0));
    }
    dx_free(ns);
}

static const char *breaker_name(dx_breaker_state s)
{
    return dx_breaker_state_name(s);
}

static void add_lm(cJSON *root, const obs *o)
{
    cJSON *arr = cJSON_AddArrayToObject(root, "lm");
    dx_proc_info *ps = NULL;
    size_t np = 0;
    if (dx_process_list(&ps, &np) != DX_OK)
        return;
    for (size_t i = 0; i < np; i++) {
        if (strcmp(ps[i].label, "dx_server:dx_lm_client") != 0)
            continue;
        dx_lm_client_stats st;
        dx_usage_acc u;
        if (dx_lm_client_stats_get(ps[i].pid, &st) != DX_OK ||
            dx_lm_client_usage(ps[i].pid, &u) != DX_OK)
            continue;
        char pid[32];
        pid_str(ps[i].pid, pid, sizeof pid);
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "name", ps[i].name[0] ? ps[i].name : pid);
        cJSON_AddStringToObject(c, "model", u.name);
        cJSON_AddNumberToObject(c, "requests", (double)st.requests);
        cJSON_AddNumberToObject(c, "in_flight", (double)st.in_flight);
        cJSON_AddNumberToObject(c, "cache_hits", (double)st.cache_hits);
        cJSON_AddNumberToObject(
            c, "cache_hit_rate",
            st.requests ? (double)st.cache_hits / (double)st.requests : 0.0);
        cJSON_AddNumberToObject(c, "failures", (double)st.failures);
        cJSON_AddStringToObject(c, "breaker", breaker_name(st.breakers[0]));
        cJSON_AddNumberToObject(c, "input_tokens", (double)u.input_tokens);
        cJSON_AddNumberToObject(c, "output_tokens", (double)u.output_tokens);
        cJSON_AddNumberToObject(c, "cost_usd", u.cost_usd);
        for (size_t k = 0; k < o->nlats; k++)
            if (strcmp(o->lats[k].model, u.name) == 0 && o->lats[k].n > 0) {
                cJSON_AddNumberToObject(c, "latency_ms_avg",
                                        o->lats[k].sum_ms /
                                            (double)o->lats[k].n);
                cJSON_AddNumberToObject(c, "latency_ms_last",
                                        o->lats[k].last_ms);
            }
        cJSON_AddItemToArray(arr, c);
    }
    dx_free(ps);
}

static void add_runs(cJSON *root, const obs *o)
{
    cJSON *arr = cJSON_AddArrayToObject(root, "runs");
    for (size_t i = 0; i < o->nruns; i++) {
        const run *r = &o->runs[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "optimizer", r->name);
        cJSON_AddNumberToObject(j, "trials_started", (double)r->started);
        cJSON_AddNumberToObject(j, "trials_done", (double)r->done);
        cJSON_AddNumberToObject(j, "last_score", r->last);
        if (r->has_best)
            cJSON_AddNumberToObject(j, "best", r->best);
        cJSON_AddNumberToObject(j, "idle_ms",
                                (double)(dx_now_ms() - r->t_last_ms));
        cJSON *curve = cJSON_AddArrayToObject(j, "curve");
        for (size_t k = 0; k < r->ncurve; k++) {
            cJSON *pt = cJSON_CreateArray();
            cJSON_AddItemToArray(pt, cJSON_CreateNumber(r->curve[k][0]));
            cJSON_AddItemToArray(pt, cJSON_CreateNumber(r->curve[k][1]));
            cJSON_AddItemToArray(curve, pt);
        }
        cJSON_AddItemToArray(arr, j);
    }
}

static void snapshot(dx_serve *srv, const obs *o)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "t", (double)time(NULL) * 1000.0);
    cJSON_AddNumberToObject(root, "uptime_s",
                            (double)(dx_now_ms() - srv->t_start_ms) / 1000.0);
    cJSON_AddNumberToObject(root, "schedulers", dx_runtime_schedulers());
    cJSON_AddNumberToObject(root, "processes", (double)dx_process_count());
    cJSON *h = cJSON_AddObjectToObject(root, "http");
    cJSON_AddNumberToObject(h, "requests",
                            (double)atomic_load(&srv->st_requests));
    cJSON_AddNumberToObject(h, "running",
                            (double)atomic_load(&srv->st_running));
    cJSON_AddNumberToObject(h, "waiting",
                            (double)atomic_load(&srv->st_waiting));
    cJSON_AddNumberToObject(h, "connections",
                            (double)atomic_load(&srv->st_open));
    cJSON_AddNumberToObject(h, "rejected_busy",
                            (double)atomic_load(&srv->st_busy));
    cJSON_AddNumberToObject(h, "crashed",
                            (double)atomic_load(&srv->st_crashed));
    add_tree(root);
    add_lm(root, o);
    add_runs(root, o);
    size_t evals = 0;
    dx_proc_info *ps = NULL;
    size_t np = 0;
    if (dx_process_list(&ps, &np) == DX_OK) {
        for (size_t i = 0; i < np; i++)
            evals += strcmp(ps[i].label, "dspex.evaluate.example") == 0;
        dx_free(ps);
    }
    cJSON_AddNumberToObject(root, "evaluation_examples_running", (double)evals);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (text == NULL)
        return;
    char *copy = dx_strdup(text);
    cJSON_free(text);
    if (copy != NULL)
        dx__serve_post_snapshot(srv, copy);
}

void dx__observer_main(void *arg)
{
    dx_serve *srv = arg;
    dx_set_label("dx_serve:observer");
    /* Process memory: freed whatever way this process ends. */
    obs *o = dx_pcalloc(1, sizeof *o);
    if (o == NULL)
        return;
    bool watched = false;
    int64_t next = 0;
    for (;;) {
        bool now_watched = atomic_load(&srv->dash_subs) > 0;
        if (now_watched && !watched) {
            dx_telemetry_subscribe(dx_self(), "lm.call");
            dx_telemetry_subscribe(dx_self(), "optimize.");
            next = 0; /* a new watcher wants a snapshot at once */
        } else if (!now_watched && watched) {
            dx_telemetry_unsubscribe(dx_self(), NULL);
        }
        watched = now_watched;
        int64_t now = dx_now_ms();
        if (watched && now >= next) {
            snapshot(srv, o);
            next = dx_now_ms() + srv->dash_interval_ms;
        }
        int64_t wait = watched ? next - dx_now_ms() : 100;
        dx_msg *m = NULL;
        if (dx_receive_any(wait > 0 ? wait : 0, &m) != DX_OK)
            continue;
        if (m->tag == DX_TELEMETRY_TAG && m->ptr != NULL)
            on_event(o, m->ptr);
        dx_msg_free(m);
    }
}
