/*
 * codec_test_util.h — shared by the provider codec suites: fixture loading
 * (tests/fixtures/<provider>/<case>/, found through DX_FIXTURES), the
 * common requests every codec encodes, and drivers that decode a canned
 * reply or feed a canned SSE stream in chosen chunk sizes.
 */
#ifndef DSPEX_CODEC_TEST_UTIL_H
#define DSPEX_CODEC_TEST_UTIL_H

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/provider.h"

#define TEST_KEY "sk-test-0123456789abcdef"

static inline char *fixture(const char *prov, const char *cas, const char *file,
                            size_t *len)
{
    const char *root = getenv("DX_FIXTURES");
    cr_assert(root, "DX_FIXTURES is not set");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s/%s", root, prov, cas, file);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "missing fixture %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)n;
    return buf;
}

static inline dx_lm_config *config(const char *model_string, const char *base)
{
    dx_lm_config *c = NULL;
    cr_assert_eq(dx_lm_config_new(model_string, base, TEST_KEY, &c), DX_OK);
    return c;
}

/* The common requests of the fixture cases. */
static inline dx_lm_request *case_request(const char *cas)
{
    dx_lm_request *r = dx_lm_request_new(NULL);
    cr_assert(r);
    if (strcmp(cas, "system") == 0) {
        cr_assert_eq(
            dx_lm_request_add_message(r, DX_LM_SYSTEM, "You are terse."),
            DX_OK);
        r->has_temperature = true;
        r->temperature = 0.25;
        r->max_tokens = 256;
        r->has_seed = true;
        r->seed = 7;
        cr_assert_eq(dx_lm_request_add_stop(r, "\n\n"), DX_OK);
    }
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_USER, "Hi"), DX_OK);
    if (strcmp(cas, "tools") == 0) {
        cr_assert_eq(
            dx_lm_request_add_tool(
                r, "get_weather", "Weather for a city",
                "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
                "\"string\"}},\"required\":[\"city\"]}"),
            DX_OK);
        r->tool_choice = DX_LM_TOOL_CHOICE_AUTO;
        cr_assert_eq(dx_lm_request_add_message(r, DX_LM_ASSISTANT, ""), DX_OK);
        cr_assert_eq(dx_lm_request_add_tool_call(r, "call_1", "get_weather",
                                                 "{\"city\":\"Paris\"}"),
                     DX_OK);
        cr_assert_eq(dx_lm_request_add_tool_result(r, "call_1", "18C sunny"),
                     DX_OK);
    }
    if (strcmp(cas, "json_schema") == 0)
        cr_assert_eq(dx_lm_request_set_schema(
                         r, "answer",
                         "{\"type\":\"object\",\"properties\":{\"answer\":{"
                         "\"type\":\"string\"}},\"required\":[\"answer\"]}",
                         true),
                     DX_OK);
    if (strcmp(cas, "stream") == 0)
        r->stream = true;
    return r;
}

/* Encode the case's request and compare the body with request.json as JSON
 * values; return the encoded request for further checks. */
static inline dx_lm_http encode_case(const dx_lm_config *c, const char *prov,
                                     const char *cas)
{
    dx_lm_request *r = case_request(cas);
    dx_lm_http h;
    dx_lm_error err;
    int rc = dx_lm_encode(c, r, &h, &err);
    cr_assert_eq(rc, DX_OK, "encode %s: %s", cas, err.message);
    char *want_text = fixture(prov, cas, "request.json", NULL);
    cJSON *want = cJSON_Parse(want_text);
    cJSON *got = cJSON_ParseWithLength(h.body, h.body_len);
    cr_assert(want && got);
    char *w = cJSON_PrintUnformatted(want);
    cr_assert(cJSON_Compare(want, got, 1), "%s/%s body:\n got %s\nwant %s",
              prov, cas, h.body, w);
    cJSON_free(w);
    cJSON_Delete(want);
    cJSON_Delete(got);
    free(want_text);
    dx_lm_request_free(r);
    return h;
}

static inline bool has_header(const dx_lm_http *h, const char *line)
{
    for (size_t i = 0; i < h->n_headers; i++)
        if (strcmp(h->headers[i], line) == 0)
            return true;
    return false;
}

static inline void assert_json_eq(const char *got_text, const char *want_text,
                                  const char *what)
{
    cJSON *want = cJSON_Parse(want_text);
    cJSON *got = cJSON_Parse(got_text);
    cr_assert(want, "%s: expected JSON does not parse", what);
    cr_assert(got, "%s: result does not parse", what);
    cr_assert(cJSON_Compare(want, got, 1), "%s:\n got %s\nwant %s", what,
              got_text, want_text);
    cJSON_Delete(want);
    cJSON_Delete(got);
}

static const dx_lm_header json_headers[] = {
    {"Content-Type", "application/json"},
    {"x-request-id", "req_123"},
};
static const dx_lm_header sse_headers[] = {
    {"content-type", "text/event-stream; charset=utf-8"},
    {"request-id", "req_123"},
};

/* Decode <case>/response.json as a 200 reply; the response as JSON text. */
static inline char *decode_case(const dx_lm_config *c, const char *prov,
                                const char *cas)
{
    size_t n;
    char *body = fixture(prov, cas, "response.json", &n);
    dx_lm_reply rep = {200, json_headers, 2, body, n};
    dx_lm_response *resp = NULL;
    dx_lm_error err;
    int rc = dx_lm_decode(c, &rep, &resp, &err);
    cr_assert_eq(rc, DX_OK, "decode %s/%s: %s", prov, cas, err.message);
    char *js = NULL;
    cr_assert_eq(dx_lm_response_to_json(resp, &js), DX_OK);
    dx_lm_response_free(resp);
    free(body);
    return js;
}

typedef struct delta_log {
    size_t n;
    size_t text_bytes;
} delta_log;

static inline void count_delta(dx_lm_stream *s, const dx_lm_delta *d, void *ud)
{
    (void)s;
    delta_log *l = ud;
    l->n++;
    if (d->kind == DX_LM_DELTA_TEXT)
        l->text_bytes += d->text_len;
}

/* Feed body through a stream decoder in chunks: chunk 0 = random sizes
 * 1..64 from seed, otherwise that fixed size. Returns the rc of finish (or
 * of the first failing feed); *json gets the response on success. */
static inline int stream_bytes(const dx_lm_config *c, const char *body,
                               size_t n, size_t chunk, unsigned seed,
                               char **json, dx_lm_error *err)
{
    dx_lm_stream *s;
    delta_log log = {0, 0};
    cr_assert_eq(dx_lm_stream_new(c, count_delta, &log, &s), DX_OK);
    dx_lm_reply head = {200, sse_headers, 2, NULL, 0};
    int rc = dx_lm_stream_begin(s, &head, err);
    srand(seed);
    for (size_t off = 0; rc == DX_OK && off < n;) {
        size_t k = chunk ? chunk : (size_t)(rand() % 64) + 1;
        if (k > n - off)
            k = n - off;
        rc = dx_lm_stream_feed(s, body + off, k, err);
        off += k;
    }
    dx_lm_response *resp = NULL;
    if (rc == DX_OK)
        rc = dx_lm_stream_finish(s, &resp, err);
    if (rc == DX_OK) {
        cr_assert_gt(log.n, 0, "no deltas were delivered");
        cr_assert_eq(dx_lm_response_to_json(resp, json), DX_OK);
        dx_lm_response_free(resp);
    }
    dx_lm_stream_free(s);
    return rc;
}

/* The stream.sse of a case in 1-byte, 7-byte, whole and random chunks must
 * all give expected.json. */
static inline void stream_case(const dx_lm_config *c, const char *prov,
                               const char *cas)
{
    size_t n;
    char *body = fixture(prov, cas, "stream.sse", &n);
    char *want = fixture(prov, cas, "expected.json", NULL);
    size_t chunks[] = {1, 7, 0, 0, 0, 100000};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        char *got = NULL;
        dx_lm_error err;
        int rc =
            stream_bytes(c, body, n, chunks[i], (unsigned)i + 1, &got, &err);
        cr_assert_eq(rc, DX_OK, "%s/%s chunk %zu: %s", prov, cas, chunks[i],
                     err.message);
        assert_json_eq(got, want, cas);
        dx_free(got);
    }
    free(body);
    free(want);
}

/* Streaming the case's stream.sse cut at every prefix that drops the
 * terminator fails with malformed_response "truncated stream". */
static inline void truncated_case(const dx_lm_config *c, const char *prov,
                                  const char *cas, const char *terminator)
{
    size_t n;
    char *body = fixture(prov, cas, "stream.sse", &n);
    char *cut = strstr(body, terminator);
    cr_assert(cut, "fixture has no %s", terminator);
    dx_lm_error err;
    char *got = NULL;
    int rc = stream_bytes(c, body, (size_t)(cut - body), 3, 1, &got, &err);
    cr_assert_eq(rc, DX_EPROVIDER);
    cr_assert_eq(err.kind, DX_LM_ERR_MALFORMED_RESPONSE);
    cr_assert(strstr(err.message, "truncated stream"), "%s", err.message);
    cr_assert(strstr(err.message, prov), "%s", err.message);
    free(body);
}

/* A reply with status and body: must decode to kind, keeping the
 * provider's message and type. */
static inline void error_case(const dx_lm_config *c, int status,
                              const char *body, dx_lm_error_kind kind,
                              const char *msg, const char *type)
{
    dx_lm_header h[] = {{"content-type", "application/json"},
                        {"retry-after", "3"},
                        {"x-request-id", "req_err"}};
    dx_lm_reply rep = {status, h, 3, body, strlen(body)};
    dx_lm_response *resp = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_lm_decode(c, &rep, &resp, &err), DX_EPROVIDER);
    cr_assert_null(resp);
    cr_assert_eq(err.kind, kind, "status %d: kind %s", status,
                 dx_lm_error_kind_name(err.kind));
    cr_assert_eq(err.status, status);
    cr_assert_str_eq(err.message, msg);
    cr_assert_str_eq(err.type, type);
    cr_assert_eq(err.retry_after_ms, 3000);
    cr_assert_str_eq(err.request_id, "req_err");
    cr_assert_null(strstr(err.message, TEST_KEY));
}

/* 200 with a body that is not JSON / not the right shape / wrong type. */
static inline void malformed_cases(const dx_lm_config *c,
                                   const char *where_hint)
{
    const char *prov = c->provider->name;
    dx_lm_response *resp = NULL;
    dx_lm_error err;
    const char *junk = "{\"choices\": [";
    dx_lm_reply rep = {200, json_headers, 2, junk, strlen(junk)};
    cr_assert_eq(dx_lm_decode(c, &rep, &resp, &err), DX_EPROVIDER);
    cr_assert_eq(err.kind, DX_LM_ERR_MALFORMED_RESPONSE);
    cr_assert(strstr(err.message, "not valid JSON"), "%s", err.message);
    cr_assert(strncmp(err.message, prov, strlen(prov)) == 0, "%s", err.message);

    const char *shape = "{\"id\":\"x\",\"choices\":[{\"message\":3}],"
                        "\"content\":5,\"candidates\":{}}";
    rep.body = shape;
    rep.body_len = strlen(shape);
    cr_assert_eq(dx_lm_decode(c, &rep, &resp, &err), DX_EPROVIDER);
    cr_assert_eq(err.kind, DX_LM_ERR_MALFORMED_RESPONSE);
    cr_assert(strstr(err.message, where_hint), "%s", err.message);

    dx_lm_header html[] = {{"Content-Type", "text/html"}};
    const char *page = "<html>hello</html>";
    dx_lm_reply rep2 = {200, html, 1, page, strlen(page)};
    cr_assert_eq(dx_lm_decode(c, &rep2, &resp, &err), DX_EPROVIDER);
    cr_assert_eq(err.kind, DX_LM_ERR_MALFORMED_RESPONSE);
    cr_assert(strstr(err.message, "text/html"), "%s", err.message);
    cr_assert_null(resp);
}

/* A 2xx stream reply with the wrong content-type fails at begin. */
static inline void stream_wrong_type(const dx_lm_config *c)
{
    dx_lm_stream *s;
    cr_assert_eq(dx_lm_stream_new(c, NULL, NULL, &s), DX_OK);
    dx_lm_header h[] = {{"content-type", "application/json"}};
    dx_lm_reply head = {200, h, 1, NULL, 0};
    dx_lm_error err;
    cr_assert_eq(dx_lm_stream_begin(s, &head, &err), DX_EPROVIDER);
    cr_assert_eq(err.kind, DX_LM_ERR_MALFORMED_RESPONSE);
    cr_assert(strstr(err.message, "text/event-stream"), "%s", err.message);
    cr_assert_eq(dx_lm_stream_feed(s, "data: x\n\n", 9, &err), DX_EPROVIDER);
    dx_lm_response *r = NULL;
    cr_assert_eq(dx_lm_stream_finish(s, &r, &err), DX_EPROVIDER);
    cr_assert_null(r);
    dx_lm_stream_free(s);
}

/* A non-2xx stream reply: the body is collected and decoded at finish. */
static inline void stream_http_error(const dx_lm_config *c, const char *body,
                                     dx_lm_error_kind kind, const char *msg)
{
    dx_lm_stream *s;
    cr_assert_eq(dx_lm_stream_new(c, NULL, NULL, &s), DX_OK);
    dx_lm_header h[] = {{"content-type", "application/json"},
                        {"retry-after-ms", "1500"}};
    dx_lm_reply head = {429, h, 2, NULL, 0};
    dx_lm_error err;
    cr_assert_eq(dx_lm_stream_begin(s, &head, &err), DX_OK);
    for (size_t i = 0; body[i]; i++)
        cr_assert_eq(dx_lm_stream_feed(s, body + i, 1, &err), DX_OK);
    dx_lm_response *r = NULL;
    cr_assert_eq(dx_lm_stream_finish(s, &r, &err), DX_EPROVIDER);
    cr_assert_eq(err.kind, kind);
    cr_assert_eq(err.status, 429);
    cr_assert_eq(err.retry_after_ms, 1500);
    cr_assert_str_eq(err.message, msg);
    dx_lm_stream_free(s);
}

/* An error event inside a 200 stream gives its typed error. */
static inline void stream_error_event(const dx_lm_config *c, const char *sse,
                                      dx_lm_error_kind kind, const char *msg)
{
    dx_lm_error err;
    char *got = NULL;
    int rc = stream_bytes(c, sse, strlen(sse), 5, 1, &got, &err);
    cr_assert_eq(rc, DX_EPROVIDER);
    cr_assert_eq(err.kind, kind, "kind %s", dx_lm_error_kind_name(err.kind));
    cr_assert_str_eq(err.message, msg);
}

#endif
