/*
 * test_evaluate.c — the evaluation engine: a known program on a known
 * dataset through the local LM server; 1,000 examples with one crashing
 * and one hanging → 998 scored and 2 errors with reasons; max_errors
 * stopping early; the concurrency bound; dataset order whatever the
 * completion order; a crashing metric; examples without inputs;
 * cancellation from another thread.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/blocking.h"
#include "dspex/evaluate.h"
#include "eval_int.h"
#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/runtime.h"
#include "dx_config.h"
#include "lm_fixture.h"

TestSuite(evaluate, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 120);

static dx_dataset *dataset(size_t n, const char *(*answer)(size_t i))
{
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    for (size_t i = 0; i < n; i++) {
        dx_example *ex = dx_example_new();
        char q[32];
        snprintf(q, sizeof q, "q%zu", i);
        dx_example_set_str(ex, "question", q);
        dx_example_set_str(ex, "answer", answer ? answer(i) : q);
        dx_example_with_inputs(ex, in, 1);
        cr_assert_eq(dx_dataset_append(ds, ex), DX_OK);
    }
    return ds;
}

/* ---- a known program against the LM server ---------------------------- */

static const char *even_right(size_t i)
{
    return i % 2 == 0 ? "RIGHT" : "WRONG";
}

/* The local server answers "answer: <last user message>" (in JSON once
 * the ChatAdapter's answer fails to parse), so the prediction contains
 * the question. The metric is 1 when the prediction contains the label's
 * question for "RIGHT" examples: a known 50%. */
static double contains_metric(const dx_example *ex, const dx_prediction *p,
                              const dx_trace *t, void *ud)
{
    (void)t;
    (void)ud;
    const char *label = dx_example_get_str(ex, "answer", "");
    const char *q = dx_example_get_str(ex, "question", "");
    const char *got = dx_prediction_get_str(p, "answer", "");
    return strcmp(label, "RIGHT") == 0 && strstr(got, q) ? 1.0 : 0.0;
}

Test(evaluate, scores_a_known_program_through_the_lm_server)
{
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_dataset *ds = dataset(20, even_right);
    /* Slow answers, so up to `concurrency` requests overlap. */
    dx_lmserver_inject(srv, "slow:30", 40);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = contains_metric},
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(p, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(r->n_done, 20);
    cr_assert_eq(r->n_errors, 0, "%s", r->rows[0].error_msg);
    cr_assert_float_eq(r->score, 50.0, 1e-9);
    /* The concurrency bound, counted by the server. */
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    cr_assert_leq(st.max_in_flight, 4, "%llu in flight",
                  (unsigned long long)st.max_in_flight);
    cr_assert_geq(st.max_in_flight, 2);
    /* Two LM calls per example (ChatAdapter, then the JSON fallback). */
    cr_assert_eq(r->usage.calls, 40);
    cr_assert_gt(r->usage.input_tokens, 0);
    cr_assert_gt(r->latency_p50_ms, 0);
    cr_assert_geq(r->latency_p99_ms, r->latency_p50_ms);

    /* The same inputs with the cached LM give the same score. */
    dx_eval_result *again = NULL;
    cr_assert_eq(dx_evaluate(p, ds, &o, &again, &d), DX_OK);
    cr_assert_float_eq(again->score, r->score, 1e-9);
    cr_assert_eq(again->usage.cached_calls, again->usage.calls);
    /* Cached answers take well under a millisecond; latencies are kept to
     * the microsecond, so they still show. */
    cr_assert_gt(again->latency_p50_ms, 0);
    cr_assert_lt(again->latency_p50_ms, r->latency_p50_ms);
    dx_eval_result_free(again);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(p);
}

/* ---- failures among many ---------------------------------------------- */

static atomic_int running, max_running;

/* Count one more example running, keeping the most seen at once. */
static void note_running(void)
{
    int now = atomic_fetch_add(&running, 1) + 1;
    int seen = atomic_load(&max_running);
    while (now > seen &&
           !atomic_compare_exchange_weak(&max_running, &seen, now))
        ;
}

static int fragile_forward(dx_ctx *ctx, const dx_module *self,
                           const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)ctx;
    const char *q = dx_example_get_str(in, "question", "");
    if (strcmp(q, "q17") == 0)
        crash_now();
    if (strcmp(q, "q500") == 0) {
        dx_msg *never = NULL; /* hang until killed */
        dx_receive_tag(0x68616e67, DX_INFINITY, &never);
        dx_msg_free(never);
    }
    note_running();
    /* Finish in an order unlike the dataset's. */
    long idx = strtol(q + 1, NULL, 10);
    if (idx < 40)
        dx_sleep((40 - idx) % 7);
    atomic_fetch_sub(&running, 1);
    *out = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(*out), "answer", q);
    return DX_OK;
}

Test(evaluate, a_crash_and_a_hang_among_1000_cost_two_examples)
{
    dx_module *m = dx_module_new("Fragile", fragile_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(1000, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 64,
        .example_timeout_ms = 300,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(r->n_done, 1000);
    cr_assert_eq(r->n_errors, 2, "%zu errors; row 0: %s", r->n_errors,
                 r->rows[0].error_msg ? r->rows[0].error_msg : "ok");
    cr_assert_float_eq(r->score, 99.8, 1e-9);
    cr_assert_eq(r->rows[17].error, DX_EDOWN);
    cr_assert(strstr(r->rows[17].error_msg, "died"), "%s",
              r->rows[17].error_msg);
    cr_assert_eq(r->rows[500].error, DX_ETIMEDOUT);
    cr_assert(strstr(r->rows[500].error_msg, "300 ms"), "%s",
              r->rows[500].error_msg);
    cr_assert_eq(r->rows[17].score, 0);
    /* A failed example's latency is the time it ran until it failed. */
    cr_assert_gt(r->rows[17].latency_ms, 0);
    cr_assert_geq(r->rows[500].latency_ms, 300, "%f", r->rows[500].latency_ms);
    /* Dataset order, whatever order they finished in. */
    for (size_t i = 0; i < 1000; i++) {
        cr_assert_eq(r->rows[i].index, i);
        if (i == 17 || i == 500)
            continue;
        char q[32];
        snprintf(q, sizeof q, "q%zu", i);
        cr_assert_str_eq(dx_prediction_get_str(r->rows[i].pred, "answer", ""),
                         q);
        cr_assert_eq(r->rows[i].score, 1.0);
    }
    cr_assert_leq(atomic_load(&max_running), 64, "concurrency bound: %d",
                  atomic_load(&max_running));
    cr_assert_gt(atomic_load(&max_running), 1);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* A yes/no metric: true for the even-numbered questions. */
static bool even_question(const dx_example *ex, const dx_prediction *p,
                          const dx_trace *t, void *ud)
{
    (void)p;
    (void)t;
    (void)ud;
    return strtol(dx_example_get_str(ex, "question", "q1") + 1, NULL, 10) % 2 ==
           0;
}

Test(evaluate, a_yes_no_metric_scores_one_or_zero_and_saves_as_bools)
{
    dx_module *m = dx_module_new("Fragile", fragile_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(10, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM,
                   .pass = even_question,
                   .name = "is_even"},
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_float_eq(r->score, 50.0, 1e-9);
    cr_assert_eq(r->rows[0].score, 1.0);
    cr_assert_eq(r->rows[1].score, 0.0);
    /* DSPy writes what a bool metric returns: True/False. */
    char path[128];
    snprintf(path, sizeof path, "/tmp/dspex_test_eval_pass_%ld.json",
             (long)getpid());
    cr_assert_eq(
        dx_eval_result_save_dspy(r, &o.metric, DX_EVAL_FILE_JSON, path, &d),
        DX_OK, "%s", d.msg);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    unlink(path);
    text[n] = '\0';
    cr_assert(strstr(text, "\"question\": \"q0\", \"example_answer\": "
                           "\"q0\", \"pred_answer\": \"q0\", \"is_even\": "
                           "true}"),
              "%s", text);
    cr_assert(strstr(text, "\"is_even\": false}"), "%s", text);
    dx_eval_result_free(r);
    /* A custom metric needs one of the two. */
    o.metric.pass = NULL;
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "custom metric"), "%s", d.msg);
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* Hangs on a few questions (until killed), answers the rest at once, and
 * counts how many run at the same time. */
static int hang_some_forward(dx_ctx *ctx, const dx_module *self,
                             const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)ctx;
    const char *q = dx_example_get_str(in, "question", "");
    note_running();
    if (strcmp(q, "q5") == 0 || strcmp(q, "q6") == 0 ||
        strcmp(q, "q2999") == 0) {
        dx_msg *never = NULL;
        dx_receive_tag(0x68616e67, DX_INFINITY, &never);
        dx_msg_free(never);
    }
    /* Stay until 50 run at once (or 300 ms pass: the last examples of the
     * dataset have fewer companions), so many are in flight together even
     * where processes start slowly (sanitizer builds). */
    for (int waited = 0; atomic_load(&max_running) < 50 && waited < 300;
         waited++)
        dx_sleep(1);
    long idx = strtol(q + 1, NULL, 10);
    dx_sleep(idx % 5); /* finish out of dataset order */
    atomic_fetch_sub(&running, 1);
    *out = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(*out), "answer", q);
    return DX_OK;
}

/* A thousand in flight at once: the coordinator finds each finished
 * example among them, kills the hung ones at their deadline (two while
 * the rest keep finishing around them, one last), and keeps dataset
 * order. */
Test(evaluate, a_thousand_in_flight_keep_order_and_kill_every_hang)
{
    atomic_store(&running, 0);
    atomic_store(&max_running, 0);
    dx_module *m =
        dx_module_new("HangSome", hang_some_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(3000, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 1000,
        .example_timeout_ms = 2000,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(r->n_done, 3000);
    cr_assert_eq(r->n_errors, 3);
    for (size_t i = 0; i < 3000; i++) {
        cr_assert_eq(r->rows[i].index, i);
        if (i == 5 || i == 6 || i == 2999) {
            cr_assert_eq(r->rows[i].error, DX_ETIMEDOUT, "row %zu: %s", i,
                         dx_err_name(r->rows[i].error));
            continue;
        }
        char q[32];
        snprintf(q, sizeof q, "q%zu", i);
        cr_assert_eq(r->rows[i].error, DX_OK, "row %zu", i);
        cr_assert_str_eq(dx_prediction_get_str(r->rows[i].pred, "answer", ""),
                         q);
    }
    cr_assert_leq(atomic_load(&max_running), 1000, "concurrency bound: %d",
                  atomic_load(&max_running));
    cr_assert_geq(atomic_load(&max_running), 50);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
}

static int failing_forward(dx_ctx *ctx, const dx_module *self,
                           const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)in;
    (void)out;
    return dx_ctx_fail(ctx, DX_EPARSE, "this program never parses");
}

Test(evaluate, stops_early_past_max_errors)
{
    dx_module *m = dx_module_new("Failing", failing_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(200, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 2,
        .max_errors = 5,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, NULL), DX_OK);
    cr_assert(r->stopped_early);
    cr_assert_gt(r->n_errors, 5);
    cr_assert_lt(r->n_done, 200);
    /* Which examples ran before the stop depends on timing (one started
     * on a sleeping scheduler may be killed before it runs); each that
     * finished failed with its reason. */
    size_t failed = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (!r->rows[i].done || r->rows[i].error == DX_OK)
            continue;
        if (r->rows[i].error == DX_EPARSE) {
            cr_assert(strstr(r->rows[i].error_msg, "never parses"), "%s",
                      r->rows[i].error_msg);
            failed++;
        }
    }
    cr_assert_gt(failed, 5);
    cr_assert(!r->rows[199].done, "never started");
    /* Every row holds a copy of its example, also those never started. */
    for (size_t i = 0; i < r->n; i++) {
        cr_assert_not_null(r->rows[i].example, "row %zu", i);
        cr_assert(dx_example_equal(r->rows[i].example, ds->items[i]), "row %zu",
                  i);
        cr_assert_neq(r->rows[i].example, ds->items[i]);
    }
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
}

static int echo_forward(dx_ctx *ctx, const dx_module *self,
                        const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)ctx;
    *out = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(*out), "answer",
                       dx_example_get_str(in, "question", ""));
    return DX_OK;
}

static double crashing_metric(const dx_example *ex, const dx_prediction *p,
                              const dx_trace *t, void *ud)
{
    (void)p;
    (void)t;
    (void)ud;
    if (strcmp(dx_example_get_str(ex, "question", ""), "q3") == 0)
        crash_now();
    return 1.0;
}

Test(evaluate, a_crashing_metric_fails_only_its_example)
{
    dx_module *m = dx_module_new("Echo", echo_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(10, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = crashing_metric},
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, NULL), DX_OK);
    cr_assert_eq(r->n_errors, 1);
    cr_assert_eq(r->rows[3].error, DX_EDOWN);
    cr_assert_float_eq(r->score, 90.0, 1e-9);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* Answers "q<i>" except for q2, whose prediction has no "answer". */
static int echo_but_q2_forward(dx_ctx *ctx, const dx_module *self,
                               const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)ctx;
    const char *q = dx_example_get_str(in, "question", "");
    *out = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(*out),
                       strcmp(q, "q2") == 0 ? "reply" : "answer", q);
    return DX_OK;
}

/* DSPy's answer_exact_match raises when example.answer or pred.answer is
 * missing, and its Evaluate counts an error: so does this, saying which
 * field is missing where, and the other examples score. */
Test(evaluate, a_missing_label_or_answer_field_is_an_error_that_says_which)
{
    dx_module *m = dx_module_new("Echo", echo_but_q2_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(6, NULL);
    cr_assert_eq(dx_example_remove(ds->items[4], "answer"), DX_OK);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, NULL), DX_OK);
    cr_assert_eq(r->n_errors, 2);
    cr_assert_eq(r->rows[2].error, DX_EINVAL);
    cr_expect_str_eq(r->rows[2].error_msg,
                     "the prediction has no \"answer\" for answer_exact_match");
    cr_assert_eq(r->rows[4].error, DX_EINVAL);
    cr_expect_str_eq(
        r->rows[4].error_msg,
        "the example has no \"answer\" for answer_exact_match to compare with");
    cr_assert_float_eq(r->score, 100.0 * 4 / 6, 0.01);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
}

Test(evaluate, examples_without_inputs_are_errors_that_say_so)
{
    dx_module *m = dx_module_new("Echo", echo_forward, NULL, NULL, NULL);
    dx_dataset *ds = dx_dataset_new();
    dx_example *ex = dx_example_new();
    dx_example_set_str(ex, "question", "q");
    dx_dataset_append(ds, ex);
    dx_eval_opts o = {.progress = DX_EVAL_PROGRESS_OFF};
    dx_eval_result *r = NULL;
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, NULL), DX_OK);
    cr_assert_eq(r->n_errors, 1);
    cr_assert(strstr(r->rows[0].error_msg, "input"), "%s",
              r->rows[0].error_msg);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* ---- rows as they finish, and resuming --------------------------------- */

static atomic_int programs_run;

/* Echoes the question; q5 always fails. Counts its runs. */
static int counted_echo_forward(dx_ctx *ctx, const dx_module *self,
                                const dx_example *in, dx_prediction **out)
{
    atomic_fetch_add(&programs_run, 1);
    if (strcmp(dx_example_get_str(in, "question", ""), "q5") == 0)
        return dx_ctx_fail(ctx, DX_EPARSE, "q5 never parses");
    return echo_forward(ctx, self, in, out);
}

typedef struct rows_seen {
    size_t calls;
    bool twice, not_done, resumed, wrong_example;
    bool seen[32];
} rows_seen;

/* on_row: the coordinator calls it, one row at a time. */
static void note_row(const dx_eval_row *row, void *ud)
{
    rows_seen *rs = ud;
    rs->calls++;
    rs->not_done |= !row->done;
    rs->resumed |= row->resumed;
    /* The row holds its example ("q<index>"), the dataset's until the run
     * ends. */
    char q[16];
    snprintf(q, sizeof q, "q%zu", row->index);
    rs->wrong_example |=
        row->example == NULL ||
        strcmp(dx_example_get_str(row->example, "question", ""), q) != 0;
    if (row->index < 32) {
        rs->twice |= rs->seen[row->index];
        rs->seen[row->index] = true;
    }
}

static dx_module *predict_with(const char *instructions)
{
    dx_signature *s = NULL;
    cr_assert_eq(dx_signature_parse("question -> answer", instructions, NULL, 0,
                                    &s, NULL),
                 DX_OK);
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    cr_assert_not_null(p);
    return p;
}

typedef struct eval_run {
    const dx_module *m;
    const dx_dataset *ds;
    dx_eval_opts o;
    dx_eval_result *r;
    int rc;
} eval_run;

static void *evaluate_thread(void *arg)
{
    eval_run *er = arg;
    er->rc = dx_evaluate(er->m, er->ds, &er->o, &er->r, NULL);
    return NULL;
}

/* The examples in flight, and the most memory one of them holds. */
static size_t examples_waiting(size_t *max_bytes)
{
    dx_proc_info *ps = NULL;
    size_t n = 0, waiting = 0;
    cr_assert_eq(dx_process_list(&ps, &n), DX_OK);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ps[i].label, "dspex.evaluate.example") != 0 ||
            ps[i].status != DX_PROC_WAITING)
            continue;
        waiting++;
        if (ps[i].memory_bytes > *max_bytes)
            *max_bytes = ps[i].memory_bytes;
    }
    dx_free(ps);
    return waiting;
}

/* An example waiting on its LM call is a process whose frames were copied
 * off the scheduler's stack: what it holds then is what 1,000 in flight
 * cost. Its path to the call (the program, Predict, the adapter, the LM
 * client, the transport) keeps rare paths' buffers (error messages,
 * fallbacks' diagnostics, telemetry events) out of the frames it waits
 * in, so each holds a few kilobytes (it took over 6 KB before). */
Test(evaluate, an_example_waiting_on_its_lm_call_holds_a_few_kilobytes)
{
#if !DX_STACK_COPY
    cr_skip_test("processes have stacks of their own in this build");
#endif
    dx_module *p = predict_with(NULL);
    dx_dataset *ds = dataset(32, NULL);
    /* Held long enough that all 32 wait at once even on a loaded machine. */
    dx_lmserver_inject(srv, "slow:1500", 32);
    eval_run er = {
        .m = p,
        .ds = ds,
        .o = {.metric = {.kind = DX_METRIC_EXACT_MATCH},
              .concurrency = 32,
              .progress = DX_EVAL_PROGRESS_OFF,
              .call = {.adapter = DX_ADAPTER_JSON}},
    };
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, evaluate_thread, &er), 0);
    size_t max_bytes = 0, waiting = 0;
    for (int i = 0; i < 1000 && waiting < 32; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        max_bytes = 0;
        waiting = examples_waiting(&max_bytes);
    }
    cr_expect_eq(waiting, 32, "all 32 wait on their LM calls");
    cr_expect_lt(max_bytes, 4096, "an example waiting holds %zu bytes",
                 max_bytes);
    pthread_join(th, NULL);
    cr_assert_eq(er.rc, DX_OK);
    cr_expect_eq(er.r->n_done, 32);
    cr_expect_eq(er.r->n_errors, 0, "%s", er.r->rows[0].error_msg);
    dx_eval_result_free(er.r);
    dx_dataset_free(ds);
    dx_module_free(p);
}

/* Every example that ran is handed to on_row once, as it ends. A resumed
 * run takes the rows that finished without an error, runs the failed one
 * and those that never ran, and scores the whole dataset. */
Test(evaluate, rows_go_to_on_row_as_they_end_and_a_resume_runs_only_the_rest)
{
    dx_module *m =
        dx_module_new("Echo", counted_echo_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(20, NULL);
    rows_seen seen = {0};
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
        .on_row = note_row,
        .on_row_ud = &seen,
    };
    atomic_store(&programs_run, 0);
    dx_eval_result *first = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &first, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(first->n_errors, 1);
    cr_expect_eq(seen.calls, 20);
    cr_expect(!seen.twice && !seen.not_done && !seen.resumed);
    cr_expect(!seen.wrong_example);
    cr_expect_eq(first->n_resumed, 0);
    /* As if the run had been killed after its first ten examples. */
    for (size_t i = 10; i < 20; i++) {
        dx_prediction_free(first->rows[i].pred);
        first->rows[i].pred = NULL;
        first->rows[i].done = false;
    }

    memset(&seen, 0, sizeof seen);
    atomic_store(&programs_run, 0);
    o.resume = first;
    dx_eval_result *r = NULL;
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_expect_eq(atomic_load(&programs_run), 11, "q5 and q10..q19 ran");
    cr_expect_eq(seen.calls, 11);
    cr_expect(!seen.resumed, "resumed rows are not handed over");
    cr_expect(!seen.wrong_example);
    /* Resumed rows hold copies of their examples too. */
    for (size_t i = 0; i < 20; i++)
        cr_expect(r->rows[i].example &&
                      dx_example_equal(r->rows[i].example, ds->items[i]),
                  "row %zu", i);
    cr_expect(!seen.seen[0] && seen.seen[5] && seen.seen[19]);
    cr_expect_eq(r->n_done, 20);
    cr_expect_eq(r->n_resumed, 9);
    cr_expect_eq(r->n_errors, 1);
    cr_expect_float_eq(r->score, 95.0, 1e-9);
    cr_expect(r->rows[0].resumed && !r->rows[5].resumed);
    cr_expect_str_eq(dx_prediction_get_str(r->rows[0].pred, "answer", ""),
                     "q0");
    cr_expect_eq(r->rows[5].error, DX_EPARSE);
    cr_expect_str_eq(dx_prediction_get_str(r->rows[19].pred, "answer", ""),
                     "q19");
    dx_eval_result_free(r);

    /* Rows of another dataset are refused before anything runs. */
    atomic_store(&programs_run, 0);
    dx_dataset *shorter = dataset(19, NULL);
    cr_expect_eq(dx_evaluate(m, shorter, &o, &r, &d), DX_EINVAL);
    cr_expect(strstr(d.msg, "20 examples, the dataset has 19"), "%s", d.msg);
    dx_dataset_free(shorter);
    cr_assert_eq(
        dx_example_set_str(first->rows[3].example, "question", "other"), DX_OK);
    cr_expect_eq(dx_evaluate(m, ds, &o, &r, &d), DX_EINVAL);
    cr_expect(strstr(d.msg, "example 3"), "%s", d.msg);
    cr_expect_eq(atomic_load(&programs_run), 0);
    dx_eval_result_free(first);
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* A run key names what a row depends on besides its example: the same
 * program, metric and LM give the same key (a default spelled out too),
 * any of them changed another. */
Test(evaluate, a_run_key_changes_with_the_program_metric_or_model)
{
    dx_module *p = predict_with("Answer briefly.");
    dx_module *same = predict_with("Answer briefly.");
    dx_module *other = predict_with("Answer at length.");
    dx_eval_opts o = {.metric = {.kind = DX_METRIC_EXACT_MATCH}};
    char k[DX_EVAL_RUN_KEY_LEN], k2[DX_EVAL_RUN_KEY_LEN];
    cr_assert_eq(dx_eval_run_key(p, &o, "model=a", k), DX_OK);
    cr_expect_eq(strlen(k), 16);
    cr_expect_eq(strspn(k, "0123456789abcdef"), 16, "%s", k);
    cr_assert_eq(dx_eval_run_key(same, &o, "model=a", k2), DX_OK);
    cr_expect_str_eq(k, k2, "the same program, metric and model");
    dx_eval_opts spelled = o;
    spelled.metric.field = "answer";
    cr_assert_eq(dx_eval_run_key(p, &spelled, "model=a", k2), DX_OK);
    cr_expect_str_eq(k, k2, "the default field spelled out");

    cr_assert_eq(dx_eval_run_key(other, &o, "model=a", k2), DX_OK);
    cr_expect_str_neq(k, k2, "other instructions");
    cr_assert_eq(dx_eval_run_key(p, &o, "model=b", k2), DX_OK);
    cr_expect_str_neq(k, k2, "another model");
    dx_eval_opts changed = o;
    changed.metric.kind = DX_METRIC_F1;
    cr_assert_eq(dx_eval_run_key(p, &changed, "model=a", k2), DX_OK);
    cr_expect_str_neq(k, k2, "another metric");
    changed = o;
    changed.metric.field = "label";
    cr_assert_eq(dx_eval_run_key(p, &changed, "model=a", k2), DX_OK);
    cr_expect_str_neq(k, k2, "another field");
    changed = o;
    changed.call.adapter = DX_ADAPTER_JSON;
    cr_assert_eq(dx_eval_run_key(p, &changed, "model=a", k2), DX_OK);
    cr_expect_str_neq(k, k2, "another adapter");
    changed = o;
    changed.failure_score = 0.5;
    cr_assert_eq(dx_eval_run_key(p, &changed, "model=a", k2), DX_OK);
    cr_expect_str_neq(k, k2, "another failure score");
    /* Parts cannot run into each other. */
    changed = o;
    changed.call.rollout_id = "ab";
    cr_assert_eq(dx_eval_run_key(p, &changed, "c", k), DX_OK);
    changed.call.rollout_id = "a";
    cr_assert_eq(dx_eval_run_key(p, &changed, "bc", k2), DX_OK);
    cr_expect_str_neq(k, k2);
    cr_expect_eq(dx_eval_run_key(NULL, &o, NULL, k), DX_EINVAL);
    dx_module_free(p);
    dx_module_free(same);
    dx_module_free(other);
}

/* A run with a key writes it into its rows and result; a resume whose rows
 * carry another key is refused before anything runs, one with the same
 * key or with none (rows of an older file) is taken. */
Test(evaluate, rows_of_another_run_key_are_not_resumed)
{
    dx_module *m =
        dx_module_new("Echo", counted_echo_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(6, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 2,
        .progress = DX_EVAL_PROGRESS_OFF,
        .run_key = "00aa00aa00aa00aa",
    };
    dx_eval_result *first = NULL, *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &first, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(first->run_key, "00aa00aa00aa00aa");
    cr_expect_eq(first->rows[2].run_key, first->run_key);
    cr_expect_neq((const void *)first->run_key, (const void *)o.run_key,
                  "the result has its own copy");

    atomic_store(&programs_run, 0);
    o.resume = first;
    o.run_key = "11bb11bb11bb11bb";
    cr_expect_eq(dx_evaluate(m, ds, &o, &r, &d), DX_EINVAL);
    cr_expect(strstr(d.msg, "another run (run key 00aa00aa00aa00aa; this "
                            "run's is 11bb11bb11bb11bb)") != NULL,
              "%s", d.msg);
    cr_expect_null(r);
    cr_expect_eq(atomic_load(&programs_run), 0);

    o.run_key = "00aa00aa00aa00aa";
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_expect_eq(r->n_resumed, first->n_done - first->n_errors);
    cr_expect_eq(r->rows[0].run_key, r->run_key, "resumed rows are this run's");
    dx_eval_result_free(r);

    /* Rows without a key (an older file) are taken unchecked. */
    dx_free(first->run_key);
    first->run_key = NULL;
    for (size_t i = 0; i < first->n; i++)
        first->rows[i].run_key = NULL;
    o.run_key = "22cc22cc22cc22cc";
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_expect_gt(r->n_resumed, 0);
    dx_eval_result_free(r);
    dx_eval_result_free(first);
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* ---- cancellation ------------------------------------------------------- */

static int slow_forward(dx_ctx *ctx, const dx_module *self,
                        const dx_example *in, dx_prediction **out)
{
    dx_sleep(20);
    return echo_forward(ctx, self, in, out);
}

typedef struct eval_thread {
    dx_module *m;
    dx_dataset *ds;
    dx_eval_result *r;
    int rc;
} eval_thread;

static void *run_eval(void *arg)
{
    eval_thread *t = arg;
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    t->rc = dx_evaluate(t->m, t->ds, &o, &t->r, NULL);
    return NULL;
}

Test(evaluate, cancellation_stops_cleanly_and_reports_what_finished)
{
    eval_thread t = {
        .m = dx_module_new("Slow", slow_forward, NULL, NULL, NULL),
        .ds = dataset(400, NULL),
    };
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_eval, &t), 0);
    host_sleep_ms(200);
    dx_evaluate_cancel_all();
    pthread_join(th, NULL);
    cr_assert_eq(t.rc, DX_OK);
    cr_assert(t.r->cancelled);
    cr_assert_gt(t.r->n_done, 0);
    cr_assert_lt(t.r->n_done, 400);
    size_t done = 0;
    for (size_t i = 0; i < 400; i++)
        done += t.r->rows[i].done;
    cr_assert_eq(done, t.r->n_done);
    cr_assert_float_eq(t.r->score, 100.0, 1e-9, "only finished examples count");
    dx_eval_result_free(t.r);
    dx_dataset_free(t.ds);
    dx_module_free(t.m);
}

/* Examples that hang far longer than any test: while they run, nothing
 * but a cancellation can give the coordinator news. */
static atomic_int hanging_started;

static int hanging_forward(dx_ctx *ctx, const dx_module *self,
                           const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)self;
    (void)in;
    (void)out;
    atomic_fetch_add(&hanging_started, 1);
    dx_sleep(600000);
    return DX_ETIMEDOUT;
}

static const dx_eval_opts hanging_opts = {
    .concurrency = 4,
    .example_timeout_ms = 600000,
    .progress = DX_EVAL_PROGRESS_OFF,
};

static void *run_hanging_eval(void *arg)
{
    eval_thread *t = arg;
    t->rc = dx_evaluate(t->m, t->ds, &hanging_opts, &t->r, NULL);
    return NULL;
}

static void wait_hanging_started(int n)
{
    for (int i = 0; i < 20000 && atomic_load(&hanging_started) < n; i++)
        host_sleep_ms(1);
    cr_assert_geq(atomic_load(&hanging_started), n, "the examples started");
}

/* The bound is not a performance figure: without a wake-up the evaluation
 * would sit until its examples' 600 s deadline. */
static bool joined_within(pthread_t th, int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    return pthread_timedjoin_np(th, NULL, &ts) == 0;
}

static void assert_cancelled_with_nothing_done(eval_thread *t)
{
    cr_assert_eq(t->rc, DX_OK);
    cr_assert(t->r->cancelled);
    cr_assert_eq(t->r->n_done, 0);
    cr_assert_eq(t->r->n_errors, 0, "a cancelled example is not an error");
    for (size_t i = 0; i < t->r->n; i++)
        cr_assert(!t->r->rows[i].done);
    dx_eval_result_free(t->r);
    dx_dataset_free(t->ds);
    dx_module_free(t->m);
}

/* An evaluation of 8 hanging examples, 4 in flight, on a thread of its
 * own; returns once those 4 run. */
static pthread_t start_hanging_eval(eval_thread *t)
{
    atomic_store(&hanging_started, 0);
    t->m = dx_module_new("Hang", hanging_forward, NULL, NULL, NULL);
    t->ds = dataset(8, NULL);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_hanging_eval, t), 0);
    wait_hanging_started(4);
    return th;
}

Test(evaluate, a_cancellation_wakes_an_evaluation_whose_examples_all_hang)
{
    eval_thread t = {0};
    pthread_t th = start_hanging_eval(&t);
    dx_evaluate_cancel_all();
    cr_assert(joined_within(th, 30), "the cancellation was not noticed");
    assert_cancelled_with_nothing_done(&t);
}

static void cancel_on_sigint(int sig)
{
    (void)sig;
    dx_evaluate_cancel_all();
}

Test(evaluate, sigint_handled_by_cancel_all_stops_a_hanging_evaluation)
{
    struct sigaction sa = {.sa_handler = cancel_on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    cr_assert_eq(sigaction(SIGINT, &sa, &old), 0);
    eval_thread t = {0};
    pthread_t th = start_hanging_eval(&t);
    /* Delivered to this thread: the handler runs here, as it would on
     * whichever thread a terminal's Ctrl-C lands. */
    errno = EDOM;
    cr_assert_eq(pthread_kill(pthread_self(), SIGINT), 0);
    cr_assert_eq(errno, EDOM, "the handler left errno as it was");
    bool joined = joined_within(th, 30);
    sigaction(SIGINT, &old, NULL);
    cr_assert(joined, "the SIGINT was not noticed");
    assert_cancelled_with_nothing_done(&t);
}

/* dx_evaluate called from a process coordinates from that process: the
 * process's own messages, a DOWN of its own monitor included, are still
 * there afterwards, and nothing of the evaluation's is left behind. */
#define TAG_MINE 4242

typedef struct in_proc {
    eval_thread t;
    bool mine_kept, down_kept, left_over;
} in_proc;

/* pid ended, or ends within ms. It may have ended before the wait began
 * (dx_wait_exit says DX_ENOPROC then): the test thread can be descheduled
 * between its send and its wait. */
static bool ended_within(dx_pid pid, int64_t ms)
{
    int rc = dx_wait_exit(pid, ms, NULL);
    return rc == DX_OK || rc == DX_ENOPROC;
}

static void ends_at_once(void *arg)
{
    (void)arg;
}

static void evaluating_proc(void *arg)
{
    in_proc *ip = arg;
    dx_send_tag(dx_self(), TAG_MINE);
    dx_pid other;
    dx_ref mon;
    dx_spawn_opts so = {.monitor = true};
    dx_spawn_opt(ends_at_once, NULL, &so, &other, &mon);
    ip->t.rc = dx_evaluate(ip->t.m, ip->t.ds, &hanging_opts, &ip->t.r, NULL);
    dx_msg *m = NULL;
    ip->mine_kept = dx_receive_tag(TAG_MINE, 0, &m) == DX_OK;
    dx_msg_free(m);
    m = NULL;
    dx_match down = {
        .fields = DX_MATCH_TAG | DX_MATCH_REF, .tag = DX_TAG_DOWN, .ref = mon};
    ip->down_kept = dx_receive(&down, 0, &m) == DX_OK;
    dx_msg_free(m);
    m = NULL;
    ip->left_over = dx_receive_any(0, &m) == DX_OK;
    dx_msg_free(m);
}

/* evaluating_proc over 8 hanging examples, 4 in flight; returns its pid
 * once those 4 run. */
static dx_pid start_evaluating_proc(in_proc *ip)
{
    atomic_store(&hanging_started, 0);
    ip->t.m = dx_module_new("Hang", hanging_forward, NULL, NULL, NULL);
    ip->t.ds = dataset(8, NULL);
    dx_pid pid;
    cr_assert_eq(dx_spawn(evaluating_proc, ip, &pid), DX_OK);
    wait_hanging_started(4);
    return pid;
}

Test(evaluate, an_evaluation_in_a_process_leaves_its_messages_alone)
{
    in_proc ip = {0};
    dx_pid pid = start_evaluating_proc(&ip);
    /* Twice: the second wake-up may still be on its way when the
     * evaluation ends, and must not be left in the mailbox. */
    dx_evaluate_cancel_all();
    dx_evaluate_cancel_all();
    cr_assert(ended_within(pid, 30000), "the evaluating process did not end");
    cr_assert(ip.mine_kept, "the process's own message was taken");
    cr_assert(ip.down_kept, "the DOWN of the process's own monitor was taken");
    cr_assert(!ip.left_over, "the evaluation left a message behind");
    assert_cancelled_with_nothing_done(&ip.t);
}

Test(evaluate, a_stop_message_ends_only_the_evaluation_in_that_process)
{
    /* DX__TAG_EVAL_STOP (eval_int.h): how a distributed worker drops a
     * shard. Stops that evaluation like a cancellation, and no other. */
    eval_thread other = {0};
    pthread_t th = start_hanging_eval(&other);
    in_proc ip = {0};
    atomic_store(&hanging_started, 0);
    ip.t.m = dx_module_new("Hang", hanging_forward, NULL, NULL, NULL);
    ip.t.ds = dataset(8, NULL);
    dx_pid pid;
    cr_assert_eq(dx_spawn(evaluating_proc, &ip, &pid), DX_OK);
    wait_hanging_started(4);
    cr_assert_eq(dx_send_tag(pid, DX__TAG_EVAL_STOP), DX_OK);
    cr_assert(ended_within(pid, 30000), "the evaluating process did not end");
    cr_assert(!ip.left_over, "the stop was left in the mailbox");
    assert_cancelled_with_nothing_done(&ip.t);
    /* The evaluation on the other thread runs on. */
    cr_assert(!joined_within(th, 1), "the other evaluation stopped too");
    dx_evaluate_cancel_all();
    cr_assert(joined_within(th, 30));
    assert_cancelled_with_nothing_done(&other);
}

/* The cancellation relay's threads: how many run, and the id of one of
 * them in *id (0 when none runs). */
static int eval_cancel_scan(long *id)
{
    int n = 0;
    *id = 0;
    DIR *d = opendir("/proc/self/task");
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        char path[300], comm[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(comm, sizeof comm, f) &&
            strncmp(comm, "dx-eval-cancel", 14) == 0) {
            n++;
            *id = strtol(e->d_name, NULL, 10);
        }
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    return n;
}

static int eval_cancel_threads(void)
{
    long id;
    return eval_cancel_scan(&id);
}

/* The process that called dx_evaluate is killed while its examples hang
 * (a supervisor stopping it; an outer example's deadline, for a nested
 * evaluation): its examples end with it, what the evaluation held is
 * freed (the sanitizer builds check for leaks) and the cancellation relay
 * stops, as no evaluation runs any more. Example processes are counted
 * by their label: counting every process would also count the fixture's,
 * which may still be ending when a test starts. */
Test(evaluate, a_killed_coordinator_takes_its_examples_with_it)
{
    in_proc ip = {0};
    dx_pid pid = start_evaluating_proc(&ip);
    cr_assert_eq(processes_labeled("dspex.evaluate.example"), 4);
    cr_assert_eq(eval_cancel_threads(), 1, "the relay runs");
    cr_assert_eq(dx_kill(pid), DX_OK);
    size_t now = 0;
    for (int i = 0;
         i < 30000 && (now = processes_labeled("dspex.evaluate.example")) > 0;
         i++)
        host_sleep_ms(1);
    cr_assert_eq(now, 0, "%zu example processes left behind", now);
    dx_proc_info info;
    cr_assert_eq(dx_process_info(pid, &info), DX_ENOPROC);
    /* Joined by now; the kernel may list an exited thread a moment longer. */
    int relays = 1;
    for (int i = 0; i < 5000 && (relays = eval_cancel_threads()) > 0; i++)
        host_sleep_ms(1);
    cr_assert_eq(relays, 0, "the relay still runs");
    cr_assert_null(ip.t.r);
    dx_dataset_free(ip.t.ds);
    dx_module_free(ip.t.m);
}

/* on_row sees the dataset's own example in the row (the row's copy is made
 * when the run ends). If the process that evaluates is killed inside
 * on_row, what the evaluation frees must not include that example: the
 * dataset stays whole (the sanitizer and valgrind builds would also report
 * the double free when it is freed). */
#define TAG_NEVER_SENT 4343
static atomic_int in_on_row;

static void on_row_waits(const dx_eval_row *row, void *ud)
{
    (void)ud;
    (void)row;
    atomic_store(&in_on_row, 1);
    dx_msg *m = NULL;
    (void)dx_receive_tag(TAG_NEVER_SENT, 60000, &m); /* killed in here */
    dx_msg_free(m);
}

static void evaluating_with_on_row(void *arg)
{
    eval_thread *t = arg;
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 1,
        .progress = DX_EVAL_PROGRESS_OFF,
        .on_row = on_row_waits,
    };
    t->rc = dx_evaluate(t->m, t->ds, &o, &t->r, NULL);
}

Test(evaluate, a_coordinator_killed_inside_on_row_leaves_the_dataset_whole)
{
    eval_thread t = {
        .m = dx_module_new("Echo", counted_echo_forward, NULL, NULL, NULL),
        .ds = dataset(3, NULL),
    };
    atomic_store(&in_on_row, 0);
    dx_pid pid;
    cr_assert_eq(dx_spawn(evaluating_with_on_row, &t, &pid), DX_OK);
    for (int i = 0; i < 30000 && !atomic_load(&in_on_row); i++)
        host_sleep_ms(1);
    cr_assert(atomic_load(&in_on_row), "on_row was not called");
    cr_assert_eq(dx_kill(pid), DX_OK);
    cr_assert(ended_within(pid, 30000));
    cr_expect_null(t.r);
    for (size_t i = 0; i < 3; i++) {
        char q[16];
        snprintf(q, sizeof q, "q%zu", i);
        cr_expect_str_eq(dx_example_get_str(t.ds->items[i], "question", ""), q);
        cr_expect_str_eq(dx_example_get_str(t.ds->items[i], "answer", ""), q);
    }
    dx_dataset_free(t.ds);
    dx_module_free(t.m);
}

/* Evaluations that follow one another (an optimizer's) share one
 * cancellation relay: it outlives the last for a moment instead of being
 * started and joined by every one, and then ends by itself. */
Test(evaluate, evaluations_that_follow_one_another_share_one_relay_thread)
{
    dx_module *m = dx_module_new("Echo", echo_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(10, NULL);
    dx_eval_opts o = {.metric = {.kind = DX_METRIC_EXACT_MATCH},
                      .progress = DX_EVAL_PROGRESS_OFF};
    long relay = 0;
    for (int run = 0; run < 3; run++) {
        dx_eval_result *r = NULL;
        cr_assert_eq(dx_evaluate(m, ds, &o, &r, NULL), DX_OK);
        cr_assert_float_eq(r->score, 100.0, 1e-9);
        dx_eval_result_free(r);
        long now;
        (void)eval_cancel_scan(&now);
        cr_assert_neq(now, 0, "run %d: no relay after it", run);
        if (run > 0)
            cr_assert_eq(now, relay, "run %d started a relay of its own", run);
        relay = now;
    }
    /* It ends about a second after the last evaluation. */
    int relays = 1;
    for (int i = 0; i < 10000 && (relays = eval_cancel_threads()) > 0; i++)
        host_sleep_ms(1);
    cr_assert_eq(relays, 0, "the relay still runs");
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* ---- a keep (eval_int.h) ---------------------------------------------- */

/* Stands for data the evaluating process owns and frees when it ends (a
 * tie), as a distributed worker's shard task does: one reference for the
 * process, one for each example holding it. */
static struct {
    atomic_int refs, holds, releases;
    atomic_int releases_when_freed; /* -1 until freed */
} kept;

static void kept_reset(void)
{
    atomic_store(&kept.refs, 1);
    atomic_store(&kept.holds, 0);
    atomic_store(&kept.releases, 0);
    atomic_store(&kept.releases_when_freed, -1);
}

static void kept_unref(void *ud)
{
    (void)ud;
    if (atomic_fetch_sub(&kept.refs, 1) == 1)
        atomic_store(&kept.releases_when_freed, atomic_load(&kept.releases));
}

static void kept_hold(void *ud)
{
    (void)ud;
    atomic_fetch_add(&kept.refs, 1);
    atomic_fetch_add(&kept.holds, 1);
}

static void kept_release(void *ud)
{
    atomic_fetch_add(&kept.releases, 1);
    kept_unref(ud);
}

static void evaluating_with_keep(void *arg)
{
    eval_thread *t = arg;
    dx_ptie *tie = dx_ptie_new(&kept, kept_unref);
    dx__eval_keep keep = {
        .hold = kept_hold, .release = kept_release, .ud = &kept};
    dx_eval_opts o = hanging_opts;
    o.example_timeout_ms = 2000;
    t->rc = dx__evaluate_kept(t->m, t->ds, &o, &keep, &t->r, NULL);
    dx_ptie_cut(tie);
    kept_unref(&kept);
}

static int kept_released_within(int ms)
{
    for (int i = 0; i < ms && atomic_load(&kept.releases_when_freed) < 0; i++)
        host_sleep_ms(1);
    return atomic_load(&kept.releases_when_freed);
}

Test(evaluate, a_keep_outlives_the_examples_of_a_killed_evaluation)
{
    kept_reset();
    atomic_store(&hanging_started, 0);
    eval_thread t = {
        .m = dx_module_new("Hang", hanging_forward, NULL, NULL, NULL),
        .ds = dataset(8, NULL)};
    dx_pid pid;
    cr_assert_eq(dx_spawn(evaluating_with_keep, &t, &pid), DX_OK);
    wait_hanging_started(4);
    cr_assert_eq(atomic_load(&kept.holds), 4, "each example holds it");
    cr_assert_eq(dx_kill(pid), DX_OK);
    /* Freed only by the last example's release: the process's own
     * reference went first, at its kill. */
    cr_assert_eq(kept_released_within(30000), 4, "freed after %d of 4 releases",
                 kept.releases_when_freed);
    cr_assert_eq(atomic_load(&kept.holds), atomic_load(&kept.releases));
    cr_assert_eq(processes_labeled("dspex.evaluate.example"), 0);
    dx_dataset_free(t.ds);
    dx_module_free(t.m);
}

Test(evaluate, a_keep_is_released_by_every_example_of_a_finished_evaluation)
{
    kept_reset();
    atomic_store(&hanging_started, 0);
    eval_thread t = {.m = dx_module_new("Echo", echo_forward, NULL, NULL, NULL),
                     .ds = dataset(8, NULL)};
    dx_pid pid;
    cr_assert_eq(dx_spawn(evaluating_with_keep, &t, &pid), DX_OK);
    cr_assert_eq(kept_released_within(30000), 8);
    cr_assert_eq(atomic_load(&kept.holds), 8);
    cr_assert_eq(t.rc, DX_OK);
    cr_assert_eq(t.r->n_done, 8);
    dx_eval_result_free(t.r);
    dx_dataset_free(t.ds);
    dx_module_free(t.m);
}

/* A program that calls a blocking library function (here nanosleep) through
 * dx_run_blocking: its example is stopped at its deadline like any other,
 * while the call finishes on its own thread, and the rest of the
 * evaluation does not wait for it. */
static void *nap_3_s(void *arg)
{
    (void)arg;
    struct timespec ts = {3, 0};
    while (nanosleep(&ts, &ts) != 0)
        ;
    return NULL;
}

/* Answers each question with itself, after running fn on a blocking
 * thread for the one named `which`. */
static int echo_after_blocking(const dx_example *in, const char *which,
                               dx_blocking_fn fn, dx_prediction **out)
{
    const char *q = dx_example_get_str(in, "question", "");
    if (strcmp(q, which) == 0) {
        void *unused = NULL;
        dx_run_blocking(fn, NULL, NULL, NULL, DX_INFINITY, &unused);
    }
    *out = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(*out), "answer", q);
    return DX_OK;
}

static int blocking_forward(dx_ctx *ctx, const dx_module *self,
                            const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)ctx;
    return echo_after_blocking(in, "q3", nap_3_s, out);
}

Test(evaluate, an_example_in_a_blocking_call_is_stopped_at_its_deadline)
{
    dx_module *m =
        dx_module_new("Blocking", blocking_forward, NULL, NULL, NULL);
    dx_dataset *ds = dataset(40, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 4,
        .example_timeout_ms = 200,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_expect_eq(r->n_done, 40);
    cr_expect_eq(r->n_errors, 1);
    cr_expect_eq(r->rows[3].error, DX_ETIMEDOUT, "%s",
                 dx_err_name(r->rows[3].error));
    cr_expect_lt(r->wall_s, 2.5, "the evaluation waited for the call");
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* A program whose blocking call faults: that example is recorded as
 * crashed with the fault, and no other example is touched. */
static void *fault_on_blocking_thread(void *arg)
{
    (void)arg;
    *(volatile int *)crash_address = 1;
    return NULL;
}

static int faulting_blocking_forward(dx_ctx *ctx, const dx_module *self,
                                     const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)ctx;
    return echo_after_blocking(in, "q5", fault_on_blocking_thread, out);
}

Test(evaluate, an_example_whose_blocking_call_faults_fails_alone)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("fault isolation is off under ThreadSanitizer");
    dx_module *m = dx_module_new("FaultingBlocking", faulting_blocking_forward,
                                 NULL, NULL, NULL);
    dx_dataset *ds = dataset(20, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_expect_eq(r->n_done, 20);
    cr_expect_eq(r->n_errors, 1);
    cr_expect_eq(r->rows[5].error, DX_EDOWN, "%s",
                 dx_err_name(r->rows[5].error));
    cr_expect(r->rows[5].error_msg && strstr(r->rows[5].error_msg, "segv"),
              "%s", r->rows[5].error_msg ? r->rows[5].error_msg : "(none)");
    cr_expect_float_eq(r->score, 95.0, 1e-9);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
}

/* ---- examples that hold their scheduler --------------------------------- */

/* Run on a runtime of one scheduler, without the LM fixture: the
 * coordinator then shares its scheduler with every example, and an example
 * that never calls the runtime again keeps it from running at all. */
TestSuite(evaluate_held, .timeout = 120);

static volatile unsigned long held_turns;
static atomic_int loop_on_q3; /* else q3 sleeps in sleep() */

static int hold_scheduler_forward(dx_ctx *ctx, const dx_module *self,
                                  const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)ctx;
    const char *q = dx_example_get_str(in, "question", "");
    if (strcmp(q, "q3") == 0 && atomic_load(&loop_on_q3))
        for (;;)
            held_turns++; /* an endless pure-C loop */
    if (strcmp(q, "q3") == 0 || strcmp(q, "q7") == 0)
        for (;;)
            sleep(1); /* a sleep in program code, forever */
    *out = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(*out), "answer", q);
    return DX_OK;
}

/* Evaluates 20 examples, conc in flight, on one scheduler; the rows listed
 * in hung (ending with SIZE_MAX) must time out and every other score 1. */
static void expect_only_hung_rows_fail(size_t conc, const size_t *hung)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("fault isolation is off under ThreadSanitizer");
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 1}), DX_OK);
    dx_module *m = dx_module_new("HoldScheduler", hold_scheduler_forward, NULL,
                                 NULL, NULL);
    dx_dataset *ds = dataset(20, NULL);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_EXACT_MATCH},
        .concurrency = conc,
        .example_timeout_ms = 300,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(r->n_done, 20);
    size_t n_hung = 0;
    for (size_t i = 0; i < 20; i++) {
        bool is_hung = false;
        for (const size_t *h = hung; *h != SIZE_MAX; h++)
            is_hung = is_hung || *h == i;
        n_hung += is_hung;
        if (is_hung) {
            cr_expect_eq(r->rows[i].error, DX_ETIMEDOUT, "row %zu: %s", i,
                         dx_err_name(r->rows[i].error));
            cr_expect_eq(r->rows[i].score, 0.0);
        } else {
            cr_expect_eq(r->rows[i].error, DX_OK, "row %zu: %s %s", i,
                         dx_err_name(r->rows[i].error),
                         r->rows[i].error_msg ? r->rows[i].error_msg : "");
            cr_expect_eq(r->rows[i].score, 1.0, "row %zu", i);
        }
    }
    cr_expect_eq(r->n_errors, n_hung);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(m);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
}

/* One in flight: the example in the loop holds the coordinator's scheduler
 * until the runtime's deadline for it stops it; the coordinator then
 * records the timeout and goes on. */
Test(evaluate_held, an_endless_loop_in_an_example_times_out_alone)
{
    atomic_store(&loop_on_q3, 1);
    expect_only_hung_rows_fail(1, (const size_t[]){3, 7, SIZE_MAX});
}

/* sleep() in program code parks only its example, so the examples in flight
 * beside it on the same scheduler finish in time. */
Test(evaluate_held, examples_asleep_in_sleep_time_out_alone)
{
    atomic_store(&loop_on_q3, 0);
    expect_only_hung_rows_fail(8, (const size_t[]){3, 7, SIZE_MAX});
}

typedef struct held_call {
    int rc;
    atomic_int done;
} held_call;

static void call_looping_module(void *arg)
{
    held_call *c = arg;
    atomic_store(&loop_on_q3, 1);
    dx_module *m = dx_module_new("HoldScheduler", hold_scheduler_forward, NULL,
                                 NULL, NULL);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", "q3");
    dx_call_opts o = {.lm = DX_NOPID, .timeout_ms = 200};
    dx_prediction *out = NULL;
    dx_diag d = {0};
    c->rc = dx_module_call(m, in, &o, &out, NULL, &d);
    dx_prediction_free(out);
    dx_example_free(in);
    dx_module_free(m);
    atomic_store(&c->done, 1);
}

/* A module call made from a process whose scheduler the program then holds
 * in an endless loop: the runtime's deadline for the call's process stops
 * it, and the call returns DX_ETIMEDOUT. */
Test(evaluate_held, a_module_call_whose_program_loops_times_out)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("fault isolation is off under ThreadSanitizer");
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 1}), DX_OK);
    held_call c = {.rc = -1};
    cr_assert_eq(dx_spawn(call_looping_module, &c, NULL), DX_OK);
    for (int i = 0; i < 2000 && !atomic_load(&c.done); i++)
        usleep(5000);
    cr_assert(atomic_load(&c.done), "the call never returned");
    cr_expect_eq(c.rc, DX_ETIMEDOUT, "%s", dx_err_name(c.rc));
    cr_assert_eq(dx_runtime_stop(), DX_OK);
}
