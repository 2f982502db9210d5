/*
 * dist_eval.c — distributed Evaluate (include/dspex/dist_eval.h): the pull
 * protocol between one coordinator and any number of workers, as terms
 * that cross nodes:
 *   worker -> coordinator  {dx_eval_next, Worker}
 *   coordinator -> worker  {dx_eval_shard, Id, Start, End} | dx_eval_done
 *   worker -> coordinator  {dx_eval_results, Worker, Id, [{I, Score, Err}]}
 *   coordinator -> worker  {dx_eval_abort, Id}   (the run ended without
 *                          it: cancelled or out of time)
 * The coordinator monitors every worker on first contact; a DOWN puts the
 * worker's unfinished shard back at the front of the queue. A resumed run
 * cuts its shards over the examples an earlier run did not score, so a
 * shard never holds one that is done. A worker runs
 * each shard in a process of its own (dist_task_int.h), so on the abort it
 * stops that shard's evaluation instead of finishing it for nobody.
 */
#include <math.h>
#include <string.h>

#include "dist_task_int.h"
#include "dspex/dist_eval.h"
#include "dspex/node.h"
#include "dspex/server.h"
#include "eval_int.h"

enum { S_QUEUED = 0, S_ASSIGNED, S_DONE };

typedef struct shard {
    size_t start, end;
    int state;
    dx_pid owner;
} shard;

typedef struct worker {
    dx_pid pid;
    dx_ref mon;
    bool waiting; /* asked for a shard we could not give yet */
} worker;

typedef struct coord {
    shard *shards;
    size_t n_shards, n_done_shards;
    size_t *queue; /* shard ids, FIFO with push-front for re-queues */
    size_t q_head, q_len;
    worker *workers;
    size_t n_workers, cap_workers, seen_workers;
    bool started;
    void (*on_result)(size_t index, double score, int error, void *ud);
    void *on_result_ud;
} coord;

/* Cut the examples not yet done into shards of at most ss consecutive
 * ones (a shard never spans a done example, so none runs twice); fill
 * out when not NULL. How many. */
static size_t cut_shards(const bool *done, size_t n, size_t ss, shard *out)
{
    size_t count = 0;
    for (size_t i = 0; i < n;) {
        if (done[i]) {
            i++;
            continue;
        }
        size_t end = i;
        while (end < n && !done[end] && end - i < ss)
            end++;
        if (out)
            out[count] = (shard){.start = i, .end = end, .state = S_QUEUED};
        count++;
        i = end;
    }
    return count;
}

/* Take what an earlier run scored without an error into r. */
static void take_resumed(dx_dist_eval_result *r,
                         const dx_dist_eval_result *prior)
{
    for (size_t i = 0; i < r->n; i++) {
        if (!prior->done || !prior->done[i] ||
            (prior->errors && prior->errors[i] != DX_OK))
            continue;
        r->done[i] = true;
        r->scores[i] = prior->scores ? prior->scores[i] : 0;
        r->errors[i] = DX_OK;
        r->n_done++;
        r->n_resumed++;
    }
}

static void q_push_front(coord *c, size_t id)
{
    c->q_head = (c->q_head + c->n_shards - 1) % c->n_shards;
    c->queue[c->q_head] = id;
    c->q_len++;
}

static bool q_pop(coord *c, size_t *id)
{
    while (c->q_len > 0) {
        size_t s = c->queue[c->q_head];
        c->q_head = (c->q_head + 1) % c->n_shards;
        c->q_len--;
        if (c->shards[s].state == S_QUEUED) {
            *id = s;
            return true;
        }
    }
    return false;
}

static worker *find_worker(coord *c, dx_pid pid)
{
    for (size_t i = 0; i < c->n_workers; i++)
        if (dx_pid_eq(c->workers[i].pid, pid))
            return &c->workers[i];
    return NULL;
}

static void send_shard(coord *c, worker *w, size_t id)
{
    shard *s = &c->shards[id];
    s->state = S_ASSIGNED;
    s->owner = w->pid;
    w->waiting = false;
    dx_send_term(w->pid, DX_TAG_TERM,
                 dx_tuple(4, dx_atom("dx_eval_shard"), dx_int((int64_t)id),
                          dx_int((int64_t)s->start), dx_int((int64_t)s->end)));
}

/* Give every waiting worker a shard, or tell it we are done. */
static void serve(coord *c)
{
    if (!c->started)
        return;
    for (size_t i = 0; i < c->n_workers; i++) {
        worker *w = &c->workers[i];
        if (!w->waiting)
            continue;
        size_t id;
        if (q_pop(c, &id)) {
            send_shard(c, w, id);
        } else if (c->n_done_shards == c->n_shards) {
            w->waiting = false;
            dx_send_term(w->pid, DX_TAG_TERM, dx_atom("dx_eval_done"));
        }
    }
}

static void on_results(coord *c, dx_dist_eval_result *r, const dx_term *t)
{
    int64_t id;
    if (!dx_int_value(dx_term_at(t, 2), &id) || id < 0 ||
        (size_t)id >= c->n_shards)
        return;
    shard *s = &c->shards[id];
    const dx_term *rows = dx_term_at(t, 3);
    for (size_t i = 0; i < dx_term_size(rows); i++) {
        const dx_term *row = dx_term_at(rows, i);
        int64_t idx, err;
        double score;
        if (!dx_int_value(dx_term_at(row, 0), &idx) ||
            !dx_float_value(dx_term_at(row, 1), &score) ||
            !dx_int_value(dx_term_at(row, 2), &err) ||
            idx < (int64_t)s->start || idx >= (int64_t)s->end || r->done[idx])
            continue; /* malformed, or already scored: exactly once */
        r->done[idx] = true;
        r->scores[idx] = score;
        r->errors[idx] = (int)err;
        r->n_done++;
        if (err != DX_OK)
            r->n_errors++;
        if (c->on_result)
            c->on_result((size_t)idx, score, (int)err, c->on_result_ud);
    }
    if (s->state == S_DONE)
        return;
    bool all = true;
    for (size_t i = s->start; i < s->end; i++)
        all = all && r->done[i];
    if (all) {
        s->state = S_DONE;
        c->n_done_shards++;
    } else if (s->state == S_ASSIGNED) {
        /* The worker could not run part of it: hand it out again. */
        s->state = S_QUEUED;
        q_push_front(c, id);
        r->requeued++;
    }
}

static void on_down(coord *c, dx_dist_eval_result *r, dx_ref ref)
{
    for (size_t i = 0; i < c->n_workers; i++) {
        if (!dx_ref_eq(c->workers[i].mon, ref))
            continue;
        dx_pid gone = c->workers[i].pid;
        for (size_t s = 0; s < c->n_shards; s++)
            if (c->shards[s].state == S_ASSIGNED &&
                dx_pid_eq(c->shards[s].owner, gone)) {
                c->shards[s].state = S_QUEUED;
                q_push_front(c, s);
                r->requeued++;
            }
        c->workers[i] = c->workers[--c->n_workers];
        return;
    }
}

static void on_next(coord *c, dx_pid pid, size_t min_workers)
{
    worker *w = find_worker(c, pid);
    if (w == NULL) {
        if (c->n_workers == c->cap_workers) {
            size_t cap = c->cap_workers ? c->cap_workers * 2 : 8;
            worker *nw = dx_realloc(c->workers, cap * sizeof(*nw));
            if (nw == NULL)
                return;
            c->workers = nw;
            c->cap_workers = cap;
        }
        w = &c->workers[c->n_workers++];
        memset(w, 0, sizeof(*w));
        w->pid = pid;
        c->seen_workers++;
        if (dx_monitor(pid, &w->mon) != DX_OK) {
            c->n_workers--;
            return;
        }
    }
    w->waiting = true;
    if (!c->started && c->seen_workers >= min_workers)
        c->started = true;
}

void dx_dist_eval_result_free(dx_dist_eval_result *r)
{
    if (r == NULL)
        return;
    dx_free(r->scores);
    dx_free(r->errors);
    dx_free(r->done);
    dx_free(r);
}

int dx_dist_evaluate(size_t n, const dx_dist_eval_opts *opts,
                     dx_dist_eval_result **out)
{
    *out = NULL;
    if (dx_self().id == 0)
        return DX_ENOTPROC;
    if (n == 0)
        return DX_EINVAL;
    dx_dist_eval_opts o = opts ? *opts : (dx_dist_eval_opts){0};
    size_t ss = o.shard_size ? o.shard_size : 8;
    size_t min_workers = o.min_workers ? o.min_workers : 1;
    int64_t timeout = o.timeout_ms > 0 ? o.timeout_ms : 600000;
    const char *name = o.name ? o.name : "dx_dist_eval";

    if (o.resume && o.resume->n != n)
        return DX_EINVAL;

    dx_dist_eval_result *r = dx_calloc(1, sizeof(*r));
    coord c = {.on_result = o.on_result, .on_result_ud = o.on_result_ud};
    if (r) {
        r->scores = dx_calloc(n, sizeof(double));
        r->errors = dx_calloc(n, sizeof(int));
        r->done = dx_calloc(n, sizeof(bool));
    }
    if (!r || !r->scores || !r->errors || !r->done) {
        dx_dist_eval_result_free(r);
        return DX_ENOMEM;
    }
    r->n = n;
    if (o.resume)
        take_resumed(r, o.resume);
    c.n_shards = cut_shards(r->done, n, ss, NULL);
    /* One slot at least: an evaluation with nothing left to run cuts no
     * shard and finishes at once. */
    c.shards = dx_calloc(c.n_shards ? c.n_shards : 1, sizeof(shard));
    c.queue = dx_calloc(c.n_shards ? c.n_shards : 1, sizeof(size_t));
    if (!c.shards || !c.queue) {
        dx_dist_eval_result_free(r);
        dx_free(c.shards);
        dx_free(c.queue);
        return DX_ENOMEM;
    }
    cut_shards(r->done, n, ss, c.shards);
    r->shards = c.n_shards;
    for (size_t i = 0; i < c.n_shards; i++)
        c.queue[i] = i;
    c.q_len = c.n_shards;
    int rc = dx_register(name, dx_self());
    if (rc != DX_OK) {
        dx_dist_eval_result_free(r);
        dx_free(c.shards);
        dx_free(c.queue);
        return rc;
    }
    int64_t deadline = dx_now_ms() + timeout;
    /* dx_evaluate_cancel_all ends the run too, with what was scored. */
    uint64_t cancel_gen = dx__cancel_generation();
    dx__cancel_watch *watch = dx__cancel_watch_start();
    rc = DX_OK;
    while (c.n_done_shards < c.n_shards) {
        if (dx__cancel_generation() != cancel_gen) {
            rc = DX_ECANCELED;
            break;
        }
        int64_t left = deadline - dx_now_ms();
        if (left <= 0) {
            rc = DX_ETIMEDOUT;
            break;
        }
        dx_msg *m;
        int rrc = dx_receive_any(
            !watch && left > DX__CANCEL_POLL_MS ? DX__CANCEL_POLL_MS : left,
            &m);
        if (rrc == DX_ETIMEDOUT)
            continue; /* the top looks at the count and the deadline */
        if (rrc != DX_OK) {
            rc = DX_ETIMEDOUT;
            break;
        }
        const dx_term *t = m->term;
        const dx_term *h = dx_term_at(t, 0);
        dx_pid pid;
        if (m->tag == DX_TAG_DOWN) {
            on_down(&c, r, m->ref);
        } else if (dx_is_atom(h, "dx_eval_next") &&
                   dx_pid_value(dx_term_at(t, 1), &pid)) {
            on_next(&c, pid, min_workers);
        } else if (dx_is_atom(h, "dx_eval_results") && dx_term_size(t) == 4) {
            on_results(&c, r, t);
        }
        dx_msg_free(m);
        serve(&c);
    }
    /* A run that ended unfinished drops the shards still out. */
    for (size_t i = 0; rc != DX_OK && i < c.n_shards; i++)
        if (c.shards[i].state == S_ASSIGNED)
            dx_send_term(
                c.shards[i].owner, DX_TAG_TERM,
                dx_tuple(2, dx_atom("dx_eval_abort"), dx_int((int64_t)i)));
    /* Every worker gets "done" now, whether it is asking or still busy:
     * a busy one finds it in its mailbox when it asks next, after this
     * coordinator's name is gone. */
    for (size_t i = 0; i < c.n_workers; i++) {
        dx_demonitor(c.workers[i].mon, true);
        dx_send_term(c.workers[i].pid, DX_TAG_TERM, dx_atom("dx_eval_done"));
    }
    dx_unregister(name);
    dx__cancel_watch_stop(watch);
    /* Late "next" requests that raced with the end: answer them. */
    dx_msg *m;
    while (dx_receive_any(0, &m) == DX_OK) {
        dx_pid pid;
        if (dx_is_atom(dx_term_at(m->term, 0), "dx_eval_next") &&
            dx_pid_value(dx_term_at(m->term, 1), &pid))
            dx_send_term(pid, DX_TAG_TERM, dx_atom("dx_eval_done"));
        dx_msg_free(m);
    }
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        if (r->done[i])
            sum += r->scores[i];
    r->score = r->n_done ? round(10000.0 * sum / (double)r->n_done) / 100.0 : 0;
    r->workers = c.seen_workers;
    dx_free(c.shards);
    dx_free(c.queue);
    dx_free(c.workers);
    *out = r;
    return rc;
}

/* One shard's evaluation in its own process (dist_task_int.h). */
typedef struct eval_task {
    dx__task task; /* first */
    const dx_module *m;
    dx_dataset sub; /* the shard's examples, borrowed */
    int64_t start;
    /* out */
    dx_term *rows;
} eval_task;

static void eval_task_free(dx__task *t)
{
    eval_task *e = (eval_task *)t;
    dx_term_free(e->rows);
    dx__task_clear_opts(t);
    dx_free(e);
}

static void eval_task_main(dx__task *t)
{
    eval_task *e = (eval_task *)t;
    dx_eval_result *er = NULL;
    dx_term *rows = dx_nil();
    dx__eval_keep keep = dx__task_keep(t);
    if (dx__evaluate_kept(e->m, &e->sub, &t->opts, &keep, &er, NULL) == DX_OK &&
        er) {
        for (size_t i = 0; i < er->n && rows; i++) {
            const dx_eval_row *row = &er->rows[i];
            dx_list_append(rows,
                           dx_tuple(3, dx_int(e->start + (int64_t)row->index),
                                    dx_float(row->score), dx_int(row->error)));
        }
    }
    dx_eval_result_free(er);
    e->rows = rows;
}

/* The coordinator dropped shard *ud. */
static bool is_abort(const dx_msg *m, void *ud)
{
    const int64_t *want = ud;
    int64_t id;
    return m->tag == DX_TAG_TERM &&
           dx_is_atom(dx_term_at(m->term, 0), "dx_eval_abort") &&
           dx_int_value(dx_term_at(m->term, 1), &id) && id == *want;
}

/* Evaluate examples [start, end) of ds in a process of its own; the rows
 * term, or NULL when the coordinator dropped the shard (*aborted) or the
 * process died or memory ran out. */
static dx_term *eval_shard(const dx_module *m, const dx_dataset *ds,
                           const dx_eval_opts *opts, int64_t id, int64_t start,
                           int64_t end, bool *aborted)
{
    *aborted = false;
    eval_task *e = dx_calloc(1, sizeof *e);
    if (!e)
        return NULL;
    *e = (eval_task){
        .task = {.run = eval_task_main, .free_fn = eval_task_free},
        .m = m,
        .sub = {.items = ds->items + start, .n = (size_t)(end - start)},
        .start = start};
    if (!dx__task_set_opts(&e->task, opts)) {
        dx_free(e);
        return NULL;
    }
    int rc = dx__task_run_stoppable(&e->task, is_abort, &id);
    *aborted = rc == DX_ECANCELED;
    dx_term *rows = NULL;
    if (rc == DX_OK) {
        rows = e->rows;
        e->rows = NULL;
    }
    dx__task_unref(&e->task);
    return rows;
}

int dx_dist_eval_worker(const char *coord_node, const char *name,
                        const dx_module *m, const dx_dataset *ds,
                        const dx_eval_opts *opts, int64_t timeout_ms,
                        dx_dist_eval_shard_fn on_shard, void *ud,
                        size_t *shards_out)
{
    if (shards_out)
        *shards_out = 0;
    if (dx_self().id == 0)
        return DX_ENOTPROC;
    if (coord_node == NULL || m == NULL || ds == NULL)
        return DX_EINVAL;
    dx_pid coord = dx_node_name_pid(coord_node, name ? name : "dx_dist_eval");
    if (coord.id == 0)
        return DX_EINVAL;
    int64_t tmo = timeout_ms > 0 ? timeout_ms : 60000;
    for (;;) {
        dx_send_term(
            coord, DX_TAG_TERM,
            dx_tuple(2, dx_atom("dx_eval_next"), dx_pid_term(dx_self())));
        dx_msg *msg;
        const dx_term *t = NULL;
        for (;;) {
            if (dx_receive_any(tmo, &msg) != DX_OK)
                return DX_ETIMEDOUT;
            t = msg->term;
            if (dx_is_atom(t, "dx_eval_done") ||
                dx_is_atom(dx_term_at(t, 0), "dx_eval_shard"))
                break;
            dx_msg_free(msg);
        }
        if (dx_is_atom(t, "dx_eval_done")) {
            dx_msg_free(msg);
            return DX_OK;
        }
        int64_t id, start, end;
        bool ok = dx_int_value(dx_term_at(t, 1), &id) &&
                  dx_int_value(dx_term_at(t, 2), &start) &&
                  dx_int_value(dx_term_at(t, 3), &end) && start >= 0 &&
                  end >= start && (size_t)end <= ds->n;
        dx_msg_free(msg);
        if (!ok)
            continue;
        if (on_shard)
            on_shard((size_t)start, (size_t)end, ud);
        bool aborted = false;
        dx_term *rows = eval_shard(m, ds, opts, id, start, end, &aborted);
        if (aborted)
            continue; /* dropped: the next ask gets "done" */
        if (rows == NULL)
            rows = dx_nil(); /* its examples come back unscored: requeued */
        dx_send_term(coord, DX_TAG_TERM,
                     dx_tuple(4, dx_atom("dx_eval_results"),
                              dx_pid_term(dx_self()), dx_int(id), rows));
        if (shards_out)
            (*shards_out)++;
    }
}
