/*
 * sse.c — the incremental Server-Sent Events parser (sse.h).
 *
 * The parser holds the line being read, the event's data, its event type
 * and the stream's last id, each in a bounded buffer. A line is handled as
 * soon as its terminator is seen; a lone "\r" ends a line too, so a "\n"
 * that follows it (possibly at the start of the next chunk) is skipped.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "codec_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/sse.h"

struct dx_sse {
    size_t max_event;
    dx__buf line;
    dx__buf data;
    dx__buf event;
    dx__buf id;
    long retry;
    bool skip_lf;  /* the previous chunk ended in "\r" */
    bool bom_done; /* a leading UTF-8 byte order mark was checked for */
    bool has_data; /* at least one data: line since the last dispatch */
    int failed;    /* sticky error */
};

int dx_sse_new(size_t max_event, dx_sse **out)
{
    dx_sse *p = dx_calloc(1, sizeof *p);
    if (!p)
        return DX_ENOMEM;
    p->max_event = max_event ? max_event : DX_SSE_DEFAULT_MAX_EVENT;
    dx__buf_init(&p->line, p->max_event);
    dx__buf_init(&p->data, p->max_event);
    dx__buf_init(&p->event, p->max_event);
    dx__buf_init(&p->id, p->max_event);
    p->retry = -1;
    *out = p;
    return DX_OK;
}

void dx_sse_free(dx_sse *p)
{
    if (!p)
        return;
    dx__buf_free(&p->line);
    dx__buf_free(&p->data);
    dx__buf_free(&p->event);
    dx__buf_free(&p->id);
    dx_free(p);
}

int dx_sse_pending(const dx_sse *p)
{
    return p->line.len > 0 || p->has_data || p->event.len > 0;
}

/* Bytes the current event holds, counted against max_event. */
static size_t held(const dx_sse *p)
{
    return p->line.len + p->data.len + p->event.len;
}

static int dispatch(dx_sse *p, dx_sse_event_fn fn, void *ud)
{
    int rc = DX_OK;
    if (p->has_data) {
        /* Each data line appended a "\n"; the last one is not part of the
         * data. */
        if (p->data.len > 0)
            p->data.len--;
        int e = dx__buf_terminate(&p->data);
        if (e == DX_OK)
            e = dx__buf_terminate(&p->event);
        if (e == DX_OK)
            e = dx__buf_terminate(&p->id);
        if (e != DX_OK)
            return e;
        dx_sse_event ev = {
            .event = p->event.len ? p->event.p : "message",
            .data = p->data.p,
            .data_len = p->data.len,
            .id = p->id.p,
            .retry = p->retry,
        };
        rc = fn(p, &ev, ud);
    }
    p->data.len = 0;
    p->event.len = 0;
    p->has_data = false;
    p->retry = -1;
    return rc;
}

static int field(dx_sse *p, const char *name, size_t nlen, const char *val,
                 size_t vlen)
{
#define IS(lit) (nlen == sizeof(lit) - 1 && memcmp(name, lit, nlen) == 0)
    if (IS("data")) {
        p->has_data = true;
        int rc = dx__buf_append(&p->data, val, vlen);
        return rc ? rc : dx__buf_append(&p->data, "\n", 1);
    }
    if (IS("event")) {
        p->event.len = 0;
        return dx__buf_append(&p->event, val, vlen);
    }
    if (IS("id")) {
        if (memchr(val, '\0', vlen))
            return DX_OK; /* the specification ignores such ids */
        p->id.len = 0;
        return dx__buf_append(&p->id, val, vlen);
    }
    if (IS("retry")) {
        long v = 0;
        if (vlen == 0 || vlen > 9)
            return DX_OK;
        for (size_t i = 0; i < vlen; i++) {
            if (val[i] < '0' || val[i] > '9')
                return DX_OK;
            v = v * 10 + (val[i] - '0');
        }
        p->retry = v;
    }
#undef IS
    return DX_OK; /* unknown fields are ignored */
}

static int line_done(dx_sse *p, dx_sse_event_fn fn, void *ud)
{
    const char *s = p->line.p;
    size_t n = p->line.len;
    int rc;
    if (n == 0)
        rc = dispatch(p, fn, ud);
    else if (s[0] == ':')
        rc = DX_OK;
    else {
        const char *colon = memchr(s, ':', n);
        size_t nlen = colon ? (size_t)(colon - s) : n;
        const char *val = colon ? colon + 1 : s + n;
        size_t vlen = colon ? n - nlen - 1 : 0;
        if (vlen > 0 && val[0] == ' ') {
            val++;
            vlen--;
        }
        rc = field(p, s, nlen, val, vlen);
    }
    p->line.len = 0;
    return rc;
}

int dx_sse_feed(dx_sse *p, const char *buf, size_t len, dx_sse_event_fn fn,
                void *ud)
{
    if (p->failed)
        return p->failed;
    size_t i = 0;
    if (!p->bom_done && len > 0) {
        /* The BOM may only be recognised whole at the very start; a stream
         * whose first chunk is shorter than 3 bytes is checked byte-wise. */
        static const char bom[3] = {'\xEF', '\xBB', '\xBF'};
        size_t seen = p->line.len;
        while (i < len && seen + i < 3 && buf[i] == bom[seen + i])
            i++;
        if (seen + i == 3) {
            p->line.len = 0;
            p->bom_done = true;
        } else if (i == len && seen + i < 3) {
            /* still a possible BOM prefix: park it in the line buffer */
            int rc = dx__buf_append(&p->line, buf, len);
            if (rc)
                return p->failed = rc;
            return DX_OK;
        } else {
            p->bom_done = true;
            i = 0; /* not a BOM: the parked bytes are ordinary text */
        }
    }
    int rc = DX_OK;
    while (i < len && rc == DX_OK) {
        char c = buf[i];
        if (p->skip_lf) {
            p->skip_lf = false;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r' || c == '\n') {
            p->skip_lf = c == '\r';
            rc = line_done(p, fn, ud);
            i++;
            continue;
        }
        /* Copy the run of ordinary bytes up to the next line end at once. */
        size_t j = i;
        while (j < len && buf[j] != '\r' && buf[j] != '\n')
            j++;
        if (held(p) + (j - i) > p->max_event)
            rc = DX_ELIMIT;
        else
            rc = dx__buf_append(&p->line, buf + i, j - i);
        i = j;
    }
    if (rc == DX_OK && held(p) > p->max_event)
        rc = DX_ELIMIT;
    if (rc != DX_OK)
        p->failed = rc;
    return rc;
}
