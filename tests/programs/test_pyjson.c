/*
 * test_pyjson.c — Python-compatible JSON inside programs/: float repr,
 * json.dumps compact and indented, str() of values, the strict reader's
 * error positions and messages, and the tolerant reader for LM answers.
 * Expected texts are what CPython 3 prints for the same values.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "pyjson.h"

static void check_repr(double v, const char *want)
{
    char buf[32];
    dx__pyfloat_repr(v, buf);
    cr_expect_str_eq(buf, want, "repr(%.17g)", v);
}

Test(pyjson, float_repr_matches_python, .timeout = 10)
{
    check_repr(0.1, "0.1");
    check_repr(1.0, "1.0");
    check_repr(1e16, "1e+16");
    check_repr(1.5e16, "1.5e+16");
    check_repr(1e15, "1000000000000000.0");
    check_repr(1e-5, "1e-05");
    check_repr(0.0001, "0.0001");
    check_repr(123456789012345678.0, "1.2345678901234568e+17");
    check_repr(2.5, "2.5");
    check_repr(-0.0, "-0.0");
    check_repr(0.0, "0.0");
    check_repr(1.0 / 3.0, "0.3333333333333333");
    check_repr(0.1 + 0.2, "0.30000000000000004");
    check_repr(123.0, "123.0");
    check_repr(1e22, "1e+22");
    check_repr(5e-324, "5e-324");
    check_repr(1.7976931348623157e308, "1.7976931348623157e+308");
    check_repr(-1.2345e-7, "-1.2345e-07");
    check_repr(INFINITY, "inf");
    check_repr(-INFINITY, "-inf");
    check_repr(NAN, "nan");
}

static cJSON *parse(const char *text)
{
    int line = 0, col = 0;
    const char *what = NULL;
    cJSON *v = dx__json_parse_msg(text, strlen(text), &line, &col, &what);
    cr_assert_not_null(v, "parse failed: %s at %d:%d", what, line, col);
    return v;
}

static char *dumps(const char *text, int indent)
{
    cJSON *v = parse(text);
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, v, indent);
    cJSON_Delete(v);
    char *s = dx__sb_take(&b);
    cr_assert_not_null(s);
    return s;
}

/* The same value as json.dumps sees it: keys in order, 2.0 a float. */
static const char *sample =
    "{\"b\": [1, 2.0, {\"c\": null}], \"a\": \"h\xC3\xA9 \xE2\x98\x83\","
    " \"q\": \"say \\\"hi\\\"\\\\ \\u001f\\n\\t\", \"e\": {}, \"l\": [],"
    " \"t\": true, \"f\": false}";

Test(pyjson, dumps_compact_matches_python, .timeout = 10)
{
    char *s = dumps(sample, -1);
    cr_expect_str_eq(s, "{\"b\": [1, 2.0, {\"c\": null}], \"a\": \"h\xC3\xA9 "
                        "\xE2\x98\x83\", \"q\": \"say \\\"hi\\\"\\\\ \\u001f\\n"
                        "\\t\", \"e\": {}, \"l\": [], \"t\": true, \"f\": "
                        "false}");
    dx_free(s);
}

Test(pyjson, dumps_indent_two_matches_python, .timeout = 10)
{
    char *s = dumps(sample, 2);
    cr_expect_str_eq(s, "{\n"
                        "  \"b\": [\n"
                        "    1,\n"
                        "    2.0,\n"
                        "    {\n"
                        "      \"c\": null\n"
                        "    }\n"
                        "  ],\n"
                        "  \"a\": \"h\xC3\xA9 \xE2\x98\x83\",\n"
                        "  \"q\": \"say \\\"hi\\\"\\\\ \\u001f\\n\\t\",\n"
                        "  \"e\": {},\n"
                        "  \"l\": [],\n"
                        "  \"t\": true,\n"
                        "  \"f\": false\n"
                        "}");
    dx_free(s);
    s = dumps("{\"a\": []}", 0);
    cr_expect_str_eq(s, "{\n\"a\": []\n}");
    dx_free(s);
}

Test(pyjson, dumps_writes_nan_and_infinity_as_python, .timeout = 10)
{
    char *s = dumps("[NaN, Infinity, -Infinity, 1e-7, 100, 1E2, -0.0]", -1);
    cr_expect_str_eq(s, "[NaN, Infinity, -Infinity, 1e-07, 100, 100.0, -0.0]");
    dx_free(s);
}

Test(pyjson, raw_control_bytes_are_escaped_in_lowercase_hex, .timeout = 10)
{
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_str(&b, "a\x01\x1f\x7f/\b\f\r", 8);
    cr_expect_str_eq(dx__sb_cstr(&b), "\"a\\u0001\\u001f\x7f/\\b\\f\\r\"");
    dx__sb_free(&b);
}

Test(pyjson, tight_separators_and_empty_containers, .timeout = 10)
{
    cJSON *v = parse("{\"x\": [1, {}], \"y\": [], \"z\": \"s\"}");
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump_sep(&b, v, -1, ",", ":");
    cr_expect_str_eq(dx__sb_cstr(&b), "{\"x\":[1,{}],\"y\":[],\"z\":\"s\"}");
    dx__sb_free(&b);
    cJSON_Delete(v);
}

static char *pystr(const char *json)
{
    cJSON *v = parse(json);
    dx__sb b;
    dx__sb_init(&b);
    dx__pystr(&b, v);
    cJSON_Delete(v);
    return dx__sb_take(&b);
}

Test(pyjson, pystr_renders_scalars_like_python_str, .timeout = 10)
{
    static const char *cases[][2] = {
        {"\"plain text\"", "plain text"},
        {"true", "True"},
        {"false", "False"},
        {"null", "None"},
        {"42", "42"},
        {"-7", "-7"},
        {"1.0", "1.0"},
        {"0.00001", "1e-05"},
        {"1e16", "1e+16"},
        {"Infinity", "inf"},
        {"[1, \"a\", null]", "[1, \"a\", null]"},
        {"{\"k\": 2.5}", "{\"k\": 2.5}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *s = pystr(cases[i][0]);
        cr_expect_str_eq(s, cases[i][1], "str(%s)", cases[i][0]);
        dx_free(s);
    }
}

Test(pyjson, ints_and_floats_keep_their_kind, .timeout = 10)
{
    cJSON *v = parse("[3, 3.0, 3e0, 9007199254740993]");
    cr_expect(dx__json_is_int(cJSON_GetArrayItem(v, 0)));
    cr_expect_not(dx__json_is_int(cJSON_GetArrayItem(v, 1)));
    cr_expect_not(dx__json_is_int(cJSON_GetArrayItem(v, 2)));
    cr_expect(dx__json_is_int(cJSON_GetArrayItem(v, 3)));
    /* The float bit survives a deep copy and does not confuse cJSON. */
    cJSON *d = cJSON_Duplicate(v, 1);
    cr_expect(cJSON_IsNumber(cJSON_GetArrayItem(d, 1)));
    cr_expect_not(dx__json_is_int(cJSON_GetArrayItem(d, 1)));
    cr_expect(cJSON_Compare(v, d, 1));
    cJSON_Delete(d);
    cJSON_Delete(v);
}

Test(pyjson, repeated_keys_keep_first_place_and_last_value, .timeout = 10)
{
    char *s = dumps("{\"a\": 1, \"b\": 2, \"a\": 3}", -1);
    cr_expect_str_eq(s, "{\"a\": 3, \"b\": 2}");
    dx_free(s);
    /* Replacing the last member must keep the list's tail right. */
    cJSON *v = parse("{\"a\": 1, \"b\": 2, \"b\": 5}");
    cJSON_AddNumberToObject(v, "c", 4);
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, v, -1);
    cr_expect_str_eq(dx__sb_cstr(&b), "{\"a\": 1, \"b\": 5, \"c\": 4}");
    dx__sb_free(&b);
    cJSON_Delete(v);
}

Test(pyjson, unicode_escapes_decode_to_utf8, .timeout = 10)
{
    char *s = pystr("\"\\u00e9\\u2603\\ud83d\\ude00\\ud800x\"");
    cr_expect_str_eq(s, "\xC3\xA9\xE2\x98\x83\xF0\x9F\x98\x80\xEF\xBF\xBDx");
    dx_free(s);
}

static void check_error(const char *text, int line, int col, const char *what)
{
    int l = 0, c = 0;
    const char *w = NULL;
    cJSON *v = dx__json_parse_msg(text, strlen(text), &l, &c, &w);
    cr_expect_null(v, "%s parsed", text);
    cJSON_Delete(v);
    cr_expect_eq(l, line, "%s: line %d, want %d", text, l, line);
    cr_expect_eq(c, col, "%s: column %d, want %d", text, c, col);
    cr_expect_str_eq(w, what, "%s", text);
}

Test(pyjson, strict_errors_say_what_and_where, .timeout = 10)
{
    check_error("{\"a\": 1 \"b\": 2}", 1, 9, "expected ',' or '}'");
    check_error("[1, 2\n, 3 4]", 2, 5, "expected ',' or ']'");
    check_error("{\n  \"a\" 1\n}", 2, 7, "expected ':'");
    check_error("{\"a\": 1,}", 1, 9, "expected a string key");
    check_error("{'a': 1}", 1, 2, "expected a string key");
    check_error("", 1, 1, "expected a value");
    check_error("[True]", 1, 2, "expected a value");
    check_error("{\"a\": \"x", 1, 7, "unterminated string");
    check_error("{\"a\": 1} x", 1, 10, "unexpected text after the JSON value");
    check_error("[01]", 1, 2, "invalid number");
    check_error("[\"a\nb\"]", 1, 4, "control character in string");
    check_error("[\"\\q\"]", 1, 3, "invalid escape in string");
    int l = 7, c = 7;
    cJSON *v = dx__json_parse("{\"a\":", 5, &l, &c);
    cr_expect_null(v);
    cr_expect_eq(l, 1);
    cr_expect_eq(c, 6);
}

Test(pyjson, strict_reads_exactly_len_bytes, .timeout = 10)
{
    const char *t = "[1, 2]garbage";
    cJSON *v = dx__json_parse(t, 6, NULL, NULL);
    cr_assert_not_null(v);
    cr_expect_eq(cJSON_GetArraySize(v), 2);
    cJSON_Delete(v);
    cr_expect_null(dx__json_parse(t, 5, NULL, NULL));
}

Test(pyjson, deep_nesting_is_refused_not_a_crash, .timeout = 10)
{
    char deep[2001];
    memset(deep, '[', 1000);
    memset(deep + 1000, ']', 1000);
    deep[2000] = '\0';
    int l = 0, c = 0;
    const char *w = NULL;
    cr_expect_null(dx__json_parse_msg(deep, 2000, &l, &c, &w));
    cr_expect_str_eq(w, "nesting too deep");
    cr_expect_null(dx__json_repair(deep, 2000, false));
}

static cJSON *repair(const char *text, bool want_object)
{
    return dx__json_repair(text, strlen(text), want_object);
}

static void check_repair(const char *text, bool want_object, const char *want)
{
    cJSON *v = repair(text, want_object);
    cr_assert_not_null(v, "repair failed: %s", text);
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, v, -1);
    cr_expect_str_eq(dx__sb_cstr(&b), want, "repair(%s)", text);
    dx__sb_free(&b);
    cJSON_Delete(v);
}

Test(pyjson, repair_reads_strict_json_and_fences, .timeout = 10)
{
    check_repair("  {\"answer\": \"Paris\"}\n", true,
                 "{\"answer\": \"Paris\"}");
    check_repair("```json\n{\"answer\": \"Paris\", \"n\": 2}\n```", true,
                 "{\"answer\": \"Paris\", \"n\": 2}");
    check_repair("Here you go:\n```\n[1, 2]\n```\nDone.", false, "[1, 2]");
    check_repair("```JSON {\"a\": 1}```", true, "{\"a\": 1}");
    /* An LM's NUL character, which no dspex string holds, reads as U+FFFD
     * rather than cutting the answer short. */
    check_repair("{\"answer\": \"Par\\u0000is\"}", true,
                 "{\"answer\": \"Par\xef\xbf\xbd"
                 "is\"}");
}

Test(pyjson, repair_ignores_prose_before_and_after, .timeout = 10)
{
    check_repair("{\"a\": 1} I hope this helps!", true, "{\"a\": 1}");
    check_repair("Sure! The result is {\"a\": {\"b\": [1, 2]}} as requested.",
                 true, "{\"a\": {\"b\": [1, 2]}}");
    check_repair("The list: [\"x\", \"y\"] end", false, "[\"x\", \"y\"]");
}

Test(pyjson, repair_accepts_python_literals_and_quotes, .timeout = 10)
{
    check_repair("{'a': 'b'}", true, "{\"a\": \"b\"}");
    check_repair("{'ok': True, 'none': None, 'no': False}", true,
                 "{\"ok\": true, \"none\": null, \"no\": false}");
    check_repair("{\"a\": [1, 2,], \"b\": 3,}", true,
                 "{\"a\": [1, 2], \"b\": 3}");
    check_repair("{'q': 'don\\'t'}", true, "{\"q\": \"don't\"}");
    check_repair("{answer: \"x\"}", true, "{\"answer\": \"x\"}");
}

Test(pyjson, repair_handles_braces_inside_strings, .timeout = 10)
{
    check_repair("Result: {\"code\": \"if (x) { y(); }\", \"n\": \"]}\"} ok",
                 true, "{\"code\": \"if (x) { y(); }\", \"n\": \"]}\"}");
    check_repair("note {not json} then {\"a\": \"}\"}", true, "{\"a\": \"}\"}");
}

Test(pyjson, repair_prefers_an_object_when_one_is_wanted, .timeout = 10)
{
    check_repair("1. The answer is {\"a\": 1}", true, "{\"a\": 1}");
    check_repair("42 is it", false, "42");
}

Test(pyjson, repair_gives_null_for_garbage, .timeout = 10)
{
    cr_expect_null(repair("", true));
    cr_expect_null(repair("I cannot answer that.", true));
    cr_expect_null(repair("{{{{ ]]]", true));
    cr_expect_null(repair("{\"a\": ", true));
    cr_expect_null(repair("Nonetheless, no.", false));
    cr_expect_null(dx__json_repair(NULL, 0, true));
}

Test(pyjson, string_builder_printf_grows_and_take_hands_over, .timeout = 10)
{
    dx__sb b;
    dx__sb_init(&b);
    cr_expect_str_eq(dx__sb_cstr(&b), "");
    char *empty = dx__sb_take(&b);
    cr_assert_not_null(empty);
    cr_expect_str_eq(empty, "");
    dx_free(empty);
    for (int i = 0; i < 100; i++)
        dx__sb_printf(&b, "%d-%s;", i, "abcdefghijklmnopqrstuvwxyz0123456789");
    cr_expect_eq(b.len, 100 * 38 + 10 * 1 + 90 * 2);
    cr_expect(strncmp(dx__sb_cstr(&b), "0-abc", 5) == 0);
    char big[300];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    size_t before = b.len;
    dx__sb_printf(&b, "%s", big);
    cr_expect_eq(b.len, before + 299);
    cr_expect_eq(b.p[b.len], '\0');
    char *s = dx__sb_take(&b);
    cr_expect_null(b.p);
    cr_expect_eq(strlen(s), before + 299);
    dx_free(s);
}

/* ---- allocation failure ---------------------------------------------- */

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

Test(pyjson, failed_allocations_give_null_and_leak_nothing, .timeout = 20)
{
    const char *text = "Sure: ```json\n{'a': [1, 2.5, {\"k\": \"\\u00e9\"}], "
                       "'b': True,}\n``` done";
    dx__pyjson_init();
    dx_set_allocator(&failing);
    bool done = false;
    for (fail_at = 0; fail_at < 10000 && !done; fail_at++) {
        n_allocs = 0;
        cJSON *v = dx__json_repair(text, strlen(text), true);
        if (!v)
            continue;
        dx__sb b;
        dx__sb_init(&b);
        dx__pyjson_dump(&b, v, 2);
        cJSON_Delete(v);
        char *s = dx__sb_take(&b);
        if (!s)
            continue;
        /* A failure inside one stage may let a later stage succeed; what
         * comes out is still the whole answer. */
        cr_expect_str_eq(s, "{\n  \"a\": [\n    1,\n    2.5,\n    {\n"
                            "      \"k\": \"\xC3\xA9\"\n    }\n  ],\n"
                            "  \"b\": true\n}");
        dx_free(s);
        done = true;
    }
    dx_set_allocator(NULL);
    cr_expect(done);
}
