/*
 * jprint.c — cJSON trees printed compactly, byte for byte as
 * cJSON_PrintUnformatted prints them, at a fraction of its cost.
 *
 * Every request dspex sends is a printed tree with a few KB of prompt in it,
 * and so is every answer of the local LM server. cJSON looks at each byte
 * of a string twice (once to size the output, once to copy it, both through
 * a switch) and checks its buffer per value; here a string is copied in runs
 * between the bytes that need escaping, found 16 bytes at a time
 * (jscan_int.h), into a buffer that grows by doubling. Same output as
 * cJSON's, so caches keyed on request bodies and golden files do not move:
 * the escapes (\" \\ \b \f \n \r \t, \u00xx for the other control bytes,
 * everything else raw), the numbers (%1.15g unless it does not read back
 * within cJSON's epsilon, then %1.17g; NaN and infinities as null; -0 as
 * "-0", as cJSON 1.7.15 prints it) and a NULL string as "".
 * tests/providers/test_jprint.c holds the two printers to each other.
 */
#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "jscan_int.h"

/* dx__buf_append without the call when the bytes fit: a tree is printed
 * in many short pieces. The buffer's room is within its bound, so fitting
 * in it is within the bound too. */
static inline int put(dx__buf *b, const void *s, size_t n)
{
    if (n >= b->cap - b->len)
        return dx__buf_append(b, s, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int dx__jprint_str(dx__buf *b, const char *s)
{
    int rc = put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    const unsigned char *end = p + strlen((const char *)p);
    while (rc == 0) {
        const unsigned char *run = p;
        p = dx__json_scan_unsafe(p, end);
        if (p > run)
            rc = put(b, run, (size_t)(p - run));
        if (rc != 0 || p == end)
            break;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t n = 2;
        switch (*p) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default: {
            static const char hex[] = "0123456789abcdef";
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 15];
            n = 6;
        }
        }
        rc = put(b, esc, n);
        p++;
    }
    return rc ? rc : put(b, "\"", 1);
}

/* cJSON's test of whether %1.15g kept the value. */
static bool same_double(double a, double b)
{
    double most = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    return fabs(a - b) <= most * DBL_EPSILON;
}

static int put_double(dx__buf *b, double d)
{
    char num[32];
    int n;
    if (isnan(d) || isinf(d))
        return put(b, "null", 4);
    n = snprintf(num, sizeof num, "%1.15g", d);
    char *end = NULL;
    double back = strtod(num, &end);
    if (end == num || !same_double(back, d))
        n = snprintf(num, sizeof num, "%1.17g", d);
    if (n < 0 || (size_t)n >= sizeof num)
        return DX_EINVAL;
    /* Printed in the C library's locale; JSON's decimal point is '.'. */
    const char point = localeconv()->decimal_point[0];
    if (point != '.')
        for (int i = 0; i < n; i++)
            if (num[i] == point)
                num[i] = '.';
    return put(b, num, (size_t)n);
}

static int put_value(dx__buf *b, const cJSON *item)
{
    switch (item->type & 0xFF) {
    case cJSON_NULL:
        return put(b, "null", 4);
    case cJSON_False:
        return put(b, "false", 5);
    case cJSON_True:
        return put(b, "true", 4);
    case cJSON_Number:
        return put_double(b, item->valuedouble);
    case cJSON_Raw:
        return item->valuestring
                   ? put(b, item->valuestring, strlen(item->valuestring))
                   : DX_EINVAL;
    case cJSON_String:
        return dx__jprint_str(b, item->valuestring);
    case cJSON_Array:
    case cJSON_Object: {
        bool object = (item->type & 0xFF) == cJSON_Object;
        int rc = put(b, object ? "{" : "[", 1);
        for (const cJSON *c = item->child; rc == 0 && c != NULL; c = c->next) {
            if (object) {
                rc = dx__jprint_str(b, c->string);
                if (rc == 0)
                    rc = put(b, ":", 1);
            }
            if (rc == 0)
                rc = put_value(b, c);
            if (rc == 0 && c->next != NULL)
                rc = put(b, ",", 1);
        }
        return rc ? rc : put(b, object ? "}" : "]", 1);
    }
    default:
        return DX_EINVAL;
    }
}

int dx__jprint_into(dx__buf *b, const cJSON *item)
{
    if (item == NULL)
        return DX_EINVAL;
    size_t mark = b->len;
    int rc = put_value(b, item);
    if (rc != 0 && b->p != NULL) {
        b->len = mark;
        b->p[mark] = '\0';
    }
    return rc;
}

char *dx__jprint_n(const cJSON *item, size_t *len)
{
    dx__buf b;
    dx__buf_init(&b, 0);
    if (dx__jprint_into(&b, item) != 0) {
        dx__buf_free(&b);
        return NULL;
    }
    if (len != NULL)
        *len = b.len;
    return b.p;
}

char *dx__jprint(const cJSON *item)
{
    return dx__jprint_n(item, NULL);
}

/* ---- writing without a tree --------------------------------------------- */

void dx__jw_init(dx__jw *w, dx__buf *b)
{
    w->b = b;
    w->rc = 0;
    w->depth = 0;
    w->first[0] = true;
}

/* Before a value: the comma after a sibling, then "key": in an object. */
static void jw_lead(dx__jw *w, const char *key)
{
    if (w->rc != 0)
        return;
    if (!w->first[w->depth])
        w->rc = put(w->b, ",", 1);
    w->first[w->depth] = false;
    if (w->rc == 0 && key != NULL)
        w->rc = dx__jprint_str(w->b, key);
    if (w->rc == 0 && key != NULL)
        w->rc = put(w->b, ":", 1);
}

static void jw_open(dx__jw *w, const char *key, char open, char close)
{
    jw_lead(w, key);
    if (w->rc == 0 && w->depth + 1 >= DX__JW_DEPTH)
        w->rc = DX_ELIMIT;
    if (w->rc == 0)
        w->rc = put(w->b, &open, 1);
    if (w->rc == 0) {
        w->depth++;
        w->first[w->depth] = true;
        w->close[w->depth] = close;
    }
}

void dx__jw_obj(dx__jw *w, const char *key)
{
    jw_open(w, key, '{', '}');
}

void dx__jw_arr(dx__jw *w, const char *key)
{
    jw_open(w, key, '[', ']');
}

void dx__jw_end(dx__jw *w)
{
    if (w->rc == 0 && w->depth == 0)
        w->rc = DX_EINVAL;
    if (w->rc == 0)
        w->rc = put(w->b, &w->close[w->depth], 1);
    if (w->rc == 0)
        w->depth--;
}

void dx__jw_str(dx__jw *w, const char *key, const char *v)
{
    jw_lead(w, key);
    if (w->rc == 0)
        w->rc = dx__jprint_str(w->b, v);
}

void dx__jw_num(dx__jw *w, const char *key, double v)
{
    jw_lead(w, key);
    if (w->rc != 0)
        return;
    /* As dx__json_number puts it in a tree: whole numbers as integers
     * (-0 too, as "0"), the rest as cJSON prints them. */
    const double exact = 9007199254740992.0; /* 2^53 */
    if (!(v >= -exact && v <= exact) || v != (double)(long long)v) {
        w->rc = put_double(w->b, v);
        return;
    }
    char d[24];
    size_t n = 0;
    long long i = (long long)v;
    if (i < 0)
        d[n++] = '-';
    n += dx__decimal(d + n, i < 0 ? 0ull - (unsigned long long)i
                                  : (unsigned long long)i);
    w->rc = put(w->b, d, n);
}

void dx__jw_bool(dx__jw *w, const char *key, bool v)
{
    jw_lead(w, key);
    if (w->rc == 0)
        w->rc = v ? put(w->b, "true", 4) : put(w->b, "false", 5);
}

void dx__jw_null(dx__jw *w, const char *key)
{
    jw_lead(w, key);
    if (w->rc == 0)
        w->rc = put(w->b, "null", 4);
}

void dx__jw_raw(dx__jw *w, const char *key, const char *json)
{
    jw_lead(w, key);
    if (w->rc == 0)
        w->rc = json != NULL ? put(w->b, json, strlen(json)) : DX_EINVAL;
}
