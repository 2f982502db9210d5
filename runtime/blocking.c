/*
 * blocking.c — the blocking threads (include/dspex/blocking.h): a FIFO of
 * calls under one mutex, the threads that run them (started as calls find
 * none idle, up to DX_BLOCKING_MAX_THREADS, joined by dx_runtime_stop),
 * and the hand-over of each result to the process that waits for it.
 *
 * A call is shared by its caller and the thread that runs it (two
 * references). Who gets the result is settled by one compare-and-swap on
 * its state: the thread moves WAITING to DELIVERED and sends the result to
 * the caller (a message matched by a reference of the call's own); a
 * caller that stops waiting (its timeout, or its end: a tie on its
 * process) moves WAITING to ABANDONED, and the thread then frees the
 * result itself. A caller that loses that race knows the message is sent
 * or on its way, and takes it. A call abandoned before a thread took it
 * does not run.
 *
 * Each thread guards the functions it runs (fault.c): a fault in one jumps
 * back here, and the caller, if it still waits, gets the fault's reason
 * instead of a result and ends with it, as it would have had the function
 * faulted in the process itself. The thread goes on with the next call.
 */
#include "dspex/blocking.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/log.h"
#include "dspex/runtime.h"
#include "dx_internal.h"

/* The result's message. The caller matches it by the call's reference,
 * which no other message carries; the tag only names it in traces. */
#define TAG_BLOCKING_DONE 0x44584244 /* "DXBD" */

enum { WAITING, DELIVERED, ABANDONED };

typedef struct call {
    struct call *next;
    dx_blocking_fn fn;
    void *arg;
    void (*arg_free)(void *arg);
    void (*result_free)(void *result);
    dx_pid waiter;
    dx_ref ref;
    dx_msg *done; /* the result's message, made by the caller */
    _Atomic int state;
    atomic_int refs;
} call;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t work; /* a call was queued, or the pool stops */
    call *head, *tail;
    pthread_t threads[DX_BLOCKING_MAX_THREADS];
    int n_threads, idle;
    bool stopping;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER};

static void call_unref(call *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        dx_msg_free(c->done); /* not sent: nobody took the result */
        dx_free(c);
    }
}

/* The caller's process ended while it waited (a tie's free function: on
 * a scheduler thread, outside any process). */
static void caller_gone(void *obj)
{
    call *c = obj;
    int expect = WAITING;
    atomic_compare_exchange_strong(&c->state, &expect, ABANDONED);
    call_unref(c);
}

/* fn(arg) under the thread's guard: false when it faulted (nothing is
 * kept across the jump but what g holds). */
static bool run_guarded(dx__fault_guard *g, const call *c, void **result)
{
    if (sigsetjmp(g->jmp, 1) != 0)
        return false;
    g->armed = 1;
    *result = c->fn(c->arg);
    g->armed = 0;
    return true;
}

static void run_call(dx__fault_guard *g, call *c)
{
    void *result = NULL;
    dx_term *fault = NULL;
    bool ran = atomic_load(&c->state) == WAITING;
    if (ran && !run_guarded(g, c, &result)) {
        fault = dx__fault_guard_reason(g);
        char what[96] = "fault";
        if (fault)
            dx_term_format(fault, what, sizeof what);
        dx_logf(DX_LOG_ERROR,
                "dx_run_blocking: the function at %p faulted (%s); its "
                "caller ends with that reason, the thread goes on",
                (void *)(uintptr_t)c->fn, what);
        result = NULL;
    }
    if (c->arg_free && c->arg)
        c->arg_free(c->arg);
    int expect = WAITING;
    if (ran && atomic_compare_exchange_strong(&c->state, &expect, DELIVERED)) {
        dx_msg *m = c->done;
        c->done = NULL;
        m->ptr = result;
        m->ptr_free = c->result_free;
        m->term = fault;       /* a fault: the caller ends with it */
        dx_send(c->waiter, m); /* freed by the runtime if it is gone */
    } else {
        if (ran && c->result_free && result)
            c->result_free(result);
        dx_term_free(fault);
    }
    call_unref(c);
}

static void *blocking_thread(void *unused)
{
    (void)unused;
    pthread_setname_np(pthread_self(), "dx-blocking");
    dx__fault_guard guard;
    dx__fault_guard_init(&guard);
    pthread_mutex_lock(&pool.mu);
    for (;;) {
        while (!pool.head && !pool.stopping) {
            pool.idle++;
            pthread_cond_wait(&pool.work, &pool.mu);
            pool.idle--;
        }
        call *c = pool.head;
        if (!c)
            break; /* stopping, and nothing left */
        pool.head = c->next;
        if (!pool.head)
            pool.tail = NULL;
        pthread_mutex_unlock(&pool.mu);
        run_call(&guard, c);
        pthread_mutex_lock(&pool.mu);
    }
    pthread_mutex_unlock(&pool.mu);
    dx__fault_guard_fini(&guard);
    return NULL;
}

/* Queue c, starting a thread when none is idle. DX_ESTATE when the pool
 * is stopping; DX_ENOMEM when no thread runs and none can start. */
static int enqueue(call *c)
{
    pthread_mutex_lock(&pool.mu);
    if (pool.stopping) {
        pthread_mutex_unlock(&pool.mu);
        return DX_ESTATE;
    }
    /* Idle threads each take one of the calls queued; start one more
     * when the queue is about to hold more calls than there are. */
    int queued = 1;
    for (const call *q = pool.head; q && queued <= pool.idle; q = q->next)
        queued++;
    if (queued > pool.idle && pool.n_threads < DX_BLOCKING_MAX_THREADS) {
        /* Guard pages as deep as a process stack's, so that a runaway
         * recursion in fn faults in them (and is told an overflow) rather
         * than reach past one page into another mapping. */
        pthread_attr_t attr;
        bool attr_ok = pthread_attr_init(&attr) == 0;
        if (attr_ok)
            pthread_attr_setguardsize(&attr, 64 * 1024);
        pthread_t t;
        int made =
            pthread_create(&t, attr_ok ? &attr : NULL, blocking_thread, NULL);
        if (attr_ok)
            pthread_attr_destroy(&attr);
        if (made == 0)
            pool.threads[pool.n_threads++] = t;
        else if (pool.n_threads == 0) {
            pthread_mutex_unlock(&pool.mu);
            return DX_ENOMEM;
        }
    }
    if (pool.tail)
        pool.tail->next = c;
    else
        pool.head = c;
    pool.tail = c;
    pthread_cond_signal(&pool.work);
    pthread_mutex_unlock(&pool.mu);
    return DX_OK;
}

int dx_run_blocking(dx_blocking_fn fn, void *arg, void (*arg_free)(void *arg),
                    void (*result_free)(void *result), int64_t timeout_ms,
                    void **result_out)
{
    int rc = DX_OK;
    if (result_out)
        *result_out = NULL;
    if (!fn || !result_out)
        rc = DX_EINVAL;
    else if (dx_pid_is_none(dx_self()))
        rc = DX_ENOTPROC;
    call *c = rc == DX_OK ? dx_calloc(1, sizeof *c) : NULL;
    /* Made here, so that handing the result over cannot fail. */
    dx_msg *done_msg = c ? dx_msg_new(TAG_BLOCKING_DONE) : NULL;
    if (rc == DX_OK && !done_msg)
        rc = DX_ENOMEM;
    if (rc != DX_OK) {
        dx_free(c);
        if (arg_free && arg)
            arg_free(arg);
        return rc;
    }
    *c = (call){.fn = fn,
                .arg = arg,
                .arg_free = arg_free,
                .result_free = result_free,
                .waiter = dx_self(),
                .ref = dx_make_ref(),
                .done = done_msg};
    done_msg->ref = c->ref;
    atomic_init(&c->state, WAITING);
    atomic_init(&c->refs, 2);
    /* Killed while it waits, the caller leaves the result to the thread. */
    dx_ptie *tie = dx_ptie_new(c, caller_gone);
    if (!tie || (rc = enqueue(c)) != DX_OK) {
        dx_ptie_cut(tie);
        if (arg_free && arg)
            arg_free(arg);
        dx_msg_free(c->done);
        dx_free(c);
        return tie ? rc : DX_ENOMEM;
    }
    dx_match done = {.fields = DX_MATCH_TAG | DX_MATCH_REF,
                     .tag = TAG_BLOCKING_DONE,
                     .ref = c->ref};
    dx_msg *m = NULL;
    rc = dx_receive(&done, timeout_ms, &m);
    if (rc != DX_OK) {
        int expect = WAITING;
        if (atomic_compare_exchange_strong(&c->state, &expect, ABANDONED)) {
            dx_ptie_cut(tie);
            call_unref(c);
            return DX_ETIMEDOUT;
        }
        /* The thread delivered first: its message is sent, or about to be. */
        rc = dx_receive(&done, DX_INFINITY, &m);
    }
    dx_ptie_cut(tie);
    call_unref(c);
    if (rc != DX_OK)
        return rc;
    if (m->term) { /* fn faulted: so does its caller */
        dx_term *reason = m->term;
        m->term = NULL;
        dx_msg_free(m);
        dx_exit_self(reason);
    }
    *result_out = m->ptr;
    m->ptr = NULL; /* the caller's now */
    dx_msg_free(m);
    return DX_OK;
}

void dx__blocking_stop(void)
{
    pthread_mutex_lock(&pool.mu);
    pool.stopping = true;
    pthread_cond_broadcast(&pool.work);
    int n = pool.n_threads;
    pthread_mutex_unlock(&pool.mu);
    /* Threads are added only while not stopping: these are all of them. */
    for (int i = 0; i < n; i++)
        pthread_join(pool.threads[i], NULL);
    pthread_mutex_lock(&pool.mu);
    pool.n_threads = 0;
    pool.stopping = false;
    pthread_mutex_unlock(&pool.mu);
}
