/*
 * sim.h — the offline simulated model ("sim/..." model strings) and its
 * bundled task families.
 *
 * The sim is a simulator, not a language model: a deterministic program
 * that reads the prompts dspex's adapters build (ChatAdapter sections or the
 * JSONAdapter's JSON, the requested output fields, the demos, the
 * instructions), recognises one of four bundled task families in the
 * inputs, computes the right answer from its own tables, and then lets a
 * skill model decide whether to give it. The skill model makes prompting
 * matter the way it does with real LMs: correct demos raise accuracy, wrong
 * demos lower it, a leading `reasoning` output helps multi-step arithmetic,
 * instructions that name the task help, retrieved passages help two-hop
 * questions, and a prompt without format cues sometimes gets an answer
 * without section markers. It exists so that demos, tests and benchmarks
 * run offline and reproducibly; docs/internals/sim.md gives the numbers.
 *
 * Threads: every function is reentrant; there is no global state.
 */
#ifndef DSPEX_SIM_H
#define DSPEX_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "example.h"
#include "export.h"
#include "provider.h"

/* Answer req as model "sim/<name>" or "<name>" (model may be NULL: then
 * req->model). Profiles: "base", "strong", "weak". Deterministic: the same
 * request gives the same answer. At temperature 0 (or unset) every choice
 * is the same; at temperature > 0 the request's seed (or, without one, a
 * hash of the whole request) and the choice index enter the draws, so the
 * n choices differ. Fills n choices (req->n, at least 1) with finish STOP,
 * usage (tokens = words), model "sim/<name>" and an id.
 *   DX_OK: *out is the caller's (dx_lm_response_free).
 *   DX_EPROVIDER: err (may be NULL) says why, kind bad_request (unknown
 *     profile, no messages, more than 16 choices).
 *   DX_EINVAL (NULL req or out), DX_ENOMEM. On failure *out is NULL.
 * Any thread; never blocks. */
DX_API int dx_sim_complete(const dx_lm_request *req, const char *model,
                           dx_lm_response **out, dx_lm_error *err);

/* The bundled task families. */
typedef enum dx_sim_task {
    DX_SIM_ARITHMETIC, /* question -> answer: multi-step word problems */
    DX_SIM_CAPITALS,   /* question -> answer: capital / currency of X */
    DX_SIM_CLASSIFY,   /* text -> label: positive / negative / neutral */
    DX_SIM_TWOHOP,     /* question -> answer: birthplace country via corpus */
} dx_sim_task;

#define DX_SIM_N_TASKS 4

/* "arithmetic", "capitals", "classify", "twohop"; NULL when out of range. */
DX_API const char *dx_sim_task_name(dx_sim_task t);
/* DX_OK or DX_ENOENT (unknown name), DX_EINVAL (NULL). */
DX_API int dx_sim_task_from_name(const char *name, dx_sim_task *out);

/* The seed and sizes the bundled data/sim/<task>/<split>.jsonl files were
 * generated with. */
#define DX_SIM_DEFAULT_SEED 2026u
#define DX_SIM_TRAIN_SIZE 50
#define DX_SIM_DEV_SIZE 50
#define DX_SIM_TEST_SIZE 60

/* Generate split ("train", "dev" or "test") of task t: n examples drawn
 * from seed, each with the input key designated as input ("question", or
 * "text" for classify) and the label key ("answer", or "label").
 * The splits never share a question within one seed. capitals and twohop
 * draw from finite pools (each split holds 60 capitals questions and 60
 * people); asking for more is DX_EINVAL. The bundled files are this
 * function's output for DX_SIM_DEFAULT_SEED and the default sizes.
 * DX_OK: *out is the caller's (dx_dataset_free). DX_EINVAL (unknown split
 * or task, n too large, NULL out), DX_ENOMEM. */
DX_API int dx_sim_generate(dx_sim_task t, const char *split, uint64_t seed,
                           size_t n, dx_dataset **out);

/* The twohop task's mini corpus (who was born in which city; which country
 * each city is in). With query NULL: every passage, in corpus order.
 * Otherwise the passages sharing the most words (3+ letters, any case) with
 * the query, best first (ties in corpus order), at most k (0 = no limit),
 * only those sharing at least one word. DX_OK: *out is an array of *n
 * strings, the caller's (dx_sim_corpus_free; NULL when *n is 0).
 * DX_EINVAL (NULL out or n), DX_ENOMEM. */
DX_API int dx_sim_corpus(const char *query, size_t k, char ***out, size_t *n);
DX_API void dx_sim_corpus_free(char **passages, size_t n);

#endif
