/*
 * mipro.c — MIPROv2 (see teleprompt.h) and the TPE sampler it searches
 * with.
 *
 * The steps and their random draws follow DSPy: one random.Random(seed)
 * samples the auto-mode valset, shuffles the demo-set trainsets, picks
 * each proposal's tip and cache namespace, and samples every minibatch,
 * in that order, so a run is a function of its seed and the LM's answers.
 * The search cannot match Optuna's draws (its TPE uses numpy's
 * generator); it follows Optuna's algorithm with CPython's generator.
 *
 * Checkpoints: every proposal and every trial's score are stored; a
 * resumed run makes the same random draws and reuses them, so it ends with
 * the same program and score.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/teleprompt.h"
#include "module_int.h"
#include "pyjson.h"
#include "pyrandom.h"
#include "teleprompt_int.h"

/* ---- TPE --------------------------------------------------------------------- */

#define TPE_STARTUP 10
#define TPE_CANDIDATES 24
#define TPE_PRIOR_WEIGHT 1.0

struct dx__tpe {
    size_t np;
    size_t *n_choices;
    size_t *obs; /* n_obs rows of np */
    double *val;
    size_t n_obs, cap;
    dx__pyrand rng;
};

dx__tpe *dx__tpe_new(const size_t *n_choices, size_t n_params, int64_t seed)
{
    dx__tpe *t = dx_calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->np = n_params;
    t->n_choices = dx_calloc(n_params ? n_params : 1, sizeof *t->n_choices);
    if (!t->n_choices) {
        dx_free(t);
        return NULL;
    }
    for (size_t j = 0; j < n_params; j++)
        t->n_choices[j] = n_choices[j] ? n_choices[j] : 1;
    dx__pyrand_seed(&t->rng, seed);
    return t;
}

void dx__tpe_free(dx__tpe *t)
{
    if (!t)
        return;
    dx_free(t->n_choices);
    dx_free(t->obs);
    dx_free(t->val);
    dx_free(t);
}

int dx__tpe_add(dx__tpe *t, const size_t *params, double value)
{
    if (t->n_obs == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        size_t *o = dx_realloc(t->obs, cap * (t->np ? t->np : 1) * sizeof *o);
        if (!o)
            return DX_ENOMEM;
        t->obs = o;
        double *v = dx_realloc(t->val, cap * sizeof *v);
        if (!v)
            return DX_ENOMEM;
        t->val = v;
        t->cap = cap;
    }
    memcpy(t->obs + t->n_obs * t->np, params, t->np * sizeof *params);
    t->val[t->n_obs++] = value;
    return DX_OK;
}

/* A Parzen mixture over the rows idx[0..n): kernel k < n puts
 * prior/(n+1) on every choice plus 1 on its observation (normalised); the
 * last kernel is uniform. Mixture weights: Optuna's default_weights (1
 * each below 25 observations, a ramp for the oldest beyond) and the prior
 * weight, normalised. */
typedef struct parzen {
    const dx__tpe *t;
    const size_t *idx;
    size_t n;
    double *w; /* n + 1 */
} parzen;

static int parzen_init(parzen *z, const dx__tpe *t, const size_t *idx, size_t n)
{
    z->t = t;
    z->idx = idx;
    z->n = n;
    z->w = dx_calloc(n + 1, sizeof *z->w);
    if (!z->w)
        return DX_ENOMEM;
    double sum = 0;
    for (size_t k = 0; k < n; k++) {
        /* idx is in observation order: the ramp weighs old ones less. */
        double w = 1.0;
        if (n >= 25 && k < n - 25)
            w = n - 25 > 1 ? 1.0 / (double)n + (1.0 - 1.0 / (double)n) *
                                                   (double)k / (double)(n - 26)
                           : 1.0 / (double)n;
        z->w[k] = w;
        sum += w;
    }
    z->w[n] = TPE_PRIOR_WEIGHT;
    sum += TPE_PRIOR_WEIGHT;
    for (size_t k = 0; k <= n; k++)
        z->w[k] /= sum;
    return DX_OK;
}

static double kernel_p(const parzen *z, size_t k, size_t j, size_t x)
{
    double c = (double)z->t->n_choices[j];
    if (k == z->n)
        return 1.0 / c;
    double base = TPE_PRIOR_WEIGHT / (double)(z->n + 1);
    double hit = z->t->obs[z->idx[k] * z->t->np + j] == x ? 1.0 : 0.0;
    return (base + hit) / (base * c + 1.0);
}

static double parzen_log_pdf(const parzen *z, const size_t *x)
{
    double s = 0;
    for (size_t k = 0; k <= z->n; k++) {
        double p = z->w[k];
        for (size_t j = 0; j < z->t->np; j++)
            p *= kernel_p(z, k, j, x[j]);
        s += p;
    }
    return log(s);
}

static void parzen_sample(const parzen *z, dx__pyrand *rng, size_t *x)
{
    double u = dx__pyrand_random(rng), acc = 0;
    size_t k = z->n;
    for (size_t i = 0; i <= z->n; i++) {
        acc += z->w[i];
        if (u < acc) {
            k = i;
            break;
        }
    }
    for (size_t j = 0; j < z->t->np; j++) {
        size_t c = z->t->n_choices[j];
        double v = dx__pyrand_random(rng), a = 0;
        x[j] = c - 1;
        for (size_t i = 0; i < c; i++) {
            a += kernel_p(z, k, j, i);
            if (v < a) {
                x[j] = i;
                break;
            }
        }
    }
}

static const dx__tpe *sort_tpe;
static int by_value_desc(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    double vx = sort_tpe->val[x], vy = sort_tpe->val[y];
    if (vx != vy)
        return vx > vy ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int by_index(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

int dx__tpe_suggest(dx__tpe *t, size_t *out)
{
    if (t->n_obs < TPE_STARTUP) {
        for (size_t j = 0; j < t->np; j++)
            out[j] = (size_t)dx__pyrand_below(&t->rng, t->n_choices[j]);
        return DX_OK;
    }
    size_t n = t->n_obs;
    size_t n_below = (size_t)ceil(0.1 * (double)n);
    if (n_below > 25)
        n_below = 25;
    size_t *order = dx_calloc(n, sizeof *order);
    size_t *cand = dx_calloc(t->np ? t->np : 1, sizeof *cand);
    if (!order || !cand) {
        dx_free(order);
        dx_free(cand);
        return DX_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    /* qsort is not reentrant-safe with a global; the sampler is used by
     * one thread at a time (see the header), and this global only lives
     * for the call. */
    sort_tpe = t;
    qsort(order, n, sizeof *order, by_value_desc);
    sort_tpe = NULL;
    qsort(order, n_below, sizeof *order, by_index);
    qsort(order + n_below, n - n_below, sizeof *order, by_index);
    parzen below = {0}, above = {0};
    int rc = parzen_init(&below, t, order, n_below);
    if (rc == DX_OK)
        rc = parzen_init(&above, t, order + n_below, n - n_below);
    double best = -INFINITY;
    for (int c = 0; rc == DX_OK && c < TPE_CANDIDATES; c++) {
        parzen_sample(&below, &t->rng, cand);
        double s = parzen_log_pdf(&below, cand) - parzen_log_pdf(&above, cand);
        if (s > best) {
            best = s;
            memcpy(out, cand, t->np * sizeof *cand);
        }
    }
    dx_free(below.w);
    dx_free(above.w);
    dx_free(order);
    dx_free(cand);
    return rc;
}

/* ---- the grounded proposer -------------------------------------------------- */

static const char *const TIPS[] = {
    "",
    "Don't be afraid to be creative when creating the new instruction!",
    "Keep the instruction clear and concise.",
    "Make sure your instruction is very informative and descriptive.",
    "The instruction should include a high stakes scenario in which the LM "
    "must solve the task!",
    "Include a persona that is relevant to the task in the instruction (ie. "
    "\"You are a ...\")",
};

static const char PROPOSE_INSTRUCTIONS[] =
    "Use the information below to learn about a task that we are trying to "
    "solve using calls to an LM, then generate a new instruction that will "
    "be used to prompt a Language Model to better solve the task.";

static bool word_char(unsigned char c)
{
    return c >= 0x80 || c == '_' || c == '\'' || c == '-' ||
           (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

static bool space_char(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* DSPy's strip_prefix: drop a leading "Up To Five Words:" label (after
 * any '*' and spaces), then Python's strip('"'). */
static char *strip_prefix(const char *text)
{
    const char *s = text;
    while (*s == '*' || space_char((unsigned char)*s))
        s++;
    const char *p = s, *start = text;
    for (int words = 0; words < 5; words++) {
        if (!word_char((unsigned char)*p))
            break;
        while (word_char((unsigned char)*p))
            p++;
        if (*p == ':') {
            p++;
            while (space_char((unsigned char)*p))
                p++;
            start = p;
            break;
        }
        if (!space_char((unsigned char)*p))
            break;
        while (space_char((unsigned char)*p))
            p++;
    }
    size_t a = 0, b = strlen(start);
    while (a < b && start[a] == '"')
        a++;
    while (b > a && start[b - 1] == '"')
        b--;
    char *out = dx_malloc(b - a + 1);
    if (out) {
        memcpy(out, start + a, b - a);
        out[b - a] = '\0';
    }
    return out;
}

typedef struct mipro_run {
    const dx_module *student;
    dx_tp_opts o;
    dx_mipro_opts m;
    dx__tp_ckpt ck;
    dx_tp_result *res;
    dx__pyrand rng;
    dx_named_predictor *preds; /* of program */
    size_t np;
    dx_module *program;
    dx_module **sets; /* demo-set programs */
    size_t n_sets;
    char ***instr; /* [p][i] */
    size_t *n_instr;
    dx_diag *diag;
} mipro_run;

static bool spent(const mipro_run *r)
{
    return dx__tp_over_budget(&r->o, &r->res->usage);
}

/* The task demos text: up to 3 augmented demos of predictor p from set
 * si, then the following sets, then the earlier ones. */
static char *task_demos(const mipro_run *r, size_t p, size_t si)
{
    dx__sb b;
    dx__sb_init(&b);
    size_t count = 0;
    const dx_signature *sig = dx_predict_signature(r->preds[p].predict);
    for (size_t k = 0; k < r->n_sets && count < 3; k++) {
        size_t s = (si + k) % r->n_sets;
        dx_named_predictor *sp = NULL;
        size_t ns = 0;
        if (dx_module_predictors(r->sets[s], &sp, &ns) != DX_OK || ns <= p) {
            dx_free(sp);
            continue;
        }
        const dx_module *pp = sp[p].predict;
        for (size_t i = 0; i < dx_predict_n_demos(pp) && count < 3; i++) {
            const dx_example *d = dx_predict_demo(pp, i);
            if (!dx_example_has(d, "augmented"))
                continue;
            if (count)
                dx__sb_puts(&b, "\n\n");
            for (size_t f = 0; f < dx_signature_n_fields(sig); f++) {
                const dx_field *fd = dx_signature_field(sig, f);
                dx__sb_printf(&b, "%s%s ", f ? "\n" : "", fd->prefix);
                const cJSON *v = dx_example_get(d, fd->name);
                if (v)
                    dx__pystr(&b, v);
                else
                    dx__sb_puts(&b, "None");
            }
            count++;
        }
        dx_free(sp);
    }
    if (count)
        dx__sb_puts(&b, "\n\n");
    if (count == 0 || si == 0) {
        dx__sb_free(&b);
        return dx_strdup("No task demos provided.");
    }
    return dx__sb_take(&b);
}

static int propose_one(mipro_run *r, size_t p, size_t si, const char *tip,
                       int64_t rollout, char **out)
{
    char key[64];
    snprintf(key, sizeof key, "instruction/%zu/%zu", p, si);
    cJSON *cv = dx__tp_ckpt_get(&r->ck, key);
    if (cJSON_IsString(cv)) {
        *out = dx_strdup(cv->valuestring);
        cJSON_Delete(cv);
        return *out ? DX_OK : DX_ENOMEM;
    }
    cJSON_Delete(cv);
    bool use_demos = !r->m.no_task_demos && r->n_sets > 0;
    bool use_tip = tip && *tip;
    char *demos = use_demos ? task_demos(r, p, si) : NULL;
    dx_field_spec f[4];
    size_t nf = 0;
    f[nf++] = (dx_field_spec){.name = "task_demos",
                              .role = DX_FIELD_INPUT,
                              .desc = "Example inputs/outputs of our module."};
    f[nf++] = (dx_field_spec){.name = "basic_instruction",
                              .role = DX_FIELD_INPUT,
                              .desc = "Basic instruction."};
    if (use_tip)
        f[nf++] = (dx_field_spec){.name = "tip",
                                  .role = DX_FIELD_INPUT,
                                  .desc = "A suggestion for how to go about "
                                          "generating the new instruction."};
    f[nf++] = (dx_field_spec){
        .name = "proposed_instruction",
        .role = DX_FIELD_OUTPUT,
        .desc = "Propose an instruction that will be used to prompt a "
                "Language Model to perform this task."};
    dx_signature *sig = NULL;
    dx_example *in = dx_example_new();
    int rc = in ? dx_signature_build(f, nf, PROPOSE_INSTRUCTIONS, &sig, NULL)
                : DX_ENOMEM;
    if (rc == DX_OK)
        rc = dx_example_set_str(in, "task_demos",
                                demos ? demos : "No task demos provided.");
    if (rc == DX_OK)
        rc = dx_example_set_str(in, "basic_instruction",
                                dx_signature_instructions(
                                    dx_predict_signature(r->preds[p].predict)));
    if (rc == DX_OK && use_tip)
        rc = dx_example_set_str(in, "tip", tip);
    dx_prediction *pred = NULL;
    char ns[32];
    snprintf(ns, sizeof ns, "%lld", (long long)rollout);
    if (rc == DX_OK)
        rc = dx__tp_ask(sig, in, 1, r->m.init_temperature, r->m.prompt_lm_name,
                        ns, &r->o, &pred, &r->res->usage, r->diag);
    else
        dx_diag_set(r->diag, rc, 0, 0, "mipro: out of memory");
    if (rc == DX_OK) {
        *out = strip_prefix(
            dx_prediction_get_str(pred, "proposed_instruction", ""));
        if (!*out)
            rc = dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
        cJSON *v = *out ? cJSON_CreateString(*out) : NULL;
        if (v)
            dx__tp_ckpt_put(&r->ck, key, v);
        cJSON_Delete(v);
    }
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_signature_unref(sig);
    dx_free(demos);
    return rc;
}

/* ---- datasets -------------------------------------------------------------- */

/* A view of n examples of src chosen by rng.sample (DSPy's
 * create_minibatch); items borrowed. */
static int sample_view(dx__pyrand *rng, const dx_dataset *src, size_t n,
                       dx_dataset *out)
{
    if (n > src->n)
        n = src->n;
    size_t *idx = dx_calloc(n ? n : 1, sizeof *idx);
    out->items = dx_calloc(n ? n : 1, sizeof *out->items);
    out->n = n;
    if (!idx || !out->items ||
        dx__pyrand_sample(rng, src->n, n, idx) != DX_OK) {
        dx_free(idx);
        dx_free(out->items);
        out->items = NULL;
        return DX_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        out->items[i] = src->items[idx[i]];
    dx_free(idx);
    return DX_OK;
}

/* ---- demo sets ---------------------------------------------------------------- */

static int demo_sets(mipro_run *r, const dx_dataset *train, size_t n_sets,
                     size_t max_boot, size_t max_lab)
{
    r->sets = dx_calloc(n_sets ? n_sets : 1, sizeof *r->sets);
    if (!r->sets)
        return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
    int rc = DX_OK;
    for (int64_t seed = -3; seed < (int64_t)n_sets - 3 && rc == DX_OK; seed++) {
        if (spent(r))
            break;
        dx_module *prog = NULL;
        dx_tp_opts bo = r->o;
        bo.report_path = NULL;
        bo.max_bootstrapped_demos = max_boot;
        bo.max_labeled_demos = max_lab;
        bo.labeled_none = max_lab == 0;
        if (seed == -3) {
            prog = dx_module_reset_copy(r->student);
            rc = prog ? DX_OK : DX_ENOMEM;
        } else if (seed == -2 && max_lab > 0) {
            rc = dx_labeled_fewshot(r->student, train, max_lab, true, &prog);
        } else {
            dx_dataset copy = {0};
            copy.n = train->n;
            copy.items = dx_calloc(train->n ? train->n : 1, sizeof *copy.items);
            if (!copy.items) {
                rc = DX_ENOMEM;
                break;
            }
            memcpy(copy.items, train->items, train->n * sizeof *copy.items);
            if (seed != -1) {
                dx__pyrand_shuffle_n(&r->rng, (void *)copy.items, copy.n,
                                     sizeof *copy.items);
                int64_t size = 1;
                dx__pyrand_randint(&r->rng, 1, (int64_t)max_boot, &size);
                bo.max_bootstrapped_demos = (size_t)size;
            }
            dx_tp_result *sub = NULL;
            rc = dx_bootstrap_fewshot(r->student, NULL, &copy, &bo, &sub,
                                      r->diag);
            if (rc == DX_OK) {
                prog = sub->program;
                sub->program = NULL;
                dx_usage_acc_merge(&r->res->usage, &sub->usage);
            }
            dx_tp_result_free(sub);
            dx_free(copy.items);
        }
        if (rc == DX_OK)
            r->sets[r->n_sets++] = prog;
    }
    if (rc == DX_ENOMEM)
        dx_diag_set(r->diag, rc, 0, 0, "mipro: out of memory");
    return rc;
}

/* ---- the search ------------------------------------------------------------- */

typedef struct combo {
    size_t *params;
    double sum;
    size_t n;
    bool full; /* fully evaluated */
} combo;

static dx_module *build(mipro_run *r, const size_t *params, bool demos)
{
    dx_module *c = dx_module_copy(r->program);
    dx_named_predictor *cp = NULL;
    size_t ncp = 0;
    if (!c || dx_module_predictors(c, &cp, &ncp) != DX_OK) {
        dx_module_free(c);
        return NULL;
    }
    int rc = DX_OK;
    for (size_t p = 0; p < ncp && rc == DX_OK; p++) {
        size_t ii = params[demos ? 2 * p : p];
        dx_signature *s = NULL;
        rc = dx_signature_with_instructions(dx_predict_signature(cp[p].predict),
                                            r->instr[p][ii], &s);
        if (rc == DX_OK)
            rc = dx_predict_set_signature(cp[p].predict, s);
        dx_signature_unref(s);
        if (rc == DX_OK && demos) {
            dx_named_predictor *sp = NULL;
            size_t ns = 0;
            rc = dx_module_predictors(r->sets[params[2 * p + 1]], &sp, &ns);
            if (rc == DX_OK && ns > p) {
                const dx_module *src = sp[p].predict;
                size_t nd = dx_predict_n_demos(src);
                const dx_example **d = dx_calloc(nd ? nd : 1, sizeof *d);
                for (size_t i = 0; d && i < nd; i++)
                    d[i] = dx_predict_demo(src, i);
                rc = d ? dx_predict_set_demos(cp[p].predict,
                                              (const dx_example *const *)d, nd)
                       : DX_ENOMEM;
                dx_free(d);
            }
            dx_free(sp);
        }
    }
    dx_free(cp);
    if (rc != DX_OK) {
        dx_module_free(c);
        return NULL;
    }
    return c;
}

/* One evaluation, from the checkpoint when it holds it for these params. */
static int trial_eval(mipro_run *r, int64_t num, const char *kind,
                      const dx_module *prog, const dx_dataset *ds,
                      const size_t *params, size_t nparams, double *score)
{
    dx_tp_trial t = {.id = num};
    snprintf(t.kind, sizeof t.kind, "%s", kind);
    dx_usage_acc_init(&t.usage, "candidate");
    int64_t t0 = dx_now_ms();
    char key[48];
    snprintf(key, sizeof key, "trial/%lld", (long long)num);
    cJSON *cv = dx__tp_ckpt_get(&r->ck, key);
    const cJSON *sc = cJSON_GetObjectItem(cv, "score");
    const cJSON *pa = cJSON_GetObjectItem(cv, "params");
    bool same = cJSON_IsNumber(sc) && cJSON_IsArray(pa) &&
                (size_t)cJSON_GetArraySize(pa) == nparams;
    for (size_t j = 0; same && j < nparams; j++)
        same = cJSON_GetNumberValue(cJSON_GetArrayItem(pa, (int)j)) ==
               (double)params[j];
    dx__tp_emit("optimize.trial", DX_TELEMETRY_START, "mipro", num, 0);
    int rc = DX_OK;
    if (same) {
        t.score = sc->valuedouble;
        t.from_checkpoint = true;
    } else {
        rc = dx__tp_evaluate_on(prog, ds, &r->o, &t.score, &t.usage, r->diag);
        cJSON *v = rc == DX_OK ? cJSON_CreateObject() : NULL;
        cJSON *arr = v ? cJSON_AddArrayToObject(v, "params") : NULL;
        for (size_t j = 0; arr && j < nparams; j++)
            cJSON_AddItemToArray(arr, cJSON_CreateNumber((double)params[j]));
        if (arr) {
            cJSON_AddNumberToObject(v, "score", t.score);
            dx__tp_ckpt_put(&r->ck, key, v);
        }
        cJSON_Delete(v);
    }
    cJSON_Delete(cv);
    if (rc != DX_OK)
        return rc;
    t.wall_s = (double)(dx_now_ms() - t0) / 1000.0;
    *score = t.score;
    dx__tp_emit("optimize.trial", DX_TELEMETRY_STOP, "mipro", num, t.score);
    return dx__tp_add_trial(r->res, &t);
}

static int keep_best(mipro_run *r, const dx_module *prog, double score,
                     int64_t num)
{
    if (score <= r->res->score)
        return DX_OK;
    dx_module *c = dx_module_copy(prog);
    if (!c)
        return DX_ENOMEM;
    dx_module_free(r->res->program);
    r->res->program = c;
    r->res->score = score;
    dx__tp_emit("optimize.best", DX_TELEMETRY_STOP, "mipro", num, score);
    return DX_OK;
}

static int search(mipro_run *r, const dx_dataset *val, size_t num_trials,
                  bool minibatch, size_t mb_size, size_t steps, int64_t seed)
{
    bool demos = r->n_sets > 0 && !r->m.zero_shot;
    size_t nparams = demos ? 2 * r->np : r->np;
    size_t *nch = dx_calloc(nparams ? nparams : 1, sizeof *nch);
    size_t *params = dx_calloc(nparams ? nparams : 1, sizeof *params);
    combo *combos = dx_calloc(num_trials + 1, sizeof *combos);
    size_t n_combos = 0;
    dx__tpe *tpe = NULL;
    int rc = nch && params && combos ? DX_OK : DX_ENOMEM;
    for (size_t p = 0; rc == DX_OK && p < r->np; p++) {
        nch[demos ? 2 * p : p] = r->n_instr[p];
        if (demos)
            nch[2 * p + 1] = r->n_sets;
    }
    if (rc == DX_OK && !(tpe = dx__tpe_new(nch, nparams, seed)))
        rc = DX_ENOMEM;
    /* The default program, fully evaluated: trial 1. */
    double score = 0;
    if (rc == DX_OK)
        rc = trial_eval(r, 1, "default", r->program, val, params, nparams,
                        &score);
    if (rc == DX_OK)
        rc = keep_best(r, r->program, score, 1);
    if (rc == DX_OK)
        rc = dx__tpe_add(tpe, params, score);
    size_t in_study = 1;
    size_t adjusted = minibatch ? num_trials + num_trials / steps + 1 +
                                      (num_trials % steps != 0 ? 1 : 0)
                                : num_trials;
    for (size_t k = 0; rc == DX_OK && k < num_trials && !spent(r); k++) {
        size_t num = in_study + 1;
        rc = dx__tpe_suggest(tpe, params);
        dx_module *cand = rc == DX_OK ? build(r, params, demos) : NULL;
        if (rc == DX_OK && !cand)
            rc = DX_ENOMEM;
        size_t batch = minibatch ? mb_size : val->n;
        dx_dataset mb = {0};
        const dx_dataset *ds = val;
        if (rc == DX_OK && batch < val->n) {
            rc = sample_view(&r->rng, val, batch, &mb);
            ds = &mb;
        }
        if (rc == DX_OK)
            rc = trial_eval(r, (int64_t)num, minibatch ? "minibatch" : "full",
                            cand, ds, params, nparams, &score);
        dx_free(mb.items);
        in_study++;
        if (rc == DX_OK)
            rc = dx__tpe_add(tpe, params, score);
        if (rc == DX_OK && !minibatch)
            rc = keep_best(r, cand, score, (int64_t)num);
        dx_module_free(cand);
        if (rc != DX_OK || !minibatch)
            continue;
        combo *c = NULL;
        for (size_t i = 0; i < n_combos && !c; i++)
            if (memcmp(combos[i].params, params, nparams * sizeof *params) == 0)
                c = &combos[i];
        if (!c) {
            c = &combos[n_combos];
            c->params = dx_calloc(nparams ? nparams : 1, sizeof *params);
            if (!c->params) {
                rc = DX_ENOMEM;
                break;
            }
            memcpy(c->params, params, nparams * sizeof *params);
            n_combos++;
        }
        c->sum += score;
        c->n++;
        if (num % (steps + 1) != 0 && num != adjusted - 1)
            continue;
        /* Full evaluation of the best-averaging combination not yet fully
         * evaluated (first of equal means, as Python's stable sort). */
        combo *top = NULL;
        for (size_t i = 0; i < n_combos; i++)
            if (!combos[i].full &&
                (!top || combos[i].sum / (double)combos[i].n >
                             top->sum / (double)top->n))
                top = &combos[i];
        if (!top)
            continue;
        dx_module *fp = build(r, top->params, demos);
        if (!fp) {
            rc = DX_ENOMEM;
            break;
        }
        rc = trial_eval(r, (int64_t)num + 1, "full", fp, val, top->params,
                        nparams, &score);
        in_study++;
        top->full = true;
        if (rc == DX_OK)
            rc = dx__tpe_add(tpe, top->params, score);
        if (rc == DX_OK)
            rc = keep_best(r, fp, score, (int64_t)num + 1);
        dx_module_free(fp);
    }
    for (size_t i = 0; combos && i < n_combos; i++)
        dx_free(combos[i].params);
    dx_free(combos);
    dx_free(nch);
    dx_free(params);
    dx__tpe_free(tpe);
    if (rc == DX_ENOMEM)
        dx_diag_set(r->diag, rc, 0, 0, "mipro: out of memory");
    return rc;
}

/* ---- MIPROv2 ------------------------------------------------------------------ */

static const struct {
    size_t n, val;
} AUTO[] = {{6, 100}, {12, 300}, {18, 1000}};

static int mipro_body(mipro_run *r, const dx_dataset *train,
                      const dx_dataset *val_in)
{
    const dx_mipro_opts *m = &r->m;
    int64_t seed = m->has_seed ? m->seed : 9;
    dx__pyrand_seed(&r->rng, seed);
    size_t max_boot = r->o.max_bootstrapped_demos;
    size_t max_lab = r->o.labeled_none ? 0 : r->o.max_labeled_demos;
    bool zero_shot = m->zero_shot;
    dx_dataset val = *val_in, val_view = {0};
    size_t n_instr, n_fewshot, num_trials;
    bool minibatch = !m->no_minibatch;
    if (m->auto_mode != DX_MIPRO_AUTO_NONE) {
        size_t a = (size_t)m->auto_mode;
        if (a > 2)
            return dx_diag_set(r->diag, DX_EINVAL, 0, 0, "mipro: bad auto");
        if (sample_view(&r->rng, val_in, AUTO[a].val, &val_view) != DX_OK)
            return dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
        val = val_view;
        minibatch = val.n > 50;
        n_fewshot = AUTO[a].n;
        n_instr = zero_shot ? AUTO[a].n : AUTO[a].n / 2;
        size_t vars = r->np * (zero_shot ? 1 : 2);
        double t1 = 2.0 * (double)vars * log2((double)AUTO[a].n);
        double t2 = 1.5 * (double)AUTO[a].n;
        num_trials = (size_t)(t1 > t2 ? t1 : t2);
    } else {
        if (!m->num_candidates || !m->num_trials)
            return dx_diag_set(r->diag, DX_EINVAL, 0, 0,
                               "mipro: without auto, num_candidates and "
                               "num_trials must be given");
        n_instr = n_fewshot = m->num_candidates;
        num_trials = m->num_trials;
    }
    size_t mb_size = m->minibatch_size ? m->minibatch_size : 35;
    size_t steps =
        m->minibatch_full_eval_steps ? m->minibatch_full_eval_steps : 5;
    int rc = DX_OK;
    if (minibatch && mb_size > val.n)
        rc = dx_diag_set(r->diag, DX_EINVAL, 0, 0,
                         "mipro: minibatch size %zu exceeds the valset (%zu)",
                         mb_size, val.n);
    /* Step 1: demo sets (zero-shot: 3 bootstrapped, for the proposer). */
    if (rc == DX_OK)
        rc = demo_sets(r, train, n_fewshot, zero_shot ? 3 : max_boot,
                       zero_shot ? 0 : max_lab);
    /* Step 2: instructions, the current one first. */
    r->instr = rc == DX_OK ? dx_calloc(r->np, sizeof *r->instr) : NULL;
    r->n_instr = rc == DX_OK ? dx_calloc(r->np, sizeof *r->n_instr) : NULL;
    if (rc == DX_OK && (!r->instr || !r->n_instr))
        rc = dx_diag_set(r->diag, DX_ENOMEM, 0, 0, "out of memory");
    size_t num_demos = r->n_sets ? r->n_sets : 1;
    size_t per = n_instr < num_demos ? n_instr : num_demos;
    if (r->n_sets == 0)
        per = n_instr;
    for (size_t p = 0; rc == DX_OK && p < r->np; p++) {
        r->instr[p] = dx_calloc(per ? per : 1, sizeof **r->instr);
        if (!r->instr[p]) {
            rc = DX_ENOMEM;
            break;
        }
        for (size_t i = 0; rc == DX_OK && i < per; i++) {
            size_t tip = 0;
            if (!r->m.no_tip)
                dx__pyrand_choice(&r->rng, 6, &tip);
            int64_t rollout = 0;
            dx__pyrand_randint(&r->rng, 0, 1000000000, &rollout);
            if (spent(r))
                break;
            rc = propose_one(r, p, i, r->m.no_tip ? NULL : TIPS[tip], rollout,
                             &r->instr[p][i]);
            if (rc == DX_OK)
                r->n_instr[p]++;
        }
        if (rc == DX_OK && r->n_instr[p] == 0) {
            r->instr[p][0] = NULL;
            r->n_instr[p] = 1;
        }
        if (rc == DX_OK) {
            char *orig = dx_strdup(dx_signature_instructions(
                dx_predict_signature(r->preds[p].predict)));
            if (!orig) {
                rc = DX_ENOMEM;
                break;
            }
            dx_free(r->instr[p][0]);
            r->instr[p][0] = orig;
        }
    }
    /* Step 3: the search. */
    if (rc == DX_OK && !spent(r))
        rc = search(r, &val, num_trials, minibatch, mb_size, steps, seed);
    if (rc == DX_OK && !r->res->program)
        rc = dx_diag_set(r->diag, DX_ELIMIT, 0, 0,
                         "mipro: nothing was evaluated (budget exhausted?)");
    dx_free(val_view.items);
    return rc;
}

int dx_mipro(const dx_module *student, const dx_dataset *trainset,
             const dx_dataset *valset, const dx_tp_opts *opts,
             const dx_mipro_opts *mipro, dx_tp_result **out, dx_diag *diag)
{
    int rc = dx__tp_check_opts(student, trainset, opts, out, diag);
    if (rc != DX_OK)
        return rc;
    mipro_run r = {.student = student, .diag = diag};
    /* MIPROv2's demo defaults: 4 and 4. */
    dx_tp_opts o = *opts;
    if (!o.max_labeled_demos && !o.labeled_none)
        o.max_labeled_demos = 4;
    r.o = dx__tp_normalized(&o);
    if (mipro)
        r.m = *mipro;
    if (r.m.init_temperature <= 0)
        r.m.init_temperature = 1.0;
    /* DSPy: without a valset, the last 80% of the trainset (at most
     * 1000) validates and the rest trains. */
    dx_dataset train = *trainset, val = {0};
    if (valset) {
        val = *valset;
    } else {
        if (trainset->n < 2)
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "mipro: the trainset needs at least 2 "
                               "examples without a valset");
        size_t vn = (size_t)((double)trainset->n * 0.8);
        vn = vn < 1 ? 1 : vn > 1000 ? 1000 : vn;
        train.n = trainset->n - vn;
        val.items = trainset->items + train.n;
        val.n = vn;
    }
    if (train.n == 0 || val.n == 0)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "mipro: empty trainset or valset");
    char kind[200];
    snprintf(kind, sizeof kind,
             "mipro|%d|%zu|%zu|%d|%zu|%zu|%lld|%d|%.17g|%d%d|%s|%d",
             (int)r.m.auto_mode, r.m.num_candidates, r.m.num_trials,
             (int)r.m.no_minibatch, r.m.minibatch_size,
             r.m.minibatch_full_eval_steps, (long long)r.m.seed,
             (int)r.m.has_seed, r.m.init_temperature, (int)r.m.no_task_demos,
             (int)r.m.no_tip, r.m.prompt_lm_name ? r.m.prompt_lm_name : "",
             (int)r.m.zero_shot);
    rc = dx__tp_ckpt_open(&r.ck, r.o.checkpoint_path, kind, student, NULL,
                          &train, &val, &r.o, 0, diag);
    if (rc != DX_OK)
        return rc;
    r.res = dx__tp_result_new();
    r.program = dx_module_copy(student);
    if (!r.res || !r.program ||
        dx_module_predictors(r.program, &r.preds, &r.np) != DX_OK) {
        rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    } else if (r.np == 0) {
        rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                         "mipro: the program has no predictors");
    }
    int64_t t0 = dx_now_ms();
    if (rc == DX_OK)
        rc = mipro_body(&r, &train, &val);
    dx__tp_ckpt_close(&r.ck);
    for (size_t p = 0; r.instr && p < r.np; p++) {
        for (size_t i = 0; r.instr[p] && i < r.n_instr[p]; i++)
            dx_free(r.instr[p][i]);
        dx_free(r.instr[p]);
    }
    dx_free(r.instr);
    dx_free(r.n_instr);
    for (size_t s = 0; s < r.n_sets; s++)
        dx_module_free(r.sets[s]);
    dx_free(r.sets);
    dx_free(r.preds);
    dx_module_free(r.program);
    if (rc != DX_OK) {
        dx_tp_result_free(r.res);
        return rc;
    }
    r.res->wall_s = (double)(dx_now_ms() - t0) / 1000.0;
    if (r.o.report_path)
        dx_tp_write_report(r.res, "MIPROv2", r.o.report_path, NULL);
    *out = r.res;
    return DX_OK;
}
