/*
 * optimize.h — any optimizer of teleprompt.h run as a supervised actor.
 *
 * dx_optimize starts a small tree of its own: a host process, which
 * supervises the optimizer through a one_for_one supervisor whose only
 * child (id "optimizer", restart transient) is the process that runs the
 * optimizer. If that process crashes (a fault in a user callback that
 * runs in it, such as a module's ud_copy, an exit signal, a failed
 * runtime assertion), the supervisor starts it again and the optimizer
 * resumes from its SQLite checkpoint: the trials it had finished are not
 * run again, and it ends with the program and score an uninterrupted run
 * gives. Crashes of the processes the optimizer fans work out to (a metric
 * that crashes on one example) are the optimizer's own business, as in a
 * direct call; they never restart it.
 *
 * The tree is not linked to the caller: a crash, or the supervisor giving
 * up, never takes the caller down. The optimizer's process is labeled
 * "dx_optimize:<kind name>" (dx_process_info), so tools and tests can
 * find it.
 *
 * What a crash costs: the crashed process's runtime resources (the
 * process, its links, monitors, registered names) are released as for
 * any process, but the optimizers keep their working state on the
 * dx_malloc heap, not in process memory, so the state the crashed run had
 * built (candidate programs, its SQLite connection) is lost with it. It is
 * bounded by one run's state per crash; the checkpoint is what survives.
 */
#ifndef DSPEX_OPTIMIZE_H
#define DSPEX_OPTIMIZE_H

#include <stdbool.h>
#include <stddef.h>

#include "diag.h"
#include "export.h"
#include "teleprompt.h"

typedef enum dx_optimizer_kind {
    DX_OPT_LABELED = 0,   /* dx_labeled_fewshot (labeled_k, sampled) */
    DX_OPT_BOOTSTRAP,     /* dx_bootstrap_fewshot */
    DX_OPT_RANDOM_SEARCH, /* dx_random_search */
    DX_OPT_COPRO,         /* dx_copro */
    DX_OPT_MIPRO,         /* dx_mipro */
} dx_optimizer_kind;

/* What to run; the arguments of the direct call, in one struct.
 *
 * Ownership: everything is borrowed for the duration of dx_optimize (it
 * blocks, so the caller's objects outlive every restart). The pointed-to
 * objects (student, teacher, datasets, metric.ud, call.prices) are read
 * by another process, so they must be heap or static memory, never a
 * local variable of a calling process (processes' stacks are copied out
 * when they park; see supervisor.h). The strings in opts, copro and mipro
 * are copied, so they may be anything. */
typedef struct dx_optimize_spec {
    dx_optimizer_kind kind;
    const dx_module *student;
    const dx_module *teacher; /* BOOTSTRAP, RANDOM_SEARCH; may be NULL */
    const dx_dataset *trainset;
    const dx_dataset *valset; /* RANDOM_SEARCH, MIPRO; may be NULL */
    dx_tp_opts opts;          /* all but LABELED */
    dx_copro_opts copro;      /* COPRO */
    dx_mipro_opts mipro;      /* MIPRO */
    size_t labeled_k;         /* LABELED: demos per predictor; 0 = 16 */
    bool labeled_no_sample;   /* LABELED: the first k, not a sample */
    /* Restarts of the optimizer's process allowed over the whole run;
     * 0 = 3, negative = none (the first crash fails the call). */
    int max_restarts;
} dx_optimize_spec;

DX_API const char *dx_optimizer_name(dx_optimizer_kind kind);

/* Run spec's optimizer under a supervisor of its own (see the top of this
 * file) and wait for it. The checkpoint is opts.checkpoint_path, or, when
 * that is NULL, a temporary SQLite file in $TMPDIR (else /tmp) that is
 * removed before the call returns.
 *
 * Returns what the optimizer returns, with *out the caller's on DX_OK
 * (free it with dx_tp_result_free; its `restarts` member counts the
 * restarts the run needed) and NULL otherwise; the optimizer's result is
 * handed over exactly once, from the run that finished. DX_EDOWN when the
 * optimizer's process crashed more than max_restarts times: diag has the
 * count and the last crash reason. DX_EINVAL for a NULL spec, student,
 * trainset or out, or an unknown kind; DX_ESTATE when the runtime is not
 * running; DX_EIO when the temporary checkpoint cannot be created;
 * DX_ENOMEM. From a host thread or a process (the process blocks in a
 * receive, not its scheduler thread). If the calling process is killed
 * while it waits, the tree stops the optimizer and ends. */
DX_API int dx_optimize(const dx_optimize_spec *spec, dx_tp_result **out,
                       dx_diag *diag);

#endif
