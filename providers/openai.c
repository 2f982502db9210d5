/*
 * openai.c — the OpenAI Chat Completions codec, used both for openai/ (the
 * official API) and openai-compatible/ (any server speaking the same
 * protocol at another base URL: vLLM, llama.cpp, Ollama, proxies).
 *
 * The two differ in one field: the official API deprecated max_tokens in
 * favour of max_completion_tokens (o-series models reject max_tokens), while
 * many compatible servers only know max_tokens. So openai/ sends
 * max_completion_tokens and openai-compatible/ sends max_tokens. Streams ask
 * for usage (stream_options.include_usage) and end at "data: [DONE]".
 */
#include <stdio.h>
#include <string.h>

#include "codec_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/provider.h"

typedef struct oa_state {
    bool done; /* [DONE] seen */
} oa_state;

static const dx__finish_map finishes[] = {
    {"stop", DX_LM_FINISH_STOP},
    {"length", DX_LM_FINISH_LENGTH},
    {"tool_calls", DX_LM_FINISH_TOOL_CALLS},
    {"function_call", DX_LM_FINISH_TOOL_CALLS},
    {"content_filter", DX_LM_FINISH_CONTENT_FILTER},
    {NULL, DX_LM_FINISH_NONE},
};

static const char *pname(const dx_lm_config *c)
{
    return c->provider->name;
}

static void put_message(dx__jw *w, const dx_lm_message *m)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    dx__jw_obj(w, NULL);
    dx__jw_str(w, "role", roles[m->role]);
    if (m->role == DX_LM_ASSISTANT && m->n_tool_calls &&
        (!m->content || !m->content[0]))
        dx__jw_null(w, "content");
    else
        dx__jw_str(w, "content", m->content);
    if (m->role == DX_LM_TOOL)
        dx__jw_str(w, "tool_call_id", m->tool_call_id);
    if (m->role == DX_LM_ASSISTANT && m->n_tool_calls) {
        dx__jw_arr(w, "tool_calls");
        for (size_t k = 0; k < m->n_tool_calls; k++) {
            dx__jw_obj(w, NULL);
            dx__jw_str(w, "id", m->tool_calls[k].id);
            dx__jw_str(w, "type", "function");
            dx__jw_obj(w, "function");
            dx__jw_str(w, "name", m->tool_calls[k].name);
            /* arguments travel as a JSON string holding JSON text */
            dx__jw_str(w, "arguments", m->tool_calls[k].arguments);
            dx__jw_end(w);
            dx__jw_end(w);
        }
        dx__jw_end(w);
    }
    dx__jw_end(w);
}

/* The body is written as it goes out, member by member (dx__jw), not built
 * as a tree and printed: this runs for every request. */
static int encode(const dx_lm_config *c, const dx_lm_request *req,
                  dx_lm_http *out, dx_lm_error *err)
{
    const char *prov = pname(c);
    if (req->format == DX_LM_FORMAT_JSON_SCHEMA &&
        !dx__json_is_object(req->schema))
        return dx__reject(err, DX_EINVAL, prov, "request: schema is not JSON");
    for (size_t i = 0; i < req->n_tools; i++)
        if (!dx__json_is_object(req->tools[i].parameters))
            return dx__reject(err, DX_EINVAL, prov,
                              "request: tools[%zu].parameters is not JSON", i);
    dx__buf body;
    dx__buf_init(&body, 0);
    dx__jw w;
    dx__jw_init(&w, &body);
    dx__jw_obj(&w, NULL);
    dx__jw_str(&w, "model", req->model ? req->model : c->model);
    dx__jw_arr(&w, "messages");
    for (size_t i = 0; i < req->n_messages; i++)
        put_message(&w, &req->messages[i]);
    dx__jw_end(&w);
    if (req->has_temperature)
        dx__jw_num(&w, "temperature", req->temperature);
    if (req->max_tokens > 0)
        dx__jw_num(&w, c->compat ? "max_tokens" : "max_completion_tokens",
                   (double)req->max_tokens);
    if (req->n > 1)
        dx__jw_num(&w, "n", req->n);
    if (req->n_stop) {
        dx__jw_arr(&w, "stop");
        for (size_t i = 0; i < req->n_stop; i++)
            dx__jw_str(&w, NULL, req->stop[i]);
        dx__jw_end(&w);
    }
    if (req->has_seed)
        dx__jw_num(&w, "seed", (double)req->seed);
    if (req->format == DX_LM_FORMAT_JSON_OBJECT) {
        dx__jw_obj(&w, "response_format");
        dx__jw_str(&w, "type", "json_object");
        dx__jw_end(&w);
    } else if (req->format == DX_LM_FORMAT_JSON_SCHEMA) {
        dx__jw_obj(&w, "response_format");
        dx__jw_obj(&w, "json_schema");
        dx__jw_str(&w, "name", req->schema_name);
        dx__jw_raw(&w, "schema", req->schema);
        if (req->schema_strict)
            dx__jw_bool(&w, "strict", true);
        dx__jw_end(&w);
        dx__jw_str(&w, "type", "json_schema");
        dx__jw_end(&w);
    }
    if (req->n_tools) {
        dx__jw_arr(&w, "tools");
        for (size_t i = 0; i < req->n_tools; i++) {
            const dx_lm_tool *t = &req->tools[i];
            dx__jw_obj(&w, NULL);
            dx__jw_obj(&w, "function");
            dx__jw_str(&w, "name", t->name);
            if (t->description)
                dx__jw_str(&w, "description", t->description);
            dx__jw_raw(&w, "parameters", t->parameters);
            dx__jw_end(&w);
            dx__jw_str(&w, "type", "function");
            dx__jw_end(&w);
        }
        dx__jw_end(&w);
    }
    switch (req->tool_choice) {
    case DX_LM_TOOL_CHOICE_DEFAULT:
        break;
    case DX_LM_TOOL_CHOICE_AUTO:
        dx__jw_str(&w, "tool_choice", "auto");
        break;
    case DX_LM_TOOL_CHOICE_NONE:
        dx__jw_str(&w, "tool_choice", "none");
        break;
    case DX_LM_TOOL_CHOICE_REQUIRED:
        dx__jw_str(&w, "tool_choice", "required");
        break;
    case DX_LM_TOOL_CHOICE_NAMED:
        dx__jw_obj(&w, "tool_choice");
        dx__jw_obj(&w, "function");
        dx__jw_str(&w, "name", req->tool_choice_name);
        dx__jw_end(&w);
        dx__jw_str(&w, "type", "function");
        dx__jw_end(&w);
        break;
    }
    if (req->stream) {
        dx__jw_bool(&w, "stream", true);
        dx__jw_obj(&w, "stream_options");
        dx__jw_bool(&w, "include_usage", true);
        dx__jw_end(&w);
    }
    dx__jw_end(&w);
    int rc = DX_OK;
    if (w.rc != 0 ||
        dx__http_post_written(out, &body, "/chat/completions") != DX_OK)
        rc = dx__oom(err, prov);
    dx__buf_free(&body);
    if (rc == DX_OK && c->api_key) {
        size_t n = strlen(c->api_key) + 8;
        char *v = dx_malloc(n);
        if (v) {
            memcpy(v, "Bearer ", 7);
            memcpy(v + 7, c->api_key, n - 7);
        }
        if (!v || dx__http_header(out, "Authorization", v))
            rc = dx__oom(err, prov);
        if (v) {
            memset(v, 0, n);
            dx_free(v);
        }
    }
    if (rc == DX_OK && req->stream &&
        dx__http_header(out, "Accept", "text/event-stream"))
        rc = dx__oom(err, prov);
    return rc;
}

static int emit_usage(dx_lm_stream *s, const cJSON *u)
{
    dx_lm_delta d = {.kind = DX_LM_DELTA_USAGE};
    d.usage.input_tokens = dx__jint(u, "prompt_tokens", 0);
    d.usage.output_tokens = dx__jint(u, "completion_tokens", 0);
    d.usage.total_tokens = dx__jint(
        u, "total_tokens", d.usage.input_tokens + d.usage.output_tokens);
    d.usage.cached_tokens =
        dx__jint(dx__jobj(u, "prompt_tokens_details"), "cached_tokens", 0);
    return dx_lm_stream_emit(s, &d);
}

static int emit_meta(dx_lm_stream *s, const cJSON *j)
{
    dx_lm_delta d = {.kind = DX_LM_DELTA_META,
                     .id = dx__jstr(j, "id"),
                     .model = dx__jstr(j, "model")};
    return dx_lm_stream_emit(s, &d);
}

/* Index of a choice or tool call: a small non-negative integer. */
static bool get_index(const cJSON *o, size_t dflt, size_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "index");
    if (!v) {
        *out = dflt;
        return true;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e6)
        return false;
    *out = (size_t)v->valuedouble;
    return true;
}

static int decode(const dx_lm_config *c, const void *json, dx_lm_stream *s,
                  dx_lm_error *err)
{
    const cJSON *j = json;
    const char *prov = pname(c);
    int rc;
    if ((rc = emit_meta(s, j)))
        return rc;
    const cJSON *choices = dx__jarr(j, "choices");
    if (!choices)
        return dx__bad(err, prov, "response: expected array at choices");
    size_t i = 0;
    const cJSON *ch;
    cJSON_ArrayForEach(ch, choices)
    {
        size_t idx;
        if (!cJSON_IsObject(ch) || !get_index(ch, i, &idx))
            return dx__bad(err, prov,
                           "response: expected object with a valid index at "
                           "choices[%zu]",
                           i);
        const cJSON *msg = dx__jobj(ch, "message");
        if (!msg)
            return dx__bad(err, prov,
                           "response: expected object at choices[%zu].message",
                           i);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
        if (content && !cJSON_IsString(content) && !cJSON_IsNull(content))
            return dx__bad(err, prov,
                           "response: expected string at "
                           "choices[%zu].message.content",
                           i);
        const char *text = cJSON_IsString(content) ? content->valuestring : "";
        dx_lm_delta d = {.kind = DX_LM_DELTA_TEXT,
                         .choice = idx,
                         .text = text,
                         .text_len = strlen(text)};
        if ((rc = dx_lm_stream_emit(s, &d)))
            return rc;
        const cJSON *tcs = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
        if (tcs && !cJSON_IsArray(tcs) && !cJSON_IsNull(tcs))
            return dx__bad(err, prov,
                           "response: expected array at "
                           "choices[%zu].message.tool_calls",
                           i);
        size_t k = 0;
        const cJSON *tc;
        const cJSON *calls = cJSON_IsArray(tcs) ? tcs : NULL;
        cJSON_ArrayForEach(tc, calls)
        {
            const cJSON *f = dx__jobj(tc, "function");
            const char *name = dx__jstr(f, "name");
            const char *args = dx__jstr(f, "arguments");
            if (!f || !name || !args)
                return dx__bad(err, prov,
                               "response: expected function with name and "
                               "arguments at "
                               "choices[%zu].message.tool_calls[%zu]",
                               i, k);
            const char *id = dx__jstr(tc, "id");
            dx_lm_delta t = {.kind = DX_LM_DELTA_TOOL_CALL,
                             .choice = idx,
                             .tool_index = k,
                             .tool_id = id ? id : "",
                             .tool_name = name,
                             .args = args,
                             .args_len = strlen(args)};
            if ((rc = dx_lm_stream_emit(s, &t)))
                return rc;
            k++;
        }
        const char *fr = dx__jstr(ch, "finish_reason");
        dx_lm_delta f = {.kind = DX_LM_DELTA_FINISH,
                         .choice = idx,
                         .finish = dx__finish_lookup(finishes, fr),
                         .finish_raw = fr};
        if ((rc = dx_lm_stream_emit(s, &f)))
            return rc;
        i++;
    }
    const cJSON *u = dx__jobj(j, "usage");
    return u ? emit_usage(s, u) : DX_OK;
}

static dx_lm_error_kind error_fields(const void *json, dx_lm_error *err)
{
    const cJSON *e = dx__jobj(json, "error");
    if (!e) {
        /* some compatible servers send {"error": "text"} */
        const char *m = dx__jstr(json, "error");
        if (m)
            snprintf(err->message, sizeof err->message, "%s", m);
        return DX_LM_ERR_NONE;
    }
    const char *msg = dx__jstr(e, "message");
    const char *type = dx__jstr(e, "type");
    const char *code = dx__jstr(e, "code");
    if (msg)
        snprintf(err->message, sizeof err->message, "%s", msg);
    snprintf(err->type, sizeof err->type, "%s", code ? code : type ? type : "");
    if ((code && strcmp(code, "rate_limit_exceeded") == 0) ||
        (type && strcmp(type, "rate_limit_error") == 0))
        return DX_LM_ERR_RATE_LIMITED;
    if (type && strcmp(type, "server_error") == 0)
        return DX_LM_ERR_SERVER_ERROR;
    return DX_LM_ERR_NONE;
}

/* An error object inside a 200 stream: classify by its type. */
static int body_error(dx_lm_stream *s, const cJSON *j, dx_lm_error *err,
                      const char *prov)
{
    (void)s;
    dx_lm_error_set(err, DX_LM_ERR_SERVER_ERROR, 0, prov, "%s: stream error",
                    prov);
    err->message[0] = '\0';
    dx_lm_error_kind k = error_fields(j, err);
    if (k != DX_LM_ERR_NONE)
        err->kind = k;
    if (!err->message[0])
        snprintf(err->message, sizeof err->message, "%s: stream error", prov);
    return DX_EPROVIDER;
}

static int stream_event(dx_lm_stream *s, void *state, const dx_sse_event *ev,
                        dx_lm_error *err)
{
    oa_state *st = state;
    const char *prov = dx__stream_config(s)->provider->name;
    if (st->done)
        return DX_OK;
    if (strcmp(ev->data, "[DONE]") == 0) {
        st->done = true;
        return DX_OK;
    }
    cJSON *j = dx__jparse(ev->data, ev->data_len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return dx__bad(err, prov, "stream: event is not a JSON object");
    }
    int rc = DX_OK;
    if (cJSON_GetObjectItemCaseSensitive(j, "error")) {
        rc = body_error(s, j, err, prov);
        cJSON_Delete(j);
        return rc;
    }
    rc = emit_meta(s, j);
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    if (rc == DX_OK && choices && !cJSON_IsArray(choices))
        rc = dx__bad(err, prov, "stream: expected array at choices");
    size_t i = 0;
    const cJSON *ch;
    const cJSON *list = rc == DX_OK ? choices : NULL;
    cJSON_ArrayForEach(ch, list)
    {
        size_t idx;
        if (!cJSON_IsObject(ch) || !get_index(ch, 0, &idx)) {
            rc = dx__bad(err, prov, "stream: expected object at choices[%zu]",
                         i);
            break;
        }
        const cJSON *delta = dx__jobj(ch, "delta");
        const char *text = dx__jstr(delta, "content");
        if (text) {
            dx_lm_delta d = {.kind = DX_LM_DELTA_TEXT,
                             .choice = idx,
                             .text = text,
                             .text_len = strlen(text)};
            if ((rc = dx_lm_stream_emit(s, &d)))
                break;
        }
        size_t k = 0;
        const cJSON *tc;
        cJSON_ArrayForEach(tc, dx__jarr(delta, "tool_calls"))
        {
            size_t ti;
            if (!cJSON_IsObject(tc) || !get_index(tc, k, &ti)) {
                rc = dx__bad(err, prov,
                             "stream: expected object with a valid index at "
                             "choices[%zu].delta.tool_calls[%zu]",
                             i, k);
                break;
            }
            const cJSON *f = dx__jobj(tc, "function");
            const char *args = dx__jstr(f, "arguments");
            dx_lm_delta d = {.kind = DX_LM_DELTA_TOOL_CALL,
                             .choice = idx,
                             .tool_index = ti,
                             .tool_id = dx__jstr(tc, "id"),
                             .tool_name = dx__jstr(f, "name"),
                             .args = args,
                             .args_len = args ? strlen(args) : 0};
            if ((rc = dx_lm_stream_emit(s, &d)))
                break;
            k++;
        }
        if (rc)
            break;
        const char *fr = dx__jstr(ch, "finish_reason");
        if (fr) {
            dx_lm_delta d = {.kind = DX_LM_DELTA_FINISH,
                             .choice = idx,
                             .finish = dx__finish_lookup(finishes, fr),
                             .finish_raw = fr};
            if ((rc = dx_lm_stream_emit(s, &d)))
                break;
        }
        i++;
    }
    const cJSON *u = dx__jobj(j, "usage");
    if (rc == DX_OK && u)
        rc = emit_usage(s, u);
    cJSON_Delete(j);
    return rc;
}

static int stream_end(dx_lm_stream *s, void *state, dx_lm_response *acc,
                      dx_lm_error *err)
{
    (void)acc;
    oa_state *st = state;
    if (!st->done)
        return dx__bad(err, dx__stream_config(s)->provider->name,
                       "stream: truncated stream (no [DONE])");
    return DX_OK;
}

static int embed_encode(const dx_lm_config *c, const char *const *inputs,
                        size_t n, dx_lm_http *out, dx_lm_error *err)
{
    const char *prov = pname(c);
    dx__jb b = {false};
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return dx__oom(err, prov);
    dx__jadd_str(&b, root, "model", c->model);
    cJSON *in = dx__jadd_arr(&b, root, "input");
    for (size_t i = 0; in && i < n; i++)
        dx__jadd_str(&b, in, NULL, inputs[i]);
    int rc = b.oom ? DX_ENOMEM : dx__http_post(out, root, "/embeddings");
    cJSON_Delete(root);
    if (rc == DX_OK && c->api_key) {
        size_t len = strlen(c->api_key) + 8;
        char *v = dx_malloc(len);
        if (v)
            snprintf(v, len, "Bearer %s", c->api_key);
        rc = v ? dx__http_header(out, "Authorization", v) : DX_ENOMEM;
        if (v) {
            memset(v, 0, len);
            dx_free(v);
        }
    }
    return rc ? dx__oom(err, prov) : DX_OK;
}

static int embed_decode(const dx_lm_config *c, const void *json,
                        dx_lm_embeddings *e, dx_lm_error *err)
{
    const char *prov = pname(c);
    const cJSON *data = dx__jarr(json, "data");
    int n = cJSON_GetArraySize(data);
    if (!data || n <= 0)
        return dx__bad(err, prov,
                       "embeddings: expected non-empty array at "
                       "data");
    size_t i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, data)
    {
        char where[48];
        snprintf(where, sizeof where, "data[%zu].embedding", i);
        size_t row;
        if (!get_index(item, i, &row) || row >= (size_t)n)
            return dx__bad(err, prov, "embeddings: bad index at data[%zu]", i);
        int rc =
            dx__embed_row(e, (size_t)n, row,
                          cJSON_GetObjectItemCaseSensitive(item, "embedding"),
                          err, prov, where);
        if (rc)
            return rc;
        i++;
    }
    const cJSON *u = dx__jobj(json, "usage");
    e->usage.input_tokens = dx__jint(u, "prompt_tokens", 0);
    e->usage.total_tokens = dx__jint(u, "total_tokens", 0);
    return DX_OK;
}

#define OPENAI_CAPS                                                            \
    (DX_LM_CAP_TOOLS | DX_LM_CAP_STREAM | DX_LM_CAP_JSON_SCHEMA |              \
     DX_LM_CAP_JSON_OBJECT | DX_LM_CAP_N | DX_LM_CAP_EMBED | DX_LM_CAP_SEED)

const dx_lm_provider dx_lm_provider_openai = {
    .name = "openai",
    .version = DX_LM_PROVIDER_VERSION,
    .caps = OPENAI_CAPS,
    .stream_state_size = sizeof(oa_state),
    .default_base_url = "https://api.openai.com/v1",
    .key_env = "OPENAI_API_KEY",
    .encode = encode,
    .decode = decode,
    .error_fields = error_fields,
    .stream_event = stream_event,
    .stream_end = stream_end,
    .embed_encode = embed_encode,
    .embed_decode = embed_decode,
};

const dx_lm_provider dx_lm_provider_openai_compatible = {
    .name = "openai-compatible",
    .version = DX_LM_PROVIDER_VERSION,
    .caps = OPENAI_CAPS,
    .stream_state_size = sizeof(oa_state),
    .default_base_url = NULL,
    .key_env = NULL,
    .encode = encode,
    .decode = decode,
    .error_fields = error_fields,
    .stream_event = stream_event,
    .stream_end = stream_end,
    .embed_encode = embed_encode,
    .embed_decode = embed_decode,
};
