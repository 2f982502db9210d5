/*
 * retrieve.c — retrieval (retrieve.h): the reference-counted retriever
 * handle, the BM25 index (an inverted index built as passages are added, so
 * a search only reads), embeddings through the providers' codecs and the
 * HTTP transport, and the Retrieve and RAG modules.
 */
#include <ctype.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/http.h"
#include "dspex/retrieve.h"
#include "dspex/runtime.h"
#include "module_int.h"
#include "pyjson.h"

/* ---- passages ---------------------------------------------------------- */

void dx_passages_free(dx_passages *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        dx_free(p->items[i].text);
        dx_free(p->items[i].title);
        dx_free(p->items[i].id);
    }
    dx_free(p->items);
    dx_free(p);
}

dx_passages *dx__passages_new(size_t n)
{
    dx_passages *p = dx_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    if (n && !(p->items = dx_calloc(n, sizeof *p->items))) {
        dx_free(p);
        return NULL;
    }
    return p;
}

/* Copy s, or NULL for NULL; *bad set on OOM. */
static char *dup_opt(const char *s, bool *bad)
{
    if (!s)
        return NULL;
    char *d = dx_strdup(s);
    if (!d)
        *bad = true;
    return d;
}

/* ---- the retriever handle ---------------------------------------------- */

struct dx_retriever {
    const dx_retriever_ops *ops;
    void *state;
    atomic_size_t refs;
};

int dx_retriever_new(const dx_retriever_ops *ops, void *state,
                     dx_retriever **out)
{
    if (!ops || !ops->search || !out || ops->version != DX_RETRIEVER_VERSION) {
        if (ops && ops->free && state)
            ops->free(state);
        return DX_EINVAL;
    }
    dx_retriever *r = dx_calloc(1, sizeof *r);
    if (!r) {
        if (ops->free && state)
            ops->free(state);
        return DX_ENOMEM;
    }
    r->ops = ops;
    r->state = state;
    atomic_init(&r->refs, 1);
    *out = r;
    return DX_OK;
}

dx_retriever *dx_retriever_ref(dx_retriever *r)
{
    if (r)
        atomic_fetch_add(&r->refs, 1);
    return r;
}

void dx_retriever_unref(dx_retriever *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    if (r->ops->free && r->state)
        r->ops->free(r->state);
    dx_free(r);
}

const char *dx_retriever_name(const dx_retriever *r)
{
    return r && r->ops->name ? r->ops->name : "";
}

void *dx_retriever_state(const dx_retriever *r)
{
    return r ? r->state : NULL;
}

int dx_retriever_search(const dx_retriever *r, const char *query, size_t k,
                        dx_passages **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!r || !query || !out || k == 0)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "retrieve: no retriever, query or result, or k 0");
    return r->ops->search(r->state, query, k, out, diag);
}

/* ---- tokenizer --------------------------------------------------------- */

static const char *const stopword_list[] = {
    "a",    "about", "an",   "and",  "are",   "as",    "at",   "be",   "been",
    "but",  "by",    "did",  "do",   "does",  "for",   "from", "had",  "has",
    "have", "he",    "her",  "his",  "how",   "i",     "if",   "in",   "into",
    "is",   "it",    "its",  "of",   "on",    "or",    "she",  "so",   "that",
    "the",  "their", "them", "then", "there", "these", "they", "this", "to",
    "was",  "were",  "what", "when", "where", "which", "who",  "whom", "why",
    "will", "with",  "you",  "your",
};

static bool is_stopword(const char *w, size_t n)
{
    for (size_t i = 0; i < sizeof stopword_list / sizeof *stopword_list; i++)
        if (strlen(stopword_list[i]) == n &&
            memcmp(stopword_list[i], w, n) == 0)
            return true;
    return false;
}

static bool word_byte(unsigned char c)
{
    return isalnum(c) || c >= 0x80;
}

/* Calls fn for each token (lower-cased in buf, NUL-terminated); tokens
 * longer than the buffer are cut. Stops when fn returns false. */
typedef bool (*token_fn)(const char *tok, size_t n, void *ud);

static bool tokens(const char *text, bool stop, token_fn fn, void *ud)
{
    char buf[128];
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        while (*p && !word_byte(*p))
            p++;
        size_t n = 0;
        while (*p && word_byte(*p)) {
            if (n + 1 < sizeof buf)
                buf[n++] = (char)tolower(*p);
            p++;
        }
        if (n == 0)
            continue;
        buf[n] = '\0';
        if (stop && is_stopword(buf, n))
            continue;
        if (!fn(buf, n, ud))
            return false;
    }
    return true;
}

typedef struct toklist {
    char **v;
    size_t n, cap;
} toklist;

static bool push_token(const char *tok, size_t n, void *ud)
{
    toklist *l = ud;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        char **nv = dx_realloc(l->v, nc * sizeof *nv);
        if (!nv)
            return false;
        l->v = nv;
        l->cap = nc;
    }
    char *t = dx_malloc(n + 1);
    if (!t)
        return false;
    memcpy(t, tok, n + 1);
    l->v[l->n++] = t;
    return true;
}

void dx_tokens_free(char **t, size_t n)
{
    if (!t)
        return;
    for (size_t i = 0; i < n; i++)
        dx_free(t[i]);
    dx_free(t);
}

int dx_bm25_tokenize(const char *text, bool stopwords, char ***out, size_t *n)
{
    if (!text || !out || !n)
        return DX_EINVAL;
    toklist l = {0};
    if (!tokens(text, stopwords, push_token, &l)) {
        dx_tokens_free(l.v, l.n);
        return DX_ENOMEM;
    }
    *out = l.v;
    *n = l.n;
    return DX_OK;
}

/* ---- BM25 -------------------------------------------------------------- */

typedef struct posting {
    uint32_t doc;
    uint32_t tf;
} posting;

typedef struct term {
    char *word; /* NULL: empty slot */
    posting *p;
    size_t n, cap;
} term;

typedef struct doc {
    char *text, *title, *id;
    uint32_t len; /* tokens */
} doc;

struct dx_bm25 {
    dx_bm25_opts o;
    doc *docs;
    size_t n_docs, cap_docs;
    uint64_t total_len;
    term *terms; /* open addressing, power-of-two size */
    size_t n_terms, cap_terms;
};

static uint64_t hash_word(const char *w)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *w; w++)
        h = (h ^ (unsigned char)*w) * 0x100000001b3ull;
    return h;
}

static term *find_term(const dx_bm25 *ix, const char *w)
{
    if (ix->cap_terms == 0)
        return NULL;
    size_t mask = ix->cap_terms - 1;
    for (size_t i = hash_word(w) & mask;; i = (i + 1) & mask) {
        term *t = &ix->terms[i];
        if (!t->word)
            return NULL;
        if (strcmp(t->word, w) == 0)
            return t;
    }
}

static bool grow_terms(dx_bm25 *ix)
{
    size_t nc = ix->cap_terms ? ix->cap_terms * 2 : 256;
    term *nt = dx_calloc(nc, sizeof *nt);
    if (!nt)
        return false;
    for (size_t i = 0; i < ix->cap_terms; i++) {
        term *t = &ix->terms[i];
        if (!t->word)
            continue;
        size_t j = hash_word(t->word) & (nc - 1);
        while (nt[j].word)
            j = (j + 1) & (nc - 1);
        nt[j] = *t;
    }
    dx_free(ix->terms);
    ix->terms = nt;
    ix->cap_terms = nc;
    return true;
}

/* The term for w, inserted empty when new; NULL on OOM. */
static term *intern(dx_bm25 *ix, const char *w)
{
    term *t = find_term(ix, w);
    if (t)
        return t;
    if ((ix->n_terms + 1) * 4 > ix->cap_terms * 3 && !grow_terms(ix))
        return NULL;
    char *c = dx_strdup(w);
    if (!c)
        return NULL;
    size_t mask = ix->cap_terms - 1;
    size_t i = hash_word(w) & mask;
    while (ix->terms[i].word)
        i = (i + 1) & mask;
    ix->terms[i].word = c;
    ix->n_terms++;
    return &ix->terms[i];
}

int dx_bm25_new(const dx_bm25_opts *opts, dx_bm25 **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    dx_bm25_opts o = opts ? *opts : DX_BM25_DEFAULTS;
    if (!(o.k1 >= 0) || !(o.b >= 0 && o.b <= 1))
        return DX_EINVAL;
    dx_bm25 *ix = dx_calloc(1, sizeof *ix);
    if (!ix)
        return DX_ENOMEM;
    ix->o = o;
    *out = ix;
    return DX_OK;
}

static void free_doc(doc *d)
{
    dx_free(d->text);
    dx_free(d->title);
    dx_free(d->id);
}

void dx_bm25_free(dx_bm25 *ix)
{
    if (!ix)
        return;
    for (size_t i = 0; i < ix->n_docs; i++)
        free_doc(&ix->docs[i]);
    dx_free(ix->docs);
    for (size_t i = 0; i < ix->cap_terms; i++) {
        dx_free(ix->terms[i].word);
        dx_free(ix->terms[i].p);
    }
    dx_free(ix->terms);
    dx_free(ix);
}

size_t dx_bm25_size(const dx_bm25 *ix)
{
    return ix ? ix->n_docs : 0;
}

/* Forget every passage from n0 on (postings of later passages are at the
 * ends of their lists). */
static void truncate_docs(dx_bm25 *ix, size_t n0)
{
    for (size_t i = 0; i < ix->cap_terms; i++) {
        term *t = &ix->terms[i];
        while (t->n > 0 && t->p[t->n - 1].doc >= n0)
            t->n--;
    }
    for (size_t i = n0; i < ix->n_docs; i++) {
        ix->total_len -= ix->docs[i].len;
        free_doc(&ix->docs[i]);
    }
    ix->n_docs = n0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int dx_bm25_add(dx_bm25 *ix, const char *text, const char *title,
                const char *id)
{
    if (!ix || !text)
        return DX_EINVAL;
    if (ix->n_docs >= UINT32_MAX)
        return DX_ELIMIT;
    if (ix->n_docs == ix->cap_docs) {
        size_t nc = ix->cap_docs ? ix->cap_docs * 2 : 64;
        doc *nd = dx_realloc(ix->docs, nc * sizeof *nd);
        if (!nd)
            return DX_ENOMEM;
        ix->docs = nd;
        ix->cap_docs = nc;
    }
    toklist l = {0};
    if (!tokens(text, ix->o.stopwords, push_token, &l)) {
        dx_tokens_free(l.v, l.n);
        return DX_ENOMEM;
    }
    size_t n0 = ix->n_docs;
    bool bad = false;
    doc *d = &ix->docs[n0];
    *d = (doc){.text = dup_opt(text, &bad),
               .title = dup_opt(title, &bad),
               .id = dup_opt(id, &bad),
               .len = (uint32_t)l.n};
    ix->n_docs++;
    ix->total_len += d->len;
    if (l.n)
        qsort(l.v, l.n, sizeof *l.v, cmp_str);
    for (size_t i = 0; i < l.n && !bad;) {
        size_t j = i;
        while (j < l.n && strcmp(l.v[j], l.v[i]) == 0)
            j++;
        term *t = intern(ix, l.v[i]);
        if (!t) {
            bad = true;
            break;
        }
        if (t->n == t->cap) {
            size_t nc = t->cap ? t->cap * 2 : 4;
            posting *np = dx_realloc(t->p, nc * sizeof *np);
            if (!np) {
                bad = true;
                break;
            }
            t->p = np;
            t->cap = nc;
        }
        t->p[t->n++] = (posting){(uint32_t)n0, (uint32_t)(j - i)};
        i = j;
    }
    dx_tokens_free(l.v, l.n);
    if (bad) {
        truncate_docs(ix, n0);
        return DX_ENOMEM;
    }
    return DX_OK;
}

/* A passage member as a new string: a string, or a number's shortest
 * text. NULL with *bad unset when absent; *bad on a wrong type. */
static int member(const cJSON *o, const char *key, bool number_ok,
                  const char **s, char num[32])
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *s = NULL;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsString(v)) {
        *s = v->valuestring;
        return 0;
    }
    if (number_ok && cJSON_IsNumber(v)) {
        if (dx__json_is_int(v))
            snprintf(num, 32, "%lld", (long long)v->valuedouble);
        else
            dx__pyfloat_repr(v->valuedouble, num);
        *s = num;
        return 0;
    }
    return -1;
}

int dx_bm25_add_jsonl(dx_bm25 *ix, const char *text, size_t len,
                      const char *name, dx_diag *diag)
{
    if (!ix || (!text && len))
        return DX_EINVAL;
    if (!name)
        name = "corpus";
    size_t n0 = ix->n_docs;
    int line = 0;
    for (size_t at = 0; at < len;) {
        const char *s = text + at;
        const char *nl = memchr(s, '\n', len - at);
        size_t ll = nl ? (size_t)(nl - s) : len - at;
        at += ll + (nl ? 1 : 0);
        line++;
        size_t b = 0;
        while (b < ll && isspace((unsigned char)s[b]))
            b++;
        if (b == ll)
            continue;
        int jl = 0, jc = 0;
        const char *what = NULL;
        cJSON *o = dx__json_parse_msg(s, ll, &jl, &jc, &what);
        int rc = DX_OK;
        const char *t, *ti, *id;
        char num[32];
        if (!o && what && strcmp(what, "out of memory") == 0)
            rc = dx_diag_set(diag, DX_ENOMEM, line, 0, "%s:%d: out of memory",
                             name, line); /* not a syntax error */
        else if (!o)
            rc = dx_diag_set(diag, DX_ESYNTAX, line, jc,
                             "%s:%d: %s at column %d", name, line,
                             what ? what : "not JSON", jc);
        else if (!cJSON_IsObject(o))
            rc = dx_diag_set(diag, DX_ESYNTAX, line, 0,
                             "%s:%d: expected a JSON object", name, line);
        else if (member(o, "text", false, &t, num) != 0 || !t)
            rc = dx_diag_set(
                diag, DX_ESYNTAX, line, 0, "%s:%d: \"text\" is %s", name, line,
                cJSON_GetObjectItemCaseSensitive(o, "text") ? "not a string"
                                                            : "missing");
        else if (member(o, "title", false, &ti, num) != 0)
            rc = dx_diag_set(diag, DX_ESYNTAX, line, 0,
                             "%s:%d: \"title\" is not a string", name, line);
        else if (member(o, "id", true, &id, num) != 0)
            rc = dx_diag_set(diag, DX_ESYNTAX, line, 0,
                             "%s:%d: \"id\" is not a string or number", name,
                             line);
        else if ((rc = dx_bm25_add(ix, t, ti, id)) != DX_OK)
            dx_diag_set(diag, rc, line, 0, "%s:%d: %s", name, line,
                        dx_strerror(rc));
        cJSON_Delete(o);
        if (rc != DX_OK) {
            truncate_docs(ix, n0);
            return rc;
        }
    }
    return DX_OK;
}

int dx_bm25_load(dx_bm25 *ix, const char *path, dx_diag *diag)
{
    if (!ix || !path)
        return DX_EINVAL;
    dx__sb b;
    dx__sb_init(&b);
    int rc = dx__read_file(path, &b, diag);
    if (rc == DX_OK)
        rc = dx_bm25_add_jsonl(ix, b.p, b.len, path, diag);
    dx__sb_free(&b);
    return rc;
}

typedef struct scored {
    size_t doc;
    double score;
} scored;

static int cmp_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->doc < y->doc ? -1 : x->doc > y->doc;
}

typedef struct qctx {
    const dx_bm25 *ix;
    double *score;
    bool *hit;
    double avgdl;
} qctx;

static bool score_token(const char *tok, size_t n, void *ud)
{
    (void)n;
    qctx *q = ud;
    const term *t = find_term(q->ix, tok);
    if (!t || t->n == 0)
        return true;
    const dx_bm25_opts *o = &q->ix->o;
    double N = (double)q->ix->n_docs, df = (double)t->n;
    double idf = log(1.0 + (N - df + 0.5) / (df + 0.5));
    for (size_t i = 0; i < t->n; i++) {
        double tf = t->p[i].tf;
        double dl = q->ix->docs[t->p[i].doc].len;
        double norm = o->k1 * (1.0 - o->b + o->b * dl / q->avgdl);
        q->score[t->p[i].doc] += idf * tf * (o->k1 + 1.0) / (tf + norm);
        q->hit[t->p[i].doc] = true;
    }
    return true;
}

static int make_result(const doc *docs, const scored *s, size_t m,
                       dx_passages **out)
{
    dx_passages *r = dx__passages_new(m);
    if (!r)
        return DX_ENOMEM;
    bool bad = false;
    for (size_t i = 0; i < m; i++) {
        const doc *d = &docs[s[i].doc];
        r->items[i] = (dx_passage){.text = dup_opt(d->text, &bad),
                                   .title = dup_opt(d->title, &bad),
                                   .id = dup_opt(d->id, &bad),
                                   .score = s[i].score,
                                   .index = s[i].doc};
        r->n = i + 1;
    }
    if (bad) {
        dx_passages_free(r);
        return DX_ENOMEM;
    }
    *out = r;
    return DX_OK;
}

int dx_bm25_search(const dx_bm25 *ix, const char *query, size_t k,
                   dx_passages **out)
{
    if (out)
        *out = NULL;
    if (!ix || !query || !out || k == 0)
        return DX_EINVAL;
    size_t N = ix->n_docs;
    if (N == 0)
        return (*out = dx__passages_new(0)) ? DX_OK : DX_ENOMEM;
    qctx q = {.ix = ix,
              .score = dx_calloc(N, sizeof(double)),
              .hit = dx_calloc(N, sizeof(bool)),
              .avgdl = ix->total_len ? (double)ix->total_len / (double)N : 1};
    scored *s = dx_malloc(N * sizeof *s);
    int rc = DX_ENOMEM;
    if (q.score && q.hit && s) {
        tokens(query, ix->o.stopwords, score_token, &q);
        size_t m = 0;
        for (size_t i = 0; i < N; i++)
            if (q.hit[i])
                s[m++] = (scored){i, q.score[i]};
        qsort(s, m, sizeof *s, cmp_scored);
        rc = make_result(ix->docs, s, m < k ? m : k, out);
    }
    dx_free(q.score);
    dx_free(q.hit);
    dx_free(s);
    return rc;
}

static int bm25_search_op(void *state, const char *query, size_t k,
                          dx_passages **out, dx_diag *diag)
{
    int rc = dx_bm25_search(state, query, k, out);
    if (rc != DX_OK)
        dx_diag_set(diag, rc, 0, 0, "bm25: %s", dx_strerror(rc));
    return rc;
}

static void bm25_free_op(void *state)
{
    dx_bm25_free(state);
}

static const dx_retriever_ops bm25_ops = {
    .name = "bm25",
    .version = DX_RETRIEVER_VERSION,
    .search = bm25_search_op,
    .free = bm25_free_op,
};

int dx_bm25_retriever(dx_bm25 *ix, dx_retriever **out)
{
    if (!ix) {
        return DX_EINVAL;
    }
    return dx_retriever_new(&bm25_ops, ix, out);
}

/* ---- embeddings -------------------------------------------------------- */

/* What an embeddings request holds while its process waits for the
 * answer, in one block a tie can free. */
typedef struct held_request {
    char *url;
    dx_lm_http http;
} held_request;

static void held_request_release(void *p)
{
    held_request *hr = p;
    dx_free(hr->url);
    dx_lm_http_free(&hr->http);
    dx_free(hr);
}

/* One request for texts[0..n): encode, send, wait, decode. */
static int embed_batch(const dx_lm_config *c, const char *const *texts,
                       size_t n, int64_t timeout_ms, dx_lm_embeddings **out,
                       dx_lm_error *err)
{
    dx_lm_http h;
    int rc = dx_lm_embed_encode(c, texts, n, &h, err);
    if (rc != DX_OK)
        return rc;
    char *url = NULL;
    if ((rc = dx_lm_http_url(c, &h, &url)) != DX_OK) {
        dx_lm_http_free(&h);
        return rc;
    }
    dx_http_request hr = {.method = h.method,
                          .url = url,
                          .headers = (const char *const *)h.headers,
                          .nheaders = h.n_headers,
                          .body = h.body,
                          .body_len = h.body_len,
                          .timeout_ms = timeout_ms};
    /* Held while the process waits: a kill there frees them. */
    held_request *held = dx_malloc(sizeof *held);
    if (!held) {
        dx_free(url);
        dx_lm_http_free(&h);
        return DX_ENOMEM;
    }
    *held = (held_request){.url = url, .http = h};
    dx_ptie *tie = dx_ptie_new(held, held_request_release);
    dx_http_response *r = NULL;
    rc = dx_http_fetch(&hr, &r);
    dx_ptie_cut(tie);
    held_request_release(held);
    if (rc != DX_OK)
        return rc;
    if (r->err != DX_OK) {
        dx_lm_error_set(err,
                        r->err == DX_ETIMEDOUT ? DX_LM_ERR_TIMEOUT
                                               : DX_LM_ERR_CONNECTION,
                        (int)r->status, c->provider->name, "%s: %s",
                        dx_err_name(r->err), r->message);
        dx_http_response_free(r);
        return DX_EPROVIDER;
    }
    dx_lm_header *hd = dx_calloc(r->nheaders ? r->nheaders : 1, sizeof *hd);
    if (!hd) {
        dx_http_response_free(r);
        return DX_ENOMEM;
    }
    for (size_t i = 0; i < r->nheaders; i++)
        hd[i] = (dx_lm_header){r->headers[i].name, r->headers[i].value};
    dx_lm_reply reply = {.status = (int)r->status,
                         .headers = hd,
                         .n_headers = r->nheaders,
                         .body = r->body,
                         .body_len = r->body_len};
    rc = dx_lm_embed_decode(c, &reply, out, err);
    dx_free(hd);
    dx_http_response_free(r);
    if (rc == DX_OK && (*out)->n != n) {
        dx_lm_error_set(
            err, DX_LM_ERR_MALFORMED_RESPONSE, 200, c->provider->name,
            "embeddings: asked for %zu vectors, got %zu", n, (*out)->n);
        dx_lm_embeddings_free(*out);
        *out = NULL;
        rc = DX_EPROVIDER;
    }
    return rc;
}

static void embeddings_release(void *e)
{
    dx_lm_embeddings_free(e);
}

int dx_embed_texts(const dx_lm_config *c, const char *const *texts, size_t n,
                   size_t batch, int64_t timeout_ms, dx_lm_embeddings **out,
                   dx_lm_error *err)
{
    if (out)
        *out = NULL;
    if (err)
        dx_lm_error_clear(err);
    if (!c || !texts || n == 0 || !out || !err)
        return DX_EINVAL;
    if (dx_pid_is_none(dx_self()))
        return DX_ENOTPROC;
    if (batch == 0)
        batch = 64;
    if (timeout_ms <= 0)
        timeout_ms = 60000;
    dx_lm_embeddings *all = dx_calloc(1, sizeof *all);
    if (!all)
        return DX_ENOMEM;
    /* Held across the requests: a process killed while it waits (a
     * Retrieve step past its deadline) frees it as it ends. */
    dx_ptie *tie = dx_ptie_new(all, embeddings_release);
    int rc = DX_OK;
    for (size_t at = 0; at < n && rc == DX_OK; at += batch) {
        size_t m = n - at < batch ? n - at : batch;
        dx_lm_embeddings *e = NULL;
        rc = embed_batch(c, texts + at, m, timeout_ms, &e, err);
        if (rc != DX_OK)
            break;
        if (at == 0) {
            all->dim = e->dim;
            all->data = dx_malloc(n * e->dim * sizeof(float));
            if (!all->data)
                rc = DX_ENOMEM;
        } else if (e->dim != all->dim) {
            dx_lm_error_set(err, DX_LM_ERR_MALFORMED_RESPONSE, 200,
                            c->provider->name,
                            "embeddings: vectors of %zu and %zu dimensions",
                            all->dim, e->dim);
            rc = DX_EPROVIDER;
        }
        if (rc == DX_OK) {
            memcpy(all->data + at * all->dim, e->data,
                   m * all->dim * sizeof(float));
            all->n += m;
            all->usage.input_tokens += e->usage.input_tokens;
            all->usage.total_tokens += e->usage.total_tokens;
        }
        dx_lm_embeddings_free(e);
    }
    dx_ptie_cut(tie);
    if (rc != DX_OK) {
        dx_lm_embeddings_free(all);
        return rc;
    }
    *out = all;
    return DX_OK;
}

typedef struct embed_index {
    dx_lm_config *c;
    size_t batch;
    int64_t timeout_ms;
    size_t n, dim;
    float *vec; /* n unit vectors */
    char **text;
} embed_index;

static void embed_index_free(void *state)
{
    embed_index *e = state;
    if (!e)
        return;
    dx_lm_config_free(e->c);
    dx_free(e->vec);
    if (e->text)
        for (size_t i = 0; i < e->n; i++)
            dx_free(e->text[i]);
    dx_free(e->text);
    dx_free(e);
}

static void normalise(float *v, size_t dim)
{
    double s = 0;
    for (size_t j = 0; j < dim; j++)
        s += (double)v[j] * v[j];
    s = sqrt(s);
    if (s > 0)
        for (size_t j = 0; j < dim; j++)
            v[j] = (float)(v[j] / s);
}

static int embed_search_op(void *state, const char *query, size_t k,
                           dx_passages **out, dx_diag *diag)
{
    embed_index *e = state;
    dx_lm_embeddings *q = NULL;
    dx_lm_error err;
    int rc = dx_embed_texts(e->c, &query, 1, 1, e->timeout_ms, &q, &err);
    if (rc != DX_OK)
        return dx_diag_set(diag, rc, 0, 0, "embeddings: query: %s%s%s",
                           dx_strerror(rc), err.message[0] ? ": " : "",
                           err.message);
    if (q->dim != e->dim) {
        dx_lm_embeddings_free(q);
        return dx_diag_set(diag, DX_EPROVIDER, 0, 0,
                           "embeddings: the query has %zu dimensions, the "
                           "corpus %zu",
                           q->dim, e->dim);
    }
    normalise(q->data, q->dim);
    scored *s = dx_malloc(e->n * sizeof *s);
    if (!s) {
        dx_lm_embeddings_free(q);
        return DX_ENOMEM;
    }
    for (size_t i = 0; i < e->n; i++) {
        double dot = 0;
        for (size_t j = 0; j < e->dim; j++)
            dot += (double)q->data[j] * e->vec[i * e->dim + j];
        s[i] = (scored){i, dot};
    }
    dx_lm_embeddings_free(q);
    qsort(s, e->n, sizeof *s, cmp_scored);
    size_t m = e->n < k ? e->n : k;
    dx_passages *r = dx__passages_new(m);
    bool bad = !r;
    for (size_t i = 0; i < m && !bad; i++) {
        r->items[i] = (dx_passage){.text = dup_opt(e->text[s[i].doc], &bad),
                                   .score = s[i].score,
                                   .index = s[i].doc};
        r->n = i + 1;
    }
    dx_free(s);
    if (bad) {
        dx_passages_free(r);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "embeddings: out of memory");
    }
    *out = r;
    return DX_OK;
}

static const dx_retriever_ops embed_ops = {
    .name = "embeddings",
    .version = DX_RETRIEVER_VERSION,
    .search = embed_search_op,
    .free = embed_index_free,
};

int dx_embed_retriever_new(const dx_embeddings_opts *opts,
                           const char *const *passages, size_t n,
                           dx_retriever **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!opts || !opts->model || !passages || n == 0 || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "embeddings: no model, passages or result");
    embed_index *e = dx_calloc(1, sizeof *e);
    if (!e)
        return DX_ENOMEM;
    e->batch = opts->batch;
    e->timeout_ms = opts->timeout_ms;
    int rc =
        dx_lm_config_new(opts->model, opts->base_url, opts->api_key, &e->c);
    if (rc != DX_OK) {
        embed_index_free(e);
        return dx_diag_set(diag, rc, 0, 0, "embeddings: model \"%s\": %s",
                           opts->model, dx_strerror(rc));
    }
    dx_lm_embeddings *v = NULL;
    dx_lm_error err;
    rc = dx_embed_texts(e->c, passages, n, e->batch, e->timeout_ms, &v, &err);
    if (rc != DX_OK) {
        embed_index_free(e);
        return dx_diag_set(diag, rc, 0, 0, "embeddings: corpus: %s%s%s",
                           dx_strerror(rc), err.message[0] ? ": " : "",
                           err.message);
    }
    e->dim = v->dim;
    e->vec = v->data;
    v->data = NULL;
    dx_lm_embeddings_free(v);
    for (size_t i = 0; i < n; i++)
        normalise(e->vec + i * e->dim, e->dim);
    e->text = dx_calloc(n, sizeof *e->text);
    bool bad = !e->text;
    for (size_t i = 0; i < n && !bad; i++) {
        e->text[i] = dup_opt(passages[i], &bad);
        e->n = i + 1;
    }
    if (bad) {
        embed_index_free(e);
        return DX_ENOMEM;
    }
    return dx_retriever_new(&embed_ops, e, out);
}

/* ---- modules ----------------------------------------------------------- */

typedef struct retrieve_ud {
    dx_retriever *r;
    size_t k;
} retrieve_ud;

static void retrieve_ud_free(void *p)
{
    retrieve_ud *u = p;
    if (u)
        dx_retriever_unref(u->r);
    dx_free(u);
}

static void *retrieve_ud_copy(const void *p)
{
    const retrieve_ud *u = p;
    retrieve_ud *c = dx_malloc(sizeof *c);
    if (c) {
        c->r = dx_retriever_ref(u->r);
        c->k = u->k;
    }
    return c;
}

static int retrieve_forward(dx_ctx *ctx, const dx_module *self,
                            const dx_example *in, dx_prediction **out)
{
    const retrieve_ud *u = dx_module_ud(self);
    const char *q = dx_example_get_str(in, "query", NULL);
    if (!q)
        return dx_ctx_fail(ctx, DX_EINVAL,
                           "Retrieve: input \"query\" is missing or not a "
                           "string");
    dx_passages *ps = NULL;
    dx_diag d = {0};
    int rc = dx_retriever_search(u->r, q, u->k, &ps, &d);
    if (rc != DX_OK)
        return dx_ctx_fail(ctx, rc, "Retrieve (%s): %s",
                           dx_retriever_name(u->r),
                           d.msg[0] ? d.msg : dx_strerror(rc));
    dx__pyjson_init();
    cJSON *arr = cJSON_CreateArray();
    dx_prediction *p = dx_prediction_new();
    bool bad = !arr || !p;
    for (size_t i = 0; i < ps->n && !bad; i++) {
        cJSON *s = cJSON_CreateString(ps->items[i].text);
        if (!s || !cJSON_AddItemToArray(arr, s)) {
            cJSON_Delete(s);
            bad = true;
        }
    }
    dx_passages_free(ps);
    if (!bad && dx_example_set_value(dx_prediction_fields_mut(p), "passages",
                                     arr) != DX_OK)
        bad = true;
    cJSON_Delete(arr);
    if (bad) {
        dx_prediction_free(p);
        return dx_ctx_fail(ctx, DX_ENOMEM, "Retrieve: out of memory");
    }
    *out = p;
    return DX_OK;
}

dx_module *dx_retrieve_new(dx_retriever *r, size_t k)
{
    if (!r)
        return NULL;
    retrieve_ud *u = dx_malloc(sizeof *u);
    if (!u)
        return NULL;
    u->r = dx_retriever_ref(r);
    u->k = k ? k : 3;
    dx_module *m = dx_module_new("Retrieve", retrieve_forward, u,
                                 retrieve_ud_free, retrieve_ud_copy);
    if (!m)
        retrieve_ud_free(u);
    return m;
}

static int rag_forward(dx_ctx *ctx, const dx_module *self, const dx_example *in,
                       dx_prediction **out)
{
    const char *q = dx_example_get_str(in, "question", NULL);
    if (!q)
        return dx_ctx_fail(ctx, DX_EINVAL,
                           "RAG: input \"question\" is missing or not a "
                           "string");
    /* ex[0] the search's inputs, then the answer's; pred[0] the
     * passages. */
    dx__held *h = dx__held_new();
    dx_example *rq = h ? h->ex[0] = dx_example_new() : NULL;
    if (!rq || dx_example_set_str(rq, "query", q) != DX_OK) {
        dx__held_free(h);
        return dx_ctx_fail(ctx, DX_ENOMEM, "RAG: out of memory");
    }
    int rc =
        dx_forward(ctx, dx_module_child(self, "retrieve"), rq, &h->pred[0]);
    if (rc != DX_OK) {
        dx__held_free(h);
        return rc;
    }
    dx_example_free(rq);
    dx_example *ain = h->ex[0] = dx_example_new();
    if (!ain ||
        dx_example_set_value(ain, "context",
                             dx_prediction_get(h->pred[0], "passages")) !=
            DX_OK ||
        dx_example_set_str(ain, "question", q) != DX_OK) {
        dx__held_free(h);
        return dx_ctx_fail(ctx, DX_ENOMEM, "RAG: out of memory");
    }
    rc = dx_forward(ctx, dx_module_child(self, "generate_answer"), ain, out);
    dx__held_free(h);
    return rc;
}

dx_module *dx_rag_new(dx_retriever *r, size_t k, const dx_predict_opts *opts)
{
    dx_signature *s = NULL;
    if (!r || dx_signature_parse("context, question -> answer", NULL, NULL, 0,
                                 &s, NULL) != DX_OK)
        return NULL;
    dx_module *cot = dx_chain_of_thought_new(s, opts);
    dx_signature_unref(s);
    dx_module *ret = dx_retrieve_new(r, k);
    dx_module *m = dx_module_new("RAG", rag_forward, NULL, NULL, NULL);
    if (!cot || !ret || !m) {
        dx_module_free(cot);
        dx_module_free(ret);
        dx_module_free(m);
        return NULL;
    }
    if (dx_module_add(m, "retrieve", ret) != DX_OK) {
        dx_module_free(cot);
        dx_module_free(m);
        return NULL;
    }
    if (dx_module_add(m, "generate_answer", cot) != DX_OK) {
        dx_module_free(m);
        return NULL;
    }
    return m;
}

/* ---- as a tool ------------------------------------------------------------ */

typedef struct search_tool {
    dx_retriever *r;
    size_t k;
} search_tool;

static int search_tool_fn(const cJSON *args, char **result, void *ud)
{
    const search_tool *st = ud;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(args, "query");
    if (!cJSON_IsString(q))
        return DX_EINVAL; /* validated already; kept for safety */
    dx_passages *p = NULL;
    dx_diag d = {0};
    int rc = dx_retriever_search(st->r, q->valuestring, st->k, &p, &d);
    if (rc != DX_OK) {
        *result = dx_strdup(d.msg[0] ? d.msg : dx_strerror(rc));
        return rc;
    }
    cJSON *list = cJSON_CreateArray();
    for (size_t i = 0; list && i < p->n; i++)
        cJSON_AddItemToArray(list, cJSON_CreateString(p->items[i].text));
    dx__sb b;
    dx__sb_init(&b);
    if (list)
        dx__pyjson_dump(&b, list, -1);
    cJSON_Delete(list);
    dx_passages_free(p);
    *result = list ? dx__sb_take(&b) : NULL;
    if (!list)
        dx__sb_free(&b);
    return *result ? DX_OK : DX_ENOMEM;
}

static void search_tool_free(void *ud)
{
    search_tool *st = ud;
    dx_retriever_unref(st->r);
    dx_free(st);
}

int dx_retriever_tool(dx_retriever *r, const char *name, size_t k,
                      dx_tool **out, dx_diag *diag)
{
    if (!r || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "search tool: NULL argument");
    search_tool *st = dx_calloc(1, sizeof *st);
    if (!st)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    st->r = dx_retriever_ref(r);
    st->k = k ? k : 3;
    static const dx_tool_param params[] = {
        {.name = "query",
         .type = "str",
         .desc = "what to search for",
         .required = true},
    };
    char desc[256];
    snprintf(desc, sizeof desc,
             "Search the corpus and return the %zu most relevant passages.",
             st->k);
    /* The tool owns st (freed with it, or at once if creation fails). */
    return dx_tool_new_owned(name ? name : "search", desc, params, 1,
                             search_tool_fn, st, search_tool_free, out, diag);
}
