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
 * one; random search evaluates each candidate with dx_evaluate, or through
 * opts' evaluator when set (as MIPROv2 does its trials): a hook that may
 * run the evaluations elsewhere, e.g. on other nodes (dist_eval.h).
 *
 * Checkpoints: with checkpoint_path set, every finished trial (a bootstrap
 * attempt, a candidate's evaluation) is stored in that SQLite file — its
 * score, program state, LM usage and per-example results ({"i", "score",
 * "error"} per valset example) — under a key made of the run's inputs
 * (student state, datasets, options). A run
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

struct dx_tp_evaluator;

typedef struct dx_tp_opts {
    /* Accepting a bootstrapped trace: metric >= metric_threshold when the
     * threshold is > 0, else metric > 0 (DSPy: a truthy metric) — or, for
     * the LM-judged metrics, metric >= their own threshold (0.66), as
     * theirs return in DSPy when given a trace. */
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
    /* Budget: stop starting work once this many LM calls were made, or
     * this many US dollars spent (priced by the call's price table; 0 =
     * no limit). Work in flight finishes, so a run may end slightly over. */
    int64_t max_lm_calls;
    double max_cost_usd;
    /* SQLite checkpoint file (NULL = none); see the top of this file. */
    const char *checkpoint_path;
    /* HTML report written at the end (NULL = none). */
    const char *report_path;
    dx_eval_progress_mode progress; /* evaluations' progress; default AUTO */
    FILE *progress_out;
    /* Candidate evaluator (NULL = evaluate here with dx_evaluate): random
     * search and MIPROv2 hand it their candidate evaluations instead (see
     * dx_tp_eval_fn); dist_eval.h's dx_dist_tp_eval spreads them over the
     * nodes of a cluster. */
    struct dx_tp_evaluator *evaluator;
    /* Not an option: leave it 0. An optimizer notes here when it starts
     * and passes it on to the optimizers it runs itself. A
     * dx_evaluate_cancel_all after that point stops the optimizer with
     * DX_ECANCELED — at once while it waits for its runs or an evaluation,
     * else before it starts the next one — instead of letting a cut-short
     * evaluation score a candidate. */
    uint64_t cancel_generation;
} dx_tp_opts;

/* One (candidate, example) result of a candidate evaluator. */
typedef struct dx_tp_eval_row {
    double score;
    int error;          /* DX_OK or the example's failure code */
    char *error_msg;    /* NULL when ok; dx_malloc'd, freed by the caller */
    dx_usage_acc usage; /* the example's LM usage */
    bool done;          /* false: not scored (the evaluation failed) */
} dx_tp_eval_row;

/* Score n_cands candidate programs, each on the n_idx examples
 * val->items[idx[0..n_idx)], into rows[k * n_idx + i] (zeroed by the
 * caller, n_cands * n_idx entries) with opts' metric, as dx_evaluate would
 * (failed examples score 0). Called by the optimizer in its own context
 * (a process or a host thread) and must block until done. Candidates are
 * borrowed for the call. DX_OK when every row is done; any other code
 * fails the optimizer with it (diag says why). */
typedef int (*dx_tp_eval_fn)(void *ud, const dx_module *const *cands,
                             size_t n_cands, const dx_dataset *val,
                             const size_t *idx, size_t n_idx,
                             const struct dx_tp_opts *opts,
                             dx_tp_eval_row *rows, dx_diag *diag);

typedef struct dx_tp_evaluator {
    dx_tp_eval_fn fn;
    void *ud;
} dx_tp_evaluator;

typedef struct dx_tp_trial {
    int64_t id;    /* random search: the candidate seed (-3..n-1);
                         bootstrap: the train example index */
    char kind[32]; /* "zero_shot", "labeled", "bootstrap", "shuffled",
                         "bootstrap_example" */
    double score;  /* percent; bootstrap: 100 accepted / 0 rejected */
    bool from_checkpoint;
    /* The trial's LM usage (also for one restored from the checkpoint; the
     * result's usage counts only what this run spent). */
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
    /* dx_optimize (optimize.h): times the optimizer's process was
     * restarted after a crash; 0 from a direct call. */
    size_t restarts;
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

/* ---- instruction optimizers: COPRO and MIPROv2 ------------------------ */

/* DSPy's COPRO: per predictor, the prompt LM proposes breadth-1 new
 * (instruction, output prefix) pairs (one call with n completions at
 * init_temperature, DSPy's BasicGenerateInstruction prompt) besides the
 * current one; every candidate program is evaluated on the trainset; then
 * depth-1 rounds ask for breadth more given the scored attempts
 * (GenerateInstructionGivenAttempts). The best candidate over all rounds
 * and predictors is returned (its score on the trainset). */
typedef struct dx_copro_opts {
    size_t breadth;          /* 0 = 10; must be > 1 */
    size_t depth;            /* 0 = 3 */
    double init_temperature; /* 0 = 1.4 */
    /* Registered name of the LM client that writes instructions; NULL:
     * the run's LM (opts->call). */
    const char *prompt_lm_name;
} dx_copro_opts;

/* Uses opts' metric, concurrency, example_timeout_ms, call, max_lm_calls
 * (no new round or candidate starts once spent), checkpoint_path (every
 * proposal and every candidate's score) and report_path. copro may be
 * NULL (defaults). Trials: kind "instruction", id = the candidate's
 * number in evaluation order. DX_OK with *out the caller's; DX_EINVAL
 * (breadth 1, no metric...), DX_ESTATE, DX_ENOMEM, DX_EIO, and the prompt
 * LM's errors (DX_EPROVIDER, DX_EPARSE...) with diag. */
DX_API int dx_copro(const dx_module *student, const dx_dataset *trainset,
                    const dx_tp_opts *opts, const dx_copro_opts *copro,
                    dx_tp_result **out, dx_diag *diag);

typedef enum dx_mipro_auto {
    DX_MIPRO_AUTO_LIGHT = 0, /* DSPy's default: 6 candidates, valset 100 */
    DX_MIPRO_AUTO_MEDIUM,    /* 12 candidates, valset 300 */
    DX_MIPRO_AUTO_HEAVY,     /* 18 candidates, valset 1000 */
    DX_MIPRO_AUTO_NONE,      /* num_candidates and num_trials given */
} dx_mipro_auto;

/* DSPy's MIPROv2: (1) num_candidates demo sets per predictor, made as
 * random search makes its candidates (zero-shot, labeled, bootstrapped,
 * shuffled bootstraps; opts' max_bootstrapped_demos and max_labeled_demos,
 * whose MIPRO defaults are 4 and 4); (2) instruction candidates per
 * predictor from DSPy's grounded proposer, the current instruction first.
 * The proposer is grounded as DSPy's is by default: a dataset summary
 * (the prompt LM writes observations on the trainset 10 examples at a
 * time, at most 10 calls, stopping after 5 answers of COMPLETE, then
 * summarises them), a description of the program and of the predictor
 * (two calls per proposal), demos of the task and a random prompting tip.
 * One difference: DSPy shows the LM the program's Python source; dspex
 * has none, so the "program_code" it shows is the program's structure as
 * text (its type name, then each predictor's path, signature and
 * instructions). Examples are shown as DSPy shows them, Python's repr of
 * the Example objects; see mipro.c for where that rendering differs.
 * (3) num_trials trials of a seeded TPE sampler over (instruction, demo
 * set) per predictor, each scored on a minibatch of the valset, the
 * best-averaging untried combination fully evaluated every
 * minibatch_full_eval_steps trials and at the end. Without minibatches
 * every trial is a full evaluation.
 *
 * Every proposer call goes to the prompt LM at DSPy's temperatures (1.0
 * for the dataset summary, init_temperature for the rest), counts against
 * max_lm_calls / max_cost_usd, and is checkpointed (the summary, each
 * proposal's descriptions and instruction), so a resumed run asks the LM
 * nothing it already answered. As in DSPy, a summary or description the
 * LM fails to give is left out (the dataset description field is dropped;
 * the descriptions read "Not available" / "Not provided") rather than
 * stopping the run. */
typedef struct dx_mipro_opts {
    dx_mipro_auto auto_mode;
    size_t num_candidates; /* AUTO_NONE: demo sets and instructions */
    size_t num_trials;     /* AUTO_NONE */
    bool no_minibatch;     /* AUTO_NONE: full evaluations only */
    size_t minibatch_size; /* 0 = 35 */
    size_t minibatch_full_eval_steps; /* 0 = 5 */
    int64_t seed;                     /* DSPy's default 9 when has_seed */
    bool has_seed;
    double init_temperature; /* proposer temperature; 0 = 1.0 */
    /* The proposer's parts DSPy turns on by default (its
     * fewshot_aware_proposer and tip_aware_proposer; the dataset summary
     * and the program description are switched off at the end). */
    bool no_task_demos;
    bool no_tip;
    const char *prompt_lm_name; /* NULL: the run's LM */
    /* Zero-shot: no demo sets (DSPy: both demo limits 0). */
    bool zero_shot;
    /* DSPy's data_aware_proposer=False: no dataset summary (saves up to 11
     * prompt-LM calls). */
    bool no_data_summary;
    /* DSPy's program_aware_proposer=False: no program and predictor
     * descriptions (saves 2 prompt-LM calls per proposal). */
    bool no_program_description;
} dx_mipro_opts;

/* trainset and valset (NULL: the last 80% of trainset, as DSPy). Trials:
 * kind "default" (the student's full evaluation), "minibatch" or "full",
 * id = DSPy's trial number. The result's score is the best full
 * evaluation. Same errors as dx_copro, and DX_EINVAL for a minibatch
 * larger than the valset. */
DX_API int dx_mipro(const dx_module *student, const dx_dataset *trainset,
                    const dx_dataset *valset, const dx_tp_opts *opts,
                    const dx_mipro_opts *mipro, dx_tp_result **out,
                    dx_diag *diag);

#endif
