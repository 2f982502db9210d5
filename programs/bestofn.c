/*
 * bestofn.c — BestOfN and Refine (modules.h): one attempt loop that runs
 * a copy of the child module per attempt under its own rollout id at
 * temperature 1.0, scores it with the user's reward and keeps the best;
 * Refine adds DSPy's OfferFeedback call between attempts and feeds its
 * advice to the next attempt's predictors as the `hint_` input.
 *
 * Each attempt runs a copy of the child (as DSPy deep-copies it) so the
 * temperature and the hint can be set on its predictors without touching
 * the caller's tree, which other calls may be reading. The copy is a root,
 * so its trace carries paths relative to the child — the names DSPy's
 * feedback prompt uses — and they are rewritten to the real paths when
 * the chosen attempt's steps join the run's trace.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/modules.h"
#include "module_int.h"
#include "pyjson.h"

/* OfferFeedback, as DSPy's refine.py declares it (the docstring after
 * inspect.cleandoc; note DSPy's missing space in "kind ofscenario"). */
static const char FEEDBACK_INSTRUCTIONS[] =
    "In the discussion, assign blame to each module that contributed to the "
    "final reward being below the threshold, if\n"
    "any. Then, prescribe concrete advice of how the module should act on its "
    "future input when we retry the process, if\n"
    "it were to receive the same or similar inputs. If a module is not to "
    "blame, the advice should be N/A.\n"
    "The module will not see its own history, so it needs to rely on entirely "
    "concrete and actionable advice from you\n"
    "to avoid the same mistake on the same or similar inputs.";

static const char ADVICE_DESC[] =
    "For each module, describe very concretely, in this order: the specific "
    "scenarios in which it has made mistakes in the past and what each "
    "mistake was, followed by what it should do differently in that kind of"
    "scenario in the future. If the module is not to blame, write N/A.";

static const char HINT_DESC[] = "A hint to the module from an earlier run";

/* A reward_ud that belongs to the module, shared by all its copies. */
typedef struct reward_owner {
    atomic_size_t refs;
    void *ud;
    void (*free)(void *ud);
} reward_owner;

static void owner_unref(reward_owner *o)
{
    if (o && atomic_fetch_sub(&o->refs, 1) == 1) {
        o->free(o->ud);
        dx_free(o);
    }
}

typedef struct bon {
    dx_best_of_n_opts o; /* program_code / reward_code owned */
    reward_owner *owner; /* NULL when the caller owns reward_ud */
    bool refine;
    dx_signature *feedback_sig; /* Refine */
} bon;

static void bon_free(void *p)
{
    bon *b = p;
    if (!b)
        return;
    dx_free((char *)b->o.program_code);
    dx_free((char *)b->o.reward_code);
    dx_signature_unref(b->feedback_sig);
    owner_unref(b->owner);
    dx_free(b);
}

static void *bon_copy(const void *p)
{
    const bon *src = p;
    bon *b = dx_calloc(1, sizeof *b);
    if (!b)
        return NULL;
    *b = *src;
    b->o.program_code = NULL;
    b->o.reward_code = NULL;
    b->feedback_sig = NULL;
    if (b->owner)
        atomic_fetch_add(&b->owner->refs, 1);
    if ((src->o.program_code &&
         !(b->o.program_code = dx_strdup(src->o.program_code))) ||
        (src->o.reward_code &&
         !(b->o.reward_code = dx_strdup(src->o.reward_code)))) {
        bon_free(b);
        return NULL;
    }
    if (src->feedback_sig)
        b->feedback_sig = dx_signature_ref(src->feedback_sig);
    return b;
}

static int feedback_signature(dx_signature **out)
{
    dx_type *str = dx_type_new(DX_TYPE_STR);
    dx_type *flt = dx_type_new(DX_TYPE_FLOAT);
    dx_type *list = NULL, *dict = NULL;
    dx_diag d = {0};
    int rc = DX_ENOMEM;
    if (str && flt && dx_type_parse("list[str]", NULL, 0, &list, &d) == DX_OK &&
        dx_type_parse("dict[str, str]", NULL, 0, &dict, &d) == DX_OK) {
        const dx_field_spec f[] = {
            {"program_code", DX_FIELD_INPUT, str,
             "The code of the program that we are analyzing", NULL, NULL, NULL},
            {"modules_defn", DX_FIELD_INPUT, str,
             "The definition of each module in the program, including its I/O",
             NULL, NULL, NULL},
            {"program_inputs", DX_FIELD_INPUT, str,
             "The inputs to the program that we are analyzing", NULL, NULL,
             NULL},
            {"program_trajectory", DX_FIELD_INPUT, str,
             "The trajectory of the program's execution, showing each "
             "module's I/O",
             NULL, NULL, NULL},
            {"program_outputs", DX_FIELD_INPUT, str,
             "The outputs of the program that we are analyzing", NULL, NULL,
             NULL},
            {"reward_code", DX_FIELD_INPUT, str,
             "The code of the reward function that we are analyzing", NULL,
             NULL, NULL},
            {"target_threshold", DX_FIELD_INPUT, flt,
             "The target threshold for the reward function", NULL, NULL, NULL},
            {"reward_value", DX_FIELD_INPUT, flt,
             "The reward value assigned to the program's outputs", NULL, NULL,
             NULL},
            {"module_names", DX_FIELD_INPUT, list,
             "The names of the modules in the program, for which we seek "
             "advice",
             NULL, NULL, NULL},
            {"discussion", DX_FIELD_OUTPUT, str,
             "Discussing blame of where each module went wrong, if it did",
             NULL, NULL, NULL},
            {"advice", DX_FIELD_OUTPUT, dict, ADVICE_DESC, NULL, NULL, NULL},
        };
        rc = dx_signature_build(f, sizeof f / sizeof f[0],
                                FEEDBACK_INSTRUCTIONS, out, &d);
    }
    dx_type_free(str);
    dx_type_free(flt);
    dx_type_free(list);
    dx_type_free(dict);
    return rc;
}

static int bon_forward(dx_ctx *ctx, const dx_module *self,
                       const dx_example *inputs, dx_prediction **out);

static dx_module *make(dx_module *module, const dx_best_of_n_opts *opts,
                       bool refine)
{
    reward_owner *owner = NULL;
    if (opts && opts->reward_ud_free) {
        owner = dx_calloc(1, sizeof *owner);
        if (!owner)
            opts->reward_ud_free(opts->reward_ud);
        else
            *owner = (reward_owner){1, opts->reward_ud, opts->reward_ud_free};
    }
    if (!module || !opts || opts->n == 0 || !opts->reward ||
        (opts->reward_ud_free && !owner)) {
        owner_unref(owner);
        dx_module_free(module);
        return NULL;
    }
    bon *b = dx_calloc(1, sizeof *b);
    if (!b) {
        owner_unref(owner);
        dx_module_free(module);
        return NULL;
    }
    b->o = *opts;
    b->owner = owner;
    b->o.program_code = NULL;
    b->o.reward_code = NULL;
    b->refine = refine;
    if (b->o.fail_count == 0)
        b->o.fail_count = b->o.n;
    bool ok = (!opts->program_code ||
               (b->o.program_code = dx_strdup(opts->program_code))) &&
              (!opts->reward_code ||
               (b->o.reward_code = dx_strdup(opts->reward_code)));
    if (ok && refine)
        ok = feedback_signature(&b->feedback_sig) == DX_OK;
    if (!ok) {
        bon_free(b);
        dx_module_free(module);
        return NULL;
    }
    dx_module *m = dx_module_new(refine ? "Refine" : "BestOfN", bon_forward, b,
                                 bon_free, bon_copy);
    if (!m) {
        bon_free(b);
        dx_module_free(module);
        return NULL;
    }
    if (dx_module_add(m, "module", module) != DX_OK) {
        dx_module_free(m);
        return NULL;
    }
    return m;
}

dx_module *dx_best_of_n_new(dx_module *module, const dx_best_of_n_opts *opts)
{
    return make(module, opts, false);
}

dx_module *dx_refine_new(dx_module *module, const dx_best_of_n_opts *opts)
{
    return make(module, opts, true);
}

/* ---- inspect_modules ------------------------------------------------------ */

/* Python's str.splitlines over \n, \r\n and \r, each line prefixed with
 * "\n\t\t" (DSPy joins [""] + lines with "\n\t\t"). */
static void put_indented_lines(dx__sb *b, const char *s)
{
    while (*s) {
        size_t n = strcspn(s, "\r\n");
        dx__sb_puts(b, "\n\t\t");
        dx__sb_put(b, s, n);
        s += n;
        if (s[0] == '\r' && s[1] == '\n')
            s += 2;
        else if (*s)
            s++;
    }
}

/* get_field_description_string of one role. */
static int field_descriptions(const dx_signature *s, dx_field_role role,
                              dx__sb *b)
{
    size_t n = role == DX_FIELD_INPUT ? dx_signature_n_inputs(s)
                                      : dx_signature_n_outputs(s);
    dx__sb t;
    dx__sb_init(&t);
    for (size_t i = 0; i < n; i++) {
        const dx_field *f = role == DX_FIELD_INPUT ? dx_signature_input(s, i)
                                                   : dx_signature_output(s, i);
        char *tn = NULL;
        if (dx_type_name(f->type, &tn) != DX_OK) {
            dx__sb_free(&t);
            return DX_ENOMEM;
        }
        if (i)
            dx__sb_putc(&t, '\n');
        dx__sb_printf(&t, "%zu. `%s` (%s): ", i + 1, f->name, tn);
        dx_free(tn);
        size_t nl = strlen(f->name);
        bool dflt = strncmp(f->desc, "${", 2) == 0 &&
                    strncmp(f->desc + 2, f->name, nl) == 0 &&
                    strcmp(f->desc + 2 + nl, "}") == 0;
        if (!dflt)
            dx__sb_puts(&t, f->desc);
        if (f->constraints && f->constraints[0])
            dx__sb_printf(&t, "\nConstraints: %s", f->constraints);
    }
    const char *text = dx__sb_cstr(&t);
    if (!text) {
        dx__sb_free(&t);
        return DX_ENOMEM;
    }
    /* .strip() of the whole block, then the lines indented. */
    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
        text++;
    size_t len = strlen(text);
    while (len && (text[len - 1] == ' ' || text[len - 1] == '\t' ||
                   text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    char *stripped = dx_malloc(len + 1);
    if (!stripped) {
        dx__sb_free(&t);
        return DX_ENOMEM;
    }
    memcpy(stripped, text, len);
    stripped[len] = '\0';
    put_indented_lines(b, stripped);
    dx_free(stripped);
    dx__sb_free(&t);
    return DX_OK;
}

/* textwrap.dedent: the longest run of spaces/tabs that starts every
 * non-blank line is removed; whitespace-only lines become empty. */
static char *dedent(const char *s)
{
    const char *margin = NULL;
    size_t mlen = 0;
    for (const char *l = s; *l;) {
        size_t n = strcspn(l, "\n");
        size_t ws = strspn(l, " \t");
        if (ws > n)
            ws = n;
        if (ws < n) {
            if (!margin) {
                margin = l;
                mlen = ws;
            } else {
                size_t k = 0;
                while (k < mlen && k < ws && margin[k] == l[k])
                    k++;
                mlen = k;
            }
        }
        l += n;
        if (*l)
            l++;
    }
    dx__sb b;
    dx__sb_init(&b);
    for (const char *l = s; *l;) {
        size_t n = strcspn(l, "\n");
        size_t ws = strspn(l, " \t");
        if (ws >= n)
            ; /* blank line: nothing but its line break */
        else
            dx__sb_put(&b, l + mlen, n - mlen);
        l += n;
        if (*l) {
            dx__sb_putc(&b, '\n');
            l++;
        }
    }
    if (b.len == 0) {
        dx__sb_free(&b);
        return dx_strdup("");
    }
    return dx__sb_take(&b);
}

int dx_refine_inspect_modules(const dx_module *m, char **out)
{
    if (!m || !out)
        return DX_EINVAL;
    *out = NULL;
    dx_named_predictor *ps = NULL;
    size_t n = 0;
    int rc = dx_module_predictors(m, &ps, &n);
    if (rc != DX_OK)
        return rc;
    static const char SEP[] = "-------------------------------------------"
                              "-------------------------------------";
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_puts(&b, SEP);
    for (size_t i = 0; i < n && rc == DX_OK; i++) {
        const dx_signature *s = dx_predict_signature(ps[i].predict);
        /* Each element is strip("\n")'d before the "\n" join, so the
         * leading "\n" of the indented blocks goes away. */
        dx__sb_printf(&b, "\nModule %s\n\tInput Fields:\n", ps[i].path);
        dx__sb blk;
        dx__sb_init(&blk);
        rc = field_descriptions(s, DX_FIELD_INPUT, &blk);
        if (rc == DX_OK && blk.len)
            dx__sb_puts(&b, dx__sb_cstr(&blk) + 1);
        dx__sb_free(&blk);
        dx__sb_puts(&b, "\n\tOutput Fields:\n");
        dx__sb_init(&blk);
        if (rc == DX_OK)
            rc = field_descriptions(s, DX_FIELD_OUTPUT, &blk);
        if (rc == DX_OK && blk.len)
            dx__sb_puts(&b, dx__sb_cstr(&blk) + 1);
        dx__sb_free(&blk);
        char *ins = rc == DX_OK ? dedent(dx_signature_instructions(s)) : NULL;
        if (rc == DX_OK && !ins)
            rc = DX_ENOMEM;
        if (rc == DX_OK) {
            dx__sb_puts(&b, "\n\tOriginal Instructions: ");
            put_indented_lines(&b, ins);
            /* strip("\n") of the element removes trailing line breaks; the
             * indented lines never end in one. */
            dx__sb_putc(&b, '\n');
            dx__sb_puts(&b, SEP);
        }
        dx_free(ins);
    }
    dx_free(ps);
    if (rc != DX_OK || b.oom) {
        dx__sb_free(&b);
        return rc != DX_OK ? rc : DX_ENOMEM;
    }
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

/* ---- attempts -------------------------------------------------------------- */

/* A copy of child for one attempt: temperature 1.0 where the predictor
 * sets none, and, with advice, the `hint_` input on every predictor with
 * its advice ("N/A" when none) as the input's default value. */
static int attempt_copy(const dx_module *child, const cJSON *advice,
                        dx_module **out)
{
    *out = NULL;
    dx_module *c = dx_module_copy(child);
    if (!c)
        return DX_ENOMEM;
    dx_named_predictor *ps = NULL;
    size_t n = 0;
    int rc = dx_module_predictors(c, &ps, &n);
    for (size_t i = 0; rc == DX_OK && i < n; i++) {
        dx_module *p = ps[i].predict;
        if (!p->opts.has_temperature) {
            p->opts.has_temperature = true;
            p->opts.temperature = 1.0;
        }
        if (!advice)
            continue;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(advice, ps[i].path);
        dx__sb hint, js;
        dx__sb_init(&hint);
        dx__sb_init(&js);
        if (a)
            dx__pystr(&hint, a);
        else
            dx__sb_puts(&hint, "N/A");
        const char *h = dx__sb_cstr(&hint);
        if (h)
            dx__pyjson_str(&js, h, strlen(h));
        const char *dj = dx__sb_cstr(&js);
        dx_type *str = dx_type_new(DX_TYPE_STR);
        dx_field_spec f = {
            .name = "hint_",
            .role = DX_FIELD_INPUT,
            .type = str,
            .desc = HINT_DESC,
            .default_json = dj,
        };
        dx_signature *s = NULL;
        rc = h && dj && str ? dx_signature_append(p->sig, &f, &s, NULL)
                            : DX_ENOMEM;
        if (rc == DX_OK) {
            rc = dx_predict_set_signature(p, s);
            dx_signature_unref(s);
        }
        dx_type_free(str);
        dx__sb_free(&hint);
        dx__sb_free(&js);
    }
    dx_free(ps);
    if (rc != DX_OK) {
        dx_module_free(c);
        return rc;
    }
    *out = c;
    return DX_OK;
}

/* The run's trace gets the chosen attempt's steps, their paths made
 * absolute (the copy's "self" is the child itself). */
static void trace_join(dx_trace *run, dx_trace *att, const char *child_path)
{
    for (size_t i = 0; i < att->n; i++) {
        dx_trace_step *st = &att->steps[i];
        char *abs;
        if (strcmp(st->path, "self") == 0) {
            abs = dx_strdup(child_path);
        } else {
            size_t a = strlen(child_path), b = strlen(st->path);
            abs = dx_malloc(a + b + 2);
            if (abs) {
                memcpy(abs, child_path, a);
                abs[a] = '.';
                memcpy(abs + a + 1, st->path, b + 1);
            }
        }
        if (abs) {
            dx_free(st->path);
            st->path = abs;
        }
        if (run->n == DX_TRACE_MAX_STEPS) {
            dx_trace_step *old = &run->steps[0];
            dx_free(old->path);
            dx_signature_unref(old->signature);
            dx_example_free(old->inputs);
            dx_example_free(old->outputs);
            memmove(run->steps, run->steps + 1,
                    (run->n - 1) * sizeof *run->steps);
            run->n--;
        }
        if (run->n == run->cap) {
            size_t cap = run->cap ? run->cap * 2 : 8;
            dx_trace_step *v = dx_realloc(run->steps, cap * sizeof *v);
            if (!v)
                break; /* the steps stay in att and are freed with it */
            run->steps = v;
            run->cap = cap;
        }
        run->steps[run->n++] = *st;
        *st = (dx_trace_step){0};
    }
}

static cJSON *example_json(const dx_example *ex)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; o && i < dx_example_len(ex); i++) {
        cJSON *v = cJSON_Duplicate(dx_example_value(ex, i), true);
        if (!v || !cJSON_AddItemToObject(o, dx_example_key(ex, i), v)) {
            cJSON_Delete(v);
            cJSON_Delete(o);
            return NULL;
        }
    }
    return o;
}

/* orjson.dumps(v, option=OPT_INDENT_2) into the feedback inputs. */
static int put_dump(dx_example *in, const char *key, cJSON *v)
{
    if (!v)
        return DX_ENOMEM;
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, v, 2);
    cJSON_Delete(v);
    const char *s = dx__sb_cstr(&b);
    int rc = s ? dx_example_set_str(in, key, s) : DX_ENOMEM;
    dx__sb_free(&b);
    return rc;
}

static int put_float(dx_example *in, const char *key, double v)
{
    char buf[32];
    dx__pyfloat_repr(v, buf);
    return dx_example_set_str(in, key, buf);
}

/* DSPy's feedback step: OfferFeedback over the attempt; *advice gets the
 * advice object. */
static int offer_feedback(dx_ctx *ctx, const bon *b, const dx_module *self,
                          const dx_module *copy, const dx_example *inputs,
                          const dx_trace *att, const dx_prediction *pred,
                          double reward, cJSON **advice)
{
    dx_example *in = dx_example_new();
    if (!in)
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    const dx_module *child = dx_module_child(self, "module");
    char code[256];
    const char *program_code = b->o.program_code;
    if (!program_code) {
        snprintf(code, sizeof code,
                 "%s (a dspex module; its source is not available)",
                 dx_module_type_name(child));
        program_code = code;
    }
    int rc = dx_example_set_str(in, "program_code", program_code);
    char *defn = NULL;
    if (rc == DX_OK && (rc = dx_refine_inspect_modules(copy, &defn)) == DX_OK)
        rc = dx_example_set_str(in, "modules_defn", defn);
    dx_free(defn);
    if (rc == DX_OK)
        rc = put_dump(in, "program_inputs", example_json(inputs));
    if (rc == DX_OK) {
        cJSON *traj = cJSON_CreateArray();
        for (size_t i = 0; traj && i < att->n; i++) {
            cJSON *st = cJSON_CreateObject();
            cJSON *ij = example_json(att->steps[i].inputs);
            cJSON *oj = example_json(att->steps[i].outputs);
            if (!st || !ij || !oj ||
                !cJSON_AddStringToObject(st, "module_name",
                                         att->steps[i].path) ||
                !cJSON_AddItemToObject(st, "inputs", ij) ||
                (ij = NULL, !cJSON_AddItemToObject(st, "outputs", oj)) ||
                (oj = NULL, !cJSON_AddItemToArray(traj, st))) {
                cJSON_Delete(st);
                cJSON_Delete(ij);
                cJSON_Delete(oj);
                cJSON_Delete(traj);
                traj = NULL;
            }
        }
        rc = put_dump(in, "program_trajectory", traj);
    }
    if (rc == DX_OK)
        rc = put_dump(in, "program_outputs",
                      example_json(dx_prediction_fields(pred)));
    if (rc == DX_OK)
        rc = dx_example_set_str(
            in, "reward_code",
            b->o.reward_code ? b->o.reward_code
                             : "(a reward function written in C; its source "
                               "is not available)");
    if (rc == DX_OK)
        rc = put_float(in, "target_threshold", b->o.threshold);
    if (rc == DX_OK)
        rc = put_float(in, "reward_value", reward);
    if (rc == DX_OK) {
        cJSON *names = cJSON_CreateArray();
        dx_named_predictor *ps = NULL;
        size_t n = 0;
        if (names && dx_module_predictors(copy, &ps, &n) == DX_OK) {
            for (size_t i = 0; names && i < n; i++)
                if (!cJSON_AddItemToArray(names,
                                          cJSON_CreateString(ps[i].path))) {
                    cJSON_Delete(names);
                    names = NULL;
                }
        } else {
            cJSON_Delete(names);
            names = NULL;
        }
        dx_free(ps);
        rc = put_dump(in, "module_names", names);
    }
    if (rc != DX_OK) {
        dx_example_free(in);
        return dx_ctx_fail(ctx, rc, "%s: out of memory", self->path);
    }
    /* The feedback module and its inputs, held across its LM call. */
    dx__held *h = dx__held_new();
    dx_module *fb =
        h ? h->mod[0] = dx_predict_new(b->feedback_sig, NULL) : NULL;
    if (!fb) {
        dx_example_free(in);
        dx__held_free(h);
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    }
    h->ex[0] = in;
    /* Not a predictor of the program: kept out of the trace. */
    dx_trace *saved = ctx->trace;
    ctx->trace = NULL;
    dx_prediction *out = NULL;
    rc = dx_forward(ctx, fb, in, &out);
    ctx->trace = saved;
    dx__held_free(h);
    if (rc != DX_OK) {
        dx_diag_prefix(ctx->diag, "%s: OfferFeedback", self->path);
        return rc;
    }
    const cJSON *a = dx_prediction_get(out, "advice");
    cJSON *dup = a && cJSON_IsObject(a) ? cJSON_Duplicate(a, true)
                                        : cJSON_CreateObject();
    dx_prediction_free(out);
    if (!dup)
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    cJSON_Delete(*advice);
    *advice = dup;
    return DX_OK;
}

/* The attempt's rollout id: start + idx for an integer (or no) rollout
 * id, "<id>:<idx>" for any other. */
static void rollout_for(const char *base, size_t idx, char *buf, size_t cap)
{
    long long start = 0;
    bool numeric = true;
    if (base) {
        char *end = NULL;
        start = strtoll(base, &end, 10);
        numeric = *base && end && *end == '\0';
    }
    if (numeric)
        snprintf(buf, cap, "%lld", start + (long long)idx);
    else
        snprintf(buf, cap, "%s:%zu", base, idx);
}

static int bon_forward(dx_ctx *ctx, const dx_module *self,
                       const dx_example *inputs, dx_prediction **out)
{
    const bon *b = dx_module_ud(self);
    const dx_module *child = dx_module_child(self, "module");
    const char *name = self->type_name;
    const char *base_rollout = ctx->rollout_id;
    dx_trace *run_trace = ctx->trace;
    /* Held across the attempts' LM calls, the reward function and the
     * feedback call: the attempt's copy of the module (mod[0]), its
     * prediction and trace (pred[0], trace[0]), the best so far (pred[1],
     * trace[1]) and the advice for the next attempts (json[0]). */
    dx__held *h = dx__held_new();
    if (!h)
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    double best_reward = -INFINITY;
    long long fails_left = (long long)b->o.fail_count;
    int last_rc = DX_OK;
    int rc = DX_OK;
    bool raised = false;

    for (size_t idx = 0; idx < b->o.n; idx++) {
        char rid[96];
        rollout_for(base_rollout, idx, rid, sizeof rid);
        rc = attempt_copy(child, h->json[0], &h->mod[0]);
        if (rc != DX_OK)
            dx_ctx_fail(ctx, rc, "%s: out of memory", self->path);
        dx_module *copy = h->mod[0];
        dx_trace *att = &h->trace[0];
        if (rc == DX_OK) {
            ctx->rollout_id = rid;
            ctx->trace = att;
            rc = dx_forward(ctx, copy, inputs, &h->pred[0]);
            ctx->rollout_id = base_rollout;
            ctx->trace = run_trace;
        }
        double reward = 0;
        if (rc == DX_OK) {
            rc = b->o.reward(inputs, h->pred[0], b->o.reward_ud, &reward);
            if (rc != DX_OK)
                dx_ctx_fail(ctx, rc, "%s: the reward function failed: %s",
                            self->path, dx_strerror(rc));
        }
        bool stop = false;
        if (rc == DX_OK) {
            if (reward >= b->o.threshold || idx == b->o.n - 1)
                stop = true;
            else if (b->refine)
                rc = offer_feedback(ctx, b, self, copy, inputs, att, h->pred[0],
                                    reward, &h->json[0]);
            /* DSPy keeps the attempt before asking for feedback, so an
             * attempt whose feedback fails may still be the answer. */
            if (reward > best_reward) {
                best_reward = reward;
                dx_prediction_free(h->pred[1]);
                dx_trace_free(&h->trace[1]);
                h->pred[1] = h->pred[0];
                h->trace[1] = *att;
                h->pred[0] = NULL;
                *att = (dx_trace){0};
            }
        }
        dx_prediction_free(h->pred[0]);
        h->pred[0] = NULL;
        dx_trace_free(att);
        dx_module_free(copy);
        h->mod[0] = NULL;
        if (rc != DX_OK) {
            last_rc = rc;
            if ((long long)idx > fails_left) {
                raised = true;
                break;
            }
            fails_left--;
            rc = DX_OK;
            continue;
        }
        if (stop)
            break;
    }
    if (raised || !h->pred[1]) {
        dx__held_free(h);
        if (!raised)
            dx_diag_prefix(ctx->diag, "%s: all %zu attempts failed; the last",
                           name, b->o.n);
        return last_rc != DX_OK ? last_rc : DX_EINVAL;
    }
    if (run_trace)
        trace_join(run_trace, &h->trace[1], child->path);
    *out = h->pred[1];
    h->pred[1] = NULL;
    dx__held_free(h);
    return DX_OK;
}
