/*
 * buf_int.h — the bounded byte buffer of the providers' codecs, the local
 * LM server and `dspex serve`: appending past max is DX_ELIMIT, never a
 * bigger buffer, so what a peer sends cannot grow one without bound. The
 * buffer owns p (NULL until the first append); after any append it is
 * NUL-terminated (the NUL is not counted in len). Internal: not installed.
 */
#ifndef DSPEX_BUF_INT_H
#define DSPEX_BUF_INT_H

#include <stddef.h>

#include "dspex/export.h"

typedef struct dx__buf {
    char *p;
    size_t len;
    size_t cap;
    size_t max; /* 0: no bound of its own (SIZE_MAX / 2) */
} dx__buf;

void dx__buf_init(dx__buf *b, size_t max);
/* Free p; the buffer is empty again, with the same max. */
void dx__buf_free(dx__buf *b);
int dx__buf_append(dx__buf *b, const void *s, size_t n);
int dx__buf_str(dx__buf *b, const char *s);
int dx__buf_fmt(dx__buf *b, const char *fmt, ...) DX_PRINTF(2, 3);
/* s as a JSON string literal, quotes and escapes included. */
int dx__buf_json_str(dx__buf *b, const char *s);
/* Make p a NUL-terminated string even when nothing was appended. */
int dx__buf_terminate(dx__buf *b);
/* v in decimal at dst, which has room for 20 digits; no NUL. Returns the
 * digits written. For the numbers of request and response heads, written
 * per exchange, where printf would be most of the head's cost. */
size_t dx__decimal(char *dst, unsigned long long v);

#endif
