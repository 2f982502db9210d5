/*
 * test_faults.c — LM-server faults during an optimization. A random
 * search (BootstrapFewShotWithRandomSearch) with a SQLite checkpoint runs
 * against the local LM server while every fault mode the server has
 * (docs/internals/lmserver.md: rate_limit, overloaded, server_error, auth,
 * slow, stall, reset_mid_body, truncated_sse, malformed_json,
 * wrong_content_type) is queued for its requests. It must either complete
 * or stop with DX_ELIMIT and a message naming the failure; its checkpoint
 * must pass PRAGMA integrity_check; a resume with the same arguments (the
 * faults gone) must finish, reusing what was checkpointed, with the
 * result a fault-free run gives for the trials it redid. A second test
 * makes faults exceed the error budget on purpose; a third (disabled: it
 * fails today) resumes after that.
 */
#include <criterion/criterion.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/evaluate.h"
#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/module.h"
#include "dspex/retry.h"
#include "dspex/runtime.h"
#include "dspex/server.h"
#include "dspex/teleprompt.h"

static dx_lmserver *srv;
static int port;
static char url[128];
static _Atomic int client_rc = 1;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void start_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/fault-model", url, "sk-fault"},
        /* A stalled answer costs one attempt, not the run. */
        .attempt_timeout_ms = 1000,
    };
    dx_server_opts so = {.name = "lm"};
    atomic_store(&client_rc, dx_lm_client_start(&o, &so, NULL));
}

static void stop_client(void *arg)
{
    (void)arg;
    dx_pid lm = dx_whereis("lm");
    atomic_store(&client_rc,
                 dx_pid_is_none(lm) ? DX_OK : dx_server_stop(lm, NULL, 5000));
}

static void in_process(dx_proc_fn fn)
{
    atomic_store(&client_rc, 1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(fn, NULL, &pid), DX_OK);
    for (int i = 0; i < 1000 && atomic_load(&client_rc) == 1; i++)
        sleep_ms(5);
    cr_assert_eq(atomic_load(&client_rc), DX_OK);
}

static void start_server(int on_port)
{
    dx_lmserver_opts so = {.port = on_port};
    cr_assert_eq(dx_lmserver_start(&so, &srv), DX_OK);
    port = dx_lmserver_port(srv);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", port);
}

static void setup(void)
{
    start_server(0);
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    in_process(start_client);
}

static void teardown(void)
{
    in_process(stop_client);
    dx_runtime_stop();
    dx_lmserver_stop_free(srv);
}

/* Drop whatever faults are still queued: a fresh server on the same port
 * (the client reconnects). */
static void restart_server_without_faults(void)
{
    int p = port;
    dx_lmserver_stop_free(srv);
    start_server(p);
    cr_assert_eq(port, p);
}

/* ---- the optimization ----------------------------------------------------- */

static dx_dataset *dataset(size_t n, const char *tag)
{
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    for (size_t i = 0; i < n; i++) {
        dx_example *ex = dx_example_new();
        char q[32];
        snprintf(q, sizeof q, "%s%zu", tag, i);
        dx_example_set_str(ex, "question", q);
        dx_example_set_str(ex, "answer", q);
        dx_example_with_inputs(ex, in, 1);
        cr_assert_eq(dx_dataset_append(ds, ex), DX_OK);
    }
    return ds;
}

static dx_module *student(void)
{
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    return p;
}

/* The local server answers with the last user message, so an answer that
 * contains the question is right. */
static double contains_metric(const dx_example *ex, const dx_prediction *p,
                              const dx_trace *t, void *ud)
{
    (void)t;
    (void)ud;
    const char *q = dx_example_get_str(ex, "question", "");
    return strstr(dx_prediction_get_str(p, "answer", ""), q) ? 1.0 : 0.0;
}

static dx_tp_opts opts(const char *ckpt)
{
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = contains_metric},
        .max_bootstrapped_demos = 2,
        .max_labeled_demos = 2,
        .num_candidates = 2,
        .concurrency = 4,
        .example_timeout_ms = 15000,
        .progress = DX_EVAL_PROGRESS_OFF,
        .checkpoint_path = ckpt,
    };
    return o;
}

static void temp_path(char *buf, size_t size)
{
    snprintf(buf, size, "/tmp/dx_faults_ckpt_XXXXXX");
    int fd = mkstemp(buf);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(buf);
}

static void remove_db(const char *path)
{
    const char *sfx[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s%s", path, sfx[i]);
        unlink(p);
    }
}

static void assert_integrity(const char *path, long *rows)
{
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                 SQLITE_OK);
    sqlite3_stmt *st = NULL;
    cr_assert_eq(
        sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL),
        SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM dspex_trials", -1,
                                    &st, NULL),
                 SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    *rows = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static const char *const fault_modes[] = {
    "rate_limit:0",
    "overloaded",
    "server_error",
    "server_error:502",
    "auth",
    "slow:40",
    "stall",
    "reset_mid_body",
    "truncated_sse",
    "malformed_json",
    "wrong_content_type",
};
#define N_FAULT_MODES (sizeof fault_modes / sizeof fault_modes[0])

TestSuite(faults, .init = setup, .fini = teardown, .timeout = 120);

Test(
    faults,
    an_optimization_under_every_fault_mode_completes_or_stops_clearly_and_resumes)
{
    char ckpt[64];
    temp_path(ckpt, sizeof ckpt);
    dx_module *st = student();
    dx_dataset *train = dataset(8, "t"), *val = dataset(6, "v");
    /* Two of each, spread through the run's requests. */
    for (int round = 0; round < 2; round++)
        for (size_t i = 0; i < N_FAULT_MODES; i++)
            cr_assert_eq(dx_lmserver_inject(srv, fault_modes[i], 1), DX_OK);

    dx_tp_opts o = opts(ckpt);
    dx_tp_result *faulty = NULL;
    dx_diag d = {0};
    int rc = dx_random_search(st, NULL, train, val, &o, &faulty, &d);
    dx_lmserver_stats stats;
    dx_lmserver_stats_get(srv, &stats);
    cr_log_info("under faults: %s, %llu faults applied; %s", dx_err_name(rc),
                (unsigned long long)stats.faults_applied,
                rc == DX_OK ? "" : d.msg);
    cr_assert(rc == DX_OK || rc == DX_ELIMIT, "%s: %s", dx_err_name(rc), d.msg);
    if (rc == DX_ELIMIT)
        cr_assert_neq(d.msg[0], '\0', "the stop says why");
    cr_assert_geq(stats.faults_applied, N_FAULT_MODES,
                  "the faults reached the run");

    long rows = 0;
    assert_integrity(ckpt, &rows);
    cr_assert_gt(rows, 0, "trials were checkpointed");

    /* Resume without faults; then a fault-free run from scratch. */
    restart_server_without_faults();
    dx_tp_result *resumed = NULL, *fresh = NULL;
    cr_assert_eq(dx_random_search(st, NULL, train, val, &o, &resumed, &d),
                 DX_OK, "%s", d.msg);
    size_t restored = 0;
    for (size_t i = 0; i < resumed->n_trials; i++)
        restored += resumed->trials[i].from_checkpoint;
    cr_assert_gt(restored, 0, "the resume reused checkpointed trials");
    long rows_after = 0;
    assert_integrity(ckpt, &rows_after);
    cr_assert_geq(rows_after, rows);

    o.checkpoint_path = NULL;
    cr_assert_eq(dx_random_search(st, NULL, train, val, &o, &fresh, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_eq(resumed->n_trials, fresh->n_trials);
    cr_assert_lt(resumed->usage.calls, fresh->usage.calls,
                 "checkpointed work is not redone");
    if (rc == DX_OK)
        cr_assert_eq(faulty->n_trials, fresh->n_trials);
    cr_assert_geq(fresh->score, 0);

    dx_tp_result_free(faulty);
    dx_tp_result_free(resumed);
    dx_tp_result_free(fresh);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
    remove_db(ckpt);
}

/* Faults that exceed the error budget: DX_ELIMIT, a message that says so,
 * a sound checkpoint. ckpt receives the checkpoint path. */
static void run_past_the_budget(char *ckpt, size_t size, dx_module *st,
                                dx_dataset *train, dx_tp_opts *o)
{
    temp_path(ckpt, size);
    /* auth (401) is not retried: every teacher run fails. */
    cr_assert_eq(dx_lmserver_inject(srv, "auth", 200), DX_OK);
    *o = opts(ckpt);
    o->max_errors = 3;
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, train, o, &r, &d), DX_ELIMIT,
                 "%s", d.msg);
    cr_assert_null(r);
    cr_log_info("stopped: %s", d.msg);
    /* The message says that the budget ran out, where, and why the last
     * run failed (here the 401). */
    cr_assert(strstr(d.msg, "Incorrect API key"), "%s", d.msg);
    cr_assert(strstr(d.msg, "teacher runs failed") &&
                  strstr(d.msg, "max_errors 3"),
              "the message says the budget ran out: %s", d.msg);
    long rows = 0;
    assert_integrity(ckpt, &rows);
}

Test(faults, faults_past_the_error_budget_stop_with_a_clear_error)
{
    char ckpt[64];
    dx_module *st = student();
    dx_dataset *train = dataset(8, "t");
    dx_tp_opts o;
    run_past_the_budget(ckpt, sizeof ckpt, st, train, &o);
    dx_module_free(st);
    dx_dataset_free(train);
    remove_db(ckpt);
}

/* The teacher runs that failed because of the outage are not checkpointed
 * (only outcomes are), so the resume asks the LM again and finishes. */
Test(faults, a_resume_after_the_budget_ran_out_finishes)
{
    char ckpt[64];
    dx_module *st = student();
    dx_dataset *train = dataset(8, "t");
    dx_tp_opts o;
    run_past_the_budget(ckpt, sizeof ckpt, st, train, &o);
    restart_server_without_faults();
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, train, &o, &r, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_gt(r->n_bootstrapped, 0);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    remove_db(ckpt);
}
