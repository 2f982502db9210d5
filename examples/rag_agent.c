/*
 * rag_agent.c — retrieval-augmented generation: BM25 search over a corpus
 * feeds a ChainOfThought, which BootstrapFewShot then optimizes; the
 * scores before and after are printed.
 *
 *     build/examples/rag_agent [--model M] [--k K]
 *
 * The corpus is the sim model's bundled two-hop corpus (dx_sim_corpus:
 * "P was born in C." and "C is a city in K." sentences) indexed with BM25;
 * the questions are the two-hop task ("In which country was P born?") from
 * data/sim/twohop. The program is dx_rag_new: children "retrieve" (top K
 * passages for the question) and "generate_answer" (ChainOfThought
 * "context, question -> answer"). It is evaluated on the dev split with
 * exact match, optimized with BootstrapFewShot on the train split (the
 * teacher's successful traces become demos), and evaluated again. One
 * question is then walked through: passages, reasoning, answer.
 *
 * Everything runs inside an application whose root supervisor holds the LM
 * client; the main process does the work (evaluations fan out into a
 * process per example).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <dspex/app.h>
#include <dspex/evaluate.h>
#include <dspex/module.h>
#include <dspex/retrieve.h>
#include <dspex/sim.h>
#include <dspex/teleprompt.h>

#include "agent_common.h"

static long top_k = 3;
static dx_retriever *retriever;
static dx_dataset *train, *dev;
static int exit_code = 1;

static const dx_metric metric = {.kind = DX_METRIC_EXACT_MATCH,
                                 .field = "answer"};

/* Score m on dev (percent), or -1 with the reason printed. */
static double score(const dx_module *m)
{
    dx_eval_opts eo = {
        .metric = metric, .concurrency = 8, .progress = DX_EVAL_PROGRESS_OFF};
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    if (dx_evaluate(m, dev, &eo, &r, &d) != DX_OK) {
        fprintf(stderr, "rag_agent: evaluation failed: %s\n", d.msg);
        return -1;
    }
    double s = r->score;
    dx_eval_result_free(r);
    return s;
}

/* Run m on one question and show what it read and how it answered. */
static void walk_through(const dx_module *m, const dx_example *ex)
{
    dx_example *in = NULL;
    dx_diag d = {0};
    if (dx_example_inputs(ex, &in, &d) != DX_OK)
        return;
    dx_call_opts co = {.trace = true};
    dx_prediction *pred = NULL;
    dx_trace trace = {0};
    int rc = dx_module_call(m, in, &co, &pred, &trace, &d);
    dx_example_free(in);
    printf("\none question, step by step:\n  question: %s\n",
           dx_example_get_str(ex, "question", ""));
    if (rc != DX_OK) {
        printf("  failed: %s\n", d.msg);
        return;
    }
    for (size_t i = 0; i < trace.n; i++) {
        const cJSON *ctx = dx_example_get(trace.steps[i].inputs, "context");
        const cJSON *p;
        printf("  step %s read %d passage(s):\n", trace.steps[i].path,
               cJSON_GetArraySize(ctx));
        cJSON_ArrayForEach(p, ctx)
        {
            if (cJSON_IsString(p))
                printf("    - %s\n", p->valuestring);
        }
    }
    printf("  reasoning: %s\n  answer: %s   (expected %s)\n",
           dx_prediction_get_str(pred, "reasoning", ""),
           dx_prediction_get_str(pred, "answer", ""),
           dx_example_get_str(ex, "answer", ""));
    dx_prediction_free(pred);
    dx_trace_free(&trace);
}

static void run(void *arg)
{
    (void)arg;
    dx_module *rag = dx_rag_new(retriever, (size_t)top_k, NULL);
    if (rag == NULL)
        return;
    printf("rag_agent: BM25 top-%ld over %s + ChainOfThought; twohop task "
           "(train %zu, dev %zu)\n",
           top_k, "the bundled corpus", train->n, dev->n);
    fflush(stdout);
    double before = score(rag);

    dx_tp_opts o = {
        .metric = metric,
        .max_bootstrapped_demos = 4,
        .max_labeled_demos = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    int rc = dx_bootstrap_fewshot(rag, NULL, train, &o, &r, &d);
    if (rc != DX_OK || before < 0) {
        fprintf(stderr, "rag_agent: BootstrapFewShot failed: %s\n", d.msg);
        dx_module_free(rag);
        return;
    }
    double after = score(r->program);
    printf("\n%-34s %8s\n", "program", "dev");
    printf("%-34s %7.2f%%\n", "RAG, zero-shot", before);
    printf("%-34s %7.2f%%   (%zu demos bootstrapped)\n",
           "RAG + BootstrapFewShot", after, r->n_bootstrapped);
    printf("LM usage of the optimization: %lld calls, %lld tokens in, %lld "
           "out\n",
           (long long)r->usage.calls, (long long)r->usage.input_tokens,
           (long long)r->usage.output_tokens);
    walk_through(r->program, dev->items[0]);
    fflush(stdout);
    if (after >= 0)
        exit_code = 0;
    dx_tp_result_free(r);
    dx_module_free(rag);
}

static int usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--model M] [--k K]\n"
            "  BM25 + ChainOfThought over the bundled two-hop corpus,\n"
            "  optimized with BootstrapFewShot.\n"
            "  --model M  LM to use (default %s)\n"
            "  --k K      passages retrieved per question (default 3)\n",
            prog, EX_DEFAULT_MODEL);
    return 2;
}

/* BM25 over the sim's two-hop corpus. */
static int build_index(void)
{
    char **passages = NULL;
    size_t n = 0;
    dx_bm25 *ix = NULL;
    int rc = dx_sim_corpus(NULL, 0, &passages, &n);
    if (rc == DX_OK)
        rc = dx_bm25_new(NULL, &ix);
    for (size_t i = 0; rc == DX_OK && i < n; i++)
        rc = dx_bm25_add(ix, passages[i], NULL, NULL);
    dx_sim_corpus_free(passages, n);
    if (rc == DX_OK)
        return dx_bm25_retriever(ix, &retriever); /* takes ix */
    dx_bm25_free(ix);
    return rc;
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
        } else if (i + 1 < argc && strcmp(argv[i], "--k") == 0) {
            char *end;
            errno = 0;
            top_k = strtol(argv[++i], &end, 10);
            if (*end != '\0' || errno != 0 || top_k < 1 || top_k > 20)
                return usage(argv[0]);
        } else {
            return usage(argv[0]);
        }
    }
    if (build_index() != DX_OK ||
        dx_sim_generate(DX_SIM_TWOHOP, "train", DX_SIM_DEFAULT_SEED,
                        DX_SIM_TRAIN_SIZE, &train) != DX_OK ||
        dx_sim_generate(DX_SIM_TWOHOP, "dev", DX_SIM_DEFAULT_SEED,
                        DX_SIM_DEV_SIZE, &dev) != DX_OK) {
        fprintf(stderr, "rag_agent: cannot build the corpus or the data\n");
        return 1;
    }

    dx_child_spec lm;
    if (ex_lm_child(&lm, model) != DX_OK)
        return 1;
    dx_sup_spec root = {.name = "rag_app", .children = &lm, .nchildren = 1};
    ex_logs_in_words();
    int rc = dx_app_run(NULL, &root, run, NULL, NULL);
    dx_log_set_sink(NULL, NULL);
    if (rc != DX_OK)
        fprintf(stderr, "rag_agent: %s (model %s)\n", dx_strerror(rc),
                model ? model : EX_DEFAULT_MODEL);
    dx_lm_client_child_spec_free(&lm);
    dx_retriever_unref(retriever);
    dx_dataset_free(train);
    dx_dataset_free(dev);
    return rc == DX_OK ? exit_code : 1;
}
