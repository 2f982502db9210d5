/*
 * knn.c — the KNN retriever over a trainset and the KNNFewShot optimizer
 * (modules.h): examples embedded as DSPy's "key: value | ..." texts by a
 * vectorizer (the user's, or a built-in hashed bag of words), nearest by
 * dot product, and a program that bootstraps demos from the neighbours of
 * each call's inputs before answering; and the vectorizer that embeds
 * through a provider's embeddings API (any other embedding service plugs
 * in as a user's vectorizer callback).
 */
#include <ctype.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/modules.h"
#include "dspex/runtime.h"
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

static void free_dataset(void *ds)
{
    dx_dataset_free(ds);
}

static void free_result(void *res)
{
    dx_tp_result_free(res);
}

static int knnfs_forward(dx_ctx *ctx, const dx_module *self,
                         const dx_example *inputs, dx_prediction **out)
{
    const knnfs *s = dx_module_ud(self);
    size_t k = s->knn->k, n = 0;
    size_t *idx = dx_calloc(k, sizeof *idx);
    if (!idx)
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    /* What this call holds across its blocking steps (an embedding call,
     * the bootstrap, the student's LM calls) is tied to the process, so an
     * example killed at its deadline there loses nothing. */
    dx_ptie *tie = dx_ptie_new(idx, dx_free);
    int rc = dx_knn_query(s->knn, inputs, idx, &n);
    dx_ptie_cut(tie);
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
    tie = dx_ptie_new(near, free_dataset);
    rc = dx_bootstrap_fewshot(s->student, s->teacher, near, &o, &res, &d);
    dx_ptie_cut(tie);
    dx_dataset_free(near);
    if (rc != DX_OK)
        return dx_ctx_fail(ctx, rc,
                           "%s: BootstrapFewShot on the %zu nearest "
                           "examples: %s",
                           self->path, n, d.msg);
    dx_usage_acc_merge(&ctx->usage, &res->usage);
    tie = dx_ptie_new(res, free_result);
    rc = dx_forward(ctx, res->program, inputs, out);
    dx_ptie_cut(tie);
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
    if (opts->metric.kind == DX_METRIC_CUSTOM && !opts->metric.fn &&
        !opts->metric.pass)
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

/* ---- the providers' embeddings as a vectorizer ---------------------------- */

typedef struct embed_vec {
    dx_lm_config *c;
    size_t batch;
    int64_t timeout_ms;
} embed_vec;

/* One dx_embed_texts call, made where it can run: in the calling process,
 * or from a host thread in a process of its own that the caller waits
 * for (the job lives on the heap: process stacks are not shared). */
typedef struct embed_job {
    const embed_vec *ev;
    const char *const *texts;
    size_t n;
    dx_lm_embeddings *out;
    dx_lm_error err;
    int rc;
} embed_job;

static void embed_job_run(void *arg)
{
    embed_job *j = arg;
    j->rc = dx_embed_texts(j->ev->c, j->texts, j->n, j->ev->batch,
                           j->ev->timeout_ms, &j->out, &j->err);
}

/* Run j and return its code. *abandoned is set when the waiting stopped
 * before the job's process ended (the runtime is stopping): the job may
 * still be written to, so the caller must not free it. */
static int embed_now(embed_job *j, bool *abandoned)
{
    *abandoned = false;
    if (!dx_pid_is_none(dx_self())) {
        embed_job_run(j);
        return j->rc;
    }
    dx_pid pid;
    j->rc = DX_EDOWN; /* if the process dies before setting it */
    int rc = dx_spawn(embed_job_run, j, &pid);
    if (rc != DX_OK)
        return rc;
    rc = dx_wait_exit(pid, DX_INFINITY, NULL);
    /* DX_ENOPROC: it ended before the wait began. */
    if (rc != DX_OK && rc != DX_ENOPROC) {
        *abandoned = true;
        return rc;
    }
    return j->rc;
}

static int embed_vectorize(const char *const *texts, size_t n, float *vectors,
                           size_t dim, void *ud)
{
    embed_job *j = dx_calloc(1, sizeof *j);
    if (!j)
        return DX_ENOMEM;
    *j = (embed_job){.ev = ud, .texts = texts, .n = n};
    bool abandoned;
    int rc = embed_now(j, &abandoned);
    if (abandoned)
        return rc;
    if (rc == DX_OK && j->out->dim != dim)
        rc = DX_EPROVIDER;
    if (rc == DX_OK) {
        memcpy(vectors, j->out->data, n * dim * sizeof *vectors);
        for (size_t i = 0; i < n; i++) {
            float *v = vectors + i * dim;
            double norm = 0;
            for (size_t d = 0; d < dim; d++)
                norm += (double)v[d] * v[d];
            norm = sqrt(norm);
            for (size_t d = 0; norm > 0 && d < dim; d++)
                v[d] = (float)(v[d] / norm);
        }
    }
    dx_lm_embeddings_free(j->out);
    dx_free(j);
    return rc;
}

int dx_vectorizer_embeddings(const dx_embeddings_opts *opts, size_t dim,
                             dx_vectorizer *out, dx_diag *diag)
{
    if (out)
        *out = (dx_vectorizer){0};
    if (!opts || !opts->model || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "embeddings vectorizer: no model or result");
    embed_vec *ev = dx_calloc(1, sizeof *ev);
    if (!ev)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    ev->batch = opts->batch;
    ev->timeout_ms = opts->timeout_ms;
    int rc =
        dx_lm_config_new(opts->model, opts->base_url, opts->api_key, &ev->c);
    if (rc != DX_OK) {
        dx_free(ev);
        return dx_diag_set(diag, rc, 0, 0,
                           "embeddings vectorizer: model \"%s\": %s",
                           opts->model, dx_strerror(rc));
    }
    if (dim == 0) {
        /* Ask the model for its dimension count with one short text. */
        static const char *const probe[] = {"dimension probe"};
        embed_job *j = dx_calloc(1, sizeof *j);
        rc = j ? DX_OK : DX_ENOMEM;
        if (j) {
            *j = (embed_job){.ev = ev, .texts = probe, .n = 1};
            bool abandoned;
            rc = embed_now(j, &abandoned);
            if (abandoned) /* the runtime is stopping; j may be in use */
                return dx_diag_set(diag, rc, 0, 0, "embeddings vectorizer: %s",
                                   dx_strerror(rc));
            if (rc == DX_OK)
                dim = j->out->dim;
            else
                dx_diag_set(diag, rc, 0, 0,
                            "embeddings vectorizer: model \"%s\": %s%s%s",
                            opts->model, dx_strerror(rc),
                            j->err.message[0] ? ": " : "", j->err.message);
            dx_lm_embeddings_free(j->out);
            dx_free(j);
        }
        if (rc == DX_OK && dim == 0)
            rc = dx_diag_set(diag, DX_EPROVIDER, 0, 0,
                             "embeddings vectorizer: model \"%s\" returned "
                             "an empty vector",
                             opts->model);
        if (rc != DX_OK) {
            dx_lm_config_free(ev->c);
            dx_free(ev);
            return rc;
        }
    }
    *out = (dx_vectorizer){.fn = embed_vectorize, .dim = dim, .ud = ev};
    return DX_OK;
}

void dx_vectorizer_embeddings_free(dx_vectorizer *v)
{
    if (!v || v->fn != embed_vectorize)
        return;
    embed_vec *ev = v->ud;
    dx_lm_config_free(ev->c);
    dx_free(ev);
    *v = (dx_vectorizer){0};
}
