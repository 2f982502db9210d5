/*
 * test_app.c — the application root: starting a tree from host threads and
 * from processes, stopping it in reverse order, a failed start that leaves
 * nothing behind, a root that gives up (dx_app_wait), and dx_app_run.
 */
#include <pthread.h>
#include <stdarg.h>
#include <time.h>

#include "dspex/app.h"
#include "dspex/log.h"
#include "kernel_test_util.h"

#define TAG_CRASH 100

/* ---- recorded events ----------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    char text[1024];
} evs = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void ev_add(const char *what, const char *id)
{
    pthread_mutex_lock(&evs.mu);
    size_t len = strlen(evs.text);
    snprintf(evs.text + len, sizeof evs.text - len, "%s%s:%s", len ? " " : "",
             what, id);
    pthread_mutex_unlock(&evs.mu);
}

static void ev_reset(void)
{
    pthread_mutex_lock(&evs.mu);
    evs.text[0] = '\0';
    pthread_mutex_unlock(&evs.mu);
}

static bool ev_is(const char *want)
{
    pthread_mutex_lock(&evs.mu);
    bool ok = strcmp(evs.text, want) == 0;
    if (!ok)
        cr_log_error("events \"%s\", want \"%s\"", evs.text, want);
    pthread_mutex_unlock(&evs.mu);
    return ok;
}

static atomic_int app_errors; /* application_exited reports */

static void sink(const dx_log_record *r, void *ud)
{
    (void)ud;
    if (strcmp(r->event, "application_exited") == 0)
        atomic_fetch_add(&app_errors, 1);
}

/* ---- workers -------------------------------------------------------------- */

typedef struct wspec {
    const char *id;
    int start_rc;
} wspec;

static void worker_main(void *arg)
{
    const wspec *w = arg;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            continue;
        if (m->tag == DX_TAG_EXIT) {
            ev_add("stop", w->id);
            dx_term *r = dx_msg_take_term(m);
            dx_msg_free(m);
            dx_exit_self(r);
        }
        if (m->tag == TAG_CRASH) {
            dx_msg_free(m);
            dx_exit_self(dx_atom("boom"));
        }
        dx_msg_free(m);
    }
}

/* Latest pid of worker "a" (start functions run one at a time). */
static _Atomic uint64_t pid_a;

static int w_start(void *arg, void *extra, dx_pid *pid_out)
{
    (void)extra;
    const wspec *w = arg;
    ev_add("start", w->id);
    if (w->start_rc != DX_OK)
        return w->start_rc;
    dx_spawn_opts o = {.link = true, .trap_exit = true};
    int rc = dx_spawn_opt(worker_main, arg, &o, pid_out, NULL);
    if (rc == DX_OK && strcmp(w->id, "a") == 0)
        atomic_store(&pid_a, pid_out->id);
    return rc;
}

static const wspec wa = {"a", DX_OK};
static const wspec wb = {"b", DX_OK};
static const wspec wfail = {"b", DX_ENOMEM};

static const dx_child_spec two[] = {
    {.id = "a", .start = w_start, .arg = (void *)&wa},
    {.id = "b", .start = w_start, .arg = (void *)&wb},
};
static const dx_sup_spec app_spec = {
    .name = "app_root", .children = two, .nchildren = 2};

static const dx_child_spec failing[] = {
    {.id = "a", .start = w_start, .arg = (void *)&wa},
    {.id = "b", .start = w_start, .arg = (void *)&wfail},
};
static const dx_sup_spec failing_spec = {.children = failing, .nchildren = 2};

static const dx_sup_spec fragile_spec = {.name = "fragile",
                                         .intensity = 0,
                                         .period_s = 60,
                                         .children = two,
                                         .nchildren = 2};

/* Host: wait (bounded) for the live process count to reach want. */
static size_t host_settle(size_t want)
{
    size_t n = dx_process_count();
    for (int i = 0; i < 2000 && n != want; i++) {
        nanosleep(&(struct timespec){0, 5000000}, NULL);
        n = dx_process_count();
    }
    return n;
}

static void setup(void)
{
    ev_reset();
    dx_log_set_sink(sink, NULL);
    dx_log_set_level(DX_LOG_INFO);
}

/* ---- from a host thread ---------------------------------------------------- */

Test(app, starts_the_tree_from_a_host_and_stops_it_in_reverse, .timeout = 30)
{
    setup();
    kt_start(2);
    size_t base = dx_process_count();
    dx_app *app = NULL;
    cr_assert_eq(dx_app_start(&app_spec, &app, NULL), DX_OK);
    cr_expect(ev_is("start:a start:b"));
    dx_pid root = dx_app_root(app);
    cr_expect(dx_is_alive(root));
    cr_expect(dx_pid_eq(dx_whereis("app_root"), root));
    cr_expect_eq(dx_process_count(), base + 4); /* master, root, a, b */
    cr_expect_eq(dx_app_wait(app, 50, NULL), DX_ETIMEDOUT);

    ev_reset();
    dx_term *reason = NULL;
    cr_assert_eq(dx_app_stop(app, &reason), DX_OK);
    cr_expect(ev_is("stop:b stop:a"));
    cr_expect(dx_is_atom(reason, "shutdown"));
    dx_term_free(reason);
    cr_expect(!dx_is_alive(root));
    cr_expect_eq(host_settle(base), base);
    cr_expect_eq(atomic_load(&app_errors), 0);
    kt_stop();
}

Test(app, a_failed_start_returns_the_error_and_leaves_nothing, .timeout = 30)
{
    setup();
    kt_start(2);
    size_t base = dx_process_count();
    dx_app *app = (dx_app *)&app; /* must be reset on failure */
    dx_term *err = NULL;
    cr_assert_eq(dx_app_start(&failing_spec, &app, &err), DX_EINIT);
    cr_expect(app == NULL);
    cr_expect(ev_is("start:a start:b stop:a"));
    char buf[128];
    kt_fmt(err, buf, sizeof buf);
    cr_expect_str_eq(buf, "{shutdown,{failed_to_start_child,b,enomem}}");
    dx_term_free(err);
    cr_expect_eq(host_settle(base), base);
    kt_stop();
}

Test(app, bad_arguments_and_a_stopped_runtime_are_refused, .timeout = 30)
{
    dx_app *app = NULL;
    cr_expect_eq(dx_app_start(&app_spec, &app, NULL), DX_ESTATE);
    cr_expect_eq(dx_app_start(NULL, &app, NULL), DX_EINVAL);
    cr_expect_eq(dx_app_stop(NULL, NULL), DX_OK);
    kt_start(1);
    dx_sup_spec bad = {.children = NULL, .nchildren = 2};
    cr_expect_eq(dx_app_start(&bad, &app, NULL), DX_EINVAL);
    dx_child_spec nostart[] = {{.id = "x"}};
    dx_sup_spec bad2 = {.children = nostart, .nchildren = 1};
    cr_expect_eq(dx_app_start(&bad2, &app, NULL), DX_EINVAL);
    /* Two applications cannot register the same root name. */
    dx_app *first = NULL;
    cr_assert_eq(dx_app_start(&app_spec, &first, NULL), DX_OK);
    cr_expect_eq(dx_app_start(&app_spec, &app, NULL), DX_EEXIST);
    dx_app_stop(first, NULL);
    kt_stop();
}

Test(app, wait_returns_when_the_root_gives_up, .timeout = 30)
{
    setup();
    kt_start(2);
    size_t base = dx_process_count();
    dx_app *app = NULL;
    cr_assert_eq(dx_app_start(&fragile_spec, &app, NULL), DX_OK);
    dx_pid root = dx_app_root(app);
    cr_assert(dx_pid_eq(dx_whereis("fragile"), root));
    dx_pid victim = {atomic_load(&pid_a)};
    cr_assert(dx_is_alive(victim));
    ev_reset();
    cr_assert_eq(dx_send_tag(victim, TAG_CRASH), DX_OK);

    dx_term *reason = NULL;
    cr_assert_eq(dx_app_wait(app, KT_WAIT_MS, &reason), DX_OK);
    cr_expect(dx_is_atom(reason, "shutdown"));
    dx_term_free(reason);
    cr_expect(dx_pid_is_none(dx_app_root(app)));
    cr_expect_eq(atomic_load(&app_errors), 1);
    /* Stopping an application that already ended gives its reason. */
    cr_assert_eq(dx_app_stop(app, &reason), DX_OK);
    cr_expect(dx_is_atom(reason, "shutdown"));
    dx_term_free(reason);
    cr_expect_eq(host_settle(base), base);
    kt_stop();
}

/* ---- from a process ----------------------------------------------------------- */

static void from_process_body(void *arg)
{
    (void)arg;
    size_t base = dx_process_count();
    dx_app *app = NULL;
    if (!KT_CHECK_RC(dx_app_start(&app_spec, &app, NULL), DX_OK))
        return;
    KT_CHECK(dx_is_alive(dx_app_root(app)));
    KT_CHECK_RC(dx_app_wait(app, 20, NULL), DX_ETIMEDOUT);
    dx_term *reason = NULL;
    KT_CHECK_RC(dx_app_stop(app, &reason), DX_OK);
    KT_CHECK_REASON_ATOM(reason, "shutdown");
    size_t n = dx_process_count();
    for (int i = 0; i < 2000 && n != base; i++) {
        dx_sleep(5);
        n = dx_process_count();
    }
    KT_CHECK_EQ(n, base);

    dx_term *err = NULL;
    KT_CHECK_RC(dx_app_start(&failing_spec, &app, &err), DX_EINIT);
    KT_CHECK(err != NULL);
    dx_term_free(err);
    KT_CHECK_EQ(kt_drain(), 0); /* no stray acks or DOWNs left behind */
}

Test(app, starts_and_stops_the_same_way_from_a_process, .timeout = 30)
{
    setup();
    kt_body_test(2, from_process_body, NULL);
    cr_expect(ev_is("start:a start:b stop:b stop:a start:a start:b stop:a"));
}

/* ---- dx_app_run ------------------------------------------------------------------ */

static void run_main(void *arg)
{
    int *seen = arg;
    dx_pid root = dx_whereis("app_root");
    *seen = !dx_pid_is_none(root) && dx_is_alive(root);
    dx_exit_self(dx_atom("done"));
}

Test(app, run_wraps_runtime_app_and_main, .timeout = 30)
{
    setup();
    static int seen;
    dx_term *reason = NULL;
    cr_assert_eq(dx_app_run(NULL, &app_spec, run_main, &seen, &reason), DX_OK);
    cr_expect_eq(seen, 1);
    cr_expect(dx_is_atom(reason, "done"));
    dx_term_free(reason);
    cr_expect(!dx_runtime_running());
    cr_expect(ev_is("start:a start:b stop:b stop:a"));
}

Test(app, run_reports_a_failed_start, .timeout = 30)
{
    setup();
    static int seen;
    dx_term *reason = NULL;
    cr_expect_eq(dx_app_run(NULL, &failing_spec, run_main, &seen, &reason),
                 DX_EINIT);
    cr_expect(reason != NULL);
    dx_term_free(reason);
    cr_expect_eq(seen, 0);
    cr_expect(!dx_runtime_running());
}
