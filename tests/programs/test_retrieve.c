/*
 * test_retrieve.c — retrieval (retrieve.h) and the sim model as an agent:
 * BM25 scores and order against the formula worked by hand, k, the
 * tokenizer, corpus errors naming file:line; embeddings retrieval against
 * the local LM server; RAG over the sim's twohop corpus against a
 * no-retrieval baseline; the sim answering DSPy ReAct step prompts (built
 * by the real adapter) and native tool-call requests.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dspex/adapter.h"
#include "dspex/alloc.h"
#include "dspex/evaluate.h"
#include "dspex/lm.h"
#include "dspex/program.h"
#include "dspex/retrieve.h"
#include "dspex/runtime.h"
#include "dspex/sim.h"

/* ---- BM25 ------------------------------------------------------------- */

static dx_bm25 *small_index(void)
{
    dx_bm25 *ix = NULL;
    cr_assert_eq(dx_bm25_new(NULL, &ix), DX_OK);
    cr_assert_eq(dx_bm25_add(ix, "The cat sat on the mat", "t0", "a"), DX_OK);
    cr_assert_eq(dx_bm25_add(ix, "the dog sat", NULL, NULL), DX_OK);
    cr_assert_eq(dx_bm25_add(ix, "Cat, cat; dog!", NULL, "c"), DX_OK);
    return ix;
}

/* Okapi BM25 term weight, k1 = 1.2, b = 0.75. */
static double w(double tf, double dl, double avgdl, double n, double df)
{
    double idf = log(1.0 + (n - df + 0.5) / (df + 0.5));
    return idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl));
}

Test(bm25, ranks_by_okapi_score_with_the_documented_formula, .timeout = 10)
{
    dx_bm25 *ix = small_index();
    dx_passages *p = NULL;
    /* lengths 6, 3, 3: avgdl 4; "cat" in docs 0 (tf 1) and 2 (tf 2) */
    cr_assert_eq(dx_bm25_search(ix, "CAT", 10, &p), DX_OK);
    cr_assert_eq(p->n, 2);
    cr_assert_str_eq(p->items[0].text, "Cat, cat; dog!");
    cr_assert_str_eq(p->items[0].id, "c");
    cr_assert_eq(p->items[0].index, 2);
    cr_assert_float_eq(p->items[0].score, w(2, 3, 4, 3, 2), 1e-12);
    cr_assert_str_eq(p->items[1].title, "t0");
    cr_assert_float_eq(p->items[1].score, w(1, 6, 4, 3, 2), 1e-12);
    dx_passages_free(p);

    /* "dog sat": doc 1 has both, docs 0 and 2 one each */
    cr_assert_eq(dx_bm25_search(ix, "dog sat", 10, &p), DX_OK);
    cr_assert_eq(p->n, 3);
    cr_assert_eq(p->items[0].index, 1);
    cr_assert_float_eq(p->items[0].score, w(1, 3, 4, 3, 2) * 2, 1e-12);
    /* doc 2 (dog, length 3) beats doc 0 (sat, length 6) */
    cr_assert_eq(p->items[1].index, 2);
    cr_assert_eq(p->items[2].index, 0);
    dx_passages_free(p);

    /* nothing shared: no passages */
    cr_assert_eq(dx_bm25_search(ix, "zebra", 10, &p), DX_OK);
    cr_assert_eq(p->n, 0);
    dx_passages_free(p);
    dx_bm25_free(ix);
}

Test(bm25, k_limits_results_and_ties_keep_corpus_order, .timeout = 10)
{
    dx_bm25 *ix = small_index();
    cr_assert_eq(dx_bm25_add(ix, "the dog sat", NULL, "dup"), DX_OK);
    dx_passages *p = NULL;
    cr_assert_eq(dx_bm25_search(ix, "dog sat", 1, &p), DX_OK);
    cr_assert_eq(p->n, 1);
    cr_assert_eq(p->items[0].index, 1); /* equal to doc 3; first wins */
    dx_passages_free(p);
    cr_assert_eq(dx_bm25_search(ix, "dog sat", 2, &p), DX_OK);
    cr_assert_eq(p->n, 2);
    cr_assert_str_eq(p->items[1].id, "dup");
    cr_assert_float_eq(p->items[0].score, p->items[1].score, 1e-12);
    dx_passages_free(p);
    cr_assert_eq(dx_bm25_search(ix, "dog", 0, &p), DX_EINVAL);
    cr_assert_null(p);
    dx_bm25_free(ix);
}

Test(bm25, tokenizer_lowercases_splits_and_drops_stopwords, .timeout = 10)
{
    char **t = NULL;
    size_t n = 0;
    cr_assert_eq(
        dx_bm25_tokenize("The Cat's hat, in 2024! caf\xc3\xa9", false, &t, &n),
        DX_OK);
    const char *want[] = {"the", "cat",  "s",          "hat",
                          "in",  "2024", "caf\xc3\xa9"};
    cr_assert_eq(n, 7);
    for (size_t i = 0; i < n; i++)
        cr_assert_str_eq(t[i], want[i]);
    dx_tokens_free(t, n);
    cr_assert_eq(dx_bm25_tokenize("The Cat's hat, in 2024!", true, &t, &n),
                 DX_OK);
    cr_assert_eq(n, 4);
    cr_assert_str_eq(t[0], "cat");
    cr_assert_str_eq(t[3], "2024");
    dx_tokens_free(t, n);

    /* with stopwords on, "the" neither indexes nor matches */
    dx_bm25 *ix = NULL;
    dx_bm25_opts o = DX_BM25_DEFAULTS;
    o.stopwords = true;
    cr_assert_eq(dx_bm25_new(&o, &ix), DX_OK);
    cr_assert_eq(dx_bm25_add(ix, "the end", NULL, NULL), DX_OK);
    dx_passages *p = NULL;
    cr_assert_eq(dx_bm25_search(ix, "the", 3, &p), DX_OK);
    cr_assert_eq(p->n, 0);
    dx_passages_free(p);
    dx_bm25_free(ix);
    o.b = 1.5;
    cr_assert_eq(dx_bm25_new(&o, &ix), DX_EINVAL);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

Test(bm25, corpus_files_load_and_errors_name_file_and_line, .timeout = 10)
{
    char path[] = "/tmp/dx_corpus_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    dx_bm25 *ix = NULL;
    cr_assert_eq(dx_bm25_new(NULL, &ix), DX_OK);
    dx_diag d = {0};

    write_file(path, "{\"text\": \"alpha beta\", \"id\": 7}\n\n"
                     "{\"text\": \"gamma\", \"title\": \"G\"}\n");
    cr_assert_eq(dx_bm25_load(ix, path, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(dx_bm25_size(ix), 2);
    dx_passages *p = NULL;
    cr_assert_eq(dx_bm25_search(ix, "alpha", 1, &p), DX_OK);
    cr_assert_str_eq(p->items[0].id, "7");
    dx_passages_free(p);

    static const struct {
        const char *text;
        const char *want;
    } bad[] = {
        {"{\"text\": \"ok\"}\n\n{\"title\": \"x\"}\n",
         ":3: \"text\" is missing"},
        {"{\"text\": \"ok\"}\n{\"text\": 5}\n", ":2: \"text\" is not a string"},
        {"{\"text\": \"ok\"}\n{\"text\": \"a\",}\n", ":2: "},
        {"[1]\n", ":1: expected a JSON object"},
        {"{\"text\": \"a\", \"id\": [1]}\n", ":1: \"id\" is not"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_file(path, bad[i].text);
        dx_diag_clear(&d);
        cr_assert_eq(dx_bm25_load(ix, path, &d), DX_ESYNTAX, "case %zu", i);
        char want[256];
        snprintf(want, sizeof want, "%s%s", path, bad[i].want);
        cr_assert(strstr(d.msg, want) != NULL, "case %zu: %s", i, d.msg);
        /* all or nothing: the good first line was not kept */
        cr_assert_eq(dx_bm25_size(ix), 2);
    }
    unlink(path);
    cr_assert_eq(dx_bm25_load(ix, path, &d), DX_EIO);
    cr_assert(strstr(d.msg, path) != NULL);
    dx_bm25_free(ix);
}

Test(bm25, jsonl_ids_may_be_numbers_and_errors_name_the_corpus, .timeout = 10)
{
    dx_bm25 *ix = NULL;
    cr_assert_eq(dx_bm25_new(NULL, &ix), DX_OK);
    dx_diag d = {0};
    const char *text =
        "  \t \n{\"text\": \"one\", \"id\": 1.5, \"title\": null}"
        "\n{\"text\": \"two\", \"id\": -3}";
    cr_assert_eq(dx_bm25_add_jsonl(ix, text, strlen(text), NULL, &d), DX_OK,
                 "%s", d.msg);
    dx_passages *p = NULL;
    cr_assert_eq(dx_bm25_search(ix, "one two", 5, &p), DX_OK);
    cr_assert_eq(p->n, 2);
    cr_expect_str_eq(p->items[p->items[0].index == 0 ? 0 : 1].id, "1.5");
    cr_expect_str_eq(p->items[p->items[0].index == 1 ? 0 : 1].id, "-3");
    cr_expect_null(p->items[0].title);
    dx_passages_free(p);
    /* Without a name, errors say "corpus". */
    text = "{\"text\": \"x\", \"title\": 3}";
    cr_assert_eq(dx_bm25_add_jsonl(ix, text, strlen(text), NULL, &d),
                 DX_ESYNTAX);
    cr_expect_str_eq(d.msg, "corpus:1: \"title\" is not a string");
    text = "{\"text\": \"x\"";
    cr_assert_eq(dx_bm25_add_jsonl(ix, text, strlen(text), "docs.jsonl", &d),
                 DX_ESYNTAX);
    cr_expect(!strncmp(d.msg, "docs.jsonl:1: ", 14), "%s", d.msg);
    cr_expect_eq(d.line, 1);
    cr_expect_eq(dx_bm25_size(ix), 2, "nothing of a failed load is kept");
    /* Nothing to add is fine; bad arguments are not. */
    cr_expect_eq(dx_bm25_add_jsonl(ix, NULL, 0, NULL, &d), DX_OK);
    cr_expect_eq(dx_bm25_add_jsonl(ix, NULL, 3, NULL, &d), DX_EINVAL);
    cr_expect_eq(dx_bm25_add_jsonl(NULL, "", 0, NULL, &d), DX_EINVAL);
    cr_expect_eq(dx_bm25_add(ix, NULL, NULL, NULL), DX_EINVAL);
    cr_expect_eq(dx_bm25_load(ix, NULL, &d), DX_EINVAL);
    cr_expect_eq(dx_bm25_search(NULL, "x", 1, &p), DX_EINVAL);
    cr_expect_eq(dx_bm25_new(NULL, NULL), DX_EINVAL);
    dx_retriever *r = NULL;
    cr_expect_eq(dx_bm25_retriever(NULL, &r), DX_EINVAL);
    cr_assert_eq(dx_bm25_retriever(ix, &r), DX_OK);
    cr_expect_eq(dx_retriever_state(r), ix, "the retriever owns the index");
    cr_expect_null(dx_retriever_state(NULL));
    cr_expect_eq(dx_retriever_search(r, "one", 0, &p, &d), DX_EINVAL,
                 "k must be at least 1");
    dx_retriever_unref(r); /* frees ix */
}

/* More distinct words than the first term table holds: it grows and every
 * word is still found. */
Test(bm25, a_large_vocabulary_is_found_after_the_table_grows, .timeout = 10)
{
    dx_bm25 *ix = NULL;
    cr_assert_eq(dx_bm25_new(NULL, &ix), DX_OK);
    char doc[64];
    for (int i = 0; i < 600; i++) {
        snprintf(doc, sizeof doc, "w%d common", i);
        cr_assert_eq(dx_bm25_add(ix, doc, NULL, NULL), DX_OK);
    }
    for (int i = 0; i < 600; i += 37) {
        snprintf(doc, sizeof doc, "w%d", i);
        dx_passages *p = NULL;
        cr_assert_eq(dx_bm25_search(ix, doc, 2, &p), DX_OK);
        cr_assert_eq(p->n, 1, "%s", doc);
        cr_expect_eq(p->items[0].index, (size_t)i);
        dx_passages_free(p);
    }
    dx_bm25_free(ix);
}

static long fail_at = -1;
static long n_allocs;

static void *f_malloc(size_t n, void *ud)
{
    (void)ud;
    return n_allocs++ == fail_at ? NULL : malloc(n);
}

static void *f_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    return n_allocs++ == fail_at ? NULL : realloc(p, n);
}

static void f_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const dx_allocator failing = {f_malloc, f_realloc, f_free, NULL};

/* Build, fill, search and tokenize; the first error ends it. A failed add
 * leaves the index as it was (checked by the size). */
static int bm25_work(void)
{
    dx_bm25 *ix = NULL;
    int rc = dx_bm25_new(NULL, &ix);
    if (rc != DX_OK)
        return rc;
    char doc[64];
    for (int i = 0; i < 220 && rc == DX_OK; i++) {
        snprintf(doc, sizeof doc, "t%d shared words", i);
        size_t before = dx_bm25_size(ix);
        rc = dx_bm25_add(ix, doc, i % 2 ? "title" : NULL, i % 3 ? "id" : NULL);
        if (rc != DX_OK)
            cr_expect_eq(dx_bm25_size(ix), before);
    }
    const char *jl = "{\"text\": \"alpha beta\", \"id\": 2}\n"
                     "{\"text\": \"gamma\", \"title\": \"G\"}\n";
    dx_diag d = {0};
    if (rc == DX_OK)
        rc = dx_bm25_add_jsonl(ix, jl, strlen(jl), "c", &d);
    dx_passages *p = NULL;
    if (rc == DX_OK && (rc = dx_bm25_search(ix, "t7 alpha", 3, &p)) == DX_OK) {
        cr_expect_eq(p->n, 2);
        dx_passages_free(p);
    }
    char **t = NULL;
    size_t n = 0;
    if (rc == DX_OK && (rc = dx_bm25_tokenize("The quick fox, the end", true,
                                              &t, &n)) == DX_OK) {
        cr_expect_eq(n, 3);
        dx_tokens_free(t, n);
    }
    dx_retriever *r = NULL;
    if (rc == DX_OK) {
        rc = dx_bm25_retriever(ix, &r);
        ix = NULL; /* the retriever's now, or freed if that failed */
    }
    if (rc == DX_OK) {
        if ((rc = dx_retriever_search(r, "gamma", 1, &p, &d)) == DX_OK) {
            cr_expect_str_eq(p->items[0].title, "G");
            dx_passages_free(p);
        }
        dx_retriever_unref(r);
    }
    dx_bm25_free(ix);
    return rc;
}

Test(bm25, every_failed_allocation_is_enomem_and_leaks_nothing, .timeout = 60)
{
    dx_set_allocator(&failing);
    int rc = -1;
    long total = 0;
    for (fail_at = 0; fail_at < 1000000; fail_at++) {
        n_allocs = 0;
        rc = bm25_work();
        if (rc != DX_OK)
            cr_expect_eq(rc, DX_ENOMEM, "fail at %ld: %s", fail_at,
                         dx_err_name(rc));
        if (n_allocs <= fail_at) {
            total = n_allocs;
            break;
        }
    }
    dx_set_allocator(NULL);
    cr_assert_eq(rc, DX_OK);
    cr_assert_gt(total, 100);
}

/* ---- a user retriever through the behaviour --------------------------- */

static int fixed_search(void *state, const char *query, size_t k,
                        dx_passages **out, dx_diag *diag)
{
    (void)state, (void)k;
    if (strcmp(query, "fail") == 0)
        return dx_diag_set(diag, DX_EIO, 0, 0, "backend down");
    dx_passages *p = dx_calloc(1, sizeof *p);
    p->items = dx_calloc(1, sizeof *p->items);
    p->items[0].text = dx_strdup(query);
    p->n = 1;
    *out = p;
    return DX_OK;
}

static const dx_retriever_ops fixed_ops = {
    .name = "echo", .version = DX_RETRIEVER_VERSION, .search = fixed_search};

Test(retriever, user_retrievers_plug_into_the_behaviour, .timeout = 10)
{
    dx_retriever *r = NULL;
    cr_assert_eq(dx_retriever_new(&fixed_ops, NULL, &r), DX_OK);
    cr_assert_str_eq(dx_retriever_name(r), "echo");
    dx_passages *p = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_retriever_search(r, "hi", 3, &p, &d), DX_OK);
    cr_assert_str_eq(p->items[0].text, "hi");
    dx_passages_free(p);
    cr_assert_eq(dx_retriever_search(r, "fail", 3, &p, &d), DX_EIO);
    cr_assert_str_eq(d.msg, "backend down");
    dx_retriever_unref(r);
    dx_retriever_ops old = fixed_ops;
    old.version = 99;
    cr_assert_eq(dx_retriever_new(&old, NULL, &r), DX_EINVAL);
}

/* ---- runtime-backed tests --------------------------------------------- */

#include "lm_fixture.h"

/* The fixture's crash helper is for other suites. */
static void (*const unused_crash)(void) __attribute__((unused)) = crash_now;

static dx_retriever *sim_bm25(void)
{
    char **ps = NULL;
    size_t n = 0;
    cr_assert_eq(dx_sim_corpus(NULL, 0, &ps, &n), DX_OK);
    dx_bm25 *ix = NULL;
    cr_assert_eq(dx_bm25_new(NULL, &ix), DX_OK);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(dx_bm25_add(ix, ps[i], NULL, NULL), DX_OK);
    dx_sim_corpus_free(ps, n);
    dx_retriever *r = NULL;
    cr_assert_eq(dx_bm25_retriever(ix, &r), DX_OK);
    return r;
}

static const char *const embed_corpus[] = {
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Rome is the capital of Italy.",
    "Madrid is the capital of Spain.",
};

typedef struct embed_result {
    int build_rc, search_rc, bad_rc;
    size_t top, n;
    double score, second;
    char diag[DX_DIAG_MAX];
} embed_result;

static embed_result er;

static void embed_proc(void *arg)
{
    (void)arg;
    dx_embeddings_opts o = {.model = "openai-compatible/test-embed",
                            .base_url = url,
                            .api_key = "sk-test",
                            .batch = 3}; /* two requests for four passages */
    dx_retriever *r = NULL;
    dx_diag d = {0};
    er.build_rc = dx_embed_retriever_new(&o, embed_corpus, 4, &r, &d);
    if (er.build_rc == DX_OK) {
        dx_passages *p = NULL;
        er.search_rc = dx_retriever_search(r, embed_corpus[2], 2, &p, &d);
        if (er.search_rc == DX_OK) {
            er.n = p->n;
            er.top = p->items[0].index;
            er.score = p->items[0].score;
            er.second = p->items[1].score;
            dx_passages_free(p);
        }
        dx_retriever_unref(r);
    }
    if (er.build_rc != DX_OK || er.search_rc != DX_OK) {
        snprintf(er.diag, sizeof er.diag, "%s", d.msg);
        atomic_store(&fixture_rc, DX_OK);
        return;
    }
    /* a provider without embeddings */
    dx_embeddings_opts a = {
        .model = "anthropic/claude", .base_url = url, .api_key = "k"};
    er.bad_rc = dx_embed_retriever_new(&a, embed_corpus, 4, &r, &d);
    snprintf(er.diag, sizeof er.diag, "%s", d.msg);
    atomic_store(&fixture_rc, DX_OK);
}

Test(embeddings, ranks_by_cosine_against_the_local_server,
     .init = fixture_setup, .fini = fixture_teardown, .timeout = 60)
{
    fixture_run(embed_proc);
    cr_assert_eq(er.build_rc, DX_OK, "%s", er.diag);
    cr_assert_eq(er.search_rc, DX_OK, "%s", er.diag);
    cr_assert_eq(er.n, 2);
    /* equal texts embed to equal vectors: cosine 1 */
    cr_assert_eq(er.top, 2);
    cr_assert_float_eq(er.score, 1.0, 1e-5);
    cr_assert_lt(er.second, 0.999);
    cr_assert_eq(er.bad_rc, DX_ENOTSUP);
    cr_assert(strstr(er.diag, "embeddings") != NULL, "%s", er.diag);
}

Test(embeddings, host_threads_get_enotproc, .timeout = 10)
{
    dx_lm_config *c = NULL;
    cr_assert_eq(
        dx_lm_config_new("openai-compatible/m", "http://127.0.0.1:9", NULL, &c),
        DX_OK);
    const char *t = "x";
    dx_lm_embeddings *e = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_embed_texts(c, &t, 1, 0, 0, &e, &err), DX_ENOTPROC);
    dx_lm_config_free(c);
}

/* ---- a ColBERTv2 server ------------------------------------------------ */

/* A ColBERTv2 search server of the test's own on 127.0.0.1, one request per
 * connection: /wiki17 answers GET ?query=Q&k=K, /post answers a POST of
 * {"query", "k"}, both with k passages about Q; /fail is a 500 and /html a
 * page that is not JSON. It keeps the last request line and body. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

static struct {
    int fd, port;
    pthread_t thread;
    pthread_mutex_t mu;
    char last_line[512], last_body[512];
} cb = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The decoded value of name in a query string (after '?'), or "". */
static void query_param(const char *target, const char *name, char *out,
                        size_t cap)
{
    out[0] = '\0';
    const char *q = strchr(target, '?');
    size_t nl = strlen(name), o = 0;
    for (const char *p = q; p && *p; p = strchr(p + 1, '&')) {
        if (strncmp(p + 1, name, nl) != 0 || p[1 + nl] != '=')
            continue;
        for (const char *v = p + 2 + nl;
             *v && *v != '&' && *v != ' ' && o + 1 < cap; v++) {
            if (*v == '%' && v[1] && v[2]) {
                char hex[3] = {v[1], v[2], 0};
                out[o++] = (char)strtol(hex, NULL, 16);
                v += 2;
            } else {
                out[o++] = *v == '+' ? ' ' : *v;
            }
        }
        out[o] = '\0';
        return;
    }
}

static void cb_answer(int c, int status, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, strlen(body));
    (void)!write(c, head, (size_t)n);
    (void)!write(c, body, strlen(body));
}

static void *cb_main(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(cb.fd, NULL, NULL);
        if (c < 0)
            return NULL;
        char req[8192];
        size_t len = 0;
        char *end = NULL;
        while (len + 1 < sizeof req) {
            ssize_t r = read(c, req + len, sizeof req - 1 - len);
            if (r <= 0)
                break;
            len += (size_t)r;
            req[len] = '\0';
            end = strstr(req, "\r\n\r\n");
            const char *cl = strcasestr(req, "content-length:");
            size_t want = cl ? (size_t)strtol(cl + 15, NULL, 10) : 0;
            if (end && len >= (size_t)(end + 4 - req) + want)
                break;
        }
        req[len] = '\0';
        if (!end) {
            close(c);
            continue;
        }
        *strstr(req, "\r\n") = '\0';
        pthread_mutex_lock(&cb.mu);
        snprintf(cb.last_line, sizeof cb.last_line, "%.500s", req);
        snprintf(cb.last_body, sizeof cb.last_body, "%.500s", end + 4);
        pthread_mutex_unlock(&cb.mu);
        char query[256] = "", kbuf[16] = "";
        if (strstr(req, " /wiki17")) {
            query_param(req, "query", query, sizeof query);
            query_param(req, "k", kbuf, sizeof kbuf);
        } else if (strstr(req, " /post")) {
            cJSON *b = cJSON_Parse(end + 4);
            const cJSON *q = cJSON_GetObjectItem(b, "query");
            const cJSON *k = cJSON_GetObjectItem(b, "k");
            snprintf(query, sizeof query, "%s",
                     cJSON_IsString(q) ? q->valuestring : "");
            snprintf(kbuf, sizeof kbuf, "%d",
                     cJSON_IsNumber(k) ? k->valueint : 0);
            cJSON_Delete(b);
        } else if (strstr(req, " /fail")) {
            cb_answer(c, 500, "{\"error\": \"index not loaded\"}");
            close(c);
            continue;
        } else {
            cb_answer(c, 200, "<html>a proxy's page</html>");
            close(c);
            continue;
        }
        /* k passages about the query, best first, as the server ranks. */
        cJSON *o = cJSON_CreateObject();
        cJSON *topk = cJSON_AddArrayToObject(o, "topk");
        int k = (int)strtol(kbuf, NULL, 10);
        for (int i = 0; i < k; i++) {
            char text[400];
            snprintf(text, sizeof text, "Title %d | a passage on %s", i, query);
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "text", text);
            cJSON_AddNumberToObject(d, "pid", 1000 + i);
            cJSON_AddNumberToObject(d, "rank", i + 1);
            cJSON_AddNumberToObject(d, "score", 25.5 - i);
            cJSON_AddNumberToObject(d, "prob", 0.5 / (i + 1));
            cJSON_AddItemToArray(topk, d);
        }
        char *t = cJSON_PrintUnformatted(o);
        cb_answer(c, 200, t);
        cJSON_free(t);
        cJSON_Delete(o);
        close(c);
    }
}

static void cb_start(void)
{
    cb.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    cr_assert(bind(cb.fd, (struct sockaddr *)&a, sizeof a) == 0);
    cr_assert(listen(cb.fd, 16) == 0);
    cr_assert(getsockname(cb.fd, (struct sockaddr *)&a, &al) == 0);
    cb.port = ntohs(a.sin_port);
    cr_assert(pthread_create(&cb.thread, NULL, cb_main, NULL) == 0);
}

static void cb_stop(void)
{
    shutdown(cb.fd, SHUT_RDWR);
    close(cb.fd);
    pthread_join(cb.thread, NULL);
}

typedef struct colbert_result {
    int get_rc, post_rc, fail_rc, html_rc, host_rc, bad_url_rc;
    size_t get_n, post_n;
    char get_text[256], get_id[32], post_text[256];
    double get_score;
    size_t get_index;
    char line[512], body[512];
    char fail_diag[DX_DIAG_MAX], html_diag[DX_DIAG_MAX], bad_diag[DX_DIAG_MAX];
    char rag_context[512];
    int rag_rc;
} colbert_result;

static colbert_result cr;

static dx_retriever *colbert_at(const char *path, bool post)
{
    char u[128];
    snprintf(u, sizeof u, "http://127.0.0.1:%d%s", cb.port, path);
    dx_colbertv2_opts o = {.url = u, .post = post};
    dx_retriever *r = NULL;
    dx_diag d = {0};
    cr.bad_url_rc = dx_colbertv2_retriever_new(&o, &r, &d);
    return r;
}

static void colbert_proc(void *arg)
{
    (void)arg;
    dx_diag d = {0};
    dx_passages *p = NULL;
    /* GET, with a query that needs escaping */
    dx_retriever *r = colbert_at("/wiki17", false);
    cr.get_rc =
        dx_retriever_search(r, "Who wrote \"Hamlet\" & when?", 3, &p, &d);
    if (cr.get_rc == DX_OK) {
        cr.get_n = p->n;
        snprintf(cr.get_text, sizeof cr.get_text, "%s", p->items[0].text);
        snprintf(cr.get_id, sizeof cr.get_id, "%s",
                 p->items[0].id ? p->items[0].id : "");
        cr.get_score = p->items[0].score;
        cr.get_index = p->items[1].index;
        dx_passages_free(p);
    }
    pthread_mutex_lock(&cb.mu);
    snprintf(cr.line, sizeof cr.line, "%s", cb.last_line);
    pthread_mutex_unlock(&cb.mu);
    /* as a Retrieve module: passages as the step's output */
    dx_module *m = dx_retrieve_new(r, 2);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "query", "Oslo");
    dx_prediction *pred = NULL;
    cr.rag_rc = dx_module_call(m, in, NULL, &pred, NULL, &d);
    if (cr.rag_rc == DX_OK) {
        char *t = cJSON_PrintUnformatted(dx_prediction_get(pred, "passages"));
        snprintf(cr.rag_context, sizeof cr.rag_context, "%s", t ? t : "");
        cJSON_free(t);
    }
    dx_prediction_free(pred);
    dx_example_free(in);
    dx_module_free(m);
    dx_retriever_unref(r);

    r = colbert_at("/post", true);
    cr.post_rc = dx_retriever_search(r, "capital of Norway", 2, &p, &d);
    if (cr.post_rc == DX_OK) {
        cr.post_n = p->n;
        snprintf(cr.post_text, sizeof cr.post_text, "%s", p->items[1].text);
        dx_passages_free(p);
    }
    pthread_mutex_lock(&cb.mu);
    snprintf(cr.body, sizeof cr.body, "%s", cb.last_body);
    pthread_mutex_unlock(&cb.mu);
    dx_retriever_unref(r);

    r = colbert_at("/fail", false);
    cr.fail_rc = dx_retriever_search(r, "x", 2, &p, &d);
    snprintf(cr.fail_diag, sizeof cr.fail_diag, "%s", d.msg);
    dx_retriever_unref(r);
    r = colbert_at("/html", false);
    cr.html_rc = dx_retriever_search(r, "x", 2, &p, &d);
    snprintf(cr.html_diag, sizeof cr.html_diag, "%s", d.msg);
    dx_retriever_unref(r);

    dx_colbertv2_opts bad = {.url = "ftp://example.org/index"};
    cr.bad_url_rc = dx_colbertv2_retriever_new(&bad, &r, &d);
    snprintf(cr.bad_diag, sizeof cr.bad_diag, "%s", d.msg);
    atomic_store(&fixture_rc, DX_OK);
}

/* DSPy's dspy.ColBERTv2 wire, both forms; what a server says when it fails
 * is in the error; passages come back as the server ranked them. */
Test(colbertv2, searches_a_server_as_dspy_does, .init = fixture_setup,
     .fini = fixture_teardown, .timeout = 60)
{
    cb_start();
    fixture_run(colbert_proc);
    cb_stop();
    cr_assert_eq(cr.get_rc, DX_OK);
    cr_assert_eq(cr.get_n, 3);
    cr_assert_str_eq(cr.get_text, "Title 0 | a passage on Who wrote \"Hamlet\" "
                                  "& when?");
    cr_assert_str_eq(cr.get_id, "1000");
    cr_assert_float_eq(cr.get_score, 25.5, 1e-9);
    cr_assert_eq(cr.get_index, 1001);
    cr_assert(strstr(cr.line, "GET /wiki17?query=Who%20wrote%20%22Hamlet%22%20"
                              "%26%20when%3F&k=3 HTTP/1.1"),
              "%s", cr.line);
    cr_assert_eq(cr.rag_rc, DX_OK);
    cr_assert_str_eq(cr.rag_context, "[\"Title 0 | a passage on Oslo\","
                                     "\"Title 1 | a passage on Oslo\"]");
    cr_assert_eq(cr.post_rc, DX_OK);
    cr_assert_eq(cr.post_n, 2);
    cr_assert_str_eq(cr.post_text, "Title 1 | a passage on capital of Norway");
    cr_assert_str_eq(cr.body, "{\"query\":\"capital of Norway\",\"k\":2}");
    cr_assert_eq(cr.fail_rc, DX_EPROVIDER);
    cr_assert(strstr(cr.fail_diag, "/fail: HTTP 500: {\"error\": \"index not "
                                   "loaded\"}"),
              "%s", cr.fail_diag);
    cr_assert_eq(cr.html_rc, DX_EPROVIDER);
    cr_assert(strstr(cr.html_diag, "not {\"topk\": [...]}") &&
                  strstr(cr.html_diag, "<html>"),
              "%s", cr.html_diag);
    cr_assert_eq(cr.bad_url_rc, DX_EINVAL);
    cr_assert(strstr(cr.bad_diag, "http:// or https://"), "%s", cr.bad_diag);

    /* A program file declares the same retriever for a rag module. */
    const char *decl = "{\"program\": {\"modules\": [{\"name\": \"rag\", "
                       "\"module\": \"rag\", \"colbertv2\": "
                       "\"http://127.0.0.1:9/wiki17\", \"post\": true}]}}";
    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_program_parse(decl, strlen(decl), "p.json", &m, &d), DX_OK,
                 "%s", d.msg);
    dx_named_predictor *preds = NULL;
    size_t np = 0;
    dx_module_predictors(m, &preds, &np);
    cr_assert_eq(np, 1); /* rag.generate_answer's */
    dx_free(preds);
    dx_module_free(m);
}

/* ---- RAG on the sim's twohop task ------------------------------------- */

static void start_sim_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    dx_server_opts so = {.name = "simlm"};
    atomic_store(&fixture_rc, dx_lm_client_start(&o, &so, NULL));
}

static void stop_sim_client(void *arg)
{
    (void)arg;
    atomic_store(&fixture_rc, dx_server_stop(dx_whereis("simlm"), NULL, 5000));
}

static double eval_score(const dx_module *m, const dx_dataset *ds)
{
    dx_eval_opts o = {.metric = {.kind = DX_METRIC_EXACT_MATCH},
                      .concurrency = 4,
                      .progress = DX_EVAL_PROGRESS_OFF,
                      .call = {.lm_name = "simlm"}};
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_evaluate(m, ds, &o, &r, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(r->n_errors, 0, "%s",
                 r->rows[0].error_msg ? r->rows[0].error_msg : "");
    double s = r->score;
    dx_eval_result_free(r);
    return s;
}

Test(rag, retrieval_beats_the_no_retrieval_baseline_on_twohop, .timeout = 120)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    fixture_run(start_sim_client);
    dx_dataset *dev = NULL;
    cr_assert_eq(dx_sim_generate(DX_SIM_TWOHOP, "dev", DX_SIM_DEFAULT_SEED,
                                 DX_SIM_DEV_SIZE, &dev),
                 DX_OK);
    dx_retriever *r = sim_bm25();
    dx_module *rag = dx_rag_new(r, 3, NULL);
    dx_retriever_unref(r); /* the module holds its own reference */
    cr_assert_not_null(rag);
    cr_assert_not_null(dx_module_child(rag, "retrieve"));
    dx_named_predictor *np = NULL;
    size_t nn = 0;
    cr_assert_eq(dx_module_predictors(rag, &np, &nn), DX_OK);
    cr_assert_eq(nn, 1);
    cr_assert_str_eq(np[0].path, "generate_answer.predict");
    dx_free(np);

    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    dx_module *base = dx_chain_of_thought_new(s, NULL);
    dx_signature_unref(s);

    double with = eval_score(rag, dev), without = eval_score(base, dev);
    cr_log_info("twohop dev: RAG %.1f, CoT %.1f", with, without);
    cr_assert_gt(with, without + 20.0, "RAG %.1f vs CoT %.1f", with, without);

    /* a copy shares the retriever and still works after the original goes */
    dx_module *copy = dx_module_copy(rag);
    dx_module_free(rag);
    dx_prediction *p = NULL;
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question",
                       dx_example_get_str(dev->items[0], "question", ""));
    dx_diag d = {0};
    dx_call_opts co = {.lm_name = "simlm"};
    cr_assert_eq(dx_module_call(copy, in, &co, &p, NULL, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_not_null(dx_prediction_get_str(p, "answer", NULL));
    dx_prediction_free(p);
    /* a missing input fails the call, naming it */
    dx_example *empty = dx_example_new();
    dx_example_set_str(empty, "q", "x");
    cr_assert_eq(dx_module_call(copy, empty, &co, &p, NULL, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "question") != NULL, "%s", d.msg);
    dx_example_free(empty);
    dx_example_free(in);
    dx_module_free(copy);
    dx_module_free(base);
    dx_dataset_free(dev);
    fixture_run(stop_sim_client);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
}

/* ---- the sim as a ReAct agent ----------------------------------------- */

static const char react_instructions[] =
    "Given the fields `question`, produce the fields `answer`.\n\n"
    "You are an Agent. In each episode, you will be given the fields "
    "`question` as input. And you can see your past trajectory so far.\n"
    "Your goal is to use one or more of the supplied tools to collect any "
    "necessary information for producing `answer`.\n\n"
    "To do this, you will interleave next_thought, next_tool_name, and "
    "next_tool_args in each turn, and also when finishing the task.\n"
    "After each tool call, you receive a resulting observation, which gets "
    "appended to your trajectory.\n\n"
    "When writing next_thought, you may reason about the current situation "
    "and plan for future steps.\n"
    "When selecting the next_tool_name and its next_tool_args, the tool must "
    "be one of:\n\n"
    "(1) search, whose description is <desc>Search the corpus for "
    "passages.</desc>. It takes arguments {'query': {'type': 'string'}}.\n"
    "(2) finish, whose description is <desc>Marks the task as complete. That "
    "is, signals that all information for producing the outputs, i.e. "
    "`answer`, are now available to be extracted.</desc>. It takes arguments "
    "{}.\n"
    "When providing `next_tool_args`, the value inside the field must be in "
    "JSON format";

/* The trajectory as DSPy's _format_trajectory renders it: the adapter's
 * input blocks of a signature "thought_0, ..., observation_N -> x". */
static char *format_trajectory(dx_adapter_kind kind, const dx_example *traj)
{
    if (dx_example_len(traj) == 0)
        return dx_strdup("");
    char sig[2048] = "";
    size_t at = 0;
    for (size_t i = 0; i < dx_example_len(traj); i++)
        at += (size_t)snprintf(sig + at, sizeof sig - at, "%s%s", i ? ", " : "",
                               dx_example_key(traj, i));
    snprintf(sig + at, sizeof sig - at, " -> x");
    dx_signature *s = NULL;
    cr_assert_eq(dx_signature_parse(sig, NULL, NULL, 0, &s, NULL), DX_OK);
    char *out = NULL;
    cr_assert_eq(dx_adapter_user_content(kind, s, traj, NULL, false, &out),
                 DX_OK);
    dx_signature_unref(s);
    return out;
}

/* One ReAct step: format, answer with the sim, parse. */
static dx_example *react_step(dx_adapter_kind kind, const dx_signature *s,
                              const char *question, const dx_example *traj)
{
    dx_example *in = dx_example_new();
    char *t = format_trajectory(kind, traj);
    dx_example_set_str(in, "question", question);
    dx_example_set_str(in, "trajectory", t);
    dx_free(t);
    dx_lm_request *req = dx_lm_request_new(NULL);
    cr_assert_eq(dx_adapter_format(kind, s, NULL, 0, in, req, NULL), DX_OK);
    dx_lm_response *r = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_sim_complete(req, "sim/base", &r, &err), DX_OK, "%s",
                 err.message);
    dx_example *out = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_adapter_parse(kind, s, r->choices[0].text,
                                  strlen(r->choices[0].text), &out, &d),
                 DX_OK, "%s\n%s", d.msg, r->choices[0].text);
    dx_lm_response_free(r);
    dx_lm_request_free(req);
    dx_example_free(in);
    return out;
}

static dx_signature *react_signature(void)
{
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(
        dx_signature_parse("question, trajectory: str -> next_thought: str, "
                           "next_tool_name: Literal['search', 'finish'], "
                           "next_tool_args: dict[str, Any]",
                           react_instructions, NULL, 0, &s, &d),
        DX_OK, "%s", d.msg);
    return s;
}

/* Run the search tool: top 3 passages as a list observation, or garbage. */
static void observe(dx_example *traj, size_t i, const dx_example *step,
                    const dx_retriever *r, bool broken)
{
    char key[32];
    snprintf(key, sizeof key, "thought_%zu", i);
    dx_example_set_str(traj, key, dx_example_get_str(step, "next_thought", ""));
    snprintf(key, sizeof key, "tool_name_%zu", i);
    dx_example_set_str(traj, key,
                       dx_example_get_str(step, "next_tool_name", ""));
    snprintf(key, sizeof key, "tool_args_%zu", i);
    const cJSON *args = dx_example_get(step, "next_tool_args");
    dx_example_set_value(traj, key, args);
    snprintf(key, sizeof key, "observation_%zu", i);
    if (strcmp(dx_example_get_str(step, "next_tool_name", ""), "finish") == 0) {
        dx_example_set_str(traj, key, "Completed.");
        return;
    }
    if (broken) {
        dx_example_set_str(traj, key, "Execution error in search: timed out");
        return;
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(args, "query");
    cr_assert(cJSON_IsString(q));
    dx_passages *p = NULL;
    cr_assert_eq(dx_retriever_search(r, q->valuestring, 3, &p, NULL), DX_OK);
    cJSON *arr = cJSON_CreateArray();
    for (size_t j = 0; j < p->n; j++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(p->items[j].text));
    dx_example_set_value(traj, key, arr);
    cJSON_Delete(arr);
    dx_passages_free(p);
}

static void run_agent(dx_adapter_kind kind)
{
    dx_signature *s = react_signature();
    dx_retriever *r = sim_bm25();
    dx_dataset *dev = NULL;
    cr_assert_eq(
        dx_sim_generate(DX_SIM_TWOHOP, "dev", DX_SIM_DEFAULT_SEED, 5, &dev),
        DX_OK);
    for (size_t e = 0; e < dev->n; e++) {
        const char *q = dx_example_get_str(dev->items[e], "question", "");
        const char *answer = dx_example_get_str(dev->items[e], "answer", "");
        char person[64];
        cr_assert_eq(sscanf(q, "In which country was %63[^?]", person), 1);
        person[strlen(person) - 5] = '\0'; /* " born" */
        dx_example *traj = dx_example_new();
        const char *want_tool[] = {"search", "search", "finish"};
        for (size_t i = 0; i < 3; i++) {
            dx_example *step = react_step(kind, s, q, traj);
            cr_assert_str_eq(dx_example_get_str(step, "next_tool_name", ""),
                             want_tool[i], "%s step %zu", q, i);
            const cJSON *a = dx_example_get(step, "next_tool_args");
            cr_assert(cJSON_IsObject(a));
            if (i == 0)
                cr_assert_str_eq(cJSON_GetObjectItem(a, "query")->valuestring,
                                 person);
            if (i == 2) {
                cr_assert_eq(cJSON_GetArraySize(a), 0);
                cr_assert(strstr(dx_example_get_str(step, "next_thought", ""),
                                 answer) != NULL);
            }
            observe(traj, i, step, r, false);
            dx_example_free(step);
        }
        dx_example_free(traj);
    }
    dx_dataset_free(dev);
    dx_retriever_unref(r);
    dx_signature_unref(s);
}

Test(sim_agent, react_steps_search_person_then_city_then_finish, .timeout = 30)
{
    run_agent(DX_ADAPTER_CHAT);
}

Test(sim_agent, react_steps_work_with_the_json_adapter, .timeout = 30)
{
    run_agent(DX_ADAPTER_JSON);
}

Test(sim_agent, failing_tool_makes_it_retry_then_give_up, .timeout = 30)
{
    dx_signature *s = react_signature();
    const char *q = "In which country was Ada Moreau born?";
    dx_example *traj = dx_example_new();
    size_t i = 0;
    for (; i < 10; i++) {
        dx_example *step = react_step(DX_ADAPTER_CHAT, s, q, traj);
        const char *tool = dx_example_get_str(step, "next_tool_name", "");
        bool fin = strcmp(tool, "finish") == 0;
        if (!fin)
            cr_assert_str_eq(tool, "search");
        observe(traj, i, step, NULL, true);
        dx_example_free(step);
        if (fin)
            break;
    }
    cr_assert_eq(i, 5, "finished after %zu failed searches", i);
    dx_example_free(traj);
    dx_signature_unref(s);
}

/* ---- native tool calls ------------------------------------------------ */

static dx_lm_response *native(dx_lm_request *req)
{
    dx_lm_response *r = NULL;
    dx_lm_error err;
    cr_assert_eq(dx_sim_complete(req, "sim/base", &r, &err), DX_OK, "%s",
                 err.message);
    return r;
}

static void native_run(bool with_finish)
{
    dx_retriever *ret = sim_bm25();
    dx_lm_request *req = dx_lm_request_new(NULL);
    cr_assert_eq(
        dx_lm_request_add_message(req, DX_LM_SYSTEM, "Answer the question."),
        DX_OK);
    cr_assert_eq(dx_lm_request_add_message(
                     req, DX_LM_USER, "In which country was Ada Moreau born?"),
                 DX_OK);
    cr_assert_eq(dx_lm_request_add_tool(
                     req, "search_corpus", "Search the corpus.",
                     "{\"type\": \"object\", \"properties\": {\"terms\": "
                     "{\"type\": \"string\"}}, \"required\": [\"terms\"]}"),
                 DX_OK);
    if (with_finish)
        cr_assert_eq(dx_lm_request_add_tool(req, "finish", "Done.",
                                            "{\"type\": \"object\", "
                                            "\"properties\": {}}"),
                     DX_OK);
    for (int step = 0; step < 3; step++) {
        dx_lm_response *r = native(req);
        const dx_lm_choice *c = &r->choices[0];
        if (step < 2) {
            cr_assert_eq(c->n_tool_calls, 1, "step %d: %s", step, c->text);
            cr_assert_eq(c->finish, DX_LM_FINISH_TOOL_CALLS);
            cr_assert_str_eq(c->tool_calls[0].name, "search_corpus");
            cJSON *a = cJSON_Parse(c->tool_calls[0].arguments);
            const cJSON *t = cJSON_GetObjectItem(a, "terms");
            cr_assert(cJSON_IsString(t), "%s", c->tool_calls[0].arguments);
            if (step == 0)
                cr_assert_str_eq(t->valuestring, "Ada Moreau");
            dx_passages *p = NULL;
            cr_assert_eq(dx_retriever_search(ret, t->valuestring, 2, &p, NULL),
                         DX_OK);
            char obs[1024];
            snprintf(obs, sizeof obs, "%s\n%s", p->items[0].text,
                     p->n > 1 ? p->items[1].text : "");
            dx_passages_free(p);
            cJSON_Delete(a);
            cr_assert_eq(dx_lm_request_add_message(req, DX_LM_ASSISTANT, ""),
                         DX_OK);
            cr_assert_eq(dx_lm_request_add_tool_call(
                             req, c->tool_calls[0].id, c->tool_calls[0].name,
                             c->tool_calls[0].arguments),
                         DX_OK);
            cr_assert_eq(
                dx_lm_request_add_tool_result(req, c->tool_calls[0].id, obs),
                DX_OK);
        } else if (with_finish) {
            cr_assert_eq(c->n_tool_calls, 1);
            cr_assert_str_eq(c->tool_calls[0].name, "finish");
            cr_assert_str_eq(c->tool_calls[0].arguments, "{}");
        } else {
            /* enough facts: a text answer, no call */
            cr_assert_eq(c->n_tool_calls, 0);
            cr_assert_eq(c->finish, DX_LM_FINISH_STOP);
            cr_assert_gt(strlen(c->text), 0);
        }
        dx_lm_response_free(r);
    }
    dx_lm_request_free(req);
    dx_retriever_unref(ret);
}

Test(sim_agent, native_tool_calls_search_then_finish, .timeout = 30)
{
    native_run(true);
}

Test(sim_agent, native_tool_calls_end_in_a_text_answer, .timeout = 30)
{
    native_run(false);
}

Test(sim_agent, tool_choice_none_answers_in_text, .timeout = 10)
{
    dx_lm_request *req = dx_lm_request_new(NULL);
    dx_lm_request_add_message(req, DX_LM_USER,
                              "In which country was Ada Moreau born?");
    dx_lm_request_add_tool(req, "search", NULL,
                           "{\"type\": \"object\", \"properties\": {}}");
    req->tool_choice = DX_LM_TOOL_CHOICE_NONE;
    dx_lm_response *r = native(req);
    cr_assert_eq(r->choices[0].n_tool_calls, 0);
    dx_lm_response_free(r);
    dx_lm_request_free(req);
}

/* ---- the modules and the tool over a user retriever -------------------- */

static dx_example *ex_of(const char *json)
{
    dx_example *e = NULL;
    cr_assert_eq(dx_example_from_json(json, strlen(json), &e, NULL), DX_OK);
    return e;
}

Test(retrieve_module, its_inputs_and_the_retrievers_failures_are_named,
     .init = fixture_setup, .fini = fixture_teardown, .timeout = 60)
{
    dx_retriever *r = NULL;
    cr_assert_eq(dx_retriever_new(&fixed_ops, NULL, &r), DX_OK);
    cr_assert_null(dx_retrieve_new(NULL, 3));
    cr_assert_null(dx_rag_new(NULL, 3, NULL));
    dx_module *m = dx_retrieve_new(r, 0);
    cr_assert_not_null(m);
    dx_prediction *p = NULL;
    dx_diag d = {0};
    dx_example *in = ex_of("{\"query\": \"hi\"}");
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_OK, "%s", d.msg);
    const cJSON *ps = dx_prediction_get(p, "passages");
    cr_assert_eq(cJSON_GetArraySize(ps), 1);
    cr_expect_str_eq(cJSON_GetArrayItem(ps, 0)->valuestring, "hi");
    dx_prediction_free(p);
    dx_example_free(in);

    in = ex_of("{\"query\": 3}");
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_EINVAL);
    cr_expect(strstr(d.msg, "Retrieve: input \"query\" is missing or not a "
                            "string"),
              "%s", d.msg);
    dx_example_free(in);
    in = ex_of("{\"query\": \"fail\"}");
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_EIO);
    cr_expect(strstr(d.msg, "Retrieve (echo): backend down"), "%s", d.msg);
    dx_example_free(in);
    dx_module_free(m);

    /* RAG: the question is checked, and the retriever's failure ends the
     * run before any LM call. */
    m = dx_rag_new(r, 2, NULL);
    cr_assert_not_null(m);
    in = ex_of("{\"q\": \"x\"}");
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_EINVAL);
    cr_expect(strstr(d.msg, "RAG: input \"question\" is missing"), "%s", d.msg);
    dx_example_free(in);
    uint64_t before = upstream_requests();
    in = ex_of("{\"question\": \"fail\"}");
    cr_assert_eq(dx_module_call(m, in, NULL, &p, NULL, &d), DX_EIO);
    cr_expect(strstr(d.msg, "backend down"), "%s", d.msg);
    cr_expect_eq(upstream_requests(), before, "no LM call was made");
    dx_example_free(in);
    dx_module_free(m);

    /* As a tool: the passages as a JSON list, the failure as an
     * observation. */
    dx_tool *t = NULL;
    cr_assert_eq(dx_retriever_tool(NULL, NULL, 0, &t, &d), DX_EINVAL);
    cr_expect_str_eq(d.msg, "search tool: NULL argument");
    cr_assert_eq(dx_retriever_tool(r, NULL, 0, &t, &d), DX_OK, "%s", d.msg);
    cr_expect_str_eq(dx_tool_name(t), "search");
    cr_expect_str_eq(dx_tool_desc(t), "Search the corpus and return the 3 "
                                      "most relevant passages.");
    cJSON *a = cJSON_Parse("{\"query\": \"hello\"}");
    char *obs = NULL;
    dx_tool_status st;
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_expect_eq(st, DX_TOOL_OK);
    cr_expect_str_eq(obs, "[\"hello\"]");
    dx_free(obs);
    cJSON_Delete(a);
    a = cJSON_Parse("{\"query\": \"fail\"}");
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_expect_eq(st, DX_TOOL_FAILED);
    cr_expect_str_eq(obs, "Execution error in search: backend down");
    dx_free(obs);
    cJSON_Delete(a);
    dx_tool_unref(t);
    dx_retriever_unref(r);
}

/* Embedding failures name the stage and the provider's reason. */
typedef struct embed_fault {
    const char *spec;
    int build_rc, search_rc;
    char build_msg[DX_DIAG_MAX], search_msg[DX_DIAG_MAX];
} embed_fault;

static embed_fault ef;

static void embed_fault_proc(void *arg)
{
    (void)arg;
    dx_embeddings_opts o = {.model = "openai-compatible/test-embed",
                            .base_url = url,
                            .api_key = "sk-test",
                            .timeout_ms = 2000};
    dx_retriever *r = NULL;
    dx_diag d = {0};
    /* The corpus request fails. */
    dx_lmserver_inject(srv, ef.spec, 1);
    ef.build_rc = dx_embed_retriever_new(&o, embed_corpus, 2, &r, &d);
    snprintf(ef.build_msg, sizeof ef.build_msg, "%s", d.msg);
    if (ef.build_rc == DX_OK)
        dx_retriever_unref(r);
    /* The corpus is embedded; the query request fails. */
    dx_diag_clear(&d);
    ef.search_rc = dx_embed_retriever_new(&o, embed_corpus, 2, &r, &d);
    if (ef.search_rc == DX_OK) {
        dx_lmserver_inject(srv, ef.spec, 1);
        dx_passages *p = NULL;
        ef.search_rc = dx_retriever_search(r, "capital", 1, &p, &d);
        if (ef.search_rc == DX_OK)
            dx_passages_free(p);
        dx_retriever_unref(r);
    }
    snprintf(ef.search_msg, sizeof ef.search_msg, "%s", d.msg);
    atomic_store(&fixture_rc, DX_OK);
}

Test(embeddings, provider_failures_name_the_stage_and_the_reason,
     .init = fixture_setup, .fini = fixture_teardown, .timeout = 60)
{
    static const struct {
        const char *spec, *says;
    } cases[] = {
        {"auth", "Incorrect API key provided"},
        {"server_error:503", "503"},
        {"malformed_json", "body is not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memset(&ef, 0, sizeof ef);
        ef.spec = cases[i].spec;
        fixture_run(embed_fault_proc);
        cr_expect_eq(ef.build_rc, DX_EPROVIDER, "%s: %s", ef.spec,
                     ef.build_msg);
        cr_expect(strstr(ef.build_msg, "embeddings: corpus: "), "%s: %s",
                  ef.spec, ef.build_msg);
        cr_expect(strstr(ef.build_msg, cases[i].says), "%s: %s", ef.spec,
                  ef.build_msg);
        cr_expect_eq(ef.search_rc, DX_EPROVIDER, "%s: %s", ef.spec,
                     ef.search_msg);
        cr_expect(strstr(ef.search_msg, "embeddings: query: "), "%s: %s",
                  ef.spec, ef.search_msg);
    }
}

static int bad_model_rc;
static char bad_model_msg[DX_DIAG_MAX];

static void embed_bad_model_proc(void *arg)
{
    (void)arg;
    dx_embeddings_opts o = {.model = "nosuch/thing", .base_url = url};
    dx_retriever *r = NULL;
    dx_diag d = {0};
    bad_model_rc = dx_embed_retriever_new(&o, embed_corpus, 2, &r, &d);
    snprintf(bad_model_msg, sizeof bad_model_msg, "%s", d.msg);
    atomic_store(&fixture_rc, DX_OK);
}

Test(embeddings, an_unknown_model_or_no_passages_is_refused,
     .init = fixture_setup, .fini = fixture_teardown, .timeout = 30)
{
    fixture_run(embed_bad_model_proc);
    cr_expect_neq(bad_model_rc, DX_OK);
    cr_expect(strstr(bad_model_msg, "embeddings: model \"nosuch/thing\""), "%s",
              bad_model_msg);
    dx_embeddings_opts o = {.model = "openai/x"};
    dx_retriever *r = NULL;
    dx_diag d = {0};
    cr_expect_eq(dx_embed_retriever_new(&o, embed_corpus, 0, &r, &d),
                 DX_EINVAL);
    cr_expect_str_eq(d.msg, "embeddings: no model, passages or result");
    dx_lm_embeddings *e = NULL;
    dx_lm_error err;
    cr_expect_eq(dx_embed_texts(NULL, embed_corpus, 1, 0, 0, &e, &err),
                 DX_EINVAL);
}
