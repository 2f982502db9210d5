/*
 * pyjson.c — JSON as Python DSPy writes and reads it (see pyjson.h): the
 * string builder, Python's float repr, json.dumps and str() rendering, and
 * one recursive-descent reader with two modes. The strict mode is what
 * Python's json.loads accepts (NaN/Infinity included) and says what it
 * expected where it stopped; the lenient mode is the LM-answer reader behind
 * dx__json_repair (single quotes, Python literals, trailing commas, bare
 * keys, raw control characters in strings).
 *
 * The reader is ours rather than cJSON's parser because users need to be
 * told what was expected at which column (a dataset line, a saved program),
 * because Python keeps the last of duplicate keys in the first one's place,
 * and because Python's json tells 1 from 1.0: numbers read with a fraction
 * or exponent carry DX__JSON_FLOAT so they print back as floats.
 */
#include "pyjson.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"

/* A rendering larger than this is treated like OOM: bounded buffers. */
#define SB_MAX ((size_t)1 << 30)
/* Deep enough for any real document; shallow enough for a 16 KiB process
 * stack at worst. */
#define MAX_DEPTH 200

/* ---- string builder --------------------------------------------------- */

void dx__sb_init(dx__sb *b)
{
    b->p = NULL;
    b->len = 0;
    b->cap = 0;
    b->oom = false;
}

void dx__sb_free(dx__sb *b)
{
    dx_free(b->p);
    dx__sb_init(b);
}

static bool sb_reserve(dx__sb *b, size_t extra)
{
    if (b->oom)
        return false;
    if (extra > SB_MAX || b->len + extra + 1 > SB_MAX) {
        b->oom = true;
        return false;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = dx_realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void dx__sb_put(dx__sb *b, const char *s, size_t n)
{
    if (!sb_reserve(b, n))
        return;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void dx__sb_puts(dx__sb *b, const char *s)
{
    dx__sb_put(b, s, strlen(s));
}

void dx__sb_putc(dx__sb *b, char c)
{
    if (!sb_reserve(b, 1))
        return;
    b->p[b->len++] = c;
    b->p[b->len] = '\0';
}

void dx__sb_printf(dx__sb *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    char small[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n < sizeof small) {
        dx__sb_put(b, small, (size_t)n);
        return;
    }
    if (!sb_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

const char *dx__sb_cstr(dx__sb *b)
{
    if (b->oom)
        return NULL;
    return b->p ? b->p : "";
}

char *dx__sb_take(dx__sb *b)
{
    if (b->oom) {
        dx__sb_free(b);
        return NULL;
    }
    char *p = b->p ? b->p : dx_strdup("");
    dx__sb_init(b);
    return p;
}

/* ---- cJSON hooks ------------------------------------------------------ */

static void *hook_malloc(size_t n)
{
    return dx_malloc(n);
}

static void hook_free(void *p)
{
    dx_free(p);
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void install_hooks(void)
{
    cJSON_Hooks h = {hook_malloc, hook_free};
    cJSON_InitHooks(&h);
}

void dx__pyjson_init(void)
{
    pthread_once(&hooks_once, install_hooks);
}

/* ---- numbers ---------------------------------------------------------- */

void dx__pyfloat_repr(double v, char buf[32])
{
    if (isnan(v)) {
        memcpy(buf, "nan", 4);
        return;
    }
    if (isinf(v)) {
        snprintf(buf, 32, "%s", v > 0 ? "inf" : "-inf");
        return;
    }
    if (v == 0) {
        snprintf(buf, 32, "%s", signbit(v) ? "-0.0" : "0.0");
        return;
    }
    /* Shortest round trip: the fewest significant digits that read back to
     * v, which is what Python's repr picks (correctly rounded either way). */
    char t[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(t, sizeof t, "%.*e", prec - 1, v);
        if (strtod(t, NULL) == v)
            break;
    }
    char digits[24];
    size_t nd = 0;
    const char *q = t;
    bool neg = false;
    if (*q == '-') {
        neg = true;
        q++;
    }
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9' && nd < sizeof digits - 1)
            digits[nd++] = *q;
    long exp10 = *q == 'e' ? strtol(q + 1, NULL, 10) : 0;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';

    char *o = buf;
    char *end = buf + 31;
#define OUT(c)                                                                 \
    do {                                                                       \
        if (o < end)                                                           \
            *o++ = (c);                                                        \
    } while (0)
    if (neg)
        OUT('-');
    if (exp10 < -4 || exp10 >= 16) {
        OUT(digits[0]);
        if (nd > 1) {
            OUT('.');
            for (size_t i = 1; i < nd; i++)
                OUT(digits[i]);
        }
        char e[24];
        snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+',
                 (int)(exp10 < 0 ? -exp10 : exp10) % 1000);
        for (const char *c = e; *c; c++)
            OUT(*c);
    } else if (exp10 >= 0) {
        for (long i = 0; i <= exp10; i++)
            OUT((size_t)i < nd ? digits[i] : '0');
        OUT('.');
        if ((size_t)exp10 + 1 < nd)
            for (size_t i = (size_t)exp10 + 1; i < nd; i++)
                OUT(digits[i]);
        else
            OUT('0');
    } else {
        OUT('0');
        OUT('.');
        for (long i = 0; i < -exp10 - 1; i++)
            OUT('0');
        for (size_t i = 0; i < nd; i++)
            OUT(digits[i]);
    }
#undef OUT
    *o = '\0';
}

bool dx__json_is_int(const cJSON *num)
{
    if (!cJSON_IsNumber(num) || (num->type & DX__JSON_FLOAT))
        return false;
    double v = num->valuedouble;
    return isfinite(v) && v == floor(v) && fabs(v) < 9223372036854775808.0;
}

static void put_number(dx__sb *b, const cJSON *v, bool py_str)
{
    double d = v->valuedouble;
    if (dx__json_is_int(v)) {
        dx__sb_printf(b, "%" PRId64, (int64_t)d);
    } else if (isfinite(d)) {
        char t[32];
        dx__pyfloat_repr(d, t);
        dx__sb_puts(b, t);
    } else if (py_str) {
        dx__sb_puts(b, isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
    } else {
        dx__sb_puts(b, isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity");
    }
}

/* ---- json.dumps ------------------------------------------------------- */

static void put_u4(dx__sb *b, uint32_t u)
{
    static const char hex[] = "0123456789abcdef";
    char t[6] = {'\\',
                 'u',
                 hex[(u >> 12) & 15],
                 hex[(u >> 8) & 15],
                 hex[(u >> 4) & 15],
                 hex[u & 15]};
    dx__sb_put(b, t, sizeof t);
}

/* One string literal; ascii: json.dumps' ensure_ascii (every character
 * outside ' '..'~' as \uXXXX; an invalid UTF-8 byte as U+FFFD, which is
 * what a Python str decoded with errors="replace" would hold). */
static void put_str(dx__sb *b, const char *s, size_t n, bool ascii)
{
    dx__sb_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        if (ascii && c >= 0x7F) {
            dx__sb_put(b, s + run, i - run);
            size_t len = 1;
            uint32_t cp =
                dx__utf8_decode((const unsigned char *)s + i, n - i, &len);
            if (cp >= 0x110000)
                cp = 0xFFFD;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                put_u4(b, 0xD800 | (cp >> 10));
                put_u4(b, 0xDC00 | (cp & 0x3FF));
            } else {
                put_u4(b, cp);
            }
            i += len - 1;
            run = i + 1;
            continue;
        }
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        default:
            if (c >= 0x20)
                continue;
        }
        dx__sb_put(b, s + run, i - run);
        run = i + 1;
        if (esc)
            dx__sb_puts(b, esc);
        else
            put_u4(b, c);
    }
    dx__sb_put(b, s + run, n - run);
    dx__sb_putc(b, '"');
}

void dx__pyjson_str(dx__sb *b, const char *s, size_t n)
{
    put_str(b, s, n, false);
}

static void newline(dx__sb *b, int indent, int level)
{
    dx__sb_putc(b, '\n');
    for (long i = 0; i < (long)indent * level; i++)
        dx__sb_putc(b, ' ');
}

static void dump(dx__sb *b, const cJSON *v, int indent, int level,
                 const char *isep, const char *ksep, bool ascii)
{
    switch (v->type & 0xFF) {
    case cJSON_NULL:
        dx__sb_puts(b, "null");
        return;
    case cJSON_False:
        dx__sb_puts(b, "false");
        return;
    case cJSON_True:
        dx__sb_puts(b, "true");
        return;
    case cJSON_Number:
        put_number(b, v, false);
        return;
    case cJSON_String:
        put_str(b, v->valuestring ? v->valuestring : "",
                v->valuestring ? strlen(v->valuestring) : 0, ascii);
        return;
    case cJSON_Raw:
        dx__sb_puts(b, v->valuestring ? v->valuestring : "null");
        return;
    case cJSON_Array:
    case cJSON_Object:
        break;
    default:
        dx__sb_puts(b, "null");
        return;
    }
    bool obj = (v->type & 0xFF) == cJSON_Object;
    if (!v->child) {
        dx__sb_puts(b, obj ? "{}" : "[]");
        return;
    }
    dx__sb_putc(b, obj ? '{' : '[');
    for (const cJSON *c = v->child; c; c = c->next) {
        if (c != v->child)
            dx__sb_puts(b, isep);
        if (indent >= 0)
            newline(b, indent, level + 1);
        if (obj) {
            const char *k = c->string ? c->string : "";
            put_str(b, k, strlen(k), ascii);
            dx__sb_puts(b, ksep);
        }
        dump(b, c, indent, level + 1, isep, ksep, ascii);
    }
    if (indent >= 0)
        newline(b, indent, level);
    dx__sb_putc(b, obj ? '}' : ']');
}

void dx__pyjson_dump_sep(dx__sb *b, const cJSON *v, int indent,
                         const char *item_sep, const char *key_sep)
{
    if (!v) {
        dx__sb_puts(b, "null");
        return;
    }
    dump(b, v, indent, 0, item_sep, key_sep, false);
}

void dx__pyjson_dump_ascii(dx__sb *b, const cJSON *v)
{
    if (!v) {
        dx__sb_puts(b, "null");
        return;
    }
    dump(b, v, -1, 0, ", ", ": ", true);
}

/* ---- repr() ----------------------------------------------------------- */

static void repr_str(dx__sb *b, const char *s, size_t n)
{
    /* Python picks ' unless the text holds ' and no ". */
    char quote = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    dx__sb_putc(b, quote);
    for (size_t i = 0; i < n;) {
        size_t len = 1;
        uint32_t cp =
            dx__utf8_decode((const unsigned char *)s + i, n - i, &len);
        if (cp == (uint32_t)quote || cp == '\\') {
            dx__sb_putc(b, '\\');
            dx__sb_putc(b, (char)cp);
        } else if (cp == '\t') {
            dx__sb_puts(b, "\\t");
        } else if (cp == '\n') {
            dx__sb_puts(b, "\\n");
        } else if (cp == '\r') {
            dx__sb_puts(b, "\\r");
        } else if (cp >= 0x110000) { /* not UTF-8: as a surrogateescape */
            dx__sb_printf(b, "\\udc%02x", (unsigned)(cp - 0x110000));
        } else if (dx__unicode_printable(cp)) {
            dx__sb_put(b, s + i, len);
        } else if (cp <= 0xFF) {
            dx__sb_printf(b, "\\x%02x", (unsigned)cp);
        } else if (cp <= 0xFFFF) {
            dx__sb_printf(b, "\\u%04x", (unsigned)cp);
        } else {
            dx__sb_printf(b, "\\U%08x", (unsigned)cp);
        }
        i += len;
    }
    dx__sb_putc(b, quote);
}

void dx__pyrepr(dx__sb *b, const cJSON *v)
{
    if (!v) {
        dx__sb_puts(b, "None");
        return;
    }
    switch (v->type & 0xFF) {
    case cJSON_String:
        repr_str(b, v->valuestring ? v->valuestring : "",
                 v->valuestring ? strlen(v->valuestring) : 0);
        return;
    case cJSON_Array:
    case cJSON_Object: {
        bool obj = (v->type & 0xFF) == cJSON_Object;
        dx__sb_putc(b, obj ? '{' : '[');
        for (const cJSON *c = v->child; c; c = c->next) {
            if (c != v->child)
                dx__sb_puts(b, ", ");
            if (obj) {
                const char *k = c->string ? c->string : "";
                repr_str(b, k, strlen(k));
                dx__sb_puts(b, ": ");
            }
            dx__pyrepr(b, c);
        }
        dx__sb_putc(b, obj ? '}' : ']');
        return;
    }
    default:
        dx__pystr(b, v); /* True/False/None and numbers read the same */
        return;
    }
}

void dx__pyjson_dump(dx__sb *b, const cJSON *v, int indent)
{
    dx__pyjson_dump_sep(b, v, indent, indent >= 0 ? "," : ", ", ": ");
}

void dx__pystr(dx__sb *b, const cJSON *v)
{
    if (!v) {
        dx__sb_puts(b, "None");
        return;
    }
    switch (v->type & 0xFF) {
    case cJSON_String:
        dx__sb_puts(b, v->valuestring ? v->valuestring : "");
        return;
    case cJSON_True:
        dx__sb_puts(b, "True");
        return;
    case cJSON_False:
        dx__sb_puts(b, "False");
        return;
    case cJSON_NULL:
        dx__sb_puts(b, "None");
        return;
    case cJSON_Number:
        put_number(b, v, true);
        return;
    default:
        dx__pyjson_dump(b, v, -1);
        return;
    }
}

/* ---- the reader ------------------------------------------------------- */

typedef struct rd {
    const char *s;
    size_t n;
    size_t i;
    bool lenient;
    bool oom;
    int depth;
    const char *err; /* first error wins: it is where reading stopped */
    size_t errpos;
} rd;

static cJSON *fail(rd *r, size_t pos, const char *what)
{
    if (!r->err) {
        r->err = what;
        r->errpos = pos;
    }
    return NULL;
}

static cJSON *nomem(rd *r)
{
    r->oom = true;
    return fail(r, r->i, "out of memory");
}

static void skip_ws(rd *r)
{
    while (r->i < r->n) {
        char c = r->s[r->i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            r->i++;
        else
            break;
    }
}

static bool is_ident(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_';
}

/* Does the text at r->i start with word (and, when lenient, end there)? */
static bool word(rd *r, const char *w)
{
    size_t n = strlen(w);
    if (r->n - r->i < n || memcmp(r->s + r->i, w, n) != 0)
        return false;
    if (r->lenient && r->i + n < r->n && is_ident(r->s[r->i + n]))
        return false;
    r->i += n;
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static long hex4(const rd *r, size_t at)
{
    if (r->n - at < 4)
        return -1;
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(r->s[at + (size_t)k]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static void put_utf8(dx__sb *b, unsigned long cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    dx__sb_put(b, u, n);
}

/* The bytes a string's scan stops at: either quote, the backslash and the
 * control characters; every other byte is copied as it is. */
static const bool string_stop[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1,
    [0x06] = 1, [0x07] = 1, [0x08] = 1, [0x09] = 1, [0x0A] = 1, [0x0B] = 1,
    [0x0C] = 1, [0x0D] = 1, [0x0E] = 1, [0x0F] = 1, [0x10] = 1, [0x11] = 1,
    [0x12] = 1, [0x13] = 1, [0x14] = 1, [0x15] = 1, [0x16] = 1, [0x17] = 1,
    [0x18] = 1, [0x19] = 1, [0x1A] = 1, [0x1B] = 1, [0x1C] = 1, [0x1D] = 1,
    [0x1E] = 1, [0x1F] = 1, ['"'] = 1,  ['\''] = 1, ['\\'] = 1};

/* A quoted string at r->i (quote is '"' or, lenient, '\''); the decoded
 * text is returned dx_malloc'd. A NUL from \u0000 ends the C string early:
 * cJSON strings are NUL-terminated. */
static char *read_string(rd *r)
{
    char q = r->s[r->i];
    size_t start = r->i++;
    dx__sb b;
    dx__sb_init(&b);
    size_t run = r->i;
    for (;;) {
        /* Most of a string is plain text: one table look per byte. */
        const unsigned char *text = (const unsigned char *)r->s;
        size_t i = r->i;
        while (i < r->n && !string_stop[text[i]])
            i++;
        r->i = i;
        if (r->i >= r->n) {
            dx__sb_free(&b);
            fail(r, start, "unterminated string");
            return NULL;
        }
        unsigned char c = (unsigned char)r->s[r->i];
        if (c == (unsigned char)q)
            break;
        if (c < 0x20 && !r->lenient) {
            dx__sb_free(&b);
            fail(r, r->i, "control character in string");
            return NULL;
        }
        if (c != '\\') {
            r->i++;
            continue;
        }
        dx__sb_put(&b, r->s + run, r->i - run);
        size_t esc = r->i++;
        if (r->i >= r->n)
            continue; /* reported as unterminated above */
        char e = r->s[r->i++];
        switch (e) {
        case '"':
            dx__sb_putc(&b, '"');
            break;
        case '\\':
            dx__sb_putc(&b, '\\');
            break;
        case '/':
            dx__sb_putc(&b, '/');
            break;
        case 'b':
            dx__sb_putc(&b, '\b');
            break;
        case 'f':
            dx__sb_putc(&b, '\f');
            break;
        case 'n':
            dx__sb_putc(&b, '\n');
            break;
        case 'r':
            dx__sb_putc(&b, '\r');
            break;
        case 't':
            dx__sb_putc(&b, '\t');
            break;
        case 'u': {
            long cp = hex4(r, r->i);
            if (cp < 0) {
                if (!r->lenient) {
                    dx__sb_free(&b);
                    fail(r, esc, "invalid \\u escape");
                    return NULL;
                }
                dx__sb_put(&b, r->s + esc, 2);
                break;
            }
            r->i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && r->n - r->i >= 6 &&
                r->s[r->i] == '\\' && r->s[r->i + 1] == 'u') {
                long lo = hex4(r, r->i + 2);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    r->i += 6;
                }
            }
            /* Strings are NUL-terminated here: a NUL would cut the text
             * short without a word. User data says so (strict); an LM's
             * answer being repaired gets U+FFFD, as a lone surrogate,
             * which has no UTF-8 form, does. */
            if (cp == 0 && !r->lenient) {
                dx__sb_free(&b);
                fail(r, esc,
                     "a NUL character (\\u0000) in a string, which dspex "
                     "strings cannot hold");
                return NULL;
            }
            if (cp == 0 || (cp >= 0xD800 && cp < 0xE000))
                cp = 0xFFFD;
            put_utf8(&b, (unsigned long)cp);
            break;
        }
        default:
            if (!r->lenient) {
                dx__sb_free(&b);
                fail(r, esc, "invalid escape in string");
                return NULL;
            }
            if (e != '\'')
                dx__sb_putc(&b, '\\');
            dx__sb_putc(&b, e);
        }
        run = r->i;
    }
    char *out;
    if (b.p == NULL && !b.oom) {
        /* No escape: the text is the run itself, copied once. */
        size_t len = r->i - run;
        if ((out = dx_malloc(len + 1)) != NULL) {
            memcpy(out, r->s + run, len);
            out[len] = '\0';
        }
    } else {
        dx__sb_put(&b, r->s + run, r->i - run);
        out = dx__sb_take(&b);
    }
    r->i++;
    if (!out)
        nomem(r);
    return out;
}

static cJSON *new_item(rd *r, int type)
{
    cJSON *v = cJSON_CreateNull();
    if (!v)
        return nomem(r);
    v->type = type;
    return v;
}

static cJSON *read_number(rd *r)
{
    size_t start = r->i;
    const char *s = r->s;
    size_t i = r->i, n = r->n;
    bool is_float = false;
    if (i < n && (s[i] == '-' || (r->lenient && s[i] == '+')))
        i++;
    size_t int_start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    size_t int_digits = i - int_start;
    if (!r->lenient &&
        (int_digits == 0 || (int_digits > 1 && s[int_start] == '0')))
        return fail(r, start, "invalid number");
    if (i < n && s[i] == '.') {
        is_float = true;
        size_t f = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == f && !r->lenient)
            return fail(r, start, "invalid number");
        if (i == f && int_digits == 0)
            return fail(r, start, "invalid number");
    } else if (int_digits == 0) {
        return fail(r, start, "invalid number");
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t e = i + 1;
        if (e < n && (s[e] == '+' || s[e] == '-'))
            e++;
        size_t d = e;
        while (e < n && s[e] >= '0' && s[e] <= '9')
            e++;
        if (e > d) {
            is_float = true;
            i = e;
        } else if (!r->lenient) {
            return fail(r, start, "invalid number");
        }
    }
    size_t len = i - start;
    char small[64];
    char *t = len < sizeof small ? small : dx_malloc(len + 1);
    if (!t)
        return nomem(r);
    memcpy(t, s + start, len);
    t[len] = '\0';
    double d = strtod(t, NULL);
    if (t != small)
        dx_free(t);
    cJSON *v = cJSON_CreateNumber(d);
    if (!v)
        return nomem(r);
    if (is_float)
        v->type |= DX__JSON_FLOAT;
    r->i = i;
    return v;
}

static cJSON *read_value(rd *r);

/* Python's dict keeps the last value of a repeated key in the first key's
 * place. */
static void add_member(cJSON *obj, char *key, cJSON *val)
{
    for (cJSON *c = obj->child; c; c = c->next) {
        if (c->string && strcmp(c->string, key) == 0) {
            val->string = key;
            cJSON_ReplaceItemViaPointer(obj, c, val);
            return;
        }
    }
    val->string = key;
    cJSON_AddItemToArray(obj, val);
}

static char *read_bare_key(rd *r)
{
    size_t st = r->i;
    while (r->i < r->n && (is_ident(r->s[r->i]) || r->s[r->i] == '-'))
        r->i++;
    char *k = dx_malloc(r->i - st + 1);
    if (!k) {
        nomem(r);
        return NULL;
    }
    memcpy(k, r->s + st, r->i - st);
    k[r->i - st] = '\0';
    return k;
}

static cJSON *read_container(rd *r, bool obj)
{
    char close = obj ? '}' : ']';
    const char *sep_err = obj ? "expected ',' or '}'" : "expected ',' or ']'";
    if (++r->depth > MAX_DEPTH)
        return fail(r, r->i, "nesting too deep");
    cJSON *c = new_item(r, obj ? cJSON_Object : cJSON_Array);
    if (!c)
        return NULL;
    r->i++;
    skip_ws(r);
    if (r->i < r->n && r->s[r->i] == close) {
        r->i++;
        r->depth--;
        return c;
    }
    for (;;) {
        skip_ws(r);
        if (r->lenient && r->i < r->n && r->s[r->i] == close)
            break; /* trailing comma */
        char *key = NULL;
        if (obj) {
            char k = r->i < r->n ? r->s[r->i] : '\0';
            if (k == '"' || (r->lenient && k == '\''))
                key = read_string(r);
            else if (r->lenient && is_ident(k))
                key = read_bare_key(r);
            else
                fail(r, r->i, "expected a string key");
            if (!key)
                goto bad;
            skip_ws(r);
            if (r->i >= r->n || r->s[r->i] != ':') {
                dx_free(key);
                fail(r, r->i, "expected ':'");
                goto bad;
            }
            r->i++;
        }
        cJSON *v = read_value(r);
        if (!v) {
            dx_free(key);
            goto bad;
        }
        if (obj)
            add_member(c, key, v);
        else
            cJSON_AddItemToArray(c, v);
        skip_ws(r);
        if (r->i < r->n && r->s[r->i] == ',') {
            r->i++;
            continue;
        }
        if (r->i < r->n && r->s[r->i] == close)
            break;
        fail(r, r->i, sep_err);
        goto bad;
    }
    r->i++;
    r->depth--;
    return c;
bad:
    cJSON_Delete(c);
    return NULL;
}

static cJSON *read_value(rd *r)
{
    skip_ws(r);
    if (r->i >= r->n)
        return fail(r, r->i, "expected a value");
    char c = r->s[r->i];
    switch (c) {
    case '{':
        return read_container(r, true);
    case '[':
        return read_container(r, false);
    case '\'':
        if (!r->lenient)
            break;
        /* fall through */
    case '"': {
        char *s = read_string(r);
        if (!s)
            return NULL;
        cJSON *v = new_item(r, cJSON_String);
        if (!v) {
            dx_free(s);
            return NULL;
        }
        v->valuestring = s;
        return v;
    }
    default:
        break;
    }
    if (word(r, "true") || (r->lenient && word(r, "True")))
        return new_item(r, cJSON_True);
    if (word(r, "false") || (r->lenient && word(r, "False")))
        return new_item(r, cJSON_False);
    if (word(r, "null") || (r->lenient && word(r, "None")))
        return new_item(r, cJSON_NULL);
    double special = 0;
    bool is_special = true;
    if (word(r, "NaN"))
        special = NAN;
    else if (word(r, "Infinity"))
        special = INFINITY;
    else if (word(r, "-Infinity"))
        special = -INFINITY;
    else
        is_special = false;
    if (is_special) {
        cJSON *v = cJSON_CreateNumber(special);
        if (!v)
            return nomem(r);
        v->type |= DX__JSON_FLOAT;
        return v;
    }
    if (c == '-' || (c >= '0' && c <= '9') ||
        (r->lenient && (c == '+' || c == '.')))
        return read_number(r);
    return fail(r, r->i, "expected a value");
}

static void position(const char *s, size_t pos, int *line, int *column)
{
    int ln = 1;
    size_t bol = 0;
    for (size_t i = 0; i < pos; i++) {
        if (s[i] == '\n') {
            ln++;
            bol = i + 1;
        }
    }
    if (line)
        *line = ln;
    if (column)
        *column = (int)(pos - bol + 1);
}

cJSON *dx__json_parse_msg(const char *text, size_t len, int *line, int *column,
                          const char **what)
{
    dx__pyjson_init();
    if (!text) {
        if (what)
            *what = "no text";
        return NULL;
    }
    rd r = {.s = text, .n = len};
    cJSON *v = read_value(&r);
    if (v) {
        skip_ws(&r);
        if (r.i < r.n) {
            cJSON_Delete(v);
            v = fail(&r, r.i, "unexpected text after the JSON value");
        }
    }
    if (!v) {
        position(text, r.errpos, line, column);
        if (what)
            *what = r.err ? r.err : "out of memory";
    }
    return v;
}

cJSON *dx__json_parse(const char *text, size_t len, int *line, int *column)
{
    return dx__json_parse_msg(text, len, line, column, NULL);
}

/* ---- repair ----------------------------------------------------------- */

static bool space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

static void trim(const char **s, size_t *n)
{
    while (*n && space(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && space((*s)[*n - 1]))
        (*n)--;
}

static const char *find(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, needle, k) == 0)
            return s + i;
    return NULL;
}

static cJSON *strict(const char *s, size_t n, bool *oom)
{
    rd r = {.s = s, .n = n};
    cJSON *v = read_value(&r);
    *oom = *oom || r.oom;
    skip_ws(&r);
    if (v && r.i < r.n) {
        cJSON_Delete(v);
        v = NULL;
    }
    return v;
}

/* The first complete value at the start of s; what follows is ignored. */
static cJSON *lenient(const char *s, size_t n, bool *oom)
{
    rd r = {.s = s, .n = n, .lenient = true};
    cJSON *v = read_value(&r);
    *oom = *oom || r.oom;
    return v;
}

/* Where the bracket opened at s[0] closes (skipping quoted strings), or 0. */
static size_t balanced(const char *s, size_t n)
{
    char stack[MAX_DEPTH];
    int depth = 0;
    char quote = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (quote) {
            if (c == '\\')
                i++;
            else if (c == quote)
                quote = 0;
            continue;
        }
        if (c == '"' || c == '\'') {
            quote = c;
        } else if (c == '{' || c == '[') {
            if (depth == MAX_DEPTH)
                return 0;
            stack[depth++] = c == '{' ? '}' : ']';
        } else if (c == '}' || c == ']') {
            if (depth == 0 || stack[depth - 1] != c)
                return 0;
            if (--depth == 0)
                return i + 1;
        }
    }
    return 0;
}

/* Keep v when it is what the caller wants; otherwise remember the first
 * such value as the fallback and keep looking. */
static bool take(cJSON **best, cJSON *v, bool want_object)
{
    if (!v)
        return false;
    if (!want_object || cJSON_IsObject(v)) {
        cJSON_Delete(*best);
        *best = v;
        return true;
    }
    if (!*best)
        *best = v;
    else
        cJSON_Delete(v);
    return false;
}

cJSON *dx__json_repair(const char *text, size_t len, bool want_object)
{
    bool oom = false;
    return dx__json_repair_oom(text, len, want_object, &oom);
}

/* A reading that ran out of memory says nothing about the text: stop there
 * (a later, more lenient reading could find a different value). */
#define OOM_STOP(best)                                                         \
    do {                                                                       \
        if (*oom) {                                                            \
            cJSON_Delete(best);                                                \
            return NULL;                                                       \
        }                                                                      \
    } while (0)

cJSON *dx__json_repair_oom(const char *text, size_t len, bool want_object,
                           bool *oom)
{
    dx__pyjson_init();
    *oom = false;
    if (!text)
        return NULL;
    const char *s = text;
    size_t n = len;
    trim(&s, &n);
    cJSON *best = NULL;
    if (take(&best, strict(s, n, oom), want_object))
        return best;
    OOM_STOP(best);

    const char *body = s;
    size_t body_n = n;
    const char *fence = find(s, n, "```");
    if (fence) {
        const char *p = fence + 3;
        const char *end = s + n;
        while (p < end && (is_ident(*p) || *p == '-'))
            p++; /* the language tag: json, JSON, python */
        const char *close = find(p, (size_t)(end - p), "```");
        body = p;
        body_n = (size_t)((close ? close : end) - p);
        trim(&body, &body_n);
        if (take(&best, strict(body, body_n, oom), want_object))
            return best;
        OOM_STOP(best);
        if (take(&best, lenient(body, body_n, oom), want_object))
            return best;
        OOM_STOP(best);
    }
    if (take(&best, lenient(s, n, oom), want_object))
        return best;
    OOM_STOP(best);

    /* The first balanced {...} / [...] anywhere; a few candidates at most,
     * so text full of stray brackets stays linear. */
    char open = want_object ? '{' : '[';
    int tries = 0;
    for (size_t i = 0; i < n && tries < 16; i++) {
        if (s[i] != open)
            continue;
        tries++;
        size_t k = balanced(s + i, n - i);
        if (!k)
            continue;
        if (take(&best, lenient(s + i, k, oom), want_object))
            return best;
        OOM_STOP(best);
    }
    return best;
}

#undef OOM_STOP
