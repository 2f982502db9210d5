/*
 * test_term.c — dx_term: construction and accessors of every type, the
 * small-integer/boxed boundary, atom interning (also from two threads at
 * once), deep copy, =:= equality versus Erlang's term order across all
 * types, maps (replace, lookup by term and by name, large maps), and
 * printing in Erlang syntax including truncation. Allocation failure paths
 * are in test_alloc.c.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/term.h"

/* Formats t, checks the text, frees t. */
static void expect_format(dx_term *t, const char *want)
{
    cr_assert_not_null(t, "constructor failed for %s", want);
    char buf[512];
    size_t n = dx_term_format(t, buf, sizeof buf);
    cr_expect_str_eq(buf, want);
    cr_expect_eq(n, strlen(want), "length for %s: %zu", want, n);
    dx_term_free(t);
}

static bool is_immediate(const dx_term *t)
{
    return ((uintptr_t)t & 7) != 0;
}

/* ---- atoms ---- */

Test(term, atoms_are_interned_and_keep_their_name, .timeout = 10)
{
    dx_term *a = dx_atom("ok");
    cr_assert_not_null(a);
    cr_expect_eq(dx_atom("ok"), a);
    char name[] = {'o', 'k', '\0'};
    cr_expect_eq(dx_atom(name), a, "a different buffer, same name");
    cr_expect_eq(dx_atom_n("okay", 2), a);
    cr_expect_neq(dx_atom("error"), a);
    cr_expect_str_eq(dx_atom_name(a), "ok");
    cr_expect_eq(dx_term_type_of(a), DX_TERM_ATOM);
    cr_expect(dx_is_atom(a, "ok"));
    cr_expect_not(dx_is_atom(a, "o"));
    cr_expect_not(dx_is_atom(a, "okk"));
    cr_expect_not(dx_is_atom(a, NULL));
    cr_expect(is_immediate(a));
    /* Immediates copy for free and freeing them does nothing. */
    cr_expect_eq(dx_term_copy(a), a);
    dx_term_free(a);
    cr_expect_str_eq(dx_atom_name(dx_atom("ok")), "ok");
}

Test(term, atom_names_longer_than_255_bytes_are_refused, .timeout = 10)
{
    char name[300];
    memset(name, 'x', sizeof name);
    name[255] = '\0';
    dx_term *a = dx_atom(name);
    cr_assert_not_null(a, "255 bytes is the limit, not past it");
    cr_expect_eq(strlen(dx_atom_name(a)), 255);
    name[255] = 'x';
    name[256] = '\0';
    cr_expect_null(dx_atom(name));
    cr_expect_null(dx_atom_n(name, 256));
    cr_expect_eq(dx_atom_n(name, 255), a);
    cr_expect_null(dx_atom(NULL));
    cr_expect_null(dx_atom_n(NULL, 0));
}

Test(term, the_empty_atom_and_atoms_with_nul_bytes_are_distinct, .timeout = 10)
{
    dx_term *empty = dx_atom("");
    cr_assert_not_null(empty);
    cr_expect_str_eq(dx_atom_name(empty), "");
    dx_term *nul = dx_atom_n("a\0b", 3);
    cr_assert_not_null(nul);
    cr_expect_neq(nul, dx_atom("a"));
    cr_expect_not(dx_is_atom(nul, "a"));
    cr_expect_eq(dx_atom_n("a\0b", 3), nul);
    expect_format(nul, "'a\\000b'");
    expect_format(empty, "''");
}

Test(term, accessors_of_other_types_refuse_atoms, .timeout = 10)
{
    dx_term *b = dx_str("ok");
    cr_expect_null(dx_atom_name(b));
    cr_expect_not(dx_is_atom(b, "ok"));
    cr_expect_null(dx_atom_name(dx_int(2)));
    cr_expect_null(dx_atom_name(NULL));
    dx_term_free(b);
}

#define THREAD_ATOMS 10000

typedef struct intern_job {
    int id;
    dx_term *shared[THREAD_ATOMS]; /* same names in both threads */
    dx_term *own[THREAD_ATOMS];    /* names only this thread uses */
} intern_job;

static void *intern_many(void *arg)
{
    intern_job *job = arg;
    char name[32];
    for (int k = 0; k < THREAD_ATOMS; k++) {
        /* Opposite orders, so both threads race on fresh names. */
        int i = job->id == 0 ? k : THREAD_ATOMS - 1 - k;
        snprintf(name, sizeof name, "shared_%d", i);
        job->shared[i] = dx_atom(name);
        snprintf(name, sizeof name, "own_%d_%d", job->id, k);
        job->own[k] = dx_atom(name);
    }
    return NULL;
}

Test(term, atoms_interned_from_two_threads_resolve_to_one_term, .timeout = 60)
{
    static intern_job jobs[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        jobs[i].id = i;
        cr_assert_eq(pthread_create(&th[i], NULL, intern_many, &jobs[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    char name[32];
    for (int i = 0; i < THREAD_ATOMS; i++) {
        snprintf(name, sizeof name, "shared_%d", i);
        cr_assert_not_null(jobs[0].shared[i]);
        cr_assert_eq(jobs[0].shared[i], jobs[1].shared[i], "%s", name);
        cr_assert_eq(dx_atom(name), jobs[0].shared[i]);
        cr_assert_str_eq(dx_atom_name(jobs[0].shared[i]), name);
        for (int t = 0; t < 2; t++) {
            snprintf(name, sizeof name, "own_%d_%d", t, i);
            cr_assert_not_null(jobs[t].own[i]);
            cr_assert_eq(dx_atom(name), jobs[t].own[i], "%s", name);
            cr_assert_str_eq(dx_atom_name(jobs[t].own[i]), name);
        }
    }
    cr_expect_neq(jobs[0].own[0], jobs[1].own[0]);
}

/* ---- integers, floats, binaries, pids, refs ---- */

Test(term, integers_are_immediate_up_to_61_bits_and_boxed_beyond, .timeout = 10)
{
    const int64_t p60 = (int64_t)1 << 60;
    const struct {
        int64_t v;
        bool immediate;
    } cases[] = {
        {0, true},
        {1, true},
        {-1, true},
        {p60 - 1, true},
        {-p60, true},
        {p60, false},
        {-p60 - 1, false},
        {INT64_MAX, false},
        {INT64_MIN, false},
        {INT64_MAX - 1, false},
        {INT64_MIN + 1, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_term *t = dx_int(cases[i].v);
        cr_assert_not_null(t);
        cr_expect_eq(is_immediate(t), cases[i].immediate, "%" PRId64,
                     cases[i].v);
        cr_expect_eq(dx_term_type_of(t), DX_TERM_INT);
        int64_t got = 0;
        cr_expect(dx_int_value(t, &got));
        cr_expect_eq(got, cases[i].v);
        dx_term *c = dx_term_copy(t);
        cr_expect(dx_term_equal(c, t));
        cr_expect_eq(c == t, cases[i].immediate, "only immediates share");
        dx_term *again = dx_int(cases[i].v);
        cr_expect(dx_term_equal(again, t), "one representation per value");
        cr_expect_eq(dx_term_compare(again, t), 0);
        dx_term_free(again);
        dx_term_free(c);
        dx_term_free(t);
    }
}

Test(term, floats_pids_and_refs_hold_their_values, .timeout = 10)
{
    dx_term *f = dx_float(-2.5);
    double d = 0;
    cr_assert_not_null(f);
    cr_expect_eq(dx_term_type_of(f), DX_TERM_FLOAT);
    cr_expect(dx_float_value(f, &d));
    cr_expect_eq(d, -2.5);
    cr_expect_not(dx_int_value(f, NULL));

    dx_pid pid = {((uint64_t)0 << 52) | ((uint64_t)3 << 32) | 12};
    dx_term *p = dx_pid_term(pid);
    dx_pid got_pid = DX_NOPID;
    cr_expect_eq(dx_term_type_of(p), DX_TERM_PID);
    cr_expect(dx_pid_value(p, &got_pid));
    cr_expect(dx_pid_eq(got_pid, pid));
    cr_expect_not(dx_ref_value(p, NULL));

    dx_term *r = dx_ref_term((dx_ref){77});
    dx_ref got_ref = DX_NOREF;
    cr_expect_eq(dx_term_type_of(r), DX_TERM_REF);
    cr_expect(dx_ref_value(r, &got_ref));
    cr_expect_eq(got_ref.id, 77);
    cr_expect_not(dx_pid_value(r, NULL));
    cr_expect_not(dx_float_value(r, NULL));
    cr_expect_not(dx_term_equal(p, r), "same bits, different types");

    dx_term_free(f);
    dx_term_free(p);
    dx_term_free(r);
}

Test(term, binaries_copy_their_bytes_and_end_with_an_uncounted_nul,
     .timeout = 10)
{
    char src[] = {'a', '\0', 'b'};
    dx_term *b = dx_binary(src, sizeof src);
    cr_assert_not_null(b);
    src[0] = 'z';
    size_t len = 0;
    const char *data = dx_binary_data(b, &len);
    cr_expect_eq(len, 3);
    cr_expect_eq(memcmp(data, "a\0b", 3), 0);
    cr_expect_eq(data[3], '\0');
    cr_expect_eq(dx_term_type_of(b), DX_TERM_BINARY);

    dx_term *s = dx_str("hello");
    cr_expect_str_eq(dx_binary_data(s, NULL), "hello");

    dx_term *empty = dx_binary(NULL, 0);
    cr_assert_not_null(empty);
    cr_expect_str_eq(dx_binary_data(empty, &len), "");
    cr_expect_eq(len, 0);

    cr_expect_null(dx_binary(NULL, 1));
    cr_expect_null(dx_str(NULL));
    cr_expect_null(dx_binary_data(dx_atom("hello"), &len));
    dx_term_free(b);
    dx_term_free(s);
    dx_term_free(empty);
}

/* ---- tuples and lists ---- */

Test(term, tuples_and_lists_hold_their_items_in_order, .timeout = 10)
{
    dx_term *t = dx_tuple(3, dx_atom("ok"), dx_int(42), dx_str("x"));
    cr_assert_not_null(t);
    cr_expect_eq(dx_term_type_of(t), DX_TERM_TUPLE);
    cr_expect_eq(dx_term_size(t), 3);
    cr_expect(dx_is_atom(dx_term_at(t, 0), "ok"));
    int64_t v = 0;
    cr_expect(dx_int_value(dx_term_at(t, 1), &v));
    cr_expect_eq(v, 42);
    cr_expect_str_eq(dx_binary_data(dx_term_at(t, 2), NULL), "x");
    cr_expect_null(dx_term_at(t, 3));

    dx_term *items[] = {dx_int(1), dx_int(2)};
    dx_term *l = dx_listv(2, items);
    cr_assert_not_null(l);
    cr_expect_eq(dx_term_type_of(l), DX_TERM_LIST);
    cr_expect_eq(dx_term_size(l), 2);

    dx_term *items2[] = {dx_atom("a"), dx_atom("b")};
    dx_term *t2 = dx_tuplev(2, items2);
    cr_expect_eq(dx_term_size(t2), 2);

    dx_term *empty_t = dx_tuple(0);
    dx_term *nil = dx_nil();
    dx_term *empty_l = dx_list(0);
    cr_assert_not_null(empty_t);
    cr_assert_not_null(nil);
    cr_expect_eq(dx_term_size(empty_t), 0);
    cr_expect_eq(dx_term_type_of(nil), DX_TERM_LIST);
    cr_expect(dx_term_equal(nil, empty_l));
    cr_expect_null(dx_term_at(nil, 0));
    cr_expect_eq(dx_term_size(dx_int(5)), 0);
    cr_expect_null(dx_term_at(dx_int(5), 0));

    dx_term_free(t);
    dx_term_free(l);
    dx_term_free(t2);
    dx_term_free(empty_t);
    dx_term_free(nil);
    dx_term_free(empty_l);
}

Test(term, a_null_child_makes_the_constructor_return_null, .timeout = 10)
{
    cr_expect_null(dx_tuple(3, dx_str("a"), NULL, dx_str("b")));
    cr_expect_null(dx_list(2, NULL, dx_float(1.0)));
    dx_term *items[] = {dx_str("a"), NULL};
    cr_expect_null(dx_listv(2, items));
    dx_term *items2[] = {NULL, dx_str("b")};
    cr_expect_null(dx_tuplev(2, items2));
    cr_expect_null(dx_tuplev(1, NULL));
    /* Leaks, if any, are caught by the ASan/valgrind runs and by the
     * counting allocator in test_alloc.c. */
}

Test(term, list_append_grows_and_refuses_non_lists, .timeout = 10)
{
    dx_term *l = dx_nil();
    cr_assert_not_null(l);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(dx_list_append(l, dx_int(i)), DX_OK);
    cr_expect_eq(dx_term_size(l), 1000);
    for (int i = 0; i < 1000; i++) {
        int64_t v = -1;
        cr_assert(dx_int_value(dx_term_at(l, (size_t)i), &v));
        cr_assert_eq(v, i);
    }
    cr_expect_eq(dx_list_append(l, NULL), DX_EINVAL);
    cr_expect_eq(dx_term_size(l), 1000);

    dx_term *t = dx_tuple(1, dx_int(1));
    cr_expect_eq(dx_list_append(t, dx_str("freed")), DX_EINVAL);
    cr_expect_eq(dx_term_size(t), 1);
    cr_expect_eq(dx_list_append(dx_atom("x"), dx_str("freed")), DX_EINVAL);
    cr_expect_eq(dx_list_append(NULL, dx_str("freed")), DX_EINVAL);
    dx_term_free(t);
    dx_term_free(l);
}

/* ---- maps ---- */

Test(term, map_put_replaces_an_equal_key_in_place, .timeout = 10)
{
    dx_term *m = dx_map_new();
    cr_assert_not_null(m);
    cr_expect_eq(dx_term_type_of(m), DX_TERM_MAP);
    cr_expect_eq(dx_term_size(m), 0);
    cr_assert_eq(dx_map_put(m, dx_atom("a"), dx_int(1)), DX_OK);
    cr_assert_eq(dx_map_put(m, dx_str("b"), dx_int(2)), DX_OK);
    cr_assert_eq(dx_map_put(m, dx_atom("a"), dx_str("three")), DX_OK);
    cr_expect_eq(dx_term_size(m), 2);
    cr_expect(dx_is_atom(dx_map_key_at(m, 0), "a"), "insertion order kept");
    cr_expect_str_eq(dx_binary_data(dx_map_value_at(m, 0), NULL), "three");
    cr_expect_str_eq(dx_binary_data(dx_map_key_at(m, 1), NULL), "b");
    cr_expect_null(dx_map_key_at(m, 2));
    cr_expect_null(dx_map_value_at(m, 2));

    /* A binary key equal in bytes replaces too; 1 and 1.0 are two keys. */
    cr_assert_eq(dx_map_put(m, dx_str("b"), dx_int(20)), DX_OK);
    cr_assert_eq(dx_map_put(m, dx_int(1), dx_atom("int")), DX_OK);
    cr_assert_eq(dx_map_put(m, dx_float(1.0), dx_atom("float")), DX_OK);
    cr_expect_eq(dx_term_size(m), 4);
    dx_term *k = dx_float(1.0);
    cr_expect(dx_is_atom(dx_map_get(m, k), "float"));
    cr_expect(dx_is_atom(dx_map_get(m, dx_int(1)), "int"));
    dx_term_free(k);
    k = dx_str("b");
    int64_t v = 0;
    cr_expect(dx_int_value(dx_map_get(m, k), &v));
    cr_expect_eq(v, 20);
    dx_term_free(k);
    cr_expect_null(dx_map_get(m, dx_atom("zz")));
    cr_expect_null(dx_map_get(m, NULL));
    dx_term_free(m);
}

Test(term, map_put_refuses_non_maps_and_null_parts, .timeout = 10)
{
    dx_term *m = dx_map_new();
    dx_term *l = dx_nil();
    cr_expect_eq(dx_map_put(l, dx_str("k"), dx_str("v")), DX_EINVAL);
    cr_expect_eq(dx_map_put(dx_atom("m"), dx_str("k"), dx_str("v")), DX_EINVAL);
    cr_expect_eq(dx_map_put(NULL, dx_str("k"), dx_str("v")), DX_EINVAL);
    cr_expect_eq(dx_map_put(m, NULL, dx_str("v")), DX_EINVAL);
    cr_expect_eq(dx_map_put(m, dx_str("k"), NULL), DX_EINVAL);
    cr_expect_eq(dx_term_size(m), 0);
    cr_expect_eq(dx_term_size(l), 0);
    cr_expect_null(dx_map_get(l, dx_atom("k")));
    cr_expect_null(dx_map_key_at(l, 0));
    dx_term_free(m);
    dx_term_free(l);
}

Test(term, map_get_str_tries_the_atom_key_then_the_binary_key, .timeout = 10)
{
    dx_term *m = dx_map_new();
    cr_assert_eq(dx_map_put(m, dx_str("model"), dx_str("bin")), DX_OK);
    cr_expect_str_eq(dx_binary_data(dx_map_get_str(m, "model"), NULL), "bin");
    cr_assert_eq(dx_map_put(m, dx_atom("model"), dx_str("atom")), DX_OK);
    cr_expect_str_eq(dx_binary_data(dx_map_get_str(m, "model"), NULL), "atom");
    cr_assert_eq(dx_map_put(m, dx_atom("only_atom"), dx_int(1)), DX_OK);
    cr_expect_not_null(dx_map_get_str(m, "only_atom"));
    cr_expect_null(dx_map_get_str(m, "never_seen_anywhere"));
    cr_expect_null(dx_map_get_str(m, "mode"));
    cr_expect_null(dx_map_get_str(m, NULL));
    cr_expect_null(dx_map_get_str(dx_atom("model"), "model"));
    char long_name[400];
    memset(long_name, 'q', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    cr_assert_eq(dx_map_put(m, dx_str(long_name), dx_int(2)), DX_OK);
    cr_expect_not_null(dx_map_get_str(m, long_name),
                       "a name too long for an atom still finds a binary");
    dx_term_free(m);
}

Test(term, large_maps_find_replace_and_keep_every_key, .timeout = 20)
{
    enum { N = 5000 };
    dx_term *m = dx_map_new();
    char name[32];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(dx_map_put(m, dx_int(i), dx_int(i * 2)), DX_OK);
        snprintf(name, sizeof name, "key%d", i);
        cr_assert_eq(dx_map_put(m, dx_str(name), dx_int(i)), DX_OK);
    }
    cr_expect_eq(dx_term_size(m), 2 * N);
    for (int i = 0; i < N; i += 7)
        cr_assert_eq(dx_map_put(m, dx_int(i), dx_atom("replaced")), DX_OK);
    cr_expect_eq(dx_term_size(m), 2 * N);
    for (int i = 0; i < N; i++) {
        const dx_term *v = dx_map_get(m, dx_int(i));
        cr_assert_not_null(v, "%d", i);
        if (i % 7 == 0) {
            cr_assert(dx_is_atom(v, "replaced"));
        } else {
            int64_t got = -1;
            cr_assert(dx_int_value(v, &got));
            cr_assert_eq(got, i * 2);
        }
        snprintf(name, sizeof name, "key%d", i);
        int64_t got = -1;
        cr_assert(dx_int_value(dx_map_get_str(m, name), &got));
        cr_assert_eq(got, i);
    }
    cr_expect_null(dx_map_get(m, dx_int(N)));
    /* Insertion order survives the index. */
    int64_t first = -1;
    cr_expect(dx_int_value(dx_map_key_at(m, 2), &first));
    cr_expect_eq(first, 1);

    dx_term *c = dx_term_copy(m);
    cr_assert_not_null(c);
    cr_expect(dx_term_equal(c, m));
    cr_assert_eq(dx_map_put(c, dx_int(N), dx_int(0)), DX_OK);
    cr_expect_not_null(dx_map_get(c, dx_int(N)), "a copied index grows");
    cr_expect_null(dx_map_get(m, dx_int(N)));
    dx_term_free(c);
    dx_term_free(m);
}

/* ---- copy, equality, order ---- */

static dx_term *sample(void)
{
    dx_term *inner = dx_map_new();
    if (inner == NULL ||
        dx_map_put(inner, dx_atom("k"), dx_list(2, dx_int(1), dx_float(2.5))) !=
            DX_OK) {
        dx_term_free(inner);
        return NULL;
    }
    return dx_tuple(6, dx_atom("ok"), dx_int(INT64_MIN), dx_str("text"),
                    dx_pid_term((dx_pid){5}), dx_ref_term((dx_ref){9}), inner);
}

Test(term, copy_is_deep_and_equal, .timeout = 10)
{
    dx_term *t = sample();
    cr_assert_not_null(t);
    char before[256];
    dx_term_format(t, before, sizeof before);
    dx_term *c = dx_term_copy(t);
    cr_assert_not_null(c);
    cr_expect_neq(c, t);
    cr_expect(dx_term_equal(c, t));
    cr_expect_eq(dx_term_compare(c, t), 0);
    for (size_t i = 1; i < dx_term_size(t); i++)
        cr_expect_neq(dx_term_at(c, i), dx_term_at(t, i), "item %zu is shared",
                      i);
    dx_term_free(t);
    char after[256];
    dx_term_format(c, after, sizeof after);
    cr_expect_str_eq(after, before, "the copy outlives the original");
    cr_expect_null(dx_term_copy(NULL));
    dx_term_free(c);
    dx_term_free(NULL);
}

Test(term, equality_is_exact_but_order_compares_numbers_by_value, .timeout = 10)
{
    dx_term *one = dx_int(1), *onef = dx_float(1.0);
    cr_expect_not(dx_term_equal(one, onef));
    cr_expect_eq(dx_term_compare(one, onef), 0);
    cr_expect_eq(dx_term_compare(onef, one), 0);

    dx_term *t1 = dx_tuple(2, dx_int(1), dx_atom("a"));
    dx_term *t2 = dx_tuple(2, dx_float(1.0), dx_atom("a"));
    cr_expect_not(dx_term_equal(t1, t2));
    cr_expect_eq(dx_term_compare(t1, t2), 0);

    dx_term *z = dx_float(0.0), *nz = dx_float(-0.0);
    cr_expect_not(dx_term_equal(z, nz));
    cr_expect_eq(dx_term_compare(z, nz), 0);

    dx_term *big = dx_int(INT64_MAX), *bigf = dx_float(9223372036854775807.0);
    cr_expect_lt(dx_term_compare(big, bigf), 0, "2^63-1 < 2^63.0");
    cr_expect_gt(dx_term_compare(bigf, big), 0);

    /* Beyond 2^53 a double cannot hold every integer: compare exactly. */
    dx_term *i53 = dx_int(((int64_t)1 << 53) + 1);
    dx_term *f53 = dx_float(9007199254740992.0);
    cr_expect_gt(dx_term_compare(i53, f53), 0);
    cr_expect_lt(dx_term_compare(f53, i53), 0);
    dx_term *frac = dx_float(-1.5), *m1 = dx_int(-1), *m2 = dx_int(-2);
    cr_expect_lt(dx_term_compare(frac, m1), 0);
    cr_expect_gt(dx_term_compare(frac, m2), 0);

    cr_expect(dx_term_equal(NULL, NULL));
    cr_expect_not(dx_term_equal(NULL, one));
    cr_expect_lt(dx_term_compare(NULL, one), 0, "NULL sorts first");
    cr_expect_gt(dx_term_compare(one, NULL), 0);
    cr_expect_eq(dx_term_compare(NULL, NULL), 0);

    dx_term *all[] = {onef, t1, t2, z, nz, big, bigf, i53, f53, frac};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        dx_term_free(all[i]);
}

static int qsort_terms(const void *a, const void *b)
{
    return dx_term_compare(*(dx_term *const *)a, *(dx_term *const *)b);
}

static dx_term *map1(const char *k, int64_t v)
{
    dx_term *m = dx_map_new();
    if (m != NULL && dx_map_put(m, dx_atom(k), dx_int(v)) != DX_OK) {
        dx_term_free(m);
        return NULL;
    }
    return m;
}

Test(term, sorting_follows_erlang_standard_order, .timeout = 10)
{
    dx_term *m2 = map1("a", 1);
    cr_assert_eq(dx_map_put(m2, dx_atom("b"), dx_int(0)), DX_OK);
    /* Ascending Erlang order: number < atom < reference < pid < tuple <
     * map < list < binary, and within each type its own rule. */
    dx_term *want[] = {
        dx_float(-1e300),
        dx_int(INT64_MIN),
        dx_int(-((int64_t)1 << 60)),
        dx_float(-0.5),
        dx_int(0),
        dx_float(0.5),
        dx_int(1),
        dx_float(1.5),
        dx_int((int64_t)1 << 60),
        dx_int(INT64_MAX),
        dx_float(1e19),
        dx_atom(""),
        dx_atom("Zed"),
        dx_atom("a"),
        dx_atom("aa"),
        dx_atom("b"),
        dx_ref_term((dx_ref){1}),
        dx_ref_term((dx_ref){2}),
        dx_pid_term((dx_pid){((uint64_t)1 << 32) | 1}),
        dx_pid_term((dx_pid){((uint64_t)1 << 32) | 2}),
        dx_tuple(0),
        dx_tuple(1, dx_atom("b")),
        dx_tuple(2, dx_atom("a"), dx_atom("a")),
        dx_tuple(2, dx_atom("a"), dx_atom("b")),
        dx_map_new(),
        map1("a", 1),
        map1("a", 2),
        map1("b", 0),
        m2,
        dx_nil(),
        dx_list(1, dx_atom("a")),
        dx_list(2, dx_atom("a"), dx_atom("a")),
        dx_list(2, dx_atom("a"), dx_atom("b")),
        dx_list(1, dx_atom("b")),
        dx_binary(NULL, 0),
        dx_binary("\0", 1),
        dx_str("a"),
        dx_str("ab"),
        dx_str("b"),
    };
    enum { N = sizeof want / sizeof want[0] };
    dx_term *shuffled[N];
    for (size_t i = 0; i < N; i++) {
        cr_assert_not_null(want[i], "item %zu", i);
        shuffled[(i * 17 + 5) % N] = want[i]; /* 17 is coprime with N */
    }
    cr_assert_eq(N % 17 != 0, true);
    qsort(shuffled, N, sizeof shuffled[0], qsort_terms);
    for (size_t i = 0; i < N; i++) {
        char got[64], exp[64];
        dx_term_format(shuffled[i], got, sizeof got);
        dx_term_format(want[i], exp, sizeof exp);
        cr_expect(dx_term_equal(shuffled[i], want[i]),
                  "position %zu: got %s, want %s", i, got, exp);
        if (i > 0)
            cr_expect_lt(dx_term_compare(want[i - 1], want[i]), 0, "%zu", i);
    }
    for (size_t i = 0; i < N; i++)
        dx_term_free(want[i]);
}

static dx_term *int_map(int n, bool reversed, int64_t bump_key)
{
    dx_term *m = dx_map_new();
    for (int k = 0; m != NULL && k < n; k++) {
        int i = reversed ? n - 1 - k : k;
        int64_t v = i == bump_key ? 1000 : i;
        if (dx_map_put(m, dx_int(i * 3), dx_int(v)) != DX_OK) {
            dx_term_free(m);
            return NULL;
        }
    }
    return m;
}

Test(term, maps_compare_by_size_then_sorted_keys_then_values, .timeout = 10)
{
    /* 5 pairs sort on the stack, 40 in a heap buffer. */
    const int sizes[] = {5, 40};
    for (size_t s = 0; s < 2; s++) {
        int n = sizes[s];
        dx_term *a = int_map(n, false, -1);
        dx_term *b = int_map(n, true, -1);
        dx_term *bumped = int_map(n, true, n / 2);
        dx_term *bigger = int_map(n + 1, false, -1);
        cr_assert(a && b && bumped && bigger);
        cr_expect(dx_term_equal(a, b), "insertion order does not matter");
        cr_expect_eq(dx_term_compare(a, b), 0);
        cr_expect_lt(dx_term_compare(a, bumped), 0);
        cr_expect_gt(dx_term_compare(bumped, a), 0);
        cr_expect_not(dx_term_equal(a, bumped));
        cr_expect_lt(dx_term_compare(a, bigger), 0, "smaller map first");
        /* Keys decide before values: a smallest key that is larger wins
         * even with smaller values. */
        dx_term *shifted = dx_map_new();
        for (int i = 0; i < n; i++)
            cr_assert_eq(dx_map_put(shifted, dx_int(i * 3 + 1), dx_int(-1)),
                         DX_OK);
        cr_expect_gt(dx_term_compare(shifted, a), 0);
        dx_term_free(shifted);
        dx_term_free(a);
        dx_term_free(b);
        dx_term_free(bumped);
        dx_term_free(bigger);
    }
    /* In map key order integers come before equal floats. */
    dx_term *mi = dx_map_new(), *mf = dx_map_new();
    cr_assert_eq(dx_map_put(mi, dx_int(1), dx_atom("v")), DX_OK);
    cr_assert_eq(dx_map_put(mf, dx_float(1.0), dx_atom("v")), DX_OK);
    cr_expect_lt(dx_term_compare(mi, mf), 0);
    cr_expect_gt(dx_term_compare(mf, mi), 0);
    cr_expect_not(dx_term_equal(mi, mf));
    dx_term_free(mi);
    dx_term_free(mf);
}

/* ---- printing ---- */

Test(term, format_prints_each_type_in_erlang_syntax, .timeout = 10)
{
    expect_format(dx_atom("ok"), "ok");
    expect_format(dx_atom("node@host_1"), "node@host_1");
    expect_format(dx_atom("Hello"), "'Hello'");
    expect_format(dx_atom("hello world"), "'hello world'");
    expect_format(dx_atom("it's"), "'it\\'s'");
    expect_format(dx_atom("back\\slash"), "'back\\\\slash'");
    expect_format(dx_atom("a\nb"), "'a\\nb'");
    expect_format(dx_atom("case"), "'case'");
    expect_format(dx_atom("9lives"), "'9lives'");
    expect_format(dx_int(42), "42");
    expect_format(dx_int(-7), "-7");
    expect_format(dx_int(INT64_MIN), "-9223372036854775808");
    expect_format(dx_int(INT64_MAX), "9223372036854775807");
    expect_format(dx_str("text"), "<<\"text\">>");
    expect_format(dx_str("say \"hi\" \\o/"), "<<\"say \\\"hi\\\" \\\\o/\">>");
    expect_format(dx_str("two\nlines\t!"), "<<\"two\\nlines\\t!\">>");
    expect_format(dx_binary("\x01\x02\xff", 3), "<<1,2,255>>");
    expect_format(dx_binary("a\0", 2), "<<97,0>>");
    expect_format(dx_binary(NULL, 0), "<<>>");
    expect_format(dx_str("h\xc3\xa9llo"), "<<\"h\xc3\xa9llo\"/utf8>>");
    expect_format(dx_str("bad \xc3("), "<<98,97,100,32,195,40>>");
    expect_format(dx_nil(), "[]");
    expect_format(dx_list(2, dx_atom("a"), dx_atom("b")), "[a,b]");
    expect_format(dx_tuple(0), "{}");
    expect_format(dx_tuple(2, dx_atom("ok"), dx_int(42)), "{ok,42}");
    expect_format(dx_map_new(), "#{}");
    dx_term *m = dx_map_new();
    cr_assert_eq(dx_map_put(m, dx_atom("k"), dx_atom("v")), DX_OK);
    cr_assert_eq(dx_map_put(m, dx_str("n"), dx_int(1)), DX_OK);
    expect_format(m, "#{k => v,<<\"n\">> => 1}");
    dx_pid pid = {((uint64_t)3 << 32) | 12};
    expect_format(dx_pid_term(pid), "<0.12.3>");
    dx_pid remote = {((uint64_t)2 << 52) | ((uint64_t)0xfffff << 32) | 7};
    expect_format(dx_pid_term(remote), "<2.7.1048575>");
    expect_format(dx_ref_term((dx_ref){123456789}), "#Ref<0.123456789>");
    expect_format(dx_tuple(2, dx_list(1, dx_tuple(0)), dx_map_new()),
                  "{[{}],#{}}");
    char buf[32];
    cr_expect_eq(dx_term_format(NULL, buf, sizeof buf), strlen(buf));
    cr_expect_str_eq(buf, "<invalid>");
}

Test(term, format_prints_floats_in_the_shortest_round_trip_form, .timeout = 10)
{
    const struct {
        double v;
        const char *text;
    } cases[] = {
        {1.0, "1.0"},
        {-2.5, "-2.5"},
        {0.0, "0.0"},
        {-0.0, "-0.0"},
        {0.1, "0.1"},
        {100.0, "100.0"},
        {1000.0, "1.0e3"},
        {123456.0, "123456.0"},
        {0.001, "0.001"},
        {1.5e-5, "1.5e-5"},
        {0.30000000000000004, "0.30000000000000004"},
        {1e300, "1.0e300"},
        {-2.2250738585072014e-308, "-2.2250738585072014e-308"},
        {5e-324, "5.0e-324"},
        {9007199254740992.0, "9.007199254740992e15"},
        {123456789012.5, "123456789012.5"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_format(dx_float(cases[i].v), cases[i].text);
        /* Whatever the notation, the text reads back as the same double. */
        cr_expect_eq(strtod(cases[i].text, NULL), cases[i].v, "%s",
                     cases[i].text);
    }
}

Test(term, format_truncates_like_snprintf_and_returns_the_full_length,
     .timeout = 10)
{
    dx_term *t = dx_tuple(2, dx_atom("ok"), dx_int(42));
    const char *full = "{ok,42}";
    char buf[16];
    cr_expect_eq(dx_term_format(t, NULL, 0), strlen(full));
    memset(buf, '#', sizeof buf);
    cr_expect_eq(dx_term_format(t, buf, 0), strlen(full));
    cr_expect_eq(buf[0], '#', "cap 0 writes nothing");
    cr_expect_eq(dx_term_format(t, buf, 1), strlen(full));
    cr_expect_str_eq(buf, "");
    memset(buf, '#', sizeof buf);
    cr_expect_eq(dx_term_format(t, buf, 5), strlen(full));
    cr_expect_str_eq(buf, "{ok,");
    cr_expect_eq(buf[5], '#', "nothing past cap");
    cr_expect_eq(dx_term_format(t, buf, strlen(full)), strlen(full));
    cr_expect_str_eq(buf, "{ok,42");
    cr_expect_eq(dx_term_format(t, buf, strlen(full) + 1), strlen(full));
    cr_expect_str_eq(buf, full);
    dx_term_free(t);
}

Test(term, to_string_allocates_the_whole_text, .timeout = 10)
{
    dx_term *l = dx_nil();
    for (int i = 0; i < 200; i++)
        cr_assert_eq(dx_list_append(l, dx_atom("abc")), DX_OK);
    char *s = dx_term_to_string(l);
    cr_assert_not_null(s);
    cr_expect_eq(strlen(s), 2 + 200 * 3 + 199, "longer than any stack buffer");
    cr_expect_eq(strncmp(s, "[abc,abc,", 9), 0);
    cr_expect_eq(s[strlen(s) - 1], ']');
    dx_free(s);
    char *small = dx_term_to_string(dx_atom("ok"));
    cr_expect_str_eq(small, "ok");
    dx_free(small);
    dx_term_free(l);
}

Test(term, type_names_are_stable, .timeout = 10)
{
    cr_expect_str_eq(dx_term_type_name(DX_TERM_INVALID), "invalid");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_ATOM), "atom");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_INT), "integer");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_FLOAT), "float");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_BINARY), "binary");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_LIST), "list");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_TUPLE), "tuple");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_MAP), "map");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_PID), "pid");
    cr_expect_str_eq(dx_term_type_name(DX_TERM_REF), "reference");
    cr_expect_str_eq(dx_term_type_name((dx_term_type)99), "unknown");
    cr_expect_eq(dx_term_type_of(NULL), DX_TERM_INVALID);
}
