/*
 * runtime.h — the actor kernel: processes, mailboxes, links, monitors,
 * registry, timers and the schedulers that run them.
 *
 * A process is a lightweight thread of straight-line C code with a mailbox.
 * Blocking calls (dx_receive, dx_sleep, dx_call) park the process, never the
 * scheduler thread; so do sleep(), usleep() and nanosleep() called from
 * process code, which dspex defines (elsewhere they are the C library's). Each scheduler thread has its own run queue; idle
 * schedulers steal processes that have not started yet. A process is
 * preempted at its next runtime call once it has used its budget.
 *
 * Messages move ownership: dx_send() takes the message on success and on
 * failure; the receiver owns what dx_receive() hands it and frees it with
 * dx_msg_free(). Nothing is copied inside a node.
 *
 * Threads: functions marked "process" must be called from code running in a
 * dspex process (they return DX_ENOTPROC otherwise); "any thread" functions
 * may also be called from host threads while the runtime runs.
 *
 * docs/internals/runtime.md describes the scheduler, the mailbox, the
 * copy-stack design and exactly which faults are recoverable.
 */
#ifndef DSPEX_RUNTIME_H
#define DSPEX_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc.h"
#include "error.h"
#include "export.h"
#include "term.h"

/* ------------------------------------------------------------------ */
/* Runtime lifecycle                                                   */
/* ------------------------------------------------------------------ */

#define DX_RUNTIME_DEFAULT_DESCRIPTORS 1024u

typedef struct dx_runtime_opts {
    /* Scheduler threads; 0 = env DX_SCHEDULERS, else online CPUs. */
    int schedulers;
    /* Run one scheduler thread that picks the next runnable process with a
     * generator seeded from `seed`, so an interleaving replays exactly. */
    bool deterministic;
    uint64_t seed;
    /* Bytes of the stack a process runs on (per scheduler, shared by its
     * processes); 0 = 1 MiB. Deeper use ends the process with reason
     * stack_overflow. */
    size_t stack_size;
    /* Runtime calls a process may make before it is preempted; 0 = 2000. */
    int budget;
    /* Install SIGSEGV/SIGBUS/SIGFPE/SIGILL handlers that turn a fault in a
     * process's own code into that process's exit (default true; the
     * field is "disable" so a zeroed struct means "on"). */
    bool disable_fault_isolation;
    /* Room made in the process's descriptor table before the scheduler
     * threads start (dx_reserve_descriptors); 0 =
     * DX_RUNTIME_DEFAULT_DESCRIPTORS, room for the HTTP layer's default
     * 256 connections per host and a local server's other ends. */
    unsigned descriptors;
} dx_runtime_opts;

/* Start the runtime (one per OS process). opts may be NULL for defaults.
 * DX_ESTATE if already running; DX_ESYS/DX_ENOMEM if threads or stacks
 * cannot be made (nothing is left behind). Host thread. */
DX_API int dx_runtime_start(const dx_runtime_opts *opts);

/* Stop the runtime: every process receives an untrappable exit signal with
 * reason `shutdown` and ends at its next runtime call; the schedulers are
 * joined and all memory is freed. Blocks until done. A process that never
 * makes another runtime call (an endless pure-C loop) is stopped where it
 * runs about 50 ms later, with fault isolation on (the default); without
 * it, it cannot be stopped. See docs/internals/runtime.md. DX_ESTATE if not
 * running. Host thread, never from a process. */
DX_API int dx_runtime_stop(void);

/* Make room in the process's descriptor table for `count` descriptors now
 * (capped by the RLIMIT_NOFILE soft limit), so that opening many sockets
 * later does not stall: Linux grows the table by doubling, and in a process
 * with threads every doubling waits for an RCU grace period (milliseconds)
 * while each thread that opens or accepts a descriptor sleeps. The table
 * never shrinks; the cost is a few bytes per descriptor. dx_runtime_start
 * makes room for dx_runtime_opts.descriptors before its threads exist,
 * where it is free. Leaves every open descriptor as it was. Returns the
 * room the table now has for certain (at least count unless the limit is
 * lower), 0 if none could be made (no descriptor to duplicate, or the
 * limit reached). Any thread, also before dx_runtime_start. */
DX_API unsigned dx_reserve_descriptors(unsigned count);

DX_API bool dx_runtime_running(void);
/* Number of scheduler threads of the running runtime (0 if stopped). */
DX_API int dx_runtime_schedulers(void);

typedef void (*dx_proc_fn)(void *arg);

/* Convenience for programs whose whole life is one main process: start the
 * runtime, spawn main(arg), wait for it to exit, stop the runtime. If
 * exit_reason is non-NULL it receives main's exit reason (caller frees).
 * Host thread. */
DX_API int dx_run(const dx_runtime_opts *opts, dx_proc_fn main, void *arg,
                  dx_term **exit_reason);

/* Block the calling host thread until `pid` exits or timeout_ms passes
 * (negative = forever). On DX_OK *reason (if non-NULL) gets the exit reason
 * (caller frees). DX_ENOPROC if the pid was already dead (reason noproc):
 * a process spawned from a host thread may end before this call begins, so
 * to learn a quick process's reason, spawn it from a process that monitors
 * it (or use dx_run). DX_ESTATE when called from a process or when the
 * runtime stops first. Host thread only. */
DX_API int dx_wait_exit(dx_pid pid, int64_t timeout_ms, dx_term **reason);

/* ------------------------------------------------------------------ */
/* Messages                                                            */
/* ------------------------------------------------------------------ */

/* Tags below zero are the runtime's; user tags are >= 0 (0 is the tag of a
 * plain term message, e.g. one that came from a BEAM node). */
#define DX_TAG_TERM 0
#define DX_TAG_EXIT (-1)    /* trapped exit: from = pid, term = reason */
#define DX_TAG_DOWN (-2)    /* monitor fired: ref, from = pid, term = reason */
#define DX_TAG_TIMEOUT (-3) /* reserved for timer messages of behaviours */

/* How a message was sent; a server reads it to tell calls from casts. */
typedef enum dx_msg_kind {
    DX_MSG_PLAIN = 0, /* dx_send */
    DX_MSG_CALL,      /* dx_call request: from + ref identify the caller */
    DX_MSG_CAST,      /* dx_cast */
    DX_MSG_REPLY,     /* dx_reply to a dx_call (consumed by dx_call) */
    DX_MSG_SYSTEM,    /* behaviour-internal control message */
} dx_msg_kind;

/* Runtime-owned queue link embedded first in every message. */
struct dx__node {
    struct dx__node *next;
};

typedef struct dx_msg dx_msg;
struct dx_msg {
    /* Runtime-owned: do not touch. */
    struct dx__node dx__node;
    void *dx__owner; /* process holding it after dx_receive */
    dx_msg *dx__held_prev;
    uint32_t dx__signal;
    /* Visible to the receiver. */
    uint32_t kind; /* dx_msg_kind */
    int64_t tag;
    dx_pid from;   /* sender (set by dx_send; DX_NOPID from a host thread) */
    dx_ref ref;    /* correlation reference, or DX_NOREF */
    dx_term *term; /* owned structured payload, or NULL */
    void *ptr;     /* owned opaque payload, or NULL */
    void (*ptr_free)(void *ptr); /* destructor for ptr (NULL: not freed) */
};

/* A new message with the given tag and no payload; NULL on OOM. Fill term
 * and/or ptr+ptr_free before sending. Any thread. */
DX_API dx_msg *dx_msg_new(int64_t tag);
/* Free a message and its payloads (dx_term_free(term), ptr_free(ptr)).
 * NULL is a no-op. A message a process received belongs to that process
 * until it frees or sends it; if the process exits first (for any reason,
 * crashes included) the runtime frees it. Any thread for messages nobody
 * received; the receiving process for received ones. */
DX_API void dx_msg_free(dx_msg *m);
/* Detach and return the term payload (caller owns it). */
DX_API dx_term *dx_msg_take_term(dx_msg *m);
/* Detach and return the opaque payload (caller owns it; ptr_free is cleared). */
DX_API void *dx_msg_take_ptr(dx_msg *m);

/* Send m to pid. Takes ownership of m in every case (freed on failure).
 * DX_ENOPROC if pid is not alive (sending to a dead pid is not an error in
 * Erlang; here it is reported and the message freed). Any thread. */
DX_API int dx_send(dx_pid to, dx_msg *m);
/* Send m as dx_send does, without waking pid: the message waits in pid's
 * mailbox, in its place among the others, until pid wakes for anything
 * else (a message sent with dx_send, a timeout, a signal) or until more than
 * 64 sent this way wait, when the next one wakes it. For bookkeeping that
 * nobody waits on: a call to pid made afterwards still finds it handled
 * first, for it comes first in the mailbox; a process that only ever gets
 * lazy messages handles them some 64 at a time. To another node's pid it
 * is dx_send. Takes ownership of m in every case. Any thread. */
DX_API int dx_send_lazy(dx_pid to, dx_msg *m);
/* Shorthands that build and send a message. Ownership of term/ptr passes to
 * the runtime in every case. Any thread. */
DX_API int dx_send_tag(dx_pid to, int64_t tag);
DX_API int dx_send_term(dx_pid to, int64_t tag, dx_term *term);
DX_API int dx_send_ptr(dx_pid to, int64_t tag, void *ptr,
                       void (*ptr_free)(void *));
/* Send to a registered name; DX_ENOPROC if nothing is registered. */
DX_API int dx_send_named(const char *name, dx_msg *m);

/* What dx_receive() selects. Zeroed fields that are not flagged are
 * ignored; `pred` (if set) must also accept the message. The first message
 * in arrival order that matches is taken; the others stay in order. */
typedef struct dx_match {
    unsigned fields; /* DX_MATCH_* bits */
    int64_t tag;
    dx_pid from;
    dx_ref ref;
    bool (*pred)(const dx_msg *m, void *ud);
    void *ud;
} dx_match;

#define DX_MATCH_TAG 1u
#define DX_MATCH_FROM 2u
#define DX_MATCH_REF 4u

#define DX_INFINITY (-1)

/* Selective receive. Waits up to timeout_ms (DX_INFINITY forever, 0 = only
 * look) for a message that `match` accepts (NULL accepts any). On DX_OK
 * *out owns the message. DX_ETIMEDOUT when none came in time. Process. */
DX_API int dx_receive(const dx_match *match, int64_t timeout_ms, dx_msg **out);
DX_API int dx_receive_any(int64_t timeout_ms, dx_msg **out);
DX_API int dx_receive_tag(int64_t tag, int64_t timeout_ms, dx_msg **out);

/* Park for ms milliseconds; messages stay in the mailbox. Process.
 * sleep(), usleep() and nanosleep() called from a process's own code do
 * the same (rounded up to whole milliseconds; not cut short by signals);
 * called from a library that keeps locks of its own (SQLite), from
 * runtime code or from any other thread, they are the C library's. */
DX_API int dx_sleep(int64_t ms);
/* Let other runnable processes run. Process. */
DX_API int dx_yield(void);

/* ------------------------------------------------------------------ */
/* Processes                                                           */
/* ------------------------------------------------------------------ */

typedef struct dx_spawn_opts {
    bool link;         /* link to the caller (process only) */
    bool monitor;      /* monitor from the caller; ref in *mon_out */
    bool trap_exit;    /* start with trap_exit on */
    const char *name;  /* register under this name (DX_EEXIST if taken) */
    const char *label; /* shown by introspection (copied) */
    /* The process owns arg: arg_free(arg) runs when it exits, for any
     * reason, even if it never got to run. If spawn fails, the caller
     * keeps arg. */
    void (*arg_free)(void *arg);
    /* Start on the schedulers in turn rather than on the caller's. For
     * many independent processes spawned in a burst (one per example, one
     * per upstream call): they begin on every core at once instead of
     * queueing behind the spawner until an idle scheduler steals them. A
     * process that mostly talks to its spawner is better left local. */
    bool spread;
    /* > 0: the process is killed (reason `killed`) if it is still alive
     * this many milliseconds after the spawn. The deadline is kept by a
     * thread of the runtime's own, not by a scheduler, so it holds even
     * when the process, or the one that would have enforced a deadline of
     * its own, shares a scheduler held by code that never calls the
     * runtime (an endless pure-C loop, a sleep() in process code); such a
     * process is then stopped where it runs (see dx_exit). For a process
     * whose deadline must not depend on anything else running: an
     * evaluation's examples have one. */
    int64_t kill_after_ms;
} dx_spawn_opts;

/* Spawn a process running fn(arg); returning from fn exits with reason
 * `normal`. The new pid is in *pid_out (may be NULL). DX_ENOMEM,
 * DX_EEXIST (name taken), DX_ESTATE (runtime not running). Any thread
 * (link/monitor need a process caller: DX_ENOTPROC otherwise). */
DX_API int dx_spawn_opt(dx_proc_fn fn, void *arg, const dx_spawn_opts *opts,
                        dx_pid *pid_out, dx_ref *mon_out);
DX_API int dx_spawn(dx_proc_fn fn, void *arg, dx_pid *pid_out);
DX_API int dx_spawn_link(dx_proc_fn fn, void *arg, dx_pid *pid_out);
DX_API int dx_spawn_monitor(dx_proc_fn fn, void *arg, dx_pid *pid_out,
                            dx_ref *mon_out);

/* The calling process's pid; DX_NOPID on a host thread. */
DX_API dx_pid dx_self(void);
/* Whether pid is alive right now (racy by nature). Any thread. */
DX_API bool dx_is_alive(dx_pid pid);

/* End the calling process with `reason` (ownership taken; NULL = normal).
 * Never returns. Process only (aborts otherwise). */
DX_API DX_NORETURN void dx_exit_self(dx_term *reason);

/* Send an exit signal with `reason` to pid (ownership of reason taken).
 * As in Erlang: reason `kill` ends the target untrappably with reason
 * `killed`; `normal` is ignored unless the target traps exits; any other
 * reason ends the target, or becomes a DX_TAG_EXIT message if it traps
 * exits. A target acts on the signal at its next runtime call; one killed
 * while it runs code that makes none (an endless pure-C loop) is stopped
 * where it stands about 50 ms later, as a fault in its code would be (fault
 * isolation on; docs/internals/runtime.md). DX_ENOPROC if pid is dead. Any
 * thread. */
DX_API int dx_exit(dx_pid pid, dx_term *reason);
/* dx_exit(pid, kill). */
DX_API int dx_kill(dx_pid pid);

/* Link the caller and pid: when either exits, the other gets an exit signal
 * with the reason. Linking to a dead pid delivers an exit signal `noproc`
 * to the caller (so a caller that does not trap exits ends) and returns
 * DX_ENOPROC. Process. */
DX_API int dx_link(dx_pid pid);
DX_API int dx_unlink(dx_pid pid);
/* Turn exit-trapping on/off for the caller; returns the previous setting. */
DX_API bool dx_trap_exit(bool on);

/* Monitor pid: exactly one DX_TAG_DOWN message (ref, from = pid, term =
 * reason) arrives when it exits — at once with reason `noproc` if it is
 * already dead (the call still returns DX_OK with a ref). Process. */
DX_API int dx_monitor(dx_pid pid, dx_ref *ref_out);
/* Remove a monitor. With flush, a DOWN already in the mailbox is removed
 * too; without, a DOWN that arrives after this call is dropped anyway.
 * DX_ENOENT if ref is not an active monitor of the caller. Process. */
DX_API int dx_demonitor(dx_ref ref, bool flush);

/* A new reference, unique within the runtime's lifetime. Any thread. */
DX_API dx_ref dx_make_ref(void);

/* ------------------------------------------------------------------ */
/* Registry: names die with their process                              */
/* ------------------------------------------------------------------ */

/* Register pid under name (copied; at most 255 bytes). DX_EEXIST if the
 * name is taken or the process already has a name; DX_ENOPROC if pid is
 * dead. Any thread. */
DX_API int dx_register(const char *name, dx_pid pid);
/* Remove a name; DX_ENOENT if nothing is registered under it. */
DX_API int dx_unregister(const char *name);
/* Pid registered under name, or DX_NOPID. Any thread. */
DX_API dx_pid dx_whereis(const char *name);

/* ------------------------------------------------------------------ */
/* Timers                                                              */
/* ------------------------------------------------------------------ */

/* Deliver m to `to` after ms milliseconds (ownership of m taken in every
 * case). *tref (optional) identifies the timer. Any thread. */
DX_API int dx_send_after(int64_t ms, dx_pid to, dx_msg *m, dx_ref *tref);
/* Cancel a timer: DX_OK if it was cancelled before firing (its message is
 * freed), DX_ENOENT if it already fired or never existed. Any thread. */
DX_API int dx_cancel_timer(dx_ref tref);

/* Monotonic milliseconds (the clock timers use). Any thread. */
DX_API int64_t dx_now_ms(void);

/* ------------------------------------------------------------------ */
/* Process-owned memory                                                */
/* ------------------------------------------------------------------ */

/* Memory owned by the calling process: freed automatically when it exits,
 * for any reason, so a crash leaks nothing. Never send such memory to
 * another process (send dx_malloc'd memory or terms instead). NULL on OOM
 * or when not called from a process. Process. */
DX_API void *dx_palloc(size_t size);
DX_API void *dx_pcalloc(size_t n, size_t size);
DX_API void *dx_prealloc(void *ptr, size_t size);
DX_API void dx_pfree(void *ptr);

/* Tie a heap object's life to the calling process for a while: if the
 * process ends — a crash, a kill, an exit — while the tie holds, free_fn(obj)
 * runs as it ends, so an object held across a blocking call (an LM request
 * while the reply is awaited) is not lost when the process is killed
 * there. dx_ptie_cut ends the tie without freeing obj (the code frees or
 * hands it on itself). free_fn runs on a scheduler thread outside any
 * process: it may free memory and signal other processes (dx_kill), but
 * not wait or receive. NULL (nothing tied) when obj or free_fn is NULL, on
 * OOM, or off a process. Process. */
typedef struct dx_ptie dx_ptie;
DX_API dx_ptie *dx_ptie_new(void *obj, void (*free_fn)(void *obj));
/* NULL is a no-op. Process (the one that made the tie). */
DX_API void dx_ptie_cut(dx_ptie *tie);

/* ------------------------------------------------------------------ */
/* Crashes                                                             */
/* ------------------------------------------------------------------ */

/* A failed assertion ends the calling process with reason
 * {assert_failed, <<"file:line: expr">>}; on a host thread it aborts. */
#define DX_ASSERT(expr)                                                        \
    ((expr) ? (void)0 : dx__assert_fail(__FILE__, __LINE__, #expr))
DX_API DX_NORETURN void dx__assert_fail(const char *file, int line,
                                        const char *expr);

/* ------------------------------------------------------------------ */
/* Introspection                                                       */
/* ------------------------------------------------------------------ */

typedef enum dx_proc_status {
    DX_PROC_RUNNABLE = 0,
    DX_PROC_RUNNING,
    DX_PROC_WAITING,
    DX_PROC_EXITING,
} dx_proc_status;

typedef struct dx_proc_info {
    dx_pid pid;
    char name[64]; /* registered name or "" */
    /* behaviour/label ("dx_server:cache", ...) or entry symbol */
    char label[64];
    dx_proc_status status;
    int scheduler;       /* home scheduler index */
    size_t mailbox_len;  /* messages waiting (approximate while running) */
    size_t memory_bytes; /* control block + saved stack + dx_palloc */
    uint64_t messages_handled;
    uint64_t reductions; /* runtime calls made */
    size_t links;
    size_t monitors; /* monitors held by this process */
    bool trap_exit;
} dx_proc_info;

DX_API const char *dx_proc_status_name(dx_proc_status s);
/* Snapshot of one process. DX_ENOPROC if dead. Any thread. */
DX_API int dx_process_info(dx_pid pid, dx_proc_info *out);
/* Snapshot of all live processes: *out is an array of *count entries the
 * caller frees with dx_free. Any thread. */
DX_API int dx_process_list(dx_proc_info **out, size_t *count);
/* Number of live processes. Any thread. */
DX_API size_t dx_process_count(void);
/* Set the calling process's label (copied, truncated to 63 bytes). */
DX_API void dx_set_label(const char *label);

#endif
