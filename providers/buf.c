/*
 * buf.c — the bounded byte buffer of buf_int.h.
 */
#include "buf_int.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"

static size_t bound(const dx__buf *b)
{
    return b->max ? b->max : SIZE_MAX / 2;
}

void dx__buf_init(dx__buf *b, size_t max)
{
    b->p = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

void dx__buf_free(dx__buf *b)
{
    dx_free(b->p);
    dx__buf_init(b, b->max);
}

static int buf_reserve(dx__buf *b, size_t need)
{
    /* need counts the terminating NUL */
    if (need <= b->cap)
        return DX_OK;
    size_t max = bound(b);
    if (need > max + 1)
        return DX_ELIMIT;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > max + 1)
        cap = max + 1;
    char *p = dx_realloc(b->p, cap);
    if (!p)
        return DX_ENOMEM;
    b->p = p;
    b->cap = cap;
    return DX_OK;
}

int dx__buf_append(dx__buf *b, const void *s, size_t n)
{
    size_t max = bound(b);
    if (n > max || b->len > max - n)
        return DX_ELIMIT;
    int rc = buf_reserve(b, b->len + n + 1);
    if (rc)
        return rc;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return DX_OK;
}

int dx__buf_terminate(dx__buf *b)
{
    int rc = buf_reserve(b, b->len + 1);
    if (rc)
        return rc;
    b->p[b->len] = '\0';
    return DX_OK;
}

size_t dx__decimal(char *dst, unsigned long long v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

int dx__buf_str(dx__buf *b, const char *s)
{
    return dx__buf_append(b, s, strlen(s));
}

int dx__buf_fmt(dx__buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return DX_EINVAL;
    if ((size_t)n < sizeof small)
        return dx__buf_append(b, small, (size_t)n);
    char *big = dx_malloc((size_t)n + 1);
    if (big == NULL)
        return DX_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = dx__buf_append(b, big, (size_t)n);
    dx_free(big);
    return rc;
}

int dx__buf_json_str(dx__buf *b, const char *s)
{
    int rc = dx__buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; rc == 0 && *p;
         p++) {
        if (*p == '"' || *p == '\\')
            rc = dx__buf_fmt(b, "\\%c", *p);
        else if (*p == '\n')
            rc = dx__buf_str(b, "\\n");
        else if (*p < 0x20)
            rc = dx__buf_fmt(b, "\\u%04x", *p);
        else
            rc = dx__buf_append(b, p, 1);
    }
    return rc ? rc : dx__buf_append(b, "\"", 1);
}
