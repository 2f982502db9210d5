/*
 * dist_task_int.h — a worker's shard, run in a process of its own so the
 * worker can drop it (dist_task.c). Shared by the distributed Evaluate's
 * and the distributed optimizer's workers (dist_eval.c, dist_opt.c).
 *
 * Ownership: a task is shared by the worker and the process that runs it,
 * one reference each, and by each example of the evaluation that process
 * runs (dx__task_keep); whichever is done last frees it (free_fn). The
 * process reads only the task: a process's stack is not readable from
 * another, so what the shard needs is copied into it.
 */
#ifndef DSPEX_DIST_TASK_INT_H
#define DSPEX_DIST_TASK_INT_H

#include <stdatomic.h>
#include <stdbool.h>

#include "dspex/evaluate.h"
#include "dspex/runtime.h"
#include "eval_int.h"

typedef struct dx__task {
    atomic_int refs;
    atomic_bool done;                    /* run returned */
    dx_pid pid;                          /* the process running it */
    void (*run)(struct dx__task *t);     /* in that process */
    void (*free_fn)(struct dx__task *t); /* frees the struct t heads */
    /* The worker's evaluation options, as dx__task_set_opts copied them. */
    dx_eval_opts opts;
    char *lm_name, *rollout_id;
} dx__task;

/* Copy opts (NULL: the defaults) into t, its lm_name and rollout_id
 * strings too. false when out of memory (nothing was kept). */
bool dx__task_set_opts(dx__task *t, const dx_eval_opts *opts);
/* Free the strings dx__task_set_opts copied (for free_fn). */
void dx__task_clear_opts(dx__task *t);

/* Run t->run in a process of its own and wait for it to end, or for a
 * message is_abort(m, ud) accepts: then the evaluation that process runs
 * is stopped (DX__TAG_EVAL_STOP: its examples and their LM calls are
 * killed and waited for) and its end awaited. DX_OK (run returned),
 * DX_ECANCELED (aborted: what it produced is to be dropped), DX_EDOWN (the
 * process died), or the spawn's error. Either way t is the caller's again
 * until dx__task_unref. t's refs and done are set here. Process. */
int dx__task_run_stoppable(dx__task *t,
                           bool (*is_abort)(const dx_msg *m, void *ud),
                           void *ud);
void dx__task_unref(dx__task *t);
/* A keep (eval_int.h) that holds t for each example of an evaluation run
 * for it: if the task's process is killed mid-shard, what the task owns
 * (the options' strings, a shard's program and examples) is freed only
 * once the last of those examples has ended. */
dx__eval_keep dx__task_keep(dx__task *t);

#endif
