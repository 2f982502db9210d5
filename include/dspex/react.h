/*
 * react.h — ReAct agents: an LM that thinks, picks a tool, reads what it
 * returned, and repeats until it calls finish, then answers.
 *
 * dx_react_new builds what Python DSPy's dspy.ReAct builds: a user module
 * "ReAct" with two children,
 *   "react"   — a Predict over the signature's inputs + `trajectory` (str)
 *               → next_thought (str), next_tool_name (Literal of the tool
 *               names and "finish"), next_tool_args (dict[str, Any]), with
 *               DSPy's instructions text (the tools listed as DSPy's
 *               str(tool), finish last);
 *   "extract" — a ChainOfThought over the inputs + `trajectory` → the
 *               signature's outputs (its instructions are the signature's);
 * so saved states and predictor paths ("react", "extract.predict") match
 * DSPy's. The forward runs DSPy's loop: up to max_iters steps, each adding
 * thought_i, tool_name_i, tool_args_i and observation_i to the trajectory
 * (rendered for the LM as the adapter's input blocks, as DSPy's
 * _format_trajectory); a tool's failure (bad arguments, error, crash,
 * timeout — each tool call runs in a process of its own, tool.h) is the
 * step's observation "Execution error in <tool>: ..."; the loop ends at
 * finish, at max_iters, or when the LM's answer does not parse into a
 * valid tool choice; then "extract" answers from the trajectory. The
 * result holds `trajectory` (an object with those keys, in order) and the
 * extract's fields (reasoning, then the outputs). An input named
 * "max_iters" (a number) overrides max_iters for that call, as in DSPy.
 *
 * Trajectory truncation, as DSPy's truncate_trajectory (the oldest step's
 * four entries are dropped, at most 3 times per LM step, never the last
 * step), happens when
 *   - the LM call fails with DX_EPROVIDER of kind bad_request whose
 *     message speaks of the context (context length / window, "prompt is
 *     too long", maximum number of tokens): the provider's context
 *     overflow; or
 *   - opts.max_trajectory_chars is set and the rendered trajectory is
 *     longer: dropped before the call, until it fits or one step is left.
 * If the react step still overflows, the loop ends and extract runs; if
 * extract does, the call fails with DX_EPROVIDER.
 *
 * Native tool calling (opts.native_tools): each step sends the signature's
 * inputs (the instructions as above, output next_thought) with the tools
 * declared through the provider's tools API (OpenAI tools, Anthropic
 * tool_use, Gemini function declarations) and the trajectory as assistant
 * tool-call / tool-result turns; the first tool call of the answer is the
 * step (its text, parsed as next_thought when it can be, the thought). An
 * answer without a tool call is finish. These steps are counted in the
 * run's usage but not traced (they are no Predict step); extract runs as
 * in text mode.
 *
 * Ownership: dx_react_new takes a reference to the signature and to each
 * tool; the module owns them (copies share them).
 */
#ifndef DSPEX_REACT_H
#define DSPEX_REACT_H

#include <stdbool.h>
#include <stddef.h>

#include "diag.h"
#include "export.h"
#include "module.h"
#include "signature.h"
#include "tool.h"

typedef struct dx_react_opts {
    int max_iters; /* 0: 20 */
    bool native_tools;
    size_t max_trajectory_chars; /* 0: no limit */
    /* Settings of both children's Predicts (copied); NULL = defaults. */
    const dx_predict_opts *predict;
} dx_react_opts;

/* A ReAct module on s with tools[0..n_tools) (see the top of this file).
 * max_iters <= 0: 20. NULL on a bad argument (see dx_react_create) or OOM. */
DX_API dx_module *dx_react_new(dx_signature *s, dx_tool *const *tools,
                               size_t n_tools, int max_iters);

/* The same with options. DX_OK with *out the caller's; DX_EINVAL with diag
 * for NULL s, a NULL tool, two tools with one name, or a tool named
 * "finish" (ReAct adds its own); DX_ENOMEM. */
DX_API int dx_react_create(dx_signature *s, dx_tool *const *tools,
                           size_t n_tools, const dx_react_opts *opts,
                           dx_module **out, dx_diag *diag);

#endif
