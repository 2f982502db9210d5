/*
 * embed.c — the embedding API (embed.h): a host's handle on the runtime,
 * its application trees, and asynchronous program calls with exactly-once
 * completion callbacks delivered on a runtime thread or on the host's
 * libuv loop, drained and cancelled at shutdown.
 *
 * Each call has two processes: a worker that runs the program (as
 * dx_module_call's process does) and a watcher linked to it that traps
 * exits. The watcher owns the call's end: it learns the worker's exit
 * (normal, crash), enforces the deadline and acts on cancel messages by
 * killing the worker, then fixes the result once (finish). Killing the
 * watcher (the runtime stopping under the call) kills the worker through
 * the link, and the watcher's arg_free still finishes the call, so the
 * callback runs exactly once whatever happens.
 *
 * The embedding's mutex guards the bookkeeping a host thread and the
 * runtime threads share: the list of calls in flight (shutdown cancels
 * them), the delivery queue of the attached loop, and the counters. No
 * user callback runs with it held.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "dspex/alloc.h"
#include "dspex/app.h"
#include "dspex/embed.h"
#include "dspex/error.h"
#include "module_int.h"

#define TAG_CANCEL 1

struct dx_embed {
    /* The owner's (until shutdown) and one per call not yet freed, so a
     * handle outlives the embedding safely. */
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; broadcast on every change */
    bool owns_runtime;
    size_t max_calls;

    /* Under mu. */
    bool closing;
    size_t in_flight;      /* accepted, callback not returned */
    dx_embed_call *calls;  /* those calls (doubly linked) */
    uv_async_t *async;     /* attached loop's wake-up; NULL when none */
    bool has_loop;         /* a loop was attached (even once closed) */
    pthread_t loop_thread; /* valid when has_loop */
    dx_embed_call *q_head; /* finished, waiting for the loop thread */
    dx_embed_call *q_tail;
    dx_app **apps;
    size_t n_apps, cap_apps;
};

struct dx_embed_call {
    /* The caller's handle (optional), the watcher's, the worker's, and the
     * delivery queue's while queued. */
    atomic_int refs;
    dx_embed *e;
    const dx_module *module;
    dx_example *inputs;
    char *lm_name;
    char *rollout_id;
    dx_call_opts opts;
    int64_t deadline_ms;
    dx_embed_cb cb;
    void *ud;
    bool direct; /* deliver on the runtime thread even with a loop */

    /* The worker's result, written before `done` is set; read by the
     * watcher only after the worker's exit, so never concurrently. */
    atomic_bool done;
    int w_rc;
    dx_prediction *w_pred;
    dx_diag w_diag;

    /* Under e->mu. */
    dx_pid watcher;
    bool cancel_requested;
    bool finished;  /* the result below is fixed */
    bool delivered; /* the callback has returned */
    dx_embed_call *prev, *next;
    dx_embed_call *qnext;

    /* The result, written once by finish(); handed to the callback. */
    int rc;
    dx_prediction *pred;
    dx_diag diag;
};

/* The embedding whose callback the current thread is running, so wait and
 * shutdown can refuse to deadlock on themselves. */
static _Thread_local dx_embed *in_callback;

static bool in_process(void)
{
    return !dx_pid_is_none(dx_self());
}

/* ---- references ----------------------------------------------------------- */

static void embed_unref(dx_embed *e)
{
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_cond_destroy(&e->cond);
    pthread_mutex_destroy(&e->mu);
    dx_free(e->apps);
    dx_free(e);
}

static void call_ref(dx_embed_call *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

static void call_unref(dx_embed_call *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    dx_example_free(c->inputs);
    dx_free(c->lm_name);
    dx_free(c->rollout_id);
    dx_prediction_free(c->w_pred);
    dx_prediction_free(c->pred);
    dx_embed *e = c->e;
    dx_free(c);
    if (e)
        embed_unref(e);
}

static void call_unref_v(void *arg)
{
    call_unref(arg);
}

/* ---- time ----------------------------------------------------------------- */

/* Wait on e->cond until the monotonic deadline (INT64_MAX: no deadline).
 * Called with e->mu held. */
static void cond_wait_until(dx_embed *e, int64_t deadline_ms)
{
    if (deadline_ms == INT64_MAX) {
        pthread_cond_wait(&e->cond, &e->mu);
        return;
    }
    struct timespec ts = {.tv_sec = (time_t)(deadline_ms / 1000),
                          .tv_nsec = (long)(deadline_ms % 1000) * 1000000L};
    pthread_cond_timedwait(&e->cond, &e->mu, &ts);
}

/* The clock cond_wait_until's deadlines are on (CLOCK_MONOTONIC, as the
 * condition variable's). */
static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t deadline_after(int64_t ms)
{
    if (ms < 0)
        return INT64_MAX;
    int64_t now = mono_ms();
    return ms > INT64_MAX - now ? INT64_MAX : now + ms;
}

/* ---- delivery ------------------------------------------------------------- */

static void unlink_call(dx_embed *e, dx_embed_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        e->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Run the callback, then count the call as done. */
static void deliver(dx_embed_call *c)
{
    dx_embed *e = c->e;
    dx_embed *outer = in_callback;
    in_callback = e;
    dx_prediction *pred = c->pred;
    c->pred = NULL;
    c->cb(c, c->rc, pred, &c->diag, c->ud);
    in_callback = outer;

    pthread_mutex_lock(&e->mu);
    c->delivered = true;
    unlink_call(e, c);
    e->in_flight--;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->mu);
}

/* Deliver everything queued for the loop. Loop thread, e->mu not held. */
static void deliver_queued(dx_embed *e)
{
    pthread_mutex_lock(&e->mu);
    dx_embed_call *list = e->q_head;
    e->q_head = e->q_tail = NULL;
    pthread_mutex_unlock(&e->mu);
    while (list) {
        dx_embed_call *c = list;
        list = c->qnext;
        c->qnext = NULL;
        deliver(c);
        call_unref(c); /* the queue's */
    }
}

static void on_async(uv_async_t *h)
{
    deliver_queued(h->data);
}

static void free_async(uv_handle_t *h)
{
    dx_free(h);
}

/* Fix the call's result (the first time only; later results are dropped)
 * and hand it to the callback: queued for the attached loop, or run here.
 * Takes pred. */
static void finish(dx_embed_call *c, int rc, dx_prediction *pred,
                   const dx_diag *diag)
{
    dx_embed *e = c->e;
    pthread_mutex_lock(&e->mu);
    if (c->finished) {
        pthread_mutex_unlock(&e->mu);
        dx_prediction_free(pred);
        return;
    }
    c->finished = true;
    c->rc = rc;
    c->pred = pred;
    c->diag = *diag;
    if (e->async && !c->direct) {
        call_ref(c);
        if (e->q_tail)
            e->q_tail->qnext = c;
        else
            e->q_head = c;
        e->q_tail = c;
        /* Under the lock: shutdown closes the handle under it, and only
         * after every call was delivered, so the handle is alive here. */
        uv_async_send(e->async);
        pthread_cond_broadcast(&e->cond); /* a shutdown draining inline */
        pthread_mutex_unlock(&e->mu);
        return;
    }
    pthread_mutex_unlock(&e->mu);
    deliver(c);
}

/* ---- the call's processes ------------------------------------------------- */

static void worker_main(void *arg)
{
    dx_embed_call *c = arg;
    dx_set_label("dspex.program");
    dx_call_opts o = c->opts;
    o.lm_name = c->lm_name;
    o.rollout_id = c->rollout_id;
    dx_prediction *pred = NULL;
    /* The run's diagnostic goes straight into the call, read only once
     * done is set: not into this process's frame, which is copied out and
     * back in around each LM call. */
    int rc = dx__run_program(c->module, c->inputs, &o, c->deadline_ms, &pred,
                             NULL, &c->w_diag, NULL);
    c->w_rc = rc;
    c->w_pred = pred;
    atomic_store_explicit(&c->done, true, memory_order_release);
}

enum { ENDED, CANCELLED, TIMED_OUT };

/* OTP's orderly stop reasons: `shutdown` and {shutdown, _}. */
static bool is_shutdown(const dx_term *reason)
{
    if (dx_is_atom(reason, "shutdown"))
        return true;
    return reason && dx_term_type_of(reason) == DX_TERM_TUPLE &&
           dx_term_size(reason) == 2 &&
           dx_is_atom(dx_term_at(reason, 0), "shutdown");
}

static void watcher_main(void *arg)
{
    dx_embed_call *c = arg;
    dx_set_label("dspex.embed.call");
    dx_trap_exit(true);
    const dx_module *m = c->module;
    dx_diag d = {0};

    call_ref(c); /* the worker's, dropped by its arg_free */
    dx_pid w;
    int64_t kill_at = c->deadline_ms + DX_EMBED_DEADLINE_GRACE_MS;
    /* The runtime kills the worker a little after kill_at in any case, for
     * when this process cannot run to do it: the program holds the
     * scheduler the two share in code that never calls the runtime. */
    dx_spawn_opts so = {.link = true,
                        .arg_free = call_unref_v,
                        .kill_after_ms =
                            dx__runtime_kill_after(kill_at - dx_now_ms())};
    int rc = dx_spawn_opt(worker_main, c, &so, &w, NULL);
    if (rc != DX_OK) {
        call_unref(c);
        dx_diag_set(&d, rc, 0, 0, "%s (%s): cannot start the program: %s",
                    m->path, m->type_name, dx_strerror(rc));
        finish(c, rc, NULL, &d);
        return;
    }

    /* Until the worker's exit arrives; a cancel or the deadline kills it
     * first and then waits for that exit, so the worker never outlives
     * this decision and its result fields are quiet afterwards. */
    int why = ENDED;
    dx_term *reason = NULL;
    for (;;) {
        int64_t left = DX_INFINITY;
        if (why == ENDED) {
            left = kill_at - dx_now_ms();
            if (left < 0)
                left = 0;
        }
        dx_msg *msg = NULL;
        int rrc = dx_receive_any(left, &msg);
        if (rrc == DX_ETIMEDOUT) {
            why = TIMED_OUT;
            dx_kill(w);
            continue;
        }
        /* Nothing else can fail here; if it did, ending this process
         * still kills the worker (link) and calls back (watcher_exit). */
        DX_ASSERT(rrc == DX_OK && msg);
        if (msg->tag == DX_TAG_EXIT && dx_pid_eq(msg->from, w)) {
            reason = dx_msg_take_term(msg);
            dx_msg_free(msg);
            /* Killed past kill_at by the runtime, not by this process: a
             * timeout all the same. */
            if (why == ENDED && dx__killed_past(reason, kill_at, 0))
                why = TIMED_OUT;
            break;
        }
        if (msg->tag == TAG_CANCEL && why == ENDED) {
            why = CANCELLED;
            dx_kill(w);
        }
        dx_msg_free(msg);
    }

    if (atomic_load_explicit(&c->done, memory_order_acquire)) {
        dx_prediction *pred = c->w_pred;
        c->w_pred = NULL;
        d = c->w_diag;
        if (c->w_rc != DX_OK && d.code == 0)
            dx_diag_set(&d, c->w_rc, 0, 0, "%s: %s", m->path,
                        dx_strerror(c->w_rc));
        finish(c, c->w_rc, pred, &d);
    } else if (why == CANCELLED) {
        dx_diag_set(&d, DX_ECANCELED, 0, 0, "%s (%s): the call was cancelled",
                    m->path, m->type_name);
        finish(c, DX_ECANCELED, NULL, &d);
    } else if (why == TIMED_OUT) {
        dx_diag_set(&d, DX_ETIMEDOUT, 0, 0,
                    "%s (%s): no result within %" PRId64 " ms", m->path,
                    m->type_name, c->opts.timeout_ms);
        finish(c, DX_ETIMEDOUT, NULL, &d);
    } else if (is_shutdown(reason)) {
        /* Not a crash: the worker was stopped from outside in order — the
         * runtime stopping under the call, which may reach the worker
         * before this process. */
        dx_diag_set(&d, DX_ECANCELED, 0, 0,
                    "%s (%s): the program was shut down before it finished "
                    "(the runtime stopped)",
                    m->path, m->type_name);
        finish(c, DX_ECANCELED, NULL, &d);
    } else {
        char text[256] = "unknown";
        if (reason)
            dx_term_format(reason, text, sizeof text);
        dx_diag_set(&d, DX_EDOWN, 0, 0,
                    "%s (%s): the program's process died: %s", m->path,
                    m->type_name, text);
        finish(c, DX_EDOWN, NULL, &d);
    }
    dx_term_free(reason);
}

/* The watcher's arg_free: it ran to the end (finish already happened, so
 * this one is dropped) or was killed (the runtime stopping under the
 * call), which still owes the callback its one run. */
static void watcher_exit(void *arg)
{
    dx_embed_call *c = arg;
    dx_diag d = {0};
    dx_diag_set(&d, DX_ECANCELED, 0, 0,
                "%s (%s): the runtime stopped before the call finished",
                c->module->path, c->module->type_name);
    finish(c, DX_ECANCELED, NULL, &d);
    call_unref(c);
}

/* ---- the embedding -------------------------------------------------------- */

int dx_embed_start(const dx_embed_opts *opts, dx_embed **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    if (in_process())
        return DX_ESTATE;
    dx_embed *e = dx_calloc(1, sizeof *e);
    if (!e)
        return DX_ENOMEM;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) {
        dx_free(e);
        return DX_ESYS;
    }
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int crc = pthread_cond_init(&e->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (crc != 0) {
        dx_free(e);
        return DX_ESYS;
    }
    pthread_mutex_init(&e->mu, NULL);
    atomic_init(&e->refs, 1);
    e->max_calls =
        opts && opts->max_calls ? opts->max_calls : DX_EMBED_DEFAULT_MAX_CALLS;
    if (!dx_runtime_running()) {
        int rc = dx_runtime_start(opts ? opts->runtime : NULL);
        if (rc == DX_OK) {
            e->owns_runtime = true;
        } else if (rc != DX_ESTATE) { /* ESTATE: started meanwhile */
            embed_unref(e);
            return rc;
        }
    }
    *out = e;
    return DX_OK;
}

int dx_embed_attach_loop(dx_embed *e, struct uv_loop_s *loop)
{
    if (!e || !loop)
        return DX_EINVAL;
    if (in_process())
        return DX_ESTATE;
    uv_async_t *a = dx_malloc(sizeof *a);
    if (!a)
        return DX_ENOMEM;
    int rc = DX_OK;
    pthread_mutex_lock(&e->mu);
    if (e->closing)
        rc = DX_ESTATE;
    else if (e->has_loop)
        rc = DX_EEXIST;
    else if (uv_async_init(loop, a, on_async) != 0)
        rc = DX_ESYS;
    if (rc == DX_OK) {
        a->data = e;
        e->async = a;
        e->has_loop = true;
        e->loop_thread = pthread_self();
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != DX_OK)
        dx_free(a);
    return rc;
}

int dx_embed_app_start(dx_embed *e, const dx_sup_spec *root, dx_pid *root_out,
                       dx_term **error)
{
    if (root_out)
        *root_out = DX_NOPID;
    if (!e || !root)
        return DX_EINVAL;
    pthread_mutex_lock(&e->mu);
    bool closing = e->closing;
    pthread_mutex_unlock(&e->mu);
    if (closing)
        return DX_ESTATE;
    dx_app *app = NULL;
    int rc = dx_app_start(root, &app, error);
    if (rc != DX_OK)
        return rc;
    dx_pid root_pid = dx_app_root(app);
    pthread_mutex_lock(&e->mu);
    /* A shutdown that began meanwhile has not reached its app stops yet
     * (it drains first), but it read `closing` before us: refuse, so no
     * tree is left behind. */
    if (e->closing) {
        rc = DX_ESTATE;
    } else if (e->n_apps == e->cap_apps) {
        size_t cap = e->cap_apps ? e->cap_apps * 2 : 4;
        dx_app **v = dx_realloc(e->apps, cap * sizeof *v);
        if (v) {
            e->apps = v;
            e->cap_apps = cap;
        } else {
            rc = DX_ENOMEM;
        }
    }
    if (rc == DX_OK)
        e->apps[e->n_apps++] = app;
    pthread_mutex_unlock(&e->mu);
    if (rc != DX_OK) {
        dx_app_stop(app, NULL);
        return rc;
    }
    if (root_out)
        *root_out = root_pid;
    return DX_OK;
}

size_t dx_embed_in_flight(dx_embed *e)
{
    if (!e)
        return 0;
    pthread_mutex_lock(&e->mu);
    size_t n = e->in_flight;
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* ---- calls ---------------------------------------------------------------- */

static int start_call(dx_embed *e, const dx_module *m, const dx_example *in,
                      const dx_call_opts *opts, dx_embed_cb cb, void *ud,
                      bool direct, dx_embed_call **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!e || !m || !in || !cb)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_embed_call: NULL embedding, module, inputs or "
                           "callback");
    if (!dx_runtime_running())
        return dx_diag_set(diag, DX_ESTATE, 0, 0,
                           "dx_embed_call: the runtime is not running");
    dx_embed_call *c = dx_calloc(1, sizeof *c);
    if (!c)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    /* The watcher's, this function's until it returns, the caller's. */
    atomic_init(&c->refs, out ? 3 : 2);
    atomic_init(&c->done, false);
    c->module = m;
    c->opts = opts ? *opts : (dx_call_opts){.lm = DX_NOPID};
    if (c->opts.timeout_ms <= 0)
        c->opts.timeout_ms = DX__DEFAULT_CALL_TIMEOUT_MS;
    /* "Forever" as a large timeout must not overflow the deadline sums. */
    if (c->opts.timeout_ms > INT64_MAX / 4)
        c->opts.timeout_ms = INT64_MAX / 4;
    c->opts.trace = false;
    c->deadline_ms = dx_now_ms() + c->opts.timeout_ms;
    c->cb = cb;
    c->ud = ud;
    c->direct = direct;
    c->inputs = dx_example_copy(in);
    c->lm_name = c->opts.lm_name ? dx_strdup(c->opts.lm_name) : NULL;
    c->rollout_id = c->opts.rollout_id ? dx_strdup(c->opts.rollout_id) : NULL;
    if (!c->inputs || (c->opts.lm_name && !c->lm_name) ||
        (c->opts.rollout_id && !c->rollout_id)) {
        atomic_store(&c->refs, 1);
        call_unref(c);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }

    int rc = DX_OK;
    pthread_mutex_lock(&e->mu);
    if (e->closing)
        rc = dx_diag_set(diag, DX_ESTATE, 0, 0,
                         "dx_embed_call: the embedding is shutting down");
    else if (e->in_flight >= e->max_calls)
        rc = dx_diag_set(diag, DX_ELIMIT, 0, 0,
                         "dx_embed_call: %zu calls in flight (the limit)",
                         e->in_flight);
    if (rc == DX_OK) {
        e->in_flight++;
        c->next = e->calls;
        if (e->calls)
            e->calls->prev = c;
        e->calls = c;
        c->e = e;
        atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != DX_OK) {
        atomic_store(&c->refs, 1);
        call_unref(c);
        return rc;
    }

    dx_pid pid;
    dx_spawn_opts so = {.arg_free = watcher_exit, .label = "dspex.embed.call"};
    rc = dx_spawn_opt(watcher_main, c, &so, &pid, NULL);
    if (rc != DX_OK) {
        pthread_mutex_lock(&e->mu);
        unlink_call(e, c);
        e->in_flight--;
        pthread_cond_broadcast(&e->cond);
        pthread_mutex_unlock(&e->mu);
        atomic_store(&c->refs, 1);
        call_unref(c);
        return dx_diag_set(diag, rc, 0, 0, "dx_embed_call: spawn failed: %s",
                           dx_strerror(rc));
    }
    /* A cancel that came before the pid was known is sent now (see
     * dx_embed_call_cancel: one of the two sides sees the other). */
    pthread_mutex_lock(&e->mu);
    c->watcher = pid;
    bool cancel = c->cancel_requested && !c->finished;
    pthread_mutex_unlock(&e->mu);
    if (cancel)
        dx_send_tag(pid, TAG_CANCEL);
    if (out)
        *out = c;
    call_unref(c); /* this function's */
    return DX_OK;
}

int dx_embed_call_async(dx_embed *e, const dx_module *m,
                        const dx_example *inputs, const dx_call_opts *opts,
                        dx_embed_cb cb, void *ud, dx_embed_call **out)
{
    return start_call(e, m, inputs, opts, cb, ud, false, out, NULL);
}

typedef struct sync_box {
    int rc;
    dx_prediction *pred;
    dx_diag diag;
} sync_box;

static void sync_cb(dx_embed_call *call, int rc, dx_prediction *pred,
                    const dx_diag *diag, void *ud)
{
    (void)call;
    sync_box *b = ud;
    b->rc = rc;
    b->pred = pred;
    b->diag = *diag;
}

int dx_embed_call_sync(dx_embed *e, const dx_module *m,
                       const dx_example *inputs, const dx_call_opts *opts,
                       dx_prediction **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_embed_call_sync: NULL out");
    if (in_process())
        return dx_diag_set(diag, DX_ESTATE, 0, 0,
                           "dx_embed_call_sync: called from a process (use "
                           "dx_module_call there)");
    /* Heap, not this stack: the callback writes it from a runtime thread
     * and the box must stay put whatever this thread does meanwhile. */
    sync_box *b = dx_calloc(1, sizeof *b);
    if (!b)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    dx_embed_call *c = NULL;
    int rc = start_call(e, m, inputs, opts, sync_cb, b, true, &c, diag);
    if (rc != DX_OK) {
        dx_free(b);
        return rc;
    }
    dx_embed_call_wait(c, DX_INFINITY);
    dx_embed_call_release(c);
    rc = b->rc;
    if (rc == DX_OK)
        *out = b->pred;
    else if (diag)
        *diag = b->diag;
    dx_free(b);
    return rc;
}

int dx_embed_call_cancel(dx_embed_call *c)
{
    if (!c)
        return DX_EINVAL;
    dx_embed *e = c->e;
    pthread_mutex_lock(&e->mu);
    if (c->finished) {
        pthread_mutex_unlock(&e->mu);
        return DX_ENOENT;
    }
    c->cancel_requested = true;
    dx_pid pid = c->watcher;
    pthread_mutex_unlock(&e->mu);
    if (!dx_pid_is_none(pid))
        dx_send_tag(pid, TAG_CANCEL); /* ENOPROC: it has just ended */
    return DX_OK;
}

int dx_embed_call_wait(dx_embed_call *c, int64_t timeout_ms)
{
    if (!c)
        return DX_EINVAL;
    if (in_process())
        return DX_ESTATE;
    dx_embed *e = c->e;
    int64_t deadline = deadline_after(timeout_ms);
    pthread_mutex_lock(&e->mu);
    if (!c->delivered && !c->direct && e->has_loop &&
        pthread_equal(pthread_self(), e->loop_thread)) {
        pthread_mutex_unlock(&e->mu);
        return DX_EDEADLK;
    }
    while (!c->delivered && mono_ms() < deadline)
        cond_wait_until(e, deadline);
    bool done = c->delivered;
    pthread_mutex_unlock(&e->mu);
    return done ? DX_OK : DX_ETIMEDOUT;
}

void dx_embed_call_release(dx_embed_call *c)
{
    if (c)
        call_unref(c);
}

/* ---- shutdown ------------------------------------------------------------- */

/* Wait (e->mu held) until no call is in flight or the deadline passes,
 * delivering the loop's queue here when this thread is the loop's. */
static void drain_until(dx_embed *e, int64_t deadline, bool on_loop)
{
    for (;;) {
        if (on_loop && e->q_head) {
            pthread_mutex_unlock(&e->mu);
            deliver_queued(e);
            pthread_mutex_lock(&e->mu);
            continue;
        }
        if (e->in_flight == 0 || mono_ms() >= deadline)
            return;
        cond_wait_until(e, deadline);
    }
}

int dx_embed_shutdown(dx_embed *e, int64_t drain_ms, dx_embed_report *report)
{
    if (report)
        *report = (dx_embed_report){0};
    if (!e)
        return DX_OK;
    if (in_process())
        return DX_ESTATE;
    if (in_callback)
        return DX_EDEADLK;
    pthread_mutex_lock(&e->mu);
    bool on_loop = e->has_loop;
    if (e->closing ||
        (on_loop && !pthread_equal(pthread_self(), e->loop_thread))) {
        pthread_mutex_unlock(&e->mu);
        return DX_ESTATE;
    }
    e->closing = true;
    size_t started = e->in_flight;

    drain_until(e, deadline_after(drain_ms), on_loop);

    /* Past the drain deadline: cancel what is left. Sending under the
     * lock is safe — a send never waits for a process — and keeps each
     * watcher pid valid against its call's end. */
    size_t cancelled = e->in_flight;
    for (dx_embed_call *c = e->calls; c; c = c->next) {
        if (c->finished)
            continue;
        c->cancel_requested = true;
        if (!dx_pid_is_none(c->watcher))
            dx_send_tag(c->watcher, TAG_CANCEL);
    }
    drain_until(e, INT64_MAX, on_loop);

    if (e->async) {
        uv_close((uv_handle_t *)e->async, free_async);
        e->async = NULL;
    }
    dx_app **apps = e->apps;
    size_t n_apps = e->n_apps;
    e->apps = NULL;
    e->n_apps = e->cap_apps = 0;
    pthread_mutex_unlock(&e->mu);

    for (size_t i = n_apps; i-- > 0;)
        dx_app_stop(apps[i], NULL);
    dx_free(apps);
    if (e->owns_runtime)
        dx_runtime_stop();
    if (report) {
        report->drained = started - cancelled;
        report->cancelled = cancelled;
        report->apps = n_apps;
    }
    embed_unref(e);
    return DX_OK;
}
