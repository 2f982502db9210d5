/*
 * test_jparse.c — the providers' JSON parser (providers/jparse.c) against
 * cJSON_ParseWithLength, which it replaces for every answer and every
 * request the local server reads and must match node for node: random texts
 * of every value type with whitespace of every kind, escapes valid and
 * broken (surrogate pairs, lone halves, bad hex), numbers in every form
 * strtod reads or stops inside, byte order marks, trailing text, and the
 * same texts cut and mutated byte by byte (both parsers refuse, or both give
 * the same tree), each also through dx__jparse_block (the tree in a few
 * blocks, freed with dx__jfree_block). Also the nesting limit, lengths that end inside a value,
 * and that cJSON_Delete frees what it built (the sanitizer and valgrind
 * builds check that).
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "../jcodec_compare.h"
#include "codec_int.h"
#include "dspex/alloc.h"

static uint64_t rng = 0x2545F4914F6CDD1Dull;

static uint64_t next(void)
{
    return jc_rand(&rng);
}

typedef struct text {
    char buf[4096];
    size_t len;
} text;

static void put(text *t, const char *s)
{
    size_t n = strlen(s);
    if (t->len + n < sizeof t->buf) {
        memcpy(t->buf + t->len, s, n);
        t->len += n;
    }
}

static void put_byte(text *t, char c)
{
    if (t->len + 1 < sizeof t->buf)
        t->buf[t->len++] = c;
}

static void space(text *t)
{
    static const char *const ws[] = {"",        "",     " ",    "\n",
                                     "\t\r\n ", "\x01", "\x1f", "\x0b"};
    put(t, ws[next() % (sizeof ws / sizeof ws[0])]);
}

static void string_lit(text *t)
{
    static const char *const pieces[] = {
        "plain",
        " ",
        "\\n",
        "\\\"",
        "\\\\",
        "\\/",
        "\\b\\f\\r\\t",
        "\\u00e9",
        "\\u0041",
        "\\uD83D\\uDE00",
        "\\ud83d\\ude00",
        "\\uDE00",
        "\\uD83D",
        "\\uD83Dx",
        "\\uD83D\\u0041",
        "\\uZZZZ",
        "\\u00zz",
        "\\u12",
        "\\x",
        "\\",
        "é",
        "日本",
        "\x01",
        "\x7f",
        "\\u0000",
        "a\\u0000b",
    };
    put_byte(t, '"');
    for (size_t n = next() % 6; n > 0; n--)
        put(t, pieces[next() % (sizeof pieces / sizeof pieces[0])]);
    put_byte(t, '"');
}

static void number_lit(text *t)
{
    static const char *const forms[] = {
        "0",
        "-0",
        "7",
        "-42",
        "007",
        "123456789012345",
        "1234567890123456",
        "12345678901234567890",
        "-999999999999999",
        "2147483647",
        "2147483648",
        "-2147483648",
        "-2147483649",
        "1.5",
        "-0.25",
        "1e5",
        "1E-5",
        "1e+5",
        "1.5e",
        "1.",
        ".5",
        "1e999",
        "-1e999",
        "1e-400",
        "0.1e1",
        "+1",
        "--1",
        "1-2",
        "1.2.3",
        "9e",
        "123456789012345678901234567890123456789012345678901234567890"
        "123456789",
        "0.000000000000000000000000000000000000000000000000000000000001"
        "2345",
    };
    put(t, forms[next() % (sizeof forms / sizeof forms[0])]);
}

static void value(text *t, int depth)
{
    space(t);
    /* Mostly containers at the top, so most texts hold many values. */
    unsigned kind = depth == 0 && next() % 4 != 0
                        ? 5 + (unsigned)(next() % 2)
                        : (unsigned)(next() % (depth > 5 ? 5 : 7));
    switch (kind) {
    case 0:
        put(t, next() % 4 ? "null" : "nul");
        break;
    case 1:
        put(t, next() % 2 ? "true" : "false");
        break;
    case 2:
    case 3:
        number_lit(t);
        break;
    case 4:
        string_lit(t);
        break;
    case 5:
        put_byte(t, '[');
        for (size_t n = next() % 4; n > 0; n--) {
            value(t, depth + 1);
            if (n > 1 || next() % 8 == 0)
                put_byte(t, ',');
        }
        space(t);
        put_byte(t, ']');
        break;
    default:
        put_byte(t, '{');
        for (size_t n = next() % 4; n > 0; n--) {
            space(t);
            string_lit(t);
            space(t);
            put_byte(t, ':');
            value(t, depth + 1);
            if (n > 1 || next() % 8 == 0)
                put_byte(t, ',');
        }
        space(t);
        put_byte(t, '}');
    }
    space(t);
}

static void assert_same_parse(const char *s, size_t n, int round)
{
    cJSON *want = cJSON_ParseWithLength(s, n);
    cJSON *got = dx__jparse(s, n);
    const char *d = jc_difference(got, want);
    if (d != NULL) {
        char *w = want ? cJSON_PrintUnformatted(want) : NULL;
        char *g = got ? cJSON_PrintUnformatted(got) : NULL;
        cr_assert_fail("round %d: %s\n text %.*s\n  got %s\n want %s", round, d,
                       (int)n, s, g ? g : "(refused)", w ? w : "(refused)");
    }
    /* The same tree in blocks (dx__jparse_block): the same answer. */
    cJSON *in_block = dx__jparse_block(s, n);
    d = jc_difference(in_block, want);
    if (d != NULL)
        cr_assert_fail("round %d, block: %s\n text %.*s", round, d, (int)n, s);
    dx__jfree_block(in_block);
    cJSON_Delete(want);
    cJSON_Delete(got);
}

Test(jparse, parses_random_texts_as_cjson_does, .timeout = 60)
{
    dx__json_init();
    for (int round = 0; round < 30000; round++) {
        text t = {.len = 0};
        if (next() % 16 == 0)
            put(&t, "\xEF\xBB\xBF");
        value(&t, 0);
        if (next() % 8 == 0)
            put(&t, next() % 2 ? "garbage" : "]");
        assert_same_parse(t.buf, t.len, round);
    }
}

Test(jparse, refuses_and_accepts_mutated_texts_as_cjson_does, .timeout = 60)
{
    dx__json_init();
    for (int round = 0; round < 30000; round++) {
        text t = {.len = 0};
        value(&t, 0);
        /* Cut it short, or change, drop or add a few bytes. */
        if (t.len > 0 && next() % 3 == 0)
            t.len = next() % t.len;
        for (size_t k = next() % 4; k > 0 && t.len > 0; k--) {
            size_t at = next() % t.len;
            switch (next() % 3) {
            case 0:
                t.buf[at] = (char)(next() % 256);
                break;
            case 1:
                memmove(t.buf + at, t.buf + at + 1, t.len - at - 1);
                t.len--;
                break;
            default:
                if (t.len + 1 < sizeof t.buf) {
                    memmove(t.buf + at + 1, t.buf + at, t.len - at);
                    t.buf[at] = "[]{}\",:\\u0e-. "[next() % 15];
                    t.len++;
                }
            }
        }
        assert_same_parse(t.buf, t.len, round);
    }
}

Test(jparse, agrees_on_the_edges, .timeout = 10)
{
    dx__json_init();
    static const char *const cases[] = {
        "",
        " ",
        "[",
        "[ ",
        "[[]",
        "[1",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\"}",
        "{\"a\":}",
        "{1:2}",
        "[]x",
        "{} {}",
        "01",
        "-",
        "[-]",
        "1.5e",
        "\"\\uZZZZ\"",
        "\"a\\u00zzb\"",
        "\"\\uD800\\uDC00\"",
        "\"\\uDC00\"",
        "\"\\uD800\"",
        "\"abc",
        "\"abc\\",
        "\"abc\\\"",
        "nul",
        "nulll",
        "truex",
        "\xEF\xBB\xBF[1]",
        "\xEF\xBB",
        "\x01[2]",
        "[\"\x01\x02\"]",
        "{\"\":\"\"}",
        "[1e999,-1e999]",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_same_parse(cases[i], strlen(cases[i]), (int)i);
    /* A length that stops inside the text: only that much is read. */
    const char *s = "{\"a\":[1,2,3]}";
    for (size_t n = 0; n <= strlen(s); n++)
        assert_same_parse(s, n, (int)n);
    /* A NUL inside the length is whitespace between values, and a byte of
     * a string. */
    assert_same_parse("\0[1]", 4, 0);
    assert_same_parse("[\"a\0b\"]", 7, 1);
    cr_assert_null(dx__jparse(NULL, 3));
}

Test(jparse, nests_as_deep_as_cjson_and_no_deeper, .timeout = 10)
{
    dx__json_init();
    static char deep[2 * 1002 + 1];
    for (int levels = 998; levels <= 1002; levels++) {
        for (int i = 0; i < levels; i++) {
            deep[i] = '[';
            deep[levels + i] = ']';
        }
        size_t n = (size_t)levels * 2;
        assert_same_parse(deep, n, levels);
        cJSON *j = dx__jparse(deep, n);
        cr_assert_eq(j != NULL, levels <= 1000, "%d levels", levels);
        cJSON_Delete(j);
    }
}

/* Strings are scanned 16 bytes a step for their closing quote or an
 * escape: each at every place in and around the first steps, with raw
 * control and high bytes on the way. */
Test(jparse, finds_quotes_and_escapes_at_every_offset_as_cjson_does,
     .timeout = 30)
{
    dx__json_init();
    static const char *const pieces[] = {"\\\"",     "\\\\",           "\\n",
                                         "\\u00e9",  "\\ud83d\\ude00", "\x01",
                                         "\xC3\xA9", "\x7F",           "/"};
    char s[128];
    int round = 0;
    for (size_t len = 0; len < 70; len++) {
        for (size_t pos = 0; pos <= len; pos++) {
            for (size_t k = 0; k < sizeof pieces / sizeof *pieces; k++) {
                size_t n = 0;
                s[n++] = '"';
                for (size_t i = 0; i < len; i++) {
                    if (i == pos) {
                        size_t m = strlen(pieces[k]);
                        memcpy(s + n, pieces[k], m);
                        n += m;
                    }
                    s[n++] = (char)('a' + i % 26);
                }
                if (pos == len) {
                    size_t m = strlen(pieces[k]);
                    memcpy(s + n, pieces[k], m);
                    n += m;
                }
                s[n++] = '"';
                assert_same_parse(s, n, round);
                /* Unterminated: refused by both, whatever came before. */
                assert_same_parse(s, n - 1, round++);
            }
        }
    }
}

Test(jparse, reads_what_the_printer_wrote, .timeout = 10)
{
    dx__json_init();
    const char *s = "{\"model\":\"m\",\"n\":3,\"t\":0.25,\"ok\":true,"
                    "\"list\":[1,\"two\",null,{\"k\":\"v\\n\\u00e9\"}]}";
    cJSON *j = dx__jparse(s, strlen(s));
    cr_assert_not_null(j);
    char *back = dx__jprint(j);
    cr_assert_str_eq(back, "{\"model\":\"m\",\"n\":3,\"t\":0.25,\"ok\":true,"
                           "\"list\":[1,\"two\",null,{\"k\":\"v\\né\"}]}");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(j, "n")->valueint, 3);
    /* Children can be appended to: the first child's prev is the last. */
    cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "list");
    cr_assert(cJSON_AddItemToArray(list, cJSON_CreateNumber(5)));
    cr_assert_eq(cJSON_GetArraySize(list), 5);
    cr_assert_eq(cJSON_GetArrayItem(list, 4)->valueint, 5);
    dx_free(back);
    cJSON_Delete(j);
}
