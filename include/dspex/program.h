/*
 * program.h — programs declared in JSON, so a program and its optimized
 * state are one file that the `dspex` command (and C code) can load, run,
 * evaluate, optimize and save.
 *
 * The file is a superset of Python DSPy's saved-state layout: DSPy's
 * members (one per predictor path, and "metadata") plus a "program" member
 * that declares the modules and how they compose:
 *
 *   {
 *     "program": {
 *       "modules": [
 *         {"name": "generate_query", "module": "predict",
 *          "signature": "question -> query",
 *          "instructions": "Write a search query.",          (optional)
 *          "config": {"temperature": 0.7, "max_tokens": 200,  (optional)
 *                     "n": 1, "lm": "name-of-an-lm-client"}},
 *         {"name": "answer", "module": "chain_of_thought",
 *          "signature": "question, context: list[str] -> answer"}
 *       ],
 *       "steps": [                                            (optional)
 *         {"module": "generate_query", "inputs": {"question": "question"}},
 *         {"module": "answer",
 *          "inputs": {"question": "question",
 *                     "context": "generate_query.query"}}
 *       ]
 *     },
 *     "generate_query": {DSPy predictor state...},           (optional)
 *     "answer.predict": {...},
 *     "metadata": {...}
 *   }
 *
 * A program of one module and no steps is that module itself (its
 * predictor path is DSPy's "self" for a predict, "predict" for a
 * chain_of_thought, whatever its declared name).
 *
 * Steps run in order. A step's input is taken from the program's inputs
 * or an earlier step's output: "field" (the latest value of that name) or
 * "module.field". Without "steps", the modules run in order, each reading
 * its inputs by name. The program's prediction is the last step's. Module
 * kinds: "predict", "chain_of_thought". The predictor paths are DSPy's for
 * a Python program with these attribute names ("answer.predict" for a
 * ChainOfThought named answer), so a state saved by Python DSPy for such a
 * program loads into it.
 *
 * More module kinds: "rag" ({"corpus": "passages.jsonl", "k": 3}: BM25
 * retrieval over a JSONL corpus, then ChainOfThought; or {"colbertv2":
 * "URL", "post": false, "k": 3}: a ColBERTv2 search server, retrieve.h),
 * "react" ({"signature", "tools": [{"builtin": "search", "corpus": ...,
 * "k": 3} (or "colbertv2": URL), {"builtin": "calculator"}], "max_iters",
 * "native_tools"}), and
 * "best_of_n" / "refine", which wrap one module declared in "wraps":
 *
 *   {"name": "answer", "module": "refine", "n": 3, "threshold": 1.0,
 *    "fail_count": 3,                                        (optional)
 *    "reward": {"field": "answer", "max_words": 1},
 *    "wraps": {"module": "chain_of_thought",
 *              "signature": "question -> answer"}}
 *
 * A reward is 1.0 when its check holds and 0.0 otherwise; the checks, on
 * one output field: {"max_words": n}, {"min_words": n}, {"max_chars": n},
 * {"matches": "POSIX extended regex"} (found anywhere), {"one_of":
 * ["Paris", ...]} (trimmed, case-insensitive), {"not_empty": true}. A
 * missing output scores 0.0. {"all": [reward, ...]} is the lowest of its
 * rewards, {"any": [...]} the highest; a string (or {"name": ...}) names a
 * C reward registered with dx_program_register_reward before loading.
 * Refine's feedback LM reads the reward as the Python expression a DSPy
 * user would have written for it. The wrapped module's predictor paths
 * are DSPy's for BestOfN/Refine ("module.predict" for a wrapped
 * chain_of_thought that is the whole program).
 *
 * Errors say where: `prog.json:3:14: expected ',' or '}'`,
 * `prog.json: program.modules[1]: unknown module "react"`,
 * `prog.json: program.steps[0]: input "ctx" is not produced before this
 * step`.
 */
#ifndef DSPEX_PROGRAM_H
#define DSPEX_PROGRAM_H

#include <stddef.h>

#include "diag.h"
#include "export.h"
#include "module.h"
#include "modules.h"

/* Load a declarative program file (with its state, when the file has
 * one). DX_OK with *out the caller's (dx_module_free); DX_EIO, DX_ESYNTAX,
 * DX_EINVAL (a wrong declaration: diag says where), DX_ENOENT (a predictor
 * missing from a partial state), DX_ENOMEM. */
DX_API int dx_program_load(const char *path, dx_module **out, dx_diag *diag);
/* The same from text; name is used in messages. */
DX_API int dx_program_parse(const char *json, size_t len, const char *name,
                            dx_module **out, dx_diag *diag);
/* Build a one-module program: kind "predict" or "chain_of_thought", a
 * signature string, instructions (NULL: default). The module is named
 * "self" for a predict (DSPy's path of a lone Predict) and "predict"'s
 * parent for chain_of_thought, as Python DSPy would save them. */
DX_API int dx_program_single(const char *kind, const char *signature,
                             const char *instructions, dx_module **out,
                             dx_diag *diag);
/* Make a C reward available to declarations under name (1..63 bytes):
 * {"reward": "name"}. fn NULL removes it. ud must outlive every program
 * loaded with it. Any thread. DX_OK; DX_EINVAL (bad name); DX_ENOENT
 * (removing a name not registered); DX_ELIMIT (64 names registered). The
 * reward is looked up when a program is loaded. */
DX_API int dx_program_register_reward(const char *name, dx_reward_fn fn,
                                      void *ud);

/* Save a program made by dx_program_load / parse / single: its
 * declaration, its state (DSPy's layout) and metadata. A module tree built
 * in C (no declaration) saves its state only, as dx_module_save. */
DX_API int dx_program_save(const dx_module *m, const char *path, dx_diag *diag);

#endif
