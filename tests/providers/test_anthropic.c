/*
 * test_anthropic.c — the Anthropic Messages codec, driven by
 * tests/fixtures/anthropic/<case>/ (request.json: the exact body expected;
 * response.json / stream.sse: canned replies in Anthropic's documented
 * shapes; expected.json: the common response they decode to).
 */
#include "codec_test_util.h"

#define P "anthropic"
#define MODEL "anthropic/claude-3-5-haiku-latest"

Test(anthropic, encodes_plain_system_tools_and_json_schema_requests,
     .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    const char *cases[] = {"plain", "system", "tools", "json_schema", "stream"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_lm_http h = encode_case(c, P, cases[i]);
        cr_assert_str_eq(h.path, "/v1/messages");
        cr_assert(has_header(&h, "x-api-key: " TEST_KEY));
        cr_assert(has_header(&h, "anthropic-version: 2023-06-01"));
        dx_lm_http_free(&h);
    }
    dx_lm_config_free(c);
}

Test(anthropic, refuses_n_above_one_and_maps_tool_choices, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    dx_lm_request *r = case_request("tools");
    dx_lm_http h;
    dx_lm_error err;
    r->n = 2;
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_ENOTSUP);
    cr_assert_eq(err.kind, DX_LM_ERR_BAD_REQUEST);
    cr_assert_null(h.body);
    r->n = 1;
    r->tool_choice = DX_LM_TOOL_CHOICE_REQUIRED;
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK);
    cr_assert(strstr(h.body, "\"tool_choice\":{\"type\":\"any\"}"), "%s",
              h.body);
    dx_lm_http_free(&h);
    cr_assert_eq(dx_lm_request_set_tool_choice_name(r, "get_weather"), DX_OK);
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK);
    cr_assert(strstr(h.body, "{\"type\":\"tool\",\"name\":\"get_weather\"}"),
              "%s", h.body);
    dx_lm_http_free(&h);
    dx_lm_request_free(r);
    dx_lm_config_free(c);
}

Test(anthropic, parallel_tool_results_share_one_user_message, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    dx_lm_request *r = dx_lm_request_new(NULL);
    dx_lm_request_add_message(r, DX_LM_USER, "Weather?");
    dx_lm_request_add_message(r, DX_LM_ASSISTANT, "Looking.");
    dx_lm_request_add_tool_call(r, "t1", "w", "{\"c\":\"a\"}");
    dx_lm_request_add_tool_call(r, "t2", "w", "{\"c\":\"b\"}");
    dx_lm_request_add_tool_result(r, "t1", "x");
    dx_lm_request_add_tool_result(r, "t2", "y");
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK);
    cJSON *j = cJSON_Parse(h.body);
    cJSON *msgs = cJSON_GetObjectItem(j, "messages");
    cr_assert_eq(cJSON_GetArraySize(msgs), 3);
    cJSON *last = cJSON_GetArrayItem(msgs, 2);
    cr_assert_str_eq(cJSON_GetObjectItem(last, "role")->valuestring, "user");
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(last, "content")), 2);
    cJSON *asst = cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, 1), "content");
    cr_assert_eq(cJSON_GetArraySize(asst), 3, "text + two tool_use blocks");
    cJSON_Delete(j);
    dx_lm_http_free(&h);
    dx_lm_request_free(r);
    dx_lm_config_free(c);
}

Test(anthropic, decodes_text_tool_use_and_usage, .timeout = 10)
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

Test(anthropic, streams_in_any_chunking_to_the_unstreamed_answer, .timeout = 20)
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

Test(anthropic, stream_without_message_stop_is_truncated, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    truncated_case(c, P, "stream", "event: message_stop");
    truncated_case(c, P, "tools", "event: message_delta");
    dx_lm_config_free(c);
}

Test(anthropic, error_statuses_map_to_kinds_and_keep_the_message, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    char *body = fixture(P, "error", "body.json", NULL);
    const char *msg = "Number of request tokens has exceeded your rate limit.";
    const struct {
        int status;
        dx_lm_error_kind kind;
    } cases[] = {
        {400, DX_LM_ERR_BAD_REQUEST},  {401, DX_LM_ERR_AUTH},
        {403, DX_LM_ERR_AUTH},         {404, DX_LM_ERR_NOT_FOUND},
        {413, DX_LM_ERR_BAD_REQUEST},  {429, DX_LM_ERR_RATE_LIMITED},
        {500, DX_LM_ERR_SERVER_ERROR}, {529, DX_LM_ERR_OVERLOADED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        error_case(c, cases[i].status, body, cases[i].kind, msg,
                   "rate_limit_error");
    stream_http_error(c, body, DX_LM_ERR_RATE_LIMITED, msg);
    free(body);
    body = fixture(P, "overloaded", "body.json", NULL);
    error_case(c, 529, body, DX_LM_ERR_OVERLOADED, "Overloaded",
               "overloaded_error");
    free(body);
    dx_lm_config_free(c);
}

Test(anthropic, error_event_mid_stream_is_classified_from_its_body,
     .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    stream_error_event(
        c,
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":"
        "{\"id\":\"m\",\"model\":\"x\",\"usage\":{\"input_tokens\":1}}}\n\n"
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
        "\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        DX_LM_ERR_OVERLOADED, "Overloaded");
    dx_lm_config_free(c);
}

Test(anthropic, malformed_bodies_and_wrong_content_types_are_reported,
     .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    malformed_cases(c, "expected array at content");
    stream_wrong_type(c);
    dx_lm_config_free(c);
}

Test(anthropic, has_no_embeddings, .timeout = 10)
{
    dx_lm_config *c = config(MODEL, NULL);
    const char *in[] = {"a"};
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_embed_encode(c, in, 1, &h, &err), DX_ENOTSUP);
    dx_lm_config_free(c);
}

/* Each way a 200 body or a stream event can be the wrong shape is named
 * by where it is. */
Test(anthropic, odd_shapes_are_named_by_their_place, .timeout = 10)
{
    dx_lm_config *c = config("anthropic/claude-3-5-haiku-latest", NULL);
    static const struct {
        const char *body, *msg;
    } cases[] = {
        {"{\"content\": [{\"text\": \"x\"}]}",
         "anthropic: response: expected object with a type at content[0]"},
        {"{\"content\": [{\"type\": \"text\", \"text\": 3}]}",
         "anthropic: response: expected string at content[0].text"},
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
    static const struct {
        const char *sse, *msg;
    } events[] = {
        {"event: message_start\ndata: {\"type\": \"message_start\"}\n\n",
         "anthropic: stream: message_start without message"},
        {"event: content_block_start\ndata: {\"type\": "
         "\"content_block_start\", \"content_block\": {}}\n\n",
         "anthropic: stream: content_block_start without a valid index"},
        {"event: content_block_start\ndata: {\"type\": "
         "\"content_block_start\", \"index\": 0, \"content_block\": {}}\n\n",
         "anthropic: stream: expected content_block with a type in "
         "content_block_start"},
        {"event: content_block_delta\ndata: {\"type\": "
         "\"content_block_delta\", \"index\": 0, \"delta\": {}}\n\n",
         "anthropic: stream: expected delta with a type in "
         "content_block_delta"},
        {"event: content_block_delta\ndata: {\"type\": "
         "\"content_block_delta\", \"index\": 0, \"delta\": {\"type\": "
         "\"text_delta\"}}\n\n",
         "anthropic: stream: text_delta without text"},
        {"event: content_block_delta\ndata: {\"type\": "
         "\"content_block_delta\", \"index\": 1, \"delta\": {\"type\": "
         "\"input_json_delta\", \"partial_json\": \"{\"}}\n\n",
         "anthropic: stream: input_json_delta for content block 1, which is "
         "not a tool_use block"},
        {"event: ping\ndata: [1]\n\n",
         "anthropic: stream: ping event is not a JSON object"},
    };
    for (size_t i = 0; i < sizeof events / sizeof *events; i++) {
        char *got = NULL;
        dx_lm_error err;
        int rc = stream_bytes(c, events[i].sse, strlen(events[i].sse), 9, 1,
                              &got, &err);
        cr_expect_eq(rc, DX_EPROVIDER, "%s", events[i].sse);
        cr_expect_str_eq(err.message, events[i].msg);
        dx_free(got);
    }
    dx_lm_config_free(c);
}

/* A text block may start with its text; thinking deltas are not answer
 * text. */
Test(anthropic, a_started_text_block_counts_and_thinking_does_not,
     .timeout = 10)
{
    dx_lm_config *c = config("anthropic/claude-3-5-haiku-latest", NULL);
    const char *sse =
        "event: message_start\ndata: {\"type\": \"message_start\", "
        "\"message\": {\"id\": \"m1\", \"model\": \"claude\", \"usage\": "
        "{\"input_tokens\": 3}}}\n\n"
        "event: content_block_start\ndata: {\"type\": \"content_block_start\", "
        "\"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": "
        "\"Hel\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", "
        "\"index\": 0, \"delta\": {\"type\": \"thinking_delta\", \"thinking\": "
        "\"hmm\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", "
        "\"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": "
        "\"lo\"}}\n\n"
        "event: message_delta\ndata: {\"type\": \"message_delta\", \"delta\": "
        "{\"stop_reason\": \"end_turn\"}, \"usage\": {\"output_tokens\": "
        "2}}\n\n"
        "event: message_stop\ndata: {\"type\": \"message_stop\"}\n\n";
    char *got = NULL;
    dx_lm_error err;
    cr_assert_eq(stream_bytes(c, sse, strlen(sse), 0, 3, &got, &err), DX_OK,
                 "%s", err.message);
    cJSON *j = cJSON_Parse(got);
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cr_expect_str_eq(cJSON_GetObjectItem(ch, "text")->valuestring, "Hello",
                     "%s", got);
    cJSON_Delete(j);
    dx_free(got);
    dx_lm_config_free(c);
}
