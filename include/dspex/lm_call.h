/*
 * lm_call.h — one LM call from a process: encode with the provider's codec,
 * send over the HTTP transport on the I/O loop, wait (the process parks, its
 * scheduler does not), decode the reply or the stream.
 *
 * This is the bottom of the LM stack: no retries, no rate limits, no cache.
 * The LM client actor (a later layer) adds those around it. Errors come back
 * typed in a dx_lm_error (provider.h): an HTTP error keeps the provider's
 * status, type and message; a transport failure is `timeout` or
 * `connection`; an unreadable answer is `malformed_response`.
 */
#ifndef DSPEX_LM_CALL_H
#define DSPEX_LM_CALL_H

#include <stdint.h>

#include "export.h"
#include "provider.h"
#include "term.h"

typedef struct dx_lm_call_opts {
    /* The whole call, connection included; 0 = 600,000 ms (the official
     * SDKs' default), negative = none. */
    int64_t timeout_ms;
    /* Until connected; 0 = 5,000 ms. */
    int64_t connect_timeout_ms;
    /* Largest reply body accepted; 0 = the transport's default (16 MiB). */
    size_t max_response_bytes;
    /* For a streamed request (req->stream): called with each delta as it
     * arrives, in the calling process. May be NULL. */
    dx_lm_delta_fn on_delta;
    void *ud;
    /* A monitor of the calling process (dx_monitor) whose DOWN ends the
     * call: the transfer is cancelled, the DOWN message taken and the call
     * returns DX_EDOWN. For a call made on behalf of a process that may
     * die meanwhile. DX_NOREF (the default): none. */
    dx_ref abort_on_down;
} dx_lm_call_opts;

/* Make one call. opts may be NULL. On DX_OK *out is the response (caller
 * frees with dx_lm_response_free) with latency_ms and request_id filled.
 * DX_EPROVIDER: err says what went wrong (HTTP error, transport failure,
 * malformed reply). DX_EINVAL/DX_ENOTSUP: the request cannot be encoded for
 * this provider (err says why). DX_EDOWN: opts->abort_on_down fired.
 * DX_ENOTPROC from a host thread. DX_ENOMEM.
 * If the calling process dies during the call, the transfer is cancelled.
 * Process only. */
DX_API int dx_lm_call(const dx_lm_config *c, const dx_lm_request *req,
                      const dx_lm_call_opts *opts, dx_lm_response **out,
                      dx_lm_error *err);

#endif
