/*
 * jscan_int.h — how far a run of plain bytes inside a JSON string goes, for
 * the providers' JSON printer (jprint.c) and parser (jparse.c). Both spend
 * most of their time walking strings: a Predict's request carries a system
 * prompt of a kilobyte or more (several with few-shot demos), and the local
 * LM server parses every one of them. A byte at a time through a table is
 * ~3 instructions a byte; on x86-64 these look at 16 bytes per step (SSE2,
 * which every x86-64 CPU has) and fall back to the table for the tail and
 * on other machines. Reads stay inside [p, end): the callers know where
 * their bytes end, so the scan is clean under ASan and valgrind.
 * Internal: not installed. Header-only, static inline.
 */
#ifndef DSPEX_JSCAN_INT_H
#define DSPEX_JSCAN_INT_H

#include <stddef.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Bytes a JSON string cannot hold raw: controls, the quote, the escape. */
static const unsigned char dx__json_must_escape[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x00-0x0f */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x10-0x1f */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* '"' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /**/
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /**/
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* '\\' */
};

/* The first byte in [p, end) that must be escaped in JSON text (a control
 * byte, '"' or '\\'), or end. For the printer: what comes before it is
 * copied as it is. */
static inline const unsigned char *
dx__json_scan_unsafe(const unsigned char *p, const unsigned char *end)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i escape = _mm_set1_epi8('\\');
    const __m128i control_max = _mm_set1_epi8(0x1F);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        /* v <= 0x1F unsigned: min(v, 0x1F) == v. */
        __m128i hit = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, escape)),
            _mm_cmpeq_epi8(_mm_min_epu8(v, control_max), v));
        int mask = _mm_movemask_epi8(hit);
        if (mask != 0)
            return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < end && !dx__json_must_escape[*p])
        p++;
    return p;
}

/* The first '"' or '\\' in [p, end), or end. For the parser: the end of a
 * string's plain run (it takes raw control bytes, as cJSON does). */
static inline const unsigned char *dx__json_scan_stop(const unsigned char *p,
                                                      const unsigned char *end)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i escape = _mm_set1_epi8('\\');
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        int mask = _mm_movemask_epi8(
            _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, escape)));
        if (mask != 0)
            return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < end && *p != '"' && *p != '\\')
        p++;
    return p;
}

#endif
