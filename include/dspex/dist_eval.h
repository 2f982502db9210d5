/*
 * dist_eval.h — Evaluate spread over the nodes of a cluster (node.h). A
 * coordinator process owns the dataset's index range cut into shards;
 * worker processes on any node pull one shard at a time, run dx_evaluate on
 * it with their own program, LM client and cache, and send back one score
 * per example. A worker that goes away (its node dies, it crashes) has its
 * unfinished shard put back at the front of the queue; results for an
 * example already scored are ignored, so every example is scored exactly
 * once. With the same program, dataset and LM cache contents on every
 * node, the scores equal those of a single-node dx_evaluate.
 *
 * Threads: both functions run in the calling process (they return
 * DX_ENOTPROC elsewhere) and park it while they wait.
 */
#ifndef DSPEX_DIST_EVAL_H
#define DSPEX_DIST_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "evaluate.h"
#include "export.h"
#include "runtime.h"
#include "teleprompt.h"

struct dx_dist_eval_result;

typedef struct dx_dist_eval_opts {
    size_t shard_size;  /* examples per shard; 0 = 8 */
    size_t min_workers; /* hand out nothing before this many asked; 0 = 1 */
    int64_t timeout_ms; /* whole run; 0 = 600,000 */
    /* Name the coordinator registers while it runs; NULL = "dx_dist_eval".
     * Workers address {name, coordinator node}. */
    const char *name;
    /* Called in the coordinator once per example as its score is recorded
     * (in the order shards come back), so a caller can keep each one as it
     * arrives (a file, a database) and a coordinator that is killed loses
     * none it was told of. Must not block for long. Not called for
     * examples taken from `resume`. */
    void (*on_result)(size_t index, double score, int error, void *ud);
    void *on_result_ud;
    /* What an earlier run scored (its result, DX_ETIMEDOUT or DX_ECANCELED
     * included, or one the caller filled from what on_result kept): each
     * example done without an error is taken as it is and not handed out
     * again; shards are cut over the others only. Its n must be this
     * run's (else DX_EINVAL). NULL: every example runs. Read only. */
    const struct dx_dist_eval_result *resume;
} dx_dist_eval_opts;

typedef struct dx_dist_eval_result {
    size_t n;        /* examples */
    size_t n_done;   /* scored */
    size_t n_errors; /* scored with a failure (error != DX_OK) */
    double score;    /* percent, 100 * sum / n_done, 2 decimals */
    double *scores;  /* n entries, dataset order */
    int *errors;     /* n entries: DX_OK or the example's failure code */
    bool *done;      /* n entries */
    size_t shards, requeued; /* shards cut; shards handed out again */
    size_t workers;          /* distinct workers that took part */
    size_t n_resumed;        /* taken from opts.resume (in n_done) */
} dx_dist_eval_result;

/* Coordinate the evaluation of examples 0..n-1. On DX_OK *out (caller frees
 * with dx_dist_eval_result_free) has every example scored. DX_ETIMEDOUT:
 * the run did not finish in time; DX_ECANCELED: dx_evaluate_cancel_all ran
 * on this node meanwhile (both: *out still holds what was scored, and the
 * workers drop the shards they hold, stopping their evaluations and LM
 * calls; give it as opts.resume to run only the rest); DX_EEXIST: the
 * name is taken; DX_ENOTPROC; DX_EINVAL (n == 0, or a resume of another
 * n); DX_ENOMEM. Process. */
DX_API int dx_dist_evaluate(size_t n, const dx_dist_eval_opts *opts,
                            dx_dist_eval_result **out);
DX_API void dx_dist_eval_result_free(dx_dist_eval_result *r);

/* Called by a worker before it evaluates a shard [start, end) (progress). */
typedef void (*dx_dist_eval_shard_fn)(size_t start, size_t end, void *ud);

/* Work for the coordinator registered as `name` (NULL = "dx_dist_eval") on
 * `coord_node` until it says done: pull a shard, dx_evaluate it with m on
 * the matching examples of ds and opts, report the scores. Each shard runs
 * in a process of its own, so a coordinator that ends without it
 * (cancelled, out of time) has it stopped at once; m, ds and what opts
 * points to must therefore not live on the calling process's stack (opts
 * itself and its lm_name and rollout_id are copied). *shards_out
 * (optional) counts the shards done. opts' on_row and resume are not
 * used: a shard's rows are not the dataset's. DX_OK when the coordinator
 * finished; DX_ETIMEDOUT when it stopped answering for timeout_ms
 * (0 = 60,000); DX_EINVAL; DX_ENOTPROC. Process. */
DX_API int dx_dist_eval_worker(const char *coord_node, const char *name,
                               const dx_module *m, const dx_dataset *ds,
                               const dx_eval_opts *opts, int64_t timeout_ms,
                               dx_dist_eval_shard_fn on_shard, void *ud,
                               size_t *shards_out);

/* ---- distributed optimization ------------------------------------------ */

/* A candidate evaluator (teleprompt.h's dx_tp_evaluator) that spreads an
 * optimizer's candidate evaluations over worker nodes. A coordinator
 * process, registered as `name` while it runs, lives across the
 * optimizer's evaluations: each evaluation (random search: all candidates
 * as one job; MIPROv2: each trial's minibatch or full evaluation) is cut
 * into shards of (candidate state as DSPy-layout JSON, example positions)
 * that workers pull. A worker loads the state into a reset copy of its own
 * base program (the same program on every node), evaluates the examples of
 * its own copy of the valset and reports score, error and LM usage per
 * example. A worker that goes away has its shard handed out again; a
 * (candidate, example) is recorded once. Between evaluations workers wait
 * (their request stays queued). Workers score with their own evaluation
 * options (metric, concurrency, LM client): give them the optimizer's.
 * With the same program, valset, metric and LM answers on every node, the
 * optimizer's result, scores and trial records equal a single-node run's.
 */
typedef struct dx_dist_tp dx_dist_tp;

typedef struct dx_dist_tp_opts {
    size_t shard_size;      /* examples per shard; 0 = 8 */
    size_t min_workers;     /* hand out nothing before this many asked;
                               0 = 1 */
    int64_t job_timeout_ms; /* per evaluation; 0 = 600,000 */
    const char *name;       /* NULL = "dx_dist_tp" */
} dx_dist_tp_opts;

typedef struct dx_dist_tp_stats {
    size_t jobs;     /* evaluations finished */
    size_t shards;   /* shards cut */
    size_t requeued; /* shards handed out again */
    size_t workers;  /* distinct workers that took part */
} dx_dist_tp_stats;

/* Start the coordinator. On DX_OK *out is the caller's until
 * dx_dist_tp_stop. DX_EEXIST (name taken), DX_ENOMEM, DX_ESTATE (runtime
 * not running). Any thread. */
DX_API int dx_dist_tp_start(const dx_dist_tp_opts *opts, dx_dist_tp **out);

/* The evaluator to put in dx_tp_opts.evaluator (point at a copy that
 * outlives the optimizer call). The optimizer must then run in a process
 * (its evaluations return DX_ENOTPROC elsewhere); an evaluation fails
 * with DX_ETIMEDOUT after job_timeout_ms, DX_EDOWN if the coordinator is
 * gone. */
DX_API dx_tp_evaluator dx_dist_tp_evaluator(dx_dist_tp *h);

/* Counts so far (any thread). */
DX_API void dx_dist_tp_get_stats(const dx_dist_tp *h, dx_dist_tp_stats *out);

/* Tell every known worker it is done, stop the coordinator and free h
 * (NULL: no-op). Do not call while an evaluation runs. DX_OK. Any thread.
 */
DX_API int dx_dist_tp_stop(dx_dist_tp *h);

/* Called by a worker before it evaluates a shard: the candidate's number
 * in its evaluation and the shard's example count. */
typedef void (*dx_dist_tp_shard_fn)(size_t cand, size_t n_examples, void *ud);

/* Work for the coordinator registered as `name` (NULL = "dx_dist_tp") on
 * `coord_node` until it says done: pull a shard, load its candidate state
 * into a reset copy of base, dx_evaluate the shard's examples of val with
 * opts, report. *shards_out (optional) counts the shards done. DX_OK when
 * the coordinator stopped; DX_ETIMEDOUT when nothing came for timeout_ms
 * (0 = 600,000; between evaluations a worker waits, so allow for the
 * optimizer's own work); DX_EINVAL (bad arguments, or a shard that names
 * examples val does not have or a state base cannot load: the worker
 * stops, and its shard goes to another worker); DX_ENOTPROC; DX_ENOMEM.
 * Each shard runs in a process of its own, so when the optimizer is
 * cancelled (dx_evaluate_cancel_all on its node) or the coordinator stops,
 * the worker stops that shard's evaluation (its examples and their LM
 * calls) at once and reports nothing for it. base, val and what opts
 * points to (metric.ud, call.prices, ...) must not live on the calling
 * process's stack, which that process cannot share; opts itself and its
 * lm_name and rollout_id strings are copied. Process. */
DX_API int dx_dist_tp_worker(const char *coord_node, const char *name,
                             const dx_module *base, const dx_dataset *val,
                             const dx_eval_opts *opts, int64_t timeout_ms,
                             dx_dist_tp_shard_fn on_shard, void *ud,
                             size_t *shards_out);

#endif
