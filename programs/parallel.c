/*
 * parallel.c — Parallel (modules.h): a module over many inputs, each in a
 * process of its own, a bounded number at once, results in input order.
 *
 * Evaluate already is that engine (a process per example, a concurrency
 * bound, isolation of crashes and timeouts, rows in dataset order, an
 * error budget), so Parallel is Evaluate with a metric that scores
 * nothing, its rows turned into items. DSPy's Parallel fails once
 * max_errors items failed; Evaluate stops after more than its max_errors,
 * hence the off-by-one below.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/modules.h"
#include "dspex/runtime.h"
#include "eval_int.h"

#define DEFAULT_MAX_ERRORS 10

/* The items' dataset, shared by the call and each item in flight. */
typedef struct par_keep {
    atomic_int refs;
    dx_dataset *ds;
} par_keep;

static void keep_hold(void *ud)
{
    par_keep *pk = ud;
    atomic_fetch_add_explicit(&pk->refs, 1, memory_order_relaxed);
}

static void keep_release(void *ud)
{
    par_keep *pk = ud;
    if (atomic_fetch_sub_explicit(&pk->refs, 1, memory_order_acq_rel) != 1)
        return;
    dx_dataset_free(pk->ds);
    dx_free(pk);
}

static double no_score(const dx_example *ex, const dx_prediction *pred,
                       const dx_trace *trace, void *ud)
{
    (void)ex;
    (void)pred;
    (void)trace;
    (void)ud;
    return 0;
}

void dx_parallel_result_free(dx_parallel_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++) {
        dx_prediction_free(r->items[i].pred);
        dx_free(r->items[i].error_msg);
    }
    dx_free(r->items);
    dx_free(r);
}

/* Every input as a dataset example with an input designation (all its
 * keys when it has none: DSPy calls module(**dict)). */
static int build_dataset(const dx_example *const *inputs, size_t n,
                         dx_dataset **out)
{
    dx_dataset *ds = dx_dataset_new();
    if (!ds)
        return DX_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        dx_example *ex = dx_example_copy(inputs[i]);
        int rc = ex ? DX_OK : DX_ENOMEM;
        if (rc == DX_OK && !dx_example_has_inputs(ex)) {
            size_t k = dx_example_len(ex);
            const char **keys = dx_calloc(k ? k : 1, sizeof *keys);
            if (!keys) {
                rc = DX_ENOMEM;
            } else {
                for (size_t j = 0; j < k; j++)
                    keys[j] = dx_example_key(ex, j);
                rc = dx_example_with_inputs(ex, keys, k);
                dx_free(keys);
            }
        }
        if (rc == DX_OK)
            rc = dx_dataset_append(ds, ex);
        else
            dx_example_free(ex);
        if (rc != DX_OK) {
            dx_dataset_free(ds);
            return rc;
        }
    }
    *out = ds;
    return DX_OK;
}

int dx_parallel_run(const dx_module *m, const dx_example *const *inputs,
                    size_t n, const dx_parallel_opts *opts,
                    dx_parallel_result **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!m || !out || (n && !inputs))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_parallel_run: NULL module, inputs or out");
    for (size_t i = 0; i < n; i++)
        if (!inputs[i])
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "dx_parallel_run: input %zu is NULL", i);
    dx_parallel_opts o = opts ? *opts : (dx_parallel_opts){0};
    if (!opts)
        o.call.lm = DX_NOPID;
    size_t max_errors = o.max_errors ? o.max_errors : DEFAULT_MAX_ERRORS;

    dx_dataset *ds = NULL;
    int rc = build_dataset(inputs, n, &ds);
    if (rc != DX_OK)
        return dx_diag_set(diag, rc, 0, 0, "dx_parallel_run: %s",
                           dx_strerror(rc));
    dx_eval_opts eo = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = no_score},
        .concurrency = o.num_threads,
        /* Evaluate stops after more than max_errors; DSPy at max_errors. */
        .max_errors = max_errors == SIZE_MAX ? 0
                      : max_errors > 1       ? max_errors - 1
                                             : 0,
        .example_timeout_ms = o.timeout_ms,
        .call = o.call,
        .progress = DX_EVAL_PROGRESS_OFF,
    };
    /* The items' examples outlive a caller killed mid-run: the items hold
     * them until each item's process has ended (a keep, eval_int.h), and
     * the caller's share is tied to its process. */
    par_keep *pk = dx_calloc(1, sizeof *pk);
    if (!pk) {
        dx_dataset_free(ds);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    atomic_init(&pk->refs, 1);
    pk->ds = ds;
    dx_ptie *tie = dx_ptie_new(pk, keep_release);
    dx__eval_keep keep = {keep_hold, keep_release, pk};
    dx_eval_result *er = NULL;
    rc = dx__evaluate_kept(m, ds, &eo, &keep, &er, diag);
    dx_ptie_cut(tie);
    keep_release(pk);
    if (rc != DX_OK)
        return rc;

    dx_parallel_result *r = dx_calloc(1, sizeof *r);
    dx_parallel_item *items = n ? dx_calloc(n, sizeof *items) : NULL;
    if (!r || (n && !items)) {
        dx_free(r);
        dx_free(items);
        dx_eval_result_free(er);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    r->n = n;
    r->items = items;
    r->n_errors = er->n_errors;
    r->usage = er->usage;
    size_t first_failed = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        dx_eval_row *row = &er->rows[i];
        items[i].done = row->done;
        items[i].error = row->error;
        items[i].pred = row->pred;
        row->pred = NULL;
        items[i].error_msg = row->error_msg;
        row->error_msg = NULL;
        if (row->done && row->error != DX_OK && first_failed == SIZE_MAX)
            first_failed = i;
    }
    bool cancelled = er->cancelled;
    size_t n_done = er->n_done;
    dx_eval_result_free(er);
    *out = r;
    if (cancelled)
        return dx_diag_set(diag, DX_ECANCELED, 0, 0,
                           "Parallel: cancelled (dx_evaluate_cancel_all) "
                           "with %zu of %zu items done",
                           n_done, n);
    if (max_errors != SIZE_MAX && r->n_errors >= max_errors)
        return dx_diag_set(diag, DX_ELIMIT, 0, 0,
                           "Parallel: %zu of %zu items failed (max_errors "
                           "%zu); item %zu: %s",
                           r->n_errors, n, max_errors, first_failed,
                           items[first_failed].error_msg
                               ? items[first_failed].error_msg
                               : dx_strerror(items[first_failed].error));
    return DX_OK;
}
