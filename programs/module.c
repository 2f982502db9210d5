/*
 * module.c — the module tree (Predict, ChainOfThought, user modules), its
 * predictor paths, copies, and predictions (see module.h). Running a tree
 * is predict.c; saving and loading it is state.c.
 */
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "module_int.h"
#include "pyjson.h"

/* ---- predictions ------------------------------------------------------ */

dx_prediction *dx_prediction_new(void)
{
    dx_prediction *p = dx_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->fields = dx_example_new();
    if (!p->fields) {
        dx_free(p);
        return NULL;
    }
    dx_usage_acc_init(&p->usage, "prediction");
    return p;
}

void dx_prediction_free(dx_prediction *p)
{
    if (!p)
        return;
    dx_example_free(p->fields);
    for (size_t i = 0; i < p->n_completions; i++)
        dx_example_free(p->completions[i]);
    dx_free(p->completions);
    dx_free(p->model);
    dx_free(p);
}

const dx_example *dx_prediction_fields(const dx_prediction *p)
{
    return p ? p->fields : NULL;
}

dx_example *dx_prediction_fields_mut(dx_prediction *p)
{
    return p ? p->fields : NULL;
}

const cJSON *dx_prediction_get(const dx_prediction *p, const char *key)
{
    return p ? dx_example_get(p->fields, key) : NULL;
}

const char *dx_prediction_get_str(const dx_prediction *p, const char *key,
                                  const char *dflt)
{
    return p ? dx_example_get_str(p->fields, key, dflt) : dflt;
}

size_t dx_prediction_n_completions(const dx_prediction *p)
{
    if (!p)
        return 0;
    return p->n_completions ? p->n_completions : 1;
}

const dx_example *dx_prediction_completion(const dx_prediction *p, size_t i)
{
    if (!p)
        return NULL;
    if (p->n_completions == 0)
        return i == 0 ? p->fields : NULL;
    return i < p->n_completions ? p->completions[i] : NULL;
}

const dx_usage_acc *dx_prediction_usage(const dx_prediction *p)
{
    return p ? &p->usage : NULL;
}

const char *dx_prediction_model(const dx_prediction *p)
{
    return p ? p->model : NULL;
}

dx_prediction *dx_prediction_copy(const dx_prediction *p)
{
    if (!p)
        return NULL;
    dx_prediction *c = dx_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fields = dx_example_copy(p->fields);
    c->usage = p->usage;
    c->model = p->model ? dx_strdup(p->model) : NULL;
    bool ok = c->fields && (!p->model || c->model);
    if (ok && p->n_completions) {
        c->completions = dx_calloc(p->n_completions, sizeof *c->completions);
        ok = c->completions != NULL;
        for (size_t i = 0; ok && i < p->n_completions; i++) {
            c->completions[i] = dx_example_copy(p->completions[i]);
            ok = c->completions[i] != NULL;
            c->n_completions = i + 1;
        }
    }
    if (!ok) {
        dx_prediction_free(c);
        return NULL;
    }
    return c;
}

/* ---- the tree ---------------------------------------------------------- */

static dx_module *module_alloc(dx__mod_kind kind, const char *type_name)
{
    dx_module *m = dx_calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->kind = kind;
    m->type_name = dx_strdup(type_name);
    m->path = dx_strdup("self");
    if (!m->type_name || !m->path) {
        dx_free(m->type_name);
        dx_free(m->path);
        dx_free(m);
        return NULL;
    }
    return m;
}

static int set_opts(dx_module *p, const dx_predict_opts *opts)
{
    char *lm_name = NULL;
    if (opts && opts->lm_name) {
        lm_name = dx_strdup(opts->lm_name);
        if (!lm_name)
            return DX_ENOMEM;
    }
    dx_free((char *)p->opts.lm_name);
    if (opts)
        p->opts = *opts;
    else
        memset(&p->opts, 0, sizeof p->opts);
    p->opts.lm_name = lm_name;
    return DX_OK;
}

dx_module *dx_predict_new(dx_signature *s, const dx_predict_opts *opts)
{
    if (!s)
        return NULL;
    dx__pyjson_init();
    dx_module *m = module_alloc(DX__MOD_PREDICT, "Predict");
    if (!m)
        return NULL;
    if (set_opts(m, opts) != DX_OK) {
        dx_module_free(m);
        return NULL;
    }
    m->sig = dx_signature_ref(s);
    return m;
}

static int cot_forward(dx_ctx *ctx, const dx_module *self,
                       const dx_example *inputs, dx_prediction **out)
{
    return dx_forward(ctx, dx_module_child(self, "predict"), inputs, out);
}

dx_module *dx_chain_of_thought_new(dx_signature *s, const dx_predict_opts *opts)
{
    if (!s)
        return NULL;
    dx_field_spec reasoning = {
        .name = "reasoning",
        .role = DX_FIELD_OUTPUT,
        .desc = "${reasoning}",
    };
    dx_signature *ext = NULL;
    if (dx_signature_prepend(s, &reasoning, &ext, NULL) != DX_OK)
        return NULL;
    dx_module *inner = dx_predict_new(ext, opts);
    dx_signature_unref(ext);
    if (!inner)
        return NULL;
    dx_module *m = module_alloc(DX__MOD_COT, "ChainOfThought");
    if (!m) {
        dx_module_free(inner);
        return NULL;
    }
    m->forward = cot_forward;
    if (dx_module_add(m, "predict", inner) != DX_OK) {
        dx_module_free(m);
        return NULL;
    }
    return m;
}

dx_module *dx_module_new(const char *type_name, dx_forward_fn forward, void *ud,
                         void (*ud_free)(void *),
                         void *(*ud_copy)(const void *))
{
    if (!type_name || !forward)
        return NULL;
    dx__pyjson_init();
    dx_module *m = module_alloc(DX__MOD_USER, type_name);
    if (!m)
        return NULL;
    m->forward = forward;
    m->ud = ud;
    m->ud_free = ud_free;
    m->ud_copy = ud_copy;
    return m;
}

/* A child name: an identifier, optionally followed by "[digits]" or
 * "['key']" parts, as DSPy's parameter paths print list and dict members. */
static bool valid_child_name(const char *s)
{
    if (!s ||
        !(*s == '_' || (*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z')))
        return false;
    const char *c = s + 1;
    while (*c == '_' || (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
           (*c >= '0' && *c <= '9'))
        c++;
    while (*c == '[') {
        const char *close = strchr(c, ']');
        if (!close || close == c + 1)
            return false;
        c = close + 1;
    }
    return *c == '\0';
}

int dx__module_repath(dx_module *m)
{
    char *path;
    if (!m->parent) {
        path = dx_strdup("self");
    } else if (!m->parent->parent) {
        path = dx_strdup(m->name);
    } else {
        size_t a = strlen(m->parent->path), b = strlen(m->name);
        path = dx_malloc(a + b + 2);
        if (path) {
            memcpy(path, m->parent->path, a);
            path[a] = '.';
            memcpy(path + a + 1, m->name, b + 1);
        }
    }
    if (!path)
        return DX_ENOMEM;
    dx_free(m->path);
    m->path = path;
    for (size_t i = 0; i < m->n_children; i++) {
        int rc = dx__module_repath(m->children[i]);
        if (rc != DX_OK)
            return rc;
    }
    return DX_OK;
}

int dx_module_add(dx_module *parent, const char *name, dx_module *child)
{
    if (!parent || !child || child->parent || !valid_child_name(name) ||
        child == parent) {
        if (child && !child->parent && child != parent)
            dx_module_free(child);
        return DX_EINVAL;
    }
    if (dx_module_child(parent, name)) {
        dx_module_free(child);
        return DX_EEXIST;
    }
    if (parent->n_children == parent->cap_children) {
        size_t cap = parent->cap_children ? parent->cap_children * 2 : 4;
        char **names = dx_realloc(parent->child_names, cap * sizeof *names);
        if (!names) {
            dx_module_free(child);
            return DX_ENOMEM;
        }
        parent->child_names = names;
        dx_module **kids = dx_realloc(parent->children, cap * sizeof *kids);
        if (!kids) {
            dx_module_free(child);
            return DX_ENOMEM;
        }
        parent->children = kids;
        parent->cap_children = cap;
    }
    char *copy = dx_strdup(name);
    char *own = dx_strdup(name);
    if (!copy || !own) {
        dx_free(copy);
        dx_free(own);
        dx_module_free(child);
        return DX_ENOMEM;
    }
    child->parent = parent;
    child->name = own;
    parent->child_names[parent->n_children] = copy;
    parent->children[parent->n_children++] = child;
    return dx__module_repath(child);
}

dx_module *dx_module_child(const dx_module *m, const char *name)
{
    if (!m || !name)
        return NULL;
    for (size_t i = 0; i < m->n_children; i++)
        if (strcmp(m->child_names[i], name) == 0)
            return m->children[i];
    return NULL;
}

size_t dx_module_n_children(const dx_module *m)
{
    return m ? m->n_children : 0;
}

const char *dx_module_child_name(const dx_module *m, size_t i)
{
    return m && i < m->n_children ? m->child_names[i] : NULL;
}

dx_module *dx_module_child_at(const dx_module *m, size_t i)
{
    return m && i < m->n_children ? m->children[i] : NULL;
}

const char *dx_module_type_name(const dx_module *m)
{
    return m ? m->type_name : NULL;
}

void *dx_module_ud(const dx_module *m)
{
    return m ? m->ud : NULL;
}

bool dx_module_is_predict(const dx_module *m)
{
    return m && m->kind == DX__MOD_PREDICT;
}

void dx_module_free(dx_module *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_children; i++) {
        dx_free(m->child_names[i]);
        dx_module_free(m->children[i]);
    }
    dx_free(m->child_names);
    dx_free(m->children);
    if (m->ud_free && m->ud)
        m->ud_free(m->ud);
    dx_signature_unref(m->sig);
    for (size_t i = 0; i < m->n_demos; i++)
        dx_example_free(m->demos[i]);
    dx_free(m->demos);
    dx_free((char *)m->opts.lm_name);
    cJSON_Delete(m->lm_state);
    cJSON_Delete(m->decl);
    dx_free(m->state_model);
    cJSON_Delete(m->traces);
    cJSON_Delete(m->train);
    dx_free(m->type_name);
    dx_free(m->name);
    dx_free(m->path);
    dx_free(m);
}

/* Fills c, a new module of m's kind (attached to its parent already, so
 * that the root reaches everything built so far), with a copy of m. */
static bool fill_copy(dx_module *c, const dx_module *m, bool reset)
{
    c->forward = m->forward;
    c->ud_free = m->ud_free;
    c->ud_copy = m->ud_copy;
    bool ok = true;
    if (m->ud) {
        if (m->ud_copy) {
            c->ud = m->ud_copy(m->ud);
            ok = c->ud != NULL;
        } else {
            c->ud = m->ud; /* shared, never freed (see module.h) */
        }
    }
    if (ok && m->decl)
        ok = (c->decl = cJSON_Duplicate(m->decl, true)) != NULL;
    if (ok && m->kind == DX__MOD_PREDICT) {
        c->sig = dx_signature_ref(m->sig);
        ok = set_opts(c, &m->opts) == DX_OK;
        if (ok && m->lm_state) {
            c->lm_state = cJSON_Duplicate(m->lm_state, true);
            ok = c->lm_state != NULL;
        }
        if (ok && m->state_model)
            ok = (c->state_model = dx_strdup(m->state_model)) != NULL;
        if (ok && !reset) {
            if (m->traces)
                ok = (c->traces = cJSON_Duplicate(m->traces, true)) != NULL;
            if (ok && m->train)
                ok = (c->train = cJSON_Duplicate(m->train, true)) != NULL;
            if (ok)
                ok =
                    dx_predict_set_demos(c, (const dx_example *const *)m->demos,
                                         m->n_demos) == DX_OK;
        }
    }
    for (size_t i = 0; ok && i < m->n_children; i++) {
        const dx_module *from = m->children[i];
        dx_module *kid = module_alloc(from->kind, from->type_name);
        ok = kid && dx_module_add(c, m->child_names[i], kid) == DX_OK &&
             fill_copy(kid, from, reset);
    }
    return ok;
}

static void free_partial_copy(void *c)
{
    dx_module_free(c);
}

static dx_module *copy_tree(const dx_module *m, bool reset)
{
    dx_module *c = module_alloc(m->kind, m->type_name);
    if (!c)
        return NULL;
    /* A module's ud_copy is the user's code: if it crashes, the process
     * ends mid-copy, and the tie frees what was built so far. */
    dx_ptie *tie = dx_ptie_new(c, free_partial_copy);
    bool ok = fill_copy(c, m, reset);
    dx_ptie_cut(tie);
    if (!ok) {
        dx_module_free(c);
        return NULL;
    }
    return c;
}

/* ---- what a forward holds ------------------------------------------------ */

static void held_release(dx__held *h)
{
    for (size_t i = 0; i < sizeof h->ex / sizeof h->ex[0]; i++)
        dx_example_free(h->ex[i]);
    for (size_t i = 0; i < sizeof h->pred / sizeof h->pred[0]; i++)
        dx_prediction_free(h->pred[i]);
    for (size_t i = 0; i < sizeof h->mod / sizeof h->mod[0]; i++)
        dx_module_free(h->mod[i]);
    for (size_t i = 0; i < sizeof h->json / sizeof h->json[0]; i++)
        cJSON_Delete(h->json[i]);
    for (size_t i = 0; i < sizeof h->trace / sizeof h->trace[0]; i++)
        dx_trace_free(&h->trace[i]);
    for (size_t i = 0; i < sizeof h->other / sizeof h->other[0]; i++)
        if (h->other[i].obj)
            h->other[i].free_fn(h->other[i].obj);
    dx_free(h);
}

/* The tie's callback: the forward's process ended while it held these. */
static void held_orphaned(void *obj)
{
    held_release(obj);
}

dx__held *dx__held_new(void)
{
    dx__held *h = dx_calloc(1, sizeof *h);
    if (h)
        h->tie = dx_ptie_new(h, held_orphaned);
    return h;
}

void dx__held_free(dx__held *h)
{
    if (!h)
        return;
    dx_ptie_cut(h->tie);
    held_release(h);
}

dx_module *dx_module_copy(const dx_module *m)
{
    return m ? copy_tree(m, false) : NULL;
}

dx_module *dx_module_reset_copy(const dx_module *m)
{
    return m ? copy_tree(m, true) : NULL;
}

/* ---- predictors -------------------------------------------------------- */

static int collect(const dx_module *m, dx_named_predictor **v, size_t *n,
                   size_t *cap)
{
    if (m->kind == DX__MOD_PREDICT) {
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 8;
            dx_named_predictor *nv = dx_realloc(*v, nc * sizeof *nv);
            if (!nv)
                return DX_ENOMEM;
            *v = nv;
            *cap = nc;
        }
        (*v)[(*n)++] = (dx_named_predictor){m->path, (dx_module *)m};
        return DX_OK;
    }
    for (size_t i = 0; i < m->n_children; i++) {
        int rc = collect(m->children[i], v, n, cap);
        if (rc != DX_OK)
            return rc;
    }
    return DX_OK;
}

int dx_module_predictors(const dx_module *m, dx_named_predictor **out,
                         size_t *n)
{
    if (!m || !out || !n)
        return DX_EINVAL;
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    int rc = collect(m, out, n, &cap);
    if (rc != DX_OK) {
        dx_free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

const char *dx_predict_path(const dx_module *p)
{
    return p ? p->path : NULL;
}

/* ---- Predict state ----------------------------------------------------- */

dx_signature *dx_predict_signature(const dx_module *p)
{
    return p && p->kind == DX__MOD_PREDICT ? p->sig : NULL;
}

int dx_predict_set_signature(dx_module *p, dx_signature *s)
{
    if (!p || p->kind != DX__MOD_PREDICT || !s)
        return DX_EINVAL;
    dx_signature *old = p->sig;
    p->sig = dx_signature_ref(s);
    dx_signature_unref(old);
    return DX_OK;
}

size_t dx_predict_n_demos(const dx_module *p)
{
    return p && p->kind == DX__MOD_PREDICT ? p->n_demos : 0;
}

const dx_example *dx_predict_demo(const dx_module *p, size_t i)
{
    return p && p->kind == DX__MOD_PREDICT && i < p->n_demos ? p->demos[i]
                                                             : NULL;
}

int dx_predict_set_demos(dx_module *p, const dx_example *const *demos, size_t n)
{
    if (!p || p->kind != DX__MOD_PREDICT || (n && !demos))
        return DX_EINVAL;
    dx_example **v = n ? dx_calloc(n, sizeof *v) : NULL;
    if (n && !v)
        return DX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        v[i] = dx_example_copy(demos[i]);
        if (!v[i]) {
            for (size_t k = 0; k < i; k++)
                dx_example_free(v[k]);
            dx_free(v);
            return DX_ENOMEM;
        }
    }
    for (size_t i = 0; i < p->n_demos; i++)
        dx_example_free(p->demos[i]);
    dx_free(p->demos);
    p->demos = v;
    p->n_demos = p->cap_demos = n;
    return DX_OK;
}

int dx_predict_add_demo(dx_module *p, const dx_example *demo)
{
    if (!p || p->kind != DX__MOD_PREDICT || !demo)
        return DX_EINVAL;
    if (p->n_demos == p->cap_demos) {
        size_t cap = p->cap_demos ? p->cap_demos * 2 : 4;
        dx_example **v = dx_realloc(p->demos, cap * sizeof *v);
        if (!v)
            return DX_ENOMEM;
        p->demos = v;
        p->cap_demos = cap;
    }
    dx_example *c = dx_example_copy(demo);
    if (!c)
        return DX_ENOMEM;
    p->demos[p->n_demos++] = c;
    return DX_OK;
}

const dx_predict_opts *dx_predict_get_opts(const dx_module *p)
{
    return p && p->kind == DX__MOD_PREDICT ? &p->opts : NULL;
}

int dx_predict_set_opts(dx_module *p, const dx_predict_opts *opts)
{
    if (!p || p->kind != DX__MOD_PREDICT)
        return DX_EINVAL;
    return set_opts(p, opts);
}
