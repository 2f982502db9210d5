/*
 * module.h — programs: Predict, ChainOfThought and modules written in C
 * that compose them, run each in its own process, traced, saved and loaded
 * in DSPy's layout.
 *
 * A module is a tree. A leaf is a Predict: a signature, demos, and its LM
 * settings (temperature, max tokens, n, which LM client). A
 * ChainOfThought is a module with one child named "predict": a Predict
 * whose signature has the output `reasoning` first. A user module has a
 * forward function and named children; its forward is straight-line C:
 *
 *     static int multihop(dx_ctx *ctx, const dx_module *self,
 *                         const dx_example *in, dx_prediction **out)
 *     {
 *         ...
 *         for (int hop = 0; hop < 2; hop++) {
 *             dx_prediction *q;
 *             DX_TRY(dx_forward(ctx, dx_module_child(self, "generate_query"),
 *                               step_inputs, &q));
 *             ...
 *         }
 *         return dx_forward(ctx, dx_module_child(self, "generate_answer"),
 *                           answer_inputs, out);
 *     }
 *
 * Calling a program (dx_module_call) is one function call from a host
 * thread or a process: the call runs in a new process of its own, so a
 * crash in a user's forward costs that call (DX_EDOWN with the crash
 * reason in the diag) and nothing else. Within the call, dx_forward runs
 * sub-modules in the same process. A run carries what DSPy keeps in its
 * global settings — the default LM client, the adapter, the deadline, the
 * cache namespace (rollout id) — so concurrent calls never see each
 * other's settings.
 *
 * Every Predict step of a run is traced (predictor path, the inputs, the
 * outputs, usage); optimizers read the trace to collect demos. Predictor
 * paths are DSPy's: "self" for a lone Predict, "predict" for a
 * ChainOfThought's, "generate_answer.predict" below a user module.
 *
 * State save/load uses DSPy's JSON layout: an object with one member per
 * predictor path ({"traces", "train", "demos", "signature":
 * {"instructions", "fields": [{"prefix", "description"}]}, "lm"}) and
 * "metadata". Files written by Python DSPy's program.save("x.json") load,
 * and files dspex writes load in Python DSPy.
 *
 * Ownership and threads: a module tree is owned by its creator. While
 * calls run, the tree is only read (any number of concurrent calls); change
 * it (demos, signatures, load) only when no call uses it, or change a copy
 * (dx_module_copy) as optimizers do. Predictions are owned by the caller.
 */
#ifndef DSPEX_MODULE_H
#define DSPEX_MODULE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "diag.h"
#include "example.h"
#include "export.h"
#include "lmcache.h"
#include "runtime.h"
#include "signature.h"
#include "usage.h"

/* ---- predictions ------------------------------------------------------ */

typedef struct dx_prediction dx_prediction;

/* A new empty prediction (for user forward functions). NULL on OOM. */
DX_API dx_prediction *dx_prediction_new(void);
DX_API void dx_prediction_free(dx_prediction *p);
/* The output fields (of the first completion). Never NULL. */
DX_API const dx_example *dx_prediction_fields(const dx_prediction *p);
/* Writable fields, for user forwards building their result. */
DX_API dx_example *dx_prediction_fields_mut(dx_prediction *p);
DX_API const cJSON *dx_prediction_get(const dx_prediction *p, const char *key);
DX_API const char *dx_prediction_get_str(const dx_prediction *p,
                                         const char *key, const char *dflt);
/* All completions when the LM was asked for n > 1 (the first is the one
 * in fields); 1 otherwise. */
DX_API size_t dx_prediction_n_completions(const dx_prediction *p);
DX_API const dx_example *dx_prediction_completion(const dx_prediction *p,
                                                  size_t i);
/* The LM usage that produced it: for a Predict step its LM call; for
 * dx_module_call's result every LM call of the run. */
DX_API const dx_usage_acc *dx_prediction_usage(const dx_prediction *p);
/* The model that answered the (last) LM call, or NULL. */
DX_API const char *dx_prediction_model(const dx_prediction *p);
DX_API dx_prediction *dx_prediction_copy(const dx_prediction *p);

/* ---- modules ---------------------------------------------------------- */

typedef struct dx_module dx_module;
typedef struct dx_ctx dx_ctx;

/* A module's forward: read inputs, call children with dx_forward, put a
 * new prediction in *out. Return DX_OK or the code of the failure (the
 * run's diag says what; dx_ctx_fail sets it). It runs in the program's
 * process, which may be killed while it waits in a child's LM call (an
 * evaluation's example past its deadline, a caller that went away): what
 * it holds across dx_forward should be tied to the process (dx_ptie_new,
 * runtime.h), or it leaks when that happens. */
typedef int (*dx_forward_fn)(dx_ctx *ctx, const dx_module *self,
                             const dx_example *inputs, dx_prediction **out);

/* Settings of a Predict (copied). Zero = DSPy's defaults. */
typedef struct dx_predict_opts {
    bool has_temperature;
    double temperature;
    int64_t max_tokens; /* 0: not sent */
    int n;              /* completions; 0/1: one. n > 1 with temperature
                           unset or <= 0.15 runs at 0.7, as DSPy */
    /* Registered name of the LM client for this predictor (dx_whereis);
     * NULL: the run's LM. A loaded DSPy state with an "lm" model sets it
     * to that model string. */
    const char *lm_name;
} dx_predict_opts;

/* A Predict on s (a reference is taken). opts may be NULL. NULL on OOM. */
DX_API dx_module *dx_predict_new(dx_signature *s, const dx_predict_opts *opts);
/* A ChainOfThought on s: a module "ChainOfThought" with child "predict",
 * a Predict on s with output `reasoning` (desc "${reasoning}") prepended
 * to the outputs. */
DX_API dx_module *dx_chain_of_thought_new(dx_signature *s,
                                          const dx_predict_opts *opts);
/* A user module: type_name (e.g. "MultiHop"), forward, and ud with its
 * free and copy functions (both may be NULL: ud is then shared by copies
 * and never freed). NULL on OOM. */
DX_API dx_module *dx_module_new(const char *type_name, dx_forward_fn forward,
                                void *ud, void (*ud_free)(void *),
                                void *(*ud_copy)(const void *));
/* Add child under name (a Python attribute-like name, or "name[3]" /
 * "name['k']" for DSPy's list and dict members). Takes child (freed on
 * failure too). DX_EEXIST, DX_EINVAL, DX_ENOMEM. */
DX_API int dx_module_add(dx_module *parent, const char *name, dx_module *child);
DX_API dx_module *dx_module_child(const dx_module *m, const char *name);
DX_API size_t dx_module_n_children(const dx_module *m);
DX_API const char *dx_module_child_name(const dx_module *m, size_t i);
DX_API dx_module *dx_module_child_at(const dx_module *m, size_t i);
DX_API const char *dx_module_type_name(const dx_module *m);
DX_API void *dx_module_ud(const dx_module *m);
DX_API bool dx_module_is_predict(const dx_module *m);

/* Deep copy of the whole tree (demos, signatures shared by reference —
 * they are immutable — ud through ud_copy). NULL on OOM. */
DX_API dx_module *dx_module_copy(const dx_module *m);
/* DSPy's reset_copy: a copy whose predictors have no demos, traces or
 * train data. */
DX_API dx_module *dx_module_reset_copy(const dx_module *m);
DX_API void dx_module_free(dx_module *m);

/* The predictors of the tree in DSPy's named_predictors order
 * (depth-first, children in the order added), with their paths. *out is a
 * dx_malloc'd array the caller frees with dx_free (the paths point into
 * the modules: valid while the tree is unchanged). */
typedef struct dx_named_predictor {
    const char *path;
    dx_module *predict;
} dx_named_predictor;
DX_API int dx_module_predictors(const dx_module *m, dx_named_predictor **out,
                                size_t *n);
/* A Predict's path within its tree ("self" for a root Predict). */
DX_API const char *dx_predict_path(const dx_module *predict);

/* ---- Predict state ---------------------------------------------------- */

DX_API dx_signature *dx_predict_signature(const dx_module *p);
/* Replace the signature (a reference is taken). DX_EINVAL if p is not a
 * Predict. */
DX_API int dx_predict_set_signature(dx_module *p, dx_signature *s);
DX_API size_t dx_predict_n_demos(const dx_module *p);
DX_API const dx_example *dx_predict_demo(const dx_module *p, size_t i);
/* Replace the demos with copies of demos[0..n). */
DX_API int dx_predict_set_demos(dx_module *p, const dx_example *const *demos,
                                size_t n);
DX_API int dx_predict_add_demo(dx_module *p, const dx_example *demo);
DX_API const dx_predict_opts *dx_predict_get_opts(const dx_module *p);
DX_API int dx_predict_set_opts(dx_module *p, const dx_predict_opts *opts);

/* ---- calling ---------------------------------------------------------- */

/* What a trace step records (all owned by the trace). */
typedef struct dx_trace_step {
    char *path; /* predictor path */
    dx_signature *signature;
    dx_example *inputs;
    dx_example *outputs; /* the first completion */
    dx_lm_usage usage;
    bool cached;
} dx_trace_step;

typedef struct dx_trace {
    dx_trace_step *steps;
    size_t n;
    size_t cap;
} dx_trace;

DX_API void dx_trace_free(dx_trace *t);

#define DX_TRACE_MAX_STEPS 10000

/* A stream listener (DSPy's streamify / StreamListener): a piece of the
 * text of output field `field` of the predictor at path `predictor`
 * ("self", "generate.predict", ...), as the LM's answer streams in. Text
 * and names are borrowed for the call. */
typedef void (*dx_field_chunk_fn)(const char *predictor, const char *field,
                                  const char *text, size_t len, void *ud);

typedef struct dx_call_opts {
    /* The LM client for predictors without their own lm_name; or, when
     * DX_NOPID, the client registered as lm_name (NULL: "lm"). */
    dx_pid lm;
    const char *lm_name;
    dx_adapter_kind adapter; /* default ChatAdapter */
    /* ChatAdapter answers that do not parse are retried once with the
     * JSONAdapter (a second LM call), as DSPy; and a JSONAdapter request
     * whose JSON schema the provider refuses as a bad request is sent once
     * more in JSON mode (json_object). true turns both off. */
    bool no_json_fallback;
    /* Whole call, including every LM call; 0 = 120,000 ms. */
    int64_t timeout_ms;
    /* Cache namespace for every LM call of the run (DSPy's rollout_id):
     * the same request under another namespace is a fresh sample. */
    const char *rollout_id;
    dx_lmcache_mode cache_mode;
    /* Keep the trace (dx_module_call's trace_out). Off: not recorded. */
    bool trace;
    /* Prices for the run's usage totals; NULL = built-in defaults. Must
     * outlive the call. */
    const dx_usage_prices *prices;
    /* Stream listener, or NULL. Set, every Predict (and ChainOfThought,
     * whose reasoning is an output field) of the run asks its LM client to
     * stream (dx_lm_client_complete_stream) and reads the answer
     * incrementally (dx_adapter_stream): on_chunk gets each piece of each
     * output field, never a marker; the pieces of a field add up to its
     * text before type conversion. A cache hit comes as one piece per
     * field. With the JSONAdapter a string value streams as it is decoded;
     * a field whose value is not a string comes whole, as JSON, once the
     * answer parsed. The ChatAdapter's JSON fallback call (an unreadable
     * answer) is not streamed, and what its first answer streamed stands.
     * Only the first completion streams (n > 1); ReAct's own LM calls do
     * not stream. The prediction is the same as without a listener. Runs
     * in the program's process, inside the LM call; it must not block for
     * long (the answer waits). */
    dx_field_chunk_fn on_chunk;
    void *chunk_ud;
} dx_call_opts;

/* Run m on inputs in a new process and wait for it (timeout_ms of opts).
 * Works from a host thread or a process. DX_OK: *out is the caller's, and
 * *trace_out (when not NULL and opts->trace) receives the run's trace
 * (dx_trace_free). Failures: the forward's code (DX_EPARSE, DX_ETYPE,
 * DX_EPROVIDER, DX_ENOLM, ...) with diag; DX_ETIMEDOUT (the process is
 * killed; by the runtime itself if the program holds the caller's
 * scheduler in code that never calls the runtime, such as an endless
 * loop); DX_EDOWN (the program's process crashed; diag has the reason);
 * DX_ESTATE (runtime not running); DX_ENOMEM. A calling process killed
 * while it waits (its supervisor stopping it) takes the program's process
 * with it. */
DX_API int dx_module_call(const dx_module *m, const dx_example *inputs,
                          const dx_call_opts *opts, dx_prediction **out,
                          dx_trace *trace_out, dx_diag *diag);

/* Within a forward: run module m (a child, or any module) in this process
 * as part of the run. Its Predict steps are traced and their usage
 * counted. Returns DX_OK or the failure code (the run's diag says what). */
DX_API int dx_forward(dx_ctx *ctx, const dx_module *m, const dx_example *inputs,
                      dx_prediction **out);

/* Record a failure in the run's diag from a user forward and return code. */
DX_API int dx_ctx_fail(dx_ctx *ctx, int code, const char *fmt, ...)
    DX_PRINTF(3, 4);
DX_API const dx_diag *dx_ctx_diag(const dx_ctx *ctx);
/* The run's usage totals so far. */
DX_API const dx_usage_acc *dx_ctx_usage(const dx_ctx *ctx);
/* Milliseconds left before the call's deadline (>= 0). */
DX_API int64_t dx_ctx_remaining_ms(const dx_ctx *ctx);

#define DX_TRY(expr)                                                           \
    do {                                                                       \
        int dx_try_rc_ = (expr);                                               \
        if (dx_try_rc_ != 0)                                                   \
            return dx_try_rc_;                                                 \
    } while (0)

/* ---- state save / load ------------------------------------------------ */

/* DSPy's dump_state: {"<path>": {"traces": [], "train": [], "demos":
 * [...], "signature": {...}, "lm": null | {...}}, ...} as a new cJSON
 * object (no "metadata"). NULL on OOM. */
DX_API cJSON *dx_module_dump_state(const dx_module *m);
/* Load state into m, all or nothing: every predictor path of m must be in
 * state (extra members are ignored); demos, signature instructions and
 * field texts, and the lm model are taken. LM keys that redirect traffic
 * (api_base, base_url, model_list) are dropped. DX_ESYNTAX / DX_ENOENT with
 * diag naming the path and member. */
DX_API int dx_module_load_state(dx_module *m, const cJSON *state,
                                dx_diag *diag);
/* Write dump_state plus "metadata" as indented JSON (DSPy's layout) to
 * path (a temporary file renamed over it). DX_EIO, DX_ENOMEM. */
DX_API int dx_module_save(const dx_module *m, const char *path, dx_diag *diag);
/* Read a file written by dx_module_save or by Python DSPy's
 * program.save("x.json") and load it. DX_EIO, DX_ESYNTAX (diag: line and
 * column), and dx_module_load_state's errors. */
DX_API int dx_module_load(dx_module *m, const char *path, dx_diag *diag);

#endif
