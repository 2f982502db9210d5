/*
 * dx_internal.h — the runtime's umbrella internal header: the process
 * control block, schedulers, queues, timers and the helpers the runtime's
 * files share. Nothing here is public; public headers never include it.
 *
 * Ownership in one paragraph: a process control block (dx__proc) is owned by
 * its home scheduler thread from spawn until it is retired; senders on other
 * threads only push onto its mailbox and flip its state word. Retired blocks
 * are freed after every scheduler has passed a quiescent point (QSBR), so a
 * sender that looked the pid up just before the process died never touches
 * freed memory. See docs/internals/runtime.md.
 */
#ifndef DX_INTERNAL_H
#define DX_INTERNAL_H

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "dx_config.h"
#include "dspex/runtime.h"
#include "dspex/server.h"
#include "dspex/supervisor.h"

#define dx__container_of(ptr, type, member)                                    \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- context switching (ctx.c) ---- */

#if defined(__x86_64__)
#define DX_CTX_ASM 1
typedef struct dx__ctx {
    void *sp;
} dx__ctx;
#else
#include <ucontext.h>
#define DX_CTX_ASM 0
typedef struct dx__ctx {
    ucontext_t uc;
} dx__ctx;
#endif

/* Copy-stack parking needs the assembly switch; elsewhere every process has
 * its own stack. */
#if DX_STACK_COPY && DX_CTX_ASM
#define DX_COPY_STACK 1
#else
#define DX_COPY_STACK 0
#endif

/* Prepare ctx to start running dx__proc_entry() on the stack whose highest
 * address is top (stack grows down from it). */
void dx__ctx_make(dx__ctx *ctx, void *stack_lo, size_t size);
/* Save the current context into from and resume to. */
void dx__ctx_swap(dx__ctx *from, dx__ctx *to);
/* The first function every process runs (proc.c); never returns. */
void dx__proc_entry(void);

/* ---- intrusive multi-producer single-consumer queue (mailbox.c) ---- */

typedef struct dx__mpsc {
    _Atomic(struct dx__node *) head; /* producers swap themselves in here */
    struct dx__node *tail;           /* consumer end */
    struct dx__node stub;
} dx__mpsc;

void dx__mpsc_init(dx__mpsc *q);
/* Any thread. Lock-free: one atomic exchange. */
void dx__mpsc_push(dx__mpsc *q, struct dx__node *n);
/* Consumer only. NULL when empty or while a producer is mid-push. */
struct dx__node *dx__mpsc_pop(dx__mpsc *q);
/* Consumer only: anything pushed (possibly still being linked)? */
int dx__mpsc_nonempty(dx__mpsc *q);

/* ---- signals carried in dx_msg.dx__signal ---- */

enum {
    DX__SIG_MSG = 0,   /* an ordinary message */
    DX__SIG_EXIT,      /* exit signal: from, term = reason, tag = flags */
    DX__SIG_LINK,      /* from wants a link */
    DX__SIG_UNLINK,    /* from dropped the link */
    DX__SIG_MONITOR,   /* from monitors us with ref */
    DX__SIG_DEMONITOR, /* monitor ref removed */
    DX__SIG_DOWN,      /* monitored process from ended: ref, term = reason */
};

/* Flags of an exit signal (in its tag field). */
#define DX__EXIT_LINK 1 /* caused by a linked process's exit */
#define DX__EXIT_KILL 2 /* untrappable (dx_kill, runtime shutdown) */

/* ---- timers (timer.c) ---- */

struct dx__sched;

enum { DX__TIMER_RECV = 1, DX__TIMER_SEND, DX__TIMER_KILL };

typedef struct dx__timer {
    int64_t deadline_ns;
    uint32_t heap_idx; /* position in the heap, UINT32_MAX when not in it */
    uint8_t kind;
    uint8_t cancelled;
} dx__timer;

typedef struct dx__timer_heap {
    pthread_mutex_t mu;
    dx__timer **items;
    uint32_t len, cap;
    _Atomic uint32_t count; /* len, readable without the lock */
} dx__timer_heap;

int64_t dx__now_ns(void);
void dx__timer_heap_init(dx__timer_heap *h);
void dx__timer_heap_destroy(dx__timer_heap *h);
int dx__timer_add(dx__timer_heap *h, dx__timer *t);
void dx__timer_remove(dx__timer_heap *h, dx__timer *t);
/* Fire due timers of scheduler s; returns the next deadline or INT64_MAX. */
int64_t dx__timers_run(struct dx__sched *s);
void dx__timers_shutdown(void);
/* Before s sleeps: drop or move the receive timeouts at the top of its heap
 * that no receive wants at their deadline; returns the next deadline. */
int64_t dx__timers_settle(struct dx__sched *s);
/* Earliest deadline in s's heap (locked read), INT64_MAX if none. */
int64_t dx__timers_peek(struct dx__sched *s);
/* With h->mu held: the earliest deadline (INT64_MAX if none), and the
 * earliest timer taken out if it is due by now (NULL if not). */
int64_t dx__timer_peek_locked(const dx__timer_heap *h);
dx__timer *dx__timer_pop_due_locked(dx__timer_heap *h, int64_t now);

/* ---- processes ---- */

enum {
    DX__RUNNABLE = 0,
    DX__RUNNING = 1,
    DX__WAITING = 2,
    DX__EXITING = 3,
};

/* Why a process handed control back to its scheduler. */
enum { DX__YIELD = 1, DX__PARK, DX__EXIT };

typedef struct dx__link_set {
    dx_pid *pids;
    uint32_t len, cap;
} dx__link_set;

typedef struct dx__mon {
    dx_ref ref;
    dx_pid pid;
} dx__mon;

typedef struct dx__mon_set {
    dx__mon *items;
    uint32_t len, cap;
} dx__mon_set;

typedef struct dx__palloc_hdr dx__palloc_hdr;

typedef struct dx__proc dx__proc;
struct dx__proc {
    /* Written by senders on any thread. */
    dx__mpsc mailbox;
    _Atomic uint32_t state;
    _Atomic uint64_t sent; /* messages, not monitor signals */
    /* Monitor signals delivered without waking it since its last drain. */
    _Atomic uint32_t quiet_waiting;

    /* Owned by the home scheduler thread. */
    struct dx__node run_node; /* run-queue link */
    dx_pid pid;
    struct dx__sched *home;
    dx__ctx ctx;
    uint8_t yield_reason;
    uint8_t started;
    uint8_t trap_exit;
    uint8_t hidden; /* runtime-internal helper, not counted */
    uint8_t tmo_fired;
    int budget;
    int in_runtime; /* >0 while runtime code runs on this process's stack */
    /* Times switched in; a stop request (fault.c) names the run it saw. */
    _Atomic uint32_t runs;

    dx_msg *q_first, *q_last; /* received but not yet taken, in order */
    dx_msg *held;             /* taken by dx_receive and not yet freed */
    _Atomic uint64_t taken;   /* messages drained (as counted in sent) */
    _Atomic uint64_t handled; /* messages handed to the process */
    _Atomic uint64_t reductions;
    _Atomic size_t q_len;
    dx_ref awaiting_reply;

    dx__timer tmo;    /* receive timeout (lazily re-filed, see proc.c) */
    int64_t tmo_want; /* deadline the current receive wants, 0 = none */
    /* dx_spawn_opts.kill_after_ms, in the stopper's heap (stopper.c) while
     * has_kill_deadline; set at spawn, cleared as the process ends. */
    dx__timer kill_at;
    bool has_kill_deadline;

#if DX_COPY_STACK
    char *stack_save;
    size_t stack_len, stack_cap;
#else
    void *stack_lo;
    size_t stack_size;
    void *san_fiber; /* TSan fiber / ASan fake-stack bookkeeping */
    unsigned valgrind_stack;
#endif

    dx_proc_fn fn;
    void *arg;
    void (*arg_free)(void *arg);

    dx__link_set links;
    dx__mon_set monitors;     /* monitors this process holds on others */
    dx__mon_set monitored_by; /* who monitors this process */

    dx_term *exit_reason;
    char *name;  /* registered name (registry lock) */
    char *label; /* registry lock */

    dx__palloc_hdr *palloc;
    _Atomic size_t mem_bytes; /* saved stack + dx_palloc */

    dx__proc *limbo_next;
    uint64_t retire_epoch;
};

/* ---- schedulers (sched.c) ---- */

typedef struct dx__runq {
    dx__proc **items;
    uint32_t head, len, cap;
} dx__runq;

#define DX__CACHE_LINE 64

/* Fields are grouped by who touches them, each group on its own cache
 * lines, so another thread waking, robbing or reading this scheduler does
 * not slow the owner's hot path (and vice versa). Allocated 64-aligned. */
typedef struct dx__sched {
    /* Owner thread only. */
    int index;
    pthread_t thread;
    dx__ctx ctx; /* the scheduler loop's own context */
    dx__proc *current;
    dx__runq runq;
    dx__proc *limbo_head, *limbo_tail;
    uint32_t *free_idx; /* released pid-table slots, reused here */
    uint32_t free_len, free_cap;
    uint32_t idx_next, idx_end; /* never-used slots reserved for us */
    uint64_t ref_counter;
    dx_msg *msg_cache; /* freed messages kept for reuse by this thread */
    uint32_t msg_cache_len;
    dx__proc *proc_cache; /* reclaimed control blocks kept for reuse */
    uint32_t proc_cache_len;
    uint64_t rng; /* deterministic mode */
    uint32_t picks;
    uint32_t loops;
    /* A process the running one just woke: it runs next (see dx__enqueue). */
    struct dx__proc *run_next;
    uint32_t run_next_streak; /* run_next picks in a row */
#if DX_COPY_STACK
    char *stack_map; /* mapping: guard pages then the shared stack */
    size_t stack_map_size;
    char *stack_lo, *stack_hi;
    dx__proc *stack_owner; /* whose frames are live on the shared stack */
    unsigned valgrind_stack;
#endif
    void *altstack; /* fault.c's, ALTSTACK_BYTES long */
    sigjmp_buf fault_jmp;
    volatile sig_atomic_t fault_sig; /* DX__FAULT_STOPPED: stopped, see below */
    void *volatile fault_addr;
    /* Set by the stopper thread (fault.c) before it signals this thread:
     * the pid id of a killed process to stop where it runs (0: none), and
     * whether the kill was the runtime's shutdown. */
    _Atomic uint64_t stop_pid;
    _Atomic int stop_shutdown;
    void *san_fiber;

    /* Pushed to by any thread that wakes one of our processes. */
    _Alignas(DX__CACHE_LINE) dx__mpsc inject;

    /* Processes that never ran: taken by thieves too. */
    _Alignas(DX__CACHE_LINE) pthread_mutex_t fresh_mu;
    dx__runq fresh;
    _Atomic uint32_t fresh_len;
    /* When the owner last took a fresh process, or the queue last became
     * non-empty (ns): an old stamp with work waiting means "overloaded". */
    _Atomic int64_t fresh_stamp;
    /* Set by the owner when it wakes a sibling to take fresh processes:
     * the sibling then takes some whatever the stamp says. */
    _Atomic int want_help;

    /* Sleeping and being woken: 1 while the thread sleeps or is about to;
     * it waits on this word (a futex, sched.c park()). */
    _Alignas(DX__CACHE_LINE) _Atomic int sleeping;

    /* Read by every scheduler's reclamation. */
    _Alignas(DX__CACHE_LINE) _Atomic uint64_t
        seen_epoch; /* UINT64_MAX: offline */

    _Alignas(DX__CACHE_LINE) dx__timer_heap timers;
} dx__sched;

/* Read-mostly settings first; every counter that threads write often sits
 * on a cache line of its own. */
typedef struct dx__runtime {
    _Atomic int running;
    _Atomic int stopping;
    _Atomic int quit;
    int nsched;
    bool deterministic;
    size_t stack_size;
    size_t page_size;
    int budget;
    bool fault_isolation;
    dx__sched *scheds;
    void *scheds_mem;       /* unaligned block behind scheds */
    pthread_mutex_t ext_mu; /* one host thread at a time inside the runtime */
    pthread_mutex_t live_mu;
    pthread_cond_t live_cv;
    uint32_t *ext_free_idx;
    uint32_t ext_free_len, ext_free_cap;
    /* Released pid-table slots a scheduler had more of than it keeps
     * (sched.c: a slot is released where its process exits, not where the
     * next spawn happens). */
    pthread_mutex_t spare_mu;
    uint32_t *spare_idx;
    uint32_t spare_len, spare_cap;

    _Alignas(DX__CACHE_LINE) _Atomic uint64_t epoch;
    _Alignas(DX__CACHE_LINE) _Atomic uint64_t ext_seen;
    _Alignas(DX__CACHE_LINE) _Atomic size_t live; /* non-hidden processes */
    _Alignas(DX__CACHE_LINE) _Atomic size_t live_all;
    _Alignas(DX__CACHE_LINE) _Atomic uint32_t next_fresh_idx;
    _Alignas(DX__CACHE_LINE) _Atomic uint32_t ext_rr;
    _Atomic uint64_t ext_ref_counter;
} dx__runtime;

extern dx__runtime dx__rt;
extern _Thread_local dx__sched *dx__tls_sched;

/* Add one to a counter only its owner thread writes (others read it for
 * introspection): no locked instruction needed. */
#define DX__OWNER_INC(counter)                                                 \
    atomic_store_explicit(                                                     \
        &(counter),                                                            \
        atomic_load_explicit(&(counter), memory_order_relaxed) + 1,            \
        memory_order_relaxed)

/* The process running on this thread, or NULL on host threads. */
static inline dx__proc *dx__self_proc(void)
{
    dx__sched *s = dx__tls_sched;
    return s ? s->current : NULL;
}

/* Host-thread access bracket: keeps process blocks alive while a host
 * thread looks at them (see QSBR above). Returns DX_ESTATE when the runtime
 * is not running. Nestable only via the `entered` flag it sets. */
int dx__ext_enter(int *entered);
void dx__ext_leave(int entered);

/* Pid table. */
dx__proc *dx__lookup(dx_pid pid);
/* Reserve a slot and set p->pid; lookups find p only after publish. */
int dx__pid_alloc(dx__proc *p);
void dx__pid_publish(dx__proc *p);
void dx__pid_release(dx__proc *p);
uint32_t dx__pid_table_size(void);
dx__proc *dx__slot_proc(uint32_t idx);

/* Pids and refs of other nodes (docs/internals/runtime.md, "Distribution"):
 * bits 52..63 of a pid's or ref's id hold a node index, 0 for this node.
 * Local pids keep their slot index in bits 0..31 and generation in 32..51;
 * local refs stay below 2^52 (a counter shifted by 10 bits would need 2^42
 * refs to get there). What the low 52 bits of a remote id mean is the
 * distribution layer's business. */
#define DX__NODE_SHIFT 52
static inline uint32_t dx__pid_node(dx_pid pid)
{
    return (uint32_t)(pid.id >> DX__NODE_SHIFT);
}
static inline uint32_t dx__ref_node(dx_ref ref)
{
    return (uint32_t)(ref.id >> DX__NODE_SHIFT);
}

/* The router for remote pids: the distribution layer installs one (a
 * static object that outlives every call); without one a remote pid is
 * unreachable. deliver takes m in every case, like dx__deliver, and is
 * called on any thread, from inside dx__deliver, so it must never block
 * nor call back into dx__deliver for a remote pid. */
typedef struct dx__router {
    int (*deliver)(dx_pid to, dx_msg *m);
} dx__router;
void dx__set_router(const dx__router *r);
int dx__route_remote(dx_pid to, dx_msg *m);

/* Make p runnable on its home scheduler (p's state must already have been
 * moved to RUNNABLE by the caller that won the wake-up). */
void dx__enqueue(dx__proc *p);
/* Queue a new process where it may be stolen before it first runs. */
int dx__enqueue_fresh(dx__proc *p, bool spread);
/* Release a process's stack (saved copy or own mapping). */
void dx__proc_stack_free(dx__proc *p);
/* Whether a fault address lies in the guard below the running stack. */
int dx__is_guard_hit(dx__sched *s, dx__proc *p, void *addr);
/* Wake p if it is waiting. */
void dx__wake(dx__proc *p);
/* Hand control to the scheduler; returns when the process runs again. */
void dx__switch_out(dx__proc *p, int reason);
void dx__sched_notify(dx__sched *s);
/* First thing a new process does (sanitizer fiber bookkeeping). */
void dx__fiber_started(void);
/* Charge one reduction; may preempt. */
void dx__tick(dx__proc *p);

/* Process life (proc.c). */
int dx__spawn(dx_proc_fn fn, void *arg, const dx_spawn_opts *opts, bool hidden,
              dx_pid *pid_out, dx_ref *mon_out);
void dx__proc_finish(dx__sched *s, dx__proc *p);
void dx__proc_reclaim(dx__proc *p);
/* A zeroed control block, reused from this scheduler's cache if it can
 * be; dx__proc_block_free gives one back (or frees it). */
dx__proc *dx__proc_block_alloc(void);
void dx__proc_block_free(dx__proc *p);
size_t dx__proc_block_size(const dx__proc *p);
/* Queue a finished process for freeing after a grace period (sched.c). */
void dx__retire(dx__sched *s, dx__proc *p);
/* Deliver a signal/message: the node is pushed and the target woken.
 * Takes m in every case; DX_ENOPROC if the target is dead. */
int dx__deliver(dx_pid to, dx_msg *m);
/* Move mailbox contents into the private queue, acting on signals; may end
 * the process (never returns then). */
void dx__drain(dx__proc *p);
DX_NORETURN void dx__die(dx__proc *p, dx_term *reason);
int dx__receive_after(dx__proc *p, const dx_match *match, dx_msg *after,
                      int64_t timeout_ms, dx_msg **out);
dx_msg *dx__signal_new(uint32_t sig, dx_pid from, dx_ref ref, int64_t tag,
                       dx_term *term);
void dx__free_msg_list(dx_msg *m);
/* A held message changes hands (sent on) or is freed: forget its owner. */
void dx__msg_unhold(dx_msg *m);
/* Free scheduler s's cache of reusable messages (at stop). */
void dx__msg_cache_free(dx__sched *s);

/* Registry (registry.c). */
void dx__registry_init(void);
void dx__registry_destroy(void);
void dx__registry_drop(dx__proc *p);
/* Register p under name; DX_EEXIST, DX_ENOPROC (exiting), DX_EINVAL. */
int dx__registry_add(dx__proc *p, const char *name);
void dx__registry_lock(void);
void dx__registry_unlock(void);

/* A supervisor spec copied with everything it points to (the children, their
 * ids, the name), so it outlives the caller's memory (supervisor.c). Ids
 * longer than DX_SUP_ID_MAX are cut one byte past the limit, so the copy
 * is still rejected as the original would be. */
typedef struct dx__spec_copy {
    dx_sup_spec spec; /* points into the fields below */
    dx_child_spec *children;
    char *ids; /* all ids, NUL-separated */
    char *name;
} dx__spec_copy;

int dx__spec_copy_init(dx__spec_copy *c, const dx_sup_spec *spec);
void dx__spec_copy_fini(dx__spec_copy *c);

/* Faults (fault.c). */
/* Where the C library and the libraries that keep state behind locks of
 * their own (the allocator, the loader, OpenSSL, SQLite, curl, ...) were
 * loaded: found at every runtime start, before anything asks. */
void dx__library_ranges_init(void);
bool dx__pc_in_locking_library(uintptr_t pc);
int dx__fault_install(void);
void dx__fault_uninstall(void);
int dx__fault_thread_init(dx__sched *s);
void dx__fault_thread_fini(dx__sched *s);
dx_term *dx__fault_reason(dx__sched *s, dx__proc *p);

/* The stopper thread (stopper.c; the signal handler is in fault.c). It
 * starts before the schedulers and stops after them. With fault isolation
 * on, a kill (dx_kill, or the shutdown of dx_runtime_stop) delivered to a
 * running process is watched: if that process is still in the same run
 * STOP_GRACE later, its scheduler thread is signalled, and the process
 * ends where it stands (as a fault in its code would) with reason
 * `killed` or `shutdown`. */
#define DX__FAULT_STOPPED (-1)
int dx__stopper_start(void);
void dx__stopper_stop(void);
/* p is running and was just sent an untrappable exit signal. Any thread. */
void dx__stopper_watch(dx__proc *p, bool shutdown);
/* sleep(), usleep() and nanosleep() called from a process's own code park
 * the process, as dx_sleep does (sleep.c). Resolves the C library's
 * versions, which every other caller gets: at load time, and again at
 * runtime start if that found nothing. */
void dx__sleep_init(void);
/* Kill deadlines, kept by the stopper thread so that a held scheduler
 * cannot delay them. File: at spawn, p published, ms > 0 (out of memory,
 * p is killed at once). Cancel: as p ends, on its scheduler. */
void dx__kill_deadline_file(dx__proc *p, int64_t ms);
void dx__kill_deadline_cancel(dx__proc *p);

/* A thread that is no scheduler but runs a process's code (a blocking
 * thread) guards it with one of these, owned by the thread: while armed,
 * a fault outside the C library jumps to jmp with sig and addr set. */
typedef struct dx__fault_guard {
    sigjmp_buf jmp;
    volatile sig_atomic_t armed;
    volatile sig_atomic_t sig;
    void *volatile addr;
    void *altstack;
    char *stack_lo;     /* the thread's stack, for telling an overflow */
    size_t guard_bytes; /* its guard pages, just below stack_lo */
} dx__fault_guard;

/* Sets up g for the calling thread (its alternate signal stack, the bounds
 * of its stack) and makes it the thread's; without fault isolation, or
 * when the alternate stack cannot be made, the thread stays unguarded
 * (arming g is then harmless). */
void dx__fault_guard_init(dx__fault_guard *g);
/* The calling thread's guard, or NULL (runtime code that a guarded
 * function calls disarms it while it runs, as in_runtime does for a
 * process). */
extern _Thread_local dx__fault_guard *dx__tls_fault_guard;
void dx__fault_guard_fini(dx__fault_guard *g);
/* {segv, Address}, stack_overflow, ... as for a process's own fault. */
dx_term *dx__fault_guard_reason(const dx__fault_guard *g);

/* ---- blocking threads (blocking.c) ---- */

/* Let the blocking threads finish the calls they run, then join them
 * (dx_runtime_stop, once no process is left). The pool can start again. */
void dx__blocking_stop(void);

/* Frequently used atoms, interned at start. */
extern dx_term *dx__a_normal, *dx__a_kill, *dx__a_killed, *dx__a_shutdown,
    *dx__a_noproc, *dx__a_bad_call;

/* Runtime-allocated memory block of a process (dx_palloc). */
struct dx__palloc_hdr {
    dx__palloc_hdr *prev, *next;
    size_t size;
    /* A tie (dx_ptie): run on the payload when the process ends with the
     * block still held. NULL for plain dx_palloc memory. Also keeps the
     * payload 16-byte aligned. */
    void (*on_exit)(void *payload);
};

#endif
