/*
 * io.h — the I/O loop bridge: libuv loops on threads of their own, the
 * "lanes" (by default two per CPU, up to eight; dx_io_set_threads).
 *
 * Processes never touch libuv: code that needs a loop (the HTTP transport)
 * hands it a function with dx_io_call() or dx_io_call_on(), which may be
 * called from any thread; the function then runs on that lane's I/O thread,
 * where it may create and use libuv handles on dx_io_loop(). Results go back
 * to processes as messages (dx_send works from the I/O threads). On a lane,
 * functions run one at a time, in the order they were submitted (one FIFO
 * queue per lane for all submitters); lanes run in parallel and share
 * nothing, so a module keeps its loop state per lane (dx_io_lane()).
 *
 * The threads start on first use (dx_io_call or dx_io_start) and run until
 * dx_io_stop(). Stop the loop before dx_runtime_stop(): work still in flight
 * then reports to live processes. docs/internals/http.md describes the
 * design.
 */
#ifndef DSPEX_IO_H
#define DSPEX_IO_H

#include <stdbool.h>

#include "export.h"

struct uv_loop_s;

/* The most lanes dx_io_set_threads accepts. */
#define DX_IO_MAX_THREADS 16

/* How many I/O threads the next start makes: 1..DX_IO_MAX_THREADS, or 0
 * for the default (the DX_IO_THREADS environment variable, else two per
 * CPU up to eight). DX_OK; DX_EINVAL (over the maximum); DX_ESTATE while
 * the I/O runs (stop it first). Any thread. */
DX_API int dx_io_set_threads(unsigned n);

/* How many lanes run now (0 when stopped; 1 when hosted). Any thread. */
DX_API unsigned dx_io_threads(void);

/* The calling thread's lane, 0..dx_io_threads()-1; -1 off the I/O
 * threads. Any thread. */
DX_API int dx_io_lane(void);

/* Start the I/O threads if they are not running. DX_OK if it runs afterwards
 * (also when it already ran); DX_ESTATE while a dx_io_stop() is under way;
 * DX_ESYS/DX_ENOMEM if the loop or thread cannot be made (nothing is left
 * behind). Any thread except the I/O threads. */
DX_API int dx_io_start(void);

/* Run the runtime's I/O on the host's libuv loop instead of a thread of
 * its own ("hosted"): call it on the thread that runs `loop`, after
 * dx_runtime_start and before anything uses I/O (the first LM call would
 * otherwise start the I/O threads). From then on every transfer runs on the
 * host's thread while it runs its loop (uv_run): a host that blocks its
 * loop thread — a blocking program call on it included — stalls every LM
 * call. Stop with dx_io_stop (or dx_runtime_stop) on that same thread;
 * the handles dspex opened then close on the loop's next turns, so run the
 * loop once more before closing it. The host's own handles are never
 * touched. DX_OK; DX_EINVAL (NULL loop); DX_ESTATE (the I/O loop already
 * runs, threaded or hosted); DX_ESYS. Host's loop thread. */
DX_API int dx_io_start_hosted(struct uv_loop_s *loop);

/* Stop the I/O threads: on each lane, work already submitted runs first,
 * then its stop hooks (dx_io_at_stop) run in reverse order of registration
 * and close their handles (any handle still open after them is closed by
 * the loop), then the loop is closed and the thread joined. Blocks until
 * done. DX_OK also when it was not running (idempotent). DX_ESTATE when
 * called on an I/O thread itself. Any other thread, processes included
 * (the calling process's scheduler thread blocks for the duration).
 * Hosted (dx_io_start_hosted): only on the host's loop thread, where it
 * runs the queued work and the hooks at once and does not block
 * (DX_ESTATE elsewhere). */
DX_API int dx_io_stop(void);

/* Whether the I/O threads run right now (racy by nature). Any thread. */
DX_API bool dx_io_running(void);

/* Run fn(arg) on lane 0's I/O thread, starting the threads if needed. On
 * DX_OK fn runs exactly once, before dx_io_stop() returns; on any error it
 * never runs and the caller keeps arg. DX_ESTATE while a stop is under
 * way, DX_ENOMEM, or what dx_io_start() returns. fn must not block: every
 * other I/O of its lane waits behind it. Any thread; from the I/O thread
 * itself fn runs on a later turn of the loop, never re-entrantly. */
DX_API int dx_io_call(void (*fn)(void *arg), void *arg);

/* dx_io_call on lane (lane % dx_io_threads()): the same lane number always
 * reaches the same thread while the I/O runs. */
DX_API int dx_io_call_on(unsigned lane, void (*fn)(void *arg), void *arg);

/* dx_io_call_on for work that only matters while the I/O runs: it never
 * starts the threads. DX_ESTATE (fn never runs) when the lane is stopped
 * or stopping, so a caller racing a dx_io_stop() cannot start the I/O
 * again behind it. */
DX_API int dx_io_post_on(unsigned lane, void (*fn)(void *arg), void *arg);

/* The calling I/O thread's loop (NULL off the I/O threads). */
DX_API struct uv_loop_s *dx_io_loop(void);

/* Whether the caller runs on an I/O thread. Any thread. */
DX_API bool dx_io_on_loop_thread(void);

/* Register fn(arg) to run on the calling lane's I/O thread when the loops
 * stop, after the lane's last queued work and before its loop is closed.
 * fn must close every libuv handle its module still holds on that loop. A
 * hook is registered for one life of the loop: a module that sets itself
 * up again after a restart registers again. DX_ENOMEM, or DX_ESTATE when
 * not called on an I/O thread. I/O thread. */
DX_API int dx_io_at_stop(void (*fn)(void *arg), void *arg);

#endif
