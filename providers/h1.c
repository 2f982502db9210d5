/*
 * h1.c — dspex's own HTTP/1.1 client for plain HTTP to servers named by IP
 * address or localhost (h1_int.h says when and why). It owns, per lane (thread-local on
 * the lane's loop thread): the hosts it talks to, their connections (idle,
 * busy, connecting) and the exchanges waiting for a connection; per
 * exchange: the request bytes, its timer and the response parser state.
 * The transfer an exchange serves (its completion, the headers and body it
 * collects, cancellation, the requester's death) stays http.c's.
 *
 * One exchange per connection at a time; a connection that ends an
 * exchange cleanly with keep-alive goes back to its host's idle list, is
 * watched for reading there (the server closing it makes it readable, and
 * then it is closed at once), and is the first one a new exchange takes.
 * A kept connection can still be closed by the server just as a request
 * goes out on it: when such a connection ends before any response byte,
 * the exchange is tried once more on a new connection, as curl does. One
 * idle longer than the age limit (dx_http_limits.max_idle_age_ms) is
 * closed when next looked at instead of reused, as curl's are.
 */
#include "h1_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#include "buf_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/io.h"

/* ------------------------------------------------------------------ */
/* The request, on the submitting thread                                */
/* ------------------------------------------------------------------ */

extern char **environ;

/* Whether the environment hands requests to curl: DX_HTTP_CURL, or a
 * proxy curl would use (http_proxy, all_proxy, ALL_PROXY), set and not
 * empty. Read per request, as curl reads it per transfer, so a proxy set
 * while the program runs is honoured; in one pass over the environment
 * rather than four getenv calls (~1 k instructions a request). */
static bool env_wants_curl(void)
{
    static const char *const names[] = {
        "DX_HTTP_CURL=", "http_proxy=", "all_proxy=", "ALL_PROXY="};
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        char c = (*e)[0];
        if (c != 'D' && c != 'h' && c != 'a' && c != 'A')
            continue;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            size_t n = strlen(names[i]);
            if (strncmp(*e, names[i], n) == 0 && (*e)[n] != '\0')
                return true;
        }
    }
    return false;
}

/* Fill t from "host[:port]": an IP literal (IPv6 in brackets), or
 * localhost, which is the loopback (RFC 6761): 127.0.0.1, then [::1] if
 * that refuses. */
static bool parse_authority(const char *a, size_t n, dx__h1_target *t)
{
    char host[64];
    const char *port = NULL;
    size_t hlen;
    memset(t, 0, sizeof *t);
    if (n > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', n);
        if (close == NULL)
            return false;
        hlen = (size_t)(close - a - 1);
        if (hlen == 0 || hlen >= sizeof host)
            return false;
        memcpy(host, a + 1, hlen);
        if (close + 1 < a + n) {
            if (close[1] != ':')
                return false;
            port = close + 2;
        }
    } else {
        const char *colon = memchr(a, ':', n);
        hlen = colon != NULL ? (size_t)(colon - a) : n;
        if (hlen == 0 || hlen >= sizeof host)
            return false;
        memcpy(host, a, hlen);
        if (colon != NULL)
            port = colon + 1;
    }
    host[hlen] = '\0';
    unsigned long pnum = 80;
    if (port != NULL && port < a + n) {
        pnum = 0;
        for (const char *p = port; p < a + n; p++) {
            if (*p < '0' || *p > '9')
                return false;
            pnum = pnum * 10 + (unsigned long)(*p - '0');
            if (pnum > 65535)
                return false;
        }
        if (pnum == 0)
            return false;
    }
    struct sockaddr_in *v4 = (struct sockaddr_in *)&t->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&t->addr;
    if (strcasecmp(host, "localhost") == 0) {
        struct sockaddr_in6 *alt = (struct sockaddr_in6 *)&t->alt;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)pnum);
        v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        t->addr_len = sizeof *v4;
        alt->sin6_family = AF_INET6;
        alt->sin6_port = htons((uint16_t)pnum);
        alt->sin6_addr = in6addr_loopback;
        t->alt_len = sizeof *alt;
    } else if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)pnum);
        t->addr_len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)pnum);
        t->addr_len = sizeof *v6;
    } else {
        return false; /* a name: curl resolves it */
    }
    /* host is under 64 bytes, so the key fits in 80. */
    size_t hl = strlen(host);
    if (hl + 1 + 20 >= sizeof t->key)
        return false;
    memcpy(t->key, host, hl);
    t->key[hl] = ' ';
    t->key[hl + 1 + dx__decimal(t->key + hl + 1, pnum)] = '\0';
    return true;
}

static bool name_is(const char *line, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(line, name, n) == 0;
}

static void put(char **p, const char *s, size_t n)
{
    memcpy(*p, s, n);
    *p += n;
}

bool dx__h1_prepare(const dx_http_request *req, const char *method,
                    dx__h1_target *t, char **out, size_t *out_len)
{
    const char *url = req->url;
    if (strncasecmp(url, "http://", 7) != 0)
        return false;
    if (env_wants_curl())
        return false;
    const char *auth = url + 7;
    size_t alen = strcspn(auth, "/?#");
    if (memchr(auth, '@', alen) != NULL || !parse_authority(auth, alen, t))
        return false;
    const char *path = auth + alen;
    size_t plen = strcspn(path, "#"); /* the fragment is not sent */
    for (size_t i = 0; i < plen; i++)
        if ((unsigned char)path[i] <= 0x20 || (unsigned char)path[i] >= 0x7f)
            return false; /* curl knows what to do with those */

    bool user_accept = false, user_ctype = false, no_accept = false,
         no_ctype = false;
    size_t hbytes = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const char *h = req->headers[i];
        const char *colon = strchr(h, ':');
        if (colon == NULL)
            return false; /* "Name;" and the like */
        size_t n = (size_t)(colon - h);
        if (n == 0 || name_is(h, n, "Host") ||
            name_is(h, n, "Content-Length") ||
            name_is(h, n, "Transfer-Encoding") || name_is(h, n, "Connection"))
            return false;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        bool empty = *v == '\0';
        if (name_is(h, n, "Accept"))
            *(empty ? &no_accept : &user_accept) = true;
        if (name_is(h, n, "Content-Type"))
            *(empty ? &no_ctype : &user_ctype) = true;
        if (!empty) /* "Name:" only takes a header away, as in curl */
            hbytes += strlen(h) + 2;
    }

    bool head = strcmp(method, "HEAD") == 0;
    bool has_body = !head && (req->body_len > 0 || strcmp(method, "POST") == 0);
    /* The Host header is the authority as written, less a default port. */
    size_t host_len = alen;
    if (alen > 3 && memcmp(auth + alen - 3, ":80", 3) == 0 &&
        (auth[0] == '[' ? auth[alen - 4] == ']' : true))
        host_len = alen - 3;
    static const char accept[] = "Accept: */*\r\n";
    static const char form[] =
        "Content-Type: application/x-www-form-urlencoded\r\n";
    char clen[48] = "";
    if (has_body) {
        size_t n = sizeof "Content-Length: " - 1;
        memcpy(clen, "Content-Length: ", n);
        n += dx__decimal(clen + n, req->body_len);
        memcpy(clen + n, "\r\n", 3);
    }
    bool slash = plen == 0 || path[0] == '?'; /* "/" goes before a query */
    size_t total =
        strlen(method) + 1 + slash + plen + 11 + 6 + host_len + 2 +
        (user_accept || no_accept ? 0 : sizeof accept - 1) + hbytes +
        (has_body && !user_ctype && !no_ctype ? sizeof form - 1 : 0) +
        strlen(clen) + 2 + (has_body ? req->body_len : 0);
    char *buf = dx_malloc(total + 1);
    if (buf == NULL)
        return false;
    char *p = buf;
    put(&p, method, strlen(method));
    put(&p, " ", 1);
    if (slash)
        put(&p, "/", 1);
    put(&p, path, plen);
    put(&p, " HTTP/1.1\r\nHost: ", 17);
    put(&p, auth, host_len);
    put(&p, "\r\n", 2);
    if (!user_accept && !no_accept)
        put(&p, accept, sizeof accept - 1);
    for (size_t i = 0; i < req->nheaders; i++) {
        const char *h = req->headers[i];
        const char *v = strchr(h, ':') + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v == '\0')
            continue;
        put(&p, h, strlen(h));
        put(&p, "\r\n", 2);
    }
    if (has_body && !user_ctype && !no_ctype)
        put(&p, form, sizeof form - 1);
    put(&p, clen, strlen(clen));
    put(&p, "\r\n", 2);
    if (has_body && req->body_len > 0)
        put(&p, req->body, req->body_len);
    *out = buf;
    *out_len = (size_t)(p - buf);
    return true;
}

/* ------------------------------------------------------------------ */
/* Connections and exchanges, on a lane's loop thread                   */
/* ------------------------------------------------------------------ */

typedef struct h1host h1host;
typedef struct h1conn h1conn;

struct dx__h1_xfer {
    const dx__h1_ops *ops;
    void *ud;
    h1host *host;
    h1conn *conn;               /* NULL while waiting for one */
    struct dx__h1_xfer *wnext;  /* in host->wait */
    struct dx__h1_xfer **wprev; /* the pointer to it there */
    char *req;
    size_t req_len, sent;
    bool head;
    bool retried;    /* once on a new connection after a dead kept one */
    bool got_bytes;  /* a response byte arrived on this connection */
    bool complete;   /* the final response is in */
    bool stopped;    /* a callback said stop */
    bool pending;    /* pending_err waits for the timer to report it */
    bool other_addr; /* the host's other address was tried too */
    bool head_done;  /* the status line of this response went out */
    bool in_value;   /* the header line being built has its value */
    int pending_err; /* found in dx__h1_start: told from the timer */
    char pending_detail[96];
    uint64_t t0, connected_ns, first_byte_ns;
    uint64_t deadline_ns, connect_deadline_ns; /* 0: none */
    uv_timer_t *timer;                         /* heap: closes later */
    dx__buf line;                              /* header line being built */
};

struct h1conn {
    uv_poll_t *poll; /* heap: closes later, then the descriptor */
    int fd;
    h1host *host;
    h1conn *prev, *next; /* in host->idle, or host->busy */
    dx__h1_xfer *x;      /* the exchange on it; NULL while idle */
    bool connecting;
    bool reused;
    bool idle;
    bool alt;               /* connected to the target's alt address */
    uint64_t idle_since_ns; /* when it last went idle (uv_hrtime) */
    int events;             /* being watched */
    http_parser parser;
};

struct h1host {
    char key[80];
    dx__h1_target target;
    h1conn *idle; /* most recently used first */
    h1conn *busy;
    size_t nconns; /* idle, busy and connecting */
    bool use_alt;  /* the alt address answered where the first refused */
    dx__h1_xfer *wait, **wait_tail;
    h1host *next;
};

typedef struct h1lane {
    h1host *hosts;
    long host_max, total_max, idle_max;
    uint64_t idle_age_ns; /* an idle connection older is not reused */
    size_t nconns, nidle, running;
    char rbuf[64 * 1024];
} h1lane;

static _Thread_local h1lane *H;
static atomic_uint_least64_t opened;

uint64_t dx__h1_connections_opened(void)
{
    return atomic_load(&opened);
}

static int on_h_field(http_parser *p, const char *at, size_t n);
static int on_h_value(http_parser *p, const char *at, size_t n);
static int on_h_done(http_parser *p);
static int on_body(http_parser *p, const char *at, size_t n);
static int on_complete(http_parser *p);

static const http_parser_settings settings = {
    .on_header_field = on_h_field,
    .on_header_value = on_h_value,
    .on_headers_complete = on_h_done,
    .on_body = on_body,
    .on_message_complete = on_complete,
};

static h1lane *lane(void)
{
    if (H == NULL)
        H = dx_calloc(1, sizeof *H);
    return H;
}

void dx__h1_set_limits(long host_max, long total_max, long idle_max,
                       long idle_age_ms)
{
    h1lane *l = lane();
    if (l == NULL)
        return;
    l->host_max = host_max;
    l->total_max = total_max;
    l->idle_max = idle_max;
    l->idle_age_ns = (uint64_t)idle_age_ms * 1000000u;
}

static h1host *host_get(const dx__h1_target *t)
{
    for (h1host *h = H->hosts; h != NULL; h = h->next)
        if (strcmp(h->key, t->key) == 0)
            return h;
    h1host *h = dx_calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    memcpy(h->key, t->key, sizeof h->key);
    h->target = *t;
    h->wait_tail = &h->wait;
    h->next = H->hosts;
    H->hosts = h;
    return h;
}

static void list_add(h1conn **head, h1conn *c)
{
    c->prev = NULL;
    c->next = *head;
    if (*head != NULL)
        (*head)->prev = c;
    *head = c;
}

static void list_del(h1conn **head, h1conn *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void poll_closed(uv_handle_t *h)
{
    h1conn *c = h->data;
    close(c->fd);
    dx_free(h);
    dx_free(c);
}

static void timer_closed(uv_handle_t *h)
{
    dx_free(h);
}

static void serve_waiters(void);

/* Close a connection (idle or busy; its exchange already detached). */
static void conn_close(h1conn *c)
{
    h1host *h = c->host;
    if (c->idle) {
        list_del(&h->idle, c);
        H->nidle--;
    } else {
        list_del(&h->busy, c);
    }
    h->nconns--;
    H->nconns--;
    uv_close((uv_handle_t *)c->poll, poll_closed);
}

static void conn_busy_to_idle(h1conn *c)
{
    list_del(&c->host->busy, c);
    list_add(&c->host->idle, c);
    c->idle = true;
    c->x = NULL;
    c->idle_since_ns = uv_hrtime();
    H->nidle++;
}

static int64_t since_us(uint64_t from, uint64_t to)
{
    return from == 0 || to < from ? 0 : (int64_t)((to - from) / 1000);
}

/* Take x off its connection (closing it unless keep) or wait queue, stop
 * its timer and free it; the result, if any, is reported first. */
static void xfer_end(dx__h1_xfer *x, const dx__h1_result *r, bool keep_conn)
{
    h1conn *c = x->conn;
    if (c != NULL) {
        x->conn = NULL;
        /* Kept when someone waits for it or the idle ones are under the
         * limit (0: four per exchange running, as curl). */
        size_t room = H->idle_max > 0 ? (size_t)H->idle_max
                                      : 4 * (H->running > 1 ? H->running : 1);
        if (keep_conn && (c->host->wait != NULL || H->nidle < room))
            conn_busy_to_idle(c);
        else
            conn_close(c);
    }
    if (x->wprev != NULL) {
        *x->wprev = x->wnext;
        if (x->wnext != NULL)
            x->wnext->wprev = x->wprev;
        else
            x->host->wait_tail = x->wprev;
        x->wprev = NULL;
    }
    H->running--;
    uv_close((uv_handle_t *)x->timer, timer_closed);
    dx_free(x->req);
    dx__buf_free(&x->line);
    const dx__h1_ops *ops = x->ops;
    void *ud = x->ud;
    dx_free(x);
    if (r != NULL)
        ops->done(ud, r);
    serve_waiters();
}

static void fail(dx__h1_xfer *x, int err, const char *what, const char *detail)
{
    uint64_t now = uv_hrtime();
    dx__h1_result r = {.err = err,
                       .what = what,
                       .http_version = 0,
                       .total_us = since_us(x->t0, now),
                       .connect_us = since_us(x->t0, x->connected_ns),
                       .ttfb_us = since_us(x->t0, x->first_byte_ns)};
    snprintf(r.detail, sizeof r.detail, "%s", detail ? detail : "");
    xfer_end(x, &r, false);
}

static void succeed(dx__h1_xfer *x, bool keep_conn)
{
    uint64_t now = uv_hrtime();
    h1conn *c = x->conn;
    dx__h1_result r = {
        .err = DX_OK,
        .what = "",
        .http_version =
            c->parser.http_major == 1 && c->parser.http_minor == 0 ? 10 : 11,
        .total_us = since_us(x->t0, now),
        .connect_us = since_us(x->t0, x->connected_ns),
        .ttfb_us = since_us(x->t0, x->first_byte_ns)};
    if (r.connect_us == 0)
        r.connect_us = 1; /* connected (a kept connection): not "never" */
    xfer_end(x, &r, keep_conn);
}

static void on_io(uv_poll_t *p, int status, int events);

/* uv_poll_start re-registers the descriptor even for the same events: only
 * when they change. */
static void watch(h1conn *c, int events)
{
    if (c->events != events) {
        c->events = events;
        uv_poll_start(c->poll, events, on_io);
    }
}

static void conn_attach(h1conn *c, dx__h1_xfer *x)
{
    c->x = x;
    x->conn = c;
    x->sent = 0;
    x->got_bytes = false;
    x->head_done = false;
    x->in_value = false;
    x->line.len = 0;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
}

/* Write what the socket takes; watch for the rest, then for the answer. */
static void send_more(h1conn *c)
{
    dx__h1_xfer *x = c->x;
    while (x->sent < x->req_len) {
        ssize_t n =
            send(c->fd, x->req + x->sent, x->req_len - x->sent, MSG_NOSIGNAL);
        if (n > 0) {
            x->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            watch(c, UV_READABLE | UV_WRITABLE);
            return;
        }
        /* The peer is gone; the read side says how (and a kept
         * connection's exchange is retried from there). */
        break;
    }
    watch(c, UV_READABLE);
}

static bool conn_open(dx__h1_xfer *x);

/* Give x a connection: a kept one, a new one, or a place in the queue. */
static void assign(dx__h1_xfer *x, bool fresh_only)
{
    h1host *h = x->host;
    /* The idle list runs from the most recently used: once one is too
     * old to trust, so is every one after it. */
    if (h->idle != NULL && H->idle_age_ns > 0) {
        uint64_t now = uv_hrtime();
        while (h->idle != NULL && now - h->idle->idle_since_ns > H->idle_age_ns)
            conn_close(h->idle);
    }
    if (!fresh_only && h->idle != NULL) {
        h1conn *c = h->idle;
        list_del(&h->idle, c);
        c->idle = false;
        H->nidle--;
        list_add(&h->busy, c);
        c->reused = true;
        conn_attach(c, x);
        if (x->connected_ns == 0)
            x->connected_ns = uv_hrtime();
        send_more(c);
        return;
    }
    bool host_room = H->host_max <= 0 || (long)h->nconns < H->host_max;
    bool total_room = H->total_max <= 0 || (long)H->nconns < H->total_max;
    if (host_room && !total_room) {
        /* Make room by closing an idle connection to another host. */
        for (h1host *o = H->hosts; o != NULL && !total_room; o = o->next)
            if (o->idle != NULL) {
                conn_close(o->idle);
                total_room = true;
            }
    }
    if (host_room && total_room) {
        conn_open(x);
        return;
    }
    x->wnext = NULL;
    x->wprev = h->wait_tail;
    *h->wait_tail = x;
    h->wait_tail = &x->wnext;
}

static void serve_waiters(void)
{
    for (h1host *h = H->hosts; h != NULL; h = h->next) {
        while (h->wait != NULL) {
            bool host_room = H->host_max <= 0 || (long)h->nconns < H->host_max;
            bool total_room =
                H->total_max <= 0 || (long)H->nconns < H->total_max;
            if (h->idle == NULL && !(host_room && total_room))
                break;
            dx__h1_xfer *x = h->wait;
            *x->wprev = x->wnext;
            if (x->wnext != NULL)
                x->wnext->wprev = x->wprev;
            else
                h->wait_tail = x->wprev;
            x->wprev = NULL;
            assign(x, false);
        }
    }
}

static void on_timer(uv_timer_t *t);

/* Report an error found while starting, from the timer (never from
 * dx__h1_start itself). */
static void defer_error(dx__h1_xfer *x, int err, const char *detail)
{
    x->pending = true;
    x->pending_err = err;
    snprintf(x->pending_detail, sizeof x->pending_detail, "%s", detail);
    uv_timer_start(x->timer, on_timer, 0, 0);
}

/* After a refused connect: whether x may try the host's other address. */
static bool try_other(dx__h1_xfer *x)
{
    if (x->host->target.alt_len == 0 || x->other_addr)
        return false;
    x->other_addr = true;
    return true;
}

static void arm_timer(dx__h1_xfer *x);

/* c's connect is over: the exchange's clock starts and its request goes. */
static void connected(h1conn *c)
{
    dx__h1_xfer *x = c->x;
    c->host->use_alt = c->alt;
    c->connecting = false;
    x->connected_ns = uv_hrtime();
    arm_timer(x);
    send_more(c);
}

static bool conn_open(dx__h1_xfer *x)
{
    h1host *h = x->host;
    const dx__h1_target *t = &h->target;
    bool alt = t->alt_len != 0 && h->use_alt != x->other_addr;
    const struct sockaddr_storage *addr = alt ? &t->alt : &t->addr;
    socklen_t addr_len = alt ? t->alt_len : t->addr_len;
    h1conn *c = dx_calloc(1, sizeof *c);
    uv_poll_t *poll = dx_malloc(sizeof *poll);
    bool oom = c == NULL || poll == NULL;
    int fd = oom ? -1
                 : socket(addr->ss_family,
                          SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        dx_free(c);
        dx_free(poll);
        defer_error(x, oom ? DX_ENOMEM : DX_ECONNECT, strerror(e));
        return false;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Probes after a minute idle, then every minute, as curl's transfers
     * do: they keep a firewall's or NAT's memory of a kept connection
     * fresh (the system's default waits two hours). */
    int minute = 60;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &minute, sizeof minute);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &minute, sizeof minute);
    int rc = connect(fd, (const struct sockaddr *)addr, addr_len);
    if ((rc != 0 && errno != EINPROGRESS) ||
        uv_poll_init_socket(dx_io_loop(), poll, fd) != 0) {
        int e = errno;
        close(fd);
        dx_free(c);
        dx_free(poll);
        if (try_other(x))
            return conn_open(x);
        defer_error(x, DX_ECONNECT, strerror(e));
        return false;
    }
    c->alt = alt;
    atomic_fetch_add(&opened, 1);
    c->fd = fd;
    c->poll = poll;
    poll->data = c;
    c->host = h;
    c->connecting = true;
    list_add(&h->busy, c);
    h->nconns++;
    H->nconns++;
    conn_attach(c, x);
    /* To a local server the handshake is over by the time connect()
     * returns, though it says EINPROGRESS: the request goes at once, which
     * spares a trip through the loop (and two changes to what the loop
     * watches) per new connection. To a distant one the connection is
     * still opening (EAGAIN) and the writable event completes it. */
    ssize_t n = send(fd, x->req, x->req_len, MSG_NOSIGNAL);
    if (n > 0) {
        x->sent = (size_t)n;
        connected(c);
        return true;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
        errno != ENOTCONN) {
        /* Refused or reset while opening; send() has taken the socket's
         * error, so the writable event would not see it. */
        int e = errno;
        x->conn = NULL;
        conn_close(c);
        if (try_other(x))
            return conn_open(x);
        defer_error(x, DX_ECONNECT, strerror(e));
        return false;
    }
    watch(c, UV_WRITABLE);
    return true;
}

/* When the exchange's next deadline is due. */
static void arm_timer(dx__h1_xfer *x)
{
    uint64_t next = x->deadline_ns;
    if (x->connected_ns == 0 && x->connect_deadline_ns != 0 &&
        (next == 0 || x->connect_deadline_ns < next))
        next = x->connect_deadline_ns;
    if (next == 0) {
        uv_timer_stop(x->timer);
        return;
    }
    uint64_t now = uv_hrtime();
    uint64_t ms = next > now ? (next - now + 999999) / 1000000 : 0;
    uv_update_time(dx_io_loop());
    uv_timer_start(x->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t)
{
    dx__h1_xfer *x = t->data;
    if (x->pending) {
        x->pending = false;
        fail(x, x->pending_err,
             x->pending_err == DX_ENOMEM ? "out of memory"
                                         : "could not connect",
             x->pending_detail);
        return;
    }
    uint64_t now = uv_hrtime();
    if (x->connected_ns == 0 && x->connect_deadline_ns != 0 &&
        now >= x->connect_deadline_ns) {
        fail(x, DX_ECONNECT, "no connection in time",
             x->conn == NULL ? "waiting for a free connection" : "");
        return;
    }
    if (x->deadline_ns != 0 && now >= x->deadline_ns) {
        if (x->connected_ns == 0)
            fail(x, DX_ECONNECT, "no connection in time", "");
        else
            fail(x, DX_ETIMEDOUT, "request timed out", "");
        return;
    }
    arm_timer(x); /* early by a rounding: wait on */
}

/* The connection ended (EOF, reset) before the exchange finished. */
static void broken(h1conn *c, int sys_err)
{
    dx__h1_xfer *x = c->x;
    if (c->reused && !x->got_bytes && !x->retried) {
        /* A kept connection the server had closed: once more, on a new
         * connection. */
        x->retried = true;
        x->conn = NULL;
        conn_close(c);
        x->connected_ns = 0;
        assign(x, true);
        if (!x->pending)
            arm_timer(x);
        return;
    }
    fail(x, DX_ERESET,
         x->got_bytes ? "connection broke"
                      : "connection broke: empty reply from server",
         sys_err ? strerror(sys_err) : "the server closed the connection");
}

static void read_some(h1conn *c)
{
    dx__h1_xfer *x = c->x;
    for (;;) {
        ssize_t n = recv(c->fd, H->rbuf, sizeof H->rbuf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            int e = n < 0 ? errno : 0;
            if (n == 0 && x->got_bytes) {
                /* A body that runs to the close ends here. */
                http_parser_execute(&c->parser, &settings, NULL, 0);
                if (x->complete) {
                    succeed(x, false);
                    return;
                }
            }
            broken(c, e);
            return;
        }
        if (!x->got_bytes) {
            x->got_bytes = true;
            x->first_byte_ns = uv_hrtime();
        }
        size_t used =
            http_parser_execute(&c->parser, &settings, H->rbuf, (size_t)n);
        if (x->stopped) {
            fail(x, DX_ECANCELED, "stopped by the receiver", "");
            return;
        }
        if (x->complete) {
            /* Bytes after the response on a connection we would keep
             * mean the two sides disagree on where it ended. */
            bool keep = http_should_keep_alive(&c->parser) &&
                        used == (size_t)n && x->sent == x->req_len;
            succeed(x, keep);
            return;
        }
        if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) {
            fail(x, DX_EHTTP, "malformed response",
                 http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
            return;
        }
    }
}

static void on_io(uv_poll_t *p, int status, int events)
{
    h1conn *c = p->data;
    if (c->idle) {
        /* The server closed a kept connection (or sent what nobody asked
         * for): it is of no more use. */
        conn_close(c);
        serve_waiters();
        return;
    }
    dx__h1_xfer *x = c->x;
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (status < 0 ||
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
            err != 0) {
            if (err == 0)
                err = status < 0 ? ECONNREFUSED : errno;
            if (try_other(x)) {
                x->conn = NULL;
                conn_close(c);
                conn_open(x);
                return;
            }
            fail(x, DX_ECONNECT, "could not connect", strerror(err));
            return;
        }
        connected(c);
        return;
    }
    if (status < 0) {
        broken(c, ECONNRESET);
        return;
    }
    if ((events & UV_WRITABLE) && x->sent < x->req_len)
        send_more(c);
    if (events & UV_READABLE)
        read_some(c);
}

dx__h1_xfer *dx__h1_start(const dx__h1_target *t, char *request, size_t len,
                          bool head_request, int64_t timeout_ms,
                          int64_t connect_timeout_ms, const dx__h1_ops *ops,
                          void *ud)
{
    dx__h1_xfer *x = NULL;
    uv_timer_t *timer = NULL;
    h1host *h = lane() != NULL ? host_get(t) : NULL;
    if (h != NULL) {
        x = dx_calloc(1, sizeof *x);
        timer = dx_malloc(sizeof *timer);
    }
    if (x == NULL || timer == NULL) {
        dx_free(x);
        dx_free(timer);
        dx_free(request);
        return NULL;
    }
    uv_timer_init(dx_io_loop(), timer);
    timer->data = x;
    x->timer = timer;
    x->ops = ops;
    x->ud = ud;
    x->host = h;
    x->req = request;
    x->req_len = len;
    x->head = head_request;
    dx__buf_init(&x->line, 0);
    x->t0 = uv_hrtime();
    if (timeout_ms > 0)
        x->deadline_ns = x->t0 + (uint64_t)timeout_ms * 1000000u;
    if (connect_timeout_ms > 0)
        x->connect_deadline_ns =
            x->t0 + (uint64_t)connect_timeout_ms * 1000000u;
    H->running++;
    assign(x, false);
    if (!x->pending)
        arm_timer(x);
    return x;
}

void dx__h1_cancel(dx__h1_xfer *x)
{
    xfer_end(x, NULL, false);
}

void dx__h1_close_all(void)
{
    if (H == NULL)
        return;
    while (H->hosts != NULL) {
        h1host *h = H->hosts;
        while (h->idle != NULL)
            conn_close(h->idle);
        while (h->busy != NULL)
            conn_close(h->busy); /* their exchanges ended before */
        H->hosts = h->next;
        dx_free(h);
    }
    dx_free(H);
    H = NULL;
}

void dx__h1_close_idle(void)
{
    if (H == NULL)
        return;
    for (h1host *h = H->hosts; h != NULL; h = h->next)
        while (h->idle != NULL)
            conn_close(h->idle);
}

/* ------------------------------------------------------------------ */
/* The response head, for http.c a line at a time                       */
/* ------------------------------------------------------------------ */

static bool emit(dx__h1_xfer *x, const char *line, size_t n)
{
    if (!x->ops->header(x->ud, line, n)) {
        x->stopped = true;
        return false;
    }
    return true;
}

static bool status_line(http_parser *p, dx__h1_xfer *x)
{
    if (x->head_done)
        return true;
    x->head_done = true;
    char line[80];
    size_t n = 5;
    memcpy(line, "HTTP/", 5);
    n += dx__decimal(line + n, p->http_major);
    line[n++] = '.';
    n += dx__decimal(line + n, p->http_minor);
    line[n++] = ' ';
    n += dx__decimal(line + n, p->status_code);
    memcpy(line + n, "\r\n", 2);
    return emit(x, line, n + 2);
}

static bool flush_line(dx__h1_xfer *x)
{
    if (x->line.len == 0)
        return true;
    bool ok = dx__buf_append(&x->line, "\r\n", 2) == 0 &&
              emit(x, x->line.p, x->line.len);
    x->line.len = 0;
    x->in_value = false;
    return ok;
}

/* A line longer than the transport's whole header limit goes to http.c as
 * it is, which counts it and says stop. */
static int append_line(dx__h1_xfer *x, const char *at, size_t n)
{
    if (dx__buf_append(&x->line, at, n) != 0) {
        x->stopped = true; /* out of memory */
        return -1;
    }
    if (x->line.len > DX_HTTP_MAX_HEADER_BYTES) {
        emit(x, x->line.p, x->line.len);
        x->stopped = true;
        return -1;
    }
    return 0;
}

static int on_h_field(http_parser *p, const char *at, size_t n)
{
    dx__h1_xfer *x = ((h1conn *)p->data)->x;
    if (!status_line(p, x))
        return -1;
    if (x->in_value && !flush_line(x))
        return -1;
    return append_line(x, at, n);
}

static int on_h_value(http_parser *p, const char *at, size_t n)
{
    dx__h1_xfer *x = ((h1conn *)p->data)->x;
    if (!x->in_value) {
        x->in_value = true;
        if (append_line(x, ": ", 2) != 0)
            return -1;
    }
    return append_line(x, at, n);
}

static int on_h_done(http_parser *p)
{
    dx__h1_xfer *x = ((h1conn *)p->data)->x;
    if (!status_line(p, x) || !flush_line(x) || !emit(x, "\r\n", 2))
        return -1;
    /* No body follows the head of an answer to HEAD. */
    return x->head && p->status_code >= 200 ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    dx__h1_xfer *x = ((h1conn *)p->data)->x;
    if (!x->ops->body(x->ud, at, n)) {
        x->stopped = true;
        return -1;
    }
    return 0;
}

static int on_complete(http_parser *p)
{
    h1conn *c = p->data;
    dx__h1_xfer *x = c->x;
    if (p->status_code >= 100 && p->status_code < 200 &&
        p->status_code != 101) {
        /* An informational answer: the real one follows. */
        x->head_done = false;
        return 0;
    }
    x->complete = true;
    http_parser_pause(p, 1);
    return 0;
}
