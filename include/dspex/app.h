/*
 * app.h — the application root: start a supervision tree from a spec and
 * stop it cleanly, the same way in examples, tests and services.
 *
 * An application is a root supervisor plus a small master process that owns
 * it (OTP's application master): the master starts the root linked to
 * itself, and stopping the application makes the master send the root exit
 * `shutdown`, so the whole tree stops in reverse start order, children
 * before parents. If the root gives up on its own (its restart intensity
 * was exceeded), the application ends and an `application_exited` error is
 * logged; dx_app_wait returns then.
 *
 * A dx_app handle is used by one thread or process at a time.
 */
#ifndef DSPEX_APP_H
#define DSPEX_APP_H

#include "export.h"
#include "runtime.h"
#include "supervisor.h"

typedef struct dx_app dx_app;

/* Start an application whose root supervisor is `root` (copied; child args
 * borrowed as for dx_sup_start_link; root->name, if set, registers the root
 * and names the application in logs). Any thread; the runtime must be
 * running (DX_ESTATE). On DX_OK *app_out is the handle (end it with
 * dx_app_stop). On failure nothing is left running: DX_EINVAL (bad spec),
 * DX_EEXIST (name taken), DX_ENOMEM, or DX_EINIT when a child failed to
 * start, with *error (optional, caller frees) as in dx_sup_start_link. */
DX_API int dx_app_start(const dx_sup_spec *root, dx_app **app_out,
                        dx_term **error);

/* The root supervisor's pid (DX_NOPID once the application has ended). */
DX_API dx_pid dx_app_root(const dx_app *app);

/* Wait until the application ends by itself (the root supervisor exited)
 * or timeout_ms passes (DX_INFINITY: forever). On DX_OK *reason (optional)
 * gets the root's exit reason (caller frees). DX_ETIMEDOUT. Any thread. */
DX_API int dx_app_wait(dx_app *app, int64_t timeout_ms, dx_term **reason);

/* Stop the application if it still runs (the root terminates its children
 * in reverse order, each with its own shutdown time), wait for it, and free
 * the handle. *reason (optional) gets the root's exit reason: `shutdown`
 * after a clean stop, the root's own reason if it had already ended.
 * NULL app is a no-op. Call it before dx_runtime_stop (after it, only the
 * handle is freed). Any thread. */
DX_API int dx_app_stop(dx_app *app, dx_term **reason);

/* Run a whole program the standard way: start the runtime (opts may be
 * NULL), start the application, run main(arg) in a process and wait for it
 * to return, then stop the application and the runtime. With main NULL it
 * waits until the application ends by itself. *exit_reason (optional) gets
 * main's exit reason (or the root's when main is NULL). Host thread
 * (DX_ESTATE from a process). */
DX_API int dx_app_run(const dx_runtime_opts *opts, const dx_sup_spec *root,
                      dx_proc_fn main, void *arg, dx_term **exit_reason);

#endif
