/*
 * test_jprint.c — the providers' JSON printer (providers/jprint.c) against
 * cJSON_PrintUnformatted, which it replaces on the hot paths and must match
 * byte for byte (request bodies are cache keys and golden files): random
 * trees of every value type with strings of every byte value, numbers at
 * the edges of cJSON's integer test and of %1.15g, deep nesting; the cases
 * cJSON refuses (a raw item without text, an invalid type) refused too; a
 * failed print into a buffer leaves the buffer as it was.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../jcodec_compare.h"
#include "codec_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t next(void)
{
    return jc_rand(&rng);
}

/* Strings that exercise the escapes: runs of plain text, every control
 * byte, quotes, backslashes, DEL and UTF-8 sequences. */
static char *random_text(void)
{
    static const char *const pieces[] = {
        "plain words ", "\"", "\\",   "\n",        "\r\n",    "\t",
        "\b",           "\f", "\x01", "\x1f",      "\x7f",    "é",
        "日本語",       "😀",  "/",    "</script>", "\\u0000",
    };
    size_t n = next() % 12;
    char buf[512];
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        char one[2] = {0, 0};
        if (next() % 3 == 0) {
            one[0] = (char)(1 + next() % 255); /* any byte but NUL */
            p = one;
        } else {
            p = pieces[next() % (sizeof pieces / sizeof pieces[0])];
        }
        size_t k = strlen(p);
        if (len + k >= sizeof buf)
            break;
        memcpy(buf + len, p, k);
        len += k;
    }
    buf[len] = '\0';
    return dx_strdup(buf);
}

static double random_number(void)
{
    static const double edges[] = {
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.1,
        1.0 / 3.0,
        1e15,
        1e16,
        1e17,
        123456789012345678.0,
        1e300,
        -1e-300,
        5e-324,
        DBL_MAX,
        DBL_MIN,
        INT_MAX,
        INT_MIN,
        2147483648.0,
        -2147483649.0,
        0.5,
        100.25,
        3.14159265358979,
        2.5e-7,
        NAN,
        INFINITY,
        -INFINITY,
        9007199254740993.0,
        1e21,
        0.30000000000000004,
    };
    switch (next() % 4) {
    case 0:
        return edges[next() % (sizeof edges / sizeof edges[0])];
    case 1:
        return (double)(int64_t)next() / (double)(1 + next() % 1000000);
    case 2:
        return (double)((int32_t)next());
    default: {
        double d;
        uint64_t bits = next();
        memcpy(&d, &bits, sizeof d); /* any double at all */
        return d;
    }
    }
}

static cJSON *random_tree(int depth)
{
    unsigned kind = (unsigned)(next() % (depth > 6 ? 6 : 8));
    switch (kind) {
    case 0:
        return cJSON_CreateNull();
    case 1:
        return cJSON_CreateBool(next() % 2);
    case 2:
        return cJSON_CreateNumber(random_number());
    case 3:
    case 4: {
        char *t = random_text();
        cJSON *s = cJSON_CreateString(t);
        dx_free(t);
        return s;
    }
    case 5:
        return cJSON_CreateRaw("{\"raw\": [1, 2 ,3]}");
    case 6: {
        cJSON *a = cJSON_CreateArray();
        for (size_t i = next() % 5; i > 0; i--)
            cJSON_AddItemToArray(a, random_tree(depth + 1));
        return a;
    }
    default: {
        cJSON *o = cJSON_CreateObject();
        for (size_t i = next() % 5; i > 0; i--) {
            char *k = random_text();
            cJSON_AddItemToObject(o, k, random_tree(depth + 1));
            dx_free(k);
        }
        return o;
    }
    }
}

static void assert_same(const cJSON *tree, int round)
{
    char *want = cJSON_PrintUnformatted(tree);
    size_t len = 0;
    char *got = dx__jprint_n(tree, &len);
    cr_assert_not_null(want);
    cr_assert_not_null(got,
                       "round %d: dx__jprint refused what cJSON printed: %s",
                       round, want);
    cr_assert_eq(len, strlen(got));
    cr_assert_str_eq(got, want, "round %d:\n got %s\nwant %s", round, got,
                     want);
    cJSON_free(want);
    dx_free(got);
}

Test(jprint, prints_random_trees_exactly_as_cjson_does, .timeout = 60)
{
    dx__json_init();
    for (int round = 0; round < 20000; round++) {
        cJSON *tree = random_tree(0);
        cr_assert_not_null(tree);
        assert_same(tree, round);
        cJSON_Delete(tree);
    }
}

/* The tree the dx__jadd_* helpers would build for the same values: whole
 * numbers go in as raw integer text (dx__json_number), the rest as is. */
static cJSON *as_added(const cJSON *n)
{
    if (cJSON_IsNumber(n))
        return dx__json_number(n->valuedouble);
    if (!cJSON_IsArray(n) && !cJSON_IsObject(n))
        return cJSON_Duplicate(n, false);
    cJSON *c = cJSON_IsArray(n) ? cJSON_CreateArray() : cJSON_CreateObject();
    for (const cJSON *k = n->child; k != NULL; k = k->next) {
        if (cJSON_IsArray(n))
            cJSON_AddItemToArray(c, as_added(k));
        else
            cJSON_AddItemToObject(c, k->string, as_added(k));
    }
    return c;
}

/* Write n through the tree-less writer, member by member. */
static void replay(dx__jw *w, const char *key, const cJSON *n)
{
    if (cJSON_IsNull(n))
        dx__jw_null(w, key);
    else if (cJSON_IsBool(n))
        dx__jw_bool(w, key, cJSON_IsTrue(n));
    else if (cJSON_IsNumber(n))
        dx__jw_num(w, key, n->valuedouble);
    else if (cJSON_IsString(n))
        dx__jw_str(w, key, n->valuestring);
    else if (cJSON_IsRaw(n))
        dx__jw_raw(w, key, n->valuestring);
    else {
        bool arr = cJSON_IsArray(n);
        if (arr)
            dx__jw_arr(w, key);
        else
            dx__jw_obj(w, key);
        for (const cJSON *k = n->child; k != NULL; k = k->next)
            replay(w, arr ? NULL : k->string, k);
        dx__jw_end(w);
    }
}

Test(jprint, writes_without_a_tree_what_the_tree_prints, .timeout = 60)
{
    dx__json_init();
    for (int round = 0; round < 20000; round++) {
        cJSON *tree = random_tree(0);
        cJSON *added = as_added(tree);
        cr_assert_not_null(added);
        char *want = cJSON_PrintUnformatted(added);
        dx__buf b;
        dx__buf_init(&b, 0);
        dx__jw w;
        dx__jw_init(&w, &b);
        replay(&w, NULL, tree);
        cr_assert_eq(w.rc, 0, "round %d", round);
        cr_assert_eq(w.depth, 0);
        cr_assert_str_eq(b.p, want, "round %d:\n got %s\nwant %s", round, b.p,
                         want);
        cJSON_free(want);
        dx__buf_free(&b);
        cJSON_Delete(added);
        cJSON_Delete(tree);
    }
}

Test(jprint, the_writer_refuses_too_deep_nesting_and_a_stray_end, .timeout = 10)
{
    dx__buf b;
    dx__buf_init(&b, 0);
    dx__jw w;
    dx__jw_init(&w, &b);
    for (int i = 0; i < DX__JW_DEPTH - 1; i++)
        dx__jw_arr(&w, NULL);
    cr_assert_eq(w.rc, 0);
    dx__jw_arr(&w, NULL);
    cr_assert_eq(w.rc, DX_ELIMIT);
    dx__jw_null(&w, NULL); /* nothing more after a failure */
    cr_assert_eq(b.len, (size_t)(DX__JW_DEPTH - 1));
    dx__buf_free(&b);

    dx__jw_init(&w, &b);
    dx__jw_end(&w);
    cr_assert_eq(w.rc, DX_EINVAL);
    dx__jw_init(&w, &b);
    dx__jw_raw(&w, "k", NULL);
    cr_assert_eq(w.rc, DX_EINVAL);
    dx__buf_free(&b);
}

Test(jprint, prints_every_single_byte_string_as_cjson_does, .timeout = 10)
{
    dx__json_init();
    for (int c = 1; c < 256; c++) {
        char s[4] = {'a', (char)c, 'z', 0};
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, s, s);
        assert_same(o, c);
        cJSON_Delete(o);
    }
}

/* Strings are scanned 16 bytes a step: every byte that needs care, at
 * every place in and around the first steps, and strings of every length
 * across the step edges. */
Test(jprint, prints_each_byte_at_every_offset_of_long_strings_as_cjson_does,
     .timeout = 30)
{
    dx__json_init();
    static const unsigned char probes[] = {0x01, 0x08, 0x0A, 0x1F, 0x20, '"',
                                           '\\', '/',  0x7F, 0x80, 0xC3, 0xFF};
    char s[72];
    for (size_t len = 1; len < sizeof s; len++) {
        for (size_t pos = 0; pos < len; pos++) {
            for (size_t k = 0; k < sizeof probes; k++) {
                memset(s, 'x', len);
                s[len] = '\0';
                s[pos] = (char)probes[k];
                /* A second one later in the same string, on some rounds. */
                if (k % 3 == 0 && pos + 17 < len)
                    s[pos + 17] = '\n';
                cJSON *str = cJSON_CreateString(s);
                assert_same(str, (int)(len * 10000 + pos * 100 + k));
                cJSON_Delete(str);
            }
        }
    }
}

Test(jprint, prints_deep_nesting_and_large_strings, .timeout = 10)
{
    dx__json_init();
    cJSON *root = cJSON_CreateArray(), *at = root;
    for (int i = 0; i < 500; i++) {
        cJSON *inner = i % 2 ? cJSON_CreateArray() : cJSON_CreateObject();
        if (i % 2)
            cJSON_AddItemToObject(at, "k", inner);
        else
            cJSON_AddItemToArray(at, inner);
        at = inner;
    }
    size_t big = 1 << 20;
    char *text = dx_malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        text[i] = i % 97 == 0 ? '\n' : (char)('a' + i % 26);
    text[big] = '\0';
    cJSON_AddItemToObject(at, "text", cJSON_CreateString(text));
    dx_free(text);
    assert_same(root, 0);
    cJSON_Delete(root);
}

Test(jprint, refuses_what_cjson_refuses_and_leaves_the_buffer_alone,
     .timeout = 10)
{
    dx__json_init();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "before", "kept");
    cJSON *raw = cJSON_CreateRaw("1");
    dx_free(raw->valuestring);
    raw->valuestring = NULL; /* a raw item without its text */
    cJSON_AddItemToObject(o, "raw", raw);
    cr_assert_null(cJSON_PrintUnformatted(o));
    cr_assert_null(dx__jprint(o));

    dx__buf b;
    dx__buf_init(&b, 0);
    cr_assert_eq(dx__buf_str(&b, "prefix:"), 0);
    cr_assert_neq(dx__jprint_into(&b, o), 0);
    cr_assert_str_eq(b.p, "prefix:");
    cr_assert_eq(b.len, strlen("prefix:"));

    cJSON *bad = cJSON_CreateNull();
    bad->type = cJSON_Invalid;
    cr_assert_null(cJSON_PrintUnformatted(bad));
    cr_assert_null(dx__jprint(bad));
    cr_assert_null(dx__jprint(NULL));

    /* A tree it can print goes after what was in the buffer. */
    cJSON *ok = cJSON_CreateObject();
    cJSON_AddNumberToObject(ok, "n", 1.5);
    cr_assert_eq(dx__jprint_into(&b, ok), 0);
    cr_assert_str_eq(b.p, "prefix:{\"n\":1.5}");
    dx__buf_free(&b);
    cJSON_Delete(ok);
    cJSON_Delete(bad);
    cJSON_Delete(o);
}
