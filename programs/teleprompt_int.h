/*
 * teleprompt_int.h — what the optimizers share (teleprompt.c defines it;
 * copro.c and mipro.c use it): option defaults, the result and trial log,
 * telemetry events, candidate evaluation and the SQLite checkpoint store.
 * Not installed.
 */
#ifndef DSPEX_TELEPROMPT_INT_H
#define DSPEX_TELEPROMPT_INT_H

#include <cjson/cJSON.h>
#include <sqlite3.h>
#include <stdatomic.h>

#include "dspex/telemetry.h"
#include "dspex/teleprompt.h"
#include "eval_int.h"

/* opts with its zero members replaced by the defaults. */
dx_tp_opts dx__tp_normalized(const dx_tp_opts *in);
/* DX_ECANCELED (diag says so) once dx_evaluate_cancel_all was called since
 * o was normalized, the optimizer's start; else DX_OK. */
int dx__tp_check_cancel(const dx_tp_opts *o, dx_diag *diag);

/* The checks every optimizer makes first (NULLs, a custom metric without
 * a function, runtime not running, examples without inputs); sets *out to
 * NULL and initialises cJSON's allocator. DX_OK or the error with diag. */
int dx__tp_check_opts(const dx_module *student, const dx_dataset *train,
                      const dx_tp_opts *opts, dx_tp_result **out,
                      dx_diag *diag);

/* An empty result (score -1). NULL on OOM. */
dx_tp_result *dx__tp_result_new(void);
/* Append t to r's log and add its usage to r's. DX_ENOMEM. */
int dx__tp_add_trial(dx_tp_result *r, const dx_tp_trial *t);

/* Emit a telemetry event `name` ("optimize.trial", "optimize.best") whose
 * model member names the optimizer. */
void dx__tp_emit(const char *name, dx_telemetry_kind kind,
                 const char *optimizer, int64_t trial, double score);

/* dx_evaluate prog over val with o's metric, concurrency, timeout and call
 * settings: *score is the percent score, usage gets the LM usage and *rows
 * (when not NULL) a new JSON array of the examples' results,
 * [{"i": index, "score": s, "error": "..."}], for the trial's checkpoint
 * record. Each example holds keep (NULL: none) while it runs. */
int dx__tp_evaluate_rows(const dx_module *prog, const dx_dataset *val,
                         const dx_tp_opts *o, const dx__eval_keep *keep,
                         double *score, dx_usage_acc *usage, cJSON **rows,
                         dx_diag *diag);
/* The same through opts' candidate evaluator when it has one (else
 * locally): prog scored on val->items[idx[0..n_idx)] (idx NULL: all of
 * val); rows' "i" is the position in idx. */
int dx__tp_evaluate_idx(const dx_module *prog, const dx_dataset *val,
                        const size_t *idx, size_t n_idx, const dx_tp_opts *o,
                        const dx__eval_keep *keep, double *score,
                        dx_usage_acc *usage, cJSON **rows, dx_diag *diag);
/* n candidates through o->evaluator (which must be set): per candidate its
 * score (percent, 2 decimals), usage added to usages[k] and, when rows is
 * not NULL, rows[k] a new JSON array as dx__tp_evaluate_rows makes. */
int dx__tp_hook_eval(const dx_module *const *progs, size_t n,
                     const dx_dataset *val, const size_t *idx, size_t n_idx,
                     const dx_tp_opts *o, double *scores, dx_usage_acc *usages,
                     cJSON **rows, dx_diag *diag);
/* Put a trial's LM usage and per-example results (rows, taken; may be
 * NULL) in its checkpoint record rec (NULL: rows is freed); read the usage
 * back from a restored record. */
void dx__tp_record(cJSON *rec, const dx_usage_acc *u, cJSON *rows);
void dx__tp_restore_usage(const cJSON *rec, dx_usage_acc *u);

/* One call of a Predict on sig (a reference is taken) with inputs in, n
 * completions at temperature, on the client registered as lm_name (NULL:
 * the run's LM), in cache namespace rollout_id (NULL: o's). *out is the
 * caller's; its usage is added to usage. dx_module_call's errors (copro.c).
 */
int dx__tp_ask(dx_signature *sig, const dx_example *in, int n,
               double temperature, const char *lm_name, const char *rollout_id,
               const dx_tp_opts *o, dx_prediction **out, dx_usage_acc *usage,
               dx_diag *diag);

/* A TPE sampler (Optuna's default, multivariate, over categorical
 * parameters; mipro.c): the first 10 observations' worth of suggestions
 * are uniform; after that, 24 candidates drawn from the Parzen mixture of
 * the best gamma(n) = min(ceil(n/10), 25) observations (plus a uniform
 * prior), the one maximising l(x)/g(x) against the rest is suggested.
 * Seeded: the same observations give the same suggestions. */
typedef struct dx__tpe dx__tpe;
dx__tpe *dx__tpe_new(const size_t *n_choices, size_t n_params, int64_t seed);
void dx__tpe_free(dx__tpe *t);
/* Record an observation (higher value is better). DX_ENOMEM. */
int dx__tpe_add(dx__tpe *t, const size_t *params, double value);
/* Suggest the next parameters into out[0..n_params). DX_ENOMEM. */
int dx__tpe_suggest(dx__tpe *t, size_t *out);

/* A checkpoint store: one run's trials in a SQLite file, keyed by a hash
 * of everything that decides the result. With path NULL every operation
 * is a no-op (get returns NULL). */
typedef struct dx__tp_ckpt {
    sqlite3 *db;
    char run[65]; /* hex SHA-256 of the run's inputs */
} dx__tp_ckpt;

/* Open path for the run identified by kind (any text: an optimizer's
 * name and its own options), salt, the student and teacher states, the
 * datasets and o. DX_OK, DX_EIO (diag), DX_ENOMEM. */
int dx__tp_ckpt_open(dx__tp_ckpt *c, const char *path, const char *kind,
                     const dx_module *student, const dx_module *teacher,
                     const dx_dataset *train, const dx_dataset *val,
                     const dx_tp_opts *o, int64_t salt, dx_diag *diag);
void dx__tp_ckpt_close(dx__tp_ckpt *c);
/* The stored value of key (the caller's), or NULL. */
cJSON *dx__tp_ckpt_get(dx__tp_ckpt *c, const char *key);
/* Store value under key; a failed write is ignored (it costs a rerun). */
void dx__tp_ckpt_put(dx__tp_ckpt *c, const char *key, const cJSON *value);

/* Has the budget (max_lm_calls, max_cost_usd) been used up by u? */
bool dx__tp_over_budget(const dx_tp_opts *o, const dx_usage_acc *u);

#endif
