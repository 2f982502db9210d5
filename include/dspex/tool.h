/*
 * tool.h — tools an agent can call: a name, a description, the JSON schema
 * of the arguments, and the code that runs.
 *
 * A tool's arguments are declared in C as an array of dx_tool_param ({name,
 * DSPy type text such as "str", "int", "list[str]", description, required,
 * default}); the JSON schema of each argument is the one Python DSPy's Tool
 * derives for that annotation (pydantic's TypeAdapter(...).json_schema(),
 * key order included), so dx_tool_describe renders exactly DSPy's str(tool):
 *
 *     add, whose description is <desc>Adds.</desc>. It takes arguments
 *     {'a': {'type': 'integer'}, 'b': {'type': 'integer'}}.
 *
 * The code is a C function (dx_tool_new) or a module run as a program
 * (dx_tool_from_module: the arguments become its inputs, its prediction's
 * fields, as a JSON object, the observation).
 *
 * dx_tool_call never fails because of the tool: it validates the arguments
 * against the schema, runs the tool in a process of its own under a timeout
 * and turns every failure — bad arguments, an error code, a crash, a
 * timeout, no result — into an observation text "Execution error in
 * <name>: <what>", as DSPy's ReAct writes it (without Python's traceback).
 * A result that is not valid UTF-8 has the bad bytes replaced by U+FFFD; a
 * result longer than the tool's limit is cut there and marked. A hanging
 * tool is killed at its timeout, which works when it is parked in a runtime
 * call (dx_receive, dx_sleep, an LM call); an endless pure-C loop cannot be
 * stopped (see docs/internals/runtime.md).
 *
 * Built in: dx_tool_calculator_new (arithmetic on numbers, no code
 * evaluation) and dx_tool_finish_new (ReAct's "finish").
 *
 * Ownership and threads: tools are reference counted and immutable after
 * creation apart from the setters, which must run before the tool is
 * shared. Any number of calls may run at once. ud belongs to the caller
 * and must outlive the tool.
 */
#ifndef DSPEX_TOOL_H
#define DSPEX_TOOL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "export.h"
#include "module.h"
#include "provider.h"

/* One declared argument (everything copied). type: a DSPy type text (str,
 * int, float, bool, list[T], dict, dict[K, V], Literal[...], Optional[T],
 * Any); NULL means Any. default_json (JSON text, may be NULL) goes into
 * the schema as "default" and makes the argument optional. An argument is
 * required when `required` is set and it has no default. */
typedef struct dx_tool_param {
    const char *name;
    const char *type;
    const char *desc;
    bool required;
    const char *default_json;
} dx_tool_param;

/* A tool's code. args: the validated arguments (an object; borrowed). Put
 * a dx_malloc'd text in *result_text and return 0; or return a dx_err code
 * (then *result_text, if set, is the error's explanation). Runs in a
 * process of its own: it may block in runtime calls (dx_sleep, LM calls,
 * dx_module_call). */
typedef int (*dx_tool_fn)(const cJSON *args, char **result_text, void *ud);

typedef struct dx_tool dx_tool;

/* How a call ended (the observation says the same in words). */
typedef enum dx_tool_status {
    DX_TOOL_OK,
    DX_TOOL_BAD_ARGS, /* not an object, unknown or missing or ill-typed */
    DX_TOOL_FAILED,   /* the function returned an error code */
    DX_TOOL_CRASHED,  /* its process died */
    DX_TOOL_TIMEOUT,  /* killed at the timeout */
    DX_TOOL_NO_RESULT /* returned 0 without a result text */
} dx_tool_status;

#define DX_TOOL_DEFAULT_TIMEOUT_MS 30000
#define DX_TOOL_DEFAULT_MAX_RESULT 65536

/* A tool running fn. name: letters, digits, '_' or '-' (1..64 bytes, as
 * the providers' tools APIs require); desc may be NULL. DX_OK with *out
 * holding one reference; DX_EINVAL with diag for a bad name, a repeated
 * or empty argument name; DX_ESYNTAX with diag for a type or default that
 * does not parse; DX_ENOMEM. */
DX_API int dx_tool_new(const char *name, const char *desc,
                       const dx_tool_param *params, size_t n_params,
                       dx_tool_fn fn, void *ud, dx_tool **out, dx_diag *diag);

/* dx_tool_new whose ud is the tool's: ud_free(ud) runs when the last
 * reference goes (and at once when creation fails). */
DX_API int dx_tool_new_owned(const char *name, const char *desc,
                             const dx_tool_param *params, size_t n_params,
                             dx_tool_fn fn, void *ud, void (*ud_free)(void *),
                             dx_tool **out, dx_diag *diag);

/* A tool that runs module m (borrowed: it must outlive the tool) with
 * dx_module_call(opts) on the arguments as inputs; the observation is the
 * prediction's fields as a JSON object ({"answer": "..."}). params NULL:
 * the inputs of m's first predictor, with their types, all required.
 * opts may be NULL (the LM client registered as "lm"); it is copied (its
 * strings too; prices must outlive the tool). A failed call is an
 * observation with the call's diag. Errors as dx_tool_new; DX_EINVAL when
 * params is NULL and m has no predictor. */
DX_API int dx_tool_from_module(const char *name, const char *desc,
                               const dx_module *m, const dx_tool_param *params,
                               size_t n_params, const dx_call_opts *opts,
                               dx_tool **out, dx_diag *diag);

/* A tool served by an actor: a server (server.h) — a dspex process, or a
 * gen_server on a BEAM node — called with the request term
 *
 *     {tool_call, ToolName :: binary, ArgsJSON :: binary}
 *
 * (message tag DX_TAG_TERM; ArgsJSON is the validated arguments as JSON
 * text) that replies with the result text as a binary, {ok, Binary}, or
 * {error, Binary} (the error's text, which becomes the "Execution error"
 * observation). Only terms cross, so the actor may be another agent, a
 * program's server, or a process on another node. If the actor is not
 * there, or dies during the call, the call is a tool error; the tool's
 * timeout bounds the call.
 *
 * dx_tool_from_actor looks actor_name up in this node's registry at each
 * call, so a supervised actor restarted under its name keeps serving
 * (DX_EINVAL for a NULL or empty name). dx_tool_from_pid calls one pid:
 * a local process, or a remote one such as dx_node_name_pid(node, name)
 * ({name, node}, resolved on that node at each call; node.h). Errors as
 * dx_tool_new. */
DX_API int dx_tool_from_actor(const char *name, const char *desc,
                              const dx_tool_param *params, size_t n_params,
                              const char *actor_name, dx_tool **out,
                              dx_diag *diag);
DX_API int dx_tool_from_pid(const char *name, const char *desc,
                            const dx_tool_param *params, size_t n_params,
                            dx_pid pid, dx_tool **out, dx_diag *diag);

/* The calculator: argument `expression` (str). Numbers (ints, decimals,
 * exponents), + - * / // % ** with Python's precedence and results (int
 * arithmetic stays int; / gives a float), unary minus, parentheses.
 * Division by zero, overflow and syntax errors are tool errors. NULL on
 * OOM. */
DX_API dx_tool *dx_tool_calculator_new(void);
/* ReAct's finish: no arguments, observation "Completed.". desc is copied.
 * NULL on OOM. */
DX_API dx_tool *dx_tool_finish_new(const char *desc);

DX_API dx_tool *dx_tool_ref(dx_tool *t);
/* Drop a reference (NULL is a no-op). */
DX_API void dx_tool_unref(dx_tool *t);

/* Per-call timeout (ms > 0) and the longest result kept (bytes > 0). Set
 * before sharing the tool. DX_EINVAL. */
DX_API int dx_tool_set_timeout(dx_tool *t, int64_t ms);
DX_API int dx_tool_set_max_result(dx_tool *t, size_t bytes);
/* The tool's fn blocks its thread (a synchronous HTTP client, a database,
 * sleep): run it on a blocking thread (blocking.h) so that the timeout
 * stops the call and the scheduler goes on meanwhile; a call stopped so
 * finishes on its own thread and its result is dropped; a fault in it
 * ends the call as DX_TOOL_CRASHED, as in the tool's own process. Such an
 * fn must not make runtime calls that wait (dx_sleep, LM calls). Set
 * before sharing the tool. DX_EINVAL for a NULL t. */
DX_API int dx_tool_set_blocking(dx_tool *t, bool blocking);

DX_API const char *dx_tool_name(const dx_tool *t);
DX_API const char *dx_tool_desc(const dx_tool *t); /* may be NULL */
/* {"<arg>": <schema>, ...} in declaration order (DSPy's tool.args). */
DX_API const cJSON *dx_tool_args(const dx_tool *t);

/* DSPy's str(tool) (see the top of this file). *out is the caller's
 * (dx_free). DX_OK, DX_ENOMEM. */
DX_API int dx_tool_describe(const dx_tool *t, char **out);
/* The parameters object the providers take: {"type": "object",
 * "properties": args, "required": [...]} (DSPy's
 * format_as_litellm_function_call), as compact JSON text. *out is the
 * caller's. DX_OK, DX_ENOMEM. */
DX_API int dx_tool_parameters_json(const dx_tool *t, char **out);
/* Declare the tool on a request (dx_lm_request_add_tool). */
DX_API int dx_tool_add_to_request(const dx_tool *t, dx_lm_request *req);

/* Check args against the schema without running anything. DX_OK, or
 * DX_EINVAL with diag "Arg x is invalid: ..." (the text the observation
 * would carry). */
DX_API int dx_tool_validate(const dx_tool *t, const cJSON *args, dx_diag *diag);

/* Call the tool on args (a JSON object; NULL = {}). On DX_OK
 * *observation (the caller's, dx_free) is the result or the "Execution
 * error in <name>: ..." text, and *status (may be NULL) says which. Works
 * from a process or a host thread while the runtime runs. DX_EINVAL (NULL
 * t or observation), DX_ESTATE (runtime not running), DX_ENOMEM: then
 * nothing was run and *observation is NULL. */
DX_API int dx_tool_call(const dx_tool *t, const cJSON *args, char **observation,
                        dx_tool_status *status);

#endif
