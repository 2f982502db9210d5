/*
 * teleprompt.h — optimizers ("teleprompters"): programs that make programs
 * better by choosing their demos, as Python DSPy's LabeledFewShot,
 * BootstrapFewShot and BootstrapFewShotWithRandomSearch do.
 *
 * Every optimizer takes a student program and returns a new one (the
 * student is never changed), its score where it evaluated one, and a trial
 * log. Random choices use CPython's random.Random with DSPy's seeds, so the
 * same trainset gives the same demos as Python DSPy (the one exception:
 * when one example's trace holds several steps of the same predictor, DSPy
 * keeps a hash-seeded random one; dspex keeps the last).
 *
 * Work fans out: BootstrapFewShot runs the teacher over up to `concurrency`
 * train examples at once (each in its own process, as Evaluate does) but
 * accepts their traces in trainset order, so the result is the sequential
 * one; random search evaluates each candidate with dx_evaluate.
 *
 * Checkpoints: with checkpoint_path set, every finished trial (a bootstrap
 * attempt, a candidate's evaluation) is stored in that SQLite file under a
 * key made of the run's inputs (student state, datasets, options). A run
 * killed at any point and started again with the same arguments reuses
 * the stored trials and ends with the same program and score.
 *
 * Progress: telemetry events named "optimize.trial" (START when a trial
 * begins, STOP when it ends, with its score) and "optimize.best" (a new
 * best score) that any process can subscribe to (telemetry.h), and an
 * optional HTML report with an SVG chart of trial scores and the
 * best-so-far curve.
 *
 * All functions block; they work from a host thread or a process.
 */
#ifndef DSPEX_TELEPROMPT_H
#define DSPEX_TELEPROMPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "evaluate.h"
#include "example.h"
#include "export.h"
#include "module.h"

typedef struct dx_tp_opts {
    /* Accepting a bootstrapped trace: metric >= metric_threshold when the
     * threshold is > 0, else metric > 0 (DSPy: a truthy metric). */
    dx_metric metric;
    double metric_threshold;
    size_t max_bootstrapped_demos; /* 0 = 4 */
    size_t max_labeled_demos;      /* 0 = 16; use labeled_none for none */
    bool labeled_none;             /* max_labeled_demos really 0 */
    size_t max_rounds;             /* 0 = 1 */
    /* Failed teacher runs tolerated before the optimizer gives up
     * (DX_ELIMIT); 0 = 10, as DSPy's settings.max_errors. */
    size_t max_errors;
    /* Random search: candidates with seeds 0..num_candidates-1 besides the
     * zero-shot, labeled-only and unshuffled ones; 0 = 16. */
    size_t num_candidates;
    /* Random search stops once a candidate scores at least this (percent);
     * 0 = never. */
    double stop_at_score;
    /* Programs in flight at once (teacher runs, evaluation examples);
     * 0 = 16. */
    size_t concurrency;
    /* Per program run; 0 = 120,000 ms. */
    int64_t example_timeout_ms;
    /* LM client, adapter... for every run (see dx_call_opts). */
    dx_call_opts call;
    /* Budget: stop starting work once this many LM calls were made (0 =
     * none). */
    int64_t max_lm_calls;
    /* SQLite checkpoint file (NULL = none); see the top of this file. */
    const char *checkpoint_path;
    /* HTML report written at the end (NULL = none). */
    const char *report_path;
    dx_eval_progress_mode progress; /* evaluations' progress; default AUTO */
    FILE *progress_out;
} dx_tp_opts;

typedef struct dx_tp_trial {
    int64_t id;    /* random search: the candidate seed (-3..n-1);
                         bootstrap: the train example index */
    char kind[32]; /* "zero_shot", "labeled", "bootstrap", "shuffled",
                         "bootstrap_example" */
    double score;  /* percent; bootstrap: 100 accepted / 0 rejected */
    bool from_checkpoint;
    dx_usage_acc usage;
    double wall_s;
} dx_tp_trial;

typedef struct dx_tp_result {
    dx_module *program; /* the optimized program: the caller's */
    double score;       /* its valset score (random search); -1 if none */
    dx_tp_trial *trials;
    size_t n_trials;
    size_t n_bootstrapped; /* examples whose traces became demos */
    dx_usage_acc usage;    /* every LM call the optimizer made */
    double wall_s;
} dx_tp_result;

DX_API void dx_tp_result_free(dx_tp_result *r);

/* DSPy's LabeledFewShot: a reset copy of student whose every predictor
 * gets k demos from trainset — random.Random(0).sample (one generator for
 * all predictors, in predictor order) when sample, else the first k.
 * DX_OK with *out the caller's; DX_ENOMEM, DX_EINVAL. */
DX_API int dx_labeled_fewshot(const dx_module *student,
                              const dx_dataset *trainset, size_t k, bool sample,
                              dx_module **out);

/* DSPy's BootstrapFewShot. teacher may be NULL: the student with
 * LabeledFewShot(max_labeled_demos) demos. DX_OK; DX_EINVAL (structures
 * differ, no metric); DX_ELIMIT (more than max_errors teacher runs
 * failed; diag names the last error); DX_ESTATE, DX_ENOMEM, DX_EIO
 * (checkpoint file). */
DX_API int dx_bootstrap_fewshot(const dx_module *student,
                                const dx_module *teacher,
                                const dx_dataset *trainset,
                                const dx_tp_opts *opts, dx_tp_result **out,
                                dx_diag *diag);

/* DSPy's BootstrapFewShotWithRandomSearch: candidates -3 (zero-shot), -2
 * (labeled only), -1 (bootstrap in trainset order), 0..n-1 (trainset
 * shuffled with the seed, 1..max_bootstrapped_demos demos), each
 * evaluated on valset (trainset when NULL); the best is returned and every
 * candidate is in the trial log. */
DX_API int dx_random_search(const dx_module *student, const dx_module *teacher,
                            const dx_dataset *trainset,
                            const dx_dataset *valset, const dx_tp_opts *opts,
                            dx_tp_result **out, dx_diag *diag);

/* Write the trial log as an HTML page with an SVG chart (score per trial,
 * best so far). DX_OK, DX_EIO, DX_ENOMEM. */
DX_API int dx_tp_write_report(const dx_tp_result *r, const char *title,
                              const char *path, dx_diag *diag);

#endif
