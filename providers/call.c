/*
 * call.c — dx_lm_call: codec + transport for one LM call from a process.
 *
 * The process encodes, hands the request to the I/O loop and parks in a
 * selective receive on the request's reference. A plain reply comes back as
 * one completion message; a streamed 2xx reply as chunk messages fed to the
 * stream decoder as they arrive, then the completion. Transport failures
 * become `timeout` / `connection` / `cancelled` errors with the transport's
 * own words; nothing here retries.
 */
#include <string.h>

#include "dspex/http.h"
#include "dspex/lm_call.h"
#include "dspex/runtime.h"
#include "dspex/sim.h"

/* Tag of the transport's messages to us: any value works, the reference
 * is what the receive matches on. */
#define CALL_TAG 0x4c4d

/* Longest we wait beyond the transfer's own timeout before cancelling it
 * ourselves (the transport enforces timeout_ms; this is the safety net). */
#define GRACE_MS 5000

static dx_lm_error_kind transport_kind(int err)
{
    switch (err) {
    case DX_ETIMEDOUT:
        return DX_LM_ERR_TIMEOUT;
    case DX_ECANCELED:
        return DX_LM_ERR_CANCELLED;
    case DX_ELIMIT:
        return DX_LM_ERR_MALFORMED_RESPONSE;
    default:
        return DX_LM_ERR_CONNECTION;
    }
}

/* The transport's headers as the codec wants them (borrowed). */
static dx_lm_header *reply_headers(const dx_http_response *r)
{
    dx_lm_header *h = dx_calloc(r->nheaders ? r->nheaders : 1, sizeof *h);
    if (h == NULL)
        return NULL;
    for (size_t i = 0; i < r->nheaders; i++) {
        h[i].name = r->headers[i].name;
        h[i].value = r->headers[i].value;
    }
    return h;
}

typedef struct call {
    const dx_lm_config *c;
    const dx_lm_call_opts *o;
    dx_lm_error *err;
    dx_lm_stream *stream; /* streamed request: created on the first chunk */
    bool streamed;        /* chunks arrived (a 2xx stream) */
    int rc;               /* first failure while streaming */
} call;

static void on_delta(dx_lm_stream *s, const dx_lm_delta *d, void *ud)
{
    const dx_lm_call_opts *o = ud;
    if (o->on_delta != NULL)
        o->on_delta(s, d, o->ud);
}

/* A chunk of a 2xx stream: headers come only with the completion, so the
 * stream starts with the one fact a chunk proves (a 2xx event stream) and
 * the content type is checked when the completion arrives. Not inlined,
 * as finish. */
static DX_NOINLINE void feed_chunk(call *k, const dx_http_chunk *ch)
{
    if (k->rc != DX_OK)
        return;
    if (!k->streamed) {
        k->streamed = true;
        static const dx_lm_header sse = {"content-type", "text/event-stream"};
        dx_lm_reply head = {.status = 200, .headers = &sse, .n_headers = 1};
        k->rc = dx_lm_stream_begin(k->stream, &head, k->err);
        if (k->rc != DX_OK)
            return;
    }
    k->rc = dx_lm_stream_feed(k->stream, ch->data, ch->len, k->err);
}

/* The completion: the answer decoded into *out, or the error in k->err.
 * Not inlined: its locals would sit in dx_lm_call's frame through the
 * wait (see submit). */
static DX_NOINLINE int finish(call *k, const dx_http_response *r,
                              dx_lm_response **out)
{
    const char *provider = k->c->provider->name;
    if (r->err != DX_OK) {
        dx_lm_error_set(k->err, transport_kind(r->err), (int)r->status,
                        provider, "%s: %s", dx_err_name(r->err), r->message);
        return DX_EPROVIDER;
    }
    dx_lm_header *hdrs = reply_headers(r);
    if (hdrs == NULL)
        return DX_ENOMEM;
    dx_lm_reply reply = {.status = (int)r->status,
                         .headers = hdrs,
                         .n_headers = r->nheaders,
                         .body = r->body,
                         .body_len = r->body_len};
    int rc;
    if (k->stream == NULL) {
        rc = dx_lm_decode(k->c, &reply, out, k->err);
    } else if (k->streamed) {
        const char *ct = dx_lm_reply_header(&reply, "content-type");
        rc = k->rc;
        if (rc == DX_OK &&
            (ct == NULL || strstr(ct, "text/event-stream") == NULL)) {
            dx_lm_error_set(k->err, DX_LM_ERR_MALFORMED_RESPONSE,
                            (int)r->status, provider,
                            "stream: content-type is %s, not "
                            "text/event-stream",
                            ct ? ct : "missing");
            rc = DX_EPROVIDER;
        }
        if (rc == DX_OK)
            rc = dx_lm_stream_finish(k->stream, out, k->err);
    } else {
        /* No chunk came: an error status (its body is in the completion)
         * or an empty or non-stream 2xx reply. */
        rc = dx_lm_stream_begin(k->stream, &reply, k->err);
        if (rc == DX_OK && r->body_len > 0)
            rc = dx_lm_stream_feed(k->stream, r->body, r->body_len, k->err);
        if (rc == DX_OK)
            rc = dx_lm_stream_finish(k->stream, out, k->err);
    }
    if (rc == DX_OK && *out != NULL) {
        (*out)->latency_ms = (double)r->total_us / 1000.0;
        const char *rid = dx_lm_reply_header(&reply, "x-request-id");
        if (rid == NULL)
            rid = dx_lm_reply_header(&reply, "request-id");
        if ((*out)->request_id == NULL && rid != NULL)
            (*out)->request_id = dx_strdup(rid);
    }
    dx_free(hdrs);
    return rc;
}

/* The simulator answers at once, in this thread: no process, no I/O. A
 * streamed request still gets its deltas (one text delta per choice, then
 * the finish and the usage), so streaming callers work unchanged. Not
 * inlined: its deltas would sit in dx_lm_call's frame (see submit). */
static DX_NOINLINE int sim_call(const dx_lm_config *c, const dx_lm_request *req,
                                const dx_lm_call_opts *opts,
                                dx_lm_response **out, dx_lm_error *err)
{
    int rc = dx_sim_complete(req, c->model, out, err);
    if (rc != DX_OK || !req->stream || !opts->on_delta)
        return rc;
    dx_lm_stream *s = NULL;
    if (dx_lm_stream_new(c, opts->on_delta, opts->ud, &s) != DX_OK) {
        dx_lm_response_free(*out);
        *out = NULL;
        return DX_ENOMEM;
    }
    const dx_lm_response *r = *out;
    for (size_t i = 0; i < r->n_choices; i++) {
        dx_lm_delta d = {.kind = DX_LM_DELTA_TEXT,
                         .choice = i,
                         .text = r->choices[i].text,
                         .text_len = strlen(r->choices[i].text)};
        dx_lm_stream_emit(s, &d);
        dx_lm_delta f = {.kind = DX_LM_DELTA_FINISH,
                         .choice = i,
                         .finish = r->choices[i].finish,
                         .finish_raw = r->choices[i].finish_raw};
        dx_lm_stream_emit(s, &f);
    }
    if (r->has_usage) {
        dx_lm_delta u = {.kind = DX_LM_DELTA_USAGE, .usage = r->usage};
        dx_lm_stream_emit(s, &u);
    }
    dx_lm_stream_free(s);
    return DX_OK;
}

/* What a call waits for: its transfer's messages, and with abort_on_down
 * the DOWN of that monitor. */
typedef struct call_watch {
    dx_ref transfer;
    dx_ref down;
} call_watch;

static bool transfer_or_down(const dx_msg *m, void *ud)
{
    const call_watch *w = ud;
    return (m->tag == CALL_TAG && dx_ref_eq(m->ref, w->transfer)) ||
           (m->tag == DX_TAG_DOWN && dx_ref_eq(m->ref, w->down));
}

static void stream_release(void *stream)
{
    dx_lm_stream_free(stream);
}

/* Encode req and hand it to the transport: *ref names the transfer, and
 * k->stream is the decoder of a streamed call. In a frame of its own
 * (DX_NOINLINE): the encoded request and the transport's description of
 * it are over by the time dx_lm_call waits, and need not be copied out
 * and back in with its frames. */
static DX_NOINLINE int submit(const dx_lm_config *c, const dx_lm_request *req,
                              const dx_lm_call_opts *opts, int64_t timeout,
                              call *k, dx_ref *ref)
{
    dx_lm_http h;
    int rc = dx_lm_encode(c, req, &h, k->err);
    if (rc != DX_OK)
        return rc;
    char *url = NULL;
    if ((rc = dx_lm_http_url(c, &h, &url)) != DX_OK) {
        dx_lm_http_free(&h);
        return rc;
    }
    dx_http_request hr = {
        .method = h.method,
        .url = url,
        .headers = (const char *const *)h.headers,
        .nheaders = h.n_headers,
        .body = h.body,
        .body_len = h.body_len,
        .timeout_ms = timeout,
        .connect_timeout_ms =
            opts->connect_timeout_ms ? opts->connect_timeout_ms : 5000,
        .stream = h.stream,
        .max_response_bytes = opts->max_response_bytes,
    };
    if (h.stream && (rc = dx_lm_stream_new(c, on_delta, (void *)opts,
                                           &k->stream)) != DX_OK) {
        dx_free(url);
        dx_lm_http_free(&h);
        return rc;
    }
    rc = dx_http_submit(&hr, dx_self(), CALL_TAG, ref); /* copies hr */
    dx_free(url);
    dx_lm_http_free(&h);
    if (rc != DX_OK) {
        dx_lm_stream_free(k->stream);
        k->stream = NULL;
    }
    return rc;
}

int dx_lm_call(const dx_lm_config *c, const dx_lm_request *req,
               const dx_lm_call_opts *opts, dx_lm_response **out,
               dx_lm_error *err)
{
    static const dx_lm_call_opts defaults;
    if (opts == NULL)
        opts = &defaults;
    *out = NULL;
    dx_lm_error_clear(err);
    if (c->provider == &dx_lm_provider_sim)
        return sim_call(c, req, opts, out, err);
    if (dx_pid_is_none(dx_self()))
        return DX_ENOTPROC;

    int64_t timeout = opts->timeout_ms ? opts->timeout_ms : 600000;
    call k = {.c = c, .o = opts, .err = err};
    dx_ref ref;
    int rc = submit(c, req, opts, timeout, &k, &ref);
    if (rc != DX_OK)
        return rc;

    /* The stream's decoder, held across the wait: a process killed there
     * (a program past its deadline, a client's worker stopped) frees it
     * as it ends. */
    dx_ptie *stream_tie =
        k.stream ? dx_ptie_new(k.stream, stream_release) : NULL;
    dx_match mt = {
        .fields = DX_MATCH_REF | DX_MATCH_TAG, .tag = CALL_TAG, .ref = ref};
    call_watch cw = {ref, opts->abort_on_down};
    if (opts->abort_on_down.id != 0)
        mt = (dx_match){.pred = transfer_or_down, .ud = &cw};
    bool cancelled = false;
    bool aborted = false;
    for (;;) {
        dx_msg *m;
        int64_t wait = timeout < 0 ? DX_INFINITY : timeout + GRACE_MS;
        if (dx_receive(&mt, cancelled ? DX_INFINITY : wait, &m) != DX_OK) {
            /* The transport missed its own deadline: cancel; the
             * completion (DX_ECANCELED) still comes and ends the loop. */
            dx_http_cancel(ref);
            cancelled = true;
            continue;
        }
        if (m->tag == DX_TAG_DOWN) {
            /* The process the call was for is gone: stop; the transfer's
             * completion (DX_ECANCELED) still comes and ends the loop. */
            dx_msg_free(m);
            dx_http_cancel(ref);
            cancelled = aborted = true;
            mt = (dx_match){.fields = DX_MATCH_REF | DX_MATCH_TAG,
                            .tag = CALL_TAG,
                            .ref = ref};
            continue;
        }
        const dx_http_chunk *ch = dx_http_msg_chunk(m);
        if (ch != NULL) {
            feed_chunk(&k, ch);
            dx_msg_free(m);
            continue;
        }
        const dx_http_response *r = dx_http_msg_response(m);
        if (aborted) {
            dx_msg_free(m);
            rc = DX_EDOWN;
            break;
        }
        rc = r != NULL ? finish(&k, r, out) : DX_EINVAL;
        if (rc == DX_EPROVIDER && cancelled)
            err->kind = DX_LM_ERR_TIMEOUT;
        dx_msg_free(m);
        break;
    }
    dx_ptie_cut(stream_tie);
    dx_lm_stream_free(k.stream);
    return rc;
}
