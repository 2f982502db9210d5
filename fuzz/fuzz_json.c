/*
 * fuzz_json.c — fuzz target for the JSON readers of programs/pyjson.c: the
 * strict reader (dx__json_parse_msg: Python's json.loads, NaN/Infinity
 * too), the lenient LM-answer reader (dx__json_repair: fences, single
 * quotes, True/None, trailing commas, the first balanced value) and the
 * Python-style writer (dx__pyjson_dump, dx__pystr). The first byte's low
 * bit is want_object; the rest is the text.
 * Invariants: whatever either reader accepts, the writer renders as text
 * the strict reader accepts, and rendering that again gives the same text
 * (so a value survives save → load → save); a strict failure reports a
 * 1-based line and column and says what was wrong.
 */
#include <cjson/cJSON.h>

#include "dspex/alloc.h"
#include "fuzz.h"
#include "pyjson.h"

/* Render v, read it back strictly, render again: both texts must match. */
static void check_roundtrip(const cJSON *v, int indent)
{
    dx__sb a, b;
    dx__sb_init(&a);
    dx__sb_init(&b);
    dx__pyjson_dump(&a, v, indent);
    const char *ta = dx__sb_cstr(&a);
    FUZZ_CHECK(ta != NULL);
    int line = 0, col = 0;
    const char *what = NULL;
    cJSON *back = dx__json_parse_msg(ta, strlen(ta), &line, &col, &what);
    if (!back) {
        fprintf(stderr, "rendered text does not read back (%d:%d %s): %s\n",
                line, col, what ? what : "?", ta);
        abort();
    }
    dx__pyjson_dump(&b, back, indent);
    const char *tb = dx__sb_cstr(&b);
    FUZZ_CHECK(tb != NULL);
    if (strcmp(ta, tb) != 0) {
        fprintf(stderr, "render → read → render changed the text:\n%s\n%s\n",
                ta, tb);
        abort();
    }
    dx__sb pys;
    dx__sb_init(&pys);
    dx__pystr(&pys, v);
    FUZZ_CHECK(dx__sb_cstr(&pys) != NULL);
    dx__sb_free(&pys);
    cJSON_Delete(back);
    dx__sb_free(&a);
    dx__sb_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    dx__pyjson_init();
    bool want_object = data[0] & 1;
    size_t len = size - 1;
    /* Not NUL-terminated on purpose: the readers must honour len. */
    char *text = malloc(len ? len : 1);
    FUZZ_CHECK(text != NULL);
    if (len)
        memcpy(text, data + 1, len);

    int line = 0, col = 0;
    const char *what = NULL;
    cJSON *strict = dx__json_parse_msg(text, len, &line, &col, &what);
    if (strict) {
        check_roundtrip(strict, -1);
        check_roundtrip(strict, 2);
        cJSON_Delete(strict);
    } else {
        FUZZ_CHECK(line >= 1 && col >= 1);
        FUZZ_CHECK(what != NULL && what[0] != '\0');
    }

    cJSON *lenient = dx__json_repair(text, len, want_object);
    if (lenient) {
        check_roundtrip(lenient, -1);
        cJSON_Delete(lenient);
    }
    free(text);
    return 0;
}
