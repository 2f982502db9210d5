/*
 * test_supervisor.c — supervisors as users see them: each strategy with
 * each restart type, restart intensity and escalation, nested trees, the
 * shutdown protocol (timeouts, brutal_kill, infinity), start failures, the
 * run-time API, dynamic children and the reports the supervisor logs.
 *
 * Most assertions are on the observable sequence of starts and stops:
 * start functions record "start:<id>" (they run in the supervisor, one at a
 * time) and workers that trap exits record "stop:<id>" when they get their
 * shutdown (the supervisor waits for each before the next), so the recorded
 * order is the order the supervisor acted in.
 *
 * Synchronisation without sleeps: a test crashes a child and waits for its
 * DOWN; the kernel queues a dying process's link EXITs before its DOWNs, so
 * the supervisor has the EXIT before the test's next call to it, and that
 * call returns only after the restart has been done.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>

#include "dspex/log.h"
#include "dspex/server.h"
#include "dspex/supervisor.h"
#include "kernel_test_util.h"

#define TAG_CRASH 100
#define TAG_PING 101

/* ---- recorded events ----------------------------------------------------- */

#define EV_MAX 4096
#define EV_LEN 48

static struct {
    pthread_mutex_t mu;
    char ev[EV_MAX][EV_LEN];
    size_t n;
} evs = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void ev_add(const char *fmt, ...) DX_PRINTF(1, 2);
static void ev_add(const char *fmt, ...)
{
    char buf[EV_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&evs.mu);
    if (evs.n < EV_MAX)
        memcpy(evs.ev[evs.n++], buf, sizeof buf);
    pthread_mutex_unlock(&evs.mu);
}

static void ev_reset(void)
{
    pthread_mutex_lock(&evs.mu);
    evs.n = 0;
    pthread_mutex_unlock(&evs.mu);
}

/* The events recorded since the last reset, space-separated. */
static void ev_join(char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    pthread_mutex_lock(&evs.mu);
    for (size_t i = 0; i < evs.n && len + 1 < cap; i++) {
        int w = snprintf(out + len, cap - len, "%s%s", i ? " " : "", evs.ev[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
    pthread_mutex_unlock(&evs.mu);
}

#define EV_EXPECT(want) ev_expect_at((want), __FILE__, __LINE__)
static bool ev_expect_at(const char *want, const char *file, int line)
{
    char got[1024];
    ev_join(got, sizeof got);
    if (strcmp(got, want) == 0)
        return true;
    char buf[256];
    snprintf(buf, sizeof buf, "events \"%.100s\", want \"%.100s\"", got, want);
    kt_note(file, line, buf);
    return false;
}

/* ---- captured log reports ---------------------------------------------- */

#define CAP_MAX 512

typedef struct cap_rec {
    char event[48];
    char sup[80];
    char child[64];
    char reason[128];
    int64_t restarts;
    char line[512];
} cap_rec;

static struct {
    pthread_mutex_t mu;
    cap_rec recs[CAP_MAX];
    size_t n, total;
} cap = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void field_text(const dx_log_field *f, char *out, size_t cap_)
{
    switch (f->type) {
    case DX_LOG_V_STR:
        snprintf(out, cap_, "%s", f->v.s ? f->v.s : "");
        break;
    case DX_LOG_V_INT:
        snprintf(out, cap_, "%lld", (long long)f->v.i);
        break;
    case DX_LOG_V_TERM:
        dx_term_format(f->v.t, out, cap_);
        break;
    case DX_LOG_V_PID:
        snprintf(out, cap_, "%llu", (unsigned long long)f->v.pid.id);
        break;
    }
}

static void cap_sink(const dx_log_record *r, void *ud)
{
    (void)ud;
    pthread_mutex_lock(&cap.mu);
    cap.total++;
    if (cap.n < CAP_MAX) {
        cap_rec *c = &cap.recs[cap.n++];
        memset(c, 0, sizeof *c);
        snprintf(c->event, sizeof c->event, "%s", r->event);
        snprintf(c->line, sizeof c->line, "%s", r->line);
        c->restarts = -1;
        for (size_t i = 0; i < r->nfields; i++) {
            const dx_log_field *f = &r->fields[i];
            if (strcmp(f->key, "supervisor") == 0)
                field_text(f, c->sup, sizeof c->sup);
            else if (strcmp(f->key, "child") == 0)
                field_text(f, c->child, sizeof c->child);
            else if (strcmp(f->key, "reason") == 0)
                field_text(f, c->reason, sizeof c->reason);
            else if (strcmp(f->key, "restarts") == 0)
                c->restarts = f->v.i;
        }
    }
    pthread_mutex_unlock(&cap.mu);
}

/* Number of captured reports of `event` about `child` (NULL: any). */
static size_t cap_count(const char *event, const char *child)
{
    size_t k = 0;
    pthread_mutex_lock(&cap.mu);
    for (size_t i = 0; i < cap.n; i++)
        if (strcmp(cap.recs[i].event, event) == 0 &&
            (child == NULL || strcmp(cap.recs[i].child, child) == 0))
            k++;
    pthread_mutex_unlock(&cap.mu);
    return k;
}

/* Copy of the last report of `event` about `child`; false if none. */
static bool cap_last(const char *event, const char *child, cap_rec *out)
{
    bool found = false;
    pthread_mutex_lock(&cap.mu);
    for (size_t i = 0; i < cap.n; i++)
        if (strcmp(cap.recs[i].event, event) == 0 &&
            (child == NULL || strcmp(cap.recs[i].child, child) == 0)) {
            *out = cap.recs[i];
            found = true;
        }
    pthread_mutex_unlock(&cap.mu);
    return found;
}

static void cap_reset(void)
{
    pthread_mutex_lock(&cap.mu);
    cap.n = cap.total = 0;
    pthread_mutex_unlock(&cap.mu);
}

/* ---- workers -------------------------------------------------------------- */

/* How a worker behaves; always static (the supervisor reads it). */
typedef struct wspec {
    const char *id;
    int start_rc;      /* what the start function returns (DX_OK: spawn) */
    bool no_pid;       /* return DX_OK without a pid (a broken start fn) */
    bool trap;         /* trap exits and record "stop:<id>" on shutdown */
    bool deaf;         /* trap exits and ignore them ("ignored:<id>") */
    int64_t linger_ms; /* on shutdown, wait this long before exiting */
    const char *stop_reason; /* exit with this instead of the signal's */
    const char *name;        /* register the worker under this name */
} wspec;

static void worker_main(void *arg)
{
    const wspec *w = arg;
    if (w->name != NULL)
        dx_register(w->name, dx_self());
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            continue;
        if (m->tag == DX_TAG_EXIT) {
            if (w->deaf) {
                ev_add("ignored:%s", w->id);
                dx_msg_free(m);
                continue;
            }
            ev_add("stop:%s", w->id);
            dx_term *r = dx_msg_take_term(m);
            dx_msg_free(m);
            if (w->linger_ms > 0)
                dx_sleep(w->linger_ms);
            if (w->stop_reason != NULL) {
                dx_term_free(r);
                r = dx_atom(w->stop_reason);
            }
            dx_exit_self(r);
        }
        if (m->tag == TAG_CRASH) {
            dx_term *r = dx_msg_take_term(m);
            dx_msg_free(m);
            dx_exit_self(r);
        }
        if (m->kind == DX_MSG_CALL) {
            dx_from from = {m->from, m->ref};
            dx_reply(from, dx_msg_new(TAG_PING));
        }
        dx_msg_free(m);
    }
}

static int w_start(void *arg, void *extra, dx_pid *pid_out)
{
    (void)extra;
    const wspec *w = arg;
    ev_add("start:%s", w->id);
    if (w->start_rc != DX_OK)
        return w->start_rc;
    if (w->no_pid)
        return DX_OK;
    dx_spawn_opts o = {.link = true, .trap_exit = w->trap || w->deaf};
    return dx_spawn_opt(worker_main, arg, &o, pid_out, NULL);
}

#define CHILD(w, rt)                                                           \
    {                                                                          \
        .id = (w).id, .start = w_start, .arg = (void *)&(w), .restart = (rt)   \
    }

/* Send a worker a crash order with `reason` (owned) and wait until it died. */
static void crash_wait(dx_pid pid, dx_term *reason)
{
    dx_ref ref;
    KT_CHECK_RC(dx_monitor(pid, &ref), DX_OK);
    KT_CHECK_RC(dx_send_term(pid, TAG_CRASH, reason), DX_OK);
    dx_term_free(kt_await_down(ref, KT_WAIT_MS));
}

static void crash_atom(dx_pid pid, const char *reason)
{
    crash_wait(pid, dx_atom(reason));
}

/* The child's current pid (DX_NOPID if not running or unknown). */
static dx_pid child_pid(dx_pid sup, const char *id)
{
    dx_pid pid = DX_NOPID;
    dx_sup_find_child(sup, id, &pid);
    return pid;
}

static dx_sup_child_status child_status(dx_pid sup, const char *id,
                                        bool *present)
{
    dx_sup_child *list = NULL;
    size_t n = 0;
    *present = false;
    dx_sup_child_status st = DX_SUP_CHILD_UNDEFINED;
    if (dx_sup_which_children(sup, &list, &n) != DX_OK)
        return st;
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].id, id) == 0) {
            *present = true;
            st = list[i].status;
        }
    dx_free(list);
    return st;
}

/* Wait (bounded) for the live process count to come back to `want`:
 * processes finish their exit on their scheduler a moment after a DOWN. */
static size_t settle_count(size_t want)
{
    size_t n = dx_process_count();
    for (int i = 0; i < 2000 && n != want; i++) {
        dx_sleep(5);
        n = dx_process_count();
    }
    return n;
}

/* Stop a supervisor from its linked owner and check it went cleanly. */
static void stop_sup(dx_pid sup)
{
    KT_CHECK_RC(dx_sup_stop(sup, NULL, KT_WAIT_MS), DX_OK);
}

static void setup_capture(void)
{
    ev_reset();
    cap_reset();
    dx_log_set_sink(cap_sink, NULL);
    dx_log_set_level(DX_LOG_INFO);
}

static void run_body(dx_proc_fn fn, const void *arg)
{
    setup_capture();
    kt_body_test(2, fn, (void *)arg);
    dx_log_set_sink(NULL, NULL);
}

/* ---- strategies x restart types ------------------------------------------ */

typedef struct row {
    dx_sup_restart type; /* of child b; a and c are permanent */
    const char *reason;  /* b exits with this */
    const char *expect;  /* events after the crash */
    bool b_running;      /* afterwards */
    bool b_present;      /* still in which_children */
    bool reported;       /* child_terminated report for b */
} row;

typedef struct strat_case {
    dx_sup_strategy strategy;
    const row *rows;
    size_t nrows;
} strat_case;

static const wspec sa = {.id = "a", .trap = true};
static const wspec sb = {.id = "b", .trap = true};
static const wspec sc = {.id = "c", .trap = true};

static void strategy_body(void *arg)
{
    const strat_case *sc_ = arg;
    for (size_t r = 0; r < sc_->nrows; r++) {
        const row *rw = &sc_->rows[r];
        dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT),
                                CHILD(sb, rw->type),
                                CHILD(sc, DX_SUP_PERMANENT)};
        dx_sup_spec spec = {.strategy = sc_->strategy,
                            .intensity = 10,
                            .period_s = 60,
                            .children = kids,
                            .nchildren = 3};
        ev_reset();
        cap_reset();
        dx_pid sup;
        if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
            return;
        KT_CHECK(EV_EXPECT("start:a start:b start:c"));
        dx_pid a0 = child_pid(sup, "a"), b0 = child_pid(sup, "b"),
               c0 = child_pid(sup, "c");
        ev_reset();
        crash_atom(b0, rw->reason);

        bool present;
        dx_sup_child_status st = child_status(sup, "b", &present);
        char what[160];
        snprintf(what, sizeof what, "%s / %s / %s",
                 dx_sup_strategy_name(sc_->strategy),
                 dx_sup_restart_name(rw->type), rw->reason);
        if (!EV_EXPECT(rw->expect))
            kt_note(__FILE__, __LINE__, what);
        if (!KT_CHECK_EQ(present, rw->b_present))
            kt_note(__FILE__, __LINE__, what);
        if (present && !KT_CHECK_EQ(st == DX_SUP_CHILD_RUNNING, rw->b_running))
            kt_note(__FILE__, __LINE__, what);
        dx_pid b1 = child_pid(sup, "b");
        if (rw->b_running) {
            KT_CHECK(!dx_pid_eq(b1, b0));
            KT_CHECK(dx_is_alive(b1));
        }
        /* Who was not part of the restart keeps its process. */
        bool group = strstr(rw->expect, "stop:") != NULL;
        bool a_restarted = group && strstr(rw->expect, "stop:a") != NULL;
        KT_CHECK_EQ(dx_pid_eq(child_pid(sup, "a"), a0), !a_restarted);
        KT_CHECK_EQ(dx_pid_eq(child_pid(sup, "c"), c0), !group);
        if (!KT_CHECK_EQ(cap_count("child_terminated", "b"), rw->reported))
            kt_note(__FILE__, __LINE__, what);
        if (rw->reported) {
            cap_rec rec;
            KT_CHECK(cap_last("child_terminated", "b", &rec));
            KT_CHECK(strcmp(rec.reason, rw->reason) == 0);
            KT_CHECK_EQ(rec.restarts, 0);
        }
        ev_reset();
        stop_sup(sup);
        /* Stop order is reverse start order over what still runs. */
        const char *stops =
            rw->b_running ? "stop:c stop:b stop:a" : "stop:c stop:a";
        if (!EV_EXPECT(stops))
            kt_note(__FILE__, __LINE__, what);
    }
}

static const row one_for_one_rows[] = {
    {DX_SUP_PERMANENT, "boom", "start:b", true, true, true},
    {DX_SUP_PERMANENT, "normal", "start:b", true, true, true},
    {DX_SUP_TRANSIENT, "boom", "start:b", true, true, true},
    {DX_SUP_TRANSIENT, "normal", "", false, true, false},
    {DX_SUP_TRANSIENT, "shutdown", "", false, true, false},
    {DX_SUP_TEMPORARY, "boom", "", false, false, true},
    {DX_SUP_TEMPORARY, "normal", "", false, false, false},
};

static const row one_for_all_rows[] = {
    {DX_SUP_PERMANENT, "boom", "stop:c stop:a start:a start:b start:c", true,
     true, true},
    {DX_SUP_PERMANENT, "normal", "stop:c stop:a start:a start:b start:c", true,
     true, true},
    {DX_SUP_TRANSIENT, "boom", "stop:c stop:a start:a start:b start:c", true,
     true, true},
    {DX_SUP_TRANSIENT, "normal", "", false, true, false},
    {DX_SUP_TEMPORARY, "boom", "", false, false, true},
    {DX_SUP_TEMPORARY, "normal", "", false, false, false},
};

static const row rest_for_one_rows[] = {
    {DX_SUP_PERMANENT, "boom", "stop:c start:b start:c", true, true, true},
    {DX_SUP_PERMANENT, "normal", "stop:c start:b start:c", true, true, true},
    {DX_SUP_TRANSIENT, "boom", "stop:c start:b start:c", true, true, true},
    {DX_SUP_TRANSIENT, "normal", "", false, true, false},
    {DX_SUP_TEMPORARY, "boom", "", false, false, true},
    {DX_SUP_TEMPORARY, "normal", "", false, false, false},
};

#define NROWS(r) (sizeof(r) / sizeof((r)[0]))

Test(supervisor, one_for_one_applies_each_restart_type_to_the_child_alone,
     .timeout = 60)
{
    static const strat_case c = {DX_SUP_ONE_FOR_ONE, one_for_one_rows,
                                 NROWS(one_for_one_rows)};
    run_body(strategy_body, &c);
}

Test(supervisor, one_for_all_stops_all_in_reverse_and_restarts_all_in_order,
     .timeout = 60)
{
    static const strat_case c = {DX_SUP_ONE_FOR_ALL, one_for_all_rows,
                                 NROWS(one_for_all_rows)};
    run_body(strategy_body, &c);
}

Test(supervisor, rest_for_one_restarts_the_child_and_those_started_after_it,
     .timeout = 60)
{
    static const strat_case c = {DX_SUP_REST_FOR_ONE, rest_for_one_rows,
                                 NROWS(rest_for_one_rows)};
    run_body(strategy_body, &c);
}

/* A temporary sibling is stopped with its group and never comes back. */
static const wspec st_tmp = {.id = "t", .trap = true};

static void temporary_sibling_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT),
                            CHILD(st_tmp, DX_SUP_TEMPORARY),
                            CHILD(sb, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {.strategy = DX_SUP_ONE_FOR_ALL,
                        .intensity = 5,
                        .period_s = 60,
                        .children = kids,
                        .nchildren = 3};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    ev_reset();
    crash_atom(child_pid(sup, "a"), "boom");
    bool present;
    child_status(sup, "t", &present);
    KT_CHECK(EV_EXPECT("stop:b stop:t start:a start:b"));
    KT_CHECK(!present);
    stop_sup(sup);
}

Test(supervisor, a_temporary_child_stopped_with_its_group_is_not_restarted,
     .timeout = 30)
{
    run_body(temporary_sibling_body, NULL);
}

/* ---- restart intensity ------------------------------------------------------ */

static void intensity_body(void *arg)
{
    (void)arg;
    dx_trap_exit(true);
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT),
                            CHILD(sb, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {
        .intensity = 2, .period_s = 3600, .children = kids, .nchildren = 2};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    for (int i = 0; i < 2; i++)
        crash_atom(child_pid(sup, "b"), "boom");
    dx_sup_counts k;
    KT_CHECK_RC(dx_sup_count_children(sup, &k), DX_OK);
    KT_CHECK_EQ(k.restarts, 2);
    KT_CHECK_EQ(k.restarts_in_period, 2);
    KT_CHECK_EQ(k.active, 2);
    KT_CHECK_EQ(cap_count("reached_max_restart_intensity", NULL), 0);

    /* The third restart within the period is one too many. */
    ev_reset();
    crash_atom(child_pid(sup, "b"), "boom");
    dx_match m = {.fields = DX_MATCH_TAG | DX_MATCH_FROM,
                  .tag = DX_TAG_EXIT,
                  .from = sup};
    dx_msg *msg = NULL;
    if (KT_CHECK_RC(dx_receive(&m, KT_WAIT_MS, &msg), DX_OK)) {
        KT_CHECK(dx_is_atom(msg->term, "shutdown"));
        dx_msg_free(msg);
    }
    KT_CHECK(!dx_is_alive(sup));
    /* Everything it supervised went with it, in reverse order. */
    KT_CHECK(EV_EXPECT("stop:a"));
    cap_rec rec;
    KT_CHECK(cap_last("reached_max_restart_intensity", "b", &rec));
    KT_CHECK_EQ(dx_sup_count_children(sup, &k), DX_ENOPROC);
}

Test(supervisor, more_restarts_than_intensity_in_the_period_shut_it_down,
     .timeout = 30)
{
    run_body(intensity_body, NULL);
}

static void zero_intensity_body(void *arg)
{
    (void)arg;
    dx_trap_exit(true);
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {
        .intensity = 0, .period_s = 1, .children = kids, .nchildren = 1};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    dx_ref ref;
    KT_CHECK_RC(dx_monitor(sup, &ref), DX_OK);
    ev_reset();
    crash_atom(child_pid(sup, "a"), "boom");
    KT_CHECK_REASON_ATOM(kt_await_down(ref, KT_WAIT_MS), "shutdown");
    KT_CHECK(EV_EXPECT(""));
}

Test(supervisor, intensity_zero_gives_up_at_the_first_restart, .timeout = 30)
{
    run_body(zero_intensity_body, NULL);
}

/* Restarts older than the period no longer count. */
static void window_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {
        .intensity = 1, .period_s = 1, .children = kids, .nchildren = 1};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    crash_atom(child_pid(sup, "a"), "boom");
    dx_sup_counts k;
    KT_CHECK_RC(dx_sup_count_children(sup, &k), DX_OK);
    KT_CHECK_EQ(k.restarts_in_period, 1);
    dx_sleep(1200);
    KT_CHECK_RC(dx_sup_count_children(sup, &k), DX_OK);
    KT_CHECK_EQ(k.restarts_in_period, 0);
    crash_atom(child_pid(sup, "a"), "boom");
    KT_CHECK(dx_is_alive(sup));
    KT_CHECK(dx_is_alive(child_pid(sup, "a")));
    KT_CHECK_RC(dx_sup_count_children(sup, &k), DX_OK);
    KT_CHECK_EQ(k.restarts, 2);
    stop_sup(sup);
}

Test(supervisor, restarts_older_than_the_period_stop_counting, .timeout = 30)
{
    run_body(window_body, NULL);
}

/* ---- nested trees and escalation ----------------------------------------- */

static const wspec nx = {.id = "x", .trap = true};
static const wspec ny = {.id = "y", .trap = true};
static const dx_child_spec sub_kids[] = {
    {.id = "x", .start = w_start, .arg = (void *)&nx},
    {.id = "y", .start = w_start, .arg = (void *)&ny},
};
static const dx_sup_spec sub_spec = {.strategy = DX_SUP_ONE_FOR_ONE,
                                     .intensity = 1,
                                     .period_s = 3600,
                                     .children = sub_kids,
                                     .nchildren = 2};

static void nested_order_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {
        CHILD(sa, DX_SUP_PERMANENT),
        {.id = "sub",
         .start = dx_sup_start_nested,
         .arg = (void *)&sub_spec,
         .type = DX_SUP_SUPERVISOR},
        CHILD(sb, DX_SUP_PERMANENT),
    };
    dx_sup_spec spec = {.children = kids, .nchildren = 3};
    size_t base = dx_process_count();
    dx_pid root;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &root, NULL), DX_OK))
        return;
    KT_CHECK(EV_EXPECT("start:a start:x start:y start:b"));
    KT_CHECK_EQ(dx_process_count(), base + 6);
    dx_sup_counts k;
    KT_CHECK_RC(dx_sup_count_children(root, &k), DX_OK);
    KT_CHECK_EQ(k.specs, 3);
    KT_CHECK_EQ(k.active, 3);
    KT_CHECK_EQ(k.supervisors, 1);
    KT_CHECK_EQ(k.workers, 2);
    ev_reset();
    stop_sup(root);
    KT_CHECK(EV_EXPECT("stop:b stop:y stop:x stop:a"));
    KT_CHECK_EQ(settle_count(base), base);
}

Test(supervisor, nested_trees_start_depth_first_in_order_and_stop_in_reverse,
     .timeout = 30)
{
    run_body(nested_order_body, NULL);
}

static void escalation_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {
        CHILD(sa, DX_SUP_PERMANENT),
        {.id = "sub",
         .start = dx_sup_start_nested,
         .arg = (void *)&sub_spec,
         .type = DX_SUP_SUPERVISOR},
    };
    dx_sup_spec spec = {
        .intensity = 5, .period_s = 3600, .children = kids, .nchildren = 2};
    dx_pid root;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &root, NULL), DX_OK))
        return;
    dx_pid a0 = child_pid(root, "a");
    dx_pid s0 = child_pid(root, "sub");
    dx_ref smon;
    KT_CHECK_RC(dx_monitor(s0, &smon), DX_OK);

    crash_atom(child_pid(s0, "x"), "boom"); /* sub restarts x: 1 of 1 */
    /* A call to sub is handled after the exit it restarted x for, so the
     * restart's events are in before the reset. */
    dx_pid x1 = child_pid(s0, "x");
    ev_reset();
    crash_atom(x1, "boom"); /* 2 of 1: sub gives up */
    dx_term *r = kt_await_down(smon, KT_WAIT_MS);
    KT_CHECK_REASON_ATOM(r, "shutdown");

    /* The root saw sub end with shutdown and restarted it, fresh. */
    dx_pid s1 = child_pid(root, "sub");
    KT_CHECK(!dx_pid_is_none(s1) && !dx_pid_eq(s1, s0));
    KT_CHECK(EV_EXPECT("stop:y start:x start:y"));
    KT_CHECK(dx_pid_eq(child_pid(root, "a"), a0));
    KT_CHECK(dx_is_alive(child_pid(s1, "x")));
    cap_rec rec;
    KT_CHECK(cap_last("reached_max_restart_intensity", "x", &rec));
    KT_CHECK(cap_last("child_terminated", "sub", &rec));
    KT_CHECK(strcmp(rec.reason, "shutdown") == 0);
    KT_CHECK_EQ(rec.restarts, 0);
    stop_sup(root);
}

Test(supervisor, a_child_supervisor_that_gives_up_is_restarted_by_its_parent,
     .timeout = 30)
{
    run_body(escalation_body, NULL);
}

/* The failure climbs until a supervisor can absorb it, here nobody can. */
static const dx_child_spec mid_kids[] = {
    {.id = "sub",
     .start = dx_sup_start_nested,
     .arg = (void *)&sub_spec,
     .type = DX_SUP_SUPERVISOR},
};
static const dx_sup_spec mid_spec = {
    .intensity = 0, .period_s = 3600, .children = mid_kids, .nchildren = 1};

static void escalate_to_top_body(void *arg)
{
    (void)arg;
    dx_trap_exit(true);
    dx_child_spec kids[] = {
        CHILD(sa, DX_SUP_PERMANENT),
        {.id = "mid",
         .start = dx_sup_start_nested,
         .arg = (void *)&mid_spec,
         .type = DX_SUP_SUPERVISOR},
    };
    dx_sup_spec spec = {
        .intensity = 0, .period_s = 3600, .children = kids, .nchildren = 2};
    size_t base = dx_process_count();
    dx_pid root;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &root, NULL), DX_OK))
        return;
    dx_pid mid = child_pid(root, "mid");
    dx_pid sub = child_pid(mid, "sub");
    crash_atom(child_pid(sub, "x"), "boom");
    dx_pid x1 = child_pid(sub, "x"); /* sub has restarted x (see above) */
    ev_reset();
    crash_atom(x1, "boom");
    dx_match m = {.fields = DX_MATCH_TAG | DX_MATCH_FROM,
                  .tag = DX_TAG_EXIT,
                  .from = root};
    dx_msg *msg = NULL;
    if (KT_CHECK_RC(dx_receive(&m, KT_WAIT_MS, &msg), DX_OK)) {
        KT_CHECK(dx_is_atom(msg->term, "shutdown"));
        dx_msg_free(msg);
    }
    KT_CHECK(EV_EXPECT("stop:y stop:a"));
    KT_CHECK_EQ(cap_count("reached_max_restart_intensity", NULL), 3);
    KT_CHECK_EQ(settle_count(base), base);
}

Test(supervisor, escalation_climbs_the_tree_to_the_top, .timeout = 30)
{
    run_body(escalate_to_top_body, NULL);
}

/* ---- shutdown protocol ------------------------------------------------------ */

static const wspec sh_deaf = {.id = "deaf", .deaf = true};
static const wspec sh_brutal = {.id = "brutal", .trap = true};
static const wspec sh_slow = {.id = "slow", .trap = true, .linger_ms = 100};
static const wspec sh_odd = {.id = "odd", .trap = true, .stop_reason = "oops"};

static void shutdown_timeout_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {
        {.id = "deaf",
         .start = w_start,
         .arg = (void *)&sh_deaf,
         .shutdown_ms = 200},
        {.id = "brutal",
         .start = w_start,
         .arg = (void *)&sh_brutal,
         .shutdown_ms = DX_SUP_BRUTAL_KILL},
        {.id = "slow",
         .start = w_start,
         .arg = (void *)&sh_slow,
         .shutdown_ms = DX_SUP_SHUTDOWN_INFINITY},
        {.id = "odd", .start = w_start, .arg = (void *)&sh_odd},
    };
    dx_sup_spec spec = {.children = kids, .nchildren = 4};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;

    /* Ignores its shutdown: killed once its 200 ms are up. */
    ev_reset();
    dx_pid deaf = child_pid(sup, "deaf");
    dx_ref ref;
    KT_CHECK_RC(dx_monitor(deaf, &ref), DX_OK);
    int64_t t0 = dx_now_ms();
    KT_CHECK_RC(dx_sup_terminate_child(sup, "deaf"), DX_OK);
    KT_CHECK(dx_now_ms() - t0 >= 200);
    KT_CHECK(EV_EXPECT("ignored:deaf"));
    KT_CHECK_REASON_ATOM(kt_await_down(ref, KT_WAIT_MS), "killed");
    cap_rec rec;
    KT_CHECK(cap_last("shutdown_error", "deaf", &rec));
    KT_CHECK(strcmp(rec.reason, "killed") == 0);

    /* brutal_kill: no shutdown message at all, and no error report. */
    ev_reset();
    dx_pid brutal = child_pid(sup, "brutal");
    KT_CHECK_RC(dx_monitor(brutal, &ref), DX_OK);
    KT_CHECK_RC(dx_sup_terminate_child(sup, "brutal"), DX_OK);
    KT_CHECK(EV_EXPECT(""));
    KT_CHECK_REASON_ATOM(kt_await_down(ref, KT_WAIT_MS), "killed");
    KT_CHECK_EQ(cap_count("shutdown_error", "brutal"), 0);

    /* infinity: however long it takes. */
    ev_reset();
    dx_pid slow = child_pid(sup, "slow");
    KT_CHECK_RC(dx_monitor(slow, &ref), DX_OK);
    KT_CHECK_RC(dx_sup_terminate_child(sup, "slow"), DX_OK);
    KT_CHECK(EV_EXPECT("stop:slow"));
    KT_CHECK(!dx_is_alive(slow));
    KT_CHECK_REASON_ATOM(kt_await_down(ref, KT_WAIT_MS), "shutdown");
    KT_CHECK_EQ(cap_count("shutdown_error", "slow"), 0);

    /* A permanent child must end with shutdown; anything else is reported. */
    KT_CHECK_RC(dx_sup_terminate_child(sup, "odd"), DX_OK);
    KT_CHECK(cap_last("shutdown_error", "odd", &rec));
    KT_CHECK(strcmp(rec.reason, "oops") == 0);

    /* Terminated children keep their specs. */
    dx_sup_counts k;
    KT_CHECK_RC(dx_sup_count_children(sup, &k), DX_OK);
    KT_CHECK_EQ(k.specs, 4);
    KT_CHECK_EQ(k.active, 0);
    stop_sup(sup);
}

Test(supervisor, shutdown_waits_the_childs_time_then_kills, .timeout = 30)
{
    run_body(shutdown_timeout_body, NULL);
}

static void stop_with_deaf_child_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {
        CHILD(sa, DX_SUP_PERMANENT),
        {.id = "deaf",
         .start = w_start,
         .arg = (void *)&sh_deaf,
         .shutdown_ms = 100},
        CHILD(sb, DX_SUP_PERMANENT),
    };
    dx_sup_spec spec = {.children = kids, .nchildren = 3};
    size_t base = dx_process_count();
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    ev_reset();
    stop_sup(sup);
    KT_CHECK(EV_EXPECT("stop:b ignored:deaf stop:a"));
    KT_CHECK_EQ(cap_count("shutdown_error", "deaf"), 1);
    KT_CHECK_EQ(settle_count(base), base);
}

Test(supervisor, a_child_that_ignores_shutdown_does_not_stall_the_stop,
     .timeout = 30)
{
    run_body(stop_with_deaf_child_body, NULL);
}

/* The parent's exit signal stops the supervisor, children first. */
static dx_pid test_body;

static void owner_fn(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT),
                            CHILD(sb, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {.children = kids, .nchildren = 2};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    ev_reset();
    dx_send_term(test_body, 1, dx_pid_term(sup));
    dx_msg *go = NULL;
    dx_receive_tag(2, KT_WAIT_MS, &go);
    dx_msg_free(go);
    dx_exit_self(dx_atom("owner_done"));
}

static void parent_exit_body(void *arg)
{
    (void)arg;
    test_body = dx_self();
    dx_pid owner, sup = DX_NOPID;
    KT_CHECK_RC(dx_spawn(owner_fn, NULL, &owner), DX_OK);
    dx_msg *m = NULL;
    if (!KT_CHECK_RC(dx_receive_tag(1, KT_WAIT_MS, &m), DX_OK))
        return;
    dx_pid_value(m->term, &sup);
    dx_msg_free(m);
    dx_ref ref;
    KT_CHECK_RC(dx_monitor(sup, &ref), DX_OK);
    dx_send_tag(owner, 2);
    KT_CHECK_REASON_ATOM(kt_await_down(ref, KT_WAIT_MS), "owner_done");
    KT_CHECK(EV_EXPECT("stop:b stop:a"));
}

Test(supervisor, the_parents_exit_stops_children_in_reverse_then_the_supervisor,
     .timeout = 30)
{
    run_body(parent_exit_body, NULL);
}

/* ---- start failures ---------------------------------------------------------- */

static const wspec sf_fail = {.id = "b", .start_rc = DX_ENOMEM};
static const wspec sf_bad = {.id = "b", .no_pid = true};

static void start_failure_body(void *arg)
{
    const wspec *bad = arg;
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT),
                            CHILD(*bad, DX_SUP_PERMANENT),
                            CHILD(sc, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {.children = kids, .nchildren = 3};
    size_t base = dx_process_count();
    dx_pid sup = DX_NOPID;
    dx_term *err = NULL;
    KT_CHECK_RC(dx_sup_start_link(&spec, &sup, &err), DX_EINIT);
    KT_CHECK(dx_pid_is_none(sup));
    /* The caller is linked yet survives: this check runs at all. */
    KT_CHECK(EV_EXPECT("start:a start:b stop:a"));
    const char *why = bad->no_pid ? "bad_return" : "enomem";
    char want[128], got[128];
    snprintf(want, sizeof want, "{shutdown,{failed_to_start_child,b,%s}}", why);
    kt_fmt(err, got, sizeof got);
    if (!KT_CHECK(strcmp(got, want) == 0))
        kt_note(__FILE__, __LINE__, got);
    dx_term_free(err);
    cap_rec rec;
    KT_CHECK(cap_last("start_error", "b", &rec));
    KT_CHECK(strcmp(rec.reason, why) == 0);
    KT_CHECK_EQ(settle_count(base), base);
}

Test(supervisor, a_child_failing_to_start_aborts_the_start_naming_it,
     .timeout = 30)
{
    run_body(start_failure_body, &sf_fail);
}

Test(supervisor, a_start_function_breaking_its_contract_is_a_bad_return,
     .timeout = 30)
{
    run_body(start_failure_body, &sf_bad);
}

static const wspec si_ign = {.id = "i", .start_rc = DX_SUP_IGNORE};
static const wspec si_tmp = {.id = "t", .start_rc = DX_SUP_IGNORE};

static void ignore_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {CHILD(si_ign, DX_SUP_PERMANENT),
                            CHILD(si_tmp, DX_SUP_TEMPORARY),
                            CHILD(sb, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {.children = kids, .nchildren = 3};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    dx_sup_child *list = NULL;
    size_t n = 0;
    KT_CHECK_RC(dx_sup_which_children(sup, &list, &n), DX_OK);
    if (KT_CHECK_EQ(n, 2)) {
        KT_CHECK(strcmp(list[0].id, "i") == 0);
        KT_CHECK_EQ(list[0].status, DX_SUP_CHILD_UNDEFINED);
        KT_CHECK(dx_pid_is_none(list[0].pid));
        KT_CHECK(strcmp(list[1].id, "b") == 0);
        KT_CHECK_EQ(list[1].status, DX_SUP_CHILD_RUNNING);
    }
    dx_free(list);
    dx_pid pid = DX_NOPID;
    KT_CHECK_RC(dx_sup_find_child(sup, "i", &pid), DX_ENOPROC);
    KT_CHECK_RC(dx_sup_find_child(sup, "t", &pid), DX_ENOENT);
    stop_sup(sup);
}

Test(supervisor, an_ignoring_child_is_kept_not_running_unless_temporary,
     .timeout = 30)
{
    run_body(ignore_body, NULL);
}

static void bad_spec_body(void *arg)
{
    (void)arg;
    dx_pid sup;
    dx_child_spec dup[] = {CHILD(sa, DX_SUP_PERMANENT),
                           CHILD(sa, DX_SUP_PERMANENT)};
    dx_sup_spec s1 = {.children = dup, .nchildren = 2};
    KT_CHECK_RC(dx_sup_start_link(&s1, &sup, NULL), DX_EINVAL);
    dx_child_spec nostart[] = {{.id = "x"}};
    dx_sup_spec s2 = {.children = nostart, .nchildren = 1};
    KT_CHECK_RC(dx_sup_start_link(&s2, &sup, NULL), DX_EINVAL);
    dx_child_spec longid[] = {
        {.id =
             "0123456789012345678901234567890123456789012345678901234567890123",
         .start = w_start,
         .arg = (void *)&sa}};
    dx_sup_spec s3 = {.children = longid, .nchildren = 1};
    KT_CHECK_RC(dx_sup_start_link(&s3, &sup, NULL), DX_EINVAL);
    dx_child_spec two[] = {CHILD(sa, DX_SUP_PERMANENT),
                           CHILD(sb, DX_SUP_PERMANENT)};
    dx_sup_spec s4 = {
        .strategy = DX_SUP_SIMPLE_ONE_FOR_ONE, .children = two, .nchildren = 2};
    KT_CHECK_RC(dx_sup_start_link(&s4, &sup, NULL), DX_EINVAL);
    dx_sup_spec s5 = {.intensity = -1, .children = two, .nchildren = 2};
    KT_CHECK_RC(dx_sup_start_link(&s5, &sup, NULL), DX_EINVAL);
    dx_child_spec badshut[] = {
        {.id = "x", .start = w_start, .arg = (void *)&sa, .shutdown_ms = -3}};
    dx_sup_spec s6 = {.children = badshut, .nchildren = 1};
    KT_CHECK_RC(dx_sup_start_link(&s6, &sup, NULL), DX_EINVAL);
    /* Out-of-range enums, a missing spec or child array, a period below
     * zero, an empty id, and a simple_one_for_one template with a bad id. */
    KT_CHECK_RC(dx_sup_start_link(NULL, &sup, NULL), DX_EINVAL);
    dx_sup_spec s7 = {.strategy = (dx_sup_strategy)99};
    KT_CHECK_RC(dx_sup_start_link(&s7, &sup, NULL), DX_EINVAL);
    dx_sup_spec s8 = {.period_s = -1};
    KT_CHECK_RC(dx_sup_start_link(&s8, &sup, NULL), DX_EINVAL);
    dx_sup_spec s9 = {.nchildren = 1};
    KT_CHECK_RC(dx_sup_start_link(&s9, &sup, NULL), DX_EINVAL);
    dx_child_spec badrestart[] = {{.id = "x",
                                   .start = w_start,
                                   .arg = (void *)&sa,
                                   .restart = (dx_sup_restart)7}};
    dx_sup_spec s10 = {.children = badrestart, .nchildren = 1};
    KT_CHECK_RC(dx_sup_start_link(&s10, &sup, NULL), DX_EINVAL);
    dx_child_spec badtype[] = {{.id = "x",
                                .start = w_start,
                                .arg = (void *)&sa,
                                .type = (dx_sup_child_type)7}};
    dx_sup_spec s11 = {.children = badtype, .nchildren = 1};
    KT_CHECK_RC(dx_sup_start_link(&s11, &sup, NULL), DX_EINVAL);
    dx_child_spec emptyid[] = {
        {.id = "", .start = w_start, .arg = (void *)&sa}};
    dx_sup_spec s12 = {.children = emptyid, .nchildren = 1};
    KT_CHECK_RC(dx_sup_start_link(&s12, &sup, NULL), DX_EINVAL);
    dx_sup_spec s13 = {.strategy = DX_SUP_SIMPLE_ONE_FOR_ONE,
                       .children = emptyid,
                       .nchildren = 1};
    KT_CHECK_RC(dx_sup_start_link(&s13, &sup, NULL), DX_EINVAL);
    KT_CHECK(EV_EXPECT(""));
}

Test(supervisor, strategies_and_restart_kinds_have_their_otp_names)
{
    cr_expect_str_eq(dx_sup_strategy_name(DX_SUP_ONE_FOR_ONE), "one_for_one");
    cr_expect_str_eq(dx_sup_strategy_name(DX_SUP_ONE_FOR_ALL), "one_for_all");
    cr_expect_str_eq(dx_sup_strategy_name(DX_SUP_REST_FOR_ONE), "rest_for_one");
    cr_expect_str_eq(dx_sup_strategy_name(DX_SUP_SIMPLE_ONE_FOR_ONE),
                     "simple_one_for_one");
    cr_expect_str_eq(dx_sup_strategy_name((dx_sup_strategy)42), "?");
    cr_expect_str_eq(dx_sup_restart_name(DX_SUP_PERMANENT), "permanent");
    cr_expect_str_eq(dx_sup_restart_name(DX_SUP_TRANSIENT), "transient");
    cr_expect_str_eq(dx_sup_restart_name(DX_SUP_TEMPORARY), "temporary");
    cr_expect_str_eq(dx_sup_restart_name((dx_sup_restart)42), "?");
}

Test(supervisor, invalid_specs_are_rejected_before_anything_starts,
     .timeout = 30)
{
    run_body(bad_spec_body, NULL);
}

Test(supervisor, starting_from_a_host_thread_returns_enotproc, .timeout = 30)
{
    kt_start(1);
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {.children = kids, .nchildren = 1};
    dx_pid sup;
    cr_expect_eq(dx_sup_start_link(&spec, &sup, NULL), DX_ENOTPROC);
    kt_stop();
}

/* ---- run-time API ---------------------------------------------------------- */

static const wspec rt_d = {.id = "d", .trap = true};
static const wspec rt_fail = {.id = "f", .start_rc = DX_EINIT};
static const wspec rt_tmp = {.id = "t", .trap = true};

static void runtime_api_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {.name = "api_sup",
                        .intensity = 10,
                        .period_s = 60,
                        .children = kids,
                        .nchildren = 1};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    KT_CHECK(dx_pid_eq(dx_whereis("api_sup"), sup));

    /* start_child appends to the start order. */
    dx_child_spec d = CHILD(rt_d, DX_SUP_PERMANENT);
    dx_pid pd = DX_NOPID, p2 = DX_NOPID;
    KT_CHECK_RC(dx_sup_start_child(sup, &d, &pd), DX_OK);
    KT_CHECK(dx_is_alive(pd));
    KT_CHECK_RC(dx_sup_start_child(sup, &d, &p2), DX_EEXIST);
    KT_CHECK(dx_pid_eq(p2, pd));
    dx_child_spec f = CHILD(rt_fail, DX_SUP_PERMANENT);
    KT_CHECK_RC(dx_sup_start_child(sup, &f, &p2), DX_EINIT);
    KT_CHECK_RC(dx_sup_find_child(sup, "f", &p2), DX_ENOENT);
    dx_child_spec nostart = {.id = "n"};
    KT_CHECK_RC(dx_sup_start_child(sup, &nostart, &p2), DX_EINVAL);
    KT_CHECK_RC(dx_sup_start_dynamic(sup, NULL, &p2), DX_ENOTSUP);
    KT_CHECK_RC(dx_sup_terminate_pid(sup, pd), DX_ENOENT);

    /* find_child follows restarts. */
    crash_atom(pd, "boom");
    dx_pid pd2 = DX_NOPID;
    KT_CHECK_RC(dx_sup_find_child(sup, "d", &pd2), DX_OK);
    KT_CHECK(!dx_pid_eq(pd2, pd) && dx_is_alive(pd2));

    /* terminate keeps the spec; restart brings it back; delete drops it. */
    KT_CHECK_RC(dx_sup_delete_child(sup, "d"), DX_ESTATE);
    KT_CHECK_RC(dx_sup_restart_child(sup, "d", &p2), DX_ESTATE);
    ev_reset();
    KT_CHECK_RC(dx_sup_terminate_child(sup, "d"), DX_OK);
    KT_CHECK(EV_EXPECT("stop:d"));
    KT_CHECK(!dx_is_alive(pd2));
    KT_CHECK_RC(dx_sup_find_child(sup, "d", &p2), DX_ENOPROC);
    KT_CHECK_RC(dx_sup_terminate_child(sup, "d"), DX_OK); /* idempotent */
    dx_pid pd3 = DX_NOPID;
    KT_CHECK_RC(dx_sup_restart_child(sup, "d", &pd3), DX_OK);
    KT_CHECK(dx_is_alive(pd3));
    KT_CHECK_RC(dx_sup_terminate_child(sup, "d"), DX_OK);
    KT_CHECK_RC(dx_sup_delete_child(sup, "d"), DX_OK);
    KT_CHECK_RC(dx_sup_find_child(sup, "d", &p2), DX_ENOENT);
    KT_CHECK_RC(dx_sup_restart_child(sup, "d", &p2), DX_ENOENT);
    KT_CHECK_RC(dx_sup_terminate_child(sup, "nope"), DX_ENOENT);
    KT_CHECK_RC(dx_sup_delete_child(sup, "nope"), DX_ENOENT);

    /* A terminated temporary child leaves. */
    dx_child_spec t = CHILD(rt_tmp, DX_SUP_TEMPORARY);
    KT_CHECK_RC(dx_sup_start_child(sup, &t, &p2), DX_OK);
    KT_CHECK_RC(dx_sup_terminate_child(sup, "t"), DX_OK);
    KT_CHECK_RC(dx_sup_find_child(sup, "t", &p2), DX_ENOENT);

    /* which_children: start order, statuses, restart counts. */
    KT_CHECK_RC(dx_sup_start_child(sup, &d, &pd), DX_OK);
    crash_atom(pd, "boom");
    dx_sup_child *list = NULL;
    size_t n = 0;
    KT_CHECK_RC(dx_sup_which_children(sup, &list, &n), DX_OK);
    if (KT_CHECK_EQ(n, 2)) {
        KT_CHECK(strcmp(list[0].id, "a") == 0);
        KT_CHECK(strcmp(list[1].id, "d") == 0);
        KT_CHECK_EQ(list[1].restarts, 1);
        KT_CHECK_EQ(list[1].status, DX_SUP_CHILD_RUNNING);
        KT_CHECK_EQ(list[1].type, DX_SUP_WORKER);
        KT_CHECK_EQ(list[1].restart, DX_SUP_PERMANENT);
        KT_CHECK(dx_pid_eq(list[0].pid, child_pid(sup, "a")));
    }
    dx_free(list);

    ev_reset();
    stop_sup(sup);
    KT_CHECK(EV_EXPECT("stop:d stop:a"));
    /* A dead supervisor answers nothing. */
    KT_CHECK_RC(dx_sup_find_child(sup, "a", &p2), DX_ENOPROC);
    KT_CHECK_RC(dx_sup_which_children(sup, &list, &n), DX_ENOPROC);
    KT_CHECK(dx_pid_is_none(dx_whereis("api_sup")));
}

Test(supervisor, the_runtime_api_behaves_as_otps, .timeout = 30)
{
    run_body(runtime_api_body, NULL);
}

/* A restart that fails is retried, each try counting against intensity. */
static atomic_int flaky_fail; /* how many starts to fail from now on */

static int flaky_start(void *arg, void *extra, dx_pid *pid_out)
{
    if (atomic_load(&flaky_fail) > 0) {
        atomic_fetch_sub(&flaky_fail, 1);
        ev_add("fail:f");
        return DX_ENOMEM;
    }
    return w_start(arg, extra, pid_out);
}

static const wspec rf = {.id = "f", .trap = true};

static void retry_body(void *arg)
{
    (void)arg;
    dx_trap_exit(true);
    dx_child_spec kids[] = {
        {.id = "f", .start = flaky_start, .arg = (void *)&rf}};
    dx_sup_spec spec = {
        .intensity = 5, .period_s = 3600, .children = kids, .nchildren = 1};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    ev_reset();
    atomic_store(&flaky_fail, 2);
    crash_atom(child_pid(sup, "f"), "boom");
    /* Two failed tries, then success: 3 restarts, all within intensity. */
    dx_pid p = DX_NOPID;
    for (int i = 0; i < 1000 && dx_pid_is_none(p); i++) {
        if (dx_sup_find_child(sup, "f", &p) != DX_OK)
            dx_sleep(1);
    }
    KT_CHECK(EV_EXPECT("fail:f fail:f start:f"));
    dx_sup_counts k;
    KT_CHECK_RC(dx_sup_count_children(sup, &k), DX_OK);
    KT_CHECK_EQ(k.restarts, 3);
    KT_CHECK_EQ(cap_count("start_error", "f"), 2);

    /* Failing for ever exhausts the intensity: the supervisor gives up. */
    atomic_store(&flaky_fail, 1000);
    dx_ref ref;
    KT_CHECK_RC(dx_monitor(sup, &ref), DX_OK);
    crash_atom(child_pid(sup, "f"), "boom");
    KT_CHECK_REASON_ATOM(kt_await_down(ref, KT_WAIT_MS), "shutdown");
    KT_CHECK_EQ(cap_count("reached_max_restart_intensity", "f"), 1);
    kt_drain();
}

Test(supervisor, a_failed_restart_is_retried_and_counts_against_intensity,
     .timeout = 30)
{
    run_body(retry_body, NULL);
}

/* ---- reports ------------------------------------------------------------------- */

static void report_body(void *arg)
{
    (void)arg;
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {.name = "rep_sup",
                        .intensity = 10,
                        .period_s = 60,
                        .children = kids,
                        .nchildren = 1};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    cap_rec rec;
    KT_CHECK(cap_last("child_started", "a", &rec));
    KT_CHECK(strcmp(rec.sup, "rep_sup") == 0);
    dx_log_set_format(DX_LOG_LOGFMT);
    crash_wait(child_pid(sup, "a"), dx_tuple(2, dx_atom("badarg"), dx_int(7)));
    crash_atom(child_pid(sup, "a"), "boom");
    dx_log_set_format(DX_LOG_TEXT);
    if (KT_CHECK(cap_last("child_terminated", "a", &rec))) {
        KT_CHECK(strstr(rec.line, "level=error") != NULL);
        KT_CHECK(strstr(rec.line, "event=child_terminated") != NULL);
        KT_CHECK(strstr(rec.line, " supervisor=rep_sup ") != NULL);
        KT_CHECK(strstr(rec.line, " child=a ") != NULL);
        KT_CHECK(strstr(rec.line, " pid=<") != NULL);
        KT_CHECK(strstr(rec.line, " reason=boom ") != NULL);
        KT_CHECK(strstr(rec.line, " restarts=1") != NULL);
        KT_CHECK(strchr(rec.line, '\n') == NULL);
    }
    KT_CHECK_EQ(cap_count("child_terminated", "a"), 2);
    KT_CHECK_EQ(cap_count("child_restarted", "a"), 2);
    KT_CHECK(cap_last("child_restarted", "a", &rec));
    KT_CHECK_EQ(rec.restarts, 2);
    stop_sup(sup);
    KT_CHECK(cap_last("supervisor_stopped", NULL, &rec));
}

Test(supervisor, reports_name_the_child_reason_and_restart_count, .timeout = 30)
{
    run_body(report_body, NULL);
}

/* Progress reports are info: hidden at the default level. */
static void quiet_body(void *arg)
{
    (void)arg;
    dx_log_set_level(DX_LOG_NOTICE);
    dx_child_spec kids[] = {CHILD(sa, DX_SUP_PERMANENT)};
    dx_sup_spec spec = {.children = kids, .nchildren = 1};
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    crash_atom(child_pid(sup, "a"), "boom");
    KT_CHECK_EQ(cap_count("child_started", NULL), 0);
    KT_CHECK_EQ(cap_count("child_restarted", NULL), 0);
    KT_CHECK_EQ(cap_count("child_terminated", "a"), 1);
    stop_sup(sup);
}

Test(supervisor, progress_reports_are_hidden_at_the_default_level,
     .timeout = 30)
{
    run_body(quiet_body, NULL);
}

/* ---- dynamic children ----------------------------------------------------- */

#define NDYN 10000

static atomic_int dyn_starts[NDYN + 1];
static atomic_int dyn_freed;

static void dyn_worker(void *arg)
{
    (void)arg;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            continue;
        if (m->tag == TAG_CRASH) {
            dx_term *r = dx_msg_take_term(m);
            dx_msg_free(m);
            dx_exit_self(r);
        }
        dx_msg_free(m);
    }
}

/* extra carries the child's number, 1..NDYN (heap, freed by extra_free). */
static int dyn_start(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    int k = *(const int *)extra;
    if (k >= 1 && k <= NDYN)
        atomic_fetch_add(&dyn_starts[k], 1);
    return dx_spawn_link(dyn_worker, NULL, pid_out);
}

static void dyn_extra_free(void *extra)
{
    atomic_fetch_add(&dyn_freed, 1);
    dx_free(extra);
}

typedef struct dyn_case {
    dx_sup_restart type;
} dyn_case;

static void dynamic_10k_body(void *arg)
{
    const dyn_case *dc = arg;
    dx_child_spec tmpl = {.id = "conn",
                          .start = dyn_start,
                          .restart = dc->type,
                          .shutdown_ms = DX_SUP_BRUTAL_KILL,
                          .extra_free = dyn_extra_free};
    dx_sup_spec spec = {.strategy = DX_SUP_SIMPLE_ONE_FOR_ONE,
                        .intensity = 100000,
                        .period_s = 60,
                        .children = &tmpl,
                        .nchildren = 1};
    size_t base = dx_process_count();
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    dx_pid *pids = dx_calloc(NDYN + 1, sizeof *pids);
    for (int k = 1; k <= NDYN; k++) {
        int *extra = dx_malloc(sizeof *extra);
        *extra = k;
        if (!KT_CHECK_RC(dx_sup_start_dynamic(sup, extra, &pids[k]), DX_OK)) {
            dx_free(extra);
            break;
        }
    }
    dx_sup_counts kc;
    KT_CHECK_RC(dx_sup_count_children(sup, &kc), DX_OK);
    KT_CHECK_EQ(kc.active, NDYN);
    KT_CHECK_EQ(dx_process_count(), base + 1 + NDYN);

    /* Crash a random third abnormally and a random sixth normally. */
    unsigned seed = 12345;
    int crashed = 0, normal = 0;
    char *fate = dx_calloc(NDYN + 1, 1);
    for (int k = 1; k <= NDYN; k++) {
        int r = rand_r(&seed) % 6;
        fate[k] = r < 2 ? 'c' : r == 2 ? 'n' : '-';
    }
    dx_ref *refs = dx_calloc(NDYN + 1, sizeof *refs);
    for (int k = 1; k <= NDYN; k++) {
        if (fate[k] == '-')
            continue;
        dx_monitor(pids[k], &refs[k]);
        dx_send_term(pids[k], TAG_CRASH,
                     dx_atom(fate[k] == 'c' ? "boom" : "normal"));
        if (fate[k] == 'c')
            crashed++;
        else
            normal++;
    }
    for (int k = 1; k <= NDYN; k++)
        if (fate[k] != '-')
            dx_term_free(kt_await_down(refs[k], KT_WAIT_MS));

    /* Exactly as the restart type says. */
    int want_active = NDYN, want_restarts = 0;
    if (dc->type == DX_SUP_PERMANENT) {
        want_restarts = crashed + normal;
    } else if (dc->type == DX_SUP_TRANSIENT) {
        want_active = NDYN - normal;
        want_restarts = crashed;
    } else {
        want_active = NDYN - crashed - normal;
    }
    KT_CHECK_RC(dx_sup_count_children(sup, &kc), DX_OK);
    KT_CHECK_EQ(kc.active, want_active);
    KT_CHECK_EQ(kc.specs, want_active);
    KT_CHECK_EQ(kc.restarts, want_restarts);
    int bad = 0;
    for (int k = 1; k <= NDYN; k++) {
        bool restarted = dc->type == DX_SUP_PERMANENT
                             ? fate[k] != '-'
                             : dc->type == DX_SUP_TRANSIENT && fate[k] == 'c';
        if (atomic_load(&dyn_starts[k]) != (restarted ? 2 : 1))
            bad++;
    }
    KT_CHECK_EQ(bad, 0);
    /* Children that left were freed with their extra. */
    KT_CHECK_EQ(atomic_load(&dyn_freed), NDYN - want_active);

    dx_sup_child *list = NULL;
    size_t n = 0;
    KT_CHECK_RC(dx_sup_which_children(sup, &list, &n), DX_OK);
    KT_CHECK_EQ(n, want_active);
    size_t running = 0;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        running +=
            list[i].status == DX_SUP_CHILD_RUNNING && dx_is_alive(list[i].pid);
        sum += list[i].restarts;
        KT_CHECK(list[i].id[0] == '\0');
    }
    KT_CHECK_EQ(running, want_active);
    KT_CHECK_EQ(sum, want_restarts);
    dx_free(list);

    stop_sup(sup);
    KT_CHECK_EQ(atomic_load(&dyn_freed), NDYN);
    KT_CHECK_EQ(settle_count(base), base);
    dx_free(pids);
    dx_free(fate);
    dx_free(refs);
}

Test(supervisor, dynamic_10k_permanent_children_are_all_restarted,
     .timeout = 120)
{
    static const dyn_case c = {DX_SUP_PERMANENT};
    setup_capture();
    dx_log_set_level(DX_LOG_ERROR);
    kt_body_test(2, dynamic_10k_body, (void *)&c);
}

Test(supervisor, dynamic_10k_transient_children_restart_only_after_crashes,
     .timeout = 120)
{
    static const dyn_case c = {DX_SUP_TRANSIENT};
    setup_capture();
    dx_log_set_level(DX_LOG_ERROR);
    kt_body_test(2, dynamic_10k_body, (void *)&c);
}

Test(supervisor, dynamic_10k_temporary_children_are_never_restarted,
     .timeout = 120)
{
    static const dyn_case c = {DX_SUP_TEMPORARY};
    setup_capture();
    dx_log_set_level(DX_LOG_ERROR);
    kt_body_test(2, dynamic_10k_body, (void *)&c);
}

/* The dynamic API's edges: ignore, errors, terminate by pid, ownership of
 * extra, and a mass shutdown that must kill a deaf child. */
static atomic_int dyn_mode; /* 0 spawn, 1 ignore, 2 fail, 3 deaf */

static void deaf_worker(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    for (;;)
        if (dx_receive_any(DX_INFINITY, &m) == DX_OK)
            dx_msg_free(m);
}

static int dyn_edge_start(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    switch (atomic_load(&dyn_mode)) {
    case 1:
        return DX_SUP_IGNORE;
    case 2:
        return DX_ELIMIT;
    case 3: {
        dx_spawn_opts o = {.link = true, .trap_exit = true};
        return dx_spawn_opt(deaf_worker, NULL, &o, pid_out, NULL);
    }
    default:
        return dx_spawn_link(dyn_worker, NULL, pid_out);
    }
}

static void dynamic_edges_body(void *arg)
{
    (void)arg;
    dx_child_spec tmpl = {.start = dyn_edge_start,
                          .restart = DX_SUP_TEMPORARY,
                          .shutdown_ms = 100,
                          .extra_free = dyn_extra_free};
    dx_sup_spec spec = {.strategy = DX_SUP_SIMPLE_ONE_FOR_ONE,
                        .children = &tmpl,
                        .nchildren = 1};
    size_t base = dx_process_count();
    dx_pid sup;
    if (!KT_CHECK_RC(dx_sup_start_link(&spec, &sup, NULL), DX_OK))
        return;
    dx_sup_counts k;
    KT_CHECK_RC(dx_sup_count_children(sup, &k), DX_OK);
    KT_CHECK_EQ(k.specs, 0); /* nothing starts with the supervisor */

    atomic_store(&dyn_mode, 1);
    dx_pid p = DX_NOPID;
    KT_CHECK_RC(dx_sup_start_dynamic(sup, dx_malloc(4), &p), DX_OK);
    KT_CHECK(dx_pid_is_none(p));
    KT_CHECK_EQ(atomic_load(&dyn_freed), 1); /* ignored: freed at once */

    atomic_store(&dyn_mode, 2);
    void *mine = dx_malloc(4);
    KT_CHECK_RC(dx_sup_start_dynamic(sup, mine, &p), DX_ELIMIT);
    KT_CHECK_EQ(atomic_load(&dyn_freed), 1); /* error: still mine */
    dx_free(mine);

    atomic_store(&dyn_mode, 0);
    dx_pid p1, p2;
    KT_CHECK_RC(dx_sup_start_dynamic(sup, dx_malloc(4), &p1), DX_OK);
    KT_CHECK_RC(dx_sup_start_dynamic(sup, dx_malloc(4), &p2), DX_OK);
    KT_CHECK_RC(dx_sup_terminate_pid(sup, p1), DX_OK);
    KT_CHECK(!dx_is_alive(p1));
    KT_CHECK_EQ(atomic_load(&dyn_freed), 2);
    KT_CHECK_RC(dx_sup_terminate_pid(sup, p1), DX_ENOENT);
    KT_CHECK_RC(dx_sup_terminate_child(sup, "x"), DX_ENOTSUP);
    KT_CHECK_RC(dx_sup_restart_child(sup, "x", &p), DX_ENOTSUP);
    KT_CHECK_RC(dx_sup_delete_child(sup, "x"), DX_ENOTSUP);
    KT_CHECK_RC(dx_sup_find_child(sup, "x", &p), DX_ENOTSUP);
    dx_child_spec other = CHILD(sa, DX_SUP_PERMANENT);
    KT_CHECK_RC(dx_sup_start_child(sup, &other, &p), DX_ENOTSUP);

    atomic_store(&dyn_mode, 3);
    dx_pid deaf;
    KT_CHECK_RC(dx_sup_start_dynamic(sup, dx_malloc(4), &deaf), DX_OK);
    dx_ref ref;
    KT_CHECK_RC(dx_monitor(deaf, &ref), DX_OK);
    stop_sup(sup);
    KT_CHECK_REASON_ATOM(kt_await_down(ref, KT_WAIT_MS), "killed");
    KT_CHECK_EQ(cap_count("shutdown_error", NULL), 1);
    KT_CHECK_EQ(atomic_load(&dyn_freed), 4);
    KT_CHECK_EQ(settle_count(base), base);
}

Test(supervisor, dynamic_children_ignore_fail_terminate_and_shut_down,
     .timeout = 30)
{
    run_body(dynamic_edges_body, NULL);
}
