/*
 * test_judge.c — the LM-judged metrics (DSPy's SemanticF1 and
 * CompleteAndGrounded) in an evaluation against the local LM server: the
 * judge's prompt carries DSPy's signature, its numbers become the score
 * through DSPy's clamped F1, its usage counts in the row, and a judge that
 * does not answer with numbers fails only its example, which keeps the
 * program's answer.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/evaluate.h"
#include "dspex/teleprompt.h"
#include "eval_int.h"
#include "lm_fixture.h"

TestSuite(judge, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 120);

/* The program under evaluation answers without an LM, so every LM call
 * the server sees is the judge's. */
static int answering_forward(dx_ctx *ctx, const dx_module *self,
                             const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)self;
    char text[128];
    snprintf(text, sizeof text, "The answer to %s is here.",
             dx_example_get_str(in, "question", ""));
    *out = dx_prediction_new();
    dx_example *f = dx_prediction_fields_mut(*out);
    dx_example_set_str(f, "response", text);
    dx_example_set_json(f, "context",
                        "[\"passage one says so\", \"passage two\"]", NULL);
    return DX_OK;
}

static dx_dataset *questions(size_t n)
{
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    for (size_t i = 0; i < n; i++) {
        dx_example *ex = dx_example_new();
        char q[64], truth[64];
        snprintf(q, sizeof q, "judged question %zu", i);
        snprintf(truth, sizeof truth, "ground truth %zu", i);
        dx_example_set_str(ex, "question", q);
        dx_example_set_str(ex, "response", truth);
        dx_example_with_inputs(ex, in, 1);
        cr_assert_eq(dx_dataset_append(ds, ex), DX_OK);
    }
    return ds;
}

/* What the judge (a ChainOfThought) answers, in the ChatAdapter's form. */
static void push_judge(const char *fields)
{
    char text[512];
    snprintf(text, sizeof text,
             "[[ ## reasoning ## ]]\nweighing the key ideas\n\n%s\n\n"
             "[[ ## completed ## ]]",
             fields);
    cr_assert_eq(dx_lmserver_push_reply(srv, text), DX_OK);
}

static char *history;

static void fetch_history(void *arg)
{
    (void)arg;
    dx_free(history);
    history = NULL;
    atomic_store(&fixture_rc,
                 dx_lm_client_inspect_history(dx_whereis("lm"), 0, &history));
}

/* Every one of want[] is in the LM client's history (the judge's calls). */
static void expect_in_history(const char *const *want, size_t n)
{
    fixture_run(fetch_history);
    cr_assert_not_null(history);
    for (size_t i = 0; i < n; i++)
        cr_assert(strstr(history, want[i]), "missing %s in\n%s", want[i],
                  history);
    dx_free(history);
    history = NULL;
}

static dx_eval_result *evaluate_with(dx_metric metric, dx_dataset *ds)
{
    dx_module *m =
        dx_module_new("Answering", answering_forward, NULL, NULL, NULL);
    dx_eval_opts o = {
        .metric = metric,
        .concurrency = 1, /* the pushed answers go to the examples in order */
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    dx_module_free(m);
    return r;
}

Test(judge, semantic_f1_scores_the_f1_of_the_judges_recall_and_precision)
{
    dx_dataset *ds = questions(3);
    push_judge("[[ ## recall ## ]]\n0.5\n\n[[ ## precision ## ]]\n1.0");
    /* out of range: clamped to recall 1, precision 0 → F1 0 */
    push_judge("[[ ## recall ## ]]\n2.5\n\n[[ ## precision ## ]]\n-1");
    /* no numbers, to the ChatAdapter and to its JSON fallback (with the
     * schema, then in JSON mode) */
    push_judge("[[ ## recall ## ]]\nmost of it\n\n[[ ## precision ## ]]\nall");
    cr_assert_eq(dx_lmserver_push_reply(srv, "{\"recall\": \"most\"}"), DX_OK);
    cr_assert_eq(dx_lmserver_push_reply(srv, "{\"recall\": \"most\"}"), DX_OK);
    dx_eval_result *r =
        evaluate_with((dx_metric){.kind = DX_METRIC_SEMANTIC_F1}, ds);

    cr_assert_eq(r->n_done, 3);
    cr_assert_eq(r->rows[0].error, DX_OK, "%s", r->rows[0].error_msg);
    cr_assert_float_eq(r->rows[0].score, 2 * 0.5 * 1.0 / 1.5, 1e-12);
    cr_assert_eq(r->rows[1].error, DX_OK, "%s", r->rows[1].error_msg);
    cr_assert_float_eq(r->rows[1].score, 0.0, 1e-12);
    /* the judge's failure is its example's, with the judge's reason; the
     * program's answer stays in the row */
    cr_assert_eq(r->n_errors, 1);
    cr_assert_neq(r->rows[2].error, DX_OK);
    cr_assert(strstr(r->rows[2].error_msg,
                     "SemanticF1 judge (SemanticRecallPrecision)"),
              "%s", r->rows[2].error_msg);
    cr_assert(strstr(r->rows[2].error_msg, "recall"), "%s",
              r->rows[2].error_msg);
    cr_assert_not_null(r->rows[2].pred);
    cr_assert(strstr(dx_prediction_get_str(r->rows[2].pred, "response", ""),
                     "judged question 2"));
    cr_assert_float_eq(r->score, 100.0 * (2.0 / 3.0) / 3, 0.01);
    /* the judge's calls are the rows' usage (the program made none) */
    cr_assert_eq(r->rows[0].usage.calls, 1);
    cr_assert_gt(r->rows[0].usage.input_tokens, 0);
    cr_assert_eq(r->rows[2].usage.calls, 3,
                 "ChatAdapter + JSON fallback, with the schema and without");
    cr_assert_eq(r->usage.calls, 5);

    /* DSPy's SemanticRecallPrecision, field for field, under a
     * ChainOfThought, with the example's question and ground truth and
     * the program's response */
    const char *want[] = {
        /* the docstring's lines, indented as DSPy's objective is */
        "\n        Compare a system's response to the ground truth to compute "
        "its recall and precision.\n        If asked to reason, enumerate key "
        "ideas in each response, and whether they are present in the other "
        "response.",
        "`question` (str)",
        "`ground_truth` (str)",
        "`system_response` (str)",
        "`reasoning` (str)",
        "`recall` (float): fraction (out of 1.0) of ground truth covered by "
        "the system response",
        "`precision` (float): fraction (out of 1.0) of system response "
        "covered by the ground truth",
        "[[ ## ground_truth ## ]]\nground truth 0",
        "[[ ## system_response ## ]]\nThe answer to judged question 0 is "
        "here.",
    };
    expect_in_history(want, sizeof want / sizeof want[0]);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
}

Test(judge, the_decompositional_judge_enumerates_key_ideas_first)
{
    dx_dataset *ds = questions(1);
    push_judge("[[ ## ground_truth_key_ideas ## ]]\n1. a\n\n"
               "[[ ## system_response_key_ideas ## ]]\n1. a\n\n"
               "[[ ## discussion ## ]]\nsame\n\n"
               "[[ ## recall ## ]]\n1\n\n[[ ## precision ## ]]\n0.25");
    dx_eval_result *r = evaluate_with(
        (dx_metric){.kind = DX_METRIC_SEMANTIC_F1, .decompositional = true},
        ds);
    cr_assert_eq(r->rows[0].error, DX_OK, "%s", r->rows[0].error_msg);
    cr_assert_float_eq(r->rows[0].score, 2 * 0.25 / 1.25, 1e-12);
    const char *want[] = {"compute recall and precision of key ideas.\n"
                          "        You will first enumerate key ideas"};
    expect_in_history(want, 1);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
}

Test(judge, complete_and_grounded_asks_two_judges_and_reads_the_context)
{
    dx_dataset *ds = questions(1);
    push_judge("[[ ## ground_truth_key_ideas ## ]]\n1. x\n\n"
               "[[ ## system_response_key_ideas ## ]]\n1. x\n\n"
               "[[ ## discussion ## ]]\ncovered\n\n"
               "[[ ## completeness ## ]]\n0.8");
    push_judge("[[ ## system_response_claims ## ]]\n1. y\n\n"
               "[[ ## discussion ## ]]\nhalf supported\n\n"
               "[[ ## groundedness ## ]]\n0.4");
    dx_eval_result *r =
        evaluate_with((dx_metric){.kind = DX_METRIC_COMPLETE_AND_GROUNDED}, ds);
    cr_assert_eq(r->rows[0].error, DX_OK, "%s", r->rows[0].error_msg);
    cr_assert_float_eq(r->rows[0].score, 2 * 0.8 * 0.4 / 1.2, 1e-12);
    cr_assert_eq(r->rows[0].usage.calls, 2);
    const char *want[] = {
        "Estimate the completeness of a system's responses, against the "
        "ground truth.",
        "Estimate the groundedness of a system's responses, against real "
        "retrieved documents written by people.",
        /* the prediction's passages, as DSPy formats a list input */
        "[[ ## retrieved_context ## ]]\n[1] «passage one says so»",
    };
    expect_in_history(want, sizeof want / sizeof want[0]);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
}

Test(judge, a_missing_field_is_named_before_any_judge_call)
{
    dx_dataset *ds = questions(2);
    cr_assert_eq(dx_example_remove(ds->items[1], "question"), DX_OK);
    cr_assert_eq(dx_example_set_str(ds->items[1], "q", "x"), DX_OK);
    const char *in[] = {"q"};
    cr_assert_eq(dx_example_with_inputs(ds->items[1], in, 1), DX_OK);
    push_judge("[[ ## recall ## ]]\n1\n\n[[ ## precision ## ]]\n1");
    dx_eval_result *r = evaluate_with(
        (dx_metric){.kind = DX_METRIC_SEMANTIC_F1, .judge_lm_name = "lm"}, ds);
    cr_assert_eq(r->rows[0].error, DX_OK, "%s", r->rows[0].error_msg);
    cr_assert_float_eq(r->rows[0].score, 1.0, 1e-12);
    cr_assert_eq(r->rows[1].error, DX_EINVAL);
    cr_assert_str_eq(r->rows[1].error_msg,
                     "the example has no \"question\" for SemanticF1");
    cr_assert_eq(r->rows[1].usage.calls, 0);
    dx_eval_result_free(r);
    dx_dataset_free(ds);

    /* the response field is DSPy's "response" unless told otherwise */
    ds = questions(1);
    dx_eval_result *r2 = evaluate_with(
        (dx_metric){.kind = DX_METRIC_SEMANTIC_F1, .field = "answer"}, ds);
    cr_assert_str_eq(r2->rows[0].error_msg,
                     "the example has no \"answer\" for SemanticF1");
    dx_eval_result_free(r2);
    dx_dataset_free(ds);
}

Test(judge, names_and_pass_marks_are_dspys)
{
    dx_metric_kind k;
    cr_assert_eq(dx_metric_from_name("semantic_f1", &k), DX_OK);
    cr_assert_eq(k, DX_METRIC_SEMANTIC_F1);
    cr_assert_eq(dx_metric_from_name("CompleteAndGrounded", &k), DX_OK);
    cr_assert_eq(k, DX_METRIC_COMPLETE_AND_GROUNDED);
    dx_metric m = {.kind = DX_METRIC_SEMANTIC_F1};
    cr_assert_str_eq(dx_metric_name(&m), "SemanticF1");
    cr_assert_float_eq(dx__metric_pass_mark(&m), 0.66, 1e-12);
    m.threshold = 0.9;
    cr_assert_float_eq(dx__metric_pass_mark(&m), 0.9, 1e-12);
    m = (dx_metric){.kind = DX_METRIC_COMPLETE_AND_GROUNDED};
    cr_assert_str_eq(dx_metric_name(&m), "CompleteAndGrounded");
    m = (dx_metric){.kind = DX_METRIC_EXACT_MATCH};
    cr_assert_float_eq(dx__metric_pass_mark(&m), 0.0, 1e-12);
    /* off a process the judge cannot wait for its LM: NaN, not a score */
    m = (dx_metric){.kind = DX_METRIC_SEMANTIC_F1};
    dx_example *ex = dx_example_new();
    dx_example_set_str(ex, "question", "q");
    dx_example_set_str(ex, "response", "r");
    dx_prediction *p = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(p), "response", "r");
    cr_assert(isnan(dx_metric_score(&m, ex, p, NULL)));
    dx_prediction_free(p);
    dx_example_free(ex);
}

/* Bootstrapping with a judged metric keeps a demo at DSPy's pass mark
 * (0.66) unless the optimizer sets its own threshold. */
static size_t bootstrapped(double metric_threshold)
{
    dx_module *student = predict("question -> response");
    dx_dataset *ds = questions(2);
    for (int i = 0; i < 2; i++) {
        char ans[128];
        snprintf(ans, sizeof ans,
                 "[[ ## response ## ]]\nteacher says %d (%g)\n\n"
                 "[[ ## completed ## ]]",
                 i, metric_threshold);
        cr_assert_eq(dx_lmserver_push_reply(srv, ans), DX_OK);
        push_judge(i == 0 ? "[[ ## recall ## ]]\n0.6\n\n"
                            "[[ ## precision ## ]]\n0.6"
                          : "[[ ## recall ## ]]\n0.9\n\n"
                            "[[ ## precision ## ]]\n0.9");
    }
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_SEMANTIC_F1},
        .metric_threshold = metric_threshold,
        .max_bootstrapped_demos = 2,
        .labeled_none = true,
        .concurrency = 1, /* the pushed answers go to the runs in order */
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(student, NULL, ds, &o, &r, &d), DX_OK,
                 "%s", d.msg);
    size_t n = r->n_bootstrapped;
    /* the judge's calls are the optimizer's too */
    cr_assert_eq(r->usage.calls, 4);
    dx_tp_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(student);
    return n;
}

Test(judge, bootstrapping_keeps_demos_at_the_judges_pass_mark)
{
    cr_assert_eq(bootstrapped(0), 1, "F1 0.6 is under 0.66, 0.9 is not");
    cr_assert_eq(bootstrapped(0.5), 2, "the optimizer's threshold wins");
}

/* An example whose judge is still waiting on its LM at the deadline is
 * killed like any other, and what the judge held goes with it (the suite
 * runs under LeakSanitizer in CI). */
Test(judge, a_judge_past_the_deadline_is_killed_with_its_example)
{
    dx_module *m =
        dx_module_new("Answering", answering_forward, NULL, NULL, NULL);
    dx_dataset *ds = questions(2);
    cr_assert_eq(dx_lmserver_inject(srv, "slow:60000", 1), DX_OK);
    push_judge("[[ ## recall ## ]]\n1\n\n[[ ## precision ## ]]\n1");
    push_judge("[[ ## recall ## ]]\n1\n\n[[ ## precision ## ]]\n1");
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_SEMANTIC_F1},
        .concurrency = 1,
        .example_timeout_ms = 400,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, NULL), DX_OK);
    cr_assert_eq(r->rows[0].error, DX_ETIMEDOUT, "%s", r->rows[0].error_msg);
    cr_assert_eq(r->rows[1].error, DX_OK, "%s", r->rows[1].error_msg);
    cr_assert_float_eq(r->rows[1].score, 1.0, 1e-12);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
    for (int i = 0; i < 200 && processes_labeled("dspex.evaluate.example"); i++)
        host_sleep_ms(5);
    cr_assert_eq(processes_labeled("dspex.evaluate.example"), 0);
}
