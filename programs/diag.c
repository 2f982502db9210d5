/*
 * diag.c — setting and decorating dx_diag messages (see diag.h).
 */
#include "dspex/diag.h"

#include <stdio.h>
#include <string.h>

int dx_diag_vset(dx_diag *d, int code, int line, int column, const char *fmt,
                 va_list ap)
{
    if (!d)
        return code;
    d->code = code;
    d->line = line;
    d->column = column;
    vsnprintf(d->msg, sizeof d->msg, fmt, ap);
    return code;
}

int dx_diag_set(dx_diag *d, int code, int line, int column, const char *fmt,
                ...)
{
    va_list ap;
    va_start(ap, fmt);
    dx_diag_vset(d, code, line, column, fmt, ap);
    va_end(ap);
    return code;
}

void dx_diag_prefix(dx_diag *d, const char *fmt, ...)
{
    if (!d)
        return;
    char head[DX_DIAG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    /* head + ": " + the old message, cut to fit. */
    size_t hn = strnlen(head, sizeof head - 1);
    size_t on = strnlen(d->msg, sizeof d->msg - 1);
    if (hn + 2 >= sizeof d->msg)
        hn = sizeof d->msg - 3;
    if (hn + 2 + on >= sizeof d->msg)
        on = sizeof d->msg - 3 - hn;
    memmove(d->msg + hn + 2, d->msg, on);
    memcpy(d->msg, head, hn);
    d->msg[hn] = ':';
    d->msg[hn + 1] = ' ';
    d->msg[hn + 2 + on] = '\0';
}

void dx_diag_clear(dx_diag *d)
{
    if (!d)
        return;
    d->code = 0;
    d->line = 0;
    d->column = 0;
    d->msg[0] = '\0';
}
