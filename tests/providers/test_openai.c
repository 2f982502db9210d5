/*
 * test_openai.c — the OpenAI Chat Completions codec (openai/ and
 * openai-compatible/), driven by tests/fixtures/openai/<case>/: request.json
 * is the exact body a common request must encode to, response.json and
 * stream.sse are canned replies in OpenAI's documented shapes, expected.json
 * the common response they must decode to.
 */
#include "codec_test_util.h"

#define P "openai"

Test(openai, encodes_plain_system_tools_and_json_schema_requests, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    const char *cases[] = {"plain", "system", "tools", "json_schema", "stream"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_lm_http h = encode_case(c, P, cases[i]);
        cr_assert_str_eq(h.method, "POST");
        cr_assert_str_eq(h.path, "/chat/completions");
        cr_assert(has_header(&h, "Authorization: Bearer " TEST_KEY));
        cr_assert(has_header(&h, "Content-Type: application/json"));
        cr_assert_eq(h.stream, strcmp(cases[i], "stream") == 0);
        dx_lm_http_free(&h);
    }
    dx_lm_config_free(c);
}

Test(openai, compatible_servers_get_max_tokens_and_their_base_url,
     .timeout = 10)
{
    dx_lm_config *c = NULL;
    cr_assert_eq(dx_lm_config_new("openai-compatible/meta-llama/Llama-3-8B",
                                  "http://127.0.0.1:8000/v1/", NULL, &c),
                 DX_OK);
    dx_lm_request *r = case_request("system");
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK);
    cr_assert(strstr(h.body, "\"max_tokens\":256"), "%s", h.body);
    cr_assert_null(strstr(h.body, "max_completion_tokens"));
    cr_assert(strstr(h.body, "\"model\":\"meta-llama/Llama-3-8B\""));
    for (size_t i = 0; i < h.n_headers; i++)
        cr_assert_null(strstr(h.headers[i], "Authorization"),
                       "no key configured, none sent");
    char *url;
    cr_assert_eq(dx_lm_http_url(c, &h, &url), DX_OK);
    cr_assert_str_eq(url, "http://127.0.0.1:8000/v1/chat/completions");
    dx_free(url);
    dx_lm_http_free(&h);
    dx_lm_request_free(r);
    dx_lm_config_free(c);
}

Test(openai, named_tool_choice_and_n_are_encoded, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    dx_lm_request *r = case_request("tools");
    r->n = 3;
    r->format = DX_LM_FORMAT_JSON_OBJECT;
    cr_assert_eq(dx_lm_request_set_tool_choice_name(r, "get_weather"), DX_OK);
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK);
    cJSON *j = cJSON_Parse(h.body);
    cJSON *tc = cJSON_GetObjectItem(j, "tool_choice");
    cr_assert_str_eq(cJSON_GetObjectItem(tc, "type")->valuestring, "function");
    cr_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(tc, "function"), "name")
            ->valuestring,
        "get_weather");
    cr_assert_eq(cJSON_GetObjectItem(j, "n")->valueint, 3);
    cr_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "response_format"), "type")
            ->valuestring,
        "json_object");
    cJSON_Delete(j);
    dx_lm_http_free(&h);
    dx_lm_request_free(r);
    dx_lm_config_free(c);
}

Test(openai, decodes_text_tool_calls_and_usage, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
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

Test(openai, streams_in_any_chunking_to_the_unstreamed_answer, .timeout = 20)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    stream_case(c, P, "stream");
    stream_case(c, P, "tools");
    /* and the stream equals the unstreamed decode of the same answer */
    char *plain = decode_case(c, P, "stream");
    char *want = fixture(P, "stream", "expected.json", NULL);
    assert_json_eq(plain, want, "unstreamed");
    dx_free(plain);
    free(want);
    dx_lm_config_free(c);
}

Test(openai, stream_without_done_is_truncated, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    truncated_case(c, P, "stream", "data: [DONE]");
    dx_lm_config_free(c);
}

Test(openai, error_statuses_map_to_kinds_and_keep_the_message, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    char *body = fixture(P, "error", "body.json", NULL);
    const struct {
        int status;
        dx_lm_error_kind kind;
    } cases[] = {
        {400, DX_LM_ERR_BAD_REQUEST},  {401, DX_LM_ERR_AUTH},
        {403, DX_LM_ERR_AUTH},         {404, DX_LM_ERR_NOT_FOUND},
        {408, DX_LM_ERR_TIMEOUT},      {409, DX_LM_ERR_CONFLICT},
        {422, DX_LM_ERR_BAD_REQUEST},  {429, DX_LM_ERR_RATE_LIMITED},
        {500, DX_LM_ERR_SERVER_ERROR}, {503, DX_LM_ERR_OVERLOADED},
        {529, DX_LM_ERR_OVERLOADED},   {502, DX_LM_ERR_SERVER_ERROR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        error_case(c, cases[i].status, body, cases[i].kind,
                   "Rate limit reached for gpt-4o-mini", "rate_limit_exceeded");
    stream_http_error(c, body, DX_LM_ERR_RATE_LIMITED,
                      "Rate limit reached for gpt-4o-mini");
    free(body);
    dx_lm_config_free(c);
}

Test(openai, a_key_echoed_in_an_error_message_is_redacted, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    const char *body = "{\"error\":{\"message\":\"Incorrect API key provided: "
                       "sk-test-0123456789abcdef.\",\"type\":"
                       "\"invalid_request_error\",\"code\":"
                       "\"invalid_api_key\"}}";
    error_case(c, 401, body, DX_LM_ERR_AUTH,
               "Incorrect API key provided: [redacted].", "invalid_api_key");
    dx_lm_config_free(c);
}

Test(openai, non_json_error_body_is_quoted, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    dx_lm_header h[] = {{"content-type", "text/html"}};
    const char *page = "<html>502 Bad Gateway</html>";
    dx_lm_reply rep = {502, h, 1, page, strlen(page)};
    dx_lm_response *r = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_lm_decode(c, &rep, &r, &err), DX_EPROVIDER);
    cr_assert_eq(err.kind, DX_LM_ERR_SERVER_ERROR);
    cr_assert(strstr(err.message, "502 Bad Gateway"), "%s", err.message);
    cr_assert_eq(err.retry_after_ms, -1);
    dx_lm_config_free(c);
}

Test(openai, malformed_bodies_and_wrong_content_types_are_reported,
     .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    malformed_cases(c, "expected object at choices[0].message");
    stream_wrong_type(c);
    dx_lm_config_free(c);
}

Test(openai, error_event_in_a_stream_is_typed, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    stream_error_event(c,
                       "data: {\"error\":{\"message\":\"The server had an "
                       "error\",\"type\":\"server_error\"}}\n\n",
                       DX_LM_ERR_SERVER_ERROR, "The server had an error");
    stream_error_event(c, "data: {not json\n\n", DX_LM_ERR_MALFORMED_RESPONSE,
                       "openai: stream: event is not a JSON object");
    dx_lm_config_free(c);
}

Test(openai, embeddings_encode_and_decode_in_index_order, .timeout = 10)
{
    dx_lm_config *c = config("openai/text-embedding-3-small", NULL);
    const char *in[] = {"a", "b"};
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_embed_encode(c, in, 2, &h, &err), DX_OK);
    cr_assert_str_eq(h.path, "/embeddings");
    char *want = fixture(P, "embed", "request.json", NULL);
    assert_json_eq(h.body, want, "embed request");
    free(want);
    dx_lm_http_free(&h);
    size_t n;
    char *body = fixture(P, "embed", "response.json", &n);
    dx_lm_reply rep = {200, json_headers, 2, body, n};
    dx_lm_embeddings *e = NULL;
    cr_assert_eq(dx_lm_embed_decode(c, &rep, &e, &err), DX_OK, "%s",
                 err.message);
    cr_assert_eq(e->n, 2);
    cr_assert_eq(e->dim, 3);
    cr_assert_float_eq(e->data[0], 0.25f, 1e-6);
    cr_assert_float_eq(e->data[3], 0.5f, 1e-6);
    cr_assert_float_eq(e->data[4], -1.0f, 1e-6);
    cr_assert_eq(e->usage.input_tokens, 2);
    cr_assert_str_eq(e->request_id, "req_123");
    dx_lm_embeddings_free(e);
    free(body);
    dx_lm_config_free(c);
}

/* Each way a 200 body can be the wrong shape is named by where it is. */
Test(openai, odd_shapes_are_named_by_their_place, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    static const struct {
        const char *body, *msg;
    } cases[] = {
        {"{\"choices\": {}}", "openai: response: expected array at choices"},
        {"{\"choices\": [3]}",
         "openai: response: expected object with a valid index at "
         "choices[0]"},
        {"{\"choices\": [{\"index\": -1, \"message\": {}}]}",
         "openai: response: expected object with a valid index at "
         "choices[0]"},
        {"{\"choices\": [{\"message\": {\"content\": 5}}]}",
         "openai: response: expected string at choices[0].message.content"},
        {"{\"choices\": [{\"message\": {\"content\": null, \"tool_calls\": "
         "{}}}]}",
         "openai: response: expected array at choices[0].message.tool_calls"},
        {"{\"choices\": [{\"message\": {\"tool_calls\": [{\"function\": "
         "{\"name\": \"f\"}}]}}]}",
         "openai: response: expected function with name and arguments at "
         "choices[0].message.tool_calls[0]"},
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
        cr_expect_null(r);
    }
    /* A compatible server's {"error": "text"} keeps its text. */
    const char *flat = "{\"error\": \"model is loading\"}";
    dx_lm_header h[] = {{"content-type", "application/json"}};
    dx_lm_reply rep = {503, h, 1, flat, strlen(flat)};
    dx_lm_response *r = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_lm_decode(c, &rep, &r, &err), DX_EPROVIDER);
    cr_expect_eq(err.kind, DX_LM_ERR_OVERLOADED);
    cr_expect_str_eq(err.message, "model is loading");
    dx_lm_config_free(c);
}

Test(openai, odd_stream_events_are_named_by_their_place, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    static const struct {
        const char *sse, *msg;
    } cases[] = {
        {"data: {\"choices\": 3}\n\n",
         "openai: stream: expected array at choices"},
        {"data: {\"choices\": [7]}\n\n",
         "openai: stream: expected object at choices[0]"},
        {"data: {\"choices\": [{\"delta\": {\"tool_calls\": [\"x\"]}}]}\n\n",
         "openai: stream: expected object with a valid index at "
         "choices[0].delta.tool_calls[0]"},
        {"data: {\"error\": {\"type\": \"invalid_request_error\"}}\n\n",
         "openai: stream error"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *got = NULL;
        dx_lm_error err;
        int rc = stream_bytes(c, cases[i].sse, strlen(cases[i].sse), 5, 1, &got,
                              &err);
        cr_expect_eq(rc, DX_EPROVIDER, "%s", cases[i].sse);
        cr_expect_str_eq(err.message, cases[i].msg);
        dx_free(got);
    }
    dx_lm_config_free(c);
}

Test(openai, tool_choices_none_and_required_are_encoded, .timeout = 10)
{
    dx_lm_config *c = config("openai/gpt-4o-mini", NULL);
    dx_lm_request *r = case_request("tools");
    const struct {
        dx_lm_tool_choice tc;
        const char *want;
    } cases[] = {{DX_LM_TOOL_CHOICE_NONE, "\"tool_choice\":\"none\""},
                 {DX_LM_TOOL_CHOICE_REQUIRED, "\"tool_choice\":\"required\""}};
    for (size_t i = 0; i < 2; i++) {
        r->tool_choice = cases[i].tc;
        dx_lm_http h;
        dx_lm_error err;
        cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK, "%s", err.message);
        cr_expect(strstr(h.body, cases[i].want), "%s", h.body);
        dx_lm_http_free(&h);
    }
    dx_lm_request_free(r);
    dx_lm_config_free(c);
}

Test(openai, embeddings_of_the_wrong_shape_are_refused, .timeout = 10)
{
    dx_lm_config *c = config("openai/text-embedding-3-small", NULL);
    static const struct {
        const char *body, *msg;
    } cases[] = {
        {"{\"data\": [{\"index\": 5, \"embedding\": [1, 2]}]}",
         "openai: embeddings: bad index at data[0]"},
        {"{\"data\": [{\"index\": 0, \"embedding\": [1, 2]}, {\"index\": 1, "
         "\"embedding\": [1]}]}",
         "openai: embeddings: data[1].embedding has 1 values, expected 2"},
        {"{\"data\": [{\"embedding\": [1, \"x\"]}]}",
         "openai: embeddings: expected number at data[0].embedding[1]"},
        {"{\"data\": []}",
         "openai: embeddings: expected non-empty array at data"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dx_lm_reply rep = {200, json_headers, 2, cases[i].body,
                           strlen(cases[i].body)};
        dx_lm_embeddings *e = NULL;
        dx_lm_error err;
        cr_expect_eq(dx_lm_embed_decode(c, &rep, &e, &err), DX_EPROVIDER, "%s",
                     cases[i].body);
        cr_expect_eq(err.kind, DX_LM_ERR_MALFORMED_RESPONSE);
        cr_expect_str_eq(err.message, cases[i].msg);
        cr_expect_null(e);
    }
    dx_lm_config_free(c);
}
