/*
 * blocking.h — calls that block a thread (sleep, a blocking read, a
 * synchronous client library, a long computation) made from a process
 * without blocking its scheduler.
 *
 * A process that calls such a function directly keeps its scheduler thread
 * for as long as the call lasts: the other processes queued there wait, its
 * timers do not fire, and a kill cannot reach it (it is delivered at the
 * next runtime call). dx_run_blocking runs the function on one of the
 * runtime's blocking threads instead and parks the calling process as a
 * receive does, so the process can time out, be cancelled or be killed
 * while the function goes on; what the function returns is then freed for
 * it when it finally returns.
 *
 * The blocking threads are started as calls need them, up to
 * DX_BLOCKING_MAX_THREADS at once (further calls wait their turn, in
 * order), and stay until dx_runtime_stop, which waits for the calls still
 * running: a function that never returns keeps dx_runtime_stop waiting, as
 * an endless loop in a process does.
 *
 * A fault inside fn (a NULL or wild pointer, a stack overflow, SIGBUS,
 * SIGFPE, SIGILL) ends the calling process with the reason it would have
 * had the fault been in its own code ({segv, Address}, stack_overflow, ...;
 * dx_run_blocking does not return); a caller that already stopped waiting
 * is left alone. The fault is logged, arg_free still runs, and the thread
 * serves the next call; what fn had allocated and any lock it held stay as
 * they were. As in a process, a fault inside the C library (or with fault
 * isolation off: dx_runtime_opts, ThreadSanitizer builds) is not isolated
 * and ends the OS process.
 *
 * Ownership: arg is the runtime's from the call on; arg_free(arg) (if not
 * NULL) runs on the blocking thread once fn returns, whether or not
 * anyone still waits. The result is the caller's on DX_OK; otherwise
 * result_free(result) (if not NULL) runs once fn returns. A call whose
 * caller stopped waiting before a thread took it does not run at all
 * (only arg_free does).
 */
#ifndef DSPEX_BLOCKING_H
#define DSPEX_BLOCKING_H

#include <stdint.h>

#include "export.h"

#define DX_BLOCKING_MAX_THREADS 64

/* The function to run: anything but a runtime call that waits (dx_receive,
 * dx_sleep, dx_call...), which needs a process; it may send (dx_send). */
typedef void *(*dx_blocking_fn)(void *arg);

/* Run fn(arg) on a blocking thread and wait up to timeout_ms (DX_INFINITY:
 * no limit) for it to return. DX_OK with *result_out = what fn returned;
 * DX_ETIMEDOUT when it had not returned in time (it goes on, and its
 * result is freed with result_free). A process killed while it waits ends
 * at once; the call goes on without it. Without a process, in a stopping
 * runtime or out of memory fn does not run (arg_free does): DX_ENOTPROC,
 * DX_ESTATE, DX_ENOMEM. DX_EINVAL: fn or result_out NULL. Process. */
DX_API int dx_run_blocking(dx_blocking_fn fn, void *arg,
                           void (*arg_free)(void *arg),
                           void (*result_free)(void *result),
                           int64_t timeout_ms, void **result_out);

#endif
