/*
 * anthropic.c — the Anthropic Messages codec (POST /v1/messages).
 *
 * Differences from the common model it absorbs: the system prompt is a
 * top-level field, not a message; max_tokens is required (we send
 * DX_LM_ANTHROPIC_DEFAULT_MAX_TOKENS when the request has none); tool calls
 * are tool_use content blocks and tool results are tool_result blocks inside
 * a *user* message (consecutive results share one message, as parallel tool
 * calls require); there is no n (n > 1 is refused) and no seed (ignored);
 * JSON mode exists only with a schema (output_config.format), so a plain
 * json_object request sends nothing extra and relies on the prompt.
 * Streams are named events ending in message_stop; tool arguments stream as
 * partial JSON and are normalised at the end to the same compact text an
 * unstreamed reply gives.
 */
#include <stdio.h>
#include <string.h>

#include "codec_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/provider.h"

#define PROV "anthropic"
#define API_VERSION "2023-06-01"
#define MAX_BLOCKS 256

typedef struct an_state {
    bool done;
    int64_t input, output, cache_read, cache_write;
    size_t n_tools;
    /* content block index -> tool call slot + 1 (0: not a tool block) */
    unsigned short slot[MAX_BLOCKS];
} an_state;

static const dx__finish_map finishes[] = {
    {"end_turn", DX_LM_FINISH_STOP},
    {"stop_sequence", DX_LM_FINISH_STOP},
    {"max_tokens", DX_LM_FINISH_LENGTH},
    {"model_context_window_exceeded", DX_LM_FINISH_LENGTH},
    {"tool_use", DX_LM_FINISH_TOOL_CALLS},
    {"refusal", DX_LM_FINISH_CONTENT_FILTER},
    {NULL, DX_LM_FINISH_NONE},
};

static int add_messages(dx__jb *b, cJSON *msgs, const dx_lm_request *req,
                        dx_lm_error *err)
{
    cJSON *results = NULL; /* content array of the open tool-result message */
    for (size_t i = 0; i < req->n_messages && !b->oom; i++) {
        const dx_lm_message *m = &req->messages[i];
        if (m->role == DX_LM_SYSTEM)
            continue;
        if (m->role == DX_LM_TOOL) {
            if (!results) {
                cJSON *o = cJSON_CreateObject();
                dx__jadd_item(b, msgs, NULL, o);
                if (b->oom)
                    break;
                dx__jadd_str(b, o, "role", "user");
                results = dx__jadd_arr(b, o, "content");
                if (!results)
                    break;
            }
            cJSON *blk = cJSON_CreateObject();
            dx__jadd_item(b, results, NULL, blk);
            if (b->oom)
                break;
            dx__jadd_str(b, blk, "type", "tool_result");
            dx__jadd_str(b, blk, "tool_use_id", m->tool_call_id);
            dx__jadd_str(b, blk, "content", m->content);
            continue;
        }
        results = NULL;
        cJSON *o = cJSON_CreateObject();
        dx__jadd_item(b, msgs, NULL, o);
        if (b->oom)
            break;
        dx__jadd_str(b, o, "role",
                     m->role == DX_LM_USER ? "user" : "assistant");
        if (m->role == DX_LM_USER || !m->n_tool_calls) {
            dx__jadd_str(b, o, "content", m->content);
            continue;
        }
        cJSON *blocks = dx__jadd_arr(b, o, "content");
        if (!blocks)
            break;
        if (m->content[0]) {
            cJSON *t = cJSON_CreateObject();
            dx__jadd_item(b, blocks, NULL, t);
            dx__jadd_str(b, t, "type", "text");
            dx__jadd_str(b, t, "text", m->content);
        }
        for (size_t k = 0; k < m->n_tool_calls && !b->oom; k++) {
            cJSON *t = cJSON_CreateObject();
            dx__jadd_item(b, blocks, NULL, t);
            if (b->oom)
                break;
            dx__jadd_str(b, t, "type", "tool_use");
            dx__jadd_str(b, t, "id", m->tool_calls[k].id);
            dx__jadd_str(b, t, "name", m->tool_calls[k].name);
            if (!dx__jadd_raw(b, t, "input", m->tool_calls[k].arguments))
                return dx__reject(err, DX_EINVAL, PROV,
                                  "request: messages[%zu].tool_calls[%zu] "
                                  "arguments are not JSON",
                                  i, k);
        }
    }
    return DX_OK;
}

static int encode(const dx_lm_config *c, const dx_lm_request *req,
                  dx_lm_http *out, dx_lm_error *err)
{
    if (req->n > 1)
        return dx__reject(err, DX_ENOTSUP, PROV,
                          "request: n > 1 is not supported (send n "
                          "requests)");
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
    dx__jadd_str(&b, root, "model", req->model ? req->model : c->model);
    dx__jadd_num(&b, root, "max_tokens",
                 req->max_tokens > 0
                     ? (double)req->max_tokens
                     : (double)DX_LM_ANTHROPIC_DEFAULT_MAX_TOKENS);
    if (system)
        dx__jadd_str(&b, root, "system", system);
    dx_free(system);
    cJSON *msgs = dx__jadd_arr(&b, root, "messages");
    if (msgs)
        rc = add_messages(&b, msgs, req, err);
    if (req->has_temperature)
        dx__jadd_num(&b, root, "temperature", req->temperature);
    if (req->n_stop) {
        cJSON *st = dx__jadd_arr(&b, root, "stop_sequences");
        for (size_t i = 0; st && i < req->n_stop; i++)
            dx__jadd_str(&b, st, NULL, req->stop[i]);
    }
    if (req->format == DX_LM_FORMAT_JSON_SCHEMA) {
        cJSON *oc = dx__jadd_obj(&b, root, "output_config");
        cJSON *f = oc ? dx__jadd_obj(&b, oc, "format") : NULL;
        if (f) {
            dx__jadd_str(&b, f, "type", "json_schema");
            if (!dx__jadd_raw(&b, f, "schema", req->schema) && rc == DX_OK)
                rc = dx__reject(err, DX_EINVAL, PROV,
                                "request: schema is not JSON");
        }
    }
    if (req->n_tools) {
        cJSON *tools = dx__jadd_arr(&b, root, "tools");
        for (size_t i = 0; tools && i < req->n_tools && rc == DX_OK; i++) {
            cJSON *o = cJSON_CreateObject();
            dx__jadd_item(&b, tools, NULL, o);
            if (b.oom)
                break;
            dx__jadd_str(&b, o, "name", req->tools[i].name);
            if (req->tools[i].description)
                dx__jadd_str(&b, o, "description", req->tools[i].description);
            if (!dx__jadd_raw(&b, o, "input_schema", req->tools[i].parameters))
                rc =
                    dx__reject(err, DX_EINVAL, PROV,
                               "request: tools[%zu].parameters is not JSON", i);
        }
    }
    static const char *const choice_types[] = {NULL, "auto", "none", "any",
                                               "tool"};
    if (req->tool_choice != DX_LM_TOOL_CHOICE_DEFAULT) {
        cJSON *tc = dx__jadd_obj(&b, root, "tool_choice");
        if (tc) {
            dx__jadd_str(&b, tc, "type", choice_types[req->tool_choice]);
            if (req->tool_choice == DX_LM_TOOL_CHOICE_NAMED)
                dx__jadd_str(&b, tc, "name", req->tool_choice_name);
        }
    }
    if (req->stream)
        dx__jadd_bool(&b, root, "stream", true);
    if (rc == DX_OK && b.oom)
        rc = dx__oom(err, PROV);
    if (rc == DX_OK &&
        (dx__http_post(out, root, "/v1/messages") ||
         dx__http_header(out, "x-api-key", c->api_key ? c->api_key : "") ||
         dx__http_header(out, "anthropic-version", API_VERSION) ||
         (req->stream && dx__http_header(out, "Accept", "text/event-stream"))))
        rc = dx__oom(err, PROV);
    cJSON_Delete(root);
    return rc;
}

static dx_lm_usage usage_of(const an_state *st)
{
    dx_lm_usage u;
    u.input_tokens = st->input + st->cache_read + st->cache_write;
    u.output_tokens = st->output;
    u.total_tokens = u.input_tokens + u.output_tokens;
    u.cached_tokens = st->cache_read;
    return u;
}

/* Read the usage fields present in u into st (absent ones keep their value:
 * message_delta repeats only what changed). */
static void read_usage(an_state *st, const cJSON *u)
{
    st->input = dx__jint(u, "input_tokens", st->input);
    st->output = dx__jint(u, "output_tokens", st->output);
    st->cache_read = dx__jint(u, "cache_read_input_tokens", st->cache_read);
    st->cache_write =
        dx__jint(u, "cache_creation_input_tokens", st->cache_write);
}

static int decode(const dx_lm_config *c, const void *json, dx_lm_stream *s,
                  dx_lm_error *err)
{
    (void)c;
    const cJSON *j = json;
    int rc;
    dx_lm_delta meta = {.kind = DX_LM_DELTA_META,
                        .id = dx__jstr(j, "id"),
                        .model = dx__jstr(j, "model")};
    dx_lm_delta empty = {.kind = DX_LM_DELTA_TEXT, .text = ""};
    if ((rc = dx_lm_stream_emit(s, &meta)) ||
        (rc = dx_lm_stream_emit(s, &empty)))
        return rc;
    const cJSON *content = dx__jarr(j, "content");
    if (!content)
        return dx__bad(err, PROV, "response: expected array at content");
    size_t i = 0, k = 0;
    const cJSON *blk;
    cJSON_ArrayForEach(blk, content)
    {
        const char *type = dx__jstr(blk, "type");
        if (!type)
            return dx__bad(err, PROV,
                           "response: expected object with a type at "
                           "content[%zu]",
                           i);
        if (strcmp(type, "text") == 0) {
            const char *text = dx__jstr(blk, "text");
            if (!text)
                return dx__bad(err, PROV,
                               "response: expected string at content[%zu]."
                               "text",
                               i);
            dx_lm_delta d = {.kind = DX_LM_DELTA_TEXT,
                             .text = text,
                             .text_len = strlen(text)};
            if ((rc = dx_lm_stream_emit(s, &d)))
                return rc;
        } else if (strcmp(type, "tool_use") == 0) {
            const char *id = dx__jstr(blk, "id");
            const char *name = dx__jstr(blk, "name");
            const cJSON *input = dx__jobj(blk, "input");
            if (!id || !name || !input)
                return dx__bad(err, PROV,
                               "response: expected id, name and input object "
                               "at content[%zu]",
                               i);
            char *args = dx__jprint(input);
            if (!args)
                return DX_ENOMEM;
            dx_lm_delta d = {.kind = DX_LM_DELTA_TOOL_CALL,
                             .tool_index = k++,
                             .tool_id = id,
                             .tool_name = name,
                             .args = args,
                             .args_len = strlen(args)};
            rc = dx_lm_stream_emit(s, &d);
            dx_free(args);
            if (rc)
                return rc;
        }
        /* thinking and other blocks carry no answer text */
        i++;
    }
    const char *sr = dx__jstr(j, "stop_reason");
    dx_lm_delta f = {.kind = DX_LM_DELTA_FINISH,
                     .finish = dx__finish_lookup(finishes, sr),
                     .finish_raw = sr};
    if ((rc = dx_lm_stream_emit(s, &f)))
        return rc;
    const cJSON *u = dx__jobj(j, "usage");
    if (u) {
        an_state st = {0};
        read_usage(&st, u);
        dx_lm_delta d = {.kind = DX_LM_DELTA_USAGE, .usage = usage_of(&st)};
        rc = dx_lm_stream_emit(s, &d);
    }
    return rc;
}

static dx_lm_error_kind error_fields(const void *json, dx_lm_error *err)
{
    static const struct {
        const char *type;
        dx_lm_error_kind kind;
    } kinds[] = {
        {"overloaded_error", DX_LM_ERR_OVERLOADED},
        {"rate_limit_error", DX_LM_ERR_RATE_LIMITED},
        {"api_error", DX_LM_ERR_SERVER_ERROR},
        {"timeout_error", DX_LM_ERR_TIMEOUT},
        {"authentication_error", DX_LM_ERR_AUTH},
        {"permission_error", DX_LM_ERR_AUTH},
        {"billing_error", DX_LM_ERR_AUTH},
        {"not_found_error", DX_LM_ERR_NOT_FOUND},
        {"invalid_request_error", DX_LM_ERR_BAD_REQUEST},
        {"request_too_large", DX_LM_ERR_BAD_REQUEST},
    };
    const cJSON *e = dx__jobj(json, "error");
    const char *type = dx__jstr(e, "type");
    const char *msg = dx__jstr(e, "message");
    if (msg)
        snprintf(err->message, sizeof err->message, "%s", msg);
    if (type)
        snprintf(err->type, sizeof err->type, "%s", type);
    for (size_t i = 0; type && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(type, kinds[i].type) == 0)
            return kinds[i].kind;
    return DX_LM_ERR_NONE;
}

static int on_block_start(dx_lm_stream *s, an_state *st, const cJSON *j,
                          size_t idx, dx_lm_error *err)
{
    const cJSON *blk = dx__jobj(j, "content_block");
    const char *type = dx__jstr(blk, "type");
    if (!type)
        return dx__bad(err, PROV,
                       "stream: expected content_block with a type in "
                       "content_block_start");
    if (strcmp(type, "tool_use") == 0) {
        if (st->n_tools >= MAX_BLOCKS - 1)
            return DX_ELIMIT;
        st->slot[idx] = (unsigned short)(++st->n_tools);
        dx_lm_delta d = {.kind = DX_LM_DELTA_TOOL_CALL,
                         .tool_index = st->n_tools - 1,
                         .tool_id = dx__jstr(blk, "id"),
                         .tool_name = dx__jstr(blk, "name"),
                         .args = ""};
        return dx_lm_stream_emit(s, &d);
    }
    const char *text = strcmp(type, "text") == 0 ? dx__jstr(blk, "text") : NULL;
    if (text && *text) {
        dx_lm_delta d = {
            .kind = DX_LM_DELTA_TEXT, .text = text, .text_len = strlen(text)};
        return dx_lm_stream_emit(s, &d);
    }
    return DX_OK;
}

static int on_block_delta(dx_lm_stream *s, an_state *st, const cJSON *j,
                          size_t idx, dx_lm_error *err)
{
    const cJSON *delta = dx__jobj(j, "delta");
    const char *type = dx__jstr(delta, "type");
    if (!type)
        return dx__bad(err, PROV,
                       "stream: expected delta with a type in "
                       "content_block_delta");
    if (strcmp(type, "text_delta") == 0) {
        const char *text = dx__jstr(delta, "text");
        if (!text)
            return dx__bad(err, PROV, "stream: text_delta without text");
        dx_lm_delta d = {
            .kind = DX_LM_DELTA_TEXT, .text = text, .text_len = strlen(text)};
        return dx_lm_stream_emit(s, &d);
    }
    if (strcmp(type, "input_json_delta") == 0) {
        const char *part = dx__jstr(delta, "partial_json");
        if (!part || !st->slot[idx])
            return dx__bad(err, PROV,
                           "stream: input_json_delta for content block %zu, "
                           "which is not a tool_use block",
                           idx);
        dx_lm_delta d = {.kind = DX_LM_DELTA_TOOL_CALL,
                         .tool_index = st->slot[idx] - 1u,
                         .args = part,
                         .args_len = strlen(part)};
        return dx_lm_stream_emit(s, &d);
    }
    return DX_OK; /* thinking, signature, citations: not answer text */
}

static int stream_event(dx_lm_stream *s, void *state, const dx_sse_event *ev,
                        dx_lm_error *err)
{
    an_state *st = state;
    if (st->done)
        return DX_OK;
    cJSON *j = dx__jparse(ev->data, ev->data_len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return dx__bad(err, PROV, "stream: %s event is not a JSON object",
                       ev->event);
    }
    const char *type = dx__jstr(j, "type");
    if (!type)
        type = ev->event;
    int rc = DX_OK;
    const cJSON *iv = cJSON_GetObjectItemCaseSensitive(j, "index");
    size_t idx = 0;
    if (cJSON_IsNumber(iv) && iv->valuedouble >= 0 &&
        iv->valuedouble < MAX_BLOCKS)
        idx = (size_t)iv->valuedouble;
    else if (strncmp(type, "content_block_", 14) == 0)
        rc = dx__bad(err, PROV, "stream: %s without a valid index", type);

    if (rc != DX_OK) {
    } else if (strcmp(type, "message_start") == 0) {
        const cJSON *m = dx__jobj(j, "message");
        if (!m) {
            rc = dx__bad(err, PROV, "stream: message_start without message");
        } else {
            read_usage(st, dx__jobj(m, "usage"));
            dx_lm_delta meta = {.kind = DX_LM_DELTA_META,
                                .id = dx__jstr(m, "id"),
                                .model = dx__jstr(m, "model")};
            dx_lm_delta empty = {.kind = DX_LM_DELTA_TEXT, .text = ""};
            dx_lm_delta u = {.kind = DX_LM_DELTA_USAGE, .usage = usage_of(st)};
            if (!(rc = dx_lm_stream_emit(s, &meta)) &&
                !(rc = dx_lm_stream_emit(s, &empty)))
                rc = dx_lm_stream_emit(s, &u);
        }
    } else if (strcmp(type, "content_block_start") == 0) {
        rc = on_block_start(s, st, j, idx, err);
    } else if (strcmp(type, "content_block_delta") == 0) {
        rc = on_block_delta(s, st, j, idx, err);
    } else if (strcmp(type, "message_delta") == 0) {
        const char *sr = dx__jstr(dx__jobj(j, "delta"), "stop_reason");
        if (sr) {
            dx_lm_delta f = {.kind = DX_LM_DELTA_FINISH,
                             .finish = dx__finish_lookup(finishes, sr),
                             .finish_raw = sr};
            rc = dx_lm_stream_emit(s, &f);
        }
        const cJSON *u = dx__jobj(j, "usage");
        if (rc == DX_OK && u) {
            read_usage(st, u);
            dx_lm_delta d = {.kind = DX_LM_DELTA_USAGE, .usage = usage_of(st)};
            rc = dx_lm_stream_emit(s, &d);
        }
    } else if (strcmp(type, "message_stop") == 0) {
        st->done = true;
    } else if (strcmp(type, "error") == 0) {
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
    }
    /* ping, content_block_stop and event types added later: nothing to do */
    cJSON_Delete(j);
    return rc;
}

static int stream_end(dx_lm_stream *s, void *state, dx_lm_response *acc,
                      dx_lm_error *err)
{
    (void)s;
    an_state *st = state;
    if (!st->done)
        return dx__bad(err, PROV, "stream: truncated stream (no message_stop)");
    /* Tool input arrives as JSON fragments; re-print it compactly so it
     * reads as the unstreamed reply's input object does. */
    for (size_t i = 0; i < acc->n_choices; i++) {
        dx_lm_choice *c = &acc->choices[i];
        for (size_t k = 0; k < c->n_tool_calls; k++) {
            char *a = c->tool_calls[k].arguments;
            const char *text = a[0] ? a : "{}";
            cJSON *v = dx__jparse(text, strlen(text));
            if (!cJSON_IsObject(v)) {
                cJSON_Delete(v);
                return dx__bad(err, PROV,
                               "stream: tool call %zu input is not a JSON "
                               "object",
                               k);
            }
            char *p = dx__jprint(v);
            cJSON_Delete(v);
            if (!p)
                return DX_ENOMEM;
            dx_free(a);
            c->tool_calls[k].arguments = p;
        }
    }
    return DX_OK;
}

const dx_lm_provider dx_lm_provider_anthropic = {
    .name = PROV,
    .version = DX_LM_PROVIDER_VERSION,
    .caps = DX_LM_CAP_TOOLS | DX_LM_CAP_STREAM | DX_LM_CAP_JSON_SCHEMA,
    .stream_state_size = sizeof(an_state),
    .default_base_url = "https://api.anthropic.com",
    .key_env = "ANTHROPIC_API_KEY",
    .encode = encode,
    .decode = decode,
    .error_fields = error_fields,
    .stream_event = stream_event,
    .stream_end = stream_end,
    .embed_encode = NULL,
    .embed_decode = NULL,
};
