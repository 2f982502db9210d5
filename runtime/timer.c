/*
 * timer.c — receive timeouts and dx_send_after.
 *
 * Every scheduler has a binary min-heap of timers ordered by deadline. A
 * process's receive timeout is embedded in its control block and lives in
 * its home scheduler's heap. dx_send_after timers are allocated and also
 * recorded in one runtime-wide table keyed by their reference, so any
 * thread can cancel one. Lock order: the table lock, then a heap lock.
 */
#include "dx_internal.h"

#define NO_IDX UINT32_MAX
#define BUCKETS 1024

/* A dx_send_after timer: the heap entry plus what it delivers. */
typedef struct send_timer {
    dx__timer base;
    dx_ref ref;
    dx_pid to;
    dx_msg *msg;
    dx__sched *sched;
    struct send_timer *map_next;
} send_timer;

static pthread_mutex_t table_mu = PTHREAD_MUTEX_INITIALIZER;
static send_timer *table[BUCKETS];

void dx__timer_heap_init(dx__timer_heap *h)
{
    pthread_mutex_init(&h->mu, NULL);
    h->items = NULL;
    h->len = h->cap = 0;
}

void dx__timer_heap_destroy(dx__timer_heap *h)
{
    dx_free(h->items);
    h->items = NULL;
    h->len = h->cap = 0;
    pthread_mutex_destroy(&h->mu);
}

static void heap_set(dx__timer_heap *h, uint32_t i, dx__timer *t)
{
    h->items[i] = t;
    t->heap_idx = i;
}

static void sift_up(dx__timer_heap *h, uint32_t i)
{
    dx__timer *t = h->items[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (h->items[parent]->deadline_ns <= t->deadline_ns)
            break;
        heap_set(h, i, h->items[parent]);
        i = parent;
    }
    heap_set(h, i, t);
}

static void sift_down(dx__timer_heap *h, uint32_t i)
{
    dx__timer *t = h->items[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->len)
            break;
        if (c + 1 < h->len &&
            h->items[c + 1]->deadline_ns < h->items[c]->deadline_ns)
            c++;
        if (h->items[c]->deadline_ns >= t->deadline_ns)
            break;
        heap_set(h, i, h->items[c]);
        i = c;
    }
    heap_set(h, i, t);
}

static void heap_remove_at(dx__timer_heap *h, uint32_t i)
{
    dx__timer *t = h->items[i];
    t->heap_idx = NO_IDX;
    h->len--;
    atomic_store_explicit(&h->count, h->len, memory_order_relaxed);
    if (i == h->len)
        return;
    heap_set(h, i, h->items[h->len]);
    sift_down(h, i);
    sift_up(h, h->items[i]->heap_idx);
}

int dx__timer_add(dx__timer_heap *h, dx__timer *t)
{
    pthread_mutex_lock(&h->mu);
    if (h->len == h->cap) {
        uint32_t ncap = h->cap ? h->cap * 2 : 64;
        dx__timer **n = dx_realloc(h->items, sizeof(*n) * ncap);
        if (n == NULL) {
            pthread_mutex_unlock(&h->mu);
            return DX_ENOMEM;
        }
        h->items = n;
        h->cap = ncap;
    }
    h->items[h->len] = t;
    t->heap_idx = h->len++;
    atomic_store_explicit(&h->count, h->len, memory_order_relaxed);
    sift_up(h, t->heap_idx);
    pthread_mutex_unlock(&h->mu);
    return DX_OK;
}

void dx__timer_remove(dx__timer_heap *h, dx__timer *t)
{
    pthread_mutex_lock(&h->mu);
    if (t->heap_idx != NO_IDX)
        heap_remove_at(h, t->heap_idx);
    pthread_mutex_unlock(&h->mu);
}

static uint32_t bucket(dx_ref r)
{
    return (uint32_t)(r.id * 0x9E3779B97F4A7C15ull >> 54) % BUCKETS;
}

/* Unlink t from the cancel table; table_mu held. */
static bool table_unlink(send_timer *t)
{
    send_timer **pp = &table[bucket(t->ref)];
    while (*pp && *pp != t)
        pp = &(*pp)->map_next;
    if (*pp == NULL)
        return false;
    *pp = t->map_next;
    return true;
}

int64_t dx__timers_run(dx__sched *s)
{
    dx__timer_heap *h = &s->timers;
    /* Unlocked peek: a timer added concurrently notifies this scheduler. */
    if (atomic_load_explicit(&h->count, memory_order_relaxed) == 0)
        return INT64_MAX;
    int64_t now = dx__now_ns();
    for (;;) {
        pthread_mutex_lock(&h->mu);
        if (h->len == 0) {
            pthread_mutex_unlock(&h->mu);
            return INT64_MAX;
        }
        dx__timer *t = h->items[0];
        if (t->deadline_ns > now) {
            int64_t next = t->deadline_ns;
            pthread_mutex_unlock(&h->mu);
            return next;
        }
        heap_remove_at(h, 0);
        pthread_mutex_unlock(&h->mu);
        if (t->kind == DX__TIMER_RECV) {
            /* The process lives on this scheduler, so its fields are ours
             * to read here. */
            dx__proc *p = dx__container_of(t, dx__proc, tmo);
            if (p->tmo_want == 0)
                continue; /* that receive ended long ago */
            if (p->tmo_want > now) {
                t->deadline_ns = p->tmo_want; /* a later receive's deadline */
                if (dx__timer_add(h, t) == DX_OK)
                    continue;
            }
            p->tmo_fired = 1;
            dx__wake(p);
            continue;
        }
        send_timer *st = dx__container_of(t, send_timer, base);
        pthread_mutex_lock(&table_mu);
        bool cancelled = t->cancelled;
        if (!cancelled)
            table_unlink(st);
        pthread_mutex_unlock(&table_mu);
        if (!cancelled)
            dx__deliver(st->to, st->msg);
        else
            dx_msg_free(st->msg);
        dx_free(st);
    }
}

/* Receive timeouts are disarmed lazily (proc.c): a receive that ended
 * early leaves its entry in the heap, to be dropped or moved to a later
 * receive's deadline when it comes due. For a scheduler about to sleep,
 * coming due means a wake-up for nothing: a process that receives with a
 * timeout and gets its message first (a coordinator waiting for results
 * with a periodic tick) cost its scheduler one, or two with the tick
 * moved on, per message at low load. So before sleeping, the entries at
 * the top that no receive wants at their deadline are dropped or moved
 * now, in place (no allocation). Only this scheduler runs the processes
 * whose timeouts it holds, so their fields are ours to read here. */
int64_t dx__timers_settle(dx__sched *s)
{
    dx__timer_heap *h = &s->timers;
    if (atomic_load_explicit(&h->count, memory_order_relaxed) == 0)
        return INT64_MAX;
    pthread_mutex_lock(&h->mu);
    while (h->len > 0 && h->items[0]->kind == DX__TIMER_RECV) {
        dx__timer *t = h->items[0];
        dx__proc *p = dx__container_of(t, dx__proc, tmo);
        if (p->tmo_want == t->deadline_ns)
            break;
        if (p->tmo_want == 0) {
            heap_remove_at(h, 0);
        } else {
            t->deadline_ns = p->tmo_want; /* later: it sinks */
            sift_down(h, 0);
        }
    }
    int64_t next = h->len ? h->items[0]->deadline_ns : INT64_MAX;
    pthread_mutex_unlock(&h->mu);
    return next;
}

int64_t dx__timers_peek(dx__sched *s)
{
    dx__timer_heap *h = &s->timers;
    pthread_mutex_lock(&h->mu);
    int64_t next = dx__timer_peek_locked(h);
    pthread_mutex_unlock(&h->mu);
    return next;
}

int64_t dx__timer_peek_locked(const dx__timer_heap *h)
{
    return h->len ? h->items[0]->deadline_ns : INT64_MAX;
}

dx__timer *dx__timer_pop_due_locked(dx__timer_heap *h, int64_t now)
{
    if (h->len == 0 || h->items[0]->deadline_ns > now)
        return NULL;
    dx__timer *t = h->items[0];
    heap_remove_at(h, 0);
    return t;
}

int dx_send_after(int64_t ms, dx_pid to, dx_msg *m, dx_ref *tref)
{
    if (tref)
        *tref = DX_NOREF;
    if (m == NULL)
        return DX_EINVAL;
    if (ms < 0 || m->tag < 0) {
        dx_msg_free(m);
        return DX_EINVAL;
    }
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK) {
        dx_msg_free(m);
        return rc;
    }
    send_timer *t = dx_calloc(1, sizeof *t);
    if (t == NULL) {
        dx__ext_leave(entered);
        dx_msg_free(m);
        return DX_ENOMEM;
    }
    dx__proc *self = dx__self_proc();
    dx__msg_unhold(m); /* the timer owns it now */
    m->from = self ? self->pid : DX_NOPID;
    m->kind = DX_MSG_PLAIN;
    t->base.kind = DX__TIMER_SEND;
    t->base.deadline_ns = dx__now_ns() + ms * 1000000;
    t->ref = dx_make_ref();
    t->to = to;
    t->msg = m;
    t->base.heap_idx = NO_IDX;
    t->sched = dx__tls_sched ? dx__tls_sched : &dx__rt.scheds[0];
    dx_ref ref = t->ref;
    dx__sched *sched = t->sched;
    pthread_mutex_lock(&table_mu);
    uint32_t b = bucket(t->ref);
    t->map_next = table[b];
    table[b] = t;
    rc = dx__timer_add(&t->sched->timers, &t->base);
    if (rc != DX_OK)
        table_unlink(t);
    pthread_mutex_unlock(&table_mu);
    if (rc != DX_OK) {
        dx_free(t);
        dx_msg_free(m);
    } else {
        /* t may have fired and been freed already: use the copies. */
        if (tref)
            *tref = ref;
        if (sched != dx__tls_sched)
            dx__sched_notify(sched); /* it may sleep past the new deadline */
    }
    dx__ext_leave(entered);
    return rc;
}

int dx_cancel_timer(dx_ref tref)
{
    int entered;
    int rc = dx__ext_enter(&entered);
    if (rc != DX_OK)
        return rc;
    pthread_mutex_lock(&table_mu);
    send_timer *t = table[bucket(tref)];
    while (t && !dx_ref_eq(t->ref, tref))
        t = t->map_next;
    if (t == NULL) {
        pthread_mutex_unlock(&table_mu);
        dx__ext_leave(entered);
        return DX_ENOENT;
    }
    table_unlink(t);
    dx__timer_heap *h = &t->sched->timers;
    pthread_mutex_lock(&h->mu);
    bool in_heap = t->base.heap_idx != NO_IDX;
    if (in_heap)
        heap_remove_at(h, t->base.heap_idx);
    else
        t->base.cancelled =
            1; /* popped and about to fire: the firer frees it */
    pthread_mutex_unlock(&h->mu);
    pthread_mutex_unlock(&table_mu);
    if (in_heap) {
        dx_msg_free(t->msg);
        dx_free(t);
    }
    dx__ext_leave(entered);
    return DX_OK;
}

/* Runtime stop: free timers that never fired. */
void dx__timers_shutdown(void)
{
    pthread_mutex_lock(&table_mu);
    for (int b = 0; b < BUCKETS; b++) {
        send_timer *t = table[b];
        while (t) {
            send_timer *next = t->map_next;
            dx_msg_free(t->msg);
            dx_free(t);
            t = next;
        }
        table[b] = NULL;
    }
    pthread_mutex_unlock(&table_mu);
}
