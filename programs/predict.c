/*
 * predict.c — running programs: a call in a process of its own
 * (dx_module_call), the run that carries its settings, trace and usage,
 * dx_forward, and the Predict step itself: format with the adapter, call
 * the LM client, parse (with DSPy's one-time JSONAdapter fallback), record
 * usage and the trace (see module.h).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/log.h"
#include "module_int.h"
#include "pyjson.h"

/* ---- prices ------------------------------------------------------------ */

static pthread_once_t prices_once = PTHREAD_ONCE_INIT;
static dx_usage_prices *default_prices;

static void make_prices(void)
{
    /* Lives for the process: every run may price from it. */
    if (dx_usage_prices_new(false, &default_prices) != DX_OK)
        default_prices = NULL;
}

const dx_usage_prices *dx__default_prices(void)
{
    pthread_once(&prices_once, make_prices);
    return default_prices;
}

/* ---- runs -------------------------------------------------------------- */

int dx_ctx_fail(dx_ctx *ctx, int code, const char *fmt, ...)
{
    if (!ctx)
        return code;
    va_list ap;
    va_start(ap, fmt);
    dx_diag_vset(ctx->diag, code, 0, 0, fmt, ap);
    va_end(ap);
    return code;
}

const dx_diag *dx_ctx_diag(const dx_ctx *ctx)
{
    return ctx ? ctx->diag : NULL;
}

const dx_usage_acc *dx_ctx_usage(const dx_ctx *ctx)
{
    return ctx ? &ctx->usage : NULL;
}

int64_t dx_ctx_remaining_ms(const dx_ctx *ctx)
{
    if (!ctx)
        return 0;
    int64_t left = ctx->deadline_ms - dx_now_ms();
    return left > 0 ? left : 0;
}

void dx_trace_free(dx_trace *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        dx_free(t->steps[i].path);
        dx_signature_unref(t->steps[i].signature);
        dx_example_free(t->steps[i].inputs);
        dx_example_free(t->steps[i].outputs);
    }
    dx_free(t->steps);
    t->steps = NULL;
    t->n = t->cap = 0;
}

/* Append a step; past DX_TRACE_MAX_STEPS the oldest is dropped, as DSPy's
 * max_trace_size. A trace that cannot grow loses the step, not the call. */
static void trace_add(dx_trace *t, const dx_module *p, const dx_example *in,
                      const dx_prediction *pred, const dx_lm_usage *u,
                      bool cached)
{
    if (t->n == DX_TRACE_MAX_STEPS) {
        dx_trace_step *old = &t->steps[0];
        dx_free(old->path);
        dx_signature_unref(old->signature);
        dx_example_free(old->inputs);
        dx_example_free(old->outputs);
        memmove(t->steps, t->steps + 1, (t->n - 1) * sizeof *t->steps);
        t->n--;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        dx_trace_step *v = dx_realloc(t->steps, cap * sizeof *v);
        if (!v)
            return;
        t->steps = v;
        t->cap = cap;
    }
    dx_trace_step st = {
        .path = dx_strdup(p->path),
        .signature = dx_signature_ref(p->sig),
        .inputs = dx_example_copy(in),
        .outputs = dx_example_copy(pred->fields),
        .usage = u ? *u : (dx_lm_usage){0},
        .cached = cached,
    };
    if (!st.path || !st.inputs || !st.outputs) {
        dx_free(st.path);
        dx_signature_unref(st.signature);
        dx_example_free(st.inputs);
        dx_example_free(st.outputs);
        return;
    }
    t->steps[t->n++] = st;
}

int dx_forward(dx_ctx *ctx, const dx_module *m, const dx_example *inputs,
               dx_prediction **out)
{
    if (!ctx || !out)
        return DX_EINVAL;
    *out = NULL;
    if (!m)
        return dx_ctx_fail(ctx, DX_EINVAL,
                           "forward: no module (a missing "
                           "child?)");
    if (!inputs)
        return dx_ctx_fail(ctx, DX_EINVAL, "%s: no inputs", m->path);
    if (dx_now_ms() >= ctx->deadline_ms)
        return dx_ctx_fail(ctx, DX_ETIMEDOUT,
                           "%s: the call's deadline passed before this step",
                           m->path);
    if (m->kind == DX__MOD_PREDICT)
        return dx__predict_forward(ctx, m, inputs, out);
    int rc = m->forward(ctx, m, inputs, out);
    if (rc == DX_OK && !*out)
        return dx_ctx_fail(ctx, DX_EINVAL,
                           "%s (%s): forward returned no prediction", m->path,
                           m->type_name);
    if (rc != DX_OK && ctx->diag->code == 0)
        dx_ctx_fail(ctx, rc, "%s (%s): forward failed: %s", m->path,
                    m->type_name, dx_strerror(rc));
    return rc;
}

/* ---- the Predict step -------------------------------------------------- */

/* The inputs with the signature's input defaults filled in (a new example,
 * or NULL in *filled when nothing was missing). */
static int fill_defaults(const dx_signature *s, const dx_example *in,
                         dx_example **filled)
{
    *filled = NULL;
    for (size_t i = 0; i < dx_signature_n_inputs(s); i++) {
        const dx_field *f = dx_signature_input(s, i);
        if (!f->default_value || dx_example_has(in, f->name))
            continue;
        if (!*filled) {
            *filled = dx_example_copy(in);
            if (!*filled)
                return DX_ENOMEM;
        }
        int rc = dx_example_set_value(*filled, f->name, f->default_value);
        if (rc != DX_OK) {
            dx_example_free(*filled);
            *filled = NULL;
            return rc;
        }
    }
    return DX_OK;
}

/* How long a call waits for an LM client's name to be registered again:
 * a supervisor restarting a crashed client leaves the name free for about
 * a millisecond, and a call that failed in that window would turn one
 * restart into a burst of failed calls. */
#define LM_NAME_WAIT_MS 250

static dx_pid whereis_waiting(dx_ctx *ctx, const char *name)
{
    dx_pid pid = dx_whereis(name);
    int64_t waited = 0;
    while (dx_pid_is_none(pid) && waited < LM_NAME_WAIT_MS &&
           dx_ctx_remaining_ms(ctx) > 2) {
        dx_sleep(2);
        waited += 2;
        pid = dx_whereis(name);
    }
    return pid;
}

/* The LM client to call, and whether it was found by name (so a client
 * that went away during the call may be looked up again). */
static dx_pid resolve_lm(dx_ctx *ctx, const dx_module *p, const char **which)
{
    if (p->opts.lm_name) {
        *which = p->opts.lm_name;
        return whereis_waiting(ctx, p->opts.lm_name);
    }
    if (p->state_model) {
        dx_pid pid = dx_whereis(p->state_model);
        if (!dx_pid_is_none(pid)) {
            *which = p->state_model;
            return pid;
        }
    }
    if (!dx_pid_is_none(ctx->lm)) {
        *which = "the call's LM client";
        return ctx->lm;
    }
    *which = ctx->lm_name ? ctx->lm_name : "lm";
    return whereis_waiting(ctx, *which);
}

/* ---- streaming to the run's listener --------------------------------- */

/* Output fields past this many are never marked as streamed: with the
 * JSONAdapter their value is also sent whole at the end. */
#define MAX_MARKED_FIELDS 64

typedef struct streamer {
    dx_ctx *ctx;
    const dx_module *p;
    dx_adapter_stream *reader;
    bool streamed[MAX_MARKED_FIELDS]; /* per output field: had pieces */
} streamer;

static void field_chunk(const char *field, const char *text, size_t len,
                        void *ud)
{
    streamer *sm = ud;
    size_t n = dx_signature_n_outputs(sm->p->sig);
    for (size_t i = 0; i < n && i < MAX_MARKED_FIELDS; i++)
        if (strcmp(dx_signature_output(sm->p->sig, i)->name, field) == 0)
            sm->streamed[i] = true;
    sm->ctx->on_chunk(sm->p->path, field, text, len, sm->ctx->chunk_ud);
}

/* The LM client's text, into the incremental reader. A reader out of
 * memory stops streaming; the prediction does not depend on it. */
static void lm_text(const char *text, size_t len, void *ud)
{
    streamer *sm = ud;
    (void)dx_adapter_stream_feed(sm->reader, text, len);
}

/* A JSONAdapter answer's fields that had no pieces (values that are not
 * strings), whole, once it parsed. */
static void send_whole_fields(dx_ctx *ctx, const dx_module *p,
                              const dx_example *ex, const bool *streamed)
{
    for (size_t i = 0; i < dx_signature_n_outputs(p->sig); i++) {
        if (i < MAX_MARKED_FIELDS && streamed[i])
            continue;
        const char *name = dx_signature_output(p->sig, i)->name;
        const cJSON *v = dx_example_get(ex, name);
        if (!v)
            continue;
        if (cJSON_IsString(v)) {
            ctx->on_chunk(p->path, name, v->valuestring, strlen(v->valuestring),
                          ctx->chunk_ud);
            continue;
        }
        char *js = cJSON_PrintUnformatted(v);
        if (js) {
            ctx->on_chunk(p->path, name, js, strlen(js), ctx->chunk_ud);
            cJSON_free(js);
        }
    }
}

/* Objects a Predict holds across its blocking LM call are tied to the
 * calling process (dx_ptie_new), so a program process killed while it
 * waits frees them as it ends. */

/* What attempt() holds across its LM call: the request and the call's
 * error, on the heap. The error is ~700 bytes that a failure fills in;
 * on the stack they would be copied out and back in with the frames of
 * every example that waits on an LM call (DX_NOINLINE, export.h). */
typedef struct call_hold {
    dx_lm_request *req;
    dx_lm_error err;
} call_hold;

static void call_hold_free(void *arg)
{
    call_hold *h = arg;
    dx_lm_request_free(h->req);
    dx_free(h);
}

static void prediction_release(void *p)
{
    dx_prediction_free(p);
}
static void example_release(void *e)
{
    dx_example_free(e);
}
static void reader_release(void *r)
{
    dx_adapter_stream_free(r);
}

/* How one attempt asks, and what it found out on the way. */
typedef struct attempt_how {
    bool stream;      /* hand the answer's fields to the run's listener */
    bool object_mode; /* JSON mode even where the adapter would send the
                         signature's JSON schema (the fallback below) */
    bool schema_sent; /* out: the request carried a JSON schema */
    dx_lm_error_kind lm_error; /* out: the LM call's error, if it failed */
} attempt_how;

/* One LM call through adapter kind: format, complete, parse every choice.
 * On success *parsed holds n_choices examples. */
static int attempt(dx_ctx *ctx, const dx_module *p, dx_adapter_kind kind,
                   dx_pid lm, const dx_example *in, attempt_how *how,
                   dx_lm_result **res_out, dx_example ***parsed,
                   size_t *n_parsed)
{
    bool stream = how->stream;
    how->schema_sent = false;
    how->lm_error = DX_LM_ERR_NONE;
    const dx_signature *s = p->sig;
    *res_out = NULL;
    *parsed = NULL;
    *n_parsed = 0;
    call_hold *hold = dx_malloc(sizeof *hold);
    dx_lm_request *req = hold ? dx_lm_request_new(NULL) : NULL;
    if (!req) {
        dx_free(hold);
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", p->path);
    }
    hold->req = req;
    dx_lm_error_clear(&hold->err);
    int rc = dx_adapter_format(kind, s, (const dx_example *const *)p->demos,
                               p->n_demos, in, req, ctx->diag);
    if (rc != DX_OK) {
        call_hold_free(hold);
        dx_diag_prefix(ctx->diag, "%s", p->path);
        return rc;
    }
    if (how->object_mode && req->format == DX_LM_FORMAT_JSON_SCHEMA)
        req->format = DX_LM_FORMAT_JSON_OBJECT;
    how->schema_sent = req->format == DX_LM_FORMAT_JSON_SCHEMA;
    const dx_predict_opts *o = &p->opts;
    int n = o->n > 1 ? o->n : 1;
    if (o->has_temperature) {
        req->has_temperature = true;
        req->temperature = o->temperature;
    }
    /* DSPy: several completions at a near-zero temperature would be
     * copies of one another. */
    if (n > 1 && (!o->has_temperature || o->temperature <= 0.15)) {
        req->has_temperature = true;
        req->temperature = 0.7;
    }
    req->n = n > 1 ? n : 0;
    req->max_tokens = o->max_tokens;

    dx_lm_client_call_opts copts = {
        .ns = ctx->rollout_id,
        .cache_mode = ctx->cache_mode,
    };
    dx_lm_error *err = &hold->err;
    dx_lm_result *res = NULL;
    int64_t left = dx_ctx_remaining_ms(ctx);
    streamer sm = {.ctx = ctx, .p = p};
    /* Without memory for the reader the call goes on unstreamed. */
    bool incremental =
        stream &&
        dx_adapter_stream_new(kind, s, field_chunk, &sm, &sm.reader) == DX_OK;
    dx_ptie *hold_tie = dx_ptie_new(hold, call_hold_free);
    dx_ptie *reader_tie =
        incremental ? dx_ptie_new(sm.reader, reader_release) : NULL;
    if (left <= 0)
        rc = DX_ETIMEDOUT;
    else if (incremental)
        rc = dx_lm_client_complete_stream(lm, req, &copts, left, lm_text, &sm,
                                          &res, err);
    else /* req is freed right after; the answer is only read */
        rc = dx_lm_client_complete_giving(lm, req, &copts, left, &res, err);
    dx_ptie_cut(reader_tie);
    dx_ptie_cut(hold_tie);
    if (incremental && rc == DX_OK)
        (void)dx_adapter_stream_finish(sm.reader);
    dx_adapter_stream_free(sm.reader);
    if (rc != DX_OK) {
        how->lm_error = rc == DX_EPROVIDER ? err->kind : DX_LM_ERR_NONE;
        if (rc == DX_EPROVIDER)
            dx_ctx_fail(ctx, rc, "%s: LM call failed: %s: %s", p->path,
                        dx_lm_error_kind_name(err->kind), err->message);
        else
            dx_ctx_fail(ctx, rc, "%s: LM call failed: %s", p->path,
                        dx_strerror(rc));
        call_hold_free(hold);
        return rc;
    }
    call_hold_free(hold);
    *res_out = res;
    size_t nc = res->response ? res->response->n_choices : 0;
    if (nc == 0)
        return dx_ctx_fail(ctx, DX_EPARSE, "%s: %s: the LM returned no choices",
                           p->path, dx_adapter_name(kind));
    dx_example **v = dx_calloc(nc, sizeof *v);
    if (!v)
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", p->path);
    for (size_t i = 0; i < nc; i++) {
        const char *text = res->response->choices[i].text;
        rc = dx_adapter_parse(kind, s, text, strlen(text), &v[i], ctx->diag);
        if (rc != DX_OK) {
            /* An answer the provider cut short rarely parses; say why it
             * was short, which the adapter cannot see (a reasoning model
             * can spend its whole max_tokens before any answer text). */
            dx_lm_finish fin = res->response->choices[i].finish;
            if (fin == DX_LM_FINISH_LENGTH)
                dx_diag_prefix(ctx->diag,
                               "the LM stopped at its token limit "
                               "(finish_reason length: raise max_tokens)");
            else if (fin == DX_LM_FINISH_CONTENT_FILTER)
                dx_diag_prefix(ctx->diag, "the provider's content filter "
                                          "stopped the answer");
            dx_diag_prefix(ctx->diag, "%s", p->path);
            for (size_t k = 0; k < i; k++)
                dx_example_free(v[k]);
            dx_free(v);
            return rc;
        }
    }
    *parsed = v;
    *n_parsed = nc;
    if (incremental && kind == DX_ADAPTER_JSON)
        send_whole_fields(ctx, p, v[0], sm.streamed);
    return DX_OK;
}

static void free_parsed(dx_example **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dx_example_free(v[i]);
    dx_free(v);
}

/* attempt(), and when the LM client itself went away during the call
 * (killed, or restarting under its supervisor) and was found by name, the
 * same attempt once more with its successor: an LM call has no side
 * effects. Not after a streamed call, whose text may have gone out. */
static int attempt_again(dx_ctx *ctx, const dx_module *p, dx_adapter_kind kind,
                         dx_pid *lm, const dx_example *in, attempt_how *how,
                         dx_lm_result **res_out, dx_example ***parsed,
                         size_t *n_parsed)
{
    int rc = attempt(ctx, p, kind, *lm, in, how, res_out, parsed, n_parsed);
    if ((rc != DX_EDOWN && rc != DX_ENOPROC) || !dx_pid_is_none(ctx->lm) ||
        how->stream)
        return rc;
    const char *which = NULL;
    dx_pid again = resolve_lm(ctx, p, &which);
    if (dx_pid_is_none(again) || again.id == lm->id)
        return rc;
    *lm = again;
    dx_lm_result_free(*res_out);
    *res_out = NULL;
    return attempt(ctx, p, kind, *lm, in, how, res_out, parsed, n_parsed);
}

/* Count an LM result in the prediction's and the run's usage. */
static void count_usage(dx_ctx *ctx, dx_prediction *pred,
                        const dx_lm_result *res)
{
    const dx_lm_usage *u = res->response && res->response->has_usage
                               ? &res->response->usage
                               : NULL;
    const char *model = res->model_used ? res->model_used : "";
    /* Priced once, counted in both. */
    dx_usage_acc one;
    dx_usage_acc_init(&one, NULL);
    dx_usage_acc_add(&one, ctx->prices, model, u, res->cached);
    dx_usage_acc_merge(&pred->usage, &one);
    dx_usage_acc_merge(&ctx->usage, &one);
}

/* One Predict step's LM calls so far: the last result and its answers,
 * and the usage of every call counted in the prediction. */
typedef struct predict_try {
    dx_ctx *ctx;
    const dx_module *p;
    dx_pid lm;
    const dx_example *in;
    dx_prediction *pred;
    dx_lm_result *res; /* the last call's */
    dx_example **parsed;
    size_t n_parsed;
    bool cached;
    dx_lm_usage usage;
} predict_try;

/* Free the last result before the next call: a process killed while it
 * waits frees nothing it does not hold in a tie. Its usage is counted. */
static void drop_last(predict_try *t)
{
    dx_lm_result_free(t->res);
    t->res = NULL;
}

/* Take the result of one attempt: count its usage, keep it as the last. */
static void took(predict_try *t, dx_lm_result *res)
{
    t->res = res;
    if (res == NULL)
        return;
    count_usage(t->ctx, t->pred, res);
    t->cached = res->cached;
    t->usage = res->response && res->response->has_usage ? res->response->usage
                                                         : (dx_lm_usage){0};
}

/* LM clients (by pid) whose provider refused a JSON schema: their
 * JSONAdapter requests go in JSON mode from the first try, so a server
 * with JSON mode only costs one refused request per client, not one per
 * call. Process-wide and lock-free: a reader may miss a pid being added
 * (that call is refused and asks again). Bounded: past the table's size a
 * refusal is learned anew by each call. A restarted client has a new pid
 * and learns it again. */
#define SCHEMA_REFUSERS 64
static _Atomic uint64_t schema_refusers[SCHEMA_REFUSERS];
static atomic_uint n_schema_refusers;

static bool refuses_schema(dx_pid lm)
{
    unsigned n = atomic_load_explicit(&n_schema_refusers, memory_order_acquire);
    for (unsigned i = 0; i < n && i < SCHEMA_REFUSERS; i++)
        if (atomic_load_explicit(&schema_refusers[i], memory_order_relaxed) ==
            lm.id)
            return true;
    return false;
}

static void note_schema_refused(dx_pid lm)
{
    if (refuses_schema(lm))
        return;
    unsigned i = atomic_load(&n_schema_refusers);
    do {
        if (i >= SCHEMA_REFUSERS)
            return;
    } while (!atomic_compare_exchange_weak(&n_schema_refusers, &i, i + 1));
    atomic_store_explicit(&schema_refusers[i], lm.id, memory_order_relaxed);
}

static DX_NOINLINE int retry_without_schema(predict_try *t,
                                            dx_adapter_kind kind, bool stream,
                                            bool refused);

/* One attempt through adapter kind. For the JSONAdapter, when the request
 * carried the signature's JSON schema (structured outputs), the step is
 * asked once more in plain JSON mode ({"type": "json_object"}) when
 *  - the provider refused the schema as a bad request: several
 *    OpenAI-compatible servers take JSON mode only. DSPy gets there by
 *    knowing each model's capabilities (litellm's
 *    supports_response_schema) and sends such servers JSON mode at once;
 *    dspex knows no server's, so it learns from the refusal: when the
 *    server then takes the request in JSON mode, the refusal is kept for
 *    the client (refuses_schema), whose later calls skip the schema.
 *    Nothing has streamed from a refused call, so the second one streams
 *    as the first would have;
 *  - the answer did not parse into the outputs (a server that takes the
 *    schema but does not enforce it, a model that answers around it), as
 *    DSPy's JSONAdapter does for any failure but an LM error. Fields of
 *    the first answer may have streamed already, so the second does not
 *    stream (as the ChatAdapter's fallback).
 * Other LM errors are the client's to retry, not this. */
static int try_adapter(predict_try *t, dx_adapter_kind kind, bool stream)
{
    dx_ctx *ctx = t->ctx;
    attempt_how how = {
        .stream = stream,
        .object_mode = kind == DX_ADAPTER_JSON && refuses_schema(t->lm),
    };
    dx_lm_result *res = NULL;
    drop_last(t);
    int rc = attempt_again(ctx, t->p, kind, &t->lm, t->in, &how, &res,
                           &t->parsed, &t->n_parsed);
    took(t, res);
    bool refused = rc == DX_EPROVIDER && how.lm_error == DX_LM_ERR_BAD_REQUEST;
    bool unreadable = rc == DX_EPARSE || rc == DX_ETYPE;
    if (kind != DX_ADAPTER_JSON || !how.schema_sent ||
        !(refused || unreadable) || ctx->no_json_fallback)
        return rc;
    return retry_without_schema(t, kind, stream, refused);
}

/* try_adapter's second attempt, in JSON mode without the schema. Its own
 * frame (DX_NOINLINE): the two diagnostics it keeps are ~1 KB that every
 * first attempt's wait would otherwise carry. */
static DX_NOINLINE int retry_without_schema(predict_try *t,
                                            dx_adapter_kind kind, bool stream,
                                            bool refused)
{
    dx_ctx *ctx = t->ctx;
    dx_diag first = *ctx->diag;
    dx_log_field f[] = {
        DX_LOG_STR("predictor", t->p->path),
        DX_LOG_STR("reason", first.msg),
    };
    dx_log_event(DX_LOG_WARNING, "json_schema_fallback", f,
                 sizeof f / sizeof f[0]);
    attempt_how how = {.stream = stream && refused, .object_mode = true};
    dx_lm_result *res = NULL;
    drop_last(t);
    int rc = attempt_again(ctx, t->p, kind, &t->lm, t->in, &how, &res,
                           &t->parsed, &t->n_parsed);
    took(t, res);
    /* Remembered only when the server took the request without the schema:
     * a bad request for another reason (a prompt too long) would be
     * refused again, and must not cost the client its structured outputs
     * for good; an answer that did not parse says nothing about what the
     * server takes. */
    if (refused &&
        !(rc == DX_EPROVIDER && how.lm_error == DX_LM_ERR_BAD_REQUEST))
        note_schema_refused(t->lm);
    if (rc != DX_OK) {
        char second[DX_DIAG_MAX];
        memcpy(second, ctx->diag->msg, sizeof second);
        dx_ctx_fail(ctx, rc, "%s; then, in JSON mode without the schema: %s",
                    first.msg, second);
    }
    return rc;
}

/* The ChatAdapter's answer did not parse: the same call once more through
 * the JSONAdapter. Its own frame, as retry_without_schema's. */
static DX_NOINLINE int fall_back_to_json(predict_try *t)
{
    dx_ctx *ctx = t->ctx;
    dx_diag first = *ctx->diag;
    int rc = try_adapter(t, DX_ADAPTER_JSON, false);
    if (rc != DX_OK && (rc == DX_EPARSE || rc == DX_ETYPE)) {
        char second[DX_DIAG_MAX];
        memcpy(second, ctx->diag->msg, sizeof second);
        dx_ctx_fail(ctx, rc, "%s; then, with the JSONAdapter fallback: %s",
                    first.msg, second);
    }
    return rc;
}

int dx__predict_forward(dx_ctx *ctx, const dx_module *p,
                        const dx_example *inputs, dx_prediction **out)
{
    dx_example *filled = NULL;
    int rc = fill_defaults(p->sig, inputs, &filled);
    if (rc != DX_OK)
        return dx_ctx_fail(ctx, rc, "%s: out of memory", p->path);
    const dx_example *in = filled ? filled : inputs;

    const char *which = NULL;
    dx_pid lm = resolve_lm(ctx, p, &which);
    if (dx_pid_is_none(lm)) {
        dx_example_free(filled);
        return dx_ctx_fail(ctx, DX_ENOLM,
                           "%s: no LM client: nothing is registered as \"%s\" "
                           "(start one with dx_lm_client_start and register "
                           "it, or pass dx_call_opts.lm)",
                           p->path, which);
    }

    dx_prediction *pred = dx_prediction_new();
    if (!pred) {
        dx_example_free(filled);
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", p->path);
    }
    dx_ptie *pred_tie = dx_ptie_new(pred, prediction_release);
    dx_ptie *filled_tie = filled ? dx_ptie_new(filled, example_release) : NULL;
    predict_try t = {.ctx = ctx, .p = p, .lm = lm, .in = in, .pred = pred};
    rc = try_adapter(&t, ctx->adapter, ctx->on_chunk != NULL);
    /* DSPy's fallback: an answer the ChatAdapter cannot read is asked for
     * once more in JSON (never for LM errors: those are the client's). */
    if ((rc == DX_EPARSE || rc == DX_ETYPE) &&
        ctx->adapter == DX_ADAPTER_CHAT && !ctx->no_json_fallback)
        rc = fall_back_to_json(&t);
    dx_lm_result *res = t.res;
    dx_example **parsed = t.parsed;
    size_t n_parsed = t.n_parsed;
    bool cached = t.cached;
    dx_lm_usage usage = t.usage;
    /* No blocking call from here on. */
    dx_ptie_cut(filled_tie);
    dx_ptie_cut(pred_tie);
    if (rc != DX_OK) {
        dx_lm_result_free(res);
        dx_prediction_free(pred);
        dx_example_free(filled);
        return rc;
    }
    /* The first completion is the prediction's fields; all are kept when
     * there are several. */
    dx_example_free(pred->fields);
    pred->fields = parsed[0];
    if (n_parsed > 1) {
        pred->completions = dx_calloc(n_parsed, sizeof *pred->completions);
        if (!pred->completions) {
            parsed[0] = NULL;
            free_parsed(parsed, n_parsed);
            dx_lm_result_free(res);
            dx_prediction_free(pred);
            dx_example_free(filled);
            return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", p->path);
        }
        pred->completions[0] = dx_example_copy(parsed[0]);
        for (size_t i = 1; i < n_parsed; i++)
            pred->completions[i] = parsed[i];
        pred->n_completions = n_parsed;
        if (!pred->completions[0]) {
            pred->completions[0] = dx_example_new();
        }
    }
    dx_free(parsed);
    if (res->model_used)
        pred->model = dx_strdup(res->model_used);
    dx_lm_result_free(res);
    if (ctx->trace)
        trace_add(ctx->trace, p, in, pred, &usage, cached);
    dx_example_free(filled);
    *out = pred;
    return DX_OK;
}

/* ---- running somewhere that can receive --------------------------------- */

typedef struct in_proc {
    void (*fn)(void *);
    void *arg;
    atomic_bool returned;
} in_proc;

static void in_proc_main(void *arg)
{
    in_proc *ip = arg;
    ip->fn(ip->arg);
    atomic_store_explicit(&ip->returned, true, memory_order_release);
}

int dx__in_process(void (*fn)(void *), void *arg)
{
    if (!dx_pid_is_none(dx_self())) {
        fn(arg);
        return DX_OK;
    }
    /* Heap, not this thread's stack: the process reads it. */
    in_proc *ip = dx_calloc(1, sizeof *ip);
    if (!ip)
        return DX_ENOMEM;
    ip->fn = fn;
    ip->arg = arg;
    atomic_init(&ip->returned, false);
    dx_pid pid;
    int rc = dx_spawn(in_proc_main, ip, &pid);
    if (rc != DX_OK) {
        dx_free(ip);
        return rc;
    }
    dx_term *reason = NULL;
    dx_wait_exit(pid, DX_INFINITY, &reason);
    dx_term_free(reason);
    rc = atomic_load_explicit(&ip->returned, memory_order_acquire) ? DX_OK
                                                                   : DX_EDOWN;
    dx_free(ip);
    return rc;
}

/* ---- calls in a process of their own ------------------------------------ */

/* What the caller and the program's process share. Two references: the
 * caller's, and the process's (dropped by arg_free however it exits). */
typedef struct call_slot {
    atomic_int refs;
    atomic_bool done;
    const dx_module *module;
    dx_example *inputs;
    char *lm_name;
    char *rollout_id;
    dx_call_opts opts;
    int64_t deadline_ms;
    int rc;
    dx_diag diag;
    dx_prediction *pred;
    dx_trace trace;
    dx_pid pid; /* the program's process (the caller's to know) */
} call_slot;

static void slot_unref(void *arg)
{
    call_slot *s = arg;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    dx_example_free(s->inputs);
    dx_free(s->lm_name);
    dx_free(s->rollout_id);
    dx_prediction_free(s->pred);
    dx_trace_free(&s->trace);
    dx_free(s);
}

/* dx__run_program for a caller without a diag: one of its own, in this
 * frame and not the run's. */
static DX_NOINLINE int
run_program_own_diag(const dx_module *m, const dx_example *inputs,
                     const dx_call_opts *o, int64_t deadline_ms,
                     dx_prediction **out, dx_trace *trace, dx_usage_acc *usage)
{
    dx_diag d = {0};
    return dx__run_program(m, inputs, o, deadline_ms, out, trace, &d, usage);
}

int dx__run_program(const dx_module *m, const dx_example *inputs,
                    const dx_call_opts *o, int64_t deadline_ms,
                    dx_prediction **out, dx_trace *trace, dx_diag *diag,
                    dx_usage_acc *usage)
{
    if (!diag)
        return run_program_own_diag(m, inputs, o, deadline_ms, out, trace,
                                    usage);
    dx_diag_clear(diag);
    dx_ctx ctx = {
        .lm = o->lm,
        .lm_name = o->lm_name,
        .adapter = o->adapter,
        .no_json_fallback = o->no_json_fallback,
        .deadline_ms = deadline_ms,
        .rollout_id = o->rollout_id,
        .cache_mode = o->cache_mode,
        .prices = o->prices ? o->prices : dx__default_prices(),
        .on_chunk = o->on_chunk,
        .chunk_ud = o->chunk_ud,
        .trace = trace,
        .diag = diag,
    };
    dx_usage_acc_init(&ctx.usage, "run");
    dx_prediction *pred = NULL;
    int rc = dx_forward(&ctx, m, inputs, &pred);
    if (usage)
        *usage = ctx.usage;
    if (rc == DX_OK) {
        /* The call's prediction reports every LM call of the run; a
         * failure it got past (a fallback's first try) is not its
         * diagnostic. */
        pred->usage = ctx.usage;
        *out = pred;
        dx_diag_clear(diag);
    } else {
        dx_prediction_free(pred);
        *out = NULL;
    }
    return rc;
}

static void call_proc(void *arg)
{
    call_slot *s = arg;
    dx_set_label("dspex.program");
    dx_call_opts o = s->opts;
    o.lm_name = s->lm_name;
    o.rollout_id = s->rollout_id;
    s->rc = dx__run_program(s->module, s->inputs, &o, s->deadline_ms, &s->pred,
                            s->opts.trace ? &s->trace : NULL, &s->diag, NULL);
    atomic_store_explicit(&s->done, true, memory_order_release);
}

/* The caller's process ended while it waited (a supervisor's kill): its
 * reference to the slot goes with it, and so does the program's process,
 * whose answer nobody would read (it would otherwise run on to its
 * deadline, LM calls and all). */
static void caller_gone(void *arg)
{
    call_slot *s = arg;
    dx_kill(s->pid);
    slot_unref(s);
}

static void describe_crash(dx_diag *diag, const dx_module *m,
                           const dx_term *reason)
{
    char text[256] = "unknown";
    if (reason)
        dx_term_format(reason, text, sizeof text);
    dx_diag_set(diag, DX_EDOWN, 0, 0, "%s (%s): the program's process died: %s",
                m->path, m->type_name, text);
}

int dx_module_call(const dx_module *m, const dx_example *inputs,
                   const dx_call_opts *opts, dx_prediction **out,
                   dx_trace *trace_out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (trace_out)
        *trace_out = (dx_trace){0};
    if (!m || !inputs || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_module_call: NULL module, inputs or out");
    if (!dx_runtime_running())
        return dx_diag_set(diag, DX_ESTATE, 0, 0,
                           "dx_module_call: the runtime is not running");
    dx_call_opts o = opts ? *opts : (dx_call_opts){.lm = DX_NOPID};
    int64_t timeout =
        o.timeout_ms > 0 ? o.timeout_ms : DX__DEFAULT_CALL_TIMEOUT_MS;

    call_slot *s = dx_calloc(1, sizeof *s);
    if (!s)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    atomic_init(&s->refs, 2);
    atomic_init(&s->done, false);
    s->module = m;
    s->opts = o;
    s->deadline_ms = dx_now_ms() + timeout;
    s->inputs = dx_example_copy(inputs);
    s->lm_name = o.lm_name ? dx_strdup(o.lm_name) : NULL;
    s->rollout_id = o.rollout_id ? dx_strdup(o.rollout_id) : NULL;
    if (!s->inputs || (o.lm_name && !s->lm_name) ||
        (o.rollout_id && !s->rollout_id)) {
        atomic_store(&s->refs, 1);
        slot_unref(s);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }

    bool in_process = !dx_pid_is_none(dx_self());
    dx_ref mon = DX_NOREF;
    dx_pid pid = {0};
    /* This process kills the call's at wait_ms; the runtime does a little
     * later in any case, for when this process cannot run: it shares a
     * scheduler the program holds in code that never calls the runtime. */
    int64_t wait_ms = timeout + 1000, started_ms = dx_now_ms();
    dx_spawn_opts so = {
        .monitor = in_process,
        .arg_free = slot_unref,
        .kill_after_ms = dx__runtime_kill_after(wait_ms),
    };
    int rc = dx_spawn_opt(call_proc, s, &so, &pid, in_process ? &mon : NULL);
    if (rc != DX_OK) {
        atomic_store(&s->refs, 1);
        slot_unref(s);
        return dx_diag_set(diag, rc, 0, 0, "dx_module_call: spawn failed: %s",
                           dx_strerror(rc));
    }

    /* Wait for the process to end, however it ends; its result is in the
     * slot when `done` is set. */
    s->pid = pid;
    dx_ptie *tie = in_process ? dx_ptie_new(s, caller_gone) : NULL;
    dx_term *reason = NULL;
    bool timed_out = false;
    if (in_process) {
        dx_msg *down = NULL;
        dx_match match = {.fields = DX_MATCH_TAG | DX_MATCH_REF,
                          .tag = DX_TAG_DOWN,
                          .ref = mon};
        rc = dx_receive(&match, wait_ms, &down);
        if (rc == DX_ETIMEDOUT) {
            timed_out = true;
            dx_kill(pid);
            dx_receive(&match, DX_INFINITY, &down);
        }
        if (down) {
            reason = dx_msg_take_term(down);
            dx_msg_free(down);
        }
    } else {
        rc = dx_wait_exit(pid, wait_ms, &reason);
        if (rc == DX_ETIMEDOUT) {
            timed_out = true;
            dx_kill(pid);
            dx_term_free(reason);
            reason = NULL;
            dx_wait_exit(pid, DX_INFINITY, &reason);
        }
    }

    dx_ptie_cut(tie);
    /* Killed past the wait by the runtime, not by us: a timeout all the
     * same. */
    if (!timed_out && dx__killed_past(reason, started_ms, wait_ms))
        timed_out = true;
    int result;
    if (atomic_load_explicit(&s->done, memory_order_acquire)) {
        result = s->rc;
        if (result == DX_OK) {
            *out = s->pred;
            s->pred = NULL;
            if (trace_out) {
                *trace_out = s->trace;
                s->trace = (dx_trace){0};
            }
        } else if (diag) {
            *diag = s->diag;
            if (diag->code == 0)
                dx_diag_set(diag, result, 0, 0, "%s: %s", m->path,
                            dx_strerror(result));
        }
    } else if (timed_out) {
        result = dx_diag_set(diag, DX_ETIMEDOUT, 0, 0,
                             "%s (%s): no result within %" PRId64 " ms",
                             m->path, m->type_name, timeout);
    } else {
        describe_crash(diag, m, reason);
        result = DX_EDOWN;
    }
    dx_term_free(reason);
    slot_unref(s);
    return result;
}
