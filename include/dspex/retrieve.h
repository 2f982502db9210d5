/*
 * retrieve.h — retrieval: the retriever behaviour, a built-in BM25 index
 * over a local corpus, an embeddings retriever (the providers' embeddings
 * APIs, cosine in memory), a client of a ColBERTv2 search server, and the
 * modules built on them: Retrieve (query
 * -> passages) and RAG (retrieve -> ChainOfThought "context, question ->
 * answer").
 *
 * A retriever is a const ops table (name, version, search, free) plus its
 * private state, wrapped in a reference-counted handle, so users plug their
 * own search behind the same modules and tools. search must be safe to call
 * from several processes at once: the built-in ones only read their index.
 *
 * BM25 is Okapi BM25 with k1 = 1.2 and b = 0.75 by default:
 *   score(d, q) = sum over query tokens t of
 *       idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
 *   idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
 * (the non-negative idf Lucene uses, so a word found in most passages still
 * counts a little instead of going negative). A query token repeated counts
 * each time. The tokenizer lower-cases ASCII letters and splits on every
 * byte that is not an ASCII letter or digit; bytes >= 0x80 count as letters,
 * so UTF-8 words stay whole. With stopwords on, a fixed list of common
 * English words (the, a, of, in, is, was, ...) is dropped from passages and
 * queries alike. Passages that share no token with the query are not
 * returned; ties keep corpus order.
 *
 * A corpus file is JSONL: one object per line, {"text": "..."} with
 * optional "title" and "id" (string or number); blank lines are skipped.
 * Errors name the file and line: `corpus.jsonl:3: "text" is missing`.
 *
 * Ownership: passages returned by a search are the caller's
 * (dx_passages_free). dx_retriever_new takes the state; the modules take a
 * reference to the retriever they are given.
 */
#ifndef DSPEX_RETRIEVE_H
#define DSPEX_RETRIEVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diag.h"
#include "export.h"
#include "module.h"
#include "provider.h"

/* ---- passages --------------------------------------------------------- */

typedef struct dx_passage {
    char *text;
    char *title; /* NULL when the corpus has none */
    char *id;    /* NULL when the corpus has none */
    double score;
    size_t index; /* position in the corpus */
} dx_passage;

/* Search results, best first. */
typedef struct dx_passages {
    dx_passage *items;
    size_t n;
} dx_passages;

DX_API void dx_passages_free(dx_passages *p);

/* ---- the retriever behaviour ------------------------------------------ */

#define DX_RETRIEVER_VERSION 1

typedef struct dx_retriever_ops {
    const char *name; /* "bm25", "embeddings", or the user's */
    unsigned version; /* DX_RETRIEVER_VERSION */
    /* At most k passages for query (k >= 1), best first, in a new
     * dx_passages (n may be 0). Return DX_OK or a failure code, with diag
     * (may be NULL) saying what. Called concurrently from many processes. */
    int (*search)(void *state, const char *query, size_t k, dx_passages **out,
                  dx_diag *diag);
    void (*free)(void *state); /* may be NULL */
} dx_retriever_ops;

typedef struct dx_retriever dx_retriever;

/* A retriever over state with ops (ops must outlive it). Takes state: on
 * failure too it is released with ops->free. DX_OK with *out holding one
 * reference; DX_EINVAL (NULL ops/search/out, unknown version), DX_ENOMEM. */
DX_API int dx_retriever_new(const dx_retriever_ops *ops, void *state,
                            dx_retriever **out);
/* Another reference (any thread); returns r. */
DX_API dx_retriever *dx_retriever_ref(dx_retriever *r);
/* Drop a reference; the last one frees the state. NULL is a no-op. */
DX_API void dx_retriever_unref(dx_retriever *r);
DX_API const char *dx_retriever_name(const dx_retriever *r);
DX_API void *dx_retriever_state(const dx_retriever *r);

/* Top k passages for query. DX_OK: *out the caller's. DX_EINVAL (NULL
 * argument, k == 0), or the ops' failure (diag says what). */
DX_API int dx_retriever_search(const dx_retriever *r, const char *query,
                               size_t k, dx_passages **out, dx_diag *diag);

/* ---- BM25 ------------------------------------------------------------- */

typedef struct dx_bm25_opts {
    double k1;      /* term-frequency saturation, >= 0 */
    double b;       /* length normalisation, 0..1 */
    bool stopwords; /* drop common English words */
} dx_bm25_opts;

#define DX_BM25_DEFAULTS ((dx_bm25_opts){.k1 = 1.2, .b = 0.75})

typedef struct dx_bm25 dx_bm25;

/* An empty index. opts NULL = DX_BM25_DEFAULTS. DX_OK (*out the caller's,
 * dx_bm25_free), DX_EINVAL (k1 < 0, b outside 0..1), DX_ENOMEM. */
DX_API int dx_bm25_new(const dx_bm25_opts *opts, dx_bm25 **out);
DX_API void dx_bm25_free(dx_bm25 *ix);
/* Add one passage (copied; title and id may be NULL). Not while searches
 * run. DX_OK, DX_EINVAL (NULL text), DX_ENOMEM. */
DX_API int dx_bm25_add(dx_bm25 *ix, const char *text, const char *title,
                       const char *id);
/* Add every passage of a JSONL corpus text; name is used in messages (a
 * file name). All or nothing: on failure ix is unchanged. DX_ESYNTAX with
 * diag "name:line: what" (not JSON, not an object, "text" missing or not a
 * string, "title" not a string, "id" not a string or number), DX_ENOMEM. */
DX_API int dx_bm25_add_jsonl(dx_bm25 *ix, const char *text, size_t len,
                             const char *name, dx_diag *diag);
/* The same from a file. Also DX_EIO (diag names the file). */
DX_API int dx_bm25_load(dx_bm25 *ix, const char *path, dx_diag *diag);
DX_API size_t dx_bm25_size(const dx_bm25 *ix);
/* Top k (k >= 1) passages by BM25 score, ties in corpus order, only those
 * sharing a token with the query. DX_OK (*out the caller's, n may be 0),
 * DX_EINVAL, DX_ENOMEM. Any number of threads at once. */
DX_API int dx_bm25_search(const dx_bm25 *ix, const char *query, size_t k,
                          dx_passages **out);
/* A retriever ("bm25") searching ix; takes ix (freed on failure too). */
DX_API int dx_bm25_retriever(dx_bm25 *ix, dx_retriever **out);

/* The tokens of text as BM25 sees them (see the top), for tests and
 * tools: *out is an array of *n strings, freed with dx_tokens_free. */
DX_API int dx_bm25_tokenize(const char *text, bool stopwords, char ***out,
                            size_t *n);
DX_API void dx_tokens_free(char **tokens, size_t n);

/* ---- embeddings ------------------------------------------------------- */

typedef struct dx_embeddings_opts {
    /* "openai/<model>", "openai-compatible/<model>", "gemini/<model>"
     * (dx_lm_config_new's model strings), base URL and key as there. */
    const char *model;
    const char *base_url;
    const char *api_key;
    size_t batch;       /* texts per request; 0 = 64 */
    int64_t timeout_ms; /* per request; 0 = 60,000 */
} dx_embeddings_opts;

/* Embed n texts with one request per batch. Process only (it waits for the
 * I/O loop). DX_OK: *out the caller's (dx_lm_embeddings_free), n rows.
 * DX_EPROVIDER (err: the provider's error or the transport's), DX_ENOTSUP
 * (a provider without embeddings), DX_ENOTPROC, DX_EINVAL, DX_ENOMEM. */
DX_API int dx_embed_texts(const dx_lm_config *c, const char *const *texts,
                          size_t n, size_t batch, int64_t timeout_ms,
                          dx_lm_embeddings **out, dx_lm_error *err);

/* A retriever ("embeddings") over n passages: embeds them now (process
 * only), keeps the unit-normalised vectors in memory and ranks a query by
 * cosine similarity (the query is embedded per search, in the searching
 * process; ties in corpus order). Passages are copied. DX_OK; dx_embed_texts'
 * errors with diag saying which; DX_EINVAL (no passages, bad model string);
 * DX_ENOKEY. Searches fail the same way (DX_EPROVIDER with diag). */
DX_API int dx_embed_retriever_new(const dx_embeddings_opts *opts,
                                  const char *const *passages, size_t n,
                                  dx_retriever **out, dx_diag *diag);

/* ---- a ColBERTv2 server ------------------------------------------------ */

typedef struct dx_colbertv2_opts {
    /* The search endpoint, http:// or https:// (a query string of its own
     * is kept), e.g. the DSPy tutorials'
     * "http://20.102.90.50:2017/wiki17_abstracts". */
    const char *url;
    /* false: GET URL?query=Q&k=K (DSPy's default); true: POST the JSON
     * {"query": Q, "k": K} (DSPy's post_requests=True). */
    bool post;
    int64_t timeout_ms; /* per search; 0 = 10,000 (DSPy's) */
} dx_colbertv2_opts;

/* A retriever ("colbertv2") that asks a ColBERTv2 search server, as DSPy's
 * dspy.ColBERTv2 does: the answer's {"topk": [{"text", "pid", "score",
 * ...}]} become passages (text; id = pid; score; index = pid), best first,
 * at most k. Each search is one HTTP exchange from the searching process
 * (process only: DX_ENOTPROC elsewhere); a transport error, a non-2xx
 * status or an answer without "topk" is DX_EPROVIDER, diag naming the URL
 * and what came back. Here: DX_EINVAL (no URL, not http(s), a negative
 * timeout), DX_ENOMEM. The URL is copied. */
DX_API int dx_colbertv2_retriever_new(const dx_colbertv2_opts *opts,
                                      dx_retriever **out, dx_diag *diag);

/* ---- modules ---------------------------------------------------------- */

/* Module "Retrieve": input `query` (a string) → output `passages`
 * (list[str], the texts of the top k, best first). Takes a reference to r.
 * k 0 = 3 (DSPy's default). A failed search fails the step with its code.
 * NULL on OOM or NULL r. */
DX_API dx_module *dx_retrieve_new(dx_retriever *r, size_t k);

/* Module "RAG": children "retrieve" (dx_retrieve_new(r, k)) and
 * "generate_answer" (ChainOfThought "context, question -> answer" with
 * opts). Forward: passages for `question` become `context`; the result is
 * generate_answer's prediction (reasoning, answer). NULL on OOM. */
DX_API dx_module *dx_rag_new(dx_retriever *r, size_t k,
                             const dx_predict_opts *opts);

/* ---- as a tool ---------------------------------------------------------- */

#include "tool.h"

/* A tool (tool.h) named name (NULL: "search") with one argument `query`
 * (str) whose observation is the texts of the top k passages (k 0 = 3) as
 * a JSON list of strings, best first — what a Python retrieval tool
 * returning a list puts in a ReAct trajectory. Takes a reference to r.
 * DX_OK with *out holding one reference; errors as dx_tool_new. */
DX_API int dx_retriever_tool(dx_retriever *r, const char *name, size_t k,
                             dx_tool **out, dx_diag *diag);

#endif
