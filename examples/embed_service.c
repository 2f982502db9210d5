/*
 * embed_service.c — a host program with its own libuv loop that embeds
 * dspex: a small line-based service answering each line with a program's
 * prediction.
 *
 *     build/examples/embed_service [--program FILE.json] [--model M]
 *                                  [--port N | --stdio] [--timeout-ms N]
 *                                  [--max-calls N]
 *
 * Each request is one line: a JSON object of the program's inputs
 * ({"question": "What is the capital of Peru?"}), or plain text, which
 * becomes the first input field of the program. Each answer is one JSON
 * line, in the order the calls finish, tagged with the request's number on
 * its connection:
 *
 *     {"id":1,"ok":true,"outputs":{"answer":"Lima"},"ms":3}
 *     {"id":2,"ok":false,"error":"ESYNTAX","message":"..."}
 *
 * With --port (default 7070; 0 picks a free one) it listens on 127.0.0.1
 * and prints "listening on 127.0.0.1:PORT"; with --stdio it reads stdin (a
 * pipe or terminal) and writes stdout. SIGINT/SIGTERM, or the end of stdin,
 * shut it down gracefully: no new requests, calls in flight get up to 5
 * seconds to finish (the rest are answered with ECANCELED), then the
 * runtime stops and the program exits 0.
 *
 * How it embeds dspex (embed.h):
 *   - dx_embed_start starts the runtime (its own scheduler threads);
 *   - dx_embed_attach_loop makes every completion callback run on this
 *     program's loop thread, so the connection state below needs no locks;
 *   - dx_embed_app_start starts an application tree with one LM client,
 *     registered as "lm": the sim model (sim/base, offline) by default, or
 *     --model (e.g. openai/gpt-4o-mini, key from OPENAI_API_KEY);
 *   - dx_program_load loads a declarative program (program.h) and
 *     dx_embed_call_async calls it for every request line;
 *   - dx_embed_shutdown drains, cancels what is left, stops the tree and
 *     the runtime.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <dspex/embed.h>
#include <dspex/lm.h>
#include <dspex/program.h>

#ifndef EMBED_DEFAULT_PROGRAM
#define EMBED_DEFAULT_PROGRAM "examples/programs/capitals.json"
#endif

#define MAX_LINE 65536
#define DRAIN_MS 5000

/* ---- the service's state (loop thread only) ----------------------------- */

static uv_loop_t *loop;
static dx_embed *embed;
static dx_module *program;
static char first_input[128]; /* where a plain-text line goes */
static dx_call_opts call_opts;
static uv_tcp_t server;
static bool listening;
static uv_signal_t sig_int, sig_term;
static bool stopping;

/* A connection (or stdin/stdout). Requests in flight hold a reference, so
 * an answer that arrives after the peer left finds it closed, not freed. */
typedef struct conn {
    uv_stream_t *in; /* the readable side (and writable, for TCP) */
    bool use_stdout; /* --stdio: answers go to stdout */
    int refs;        /* the open stream's, one per call in flight */
    bool closed;
    bool eof; /* the peer sent all its lines */
    char buf[MAX_LINE];
    size_t len;
    long next_id;
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_tty_t tty;
    } h;
} conn;

typedef struct request {
    conn *c;
    long id;
    uint64_t t0;
} request;

static void shutdown_service(void);

static void conn_unref(conn *c)
{
    if (--c->refs == 0)
        free(c);
}

static void on_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void conn_close(conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    uv_close((uv_handle_t *)&c->h, on_closed);
}

static void on_written(uv_write_t *w, int status)
{
    (void)status; /* a peer that went away loses its answer */
    free(w->data);
    free(w);
}

/* Send one answer line (takes ownership of text, a malloc'd string). */
static void send_line(conn *c, char *text)
{
    if (c->use_stdout) {
        fputs(text, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(text);
        return;
    }
    size_t n = strlen(text);
    uv_write_t *w = malloc(sizeof *w);
    char *line = realloc(text, n + 2);
    if (!w || !line || c->closed) {
        free(w);
        free(line ? line : text);
        return;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    w->data = line;
    uv_buf_t b = uv_buf_init(line, (unsigned)(n + 1));
    if (uv_write(w, c->in, &b, 1, on_written) != 0) {
        free(line);
        free(w);
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    conn_close(req->data);
    free(req);
}

/* Close a connection once the answers already written have gone out. */
static void conn_finish(conn *c)
{
    if (c->closed)
        return;
    uv_shutdown_t *req = c->h.tcp.type == UV_TCP ? malloc(sizeof *req) : NULL;
    if (req) {
        req->data = c;
        if (uv_shutdown(req, c->in, on_shutdown) == 0)
            return;
        free(req);
    }
    conn_close(c);
}

static void finish_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h) || h == (uv_handle_t *)&server ||
        (h->type != UV_TCP && h->type != UV_NAMED_PIPE && h->type != UV_TTY))
        return;
    conn_finish(h->data);
}

/* A request is answered: a peer that has sent everything and has no
 * other answer pending is done. */
static void request_done(conn *c)
{
    if (c->eof && c->refs == 2)
        conn_finish(c);
    conn_unref(c);
}

static void send_error(conn *c, long id, int rc, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)id);
    cJSON_AddBoolToObject(o, "ok", false);
    cJSON_AddStringToObject(o, "error", dx_err_name(rc));
    cJSON_AddStringToObject(o, "message", message);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text)
        send_line(c, text);
}

/* ---- calls ------------------------------------------------------------- */

/* Runs on the loop thread (dx_embed_attach_loop), once per request. */
static void on_answer(dx_embed_call *call, int rc, dx_prediction *pred,
                      const dx_diag *diag, void *ud)
{
    (void)call;
    request *r = ud;
    if (rc != DX_OK) {
        send_error(r->c, r->id, rc, diag->msg);
    } else {
        char *outputs = NULL;
        dx_example_to_json(dx_prediction_fields(pred), &outputs);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", (double)r->id);
        cJSON_AddBoolToObject(o, "ok", true);
        cJSON_AddItemToObject(o, "outputs",
                              outputs ? cJSON_Parse(outputs)
                                      : cJSON_CreateObject());
        cJSON_AddNumberToObject(o, "ms",
                                (double)((uv_hrtime() - r->t0) / 1000000));
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        dx_free(outputs);
        if (text)
            send_line(r->c, text);
    }
    dx_prediction_free(pred);
    request_done(r->c);
    free(r);
}

static void handle_line(conn *c, char *line, size_t len)
{
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
        line[--len] = '\0';
    if (len == 0)
        return;
    long id = ++c->next_id;
    dx_example *in = NULL;
    dx_diag d = {0};
    int rc;
    if (line[0] == '{') {
        rc = dx_example_from_json(line, len, &in, &d);
    } else {
        in = dx_example_new();
        rc = in ? dx_example_set_str(in, first_input, line) : DX_ENOMEM;
        if (rc != DX_OK)
            dx_diag_set(&d, rc, 0, 0, "%s", dx_strerror(rc));
    }
    if (rc != DX_OK) {
        send_error(c, id, rc, d.msg);
        dx_example_free(in);
        return;
    }
    request *r = malloc(sizeof *r);
    if (!r) {
        send_error(c, id, DX_ENOMEM, "out of memory");
        dx_example_free(in);
        return;
    }
    *r = (request){.c = c, .id = id, .t0 = uv_hrtime()};
    c->refs++;
    rc =
        dx_embed_call_async(embed, program, in, &call_opts, on_answer, r, NULL);
    dx_example_free(in); /* the call copied it */
    if (rc != DX_OK) {   /* the callback will not run */
        send_error(c, id, rc,
                   rc == DX_ELIMIT ? "busy: too many calls in flight"
                                   : dx_strerror(rc));
        conn_unref(c);
        free(r);
    }
}

/* ---- reading lines ------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    conn *c = h->data;
    b->base = c->buf + c->len;
    b->len = sizeof c->buf - c->len;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    conn *c = s->data;
    if (n < 0) {
        /* The peer has sent everything; answer what is in flight first. */
        c->eof = true;
        uv_read_stop(s);
        if (c->use_stdout) /* the end of stdin ends the service */
            shutdown_service();
        else if (c->refs == 1)
            conn_finish(c);
        return;
    }
    c->len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < c->len; i++) {
        if (c->buf[i] != '\n')
            continue;
        c->buf[i] = '\0';
        if (!stopping)
            handle_line(c, c->buf + start, i - start);
        start = i + 1;
    }
    memmove(c->buf, c->buf + start, c->len - start);
    c->len -= start;
    if (c->len == sizeof c->buf) { /* a line longer than the buffer */
        send_error(c, ++c->next_id, DX_ELIMIT, "line longer than 64 KiB");
        conn_close(c);
    }
}

static conn *conn_new(bool use_stdout)
{
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->refs = 1;
    c->use_stdout = use_stdout;
    c->in = (uv_stream_t *)&c->h;
    c->h.tcp.data = c; /* every member of the union starts with data */
    return c;
}

static void on_connection(uv_stream_t *srv, int status)
{
    if (status < 0 || stopping)
        return;
    conn *c = conn_new(false);
    if (!c)
        return;
    uv_tcp_init(loop, &c->h.tcp);
    c->h.tcp.data = c;
    if (uv_accept(srv, c->in) != 0 ||
        uv_read_start(c->in, on_alloc, on_read) != 0)
        conn_close(c);
}

/* ---- start and stop ------------------------------------------------------ */

static void shutdown_service(void)
{
    if (stopping)
        return;
    stopping = true;
    if (listening)
        uv_close((uv_handle_t *)&server, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
    /* Calls that finish within DRAIN_MS are answered; the rest are
     * answered with ECANCELED. Their callbacks run here, on this thread. */
    dx_embed_report rep;
    dx_embed_shutdown(embed, DRAIN_MS, &rep);
    embed = NULL;
    fprintf(stderr, "embed_service: stopped (%zu drained, %zu cancelled)\n",
            rep.drained, rep.cancelled);
    uv_walk(loop, finish_walk, NULL);
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    (void)signum;
    shutdown_service();
}

static int usage(void)
{
    fprintf(stderr,
            "usage: embed_service [--program FILE.json] [--model M]\n"
            "                     [--port N | --stdio] [--timeout-ms N] "
            "[--max-calls N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *program_path = EMBED_DEFAULT_PROGRAM;
    const char *model = getenv("DSPEX_MODEL");
    long port = 7070, timeout_ms = 30000, max_calls = 1024;
    bool use_stdio = false;
    static const struct option opts[] = {
        {"program", required_argument, NULL, 'p'},
        {"model", required_argument, NULL, 'm'},
        {"port", required_argument, NULL, 'P'},
        {"stdio", no_argument, NULL, 's'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"max-calls", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    for (int ch; (ch = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        char *end = NULL;
        switch (ch) {
        case 'p':
            program_path = optarg;
            break;
        case 'm':
            model = optarg;
            break;
        case 's':
            use_stdio = true;
            break;
        case 'P':
            port = strtol(optarg, &end, 10);
            break;
        case 't':
            timeout_ms = strtol(optarg, &end, 10);
            break;
        case 'c':
            max_calls = strtol(optarg, &end, 10);
            break;
        default:
            return usage();
        }
        if (end && (*end || end == optarg))
            return usage();
    }
    if (!model || !model[0])
        model = "sim/base";
    if (port < 0 || port > 65535 || timeout_ms <= 0 || max_calls <= 0)
        return usage();

    dx_diag d = {0};
    if (dx_program_load(program_path, &program, &d) != DX_OK) {
        fprintf(stderr, "embed_service: %s\n", d.msg);
        return 1;
    }
    /* Plain-text lines go to the first input of the first predictor. */
    dx_named_predictor *preds = NULL;
    size_t np = 0;
    snprintf(first_input, sizeof first_input, "question");
    if (dx_module_predictors(program, &preds, &np) == DX_OK && np > 0) {
        dx_signature *s = dx_predict_signature(preds[0].predict);
        if (dx_signature_n_inputs(s) > 0)
            snprintf(first_input, sizeof first_input, "%s",
                     dx_signature_input(s, 0)->name);
    }
    dx_free(preds);

    loop = uv_default_loop();
    int rc = dx_embed_start(&(dx_embed_opts){.max_calls = (size_t)max_calls},
                            &embed);
    if (rc == DX_OK)
        rc = dx_embed_attach_loop(embed, loop);
    dx_lm_client_opts lm = {.primary = {model, NULL, NULL}};
    dx_child_spec child = {0};
    dx_term *err = NULL;
    if (rc == DX_OK)
        rc = dx_lm_client_child_spec(&child, "lm", &lm, "lm");
    if (rc == DX_OK) {
        dx_sup_spec root = {
            .name = "embed_service", .children = &child, .nchildren = 1};
        rc = dx_embed_app_start(embed, &root, NULL, &err);
    }
    if (rc != DX_OK) {
        char why[256] = "";
        if (err)
            dx_term_format(err, why, sizeof why);
        fprintf(stderr, "embed_service: cannot start (model %s): %s %s\n",
                model, dx_strerror(rc), why);
        dx_term_free(err);
        dx_embed_shutdown(embed, 0, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        dx_lm_client_child_spec_free(&child);
        dx_module_free(program);
        return 1;
    }
    call_opts = (dx_call_opts){.timeout_ms = timeout_ms};

    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_term);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_term, on_signal, SIGTERM);

    if (use_stdio) {
        conn *c = conn_new(true);
        uv_handle_type t = uv_guess_handle(0);
        int r = -1;
        if (c && t == UV_TTY)
            r = uv_tty_init(loop, &c->h.tty, 0, 1);
        else if (c && t == UV_NAMED_PIPE &&
                 uv_pipe_init(loop, &c->h.pipe, 0) == 0)
            r = uv_pipe_open(&c->h.pipe, 0);
        if (r == 0) {
            c->h.tcp.data = c;
            r = uv_read_start(c->in, on_alloc, on_read);
        }
        if (r != 0) {
            fprintf(stderr, "embed_service: stdin must be a pipe or a "
                            "terminal\n");
            free(c);
            shutdown_service();
        }
    } else {
        struct sockaddr_in addr;
        uv_ip4_addr("127.0.0.1", (int)port, &addr);
        uv_tcp_init(loop, &server);
        int r = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
        if (r == 0)
            r = uv_listen((uv_stream_t *)&server, 128, on_connection);
        if (r != 0) {
            fprintf(stderr, "embed_service: listen on 127.0.0.1:%ld: %s\n",
                    port, uv_strerror(r));
            uv_close((uv_handle_t *)&server, NULL);
            shutdown_service();
        } else {
            listening = true;
            struct sockaddr_storage ss;
            int len = sizeof ss;
            uv_tcp_getsockname(&server, (struct sockaddr *)&ss, &len);
            printf("listening on 127.0.0.1:%d\n",
                   ntohs(((struct sockaddr_in *)&ss)->sin_port));
            fflush(stdout);
        }
    }

    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    dx_lm_client_child_spec_free(&child);
    dx_module_free(program);
    return 0;
}
