/*
 * lmserver.c — the LM server's HTTP/1.1 core: its threads and libuv loops,
 * accepting and sharing out connections, parsing with http_parser, per-connection state, keep-alive,
 * pipelined requests answered strictly in order, request size limits, the
 * framing of each response (Content-Length, chunked SSE, or close-delimited)
 * and the timing side of faults (delay, stall, reset, truncated close). It
 * also owns the thread-safe reply and fault queues. What to answer is
 * decided in lmserver_wire.c.
 *
 * Every loop (dx_lmserver_opts.threads) listens on a socket of its own,
 * all bound to the one port with SO_REUSEPORT, so the kernel shares the
 * connections out and each loop accepts and owns its own: no socket is
 * passed between threads (which cost a duplicate, a close, a wake-up of
 * the other loop and libuv's set-up of the descriptor there). A connection
 * never changes loop, so everything below about one connection runs on one
 * thread; what loops share is the reply and fault queues (under mu) and
 * the counters (atomics).
 *
 * Each connection owes its responses in a FIFO; only the head is ever being
 * delayed or written, so a slow or stalled answer holds back the ones
 * pipelined behind it, as HTTP/1.1 requires. Whenever the connection is
 * closed by us on purpose we half-close first and keep draining input for a
 * moment, so a client still sending does not turn our last response into a
 * reset.
 */
#include <errno.h>
#include <netinet/in.h>
#include <http_parser.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/runtime.h"
#include "lmserver_int.h"

#define MAX_URL 8192
#define MAX_HEADER_BYTES (64u * 1024u)
#define MAX_HEADERS 128
/* Responses owed before we stop reading from a pipelining client. */
#define MAX_QUEUED 32
#define LINGER_MS 1000
#define LINGER_MAX_BYTES (64u * 1024u * 1024u)
#define READ_BUF 65536

/* ---- state ------------------------------------------------------------- */

typedef struct owed {
    struct owed *next;
    char *data;
    size_t send_len; /* bytes of data to send (less than all for faults) */
    uint64_t delay_ms;
    bool stall, reset, close_after, faulted;
} owed;

typedef struct reply_item {
    struct reply_item *next;
    char *text;
} reply_item;

typedef struct fault_item {
    struct fault_item *next;
    char spec[DX_LMSERVER_MAX_FAULT_SPEC];
    unsigned left;
} fault_item;

typedef struct lmloop lmloop;

typedef struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    dx_lmserver *srv;
    lmloop *lp; /* the loop that owns it */
    struct conn *prev, *next;
    http_parser parser;
    /* The request being parsed. */
    dx__buf url, hdrs, body;
    size_t hname[MAX_HEADERS], hval[MAX_HEADERS];
    size_t nh;
    bool last_was_value;
    bool in_message;
    int reject_status; /* set by a callback that refuses the request */
    dx__lms_header harr[MAX_HEADERS];
    /* Responses owed, in request order. */
    owed *head, *tail;
    size_t nowed;
    size_t lingered;
    int handles; /* open libuv handles; the conn is freed at 0 */
    bool writing, reading, broken, closing, lingering, timer_delay;
    /* While the head response is held back: when it is due (uv_hrtime)
     * and its place in the loop's heap of due answers (NOT_DUE if none). */
    uint64_t due_ns;
    size_t due_at;
} conn;

#define NOT_DUE SIZE_MAX

/* One server thread: its loop, its listening socket and its connections. */
struct lmloop {
    dx_lmserver *srv;
    unsigned index;
    uv_loop_t loop;
    uv_tcp_t listener;
    bool listening;   /* listener is initialised (to close) */
    uv_async_t async; /* stop */
    pthread_t thread;
    bool started;                     /* the thread runs (to join) */
    conn *conns;                      /* this loop's thread only */
    bool stopping;                    /* under srv->mu */
    atomic_uint_fast64_t st_accepted; /* read by any thread */
    /* Answers held back (latency, slow faults), earliest first: a min-heap
     * of conns on due_ns, and a timerfd set to the earliest. The loop's own
     * timers count whole milliseconds from a floored clock, which made
     * every answer about a millisecond late (1 % of a 100 ms latency). */
    int tfd;
    uv_poll_t tpoll;
    conn **due;
    size_t ndue, due_cap;
    uint64_t armed_ns; /* what tfd is set to; 0: disarmed */
    char rbuf[READ_BUF];
};

struct dx_lmserver {
    int port;
    size_t max_body;
    unsigned max_conns;
    unsigned nloops;
    lmloop *loops;
    pthread_mutex_t mu; /* guards the two queues and the stopping flags */
    reply_item *replies, *replies_tail;
    fault_item *faults, *faults_tail;
    atomic_uint_fast64_t st_requests, st_accepted, st_open, st_early, st_faults,
        ids;
    /* Responses owed (queued, not yet written) now and at most. */
    atomic_uint_fast64_t st_owed, st_owed_max;
    uint64_t latency_ms; /* added to every response's delay */
};

/* ---- queues (any thread) ----------------------------------------------- */

char *dx__lms_take_reply(dx_lmserver *srv)
{
    char *text = NULL;
    pthread_mutex_lock(&srv->mu);
    reply_item *r = srv->replies;
    if (r != NULL) {
        srv->replies = r->next;
        if (srv->replies == NULL)
            srv->replies_tail = NULL;
        text = r->text;
    }
    pthread_mutex_unlock(&srv->mu);
    dx_free(r);
    return text;
}

bool dx__lms_take_fault(dx_lmserver *srv, char *spec, size_t size)
{
    fault_item *done = NULL;
    bool found = false;
    pthread_mutex_lock(&srv->mu);
    fault_item *f = srv->faults;
    if (f != NULL) {
        snprintf(spec, size, "%s", f->spec);
        found = true;
        if (--f->left == 0) {
            srv->faults = f->next;
            if (srv->faults == NULL)
                srv->faults_tail = NULL;
            done = f;
        }
    }
    pthread_mutex_unlock(&srv->mu);
    dx_free(done);
    return found;
}

uint64_t dx__lms_next_id(dx_lmserver *srv)
{
    return atomic_fetch_add(&srv->ids, 1) + 1;
}

int dx_lmserver_push_reply(dx_lmserver *srv, const char *text)
{
    if (srv == NULL || text == NULL || strlen(text) > DX_LMSERVER_MAX_REPLY)
        return DX_EINVAL;
    reply_item *r = dx_malloc(sizeof *r);
    char *copy = dx_strdup(text);
    if (r == NULL || copy == NULL) {
        dx_free(r);
        dx_free(copy);
        return DX_ENOMEM;
    }
    r->text = copy;
    r->next = NULL;
    pthread_mutex_lock(&srv->mu);
    if (srv->replies_tail != NULL)
        srv->replies_tail->next = r;
    else
        srv->replies = r;
    srv->replies_tail = r;
    pthread_mutex_unlock(&srv->mu);
    return DX_OK;
}

int dx_lmserver_inject(dx_lmserver *srv, const char *spec, unsigned count)
{
    if (srv == NULL || spec == NULL || count == 0 ||
        strlen(spec) >= DX_LMSERVER_MAX_FAULT_SPEC ||
        !dx__lms_fault_valid(spec))
        return DX_EINVAL;
    fault_item *f = dx_malloc(sizeof *f);
    if (f == NULL)
        return DX_ENOMEM;
    snprintf(f->spec, sizeof f->spec, "%s", spec);
    f->left = count;
    f->next = NULL;
    pthread_mutex_lock(&srv->mu);
    if (srv->faults_tail != NULL)
        srv->faults_tail->next = f;
    else
        srv->faults = f;
    srv->faults_tail = f;
    pthread_mutex_unlock(&srv->mu);
    return DX_OK;
}

int dx_lmserver_port(const dx_lmserver *srv)
{
    return srv ? srv->port : 0;
}

void dx_lmserver_stats_get(const dx_lmserver *srv, dx_lmserver_stats *out)
{
    dx_lmserver *s = (dx_lmserver *)srv; /* atomics loads need non-const */
    out->requests = atomic_load(&s->st_requests);
    out->connections_accepted = atomic_load(&s->st_accepted);
    out->connections_open = atomic_load(&s->st_open);
    out->connections_closed_early = atomic_load(&s->st_early);
    out->faults_applied = atomic_load(&s->st_faults);
    out->max_in_flight = atomic_load(&s->st_owed_max);
    for (unsigned i = 0; i < DX_LMSERVER_MAX_THREADS; i++)
        out->accepted_by_thread[i] =
            i < s->nloops ? atomic_load(&s->loops[i].st_accepted) : 0;
}

/* ---- connection lifetime ----------------------------------------------- */

static void free_owed(dx_lmserver *srv, owed *o)
{
    if (o != NULL) {
        atomic_fetch_sub(&srv->st_owed, 1);
        dx_free(o->data);
        dx_free(o);
    }
}

static void reset_request(conn *c)
{
    c->url.len = c->hdrs.len = c->body.len = 0;
    c->nh = 0;
    c->last_was_value = false;
    c->reject_status = 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    conn *c = h->data;
    if (--c->handles > 0)
        return;
    while (c->head != NULL) {
        owed *o = c->head;
        c->head = o->next;
        free_owed(c->srv, o);
    }
    dx__buf_free(&c->url);
    dx__buf_free(&c->hdrs);
    dx__buf_free(&c->body);
    dx_free(c);
}

/* ---- answers held back: the loop's heap of due times ------------------ */

static void due_swap(lmloop *lp, size_t i, size_t j)
{
    conn *t = lp->due[i];
    lp->due[i] = lp->due[j];
    lp->due[j] = t;
    lp->due[i]->due_at = i;
    lp->due[j]->due_at = j;
}

static void due_up(lmloop *lp, size_t i)
{
    while (i > 0 && lp->due[(i - 1) / 2]->due_ns > lp->due[i]->due_ns) {
        due_swap(lp, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void due_down(lmloop *lp, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < lp->ndue && lp->due[l]->due_ns < lp->due[m]->due_ns)
            m = l;
        if (r < lp->ndue && lp->due[r]->due_ns < lp->due[m]->due_ns)
            m = r;
        if (m == i)
            return;
        due_swap(lp, i, m);
        i = m;
    }
}

/* Answers come due in windows of this many ns, released together: one
 * wake-up per answer (at 256 in flight, thousands a second) cost more CPU
 * than the ~1 ms of lateness it removed; a quarter millisecond keeps most
 * of the precision and the batching. */
#define DUE_WINDOW_NS 250000u

/* Set the timerfd to the end of the earliest answer's window (or disarm
 * it). */
static void due_arm(lmloop *lp)
{
    uint64_t at = 0;
    if (lp->ndue > 0)
        at = (lp->due[0]->due_ns / DUE_WINDOW_NS + 1) * DUE_WINDOW_NS;
    if (at == lp->armed_ns)
        return;
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(at / 1000000000u);
    its.it_value.tv_nsec = (long)(at % 1000000000u);
    if (timerfd_settime(lp->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        lp->armed_ns = at;
}

static bool due_push(lmloop *lp, conn *c)
{
    if (lp->tfd < 0)
        return false;
    if (lp->ndue == lp->due_cap) {
        size_t cap = lp->due_cap ? lp->due_cap * 2 : 64;
        conn **d = dx_realloc(lp->due, cap * sizeof *d);
        if (d == NULL)
            return false;
        lp->due = d;
        lp->due_cap = cap;
    }
    c->due_at = lp->ndue;
    lp->due[lp->ndue++] = c;
    due_up(lp, c->due_at);
    due_arm(lp);
    return true;
}

/* Take c off the heap, leaving the timer as it is. */
static void due_take(lmloop *lp, conn *c)
{
    size_t i = c->due_at;
    if (i == NOT_DUE)
        return;
    c->due_at = NOT_DUE;
    if (i != --lp->ndue) {
        lp->due[i] = lp->due[lp->ndue];
        lp->due[i]->due_at = i;
        due_up(lp, i);
        due_down(lp, lp->due[i]->due_at);
    }
}

static void due_remove(lmloop *lp, conn *c)
{
    due_take(lp, c);
    due_arm(lp);
}

static void kick(conn *c);

/* The timerfd fired: every answer now due goes out, and the timer is set
 * once, for what is left. (Setting it as each answer left the heap cost a
 * timerfd_settime per window the batch spanned, ~8 µs each on a VM, where
 * arming a timer traps to the hypervisor.) Setting the timer again also
 * clears the fd's expiry count, so the fd is read only when nothing is
 * left to wait for. */
static void on_due(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    lmloop *lp = p->data;
    lp->armed_ns = 0; /* a one-shot timer that fired is disarmed */
    uint64_t now = uv_hrtime();
    while (lp->ndue > 0 && lp->due[0]->due_ns <= now) {
        conn *c = lp->due[0];
        due_take(lp, c);
        c->timer_delay = false;
        kick(c);
    }
    due_arm(lp);
    if (lp->armed_ns == 0) {
        uint64_t fired;
        (void)!read(lp->tfd, &fired, sizeof fired);
    }
}

static void unlink_conn(conn *c)
{
    dx_lmserver *srv = c->srv;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        c->lp->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    atomic_fetch_sub(&srv->st_open, 1);
}

/* Close now. With hard = true the peer gets a RST instead of a FIN. */
static void close_conn(conn *c, bool hard)
{
    if (c->closing)
        return;
    c->closing = true;
    unlink_conn(c);
    due_remove(c->lp, c);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    if (hard && uv_tcp_close_reset(&c->tcp, on_handle_closed) == 0)
        return;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    conn *c = h->data;
    /* One loop thread consumes each read before the next alloc. */
    *buf = uv_buf_init(c->lp->rbuf, READ_BUF);
}

static void set_reading(conn *c, bool on)
{
    if (c->closing || on == c->reading)
        return;
    if (on)
        c->reading =
            uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0;
    else {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void on_timer(uv_timer_t *t)
{
    conn *c = t->data;
    if (c->lingering) {
        close_conn(c, false);
        return;
    }
    c->timer_delay = false; /* kick set the head's delay to 0 already */
    kick(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        close_conn(c, false);
        return;
    }
    /* Drain what the client still sends, so our answer is not lost to a
     * reset, but not forever. */
    c->lingering = true;
    set_reading(c, true);
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
}

/* The head answer went out (status 0) or could not be sent. */
static void wrote(conn *c, int status)
{
    c->writing = false;
    if (c->closing)
        return; /* the owed list is freed with the conn */
    owed *o = c->head;
    c->head = o->next;
    if (c->head == NULL)
        c->tail = NULL;
    c->nowed--;
    bool reset = o->reset, close_after = o->close_after;
    free_owed(c->srv, o);
    if (status < 0) {
        close_conn(c, false);
        return;
    }
    if (reset) {
        close_conn(c, true);
        return;
    }
    if (close_after) {
        c->broken = true;
        c->sreq.data = c;
        if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
            close_conn(c, false);
        return;
    }
    if (!c->broken && c->nowed < MAX_QUEUED)
        set_reading(c, true);
    kick(c);
}

static void on_write(uv_write_t *req, int status)
{
    wrote(req->data, status);
}

/* Start on the head response if nothing is in progress. */
static void kick(conn *c)
{
    owed *o = c->head;
    if (c->closing || c->writing || c->timer_delay || o == NULL || o->stall)
        return;
    if (o->delay_ms > 0) {
        c->timer_delay = true;
        c->due_ns = uv_hrtime() + o->delay_ms * 1000000u;
        uint64_t ms = o->delay_ms;
        o->delay_ms = 0; /* once due, the answer goes */
        if (due_push(c->lp, c))
            return;
        /* No room in the heap: the loop's own timer, whose clock is cached
         * and counts whole milliseconds; refresh it and round up so the
         * delay is never shorter than asked. */
        uv_update_time(&c->lp->loop);
        uv_timer_start(&c->timer, on_timer, ms + 1, 0);
        return;
    }
    /* Most answers fit the socket's buffer: written at once they need no
     * write request, whose completion would make libuv re-register the
     * descriptor with epoll (an epoll_ctl per answer). */
    uv_buf_t b = uv_buf_init(o->data, (unsigned)o->send_len);
    int sent = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (sent == (int)b.len) {
        wrote(c, 0);
        return;
    }
    if (sent > 0) {
        b.base += sent;
        b.len -= (size_t)sent;
    } else if (sent != UV_EAGAIN) {
        close_conn(c, false);
        return;
    }
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        close_conn(c, false);
        return;
    }
    c->writing = true;
}

/* ---- response framing -------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 529:
        return "Site Overloaded";
    default:
        return status < 300   ? "OK"
               : status < 500 ? "Client Error"
                              : "Server Error";
    }
}

dx__lms_response *dx__lms_response_new(void)
{
    dx__lms_response *rs = dx_malloc(sizeof *rs);
    if (rs != NULL)
        memset(rs, 0, offsetof(dx__lms_response, event_end));
    return rs;
}

/* How many SSE events a reset or truncated stream still gets. */
static size_t events_kept(const dx__lms_response *rs)
{
    return rs->nevents >= 2 ? rs->nevents / 2 : 0;
}

/* Append the strings up to NULL to b; nothing once *rc is set (the first
 * failure's code stays there). */
__attribute__((sentinel)) static void head_put(dx__buf *b, int *rc, ...)
{
    va_list ap;
    va_start(ap, rc);
    for (const char *s; *rc == 0 && (s = va_arg(ap, const char *)) != NULL;)
        *rc = dx__buf_str(b, s);
    va_end(ap);
}

/* Turn rs into bytes and queue them. close_after: the request asked for
 * Connection: close (or the parser cannot go on). */
static int queue_response(conn *c, dx__lms_response *rs, bool close_after)
{
    dx__buf out = {0};
    bool truncate = rs->truncate;
    bool chunked = rs->sse && !truncate;
    if (truncate)
        close_after = true;
    /* The head is put together from pieces rather than printed: every
     * answer has one, and printf was most of its cost. */
    char status[24], clen[24];
    long st = rs->status;
    size_t sl = st < 0 ? 1 : 0; /* as %d would print it */
    status[0] = '-';
    status[sl + dx__decimal(status + sl, (size_t)(st < 0 ? -st : st))] = '\0';
    clen[dx__decimal(clen, rs->body.len)] = '\0';
    int rc = 0;
    head_put(&out, &rc, "HTTP/1.1 ", status, " ", reason(rs->status),
             "\r\nServer: dspex-lmserver\r\n", NULL);
    if (rs->ctype != NULL)
        head_put(&out, &rc, "Content-Type: ", rs->ctype, "\r\n", NULL);
    if (rc == 0 && rs->headers.len > 0)
        rc = dx__buf_append(&out, rs->headers.p, rs->headers.len);
    if (chunked)
        head_put(&out, &rc, "Transfer-Encoding: chunked\r\n", NULL);
    else if (!truncate)
        head_put(&out, &rc, "Content-Length: ", clen, "\r\n", NULL);
    head_put(&out, &rc, "Connection: ", close_after ? "close" : "keep-alive",
             "\r\n\r\n", NULL);
    size_t send_len = out.len;
    const char *body = rs->body.p ? rs->body.p : "";
    bool partial = truncate || rs->reset_mid;
    if (rc == 0 && rs->sse) {
        size_t keep = partial ? events_kept(rs) : rs->nevents;
        size_t start = 0;
        for (size_t i = 0; rc == 0 && i < rs->nevents; i++) {
            size_t n = rs->event_end[i] - start;
            if (chunked)
                rc = dx__buf_fmt(&out, "%zx\r\n", n);
            if (rc == 0)
                rc = dx__buf_append(&out, body + start, n);
            if (rc == 0 && chunked)
                rc = dx__buf_str(&out, "\r\n");
            if (i < keep)
                send_len = out.len;
            start = rs->event_end[i];
        }
        if (rc == 0 && chunked)
            rc = dx__buf_str(&out, "0\r\n\r\n");
        if (!partial)
            send_len = out.len;
    } else if (rc == 0) {
        size_t head = out.len;
        rc = dx__buf_append(&out, body, rs->body.len);
        send_len = partial ? head + rs->body.len / 2 : out.len;
    }
    owed *o = rc == 0 ? dx_calloc(1, sizeof *o) : NULL;
    if (o == NULL) {
        dx__buf_free(&out);
        return rc ? rc : DX_ENOMEM;
    }
    o->data = out.p;
    o->send_len = send_len;
    o->delay_ms = rs->delay_ms + c->srv->latency_ms;
    o->stall = rs->stall;
    o->reset = rs->reset_mid;
    o->close_after = close_after;
    o->faulted = rs->faulted;
    if (c->tail != NULL)
        c->tail->next = o;
    else
        c->head = o;
    c->tail = o;
    c->nowed++;
    uint64_t owed_now = atomic_fetch_add(&c->srv->st_owed, 1) + 1;
    uint64_t owed_max = atomic_load(&c->srv->st_owed_max);
    while (owed_now > owed_max &&
           !atomic_compare_exchange_weak(&c->srv->st_owed_max, &owed_max,
                                         owed_now))
        ;
    if (rs->faulted)
        atomic_fetch_add(&c->srv->st_faults, 1);
    return DX_OK;
}

static void free_response(dx__lms_response *rs)
{
    dx__buf_free(&rs->headers);
    dx__buf_free(&rs->body);
}

/* The parser cannot continue: answer once, then close. Input that still
 * arrives is read and dropped (see on_read). */
static void fail_conn(conn *c, int status, const char *msg)
{
    c->broken = true;
    dx__lms_response *rs = dx__lms_response_new();
    int rc = DX_ENOMEM;
    if (rs != NULL) {
        dx__lms_core_error(c->url.p ? c->url.p : "", status, msg, rs);
        rc = queue_response(c, rs, true);
        free_response(rs);
        dx_free(rs);
    }
    if (rc != 0) {
        close_conn(c, false);
        return;
    }
    kick(c);
}

/* ---- parser callbacks -------------------------------------------------- */

static int on_message_begin(http_parser *p)
{
    conn *c = p->data;
    reset_request(c);
    c->in_message = true;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    c->url.max = MAX_URL;
    if (dx__buf_append(&c->url, at, n) != 0) {
        c->reject_status = 431;
        return -1;
    }
    return 0;
}

static int add_header_part(conn *c, const char *at, size_t n, bool value)
{
    c->hdrs.max = MAX_HEADER_BYTES;
    if (value != c->last_was_value || c->nh == 0) {
        /* a new field starts, or a field's value starts */
        if (!value) {
            if (c->nh == MAX_HEADERS)
                goto reject;
            if (c->nh > 0 && dx__buf_append(&c->hdrs, "", 1) != 0)
                goto reject; /* ends the previous value */
            c->hname[c->nh++] = c->hdrs.len;
        } else {
            if (c->nh == 0 || dx__buf_append(&c->hdrs, "", 1) != 0)
                goto reject; /* ends the name */
            c->hval[c->nh - 1] = c->hdrs.len;
        }
        c->last_was_value = value;
    }
    if (dx__buf_append(&c->hdrs, at, n) != 0)
        goto reject;
    return 0;
reject:
    c->reject_status = 431;
    return -1;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    return add_header_part(p->data, at, n, false);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    return add_header_part(p->data, at, n, true);
}

static int on_headers_complete(http_parser *p)
{
    conn *c = p->data;
    /* A field without a value ("Name:" then CRLF) never called on_header_value. */
    if (c->nh > 0 && !c->last_was_value) {
        if (dx__buf_append(&c->hdrs, "", 1) != 0) {
            c->reject_status = 431;
            return -1;
        }
        c->hval[c->nh - 1] = c->hdrs.len;
        c->last_was_value = true;
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->max_body) {
        c->reject_status = 413;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    conn *c = p->data;
    c->body.max = c->srv->max_body;
    int rc = dx__buf_append(&c->body, at, n);
    if (rc != 0) {
        c->reject_status = rc == DX_ELIMIT ? 413 : 500;
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn *c = p->data;
    dx_lmserver *srv = c->srv;
    c->in_message = false;
    atomic_fetch_add(&srv->st_requests, 1);
    if (dx__buf_append(&c->url, "", 0) != 0 ||
        dx__buf_append(&c->body, "", 0) != 0 ||
        dx__buf_append(&c->hdrs, "", 0) != 0) {
        c->reject_status = 500;
        return -1;
    }
    /* url is "path?query", or absolute-form "http://host/path?query". */
    char *path = c->url.p;
    if (strncasecmp(path, "http://", 7) == 0) {
        char *slash = strchr(path + 7, '/');
        path = slash ? slash : (char *)"/";
    }
    char *q = strchr(path, '?');
    const char *query = "";
    if (q != NULL) {
        *q = '\0';
        query = q + 1;
    }
    for (size_t i = 0; i < c->nh; i++) {
        c->harr[i].name = c->hdrs.p + c->hname[i];
        c->harr[i].value = c->hdrs.p + c->hval[i];
    }
    dx__lms_request rq = {
        .method = http_method_str((enum http_method)p->method),
        .path = path,
        .query = query,
        .headers = c->harr,
        .nheaders = c->nh,
        .body = c->body.p,
        .body_len = c->body.len,
    };
    dx__lms_response *rs = dx__lms_response_new();
    if (rs == NULL) {
        c->reject_status = 500;
        return -1;
    }
    dx__lms_handle(srv, &rq, rs);
    bool keep = http_should_keep_alive(p) != 0;
    int rc = queue_response(c, rs, !keep);
    free_response(rs);
    dx_free(rs);
    if (rc != 0) {
        c->reject_status = 500;
        return -1;
    }
    if (!keep) {
        /* Whatever follows a "Connection: close" request goes unanswered. */
        c->broken = true;
        http_parser_pause(p, 1);
    }
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = s->data;
    dx_lmserver *srv = c->srv;
    if (nread < 0) {
        if (!c->lingering && (c->in_message || c->head != NULL))
            atomic_fetch_add(&srv->st_early, 1);
        close_conn(c, false);
        return;
    }
    if (nread == 0)
        return;
    if (c->lingering) {
        c->lingered += (size_t)nread;
        if (c->lingered > LINGER_MAX_BYTES)
            close_conn(c, false);
        return;
    }
    if (c->broken)
        return; /* still reading, to notice the client leaving */
    size_t done =
        http_parser_execute(&c->parser, &settings, buf->base, (size_t)nread);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->closing) {
        return;
    } else if (c->broken) {
        /* after Connection: close; the rest is ignored */
    } else if (e != HPE_OK) {
        int status = c->reject_status           ? c->reject_status
                     : e == HPE_HEADER_OVERFLOW ? 431
                                                : 400;
        char msg[160];
        snprintf(msg, sizeof msg, "malformed HTTP request: %s",
                 http_errno_description(e));
        if (status == 413)
            snprintf(msg, sizeof msg, "request body is larger than %zu bytes",
                     srv->max_body);
        else if (status == 431)
            snprintf(msg, sizeof msg, "request line or headers are too large");
        else if (status == 500)
            snprintf(msg, sizeof msg, "out of memory");
        fail_conn(c, status, msg);
        return;
    } else if (done != (size_t)nread || c->parser.upgrade) {
        fail_conn(c, 400, "protocol upgrades are not supported");
        return;
    } else if (c->nowed >= MAX_QUEUED) {
        set_reading(c, false);
    }
    kick(c);
}

/* ---- accept, thread, start/stop ---------------------------------------- */

static void free_handle(uv_handle_t *h)
{
    dx_free(h);
}

/* Close callback of a conn whose tcp handle was set up but never used. */
static void free_conn_handle(uv_handle_t *h)
{
    dx_free(h->data);
}

/* A new connection of lp's, on lp's thread: c->tcp already holds the
 * socket. Counts it, and closes it at once over the limit. */
static void conn_begin(conn *c)
{
    dx_lmserver *srv = c->srv;
    lmloop *lp = c->lp;
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->due_at = NOT_DUE;
    uv_timer_init(&lp->loop, &c->timer);
    c->next = lp->conns;
    if (lp->conns != NULL)
        lp->conns->prev = c;
    lp->conns = c;
    uint64_t open = atomic_fetch_add(&srv->st_open, 1) + 1;
    atomic_fetch_add(&srv->st_accepted, 1);
    atomic_fetch_add(&lp->st_accepted, 1);
    if (open > srv->max_conns) {
        close_conn(c, false);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    set_reading(c, true);
}

static void on_connection(uv_stream_t *server, int status)
{
    lmloop *lp = server->data;
    if (status < 0)
        return;
    conn *c = dx_calloc(1, sizeof *c);
    if (c == NULL || uv_tcp_init(&lp->loop, &c->tcp) != 0) {
        /* Take the connection off the backlog anyway, or it would spin. */
        dx_free(c);
        uv_tcp_t *drop = dx_malloc(sizeof *drop);
        if (drop != NULL && uv_tcp_init(&lp->loop, drop) == 0) {
            uv_accept(server, (uv_stream_t *)drop);
            uv_close((uv_handle_t *)drop, free_handle);
        } else {
            dx_free(drop);
        }
        return;
    }
    c->srv = lp->srv;
    c->lp = lp;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        c->tcp.data = c;
        uv_close((uv_handle_t *)&c->tcp, free_conn_handle);
        return;
    }
    conn_begin(c);
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Wake-up of a loop: stop. */
static void on_async(uv_async_t *a)
{
    lmloop *lp = a->data;
    dx_lmserver *srv = lp->srv;
    pthread_mutex_lock(&srv->mu);
    bool stopping = lp->stopping;
    pthread_mutex_unlock(&srv->mu);
    if (!stopping)
        return;
    if (lp->listening)
        close_if_open((uv_handle_t *)&lp->listener);
    close_if_open((uv_handle_t *)&lp->async);
    if (lp->tfd >= 0)
        close_if_open((uv_handle_t *)&lp->tpoll);
    while (lp->conns != NULL)
        close_conn(lp->conns, false);
}

static void *server_main(void *arg)
{
    lmloop *lp = arg;
    /* Signals belong to the embedding program's threads; a write to a
     * vanished peer must give EPIPE here, not kill the process. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
#ifdef __linux__
    char name[16] = "dx-lmserver";
    if (lp->index > 0)
        snprintf(name, sizeof name, "dx-lmserver-%u", lp->index % 10u);
    pthread_setname_np(pthread_self(), name);
#endif
    uv_run(&lp->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    close_if_open(h);
}

static void drain_and_close_loop(lmloop *lp)
{
    uv_walk(&lp->loop, walk_close, NULL);
    uv_run(&lp->loop, UV_RUN_DEFAULT);
    uv_loop_close(&lp->loop);
}

static void free_queues(dx_lmserver *srv)
{
    while (srv->replies != NULL) {
        reply_item *r = srv->replies;
        srv->replies = r->next;
        dx_free(r->text);
        dx_free(r);
    }
    while (srv->faults != NULL) {
        fault_item *f = srv->faults;
        srv->faults = f->next;
        dx_free(f);
    }
}

/* Stop the loops whose threads run, join them, close every loop and free
 * the server. The first `inited` loops have a loop and an async handle. */
static void shut_down(dx_lmserver *srv, unsigned inited)
{
    for (unsigned i = 0; i < inited; i++) {
        lmloop *lp = &srv->loops[i];
        pthread_mutex_lock(&srv->mu);
        lp->stopping = true;
        if (lp->started)
            uv_async_send(&lp->async);
        pthread_mutex_unlock(&srv->mu);
    }
    for (unsigned i = 0; i < inited; i++)
        if (srv->loops[i].started)
            pthread_join(srv->loops[i].thread, NULL);
    /* Anything still open (none expected after a stop) is closed before
     * the loop goes. */
    for (unsigned i = 0; i < inited; i++) {
        lmloop *lp = &srv->loops[i];
        drain_and_close_loop(lp);
        if (lp->tfd >= 0)
            close(lp->tfd);
        dx_free(lp->due);
    }
    free_queues(srv);
    pthread_mutex_destroy(&srv->mu);
    dx_free(srv->loops);
    dx_free(srv);
}

/* addr with the given port; its length. */
static socklen_t with_port(const struct sockaddr_storage *addr, int port,
                           struct sockaddr_storage *out)
{
    *out = *addr;
    if (out->ss_family == AF_INET6) {
        ((struct sockaddr_in6 *)out)->sin6_port = htons((uint16_t)port);
        return sizeof(struct sockaddr_in6);
    }
    ((struct sockaddr_in *)out)->sin_port = htons((uint16_t)port);
    return sizeof(struct sockaddr_in);
}

/* A socket bound to addr:port, SO_REUSEPORT when shared. -1 on error. */
static int bound_socket(const struct sockaddr_storage *addr, int port,
                        bool shared)
{
    struct sockaddr_storage a;
    socklen_t alen = with_port(addr, port, &a);
    int fd = socket(a.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (shared &&
         setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(fd, (const struct sockaddr *)&a, alen) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The port a socket is bound to, or -1. */
static int port_of(int fd)
{
    struct sockaddr_storage b;
    socklen_t blen = sizeof b;
    if (getsockname(fd, (struct sockaddr *)&b, &blen) != 0)
        return -1;
    return b.ss_family == AF_INET6
               ? ntohs(((struct sockaddr_in6 *)&b)->sin6_port)
               : ntohs(((struct sockaddr_in *)&b)->sin_port);
}

/* The port the loops will share: port itself when free, or a free one the
 * system picks for 0. Checked with a socket of our own that does not
 * share, because sockets that share a port with SO_REUSEPORT would join a
 * running server of the same user on it instead of failing as taken. -1
 * when taken (or no socket). */
static int free_port(const struct sockaddr_storage *addr, int port)
{
    int fd = bound_socket(addr, port, false);
    if (fd < 0)
        return -1;
    int p = port_of(fd);
    close(fd);
    return p;
}

/* Make fd (bound) lp's listening socket; fd is the handle's, or closed. */
static int listen_with(lmloop *lp, int fd)
{
    if (uv_tcp_init(&lp->loop, &lp->listener) != 0) {
        close(fd);
        return -1;
    }
    lp->listening = true;
    lp->listener.data = lp;
    if (uv_tcp_open(&lp->listener, fd) != 0) {
        close(fd); /* the handle does not own it */
        return -1;
    }
    return uv_listen((uv_stream_t *)&lp->listener, 1024, on_connection) == 0
               ? 0
               : -1;
}

/* Every loop listening on addr: one socket, or one each sharing a port. */
static int listen_all(dx_lmserver *srv, const struct sockaddr_storage *addr,
                      int port)
{
    if (srv->nloops == 1) {
        int fd = bound_socket(addr, port, false);
        srv->port = fd >= 0 ? port_of(fd) : -1;
        return fd >= 0 ? listen_with(&srv->loops[0], fd) : -1;
    }
    /* A port the system picked can be taken between the check and the
     * bind; pick again then. */
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < (port == 0 ? 8 : 1); tries++) {
        int p = free_port(addr, port);
        fd = p > 0 ? bound_socket(addr, p, true) : -1;
        srv->port = p;
    }
    if (fd < 0 || listen_with(&srv->loops[0], fd) != 0)
        return -1;
    for (unsigned i = 1; i < srv->nloops; i++) {
        fd = bound_socket(addr, srv->port, true);
        if (fd < 0 || listen_with(&srv->loops[i], fd) != 0)
            return -1;
    }
    return 0;
}

int dx_lmserver_start(const dx_lmserver_opts *opts, dx_lmserver **out)
{
    if (out == NULL)
        return DX_EINVAL;
    *out = NULL;
    dx_lmserver_opts o = {0};
    if (opts != NULL)
        o = *opts;
    if (o.port < 0 || o.port > 65535 || o.threads > DX_LMSERVER_MAX_THREADS)
        return DX_EINVAL;
    const char *host = o.host ? o.host : "127.0.0.1";
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, o.port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, o.port, (struct sockaddr_in6 *)&addr) != 0)
        return DX_EINVAL;
    dx_lmserver *srv = dx_calloc(1, sizeof *srv);
    unsigned nloops = o.threads ? o.threads : 1;
    lmloop *loops = srv ? dx_calloc(nloops, sizeof *loops) : NULL;
    if (loops == NULL) {
        dx_free(srv);
        return DX_ENOMEM;
    }
    srv->loops = loops;
    srv->nloops = nloops;
    srv->max_body =
        o.max_body_bytes ? o.max_body_bytes : DX_LMSERVER_DEFAULT_MAX_BODY;
    srv->max_conns = o.max_connections ? o.max_connections
                                       : DX_LMSERVER_DEFAULT_MAX_CONNECTIONS;
    srv->latency_ms = o.latency_ms;
    pthread_mutex_init(&srv->mu, NULL);
    unsigned inited = 0;
    int rc = 0;
    for (; inited < nloops; inited++) {
        lmloop *lp = &loops[inited];
        lp->srv = srv;
        lp->index = inited;
        lp->tfd = -1;
        if (uv_loop_init(&lp->loop) != 0) {
            rc = -1;
            break;
        }
        if (uv_async_init(&lp->loop, &lp->async, on_async) != 0) {
            uv_loop_close(&lp->loop);
            rc = -1;
            break;
        }
        lp->async.data = lp;
        /* Without a timerfd, held-back answers use the loop's timers. */
        lp->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (lp->tfd >= 0 &&
            (uv_poll_init(&lp->loop, &lp->tpoll, lp->tfd) != 0 ||
             uv_poll_start(&lp->tpoll, UV_READABLE, on_due) != 0)) {
            close(lp->tfd);
            lp->tfd = -1;
        }
        lp->tpoll.data = lp;
    }
    if (rc == 0)
        rc = listen_all(srv, &addr, o.port);
    /* Room for every connection before the threads start: a growing table
     * would stall them all in the middle of the first burst
     * (dx_reserve_descriptors). */
    if (rc == 0)
        (void)dx_reserve_descriptors(srv->max_conns + 64);
    for (unsigned i = 0; rc == 0 && i < nloops; i++) {
        rc = pthread_create(&loops[i].thread, NULL, server_main, &loops[i]) == 0
                 ? 0
                 : -1;
        loops[i].started = rc == 0;
    }
    if (rc != 0) {
        shut_down(srv, inited);
        return DX_ESYS;
    }
    *out = srv;
    return DX_OK;
}

void dx_lmserver_stop_free(dx_lmserver *srv)
{
    if (srv == NULL)
        return;
    shut_down(srv, srv->nloops);
}
