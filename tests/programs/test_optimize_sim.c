/*
 * test_optimize_sim.c — every optimizer improves a program on the offline
 * sim model's tasks over the unoptimized baseline, and actually sets what
 * it claims to set (demos, instructions). The sim model is deterministic,
 * so these scores are too. Random search called from a process scores what
 * a re-evaluation of its program scores.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "dspex/lm.h"
#include "dspex/runtime.h"
#include "dspex/sim.h"
#include "dspex/teleprompt.h"

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

static dx_dataset *train, *dev;
static dx_module *student;

static void setup(void)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    run(start_client);
    cr_assert_eq(dx_sim_generate(DX_SIM_CAPITALS, "train", DX_SIM_DEFAULT_SEED,
                                 DX_SIM_TRAIN_SIZE, &train),
                 DX_OK);
    cr_assert_eq(dx_sim_generate(DX_SIM_CAPITALS, "dev", DX_SIM_DEFAULT_SEED,
                                 DX_SIM_DEV_SIZE, &dev),
                 DX_OK);
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    student = dx_predict_new(s, NULL);
    dx_signature_unref(s);
}

static void teardown(void)
{
    dx_module_free(student);
    dx_dataset_free(train);
    dx_dataset_free(dev);
    run(stop_client);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
}

TestSuite(optimize_sim, .init = setup, .fini = teardown, .timeout = 120);

static const dx_metric em = {.kind = DX_METRIC_EXACT_MATCH};

static double score_of(const dx_module *m)
{
    dx_eval_opts eo = {.metric = em, .progress = DX_EVAL_PROGRESS_OFF};
    dx_eval_result *r = NULL;
    cr_assert_eq(dx_evaluate(m, dev, &eo, &r, NULL), DX_OK);
    double s = r->score;
    dx_eval_result_free(r);
    return s;
}

static dx_tp_opts opts(void)
{
    dx_tp_opts o = {
        .metric = em,
        .max_bootstrapped_demos = 4,
        .max_labeled_demos = 4,
        .num_candidates = 3,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    return o;
}

Test(optimize_sim, labeled_and_bootstrap_beat_the_baseline)
{
    double base = score_of(student);
    dx_module *lab = NULL;
    cr_assert_eq(dx_labeled_fewshot(student, train, 4, true, &lab), DX_OK);
    cr_assert_eq(dx_predict_n_demos(lab), 4);
    double lab_score = score_of(lab);
    cr_assert_gt(lab_score, base, "labeled %.2f vs baseline %.2f", lab_score,
                 base);
    dx_module_free(lab);

    dx_tp_opts o = opts();
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(student, NULL, train, &o, &r, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_eq(r->n_bootstrapped, 4);
    cr_assert(cJSON_IsTrue(
        dx_example_get(dx_predict_demo(r->program, 0), "augmented")));
    double boot = score_of(r->program);
    cr_assert_gt(boot, base + 10, "bootstrap %.2f vs baseline %.2f", boot,
                 base);
    dx_tp_result_free(r);
}

Test(optimize_sim, random_search_beats_the_baseline)
{
    double base = score_of(student);
    dx_tp_opts o = opts();
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_random_search(student, NULL, train, dev, &o, &r, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_eq(r->n_trials, 6);
    cr_assert_gt(r->score, base + 10, "%.2f vs %.2f", r->score, base);
    cr_assert_gt(dx_predict_n_demos(r->program), 0);
    cr_assert_float_eq(score_of(r->program), r->score, 1e-9);
    dx_tp_result_free(r);
}

Test(optimize_sim, copro_rewrites_the_instructions_and_beats_the_baseline)
{
    double base = score_of(student);
    dx_tp_opts o = opts();
    dx_copro_opts cp = {0}; /* DSPy's defaults: breadth 10, depth 3 */
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_copro(student, train, &o, &cp, &r, &d), DX_OK, "%s", d.msg);
    const char *before =
        dx_signature_instructions(dx_predict_signature(student));
    const char *after =
        dx_signature_instructions(dx_predict_signature(r->program));
    double s = score_of(r->program);
    cr_assert_gt(s, base, "copro %.2f vs baseline %.2f", s, base);
    cr_assert_str_neq(before, after, "the instructions were rewritten");
    dx_tp_result_free(r);
}

Test(optimize_sim, mipro_sets_demos_and_instructions_and_beats_the_baseline)
{
    double base = score_of(student);
    dx_tp_opts o = opts();
    dx_mipro_opts mp = {.auto_mode = DX_MIPRO_AUTO_LIGHT};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_mipro(student, train, dev, &o, &mp, &r, &d), DX_OK, "%s",
                 d.msg);
    double s = score_of(r->program);
    cr_assert_gt(s, base + 10, "mipro %.2f vs baseline %.2f", s, base);
    cr_assert_gt(dx_predict_n_demos(r->program), 0);
    cr_assert_gt(r->n_trials, 3);
    dx_tp_result_free(r);
}

/* Random search called from a process (as dx_optimize and the CLI call
 * it) on one scheduler: while the caller waits for its candidates'
 * evaluation, the example processes run on the same scheduler stack the
 * caller's frames were copied out of, so anything they read from the
 * caller's stack would be another process's data. The result must be the
 * one a re-evaluation gives, and no example may fail. */
static dx_tp_result *proc_result;

static void random_search_in_a_process(void *arg)
{
    (void)arg;
    dx_tp_opts o = opts();
    atomic_store(&rc_flag, dx_random_search(student, NULL, train, dev, &o,
                                            &proc_result, NULL));
}

static void setup_one_scheduler(void)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 1}), DX_OK);
    run(start_client);
    cr_assert_eq(dx_sim_generate(DX_SIM_CAPITALS, "train", DX_SIM_DEFAULT_SEED,
                                 DX_SIM_TRAIN_SIZE, &train),
                 DX_OK);
    cr_assert_eq(dx_sim_generate(DX_SIM_CAPITALS, "dev", DX_SIM_DEFAULT_SEED,
                                 DX_SIM_DEV_SIZE, &dev),
                 DX_OK);
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    student = dx_predict_new(s, NULL);
    dx_signature_unref(s);
}

TestSuite(optimize_sim_in_process, .init = setup_one_scheduler,
          .fini = teardown, .timeout = 120);

Test(optimize_sim_in_process, random_search_scores_what_evaluation_scores)
{
    run(random_search_in_a_process);
    cr_assert_eq(proc_result->n_trials, 6);
    for (size_t i = 0; i < proc_result->n_trials; i++)
        cr_assert_gt(proc_result->trials[i].score, 0, "trial %zu scored 0", i);
    cr_assert_float_eq(score_of(proc_result->program), proc_result->score,
                       1e-9);
    dx_tp_result_free(proc_result);
}
