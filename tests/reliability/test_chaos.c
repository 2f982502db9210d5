/*
 * test_chaos.c — chaos under load: an evaluation of 400 examples runs
 * through the local LM server while a chaos thread kills, at random
 * (seeded) moments, program processes (one example's run), the LM client
 * (a supervised child registered as "lm") and a supervisor (a nested one
 * with three workers, and the workers themselves). The evaluation must
 * finish with every example accounted for exactly once (done, scored by
 * the metric at most once, and exactly once when it succeeded; a failure
 * carries a reason) and the supervision tree must come back to its shape:
 * the same children, all running, "lm" registered again.
 *
 * The program rides out LM client restarts (it retries DX_ENOLM, as
 * docs/internals/lmclient.md advises callers); Predict alone does not, see
 * docs/reliability.md, "LM client restart". Failures are then only the
 * examples a kill hit: one per program kill, those in flight per LM kill.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/evaluate.h"
#include "dspex/lm.h"
#include "dspex/lmserver.h"
#include "dspex/module.h"
#include "dspex/runtime.h"
#include "dspex/server.h"
#include "dspex/supervisor.h"

#define N_EXAMPLES 400
#define CONCURRENCY 8
#define TAG_STOP 0x73746f70

static dx_lmserver *srv;
static char url[128];

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the tree: root → {lm, workers → {w1, w2, w3}} ------------------- */

static int start_lm(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/chaos-model", url, "sk-chaos"},
        .attempt_timeout_ms = 2000,
    };
    dx_server_opts so = {.link = true, .name = "lm"};
    return dx_lm_client_start(&o, &so, pid_out);
}

static void worker_loop(void *arg)
{
    (void)arg;
    for (;;) {
        dx_msg *m = NULL;
        dx_receive_tag(TAG_STOP, DX_INFINITY, &m);
        dx_msg_free(m);
    }
}

static int start_worker(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    return dx_spawn_link(worker_loop, NULL, pid_out);
}

static const dx_child_spec worker_specs[] = {
    {.id = "w1", .start = start_worker, .shutdown_ms = DX_SUP_BRUTAL_KILL},
    {.id = "w2", .start = start_worker, .shutdown_ms = DX_SUP_BRUTAL_KILL},
    {.id = "w3", .start = start_worker, .shutdown_ms = DX_SUP_BRUTAL_KILL},
};

/* Restart budgets large enough that the chaos never exhausts them: the
 * test is about recovering, not about giving up. */
static const dx_sup_spec workers_spec = {
    .name = "chaos_workers",
    .strategy = DX_SUP_ONE_FOR_ONE,
    .intensity = 10000,
    .period_s = 1,
    .children = worker_specs,
    .nchildren = 3,
};

static const dx_child_spec root_children[] = {
    {.id = "lm", .start = start_lm},
    {.id = "workers",
     .start = dx_sup_start_nested,
     .arg = (void *)&workers_spec,
     .type = DX_SUP_SUPERVISOR},
};

static const dx_sup_spec root_spec = {
    .name = "chaos_root",
    .strategy = DX_SUP_ONE_FOR_ONE,
    .intensity = 10000,
    .period_s = 1,
    .children = root_children,
    .nchildren = 2,
};

static _Atomic uint64_t root_pid;
static _Atomic int root_rc = 1;
static atomic_bool owner_done;

/* Owns the root supervisor (linked) until told to stop it. */
static void tree_owner(void *arg)
{
    (void)arg;
    dx_pid root;
    int rc = dx_sup_start_link(&root_spec, &root, NULL);
    atomic_store(&root_pid, rc == DX_OK ? root.id : 0);
    atomic_store(&root_rc, rc);
    if (rc != DX_OK)
        return;
    dx_msg *m = NULL;
    dx_receive_tag(TAG_STOP, DX_INFINITY, &m);
    dx_msg_free(m);
    dx_sup_stop(root, NULL, 5000);
    atomic_store(&owner_done, true);
}

/* ---- the program: records its process, then a Predict ---------------- */

static _Atomic uint64_t running[64]; /* pids of runs in flight */
static atomic_int metric_calls[N_EXAMPLES];

static int chaotic_forward(dx_ctx *ctx, const dx_module *self,
                           const dx_example *in, dx_prediction **out)
{
    size_t slot = dx_self().id % 64;
    atomic_store(&running[slot], dx_self().id);
    /* No retry here: Predict itself waits for the client's name to come
     * back and asks a restarted client again (programs/predict.c). */
    int rc = dx_forward(ctx, dx_module_child(self, "predict"), in, out);
    atomic_store(&running[slot], 0);
    return rc;
}

static double count_metric(const dx_example *ex, const dx_prediction *p,
                           const dx_trace *t, void *ud)
{
    (void)p;
    (void)t;
    (void)ud;
    long i = (long)dx_example_get_num(ex, "index", -1);
    if (i >= 0 && i < N_EXAMPLES)
        atomic_fetch_add(&metric_calls[i], 1);
    return 1.0;
}

/* ---- chaos ------------------------------------------------------------ */

static atomic_bool chaos_stop, chaos_done;
static atomic_int kills_program, kills_lm, kills_sup, kills_worker;

static dx_pid child_of(dx_pid sup, const char *id)
{
    dx_pid p = DX_NOPID;
    dx_sup_find_child(sup, id, &p);
    return p;
}

/* A process: the supervisor queries are calls (Process only). */
static void chaos(void *arg)
{
    (void)arg;
    unsigned seed = 20261126;
    dx_pid root = {atomic_load(&root_pid)};
    /* The first four moves are one of each kind, so every kind happens
     * however soon the evaluation ends; then random ones. */
    for (unsigned move = 0; !atomic_load(&chaos_stop); move++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r =
            move < 4 ? (unsigned[]){70, 80, 90, 0}[move] : (seed >> 16) % 100;
        if (r < 60) { /* a program process: the first running one from a
                         random slot on */
            uint64_t id = 0;
            for (unsigned k = 0; k < 64 && !id; k++)
                id = atomic_load(&running[((seed >> 4) + k) % 64]);
            if (id && dx_kill((dx_pid){id}) == DX_OK)
                atomic_fetch_add(&kills_program, 1);
        } else if (r < 75) { /* the LM client */
            dx_pid lm = dx_whereis("lm");
            if (!dx_pid_is_none(lm) && dx_kill(lm) == DX_OK)
                atomic_fetch_add(&kills_lm, 1);
        } else if (r < 85) { /* a supervisor */
            dx_pid w = child_of(root, "workers");
            if (!dx_pid_is_none(w) && dx_kill(w) == DX_OK)
                atomic_fetch_add(&kills_sup, 1);
        } else { /* a supervised worker */
            dx_pid w = child_of(root, "workers");
            static const char *const ids[] = {"w1", "w2", "w3"};
            dx_pid k = dx_pid_is_none(w) ? DX_NOPID
                                         : child_of(w, ids[(seed >> 8) % 3]);
            if (!dx_pid_is_none(k) && dx_kill(k) == DX_OK)
                atomic_fetch_add(&kills_worker, 1);
        }
        dx_sleep(5 + (seed >> 20) % 25);
    }
    atomic_store(&chaos_done, true);
}

/* ---- the test --------------------------------------------------------- */

static void setup(void)
{
    dx_lmserver_opts so = {.latency_ms = 20};
    cr_assert_eq(dx_lmserver_start(&so, &srv), DX_OK);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
}

static void teardown(void)
{
    dx_runtime_stop();
    dx_lmserver_stop_free(srv);
}

TestSuite(chaos, .init = setup, .fini = teardown, .timeout = 60);

/* The tree's shape, read by a process (supervisor queries are calls). */
typedef struct shape {
    int rc;
    dx_sup_counts root, workers;
    size_t n;
    char ids[2][DX_SUP_ID_MAX + 1];
    bool lm_registered_is_child;
} shape;

static shape seen;
static dx_pid shape_root;
static atomic_bool shape_done;

/* Waits up to 5 s for restarts to settle: every child running. */
static void read_shape(void *arg)
{
    (void)arg;
    shape sh;
    for (int i = 0; i < 500; i++) {
        memset(&sh, 0, sizeof sh);
        sh.rc = dx_sup_count_children(shape_root, &sh.root);
        dx_pid w = child_of(shape_root, "workers");
        if (sh.rc == DX_OK && !dx_pid_is_none(w))
            sh.rc = dx_sup_count_children(w, &sh.workers);
        dx_sup_child *kids = NULL;
        if (sh.rc == DX_OK)
            sh.rc = dx_sup_which_children(shape_root, &kids, &sh.n);
        for (size_t k = 0; sh.rc == DX_OK && k < sh.n && k < 2; k++)
            snprintf(sh.ids[k], sizeof sh.ids[k], "%s", kids[k].id);
        sh.lm_registered_is_child = sh.rc == DX_OK && sh.n >= 1 &&
                                    dx_pid_eq(kids[0].pid, dx_whereis("lm"));
        dx_free(kids);
        if (sh.rc == DX_OK && sh.root.active == 2 && sh.workers.active == 3 &&
            sh.lm_registered_is_child)
            break;
        dx_sleep(10);
    }
    seen = sh;
    atomic_store(&shape_done, true);
}

/* Wait (host thread) for a flag a process sets as its last act. */
static bool wait_flag(atomic_bool *flag, long ms)
{
    for (long i = 0; i < ms / 5 && !atomic_load(flag); i++)
        sleep_ms(5);
    return atomic_load(flag);
}

/* Every child running, the ids as started, "lm" the supervised client. */
static void assert_shape(dx_pid root)
{
    shape_root = root;
    atomic_store(&shape_done, false);
    dx_pid p;
    cr_assert_eq(dx_spawn(read_shape, NULL, &p), DX_OK);
    cr_assert(wait_flag(&shape_done, 10000), "the shape was read");
    cr_assert_eq(seen.rc, DX_OK, "%s", dx_err_name(seen.rc));
    cr_assert_eq(seen.root.specs, 2);
    cr_assert_eq(seen.root.active, 2, "root: %zu of 2 running",
                 seen.root.active);
    cr_assert_eq(seen.root.supervisors, 1);
    cr_assert_eq(seen.workers.specs, 3);
    cr_assert_eq(seen.workers.active, 3, "workers: %zu of 3 running",
                 seen.workers.active);
    cr_assert_eq(seen.n, 2);
    cr_assert_str_eq(seen.ids[0], "lm");
    cr_assert_str_eq(seen.ids[1], "workers");
    cr_assert(seen.lm_registered_is_child,
              "the registered lm is the supervised one");
}

static dx_module *make_program(void)
{
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    dx_module *prog =
        dx_module_new("Chaotic", chaotic_forward, NULL, NULL, NULL);
    cr_assert_eq(dx_module_add(prog, "predict", dx_predict_new(s, NULL)),
                 DX_OK);
    dx_signature_unref(s);
    return prog;
}

static dx_dataset *make_dataset(void)
{
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    for (int i = 0; i < N_EXAMPLES; i++) {
        dx_example *ex = dx_example_new();
        char q[32];
        snprintf(q, sizeof q, "q%d", i);
        dx_example_set_str(ex, "question", q);
        dx_example_set_int(ex, "index", i);
        dx_example_with_inputs(ex, in, 1);
        cr_assert_eq(dx_dataset_append(ds, ex), DX_OK);
    }
    return ds;
}

static dx_pid start_tree(void)
{
    dx_pid owner;
    cr_assert_eq(dx_spawn(tree_owner, NULL, &owner), DX_OK);
    for (int i = 0; i < 500 && atomic_load(&root_rc) == 1; i++)
        sleep_ms(10);
    cr_assert_eq(atomic_load(&root_rc), DX_OK);
    return owner;
}

static void stop_tree(dx_pid owner)
{
    cr_assert_eq(dx_send_tag(owner, TAG_STOP), DX_OK);
    cr_assert(wait_flag(&owner_done, 10000), "the tree stopped");
}

Test(chaos, an_evaluation_under_random_kills_scores_every_example_once)
{
    dx_pid owner = start_tree();
    dx_pid root = {atomic_load(&root_pid)};
    assert_shape(root);

    dx_module *prog = make_program();
    dx_dataset *ds = make_dataset();

    dx_pid chaos_pid;
    cr_assert_eq(dx_spawn(chaos, NULL, &chaos_pid), DX_OK);
    dx_eval_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = count_metric},
        .concurrency = CONCURRENCY,
        .example_timeout_ms = 10000,
        .progress = DX_EVAL_PROGRESS_OFF,
        .call = {.cache_mode = DX_LMCACHE_BYPASS},
    };
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    int rc = dx_evaluate(prog, ds, &o, &r, &d);
    atomic_store(&chaos_stop, true);
    cr_assert(wait_flag(&chaos_done, 10000), "the chaos stopped");
    cr_assert_eq(rc, DX_OK, "%s", d.msg);

    int kp = atomic_load(&kills_program), kl = atomic_load(&kills_lm),
        ks = atomic_load(&kills_sup), kw = atomic_load(&kills_worker);
    cr_log_info("kills: %d program, %d lm, %d supervisor, %d worker; "
                "%zu errors of %zu",
                kp, kl, ks, kw, r->n_errors, r->n);
    cr_assert_gt(kp + kl + ks + kw, 3, "the chaos did something");
    cr_assert_gt(kl, 0);
    cr_assert_gt(ks, 0);

    cr_assert_eq(r->n, N_EXAMPLES);
    cr_assert_eq(r->n_done, N_EXAMPLES, "every example finished");
    cr_assert_not(r->cancelled);
    cr_assert_not(r->stopped_early);
    size_t ok = 0;
    for (size_t i = 0; i < r->n; i++) {
        const dx_eval_row *row = &r->rows[i];
        cr_assert_eq(row->index, i, "rows in dataset order, each once");
        cr_assert(row->done, "example %zu finished", i);
        int calls = atomic_load(&metric_calls[i]);
        if (row->error == DX_OK) {
            cr_assert_not_null(row->pred);
            cr_assert_eq(calls, 1, "example %zu scored %d times", i, calls);
            ok++;
        } else {
            cr_assert_leq(calls, 1, "example %zu scored %d times", i, calls);
            cr_assert_not_null(row->error_msg,
                               "example %zu failed without "
                               "a reason",
                               i);
        }
    }
    cr_assert_eq(ok + r->n_errors, r->n);
    /* A kill costs at most what it hits: one example for a program
     * process, the examples in flight for the LM client. */
    cr_assert_leq(r->n_errors, (size_t)kp + (size_t)kl * CONCURRENCY,
                  "%zu errors from %d program and %d lm kills", r->n_errors, kp,
                  kl);
    cr_assert_gt(ok, 0);

    assert_shape(root);
    cr_assert_geq(seen.root.restarts, (uint64_t)(kl + ks) / 2,
                  "the supervisor restarted what was killed (%llu)",
                  (unsigned long long)seen.root.restarts);

    dx_eval_result_free(r);
    dx_dataset_free(ds);
    dx_module_free(prog);
    stop_tree(owner);
}
