/*
 * react.c — the ReAct module (see react.h): DSPy's signatures and
 * instructions, the step loop with its trajectory, truncation on context
 * overflow, the final extraction, and the native tool-calling step that
 * talks to the provider's tools API directly.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/lm.h"
#include "dspex/react.h"
#include "module_int.h"
#include "pyjson.h"

#define DEFAULT_MAX_ITERS 20

typedef struct react_ud {
    dx_tool **tools; /* the user's, then finish */
    size_t n_tools;
    int max_iters;
    bool native;
    size_t max_chars;
    dx_signature *native_sig; /* inputs -> next_thought */
} react_ud;

static void ud_free(void *arg)
{
    react_ud *u = arg;
    if (!u)
        return;
    for (size_t i = 0; i < u->n_tools; i++)
        dx_tool_unref(u->tools[i]);
    dx_free(u->tools);
    dx_signature_unref(u->native_sig);
    dx_free(u);
}

static void *ud_copy(const void *arg)
{
    const react_ud *u = arg;
    react_ud *c = dx_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    *c = *u;
    c->tools = dx_calloc(u->n_tools, sizeof *c->tools);
    if (!c->tools) {
        dx_free(c);
        return NULL;
    }
    for (size_t i = 0; i < u->n_tools; i++)
        c->tools[i] = dx_tool_ref(u->tools[i]);
    c->native_sig = dx_signature_ref(u->native_sig);
    return c;
}

static const dx_tool *find_tool(const react_ud *u, const char *name)
{
    for (size_t i = 0; name && i < u->n_tools; i++)
        if (!strcmp(dx_tool_name(u->tools[i]), name))
            return u->tools[i];
    return NULL;
}

/* ---- the trajectory ------------------------------------------------------ */

/* DSPy's _format_trajectory: the adapter's user-message blocks of a
 * signature "<keys> -> x". */
static int format_trajectory(const dx_ctx *ctx, const cJSON *traj, char **out)
{
    *out = NULL;
    size_t n = (size_t)cJSON_GetArraySize(traj);
    if (n == 0) {
        *out = dx_strdup("");
        return *out ? DX_OK : DX_ENOMEM;
    }
    dx_field_spec *specs = dx_calloc(n + 1, sizeof *specs);
    dx_example *ex = dx_example_new();
    int rc = specs && ex ? DX_OK : DX_ENOMEM;
    size_t i = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, traj)
    {
        specs[i++] = (dx_field_spec){.name = c->string, .role = DX_FIELD_INPUT};
        if (rc == DX_OK)
            rc = dx_example_set_value(ex, c->string, c);
    }
    specs[n] = (dx_field_spec){.name = "x", .role = DX_FIELD_OUTPUT};
    dx_signature *s = NULL;
    if (rc == DX_OK)
        rc = dx_signature_build(specs, n + 1, NULL, &s, NULL);
    if (rc == DX_OK)
        rc = dx_adapter_user_content(ctx->adapter, s, ex, "", false, out);
    dx_signature_unref(s);
    dx_example_free(ex);
    dx_free(specs);
    return rc;
}

/* DSPy's truncate_trajectory: drop the oldest step's four entries; false
 * when only one step is left. */
static bool truncate_trajectory(cJSON *traj)
{
    if (cJSON_GetArraySize(traj) <= 4)
        return false;
    for (int k = 0; k < 4; k++)
        cJSON_Delete(cJSON_DetachItemViaPointer(traj, traj->child));
    return true;
}

static bool context_overflow(const dx_diag *d)
{
    if (d->code != DX_EPROVIDER || !strstr(d->msg, "bad_request"))
        return false;
    char low[DX_DIAG_MAX];
    size_t i = 0;
    for (; d->msg[i] && i + 1 < sizeof low; i++)
        low[i] = (char)tolower((unsigned char)d->msg[i]);
    low[i] = 0;
    static const char *const marks[] = {
        "context length",     "context_length",           "context window",
        "prompt is too long", "maximum number of tokens", "too many tokens",
    };
    for (size_t k = 0; k < sizeof marks / sizeof *marks; k++)
        if (strstr(low, marks[k]))
            return true;
    return false;
}

/* ---- one LM step ----------------------------------------------------------- */

typedef struct step_out {
    char *thought;
    char *name;
    cJSON *args;
} step_out;

static void step_clear(step_out *s)
{
    dx_free(s->thought);
    dx_free(s->name);
    cJSON_Delete(s->args);
    *s = (step_out){0};
}

static void step_free(void *s)
{
    step_clear(s);
    dx_free(s);
}

static dx_pid resolve_lm(const dx_ctx *ctx, const dx_module *p)
{
    if (p->opts.lm_name)
        return dx_whereis(p->opts.lm_name);
    if (!dx_pid_is_none(ctx->lm))
        return ctx->lm;
    return dx_whereis(ctx->lm_name ? ctx->lm_name : "lm");
}

static char *strip_dup(const char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    char *r = dx_malloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = 0;
    }
    return r;
}

static void request_free(void *req)
{
    dx_lm_request_free(req);
}

/* The native step: the inputs as the adapter formats them for
 * native_sig, the trajectory as tool-call turns, the tools declared. */
static int native_step(dx_ctx *ctx, const dx_module *react, const react_ud *u,
                       const dx_example *inputs, const cJSON *traj,
                       step_out *out)
{
    dx_lm_request *req = dx_lm_request_new(NULL);
    if (!req)
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", react->path);
    int rc = dx_adapter_format(ctx->adapter, u->native_sig, NULL, 0, inputs,
                               req, ctx->diag);
    /* A JSON response format would forbid the tool calls. */
    req->format = DX_LM_FORMAT_TEXT;
    const cJSON *c = traj->child;
    for (int idx = 0; rc == DX_OK && c; idx++) {
        const cJSON *thought = c, *name = c->next;
        const cJSON *args = name ? name->next : NULL;
        const cJSON *obs = args ? args->next : NULL;
        if (!obs)
            break;
        char id[32];
        snprintf(id, sizeof id, "call_%s", strrchr(thought->string, '_') + 1);
        char *args_text = cJSON_PrintUnformatted(args);
        rc = args_text ? DX_OK : DX_ENOMEM;
        if (rc == DX_OK)
            rc = dx_lm_request_add_message(
                req, DX_LM_ASSISTANT,
                cJSON_IsString(thought) ? thought->valuestring : "");
        if (rc == DX_OK)
            rc = dx_lm_request_add_tool_call(req, id, name->valuestring,
                                             args_text);
        if (rc == DX_OK)
            rc = dx_lm_request_add_tool_result(
                req, id, cJSON_IsString(obs) ? obs->valuestring : "");
        cJSON_free(args_text);
        c = obs->next;
    }
    for (size_t i = 0; rc == DX_OK && i < u->n_tools; i++)
        rc = dx_tool_add_to_request(u->tools[i], req);
    if (rc != DX_OK) {
        dx_lm_request_free(req);
        if (ctx->diag->code == 0)
            dx_ctx_fail(ctx, rc, "%s: building the request: %s", react->path,
                        dx_strerror(rc));
        return rc;
    }
    const dx_predict_opts *po = &react->opts;
    if (po->has_temperature) {
        req->has_temperature = true;
        req->temperature = po->temperature;
    }
    req->max_tokens = po->max_tokens;

    dx_pid lm = resolve_lm(ctx, react);
    if (dx_pid_is_none(lm)) {
        dx_lm_request_free(req);
        return dx_ctx_fail(ctx, DX_ENOLM, "%s: no LM client", react->path);
    }
    dx_lm_client_call_opts copts = {.ns = ctx->rollout_id,
                                    .cache_mode = ctx->cache_mode};
    dx_lm_error err = {0};
    dx_lm_result *res = NULL;
    int64_t left = dx_ctx_remaining_ms(ctx);
    /* Killed while it waits (its example's deadline), the process frees
     * the request as it ends. */
    dx_ptie *req_tie = dx_ptie_new(req, request_free);
    /* req is freed right after; the answer is only read. */
    rc = left > 0
             ? dx_lm_client_complete_giving(lm, req, &copts, left, &res, &err)
             : DX_ETIMEDOUT;
    dx_ptie_cut(req_tie);
    dx_lm_request_free(req);
    if (rc != DX_OK) {
        if (rc == DX_EPROVIDER)
            dx_ctx_fail(ctx, rc, "%s: LM call failed: %s: %s", react->path,
                        dx_lm_error_kind_name(err.kind), err.message);
        else
            dx_ctx_fail(ctx, rc, "%s: LM call failed: %s", react->path,
                        dx_strerror(rc));
        return rc;
    }
    const dx_lm_usage *usage = res->response && res->response->has_usage
                                   ? &res->response->usage
                                   : NULL;
    dx_usage_acc_add(&ctx->usage, ctx->prices,
                     res->model_used ? res->model_used : "", usage,
                     res->cached);
    if (!res->response || res->response->n_choices == 0) {
        dx_lm_result_free(res);
        return dx_ctx_fail(ctx, DX_EPARSE, "%s: the LM returned no choices",
                           react->path);
    }
    const dx_lm_choice *ch = &res->response->choices[0];
    /* The thought: the next_thought section when the text has one, else
     * the text itself. */
    dx_example *parsed = NULL;
    dx_diag ignore = {0};
    if (ch->text[0] &&
        dx_adapter_parse(ctx->adapter, u->native_sig, ch->text,
                         strlen(ch->text), &parsed, &ignore) == DX_OK)
        out->thought =
            dx_strdup(dx_example_get_str(parsed, "next_thought", ""));
    else
        out->thought = strip_dup(ch->text);
    dx_example_free(parsed);
    if (ch->n_tool_calls > 0) {
        const dx_lm_tool_call *tc = &ch->tool_calls[0];
        out->name = dx_strdup(tc->name ? tc->name : "");
        const char *a = tc->arguments ? tc->arguments : "";
        out->args =
            a[0] ? dx__json_repair(a, strlen(a), true) : cJSON_CreateObject();
        if (out->args && !cJSON_IsObject(out->args)) {
            cJSON_Delete(out->args);
            out->args = NULL;
        }
        if (!out->args && out->name)
            /* Arguments that are no JSON object: the tool sees that. */
            out->args = cJSON_CreateString(a);
    } else {
        out->name = dx_strdup("finish");
        out->args = cJSON_CreateObject();
    }
    dx_lm_result_free(res);
    if (!out->thought || !out->name || !out->args) {
        step_clear(out);
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", react->path);
    }
    if (!find_tool(u, out->name)) {
        int r = dx_ctx_fail(ctx, DX_ETYPE,
                            "%s: the LM called \"%s\", which is not one of "
                            "the tools",
                            react->path, out->name);
        step_clear(out);
        return r;
    }
    return DX_OK;
}

/* One step of m (the react Predict, the extract ChainOfThought, or the
 * native step when native) with DSPy's truncation retries. */
static int call_truncating(dx_ctx *ctx, const dx_module *m, const react_ud *u,
                           bool native, const dx_example *inputs, cJSON *traj,
                           dx_prediction **pred, step_out *step)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        char *text = NULL;
        int rc = format_trajectory(ctx, traj, &text);
        while (rc == DX_OK && u->max_chars && strlen(text) > u->max_chars &&
               truncate_trajectory(traj)) {
            dx_free(text);
            rc = format_trajectory(ctx, traj, &text);
        }
        if (rc != DX_OK)
            return dx_ctx_fail(ctx, rc, "%s: formatting the trajectory: %s",
                               m->path, dx_strerror(rc));
        if (native) {
            dx_free(text);
            rc = native_step(ctx, m, u, inputs, traj, step);
        } else {
            dx__held *h = dx__held_new();
            dx_example *in = h ? h->ex[0] = dx_example_copy(inputs) : NULL;
            rc = in ? dx_example_set_str(in, "trajectory", text) : DX_ENOMEM;
            dx_free(text);
            if (rc == DX_OK)
                rc = dx_forward(ctx, m, in, pred);
            else
                dx_ctx_fail(ctx, rc, "%s: out of memory", m->path);
            dx__held_free(h);
        }
        if (rc != DX_EPROVIDER || !context_overflow(ctx->diag))
            return rc;
        if (!truncate_trajectory(traj))
            return dx_ctx_fail(ctx, DX_EPROVIDER,
                               "%s: The trajectory is too long so your prompt "
                               "exceeded the context window, but the "
                               "trajectory cannot be truncated because it "
                               "only has one tool call. (%s)",
                               m->path, ctx->diag->msg);
        dx_diag_clear(ctx->diag);
    }
    return dx_ctx_fail(ctx, DX_EPROVIDER,
                       "%s: The context window was exceeded even after 3 "
                       "attempts to truncate the trajectory.",
                       m->path);
}

/* ---- the forward ------------------------------------------------------------ */

static bool add_entry(cJSON *traj, const char *key, int idx, cJSON *v)
{
    char k[48];
    snprintf(k, sizeof k, "%s_%d", key, idx);
    if (!v || !cJSON_AddItemToObject(traj, k, v)) {
        cJSON_Delete(v);
        return false;
    }
    return true;
}

static int react_forward(dx_ctx *ctx, const dx_module *self,
                         const dx_example *inputs, dx_prediction **out)
{
    const react_ud *u = dx_module_ud(self);
    const dx_module *react = dx_module_child(self, "react");
    const dx_module *extract = dx_module_child(self, "extract");
    if (!u || !react || !extract)
        return dx_ctx_fail(ctx, DX_EINVAL, "%s: not a ReAct module",
                           self->path);
    int max_iters = u->max_iters;
    const cJSON *mi = dx_example_get(inputs, "max_iters");
    int64_t asked = 0;
    if (mi != NULL && !dx__json_whole(mi, 0, 1000, &asked))
        return dx_ctx_fail(ctx, DX_EINVAL,
                           "%s: max_iters must be a whole number from 0 to "
                           "1000",
                           self->path);
    if (mi != NULL)
        max_iters = (int)asked;

    /* The trajectory and the step in progress, held across the LM and
     * tool calls: json[0] and other[0]. */
    dx__held *h = dx__held_new();
    cJSON *traj = h ? h->json[0] = cJSON_CreateObject() : NULL;
    step_out *st = traj ? dx_calloc(1, sizeof *st) : NULL;
    if (!st) {
        dx__held_free(h);
        return dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
    }
    h->other[0].obj = st;
    h->other[0].free_fn = step_free;
    int rc = DX_OK;
    for (int idx = 0; idx < max_iters; idx++) {
        dx_prediction *pred = NULL;
        step_clear(st);
        rc = call_truncating(ctx, react, u, u->native, inputs, traj, &pred, st);
        if (rc == DX_EPARSE || rc == DX_ETYPE ||
            (rc == DX_EPROVIDER && strstr(ctx->diag->msg, "context window"))) {
            /* DSPy ends the trajectory when the agent fails to select a
             * valid tool or the context cannot shrink; extract answers. */
            dx_diag_clear(ctx->diag);
            rc = DX_OK;
            break;
        }
        if (rc != DX_OK)
            break;
        if (!u->native) {
            const char *name =
                dx_prediction_get_str(pred, "next_tool_name", "");
            const cJSON *args = dx_prediction_get(pred, "next_tool_args");
            st->thought =
                dx_strdup(dx_prediction_get_str(pred, "next_thought", ""));
            st->name = dx_strdup(name);
            st->args =
                args ? cJSON_Duplicate(args, true) : cJSON_CreateObject();
            dx_prediction_free(pred);
            if (!st->thought || !st->name || !st->args) {
                step_clear(st);
                rc = dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory",
                                 self->path);
                break;
            }
        }
        bool ok =
            add_entry(traj, "thought", idx, cJSON_CreateString(st->thought)) &&
            add_entry(traj, "tool_name", idx, cJSON_CreateString(st->name)) &&
            add_entry(traj, "tool_args", idx, cJSON_Duplicate(st->args, true));
        char *obs = NULL;
        const dx_tool *tool = find_tool(u, st->name);
        if (ok && tool) {
            if (dx_tool_call(tool, cJSON_IsObject(st->args) ? st->args : NULL,
                             &obs, NULL) != DX_OK)
                ok = false;
            else if (!cJSON_IsObject(st->args)) {
                dx_free(obs);
                obs = NULL;
                dx__sb b;
                dx__sb_init(&b);
                dx__sb_printf(&b,
                              "Execution error in %s: the arguments must be a "
                              "JSON object",
                              st->name);
                obs = dx__sb_take(&b);
                ok = obs != NULL;
            }
        }
        ok = ok && obs &&
             add_entry(traj, "observation", idx, cJSON_CreateString(obs));
        dx_free(obs);
        bool finished = st->name && !strcmp(st->name, "finish");
        step_clear(st);
        if (!ok) {
            rc = dx_ctx_fail(ctx, DX_ENOMEM, "%s: out of memory", self->path);
            break;
        }
        if (finished)
            break;
    }
    if (rc != DX_OK) {
        dx__held_free(h);
        return rc;
    }

    dx_prediction *ext = NULL;
    rc = call_truncating(ctx, extract, u, false, inputs, traj, &ext, NULL);
    if (rc != DX_OK) {
        dx__held_free(h);
        return rc;
    }
    /* DSPy's Prediction(trajectory=trajectory, **extract). */
    dx_prediction *res = dx_prediction_new();
    rc = res ? dx_example_set_value(dx_prediction_fields_mut(res), "trajectory",
                                    traj)
             : DX_ENOMEM;
    const dx_example *f = dx_prediction_fields(ext);
    for (size_t i = 0; rc == DX_OK && i < dx_example_len(f); i++)
        rc = dx_example_set_value(dx_prediction_fields_mut(res),
                                  dx_example_key(f, i), dx_example_value(f, i));
    if (rc == DX_OK) {
        res->usage = ext->usage;
        if (ext->model)
            res->model = dx_strdup(ext->model);
    }
    dx_prediction_free(ext);
    dx__held_free(h);
    if (rc != DX_OK) {
        dx_prediction_free(res);
        return dx_ctx_fail(ctx, rc, "%s: out of memory", self->path);
    }
    *out = res;
    return DX_OK;
}

/* ---- construction ------------------------------------------------------------- */

/* "`a`, `b`" of one role group. */
static void put_names(dx__sb *b, const dx_signature *s, bool inputs)
{
    size_t n = inputs ? dx_signature_n_inputs(s) : dx_signature_n_outputs(s);
    for (size_t i = 0; i < n; i++) {
        const dx_field *f =
            inputs ? dx_signature_input(s, i) : dx_signature_output(s, i);
        dx__sb_printf(b, "%s`%s`", i ? ", " : "", f->name);
    }
}

/* DSPy's ReAct instructions, tools listed with finish last. */
static char *instructions(const dx_signature *s, dx_tool *const *tools,
                          size_t n)
{
    dx__sb b;
    dx__sb_init(&b);
    const char *ins = dx_signature_instructions(s);
    if (ins && ins[0])
        dx__sb_printf(&b, "%s\n\n", ins);
    dx__sb_puts(&b, "You are an Agent. In each episode, you will be given the "
                    "fields ");
    put_names(&b, s, true);
    dx__sb_puts(&b, " as input. And you can see your past trajectory so far.\n"
                    "Your goal is to use one or more of the supplied tools to "
                    "collect any necessary information for producing ");
    put_names(&b, s, false);
    dx__sb_puts(&b,
                ".\n\nTo do this, you will interleave next_thought, "
                "next_tool_name, and next_tool_args in each turn, and also "
                "when finishing the task.\nAfter each tool call, you receive "
                "a resulting observation, which gets appended to your "
                "trajectory.\n\nWhen writing next_thought, you may reason "
                "about the current situation and plan for future steps.\nWhen "
                "selecting the next_tool_name and its next_tool_args, the "
                "tool must be one of:\n\n");
    for (size_t i = 0; i < n; i++) {
        char *d = NULL;
        if (dx_tool_describe(tools[i], &d) != DX_OK) {
            dx__sb_free(&b);
            return NULL;
        }
        dx__sb_printf(&b, "(%zu) %s\n", i + 1, d);
        dx_free(d);
    }
    dx__sb_puts(&b, "When providing `next_tool_args`, the value inside the "
                    "field must be in JSON format");
    return dx__sb_take(&b);
}

static int build_sigs(const dx_signature *s, react_ud *u, dx_signature **react,
                      dx_signature **extract)
{
    char *ins = instructions(s, u->tools, u->n_tools);
    if (!ins)
        return DX_ENOMEM;
    const char **names = dx_calloc(u->n_tools, sizeof *names);
    dx_type *str = dx_type_new(DX_TYPE_STR);
    dx_type *dict = NULL;
    dx_type *lit = NULL;
    int rc = names && str ? DX_OK : DX_ENOMEM;
    for (size_t i = 0; rc == DX_OK && i < u->n_tools; i++)
        names[i] = dx_tool_name(u->tools[i]);
    if (rc == DX_OK)
        rc = dx_type_parse("dict[str, Any]", NULL, 0, &dict, NULL);
    if (rc == DX_OK) {
        lit = dx_type_literal(names, u->n_tools);
        rc = lit ? DX_OK : DX_ENOMEM;
    }
    /* inputs only, the agent's instructions, then DSPy's appends. */
    dx_signature *cur = dx_signature_ref((dx_signature *)s);
    while (rc == DX_OK && dx_signature_n_outputs(cur) > 0) {
        dx_signature *next = NULL;
        rc = dx_signature_delete(cur, dx_signature_output(cur, 0)->name, &next);
        dx_signature_unref(cur);
        cur = next;
    }
    const dx_field_spec appends[] = {
        {.name = "trajectory", .role = DX_FIELD_INPUT, .type = str},
        {.name = "next_thought", .role = DX_FIELD_OUTPUT, .type = str},
        {.name = "next_tool_name", .role = DX_FIELD_OUTPUT, .type = lit},
        {.name = "next_tool_args", .role = DX_FIELD_OUTPUT, .type = dict},
    };
    dx_signature *next = NULL;
    if (rc == DX_OK) {
        rc = dx_signature_with_instructions(cur, ins, &next);
        dx_signature_unref(cur);
        cur = rc == DX_OK ? next : NULL;
    }
    dx_signature *inputs_only = cur ? dx_signature_ref(cur) : NULL;
    for (size_t i = 0; rc == DX_OK && i < 4; i++) {
        rc = dx_signature_append(cur, &appends[i], &next, NULL);
        dx_signature_unref(cur);
        cur = rc == DX_OK ? next : NULL;
    }
    *react = cur;
    /* The native step's signature: inputs -> next_thought. */
    if (rc == DX_OK)
        rc =
            dx_signature_append(inputs_only, &appends[1], &u->native_sig, NULL);
    dx_signature_unref(inputs_only);
    if (rc == DX_OK)
        rc = dx_signature_append(s, &appends[0], extract, NULL);
    dx_type_free(str);
    dx_type_free(dict);
    dx_type_free(lit);
    dx_free(names);
    dx_free(ins);
    if (rc != DX_OK) {
        dx_signature_unref(*react);
        *react = NULL;
    }
    return rc;
}

int dx_react_create(dx_signature *s, dx_tool *const *tools, size_t n_tools,
                    const dx_react_opts *opts, dx_module **out, dx_diag *diag)
{
    dx__pyjson_init();
    if (!out || !s || (n_tools && !tools))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_react_create: NULL signature, tools or out");
    *out = NULL;
    for (size_t i = 0; i < n_tools; i++) {
        if (!tools[i])
            return dx_diag_set(diag, DX_EINVAL, 0, 0, "ReAct: tool %zu is NULL",
                               i);
        if (!strcmp(dx_tool_name(tools[i]), "finish"))
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "ReAct: a tool may not be named \"finish\" "
                               "(ReAct adds its own)");
        for (size_t k = 0; k < i; k++)
            if (!strcmp(dx_tool_name(tools[i]), dx_tool_name(tools[k])))
                return dx_diag_set(diag, DX_EINVAL, 0, 0,
                                   "ReAct: two tools are named \"%s\"",
                                   dx_tool_name(tools[i]));
    }
    react_ud *u = dx_calloc(1, sizeof *u);
    if (!u)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    u->max_iters =
        opts && opts->max_iters > 0 ? opts->max_iters : DEFAULT_MAX_ITERS;
    u->native = opts && opts->native_tools;
    u->max_chars = opts ? opts->max_trajectory_chars : 0;
    u->tools = dx_calloc(n_tools + 1, sizeof *u->tools);
    if (!u->tools) {
        ud_free(u);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    for (size_t i = 0; i < n_tools; i++)
        u->tools[u->n_tools++] = dx_tool_ref(tools[i]);

    /* DSPy's finish description names the outputs. */
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_puts(&b, "Marks the task as complete. That is, signals that all "
                    "information for producing the outputs, i.e. ");
    put_names(&b, s, false);
    dx__sb_puts(&b, ", are now available to be extracted.");
    char *fdesc = dx__sb_take(&b);
    dx_tool *fin = fdesc ? dx_tool_finish_new(fdesc) : NULL;
    dx_free(fdesc);
    if (!fin) {
        ud_free(u);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    u->tools[u->n_tools++] = fin;

    dx_signature *rs = NULL, *es = NULL;
    int rc = build_sigs(s, u, &rs, &es);
    if (rc != DX_OK) {
        ud_free(u);
        return dx_diag_set(diag, rc, 0, 0, "ReAct: building the signatures: %s",
                           dx_strerror(rc));
    }
    const dx_predict_opts *po = opts ? opts->predict : NULL;
    dx_module *react = dx_predict_new(rs, po);
    dx_module *extract = dx_chain_of_thought_new(es, po);
    dx_signature_unref(rs);
    dx_signature_unref(es);
    dx_module *m = dx_module_new("ReAct", react_forward, u, ud_free, ud_copy);
    if (!m) {
        ud_free(u);
        dx_module_free(react);
        dx_module_free(extract);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    rc = react ? dx_module_add(m, "react", react) : DX_ENOMEM;
    if (rc == DX_OK)
        rc = extract ? dx_module_add(m, "extract", extract) : DX_ENOMEM;
    else
        dx_module_free(extract);
    if (rc != DX_OK) {
        dx_module_free(m);
        return dx_diag_set(diag, rc, 0, 0, "out of memory");
    }
    *out = m;
    return DX_OK;
}

dx_module *dx_react_new(dx_signature *s, dx_tool *const *tools, size_t n_tools,
                        int max_iters)
{
    dx_react_opts o = {.max_iters = max_iters};
    dx_module *m = NULL;
    return dx_react_create(s, tools, n_tools, &o, &m, NULL) == DX_OK ? m : NULL;
}
