/*
 * fuzz_sse.c — fuzz target for the SSE parser (sse.h). The first byte seeds
 * how the rest is cut into chunks; the stream is parsed twice, whole and in
 * chunks, with a small per-event bound (so the DX_ELIMIT path is reached).
 * Invariant: both parses dispatch the same events (name, data, id, retry)
 * and end with the same result and pending state, because the spec makes
 * the events independent of how the bytes arrive.
 */
#include "dspex/error.h"
#include "dspex/sse.h"
#include "fuzz.h"

#define MAX_EVENT 512

/* A digest of the events seen: FNV-1a over every field, plus a count. */
typedef struct seen {
    uint64_t hash;
    size_t events;
} seen;

static void mix(seen *s, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        s->hash ^= b[i];
        s->hash *= 1099511628211u;
    }
    s->hash ^= 0xff; /* field separator */
    s->hash *= 1099511628211u;
}

static int on_event(dx_sse *p, const dx_sse_event *ev, void *ud)
{
    (void)p;
    seen *s = ud;
    FUZZ_CHECK(ev->event && ev->data && ev->id);
    FUZZ_CHECK(ev->data[ev->data_len] == '\0'); /* data may hold NULs */
    FUZZ_CHECK(ev->data_len <= MAX_EVENT);
    mix(s, ev->event, strlen(ev->event));
    mix(s, ev->data, ev->data_len);
    mix(s, ev->id, strlen(ev->id));
    mix(s, &ev->retry, sizeof ev->retry);
    s->events++;
    return 0;
}

static int parse(const uint8_t *data, size_t size, int chunked, uint8_t seed,
                 seen *s, int *pending)
{
    dx_sse *p = NULL;
    FUZZ_CHECK(dx_sse_new(MAX_EVENT, &p) == DX_OK);
    s->hash = 1469598103934665603u;
    s->events = 0;
    int rc = DX_OK;
    if (!chunked) {
        rc = dx_sse_feed(p, (const char *)data, size, on_event, s);
    } else {
        fuzz_chunker ch;
        fuzz_chunker_init(&ch, seed);
        size_t off = 0;
        while (off < size && rc == DX_OK) {
            size_t n = fuzz_chunker_next(&ch, size - off);
            rc = dx_sse_feed(p, (const char *)data + off, n, on_event, s);
            off += n;
        }
        /* Sticky failure: more input changes nothing. */
        if (rc != DX_OK)
            FUZZ_CHECK(dx_sse_feed(p, "\n\n", 2, on_event, s) == rc);
    }
    *pending = dx_sse_pending(p);
    dx_sse_free(p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    seen whole, parts;
    int pw = 0, pp = 0;
    int rw = parse(data + 1, size - 1, 0, data[0], &whole, &pw);
    int rp = parse(data + 1, size - 1, 1, data[0], &parts, &pp);
    FUZZ_CHECK(rw == rp);
    FUZZ_CHECK(whole.events == parts.events);
    FUZZ_CHECK(whole.hash == parts.hash);
    if (rw == DX_OK)
        FUZZ_CHECK(!pw == !pp);
    return 0;
}
