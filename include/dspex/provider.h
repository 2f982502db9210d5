/*
 * provider.h — the common LM model and the provider codecs.
 *
 * One request/response/error model for every LM provider, and one const
 * vtable per provider (OpenAI Chat Completions and OpenAI-compatible
 * servers, Anthropic Messages, Google Gemini) that translates between it and
 * the provider's HTTP bytes. Codecs never do I/O: encoding yields a method,
 * a path relative to the base URL, header lines and a body; decoding takes a
 * status, headers and a body; streams are decoded from bytes fed in any
 * chunking. The transport (http.h) moves the bytes.
 *
 * API keys live only in dx_lm_config and in the encoded Authorization /
 * x-api-key / x-goog-api-key header lines. They are never put in URLs, and
 * never in error messages (a provider message that echoes the key has it
 * replaced by "[redacted]"). Log requests with dx_lm_http_render, which
 * redacts them.
 *
 * Threads: everything here is reentrant; one dx_lm_stream is used by one
 * thread at a time. A dx_lm_config is read-only after creation and may be
 * shared.
 *
 * Strings in the model are NUL-terminated UTF-8 owned by the struct that
 * holds them (dx_strdup'd); the *_free functions release them.
 */
#ifndef DSPEX_PROVIDER_H
#define DSPEX_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "sse.h"

/* ---- requests ---------------------------------------------------------- */

typedef enum dx_lm_role {
    DX_LM_SYSTEM,
    DX_LM_USER,
    DX_LM_ASSISTANT,
    DX_LM_TOOL,
} dx_lm_role;

/* A call the model asked for. `arguments` is JSON text (an object). */
typedef struct dx_lm_tool_call {
    char *id;
    char *name;
    char *arguments;
} dx_lm_tool_call;

typedef struct dx_lm_message {
    dx_lm_role role;
    char *content; /* never NULL ("" when an assistant turn only calls) */
    dx_lm_tool_call *tool_calls; /* DX_LM_ASSISTANT only */
    size_t n_tool_calls;
    char *tool_call_id; /* DX_LM_TOOL: the call this answers */
} dx_lm_message;

typedef struct dx_lm_tool {
    char *name;
    char *description; /* may be NULL */
    char *parameters;  /* JSON Schema text of the arguments object */
} dx_lm_tool;

typedef enum dx_lm_tool_choice {
    DX_LM_TOOL_CHOICE_DEFAULT, /* send nothing: the provider's default */
    DX_LM_TOOL_CHOICE_AUTO,
    DX_LM_TOOL_CHOICE_NONE,
    DX_LM_TOOL_CHOICE_REQUIRED,
    DX_LM_TOOL_CHOICE_NAMED, /* tool_choice_name must be called */
} dx_lm_tool_choice;

typedef enum dx_lm_format {
    DX_LM_FORMAT_TEXT,
    DX_LM_FORMAT_JSON_OBJECT,
    DX_LM_FORMAT_JSON_SCHEMA,
} dx_lm_format;

/* A chat request. Scalars may be set directly; strings and arrays only
 * through the dx_lm_request_* functions, which copy their arguments. The
 * model name is the provider-side name (without "openai/"); when NULL the
 * config's model is used. */
typedef struct dx_lm_request {
    char *model;
    dx_lm_message *messages;
    size_t n_messages;
    bool has_temperature;
    double temperature;
    int64_t max_tokens; /* 0: unset (Anthropic then gets
                           DX_LM_ANTHROPIC_DEFAULT_MAX_TOKENS) */
    int n;              /* 0 or 1: one choice */
    char **stop;
    size_t n_stop;
    bool has_seed;
    int64_t seed;
    dx_lm_format format;
    char *schema_name; /* DX_LM_FORMAT_JSON_SCHEMA */
    char *schema;      /* JSON Schema text */
    bool schema_strict;
    dx_lm_tool *tools;
    size_t n_tools;
    dx_lm_tool_choice tool_choice;
    char *tool_choice_name;
    bool stream;
} dx_lm_request;

#define DX_LM_ANTHROPIC_DEFAULT_MAX_TOKENS 1024

/* New empty request (model may be NULL). NULL on OOM. Free with
 * dx_lm_request_free. */
DX_API dx_lm_request *dx_lm_request_new(const char *model);
DX_API void dx_lm_request_free(dx_lm_request *r);
/* Deep copy of src (every message, tool call, stop, tool and the schema).
 * DX_OK with *out the caller's (dx_lm_request_free), DX_ENOMEM (*out NULL,
 * nothing left allocated), DX_EINVAL for NULL arguments. */
DX_API int dx_lm_request_copy(const dx_lm_request *src, dx_lm_request **out);

/* Append a message with text content (copied). For DX_LM_TOOL use
 * dx_lm_request_add_tool_result. DX_OK, DX_EINVAL (NULL content, or role
 * DX_LM_TOOL), DX_ENOMEM; on failure the request is unchanged. */
DX_API int dx_lm_request_add_message(dx_lm_request *r, dx_lm_role role,
                                     const char *content);
/* Append a tool call to the last message, which must be DX_LM_ASSISTANT.
 * arguments must be a JSON object text. DX_OK, DX_EINVAL, DX_ENOMEM. */
DX_API int dx_lm_request_add_tool_call(dx_lm_request *r, const char *id,
                                       const char *name, const char *arguments);
/* Append a DX_LM_TOOL message answering call tool_call_id. */
DX_API int dx_lm_request_add_tool_result(dx_lm_request *r,
                                         const char *tool_call_id,
                                         const char *content);
/* Append a tool; parameters must be a JSON object text (DX_EINVAL if not). */
DX_API int dx_lm_request_add_tool(dx_lm_request *r, const char *name,
                                  const char *description,
                                  const char *parameters);
DX_API int dx_lm_request_add_stop(dx_lm_request *r, const char *stop);
/* Ask for JSON output following schema (a JSON object text). Sets format to
 * DX_LM_FORMAT_JSON_SCHEMA. DX_OK, DX_EINVAL, DX_ENOMEM. */
DX_API int dx_lm_request_set_schema(dx_lm_request *r, const char *name,
                                    const char *schema, bool strict);
/* tool_choice = DX_LM_TOOL_CHOICE_NAMED with the given tool name. */
DX_API int dx_lm_request_set_tool_choice_name(dx_lm_request *r,
                                              const char *name);

/* ---- responses --------------------------------------------------------- */

typedef enum dx_lm_finish {
    DX_LM_FINISH_NONE, /* not reported (yet) */
    DX_LM_FINISH_STOP,
    DX_LM_FINISH_LENGTH,
    DX_LM_FINISH_TOOL_CALLS,
    DX_LM_FINISH_CONTENT_FILTER,
    DX_LM_FINISH_OTHER, /* see finish_raw */
} dx_lm_finish;

typedef struct dx_lm_choice {
    char *text; /* never NULL */
    dx_lm_tool_call *tool_calls;
    size_t n_tool_calls;
    dx_lm_finish finish;
    char *finish_raw; /* the provider's own string; NULL if none */
} dx_lm_choice;

/* Token counts; 0 when the provider did not report them. input includes
 * cached input; total is the provider's or input + output. */
typedef struct dx_lm_usage {
    int64_t input_tokens;
    int64_t output_tokens;
    int64_t total_tokens;
    int64_t cached_tokens;
} dx_lm_usage;

typedef struct dx_lm_response {
    char *id;         /* the provider's response id; may be NULL */
    char *model;      /* model that answered; may be NULL */
    char *request_id; /* x-request-id / request-id header; may be NULL */
    dx_lm_choice *choices;
    size_t n_choices;
    bool has_usage;
    dx_lm_usage usage;
    double latency_ms; /* filled by the caller (the codec cannot know) */
    /* dspex's own count of the holders beyond the first
     * (dx_lm_response_share); 0 in a response you build. Never set it. */
    unsigned extra_holders;
} dx_lm_response;

/* Frees r, or, when it is shared, drops one holder's share (the last
 * holder's free frees it). NULL is a no-op. Any thread. */
DX_API void dx_lm_response_free(dx_lm_response *r);
/* One more holder of r, instead of a copy: every holder frees it with
 * dx_lm_response_free. A shared response is read-only to all of its
 * holders, on any threads. Returns r (NULL for NULL). Any thread. */
DX_API dx_lm_response *dx_lm_response_share(dx_lm_response *r);
/* Deep copy of src (every string, choice and tool call; latency too).
 * DX_OK with *out the caller's (dx_lm_response_free), DX_ENOMEM (*out
 * NULL, nothing left allocated), DX_EINVAL for NULL arguments. */
DX_API int dx_lm_response_copy(const dx_lm_response *src, dx_lm_response **out);

/* Render a response as JSON text (for history, caches and tests):
 * {"id","model","request_id","choices":[{"text","tool_calls":[{"id","name",
 * "arguments"}],"finish","finish_raw"}],"usage":{...}}; absent fields are
 * left out. *out is the caller's to dx_free. DX_OK or DX_ENOMEM. */
DX_API int dx_lm_response_to_json(const dx_lm_response *r, char **out);

/* Parse the JSON of dx_lm_response_to_json (len bytes of json) back into a
 * response; latency_ms, which the JSON does not carry, is 0. DX_OK (*out
 * the caller's, dx_lm_response_free), DX_EINVAL (NULL out, or not that JSON:
 * no "choices" array, a choice without "text" or "finish", a tool call
 * missing a field, a non-object "usage"; *out NULL), DX_ENOMEM. An unknown
 * "finish" name decodes as DX_LM_FINISH_OTHER. */
DX_API int dx_lm_response_from_json(const char *json, size_t len,
                                    dx_lm_response **out);

DX_API const char *dx_lm_finish_name(dx_lm_finish f);

/* ---- errors ------------------------------------------------------------ */

#define DX_LM_ERROR_KIND_MAP(X)                                                \
    X(NONE, "none")                                                            \
    X(AUTH, "auth")                                                            \
    X(BAD_REQUEST, "bad_request")                                              \
    X(NOT_FOUND, "not_found")                                                  \
    X(CONFLICT, "conflict")                                                    \
    X(RATE_LIMITED, "rate_limited")                                            \
    X(OVERLOADED, "overloaded")                                                \
    X(SERVER_ERROR, "server_error")                                            \
    X(TIMEOUT, "timeout")                                                      \
    X(CONNECTION, "connection")                                                \
    X(MALFORMED_RESPONSE, "malformed_response")                                \
    X(CANCELLED, "cancelled")

typedef enum dx_lm_error_kind {
#define DX__LM_KIND(name, str) DX_LM_ERR_##name,
    DX_LM_ERROR_KIND_MAP(DX__LM_KIND)
#undef DX__LM_KIND
} dx_lm_error_kind;

/* What went wrong with one provider call. Fixed-size, so filling one never
 * allocates; long provider messages are truncated. Never holds an API key. */
typedef struct dx_lm_error {
    dx_lm_error_kind kind;
    int status;             /* HTTP status; 0 when there was none */
    char provider[16];      /* "openai", "anthropic", ... */
    char type[64];          /* provider's error type/code/status string */
    char message[512];      /* provider's message, or what dspex found */
    int64_t retry_after_ms; /* from retry-after-ms / retry-after; -1 if none */
    char request_id[96];
} dx_lm_error;

/* "rate_limited" etc.; "unknown" for out-of-range values. Static. */
DX_API const char *dx_lm_error_kind_name(dx_lm_error_kind k);

/* Whether a retry may succeed: conflict, rate_limited, overloaded,
 * server_error, timeout, connection. (A policy decides how often.) */
DX_API bool dx_lm_error_retryable(dx_lm_error_kind k);

/* Reset to kind NONE, status 0, empty strings, retry_after_ms -1. */
DX_API void dx_lm_error_clear(dx_lm_error *e);

/* Fill an error (for the transport: timeouts, connection failures). */
DX_API void dx_lm_error_set(dx_lm_error *e, dx_lm_error_kind kind, int status,
                            const char *provider, const char *fmt, ...)
    DX_PRINTF(5, 6);

/* The kind for an HTTP status: 401/403 auth; 400/413/422 and other 4xx bad
 * request; 404 not found; 408 timeout; 409 conflict; 429 rate limited;
 * 503/529 overloaded; other 5xx server error; anything else malformed. */
DX_API dx_lm_error_kind dx_lm_error_kind_for_status(int status);

/* Milliseconds to wait from the retry headers: retry-after-ms (float ms),
 * else retry-after as seconds (float) or an HTTP-date, measured against
 * date_now (the response's Date header; NULL = the current time). -1 when
 * absent or unparsable; dates in the past give 0. */
DX_API int64_t dx_lm_retry_after_ms(const char *retry_after_ms,
                                    const char *retry_after,
                                    const char *date_now);

/* ---- HTTP exchange (what the transport moves) -------------------------- */

typedef struct dx_lm_header {
    const char *name;
    const char *value;
} dx_lm_header;

/* An encoded request. path is relative to the config's base URL and begins
 * with "/"; headers are "Name: value" lines (curl_slist-ready). All owned;
 * free with dx_lm_http_free. */
typedef struct dx_lm_http {
    const char *method; /* static string */
    char *path;
    char **headers;
    size_t n_headers;
    char *body;
    size_t body_len;
    bool stream; /* the reply is an SSE stream: decode with dx_lm_stream */
} dx_lm_http;

DX_API void dx_lm_http_free(dx_lm_http *h);

/* A reply as received; everything is borrowed for the call. Header names
 * match case-insensitively. */
typedef struct dx_lm_reply {
    int status;
    const dx_lm_header *headers;
    size_t n_headers;
    const char *body;
    size_t body_len;
} dx_lm_reply;

/* Value of the first header called name (case-insensitive) or NULL. */
DX_API const char *dx_lm_reply_header(const dx_lm_reply *r, const char *name);

/* ---- providers and configs --------------------------------------------- */

typedef struct dx_lm_provider dx_lm_provider;
typedef struct dx_lm_stream dx_lm_stream;

/* A provider and model to talk to. Created by dx_lm_config_new; read-only
 * afterwards. */
typedef struct dx_lm_config {
    const dx_lm_provider *provider;
    char *model;    /* provider-side model name, e.g. "gpt-4o-mini" */
    char *base_url; /* no trailing "/", e.g. "https://api.openai.com/v1" */
    char *api_key;  /* may be NULL (openai-compatible servers) */
    bool compat;    /* openai-compatible: older field names, key optional */
    /* The user's own headers ("Name: value"), sent with every request
     * after the provider's and in place of any of the same name
     * (dx_lm_config_add_header). */
    char **headers;
    size_t n_headers;
} dx_lm_config;

/* Parse "provider/model" and build a config:
 *   openai/<model>, anthropic/<model>, gemini/<model>: base_url defaults to
 *     the provider's public endpoint; the key is api_key or else the env var
 *     OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY;
 *   openai-compatible/<model>: base_url is required (e.g.
 *     "http://127.0.0.1:8000/v1"); the key is optional (api_key, else
 *     OPENAI_API_KEY is NOT consulted, so a real key is never sent to a
 *     third-party server by accident).
 * base_url/api_key may be NULL and are copied. The model part may itself
 * contain "/" (e.g. "openai-compatible/meta-llama/Llama-3"). Returns DX_OK
 * with *out the caller's (dx_lm_config_free); DX_EINVAL for a string without
 * "/", an empty model, a missing or non-http(s) base_url, or a model with
 * characters unsafe in a URL path (Gemini puts it there); DX_ENOENT for an
 * unknown provider; DX_ENOKEY when a key is required and none is found;
 * DX_ENOMEM. */
DX_API int dx_lm_config_new(const char *model_string, const char *base_url,
                            const char *api_key, dx_lm_config **out);

/* The same checks as dx_lm_config_new, without building anything: returns
 * the code dx_lm_config_new would, and when it is not DX_OK writes into why
 * (why_len bytes, NUL-terminated, may be NULL) a sentence saying what is
 * wrong, e.g. `unknown provider "opneai" (providers: sim, openai, ...)` or
 * `openai-compatible/ needs the server's base URL (...)`. The key itself
 * never appears in it. For tools that report a refused model to a user. */
DX_API int dx_lm_config_explain(const char *model_string, const char *base_url,
                                const char *api_key, char *why, size_t why_len);
DX_API void dx_lm_config_free(dx_lm_config *c);

/* Add a header of the user's to every request of c, as DSPy's
 * extra_headers: a gateway's own key or route (Helicone-Auth,
 * Ocp-Apim-Subscription-Key, OpenRouter's HTTP-Referer...), or a
 * provider header in place of the one dspex sends (Authorization with
 * another scheme). line is "Name: value"; the name a header token, the
 * value without control characters (tabs aside), spaces around it
 * dropped. A second header of the same name (any case) replaces the
 * first. Headers the transport owns (Host, Content-Length,
 * Transfer-Encoding, Connection, Expect, TE, Upgrade, Keep-Alive, Trailer,
 * Proxy-Connection) are refused. Their values are redacted wherever dspex
 * shows a request (dx_lm_http_render): they often carry keys.
 * Copied. DX_OK; DX_EINVAL (see dx_lm_header_explain); DX_ENOMEM. Call
 * before the config is shared: a config is read-only once in use. */
DX_API int dx_lm_config_add_header(dx_lm_config *c, const char *line);

/* Whether line is a header dx_lm_config_add_header takes: DX_OK, or
 * DX_EINVAL with a sentence in why (why_len bytes, NUL-terminated, may be
 * NULL) saying what is wrong. Never echoes the value. */
DX_API int dx_lm_header_explain(const char *line, char *why, size_t why_len);

/* Full URL of an encoded request: base_url + path. *out: dx_free it. */
DX_API int dx_lm_http_url(const dx_lm_config *c, const dx_lm_http *h,
                          char **out);

/* Write a loggable rendering of an encoded request into buf (always
 * NUL-terminated, truncated to cap): "POST <url>\n<headers>\n\n<body>", with
 * the values of Authorization, x-api-key, x-goog-api-key, api-key, cookie
 * and proxy-authorization headers replaced by "[redacted]" and the config's
 * key, wherever else it appears, too. Returns the length it wanted (as
 * snprintf). */
DX_API size_t dx_lm_http_render(const dx_lm_config *c, const dx_lm_http *h,
                                char *buf, size_t cap);

/* Encode a chat request. On DX_OK *out holds the request (free with
 * dx_lm_http_free). On failure *out is zeroed and err says why: DX_EINVAL /
 * DX_ENOTSUP (err kind bad_request: e.g. n > 1 for Anthropic), DX_ENOMEM. */
DX_API int dx_lm_encode(const dx_lm_config *c, const dx_lm_request *req,
                        dx_lm_http *out, dx_lm_error *err);

/* Decode a complete (non-streamed) reply. DX_OK: *out is the caller's
 * (dx_lm_response_free), request_id set from the headers. DX_EPROVIDER: err
 * holds the typed error (HTTP error status with the provider's type and
 * message, or malformed_response saying what and where). DX_ENOMEM. */
DX_API int dx_lm_decode(const dx_lm_config *c, const dx_lm_reply *reply,
                        dx_lm_response **out, dx_lm_error *err);

/* ---- streaming ---------------------------------------------------------- */

typedef enum dx_lm_delta_kind {
    DX_LM_DELTA_META,      /* id / model */
    DX_LM_DELTA_TEXT,      /* text fragment for `choice` */
    DX_LM_DELTA_TOOL_CALL, /* a tool call starts (id/name) and/or grows */
    DX_LM_DELTA_FINISH,    /* finish reason for `choice` */
    DX_LM_DELTA_USAGE,     /* usage so far (absolute, not an increment) */
} dx_lm_delta_kind;

/* One piece of a streamed answer. Pointers are borrowed for the callback. */
typedef struct dx_lm_delta {
    dx_lm_delta_kind kind;
    size_t choice;
    const char *text; /* TEXT */
    size_t text_len;
    size_t tool_index;     /* TOOL_CALL: which call of the choice */
    const char *tool_id;   /* TOOL_CALL: NULL unless it starts here */
    const char *tool_name; /* TOOL_CALL: NULL unless it starts here */
    const char *args;      /* TOOL_CALL: argument text fragment, may be "" */
    size_t args_len;
    dx_lm_finish finish;    /* FINISH */
    const char *finish_raw; /* FINISH */
    dx_lm_usage usage;      /* USAGE */
    const char *id;         /* META, may be NULL */
    const char *model;      /* META, may be NULL */
} dx_lm_delta;

/* Called for each delta, in order. */
typedef void (*dx_lm_delta_fn)(dx_lm_stream *s, const dx_lm_delta *d, void *ud);

/* A decoder for one streamed reply. c must outlive it; fn may be NULL (then
 * the answer is only accumulated). *out: dx_lm_stream_free it. DX_ENOMEM. */
DX_API int dx_lm_stream_new(const dx_lm_config *c, dx_lm_delta_fn fn, void *ud,
                            dx_lm_stream **out);
DX_API void dx_lm_stream_free(dx_lm_stream *s);

/* Start of the reply: status and headers (body ignored). A non-2xx status
 * makes the stream collect the body (bounded) as an error body, decoded at
 * dx_lm_stream_finish. A 2xx reply whose content-type is not
 * text/event-stream fails at once: DX_EPROVIDER, kind malformed_response.
 * Must be called once, before any feed. */
DX_API int dx_lm_stream_begin(dx_lm_stream *s, const dx_lm_reply *head,
                              dx_lm_error *err);

/* Feed body bytes in any chunking. DX_OK; DX_EPROVIDER with err filled (a
 * mid-stream error event, malformed JSON, an event over the size bound);
 * DX_ENOMEM. Failures are sticky: later calls return the same code. */
DX_API int dx_lm_stream_feed(dx_lm_stream *s, const char *buf, size_t len,
                             dx_lm_error *err);

/* End of the body. DX_OK: *out is the accumulated response, equal to what
 * dx_lm_decode gives for the same answer unstreamed (caller frees).
 * DX_EPROVIDER: the HTTP error decoded, an earlier failure, or
 * malformed_response "truncated stream" when the provider's terminator
 * ([DONE], message_stop, a finishReason for every candidate) never came. */
DX_API int dx_lm_stream_finish(dx_lm_stream *s, dx_lm_response **out,
                               dx_lm_error *err);

/* For codecs: apply one delta (accumulate it and call the user's fn).
 * DX_OK, DX_ENOMEM, DX_ELIMIT (an index or size past the stream bounds). */
DX_API int dx_lm_stream_emit(dx_lm_stream *s, const dx_lm_delta *d);

/* ---- embeddings -------------------------------------------------------- */

/* n vectors of dim floats, row-major in data. Free with
 * dx_lm_embeddings_free. */
typedef struct dx_lm_embeddings {
    size_t n;
    size_t dim;
    float *data;
    dx_lm_usage usage;
    char *request_id;
} dx_lm_embeddings;

DX_API void dx_lm_embeddings_free(dx_lm_embeddings *e);

/* Encode an embeddings request for n input texts (OpenAI /embeddings,
 * Gemini :embedContent for one text and :batchEmbedContents for several).
 * Same contract as dx_lm_encode; DX_ENOTSUP for providers without
 * embeddings (Anthropic). */
DX_API int dx_lm_embed_encode(const dx_lm_config *c, const char *const *inputs,
                              size_t n, dx_lm_http *out, dx_lm_error *err);
/* Decode an embeddings reply; same contract as dx_lm_decode. All vectors
 * must have the same length. */
DX_API int dx_lm_embed_decode(const dx_lm_config *c, const dx_lm_reply *reply,
                              dx_lm_embeddings **out, dx_lm_error *err);

/* ---- the codec vtable -------------------------------------------------- */

#define DX_LM_PROVIDER_VERSION 1

enum {
    DX_LM_CAP_TOOLS = 1u << 0,
    DX_LM_CAP_STREAM = 1u << 1,
    DX_LM_CAP_JSON_SCHEMA = 1u << 2,
    DX_LM_CAP_JSON_OBJECT = 1u << 3,
    DX_LM_CAP_N = 1u << 4, /* several choices per request */
    DX_LM_CAP_EMBED = 1u << 5,
    DX_LM_CAP_SEED = 1u << 6,
};

/* A provider codec. Methods may be appended in later versions (check
 * version). stream_state_size bytes of zeroed private state are allocated
 * by dx_lm_stream for stream_event/stream_end. Error bodies are decoded by
 * the common code, which asks error_fields for the provider's type and
 * message. Every method fills err on failure. */
struct dx_lm_provider {
    const char *name; /* model-string prefix, e.g. "anthropic" */
    unsigned version; /* DX_LM_PROVIDER_VERSION */
    unsigned caps;    /* DX_LM_CAP_* */
    size_t stream_state_size;
    const char *default_base_url;
    const char *key_env; /* environment variable holding the key */
    int (*encode)(const dx_lm_config *c, const dx_lm_request *req,
                  dx_lm_http *out, dx_lm_error *err);
    /* Decode a 2xx JSON body (already parsed, passed as a cJSON *) by
     * emitting its content as deltas into sink (dx_lm_stream_emit), so a
     * streamed and an unstreamed answer accumulate the same way. */
    int (*decode)(const dx_lm_config *c, const void *json, dx_lm_stream *sink,
                  dx_lm_error *err);
    /* Provider's error type and message from an error body (cJSON *); may
     * leave them empty. Also gives the kind for a body-only error (a 200
     * stream's error event) or DX_LM_ERR_NONE to go by status. */
    dx_lm_error_kind (*error_fields)(const void *json, dx_lm_error *err);
    int (*stream_event)(dx_lm_stream *s, void *state, const dx_sse_event *ev,
                        dx_lm_error *err);
    /* End of stream: check the terminator came, fix up the result. */
    int (*stream_end)(dx_lm_stream *s, void *state, dx_lm_response *acc,
                      dx_lm_error *err);
    int (*embed_encode)(const dx_lm_config *c, const char *const *inputs,
                        size_t n, dx_lm_http *out, dx_lm_error *err);
    int (*embed_decode)(const dx_lm_config *c, const void *json,
                        dx_lm_embeddings *out, dx_lm_error *err);
};

/* The built-in codecs. */
DX_API extern const dx_lm_provider dx_lm_provider_openai;
DX_API extern const dx_lm_provider dx_lm_provider_openai_compatible;
DX_API extern const dx_lm_provider dx_lm_provider_anthropic;
DX_API extern const dx_lm_provider dx_lm_provider_gemini;
/* The offline simulator "sim/<profile>" (sim.h): no codec; dx_lm_call
 * answers it in-process. */
DX_API extern const dx_lm_provider dx_lm_provider_sim;

/* Find a provider by model-string prefix; NULL if none. Any thread. */
DX_API const dx_lm_provider *dx_lm_provider_find(const char *name);

/* Register another codec (p must stay valid forever). DX_EEXIST for a taken
 * name, DX_EINVAL for a version this build does not know, DX_ELIMIT past 16
 * registrations. Any thread. */
DX_API int dx_lm_provider_register(const dx_lm_provider *p);

#endif
