/*
 * test_htab.c — the internal intrusive hash table (runtime/htab.h): finding
 * what was put, several nodes under one key, deletion from the middle of a
 * chain, growth past many doublings with every node still found, draining
 * with dx__htab_any, and an empty table answering NULL without buckets.
 */
#include <criterion/criterion.h>
#include <stddef.h>

#include "dspex/alloc.h"
#include "htab.h"

typedef struct item {
    int value;
    dx__hnode node;
} item;

static item *item_of(dx__hnode *n)
{
    return DX__HTAB_ENTRY(n, item, node);
}

Test(htab, an_empty_table_finds_nothing_and_has_no_buckets, .timeout = 10)
{
    dx__htab t = {0};
    cr_assert_null(dx__htab_find(&t, 7));
    cr_assert_null(dx__htab_any(&t));
    cr_assert_null(t.b);
    dx__htab_free(&t);
}

Test(htab, finds_every_node_after_many_doublings, .timeout = 10)
{
    enum { N = 5000 };
    static item items[N];
    dx__htab t = {0};
    for (int i = 0; i < N; i++) {
        items[i].value = i;
        /* Sequential and strided keys, as ids and pointers are. */
        items[i].node.key = (uint64_t)i * 4096u;
        cr_assert(dx__htab_put(&t, &items[i].node));
    }
    cr_assert_eq(t.n, N);
    cr_assert_geq(t.nb, (size_t)N / 2, "buckets %zu", t.nb);
    for (int i = 0; i < N; i++) {
        item *it = item_of(dx__htab_find(&t, (uint64_t)i * 4096u));
        cr_assert_not_null(it, "key %d", i);
        cr_assert_eq(it->value, i);
    }
    cr_assert_null(dx__htab_find(&t, 1)); /* never put */
    /* Delete every other one; the rest stay found. */
    for (int i = 0; i < N; i += 2)
        dx__htab_del(&t, &items[i].node);
    cr_assert_eq(t.n, N / 2);
    for (int i = 0; i < N; i++)
        cr_assert_eq(dx__htab_find(&t, (uint64_t)i * 4096u) != NULL, i % 2 == 1,
                     "key %d", i);
    /* Drain. */
    size_t drained = 0;
    dx__hnode *n;
    while ((n = dx__htab_any(&t)) != NULL) {
        dx__htab_del(&t, n);
        drained++;
    }
    cr_assert_eq(drained, N / 2);
    cr_assert_eq(t.n, 0);
    dx__htab_free(&t);
    cr_assert_null(t.b);
    cr_assert_eq(t.nb, 0);
}

Test(htab, several_nodes_under_one_key_are_all_reachable, .timeout = 10)
{
    item a = {1, {0}}, b = {2, {0}}, c = {3, {0}}, other = {9, {0}};
    a.node.key = b.node.key = c.node.key = 42;
    other.node.key = 43;
    dx__htab t = {0};
    cr_assert(dx__htab_put(&t, &a.node));
    cr_assert(dx__htab_put(&t, &other.node));
    cr_assert(dx__htab_put(&t, &b.node));
    cr_assert(dx__htab_put(&t, &c.node));
    int seen = 0, count = 0;
    for (dx__hnode *n = dx__htab_find(&t, 42); n; n = dx__htab_find_next(n)) {
        seen |= 1 << item_of(n)->value;
        count++;
    }
    cr_assert_eq(count, 3);
    cr_assert_eq(seen, (1 << 1) | (1 << 2) | (1 << 3));
    /* Out of the middle of the chain. */
    dx__htab_del(&t, &b.node);
    count = 0;
    for (dx__hnode *n = dx__htab_find(&t, 42); n; n = dx__htab_find_next(n)) {
        cr_assert_neq(item_of(n)->value, 2);
        count++;
    }
    cr_assert_eq(count, 2);
    cr_assert_eq(item_of(dx__htab_find(&t, 43))->value, 9);
    dx__htab_free(&t);
}

/* An allocator that refuses everything: the first put has no buckets to
 * go to and says so; nothing is left behind. */
static void *refuse_malloc(size_t n, void *ud)
{
    (void)n;
    (void)ud;
    return NULL;
}

static void *refuse_realloc(void *p, size_t n, void *ud)
{
    (void)p;
    (void)n;
    (void)ud;
    return NULL;
}

static void plain_free(void *p, void *ud)
{
    (void)ud;
    (void)p;
}

Test(htab, a_first_put_without_memory_fails_cleanly, .timeout = 10)
{
    dx_set_allocator(
        &(dx_allocator){refuse_malloc, refuse_realloc, plain_free, NULL});
    item a = {1, {0}};
    a.node.key = 5;
    dx__htab t = {0};
    bool put = dx__htab_put(&t, &a.node);
    dx_set_allocator(NULL);
    cr_assert_not(put);
    cr_assert_eq(t.n, 0);
    cr_assert_null(dx__htab_find(&t, 5));
}
