/*
 * test_lmclient.c — the LM client actor against the local LM server: a plain
 * answer, a retry after a server error, fallback to a second endpoint when
 * the first cannot be reached, cache hits without upstream calls, 100
 * identical concurrent requests coalesced into one upstream call, 300
 * different questions in flight at once each answered to its own two
 * callers (flights found by id and by cache key), a caller
 * timeout, every endpoint failing, and an open breaker refusing at once;
 * no fallback for a caller's-fault error; Retry-After honoured; a breaker
 * opening, refusing, probing and closing; the rate limiter holding 200
 * callers to its rate, expiring a queued caller at its deadline and refusing
 * one over its queue bound, callers joining a queued request without
 * taking admissions, a bad limiter config refused at start; and every
 * caller getting DX_EDOWN when the client is killed mid-flight; the call
 * history in order, usage totals with prices and cache hits, telemetry
 * start/stop events, and per-call cache namespaces and modes; breaker
 * state changes as "lm.breaker" telemetry events (and the user's callback);
 * fallback when the primary answers 503 to every attempt; the cache file
 * answering after a full runtime restart; a client under a supervisor,
 * restarted under its name after a kill (callers in flight get DX_EDOWN,
 * the new one answers from the file), and child specs refusing bad
 * options.
 *
 * Each scenario runs in a dspex process and only records what it saw; the
 * assertions run on the test's host thread afterwards.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/lm.h"
#include "dspex/lmhistory.h"
#include "dspex/log.h"
#include "dspex/lmserver.h"
#include "dspex/runtime.h"
#include "dspex/supervisor.h"
#include "dspex/telemetry.h"

static dx_lmserver *srv;
static char live_url[128];
/* Port 1 on loopback: nothing listens there, so connecting fails at once. */
static const char dead_url[] = "http://127.0.0.1:1/v1";

static void setup(void)
{
    cr_assert_eq(dx_lmserver_start(NULL, &srv), DX_OK);
    snprintf(live_url, sizeof live_url, "http://127.0.0.1:%d/v1",
             dx_lmserver_port(srv));
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
}

static void teardown(void)
{
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_telemetry_reset();
    dx_lmserver_stop_free(srv);
    srv = NULL;
}

static uint64_t upstream_requests(void)
{
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    return st.requests;
}

/* Quick retries so the tests never wait long. */
static const dx_retry_policy quick = {
    .max_attempts = 2,
    .initial_delay_ms = 5,
    .max_delay_ms = 10,
    .jitter = 0,
    .max_retry_after_ms = 1000,
};

/* One completed call, as seen by the caller. */
typedef struct seen {
    int rc;
    dx_lm_error err;
    char text[256];
    char model[128];
    bool cached;
    int attempts;
    int64_t input_tokens, output_tokens;
    size_t messages_left; /* in the request after a giving call */
} seen;

static void request_free(void *req)
{
    dx_lm_request_free(req);
}

/* Cache bypassed; &giving as copts: the same through
 * dx_lm_client_complete_giving. */
static const dx_lm_client_call_opts bypass = {.cache_mode = DX_LMCACHE_BYPASS};
static const dx_lm_client_call_opts giving = {.cache_mode = DX_LMCACHE_BYPASS};

static void complete_opt_into(dx_pid client, const char *question,
                              const dx_lm_client_call_opts *copts,
                              int64_t timeout_ms, seen *out)
{
    dx_lm_request *req = dx_lm_request_new(NULL);
    if (!req || dx_lm_request_add_message(req, DX_LM_USER, question) != DX_OK) {
        out->rc = DX_ENOMEM;
        dx_lm_request_free(req);
        return;
    }
    dx_lm_result *res = NULL;
    /* Some tests kill the calling process mid-call. */
    dx_ptie *tie = dx_ptie_new(req, request_free);
    if (copts == &giving)
        out->rc = dx_lm_client_complete_giving(client, req, &bypass, timeout_ms,
                                               &res, &out->err);
    else if (copts)
        out->rc = dx_lm_client_complete_opt(client, req, copts, timeout_ms,
                                            &res, &out->err);
    else
        out->rc =
            dx_lm_client_complete(client, req, timeout_ms, &res, &out->err);
    dx_ptie_cut(tie);
    out->messages_left = req->n_messages;
    dx_lm_request_free(req);
    if (out->rc == DX_OK) {
        if (res->response->has_usage) {
            out->input_tokens = res->response->usage.input_tokens;
            out->output_tokens = res->response->usage.output_tokens;
        }
        if (res->response->n_choices > 0)
            snprintf(out->text, sizeof out->text, "%s",
                     res->response->choices[0].text);
        snprintf(out->model, sizeof out->model, "%s", res->model_used);
        out->cached = res->cached;
        out->attempts = res->attempts;
    } else if (res != NULL) {
        out->rc = DX_EINVAL; /* a failed call must not hand out a result */
    }
    dx_lm_result_free(res);
}

static void complete_into(dx_pid client, const char *question,
                          int64_t timeout_ms, seen *out)
{
    complete_opt_into(client, question, NULL, timeout_ms, out);
}

/* ---- running a scenario in a process -------------------------------------- */

typedef struct scenario {
    dx_lm_client_opts opts;
    int start_rc;
    int stop_rc;
    seen calls[10];
    dx_lm_client_stats stats;
    char history[4096];
    char history_last[4096];
    int history_rc;
    dx_usage_acc usage;
    int usage_rc;
    dx_telemetry_event events[8];
    int n_events;
    int64_t t_before_ms, t_after_ms; /* wall clock around one call */
    void (*body)(struct scenario *sc, dx_pid client);
    _Atomic int done;
} scenario;

static void scenario_main(void *arg)
{
    scenario *sc = arg;
    dx_pid client;
    sc->start_rc = dx_lm_client_start(&sc->opts, NULL, &client);
    if (sc->start_rc == DX_OK) {
        sc->body(sc, client);
        dx_lm_client_stats_get(client, &sc->stats);
        sc->stop_rc = dx_server_stop(client, NULL, 5000);
    }
    atomic_store(&sc->done, 1);
}

static void run(scenario *sc)
{
    dx_pid pid;
    cr_assert_eq(dx_spawn(scenario_main, sc, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 60000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_err_name(rc));
    cr_assert(atomic_load(&sc->done));
    cr_assert_eq(sc->start_rc, DX_OK, "start: %s", dx_err_name(sc->start_rc));
    cr_assert_eq(sc->stop_rc, DX_OK, "stop: %s", dx_err_name(sc->stop_rc));
}

static scenario sc; /* criterion runs each test in its own process */

static void live_only(void)
{
    sc.opts.primary =
        (dx_lm_endpoint){"openai-compatible/live-model", live_url, "sk-test"};
    sc.opts.retry = &quick;
}

static void one_call(scenario *s, dx_pid client)
{
    complete_into(client, "What is 2+2?", 10000, &s->calls[0]);
}

static void two_calls(scenario *s, dx_pid client)
{
    complete_into(client, "What is 2+2?", 10000, &s->calls[0]);
    complete_into(client, "What is 2+2?", 10000, &s->calls[1]);
}

/* ---- tests ------------------------------------------------------------------ */

TestSuite(lmclient, .init = setup, .fini = teardown, .timeout = 60);

Test(lmclient, answers_from_the_primary_model)
{
    live_only();
    sc.body = one_call;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s: %s %d %s",
                 dx_err_name(sc.calls[0].rc),
                 dx_lm_error_kind_name(sc.calls[0].err.kind),
                 sc.calls[0].err.status, sc.calls[0].err.message);
    cr_assert_str_eq(sc.calls[0].text, "answer: What is 2+2?");
    cr_assert_str_eq(sc.calls[0].model, "openai-compatible/live-model");
    cr_assert_not(sc.calls[0].cached);
    cr_assert_eq(sc.calls[0].attempts, 1);
    cr_assert_eq(upstream_requests(), 1);
}

Test(lmclient, retries_a_server_error_then_succeeds)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "server_error", 1), DX_OK);
    sc.body = one_call;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s: %s %d %s",
                 dx_err_name(sc.calls[0].rc),
                 dx_lm_error_kind_name(sc.calls[0].err.kind),
                 sc.calls[0].err.status, sc.calls[0].err.message);
    cr_assert_str_eq(sc.calls[0].text, "answer: What is 2+2?");
    cr_assert_eq(sc.calls[0].attempts, 2);
    cr_assert_eq(upstream_requests(), 2);
    cr_assert_eq(sc.stats.fallbacks, 0);
}

Test(lmclient, falls_back_when_the_primary_cannot_be_reached)
{
    /* Read by the scenario process while this host thread waits. */
    dx_lm_endpoint live = {"openai-compatible/backup-model", live_url,
                           "sk-test"};
    sc.opts.primary =
        (dx_lm_endpoint){"openai-compatible/dead-model", dead_url, "sk-test"};
    sc.opts.fallbacks = &live;
    sc.opts.n_fallbacks = 1;
    sc.opts.retry = &quick;
    sc.body = one_call;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s: %s %d %s",
                 dx_err_name(sc.calls[0].rc),
                 dx_lm_error_kind_name(sc.calls[0].err.kind),
                 sc.calls[0].err.status, sc.calls[0].err.message);
    cr_assert_str_eq(sc.calls[0].model, "openai-compatible/backup-model");
    /* Both attempts on the dead endpoint, then one on the live one. */
    cr_assert_eq(sc.calls[0].attempts, 3);
    cr_assert_eq(sc.stats.fallbacks, 1);
    cr_assert_eq(sc.stats.workers, 2);
    cr_assert_eq(upstream_requests(), 1);
}

/* One call to a dead primary with a keyless fallback, the endpoint
 * headers given. */
static void dead_primary_then_keyless(const dx_lm_endpoint *keyless,
                                      const dx_lm_endpoint_header *own)
{
    memset(&sc, 0, sizeof sc);
    sc.opts.primary =
        (dx_lm_endpoint){"openai-compatible/dead-model", dead_url, "sk-test"};
    sc.opts.fallbacks = keyless;
    sc.opts.n_fallbacks = 1;
    sc.opts.retry = &quick;
    sc.opts.endpoint_headers = own;
    sc.opts.n_endpoint_headers = 1;
    sc.body = one_call;
    run(&sc);
}

/* An endpoint's own headers go to it alone: the primary's key header does
 * not reach the fallback (which then refuses the call for want of a key),
 * the fallback's does; an endpoint number past the fallbacks fails the
 * start. */
Test(lmclient, an_endpoints_own_headers_go_to_it_alone)
{
    dx_lm_endpoint keyless = {"openai-compatible/backup-model", live_url, NULL};
    dx_lm_endpoint_header for_primary[] = {
        {0, "Authorization: Bearer for-the-primary"}};
    dead_primary_then_keyless(&keyless, for_primary);
    cr_assert_neq(sc.calls[0].rc, DX_OK,
                  "the primary's key reached the fallback");
    cr_expect_eq(sc.calls[0].err.kind, DX_LM_ERR_AUTH, "%s: %s",
                 dx_lm_error_kind_name(sc.calls[0].err.kind),
                 sc.calls[0].err.message);

    dx_lm_endpoint_header for_backup[] = {
        {1, "Authorization: Bearer for-the-backup"}};
    dead_primary_then_keyless(&keyless, for_backup);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s: %s %d %s",
                 dx_err_name(sc.calls[0].rc),
                 dx_lm_error_kind_name(sc.calls[0].err.kind),
                 sc.calls[0].err.status, sc.calls[0].err.message);
    cr_expect_str_eq(sc.calls[0].model, "openai-compatible/backup-model");

    /* No third endpoint to send it to. */
    dx_lm_endpoint_header nowhere[] = {{2, "X-Route: eu"}};
    dx_lm_client_opts bad = {.primary = sc.opts.primary,
                             .fallbacks = &keyless,
                             .n_fallbacks = 1,
                             .endpoint_headers = nowhere,
                             .n_endpoint_headers = 1};
    dx_pid pid;
    cr_expect_eq(dx_lm_client_start(&bad, NULL, &pid), DX_EINVAL);
    dx_child_spec spec;
    cr_expect_eq(dx_lm_client_child_spec(&spec, "lm", &bad, NULL), DX_EINVAL);
    bad.endpoint_headers = (dx_lm_endpoint_header[]){{1, NULL}};
    cr_expect_eq(dx_lm_client_start(&bad, NULL, &pid), DX_EINVAL);
    /* A child spec takes them (its own copy, freed with it). */
    bad.endpoint_headers = for_backup;
    cr_expect_eq(dx_lm_client_child_spec(&spec, "lm", &bad, NULL), DX_OK);
    dx_lm_client_child_spec_free(&spec);
}

Test(lmclient, falls_back_when_the_primary_answers_503_to_every_attempt)
{
    dx_lmserver *second = NULL;
    cr_assert_eq(dx_lmserver_start(NULL, &second), DX_OK);
    char second_url[128];
    snprintf(second_url, sizeof second_url, "http://127.0.0.1:%d/v1",
             dx_lmserver_port(second));
    dx_lm_endpoint backup = {"openai-compatible/backup-model", second_url,
                             "sk-test"};
    live_only();
    sc.opts.fallbacks = &backup;
    sc.opts.n_fallbacks = 1;
    /* More 503s queued than the policy's attempts: one attempt too many
     * would also fail, and show in the count. */
    cr_assert_eq(dx_lmserver_inject(srv, "server_error:503", 10), DX_OK);
    sc.body = one_call;
    run(&sc);
    dx_lmserver_stats first_st, second_st;
    dx_lmserver_stats_get(srv, &first_st);
    dx_lmserver_stats_get(second, &second_st);
    dx_lmserver_stop_free(second);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s: %s %d %s",
                 dx_err_name(sc.calls[0].rc),
                 dx_lm_error_kind_name(sc.calls[0].err.kind),
                 sc.calls[0].err.status, sc.calls[0].err.message);
    cr_assert_str_eq(sc.calls[0].model, "openai-compatible/backup-model");
    cr_assert_str_eq(sc.calls[0].text, "answer: What is 2+2?");
    cr_assert_eq(sc.calls[0].attempts, quick.max_attempts + 1);
    cr_assert_eq(first_st.requests, (uint64_t)quick.max_attempts);
    cr_assert_eq(first_st.faults_applied, (uint64_t)quick.max_attempts);
    cr_assert_eq(second_st.requests, 1);
    cr_assert_eq(sc.stats.fallbacks, 1);
    cr_assert_eq(sc.stats.workers, 2);
}

Test(lmclient, fails_with_the_last_error_when_every_endpoint_fails)
{
    sc.opts.primary =
        (dx_lm_endpoint){"openai-compatible/dead-model", dead_url, "sk-test"};
    sc.opts.retry = &quick;
    sc.body = one_call;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_EPROVIDER, "%s",
                 dx_err_name(sc.calls[0].rc));
    cr_assert_eq(sc.calls[0].err.kind, DX_LM_ERR_CONNECTION, "%s",
                 dx_lm_error_kind_name(sc.calls[0].err.kind));
    cr_assert_eq(sc.stats.failures, 1);
    cr_assert_eq(sc.stats.in_flight, 0);
}

Test(lmclient, an_open_breaker_refuses_without_calling)
{
    dx_breaker_config bc;
    dx_breaker_config_default(&bc);
    bc.window = 1;
    bc.min_calls = 1;
    bc.failure_threshold = 1.0;
    bc.open_ms = 60000;
    sc.opts.primary =
        (dx_lm_endpoint){"openai-compatible/dead-model", dead_url, "sk-test"};
    sc.opts.retry = &quick;
    sc.opts.breaker = &bc;
    sc.body = two_calls;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_EPROVIDER);
    cr_assert_eq(sc.calls[1].rc, DX_EOPEN, "%s", dx_err_name(sc.calls[1].rc));
    cr_assert_eq(sc.stats.workers, 1);
}

Test(lmclient, an_identical_second_call_is_served_from_the_cache)
{
    live_only();
    sc.body = two_calls;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK);
    cr_assert_eq(sc.calls[1].rc, DX_OK);
    cr_assert_not(sc.calls[0].cached);
    cr_assert(sc.calls[1].cached);
    cr_assert_eq(sc.calls[1].attempts, 0);
    cr_assert_str_eq(sc.calls[1].text, sc.calls[0].text);
    cr_assert_eq(upstream_requests(), 1);
    cr_assert_eq(sc.stats.cache_hits, 1);
}

#define CROWD 100
static seen crowd[CROWD];
static _Atomic int crowd_done;
static dx_pid crowd_client;

static void crowd_member(void *arg)
{
    seen *s = arg;
    complete_into(crowd_client, "Same question for all", 20000, s);
    atomic_fetch_add(&crowd_done, 1);
}

static void crowd_body(scenario *s, dx_pid client)
{
    (void)s;
    crowd_client = client;
    for (int i = 0; i < CROWD; i++)
        if (dx_spawn(crowd_member, &crowd[i], NULL) != DX_OK) {
            crowd[i].rc = DX_ENOMEM;
            atomic_fetch_add(&crowd_done, 1);
        }
    for (int waited = 0; atomic_load(&crowd_done) < CROWD && waited < 30000;
         waited += 10)
        dx_sleep(10);
}

Test(lmclient, identical_concurrent_requests_make_one_upstream_call)
{
    live_only();
    /* The upstream answer is slow, so all 100 arrive while it is in flight. */
    cr_assert_eq(dx_lmserver_inject(srv, "slow:500", 1), DX_OK);
    sc.body = crowd_body;
    run(&sc);
    cr_assert_eq(atomic_load(&crowd_done), CROWD);
    for (int i = 0; i < CROWD; i++) {
        cr_assert_eq(crowd[i].rc, DX_OK, "caller %d: %s", i,
                     dx_err_name(crowd[i].rc));
        cr_assert_str_eq(crowd[i].text, "answer: Same question for all");
    }
    cr_assert_eq(upstream_requests(), 1);
    cr_assert_eq(sc.stats.workers, 1);
    cr_assert_eq(sc.stats.coalesced + sc.stats.cache_hits, CROWD - 1);
}

/* Hundreds of different questions in flight at once, each asked by two
 * callers: the client's flights are found by id and by cache key in
 * tables, and every caller must get its own question's answer. */
#define DISTINCT 300
static seen pair_seen[2 * DISTINCT];
static _Atomic int pairs_done;
static dx_pid pairs_client;

static void pair_member(void *arg)
{
    seen *s = arg;
    char q[64];
    snprintf(q, sizeof q, "Question number %d", (int)(s - pair_seen) / 2);
    complete_into(pairs_client, q, 30000, s);
    atomic_fetch_add(&pairs_done, 1);
}

static void pairs_body(scenario *s, dx_pid client)
{
    (void)s;
    pairs_client = client;
    for (int i = 0; i < 2 * DISTINCT; i++)
        if (dx_spawn(pair_member, &pair_seen[i], NULL) != DX_OK) {
            pair_seen[i].rc = DX_ENOMEM;
            atomic_fetch_add(&pairs_done, 1);
        }
    for (int waited = 0;
         atomic_load(&pairs_done) < 2 * DISTINCT && waited < 40000;
         waited += 10)
        dx_sleep(10);
}

Test(lmclient, hundreds_of_distinct_flights_each_answer_their_own_callers)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:200", DISTINCT), DX_OK);
    sc.body = pairs_body;
    run(&sc);
    cr_assert_eq(atomic_load(&pairs_done), 2 * DISTINCT);
    for (int i = 0; i < 2 * DISTINCT; i++) {
        char want[80];
        snprintf(want, sizeof want, "answer: Question number %d", i / 2);
        cr_assert_eq(pair_seen[i].rc, DX_OK, "caller %d: %s", i,
                     dx_err_name(pair_seen[i].rc));
        cr_assert_str_eq(pair_seen[i].text, want, "caller %d", i);
    }
    /* The second caller of each question joined the first's flight or
     * found its cached answer: one upstream call per question. */
    cr_assert_eq(upstream_requests(), DISTINCT);
    cr_assert_eq(sc.stats.coalesced + sc.stats.cache_hits, DISTINCT);
    cr_assert_eq(sc.stats.in_flight, 0);
}

static uint64_t closed_early_before;

static void impatient(scenario *s, dx_pid client)
{
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    closed_early_before = st.connections_closed_early;
    /* A second: long enough for the request to reach the server first
     * even under valgrind, far short of the answer's 5 s. */
    complete_into(client, "Take your time", 1000, &s->calls[0]);
}

Test(lmclient, a_caller_that_times_out_gets_etimedout)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:5000", 1), DX_OK);
    sc.body = impatient;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_ETIMEDOUT, "%s",
                 dx_err_name(sc.calls[0].rc));
    /* The caller ran its own flight and stopped it at its deadline: nothing
     * runs on for nobody, and the server saw the connection close before
     * it answered. The client stayed responsive (the stats call after). */
    cr_assert_eq(sc.stats.in_flight, 0);
    cr_assert_eq(sc.stats.failures, 1);
    bool closed = false;
    for (int i = 0; i < 300 && !closed; i++) {
        dx_lmserver_stats st;
        dx_lmserver_stats_get(srv, &st);
        closed = st.connections_closed_early > closed_early_before;
        if (!closed)
            usleep(10000);
    }
    cr_assert(closed);
}

Test(lmclient, start_refuses_a_bad_model_string)
{
    sc.opts.primary = (dx_lm_endpoint){"no-provider-here", live_url, "sk-test"};
    dx_pid pid;
    cr_assert_eq(dx_spawn(scenario_main, &sc, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 10000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC);
    cr_assert(atomic_load(&sc.done));
    cr_assert_eq(sc.start_rc, DX_EINVAL, "%s", dx_err_name(sc.start_rc));
}

static void restart_and_ask(scenario *s, dx_pid client)
{
    complete_into(client, "Remember me", 10000, &s->calls[0]);
    /* A second client on the same file: the answer is already there. */
    dx_pid again;
    if (dx_server_stop(client, NULL, 5000) != DX_OK ||
        dx_lm_client_start(&s->opts, NULL, &again) != DX_OK) {
        s->calls[1].rc = DX_ESTATE;
        return;
    }
    complete_into(again, "Remember me", 10000, &s->calls[1]);
    dx_server_stop(again, NULL, 5000);
}

static void scenario_restart(void *arg)
{
    scenario *s = arg;
    dx_pid client;
    s->start_rc = dx_lm_client_start(&s->opts, NULL, &client);
    if (s->start_rc == DX_OK)
        restart_and_ask(s, client);
    atomic_store(&s->done, 1);
}

Test(lmclient, a_cache_file_answers_a_restarted_client)
{
    char dir[] = "/tmp/dx_lmclient_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/cache.db", dir);
    live_only();
    sc.opts.cache_path = path;
    dx_pid pid;
    cr_assert_eq(dx_spawn(scenario_restart, &sc, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 30000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC);
    cr_assert(atomic_load(&sc.done));
    cr_assert_eq(sc.start_rc, DX_OK);
    cr_assert_eq(sc.calls[0].rc, DX_OK);
    cr_assert_eq(sc.calls[1].rc, DX_OK, "%s", dx_err_name(sc.calls[1].rc));
    cr_assert_not(sc.calls[0].cached);
    cr_assert(sc.calls[1].cached);
    cr_assert_str_eq(sc.calls[1].text, "answer: Remember me");
    cr_assert_eq(upstream_requests(), 1);
    char wal[80], shm[80];
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);
    remove(wal);
    remove(shm);
    remove(path);
    rmdir(dir);
}

/* The logger's warnings, kept by a sink (which may not log or call the
 * runtime: it copies). */
static char cache_warning[512];

static void warning_sink(const dx_log_record *r, void *ud)
{
    (void)ud;
    if (r->level == DX_LOG_WARNING && cache_warning[0] == '\0')
        snprintf(cache_warning, sizeof cache_warning, "%s", r->line);
}

/* A cache file that cannot be used does not stop the client: it answers and
 * caches in memory, and a warning names the file and why. */
Test(lmclient, an_unusable_cache_file_is_a_warning_and_memory_caching)
{
    char dir[] = "/tmp/dx_lmclient_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/not-a-cache.db", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < 64; i++)
        fputs("this is not a SQLite database ", f);
    fclose(f);
    live_only();
    sc.opts.cache_path = path;
    sc.body = one_call;
    cache_warning[0] = '\0';
    dx_log_set_sink(warning_sink, NULL);
    run(&sc);
    dx_log_set_sink(NULL, NULL);
    cr_assert_eq(sc.start_rc, DX_OK);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s", dx_err_name(sc.calls[0].rc));
    cr_assert(strstr(cache_warning, "lm_cache_in_memory_only"), "%s",
              cache_warning);
    cr_assert(strstr(cache_warning, path), "%s", cache_warning);
    cr_assert(strstr(cache_warning, "not a database"), "%s", cache_warning);
    remove(path);
    rmdir(dir);
}

static scenario sc_after; /* the client of the restarted runtime */

Test(lmclient, a_cache_file_answers_after_a_runtime_restart)
{
    char dir[] = "/tmp/dx_lmclient_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/cache.db", dir);
    live_only();
    sc.opts.cache_path = path;
    sc.body = one_call;
    run(&sc); /* answers, then stops its client */
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s", dx_err_name(sc.calls[0].rc));
    cr_assert_not(sc.calls[0].cached);
    cr_assert_eq(upstream_requests(), 1);

    /* Every process, memory tier included, is gone; only the file stays.
     * The suite's fini stops the runtime started here. */
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_telemetry_reset();
    cr_assert_not(dx_runtime_running());
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);

    sc_after.opts = sc.opts;
    sc_after.body = one_call;
    run(&sc_after);
    cr_assert_eq(sc_after.calls[0].rc, DX_OK, "%s",
                 dx_err_name(sc_after.calls[0].rc));
    cr_assert(sc_after.calls[0].cached);
    cr_assert_eq(sc_after.calls[0].attempts, 0);
    cr_assert_str_eq(sc_after.calls[0].text, "answer: What is 2+2?");
    cr_assert_str_eq(sc_after.calls[0].model, "openai-compatible/live-model");
    cr_assert_eq(sc_after.stats.cache_hits, 1);
    cr_assert_eq(upstream_requests(), 1, "the restarted client went upstream");
    char wal[80], shm[80];
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);
    remove(wal);
    remove(shm);
    remove(path);
    rmdir(dir);
}

/* ---- fallback policy, Retry-After, breaker lifecycle ----------------------- */

Test(lmclient, a_callers_fault_error_does_not_fall_back)
{
    dx_lm_endpoint backup = {"openai-compatible/backup-model", live_url,
                             "sk-test"};
    live_only();
    sc.opts.fallbacks = &backup;
    sc.opts.n_fallbacks = 1;
    /* Only the first request is refused: a fallback would succeed. */
    cr_assert_eq(dx_lmserver_inject(srv, "auth", 1), DX_OK);
    sc.body = one_call;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_EPROVIDER, "%s",
                 dx_err_name(sc.calls[0].rc));
    cr_assert_eq(sc.calls[0].err.kind, DX_LM_ERR_AUTH, "%s",
                 dx_lm_error_kind_name(sc.calls[0].err.kind));
    cr_assert_eq(sc.stats.fallbacks, 0);
    cr_assert_eq(sc.stats.workers, 1);
    cr_assert_eq(upstream_requests(), 1);
}

static const dx_retry_policy patient = {
    .max_attempts = 2,
    .initial_delay_ms = 5,
    .max_delay_ms = 10,
    .jitter = 0,
    .max_retry_after_ms = 5000,
};

static int64_t elapsed_ms;

static void timed_call(scenario *s, dx_pid client)
{
    int64_t t0 = dx_now_ms();
    complete_into(client, "After the limit", 10000, &s->calls[0]);
    elapsed_ms = dx_now_ms() - t0;
}

Test(lmclient, waits_out_retry_after_before_retrying)
{
    live_only();
    sc.opts.retry = &patient;
    cr_assert_eq(dx_lmserver_inject(srv, "rate_limit:1", 1), DX_OK);
    sc.body = timed_call;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s: %s", dx_err_name(sc.calls[0].rc),
                 sc.calls[0].err.message);
    cr_assert_eq(sc.calls[0].attempts, 2);
    cr_assert_eq(upstream_requests(), 2);
    /* The backoff alone would be 5 ms; Retry-After said one second. */
    cr_assert_geq(elapsed_ms, 1000, "retried after %lld ms",
                  (long long)elapsed_ms);
}

static dx_lm_client_stats mid_stats[2];

/* Two failing calls, one refused, the probe after open_ms; the stats after
 * the refusal and after the probe. copts: the calls' options (NULL: none). */
static void breaker_cycle_with(scenario *s, dx_pid client,
                               const dx_lm_client_call_opts *copts)
{
    static const char *const questions[] = {"fail one", "fail two", "refused",
                                            "probe"};
    for (int i = 0; i < 4; i++) {
        if (i == 3)
            dx_sleep(350); /* open_ms: the next call is the half-open probe */
        complete_opt_into(client, questions[i], copts, 10000, &s->calls[i]);
        if (i >= 2)
            dx_lm_client_stats_get(client, &mid_stats[i - 2]);
    }
}

static void breaker_cycle(scenario *s, dx_pid client)
{
    breaker_cycle_with(s, client, NULL);
}

/* sc with a breaker (in *bc) that two failures in a window of two open for
 * 300 ms and one good probe closes, one attempt per call, and the server's
 * next two answers failing. */
static void quick_breaker(dx_breaker_config *bc)
{
    dx_breaker_config_default(bc);
    bc->window = 2;
    bc->min_calls = 2;
    bc->failure_threshold = 0.5;
    bc->open_ms = 300;
    bc->half_open_calls = 1;
    static const dx_retry_policy once = {.max_attempts = 1};
    live_only();
    sc.opts.retry = &once;
    sc.opts.breaker = bc;
    cr_assert_eq(dx_lmserver_inject(srv, "server_error", 2), DX_OK);
}

/* What breaker_cycle_with saw: two failures, a refusal with the breaker
 * open, and a probe that closed it. */
static void assert_the_breaker_cycled(void)
{
    cr_assert_eq(sc.calls[0].rc, DX_EPROVIDER);
    cr_assert_eq(sc.calls[1].rc, DX_EPROVIDER);
    cr_assert_eq(sc.calls[2].rc, DX_EOPEN, "%s", dx_err_name(sc.calls[2].rc));
    cr_assert_eq(mid_stats[0].breakers[0], DX_BREAKER_OPEN);
    cr_assert_eq(mid_stats[0].workers, 2);
    cr_assert_eq(mid_stats[0].failures, 3);
    cr_assert_eq(sc.calls[3].rc, DX_OK, "%s", dx_err_name(sc.calls[3].rc));
    cr_assert_eq(mid_stats[1].breakers[0], DX_BREAKER_CLOSED);
}

Test(lmclient, a_breaker_opens_refuses_probes_and_closes)
{
    dx_breaker_config bc;
    quick_breaker(&bc);
    sc.body = breaker_cycle;
    run(&sc);
    assert_the_breaker_cycled();
    /* The refused call never reached the server. */
    cr_assert_eq(upstream_requests(), 3);
}

/* The user's own breaker callback, run in the server process. */
static dx_breaker_state user_to[8];
static _Atomic int user_n;

static void user_breaker_fn(dx_breaker *b, const dx_breaker_event *ev, void *ud)
{
    (void)b;
    int i = atomic_fetch_add(&user_n, 1);
    if (i < 8)
        user_to[i] = ev->to;
    atomic_fetch_add((_Atomic int *)ud, 1);
}

static _Atomic int user_ud_hits;

/* Collect the telemetry events this scenario process was sent (up to 8),
 * each waited for up to 200 ms. */
static void drain_events(scenario *s)
{
    dx_msg *m = NULL;
    while (s->n_events < 8 &&
           dx_receive_tag(DX_TELEMETRY_TAG, 200, &m) == DX_OK) {
        if (m->ptr)
            s->events[s->n_events++] = *(dx_telemetry_event *)m->ptr;
        dx_msg_free(m);
    }
}

static void watched_breaker_cycle(scenario *s, dx_pid client)
{
    if (dx_telemetry_subscribe(dx_self(), "lm.breaker") != DX_OK)
        return;
    breaker_cycle(s, client);
    drain_events(s);
}

Test(lmclient, breaker_state_changes_are_telemetry_events)
{
    dx_breaker_config bc;
    quick_breaker(&bc);
    bc.on_event = user_breaker_fn;
    bc.ud = &user_ud_hits;
    sc.body = watched_breaker_cycle;
    run(&sc);
    cr_assert_eq(sc.calls[2].rc, DX_EOPEN, "%s", dx_err_name(sc.calls[2].rc));
    cr_assert_eq(sc.calls[3].rc, DX_OK, "%s", dx_err_name(sc.calls[3].rc));
    static const dx_breaker_state from[] = {DX_BREAKER_CLOSED, DX_BREAKER_OPEN,
                                            DX_BREAKER_HALF_OPEN};
    static const dx_breaker_state to[] = {DX_BREAKER_OPEN, DX_BREAKER_HALF_OPEN,
                                          DX_BREAKER_CLOSED};
    cr_assert_eq(sc.n_events, 3, "%d events", sc.n_events);
    for (int i = 0; i < 3; i++) {
        const dx_telemetry_event *e = &sc.events[i];
        cr_assert_eq(e->kind, DX_TELEMETRY_EVENT, "event %d", i);
        cr_assert_str_eq(e->name, "lm.breaker");
        cr_assert_str_eq(e->model, "openai-compatible/live-model");
        cr_assert_eq(e->from_state, (int)from[i], "event %d from %d", i,
                     e->from_state);
        cr_assert_eq(e->state, (int)to[i], "event %d to %d", i, e->state);
    }
    /* Opened by a window of two failures; closed by one good probe. */
    cr_assert_float_eq(sc.events[0].failure_rate, 1.0, 1e-9);
    cr_assert_eq(sc.events[0].calls, 2);
    cr_assert_eq(sc.events[1].calls, 0);
    cr_assert_float_eq(sc.events[2].failure_rate, 0.0, 1e-9);
    cr_assert_eq(sc.events[2].calls, 1);
    /* The user's callback saw the same changes, with its own ud. */
    cr_assert_eq(atomic_load(&user_n), 3);
    cr_assert_eq(atomic_load(&user_ud_hits), 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(user_to[i], to[i], "user event %d", i);
}

/* ---- rate limiting --------------------------------------------------------- */

#define RATE_CALLERS 200
#define RATE_GAP_MS 10 /* 6000 per minute, burst 1 */
static seen rate_seen[RATE_CALLERS];
static _Atomic int rate_done;
static dx_pid rate_client;
static _Atomic int rate_violations;
static int64_t rate_worst; /* the sample closest to breaking the rate */

static void rate_member(void *arg)
{
    seen *s = arg;
    char q[64];
    snprintf(q, sizeof q, "question %d", (int)(s - rate_seen));
    complete_into(rate_client, q, 20000, s);
    atomic_fetch_add(&rate_done, 1);
}

static void rate_body(scenario *s, dx_pid client)
{
    (void)s;
    int64_t t0 = dx_now_ms() - 1; /* the client (its full bucket) is older */
    rate_client = client;
    for (int i = 0; i < RATE_CALLERS; i++)
        if (dx_spawn(rate_member, &rate_seen[i], NULL) != DX_OK) {
            rate_seen[i].rc = DX_ENOMEM;
            atomic_fetch_add(&rate_done, 1);
        }
    /* The n-th upstream request cannot start before (n - 1) gaps have
     * passed since the client started with one request in its bucket. */
    rate_worst = INT64_MAX;
    for (int waited = 0;
         atomic_load(&rate_done) < RATE_CALLERS && waited < 30000;
         waited += 25) {
        uint64_t n = upstream_requests();
        int64_t el = dx_now_ms() - t0 + 1;
        int64_t slack = el - ((int64_t)n - 1) * RATE_GAP_MS;
        if (slack < 0)
            atomic_fetch_add(&rate_violations, 1);
        if (slack < rate_worst)
            rate_worst = slack;
        dx_sleep(25);
    }
    elapsed_ms = dx_now_ms() - t0;
}

Test(lmclient, the_rate_limit_holds_200_concurrent_callers_to_its_rate)
{
    dx_ratelimit_config rl = {
        .rpm = 60000 / RATE_GAP_MS, .rpm_burst = 1, .max_waiters = 256};
    live_only();
    sc.opts.ratelimit = &rl;
    sc.body = rate_body;
    run(&sc);
    cr_assert_eq(atomic_load(&rate_done), RATE_CALLERS);
    for (int i = 0; i < RATE_CALLERS; i++)
        cr_assert_eq(rate_seen[i].rc, DX_OK, "caller %d: %s", i,
                     dx_err_name(rate_seen[i].rc));
    cr_assert_eq(upstream_requests(), RATE_CALLERS);
    cr_assert_eq(atomic_load(&rate_violations), 0, "worst slack %lld ms",
                 (long long)rate_worst);
    /* 200 starts with a bucket of one take at least 199 gaps. */
    cr_assert_geq(elapsed_ms, (RATE_CALLERS - 1) * RATE_GAP_MS);
    cr_assert_gt(sc.stats.rate_waits, 0);
    cr_assert_eq(sc.stats.in_flight, 0);
    cr_assert_eq(sc.stats.queued, 0);
}

static dx_pid bg_client;
static seen bg_seen[2];
static _Atomic int bg_done;

static void bg_slow(void *arg)
{
    (void)arg;
    complete_into(bg_client, "slow one", 10000, &bg_seen[0]);
    atomic_fetch_add(&bg_done, 1);
}

static void bg_short(void *arg)
{
    (void)arg;
    complete_into(bg_client, "short deadline", 200, &bg_seen[1]);
    atomic_fetch_add(&bg_done, 1);
}

/* Wait (bounded) until the client's stats satisfy want. */
static bool wait_stats(dx_pid client, bool (*want)(const dx_lm_client_stats *))
{
    dx_lm_client_stats st;
    for (int i = 0; i < 1000; i++) {
        if (dx_lm_client_stats_get(client, &st) == DX_OK && want(&st))
            return true;
        dx_sleep(5);
    }
    return false;
}

static bool one_running(const dx_lm_client_stats *st)
{
    return st->in_flight == 1 && st->queued == 0;
}

static bool one_queued(const dx_lm_client_stats *st)
{
    return st->queued == 1;
}

static void queue_body(scenario *s, dx_pid client)
{
    bg_client = client;
    if (dx_spawn(bg_slow, NULL, NULL) != DX_OK ||
        !wait_stats(client, one_running) ||
        dx_spawn(bg_short, NULL, NULL) != DX_OK ||
        !wait_stats(client, one_queued)) {
        s->calls[0].rc = DX_ESTATE;
        return;
    }
    /* The queue (one place) is full: refused at once. */
    complete_into(client, "no room", 10000, &s->calls[0]);
    while (atomic_load(&bg_done) < 2)
        dx_sleep(10);
}

Test(lmclient, the_limiter_queue_expires_late_waiters_and_refuses_when_full)
{
    dx_ratelimit_config rl = {.max_concurrency = 1, .max_waiters = 1};
    live_only();
    sc.opts.ratelimit = &rl;
    cr_assert_eq(dx_lmserver_inject(srv, "slow:1000", 1), DX_OK);
    sc.body = queue_body;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_ELIMIT, "%s", dx_err_name(sc.calls[0].rc));
    cr_assert_eq(bg_seen[0].rc, DX_OK, "%s", dx_err_name(bg_seen[0].rc));
    cr_assert_eq(bg_seen[1].rc, DX_ETIMEDOUT, "%s", dx_err_name(bg_seen[1].rc));
    cr_assert_eq(sc.stats.rate_expired, 1);
    cr_assert_eq(sc.stats.rate_rejected, 1);
    /* The expired waiter never went upstream. */
    cr_assert_eq(upstream_requests(), 1);
    cr_assert_eq(sc.stats.in_flight, 0);
}

/* ---- killing the client mid-flight ----------------------------------------- */

#define KILL_CALLERS 6
static seen kill_seen[KILL_CALLERS];
static int64_t kill_returned_ms[KILL_CALLERS];
static _Atomic int kill_done;
static dx_pid kill_client;
static int64_t kill_at;
static int kill_rc = DX_ESTATE;
static uint64_t kill_closed;

static void kill_member(void *arg)
{
    seen *s = arg;
    int i = (int)(s - kill_seen);
    char q[64];
    snprintf(q, sizeof q, "slow question %d", i);
    complete_into(kill_client, q, 30000, s);
    kill_returned_ms[i] = dx_now_ms();
    atomic_fetch_add(&kill_done, 1);
}

static bool all_in(const dx_lm_client_stats *st)
{
    return st->in_flight == KILL_CALLERS;
}

/* Whether the server has parsed `n` more requests than `base` within 5 s:
 * a call the client counts as running may not be on the wire yet. */
static bool server_got(uint64_t base, uint64_t n)
{
    for (int i = 0; i < 500; i++) {
        dx_lmserver_stats st;
        dx_lmserver_stats_get(srv, &st);
        if (st.requests >= base + n)
            return true;
        dx_sleep(10);
    }
    return false;
}

/* Wait (bounded) until the server has seen n connections close before it
 * answered: upstream calls cancelled. */
static void wait_closed_early(uint64_t n)
{
    for (int i = 0; i < 500 && kill_closed < n; i++) {
        dx_lmserver_stats st;
        dx_lmserver_stats_get(srv, &st);
        kill_closed = st.connections_closed_early;
        if (kill_closed < n)
            dx_sleep(10);
    }
}

/* Run a scenario whose main starts and kills its own client. */
static void run_killing(void (*main_fn)(void *))
{
    dx_pid pid;
    cr_assert_eq(dx_spawn(main_fn, &sc, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 60000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC);
    cr_assert(atomic_load(&sc.done));
    cr_assert_eq(sc.start_rc, DX_OK);
}

static void kill_main(void *arg)
{
    scenario *s = arg;
    dx_lmserver_stats before;
    dx_lmserver_stats_get(srv, &before);
    s->start_rc = dx_lm_client_start(&s->opts, NULL, &kill_client);
    if (s->start_rc == DX_OK) {
        for (int i = 0; i < KILL_CALLERS; i++)
            if (dx_spawn(kill_member, &kill_seen[i], NULL) != DX_OK) {
                kill_seen[i].rc = DX_ENOMEM;
                atomic_fetch_add(&kill_done, 1);
            }
        /* Killed with its two running calls at the server (held there by
         * the slow fault), so their cancellation shows as early closes. */
        if (wait_stats(kill_client, all_in) && server_got(before.requests, 2)) {
            kill_at = dx_now_ms();
            kill_rc = dx_kill(kill_client);
        }
        for (int i = 0; i < 3000 && atomic_load(&kill_done) < KILL_CALLERS; i++)
            dx_sleep(10);
        /* The dead client's running calls are cancelled too. */
        wait_closed_early(2);
    }
    atomic_store(&s->done, 1);
}

Test(lmclient, killing_the_client_answers_every_caller_with_edown)
{
    /* Two calls running (slow upstream), the rest queued by the limiter. */
    dx_ratelimit_config rl = {.max_concurrency = 2, .max_waiters = 16};
    live_only();
    sc.opts.ratelimit = &rl;
    cr_assert_eq(dx_lmserver_inject(srv, "slow:2000", KILL_CALLERS), DX_OK);
    run_killing(kill_main);
    cr_assert_eq(kill_rc, DX_OK, "%s", dx_err_name(kill_rc));
    cr_assert_eq(atomic_load(&kill_done), KILL_CALLERS);
    for (int i = 0; i < KILL_CALLERS; i++) {
        cr_assert_eq(kill_seen[i].rc, DX_EDOWN, "caller %d: %s", i,
                     dx_err_name(kill_seen[i].rc));
        /* Answered by the kill, not by the slow upstream or a deadline. */
        cr_assert_lt(kill_returned_ms[i] - kill_at, 15000,
                     "caller %d returned %lld ms after the kill", i,
                     (long long)(kill_returned_ms[i] - kill_at));
    }
    cr_assert_geq(kill_closed, 2, "upstream calls still open after the kill");
}

Test(lmclient, start_refuses_a_bad_rate_limit)
{
    dx_ratelimit_config rl = {.rpm = 10, .rpm_burst = 20};
    live_only();
    sc.opts.ratelimit = &rl;
    dx_pid pid;
    cr_assert_eq(dx_spawn(scenario_main, &sc, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 10000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC);
    cr_assert(atomic_load(&sc.done));
    cr_assert_eq(sc.start_rc, DX_EINVAL, "%s", dx_err_name(sc.start_rc));
}

#define JOINERS 5
static seen join_seen[JOINERS];
static _Atomic int join_done;

static void join_member(void *arg)
{
    complete_into(bg_client, "queued together", 10000, arg);
    atomic_fetch_add(&join_done, 1);
}

static bool joined(const dx_lm_client_stats *st)
{
    return st->queued == 1 && st->coalesced == JOINERS - 1;
}

static void join_body(scenario *s, dx_pid client)
{
    bg_client = client;
    if (dx_spawn(bg_slow, NULL, NULL) != DX_OK ||
        !wait_stats(client, one_running)) {
        s->calls[0].rc = DX_ESTATE;
        return;
    }
    for (int i = 0; i < JOINERS; i++)
        if (dx_spawn(join_member, &join_seen[i], NULL) != DX_OK) {
            join_seen[i].rc = DX_ENOMEM;
            atomic_fetch_add(&join_done, 1);
        }
    /* One queue place, yet all five wait: four joined the queued one. */
    s->calls[0].rc = wait_stats(client, joined) ? DX_OK : DX_ETIMEDOUT;
    for (int i = 0; i < 1000 && (atomic_load(&join_done) < JOINERS ||
                                 atomic_load(&bg_done) < 1);
         i++)
        dx_sleep(10);
}

Test(lmclient, callers_joining_a_queued_request_take_no_admission)
{
    dx_ratelimit_config rl = {.max_concurrency = 1, .max_waiters = 1};
    live_only();
    sc.opts.ratelimit = &rl;
    cr_assert_eq(dx_lmserver_inject(srv, "slow:1000", 1), DX_OK);
    sc.body = join_body;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s", dx_err_name(sc.calls[0].rc));
    cr_assert_eq(bg_seen[0].rc, DX_OK);
    for (int i = 0; i < JOINERS; i++) {
        cr_assert_eq(join_seen[i].rc, DX_OK, "caller %d: %s", i,
                     dx_err_name(join_seen[i].rc));
        cr_assert_str_eq(join_seen[i].text, "answer: queued together");
    }
    cr_assert_eq(sc.stats.rate_rejected, 0);
    cr_assert_eq(sc.stats.rate_waits, 1);
    cr_assert_eq(upstream_requests(), 2);
}

/* ---- history, usage, telemetry, per-call cache control ---------------------- */

static void copy_history(dx_pid client, size_t n, char *buf, size_t cap,
                         int *rc)
{
    char *text = NULL;
    *rc = dx_lm_client_inspect_history(client, n, &text);
    if (*rc == DX_OK)
        snprintf(buf, cap, "%s", text);
    dx_free(text);
}

static void two_questions(scenario *s, dx_pid client)
{
    complete_into(client, "What is 2+2?", 10000, &s->calls[0]);
    complete_into(client, "Name a colour", 10000, &s->calls[1]);
    copy_history(client, 0, s->history, sizeof s->history, &s->history_rc);
    int rc;
    copy_history(client, 1, s->history_last, sizeof s->history_last, &rc);
    if (s->history_rc == DX_OK)
        s->history_rc = rc;
}

Test(lmclient, the_history_holds_every_call_in_order)
{
    live_only();
    sc.body = two_questions;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK);
    cr_assert_eq(sc.calls[1].rc, DX_OK);
    cr_assert_eq(sc.history_rc, DX_OK, "%s", dx_err_name(sc.history_rc));
    const char *a = strstr(sc.history, "answer: What is 2+2?");
    const char *b = strstr(sc.history, "answer: Name a colour");
    cr_assert(a && b && a < b, "%s", sc.history);
    cr_assert(strstr(sc.history, "openai-compatible/live-model"));
    /* n = 1: only the latest call. */
    cr_assert_null(strstr(sc.history_last, "answer: What is 2+2?"), "%s",
                   sc.history_last);
    cr_assert(strstr(sc.history_last, "answer: Name a colour"));
}

static void failing_call_then_history(scenario *s, dx_pid client)
{
    complete_into(client, "What is 2+2?", 10000, &s->calls[0]);
    copy_history(client, 0, s->history, sizeof s->history, &s->history_rc);
}

Test(lmclient, the_history_records_a_failed_call_with_its_error)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "auth", 1), DX_OK);
    sc.body = failing_call_then_history;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_EPROVIDER, "%s",
                 dx_err_name(sc.calls[0].rc));
    cr_assert_eq(sc.history_rc, DX_OK);
    cr_assert(strstr(sc.history, "Error: auth"), "%s", sc.history);
    cr_assert_null(strstr(sc.history, "Response:"), "%s", sc.history);
}

static void usage_calls(scenario *s, dx_pid client)
{
    complete_into(client, "What is 2+2?", 10000, &s->calls[0]);
    complete_into(client, "Name a colour", 10000, &s->calls[1]);
    complete_into(client, "What is 2+2?", 10000, &s->calls[2]); /* a hit */
    s->usage_rc = dx_lm_client_usage(client, &s->usage);
}

Test(lmclient, usage_adds_up_tokens_and_counts_a_cache_hit_as_free)
{
    live_only();
    /* One dollar per input token, output free: cost = input tokens. */
    sc.opts.prices = "{\"live-model\": {\"input\": 1000000, \"output\": 0}}";
    sc.body = usage_calls;
    run(&sc);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sc.calls[i].rc, DX_OK);
    cr_assert(sc.calls[2].cached);
    cr_assert_eq(sc.usage_rc, DX_OK);
    cr_assert_eq(sc.usage.calls, 3);
    cr_assert_eq(sc.usage.cached_calls, 1);
    cr_assert_eq(sc.usage.unpriced_calls, 0);
    int64_t in = sc.calls[0].input_tokens + sc.calls[1].input_tokens;
    int64_t out = sc.calls[0].output_tokens + sc.calls[1].output_tokens;
    cr_assert_gt(sc.calls[0].input_tokens, 0);
    cr_assert_gt(sc.calls[1].output_tokens, 0);
    cr_assert_eq(sc.usage.input_tokens, in);
    cr_assert_eq(sc.usage.output_tokens, out);
    cr_assert_float_eq(sc.usage.cost_usd, (double)in, 1e-6);
}

Test(lmclient, start_refuses_bad_prices)
{
    live_only();
    sc.opts.prices = "{\"live-model\": {\"input\": -1, \"output\": 0}}";
    dx_pid pid;
    cr_assert_eq(dx_spawn(scenario_main, &sc, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 10000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC);
    cr_assert(atomic_load(&sc.done));
    cr_assert_eq(sc.start_rc, DX_EINVAL, "%s", dx_err_name(sc.start_rc));
}

/* The scenario process subscribes itself, calls, then drains its events:
 * the server emits each stop before it replies, so they are all there. */
static void watched_calls(scenario *s, dx_pid client)
{
    if (dx_telemetry_subscribe(dx_self(), "lm.") != DX_OK)
        return;
    two_calls(s, client);
    drain_events(s);
}

Test(lmclient, telemetry_sees_start_and_stop_and_a_cache_hit)
{
    live_only();
    sc.body = watched_calls;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK);
    cr_assert(sc.calls[1].cached);
    cr_assert_eq(sc.n_events, 4);
    const dx_telemetry_event *e = sc.events;
    cr_assert_eq(e[0].kind, DX_TELEMETRY_START);
    cr_assert_eq(e[1].kind, DX_TELEMETRY_STOP);
    cr_assert(dx_ref_eq(e[0].ref, e[1].ref));
    cr_assert_str_eq(e[1].name, "lm.call");
    cr_assert_str_eq(e[1].model, "openai-compatible/live-model");
    cr_assert_not(e[1].cache_hit);
    cr_assert_eq(e[1].input_tokens, sc.calls[0].input_tokens);
    cr_assert_eq(e[1].output_tokens, sc.calls[0].output_tokens);
    cr_assert_eq(e[1].retries, 0);
    cr_assert_geq(e[1].duration_us, 0);
    cr_assert_eq(e[2].kind, DX_TELEMETRY_START);
    cr_assert_eq(e[3].kind, DX_TELEMETRY_STOP);
    cr_assert(dx_ref_eq(e[2].ref, e[3].ref));
    cr_assert_not(dx_ref_eq(e[0].ref, e[2].ref));
    cr_assert(e[3].cache_hit);
    cr_assert_eq(e[3].input_tokens, 0);
}

static void watched_failure(scenario *s, dx_pid client)
{
    if (dx_telemetry_subscribe(dx_self(), "lm.call") != DX_OK)
        return;
    one_call(s, client);
    drain_events(s);
}

Test(lmclient, telemetry_reports_a_failed_call_as_an_exception)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "server_error", 2), DX_OK);
    sc.body = watched_failure;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_EPROVIDER);
    cr_assert_eq(sc.n_events, 2);
    cr_assert_eq(sc.events[0].kind, DX_TELEMETRY_START);
    cr_assert_eq(sc.events[1].kind, DX_TELEMETRY_EXCEPTION);
    cr_assert_eq(sc.events[1].error_kind, DX_LM_ERR_SERVER_ERROR);
    cr_assert_eq(sc.events[1].retries, 1);
    cr_assert(dx_ref_eq(sc.events[0].ref, sc.events[1].ref));
}

static void cache_modes(scenario *s, dx_pid client)
{
    static const struct {
        const char *ns;
        int mode;
    } plan[] = {
        {"a", DX_LMCACHE_USE},     {"b", DX_LMCACHE_USE},
        {"a", DX_LMCACHE_USE},     {"a", DX_LMCACHE_BYPASS},
        {"e", DX_LMCACHE_BYPASS},  {"e", DX_LMCACHE_USE},
        {"a", DX_LMCACHE_REFRESH}, {"d", DX_LMCACHE_REFRESH},
        {"d", DX_LMCACHE_USE},     {"a", 42},
    };
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++) {
        dx_lm_client_call_opts co = {
            .ns = plan[i].ns, .cache_mode = (dx_lmcache_mode)plan[i].mode};
        complete_opt_into(client, "What is 2+2?", &co, 10000, &s->calls[i]);
    }
}

Test(lmclient, per_call_namespaces_and_cache_modes)
{
    live_only();
    sc.body = cache_modes;
    run(&sc);
    for (int i = 0; i < 9; i++)
        cr_assert_eq(sc.calls[i].rc, DX_OK, "call %d: %s", i,
                     dx_err_name(sc.calls[i].rc));
    cr_assert_not(sc.calls[0].cached);
    cr_assert_not(sc.calls[1].cached, "another namespace misses");
    cr_assert(sc.calls[2].cached, "the same namespace hits");
    cr_assert_not(sc.calls[3].cached, "BYPASS never reads");
    cr_assert_not(sc.calls[4].cached);
    cr_assert_not(sc.calls[5].cached, "BYPASS never writes");
    cr_assert_not(sc.calls[6].cached, "REFRESH skips the read");
    cr_assert_not(sc.calls[7].cached);
    cr_assert(sc.calls[8].cached, "REFRESH writes");
    cr_assert_eq(sc.calls[9].rc, DX_EINVAL, "%s", dx_err_name(sc.calls[9].rc));
    cr_assert_eq(upstream_requests(), 7);
}

static void two_questions_then_a_hit(scenario *s, dx_pid client)
{
    complete_into(client, "What is 2+2?", 10000, &s->calls[0]);
    complete_into(client, "Name a colour", 10000, &s->calls[1]);
    complete_into(client, "Name a colour", 10000, &s->calls[2]);
    copy_history(client, 0, s->history, sizeof s->history, &s->history_rc);
}

Test(lmclient, history_size_bounds_the_history_and_marks_cache_hits)
{
    live_only();
    sc.opts.history_size = 2;
    sc.body = two_questions_then_a_hit;
    run(&sc);
    cr_assert(sc.calls[2].cached);
    cr_assert_eq(sc.history_rc, DX_OK);
    cr_assert_null(strstr(sc.history, "What is 2+2?"), "%s", sc.history);
    const char *first = strstr(sc.history, "answer: Name a colour");
    cr_assert(first, "%s", sc.history);
    cr_assert(strstr(first + 1, "answer: Name a colour"), "%s", sc.history);
    cr_assert(strstr(sc.history, ", cached)"), "%s", sc.history);
}

Test(lmclient, start_refuses_a_history_size_over_the_maximum)
{
    live_only();
    sc.opts.history_size = DX_LMHISTORY_MAX_CAPACITY + 1;
    dx_pid pid;
    cr_assert_eq(dx_spawn(scenario_main, &sc, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 10000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC);
    cr_assert(atomic_load(&sc.done));
    cr_assert_eq(sc.start_rc, DX_EINVAL, "%s", dx_err_name(sc.start_rc));
}

/* ---- a client under a supervisor --------------------------------------------- */

#define SUP_NAME "lm.supervised"
#define SUP_CALLERS 3
static seen sup_seen[SUP_CALLERS];
static _Atomic int sup_done;

typedef struct sup_run {
    dx_child_spec spec;
    int spec_rc, sup_rc, stop_rc, kill_rc;
    seen before, cached_after, fresh_after;
    bool all_in, restarted;
    dx_pid first, second;
    uint64_t upstream_before_cached, upstream_after_cached;
    uint64_t restarts;
    _Atomic int done;
} sup_run;

static sup_run sr;

static void named_into(const char *question, int64_t timeout_ms, seen *out)
{
    dx_lm_request *req = dx_lm_request_new(NULL);
    if (!req || dx_lm_request_add_message(req, DX_LM_USER, question) != DX_OK) {
        out->rc = DX_ENOMEM;
        dx_lm_request_free(req);
        return;
    }
    dx_lm_result *res = NULL;
    out->rc =
        dx_lm_client_complete_named(SUP_NAME, req, timeout_ms, &res, &out->err);
    dx_lm_request_free(req);
    if (out->rc == DX_OK) {
        snprintf(out->text, sizeof out->text, "%s",
                 res->response->choices[0].text);
        out->cached = res->cached;
    }
    dx_lm_result_free(res);
}

static void sup_member(void *arg)
{
    seen *s = arg;
    char q[64];
    snprintf(q, sizeof q, "slow question %d", (int)(s - sup_seen));
    named_into(q, 20000, s);
    atomic_fetch_add(&sup_done, 1);
}

static bool all_sup_in(const dx_lm_client_stats *st)
{
    return st->in_flight == SUP_CALLERS;
}

static void sup_main(void *arg)
{
    sup_run *r = arg;
    dx_pid sup = DX_NOPID;
    r->sup_rc = dx_sup_start_link(&(dx_sup_spec){.strategy = DX_SUP_ONE_FOR_ONE,
                                                 .intensity = 3,
                                                 .period_s = 5,
                                                 .children = &r->spec,
                                                 .nchildren = 1},
                                  &sup, NULL);
    if (r->sup_rc != DX_OK)
        goto out;
    r->first = dx_whereis(SUP_NAME);
    named_into("Remember me", 10000, &r->before);
    if (dx_lmserver_inject(srv, "slow:3000", SUP_CALLERS) != DX_OK)
        goto stop;
    for (int i = 0; i < SUP_CALLERS; i++)
        if (dx_spawn(sup_member, &sup_seen[i], NULL) != DX_OK) {
            sup_seen[i].rc = DX_ENOMEM;
            atomic_fetch_add(&sup_done, 1);
        }
    r->all_in = wait_stats(r->first, all_sup_in);
    r->kill_rc = dx_kill(r->first);
    for (int i = 0; i < 1000 && atomic_load(&sup_done) < SUP_CALLERS; i++)
        dx_sleep(10);
    /* The supervisor registers the new client under the same name. */
    for (int i = 0; i < 1000; i++) {
        r->second = dx_whereis(SUP_NAME);
        if (!dx_pid_is_none(r->second) && !dx_pid_eq(r->second, r->first))
            break;
        dx_sleep(5);
    }
    r->restarted =
        !dx_pid_is_none(r->second) && !dx_pid_eq(r->second, r->first);
    r->upstream_before_cached = upstream_requests();
    named_into("Remember me", 10000, &r->cached_after);
    r->upstream_after_cached = upstream_requests();
    named_into("A new question", 10000, &r->fresh_after);
    dx_sup_child *kids = NULL;
    size_t n = 0;
    if (dx_sup_which_children(sup, &kids, &n) == DX_OK && n == 1)
        r->restarts = kids[0].restarts;
    dx_free(kids);
stop:
    r->stop_rc = dx_sup_stop(sup, NULL, 10000);
out:
    atomic_store(&r->done, 1);
}

Test(lmclient, a_supervised_client_is_restarted_under_its_name)
{
    char dir[] = "/tmp/dx_lmclient_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/cache.db", dir);
    live_only();
    sc.opts.cache_path = path;
    sr.spec_rc = dx_lm_client_child_spec(&sr.spec, "lm", &sc.opts, SUP_NAME);
    cr_assert_eq(sr.spec_rc, DX_OK);
    /* The spec holds its own copy: the caller's options may go now. */
    memset(&sc.opts, 0, sizeof sc.opts);
    dx_pid pid;
    cr_assert_eq(dx_spawn(sup_main, &sr, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 60000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_err_name(rc));
    cr_assert(atomic_load(&sr.done));
    dx_lm_client_child_spec_free(&sr.spec);
    cr_assert_null(sr.spec.arg);
    cr_assert_eq(sr.sup_rc, DX_OK, "%s", dx_err_name(sr.sup_rc));
    cr_assert_eq(sr.stop_rc, DX_OK, "%s", dx_err_name(sr.stop_rc));
    cr_assert_eq(sr.before.rc, DX_OK, "%s", dx_err_name(sr.before.rc));
    cr_assert_not(sr.before.cached);
    cr_assert(sr.all_in, "the slow calls never were all in flight");
    cr_assert_eq(sr.kill_rc, DX_OK);
    cr_assert_eq(atomic_load(&sup_done), SUP_CALLERS);
    for (int i = 0; i < SUP_CALLERS; i++)
        cr_assert_eq(sup_seen[i].rc, DX_EDOWN, "caller %d: %s", i,
                     dx_err_name(sup_seen[i].rc));
    cr_assert(sr.restarted, "no new client under the name");
    cr_assert_eq(sr.restarts, 1);
    /* The restarted client's memory tier is empty: the file answered. */
    cr_assert_eq(sr.cached_after.rc, DX_OK, "%s",
                 dx_err_name(sr.cached_after.rc));
    cr_assert(sr.cached_after.cached);
    cr_assert_str_eq(sr.cached_after.text, "answer: Remember me");
    cr_assert_eq(sr.upstream_after_cached, sr.upstream_before_cached);
    cr_assert_eq(sr.fresh_after.rc, DX_OK, "%s",
                 dx_err_name(sr.fresh_after.rc));
    cr_assert_not(sr.fresh_after.cached);
    cr_assert_str_eq(sr.fresh_after.text, "answer: A new question");
    /* Stopped with its supervisor: nobody holds the name any more. */
    cr_assert(dx_pid_is_none(dx_whereis(SUP_NAME)));
    char wal[80], shm[80];
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);
    remove(wal);
    remove(shm);
    remove(path);
    rmdir(dir);
}

Test(lmclient, a_child_spec_refuses_bad_options)
{
    dx_child_spec spec;
    dx_lm_client_opts none = {0};
    cr_assert_eq(dx_lm_client_child_spec(&spec, "lm", NULL, NULL), DX_EINVAL);
    cr_assert_eq(dx_lm_client_child_spec(&spec, "lm", &none, NULL), DX_EINVAL);
    cr_assert_null(spec.arg);
    live_only();
    sc.opts.n_fallbacks = 1; /* but no array */
    cr_assert_eq(dx_lm_client_child_spec(&spec, "lm", &sc.opts, NULL),
                 DX_EINVAL);
    sc.opts.n_fallbacks = 0;
    char long_name[300];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    cr_assert_eq(dx_lm_client_child_spec(&spec, "lm", &sc.opts, long_name),
                 DX_EINVAL);
    cr_assert_eq(dx_lm_client_child_spec(&spec, "lm", &sc.opts, NULL), DX_OK);
    cr_assert_not_null(spec.arg);
    cr_assert_str_eq(spec.id, "lm");
    dx_lm_client_child_spec_free(&spec);
    dx_lm_client_child_spec_free(&spec); /* arg cleared: a no-op */
    dx_lm_client_child_spec_free(NULL);
}

/* A spec holds its own copy of every option: after the caller's
 * endpoints, policies and limits are gone, the supervised client still
 * falls back from the dead primary to the live backup. */
typedef struct full_spec_run {
    dx_child_spec spec;
    int sup_rc, stop_rc;
    seen call;
    dx_lm_client_stats stats;
    _Atomic int done;
} full_spec_run;

static full_spec_run fs;

static void full_spec_main(void *arg)
{
    full_spec_run *r = arg;
    dx_pid sup = DX_NOPID;
    r->sup_rc = dx_sup_start_link(&(dx_sup_spec){.strategy = DX_SUP_ONE_FOR_ONE,
                                                 .intensity = 1,
                                                 .period_s = 5,
                                                 .children = &r->spec,
                                                 .nchildren = 1},
                                  &sup, NULL);
    if (r->sup_rc == DX_OK) {
        named_into("Who backs up?", 10000, &r->call);
        dx_lm_client_stats_get(dx_whereis(SUP_NAME), &r->stats);
        r->stop_rc = dx_sup_stop(sup, NULL, 10000);
    }
    atomic_store(&r->done, 1);
}

static int make_full_spec(dx_child_spec *spec)
{
    /* Everything below lives on this stack frame only. */
    char primary_url[64], backup_url[128], backup_model[64];
    snprintf(primary_url, sizeof primary_url, "%s", dead_url);
    snprintf(backup_url, sizeof backup_url, "%s", live_url);
    snprintf(backup_model, sizeof backup_model, "openai-compatible/backup");
    dx_lm_endpoint backup = {backup_model, backup_url, "sk-test"};
    dx_retry_policy retry = quick;
    dx_breaker_config breaker;
    dx_breaker_config_default(&breaker);
    dx_lmcache_limits limits = {.max_entries = 10, .max_bytes = 1 << 20};
    dx_ratelimit_config rl = {
        .rpm = 600, .max_concurrency = 4, .max_waiters = 8};
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/dead", primary_url, "sk-test"},
        .fallbacks = &backup,
        .n_fallbacks = 1,
        .retry = &retry,
        .breaker = &breaker,
        .cache_limits = &limits,
        .ratelimit = &rl,
    };
    int rc = dx_lm_client_child_spec(spec, "lm", &o, SUP_NAME);
    memset(&backup, 0xAB, sizeof backup);
    memset(backup_url, 0, sizeof backup_url);
    memset(&o, 0, sizeof o);
    memset(&rl, 0xFF, sizeof rl);
    return rc;
}

Test(lmclient, a_child_spec_keeps_its_own_copy_of_every_option)
{
    cr_assert_eq(make_full_spec(&fs.spec), DX_OK);
    dx_pid pid;
    cr_assert_eq(dx_spawn(full_spec_main, &fs, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 60000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_err_name(rc));
    cr_assert(atomic_load(&fs.done));
    dx_lm_client_child_spec_free(&fs.spec);
    cr_assert_eq(fs.sup_rc, DX_OK, "%s", dx_err_name(fs.sup_rc));
    cr_assert_eq(fs.stop_rc, DX_OK, "%s", dx_err_name(fs.stop_rc));
    cr_assert_eq(fs.call.rc, DX_OK, "%s: %s", dx_err_name(fs.call.rc),
                 fs.call.err.message);
    cr_assert_str_eq(fs.call.text, "answer: Who backs up?");
    cr_assert_eq(fs.stats.fallbacks, 1);
    cr_assert_eq(fs.stats.workers, 2);
}

/* The first caller of a question runs the upstream call itself (it leads
 * the flight). Killed mid-call, the caller who joined its flight gets a
 * worker for it, once, and the answer; a second death of the one doing the
 * call fails the flight instead (a worker killed, as here, too). */
static dx_pid lead_client, lead_pid;
static seen leader_seen;

static void leading_caller(void *arg)
{
    (void)arg;
    complete_into(lead_client, "What is 2+2?", 10000, &leader_seen);
}

static bool one_joined(const dx_lm_client_stats *st)
{
    return st->coalesced == 1;
}

static void kill_one_worker(void *arg)
{
    (void)arg;
    for (int i = 0; i < 2000; i++) {
        dx_proc_info *ps = NULL;
        size_t n = 0;
        dx_pid victim = DX_NOPID;
        if (dx_process_list(&ps, &n) == DX_OK) {
            for (size_t k = 0; k < n; k++)
                if (strcmp(ps[k].label, "dx_lm_client:worker") == 0)
                    victim = ps[k].pid;
            dx_free(ps);
        }
        if (!dx_pid_is_none(victim)) {
            dx_kill(victim);
            return;
        }
        dx_sleep(1);
    }
}

static void kill_the_leader(void *arg)
{
    if (wait_stats(lead_client, one_joined)) {
        dx_kill(lead_pid);
        if (arg != NULL)
            kill_one_worker(NULL);
    }
}

static void call_while_the_leader_dies(scenario *s, dx_pid client)
{
    lead_client = client;
    dx_spawn(leading_caller, NULL, &lead_pid);
    if (!wait_stats(client, one_running))
        return;
    dx_spawn(kill_the_leader, s->calls[1].text[0] ? "" : NULL, NULL);
    complete_into(client, "What is 2+2?", 10000, &s->calls[0]);
}

Test(lmclient, a_leader_killed_mid_call_is_replaced_by_a_worker_once)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:600", 2), DX_OK);
    sc.body = call_while_the_leader_dies;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s", dx_err_name(sc.calls[0].rc));
    cr_assert_str_eq(sc.calls[0].text, "answer: What is 2+2?");
    cr_assert_eq(sc.stats.coalesced, 1);
    cr_assert_eq(sc.stats.worker_respawns, 1);
    cr_assert_eq(sc.stats.workers, 2);
}

Test(lmclient, a_worker_killed_after_the_leader_fails_the_flight)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:600", 2), DX_OK);
    snprintf(sc.calls[1].text, sizeof sc.calls[1].text, "and the worker");
    sc.body = call_while_the_leader_dies;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_EDOWN, "%s", dx_err_name(sc.calls[0].rc));
    cr_assert_eq(sc.stats.worker_respawns, 1);
    cr_assert_eq(sc.stats.workers, 2);
    cr_assert_eq(sc.stats.in_flight, 0);
}

/* ---- a lead nobody took ------------------------------------------------ */

/* A caller whose call times out just before the client's TAG_LEAD reply
 * reaches it never runs its flight, and the runtime drops the reply; the
 * process lives on, so no DOWN says so either. Whoever joined that flight
 * must still be answered: the client's sweep hands it to a worker
 * LEAD_GRACE_MS (2 s) past the flight's deadline. One scheduler makes the
 * loss certain: the caller sends its call and finds no reply without the
 * client running in between. */

static void setup_one_scheduler(void)
{
    cr_assert_eq(dx_lmserver_start(NULL, &srv), DX_OK);
    snprintf(live_url, sizeof live_url, "http://127.0.0.1:%d/v1",
             dx_lmserver_port(srv));
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 1}), DX_OK);
}

enum { TAG_GAVE_UP = 7001, TAG_GO_AWAY = 7002 };

typedef struct giver_up {
    dx_pid client, tell;
    seen call;
} giver_up;

static void caller_that_gives_up_at_once(void *arg)
{
    giver_up *g = arg;
    dx_yield(); /* a full budget: nothing runs between send and give-up */
    complete_into(g->client, "What is 2+2?", 0, &g->call);
    dx_send_tag(g->tell, TAG_GAVE_UP);
    dx_msg *m = NULL; /* alive until told: its death would tell the client */
    if (dx_receive_tag(TAG_GO_AWAY, 30000, &m) == DX_OK)
        dx_msg_free(m);
}

static giver_up lost;

static void join_a_lost_lead(scenario *s, dx_pid client)
{
    lost.client = client;
    lost.tell = dx_self();
    dx_pid pid;
    if (dx_spawn(caller_that_gives_up_at_once, &lost, &pid) != DX_OK)
        return;
    dx_msg *m = NULL;
    if (dx_receive_tag(TAG_GAVE_UP, 10000, &m) != DX_OK)
        return;
    dx_msg_free(m);
    complete_into(client, "What is 2+2?", 10000, &s->calls[0]);
    dx_send_tag(pid, TAG_GO_AWAY);
}

Test(lmclient_lost_lead, a_flight_whose_lead_was_lost_goes_to_a_worker,
     .init = setup_one_scheduler, .fini = teardown, .timeout = 60)
{
    live_only();
    sc.body = join_a_lost_lead;
    run(&sc);
    cr_assert_eq(lost.call.rc, DX_ETIMEDOUT, "%s", dx_err_name(lost.call.rc));
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s", dx_err_name(sc.calls[0].rc));
    cr_assert_str_eq(sc.calls[0].text, "answer: What is 2+2?");
    /* It joined the lost flight, which its leader never ran upstream: the
     * one request the server saw was the worker's. */
    cr_assert_eq(sc.stats.coalesced, 1);
    cr_assert_eq(sc.stats.workers, 2);
    cr_assert_eq(sc.stats.in_flight, 0);
    cr_assert_eq(upstream_requests(), 1);
}

/* ---- calls made directly by their callers -------------------------------------
 *
 * A plain call bypassing the cache, to a client with one endpoint and no
 * rate limit whose breaker is closed, is made by its caller without asking
 * the client first and reported to it afterwards. The client must know of
 * such calls all the same: history, usage, telemetry, stats and breaker. */

static void two_direct_calls(scenario *s, dx_pid client)
{
    if (dx_telemetry_subscribe(dx_self(), "lm.call") != DX_OK)
        return;
    complete_opt_into(client, "What is 2+2?", &bypass, 10000, &s->calls[0]);
    complete_opt_into(client, "Name a colour", &bypass, 10000, &s->calls[1]);
    copy_history(client, 0, s->history, sizeof s->history, &s->history_rc);
    s->usage_rc = dx_lm_client_usage(client, &s->usage);
    drain_events(s);
}

/* The stop (or exception) paired with start event i, or NULL. */
static const dx_telemetry_event *end_of(const scenario *s, int i)
{
    for (int k = 0; k < s->n_events; k++)
        if (s->events[k].kind != DX_TELEMETRY_START &&
            dx_ref_eq(s->events[k].ref, s->events[i].ref))
            return &s->events[k];
    return NULL;
}

Test(lmclient, a_call_bypassing_the_cache_is_made_by_its_caller_and_recorded)
{
    live_only();
    sc.opts.prices = "{\"live-model\": {\"input\": 1000000, \"output\": 0}}";
    sc.body = two_direct_calls;
    run(&sc);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(sc.calls[i].rc, DX_OK, "call %d: %s", i,
                     dx_err_name(sc.calls[i].rc));
        cr_assert_not(sc.calls[i].cached);
        cr_assert_eq(sc.calls[i].attempts, 1);
        cr_assert_str_eq(sc.calls[i].model, "openai-compatible/live-model");
    }
    cr_assert_str_eq(sc.calls[1].text, "answer: Name a colour");
    cr_assert_eq(upstream_requests(), 2);
    /* Made by the callers, counted by the client all the same. */
    cr_assert_eq(sc.stats.direct, 2);
    cr_assert_eq(sc.stats.requests, 2);
    cr_assert_eq(sc.stats.workers, 2);
    cr_assert_eq(sc.stats.failures, 0);
    cr_assert_eq(sc.stats.in_flight, 0);
    cr_assert_eq(sc.history_rc, DX_OK);
    const char *a = strstr(sc.history, "answer: What is 2+2?");
    const char *b = strstr(sc.history, "answer: Name a colour");
    cr_assert(a && b && a < b, "%s", sc.history);
    cr_assert_eq(sc.usage_rc, DX_OK);
    cr_assert_eq(sc.usage.calls, 2);
    cr_assert_eq(sc.usage.cached_calls, 0);
    int64_t in = sc.calls[0].input_tokens + sc.calls[1].input_tokens;
    cr_assert_gt(sc.calls[0].input_tokens, 0);
    cr_assert_eq(sc.usage.input_tokens, in);
    cr_assert_eq(sc.usage.output_tokens,
                 sc.calls[0].output_tokens + sc.calls[1].output_tokens);
    cr_assert_float_eq(sc.usage.cost_usd, (double)in, 1e-6);
    /* A start and a stop from the caller, paired by ref. */
    cr_assert_eq(sc.n_events, 4, "%d events", sc.n_events);
    int starts = 0;
    int64_t stop_in = 0;
    for (int i = 0; i < 4; i++) {
        if (sc.events[i].kind != DX_TELEMETRY_START)
            continue;
        starts++;
        cr_assert_str_eq(sc.events[i].model, "openai-compatible/live-model");
        const dx_telemetry_event *end = end_of(&sc, i);
        cr_assert_not_null(end, "start %d has no stop", i);
        cr_assert_eq(end->kind, DX_TELEMETRY_STOP);
        cr_assert_not(end->cache_hit);
        cr_assert_gt(end->duration_us, 0);
        stop_in += end->input_tokens;
    }
    cr_assert_eq(starts, 2);
    cr_assert_eq(stop_in, in);
}

/* Each of three clients takes two cache-bypassing calls and one using the
 * cache. */
static void bypass_twice_then_use(scenario *s, dx_pid client)
{
    complete_opt_into(client, "one", &bypass, 10000, &s->calls[0]);
    complete_opt_into(client, "two", &bypass, 10000, &s->calls[1]);
    complete_into(client, "three", 10000, &s->calls[2]);
}

static int64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One direct call, its telemetry taken as soon as it returns, its history
 * read a while later. */
static void direct_call_then_wait(scenario *s, dx_pid client)
{
    if (dx_telemetry_subscribe(dx_self(), "lm.call") != DX_OK)
        return;
    s->t_before_ms = wall_now_ms();
    complete_opt_into(client, "What is 2+2?", &bypass, 10000, &s->calls[0]);
    s->t_after_ms = wall_now_ms();
    dx_msg *m = NULL;
    while (s->n_events < 8 &&
           dx_receive_tag(DX_TELEMETRY_TAG, 0, &m) == DX_OK) {
        if (m->ptr)
            s->events[s->n_events++] = *(dx_telemetry_event *)m->ptr;
        dx_msg_free(m);
    }
    dx_sleep(300);
    copy_history(client, 0, s->history, sizeof s->history, &s->history_rc);
}

/* The client handles a direct call's report whenever it next runs: the
 * call's stop event and its history timestamp are the call's own, not the
 * time the report was handled. */
Test(lmclient, a_direct_calls_stop_event_and_timestamp_are_taken_when_it_ends)
{
    live_only();
    sc.body = direct_call_then_wait;
    run(&sc);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "%s", dx_err_name(sc.calls[0].rc));
    /* Both events were in the caller's mailbox when the call returned. */
    cr_assert_eq(sc.n_events, 2, "%d events", sc.n_events);
    cr_assert_eq(sc.events[0].kind, DX_TELEMETRY_START);
    cr_assert_eq(sc.events[1].kind, DX_TELEMETRY_STOP);
    cr_assert(dx_ref_eq(sc.events[0].ref, sc.events[1].ref));
    cr_assert_gt(sc.events[1].input_tokens, 0);
    cr_assert_eq(sc.history_rc, DX_OK);
    struct tm tm = {0};
    int ms = -1;
    const char *stamp = strchr(sc.history, '[');
    cr_assert(stamp && sscanf(stamp, "[%d-%d-%dT%d:%d:%d.%dZ]", &tm.tm_year,
                              &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                              &tm.tm_sec, &ms) == 7,
              "%s", sc.history);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t at_ms = (int64_t)timegm(&tm) * 1000 + ms;
    cr_assert(at_ms >= sc.t_before_ms && at_ms <= sc.t_after_ms,
              "recorded at %lld, the call ran %lld..%lld", (long long)at_ms,
              (long long)sc.t_before_ms, (long long)sc.t_after_ms);
}

Test(lmclient, only_a_client_with_nothing_to_choose_lets_callers_call_directly)
{
    static scenario plain, with_fallback, limited;
    static const dx_lm_endpoint second = {"openai-compatible/second-model",
                                          NULL, "sk-test"};
    static dx_lm_endpoint fb;
    fb = second;
    fb.base_url = live_url;
    static dx_ratelimit_config rl = {.max_concurrency = 4, .max_waiters = 4};
    scenario *all[] = {&plain, &with_fallback, &limited};
    for (int i = 0; i < 3; i++) {
        all[i]->opts.primary = (dx_lm_endpoint){"openai-compatible/live-model",
                                                live_url, "sk-test"};
        all[i]->opts.retry = &quick;
        all[i]->body = bypass_twice_then_use;
    }
    with_fallback.opts.fallbacks = &fb;
    with_fallback.opts.n_fallbacks = 1;
    limited.opts.ratelimit = &rl;
    for (int i = 0; i < 3; i++) {
        run(all[i]);
        for (int k = 0; k < 3; k++)
            cr_assert_eq(all[i]->calls[k].rc, DX_OK, "client %d call %d: %s", i,
                         k, dx_err_name(all[i]->calls[k].rc));
        cr_assert_eq(all[i]->stats.requests, 3, "client %d", i);
        cr_assert_eq(all[i]->stats.workers, 3, "client %d", i);
    }
    /* The cache-using call asks the client; so does every call when there
     * is a fallback to choose or a limit to take. */
    cr_assert_eq(plain.stats.direct, 2);
    cr_assert_eq(with_fallback.stats.direct, 0);
    cr_assert_eq(limited.stats.direct, 0);
    cr_assert_eq(upstream_requests(), 9);
}

static void direct_breaker_cycle(scenario *s, dx_pid client)
{
    breaker_cycle_with(s, client, &bypass);
    complete_opt_into(client, "after", &bypass, 10000, &s->calls[4]);
}

Test(lmclient, a_direct_callers_failures_open_the_breaker_before_its_next_call)
{
    dx_breaker_config bc;
    quick_breaker(&bc);
    sc.body = direct_breaker_cycle;
    run(&sc);
    /* The second failure opened the breaker before its caller returned,
     * so the third call was refused, not made. */
    assert_the_breaker_cycled();
    cr_assert_eq(mid_stats[0].direct, 2);
    /* The probe went through the client, which closed the breaker on its
     * answer; the call after it is direct again. */
    cr_assert_eq(mid_stats[1].direct, 2);
    cr_assert_eq(sc.calls[4].rc, DX_OK, "%s", dx_err_name(sc.calls[4].rc));
    cr_assert_eq(sc.stats.direct, 3);
    cr_assert_eq(upstream_requests(), 4);
}

/* A direct caller killed mid-call: the client still hears of the call. */
static dx_pid victim_client;
static seen victim_seen;

/* arg: the victim's call options (&bypass or &giving). */
static void direct_victim(void *arg)
{
    complete_opt_into(victim_client, "slow question", arg, 10000, &victim_seen);
}

static bool one_in_flight(const dx_lm_client_stats *st)
{
    return st->in_flight == 1;
}

static bool one_direct_reported(const dx_lm_client_stats *st)
{
    return st->direct == 1 && st->in_flight == 0;
}

/* A direct caller with copts, killed once its call reached the server;
 * the history read once the client has the report. */
static void kill_a_caller_mid_call(scenario *s, dx_pid client,
                                   const dx_lm_client_call_opts *copts)
{
    victim_client = client;
    uint64_t before = upstream_requests();
    dx_pid victim;
    if (dx_spawn(direct_victim, (void *)copts, &victim) != DX_OK ||
        !wait_stats(client, one_in_flight) || !server_got(before, 1))
        return;
    dx_kill(victim);
    if (!wait_stats(client, one_direct_reported))
        return;
    copy_history(client, 0, s->history, sizeof s->history, &s->history_rc);
}

static void kill_a_direct_caller(scenario *s, dx_pid client)
{
    if (dx_telemetry_subscribe(dx_self(), "lm.call") != DX_OK)
        return;
    kill_a_caller_mid_call(s, client, &bypass);
    drain_events(s);
}

/* The killed caller's call, in the stats and the history with its
 * question and its end. */
static void assert_recorded_as_cancelled(void)
{
    cr_assert_eq(sc.stats.direct, 1);
    cr_assert_eq(sc.stats.failures, 1);
    cr_assert_eq(sc.stats.in_flight, 0);
    cr_assert_eq(sc.history_rc, DX_OK, "%s", dx_err_name(sc.history_rc));
    cr_assert(strstr(sc.history, "slow question"), "%s", sc.history);
    cr_assert(strstr(sc.history, "Error: cancelled"), "%s", sc.history);
}

Test(lmclient, a_direct_caller_killed_mid_call_is_recorded_as_cancelled)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:1000", 1), DX_OK);
    sc.body = kill_a_direct_caller;
    run(&sc);
    assert_recorded_as_cancelled();
    cr_assert_eq(sc.n_events, 2, "%d events", sc.n_events);
    cr_assert_eq(sc.events[0].kind, DX_TELEMETRY_START);
    cr_assert_eq(sc.events[1].kind, DX_TELEMETRY_EXCEPTION);
    cr_assert(dx_ref_eq(sc.events[0].ref, sc.events[1].ref));
    cr_assert_eq(sc.events[1].error_kind, DX_LM_ERR_CANCELLED);
}

/* A giving caller's request comes back without its messages: the history
 * holds them, and a share of the answer the caller freed long before the
 * history is read. */
static void two_giving_calls(scenario *s, dx_pid client)
{
    complete_opt_into(client, "What is 2+2?", &giving, 10000, &s->calls[0]);
    complete_opt_into(client, "Name a colour", &giving, 10000, &s->calls[1]);
    copy_history(client, 0, s->history, sizeof s->history, &s->history_rc);
}

Test(lmclient, a_giving_caller_leaves_its_messages_and_answer_to_the_history)
{
    live_only();
    sc.body = two_giving_calls;
    run(&sc);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(sc.calls[i].rc, DX_OK, "call %d: %s", i,
                     dx_err_name(sc.calls[i].rc));
        cr_assert_eq(sc.calls[i].messages_left, 0, "call %d", i);
        cr_assert_eq(sc.calls[i].attempts, 1);
    }
    cr_assert_str_eq(sc.calls[0].text, "answer: What is 2+2?");
    cr_assert_str_eq(sc.calls[1].text, "answer: Name a colour");
    cr_assert_eq(sc.stats.direct, 2);
    cr_assert_eq(sc.history_rc, DX_OK);
    /* Each question (the user message) and its answer, in order. */
    const char *q1 = strstr(sc.history, "What is 2+2?");
    const char *a1 = strstr(sc.history, "answer: What is 2+2?");
    const char *q2 = strstr(sc.history, "Name a colour");
    const char *a2 = strstr(sc.history, "answer: Name a colour");
    cr_assert(q1 && a1 && q2 && a2, "%s", sc.history);
    cr_assert(q1 < a1 && a1 < q2 && q2 < a2, "%s", sc.history);
}

/* Killed mid-call, a giving caller is still recorded with its question:
 * the report took the messages when the call began. */
static void kill_a_giving_caller(scenario *s, dx_pid client)
{
    kill_a_caller_mid_call(s, client, &giving);
}

Test(lmclient, a_giving_caller_killed_mid_call_is_recorded_with_its_question)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:1000", 1), DX_OK);
    sc.body = kill_a_giving_caller;
    run(&sc);
    assert_recorded_as_cancelled();
}

/* The client killed while a direct call runs: the caller cancels it and
 * gets DX_EDOWN, as a caller waiting on the client would. */
static int64_t dying_killed_at, dying_returned_at;
static _Atomic int dying_done;

static void direct_caller_of_a_dying_client(void *arg)
{
    (void)arg;
    complete_opt_into(victim_client, "slow question", &bypass, 30000,
                      &victim_seen);
    dying_returned_at = dx_now_ms();
    atomic_store(&dying_done, 1);
}

static void dying_client_main(void *arg)
{
    scenario *s = arg;
    dx_lmserver_stats before;
    dx_lmserver_stats_get(srv, &before);
    s->start_rc = dx_lm_client_start(&s->opts, NULL, &victim_client);
    if (s->start_rc == DX_OK &&
        dx_spawn(direct_caller_of_a_dying_client, NULL, NULL) == DX_OK &&
        wait_stats(victim_client, one_in_flight) &&
        server_got(before.requests, 1)) {
        dying_killed_at = dx_now_ms();
        dx_kill(victim_client);
        for (int i = 0; i < 3000 && !atomic_load(&dying_done); i++)
            dx_sleep(10);
        wait_closed_early(1);
    }
    atomic_store(&s->done, 1);
}

Test(lmclient, a_direct_call_is_cancelled_when_its_client_dies)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:5000", 1), DX_OK);
    run_killing(dying_client_main);
    cr_assert(atomic_load(&dying_done), "the caller never returned");
    cr_assert_eq(victim_seen.rc, DX_EDOWN, "%s", dx_err_name(victim_seen.rc));
    /* Answered by the kill, not by the slow upstream. */
    cr_assert_lt(dying_returned_at - dying_killed_at, 4000,
                 "returned %lld ms after the kill",
                 (long long)(dying_returned_at - dying_killed_at));
    cr_assert_geq(kill_closed, 1, "the upstream call still open");
}

/* A host thread is not a process: its call is refused, as a call to the
 * client would be, and the client records nothing. */
static _Atomic int host_turn; /* 1: the client is up; 2: the host called */
static dx_pid host_client;

static void wait_for_the_host(scenario *s, dx_pid client)
{
    (void)s;
    host_client = client;
    atomic_store(&host_turn, 1);
    for (int i = 0; i < 1000 && atomic_load(&host_turn) != 2; i++)
        dx_sleep(10);
}

Test(lmclient, a_call_from_a_host_thread_is_refused_and_not_recorded)
{
    live_only();
    sc.body = wait_for_the_host;
    dx_pid pid;
    cr_assert_eq(dx_spawn(scenario_main, &sc, &pid), DX_OK);
    while (atomic_load(&host_turn) != 1)
        usleep(1000);
    dx_lm_request *req = dx_lm_request_new(NULL);
    cr_assert_eq(dx_lm_request_add_message(req, DX_LM_USER, "from the host"),
                 DX_OK);
    dx_lm_result *res = NULL;
    dx_lm_error err;
    int rc =
        dx_lm_client_complete_opt(host_client, req, &bypass, 1000, &res, &err);
    dx_lm_request_free(req);
    atomic_store(&host_turn, 2);
    int wrc = dx_wait_exit(pid, 60000, NULL);
    cr_assert(wrc == DX_OK || wrc == DX_ENOPROC, "%s", dx_err_name(wrc));
    cr_assert(atomic_load(&sc.done));
    cr_assert_eq(rc, DX_ENOTPROC, "%s", dx_err_name(rc));
    cr_assert_null(res);
    cr_assert_eq(sc.stats.requests, 0);
    cr_assert_eq(sc.stats.failures, 0);
    cr_assert_eq(upstream_requests(), 0);
}

/* A client still running when the runtime stops, with a direct call and a
 * led flight under way, is freed with everything else (the suite's ASan and
 * valgrind runs report its state otherwise), and after a restart a new
 * client calls directly and through itself as usual. */
static dx_pid busy_client;
static seen busy_calls[2];
static scenario after_restart;

static void busy_direct(void *arg)
{
    (void)arg;
    complete_opt_into(busy_client, "slow direct", &bypass, 30000,
                      &busy_calls[0]);
}

static void busy_led(void *arg)
{
    (void)arg;
    complete_into(busy_client, "slow led", 30000, &busy_calls[1]);
}

static void leave_a_busy_client(void *arg)
{
    scenario *s = arg;
    dx_lmserver_stats before;
    dx_lmserver_stats_get(srv, &before);
    s->start_rc = dx_lm_client_start(&s->opts, NULL, &busy_client);
    if (s->start_rc == DX_OK && dx_spawn(busy_direct, NULL, NULL) == DX_OK &&
        dx_spawn(busy_led, NULL, NULL) == DX_OK)
        s->calls[0].rc = server_got(before.requests, 2) ? DX_OK : DX_ESTATE;
    atomic_store(&s->done, 1);
}

Test(lmclient, a_client_running_when_the_runtime_stops_is_freed_with_it)
{
    live_only();
    cr_assert_eq(dx_lmserver_inject(srv, "slow:2000", 2), DX_OK);
    run_killing(leave_a_busy_client);
    cr_assert_eq(sc.calls[0].rc, DX_OK, "both calls reached the server");
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_telemetry_reset();
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    after_restart.opts = sc.opts;
    after_restart.body = bypass_twice_then_use;
    run(&after_restart);
    for (int k = 0; k < 3; k++)
        cr_assert_eq(after_restart.calls[k].rc, DX_OK, "call %d: %s", k,
                     dx_err_name(after_restart.calls[k].rc));
    cr_assert_eq(after_restart.stats.direct, 2);
    cr_assert_eq(after_restart.stats.requests, 3);
}
