/*
 * test_lmstream.c — streaming through the LM client actor against the local
 * LM server (which sends each answer as several SSE events): the caller's
 * callback gets the text in order, several pieces, adding up to the final
 * text; a cache hit arrives as one piece; a failure before any text is
 * retried while a failure after text was delivered is not (no duplicated
 * text); two streaming callers of one flight both get the whole text from
 * one upstream call, and a streaming caller joining a flight a plain caller
 * started gets the whole text as one piece when it ends.
 *
 * Each scenario runs in a dspex process and only records what it saw; the
 * assertions run on the test's host thread afterwards.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/runtime.h"

static dx_lmserver *srv;
static char url[128];

static void start_with_latency(uint64_t latency_ms)
{
    dx_lmserver_opts o = {.latency_ms = latency_ms};
    cr_assert_eq(dx_lmserver_start(&o, &srv), DX_OK);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
}

static void setup(void)
{
    start_with_latency(0);
}

static void teardown(void)
{
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_lmserver_stop_free(srv);
    srv = NULL;
}

static uint64_t upstream_requests(void)
{
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    return st.requests;
}

static const dx_retry_policy quick = {
    .max_attempts = 2,
    .initial_delay_ms = 5,
    .max_delay_ms = 10,
    .jitter = 0,
    .max_retry_after_ms = 1000,
    .retry_malformed = true, /* so a truncated stream would be retried */
};

/* What one streaming caller saw. */
typedef struct seen {
    int rc;
    dx_lm_error err;
    char pieces[1024]; /* the pieces joined */
    size_t len;
    int n_pieces;
    bool overflow;
    char text[1024]; /* the final text */
    bool cached;
} seen;

static void on_text(const char *t, size_t len, void *ud)
{
    seen *s = ud;
    s->n_pieces++;
    if (s->len + len >= sizeof s->pieces) {
        s->overflow = true;
        return;
    }
    memcpy(s->pieces + s->len, t, len);
    s->len += len;
    s->pieces[s->len] = '\0';
}

static void stream_call(dx_pid client, const char *question, bool stream,
                        seen *out)
{
    dx_lm_request *req = dx_lm_request_new(NULL);
    if (!req || dx_lm_request_add_message(req, DX_LM_USER, question) != DX_OK) {
        out->rc = DX_ENOMEM;
        dx_lm_request_free(req);
        return;
    }
    dx_lm_result *res = NULL;
    out->rc = dx_lm_client_complete_stream(client, req, NULL, 10000,
                                           stream ? on_text : NULL, out, &res,
                                           &out->err);
    dx_lm_request_free(req);
    if (out->rc == DX_OK) {
        snprintf(out->text, sizeof out->text, "%s",
                 res->response->n_choices ? res->response->choices[0].text
                                          : "");
        out->cached = res->cached;
    }
    dx_lm_result_free(res);
}

typedef struct scenario {
    int start_rc, stop_rc;
    seen calls[4];
    dx_lm_client_stats stats;
    void (*body)(struct scenario *sc, dx_pid client);
    _Atomic int done;
    _Atomic int helpers_done;
} scenario;

static scenario sc;

static void scenario_main(void *arg)
{
    scenario *s = arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/stream-model", url, "sk-test"},
        .retry = &quick,
    };
    dx_pid client;
    s->start_rc = dx_lm_client_start(&o, NULL, &client);
    if (s->start_rc == DX_OK) {
        s->body(s, client);
        dx_lm_client_stats_get(client, &s->stats);
        s->stop_rc = dx_server_stop(client, NULL, 5000);
    }
    atomic_store(&s->done, 1);
}

static void run(void)
{
    dx_pid pid;
    cr_assert_eq(dx_spawn(scenario_main, &sc, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 30000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_err_name(rc));
    cr_assert(atomic_load(&sc.done));
    cr_assert_eq(sc.start_rc, DX_OK);
    cr_assert_eq(sc.stop_rc, DX_OK);
}

static void one_stream(scenario *s, dx_pid client)
{
    stream_call(client, "Name three colours of the rainbow", true,
                &s->calls[0]);
}

static void stream_twice(scenario *s, dx_pid client)
{
    stream_call(client, "Name three colours of the rainbow", true,
                &s->calls[0]);
    stream_call(client, "Name three colours of the rainbow", true,
                &s->calls[1]);
}

TestSuite(lmstream, .fini = teardown, .timeout = 60);

Test(lmstream, delivers_the_text_in_pieces_adding_up_to_the_final_text,
     .init = setup)
{
    sc.body = one_stream;
    run();
    seen *c = &sc.calls[0];
    cr_assert_eq(c->rc, DX_OK, "%s %s", dx_err_name(c->rc), c->err.message);
    cr_assert_str_eq(c->text, "answer: Name three colours of the rainbow");
    cr_assert_geq(c->n_pieces, 2, "one piece: not streamed");
    cr_assert_not(c->overflow);
    cr_assert_str_eq(c->pieces, c->text);
    cr_assert_eq(sc.stats.streamed, 1);
}

Test(lmstream, a_cache_hit_arrives_as_one_piece, .init = setup)
{
    sc.body = stream_twice;
    run();
    seen *c = &sc.calls[1];
    cr_assert_eq(c->rc, DX_OK, "%s", dx_err_name(c->rc));
    cr_assert(c->cached);
    cr_assert_eq(c->n_pieces, 1);
    cr_assert_str_eq(c->pieces, sc.calls[0].text);
    cr_assert_eq(upstream_requests(), 1);
}

Test(lmstream, a_failure_before_any_text_is_retried, .init = setup)
{
    cr_assert_eq(dx_lmserver_inject(srv, "server_error", 1), DX_OK);
    sc.body = one_stream;
    run();
    seen *c = &sc.calls[0];
    cr_assert_eq(c->rc, DX_OK, "%s %s", dx_err_name(c->rc), c->err.message);
    cr_assert_eq(upstream_requests(), 2);
    cr_assert_str_eq(c->pieces, c->text);
}

Test(lmstream, a_failure_after_text_was_delivered_is_not_retried, .init = setup)
{
    /* The stream stops after half of its events: some text has gone out.
     * The policy would retry the truncated stream, and the retry would
     * succeed; instead the caller keeps its partial text and an error. */
    cr_assert_eq(dx_lmserver_inject(srv, "truncated_sse", 1), DX_OK);
    sc.body = one_stream;
    run();
    seen *c = &sc.calls[0];
    cr_assert_eq(c->rc, DX_EPROVIDER, "%s", dx_err_name(c->rc));
    cr_assert_geq(c->n_pieces, 1);
    cr_assert(strncmp(c->pieces, "answer: Name three colours of the rainbow",
                      c->len) == 0,
              "not a prefix: %s", c->pieces);
    cr_assert_eq(upstream_requests(), 1);
}

/* ---- coalescing: helpers call while the flight is in progress ----------- */

typedef struct helper {
    dx_pid client;
    bool stream;
    seen *out;
    _Atomic int *done;
} helper;

static void helper_main(void *arg)
{
    helper *h = arg;
    stream_call(h->client, "Name three colours of the rainbow", h->stream,
                h->out);
    atomic_fetch_add(h->done, 1);
}

static void two_at_once(scenario *s, dx_pid client, bool first_streams)
{
    /* Static: a helper must not point into this process's stack. */
    static helper hs[2];
    hs[0] = (helper){client, first_streams, &s->calls[0], &s->helpers_done};
    hs[1] = (helper){client, true, &s->calls[1], &s->helpers_done};
    dx_spawn(helper_main, &hs[0], NULL);
    /* The second joins once the first one's flight is out; the server
     * holds its answer for a second, so the flight is still in progress. */
    dx_lm_client_stats st = {0};
    while (dx_lm_client_stats_get(client, &st) == DX_OK && st.in_flight == 0)
        dx_sleep(5);
    dx_spawn(helper_main, &hs[1], NULL);
    while (atomic_load(&s->helpers_done) < 2)
        dx_sleep(10);
}

static void two_streamers(scenario *s, dx_pid client)
{
    two_at_once(s, client, true);
}

static void plain_then_streamer(scenario *s, dx_pid client)
{
    two_at_once(s, client, false);
}

static void slow_setup(void)
{
    start_with_latency(1000);
}

Test(lmstream, two_streaming_callers_share_one_upstream_call,
     .init = slow_setup)
{
    sc.body = two_streamers;
    run();
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(sc.calls[i].rc, DX_OK, "%d: %s", i,
                     dx_err_name(sc.calls[i].rc));
        cr_assert_str_eq(sc.calls[i].pieces, sc.calls[i].text);
    }
    cr_assert_eq(upstream_requests(), 1);
    cr_assert_eq(sc.stats.coalesced, 1);
}

Test(lmstream, joining_a_plain_flight_gets_the_whole_text_at_the_end,
     .init = slow_setup)
{
    sc.body = plain_then_streamer;
    run();
    cr_assert_eq(sc.calls[1].rc, DX_OK, "%s", dx_err_name(sc.calls[1].rc));
    cr_assert_eq(sc.calls[1].n_pieces, 1);
    cr_assert_str_eq(sc.calls[1].pieces, sc.calls[1].text);
    cr_assert_eq(sc.calls[0].n_pieces, 0);
    cr_assert_eq(upstream_requests(), 1);
    cr_assert_eq(sc.stats.streamed, 0);
}
