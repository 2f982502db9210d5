/*
 * test_teleprompt.c — optimizers against the local LM server: the demos
 * LabeledFewShot and BootstrapFewShot choose are the ones Python DSPy
 * chooses for the same seed and trainset (expected indices computed with
 * CPython 3.11's random module); bootstrapped demos carry the traces;
 * determinism; a crashing metric does not stop the optimization; the LM
 * call budget; random search keeps its best candidate and logs every one;
 * progress events; the HTML report; and a run killed with SIGKILL resumes
 * from its checkpoint to the same program and score as an uninterrupted
 * run.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/telemetry.h"
#include "dspex/teleprompt.h"
#include "dx_config.h"
#include "lm_fixture.h"

TestSuite(teleprompt, .init = fixture_setup, .fini = fixture_teardown,
          .timeout = 120);

static dx_dataset *trainset(size_t n)
{
    dx_dataset *ds = dx_dataset_new();
    const char *in[] = {"question"};
    for (size_t i = 0; i < n; i++) {
        dx_example *ex = dx_example_new();
        char q[32];
        snprintf(q, sizeof q, "q%zu", i);
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

static long demo_index(const dx_example *d)
{
    return strtol(dx_example_get_str(d, "question", "q-1") + 1, NULL, 10);
}

Test(teleprompt, labeled_fewshot_samples_like_python_dspy)
{
    /* Two predictors share one random.Random(0). */
    dx_module *m = dx_module_new("Two", NULL, NULL, NULL, NULL);
    cr_assert_null(m, "a user module needs a forward");
    dx_module *cot = NULL;
    dx_signature *s = NULL;
    dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL);
    cot = dx_chain_of_thought_new(s, NULL);
    dx_signature_unref(s);
    dx_module *st = student();
    dx_dataset *ds = trainset(10);

    dx_module *out = NULL;
    cr_assert_eq(dx_labeled_fewshot(st, ds, 3, true, &out), DX_OK);
    /* random.Random(0).sample(range(10), 3) == [6, 9, 0] */
    cr_assert_eq(dx_predict_n_demos(out), 3);
    long want[] = {6, 9, 0};
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(demo_index(dx_predict_demo(out, i)), want[i]);
    cr_assert_eq(dx_predict_n_demos(st), 0, "the student is not changed");
    dx_module_free(out);

    cr_assert_eq(dx_labeled_fewshot(st, ds, 3, false, &out), DX_OK);
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(demo_index(dx_predict_demo(out, i)), (long)i);
    dx_module_free(out);
    dx_module_free(cot);
    dx_module_free(st);
    dx_dataset_free(ds);
}

/* Passes the even-numbered questions. */
static double even_metric(const dx_example *ex, const dx_prediction *p,
                          const dx_trace *t, void *ud)
{
    (void)p;
    (void)ud;
    cr_assert(t && t->n >= 1, "bootstrap metrics see the trace");
    return demo_index(ex) % 2 == 0 ? 1.0 : 0.0;
}

Test(teleprompt, bootstrap_picks_the_demos_python_dspy_picks)
{
    dx_module *st = student();
    dx_dataset *ds = trainset(10);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = even_metric},
        .max_bootstrapped_demos = 2,
        .max_labeled_demos = 4,
        .concurrency = 4,
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, ds, &o, &r, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_eq(r->n_bootstrapped, 2);
    const dx_module *p = r->program;
    /* Traces of q0 and q2, then random.Random(0).sample of the shuffled
     * rest: [9, 8]. */
    cr_assert_eq(dx_predict_n_demos(p), 4);
    long want[] = {0, 2, 9, 8};
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(demo_index(dx_predict_demo(p, i)), want[i], "demo %zu", i);
    const dx_example *aug = dx_predict_demo(p, 0);
    cr_assert(cJSON_IsTrue(dx_example_get(aug, "augmented")));
    cr_assert_str_eq(dx_example_key(aug, 0), "augmented");
    cr_assert(strstr(dx_example_get_str(aug, "answer", ""), "q0"),
              "the demo's answer is the teacher's: %s",
              dx_example_get_str(aug, "answer", ""));
    cr_assert_null(dx_example_get(dx_predict_demo(p, 2), "augmented"));
    cr_assert_gt(r->usage.calls, 0);
    cr_assert_eq(dx_predict_n_demos(st), 0, "the student is not changed");

    /* Determinism: the same again. */
    dx_tp_result *r2 = NULL;
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, ds, &o, &r2, &d), DX_OK);
    for (size_t i = 0; i < 4; i++)
        cr_assert(dx_example_equal(dx_predict_demo(p, i),
                                   dx_predict_demo(r2->program, i)));
    dx_tp_result_free(r2);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(ds);
}

static double crashing_metric(const dx_example *ex, const dx_prediction *p,
                              const dx_trace *t, void *ud)
{
    (void)p;
    (void)t;
    (void)ud;
    if (demo_index(ex) == 1)
        crash_now();
    return 1.0;
}

static double never_metric(const dx_example *ex, const dx_prediction *p,
                           const dx_trace *t, void *ud)
{
    (void)ex;
    (void)p;
    (void)t;
    (void)ud;
    return 0.0;
}

/* A teacher run that ends after the runs started behind it must not end
 * the bootstrap: every example is still tried. The slow run holds `accept`,
 * the runs behind it fill the window ahead of it, and when it ends last
 * nothing is running while the next example was never started. */
Test(teleprompt, a_slow_early_teacher_run_does_not_end_the_bootstrap)
{
    dx_module *st = student();
    dx_dataset *ds = trainset(12);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = never_metric},
        .max_bootstrapped_demos = 3,
        .max_labeled_demos = 3,
        .concurrency = 2,
    };
    cr_assert_eq(dx_lmserver_inject(srv, "slow:400", 1), DX_OK);
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, ds, &o, &r, &d), DX_OK, "%s",
                 d.msg);
    size_t tried = 0;
    for (size_t i = 0; i < r->n_trials; i++)
        tried += strcmp(r->trials[i].kind, "bootstrap_example") == 0;
    cr_assert_eq(tried, 12, "%zu of 12 examples were tried", tried);
    cr_assert_eq(r->n_bootstrapped, 0);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(ds);
}

/* Hangs on the first example; the LM call before it has ended, so only
 * the run's deadline can end it. */
static double metric_hanging_on_q0(const dx_example *ex, const dx_prediction *p,
                                   const dx_trace *t, void *ud)
{
    (void)p;
    (void)t;
    (void)ud;
    if (strcmp(dx_example_get_str(ex, "question", ""), "q0") == 0)
        dx_sleep(100000);
    return 0.0;
}

/* Bootstraps 4 examples, one run at a time, with a metric that never
 * returns on the first: the run must be ended at its deadline, and with
 * max_errors 1 the bootstrap stops there and says which example and why. */
static void expect_run_on_q0_ended_at_its_deadline(dx_metric_fn metric)
{
    dx_module *st = student();
    dx_dataset *ds = trainset(4);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = metric},
        .max_bootstrapped_demos = 3,
        .max_labeled_demos = 3,
        .concurrency = 1,
        .example_timeout_ms = 2000,
        .max_errors = 1,
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, ds, &o, &r, &d), DX_ELIMIT,
                 "%s", d.msg);
    cr_assert(strstr(d.msg, "example 0") != NULL, "%s", d.msg);
    cr_assert(strstr(d.msg, "passed its deadline") != NULL, "%s", d.msg);
    dx_module_free(st);
    dx_dataset_free(ds);
}

/* A teacher run that hangs is killed at example_timeout_ms and counts as
 * an error: with max_errors 1 the bootstrap stops there and says which
 * example and why. The timeout leaves the LM call before the hang room to
 * finish on a slow build (valgrind). */
Test(teleprompt, a_hanging_teacher_run_is_killed_at_its_deadline)
{
    expect_run_on_q0_ended_at_its_deadline(metric_hanging_on_q0);
}

/* Loops on the first example, in code that never calls the runtime. */
static volatile unsigned long metric_turns;

static double metric_looping_on_q0(const dx_example *ex, const dx_prediction *p,
                                   const dx_trace *t, void *ud)
{
    (void)p;
    (void)t;
    (void)ud;
    if (strcmp(dx_example_get_str(ex, "question", ""), "q0") == 0)
        for (;;)
            metric_turns++;
    return 0.0;
}

/* On one scheduler the bootstrap's coordinator shares it with the teacher
 * run, so a run looping in its metric keeps the coordinator from running
 * to kill it: the runtime's deadline for the run stops it, and the run
 * counts as past its deadline as before. */
TestSuite(teleprompt_held, .init = fixture_setup_one_scheduler,
          .fini = fixture_teardown, .timeout = 60);

Test(teleprompt_held, a_teacher_run_looping_on_the_coordinators_scheduler_ends)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("fault isolation is off under ThreadSanitizer");
    expect_run_on_q0_ended_at_its_deadline(metric_looping_on_q0);
}

/* Called from a process, the bootstrap runs in it and takes only its own
 * runs' DOWNs: the process's own monitor's DOWN is still there after. */
typedef struct boot_in_proc {
    dx_module *st;
    dx_dataset *ds;
    int rc;
    bool down_kept;
} boot_in_proc;

static void ends_at_once(void *arg)
{
    (void)arg;
}

static void bootstrapping_proc(void *arg)
{
    boot_in_proc *b = arg;
    dx_pid other;
    dx_ref mon;
    dx_spawn_opts so = {.monitor = true};
    dx_spawn_opt(ends_at_once, NULL, &so, &other, &mon);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = never_metric},
        .max_bootstrapped_demos = 3,
        .max_labeled_demos = 3,
        .concurrency = 2,
    };
    dx_tp_result *r = NULL;
    b->rc = dx_bootstrap_fewshot(b->st, NULL, b->ds, &o, &r, NULL);
    dx_tp_result_free(r);
    dx_msg *m = NULL;
    dx_match down = {
        .fields = DX_MATCH_TAG | DX_MATCH_REF, .tag = DX_TAG_DOWN, .ref = mon};
    b->down_kept = dx_receive(&down, 0, &m) == DX_OK;
    dx_msg_free(m);
}

Test(teleprompt, a_bootstrap_in_a_process_leaves_its_downs_alone)
{
    boot_in_proc b = {.st = student(), .ds = trainset(6)};
    dx_pid pid;
    cr_assert_eq(dx_spawn(bootstrapping_proc, &b, &pid), DX_OK);
    /* DX_ENOPROC: it ended before the wait began. */
    int rc = dx_wait_exit(pid, 60000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_strerror(rc));
    cr_assert_eq(b.rc, DX_OK);
    cr_assert(b.down_kept, "the process's own DOWN was taken");
    dx_module_free(b.st);
    dx_dataset_free(b.ds);
}

/* ---- cancellation ----------------------------------------------------- */

typedef struct opt_thread {
    dx_module *st;
    dx_dataset *train, *val;
    int rc;
    dx_diag d;
} opt_thread;

static void *run_bootstrap(void *arg)
{
    opt_thread *t = arg;
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = never_metric},
        .concurrency = 2,
    };
    dx_tp_result *r = NULL;
    t->rc = dx_bootstrap_fewshot(t->st, NULL, t->train, &o, &r, &t->d);
    dx_tp_result_free(r);
    return NULL;
}

/* Hangs on the valset's examples ("v..."), so the candidates' evaluation
 * can only be cancelled; the teacher runs on the trainset ("q...") end. */
static atomic_int valset_hangs;

static double metric_hanging_on_valset(const dx_example *ex,
                                       const dx_prediction *p,
                                       const dx_trace *t, void *ud)
{
    (void)p;
    (void)t;
    (void)ud;
    if (dx_example_get_str(ex, "question", "")[0] == 'v') {
        atomic_fetch_add(&valset_hangs, 1);
        dx_sleep(100000);
    }
    return 0.0;
}

static dx_dataset *valset(size_t n)
{
    dx_dataset *ds = trainset(n);
    for (size_t i = 0; i < n; i++) {
        char q[32];
        snprintf(q, sizeof q, "v%zu", i);
        dx_example_set_str(ds->items[i], "question", q);
    }
    return ds;
}

static void *run_random_search(void *arg)
{
    opt_thread *t = arg;
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = metric_hanging_on_valset},
        .progress = DX_EVAL_PROGRESS_OFF,
        .num_candidates = 2,
        .concurrency = 2,
    };
    dx_tp_result *r = NULL;
    t->rc = dx_random_search(t->st, NULL, t->train, t->val, &o, &r, &t->d);
    dx_tp_result_free(r);
    return NULL;
}

/* Not a performance bound: without the cancellation the runs would wait
 * 100 s. */
static bool joined_within(pthread_t th, int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    return pthread_timedjoin_np(th, NULL, &ts) == 0;
}

static void wait_requests(uint64_t n)
{
    dx_lmserver_stats st = {0};
    for (int i = 0; i < 20000 && st.requests < n; i++) {
        usleep(1000);
        dx_lmserver_stats_get(srv, &st);
    }
    cr_assert_geq(st.requests, n, "the runs reached the server");
}

/* The teacher runs hang in their LM calls: a cancellation ends them and
 * the bootstrap says it was cancelled. */
Test(teleprompt, a_cancellation_stops_a_bootstrap_whose_runs_hang)
{
    opt_thread t = {.st = student(), .train = trainset(6)};
    cr_assert_eq(dx_lmserver_inject(srv, "slow:100000", 2), DX_OK);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_bootstrap, &t), 0);
    wait_requests(2);
    dx_evaluate_cancel_all();
    cr_assert(joined_within(th, 30), "the cancellation was not noticed");
    cr_assert_eq(t.rc, DX_ECANCELED, "%s", t.d.msg);
    cr_assert(strstr(t.d.msg, "cancelled") != NULL, "%s", t.d.msg);
    dx_module_free(t.st);
    dx_dataset_free(t.train);
}

/* A process killed mid-bootstrap (an optimizer stopped by its supervisor)
 * takes its teacher runs with it: they would otherwise wait out their LM
 * calls (here 100 s) with nobody to read them. What the bootstrap held is
 * freed (LeakSanitizer watches the sanitizer builds), and the caller's
 * trainset and student, freed once the process has ended as its owner
 * would, are no longer read by runs whose kill has not landed yet. */
static void bootstrapping_until_killed(void *arg)
{
    opt_thread *t = arg;
    run_bootstrap(t);
}

Test(teleprompt, a_killed_bootstrap_takes_its_teacher_runs_with_it)
{
    opt_thread t = {.st = student(), .train = trainset(6)};
    cr_assert_eq(dx_lmserver_inject(srv, "slow:100000", 2), DX_OK);
    dx_pid pid;
    cr_assert_eq(dx_spawn(bootstrapping_until_killed, &t, &pid), DX_OK);
    wait_requests(2);
    cr_assert_eq(processes_labeled("dspex.bootstrap.example"), 2);
    cr_assert_eq(dx_kill(pid), DX_OK);
    int rc = dx_wait_exit(pid, 10000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_strerror(rc));
    dx_module_free(t.st);
    dx_dataset_free(t.train);
    size_t left = 2;
    for (int i = 0;
         i < 10000 && (left = processes_labeled("dspex.bootstrap.example")) > 0;
         i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    cr_assert_eq(left, 0, "the teacher runs outlived their bootstrap");
}

/* A candidate program read by an example that has not yet yielded when
 * its optimizer's process is killed: the program stays until that example
 * has ended (AddressSanitizer would report the read of a freed program).
 * The module spins for 300 ms without yielding, reading its own state. */
static int spinning_forward(dx_ctx *ctx, const dx_module *self,
                            const dx_example *in, dx_prediction **out)
{
    (void)ctx;
    (void)in;
    const volatile int *state = dx_module_ud(self);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int seen = 0;
    do {
        seen += *state;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 +
                 (t.tv_nsec - t0.tv_nsec) / 1000000 <
             300);
    *out = dx_prediction_new();
    dx_example_set_str(dx_prediction_fields_mut(*out), "answer",
                       seen ? "x" : "");
    return DX_OK;
}

static void *copy_int(const void *ud)
{
    int *c = dx_malloc(sizeof *c);
    if (c)
        *c = *(const int *)ud;
    return c;
}

static void searching_until_killed(void *arg)
{
    opt_thread *t = arg;
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = never_metric},
        .progress = DX_EVAL_PROGRESS_OFF,
        .num_candidates = 1,
        /* One example at a time: it spins on one scheduler while the
         * optimizer's end is handled on the other. */
        .concurrency = 1,
    };
    dx_tp_result *r = NULL;
    t->rc = dx_random_search(t->st, NULL, t->train, t->val, &o, &r, &t->d);
    dx_tp_result_free(r);
}

Test(teleprompt, a_killed_random_search_keeps_what_its_examples_still_read)
{
    int *state = dx_malloc(sizeof *state);
    *state = 1;
    opt_thread t = {
        .st = dx_module_new("Spinner", spinning_forward, state, dx_free,
                            copy_int),
        .train = trainset(2),
        .val = valset(2),
    };
    dx_pid pid;
    cr_assert_eq(dx_spawn(searching_until_killed, &t, &pid), DX_OK);
    /* The candidates' evaluation has started: its examples spin. */
    size_t running = 0;
    for (int i = 0;
         i < 20000 &&
         (running = processes_labeled("dspex.evaluate.example")) == 0;
         i++)
        nanosleep(&(struct timespec){0, 500000}, NULL);
    cr_assert_gt(running, 0, "the evaluation did not start");
    nanosleep(&(struct timespec){0, 20000000}, NULL);
    cr_assert_eq(dx_kill(pid), DX_OK);
    int rc = dx_wait_exit(pid, 10000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_strerror(rc));
    size_t left = 1;
    for (int i = 0;
         i < 10000 && (left = processes_labeled("dspex.evaluate.example")) > 0;
         i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    cr_assert_eq(left, 0, "the examples outlived their evaluation");
    dx_module_free(t.st);
    dx_dataset_free(t.train);
    dx_dataset_free(t.val);
}

/* An evaluation cut short scores no candidate: random search stops with
 * DX_ECANCELED instead of keeping a score of the examples that finished. */
Test(teleprompt, a_cancelled_candidate_evaluation_stops_random_search)
{
    opt_thread t = {.st = student(), .train = trainset(4), .val = valset(4)};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_random_search, &t), 0);
    /* The teacher runs come first; then the candidates' evaluation, whose
     * metric hangs. */
    for (int i = 0; i < 30000 && atomic_load(&valset_hangs) < 2; i++)
        usleep(1000);
    cr_assert_geq(atomic_load(&valset_hangs), 2, "the evaluation started");
    dx_evaluate_cancel_all();
    cr_assert(joined_within(th, 30), "the cancellation was not noticed");
    cr_assert_eq(t.rc, DX_ECANCELED, "%s", t.d.msg);
    dx_module_free(t.st);
    dx_dataset_free(t.train);
    dx_dataset_free(t.val);
}

Test(teleprompt, a_crashing_metric_does_not_stop_the_optimization)
{
    dx_module *st = student();
    dx_dataset *ds = trainset(6);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = crashing_metric},
        .max_bootstrapped_demos = 3,
        .max_labeled_demos = 3,
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, ds, &o, &r, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_eq(r->n_bootstrapped, 3, "q0, q2, q3 (q1's metric crashed)");
    cr_assert_eq(demo_index(dx_predict_demo(r->program, 1)), 2);
    dx_tp_result_free(r);

    /* With max_errors 1 the crash is one too many. */
    o.max_errors = 1;
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, ds, &o, &r, &d), DX_ELIMIT);
    cr_assert(strstr(d.msg, "max_errors"), "%s", d.msg);
    dx_module_free(st);
    dx_dataset_free(ds);
}

Test(teleprompt, the_lm_call_budget_is_respected)
{
    dx_module *st = student();
    dx_dataset *ds = trainset(40);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = even_metric},
        .max_bootstrapped_demos = 40,
        .concurrency = 2,
        .max_lm_calls = 6,
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, ds, &o, &r, &d), DX_OK, "%s",
                 d.msg);
    /* Each run is two calls (chat, then JSON fallback); at most
     * `concurrency` runs start before the budget is seen spent. */
    cr_assert_leq(r->usage.calls, 6 + 2 * 2, "%lld calls",
                  (long long)r->usage.calls);
    cr_assert_lt(r->n_trials, 40);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(ds);
}

/* ---- random search ------------------------------------------------------ */

static _Atomic int trial_events, best_events;

static void listen(void *arg)
{
    (void)arg;
    dx_telemetry_subscribe(dx_self(), "optimize.");
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_tag(DX_TELEMETRY_TAG, DX_INFINITY, &m) != DX_OK)
            return;
        const dx_telemetry_event *e = m->ptr;
        if (strcmp(e->name, "optimize.trial") == 0 &&
            e->kind == DX_TELEMETRY_STOP &&
            strcmp(e->model, "random_search") == 0)
            trial_events++;
        if (strcmp(e->name, "optimize.best") == 0)
            best_events++;
        dx_msg_free(m);
    }
}

/* A program that reports its demos: it runs its Predict and adds the sum
 * of the demos' question numbers, so a metric can tell candidates apart. */
static int probe_forward(dx_ctx *ctx, const dx_module *self,
                         const dx_example *in, dx_prediction **out)
{
    const dx_module *p = dx_module_child(self, "p");
    DX_TRY(dx_forward(ctx, p, in, out));
    long sum = 0;
    for (size_t i = 0; i < dx_predict_n_demos(p); i++)
        sum += demo_index(dx_predict_demo(p, i)) + 1;
    dx_example_set_int(dx_prediction_fields_mut(*out), "demo_sum", sum);
    return DX_OK;
}

static dx_module *probe_program(void)
{
    dx_module *m = dx_module_new("Probe", probe_forward, NULL, NULL, NULL);
    cr_assert_eq(dx_module_add(m, "p", student()), DX_OK);
    return m;
}

static double answer_metric(const dx_example *ex, const dx_prediction *p,
                            const dx_trace *t, void *ud)
{
    (void)t;
    (void)ud;
    long sum = (long)dx_example_get_num(dx_prediction_fields(p), "demo_sum", 0);
    return sum % 7 >= demo_index(ex) ? 1.0 : 0.0;
}

Test(teleprompt, random_search_keeps_the_best_and_logs_every_candidate)
{
    dx_pid listener;
    cr_assert_eq(dx_spawn(listen, NULL, &listener), DX_OK);
    host_sleep_ms(20);
    dx_module *st = probe_program();
    dx_dataset *train = trainset(8);
    dx_dataset *val = trainset(6);
    char report[] = "/tmp/dx_tp_report_XXXXXX";
    int fd = mkstemp(report);
    cr_assert_geq(fd, 0);
    close(fd);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = answer_metric},
        .max_bootstrapped_demos = 2,
        .max_labeled_demos = 3,
        .num_candidates = 2,
        .progress = DX_EVAL_PROGRESS_OFF,
        .report_path = report,
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_random_search(st, NULL, train, val, &o, &r, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_eq(r->n_trials, 5, "seeds -3, -2, -1, 0, 1");
    const char *kinds[] = {"zero_shot", "labeled", "bootstrap", "shuffled",
                           "shuffled"};
    double best = -1;
    for (size_t i = 0; i < 5; i++) {
        cr_assert_eq(r->trials[i].id, (int64_t)i - 3);
        cr_assert_str_eq(r->trials[i].kind, kinds[i]);
        if (r->trials[i].score > best)
            best = r->trials[i].score;
    }
    cr_assert_float_eq(r->score, best, 1e-9);
    /* The kept program is the first candidate with the best score. */
    size_t first_best = 0;
    while (r->trials[first_best].score < best)
        first_best++;
    cr_assert_gt(first_best, 0, "a candidate beat zero-shot");
    cr_assert_gt(dx_predict_n_demos(dx_module_child(r->program, "p")), 0);
    dx_eval_opts eo = {.metric = o.metric, .progress = DX_EVAL_PROGRESS_OFF};
    dx_eval_result *er = NULL;
    cr_assert_eq(dx_evaluate(r->program, val, &eo, &er, NULL), DX_OK);
    cr_assert_float_eq(er->score, r->score, 1e-9, "its score is its own");
    dx_eval_result_free(er);
    host_sleep_ms(50);
    cr_assert_eq(atomic_load(&trial_events), 5, "%d",
                 atomic_load(&trial_events));
    cr_assert_geq(atomic_load(&best_events), 1);
    FILE *f = fopen(report, "rb");
    cr_assert(f);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    cr_assert(strstr(buf, "<svg"));
    cr_assert(strstr(buf, "polyline"));
    unlink(report);
    dx_kill(listener);
    dx_tp_result_free(r);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
}

/* ---- kill -9 and resume ---------------------------------------------------- */

static dx_tp_opts resume_opts(const char *ckpt)
{
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = answer_metric},
        .max_bootstrapped_demos = 3,
        .max_labeled_demos = 4,
        .num_candidates = 4,
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
        .checkpoint_path = ckpt,
    };
    return o;
}

static long candidate_rows(const char *path)
{
    sqlite3 *db = NULL;
    long n = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM dspex_trials", -1, &st,
                               NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return n;
}

static char *state_text(const dx_module *m)
{
    cJSON *st = dx_module_dump_state(m);
    char *t = cJSON_PrintUnformatted(st);
    cJSON_Delete(st);
    return t;
}

/* The child: everything of its own, slow answers, killed mid-run. */
static void child_run(const char *ckpt)
{
    dx_lmserver_opts so = {.latency_ms = 15};
    if (dx_lmserver_start(&so, &srv) != DX_OK)
        _exit(3);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", dx_lmserver_port(srv));
    dx_runtime_start(&(dx_runtime_opts){.schedulers = 2});
    fixture_run(fixture_start_client);
    dx_module *st = probe_program();
    dx_dataset *train = trainset(12), *val = trainset(6);
    dx_tp_opts o = resume_opts(ckpt);
    dx_tp_result *r = NULL;
    dx_random_search(st, NULL, train, val, &o, &r, NULL);
    _exit(0); /* finishing is a failure of the test: it should be killed */
}

TestSuite(teleprompt_resume, .timeout = 180);

Test(teleprompt_resume, a_killed_run_resumes_to_the_same_program_and_score)
{
    char ckpt[] = "/tmp/dx_tp_ckpt_XXXXXX";
    int fd = mkstemp(ckpt);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(ckpt);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0)
        child_run(ckpt);
    /* Kill it once a few trials (bootstrap runs, candidates) are
     * checkpointed. */
    for (int i = 0; i < 3000 && candidate_rows(ckpt) < 6; i++)
        host_sleep_ms(10);
    long before_kill = candidate_rows(ckpt);
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    cr_assert(WIFSIGNALED(status),
              "the child was killed mid-run (exit status %d, %ld rows)",
              WIFEXITED(status) ? WEXITSTATUS(status) : -1, before_kill);
    cr_assert_geq(before_kill, 6);

    fixture_setup();
    dx_module *st = probe_program();
    dx_dataset *train = trainset(12), *val = trainset(6);
    dx_tp_opts o = resume_opts(ckpt);
    dx_tp_result *resumed = NULL, *fresh = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_random_search(st, NULL, train, val, &o, &resumed, &d),
                 DX_OK, "%s", d.msg);
    long rows_after = candidate_rows(ckpt);
    cr_assert_gt(rows_after, before_kill, "the resumed run finished the work");

    o.checkpoint_path = NULL;
    cr_assert_eq(dx_random_search(st, NULL, train, val, &o, &fresh, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_eq(resumed->n_trials, fresh->n_trials);
    /* What was checkpointed was not asked for again. */
    cr_assert_lt(resumed->usage.calls, fresh->usage.calls, "%lld vs %lld",
                 (long long)resumed->usage.calls,
                 (long long)fresh->usage.calls);
    /* On a difference, say which trials differ and where each came from. */
    char log[4096] = "";
    size_t used = 0;
    bool same = fabs(resumed->score - fresh->score) <= 1e-9;
    for (size_t i = 0; i < fresh->n_trials; i++) {
        const dx_tp_trial *r = &resumed->trials[i], *f = &fresh->trials[i];
        bool differs = fabs(r->score - f->score) > 1e-9 || r->id != f->id ||
                       strcmp(r->kind, f->kind) != 0;
        same = same && !differs;
        /* Calls (cache hits) and wall time tell a candidate whose
         * evaluation failed or timed out from one that was built
         * differently. */
        int n = snprintf(
            log + used, sizeof log - used,
            "\n %s trial %zu: %s %lld%s resumed %g (%lld calls, %lld cached, "
            "%.2f s), fresh %s %lld %g (%lld calls, %lld cached, %.2f s)",
            differs ? "**" : "  ", i, r->kind, (long long)r->id,
            r->from_checkpoint ? " (checkpoint)" : "", r->score,
            (long long)r->usage.calls, (long long)r->usage.cached_calls,
            r->wall_s, f->kind, (long long)f->id, f->score,
            (long long)f->usage.calls, (long long)f->usage.cached_calls,
            f->wall_s);
        if (n > 0 && (size_t)n < sizeof log - used)
            used += (size_t)n;
    }
    cr_assert(same, "resumed %g vs fresh %g:%s", resumed->score, fresh->score,
              log);
    char *a = state_text(resumed->program), *b = state_text(fresh->program);
    cr_assert_str_eq(a, b);
    cJSON_free(a);
    cJSON_free(b);
    dx_tp_result_free(resumed);
    dx_tp_result_free(fresh);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
    fixture_teardown();
    unlink(ckpt);
    char aux[64];
    snprintf(aux, sizeof aux, "%s-wal", ckpt);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", ckpt);
    unlink(aux);
}

Test(teleprompt, the_cost_budget_is_respected)
{
    dx_module *st = student();
    dx_dataset *ds = trainset(40);
    /* $1 per token: the budget is gone after a call or two. */
    dx_usage_prices *prices = NULL;
    cr_assert_eq(dx_usage_prices_new(true, &prices), DX_OK);
    cr_assert_eq(dx_usage_prices_set(prices, "test-model",
                                     (dx_usage_price){1e6, 1e6, 1e6}),
                 DX_OK);
    dx_tp_opts o = {
        .metric = {.kind = DX_METRIC_CUSTOM, .fn = even_metric},
        .max_bootstrapped_demos = 40,
        .concurrency = 2,
        .max_cost_usd = 50,
        .call = {.prices = prices},
    };
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, ds, &o, &r, &d), DX_OK, "%s",
                 d.msg);
    cr_assert_gt(r->usage.cost_usd, 0);
    cr_assert_lt(r->n_trials, 40, "stopped early: %zu trials", r->n_trials);
    dx_tp_result_free(r);
    dx_usage_prices_free(prices);
    dx_module_free(st);
    dx_dataset_free(ds);
}

Test(teleprompt, checkpointed_trials_keep_their_usage_and_per_example_results)
{
    char ckpt[] = "/tmp/dx_tp_rows_XXXXXX";
    int fd = mkstemp(ckpt);
    cr_assert_geq(fd, 0);
    close(fd);
    unlink(ckpt);
    dx_module *st = probe_program();
    dx_dataset *train = trainset(6), *val = trainset(5);
    dx_tp_opts o = resume_opts(ckpt);
    o.num_candidates = 1;
    dx_tp_result *first = NULL, *again = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_random_search(st, NULL, train, val, &o, &first, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_eq(dx_random_search(st, NULL, train, val, &o, &again, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_eq(again->n_trials, first->n_trials);
    for (size_t i = 0; i < again->n_trials; i++) {
        cr_assert(again->trials[i].from_checkpoint);
        cr_assert_eq(again->trials[i].usage.calls, first->trials[i].usage.calls,
                     "trial %zu", i);
    }
    cr_assert_gt(first->usage.calls, 0);
    cr_assert_eq(again->usage.calls, 0, "a replay spends nothing");

    /* The record of a candidate holds one result per valset example. */
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(ckpt, &db, SQLITE_OPEN_READONLY, NULL),
                 SQLITE_OK);
    sqlite3_stmt *stmt = NULL;
    cr_assert_eq(sqlite3_prepare_v2(db,
                                    "SELECT value FROM dspex_trials WHERE key "
                                    "= 'candidate/-3'",
                                    -1, &stmt, NULL),
                 SQLITE_OK);
    cr_assert_eq(sqlite3_step(stmt), SQLITE_ROW);
    cJSON *rec = cJSON_Parse((const char *)sqlite3_column_text(stmt, 0));
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    const cJSON *rows = cJSON_GetObjectItem(rec, "rows");
    cr_assert_eq(cJSON_GetArraySize(rows), 5);
    cr_assert(cJSON_IsNumber(
        cJSON_GetObjectItem(cJSON_GetArrayItem(rows, 4), "score")));
    cr_assert_eq(
        cJSON_GetObjectItem(cJSON_GetArrayItem(rows, 4), "i")->valuedouble, 4);
    cr_assert_gt(cJSON_GetObjectItem(cJSON_GetObjectItem(rec, "usage"), "calls")
                     ->valuedouble,
                 0);
    cJSON_Delete(rec);
    dx_tp_result_free(first);
    dx_tp_result_free(again);
    dx_module_free(st);
    dx_dataset_free(train);
    dx_dataset_free(val);
    char aux[64];
    unlink(ckpt);
    snprintf(aux, sizeof aux, "%s-wal", ckpt);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", ckpt);
    unlink(aux);
}
