/*
 * test_lmcache.c — the LM response cache: what goes into the key (every
 * answer-changing parameter, the namespace, not the stream flag), the
 * modes, the LRU bounds, the SQLite tier across a close/reopen, collision
 * safety in both tiers, and an unusable cache file (memory-only fallback
 * with an error naming the path).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/lmcache.h"

static dx_lm_request *base_request(void)
{
    dx_lm_request *r = dx_lm_request_new("gpt-4o-mini");
    cr_assert_not_null(r);
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_SYSTEM, "be brief"), DX_OK);
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_USER, "2+2?"), DX_OK);
    r->has_temperature = true;
    r->temperature = 0.0;
    r->max_tokens = 100;
    return r;
}

static dx_lm_response *make_response(const char *text)
{
    dx_lm_response *r = dx_calloc(1, sizeof *r);
    cr_assert_not_null(r);
    r->id = dx_strdup("resp-1");
    r->model = dx_strdup("gpt-4o-mini-2024-07-18");
    r->choices = dx_calloc(1, sizeof *r->choices);
    r->n_choices = 1;
    r->choices[0].text = dx_strdup(text);
    r->choices[0].finish = DX_LM_FINISH_TOOL_CALLS;
    r->choices[0].finish_raw = dx_strdup("tool_calls");
    r->choices[0].tool_calls = dx_calloc(1, sizeof(dx_lm_tool_call));
    r->choices[0].n_tool_calls = 1;
    r->choices[0].tool_calls[0].id = dx_strdup("call_1");
    r->choices[0].tool_calls[0].name = dx_strdup("add");
    r->choices[0].tool_calls[0].arguments = dx_strdup("{\"a\":2,\"b\":2}");
    r->has_usage = true;
    r->usage.input_tokens = 12;
    r->usage.output_tokens = 3;
    r->usage.total_tokens = 15;
    r->usage.cached_tokens = 4;
    return r;
}

static void key_of(const dx_lm_request *r, const char *ns, dx_lmcache_key *k)
{
    cr_assert_eq(dx_lmcache_key_make(r, "openai/gpt-4o-mini", ns, k), DX_OK);
    cr_assert_eq(strlen(k->hex), DX_LMCACHE_KEY_HEX);
}

static void assert_same_response(const dx_lm_response *a,
                                 const dx_lm_response *b)
{
    char *ja = NULL, *jb = NULL;
    cr_assert_eq(dx_lm_response_to_json(a, &ja), DX_OK);
    cr_assert_eq(dx_lm_response_to_json(b, &jb), DX_OK);
    cr_assert_str_eq(ja, jb);
    dx_free(ja);
    dx_free(jb);
}

/* SHA-256 of the bytes as the coreutils tool computes it, to check the
 * built-in hash against an independent one. */
static void sha256_by_tool(const char *s, size_t n, char hex[65])
{
    char path[] = "/tmp/dx_lmcache_hash_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, s, n), (ssize_t)n);
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    cr_assert_not_null(fgets(hex, 65, p));
    pclose(p);
    unlink(path);
}

Test(lmcache, key_is_sha256_of_the_canonical_text, .timeout = 10)
{
    dx_lm_request *r = dx_lm_request_new(NULL);
    dx_lmcache_key k;
    cr_assert_eq(dx_lmcache_key_make(r, "m", NULL, &k), DX_OK);
    cr_assert(strncmp(k.canonical, "dxc1\nns=~\nmodel=1:m\nmessages=0\n", 31) ==
                  0,
              "canonical: %s", k.canonical);
    char want[65];
    sha256_by_tool(k.canonical, k.len, want);
    cr_assert_str_eq(k.hex, want);
    dx_lmcache_key_clear(&k);
    cr_assert_null(k.canonical);
    dx_lm_request_free(r);

    /* Longer than one block, with a tool call and a schema. */
    dx_lm_request *a = base_request();
    dx_lm_request_set_schema(a, "s", "{\"type\":\"object\"}", false);
    dx_lm_request_add_message(a, DX_LM_ASSISTANT, "");
    dx_lm_request_add_tool_call(a, "c1", "f", "{\"x\":1}");
    dx_lmcache_key k1, k2;
    key_of(a, "ns", &k1);
    key_of(a, "ns", &k2);
    cr_assert_gt(k1.len, 128);
    sha256_by_tool(k1.canonical, k1.len, want);
    cr_assert_str_eq(k1.hex, want);
    cr_assert_str_eq(k1.hex, k2.hex);
    dx_lmcache_key_clear(&k1);
    dx_lmcache_key_clear(&k2);
    dx_lm_request_free(a);

    cr_assert_eq(dx_lmcache_key_make(NULL, NULL, NULL, &k1), DX_EINVAL);
    a = base_request();
    cr_assert_eq(dx_lmcache_key_make(a, NULL, NULL, NULL), DX_EINVAL);
    dx_lm_request_free(a);
}

Test(lmcache, identical_requests_hit_from_memory, .timeout = 10)
{
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, NULL, &c), DX_OK);
    dx_lm_request *r1 = base_request(), *r2 = base_request();
    dx_lmcache_key k1, k2;
    key_of(r1, NULL, &k1);
    key_of(r2, NULL, &k2);
    dx_lm_response *got = NULL;
    cr_assert_eq(dx_lmcache_get(c, &k1, &got), DX_ENOENT);
    cr_assert_null(got);
    dx_lm_response *resp = make_response("4");
    cr_assert_eq(dx_lmcache_put(c, &k1, resp, 1000), DX_OK);
    cr_assert_eq(dx_lmcache_get(c, &k2, &got), DX_OK);
    assert_same_response(resp, got);
    cr_assert_eq(got->usage.cached_tokens, 4);
    cr_assert_str_eq(got->choices[0].tool_calls[0].arguments,
                     "{\"a\":2,\"b\":2}");
    /* A fresh copy each time: changing one does not change the cache. */
    got->choices[0].text[0] = 'X';
    dx_lm_response *again = NULL;
    cr_assert_eq(dx_lmcache_get(c, &k2, &again), DX_OK);
    cr_assert_str_eq(again->choices[0].text, "4");
    dx_lmcache_stats st;
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.hits_memory, 2);
    cr_assert_eq(st.misses, 1);
    cr_assert_eq(st.puts, 1);
    cr_assert_eq(st.entries, 1);
    cr_assert_not(st.disk);
    dx_lm_response_free(got);
    dx_lm_response_free(again);
    dx_lm_response_free(resp);
    dx_lmcache_key_clear(&k1);
    dx_lmcache_key_clear(&k2);
    dx_lm_request_free(r1);
    dx_lm_request_free(r2);
    dx_lmcache_close(c);
}

typedef void (*mutate_fn)(dx_lm_request *r);

static void m_model(dx_lm_request *r)
{
    dx_free(r->model);
    r->model = dx_strdup("gpt-4o");
}
static void m_message(dx_lm_request *r)
{
    r->messages[1].content[0] = '3';
}
static void m_role(dx_lm_request *r)
{
    r->messages[0].role = DX_LM_USER;
}
static void m_extra_message(dx_lm_request *r)
{
    dx_lm_request_add_message(r, DX_LM_ASSISTANT, "");
}
static void m_temperature(dx_lm_request *r)
{
    r->temperature = 1e-9;
}
static void m_temperature_unset(dx_lm_request *r)
{
    r->has_temperature = false;
}
static void m_max_tokens(dx_lm_request *r)
{
    r->max_tokens = 101;
}
static void m_n(dx_lm_request *r)
{
    r->n = 2;
}
static void m_stop(dx_lm_request *r)
{
    dx_lm_request_add_stop(r, "\n");
}
static void m_seed(dx_lm_request *r)
{
    r->has_seed = true;
    r->seed = 0;
}
static void m_json_object(dx_lm_request *r)
{
    r->format = DX_LM_FORMAT_JSON_OBJECT;
}
static void m_schema(dx_lm_request *r)
{
    dx_lm_request_set_schema(r, "answer", "{\"type\":\"object\"}", true);
}
static void m_tool(dx_lm_request *r)
{
    dx_lm_request_add_tool(r, "add", NULL, "{\"type\":\"object\"}");
}
static void m_tool_choice(dx_lm_request *r)
{
    r->tool_choice = DX_LM_TOOL_CHOICE_REQUIRED;
}
static void m_tool_call(dx_lm_request *r)
{
    dx_lm_request_add_message(r, DX_LM_ASSISTANT, "");
    dx_lm_request_add_tool_call(r, "c1", "add", "{}");
}
/* A boundary shift: same bytes overall, split differently across fields. */
static void m_boundary(dx_lm_request *r)
{
    dx_free(r->messages[0].content);
    r->messages[0].content = dx_strdup("be brief2+2?");
    r->messages[1].content[0] = '\0';
}

Test(lmcache, any_answer_changing_parameter_changes_the_key, .timeout = 10)
{
    static const struct {
        const char *what;
        mutate_fn fn;
    } cases[] = {
        {"model", m_model},
        {"message text", m_message},
        {"role", m_role},
        {"extra message", m_extra_message},
        {"temperature", m_temperature},
        {"temperature unset", m_temperature_unset},
        {"max_tokens", m_max_tokens},
        {"n", m_n},
        {"stop", m_stop},
        {"seed", m_seed},
        {"json_object", m_json_object},
        {"schema", m_schema},
        {"tools", m_tool},
        {"tool_choice", m_tool_choice},
        {"tool call", m_tool_call},
        {"field boundary", m_boundary},
    };
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, NULL, &c), DX_OK);
    dx_lm_request *base = base_request();
    dx_lmcache_key kb;
    cr_assert_eq(dx_lmcache_key_make(base, NULL, NULL, &kb), DX_OK);
    dx_lm_response *resp = make_response("4");
    cr_assert_eq(dx_lmcache_put(c, &kb, resp, 1), DX_OK);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_lm_request *r = base_request();
        cases[i].fn(r);
        dx_lmcache_key k;
        cr_assert_eq(dx_lmcache_key_make(r, NULL, NULL, &k), DX_OK);
        cr_assert_str_neq(k.hex, kb.hex, "%s: same key", cases[i].what);
        dx_lm_response *got = NULL;
        cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_ENOENT, "%s: hit",
                     cases[i].what);
        dx_lmcache_key_clear(&k);
        dx_lm_request_free(r);
    }
    /* The model argument overrides req->model. */
    dx_lmcache_key k;
    cr_assert_eq(dx_lmcache_key_make(base, "openai/gpt-4o-mini", NULL, &k),
                 DX_OK);
    cr_assert_str_neq(k.hex, kb.hex);
    dx_lmcache_key_clear(&k);
    dx_lm_response_free(resp);
    dx_lmcache_key_clear(&kb);
    dx_lm_request_free(base);
    dx_lmcache_close(c);
}

Test(lmcache, stream_flag_and_n_one_do_not_change_the_key, .timeout = 10)
{
    dx_lm_request *a = base_request(), *b = base_request();
    b->stream = true;
    b->n = 1; /* a->n is 0: both ask for one choice */
    dx_lmcache_key ka, kb;
    key_of(a, NULL, &ka);
    key_of(b, NULL, &kb);
    cr_assert_str_eq(ka.hex, kb.hex);
    dx_lmcache_key_clear(&ka);
    dx_lmcache_key_clear(&kb);
    dx_lm_request_free(a);
    dx_lm_request_free(b);
}

Test(lmcache, namespace_separates_identical_requests, .timeout = 10)
{
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, NULL, &c), DX_OK);
    dx_lm_request *r = base_request();
    dx_lmcache_key k0, k1, k2, kempty;
    key_of(r, NULL, &k0);
    key_of(r, "1", &k1);
    key_of(r, "2", &k2);
    key_of(r, "", &kempty);
    cr_assert_str_eq(k0.hex, kempty.hex);
    cr_assert_str_neq(k0.hex, k1.hex);
    cr_assert_str_neq(k1.hex, k2.hex);
    dx_lm_response *a = make_response("first"), *got = NULL;
    cr_assert_eq(dx_lmcache_put(c, &k1, a, 1), DX_OK);
    cr_assert_eq(dx_lmcache_get(c, &k2, &got), DX_ENOENT);
    cr_assert_eq(dx_lmcache_get(c, &k0, &got), DX_ENOENT);
    cr_assert_eq(dx_lmcache_get(c, &k1, &got), DX_OK);
    cr_assert_str_eq(got->choices[0].text, "first");
    dx_lm_response_free(got);
    dx_lm_response_free(a);
    dx_lmcache_key_clear(&k0);
    dx_lmcache_key_clear(&k1);
    dx_lmcache_key_clear(&k2);
    dx_lmcache_key_clear(&kempty);
    dx_lm_request_free(r);
    dx_lmcache_close(c);
}

Test(lmcache, bypass_and_refresh_modes, .timeout = 10)
{
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, NULL, &c), DX_OK);
    dx_lm_request *r = base_request();
    dx_lmcache_key k;
    key_of(r, NULL, &k);
    dx_lm_response *old = make_response("old"), *fresh = make_response("new");
    dx_lm_response *got = NULL;
    k.mode = DX_LMCACHE_BYPASS;
    cr_assert_eq(dx_lmcache_put(c, &k, old, 1), DX_OK);
    k.mode = DX_LMCACHE_USE;
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_ENOENT, "bypass stored");
    cr_assert_eq(dx_lmcache_put(c, &k, old, 1), DX_OK);
    k.mode = DX_LMCACHE_BYPASS;
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_ENOENT, "bypass read");
    k.mode = DX_LMCACHE_REFRESH;
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_ENOENT, "refresh read");
    cr_assert_eq(dx_lmcache_put(c, &k, fresh, 2), DX_OK);
    k.mode = DX_LMCACHE_USE;
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_OK);
    cr_assert_str_eq(got->choices[0].text, "new");
    dx_lmcache_stats st;
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.bypassed, 2);
    cr_assert_eq(st.puts, 2);
    cr_assert_eq(st.entries, 1);
    dx_lm_response_free(got);
    dx_lm_response_free(old);
    dx_lm_response_free(fresh);
    dx_lmcache_key_clear(&k);
    dx_lm_request_free(r);
    dx_lmcache_close(c);
}

Test(lmcache, a_bare_bypass_key_needs_no_hash, .timeout = 10)
{
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, NULL, &c), DX_OK);
    dx_lm_response *resp = make_response("x"), *got = NULL;
    dx_lmcache_key bare = {.mode = DX_LMCACHE_BYPASS};
    cr_assert_eq(dx_lmcache_get(c, &bare, &got), DX_ENOENT);
    cr_assert_null(got);
    cr_assert_eq(dx_lmcache_put(c, &bare, resp, 1), DX_OK);
    /* Only BYPASS may skip the hash: the other modes read or store. */
    dx_lmcache_key use = {.mode = DX_LMCACHE_USE};
    cr_assert_eq(dx_lmcache_get(c, &use, &got), DX_EINVAL);
    dx_lmcache_key refresh = {.mode = DX_LMCACHE_REFRESH};
    cr_assert_eq(dx_lmcache_put(c, &refresh, resp, 1), DX_EINVAL);
    dx_lmcache_stats st;
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.bypassed, 1);
    cr_assert_eq(st.entries, 0);
    dx_lmcache_key_clear(&bare);
    dx_lm_response_free(resp);
    dx_lmcache_close(c);
}

/* Key i: the base request under namespace "i". */
static void nth_key(size_t i, dx_lmcache_key *k)
{
    char ns[32];
    snprintf(ns, sizeof ns, "%zu", i);
    dx_lm_request *r = base_request();
    key_of(r, ns, k);
    dx_lm_request_free(r);
}

static bool has(dx_lmcache *c, size_t i)
{
    dx_lmcache_key k;
    nth_key(i, &k);
    dx_lm_response *got = NULL;
    int rc = dx_lmcache_get(c, &k, &got);
    dx_lm_response_free(got);
    dx_lmcache_key_clear(&k);
    return rc == DX_OK;
}

static void put_nth(dx_lmcache *c, size_t i, const dx_lm_response *resp)
{
    dx_lmcache_key k;
    nth_key(i, &k);
    cr_assert_eq(dx_lmcache_put(c, &k, resp, (int64_t)i), DX_OK);
    dx_lmcache_key_clear(&k);
}

Test(lmcache, lru_evicts_least_recently_used_by_count, .timeout = 10)
{
    dx_lmcache_limits lim = {.max_entries = 3};
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, &lim, &c), DX_OK);
    dx_lm_response *resp = make_response("x");
    put_nth(c, 0, resp);
    put_nth(c, 1, resp);
    put_nth(c, 2, resp);
    cr_assert(has(c, 0)); /* 0 is now the most recent; 1 the least */
    put_nth(c, 3, resp);
    cr_assert_not(has(c, 1));
    cr_assert(has(c, 0));
    cr_assert(has(c, 2));
    cr_assert(has(c, 3));
    dx_lmcache_stats st;
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.entries, 3);
    cr_assert_eq(st.evictions, 1);
    /* Many more than the bucket count: the table grows and stays right. */
    for (size_t i = 10; i < 300; i++)
        put_nth(c, i, resp);
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.entries, 3);
    cr_assert(has(c, 299));
    cr_assert_not(has(c, 296));
    dx_lm_response_free(resp);
    dx_lmcache_close(c);
}

Test(lmcache, lru_evicts_by_bytes, .timeout = 10)
{
    dx_lmcache *probe = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, NULL, &probe), DX_OK);
    dx_lm_response *resp = make_response("some answer text");
    put_nth(probe, 0, resp);
    dx_lmcache_stats st;
    dx_lmcache_stats_get(probe, &st);
    size_t one = st.bytes;
    cr_assert_gt(one, 0);
    dx_lmcache_close(probe);

    /* Room for two entries and a half. */
    dx_lmcache_limits lim = {.max_entries = 100, .max_bytes = one * 5 / 2};
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, &lim, &c), DX_OK);
    put_nth(c, 0, resp);
    put_nth(c, 1, resp);
    put_nth(c, 2, resp);
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.entries, 2);
    cr_assert_leq(st.bytes, lim.max_bytes);
    cr_assert_eq(st.evictions, 1);
    cr_assert_not(has(c, 0));
    cr_assert(has(c, 2));

    /* An entry alone over the byte bound is not kept in memory. */
    dx_lmcache_limits tiny = {.max_bytes = 16};
    dx_lmcache *t = NULL;
    cr_assert_eq(dx_lmcache_open(NULL, &tiny, &t), DX_OK);
    put_nth(t, 0, resp);
    cr_assert_not(has(t, 0));
    dx_lmcache_stats_get(t, &st);
    cr_assert_eq(st.entries, 0);
    cr_assert_eq(st.bytes, 0);
    dx_lmcache_close(t);
    dx_lm_response_free(resp);
    dx_lmcache_close(c);
}

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dx_lmcache_XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

static void db_path(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/cache.db", tmpdir);
}

Test(lmcache, entries_survive_close_and_reopen_from_disk, .timeout = 20,
     .init = make_tmpdir, .fini = remove_tmpdir)
{
    char path[300];
    db_path(path, sizeof path);
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK, "%s",
                 dx_lmcache_error(c));
    dx_lmcache_stats st;
    dx_lmcache_stats_get(c, &st);
    cr_assert(st.disk);
    dx_lm_request *r = base_request();
    dx_lmcache_key k;
    key_of(r, "rollout-7", &k);
    dx_lm_response *resp = make_response("persisted");
    cr_assert_eq(dx_lmcache_put(c, &k, resp, 1234), DX_OK);
    dx_lmcache_close(c);

    /* A "runtime restart": a new cache on the same file. */
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK);
    dx_lm_response *got = NULL;
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_OK);
    assert_same_response(resp, got);
    dx_lm_response_free(got);
    /* Promoted: the second read comes from memory. */
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_OK);
    dx_lm_response_free(got);
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.hits_disk, 1);
    cr_assert_eq(st.hits_memory, 1);
    /* A different namespace is not on disk either. */
    dx_lmcache_key k2;
    key_of(r, "rollout-8", &k2);
    cr_assert_eq(dx_lmcache_get(c, &k2, &got), DX_ENOENT);
    dx_lmcache_key_clear(&k2);

    /* A second handle on the same file (as another OS process would
     * have) sees the writes of the first. */
    dx_lmcache *other = NULL;
    cr_assert_eq(dx_lmcache_open(path, NULL, &other), DX_OK);
    cr_assert_eq(dx_lmcache_get(other, &k, &got), DX_OK);
    dx_lm_response_free(got);
    dx_lmcache_close(other);

    dx_lm_response_free(resp);
    dx_lmcache_key_clear(&k);
    dx_lm_request_free(r);
    dx_lmcache_close(c);
}

/* Another request's canonical text under the first one's hash: what a
 * SHA-256 collision would look like. */
static void forge_collision(const dx_lmcache_key *real, dx_lmcache_key *forged)
{
    dx_lm_request *other = base_request();
    other->max_tokens = 7;
    cr_assert_eq(dx_lmcache_key_make(other, NULL, NULL, forged), DX_OK);
    memcpy(forged->hex, real->hex, sizeof forged->hex);
    dx_lm_request_free(other);
}

Test(lmcache, a_hash_collision_is_a_miss_in_both_tiers, .timeout = 20,
     .init = make_tmpdir, .fini = remove_tmpdir)
{
    char path[300];
    db_path(path, sizeof path);
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK);
    dx_lm_request *r = base_request();
    dx_lmcache_key k, forged;
    key_of(r, NULL, &k);
    forge_collision(&k, &forged);
    dx_lm_response *resp = make_response("right"), *got = NULL;
    cr_assert_eq(dx_lmcache_put(c, &k, resp, 1), DX_OK);
    cr_assert_eq(dx_lmcache_get(c, &forged, &got), DX_ENOENT, "memory");
    cr_assert_null(got);
    dx_lmcache_close(c);
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK);
    cr_assert_eq(dx_lmcache_get(c, &forged, &got), DX_ENOENT, "disk");
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_OK);
    cr_assert_str_eq(got->choices[0].text, "right");
    dx_lmcache_stats st;
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.collisions, 1);
    dx_lm_response_free(got);
    dx_lm_response_free(resp);
    dx_lmcache_key_clear(&k);
    dx_lmcache_key_clear(&forged);
    dx_lm_request_free(r);
    dx_lmcache_close(c);
}

static void write_file(const char *path, const char *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

static void assert_memory_only_works(dx_lmcache *c)
{
    dx_lmcache_stats st;
    dx_lmcache_stats_get(c, &st);
    cr_assert_not(st.disk);
    dx_lm_request *r = base_request();
    dx_lmcache_key k;
    key_of(r, NULL, &k);
    dx_lm_response *resp = make_response("mem"), *got = NULL;
    cr_assert_eq(dx_lmcache_put(c, &k, resp, 1), DX_OK);
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_OK);
    dx_lm_response_free(got);
    dx_lm_response_free(resp);
    dx_lmcache_key_clear(&k);
    dx_lm_request_free(r);
}

Test(lmcache, garbage_file_gives_an_error_naming_it_and_memory_only,
     .timeout = 20, .init = make_tmpdir, .fini = remove_tmpdir)
{
    char path[300];
    db_path(path, sizeof path);
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 131 + 7);
    write_file(path, junk, sizeof junk);
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_ECACHEFILE);
    cr_assert_not_null(c);
    cr_assert_not_null(strstr(dx_lmcache_error(c), path), "%s",
                       dx_lmcache_error(c));
    assert_memory_only_works(c);
    dx_lmcache_close(c);
}

Test(lmcache, unopenable_path_gives_memory_only, .timeout = 10)
{
    const char *path = "/nonexistent-dir-dx/cache.db";
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_ECACHEFILE);
    cr_assert_not_null(strstr(dx_lmcache_error(c), path), "%s",
                       dx_lmcache_error(c));
    assert_memory_only_works(c);
    dx_lmcache_close(c);
}

Test(lmcache, a_corrupt_row_is_a_miss_not_a_crash, .timeout = 20,
     .init = make_tmpdir, .fini = remove_tmpdir)
{
    char path[300];
    db_path(path, sizeof path);
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK);
    dx_lm_request *r = base_request();
    dx_lmcache_key k;
    key_of(r, NULL, &k);
    dx_lm_response *resp = make_response("ok"), *got = NULL;
    cr_assert_eq(dx_lmcache_put(c, &k, resp, 1), DX_OK);
    dx_lmcache_close(c);
    /* Damage the stored response through SQLite itself. */
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "command -v sqlite3 >/dev/null || exit 77; sqlite3 '%s' "
             "\"UPDATE lm_cache SET response='{not json'\"",
             path);
    int st = system(cmd);
    if (WEXITSTATUS(st) == 77) {
        dx_lm_response_free(resp);
        dx_lmcache_key_clear(&k);
        dx_lm_request_free(r);
        cr_skip_test("sqlite3 shell not installed");
    }
    cr_assert_eq(st, 0);
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK);
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_ENOENT);
    cr_assert_null(got);
    dx_lmcache_stats s;
    dx_lmcache_stats_get(c, &s);
    cr_assert_eq(s.disk_errors, 1);
    cr_assert_not_null(strstr(dx_lmcache_error(c), k.hex));
    dx_lm_response_free(resp);
    dx_lmcache_key_clear(&k);
    dx_lm_request_free(r);
    dx_lmcache_close(c);
}

Test(lmcache, damaged_database_pages_give_memory_only, .timeout = 20,
     .init = make_tmpdir, .fini = remove_tmpdir)
{
    char path[300];
    db_path(path, sizeof path);
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK);
    dx_lmcache_close(c);
    /* Keep the 100-byte header valid, wreck the schema page after it. */
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    cr_assert_eq(fseek(f, 100, SEEK_SET), 0);
    char junk[3000];
    memset(junk, 0xA5, sizeof junk);
    cr_assert_eq(fwrite(junk, 1, sizeof junk, f), sizeof junk);
    cr_assert_eq(fclose(f), 0);
    int rc = dx_lmcache_open(path, NULL, &c);
    cr_assert_eq(rc, DX_ECACHEFILE, "%s", dx_err_name(rc));
    cr_assert_not_null(strstr(dx_lmcache_error(c), path), "%s",
                       dx_lmcache_error(c));
    assert_memory_only_works(c);
    dx_lmcache_close(c);
}

/* The padding has two shapes (the length fits in the last block or spills
 * into one more); walking the text length over a whole block meets every
 * remainder mod 64, each checked against the independent tool. */
Test(lmcache, key_hash_is_right_at_every_block_remainder, .timeout = 20)
{
    bool seen[64] = {false};
    char content[200];
    for (size_t n = 0; n < 80; n++) {
        memset(content, 'x', n);
        content[n] = '\0';
        dx_lm_request *r = dx_lm_request_new(NULL);
        cr_assert_eq(dx_lm_request_add_message(r, DX_LM_USER, content), DX_OK);
        dx_lmcache_key k;
        cr_assert_eq(dx_lmcache_key_make(r, "m", NULL, &k), DX_OK);
        seen[k.len % 64] = true;
        char want[65];
        sha256_by_tool(k.canonical, k.len, want);
        cr_assert_str_eq(k.hex, want, "canonical length %zu", k.len);
        dx_lmcache_key_clear(&k);
        dx_lm_request_free(r);
    }
    for (int i = 0; i < 64; i++)
        cr_assert(seen[i], "no text of length %d mod 64", i);
}

/* Negative and extreme integers keep their decimal spelling in the key. */
Test(lmcache, key_spells_negative_and_extreme_integers, .timeout = 10)
{
    dx_lm_request *r = base_request();
    r->has_seed = true;
    r->seed = INT64_MIN;
    r->max_tokens = INT64_MAX;
    dx_lmcache_key k;
    key_of(r, NULL, &k);
    cr_assert_not_null(strstr(k.canonical, "\nseed=-9223372036854775808\n"),
                       "%s", k.canonical);
    cr_assert_not_null(
        strstr(k.canonical, "\nmax_tokens=9223372036854775807\n"), "%s",
        k.canonical);
    cr_assert_not_null(strstr(k.canonical, "\ntemperature=1:0\n"), "%s",
                       k.canonical);
    cr_assert_not_null(strstr(k.canonical, "\ncontent=4:2+2?\n"), "%s",
                       k.canonical);
    char want[65];
    sha256_by_tool(k.canonical, k.len, want);
    cr_assert_str_eq(k.hex, want);
    dx_lmcache_key_clear(&k);
    dx_lm_request_free(r);
}

/* A memory hit is the caller's own deep copy: every field survives, the
 * caller may change or free it without touching the cache, and it looks
 * exactly like a hit from the file (latency 0, no usage numbers without
 * has_usage). */
Test(lmcache, a_memory_hit_is_a_private_copy_like_a_disk_hit, .timeout = 20,
     .init = make_tmpdir, .fini = remove_tmpdir)
{
    char path[300];
    db_path(path, sizeof path);
    dx_lmcache *c = NULL;
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK);
    dx_lm_request *r = base_request();
    dx_lmcache_key k;
    key_of(r, NULL, &k);

    dx_lm_response *resp = make_response("4");
    resp->request_id = dx_strdup("req-9");
    resp->latency_ms = 123.0;
    dx_lm_choice *more = dx_calloc(2, sizeof *more);
    cr_assert_not_null(more);
    more[0] = resp->choices[0];
    more[1].text = dx_strdup("four");
    more[1].finish = DX_LM_FINISH_LENGTH;
    dx_free(resp->choices);
    resp->choices = more;
    resp->n_choices = 2;
    char *want = NULL;
    cr_assert_eq(dx_lm_response_to_json(resp, &want), DX_OK);
    cr_assert_eq(dx_lmcache_put(c, &k, resp, 1000), DX_OK);
    dx_lm_response_free(resp); /* the cache kept its own copy */

    dx_lm_response *got = NULL;
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_OK);
    char *js = NULL;
    cr_assert_eq(dx_lm_response_to_json(got, &js), DX_OK);
    cr_assert_str_eq(js, want);
    dx_free(js);
    cr_assert_eq(got->latency_ms, 0.0);
    cr_assert_str_eq(got->request_id, "req-9");
    cr_assert_str_eq(got->choices[0].tool_calls[0].arguments,
                     "{\"a\":2,\"b\":2}");
    cr_assert_null(got->choices[1].finish_raw);
    cr_assert_eq(got->choices[1].n_tool_calls, 0);
    cr_assert_eq(got->usage.cached_tokens, 4);
    got->choices[0].text[0] = 'X';
    got->choices[0].tool_calls[0].name[0] = 'X';
    dx_lm_response_free(got);

    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_OK);
    cr_assert_eq(dx_lm_response_to_json(got, &js), DX_OK);
    cr_assert_str_eq(js, want);
    dx_free(js);
    dx_lm_response_free(got);
    dx_lmcache_stats st;
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.hits_memory, 2);

    /* Usage numbers without has_usage are not handed out by either tier. */
    dx_lmcache_key k2;
    key_of(r, "other", &k2);
    resp = make_response("5");
    resp->has_usage = false;
    cr_assert_eq(dx_lmcache_put(c, &k2, resp, 1000), DX_OK);
    dx_lm_response_free(resp);
    cr_assert_eq(dx_lmcache_get(c, &k2, &got), DX_OK);
    cr_assert_not(got->has_usage);
    cr_assert_eq(got->usage.input_tokens, 0);
    char *mem2 = NULL;
    cr_assert_eq(dx_lm_response_to_json(got, &mem2), DX_OK);
    dx_lm_response_free(got);
    dx_lmcache_close(c);

    /* The same entries from the file alone. */
    cr_assert_eq(dx_lmcache_open(path, NULL, &c), DX_OK);
    cr_assert_eq(dx_lmcache_get(c, &k, &got), DX_OK);
    cr_assert_eq(dx_lm_response_to_json(got, &js), DX_OK);
    cr_assert_str_eq(js, want);
    dx_free(js);
    dx_lm_response_free(got);
    cr_assert_eq(dx_lmcache_get(c, &k2, &got), DX_OK);
    cr_assert_eq(dx_lm_response_to_json(got, &js), DX_OK);
    cr_assert_str_eq(js, mem2);
    cr_assert_eq(got->usage.input_tokens, 0);
    dx_free(js);
    dx_lm_response_free(got);
    dx_lmcache_stats_get(c, &st);
    cr_assert_eq(st.hits_disk, 2);
    dx_lmcache_close(c);

    dx_free(mem2);
    dx_free(want);
    dx_lmcache_key_clear(&k);
    dx_lmcache_key_clear(&k2);
    dx_lm_request_free(r);
}
