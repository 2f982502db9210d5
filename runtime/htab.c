/*
 * htab.c — the intrusive uint64-keyed hash table of htab.h: the HTTP
 * layer's transfers and requesters, the LM client's flights.
 */
#include "htab.h"

#include "dspex/alloc.h"

static size_t bucket_of(size_t nb, uint64_t key)
{
    /* Keys are often counters or pointers-like ids: mix before masking. */
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)(key & (nb - 1));
}

dx__hnode *dx__htab_find(const dx__htab *t, uint64_t key)
{
    if (t->nb == 0)
        return NULL;
    for (dx__hnode *n = t->b[bucket_of(t->nb, key)]; n != NULL; n = n->next)
        if (n->key == key)
            return n;
    return NULL;
}

dx__hnode *dx__htab_find_next(const dx__hnode *n)
{
    for (dx__hnode *m = n->next; m != NULL; m = m->next)
        if (m->key == n->key)
            return m;
    return NULL;
}

static void grow(dx__htab *t)
{
    size_t nb = t->nb ? t->nb * 2 : 64;
    dx__hnode **b = dx_calloc(nb, sizeof *b);
    if (b == NULL)
        return;
    for (size_t i = 0; i < t->nb; i++) {
        dx__hnode *n = t->b[i];
        while (n != NULL) {
            dx__hnode *next = n->next;
            size_t j = bucket_of(nb, n->key);
            n->next = b[j];
            b[j] = n;
            n = next;
        }
    }
    dx_free(t->b);
    t->b = b;
    t->nb = nb;
}

bool dx__htab_put(dx__htab *t, dx__hnode *n)
{
    if (t->n >= t->nb)
        grow(t);
    if (t->nb == 0)
        return false;
    size_t i = bucket_of(t->nb, n->key);
    n->next = t->b[i];
    t->b[i] = n;
    t->n++;
    return true;
}

void dx__htab_del(dx__htab *t, dx__hnode *n)
{
    dx__hnode **p = &t->b[bucket_of(t->nb, n->key)];
    while (*p != n)
        p = &(*p)->next;
    *p = n->next;
    t->n--;
}

dx__hnode *dx__htab_any(const dx__htab *t)
{
    for (size_t i = 0; t->n > 0 && i < t->nb; i++)
        if (t->b[i] != NULL)
            return t->b[i];
    return NULL;
}

void dx__htab_free(dx__htab *t)
{
    dx_free(t->b);
    t->b = NULL;
    t->nb = 0;
    t->n = 0;
}
