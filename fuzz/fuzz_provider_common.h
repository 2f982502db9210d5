/*
 * fuzz_provider_common.h — the provider-decoder targets' shared body. The
 * first byte picks what the rest is:
 *   % 4 == 0  a 200 chat reply body           → dx_lm_decode
 *   % 4 == 1  an error reply; the second byte picks the status (and a
 *             Retry-After header)             → dx_lm_decode
 *   % 4 == 2  an SSE body (200, text/event-stream) → dx_lm_stream_*,
 *             fed whole and, cut by the first byte, in chunks
 *   % 4 == 3  a 200 embeddings reply body     → dx_lm_embed_decode
 * Invariants: DX_OK gives a response whose JSON form (history, cache) reads
 * back; a failure is DX_EPROVIDER with a typed error and a message (or
 * DX_ENOTSUP for embeddings the provider lacks); a stream decodes to the
 * same answer, or the same error kind, however its bytes are cut.
 */
#ifndef DSPEX_FUZZ_PROVIDER_COMMON_H
#define DSPEX_FUZZ_PROVIDER_COMMON_H

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/provider.h"
#include "fuzz.h"

static void check_response(int rc, dx_lm_response *r, const dx_lm_error *err)
{
    if (rc == DX_OK) {
        FUZZ_CHECK(r != NULL);
        for (size_t i = 0; i < r->n_choices; i++)
            FUZZ_CHECK(r->choices[i].text != NULL);
        char *json = NULL;
        FUZZ_CHECK(dx_lm_response_to_json(r, &json) == DX_OK);
        dx_lm_response *back = NULL;
        FUZZ_CHECK(dx_lm_response_from_json(json, strlen(json), &back) ==
                   DX_OK);
        FUZZ_CHECK(back->n_choices == r->n_choices);
        dx_lm_response_free(back);
        dx_free(json);
    } else {
        FUZZ_CHECK(rc == DX_EPROVIDER);
        FUZZ_CHECK(err->kind != DX_LM_ERR_NONE);
        FUZZ_CHECK(err->message[0] != '\0');
    }
}

/* Decode body as a stream, whole (chunked == 0) or in chunks; the
 * response's JSON in *json (NULL on failure), the result returned. */
static int stream_decode(const dx_lm_config *c, const char *body, size_t len,
                         int chunked, uint8_t seed, char **json,
                         dx_lm_error *err)
{
    static const dx_lm_header headers[] = {
        {"Content-Type", "text/event-stream; charset=utf-8"},
        {"x-request-id", "req-fuzz"},
    };
    dx_lm_reply head = {200, headers, 2, NULL, 0};
    dx_lm_stream *s = NULL;
    *json = NULL;
    FUZZ_CHECK(dx_lm_stream_new(c, NULL, NULL, &s) == DX_OK);
    int rc = dx_lm_stream_begin(s, &head, err);
    FUZZ_CHECK(rc == DX_OK);
    if (!chunked) {
        rc = dx_lm_stream_feed(s, body, len, err);
    } else {
        fuzz_chunker ch;
        fuzz_chunker_init(&ch, seed);
        size_t off = 0;
        while (off < len && rc == DX_OK) {
            size_t n = fuzz_chunker_next(&ch, len - off);
            rc = dx_lm_stream_feed(s, body + off, n, err);
            off += n;
        }
    }
    dx_lm_response *r = NULL;
    int frc = dx_lm_stream_finish(s, &r, err);
    FUZZ_CHECK(rc == DX_OK || frc == rc);
    check_response(frc, r, err);
    if (frc == DX_OK) {
        FUZZ_CHECK(dx_lm_response_to_json(r, json) == DX_OK);
        dx_lm_response_free(r);
    }
    dx_lm_stream_free(s);
    return frc;
}

static int fuzz_provider(const char *model_string, const uint8_t *data,
                         size_t size)
{
    static const int statuses[] = {400, 401, 403, 404, 408, 409,
                                   413, 422, 429, 500, 503, 529};
    if (size < 2)
        return 0;
    dx_lm_config *c = NULL;
    FUZZ_CHECK(dx_lm_config_new(model_string, NULL, "sk-fuzz", &c) == DX_OK);
    int mode = data[0] % 4;
    size_t len = size - 2;
    /* Not NUL-terminated on purpose: codecs must honour body_len. */
    char *body = malloc(len ? len : 1);
    FUZZ_CHECK(body != NULL);
    if (len)
        memcpy(body, data + 2, len);
    dx_lm_error err;
    dx_lm_error_clear(&err);

    if (mode == 0 || mode == 1) {
        dx_lm_header headers[] = {
            {"content-type", "application/json"},
            {"request-id", "req-fuzz"},
            {"retry-after",
             (data[1] & 1) ? "2" : "Thu, 01 Jan 1970 00:00:00 GMT"},
        };
        dx_lm_reply reply = {
            mode == 0
                ? 200
                : statuses[data[1] % (sizeof statuses / sizeof statuses[0])],
            headers, 3, body, len};
        dx_lm_response *r = NULL;
        int rc = dx_lm_decode(c, &reply, &r, &err);
        check_response(rc, r, &err);
        if (mode == 1)
            FUZZ_CHECK(rc == DX_EPROVIDER && err.status == reply.status);
        dx_lm_response_free(r);
    } else if (mode == 2) {
        char *whole = NULL, *parts = NULL;
        dx_lm_error err2;
        dx_lm_error_clear(&err2);
        int rw = stream_decode(c, body, len, 0, data[1], &whole, &err);
        int rp = stream_decode(c, body, len, 1, data[1], &parts, &err2);
        FUZZ_CHECK(rw == rp);
        if (rw == DX_OK)
            FUZZ_CHECK(strcmp(whole, parts) == 0);
        else
            FUZZ_CHECK(err.kind == err2.kind);
        dx_free(whole);
        dx_free(parts);
    } else {
        dx_lm_reply reply = {200, NULL, 0, body, len};
        dx_lm_embeddings *e = NULL;
        int rc = dx_lm_embed_decode(c, &reply, &e, &err);
        if (rc == DX_OK) {
            FUZZ_CHECK(e != NULL);
            FUZZ_CHECK(e->n == 0 || e->data != NULL);
            float sum = 0;
            for (size_t i = 0; i < e->n * e->dim; i++)
                sum += e->data[i]; /* every element readable */
            (void)sum;
        } else {
            FUZZ_CHECK(rc == DX_EPROVIDER || rc == DX_ENOTSUP);
        }
        dx_lm_embeddings_free(e);
    }
    free(body);
    dx_lm_config_free(c);
    return 0;
}

#endif
