/*
 * app.c — the application root (app.h): a master process that owns the
 * root supervisor, and the handle through which host threads and processes
 * start, wait for and stop it.
 *
 * The master is the root's parent: it starts the root linked to itself and
 * traps exits, so it both sees the root give up and can stop it with exit
 * `shutdown` exactly as a parent supervisor would. Host threads wait on a
 * condition variable the master signals; processes wait on a monitor of the
 * master instead, because blocking a scheduler thread on a condition could
 * stall the very processes being waited for.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/app.h"
#include "dspex/log.h"
#include "dx_internal.h"

/* Messages between a caller and the master. */
enum { TAG_APP_STARTED = 0x41505001, TAG_APP_STOP };

struct dx_app {
    pthread_mutex_t mu;
    pthread_cond_t cv;

    /* The root spec, deep-copied: the master reads it while the caller
     * waits, and a waiting process's stack is not readable. */
    dx__spec_copy copy;
    char label[64];

    dx_pid master;
    dx_pid starter; /* a process caller to notify, or DX_NOPID */

    /* Guarded by mu. */
    bool started;  /* start result below is set */
    bool finished; /* the master is done; it touches nothing after this */
    int start_rc;
    dx_term *start_error;
    dx_pid root;
    dx_term *final_reason;
};

static void app_free(dx_app *a)
{
    if (a == NULL)
        return;
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    dx_term_free(a->start_error);
    dx_term_free(a->final_reason);
    dx__spec_copy_fini(&a->copy);
    dx_free(a);
}

static dx_app *app_new(const dx_sup_spec *spec)
{
    dx_app *a = dx_calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);

    if (dx__spec_copy_init(&a->copy, spec) != DX_OK)
        goto oom;
    snprintf(a->label, sizeof a->label, "%s",
             a->copy.name ? a->copy.name : "app");
    return a;
oom:
    app_free(a);
    return NULL;
}

static void app_log(const dx_app *a, dx_log_level level, const char *event,
                    const dx_term *reason)
{
    if (!dx_log_enabled(level))
        return;
    dx_log_field f[2] = {DX_LOG_STR("app", a->label),
                         DX_LOG_TERM("reason", reason)};
    dx_log_event(level, event, f, reason ? 2 : 1);
}

static void master(void *arg)
{
    dx_app *a = arg;
    dx_trap_exit(true);
    char lbl[64];
    snprintf(lbl, sizeof lbl, "dx_app:%.56s", a->label);
    dx_set_label(lbl);

    dx_pid root = DX_NOPID;
    dx_term *err = NULL;
    int rc = dx_sup_start_link(&a->copy.spec, &root, &err);

    pthread_mutex_lock(&a->mu);
    a->started = true;
    a->start_rc = rc;
    a->start_error = err;
    a->root = root;
    if (rc != DX_OK)
        a->finished = true;
    pthread_cond_broadcast(&a->cv);
    dx_pid starter = a->starter;
    pthread_mutex_unlock(&a->mu);
    if (!dx_pid_is_none(starter))
        dx_send_tag(starter, TAG_APP_STARTED);
    if (rc != DX_OK)
        return;
    app_log(a, DX_LOG_INFO, "application_started", NULL);

    dx_term *reason = NULL;
    bool requested = false;
    while (reason == NULL) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            continue;
        if (m->tag == TAG_APP_STOP && !requested) {
            requested = true;
            dx_exit(root, dx_atom("shutdown"));
        } else if (m->tag == DX_TAG_EXIT && dx_pid_eq(m->from, root)) {
            reason = dx_msg_take_term(m);
            if (reason == NULL)
                reason = dx_atom("normal");
        }
        dx_msg_free(m);
    }
    if (requested)
        app_log(a, DX_LOG_INFO, "application_stopped", reason);
    else
        app_log(a, DX_LOG_ERROR, "application_exited", reason);

    pthread_mutex_lock(&a->mu);
    a->final_reason = reason;
    a->root = DX_NOPID;
    a->finished = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

/* Host thread: wait for pred(a) under the lock, up to timeout_ms. */
static int host_wait(dx_app *a, bool started_only, int64_t timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    if (timeout_ms >= 0) {
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (timeout_ms % 1000) * 1000000;
        if (dl.tv_nsec >= 1000000000) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000;
        }
    }
    int rc = DX_OK;
    pthread_mutex_lock(&a->mu);
    while (!(started_only ? a->started : a->finished)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&a->cv, &a->mu);
        } else if (pthread_cond_timedwait(&a->cv, &a->mu, &dl) != 0 &&
                   !(started_only ? a->started : a->finished)) {
            rc = DX_ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

/* Process: wait until the master has exited (so `finished` is set). */
static int proc_wait_end(dx_app *a, int64_t timeout_ms)
{
    dx_ref ref;
    int rc = dx_monitor(a->master, &ref);
    if (rc != DX_OK)
        return rc;
    dx_match m = {
        .fields = DX_MATCH_TAG | DX_MATCH_REF, .tag = DX_TAG_DOWN, .ref = ref};
    dx_msg *msg = NULL;
    rc = dx_receive(&m, timeout_ms, &msg);
    if (rc != DX_OK) {
        dx_demonitor(ref, true);
        return rc;
    }
    dx_msg_free(msg);
    return DX_OK;
}

int dx_app_start(const dx_sup_spec *root, dx_app **app_out, dx_term **error)
{
    if (error != NULL)
        *error = NULL;
    if (app_out == NULL || root == NULL ||
        (root->nchildren > 0 && root->children == NULL))
        return DX_EINVAL;
    *app_out = NULL;
    if (!dx_runtime_running())
        return DX_ESTATE;
    dx_app *a = app_new(root);
    if (a == NULL)
        return DX_ENOMEM;
    bool in_proc = !dx_pid_is_none(dx_self());
    a->starter = dx_self();

    int rc;
    dx_ref mon = DX_NOREF;
    if (in_proc) {
        dx_spawn_opts o = {.monitor = true, .label = "dx_app"};
        rc = dx_spawn_opt(master, a, &o, &a->master, &mon);
    } else {
        rc = dx_spawn(master, a, &a->master);
    }
    if (rc != DX_OK) {
        app_free(a);
        return rc;
    }
    if (in_proc) {
        /* The ack, or the master's DOWN if it died before sending it. */
        dx_match m = {.fields = DX_MATCH_FROM, .from = a->master};
        for (;;) {
            dx_msg *msg = NULL;
            if (dx_receive(&m, DX_INFINITY, &msg) != DX_OK)
                continue;
            bool done = msg->tag == TAG_APP_STARTED ||
                        (msg->tag == DX_TAG_DOWN && dx_ref_eq(msg->ref, mon));
            bool down = msg->tag == DX_TAG_DOWN;
            dx_msg_free(msg);
            if (done) {
                if (!down)
                    dx_demonitor(mon, true);
                break;
            }
        }
    } else {
        host_wait(a, true, DX_INFINITY);
    }

    pthread_mutex_lock(&a->mu);
    rc = a->started ? a->start_rc : DX_EINIT;
    dx_term *err = a->start_error;
    a->start_error = NULL;
    pthread_mutex_unlock(&a->mu);
    if (rc != DX_OK) {
        /* The master returns right after a failed start; let it go before
         * the handle it reads is freed. */
        if (in_proc)
            proc_wait_end(a, DX_INFINITY);
        else
            dx_wait_exit(a->master, DX_INFINITY, NULL);
        if (error != NULL)
            *error = err;
        else
            dx_term_free(err);
        app_free(a);
        return rc;
    }
    dx_term_free(err);
    *app_out = a;
    return DX_OK;
}

dx_pid dx_app_root(const dx_app *app)
{
    if (app == NULL)
        return DX_NOPID;
    dx_app *a = (dx_app *)app;
    pthread_mutex_lock(&a->mu);
    dx_pid root = a->root;
    pthread_mutex_unlock(&a->mu);
    return root;
}

static int wait_end(dx_app *a, int64_t timeout_ms)
{
    if (!dx_pid_is_none(dx_self()))
        return proc_wait_end(a, timeout_ms);
    return host_wait(a, false, timeout_ms);
}

int dx_app_wait(dx_app *app, int64_t timeout_ms, dx_term **reason)
{
    if (reason != NULL)
        *reason = NULL;
    if (app == NULL)
        return DX_EINVAL;
    int rc = wait_end(app, timeout_ms);
    if (rc != DX_OK)
        return rc;
    if (reason != NULL) {
        pthread_mutex_lock(&app->mu);
        *reason = dx_term_copy(app->final_reason);
        pthread_mutex_unlock(&app->mu);
    }
    return DX_OK;
}

int dx_app_stop(dx_app *app, dx_term **reason)
{
    if (reason != NULL)
        *reason = NULL;
    if (app == NULL)
        return DX_OK;
    if (dx_runtime_running()) {
        pthread_mutex_lock(&app->mu);
        bool finished = app->finished;
        pthread_mutex_unlock(&app->mu);
        if (!finished)
            dx_send_tag(app->master, TAG_APP_STOP);
        wait_end(app, DX_INFINITY);
        /* A host waiter saw `finished`; the master may still be returning
         * from its function, which touches nothing of the handle. */
    }
    pthread_mutex_lock(&app->mu);
    if (reason != NULL) {
        *reason = app->final_reason;
        app->final_reason = NULL;
    }
    pthread_mutex_unlock(&app->mu);
    app_free(app);
    return DX_OK;
}

/* Runs main in a process of its own and hands its exit reason to the host
 * thread. Watching main from a process that started it with a monitor
 * means the reason cannot be missed, however quickly main returns. */
typedef struct main_run {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    dx_proc_fn fn;
    void *arg;
    int rc;
    bool done;
    dx_term *reason;
} main_run;

static void main_runner(void *arg)
{
    main_run *r = arg;
    dx_pid pid;
    dx_ref ref;
    int rc = dx_spawn_monitor(r->fn, r->arg, &pid, &ref);
    dx_term *reason = NULL;
    if (rc == DX_OK) {
        dx_match m = {.fields = DX_MATCH_TAG | DX_MATCH_REF,
                      .tag = DX_TAG_DOWN,
                      .ref = ref};
        dx_msg *down = NULL;
        rc = dx_receive(&m, DX_INFINITY, &down);
        if (rc == DX_OK) {
            reason = dx_msg_take_term(down);
            dx_msg_free(down);
        }
    }
    pthread_mutex_lock(&r->mu);
    r->rc = rc;
    r->reason = reason;
    r->done = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static int run_main(dx_proc_fn fn, void *arg, dx_term **exit_reason)
{
    main_run r = {.fn = fn, .arg = arg};
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    /* r lives on this host thread's stack, which is never copied, and the
     * runner is done with it once `done` is set. */
    int rc = dx_spawn(main_runner, &r, NULL);
    if (rc == DX_OK) {
        pthread_mutex_lock(&r.mu);
        while (!r.done)
            pthread_cond_wait(&r.cv, &r.mu);
        pthread_mutex_unlock(&r.mu);
        rc = r.rc;
        if (exit_reason != NULL)
            *exit_reason = r.reason;
        else
            dx_term_free(r.reason);
    }
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cv);
    return rc;
}

int dx_app_run(const dx_runtime_opts *opts, const dx_sup_spec *root,
               dx_proc_fn main, void *arg, dx_term **exit_reason)
{
    if (exit_reason != NULL)
        *exit_reason = NULL;
    if (!dx_pid_is_none(dx_self()))
        return DX_ESTATE;
    int rc = dx_runtime_start(opts);
    if (rc != DX_OK)
        return rc;
    dx_app *app = NULL;
    dx_term *err = NULL;
    rc = dx_app_start(root, &app, &err);
    if (rc != DX_OK) {
        if (exit_reason != NULL)
            *exit_reason = err;
        else
            dx_term_free(err);
        dx_runtime_stop();
        return rc;
    }
    if (main != NULL) {
        rc = run_main(main, arg, exit_reason);
        dx_app_stop(app, NULL);
    } else {
        rc = dx_app_wait(app, DX_INFINITY, NULL);
        dx_app_stop(app, exit_reason);
    }
    int rc2 = dx_runtime_stop();
    return rc != DX_OK ? rc : rc2;
}
