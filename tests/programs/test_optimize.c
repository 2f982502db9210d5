/*
 * test_optimize.c — dx_optimize, the supervised way to run an optimizer,
 * on the offline sim model: it gives what the direct call gives; a crash
 * in the optimizer's own process is restarted and resumes from the
 * checkpoint to the same program and score, with the restart counted; too
 * many crashes end in DX_EDOWN with the reason, and the caller lives on;
 * the temporary checkpoint is removed.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/lm.h"
#include "dspex/optimize.h"
#include "dspex/runtime.h"
#include "dspex/sim.h"
#include "dx_config.h"

/* A crashed optimizer loses the working state it kept on the heap (see
 * optimize.h): that is the documented cost of a crash, not a leak of the
 * code under test, so LeakSanitizer is told about it here only for the
 * optimizer these crash tests use; test_teleprompt.c checks its leaks. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:dx_random_search\n";
}

/* Whole allocation stacks (through SQLite, which has no frame pointers),
 * so the suppression above sees dx_random_search wherever it is. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0:malloc_context_size=64";
}

static _Atomic int rc_flag;

static void host_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void start_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    dx_server_opts so = {.name = "lm"};
    atomic_store(&rc_flag, dx_lm_client_start(&o, &so, NULL));
}

static void stop_client(void *arg)
{
    (void)arg;
    atomic_store(&rc_flag, dx_server_stop(dx_whereis("lm"), NULL, 5000));
}

static void run(dx_proc_fn fn)
{
    atomic_store(&rc_flag, 1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(fn, NULL, &pid), DX_OK);
    while (atomic_load(&rc_flag) == 1)
        host_sleep_ms(2);
    cr_assert_eq(atomic_load(&rc_flag), DX_OK);
}

/* ---- a program whose copy can crash the optimizer ------------------------ */

/* Copies made in the optimizer's process (its label says which it is);
 * while crashes_left > 0, the crash_at-th such copy crashes it. */
static _Atomic int copies, crash_at, crashes_left, crashed;

static void crash_now(void)
{
#if DX_SANITIZE_THREAD
    dx_exit_self(dx_atom("crashed"));
#else
    volatile int *nowhere = NULL;
    *nowhere = 1;
#endif
}

static void *ud_copy(const void *ud)
{
    dx_proc_info pi;
    if (dx_process_info(dx_self(), &pi) == DX_OK &&
        strncmp(pi.label, "dx_optimize:", 12) == 0 &&
        strcmp(pi.label, "dx_optimize:host") != 0 &&
        atomic_fetch_add(&copies, 1) + 1 >= atomic_load(&crash_at) &&
        atomic_fetch_sub(&crashes_left, 1) > 0) {
        atomic_fetch_add(&crashed, 1);
        crash_now();
    }
    int *c = dx_malloc(sizeof *c);
    if (c)
        *c = *(const int *)ud;
    return c;
}

static int wrapper_forward(dx_ctx *ctx, const dx_module *self,
                           const dx_example *in, dx_prediction **out)
{
    return dx_forward(ctx, dx_module_child(self, "p"), in, out);
}

static dx_module *plain_student(void)
{
    dx_signature *s = NULL;
    cr_assert_eq(
        dx_signature_parse("question -> answer", NULL, NULL, 0, &s, NULL),
        DX_OK);
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    return p;
}

static dx_module *wrapped_student(void)
{
    int *ud = dx_malloc(sizeof *ud);
    *ud = 7;
    dx_module *m =
        dx_module_new("Wrapper", wrapper_forward, ud, dx_free, ud_copy);
    cr_assert_not_null(m);
    cr_assert_eq(dx_module_add(m, "p", plain_student()), DX_OK);
    return m;
}

/* ---- fixture --------------------------------------------------------------- */

static dx_dataset *train, *dev;
static char tmpdir[] = "/tmp/dx_optimize_XXXXXX";

static void setup(void)
{
    cr_assert_not_null(mkdtemp(tmpdir));
    setenv("TMPDIR", tmpdir, 1);
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}), DX_OK);
    run(start_client);
    cr_assert_eq(dx_sim_generate(DX_SIM_CAPITALS, "train", DX_SIM_DEFAULT_SEED,
                                 16, &train),
                 DX_OK);
    cr_assert_eq(
        dx_sim_generate(DX_SIM_CAPITALS, "dev", DX_SIM_DEFAULT_SEED, 16, &dev),
        DX_OK);
    atomic_store(&copies, 0);
    atomic_store(&crash_at, 0);
    atomic_store(&crashes_left, 0);
    atomic_store(&crashed, 0);
}

static void teardown(void)
{
    dx_dataset_free(train);
    dx_dataset_free(dev);
    run(stop_client);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    rmdir(tmpdir);
}

TestSuite(optimize, .init = setup, .fini = teardown, .timeout = 120);

static const dx_metric em = {.kind = DX_METRIC_EXACT_MATCH};

static dx_tp_opts opts(void)
{
    dx_tp_opts o = {
        .metric = em,
        .max_bootstrapped_demos = 2,
        .max_labeled_demos = 2,
        .num_candidates = 3,
        .concurrency = 4,
        .progress = DX_EVAL_PROGRESS_OFF,
        /* A budget makes random search score (and checkpoint) its
         * candidates one by one; this one is never reached. */
        .max_lm_calls = 1000000,
    };
    return o;
}

static char *state_text(const dx_module *m)
{
    cJSON *st = dx_module_dump_state(m);
    char *t = cJSON_PrintUnformatted(st);
    cJSON_Delete(st);
    return t;
}

static void assert_same(const dx_tp_result *a, const dx_tp_result *b)
{
    char *x = state_text(a->program), *y = state_text(b->program);
    cr_assert_str_eq(x, y);
    cJSON_free(x);
    cJSON_free(y);
    cr_assert_float_eq(a->score, b->score, 1e-9);
    cr_assert_eq(a->n_trials, b->n_trials);
    for (size_t i = 0; i < a->n_trials; i++)
        cr_assert_float_eq(a->trials[i].score, b->trials[i].score, 1e-9,
                           "trial %zu", i);
}

static size_t files_in_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", tmpdir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    long n = -1;
    cr_assert_eq(fscanf(p, "%ld", &n), 1);
    pclose(p);
    return (size_t)n;
}

/* Descriptors of this OS process open on a file in tmpdir (the checkpoint
 * and its journal, deleted or not): an optimizer that crashed or was
 * stopped must not keep its checkpoint open. */
static size_t open_files_in_tmpdir(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[300], target[PATH_MAX];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        n += strncmp(target, tmpdir, strlen(tmpdir)) == 0;
    }
    closedir(d);
    return n;
}

Test(optimize, gives_what_the_direct_call_gives)
{
    dx_module *st = plain_student();
    dx_tp_opts o = opts();
    dx_diag d = {0};

    dx_tp_result *direct = NULL, *sup = NULL;
    cr_assert_eq(dx_bootstrap_fewshot(st, NULL, train, &o, &direct, &d), DX_OK,
                 "%s", d.msg);
    dx_optimize_spec spec = {
        .kind = DX_OPT_BOOTSTRAP, .student = st, .trainset = train, .opts = o};
    cr_assert_eq(dx_optimize(&spec, &sup, &d), DX_OK, "%s", d.msg);
    cr_assert_gt(sup->n_bootstrapped, 0);
    assert_same(direct, sup);
    cr_assert_eq(sup->restarts, 0);
    dx_tp_result_free(direct);
    dx_tp_result_free(sup);

    cr_assert_eq(dx_random_search(st, NULL, train, dev, &o, &direct, &d), DX_OK,
                 "%s", d.msg);
    spec.kind = DX_OPT_RANDOM_SEARCH;
    spec.valset = dev;
    cr_assert_eq(dx_optimize(&spec, &sup, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(sup->n_trials, 6);
    assert_same(direct, sup);
    dx_tp_result_free(direct);
    dx_tp_result_free(sup);

    dx_module *lab = NULL;
    cr_assert_eq(dx_labeled_fewshot(st, train, 3, true, &lab), DX_OK);
    spec.kind = DX_OPT_LABELED;
    spec.labeled_k = 3;
    cr_assert_eq(dx_optimize(&spec, &sup, &d), DX_OK, "%s", d.msg);
    char *x = state_text(lab), *y = state_text(sup->program);
    cr_assert_str_eq(x, y);
    cJSON_free(x);
    cJSON_free(y);
    cr_assert_float_eq(sup->score, -1, 1e-9);
    dx_tp_result_free(sup);
    dx_module_free(lab);

    cr_assert_eq(files_in_tmpdir(), 0, "the temporary checkpoints are gone");
    dx_module_free(st);
}

Test(optimize, errors_of_the_optimizer_come_back_as_they_are)
{
    dx_module *st = plain_student();
    dx_optimize_spec spec = {.kind = DX_OPT_COPRO,
                             .student = st,
                             .trainset = train,
                             .opts = opts(),
                             .copro = {.breadth = 1}};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_optimize(&spec, &r, &d), DX_EINVAL);
    cr_assert_null(r);
    cr_assert(strstr(d.msg, "breadth"), "%s", d.msg);
    spec.student = NULL;
    cr_assert_eq(dx_optimize(&spec, &r, &d), DX_EINVAL);
    cr_assert_eq(files_in_tmpdir(), 0);
    dx_module_free(st);
}

Test(optimize, a_crashed_optimizer_is_restarted_and_resumes_to_the_same_result)
{
    dx_module *st = wrapped_student();
    dx_tp_opts o = opts();
    dx_diag d = {0};
    dx_tp_result *direct = NULL, *sup = NULL;
    cr_assert_eq(dx_random_search(st, NULL, train, dev, &o, &direct, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_eq(atomic_load(&crashed), 0, "not in a direct call");

    /* Crash once, a few copies in: after some candidates are stored. */
    atomic_store(&crash_at, 6);
    atomic_store(&crashes_left, 1);
    dx_optimize_spec spec = {.kind = DX_OPT_RANDOM_SEARCH,
                             .student = st,
                             .trainset = train,
                             .valset = dev,
                             .opts = o};
    cr_assert_eq(dx_optimize(&spec, &sup, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(atomic_load(&crashed), 1);
    cr_assert_eq(sup->restarts, 1);
    assert_same(direct, sup);
    size_t restored = 0;
    for (size_t i = 0; i < sup->n_trials; i++)
        restored += sup->trials[i].from_checkpoint;
    cr_assert_gt(restored, 0, "the restarted run resumed from the checkpoint");
    cr_assert_lt(restored, sup->n_trials, "it crashed mid-run");
    cr_assert_eq(files_in_tmpdir(), 0);
    cr_assert_eq(open_files_in_tmpdir(), 0,
                 "the crashed run's checkpoint is still open");
    dx_tp_result_free(direct);
    dx_tp_result_free(sup);
    dx_module_free(st);
}

Test(optimize, more_crashes_than_max_restarts_fail_with_edown)
{
    dx_module *st = wrapped_student();
    atomic_store(&crash_at, 1);
    atomic_store(&crashes_left, 1000);
    dx_optimize_spec spec = {.kind = DX_OPT_RANDOM_SEARCH,
                             .student = st,
                             .trainset = train,
                             .valset = dev,
                             .opts = opts(),
                             .max_restarts = 2};
    dx_tp_result *r = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_optimize(&spec, &r, &d), DX_EDOWN, "%s", d.msg);
    cr_assert_null(r);
    cr_assert_eq(atomic_load(&crashed), 3, "the first run and two restarts");
    cr_assert(strstr(d.msg, "crashed 3 times"), "%s", d.msg);
    cr_assert(strstr(d.msg, "max_restarts 2"), "%s", d.msg);

    /* No restarts at all. */
    spec.max_restarts = -1;
    atomic_store(&crashed, 0);
    cr_assert_eq(dx_optimize(&spec, &r, &d), DX_EDOWN, "%s", d.msg);
    cr_assert_eq(atomic_load(&crashed), 1);
    cr_assert_eq(files_in_tmpdir(), 0);
    cr_assert_eq(open_files_in_tmpdir(), 0,
                 "a crashed run's checkpoint is still open");
    dx_module_free(st);
}

static const dx_optimizer_kind every_kind[] = {
    DX_OPT_BOOTSTRAP, DX_OPT_RANDOM_SEARCH, DX_OPT_COPRO, DX_OPT_MIPRO};
#define N_KINDS (sizeof every_kind / sizeof every_kind[0])

/* dx_optimize of st (max_restarts 1) whose crashes_left copies from the
 * crash_at-th on crash; its code, *crashes the crashes. */
static int optimize_crashing(const dx_module *st, dx_optimizer_kind kind,
                             int at, int crashes_left_, int *crashes,
                             dx_diag *d)
{
    atomic_store(&crash_at, at);
    atomic_store(&crashes_left, crashes_left_);
    atomic_store(&crashed, 0);
    atomic_store(&copies, 0);
    dx_optimize_spec spec = {.kind = kind,
                             .student = st,
                             .trainset = train,
                             .valset = dev,
                             .opts = opts(),
                             .max_restarts = 1};
    dx_tp_result *r = NULL;
    int rc = dx_optimize(&spec, &r, d);
    dx_tp_result_free(r);
    *crashes = atomic_load(&crashed);
    return rc;
}

/* Every optimizer closes its checkpoint when its process crashes (or is
 * stopped) mid-run, rather than leaving the restarted run a descriptor
 * short each time. */
Test(optimize, a_crashed_optimizer_of_any_kind_leaves_no_file_open)
{
    dx_module *st = wrapped_student();
    for (size_t k = 0; k < N_KINDS; k++) {
        int crashes = 0;
        dx_diag d = {0};
        cr_assert_eq(
            optimize_crashing(st, every_kind[k], 1, 1000, &crashes, &d),
            DX_EDOWN, "kind %zu: %s", k, d.msg);
        cr_assert_eq(crashes, 2, "kind %zu", k);
        cr_assert_eq(open_files_in_tmpdir(), 0,
                     "kind %zu: a crashed run's checkpoint is still open", k);
    }
    dx_module_free(st);
}

/* A crash anywhere in a run (here: at one of its first module copies,
 * which each optimizer makes at different points of its loops) leaves
 * nothing of the crashed run behind — LeakSanitizer checks what its inner
 * loops held in the sanitizer builds — and the restarted run finishes. */
Test(optimize, a_crash_at_any_point_of_a_run_leaves_nothing_behind)
{
    dx_module *st = wrapped_student();
    const int points[] = {2, 3, 5, 8, 13, 20};
    int total = 0;
    for (size_t k = 0; k < N_KINDS; k++)
        for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
            int crashes = 0;
            dx_diag d = {0};
            cr_assert_eq(optimize_crashing(st, every_kind[k], points[i], 1,
                                           &crashes, &d),
                         DX_OK, "kind %zu, crash at copy %d: %s", k, points[i],
                         d.msg);
            total += crashes;
            cr_assert_eq(open_files_in_tmpdir(), 0);
        }
    /* Most runs make enough copies to crash (the bootstrap makes fewest). */
    cr_assert_geq(total, 12, "only %d runs crashed", total);
    dx_module_free(st);
}

/* From a process: the caller parks in a receive and survives the crashes. */
static _Atomic int proc_rc = 1;
static dx_module *proc_student;

static void optimize_from_process(void *arg)
{
    (void)arg;
    dx_optimize_spec *spec = dx_calloc(1, sizeof *spec);
    spec->kind = DX_OPT_RANDOM_SEARCH;
    spec->student = proc_student;
    spec->trainset = train;
    spec->valset = dev;
    spec->opts = opts();
    spec->max_restarts = 1;
    dx_tp_result *r = NULL;
    int rc = dx_optimize(spec, &r, NULL);
    if (rc == DX_OK && r->restarts != 1)
        rc = DX_ESTATE;
    dx_tp_result_free(r);
    dx_free(spec);
    atomic_store(&proc_rc, rc);
}

Test(optimize, works_from_a_process)
{
    proc_student = wrapped_student();
    atomic_store(&crash_at, 3);
    atomic_store(&crashes_left, 1);
    dx_pid pid;
    cr_assert_eq(dx_spawn(optimize_from_process, NULL, &pid), DX_OK);
    while (atomic_load(&proc_rc) == 1)
        host_sleep_ms(5);
    cr_assert_eq(atomic_load(&proc_rc), DX_OK, "%s",
                 dx_err_name(atomic_load(&proc_rc)));
    cr_assert_eq(atomic_load(&crashed), 1);
    dx_module_free(proc_student);
}
