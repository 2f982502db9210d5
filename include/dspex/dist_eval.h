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

typedef struct dx_dist_eval_opts {
    size_t shard_size;  /* examples per shard; 0 = 8 */
    size_t min_workers; /* hand out nothing before this many asked; 0 = 1 */
    int64_t timeout_ms; /* whole run; 0 = 600,000 */
    /* Name the coordinator registers while it runs; NULL = "dx_dist_eval".
     * Workers address {name, coordinator node}. */
    const char *name;
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
} dx_dist_eval_result;

/* Coordinate the evaluation of examples 0..n-1. On DX_OK *out (caller frees
 * with dx_dist_eval_result_free) has every example scored. DX_ETIMEDOUT:
 * the run did not finish in time (*out still holds what was scored);
 * DX_EEXIST: the name is taken; DX_ENOTPROC; DX_EINVAL (n == 0);
 * DX_ENOMEM. Process. */
DX_API int dx_dist_evaluate(size_t n, const dx_dist_eval_opts *opts,
                            dx_dist_eval_result **out);
DX_API void dx_dist_eval_result_free(dx_dist_eval_result *r);

/* Called by a worker before it evaluates a shard [start, end) (progress). */
typedef void (*dx_dist_eval_shard_fn)(size_t start, size_t end, void *ud);

/* Work for the coordinator registered as `name` (NULL = "dx_dist_eval") on
 * `coord_node` until it says done: pull a shard, dx_evaluate it with m on
 * the matching examples of ds and opts, report the scores. *shards_out
 * (optional) counts the shards done. DX_OK when the coordinator finished;
 * DX_ETIMEDOUT when it stopped answering for timeout_ms (0 = 60,000);
 * DX_EINVAL; DX_ENOTPROC. Process. */
DX_API int dx_dist_eval_worker(const char *coord_node, const char *name,
                               const dx_module *m, const dx_dataset *ds,
                               const dx_eval_opts *opts, int64_t timeout_ms,
                               dx_dist_eval_shard_fn on_shard, void *ud,
                               size_t *shards_out);

#endif
