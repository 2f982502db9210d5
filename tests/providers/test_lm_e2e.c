/*
 * test_lm_e2e.c — the provider layer end to end: codec + HTTP transport on
 * the I/O loop + the local LM server, for all three wire formats, plain and
 * streamed, with every fault the server injects mapped to its error kind,
 * 1,000 concurrent calls, and cancellation when the caller dies.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dspex/lm_call.h"
#include "dspex/lmserver.h"
#include "dspex/runtime.h"

static dx_lmserver *srv;

static void srv_start(void)
{
    cr_assert_eq(dx_lmserver_start(NULL, &srv), DX_OK);
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
}

static void srv_stop(void)
{
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_lmserver_stop_free(srv);
    srv = NULL;
}

static const char *const models[] = {
    "openai/gpt-4o-mini",
    "openai-compatible/local-model",
    "anthropic/claude-3-5-haiku-latest",
    "gemini/gemini-2.0-flash",
};
#define NMODELS (sizeof models / sizeof models[0])

static dx_lm_config *config_for(const char *model)
{
    char base[128];
    int port = dx_lmserver_port(srv);
    if (strncmp(model, "anthropic/", 10) == 0)
        snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
    else if (strncmp(model, "gemini/", 7) == 0)
        snprintf(base, sizeof base, "http://127.0.0.1:%d/v1beta", port);
    else
        snprintf(base, sizeof base, "http://127.0.0.1:%d/v1", port);
    dx_lm_config *c = NULL;
    cr_assert_eq(dx_lm_config_new(model, base, "sk-test-secret-key", &c), DX_OK,
                 "config for %s", model);
    return c;
}

/* The request names no model: the config's (the part after "provider/")
 * is used. */
static dx_lm_request *question(const char *model, bool stream)
{
    (void)model;
    dx_lm_request *r = dx_lm_request_new(NULL);
    cr_assert_not_null(r);
    cr_assert_eq(dx_lm_request_add_message(r, DX_LM_USER, "What is 2+2?"),
                 DX_OK);
    r->stream = stream;
    return r;
}

/* ---- running one call in a process ------------------------------------- */

typedef struct job {
    const dx_lm_config *c;
    const dx_lm_request *req;
    int64_t timeout_ms;
    int rc;
    dx_lm_error err;
    char text[256];
    int deltas;
    _Atomic int done;
} job;

static void count_delta(dx_lm_stream *s, const dx_lm_delta *d, void *ud)
{
    (void)s;
    (void)d;
    ((job *)ud)->deltas++;
}

static void call_fn(void *arg)
{
    job *j = arg;
    dx_lm_call_opts o = {
        .timeout_ms = j->timeout_ms, .on_delta = count_delta, .ud = j};
    dx_lm_response *resp = NULL;
    j->rc = dx_lm_call(j->c, j->req, &o, &resp, &j->err);
    if (j->rc == DX_OK && resp->n_choices > 0)
        snprintf(j->text, sizeof j->text, "%s", resp->choices[0].text);
    dx_lm_response_free(resp);
    atomic_store(&j->done, 1);
}

static void run_job(job *j)
{
    dx_pid pid;
    cr_assert_eq(dx_spawn(call_fn, j, &pid), DX_OK);
    /* A quick call may end before the wait starts (DX_ENOPROC). */
    int rc = dx_wait_exit(pid, 60000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_err_name(rc));
    cr_assert(atomic_load(&j->done));
}

/* ---- plain and streamed answers, every format --------------------------- */

Test(lm_e2e, every_format_answers_plain_and_streamed, .timeout = 60)
{
    srv_start();
    for (size_t i = 0; i < NMODELS; i++) {
        for (int stream = 0; stream <= 1; stream++) {
            dx_lm_config *c = config_for(models[i]);
            dx_lm_request *req = question(models[i], stream);
            cr_assert_eq(dx_lmserver_push_reply(srv, "The answer is 4."),
                         DX_OK);
            job j = {.c = c, .req = req, .timeout_ms = 10000};
            run_job(&j);
            cr_expect_eq(j.rc, DX_OK, "%s stream=%d: %s %s", models[i], stream,
                         dx_err_name(j.rc), j.err.message);
            cr_expect_str_eq(j.text, "The answer is 4.", "%s stream=%d",
                             models[i], stream);
            if (stream)
                cr_expect_gt(j.deltas, 0, "%s streamed no delta", models[i]);
            dx_lm_request_free(req);
            dx_lm_config_free(c);
        }
    }
    srv_stop();
}

/* ---- faults ------------------------------------------------------------- */

typedef struct fault_case {
    const char *spec;
    bool stream;
    dx_lm_error_kind kind;
    int status; /* expected HTTP status, 0 = not checked */
} fault_case;

static void check_fault(const char *model, const fault_case *fc)
{
    dx_lm_config *c = config_for(model);
    dx_lm_request *req = question(model, fc->stream);
    cr_assert_eq(dx_lmserver_inject(srv, fc->spec, 1), DX_OK);
    job j = {.c = c, .req = req, .timeout_ms = 2000};
    run_job(&j);
    cr_expect_eq(j.rc, DX_EPROVIDER, "%s %s: rc %s", model, fc->spec,
                 dx_err_name(j.rc));
    cr_expect_eq(j.err.kind, fc->kind, "%s %s (stream=%d): kind %s (%s)", model,
                 fc->spec, fc->stream, dx_lm_error_kind_name(j.err.kind),
                 j.err.message);
    if (fc->status != 0)
        cr_expect_eq(j.err.status, fc->status, "%s %s: status %d", model,
                     fc->spec, j.err.status);
    cr_expect_neq(j.err.message[0], '\0', "%s %s: no message", model, fc->spec);
    /* The key never leaks into an error. */
    cr_expect_null(strstr(j.err.message, "sk-test-secret-key"));
    dx_lm_request_free(req);
    dx_lm_config_free(c);
}

Test(lm_e2e, each_fault_gives_its_error_kind_in_every_format, .timeout = 120)
{
    srv_start();
    const fault_case cases[] = {
        {"rate_limit:2", false, DX_LM_ERR_RATE_LIMITED, 429},
        {"server_error", false, DX_LM_ERR_SERVER_ERROR, 500},
        {"server_error:502", true, DX_LM_ERR_SERVER_ERROR, 502},
        {"auth", false, DX_LM_ERR_AUTH, 401},
        {"malformed_json", false, DX_LM_ERR_MALFORMED_RESPONSE, 0},
        {"wrong_content_type", false, DX_LM_ERR_MALFORMED_RESPONSE, 0},
        {"wrong_content_type", true, DX_LM_ERR_MALFORMED_RESPONSE, 0},
        {"truncated_sse", true, DX_LM_ERR_MALFORMED_RESPONSE, 0},
        {"reset_mid_body", false, DX_LM_ERR_CONNECTION, 0},
        {"reset_mid_body", true, DX_LM_ERR_CONNECTION, 0},
        {"stall", false, DX_LM_ERR_TIMEOUT, 0},
    };
    for (size_t i = 0; i < NMODELS; i++)
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
            check_fault(models[i], &cases[k]);
    srv_stop();
}

Test(lm_e2e, overload_and_retry_after_keep_the_providers_words, .timeout = 60)
{
    srv_start();
    for (size_t i = 0; i < NMODELS; i++) {
        fault_case fc = {"overloaded", false, DX_LM_ERR_OVERLOADED, 0};
        check_fault(models[i], &fc);

        dx_lm_config *c = config_for(models[i]);
        dx_lm_request *req = question(models[i], false);
        cr_assert_eq(dx_lmserver_inject(srv, "rate_limit:3", 1), DX_OK);
        job j = {.c = c, .req = req, .timeout_ms = 5000};
        run_job(&j);
        cr_expect_eq(j.err.kind, DX_LM_ERR_RATE_LIMITED);
        cr_expect_eq(j.err.retry_after_ms, 3000, "%s: retry_after_ms %lld",
                     models[i], (long long)j.err.retry_after_ms);
        dx_lm_request_free(req);
        dx_lm_config_free(c);
    }
    srv_stop();
}

Test(lm_e2e, a_slow_answer_within_the_timeout_succeeds, .timeout = 60)
{
    srv_start();
    dx_lm_config *c = config_for(models[0]);
    dx_lm_request *req = question(models[0], false);
    cr_assert_eq(dx_lmserver_inject(srv, "slow:200", 1), DX_OK);
    job j = {.c = c, .req = req, .timeout_ms = 10000};
    run_job(&j);
    cr_expect_eq(j.rc, DX_OK, "%s", j.err.message);
    dx_lm_request_free(req);
    dx_lm_config_free(c);
    srv_stop();
}

/* ---- many at once -------------------------------------------------------- */

enum { CALLERS = 100, CALLS_EACH = 10 };
static _Atomic int answered, failed;
static dx_lm_config *shared_cfg;
static dx_lm_request *shared_req;

static void one_call(void *arg)
{
    (void)arg;
    dx_lm_response *resp = NULL;
    dx_lm_error err;
    dx_lm_call_opts o = {.timeout_ms = 60000};
    if (dx_lm_call(shared_cfg, shared_req, &o, &resp, &err) == DX_OK)
        atomic_fetch_add(&answered, 1);
    else
        atomic_fetch_add(&failed, 1);
    dx_lm_response_free(resp);
}

static void caller(void *arg)
{
    (void)arg;
    /* Ten calls in flight from this caller at once: one process each. */
    dx_ref refs[CALLS_EACH];
    for (int i = 0; i < CALLS_EACH; i++)
        dx_spawn_monitor(one_call, NULL, NULL, &refs[i]);
    for (int i = 0; i < CALLS_EACH; i++) {
        dx_match mt = {.fields = DX_MATCH_REF, .ref = refs[i]};
        dx_msg *m;
        if (dx_receive(&mt, 120000, &m) == DX_OK)
            dx_msg_free(m);
    }
}

static void many_main(void *arg)
{
    (void)arg;
    dx_ref refs[CALLERS];
    for (int i = 0; i < CALLERS; i++)
        dx_spawn_monitor(caller, NULL, NULL, &refs[i]);
    for (int i = 0; i < CALLERS; i++) {
        dx_match mt = {.fields = DX_MATCH_REF, .ref = refs[i]};
        dx_msg *m;
        if (dx_receive(&mt, 180000, &m) == DX_OK)
            dx_msg_free(m);
    }
}

Test(lm_e2e, a_thousand_concurrent_calls_are_all_answered, .timeout = 240)
{
    srv_start();
    shared_cfg = config_for(models[0]);
    shared_req = question(models[0], false);
    dx_pid pid;
    cr_assert_eq(dx_spawn(many_main, NULL, &pid), DX_OK);
    int rc = dx_wait_exit(pid, 200000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_err_name(rc));
    cr_expect_eq(atomic_load(&answered), CALLERS * CALLS_EACH, "failed: %d",
                 atomic_load(&failed));
    dx_lm_request_free(shared_req);
    dx_lm_config_free(shared_cfg);
    srv_stop();
}

/* ---- a dead caller cancels its transfer ---------------------------------- */

Test(lm_e2e, a_caller_that_dies_cancels_its_transfer, .timeout = 60)
{
    srv_start();
    dx_lm_config *c = config_for(models[0]);
    dx_lm_request *req = question(models[0], false);
    cr_assert_eq(dx_lmserver_inject(srv, "stall", 1), DX_OK);
    dx_lmserver_stats before;
    dx_lmserver_stats_get(srv, &before);
    job j = {.c = c, .req = req, .timeout_ms = 60000};
    dx_pid pid;
    cr_assert_eq(dx_spawn(call_fn, &j, &pid), DX_OK);
    /* Wait until the server holds the request, then kill the caller. */
    dx_lmserver_stats now;
    for (int i = 0; i < 500; i++) {
        dx_lmserver_stats_get(srv, &now);
        if (now.requests > before.requests)
            break;
        usleep(10000);
    }
    cr_assert_gt(now.requests, before.requests, "the request never arrived");
    cr_assert_eq(dx_kill(pid), DX_OK);
    for (int i = 0; i < 500; i++) {
        dx_lmserver_stats_get(srv, &now);
        if (now.connections_closed_early > before.connections_closed_early)
            break;
        usleep(10000);
    }
    cr_expect_gt(now.connections_closed_early, before.connections_closed_early,
                 "the transfer was not cancelled when its caller died");
    cr_expect(!atomic_load(&j.done));
    dx_lm_request_free(req);
    dx_lm_config_free(c);
    srv_stop();
}
