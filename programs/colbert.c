/*
 * colbert.c — the "colbertv2" retriever: a client of a ColBERTv2 search
 * server, the HTTP API DSPy's ColBERTv2 speaks (the hosted wiki17_abstracts
 * index of the DSPy tutorials, or a server of the user's own). It owns the
 * server's URL and the request form; each search is one HTTP exchange from
 * the searching process through the transport (http.h), so many processes
 * search at once with no lock.
 *
 * The wire: GET URL?query=Q&k=K (or POST URL with {"query": Q, "k": K}),
 * answered by {"topk": [{"text", "pid", "rank", "score", "prob"}, ...]}
 * best first. A passage's text is "text" ("long_text" when a server sends
 * only that), its id the "pid", its score the "score".
 */
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/http.h"
#include "dspex/retrieve.h"
#include "dspex/runtime.h"
#include "module_int.h"

#define COLBERT_DEFAULT_TIMEOUT_MS 10000 /* DSPy's requests timeout */

typedef struct colbert {
    char *url;
    bool post;
    int64_t timeout_ms;
} colbert;

static void colbert_free(void *state)
{
    colbert *c = state;
    if (c) {
        dx_free(c->url);
        dx_free(c);
    }
}

/* s percent-encoded for a query string (RFC 3986: unreserved bytes stay);
 * NULL on OOM. */
static char *query_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = dx_malloc(3 * n + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
            (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
            *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

/* The request for (query, k): for GET its URL with the query string, for
 * POST its JSON body (the URL is the configured one). */
static int build_request(const colbert *c, const char *query, size_t k,
                         char **url, char **body)
{
    *url = NULL;
    *body = NULL;
    if (c->post) {
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddStringToObject(o, "query", query) ||
            !cJSON_AddNumberToObject(o, "k", (double)k)) {
            cJSON_Delete(o);
            return DX_ENOMEM;
        }
        char *t = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!t)
            return DX_ENOMEM;
        *body = dx_strdup(t);
        cJSON_free(t);
        return *body ? DX_OK : DX_ENOMEM;
    }
    char *q = query_escape(query);
    if (!q)
        return DX_ENOMEM;
    size_t cap = strlen(c->url) + strlen(q) + 48;
    *url = dx_malloc(cap);
    if (*url)
        snprintf(*url, cap, "%s%squery=%s&k=%zu", c->url,
                 strchr(c->url, '?') ? "&" : "?", q, k);
    dx_free(q);
    return *url ? DX_OK : DX_ENOMEM;
}

/* The passages of a {"topk": [...]} answer, at most k. */
static int read_topk(const colbert *c, const char *text, size_t len, size_t k,
                     dx_passages **out, dx_diag *diag)
{
    cJSON *doc = cJSON_ParseWithLength(text, len);
    const cJSON *topk = cJSON_GetObjectItemCaseSensitive(doc, "topk");
    if (!cJSON_IsArray(topk)) {
        cJSON_Delete(doc);
        return dx_diag_set(diag, DX_EPROVIDER, 0, 0,
                           "colbertv2 %s: the answer is not {\"topk\": "
                           "[...]} (%zu bytes: %.80s)",
                           c->url, len, text);
    }
    size_t n = (size_t)cJSON_GetArraySize(topk);
    if (n > k)
        n = k;
    dx_passages *p = dx__passages_new(n);
    if (!p) {
        cJSON_Delete(doc);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    int rc = DX_OK;
    const cJSON *d = topk->child;
    for (size_t i = 0; i < n && rc == DX_OK; i++, d = d->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(d, "text");
        if (!cJSON_IsString(t))
            t = cJSON_GetObjectItemCaseSensitive(d, "long_text");
        if (!cJSON_IsString(t)) {
            rc = dx_diag_set(diag, DX_EPROVIDER, 0, 0,
                             "colbertv2 %s: topk[%zu] has no \"text\"", c->url,
                             i);
            break;
        }
        dx_passage *ps = &p->items[p->n];
        ps->text = dx_strdup(t->valuestring);
        const cJSON *pid = cJSON_GetObjectItemCaseSensitive(d, "pid");
        char idbuf[32];
        if (cJSON_IsNumber(pid)) {
            snprintf(idbuf, sizeof idbuf, "%.0f", pid->valuedouble);
            ps->id = dx_strdup(idbuf);
            /* A pid is a passage number; one past 2^53 (or negative) is
             * not one a double holds exactly, so it is not an index. */
            bool whole =
                pid->valuedouble >= 0 && pid->valuedouble < 9007199254740992.0;
            ps->index = whole ? (size_t)pid->valuedouble : i;
        } else {
            ps->id = cJSON_IsString(pid) ? dx_strdup(pid->valuestring) : NULL;
            ps->index = i;
        }
        const cJSON *score = cJSON_GetObjectItemCaseSensitive(d, "score");
        ps->score = cJSON_IsNumber(score) ? score->valuedouble : 0;
        p->n++;
        if (!ps->text ||
            (pid && (cJSON_IsNumber(pid) || cJSON_IsString(pid)) && !ps->id))
            rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    cJSON_Delete(doc);
    if (rc != DX_OK) {
        dx_passages_free(p);
        return rc;
    }
    *out = p;
    return DX_OK;
}

/* The request's URL and body, as held across the wait (one block). */
static void free_held(void *p)
{
    char **held = p;
    dx_free(held[0]);
    dx_free(held[1]);
    dx_free(held);
}

static int colbert_search(void *state, const char *query, size_t k,
                          dx_passages **out, dx_diag *diag)
{
    const colbert *c = state;
    if (dx_pid_is_none(dx_self()))
        return dx_diag_set(diag, DX_ENOTPROC, 0, 0,
                           "colbertv2: searches run in a process");
    char *url = NULL, *body = NULL;
    int rc = build_request(c, query, k, &url, &body);
    if (rc != DX_OK) {
        dx_free(url);
        dx_free(body);
        return dx_diag_set(diag, rc, 0, 0, "out of memory");
    }
    static const char *const json_headers[] = {
        "Content-Type: application/json; charset=utf-8"};
    dx_http_request hr = {.method = c->post ? "POST" : "GET",
                          .url = url ? url : c->url,
                          .headers = c->post ? json_headers : NULL,
                          .nheaders = c->post ? 1 : 0,
                          .body = body,
                          .body_len = body ? strlen(body) : 0,
                          .timeout_ms = c->timeout_ms};
    /* Held while the process waits: a kill there frees them. */
    char **held = dx_malloc(2 * sizeof *held);
    if (!held) {
        dx_free(url);
        dx_free(body);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    held[0] = url;
    held[1] = body;
    dx_ptie *tie = dx_ptie_new(held, free_held);
    dx_http_response *r = NULL;
    rc = dx_http_fetch(&hr, &r);
    dx_ptie_cut(tie);
    free_held(held);
    if (rc != DX_OK) {
        rc = dx_diag_set(diag, rc, 0, 0, "colbertv2 %s: %s", c->url,
                         rc == DX_EINVAL ? "not a URL the transport takes"
                                         : dx_err_name(rc));
    } else if (r->err != DX_OK) {
        rc = dx_diag_set(diag, DX_EPROVIDER, 0, 0, "colbertv2 %s: %s: %s",
                         c->url, dx_err_name(r->err), r->message);
    } else if (r->status < 200 || r->status > 299) {
        rc = dx_diag_set(diag, DX_EPROVIDER, 0, 0,
                         "colbertv2 %s: HTTP %ld: %.120s", c->url, r->status,
                         r->body ? r->body : "");
    } else {
        rc = read_topk(c, r->body ? r->body : "", r->body_len, k, out, diag);
    }
    dx_http_response_free(r);
    return rc;
}

static const dx_retriever_ops colbert_ops = {
    .name = "colbertv2",
    .version = DX_RETRIEVER_VERSION,
    .search = colbert_search,
    .free = colbert_free,
};

int dx_colbertv2_retriever_new(const dx_colbertv2_opts *opts,
                               dx_retriever **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!opts || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "colbertv2: no options");
    const char *u = opts->url;
    if (!u ||
        (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0) ||
        strpbrk(u, " \t\r\n") != NULL)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "colbertv2: the URL must be http:// or https:// "
                           "(got \"%s\")",
                           u ? u : "");
    if (opts->timeout_ms < 0)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "colbertv2: timeout_ms is negative");
    colbert *c = dx_calloc(1, sizeof *c);
    if (!c || !(c->url = dx_strdup(u))) {
        colbert_free(c);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    c->post = opts->post;
    c->timeout_ms =
        opts->timeout_ms ? opts->timeout_ms : COLBERT_DEFAULT_TIMEOUT_MS;
    int rc = dx_retriever_new(&colbert_ops, c, out);
    if (rc != DX_OK)
        return dx_diag_set(diag, rc, 0, 0, "out of memory");
    return DX_OK;
}
