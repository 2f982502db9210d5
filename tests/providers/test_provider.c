/*
 * test_provider.c — the common LM model: model-string parsing and keys,
 * the registry, request builders, status and retry-after mapping, redacted
 * rendering, a response's JSON form there and back, a shared response's
 * holders, a request's deep copy, and allocation failure in decoding and copying (every failing allocation
 * is reported as DX_ENOMEM and leaks nothing).
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/provider.h"

Test(provider, model_strings_pick_the_provider_and_defaults, .timeout = 10)
{
    dx_lm_config *c = NULL;
    cr_assert_eq(dx_lm_config_new("openai/gpt-4o-mini", NULL, "k-1234", &c),
                 DX_OK);
    cr_assert_eq(c->provider, &dx_lm_provider_openai);
    cr_assert_str_eq(c->model, "gpt-4o-mini");
    cr_assert_str_eq(c->base_url, "https://api.openai.com/v1");
    dx_lm_config_free(c);
    cr_assert_eq(dx_lm_config_new("anthropic/claude-3-5-haiku-latest", NULL,
                                  "k-1234", &c),
                 DX_OK);
    cr_assert_str_eq(c->base_url, "https://api.anthropic.com");
    dx_lm_config_free(c);
    cr_assert_eq(dx_lm_config_new("gemini/gemini-2.0-flash",
                                  "http://127.0.0.1:9/v1beta/", "k-1234", &c),
                 DX_OK);
    cr_assert_str_eq(c->base_url, "http://127.0.0.1:9/v1beta");
    dx_lm_config_free(c);
}

Test(provider, bad_model_strings_are_refused, .timeout = 10)
{
    dx_lm_config *c = NULL;
    cr_assert_eq(dx_lm_config_new("gpt-4o", NULL, "k", &c), DX_EINVAL);
    cr_assert_eq(dx_lm_config_new("openai/", NULL, "k", &c), DX_EINVAL);
    cr_assert_eq(dx_lm_config_new("/x", NULL, "k", &c), DX_EINVAL);
    cr_assert_eq(dx_lm_config_new("mistral/x", NULL, "k", &c), DX_ENOENT);
    cr_assert_eq(dx_lm_config_new("gemini/a?key=b", NULL, "k", &c), DX_EINVAL);
    cr_assert_eq(dx_lm_config_new("gemini/../x", NULL, "k", &c), DX_EINVAL);
    cr_assert_eq(dx_lm_config_new("openai-compatible/x", NULL, NULL, &c),
                 DX_EINVAL, "compatible servers need a base_url");
    cr_assert_eq(dx_lm_config_new("openai/x", "ftp://h", "k", &c), DX_EINVAL);
    cr_assert_eq(dx_lm_config_new("openai/x", NULL, "a\r\nb", &c), DX_EINVAL);
    cr_assert_null(c);
}

/* A refused model string comes with the sentence a user reads (dspex's
 * --model, the example agents): what is wrong, in the words of the input. */
Test(provider, a_refused_model_string_is_explained, .timeout = 10)
{
    static const struct {
        const char *model, *base_url, *key;
        int rc;
        const char *says;
    } cases[] = {
        {"gpt-4o", NULL, "k", DX_EINVAL, "\"gpt-4o\" is not PROVIDER/MODEL"},
        {"openai/", NULL, "k", DX_EINVAL, "is not PROVIDER/MODEL"},
        {"", NULL, "k", DX_EINVAL, "no model given"},
        {"opneai/gpt-4o", NULL, "k", DX_ENOENT, "unknown provider \"opneai\""},
        {"gemini/a?key=b", NULL, "k", DX_EINVAL, "model name \"a?key=b\""},
        {"openai-compatible/x", NULL, NULL, DX_EINVAL,
         "needs the server's base URL"},
        {"openai/x", "ftp://h", "k", DX_EINVAL,
         "\"ftp://h\" is not an http://"},
        {"anthropic/m", NULL, NULL, DX_ENOKEY, "set ANTHROPIC_API_KEY"},
        {"openai/x", NULL, "sk-secret\r\nX: y", DX_EINVAL, "line break"},
    };
    unsetenv("ANTHROPIC_API_KEY");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char why[256];
        memset(why, 'x', sizeof why);
        int rc = dx_lm_config_explain(cases[i].model, cases[i].base_url,
                                      cases[i].key, why, sizeof why);
        cr_assert_eq(rc, cases[i].rc, "%s: %d", cases[i].model, rc);
        cr_assert(strstr(why, cases[i].says), "%s: %s", cases[i].model, why);
        cr_assert_null(strstr(why, "sk-secret"), "the key is never repeated");
        /* and it is the code dx_lm_config_new gives */
        dx_lm_config *c = NULL;
        cr_assert_eq(dx_lm_config_new(cases[i].model, cases[i].base_url,
                                      cases[i].key, &c),
                     rc);
        cr_assert_null(c);
    }
    /* the unknown-provider sentence lists the providers there are */
    char why[256];
    dx_lm_config_explain("x/y", NULL, NULL, why, sizeof why);
    cr_assert(strstr(why, "sim, openai, openai-compatible, anthropic, gemini"),
              "%s", why);
    /* a good one says nothing; a small or missing buffer is fine */
    why[0] = 'x';
    cr_assert_eq(dx_lm_config_explain("sim/base", NULL, NULL, why, sizeof why),
                 DX_OK);
    cr_assert_eq(why[0], '\0');
    char tiny[8];
    cr_assert_eq(dx_lm_config_explain("x/y", NULL, NULL, tiny, sizeof tiny),
                 DX_ENOENT);
    cr_assert_eq(strlen(tiny), sizeof tiny - 1);
    cr_assert_eq(dx_lm_config_explain("x/y", NULL, NULL, NULL, 0), DX_ENOENT);
}

Test(provider, keys_come_from_the_argument_then_the_environment, .timeout = 10)
{
    dx_lm_config *c = NULL;
    unsetenv("ANTHROPIC_API_KEY");
    cr_assert_eq(dx_lm_config_new("anthropic/m", NULL, NULL, &c), DX_ENOKEY);
    setenv("ANTHROPIC_API_KEY", "env-key-1", 1);
    cr_assert_eq(dx_lm_config_new("anthropic/m", NULL, NULL, &c), DX_OK);
    cr_assert_str_eq(c->api_key, "env-key-1");
    dx_lm_config_free(c);
    cr_assert_eq(dx_lm_config_new("anthropic/m", NULL, "arg-key", &c), DX_OK);
    cr_assert_str_eq(c->api_key, "arg-key");
    dx_lm_config_free(c);
    /* a compatible server never gets OPENAI_API_KEY by accident */
    setenv("OPENAI_API_KEY", "real-openai-key", 1);
    cr_assert_eq(
        dx_lm_config_new("openai-compatible/m", "http://h/v1", NULL, &c),
        DX_OK);
    cr_assert_null(c->api_key);
    dx_lm_config_free(c);
    unsetenv("OPENAI_API_KEY");
    unsetenv("ANTHROPIC_API_KEY");
}

static int fake_encode(const dx_lm_config *c, const dx_lm_request *r,
                       dx_lm_http *o, dx_lm_error *e)
{
    (void)c, (void)r, (void)o, (void)e;
    return DX_ENOTSUP;
}

static int fake_decode(const dx_lm_config *c, const void *j, dx_lm_stream *s,
                       dx_lm_error *e)
{
    (void)c, (void)j, (void)s, (void)e;
    return DX_ENOTSUP;
}

static const dx_lm_provider fake = {
    .name = "fake",
    .version = DX_LM_PROVIDER_VERSION,
    .default_base_url = "http://localhost",
    .encode = fake_encode,
    .decode = fake_decode,
};

Test(provider, registry_finds_builtins_and_registered_codecs, .timeout = 10)
{
    cr_assert_eq(dx_lm_provider_find("gemini"), &dx_lm_provider_gemini);
    cr_assert_eq(dx_lm_provider_find("openai-compatible"),
                 &dx_lm_provider_openai_compatible);
    cr_assert_null(dx_lm_provider_find("fake"));
    cr_assert_eq(dx_lm_provider_register(&fake), DX_OK);
    cr_assert_eq(dx_lm_provider_find("fake"), &fake);
    cr_assert_eq(dx_lm_provider_register(&fake), DX_EEXIST);
    cr_assert_eq(dx_lm_provider_register(&dx_lm_provider_openai), DX_EEXIST);
    dx_lm_provider old = fake;
    old.name = "old";
    old.version = 99;
    cr_assert_eq(dx_lm_provider_register(&old), DX_EINVAL);
    cr_assert(dx_lm_provider_gemini.caps & DX_LM_CAP_EMBED);
    cr_assert_eq(dx_lm_provider_anthropic.caps & DX_LM_CAP_N, 0);
}

Test(provider, request_builders_validate_their_input, .timeout = 10)
{
    dx_lm_request *r = dx_lm_request_new("m");
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_TOOL, "x"), DX_EINVAL);
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_USER, NULL), DX_EINVAL);
    cr_assert_eq(dx_lm_request_add_tool_call(r, "i", "n", "{}"), DX_EINVAL,
                 "no assistant message to attach to");
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_ASSISTANT, ""), DX_OK);
    cr_assert_eq(dx_lm_request_add_tool_call(r, "i", "n", "[1]"), DX_EINVAL);
    cr_assert_eq(dx_lm_request_add_tool_call(r, "i", "n", "{\"a\":1}"), DX_OK);
    cr_assert_eq(dx_lm_request_add_tool(r, "t", NULL, "{oops"), DX_EINVAL);
    cr_assert_eq(dx_lm_request_set_schema(r, "s", "not json", false),
                 DX_EINVAL);
    cr_assert_eq(r->format, DX_LM_FORMAT_TEXT);
    cr_assert_eq(dx_lm_request_add_stop(r, ""), DX_EINVAL);
    dx_lm_request_free(r);
    dx_lm_request_free(NULL);
}

/* A request with one of everything a copy must carry. */
static dx_lm_request *full_request(void)
{
    dx_lm_request *r = dx_lm_request_new("gpt-x");
    cr_assert_not_null(r);
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_SYSTEM, "be brief"), DX_OK);
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_USER, "héllo"), DX_OK);
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_ASSISTANT, ""), DX_OK);
    cr_assert_eq(dx_lm_request_add_tool_call(r, "c1", "find", "{\"q\":1}"),
                 DX_OK);
    cr_assert_eq(dx_lm_request_add_tool_result(r, "c1", "found"), DX_OK);
    cr_assert_eq(dx_lm_request_add_stop(r, "END"), DX_OK);
    cr_assert_eq(
        dx_lm_request_add_tool(r, "find", NULL, "{\"type\":\"object\"}"),
        DX_OK);
    cr_assert_eq(
        dx_lm_request_set_schema(r, "out", "{\"type\":\"object\"}", true),
        DX_OK);
    cr_assert_eq(dx_lm_request_set_tool_choice_name(r, "find"), DX_OK);
    r->has_temperature = true;
    r->temperature = 0.25;
    r->max_tokens = 77;
    r->has_seed = true;
    r->seed = 9;
    r->stream = true;
    return r;
}

static void assert_same_request(const dx_lm_request *a, const dx_lm_request *b)
{
    cr_assert_str_eq(b->model, a->model);
    cr_assert_eq(b->n_messages, a->n_messages);
    for (size_t i = 0; i < a->n_messages; i++) {
        cr_assert_eq(b->messages[i].role, a->messages[i].role);
        cr_assert_str_eq(b->messages[i].content, a->messages[i].content);
        cr_assert_neq(b->messages[i].content, a->messages[i].content);
        cr_assert_eq(b->messages[i].n_tool_calls, a->messages[i].n_tool_calls);
    }
    cr_assert_str_eq(b->messages[2].tool_calls[0].arguments, "{\"q\":1}");
    cr_assert_str_eq(b->messages[3].tool_call_id, "c1");
    cr_assert_eq(b->n_stop, 1);
    cr_assert_str_eq(b->stop[0], "END");
    cr_assert_eq(b->n_tools, 1);
    cr_assert_null(b->tools[0].description);
    cr_assert_str_eq(b->tools[0].parameters, a->tools[0].parameters);
    cr_assert_str_eq(b->schema_name, "out");
    cr_assert_str_eq(b->schema, a->schema);
    cr_assert(b->schema_strict);
    cr_assert_eq(b->format, DX_LM_FORMAT_JSON_SCHEMA);
    cr_assert_eq(b->tool_choice, DX_LM_TOOL_CHOICE_NAMED);
    cr_assert_str_eq(b->tool_choice_name, "find");
    cr_assert(b->has_temperature && b->temperature == 0.25);
    cr_assert_eq(b->max_tokens, 77);
    cr_assert(b->has_seed && b->seed == 9 && b->stream);
}

Test(provider, a_request_copy_is_deep_and_whole, .timeout = 10)
{
    dx_lm_request *r = full_request();
    dx_lm_request *c = NULL;
    cr_assert_eq(dx_lm_request_copy(r, &c), DX_OK);
    assert_same_request(r, c);
    /* Independent: the original can go first, and grow, untouched. */
    dx_lm_request_free(r);
    cr_assert_eq(dx_lm_request_add_message(c, DX_LM_USER, "more"), DX_OK);
    cr_assert_eq(c->n_messages, 5);
    dx_lm_request_free(c);

    dx_lm_request *empty = dx_lm_request_new(NULL), *e2 = NULL;
    cr_assert_eq(dx_lm_request_copy(empty, &e2), DX_OK);
    cr_assert_null(e2->model);
    cr_assert_eq(e2->n_messages, 0);
    cr_assert_null(e2->messages);
    dx_lm_request_free(empty);
    dx_lm_request_free(e2);

    cr_assert_eq(dx_lm_request_copy(NULL, &c), DX_EINVAL);
    cr_assert_null(c);
    cr_assert_eq(dx_lm_request_copy(r = full_request(), NULL), DX_EINVAL);
    dx_lm_request_free(r);
}

Test(provider, empty_requests_are_refused_by_every_codec, .timeout = 10)
{
    const char *models[] = {"openai/m", "anthropic/m", "gemini/m"};
    for (size_t i = 0; i < 3; i++) {
        dx_lm_config *c = NULL;
        cr_assert_eq(dx_lm_config_new(models[i], NULL, "key-1", &c), DX_OK);
        dx_lm_request *r = dx_lm_request_new(NULL);
        dx_lm_http h;
        dx_lm_error err;
        cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_EINVAL);
        cr_assert_eq(err.kind, DX_LM_ERR_BAD_REQUEST);
        cr_assert(strstr(err.message, "no messages"), "%s", err.message);
        dx_lm_request_free(r);
        dx_lm_config_free(c);
    }
}

Test(provider, statuses_map_to_the_error_taxonomy, .timeout = 10)
{
    cr_assert_eq(dx_lm_error_kind_for_status(401), DX_LM_ERR_AUTH);
    cr_assert_eq(dx_lm_error_kind_for_status(403), DX_LM_ERR_AUTH);
    cr_assert_eq(dx_lm_error_kind_for_status(400), DX_LM_ERR_BAD_REQUEST);
    cr_assert_eq(dx_lm_error_kind_for_status(422), DX_LM_ERR_BAD_REQUEST);
    cr_assert_eq(dx_lm_error_kind_for_status(418), DX_LM_ERR_BAD_REQUEST);
    cr_assert_eq(dx_lm_error_kind_for_status(404), DX_LM_ERR_NOT_FOUND);
    cr_assert_eq(dx_lm_error_kind_for_status(408), DX_LM_ERR_TIMEOUT);
    cr_assert_eq(dx_lm_error_kind_for_status(409), DX_LM_ERR_CONFLICT);
    cr_assert_eq(dx_lm_error_kind_for_status(429), DX_LM_ERR_RATE_LIMITED);
    cr_assert_eq(dx_lm_error_kind_for_status(503), DX_LM_ERR_OVERLOADED);
    cr_assert_eq(dx_lm_error_kind_for_status(529), DX_LM_ERR_OVERLOADED);
    cr_assert_eq(dx_lm_error_kind_for_status(500), DX_LM_ERR_SERVER_ERROR);
    cr_assert_eq(dx_lm_error_kind_for_status(302),
                 DX_LM_ERR_MALFORMED_RESPONSE);
    cr_assert_str_eq(dx_lm_error_kind_name(DX_LM_ERR_RATE_LIMITED),
                     "rate_limited");
    cr_assert_str_eq(dx_lm_error_kind_name((dx_lm_error_kind)99), "unknown");
    cr_assert(dx_lm_error_retryable(DX_LM_ERR_OVERLOADED));
    cr_assert(!dx_lm_error_retryable(DX_LM_ERR_AUTH));
    cr_assert_str_eq(dx_strerror(DX_EPROVIDER),
                     "the LM provider call failed (see dx_lm_error)");
    cr_assert_str_eq(dx_err_name(DX_ENOKEY), "ENOKEY");
}

Test(provider, retry_after_reads_ms_seconds_and_http_dates, .timeout = 10)
{
    cr_assert_eq(dx_lm_retry_after_ms("250.5", "9", NULL), 250);
    cr_assert_eq(dx_lm_retry_after_ms(NULL, "2", NULL), 2000);
    cr_assert_eq(dx_lm_retry_after_ms(NULL, "0.5", NULL), 500);
    cr_assert_eq(dx_lm_retry_after_ms("junk", "1", NULL), 1000);
    cr_assert_eq(dx_lm_retry_after_ms(NULL, "Wed, 21 Oct 2015 07:28:30 GMT",
                                      "Wed, 21 Oct 2015 07:28:00 GMT"),
                 30000);
    cr_assert_eq(dx_lm_retry_after_ms(NULL, "Wed, 21 Oct 2015 07:28:00 GMT",
                                      "Wed, 21 Oct 2015 07:29:00 GMT"),
                 0, "a date in the past means now");
    cr_assert_eq(dx_lm_retry_after_ms(NULL, "soon", NULL), -1);
    cr_assert_eq(dx_lm_retry_after_ms(NULL, "-3", NULL), -1);
    cr_assert_eq(dx_lm_retry_after_ms(NULL, NULL, NULL), -1);
}

Test(provider, rendering_for_logs_redacts_keys, .timeout = 10)
{
    const char *models[] = {"openai/m", "anthropic/m", "gemini/m"};
    const char *key = "sk-secret-XYZ-9876";
    for (size_t i = 0; i < 3; i++) {
        dx_lm_config *c = NULL;
        cr_assert_eq(dx_lm_config_new(models[i], NULL, key, &c), DX_OK);
        dx_lm_request *r = dx_lm_request_new(NULL);
        /* even a prompt that quotes the key is scrubbed in the log */
        dx_lm_request_add_message(r, DX_LM_USER,
                                  "my key is sk-secret-XYZ-9876");
        dx_lm_http h;
        dx_lm_error err;
        cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK);
        bool in_headers = false;
        for (size_t k = 0; k < h.n_headers; k++)
            in_headers = in_headers || strstr(h.headers[k], key);
        cr_assert(in_headers, "the key is sent in a header");
        cr_assert_null(strstr(h.path, key), "never in the URL");
        char buf[2048];
        size_t n = dx_lm_http_render(c, &h, buf, sizeof buf);
        cr_assert_lt(n, sizeof buf);
        cr_assert_null(strstr(buf, key), "%s", buf);
        cr_assert(strstr(buf, "[redacted]"), "%s", buf);
        cr_assert(strstr(buf, "POST https://"), "%s", buf);
        /* truncation keeps the buffer terminated */
        char small[16];
        cr_assert_gt(dx_lm_http_render(c, &h, small, sizeof small), 15);
        cr_assert_eq(strlen(small), 15);
        dx_lm_http_free(&h);
        dx_lm_request_free(r);
        dx_lm_config_free(c);
    }
}

/* The user's headers: sent after the provider's, in place of one of the
 * same name; a second of a name replaces the first; redacted in logs;
 * malformed or transport-owned ones refused with a reason. */
Test(provider, the_users_headers_go_with_requests_and_are_redacted,
     .timeout = 10)
{
    dx_lm_config *c = NULL;
    cr_assert_eq(dx_lm_config_new("openai/m", NULL, "sk-config-key", &c),
                 DX_OK);
    cr_assert_eq(dx_lm_config_add_header(c, "Helicone-Auth: Bearer hk-1"),
                 DX_OK);
    cr_assert_eq(dx_lm_config_add_header(c, "helicone-auth:\tBearer hk-2  "),
                 DX_OK);
    cr_assert_eq(dx_lm_config_add_header(c, "authorization: Token gw-7"),
                 DX_OK);
    cr_assert_eq(c->n_headers, 2, "the second Helicone-Auth replaced");
    dx_lm_request *r = dx_lm_request_new(NULL);
    dx_lm_request_add_message(r, DX_LM_USER, "hi");
    dx_lm_http h;
    dx_lm_error err;
    cr_assert_eq(dx_lm_encode(c, r, &h, &err), DX_OK);
    int helicone = 0, auth = 0;
    for (size_t k = 0; k < h.n_headers; k++) {
        helicone += strncasecmp(h.headers[k], "helicone-auth:", 14) == 0;
        auth += strncasecmp(h.headers[k], "authorization:", 14) == 0;
        cr_assert_null(strstr(h.headers[k], "sk-config-key"),
                       "the provider's Authorization is replaced: %s",
                       h.headers[k]);
    }
    cr_assert_eq(helicone, 1);
    cr_assert_eq(auth, 1);
    bool sent = false, replaced = false;
    for (size_t k = 0; k < h.n_headers; k++) {
        sent = sent || strcmp(h.headers[k], "helicone-auth: Bearer hk-2") == 0;
        replaced =
            replaced || strcmp(h.headers[k], "authorization: Token gw-7") == 0;
    }
    cr_assert(sent && replaced, "value trimmed, last one kept");
    char buf[4096];
    dx_lm_http_render(c, &h, buf, sizeof buf);
    cr_assert_null(strstr(buf, "hk-2"), "%s", buf);
    cr_assert_null(strstr(buf, "gw-7"), "%s", buf);
    cr_assert(strstr(buf, "helicone-auth: [redacted]"), "%s", buf);
    dx_lm_http_free(&h);
    dx_lm_request_free(r);

    char why[160];
    const char *bad[][2] = {
        {"Host: evil.example", "written by the transport"},
        {"content-length: 1", "written by the transport"},
        {"X-Split: a\r\nX-Injected: b", "control character"},
        {"No Colon Here", "has no ':'"},
        {": value", "no name"},
        {"Bad Name: v", "a space at 4"},
        {"Bad(Name): v", "'(' at 4"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(dx_lm_header_explain(bad[i][0], why, sizeof why),
                     DX_EINVAL, "%s", bad[i][0]);
        cr_assert(strstr(why, bad[i][1]), "%s: %s", bad[i][0], why);
        cr_assert_eq(dx_lm_config_add_header(c, bad[i][0]), DX_EINVAL);
    }
    cr_assert_null(strstr(why, "v"), "the value is never echoed: %s", why);
    cr_assert_eq(dx_lm_header_explain("X-Empty:", why, sizeof why), DX_OK);
    cr_assert_eq(c->n_headers, 2, "nothing refused was added");
    cr_assert_eq(dx_lm_config_add_header(NULL, "A: b"), DX_EINVAL);
    dx_lm_config_free(c);
}

/* ---- a response as JSON and back ---- */

static char *dup_s(const char *s)
{
    char *d = dx_strdup(s);
    cr_assert_not_null(d);
    return d;
}

/* Two choices (one with two tool calls and a raw finish), usage. */
static dx_lm_response *full_response(void)
{
    dx_lm_response *r = dx_calloc(1, sizeof *r);
    cr_assert_not_null(r);
    r->id = dup_s("chatcmpl-1");
    r->model = dup_s("gpt-4o-mini");
    r->request_id = dup_s("req-9");
    r->choices = dx_calloc(2, sizeof *r->choices);
    cr_assert_not_null(r->choices);
    r->n_choices = 2;
    r->choices[0].text = dup_s("line one\nline \"two\" \u00e9");
    r->choices[0].finish = DX_LM_FINISH_STOP;
    dx_lm_choice *c = &r->choices[1];
    c->text = dup_s("");
    c->finish = DX_LM_FINISH_TOOL_CALLS;
    c->finish_raw = dup_s("tool_use");
    c->tool_calls = dx_calloc(2, sizeof *c->tool_calls);
    cr_assert_not_null(c->tool_calls);
    c->n_tool_calls = 2;
    c->tool_calls[0] = (dx_lm_tool_call){dup_s("call_1"), dup_s("search"),
                                         dup_s("{\"q\":\"cats\"}")};
    c->tool_calls[1] =
        (dx_lm_tool_call){dup_s("call_2"), dup_s("noop"), dup_s("{}")};
    r->has_usage = true;
    r->usage = (dx_lm_usage){.input_tokens = 12,
                             .output_tokens = 7,
                             .total_tokens = 19,
                             .cached_tokens = 4};
    r->latency_ms = 3.5;
    return r;
}

static void assert_opt_str(const char *a, const char *b)
{
    if (!a || !b)
        cr_assert(a == b, "%s vs %s", a ? a : "(null)", b ? b : "(null)");
    else
        cr_assert_str_eq(a, b);
}

Test(provider, a_response_round_trips_through_json, .timeout = 10)
{
    dx_lm_response *r = full_response(), *back = NULL;
    char *json = NULL, *again = NULL;
    cr_assert_eq(dx_lm_response_to_json(r, &json), DX_OK);
    cr_assert_eq(dx_lm_response_from_json(json, strlen(json), &back), DX_OK);
    cr_assert_not_null(back);
    assert_opt_str(back->id, r->id);
    assert_opt_str(back->model, r->model);
    assert_opt_str(back->request_id, r->request_id);
    cr_assert_eq(back->n_choices, 2);
    for (size_t i = 0; i < 2; i++) {
        const dx_lm_choice *a = &r->choices[i], *b = &back->choices[i];
        cr_assert_str_eq(b->text, a->text);
        cr_assert_eq(b->finish, a->finish, "choice %zu", i);
        assert_opt_str(b->finish_raw, a->finish_raw);
        cr_assert_eq(b->n_tool_calls, a->n_tool_calls);
        for (size_t k = 0; k < a->n_tool_calls; k++) {
            cr_assert_str_eq(b->tool_calls[k].id, a->tool_calls[k].id);
            cr_assert_str_eq(b->tool_calls[k].name, a->tool_calls[k].name);
            cr_assert_str_eq(b->tool_calls[k].arguments,
                             a->tool_calls[k].arguments);
        }
    }
    cr_assert(back->has_usage);
    cr_assert_eq(back->usage.input_tokens, 12);
    cr_assert_eq(back->usage.output_tokens, 7);
    cr_assert_eq(back->usage.total_tokens, 19);
    cr_assert_eq(back->usage.cached_tokens, 4);
    /* Not carried by the JSON. */
    cr_assert_float_eq(back->latency_ms, 0.0, 1e-12);
    /* And the decoded response renders to the very same text. */
    cr_assert_eq(dx_lm_response_to_json(back, &again), DX_OK);
    cr_assert_str_eq(again, json);
    dx_free(again);
    dx_lm_response_free(back);
    dx_free(json);
    dx_lm_response_free(r);
}

Test(provider, response_json_without_optional_fields_decodes, .timeout = 10)
{
    const char *j = "{\"choices\":[{\"text\":\"hi\",\"finish\":\"mystery\"}]}";
    dx_lm_response *r = NULL;
    cr_assert_eq(dx_lm_response_from_json(j, strlen(j), &r), DX_OK);
    cr_assert_null(r->id);
    cr_assert_null(r->model);
    cr_assert_not(r->has_usage);
    cr_assert_eq(r->n_choices, 1);
    cr_assert_str_eq(r->choices[0].text, "hi");
    cr_assert_eq(r->choices[0].finish, DX_LM_FINISH_OTHER);
    cr_assert_eq(r->choices[0].n_tool_calls, 0);
    dx_lm_response_free(r);
    /* len bounds the text: the same JSON cut short is not a response. */
    cr_assert_eq(dx_lm_response_from_json(j, strlen(j) - 1, &r), DX_EINVAL);
    cr_assert_null(r);
}

Test(provider, response_json_that_is_not_a_response_is_refused, .timeout = 10)
{
    static const char *const bad[] = {
        "",
        "not json",
        "[]",
        "{}",
        "{\"choices\":{}}",
        "{\"choices\":[{}]}",
        "{\"choices\":[{\"text\":\"a\"}]}",
        "{\"choices\":[{\"finish\":\"stop\"}]}",
        ("{\"choices\":[{\"text\":\"a\",\"finish\":\"stop\",\"tool_calls\":[{"
         "\"id\":\"x\"}]}]}"),
        ("{\"choices\":[{\"text\":\"a\",\"finish\":\"stop\","
         "\"tool_calls\":3}]}"),
        "{\"choices\":[],\"usage\":3}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dx_lm_response *back = (dx_lm_response *)&back; /* not NULL */
        cr_assert_eq(dx_lm_response_from_json(bad[i], strlen(bad[i]), &back),
                     DX_EINVAL, "%s", bad[i]);
        cr_assert_null(back, "%s", bad[i]);
    }
    cr_assert_eq(dx_lm_response_from_json("{}", 2, NULL), DX_EINVAL);
}

/* A shared response is freed by its last holder, whichever that is, and
 * stays whole for the others until then (run under ASan/valgrind/TSan). */
typedef struct holder {
    dx_lm_response *r;
    char seen[16];
} holder;

static void *read_then_free(void *arg)
{
    holder *h = arg;
    snprintf(h->seen, sizeof h->seen, "%s", h->r->choices[0].text);
    dx_lm_response_free(h->r);
    return NULL;
}

Test(provider, a_shared_response_is_freed_by_its_last_holder, .timeout = 10)
{
    const char *j = "{\"id\":\"r1\",\"choices\":[{\"text\":\"shared\","
                    "\"finish\":\"stop\"}]}";
    dx_lm_response *r = NULL;
    cr_assert_eq(dx_lm_response_from_json(j, strlen(j), &r), DX_OK);
    cr_assert_eq(dx_lm_response_share(r), r);
    cr_assert_null(dx_lm_response_share(NULL));
    dx_lm_response_free(r); /* one holder gone: the other still reads it */
    cr_assert_str_eq(r->choices[0].text, "shared");
    cr_assert_str_eq(r->id, "r1");
    dx_lm_response_free(r); /* the last: freed (a leak check would see) */

    /* Four holders on four threads, freeing in whatever order they end. */
    cr_assert_eq(dx_lm_response_from_json(j, strlen(j), &r), DX_OK);
    holder hs[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        hs[i].r = i ? dx_lm_response_share(r) : r;
        hs[i].seen[0] = '\0';
    }
    for (int i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, read_then_free, &hs[i]), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        cr_assert_str_eq(hs[i].seen, "shared");
    }
    /* A copy of a shared response is a response of its own. */
    cr_assert_eq(dx_lm_response_from_json(j, strlen(j), &r), DX_OK);
    dx_lm_response *copy = NULL;
    cr_assert_eq(dx_lm_response_copy(dx_lm_response_share(r), &copy), DX_OK);
    cr_assert_eq(copy->extra_holders, 0);
    dx_lm_response_free(r);
    dx_lm_response_free(r);
    cr_assert_str_eq(copy->choices[0].text, "shared");
    dx_lm_response_free(copy);
}

/* ---- allocation failure ---- */

static long calls, fail_at;

static void *f_malloc(size_t n, void *ud)
{
    (void)ud;
    return ++calls == fail_at ? NULL : malloc(n);
}

static void *f_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    return ++calls == fail_at ? NULL : realloc(p, n);
}

static void f_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const dx_allocator failing = {f_malloc, f_realloc, f_free, NULL};

static const char *anthropic_reply =
    "{\"id\":\"m\",\"model\":\"x\",\"content\":[{\"type\":\"text\",\"text\":"
    "\"hi\"},{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{"
    "\"a\":[1,2]}}],\"stop_reason\":\"tool_use\",\"usage\":{"
    "\"input_tokens\":1,\"output_tokens\":2}}";

Test(provider, every_failed_allocation_in_decode_is_reported_cleanly,
     .timeout = 20)
{
    dx_lm_config *c = NULL;
    cr_assert_eq(dx_lm_config_new("anthropic/m", NULL, "key-1", &c), DX_OK);
    dx_lm_header h[] = {{"content-type", "application/json"},
                        {"request-id", "r"}};
    dx_lm_reply rep = {200, h, 2, anthropic_reply, strlen(anthropic_reply)};
    dx_set_allocator(&failing);
    int rc = DX_ENOMEM;
    long n;
    for (n = 1; n < 500 && rc != DX_OK; n++) {
        calls = 0;
        fail_at = n;
        dx_lm_response *r = NULL;
        dx_lm_error err;
        rc = dx_lm_decode(c, &rep, &r, &err);
        /* cJSON reports its own allocation failures as a parse failure */
        cr_assert(rc == DX_OK || rc == DX_ENOMEM ||
                      (rc == DX_EPROVIDER &&
                       err.kind == DX_LM_ERR_MALFORMED_RESPONSE),
                  "fail at %ld: rc %d", n, rc);
        if (rc == DX_OK) {
            cr_assert_str_eq(r->choices[0].tool_calls[0].arguments,
                             "{\"a\":[1,2]}");
            dx_lm_response_free(r);
        } else {
            cr_assert_null(r);
        }
    }
    fail_at = 0;
    dx_set_allocator(NULL);
    cr_assert_eq(rc, DX_OK, "decode never succeeded");
    cr_assert_gt(n, 5, "allocations were not routed through dx_malloc");
    dx_lm_config_free(c);
}

Test(provider, every_failed_allocation_in_a_request_copy_is_reported_cleanly,
     .timeout = 20)
{
    dx_lm_request *r = full_request();
    dx_set_allocator(&failing);
    int rc = DX_ENOMEM;
    long n;
    for (n = 1; n < 200 && rc != DX_OK; n++) {
        calls = 0;
        fail_at = n;
        dx_lm_request *c = NULL;
        rc = dx_lm_request_copy(r, &c);
        cr_assert(rc == DX_OK || rc == DX_ENOMEM, "fail at %ld: rc %d", n, rc);
        if (rc == DX_OK) {
            fail_at = 0;
            assert_same_request(r, c);
            dx_lm_request_free(c);
        } else {
            cr_assert_null(c);
        }
    }
    fail_at = 0;
    dx_set_allocator(NULL);
    cr_assert_eq(rc, DX_OK, "the copy never succeeded");
    cr_assert_gt(n, 15, "allocations were not routed through dx_malloc");
    dx_lm_request_free(r);
}

Test(provider, every_failed_allocation_in_a_stream_is_reported_cleanly,
     .timeout = 20)
{
    dx_lm_config *c = NULL;
    cr_assert_eq(dx_lm_config_new("openai/m", NULL, "key-1", &c), DX_OK);
    const char *sse =
        "data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{"
        "\"content\":\"Hel\"}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},"
        "\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    dx_lm_header h[] = {{"content-type", "text/event-stream"}};
    dx_lm_reply head = {200, h, 1, NULL, 0};
    dx_set_allocator(&failing);
    int rc = DX_ENOMEM;
    for (long n = 1; n < 500 && rc != DX_OK; n++) {
        calls = 0;
        fail_at = n;
        dx_lm_stream *s = NULL;
        dx_lm_error err;
        dx_lm_response *r = NULL;
        rc = dx_lm_stream_new(c, NULL, NULL, &s);
        if (rc == DX_OK) {
            rc = dx_lm_stream_begin(s, &head, &err);
            size_t len = strlen(sse);
            for (size_t i = 0; rc == DX_OK && i < len; i += 10)
                rc = dx_lm_stream_feed(s, sse + i, len - i < 10 ? len - i : 10,
                                       &err);
            if (rc == DX_OK)
                rc = dx_lm_stream_finish(s, &r, &err);
        }
        cr_assert(rc == DX_OK || rc == DX_ENOMEM || rc == DX_EPROVIDER,
                  "fail at %ld: rc %d", n, rc);
        if (rc == DX_OK) {
            cr_assert_str_eq(r->choices[0].text, "Hello");
            dx_lm_response_free(r);
        }
        dx_lm_stream_free(s);
    }
    fail_at = 0;
    dx_set_allocator(NULL);
    cr_assert_eq(rc, DX_OK);
    dx_lm_config_free(c);
}

Test(provider, every_failed_allocation_in_from_json_is_reported_cleanly,
     .timeout = 20)
{
    dx_lm_response *r = full_response();
    char *json = NULL;
    cr_assert_eq(dx_lm_response_to_json(r, &json), DX_OK);
    dx_lm_response_free(r);
    size_t len = strlen(json);
    dx_set_allocator(&failing);
    int rc = DX_ENOMEM;
    long n;
    for (n = 1; n < 500 && rc != DX_OK; n++) {
        calls = 0;
        fail_at = n;
        dx_lm_response *back = NULL;
        rc = dx_lm_response_from_json(json, len, &back);
        /* cJSON reports its own allocation failures as a parse failure */
        cr_assert(rc == DX_OK || rc == DX_ENOMEM || rc == DX_EINVAL,
                  "fail at %ld: rc %d", n, rc);
        if (rc == DX_OK) {
            cr_assert_str_eq(back->choices[1].tool_calls[1].name, "noop");
            dx_lm_response_free(back);
        } else {
            cr_assert_null(back);
        }
    }
    fail_at = 0;
    dx_set_allocator(NULL);
    cr_assert_eq(rc, DX_OK, "from_json never succeeded");
    cr_assert_gt(n, 5, "allocations were not routed through dx_malloc");
    dx_free(json);
}
