/*
 * test_alloc.c — the swappable allocator (alloc.h), the error table
 * (error.h), and allocation failure in the term module: with an allocator
 * that fails the Nth allocation, for N = 1, 2, ... until the operation
 * succeeds, every term constructor and operation must report the failure
 * (NULL or DX_ENOMEM), leave its inputs intact, and leak nothing.
 */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/term.h"

/* ---- a counting allocator that can fail ---- */

typedef struct counting {
    long live;      /* blocks handed out and not yet freed */
    long calls;     /* allocation attempts (malloc and realloc) */
    long fail_at;   /* 0: never fail; else attempt number fail_at fails */
    bool stay_down; /* and, if set, every attempt after it too */
    long failures;
} counting;

static counting cnt;

static bool should_fail(counting *c)
{
    c->calls++;
    bool fail = c->fail_at != 0 && (c->stay_down ? c->calls >= c->fail_at
                                                 : c->calls == c->fail_at);
    c->failures += fail;
    return fail;
}

static void *c_malloc(size_t size, void *ud)
{
    counting *c = ud;
    if (should_fail(c))
        return NULL;
    void *p = malloc(size);
    c->live += p != NULL;
    return p;
}

static void *c_realloc(void *ptr, size_t size, void *ud)
{
    counting *c = ud;
    if (should_fail(c))
        return NULL;
    void *p = realloc(ptr, size);
    c->live += p != NULL && ptr == NULL;
    return p;
}

static void c_free(void *ptr, void *ud)
{
    counting *c = ud;
    c->live--;
    free(ptr);
}

static const dx_allocator counting_alloc = {c_malloc, c_realloc, c_free, &cnt};

/* Start counting attempts from zero; fail attempt fail_at (0: none). */
static void arm(long fail_at, bool stay_down)
{
    cnt.calls = 0;
    cnt.fail_at = fail_at;
    cnt.stay_down = stay_down;
    dx_set_allocator(&counting_alloc);
}

static void disarm(void)
{
    cnt.fail_at = 0;
}

static void restore_libc(void)
{
    dx_set_allocator(NULL);
}

TestSuite(alloc, .fini = restore_libc);

/* ---- alloc.h ---- */

Test(alloc, calloc_refuses_an_overflowing_size_without_allocating,
     .timeout = 10)
{
    arm(0, false);
    cr_expect_null(dx_calloc(SIZE_MAX / 2, 4));
    cr_expect_null(dx_calloc(SIZE_MAX, SIZE_MAX));
    cr_expect_eq(cnt.calls, 0, "the allocator was not even asked");
    unsigned char *p = dx_calloc(16, 8);
    cr_assert_not_null(p);
    for (size_t i = 0; i < 128; i++)
        cr_assert_eq(p[i], 0);
    dx_free(p);
    void *z = dx_calloc(0, 8);
    cr_expect_not_null(z, "zero bytes is a valid, freeable block");
    dx_free(z);
    cr_expect_eq(cnt.live, 0);
}

Test(alloc, failed_realloc_leaves_the_old_block_intact, .timeout = 10)
{
    arm(0, false);
    char *p = dx_malloc(16);
    cr_assert_not_null(p);
    memcpy(p, "0123456789abcde", 16);
    arm(1, false);
    cr_expect_null(dx_realloc(p, 1 << 20));
    disarm();
    cr_expect_str_eq(p, "0123456789abcde");
    char *q = dx_realloc(p, 32);
    cr_assert_not_null(q);
    cr_expect_str_eq(q, "0123456789abcde");
    dx_free(q);
    cr_expect_eq(cnt.live, 0);
}

Test(alloc, every_call_goes_through_the_installed_allocator, .timeout = 10)
{
    arm(0, false);
    void *a = dx_malloc(0);
    cr_expect_not_null(a);
    char *s = dx_strdup("copy me");
    cr_expect_str_eq(s, "copy me");
    cr_expect_null(dx_strdup(NULL));
    cr_expect_eq(cnt.live, 2);
    cr_expect_eq(cnt.calls, 2);
    dx_free(a);
    dx_free(s);
    dx_free(NULL);
    cr_expect_eq(cnt.live, 0);
    arm(1, false);
    cr_expect_null(dx_malloc(8));
    arm(1, false);
    cr_expect_null(dx_strdup("x"));
    cr_expect_eq(cnt.live, 0);
    restore_libc();
    /* Back on the C library: the counting allocator sees nothing. */
    long calls = cnt.calls;
    void *b = dx_malloc(8);
    cr_expect_not_null(b);
    dx_free(b);
    cr_expect_eq(cnt.calls, calls);
    cr_expect_eq(cnt.live, 0);
}

/* ---- error.h ---- */

Test(alloc, every_error_code_has_its_name_and_message, .timeout = 10)
{
    static const struct {
        int code;
        const char *name, *msg;
    } table[] = {
#define ROW(name, val, msg) {DX_##name, #name, msg},
        DX_ERRNO_MAP(ROW)
#undef ROW
    };
    size_t n = sizeof table / sizeof table[0];
    cr_expect_geq(n, 14);
    for (size_t i = 0; i < n; i++) {
        cr_expect_lt(table[i].code, 0, "%s is negative", table[i].name);
        cr_expect_str_eq(dx_err_name(table[i].code), table[i].name);
        cr_expect_str_eq(dx_strerror(table[i].code), table[i].msg);
        for (size_t j = 0; j < i; j++) {
            cr_expect_neq(table[i].code, table[j].code, "numbers are unique");
            cr_expect_str_neq(dx_strerror(table[i].code),
                              dx_strerror(table[j].code));
        }
    }
    cr_expect_eq(DX_OK, 0);
    cr_expect_str_eq(dx_err_name(DX_OK), "OK");
    cr_expect_str_eq(dx_strerror(DX_OK), "success");
    cr_expect_str_eq(dx_err_name(DX_ENOMEM), "ENOMEM");
    cr_expect_str_eq(dx_strerror(DX_ENOMEM), "out of memory");
    const int unknown[] = {1, 42, -9999, INT32_MIN};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        cr_expect_str_eq(dx_err_name(unknown[i]), "UNKNOWN");
        cr_expect_not_null(dx_strerror(unknown[i]));
        for (size_t j = 0; j < n; j++)
            cr_expect_str_neq(dx_strerror(unknown[i]), table[j].msg);
    }
}

/* ---- term construction under allocation failure ---- */

static dx_term *build_map(void)
{
    dx_term *m = dx_map_new();
    char key[16];
    /* 12 pairs: past the linear-search limit, so the index is built. */
    for (int i = 0; m != NULL && i < 12; i++) {
        snprintf(key, sizeof key, "k%d", i);
        dx_term *v = dx_tuple(3, dx_int(i), dx_float(i + 0.5),
                              dx_list(2, dx_atom("ok"), dx_int(INT64_MAX - i)));
        if (dx_map_put(m, i % 2 ? dx_atom(key) : dx_str(key), v) != DX_OK) {
            dx_term_free(m);
            return NULL;
        }
    }
    if (m != NULL &&
        dx_map_put(m, dx_str("k0"), dx_binary("\x01\x02", 2)) != DX_OK) {
        dx_term_free(m);
        return NULL;
    }
    return m;
}

static dx_term *build_list(void)
{
    dx_term *l = dx_nil();
    /* 9 items: the list's array grows twice. */
    for (int i = 0; l != NULL && i < 9; i++) {
        dx_term *item = i % 3 == 0   ? dx_pid_term((dx_pid){(uint64_t)i})
                        : i % 3 == 1 ? dx_ref_term((dx_ref){(uint64_t)i})
                                     : dx_str("item");
        if (dx_list_append(l, item) != DX_OK) {
            dx_term_free(l);
            return NULL;
        }
    }
    return l;
}

static dx_term *build_nested(void)
{
    dx_term *m = build_map();
    return dx_tuple(5, dx_atom("ok"), m, build_list(), dx_term_copy(m),
                    dx_int(INT64_MIN));
}

/* Atoms are never freed, so intern the ones the builders use while the C
 * library allocator is installed: the counting allocator then sees only
 * term memory. */
static void intern_atoms_outside_the_count(void)
{
    restore_libc();
    dx_term_free(build_nested());
    dx_atom("v");
    dx_atom("ok");
}

/* Run step with allocation n failing, for n = 1.. until step succeeds. Each
 * failed run must leave cnt.live where it was; a successful one must have
 * made no failing attempt (a failure must never be swallowed); check runs
 * on a successful result r, release on every result. */
#define OOM_LOOP(what, stay_down, result_t, step, check, release)              \
    do {                                                                       \
        long n = 1;                                                            \
        for (;; n++) {                                                         \
            cr_assert_lt(n, 100000, "%s never succeeded", what);               \
            long live0 = cnt.live;                                             \
            arm(n, stay_down);                                                 \
            result_t r = step;                                                 \
            long calls = cnt.calls;                                            \
            disarm();                                                          \
            bool ok = r != NULL;                                               \
            if (ok) {                                                          \
                cr_assert_lt(calls, n,                                         \
                             "%s succeeded though allocation "                 \
                             "%ld failed",                                     \
                             what, n);                                         \
                check;                                                         \
            }                                                                  \
            release;                                                           \
            cr_assert_eq(cnt.live, live0,                                      \
                         "%s: %ld blocks leaked when allocation %ld failed",   \
                         what, cnt.live - live0, n);                           \
            if (ok)                                                            \
                break;                                                         \
        }                                                                      \
        cr_expect_gt(n, 10, "%s: expected many allocations", what);            \
    } while (0)

Test(alloc, nested_term_construction_fails_cleanly_at_every_allocation,
     .timeout = 30)
{
    intern_atoms_outside_the_count();
    arm(0, false);
    dx_term *want = build_nested();
    cr_assert_not_null(want);
    for (int stay_down = 0; stay_down < 2; stay_down++) {
        OOM_LOOP("build", stay_down, dx_term *, build_nested(),
                 cr_assert(dx_term_equal(r, want)), dx_term_free(r));
    }
    dx_term_free(want);
    cr_expect_eq(cnt.live, 0);
}

Test(alloc, copy_and_to_string_fail_cleanly_at_every_allocation, .timeout = 30)
{
    intern_atoms_outside_the_count();
    arm(0, false);
    dx_term *want = build_nested();
    cr_assert_not_null(want);
    char *text = dx_term_to_string(want);
    cr_assert_not_null(text);
    cr_expect_gt(strlen(text), 256, "longer than to_string's stack buffer");
    OOM_LOOP("copy", false, dx_term *, dx_term_copy(want),
             cr_assert(dx_term_equal(r, want)), dx_term_free(r));
    long live0 = cnt.live;
    arm(1, false);
    cr_expect_null(dx_term_to_string(want));
    disarm();
    cr_expect_eq(cnt.live, live0);
    char *s = dx_term_to_string(want);
    cr_expect_str_eq(s, text);
    dx_free(s);
    dx_free(text);
    dx_term_free(want);
    cr_expect_eq(cnt.live, 0);
}

Test(alloc, every_constructor_returns_null_when_its_allocation_fails,
     .timeout = 10)
{
    dx_term *items[] = {NULL, NULL};
    intern_atoms_outside_the_count();
    for (int stay_down = 0; stay_down < 2; stay_down++) {
        arm(1, stay_down);
        cr_expect_null(dx_int(INT64_MAX));
        arm(1, stay_down);
        cr_expect_null(dx_float(1.0));
        arm(1, stay_down);
        cr_expect_null(dx_binary("abc", 3));
        arm(1, stay_down);
        cr_expect_null(dx_str("abc"));
        arm(1, stay_down);
        cr_expect_null(dx_pid_term((dx_pid){1}));
        arm(1, stay_down);
        cr_expect_null(dx_ref_term((dx_ref){1}));
        arm(1, stay_down);
        cr_expect_null(dx_map_new());
        arm(1, stay_down);
        cr_expect_null(dx_nil());
        /* The children exist, the tuple/list node does not. */
        disarm();
        items[0] = dx_str("a");
        items[1] = dx_str("b");
        arm(1, stay_down);
        cr_expect_null(dx_tuplev(2, items));
        disarm();
        items[0] = dx_str("a");
        items[1] = dx_str("b");
        arm(1, stay_down);
        cr_expect_null(dx_listv(2, items));
        disarm();
        dx_term *a = dx_str("a"), *b = dx_float(2.0);
        arm(1, stay_down);
        cr_expect_null(dx_tuple(2, a, b));
        disarm();
        a = dx_str("a");
        b = dx_float(2.0);
        arm(2, stay_down); /* a list allocates its array, then its node */
        cr_expect_null(dx_list(2, a, b));
        disarm();
        cr_expect_eq(cnt.live, 0, "children freed (stay_down=%d)", stay_down);
    }
    /* Immediates need no memory at all. */
    arm(1, true);
    cr_expect_not_null(dx_int(5));
    cr_expect_not_null(dx_atom("ok"));
    disarm();
}

Test(alloc, a_null_child_frees_its_siblings, .timeout = 10)
{
    arm(0, false);
    cr_expect_null(dx_tuple(3, dx_str("a"), NULL, dx_list(1, dx_str("b"))));
    cr_expect_null(dx_list(2, dx_str("a"), NULL));
    dx_term *items[] = {dx_str("a"), NULL, dx_float(1.0)};
    cr_expect_null(dx_listv(3, items));
    dx_term *items2[] = {dx_int(INT64_MIN), NULL};
    cr_expect_null(dx_tuplev(2, items2));
    dx_term *m = dx_map_new();
    cr_expect_eq(dx_map_put(m, dx_str("k"), NULL), DX_EINVAL);
    cr_expect_eq(dx_map_put(m, NULL, dx_str("v")), DX_EINVAL);
    cr_expect_eq(dx_map_put(NULL, dx_str("k"), dx_str("v")), DX_EINVAL);
    cr_expect_eq(dx_list_append(m, dx_str("x")), DX_EINVAL);
    dx_term_free(m);
    cr_expect_eq(cnt.live, 0);
}

Test(alloc, a_failed_map_put_leaves_the_map_unchanged, .timeout = 30)
{
    intern_atoms_outside_the_count();
    arm(0, false);
    /* 8 pairs: the next put builds the hash index. Then 16: the index and
     * the pair arrays both grow. */
    const int sizes[] = {3, 8, 16};
    for (size_t s = 0; s < 3; s++) {
        dx_term *base = dx_map_new();
        char key[16];
        for (int i = 0; i < sizes[s]; i++) {
            snprintf(key, sizeof key, "key%d", i);
            cr_assert_eq(dx_map_put(base, dx_str(key), dx_int(i)), DX_OK);
        }
        for (long n = 1;; n++) {
            cr_assert_lt(n, 1000);
            dx_term *m = dx_term_copy(base);
            cr_assert_not_null(m);
            long live0 = cnt.live;
            dx_term *k = dx_str("new"), *v = dx_atom("v");
            arm(n, false);
            int rc = dx_map_put(m, k, v);
            long calls = cnt.calls;
            disarm();
            if (rc == DX_OK) {
                cr_expect_lt(calls, n);
                cr_expect_eq(dx_term_size(m), (size_t)sizes[s] + 1);
                cr_expect(dx_is_atom(dx_map_get_str(m, "new"), "v"));
                for (int i = 0; i < sizes[s]; i++) {
                    snprintf(key, sizeof key, "key%d", i);
                    cr_assert_not_null(dx_map_get_str(m, key));
                }
                dx_term_free(m);
                break;
            }
            cr_expect_eq(rc, DX_ENOMEM);
            cr_expect(dx_term_equal(m, base), "unchanged after failure");
            cr_expect_null(dx_map_get_str(m, "new"));
            cr_expect_eq(cnt.live, live0, "key freed, arrays swapped");
            /* The map still works after the failure. */
            cr_assert_eq(dx_map_put(m, dx_str("later"), dx_int(1)), DX_OK);
            cr_expect_not_null(dx_map_get_str(m, "later"));
            dx_term_free(m);
        }
        dx_term_free(base);
    }
    cr_expect_eq(cnt.live, 0);
}

Test(alloc, a_failed_list_append_frees_the_item_and_keeps_the_list,
     .timeout = 10)
{
    arm(0, false);
    dx_term *l = dx_nil();
    for (int i = 0; i < 4; i++)
        cr_assert_eq(dx_list_append(l, dx_int(i)), DX_OK);
    long live0 = cnt.live;
    dx_term *item = dx_str("fifth");
    arm(1, false); /* 4 items fill the first array: this append grows it */
    cr_expect_eq(dx_list_append(l, item), DX_ENOMEM);
    disarm();
    cr_expect_eq(cnt.live, live0, "item freed");
    cr_expect_eq(dx_term_size(l), 4);
    int64_t v = -1;
    cr_expect(dx_int_value(dx_term_at(l, 3), &v));
    cr_expect_eq(v, 3);
    cr_expect_eq(dx_list_append(l, dx_str("fifth")), DX_OK);
    cr_expect_eq(dx_term_size(l), 5);
    dx_term_free(l);
    cr_expect_eq(cnt.live, 0);
}

static dx_term *int_map(int n, bool reversed, int bump, bool float_keys)
{
    dx_term *m = dx_map_new();
    for (int k = 0; m != NULL && k < n; k++) {
        int i = reversed ? n - 1 - k : k;
        dx_term *key = float_keys && i == n - 1 ? dx_float(i) : dx_int(i);
        if (dx_map_put(m, key, dx_int(i == bump ? -5 : i)) != DX_OK) {
            dx_term_free(m);
            return NULL;
        }
    }
    return m;
}

Test(alloc, large_map_comparison_works_without_memory, .timeout = 10)
{
    arm(0, false);
    dx_term *a = int_map(40, false, -1, false);
    dx_term *b = int_map(40, true, -1, false);
    dx_term *lower = int_map(40, true, 7, false);
    dx_term *floaty = int_map(40, true, -1, true);
    /* Larger keys, smaller values: the keys decide. */
    dx_term *shifted = dx_map_new();
    for (int i = 0; shifted != NULL && i < 40; i++)
        cr_assert_eq(dx_map_put(shifted, dx_int(i + 1), dx_int(-1)), DX_OK);
    cr_assert(a && b && lower && floaty && shifted);
    long live0 = cnt.live;
    for (int stay_down = 0; stay_down < 2; stay_down++) {
        arm(1, stay_down);
        cr_expect_eq(dx_term_compare(a, b), 0);
        arm(1, stay_down);
        cr_expect_gt(dx_term_compare(a, lower), 0);
        arm(1, stay_down);
        cr_expect_lt(dx_term_compare(lower, a), 0);
        /* 39 as an integer key sorts before 39.0. */
        arm(1, stay_down);
        cr_expect_lt(dx_term_compare(a, floaty), 0);
        arm(1, stay_down);
        cr_expect_gt(dx_term_compare(floaty, a), 0);
        arm(1, stay_down);
        cr_expect_gt(dx_term_compare(shifted, a), 0);
        arm(1, stay_down);
        cr_expect(dx_term_equal(a, b));
        disarm();
        cr_expect_gt(cnt.failures, 0, "the fallback path ran");
        cr_expect_eq(cnt.live, live0);
    }
    /* The same answers with memory. */
    arm(0, false);
    cr_expect_eq(dx_term_compare(a, b), 0);
    cr_expect_gt(dx_term_compare(a, lower), 0);
    cr_expect_lt(dx_term_compare(a, floaty), 0);
    cr_expect_gt(dx_term_compare(shifted, a), 0);
    dx_term_free(shifted);
    dx_term_free(a);
    dx_term_free(b);
    dx_term_free(lower);
    dx_term_free(floaty);
    cr_expect_eq(cnt.live, 0);
}

Test(alloc, atom_interning_survives_allocation_failures, .timeout = 30)
{
    /* Enough atoms to need a second table, a second chunk and many slabs;
     * atoms are never freed, so only correctness is checked here. */
    enum { N = 6000 };
    static dx_term *got[N];
    char name[32];
    cnt.failures = 0;
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "oom_atom_%d", i);
        for (long n = 1;; n++) {
            cr_assert_lt(n, 100);
            arm(n, false);
            got[i] = dx_atom(name);
            disarm();
            if (got[i] != NULL)
                break;
        }
    }
    cr_expect_gt(cnt.failures, 3, "table, chunk and slab allocations failed");
    restore_libc();
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "oom_atom_%d", i);
        cr_assert_eq(dx_atom(name), got[i], "%s", name);
        cr_assert_str_eq(dx_atom_name(got[i]), name);
    }
}
