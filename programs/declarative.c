/*
 * declarative.c — programs declared in JSON (see program.h): parsing the
 * "program" member into a module tree, the pipeline module that runs its
 * steps with their field mappings, and saving declaration + state.
 */
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/program.h"
#include "dspex/react.h"
#include "dspex/retrieve.h"
#include "module_int.h"
#include "pyjson.h"
#include "reward_int.h"

/* One step: run `module` with inputs taken from the environment. */
typedef struct step_input {
    char *field;  /* the module's input field */
    char *source; /* "field" or "module.field" */
} step_input;

typedef struct step {
    char *module;
    step_input *inputs; /* NULL: every input by its own name */
    size_t n_inputs;
} step;

typedef struct pipeline {
    step *steps;
    size_t n_steps;
} pipeline;

static void pipeline_free(void *p_)
{
    pipeline *p = p_;
    if (!p)
        return;
    for (size_t i = 0; i < p->n_steps; i++) {
        dx_free(p->steps[i].module);
        for (size_t k = 0; k < p->steps[i].n_inputs; k++) {
            dx_free(p->steps[i].inputs[k].field);
            dx_free(p->steps[i].inputs[k].source);
        }
        dx_free(p->steps[i].inputs);
    }
    dx_free(p->steps);
    dx_free(p);
}

static void *pipeline_copy(const void *p_)
{
    const pipeline *p = p_;
    pipeline *c = dx_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->steps = dx_calloc(p->n_steps ? p->n_steps : 1, sizeof *c->steps);
    if (!c->steps) {
        dx_free(c);
        return NULL;
    }
    c->n_steps = p->n_steps;
    bool ok = true;
    for (size_t i = 0; ok && i < p->n_steps; i++) {
        step *d = &c->steps[i];
        const step *s = &p->steps[i];
        d->module = dx_strdup(s->module);
        ok = d->module != NULL;
        if (ok && s->n_inputs) {
            d->inputs = dx_calloc(s->n_inputs, sizeof *d->inputs);
            ok = d->inputs != NULL;
            for (size_t k = 0; ok && k < s->n_inputs; k++) {
                d->inputs[k].field = dx_strdup(s->inputs[k].field);
                d->inputs[k].source = dx_strdup(s->inputs[k].source);
                d->n_inputs = k + 1;
                ok = d->inputs[k].field && d->inputs[k].source;
            }
        }
    }
    if (!ok) {
        pipeline_free(c);
        return NULL;
    }
    return c;
}

/* The signature of the Predict behind a declared module. */
static const dx_signature *module_signature(const dx_module *m)
{
    if (dx_module_is_predict(m))
        return dx_predict_signature(m);
    return dx_predict_signature(dx_module_child(m, "predict"));
}

/* Put a step's outputs in the environment as "field" and "module.field". */
static int env_put(dx_example *env, const char *module, const dx_example *out)
{
    for (size_t i = 0; i < dx_example_len(out); i++) {
        const char *k = dx_example_key(out, i);
        const cJSON *v = dx_example_value(out, i);
        char qualified[256];
        snprintf(qualified, sizeof qualified, "%s.%s", module, k);
        int rc = dx_example_set_value(env, k, v);
        if (rc == DX_OK)
            rc = dx_example_set_value(env, qualified, v);
        if (rc != DX_OK)
            return rc;
    }
    return DX_OK;
}

static int pipeline_forward(dx_ctx *ctx, const dx_module *self,
                            const dx_example *in, dx_prediction **out)
{
    const pipeline *p = dx_module_ud(self);
    /* ex[0] the environment, ex[1] a step's inputs; pred[0] the last
     * step's prediction, pred[1] this one's. */
    dx__held *h = dx__held_new();
    dx_example *env = h ? h->ex[0] = dx_example_copy(in) : NULL;
    if (!env) {
        dx__held_free(h);
        return dx_ctx_fail(ctx, DX_ENOMEM, "out of memory");
    }
    int rc = DX_OK;
    for (size_t i = 0; rc == DX_OK && i < p->n_steps; i++) {
        const step *st = &p->steps[i];
        const dx_module *m = dx_module_child(self, st->module);
        const dx_signature *s = module_signature(m);
        dx_example *step_in = h->ex[1] = dx_example_new();
        if (!step_in) {
            rc = dx_ctx_fail(ctx, DX_ENOMEM, "out of memory");
            break;
        }
        if (st->n_inputs) {
            for (size_t k = 0; rc == DX_OK && k < st->n_inputs; k++) {
                const cJSON *v = dx_example_get(env, st->inputs[k].source);
                if (v)
                    rc = dx_example_set_value(step_in, st->inputs[k].field, v);
            }
        } else {
            for (size_t k = 0; rc == DX_OK && k < dx_signature_n_inputs(s);
                 k++) {
                const char *name = dx_signature_input(s, k)->name;
                const cJSON *v = dx_example_get(env, name);
                if (v)
                    rc = dx_example_set_value(step_in, name, v);
            }
        }
        if (rc == DX_OK)
            rc = dx_forward(ctx, m, step_in, &h->pred[1]);
        dx_example_free(step_in);
        h->ex[1] = NULL;
        if (rc == DX_OK)
            rc = env_put(env, st->module, dx_prediction_fields(h->pred[1]));
        if (rc == DX_OK) {
            dx_prediction_free(h->pred[0]);
            h->pred[0] = h->pred[1];
            h->pred[1] = NULL;
        }
    }
    if (rc == DX_OK) {
        *out = h->pred[0];
        h->pred[0] = NULL;
    }
    dx__held_free(h);
    return rc;
}

/* ---- parsing ------------------------------------------------------------ */

static const char *str_member(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A corpus path relative to the program file's directory. */
static void corpus_path(const char *name, const char *corpus, char *out,
                        size_t cap)
{
    const char *slash = strrchr(name, '/');
    if (corpus[0] == '/' || !slash)
        snprintf(out, cap, "%s", corpus);
    else
        snprintf(out, cap, "%.*s/%s", (int)(slash - name), name, corpus);
}

/* The retriever a module or tool declares: "corpus" (a JSONL file of
 * {"text": ...} passages, searched with BM25) or "colbertv2" (the URL of a
 * ColBERTv2 search server, with "post": true to POST), one of the two. */
static int declared_retriever(const char *name, size_t index, const char *where,
                              const cJSON *decl, dx_retriever **out,
                              dx_diag *diag)
{
    const char *corpus = str_member(decl, "corpus");
    const char *colbert = str_member(decl, "colbertv2");
    if (corpus && colbert)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules[%zu]%s: \"corpus\" and "
                           "\"colbertv2\" both given: one retriever each",
                           name, index, where);
    if (colbert) {
        const cJSON *post = cJSON_GetObjectItemCaseSensitive(decl, "post");
        dx_colbertv2_opts o = {.url = colbert, .post = cJSON_IsTrue(post)};
        dx_diag cd = {0};
        int rc = dx_colbertv2_retriever_new(&o, out, &cd);
        if (rc != DX_OK)
            return dx_diag_set(diag, rc, 0, 0, "%s: program.modules[%zu]%s: %s",
                               name, index, where, cd.msg);
        return DX_OK;
    }
    if (!corpus)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules[%zu]%s: \"corpus\" (a JSONL "
                           "file of {\"text\": ...} passages) or \"colbertv2\" "
                           "(a ColBERTv2 server's URL) is required",
                           name, index, where);
    char path[2048];
    corpus_path(name, corpus, path, sizeof path);
    dx_bm25 *ix = NULL;
    int rc = dx_bm25_new(NULL, &ix);
    if (rc != DX_OK)
        return dx_diag_set(diag, rc, 0, 0, "out of memory");
    dx_diag cd = {0};
    rc = dx_bm25_load(ix, path, &cd);
    if (rc != DX_OK) {
        dx_bm25_free(ix);
        return dx_diag_set(diag, rc, 0, 0, "%s: program.modules[%zu]%s: %s",
                           name, index, where, cd.msg);
    }
    return dx_bm25_retriever(ix, out);
}

/* Most passages a declared search or rag module asks for. */
#define MAX_TOP_K 1000

/* A whole-number member in [lo, hi]: DX_OK with *out (dflt when absent),
 * or an error naming the member and what it takes. where: "" or the
 * place inside the module (".tools[2]"). */
static int whole_member(const char *name, size_t index, const char *where,
                        const cJSON *decl, const char *key, int64_t lo,
                        int64_t hi, int64_t dflt, int64_t *out, dx_diag *diag)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(decl, key);
    *out = dflt;
    if (!v || dx__json_whole(v, (double)lo, (double)hi, out))
        return DX_OK;
    return dx_diag_set(diag, DX_EINVAL, 0, 0,
                       "%s: program.modules[%zu]%s: \"%s\" must be a whole "
                       "number from %lld to %lld",
                       name, index, where, key, (long long)lo, (long long)hi);
}

/* The tools of a react module: [{"builtin": "search", "corpus": ...,
 * "k": 3, "name": "search"}, {"builtin": "calculator"}]. */
static int build_tools(const char *name, size_t index, const cJSON *list,
                       dx_tool ***out, size_t *n, dx_diag *diag)
{
    size_t cap = (size_t)cJSON_GetArraySize(list);
    dx_tool **v = dx_calloc(cap ? cap : 1, sizeof *v);
    if (!v)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    size_t k = 0;
    int rc = DX_OK;
    const cJSON *t;
    cJSON_ArrayForEach(t, list)
    {
        const char *builtin = str_member(t, "builtin");
        char where[48];
        snprintf(where, sizeof where, ".tools[%zu]", k);
        if (builtin && strcmp(builtin, "calculator") == 0) {
            v[k] = dx_tool_calculator_new();
            rc = v[k] ? DX_OK : DX_ENOMEM;
        } else if (builtin && strcmp(builtin, "search") == 0) {
            dx_retriever *r = NULL;
            int64_t top = 3;
            rc = whole_member(name, index, where, t, "k", 1, MAX_TOP_K, 3, &top,
                              diag);
            if (rc == DX_OK)
                rc = declared_retriever(name, index, where, t, &r, diag);
            if (rc == DX_OK)
                rc = dx_retriever_tool(r, str_member(t, "name"), (size_t)top,
                                       &v[k], diag);
            dx_retriever_unref(r);
        } else {
            rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                             "%s: program.modules[%zu]%s: unknown built-in "
                             "tool \"%s\" (search, calculator)",
                             name, index, where, builtin ? builtin : "(none)");
        }
        if (rc != DX_OK)
            break;
        k++;
    }
    if (rc != DX_OK) {
        for (size_t i = 0; i < k; i++)
            dx_tool_unref(v[i]);
        dx_free(v);
        return rc;
    }
    *out = v;
    *n = k;
    return DX_OK;
}

static int build_module(const char *name, const cJSON *decl, size_t index,
                        dx_module **out, dx_diag *diag);

/* A number member: DX_OK with *out, or an error naming the member. */
static int num_member(const char *name, size_t index, const cJSON *decl,
                      const char *key, bool required, double min, double *out,
                      dx_diag *diag)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(decl, key);
    if (!v && !required)
        return DX_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble < min)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules[%zu]: \"%s\" must be a "
                           "number >= %g",
                           name, index, key, min);
    *out = v->valuedouble;
    return DX_OK;
}

/* best_of_n / refine: the module declared in "wraps", run up to n times
 * and judged by the declared reward (reward.c). */
static int build_wrapper(const char *name, const cJSON *decl, size_t index,
                         bool refine, dx_module **out, dx_diag *diag)
{
    const cJSON *wraps = cJSON_GetObjectItemCaseSensitive(decl, "wraps");
    if (!cJSON_IsObject(wraps))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules[%zu]: \"wraps\" (the "
                           "declaration of the module to run) is required",
                           name, index);
    double n = 0, threshold = 0, fail_count = 0;
    DX_TRY(num_member(name, index, decl, "n", true, 1, &n, diag));
    DX_TRY(num_member(name, index, decl, "threshold", true, -1e300, &threshold,
                      diag));
    DX_TRY(num_member(name, index, decl, "fail_count", false, 1, &fail_count,
                      diag));
    const cJSON *reward = cJSON_GetObjectItemCaseSensitive(decl, "reward");
    if (!reward)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules[%zu]: \"reward\" is "
                           "required",
                           name, index);
    /* The wrapped module's signature, to check the reward's fields. */
    const char *kind = str_member(wraps, "module");
    const char *sig_text = kind && strcmp(kind, "rag") == 0
                               ? "context, question -> answer"
                               : str_member(wraps, "signature");
    dx_signature *sig = NULL;
    /* A bad signature is reported below, where the wrapped module is
     * built; running out of memory here must not pass for it. */
    if (sig_text &&
        dx_signature_parse(sig_text, NULL, NULL, 0, &sig, NULL) == DX_ENOMEM)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    char where[160];
    snprintf(where, sizeof where, "%s: program.modules[%zu].reward", name,
             index);
    void *ud = NULL;
    char *code = NULL;
    int rc = dx__reward_compile(reward, where, sig, &ud, &code, diag);
    dx_signature_unref(sig);
    if (rc != DX_OK)
        return rc;
    dx_module *inner = NULL;
    rc = build_module(name, wraps, index, &inner, diag);
    if (rc != DX_OK) {
        dx__reward_free(ud);
        dx_free(code);
        return rc;
    }
    dx_best_of_n_opts o = {
        .n = (size_t)n,
        .reward = dx__reward_call,
        .reward_ud = ud,
        .reward_ud_free = dx__reward_free,
        .threshold = threshold,
        .fail_count = (size_t)fail_count,
        .reward_code = code,
    };
    /* The constructors take inner and ud in every case. */
    dx_module *m =
        refine ? dx_refine_new(inner, &o) : dx_best_of_n_new(inner, &o);
    dx_free(code);
    if (!m)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    *out = m;
    return DX_OK;
}

static int build_module(const char *name, const cJSON *decl, size_t index,
                        dx_module **out, dx_diag *diag)
{
    const char *kind = str_member(decl, "module");
    if (kind && (strcmp(kind, "best_of_n") == 0 || strcmp(kind, "refine") == 0))
        return build_wrapper(name, decl, index, kind[0] == 'r', out, diag);
    bool rag = kind && strcmp(kind, "rag") == 0;
    const char *sig_text =
        rag ? "context, question -> answer" : str_member(decl, "signature");
    if (!kind || !sig_text)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules[%zu]: \"module\" and "
                           "\"signature\" (strings) are required",
                           name, index);
    dx_signature *s = NULL;
    dx_diag sd = {0};
    int rc = dx_signature_parse(sig_text, str_member(decl, "instructions"),
                                NULL, 0, &s, &sd);
    if (rc != DX_OK)
        return dx_diag_set(diag, rc, 0, 0, "%s: program.modules[%zu]: %s", name,
                           index, sd.msg);
    dx_predict_opts po = {0};
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(decl, "config");
    if (cfg && !cJSON_IsObject(cfg)) {
        dx_signature_unref(s);
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules[%zu]: \"config\" must be an "
                           "object",
                           name, index);
    }
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(cfg, "temperature")) &&
        cJSON_IsNumber(v)) {
        po.has_temperature = true;
        po.temperature = v->valuedouble;
    }
    int64_t max_tokens = 0, n = 0;
    rc = whole_member(name, index, ".config", cfg, "max_tokens", 1, 1000000000,
                      0, &max_tokens, diag);
    if (rc == DX_OK)
        rc =
            whole_member(name, index, ".config", cfg, "n", 1, 128, 0, &n, diag);
    if (rc != DX_OK) {
        dx_signature_unref(s);
        return rc;
    }
    po.max_tokens = max_tokens;
    po.n = (int)n;
    po.lm_name = str_member(cfg, "lm");
    dx_module *m = NULL;
    if (strcmp(kind, "predict") == 0) {
        m = dx_predict_new(s, &po);
    } else if (strcmp(kind, "chain_of_thought") == 0) {
        m = dx_chain_of_thought_new(s, &po);
    } else if (rag) {
        dx_retriever *r = NULL;
        int64_t top = 3;
        rc = whole_member(name, index, "", decl, "k", 1, MAX_TOP_K, 3, &top,
                          diag);
        if (rc == DX_OK)
            rc = declared_retriever(name, index, "", decl, &r, diag);
        if (rc == DX_OK)
            m = dx_rag_new(r, (size_t)top, &po);
        dx_retriever_unref(r);
        if (rc != DX_OK) {
            dx_signature_unref(s);
            return rc;
        }
    } else if (strcmp(kind, "react") == 0) {
        dx_tool **tools = NULL;
        size_t nt = 0;
        int64_t max_iters = 0;
        rc = whole_member(name, index, "", decl, "max_iters", 1, 1000, 0,
                          &max_iters, diag);
        if (rc == DX_OK)
            rc = build_tools(name, index,
                             cJSON_GetObjectItemCaseSensitive(decl, "tools"),
                             &tools, &nt, diag);
        if (rc == DX_OK) {
            dx_react_opts ro = {
                .max_iters = (int)max_iters,
                .native_tools = cJSON_IsTrue(
                    cJSON_GetObjectItemCaseSensitive(decl, "native_tools")),
                .predict = &po,
            };
            dx_diag rd = {0};
            rc = dx_react_create(s, tools, nt, &ro, &m, &rd);
            if (rc != DX_OK)
                dx_diag_set(diag, rc, 0, 0, "%s: program.modules[%zu]: %s",
                            name, index, rd.msg);
            for (size_t i = 0; i < nt; i++)
                dx_tool_unref(tools[i]);
            dx_free(tools);
        }
        if (rc != DX_OK) {
            dx_signature_unref(s);
            return rc;
        }
    } else {
        dx_signature_unref(s);
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules[%zu]: unknown module \"%s\" "
                           "(predict, chain_of_thought, react, rag, best_of_n, "
                           "refine)",
                           name, index, kind);
    }
    dx_signature_unref(s);
    if (!m)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    *out = m;
    return DX_OK;
}

/* Parse "steps" (or make the default one-per-module list) and check that
 * every mapped source exists by then. */
static int build_pipeline(const char *name, const cJSON *prog,
                          const cJSON *modules, const dx_module *root,
                          pipeline **out, dx_diag *diag)
{
    pipeline *p = dx_calloc(1, sizeof *p);
    if (!p)
        return DX_ENOMEM;
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(prog, "steps");
    if (steps && !cJSON_IsArray(steps)) {
        dx_free(p);
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.steps must be a list", name);
    }
    size_t n = (size_t)cJSON_GetArraySize(steps ? steps : modules);
    /* Without steps: one per module, in order, inputs by name. */
    p->steps = dx_calloc(n ? n : 1, sizeof *p->steps);
    if (!p->steps) {
        dx_free(p);
        return DX_ENOMEM;
    }
    int rc = DX_OK;
    size_t i = 0;
    const cJSON *list = steps ? steps : modules;
    const cJSON *it;
    cJSON_ArrayForEach(it, list)
    {
        step *st = &p->steps[i];
        p->n_steps = i + 1;
        const char *mod = str_member(it, steps ? "module" : "name");
        if (!mod || !dx_module_child(root, mod)) {
            rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                             "%s: program.steps[%zu]: unknown module \"%s\"",
                             name, i, mod ? mod : "(none)");
            break;
        }
        if (!(st->module = dx_strdup(mod))) {
            rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
            break;
        }
        const cJSON *ins =
            steps ? cJSON_GetObjectItemCaseSensitive(it, "inputs") : NULL;
        if (ins && !cJSON_IsObject(ins)) {
            rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                             "%s: program.steps[%zu]: \"inputs\" must be an "
                             "object of field: source",
                             name, i);
            break;
        }
        size_t ni = (size_t)cJSON_GetArraySize(ins);
        if (ni) {
            st->inputs = dx_calloc(ni, sizeof *st->inputs);
            if (!st->inputs) {
                rc = DX_ENOMEM;
                break;
            }
        }
        const cJSON *m;
        cJSON_ArrayForEach(m, ins)
        {
            if (!cJSON_IsString(m)) {
                rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                                 "%s: program.steps[%zu]: input \"%s\" must "
                                 "name a source field",
                                 name, i, m->string);
                break;
            }
            /* "module.field" must name an earlier step's module. */
            const char *dot = strchr(m->valuestring, '.');
            if (dot) {
                bool earlier = false;
                for (size_t k = 0; k < i; k++)
                    if (strlen(p->steps[k].module) ==
                            (size_t)(dot - m->valuestring) &&
                        strncmp(p->steps[k].module, m->valuestring,
                                (size_t)(dot - m->valuestring)) == 0)
                        earlier = true;
                if (!earlier) {
                    rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                                     "%s: program.steps[%zu]: input \"%s\" "
                                     "is not produced before this step",
                                     name, i, m->valuestring);
                    break;
                }
            }
            step_input *si = &st->inputs[st->n_inputs++];
            si->field = dx_strdup(m->string);
            si->source = dx_strdup(m->valuestring);
            if (!si->field || !si->source) {
                rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
                break;
            }
        }
        if (rc != DX_OK)
            break;
        i++;
    }
    if (rc != DX_OK) {
        pipeline_free(p);
        return rc;
    }
    *out = p;
    return DX_OK;
}

/* Does the document hold state for any predictor of m? (*any; the
 * lookup itself can fail for want of memory, and must not read as "no
 * state": the program would load without its demos.) */
static int has_state(const cJSON *doc, const dx_module *m, bool *any)
{
    dx_named_predictor *preds = NULL;
    size_t n = 0;
    *any = false;
    int rc = dx_module_predictors(m, &preds, &n);
    for (size_t i = 0; rc == DX_OK && i < n && !*any; i++)
        *any = cJSON_GetObjectItemCaseSensitive(doc, preds[i].path) != NULL;
    dx_free(preds);
    return rc;
}

static int from_doc(const cJSON *doc, const char *name, dx_module **out,
                    dx_diag *diag)
{
    const cJSON *prog = cJSON_GetObjectItemCaseSensitive(doc, "program");
    if (!cJSON_IsObject(prog))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: no \"program\" object (a declarative program "
                           "file declares its modules there; a DSPy state "
                           "file alone needs the program it belongs to)",
                           name);
    const cJSON *modules = cJSON_GetObjectItemCaseSensitive(prog, "modules");
    if (!cJSON_IsArray(modules) || cJSON_GetArraySize(modules) == 0)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "%s: program.modules must be a non-empty list",
                           name);
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(prog, "steps");
    dx_module *root = NULL;
    int rc = DX_OK;
    if (cJSON_GetArraySize(modules) == 1 && !steps) {
        /* One module: it is the program (DSPy's paths "self" / "predict"). */
        rc = build_module(name, cJSON_GetArrayItem(modules, 0), 0, &root, diag);
    } else {
        root = dx_module_new("Program", pipeline_forward, NULL, pipeline_free,
                             pipeline_copy);
        if (!root)
            return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
        size_t i = 0;
        const cJSON *md;
        cJSON_ArrayForEach(md, modules)
        {
            const char *mname = str_member(md, "name");
            dx_module *m = NULL;
            if (!mname) {
                rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                                 "%s: program.modules[%zu]: \"name\" is "
                                 "required",
                                 name, i);
                break;
            }
            rc = build_module(name, md, i, &m, diag);
            if (rc != DX_OK)
                break;
            rc = dx_module_add(root, mname, m);
            if (rc != DX_OK) {
                dx_diag_set(diag, rc, 0, 0,
                            "%s: program.modules[%zu]: bad or repeated name "
                            "\"%s\"",
                            name, i, mname);
                break;
            }
            i++;
        }
        pipeline *p = NULL;
        if (rc == DX_OK)
            rc = build_pipeline(name, prog, modules, root, &p, diag);
        if (rc == DX_OK)
            root->ud = p;
    }
    if (rc == DX_OK && !(root->decl = cJSON_Duplicate(prog, true)))
        rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    bool any = false;
    if (rc == DX_OK && (rc = has_state(doc, root, &any)) != DX_OK)
        dx_diag_set(diag, rc, 0, 0, "%s: %s", name, dx_strerror(rc));
    if (rc == DX_OK && any) {
        rc = dx_module_load_state(root, doc, diag);
        if (rc != DX_OK)
            dx_diag_prefix(diag, "%s", name);
    }
    if (rc != DX_OK) {
        dx_module_free(root);
        return rc;
    }
    *out = root;
    return DX_OK;
}

int dx_program_parse(const char *json, size_t len, const char *name,
                     dx_module **out, dx_diag *diag)
{
    if (!json || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "program: NULL argument");
    *out = NULL;
    dx__pyjson_init();
    const char *nm = name ? name : "program";
    int line = 0, col = 0;
    const char *what = NULL;
    cJSON *doc = dx__json_parse_msg(json, len, &line, &col, &what);
    if (!doc && what && strcmp(what, "out of memory") == 0)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", nm);
    if (!doc)
        return dx_diag_set(diag, DX_ESYNTAX, line, col, "%s:%d:%d: %s", nm,
                           line, col, what ? what : "not valid JSON");
    int rc = cJSON_IsObject(doc)
                 ? from_doc(doc, nm, out, diag)
                 : dx_diag_set(diag, DX_ESYNTAX, 1, 1,
                               "%s: the top level must be an object", nm);
    cJSON_Delete(doc);
    return rc;
}

int dx_program_load(const char *path, dx_module **out, dx_diag *diag)
{
    if (!path || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "program: NULL argument");
    dx__sb b;
    dx__sb_init(&b);
    int rrc = dx__read_file(path, &b, diag);
    if (rrc != DX_OK) {
        dx__sb_free(&b);
        return rrc;
    }
    int rc = dx_program_parse(b.p ? b.p : "", b.len, path, out, diag);
    dx__sb_free(&b);
    return rc;
}

int dx_program_single(const char *kind, const char *signature,
                      const char *instructions, dx_module **out, dx_diag *diag)
{
    if (!kind || !signature || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "program: NULL argument");
    dx__pyjson_init();
    cJSON *doc = cJSON_CreateObject();
    cJSON *prog = doc ? cJSON_AddObjectToObject(doc, "program") : NULL;
    cJSON *mods = prog ? cJSON_AddArrayToObject(prog, "modules") : NULL;
    cJSON *m = cJSON_CreateObject();
    bool ok = mods && m && cJSON_AddStringToObject(m, "name", "self") &&
              cJSON_AddStringToObject(m, "module", kind) &&
              cJSON_AddStringToObject(m, "signature", signature) &&
              (!instructions ||
               cJSON_AddStringToObject(m, "instructions", instructions));
    if (!ok) {
        cJSON_Delete(m);
        cJSON_Delete(doc);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    cJSON_AddItemToArray(mods, m);
    int rc = from_doc(doc, "program", out, diag);
    cJSON_Delete(doc);
    return rc;
}

int dx_program_save(const dx_module *m, const char *path, dx_diag *diag)
{
    if (!m || !path)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "program: NULL argument");
    if (!m->decl)
        return dx_module_save(m, path, diag);
    /* dx_module_save writes state + metadata; the declaration goes first,
     * so write the whole document here. */
    cJSON *state = dx_module_dump_state(m);
    cJSON *doc = cJSON_CreateObject();
    cJSON *decl = cJSON_Duplicate(m->decl, true);
    if (!state || !doc || !decl) {
        cJSON_Delete(state);
        cJSON_Delete(doc);
        cJSON_Delete(decl);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    /* Every member must make it into the file: a failed add (no memory
     * for its key) fails the save instead of writing a file without it. */
    bool ok = cJSON_AddItemToObject(doc, "program", decl);
    if (!ok)
        cJSON_Delete(decl);
    cJSON *it = state->child;
    while (ok && it) {
        cJSON *next = it->next;
        cJSON *v = cJSON_DetachItemViaPointer(state, it);
        ok = cJSON_AddItemToObject(doc, v->string, v);
        if (!ok)
            cJSON_Delete(v);
        it = next;
    }
    cJSON_Delete(state);
    cJSON *meta = ok ? cJSON_AddObjectToObject(doc, "metadata") : NULL;
    cJSON *deps =
        meta ? cJSON_AddObjectToObject(meta, "dependency_versions") : NULL;
    ok = deps && cJSON_AddStringToObject(deps, "python", "3.11") &&
         cJSON_AddStringToObject(deps, "dspy", "3.3.1") &&
         cJSON_AddStringToObject(deps, "cloudpickle", "3.1") &&
         cJSON_AddStringToObject(meta, "dspex_version", "0.1.0");
    if (!ok) {
        cJSON_Delete(doc);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, doc, 2);
    dx__sb_putc(&b, '\n');
    cJSON_Delete(doc);
    const char *text = dx__sb_cstr(&b);
    int rc = text ? dx__write_file_atomic(path, text, b.len, diag)
                  : dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    dx__sb_free(&b);
    return rc;
}
