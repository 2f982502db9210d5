/*
 * dist_task.c — run a worker's shard in a process of its own and drop it
 * on the coordinator's word (dist_task_int.h). The shard's process is
 * stopped, not killed: killing it would end its evaluation's examples
 * only as each next yields, while the stop message ends them and waits.
 * (Should the worker's own process be killed, the shard's is killed with
 * it; the examples' holds on the task keep what they read until they have
 * ended.)
 */
#include "dist_task_int.h"

#include "dspex/alloc.h"
#include "eval_int.h"

bool dx__task_set_opts(dx__task *t, const dx_eval_opts *opts)
{
    t->opts = opts ? *opts : (dx_eval_opts){.concurrency = 0};
    /* A shard is a sub-dataset: rows handed over or resumed by the whole
     * dataset's index do not fit it, and the coordinator gathers them. */
    t->opts.on_row = NULL;
    t->opts.on_row_ud = NULL;
    t->opts.resume = NULL;
    const dx_call_opts *call = &t->opts.call;
    t->lm_name = call->lm_name ? dx_strdup(call->lm_name) : NULL;
    t->rollout_id = call->rollout_id ? dx_strdup(call->rollout_id) : NULL;
    if ((call->lm_name && !t->lm_name) ||
        (call->rollout_id && !t->rollout_id)) {
        dx__task_clear_opts(t);
        return false;
    }
    t->opts.call.lm_name = t->lm_name;
    t->opts.call.rollout_id = t->rollout_id;
    return true;
}

void dx__task_clear_opts(dx__task *t)
{
    dx_free(t->lm_name);
    dx_free(t->rollout_id);
    t->lm_name = t->rollout_id = NULL;
}

void dx__task_unref(dx__task *t)
{
    if (t != NULL &&
        atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        t->free_fn(t);
}

static void task_hold(void *arg)
{
    dx__task *t = arg;
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

static void task_release(void *arg)
{
    dx__task_unref(arg);
}

dx__eval_keep dx__task_keep(dx__task *t)
{
    return (dx__eval_keep){.hold = task_hold, .release = task_release, .ud = t};
}

static void task_arg_free(void *arg)
{
    dx__task_unref(arg);
}

static void task_proc(void *arg)
{
    dx__task *t = arg;
    dx_set_label("dspex.dist.shard");
    t->run(t);
    atomic_store_explicit(&t->done, true, memory_order_release);
}

/* The worker's process was killed while the shard ran: so is the shard
 * (a tie's callback runs outside any process and cannot send it the
 * stop). */
static void owner_killed(void *arg)
{
    dx__task *t = arg;
    dx_kill(t->pid);
    dx__task_unref(t);
}

typedef struct task_wait {
    dx_ref mon;
    bool (*is_abort)(const dx_msg *m, void *ud);
    void *ud;
} task_wait;

static bool is_news(const dx_msg *m, void *arg)
{
    const task_wait *w = arg;
    if (m->tag == DX_TAG_DOWN)
        return dx_ref_eq(m->ref, w->mon);
    return w->is_abort(m, w->ud);
}

int dx__task_run_stoppable(dx__task *t,
                           bool (*is_abort)(const dx_msg *m, void *ud),
                           void *ud)
{
    atomic_init(&t->refs, 2);
    atomic_init(&t->done, false);
    task_wait w = {.is_abort = is_abort, .ud = ud};
    dx_spawn_opts so = {.monitor = true, .arg_free = task_arg_free};
    int rc = dx_spawn_opt(task_proc, t, &so, &t->pid, &w.mon);
    if (rc != DX_OK) {
        atomic_store(&t->refs, 1);
        return rc;
    }
    dx_ptie *tie = dx_ptie_new(t, owner_killed);
    dx_match match = {.pred = is_news, .ud = &w};
    bool aborted = false;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive(&match, DX_INFINITY, &m) != DX_OK || !m)
            continue;
        bool down = m->tag == DX_TAG_DOWN;
        dx_msg_free(m);
        if (down)
            break;
        if (!aborted) {
            aborted = true;
            dx_send_tag(t->pid, DX__TAG_EVAL_STOP); /* its DOWN ends the wait */
        }
    }
    dx_ptie_cut(tie);
    if (aborted)
        return DX_ECANCELED;
    return atomic_load_explicit(&t->done, memory_order_acquire) ? DX_OK
                                                                : DX_EDOWN;
}
