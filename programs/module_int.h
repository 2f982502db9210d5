/*
 * module_int.h — the insides of modules, predictions and runs, shared by
 * module.c (the tree), predict.c (running it) and state.c (save/load).
 * Not installed.
 */
#ifndef DSPEX_MODULE_INT_H
#define DSPEX_MODULE_INT_H

#include <cjson/cJSON.h>

#include "dspex/lm.h"
#include "dspex/module.h"

typedef enum dx__mod_kind {
    DX__MOD_PREDICT,
    DX__MOD_COT,
    DX__MOD_USER,
} dx__mod_kind;

struct dx_module {
    dx__mod_kind kind;
    char *type_name;
    dx_module *parent;
    char *name; /* in the parent; NULL at the root */
    char *path; /* DSPy parameter path, kept current by dx_module_add */
    /* The "program" declaration this tree was built from (program.h), on
     * its root; NULL for trees built in C. */
    cJSON *decl;

    char **child_names;
    dx_module **children;
    size_t n_children, cap_children;

    /* DX__MOD_USER */
    dx_forward_fn forward;
    void *ud;
    void (*ud_free)(void *);
    void *(*ud_copy)(const void *);

    /* DX__MOD_PREDICT */
    dx_signature *sig;
    dx_example **demos;
    size_t n_demos, cap_demos;
    dx_predict_opts opts; /* lm_name owned */
    cJSON *lm_state;      /* DSPy "lm" state as loaded/saved; NULL = null */
    /* The model of a loaded "lm" state: used when a client is registered
     * under that name, else the call's LM answers (see state.c). */
    char *state_model;
    cJSON *traces; /* DSPy "traces" / "train", kept for round trips */
    cJSON *train;
};

struct dx_prediction {
    dx_example *fields;
    dx_example **completions; /* all of them when n > 1, else NULL */
    size_t n_completions;
    dx_usage_acc usage;
    char *model;
};

struct dx_ctx {
    dx_pid lm;
    const char *lm_name;
    dx_adapter_kind adapter;
    bool no_json_fallback;
    int64_t deadline_ms;
    const char *rollout_id;
    dx_lmcache_mode cache_mode;
    const dx_usage_prices *prices;
    dx_field_chunk_fn on_chunk; /* NULL: no streaming */
    void *chunk_ud;
    dx_trace *trace; /* NULL: not traced */
    dx_usage_acc usage;
    /* The run's diagnostic: the caller's of dx__run_program, not a copy in
     * the context, which sits in the frame of every process that waits on
     * an LM call (copied out and back in with it: DX_NOINLINE). */
    dx_diag *diag;
};

/* Recompute the paths of m's subtree (after it moved). */
int dx__module_repath(dx_module *m);

/* An empty result with room for n passages (n may be 0); NULL on OOM.
 * retrieve.c; the retrievers fill items and n. */
struct dx_passages;
struct dx_passages *dx__passages_new(size_t n);

/* A call's deadline when dx_call_opts.timeout_ms is 0 (dx_module_call,
 * an embedded call, a judge scored on its own). */
#define DX__DEFAULT_CALL_TIMEOUT_MS 120000
/* A process that waits for one it spawned (a module call's, a tool's, an
 * example's) kills it at its timeout; the runtime kills it this much later
 * in any case (dx_spawn_opts.kill_after_ms), for when the waiter cannot
 * run: it shares a scheduler held by code that never calls the runtime. */
#define DX__RUNTIME_KILL_AFTER_MS 100

/* dx_spawn_opts.kill_after_ms for a process its spawner kills after
 * wait_ms: DX__RUNTIME_KILL_AFTER_MS later, or none (0) past the clock. */
static inline int64_t dx__runtime_kill_after(int64_t wait_ms)
{
    if (wait_ms >= INT64_MAX - DX__RUNTIME_KILL_AFTER_MS)
        return 0;
    return wait_ms > 0 ? wait_ms + DX__RUNTIME_KILL_AFTER_MS
                       : DX__RUNTIME_KILL_AFTER_MS;
}

/* Whether a spawned process the waiter did not kill itself ended `killed`
 * wait_ms or more after since_ms, when the waiter would have killed it:
 * the runtime's deadline did it, and the waiter reports a timeout. (A
 * difference, not a sum: wait_ms may be near INT64_MAX.) */
static inline bool dx__killed_past(const dx_term *reason, int64_t since_ms,
                                   int64_t wait_ms)
{
    return dx_is_atom(reason, "killed") && dx_now_ms() - since_ms >= wait_ms;
}

/* The Predict's forward (predict.c). */
int dx__predict_forward(dx_ctx *ctx, const dx_module *p,
                        const dx_example *inputs, dx_prediction **out);

/* Run m on inputs in the calling process with o's settings (o->timeout_ms
 * is ignored: deadline_ms is absolute, dx_now_ms based). On DX_OK *out is
 * the caller's and carries the run's usage, and diag (may be NULL) is
 * cleared; otherwise diag gets the run's diagnostic (it holds it during
 * the run, too). trace may be NULL. usage (may be NULL)
 * receives the run's LM usage whatever the outcome: a failed run's calls
 * were made and cost too. Process. */
int dx__run_program(const dx_module *m, const dx_example *inputs,
                    const dx_call_opts *o, int64_t deadline_ms,
                    dx_prediction **out, dx_trace *trace, dx_diag *diag,
                    dx_usage_acc *usage);

/* Run fn(arg) in a dspex process: the calling one when there is one,
 * else a new process while this host thread waits for it. Returns DX_OK
 * when fn returned, DX_EDOWN when the process died first, or the spawn's
 * error. */
int dx__in_process(void (*fn)(void *), void *arg);

/* What a module's forward holds across its blocking steps (dx_forward of
 * a child, a tool call, a user's reward function), kept here rather than
 * in locals: the holder is tied to the calling process, so a forward
 * killed there — an evaluation's example past its deadline, a caller that
 * went away — or crashed in user code frees what it held as the process
 * ends. A forward moves a result out (its slot set to NULL) and frees the
 * holder, which frees whatever is left in the slots. */
typedef struct dx__held {
    dx_example *ex[4];
    dx_prediction *pred[4];
    dx_module *mod[2];
    cJSON *json[2];
    dx_trace trace[2];
    struct {
        void *obj;
        void (*free_fn)(void *obj);
    } other[2];   /* anything else, with its free function */
    dx_ptie *tie; /* NULL off a process (nothing to be killed) */
} dx__held;
/* NULL on OOM. */
dx__held *dx__held_new(void);
/* Ends the tie and frees what is left. NULL is a no-op. */
void dx__held_free(dx__held *h);

/* The built-in price table (created once). */
const dx_usage_prices *dx__default_prices(void);

/* v as a whole number in [lo, hi] (both within +-2^53): false for anything
 * else — not a number, a fraction, NaN, an infinity (dspex's JSON reads
 * Python's Infinity and NaN), out of range — so that a count read from a
 * user's file is never converted out of range, which C leaves undefined. */
static inline bool dx__json_whole(const cJSON *v, double lo, double hi,
                                  int64_t *out)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi))
        return false;
    int64_t w = (int64_t)v->valuedouble; /* in range: defined */
    if ((double)w != v->valuedouble)
        return false;
    *out = w;
    return true;
}

#endif
