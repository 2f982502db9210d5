/*
 * lmserver_int.h — the seam between the LM server's HTTP core
 * (lmserver.c: sockets, parsing, framing, fault timing) and its wire layer
 * (lmserver_wire.c: routing, the three provider formats, answers, fault
 * specs). The core hands over one parsed request and gets back one response
 * description; the wire layer never touches sockets.
 */
#ifndef DSPEX_LMSERVER_INT_H
#define DSPEX_LMSERVER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf_int.h"
#include "dspex/lmserver.h"

typedef struct dx__lms_header {
    const char *name; /* as sent; compare case-insensitively */
    const char *value;
} dx__lms_header;

typedef struct dx__lms_request {
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* URL path, no query */
    const char *query;  /* after '?', "" if none */
    const dx__lms_header *headers;
    size_t nheaders;
    const char *body; /* NUL-terminated, body_len bytes before the NUL */
    size_t body_len;
} dx__lms_request;

/* What the core must send. The wire layer fills status, ctype, extra
 * header lines ("Name: value\r\n" each) and the body; for a stream, the
 * body is the SSE events back to back and event_end[i] is where event i
 * ends. The fault fields tell the core how to misbehave. */
#define DX__LMS_MAX_EVENTS 512
typedef struct dx__lms_response {
    int status;
    const char *ctype; /* static string */
    dx__buf headers;
    dx__buf body;
    bool sse;
    size_t nevents;
    /* Faults. */
    bool faulted; /* counts in faults_applied */
    uint64_t delay_ms;
    bool stall;
    bool reset_mid; /* send part of the body, then RST */
    bool truncate;  /* send part of the body, then a clean close */
    /* Last: dx__lms_response_new zeroes the fields above only (entries at
     * nevents and beyond are never read), 4 KB less to clear per request. */
    size_t event_end[DX__LMS_MAX_EVENTS];
} dx__lms_response;

/* A response with every field but event_end zeroed; NULL on OOM. */
dx__lms_response *dx__lms_response_new(void);

/* Route and answer one request; never fails (out of memory becomes a 500
 * with whatever could be built). rs comes from dx__lms_response_new. Server
 * thread. */
void dx__lms_handle(dx_lmserver *srv, const dx__lms_request *rq,
                    dx__lms_response *rs);

/* An error the core detects before routing (413, 431, 400 for bad HTTP),
 * shaped like the provider the path belongs to. path may be "". */
void dx__lms_core_error(const char *path, int status, const char *msg,
                        dx__lms_response *rs);

/* Parse a fault spec (as in dx_lmserver_inject); true if valid. */
bool dx__lms_fault_valid(const char *spec);

/* Server state the wire layer reads (lmserver.c). Any thread. */
char *dx__lms_take_reply(dx_lmserver *srv); /* dx_free it; NULL if none */
bool dx__lms_take_fault(dx_lmserver *srv, char *spec, size_t size);
uint64_t dx__lms_next_id(dx_lmserver *srv);

#endif
