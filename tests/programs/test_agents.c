/*
 * test_agents.c — agents end to end on the offline sim model: ReAct with a
 * BM25 search tool over the sim's two-hop corpus answers two-hop questions
 * (the trajectory is asserted: search the person, search the city,
 * finish), in text mode and in native tool-calling mode, far better than
 * the same question without tools; a declarative program declares a ReAct
 * agent with built-in tools.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dspex/evaluate.h"
#include "dspex/lm.h"
#include "dspex/program.h"
#include "dspex/react.h"
#include "dspex/retrieve.h"
#include "dspex/runtime.h"
#include "dspex/sim.h"

static _Atomic int rc_flag;

static void host_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void start_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    dx_server_opts so = {.name = "lm"};
    atomic_store(&rc_flag, dx_lm_client_start(&o, &so, NULL));
}

static void stop_client(void *arg)
{
    (void)arg;
    atomic_store(&rc_flag, dx_server_stop(dx_whereis("lm"), NULL, 5000));
}

static void run(dx_proc_fn fn)
{
    atomic_store(&rc_flag, 1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(fn, NULL, &pid), DX_OK);
    while (atomic_load(&rc_flag) == 1)
        host_sleep_ms(2);
    cr_assert_eq(atomic_load(&rc_flag), DX_OK);
}

static dx_dataset *dev;
static dx_retriever *bm25;
static char corpus_path[64];

static void setup(void)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    run(start_client);
    cr_assert_eq(
        dx_sim_generate(DX_SIM_TWOHOP, "dev", DX_SIM_DEFAULT_SEED, 20, &dev),
        DX_OK);
    /* The sim's corpus, as a BM25 index and as a JSONL file. */
    char **ps = NULL;
    size_t n = 0;
    cr_assert_eq(dx_sim_corpus(NULL, 0, &ps, &n), DX_OK);
    cr_assert_gt(n, 10);
    dx_bm25 *ix = NULL;
    cr_assert_eq(dx_bm25_new(NULL, &ix), DX_OK);
    snprintf(corpus_path, sizeof corpus_path, "/tmp/dx_corpus_XXXXXX");
    int fd = mkstemp(corpus_path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(dx_bm25_add(ix, ps[i], NULL, NULL), DX_OK);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "text", ps[i]);
        char *t = cJSON_PrintUnformatted(o);
        fprintf(f, "%s\n", t);
        cJSON_free(t);
        cJSON_Delete(o);
    }
    fclose(f);
    dx_sim_corpus_free(ps, n);
    cr_assert_eq(dx_bm25_retriever(ix, &bm25), DX_OK);
}

static void teardown(void)
{
    dx_retriever_unref(bm25);
    dx_dataset_free(dev);
    unlink(corpus_path);
    run(stop_client);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
}

TestSuite(agents, .init = setup, .fini = teardown, .timeout = 120);

static double evaluate(const dx_module *m)
{
    dx_eval_opts eo = {.metric = {.kind = DX_METRIC_EXACT_MATCH},
                       .progress = DX_EVAL_PROGRESS_OFF};
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, dev, &eo, &r, &d), DX_OK, "%s", d.msg);
    double s = r->score;
    dx_eval_result_free(r);
    return s;
}

static dx_module *agent(bool native)
{
    dx_tool *search = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_retriever_tool(bm25, "search", 2, &search, &d), DX_OK, "%s",
                 d.msg);
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    dx_react_opts o = {.max_iters = 6, .native_tools = native};
    dx_module *m = NULL;
    cr_assert_eq(dx_react_create(s, &search, 1, &o, &m, &d), DX_OK, "%s",
                 d.msg);
    dx_signature_unref(s);
    dx_tool_unref(search);
    return m;
}

Test(agents, react_with_bm25_search_solves_two_hop_questions)
{
    dx_module *m = agent(false);
    /* One question, the trajectory step by step. */
    dx_example *in = dx_example_copy(dev->items[0]);
    const char *drop[] = {"answer"};
    dx_example *q = dx_example_without(in, drop, 1);
    dx_prediction *p = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_module_call(m, q, NULL, &p, NULL, &d), DX_OK, "%s", d.msg);
    const cJSON *traj = dx_prediction_get(p, "trajectory");
    cr_assert(cJSON_IsObject(traj), "the prediction has the trajectory");
    const cJSON *t0 = cJSON_GetObjectItem(traj, "tool_name_0");
    const cJSON *t1 = cJSON_GetObjectItem(traj, "tool_name_1");
    const cJSON *t2 = cJSON_GetObjectItem(traj, "tool_name_2");
    cr_assert(cJSON_IsString(t0) && strcmp(t0->valuestring, "search") == 0);
    cr_assert(cJSON_IsString(t1) && strcmp(t1->valuestring, "search") == 0);
    cr_assert(cJSON_IsString(t2) && strcmp(t2->valuestring, "finish") == 0);
    cr_assert(cJSON_GetObjectItem(traj, "observation_0"));
    /* The final answer comes from the extraction step (ChainOfThought over
     * the trajectory), which the sim answers with its usual skill: the
     * aggregate below is what is asserted. */
    cr_assert(dx_prediction_get_str(p, "answer", NULL));
    dx_prediction_free(p);
    dx_example_free(q);
    dx_example_free(in);

    /* Over the dev questions, against no tools at all. */
    double with_tools = evaluate(m);
    dx_signature *s = NULL;
    dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL);
    dx_module *cot = dx_chain_of_thought_new(s, NULL);
    dx_signature_unref(s);
    double without = evaluate(cot);
    cr_assert_gt(with_tools, without + 30, "ReAct %.2f vs CoT %.2f", with_tools,
                 without);
    dx_module_free(cot);
    dx_module_free(m);
}

Test(agents, native_tool_calling_mode_solves_them_too)
{
    dx_module *m = agent(true);
    double s = evaluate(m);
    cr_assert_gt(s, 60, "native ReAct %.2f", s);
    dx_module_free(m);
}

Test(agents, a_declared_react_program_with_built_in_tools_runs)
{
    char json[1024];
    snprintf(
        json, sizeof json,
        "{\"program\": {\"modules\": [{\"name\": \"agent\", \"module\": "
        "\"react\", \"signature\": \"question -> answer\", "
        "\"max_iters\": 6, \"tools\": [{\"builtin\": \"search\", "
        "\"corpus\": \"%s\", \"k\": 2}, {\"builtin\": \"calculator\"}]}]}}",
        corpus_path);
    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_program_parse(json, strlen(json), "agent.json", &m, &d),
                 DX_OK, "%s", d.msg);
    double s = evaluate(m);
    cr_assert_gt(s, 60, "declared ReAct %.2f", s);
    dx_module_free(m);

    /* A declared RAG program over the same corpus file. */
    snprintf(json, sizeof json,
             "{\"program\": {\"modules\": [{\"name\": \"rag\", \"module\": "
             "\"rag\", \"corpus\": \"%s\", \"k\": 3}]}}",
             corpus_path);
    cr_assert_eq(dx_program_parse(json, strlen(json), "rag.json", &m, &d),
                 DX_OK, "%s", d.msg);
    cr_assert_gt(evaluate(m), 30);
    dx_module_free(m);

    /* Errors say where. */
    const char *bad = "{\"program\": {\"modules\": [{\"name\": \"a\", "
                      "\"module\": \"react\", \"signature\": \"q -> a\", "
                      "\"tools\": [{\"builtin\": \"teleport\"}]}]}}";
    cr_assert_eq(dx_program_parse(bad, strlen(bad), "bad.json", &m, &d),
                 DX_EINVAL);
    cr_assert(strstr(d.msg, "teleport"), "%s", d.msg);
}
