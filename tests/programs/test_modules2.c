/*
 * test_modules2.c — BestOfN, Refine, MultiChainComparison, Parallel and
 * KNNFewShot against the local LM server: BestOfN stops at the threshold
 * or keeps the best reward, each attempt a fresh sample; Refine feeds the
 * OfferFeedback advice to the next attempt as `hint_`; the exact
 * MultiChainComparison fields and attempt texts; Parallel keeps input
 * order under concurrency and records a crashing item's error;
 * KNN picks the nearest train examples and KNNFewShot demos them.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/modules.h"
#include "dspex/program.h"
#include "lm_fixture.h"

TestSuite(modules2, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 60);

static void push_answer(const char *a)
{
    char buf[256];
    snprintf(buf, sizeof buf, "[[ ## answer ## ]]\n%s\n\n[[ ## completed ## ]]",
             a);
    cr_assert_eq(dx_lmserver_push_reply(srv, buf), DX_OK);
}

/* Reward: the number written as the answer ("0.9" → 0.9); "fail" fails. */
static int numeric_reward(const dx_example *in, const dx_prediction *p,
                          void *ud, double *r)
{
    (void)in;
    (void)ud;
    const char *a = dx_prediction_get_str(p, "answer", "");
    if (strcmp(a, "fail") == 0)
        return DX_EINVAL;
    *r = strtod(a, NULL);
    return DX_OK;
}

Test(modules2, best_of_n_stops_at_the_first_attempt_reaching_the_threshold)
{
    dx_best_of_n_opts o = {.n = 3, .reward = numeric_reward, .threshold = 1.0};
    dx_module *m = dx_best_of_n_new(predict("question -> answer"), &o);
    cr_assert_not_null(m);
    push_answer("0.5");
    push_answer("1.0");
    push_answer("0.7");
    uint64_t before = upstream_requests();
    dx_example *in = question("Q?");
    dx_prediction *p = NULL;
    dx_trace tr = {0};
    dx_diag d = {0};
    dx_call_opts co = {.trace = true};
    int rc = dx_module_call(m, in, &co, &p, &tr, &d);
    cr_assert_eq(rc, DX_OK, "%s", d.msg);
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "1.0");
    /* The same prompt twice went upstream: each attempt is a new sample
     * (its own rollout id), not a cache hit. */
    cr_assert_eq(upstream_requests() - before, 2);
    /* Only the returned attempt's step, under its real path. */
    cr_assert_eq(tr.n, 1);
    cr_assert_str_eq(tr.steps[0].path, "module");
    cr_assert_str_eq(dx_example_get_str(tr.steps[0].outputs, "answer", ""),
                     "1.0");
    cr_assert_eq(dx_prediction_usage(p)->calls, 2);
    dx_trace_free(&tr);
    dx_prediction_free(p);
    dx_example_free(in);
    dx_module_free(m);
}

Test(modules2, best_of_n_keeps_the_highest_reward_below_the_threshold)
{
    dx_best_of_n_opts o = {.n = 3, .reward = numeric_reward, .threshold = 5};
    dx_module *m = dx_best_of_n_new(predict("question -> answer"), &o);
    push_answer("0.2");
    push_answer("0.9");
    push_answer("0.5");
    dx_example *in = question("Q?");
    dx_prediction *p = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "0.9");
    cr_assert_eq(dx_prediction_usage(p)->calls, 3);
    dx_prediction_free(p);
    dx_example_free(in);
    dx_module_free(m);
}

Test(modules2, best_of_n_failed_attempts_follow_fail_count)
{
    /* fail_count 1: attempt 0 fails (allowed), attempt 1 fails → 1 > 0
     * ends the call with the reward's error. */
    dx_best_of_n_opts o = {
        .n = 3, .reward = numeric_reward, .threshold = 1, .fail_count = 1};
    dx_module *m = dx_best_of_n_new(predict("question -> answer"), &o);
    push_answer("fail");
    push_answer("fail");
    uint64_t before = upstream_requests();
    dx_example *in = question("Q?");
    dx_prediction *p = NULL;
    dx_diag d = {0};
    int rc = dx_module_call(m, in, NULL, &p, NULL, &d);
    cr_assert_eq(rc, DX_EINVAL, "%s", dx_err_name(rc));
    cr_assert_null(p);
    cr_assert(strstr(d.msg, "reward function failed"), "%s", d.msg);
    cr_assert_eq(upstream_requests() - before, 2);

    /* A failed attempt followed by a good one answers. (Another question:
     * the same one would be answered from the cache, attempt by attempt.) */
    push_answer("fail");
    push_answer("0.3");
    push_answer("0.1");
    dx_example_free(in);
    in = question("Q2?");
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "0.3");
    dx_prediction_free(p);
    dx_example_free(in);
    dx_module_free(m);
    cr_assert_null(dx_best_of_n_new(
        predict("q -> a"),
        &(dx_best_of_n_opts){.n = 0, .reward = numeric_reward}));
}

Test(modules2, refine_gives_the_next_attempt_the_advice_as_hint)
{
    dx_best_of_n_opts o = {.n = 3, .reward = numeric_reward, .threshold = 1.0};
    dx_module *m = dx_refine_new(predict("question -> answer"), &o);
    cr_assert_not_null(m);
    push_answer("0.1");
    cr_assert_eq(dx_lmserver_push_reply(
                     srv, "[[ ## discussion ## ]]\nThe module guessed.\n\n"
                          "[[ ## advice ## ]]\n{\"self\": \"Answer 1.0.\"}\n\n"
                          "[[ ## completed ## ]]"),
                 DX_OK);
    push_answer("1.0");
    uint64_t before = upstream_requests();
    dx_example *in = question("Q?");
    dx_prediction *p = NULL;
    dx_trace tr = {0};
    dx_diag d = {0};
    dx_call_opts co = {.trace = true};
    cr_assert_eq(dx_module_call(m, in, &co, &p, &tr, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "1.0");
    cr_assert_eq(upstream_requests() - before, 3, "attempt, feedback, attempt");
    /* The feedback call is not a step of the program. */
    cr_assert_eq(tr.n, 1);
    cr_assert_str_eq(tr.steps[0].path, "module");
    cr_assert_str_eq(dx_example_get_str(tr.steps[0].inputs, "hint_", ""),
                     "Answer 1.0.");
    const dx_signature *s = tr.steps[0].signature;
    cr_assert_eq(dx_signature_n_inputs(s), 2);
    const dx_field *h = dx_signature_input(s, 1);
    cr_assert_str_eq(h->name, "hint_");
    cr_assert_str_eq(h->desc, "A hint to the module from an earlier run");
    /* The caller's module is untouched. */
    cr_assert_eq(dx_signature_n_inputs(
                     dx_predict_signature(dx_module_child(m, "module"))),
                 1);
    dx_trace_free(&tr);
    dx_prediction_free(p);
    dx_example_free(in);
    dx_module_free(m);
}

Test(modules2, refine_inspect_modules_is_dspy_text)
{
    dx_module *p = predict("question -> answer");
    char *t = NULL;
    cr_assert_eq(dx_refine_inspect_modules(p, &t), DX_OK);
    const char *sep = "------------------------------------------------------"
                      "--------------------------";
    char want[1024];
    snprintf(want, sizeof want,
             "%s\nModule self\n\tInput Fields:\n\t\t1. `question` (str):\n"
             "\tOutput Fields:\n\t\t1. `answer` (str):\n"
             "\tOriginal Instructions: \n\t\tGiven the fields `question`, "
             "produce the fields `answer`.\n%s",
             sep, sep);
    cr_assert_eq(strlen(sep), 80);
    cr_assert_str_eq(t, want);
    dx_free(t);
    dx_module_free(p);
}

Test(modules2, multi_chain_comparison_has_dspy_fields_and_attempt_texts)
{
    dx_signature *s = sig("question -> answer");
    dx_module *m = dx_multi_chain_comparison_new(s, 3, NULL);
    dx_signature_unref(s);
    cr_assert_not_null(m);
    dx_module *inner = dx_module_child(m, "predict");
    const dx_signature *ps = dx_predict_signature(inner);
    cr_assert_eq(dx_signature_n_inputs(ps), 4);
    cr_assert_str_eq(dx_signature_input(ps, 0)->name, "question");
    for (int i = 1; i <= 3; i++) {
        const dx_field *f = dx_signature_input(ps, (size_t)i);
        char name[32], prefix[32];
        snprintf(name, sizeof name, "reasoning_attempt_%d", i);
        snprintf(prefix, sizeof prefix, "Student Attempt #%d:", i);
        cr_assert_str_eq(f->name, name);
        cr_assert_str_eq(f->prefix, prefix);
        cr_assert_str_eq(f->desc, "${reasoning attempt}");
    }
    cr_assert_str_eq(dx_signature_output(ps, 0)->name, "rationale");
    cr_assert_str_eq(
        dx_signature_output(ps, 0)->prefix,
        "Accurate Reasoning: Thank you everyone. Let's now holistically");
    cr_assert_str_eq(dx_signature_output(ps, 0)->desc,
                     "${corrected reasoning}");
    cr_assert_str_eq(dx_signature_output(ps, 1)->name, "answer");
    cr_assert(dx_predict_get_opts(inner)->has_temperature);
    cr_assert_eq(dx_predict_get_opts(inner)->temperature, 0.7);

    dx_example *in = question("What is the color of the sky?");
    cr_assert_eq(
        dx_example_set_json(
            in, "completions",
            "[{\"rationale\": \"  I recall clear days.\\nmore\", \"answer\": "
            "\"blue\"}, {\"reasoning\": \"common knowledge\", \"answer\": "
            "\"green\\nx\"}, {\"rationale\": \"media\", \"answer\": 7}]",
            NULL),
        DX_OK);
    cr_assert_eq(
        dx_lmserver_push_reply(srv, "[[ ## rationale ## ]]\nmy rationale\n\n"
                                    "[[ ## answer ## ]]\nblue\n\n"
                                    "[[ ## completed ## ]]"),
        DX_OK);
    dx_prediction *p = NULL;
    dx_trace tr = {0};
    dx_diag d = {0};
    dx_call_opts co = {.trace = true};
    cr_assert_eq(dx_module_call(m, in, &co, &p, &tr, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(dx_prediction_get_str(p, "rationale", ""), "my rationale");
    cr_assert_str_eq(dx_prediction_get_str(p, "answer", ""), "blue");
    cr_assert_eq(tr.n, 1);
    const dx_example *ti = tr.steps[0].inputs;
    cr_assert_str_eq(dx_example_get_str(ti, "reasoning_attempt_1", ""),
                     "«I'm trying to I recall clear days. I'm not sure but my "
                     "prediction is blue»");
    cr_assert_str_eq(dx_example_get_str(ti, "reasoning_attempt_2", ""),
                     "«I'm trying to common knowledge I'm not sure but my "
                     "prediction is green»");
    cr_assert_str_eq(dx_example_get_str(ti, "reasoning_attempt_3", ""),
                     "«I'm trying to media I'm not sure but my prediction is "
                     "7»");
    cr_assert(!dx_example_has(ti, "completions"));
    /* The user message shows the attempts under their markers. */
    char *user = NULL;
    cr_assert_eq(dx_adapter_user_content(DX_ADAPTER_CHAT, tr.steps[0].signature,
                                         ti, NULL, true, &user),
                 DX_OK);
    cr_assert(strstr(user, "[[ ## reasoning_attempt_2 ## ]]\n«I'm trying to "
                           "common knowledge I'm not sure but my prediction "
                           "is green»\n\n[[ ## reasoning_attempt_3 ## ]]"),
              "%s", user);
    dx_free(user);
    dx_trace_free(&tr);
    dx_prediction_free(p);

    /* Two completions for M = 3: DSPy's assertion. */
    cr_assert_eq(dx_example_set_json(in, "completions",
                                     "[{\"rationale\": \"a\", \"answer\": "
                                     "\"b\"}, {\"rationale\": \"a\", "
                                     "\"answer\": \"b\"}]",
                                     NULL),
                 DX_OK);
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "The number of attempts (2) doesn't match the "
                            "expected number M (3)"),
              "%s", d.msg);
    dx_example_free(in);
    dx_module_free(m);
}

/* ---- Parallel ---------------------------------------------------------- */

static atomic_int running, most_running;

/* Sleeps longer for earlier items so they finish out of order; item 3
 * crashes. */
static int slow_echo(dx_ctx *ctx, const dx_module *self,
                     const dx_example *inputs, dx_prediction **out)
{
    (void)ctx;
    (void)self;
    int i = (int)dx_example_get_num(inputs, "i", -1);
    int now = atomic_fetch_add(&running, 1) + 1;
    int seen = atomic_load(&most_running);
    while (now > seen &&
           !atomic_compare_exchange_weak(&most_running, &seen, now))
        ;
    dx_sleep(5 * (12 - i));
    atomic_fetch_sub(&running, 1);
    if (i == 3)
        crash_now();
    *out = dx_prediction_new();
    dx_example_set_int(dx_prediction_fields_mut(*out), "twice", 2 * i);
    return DX_OK;
}

Test(modules2, parallel_keeps_input_order_and_records_a_crash)
{
    dx_module *m = dx_module_new("SlowEcho", slow_echo, NULL, NULL, NULL);
    dx_example *ins[12];
    for (int i = 0; i < 12; i++) {
        ins[i] = dx_example_new();
        dx_example_set_int(ins[i], "i", i);
    }
    atomic_store(&running, 0);
    atomic_store(&most_running, 0);
    dx_parallel_opts o = {.num_threads = 4, .max_errors = 5};
    dx_parallel_result *r = NULL;
    dx_diag d = {0};
    int rc = dx_parallel_run(m, (const dx_example *const *)ins, 12, &o, &r, &d);
    cr_assert_eq(rc, DX_OK, "%s", d.msg);
    cr_assert_eq(r->n, 12);
    cr_assert_eq(r->n_errors, 1);
    for (int i = 0; i < 12; i++) {
        cr_assert(r->items[i].done);
        if (i == 3) {
            cr_assert_eq(r->items[i].error, DX_EDOWN);
            cr_assert_null(r->items[i].pred);
            cr_assert_not_null(r->items[i].error_msg);
            continue;
        }
        cr_assert_eq(r->items[i].error, DX_OK, "%d: %s", i,
                     r->items[i].error_msg);
        cr_assert_eq(dx_example_get_num(dx_prediction_fields(r->items[i].pred),
                                        "twice", -1),
                     2 * i);
    }
    cr_assert_leq(atomic_load(&most_running), 4);
    cr_assert_geq(atomic_load(&most_running), 2, "ran concurrently");
    dx_parallel_result_free(r);

    /* max_errors 1: the crash fails the whole call, as DSPy raises. */
    o.max_errors = 1;
    rc = dx_parallel_run(m, (const dx_example *const *)ins, 12, &o, &r, &d);
    cr_assert_eq(rc, DX_ELIMIT);
    cr_assert(strstr(d.msg, "item 3"), "%s", d.msg);
    cr_assert_not_null(r);
    cr_assert_eq(r->items[3].error, DX_EDOWN);
    dx_parallel_result_free(r);
    for (int i = 0; i < 12; i++)
        dx_example_free(ins[i]);
    dx_module_free(m);
}

/* Items 0 and 1 end at once; the others wait far longer than the test. */
static atomic_int waiting_items;

static int quick_or_waiting(dx_ctx *ctx, const dx_module *self,
                            const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)self;
    if (dx_example_get_num(in, "i", -1) >= 2) {
        atomic_fetch_add(&waiting_items, 1);
        dx_sleep(600000);
    }
    *out = dx_prediction_new();
    return DX_OK;
}

typedef struct parallel_call {
    dx_module *m;
    dx_example *ins[6];
    dx_parallel_result *r;
    dx_diag d;
    int rc;
} parallel_call;

static void *run_parallel(void *arg)
{
    parallel_call *c = arg;
    dx_parallel_opts o = {.num_threads = 6};
    c->rc = dx_parallel_run(c->m, (const dx_example *const *)c->ins, 6, &o,
                            &c->r, &c->d);
    return NULL;
}

/* dx_evaluate_cancel_all stops a Parallel run: DX_ECANCELED, with the items
 * that finished, the others not done, and the count in the message. */
Test(modules2, a_cancelled_parallel_run_says_so_and_keeps_what_finished)
{
    parallel_call c = {.m = dx_module_new("QuickOrWaiting", quick_or_waiting,
                                          NULL, NULL, NULL)};
    for (int i = 0; i < 6; i++) {
        c.ins[i] = dx_example_new();
        dx_example_set_int(c.ins[i], "i", i);
    }
    atomic_store(&waiting_items, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_parallel, &c), 0);
    for (int i = 0; i < 30000 && atomic_load(&waiting_items) < 4; i++)
        host_sleep_ms(1);
    cr_assert_eq(atomic_load(&waiting_items), 4);
    dx_evaluate_cancel_all();
    pthread_join(th, NULL);
    cr_assert_eq(c.rc, DX_ECANCELED, "%s", c.d.msg);
    cr_assert_not_null(c.r);
    /* Items 0 and 1 may have finished before the cancellation or not. */
    size_t done = 0;
    for (int i = 0; i < 6; i++) {
        done += c.r->items[i].done;
        cr_assert(i < 2 || !c.r->items[i].done, "item %d", i);
    }
    char said[32];
    snprintf(said, sizeof said, "%zu of 6 items done", done);
    cr_assert(strstr(c.d.msg, said) != NULL, "%s", c.d.msg);
    dx_parallel_result_free(c.r);
    for (int i = 0; i < 6; i++)
        dx_example_free(c.ins[i]);
    dx_module_free(c.m);
}

/* ---- KNN --------------------------------------------------------------- */

static dx_dataset *capitals(void)
{
    static const char *qs[] = {
        "What is the capital of France?",
        "How many legs does a spider have?",
        "What is the capital city of Spain?",
        "Which planet is the largest?",
        "What is the currency of Japan?",
    };
    dx_dataset *ds = dx_dataset_new();
    const char *keys[] = {"question"};
    for (size_t i = 0; i < 5; i++) {
        dx_example *ex = dx_example_new();
        dx_example_set_str(ex, "question", qs[i]);
        dx_example_set_str(ex, "answer", "x");
        dx_example_with_inputs(ex, keys, 1);
        cr_assert_eq(dx_dataset_append(ds, ex), DX_OK);
    }
    return ds;
}

Test(modules2, knn_picks_the_nearest_train_examples_best_first)
{
    dx_dataset *ds = capitals();
    dx_knn *knn = NULL;
    cr_assert_eq(dx_knn_new(2, ds, NULL, &knn), DX_OK);
    dx_example *in = question("What is the capital of Italy?");
    size_t idx[2], n = 0;
    cr_assert_eq(dx_knn_query(knn, in, idx, &n), DX_OK);
    cr_assert_eq(n, 2);
    cr_assert_eq(idx[0], 0, "France shares the most words");
    cr_assert_eq(idx[1], 2);
    dx_example_free(in);
    dx_knn_free(knn);
    cr_assert_eq(dx_knn_new(0, ds, NULL, &knn), DX_EINVAL);
    dx_dataset_free(ds);
}

static int peek(dx_ctx *ctx, const dx_module *self, const dx_example *inputs,
                dx_prediction **out)
{
    const dx_module *p = dx_module_child(self, "p");
    DX_TRY(dx_forward(ctx, p, inputs, out));
    char buf[512] = "";
    for (size_t i = 0; i < dx_predict_n_demos(p); i++) {
        strncat(buf, dx_example_get_str(dx_predict_demo(p, i), "question", ""),
                sizeof buf - strlen(buf) - 2);
        strncat(buf, "|", sizeof buf - strlen(buf) - 1);
    }
    dx_example_set_str(dx_prediction_fields_mut(*out), "demos", buf);
    return DX_OK;
}

static double always(const dx_example *e, const dx_prediction *p,
                     const dx_trace *t, void *ud)
{
    (void)e;
    (void)p;
    (void)t;
    (void)ud;
    return 1.0;
}

Test(modules2, knn_fewshot_demos_the_nearest_examples)
{
    dx_dataset *ds = capitals();
    dx_module *student = dx_module_new("Peek", peek, NULL, NULL, NULL);
    cr_assert_eq(dx_module_add(student, "p", predict("question -> answer")),
                 DX_OK);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = always},
        .max_bootstrapped_demos = 2,
        .labeled_none = true,
    };
    dx_module *prog = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_knn_fewshot(student, NULL, 2, ds, NULL, &o, &prog, &d),
                 DX_OK, "%s", d.msg);
    /* Two teacher runs and the answer. */
    for (int i = 0; i < 3; i++)
        push_answer("Rome");
    dx_example *in = question("What is the capital of Italy?");
    dx_prediction *p = NULL;
    cr_assert_eq(dx_module_call(prog, in, NULL, &p, NULL, &d), DX_OK, "%s",
                 d.msg);
    const char *demos = dx_prediction_get_str(p, "demos", "");
    cr_assert(strstr(demos, "What is the capital of France?|"), "%s", demos);
    cr_assert(strstr(demos, "What is the capital city of Spain?|"), "%s",
              demos);
    cr_assert(!strstr(demos, "spider"), "%s", demos);
    dx_prediction_free(p);
    dx_example_free(in);
    dx_module_free(prog);
    dx_module_free(student);
    dx_dataset_free(ds);
}

/* KNN over the providers' embeddings: the local server's vectors depend
 * only on the text, so the train example whose text the query repeats is
 * the nearest (cosine 1) and the rest rank by chance. Called from the
 * test's host thread: each request runs in a process of its own. */
Test(modules2, knn_embeds_through_the_providers_embeddings_api)
{
    dx_embeddings_opts o = {.model = "openai-compatible/test-embed",
                            .base_url = url,
                            .api_key = "sk-test"};
    dx_vectorizer v;
    dx_diag d = {0};
    dx_lmserver_stats before, after;
    dx_lmserver_stats_get(srv, &before);
    cr_assert_eq(dx_vectorizer_embeddings(&o, 0, &v, &d), DX_OK, "%s", d.msg);
    cr_assert_gt(v.dim, 0);
    dx_dataset *ds = capitals();
    dx_knn *knn = NULL;
    cr_assert_eq(dx_knn_new(2, ds, &v, &knn), DX_OK);
    dx_example *in = question("Which planet is the largest?");
    size_t idx[2], n = 0;
    cr_assert_eq(dx_knn_query(knn, in, idx, &n), DX_OK);
    cr_assert_eq(n, 2);
    cr_assert_eq(idx[0], 3);
    dx_lmserver_stats_get(srv, &after);
    cr_assert_eq(after.requests - before.requests, 3,
                 "probe, trainset, query: %llu",
                 (unsigned long long)(after.requests - before.requests));
    dx_example_free(in);
    dx_knn_free(knn);

    /* A dimension the model does not give fails the embedding. */
    dx_vectorizer wrong = v;
    wrong.dim = v.dim + 1;
    cr_assert_eq(dx_knn_new(2, ds, &wrong, &knn), DX_EPROVIDER);
    dx_vectorizer_embeddings_free(&v);
    cr_assert_null(v.ud);

    /* A provider without embeddings is refused when probed. */
    dx_embeddings_opts a = {
        .model = "anthropic/claude", .base_url = url, .api_key = "k"};
    cr_assert_eq(dx_vectorizer_embeddings(&a, 0, &v, &d), DX_ENOTSUP);
    cr_assert(strstr(d.msg, "anthropic/claude") != NULL, "%s", d.msg);
    dx_dataset_free(ds);
}

/* ---- best_of_n and refine declared in a program file ----------------- */

static char *history_text;

/* The last two calls of the LM client's history (must run in a process). */
static void grab_history(void *arg)
{
    (void)arg;
    atomic_store(&fixture_rc, dx_lm_client_inspect_history(dx_whereis("lm"), 2,
                                                           &history_text));
}

static dx_module *declared(const char *json)
{
    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_program_parse(json, strlen(json), "prog.json", &m, &d),
                 DX_OK, "%s", d.msg);
    return m;
}

static const char *call_answer_q(const dx_module *m, const char *q,
                                 dx_prediction **p)
{
    dx_example *in = question(q);
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(m, in, NULL, p, NULL, &d), DX_OK, "%s", d.msg);
    dx_example_free(in);
    return dx_prediction_get_str(*p, "answer", "");
}

static const char *call_answer(const dx_module *m, dx_prediction **p)
{
    return call_answer_q(m, "Capital of France?", p);
}

Test(modules2, a_declared_best_of_n_keeps_the_attempt_its_reward_accepts)
{
    dx_module *m = declared(
        "{\"program\": {\"modules\": [{\"name\": \"answer\", \"module\": "
        "\"best_of_n\", \"n\": 3, \"threshold\": 1.0, \"reward\": "
        "{\"field\": \"answer\", \"max_words\": 1}, \"wraps\": {\"module\": "
        "\"predict\", \"signature\": \"question -> answer\"}}]}}");
    push_answer("It is Paris, of course");
    push_answer("Paris");
    push_answer("Lyon");
    uint64_t before = upstream_requests();
    dx_prediction *p = NULL;
    cr_assert_str_eq(call_answer(m, &p), "Paris");
    cr_assert_eq(upstream_requests() - before, 2, "stops at the threshold");
    dx_prediction_free(p);

    /* A copy (what optimizers make) shares the compiled reward; it outlives
     * the original (both attempts come from the client's cache now). */
    dx_module *c = dx_module_copy(m);
    dx_module_free(m);
    cr_assert_str_eq(call_answer(c, &p), "Paris");
    dx_prediction_free(p);
    dx_module_free(c);
}

static int prefers_lyon(const dx_example *in, const dx_prediction *p, void *ud,
                        double *r)
{
    (void)in;
    (void)ud;
    *r =
        strcmp(dx_prediction_get_str(p, "answer", ""), "Lyon") == 0 ? 1.0 : 0.2;
    return DX_OK;
}

Test(modules2, a_declared_refine_shows_its_reward_as_python_to_the_feedback)
{
    dx_module *m = declared(
        "{\"program\": {\"modules\": [{\"name\": \"answer\", \"module\": "
        "\"refine\", \"n\": 2, \"threshold\": 1.0, \"reward\": {\"all\": "
        "[{\"field\": \"answer\", \"one_of\": [\"Paris\", \" PARIS \"]}, "
        "{\"field\": \"answer\", \"matches\": \"^[A-Z][a-z]+$\"}]}, "
        "\"wraps\": {\"module\": \"predict\", \"signature\": "
        "\"question -> answer\"}}]}}");
    push_answer("paris.");
    cr_assert_eq(dx_lmserver_push_reply(
                     srv, "[[ ## discussion ## ]]\nLower case.\n\n"
                          "[[ ## advice ## ]]\n{\"module\": \"Capitalise.\"}"
                          "\n\n[[ ## completed ## ]]"),
                 DX_OK);
    push_answer("Paris");
    dx_prediction *p = NULL;
    cr_assert_str_eq(call_answer(m, &p), "Paris");
    dx_prediction_free(p);
    /* The feedback call (the one before the last) read the reward. */
    fixture_run(grab_history);
    cr_assert(strstr(history_text,
                     "def reward(args, pred):\n    return min((1.0 if "
                     "pred.answer.strip().lower() in [\"paris\", \"paris\"] "
                     "else 0.0), (1.0 if re.search(\"^[A-Z][a-z]+$\", "
                     "pred.answer) else 0.0))") != NULL,
              "%s", history_text);
    dx_free(history_text);
    history_text = NULL;
    dx_module_free(m);

    /* A registered C reward, by name. */
    cr_assert_eq(dx_program_register_reward("prefers_lyon", prefers_lyon, NULL),
                 DX_OK);
    m = declared("{\"program\": {\"modules\": [{\"name\": \"a\", \"module\": "
                 "\"best_of_n\", \"n\": 2, \"threshold\": 1.0, \"reward\": "
                 "\"prefers_lyon\", \"wraps\": {\"module\": \"predict\", "
                 "\"signature\": \"question -> answer\"}}]}}");
    push_answer("Paris");
    push_answer("Lyon");
    /* (a question of its own: the client's cache keeps earlier answers) */
    cr_assert_str_eq(call_answer_q(m, "Second city of France?", &p), "Lyon");
    dx_prediction_free(p);
    dx_module_free(m);
    cr_assert_eq(dx_program_register_reward("prefers_lyon", NULL, NULL), DX_OK);
}

Test(modules2, declared_reward_errors_say_where)
{
    static const struct {
        const char *reward, *expect;
    } cases[] = {
        {"{\"field\": \"answer\"}",
         "prog.json: program.modules[0].reward: no check on \"answer\""},
        {"{\"field\": \"colour\", \"max_words\": 1}",
         "prog.json: program.modules[0].reward: \"colour\" is not an output "
         "of the wrapped module"},
        {"{\"field\": \"answer\", \"max_words\": 1, \"not_empty\": true}",
         "one check per reward"},
        {"{\"field\": \"answer\", \"matches\": \"([a-z\"}",
         "program.modules[0].reward: \"matches\": "},
        {"{\"all\": [{\"field\": \"answer\", \"one_of\": [1]}]}",
         "program.modules[0].reward.all[0]: \"one_of\"[0] is not a string"},
        {"\"no_such_reward\"", "no reward is registered as \"no_such_reward\""},
        {"{\"field\": \"answer\", \"max_words\": -1}",
         "\"max_words\" must be a number >= 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char json[512];
        snprintf(json, sizeof json,
                 "{\"program\": {\"modules\": [{\"name\": \"a\", \"module\": "
                 "\"best_of_n\", \"n\": 2, \"threshold\": 1, \"reward\": %s, "
                 "\"wraps\": {\"module\": \"predict\", \"signature\": "
                 "\"question -> answer\"}}]}}",
                 cases[i].reward);
        dx_module *m = NULL;
        dx_diag d = {0};
        cr_assert_neq(dx_program_parse(json, strlen(json), "prog.json", &m, &d),
                      DX_OK, "case %zu", i);
        cr_assert_null(m);
        cr_assert(strstr(d.msg, cases[i].expect) != NULL,
                  "case %zu: %s\nexpected: %s", i, d.msg, cases[i].expect);
    }
    const char *no_wraps = "{\"program\": {\"modules\": [{\"name\": \"a\", "
                           "\"module\": \"refine\", \"n\": 2, \"threshold\": "
                           "1, \"reward\": \"x\"}]}}";
    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_program_parse(no_wraps, strlen(no_wraps), "p.json", &m, &d),
                 DX_EINVAL);
    cr_assert(strstr(d.msg, "\"wraps\"") != NULL, "%s", d.msg);
    const char *no_n = "{\"program\": {\"modules\": [{\"name\": \"a\", "
                       "\"module\": \"refine\", \"threshold\": 1, \"reward\": "
                       "\"x\", \"wraps\": {}}]}}";
    cr_assert_eq(dx_program_parse(no_n, strlen(no_n), "p.json", &m, &d),
                 DX_EINVAL);
    cr_assert(strstr(d.msg, "\"n\" must be a number >= 1") != NULL, "%s",
              d.msg);
}
