/*
 * mcc.c — MultiChainComparison (modules.h): DSPy's signature with M
 * reasoning_attempt_i inputs and a leading `rationale` output, and the
 * forward that turns M completions into "«I'm trying to ... my
 * prediction is ...»" attempts.
 */
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/modules.h"
#include "module_int.h"
#include "pyjson.h"

typedef struct mcc {
    size_t m;
    char *last_key; /* the signature's last output */
} mcc;

static void mcc_free(void *p)
{
    mcc *c = p;
    if (c)
        dx_free(c->last_key);
    dx_free(c);
}

static void *mcc_copy(const void *p)
{
    const mcc *src = p;
    mcc *c = dx_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->m = src->m;
    c->last_key = dx_strdup(src->last_key);
    if (!c->last_key) {
        dx_free(c);
        return NULL;
    }
    return c;
}

/* Python's s.strip().split("\n")[0].strip() into b. */
static void first_line(dx__sb *b, const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\v' ||
           *s == '\f')
        s++;
    size_t n = strcspn(s, "\n");
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' ||
                 s[n - 1] == '\v' || s[n - 1] == '\f'))
        n--;
    dx__sb_put(b, s, n);
}

static int mcc_forward(dx_ctx *ctx, const dx_module *self,
                       const dx_example *inputs, dx_prediction **out)
{
    const mcc *c = dx_module_ud(self);
    const cJSON *comps = dx_example_get(inputs, "completions");
    size_t n = cJSON_IsArray(comps) ? (size_t)cJSON_GetArraySize(comps) : 0;
    if (n != c->m)
        return dx_ctx_fail(ctx, DX_EINVAL,
                           "%s: The number of attempts (%zu) doesn't match the "
                           "expected number M (%zu). Please set the correct "
                           "value for M when initializing "
                           "MultiChainComparison.",
                           self->path, n, c->m);
    dx__held *h = dx__held_new();
    dx_example *in = h ? h->ex[0] = dx_example_new() : NULL;
    if (!in) {
        dx__held_free(h);
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    }
    int rc = DX_OK;
    size_t i = 0;
    const cJSON *comp;
    cJSON_ArrayForEach(comp, comps)
    {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(comp, "rationale");
        if (!r)
            r = cJSON_GetObjectItemCaseSensitive(comp, "reasoning");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(comp, c->last_key);
        if (!cJSON_IsString(r) || !a) {
            rc = dx_ctx_fail(ctx, DX_EINVAL,
                             "%s: completion %zu has no %s (a string "
                             "\"rationale\" or \"reasoning\" and \"%s\" "
                             "are needed)",
                             self->path, i + 1, !a ? c->last_key : "rationale",
                             c->last_key);
            break;
        }
        dx__sb answer, text;
        dx__sb_init(&answer);
        dx__sb_init(&text);
        dx__pystr(&answer, a);
        dx__sb_puts(&text, "\xC2\xABI'm trying to ");
        first_line(&text, r->valuestring);
        dx__sb_puts(&text, " I'm not sure but my prediction is ");
        const char *as = dx__sb_cstr(&answer);
        first_line(&text, as ? as : "");
        dx__sb_puts(&text, "\xC2\xBB");
        char key[48];
        snprintf(key, sizeof key, "reasoning_attempt_%zu", i + 1);
        const char *t = dx__sb_cstr(&text);
        rc = t && as ? dx_example_set_str(in, key, t) : DX_ENOMEM;
        dx__sb_free(&answer);
        dx__sb_free(&text);
        if (rc != DX_OK) {
            dx_ctx_fail(ctx, rc, "%s: out of memory", self->path);
            break;
        }
        i++;
    }
    /* The other inputs win over an attempt of the same name, as DSPy's
     * {**attempts, **kwargs}. */
    for (size_t k = 0; rc == DX_OK && k < dx_example_len(inputs); k++) {
        const char *key = dx_example_key(inputs, k);
        if (strcmp(key, "completions") == 0)
            continue;
        rc = dx_example_set_value(in, key, dx_example_value(inputs, k));
        if (rc != DX_OK)
            dx_ctx_fail(ctx, rc, "%s: out of memory", self->path);
    }
    if (rc == DX_OK)
        rc = dx_forward(ctx, dx_module_child(self, "predict"), in, out);
    dx__held_free(h);
    return rc;
}

dx_module *dx_multi_chain_comparison_new(dx_signature *s, size_t m,
                                         const dx_predict_opts *opts)
{
    if (!s || dx_signature_n_outputs(s) == 0)
        return NULL;
    if (m == 0)
        m = 3;
    dx__pyjson_init();
    dx_signature *cur = dx_signature_ref(s);
    int rc = DX_OK;
    for (size_t i = 0; rc == DX_OK && i < m; i++) {
        char name[48], prefix[48];
        snprintf(name, sizeof name, "reasoning_attempt_%zu", i + 1);
        snprintf(prefix, sizeof prefix, "Student Attempt #%zu:", i + 1);
        dx_field_spec f = {
            .name = name,
            .role = DX_FIELD_INPUT,
            .desc = "${reasoning attempt}",
            .prefix = prefix,
        };
        dx_signature *next = NULL;
        rc = dx_signature_append(cur, &f, &next, NULL);
        dx_signature_unref(cur);
        cur = next;
    }
    if (rc == DX_OK) {
        dx_field_spec f = {
            .name = "rationale",
            .role = DX_FIELD_OUTPUT,
            .desc = "${corrected reasoning}",
            .prefix = "Accurate Reasoning: Thank you everyone. Let's now "
                      "holistically",
        };
        dx_signature *next = NULL;
        rc = dx_signature_prepend(cur, &f, &next, NULL);
        dx_signature_unref(cur);
        cur = next;
    }
    if (rc != DX_OK)
        return NULL;
    dx_predict_opts po = opts ? *opts : (dx_predict_opts){0};
    if (!po.has_temperature) {
        po.has_temperature = true;
        po.temperature = 0.7;
    }
    dx_module *p = dx_predict_new(cur, &po);
    dx_signature_unref(cur);
    mcc *c = dx_calloc(1, sizeof *c);
    const dx_field *last =
        dx_signature_output(s, dx_signature_n_outputs(s) - 1);
    if (c)
        c->m = m;
    if (!p || !c || !(c->last_key = dx_strdup(last->name))) {
        dx_module_free(p);
        mcc_free(c);
        return NULL;
    }
    dx_module *mod = dx_module_new("MultiChainComparison", mcc_forward, c,
                                   mcc_free, mcc_copy);
    if (!mod) {
        dx_module_free(p);
        mcc_free(c);
        return NULL;
    }
    if (dx_module_add(mod, "predict", p) != DX_OK) {
        dx_module_free(mod);
        return NULL;
    }
    return mod;
}
