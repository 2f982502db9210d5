/*
 * optimize.c — MIPROv2 on a bundled task, run as a supervised optimizer:
 * the before/after table, the optimized program and the HTML report.
 *
 *     build/examples/optimize [--model M] [--task T] [--out DIR]
 *
 * The task is one of the sim model's bundled families (capitals by
 * default; arithmetic, classify, twohop) with its train / dev / test
 * splits. The student is a zero-shot Predict (ChainOfThought for
 * arithmetic). dx_optimize runs MIPROv2 (auto "light") under a supervisor
 * of its own with a SQLite checkpoint in DIR, so a crash of the optimizer's
 * process resumes from the trials already finished. The baseline and the
 * optimized program are then scored on dev and test, and DIR receives
 * optimized.json (DSPy's saved-program layout), report.html (every trial
 * and the best-so-far curve) and checkpoint.sqlite. Running it again with
 * the same DIR reuses the checkpoint: the trials are read back, not run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <dspex/app.h>
#include <dspex/evaluate.h>
#include <dspex/module.h>
#include <dspex/optimize.h>
#include <dspex/program.h>
#include <dspex/sim.h>
#include <dspex/teleprompt.h>

#include "agent_common.h"

static const char *out_dir = "optimize-out";
static dx_sim_task task = DX_SIM_CAPITALS;
static dx_dataset *train, *dev, *test;
static dx_module *student;
static dx_metric metric = {.kind = DX_METRIC_EXACT_MATCH, .field = "answer"};
static int exit_code = 1;

static double score(const dx_module *m, const dx_dataset *ds)
{
    dx_eval_opts eo = {
        .metric = metric, .concurrency = 8, .progress = DX_EVAL_PROGRESS_OFF};
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    if (dx_evaluate(m, ds, &eo, &r, &d) != DX_OK) {
        fprintf(stderr, "optimize: evaluation failed: %s\n", d.msg);
        return -1;
    }
    double s = r->score;
    dx_eval_result_free(r);
    return s;
}

static void run(void *arg)
{
    (void)arg;
    char ckpt[512], report[512], saved[512];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.sqlite", out_dir);
    snprintf(report, sizeof report, "%s/report.html", out_dir);
    snprintf(saved, sizeof saved, "%s/optimized.json", out_dir);
    printf("optimize: MIPROv2 (light) on task %s (train %zu, dev %zu, test "
           "%zu)\n",
           dx_sim_task_name(task), train->n, dev->n, test->n);
    fflush(stdout);

    /* The spec and what it points to must not live on this process's
     * stack: the optimizer's own process reads them (optimize.h). */
    static dx_optimize_spec spec;
    spec = (dx_optimize_spec){
        .kind = DX_OPT_MIPRO,
        .student = student,
        .trainset = train,
        .valset = dev,
        .opts = {.metric = metric,
                 .max_bootstrapped_demos = 4,
                 .max_labeled_demos = 4,
                 .concurrency = 8,
                 .checkpoint_path = ckpt,
                 .report_path = report,
                 .progress = DX_EVAL_PROGRESS_OFF},
        .mipro = {.auto_mode = DX_MIPRO_AUTO_LIGHT},
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    int rc = dx_optimize(&spec, &r, &d);
    if (rc != DX_OK) {
        fprintf(stderr, "optimize: MIPROv2 failed: %s\n", d.msg);
        return;
    }
    size_t restored = 0;
    for (size_t i = 0; i < r->n_trials; i++)
        restored += r->trials[i].from_checkpoint;
    double b_dev = score(student, dev), b_test = score(student, test);
    double a_dev = score(r->program, dev), a_test = score(r->program, test);
    printf("\n%-24s %8s %8s\n", "program", "dev", "test");
    printf("%-24s %7.2f%% %7.2f%%\n", "baseline (zero-shot)", b_dev, b_test);
    printf("%-24s %7.2f%% %7.2f%%\n", "MIPROv2 (light)", a_dev, a_test);
    printf("\n%zu trials (%zu read back from the checkpoint), %lld LM calls, "
           "optimizer restarts: %zu\n",
           r->n_trials, restored, (long long)r->usage.calls, r->restarts);
    dx_named_predictor *preds = NULL;
    size_t np = 0;
    if (dx_module_predictors(r->program, &preds, &np) == DX_OK && np > 0)
        printf(
            "chosen instructions: %s\nchosen demos: %zu\n",
            dx_signature_instructions(dx_predict_signature(preds[0].predict)),
            dx_predict_n_demos(preds[0].predict));
    dx_free(preds);
    if (dx_program_save(r->program, saved, &d) == DX_OK)
        printf("\nwrote %s, %s and %s\n", saved, report, ckpt);
    else
        fprintf(stderr, "optimize: %s\n", d.msg);
    fflush(stdout);
    if (b_dev >= 0 && a_dev >= 0)
        exit_code = 0;
    dx_tp_result_free(r);
}

static int usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--model M] [--task T] [--out DIR]\n"
            "  MIPROv2 on a bundled sim task with a before/after table.\n"
            "  --model M  LM to use (default %s)\n"
            "  --task T   capitals (default), arithmetic, classify, twohop\n"
            "  --out DIR  where the program, report and checkpoint go\n"
            "             (default optimize-out)\n",
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
        } else if (i + 1 < argc && strcmp(argv[i], "--task") == 0) {
            if (dx_sim_task_from_name(argv[++i], &task) != DX_OK)
                return usage(argv[0]);
        } else if (i + 1 < argc && strcmp(argv[i], "--out") == 0) {
            out_dir = argv[++i];
        } else {
            return usage(argv[0]);
        }
    }
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "optimize: %s: %s\n", out_dir, strerror(errno));
        return 1;
    }
    const char *kind =
        task == DX_SIM_ARITHMETIC ? "chain_of_thought" : "predict";
    const char *sig = task == DX_SIM_CLASSIFY
                          ? "text -> label: Literal['positive', 'negative', "
                            "'neutral']"
                          : "question -> answer";
    if (task == DX_SIM_CLASSIFY)
        metric.field = "label";
    dx_diag d = {0};
    if (dx_program_single(kind, sig, NULL, &student, &d) != DX_OK ||
        dx_sim_generate(task, "train", DX_SIM_DEFAULT_SEED, DX_SIM_TRAIN_SIZE,
                        &train) != DX_OK ||
        dx_sim_generate(task, "dev", DX_SIM_DEFAULT_SEED, DX_SIM_DEV_SIZE,
                        &dev) != DX_OK ||
        dx_sim_generate(task, "test", DX_SIM_DEFAULT_SEED, DX_SIM_TEST_SIZE,
                        &test) != DX_OK) {
        fprintf(stderr, "optimize: cannot build the program or data: %s\n",
                d.msg);
        return 1;
    }

    dx_child_spec lm;
    if (ex_lm_child(&lm, model) != DX_OK)
        return 1;
    dx_sup_spec root = {
        .name = "optimize_app", .children = &lm, .nchildren = 1};
    ex_logs_in_words();
    int rc = dx_app_run(NULL, &root, run, NULL, NULL);
    dx_log_set_sink(NULL, NULL);
    if (rc != DX_OK)
        fprintf(stderr, "optimize: %s (model %s)\n", dx_strerror(rc),
                model ? model : EX_DEFAULT_MODEL);
    dx_lm_client_child_spec_free(&lm);
    dx_module_free(student);
    dx_dataset_free(train);
    dx_dataset_free(dev);
    dx_dataset_free(test);
    return rc == DX_OK ? exit_code : 1;
}
