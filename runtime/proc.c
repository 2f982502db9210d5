/*
 * proc.c — the life of a process: spawn, messages and signals, selective
 * receive, links, monitors, exit, reclamation, process-owned memory and
 * introspection.
 *
 * Everything that changes a process (a message, an exit signal, a link or
 * monitor request) reaches it through its mailbox as a signal and is acted
 * on by the process itself when it next drains the mailbox, in arrival
 * order. So a process's link and monitor sets are only ever touched by its
 * own thread, and no lock guards them.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dx_internal.h"

#define NO_IDX UINT32_MAX

static inline dx_msg *msg_of(struct dx__node *n)
{
    return dx__container_of(n, dx_msg, dx__node);
}

static inline dx_msg *msg_next(dx_msg *m)
{
    return m->dx__node.next ? msg_of(m->dx__node.next) : NULL;
}

/* ------------------------------------------------------------------ */
/* Messages                                                            */
/* ------------------------------------------------------------------ */

/* Messages are the most frequent allocation; each scheduler thread keeps a
 * bounded stack of freed ones to reuse (blocks still come from dx_malloc
 * and go back to dx_free when the cache is full or the runtime stops). */
#define MSG_CACHE_MAX 4096

static dx_msg *msg_alloc(void)
{
    dx__sched *s = dx__tls_sched;
    if (s != NULL && s->msg_cache != NULL) {
        dx_msg *m = s->msg_cache;
        s->msg_cache = msg_next(m);
        s->msg_cache_len--;
        /* A structure copy, not memset: memset of this size becomes
         * `rep stos`, whose start-up cost dominated message allocation. */
        static const dx_msg blank;
        *m = blank;
        return m;
    }
    return dx_calloc(1, sizeof(dx_msg));
}

static void msg_release(dx_msg *m)
{
    dx__sched *s = dx__tls_sched;
    if (s != NULL && s->msg_cache_len < MSG_CACHE_MAX) {
        m->dx__node.next = s->msg_cache ? &s->msg_cache->dx__node : NULL;
        s->msg_cache = m;
        s->msg_cache_len++;
        return;
    }
    dx_free(m);
}

void dx__msg_cache_free(dx__sched *s)
{
    dx_msg *m = s->msg_cache;
    while (m != NULL) {
        dx_msg *next = msg_next(m);
        dx_free(m);
        m = next;
    }
    s->msg_cache = NULL;
    s->msg_cache_len = 0;
}

dx_msg *dx_msg_new(int64_t tag)
{
    dx_msg *m = msg_alloc();
    if (m != NULL)
        m->tag = tag;
    return m;
}

void dx__msg_unhold(dx_msg *m)
{
    dx__proc *p = m->dx__owner;
    if (p == NULL)
        return;
    dx_msg *next = m->dx__node.next ? msg_of(m->dx__node.next) : NULL;
    if (m->dx__held_prev)
        m->dx__held_prev->dx__node.next = m->dx__node.next;
    else
        p->held = next;
    if (next)
        next->dx__held_prev = m->dx__held_prev;
    m->dx__node.next = NULL;
    m->dx__held_prev = NULL;
    m->dx__owner = NULL;
}

static void msg_hold(dx__proc *p, dx_msg *m)
{
    m->dx__owner = p;
    m->dx__held_prev = NULL;
    m->dx__node.next = p->held ? &p->held->dx__node : NULL;
    if (p->held)
        p->held->dx__held_prev = m;
    p->held = m;
}

void dx_msg_free(dx_msg *m)
{
    if (m == NULL)
        return;
    dx__msg_unhold(m);
    dx_term_free(m->term);
    if (m->ptr != NULL && m->ptr_free != NULL)
        m->ptr_free(m->ptr);
    msg_release(m);
}

dx_term *dx_msg_take_term(dx_msg *m)
{
    if (m == NULL)
        return NULL;
    dx_term *t = m->term;
    m->term = NULL;
    return t;
}

void *dx_msg_take_ptr(dx_msg *m)
{
    if (m == NULL)
        return NULL;
    void *p = m->ptr;
    m->ptr = NULL;
    m->ptr_free = NULL;
    return p;
}

void dx__free_msg_list(dx_msg *m)
{
    while (m != NULL) {
        dx_msg *next = msg_next(m);
        dx_msg_free(m);
        m = next;
    }
}

dx_msg *dx__signal_new(uint32_t sig, dx_pid from, dx_ref ref, int64_t tag,
                       dx_term *term)
{
    dx_msg *m = msg_alloc();
    if (m == NULL) {
        dx_term_free(term);
        return NULL;
    }
    m->dx__signal = sig;
    m->from = from;
    m->ref = ref;
    m->tag = tag;
    m->term = term;
    return m;
}

static _Atomic(const dx__router *) router;

void dx__set_router(const dx__router *r)
{
    atomic_store_explicit(&router, r, memory_order_release);
}

int dx__route_remote(dx_pid to, dx_msg *m)
{
    const dx__router *r = atomic_load_explicit(&router, memory_order_acquire);
    if (r == NULL) {
        dx_msg_free(m);
        return DX_ENOPROC;
    }
    return r->deliver(to, m);
}

/* How many quiet signals and lazy messages (dx_send_lazy) may wait in a
 * sleeping process's mailbox before one wakes it anyway: a process that is
 * monitored and demonitored over and over but never messaged, or sent
 * only lazy messages, must not gather them without bound. */
#define QUIET_BACKLOG 64

/* Monitor and demonitor: signals that change only the target's table of
 * who watches it and put nothing in its queue. */
static bool is_watch_signal(uint32_t sig)
{
    return sig == DX__SIG_MONITOR || sig == DX__SIG_DEMONITOR;
}

/* quiet (for watch signals): a target waiting in a receive would wake,
 * file the signal and wait again, so it is left asleep: it files it with
 * the next message it wakes for, or on its way out (drain_dead), which
 * still answers a monitor with a DOWN. Without this, every dx_call woke
 * its server a second time for the demonitor after the reply, and an LM
 * call led by its caller woke the LM client in the middle of the HTTP
 * exchange, evicting the caller's stack. */
static int deliver(dx_pid to, dx_msg *m, bool quiet)
{
    dx__proc *self = dx__self_proc();
    /* A fault from here on is the runtime's, not the sender's code: not
     * isolated, for a process or for a blocking thread's guarded call. */
    dx__fault_guard *guard = self ? NULL : dx__tls_fault_guard;
    bool guard_was_armed = guard && guard->armed;
    if (self)
        self->in_runtime++;
    else if (guard_was_armed)
        guard->armed = 0;
    dx__msg_unhold(m);
    int rc = DX_OK;
    if (dx__pid_node(to) != 0) {
        /* A pid of another node: the distribution layer encodes and
         * queues it (or reports the node unreachable). */
        rc = dx__route_remote(to, m);
        if (self)
            self->in_runtime--;
        else if (guard_was_armed)
            guard->armed = 1;
        return rc;
    }
    dx__proc *p = dx__lookup(to);
    if (p == NULL) {
        dx_msg_free(m);
        rc = DX_ENOPROC;
    } else {
        /* Monitor signals are not messages: mailbox_len leaves them out. */
        if (!is_watch_signal(m->dx__signal))
            atomic_fetch_add_explicit(&p->sent, 1, memory_order_relaxed);
        /* Read before the push: from then on m is the target's. */
        bool kill = m->dx__signal == DX__SIG_EXIT && (m->tag & DX__EXIT_KILL);
        bool shutdown = kill && m->term == dx__a_shutdown;
        dx__mpsc_push(&p->mailbox, &m->dx__node);
        /* A kill to a process that is running (not waiting, where the wake
         * below lets it act) may meet code that never calls the runtime
         * again; the stopper sees to that. */
        if (kill && p != self && dx__rt.fault_isolation &&
            atomic_load(&p->state) == DX__RUNNING)
            dx__stopper_watch(p, shutdown);
        if (!quiet ||
            atomic_fetch_add_explicit(&p->quiet_waiting, 1,
                                      memory_order_relaxed) >= QUIET_BACKLOG)
            dx__wake(p);
    }
    if (self)
        self->in_runtime--;
    else if (guard_was_armed)
        guard->armed = 1;
    return rc;
}

int dx__deliver(dx_pid to, dx_msg *m)
{
    return deliver(to, m, false);
}

/* Deliver a runtime signal, ignoring a dead target (its absence is the
 * answer the protocol expects) and allocation failure of the signal. */
static void signal_to(dx_pid to, uint32_t sig, dx_pid from, dx_ref ref,
                      int64_t tag, dx_term *term)
{
    dx_msg *m = dx__signal_new(sig, from, ref, tag, term);
    if (m != NULL)
        deliver(to, m, sig == DX__SIG_DEMONITOR);
}

static int send_msg(dx_pid to, dx_msg *m, bool lazy)
{
    if (m == NULL)
        return DX_EINVAL;
    if (m->tag < 0) {
        dx_msg_free(m);
        return DX_EINVAL;
    }
    dx__proc *self = dx__self_proc();
    m->dx__signal = DX__SIG_MSG;
    m->kind = DX_MSG_PLAIN;
    m->from = self ? self->pid : DX_NOPID;
    if (self != NULL) {
        int rc = deliver(to, m, lazy);
        dx__tick(self);
        return rc;
    }
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK) {
        dx_msg_free(m);
        return rc;
    }
    rc = deliver(to, m, lazy);
    dx__ext_leave(entered);
    return rc;
}

int dx_send(dx_pid to, dx_msg *m)
{
    return send_msg(to, m, false);
}

/* The quiet delivery of watch signals, for messages: the target files it
 * with whatever wakes it next, and the backlog bound (QUIET_BACKLOG) wakes
 * it when nothing else does. */
int dx_send_lazy(dx_pid to, dx_msg *m)
{
    return send_msg(to, m, true);
}

int dx_send_tag(dx_pid to, int64_t tag)
{
    dx_msg *m = dx_msg_new(tag);
    return m ? dx_send(to, m) : DX_ENOMEM;
}

int dx_send_term(dx_pid to, int64_t tag, dx_term *term)
{
    dx_msg *m = dx_msg_new(tag);
    if (m == NULL) {
        dx_term_free(term);
        return DX_ENOMEM;
    }
    m->term = term;
    return dx_send(to, m);
}

int dx_send_ptr(dx_pid to, int64_t tag, void *ptr, void (*ptr_free)(void *))
{
    dx_msg *m = dx_msg_new(tag);
    if (m == NULL) {
        if (ptr && ptr_free)
            ptr_free(ptr);
        return DX_ENOMEM;
    }
    m->ptr = ptr;
    m->ptr_free = ptr_free;
    return dx_send(to, m);
}

/* ------------------------------------------------------------------ */
/* Link and monitor sets (owner thread only; lengths are read racily   */
/* by introspection, hence the atomic stores)                          */
/* ------------------------------------------------------------------ */

/* Empty a set as its owner ends; introspection may be reading its length
 * (dx_process_list of a process that is exiting). */
static void link_set_clear(dx__link_set *s)
{
    __atomic_store_n(&s->len, 0, __ATOMIC_RELAXED);
    dx_free(s->pids);
    s->pids = NULL;
    s->cap = 0;
}

static void mon_set_clear(dx__mon_set *s)
{
    __atomic_store_n(&s->len, 0, __ATOMIC_RELAXED);
    dx_free(s->items);
    s->items = NULL;
    s->cap = 0;
}

static bool link_has(dx__link_set *s, dx_pid pid)
{
    for (uint32_t i = 0; i < s->len; i++)
        if (s->pids[i].id == pid.id)
            return true;
    return false;
}

static int link_add(dx__link_set *s, dx_pid pid)
{
    if (link_has(s, pid))
        return DX_OK;
    if (s->len == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : 4;
        dx_pid *n = dx_realloc(s->pids, sizeof(dx_pid) * cap);
        if (n == NULL)
            return DX_ENOMEM;
        s->pids = n;
        s->cap = cap;
    }
    s->pids[s->len] = pid;
    __atomic_store_n(&s->len, s->len + 1, __ATOMIC_RELAXED);
    return DX_OK;
}

static bool link_remove(dx__link_set *s, dx_pid pid)
{
    for (uint32_t i = 0; i < s->len; i++) {
        if (s->pids[i].id == pid.id) {
            s->pids[i] = s->pids[s->len - 1];
            __atomic_store_n(&s->len, s->len - 1, __ATOMIC_RELAXED);
            return true;
        }
    }
    return false;
}

static int mon_add(dx__mon_set *s, dx_ref ref, dx_pid pid)
{
    if (s->len == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : 4;
        dx__mon *n = dx_realloc(s->items, sizeof(dx__mon) * cap);
        if (n == NULL)
            return DX_ENOMEM;
        s->items = n;
        s->cap = cap;
    }
    s->items[s->len] = (dx__mon){ref, pid};
    __atomic_store_n(&s->len, s->len + 1, __ATOMIC_RELAXED);
    return DX_OK;
}

static bool mon_remove(dx__mon_set *s, dx_ref ref, dx_pid *pid_out)
{
    for (uint32_t i = 0; i < s->len; i++) {
        if (s->items[i].ref.id == ref.id) {
            if (pid_out)
                *pid_out = s->items[i].pid;
            s->items[i] = s->items[s->len - 1];
            __atomic_store_n(&s->len, s->len - 1, __ATOMIC_RELAXED);
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------ */
/* Mailbox draining and the private queue                              */
/* ------------------------------------------------------------------ */

static void q_append(dx__proc *p, dx_msg *m)
{
    m->dx__node.next = NULL;
    if (p->q_last)
        p->q_last->dx__node.next = &m->dx__node;
    else
        p->q_first = m;
    p->q_last = m;
    atomic_store_explicit(
        &p->q_len, atomic_load_explicit(&p->q_len, memory_order_relaxed) + 1,
        memory_order_relaxed);
}

static void q_unlink(dx__proc *p, dx_msg *prev, dx_msg *m)
{
    dx_msg *next = msg_next(m);
    if (prev)
        prev->dx__node.next = next ? &next->dx__node : NULL;
    else
        p->q_first = next;
    if (p->q_last == m)
        p->q_last = prev;
    m->dx__node.next = NULL;
    atomic_store_explicit(
        &p->q_len, atomic_load_explicit(&p->q_len, memory_order_relaxed) - 1,
        memory_order_relaxed);
}

DX_NORETURN void dx__die(dx__proc *p, dx_term *reason)
{
    p->exit_reason = reason ? reason : dx__a_normal;
    dx__switch_out(p, DX__EXIT);
    abort(); /* an exited process is never resumed */
}

static void handle_exit_signal(dx__proc *p, dx_msg *m)
{
    int64_t flags = m->tag;
    dx_term *reason = dx_msg_take_term(m);
    if (reason == NULL)
        reason = dx__a_normal; /* a signal whose reason could not be built */
    if ((flags & DX__EXIT_LINK) && !link_remove(&p->links, m->from)) {
        dx_term_free(reason); /* stale: the link is gone */
        dx_msg_free(m);
        return;
    }
    if (flags & DX__EXIT_KILL) {
        dx_msg_free(m);
        dx__die(p, reason == dx__a_kill ? dx__a_killed : reason);
    }
    if (p->trap_exit) {
        m->dx__signal = DX__SIG_MSG;
        m->kind = DX_MSG_PLAIN;
        m->tag = DX_TAG_EXIT;
        m->ref = DX_NOREF;
        m->term = reason;
        q_append(p, m);
        return;
    }
    dx_msg_free(m);
    if (reason == dx__a_normal)
        return;
    dx__die(p, reason);
}

void dx__drain(dx__proc *p)
{
    struct dx__node *n;
    p->in_runtime++; /* faults from here on are the runtime's, not p's */
    atomic_store_explicit(&p->quiet_waiting, 0, memory_order_relaxed);
    while ((n = dx__mpsc_pop(&p->mailbox)) != NULL) {
        dx_msg *m = msg_of(n);
        if (!is_watch_signal(m->dx__signal))
            DX__OWNER_INC(p->taken);
        switch (m->dx__signal) {
        case DX__SIG_MSG:
            /* A reply nobody waits for any more (its call timed out) is
             * dropped here, so it is never delivered late. */
            if (m->kind == DX_MSG_REPLY && m->ref.id != p->awaiting_reply.id) {
                dx_msg_free(m);
                break;
            }
            q_append(p, m);
            break;
        case DX__SIG_DOWN:
            if (!mon_remove(&p->monitors, m->ref, NULL)) {
                dx_msg_free(m); /* demonitored meanwhile */
                break;
            }
            m->dx__signal = DX__SIG_MSG;
            m->kind = DX_MSG_PLAIN;
            m->tag = DX_TAG_DOWN;
            q_append(p, m);
            break;
        case DX__SIG_EXIT:
            handle_exit_signal(p, m);
            break;
        case DX__SIG_LINK:
            if (link_add(&p->links, m->from) != DX_OK)
                signal_to(m->from, DX__SIG_EXIT, p->pid, DX_NOREF,
                          DX__EXIT_LINK, dx_atom("out_of_memory"));
            dx_msg_free(m);
            break;
        case DX__SIG_UNLINK:
            link_remove(&p->links, m->from);
            dx_msg_free(m);
            break;
        case DX__SIG_MONITOR:
            if (mon_add(&p->monitored_by, m->ref, m->from) != DX_OK)
                signal_to(m->from, DX__SIG_DOWN, p->pid, m->ref, 0,
                          dx_atom("out_of_memory"));
            dx_msg_free(m);
            break;
        case DX__SIG_DEMONITOR:
            mon_remove(&p->monitored_by, m->ref, NULL);
            dx_msg_free(m);
            break;
        default:
            dx_msg_free(m);
            break;
        }
    }
    p->in_runtime--;
}

/* ------------------------------------------------------------------ */
/* Receive                                                             */
/* ------------------------------------------------------------------ */

static bool matches(const dx_msg *m, const dx_match *mt)
{
    if (mt == NULL)
        return true;
    if ((mt->fields & DX_MATCH_TAG) && m->tag != mt->tag)
        return false;
    if ((mt->fields & DX_MATCH_FROM) && m->from.id != mt->from.id)
        return false;
    if ((mt->fields & DX_MATCH_REF) && m->ref.id != mt->ref.id)
        return false;
    return mt->pred == NULL || mt->pred(m, mt->ud);
}

/* Receive timeouts are lazy: disarming only forgets the wanted deadline and
 * leaves the heap entry where it is; when that entry comes due, the
 * scheduler re-files it for the deadline now wanted, or drops it if none
 * is (timer.c). A process that receives with a timeout over and over
 * therefore touches the heap about once per timeout period, not twice per
 * message. */
static int arm(dx__proc *p, int64_t deadline)
{
    p->tmo_want = deadline;
    if (p->tmo.heap_idx != NO_IDX) {
        if (p->tmo.deadline_ns <= deadline)
            return DX_OK; /* fires early, then moves to tmo_want */
        dx__timer_remove(&p->home->timers, &p->tmo);
    }
    p->tmo.deadline_ns = deadline;
    return dx__timer_add(&p->home->timers, &p->tmo);
}

static void disarm(dx__proc *p)
{
    p->tmo_want = 0;
    p->tmo_fired = 0;
}

int dx__receive_after(dx__proc *p, const dx_match *match, dx_msg *after,
                      int64_t timeout_ms, dx_msg **out)
{
    *out = NULL;
    dx__tick(p);
    int64_t deadline = 0; /* set when we first have to wait */
    dx_msg *prev = after;
    p->tmo_fired = 0;
    for (;;) {
        dx__drain(p);
        dx_msg *m = prev ? msg_next(prev) : p->q_first;
        while (m != NULL) {
            if (matches(m, match)) {
                q_unlink(p, prev, m);
                if (deadline != 0)
                    disarm(p);
                DX__OWNER_INC(p->handled);
                msg_hold(p, m);
                *out = m;
                return DX_OK;
            }
            prev = m;
            m = msg_next(m);
        }
        if (timeout_ms == 0)
            return DX_ETIMEDOUT;
        if (timeout_ms > 0) {
            if (deadline == 0) {
                deadline = dx__now_ns() + timeout_ms * 1000000;
                if (arm(p, deadline) != DX_OK)
                    return DX_ENOMEM;
            } else if (p->tmo_fired || dx__now_ns() >= deadline) {
                disarm(p);
                return DX_ETIMEDOUT;
            }
        }
        dx__switch_out(p, DX__PARK);
    }
}

int dx_receive(const dx_match *match, int64_t timeout_ms, dx_msg **out)
{
    dx__proc *p = dx__self_proc();
    if (out == NULL)
        return DX_EINVAL;
    *out = NULL;
    if (p == NULL)
        return DX_ENOTPROC;
    return dx__receive_after(p, match, NULL, timeout_ms, out);
}

int dx_receive_any(int64_t timeout_ms, dx_msg **out)
{
    return dx_receive(NULL, timeout_ms, out);
}

int dx_receive_tag(int64_t tag, int64_t timeout_ms, dx_msg **out)
{
    dx_match mt = {.fields = DX_MATCH_TAG, .tag = tag};
    return dx_receive(&mt, timeout_ms, out);
}

static bool match_none(const dx_msg *m, void *ud)
{
    (void)m;
    (void)ud;
    return false;
}

int dx_sleep(int64_t ms)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL)
        return DX_ENOTPROC;
    if (ms <= 0)
        return dx_yield();
    dx_match none = {.pred = match_none};
    dx_msg *m;
    int rc = dx__receive_after(p, &none, NULL, ms, &m);
    return rc == DX_ETIMEDOUT ? DX_OK : rc;
}

/* ------------------------------------------------------------------ */
/* Spawn, entry, exit                                                  */
/* ------------------------------------------------------------------ */

int dx__spawn(dx_proc_fn fn, void *arg, const dx_spawn_opts *opts, bool hidden,
              dx_pid *pid_out, dx_ref *mon_out)
{
    static const dx_spawn_opts none;
    if (opts == NULL)
        opts = &none;
    if (pid_out)
        *pid_out = DX_NOPID;
    if (mon_out)
        *mon_out = DX_NOREF;
    if (fn == NULL)
        return DX_EINVAL;
    if (!atomic_load(&dx__rt.running) || atomic_load(&dx__rt.stopping))
        return DX_ESTATE;
    dx__proc *self = dx__self_proc();
    if ((opts->link || opts->monitor) && self == NULL)
        return DX_ENOTPROC;
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK)
        return rc;

    dx__proc *p = dx__proc_block_alloc();
    if (p == NULL) {
        dx__ext_leave(entered);
        return DX_ENOMEM;
    }
    dx__mpsc_init(&p->mailbox);
    atomic_store_explicit(&p->state, DX__RUNNABLE, memory_order_relaxed);
    p->fn = fn;
    p->arg = arg;
    p->arg_free = opts->arg_free;
    p->trap_exit = opts->trap_exit;
    p->hidden = hidden;
    p->tmo.kind = DX__TIMER_RECV;
    p->tmo.heap_idx = NO_IDX;
    atomic_store_explicit(&p->mem_bytes, dx__proc_block_size(p),
                          memory_order_relaxed);
    if (opts->label != NULL && (p->label = dx_strdup(opts->label)) == NULL) {
        dx__proc_block_free(p);
        dx__ext_leave(entered);
        return DX_ENOMEM;
    }
    if ((rc = dx__pid_alloc(p)) != DX_OK) {
        dx_free(p->label);
        dx__proc_block_free(p);
        dx__ext_leave(entered);
        return rc;
    }
    dx_ref mref = DX_NOREF;
    if (opts->link)
        rc = link_add(&self->links, p->pid);
    if (rc == DX_OK && opts->link)
        rc = link_add(&p->links, self->pid);
    if (rc == DX_OK && opts->monitor) {
        mref = dx_make_ref();
        rc = mon_add(&self->monitors, mref, p->pid);
        if (rc == DX_OK &&
            (rc = mon_add(&p->monitored_by, mref, self->pid)) != DX_OK)
            mon_remove(&self->monitors, mref, NULL);
    }
    if (rc == DX_OK && opts->name != NULL)
        rc = dx__registry_add(p, opts->name);
    if (rc != DX_OK) {
        if (opts->link)
            link_remove(&self->links, p->pid);
        if (opts->monitor)
            mon_remove(&self->monitors, mref, NULL);
        dx__pid_release(p);
        dx_free(p->links.pids);
        dx_free(p->monitored_by.items);
        dx_free(p->label);
        dx__proc_block_free(p); /* never published: nobody can see it */
        dx__ext_leave(entered);
        return rc;
    }
    dx__pid_publish(p);
    atomic_fetch_add(&dx__rt.live_all, 1);
    if (!hidden)
        atomic_fetch_add(&dx__rt.live, 1);
    if (pid_out)
        *pid_out = p->pid;
    if (mon_out)
        *mon_out = mref;
    /* Before it can run, and published: the stopper kills by pid. */
    if (opts->kill_after_ms > 0)
        dx__kill_deadline_file(p, opts->kill_after_ms);
    rc = dx__enqueue_fresh(p, opts->spread);
    dx__ext_leave(entered);
    if (rc != DX_OK) {
        static const char msg[] = "dspex: out of memory queueing a process\n";
        (void)!write(2, msg, sizeof msg - 1);
        abort();
    }
    if (self != NULL)
        dx__tick(self);
    return DX_OK;
}

int dx_spawn_opt(dx_proc_fn fn, void *arg, const dx_spawn_opts *opts,
                 dx_pid *pid_out, dx_ref *mon_out)
{
    return dx__spawn(fn, arg, opts, false, pid_out, mon_out);
}

int dx_spawn(dx_proc_fn fn, void *arg, dx_pid *pid_out)
{
    return dx__spawn(fn, arg, NULL, false, pid_out, NULL);
}

int dx_spawn_link(dx_proc_fn fn, void *arg, dx_pid *pid_out)
{
    dx_spawn_opts o = {.link = true};
    return dx__spawn(fn, arg, &o, false, pid_out, NULL);
}

int dx_spawn_monitor(dx_proc_fn fn, void *arg, dx_pid *pid_out, dx_ref *mon_out)
{
    dx_spawn_opts o = {.monitor = true};
    return dx__spawn(fn, arg, &o, false, pid_out, mon_out);
}

void dx__proc_entry(void)
{
    dx__fiber_started();
    dx__proc *p = dx__self_proc();
    dx__drain(p); /* killed before it ever ran? */
    p->fn(p->arg);
    dx__die(p, NULL);
}

dx_pid dx_self(void)
{
    dx__proc *p = dx__self_proc();
    return p ? p->pid : DX_NOPID;
}

bool dx_is_alive(dx_pid pid)
{
    int entered;
    if (dx__ext_enter(&entered) != DX_OK)
        return false;
    dx__proc *p = dx__lookup(pid);
    bool alive = p != NULL && atomic_load(&p->state) != DX__EXITING;
    dx__ext_leave(entered);
    return alive;
}

void dx_exit_self(dx_term *reason)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL) {
        static const char msg[] =
            "dspex: dx_exit_self called outside a process\n";
        (void)!write(2, msg, sizeof msg - 1);
        abort();
    }
    dx__die(p, reason);
}

int dx_exit(dx_pid pid, dx_term *reason)
{
    if (reason == NULL)
        reason = dx__a_normal;
    dx__proc *self = dx__self_proc();
    int64_t flags = reason == dx__a_kill ? DX__EXIT_KILL : 0;
    dx_msg *m = dx__signal_new(DX__SIG_EXIT, self ? self->pid : DX_NOPID,
                               DX_NOREF, flags, reason);
    if (m == NULL)
        return DX_ENOMEM;
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK) {
        dx_msg_free(m);
        return rc;
    }
    rc = dx__deliver(pid, m);
    dx__ext_leave(entered);
    if (self != NULL) {
        if (pid.id == self->pid.id)
            dx__drain(self); /* act on an exit signal to ourselves now */
        dx__tick(self);
    }
    return rc;
}

int dx_kill(dx_pid pid)
{
    return dx_exit(pid, dx__a_kill);
}

int dx_link(dx_pid pid)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL)
        return DX_ENOTPROC;
    if (pid.id == p->pid.id || link_has(&p->links, pid))
        return DX_OK;
    int rc = link_add(&p->links, pid);
    if (rc != DX_OK)
        return rc;
    dx_msg *m = dx__signal_new(DX__SIG_LINK, p->pid, DX_NOREF, 0, NULL);
    if (m == NULL) {
        link_remove(&p->links, pid);
        return DX_ENOMEM;
    }
    if (dx__deliver(pid, m) != DX_OK) {
        /* As in Erlang: linking to a dead process is an exit signal
         * `noproc` to the caller, acted on at once. */
        link_remove(&p->links, pid);
        signal_to(p->pid, DX__SIG_EXIT, pid, DX_NOREF, 0, dx__a_noproc);
        dx__drain(p);
        return DX_ENOPROC;
    }
    dx__tick(p);
    return DX_OK;
}

int dx_unlink(dx_pid pid)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL)
        return DX_ENOTPROC;
    if (link_remove(&p->links, pid))
        signal_to(pid, DX__SIG_UNLINK, p->pid, DX_NOREF, 0, NULL);
    return DX_OK;
}

bool dx_trap_exit(bool on)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL)
        return false;
    bool old = __atomic_load_n(&p->trap_exit, __ATOMIC_RELAXED);
    __atomic_store_n(&p->trap_exit, (uint8_t)on, __ATOMIC_RELAXED);
    return old;
}

int dx_monitor(dx_pid pid, dx_ref *ref_out)
{
    dx__proc *p = dx__self_proc();
    if (ref_out)
        *ref_out = DX_NOREF;
    if (p == NULL)
        return DX_ENOTPROC;
    dx_ref ref = dx_make_ref();
    int rc = mon_add(&p->monitors, ref, pid);
    if (rc != DX_OK)
        return rc;
    dx_msg *m = dx__signal_new(DX__SIG_MONITOR, p->pid, ref, 0, NULL);
    if (m == NULL) {
        mon_remove(&p->monitors, ref, NULL);
        return DX_ENOMEM;
    }
    if (deliver(pid, m, true) != DX_OK)
        signal_to(p->pid, DX__SIG_DOWN, pid, ref, 0, dx__a_noproc);
    if (ref_out)
        *ref_out = ref;
    dx__tick(p);
    return DX_OK;
}

int dx_demonitor(dx_ref ref, bool flush)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL)
        return DX_ENOTPROC;
    dx_pid target;
    bool active = mon_remove(&p->monitors, ref, &target);
    if (active)
        signal_to(target, DX__SIG_DEMONITOR, p->pid, ref, 0, NULL);
    if (flush) {
        dx__drain(p); /* DOWNs still in the mailbox are dropped by drain */
        dx_msg *prev = NULL;
        for (dx_msg *m = p->q_first; m != NULL; m = msg_next(m)) {
            if (m->tag == DX_TAG_DOWN && m->ref.id == ref.id) {
                q_unlink(p, prev, m);
                dx_msg_free(m);
                break;
            }
            prev = m;
        }
    }
    return active ? DX_OK : DX_ENOENT;
}

dx_ref dx_make_ref(void)
{
    dx__sched *s = dx__tls_sched;
    if (s != NULL)
        return (dx_ref){(++s->ref_counter << 10) | (uint64_t)(s->index + 1)};
    return (dx_ref){(atomic_fetch_add(&dx__rt.ext_ref_counter, 1) + 1) << 10};
}

/* ------------------------------------------------------------------ */
/* Exit and reclamation                                                */
/* ------------------------------------------------------------------ */

/* Signals still queued for a process that ended. `late` is false while the
 * process is being finished (they arrived before its end: links and
 * monitors still count and get the real reason) and true at reclamation
 * (they arrived after: the answer is noproc). */
static void drain_dead(dx__proc *p, bool late)
{
    struct dx__node *n;
    while ((n = dx__mpsc_pop(&p->mailbox)) != NULL) {
        dx_msg *m = msg_of(n);
        if (m->dx__signal == DX__SIG_LINK) {
            if (late || link_add(&p->links, m->from) != DX_OK)
                signal_to(m->from, DX__SIG_EXIT, p->pid, DX_NOREF,
                          DX__EXIT_LINK, dx__a_noproc);
        } else if (m->dx__signal == DX__SIG_MONITOR) {
            if (late || mon_add(&p->monitored_by, m->ref, m->from) != DX_OK)
                signal_to(m->from, DX__SIG_DOWN, p->pid, m->ref, 0,
                          dx__a_noproc);
        } else if (m->dx__signal == DX__SIG_UNLINK) {
            link_remove(&p->links, m->from);
        } else if (m->dx__signal == DX__SIG_DEMONITOR) {
            mon_remove(&p->monitored_by, m->ref, NULL);
        }
        dx_msg_free(m);
    }
}

static void palloc_free_all(dx__proc *p);

void dx__proc_finish(dx__sched *s, dx__proc *p)
{
    atomic_store(&p->state, DX__EXITING);
    /* Free what the process owned before anyone can learn of its end (a
     * DOWN, an EXIT, or a lookup failing with noproc once the pid is
     * unpublished below): whoever hears of it may rely on that. */
    dx__free_msg_list(p->q_first);
    p->q_first = p->q_last = NULL;
    while (p->held != NULL)
        dx_msg_free(p->held); /* received, never freed: the crash case */
    palloc_free_all(p);
    dx__proc_stack_free(p);
    if (p->arg_free != NULL)
        p->arg_free(p->arg);
    p->arg_free = NULL;
    /* Uncounted before anyone is told, for the same reason. */
    if (!p->hidden)
        atomic_fetch_sub(&dx__rt.live, 1);
    bool last = atomic_fetch_sub(&dx__rt.live_all, 1) == 1;

    dx__registry_drop(p);
    dx__pid_release(p);
    if (p->tmo.heap_idx != NO_IDX)
        dx__timer_remove(&s->timers, &p->tmo);
    dx__kill_deadline_cancel(p);
    drain_dead(p, false);

    dx_term *reason = p->exit_reason ? p->exit_reason : dx__a_normal;
    p->exit_reason = NULL;
    /* Links see `killed` for a process that died of `kill`, as in Erlang. */
    dx_term *link_reason = reason == dx__a_kill ? dx__a_killed : reason;
    for (uint32_t i = 0; i < p->links.len; i++)
        signal_to(p->links.pids[i], DX__SIG_EXIT, p->pid, DX_NOREF,
                  DX__EXIT_LINK, dx_term_copy(link_reason));
    for (uint32_t i = 0; i < p->monitored_by.len; i++)
        signal_to(p->monitored_by.items[i].pid, DX__SIG_DOWN, p->pid,
                  p->monitored_by.items[i].ref, 0, dx_term_copy(reason));
    for (uint32_t i = 0; i < p->monitors.len; i++)
        signal_to(p->monitors.items[i].pid, DX__SIG_DEMONITOR, p->pid,
                  p->monitors.items[i].ref, 0, NULL);
    dx_term_free(reason);

    link_set_clear(&p->links);
    mon_set_clear(&p->monitors);
    mon_set_clear(&p->monitored_by);
    if (last && atomic_load(&dx__rt.stopping)) {
        pthread_mutex_lock(&dx__rt.live_mu);
        pthread_cond_broadcast(&dx__rt.live_cv);
        pthread_mutex_unlock(&dx__rt.live_mu);
    }

    dx__retire(s, p);
}

void dx__proc_reclaim(dx__proc *p)
{
    drain_dead(p, true);
    dx__proc_block_free(p);
}

/* ------------------------------------------------------------------ */
/* Process-owned memory                                                */
/* ------------------------------------------------------------------ */

void *dx_palloc(size_t size)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL || size > SIZE_MAX - sizeof(dx__palloc_hdr))
        return NULL;
    dx__palloc_hdr *h = dx_malloc(sizeof *h + size);
    if (h == NULL)
        return NULL;
    h->size = size;
    h->on_exit = NULL;
    h->prev = NULL;
    h->next = p->palloc;
    if (p->palloc)
        p->palloc->prev = h;
    p->palloc = h;
    atomic_fetch_add_explicit(&p->mem_bytes, size, memory_order_relaxed);
    return h + 1;
}

void *dx_pcalloc(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    void *ptr = dx_palloc(n * size);
    if (ptr)
        memset(ptr, 0, n * size);
    return ptr;
}

void dx_pfree(void *ptr)
{
    dx__proc *p = dx__self_proc();
    if (ptr == NULL || p == NULL)
        return;
    dx__palloc_hdr *h = (dx__palloc_hdr *)ptr - 1;
    if (h->prev)
        h->prev->next = h->next;
    else
        p->palloc = h->next;
    if (h->next)
        h->next->prev = h->prev;
    atomic_fetch_sub_explicit(&p->mem_bytes, h->size, memory_order_relaxed);
    dx_free(h);
}

void *dx_prealloc(void *ptr, size_t size)
{
    dx__proc *p = dx__self_proc();
    if (ptr == NULL)
        return dx_palloc(size);
    if (p == NULL || size > SIZE_MAX - sizeof(dx__palloc_hdr))
        return NULL;
    dx__palloc_hdr *h = (dx__palloc_hdr *)ptr - 1;
    size_t old = h->size;
    dx__palloc_hdr *n = dx_realloc(h, sizeof *n + size);
    if (n == NULL)
        return NULL;
    n->size = size;
    if (n->prev)
        n->prev->next = n;
    else
        p->palloc = n;
    if (n->next)
        n->next->prev = n;
    atomic_fetch_add_explicit(&p->mem_bytes, size - old, memory_order_relaxed);
    return n + 1;
}

static void palloc_free_all(dx__proc *p)
{
    dx__palloc_hdr *h = p->palloc;
    while (h) {
        dx__palloc_hdr *next = h->next;
        if (h->on_exit)
            h->on_exit(h + 1);
        dx_free(h);
        h = next;
    }
    p->palloc = NULL;
}

/* A tie is a dx_palloc block holding the object and its free function;
 * the block's on_exit frees the object when the process ends holding it. */
struct dx_ptie {
    void *obj;
    void (*free_fn)(void *obj);
};

static void tie_release(void *payload)
{
    struct dx_ptie *t = payload;
    t->free_fn(t->obj);
}

dx_ptie *dx_ptie_new(void *obj, void (*free_fn)(void *obj))
{
    if (obj == NULL || free_fn == NULL)
        return NULL;
    struct dx_ptie *t = dx_palloc(sizeof *t);
    if (t == NULL)
        return NULL;
    t->obj = obj;
    t->free_fn = free_fn;
    ((dx__palloc_hdr *)t - 1)->on_exit = tie_release;
    return t;
}

void dx_ptie_cut(dx_ptie *tie)
{
    dx_pfree(tie); /* without running on_exit: the caller has obj back */
}

/* ------------------------------------------------------------------ */
/* Assertions                                                          */
/* ------------------------------------------------------------------ */

void dx__assert_fail(const char *file, int line, const char *expr)
{
    char text[512];
    snprintf(text, sizeof text, "%s:%d: %s", file, line, expr);
    dx__proc *p = dx__self_proc();
    if (p == NULL) {
        fprintf(stderr, "dspex: assertion failed: %s\n", text);
        abort();
    }
    dx__die(p, dx_tuple(2, dx_atom("assert_failed"), dx_str(text)));
}

/* ------------------------------------------------------------------ */
/* Introspection                                                       */
/* ------------------------------------------------------------------ */

const char *dx_proc_status_name(dx_proc_status s)
{
    switch (s) {
    case DX_PROC_RUNNABLE:
        return "runnable";
    case DX_PROC_RUNNING:
        return "running";
    case DX_PROC_WAITING:
        return "waiting";
    case DX_PROC_EXITING:
        return "exiting";
    }
    return "unknown";
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

static void fill_info(dx__proc *p, dx_proc_info *o)
{
    memset(o, 0, sizeof *o);
    o->pid = p->pid;
    switch (atomic_load(&p->state)) {
    case DX__RUNNABLE:
        o->status = DX_PROC_RUNNABLE;
        break;
    case DX__RUNNING:
        o->status = DX_PROC_RUNNING;
        break;
    case DX__WAITING:
        o->status = DX_PROC_WAITING;
        break;
    default:
        o->status = DX_PROC_EXITING;
        break;
    }
    uint64_t sent = atomic_load_explicit(&p->sent, memory_order_relaxed);
    uint64_t taken = atomic_load_explicit(&p->taken, memory_order_relaxed);
    o->mailbox_len = (size_t)(sent - taken) +
                     atomic_load_explicit(&p->q_len, memory_order_relaxed);
    o->memory_bytes = atomic_load_explicit(&p->mem_bytes, memory_order_relaxed);
    o->messages_handled =
        atomic_load_explicit(&p->handled, memory_order_relaxed);
    o->reductions = atomic_load_explicit(&p->reductions, memory_order_relaxed);
    o->links = __atomic_load_n(&p->links.len, __ATOMIC_RELAXED);
    o->monitors = __atomic_load_n(&p->monitors.len, __ATOMIC_RELAXED);
    o->trap_exit = __atomic_load_n(&p->trap_exit, __ATOMIC_RELAXED);
    dx__registry_lock();
    /* Stealing moves a process that has not run yet to another
     * scheduler (sched.c), hence the atomic read. */
    struct dx__sched *home = __atomic_load_n(&p->home, __ATOMIC_RELAXED);
    o->scheduler = home ? home->index : 0;
    copy_str(o->name, sizeof o->name, p->name);
    if (p->label) {
        copy_str(o->label, sizeof o->label, p->label);
    } else {
        Dl_info di;
        if (dladdr((void *)(uintptr_t)p->fn, &di) && di.dli_sname)
            copy_str(o->label, sizeof o->label, di.dli_sname);
        else
            snprintf(o->label, sizeof o->label, "%p", (void *)(uintptr_t)p->fn);
    }
    dx__registry_unlock();
}

int dx_process_info(dx_pid pid, dx_proc_info *out)
{
    if (out == NULL)
        return DX_EINVAL;
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK)
        return rc;
    dx__proc *p = dx__lookup(pid);
    if (p == NULL) {
        dx__ext_leave(entered);
        return DX_ENOPROC;
    }
    fill_info(p, out);
    dx__ext_leave(entered);
    return DX_OK;
}

int dx_process_list(dx_proc_info **out, size_t *count)
{
    if (out == NULL || count == NULL)
        return DX_EINVAL;
    *out = NULL;
    *count = 0;
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK)
        return rc;
    uint32_t n = dx__pid_table_size();
    size_t cap = atomic_load(&dx__rt.live) + 16, len = 0;
    dx_proc_info *arr = dx_malloc(sizeof *arr * cap);
    for (uint32_t i = 1; arr != NULL && i < n; i++) {
        dx__proc *p = dx__slot_proc(i);
        if (p == NULL || p->hidden)
            continue;
        if (len == cap) {
            cap *= 2;
            dx_proc_info *na = dx_realloc(arr, sizeof *arr * cap);
            if (na == NULL) {
                dx_free(arr);
                arr = NULL;
                break;
            }
            arr = na;
        }
        fill_info(p, &arr[len++]);
    }
    dx__ext_leave(entered);
    if (arr == NULL)
        return DX_ENOMEM;
    *out = arr;
    *count = len;
    return DX_OK;
}

size_t dx_process_count(void)
{
    return atomic_load(&dx__rt.live);
}

void dx_set_label(const char *label)
{
    dx__proc *p = dx__self_proc();
    if (p == NULL)
        return;
    char *copy = label ? dx_strdup(label) : NULL;
    dx__registry_lock();
    dx_free(p->label);
    p->label = copy;
    dx__registry_unlock();
}

/* ------------------------------------------------------------------ */
/* Host-thread helpers: dx_wait_exit, dx_run                           */
/* ------------------------------------------------------------------ */

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int rc;
    dx_term *reason;
    dx_pid target;
    dx_proc_fn main_fn; /* dx_run: spawn this monitored, then wait for it */
    void *main_arg;
    _Atomic int refs;
} waiter;

static void waiter_release(waiter *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1)
        return;
    dx_term_free(w->reason);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    dx_free(w);
}

static void waiter_finish(waiter *w, int rc, dx_term *reason)
{
    pthread_mutex_lock(&w->mu);
    if (!w->done) {
        w->done = 1;
        w->rc = rc;
        w->reason = reason;
        reason = NULL;
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    dx_term_free(reason);
}

static void waiter_main(void *arg)
{
    waiter *w = arg;
    dx_ref ref;
    int rc = w->main_fn != NULL
                 ? dx_spawn_monitor(w->main_fn, w->main_arg, &w->target, &ref)
                 : dx_monitor(w->target, &ref);
    if (rc != DX_OK) {
        waiter_finish(w, rc, NULL);
        return;
    }
    dx_match mt = {
        .fields = DX_MATCH_REF | DX_MATCH_TAG, .tag = DX_TAG_DOWN, .ref = ref};
    dx_msg *m;
    if (dx_receive(&mt, DX_INFINITY, &m) != DX_OK)
        return;
    dx_term *reason = dx_msg_take_term(m);
    dx_msg_free(m);
    waiter_finish(w, reason == dx__a_noproc ? DX_ENOPROC : DX_OK, reason);
}

static void waiter_arg_free(void *arg)
{
    waiter *w = arg;
    waiter_finish(w, DX_ESTATE, NULL); /* no-op if it already finished */
    waiter_release(w);
}

/* Wait on a host thread for pid to exit, or (main_fn set) for a process
 * spawned for the purpose; spawning from the waiter means its monitor
 * exists before the process can run, so a quick exit is not "noproc". */
static int wait_exit(dx_pid pid, dx_proc_fn main_fn, void *main_arg,
                     int64_t timeout_ms, dx_term **reason)
{
    if (reason)
        *reason = NULL;
    if (dx__tls_sched != NULL)
        return DX_ESTATE; /* processes use dx_monitor instead */
    waiter *w = dx_calloc(1, sizeof *w);
    if (w == NULL)
        return DX_ENOMEM;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->target = pid;
    w->main_fn = main_fn;
    w->main_arg = main_arg;
    atomic_store(&w->refs, 2);
    dx_spawn_opts o = {.arg_free = waiter_arg_free, .label = "dx_wait_exit"};
    dx_pid wpid;
    int rc = dx__spawn(waiter_main, w, &o, true, &wpid, NULL);
    if (rc != DX_OK) {
        atomic_store(&w->refs, 1);
        waiter_release(w);
        return rc;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (timeout_ms >= 0) {
        int64_t ns = ts.tv_nsec + (timeout_ms % 1000) * 1000000;
        ts.tv_sec += (time_t)(timeout_ms / 1000 + ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
    }
    pthread_mutex_lock(&w->mu);
    while (!w->done) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&w->cv, &w->mu);
        } else if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0) {
            break;
        }
    }
    int done = w->done;
    rc = done ? w->rc : DX_ETIMEDOUT;
    if (done && reason) {
        *reason = w->reason;
        w->reason = NULL;
    }
    pthread_mutex_unlock(&w->mu);
    if (!done)
        dx_kill(wpid);
    waiter_release(w);
    return rc;
}

int dx_wait_exit(dx_pid pid, int64_t timeout_ms, dx_term **reason)
{
    return wait_exit(pid, NULL, NULL, timeout_ms, reason);
}

int dx_run(const dx_runtime_opts *opts, dx_proc_fn main_fn, void *arg,
           dx_term **exit_reason)
{
    if (exit_reason)
        *exit_reason = NULL;
    if (main_fn == NULL)
        return DX_EINVAL;
    int rc = dx_runtime_start(opts);
    if (rc != DX_OK)
        return rc;
    rc = wait_exit(DX_NOPID, main_fn, arg, DX_INFINITY, exit_reason);
    int src = dx_runtime_stop();
    return rc != DX_OK ? rc : src;
}
