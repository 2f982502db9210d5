/*
 * http.c — the HTTP transport: one curl multi handle driven by the I/O loop
 * (CURLMOPT_SOCKETFUNCTION → one uv_poll per socket, CURLMOPT_TIMERFUNCTION →
 * one uv_timer, curl_multi_socket_action from their callbacks), the table of
 * running transfers keyed by request ref and by requester pid, and the
 * watcher process that tells the loop when a requester dies.
 *
 * Threads: dx_http_submit builds the curl easy handle on the caller's thread
 * (nothing shared is touched) and hands it to one of the I/O lanes (io.h)
 * with dx_io_call_on, in turn; from then on the transfer belongs to that
 * lane's thread alone. Each lane has a multi handle (so its own connection
 * cache), tables and watcher of its own, in `lanes` below; code on a loop
 * reaches its lane's through L. Only the counters and the limits are
 * shared, the limits under a mutex.
 *
 * Requester death: the loop cannot monitor (monitors are for processes), so
 * one dspex process per lane, the watcher, monitors each requester on the
 * lane's behalf — once per requester pid, not per request — and on DOWN
 * posts a cancel-all-for-pid to the lane. docs/internals/http.md has the
 * details.
 */
#include "dspex/http.h"

#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/io.h"
#include "dspex/runtime.h"
#include "h1_int.h"
#include "htab.h"

/* Watcher message tags (private to this file; user tags are >= 0 too, but
 * nobody else sends to the watcher). */
enum { W_WATCH = 1, W_STOP = 2 };

/* ------------------------------------------------------------------ */
/* Transfers                                                            */
/* ------------------------------------------------------------------ */

typedef struct requester requester;

typedef struct xfer {
    dx__hnode h; /* first: key = ref id (by_ref) */
    struct xfer *rprev, *rnext;
    requester *owner;
    CURL *easy;
    struct curl_slist *hdrs;
    char *body_copy;
    dx_pid reply_to;
    int64_t tag;
    dx_ref ref;
    bool stream;
    bool added;
    bool too_large;
    bool headers_over;
    bool requester_gone;
    long status; /* from the latest status line */
    size_t max_body;
    size_t body_cap;
    size_t hdr_cap;
    size_t hdr_bytes;
    dx_http_response *resp;
    char errbuf[CURL_ERROR_SIZE];
    unsigned lane; /* the lane it was handed to */
    /* Plain HTTP to an IP address or localhost goes through h1.c instead of
     * curl: */
    bool h1_head; /* a HEAD request */
    char *h1_req; /* its request bytes until the lane starts it (so
                     non-NULL, until then, says the transfer goes there) */
    size_t h1_len;
    dx__h1_target h1_target;
    int64_t h1_timeout_ms, h1_connect_timeout_ms; /* <= 0: none */
    dx__h1_xfer *h1x; /* the exchange while it runs */
    /* The body's Content-Encoding, looked at on its first byte. A server
     * may compress when the request had no Accept-Encoding (RFC 9110
     * 12.5.3: the client then has no preference), and proxies in front of
     * model servers do; gzip and deflate are inflated on the way in, so
     * callers, chunks and max_body all see decoded bytes. */
    enum { CODING_UNSEEN, CODING_IDENTITY, CODING_INFLATE } coding;
    z_stream *inflater;   /* CODING_INFLATE */
    bool inflate_raw;     /* "deflate" sent without its zlib wrapper */
    bool inflate_fed;     /* a piece of the body went in already */
    bool inflate_ended;   /* the compressed stream ended (Z_STREAM_END) */
    bool coding_failed;   /* an encoding we cannot decode, or a broken one */
    char coding_why[160]; /* what to say when coding_failed */
} xfer;

struct requester {
    dx__hnode h; /* first: key = pid id (by_pid) */
    xfer *xfers;
    bool watched;
    /* Not watched yet: in the lane's list of requesters to watch once
     * their first transfer has run for WATCH_AFTER_NS (see there). */
    bool pending;
    uint64_t watch_due_ns;
    struct requester *pprev, *pnext;
};

/* How long a requester's first transfer runs before the watcher is asked to
 * monitor it. Most LM calls from short-lived processes (an evaluated
 * example, a worker's one request) end sooner, and their requesters are
 * dropped with the last transfer: no watch message, no monitor, no DOWN
 * and no post back to the lane — three wake-ups of sleeping threads per
 * process when the machine is not busy. The price: the transfers of a
 * requester that dies within this time are cancelled only when it is up
 * (by an immediate DOWN, as the pid is dead by then), or end on their own
 * first. */
#define WATCH_AFTER_NS (250 * 1000000ull)

/* A socket curl opened, watched on the lane's loop. The poll handle is kept
 * for the descriptor when curl stops using the connection
 * (CURL_POLL_REMOVE), so the connection's next request does not pay
 * libuv's set-up of a new handle (an epoll_ctl ADD and DEL to probe the
 * descriptor, an ioctl, an allocation).
 *
 * A kept connection socket (conn) also stays watched for reading: its next
 * request wants exactly that, and libuv's uv_poll_start takes a descriptor
 * out of epoll and puts it back even for the same events, so stopping and
 * restarting the watch cost three epoll_ctl calls per request. If the idle
 * socket becomes readable (the server closed it), the watch stops then;
 * curl finds the connection dead when it next looks. This is safe because
 * every connection socket comes through open_socket, which retires a watch
 * left on its number: the number of a conn watch is always its own socket.
 *
 * Other sockets (the resolver's) are stopped on CURL_POLL_REMOVE and never
 * started again except for a socket curl just handed us: curl closes some
 * sockets without its close-socket callback (a transfer removed
 * mid-request, the resolver's), and a watch armed on a closed descriptor
 * makes libuv abort. So a kept handle may outlive its socket; the next
 * socket with that number takes it over, and the close-socket callback,
 * when curl calls it, frees it at once. */
typedef struct sockctx {
    uv_poll_t poll;
    curl_socket_t fd;
    dx__hnode by_fd; /* key: fd */
    int events;      /* UV_READABLE | UV_WRITABLE being watched, or 0;
                        -1: unknown, start whatever is asked */
    CURL *easy;      /* the transfer curl last watched it for; NULL once
                        removed (a kept connection) */
    bool conn;       /* a connection socket, opened by open_socket: the
                        number is this socket's for as long as c lives */
    struct sockctx *prev, *next;
} sockctx;

/* Sockets curl reported removed while remove_unfinished took a transfer
 * off (a transfer has one or two). */
#define MAX_REMOVED 8

/* One lane's state, its loop thread's alone; reset when the loop stops. */
typedef struct hlane {
    bool ready;
    bool tearing_down;
    CURLM *multi;
    uv_timer_t *timer; /* heap: it outlives the lane's reset while closing */
    dx__htab by_ref;
    dx__htab by_pid;
    dx__htab socks_by_fd;
    bool removing; /* inside remove_unfinished's curl_multi_remove_handle */
    size_t nremoved;
    curl_socket_t removed[MAX_REMOVED];
    sockctx *socks;
    dx_pid watcher;
    requester *pend_head, *pend_tail; /* to watch, oldest (due first) first */
    uv_timer_t *watch_timer;          /* heap, as timer; due: pend_head */
    uint64_t limits_applied; /* limits_gen of the limits in force here */
    long idle_age_s;         /* CURLOPT_MAXAGE_CONN of its transfers */
} hlane;

static hlane lanes[DX_IO_MAX_THREADS];

/* The running lane's state: set on entry to every function the loop calls
 * (an I/O thread serves one lane for its whole life). */
static _Thread_local hlane *L;

static void bind_lane(void)
{
    L = &lanes[dx_io_lane()];
}

/* Survives restarts of the loop; shared out across the lanes in use. */
static pthread_mutex_t limits_mu = PTHREAD_MUTEX_INITIALIZER;
static dx_http_limits cur_limits = {DX_HTTP_DEFAULT_HOST_CONNECTIONS, 0,
                                    DX_HTTP_DEFAULT_IDLE_CONNECTIONS,
                                    DX_HTTP_DEFAULT_IDLE_AGE_MS};
/* Bumped (under limits_mu) by every dx_http_set_limits. A lane compares it
 * with the one it applied before each transfer starts: nothing has to reach
 * the lanes when the limits change, so nothing can fail to. */
static _Atomic uint64_t limits_gen = 1;

/* Transfers handed to each lane and not yet finished: a submission goes
 * to the least loaded lane, so a burst is shared out evenly while calls
 * one after another keep to lane 0 and its open connection. */
static atomic_size_t lane_load[DX_IO_MAX_THREADS];

static atomic_size_t n_in_flight;
static atomic_uint_least64_t n_connections;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int dx_http_global_init(void)
{
    pthread_once(&curl_once, curl_init);
    return curl_init_rc == CURLE_OK ? DX_OK : DX_EINIT;
}

static void resp_free_cb(void *p)
{
    dx_http_response_free(p);
}

static void chunk_free_cb(void *p)
{
    dx_free(p);
}

void dx_http_response_free(dx_http_response *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nheaders; i++) {
        dx_free(r->headers[i].name);
        dx_free(r->headers[i].value);
    }
    dx_free(r->headers);
    dx_free(r->body);
    dx_free(r);
}

dx_http_response *dx_http_msg_response(const dx_msg *m)
{
    return m != NULL && m->ptr != NULL && m->ptr_free == resp_free_cb ? m->ptr
                                                                      : NULL;
}

const dx_http_chunk *dx_http_msg_chunk(const dx_msg *m)
{
    return m != NULL && m->ptr != NULL && m->ptr_free == chunk_free_cb ? m->ptr
                                                                       : NULL;
}

const char *dx_http_response_header(const dx_http_response *r, const char *name)
{
    if (r == NULL || name == NULL)
        return NULL;
    for (size_t i = r->nheaders; i-- > 0;)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

size_t dx_http_in_flight(void)
{
    return atomic_load(&n_in_flight);
}

uint64_t dx_http_connections_opened(void)
{
    return atomic_load(&n_connections) + dx__h1_connections_opened();
}

static void close_idle(void *arg);

int dx_http_close_idle(void)
{
    unsigned n = dx_io_threads();
    for (unsigned i = 0; i < n; i++) {
        int rc = dx_io_post_on(i, close_idle, NULL);
        /* A lane that stopped (or is stopping) closes everything itself;
         * posting never starts the I/O again behind a dx_io_stop. */
        if (rc != DX_OK && rc != DX_ESTATE)
            return rc;
    }
    return DX_OK;
}

/* Easy handles, reset, kept for the next requests: curl_easy_init and
 * curl_easy_cleanup were ~10 k instructions a request (callgrind), a reset
 * is a fraction of that. Any thread takes and returns them; they belong to
 * no lane (a handle is out of every multi handle when it is returned). */
#define EASY_POOL_MAX 1024
static pthread_mutex_t easy_mu = PTHREAD_MUTEX_INITIALIZER;
static CURL *easy_pool[EASY_POOL_MAX];
static size_t easy_pooled;

static CURL *easy_take(void)
{
    CURL *e = NULL;
    pthread_mutex_lock(&easy_mu);
    if (easy_pooled > 0)
        e = easy_pool[--easy_pooled];
    pthread_mutex_unlock(&easy_mu);
    return e != NULL ? e : curl_easy_init();
}

static void easy_return(CURL *e)
{
    curl_easy_reset(e);
    pthread_mutex_lock(&easy_mu);
    if (easy_pooled < EASY_POOL_MAX) {
        easy_pool[easy_pooled++] = e;
        e = NULL;
    }
    pthread_mutex_unlock(&easy_mu);
    if (e != NULL)
        curl_easy_cleanup(e);
}

/* At a lane's teardown: the transport is stopping, give the memory back. */
static void easy_pool_drain(void)
{
    for (;;) {
        pthread_mutex_lock(&easy_mu);
        CURL *e = easy_pooled > 0 ? easy_pool[--easy_pooled] : NULL;
        pthread_mutex_unlock(&easy_mu);
        if (e == NULL)
            return;
        curl_easy_cleanup(e);
    }
}

static void inflater_free(xfer *x)
{
    if (x->inflater != NULL) {
        inflateEnd(x->inflater);
        dx_free(x->inflater);
        x->inflater = NULL;
    }
}

static void xfer_free(xfer *x)
{
    inflater_free(x);
    if (x->easy != NULL)
        easy_return(x->easy);
    dx_free(x->h1_req);
    curl_slist_free_all(x->hdrs);
    dx_free(x->body_copy);
    dx_http_response_free(x->resp);
    dx_free(x);
}

static void clear_headers(dx_http_response *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        dx_free(r->headers[i].name);
        dx_free(r->headers[i].value);
    }
    r->nheaders = 0;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = dx_malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    dx_http_response *r = x->resp;
    size_t len = size * n;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* A new response begins (after 1xx): only the last one counts. */
        clear_headers(r);
        x->hdr_bytes = 0;
        x->coding = CODING_UNSEEN;
        const char *sp = memchr(p, ' ', len);
        long st = 0;
        if (sp != NULL)
            for (sp++; sp < p + len && *sp >= '0' && *sp <= '9'; sp++)
                st = st * 10 + (*sp - '0');
        x->status = st;
        return len;
    }
    x->hdr_bytes += len;
    if (x->hdr_bytes > DX_HTTP_MAX_HEADER_BYTES) {
        x->headers_over = true;
        return 0;
    }
    const char *colon = memchr(p, ':', len);
    if (colon == NULL)
        return len; /* the blank line that ends the headers */
    if (r->nheaders == DX_HTTP_MAX_HEADERS) {
        x->headers_over = true;
        return 0;
    }
    if (r->nheaders == x->hdr_cap) {
        size_t cap = x->hdr_cap ? x->hdr_cap * 2 : 16;
        dx_http_header *h = dx_realloc(r->headers, cap * sizeof *h);
        if (h == NULL)
            return 0;
        r->headers = h;
        x->hdr_cap = cap;
    }
    const char *v = colon + 1, *e = p + len;
    while (v < e && is_blank(*v))
        v++;
    while (e > v && is_blank(e[-1]))
        e--;
    char *name = dup_n(p, (size_t)(colon - p));
    char *value = dup_n(v, (size_t)(e - v));
    if (name == NULL || value == NULL) {
        dx_free(name);
        dx_free(value);
        return 0;
    }
    r->headers[r->nheaders].name = name;
    r->headers[r->nheaders].value = value;
    r->nheaders++;
    return len;
}

/* Decoded body bytes: a chunk message for a streamed 2xx, else appended to
 * the response. false stops the transfer (a flag or no memory says why). */
static bool take_body(xfer *x, const char *p, size_t len)
{
    dx_http_response *r = x->resp;
    if (x->stream && x->status >= 200 && x->status < 300) {
        if (len > x->max_body - r->streamed_bytes) {
            x->too_large = true;
            return false;
        }
        dx_http_chunk *c = dx_malloc(sizeof *c + len + 1);
        dx_msg *m = dx_msg_new(x->tag);
        if (c == NULL || m == NULL) {
            dx_free(c);
            dx_msg_free(m);
            return false;
        }
        c->len = len;
        memcpy(c->data, p, len);
        c->data[len] = '\0';
        m->ref = x->ref;
        m->ptr = c;
        m->ptr_free = chunk_free_cb;
        if (dx_send(x->reply_to, m) != DX_OK) {
            /* Nobody will read the rest: stop the transfer now. */
            x->requester_gone = true;
            return false;
        }
        r->streamed_bytes += len;
        return true;
    }
    if (len > x->max_body - r->body_len) {
        x->too_large = true;
        return false;
    }
    if (r->body_len + len + 1 > x->body_cap) {
        size_t cap = x->body_cap * 2;
        if (cap < r->body_len + len + 1)
            cap = r->body_len + len + 1;
        if (cap > x->max_body + 1)
            cap = x->max_body + 1;
        char *b = dx_realloc(r->body, cap);
        if (b == NULL)
            return false;
        r->body = b;
        x->body_cap = cap;
    }
    memcpy(r->body + r->body_len, p, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return true;
}

/* Decide how the body is coded from the final response's headers. false:
 * an encoding dspex does not decode (coding_why says which). */
static bool choose_coding(xfer *x)
{
    const char *ce = dx_http_response_header(x->resp, "Content-Encoding");
    x->coding = CODING_IDENTITY;
    if (ce == NULL || ce[0] == '\0' || strcasecmp(ce, "identity") == 0)
        return true;
    if (strcasecmp(ce, "gzip") != 0 && strcasecmp(ce, "x-gzip") != 0 &&
        strcasecmp(ce, "deflate") != 0) {
        snprintf(x->coding_why, sizeof x->coding_why,
                 "the response is coded \"%.40s\" (Content-Encoding), which "
                 "dspex does not decode",
                 ce);
        x->coding_failed = true;
        return false;
    }
    x->inflater = dx_calloc(1, sizeof *x->inflater);
    /* 32 + 15: a gzip or a zlib header, whichever comes, 32 KiB window. */
    if (x->inflater == NULL || inflateInit2(x->inflater, 32 + 15) != Z_OK) {
        dx_free(x->inflater);
        x->inflater = NULL;
        return false; /* out of memory */
    }
    x->coding = CODING_INFLATE;
    return true;
}

/* Inflate compressed body bytes into take_body, a buffer at a time, until
 * this piece is used up and zlib holds no decoded bytes back (a full
 * buffer may leave some). */
static bool inflate_body(xfer *x, const char *p, size_t len)
{
    z_stream *z = x->inflater;
    unsigned char out[16384];
    z->next_in = (unsigned char *)p;
    z->avail_in = (uInt)len;
    bool full = false;
    while (z->avail_in > 0 || full) {
        if (x->inflate_ended) {
            /* gzip allows several members one after another; anything
             * else after the end is not part of the body. */
            if (z->avail_in == 0 || z->next_in[0] != 0x1f ||
                inflateReset(z) != Z_OK)
                break;
            x->inflate_ended = false;
        }
        z->next_out = out;
        z->avail_out = sizeof out;
        int rc = inflate(z, Z_NO_FLUSH);
        if (rc == Z_DATA_ERROR && !x->inflate_fed && z->total_out == 0 &&
            !x->inflate_raw) {
            /* Some servers send "deflate" as a bare deflate stream, without
             * the zlib header RFC 9110 asks for: read it that way. */
            x->inflate_raw = true;
            if (inflateReset2(z, -15) != Z_OK)
                return false;
            z->next_in = (unsigned char *)p;
            z->avail_in = (uInt)len;
            continue;
        }
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
            snprintf(x->coding_why, sizeof x->coding_why,
                     "the compressed response does not decode (%s)",
                     z->msg != NULL ? z->msg : "zlib error");
            x->coding_failed = true;
            return false;
        }
        size_t made = sizeof out - z->avail_out;
        if (made > 0 && !take_body(x, (const char *)out, made))
            return false;
        full = rc != Z_STREAM_END && z->avail_out == 0;
        if (rc == Z_STREAM_END)
            x->inflate_ended = true;
        else if (made == 0 && rc == Z_BUF_ERROR)
            break; /* needs more input than this piece has */
    }
    x->inflate_fed = true;
    return true;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = size * n;
    if (x->coding == CODING_UNSEEN && !choose_coding(x))
        return 0;
    bool ok = x->coding == CODING_INFLATE ? inflate_body(x, p, len)
                                          : take_body(x, p, len);
    return ok ? len : 0;
}

static void set_error(dx_http_response *r, int err, const char *what,
                      const char *detail)
{
    /* "what: detail", cut to fit (curl's detail can fill its own buffer). */
    r->err = err;
    size_t cap = sizeof r->message - 1, n = strlen(what);
    if (n > cap)
        n = cap;
    memcpy(r->message, what, n);
    if (detail != NULL && detail[0] != '\0' && n + 2 < cap) {
        memcpy(r->message + n, ": ", 2);
        n += 2;
        size_t d = strlen(detail);
        while (d > 0 && is_blank(detail[d - 1]))
            d--; /* curl ends some messages with a newline */
        if (d > cap - n)
            d = cap - n;
        memcpy(r->message + n, detail, d);
        n += d;
    }
    r->message[n] = '\0';
}

/* An error the transfer's own checks found (a limit, a dead requester):
 * set it and say so. */
static bool map_flags(xfer *x)
{
    dx_http_response *r = x->resp;
    if (x->too_large) {
        char what[96];
        snprintf(what, sizeof what, "response body over the limit of %zu bytes",
                 x->max_body);
        set_error(r, DX_ELIMIT, what, NULL);
        return true;
    }
    if (x->headers_over) {
        set_error(r, DX_ELIMIT, "response headers over the limit", NULL);
        return true;
    }
    if (x->coding_failed) {
        set_error(r, DX_EHTTP, x->coding_why, NULL);
        return true;
    }
    if (x->requester_gone) {
        set_error(r, DX_ECANCELED, "the requesting process is gone", NULL);
        return true;
    }
    return false;
}

static void map_result(xfer *x, CURLcode rc)
{
    dx_http_response *r = x->resp;
    const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
    if (rc == CURLE_OK || map_flags(x))
        return;
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        if (r->connect_us == 0)
            set_error(r, DX_ECONNECT, "no connection in time", detail);
        else
            set_error(r, DX_ETIMEDOUT, "request timed out", detail);
        break;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        set_error(r, DX_ECONNECT, "could not connect", detail);
        break;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        set_error(r, DX_ERESET, "connection broke", detail);
        break;
    case CURLE_UNSUPPORTED_PROTOCOL: {
        /* Also what curl says of an answer that is not HTTP (it takes it
         * for HTTP/0.9): a fault of the server's once the request went
         * out (the connect time says nothing on a reused connection). */
        long sent = 0;
        if (x->easy != NULL &&
            curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &sent) ==
                CURLE_OK &&
            sent > 0) {
            set_error(r, DX_EHTTP, "malformed response", detail);
            break;
        }
        set_error(r, DX_EINVAL, "bad URL", detail);
        break;
    }
    case CURLE_URL_MALFORMAT:
        set_error(r, DX_EINVAL, "bad URL", detail);
        break;
    case CURLE_OUT_OF_MEMORY:
        set_error(r, DX_ENOMEM, "out of memory", NULL);
        break;
    default:
        set_error(r, DX_EHTTP, "HTTP transfer failed", detail);
        break;
    }
}

static int64_t info_us(CURL *e, CURLINFO what)
{
    curl_off_t v = 0;
    if (curl_easy_getinfo(e, what, &v) != CURLE_OK)
        return 0;
    return (int64_t)v;
}

static void record_info(xfer *x)
{
    dx_http_response *r = x->resp;
    long v = 0;
    r->status = x->status;
    if (curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &v) == CURLE_OK &&
        v != 0)
        r->status = v;
    r->total_us = info_us(x->easy, CURLINFO_TOTAL_TIME_T);
    r->connect_us = info_us(x->easy, CURLINFO_CONNECT_TIME_T);
    r->ttfb_us = info_us(x->easy, CURLINFO_STARTTRANSFER_TIME_T);
    v = 0;
    curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &v);
    r->http_version = v == CURL_HTTP_VERSION_1_0   ? 10
                      : v == CURL_HTTP_VERSION_1_1 ? 11
                      : v == CURL_HTTP_VERSION_2_0 ? 20
                      : v == CURL_HTTP_VERSION_3   ? 30
                                                   : 0;
    v = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &v) == CURLE_OK &&
        v > 0)
        atomic_fetch_add(&n_connections, (uint64_t)v);
}

static void pend_unlink(requester *q)
{
    if (q->pprev != NULL)
        q->pprev->pnext = q->pnext;
    else
        L->pend_head = q->pnext;
    if (q->pnext != NULL)
        q->pnext->pprev = q->pprev;
    else
        L->pend_tail = q->pprev;
    q->pprev = q->pnext = NULL;
    q->pending = false;
}

static void requester_drop(requester *q)
{
    if (q->pending)
        pend_unlink(q);
    dx__htab_del(&L->by_pid, &q->h);
    dx_free(q);
}

/* End a transfer: take it off the multi handle and the tables, and send its
 * completion. err != DX_OK forces that outcome (cancel, stop); otherwise the
 * curl result decides. The completion of a dead requester is freed by
 * dx_send. */
static void remove_unfinished(xfer *x);

static void deliver(xfer *x, CURLcode rc, int err, const char *why);

/* A transfer's h1 exchange is over (done or cancelled): off the lane. */
static void h1_off(xfer *x)
{
    x->h1x = NULL;
    x->resp->status = x->status;
    atomic_fetch_sub(&n_in_flight, 1);
    dx__htab_del(&L->by_ref, &x->h);
}

static void finish(xfer *x, CURLcode rc, int err, const char *why)
{
    if (x->added) {
        record_info(x);
        if (err != DX_OK) /* taken off before curl was done with it */
            remove_unfinished(x);
        else
            curl_multi_remove_handle(L->multi, x->easy);
        atomic_fetch_sub(&n_in_flight, 1);
        dx__htab_del(&L->by_ref, &x->h);
    } else if (x->h1x != NULL) { /* ended before its exchange did */
        dx__h1_cancel(x->h1x);
        h1_off(x);
    }
    deliver(x, rc, err, why);
}

/* The rest of ending a transfer, once it is off curl or h1: off its
 * requester, the result decided, the completion sent, the memory freed. */
static void deliver(xfer *x, CURLcode rc, int err, const char *why)
{
    requester *q = x->owner;
    if (q != NULL) {
        if (x->rprev != NULL)
            x->rprev->rnext = x->rnext;
        else
            q->xfers = x->rnext;
        if (x->rnext != NULL)
            x->rnext->rprev = x->rprev;
        /* A requester nobody watches would never be removed by a DOWN. */
        if (q->xfers == NULL && !q->watched)
            requester_drop(q);
    }
    if (err != DX_OK)
        set_error(x->resp, err, why, NULL);
    else
        map_result(x, rc);
    if (x->resp->err == DX_OK && x->coding == CODING_INFLATE &&
        !x->inflate_ended)
        set_error(x->resp, DX_EHTTP,
                  "the compressed response ended before its end", NULL);

    /* Before the completion goes out, so a call made on receiving it sees
     * this lane free again. */
    atomic_fetch_sub(&lane_load[x->lane], 1);
    dx_msg *m = dx_msg_new(x->tag);
    if (m != NULL) {
        m->ref = x->ref;
        m->ptr = x->resp;
        m->ptr_free = resp_free_cb;
        x->resp = NULL;
        dx_send(x->reply_to, m);
    }
    xfer_free(x);
}

static void drain_done(void)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(L->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *e = msg->easy_handle;
        CURLcode rc = msg->data.result;
        char *priv = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
        if (priv != NULL)
            finish((xfer *)(void *)priv, rc, DX_OK, NULL);
    }
}

/* ------------------------------------------------------------------ */
/* curl ⇄ libuv                                                          */
/* ------------------------------------------------------------------ */

static void sock_closed(uv_handle_t *h)
{
    dx_free(h->data);
}

static void handle_freed(uv_handle_t *h)
{
    dx_free(h);
}

static void sock_close(sockctx *c)
{
    dx__htab_del(&L->socks_by_fd, &c->by_fd);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        L->socks = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->poll, sock_closed);
}

static sockctx *sock_of_fd(curl_socket_t fd)
{
    for (dx__hnode *n = dx__htab_find(&L->socks_by_fd, (uint64_t)fd); n;
         n = dx__htab_find_next(n)) {
        sockctx *c = DX__HTAB_ENTRY(n, sockctx, by_fd);
        if (c->fd == fd)
            return c;
    }
    return NULL;
}

static int sock_watch(sockctx *c, int events);

static void on_poll(uv_poll_t *p, int status, int events)
{
    sockctx *c = p->data;
    bind_lane();
    if (c->easy == NULL) {
        /* A kept connection nobody uses became readable: the server
         * closed it (or sent what no request asked for). Stop watching;
         * curl notices when it next considers the connection. */
        (void)sock_watch(c, 0);
        return;
    }
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(L->multi, c->fd, flags, &running);
    drain_done();
}

/* Watch c for events (0: stop), unless it already is: libuv's
 * uv_poll_start takes the descriptor out of epoll and puts it back even for
 * the same events. */
static int sock_watch(sockctx *c, int events)
{
    if (c->events == events)
        return 0;
    int rc = events ? uv_poll_start(&c->poll, events, on_poll)
                    : uv_poll_stop(&c->poll);
    c->events = rc == 0 ? events : 0;
    return rc;
}

/* A new watch for socket s, known to the lane and to curl; NULL on OOM. */
static sockctx *sock_new(curl_socket_t s)
{
    sockctx *c = dx_calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    if (uv_poll_init_socket(dx_io_loop(), &c->poll, s) != 0) {
        dx_free(c);
        return NULL;
    }
    c->poll.data = c;
    c->fd = s;
    c->by_fd.key = (uint64_t)s;
    if (!dx__htab_put(&L->socks_by_fd, &c->by_fd)) {
        uv_close((uv_handle_t *)&c->poll, sock_closed);
        return NULL;
    }
    c->next = L->socks;
    if (L->socks != NULL)
        L->socks->prev = c;
    L->socks = c;
    curl_multi_assign(L->multi, s, c);
    return c;
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *ud, void *sp)
{
    (void)ud;
    if (L->tearing_down)
        return 0;
    sockctx *c = sp;
    if (what == CURL_POLL_REMOVE) {
        if (L->removing) {
            if (L->nremoved < MAX_REMOVED)
                L->removed[L->nremoved] = s;
            L->nremoved++;
        }
        if (c != NULL) {
            curl_multi_assign(L->multi, s, NULL);
            c->easy = NULL;
            /* A kept connection stays watched for reading (see sockctx). */
            int keep = c->conn && c->events > 0 ? UV_READABLE : 0;
            if (sock_watch(c, keep) != 0)
                sock_close(c);
        }
        return 0;
    }
    if (c == NULL) {
        /* A kept connection back in use: its watch is its own (see
         * sockctx). Any other socket found by number may be a new one
         * with the number of one curl closed behind our back: it must be
         * registered again, whatever libuv thinks. */
        c = sock_of_fd(s);
        if (c != NULL) {
            if (!c->conn)
                c->events = -1;
            curl_multi_assign(L->multi, s, c);
        }
    }
    if (c == NULL && (c = sock_new(s)) == NULL)
        return -1;
    c->easy = e;
    int ev = 0;
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    return sock_watch(c, ev) == 0 ? 0 : -1;
}

/* Take a transfer that has not finished off the multi handle. curl closes
 * the sockets of a transfer removed mid-request itself, without the
 * close-socket callback, and only then reports them removed; by then
 * another lane's new socket may have the descriptor number, and an epoll
 * call of ours on the old watch (stopping it, or closing it at teardown)
 * would land on that lane's socket. So the transfer's watches go first,
 * while the descriptors are still ours, and a socket curl goes on using
 * (an HTTP/2 connection with other streams) is watched again after. */
static void remove_unfinished(xfer *x)
{
    struct {
        curl_socket_t fd;
        int events;
    } was[MAX_REMOVED];
    size_t n = 0;
    for (sockctx *c = L->socks, *next; c != NULL; c = next) {
        next = c->next;
        if (c->easy != x->easy || c->events == 0)
            continue;
        if (n < MAX_REMOVED && c->events > 0) {
            was[n].fd = c->fd;
            was[n].events = c->events;
            n++;
        }
        curl_multi_assign(L->multi, c->fd, NULL);
        sock_close(c);
    }
    L->removing = true;
    L->nremoved = 0;
    curl_multi_remove_handle(L->multi, x->easy);
    L->removing = false;
    if (L->nremoved > MAX_REMOVED)
        return; /* cannot tell which are gone: watch none again */
    for (size_t i = 0; i < n; i++) {
        bool gone = false;
        for (size_t k = 0; k < L->nremoved && !gone; k++)
            gone = L->removed[k] == was[i].fd;
        sockctx *c =
            gone || sock_of_fd(was[i].fd) != NULL ? NULL : sock_new(was[i].fd);
        if (c != NULL && sock_watch(c, was[i].events) != 0)
            sock_close(c);
    }
}

/* curl opens a connection socket. A watch still registered under its
 * number belonged to a socket curl closed without telling us: retire it,
 * so that a conn watch always names its own socket. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *a)
{
    (void)clientp;
    curl_socket_t s =
        socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (s == CURL_SOCKET_BAD || purpose != CURLSOCKTYPE_IPCXN ||
        dx_io_lane() < 0)
        return s;
    bind_lane();
    sockctx *c = sock_of_fd(s);
    if (c != NULL)
        sock_close(c);
    c = sock_new(s);
    if (c != NULL)
        c->conn = true;
    return s;
}

/* curl closes a socket (through this callback most of the time): free its
 * handle before the descriptor goes. */
static int on_close_socket(void *clientp, curl_socket_t s)
{
    (void)clientp;
    if (dx_io_lane() >= 0) { /* always, as curl runs only on lanes */
        bind_lane();
        sockctx *c = sock_of_fd(s);
        if (c != NULL)
            sock_close(c);
    }
    return close(s);
}

static void on_timer(uv_timer_t *t)
{
    (void)t;
    bind_lane();
    int running;
    curl_multi_socket_action(L->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_done();
}

static int on_curl_timer(CURLM *m, long timeout_ms, void *ud)
{
    (void)m;
    (void)ud;
    if (L->tearing_down)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(L->timer);
    else
        uv_timer_start(L->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* How many lanes take new transfers: all of them, unless a connection
 * limit is smaller (every lane in use needs at least one connection). */
static unsigned lanes_in_use(const dx_http_limits *lim, unsigned n)
{
    long fewest = lim->max_host_connections;
    if (lim->max_total_connections > 0 &&
        (fewest == 0 || lim->max_total_connections < fewest))
        fewest = lim->max_total_connections;
    if (fewest > 0 && (unsigned long)fewest < n)
        n = (unsigned)fewest;
    return n > 0 ? n : 1;
}

/* Lane i's part of a limit v shared by `used` lanes (0 stays "none"): the
 * parts add up to v exactly; a lane out of use keeps one. */
static long lane_share(long v, unsigned used, unsigned i)
{
    if (v <= 0)
        return v;
    if (i >= used)
        return 1;
    long part = v / (long)used + ((unsigned long)i < (unsigned long)v % used);
    return part > 0 ? part : 1;
}

/* How many of the used lanes plain HTTP/1.1 exchanges (h1.c) are shared
 * over: one per four CPUs, at least one. curl's transfers spread over every
 * lane (io.c says why), but an h1 exchange costs its lane a few
 * microseconds, so one lane keeps up with the schedulers of four CPUs, and
 * every further lane a burst is spread over is one more thread to wake per
 * burst on the CPUs the schedulers need. eval-bench, 2 vCPU, 256 at once,
 * 8 alternated pairs: 1.064x the ideal on one lane, 1.071x on four. */
static unsigned h1_lanes(unsigned used)
{
    static _Atomic long cpus;
    long n = atomic_load(&cpus);
    if (n == 0) {
        n = sysconf(_SC_NPROCESSORS_ONLN);
        atomic_store(&cpus, n > 0 ? n : 1);
    }
    unsigned want = n >= 8 ? (unsigned)(n / 4) : 1;
    return want < used ? want : used;
}

static void apply_limits(void)
{
    pthread_mutex_lock(&limits_mu);
    dx_http_limits lim = cur_limits;
    L->limits_applied = atomic_load(&limits_gen);
    pthread_mutex_unlock(&limits_mu);
    unsigned n = dx_io_threads(), i = (unsigned)dx_io_lane();
    unsigned used = lanes_in_use(&lim, n ? n : 1);
    curl_multi_setopt(L->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      lane_share(lim.max_host_connections, used, i));
    curl_multi_setopt(L->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                      lane_share(lim.max_total_connections, used, i));
    if (lim.max_idle_connections > 0)
        curl_multi_setopt(L->multi, CURLMOPT_MAXCONNECTS,
                          lane_share(lim.max_idle_connections, used, i));
    unsigned h1_used = h1_lanes(used);
    long age_ms = lim.max_idle_age_ms > 0 ? lim.max_idle_age_ms
                                          : DX_HTTP_DEFAULT_IDLE_AGE_MS;
    /* curl counts whole seconds and reuses a connection idle up to one
     * more: round down, at least one. */
    L->idle_age_s = age_ms >= 2000 ? age_ms / 1000 : 1;
    dx__h1_set_limits(lane_share(lim.max_host_connections, h1_used, i),
                      lane_share(lim.max_total_connections, h1_used, i),
                      lane_share(lim.max_idle_connections, h1_used, i), age_ms);
}

/* ------------------------------------------------------------------ */
/* The watcher process                                                  */
/* ------------------------------------------------------------------ */

static void pid_down(void *arg);

/* arg: the lane (as an integer) whose requesters it watches. */
static void watcher_main(void *arg)
{
    unsigned lane = (unsigned)(uintptr_t)arg;
    dx_set_label("dx_http:watcher");
    for (;;) {
        dx_msg *m;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            continue;
        if (m->tag == W_STOP) {
            dx_msg_free(m);
            return;
        }
        if (m->tag == W_WATCH) {
            dx_pid p;
            dx_ref mon;
            if (m->term != NULL && dx_pid_value(m->term, &p))
                dx_monitor(p, &mon);
        } else if (m->tag == DX_TAG_DOWN) {
            uint64_t *box = dx_malloc(sizeof *box);
            if (box != NULL) {
                *box = m->from.id;
                if (dx_io_call_on(lane, pid_down, box) != DX_OK)
                    dx_free(box);
            }
        }
        dx_msg_free(m);
    }
}

static bool send_watch(dx_pid pid)
{
    dx_term *t = dx_pid_term(pid);
    return t != NULL && dx_send_term(L->watcher, W_WATCH, t) == DX_OK;
}

/* Ask the watcher to monitor q. A watcher that died (someone killed it) is
 * replaced, and the new one is told about every requester. */
static void watch(requester *q)
{
    dx_pid pid = {q->h.key};
    if (!dx_pid_is_none(L->watcher) && send_watch(pid)) {
        q->watched = true;
        return;
    }
    L->watcher = DX_NOPID;
    dx_spawn_opts o = {.label = "dx_http:watcher"};
    void *lane = (void *)(uintptr_t)dx_io_lane();
    if (dx_spawn_opt(watcher_main, lane, &o, &L->watcher, NULL) != DX_OK) {
        L->watcher = DX_NOPID;
        q->watched = false;
        return;
    }
    for (size_t i = 0; i < L->by_pid.nb; i++)
        for (dx__hnode *n = L->by_pid.b[i]; n != NULL; n = n->next) {
            requester *r = (requester *)n;
            if (!r->pending) /* those are watched when due */
                r->watched = send_watch((dx_pid){n->key});
        }
}

/* The requesters whose time has come are watched; the timer is set for
 * the next. */
static void on_watch_due(uv_timer_t *t)
{
    (void)t;
    bind_lane();
    uint64_t now = uv_hrtime();
    while (L->pend_head != NULL && L->pend_head->watch_due_ns <= now) {
        requester *q = L->pend_head;
        pend_unlink(q);
        watch(q); /* unwatched if that fails: dropped with its last */
    }
    if (L->pend_head != NULL)
        uv_timer_start(L->watch_timer, on_watch_due,
                       (L->pend_head->watch_due_ns - now + 999999) / 1000000,
                       0);
}

/* A new requester: watched once its first transfer has run a while. */
static void watch_later(requester *q)
{
    q->pending = true;
    q->watch_due_ns = uv_hrtime() + WATCH_AFTER_NS;
    q->pnext = NULL;
    q->pprev = L->pend_tail;
    if (L->pend_tail != NULL) {
        L->pend_tail->pnext = q;
    } else {
        L->pend_head = q;
        uv_update_time(dx_io_loop());
        uv_timer_start(L->watch_timer, on_watch_due,
                       WATCH_AFTER_NS / 1000000 + 1, 0);
    }
    L->pend_tail = q;
}

/* ------------------------------------------------------------------ */
/* Work run on the loop                                                 */
/* ------------------------------------------------------------------ */

static void teardown(void *arg);

/* The lane's multi handle with our callbacks and limits set; NULL when out
 * of memory. */
static CURLM *multi_new(void)
{
    CURLM *m = curl_multi_init();
    if (m == NULL)
        return NULL;
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(m, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    return m;
}

/* Close curl's connections (every one left is idle when nothing runs) and
 * our watches of them. The watches go first, and curl's callbacks are kept
 * off them while it closes: a watch on a descriptor curl has closed could
 * land on another lane's new socket with the same number. */
static void multi_close(void)
{
    L->tearing_down = true;
    while (L->socks != NULL)
        sock_close(L->socks);
    curl_multi_cleanup(L->multi);
    L->multi = NULL;
    L->tearing_down = false;
}

static bool ensure_ready(void)
{
    if (L->ready)
        return true;
    L->timer = dx_malloc(sizeof *L->timer);
    L->watch_timer = dx_malloc(sizeof *L->watch_timer);
    L->multi = multi_new();
    if (L->timer == NULL || L->watch_timer == NULL || L->multi == NULL ||
        dx_io_at_stop(teardown, NULL) != DX_OK) {
        if (L->multi != NULL)
            curl_multi_cleanup(L->multi);
        dx_free(L->timer);
        dx_free(L->watch_timer);
        memset(L, 0, sizeof *L);
        return false;
    }
    uv_timer_init(dx_io_loop(), L->timer);
    uv_timer_init(dx_io_loop(), L->watch_timer);
    apply_limits();
    L->ready = true;
    return true;
}

/* Whether any of the lane's transfers is curl's (on its multi handle). */
static bool curl_running(void)
{
    for (size_t i = 0; i < L->by_ref.nb; i++)
        for (dx__hnode *n = L->by_ref.b[i]; n != NULL; n = n->next)
            if (((xfer *)n)->added)
                return true;
    return false;
}

/* Posted to every lane by dx_http_close_idle. curl has no call that closes
 * only its idle connections, but with none of its transfers running every
 * connection it keeps is idle, and its multi handle is cheap to replace:
 * the new one is made first, so running out of memory keeps the old. */
static void close_idle(void *arg)
{
    (void)arg;
    bind_lane();
    dx__h1_close_idle();
    if (!L->ready || curl_running())
        return;
    CURLM *fresh = multi_new();
    if (fresh == NULL)
        return;
    multi_close();
    uv_timer_stop(L->timer);
    L->multi = fresh;
    apply_limits();
}

/* ---- the h1 path: h1.c feeds the same header and body handling ---- */

static bool h1_header(void *ud, const char *line, size_t len)
{
    return on_header((char *)line, 1, len, ud) == len;
}

static bool h1_body(void *ud, const char *data, size_t len)
{
    return on_body((char *)data, 1, len, ud) == len;
}

static void h1_done(void *ud, const dx__h1_result *r)
{
    xfer *x = ud;
    dx_http_response *resp = x->resp;
    h1_off(x);
    resp->http_version = r->http_version;
    resp->total_us = r->total_us;
    resp->connect_us = r->connect_us;
    resp->ttfb_us = r->ttfb_us;
    if (r->err != DX_OK && !map_flags(x)) {
        if (r->err == DX_ECANCELED) /* a callback stopped it: no memory */
            set_error(resp, DX_ENOMEM, "out of memory", NULL);
        else
            set_error(resp, r->err, r->what, r->detail);
    }
    deliver(x, CURLE_OK, DX_OK, NULL);
}

static const dx__h1_ops h1_ops = {h1_header, h1_body, h1_done};

static void start_xfer(void *arg)
{
    xfer *x = arg;
    bind_lane();
    if (!ensure_ready()) {
        finish(x, CURLE_OK, DX_ENOMEM, "could not set up the transport");
        return;
    }
    if (atomic_load_explicit(&limits_gen, memory_order_relaxed) !=
        L->limits_applied)
        apply_limits();
    requester *q = (requester *)dx__htab_find(&L->by_pid, x->reply_to.id);
    if (q == NULL) {
        q = dx_calloc(1, sizeof *q);
        if (q == NULL) {
            finish(x, CURLE_OK, DX_ENOMEM, "out of memory");
            return;
        }
        q->h.key = x->reply_to.id;
        if (!dx__htab_put(&L->by_pid, &q->h)) {
            dx_free(q);
            finish(x, CURLE_OK, DX_ENOMEM, "out of memory");
            return;
        }
        watch_later(q);
    }
    x->owner = q;
    x->rnext = q->xfers;
    if (q->xfers != NULL)
        q->xfers->rprev = x;
    q->xfers = x;
    if (!dx__htab_put(&L->by_ref, &x->h)) {
        finish(x, CURLE_OK, DX_ENOMEM, "out of memory");
        return;
    }
    if (x->h1_req != NULL) {
        char *bytes = x->h1_req;
        x->h1_req = NULL; /* dx__h1_start takes them */
        x->h1x = dx__h1_start(&x->h1_target, bytes, x->h1_len, x->h1_head,
                              x->h1_timeout_ms, x->h1_connect_timeout_ms,
                              &h1_ops, x);
        if (x->h1x == NULL) {
            dx__htab_del(&L->by_ref, &x->h);
            finish(x, CURLE_OK, DX_ENOMEM, "out of memory");
            return;
        }
        atomic_fetch_add(&n_in_flight, 1);
        return;
    }
    /* The lane's limits, in force from this transfer on. */
    curl_easy_setopt(x->easy, CURLOPT_MAXAGE_CONN, L->idle_age_s);
    if (curl_multi_add_handle(L->multi, x->easy) != CURLM_OK) {
        dx__htab_del(&L->by_ref, &x->h);
        finish(x, CURLE_OK, DX_ENOMEM, "could not start the transfer");
        return;
    }
    x->added = true;
    atomic_fetch_add(&n_in_flight, 1);
}

static void cancel_ref(void *arg)
{
    uint64_t id = *(uint64_t *)arg;
    dx_free(arg);
    bind_lane();
    xfer *x = (xfer *)dx__htab_find(&L->by_ref, id);
    if (x != NULL)
        finish(x, CURLE_OK, DX_ECANCELED, "cancelled by dx_http_cancel");
}

static void pid_down(void *arg)
{
    uint64_t id = *(uint64_t *)arg;
    dx_free(arg);
    bind_lane();
    requester *q = (requester *)dx__htab_find(&L->by_pid, id);
    if (q == NULL)
        return;
    q->watched = false; /* so the last finish drops it */
    while (q->xfers != NULL) {
        bool last = q->xfers->rnext == NULL;
        finish(q->xfers, CURLE_OK, DX_ECANCELED,
               "the requesting process is gone");
        if (last)
            return; /* finish dropped q with its last transfer */
    }
    requester_drop(q);
}

/* Stop hook: every open transfer completes with DX_ECANCELED, then the
 * sockets, the timer and the multi handle go. */
static void teardown(void *arg)
{
    (void)arg;
    bind_lane();
    dx__hnode *n;
    while ((n = dx__htab_any(&L->by_ref)) != NULL)
        finish((xfer *)n, CURLE_OK, DX_ECANCELED, "the I/O loop stopped");
    while ((n = dx__htab_any(&L->by_pid)) != NULL)
        requester_drop((requester *)n);
    if (!dx_pid_is_none(L->watcher))
        dx_send_tag(L->watcher, W_STOP);
    multi_close();
    dx__h1_close_all();
    easy_pool_drain();
    uv_close((uv_handle_t *)L->timer, handle_freed);
    uv_close((uv_handle_t *)L->watch_timer, handle_freed);
    dx__htab_free(&L->by_ref);
    dx__htab_free(&L->by_pid);
    dx__htab_free(&L->socks_by_fd);
    memset(L, 0, sizeof *L);
}

/* ------------------------------------------------------------------ */
/* Public entry points                                                  */
/* ------------------------------------------------------------------ */

static bool has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

static bool valid_method(const char *m)
{
    size_t n = strlen(m);
    if (n == 0 || n > 16)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(m[i] >= 'A' && m[i] <= 'Z'))
            return false;
    return true;
}

static long clamp_ms(int64_t v, long dflt)
{
    if (v == 0)
        return dflt;
    if (v < 0)
        return 0; /* curl: 0 = no timeout */
    return v > LONG_MAX ? LONG_MAX : (long)v;
}

/* The least loaded lane in use (the lowest on a tie); for an exchange on
 * the HTTP/1.1 path (h1), among the first h1_lanes of them. Starts the I/O
 * threads first, so a first burst is shared out too; on an I/O thread
 * (hosted) the lanes are known already. */
static unsigned pick_lane(bool h1)
{
    if (dx_io_threads() == 0 && !dx_io_on_loop_thread())
        (void)dx_io_start(); /* dx_io_call_on reports a failure */
    pthread_mutex_lock(&limits_mu);
    dx_http_limits lim = cur_limits;
    pthread_mutex_unlock(&limits_mu);
    unsigned running = dx_io_threads();
    unsigned used = lanes_in_use(&lim, running > 0 ? running : 1);
    if (h1)
        used = h1_lanes(used);
    unsigned best = 0;
    size_t least = atomic_load(&lane_load[0]);
    for (unsigned i = 1; i < used && least > 0; i++) {
        size_t load = atomic_load(&lane_load[i]);
        if (load < least) {
            least = load;
            best = i;
        }
    }
    return best;
}

int dx_http_submit(const dx_http_request *req, dx_pid reply_to, int64_t tag,
                   dx_ref *ref_out)
{
    if (req == NULL || req->url == NULL || req->url[0] == '\0' || tag < 0 ||
        dx_pid_is_none(reply_to) ||
        req->nheaders > DX_HTTP_MAX_REQUEST_HEADERS ||
        (req->nheaders > 0 && req->headers == NULL) ||
        (req->body_len > 0 && req->body == NULL) || has_crlf(req->url))
        return DX_EINVAL;
    const char *method =
        req->method ? req->method : (req->body_len > 0 ? "POST" : "GET");
    if (!valid_method(method))
        return DX_EINVAL;
    bool user_expect = false;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (req->headers[i] == NULL || has_crlf(req->headers[i]))
            return DX_EINVAL;
        if (strncasecmp(req->headers[i], "expect:", 7) == 0)
            user_expect = true;
    }
    if (dx_http_global_init() != DX_OK)
        return DX_EINIT;

    int err = DX_ENOMEM;
    xfer *x = dx_calloc(1, sizeof *x);
    if (x == NULL)
        return DX_ENOMEM;
    x->resp = dx_calloc(1, sizeof *x->resp);
    if (x->resp == NULL || (x->resp->body = dx_malloc(1)) == NULL)
        goto fail;
    x->resp->body[0] = '\0';
    x->body_cap = 1;
    x->reply_to = reply_to;
    x->tag = tag;
    x->stream = req->stream;
    x->max_body = req->max_response_bytes ? req->max_response_bytes
                                          : DX_HTTP_DEFAULT_MAX_RESPONSE;
    if (dx__h1_prepare(req, method, &x->h1_target, &x->h1_req, &x->h1_len)) {
        x->h1_head = strcmp(method, "HEAD") == 0;
        x->h1_timeout_ms =
            req->timeout_ms ? req->timeout_ms : DX_HTTP_DEFAULT_TIMEOUT_MS;
        x->h1_connect_timeout_ms = req->connect_timeout_ms
                                       ? req->connect_timeout_ms
                                       : DX_HTTP_DEFAULT_CONNECT_TIMEOUT_MS;
        goto hand_over;
    }
    x->body_copy = dx_malloc(req->body_len + 1);
    x->easy = easy_take();
    if (x->body_copy == NULL || x->easy == NULL)
        goto fail;
    if (req->body_len > 0)
        memcpy(x->body_copy, req->body, req->body_len);
    x->body_copy[req->body_len] = '\0';

    for (size_t i = 0; i < req->nheaders; i++) {
        struct curl_slist *s = curl_slist_append(x->hdrs, req->headers[i]);
        if (s == NULL)
            goto fail;
        x->hdrs = s;
    }
    if (!user_expect) {
        /* No 100-continue round trip before a POST body. */
        struct curl_slist *s = curl_slist_append(x->hdrs, "Expect:");
        if (s == NULL)
            goto fail;
        x->hdrs = s;
    }

    CURL *e = x->easy;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                          \
    do {                                                                       \
        if (rc == CURLE_OK)                                                    \
            rc = curl_easy_setopt(e, opt, val);                                \
    } while (0)
    SET(CURLOPT_URL, req->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_PRIVATE, (char *)x);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_ERRORBUFFER, x->errbuf);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)x);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)x);
    SET(CURLOPT_HTTPHEADER, x->hdrs);
    SET(CURLOPT_TIMEOUT_MS,
        clamp_ms(req->timeout_ms, DX_HTTP_DEFAULT_TIMEOUT_MS));
    SET(CURLOPT_CONNECTTIMEOUT_MS,
        clamp_ms(req->connect_timeout_ms, DX_HTTP_DEFAULT_CONNECT_TIMEOUT_MS));
    if (strncasecmp(req->url, "https:", 6) == 0)
        /* Over TLS, wait to multiplex on a connection being set up (HTTP/2)
         * rather than open one more. */
        SET(CURLOPT_PIPEWAIT, 1L);
    bool has_body = req->body_len > 0 || strcmp(method, "POST") == 0;
    if (strcmp(method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (has_body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        SET(CURLOPT_POSTFIELDS, x->body_copy);
        if (strcmp(method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") != 0) {
        SET(CURLOPT_CUSTOMREQUEST, method);
    }
#undef SET
    if (rc != CURLE_OK) {
        err = rc == CURLE_OUT_OF_MEMORY ? DX_ENOMEM : DX_EINVAL;
        goto fail;
    }

hand_over:
    x->ref = dx_make_ref();
    x->h.key = x->ref.id;
    dx_ref ref = x->ref;
    x->lane = pick_lane(x->h1_req != NULL);
    atomic_fetch_add(&lane_load[x->lane], 1);
    err = dx_io_call_on(x->lane, start_xfer, x);
    if (err != DX_OK)
        atomic_fetch_sub(&lane_load[x->lane], 1);
    if (err != DX_OK)
        goto fail;
    if (ref_out != NULL)
        *ref_out = ref;
    return DX_OK;

fail:
    xfer_free(x);
    return err;
}

/* Run fn on every lane, each with its own copy of the n bytes at arg (fn
 * frees it), or with NULL when n is 0. The first error, after trying every
 * lane. */
static int call_every_lane(void (*fn)(void *), const void *arg, size_t n)
{
    int rc = DX_OK;
    unsigned lanes_n = dx_io_threads();
    for (unsigned i = 0; i < lanes_n; i++) {
        void *box = n > 0 ? dx_malloc(n) : NULL;
        int r = n > 0 && box == NULL ? DX_ENOMEM : DX_OK;
        if (r == DX_OK) {
            if (box != NULL)
                memcpy(box, arg, n);
            r = dx_io_call_on(i, fn, box);
            if (r != DX_OK)
                dx_free(box);
        }
        if (rc == DX_OK)
            rc = r;
    }
    return rc;
}

/* The transfer is on one lane; which one is not recorded, so every lane
 * looks (a cancel is rare, a lookup cheap). With no lanes running there is
 * no transfer to cancel. */
/* Private: matching on the ref alone would do, the tag only keeps the
 * receive off a caller's own tags in a scan. */
#define FETCH_TAG 0x46455443

int dx_http_fetch(const dx_http_request *req, dx_http_response **out)
{
    if (out)
        *out = NULL;
    if (!req || !out || req->stream)
        return DX_EINVAL;
    if (dx_pid_is_none(dx_self()))
        return DX_ENOTPROC;
    dx_ref ref;
    int rc = dx_http_submit(req, dx_self(), FETCH_TAG, &ref);
    if (rc != DX_OK)
        return rc;
    int64_t limit =
        req->timeout_ms > 0 ? req->timeout_ms : DX_HTTP_DEFAULT_TIMEOUT_MS;
    dx_match mt = {
        .fields = DX_MATCH_REF | DX_MATCH_TAG, .tag = FETCH_TAG, .ref = ref};
    dx_msg *m = NULL;
    if (dx_receive(&mt, limit + 5000, &m) != DX_OK) {
        /* The transport missed its own deadline (it should not): cancel,
         * then its completion still comes. */
        dx_http_cancel(ref);
        if ((rc = dx_receive(&mt, DX_INFINITY, &m)) != DX_OK)
            return rc;
    }
    *out = dx_msg_take_ptr(m);
    dx_msg_free(m);
    return *out ? DX_OK : DX_EINVAL;
}

int dx_http_cancel(dx_ref ref)
{
    if (ref.id == 0)
        return DX_EINVAL;
    return call_every_lane(cancel_ref, &ref.id, sizeof ref.id);
}

int dx_http_set_limits(const dx_http_limits *limits)
{
    if (limits == NULL || limits->max_host_connections < 0 ||
        limits->max_total_connections < 0 || limits->max_idle_connections < 0 ||
        limits->max_idle_age_ms < 0)
        return DX_EINVAL;
    pthread_mutex_lock(&limits_mu);
    cur_limits = *limits;
    atomic_fetch_add(&limits_gen, 1);
    pthread_mutex_unlock(&limits_mu);
    /* More connections than the runtime made room for: make room for their
     * descriptors now, not in the burst that opens them (each growth of
     * the table stalls every thread; dx_reserve_descriptors). */
    long most = limits->max_host_connections > limits->max_total_connections
                    ? limits->max_host_connections
                    : limits->max_total_connections;
    if (most > DX_HTTP_DEFAULT_HOST_CONNECTIONS)
        (void)dx_reserve_descriptors(
            (unsigned)(most < 1L << 24 ? most : 1L << 24) +
            DX_RUNTIME_DEFAULT_DESCRIPTORS - DX_HTTP_DEFAULT_HOST_CONNECTIONS);
    /* Started as a first transfer would start them. Each lane puts the new
     * limits in force before its next transfer starts (limits_gen). */
    if (!dx_io_on_loop_thread())
        return dx_io_start();
    return DX_OK;
}
