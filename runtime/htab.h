/*
 * htab.h — an intrusive hash table keyed by uint64 (internal to dspex).
 *
 * The caller embeds a dx__hnode in its own struct, sets its key and owns
 * that struct; the table owns only its bucket array (dx__htab_free). Keys
 * need not be unique: dx__htab_find gives the first node with a key and
 * dx__htab_find_next the ones after it. Chained, power-of-two buckets,
 * doubled when there are as many nodes as buckets; a doubling that cannot
 * allocate leaves longer chains rather than failing. Not thread-safe: one
 * owner (a process, a loop thread) uses a table.
 */
#ifndef DX_HTAB_H
#define DX_HTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dx__hnode {
    struct dx__hnode *next;
    uint64_t key;
} dx__hnode;

typedef struct dx__htab {
    dx__hnode **b;
    size_t nb; /* power of two, or 0 before the first insertion */
    size_t n;
} dx__htab;

/* The struct of type `type` whose `member` is the node n (NULL for NULL). */
#define DX__HTAB_ENTRY(n, type, member)                                        \
    ((n) ? (type *)(void *)((char *)(n)-offsetof(type, member)) : NULL)

/* The first node with key, or NULL. */
dx__hnode *dx__htab_find(const dx__htab *t, uint64_t key);
/* The next node after n with n's key, or NULL. */
dx__hnode *dx__htab_find_next(const dx__hnode *n);
/* Insert n (its key set). false only when the table has no buckets and
 * none could be allocated; n is not in the table then. */
bool dx__htab_put(dx__htab *t, dx__hnode *n);
/* Remove n, which must be in t. */
void dx__htab_del(dx__htab *t, dx__hnode *n);
/* Some node of t, or NULL when it is empty (to drain a table). */
dx__hnode *dx__htab_any(const dx__htab *t);
/* Free the bucket array (the nodes are the caller's) and empty t. */
void dx__htab_free(dx__htab *t);

#endif
