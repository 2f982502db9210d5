/*
 * test_example.c — examples and datasets: ordered keys, values in and out,
 * inputs/labels/without/copy/equality as DSPy's Example behaves, JSON text
 * in and out, the read-only view of an example's inputs Evaluate runs on,
 * and datasets from JSONL, a JSON array or CSV with errors that
 * name the file, line and column, plus saving and reading back.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/example.h"
#include "example_int.h"

static dx_example *from_json(const char *text)
{
    dx_example *ex = NULL;
    dx_diag d = {0};
    int rc = dx_example_from_json(text, strlen(text), &ex, &d);
    cr_assert_eq(rc, DX_OK, "%s: %s", text, d.msg);
    return ex;
}

static char *to_json(const dx_example *ex)
{
    char *s = NULL;
    cr_assert_eq(dx_example_to_json(ex, &s), DX_OK);
    return s;
}

static void expect_json(const dx_example *ex, const char *want)
{
    char *s = to_json(ex);
    cr_expect_str_eq(s, want);
    dx_free(s);
}

Test(example, keys_keep_insertion_order_when_replaced, .timeout = 10)
{
    dx_example *ex = dx_example_new();
    cr_assert_not_null(ex);
    cr_assert_eq(dx_example_set_str(ex, "question", "2+2?"), DX_OK);
    cr_assert_eq(dx_example_set_int(ex, "answer", 4), DX_OK);
    cr_assert_eq(dx_example_set_float(ex, "score", 1.0), DX_OK);
    cr_assert_eq(dx_example_set_bool(ex, "ok", true), DX_OK);
    cr_assert_eq(dx_example_set_null(ex, "note"), DX_OK);
    cr_assert_eq(dx_example_set_json(ex, "ctx", "[\"a\", {\"b\": 1}]", NULL),
                 DX_OK);
    cr_assert_eq(dx_example_set_str(ex, "question", "3+3?"), DX_OK);
    cr_expect_eq(dx_example_len(ex), 6);
    cr_expect_str_eq(dx_example_key(ex, 0), "question");
    cr_expect_str_eq(dx_example_key(ex, 5), "ctx");
    cr_expect_null(dx_example_key(ex, 6));
    cr_expect_null(dx_example_value(ex, 6));
    expect_json(ex, "{\"question\":\"3+3?\",\"answer\":4,\"score\":1.0,"
                    "\"ok\":true,\"note\":null,\"ctx\":[\"a\",{\"b\":1}]}");
    dx_example_free(ex);
}

Test(example, bad_sets_leave_the_example_unchanged, .timeout = 10)
{
    dx_example *ex = from_json("{\"a\": 1}");
    dx_diag d = {0};
    cr_expect_eq(dx_example_set_json(ex, "a", "[1, 2", &d), DX_ESYNTAX);
    cr_expect_eq(d.code, DX_ESYNTAX);
    cr_expect(strstr(d.msg, "\"a\"") && strstr(d.msg, "column 6"), "%s", d.msg);
    cr_expect_eq(dx_example_set_str(ex, "", "x"), DX_EINVAL);
    cr_expect_eq(dx_example_set_str(ex, NULL, "x"), DX_EINVAL);
    cr_expect_eq(dx_example_set_str(ex, "b", NULL), DX_EINVAL);
    cr_expect_eq(dx_example_set_value(ex, "b", NULL), DX_EINVAL);
    expect_json(ex, "{\"a\":1}");
    dx_example_free(ex);
}

Test(example, get_with_defaults, .timeout = 10)
{
    dx_example *ex = from_json("{\"name\": \"Alice\", \"age\": 30, "
                               "\"member\": true, \"tags\": [\"x\"]}");
    cr_expect_str_eq(dx_example_get_str(ex, "name", "?"), "Alice");
    cr_expect_str_eq(dx_example_get_str(ex, "city", "Unknown"), "Unknown");
    cr_expect_str_eq(dx_example_get_str(ex, "age", "not a string"),
                     "not a string");
    cr_expect_eq(dx_example_get_num(ex, "age", -1), 30);
    cr_expect_eq(dx_example_get_num(ex, "member", -1), 1);
    cr_expect_eq(dx_example_get_num(ex, "name", -1), -1);
    cr_expect_eq(dx_example_get_num(ex, "missing", 2.5), 2.5);
    cr_expect(dx_example_has(ex, "tags"));
    cr_expect_not(dx_example_has(ex, "city"));
    cr_expect(cJSON_IsArray(dx_example_get(ex, "tags")));
    cr_expect_null(dx_example_get(ex, "city"));
    cr_expect_eq(dx_example_remove(ex, "age"), DX_OK);
    cr_expect_eq(dx_example_remove(ex, "age"), DX_ENOENT);
    expect_json(ex, "{\"name\":\"Alice\",\"member\":true,\"tags\":[\"x\"]}");
    dx_example_free(ex);
}

Test(example, from_json_refuses_non_objects_and_says_where, .timeout = 10)
{
    dx_example *ex = (dx_example *)1;
    dx_diag d = {0};
    cr_expect_eq(dx_example_from_json("{\"a\": 1,\n \"b\" 2}", 17, &ex, &d),
                 DX_ESYNTAX);
    cr_expect_null(ex);
    cr_expect_eq(d.line, 2);
    cr_expect_eq(d.column, 6);
    cr_expect(strstr(d.msg, "expected ':'"), "%s", d.msg);
    cr_expect_eq(dx_example_from_json("[1]", 3, &ex, &d), DX_ESYNTAX);
    cr_expect(strstr(d.msg, "expected a JSON object, got an array"), "%s",
              d.msg);
    cr_expect_eq(dx_example_from_json(NULL, 0, &ex, &d), DX_EINVAL);
}

Test(example, inputs_without_designation_is_an_error, .timeout = 10)
{
    dx_example *ex = from_json("{\"question\": \"q\", \"answer\": \"a\"}");
    dx_example *in = (dx_example *)1;
    dx_diag d = {0};
    cr_expect_not(dx_example_has_inputs(ex));
    cr_expect_eq(dx_example_inputs(ex, &in, &d), DX_ESTATE);
    cr_expect_null(in);
    cr_expect_eq(d.code, DX_ESTATE);
    cr_expect(strstr(d.msg, "inputs have not been set"), "%s", d.msg);
    /* Without a designation every key is a label. */
    dx_example *lab = NULL;
    cr_assert_eq(dx_example_labels(ex, &lab), DX_OK);
    cr_expect_eq(dx_example_len(lab), 2);
    dx_example_free(lab);
    dx_example_free(ex);
}

Test(example, inputs_and_labels_split_the_keys, .timeout = 10)
{
    dx_example *ex = from_json("{\"context\": \"c\", \"question\": \"q\", "
                               "\"answer\": \"a\", \"extra\": 1}");
    const char *keys[] = {"question", "context", "absent"};
    cr_assert_eq(dx_example_with_inputs(ex, keys, 3), DX_OK);
    cr_expect(dx_example_has_inputs(ex));
    cr_expect(dx_example_is_input(ex, "question"));
    cr_expect_not(dx_example_is_input(ex, "answer"));
    dx_example *in = NULL, *lab = NULL;
    cr_assert_eq(dx_example_inputs(ex, &in, NULL), DX_OK);
    cr_assert_eq(dx_example_labels(ex, &lab), DX_OK);
    /* The example's order, not the designation's. */
    expect_json(in, "{\"context\":\"c\",\"question\":\"q\"}");
    expect_json(lab, "{\"answer\":\"a\",\"extra\":1}");
    cr_expect(dx_example_has_inputs(in));
    cr_expect(dx_example_is_input(in, "question"));
    dx_example_free(in);
    dx_example_free(lab);
    /* Removing a key also drops it from the inputs. */
    cr_assert_eq(dx_example_remove(ex, "question"), DX_OK);
    cr_expect_not(dx_example_is_input(ex, "question"));
    const char *none[] = {NULL};
    cr_expect_eq(dx_example_with_inputs(ex, none, 1), DX_EINVAL);
    cr_expect(dx_example_is_input(ex, "context"));
    dx_example_free(ex);
}

/* Evaluate's view of an example's inputs: what dx_example_inputs gives,
 * reading the example's own values, read-only, freed without them. */
Test(example, an_inputs_view_reads_the_examples_own_inputs, .timeout = 10)
{
    dx_example *ex = from_json("{\"context\": [1, 2], \"question\": \"q\", "
                               "\"answer\": \"a\"}");
    cr_expect_null(dx__example_inputs_view(ex)); /* no designation */
    const char *keys[] = {"question", "context"};
    cr_assert_eq(dx_example_with_inputs(ex, keys, 2), DX_OK);
    dx_example *v = dx__example_inputs_view(ex);
    cr_assert_not_null(v);
    expect_json(v, "{\"context\":[1,2],\"question\":\"q\"}");
    cr_expect_eq(dx_example_get(v, "question"), dx_example_get(ex, "question"));
    cr_expect_eq(dx_example_get(v, "context"), dx_example_get(ex, "context"));
    cr_expect_null(dx_example_get(v, "answer"));
    cr_expect(dx_example_has_inputs(v));
    cr_expect(dx_example_is_input(v, "context"));
    /* Read-only: nothing changes it, or the example under it. */
    cr_expect_eq(dx_example_set_str(v, "question", "x"), DX_EINVAL);
    cr_expect_eq(dx_example_set_str(v, "new", "x"), DX_EINVAL);
    cr_expect_eq(dx_example_remove(v, "question"), DX_EINVAL);
    cr_expect_eq(dx_example_with_inputs(v, keys, 1), DX_EINVAL);
    expect_json(v, "{\"context\":[1,2],\"question\":\"q\"}");
    /* A copy of the view is an example of its own. */
    dx_example *c = dx_example_copy(v);
    cr_assert_not_null(c);
    cr_expect_neq(dx_example_get(c, "question"),
                  dx_example_get(ex, "question"));
    cr_expect(dx_example_is_input(c, "question"));
    cr_expect_eq(dx_example_set_str(c, "question", "changed"), DX_OK);
    dx_example_free(v);
    dx_example_free(c);
    /* Freeing the view left the example whole. */
    expect_json(ex, "{\"context\":[1,2],\"question\":\"q\",\"answer\":\"a\"}");
    dx_example_free(ex);
}

Test(example, without_drops_keys_and_leaves_the_original, .timeout = 10)
{
    dx_example *ex = from_json("{\"q\": 1, \"a\": 2, \"r\": 3}");
    const char *in[] = {"q"};
    cr_assert_eq(dx_example_with_inputs(ex, in, 1), DX_OK);
    const char *drop[] = {"a", "nope"};
    dx_example *w = dx_example_without(ex, drop, 2);
    cr_assert_not_null(w);
    expect_json(w, "{\"q\":1,\"r\":3}");
    cr_expect(dx_example_is_input(w, "q"));
    expect_json(ex, "{\"q\":1,\"a\":2,\"r\":3}");
    dx_example_free(w);
    dx_example_free(ex);
}

Test(example, equal_ignores_order_and_designation, .timeout = 10)
{
    dx_example *a =
        from_json("{\"x\": 1, \"y\": {\"p\": [1, 2], \"q\": null}}");
    dx_example *b =
        from_json("{\"y\": {\"q\": null, \"p\": [1, 2.0]}, \"x\": 1}");
    const char *in[] = {"x"};
    cr_assert_eq(dx_example_with_inputs(b, in, 1), DX_OK);
    cr_expect(dx_example_equal(a, b));
    cr_expect(dx_example_equal(b, a));
    dx_example *c =
        from_json("{\"x\": 1, \"y\": {\"p\": [2, 1], \"q\": null}}");
    cr_expect_not(dx_example_equal(a, c));
    dx_example *d = from_json("{\"x\": 1}");
    cr_expect_not(dx_example_equal(a, d));
    cr_expect_not(dx_example_equal(d, a));
    dx_example *e =
        from_json("{\"x\": \"1\", \"y\": {\"p\": [1, 2], \"q\": null}}");
    cr_expect_not(dx_example_equal(a, e));
    /* As in Python, True == 1. */
    dx_example *t1 = from_json("{\"k\": true}");
    dx_example *t2 = from_json("{\"k\": 1}");
    cr_expect(dx_example_equal(t1, t2));
    dx_example *f = dx_example_new();
    dx_example *g = dx_example_new();
    cr_expect(dx_example_equal(f, g));
    dx_example *list[] = {a, b, c, d, e, t1, t2, f, g};
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
        dx_example_free(list[i]);
}

Test(example, copy_is_deep_and_keeps_the_designation, .timeout = 10)
{
    dx_example *ex = from_json("{\"q\": \"x\", \"ctx\": [\"a\", \"b\"]}");
    const char *in[] = {"q"};
    cr_assert_eq(dx_example_with_inputs(ex, in, 1), DX_OK);
    dx_example *cp = dx_example_copy(ex);
    cr_assert_not_null(cp);
    cr_expect(dx_example_equal(ex, cp));
    cr_expect(dx_example_is_input(cp, "q"));
    cr_expect_neq(dx_example_get(ex, "ctx"), dx_example_get(cp, "ctx"));
    /* Changing the copy leaves the original alone. */
    cr_assert_eq(dx_example_set_json(cp, "ctx", "[]", NULL), DX_OK);
    cr_assert_eq(dx_example_set_str(cp, "new", "v"), DX_OK);
    expect_json(ex, "{\"q\":\"x\",\"ctx\":[\"a\",\"b\"]}");
    dx_example_free(ex);
    /* And the copy outlives the original. */
    expect_json(cp, "{\"q\":\"x\",\"ctx\":[],\"new\":\"v\"}");
    dx_example_free(cp);
    cr_expect_null(dx_example_copy(NULL));
}

Test(example, set_value_copies_the_callers_tree, .timeout = 10)
{
    cJSON *v = cJSON_Parse("{\"k\": [1, 2]}");
    cr_assert_not_null(v);
    dx_example *ex = dx_example_new();
    cr_assert_eq(dx_example_set_value(ex, "obj", v), DX_OK);
    cr_assert_eq(
        dx_example_set_value(ex, "member", cJSON_GetObjectItem(v, "k")), DX_OK);
    cJSON_Delete(v);
    expect_json(ex, "{\"obj\":{\"k\":[1,2]},\"member\":[1,2]}");
    dx_example_free(ex);
}

static char *temp_path(const char *tag)
{
    char *p = dx_malloc(256);
    cr_assert_not_null(p);
    snprintf(p, 256, "/tmp/dspex_test_example_%ld_%s", (long)getpid(), tag);
    return p;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fwrite(text, 1, strlen(text), f);
    fclose(f);
}

Test(example, jsonl_with_a_broken_line_names_the_line_and_column, .timeout = 10)
{
    char *path = temp_path("broken.jsonl");
    write_file(path, "{\"q\": \"a\", \"a\": 1}\n"
                     "{\"q\": \"b\", \"a\": 2}\n"
                     "{\"q\": \"c\" \"a\": 3}\n"
                     "{\"q\": \"d\", \"a\": 4}\n");
    dx_dataset *ds = (dx_dataset *)1;
    dx_diag d = {0};
    cr_expect_eq(dx_dataset_load(path, NULL, 0, &ds, &d), DX_ESYNTAX);
    cr_expect_null(ds);
    cr_expect_eq(d.code, DX_ESYNTAX);
    cr_expect_eq(d.line, 3);
    cr_expect_eq(d.column, 11);
    char want[512];
    snprintf(want, sizeof want, "%s:3: expected ',' or '}' at column 11", path);
    cr_expect_str_eq(d.msg, want);
    unlink(path);
    dx_free(path);
}

/* Python reads "\u0000" into a string; a dspex string would end there and
 * silently lose the rest, so the file is refused, saying where. An escaped
 * backslash followed by "u0000" is plain text and loads. */
Test(example, a_nul_character_in_a_string_is_refused_with_its_place,
     .timeout = 10)
{
    char *path = temp_path("nul.jsonl");
    write_file(path, "{\"q\": \"a\\\\u0000\", \"a\": 1}\n"
                     "{\"q\": \"abc\\u0000def\", \"a\": 2}\n");
    dx_dataset *ds = (dx_dataset *)1;
    dx_diag d = {0};
    cr_expect_eq(dx_dataset_load(path, NULL, 0, &ds, &d), DX_ESYNTAX);
    cr_expect_null(ds);
    cr_expect_eq(d.line, 2);
    cr_expect_eq(d.column, 11);
    char want[512];
    snprintf(want, sizeof want,
             "%s:2: a NUL character (\\u0000) in a string, which dspex "
             "strings cannot hold at column 11",
             path);
    cr_expect_str_eq(d.msg, want);
    write_file(path, "{\"q\": \"a\\\\u0000\", \"a\": 1}\n");
    cr_assert_eq(dx_dataset_load(path, NULL, 0, &ds, &d), DX_OK, "%s", d.msg);
    cr_expect_str_eq(dx_example_get_str(ds->items[0], "q", ""), "a\\u0000");
    dx_dataset_free(ds);
    unlink(path);
    dx_free(path);
}

Test(example, jsonl_skips_blank_lines_crlf_and_bom, .timeout = 10)
{
    const char *text = "\xEF\xBB\xBF{\"q\": \"a\", \"a\": 1}\r\n"
                       "\r\n"
                       "   \n"
                       "{\"q\": \"b\", \"a\": 2}";
    const char *in[] = {"q"};
    dx_dataset *ds = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_dataset_parse(text, strlen(text), "mem", in, 1, &ds, &d),
                 DX_OK, "%s", d.msg);
    cr_assert_eq(ds->n, 2);
    cr_expect_str_eq(dx_example_get_str(ds->items[1], "q", ""), "b");
    cr_expect(dx_example_is_input(ds->items[0], "q"));
    cr_expect_not(dx_example_is_input(ds->items[0], "a"));
    dx_dataset_free(ds);
}

Test(example, a_line_that_is_not_an_object_is_an_error, .timeout = 10)
{
    const char *text = "{\"q\": 1}\n\n[1, 2]\n";
    dx_dataset *ds = NULL;
    dx_diag d = {0};
    cr_expect_eq(
        dx_dataset_parse(text, strlen(text), "d.jsonl", NULL, 0, &ds, &d),
        DX_ESYNTAX);
    cr_expect_null(ds);
    cr_expect_eq(d.line, 3);
    cr_expect_str_eq(d.msg, "d.jsonl:3: expected a JSON object, got an array");
}

Test(example, json_array_files_load_too, .timeout = 10)
{
    const char *text = "\n  [\n {\"q\": \"a\", \"a\": 1},\n"
                       "  {\"q\": \"b\", \"a\": [true, null]}\n]\n";
    dx_dataset *ds = NULL;
    dx_diag d = {0};
    cr_assert_eq(
        dx_dataset_parse(text, strlen(text), "arr.json", NULL, 0, &ds, &d),
        DX_OK, "%s", d.msg);
    cr_assert_eq(ds->n, 2);
    expect_json(ds->items[1], "{\"q\":\"b\",\"a\":[true,null]}");
    cr_expect_not(dx_example_has_inputs(ds->items[0]));
    dx_dataset_free(ds);

    const char *bad = "[\n {\"q\": 1},\n {\"q\": 2,,}\n]";
    cr_expect_eq(
        dx_dataset_parse(bad, strlen(bad), "arr.json", NULL, 0, &ds, &d),
        DX_ESYNTAX);
    cr_expect_str_eq(d.msg, "arr.json:3: expected a string key at column 10");
    const char *notobj = "[{\"q\": 1}, 2]";
    cr_expect_eq(
        dx_dataset_parse(notobj, strlen(notobj), "arr.json", NULL, 0, &ds, &d),
        DX_ESYNTAX);
    cr_expect(strstr(d.msg, "item 1"), "%s", d.msg);
}

Test(example, save_then_load_gives_equal_examples, .timeout = 10)
{
    dx_dataset *ds = dx_dataset_new();
    cr_assert_not_null(ds);
    for (int i = 0; i < 20; i++) {
        dx_example *ex = dx_example_new();
        char q[32];
        snprintf(q, sizeof q, "question \"%d\"\n\xC3\xA9", i);
        cr_assert_eq(dx_example_set_str(ex, "question", q), DX_OK);
        cr_assert_eq(dx_example_set_int(ex, "answer", i), DX_OK);
        cr_assert_eq(dx_example_set_float(ex, "w", i / 3.0), DX_OK);
        cr_assert_eq(dx_example_set_json(ex, "ctx", "{\"k\": [1, 2.5]}", NULL),
                     DX_OK);
        cr_assert_eq(dx_dataset_append(ds, ex), DX_OK);
    }
    char *path = temp_path("roundtrip.jsonl");
    dx_diag d = {0};
    cr_assert_eq(dx_dataset_save_jsonl(ds, path, &d), DX_OK, "%s", d.msg);
    const char *in[] = {"question"};
    dx_dataset *back = NULL;
    cr_assert_eq(dx_dataset_load(path, in, 1, &back, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(back->n, ds->n);
    for (size_t i = 0; i < ds->n; i++) {
        cr_expect(dx_example_equal(ds->items[i], back->items[i]), "item %zu",
                  i);
        char *a = to_json(ds->items[i]), *b = to_json(back->items[i]);
        cr_expect_str_eq(a, b);
        dx_free(a);
        dx_free(b);
        cr_expect(dx_example_is_input(back->items[i], "question"));
    }
    /* A float that happens to be integral stays a float. */
    const cJSON *w = dx_example_get(back->items[3], "w");
    cr_expect_eq(w->valuedouble, 1.0);
    char *s = to_json(back->items[3]);
    cr_expect(strstr(s, "\"w\":1.0,"), "%s", s);
    dx_free(s);
    unlink(path);
    dx_free(path);
    dx_dataset_free(back);
    dx_dataset_free(ds);
}

Test(example, missing_file_is_eio_naming_the_path, .timeout = 10)
{
    dx_dataset *ds = (dx_dataset *)1;
    dx_diag d = {0};
    const char *path = "/nonexistent-dir/data.jsonl";
    cr_expect_eq(dx_dataset_load(path, NULL, 0, &ds, &d), DX_EIO);
    cr_expect_null(ds);
    cr_expect_str_eq(d.msg, "/nonexistent-dir/data.jsonl: No such file or "
                            "directory");
    dx_dataset *empty = dx_dataset_new();
    cr_expect_eq(dx_dataset_save_jsonl(empty, "/nonexistent-dir/out.jsonl", &d),
                 DX_EIO);
    cr_expect(strstr(d.msg, "/nonexistent-dir/out.jsonl"), "%s", d.msg);
    dx_dataset_free(empty);
}

Test(example, empty_text_is_an_empty_dataset, .timeout = 10)
{
    dx_dataset *ds = NULL;
    cr_assert_eq(dx_dataset_parse("\n\n", 2, "e", NULL, 0, &ds, NULL), DX_OK);
    cr_expect_eq(ds->n, 0);
    dx_dataset_free(ds);
    cr_expect_eq(dx_dataset_append(NULL, dx_example_new()), DX_EINVAL);
}

/* ---- allocation failure: fail the Nth allocation until the call works */

static long fail_at = -1;
static long n_allocs;

static void *f_malloc(size_t n, void *ud)
{
    (void)ud;
    return n_allocs++ == fail_at ? NULL : malloc(n);
}

static void *f_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    return n_allocs++ == fail_at ? NULL : realloc(p, n);
}

static void f_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const dx_allocator failing = {f_malloc, f_realloc, f_free, NULL};

Test(example, every_failed_allocation_is_enomem_and_leaks_nothing,
     .timeout = 20)
{
    const char *text = "{\"q\": \"a\", \"a\": [1, {\"k\": \"v\"}]}\n"
                       "{\"q\": \"b\", \"a\": 2.5, \"q\": \"c\"}\n";
    const char *in[] = {"q"};
    dx_set_allocator(&failing);
    bool done = false;
    for (fail_at = 0; fail_at < 10000 && !done; fail_at++) {
        n_allocs = 0;
        dx_dataset *ds = NULL;
        dx_diag d = {0};
        int rc = dx_dataset_parse(text, strlen(text), "m", in, 1, &ds, &d);
        if (rc != DX_OK) {
            cr_expect_eq(rc, DX_ENOMEM, "fail at %ld: %s", fail_at, d.msg);
            cr_expect_null(ds);
            continue;
        }
        dx_example *cp = dx_example_copy(ds->items[1]);
        dx_example *in_ex = NULL;
        char *s = NULL;
        int rc2 = cp ? dx_example_inputs(cp, &in_ex, NULL) : DX_ENOMEM;
        int rc3 = cp ? dx_example_to_json(cp, &s) : DX_ENOMEM;
        done = cp && rc2 == DX_OK && rc3 == DX_OK;
        if (rc2 != DX_OK)
            cr_expect_eq(rc2, DX_ENOMEM);
        if (rc3 != DX_OK)
            cr_expect_eq(rc3, DX_ENOMEM);
        if (done)
            cr_expect_str_eq(s, "{\"q\":\"c\",\"a\":2.5}");
        dx_free(s);
        dx_example_free(in_ex);
        dx_example_free(cp);
        dx_dataset_free(ds);
    }
    dx_set_allocator(NULL);
    cr_expect(done);
}

/* ---- CSV ------------------------------------------------------------------ */

static dx_dataset *csv_ok(const char *text)
{
    dx_dataset *ds = NULL;
    dx_diag d = {0};
    const char *in[] = {"question"};
    int rc = dx_dataset_parse(text, strlen(text), "data.csv", in, 1, &ds, &d);
    cr_assert_eq(rc, DX_OK, "%s", d.msg);
    return ds;
}

Test(example, csv_rows_become_examples_of_strings_keyed_by_the_header,
     .timeout = 10)
{
    dx_dataset *ds = csv_ok("\xEF\xBB\xBFquestion,answer,note\r\n"
                            "What is 2+2?,4,\r\n"
                            "\"Quoted, with comma\",\"He said \"\"hi\"\"\","
                            "\"two\nlines\"\n"
                            "\n"
                            "plain,,last\n");
    cr_assert_eq(ds->n, 3);
    expect_json(
        ds->items[0],
        "{\"question\":\"What is 2+2?\",\"answer\":\"4\",\"note\":\"\"}");
    expect_json(ds->items[1],
                "{\"question\":\"Quoted, with comma\",\"answer\":"
                "\"He said \\\"hi\\\"\",\"note\":\"two\\nlines\"}");
    expect_json(ds->items[2],
                "{\"question\":\"plain\",\"answer\":\"\",\"note\":\"last\"}");
    cr_expect(dx_example_is_input(ds->items[2], "question"));
    cr_expect_not(dx_example_is_input(ds->items[2], "answer"));
    dx_dataset_free(ds);

    /* No final line break; a header alone is an empty dataset. */
    ds = csv_ok("a,b\n1,2");
    cr_assert_eq(ds->n, 1);
    expect_json(ds->items[0], "{\"a\":\"1\",\"b\":\"2\"}");
    dx_dataset_free(ds);
    ds = csv_ok("a,b\r\n");
    cr_expect_eq(ds->n, 0);
    dx_dataset_free(ds);
    ds = csv_ok("");
    cr_expect_eq(ds->n, 0);
    dx_dataset_free(ds);
}

Test(example, csv_errors_name_the_file_line_and_column, .timeout = 10)
{
    static const struct {
        const char *text, *msg;
        int line, col;
    } cases[] = {
        {"a,b\n1,2,3\n", "data.csv:2:5: 3 fields, the header has 2", 2, 5},
        {"a,b\n1\n", "data.csv:2:1: 1 fields, the header has 2", 2, 1},
        {"a,b\nx,y\"z\n",
         "data.csv:2:4: a quote inside an unquoted field (quote the whole "
         "field and double the quote)",
         2, 4},
        {"a,b\n\"x\"y,z\n",
         "data.csv:2:4: expected ',' or the end of the line after a closing "
         "quote",
         2, 4},
        {"a,b\n1,2\n\"open,\nnever closed\n",
         "data.csv:3:1: quoted field never closed", 3, 1},
        {"a,,c\n", "data.csv:1:3: empty column name in the header", 1, 3},
        {"a,b,a\n1,2,3\n",
         "data.csv:1:5: column 'a' appears twice in the header", 1, 5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_dataset *ds = (dx_dataset *)1;
        dx_diag d = {0};
        int rc = dx_dataset_parse(cases[i].text, strlen(cases[i].text),
                                  "data.csv", NULL, 0, &ds, &d);
        cr_expect_eq(rc, DX_ESYNTAX, "case %zu", i);
        cr_expect_null(ds, "case %zu", i);
        cr_expect_str_eq(d.msg, cases[i].msg, "case %zu", i);
        cr_expect_eq(d.line, cases[i].line, "case %zu", i);
        cr_expect_eq(d.column, cases[i].col, "case %zu", i);
    }
    /* A NUL byte cannot become part of a string value. */
    dx_dataset *ds = NULL;
    dx_diag d = {0};
    cr_expect_eq(dx_dataset_parse("a\nx\0y\n", 6, "data.csv", NULL, 0, &ds, &d),
                 DX_ESYNTAX);
    cr_expect_str_eq(d.msg, "data.csv:2:2: a NUL byte in a field");
}

Test(example, a_file_named_csv_loads_as_csv, .timeout = 10)
{
    char path[] = "/tmp/dx_csv_XXXXXX.CSV";
    int fd = mkstemps(path, 4);
    cr_assert_geq(fd, 0);
    const char *text = "question,answer\n\"{\"\"not\"\": \"\"json\"\"}\",1\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    dx_dataset *ds = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_dataset_load(path, NULL, 0, &ds, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(ds->n, 1);
    expect_json(
        ds->items[0],
        "{\"question\":\"{\\\"not\\\": \\\"json\\\"}\",\"answer\":\"1\"}");
    dx_dataset_free(ds);
    unlink(path);
}

Test(example, a_failed_allocation_in_csv_is_enomem_and_leaks_nothing,
     .timeout = 20)
{
    const char *text = "q,a\n\"x, y\",1\nz,\"2\"\"\"\n";
    const char *in[] = {"q"};
    dx_set_allocator(&failing);
    bool done = false;
    for (fail_at = 0; fail_at < 10000 && !done; fail_at++) {
        n_allocs = 0;
        dx_dataset *ds = NULL;
        dx_diag d = {0};
        int rc = dx_dataset_parse(text, strlen(text), "m.csv", in, 1, &ds, &d);
        if (rc != DX_OK) {
            cr_expect_eq(rc, DX_ENOMEM, "fail at %ld: %s", fail_at, d.msg);
            cr_expect_null(ds);
            continue;
        }
        done = true;
        cr_expect_eq(ds->n, 2);
        dx_dataset_free(ds);
    }
    dx_set_allocator(NULL);
    cr_expect(done);
}
