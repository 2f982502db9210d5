/*
 * test_gemini.c — the Gemini codec, driven by tests/fixtures/gemini/<case>/
 * (request.json: the exact body expected; response.json / stream.sse:
 * canned replies in the documented GenerateContentResponse shape;
 * expected.json: the common response they decode to).
 */
#include "codec_test_util.h"

#define P "gemini"
#define MODEL "gemini/gemini-2.0-flash"

Test(gemini, encodes_plain_system_tools_and_json_schema_requests, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    const char *cases[] = {"plain", "system", "tools", "json_schema", "stream"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_lm_http h = encode_case(c, P, cases[i]);
        cr_assert_str_eq(h.path,
                         strcmp(cases[i], "stream") == 0
                             ? "/models/gemini-2.0-flash:"
                               "streamGenerateContent?alt=sse"
                             : "/models/gemini-2.0-flash:generateContent");
        cr_assert(has_header(&h, "x-goog-api-key: " TEST_KEY));
        cr_assert_null(strstr(h.path, "key="));
        dx_lm_http_free(&h);
    }
    dx_lm_config_free(c);
}

Test(gemini, candidate_count_and_named_tool_choice, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    dx_lm_request *r = case_request("tools");
    r->n = 2;
    cr_assert_eq(dx_lm_request_set_tool_choice_name(r, "get_weather"), DX_OK);
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK);
    cr_assert(strstr(h.body, "\"candidateCount\":2"), "%s", h.body);
    cr_assert(strstr(h.body, "{\"mode\":\"ANY\",\"allowedFunctionNames\":["
                             "\"get_weather\"]}"),
              "%s", h.body);
    dx_lm_http_free(&h);
    dx_lm_request_free(r);
    dx_lm_config_free(c);
}

Test(gemini, tool_result_for_an_unknown_call_is_refused, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    dx_lm_request *r = dx_lm_request_new(NULL);
    dx_lm_request_add_message(r, DX_LM_USER, "Hi");
    dx_lm_request_add_tool_result(r, "nope", "x");
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_EINVAL);
    cr_assert(strstr(err.message, "nope"), "%s", err.message);
    dx_lm_request_free(r);
    dx_lm_config_free(c);
}

Test(gemini, decodes_text_function_calls_and_usage, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    const char *cases[] = {"plain", "tools"};
    for (size_t i = 0; i < 2; i++) {
        char *got = decode_case(c, P, cases[i]);
        char *want = fixture(P, cases[i], "expected.json", NULL);
        assert_json_eq(got, want, cases[i]);
        dx_free(got);
        free(want);
    }
    dx_lm_config_free(c);
}

Test(gemini, blocked_prompt_is_one_filtered_choice, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    const char *body = "{\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}";
    dx_lm_reply rep = {200, json_headers, 2, body, strlen(body)};
    dx_lm_response *r = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_lm_decode(c, &rep, &r, &err), DX_OK, "%s", err.message);
    cr_assert_eq(r->n_choices, 1);
    cr_assert_eq(r->choices[0].finish, DX_LM_FINISH_CONTENT_FILTER);
    cr_assert_str_eq(r->choices[0].finish_raw, "SAFETY");
    cr_assert_str_eq(r->choices[0].text, "");
    dx_lm_response_free(r);
    dx_lm_config_free(c);
}

Test(gemini, streams_in_any_chunking_to_the_unstreamed_answer, .timeout = 20)
{
    dx_lm_config *c = config(MODEL, NULL);
    stream_case(c, P, "stream");
    stream_case(c, P, "tools");
    char *plain = decode_case(c, P, "stream");
    char *want = fixture(P, "stream", "expected.json", NULL);
    assert_json_eq(plain, want, "unstreamed");
    dx_free(plain);
    free(want);
    dx_lm_config_free(c);
}

Test(gemini, stream_without_a_final_finish_reason_is_truncated, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    /* cut before the last chunk (the one with finishReason) */
    size_t n;
    char *body = fixture(P, "stream", "stream.sse", &n);
    char *last = strstr(body + 1, "data: ");
    cr_assert(last);
    dx_lm_error err;
    char *got = NULL;
    cr_assert_eq(stream_bytes(c, body, (size_t)(last - body), 1, 1, &got, &err),
                 DX_EPROVIDER);
    cr_assert_eq(err.kind, DX_LM_ERR_MALFORMED_RESPONSE);
    cr_assert(strstr(err.message, "truncated stream"), "%s", err.message);
    /* an empty body too */
    cr_assert_eq(stream_bytes(c, body, 0, 1, 1, &got, &err), DX_EPROVIDER);
    free(body);
    dx_lm_config_free(c);
}

Test(gemini, error_statuses_map_to_kinds_and_keep_the_message, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    char *body = fixture(P, "error", "body.json", NULL);
    const char *msg = "Resource has been exhausted (e.g. check quota).";
    error_case(c, 429, body, DX_LM_ERR_RATE_LIMITED, msg, "RESOURCE_EXHAUSTED");
    error_case(c, 503, body, DX_LM_ERR_OVERLOADED, msg, "RESOURCE_EXHAUSTED");
    error_case(c, 400, body, DX_LM_ERR_BAD_REQUEST, msg, "RESOURCE_EXHAUSTED");
    /* without headers the RetryInfo in the body gives the wait */
    dx_lm_header h[] = {{"content-type", "application/json"}};
    dx_lm_reply rep = {429, h, 1, body, strlen(body)};
    dx_lm_response *r = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_lm_decode(c, &rep, &r, &err), DX_EPROVIDER);
    cr_assert_eq(err.retry_after_ms, 37000);
    stream_http_error(c, body, DX_LM_ERR_RATE_LIMITED, msg);
    free(body);
    dx_lm_config_free(c);
}

Test(gemini, error_chunk_mid_stream_is_typed, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    stream_error_event(c,
                       "data: {\"error\":{\"code\":503,\"message\":\"The "
                       "model is overloaded.\",\"status\":\"UNAVAILABLE\"}}"
                       "\n\n",
                       DX_LM_ERR_OVERLOADED, "The model is overloaded.");
    dx_lm_config_free(c);
}

Test(gemini, malformed_bodies_and_wrong_content_types_are_reported,
     .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    malformed_cases(c, "expected array at candidates");
    stream_wrong_type(c);
    dx_lm_config_free(c);
}

Test(gemini, embeddings_single_and_batch, .timeout = 10)
{
    dx_lm_config *c = config("gemini/text-embedding-004", NULL);
    const char *in[] = {"a", "b"};
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_embed_encode(c, in, 1, &h, &err), DX_OK);
    cr_assert_str_eq(h.path, "/models/text-embedding-004:embedContent");
    assert_json_eq(h.body, "{\"content\":{\"parts\":[{\"text\":\"a\"}]}}",
                   "single");
    dx_lm_http_free(&h);
    cr_assert_eq(dx_lm_embed_encode(c, in, 2, &h, &err), DX_OK);
    cr_assert_str_eq(h.path, "/models/text-embedding-004:batchEmbedContents");
    char *want = fixture(P, "embed", "request.json", NULL);
    assert_json_eq(h.body, want, "batch");
    free(want);
    dx_lm_http_free(&h);

    const char *one = "{\"embedding\":{\"values\":[1,2]}}";
    dx_lm_reply rep = {200, json_headers, 2, one, strlen(one)};
    dx_lm_embeddings *e = NULL;
    cr_assert_eq(dx_lm_embed_decode(c, &rep, &e, &err), DX_OK);
    cr_assert_eq(e->n, 1);
    cr_assert_eq(e->dim, 2);
    dx_lm_embeddings_free(e);
    size_t n;
    char *body = fixture(P, "embed", "response.json", &n);
    dx_lm_reply rep2 = {200, json_headers, 2, body, n};
    cr_assert_eq(dx_lm_embed_decode(c, &rep2, &e, &err), DX_OK);
    cr_assert_eq(e->n, 2);
    cr_assert_float_eq(e->data[4], -1.0f, 1e-6);
    dx_lm_embeddings_free(e);
    const char *ragged = "{\"embeddings\":[{\"values\":[1,2]},{\"values\":"
                         "[1]}]}";
    dx_lm_reply rep3 = {200, json_headers, 2, ragged, strlen(ragged)};
    cr_assert_eq(dx_lm_embed_decode(c, &rep3, &e, &err), DX_EPROVIDER);
    cr_assert(strstr(err.message, "embeddings[1].values"), "%s", err.message);
    free(body);
    dx_lm_config_free(c);
}

/* Each way a 200 body can be the wrong shape is named by where it is. */
Test(gemini, odd_shapes_are_named_by_their_place, .timeout = 10)
{
    dx_lm_config *c = config("gemini/gemini-2.0-flash", NULL);
    static const struct {
        const char *body, *msg;
    } cases[] = {
        {"{\"candidates\": {}}",
         "gemini: response: expected array at candidates"},
        {"{\"candidates\": [1]}",
         "gemini: response: expected object at candidates[0]"},
        {"{\"candidates\": [{\"index\": -2}]}",
         "gemini: response: bad index at candidates[0].index"},
        {"{\"candidates\": [{\"content\": []}]}",
         "gemini: response: expected object at candidates[0].content"},
        {"{\"candidates\": [{\"content\": {\"parts\": {}}}]}",
         "gemini: response: expected array at candidates[0].content.parts"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dx_lm_reply rep = {200, json_headers, 2, cases[i].body,
                           strlen(cases[i].body)};
        dx_lm_response *r = NULL;
        dx_lm_error err;
        cr_expect_eq(dx_lm_decode(c, &rep, &r, &err), DX_EPROVIDER, "%s",
                     cases[i].body);
        cr_expect_eq(err.kind, DX_LM_ERR_MALFORMED_RESPONSE);
        cr_expect_str_eq(err.message, cases[i].msg);
    }
    /* An error wrapped in a one-element array, as Gemini sometimes sends. */
    const char *wrapped = "[{\"error\": {\"code\": 404, \"message\": \"no such "
                          "model\", \"status\": \"NOT_FOUND\"}}]";
    dx_lm_header h[] = {{"content-type", "application/json"}};
    dx_lm_reply rep = {404, h, 1, wrapped, strlen(wrapped)};
    dx_lm_response *r = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_lm_decode(c, &rep, &r, &err), DX_EPROVIDER);
    cr_expect_eq(err.kind, DX_LM_ERR_NOT_FOUND);
    cr_expect_str_eq(err.message, "no such model");
    /* A stream event that is not an object. */
    const char *sse = "data: [1, 2]\n\n";
    char *got = NULL;
    cr_expect_eq(stream_bytes(c, sse, strlen(sse), 4, 1, &got, &err),
                 DX_EPROVIDER);
    cr_expect_str_eq(err.message, "gemini: stream: event is not a JSON object");
    dx_free(got);
    dx_lm_config_free(c);
}

Test(gemini, embeddings_of_the_wrong_shape_are_refused, .timeout = 10)
{
    dx_lm_config *c = config("gemini/text-embedding-004", NULL);
    const char *body = "{\"embeddings\": []}";
    dx_lm_reply rep = {200, json_headers, 2, body, strlen(body)};
    dx_lm_embeddings *e = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_lm_embed_decode(c, &rep, &e, &err), DX_EPROVIDER);
    cr_expect_str_eq(err.message, "gemini: embeddings: expected object at "
                                  "embedding or array at embeddings");
    cr_expect_null(e);
    dx_lm_config_free(c);
}
