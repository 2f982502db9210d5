/*
 * gemini.c — the Google Gemini API codec (generativelanguage.googleapis.com
 * v1beta: models/{model}:generateContent, :streamGenerateContent?alt=sse,
 * :embedContent and :batchEmbedContents).
 *
 * Mapping choices: roles are user/model; the system prompt goes to
 * systemInstruction; sampling settings live in generationConfig. Schemas in
 * the common model are JSON Schema, so they go to the fields that take JSON
 * Schema (responseJsonSchema, parametersJsonSchema) rather than the older
 * OpenAPI-subset ones (responseSchema, parameters), which reject common
 * JSON Schema keywords. Tool results become functionResponse parts, whose
 * function name Gemini requires: it is found from the assistant turn that
 * made the call; a result that is not a JSON object is wrapped as
 * {"output": text}. Gemini gives function calls no id unless it wants to;
 * missing ids become "call_<n>" (n = the call's position in the candidate),
 * identically for streamed and unstreamed replies. Gemini reports
 * finishReason STOP also when the model called tools; the common finish is
 * then tool_calls (finish_raw stays "STOP"). Streams have no sentinel: a
 * stream is complete when every candidate seen has reported a finishReason.
 * The key goes in x-goog-api-key, never in the URL's ?key=.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/provider.h"

#define PROV "gemini"
#define MAX_CAND 16

typedef struct gm_state {
    size_t tools[MAX_CAND]; /* tool calls so far per candidate */
    bool seen[MAX_CAND];
    bool finished[MAX_CAND];
    bool blocked; /* promptFeedback.blockReason: no candidates will come */
} gm_state;

static const dx__finish_map finishes[] = {
    {"STOP", DX_LM_FINISH_STOP},
    {"MAX_TOKENS", DX_LM_FINISH_LENGTH},
    {"SAFETY", DX_LM_FINISH_CONTENT_FILTER},
    {"RECITATION", DX_LM_FINISH_CONTENT_FILTER},
    {"BLOCKLIST", DX_LM_FINISH_CONTENT_FILTER},
    {"PROHIBITED_CONTENT", DX_LM_FINISH_CONTENT_FILTER},
    {"SPII", DX_LM_FINISH_CONTENT_FILTER},
    {"IMAGE_SAFETY", DX_LM_FINISH_CONTENT_FILTER},
    {NULL, DX_LM_FINISH_NONE},
};

/* The model part of the path: "models/" prefix dropped, and only
 * characters that cannot change the URL's meaning. */
static const char *path_model(const char *m)
{
    if (strncmp(m, "models/", 7) == 0)
        m += 7;
    if (!*m || strstr(m, ".."))
        return NULL;
    for (const char *p = m; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || strchr("-._@", *p)))
            return NULL;
    return m;
}

static const char *call_name(const dx_lm_request *req, size_t upto,
                             const char *id)
{
    for (size_t i = upto; i-- > 0;) {
        const dx_lm_message *m = &req->messages[i];
        for (size_t k = 0; m->role == DX_LM_ASSISTANT && k < m->n_tool_calls;
             k++)
            if (strcmp(m->tool_calls[k].id, id) == 0)
                return m->tool_calls[k].name;
    }
    return NULL;
}

static cJSON *text_part(dx__jb *b, cJSON *parts, const char *text)
{
    cJSON *p = cJSON_CreateObject();
    dx__jadd_item(b, parts, NULL, p);
    if (b->oom)
        return NULL;
    dx__jadd_str(b, p, "text", text);
    return p;
}

static int add_contents(dx__jb *b, cJSON *contents, const dx_lm_request *req,
                        dx_lm_error *err)
{
    cJSON *results = NULL; /* parts of the open functionResponse turn */
    for (size_t i = 0; i < req->n_messages && !b->oom; i++) {
        const dx_lm_message *m = &req->messages[i];
        if (m->role == DX_LM_SYSTEM)
            continue;
        if (m->role == DX_LM_TOOL) {
            const char *name = call_name(req, i, m->tool_call_id);
            if (!name)
                return dx__reject(err, DX_EINVAL, PROV,
                                  "request: messages[%zu] answers tool call "
                                  "\"%s\", which no earlier assistant "
                                  "message made",
                                  i, m->tool_call_id);
            if (!results) {
                cJSON *o = cJSON_CreateObject();
                dx__jadd_item(b, contents, NULL, o);
                if (b->oom)
                    break;
                dx__jadd_str(b, o, "role", "user");
                if (!(results = dx__jadd_arr(b, o, "parts")))
                    break;
            }
            cJSON *p = cJSON_CreateObject();
            dx__jadd_item(b, results, NULL, p);
            cJSON *fr = b->oom ? NULL : dx__jadd_obj(b, p, "functionResponse");
            if (!fr)
                break;
            dx__jadd_str(b, fr, "name", name);
            cJSON *v = dx__jparse(m->content, strlen(m->content));
            if (cJSON_IsObject(v)) {
                dx__jadd_item(b, fr, "response", v);
            } else {
                cJSON_Delete(v);
                cJSON *r = dx__jadd_obj(b, fr, "response");
                if (r)
                    dx__jadd_str(b, r, "output", m->content);
            }
            continue;
        }
        results = NULL;
        cJSON *o = cJSON_CreateObject();
        dx__jadd_item(b, contents, NULL, o);
        if (b->oom)
            break;
        dx__jadd_str(b, o, "role", m->role == DX_LM_USER ? "user" : "model");
        cJSON *parts = dx__jadd_arr(b, o, "parts");
        if (!parts)
            break;
        if (m->content[0] || !m->n_tool_calls)
            text_part(b, parts, m->content);
        for (size_t k = 0; k < m->n_tool_calls && !b->oom; k++) {
            cJSON *p = cJSON_CreateObject();
            dx__jadd_item(b, parts, NULL, p);
            cJSON *fc = b->oom ? NULL : dx__jadd_obj(b, p, "functionCall");
            if (!fc)
                break;
            dx__jadd_str(b, fc, "name", m->tool_calls[k].name);
            if (!dx__jadd_raw(b, fc, "args", m->tool_calls[k].arguments))
                return dx__reject(err, DX_EINVAL, PROV,
                                  "request: messages[%zu].tool_calls[%zu] "
                                  "arguments are not JSON",
                                  i, k);
        }
    }
    return DX_OK;
}

static int add_generation_config(dx__jb *b, cJSON *root,
                                 const dx_lm_request *req, dx_lm_error *err)
{
    cJSON *g = cJSON_CreateObject();
    if (!g) {
        b->oom = true;
        return DX_OK;
    }
    int rc = DX_OK;
    if (req->has_temperature)
        dx__jadd_num(b, g, "temperature", req->temperature);
    if (req->max_tokens > 0)
        dx__jadd_num(b, g, "maxOutputTokens", (double)req->max_tokens);
    if (req->n > 1)
        dx__jadd_num(b, g, "candidateCount", req->n);
    if (req->n_stop) {
        cJSON *st = dx__jadd_arr(b, g, "stopSequences");
        for (size_t i = 0; st && i < req->n_stop; i++)
            dx__jadd_str(b, st, NULL, req->stop[i]);
    }
    if (req->has_seed)
        dx__jadd_num(b, g, "seed", (double)req->seed);
    if (req->format != DX_LM_FORMAT_TEXT)
        dx__jadd_str(b, g, "responseMimeType", "application/json");
    if (req->format == DX_LM_FORMAT_JSON_SCHEMA &&
        !dx__jadd_raw(b, g, "responseJsonSchema", req->schema))
        rc = dx__reject(err, DX_EINVAL, PROV, "request: schema is not JSON");
    if (g->child)
        dx__jadd_item(b, root, "generationConfig", g);
    else
        cJSON_Delete(g);
    return rc;
}

static int encode(const dx_lm_config *c, const dx_lm_request *req,
                  dx_lm_http *out, dx_lm_error *err)
{
    const char *model = path_model(req->model ? req->model : c->model);
    if (!model)
        return dx__reject(err, DX_EINVAL, PROV,
                          "request: model name is not safe in a URL path");
    bool oom = false;
    char *system = dx__system_text(req, &oom);
    if (oom)
        return dx__oom(err, PROV);
    dx__jb b = {false};
    int rc = DX_OK;
    cJSON *root = cJSON_CreateObject();
    if (!root) {
        dx_free(system);
        return dx__oom(err, PROV);
    }
    if (system) {
        cJSON *si = dx__jadd_obj(&b, root, "systemInstruction");
        cJSON *parts = si ? dx__jadd_arr(&b, si, "parts") : NULL;
        if (parts)
            text_part(&b, parts, system);
    }
    dx_free(system);
    cJSON *contents = dx__jadd_arr(&b, root, "contents");
    if (contents)
        rc = add_contents(&b, contents, req, err);
    if (rc == DX_OK)
        rc = add_generation_config(&b, root, req, err);
    if (req->n_tools && rc == DX_OK) {
        cJSON *tools = dx__jadd_arr(&b, root, "tools");
        cJSON *t = cJSON_CreateObject();
        dx__jadd_item(&b, tools, NULL, t);
        cJSON *decls =
            b.oom ? NULL : dx__jadd_arr(&b, t, "functionDeclarations");
        for (size_t i = 0; decls && i < req->n_tools && rc == DX_OK; i++) {
            cJSON *o = cJSON_CreateObject();
            dx__jadd_item(&b, decls, NULL, o);
            if (b.oom)
                break;
            dx__jadd_str(&b, o, "name", req->tools[i].name);
            if (req->tools[i].description)
                dx__jadd_str(&b, o, "description", req->tools[i].description);
            if (!dx__jadd_raw(&b, o, "parametersJsonSchema",
                              req->tools[i].parameters))
                rc =
                    dx__reject(err, DX_EINVAL, PROV,
                               "request: tools[%zu].parameters is not JSON", i);
        }
    }
    static const char *const modes[] = {NULL, "AUTO", "NONE", "ANY", "ANY"};
    if (req->tool_choice != DX_LM_TOOL_CHOICE_DEFAULT) {
        cJSON *tc = dx__jadd_obj(&b, root, "toolConfig");
        cJSON *fc = tc ? dx__jadd_obj(&b, tc, "functionCallingConfig") : NULL;
        if (fc) {
            dx__jadd_str(&b, fc, "mode", modes[req->tool_choice]);
            if (req->tool_choice == DX_LM_TOOL_CHOICE_NAMED) {
                cJSON *names = dx__jadd_arr(&b, fc, "allowedFunctionNames");
                if (names)
                    dx__jadd_str(&b, names, NULL, req->tool_choice_name);
            }
        }
    }
    if (rc == DX_OK && b.oom)
        rc = dx__oom(err, PROV);
    if (rc == DX_OK &&
        (dx__http_post(out, root,
                       req->stream ? "/models/%s:streamGenerateContent?alt=sse"
                                   : "/models/%s:generateContent",
                       model) ||
         dx__http_header(out, "x-goog-api-key", c->api_key ? c->api_key : "") ||
         (req->stream && dx__http_header(out, "Accept", "text/event-stream"))))
        rc = dx__oom(err, PROV);
    cJSON_Delete(root);
    return rc;
}

/* One candidate (of a whole reply or of a stream chunk) into deltas. */
static int candidate(dx_lm_stream *s, gm_state *st, const cJSON *cand,
                     size_t pos, dx_lm_error *err)
{
    int rc;
    const cJSON *iv = cJSON_GetObjectItemCaseSensitive(cand, "index");
    size_t idx = pos;
    if (iv && (!cJSON_IsNumber(iv) || iv->valuedouble < 0 ||
               iv->valuedouble >= MAX_CAND))
        return dx__bad(err, PROV,
                       "response: bad index at candidates[%zu].index", pos);
    if (iv)
        idx = (size_t)iv->valuedouble;
    else if (idx >= MAX_CAND)
        return DX_ELIMIT;
    st->seen[idx] = true;
    dx_lm_delta empty = {.kind = DX_LM_DELTA_TEXT, .choice = idx, .text = ""};
    if ((rc = dx_lm_stream_emit(s, &empty)))
        return rc;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(cand, "content");
    if (content && !cJSON_IsObject(content))
        return dx__bad(err, PROV,
                       "response: expected object at candidates[%zu].content",
                       pos);
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(content, "parts");
    if (parts && !cJSON_IsArray(parts))
        return dx__bad(err, PROV,
                       "response: expected array at "
                       "candidates[%zu].content.parts",
                       pos);
    size_t k = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, parts)
    {
        const char *text = dx__jstr(p, "text");
        const cJSON *fc = dx__jobj(p, "functionCall");
        if (text &&
            !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "thought"))) {
            dx_lm_delta d = {.kind = DX_LM_DELTA_TEXT,
                             .choice = idx,
                             .text = text,
                             .text_len = strlen(text)};
            if ((rc = dx_lm_stream_emit(s, &d)))
                return rc;
        } else if (fc) {
            const char *name = dx__jstr(fc, "name");
            const cJSON *args = cJSON_GetObjectItemCaseSensitive(fc, "args");
            if (!name || (args && !cJSON_IsObject(args)))
                return dx__bad(err, PROV,
                               "response: expected name and args object at "
                               "candidates[%zu].content.parts[%zu]."
                               "functionCall",
                               pos, k);
            char *a = args ? dx__jprint(args) : dx_strdup("{}");
            if (!a)
                return DX_ENOMEM;
            char idbuf[32];
            const char *id = dx__jstr(fc, "id");
            if (!id) {
                snprintf(idbuf, sizeof idbuf, "call_%zu", st->tools[idx]);
                id = idbuf;
            }
            dx_lm_delta d = {.kind = DX_LM_DELTA_TOOL_CALL,
                             .choice = idx,
                             .tool_index = st->tools[idx]++,
                             .tool_id = id,
                             .tool_name = name,
                             .args = a,
                             .args_len = strlen(a)};
            rc = dx_lm_stream_emit(s, &d);
            dx_free(a);
            if (rc)
                return rc;
        }
        k++;
    }
    const char *fr = dx__jstr(cand, "finishReason");
    if (fr) {
        dx_lm_finish f = dx__finish_lookup(finishes, fr);
        if (f == DX_LM_FINISH_STOP && st->tools[idx])
            f = DX_LM_FINISH_TOOL_CALLS;
        st->finished[idx] = true;
        dx_lm_delta d = {.kind = DX_LM_DELTA_FINISH,
                         .choice = idx,
                         .finish = f,
                         .finish_raw = fr};
        if ((rc = dx_lm_stream_emit(s, &d)))
            return rc;
    }
    return DX_OK;
}

/* A whole GenerateContentResponse (a reply or one stream chunk). */
static int response(dx_lm_stream *s, gm_state *st, const cJSON *j,
                    dx_lm_error *err)
{
    int rc;
    dx_lm_delta meta = {.kind = DX_LM_DELTA_META,
                        .id = dx__jstr(j, "responseId"),
                        .model = dx__jstr(j, "modelVersion")};
    if ((rc = dx_lm_stream_emit(s, &meta)))
        return rc;
    const cJSON *cands = cJSON_GetObjectItemCaseSensitive(j, "candidates");
    if (cands && !cJSON_IsArray(cands))
        return dx__bad(err, PROV, "response: expected array at candidates");
    size_t pos = 0;
    const cJSON *cand;
    cJSON_ArrayForEach(cand, cands)
    {
        if (!cJSON_IsObject(cand))
            return dx__bad(err, PROV,
                           "response: expected object at candidates[%zu]", pos);
        if ((rc = candidate(s, st, cand, pos, err)))
            return rc;
        pos++;
    }
    const char *block = dx__jstr(dx__jobj(j, "promptFeedback"), "blockReason");
    if (block && !pos) {
        /* the prompt itself was refused: one empty, filtered choice */
        st->blocked = true;
        dx_lm_delta e = {.kind = DX_LM_DELTA_TEXT, .text = ""};
        dx_lm_delta f = {.kind = DX_LM_DELTA_FINISH,
                         .finish = DX_LM_FINISH_CONTENT_FILTER,
                         .finish_raw = block};
        if ((rc = dx_lm_stream_emit(s, &e)) || (rc = dx_lm_stream_emit(s, &f)))
            return rc;
    }
    const cJSON *u = dx__jobj(j, "usageMetadata");
    if (u) {
        dx_lm_delta d = {.kind = DX_LM_DELTA_USAGE};
        d.usage.input_tokens = dx__jint(u, "promptTokenCount", 0);
        d.usage.output_tokens = dx__jint(u, "candidatesTokenCount", 0) +
                                dx__jint(u, "thoughtsTokenCount", 0);
        d.usage.total_tokens = dx__jint(
            u, "totalTokenCount", d.usage.input_tokens + d.usage.output_tokens);
        d.usage.cached_tokens = dx__jint(u, "cachedContentTokenCount", 0);
        if ((rc = dx_lm_stream_emit(s, &d)))
            return rc;
    }
    return DX_OK;
}

static int decode(const dx_lm_config *c, const void *json, dx_lm_stream *s,
                  dx_lm_error *err)
{
    (void)c;
    const cJSON *j = json;
    if (!dx__jarr(j, "candidates") &&
        !dx__jstr(dx__jobj(j, "promptFeedback"), "blockReason"))
        return dx__bad(err, PROV, "response: expected array at candidates");
    gm_state st;
    memset(&st, 0, sizeof st);
    return response(s, &st, j, err);
}

static dx_lm_error_kind error_fields(const void *json, dx_lm_error *err)
{
    static const struct {
        const char *status;
        dx_lm_error_kind kind;
    } kinds[] = {
        {"RESOURCE_EXHAUSTED", DX_LM_ERR_RATE_LIMITED},
        {"UNAVAILABLE", DX_LM_ERR_OVERLOADED},
        {"INTERNAL", DX_LM_ERR_SERVER_ERROR},
        {"DEADLINE_EXCEEDED", DX_LM_ERR_TIMEOUT},
        {"UNAUTHENTICATED", DX_LM_ERR_AUTH},
        {"PERMISSION_DENIED", DX_LM_ERR_AUTH},
        {"NOT_FOUND", DX_LM_ERR_NOT_FOUND},
        {"INVALID_ARGUMENT", DX_LM_ERR_BAD_REQUEST},
        {"FAILED_PRECONDITION", DX_LM_ERR_BAD_REQUEST},
    };
    /* errors may come wrapped in a one-element array */
    const cJSON *root = json;
    if (cJSON_IsArray(root))
        root = cJSON_GetArrayItem(root, 0);
    const cJSON *e = dx__jobj(root, "error");
    const char *status = dx__jstr(e, "status");
    const char *msg = dx__jstr(e, "message");
    if (msg)
        snprintf(err->message, sizeof err->message, "%s", msg);
    if (status)
        snprintf(err->type, sizeof err->type, "%s", status);
    /* RetryInfo {"retryDelay": "37s"} in details: a hint when the headers
     * give none */
    const cJSON *d;
    cJSON_ArrayForEach(d, dx__jarr(e, "details"))
    {
        const char *t = dx__jstr(d, "@type");
        const char *delay = dx__jstr(d, "retryDelay");
        if (t && delay && strstr(t, "RetryInfo")) {
            char *end;
            double secs = strtod(delay, &end);
            if (end != delay && (*end == 's' || !*end) && secs >= 0 &&
                secs < 1e7)
                err->retry_after_ms = (int64_t)(secs * 1000.0);
        }
    }
    for (size_t i = 0; status && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(status, kinds[i].status) == 0)
            return kinds[i].kind;
    return DX_LM_ERR_NONE;
}

static int stream_event(dx_lm_stream *s, void *state, const dx_sse_event *ev,
                        dx_lm_error *err)
{
    gm_state *st = state;
    cJSON *j = dx__jparse(ev->data, ev->data_len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return dx__bad(err, PROV, "stream: event is not a JSON object");
    }
    int rc;
    if (cJSON_GetObjectItemCaseSensitive(j, "error")) {
        dx_lm_error_set(err, DX_LM_ERR_SERVER_ERROR, 0, PROV,
                        "%s: stream error", PROV);
        err->message[0] = '\0';
        dx_lm_error_kind k = error_fields(j, err);
        if (k != DX_LM_ERR_NONE)
            err->kind = k;
        if (!err->message[0])
            snprintf(err->message, sizeof err->message, "%s: stream error",
                     PROV);
        rc = DX_EPROVIDER;
    } else {
        rc = response(s, st, j, err);
    }
    cJSON_Delete(j);
    return rc;
}

static int stream_end(dx_lm_stream *s, void *state, dx_lm_response *acc,
                      dx_lm_error *err)
{
    (void)s;
    (void)acc;
    gm_state *st = state;
    bool any = st->blocked, all = true;
    for (size_t i = 0; i < MAX_CAND; i++) {
        any = any || st->seen[i];
        all = all && (!st->seen[i] || st->finished[i]);
    }
    if (!any || !all)
        return dx__bad(err, PROV,
                       "stream: truncated stream (no finishReason for every "
                       "candidate)");
    return DX_OK;
}

static int embed_encode(const dx_lm_config *c, const char *const *inputs,
                        size_t n, dx_lm_http *out, dx_lm_error *err)
{
    const char *model = path_model(c->model);
    if (!model)
        return dx__reject(err, DX_EINVAL, PROV,
                          "request: model name is not safe in a URL path");
    dx__jb b = {false};
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return dx__oom(err, PROV);
    /* one text: {"content": ...}; several: {"requests": [{"model",
     * "content"}, ...]} for :batchEmbedContents */
    cJSON *reqs = n > 1 ? dx__jadd_arr(&b, root, "requests") : NULL;
    for (size_t i = 0; i < n && !b.oom; i++) {
        cJSON *holder = root;
        if (n > 1) {
            holder = cJSON_CreateObject();
            dx__jadd_item(&b, reqs, NULL, holder);
            if (b.oom)
                break;
            char full[256];
            snprintf(full, sizeof full, "models/%s", model);
            dx__jadd_str(&b, holder, "model", full);
        }
        cJSON *content = dx__jadd_obj(&b, holder, "content");
        cJSON *parts = content ? dx__jadd_arr(&b, content, "parts") : NULL;
        if (parts)
            text_part(&b, parts, inputs[i]);
    }
    int rc = b.oom ? DX_ENOMEM
                   : dx__http_post(out, root,
                                   n > 1 ? "/models/%s:batchEmbedContents"
                                         : "/models/%s:embedContent",
                                   model);
    cJSON_Delete(root);
    if (rc == DX_OK)
        rc = dx__http_header(out, "x-goog-api-key",
                             c->api_key ? c->api_key : "");
    return rc ? dx__oom(err, PROV) : DX_OK;
}

static int embed_decode(const dx_lm_config *c, const void *json,
                        dx_lm_embeddings *e, dx_lm_error *err)
{
    (void)c;
    const cJSON *one = dx__jobj(json, "embedding");
    if (one)
        return dx__embed_row(e, 1, 0,
                             cJSON_GetObjectItemCaseSensitive(one, "values"),
                             err, PROV, "embedding.values");
    const cJSON *many = dx__jarr(json, "embeddings");
    int n = cJSON_GetArraySize(many);
    if (!many || n <= 0)
        return dx__bad(err, PROV,
                       "embeddings: expected object at embedding or array at "
                       "embeddings");
    size_t i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, many)
    {
        char where[48];
        snprintf(where, sizeof where, "embeddings[%zu].values", i);
        int rc = dx__embed_row(e, (size_t)n, i,
                               cJSON_GetObjectItemCaseSensitive(item, "values"),
                               err, PROV, where);
        if (rc)
            return rc;
        i++;
    }
    return DX_OK;
}

const dx_lm_provider dx_lm_provider_gemini = {
    .name = PROV,
    .version = DX_LM_PROVIDER_VERSION,
    .caps = DX_LM_CAP_TOOLS | DX_LM_CAP_STREAM | DX_LM_CAP_JSON_SCHEMA |
            DX_LM_CAP_JSON_OBJECT | DX_LM_CAP_N | DX_LM_CAP_EMBED |
            DX_LM_CAP_SEED,
    .stream_state_size = sizeof(gm_state),
    .default_base_url = "https://generativelanguage.googleapis.com/v1beta",
    .key_env = "GEMINI_API_KEY",
    .encode = encode,
    .decode = decode,
    .error_fields = error_fields,
    .stream_event = stream_event,
    .stream_end = stream_end,
    .embed_encode = embed_encode,
    .embed_decode = embed_decode,
};
