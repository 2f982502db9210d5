/*
 * knn.c — the KNN retriever over a trainset and the KNNFewShot optimizer
 * (modules.h): examples embedded as DSPy's "key: value | ..." texts by a
 * vectorizer (the user's, or a built-in hashed bag of words), nearest by
 * dot product, and a program that bootstraps demos from the neighbours of
 * each call's inputs before answering.
 *
 * The providers' embeddings APIs are not reachable from the LM client
 * yet, so embeddings come through the vectorizer callback; a user can
 * plug any embedding service in there.
 */
#include <ctype.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/modules.h"
#include "module_int.h"
#include "pyjson.h"

#define DEFAULT_DIM 1024

struct dx_knn {
    size_t k;
    dx_dataset *train;
    float *vectors; /* train->n * dim */
    size_t dim;
    dx_vectorizer vec;
};

int dx_knn_bag_of_words(const char *const *texts, size_t n, float *vectors,
                        size_t dim, void *ud)
{
    (void)ud;
    if ((n && (!texts || !vectors)) || dim == 0)
        return DX_EINVAL;
    for (size_t i = 0; i < n; i++) {
        float *v = vectors + i * dim;
        memset(v, 0, dim * sizeof *v);
        const unsigned char *s = (const unsigned char *)texts[i];
        while (s && *s) {
            while (*s && !isalnum(*s))
                s++;
            if (!*s)
                break;
            uint64_t h = 1469598103934665603ull;
            while (*s && isalnum(*s)) {
                h ^= (uint64_t)tolower(*s);
                h *= 1099511628211ull;
                s++;
            }
            v[h % dim] += 1.0f;
        }
        double norm = 0;
        for (size_t d = 0; d < dim; d++)
            norm += (double)v[d] * v[d];
        if (norm > 0) {
            float inv = (float)(1.0 / sqrt(norm));
            for (size_t d = 0; d < dim; d++)
                v[d] *= inv;
        }
    }
    return DX_OK;
}

/* " | ".join(f"{key}: {value}") over ex's input keys (all keys when it
 * has no designation, or when all is set). */
static char *example_text(const dx_example *ex, bool all)
{
    dx__sb b;
    dx__sb_init(&b);
    bool first = true;
    bool designated = dx_example_has_inputs(ex);
    for (size_t i = 0; i < dx_example_len(ex); i++) {
        const char *key = dx_example_key(ex, i);
        if (!all && designated && !dx_example_is_input(ex, key))
            continue;
        if (!first)
            dx__sb_puts(&b, " | ");
        first = false;
        dx__sb_puts(&b, key);
        dx__sb_puts(&b, ": ");
        dx__pystr(&b, dx_example_value(ex, i));
    }
    if (b.len == 0) {
        dx__sb_free(&b);
        return dx_strdup("");
    }
    return dx__sb_take(&b);
}

static int vectorize(const dx_vectorizer *v, const char *const *texts, size_t n,
                     float *out, size_t dim)
{
    return v->fn ? v->fn(texts, n, out, dim, v->ud)
                 : dx_knn_bag_of_words(texts, n, out, dim, NULL);
}

void dx_knn_free(dx_knn *knn)
{
    if (!knn)
        return;
    dx_dataset_free(knn->train);
    dx_free(knn->vectors);
    dx_free(knn);
}

int dx_knn_new(size_t k, const dx_dataset *trainset, const dx_vectorizer *vec,
               dx_knn **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    if (k == 0 || !trainset || trainset->n == 0 ||
        (vec && vec->fn && vec->dim == 0))
        return DX_EINVAL;
    dx__pyjson_init();
    dx_knn *knn = dx_calloc(1, sizeof *knn);
    if (!knn)
        return DX_ENOMEM;
    knn->k = k;
    if (vec)
        knn->vec = *vec;
    knn->dim = knn->vec.dim ? knn->vec.dim : DEFAULT_DIM;
    knn->train = dx_dataset_new();
    size_t n = trainset->n;
    char **texts = dx_calloc(n, sizeof *texts);
    knn->vectors = dx_calloc(n * knn->dim, sizeof *knn->vectors);
    int rc = knn->train && texts && knn->vectors ? DX_OK : DX_ENOMEM;
    for (size_t i = 0; rc == DX_OK && i < n; i++) {
        dx_example *c = dx_example_copy(trainset->items[i]);
        texts[i] = example_text(trainset->items[i], false);
        if (!c || !texts[i]) {
            dx_example_free(c);
            rc = DX_ENOMEM;
        } else {
            rc = dx_dataset_append(knn->train, c);
        }
    }
    if (rc == DX_OK)
        rc = vectorize(&knn->vec, (const char *const *)texts, n, knn->vectors,
                       knn->dim);
    for (size_t i = 0; texts && i < n; i++)
        dx_free(texts[i]);
    dx_free(texts);
    if (rc != DX_OK) {
        dx_knn_free(knn);
        return rc;
    }
    *out = knn;
    return DX_OK;
}

int dx_knn_query(const dx_knn *knn, const dx_example *inputs, size_t *idx,
                 size_t *n_out)
{
    if (!knn || !inputs || !idx || !n_out)
        return DX_EINVAL;
    *n_out = 0;
    size_t n = knn->train->n, dim = knn->dim;
    char *text = example_text(inputs, true);
    float *q = dx_calloc(dim, sizeof *q);
    double *score = dx_calloc(n, sizeof *score);
    size_t *order = dx_calloc(n, sizeof *order);
    int rc = text && q && score && order ? DX_OK : DX_ENOMEM;
    if (rc == DX_OK) {
        const char *t = text;
        rc = vectorize(&knn->vec, &t, 1, q, dim);
    }
    if (rc == DX_OK) {
        for (size_t i = 0; i < n; i++) {
            double s = 0;
            const float *v = knn->vectors + i * dim;
            for (size_t d = 0; d < dim; d++)
                s += (double)v[d] * q[d];
            score[i] = s;
        }
        /* Stable ascending insertion sort (n is a trainset); the last k
         * reversed are the answer, so ties put the later example first. */
        for (size_t i = 0; i < n; i++) {
            size_t j = i;
            while (j > 0 && score[order[j - 1]] > score[i]) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = i;
        }
        size_t k = knn->k < n ? knn->k : n;
        for (size_t i = 0; i < k; i++)
            idx[i] = order[n - 1 - i];
        *n_out = k;
    }
    dx_free(text);
    dx_free(q);
    dx_free(score);
    dx_free(order);
    return rc;
}

/* ---- KNNFewShot ------------------------------------------------------------ */

/* Shared by every copy of the program (it never changes after creation). */
typedef struct knnfs {
    atomic_int refs;
    dx_knn *knn;
    dx_module *student;
    dx_module *teacher; /* may be NULL */
    dx_tp_opts opts;
} knnfs;

static void knnfs_unref(void *p)
{
    knnfs *s = p;
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    dx_knn_free(s->knn);
    dx_module_free(s->student);
    dx_module_free(s->teacher);
    dx_free(s);
}

static void *knnfs_ref(const void *p)
{
    knnfs *s = (knnfs *)p;
    atomic_fetch_add(&s->refs, 1);
    return s;
}

static int knnfs_forward(dx_ctx *ctx, const dx_module *self,
                         const dx_example *inputs, dx_prediction **out)
{
    const knnfs *s = dx_module_ud(self);
    size_t k = s->knn->k, n = 0;
    size_t *idx = dx_calloc(k, sizeof *idx);
    if (!idx)
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    int rc = dx_knn_query(s->knn, inputs, idx, &n);
    if (rc != DX_OK) {
        dx_free(idx);
        return dx_ctx_fail(ctx, rc, "%s: KNN: %s", self->path, dx_strerror(rc));
    }
    dx_dataset *near = dx_dataset_new();
    for (size_t i = 0; near && rc == DX_OK && i < n; i++) {
        dx_example *c = dx_example_copy(s->knn->train->items[idx[i]]);
        rc = c ? dx_dataset_append(near, c) : DX_ENOMEM;
    }
    dx_free(idx);
    if (!near || rc != DX_OK) {
        dx_dataset_free(near);
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    }
    dx_tp_opts o = s->opts;
    o.checkpoint_path = NULL;
    o.report_path = NULL;
    o.progress = DX_EVAL_PROGRESS_OFF;
    /* The teacher runs under this call's settings unless opts named its
     * own LM. */
    if (dx_pid_is_none(o.call.lm) && !o.call.lm_name) {
        o.call.lm = ctx->lm;
        o.call.lm_name = ctx->lm_name;
        o.call.adapter = ctx->adapter;
        o.call.no_json_fallback = ctx->no_json_fallback;
        o.call.cache_mode = ctx->cache_mode;
    }
    if (!o.call.rollout_id)
        o.call.rollout_id = ctx->rollout_id;
    int64_t left = dx_ctx_remaining_ms(ctx);
    if (o.example_timeout_ms <= 0 || o.example_timeout_ms > left)
        o.example_timeout_ms = left > 0 ? left : 1;
    dx_tp_result *res = NULL;
    dx_diag d = {0};
    rc = dx_bootstrap_fewshot(s->student, s->teacher, near, &o, &res, &d);
    dx_dataset_free(near);
    if (rc != DX_OK)
        return dx_ctx_fail(ctx, rc,
                           "%s: BootstrapFewShot on the %zu nearest "
                           "examples: %s",
                           self->path, n, d.msg);
    dx_usage_acc_merge(&ctx->usage, &res->usage);
    rc = dx_forward(ctx, res->program, inputs, out);
    dx_tp_result_free(res);
    return rc;
}

int dx_knn_fewshot(const dx_module *student, const dx_module *teacher, size_t k,
                   const dx_dataset *trainset, const dx_vectorizer *vec,
                   const dx_tp_opts *opts, dx_module **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!student || !out || !opts || !trainset)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "KNNFewShot: NULL student, trainset, opts or out");
    if (opts->metric.kind == DX_METRIC_CUSTOM && !opts->metric.fn)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "KNNFewShot: a custom metric without a function");
    knnfs *s = dx_calloc(1, sizeof *s);
    if (!s)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    atomic_init(&s->refs, 1);
    s->opts = *opts;
    int rc = dx_knn_new(k, trainset, vec, &s->knn);
    if (rc != DX_OK) {
        knnfs_unref(s);
        if (rc == DX_EINVAL)
            return dx_diag_set(diag, rc, 0, 0,
                               "KNNFewShot: k must be > 0 and the trainset "
                               "not empty");
        return dx_diag_set(diag, rc, 0, 0,
                           "KNNFewShot: embedding the trainset: %s",
                           dx_strerror(rc));
    }
    s->student = dx_module_copy(student);
    s->teacher = teacher ? dx_module_copy(teacher) : NULL;
    dx_module *m = NULL;
    if (s->student && (!teacher || s->teacher))
        m = dx_module_new("KNNFewShot", knnfs_forward, s, knnfs_unref,
                          knnfs_ref);
    if (!m) {
        knnfs_unref(s);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    *out = m;
    return DX_OK;
}
