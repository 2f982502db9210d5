/*
 * sched.c — scheduler threads, run queues, work stealing, the pid table,
 * memory reclamation and the runtime's start/stop.
 *
 * Each scheduler thread loops: fire due timers, take woken processes from
 * its inject queue, run the next runnable process until it parks, yields or
 * exits, and pass a quiescent point. Processes that have never run sit in a
 * "fresh" queue that idle schedulers steal from; once a process has run, its
 * stack frames hold addresses inside its scheduler's stack, so it stays on
 * that scheduler (docs/internals/runtime.md explains the trade-off).
 *
 * Copy-stack mode: all processes of a scheduler run on one shared stack.
 * When a different process is about to run, the frames of the one that
 * parked last are copied out to a buffer sized to what it used; the new
 * one's frames are copied back in. An idle process therefore costs its
 * control block plus the few hundred bytes of stack it really used.
 */
#include <dlfcn.h>
#include <errno.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "dspex/io.h"
#include "dx_internal.h"

#if DX_SANITIZE_ADDRESS
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if DX_SANITIZE_THREAD
#include <sanitizer/tsan_interface.h>
#endif

/* Under valgrind, memcheck must be told about process stacks: which ranges
 * are stacks (so a switch is not taken for a huge frame) and, in copy-stack
 * mode, that frames copied back below the scheduler's view of the stack
 * pointer are live memory again. The requests cost a few instructions
 * outside valgrind. */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
#define DX_VALGRIND 1
#endif
#endif
#ifndef DX_VALGRIND
#define DX_VALGRIND 0
#define VALGRIND_STACK_REGISTER(lo, hi) 0u
#define VALGRIND_STACK_DEREGISTER(id) ((void)(id))
#define VALGRIND_MAKE_MEM_UNDEFINED(addr, len) ((void)(addr), (void)(len))
#endif

dx__runtime dx__rt;
_Thread_local dx__sched *dx__tls_sched;

dx_term *dx__a_normal, *dx__a_kill, *dx__a_killed, *dx__a_shutdown,
    *dx__a_noproc, *dx__a_bad_call;

#define OFFLINE UINT64_MAX
#define RUN_NEXT_STREAK 16
#define SPIN_NS 20000 /* how long an idle scheduler polls before sleeping */
/* Work is stolen only from a scheduler whose fresh processes have waited
 * this long without it taking one. Messages between processes on one
 * scheduler cost about a third of what they cost across threads, so short
 * bursts (a ring being built, a worker pool being started) stay together,
 * and only a scheduler that cannot keep up is relieved. */
#define STEAL_AFTER_NS 1000000
/* How long an idle scheduler with processes in limbo sleeps before it looks
 * again whether it can reclaim them (see idle). */
#define LIMBO_RETRY_NS 1000000

/* ------------------------------------------------------------------ */
/* Run queue: a ring of process pointers (owner thread only)          */
/* ------------------------------------------------------------------ */

static int runq_push(dx__runq *q, dx__proc *p)
{
    if (q->len == q->cap) {
        uint32_t ncap = q->cap ? q->cap * 2 : 256;
        dx__proc **n = dx_malloc(sizeof(*n) * ncap);
        if (n == NULL)
            return DX_ENOMEM;
        for (uint32_t i = 0; i < q->len; i++)
            n[i] = q->items[(q->head + i) % q->cap];
        dx_free(q->items);
        q->items = n;
        q->head = 0;
        q->cap = ncap;
    }
    q->items[(q->head + q->len) % q->cap] = p;
    q->len++;
    return DX_OK;
}

static dx__proc *runq_pop(dx__runq *q)
{
    if (q->len == 0)
        return NULL;
    dx__proc *p = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return p;
}

/* Remove and return the entry at logical position i (deterministic mode). */
static dx__proc *runq_take_at(dx__runq *q, uint32_t i)
{
    uint32_t at = (q->head + i) % q->cap;
    dx__proc *p = q->items[at];
    q->items[at] = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return p;
}

static dx__proc *runq_pop_back(dx__runq *q)
{
    if (q->len == 0)
        return NULL;
    q->len--;
    return q->items[(q->head + q->len) % q->cap];
}

/* Queue growth failing means the runtime cannot keep its promises any
 * more; this is one of the documented unrecoverable faults. */
static void runq_push_or_die(dx__runq *q, dx__proc *p)
{
    if (runq_push(q, p) != DX_OK) {
        static const char msg[] = "dspex: out of memory growing a run queue\n";
        (void)!write(2, msg, sizeof msg - 1);
        abort();
    }
}

/* ------------------------------------------------------------------ */
/* Clock                                                               */
/* ------------------------------------------------------------------ */

int64_t dx__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t dx_now_ms(void)
{
    return dx__now_ns() / 1000000;
}

/* ------------------------------------------------------------------ */
/* Pid table: two levels so it grows without moving                   */
/* ------------------------------------------------------------------ */

#define SLOT_BITS 12
#define SLOTS_PER_CHUNK (1u << SLOT_BITS)
#define MAX_CHUNKS (1u << 16)
#define GEN_MASK 0xFFFFFu
#define IDX_BLOCK 256u

typedef struct pid_slot {
    _Atomic(dx__proc *) proc;
    uint32_t gen;
} pid_slot;

static _Atomic(pid_slot *) pid_chunks[MAX_CHUNKS];
static pthread_mutex_t chunk_mu = PTHREAD_MUTEX_INITIALIZER;

static pid_slot *slot_at(uint32_t idx, bool create)
{
    uint32_t c = idx >> SLOT_BITS;
    if (c >= MAX_CHUNKS)
        return NULL;
    pid_slot *chunk =
        atomic_load_explicit(&pid_chunks[c], memory_order_acquire);
    if (chunk == NULL && create) {
        pthread_mutex_lock(&chunk_mu);
        chunk = atomic_load_explicit(&pid_chunks[c], memory_order_acquire);
        if (chunk == NULL) {
            chunk = dx_calloc(SLOTS_PER_CHUNK, sizeof(pid_slot));
            if (chunk != NULL)
                atomic_store_explicit(&pid_chunks[c], chunk,
                                      memory_order_release);
        }
        pthread_mutex_unlock(&chunk_mu);
    }
    return chunk ? &chunk[idx & (SLOTS_PER_CHUNK - 1)] : NULL;
}

static inline uint32_t pid_index(dx_pid pid)
{
    return (uint32_t)pid.id;
}

dx__proc *dx__lookup(dx_pid pid)
{
    if (pid.id == 0 || dx__pid_node(pid) != 0) /* another node's pid */
        return NULL;
    pid_slot *sl = slot_at(pid_index(pid), false);
    if (sl == NULL)
        return NULL;
    dx__proc *p = atomic_load_explicit(&sl->proc, memory_order_acquire);
    if (p == NULL || p->pid.id != pid.id)
        return NULL;
    return p;
}

uint32_t dx__pid_table_size(void)
{
    return atomic_load(&dx__rt.next_fresh_idx);
}

dx__proc *dx__slot_proc(uint32_t idx)
{
    pid_slot *sl = slot_at(idx, false);
    return sl ? atomic_load_explicit(&sl->proc, memory_order_acquire) : NULL;
}

static int free_push(uint32_t **arr, uint32_t *len, uint32_t *cap, uint32_t v)
{
    if (*len == *cap) {
        uint32_t ncap = *cap ? *cap * 2 : 1024;
        uint32_t *n = dx_realloc(*arr, sizeof(uint32_t) * ncap);
        if (n == NULL)
            return DX_ENOMEM;
        *arr = n;
        *cap = ncap;
    }
    (*arr)[(*len)++] = v;
    return DX_OK;
}

/* A released slot goes on the free list of the scheduler its process
 * exited on, but a spawn takes from the spawner's list. When one scheduler
 * spawns and another runs (spread or stolen work), the first list only
 * empties and the second only grows, and every spawn would take a
 * never-used slot: the table and the list grew without bound under a
 * steady load. So a scheduler keeps at most FREE_LOCAL_MAX released slots
 * and hands the excess, IDX_BLOCK at a time, to the shared spare list,
 * which a spawner with an empty list drains before it takes new slots. */
#define FREE_LOCAL_MAX (2 * IDX_BLOCK)

static uint32_t spare_take(uint32_t *into, uint32_t max)
{
    pthread_mutex_lock(&dx__rt.spare_mu);
    uint32_t n = dx__rt.spare_len < max ? dx__rt.spare_len : max;
    if (n > 0) { /* the list is NULL until something was given */
        dx__rt.spare_len -= n;
        memcpy(into, dx__rt.spare_idx + dx__rt.spare_len, n * sizeof *into);
    }
    pthread_mutex_unlock(&dx__rt.spare_mu);
    return n;
}

/* Move IDX_BLOCK of s's released slots to the spare list. */
static void spare_give(dx__sched *s)
{
    pthread_mutex_lock(&dx__rt.spare_mu);
    for (uint32_t i = 0; i < IDX_BLOCK; i++) {
        uint32_t idx = s->free_idx[s->free_len - 1];
        if (free_push(&dx__rt.spare_idx, &dx__rt.spare_len, &dx__rt.spare_cap,
                      idx) != DX_OK)
            break; /* out of memory: the rest stay here */
        s->free_len--;
    }
    pthread_mutex_unlock(&dx__rt.spare_mu);
}

/* Refill s's empty free list from the spare list. */
static void spare_refill(dx__sched *s)
{
    if (s->free_cap < IDX_BLOCK) {
        uint32_t *n = dx_realloc(s->free_idx, IDX_BLOCK * sizeof *n);
        if (n == NULL)
            return; /* new slots instead */
        s->free_idx = n;
        s->free_cap = IDX_BLOCK;
    }
    s->free_len = spare_take(s->free_idx, IDX_BLOCK);
}

int dx__pid_alloc(dx__proc *p)
{
    dx__sched *s = dx__tls_sched;
    uint32_t idx;
    if (s != NULL && s->free_len == 0 && s->idx_next == s->idx_end)
        spare_refill(s);
    if (s != NULL && s->free_len > 0) {
        idx = s->free_idx[--s->free_len];
    } else if (s != NULL) {
        /* Reserve never-used slots in blocks: one shared increment per
         * IDX_BLOCK spawns instead of one per spawn. */
        if (s->idx_next == s->idx_end) {
            s->idx_next = atomic_fetch_add(&dx__rt.next_fresh_idx, IDX_BLOCK);
            s->idx_end = s->idx_next + IDX_BLOCK;
        }
        idx = s->idx_next++;
    } else if (dx__rt.ext_free_len > 0) { /* ext_mu held */
        idx = dx__rt.ext_free_idx[--dx__rt.ext_free_len];
    } else if (spare_take(&idx, 1) == 0) {
        idx = atomic_fetch_add(&dx__rt.next_fresh_idx, 1);
    }
    pid_slot *sl = slot_at(idx, true);
    if (sl == NULL) {
        /* Keep the index for later: its chunk could not be allocated. */
        int rc = s ? free_push(&s->free_idx, &s->free_len, &s->free_cap, idx)
                   : free_push(&dx__rt.ext_free_idx, &dx__rt.ext_free_len,
                               &dx__rt.ext_free_cap, idx);
        (void)rc;
        return DX_ENOMEM;
    }
    if (sl->gen == 0)
        sl->gen = 1;
    p->pid.id = (uint64_t)idx | ((uint64_t)sl->gen << 32);
    return DX_OK;
}

void dx__pid_publish(dx__proc *p)
{
    pid_slot *sl = slot_at(pid_index(p->pid), false);
    atomic_store_explicit(&sl->proc, p, memory_order_release);
}

/* Unpublish p: from now on lookups of its pid fail. The slot can be reused
 * at once (the generation changes); p's memory waits for reclamation. */
void dx__pid_release(dx__proc *p)
{
    uint32_t idx = pid_index(p->pid);
    pid_slot *sl = slot_at(idx, false);
    atomic_store(&sl->proc, NULL);
    sl->gen = (sl->gen + 1) & GEN_MASK;
    if (sl->gen == 0)
        sl->gen = 1;
    dx__sched *s = dx__tls_sched;
    int rc = s ? free_push(&s->free_idx, &s->free_len, &s->free_cap, idx)
               : free_push(&dx__rt.ext_free_idx, &dx__rt.ext_free_len,
                           &dx__rt.ext_free_cap, idx);
    (void)rc; /* on OOM the index is simply never reused */
    if (s != NULL && s->free_len > FREE_LOCAL_MAX)
        spare_give(s);
}

/* ------------------------------------------------------------------ */
/* Control blocks: reclaimed ones are kept per scheduler for reuse,    */
/* with their saved-stack buffer, so a spawn after an exit costs no    */
/* allocation at all.                                                  */
/* ------------------------------------------------------------------ */

/* A block goes back to the cache of the scheduler its process exited on,
 * but is taken from the cache of the one that spawns: when one scheduler
 * spawns and another runs (work spread or stolen), the runner's cache only
 * fills and the spawner's only empties. The cap is therefore what a
 * scheduler may hold for nothing, for as long as the runtime runs: keep it
 * small (at 4,096 a soak grew by 12 MiB before it levelled off), and do
 * not keep the saved-stack buffer of a process that ran deep. */
#define PROC_CACHE_MAX 256
#define PROC_CACHE_STACK_MAX 4096

dx__proc *dx__proc_block_alloc(void)
{
    dx__sched *s = dx__tls_sched;
    if (s == NULL || s->proc_cache == NULL)
        return dx_calloc(1, sizeof(dx__proc));
    dx__proc *p = s->proc_cache;
    s->proc_cache = p->limbo_next;
    s->proc_cache_len--;
#if DX_COPY_STACK
    char *save = p->stack_save;
    size_t cap = p->stack_cap;
#endif
    static const dx__proc blank;
    *p = blank;
#if DX_COPY_STACK
    p->stack_save = save;
    p->stack_cap = cap;
#endif
    return p;
}

/* Size the block accounts for itself (its saved-stack buffer included). */
size_t dx__proc_block_size(const dx__proc *p)
{
#if DX_COPY_STACK
    return sizeof *p + p->stack_cap;
#else
    return sizeof *p;
#endif
}

static void proc_block_destroy(dx__proc *p)
{
#if DX_COPY_STACK
    dx_free(p->stack_save);
#endif
    dx_free(p);
}

void dx__proc_block_free(dx__proc *p)
{
    dx__sched *s = dx__tls_sched;
    if (s != NULL && s->proc_cache_len < PROC_CACHE_MAX) {
#if DX_COPY_STACK
        if (p->stack_cap > PROC_CACHE_STACK_MAX) {
            dx_free(p->stack_save);
            p->stack_save = NULL;
            p->stack_cap = 0;
        }
#endif
        p->limbo_next = s->proc_cache;
        s->proc_cache = p;
        s->proc_cache_len++;
        return;
    }
    proc_block_destroy(p);
}

static void proc_cache_free(dx__sched *s)
{
    while (s->proc_cache != NULL) {
        dx__proc *p = s->proc_cache;
        s->proc_cache = p->limbo_next;
        proc_block_destroy(p);
    }
    s->proc_cache_len = 0;
}

/* ------------------------------------------------------------------ */
/* Host-thread bracket and quiescent-state reclamation                 */
/* ------------------------------------------------------------------ */

/* Schedulers a host thread woke while inside the bracket, woken as it
 * leaves (see dx__ext_leave). */
enum { EXT_WAKES_MAX = 4 };
static _Thread_local struct {
    bool inside;
    int n;
    dx__sched *sched[EXT_WAKES_MAX];
} ext_wakes;

int dx__ext_enter(int *entered)
{
    *entered = 0;
    if (dx__tls_sched != NULL)
        return DX_OK; /* scheduler threads are always inside */
    if (!atomic_load(&dx__rt.running))
        return DX_ESTATE;
    pthread_mutex_lock(&dx__rt.ext_mu);
    if (!atomic_load(&dx__rt.running)) {
        pthread_mutex_unlock(&dx__rt.ext_mu);
        return DX_ESTATE;
    }
    atomic_store(&dx__rt.ext_seen, atomic_load(&dx__rt.epoch));
    ext_wakes.inside = true;
    ext_wakes.n = 0;
    *entered = 1;
    return DX_OK;
}

/* The thread is past every block it looked at before it wakes anyone.
 * Woken inside the bracket, a scheduler often took the CPU from this
 * thread at once (the kernel favours the woken thread), ran the process
 * it was woken for to its exit, and went idle while ext_seen still held
 * the block back: it then woke again LIMBO_RETRY_NS later only to free it,
 * about one extra wake-up in three evaluated examples at 1 in flight
 * (docs/benchmarks.md). The wake-ups still come before the bracket's
 * mutex is let go, which is what keeps the schedulers from being torn
 * down under them. */
void dx__ext_leave(int entered)
{
    if (!entered)
        return;
    atomic_store(&dx__rt.ext_seen, OFFLINE);
    ext_wakes.inside = false;
    for (int i = 0; i < ext_wakes.n; i++)
        dx__sched_notify(ext_wakes.sched[i]);
    ext_wakes.n = 0;
    pthread_mutex_unlock(&dx__rt.ext_mu);
}

void dx__retire(dx__sched *s, dx__proc *p)
{
    p->retire_epoch = atomic_load(&dx__rt.epoch);
    p->limbo_next = NULL;
    if (s->limbo_tail)
        s->limbo_tail->limbo_next = p;
    else
        s->limbo_head = p;
    s->limbo_tail = p;
}

/* Announce a quiescent point; every 32nd turn (or when `force`), also move
 * the epoch on and free what every scheduler has passed. Doing the second
 * part every turn made the shared epoch counter a hot cache line. */
static void quiescent(dx__sched *s, bool force)
{
    uint64_t e = atomic_load_explicit(&dx__rt.epoch, memory_order_acquire);
    /* Release is enough: it orders every earlier access to a retired block
     * before the announcement that we are past it. */
    atomic_store_explicit(&s->seen_epoch, e, memory_order_release);
    if (s->limbo_head == NULL || (!force && (s->loops & 31) != 0))
        return;
    /* Blocks retired in the current epoch need the epoch to move on before
     * anyone can be seen past it. This thread, at a quiescent point, is
     * past it at once: saying so now lets a scheduler going idle with the
     * others asleep free its exited processes before it sleeps, instead of
     * waking LIMBO_RETRY_NS later to do it (one wake-up per process exit
     * at low load). */
    if (s->limbo_tail->retire_epoch == e) {
        uint64_t now = e + 1;
        if (!atomic_compare_exchange_strong(&dx__rt.epoch, &e, now))
            now = e; /* another thread moved it on: e is the new epoch */
        atomic_store_explicit(&s->seen_epoch, now, memory_order_release);
    }
    uint64_t min = atomic_load(&dx__rt.ext_seen);
    for (int i = 0; i < dx__rt.nsched; i++) {
        uint64_t v = atomic_load(&dx__rt.scheds[i].seen_epoch);
        if (v < min)
            min = v;
    }
    while (s->limbo_head && s->limbo_head->retire_epoch < min) {
        dx__proc *p = s->limbo_head;
        s->limbo_head = p->limbo_next;
        if (s->limbo_head == NULL)
            s->limbo_tail = NULL;
        dx__proc_reclaim(p);
    }
}

/* ------------------------------------------------------------------ */
/* Waking and queueing                                                 */
/* ------------------------------------------------------------------ */

/* A sleeping scheduler waits on its `sleeping` word itself with a futex,
 * not on a condition variable: with a mutex and a condition variable, the
 * waker held the mutex while it signalled and the woken thread blocked on
 * it again, or the waker found it held by the sleeper on its way in or out
 * — up to four futex calls and an extra context switch per wake-up, the
 * largest share of the runtime's system calls at 256 LM calls in flight.
 * The word is the only state: the sleeper sets it to 1, looks for work
 * once more and waits while it is still 1; a waker that turns it to 0
 * wakes the thread, and a wake-up that comes before the wait makes the
 * wait return at once (the kernel compares the word first). */
static void park(_Atomic int *word, int64_t deadline_ns)
{
    struct timespec ts, *at = NULL;
    if (deadline_ns != INT64_MAX) {
        ts.tv_sec = (time_t)(deadline_ns / 1000000000);
        ts.tv_nsec = (long)(deadline_ns % 1000000000);
        at = &ts;
    }
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, the
     * clock of dx__now_ns. */
    syscall(SYS_futex, (int *)word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, 1,
            at, NULL, FUTEX_BITSET_MATCH_ANY);
}

void dx__sched_notify(dx__sched *s)
{
    if (ext_wakes.inside) {
        /* A host thread inside the bracket: wake s as it leaves, unless
         * there are too many to keep. */
        for (int i = 0; i < ext_wakes.n; i++)
            if (ext_wakes.sched[i] == s)
                return;
        if (ext_wakes.n < EXT_WAKES_MAX) {
            ext_wakes.sched[ext_wakes.n++] = s;
            return;
        }
    }
    /* The first waker clears the flag and pays for the system call; the
     * others see 0 and go on. */
    if (atomic_load(&s->sleeping) && atomic_exchange(&s->sleeping, 0) == 1)
        syscall(SYS_futex, (int *)&s->sleeping, FUTEX_WAKE | FUTEX_PRIVATE_FLAG,
                1, NULL, NULL, 0);
}

void dx__enqueue(dx__proc *p)
{
    dx__sched *home = p->home;
    if (dx__tls_sched == home) {
        if (home->run_next == NULL && !dx__rt.deterministic)
            home->run_next = p;
        else
            runq_push_or_die(&home->runq, p);
        return;
    }
    dx__mpsc_push(&home->inject, &p->run_node);
    dx__sched_notify(home);
}

void dx__wake(dx__proc *p)
{
    uint32_t expect = DX__WAITING;
    if (atomic_load(&p->state) == DX__WAITING &&
        atomic_compare_exchange_strong(&p->state, &expect, DX__RUNNABLE))
        dx__enqueue(p);
}

static bool long_busy(dx__sched *v, int64_t now);

static void wake_idle_sibling(dx__sched *self)
{
    for (int i = 0; i < dx__rt.nsched; i++) {
        dx__sched *o = &dx__rt.scheds[i];
        if (o != self && atomic_load(&o->sleeping)) {
            dx__sched_notify(o);
            return;
        }
    }
}

/* A new process goes to the fresh queue of the spawning scheduler (or of
 * one picked round-robin for host threads and spread spawns), where idle
 * schedulers may take it before it first runs. */
int dx__enqueue_fresh(dx__proc *p, bool spread)
{
    dx__sched *s = dx__tls_sched;
    if (s == NULL || (spread && !dx__rt.deterministic))
        s = &dx__rt.scheds[atomic_fetch_add(&dx__rt.ext_rr, 1) %
                           (uint32_t)dx__rt.nsched];
    __atomic_store_n(&p->home, s, __ATOMIC_RELAXED);
    if (dx__rt.deterministic && s == dx__tls_sched)
        return runq_push(&s->runq, p);
    pthread_mutex_lock(&s->fresh_mu);
    if (s->fresh.len == 0)
        atomic_store_explicit(&s->fresh_stamp, dx__now_ns(),
                              memory_order_relaxed);
    int rc = runq_push(&s->fresh, p);
    uint32_t n = s->fresh.len;
    atomic_store(&s->fresh_len, n);
    pthread_mutex_unlock(&s->fresh_mu);
    if (rc != DX_OK)
        return rc;
    (void)n;
    if (s != dx__tls_sched)
        dx__sched_notify(s);
    return DX_OK;
}

static dx__proc *take_fresh(dx__sched *s)
{
    if (atomic_load_explicit(&s->fresh_len, memory_order_relaxed) == 0)
        return NULL;
    pthread_mutex_lock(&s->fresh_mu);
    dx__proc *p = runq_pop(&s->fresh);
    atomic_store(&s->fresh_len, s->fresh.len);
    if (s->fresh.len > 0)
        atomic_store_explicit(&s->fresh_stamp, dx__now_ns(),
                              memory_order_relaxed);
    pthread_mutex_unlock(&s->fresh_mu);
    return p;
}

/* Take half of another scheduler's never-run processes. Only victims with
 * at least two waiting are robbed: a single fresh process is usually the
 * partner its spawner is about to talk to, and moving it would turn every
 * message between them into a cross-thread wake-up. */
static bool long_busy(dx__sched *v, int64_t now)
{
    return now - atomic_load_explicit(&v->fresh_stamp, memory_order_relaxed) >=
           STEAL_AFTER_NS;
}

static int steal(dx__sched *s)
{
    int got = 0;
    int64_t now = 0;
    for (int k = 1; k < dx__rt.nsched && !got; k++) {
        dx__sched *v = &dx__rt.scheds[(s->index + k) % dx__rt.nsched];
        if (atomic_load_explicit(&v->fresh_len, memory_order_relaxed) < 2 ||
            atomic_load_explicit(&v->sleeping, memory_order_relaxed))
            continue;
        if (!atomic_load_explicit(&v->want_help, memory_order_relaxed)) {
            if (now == 0)
                now = dx__now_ns();
            if (!long_busy(v, now))
                continue;
        }
        /* Never make the victim's spawn path wait for a thief. */
        if (pthread_mutex_trylock(&v->fresh_mu) != 0)
            continue;
        uint32_t take = v->fresh.len / 2;
        for (uint32_t i = 0; i < take; i++) {
            dx__proc *p = runq_pop_back(&v->fresh);
            __atomic_store_n(&p->home, s, __ATOMIC_RELAXED);
            runq_push_or_die(&s->runq, p);
            got++;
        }
        atomic_store(&v->fresh_len, v->fresh.len);
        atomic_store_explicit(&v->want_help, 0, memory_order_relaxed);
        pthread_mutex_unlock(&v->fresh_mu);
    }
    return got;
}

static void drain_inject(dx__sched *s)
{
    struct dx__node *n;
    while ((n = dx__mpsc_pop(&s->inject)) != NULL)
        runq_push_or_die(&s->runq, dx__container_of(n, dx__proc, run_node));
}

static uint64_t rng_next(uint64_t *x)
{
    /* xorshift64*: small, fast and good enough to pick the next process */
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 0x2545F4914F6CDD1Dull;
}

static dx__proc *next_runnable(dx__sched *s)
{
    if (dx__rt.deterministic) {
        if (s->runq.len == 0) {
            dx__proc *f = take_fresh(s); /* spawned from a host thread */
            if (f != NULL)
                runq_push_or_die(&s->runq, f);
        }
        if (s->runq.len == 0)
            return NULL;
        return runq_take_at(&s->runq,
                            (uint32_t)(rng_next(&s->rng) % s->runq.len));
    }
    if (s->run_next != NULL) {
        dx__proc *p = s->run_next;
        s->run_next = NULL;
        if (s->run_next_streak++ < RUN_NEXT_STREAK)
            return p;
        runq_push_or_die(&s->runq, p);
    }
    s->run_next_streak = 0;
    /* New processes take turns with runnable ones, so a spawner that keeps
     * its budget busy still lets its children start (much as Erlang puts a
     * new process at the back of the run queue). */
    if ((++s->picks & 1) || s->runq.len == 0) {
        dx__proc *f = take_fresh(s);
        if (f != NULL)
            return f;
    }
    dx__proc *p = runq_pop(&s->runq);
    if (p != NULL)
        return p;
    return take_fresh(s);
}

/* ------------------------------------------------------------------ */
/* Stacks                                                              */
/* ------------------------------------------------------------------ */

static size_t page_size(void)
{
    return dx__rt.page_size;
}

#define GUARD_BYTES (64 * 1024)

#if DX_COPY_STACK

static int stack_init(dx__sched *s)
{
    size_t size = (dx__rt.stack_size + page_size() - 1) & ~(page_size() - 1);
    s->stack_map_size = size + GUARD_BYTES;
    void *m = mmap(NULL, s->stack_map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return DX_ESYS;
    if (mprotect(m, GUARD_BYTES, PROT_NONE) != 0) {
        munmap(m, s->stack_map_size);
        return DX_ESYS;
    }
    s->stack_map = m;
    s->stack_lo = (char *)m + GUARD_BYTES;
    s->stack_hi = s->stack_lo + size;
    s->valgrind_stack = VALGRIND_STACK_REGISTER(s->stack_lo, s->stack_hi);
    return DX_OK;
}

static void stack_fini(dx__sched *s)
{
    if (s->stack_map) {
        VALGRIND_STACK_DEREGISTER(s->valgrind_stack);
        munmap(s->stack_map, s->stack_map_size);
    }
}

/* Copy the frames of the process that parked last out of the shared stack. */
static void save_owner(dx__sched *s)
{
    dx__proc *o = s->stack_owner;
    if (o == NULL)
        return;
    size_t used = (size_t)(s->stack_hi - (char *)o->ctx.sp);
    if (used > o->stack_cap) {
        size_t cap = (used + 31) & ~(size_t)31;
        char *b = dx_realloc(o->stack_save, cap);
        if (b == NULL) {
            static const char msg[] = "dspex: out of memory saving a stack\n";
            (void)!write(2, msg, sizeof msg - 1);
            abort();
        }
        atomic_fetch_add_explicit(&o->mem_bytes, cap - o->stack_cap,
                                  memory_order_relaxed);
        o->stack_save = b;
        o->stack_cap = cap;
    }
    memcpy(o->stack_save, o->ctx.sp, used);
    o->stack_len = used;
    s->stack_owner = NULL;
}

static void prepare_stack(dx__sched *s, dx__proc *p)
{
    if (s->stack_owner == p)
        return; /* its frames are still in place */
    save_owner(s);
    if (!p->started) {
        VALGRIND_MAKE_MEM_UNDEFINED(s->stack_hi - 128, 128);
        dx__ctx_make(&p->ctx, s->stack_lo, (size_t)(s->stack_hi - s->stack_lo));
        p->started = 1;
    } else {
        VALGRIND_MAKE_MEM_UNDEFINED(p->ctx.sp, p->stack_len);
        memcpy(p->ctx.sp, p->stack_save, p->stack_len);
    }
}

void dx__proc_stack_free(dx__proc *p)
{
    dx__sched *s = p->home;
    if (s && s->stack_owner == p)
        s->stack_owner = NULL;
    /* The buffer stays with the control block, which is reused (see
     * dx__proc_block_alloc) or freed with it. */
    p->stack_len = 0;
}

#else /* a stack of its own for every process */

static int stack_init(dx__sched *s)
{
    (void)s;
    return DX_OK;
}

static void stack_fini(dx__sched *s)
{
    (void)s;
}

static int prepare_stack(dx__sched *s, dx__proc *p)
{
    (void)s;
    if (p->started)
        return DX_OK;
    size_t size = (dx__rt.stack_size + page_size() - 1) & ~(page_size() - 1);
    char *m = mmap(NULL, size + GUARD_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return DX_ESYS;
    if (mprotect(m, GUARD_BYTES, PROT_NONE) != 0) {
        munmap(m, size + GUARD_BYTES);
        return DX_ESYS;
    }
    p->stack_lo = m + GUARD_BYTES;
    p->stack_size = size;
    p->valgrind_stack =
        VALGRIND_STACK_REGISTER(p->stack_lo, (char *)p->stack_lo + size);
    dx__ctx_make(&p->ctx, p->stack_lo, size);
#if DX_SANITIZE_THREAD
    p->san_fiber = __tsan_create_fiber(0);
#endif
    p->started = 1;
    return DX_OK;
}

void dx__proc_stack_free(dx__proc *p)
{
#if DX_SANITIZE_ADDRESS
    /* An exited process never unwound its frames: clear their redzones so
     * a later mapping at this address does not inherit them. */
    if (p->stack_lo)
        __asan_unpoison_memory_region(p->stack_lo, p->stack_size);
#endif
#if DX_SANITIZE_THREAD
    if (p->san_fiber)
        __tsan_destroy_fiber(p->san_fiber);
    p->san_fiber = NULL;
#endif
    if (p->stack_lo) {
        VALGRIND_STACK_DEREGISTER(p->valgrind_stack);
        munmap((char *)p->stack_lo - GUARD_BYTES, p->stack_size + GUARD_BYTES);
    }
    p->stack_lo = NULL;
}

#endif

/* Where a fault at addr would have hit the guard below the running stack. */
int dx__is_guard_hit(dx__sched *s, dx__proc *p, void *addr)
{
    char *a = addr;
#if DX_COPY_STACK
    (void)p;
    return a >= s->stack_map && a < s->stack_lo;
#else
    (void)s;
    char *lo = p->stack_lo;
    return lo != NULL && a >= lo - GUARD_BYTES && a < lo;
#endif
}

/* ------------------------------------------------------------------ */
/* Switching                                                           */
/* ------------------------------------------------------------------ */

static void switch_to_proc(dx__sched *s, dx__proc *p)
{
#if DX_SANITIZE_ADDRESS && !DX_COPY_STACK
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, p->stack_lo, p->stack_size);
#endif
#if DX_SANITIZE_THREAD && !DX_COPY_STACK
    __tsan_switch_to_fiber(p->san_fiber, 0);
#endif
    dx__ctx_swap(&s->ctx, &p->ctx);
#if DX_SANITIZE_ADDRESS && !DX_COPY_STACK
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

void dx__fiber_started(void)
{
#if DX_SANITIZE_ADDRESS && !DX_COPY_STACK
    /* The first switch into a process lands in dx__proc_entry, not after
     * a dx__ctx_swap call: complete ASan's switch bookkeeping there. */
    __sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
}

void dx__switch_out(dx__proc *p, int reason)
{
    dx__sched *s = p->home;
    p->yield_reason = (uint8_t)reason;
    /* The switch is runtime code on p's stack: p cannot be stopped in it
     * (fault.c), nor in the scheduler's code that runs until p is back. */
    p->in_runtime++;
#if DX_SANITIZE_ADDRESS && !DX_COPY_STACK
    void *fake = NULL;
    /* Exiting processes never come back: tell ASan to drop the fiber. */
    __sanitizer_start_switch_fiber(reason == DX__EXIT ? NULL : &fake, NULL, 0);
#endif
#if DX_SANITIZE_THREAD && !DX_COPY_STACK
    __tsan_switch_to_fiber(s->san_fiber, 0);
#endif
    dx__ctx_swap(&p->ctx, &s->ctx);
#if DX_SANITIZE_ADDRESS && !DX_COPY_STACK
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    p->in_runtime--;
}

void dx__tick(dx__proc *p)
{
    DX__OWNER_INC(p->reductions);
    if (--p->budget > 0)
        return;
    p->budget = dx__rt.budget;
    dx__switch_out(p, DX__YIELD);
    dx__drain(p); /* act on exit signals that came while we were away */
}

int dx_yield(void)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL)
        return DX_ENOTPROC;
    DX__OWNER_INC(p->reductions);
    p->budget = dx__rt.budget;
    dx__switch_out(p, DX__YIELD);
    dx__drain(p);
    return DX_OK;
}

/* Run p until it hands control back, then act on why it did. */
static void run_proc(dx__sched *s, dx__proc *p)
{
    atomic_store_explicit(&p->state, DX__RUNNING, memory_order_relaxed);
    p->budget = dx__rt.budget;
#if DX_COPY_STACK
    prepare_stack(s, p);
#else
    if (prepare_stack(s, p) != DX_OK) {
        p->exit_reason =
            dx_tuple(2, dx_atom("spawn_failed"), dx_atom("no_stack"));
        dx__proc_finish(s, p);
        return;
    }
#endif
    s->current = p;
    atomic_fetch_add_explicit(&p->runs, 1, memory_order_relaxed);
    switch_to_proc(s, p);
    s->current = NULL;
#if DX_COPY_STACK
    s->stack_owner = p;
#endif
    switch (p->yield_reason) {
    case DX__YIELD:
        atomic_store(&p->state, DX__RUNNABLE);
        runq_push_or_die(&s->runq, p);
        break;
    case DX__PARK:
        /* Publish WAITING, then look at the mailbox once more: a sender
         * that pushed before seeing WAITING is caught here, one that sees
         * WAITING wakes the process itself (seq_cst on both sides). */
        atomic_store(&p->state, DX__WAITING);
        if (dx__mpsc_nonempty(&p->mailbox) || p->tmo_fired) {
            uint32_t expect = DX__WAITING;
            if (atomic_compare_exchange_strong(&p->state, &expect,
                                               DX__RUNNABLE))
                runq_push_or_die(&s->runq, p);
        }
        break;
    case DX__EXIT:
        dx__proc_finish(s, p);
        break;
    }
}

/* A fault inside process code jumps back here (fault.c). */
static void recover_fault(dx__sched *s)
{
    dx__proc *p = s->current;
    s->current = NULL;
#if DX_COPY_STACK
    s->stack_owner = NULL; /* its frames are garbage now */
#endif
    p->exit_reason = dx__fault_reason(s, p);
    dx__proc_finish(s, p);
}

static bool has_work(dx__sched *s)
{
    return s->runq.len > 0 || s->run_next != NULL ||
           dx__mpsc_nonempty(&s->inject) || atomic_load(&s->fresh_len) > 0;
}

static void idle(dx__sched *s, int64_t next_deadline)
{
    if (!dx__rt.deterministic) {
        int64_t spin_until = dx__now_ns() + SPIN_NS;
        if (next_deadline < spin_until)
            spin_until = next_deadline;
        do {
            for (int i = 0; i < 32; i++) {
                if (has_work(s) || atomic_load(&dx__rt.quit))
                    return;
                for (int k = 0; k < 16; k++)
                    __asm__ volatile("" ::: "memory");
            }
            if (steal(s) > 0)
                return;
        } while (dx__now_ns() < spin_until);
    }
    atomic_store(&s->sleeping, 1);
    atomic_store(&s->seen_epoch, OFFLINE);
    /* A timer added from another thread just before `sleeping` was set
     * did not notify us: look at the heap again now that it is set. */
    int64_t peek = dx__timers_peek(s);
    if (peek < next_deadline)
        next_deadline = peek;
    /* Exited processes wait in this thread's limbo until every scheduler is
     * past them, and only this thread's quiescent() reclaims them: that is
     * also when a monitor or link signal that reached one after its exit
     * is answered (DOWN or EXIT noproc, drain_dead). Sleeping on a
     * non-empty limbo for good would leave that monitor waiting for as long
     * as nothing else wakes this thread: look again soon instead. */
    if (s->limbo_head != NULL) {
        int64_t retry = dx__now_ns() + LIMBO_RETRY_NS;
        if (retry < next_deadline)
            next_deadline = retry;
    }
    /* Work queued before `sleeping` was set is seen here; work queued
     * after it finds the flag set and wakes us (dx__sched_notify). Early
     * returns (signals, a wake-up meant for an earlier sleep) re-check. */
    while (atomic_load(&s->sleeping) && !has_work(s) &&
           !atomic_load(&dx__rt.quit) &&
           (next_deadline == INT64_MAX || dx__now_ns() < next_deadline))
        park(&s->sleeping, next_deadline);
    atomic_store(&s->sleeping, 0);
    atomic_store(&s->seen_epoch, atomic_load(&dx__rt.epoch));
}

static void sched_loop(dx__sched *s)
{
    /* Faults in process code land here; the loop state lives in *s. */
    if (sigsetjmp(s->fault_jmp, 0) != 0)
        recover_fault(s);
    for (;;) {
        quiescent(s, false);
        /* Timers are looked at every 16th turn and before going idle: a
         * clock read per process switch would cost more than the switch. */
        if ((++s->loops & 15) == 0)
            dx__timers_run(s);
        drain_inject(s);
        dx__proc *p = next_runnable(s);
        if (p == NULL) {
            /* Due timers may wake someone; otherwise sleep until the next
             * one that will do something. */
            dx__timers_run(s);
            drain_inject(s);
            p = next_runnable(s);
            if (p == NULL) {
                if (atomic_load(&dx__rt.quit))
                    break;
                if (steal(s) > 0)
                    continue;
                quiescent(s, true); /* free what we can before sleeping */
                idle(s, dx__timers_settle(s));
                continue;
            }
        }
        run_proc(s, p);
        /* Falling behind on new processes while a sibling sleeps: wake it
         * to take some (only reads a counter in the common case). */
        if (dx__rt.nsched > 1 &&
            atomic_load_explicit(&s->fresh_len, memory_order_relaxed) >= 2 &&
            long_busy(s, dx__now_ns())) {
            /* The owner pops fresh processes as it goes, which keeps the
             * stamp young: say plainly that help is wanted. */
            atomic_store(&s->want_help, 1);
            wake_idle_sibling(s);
        }
    }
}

static void *sched_thread(void *arg)
{
    dx__sched *s = arg;
    dx__tls_sched = s;
    char name[16];
    snprintf(name, sizeof name, "dx-sched-%d", s->index);
    pthread_setname_np(pthread_self(), name);
#if DX_SANITIZE_THREAD
    s->san_fiber = __tsan_get_current_fiber();
#endif
    if (dx__rt.fault_isolation)
        dx__fault_thread_init(s);
    atomic_store(&s->seen_epoch, atomic_load(&dx__rt.epoch));
    sched_loop(s);
    atomic_store(&s->seen_epoch, OFFLINE);
    if (dx__rt.fault_isolation)
        dx__fault_thread_fini(s);
    dx__tls_sched = NULL;
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Runtime start / stop                                                */
/* ------------------------------------------------------------------ */

static int env_schedulers(void)
{
    const char *e = getenv("DX_SCHEDULERS");
    if (e != NULL && *e) {
        char *end;
        long v = strtol(e, &end, 10);
        if (*end == '\0' && v > 0 && v <= 1024)
            return (int)v;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int intern_atoms(void)
{
    dx__a_normal = dx_atom("normal");
    dx__a_kill = dx_atom("kill");
    dx__a_killed = dx_atom("killed");
    dx__a_shutdown = dx_atom("shutdown");
    dx__a_noproc = dx_atom("noproc");
    dx__a_bad_call = dx_atom("bad_call");
    return dx__a_normal && dx__a_kill && dx__a_killed && dx__a_shutdown &&
                   dx__a_noproc && dx__a_bad_call
               ? DX_OK
               : DX_ENOMEM;
}

static void sched_destroy(dx__sched *s)
{
    dx__msg_cache_free(s);
    proc_cache_free(s);
    stack_fini(s);
    dx__timer_heap_destroy(&s->timers);
    dx_free(s->runq.items);
    dx_free(s->fresh.items);
    dx_free(s->free_idx);
    pthread_mutex_destroy(&s->fresh_mu);
}

static void free_runtime(int nstarted)
{
    for (int i = 0; i < dx__rt.nsched; i++) {
        dx__sched *s = &dx__rt.scheds[i];
        while (s->limbo_head) {
            dx__proc *p = s->limbo_head;
            s->limbo_head = p->limbo_next;
            dx__proc_reclaim(p);
        }
        s->limbo_tail = NULL;
    }
    (void)nstarted;
    dx__timers_shutdown();
    for (int i = 0; i < dx__rt.nsched; i++)
        sched_destroy(&dx__rt.scheds[i]);
    dx_free(dx__rt.scheds_mem);
    dx__rt.scheds_mem = NULL;
    dx__rt.scheds = NULL;
    for (uint32_t c = 0; c < MAX_CHUNKS; c++) {
        pid_slot *chunk = atomic_load(&pid_chunks[c]);
        if (chunk == NULL)
            break;
        dx_free(chunk);
        atomic_store(&pid_chunks[c], NULL);
    }
    dx_free(dx__rt.ext_free_idx);
    dx__rt.ext_free_idx = NULL;
    dx__rt.ext_free_len = dx__rt.ext_free_cap = 0;
    dx_free(dx__rt.spare_idx);
    dx__rt.spare_idx = NULL;
    dx__rt.spare_len = dx__rt.spare_cap = 0;
    pthread_mutex_destroy(&dx__rt.spare_mu);
    dx__registry_destroy();
    if (dx__rt.fault_isolation)
        dx__fault_uninstall();
    pthread_mutex_destroy(&dx__rt.ext_mu);
    pthread_mutex_destroy(&dx__rt.live_mu);
    pthread_cond_destroy(&dx__rt.live_cv);
}

int dx_runtime_start(const dx_runtime_opts *opts)
{
    dx_runtime_opts o = {0};
    if (opts != NULL)
        o = *opts;
    if (atomic_load(&dx__rt.running))
        return DX_ESTATE;
    if (o.schedulers < 0 || o.budget < 0)
        return DX_EINVAL;
    if (intern_atoms() != DX_OK)
        return DX_ENOMEM;
    /* Now, while the process may still have one thread: later, each growth
     * of the table would stall every thread (descriptors.c). */
    (void)dx_reserve_descriptors(
        o.descriptors ? o.descriptors : DX_RUNTIME_DEFAULT_DESCRIPTORS);

    memset(&dx__rt, 0, sizeof dx__rt);
    dx__rt.page_size = (size_t)sysconf(_SC_PAGESIZE);
    dx__rt.deterministic = o.deterministic;
    dx__rt.nsched =
        o.deterministic ? 1 : (o.schedulers ? o.schedulers : env_schedulers());
    dx__rt.stack_size = o.stack_size ? o.stack_size : (size_t)1 << 20;
    if (dx__rt.stack_size < 16 * 1024)
        dx__rt.stack_size = 16 * 1024;
    dx__rt.budget = o.budget ? o.budget : 2000;
    /* ThreadSanitizer cannot follow a jump out of a signal handler from one
     * fiber to another, so TSan builds let faults end the OS process. */
    dx__rt.fault_isolation = !o.disable_fault_isolation && !DX_SANITIZE_THREAD;
    atomic_store(&dx__rt.epoch, 1);
    atomic_store(&dx__rt.ext_seen, OFFLINE);
    atomic_store(&dx__rt.next_fresh_idx, 1); /* index 0 is never a pid */
    pthread_mutex_init(&dx__rt.ext_mu, NULL);
    pthread_mutex_init(&dx__rt.spare_mu, NULL);
    pthread_mutex_init(&dx__rt.live_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&dx__rt.live_cv, &ca);
    dx__registry_init();

    /* dx_malloc promises only malloc's alignment; the struct wants 64. */
    dx__rt.scheds_mem = dx_calloc(1, (size_t)dx__rt.nsched * sizeof(dx__sched) +
                                         DX__CACHE_LINE);
    dx__rt.scheds = dx__rt.scheds_mem
                        ? (dx__sched *)(((uintptr_t)dx__rt.scheds_mem +
                                         DX__CACHE_LINE - 1) &
                                        ~(uintptr_t)(DX__CACHE_LINE - 1))
                        : NULL;
    if (dx__rt.scheds == NULL) {
        pthread_condattr_destroy(&ca);
        free_runtime(0);
        return DX_ENOMEM;
    }
    int rc = DX_OK;
    for (int i = 0; i < dx__rt.nsched; i++) {
        dx__sched *s = &dx__rt.scheds[i];
        s->index = i;
        s->rng = o.seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull +
                 (uint64_t)i;
        if (s->rng == 0)
            s->rng = 1;
        dx__mpsc_init(&s->inject);
        pthread_mutex_init(&s->fresh_mu, NULL);
        dx__timer_heap_init(&s->timers);
        atomic_store(&s->seen_epoch, OFFLINE);
        if (rc == DX_OK)
            rc = stack_init(s);
    }
    pthread_condattr_destroy(&ca);
    dx__library_ranges_init();
    dx__sleep_init();
    if (rc == DX_OK && dx__rt.fault_isolation)
        rc = dx__fault_install();
    if (rc != DX_OK) {
        dx__rt.fault_isolation = false;
        free_runtime(0);
        return rc;
    }
    /* It keeps kill deadlines, and stops killed processes that run on;
     * running before any spawn can file a deadline with it. */
    if (dx__stopper_start() != DX_OK) {
        free_runtime(0);
        return DX_ESYS;
    }
    atomic_store(&dx__rt.running, 1);
    int started = 0;
    for (; started < dx__rt.nsched; started++) {
        if (pthread_create(&dx__rt.scheds[started].thread, NULL, sched_thread,
                           &dx__rt.scheds[started]) != 0)
            break;
    }
    if (started < dx__rt.nsched) {
        atomic_store(&dx__rt.quit, 1);
        for (int i = 0; i < started; i++) {
            dx__sched_notify(&dx__rt.scheds[i]);
            pthread_join(dx__rt.scheds[i].thread, NULL);
        }
        dx__stopper_stop();
        atomic_store(&dx__rt.running, 0);
        free_runtime(started);
        return DX_ESYS;
    }
    return DX_OK;
}

bool dx_runtime_running(void)
{
    return atomic_load(&dx__rt.running) && !atomic_load(&dx__rt.stopping);
}

int dx_runtime_schedulers(void)
{
    return atomic_load(&dx__rt.running) ? dx__rt.nsched : 0;
}

/* Send every live process an untrappable `shutdown`. Runtime helpers
 * (hidden processes such as dx_wait_exit's waiters) are spared until the
 * user's processes are gone, so they can still report those exits. */
static void kill_all(void)
{
    bool include_hidden = atomic_load(&dx__rt.live) == 0;
    int entered;
    if (dx__ext_enter(&entered) != DX_OK)
        return;
    uint32_t n = dx__pid_table_size();
    for (uint32_t i = 1; i < n; i++) {
        dx__proc *p = dx__slot_proc(i);
        if (p == NULL || (p->hidden && !include_hidden))
            continue;
        dx_msg *m = dx__signal_new(DX__SIG_EXIT, DX_NOPID, DX_NOREF,
                                   DX__EXIT_KILL, dx__a_shutdown);
        if (m != NULL)
            dx__deliver(p->pid, m);
    }
    dx__ext_leave(entered);
}

int dx_runtime_stop(void)
{
    if (dx__tls_sched != NULL)
        return DX_ESTATE; /* a process cannot wait for its own end */
    if (!atomic_load(&dx__rt.running))
        return DX_ESTATE;
    int expect = 0;
    if (!atomic_compare_exchange_strong(&dx__rt.stopping, &expect, 1))
        return DX_ESTATE;
    /* The I/O loop first: open transfers then complete (cancelled) while
     * the processes waiting for them are still alive to be told. */
    dx_io_stop();
    /* Signals to processes spawned while we kill are caught by repeating
     * until nothing is alive. */
    pthread_mutex_lock(&dx__rt.live_mu);
    while (atomic_load(&dx__rt.live_all) > 0) {
        pthread_mutex_unlock(&dx__rt.live_mu);
        kill_all();
        pthread_mutex_lock(&dx__rt.live_mu);
        if (atomic_load(&dx__rt.live_all) == 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&dx__rt.live_cv, &dx__rt.live_mu, &ts);
    }
    pthread_mutex_unlock(&dx__rt.live_mu);
    /* Every process is gone: the blocking threads finish the calls they
     * run (for nobody now) and end. */
    dx__blocking_stop();

    atomic_store(&dx__rt.quit, 1);
    for (int i = 0; i < dx__rt.nsched; i++)
        dx__sched_notify(&dx__rt.scheds[i]);
    for (int i = 0; i < dx__rt.nsched; i++) {
        /* a scheduler might be between has_work() and sleeping */
        while (pthread_tryjoin_np(dx__rt.scheds[i].thread, NULL) == EBUSY) {
            dx__sched_notify(&dx__rt.scheds[i]);
            usleep(1000);
        }
    }
    dx__stopper_stop();
    pthread_mutex_lock(&dx__rt.ext_mu);
    atomic_store(&dx__rt.running, 0);
    pthread_mutex_unlock(&dx__rt.ext_mu);
    free_runtime(dx__rt.nsched);
    atomic_store(&dx__rt.stopping, 0);
    atomic_store(&dx__rt.quit, 0);
    return DX_OK;
}
