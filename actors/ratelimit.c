/*
 * ratelimit.c — the admission limiter (ratelimit.h): two exact token
 * buckets, the concurrency count and the FIFO ring of waiters.
 */
#include "dspex/ratelimit.h"

#include <stdbool.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"

#define UNIT 60000 /* ms per minute: one request or token, in bucket units */

/* level and cap in limit-ms units; refill of `rate` units per ms. */
typedef struct bucket {
    int64_t rate; /* the per-minute limit; 0 = unlimited */
    int64_t cap;
    int64_t level;
    int64_t last_ms;
} bucket;

typedef struct waiter {
    void *w;
    int64_t est;
    int64_t deadline;
} waiter;

struct dx_ratelimit {
    dx_ratelimit_config cfg;
    bucket req, tok;
    uint32_t in_flight;
    waiter *q; /* ring of cfg.max_waiters */
    size_t q_head, q_len;
};

/* A floor far below anything real usage produces, so repeated upward
 * corrections can never overflow. */
#define LEVEL_FLOOR (-(INT64_MAX / 4))

static void bucket_init(bucket *b, int64_t rate, int64_t cap_units, int64_t now)
{
    b->rate = rate;
    b->cap = cap_units * UNIT;
    b->level = b->cap;
    b->last_ms = now;
}

static void refill(bucket *b, int64_t now)
{
    if (!b->rate || now <= b->last_ms)
        return;
    int64_t dt = now - b->last_ms;
    int64_t need = b->cap - b->level;
    b->last_ms = now;
    if (need <= 0)
        return;
    if (dt >= (need + b->rate - 1) / b->rate)
        b->level = b->cap;
    else
        b->level += b->rate * dt;
}

/* ms until the bucket holds cost units (0: now). */
static int64_t wait_for(const bucket *b, int64_t cost)
{
    if (!b->rate || b->level >= cost)
        return 0;
    return (cost - b->level + b->rate - 1) / b->rate;
}

static void charge(bucket *b, int64_t units)
{
    if (!b->rate)
        return;
    b->level -= units;
    if (b->level < LEVEL_FLOOR)
        b->level = LEVEL_FLOOR;
    if (b->level > b->cap)
        b->level = b->cap;
}

int dx_ratelimit_new(const dx_ratelimit_config *c, int64_t now_ms,
                     dx_ratelimit **out)
{
    *out = NULL;
    if (c->rpm < 0 || c->tpm < 0 || c->rpm_burst < 0 ||
        c->rpm > DX_RATELIMIT_MAX || c->tpm > DX_RATELIMIT_MAX ||
        c->rpm_burst > c->rpm)
        return DX_EINVAL;
    dx_ratelimit *rl = dx_calloc(1, sizeof *rl);
    if (!rl)
        return DX_ENOMEM;
    if (c->max_waiters) {
        rl->q = dx_calloc(c->max_waiters, sizeof *rl->q);
        if (!rl->q) {
            dx_free(rl);
            return DX_ENOMEM;
        }
    }
    rl->cfg = *c;
    bucket_init(&rl->req, c->rpm, c->rpm_burst ? c->rpm_burst : c->rpm, now_ms);
    bucket_init(&rl->tok, c->tpm, c->tpm, now_ms);
    *out = rl;
    return DX_OK;
}

void dx_ratelimit_free(dx_ratelimit *rl)
{
    if (!rl)
        return;
    dx_free(rl->q);
    dx_free(rl);
}

static bool est_ok(int64_t est)
{
    return est >= 0 && est <= DX_RATELIMIT_MAX;
}

static bool too_big(const dx_ratelimit *rl, int64_t est)
{
    return rl->cfg.tpm && est > rl->cfg.tpm;
}

/* Admit if the caps allow now; otherwise the wait (-1: needs a release). */
static int64_t admit(dx_ratelimit *rl, int64_t est, int64_t now)
{
    if (rl->cfg.max_concurrency && rl->in_flight >= rl->cfg.max_concurrency)
        return -1;
    refill(&rl->req, now);
    refill(&rl->tok, now);
    int64_t wr = wait_for(&rl->req, UNIT);
    int64_t wt = wait_for(&rl->tok, est * UNIT);
    int64_t w = wr > wt ? wr : wt;
    if (w > 0)
        return w;
    charge(&rl->req, UNIT);
    charge(&rl->tok, est * UNIT);
    rl->in_flight++;
    return 0;
}

int dx_ratelimit_try_admit(dx_ratelimit *rl, int64_t est_tokens, int64_t now_ms,
                           int64_t *wait_ms)
{
    if (!est_ok(est_tokens))
        return DX_EINVAL;
    if (too_big(rl, est_tokens))
        return DX_ELIMIT;
    int64_t w = rl->q_len ? -1 : admit(rl, est_tokens, now_ms);
    if (wait_ms)
        *wait_ms = w;
    return w == 0 ? DX_OK : DX_EBUSY;
}

void dx_ratelimit_release(dx_ratelimit *rl, int64_t est_tokens,
                          int64_t actual_tokens, int64_t now_ms)
{
    if (rl->in_flight)
        rl->in_flight--;
    if (actual_tokens < 0 || !est_ok(est_tokens))
        return;
    if (actual_tokens > DX_RATELIMIT_MAX)
        actual_tokens = DX_RATELIMIT_MAX;
    refill(&rl->tok, now_ms);
    charge(&rl->tok, (actual_tokens - est_tokens) * UNIT);
}

int dx_ratelimit_enqueue(dx_ratelimit *rl, void *waiter, int64_t est_tokens,
                         int64_t deadline_ms)
{
    if (!waiter || !est_ok(est_tokens))
        return DX_EINVAL;
    if (too_big(rl, est_tokens) || rl->q_len >= rl->cfg.max_waiters)
        return DX_ELIMIT;
    size_t i = (rl->q_head + rl->q_len) % rl->cfg.max_waiters;
    rl->q[i] = (struct waiter){waiter, est_tokens, deadline_ms};
    rl->q_len++;
    return DX_OK;
}

void *dx_ratelimit_next_ready(dx_ratelimit *rl, int64_t now_ms,
                              int64_t *wait_ms)
{
    int64_t w = -1;
    void *out = NULL;
    if (rl->q_len) {
        waiter *h = &rl->q[rl->q_head];
        w = admit(rl, h->est, now_ms);
        if (w == 0) {
            out = h->w;
            rl->q_head = (rl->q_head + 1) % rl->cfg.max_waiters;
            rl->q_len--;
        }
    }
    if (wait_ms)
        *wait_ms = w;
    return out;
}

size_t dx_ratelimit_expire(dx_ratelimit *rl, int64_t now_ms,
                           dx_ratelimit_expire_fn fn, void *ud)
{
    size_t n = rl->cfg.max_waiters, kept = 0, removed = 0;
    for (size_t k = 0; k < rl->q_len; k++) {
        waiter x = rl->q[(rl->q_head + k) % n];
        if (x.deadline > 0 && x.deadline <= now_ms) {
            removed++;
            if (fn)
                fn(rl, x.w, ud);
            continue;
        }
        /* Compacting in place is safe: the write index never passes the
         * read index. */
        rl->q[(rl->q_head + kept) % n] = x;
        kept++;
    }
    rl->q_len = kept;
    return removed;
}

int64_t dx_ratelimit_next_deadline(const dx_ratelimit *rl)
{
    int64_t best = -1;
    for (size_t k = 0; k < rl->q_len; k++) {
        int64_t d = rl->q[(rl->q_head + k) % rl->cfg.max_waiters].deadline;
        if (d > 0 && (best < 0 || d < best))
            best = d;
    }
    return best;
}

dx_ratelimit_stats dx_ratelimit_get_stats(const dx_ratelimit *rl)
{
    dx_ratelimit_stats s = {
        .in_flight = rl->in_flight,
        .queued = rl->q_len,
        .requests_available = (double)rl->req.level / UNIT,
        .tokens_available = (double)rl->tok.level / UNIT,
    };
    return s;
}
