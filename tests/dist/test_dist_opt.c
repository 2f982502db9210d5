/*
 * test_dist_opt.c — distributed optimization: random search and MIPROv2
 * whose candidate evaluations run on worker nodes (tests/dist/dist_node.c
 * in mode tpworker, separate OS processes, a private epmd on 127.0.0.1)
 * give the same best program, score, trial log and per-example trial
 * records as the same optimizer on this node alone, also when a worker is
 * killed mid-run; and the evaluator's failure paths.
 */
#include <criterion/criterion.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist_fixture.h"
#include "dist_tp_setup.h"
#include "dspex/dist_eval.h"
#include "dspex/node.h"
#include "dspex/runtime.h"

#define COOKIE "dxtestcookie"

static char self_name[128];
static char tmpdir[64];
static dx_module *student;
static dx_dataset *train, *val;

/* ---- running test bodies in a process ---- */

typedef void (*body_fn)(void);
static _Atomic int body_done;
static char body_fail[1024];

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            snprintf(body_fail, sizeof body_fail, __VA_ARGS__);                \
            atomic_store(&body_done, 2);                                       \
            return;                                                            \
        }                                                                      \
    } while (0)

static void body_proc(void *arg)
{
    body_fn fn = (body_fn)(uintptr_t)arg;
    fn();
    int expected = 0;
    atomic_compare_exchange_strong(&body_done, &expected, 1);
}

static void run_body(body_fn fn, int timeout_ms)
{
    atomic_store(&body_done, 0);
    body_fail[0] = '\0';
    cr_assert_eq(dx_spawn(body_proc, (void *)(uintptr_t)fn, NULL), DX_OK);
    for (int w = 0; atomic_load(&body_done) == 0 && w < timeout_ms; w += 10)
        fx_sleep_ms(10);
    cr_assert_eq(atomic_load(&body_done), 1, "%s",
                 body_fail[0] ? body_fail : "timed out");
}

static void setup_body(void)
{
    int rc = dist_tp_setup(&student, &train, &val);
    CHECK(rc == DX_OK, "setup: %s", dx_strerror(rc));
}

static void teardown_body(void)
{
    dx_module_free(student);
    dx_dataset_free(train);
    dx_dataset_free(val);
    dx_server_stop(dx_whereis("lm"), NULL, 5000);
}

static void setup(void)
{
    fx_epmd_start();
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    fx_name(self_name, sizeof self_name, "dxo");
    dx_node_opts o = {
        .name = self_name, .cookie = COOKIE, .connect_timeout_ms = 5000};
    int rc = DX_ECONNECT;
    for (int i = 0; i < 100 && rc == DX_ECONNECT; i++) {
        rc = dx_node_start(&o);
        if (rc == DX_ECONNECT)
            fx_sleep_ms(50);
    }
    cr_assert_eq(rc, DX_OK, "node start: %s", dx_strerror(rc));
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dx_distopt_XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    run_body(setup_body, 20000);
}

static void teardown(void)
{
    run_body(teardown_body, 20000);
    fx_kill_all();
    dx_node_stop();
    dx_runtime_stop();
    fx_epmd_stop();
    char *rm[] = {"rm", "-rf", tmpdir, NULL};
    fx_run(rm);
}

TestSuite(dist_opt, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ---- */

/* n tpworker nodes; the last one with `last_mode` ("die", "hang") when
 * given, or every one with `all_mode`. */
static void spawn_workers_as(fx_child *ws, int n, const char *last_mode,
                             const char *all_mode)
{
    const char *bin = getenv("DX_DIST_NODE_BIN");
    cr_assert_not_null(bin);
    for (int i = 0; i < n; i++) {
        char name[128], alive[16];
        snprintf(alive, sizeof alive, "tw%d", i);
        fx_name(name, sizeof name, alive);
        const char *mode = all_mode ? all_mode : i == n - 1 ? last_mode : NULL;
        char *argv[] = {(char *)bin, name,         COOKIE, "tpworker",
                        self_name,   (char *)mode, NULL};
        cr_assert_eq(fx_spawn(&ws[i], argv), 0);
    }
}

static void spawn_workers(fx_child *ws, int n, bool kill_last)
{
    spawn_workers_as(ws, n, kill_last ? "die" : NULL, NULL);
}

/* Every trial record of a checkpoint file, key -> value. */
static cJSON *ckpt_records(const char *path)
{
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                 SQLITE_OK, "%s", path);
    sqlite3_stmt *st = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db, "SELECT key, value FROM dspex_trials",
                                    -1, &st, NULL),
                 SQLITE_OK);
    cJSON *all = cJSON_CreateObject();
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        const char *v = (const char *)sqlite3_column_text(st, 1);
        cJSON *j = v ? cJSON_Parse(v) : NULL;
        if (k && j)
            cJSON_AddItemToObject(all, k, j);
        else
            cJSON_Delete(j);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return all;
}

static bool is_eval_record(const char *key)
{
    return strncmp(key, "candidate/", 10) == 0 ||
           strncmp(key, "trial/", 6) == 0;
}

/* The two runs' results and trial records agree: best program, score,
 * trial log, and per record its score, state and per-example rows (LM
 * call counts too; cache hits differ, since the runs share no cache). */
static void expect_same_runs(const dx_tp_result *a, const dx_tp_result *b,
                             const char *ck_a, const char *ck_b, size_t *n_rows)
{
    cr_expect_float_eq(a->score, b->score, 1e-9);
    cJSON *sa = dx_module_dump_state(a->program);
    cJSON *sb = dx_module_dump_state(b->program);
    cr_expect(cJSON_Compare(sa, sb, true), "best programs differ");
    cJSON_Delete(sa);
    cJSON_Delete(sb);
    cr_assert_eq(a->n_trials, b->n_trials);
    for (size_t i = 0; i < a->n_trials; i++) {
        cr_expect_eq(a->trials[i].id, b->trials[i].id, "trial %zu", i);
        cr_expect_str_eq(a->trials[i].kind, b->trials[i].kind, "trial %zu", i);
        cr_expect_float_eq(a->trials[i].score, b->trials[i].score, 1e-9,
                           "trial %zu", i);
        cr_expect_eq(a->trials[i].usage.calls, b->trials[i].usage.calls,
                     "trial %zu", i);
    }
    cJSON *ra = ckpt_records(ck_a), *rb = ckpt_records(ck_b);
    *n_rows = 0;
    size_t n_a = 0, n_b = 0;
    const cJSON *x;
    /* Evaluation records only: how many bootstrap attempts get recorded
     * depends on how far the teachers in flight got when enough traces
     * were in, on one node as on several. */
    cJSON_ArrayForEach(x, rb) n_b += is_eval_record(x->string);
    cJSON_ArrayForEach(x, ra)
    {
        if (!is_eval_record(x->string))
            continue;
        n_a++;
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(rb, x->string);
        cr_expect_not_null(y, "record %s missing", x->string);
        const char *same[] = {"rows", "score", "state", "params"};
        for (size_t f = 0; y && f < 4; f++) {
            const cJSON *fx = cJSON_GetObjectItem(x, same[f]);
            const cJSON *fy = cJSON_GetObjectItem(y, same[f]);
            cr_expect((!fx && !fy) || cJSON_Compare(fx, fy, true),
                      "record %s: %s differs", x->string, same[f]);
        }
        *n_rows += (size_t)cJSON_GetArraySize(cJSON_GetObjectItem(x, "rows"));
    }
    cr_expect_eq(n_a, n_b, "evaluation records: %zu here, %zu distributed", n_a,
                 n_b);
    cJSON_Delete(ra);
    cJSON_Delete(rb);
}

/* ---- random search ---- */

static char ck_local[128], ck_dist[128];
static dx_tp_result *res_local, *res_dist;
static dx_tp_evaluator ev;
static int dist_rc;

static double stop_at;

static void rs_local_body(void)
{
    dx_tp_opts o = dist_tp_opts();
    o.stop_at_score = stop_at;
    o.checkpoint_path = ck_local;
    dx_diag d = {0};
    int rc = dx_random_search(student, NULL, train, val, &o, &res_local, &d);
    CHECK(rc == DX_OK, "local random search: %s", d.msg);
}

static void rs_dist_body(void)
{
    dx_tp_opts o = dist_tp_opts();
    o.stop_at_score = stop_at;
    o.checkpoint_path = ck_dist;
    o.evaluator = &ev;
    dx_diag d = {0};
    dist_rc = dx_random_search(student, NULL, train, val, &o, &res_dist, &d);
    CHECK(dist_rc == DX_OK, "distributed random search: %s", d.msg);
}

Test(dist_opt,
     random_search_over_3_nodes_with_one_killed_equals_the_single_node_run)
{
    snprintf(ck_local, sizeof ck_local, "%s/rs_local.db", tmpdir);
    snprintf(ck_dist, sizeof ck_dist, "%s/rs_dist.db", tmpdir);
    run_body(rs_local_body, 60000);

    dx_dist_tp *h = NULL;
    cr_assert_eq(dx_dist_tp_start(
                     &(dx_dist_tp_opts){.shard_size = 4, .min_workers = 3}, &h),
                 DX_OK);
    ev = dx_dist_tp_evaluator(h);
    fx_child ws[3];
    spawn_workers(ws, 3, true);
    run_body(rs_dist_body, 90000);
    dx_dist_tp_stats st;
    dx_dist_tp_get_stats(h, &st);
    cr_expect_eq(st.workers, 3);
    cr_expect_eq(st.jobs, 1, "all candidates are one evaluation");
    cr_expect_eq(st.shards, 6 * (DIST_TP_VAL / 4));
    cr_expect_geq(st.requeued, 1, "the killed worker's shard came back");
    cr_assert_eq(dx_dist_tp_stop(h), DX_OK);

    size_t n_rows = 0;
    expect_same_runs(res_local, res_dist, ck_local, ck_dist, &n_rows);
    cr_expect_eq(res_dist->n_trials, 6);
    cr_expect_eq(n_rows, 6 * DIST_TP_VAL, "a row per (candidate, example)");
    char line[256];
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(fx_expect(&ws[i], "WORKER-DONE", line, sizeof line, 20000),
                     0);
        cr_expect(strstr(line, " OK") != NULL, "%s", line);
    }
    dx_tp_result_free(res_local);
    dx_tp_result_free(res_dist);
    for (int i = 0; i < 3; i++)
        fx_stop(&ws[i]);
}

Test(dist_opt, random_search_one_candidate_at_a_time_over_2_nodes_equals_local)
{
    /* stop_at_score makes random search evaluate each candidate on its
     * own (an evaluation per candidate); 101 is never reached. */
    stop_at = 101;
    snprintf(ck_local, sizeof ck_local, "%s/rs1_local.db", tmpdir);
    snprintf(ck_dist, sizeof ck_dist, "%s/rs1_dist.db", tmpdir);
    run_body(rs_local_body, 60000);
    dx_dist_tp *h = NULL;
    cr_assert_eq(dx_dist_tp_start(
                     &(dx_dist_tp_opts){.shard_size = 4, .min_workers = 2}, &h),
                 DX_OK);
    ev = dx_dist_tp_evaluator(h);
    fx_child ws[2];
    spawn_workers(ws, 2, false);
    run_body(rs_dist_body, 90000);
    stop_at = 0;
    dx_dist_tp_stats st;
    dx_dist_tp_get_stats(h, &st);
    cr_expect_eq(st.jobs, 6, "one evaluation per candidate");
    cr_assert_eq(dx_dist_tp_stop(h), DX_OK);
    size_t n_rows = 0;
    expect_same_runs(res_local, res_dist, ck_local, ck_dist, &n_rows);
    cr_expect_eq(n_rows, 6 * DIST_TP_VAL);
    dx_tp_result_free(res_local);
    dx_tp_result_free(res_dist);
    for (int i = 0; i < 2; i++)
        fx_stop(&ws[i]);
}

/* ---- MIPROv2 ---- */

static dx_mipro_opts mipro_opts;

static void mipro_local_body(void)
{
    dx_tp_opts o = dist_tp_opts();
    o.checkpoint_path = ck_local;
    dx_diag d = {0};
    int rc = dx_mipro(student, train, val, &o, &mipro_opts, &res_local, &d);
    CHECK(rc == DX_OK, "local mipro: %s", d.msg);
}

static void mipro_dist_body(void)
{
    dx_tp_opts o = dist_tp_opts();
    o.checkpoint_path = ck_dist;
    o.evaluator = &ev;
    dx_diag d = {0};
    int rc = dx_mipro(student, train, val, &o, &mipro_opts, &res_dist, &d);
    CHECK(rc == DX_OK, "distributed mipro: %s", d.msg);
}

static void mipro_both_ways(const char *tag, size_t *jobs)
{
    snprintf(ck_local, sizeof ck_local, "%s/%s_local.db", tmpdir, tag);
    snprintf(ck_dist, sizeof ck_dist, "%s/%s_dist.db", tmpdir, tag);
    run_body(mipro_local_body, 60000);
    dx_dist_tp *h = NULL;
    cr_assert_eq(dx_dist_tp_start(
                     &(dx_dist_tp_opts){.shard_size = 4, .min_workers = 2}, &h),
                 DX_OK);
    ev = dx_dist_tp_evaluator(h);
    fx_child ws[2];
    spawn_workers(ws, 2, false);
    run_body(mipro_dist_body, 90000);
    dx_dist_tp_stats st;
    dx_dist_tp_get_stats(h, &st);
    *jobs = st.jobs;
    cr_expect_eq(st.workers, 2);
    cr_assert_eq(dx_dist_tp_stop(h), DX_OK);
    size_t n_rows = 0;
    expect_same_runs(res_local, res_dist, ck_local, ck_dist, &n_rows);
    cr_expect_gt(n_rows, 0);
    char line[256];
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(fx_expect(&ws[i], "WORKER-DONE", line, sizeof line, 20000),
                     0);
        cr_expect(strstr(line, " OK") != NULL, "%s", line);
        fx_stop(&ws[i]);
    }
}

Test(dist_opt, mipro_light_over_2_nodes_equals_the_single_node_run)
{
    /* auto light samples its valset from ours: the workers are told the
     * examples' places in the valset they hold. */
    mipro_opts = (dx_mipro_opts){.auto_mode = DX_MIPRO_AUTO_LIGHT};
    size_t jobs = 0;
    mipro_both_ways("light", &jobs);
    cr_expect_eq(jobs, res_dist->n_trials, "one evaluation per trial");
    dx_tp_result_free(res_local);
    dx_tp_result_free(res_dist);
}

Test(dist_opt, mipro_minibatch_trials_over_2_nodes_equal_the_single_node_run)
{
    mipro_opts = (dx_mipro_opts){.auto_mode = DX_MIPRO_AUTO_NONE,
                                 .num_candidates = 3,
                                 .num_trials = 6,
                                 .minibatch_size = 8,
                                 .minibatch_full_eval_steps = 2};
    size_t jobs = 0;
    mipro_both_ways("mb", &jobs);
    size_t n_mb = 0;
    for (size_t i = 0; i < res_dist->n_trials; i++)
        n_mb += strcmp(res_dist->trials[i].kind, "minibatch") == 0;
    cr_expect_eq(n_mb, 6);
    cr_expect_eq(jobs, res_dist->n_trials);
    dx_tp_result_free(res_local);
    dx_tp_result_free(res_dist);
}

/* ---- failure paths ---- */

/* A random search through ev that must fail with want_rc. */
static int want_rc;

static void failing_search_body(void)
{
    dx_tp_opts o = dist_tp_opts();
    o.evaluator = &ev;
    dx_diag d = {0};
    dist_rc = dx_random_search(student, NULL, train, val, &o, &res_dist, &d);
    CHECK(dist_rc == want_rc, "want %s, got %s (%s)", dx_err_name(want_rc),
          dx_err_name(dist_rc), d.msg);
    CHECK(res_dist == NULL, "no result on failure");
}

Test(dist_opt, an_evaluation_no_worker_takes_fails_with_etimedout)
{
    dx_dist_tp *h = NULL;
    cr_assert_eq(
        dx_dist_tp_start(&(dx_dist_tp_opts){.job_timeout_ms = 300}, &h), DX_OK);
    ev = dx_dist_tp_evaluator(h);
    want_rc = DX_ETIMEDOUT;
    run_body(failing_search_body, 30000);
    cr_assert_eq(dx_dist_tp_stop(h), DX_OK);
}

Test(dist_opt, a_cancelled_optimization_stops_at_once_and_workers_drop_shards)
{
    dx_dist_tp *h = NULL;
    cr_assert_eq(dx_dist_tp_start(
                     &(dx_dist_tp_opts){.shard_size = 4, .min_workers = 2}, &h),
                 DX_OK);
    ev = dx_dist_tp_evaluator(h);
    fx_child ws[2];
    spawn_workers_as(ws, 2, NULL, "hang");
    atomic_store(&body_done, 0);
    body_fail[0] = '\0';
    want_rc = DX_ECANCELED;
    cr_assert_eq(
        dx_spawn(body_proc, (void *)(uintptr_t)failing_search_body, NULL),
        DX_OK);
    /* Each worker holds a shard whose LM answers in a minute. */
    char line[256];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(fx_expect(&ws[i], "TPSHARD", line, sizeof line, 20000), 0,
                     "worker %d took no shard", i);
    dx_evaluate_cancel_all();
    for (int w = 0; atomic_load(&body_done) == 0 && w < 10000; w += 10)
        fx_sleep_ms(10);
    cr_assert_eq(atomic_load(&body_done), 1, "%s",
                 body_fail[0] ? body_fail
                              : "the optimizer did not stop within 10 s");
    dx_dist_tp_stats st;
    dx_dist_tp_get_stats(h, &st);
    cr_expect_eq(st.jobs, 0, "no evaluation completed");
    cr_assert_eq(dx_dist_tp_stop(h), DX_OK);
    /* They dropped their shards (killing the evaluations and LM calls in
     * them), so they hear the coordinator's done long before the LM's
     * minute is up. */
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(fx_expect(&ws[i], "WORKER-DONE", line, sizeof line, 10000),
                     0, "worker %d still busy with its shard", i);
        cr_expect(strstr(line, " OK") != NULL, "%s", line);
        fx_stop(&ws[i]);
    }
}

Test(dist_opt, the_evaluator_outside_a_process_fails_with_enotproc)
{
    dx_dist_tp *h = NULL;
    cr_assert_eq(dx_dist_tp_start(NULL, &h), DX_OK);
    cr_expect_eq(dx_dist_tp_start(NULL, &(dx_dist_tp *){NULL}), DX_EEXIST,
                 "one coordinator per name");
    ev = dx_dist_tp_evaluator(h);
    dx_tp_opts o = dist_tp_opts();
    o.evaluator = &ev;
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_expect_eq(dx_random_search(student, NULL, train, val, &o, &r, &d),
                 DX_ENOTPROC, "%s", d.msg);
    cr_expect_null(r);
    cr_assert_eq(dx_dist_tp_stop(h), DX_OK);
}
