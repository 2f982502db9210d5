/*
 * supervisor.h — supervision trees with OTP's semantics.
 *
 * A supervisor is a process that starts child processes from child specs,
 * links to them, traps exits and restarts them as their restart type and the
 * supervisor's strategy say. If more than `intensity` restarts happen within
 * `period_s` seconds it terminates all its children and exits with reason
 * `shutdown`, which escalates the failure to its own supervisor. Children
 * start in spec order and stop in reverse order. Supervisors nest: a child of
 * type DX_SUP_SUPERVISOR is itself a supervisor (see dx_sup_start_nested).
 *
 * Everything here follows OTP's `supervisor` module; the few places where
 * dspex differs (a C start function instead of an MFA, the spec as data
 * instead of an init/1 callback, error codes instead of error tuples) are
 * listed in docs/internals/supervisor.md with the reasons.
 *
 * Memory rule that matters in dspex: process stacks are copied in and out
 * when processes park, so a pointer into a process's stack is meaningless to
 * another process. A spec's `arg` (and a dynamic child's `extra`) is used by
 * the supervisor process and must point to static, heap or dx_malloc'd
 * memory, never to a local variable of a process.
 *
 * Reports go to the logger (log.h): child_started and child_restarted are
 * `info` progress reports; child_terminated, start_error, shutdown_error and
 * reached_max_restart_intensity are `error` reports. Each carries the
 * supervisor, the child id, its pid, the reason and the restart count.
 */
#ifndef DSPEX_SUPERVISOR_H
#define DSPEX_SUPERVISOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "runtime.h"
#include "term.h"

/* A start function's "ignore" (OTP's `ignore`): no process was started and
 * none is expected. Positive so it can never be mistaken for a dx_err. */
#define DX_SUP_IGNORE 1

/* Longest child id in bytes. */
#define DX_SUP_ID_MAX 63

typedef enum dx_sup_strategy {
    DX_SUP_ONE_FOR_ONE = 0, /* restart only the child that ended */
    DX_SUP_ONE_FOR_ALL,     /* stop all others, restart all */
    DX_SUP_REST_FOR_ONE,    /* stop and restart the child and those after it */
    /* One child spec, used as a template for any number of children added
     * at run time with dx_sup_start_dynamic (OTP's simple_one_for_one,
     * Elixir's DynamicSupervisor). */
    DX_SUP_SIMPLE_ONE_FOR_ONE,
} dx_sup_strategy;

typedef enum dx_sup_restart {
    DX_SUP_PERMANENT = 0, /* always restarted */
    /* restarted only when it ends abnormally: a reason other than normal,
     * shutdown or {shutdown, _} */
    DX_SUP_TRANSIENT,
    DX_SUP_TEMPORARY, /* never restarted; removed from the supervisor when
                         it ends or is terminated */
} dx_sup_restart;

typedef enum dx_sup_child_type {
    DX_SUP_WORKER = 0,
    DX_SUP_SUPERVISOR,
} dx_sup_child_type;

/* Values of dx_child_spec.shutdown_ms besides a positive timeout in ms. */
#define DX_SUP_SHUTDOWN_DEFAULT 0 /* 5000 for a worker, infinity for a sup */
#define DX_SUP_SHUTDOWN_INFINITY DX_INFINITY /* wait as long as it takes */
#define DX_SUP_BRUTAL_KILL (-2)              /* kill at once, untrappably */

/* Start one child: start a process LINKED to the caller (the supervisor
 * runs this function in its own process; use dx_spawn_link, or
 * dx_server_start with .link = true) and put its pid in *pid_out. Return
 * DX_OK, DX_SUP_IGNORE (nothing started), or a negative dx_err code for a
 * failed start. `arg` is the spec's arg; `extra` is NULL for a static child
 * and the per-child argument of a dynamic child. The function runs inside
 * the supervisor: it must not crash, and it blocks the supervisor while it
 * runs (as in OTP). Returning DX_OK without linking a live process is a
 * contract violation the supervisor cannot detect. */
typedef int (*dx_sup_start_fn)(void *arg, void *extra, dx_pid *pid_out);

typedef struct dx_child_spec {
    /* Unique among the supervisor's children, 1..DX_SUP_ID_MAX bytes
     * (copied). Ignored for the template of a simple_one_for_one
     * supervisor (may be NULL there). */
    const char *id;
    dx_sup_start_fn start;
    /* Borrowed: must stay valid while the supervisor lives (restarts pass
     * it again). See the memory rule at the top of this file. */
    void *arg;
    dx_sup_restart restart; /* default (0): permanent */
    int64_t shutdown_ms;    /* see DX_SUP_SHUTDOWN_* above */
    dx_sup_child_type type; /* default (0): worker */
    /* simple_one_for_one only: frees a dynamic child's extra when the child
     * leaves the supervisor (temporary/transient end, terminate, supervisor
     * exit, ignore). NULL: extras are not freed. Not run if the supervisor
     * itself is killed. */
    void (*extra_free)(void *extra);
} dx_child_spec;

typedef struct dx_sup_spec {
    /* Register the supervisor under this name (copied; optional). */
    const char *name;
    dx_sup_strategy strategy;
    /* More than `intensity` restarts within `period_s` seconds make the
     * supervisor give up. Both 0: OTP's defaults, 1 restart in 5 s. With
     * period_s > 0, intensity is taken as given (0 = never restart). With
     * period_s == 0 and intensity > 0, the period is 5 s. */
    int intensity;
    int period_s;
    /* Child specs in start order. The array and the ids are copied at start;
     * each spec's arg is borrowed. simple_one_for_one: exactly one spec, the
     * template, and no child is started at supervisor start. */
    const dx_child_spec *children;
    size_t nchildren;
} dx_sup_spec;

/* ------------------------------------------------------------------ */
/* Starting and stopping                                               */
/* ------------------------------------------------------------------ */

/* Start a supervisor linked to the caller and start its children in order;
 * returns once every child has started (or one failed). On DX_OK *pid_out
 * (optional) is the supervisor.
 * Errors: DX_EINVAL for a bad spec (NULL start, empty/duplicate/too long id,
 * out-of-range fields, simple_one_for_one without exactly one spec);
 * DX_EEXIST if name is taken; DX_ENOMEM; DX_ENOTPROC from a host thread
 * (use dx_app_start there); DX_EINIT if a child failed to start: the
 * children started before it are terminated in reverse order, a start_error
 * report names the child, and *error (if non-NULL) receives
 * {shutdown, {failed_to_start_child, Id, Reason}} (caller frees) where
 * Reason is the start function's code as a lower-case atom (enomem,
 * einit, like Erlang's POSIX error atoms), or bad_return. The spec is read during the call only. Process. */
DX_API int dx_sup_start_link(const dx_sup_spec *spec, dx_pid *pid_out,
                             dx_term **error);

/* A ready-made start function for a nested supervisor: arg is a
 * `const dx_sup_spec *` (borrowed like any arg, so static or heap). Use it
 * with .type = DX_SUP_SUPERVISOR. A child that fails to start makes it
 * return DX_EINIT. */
DX_API int dx_sup_start_nested(void *spec, void *extra, dx_pid *pid_out);

/* Stop a supervisor like gen_server:stop: it terminates its children in
 * reverse start order and exits with `reason` (ownership taken; NULL =
 * normal). Waits up to timeout_ms (DX_INFINITY: forever). A caller that is
 * linked to the supervisor and does not trap exits is itself ended by any
 * reason other than normal. DX_ENOPROC, DX_ETIMEDOUT. Process. */
DX_API int dx_sup_stop(dx_pid sup, dx_term *reason, int64_t timeout_ms);

/* ------------------------------------------------------------------ */
/* Run-time API (OTP's start_child, terminate_child, ...)               */
/* ------------------------------------------------------------------ */
/* All of these are calls to the supervisor process: Process only. Each
 * returns DX_ENOPROC if sup is not alive and DX_EDOWN if it ended during the
 * call. They wait as long as the supervisor takes (OTP uses infinity). */

/* Add a child spec at the end of the start order and start it (not for
 * simple_one_for_one: DX_ENOTSUP). On DX_OK *pid_out is the child, or
 * DX_NOPID if its start function returned DX_SUP_IGNORE (the spec is then
 * kept, not running, unless the child is temporary). DX_EEXIST if a child
 * with that id exists (*pid_out is its pid if it is running), DX_EINVAL for
 * a bad spec, else the start function's error code (spec discarded). */
DX_API int dx_sup_start_child(dx_pid sup, const dx_child_spec *spec,
                              dx_pid *pid_out);

/* simple_one_for_one: start a new child from the template, passing `extra`
 * to the start function (now and on every restart). On DX_OK the supervisor
 * owns extra (freed with the template's extra_free when the child leaves;
 * at once if the start function ignored) and *pid_out is the child (DX_NOPID
 * for ignore). On any error the caller keeps extra: DX_ENOTSUP for other
 * strategies, else the start function's error code. */
DX_API int dx_sup_start_dynamic(dx_pid sup, void *extra, dx_pid *pid_out);

/* Terminate a running child (shutdown protocol of its spec). Its spec is
 * kept (not running) unless it is temporary. DX_OK also when the child was
 * not running; DX_ENOENT if no such id; DX_ENOTSUP for simple_one_for_one
 * (use dx_sup_terminate_pid). */
DX_API int dx_sup_terminate_child(dx_pid sup, const char *id);

/* simple_one_for_one: terminate the dynamic child `child` and remove it.
 * DX_ENOENT if it is not a child (always for other strategies, as in OTP,
 * where static children are named by id). */
DX_API int dx_sup_terminate_pid(dx_pid sup, dx_pid child);

/* Start again a child that is not running (terminated, or ignored at
 * start). On DX_OK *pid_out is its new pid (DX_NOPID on ignore). DX_ENOENT
 * if no such id; DX_ESTATE if it is running or being restarted; DX_ENOTSUP
 * for simple_one_for_one; else the start function's error code. */
DX_API int dx_sup_restart_child(dx_pid sup, const char *id, dx_pid *pid_out);

/* Remove the spec of a child that is not running. DX_ENOENT, DX_ESTATE (it
 * runs or is being restarted), DX_ENOTSUP for simple_one_for_one. */
DX_API int dx_sup_delete_child(dx_pid sup, const char *id);

/* Current pid of the child with this id, following restarts. DX_ENOENT if
 * no such child; DX_ENOPROC if it exists but is not running (*pid_out is
 * then DX_NOPID). Not for simple_one_for_one (DX_ENOTSUP). */
DX_API int dx_sup_find_child(dx_pid sup, const char *id, dx_pid *pid_out);

typedef enum dx_sup_child_status {
    DX_SUP_CHILD_RUNNING = 0,
    DX_SUP_CHILD_RESTARTING, /* a restart failed; it is being retried */
    DX_SUP_CHILD_UNDEFINED,  /* not running: terminated, or ignored */
} dx_sup_child_status;

typedef struct dx_sup_child {
    char id[DX_SUP_ID_MAX + 1]; /* "" for dynamic children */
    dx_pid pid;                 /* DX_NOPID unless running */
    dx_sup_child_status status;
    dx_sup_child_type type;
    dx_sup_restart restart;
    /* times the supervisor restarted this child after it ended (a
     * dx_sup_restart_child on request does not count) */
    uint64_t restarts;
} dx_sup_child;

/* Snapshot of the children: static ones in start order, dynamic ones in no
 * particular order. On DX_OK *out is an array of *count entries the caller
 * frees with dx_free (NULL when count is 0). */
DX_API int dx_sup_which_children(dx_pid sup, dx_sup_child **out, size_t *count);

typedef struct dx_sup_counts {
    size_t specs;       /* children, running or not */
    size_t active;      /* running children */
    size_t supervisors; /* children of type supervisor, running or not */
    size_t workers;     /* children of type worker, running or not */
    /* dspex additions: restarts this supervisor made since it started, and
     * those that still count against its intensity (made within the last
     * period_s seconds; never more than intensity while it runs). */
    uint64_t restarts;
    uint64_t restarts_in_period;
} dx_sup_counts;

DX_API int dx_sup_count_children(dx_pid sup, dx_sup_counts *out);

/* Names, for messages and logs. Static strings. */
DX_API const char *dx_sup_strategy_name(dx_sup_strategy s);
DX_API const char *dx_sup_restart_name(dx_sup_restart r);

#endif
