/*
 * http.c — the service's HTTP/1.1 core: its thread and libuv loop,
 * accepting, parsing with http_parser, keep-alive and pipelining with
 * responses written strictly in request order, size limits, the bounded
 * wait queue in front of the request processes (backpressure), answers
 * coming back from processes (a mutex-guarded list and a uv_async), and the
 * graceful drain at stop. What a request means is decided in serve.c.
 *
 * Unlike the LM server's core (providers/lmserver.c), whose answers are
 * computed on the loop thread at once, an answer here arrives later from
 * another thread, so each connection keeps its requests in a FIFO whose
 * head is written as soon as it is answered; a connection that closes
 * early leaves its running requests behind as orphans that are freed when
 * their answer comes.
 *
 * A streamed answer (dx__serve_stream_send) is the same request answered
 * in installments: its process appends chunks (chunked encoding) to the
 * request's pending bytes under the mutex and queues it; when it is the
 * head of its connection the loop writes whatever is pending, and the
 * request is done once its process ended the stream and all is written.
 */
#include <http_parser.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/runtime.h"
#include "serve_int.h"

#define MAX_URL 8192
#define MAX_HEADER_VALUE 8192
/* Requests owed on one connection before we stop reading from it. */
#define MAX_PIPELINED 32
#define READ_BUF 65536

/* ---- state ------------------------------------------------------------- */

typedef enum hdr_kind { H_OTHER, H_AUTH, H_ACCEPT, H_EXPECT } hdr_kind;

struct dx__conn {
    uv_tcp_t tcp;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    dx_serve *srv;
    dx__conn *prev, *next;
    http_parser parser;
    dx__buf url, body, hname, auth, accept, expect;
    hdr_kind cur;
    bool last_was_value;
    int reject_status;
    dx__sreq *head, *tail; /* requests in order, answered or not */
    size_t nreq;
    bool writing, reading, broken, closing;
    bool dash;     /* a dashboard watcher: gets every snapshot */
    int dash_left; /* snapshots until the stream ends; 0 = no end */
    dx__buf sout;  /* the streamed bytes being written */
};

static char rbuf[READ_BUF]; /* loop thread only: one read at a time */

/* ---- requests ---------------------------------------------------------- */

void dx__sreq_free(dx__sreq *r)
{
    if (r == NULL)
        return;
    if (r->prog != NULL)
        dx__prog_unref(r->prog);
    dx_free(r->body);
    dx_free(r->pre);
    dx_free(r->resp);
    dx__buf_free(&r->spend);
    dx_free(r);
}

/* The loop thread forgets r: one fewer response owed. */
static void retire(dx_serve *srv, dx__sreq *r)
{
    srv->nowed--;
    dx__sreq_free(r);
}

static void check_drained(dx_serve *srv);
static void kick(dx__conn *c);
static void close_conn(dx__conn *c);

static void run_waiting(dx_serve *srv)
{
    while (srv->wait_head != NULL && srv->nrunning < srv->max_conc) {
        dx__sreq *r = srv->wait_head;
        srv->wait_head = r->qnext;
        if (srv->wait_head == NULL)
            srv->wait_tail = NULL;
        srv->nwaiting--;
        atomic_store(&srv->st_waiting, srv->nwaiting);
        r->qnext = NULL;
        if (r->conn == NULL) {
            retire(srv, r); /* its client left while it waited */
            continue;
        }
        srv->nrunning++;
        atomic_store(&srv->st_running, srv->nrunning);
        r->dispatched = true;
        dx__serve_dispatch(srv, r);
    }
}

/* Loop thread: an answer for r is in r->resp. */
static void complete(dx_serve *srv, dx__sreq *r)
{
    r->answered = true;
    if (!r->superseded) {
        atomic_fetch_add(&srv->st_responses, 1);
        dx__serve_record(srv, r->route, r->status,
                         (double)(uv_hrtime() - r->t0_ns) / 1e9);
    }
    if (r->dispatched) {
        r->dispatched = false;
        srv->nrunning--;
        atomic_store(&srv->st_running, srv->nrunning);
        run_waiting(srv);
    }
    if (r->conn == NULL)
        retire(srv, r);
    else
        kick(r->conn);
    check_drained(srv);
}

/* 504 for r, which is past its deadline. A request still waiting leaves
 * the queue; one whose process runs is replaced in its connection's order
 * by a stand-in carrying the 504, and becomes an orphan whose late answer
 * is dropped. */
static void expire(dx_serve *srv, dx__conn *c, dx__sreq *prev, dx__sreq *r)
{
    char msg[160];
    snprintf(msg, sizeof msg,
             "the request did not finish within its deadline of %lld ms",
             (long long)srv->deadline_ms);
    if (!r->dispatched) {
        dx__sreq **pp = &srv->wait_head;
        dx__sreq *last = NULL;
        while (*pp != NULL && *pp != r) {
            last = *pp;
            pp = &(*pp)->qnext;
        }
        if (*pp == r) {
            *pp = r->qnext;
            if (srv->wait_tail == r)
                srv->wait_tail = last;
            srv->nwaiting--;
            atomic_store(&srv->st_waiting, srv->nwaiting);
        }
        r->qnext = NULL;
        dx__serve_error(r, 504, "deadline", "%s", msg);
        return;
    }
    dx__sreq *s = dx_calloc(1, sizeof *s);
    if (s == NULL)
        return; /* it will answer itself, later */
    s->srv = srv;
    s->conn = c;
    s->seq = r->seq;
    memcpy(s->rid, r->rid, sizeof s->rid);
    s->route = r->route;
    s->close_after = r->close_after;
    s->t0_ms = r->t0_ms;
    s->t0_ns = r->t0_ns;
    s->next = r->next;
    if (prev != NULL)
        prev->next = s;
    else
        c->head = s;
    if (c->tail == r)
        c->tail = s;
    srv->nowed++;
    r->next = NULL;
    r->conn = NULL;
    r->superseded = true;
    dx__serve_error(s, 504, "deadline", "%s", msg);
}

static void on_deadline_timer(uv_timer_t *t)
{
    dx_serve *srv = t->data;
    if (srv->nrunning + srv->nwaiting == 0) {
        uv_timer_stop(t);
        return;
    }
    int64_t now = dx_now_ms();
    for (dx__conn *c = srv->conns; c != NULL; c = c->next) {
        dx__sreq *prev = NULL;
        for (dx__sreq *r = c->head, *next; r != NULL; r = next) {
            next = r->next;
            if (!r->answered && !r->stream_seen &&
                now - r->t0_ms >= srv->deadline_ms) {
                expire(srv, c, prev, r);
                /* the stand-in (or r, answered) now sits here */
                prev = prev ? prev->next : c->head;
                continue;
            }
            prev = r;
        }
    }
}

void dx__serve_submit(dx_serve *srv, dx__sreq *r)
{
    if (!uv_is_active((uv_handle_t *)&srv->deadline_timer)) {
        uint64_t every =
            srv->deadline_ms >= 400 ? 100 : (uint64_t)srv->deadline_ms / 4 + 1;
        uv_timer_start(&srv->deadline_timer, on_deadline_timer, every, every);
    }
    if (srv->nrunning < srv->max_conc) {
        srv->nrunning++;
        atomic_store(&srv->st_running, srv->nrunning);
        r->dispatched = true;
        dx__serve_dispatch(srv, r);
        return;
    }
    if (srv->nwaiting < srv->queue_bound) {
        if (srv->wait_tail != NULL)
            srv->wait_tail->qnext = r;
        else
            srv->wait_head = r;
        srv->wait_tail = r;
        srv->nwaiting++;
        atomic_store(&srv->st_waiting, srv->nwaiting);
        return;
    }
    atomic_fetch_add(&srv->st_busy, 1);
    char hdr[64];
    snprintf(hdr, sizeof hdr, "Retry-After: %d\r\n", srv->retry_after_s);
    char body[256];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"code\":\"overloaded\",\"message\":\"the "
                     "server is at capacity (%u running, %u waiting); retry "
                     "later\",\"request_id\":\"%s\"}}",
                     srv->nrunning, srv->nwaiting, r->rid);
    dx__serve_answer(r, 503, NULL, hdr, body, (size_t)n);
}

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
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
    default:
        return status < 300   ? "OK"
               : status < 500 ? "Client Error"
                              : "Server Error";
    }
}

/* ---- streamed answers --------------------------------------------------- */

/* Under srv->mu: put r on the answered queue unless it is there. */
static void post_locked(dx_serve *srv, dx__sreq *r)
{
    if (r->s_queued)
        return;
    r->s_queued = true;
    r->qnext = NULL;
    if (srv->done_tail != NULL)
        srv->done_tail->qnext = r;
    else
        srv->done_head = r;
    srv->done_tail = r;
}

int dx__serve_stream_send(dx__sreq *r, const char *ctype,
                          const char *extra_headers, const char *data,
                          size_t len)
{
    dx_serve *srv = r->srv;
    pthread_mutex_lock(&srv->mu);
    if (srv->loop_gone) {
        pthread_mutex_unlock(&srv->mu);
        return DX_OK; /* nobody is listening any more */
    }
    r->spend.max = DX__STREAM_MAX_PENDING;
    int rc = 0;
    if (!r->streaming) {
        rc = dx__buf_fmt(&r->spend,
                         "HTTP/1.1 200 OK\r\nServer: dspex\r\nContent-Type: "
                         "%s\r\nTransfer-Encoding: chunked\r\nX-Request-Id: "
                         "%s\r\nConnection: %s\r\n%s\r\n",
                         ctype ? ctype : "text/event-stream", r->rid,
                         r->close_after ? "close" : "keep-alive",
                         extra_headers ? extra_headers : "");
        if (rc == 0) {
            r->streaming = true;
            r->status = 200;
        }
    }
    /* A chunk goes in whole or not at all. */
    if (rc == 0 && len > 0 && r->spend.len + len + 32 > r->spend.max)
        rc = DX_ELIMIT;
    if (rc == 0 && len > 0) {
        rc = dx__buf_fmt(&r->spend, "%zx\r\n", len);
        if (rc == 0)
            rc = dx__buf_append(&r->spend, data, len);
        if (rc == 0)
            rc = dx__buf_str(&r->spend, "\r\n");
    }
    if (r->streaming)
        post_locked(srv, r);
    pthread_mutex_unlock(&srv->mu);
    uv_async_send(&srv->async);
    return rc;
}

bool dx__serve_stream_begun(dx__sreq *r)
{
    pthread_mutex_lock(&r->srv->mu);
    bool b = r->streaming;
    pthread_mutex_unlock(&r->srv->mu);
    return b;
}

/* Under srv->mu: the last chunk, and r is the loop's again. Returns true
 * when the caller must free r (the loop is gone and does not hold it). */
static bool end_locked(dx_serve *srv, dx__sreq *r)
{
    r->s_ended = true;
    if (srv->loop_gone)
        return !r->s_queued; /* queued: dx__http_stop frees it */
    /* Without room for the last chunk the client sees the stream cut. */
    (void)dx__buf_str(&r->spend, "0\r\n\r\n");
    post_locked(srv, r);
    return false;
}

void dx__serve_stream_end(dx__sreq *r)
{
    dx_serve *srv = r->srv;
    pthread_mutex_lock(&srv->mu);
    bool free_it = end_locked(srv, r);
    pthread_mutex_unlock(&srv->mu);
    if (free_it)
        dx__sreq_free(r);
    else
        uv_async_send(&srv->async);
}

/* dx__serve_answer for a request whose stream began (its process died
 * mid-stream): the answer's body goes out as an error event, then the
 * stream ends. body: where the answer's body starts, or NULL. True when
 * it was handled so. */
static bool stream_failed(dx__sreq *r, const char *body)
{
    dx_serve *srv = r->srv;
    pthread_mutex_lock(&srv->mu);
    if (!r->streaming) {
        pthread_mutex_unlock(&srv->mu);
        return false;
    }
    if (!srv->loop_gone && body != NULL) {
        body += 4;
        size_t n = strlen(body);
        r->spend.max = 0; /* the last words always fit */
        (void)dx__buf_fmt(&r->spend, "%zx\r\nevent: error\ndata: %s\n\n\r\n",
                          n + 21, body);
    }
    bool free_it = end_locked(srv, r);
    pthread_mutex_unlock(&srv->mu);
    if (free_it)
        dx__sreq_free(r);
    else
        uv_async_send(&srv->async);
    return true;
}

void dx__serve_answer(dx__sreq *r, int status, const char *ctype,
                      const char *extra_headers, const char *body,
                      size_t body_len)
{
    dx_serve *srv = r->srv;
    dx__buf out = {0};
    int rc = dx__buf_fmt(
        &out,
        "HTTP/1.1 %d %s\r\nServer: dspex\r\nContent-Type: %s\r\n"
        "Content-Length: %zu\r\nX-Request-Id: %s\r\nConnection: %s\r\n%s\r\n",
        status, reason(status), ctype ? ctype : "application/json", body_len,
        r->rid, r->close_after ? "close" : "keep-alive",
        extra_headers ? extra_headers : "");
    if (rc == 0)
        rc = dx__buf_append(&out, body, body_len);
    if (rc != 0) {
        dx__buf_free(&out);
        static const char oom[] =
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n";
        out.p = dx_strdup(oom);
        out.len = out.p ? sizeof oom - 1 : 0;
        r->close_after = true;
        status = 500;
    }
    if (stream_failed(r, out.p ? strstr(out.p, "\r\n\r\n") : NULL)) {
        dx__buf_free(&out);
        return;
    }
    r->status = status;
    r->resp = out.p;
    r->resp_len = out.len;
    if (pthread_equal(pthread_self(), srv->thread)) {
        complete(srv, r);
        return;
    }
    pthread_mutex_lock(&srv->mu);
    if (srv->loop_gone) {
        pthread_mutex_unlock(&srv->mu);
        dx__sreq_free(r);
        return;
    }
    r->qnext = NULL;
    if (srv->done_tail != NULL)
        srv->done_tail->qnext = r;
    else
        srv->done_head = r;
    srv->done_tail = r;
    pthread_mutex_unlock(&srv->mu);
    uv_async_send(&srv->async);
}

/* ---- connections ------------------------------------------------------- */

static void on_closed(uv_handle_t *h)
{
    dx__conn *c = h->data;
    dx_serve *srv = c->srv;
    while (c->head != NULL) {
        dx__sreq *r = c->head;
        c->head = r->next;
        r->conn = NULL;
        /* Running or waiting ones are freed when they end or leave the
         * queue; the others now. */
        if (r->answered)
            retire(srv, r);
    }
    dx__buf_free(&c->url);
    dx__buf_free(&c->body);
    dx__buf_free(&c->hname);
    dx__buf_free(&c->auth);
    dx__buf_free(&c->accept);
    dx__buf_free(&c->expect);
    dx__buf_free(&c->sout);
    dx_free(c);
    check_drained(srv);
}

static void close_conn(dx__conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    dx_serve *srv = c->srv;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    srv->nopen--;
    atomic_store(&srv->st_open, srv->nopen);
    if (c->dash)
        atomic_fetch_sub(&srv->dash_subs, 1);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    *buf = uv_buf_init(rbuf, READ_BUF);
}

static void set_reading(dx__conn *c, bool on)
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

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    close_conn(req->data);
}

/* The head request's response is all written (status < 0: it failed). */
static void head_done(dx__conn *c, int status)
{
    dx__sreq *r = c->head;
    c->head = r->next;
    if (c->head == NULL)
        c->tail = NULL;
    c->nreq--;
    bool close_after = r->close_after;
    retire(c->srv, r);
    if (status < 0) {
        close_conn(c);
        return;
    }
    if (close_after) {
        c->broken = true;
        c->sreq.data = c;
        if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
            close_conn(c);
        return;
    }
    if (!c->broken && c->nreq < MAX_PIPELINED)
        set_reading(c, true);
    kick(c);
    check_drained(c->srv);
}

static void on_write(uv_write_t *req, int status)
{
    dx__conn *c = req->data;
    c->writing = false;
    if (c->closing)
        return;
    head_done(c, status);
}

static void on_stream_write(uv_write_t *req, int status)
{
    dx__conn *c = req->data;
    c->writing = false;
    c->sout.len = 0;
    if (c->closing)
        return;
    if (status < 0) {
        close_conn(c);
        return;
    }
    kick(c);
}

/* The head request streams: write what its process has added, and once
 * it ended and all is out, it is done. */
static void kick_stream(dx__conn *c, dx__sreq *r)
{
    dx_serve *srv = c->srv;
    pthread_mutex_lock(&srv->mu);
    dx__buf t = c->sout;
    c->sout = r->spend;
    r->spend = t; /* empty, its memory reused */
    r->spend.max = c->sout.max;
    pthread_mutex_unlock(&srv->mu);
    if (c->sout.len > 0) {
        uv_buf_t b = uv_buf_init(c->sout.p, (unsigned)c->sout.len);
        c->wreq.data = c;
        if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1,
                     on_stream_write) != 0) {
            close_conn(c);
            return;
        }
        c->writing = true;
        return;
    }
    if (r->answered)
        head_done(c, 0);
}

static void kick(dx__conn *c)
{
    dx__sreq *r = c->head;
    if (c->closing || c->writing || r == NULL)
        return;
    if (r->stream_seen) {
        kick_stream(c, r);
        return;
    }
    if (!r->answered)
        return;
    uv_buf_t b = uv_buf_init(r->resp, (unsigned)r->resp_len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        close_conn(c);
        return;
    }
    c->writing = true;
}

static dx__sreq *new_req(dx__conn *c)
{
    dx_serve *srv = c->srv;
    dx__sreq *r = dx_calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->srv = srv;
    r->conn = c;
    r->seq = ++srv->seq;
    r->t0_ms = dx_now_ms();
    r->t0_ns = uv_hrtime();
    r->route = DX__R_OTHER;
    snprintf(r->rid, sizeof r->rid, "%08x-%06llu", srv->rid_prefix,
             (unsigned long long)r->seq);
    r->next = NULL;
    if (c->tail != NULL)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->nreq++;
    srv->nowed++;
    atomic_fetch_add(&srv->st_requests, 1);
    return r;
}

static void answer_json_error(dx__sreq *r, int status, const char *code,
                              const char *msg)
{
    dx__serve_error(r, status, code, "%s", msg);
}

/* The parser cannot continue: answer once, then close. */
static void fail_conn(dx__conn *c, int status, const char *code,
                      const char *msg)
{
    c->broken = true;
    set_reading(c, false);
    dx__sreq *r = new_req(c);
    if (r == NULL) {
        close_conn(c);
        return;
    }
    r->close_after = true;
    answer_json_error(r, status, code, msg);
}

/* ---- parser callbacks -------------------------------------------------- */

static int on_message_begin(http_parser *p)
{
    dx__conn *c = p->data;
    c->url.len = c->body.len = c->hname.len = c->auth.len = c->accept.len =
        c->expect.len = 0;
    c->cur = H_OTHER;
    c->last_was_value = false;
    c->reject_status = 0;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    dx__conn *c = p->data;
    c->url.max = MAX_URL;
    if (dx__buf_append(&c->url, at, n) != 0) {
        c->reject_status = 431;
        return -1;
    }
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    dx__conn *c = p->data;
    if (c->last_was_value || c->hname.len == 0) {
        c->hname.len = 0;
        c->last_was_value = false;
    }
    c->hname.max = 256;
    if (dx__buf_append(&c->hname, at, n) != 0) {
        c->reject_status = 431;
        return -1;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    dx__conn *c = p->data;
    if (!c->last_was_value) {
        c->last_was_value = true;
        c->cur = H_OTHER;
        if (c->hname.p && strcasecmp(c->hname.p, "authorization") == 0)
            c->cur = H_AUTH;
        else if (c->hname.p && strcasecmp(c->hname.p, "accept") == 0)
            c->cur = H_ACCEPT;
        else if (c->hname.p && strcasecmp(c->hname.p, "expect") == 0)
            c->cur = H_EXPECT;
        c->hname.len = 0;
    }
    dx__buf *b = c->cur == H_AUTH     ? &c->auth
                 : c->cur == H_ACCEPT ? &c->accept
                 : c->cur == H_EXPECT ? &c->expect
                                      : NULL;
    if (b != NULL) {
        b->max = MAX_HEADER_VALUE;
        if (dx__buf_append(b, at, n) != 0) {
            c->reject_status = 431;
            return -1;
        }
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    dx__conn *c = p->data;
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->max_body) {
        c->reject_status = 413;
        return -1;
    }
    /* curl and others wait (a second, for curl) for this before sending a
     * larger body. Only when nothing is owed on the connection: an interim
     * response must not overtake the answers to earlier requests. */
    if (c->expect.p && strcasestr(c->expect.p, "100-continue") != NULL &&
        c->head == NULL && !c->writing) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
        (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    dx__conn *c = p->data;
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
    dx__conn *c = p->data;
    dx_serve *srv = c->srv;
    if (dx__buf_append(&c->url, "", 0) != 0 ||
        dx__buf_append(&c->body, "", 0) != 0) {
        c->reject_status = 500;
        return -1;
    }
    dx__sreq *r = new_req(c);
    if (r == NULL) {
        c->reject_status = 500;
        return -1;
    }
    bool keep = http_should_keep_alive(p) != 0;
    r->close_after = !keep || srv->draining;
    r->body = c->body.p;
    r->body_len = c->body.len;
    c->body.p = NULL;
    c->body.len = c->body.cap = 0;
    r->want_sse =
        c->accept.p && strstr(c->accept.p, "text/event-stream") != NULL;
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
    if (srv->draining)
        dx__serve_error(r, 503, "shutting_down", "the server is shutting down");
    else
        dx__serve_route(srv, r, http_method_str((enum http_method)p->method),
                        path, query, c->auth.p ? c->auth.p : "");
    if (r->close_after) {
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
    dx__conn *c = s->data;
    if (nread < 0) {
        close_conn(c);
        return;
    }
    if (nread == 0 || c->broken)
        return;
    size_t done =
        http_parser_execute(&c->parser, &settings, buf->base, (size_t)nread);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->broken || c->closing) {
        /* after Connection: close; the rest is ignored */
    } else if (e != HPE_OK) {
        int status = c->reject_status           ? c->reject_status
                     : e == HPE_HEADER_OVERFLOW ? 431
                                                : 400;
        char msg[160];
        const char *code = "bad_request";
        snprintf(msg, sizeof msg, "malformed HTTP request: %s",
                 http_errno_description(e));
        if (status == 413) {
            code = "body_too_large";
            snprintf(msg, sizeof msg, "request body is larger than %zu bytes",
                     c->srv->max_body);
        } else if (status == 431) {
            code = "headers_too_large";
            snprintf(msg, sizeof msg, "request line or headers are too large");
        } else if (status == 500) {
            code = "internal";
            snprintf(msg, sizeof msg, "out of memory");
        }
        fail_conn(c, status, code, msg);
        return;
    } else if (done != (size_t)nread || c->parser.upgrade) {
        fail_conn(c, 400, "bad_request", "protocol upgrades are not supported");
        return;
    } else if (c->nreq >= MAX_PIPELINED) {
        set_reading(c, false);
    }
    kick(c);
}

/* ---- dashboard watchers ------------------------------------------------ */

/* A watcher that cannot keep up skips snapshots instead of queueing them. */
#define DASH_MAX_QUEUED (1u << 20)

typedef struct snap {
    int refs; /* loop thread only */
    size_t len;
    char data[];
} snap;

typedef struct snap_write {
    uv_write_t req;
    snap *s;
} snap_write;

static void on_snap_written(uv_write_t *req, int status)
{
    snap_write *w = (snap_write *)req;
    if (--w->s->refs == 0)
        dx_free(w->s);
    dx__conn *c = req->handle->data;
    if (status < 0 && !c->closing)
        close_conn(c);
    dx_free(w);
}

void dx__serve_subscribe(dx_serve *srv, dx__sreq *r, int limit)
{
    dx__conn *c = r->conn;
    /* A limited stream asks the browser not to reconnect for an hour, so
     * a page loaded for a test settles after its last snapshot. */
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nServer: dspex\r\nContent-Type: "
                     "text/event-stream\r\nCache-Control: no-cache\r\n"
                     "Connection: close\r\n\r\n%s",
                     limit > 0 ? "retry: 3600000\n\n" : "");
    r->resp = dx_strdup(head);
    if (r->resp == NULL) {
        dx__serve_error(r, 500, "internal", "out of memory");
        return;
    }
    r->resp_len = (size_t)n;
    c->dash_left = limit > 0 ? limit : 0;
    r->status = 200;
    /* The stream ends when the client leaves: nothing more is parsed. */
    c->broken = true;
    c->dash = true;
    atomic_fetch_add(&srv->dash_subs, 1);
    complete(srv, r);
}

static void broadcast(dx_serve *srv, char *json)
{
    size_t n = strlen(json);
    static const char pre[] = "event: snapshot\ndata: ";
    snap *s = dx_malloc(sizeof *s + sizeof pre - 1 + n + 2);
    if (s == NULL) {
        dx_free(json);
        return;
    }
    memcpy(s->data, pre, sizeof pre - 1);
    memcpy(s->data + sizeof pre - 1, json, n);
    memcpy(s->data + sizeof pre - 1 + n, "\n\n", 2);
    s->len = sizeof pre - 1 + n + 2;
    s->refs = 1;
    dx_free(json);
    for (dx__conn *c = srv->conns; c != NULL; c = c->next) {
        if (!c->dash || c->closing || c->head != NULL ||
            uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >
                DASH_MAX_QUEUED)
            continue;
        snap_write *w = dx_malloc(sizeof *w);
        if (w == NULL)
            break;
        w->s = s;
        uv_buf_t b = uv_buf_init(s->data, (unsigned)s->len);
        if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_snap_written) !=
            0) {
            dx_free(w);
            continue;
        }
        s->refs++;
        if (c->dash_left > 0 && --c->dash_left == 0) {
            /* the last one: end the stream once it is written */
            c->dash = false;
            atomic_fetch_sub(&srv->dash_subs, 1);
            c->sreq.data = c;
            if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
                close_conn(c);
        }
    }
    if (--s->refs == 0)
        dx_free(s);
}

void dx__serve_post_snapshot(dx_serve *srv, char *json)
{
    pthread_mutex_lock(&srv->mu);
    if (srv->loop_gone) {
        pthread_mutex_unlock(&srv->mu);
        dx_free(json);
        return;
    }
    char *old = srv->snap_next;
    srv->snap_next = json;
    pthread_mutex_unlock(&srv->mu);
    dx_free(old);
    uv_async_send(&srv->async);
}

/* ---- accept, answers, drain, thread ------------------------------------ */

static void free_handle(uv_handle_t *h)
{
    dx_free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
    dx_serve *srv = server->data;
    if (status < 0)
        return;
    dx__conn *c = dx_calloc(1, sizeof *c);
    if (c == NULL || uv_tcp_init(&srv->loop, &c->tcp) != 0) {
        /* Take the connection off the backlog anyway, or it would spin. */
        uv_tcp_t *tmp = dx_malloc(sizeof *tmp);
        if (tmp != NULL && uv_tcp_init(&srv->loop, tmp) == 0) {
            uv_accept(server, (uv_stream_t *)tmp);
            uv_close((uv_handle_t *)tmp, free_handle);
        } else {
            dx_free(tmp);
        }
        dx_free(c);
        return;
    }
    c->srv = srv;
    c->tcp.data = c;
    c->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nopen++;
    atomic_store(&srv->st_open, srv->nopen);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        srv->nopen > srv->max_conns) {
        close_conn(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    set_reading(c, true);
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Close everything: the loop then ends. Requests still running become
 * orphans (freed when they answer, or by dx_serve_stop). */
static void shut_down(dx_serve *srv)
{
    close_if_open((uv_handle_t *)&srv->listener);
    close_if_open((uv_handle_t *)&srv->async);
    close_if_open((uv_handle_t *)&srv->reload_timer);
    close_if_open((uv_handle_t *)&srv->drain_timer);
    close_if_open((uv_handle_t *)&srv->deadline_timer);
    while (srv->wait_head != NULL) {
        dx__sreq *r = srv->wait_head;
        srv->wait_head = r->qnext;
        srv->nwaiting--;
        if (r->conn == NULL) {
            retire(srv, r);
        } else {
            r->qnext = NULL;
            r->answered = true; /* never will be: let the conn free it */
        }
    }
    srv->wait_tail = NULL;
    while (srv->conns != NULL)
        close_conn(srv->conns);
}

static void check_drained(dx_serve *srv)
{
    if (!srv->draining || srv->nowed > 0 ||
        uv_is_closing((uv_handle_t *)&srv->async))
        return;
    shut_down(srv);
}

static void on_drain_timeout(uv_timer_t *t)
{
    dx_serve *srv = t->data;
    srv->drain_timed_out = true;
    shut_down(srv);
}

static void on_reload_timer(uv_timer_t *t)
{
    dx__serve_check_reload(t->data);
}

static void on_async(uv_async_t *a)
{
    dx_serve *srv = a->data;
    pthread_mutex_lock(&srv->mu);
    /* A streaming request's process may queue it again as soon as the
     * lock is released: the batch is relinked through lnext, and its
     * stream state read, while the lock is held. */
    dx__sreq *list = NULL, **tail = &list;
    for (dx__sreq *r = srv->done_head; r != NULL; r = r->qnext) {
        r->s_queued = false;
        r->stream_seen = r->stream_seen || r->streaming;
        r->s_end_seen = r->s_ended;
        r->lnext = NULL;
        *tail = r;
        tail = &r->lnext;
    }
    srv->done_head = srv->done_tail = NULL;
    bool stop = srv->stop_asked;
    char *json = srv->snap_next;
    srv->snap_next = NULL;
    pthread_mutex_unlock(&srv->mu);
    if (json != NULL)
        broadcast(srv, json);
    while (list != NULL) {
        dx__sreq *r = list;
        list = r->lnext;
        if (r->stream_seen && !r->s_end_seen) {
            if (r->conn != NULL)
                kick(r->conn); /* more to write; it goes on */
            continue;
        }
        complete(srv, r);
    }
    if (stop && !srv->draining) {
        srv->draining = true;
        close_if_open((uv_handle_t *)&srv->listener);
        /* Idle keep-alive connections owe nothing: close them now, so
         * clients reconnect elsewhere instead of sending into a drain. */
        for (dx__conn *c = srv->conns, *next; c != NULL; c = next) {
            next = c->next;
            if (c->head == NULL && !c->parser.nread)
                close_conn(c);
        }
        if (srv->drain_ms >= 0)
            uv_timer_start(&srv->drain_timer, on_drain_timeout,
                           (uint64_t)srv->drain_ms, 0);
        check_drained(srv);
    }
}

static void *server_main(void *arg)
{
    dx_serve *srv = arg;
    /* Signals belong to the embedding program's threads; a write to a
     * vanished peer must give EPIPE here, not kill the process. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
#ifdef __linux__
    pthread_setname_np(pthread_self(), "dx-serve");
#endif
    uv_run(&srv->loop, UV_RUN_DEFAULT);
    pthread_mutex_lock(&srv->mu);
    srv->loop_gone = true;
    pthread_mutex_unlock(&srv->mu);
    return NULL;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    close_if_open(h);
}

static void close_loop(dx_serve *srv)
{
    uv_walk(&srv->loop, walk_close, NULL);
    uv_run(&srv->loop, UV_RUN_DEFAULT);
    uv_loop_close(&srv->loop);
}

int dx__http_start(dx_serve *srv, const char *host, int port)
{
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0)
        return DX_EINVAL;
    if (uv_loop_init(&srv->loop) != 0)
        return DX_ESYS;
    uv_tcp_init(&srv->loop, &srv->listener);
    srv->listener.data = srv;
    uv_timer_init(&srv->loop, &srv->reload_timer);
    srv->reload_timer.data = srv;
    uv_timer_init(&srv->loop, &srv->drain_timer);
    srv->drain_timer.data = srv;
    uv_timer_init(&srv->loop, &srv->deadline_timer);
    srv->deadline_timer.data = srv;
    int rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    if (rc == 0)
        rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound,
                                &blen);
    if (rc == 0)
        rc = uv_async_init(&srv->loop, &srv->async, on_async);
    if (rc == 0) {
        srv->async.data = srv;
        srv->port = bound.ss_family == AF_INET6
                        ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                        : ntohs(((struct sockaddr_in *)&bound)->sin_port);
        if (srv->reload_check_ms > 0)
            uv_timer_start(&srv->reload_timer, on_reload_timer,
                           (uint64_t)srv->reload_check_ms,
                           (uint64_t)srv->reload_check_ms);
        rc = pthread_create(&srv->thread, NULL, server_main, srv) == 0 ? 0 : -1;
    }
    if (rc != 0) {
        close_loop(srv);
        return DX_ESYS;
    }
    return DX_OK;
}

int dx__http_stop(dx_serve *srv, int64_t drain_ms)
{
    pthread_mutex_lock(&srv->mu);
    srv->stop_asked = true;
    srv->drain_ms = drain_ms;
    pthread_mutex_unlock(&srv->mu);
    uv_async_send(&srv->async);
    pthread_join(srv->thread, NULL);
    close_loop(srv);
    /* Answers that arrived after the last turn of the loop. A stream
     * still going is left to its process, which frees it at its end. */
    pthread_mutex_lock(&srv->mu);
    dx__sreq *list = NULL;
    for (dx__sreq *r = srv->done_head, *next; r != NULL; r = next) {
        next = r->qnext;
        r->s_queued = false;
        if (r->streaming && !r->s_ended)
            continue;
        r->lnext = list;
        list = r;
    }
    srv->done_head = srv->done_tail = NULL;
    pthread_mutex_unlock(&srv->mu);
    while (list != NULL) {
        dx__sreq *r = list;
        list = r->lnext;
        dx__sreq_free(r);
    }
    dx_free(srv->snap_next);
    srv->snap_next = NULL;
    return srv->drain_timed_out ? DX_ETIMEDOUT : DX_OK;
}
