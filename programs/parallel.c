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
#include <stdint.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/modules.h"
#include "eval_int.h"

#define DEFAULT_MAX_ERRORS 10

static void free_dataset(void *ds)
{
    dx_dataset_free(ds);
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
     * them until each item's process has ended (dx__kept, eval_int.h). */
    dx__kept *kept = dx__kept_new(ds, free_dataset);
    if (!kept) {
        dx_dataset_free(ds);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    dx__eval_keep keep = dx__kept_keep(kept);
    dx_eval_result *er = NULL;
    rc = dx__evaluate_kept(m, ds, &eo, &keep, &er, diag);
    dx__kept_done(kept);
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
