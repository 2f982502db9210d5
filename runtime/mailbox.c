/*
 * mailbox.c — the intrusive multi-producer single-consumer queue behind
 * every mailbox and every scheduler's wake-up queue.
 *
 * Producers never lock: a push is one atomic exchange of the head plus a
 * release store of the link. The consumer walks from the tail. Between those
 * two producer steps the queue is briefly "torn": pop() then returns NULL
 * although nonempty() is true, and the consumer simply tries again later
 * (the producer finishes within a few instructions). A stub node keeps the
 * queue non-empty in structure so push never needs a branch.
 */
#include "dx_internal.h"

static inline struct dx__node *load_next(struct dx__node *n)
{
    return __atomic_load_n(&n->next, __ATOMIC_ACQUIRE);
}

void dx__mpsc_init(dx__mpsc *q)
{
    q->stub.next = NULL;
    atomic_store_explicit(&q->head, &q->stub, memory_order_relaxed);
    q->tail = &q->stub;
}

void dx__mpsc_push(dx__mpsc *q, struct dx__node *n)
{
    __atomic_store_n(&n->next, NULL, __ATOMIC_RELAXED);
    /* seq_cst: a sender's later read of the receiver's state must not be
     * ordered before this exchange (the lost-wake-up argument in
     * docs/internals/runtime.md depends on it). */
    struct dx__node *prev = atomic_exchange(&q->head, n);
    __atomic_store_n(&prev->next, n, __ATOMIC_RELEASE);
}

struct dx__node *dx__mpsc_pop(dx__mpsc *q)
{
    struct dx__node *tail = q->tail;
    struct dx__node *next = load_next(tail);
    if (tail == &q->stub) {
        if (next == NULL)
            return NULL;
        q->tail = next;
        tail = next;
        next = load_next(next);
    }
    if (next != NULL) {
        q->tail = next;
        return tail;
    }
    if (tail != atomic_load_explicit(&q->head, memory_order_acquire))
        return NULL; /* a producer is between its two steps */
    dx__mpsc_push(q, &q->stub);
    next = load_next(tail);
    if (next != NULL) {
        q->tail = next;
        return tail;
    }
    return NULL;
}

int dx__mpsc_nonempty(dx__mpsc *q)
{
    if (q->tail != &q->stub)
        return 1;
    return atomic_load(&q->head) != &q->stub;
}
