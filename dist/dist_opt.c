/*
 * dist_opt.c — distributed optimization (include/dspex/dist_eval.h,
 * dx_dist_tp_*): a candidate evaluator for the teleprompters whose
 * coordinator process outlives single evaluations, and the worker loop.
 * The pull protocol, as terms that cross nodes:
 *   worker -> coordinator  {dx_tp_next, Worker}
 *   coordinator -> worker  {dx_tp_shard, Gen, Id, Cand, State, [Pos], [I]}
 *                          | dx_tp_done
 *   worker -> coordinator  {dx_tp_results, Worker, Gen, Id,
 *                           [{Pos, Score, Err, Msg, Usage}]}
 *   coordinator -> worker  {dx_tp_abort, Gen}   (the evaluation ended
 *                           unfinished: drop the shard under way)
 * State is the candidate's dump_state JSON as a binary, I the examples'
 * indices in the valset, Pos their positions in the evaluation, Msg a
 * binary or `none`, Usage {Calls, Cached, Unpriced, In, Out, CachedTok,
 * Cost}. Gen numbers the evaluations, so a late result of an evaluation
 * that ended (timed out) is never taken for the next one. The optimizer
 * hands an evaluation to the coordinator with dx_call; the coordinator
 * writes the rows into the caller's buffer and replies when all are in.
 *
 * Cancellation (dx_evaluate_cancel_all on the optimizer's node) reaches
 * the coordinator through a cancel watch: it replies DX_ECANCELED at once
 * and tells each worker holding a shard of the evaluation to drop it. A
 * worker runs each shard in a process of its own and waits for it or for
 * that word, so it stops the shard's evaluation (killing the examples and
 * the LM calls under way) instead of finishing it for nobody.
 */
#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <string.h>

#include "dspex/dist_eval.h"
#include "dspex/node.h"
#include "dspex/server.h"
#include "dist_task_int.h"
#include "eval_int.h"
#include "teleprompt_int.h"

enum { S_QUEUED = 0, S_ASSIGNED, S_DONE };
enum { TAG_JOB = 0x64787470, TAG_STOP };

struct dx_dist_tp {
    dx_pid pid;
    char name[64];
    size_t shard_size, min_workers;
    int64_t job_timeout_ms;
    _Atomic size_t jobs, shards, requeued, workers;
};

/* One evaluation, owned by the caller of eval(), who waits in dx_call
 * until the coordinator replies (the coordinator never touches it after
 * replying). */
typedef struct job {
    size_t n_cands, n_idx, val_n;
    char **states;
    const size_t *idx;
    dx_tp_eval_row *rows;
    /* The optimizer's dx_tp_opts.cancel_generation (0: never cancelled). */
    uint64_t cancel_generation;
    int rc;
} job;

typedef struct shard {
    size_t cand, start, end; /* positions [start, end) of candidate cand */
    int state;
    dx_pid owner;
} shard;

typedef struct worker {
    dx_pid pid;
    dx_ref mon;
    bool waiting;
} worker;

typedef struct coord {
    dx_dist_tp *h;
    worker *workers;
    size_t n_workers, cap_workers, seen_workers;
    bool started;
    /* the evaluation under way (cur NULL: none) */
    job *cur;
    dx_from from;
    int64_t gen, deadline;
    shard *shards;
    size_t n_shards, n_done_shards;
    size_t *queue, q_head, q_len;
    bool *done; /* n_cands * n_idx */
    /* Wakes us when dx_evaluate_cancel_all runs (NULL: look every
     * DX__CANCEL_POLL_MS); held while an evaluation is under way. */
    dx__cancel_watch *watch;
} coord;

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

static void requeue(coord *c, size_t id)
{
    c->shards[id].state = S_QUEUED;
    q_push_front(c, id);
    atomic_fetch_add(&c->h->requeued, 1);
}

static void finish_job(coord *c, int rc)
{
    c->cur->rc = rc;
    dx_msg *reply = dx_msg_new(TAG_JOB);
    if (reply)
        dx_reply(c->from, reply);
    if (rc == DX_OK)
        atomic_fetch_add(&c->h->jobs, 1);
    c->cur = NULL;
    dx__cancel_watch_stop(c->watch);
    c->watch = NULL;
    dx_free(c->shards);
    dx_free(c->queue);
    dx_free(c->done);
    c->shards = NULL;
    c->queue = NULL;
    c->done = NULL;
    c->n_shards = c->n_done_shards = c->q_len = c->q_head = 0;
}

static void start_job(coord *c, dx_msg *m)
{
    job *j = m->ptr;
    dx_from from = {m->from, m->ref};
    if (c->cur) {
        /* One evaluation at a time: an optimizer evaluates serially. */
        j->rc = DX_ESTATE;
        dx_msg *reply = dx_msg_new(TAG_JOB);
        if (reply)
            dx_reply(from, reply);
        return;
    }
    size_t ss = c->h->shard_size;
    size_t per = (j->n_idx + ss - 1) / ss;
    size_t n = per * j->n_cands;
    c->shards = dx_calloc(n ? n : 1, sizeof *c->shards);
    c->queue = dx_calloc(n ? n : 1, sizeof *c->queue);
    c->done = dx_calloc((j->n_cands * j->n_idx) > 0 ? j->n_cands * j->n_idx : 1,
                        sizeof *c->done);
    c->cur = j;
    c->from = from;
    c->watch = dx__cancel_watch_start();
    c->gen++;
    c->deadline = dx_now_ms() + c->h->job_timeout_ms;
    if (!c->shards || !c->queue || !c->done) {
        finish_job(c, DX_ENOMEM);
        return;
    }
    for (size_t k = 0; k < j->n_cands; k++)
        for (size_t s = 0; s < per; s++) {
            shard *sh = &c->shards[k * per + s];
            sh->cand = k;
            sh->start = s * ss;
            sh->end = s * ss + ss < j->n_idx ? s * ss + ss : j->n_idx;
            c->queue[k * per + s] = k * per + s;
        }
    c->n_shards = n;
    c->q_len = n;
    atomic_fetch_add(&c->h->shards, n);
    if (n == 0)
        finish_job(c, DX_OK);
}

static worker *find_worker(coord *c, dx_pid pid)
{
    for (size_t i = 0; i < c->n_workers; i++)
        if (dx_pid_eq(c->workers[i].pid, pid))
            return &c->workers[i];
    return NULL;
}

static void on_next(coord *c, dx_pid pid)
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
        w = &c->workers[c->n_workers];
        memset(w, 0, sizeof(*w));
        w->pid = pid;
        if (dx_monitor(pid, &w->mon) != DX_OK) {
            /* Unwatched, its shard could be lost: turn it away. */
            dx_send_term(pid, DX_TAG_TERM, dx_atom("dx_tp_done"));
            return;
        }
        c->n_workers++;
        c->seen_workers++;
        atomic_store(&c->h->workers, c->seen_workers);
    }
    w->waiting = true;
    if (c->seen_workers >= c->h->min_workers)
        c->started = true;
}

static void send_shard(coord *c, worker *w, size_t id)
{
    shard *s = &c->shards[id];
    const job *j = c->cur;
    s->state = S_ASSIGNED;
    s->owner = w->pid;
    w->waiting = false;
    dx_term *pos = dx_nil(), *idx = dx_nil();
    for (size_t p = s->start; p < s->end && pos && idx; p++) {
        dx_list_append(pos, dx_int((int64_t)p));
        dx_list_append(idx, dx_int((int64_t)j->idx[p]));
    }
    const char *st = j->states[s->cand];
    dx_send_term(w->pid, DX_TAG_TERM,
                 dx_tuplev(8, (dx_term *[]){dx_atom("dx_tp_shard"),
                                            dx_int(c->gen), dx_int((int64_t)id),
                                            dx_int((int64_t)s->cand),
                                            dx_binary(st, strlen(st)), pos, idx,
                                            dx_int((int64_t)j->val_n)}));
}

static void serve(coord *c)
{
    if (!c->cur || !c->started)
        return;
    for (size_t i = 0; i < c->n_workers; i++) {
        size_t id;
        if (c->workers[i].waiting && q_pop(c, &id))
            send_shard(c, &c->workers[i], id);
    }
}

static bool row_usage(const dx_term *u, dx_usage_acc *acc)
{
    int64_t v[6];
    for (size_t i = 0; i < 6; i++)
        if (!dx_int_value(dx_term_at(u, i), &v[i]))
            return false;
    double cost;
    if (!dx_float_value(dx_term_at(u, 6), &cost))
        return false;
    acc->calls = v[0];
    acc->cached_calls = v[1];
    acc->unpriced_calls = v[2];
    acc->input_tokens = v[3];
    acc->output_tokens = v[4];
    acc->cached_tokens = v[5];
    acc->cost_usd = cost;
    return true;
}

static void on_results(coord *c, const dx_term *t)
{
    int64_t gen, id;
    if (!c->cur || !dx_int_value(dx_term_at(t, 2), &gen) || gen != c->gen ||
        !dx_int_value(dx_term_at(t, 3), &id) || id < 0 ||
        (size_t)id >= c->n_shards)
        return; /* an evaluation that is over, or malformed */
    shard *s = &c->shards[id];
    job *j = c->cur;
    const dx_term *rows = dx_term_at(t, 4);
    for (size_t i = 0; i < dx_term_size(rows); i++) {
        const dx_term *row = dx_term_at(rows, i);
        int64_t pos, err;
        double score;
        if (!dx_int_value(dx_term_at(row, 0), &pos) ||
            !dx_float_value(dx_term_at(row, 1), &score) ||
            !dx_int_value(dx_term_at(row, 2), &err) ||
            pos < (int64_t)s->start || pos >= (int64_t)s->end)
            continue;
        size_t k = s->cand * j->n_idx + (size_t)pos;
        if (c->done[k])
            continue; /* already scored: exactly once */
        dx_tp_eval_row *r = &j->rows[k];
        dx_usage_acc_init(&r->usage, "candidate");
        if (!row_usage(dx_term_at(row, 4), &r->usage))
            continue;
        size_t len = 0;
        const char *msg = dx_binary_data(dx_term_at(row, 3), &len);
        if (msg) {
            r->error_msg = dx_malloc(len + 1);
            if (!r->error_msg)
                continue;
            memcpy(r->error_msg, msg, len);
            r->error_msg[len] = '\0';
        }
        r->score = score;
        r->error = (int)err;
        r->done = true;
        c->done[k] = true;
    }
    if (s->state == S_DONE)
        return;
    bool all = true;
    for (size_t p = s->start; p < s->end; p++)
        all = all && c->done[s->cand * j->n_idx + p];
    if (all) {
        s->state = S_DONE;
        if (++c->n_done_shards == c->n_shards)
            finish_job(c, DX_OK);
    } else if (s->state == S_ASSIGNED) {
        requeue(c, (size_t)id); /* the worker could not run all of it */
    }
}

static bool job_cancelled(const job *j)
{
    return j->cancel_generation != 0 &&
           dx__cancel_generation() + 1 != j->cancel_generation;
}

/* The evaluation under way ends unfinished (cancelled, out of time, the
 * coordinator stopping): the workers holding its shards drop them, and the
 * optimizer hears rc now. */
static void abandon_job(coord *c, int rc)
{
    for (size_t s = 0; s < c->n_shards; s++)
        if (c->shards[s].state == S_ASSIGNED)
            dx_send_term(c->shards[s].owner, DX_TAG_TERM,
                         dx_tuple(2, dx_atom("dx_tp_abort"), dx_int(c->gen)));
    finish_job(c, rc);
}

static void on_down(coord *c, dx_ref ref)
{
    for (size_t i = 0; i < c->n_workers; i++) {
        if (!dx_ref_eq(c->workers[i].mon, ref))
            continue;
        dx_pid gone = c->workers[i].pid;
        for (size_t s = 0; c->cur && s < c->n_shards; s++)
            if (c->shards[s].state == S_ASSIGNED &&
                dx_pid_eq(c->shards[s].owner, gone))
                requeue(c, s);
        c->workers[i] = c->workers[--c->n_workers];
        return;
    }
}

static void coordinator(void *arg)
{
    coord c = {.h = arg};
    for (;;) {
        int64_t tmo = DX_INFINITY;
        if (c.cur && job_cancelled(c.cur)) {
            abandon_job(&c, DX_ECANCELED);
            continue;
        }
        if (c.cur) {
            tmo = c.deadline - dx_now_ms();
            if (!c.watch && tmo > DX__CANCEL_POLL_MS)
                tmo = DX__CANCEL_POLL_MS;
            if (tmo <= 0) {
                abandon_job(&c, DX_ETIMEDOUT);
                continue;
            }
        }
        dx_msg *m;
        int rc = dx_receive_any(tmo, &m);
        if (rc == DX_ETIMEDOUT)
            continue;
        if (rc != DX_OK)
            break;
        if (m->tag == TAG_STOP) {
            dx_msg_free(m);
            break;
        }
        const dx_term *t = m->term;
        const dx_term *hd = dx_term_at(t, 0);
        dx_pid pid;
        if (m->tag == TAG_JOB && m->kind == DX_MSG_CALL && m->ptr) {
            start_job(&c, m);
        } else if (m->tag == DX_TAG_DOWN) {
            on_down(&c, m->ref);
        } else if (dx_is_atom(hd, "dx_tp_next") &&
                   dx_pid_value(dx_term_at(t, 1), &pid)) {
            on_next(&c, pid);
        } else if (dx_is_atom(hd, "dx_tp_results") && dx_term_size(t) == 5) {
            on_results(&c, t);
        }
        dx_msg_free(m);
        serve(&c);
    }
    if (c.cur)
        abandon_job(&c, DX_ECANCELED); /* workers drop shards, hear done */
    for (size_t i = 0; i < c.n_workers; i++) {
        dx_demonitor(c.workers[i].mon, true);
        dx_send_term(c.workers[i].pid, DX_TAG_TERM, dx_atom("dx_tp_done"));
    }
    dx_unregister(c.h->name);
    /* Requests that raced with the end: answer them too. */
    dx_msg *m;
    while (dx_receive_any(0, &m) == DX_OK) {
        dx_pid pid;
        if (dx_is_atom(dx_term_at(m->term, 0), "dx_tp_next") &&
            dx_pid_value(dx_term_at(m->term, 1), &pid))
            dx_send_term(pid, DX_TAG_TERM, dx_atom("dx_tp_done"));
        dx_msg_free(m);
    }
    dx_free(c.workers);
}

int dx_dist_tp_start(const dx_dist_tp_opts *opts, dx_dist_tp **out)
{
    *out = NULL;
    dx_dist_tp_opts o = opts ? *opts : (dx_dist_tp_opts){0};
    dx_dist_tp *h = dx_calloc(1, sizeof *h);
    if (!h)
        return DX_ENOMEM;
    snprintf(h->name, sizeof h->name, "%s", o.name ? o.name : "dx_dist_tp");
    h->shard_size = o.shard_size ? o.shard_size : 8;
    h->min_workers = o.min_workers ? o.min_workers : 1;
    h->job_timeout_ms = o.job_timeout_ms > 0 ? o.job_timeout_ms : 600000;
    int rc = dx_spawn_opt(
        coordinator, h,
        &(dx_spawn_opts){.name = h->name, .label = "dist_tp_coordinator"},
        &h->pid, NULL);
    if (rc != DX_OK) {
        dx_free(h);
        return rc;
    }
    *out = h;
    return DX_OK;
}

static int eval(void *ud, const dx_module *const *cands, size_t n_cands,
                const dx_dataset *val, const size_t *idx, size_t n_idx,
                const dx_tp_opts *opts, dx_tp_eval_row *rows, dx_diag *diag)
{
    dx_dist_tp *h = ud;
    if (dx_self().id == 0)
        return dx_diag_set(diag, DX_ENOTPROC, 0, 0,
                           "distributed evaluation: the optimizer must run "
                           "in a process");
    job *j = dx_calloc(1, sizeof *j);
    char **states = dx_calloc(n_cands ? n_cands : 1, sizeof *states);
    int rc = j && states ? DX_OK : DX_ENOMEM;
    for (size_t k = 0; rc == DX_OK && k < n_cands; k++) {
        cJSON *st = dx_module_dump_state(cands[k]);
        states[k] = st ? cJSON_PrintUnformatted(st) : NULL;
        cJSON_Delete(st);
        if (!states[k])
            rc = DX_ENOMEM;
    }
    if (rc == DX_OK) {
        *j = (job){.n_cands = n_cands,
                   .n_idx = n_idx,
                   .val_n = val->n,
                   .states = states,
                   .idx = idx,
                   .rows = rows,
                   .cancel_generation = opts ? opts->cancel_generation : 0};
        dx_msg *req = dx_msg_new(TAG_JOB), *reply = NULL;
        if (!req) {
            rc = DX_ENOMEM;
        } else {
            req->ptr = j;
            /* No timeout here: the coordinator ends the job itself (it
             * writes into j until it replies, so the caller must not
             * leave first); DX_EDOWN if it dies. */
            rc = dx_call(h->pid, req, DX_INFINITY, &reply);
            dx_msg_free(reply);
            if (rc == DX_OK)
                rc = j->rc;
        }
    }
    for (size_t k = 0; states && k < n_cands; k++)
        cJSON_free(states[k]);
    dx_free(states);
    dx_free(j);
    if (rc == DX_ECANCELED && opts)
        return dx__tp_check_cancel(opts, diag);
    if (rc != DX_OK)
        return dx_diag_set(diag, rc, 0, 0, "distributed evaluation: %s",
                           dx_strerror(rc));
    return DX_OK;
}

dx_tp_evaluator dx_dist_tp_evaluator(dx_dist_tp *h)
{
    return (dx_tp_evaluator){.fn = eval, .ud = h};
}

void dx_dist_tp_get_stats(const dx_dist_tp *h, dx_dist_tp_stats *out)
{
    dx_dist_tp *m = (dx_dist_tp *)h;
    *out = (dx_dist_tp_stats){.jobs = atomic_load(&m->jobs),
                              .shards = atomic_load(&m->shards),
                              .requeued = atomic_load(&m->requeued),
                              .workers = atomic_load(&m->workers)};
}

int dx_dist_tp_stop(dx_dist_tp *h)
{
    if (h == NULL)
        return DX_OK;
    dx_ref mon = DX_NOREF;
    bool in_proc = dx_self().id != 0;
    if (in_proc && dx_monitor(h->pid, &mon) != DX_OK)
        in_proc = false;
    dx_send_tag(h->pid, TAG_STOP);
    if (in_proc) {
        dx_msg *m;
        for (;;) {
            if (dx_receive_tag(DX_TAG_DOWN, DX_INFINITY, &m) != DX_OK)
                break;
            bool ours = dx_ref_eq(m->ref, mon);
            dx_msg_free(m);
            if (ours)
                break;
        }
    } else {
        dx_wait_exit(h->pid, DX_INFINITY, NULL);
    }
    dx_free(h);
    return DX_OK;
}

/* ---- the worker ----------------------------------------------------------- */

static dx_term *usage_term(const dx_usage_acc *u)
{
    return dx_tuple(7, dx_int(u->calls), dx_int(u->cached_calls),
                    dx_int(u->unpriced_calls), dx_int(u->input_tokens),
                    dx_int(u->output_tokens), dx_int(u->cached_tokens),
                    dx_float(u->cost_usd));
}

/* A shard's evaluation (dist_task_int.h): the shard message, the worker's
 * program and valset, and the rows. The candidate program and the shard's
 * list of examples are the task's too, so examples still ending after the
 * task's process was killed find them (dx__task_keep). */
typedef struct shard_run {
    dx__task task; /* first */
    dx_msg *shard; /* the dx_tp_shard message */
    const dx_module *base;
    const dx_dataset *val;
    dx_module *prog; /* base with the shard's state loaded */
    dx_dataset sub;  /* the shard's examples, borrowed from val */
    /* out */
    int rc;
    dx_term *rows;
} shard_run;

static void shard_run_free(dx__task *t)
{
    shard_run *r = (shard_run *)t;
    dx_msg_free(r->shard);
    dx_term_free(r->rows);
    dx_module_free(r->prog);
    dx_free(r->sub.items);
    dx__task_clear_opts(t);
    dx_free(r);
}

/* Evaluate the shard in r->shard; r->rows the rows term. DX_EINVAL when
 * the shard does not fit this worker's program or valset. */
static int run_shard(shard_run *r)
{
    const dx_term *t = r->shard->term;
    size_t len = 0;
    const char *st = dx_binary_data(dx_term_at(t, 4), &len);
    const dx_term *pos = dx_term_at(t, 5), *idx = dx_term_at(t, 6);
    int64_t val_n;
    size_t n = dx_term_size(idx);
    if (!st || dx_term_size(pos) != n ||
        !dx_int_value(dx_term_at(t, 7), &val_n) || (size_t)val_n != r->val->n)
        return DX_EINVAL;
    cJSON *state = cJSON_ParseWithLength(st, len);
    r->prog = dx_module_reset_copy(r->base);
    r->sub.items = dx_calloc(n ? n : 1, sizeof *r->sub.items);
    int rc = state && r->prog && r->sub.items ? DX_OK : DX_ENOMEM;
    if (rc == DX_OK && dx_module_load_state(r->prog, state, NULL) != DX_OK)
        rc = DX_EINVAL;
    cJSON_Delete(state);
    for (size_t i = 0; rc == DX_OK && i < n; i++) {
        int64_t k;
        if (!dx_int_value(dx_term_at(idx, i), &k) || k < 0 ||
            (size_t)k >= r->val->n)
            rc = DX_EINVAL;
        else
            r->sub.items[i] = r->val->items[k];
    }
    if (rc != DX_OK)
        return rc;
    r->sub.n = n;
    dx_eval_result *er = NULL;
    dx__eval_keep keep = dx__task_keep(&r->task);
    rc = dx__evaluate_kept(r->prog, &r->sub, &r->task.opts, &keep, &er, NULL);
    dx_term *rows = rc == DX_OK ? dx_nil() : NULL;
    for (size_t i = 0; rows && er && i < er->n; i++) {
        const dx_eval_row *row = &er->rows[i];
        int64_t p;
        if (!row->done || !dx_int_value(dx_term_at(pos, i), &p))
            continue;
        dx_term *msg =
            row->error_msg ? dx_str(row->error_msg) : dx_atom("none");
        dx_list_append(rows, dx_tuple(5, dx_int(p), dx_float(row->score),
                                      dx_int(row->error), msg,
                                      usage_term(&row->usage)));
    }
    if (rc == DX_OK && !rows)
        rc = DX_ENOMEM;
    dx_eval_result_free(er);
    r->rows = rows;
    return rc;
}

static void shard_run_main(dx__task *t)
{
    shard_run *r = (shard_run *)t;
    r->rc = run_shard(r);
}

/* The coordinator dropped this evaluation (gen). */
static bool is_abort(const dx_msg *m, void *ud)
{
    const int64_t *want = ud;
    int64_t gen;
    return m->tag == DX_TAG_TERM &&
           dx_is_atom(dx_term_at(m->term, 0), "dx_tp_abort") &&
           dx_int_value(dx_term_at(m->term, 1), &gen) && gen == *want;
}

/* Run the shard in msg (taken) in a process of its own; *rows_out its rows.
 * DX_ECANCELED when the coordinator dropped it first. */
static int run_shard_in_process(dx_msg *msg, int64_t gen, const dx_module *base,
                                const dx_dataset *val, const dx_eval_opts *opts,
                                dx_term **rows_out)
{
    *rows_out = NULL;
    shard_run *r = dx_calloc(1, sizeof *r);
    if (!r) {
        dx_msg_free(msg);
        return DX_ENOMEM;
    }
    *r = (shard_run){.task = {.run = shard_run_main, .free_fn = shard_run_free},
                     .shard = msg,
                     .base = base,
                     .val = val};
    if (!dx__task_set_opts(&r->task, opts)) {
        shard_run_free(&r->task);
        return DX_ENOMEM;
    }
    int rc = dx__task_run_stoppable(&r->task, is_abort, &gen);
    if (rc == DX_OK && (rc = r->rc) == DX_OK) {
        *rows_out = r->rows;
        r->rows = NULL;
    }
    dx__task_unref(&r->task);
    return rc;
}

int dx_dist_tp_worker(const char *coord_node, const char *name,
                      const dx_module *base, const dx_dataset *val,
                      const dx_eval_opts *opts, int64_t timeout_ms,
                      dx_dist_tp_shard_fn on_shard, void *ud,
                      size_t *shards_out)
{
    if (shards_out)
        *shards_out = 0;
    if (dx_self().id == 0)
        return DX_ENOTPROC;
    if (coord_node == NULL || base == NULL || val == NULL || opts == NULL)
        return DX_EINVAL;
    dx_pid coord = dx_node_name_pid(coord_node, name ? name : "dx_dist_tp");
    if (coord.id == 0)
        return DX_EINVAL;
    int64_t tmo = timeout_ms > 0 ? timeout_ms : 600000;
    for (;;) {
        dx_send_term(
            coord, DX_TAG_TERM,
            dx_tuple(2, dx_atom("dx_tp_next"), dx_pid_term(dx_self())));
        dx_msg *msg;
        const dx_term *t = NULL;
        for (;;) {
            if (dx_receive_any(tmo, &msg) != DX_OK)
                return DX_ETIMEDOUT;
            t = msg->term;
            if (dx_is_atom(t, "dx_tp_done") ||
                (dx_is_atom(dx_term_at(t, 0), "dx_tp_shard") &&
                 dx_term_size(t) == 8))
                break;
            dx_msg_free(msg);
        }
        if (dx_is_atom(t, "dx_tp_done")) {
            dx_msg_free(msg);
            return DX_OK;
        }
        int64_t gen, id, cand;
        if (!dx_int_value(dx_term_at(t, 1), &gen) ||
            !dx_int_value(dx_term_at(t, 2), &id) ||
            !dx_int_value(dx_term_at(t, 3), &cand)) {
            dx_msg_free(msg);
            continue;
        }
        if (on_shard)
            on_shard((size_t)cand, dx_term_size(dx_term_at(t, 6)), ud);
        dx_term *rows = NULL;
        int rc = run_shard_in_process(msg, gen, base, val, opts, &rows);
        if (rc == DX_ECANCELED)
            continue; /* dropped: ask for the next evaluation's work */
        if (rc != DX_OK)
            return rc; /* our DOWN hands the shard to another worker */
        dx_send_term(coord, DX_TAG_TERM,
                     dx_tuple(5, dx_atom("dx_tp_results"),
                              dx_pid_term(dx_self()), dx_int(gen), dx_int(id),
                              rows));
        if (shards_out)
            (*shards_out)++;
    }
}
