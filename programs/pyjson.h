/*
 * pyjson.h — JSON the way Python DSPy writes and reads it, inside programs/.
 *
 * Prompts must match Python DSPy byte for byte, and DSPy renders values with
 * Python: `json.dumps(v, ensure_ascii=False)` (separators ", " and ": ",
 * non-ASCII kept, floats in Python's repr), `json.dumps(v, indent=2)`, and
 * `str(v)` for scalars (True/False/None, 1.0, 1e-05). LM answers are read
 * the way DSPy's json_repair does: code fences, Python literals, single
 * quotes and trailing commas are tolerated. Not installed.
 *
 * Every function allocates through dx_malloc (cJSON's hooks included).
 */
#ifndef DSPEX_PYJSON_H
#define DSPEX_PYJSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable string. p is NUL-terminated whenever len > 0 or after
 * dx__sb_cstr. Appends fail only on OOM; after a failure `oom` is set and
 * later appends do nothing, so a whole rendering is checked once. */
typedef struct dx__sb {
    char *p;
    size_t len;
    size_t cap;
    bool oom;
} dx__sb;

void dx__sb_init(dx__sb *b);
void dx__sb_free(dx__sb *b);
void dx__sb_put(dx__sb *b, const char *s, size_t n);
void dx__sb_puts(dx__sb *b, const char *s);
void dx__sb_putc(dx__sb *b, char c);
void dx__sb_printf(dx__sb *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The NUL-terminated text ("" when empty; NULL after OOM). */
const char *dx__sb_cstr(dx__sb *b);
/* Hand the buffer over (dx_free it); b is reset. NULL after OOM (b freed). */
char *dx__sb_take(dx__sb *b);

/* cJSON allocation hooks → dx_malloc (once; any thread). Call before any
 * cJSON use in programs/. */
void dx__pyjson_init(void);

/* Python repr() of a float: shortest text that reads back to v, "1.0" for
 * integral values, exponent form "1e-05" / "1e+16" where Python uses it
 * (exponent < -4 or >= 16), "inf", "-inf", "nan". buf of 32 bytes. */
void dx__pyfloat_repr(double v, char buf[32]);

/* cJSON keeps no int/float distinction, but Python prints 1 and 1.0
 * differently. Numbers that were written as floats (with '.', 'e' or 'E' in
 * the JSON text, or made as floats in C) carry this bit in cJSON's `type`
 * (cJSON itself only looks at the low 8 bits and copies the rest in
 * cJSON_Duplicate). dx__json_parse and dx__json_repair set it. */
#define DX__JSON_FLOAT (1 << 14)

/* Is this JSON number an integer as Python's json would have read it?
 * No DX__JSON_FLOAT bit, integral, and |v| < 2^63. */
bool dx__json_is_int(const cJSON *num);

/* json.dumps(v, ensure_ascii=False) with indent < 0 (", " / ": "
 * separators), or json.dumps(v, indent=indent, ensure_ascii=False) with
 * indent >= 0 ("," at line ends, ": "). Numbers: integers as integers,
 * others by dx__pyfloat_repr (NaN/Infinity as Python writes them). Strings
 * escaped as json.dumps does: \" \\ \n \r \t \b \f, other control bytes as
 * \u00XX, everything else (UTF-8) raw. */
void dx__pyjson_dump(dx__sb *b, const cJSON *v, int indent);
/* json.dumps(v, indent=indent, separators=(item_sep, key_sep),
 * ensure_ascii=False); e.g. "," and ":" for the tightest text. */
void dx__pyjson_dump_sep(dx__sb *b, const cJSON *v, int indent,
                         const char *item_sep, const char *key_sep);
/* s[0..n) as a JSON string literal, quotes included, escaped as above. */
void dx__pyjson_str(dx__sb *b, const char *s, size_t n);

/* json.dumps(v) with Python's defaults: ", " and ": " separators, no
 * indent, and ensure_ascii: every character outside ' '..'~' written as
 * \uXXXX (lower-case hex; a surrogate pair beyond the BMP). What DSPy's
 * Evaluate(save_as_json=...) writes. */
void dx__pyjson_dump_ascii(dx__sb *b, const cJSON *v);

/* Python repr() of a JSON value read by json.loads: 'text' (or "text" when
 * it holds ' and no "), True/False/None, ints, float repr (nan, inf),
 * [a, b] and {'k': v}. Non-printable characters (str.isprintable, from
 * the Unicode tables in metrics.c) are escaped as \xXX, \uXXXX or
 * \UXXXXXXXX. What Python's csv writes for a list or dict cell. */
void dx__pyrepr(dx__sb *b, const cJSON *v);

/* Unicode facts kept in metrics.c. One UTF-8 character of s[0..n) (n > 0):
 * its code point and *len bytes; an invalid byte decodes to 0x110000 + the
 * byte, *len 1. Python's str.isprintable for one code point. */
uint32_t dx__utf8_decode(const unsigned char *s, size_t n, size_t *len);
bool dx__unicode_printable(uint32_t cp);
/* Terminal columns cp takes: 2 for East Asian wide and fullwidth
 * characters, 0 for control characters, combining marks and format
 * characters, else 1 (an invalid byte from dx__utf8_decode too). */
int dx__display_width(uint32_t cp);

/* Python str() of a JSON value: a string as-is, true/false as True/False,
 * null as None, numbers as int or float repr; lists and objects as
 * dx__pyjson_dump with indent -1. */
void dx__pystr(dx__sb *b, const cJSON *v);

/* Parse an LM's JSON-ish text tolerantly, in this order: strict JSON of the
 * whole (trimmed) text; the same with a ```json ... ``` (or ``` ... ```)
 * fence removed; a lenient parse that accepts single-quoted strings,
 * True/False/None, trailing commas, and stops at the end of the first
 * complete value (so trailing prose is ignored); finally the first
 * balanced {...} (when want_object) or [...] found anywhere in the text.
 * NULL when nothing parses (or on OOM). want_object only affects the
 * balanced-brace search. */
cJSON *dx__json_repair(const char *text, size_t len, bool want_object);
/* The same; *oom tells a failed allocation (NULL returned) from text that
 * holds no JSON value. */
cJSON *dx__json_repair_oom(const char *text, size_t len, bool want_object,
                           bool *oom);

/* Strict JSON parse of exactly len bytes (dx_malloc'd tree); NULL if not
 * JSON. When it fails and line/column are not NULL they receive the
 * 1-based position of the error. */
cJSON *dx__json_parse(const char *text, size_t len, int *line, int *column);
/* The same, and on failure *what (when not NULL) is a static text saying
 * what was wrong where reading stopped: "expected ',' or '}'", "expected a
 * value", "unterminated string", "unexpected text after the JSON value".
 * Accepts what Python's json.loads does (NaN, Infinity, -Infinity too);
 * a repeated key keeps its first place and its last value, as in Python. */
cJSON *dx__json_parse_msg(const char *text, size_t len, int *line, int *column,
                          const char **what);

/* ---- files (fileio.c) ---- */

#include "dspex/diag.h"

/* Replace path with data[0..len): written to a temporary file beside it,
 * synced, then renamed over it, so a reader never sees half a file.
 * DX_OK; DX_EIO / DX_EINVAL with diag naming the file and the reason. */
int dx__write_file_atomic(const char *path, const char *data, size_t len,
                          dx_diag *diag);
/* Append the whole file to out (NUL-terminated after). DX_OK, DX_EIO,
 * DX_ENOMEM, with diag naming the file. */
int dx__read_file(const char *path, dx__sb *out, dx_diag *diag);

#endif
