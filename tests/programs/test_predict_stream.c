/*
 * test_predict_stream.c — a run's stream listener (dx_call_opts.on_chunk)
 * against the local LM server through a real LM client: a Predict's output
 * fields arrive in several pieces, never with a section marker, adding up
 * to the prediction's text; a ChainOfThought streams its reasoning then its
 * answer under its predictor's path; a cache hit gives one piece per field;
 * a JSONAdapter run streams a string value and sends a number whole; the
 * pieces add up to the prediction's fields. (The crash of a run
 * mid-stream is tested through the service, test_serve_stream.c.)
 */
#include <criterion/criterion.h>
#include <string.h>

#include "dspex/module.h"
#include "lm_fixture.h"

TestSuite(predict_stream, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 60);

#define MAX_FIELDS 4

/* Written by the program's process; read after dx_module_call returned. */
typedef struct heard {
    char path[64];
    char names[MAX_FIELDS][32];
    char text[MAX_FIELDS][512];
    int pieces[MAX_FIELDS];
    char order[MAX_FIELDS][32]; /* fields in the order they first spoke */
    int n_order;
    bool marker_leaked;
} heard;

static heard h;

static void listen(const char *predictor, const char *field, const char *text,
                   size_t len, void *ud)
{
    heard *x = ud;
    snprintf(x->path, sizeof x->path, "%s", predictor);
    if (memmem(text, len, "[[", 2) || memmem(text, len, "##", 2))
        x->marker_leaked = true;
    int i = 0;
    while (i < MAX_FIELDS && x->names[i][0] && strcmp(x->names[i], field))
        i++;
    if (i == MAX_FIELDS)
        return;
    if (!x->names[i][0]) {
        snprintf(x->names[i], sizeof x->names[i], "%s", field);
        snprintf(x->order[x->n_order++], sizeof x->order[0], "%s", field);
    }
    x->pieces[i]++;
    size_t have = strlen(x->text[i]);
    if (have + len < sizeof x->text[i])
        memcpy(x->text[i] + have, text, len), x->text[i][have + len] = '\0';
}

static int idx(const char *field)
{
    for (int i = 0; i < MAX_FIELDS; i++)
        if (strcmp(h.names[i], field) == 0)
            return i;
    cr_assert_fail("field %s never streamed", field);
    return -1;
}

static dx_prediction *call(dx_module *m, const dx_call_opts *o)
{
    dx_example *in = dx_example_new();
    cr_assert_eq(dx_example_set_str(in, "question", "Capital of France?"),
                 DX_OK);
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    int rc = dx_module_call(m, in, o, &pred, NULL, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", dx_err_name(rc), d.msg);
    dx_example_free(in);
    return pred;
}

static const char reply[] =
    "[[ ## answer ## ]]\nThe capital of France is Paris, a city on the "
    "Seine\n\n[[ ## confidence ## ]]\n0.9\n\n[[ ## completed ## ]]";

Test(predict_stream, predict_fields_arrive_in_pieces_without_markers)
{
    (void)crash_now; /* lm_fixture.h's; no crash here */
    dx_signature *s = sig("question -> answer, confidence: float");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_lmserver_push_reply(srv, reply);
    dx_call_opts o = {.lm = DX_NOPID, .on_chunk = listen, .chunk_ud = &h};
    dx_prediction *pred = call(p, &o);
    cr_assert_not(h.marker_leaked);
    cr_assert_str_eq(h.path, "self");
    int a = idx("answer"), c = idx("confidence");
    cr_assert_geq(h.pieces[a], 2, "the answer came in one piece");
    cr_assert_str_eq(h.text[a], dx_prediction_get_str(pred, "answer", "?"));
    cr_assert_str_eq(h.text[c], "0.9");
    cr_assert_str_eq(h.order[0], "answer");
    cr_assert_eq(
        dx_example_get_num(dx_prediction_fields(pred), "confidence", -1), 0.9);
    dx_prediction_free(pred);

    /* The cache answers the same call: one piece per field. */
    memset(&h, 0, sizeof h);
    uint64_t before = upstream_requests();
    pred = call(p, &o);
    cr_assert_eq(upstream_requests(), before);
    cr_assert_eq(h.pieces[idx("answer")], 1);
    cr_assert_eq(h.pieces[idx("confidence")], 1);
    cr_assert_str_eq(h.text[idx("answer")],
                     dx_prediction_get_str(pred, "answer", "?"));
    dx_prediction_free(pred);
    dx_module_free(p);
}

Test(predict_stream, chain_of_thought_streams_reasoning_then_answer)
{
    dx_signature *s = sig("question -> answer");
    dx_module *m = dx_chain_of_thought_new(s, NULL);
    dx_signature_unref(s);
    dx_lmserver_push_reply(srv, "[[ ## reasoning ## ]]\nFrance's capital "
                                "has been Paris for a long time\n\n"
                                "[[ ## answer ## ]]\nParis\n\n"
                                "[[ ## completed ## ]]\n");
    dx_call_opts o = {.lm = DX_NOPID, .on_chunk = listen, .chunk_ud = &h};
    dx_prediction *pred = call(m, &o);
    cr_assert_not(h.marker_leaked);
    cr_assert_str_eq(h.path, "predict");
    cr_assert_str_eq(h.order[0], "reasoning");
    cr_assert_str_eq(h.order[1], "answer");
    cr_assert_str_eq(h.text[idx("reasoning")],
                     dx_prediction_get_str(pred, "reasoning", "?"));
    cr_assert_str_eq(h.text[idx("answer")], "Paris");
    cr_assert_geq(h.pieces[idx("reasoning")], 2);
    dx_prediction_free(pred);
    dx_module_free(m);
}

Test(predict_stream, a_json_adapter_run_streams_strings_and_sends_others_whole)
{
    dx_signature *s = sig("question -> answer, confidence: float");
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_lmserver_push_reply(srv, "{\"answer\": \"Paris, on the Seine\", "
                                "\"confidence\": 0.75}");
    dx_call_opts o = {.lm = DX_NOPID,
                      .adapter = DX_ADAPTER_JSON,
                      .on_chunk = listen,
                      .chunk_ud = &h};
    dx_prediction *pred = call(p, &o);
    cr_assert_geq(h.pieces[idx("answer")], 2, "the string did not stream");
    cr_assert_str_eq(h.text[idx("answer")], "Paris, on the Seine");
    cr_assert_eq(h.pieces[idx("confidence")], 1, "a number comes whole");
    cr_assert_str_eq(h.text[idx("confidence")], "0.75");
    cr_assert_not(h.marker_leaked);
    dx_prediction_free(pred);
    dx_module_free(p);
}
