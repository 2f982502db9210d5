/*
 * test_killed.c — modules whose process is killed in the middle of a call
 * (an evaluation's example past its deadline, an agent stopped by its
 * supervisor) against the local LM server: the caller of dx_module_call is
 * killed while the program waits — in an LM call, a tool, a reward
 * function — and the program's process must end with it, leaving nothing
 * behind: LeakSanitizer checks what each module held across the wait in
 * the sanitizer builds, and the process count checks that no child
 * process (a tool's, a teacher run's) runs on.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/modules.h"
#include "dspex/program.h"
#include "dspex/react.h"
#include "dspex/retrieve.h"
#include "dspex/teleprompt.h"
#include "dspex/tool.h"
#include "lm_fixture.h"

TestSuite(killed, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 60);

static void push_answer(const char *a)
{
    char buf[256];
    snprintf(buf, sizeof buf, "[[ ## answer ## ]]\n%s\n\n[[ ## completed ## ]]",
             a);
    cr_assert_eq(dx_lmserver_push_reply(srv, buf), DX_OK);
}

/* Where the program waits when it is killed: user code parked in
 * dx_sleep (a reward function, a tool) counts itself here first. */
static atomic_int parked;

static void park(void)
{
    atomic_fetch_add(&parked, 1);
    dx_sleep(600000);
}

typedef struct caller {
    const dx_module *m;
    dx_example *in;
    const dx_call_opts *opts; /* NULL: the defaults */
} caller;

static void calling(void *arg)
{
    caller *c = arg;
    dx_prediction *p = NULL;
    dx_module_call(c->m, c->in, c->opts, &p, NULL, NULL);
    dx_prediction_free(p);
}

static bool some_parked(void)
{
    return atomic_load(&parked) > 0;
}

static uint64_t requests_before;

static bool lm_called(void)
{
    return upstream_requests() > requests_before;
}

static void wait_for(bool (*cond)(void), const char *what)
{
    for (int i = 0; i < 10000 && !cond(); i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    cr_assert(cond(), "%s", what);
}

static size_t wait_gone(const char *label)
{
    size_t left = 1;
    for (int i = 0; i < 10000 && (left = processes_labeled(label)) > 0; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    return left;
}

/* Calls m on in from a process, waits until ready() says the program is
 * where it should be killed, kills the caller and waits until neither the
 * program's process nor a tool's is left. Takes m and in. */
static void kill_mid_call_opts(dx_module *m, dx_example *in,
                               const dx_call_opts *opts, bool (*ready)(void))
{
    caller c = {m, in, opts};
    dx_pid pid;
    cr_assert_eq(dx_spawn(calling, &c, &pid), DX_OK);
    wait_for(ready, "the program did not get where it is killed");
    cr_assert_eq(dx_kill(pid), DX_OK);
    cr_assert_eq(wait_gone("dspex.program"), 0,
                 "the program's process outlived its caller");
    cr_assert_eq(wait_gone("dspex.tool"), 0,
                 "a tool's process outlived its program");
    cr_assert_eq(wait_gone("dspex.evaluate.example"), 0,
                 "a Parallel item's process outlived its program");
    cr_assert_eq(wait_gone("dspex.bootstrap.example"), 0,
                 "a teacher run's process outlived its program");
    dx_example_free(in);
    dx_module_free(m);
}

static void kill_mid_call(dx_module *m, dx_example *in, bool (*ready)(void))
{
    kill_mid_call_opts(m, in, NULL, ready);
}

/* Hangs every request from now on: the program is killed in an LM call. */
static void hang_the_lm(void)
{
    requests_before = upstream_requests();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:600000", 100), DX_OK);
}

/* ---- BestOfN and Refine: killed in the reward of an attempt ------------- */

static _Atomic int rewards;

static int parking_reward(const dx_example *in, const dx_prediction *p,
                          void *ud, double *r)
{
    (void)in;
    (void)p;
    (void)ud;
    /* The first attempt's reward is low, so the second attempt runs (and
     * Refine asks for feedback); the second parks. */
    if (atomic_fetch_add(&rewards, 1) == 1)
        park();
    *r = 0.1;
    return DX_OK;
}

Test(killed, best_of_n_in_its_reward)
{
    dx_best_of_n_opts o = {.n = 3, .reward = parking_reward, .threshold = 1};
    dx_module *m = dx_best_of_n_new(predict("question -> answer"), &o);
    cr_assert_not_null(m);
    push_answer("first");
    push_answer("second");
    kill_mid_call(m, question("Q?"), some_parked);
}

Test(killed, refine_in_its_reward)
{
    dx_best_of_n_opts o = {.n = 3, .reward = parking_reward, .threshold = 1};
    dx_module *m = dx_refine_new(predict("question -> answer"), &o);
    cr_assert_not_null(m);
    push_answer("first");
    cr_assert_eq(dx_lmserver_push_reply(
                     srv, "[[ ## advice ## ]]\n{\"self.module\": \"try "
                          "harder\"}\n\n[[ ## completed ## ]]"),
                 DX_OK);
    push_answer("second");
    kill_mid_call(m, question("Q?"), some_parked);
}

Test(killed, best_of_n_in_an_lm_call)
{
    dx_best_of_n_opts o = {.n = 3, .reward = parking_reward, .threshold = 1};
    dx_module *m = dx_best_of_n_new(predict("question -> answer"), &o);
    cr_assert_not_null(m);
    hang_the_lm();
    kill_mid_call(m, question("Q?"), lm_called);
}

/* A reward that crashes on the second attempt ends the program's process
 * the same way, from inside: the call fails with DX_EDOWN and what the
 * attempts held goes with the process. */
static int crashing_reward(const dx_example *in, const dx_prediction *p,
                           void *ud, double *r)
{
    (void)in;
    (void)p;
    (void)ud;
    if (atomic_fetch_add(&rewards, 1) == 1)
        crash_now();
    *r = 0.1;
    return DX_OK;
}

Test(killed, best_of_n_whose_reward_crashes)
{
    dx_best_of_n_opts o = {.n = 3, .reward = crashing_reward, .threshold = 1};
    dx_module *m = dx_best_of_n_new(predict("question -> answer"), &o);
    cr_assert_not_null(m);
    push_answer("first");
    push_answer("second");
    dx_example *in = question("Q?");
    dx_prediction *p = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_EDOWN, "%s",
                 d.msg);
    cr_assert_eq(atomic_load(&rewards), 2);
    dx_example_free(in);
    dx_module_free(m);
}

/* ---- ReAct: killed in a tool, and in its LM call after a step ----------- */

static int parking_tool(const cJSON *args, char **result_text, void *ud)
{
    (void)args;
    (void)ud;
    park();
    *result_text = dx_strdup("never");
    return DX_OK;
}

/* A ReAct over one tool, "lookup", that parks; native: the provider's
 * tool calling instead of the text fields. */
static dx_module *react_with_parking_tool(bool native)
{
    dx_tool_param q = {.name = "query", .type = "str", .required = true};
    dx_tool *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_tool_new("lookup", "Looks it up.", &q, 1, parking_tool,
                             NULL, &t, &d),
                 DX_OK, "%s", d.msg);
    dx_signature *s = sig("question -> answer");
    dx_react_opts o = {.max_iters = 5, .native_tools = native};
    dx_module *m = NULL;
    cr_assert_eq(dx_react_create(s, &t, 1, &o, &m, &d), DX_OK, "%s", d.msg);
    dx_tool_unref(t);
    dx_signature_unref(s);
    return m;
}

Test(killed, react_in_a_tool)
{
    dx_module *m = react_with_parking_tool(false);
    push_step("Look it up.", "lookup", "{\"query\": \"x\"}");
    kill_mid_call(m, question("What is x?"), some_parked);
}

/* ---- RAG and MultiChainComparison: killed in their LM call -------------- */

Test(killed, rag_in_its_lm_call)
{
    dx_bm25 *ix = NULL;
    cr_assert_eq(dx_bm25_new(NULL, &ix), DX_OK);
    cr_assert_eq(dx_bm25_add(ix, "Paris is the capital of France", "t0", "a"),
                 DX_OK);
    cr_assert_eq(dx_bm25_add(ix, "Madrid is the capital of Spain", "t1", "b"),
                 DX_OK);
    dx_retriever *r = NULL;
    cr_assert_eq(dx_bm25_retriever(ix, &r), DX_OK);
    dx_module *m = dx_rag_new(r, 2, NULL);
    cr_assert_not_null(m);
    dx_retriever_unref(r);
    hang_the_lm();
    kill_mid_call(m, question("What is the capital of France?"), lm_called);
}

Test(killed, multi_chain_comparison_in_its_lm_call)
{
    dx_signature *s = sig("question -> answer");
    dx_module *m = dx_multi_chain_comparison_new(s, 2, NULL);
    dx_signature_unref(s);
    cr_assert_not_null(m);
    dx_example *in = question("Q?");
    cr_assert_eq(
        dx_example_set_json(in, "completions",
                            "[{\"rationale\": \"r1\", \"answer\": \"a1\"},"
                            " {\"rationale\": \"r2\", \"answer\": \"a2\"}]",
                            NULL),
        DX_OK);
    hang_the_lm();
    kill_mid_call(m, in, lm_called);
}

/* ---- Parallel inside a module: killed while its items wait -------------- */

static int fan_out(dx_ctx *ctx, const dx_module *self, const dx_example *in,
                   dx_prediction **out)
{
    (void)in;
    /* Distinct questions (the LM client joins identical requests into
     * one), the test's to free. */
    const dx_example *const *items = dx_module_ud(self);
    dx_parallel_result *r = NULL;
    dx_diag d = {0};
    int rc =
        dx_parallel_run(dx_module_child(self, "p"), items, 3, NULL, &r, &d);
    if (rc != DX_OK)
        dx_ctx_fail(ctx, rc, "%s", d.msg);
    else {
        *out = r->items[0].pred;
        r->items[0].pred = NULL;
    }
    dx_parallel_result_free(r);
    return rc;
}

Test(killed, parallel_items_in_their_lm_calls)
{
    dx_example *items[3] = {question("Q0?"), question("Q1?"), question("Q2?")};
    dx_module *m = dx_module_new("FanOut", fan_out, items, NULL, NULL);
    cr_assert_eq(dx_module_add(m, "p", predict("question -> answer")), DX_OK);
    hang_the_lm();
    requests_before += 2; /* all three items are waiting */
    kill_mid_call(m, question("Q?"), lm_called);
    for (int i = 0; i < 3; i++)
        dx_example_free(items[i]);
}

/* ---- a declarative pipeline: killed in its second step's LM call -------- */

Test(killed, pipeline_in_its_second_step)
{
    static const char *const two_steps =
        "{\"program\": {\"modules\": ["
        "{\"name\": \"generate_query\", \"module\": \"predict\", "
        "\"signature\": \"question -> query\"},"
        "{\"name\": \"answer\", \"module\": \"predict\", \"signature\": "
        "\"question, query -> answer\"}],"
        "\"steps\": [{\"module\": \"generate_query\"}, "
        "{\"module\": \"answer\", \"inputs\": {\"question\": "
        "\"question\", \"query\": \"generate_query.query\"}}]}}";
    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(
        dx_program_parse(two_steps, strlen(two_steps), "p.json", &m, &d), DX_OK,
        "%s", d.msg);
    cr_assert_eq(dx_lmserver_push_reply(
                     srv, "[[ ## query ## ]]\nq\n\n[[ ## completed ## ]]"),
                 DX_OK);
    /* The first step is answered (a 1 ms delay, the first fault in the
     * queue); the second waits. */
    requests_before = upstream_requests() + 1;
    cr_assert_eq(dx_lmserver_inject(srv, "slow:1", 1), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "slow:600000", 100), DX_OK);
    kill_mid_call(m, question("Q?"), lm_called);
}

/* ---- KNNFewShot: killed while its bootstrap waits on teacher runs ------- */

static double always(const dx_example *e, const dx_prediction *p,
                     const dx_trace *t, void *ud)
{
    (void)e;
    (void)p;
    (void)t;
    (void)ud;
    return 1.0;
}

/* Both teacher runs are in their LM calls. */
static bool two_runs_waiting(void)
{
    return upstream_requests() >= requests_before + 2 &&
           processes_labeled("dspex.bootstrap.example") == 2;
}

/* The runs would otherwise wait out their 2-minute deadline. */
Test(killed, knn_fewshot_in_its_teacher_runs)
{
    static const char *qs[] = {"What is the capital of France?",
                               "How many legs does a spider have?",
                               "What is the capital city of Spain?"};
    dx_dataset *ds = dx_dataset_new();
    const char *keys[] = {"question"};
    for (size_t i = 0; i < 3; i++) {
        dx_example *ex = question(qs[i]);
        dx_example_set_str(ex, "answer", "x");
        dx_example_with_inputs(ex, keys, 1);
        cr_assert_eq(dx_dataset_append(ds, ex), DX_OK);
    }
    dx_module *student = predict("question -> answer");
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = always},
        .max_bootstrapped_demos = 2,
        .labeled_none = true,
    };
    dx_module *prog = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_knn_fewshot(student, NULL, 2, ds, NULL, &o, &prog, &d),
                 DX_OK, "%s", d.msg);
    hang_the_lm();
    kill_mid_call(prog, question("What is the capital of Italy?"),
                  two_runs_waiting);
    dx_module_free(student);
    dx_dataset_free(ds);
}

/* ---- Retrieve over embeddings: killed in the query's embedding call ----- */

static dx_retriever *embed_r;

static void build_embed_retriever(void *arg)
{
    (void)arg;
    static const char *const corpus[] = {"Paris is in France",
                                         "Madrid is in Spain"};
    dx_embeddings_opts o = {.model = "openai-compatible/test-embed",
                            .base_url = url,
                            .api_key = "sk-test"};
    atomic_store(&fixture_rc,
                 dx_embed_retriever_new(&o, corpus, 2, &embed_r, NULL));
}

Test(killed, retrieve_in_its_embedding_call)
{
    fixture_run(build_embed_retriever);
    dx_module *m = dx_retrieve_new(embed_r, 1);
    cr_assert_not_null(m);
    dx_retriever_unref(embed_r);
    dx_example *in = dx_example_new();
    cr_assert_eq(dx_example_set_str(in, "query", "Where is Paris?"), DX_OK);
    hang_the_lm();
    kill_mid_call(m, in, lm_called);
}

/* ---- Retrieve from a ColBERTv2 server: killed in its search ------------ */

/* The search is POSTed to the local LM server's chat route, which holds
 * every request once told to (before it reads the body; an unknown path
 * would be a 404 at once): the URL and body the search holds while it
 * waits are freed by the kill. */
Test(killed, retrieve_in_its_colbertv2_search)
{
    char u[160];
    snprintf(u, sizeof u, "%s/chat/completions", url);
    dx_colbertv2_opts o = {.url = u, .post = true};
    dx_retriever *r = NULL;
    cr_assert_eq(dx_colbertv2_retriever_new(&o, &r, NULL), DX_OK);
    dx_module *m = dx_retrieve_new(r, 2);
    cr_assert_not_null(m);
    dx_retriever_unref(r);
    dx_example *in = dx_example_new();
    cr_assert_eq(dx_example_set_str(in, "query", "Where is Paris?"), DX_OK);
    hang_the_lm();
    kill_mid_call(m, in, lm_called);
}

/* ---- a streamed Predict: killed while its answer is awaited ------------- */

static void ignore_chunk(const char *predictor, const char *field,
                         const char *text, size_t len, void *ud)
{
    (void)predictor;
    (void)field;
    (void)text;
    (void)len;
    (void)ud;
}

Test(killed, streamed_predict_in_its_lm_call)
{
    dx_call_opts o = {.lm = DX_NOPID, .on_chunk = ignore_chunk};
    hang_the_lm();
    kill_mid_call_opts(predict("question -> answer"), question("Q?"), &o,
                       lm_called);
}

/* ---- Predict: killed in the JSONAdapter fallback's call ------------------ */

/* The ChatAdapter's answer does not parse, so the step asks again through
 * the JSONAdapter, and is killed while that call waits: the first call's
 * result must not be held untied across it. */
Test(killed, predict_in_its_json_fallback_call)
{
    cr_assert_eq(dx_lmserver_push_reply(srv, "no markers here"), DX_OK);
    requests_before = upstream_requests() + 1;
    cr_assert_eq(dx_lmserver_inject(srv, "slow:1", 1), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "slow:600000", 100), DX_OK);
    kill_mid_call(predict("question -> answer"), question("Q?"), lm_called);
}

/* ... and in JSON mode, after the provider refused the JSON schema. */
Test(killed, predict_in_its_json_mode_call)
{
    dx_call_opts o = {.lm = DX_NOPID, .adapter = DX_ADAPTER_JSON};
    requests_before = upstream_requests() + 1;
    cr_assert_eq(dx_lmserver_inject(srv, "no_json_schema", 1), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "slow:600000", 100), DX_OK);
    kill_mid_call_opts(predict("question -> answer"), question("Q?"), &o,
                       lm_called);
}

/* ---- ReAct, native tool calling: killed in its LM call ------------------ */

Test(killed, native_react_in_its_lm_call)
{
    dx_module *m = react_with_parking_tool(true);
    hang_the_lm();
    kill_mid_call(m, question("What is x?"), lm_called);
}

/* ---- a module as a tool: the kill goes down the whole chain -------------- */

/* ReAct calls a tool that runs a Predict (its own process, under the tool's
 * process), which waits on the LM: killing ReAct's caller ends the program,
 * the tool and the tool's program. */
Test(killed, a_module_tool_in_its_lm_call)
{
    dx_module *inner = predict("query -> result");
    dx_tool *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_tool_from_module("lookup", "Looks it up.", inner, NULL, 0,
                                     NULL, &t, &d),
                 DX_OK, "%s", d.msg);
    dx_signature *s = sig("question -> answer");
    dx_module *m = dx_react_new(s, &t, 1, 5);
    cr_assert_not_null(m);
    dx_tool_unref(t);
    dx_signature_unref(s);
    push_step("Look it up.", "lookup", "{\"query\": \"x\"}");
    /* The step is answered (a 1 ms delay, the first fault in the queue);
     * the tool's own LM call waits. */
    requests_before = upstream_requests() + 1;
    cr_assert_eq(dx_lmserver_inject(srv, "slow:1", 1), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "slow:600000", 100), DX_OK);
    kill_mid_call(m, question("What is x?"), lm_called);
    cr_assert_eq(processes_labeled("dspex.program"), 0);
    dx_module_free(inner);
}
