/*
 * codec_int.h — what the provider codecs share inside providers/: a bounded
 * growable buffer, cJSON set-up and small JSON helpers, error shortcuts and
 * the building of encoded requests. Not installed; codecs outside dspex use
 * only provider.h.
 */
#ifndef DSPEX_CODEC_INT_H
#define DSPEX_CODEC_INT_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf_int.h"
#include "dspex/export.h"
#include "dspex/provider.h"

/* Route cJSON's allocations through dx_malloc/dx_free. cJSON keeps its hooks
 * in one global, so this is the only place that sets them; every entry
 * point of the codecs calls it (once-only, thread-safe). */
void dx__json_init(void);

/* Object member of the given type, or NULL. */
const cJSON *dx__jobj(const cJSON *o, const char *key);
const cJSON *dx__jarr(const cJSON *o, const char *key);
const char *dx__jstr(const cJSON *o, const char *key);
/* Integer member (a JSON number), or dflt. */
int64_t dx__jint(const cJSON *o, const char *key, int64_t dflt);
/* Unformatted JSON text of item, exactly as cJSON_PrintUnformatted gives
 * it (jprint.c), allocated with dx_malloc; NULL on OOM or an item cJSON
 * cannot print either (a raw item without text, an invalid type). _n also
 * stores its length. */
char *dx__jprint(const cJSON *item);
char *dx__jprint_n(const cJSON *item, size_t *len);
/* The same text appended to b; on failure b is as it was. */
int dx__jprint_into(dx__buf *b, const cJSON *item);
/* s (NULL: "") as the JSON string cJSON would print for it, quotes
 * included, appended to b: for JSON written without building a tree. */
int dx__jprint_str(dx__buf *b, const char *s);

/* JSON written straight into a buffer, as the tree the dx__jadd_* calls
 * below would build prints (the same bytes, so request caches and golden
 * files do not move), without allocating a node per value. For bodies
 * built per request. key is NULL for array elements; the dx__jw_* calls
 * after a failure do nothing and rc keeps the first code (DX_ENOMEM,
 * DX_ELIMIT past DX__JW_DEPTH nested containers, DX_EINVAL for an end
 * without an open container or a NULL raw text). */
#define DX__JW_DEPTH 16
typedef struct dx__jw {
    dx__buf *b;
    int rc;
    int depth;
    bool first[DX__JW_DEPTH]; /* nothing written yet at that depth */
    char close[DX__JW_DEPTH]; /* its closing bracket */
} dx__jw;
void dx__jw_init(dx__jw *w, dx__buf *b);
void dx__jw_obj(dx__jw *w, const char *key);
void dx__jw_arr(dx__jw *w, const char *key);
/* Close the innermost container. */
void dx__jw_end(dx__jw *w);
/* v NULL is written as "", as dx__jadd_str does. */
void dx__jw_str(dx__jw *w, const char *key, const char *v);
/* Whole numbers as integers, the rest as cJSON prints them (dx__jadd_num). */
void dx__jw_num(dx__jw *w, const char *key, double v);
void dx__jw_bool(dx__jw *w, const char *key, bool v);
void dx__jw_null(dx__jw *w, const char *key);
/* JSON text written as it is (the caller has checked it). */
void dx__jw_raw(dx__jw *w, const char *key, const char *json);
/* Whether s is the text of a JSON object (what dx__jadd_raw accepts). */
bool dx__json_is_object(const char *s);
/* Parse JSON text into the tree cJSON_ParseWithLength gives (jparse.c),
 * allocated through cJSON's hooks (dx_malloc); NULL if not JSON or out of
 * memory. Unlike cJSON's parser it keeps no global error position, so
 * parses on many threads at once share nothing. */
cJSON *dx__jparse(const char *s, size_t n);
/* The same tree with its nodes and strings in a few large blocks (usually
 * one) instead of an allocation each: for a tree read and dropped on the
 * spot (an answer decoded, a request the local server reads). Free it with
 * dx__jfree_block, never cJSON_Delete; nothing of it may be detached,
 * replaced or kept past that. */
cJSON *dx__jparse_block(const char *s, size_t n);
void dx__jfree_block(cJSON *root);

/* Set err to malformed_response "<prov>: <what>" and return DX_EPROVIDER. */
int dx__bad(dx_lm_error *err, const char *prov, const char *fmt, ...)
    DX_PRINTF(3, 4);
/* Set err to bad_request and return code (DX_EINVAL / DX_ENOTSUP). */
int dx__reject(dx_lm_error *err, int code, const char *prov, const char *fmt,
               ...) DX_PRINTF(4, 5);
/* Set err for an allocation failure and return DX_ENOMEM. */
int dx__oom(dx_lm_error *err, const char *prov);

/* Fill out: POST path (a printf format), body printed from json. Adds
 * "Content-Type: application/json". DX_OK or DX_ENOMEM (out zeroed). */
int dx__http_post(dx_lm_http *out, const cJSON *body, const char *path_fmt, ...)
    DX_PRINTF(3, 4);
/* The same with a body already written (dx__jw): takes body->p, which
 * leaves body empty, whatever the outcome. */
int dx__http_post_written(dx_lm_http *out, dx__buf *body, const char *path);
/* Append a "name: value" header line. */
int dx__http_header(dx_lm_http *out, const char *name, const char *value);

/* Role/text of request messages, joined for providers that take the system
 * prompt apart: all DX_LM_SYSTEM contents joined by "\n\n" (dx_malloc'd,
 * NULL when there are none or on OOM: check *oom). */
char *dx__system_text(const dx_lm_request *r, bool *oom);

/* cJSON helpers that report allocation failure through a flag, so encoders
 * can build a whole tree and check once. */
typedef struct dx__jb {
    bool oom;
} dx__jb;
cJSON *dx__jadd_obj(dx__jb *b, cJSON *parent, const char *key);
cJSON *dx__jadd_arr(dx__jb *b, cJSON *parent, const char *key);
void dx__jadd_str(dx__jb *b, cJSON *parent, const char *key, const char *v);
void dx__jadd_num(dx__jb *b, cJSON *parent, const char *key, double v);
/* A number item: whole numbers as raw decimal text (cheap to print), the
 * rest as cJSON numbers. Only for trees that are printed, not read back:
 * cJSON_IsNumber is false for the raw form. NULL on OOM. */
cJSON *dx__json_number(double v);
void dx__jadd_bool(dx__jb *b, cJSON *parent, const char *key, bool v);
/* Add parsed JSON text (already validated by the request setters); a text
 * that does not parse adds nothing and returns false. */
bool dx__jadd_raw(dx__jb *b, cJSON *parent, const char *key, const char *json);
/* Push to an array (key NULL) or add to an object. */
void dx__jadd_item(dx__jb *b, cJSON *parent, const char *key, cJSON *item);

/* The config a stream decodes for (its provider name goes in errors). */
const dx_lm_config *dx__stream_config(const dx_lm_stream *s);

/* Store row `row` of n embedding vectors from a JSON array of numbers
 * (the first row fixes the dimension; later rows must match). DX_OK,
 * DX_ENOMEM, DX_EPROVIDER (malformed, err says where). */
int dx__embed_row(dx_lm_embeddings *e, size_t n, size_t row,
                  const cJSON *values, dx_lm_error *err, const char *prov,
                  const char *where);

/* Map a finish string through a table {raw, kind}; DX_LM_FINISH_OTHER for
 * strings not in it. */
typedef struct dx__finish_map {
    const char *raw;
    dx_lm_finish finish;
} dx__finish_map;
dx_lm_finish dx__finish_lookup(const dx__finish_map *m, const char *raw);

#endif
