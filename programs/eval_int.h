/*
 * eval_int.h — what evaluate.c, eval_report.c and eval_journal.c share:
 * progress display, percentiles, a row's JSONL line. Not installed.
 */
#ifndef DSPEX_EVAL_INT_H
#define DSPEX_EVAL_INT_H

#include <stdio.h>

#include "dspex/evaluate.h"
#include "dspex/runtime.h"

/* Progress of one evaluation. The bar (a TTY) is redrawn in place at most
 * ~10 times a second: [#####.....] done/total, running score (percent of
 * the done examples), errors, elapsed and ETA. Lines mode prints one plain
 * line every interval_s seconds (and at the end). OFF prints nothing.
 * AUTO picks BAR when isatty(fileno(out)), else LINES. Owned by the one
 * thread/process that runs the evaluation loop. */
typedef struct dx__progress dx__progress;

dx__progress *dx__progress_new(FILE *out, dx_eval_progress_mode mode,
                               size_t total, double interval_s);
/* Report the state now (prints if due). now_s: seconds since start. */
void dx__progress_update(dx__progress *p, size_t done, size_t errors,
                         double score_sum, double now_s);
/* When (seconds since start) an update with no news would next print
 * something: the bar's elapsed time and ETA, the next line. INFINITY when
 * nothing is shown. The evaluation loop sleeps no longer than this. */
double dx__progress_next_s(const dx__progress *p);
/* n of the done examples were taken from an earlier run: the ETA counts
 * the pace of the others. NULL is a no-op. */
void dx__progress_resumed(dx__progress *p, size_t n);
/* Final line (always printed unless OFF); ends the bar's line. */
void dx__progress_finish(dx__progress *p, size_t done, size_t errors,
                         double score_sum, double now_s, bool stopped);
void dx__progress_free(dx__progress *p);

/* ---- cancellation (evaluate.c) ----
 *
 * dx_evaluate_cancel_all's count so far: a run notes it when it starts and
 * stops once it has moved (an optimizer too, between evaluations). */
uint64_t dx__cancel_generation(void);

/* A loop that waits for its own processes' messages and must notice a
 * cancellation at once (an evaluation's coordinator, the bootstrap's)
 * starts a watch in its process: each dx_evaluate_cancel_all then sends
 * that process a message tagged DX__TAG_CANCEL_WAKE whose ref is
 * dx__cancel_watch_ref(watch). NULL when no wake-up can be arranged (no
 * descriptor or thread to be had): the loop then looks at the counter
 * every DX__CANCEL_POLL_MS. dx__cancel_watch_stop ends the watch and drops
 * the wake-ups that came; NULL is a no-op. Process. */
#define DX__TAG_CANCEL_WAKE 0x65766301
#define DX__CANCEL_POLL_MS 100
typedef struct dx__cancel_watch dx__cancel_watch;
dx__cancel_watch *dx__cancel_watch_start(void);
dx_ref dx__cancel_watch_ref(const dx__cancel_watch *w);
void dx__cancel_watch_stop(dx__cancel_watch *w);

/* A message with this tag (any payload) sent to a process that is in
 * dx_evaluate stops that evaluation as a cancellation does: examples in
 * flight are killed and it returns what finished, cancelled = true. Only
 * for the process dx_evaluate was called from (not a host thread's), and
 * only where that process runs one evaluation: a stop that comes after
 * it ended would stop the next. The distributed worker's shard process. */
#define DX__TAG_EVAL_STOP 0x65766302

/* What an evaluation's examples read beyond their own copies — the
 * module, the dataset's examples, what the options point to — is the
 * caller's, and must outlive them. A caller whose process may be killed
 * mid-evaluation, freeing what it owns as it goes (a tie), cannot promise
 * that: the coordinator dies with it and ends its examples with kills,
 * which take effect as each example next yields, not at once. A keep
 * lets the caller's data stay: each example holds it (hold(ud)) from
 * before its process starts until the evaluation's record of it is freed
 * (release(ud)), which is after that process has ended. release may run
 * on any scheduler thread, outside any process. The distributed workers'
 * shard tasks (dist_task_int.h) keep themselves this way. */
typedef struct dx__eval_keep {
    void (*hold)(void *ud);
    void (*release)(void *ud);
    void *ud;
} dx__eval_keep;
/* The common keep: an object (obj) shared by its owner's process and the
 * examples of the evaluations it starts. The owner holds one reference
 * through a tie, so an owner whose process is stopped or crashes drops it
 * as it ends; each example holds one while it lives (dx__kept_keep).
 * free_fn(obj) runs with the last reference, on any thread. The
 * optimizers keep their state this way, Parallel its items. NULL on OOM
 * (then obj is not taken). */
typedef struct dx__kept dx__kept;
dx__kept *dx__kept_new(void *obj, void (*free_fn)(void *obj));
/* The owner is done with it: cuts the tie, drops its reference. */
void dx__kept_done(dx__kept *k);
/* The keep that makes each example of an evaluation hold k. */
dx__eval_keep dx__kept_keep(dx__kept *k);
/* dx_evaluate with a keep (NULL: none, as dx_evaluate). */
int dx__evaluate_kept(const dx_module *m, const dx_dataset *ds,
                      const dx_eval_opts *opts, const dx__eval_keep *keep,
                      dx_eval_result **out, dx_diag *diag);
/* Whether a built-in metric has what it compares: the example's label
 * field and the prediction's field (for passage match, its passages).
 * DSPy's metrics raise on a missing attribute, and its Evaluate counts the
 * example as an error; dx_metric_score alone scores it 0. DX_OK, or
 * DX_EINVAL with diag saying which field is missing where. A custom
 * metric: DX_OK. */
int dx__metric_fields_check(const dx_metric *m, const dx_example *example,
                            const dx_prediction *pred, dx_diag *diag);
/* ---- the LM-judged metrics (judge.c) ---- */

/* SemanticF1 / CompleteAndGrounded. */
bool dx__metric_is_judged(const dx_metric *m);
/* The score a bootstrapped demo needs when the optimizer sets no
 * metric_threshold: the judged kinds' threshold (DSPy's 0.66 by default);
 * 0 for the others (any score above 0 passes). */
double dx__metric_pass_mark(const dx_metric *m);
/* The judged kinds' dx__metric_fields_check: the example's question and
 * label fields, the prediction's response (and retrieved context). */
int dx__metric_judge_fields_check(const dx_metric *m, const dx_example *example,
                                  const dx_prediction *pred, dx_diag *diag);
/* Score with a judged kind in the calling process: the judge runs with
 * call's LM, adapter, cache namespace and prices (call may be NULL) until
 * deadline_ms (dx_now_ms based), and its usage is added to *usage (may be
 * NULL) whatever the outcome. On failure: NaN, *rc the code and diag
 * (may be NULL) the judge's reason. Process. */
double dx__metric_judge(const dx_metric *m, const dx_example *example,
                        const dx_prediction *pred, const dx_call_opts *call,
                        int64_t deadline_ms, dx_usage_acc *usage, int *rc,
                        dx_diag *diag);

/* A result over ds with every row not done (index, usage named
 * "example"); NULL when out of memory. With copy_examples each row also
 * gets a copy of its example now; without, the caller gives each row its
 * copy later (dx__eval_row_take_example), as Evaluate does when the row is
 * recorded, so a large dataset is not copied before its first example
 * starts. */
dx_eval_result *dx__eval_result_new(const dx_dataset *ds, bool copy_examples);
/* Give row i of r a copy of ds's example i unless it has one. DX_OK or
 * DX_ENOMEM (the row then has none). */
int dx__eval_row_take_example(dx_eval_result *r, const dx_dataset *ds,
                              size_t i);

/* Make key (copied; NULL: none) r's run_key and every row's. DX_OK or
 * DX_ENOMEM (r then has none). */
int dx__eval_result_set_key(dx_eval_result *r, const char *key);

/* r's latency percentiles, over its rows done without an error. */
void dx__eval_result_latencies(dx_eval_result *r);

/* Append row's JSONL line (dx_eval_result_write_jsonl's, with its
 * newline) to b. */
struct dx__sb;
void dx__eval_row_jsonl(struct dx__sb *b, const dx_eval_row *row);

/* The q-th percentile (0..100) of v[0..n) by linear interpolation between
 * closest ranks (numpy's default); sorts v in place. 0 for n == 0. */
double dx__percentile(double *v, size_t n, double q);
/* The nq percentiles qs[] of v[0..n) into out[], with one sort of v. */
void dx__percentiles(double *v, size_t n, const double *qs, double *out,
                     size_t nq);

#endif
