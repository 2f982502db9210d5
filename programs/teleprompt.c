/*
 * teleprompt.c — LabeledFewShot, BootstrapFewShot and
 * BootstrapFewShotWithRandomSearch (see teleprompt.h), with SQLite
 * checkpoints of every trial, telemetry progress events and an HTML report.
 *
 * BootstrapFewShot is DSPy's algorithm with the teacher runs fanned out:
 * a coordinator keeps up to `concurrency` example processes in flight (each
 * copies the teacher, drops the example itself from the demos, runs it with
 * a trace and scores it with the metric) and accepts their results strictly
 * in trainset order, stopping once max_bootstrapped_demos examples were
 * accepted, so the outcome is the sequential one. Results that arrive for
 * examples past the stopping point are discarded.
 */
#include <math.h>
#include <openssl/evp.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/telemetry.h"
#include "dspex/teleprompt.h"
#include "eval_int.h"
#include "module_int.h"
#include "pyjson.h"
#include "pyrandom.h"
#include "teleprompt_int.h"

#define DEFAULT_MAX_BOOTSTRAPPED 4
#define DEFAULT_MAX_LABELED 16
#define DEFAULT_MAX_ERRORS 10
#define DEFAULT_CANDIDATES 16
#define DEFAULT_CONCURRENCY 16
#define DEFAULT_TIMEOUT_MS 120000

/* ---- options ------------------------------------------------------------ */

dx_tp_opts dx__tp_normalized(const dx_tp_opts *in)
{
    dx_tp_opts o = *in;
    if (!o.max_bootstrapped_demos)
        o.max_bootstrapped_demos = DEFAULT_MAX_BOOTSTRAPPED;
    if (!o.max_labeled_demos && !o.labeled_none)
        o.max_labeled_demos = DEFAULT_MAX_LABELED;
    if (!o.max_rounds)
        o.max_rounds = 1;
    if (!o.max_errors)
        o.max_errors = DEFAULT_MAX_ERRORS;
    if (!o.num_candidates)
        o.num_candidates = DEFAULT_CANDIDATES;
    if (!o.concurrency)
        o.concurrency = DEFAULT_CONCURRENCY;
    if (o.example_timeout_ms <= 0)
        o.example_timeout_ms = DEFAULT_TIMEOUT_MS;
    /* Kept when set: an optimizer run by another (MIPROv2's bootstrap)
     * stops for the cancellations its caller would stop for. Stored + 1,
     * so that 0 is "not set". */
    if (o.cancel_generation == 0)
        o.cancel_generation = dx__cancel_generation() + 1;
    return o;
}

static int cancelled(dx_diag *diag)
{
    return dx_diag_set(diag, DX_ECANCELED, 0, 0,
                       "the optimizer was cancelled (dx_evaluate_cancel_all)");
}

int dx__tp_check_cancel(const dx_tp_opts *o, dx_diag *diag)
{
    return o->cancel_generation == 0 ||
                   dx__cancel_generation() + 1 == o->cancel_generation
               ? DX_OK
               : cancelled(diag);
}

/* ---- results ------------------------------------------------------------ */

bool dx__tp_over_budget(const dx_tp_opts *o, const dx_usage_acc *u)
{
    return (o->max_lm_calls > 0 && u->calls >= o->max_lm_calls) ||
           (o->max_cost_usd > 0 && u->cost_usd >= o->max_cost_usd);
}

void dx_tp_result_free(dx_tp_result *r)
{
    if (!r)
        return;
    dx_module_free(r->program);
    dx_free(r->trials);
    dx_free(r);
}

dx_tp_result *dx__tp_result_new(void)
{
    dx_tp_result *r = dx_calloc(1, sizeof *r);
    if (r) {
        r->score = -1;
        dx_usage_acc_init(&r->usage, "optimize");
    }
    return r;
}

int dx__tp_add_trial(dx_tp_result *r, const dx_tp_trial *t)
{
    dx_tp_trial *v = dx_realloc(r->trials, (r->n_trials + 1) * sizeof *v);
    if (!v)
        return DX_ENOMEM;
    r->trials = v;
    r->trials[r->n_trials++] = *t;
    /* The result's usage is what this run spent: a trial restored from the
     * checkpoint keeps its own usage in the log but cost nothing now. */
    if (!t->from_checkpoint)
        dx_usage_acc_merge(&r->usage, &t->usage);
    return DX_OK;
}

void dx__tp_emit(const char *name, dx_telemetry_kind kind,
                 const char *optimizer, int64_t trial, double score)
{
    dx_telemetry_event e = {0};
    dx_telemetry_event_set(&e, kind, name, optimizer);
    e.trial = trial;
    e.score = score;
    dx_telemetry_emit(&e);
}

/* ---- LabeledFewShot ---------------------------------------------------- */

int dx_labeled_fewshot(const dx_module *student, const dx_dataset *trainset,
                       size_t k, bool sample, dx_module **out)
{
    if (!student || !trainset || !out)
        return DX_EINVAL;
    *out = NULL;
    dx_module *prog = dx_module_reset_copy(student);
    if (!prog)
        return DX_ENOMEM;
    if (trainset->n == 0 || k == 0) {
        *out = prog;
        return DX_OK;
    }
    dx_named_predictor *preds = NULL;
    size_t np = 0;
    int rc = dx_module_predictors(prog, &preds, &np);
    size_t take = k < trainset->n ? k : trainset->n;
    size_t *idx = dx_calloc(take, sizeof *idx);
    const dx_example **demos = dx_calloc(take, sizeof *demos);
    if (rc == DX_OK && (!idx || !demos))
        rc = DX_ENOMEM;
    /* One generator for all predictors, as DSPy. */
    dx__pyrand rng;
    dx__pyrand_seed(&rng, 0);
    for (size_t p = 0; rc == DX_OK && p < np; p++) {
        if (sample) {
            rc = dx__pyrand_sample(&rng, trainset->n, take, idx);
        } else {
            for (size_t i = 0; i < take; i++)
                idx[i] = i;
        }
        for (size_t i = 0; rc == DX_OK && i < take; i++)
            demos[i] = trainset->items[idx[i]];
        if (rc == DX_OK)
            rc = dx_predict_set_demos(preds[p].predict, demos, take);
    }
    dx_free(idx);
    dx_free(demos);
    dx_free(preds);
    if (rc != DX_OK) {
        dx_module_free(prog);
        return rc;
    }
    *out = prog;
    return DX_OK;
}

/* ---- checkpoints ------------------------------------------------------- */

int dx__tp_ckpt_open(dx__tp_ckpt *c, const char *path, const char *kind,
                     const dx_module *student, const dx_module *teacher,
                     const dx_dataset *train, const dx_dataset *val,
                     const dx_tp_opts *o, int64_t salt, dx_diag *diag)
{
    memset(c, 0, sizeof *c);
    if (!path)
        return DX_OK;
    /* The run key: everything that decides the result. */
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_printf(&b, "%s|%lld|%zu|%zu|%zu|%zu|%.17g|%d|%s|%s|", kind,
                  (long long)salt, o->max_bootstrapped_demos,
                  o->max_labeled_demos, o->max_rounds, o->num_candidates,
                  o->metric_threshold, (int)o->metric.kind,
                  o->metric.field ? o->metric.field : "",
                  o->call.rollout_id ? o->call.rollout_id : "");
    /* Only when it changes the metric, so keys of runs without it (and
     * their checkpoints) stay what they were. */
    if (o->metric.kind == DX_METRIC_EXACT_MATCH && o->metric.frac > 0 &&
        o->metric.frac < 1)
        dx__sb_printf(&b, "frac=%.17g|", o->metric.frac);
    if (dx__metric_is_judged(&o->metric))
        dx__sb_printf(&b, "judge=%s|%d|%.17g|%s|%s|",
                      o->metric.question_field ? o->metric.question_field : "",
                      (int)o->metric.decompositional, o->metric.threshold,
                      o->metric.judge_lm_name ? o->metric.judge_lm_name : "",
                      o->metric.passages_field ? o->metric.passages_field : "");
    cJSON *st = dx_module_dump_state(student);
    if (st)
        dx__pyjson_dump(&b, st, -1);
    cJSON_Delete(st);
    if (teacher) {
        st = dx_module_dump_state(teacher);
        if (st)
            dx__pyjson_dump(&b, st, -1);
        cJSON_Delete(st);
    }
    const dx_dataset *sets[2] = {train, val};
    for (int k = 0; k < 2; k++) {
        dx__sb_puts(&b, "|");
        for (size_t i = 0; sets[k] && i < sets[k]->n; i++) {
            char *j = NULL;
            if (dx_example_to_json(sets[k]->items[i], &j) == DX_OK) {
                dx__sb_puts(&b, j);
                dx__sb_putc(&b, '\n');
            }
            dx_free(j);
        }
    }
    const char *text = dx__sb_cstr(&b);
    unsigned char md[32];
    unsigned int mdl = 0;
    bool ok = text && EVP_Digest(text, b.len, md, &mdl, EVP_sha256(), NULL);
    dx__sb_free(&b);
    if (!ok)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "checkpoint: out of memory");
    for (int i = 0; i < 32; i++)
        snprintf(c->run + 2 * i, 3, "%02x", md[i]);
    /* The busy timeout first: another process may hold the file (a run
     * killed mid-write leaves its write-ahead log for the next opener to
     * recover, a reader may be in it), and the set-up below writes. */
    if (sqlite3_open(path, &c->db) != SQLITE_OK ||
        sqlite3_busy_timeout(c->db, 5000) != SQLITE_OK ||
        sqlite3_exec(c->db,
                     "PRAGMA journal_mode=WAL;"
                     "CREATE TABLE IF NOT EXISTS dspex_trials ("
                     " run TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT "
                     "NULL, PRIMARY KEY (run, key));",
                     NULL, NULL, NULL) != SQLITE_OK) {
        int rc = dx_diag_set(diag, DX_EIO, 0, 0, "checkpoint %s: %s", path,
                             c->db ? sqlite3_errmsg(c->db) : "cannot open");
        sqlite3_close(c->db);
        c->db = NULL;
        return rc;
    }
    return DX_OK;
}

void dx__tp_ckpt_close(dx__tp_ckpt *c)
{
    if (c->db)
        sqlite3_close(c->db);
    c->db = NULL;
}

/* The stored value of key, parsed; NULL when absent. */
cJSON *dx__tp_ckpt_get(dx__tp_ckpt *c, const char *key)
{
    if (!c->db)
        return NULL;
    sqlite3_stmt *st = NULL;
    cJSON *v = NULL;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT value FROM dspex_trials WHERE run=? AND "
                           "key=?",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, c->run, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(st, 0);
            int n = sqlite3_column_bytes(st, 0);
            if (t)
                v = dx__json_parse(t, (size_t)n, NULL, NULL);
        }
    }
    sqlite3_finalize(st);
    return v;
}

void dx__tp_ckpt_put(dx__tp_ckpt *c, const char *key, const cJSON *value)
{
    if (!c->db)
        return;
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, value, -1);
    const char *text = dx__sb_cstr(&b);
    sqlite3_stmt *st = NULL;
    if (text && sqlite3_prepare_v2(c->db,
                                   "INSERT OR REPLACE INTO dspex_trials "
                                   "(run, key, value) VALUES (?, ?, ?)",
                                   -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, c->run, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, text, (int)b.len, SQLITE_STATIC);
        sqlite3_step(st); /* a lost checkpoint only costs a rerun */
    }
    sqlite3_finalize(st);
    dx__sb_free(&b);
}

/* ---- one teacher run ---------------------------------------------------- */

/* What every teacher run reads besides its own example: the teacher and
 * the options, with copies of the options' strings. Reference counted —
 * the coordinator and each run hold one — so a coordinator killed
 * mid-bootstrap (an optimizer stopped by its supervisor, a KNNFewShot
 * example past its deadline) can free its own state while a run it has
 * just killed is still reading: a kill takes effect only when the run
 * next yields. What the options point to beyond these strings (the
 * metric's ud, the price table) is the caller's, as for any call. */
enum { BS_LM_NAME, BS_ROLLOUT, BS_FIELD, BS_PASSAGES, BS_METRIC_NAME, BS_N };

typedef struct boot_shared {
    atomic_int refs;
    dx_module *teacher;
    dx_tp_opts opts; /* its strings point into strs */
    char *strs[BS_N];
} boot_shared;

static void boot_shared_unref(boot_shared *sh)
{
    if (!sh ||
        atomic_fetch_sub_explicit(&sh->refs, 1, memory_order_acq_rel) != 1)
        return;
    dx_module_free(sh->teacher);
    for (int i = 0; i < BS_N; i++)
        dx_free(sh->strs[i]);
    dx_free(sh);
}

/* A copy of s in strs[i] (NULL stays NULL); false on OOM. */
static bool own_string(boot_shared *sh, int i, const char **s)
{
    if (!*s)
        return true;
    *s = sh->strs[i] = dx_strdup(*s);
    return *s != NULL;
}

/* Shares teacher (taken in every case) and a copy of o; NULL on OOM. */
static boot_shared *boot_shared_new(dx_module *teacher, const dx_tp_opts *o)
{
    boot_shared *sh = dx_calloc(1, sizeof *sh);
    if (!sh) {
        dx_module_free(teacher);
        return NULL;
    }
    atomic_init(&sh->refs, 1);
    sh->teacher = teacher;
    sh->opts = *o;
    /* The runs write neither. */
    sh->opts.checkpoint_path = NULL;
    sh->opts.report_path = NULL;
    dx_tp_opts *c = &sh->opts;
    if (!own_string(sh, BS_LM_NAME, &c->call.lm_name) ||
        !own_string(sh, BS_ROLLOUT, &c->call.rollout_id) ||
        !own_string(sh, BS_FIELD, &c->metric.field) ||
        !own_string(sh, BS_PASSAGES, &c->metric.passages_field) ||
        !own_string(sh, BS_METRIC_NAME, &c->metric.name)) {
        boot_shared_unref(sh);
        return NULL;
    }
    return sh;
}

typedef struct boot_slot {
    atomic_int refs;
    atomic_bool done;
    boot_shared *shared; /* one reference, the slot's */
    dx_example *example; /* the run's own copy */
    int64_t deadline_ms;
    /* out */
    bool success;
    int rc;
    char error[DX_DIAG_MAX];
    cJSON *demos; /* {"<path>": demo} when successful */
    dx_usage_acc usage;
    /* The run's working state, owned by the slot (not the process's
     * stack), so a metric that crashes leaks nothing. */
    dx_module *teacher_copy;
    dx_named_predictor *preds;
    dx_example *inputs;
    dx_trace trace;
    dx_prediction *pred;
    /* coordinator */
    size_t index;
    dx_pid pid;
    dx_ref mon;
    bool kill_sent; /* killed at its deadline; its DOWN is on the way */
} boot_slot;

/* How long the bootstrap may wait for a DOWN: until the earliest deadline
 * of a run not killed yet (DX_INFINITY: none), or the next look at the
 * cancellation counter when no wake-up can come for it (!watched). It
 * sleeps on nothing else, so at low concurrency a run costs no wake-ups
 * beyond its own. */
static int64_t until_next_deadline(boot_slot *const *flight, size_t slots,
                                   bool watched)
{
    int64_t now = dx_now_ms(),
            wait = watched ? DX_INFINITY : DX__CANCEL_POLL_MS;
    for (size_t p = 0; p < slots; p++) {
        if (!flight[p] || flight[p]->kill_sent)
            continue;
        int64_t left = flight[p]->deadline_ms - now;
        if (left < 0)
            left = 0;
        if (wait == DX_INFINITY || left < wait)
            wait = left;
    }
    return wait;
}

/* The runs in flight, for the receive: it takes only their DOWNs. The
 * bootstrap runs in the caller's process when called from one, whose other
 * messages (a DOWN of its own monitor included) stay in its mailbox. */
typedef struct run_slots {
    boot_slot *const *flight;
    size_t slots;
    dx_ref cancel_ref; /* and the cancellation's wake-up (eval_int.h) */
} run_slots;

static bool is_a_runs_down(const dx_msg *m, void *ud)
{
    const run_slots *r = ud;
    if (m->tag == DX__TAG_CANCEL_WAKE)
        return dx_ref_eq(m->ref, r->cancel_ref);
    if (m->tag != DX_TAG_DOWN)
        return false;
    for (size_t p = 0; p < r->slots; p++)
        if (r->flight[p] && dx_ref_eq(r->flight[p]->mon, m->ref))
            return true;
    return false;
}

/* Wait for one of the runs in flight to end (its DOWN), the next deadline
 * or a cancellation's wake-up. The slot of the run that ended, or SIZE_MAX
 * when none did. */
static size_t await_run(boot_slot *const *flight, size_t slots,
                        const dx__cancel_watch *watch)
{
    run_slots runs = {flight, slots, dx__cancel_watch_ref(watch)};
    dx_match match = {.pred = is_a_runs_down, .ud = &runs};
    dx_msg *m = NULL;
    size_t ended = SIZE_MAX;
    if (dx_receive(&match, until_next_deadline(flight, slots, watch != NULL),
                   &m) == DX_OK &&
        m) {
        /* A wake-up comes from no pid and matches no run. */
        for (size_t p = 0; p < slots && ended == SIZE_MAX; p++)
            if (flight[p] && dx_pid_eq(flight[p]->pid, m->from))
                ended = p;
        dx_msg_free(m);
    }
    return ended;
}

static void kill_run(boot_slot *s)
{
    if (!s->kill_sent) {
        dx_kill(s->pid);
        s->kill_sent = true;
    }
}

/* Kill the runs past their deadline, once each. */
static void kill_overdue(boot_slot *const *flight, size_t slots)
{
    int64_t now = dx_now_ms();
    for (size_t p = 0; p < slots; p++)
        if (flight[p] && now >= flight[p]->deadline_ms)
            kill_run(flight[p]);
}

static void boot_unref(void *arg)
{
    boot_slot *s = arg;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    cJSON_Delete(s->demos);
    dx_prediction_free(s->pred);
    dx_trace_free(&s->trace);
    dx_example_free(s->inputs);
    dx_free(s->preds);
    dx_module_free(s->teacher_copy);
    dx_example_free(s->example);
    boot_shared_unref(s->shared);
    dx_free(s);
}

/* A demo from a trace step: augmented, then the step's inputs, then its
 * outputs (DSPy's Example(augmented=True, **inputs, **outputs)). */
static cJSON *step_demo(const dx_trace_step *st)
{
    cJSON *d = cJSON_CreateObject();
    if (!d || !cJSON_AddTrueToObject(d, "augmented")) {
        cJSON_Delete(d);
        return NULL;
    }
    const dx_example *parts[2] = {st->inputs, st->outputs};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < dx_example_len(parts[k]); i++) {
            const char *key = dx_example_key(parts[k], i);
            cJSON *v = cJSON_Duplicate(dx_example_value(parts[k], i), true);
            if (!v) {
                cJSON_Delete(d);
                return NULL;
            }
            cJSON_DeleteItemFromObjectCaseSensitive(d, key);
            cJSON_AddItemToObject(d, key, v);
        }
    return d;
}

static void boot_proc(void *arg)
{
    boot_slot *s = arg;
    dx_set_label("dspex.bootstrap.example");
    const dx_tp_opts *o = &s->shared->opts;
    dx_usage_acc_init(&s->usage, "example");
    /* The teacher, without the example itself among its demos. */
    dx_module *t = s->teacher_copy = dx_module_copy(s->shared->teacher);
    size_t np = 0;
    if (!t || dx_module_predictors(t, &s->preds, &np) != DX_OK ||
        dx_example_inputs(s->example, &s->inputs, NULL) != DX_OK) {
        s->rc = DX_ENOMEM;
        snprintf(s->error, sizeof s->error, "cannot prepare the teacher run");
        goto out;
    }
    for (size_t p = 0; p < np; p++) {
        size_t nd = dx_predict_n_demos(s->preds[p].predict);
        const dx_example **keep = dx_calloc(nd ? nd : 1, sizeof *keep);
        size_t nk = 0;
        for (size_t i = 0; keep && i < nd; i++) {
            const dx_example *d = dx_predict_demo(s->preds[p].predict, i);
            if (!dx_example_equal(d, s->example))
                keep[nk++] = d;
        }
        if (keep && nk != nd) {
            /* set_demos copies, so keep's pointers stay valid until then */
            dx_example **copies = dx_calloc(nk ? nk : 1, sizeof *copies);
            for (size_t i = 0; copies && i < nk; i++)
                copies[i] = dx_example_copy(keep[i]);
            if (copies)
                dx_predict_set_demos(s->preds[p].predict,
                                     (const dx_example *const *)copies, nk);
            for (size_t i = 0; copies && i < nk; i++)
                dx_example_free(copies[i]);
            dx_free(copies);
        }
        dx_free(keep);
    }
    for (size_t round = 0; round < o->max_rounds && !s->success; round++) {
        dx_call_opts call = o->call;
        char ns[64];
        if (round > 0) {
            /* A fresh sample: another cache namespace, temperature 1.0. */
            snprintf(ns, sizeof ns, "%s%sbootstrap-round-%zu",
                     call.rollout_id ? call.rollout_id : "",
                     call.rollout_id ? "/" : "", round);
            call.rollout_id = ns;
            for (size_t p = 0; p < np; p++) {
                dx_predict_opts po = *dx_predict_get_opts(s->preds[p].predict);
                po.has_temperature = true;
                po.temperature = 1.0;
                dx_predict_set_opts(s->preds[p].predict, &po);
            }
        }
        dx_trace_free(&s->trace);
        dx_prediction_free(s->pred);
        s->pred = NULL;
        dx_diag d = {0};
        dx_usage_acc run_usage;
        s->rc = dx__run_program(t, s->inputs, &call, s->deadline_ms, &s->pred,
                                &s->trace, &d, &run_usage);
        dx_usage_acc_merge(&s->usage, &run_usage);
        if (s->rc != DX_OK) {
            snprintf(s->error, sizeof s->error, "%s", d.msg);
            break;
        }
        const dx_trace *tr = &s->trace;
        double score;
        if (dx__metric_is_judged(&o->metric)) {
            score = dx__metric_judge(&o->metric, s->example, s->pred, &call,
                                     s->deadline_ms, &s->usage, &s->rc, &d);
            if (s->rc != DX_OK) {
                snprintf(s->error, sizeof s->error, "%s", d.msg);
                break;
            }
        } else {
            score = dx_metric_score(&o->metric, s->example, s->pred, tr);
        }
        /* DSPy's judged metrics pass a demo at their threshold (0.66)
         * when given a trace; the optimizer's own threshold wins. */
        double mark = o->metric_threshold > 0
                          ? o->metric_threshold
                          : dx__metric_pass_mark(&o->metric);
        bool pass = mark > 0 ? score >= mark : score > 0;
        if (pass) {
            s->demos = cJSON_CreateObject();
            /* The last step of each predictor (DSPy picks one at random
             * when a predictor ran several times). */
            for (size_t i = 0; s->demos && i < tr->n; i++) {
                cJSON *demo = step_demo(&tr->steps[i]);
                if (!demo)
                    continue;
                cJSON_DeleteItemFromObjectCaseSensitive(s->demos,
                                                        tr->steps[i].path);
                cJSON_AddItemToObject(s->demos, tr->steps[i].path, demo);
            }
            s->success = s->demos != NULL;
        }
    }
out:
    atomic_store_explicit(&s->done, true, memory_order_release);
}

/* ---- BootstrapFewShot ---------------------------------------------------- */

typedef struct ex_result {
    bool known; /* finished (or from the checkpoint) */
    bool success;
    int rc;
    cJSON *demos; /* owned */
    dx_usage_acc usage;
    bool from_checkpoint;
    char *error; /* why a run failed (owned; NULL when it did not) */
} ex_result;

typedef struct boot_job {
    const dx_module *student;
    const dx_module *teacher_in;
    const dx_dataset *train;
    dx_tp_opts o;
    int64_t salt; /* random search candidate seed, for the checkpoint key */
    dx_tp_result *res;
    int rc;
    dx_diag diag;
} boot_job;

static int make_teacher(boot_job *j, dx_module **out)
{
    if (j->teacher_in) {
        *out = dx_module_copy(j->teacher_in);
        return *out ? DX_OK : DX_ENOMEM;
    }
    if (j->o.max_labeled_demos == 0) {
        *out = dx_module_copy(j->student);
        return *out ? DX_OK : DX_ENOMEM;
    }
    return dx_labeled_fewshot(j->student, j->train, j->o.max_labeled_demos,
                              true, out);
}

static bool same_structure(const dx_module *a, const dx_module *b)
{
    dx_named_predictor *pa = NULL, *pb = NULL;
    size_t na = 0, nb = 0;
    bool same = dx_module_predictors(a, &pa, &na) == DX_OK &&
                dx_module_predictors(b, &pb, &nb) == DX_OK && na == nb;
    for (size_t i = 0; same && i < na; i++)
        same = strcmp(pa[i].path, pb[i].path) == 0;
    dx_free(pa);
    dx_free(pb);
    return same;
}

/* The coordinator's own state, on the heap and tied to its process. */
typedef struct boot_coord {
    boot_shared *shared; /* the coordinator's reference */
    boot_slot **flight;  /* [slots]; NULL where no run is */
    size_t slots;
    ex_result *ex; /* [n], by trainset index */
    size_t n;
    dx__tp_ckpt ck;
} boot_coord;

static void boot_coord_free(boot_coord *bc)
{
    for (size_t i = 0; bc->ex && i < bc->n; i++) {
        cJSON_Delete(bc->ex[i].demos);
        dx_free(bc->ex[i].error);
    }
    dx_free(bc->ex);
    dx_free(bc->flight);
    boot_shared_unref(bc->shared);
    dx__tp_ckpt_close(&bc->ck);
    dx_free(bc);
}

/* The coordinator's process ended mid-bootstrap (an optimizer stopped by
 * its supervisor, a KNNFewShot example past its deadline). Runs as it
 * ends, outside any process: it kills the runs in flight, which would
 * otherwise run on to their deadlines with nobody to read them, drops its
 * references to them and frees its state. A run still reading until its
 * kill lands holds its own references. */
static void boot_coord_killed(void *obj)
{
    boot_coord *bc = obj;
    for (size_t p = 0; bc->flight && p < bc->slots; p++)
        if (bc->flight[p]) {
            dx_kill(bc->flight[p]->pid);
            boot_unref(bc->flight[p]);
        }
    boot_coord_free(bc);
}

static void bootstrap_run(void *arg)
{
    boot_job *j = arg;
    const dx_tp_opts *o = &j->o;
    const dx_dataset *train = j->train;
    size_t n = train->n;
    dx_module *teacher = NULL;
    boot_coord *bc = dx_calloc(1, sizeof *bc);
    if (!bc) {
        j->rc = dx_diag_set(&j->diag, DX_ENOMEM, 0, 0, "out of memory");
        return;
    }
    dx_ptie *tie = dx_ptie_new(bc, boot_coord_killed);
    bc->n = n;
    bc->slots = o->concurrency;
    ex_result *ex = bc->ex = dx_calloc(n ? n : 1, sizeof *ex);
    boot_slot **flight = bc->flight = dx_calloc(bc->slots, sizeof *flight);
    dx__tp_ckpt *ck = &bc->ck;
    j->rc = dx__tp_ckpt_open(ck, o->checkpoint_path, "bootstrap", j->student,
                             j->teacher_in, train, NULL, o, j->salt, &j->diag);
    if (j->rc != DX_OK)
        goto done;
    if (!ex || !flight) {
        j->rc = dx_diag_set(&j->diag, DX_ENOMEM, 0, 0, "out of memory");
        goto done;
    }
    j->rc = make_teacher(j, &teacher);
    if (j->rc != DX_OK) {
        dx_diag_set(&j->diag, j->rc, 0, 0,
                    "bootstrap: cannot make the teacher");
        goto done;
    }
    if (!same_structure(j->student, teacher)) {
        dx_module_free(teacher);
        j->rc = dx_diag_set(&j->diag, DX_EINVAL, 0, 0,
                            "bootstrap: the student and the teacher must have "
                            "the same predictors");
        goto done;
    }
    bc->shared = boot_shared_new(teacher, o);
    if (!bc->shared) {
        j->rc = dx_diag_set(&j->diag, DX_ENOMEM, 0, 0, "out of memory");
        goto done;
    }

    int64_t t0 = dx_now_ms();
    size_t next = 0, accept = 0, in_flight = 0, bootstrapped = 0, errors = 0;
    /* LM calls of the runs finished so far (the trials' usage reaches the
     * result only when accepted, in order). */
    dx_usage_acc live;
    dx_usage_acc_init(&live, "live");
    bool stop = false;
    /* A cancellation wakes the loop below while it waits for its runs. */
    dx__cancel_watch *watch = dx__cancel_watch_start();
    while (!stop && (accept < n)) {
        if (dx__tp_check_cancel(o, &j->diag) != DX_OK) {
            j->rc = DX_ECANCELED;
            break;
        }
        /* Start runs for the next examples (window ahead of `accept`).
         * blocked: the budget or a failed start stopped it, not the
         * window or the concurrency. */
        bool blocked = false;
        while (next < n && in_flight < o->concurrency &&
               next < accept + o->concurrency * 2) {
            char key[48];
            snprintf(key, sizeof key, "example/%zu", next);
            cJSON *cv = dx__tp_ckpt_get(ck, key);
            if (cv) {
                ex[next].known = true;
                ex[next].from_checkpoint = true;
                ex[next].success =
                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cv, "ok"));
                ex[next].rc = (int)cJSON_GetNumberValue(
                    cJSON_GetObjectItemCaseSensitive(cv, "rc"));
                cJSON *d = cJSON_DetachItemFromObjectCaseSensitive(cv, "demos");
                ex[next].demos = d;
                dx_usage_acc_init(&ex[next].usage, "example");
                dx__tp_restore_usage(cv, &ex[next].usage);
                cJSON_Delete(cv);
                next++;
                continue;
            }
            if (dx__tp_over_budget(o, &live)) {
                blocked = true;
                break;
            }
            boot_slot *s = dx_calloc(1, sizeof *s);
            if (!s) {
                blocked = true;
                break;
            }
            atomic_init(&s->refs, 2);
            atomic_init(&s->done, false);
            s->example = dx_example_copy(train->items[next]);
            if (!s->example) {
                dx_free(s);
                blocked = true;
                break;
            }
            atomic_fetch_add_explicit(&bc->shared->refs, 1,
                                      memory_order_relaxed);
            s->shared = bc->shared;
            s->index = next;
            s->deadline_ms = dx_now_ms() + o->example_timeout_ms;
            /* Killed at its deadline by this process, or by the runtime
             * a little later if the teacher holds the scheduler they
             * share in code that never calls the runtime. */
            dx_spawn_opts so = {
                .monitor = true,
                .arg_free = boot_unref,
                .kill_after_ms = dx__runtime_kill_after(o->example_timeout_ms)};
            if (dx_spawn_opt(boot_proc, s, &so, &s->pid, &s->mon) != DX_OK) {
                atomic_store(&s->refs, 1);
                boot_unref(s);
                blocked = true;
                break;
            }
            for (size_t p = 0; p < o->concurrency; p++)
                if (!flight[p]) {
                    flight[p] = s;
                    break;
                }
            in_flight++;
            dx__tp_emit("optimize.trial", DX_TELEMETRY_START, "bootstrap",
                        (int64_t)next, 0);
            next++;
        }
        /* Accept finished examples in trainset order. */
        while (accept < n && ex[accept].known) {
            ex_result *r = &ex[accept];
            dx_tp_trial t = {.id = (int64_t)accept,
                             .score = r->success ? 100 : 0,
                             .from_checkpoint = r->from_checkpoint,
                             .usage = r->usage};
            snprintf(t.kind, sizeof t.kind, "bootstrap_example");
            dx__tp_add_trial(j->res, &t);
            if (r->success) {
                bootstrapped++;
            } else if (r->rc != DX_OK && ++errors >= o->max_errors) {
                j->rc = dx_diag_set(&j->diag, DX_ELIMIT, 0, 0,
                                    "bootstrap: %zu teacher runs failed "
                                    "(max_errors %zu); the last: example "
                                    "%zu: %s: %s",
                                    errors, o->max_errors, accept,
                                    dx_err_name(r->rc),
                                    r->error ? r->error : "no reason given");
                stop = true;
                break;
            }
            accept++;
            if (bootstrapped >= o->max_bootstrapped_demos) {
                stop = true;
                break;
            }
        }
        if (stop || accept >= n)
            break;
        if (in_flight == 0) {
            /* Nothing running and the next example to accept is not
             * known. If the budget or a failed start stopped the starting,
             * or the example was started (it cannot be unknown then), stop
             * here. If only the window did — the run that ended last was
             * the one `accept` waited for, and the window had been full
             * behind it — the next turn starts it, now that `accept` has
             * moved on. (Stopping there too ended a bootstrap early, with
             * fewer demos, whenever the oldest run finished last.) */
            if (accept < n && !ex[accept].known && (blocked || next > accept))
                break;
            continue;
        }
        size_t ended = await_run(flight, o->concurrency, watch);
        if (ended != SIZE_MAX) {
            boot_slot *s = flight[ended];
            ex_result *r = &ex[s->index];
            r->known = true;
            dx_usage_acc_init(&r->usage, "example");
            if (atomic_load_explicit(&s->done, memory_order_acquire)) {
                r->success = s->success;
                r->rc = s->rc;
                r->demos = s->demos;
                s->demos = NULL;
                r->usage = s->usage;
                if (r->rc != DX_OK && s->error[0])
                    r->error = dx_strdup(s->error);
            } else {
                r->rc = DX_EDOWN; /* crashed or killed at its deadline */
                r->error = dx_strdup("the teacher run's process died or "
                                     "passed its deadline");
            }
            dx_usage_acc_merge(&live, &r->usage);
            /* Only an outcome is checkpointed — demos, or the metric's
             * no. A run that failed (an LM outage, a crash, its
             * deadline) is run again by a resume rather than restored
             * as a failure. */
            cJSON *cv = r->rc == DX_OK ? cJSON_CreateObject() : NULL;
            if (cv) {
                cJSON_AddBoolToObject(cv, "ok", r->success);
                cJSON_AddNumberToObject(cv, "rc", r->rc);
                dx__tp_record(cv, &r->usage, NULL);
                if (r->demos)
                    cJSON_AddItemToObject(cv, "demos",
                                          cJSON_Duplicate(r->demos, true));
                char key[48];
                snprintf(key, sizeof key, "example/%zu", s->index);
                dx__tp_ckpt_put(ck, key, cv);
                cJSON_Delete(cv);
            }
            dx__tp_emit("optimize.trial", DX_TELEMETRY_STOP, "bootstrap",
                        (int64_t)s->index, r->success ? 100 : 0);
            flight[ended] = NULL;
            in_flight--;
            boot_unref(s);
        }
        kill_overdue(flight, o->concurrency);
    }
    /* Runs past the stopping point are not needed, but they are let finish
     * (their LM calls are made already, and their usage counts); their
     * deadlines still hold. Cancelled, the optimizer ends them now, as a
     * deadline would: what they hold is tied to their processes. */
    if (j->rc == DX_ECANCELED)
        for (size_t p = 0; p < o->concurrency; p++)
            if (flight[p])
                kill_run(flight[p]);
    while (in_flight > 0) {
        size_t ended = await_run(flight, o->concurrency, watch);
        if (ended != SIZE_MAX) {
            boot_unref(flight[ended]);
            flight[ended] = NULL;
            in_flight--;
        }
        kill_overdue(flight, o->concurrency);
    }
    dx__cancel_watch_stop(watch);
    if (j->rc != DX_OK)
        goto done;

    /* DSPy's _train: demos per predictor = bootstrapped traces, then raw
     * examples sampled from the ones not bootstrapped (shuffled with
     * Random(0)). */
    {
        dx_module *prog = dx_module_reset_copy(j->student);
        dx_named_predictor *preds = NULL;
        size_t np = 0;
        size_t nval = 0;
        const dx_example **val = dx_calloc(n ? n : 1, sizeof *val);
        if (!prog || !val || dx_module_predictors(prog, &preds, &np) != DX_OK) {
            j->rc = dx_diag_set(&j->diag, DX_ENOMEM, 0, 0, "out of memory");
            dx_module_free(prog);
            dx_free(val);
            goto done;
        }
        for (size_t i = 0; i < n; i++)
            /* Bootstrapped = accepted (index < accept) and successful;
             * every other example, tried or not, is raw material. */
            if (!(i < accept && ex[i].success))
                val[nval++] = train->items[i];
        dx__pyrand rng;
        dx__pyrand_seed(&rng, 0);
        dx__pyrand_shuffle_n(&rng, (void *)val, nval, sizeof *val);
        dx__pyrand_seed(&rng, 0);
        for (size_t p = 0; p < np && j->rc == DX_OK; p++) {
            size_t nb = 0;
            dx_example **demos =
                dx_calloc(o->max_bootstrapped_demos + nval + 1, sizeof *demos);
            for (size_t i = 0;
                 demos && i < accept && nb < o->max_bootstrapped_demos; i++) {
                if (!ex[i].success)
                    continue;
                const cJSON *d = cJSON_GetObjectItemCaseSensitive(
                    ex[i].demos, preds[p].path);
                if (!d)
                    continue;
                char *text = cJSON_PrintUnformatted(d);
                if (text && dx_example_from_json(text, strlen(text), &demos[nb],
                                                 NULL) == DX_OK)
                    nb++;
                cJSON_free(text);
            }
            size_t want =
                o->max_labeled_demos > nb ? o->max_labeled_demos - nb : 0;
            size_t take = want < nval ? want : nval;
            size_t *idx = dx_calloc(take ? take : 1, sizeof *idx);
            if (demos && idx &&
                dx__pyrand_sample(&rng, nval, take, idx) == DX_OK) {
                /* DSPy narrows the raw pool to the sample for the next
                 * predictor. */
                const dx_example **narrowed =
                    dx_calloc(take ? take : 1, sizeof *narrowed);
                for (size_t i = 0; narrowed && i < take; i++) {
                    narrowed[i] = val[idx[i]];
                    demos[nb + i] = dx_example_copy(val[idx[i]]);
                }
                if (narrowed) {
                    memcpy(val, narrowed, take * sizeof *val);
                    nval = take;
                }
                dx_free(narrowed);
                j->rc = dx_predict_set_demos(preds[p].predict,
                                             (const dx_example *const *)demos,
                                             nb + take);
            } else {
                j->rc = DX_ENOMEM;
            }
            for (size_t i = 0; demos && i < nb + take; i++)
                dx_example_free(demos[i]);
            dx_free(demos);
            dx_free(idx);
        }
        dx_free(preds);
        dx_free(val);
        if (j->rc != DX_OK) {
            dx_module_free(prog);
            dx_diag_set(&j->diag, j->rc, 0, 0, "bootstrap: out of memory");
            goto done;
        }
        j->res->program = prog;
        j->res->n_bootstrapped = bootstrapped;
        j->res->wall_s = (double)(dx_now_ms() - t0) / 1000.0;
    }
done:
    dx_ptie_cut(tie);
    boot_coord_free(bc);
}

int dx__tp_check_opts(const dx_module *student, const dx_dataset *train,
                      const dx_tp_opts *opts, dx_tp_result **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!student || !train || !opts || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "optimize: NULL student, trainset, options or out");
    if (opts->metric.kind == DX_METRIC_CUSTOM && !opts->metric.fn &&
        !opts->metric.pass)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "optimize: a custom metric needs a function");
    if (!dx_runtime_running())
        return dx_diag_set(diag, DX_ESTATE, 0, 0,
                           "optimize: the runtime is not running");
    for (size_t i = 0; i < train->n; i++)
        if (!dx_example_has_inputs(train->items[i]))
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "optimize: trainset example %zu has no input "
                               "designation",
                               i);
    dx__pyjson_init();
    return DX_OK;
}

static void boot_job_free(void *obj)
{
    boot_job *j = obj;
    dx_tp_result_free(j->res);
    dx_free(j);
}

static int bootstrap_with(const dx_module *student, const dx_module *teacher,
                          const dx_dataset *train, const dx_tp_opts *o,
                          int64_t salt, dx_tp_result **out, dx_diag *diag)
{
    boot_job *j = dx_calloc(1, sizeof *j);
    dx_tp_result *res = dx__tp_result_new();
    if (!j || !res) {
        dx_free(j);
        dx_tp_result_free(res);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    j->student = student;
    j->teacher_in = teacher;
    j->train = train;
    j->o = *o;
    j->salt = salt;
    j->res = res;
    /* Called from a process, the bootstrap runs in it, and a kill there
     * (see boot_coord_killed) takes the job with it. */
    dx_ptie *tie = dx_ptie_new(j, boot_job_free);
    int rc = dx__in_process(bootstrap_run, j);
    dx_ptie_cut(tie);
    if (rc == DX_OK)
        rc = j->rc;
    else
        dx_diag_set(&j->diag, rc, 0, 0, "bootstrap: the optimizer died");
    if (rc != DX_OK) {
        if (diag)
            *diag = j->diag;
        dx_tp_result_free(res);
    } else {
        *out = res;
    }
    dx_free(j);
    return rc;
}

int dx_bootstrap_fewshot(const dx_module *student, const dx_module *teacher,
                         const dx_dataset *trainset, const dx_tp_opts *opts,
                         dx_tp_result **out, dx_diag *diag)
{
    int rc = dx__tp_check_opts(student, trainset, opts, out, diag);
    if (rc != DX_OK)
        return rc;
    dx_tp_opts o = dx__tp_normalized(opts);
    rc = bootstrap_with(student, teacher, trainset, &o, INT64_MIN, out, diag);
    if (rc == DX_OK && o.report_path)
        dx_tp_write_report(*out, "BootstrapFewShot", o.report_path, NULL);
    return rc;
}

/* ---- random search ------------------------------------------------------ */

/* One row of an evaluation as a trial record keeps it: the example's
 * index, its score and, for a failed example, the error. */
static cJSON *row_json(const dx_eval_row *row)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "i", (double)row->index);
    cJSON_AddNumberToObject(o, "score", row->score);
    if (row->error_msg)
        cJSON_AddStringToObject(o, "error", row->error_msg);
    return o;
}

/* ---- candidate evaluations ------------------------------------------------ */

int dx__tp_evaluate_rows(const dx_module *prog, const dx_dataset *val,
                         const dx_tp_opts *o, const dx__eval_keep *keep,
                         double *score, dx_usage_acc *usage, cJSON **rows,
                         dx_diag *diag)
{
    dx_eval_opts eo = {
        .metric = o->metric,
        .concurrency = o->concurrency,
        .max_errors = 0,
        .example_timeout_ms = o->example_timeout_ms,
        .call = o->call,
        .progress = o->progress,
        .progress_out = o->progress_out,
    };
    dx_eval_result *r = NULL;
    int rc = dx__tp_check_cancel(o, diag);
    if (rc == DX_OK)
        rc = dx__evaluate_kept(prog, val, &eo, keep, &r, diag);
    if (rc != DX_OK)
        return rc;
    if (r->cancelled) {
        /* What finished is no score of the candidate. */
        dx_eval_result_free(r);
        return cancelled(diag);
    }
    *score = r->score;
    dx_usage_acc_merge(usage, &r->usage);
    if (rows) {
        *rows = cJSON_CreateArray();
        for (size_t i = 0; *rows && i < r->n; i++)
            if (r->rows[i].done)
                cJSON_AddItemToArray(*rows, row_json(&r->rows[i]));
    }
    dx_eval_result_free(r);
    return DX_OK;
}

/* A candidate evaluator's row as a trial record keeps it (as row_json). */
static cJSON *hook_row_json(size_t i, const dx_tp_eval_row *row)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "i", (double)i);
    cJSON_AddNumberToObject(o, "score", row->score);
    if (row->error_msg)
        cJSON_AddStringToObject(o, "error", row->error_msg);
    return o;
}

int dx__tp_hook_eval(const dx_module *const *progs, size_t n,
                     const dx_dataset *val, const size_t *idx, size_t n_idx,
                     const dx_tp_opts *o, double *scores, dx_usage_acc *usages,
                     cJSON **rows, dx_diag *diag)
{
    size_t *all = NULL;
    if (!idx) {
        n_idx = val->n;
        all = dx_calloc(n_idx ? n_idx : 1, sizeof *all);
        for (size_t i = 0; all && i < n_idx; i++)
            all[i] = i;
        idx = all;
    }
    dx_tp_eval_row *r =
        dx_calloc((n * n_idx) > 0 ? n * n_idx : 1, sizeof(dx_tp_eval_row));
    int rc = idx && r ? DX_OK : DX_ENOMEM;
    if (rc == DX_OK)
        rc = dx__tp_check_cancel(o, diag);
    if (rc == DX_OK)
        rc = o->evaluator->fn(o->evaluator->ud, progs, n, val, idx, n_idx, o, r,
                              diag);
    for (size_t k = 0; rc == DX_OK && k < n * n_idx; k++)
        if (!r[k].done)
            rc = dx_diag_set(diag, DX_ESTATE, 0, 0,
                             "candidate evaluator: example %zu of candidate "
                             "%zu not scored",
                             k % n_idx, k / n_idx);
    for (size_t k = 0; rc == DX_OK && k < n; k++) {
        /* DSPy's score: 100 * sum / n, rounded to 2 decimals. */
        double sum = 0;
        if (rows)
            rows[k] = cJSON_CreateArray();
        for (size_t i = 0; i < n_idx; i++) {
            const dx_tp_eval_row *row = &r[k * n_idx + i];
            sum += row->score;
            dx_usage_acc_merge(&usages[k], &row->usage);
            if (rows && rows[k])
                cJSON_AddItemToArray(rows[k], hook_row_json(i, row));
        }
        scores[k] = n_idx ? round(10000.0 * sum / (double)n_idx) / 100.0 : 0;
    }
    for (size_t k = 0; r && k < n * n_idx; k++)
        dx_free(r[k].error_msg);
    dx_free(r);
    dx_free(all);
    if (rc == DX_ENOMEM)
        dx_diag_set(diag, rc, 0, 0, "out of memory");
    return rc;
}

int dx__tp_evaluate_idx(const dx_module *prog, const dx_dataset *val,
                        const size_t *idx, size_t n_idx, const dx_tp_opts *o,
                        const dx__eval_keep *keep, double *score,
                        dx_usage_acc *usage, cJSON **rows, dx_diag *diag)
{
    if (o->evaluator && o->evaluator->fn)
        return dx__tp_hook_eval(&prog, 1, val, idx, n_idx, o, score, usage,
                                rows, diag);
    if (!idx)
        return dx__tp_evaluate_rows(prog, val, o, keep, score, usage, rows,
                                    diag);
    /* A view of the chosen examples (borrowed), on the heap: the
     * evaluation reads it while this context may be a process whose stack
     * is copied out. Held (dx__held) across the evaluation: only its
     * coordinator, in this process, reads it, so a kill may free it. */
    dx__held *h = dx__held_new();
    if (!h)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    h->other[0].free_fn = h->other[1].free_fn = dx_free;
    dx_dataset *view = h->other[0].obj = dx_malloc(sizeof *view);
    dx_example **items = h->other[1].obj =
        dx_calloc(n_idx ? n_idx : 1, sizeof *items);
    if (!view || !items) {
        dx__held_free(h);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    for (size_t i = 0; i < n_idx; i++)
        items[i] = val->items[idx[i]];
    view->items = items;
    view->n = n_idx;
    int rc =
        dx__tp_evaluate_rows(prog, view, o, keep, score, usage, rows, diag);
    dx__held_free(h);
    return rc;
}

void dx__tp_record(cJSON *rec, const dx_usage_acc *u, cJSON *rows)
{
    if (!rec) {
        cJSON_Delete(rows);
        return;
    }
    cJSON *uj = cJSON_AddObjectToObject(rec, "usage");
    if (uj) {
        cJSON_AddNumberToObject(uj, "calls", (double)u->calls);
        cJSON_AddNumberToObject(uj, "cached_calls", (double)u->cached_calls);
        cJSON_AddNumberToObject(uj, "unpriced_calls",
                                (double)u->unpriced_calls);
        cJSON_AddNumberToObject(uj, "input_tokens", (double)u->input_tokens);
        cJSON_AddNumberToObject(uj, "output_tokens", (double)u->output_tokens);
        cJSON_AddNumberToObject(uj, "cached_tokens", (double)u->cached_tokens);
        cJSON_AddNumberToObject(uj, "cost_usd", u->cost_usd);
    }
    if (rows)
        cJSON_AddItemToObject(rec, "rows", rows);
}

void dx__tp_restore_usage(const cJSON *rec, dx_usage_acc *u)
{
    const cJSON *uj = cJSON_GetObjectItemCaseSensitive(rec, "usage");
    if (!cJSON_IsObject(uj))
        return;
#define GET(f)                                                                 \
    do {                                                                       \
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(uj, #f);             \
        int64_t w;                                                             \
        if (dx__json_whole(v, 0, 9007199254740992.0, &w))                      \
            u->f = w;                                                          \
    } while (0)
    GET(calls);
    GET(cached_calls);
    GET(unpriced_calls);
    GET(input_tokens);
    GET(output_tokens);
    GET(cached_tokens);
#undef GET
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(uj, "cost_usd");
    if (cJSON_IsNumber(c))
        u->cost_usd = c->valuedouble;
}

/* One random-search candidate on its way. */
typedef struct candidate {
    int64_t seed;
    dx_module *prog;
    dx_tp_trial t;
    cJSON *rows; /* per-example results, for the checkpoint */
    bool scored;
    int64_t started_ms;
} candidate;

/* Evaluating several candidates as one job: each row is a valset example
 * tagged with the candidate that runs it, so the examples of all
 * candidates share one concurrency budget and no candidate's last,
 * half-empty wave leaves it idle. */
#define CANDIDATE_KEY "dspex_candidate"

typedef struct multi {
    candidate *cands;
    size_t n;
} multi;

static int multi_forward(dx_ctx *ctx, const dx_module *self,
                         const dx_example *in, dx_prediction **out)
{
    const multi *mu = dx_module_ud(self);
    size_t k = (size_t)dx_example_get_num(in, CANDIDATE_KEY, -1);
    if (k >= mu->n)
        return dx_ctx_fail(ctx, DX_EINVAL, "random search: bad candidate");
    const char *drop[] = {CANDIDATE_KEY};
    dx__held *h = dx__held_new();
    dx_example *plain = h ? h->ex[0] = dx_example_without(in, drop, 1) : NULL;
    if (!plain) {
        dx__held_free(h);
        return dx_ctx_fail(ctx, DX_ENOMEM, "out of memory");
    }
    int rc = dx_forward(ctx, mu->cands[k].prog, plain, out);
    dx__held_free(h);
    return rc;
}

/* The candidates handed to opts' evaluator as one job. */
static int evaluate_with_hook(candidate *c, size_t n, const dx_dataset *val,
                              const dx_tp_opts *o, dx_diag *diag)
{
    const dx_module **progs = dx_calloc(n ? n : 1, sizeof *progs);
    double *scores = dx_calloc(n ? n : 1, sizeof *scores);
    dx_usage_acc *usages = dx_calloc(n ? n : 1, sizeof *usages);
    cJSON **rows = dx_calloc(n ? n : 1, sizeof *rows);
    int rc = progs && scores && usages && rows ? DX_OK : DX_ENOMEM;
    for (size_t k = 0; rc == DX_OK && k < n; k++)
        progs[k] = c[k].prog;
    if (rc == DX_OK)
        rc = dx__tp_hook_eval(progs, n, val, NULL, 0, o, scores, usages, rows,
                              diag);
    for (size_t k = 0; rc == DX_OK && k < n; k++) {
        c[k].t.score = scores[k];
        dx_usage_acc_merge(&c[k].t.usage, &usages[k]);
        c[k].rows = rows[k];
        rows[k] = NULL;
        c[k].scored = true;
    }
    for (size_t k = 0; rows && k < n; k++)
        cJSON_Delete(rows[k]);
    dx_free(progs);
    dx_free(scores);
    dx_free(usages);
    dx_free(rows);
    if (rc == DX_ENOMEM)
        dx_diag_set(diag, rc, 0, 0, "out of memory");
    return rc;
}

/* The joint job's module, its ud and its dataset, which its examples
 * read: on the heap (the example processes read them, and a process's
 * stack is copied out while it waits in dx_evaluate) and kept with the
 * optimizer's state (see keep), so that they outlive every example even
 * when the optimizer's process is killed meanwhile. */
typedef struct joint_job {
    multi *mu;
    dx_module *m;
    dx_dataset *rows;
} joint_job;

static void joint_job_clear(joint_job *jj)
{
    dx_dataset_free(jj->rows);
    dx_module_free(jj->m);
    dx_free(jj->mu);
    *jj = (joint_job){0};
}

static int evaluate_together(candidate *c, size_t n, const dx_dataset *val,
                             const dx_tp_opts *o, const dx__eval_keep *keep,
                             joint_job *jj, dx_diag *diag)
{
    if (o->evaluator && o->evaluator->fn)
        return evaluate_with_hook(c, n, val, o, diag);
    multi *mu = jj->mu = dx_malloc(sizeof *mu);
    if (mu != NULL)
        *mu = (multi){c, n};
    dx_module *m = jj->m =
        mu ? dx_module_new("Candidates", multi_forward, mu, NULL, NULL) : NULL;
    dx_dataset *rows = jj->rows = dx_dataset_new();
    int rc = m && rows ? DX_OK : DX_ENOMEM;
    for (size_t k = 0; rc == DX_OK && k < n; k++)
        for (size_t i = 0; rc == DX_OK && i < val->n; i++) {
            dx_example *ex = dx_example_copy(val->items[i]);
            rc = ex ? dx_example_set_int(ex, CANDIDATE_KEY, (int64_t)k)
                    : DX_ENOMEM;
            /* the candidate index is an input too */
            size_t nin = 0;
            const char *keys[64];
            for (size_t f = 0; rc == DX_OK && f < dx_example_len(ex); f++) {
                const char *key = dx_example_key(ex, f);
                if ((dx_example_is_input(ex, key) ||
                     strcmp(key, CANDIDATE_KEY) == 0) &&
                    nin < 64)
                    keys[nin++] = key;
            }
            if (rc == DX_OK)
                rc = dx_example_with_inputs(ex, keys, nin);
            if (rc == DX_OK)
                rc = dx_dataset_append(rows, ex);
            else
                dx_example_free(ex);
        }
    dx_eval_result *r = NULL;
    if (rc == DX_OK)
        rc = dx__tp_check_cancel(o, diag);
    if (rc == DX_OK) {
        dx_eval_opts eo = {
            .metric = o->metric,
            .concurrency = o->concurrency,
            .example_timeout_ms = o->example_timeout_ms,
            .call = o->call,
            .progress = o->progress,
            .progress_out = o->progress_out,
        };
        rc = dx__evaluate_kept(m, rows, &eo, keep, &r, diag);
        if (rc == DX_OK && r->cancelled)
            rc = cancelled(diag); /* what finished scores no candidate */
    }
    if (rc == DX_OK) {
        /* DSPy's score: 100 * sum / n, rounded to 2 decimals, per
         * candidate. */
        for (size_t k = 0; k < n; k++) {
            double sum = 0;
            c[k].rows = cJSON_CreateArray();
            for (size_t i = 0; i < val->n; i++) {
                dx_eval_row *row = &r->rows[k * val->n + i];
                sum += row->score;
                dx_usage_acc_merge(&c[k].t.usage, &row->usage);
                row->index = i; /* within the valset, not the joint job */
                if (c[k].rows)
                    cJSON_AddItemToArray(c[k].rows, row_json(row));
            }
            c[k].t.score =
                val->n ? round(10000.0 * sum / (double)val->n) / 100.0 : 0;
            c[k].scored = true;
        }
    }
    dx_eval_result_free(r);
    joint_job_clear(jj);
    return rc;
}

/* Build candidate `seed` (DSPy's seeds: -3 zero-shot, -2 labeled, -1
 * unshuffled bootstrap, >= 0 shuffled bootstrap of random size). */
static int build_candidate(candidate *c, const dx_module *student,
                           const dx_module *teacher, const dx_dataset *trainset,
                           const dx_tp_opts *o, dx_diag *diag)
{
    int64_t seed = c->seed;
    if (seed == -3) {
        snprintf(c->t.kind, sizeof c->t.kind, "zero_shot");
        c->prog = dx_module_reset_copy(student);
        return c->prog ? DX_OK : DX_ENOMEM;
    }
    if (seed == -2) {
        snprintf(c->t.kind, sizeof c->t.kind, "labeled");
        return dx_labeled_fewshot(student, trainset, o->max_labeled_demos, true,
                                  &c->prog);
    }
    dx_tp_opts bo = *o;
    bo.report_path = NULL;
    dx_dataset shuffled = {0};
    const dx_dataset *tr = trainset;
    if (seed >= 0) {
        snprintf(c->t.kind, sizeof c->t.kind, "shuffled");
        shuffled.n = trainset->n;
        shuffled.items =
            dx_calloc(trainset->n ? trainset->n : 1, sizeof *shuffled.items);
        if (!shuffled.items)
            return DX_ENOMEM;
        memcpy(shuffled.items, trainset->items,
               trainset->n * sizeof *shuffled.items);
        dx__pyrand rng;
        dx__pyrand_seed(&rng, seed);
        dx__pyrand_shuffle_n(&rng, (void *)shuffled.items, shuffled.n,
                             sizeof *shuffled.items);
        dx__pyrand_seed(&rng, seed);
        int64_t size = 1;
        dx__pyrand_randint(&rng, 1, (int64_t)o->max_bootstrapped_demos, &size);
        bo.max_bootstrapped_demos = (size_t)size;
        tr = &shuffled;
    } else {
        snprintf(c->t.kind, sizeof c->t.kind, "bootstrap");
    }
    dx_tp_result *sub = NULL;
    int rc = bootstrap_with(student, teacher, tr, &bo, seed, &sub, diag);
    dx_free(shuffled.items);
    if (rc == DX_OK) {
        c->prog = sub->program;
        sub->program = NULL;
        dx_usage_acc_merge(&c->t.usage, &sub->usage);
    }
    dx_tp_result_free(sub);
    return rc;
}

static void checkpoint_candidate(dx__tp_ckpt *ck, const candidate *c)
{
    char key[48];
    snprintf(key, sizeof key, "candidate/%lld", (long long)c->seed);
    cJSON *v = cJSON_CreateObject();
    cJSON *st = dx_module_dump_state(c->prog);
    if (v && st) {
        cJSON_AddNumberToObject(v, "score", c->t.score);
        cJSON_AddStringToObject(v, "kind", c->t.kind);
        cJSON_AddItemToObject(v, "state", st);
        st = NULL;
        dx__tp_record(v, &c->t.usage,
                      c->rows ? cJSON_Duplicate(c->rows, true) : NULL);
        dx__tp_ckpt_put(ck, key, v);
    }
    cJSON_Delete(st);
    cJSON_Delete(v);
}

/* A candidate finished before a restart: its program and score. */
static bool restore_candidate(dx__tp_ckpt *ck, candidate *c,
                              const dx_module *student)
{
    char key[48];
    snprintf(key, sizeof key, "candidate/%lld", (long long)c->seed);
    cJSON *cv = dx__tp_ckpt_get(ck, key);
    if (!cv)
        return false;
    dx_module *prog = dx_module_reset_copy(student);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(cv, "state");
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(cv, "score");
    const cJSON *kd = cJSON_GetObjectItemCaseSensitive(cv, "kind");
    bool ok = prog && st && cJSON_IsNumber(sc) &&
              dx_module_load_state(prog, st, NULL) == DX_OK;
    if (ok) {
        c->prog = prog;
        c->t.score = sc->valuedouble;
        c->t.from_checkpoint = true;
        c->scored = true;
        dx__tp_restore_usage(cv, &c->t.usage);
        snprintf(c->t.kind, sizeof c->t.kind, "%s",
                 cJSON_IsString(kd) ? kd->valuestring : "");
    } else {
        dx_module_free(prog); /* unusable: recompute */
    }
    cJSON_Delete(cv);
    return ok;
}

/* Random search's state across its blocking steps. */
typedef struct rs_state {
    dx__tp_ckpt ck;
    dx_tp_result *res; /* NULL once handed on */
    candidate *cands;  /* [ncand], by seed + 3 */
    size_t ncand;
    /* The candidates being evaluated together: copies of entries of
     * cands (the same programs) and the rows the evaluation gives them. */
    candidate *todo;
    size_t ntodo;
    size_t *where; /* todo[i] is cands[where[i]] */
    joint_job joint;
} rs_state;

/* Closes the checkpoint and frees the state. Also the tie's callback, run
 * outside any process when the optimizer's process ends inside
 * dx_random_search (a kill, a crash). */
static void rs_state_free(void *obj)
{
    rs_state *st = obj;
    joint_job_clear(&st->joint);
    for (size_t i = 0; st->todo && i < st->ntodo; i++)
        cJSON_Delete(st->todo[i].rows);
    dx_free(st->todo);
    dx_free(st->where);
    for (size_t k = 0; st->cands && k < st->ncand; k++) {
        dx_module_free(st->cands[k].prog);
        cJSON_Delete(st->cands[k].rows);
    }
    dx_free(st->cands);
    dx__tp_ckpt_close(&st->ck);
    dx_tp_result_free(st->res);
    dx_free(st);
}

int dx_random_search(const dx_module *student, const dx_module *teacher,
                     const dx_dataset *trainset, const dx_dataset *valset,
                     const dx_tp_opts *opts, dx_tp_result **out, dx_diag *diag)
{
    int rc = dx__tp_check_opts(student, trainset, opts, out, diag);
    if (rc != DX_OK)
        return rc;
    dx_tp_opts o = dx__tp_normalized(opts);
    const dx_dataset *val = valset ? valset : trainset;
    /* Shared with the calling process and the examples of its evaluations
     * (dx__kept, eval_int.h): an optimizer stopped mid-run (its supervisor, a
     * caller that went away) or crashed closes its checkpoint and frees its
     * candidates once no example reads them. */
    rs_state *st = dx_calloc(1, sizeof *st);
    dx__kept *shared = st ? dx__kept_new(st, rs_state_free) : NULL;
    if (!shared) {
        dx_free(st);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    dx__eval_keep keep = dx__kept_keep(shared);
    dx__tp_ckpt *ck = &st->ck;
    rc = dx__tp_ckpt_open(ck, o.checkpoint_path, "random_search", student,
                          teacher, trainset, val, &o, 0, diag);
    size_t ncand = st->ncand = o.num_candidates + 3;
    dx_tp_result *res = st->res = rc == DX_OK ? dx__tp_result_new() : NULL;
    candidate *cands = st->cands =
        rc == DX_OK ? dx_calloc(ncand, sizeof *cands) : NULL;
    if (rc == DX_OK && (!res || !cands))
        rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    if (rc != DX_OK) {
        dx__kept_done(shared);
        return rc;
    }
    /* Evaluated one by one only when a candidate's score can stop the
     * search (stop_at_score) or the budget must be checked between
     * candidates; otherwise all candidates are built, then evaluated as
     * one job. The choice of the best is the same either way: the first
     * candidate, in seed order, with the highest score. */
    bool one_by_one =
        o.stop_at_score > 0 || o.max_lm_calls > 0 || o.max_cost_usd > 0;
    int64_t t0 = dx_now_ms();
    dx_usage_acc used;
    dx_usage_acc_init(&used, "used");
    size_t built = 0;
    for (size_t k = 0; k < ncand && rc == DX_OK; k++) {
        candidate *c = &cands[k];
        c->seed = (int64_t)k - 3;
        dx_usage_acc_init(&c->t.usage, "candidate");
        c->t.id = c->seed;
        c->started_ms = dx_now_ms();
        if (dx__tp_over_budget(&o, &used))
            break;
        dx__tp_emit("optimize.trial", DX_TELEMETRY_START, "random_search",
                    c->seed, 0);
        if (!restore_candidate(ck, c, student)) {
            rc = build_candidate(c, student, teacher, trainset, &o, diag);
            if (rc == DX_OK && one_by_one) {
                rc = dx__tp_evaluate_idx(c->prog, val, NULL, 0, &o, &keep,
                                         &c->t.score, &c->t.usage, &c->rows,
                                         diag);
                c->scored = rc == DX_OK;
                if (c->scored)
                    checkpoint_candidate(ck, c);
            }
        }
        if (rc != DX_OK)
            break;
        built = k + 1;
        dx_usage_acc_merge(&used, &c->t.usage);
        if (one_by_one && c->scored && o.stop_at_score > 0 &&
            c->t.score >= o.stop_at_score)
            break;
    }
    /* The candidates not yet scored, evaluated together. */
    if (rc == DX_OK && !one_by_one) {
        size_t first = 0;
        while (first < built && cands[first].scored)
            first++;
        /* Candidates restored from the checkpoint keep their scores; the
         * rest (contiguous or not) are evaluated in one job. */
        candidate *todo = st->todo = dx_calloc(built ? built : 1, sizeof *todo);
        size_t *where = st->where = dx_calloc(built ? built : 1, sizeof *where);
        if (!todo || !where)
            rc = DX_ENOMEM;
        for (size_t k = first; rc == DX_OK && k < built; k++)
            if (!cands[k].scored) {
                where[st->ntodo] = k;
                todo[st->ntodo++] = cands[k];
            }
        if (rc == DX_OK && st->ntodo)
            rc = evaluate_together(todo, st->ntodo, val, &o, &keep, &st->joint,
                                   diag);
        if (rc == DX_OK) {
            for (size_t i = 0; i < st->ntodo; i++) {
                cands[where[i]] = todo[i];
                checkpoint_candidate(ck, &cands[where[i]]);
            }
            st->ntodo = 0; /* their rows are cands' now */
        }
    }
    /* In seed order: the trial log, the events, the best. */
    double best = -1;
    for (size_t k = 0; rc == DX_OK && k < built; k++) {
        candidate *c = &cands[k];
        if (!c->scored)
            continue;
        c->t.wall_s = (double)(dx_now_ms() - c->started_ms) / 1000.0;
        dx__tp_add_trial(res, &c->t);
        dx__tp_emit("optimize.trial", DX_TELEMETRY_STOP, "random_search",
                    c->seed, c->t.score);
        if (c->t.score > best) {
            best = c->t.score;
            dx_module_free(res->program);
            res->program = c->prog;
            c->prog = NULL;
            res->score = c->t.score;
            dx__tp_emit("optimize.best", DX_TELEMETRY_STOP, "random_search",
                        c->seed, c->t.score);
        }
    }
    st->res = NULL; /* the caller's, or freed below */
    dx__kept_done(shared);
    if (rc != DX_OK || !res->program) {
        if (rc == DX_OK)
            rc = dx_diag_set(diag, DX_ELIMIT, 0, 0,
                             "random search: no candidate was evaluated "
                             "(budget exhausted?)");
        dx_tp_result_free(res);
        return rc;
    }
    res->wall_s = (double)(dx_now_ms() - t0) / 1000.0;
    if (o.report_path)
        dx_tp_write_report(res, "BootstrapFewShotWithRandomSearch",
                           o.report_path, NULL);
    *out = res;
    return DX_OK;
}

/* ---- the report ---------------------------------------------------------- */

static void html_escape(dx__sb *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<':
            dx__sb_puts(b, "&lt;");
            break;
        case '>':
            dx__sb_puts(b, "&gt;");
            break;
        case '&':
            dx__sb_puts(b, "&amp;");
            break;
        case '"':
            dx__sb_puts(b, "&quot;");
            break;
        default:
            dx__sb_putc(b, *s);
        }
    }
}

int dx_tp_write_report(const dx_tp_result *r, const char *title,
                       const char *path, dx_diag *diag)
{
    if (!r || !path)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "report: NULL argument");
    const double W = 720, H = 320, L = 50, B = 30, T = 20, R = 20;
    size_t n = r->n_trials;
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_puts(&b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                    "<title>");
    html_escape(&b, title ? title : "dspex optimization");
    dx__sb_puts(&b, "</title><style>body{font-family:sans-serif;margin:2em}"
                    "table{border-collapse:collapse}td,th{padding:2px 8px;"
                    "border-bottom:1px solid #ddd;text-align:right}"
                    "</style></head><body>\n<h1>");
    html_escape(&b, title ? title : "dspex optimization");
    dx__sb_printf(&b,
                  "</h1>\n<p>%zu trials, best score %.2f, %lld LM calls "
                  "(%lld cached), %.1f s</p>\n",
                  n, r->score, (long long)r->usage.calls,
                  (long long)r->usage.cached_calls, r->wall_s);
    dx__sb_printf(&b,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
                  "height=\"%.0f\" role=\"img\">\n"
                  "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" "
                  "fill=\"none\" stroke=\"#999\"/>\n",
                  W, H, L, T, W - L - R, H - T - B);
    for (int g = 0; g <= 100; g += 25) {
        double y = T + (H - T - B) * (1 - g / 100.0);
        dx__sb_printf(&b,
                      "<text x=\"%.0f\" y=\"%.1f\" font-size=\"11\" "
                      "text-anchor=\"end\">%d</text>\n",
                      L - 6, y + 4, g);
    }
    double step = n > 1 ? (W - L - R) / (double)(n - 1) : 0;
    double bestv = -1;
    dx__sb_puts(&b, "<polyline fill=\"none\" stroke=\"#2a7\" "
                    "stroke-width=\"2\" points=\"");
    for (size_t i = 0; i < n; i++) {
        if (r->trials[i].score > bestv)
            bestv = r->trials[i].score;
        dx__sb_printf(&b, "%.1f,%.1f ", L + step * (double)i,
                      T + (H - T - B) * (1 - bestv / 100.0));
    }
    dx__sb_puts(&b, "\"/>\n");
    for (size_t i = 0; i < n; i++)
        dx__sb_printf(&b,
                      "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#36c\">"
                      "<title>trial %lld (%s): %.2f</title></circle>\n",
                      L + step * (double)i,
                      T + (H - T - B) * (1 - r->trials[i].score / 100.0),
                      (long long)r->trials[i].id, r->trials[i].kind,
                      r->trials[i].score);
    dx__sb_puts(&b, "</svg>\n<p>Blue: each trial's score; green: best so far."
                    "</p>\n<table><tr><th>#</th><th>id</th><th>kind</th>"
                    "<th>score</th><th>LM calls</th><th>seconds</th>"
                    "<th>from checkpoint</th></tr>\n");
    for (size_t i = 0; i < n; i++)
        dx__sb_printf(&b,
                      "<tr><td>%zu</td><td>%lld</td><td>%s</td><td>%.2f</td>"
                      "<td>%lld</td><td>%.2f</td><td>%s</td></tr>\n",
                      i, (long long)r->trials[i].id, r->trials[i].kind,
                      r->trials[i].score, (long long)r->trials[i].usage.calls,
                      r->trials[i].wall_s,
                      r->trials[i].from_checkpoint ? "yes" : "");
    dx__sb_puts(&b, "</table>\n</body></html>\n");
    const char *text = dx__sb_cstr(&b);
    int rc = text ? dx__write_file_atomic(path, text, b.len, diag)
                  : dx_diag_set(diag, DX_ENOMEM, 0, 0, "report: out of memory");
    dx__sb_free(&b);
    return rc;
}
