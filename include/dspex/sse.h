/*
 * sse.h — a bounded, incremental parser for Server-Sent Events
 * (text/event-stream), the framing every LM provider streams in.
 *
 * Bytes arrive in chunks of any size (one byte at a time works); the parser
 * keeps only the event being assembled and hands each complete event to a
 * callback. Lines may end in "\n", "\r\n" or "\r" (also split across
 * chunks); ":" lines are comments; several "data:" lines join with "\n"; an
 * event is dispatched at a blank line and only if it carried data. One event
 * (its field lines and its data together) may hold at most max_event bytes:
 * past that the parser fails with DX_ELIMIT instead of growing. The parser
 * does no I/O and takes no locks: one stream, one thread at a time.
 */
#ifndef DSPEX_SSE_H
#define DSPEX_SSE_H

#include <stddef.h>

#include "export.h"

/* Default per-event bound used by the LM stream decoders (1 MiB). */
#define DX_SSE_DEFAULT_MAX_EVENT ((size_t)1 << 20)

typedef struct dx_sse dx_sse;

/* One dispatched event. All pointers are borrowed from the parser and valid
 * only during the callback. `event` is the "event:" field or "message" when
 * the event had none; `data` is NUL-terminated, data_len excludes the NUL;
 * `id` is the last "id:" seen on the stream so far ("" if none); `retry` is
 * the event's "retry:" value in ms, or -1. */
typedef struct dx_sse_event {
    const char *event;
    const char *data;
    size_t data_len;
    const char *id;
    long retry;
} dx_sse_event;

/* Called once per dispatched event. Returning non-zero stops the feed: that
 * value is returned from dx_sse_feed and the parser refuses further input
 * (every later feed returns the same value). */
typedef int (*dx_sse_event_fn)(dx_sse *p, const dx_sse_event *ev, void *ud);

/* New parser whose events may hold at most max_event bytes (0 means
 * DX_SSE_DEFAULT_MAX_EVENT). On success *out is the caller's to
 * dx_sse_free; returns DX_ENOMEM (and *out untouched) on failure. */
DX_API int dx_sse_new(size_t max_event, dx_sse **out);

/* Free a parser; NULL is a no-op. */
DX_API void dx_sse_free(dx_sse *p);

/* Feed len bytes (buf is only read during the call). Calls fn for every
 * event the bytes complete. Returns DX_OK, DX_ELIMIT when an event grows past
 * max_event, DX_ENOMEM, or fn's non-zero return. Any failure is sticky. */
DX_API int dx_sse_feed(dx_sse *p, const char *buf, size_t len,
                       dx_sse_event_fn fn, void *ud);

/* Non-zero if the stream stopped inside an event (bytes that no blank line
 * has dispatched yet); at end of stream such an event is discarded, as the
 * SSE specification says. */
DX_API int dx_sse_pending(const dx_sse *p);

#endif
