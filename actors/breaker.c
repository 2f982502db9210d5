/*
 * breaker.c — the circuit breaker (breaker.h): a ring of the last `window`
 * outcomes with running counts in closed state, a probe tally in half-open
 * state, and the transitions with their events.
 */
#include "dspex/breaker.h"

#include <stddef.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"

struct dx_breaker {
    dx_breaker_config cfg;
    dx_breaker_state state;
    unsigned char *ring; /* 1 = failure; cfg.window entries */
    uint32_t head;       /* next slot to write */
    uint32_t count;      /* entries in the ring */
    uint32_t failures;   /* failures among them */
    int64_t open_until;
    uint32_t probes_out; /* half-open: permits given */
    uint32_t probes_done;
    uint32_t probe_failures;
    uint64_t rejected;
    uint64_t opened;
};

void dx_breaker_config_default(dx_breaker_config *c)
{
    memset(c, 0, sizeof *c);
    c->window = 20;
    c->min_calls = 10;
    c->failure_threshold = 0.5;
    c->open_ms = 30000;
    c->half_open_calls = 3;
    c->failure_kinds = DX_BREAKER_KIND(DX_LM_ERR_CONNECTION) |
                       DX_BREAKER_KIND(DX_LM_ERR_TIMEOUT) |
                       DX_BREAKER_KIND(DX_LM_ERR_SERVER_ERROR) |
                       DX_BREAKER_KIND(DX_LM_ERR_OVERLOADED);
}

int dx_breaker_new(const dx_breaker_config *c, dx_breaker **out)
{
    *out = NULL;
    if (c->window < 1 || c->window > DX_BREAKER_MAX_WINDOW ||
        c->min_calls > c->window || !(c->failure_threshold > 0) ||
        c->failure_threshold > 1 || c->open_ms < 0 || c->half_open_calls < 1)
        return DX_EINVAL;
    dx_breaker *b = dx_calloc(1, sizeof *b);
    if (!b)
        return DX_ENOMEM;
    b->ring = dx_calloc(c->window, 1);
    if (!b->ring) {
        dx_free(b);
        return DX_ENOMEM;
    }
    b->cfg = *c;
    b->state = DX_BREAKER_CLOSED;
    *out = b;
    return DX_OK;
}

void dx_breaker_free(dx_breaker *b)
{
    if (!b)
        return;
    dx_free(b->ring);
    dx_free(b);
}

static void clear_window(dx_breaker *b)
{
    memset(b->ring, 0, b->cfg.window);
    b->head = b->count = b->failures = 0;
    b->probes_out = b->probes_done = b->probe_failures = 0;
}

static void move_to(dx_breaker *b, dx_breaker_state to, uint32_t calls,
                    uint32_t failures, int64_t now_ms)
{
    dx_breaker_event ev = {
        .from = b->state,
        .to = to,
        .failure_rate = calls ? (double)failures / calls : 0.0,
        .calls = calls,
        .at_ms = now_ms,
    };
    b->state = to;
    clear_window(b);
    if (to == DX_BREAKER_OPEN) {
        b->open_until = now_ms + b->cfg.open_ms;
        b->opened++;
    }
    /* Last, so a callback that reads the breaker sees the new state. */
    if (b->cfg.on_event)
        b->cfg.on_event(b, &ev, b->cfg.ud);
}

bool dx_breaker_allow(dx_breaker *b, int64_t now_ms, int64_t *wait_ms)
{
    if (b->state == DX_BREAKER_OPEN && now_ms >= b->open_until)
        move_to(b, DX_BREAKER_HALF_OPEN, 0, 0, now_ms);
    switch (b->state) {
    case DX_BREAKER_CLOSED:
        break;
    case DX_BREAKER_OPEN:
        b->rejected++;
        if (wait_ms)
            *wait_ms = b->open_until - now_ms;
        return false;
    case DX_BREAKER_HALF_OPEN:
        if (b->probes_out >= b->cfg.half_open_calls) {
            b->rejected++;
            if (wait_ms)
                *wait_ms = 0;
            return false;
        }
        b->probes_out++;
        break;
    }
    if (wait_ms)
        *wait_ms = 0;
    return true;
}

static bool rate_trips(const dx_breaker *b, uint32_t calls, uint32_t failures)
{
    return calls > 0 &&
           (double)failures >= b->cfg.failure_threshold * (double)calls;
}

void dx_breaker_record(dx_breaker *b, bool failure, int64_t now_ms)
{
    switch (b->state) {
    case DX_BREAKER_OPEN:
        return;
    case DX_BREAKER_HALF_OPEN:
        b->probes_done++;
        b->probe_failures += failure;
        if (b->probes_done < b->cfg.half_open_calls)
            return;
        if (rate_trips(b, b->probes_done, b->probe_failures))
            move_to(b, DX_BREAKER_OPEN, b->probes_done, b->probe_failures,
                    now_ms);
        else
            move_to(b, DX_BREAKER_CLOSED, b->probes_done, b->probe_failures,
                    now_ms);
        return;
    case DX_BREAKER_CLOSED:
        break;
    }
    if (b->count == b->cfg.window)
        b->failures -= b->ring[b->head];
    else
        b->count++;
    b->ring[b->head] = failure;
    b->failures += failure;
    b->head = (b->head + 1) % b->cfg.window;
    if (b->count >= b->cfg.min_calls && rate_trips(b, b->count, b->failures))
        move_to(b, DX_BREAKER_OPEN, b->count, b->failures, now_ms);
}

void dx_breaker_record_ignored(dx_breaker *b)
{
    if (b->state == DX_BREAKER_HALF_OPEN && b->probes_out > b->probes_done)
        b->probes_out--;
}

void dx_breaker_record_error(dx_breaker *b, const dx_lm_error *e,
                             int64_t now_ms)
{
    if (e && e->kind == DX_LM_ERR_CANCELLED) {
        dx_breaker_record_ignored(b);
        return;
    }
    bool failure = e && e->kind != DX_LM_ERR_NONE && (unsigned)e->kind < 32 &&
                   (b->cfg.failure_kinds & DX_BREAKER_KIND(e->kind));
    dx_breaker_record(b, failure, now_ms);
}

dx_breaker_state dx_breaker_get_state(const dx_breaker *b)
{
    return b->state;
}

const char *dx_breaker_state_name(dx_breaker_state s)
{
    switch (s) {
    case DX_BREAKER_CLOSED:
        return "closed";
    case DX_BREAKER_OPEN:
        return "open";
    case DX_BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

dx_breaker_stats dx_breaker_get_stats(const dx_breaker *b)
{
    dx_breaker_stats s = {
        .state = b->state, .rejected = b->rejected, .opened = b->opened};
    if (b->state == DX_BREAKER_HALF_OPEN) {
        s.calls = b->probes_done;
        s.failures = b->probe_failures;
    } else {
        s.calls = b->count;
        s.failures = b->failures;
    }
    s.failure_rate = s.calls ? (double)s.failures / s.calls : 0.0;
    return s;
}
