/*
 * optimize.c — dx_optimize: an optimizer run as the supervised child of a
 * supervisor of its own, restarted from its checkpoint when it crashes.
 *
 * Three kinds of process share one heap `run` (reference counted: the
 * caller, the host and each optimizer process hold one):
 *   - the host (spawned, not linked, by dx_optimize) traps exits, starts
 *     the supervisor linked to itself and watches: the supervisor's start
 *     function tells it each new optimizer pid, the host monitors that pid
 *     before letting it begin (so every crash reason reaches it, even a
 *     crash in the first instruction) and collects the outcome;
 *   - the supervisor (one_for_one, intensity max_restarts over a period
 *     longer than any run, so the limit is per run);
 *   - the optimizer process (transient), which runs the blocking optimizer
 *     and sends its outcome to the host in a message: the message carries
 *     the ownership, so the result is handed over exactly once.
 * The caller waits for the host to end, then takes the outcome.
 */
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/optimize.h"
#include "dspex/supervisor.h"
#include "module_int.h"
#include "teleprompt_int.h"

/* User tags of the messages between the three processes. */
#define TAG_STARTED 0x6f707401 /* supervisor -> host: term = optimizer pid */
#define TAG_GO 0x6f707402      /* host -> optimizer: monitored, begin */
#define TAG_DONE 0x6f707403    /* optimizer -> host: ptr = outcome */

typedef struct outcome {
    int rc;
    dx_diag diag;
    dx_tp_result *result;
} outcome;

enum {
    S_FIELD,
    S_PASSAGES,
    S_QUESTION,
    S_JUDGE_LM,
    S_METRIC_NAME,
    S_LM,
    S_ROLLOUT,
    S_REPORT,
    S_CKPT,
    S_COPRO_LM,
    S_MIPRO_LM,
    S_N
};

typedef struct run {
    atomic_int refs;
    /* Read-only once the host is spawned; its strings point into strs. */
    dx_optimize_spec spec;
    char *strs[S_N];
    bool tmp_ckpt; /* strs[S_CKPT] is ours: remove it at the end */
    char label[64];
    dx_pid caller; /* DX_NOPID from a host thread */
    dx_pid host;   /* set by the host before the supervisor starts */
    /* Written by the host, read by the caller once `finished` is set. */
    outcome *out;
    size_t starts;
    bool gave_up;
    char reason[256]; /* the last crash reason */
    atomic_bool finished;
} run;

static void outcome_free(void *p)
{
    outcome *o = p;
    if (!o)
        return;
    dx_tp_result_free(o->result);
    dx_free(o);
}

static void run_unref(void *p)
{
    run *r = p;
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    outcome_free(r->out);
    for (int i = 0; i < S_N; i++)
        dx_free(r->strs[i]);
    dx_free(r);
}

const char *dx_optimizer_name(dx_optimizer_kind kind)
{
    switch (kind) {
    case DX_OPT_LABELED:
        return "labeled_fewshot";
    case DX_OPT_BOOTSTRAP:
        return "bootstrap_fewshot";
    case DX_OPT_RANDOM_SEARCH:
        return "random_search";
    case DX_OPT_COPRO:
        return "copro";
    case DX_OPT_MIPRO:
        return "mipro";
    }
    return NULL;
}

/* ---- the optimizer's process -------------------------------------------- */

static int run_optimizer(const dx_optimize_spec *s, dx_tp_result **res,
                         dx_diag *d)
{
    switch (s->kind) {
    case DX_OPT_LABELED: {
        dx_module *m = NULL;
        int rc = dx_labeled_fewshot(s->student, s->trainset,
                                    s->labeled_k ? s->labeled_k : 16,
                                    !s->labeled_no_sample, &m);
        if (rc != DX_OK)
            return dx_diag_set(d, rc, 0, 0, "labeled few-shot: %s",
                               dx_strerror(rc));
        *res = dx__tp_result_new();
        if (!*res) {
            dx_module_free(m);
            return dx_diag_set(d, DX_ENOMEM, 0, 0, "out of memory");
        }
        (*res)->program = m;
        return DX_OK;
    }
    case DX_OPT_BOOTSTRAP:
        return dx_bootstrap_fewshot(s->student, s->teacher, s->trainset,
                                    &s->opts, res, d);
    case DX_OPT_RANDOM_SEARCH:
        return dx_random_search(s->student, s->teacher, s->trainset, s->valset,
                                &s->opts, res, d);
    case DX_OPT_COPRO:
        return dx_copro(s->student, s->trainset, &s->opts, &s->copro, res, d);
    case DX_OPT_MIPRO:
        return dx_mipro(s->student, s->trainset, s->valset, &s->opts, &s->mipro,
                        res, d);
    }
    return dx_diag_set(d, DX_EINVAL, 0, 0, "optimize: unknown optimizer");
}

static void optimizer_main(void *arg)
{
    run *r = arg;
    /* Not before the host monitors us: then it learns every crash reason. */
    dx_msg *go = NULL;
    if (dx_receive_tag(TAG_GO, DX_INFINITY, &go) != DX_OK)
        dx_exit_self(dx_atom("no_go")); /* abnormal: the host must hear */
    dx_pid host = go->from;
    dx_msg_free(go);
    /* Only the optimizer's own state is on the heap while it runs, so a
     * crash loses nothing of ours. */
    dx_tp_result *res = NULL;
    dx_diag d = {0};
    int rc = run_optimizer(&r->spec, &res, &d);
    if (rc != DX_OK && d.code == 0)
        dx_diag_set(&d, rc, 0, 0, "%s: %s", dx_optimizer_name(r->spec.kind),
                    dx_strerror(rc));
    outcome *o = dx_calloc(1, sizeof *o);
    if (!o) {
        /* Nothing to report with: a crash is what the host understands. */
        dx_tp_result_free(res);
        dx_exit_self(dx_atom("enomem"));
    }
    o->rc = rc;
    o->diag = d;
    o->result = res;
    dx_send_ptr(host, TAG_DONE, o, outcome_free);
}

/* The supervisor's start function (runs in the supervisor). */
static int start_optimizer(void *arg, void *extra, dx_pid *pid_out)
{
    (void)extra;
    run *r = arg;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    dx_spawn_opts so = {.link = true, .label = r->label, .arg_free = run_unref};
    int rc = dx_spawn_opt(optimizer_main, r, &so, pid_out, NULL);
    if (rc != DX_OK) {
        run_unref(r);
        return rc;
    }
    dx_term *t = dx_pid_term(*pid_out);
    if (!t) {
        /* The host could never let it begin: stop it (it waits, so it
         * has done nothing) and fail this start. */
        dx_kill(*pid_out);
        return DX_ENOMEM;
    }
    dx_send_term(r->host, TAG_STARTED, t);
    return DX_OK;
}

/* ---- the host ----------------------------------------------------------- */

static void finish_with(run *r, int rc, const char *why)
{
    outcome *o = dx_calloc(1, sizeof *o);
    if (!o)
        return; /* the caller reports a host that ended without a verdict */
    o->rc = rc;
    dx_diag_set(&o->diag, rc, 0, 0, "optimize: cannot start the optimizer: %s",
                why);
    r->out = o;
}

static void host_main(void *arg)
{
    run *r = arg;
    dx_trap_exit(true);
    r->host = dx_self();
    dx_ref caller_mon = DX_NOREF;
    if (!dx_pid_is_none(r->caller))
        dx_monitor(r->caller, &caller_mon); /* noproc: we stop at once */
    int limit = r->spec.max_restarts;
    dx_child_spec child = {
        .id = "optimizer",
        .start = start_optimizer,
        .arg = r,
        .restart = DX_SUP_TRANSIENT,
    };
    /* A period longer than any run: max_restarts holds for the whole run,
     * not per 5 s as a supervisor's default would. */
    dx_sup_spec sp = {
        .strategy = DX_SUP_ONE_FOR_ONE,
        .intensity = limit == 0  ? 3
                     : limit < 0 ? 0
                                 : limit,
        .period_s = INT_MAX / 1000,
        .children = &child,
        .nchildren = 1,
    };
    dx_pid sup = DX_NOPID;
    dx_term *err = NULL;
    int rc = dx_sup_start_link(&sp, &sup, &err);
    if (rc != DX_OK) {
        char why[200] = "";
        if (err)
            dx_term_format(err, why, sizeof why);
        dx_term_free(err);
        finish_with(r, rc, why);
        atomic_store_explicit(&r->finished, true, memory_order_release);
        return;
    }
    dx_ref cur_mon = DX_NOREF;
    bool watching = false, done = false, abandoned = false, gone = false;
    while (!done && !abandoned && !gone) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            continue;
        if (m->tag == TAG_STARTED) {
            dx_pid p;
            if (m->term && dx_pid_value(m->term, &p)) {
                r->starts++;
                watching = dx_monitor(p, &cur_mon) == DX_OK;
                dx_send_tag(p, TAG_GO);
            }
        } else if (m->tag == TAG_DONE) {
            r->out = dx_msg_take_ptr(m);
            done = true;
        } else if (m->tag == DX_TAG_DOWN && watching &&
                   dx_ref_eq(m->ref, cur_mon)) {
            watching = false;
            if (m->term)
                dx_term_format(m->term, r->reason, sizeof r->reason);
        } else if (m->tag == DX_TAG_DOWN && dx_ref_eq(m->ref, caller_mon)) {
            abandoned = true;
        } else if (m->tag == DX_TAG_EXIT && dx_pid_eq(m->from, sup)) {
            gone = true; /* it gave up (or was killed): no more restarts */
        }
        dx_msg_free(m);
    }
    if (gone) {
        r->gave_up = true;
        /* The last crash's DOWN may still be on its way. */
        dx_match mt = {.fields = DX_MATCH_REF, .ref = cur_mon};
        dx_msg *m = NULL;
        if (watching && dx_receive(&mt, 5000, &m) == DX_OK) {
            if (m->term)
                dx_term_format(m->term, r->reason, sizeof r->reason);
            dx_msg_free(m);
        }
    } else {
        /* Stops an optimizer still running (the caller went away) or one
         * that is just returning after its DONE. */
        dx_sup_stop(sup, NULL, DX_INFINITY);
    }
    atomic_store_explicit(&r->finished, true, memory_order_release);
}

/* ---- dx_optimize ---------------------------------------------------------- */

static bool copy_str(run *r, int slot, const char **field)
{
    if (!*field)
        return true;
    r->strs[slot] = dx_strdup(*field);
    *field = r->strs[slot];
    return r->strs[slot] != NULL;
}

static int make_tmp_ckpt(run *r, dx_diag *diag)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    char path[1024];
    int n = snprintf(path, sizeof path, "%s/dspex-optimize-XXXXXX", dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return dx_diag_set(diag, DX_EIO, 0, 0,
                           "optimize: TMPDIR is too long for a checkpoint");
    int fd = mkstemp(path);
    if (fd < 0)
        return dx_diag_set(diag, DX_EIO, 0, 0,
                           "optimize: cannot create a checkpoint in %s", dir);
    close(fd);
    r->strs[S_CKPT] = dx_strdup(path);
    if (!r->strs[S_CKPT]) {
        unlink(path);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    r->tmp_ckpt = true;
    r->spec.opts.checkpoint_path = r->strs[S_CKPT];
    return DX_OK;
}

static void remove_tmp_ckpt(run *r)
{
    if (!r->tmp_ckpt)
        return;
    const char *sfx[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        char p[1100];
        snprintf(p, sizeof p, "%s%s", r->strs[S_CKPT], sfx[i]);
        unlink(p);
    }
}

static run *run_new(const dx_optimize_spec *spec)
{
    run *r = dx_calloc(1, sizeof *r);
    if (!r)
        return NULL;
    atomic_init(&r->refs, 1);
    atomic_init(&r->finished, false);
    r->spec = *spec;
    dx_tp_opts *o = &r->spec.opts;
    bool ok = copy_str(r, S_FIELD, &o->metric.field) &&
              copy_str(r, S_PASSAGES, &o->metric.passages_field) &&
              copy_str(r, S_QUESTION, &o->metric.question_field) &&
              copy_str(r, S_JUDGE_LM, &o->metric.judge_lm_name) &&
              copy_str(r, S_METRIC_NAME, &o->metric.name) &&
              copy_str(r, S_LM, &o->call.lm_name) &&
              copy_str(r, S_ROLLOUT, &o->call.rollout_id) &&
              copy_str(r, S_REPORT, &o->report_path) &&
              copy_str(r, S_CKPT, &o->checkpoint_path) &&
              copy_str(r, S_COPRO_LM, &r->spec.copro.prompt_lm_name) &&
              copy_str(r, S_MIPRO_LM, &r->spec.mipro.prompt_lm_name);
    if (!ok) {
        run_unref(r);
        return NULL;
    }
    snprintf(r->label, sizeof r->label, "dx_optimize:%s",
             dx_optimizer_name(spec->kind));
    r->caller = dx_self();
    return r;
}

/* Wait for the host to end: a monitor from a process, dx_wait_exit from a
 * host thread. */
static void wait_host(run *r, int *rc)
{
    bool in_proc = !dx_pid_is_none(r->caller);
    dx_spawn_opts so = {
        .monitor = in_proc, .label = "dx_optimize:host", .arg_free = run_unref};
    dx_pid pid;
    dx_ref mon = DX_NOREF;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    *rc = dx_spawn_opt(host_main, r, &so, &pid, in_proc ? &mon : NULL);
    if (*rc != DX_OK) {
        run_unref(r);
        return;
    }
    if (in_proc) {
        dx_match mt = {.fields = DX_MATCH_REF, .ref = mon};
        dx_msg *m = NULL;
        if (dx_receive(&mt, DX_INFINITY, &m) == DX_OK)
            dx_msg_free(m);
    } else {
        /* DX_ENOPROC (it ended already) is as good as its end. */
        dx_wait_exit(pid, DX_INFINITY, NULL);
    }
}

int dx_optimize(const dx_optimize_spec *spec, dx_tp_result **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!spec || !out || !spec->student || !spec->trainset ||
        !dx_optimizer_name(spec->kind))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "optimize: a spec with a known optimizer, a "
                           "student, a trainset and out is needed");
    if (!dx_runtime_running())
        return dx_diag_set(diag, DX_ESTATE, 0, 0,
                           "optimize: the runtime is not running");
    run *r = run_new(spec);
    if (!r)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    int rc = DX_OK;
    if (!r->spec.opts.checkpoint_path && spec->kind != DX_OPT_LABELED)
        rc = make_tmp_ckpt(r, diag);
    if (rc == DX_OK) {
        wait_host(r, &rc);
        if (rc != DX_OK)
            dx_diag_set(diag, rc, 0, 0, "optimize: cannot spawn: %s",
                        dx_strerror(rc));
    }
    if (rc != DX_OK) {
        /* nothing ran */
    } else if (!atomic_load_explicit(&r->finished, memory_order_acquire) ||
               (!r->out && !r->gave_up)) {
        rc = dx_diag_set(diag, DX_EDOWN, 0, 0,
                         "optimize: the process supervising %s died",
                         dx_optimizer_name(spec->kind));
    } else if (r->out) {
        rc = r->out->rc;
        if (rc == DX_OK) {
            *out = r->out->result;
            r->out->result = NULL;
            (*out)->restarts = r->starts ? r->starts - 1 : 0;
        } else if (diag) {
            *diag = r->out->diag;
        }
    } else {
        rc = dx_diag_set(diag, DX_EDOWN, 0, 0,
                         "optimize: %s's process crashed %zu time%s "
                         "(max_restarts %d); last reason: %s",
                         dx_optimizer_name(spec->kind), r->starts,
                         r->starts == 1 ? "" : "s",
                         spec->max_restarts == 0  ? 3
                         : spec->max_restarts < 0 ? 0
                                                  : spec->max_restarts,
                         r->reason[0] ? r->reason : "unknown");
    }
    remove_tmp_ckpt(r);
    run_unref(r);
    return rc;
}
