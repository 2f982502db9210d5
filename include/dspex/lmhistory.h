/*
 * lmhistory.h — a bounded ring of the last N LM calls, for inspection.
 *
 * Each entry owns copies of what the call sent (messages, tool calls) and
 * what came back (the response, or the typed error when it failed), with the
 * model, usage, latency, cache and attempt counts and a caller-given
 * timestamp. dx_lmhistory_inspect renders the last n calls as text in the
 * shape of DSPy's inspect_history.
 *
 * Threads: a history has no lock; one owner (the LM client actor) uses it.
 */
#ifndef DSPEX_LMHISTORY_H
#define DSPEX_LMHISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "export.h"
#include "provider.h"

/* Largest capacity dx_lmhistory_new accepts. */
#define DX_LMHISTORY_MAX_CAPACITY 100000

/* One recorded call. Everything is owned by the history. */
typedef struct dx_lmhistory_entry {
    int64_t timestamp_ms; /* Unix time in ms, as given to _add */
    char *model;          /* model used; "" when unknown */
    dx_lm_message *messages;
    size_t n_messages;
    dx_lm_response *response; /* NULL when the call failed */
    dx_lm_usage usage;
    double latency_ms;
    bool cached;
    int attempts;
    bool failed;
    dx_lm_error error; /* kind DX_LM_ERR_NONE unless failed */
} dx_lmhistory_entry;

/* What _add records. All pointers are borrowed for the call and copied;
 * request, response, model and error may be NULL. A call failed when error
 * is non-NULL with a kind other than DX_LM_ERR_NONE. */
typedef struct dx_lmhistory_record {
    int64_t timestamp_ms;
    const char *model;
    const dx_lm_request *request;
    const dx_lm_response *response;
    dx_lm_usage usage;
    double latency_ms;
    bool cached;
    int attempts;
    const dx_lm_error *error;
} dx_lmhistory_record;

typedef struct dx_lmhistory dx_lmhistory;

/* A history keeping the last `capacity` calls (1..DX_LMHISTORY_MAX_CAPACITY).
 * DX_OK with *out the caller's (dx_lmhistory_free); DX_EINVAL, DX_ENOMEM. */
DX_API int dx_lmhistory_new(size_t capacity, dx_lmhistory **out);
/* NULL is a no-op. */
DX_API void dx_lmhistory_free(dx_lmhistory *h);

/* Record a call, copying everything rec points to; when full, the oldest
 * entry is dropped. DX_OK; DX_EINVAL (NULL h or rec); DX_ENOMEM, and then
 * the history is unchanged. */
DX_API int dx_lmhistory_add(dx_lmhistory *h, const dx_lmhistory_record *rec);

/* As _add, for an owner done with the call's request and response: the
 * entry takes request's messages and *response instead of copying them
 * (rec->request and rec->response are not read; a NULL request, or a
 * NULL response or *response, records none). On DX_OK request keeps no
 * messages (n_messages 0) and *response is NULL, and the caller frees
 * what is left as usual; on an error nothing was taken. Messages with a
 * NULL content are copied, not taken. */
DX_API int dx_lmhistory_add_taking(dx_lmhistory *h,
                                   const dx_lmhistory_record *rec,
                                   dx_lm_request *request,
                                   dx_lm_response **response);

/* Number of entries held (at most the capacity). */
DX_API size_t dx_lmhistory_len(const dx_lmhistory *h);

/* Entry i, 0 being the OLDEST held; NULL when i >= len. The pointer is
 * borrowed and valid until the next _add, _clear or _free. */
DX_API const dx_lmhistory_entry *dx_lmhistory_get(const dx_lmhistory *h,
                                                  size_t i);

/* Drop every entry. */
DX_API void dx_lmhistory_clear(dx_lmhistory *h);

/* Render the last n calls (all when n is 0 or more than held), oldest
 * first, into buf (always NUL-terminated when cap > 0, truncated to cap).
 * Returns the length it wanted, as snprintf does. Per call:
 *
 *   [2026-01-02T03:04:05.678Z] <model> (<latency> ms, <k> attempt(s)[, cached])
 *   <blank>
 *   System message:      (User / Assistant / Tool message, one per message)
 *   <blank>
 *   <text>               (+ "Tool calls:" lines "- name(args) [id]")
 *   <blank>
 *   Response:            ("Response <i>/<n>:" when several choices)
 *   <blank>
 *   <text>
 *   <blank>
 *   Usage: <in> input, <out> output tokens    (when the response has usage)
 *   <blank>
 *
 * A failed call shows "Error: <kind> [(HTTP <status>)]: <message>" in place
 * of the response. The output depends only on the entries (UTC time). */
DX_API size_t dx_lmhistory_inspect(const dx_lmhistory *h, size_t n, char *buf,
                                   size_t cap);
/* The same text written to f. DX_OK, DX_EINVAL, DX_ENOMEM, DX_ESYS (the write failed). */
DX_API int dx_lmhistory_inspect_file(const dx_lmhistory *h, size_t n, FILE *f);

#endif
