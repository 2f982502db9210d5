/*
 * modules.h — the modules built on top of Predict that DSPy ships besides
 * ChainOfThought: BestOfN and Refine (run a module several times and keep
 * the best answer by a reward), MultiChainComparison (compare M reasoning
 * attempts and write a corrected one), Parallel (run a module over many
 * inputs, each in its own process, results in input order), and the
 * KNNFewShot optimizer with its KNN retriever (demos chosen per call by
 * vector similarity to the inputs).
 *
 * BestOfN, Refine and MultiChainComparison are ordinary modules
 * (module.h): call them with dx_module_call, nest them under user modules,
 * save and load their predictors' state. Their prompts are Python DSPy's
 * (signature instructions, field names, prefixes and descriptions) byte
 * for byte.
 *
 * Threads: the constructors are called by the tree's owner; the modules
 * they return follow module.h's rules (read-only while calls run).
 */
#ifndef DSPEX_MODULES_H
#define DSPEX_MODULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "evaluate.h"
#include "example.h"
#include "export.h"
#include "module.h"
#include "retrieve.h"
#include "teleprompt.h"

/* ---- BestOfN and Refine ------------------------------------------------ */

/* A reward for one attempt: the call's inputs and the attempt's
 * prediction. Put the score in *reward and return DX_OK; any other return
 * makes the attempt a failed one (it counts against fail_count, as a
 * raised exception in DSPy's reward_fn does). Runs in the program's
 * process, so it must be safe to call from several processes at once. */
typedef int (*dx_reward_fn)(const dx_example *inputs, const dx_prediction *pred,
                            void *ud, double *reward);

typedef struct dx_best_of_n_opts {
    size_t n; /* attempts (DSPy's N); must be >= 1 */
    dx_reward_fn reward;
    /* Passed to reward; must outlive the module and all its copies, or
     * be the module's: see reward_ud_free. */
    void *reward_ud;
    /* If set, reward_ud belongs to the module: reward_ud_free(reward_ud)
     * runs when the module and all its copies are freed (and at once when
     * the constructor fails). */
    void (*reward_ud_free)(void *ud);
    /* An attempt whose reward is >= threshold ends the call at once. */
    double threshold;
    /* Failed attempts tolerated (DSPy's fail_count); 0 = n. DSPy's rule:
     * attempt idx (0-based) that fails ends the call with its error when
     * idx > the failures still allowed; each failure lowers that count.
     * Counted per call (DSPy's counter, by accident, spans calls). */
    size_t fail_count;
    /* Refine only: the texts the feedback LM reads as the program's and
     * the reward function's code (DSPy reads the Python source with
     * inspect; C has none). NULL: a sentence naming the module type. */
    const char *program_code;
    const char *reward_code;
} dx_best_of_n_opts;

/* DSPy's BestOfN: a module "BestOfN" with child "module" (takes module;
 * freed on failure too). A call runs the child up to n times, attempt i
 * with cache namespace (rollout id) start+i — start is the call's
 * rollout_id when it is an integer, else 0; a non-integer rollout_id r
 * gives "r:i" — and temperature 1.0 for every predictor that has no
 * temperature of its own (as DSPy's lm.copy(temperature=1.0) under a
 * Predict's own config). It returns the first attempt with reward >=
 * threshold, else the best one (the first of equal rewards); the trace
 * keeps the returned attempt's steps only. Errors of a call: the failing
 * attempt's code (see fail_count), or, when every attempt failed without
 * reaching that rule, the last attempt's code. NULL on OOM, n == 0 or no
 * reward. */
DX_API dx_module *dx_best_of_n_new(dx_module *module,
                                   const dx_best_of_n_opts *opts);

/* DSPy's Refine: BestOfN, plus after each attempt below threshold (but
 * the last) one LM call with DSPy's OfferFeedback signature (the
 * program's code and predictors, the inputs, the attempt's trajectory
 * and outputs, the reward code, threshold and value) whose `advice` (one
 * text per predictor name) is given to every predictor of the next
 * attempts as an extra input `hint_` ("A hint to the module from an
 * earlier run"; "N/A" for predictors without advice). The feedback call
 * uses the run's LM, is not traced (it is no predictor of the program)
 * and a failure of it counts as the attempt's failure, as in DSPy. Module
 * type "Refine", child "module". NULL on OOM, n == 0 or no reward. */
DX_API dx_module *dx_refine_new(dx_module *module,
                                const dx_best_of_n_opts *opts);

/* OfferFeedback's modules_defn text for m (DSPy's inspect_modules): per
 * predictor its name, input and output field descriptions and
 * instructions between 80-dash separators. *out is the caller's (dx_free).
 * DX_OK, DX_EINVAL, DX_ENOMEM. */
DX_API int dx_refine_inspect_modules(const dx_module *m, char **out);

/* ---- MultiChainComparison ---------------------------------------------- */

/* DSPy's MultiChainComparison on s (a reference is taken): a module
 * "MultiChainComparison" with child "predict", a Predict whose signature
 * is s with inputs reasoning_attempt_1..M appended (prefix "Student
 * Attempt #i:", desc "${reasoning attempt}") and output `rationale`
 * prepended (prefix "Accurate Reasoning: Thank you everyone. Let's now
 * holistically", desc "${corrected reasoning}"); temperature 0.7 unless
 * opts sets one. m = 0 means 3. NULL on OOM or a signature without
 * outputs.
 *
 * A call's inputs hold "completions": a JSON list of exactly M objects,
 * each with "rationale" (or "reasoning") and s's last output field; each
 * becomes "«I'm trying to <first line of the rationale> I'm not sure but
 * my prediction is <first line of the answer>»". The other inputs are
 * passed on. A call fails with DX_EINVAL (diag: DSPy's message) when the
 * count is not M or an attempt lacks its fields. */
DX_API dx_module *dx_multi_chain_comparison_new(dx_signature *s, size_t m,
                                                const dx_predict_opts *opts);

/* ---- Parallel ----------------------------------------------------------- */

typedef struct dx_parallel_opts {
    size_t num_threads; /* items in flight at once; 0 = 16 */
    /* The call fails (DX_ELIMIT) once this many items failed, as DSPy's
     * max_errors; 0 = 10 (DSPy's default); SIZE_MAX = never. */
    size_t max_errors;
    int64_t timeout_ms; /* per item; 0 = 120,000 ms */
    dx_call_opts call;  /* LM client, adapter, ... for every item */
} dx_parallel_opts;

typedef struct dx_parallel_item {
    dx_prediction *pred; /* NULL when it failed or did not run */
    int error;           /* DX_OK or the item's failure code */
    char *error_msg;     /* NULL when ok */
    bool done;           /* false: never run (the call stopped first) */
} dx_parallel_item;

typedef struct dx_parallel_result {
    size_t n;                /* = the number of inputs */
    dx_parallel_item *items; /* input order */
    size_t n_errors;
    dx_usage_acc usage; /* every item's LM usage */
} dx_parallel_result;

/* Run m over inputs[0..n), each in a process of its own, at most
 * num_threads at once (Evaluate's engine). An input with an input
 * designation passes its inputs() (DSPy's access_examples), one without
 * passes all its keys. A crash, timeout or error costs its item only.
 * DX_OK: *out is the caller's (dx_parallel_result_free). DX_ELIMIT: at
 * least max_errors items failed (diag names the count and the first
 * failed item); *out is set too, with the items that finished.
 * DX_ECANCELED: dx_evaluate_cancel_all stopped it; *out is set, with the
 * items that finished (the others are not done). DX_EINVAL,
 * DX_ESTATE (runtime not running), DX_ENOMEM: *out is NULL. Blocks; host
 * thread or process. */
DX_API int dx_parallel_run(const dx_module *m, const dx_example *const *inputs,
                           size_t n, const dx_parallel_opts *opts,
                           dx_parallel_result **out, dx_diag *diag);
DX_API void dx_parallel_result_free(dx_parallel_result *r);

/* ---- KNN and KNNFewShot ------------------------------------------------- */

/* A vectorizer: write texts[i]'s vector (dim floats) to
 * vectors[i * dim ...]. DX_OK or an error code. Must be callable from any
 * process. */
typedef int (*dx_vectorize_fn)(const char *const *texts, size_t n,
                               float *vectors, size_t dim, void *ud);

typedef struct dx_vectorizer {
    dx_vectorize_fn fn; /* NULL: the built-in bag of words */
    size_t dim;         /* 0 with fn NULL: 1024 */
    void *ud;           /* must outlive every KNN made with it */
} dx_vectorizer;

/* The built-in vectorizer: lower-cased words (letters and digits) hashed
 * into dim buckets (FNV-1a), counts L2-normalised, so dot products are
 * cosine similarities of word counts. */
DX_API int dx_knn_bag_of_words(const char *const *texts, size_t n,
                               float *vectors, size_t dim, void *ud);

/* A vectorizer backed by a provider's embeddings API (retrieve.h
 * dx_embed_texts: "openai/<model>", "openai-compatible/<model>",
 * "gemini/<model>"), vectors unit-normalised so dot products are cosine
 * similarities. dim: the model's dimension count; 0 asks the model once,
 * now, with a probe text. Embedding needs a process: called from a host
 * thread, each request runs in a process of its own that the caller waits
 * for. A request whose vectors are not `dim` long fails with DX_EPROVIDER.
 * *out holds the configuration (free it with dx_vectorizer_embeddings_free
 * after every KNN made with it). DX_OK; DX_EINVAL (no model, bad model
 * string), DX_ENOKEY, DX_ENOTSUP (a provider without embeddings),
 * DX_EPROVIDER (the probe failed: diag has the provider's error),
 * DX_ENOMEM. */
DX_API int dx_vectorizer_embeddings(const dx_embeddings_opts *opts, size_t dim,
                                    dx_vectorizer *out, dx_diag *diag);
DX_API void dx_vectorizer_embeddings_free(dx_vectorizer *v);

typedef struct dx_knn dx_knn;

/* DSPy's KNN: trainset (copied) embedded as "key: value | key: value" of
 * each example's input keys (all keys when it has no designation), in its
 * key order. DX_OK with *out the caller's (dx_knn_free); DX_EINVAL (k 0,
 * empty trainset), the vectorizer's error, DX_ENOMEM. */
DX_API int dx_knn_new(size_t k, const dx_dataset *trainset,
                      const dx_vectorizer *vec, dx_knn **out);
DX_API void dx_knn_free(dx_knn *knn);
/* The (at most) k train examples with the highest dot product with the
 * vector of inputs ("key: value | ..." of all its keys), best first; among
 * equal scores the later train example first (numpy's argsort()[-k:][::-1]
 * over a stable sort). idx receives min(k, n) indices into the trainset.
 * DX_OK, the vectorizer's error, DX_ENOMEM. */
DX_API int dx_knn_query(const dx_knn *knn, const dx_example *inputs,
                        size_t *idx, size_t *n_out);

/* DSPy's KNNFewShot: a new program "KNNFewShot" whose every call picks
 * the k train examples nearest to its inputs, runs BootstrapFewShot
 * (opts: metric, demo limits, ...) with them as trainset on a copy of
 * student (teacher: may be NULL) and answers with the compiled program,
 * all inside the call (the call's LM client, adapter and rollout id are
 * used where opts->call names none). student and teacher are copied;
 * opts' metric ud must outlive the program; checkpoint and report paths
 * are ignored. DX_OK with *out the caller's; DX_EINVAL (no metric, k 0,
 * empty trainset), DX_ENOMEM, the vectorizer's error. */
DX_API int dx_knn_fewshot(const dx_module *student, const dx_module *teacher,
                          size_t k, const dx_dataset *trainset,
                          const dx_vectorizer *vec, const dx_tp_opts *opts,
                          dx_module **out, dx_diag *diag);

#endif
