/*
 * test_module.c — programs end to end against the local LM server through
 * a real LM client: Predict and ChainOfThought answers, typed outputs, n
 * completions, the JSONAdapter fallback after an unreadable answer (two LM
 * calls), no fallback when turned off, a three-step composed program with
 * its trace and usage per run, a crashing user forward costing only its
 * call, a missing LM client named in the error, predictor paths, copies and
 * reset copies, and a call that rides out its supervised LM client being
 * killed and restarted.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/lm.h"
#include "dspex/log.h"
#include "dspex/lmserver.h"
#include "dspex/module.h"
#include "dspex/runtime.h"
#include "dspex/supervisor.h"
#include "lm_fixture.h"

TestSuite(module, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 60);

static dx_example *inputs1(const char *key, const char *value)
{
    dx_example *ex = dx_example_new();
    cr_assert_eq(dx_example_set_str(ex, key, value), DX_OK);
    return ex;
}

Test(module, predict_answers_through_the_lm_client)
{
    dx_signature *s = sig("question -> answer, confidence: float");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_lmserver_push_reply(srv, "[[ ## answer ## ]]\nParis\n\n"
                                "[[ ## confidence ## ]]\n0.9\n\n"
                                "[[ ## completed ## ]]");
    dx_example *in = inputs1("question", "Capital of France?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    int rc = dx_module_call(p, in, NULL, &pred, NULL, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_str_eq(dx_prediction_get_str(pred, "answer", ""), "Paris");
    cr_assert_eq(
        dx_example_get_num(dx_prediction_fields(pred), "confidence", -1), 0.9);
    const dx_usage_acc *u = dx_prediction_usage(pred);
    cr_assert_eq(u->calls, 1);
    cr_assert_gt(u->input_tokens, 0);
    cr_assert_str_eq(dx_prediction_model(pred), "openai-compatible/test-model");
    dx_prediction_free(pred);

    /* The same call again is answered by the client's cache. */
    uint64_t before = upstream_requests();
    cr_assert_eq(dx_module_call(p, in, NULL, &pred, NULL, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_eq(upstream_requests(), before);
    cr_assert_eq(dx_prediction_usage(pred)->cached_calls, 1);
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_module_free(p);
}

Test(module, chain_of_thought_adds_reasoning_first)
{
    dx_signature *s = sig("question -> answer");
    dx_module *cot = dx_chain_of_thought_new(s, NULL);
    dx_signature_unref(s);
    dx_module *inner = dx_module_child(cot, "predict");
    cr_assert(dx_module_is_predict(inner));
    cr_assert_str_eq(dx_predict_path(inner), "predict");
    const dx_signature *ext = dx_predict_signature(inner);
    cr_assert_str_eq(dx_signature_output(ext, 0)->name, "reasoning");
    cr_assert_str_eq(dx_signature_output(ext, 1)->name, "answer");
    cr_assert_str_eq(dx_signature_output(ext, 0)->prefix, "Reasoning:");

    dx_lmserver_push_reply(srv, "[[ ## reasoning ## ]]\nFrance's capital is "
                                "Paris.\n\n[[ ## answer ## ]]\nParis\n\n"
                                "[[ ## completed ## ]]");
    dx_example *in = inputs1("question", "Capital of France?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(cot, in, NULL, &pred, NULL, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_str_eq(dx_prediction_get_str(pred, "reasoning", ""),
                     "France's capital is Paris.");
    cr_assert_str_eq(dx_prediction_get_str(pred, "answer", ""), "Paris");
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_module_free(cot);
}

Test(module, an_unreadable_answer_falls_back_to_the_json_adapter_once)
{
    dx_signature *s = sig("question -> answer");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    /* First answer has no markers; the JSONAdapter retry gets JSON. */
    dx_lmserver_push_reply(srv, "Paris, obviously.");
    dx_lmserver_push_reply(srv, "{\"answer\": \"Paris\"}");
    uint64_t before = upstream_requests();
    dx_example *in = inputs1("question", "Capital of France?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(p, in, NULL, &pred, NULL, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_str_eq(dx_prediction_get_str(pred, "answer", ""), "Paris");
    cr_assert_eq(upstream_requests() - before, 2,
                 "one ChatAdapter + one JSON call");
    cr_assert_eq(dx_prediction_usage(pred)->calls, 2);
    dx_prediction_free(pred);

    /* With the fallback off, the parse error is the call's error. */
    dx_lmserver_push_reply(srv, "no markers here");
    dx_example_set_str(in, "question", "Capital of Spain?");
    dx_call_opts o = {.no_json_fallback = true};
    int rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_EPARSE);
    cr_assert_null(pred);
    cr_assert(strstr(d.msg, "answer"), "%s", d.msg);
    cr_assert(strstr(d.msg, "self"), "the predictor path: %s", d.msg);
    dx_example_free(in);
    dx_module_free(p);
}

/* A log sink that keeps the first warning (copying: a sink may not log). */
static char first_warning[512];

static void warning_sink(const dx_log_record *r, void *ud)
{
    (void)ud;
    if (r->level == DX_LOG_WARNING && first_warning[0] == '\0')
        snprintf(first_warning, sizeof first_warning, "%s", r->line);
}

/* A server without structured outputs refuses the JSONAdapter's JSON
 * schema (400). With the fallbacks off, the refusal is the error. With
 * them on, the step asks once more in JSON mode and a warning says why;
 * when JSON mode fails too, the error names both; the client's later
 * calls go in JSON mode from the start; a new client learns it anew. */
Test(module, a_refused_json_schema_is_asked_again_in_json_mode)
{
    dx_signature *s = sig("question -> answer, year: int");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_example *in = inputs1("question", "Capital of Spain, since when?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};

    dx_call_opts o = {.adapter = DX_ADAPTER_JSON, .no_json_fallback = true};
    cr_assert_eq(dx_lmserver_inject(srv, "no_json_schema", 1), DX_OK);
    uint64_t before = upstream_requests();
    int rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_EPROVIDER, "%s", dx_err_name(rc));
    cr_assert_null(pred);
    cr_assert(strstr(d.msg, "bad_request"), "%s", d.msg);
    cr_assert(strstr(d.msg, "json_schema is not supported"), "%s", d.msg);
    cr_assert_eq(upstream_requests() - before, 1);

    /* JSON mode answers something that is not JSON: both reasons. */
    o.no_json_fallback = false;
    cr_assert_eq(dx_lmserver_inject(srv, "no_json_schema", 1), DX_OK);
    dx_lmserver_push_reply(srv, "Madrid, since 1561");
    first_warning[0] = '\0';
    dx_log_set_sink(warning_sink, NULL);
    before = upstream_requests();
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    dx_log_set_sink(NULL, NULL);
    cr_assert_eq(rc, DX_EPARSE, "%s", dx_err_name(rc));
    cr_assert_null(pred);
    cr_assert_eq(upstream_requests() - before, 2, "the schema, then JSON mode");
    cr_assert(strstr(d.msg, "json_schema is not supported"), "%s", d.msg);
    cr_assert(strstr(d.msg, "; then, in JSON mode without the schema: "), "%s",
              d.msg);
    cr_assert(strstr(d.msg, "JSONAdapter"), "%s", d.msg);
    cr_assert(strstr(first_warning, "json_schema_fallback"), "%s",
              first_warning);
    cr_assert(strstr(first_warning, "json_schema is not supported"), "%s",
              first_warning);

    /* The client's next call skips the schema: one request, answered (the
     * fault is used up by a request it does not apply to). */
    cr_assert_eq(dx_lmserver_inject(srv, "no_json_schema", 1), DX_OK);
    dx_lmserver_push_reply(srv, "{\"answer\": \"Madrid\", \"year\": 1561}");
    dx_example_set_str(in, "question", "Capital of Spain, since when, again?");
    before = upstream_requests();
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_eq(upstream_requests() - before, 1);
    cr_assert_str_eq(dx_prediction_get_str(pred, "answer", ""), "Madrid");
    dx_prediction_free(pred);
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    cr_assert_eq(st.faults_applied, 2);

    /* A new client asks with the schema, is refused, and answers. Then a
     * refusal that JSON mode gets too (a bad request for another reason)
     * is not taken for the schema's: the next call sends it again. */
    fixture_run(fixture_stop_client);
    fixture_run(fixture_start_client);
    cr_assert_eq(dx_lmserver_inject(srv, "no_json_schema", 1), DX_OK);
    dx_lmserver_push_reply(srv, "{\"answer\": \"Paris\", \"year\": 508}");
    dx_example_set_str(in, "question", "Capital of France, since when?");
    before = upstream_requests();
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_str_eq(dx_prediction_get_str(pred, "answer", ""), "Paris");
    cr_assert_eq(dx_example_get_num(dx_prediction_fields(pred), "year", 0),
                 508);
    cr_assert_eq(upstream_requests() - before, 2);
    dx_lmserver_stats_get(srv, &st);
    cr_assert_eq(st.faults_applied, 3);
    dx_prediction_free(pred);
    fixture_run(fixture_stop_client);
    fixture_run(fixture_start_client);
    cr_assert_eq(dx_lmserver_inject(srv, "no_json_schema", 1), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "bad_request", 1), DX_OK);
    dx_example_set_str(in, "question", "Capital of Peru, since when?");
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_EPROVIDER, "%s", dx_err_name(rc));
    cr_assert(strstr(d.msg, "injected 400"), "%s", d.msg);
    cr_assert_eq(dx_lmserver_inject(srv, "no_json_schema", 1), DX_OK);
    dx_lmserver_push_reply(srv, "{\"answer\": \"Lima\", \"year\": 1535}");
    before = upstream_requests();
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_eq(upstream_requests() - before, 2, "the schema was sent again");
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_module_free(p);
}

/* A server may take the JSON schema and not hold its model to it: an
 * answer sent with the schema that does not parse is asked for once more
 * in JSON mode, as DSPy's JSONAdapter does, with a warning; when that
 * fails too the error names both answers. The server is not taken for one
 * without structured outputs: the next call sends the schema again. A
 * ChatAdapter answer that does not parse can so cost three calls: chat,
 * the JSONAdapter with the schema, then JSON mode. */
Test(module, an_answer_that_ignores_the_schema_is_asked_again_in_json_mode)
{
    fixture_run(fixture_stop_client);
    fixture_run(fixture_start_client); /* no schema refusal remembered */
    dx_signature *s = sig("question -> answer, year: int");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_example *in = inputs1("question", "Capital of Spain, since when?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    dx_call_opts o = {.adapter = DX_ADAPTER_JSON};

    dx_lmserver_push_reply(srv, "Madrid, since 1561");
    dx_lmserver_push_reply(srv, "{\"answer\": \"Madrid\", \"year\": 1561}");
    first_warning[0] = '\0';
    dx_log_set_sink(warning_sink, NULL);
    uint64_t before = upstream_requests();
    int rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    dx_log_set_sink(NULL, NULL);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_eq(upstream_requests() - before, 2, "the schema, then JSON mode");
    cr_assert_eq(dx_example_get_num(dx_prediction_fields(pred), "year", 0),
                 1561);
    cr_assert_eq(dx_prediction_usage(pred)->calls, 2);
    cr_assert(strstr(first_warning, "json_schema_fallback"), "%s",
              first_warning);
    dx_prediction_free(pred);

    /* Both answers unreadable: the error names both; two calls, no more. */
    dx_lmserver_push_reply(srv, "Madrid, since 1561");
    dx_lmserver_push_reply(srv,
                           "{\"answer\": \"Madrid\", \"year\": \"long ago\"}");
    dx_example_set_str(in, "question", "Spain's capital, since when?");
    before = upstream_requests();
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert(rc == DX_EPARSE || rc == DX_ETYPE, "%s", dx_err_name(rc));
    cr_assert_null(pred);
    cr_assert_eq(upstream_requests() - before, 2);
    cr_assert(strstr(d.msg, "; then, in JSON mode without the schema: "), "%s",
              d.msg);
    cr_assert(strstr(d.msg, "year"), "%s", d.msg);

    /* Off with the other fallbacks. */
    dx_lmserver_push_reply(srv, "Madrid, since 1561");
    dx_example_set_str(in, "question", "Since when is Madrid the capital?");
    o.no_json_fallback = true;
    before = upstream_requests();
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_EPARSE, "%s", dx_err_name(rc));
    cr_assert_eq(upstream_requests() - before, 1);

    /* ChatAdapter, then the JSONAdapter with the schema, then JSON mode. */
    dx_lmserver_push_reply(srv, "Madrid, since 1561");
    dx_lmserver_push_reply(srv, "Madrid, since 1561");
    dx_lmserver_push_reply(srv, "{\"answer\": \"Madrid\", \"year\": 1561}");
    dx_example_set_str(in, "question", "Madrid: capital since when?");
    o = (dx_call_opts){0};
    before = upstream_requests();
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_eq(upstream_requests() - before, 3);
    dx_prediction_free(pred);

    /* None of that was taken for a refusal: the schema still goes with
     * each call (the server refuses it here, so a schema request shows as
     * two). */
    o = (dx_call_opts){.adapter = DX_ADAPTER_JSON};
    cr_assert_eq(dx_lmserver_inject(srv, "no_json_schema", 1), DX_OK);
    dx_lmserver_push_reply(srv, "{\"answer\": \"Madrid\", \"year\": 1561}");
    dx_example_set_str(in, "question", "Capital of Spain, and since when?");
    before = upstream_requests();
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_eq(upstream_requests() - before, 2, "the schema was sent");
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_module_free(p);
}

/* A client's own headers go with every request: here the key, in a
 * header of the user's, for a server that wants one; a client without
 * it is refused; a header the transport owns fails the start. */
static const char *const *client_headers;
static size_t n_client_headers;
static dx_pid header_client;

static void start_header_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/test-model", url, NULL},
        .headers = client_headers,
        .n_headers = n_client_headers,
    };
    atomic_store(&fixture_rc, dx_lm_client_start(&o, NULL, &header_client));
}

static void stop_header_client(void *arg)
{
    (void)arg;
    atomic_store(&fixture_rc, dx_server_stop(header_client, NULL, 5000));
}

Test(module, a_clients_own_headers_go_with_every_request)
{
    dx_signature *s = sig("question -> answer");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_example *in = inputs1("question", "Capital of Chile?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};

    const char *const with_key[] = {"X-Gateway-Route: eu",
                                    "Authorization: Bearer sk-in-a-header"};
    client_headers = with_key;
    n_client_headers = 2;
    fixture_run(start_header_client);
    dx_lmserver_push_reply(srv, "[[ ## answer ## ]]\nSantiago\n\n"
                                "[[ ## completed ## ]]");
    dx_call_opts o = {.lm = header_client};
    int rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_str_eq(dx_prediction_get_str(pred, "answer", ""), "Santiago");
    dx_prediction_free(pred);
    fixture_run(stop_header_client);

    client_headers = NULL;
    n_client_headers = 0;
    fixture_run(start_header_client);
    o.lm = header_client;
    dx_example_set_str(in, "question", "Capital of Chile, no key?");
    rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_EPROVIDER, "%s", dx_err_name(rc));
    cr_assert(strstr(d.msg, "auth"), "%s", d.msg);
    fixture_run(stop_header_client);

    const char *const framing[] = {"Transfer-Encoding: chunked"};
    client_headers = framing;
    n_client_headers = 1;
    atomic_store(&fixture_rc, 1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(start_header_client, NULL, &pid), DX_OK);
    for (int i = 0; i < 1000 && atomic_load(&fixture_rc) == 1; i++)
        host_sleep_ms(5);
    cr_assert_eq(atomic_load(&fixture_rc), DX_EINVAL, "%s",
                 dx_err_name(atomic_load(&fixture_rc)));
    dx_example_free(in);
    dx_module_free(p);
}

Test(module, n_completions_are_all_kept)
{
    dx_predict_opts po = {.n = 2};
    dx_signature *s = sig("question -> answer");
    dx_module *p = dx_predict_new(s, &po);
    dx_signature_unref(s);
    dx_example *in = inputs1("question", "Pick a colour");
    /* The local server's default answers are not in ChatAdapter format, so
     * this also runs the JSON fallback with n = 2. */
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(p, in, NULL, &pred, NULL, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_eq(dx_prediction_n_completions(pred), 2);
    cr_assert(
        dx_example_get_str(dx_prediction_completion(pred, 1), "answer", NULL));
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_module_free(p);
}

/* ---- a composed program ------------------------------------------------- */

/* Three steps in straight-line code: write a search query, "retrieve"
 * (a C function), answer from the passages. */
static int rag_forward(dx_ctx *ctx, const dx_module *self, const dx_example *in,
                       dx_prediction **out)
{
    dx_prediction *q = NULL, *summary = NULL;
    DX_TRY(dx_forward(ctx, dx_module_child(self, "generate_query"), in, &q));

    dx_example *step = dx_example_new();
    dx_example_set_str(step, "question",
                       dx_example_get_str(in, "question", ""));
    cJSON *passages = cJSON_CreateArray();
    cJSON_AddItemToArray(passages, cJSON_CreateString("Paris is in France."));
    cJSON_AddItemToArray(
        passages, cJSON_CreateString(dx_prediction_get_str(q, "query", "")));
    dx_example_set_value(step, "context", passages);
    cJSON_Delete(passages);
    dx_prediction_free(q);

    int rc =
        dx_forward(ctx, dx_module_child(self, "summarize"), step, &summary);
    if (rc == DX_OK) {
        dx_example_set_str(step, "summary",
                           dx_prediction_get_str(summary, "summary", ""));
        dx_prediction_free(summary);
        rc = dx_forward(ctx, dx_module_child(self, "answer"), step, out);
    }
    dx_example_free(step);
    return rc;
}

static dx_module *rag_program(void)
{
    dx_module *m = dx_module_new("RAG", rag_forward, NULL, NULL, NULL);
    dx_signature *s = sig("question -> query");
    cr_assert_eq(dx_module_add(m, "generate_query", dx_predict_new(s, NULL)),
                 DX_OK);
    dx_signature_unref(s);
    s = sig("question, context: list[str] -> summary");
    cr_assert_eq(dx_module_add(m, "summarize", dx_predict_new(s, NULL)), DX_OK);
    dx_signature_unref(s);
    s = sig("question, context: list[str], summary -> answer");
    cr_assert_eq(dx_module_add(m, "answer", dx_chain_of_thought_new(s, NULL)),
                 DX_OK);
    dx_signature_unref(s);
    return m;
}

Test(module, a_three_step_program_runs_traces_and_counts_usage)
{
    dx_module *m = rag_program();
    dx_named_predictor *preds = NULL;
    size_t n = 0;
    cr_assert_eq(dx_module_predictors(m, &preds, &n), DX_OK);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(preds[0].path, "generate_query");
    cr_assert_str_eq(preds[1].path, "summarize");
    cr_assert_str_eq(preds[2].path, "answer.predict");
    dx_free(preds);

    dx_lmserver_push_reply(srv, "[[ ## query ## ]]\ncapital of France\n\n"
                                "[[ ## completed ## ]]");
    dx_lmserver_push_reply(srv, "[[ ## summary ## ]]\nParis is the capital."
                                "\n\n[[ ## completed ## ]]");
    dx_lmserver_push_reply(srv, "[[ ## reasoning ## ]]\nThe summary says "
                                "so.\n\n[[ ## answer ## ]]\nParis\n\n"
                                "[[ ## completed ## ]]");
    dx_example *in = inputs1("question", "What is the capital of France?");
    dx_prediction *pred = NULL;
    dx_trace trace = {0};
    dx_call_opts o = {.trace = true};
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(m, in, &o, &pred, &trace, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_str_eq(dx_prediction_get_str(pred, "answer", ""), "Paris");
    /* Usage of the whole run: three LM calls. */
    cr_assert_eq(dx_prediction_usage(pred)->calls, 3);
    cr_assert_eq(trace.n, 3);
    cr_assert_str_eq(trace.steps[0].path, "generate_query");
    cr_assert_str_eq(trace.steps[1].path, "summarize");
    cr_assert_str_eq(trace.steps[2].path, "answer.predict");
    cr_assert_str_eq(dx_example_get_str(trace.steps[0].outputs, "query", ""),
                     "capital of France");
    cr_assert_eq(
        cJSON_GetArraySize(dx_example_get(trace.steps[1].inputs, "context")),
        2);
    cr_assert_str_eq(
        dx_example_get_str(trace.steps[2].outputs, "reasoning", ""),
        "The summary says so.");
    dx_trace_free(&trace);
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_module_free(m);
}

/* ---- failures ------------------------------------------------------------ */

static int crashing_forward(dx_ctx *ctx, const dx_module *self,
                            const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)self;
    (void)out;
    if (strcmp(dx_example_get_str(in, "mode", ""), "crash") == 0)
        crash_now();
    if (strcmp(dx_example_get_str(in, "mode", ""), "fail") == 0)
        return dx_ctx_fail(ctx, DX_EINVAL, "bad mode for this program");
    *out = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(*out), "ok", "yes");
    return DX_OK;
}

Test(module, a_crashing_forward_costs_only_its_own_call)
{
    dx_module *m = dx_module_new("Fragile", crashing_forward, NULL, NULL, NULL);
    dx_example *crash = inputs1("mode", "crash");
    dx_example *fine = inputs1("mode", "fine");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    int rc = dx_module_call(m, crash, NULL, &pred, NULL, &d);
    cr_assert_eq(rc, DX_EDOWN, "%s", dx_err_name(rc));
    cr_assert(strstr(d.msg, "died"), "%s", d.msg);
    /* The runtime, the LM client and later calls are unaffected. */
    cr_assert_eq(dx_module_call(m, fine, NULL, &pred, NULL, &d), DX_OK);
    cr_assert_str_eq(dx_prediction_get_str(pred, "ok", ""), "yes");
    dx_prediction_free(pred);
    cr_assert(!dx_pid_is_none(dx_whereis("lm")));

    dx_example *fail = inputs1("mode", "fail");
    cr_assert_eq(dx_module_call(m, fail, NULL, &pred, NULL, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "bad mode"), "%s", d.msg);
    dx_example_free(fail);
    dx_example_free(crash);
    dx_example_free(fine);
    dx_module_free(m);
}

Test(module, a_missing_lm_client_is_named)
{
    dx_predict_opts po = {.lm_name = "no-such-client"};
    dx_signature *s = sig("question -> answer");
    dx_module *p = dx_predict_new(s, &po);
    dx_signature_unref(s);
    dx_example *in = inputs1("question", "?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(p, in, NULL, &pred, NULL, &d), DX_ENOLM);
    cr_assert(strstr(d.msg, "no-such-client"), "%s", d.msg);
    dx_example_free(in);
    dx_module_free(p);
}

Test(module, a_call_past_its_timeout_is_cut_off)
{
    dx_signature *s = sig("question -> answer");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_lmserver_inject(srv, "slow:3000", 1);
    dx_example *in = inputs1("question", "slow one");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    dx_call_opts o = {.timeout_ms = 200};
    int rc = dx_module_call(p, in, &o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_ETIMEDOUT, "%s: %s", dx_err_name(rc), d.msg);
    cr_assert_null(pred);
    dx_example_free(in);
    dx_module_free(p);
}

/* A forward that waits far longer than the test. */
static atomic_int slow_started;

static int slow_forward(dx_ctx *ctx, const dx_module *self,
                        const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)self;
    (void)in;
    (void)out;
    atomic_fetch_add(&slow_started, 1);
    dx_sleep(600000);
    return DX_ETIMEDOUT;
}

static void free_inputs(void *ex)
{
    dx_example_free(ex);
}

static void calling_proc(void *arg)
{
    const dx_module *m = arg;
    dx_example *in = inputs1("question", "?");
    dx_ptie *tie = dx_ptie_new(in, free_inputs);
    dx_prediction *pred = NULL;
    dx_module_call(m, in, NULL, &pred, NULL, NULL);
    dx_ptie_cut(tie);
    dx_example_free(in);
    dx_prediction_free(pred);
}

/* A caller killed while its program runs (an agent stopped by its
 * supervisor) takes the program's process with it, rather than leaving it
 * to run to its deadline with nobody to read the answer; what the call
 * held is freed (LeakSanitizer watches the sanitizer builds). */
Test(module, a_killed_caller_takes_its_program_with_it)
{
    atomic_store(&slow_started, 0);
    dx_module *m = dx_module_new("Slow", slow_forward, NULL, NULL, NULL);
    dx_pid caller;
    cr_assert_eq(dx_spawn(calling_proc, m, &caller), DX_OK);
    for (int i = 0; i < 10000 && atomic_load(&slow_started) == 0; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    cr_assert_eq(atomic_load(&slow_started), 1, "the program did not start");
    cr_assert_eq(processes_labeled("dspex.program"), 1);
    cr_assert_eq(dx_kill(caller), DX_OK);
    size_t left = 1;
    for (int i = 0;
         i < 10000 && (left = processes_labeled("dspex.program")) > 0; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    cr_assert_eq(left, 0, "the program's process outlived its caller");
    dx_module_free(m);
}

Test(module, copies_are_deep_and_reset_copies_drop_demos)
{
    dx_module *m = rag_program();
    dx_module *gq = dx_module_child(m, "generate_query");
    dx_example *demo = inputs1("question", "Q");
    dx_example_set_str(demo, "query", "q");
    cr_assert_eq(dx_predict_add_demo(gq, demo), DX_OK);
    dx_module *c = dx_module_copy(m);
    dx_module *r = dx_module_reset_copy(m);
    cr_assert_eq(dx_predict_n_demos(dx_module_child(c, "generate_query")), 1);
    cr_assert_eq(dx_predict_n_demos(dx_module_child(r, "generate_query")), 0);
    /* Changing the copy leaves the original alone. */
    cr_assert_eq(
        dx_predict_add_demo(dx_module_child(c, "generate_query"), demo), DX_OK);
    cr_assert_eq(dx_predict_n_demos(gq), 1);
    cr_assert_str_eq(dx_predict_path(dx_module_child(
                         dx_module_child(c, "answer"), "predict")),
                     "answer.predict");
    dx_example_free(demo);
    dx_module_free(c);
    dx_module_free(r);
    dx_module_free(m);
}

Test(module, children_names_are_checked)
{
    dx_module *m = rag_program();
    dx_signature *s = sig("a -> b");
    cr_assert_eq(dx_module_add(m, "summarize", dx_predict_new(s, NULL)),
                 DX_EEXIST);
    cr_assert_eq(dx_module_add(m, "9bad", dx_predict_new(s, NULL)), DX_EINVAL);
    cr_assert_eq(dx_module_add(m, "items[0]", dx_predict_new(s, NULL)), DX_OK);
    dx_signature_unref(s);
    dx_module_free(m);
}

/* ---- an LM client killed and restarted under a call ------------------- */

static dx_child_spec sup_client;
static _Atomic int tree_rc = 1;
static atomic_bool tree_stop;

/* Owns a supervisor whose one child is an LM client registered as
 * "lm_sup", until the test says stop. */
static void client_tree(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/test-model", url, "sk-test"}};
    int rc = dx_lm_client_child_spec(&sup_client, "lm_sup", &o, "lm_sup");
    dx_sup_spec spec = {.name = "lm_sup_tree",
                        .intensity = 10,
                        .period_s = 5,
                        .children = &sup_client,
                        .nchildren = 1};
    dx_pid sup = DX_NOPID;
    if (rc == DX_OK)
        rc = dx_sup_start_link(&spec, &sup, NULL);
    atomic_store(&tree_rc, rc);
    while (rc == DX_OK && !atomic_load(&tree_stop))
        dx_sleep(5);
    if (rc == DX_OK)
        dx_sup_stop(sup, NULL, 5000);
    dx_lm_client_child_spec_free(&sup_client);
    atomic_store(&tree_rc, 2);
}

typedef struct killed_call {
    dx_module *m;
    int rc;
    char answer[64];
    char diag[DX_DIAG_MAX];
} killed_call;

static void *call_in_thread(void *arg)
{
    killed_call *k = arg;
    dx_example *in = inputs1("question", "Capital of Peru?");
    dx_prediction *p = NULL;
    dx_diag d = {0};
    dx_call_opts o = {.lm_name = "lm_sup", .timeout_ms = 20000};
    k->rc = dx_module_call(k->m, in, &o, &p, NULL, &d);
    snprintf(k->answer, sizeof k->answer, "%s",
             p ? dx_prediction_get_str(p, "answer", "") : "");
    snprintf(k->diag, sizeof k->diag, "%s", d.msg);
    dx_prediction_free(p);
    dx_example_free(in);
    return NULL;
}

Test(module, a_call_rides_out_its_lm_client_being_killed_and_restarted)
{
    atomic_store(&tree_rc, 1);
    atomic_store(&tree_stop, false);
    cr_assert_eq(dx_spawn(client_tree, NULL, NULL), DX_OK);
    for (int i = 0; i < 1000 && atomic_load(&tree_rc) == 1; i++)
        host_sleep_ms(2);
    cr_assert_eq(atomic_load(&tree_rc), DX_OK);

    dx_signature *s = sig("question -> answer");
    killed_call k = {.m = dx_predict_new(s, NULL)};
    dx_signature_unref(s);
    /* The first request is held long enough to kill its client. */
    cr_assert_eq(dx_lmserver_inject(srv, "slow:400", 1), DX_OK);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(
            dx_lmserver_push_reply(
                srv, "[[ ## answer ## ]]\nLima\n\n[[ ## completed ## ]]"),
            DX_OK);
    dx_pid first = dx_whereis("lm_sup");
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, call_in_thread, &k), 0);
    for (int i = 0; i < 1000 && upstream_requests() == 0; i++)
        host_sleep_ms(2);
    cr_assert_eq(dx_kill(first), DX_OK);
    pthread_join(t, NULL);
    cr_assert_eq(k.rc, DX_OK, "%s", k.diag);
    cr_assert_str_eq(k.answer, "Lima");
    dx_pid now = dx_whereis("lm_sup");
    cr_assert(!dx_pid_is_none(now) && now.id != first.id,
              "the supervisor restarted the client");
    cr_assert_geq(upstream_requests(), 2, "asked again");

    atomic_store(&tree_stop, true);
    for (int i = 0; i < 1000 && atomic_load(&tree_rc) != 2; i++)
        host_sleep_ms(2);
    dx_module_free(k.m);
}

Test(module, both_adapters_failing_names_both_reasons)
{
    dx_signature *s = sig("question -> answer");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_lmserver_push_reply(srv, "no markers");
    dx_lmserver_push_reply(srv, "no json either");
    dx_lmserver_push_reply(srv, "nor in JSON mode");
    dx_example *in = inputs1("question", "Capital of Peru?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    uint64_t before = upstream_requests();
    cr_assert_eq(dx_module_call(p, in, NULL, &pred, NULL, &d), DX_EPARSE);
    cr_assert_null(pred);
    cr_assert_eq(upstream_requests() - before, 3,
                 "chat, the schema, JSON mode");
    cr_assert(strstr(d.msg, "ChatAdapter"), "%s", d.msg);
    cr_assert(strstr(d.msg, "; then, with the JSONAdapter fallback: "), "%s",
              d.msg);
    cr_assert(strstr(d.msg, "JSONAdapter: the LM response is not a JSON "
                            "object"),
              "%s", d.msg);
    cr_assert(strstr(d.msg, "; then, in JSON mode without the schema: "), "%s",
              d.msg);
    dx_example_free(in);
    dx_module_free(p);
}

/* An answer the provider cut at its token limit (a reasoning model that
 * spent max_tokens thinking) fails to parse; the error says why it was
 * short, so the user knows to raise max_tokens. A full answer after it
 * parses as usual. */
Test(module, an_answer_cut_at_the_token_limit_says_so)
{
    dx_signature *s = sig("question -> answer");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    cr_assert_eq(dx_lmserver_inject(srv, "max_tokens:1", 3), DX_OK);
    dx_lmserver_push_reply(srv, "[[ ## answer ## ]]\nLima");
    dx_lmserver_push_reply(srv, "{\"answer\": \"Lima\"}");
    dx_lmserver_push_reply(srv, "{\"answer\": \"Lima\"}");
    dx_example *in = inputs1("question", "Capital of Peru, cut short?");
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(p, in, NULL, &pred, NULL, &d), DX_EPARSE);
    cr_assert_null(pred);
    cr_assert(strstr(d.msg, "self: the LM stopped at its token limit "
                            "(finish_reason length: raise max_tokens): "
                            "ChatAdapter"),
              "%s", d.msg);
    cr_assert(strstr(d.msg, "token limit (finish_reason length: raise "
                            "max_tokens): JSONAdapter"),
              "both attempts say it: %s", d.msg);

    /* not said of an answer that was not cut */
    dx_lmserver_push_reply(srv, "no markers");
    dx_lmserver_push_reply(srv, "no json either");
    dx_lmserver_push_reply(srv, "nor in JSON mode");
    dx_example_set_str(in, "question", "Capital of Peru, whole?");
    cr_assert_eq(dx_module_call(p, in, NULL, &pred, NULL, &d), DX_EPARSE);
    cr_assert_null(strstr(d.msg, "token limit"), "%s", d.msg);
    dx_example_free(in);
    dx_module_free(p);
}

/* A user forward that breaks the contract is named, with its path and
 * type, and so is a step given nothing to run. */
static int misbehave(dx_ctx *ctx, const dx_module *self, const dx_example *in,
                     dx_prediction **out)
{
    const char *how = dx_example_get_str(in, "how", "");
    if (!dx_ctx_diag(ctx) || dx_ctx_diag(ctx)->code != 0 ||
        !dx_ctx_usage(ctx) || dx_ctx_usage(ctx)->calls != 0 ||
        dx_ctx_remaining_ms(ctx) <= 0)
        return dx_ctx_fail(ctx, DX_ESTATE, "the run's context is wrong");
    if (!strcmp(how, "no_prediction"))
        return DX_OK;
    if (!strcmp(how, "silent_error"))
        return DX_EIO;
    if (!strcmp(how, "missing_child"))
        return dx_forward(ctx, dx_module_child(self, "nope"), in, out);
    if (!strcmp(how, "no_inputs"))
        return dx_forward(ctx, dx_module_child(self, "inner"), NULL, out);
    *out = dx_prediction_new();
    return *out ? DX_OK : DX_ENOMEM;
}

Test(module, a_forward_that_breaks_the_contract_is_named)
{
    dx_module *m = dx_module_new("Wrapper", misbehave, NULL, NULL, NULL);
    dx_signature *s = sig("question -> answer");
    cr_assert_eq(dx_module_add(m, "inner", dx_predict_new(s, NULL)), DX_OK);
    dx_signature_unref(s);
    static const struct {
        const char *how;
        int rc;
        const char *msg;
    } cases[] = {
        {"no_prediction", DX_EINVAL,
         "self (Wrapper): forward returned no prediction"},
        {"silent_error", DX_EIO, "self (Wrapper): forward failed: "},
        {"missing_child", DX_EINVAL, "forward: no module (a missing child?)"},
        {"no_inputs", DX_EINVAL, "inner: no inputs"},
        {"fine", DX_OK, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dx_example *in = inputs1("how", cases[i].how);
        dx_prediction *pred = NULL;
        dx_diag d = {0};
        cr_expect_eq(dx_module_call(m, in, NULL, &pred, NULL, &d), cases[i].rc,
                     "%s: %s", cases[i].how, d.msg);
        cr_expect(strstr(d.msg, cases[i].msg), "%s: %s", cases[i].how, d.msg);
        dx_prediction_free(pred);
        dx_example_free(in);
    }
    dx_module_free(m);
}
