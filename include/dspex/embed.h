/*
 * embed.h — dspex inside a host program: start the runtime and application
 * trees from the host, call programs from any host thread (blocking, or
 * with a completion callback), and shut down with the calls in flight
 * drained up to a deadline and the rest cancelled.
 *
 * An embedding (dx_embed) is the host's handle on the runtime. It starts
 * the runtime if it is not running (and then stops it at shutdown), keeps
 * the application trees the host started through it, and counts the calls
 * in flight so shutdown can drain them.
 *
 * A call (dx_embed_call_async) runs the program in a process of its own,
 * as dx_module_call does, watched by a second small process that enforces
 * the deadline and cancellation: a crash in the program, a missed deadline
 * or a cancel ends that call alone. Its callback runs exactly once:
 *
 *   - on a runtime scheduler thread (inside a dspex process), by default;
 *   - on the host's libuv loop thread once dx_embed_attach_loop() was
 *     called: completions are queued and a uv_async_t wakes the loop, so a
 *     libuv host touches its own state from its own thread, without locks.
 *
 * Callback rule (as libuv's): a function that takes a callback and returns
 * an error never calls it; one that returns DX_OK calls it exactly once —
 * with the program's result, DX_ETIMEDOUT, DX_EDOWN (the program's process
 * crashed), or DX_ECANCELED (dx_embed_call_cancel, shutdown past its
 * drain deadline, or the runtime stopped under the call — the program's
 * process ending with reason `shutdown` counts as that, not as a crash).
 *
 * The runtime's scheduler threads keep running as before. LM transfers
 * run on dspex's I/O threads, or on the host's loop too when the host calls
 * dx_io_start_hosted (io.h) on it. docs/embedding.md is the guide;
 * examples/embed_service.c a whole host.
 *
 * Threads: "host thread" functions must not be called from a dspex process
 * (DX_ESTATE), because they block the calling OS thread and a process
 * would block its scheduler. "Any thread" functions may also be called
 * from processes and from callbacks.
 */
#ifndef DSPEX_EMBED_H
#define DSPEX_EMBED_H

#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "example.h"
#include "export.h"
#include "module.h"
#include "runtime.h"
#include "supervisor.h"

struct uv_loop_s;

typedef struct dx_embed dx_embed;
typedef struct dx_embed_call dx_embed_call;

/* The default bound on calls in flight (dx_embed_opts.max_calls). */
#define DX_EMBED_DEFAULT_MAX_CALLS 4096
/* How long past a call's deadline its program may still report its own
 * (more precise) timeout before the call is ended with DX_ETIMEDOUT. */
#define DX_EMBED_DEADLINE_GRACE_MS 100

typedef struct dx_embed_opts {
    /* Options for dx_runtime_start when the runtime is not running yet
     * (NULL: defaults). When it already runs, the embedding uses it and
     * leaves it running at shutdown. */
    const dx_runtime_opts *runtime;
    /* Calls in flight at most (accepted and not yet delivered); past it
     * dx_embed_call_async fails with DX_ELIMIT. 0 = the default. */
    size_t max_calls;
} dx_embed_opts;

/* Start an embedding: start the runtime unless it runs (opts may be NULL).
 * On DX_OK *out is the caller's; end it with dx_embed_shutdown. Errors
 * (*out NULL, nothing left running): DX_EINVAL (NULL out), DX_ESTATE from
 * a process, DX_ENOMEM, DX_ESYS, or another of dx_runtime_start's. Host
 * thread. */
DX_API int dx_embed_start(const dx_embed_opts *opts, dx_embed **out);

/* Deliver every later completion callback on `loop`'s thread. Call it on
 * the thread that runs the loop (the loop need not run yet); the calls
 * that thread makes on the loop from then on are its own business. The
 * embedding holds a referenced uv_async_t on the loop until
 * dx_embed_shutdown closes it (so uv_run does not return while the
 * embedding lives); run the loop once more after shutdown so libuv can
 * finish closing it, as for any handle. Errors: DX_EINVAL (NULL e or
 * loop), DX_EEXIST (a loop is already attached), DX_ESTATE (shutting down,
 * or called from a process), DX_ESYS (uv_async_init failed), DX_ENOMEM.
 * Host thread (the loop's). */
DX_API int dx_embed_attach_loop(dx_embed *e, struct uv_loop_s *loop);

/* Start an application tree (app.h's dx_app_start: root copied, child
 * args borrowed — they must outlive the embedding). The embedding stops
 * it at shutdown, after the calls are done and in reverse order of
 * starting, so LM clients in it serve the calls being drained. *root_out
 * (optional) gets the root supervisor's pid. Errors as dx_app_start
 * (DX_EINVAL — also for NULL e or root —, DX_EEXIST, DX_ENOMEM, DX_EINIT
 * with *error, the caller's), DX_ESTATE when shutting down; nothing is
 * left running. Any thread. */
DX_API int dx_embed_app_start(dx_embed *e, const dx_sup_spec *root,
                              dx_pid *root_out, dx_term **error);

/* A completion. call is the handle (valid during the callback, whether or
 * not the caller kept a reference). rc is DX_OK or the failure; on DX_OK
 * pred is the callback's to free (dx_prediction_free), else NULL. diag
 * (never NULL) says what failed; it is valid during the callback only. */
typedef void (*dx_embed_cb)(dx_embed_call *call, int rc, dx_prediction *pred,
                            const dx_diag *diag, void *ud);

/* Call module m on inputs (copied; the caller keeps inputs) with opts
 * (NULL: defaults; copied — opts->prices must outlive the call; the trace
 * is not kept). m is borrowed: it must stay alive and unchanged until the
 * callback has run. The deadline is opts->timeout_ms (0: dx_module_call's
 * default); past it (plus DX_EMBED_DEADLINE_GRACE_MS) the program's process
 * is killed and the callback gets DX_ETIMEDOUT, even when the program
 * holds its scheduler in code that never calls the runtime (the runtime's
 * own deadline for that process then stops it 100 ms later).
 *
 * On DX_OK cb(.., ud) will run exactly once, and *out (optional) is a
 * reference to the call the caller releases with dx_embed_call_release
 * (before or after the callback). Errors (cb never runs, *out NULL):
 * DX_EINVAL (NULL e, m, inputs or cb), DX_ESTATE (shutting down, or the
 * runtime stopped), DX_ELIMIT (max_calls in flight), DX_ENOMEM, or the
 * spawn's error. Any thread, callbacks included. */
DX_API int dx_embed_call_async(dx_embed *e, const dx_module *m,
                               const dx_example *inputs,
                               const dx_call_opts *opts, dx_embed_cb cb,
                               void *ud, dx_embed_call **out);

/* The blocking form: dx_embed_call_async and wait for the result. On DX_OK
 * *out is the caller's; otherwise *out is NULL and diag (optional) says
 * what failed: the errors of dx_embed_call_async, then those of the call
 * (the program's code, DX_ETIMEDOUT, DX_EDOWN, DX_ECANCELED). The result
 * is not routed through an attached loop, so this works on the loop's
 * thread too (blocking it). DX_EINVAL for NULL out; DX_ESTATE from a
 * process (use dx_module_call there). Host thread. */
DX_API int dx_embed_call_sync(dx_embed *e, const dx_module *m,
                              const dx_example *inputs,
                              const dx_call_opts *opts, dx_prediction **out,
                              dx_diag *diag);

/* Ask for a call to end now: its program's process is killed and the
 * callback gets DX_ECANCELED — unless the program finished first, in which
 * case the callback gets that result. Returns DX_OK when the request was
 * made (the callback has not run yet), DX_ENOENT when the call has already
 * finished (always so inside its own callback), DX_EINVAL for NULL. Does
 * not wait. Any thread. */
DX_API int dx_embed_call_cancel(dx_embed_call *call);

/* Wait until the call's callback has returned or timeout_ms passes
 * (DX_INFINITY: forever). DX_OK, DX_ETIMEDOUT, DX_EINVAL (NULL),
 * DX_EDEADLK when called on the attached loop's thread for a call whose
 * callback is delivered there (it could never run while the loop waits).
 * Valid also after dx_embed_shutdown (the call is done then). Host thread
 * (DX_ESTATE from a process). */
DX_API int dx_embed_call_wait(dx_embed_call *call, int64_t timeout_ms);

/* Drop the caller's reference. Does not cancel the call. NULL is a no-op.
 * Any thread. */
DX_API void dx_embed_call_release(dx_embed_call *call);

/* Calls accepted and whose callback has not returned yet (0 for NULL).
 * Any thread. */
DX_API size_t dx_embed_in_flight(dx_embed *e);

/* What dx_embed_shutdown did. */
typedef struct dx_embed_report {
    size_t drained;   /* calls that ended by themselves during the drain */
    size_t cancelled; /* calls cancelled at the drain deadline */
    size_t apps;      /* application trees stopped */
} dx_embed_report;

/* Shut the embedding down and free it:
 *   1. refuse new calls (DX_ESTATE);
 *   2. wait up to drain_ms (0: none, DX_INFINITY: until all are done) for
 *      the calls in flight to finish and their callbacks to return;
 *   3. cancel the rest (their callbacks get DX_ECANCELED, or their result
 *      if it raced the cancel) and wait for those callbacks;
 *   4. close the attached loop's handle; stop the application trees,
 *      last started first; stop the runtime if dx_embed_start started it.
 * Callbacks delivered through an attached loop run inside this function
 * (on the loop thread, which is the one calling it). Call handles stay
 * valid until released. *report (optional) says what happened. NULL e is
 * a no-op. Errors (nothing is done): DX_ESTATE from a process, or from a
 * thread other than the attached loop's; DX_EDEADLK inside a completion
 * callback. Host thread. */
DX_API int dx_embed_shutdown(dx_embed *e, int64_t drain_ms,
                             dx_embed_report *report);

#endif
