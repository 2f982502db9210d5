/*
 * test_lmhistory.c — the call ring: deep copies that outlive the caller's
 * request and response, eviction of the oldest, failed calls, and the exact
 * inspect_history text.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/lmcache.h"
#include "dspex/lmhistory.h"

#define T0 1767323045678 /* 2026-01-02T03:04:05.678Z */

static dx_lm_response *response(const char *json)
{
    dx_lm_response *r = NULL;
    cr_assert_eq(dx_lm_response_from_json(json, strlen(json), &r), DX_OK);
    return r;
}

static dx_lm_request *chat(const char *user)
{
    dx_lm_request *q = dx_lm_request_new("gpt-4o-mini");
    cr_assert_not_null(q);
    cr_assert_eq(dx_lm_request_add_message(q, DX_LM_SYSTEM, "Be brief."),
                 DX_OK);
    cr_assert_eq(dx_lm_request_add_message(q, DX_LM_USER, user), DX_OK);
    return q;
}

/* Record a plain successful call whose question and answer are given. */
static void add_call(dx_lmhistory *h, int64_t ts, const char *q, const char *a)
{
    dx_lm_request *req = chat(q);
    char json[256];
    snprintf(json, sizeof json,
             "{\"choices\":[{\"text\":\"%s\",\"finish\":\"stop\"}]}", a);
    dx_lm_response *resp = response(json);
    dx_lmhistory_record rec = {.timestamp_ms = ts,
                               .model = "m",
                               .request = req,
                               .response = resp,
                               .attempts = 1};
    cr_assert_eq(dx_lmhistory_add(h, &rec), DX_OK);
    dx_lm_request_free(req);
    dx_lm_response_free(resp);
}

static char *render(const dx_lmhistory *h, size_t n)
{
    size_t want = dx_lmhistory_inspect(h, n, NULL, 0);
    char *buf = malloc(want + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(dx_lmhistory_inspect(h, n, buf, want + 1), want);
    cr_assert_eq(strlen(buf), want);
    return buf;
}

Test(lmhistory, entries_own_copies_of_request_and_response, .timeout = 10)
{
    dx_lmhistory *h = NULL;
    cr_assert_eq(dx_lmhistory_new(4, &h), DX_OK);
    dx_lm_request *req = chat("What is 2+2?");
    cr_assert_eq(dx_lm_request_add_message(req, DX_LM_ASSISTANT, ""), DX_OK);
    cr_assert_eq(
        dx_lm_request_add_tool_call(req, "c1", "calc", "{\"expr\":\"2+2\"}"),
        DX_OK);
    cr_assert_eq(dx_lm_request_add_tool_result(req, "c1", "4"), DX_OK);
    const char *json =
        "{\"id\":\"r1\",\"model\":\"gpt-4o-mini-2024\",\"choices\":[{\"text\":"
        "\"4\",\"finish\":\"stop\"}],\"usage\":{\"input_tokens\":12,\"output_"
        "tokens\":1,\"total_tokens\":13,\"cached_tokens\":0}}";
    dx_lm_response *resp = response(json);
    dx_lm_error none;
    dx_lm_error_clear(&none);
    dx_lmhistory_record rec = {.timestamp_ms = T0,
                               .model = "openai/gpt-4o-mini",
                               .request = req,
                               .response = resp,
                               .usage = resp->usage,
                               .latency_ms = 12.5,
                               .cached = true,
                               .attempts = 2,
                               .error = &none};
    cr_assert_eq(dx_lmhistory_add(h, &rec), DX_OK);
    char *before = NULL;
    cr_assert_eq(dx_lm_response_to_json(resp, &before), DX_OK);
    /* The caller's structs go away; the entry must not point into them. */
    dx_lm_request_free(req);
    dx_lm_response_free(resp);

    cr_assert_eq(dx_lmhistory_len(h), 1);
    const dx_lmhistory_entry *e = dx_lmhistory_get(h, 0);
    cr_assert_not_null(e);
    cr_assert_null(dx_lmhistory_get(h, 1));
    cr_assert_eq(e->timestamp_ms, T0);
    cr_assert_str_eq(e->model, "openai/gpt-4o-mini");
    cr_assert_eq(e->n_messages, 4);
    cr_assert_eq(e->messages[0].role, DX_LM_SYSTEM);
    cr_assert_str_eq(e->messages[1].content, "What is 2+2?");
    cr_assert_eq(e->messages[2].n_tool_calls, 1);
    cr_assert_str_eq(e->messages[2].tool_calls[0].name, "calc");
    cr_assert_str_eq(e->messages[2].tool_calls[0].arguments,
                     "{\"expr\":\"2+2\"}");
    cr_assert_eq(e->messages[3].role, DX_LM_TOOL);
    cr_assert_str_eq(e->messages[3].tool_call_id, "c1");
    cr_assert_eq(e->usage.input_tokens, 12);
    cr_assert(e->cached);
    cr_assert_eq(e->attempts, 2);
    cr_assert_not(e->failed);
    cr_assert_eq(e->error.kind, DX_LM_ERR_NONE);
    cr_assert_not_null(e->response);
    char *after = NULL;
    cr_assert_eq(dx_lm_response_to_json(e->response, &after), DX_OK);
    cr_assert_str_eq(after, before);
    dx_free(before);
    dx_free(after);
    dx_lmhistory_free(h);
}

Test(lmhistory, full_ring_drops_the_oldest_and_get_zero_is_oldest,
     .timeout = 10)
{
    dx_lmhistory *h = NULL;
    cr_assert_eq(dx_lmhistory_new(3, &h), DX_OK);
    char q[16];
    for (int i = 0; i < 7; i++) {
        snprintf(q, sizeof q, "q%d", i);
        add_call(h, T0 + i, q, "a");
    }
    cr_assert_eq(dx_lmhistory_len(h), 3);
    for (size_t i = 0; i < 3; i++) {
        const dx_lmhistory_entry *e = dx_lmhistory_get(h, i);
        snprintf(q, sizeof q, "q%zu", i + 4);
        cr_assert_str_eq(e->messages[1].content, q);
        cr_assert_eq(e->timestamp_ms, T0 + 4 + (int64_t)i);
    }
    cr_assert_null(dx_lmhistory_get(h, 3));
    dx_lmhistory_clear(h);
    cr_assert_eq(dx_lmhistory_len(h), 0);
    cr_assert_null(dx_lmhistory_get(h, 0));
    add_call(h, T0, "again", "a");
    cr_assert_str_eq(dx_lmhistory_get(h, 0)->messages[1].content, "again");
    dx_lmhistory_free(h);
}

Test(lmhistory, bad_arguments_are_rejected, .timeout = 10)
{
    dx_lmhistory *h = (dx_lmhistory *)1;
    cr_assert_eq(dx_lmhistory_new(0, &h), DX_EINVAL);
    cr_assert_null(h);
    cr_assert_eq(dx_lmhistory_new(DX_LMHISTORY_MAX_CAPACITY + 1, &h),
                 DX_EINVAL);
    cr_assert_eq(dx_lmhistory_new(1, NULL), DX_EINVAL);
    cr_assert_eq(dx_lmhistory_new(1, &h), DX_OK);
    cr_assert_eq(dx_lmhistory_add(h, NULL), DX_EINVAL);
    dx_lmhistory_record empty = {0};
    cr_assert_eq(dx_lmhistory_add(NULL, &empty), DX_EINVAL);
    /* A record without request or response is still a call. */
    cr_assert_eq(dx_lmhistory_add(h, &empty), DX_OK);
    cr_assert_str_eq(dx_lmhistory_get(h, 0)->model, "");
    cr_assert_eq(dx_lmhistory_inspect_file(h, 0, NULL), DX_EINVAL);
    dx_lmhistory_free(h);
    dx_lmhistory_free(NULL);
    cr_assert_eq(dx_lmhistory_len(NULL), 0);
}

static const char expected[] =
    "[2026-01-02T03:04:05.678Z] openai/gpt-4o-mini (12.5 ms, 1 attempt)\n"
    "\n"
    "System message:\n"
    "\n"
    "Be brief.\n"
    "\n"
    "User message:\n"
    "\n"
    "Weather in Paris?\n"
    "\n"
    "Assistant message:\n"
    "\n"
    "\n"
    "\n"
    "Tool calls:\n"
    "- weather({\"city\":\"Paris\"}) [c1]\n"
    "\n"
    "Tool message [c1]:\n"
    "\n"
    "sunny\n"
    "\n"
    "Response:\n"
    "\n"
    "It is sunny.\n"
    "\n"
    "Usage: 30 input, 4 output tokens\n"
    "\n"
    "[2026-01-02T03:04:06.000Z] anthropic/claude (250.0 ms, 3 attempts)\n"
    "\n"
    "System message:\n"
    "\n"
    "Be brief.\n"
    "\n"
    "User message:\n"
    "\n"
    "Hi\n"
    "\n"
    "Error: rate_limited (HTTP 429): slow down\n"
    "\n"
    "[2026-01-02T03:04:07.005Z] m (0.0 ms, 1 attempt, cached)\n"
    "\n"
    "User message:\n"
    "\n"
    "Two answers\n"
    "\n"
    "Response 1/2:\n"
    "\n"
    "yes\n"
    "\n"
    "Response 2/2:\n"
    "\n"
    "no\n"
    "\n"
    "Tool calls:\n"
    "- f({}) [t9]\n"
    "\n";

static dx_lmhistory *three_calls(void)
{
    dx_lmhistory *h = NULL;
    cr_assert_eq(dx_lmhistory_new(8, &h), DX_OK);

    dx_lm_request *req = chat("Weather in Paris?");
    cr_assert_eq(dx_lm_request_add_message(req, DX_LM_ASSISTANT, ""), DX_OK);
    cr_assert_eq(dx_lm_request_add_tool_call(req, "c1", "weather",
                                             "{\"city\":\"Paris\"}"),
                 DX_OK);
    cr_assert_eq(dx_lm_request_add_tool_result(req, "c1", "sunny"), DX_OK);
    dx_lm_response *resp =
        response("{\"choices\":[{\"text\":\"It is "
                 "sunny.\",\"finish\":\"stop\"}],\"usage\":{\"input_"
                 "tokens\":30,\"output_tokens\":4,\"total_tokens\":34,\"cached_"
                 "tokens\":0}}");
    dx_lmhistory_record rec = {.timestamp_ms = T0,
                               .model = "openai/gpt-4o-mini",
                               .request = req,
                               .response = resp,
                               .latency_ms = 12.5,
                               .attempts = 1};
    cr_assert_eq(dx_lmhistory_add(h, &rec), DX_OK);
    dx_lm_request_free(req);
    dx_lm_response_free(resp);

    req = chat("Hi");
    dx_lm_error err;
    dx_lm_error_set(&err, DX_LM_ERR_RATE_LIMITED, 429, "anthropic", "%s",
                    "slow down");
    rec = (dx_lmhistory_record){.timestamp_ms = T0 + 322,
                                .model = "anthropic/claude",
                                .request = req,
                                .latency_ms = 250,
                                .attempts = 3,
                                .error = &err};
    cr_assert_eq(dx_lmhistory_add(h, &rec), DX_OK);
    dx_lm_request_free(req);

    req = dx_lm_request_new(NULL);
    cr_assert_eq(dx_lm_request_add_message(req, DX_LM_USER, "Two answers"),
                 DX_OK);
    resp = response("{\"choices\":[{\"text\":\"yes\",\"finish\":\"stop\"},{"
                    "\"text\":\"no\",\"finish\":\"tool_calls\","
                    "\"tool_calls\":[{\"id\":\"t9\",\"name\":\"f\","
                    "\"arguments\":\"{}\"}]}]}");
    rec = (dx_lmhistory_record){.timestamp_ms = T0 + 1327,
                                .model = "m",
                                .request = req,
                                .response = resp,
                                .cached = true,
                                .attempts = 1};
    cr_assert_eq(dx_lmhistory_add(h, &rec), DX_OK);
    dx_lm_request_free(req);
    dx_lm_response_free(resp);
    return h;
}

Test(lmhistory, inspect_renders_calls_like_dspy_inspect_history, .timeout = 10)
{
    dx_lmhistory *h = three_calls();
    char *all = render(h, 0);
    cr_assert_str_eq(all, expected);
    char *more = render(h, 99);
    cr_assert_str_eq(more, expected);
    /* The last n calls are the tail of the full rendering. */
    char *last = render(h, 1);
    const char *third = strstr(expected, "[2026-01-02T03:04:07.005Z]");
    cr_assert_not_null(third);
    cr_assert_str_eq(last, third);
    free(all);
    free(more);
    free(last);
    dx_lmhistory_free(h);
}

Test(lmhistory, inspect_truncates_and_reports_the_full_length, .timeout = 10)
{
    dx_lmhistory *h = three_calls();
    char small[32];
    memset(small, 'x', sizeof small);
    size_t want = dx_lmhistory_inspect(h, 0, small, sizeof small);
    cr_assert_eq(want, strlen(expected));
    cr_assert_eq(strlen(small), sizeof small - 1);
    cr_assert_eq(strncmp(small, expected, sizeof small - 1), 0);
    dx_lmhistory *empty = NULL;
    cr_assert_eq(dx_lmhistory_new(1, &empty), DX_OK);
    cr_assert_eq(dx_lmhistory_inspect(empty, 5, small, sizeof small), 0);
    cr_assert_str_eq(small, "");
    dx_lmhistory_free(empty);
    dx_lmhistory_free(h);
}

Test(lmhistory, inspect_file_writes_the_same_text, .timeout = 10)
{
    dx_lmhistory *h = three_calls();
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    cr_assert_eq(dx_lmhistory_inspect_file(h, 0, f), DX_OK);
    cr_assert_eq(fclose(f), 0);
    cr_assert_str_eq(text, expected);
    free(text);
    dx_lmhistory_free(h);
}

/* Fail the Nth allocation, for every N, until add succeeds: each failure
 * must leave the ring as it was and leak nothing (ASan checks leaks). */
static long fail_at;
static long calls;
static void *f_malloc(size_t n, void *ud)
{
    (void)ud;
    if (++calls == fail_at)
        return NULL;
    return malloc(n);
}
static void *f_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    if (++calls == fail_at)
        return NULL;
    return realloc(p, n);
}
static void f_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

Test(lmhistory, add_fails_cleanly_at_every_allocation, .timeout = 20)
{
    dx_lmhistory *h = three_calls();
    dx_lm_request *req = chat("oom");
    cr_assert_eq(dx_lm_request_add_message(req, DX_LM_ASSISTANT, ""), DX_OK);
    cr_assert_eq(dx_lm_request_add_tool_call(req, "c", "f", "{}"), DX_OK);
    dx_lm_response *resp = response(
        "{\"id\":\"x\",\"choices\":[{\"text\":\"a\",\"finish\":\"stop\",\"tool_"
        "calls\":[{\"id\":\"t\",\"name\":\"g\",\"arguments\":"
        "\"{}\"}]}]}");
    dx_lmhistory_record rec = {.timestamp_ms = T0,
                               .model = "m",
                               .request = req,
                               .response = resp,
                               .attempts = 1};
    const dx_allocator failing = {f_malloc, f_realloc, f_free, NULL};
    int rc = DX_ENOMEM;
    int failures = 0;
    for (fail_at = 1; rc != DX_OK && fail_at < 200; fail_at++) {
        calls = 0;
        dx_set_allocator(&failing);
        rc = dx_lmhistory_add(h, &rec);
        dx_set_allocator(NULL);
        if (rc != DX_OK) {
            cr_assert_eq(rc, DX_ENOMEM);
            failures++;
            cr_assert_eq(dx_lmhistory_len(h), 3);
            char *text = render(h, 0);
            cr_assert_str_eq(text, expected);
            free(text);
        }
    }
    cr_assert_eq(rc, DX_OK);
    cr_assert_gt(failures, 5);
    cr_assert_eq(dx_lmhistory_len(h), 4);
    cr_assert_str_eq(
        dx_lmhistory_get(h, 3)->response->choices[0].tool_calls[0].name, "g");
    dx_lm_request_free(req);
    dx_lm_response_free(resp);
    dx_lmhistory_free(h);
}

/* An owner done with its request and response (the LM client recording a
 * caller's report) hands them over: the entry holds the very messages and
 * response, the caller is left with an empty request to free; when the
 * entry cannot be built nothing is taken and the ring is unchanged. */
Test(lmhistory, add_taking_keeps_the_given_messages_and_response, .timeout = 20)
{
    dx_lmhistory *h = three_calls();
    dx_lm_request *req = chat("taken");
    dx_lm_response *resp =
        response("{\"id\":\"t\",\"choices\":[{\"text\":\"yes\",\"finish\":"
                 "\"stop\"}],\"usage\":{\"input_tokens\":5,\"output_tokens\":"
                 "1,\"total_tokens\":6,\"cached_tokens\":0}}");
    dx_lm_message *messages = req->messages;
    const char *question = req->messages[1].content;
    dx_lm_response *given = resp;
    dx_lmhistory_record rec = {
        .timestamp_ms = T0, .model = "m", .attempts = 1, .usage = resp->usage};

    const dx_allocator failing = {f_malloc, f_realloc, f_free, NULL};
    calls = 0;
    fail_at = 1; /* the model's copy */
    dx_set_allocator(&failing);
    int rc = dx_lmhistory_add_taking(h, &rec, req, &resp);
    dx_set_allocator(NULL);
    cr_assert_eq(rc, DX_ENOMEM);
    cr_assert_eq(dx_lmhistory_len(h), 3);
    cr_assert_eq(req->messages, messages);
    cr_assert_eq(req->n_messages, 2);
    cr_assert_eq(resp, given);

    cr_assert_eq(dx_lmhistory_add_taking(h, &rec, req, &resp), DX_OK);
    cr_assert_eq(dx_lmhistory_len(h), 4);
    cr_assert_null(resp);
    cr_assert_null(req->messages);
    cr_assert_eq(req->n_messages, 0);
    const dx_lmhistory_entry *e = dx_lmhistory_get(h, 3);
    cr_assert_eq(e->messages, messages);
    cr_assert_eq(e->messages[1].content, question);
    cr_assert_eq(e->n_messages, 2);
    cr_assert_eq(e->response, given);
    cr_assert_str_eq(e->response->choices[0].text, "yes");
    cr_assert_eq(e->usage.input_tokens, 5);
    cr_assert_not(e->failed);
    dx_lm_request_free(req); /* what is left of it */

    /* Nothing to take: an entry without messages or response. */
    cr_assert_eq(dx_lmhistory_add_taking(h, &rec, NULL, NULL), DX_OK);
    e = dx_lmhistory_get(h, dx_lmhistory_len(h) - 1);
    cr_assert_eq(e->n_messages, 0);
    cr_assert_null(e->response);
    dx_lmhistory_free(h);
}
