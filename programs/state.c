/*
 * state.c — a program's state in Python DSPy's JSON layout: dump, load
 * (all or nothing), save to and load from files (see module.h).
 *
 * The layout, per predictor path: {"traces": [], "train": [], "demos":
 * [{field: value, ..., "augmented": true?}], "signature": {"instructions",
 * "fields": [{"prefix", "description"}]}, "lm": null | {LM state}}, then
 * "metadata": {"dependency_versions": {"python", "dspy", "cloudpickle"}}.
 * DSPy's loader compares exactly those three versions (and only warns on a
 * mismatch), so dspex writes the DSPy release it matches there and its own
 * version beside them.
 */
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "module_int.h"
#include "pyjson.h"

/* The DSPy release whose formats dspex follows. */
#define DSPY_COMPAT_VERSION "3.3.1"
#define DSPY_COMPAT_PYTHON "3.11"
#define DSPY_COMPAT_CLOUDPICKLE "3.1"

/* LM state keys that would send a loaded program's traffic elsewhere;
 * dropped on load, as DSPy does without allow_unsafe_lm_state. */
static const char *const UNSAFE_LM_KEYS[] = {"api_base", "base_url",
                                             "model_list"};

/* Add v to o under key (to the array o when key is NULL); when that
 * fails (v NULL, or no memory for the key) v is deleted and false
 * returned, so a state is never written with a member missing. */
static bool put(cJSON *o, const char *key, cJSON *v)
{
    if (v &&
        (key ? cJSON_AddItemToObject(o, key, v) : cJSON_AddItemToArray(o, v)))
        return true;
    cJSON_Delete(v);
    return false;
}

static cJSON *example_json(const dx_example *ex)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    for (size_t i = 0; i < dx_example_len(ex); i++) {
        if (!put(o, dx_example_key(ex, i),
                 cJSON_Duplicate(dx_example_value(ex, i), true))) {
            cJSON_Delete(o);
            return NULL;
        }
    }
    return o;
}

static cJSON *dup_or_empty(const cJSON *v)
{
    return v ? cJSON_Duplicate(v, true) : cJSON_CreateArray();
}

static cJSON *predictor_state(const dx_module *p)
{
    cJSON *st = cJSON_CreateObject();
    cJSON *traces = dup_or_empty(p->traces);
    cJSON *train = dup_or_empty(p->train);
    cJSON *demos = cJSON_CreateArray();
    cJSON *sig = dx_signature_dump_state(p->sig);
    cJSON *lm =
        p->lm_state ? cJSON_Duplicate(p->lm_state, true) : cJSON_CreateNull();
    bool ok = st && traces && train && demos && sig && lm;
    for (size_t i = 0; ok && i < p->n_demos; i++)
        ok = put(demos, NULL, example_json(p->demos[i]));
    if (!ok) {
        cJSON_Delete(st);
        cJSON_Delete(traces);
        cJSON_Delete(train);
        cJSON_Delete(demos);
        cJSON_Delete(sig);
        cJSON_Delete(lm);
        return NULL;
    }
    /* Each put consumes its value whether it succeeds or not. */
    ok = put(st, "traces", traces);
    ok = put(st, "train", train) && ok;
    ok = put(st, "demos", demos) && ok;
    ok = put(st, "signature", sig) && ok;
    ok = put(st, "lm", lm) && ok;
    if (!ok) {
        cJSON_Delete(st);
        return NULL;
    }
    return st;
}

cJSON *dx_module_dump_state(const dx_module *m)
{
    if (!m)
        return NULL;
    dx__pyjson_init();
    dx_named_predictor *preds = NULL;
    size_t n = 0;
    if (dx_module_predictors(m, &preds, &n) != DX_OK)
        return NULL;
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    for (size_t i = 0; ok && i < n; i++)
        ok = put(root, preds[i].path, predictor_state(preds[i].predict));
    dx_free(preds);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* ---- loading ----------------------------------------------------------- */

/* What one predictor gets from a state, built before anything changes. */
typedef struct pending {
    dx_module *predict;
    dx_signature *sig;
    dx_example **demos;
    size_t n_demos;
    cJSON *lm_state;
    char *state_model;
    cJSON *traces;
    cJSON *train;
    bool has_temperature;
    double temperature;
    int64_t max_tokens;
} pending;

static void pending_free(pending *p)
{
    dx_signature_unref(p->sig);
    for (size_t i = 0; i < p->n_demos; i++)
        dx_example_free(p->demos[i]);
    dx_free(p->demos);
    cJSON_Delete(p->lm_state);
    dx_free(p->state_model);
    cJSON_Delete(p->traces);
    cJSON_Delete(p->train);
}

static int load_demos(pending *pd, const char *path, const cJSON *demos,
                      dx_diag *diag)
{
    if (!demos || cJSON_IsNull(demos))
        return DX_OK;
    if (!cJSON_IsArray(demos))
        return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                           "state: \"%s\": \"demos\" must be a list", path);
    size_t n = (size_t)cJSON_GetArraySize(demos);
    pd->demos = n ? dx_calloc(n, sizeof *pd->demos) : NULL;
    if (n && !pd->demos)
        return DX_ENOMEM;
    size_t i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, demos)
    {
        if (!cJSON_IsObject(d))
            return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                               "state: \"%s\": demo %zu is not an object", path,
                               i);
        dx_example *ex = dx_example_new();
        if (!ex)
            return DX_ENOMEM;
        pd->demos[i] = ex;
        pd->n_demos = ++i;
        const cJSON *v;
        cJSON_ArrayForEach(v, d)
        {
            int rc = dx_example_set_value(ex, v->string, v);
            if (rc != DX_OK)
                return rc;
        }
    }
    return DX_OK;
}

static int load_lm(pending *pd, const char *path, const cJSON *lm,
                   dx_diag *diag)
{
    if (!lm || cJSON_IsNull(lm))
        return DX_OK;
    if (!cJSON_IsObject(lm))
        return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                           "state: \"%s\": \"lm\" must be an object or null",
                           path);
    pd->lm_state = cJSON_Duplicate(lm, true);
    if (!pd->lm_state)
        return DX_ENOMEM;
    for (size_t i = 0; i < sizeof UNSAFE_LM_KEYS / sizeof *UNSAFE_LM_KEYS; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(pd->lm_state,
                                                UNSAFE_LM_KEYS[i]);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(lm, "model");
    if (cJSON_IsString(model) && model->valuestring[0]) {
        pd->state_model = dx_strdup(model->valuestring);
        if (!pd->state_model)
            return DX_ENOMEM;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(lm, "temperature");
    if (cJSON_IsNumber(t)) {
        pd->has_temperature = true;
        pd->temperature = t->valuedouble;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(lm, "max_tokens");
    if (!cJSON_IsNumber(mt))
        mt = cJSON_GetObjectItemCaseSensitive(lm, "max_completion_tokens");
    int64_t max_tokens = 0;
    if (dx__json_whole(mt, 1, 9007199254740992.0, &max_tokens))
        pd->max_tokens = max_tokens;
    return DX_OK;
}

static int load_one(pending *pd, const char *path, const cJSON *st,
                    dx_diag *diag)
{
    if (!cJSON_IsObject(st))
        return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                           "state: \"%s\" must be an object", path);
    const cJSON *sig = cJSON_GetObjectItemCaseSensitive(st, "signature");
    if (!sig)
        return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                           "state: \"%s\" has no \"signature\"", path);
    int rc = dx_signature_load_state(pd->predict->sig, sig, &pd->sig, diag);
    if (rc != DX_OK) {
        dx_diag_prefix(diag, "state: \"%s\"", path);
        return rc;
    }
    if (cJSON_GetObjectItemCaseSensitive(st, "extended_signature"))
        return dx_diag_set(diag, DX_ENOTSUP, 0, 0,
                           "state: \"%s\": \"extended_signature\" (DSPy 2.5 "
                           "and older) is not supported",
                           path);
    rc = load_demos(pd, path, cJSON_GetObjectItemCaseSensitive(st, "demos"),
                    diag);
    if (rc == DX_OK)
        rc =
            load_lm(pd, path, cJSON_GetObjectItemCaseSensitive(st, "lm"), diag);
    const cJSON *traces = cJSON_GetObjectItemCaseSensitive(st, "traces");
    const cJSON *train = cJSON_GetObjectItemCaseSensitive(st, "train");
    if (rc == DX_OK && cJSON_IsArray(traces) &&
        cJSON_GetArraySize(traces) > 0 &&
        !(pd->traces = cJSON_Duplicate(traces, true)))
        rc = DX_ENOMEM;
    if (rc == DX_OK && cJSON_IsArray(train) && cJSON_GetArraySize(train) > 0 &&
        !(pd->train = cJSON_Duplicate(train, true)))
        rc = DX_ENOMEM;
    if (rc == DX_ENOMEM)
        dx_diag_set(diag, rc, 0, 0, "state: out of memory");
    return rc;
}

int dx_module_load_state(dx_module *m, const cJSON *state, dx_diag *diag)
{
    if (!m || !state)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "state: NULL argument");
    dx__pyjson_init();
    if (!cJSON_IsObject(state))
        return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                           "state: the top level must be an object");
    dx_named_predictor *preds = NULL;
    size_t n = 0;
    if (dx_module_predictors(m, &preds, &n) != DX_OK)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "state: out of memory");
    pending *pd = n ? dx_calloc(n, sizeof *pd) : NULL;
    if (n && !pd) {
        dx_free(preds);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "state: out of memory");
    }
    int rc = DX_OK;
    for (size_t i = 0; rc == DX_OK && i < n; i++) {
        pd[i].predict = preds[i].predict;
        const cJSON *st =
            cJSON_GetObjectItemCaseSensitive(state, preds[i].path);
        if (!st) {
            rc = dx_diag_set(diag, DX_ENOENT, 0, 0,
                             "state: no entry for predictor \"%s\" (the saved "
                             "program has a different structure)",
                             preds[i].path);
            break;
        }
        rc = load_one(&pd[i], preds[i].path, st, diag);
    }
    /* Everything read: now change the predictors. */
    for (size_t i = 0; rc == DX_OK && i < n; i++) {
        dx_module *p = pd[i].predict;
        dx_signature_unref(p->sig);
        p->sig = pd[i].sig;
        pd[i].sig = NULL;
        for (size_t k = 0; k < p->n_demos; k++)
            dx_example_free(p->demos[k]);
        dx_free(p->demos);
        p->demos = pd[i].demos;
        p->n_demos = p->cap_demos = pd[i].n_demos;
        pd[i].demos = NULL;
        pd[i].n_demos = 0;
        cJSON_Delete(p->lm_state);
        p->lm_state = pd[i].lm_state;
        pd[i].lm_state = NULL;
        dx_free(p->state_model);
        p->state_model = pd[i].state_model;
        pd[i].state_model = NULL;
        cJSON_Delete(p->traces);
        p->traces = pd[i].traces;
        pd[i].traces = NULL;
        cJSON_Delete(p->train);
        p->train = pd[i].train;
        pd[i].train = NULL;
        if (pd[i].has_temperature) {
            p->opts.has_temperature = true;
            p->opts.temperature = pd[i].temperature;
        }
        if (pd[i].max_tokens > 0)
            p->opts.max_tokens = pd[i].max_tokens;
    }
    for (size_t i = 0; i < n; i++)
        pending_free(&pd[i]);
    dx_free(pd);
    dx_free(preds);
    return rc;
}

/* ---- files ------------------------------------------------------------- */

int dx_module_save(const dx_module *m, const char *path, dx_diag *diag)
{
    if (!m || !path)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "save: NULL argument");
    cJSON *root = dx_module_dump_state(m);
    cJSON *meta = cJSON_CreateObject();
    cJSON *deps =
        meta ? cJSON_AddObjectToObject(meta, "dependency_versions") : NULL;
    bool ok =
        root && deps &&
        cJSON_AddStringToObject(deps, "python", DSPY_COMPAT_PYTHON) &&
        cJSON_AddStringToObject(deps, "dspy", DSPY_COMPAT_VERSION) &&
        cJSON_AddStringToObject(deps, "cloudpickle", DSPY_COMPAT_CLOUDPICKLE) &&
        cJSON_AddStringToObject(meta, "dspex_version", "0.1.0");
    if (!ok || !put(root, "metadata", meta)) {
        cJSON_Delete(root);
        if (!ok)
            cJSON_Delete(meta);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "save: out of memory");
    }
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, root, 2);
    dx__sb_putc(&b, '\n');
    cJSON_Delete(root);
    const char *text = dx__sb_cstr(&b);
    if (!text) {
        dx__sb_free(&b);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "save: out of memory");
    }

    int rc = dx__write_file_atomic(path, text, b.len, diag);
    if (rc != DX_OK)
        dx_diag_prefix(diag, "save");
    dx__sb_free(&b);
    return rc;
}

int dx_module_load(dx_module *m, const char *path, dx_diag *diag)
{
    if (!m || !path)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "load: NULL argument");
    dx__pyjson_init();
    dx__sb b;
    dx__sb_init(&b);
    int rrc = dx__read_file(path, &b, diag);
    if (rrc != DX_OK) {
        dx__sb_free(&b);
        dx_diag_prefix(diag, "load");
        return rrc;
    }
    int line = 0, col = 0;
    const char *what = NULL;
    cJSON *state =
        dx__json_parse_msg(b.p ? b.p : "", b.len, &line, &col, &what);
    dx__sb_free(&b);
    if (!state && what && strcmp(what, "out of memory") == 0)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "load: out of memory");
    if (!state)
        return dx_diag_set(diag, DX_ESYNTAX, line, col,
                           "%s:%d: not valid JSON at column %d", path, line,
                           col);
    int rc = dx_module_load_state(m, state, diag);
    if (rc != DX_OK)
        dx_diag_prefix(diag, "%s", path);
    cJSON_Delete(state);
    return rc;
}
