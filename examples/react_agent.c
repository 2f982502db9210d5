/*
 * react_agent.c — a ReAct agent with tools, one of which misbehaves on
 * purpose: its crash or hang becomes an observation in the trajectory and
 * the agent carries on.
 *
 *     build/examples/react_agent [--model M] [--questions N]
 *
 * Tools:
 *   search      BM25 over the bundled two-hop corpus (dx_sim_corpus), the
 *               top 3 passages one per line. Deliberately flaky: its 1st
 *               call crashes its process, its 2nd hangs (and is killed at
 *               the tool's 300 ms timeout), and after that every 4th call
 *               crashes.
 *   calculator  dx_tool_calculator_new: arithmetic on numbers.
 * The agent is dx_react_new on "question -> answer". Every tool call runs
 * in a process of its own (tool.h), so a crash or a hang costs that call
 * only: the step's observation reads "Execution error in search: ..." and
 * the LM decides what to do next — here, search again. For each of N
 * two-hop questions ("In which country was P born?") the example prints
 * the trajectory (thought, tool, arguments, observation per step) and the
 * answer. The sim model plays a two-hop agent that only needs search; a
 * real LM (--model) may use the calculator too, which is shown once on its
 * own at the start.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <dspex/app.h>
#include <dspex/evaluate.h>
#include <dspex/module.h>
#include <dspex/react.h>
#include <dspex/retrieve.h>
#include <dspex/sim.h>
#include <dspex/tool.h>

#include "agent_common.h"

#define TOOL_TIMEOUT_MS 300

static long n_questions = 2;
static dx_bm25 *index_;
static dx_dataset *questions;
static _Atomic long search_calls;
static int exit_code = 1;

/* ---- the flaky search tool ---------------------------------------------- */

static int flaky_search(const cJSON *args, char **result_text, void *ud)
{
    const dx_bm25 *ix = ud;
    long call = atomic_fetch_add(&search_calls, 1) + 1;
    if (call == 1 || (call > 2 && call % 4 == 0))
        /* An abnormal exit of the tool's process: what a crash looks like
         * to everyone else (a segfault in here would end the same way). */
        dx_exit_self(
            dx_tuple(2, dx_atom("flaky_search_crashed"), dx_int(call)));
    if (call == 2)
        dx_sleep(60000); /* hangs: killed at the tool's timeout */

    const cJSON *q = cJSON_GetObjectItemCaseSensitive(args, "query");
    dx_passages *hits = NULL;
    if (!cJSON_IsString(q) ||
        dx_bm25_search(ix, q->valuestring, 3, &hits) != DX_OK)
        return DX_EINVAL;
    size_t cap = 1;
    for (size_t i = 0; i < hits->n; i++)
        cap += strlen(hits->items[i].text) + 1;
    char *text = dx_malloc(cap);
    if (text == NULL) {
        dx_passages_free(hits);
        return DX_ENOMEM;
    }
    size_t len = 0;
    for (size_t i = 0; i < hits->n; i++)
        len +=
            (size_t)snprintf(text + len, cap - len, "%s%s", hits->items[i].text,
                             i + 1 < hits->n ? "\n" : "");
    text[len] = '\0';
    dx_passages_free(hits);
    *result_text = text;
    return DX_OK;
}

/* ---- printing a trajectory -------------------------------------------- */

static void print_trajectory(const dx_prediction *pred)
{
    const cJSON *traj = dx_prediction_get(pred, "trajectory");
    const cJSON *e;
    cJSON_ArrayForEach(e, traj)
    {
        char *v = cJSON_IsString(e) ? NULL : cJSON_PrintUnformatted(e);
        const char *text = v ? v : e->valuestring;
        printf("    %-14s ", e->string);
        /* Multi-line observations stay under their column. */
        for (const char *c = text ? text : ""; *c; c++)
            if (*c == '\n')
                printf("\n%19s", "");
            else
                putchar(*c);
        putchar('\n');
        cJSON_free(v);
    }
}

static void run(void *arg)
{
    (void)arg;
    dx_tool *tools[2] = {NULL, dx_tool_calculator_new()};
    dx_diag d = {0};
    static const dx_tool_param params[] = {{.name = "query",
                                            .type = "str",
                                            .desc = "what to look for",
                                            .required = true}};
    if (dx_tool_new("search", "Searches a corpus of short biographies.", params,
                    1, flaky_search, index_, &tools[0], &d) != DX_OK ||
        tools[1] == NULL) {
        fprintf(stderr, "react_agent: %s\n", d.msg);
        dx_tool_unref(tools[1]);
        return;
    }
    dx_tool_set_timeout(tools[0], TOOL_TIMEOUT_MS);

    /* The calculator on its own, as the agent would call it. */
    cJSON *args = cJSON_Parse("{\"expression\": \"(17 + 25) * 2 / 4\"}");
    char *obs = NULL;
    if (dx_tool_call(tools[1], args, &obs, NULL) == DX_OK)
        printf("react_agent: calculator((17 + 25) * 2 / 4) -> %s\n", obs);
    dx_free(obs);
    cJSON_Delete(args);

    dx_signature *sig = NULL;
    dx_module *agent = NULL;
    if (dx_signature_parse("question -> answer", NULL, NULL, 0, &sig, &d) ==
        DX_OK)
        agent = dx_react_new(sig, tools, 2, 8);
    dx_signature_unref(sig); /* the agent holds its references */
    dx_tool_unref(tools[0]);
    dx_tool_unref(tools[1]);
    if (agent == NULL) {
        fprintf(stderr, "react_agent: cannot build the agent: %s\n", d.msg);
        return;
    }

    long right = 0, done = 0;
    for (long i = 0; i < n_questions && (size_t)i < questions->n; i++) {
        const dx_example *ex = questions->items[i];
        dx_example *in = dx_example_new();
        dx_example_set_str(in, "question",
                           dx_example_get_str(ex, "question", ""));
        dx_prediction *pred = NULL;
        int rc = dx_module_call(agent, in, NULL, &pred, NULL, &d);
        dx_example_free(in);
        printf("\nQ%ld: %s\n  trajectory:\n", i + 1,
               dx_example_get_str(ex, "question", ""));
        if (rc != DX_OK) {
            printf("  failed: %s\n", d.msg);
            continue;
        }
        print_trajectory(pred);
        const char *answer = dx_prediction_get_str(pred, "answer", "");
        const char *gold = dx_example_get_str(ex, "answer", "");
        bool ok = dx_metric_em(answer, gold);
        right += ok;
        done++;
        printf("  answer: %s   (%s; expected %s)\n", answer,
               ok ? "right" : "wrong", gold);
        dx_prediction_free(pred);
    }
    printf("\n%ld of %ld answered right; the search tool was called %ld "
           "times, and crashed or hung on some of them\n",
           right, n_questions, (long)atomic_load(&search_calls));
    fflush(stdout);
    if (done == n_questions)
        exit_code = 0;
    dx_module_free(agent);
}

static int usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--model M] [--questions N]\n"
            "  A ReAct agent whose search tool crashes and hangs on purpose.\n"
            "  --model M      LM to use (default %s)\n"
            "  --questions N  two-hop questions to ask (default 2)\n",
            prog, EX_DEFAULT_MODEL);
    return 2;
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        const char *m = ex_model_arg(argc, argv, &i);
        if (m != NULL) {
            if (!*m)
                return usage(argv[0]);
            model = m;
        } else if (i + 1 < argc && strcmp(argv[i], "--questions") == 0) {
            char *end;
            errno = 0;
            n_questions = strtol(argv[++i], &end, 10);
            if (*end != '\0' || errno != 0 || n_questions < 1 ||
                n_questions > 50)
                return usage(argv[0]);
        } else {
            return usage(argv[0]);
        }
    }
    char **passages = NULL;
    size_t n = 0;
    int rc = dx_sim_corpus(NULL, 0, &passages, &n);
    if (rc == DX_OK)
        rc = dx_bm25_new(NULL, &index_);
    for (size_t i = 0; rc == DX_OK && i < n; i++)
        rc = dx_bm25_add(index_, passages[i], NULL, NULL);
    dx_sim_corpus_free(passages, n);
    if (rc == DX_OK)
        rc = dx_sim_generate(DX_SIM_TWOHOP, "dev", DX_SIM_DEFAULT_SEED,
                             DX_SIM_DEV_SIZE, &questions);
    if (rc != DX_OK) {
        fprintf(stderr, "react_agent: cannot build the corpus: %s\n",
                dx_strerror(rc));
        dx_bm25_free(index_);
        return 1;
    }

    dx_child_spec lm;
    if (ex_lm_child(&lm, model) != DX_OK)
        return 1;
    dx_sup_spec root = {.name = "react_app", .children = &lm, .nchildren = 1};
    ex_logs_in_words();
    rc = dx_app_run(NULL, &root, run, NULL, NULL);
    dx_log_set_sink(NULL, NULL);
    if (rc != DX_OK)
        fprintf(stderr, "react_agent: %s (model %s)\n", dx_strerror(rc),
                model ? model : EX_DEFAULT_MODEL);
    dx_lm_client_child_spec_free(&lm);
    dx_bm25_free(index_);
    dx_dataset_free(questions);
    return rc == DX_OK ? exit_code : 1;
}
