/*
 * serve_fixture.h — what the serve suites share: a runtime with the sim
 * model's LM client registered as "lm", the test programs (a Predict on
 * "question -> answer" and a C module that crashes or sleeps on marker
 * inputs), a server on 127.0.0.1 with an ephemeral port, and a small
 * blocking HTTP/1.1 client over real sockets.
 */
#ifndef DSPEX_TEST_SERVE_FIXTURE_H
#define DSPEX_TEST_SERVE_FIXTURE_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/module.h"
#include "dspex/program.h"
#include "dspex/runtime.h"
#include "dspex/serve.h"
#include "dspex/server.h"
#include "dx_config.h"

/* ---- crashing on purpose (as tests/programs/lm_fixture.h) -------------- */

static volatile uintptr_t crash_address = 64; /* never mapped */

static void crash_now(void)
{
#if DX_SANITIZE_THREAD
    dx_exit_self(dx_atom("crashed"));
#else
    *(volatile int *)crash_address = 1;
#endif
}

static void host_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- runtime, LM client, programs -------------------------------------- */

static _Atomic int fx_rc;

static void fx_start_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    dx_server_opts so = {.name = "lm"};
    atomic_store(&fx_rc, dx_lm_client_start(&o, &so, NULL));
}

static void fx_stop_client(void *arg)
{
    (void)arg;
    dx_pid lm = dx_whereis("lm");
    atomic_store(&fx_rc,
                 dx_pid_is_none(lm) ? DX_OK : dx_server_stop(lm, NULL, 5000));
}

static void fx_run(dx_proc_fn fn)
{
    atomic_store(&fx_rc, 1);
    cr_assert_eq(dx_spawn(fn, NULL, NULL), DX_OK);
    for (int i = 0; i < 2000 && atomic_load(&fx_rc) == 1; i++)
        host_sleep_ms(5);
    cr_assert_eq(atomic_load(&fx_rc), DX_OK, "%s",
                 dx_err_name(atomic_load(&fx_rc)));
}

/* The C module: "crash" crashes its process, "sleep:<ms>" sleeps that long,
 * anything else is answered by the Predict child. */
static int marker_forward(dx_ctx *ctx, const dx_module *self,
                          const dx_example *in, dx_prediction **out)
{
    const char *q = dx_example_get_str(in, "question", "");
    if (strcmp(q, "crash") == 0)
        crash_now();
    if (strncmp(q, "sleep:", 6) == 0) {
        dx_sleep(strtol(q + 6, NULL, 10));
        dx_prediction *p = dx_prediction_new();
        dx_example_set_str(dx_prediction_fields_mut(p), "answer", "slept");
        *out = p;
        return DX_OK;
    }
    return dx_forward(ctx, dx_module_child(self, "inner"), in, out);
}

static dx_module *qa_program(void)
{
    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(
        dx_program_single("predict", "question -> answer", NULL, &m, &d), DX_OK,
        "%s", d.msg);
    return m;
}

static dx_module *marker_program(void)
{
    dx_module *m = dx_module_new("Marker", marker_forward, NULL, NULL, NULL);
    cr_assert_not_null(m);
    cr_assert_eq(dx_module_add(m, "inner", qa_program()), DX_OK);
    return m;
}

static dx_module *fx_qa, *fx_marker;
static dx_serve *fx_srv;
static const char *const fx_marker_inputs[] = {"question", NULL};

static void fx_start_runtime(void)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    fx_run(fx_start_client);
    fx_qa = qa_program();
    fx_marker = marker_program();
}

/* Start a server on the two programs with opts' limits (programs filled
 * in here). */
static void fx_serve(dx_serve_opts o)
{
    static dx_serve_program progs[2];
    progs[0] = (dx_serve_program){.name = "qa", .module = NULL};
    progs[0].module = fx_qa;
    progs[1] = (dx_serve_program){
        .name = "marker", .module = fx_marker, .inputs = fx_marker_inputs};
    o.programs = progs;
    o.nprograms = 2;
    dx_diag d = {0};
    cr_assert_eq(dx_serve_start(&o, &fx_srv, &d), DX_OK, "%s", d.msg);
}

static void fx_stop_all(void)
{
    if (fx_srv != NULL)
        dx_serve_stop(fx_srv, 5000);
    fx_srv = NULL;
    fx_run(fx_stop_client);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_module_free(fx_qa);
    dx_module_free(fx_marker);
}

/* ---- a blocking HTTP/1.1 client ---------------------------------------- */

typedef struct hconn {
    int fd;
    char buf[1 << 16];
    size_t len;
} hconn;

typedef struct hresp {
    int status;
    char head[4096];
    char *body; /* NUL-terminated, free() it */
    size_t body_len;
} hresp;

static hconn *hc_open(int port)
{
    hconn *c = calloc(1, sizeof *c);
    cr_assert_not_null(c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(c->fd, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
    return c;
}

static void hc_close(hconn *c)
{
    if (c != NULL)
        close(c->fd);
    free(c);
}

static void hc_send_raw(hconn *c, const char *data, size_t n)
{
    while (n > 0) {
        ssize_t k = send(c->fd, data, n, MSG_NOSIGNAL);
        if (k <= 0)
            return; /* the server may close on purpose (413) */
        data += k;
        n -= (size_t)k;
    }
}

static void hc_send(hconn *c, const char *method, const char *path,
                    const char *headers, const char *body)
{
    char head[2048];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: "
                     "%zu\r\n\r\n",
                     method, path, headers ? headers : "", blen);
    hc_send_raw(c, head, (size_t)n);
    if (blen)
        hc_send_raw(c, body, blen);
}

/* The body of a chunked response (a streamed answer) after its head of
 * hlen bytes, decoded. */
static bool hc_read_chunked(hconn *c, hresp *r, size_t hlen)
{
    size_t at = hlen;
    size_t cap = 4096, blen = 0;
    char *body = malloc(cap);
    for (;;) {
        char *eol;
        while ((c->buf[c->len] = '\0', eol = strstr(c->buf + at, "\r\n")) ==
               NULL) {
            ssize_t k =
                recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
            if (k <= 0) {
                free(body);
                return false;
            }
            c->len += (size_t)k;
        }
        size_t n = strtoul(c->buf + at, NULL, 16);
        size_t data = (size_t)(eol - c->buf) + 2;
        while (c->len < data + n + 2) {
            ssize_t k =
                recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
            if (k <= 0) {
                free(body);
                return false;
            }
            c->len += (size_t)k;
        }
        if (blen + n + 1 > cap) {
            cap = (blen + n + 1) * 2;
            body = realloc(body, cap);
        }
        memcpy(body + blen, c->buf + data, n);
        blen += n;
        at = data + n + 2;
        if (n == 0)
            break;
    }
    body[blen] = '\0';
    r->body = body;
    r->body_len = blen;
    memmove(c->buf, c->buf + at, c->len - at);
    c->len -= at;
    return true;
}

/* Read one response; false if the connection closed before a whole one. */
static bool hc_read(hconn *c, hresp *r)
{
    memset(r, 0, sizeof *r);
    char *end = NULL;
    for (;;) {
        c->buf[c->len] = '\0';
        if ((end = strstr(c->buf, "\r\n\r\n")) != NULL)
            break;
        ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
        if (k <= 0)
            return false;
        c->len += (size_t)k;
    }
    size_t hlen = (size_t)(end - c->buf) + 4;
    snprintf(r->head, sizeof r->head, "%.*s", (int)hlen, c->buf);
    sscanf(r->head, "HTTP/1.1 %d", &r->status);
    const char *cl = strcasestr(r->head, "\r\nContent-Length:");
    size_t blen = cl ? strtoul(cl + 17, NULL, 10) : 0;
    if (strcasestr(r->head, "\r\nTransfer-Encoding: chunked") != NULL)
        return hc_read_chunked(c, r, hlen);
    while (c->len < hlen + blen) {
        ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
        if (k <= 0)
            return false;
        c->len += (size_t)k;
    }
    r->body = malloc(blen + 1);
    memcpy(r->body, c->buf + hlen, blen);
    r->body[blen] = '\0';
    r->body_len = blen;
    memmove(c->buf, c->buf + hlen + blen, c->len - hlen - blen);
    c->len -= hlen + blen;
    return true;
}

/* One request on a new connection. */
static hresp http1(const char *method, const char *path, const char *headers,
                   const char *body)
{
    hconn *c = hc_open(dx_serve_port(fx_srv));
    hc_send(c, method, path, headers, body);
    hresp r;
    cr_assert(hc_read(c, &r), "%s %s: no response", method, path);
    hc_close(c);
    return r;
}

#endif
