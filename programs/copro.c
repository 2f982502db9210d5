/*
 * copro.c — COPRO (see teleprompt.h): instructions proposed by an LM with
 * DSPy's own prompts (BasicGenerateInstruction, then
 * GenerateInstructionGivenAttempts with the scored attempts), each
 * candidate evaluated on the trainset, the best kept; and dx__tp_ask, the
 * one prompt-LM call the instruction optimizers share.
 *
 * The order of proposals and evaluations is DSPy's, so the same LM answers
 * give the same program. Candidates are evaluated one after the other,
 * each with its examples fanned out under opts.concurrency: the candidates
 * of one predictor and round are independent, but DSPy also runs them in
 * turn and one evaluation already fills the concurrency.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/teleprompt.h"
#include "eval_int.h"
#include "module_int.h"
#include "pyjson.h"
#include "teleprompt_int.h"

#define DEFAULT_BREADTH 10
#define DEFAULT_DEPTH 3
#define DEFAULT_TEMPERATURE 1.4

/* ---- DSPy's signatures ---------------------------------------------------- */

static const char BASIC_INSTRUCTIONS[] =
    "You are an instruction optimizer for large language models. I will "
    "give you a ``signature`` of fields (inputs and outputs) in English. "
    "Your task is to propose an instruction that will lead a good language "
    "model to perform the task well. Don't be afraid to be creative.";

static const char ATTEMPTS_INSTRUCTIONS[] =
    "You are an instruction optimizer for large language models. I will "
    "give some task instructions I've tried, along with their corresponding "
    "validation scores. The instructions are arranged in increasing order "
    "based on their scores, where higher scores indicate better quality.\n"
    "\n"
    "Your task is to propose a new instruction that will lead a good "
    "language model to perform the task even better. Don't be afraid to be "
    "creative.";

static const char DESC_INSTRUCTION[] =
    "The improved instructions for the language model";
static const char DESC_PREFIX[] = "The string at the end of the prompt, which "
                                  "will help the model start solving the task";

static int make_sig(bool attempts, dx_signature **out)
{
    dx_field_spec f[3] = {
        {.name = attempts ? "attempted_instructions" : "basic_instruction",
         .role = DX_FIELD_INPUT,
         .desc =
             attempts ? NULL : "The initial instructions before optimization"},
        {.name = "proposed_instruction",
         .role = DX_FIELD_OUTPUT,
         .desc = DESC_INSTRUCTION},
        {.name = "proposed_prefix_for_output_field",
         .role = DX_FIELD_OUTPUT,
         .desc = DESC_PREFIX},
    };
    return dx_signature_build(
        f, 3, attempts ? ATTEMPTS_INSTRUCTIONS : BASIC_INSTRUCTIONS, out, NULL);
}

/* ---- the prompt LM ------------------------------------------------------- */

/* One proposal call run in a process of its own while the optimizer's
 * process waits for its DOWN or a cancellation's wake-up: Ctrl-C during a
 * proposal then stops the optimizer at once, not after the LM answers or
 * its timeout (120 s by default). Everything the call reads is the slot's
 * (the Predict, the inputs, the names), so a killed optimizer frees nothing
 * it still uses; its tie kills the call. */
/* How long past the call's own deadline the waiting side kills it. */
#define ASK_GRACE_MS 2000

typedef struct ask_slot {
    atomic_int refs;
    atomic_bool done;
    dx_module *predict;
    dx_example *inputs;
    dx_call_opts call;
    char *lm_name, *rollout_id; /* call's, copied */
    int64_t deadline_ms;
    /* out */
    int rc;
    dx_diag diag;
    dx_prediction *pred;
    dx_usage_acc usage; /* also when the call failed */
    /* the waiting side */
    dx_pid pid;
} ask_slot;

static void ask_unref(void *arg)
{
    ask_slot *s = arg;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    dx_module_free(s->predict);
    dx_example_free(s->inputs);
    dx_free(s->lm_name);
    dx_free(s->rollout_id);
    dx_prediction_free(s->pred);
    dx_free(s);
}

/* The waiting process was killed: so is the call. */
static void asker_killed(void *arg)
{
    ask_slot *s = arg;
    dx_kill(s->pid);
    ask_unref(s);
}

static void ask_proc(void *arg)
{
    ask_slot *s = arg;
    dx_set_label("dspex.optimize.proposal");
    s->rc = dx__run_program(s->predict, s->inputs, &s->call, s->deadline_ms,
                            &s->pred, NULL, &s->diag, &s->usage);
    atomic_store_explicit(&s->done, true, memory_order_release);
}

typedef struct ask_wait {
    dx_ref mon, wake;
} ask_wait;

static bool is_ask_news(const dx_msg *m, void *ud)
{
    const ask_wait *w = ud;
    return (m->tag == DX_TAG_DOWN && dx_ref_eq(m->ref, w->mon)) ||
           (m->tag == DX__TAG_CANCEL_WAKE && dx_ref_eq(m->ref, w->wake));
}

/* In the caller's process: run the call in a process and wait for it. */
static int ask_in_process(dx_module *p, const dx_example *in,
                          const dx_call_opts *call, int64_t timeout,
                          const dx_tp_opts *o, dx_prediction **out,
                          dx_usage_acc *usage, dx_diag *diag)
{
    ask_slot *s = dx_calloc(1, sizeof *s);
    if (!s) {
        dx_module_free(p);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    atomic_init(&s->refs, 2);
    atomic_init(&s->done, false);
    s->predict = p;
    s->inputs = dx_example_copy(in);
    s->call = *call;
    s->lm_name = call->lm_name ? dx_strdup(call->lm_name) : NULL;
    s->rollout_id = call->rollout_id ? dx_strdup(call->rollout_id) : NULL;
    s->call.lm_name = s->lm_name;
    s->call.rollout_id = s->rollout_id;
    s->deadline_ms = dx_now_ms() + timeout;
    dx_usage_acc_init(&s->usage, "ask");
    dx_ref mon = DX_NOREF;
    int rc = DX_ENOMEM;
    if (s->inputs && (!call->lm_name || s->lm_name) &&
        (!call->rollout_id || s->rollout_id)) {
        dx_spawn_opts so = {.monitor = true, .arg_free = ask_unref};
        rc = dx_spawn_opt(ask_proc, s, &so, &s->pid, &mon);
    }
    if (rc != DX_OK) {
        atomic_store(&s->refs, 1);
        ask_unref(s);
        return dx_diag_set(diag, rc, 0, 0, "proposal: cannot start: %s",
                           dx_strerror(rc));
    }
    dx_ptie *tie = dx_ptie_new(s, asker_killed);
    dx__cancel_watch *watch = dx__cancel_watch_start();
    ask_wait w = {mon, dx__cancel_watch_ref(watch)};
    dx_match match = {.pred = is_ask_news, .ud = &w};
    /* The call ends itself at its deadline; this is the backstop. */
    int64_t hard_deadline = s->deadline_ms + ASK_GRACE_MS;
    bool cancelled = false, killed = false, ended = false;
    while (!ended) {
        if (!cancelled && dx__tp_check_cancel(o, NULL) != DX_OK)
            cancelled = true;
        if (!killed && (cancelled || dx_now_ms() >= hard_deadline)) {
            killed = true;
            dx_kill(s->pid); /* its DOWN ends the wait */
        }
        int64_t wait = killed ? DX_INFINITY : hard_deadline - dx_now_ms();
        if (!watch && !killed && wait > DX__CANCEL_POLL_MS)
            wait = DX__CANCEL_POLL_MS;
        dx_msg *m = NULL;
        if (dx_receive(&match, wait < 0 ? 0 : wait, &m) == DX_OK && m) {
            ended = m->tag == DX_TAG_DOWN;
            dx_msg_free(m);
        }
    }
    dx__cancel_watch_stop(watch);
    dx_ptie_cut(tie);
    dx_usage_acc_merge(usage, &s->usage);
    if (cancelled) {
        rc = dx__tp_check_cancel(o, diag);
    } else if (!atomic_load_explicit(&s->done, memory_order_acquire)) {
        rc = killed ? dx_diag_set(diag, DX_ETIMEDOUT, 0, 0,
                                  "proposal: no answer within %lld ms",
                                  (long long)timeout)
                    : dx_diag_set(diag, DX_EDOWN, 0, 0,
                                  "proposal: the call's process died");
    } else {
        rc = s->rc;
        if (rc == DX_OK) {
            *out = s->pred;
            s->pred = NULL;
        } else if (diag) {
            *diag = s->diag;
        }
    }
    ask_unref(s);
    return rc;
}

/* ask_in_process's arguments, for dx__in_process. */
typedef struct ask_args {
    dx_module *predict; /* taken by ask_in_process */
    const dx_example *in;
    const dx_call_opts *call;
    int64_t timeout;
    const dx_tp_opts *o;
    dx_prediction **out;
    dx_usage_acc *usage;
    dx_diag *diag;
    int rc;
} ask_args;

static void ask_here(void *arg)
{
    ask_args *a = arg;
    dx_module *p = a->predict;
    a->predict = NULL;
    a->rc = ask_in_process(p, a->in, a->call, a->timeout, a->o, a->out,
                           a->usage, a->diag);
}

int dx__tp_ask(dx_signature *sig, const dx_example *in, int n,
               double temperature, const char *lm_name, const char *rollout_id,
               const dx_tp_opts *o, dx_prediction **out, dx_usage_acc *usage,
               dx_diag *diag)
{
    dx_predict_opts po = {.has_temperature = true,
                          .temperature = temperature,
                          .n = n,
                          .lm_name = lm_name};
    dx_module *p = dx_predict_new(sig, &po);
    if (!p)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    dx_call_opts call = o->call;
    call.timeout_ms = o->example_timeout_ms;
    call.trace = false;
    if (rollout_id)
        call.rollout_id = rollout_id;
    /* In the optimizer's process, or one made for it from a host thread.
     * A failed call's LM usage counts too. */
    ask_args a = {.predict = p,
                  .in = in,
                  .call = &call,
                  .timeout = call.timeout_ms > 0 ? call.timeout_ms : 120000,
                  .o = o,
                  .out = out,
                  .usage = usage,
                  .diag = diag};
    int rc = dx__in_process(ask_here, &a);
    if (rc != DX_OK) {
        dx_module_free(a.predict); /* NULL once ask_in_process had it */
        return dx_diag_set(diag, rc, 0, 0, "proposal: %s", dx_strerror(rc));
    }
    return a.rc;
}

/* ---- candidates ------------------------------------------------------------ */

typedef struct cand {
    char *instr;
    char *prefix;
} cand;

typedef struct cand_list {
    cand *v;
    size_t n, cap;
} cand_list;

/* An evaluated candidate of one predictor (DSPy's evaluated_candidates
 * entry: a later better score replaces it in place). */
typedef struct evald {
    char *instr;
    char *prefix;
    double score;
    dx_module *program; /* the whole program as evaluated */
    size_t order;       /* position among all entries, for stable ties */
} evald;

typedef struct evald_list {
    evald *v;
    size_t n, cap;
} evald_list;

static int cand_push(cand_list *l, const char *instr, const char *prefix)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        cand *v = dx_realloc(l->v, cap * sizeof *v);
        if (!v)
            return DX_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    char *a = dx_strdup(instr), *b = dx_strdup(prefix);
    if (!a || !b) {
        dx_free(a);
        dx_free(b);
        return DX_ENOMEM;
    }
    l->v[l->n++] = (cand){a, b};
    return DX_OK;
}

static void cand_list_free(cand_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        dx_free(l->v[i].instr);
        dx_free(l->v[i].prefix);
    }
    dx_free(l->v);
    memset(l, 0, sizeof *l);
}

static void evald_list_free(evald_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        dx_free(l->v[i].instr);
        dx_free(l->v[i].prefix);
        dx_module_free(l->v[i].program);
    }
    dx_free(l->v);
    memset(l, 0, sizeof *l);
}

/* Python's s.strip('"').strip(). */
static char *clean(const char *s)
{
    size_t a = 0, b = strlen(s);
    while (a < b && s[a] == '"')
        a++;
    while (b > a && s[b - 1] == '"')
        b--;
    while (a < b && strchr(" \t\n\r\f\v", s[a]))
        a++;
    while (b > a && strchr(" \t\n\r\f\v", s[b - 1]))
        b--;
    char *out = dx_malloc(b - a + 1);
    if (out) {
        memcpy(out, s + a, b - a);
        out[b - a] = '\0';
    }
    return out;
}

/* The completions of a proposal as (instruction, prefix) pairs, stored in
 * (or restored from) the checkpoint under key. */
static int propose(dx__tp_ckpt *ck, const char *key, bool attempts,
                   const cJSON *input, int n, const dx_copro_opts *c,
                   const dx_tp_opts *o, cand_list *out, dx_usage_acc *usage,
                   dx_diag *diag)
{
    cJSON *cv = dx__tp_ckpt_get(ck, key);
    if (cJSON_IsArray(cv)) {
        const cJSON *pair;
        int rc = DX_OK;
        cJSON_ArrayForEach(pair, cv)
        {
            const char *a = cJSON_GetStringValue(cJSON_GetArrayItem(pair, 0));
            const char *b = cJSON_GetStringValue(cJSON_GetArrayItem(pair, 1));
            if (rc == DX_OK && a && b)
                rc = cand_push(out, a, b);
        }
        cJSON_Delete(cv);
        return rc;
    }
    cJSON_Delete(cv);
    dx_signature *sig = NULL;
    dx_example *in = dx_example_new();
    int rc = in ? make_sig(attempts, &sig) : DX_ENOMEM;
    if (rc == DX_OK)
        rc = dx_example_set_value(
            in, attempts ? "attempted_instructions" : "basic_instruction",
            input);
    dx_prediction *pred = NULL;
    if (rc == DX_OK)
        rc = dx__tp_ask(sig, in, n, c->init_temperature, c->prompt_lm_name,
                        NULL, o, &pred, usage, diag);
    else
        dx_diag_set(diag, rc, 0, 0, "copro: out of memory");
    cJSON *store = rc == DX_OK ? cJSON_CreateArray() : NULL;
    for (size_t i = 0; rc == DX_OK && i < dx_prediction_n_completions(pred);
         i++) {
        const dx_example *e = dx_prediction_completion(pred, i);
        const char *a = dx_example_get_str(e, "proposed_instruction", "");
        const char *b =
            dx_example_get_str(e, "proposed_prefix_for_output_field", "");
        rc = cand_push(out, a, b);
        cJSON *pair = cJSON_CreateArray();
        if (store && pair) {
            cJSON_AddItemToArray(pair, cJSON_CreateString(a));
            cJSON_AddItemToArray(pair, cJSON_CreateString(b));
            cJSON_AddItemToArray(store, pair);
        } else {
            cJSON_Delete(pair);
        }
    }
    if (rc == DX_OK && store)
        dx__tp_ckpt_put(ck, key, store);
    cJSON_Delete(store);
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_signature_unref(sig);
    return rc;
}

/* p's signature with instr and the last field's prefix. */
static int set_candidate(dx_module *p, const char *instr, const char *prefix)
{
    const dx_signature *s = dx_predict_signature(p);
    size_t nf = dx_signature_n_fields(s);
    dx_signature *a = NULL, *b = NULL;
    int rc = dx_signature_with_instructions(s, instr, &a);
    if (rc == DX_OK && nf > 0)
        rc = dx_signature_with_field_text(
            a, dx_signature_field(a, nf - 1)->name, NULL, prefix, &b);
    if (rc == DX_OK)
        rc = dx_predict_set_signature(p, b ? b : a);
    dx_signature_unref(a);
    dx_signature_unref(b);
    return rc;
}

typedef struct copro_run {
    const dx_dataset *train;
    dx_tp_opts o;
    dx_copro_opts c;
    dx__tp_ckpt ck;
    dx_tp_result *res;
    size_t n_evals; /* trial ids */
    size_t n_entries;
    double best;
    dx_diag *diag;
    struct body_state *body; /* copro_body's, while it runs */
    dx__eval_keep keep;      /* every evaluation's examples hold the run */
} copro_run;

static void body_state_free(void *obj);

/* Closes the checkpoint and frees the run, its rounds' state and its
 * result (NULL once handed on). Runs with the last reference to the run
 * (dx__kept, eval_int.h): when dx_copro is done with it, or once the optimizer's
 * process has ended inside dx_copro (a kill, a crash) and no example of
 * its evaluations is left. */
static void copro_run_free(void *obj)
{
    copro_run *r = obj;
    dx__tp_ckpt_close(&r->ck);
    dx_tp_result_free(r->res);
    if (r->body)
        body_state_free(r->body);
    dx_free(r);
}

static bool spent(const copro_run *r)
{
    return dx__tp_over_budget(&r->o, &r->res->usage);
}

/* Evaluate clone (with candidate c set on predictor p) and record it in
 * ev as DSPy does. */
static int evaluate_candidate(copro_run *r, dx_module *clone, dx_module *p,
                              const cand *c, evald_list *ev)
{
    /* The candidate's texts and its checkpoint record, held across the
     * evaluation (where an optimizer stopped or crashed ends). */
    dx__held *h = dx__held_new();
    if (!h)
        return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "copro: out of memory");
    char *instr = clean(c->instr), *prefix = clean(c->prefix);
    h->other[0].obj = instr;
    h->other[0].free_fn = dx_free;
    h->other[1].obj = prefix;
    h->other[1].free_fn = dx_free;
    int rc = instr && prefix ? set_candidate(p, instr, prefix) : DX_ENOMEM;
    dx_tp_trial t = {.id = (int64_t)r->n_evals++};
    snprintf(t.kind, sizeof t.kind, "instruction");
    dx_usage_acc_init(&t.usage, "candidate");
    int64_t t0 = dx_now_ms();
    char key[48];
    snprintf(key, sizeof key, "eval/%lld", (long long)t.id);
    cJSON *cv = h->json[0] = rc == DX_OK ? dx__tp_ckpt_get(&r->ck, key) : NULL;
    const char *si = cJSON_GetStringValue(cJSON_GetObjectItem(cv, "i"));
    const char *sp = cJSON_GetStringValue(cJSON_GetObjectItem(cv, "p"));
    const cJSON *ss = cJSON_GetObjectItem(cv, "score");
    dx__tp_emit("optimize.trial", DX_TELEMETRY_START, "copro", t.id, 0);
    if (si && sp && cJSON_IsNumber(ss) && strcmp(si, instr) == 0 &&
        strcmp(sp, prefix) == 0) {
        t.score = ss->valuedouble;
        t.from_checkpoint = true;
        dx__tp_restore_usage(cv, &t.usage);
    } else if (rc == DX_OK) {
        cJSON *rows = NULL;
        rc = dx__tp_evaluate_rows(clone, r->train, &r->o, &r->keep, &t.score,
                                  &t.usage, &rows, r->diag);
        cJSON *v = rc == DX_OK ? cJSON_CreateObject() : NULL;
        if (v) {
            cJSON_AddStringToObject(v, "i", instr);
            cJSON_AddStringToObject(v, "p", prefix);
            cJSON_AddNumberToObject(v, "score", t.score);
            dx__tp_record(v, &t.usage, rows);
            dx__tp_ckpt_put(&r->ck, key, v);
        } else {
            cJSON_Delete(rows);
        }
        cJSON_Delete(v);
    }
    if (rc == DX_OK) {
        t.wall_s = (double)(dx_now_ms() - t0) / 1000.0;
        rc = dx__tp_add_trial(r->res, &t);
        dx__tp_emit("optimize.trial", DX_TELEMETRY_STOP, "copro", t.id,
                    t.score);
        if (t.score > r->best) {
            r->best = t.score;
            dx__tp_emit("optimize.best", DX_TELEMETRY_STOP, "copro", t.id,
                        t.score);
        }
    }
    evald *hit = NULL;
    for (size_t i = 0; rc == DX_OK && i < ev->n && !hit; i++)
        if (strcmp(ev->v[i].instr, instr) == 0 &&
            strcmp(ev->v[i].prefix, prefix) == 0)
            hit = &ev->v[i];
    if (rc == DX_OK && !(hit && hit->score >= t.score)) {
        dx_module *copy = dx_module_copy(clone);
        if (!copy) {
            rc = DX_ENOMEM;
        } else if (hit) {
            dx_module_free(hit->program);
            hit->program = copy;
            hit->score = t.score;
        } else {
            if (ev->n == ev->cap) {
                size_t cap = ev->cap ? 2 * ev->cap : 8;
                evald *v = dx_realloc(ev->v, cap * sizeof *v);
                if (!v) {
                    dx_module_free(copy);
                    rc = DX_ENOMEM;
                    goto out;
                }
                ev->v = v;
                ev->cap = cap;
            }
            ev->v[ev->n++] =
                (evald){instr, prefix, t.score, copy, r->n_entries++};
            h->other[0].obj = h->other[1].obj = NULL; /* ev's now */
        }
    }
out:
    if (rc == DX_ENOMEM)
        dx_diag_set(r->diag, rc, 0, 0, "copro: out of memory");
    dx__held_free(h);
    return rc;
}

/* Highest score first; equal scores keep their order (Python's stable
 * sort with reverse=True). */
static int by_score(const void *a, const void *b)
{
    const evald *x = *(const evald *const *)a, *y = *(const evald *const *)b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static const evald **sorted(const evald_list *ev)
{
    const evald **s = dx_calloc(ev->n ? ev->n : 1, sizeof *s);
    for (size_t i = 0; s && i < ev->n; i++)
        s[i] = &ev->v[i];
    if (s)
        qsort(s, ev->n, sizeof *s, by_score);
    return s;
}

/* DSPy's attempts list: the best min(n, breadth) in increasing score. */
static cJSON *attempts_of(const evald_list *ev, size_t breadth)
{
    const evald **s = sorted(ev);
    cJSON *a = s ? cJSON_CreateArray() : NULL;
    size_t shortest = ev->n < breadth ? ev->n : breadth;
    for (size_t k = shortest; a && k-- > 0;) {
        size_t num = shortest - k;
        char score[32];
        dx__pyfloat_repr(s[k]->score, score);
        dx__sb b;
        dx__sb_init(&b);
        dx__sb_printf(&b, "Instruction #%zu: %s", num, s[k]->instr);
        cJSON_AddItemToArray(a, cJSON_CreateString(dx__sb_cstr(&b)));
        dx__sb_free(&b);
        dx__sb_init(&b);
        dx__sb_printf(&b, "Prefix #%zu: %s", num, s[k]->prefix);
        cJSON_AddItemToArray(a, cJSON_CreateString(dx__sb_cstr(&b)));
        dx__sb_free(&b);
        dx__sb_init(&b);
        dx__sb_printf(&b, "Resulting Score #%zu: %s", num, score);
        cJSON_AddItemToArray(a, cJSON_CreateString(dx__sb_cstr(&b)));
        dx__sb_free(&b);
    }
    dx_free(s);
    return a;
}

/* What copro_body holds across its rounds. */
typedef struct body_state {
    dx_module *module, *clone;
    dx_named_predictor *preds, *cpreds;
    size_t np;
    cand_list *all, *latest; /* [np] */
    evald_list *ev;          /* [np] */
} body_state;

static void body_state_free(void *obj)
{
    body_state *st = obj;
    for (size_t p = 0; p < st->np; p++) {
        if (st->all)
            cand_list_free(&st->all[p]);
        if (st->latest)
            cand_list_free(&st->latest[p]);
        if (st->ev)
            evald_list_free(&st->ev[p]);
    }
    dx_free(st->all);
    dx_free(st->latest);
    dx_free(st->ev);
    dx_free(st->preds);
    dx_free(st->cpreds);
    dx_module_free(st->clone);
    dx_module_free(st->module);
    dx_free(st);
}

static int copro_body(copro_run *r, const dx_module *student)
{
    const dx_tp_opts *o = &r->o;
    size_t breadth = r->c.breadth;
    /* The run's: the rounds wait on proposals and evaluations, where an
     * optimizer stopped or crashed ends (copro_run_free). */
    body_state *st = r->body = dx_calloc(1, sizeof *st);
    if (!st)
        return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "copro: out of memory");
    dx_module *module = st->module = dx_module_copy(student);
    dx_module *clone = NULL;
    dx_named_predictor *cpreds = NULL;
    size_t ncp = 0;
    cand_list *all = NULL, *latest = NULL;
    evald_list *ev = NULL;
    int rc =
        module ? dx_module_predictors(module, &st->preds, &st->np) : DX_ENOMEM;
    const dx_named_predictor *preds = st->preds;
    size_t np = st->np;
    if (rc == DX_OK) {
        all = st->all = dx_calloc(np ? np : 1, sizeof *all);
        latest = st->latest = dx_calloc(np ? np : 1, sizeof *latest);
        ev = st->ev = dx_calloc(np ? np : 1, sizeof *ev);
        if (!all || !latest || !ev)
            rc = DX_ENOMEM;
    }
    if (rc != DX_OK) {
        dx_diag_set(r->diag, rc, 0, 0, "copro: out of memory");
        goto out;
    }
    if (np == 0) {
        rc = dx_diag_set(r->diag, DX_EINVAL, 0, 0,
                         "copro: the program has no predictors");
        goto out;
    }
    /* Round 0: breadth-1 proposals from the basic instruction, plus it. */
    for (size_t p = 0; p < np && rc == DX_OK; p++) {
        if (spent(r))
            break;
        const dx_signature *s = dx_predict_signature(preds[p].predict);
        const char *basic = dx_signature_instructions(s);
        const char *prefix =
            dx_signature_field(s, dx_signature_n_fields(s) - 1)->prefix;
        char key[64];
        snprintf(key, sizeof key, "propose/%zu/0", p);
        cJSON *in = cJSON_CreateString(basic);
        rc = in ? propose(&r->ck, key, false, in, (int)(breadth - 1), &r->c, o,
                          &all[p], &r->res->usage, r->diag)
                : DX_ENOMEM;
        cJSON_Delete(in);
        if (rc == DX_OK)
            rc = cand_push(&all[p], basic, prefix);
        for (size_t i = 0; rc == DX_OK && i < all[p].n; i++)
            rc = cand_push(&latest[p], all[p].v[i].instr, all[p].v[i].prefix);
    }
    clone = st->clone = rc == DX_OK ? dx_module_copy(module) : NULL;
    if (rc == DX_OK &&
        (!clone || dx_module_predictors(clone, &st->cpreds, &ncp) != DX_OK)) {
        rc = dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "copro: out of memory");
    }
    cpreds = st->cpreds;
    for (size_t d = 0; rc == DX_OK && d < r->c.depth && !spent(r); d++) {
        for (size_t p = 0; rc == DX_OK && p < np; p++) {
            /* With several predictors every candidate is evaluated again,
             * next to the other predictors' current best. */
            const cand_list *cs = np > 1 ? &all[p] : &latest[p];
            for (size_t i = 0; rc == DX_OK && i < cs->n && !spent(r); i++)
                rc = evaluate_candidate(r, clone, cpreds[p].predict, &cs->v[i],
                                        &ev[p]);
            if (rc != DX_OK || ev[p].n == 0)
                continue;
            const evald *best = &ev[p].v[0];
            for (size_t i = 1; i < ev[p].n; i++)
                if (ev[p].v[i].score > best->score)
                    best = &ev[p].v[i];
            rc = set_candidate(cpreds[p].predict, best->instr, best->prefix);
        }
        if (d + 1 == r->c.depth)
            break;
        for (size_t p = 0; rc == DX_OK && p < np && !spent(r); p++) {
            cJSON *att = attempts_of(&ev[p], breadth);
            char key[64];
            snprintf(key, sizeof key, "propose/%zu/%zu", p, d + 1);
            cand_list fresh = {0};
            rc = att ? propose(&r->ck, key, true, att, (int)breadth, &r->c, o,
                               &fresh, &r->res->usage, r->diag)
                     : DX_ENOMEM;
            cJSON_Delete(att);
            cand_list_free(&latest[p]);
            latest[p] = fresh;
            for (size_t i = 0; rc == DX_OK && i < fresh.n; i++)
                rc = cand_push(&all[p], fresh.v[i].instr, fresh.v[i].prefix);
        }
    }
    if (rc == DX_OK) {
        /* DSPy: all predictors' entries, stably sorted by score. */
        const evald *top = NULL;
        for (size_t p = 0; p < np; p++)
            for (size_t i = 0; i < ev[p].n; i++) {
                const evald *e = &ev[p].v[i];
                /* Earlier predictors come first in DSPy's list: the
                 * first of equal scores wins. */
                if (!top || e->score > top->score)
                    top = e;
            }
        if (!top) {
            rc = dx_diag_set(r->diag, DX_ELIMIT, 0, 0,
                             "copro: no candidate was evaluated (budget "
                             "exhausted?)");
        } else {
            r->res->program = dx_module_copy(top->program);
            r->res->score = top->score;
            if (!r->res->program)
                rc = dx_diag_set(r->diag, DX_ENOMEM, 0, 0,
                                 "copro: out of memory");
        }
    }
out:
    r->body = NULL;
    body_state_free(st);
    return rc;
}

int dx_copro(const dx_module *student, const dx_dataset *trainset,
             const dx_tp_opts *opts, const dx_copro_opts *copro,
             dx_tp_result **out, dx_diag *diag)
{
    int rc = dx__tp_check_opts(student, trainset, opts, out, diag);
    if (rc != DX_OK)
        return rc;
    dx_copro_opts c = {0};
    if (copro)
        c = *copro;
    if (!c.breadth)
        c.breadth = DEFAULT_BREADTH;
    if (!c.depth)
        c.depth = DEFAULT_DEPTH;
    if (c.init_temperature <= 0)
        c.init_temperature = DEFAULT_TEMPERATURE;
    if (c.breadth <= 1)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "copro: breadth must be greater than 1");
    /* Shared with the calling process and the examples of its evaluations
     * (dx__kept, eval_int.h): an optimizer stopped mid-run (its supervisor, a
     * caller that went away) or crashed closes its checkpoint and frees
     * its state once no example reads the program under evaluation. */
    copro_run *r = dx_calloc(1, sizeof *r);
    dx__kept *shared = r ? dx__kept_new(r, copro_run_free) : NULL;
    if (!shared) {
        dx_free(r);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    r->keep = dx__kept_keep(shared);
    r->train = trainset;
    r->o = dx__tp_normalized(opts);
    r->c = c;
    r->best = -1;
    r->diag = diag;
    char kind[160];
    snprintf(kind, sizeof kind, "copro|%zu|%zu|%.17g|%s", c.breadth, c.depth,
             c.init_temperature, c.prompt_lm_name ? c.prompt_lm_name : "");
    rc = dx__tp_ckpt_open(&r->ck, r->o.checkpoint_path, kind, student, NULL,
                          trainset, NULL, &r->o, 0, diag);
    if (rc == DX_OK) {
        r->res = dx__tp_result_new();
        if (!r->res)
            rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    int64_t t0 = dx_now_ms();
    if (rc == DX_OK)
        rc = copro_body(r, student);
    dx_tp_result *res = r->res;
    r->res = NULL;
    dx__kept_done(shared);
    if (rc != DX_OK) {
        dx_tp_result_free(res);
        return rc;
    }
    res->wall_s = (double)(dx_now_ms() - t0) / 1000.0;
    if (opts->report_path)
        dx_tp_write_report(res, "COPRO", opts->report_path, NULL);
    *out = res;
    return DX_OK;
}
