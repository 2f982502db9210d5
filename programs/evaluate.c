/*
 * evaluate.c — the evaluation engine (see evaluate.h): a coordinator that
 * keeps up to `concurrency` example processes in flight, each running the
 * program and the metric, and collects their results in dataset order.
 *
 * The coordinator is a dspex process (the caller's own when dx_evaluate is
 * called from one, else one spawned for the purpose). It monitors every
 * example process, so a crash, a kill at the example's deadline or a
 * cancellation all arrive the same way: a DOWN message. What the example
 * achieved before it ended is in its slot, shared by reference count with
 * the process (the process's reference is dropped by arg_free however it
 * exits).
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "eval_int.h"
#include "example_int.h"
#include "helper_thread.h"
#include "htab.h"
#include "module_int.h"
#include "pyjson.h"

#define DEFAULT_CONCURRENCY 16
#define DEFAULT_EXAMPLE_TIMEOUT_MS 120000

/* ---- cancellation ----------------------------------------------------- */

/* dx_evaluate_cancel_all may run in a signal handler, where an atomic and
 * write(2) are about all there is. It bumps cancel_generation, which each
 * coordinator compares with the value it started with, and writes to
 * cancel_fd, an eventfd made once and never closed, so a handler never
 * writes to a descriptor being closed or reused. While evaluations run, a
 * relay thread waits on it and sends each running coordinator a wake-up
 * (DX__TAG_CANCEL_WAKE), so a coordinator sleeps until an example ends, a
 * deadline passes, progress is due or it is cancelled: never on a timer of
 * its own.
 * At one example in flight a 100 ms poll cost about one wake-up of a
 * sleeping scheduler per example, ~60 us of CPU on a 2-vCPU VM.
 *
 * The relay thread starts with the first watch (dx__cancel_watch_start,
 * eval_int.h: a coordinator's, or the bootstrap's) and ends by itself
 * RELAY_LINGER_MS or a little more after the last one ended, so
 * evaluations that follow one another (an optimizer's, a service's) share
 * one. Starting it and joining it at the end was 300-800 us of a
 * scheduler thread's time per evaluation (eval-bench at 1 in flight,
 * docs/benchmarks.md), the join a blocking wait for another thread. It is
 * detached: it decides to end under relay.mu, where a watch starting
 * meanwhile sees it gone and starts a new one. */

static atomic_uint_fast64_t cancel_generation;
static atomic_int cancel_fd = -1;
static pthread_once_t cancel_fd_once = PTHREAD_ONCE_INIT;

typedef struct relay_entry {
    struct relay_entry *next;
    dx_pid pid;
    dx_ref ref;
} relay_entry;

/* How long the relay thread waits for a new watch after the last one
 * ended, before it ends. */
#define RELAY_LINGER_MS 1000

static struct {
    pthread_mutex_t mu;
    relay_entry *running;  /* the watches to wake */
    bool on;               /* a relay thread runs for them */
    int64_t idle_since_ms; /* when the last watch ended (monotonic) */
} relay = {.mu = PTHREAD_MUTEX_INITIALIZER};

void dx_evaluate_cancel_all(void)
{
    int saved = errno; /* a signal handler must leave errno as it was */
    atomic_fetch_add(&cancel_generation, 1);
    int fd = atomic_load(&cancel_fd);
    if (fd >= 0) {
        uint64_t one = 1;
        /* EAGAIN only if the counter is full: a wake-up is pending. */
        ssize_t wrote = write(fd, &one, sizeof one);
        (void)wrote;
    }
    errno = saved;
}

/* Written by the last watch to end, so the relay starts its linger; made
 * with cancel_fd and never closed either. -1: the relay looks every
 * RELAY_LINGER_MS / 2 instead. */
static int relay_poke_fd = -1;

static void make_cancel_fd(void)
{
    atomic_store(&cancel_fd, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    relay_poke_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

/* Wake every registered coordinator. Relay thread. */
static void relay_wake_all(void)
{
    pthread_mutex_lock(&relay.mu);
    for (relay_entry *e = relay.running; e; e = e->next) {
        dx_msg *m = dx_msg_new(DX__TAG_CANCEL_WAKE);
        if (m) {
            m->ref = e->ref;
            dx_send(e->pid, m); /* a dead pid: nothing to wake */
        }
    }
    pthread_mutex_unlock(&relay.mu);
}

static void *relay_main(void *arg)
{
    (void)arg;
    struct pollfd fds[2] = {{.fd = atomic_load(&cancel_fd), .events = POLLIN},
                            {.fd = relay_poke_fd, .events = POLLIN}};
    int timeout_ms = relay_poke_fd >= 0 ? -1 : RELAY_LINGER_MS / 2;
    for (;;) {
        /* While watches run, only a cancellation or the last watch's end
         * wakes it: a timer here cost each evaluated example ~13 us at
         * one in flight (eval-bench), in wake-ups of an idle CPU. */
        int ready = poll(fds, relay_poke_fd >= 0 ? 2 : 1, timeout_ms);
        uint64_t count;
        if (ready > 0 && (fds[0].revents & POLLIN) &&
            read(fds[0].fd, &count, sizeof count) == (ssize_t)sizeof count)
            relay_wake_all();
        if (ready > 0 && (fds[1].revents & POLLIN))
            (void)!read(fds[1].fd, &count, sizeof count);
        if (ready < 0 && errno != EINTR)
            (void)poll(NULL, 0, RELAY_LINGER_MS / 2); /* not a busy loop */
        pthread_mutex_lock(&relay.mu);
        int64_t idle_ms =
            relay.running == NULL ? dx_now_ms() - relay.idle_since_ms : -1;
        bool over = idle_ms >= RELAY_LINGER_MS;
        if (over)
            relay.on = false; /* the next watch starts another */
        pthread_mutex_unlock(&relay.mu);
        if (over)
            return NULL;
        if (relay_poke_fd >= 0)
            timeout_ms = idle_ms < 0 ? -1 : (int)(RELAY_LINGER_MS - idle_ms);
    }
}

/* Register a coordinator (pid, ref) with the relay, starting it if need
 * be; e is the caller's until relay_leave(e). false when the relay cannot
 * run: the coordinator then polls the counter. */
static bool relay_join(relay_entry *e, dx_pid pid, dx_ref ref)
{
    e->pid = pid;
    e->ref = ref;
    pthread_once(&cancel_fd_once, make_cancel_fd);
    if (atomic_load(&cancel_fd) < 0)
        return false;
    pthread_mutex_lock(&relay.mu);
    if (!relay.on) {
        /* The relay takes no asynchronous signals (helper_thread.h):
         * SIGINT is the application's, whose handler is what writes to
         * cancel_fd. */
        sigset_t all, old;
        dx__helper_thread_sigmask(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_attr_t attr;
        pthread_t thread;
        bool started = pthread_attr_init(&attr) == 0;
        if (started) {
            started = pthread_attr_setdetachstate(
                          &attr, PTHREAD_CREATE_DETACHED) == 0 &&
                      pthread_create(&thread, &attr, relay_main, NULL) == 0;
            pthread_attr_destroy(&attr);
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (!started) {
            pthread_mutex_unlock(&relay.mu);
            return false;
        }
        /* Named here, not by the thread: from the moment this returns it
         * shows under its name (tests and tools look for it). It cannot
         * have ended yet: it ends only under relay.mu, with no watch. */
        pthread_setname_np(thread, "dx-eval-cancel");
        relay.on = true;
    }
    e->next = relay.running;
    relay.running = e;
    pthread_mutex_unlock(&relay.mu);
    return true;
}

/* Unregister; after the last one out the relay lingers, then ends. */
static void relay_leave(relay_entry *e)
{
    pthread_mutex_lock(&relay.mu);
    for (relay_entry **p = &relay.running; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    bool last = relay.running == NULL && relay.on;
    if (last)
        relay.idle_since_ms = dx_now_ms();
    pthread_mutex_unlock(&relay.mu);
    if (last && relay_poke_fd >= 0) {
        uint64_t one = 1;
        (void)!write(relay_poke_fd, &one, sizeof one);
    }
}

uint64_t dx__cancel_generation(void)
{
    return atomic_load(&cancel_generation);
}

struct dx__cancel_watch {
    relay_entry entry;
    dx_ptie *tie; /* ends the watch if the process is killed first */
};

/* The watching process ended without dx__cancel_watch_stop (killed: an
 * example's deadline, when the watch is a nested evaluation's). Runs as
 * it ends, on its scheduler thread; the relay thread never waits for a
 * scheduler, so taking relay.mu (and joining it) here cannot deadlock. */
static void watch_orphaned(void *obj)
{
    dx__cancel_watch *w = obj;
    relay_leave(&w->entry);
    dx_free(w);
}

dx__cancel_watch *dx__cancel_watch_start(void)
{
    /* On the heap: the relay thread reads it while the process is parked,
     * and a parked process's stack is not where it was. */
    dx__cancel_watch *w = dx_malloc(sizeof *w);
    if (w != NULL && !relay_join(&w->entry, dx_self(), dx_make_ref())) {
        dx_free(w);
        w = NULL;
    }
    if (w != NULL)
        w->tie = dx_ptie_new(w, watch_orphaned);
    return w;
}

dx_ref dx__cancel_watch_ref(const dx__cancel_watch *w)
{
    return w != NULL ? w->entry.ref : DX_NOREF;
}

void dx__cancel_watch_stop(dx__cancel_watch *w)
{
    if (w == NULL)
        return;
    relay_leave(&w->entry);
    /* Once out of the relay no wake-up can come: drop those that came
     * (when this is the caller's process, its mailbox is theirs). A kill
     * landing in these receives finds the tie still held: leaving again
     * is harmless. */
    dx_match wakeup = {.fields = DX_MATCH_TAG | DX_MATCH_REF,
                       .tag = DX__TAG_CANCEL_WAKE,
                       .ref = w->entry.ref};
    dx_msg *m = NULL;
    while (dx_receive(&wakeup, 0, &m) == DX_OK && m)
        dx_msg_free(m);
    dx_ptie_cut(w->tie);
    dx_free(w);
}

/* ---- one example ------------------------------------------------------ */

/* Latencies are kept to the microsecond: a cached or local LM answers in
 * well under a millisecond, which whole milliseconds would show as 0. */
static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double ns_to_ms(int64_t ns)
{
    return (double)((ns + 500) / 1000) / 1000.0;
}

typedef struct ex_slot {
    atomic_int refs;
    atomic_bool done;
    /* in: read-only for the process */
    dx__eval_keep keep; /* held for as long as the slot lives */
    const dx_module *module;
    /* Copies, not pointers into the job: a coordinator killed with its
     * caller's process frees the job while its examples are being ended. */
    dx_metric metric;
    dx_call_opts call;
    const dx_example *example; /* the dataset's (read-only) */
    dx_example *inputs;
    int64_t deadline_ms;
    bool trace;
    /* out */
    int rc;
    dx_diag diag;
    dx_prediction *pred;
    dx_trace trace_data;
    dx_usage_acc usage; /* the run's LM usage, also when it failed */
    double score;
    double latency_ms;  /* the program's run, when it returned */
    bool metric_failed; /* the program returned; its metric failed */
    /* coordinator's bookkeeping */
    int64_t started_ns; /* when it was spawned: a failed example's latency */
    size_t index;
    dx_pid pid;
    dx_ref mon;
    dx__hnode by_pid;              /* key: pid.id, for its DOWN */
    struct ex_slot *older, *newer; /* in start order */
    bool kill_sent;
} ex_slot;

static void slot_unref(void *arg)
{
    ex_slot *s = arg;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    dx_example_free(s->inputs);
    dx_prediction_free(s->pred);
    dx_trace_free(&s->trace_data);
    dx__eval_keep keep = s->keep;
    dx_free(s);
    if (keep.release)
        keep.release(keep.ud);
}

static void example_proc(void *arg)
{
    ex_slot *s = arg;
    dx_set_label("dspex.evaluate.example");
    int64_t t0 = mono_ns();
    /* The prediction and the trace belong to the slot from the start, so
     * a metric that crashes (or a kill) leaks neither. */
    s->rc = dx__run_program(s->module, s->inputs, &s->call, s->deadline_ms,
                            &s->pred, s->trace ? &s->trace_data : NULL,
                            &s->diag, &s->usage);
    s->latency_ms = ns_to_ms(mono_ns() - t0);
    bool program_ok = s->rc == DX_OK;
    if (s->rc == DX_OK)
        s->rc =
            dx__metric_fields_check(&s->metric, s->example, s->pred, &s->diag);
    if (s->rc == DX_OK && dx__metric_is_judged(&s->metric)) {
        /* An LM judge: its calls share the example's deadline and count in
         * its row; its failure is the example's. */
        int jrc = DX_OK;
        double score =
            dx__metric_judge(&s->metric, s->example, s->pred, &s->call,
                             s->deadline_ms, &s->usage, &jrc, &s->diag);
        if (jrc != DX_OK)
            s->rc = jrc;
        else
            s->score = score;
    } else if (s->rc == DX_OK) {
        /* The metric runs here too: if it crashes, this example fails and
         * nothing else does. */
        double score = dx_metric_score(&s->metric, s->example, s->pred,
                                       s->trace ? &s->trace_data : NULL);
        if (isnan(score))
            s->rc = dx_diag_set(&s->diag, DX_EINVAL, 0, 0,
                                "the metric returned NaN");
        else
            s->score = score;
    }
    s->metric_failed = program_ok && s->rc != DX_OK;
    atomic_store_explicit(&s->done, true, memory_order_release);
}

/* ---- the coordinator -------------------------------------------------- */

typedef struct eval_job {
    dx__eval_keep keep;
    const dx_module *module;
    const dx_dataset *ds;
    dx_eval_opts opts;
    dx_eval_result *res;
    int rc;
    dx_diag diag;
    atomic_bool finished;
    /* Coordinated in the caller's process (dx_evaluate's frame there), so
     * if that process is killed the job and its result are freed with it;
     * else the host thread that waits frees them. */
    bool in_caller;
} eval_job;

/* Fill the row of an example that ended. Not inlined: its message
 * buffers (~800 bytes) would sit in coordinate's frame, which is copied
 * out and back in around each wait for the next example to end. */
static DX_NOINLINE void record(eval_job *j, ex_slot *s, const dx_term *reason,
                               bool killed_for_time, bool killed_for_stop)
{
    dx_eval_row *row = &j->res->rows[s->index];
    /* Its copy of its example is taken when the run ends (coordinate). */
    row->done = true;
    /* A program that returned reports its own run; one that crashed, hung
     * or was killed, the time from its start to its end here. */
    row->latency_ms = atomic_load_explicit(&s->done, memory_order_acquire)
                          ? s->latency_ms
                          : ns_to_ms(mono_ns() - s->started_ns);
    if (atomic_load_explicit(&s->done, memory_order_acquire))
        row->usage = s->usage;
    if (atomic_load_explicit(&s->done, memory_order_acquire) &&
        s->rc == DX_OK) {
        row->pred = s->pred;
        s->pred = NULL;
        row->score = s->score;
        row->error = DX_OK;
        return;
    }
    row->score = j->opts.failure_score;
    char text[DX_DIAG_MAX + 64];
    if (atomic_load_explicit(&s->done, memory_order_acquire)) {
        /* Only the metric failed (a missing label, a judge that did not
         * answer): the program's answer is kept for the row. */
        if (s->metric_failed) {
            row->pred = s->pred;
            s->pred = NULL;
        }
        row->error = s->rc;
        snprintf(text, sizeof text, "%s",
                 s->diag.msg[0] ? s->diag.msg : dx_strerror(s->rc));
    } else if (killed_for_time) {
        row->error = DX_ETIMEDOUT;
        snprintf(text, sizeof text, "no result within %lld ms",
                 (long long)j->opts.example_timeout_ms);
    } else if (killed_for_stop) {
        row->done = false; /* not finished: stopped or cancelled */
        return;
    } else {
        row->error = DX_EDOWN;
        char why[256] = "unknown";
        if (reason)
            dx_term_format(reason, why, sizeof why);
        snprintf(text, sizeof text, "the example's process died: %s", why);
    }
    row->error_msg = dx_strdup(text);
    j->res->n_errors++;
}

/* A zeroed slot but for its diag's message buffer, which only a failure
 * writes (an empty string until then): not zeroing it spares each example
 * half a kilobyte of writes to memory that is cold at 1 in flight. */
static ex_slot *slot_new(void)
{
    ex_slot *s = dx_malloc(sizeof *s);
    if (s) {
        size_t skip = offsetof(ex_slot, diag.msg),
               after = skip + sizeof s->diag.msg;
        memset(s, 0, skip);
        memset((char *)s + after, 0, sizeof *s - after);
        s->diag.msg[0] = '\0';
    }
    return s;
}

/* spread: start on the schedulers in turn (dx_spawn_opts.spread). */
static int start_example(eval_job *j, size_t index, bool spread, ex_slot **out)
{
    const dx_example *ex = j->ds->items[index];
    ex_slot *s = slot_new();
    if (!s)
        return DX_ENOMEM;
    atomic_init(&s->refs, 2);
    atomic_init(&s->done, false);
    if (j->keep.hold) {
        j->keep.hold(j->keep.ud);
        s->keep = j->keep;
    }
    s->module = j->module;
    s->metric = j->opts.metric;
    s->call = j->opts.call;
    s->example = ex;
    s->trace = j->opts.trace;
    s->index = index;
    s->started_ns = mono_ns();
    /* Rounded up, so "no result within T ms" is never said sooner. */
    s->deadline_ms =
        (s->started_ns + 999999) / 1000000 + j->opts.example_timeout_ms;
    /* The program reads the dataset's own values through a view of the
     * inputs (the dataset outlives the run, as s->example shows): no copy
     * to make and free per example. */
    int rc = DX_ESTATE;
    if (dx_example_has_inputs(ex))
        rc = (s->inputs = dx__example_inputs_view(ex)) ? DX_OK : DX_ENOMEM;
    if (rc != DX_OK) {
        atomic_store(&s->refs, 1);
        slot_unref(s);
        return rc;
    }
    /* The coordinator kills an example at its deadline. The runtime kills
     * it a little later in any case: if the example holds the scheduler it
     * shares with the coordinator (an endless loop, a sleep() in program
     * code), the coordinator cannot run to do it. Either way its DOWN
     * comes past the deadline and is recorded as a timeout. */
    dx_spawn_opts so = {.monitor = true,
                        .arg_free = slot_unref,
                        .spread = spread,
                        .kill_after_ms =
                            dx__runtime_kill_after(j->opts.example_timeout_ms)};
    rc = dx_spawn_opt(example_proc, s, &so, &s->pid, &s->mon);
    if (rc != DX_OK) {
        atomic_store(&s->refs, 1);
        slot_unref(s);
        return rc;
    }
    *out = s;
    return DX_OK;
}

/* The examples in flight, oldest first. They all have the same timeout,
 * so the oldest has the earliest deadline; a pid index finds the one a
 * DOWN is about. Every step is O(1) (a kill past the deadline O(1) per
 * example killed), so 10,000 in flight cost no more per example than 10. */
typedef struct in_flight {
    ex_slot *oldest, *newest;
    dx__htab by_pid;
    size_t n;
} in_flight;

/* false when the index could not get its first buckets (out of memory). */
static bool track(in_flight *fl, ex_slot *s)
{
    s->by_pid.key = s->pid.id;
    if (!dx__htab_put(&fl->by_pid, &s->by_pid))
        return false;
    s->older = fl->newest;
    s->newer = NULL;
    if (fl->newest)
        fl->newest->newer = s;
    else
        fl->oldest = s;
    fl->newest = s;
    fl->n++;
    return true;
}

static void untrack(in_flight *fl, ex_slot *s)
{
    dx__htab_del(&fl->by_pid, &s->by_pid);
    if (s->older)
        s->older->newer = s->newer;
    else
        fl->oldest = s->newer;
    if (s->newer)
        s->newer->older = s->older;
    else
        fl->newest = s->older;
    fl->n--;
}

static ex_slot *slot_of_pid(const in_flight *fl, dx_pid pid)
{
    for (dx__hnode *n = dx__htab_find(&fl->by_pid, pid.id); n;
         n = dx__htab_find_next(n)) {
        ex_slot *s = DX__HTAB_ENTRY(n, ex_slot, by_pid);
        if (dx_pid_eq(s->pid, pid))
            return s;
    }
    return NULL;
}

/* An example started but could not be tracked: end it before it can
 * report, as if it had never started. */
static void abandon(ex_slot *s)
{
    dx_kill(s->pid);
    dx_msg *m = NULL;
    dx_match down = {.fields = DX_MATCH_TAG | DX_MATCH_REF,
                     .tag = DX_TAG_DOWN,
                     .ref = s->mon};
    if (dx_receive(&down, -1, &m) == DX_OK)
        dx_msg_free(m);
    slot_unref(s);
}

/* What the coordinator's receive takes: a DOWN of one of its examples or
 * its own cancellation wake-up. Other messages (the caller's, when the
 * coordinator is the caller's process) stay where they are. */
typedef struct coord_match {
    const in_flight *fl;
    dx_ref cancel_ref;
    bool stop_asked; /* a DX__TAG_EVAL_STOP came */
    /* The example whose DOWN was taken (NULL for a wake-up): the receive
     * takes the first message this accepts, so the last one it accepted. */
    ex_slot *ended;
} coord_match;

static bool is_ours(const dx_msg *m, void *ud)
{
    coord_match *c = ud;
    c->ended = NULL;
    if (m->tag == DX__TAG_CANCEL_WAKE)
        return dx_ref_eq(m->ref, c->cancel_ref);
    if (m->tag == DX__TAG_EVAL_STOP && m->kind == DX_MSG_PLAIN)
        return c->stop_asked = true;
    if (m->tag != DX_TAG_DOWN)
        return false;
    ex_slot *s = slot_of_pid(c->fl, m->from);
    if (s == NULL || !dx_ref_eq(s->mon, m->ref))
        return false;
    c->ended = s;
    return true;
}

/* How long to wait for news, in ms (DX_INFINITY: until a message comes):
 * the earliest of the next deadline not yet acted on, the next progress
 * report and, without the relay, the next look at the cancel counter. */
static int64_t wait_ms(const in_flight *fl, const dx__progress *prog,
                       int64_t t0_ns, bool relayed)
{
    int64_t now = dx_now_ms();
    int64_t wait = relayed ? DX_INFINITY : DX__CANCEL_POLL_MS;
    const ex_slot *due = fl->oldest;
    while (due && due->kill_sent)
        due = due->newer;
    if (due && (wait == DX_INFINITY || due->deadline_ms - now < wait))
        wait = due->deadline_ms - now;
    double next_s = dx__progress_next_s(prog);
    if (isfinite(next_s)) {
        int64_t p =
            (int64_t)ceil(next_s * 1000.0) - (mono_ns() - t0_ns) / 1000000;
        if (wait == DX_INFINITY || p < wait)
            wait = p;
    }
    return wait == DX_INFINITY || wait >= 0 ? wait : 0;
}

/* A coordinator's state, for the case where its process is killed. */
typedef struct coord_state {
    in_flight fl;
    dx__progress *prog;
    eval_job *j;
    dx_eval_row *lent; /* holds the dataset's example during on_row */
} coord_state;

/* The coordinator's process ended inside coordinate (a kill: its caller's
 * process stopped by a supervisor, an outer example's deadline). Runs as
 * it ends, on its scheduler thread: it ends the examples in flight, drops
 * its references to their slots and frees what it held, the job too when
 * the job lived in that process's dx_evaluate. */
static void coordinator_killed(void *obj)
{
    coord_state *cs = obj;
    for (ex_slot *s = cs->fl.oldest, *newer; s; s = newer) {
        newer = s->newer;
        dx_kill(s->pid);
        slot_unref(s);
    }
    dx__htab_free(&cs->fl.by_pid);
    dx__progress_free(cs->prog);
    if (cs->lent)
        cs->lent->example = NULL; /* the dataset's, not the result's */
    if (cs->j->in_caller) {
        dx_eval_result_free(cs->j->res);
        dx_free(cs->j);
    }
    dx_free(cs);
}

/* Hand row i to on_row. A row gets its own copy of its example when the
 * run ends, all rows in one pass, rather than one at a time as each example
 * ends: at 1 in flight each copy would come after 100 ms of idle, its ten
 * allocations and ~30 cache lines cold (docs/benchmarks.md). Until then on_row
 * sees the dataset's example in the row, which it must not keep anyway;
 * cs->lent tells coordinator_killed that the row does not own it. */
static void hand_row(coord_state *cs, size_t i)
{
    eval_job *j = cs->j;
    dx_eval_row *row = &j->res->rows[i]; /* no example of its own yet */
    row->example = j->ds->items[i];
    cs->lent = row;
    j->opts.on_row(row, j->opts.on_row_ud);
    row->example = NULL;
    cs->lent = NULL;
}

static void coordinate(eval_job *j)
{
    dx_eval_result *res = j->res;
    const dx_eval_opts *o = &j->opts;
    size_t n = j->ds->n;
    size_t conc = o->concurrency;
    /* On the heap and tied to this process: killed (its caller's process
     * ended by a supervisor, an outer example's deadline), it ends its
     * examples and frees what it held as it goes (coordinator_killed). */
    coord_state *cs = dx_calloc(1, sizeof *cs);
    if (!cs) {
        j->rc = dx_diag_set(&j->diag, DX_ENOMEM, 0, 0, "out of memory");
        return;
    }
    cs->j = j;
    bool killed_all = false;
    uint64_t gen = dx__cancel_generation();
    dx__progress *prog = cs->prog = dx__progress_new(
        o->progress_out ? o->progress_out : stderr, o->progress, n,
        o->progress_interval_s > 0 ? o->progress_interval_s : 2.0);
    int64_t t0 = mono_ns();
    size_t next = 0, started = 0;
    double score_sum = 0;
    for (size_t i = 0; i < n; i++)
        if (res->rows[i].resumed)
            score_sum += res->rows[i].score;
    dx__progress_resumed(prog, res->n_resumed);
    bool stopping = false;
    dx_ptie *tie = dx_ptie_new(cs, coordinator_killed);
    dx__cancel_watch *watch = dx__cancel_watch_start();
    coord_match ours = {.fl = &cs->fl,
                        .cancel_ref = dx__cancel_watch_ref(watch)};

    while (next < n || cs->fl.n > 0) {
        if (!stopping && (dx__cancel_generation() != gen || ours.stop_asked)) {
            res->cancelled = true;
            stopping = true;
        }
        if (!stopping && o->max_errors > 0 && res->n_errors > o->max_errors) {
            res->stopped_early = true;
            stopping = true;
        }
        if (stopping && !killed_all) {
            for (ex_slot *s = cs->fl.oldest; s; s = s->newer)
                dx_kill(s->pid);
            killed_all = true;
            next = n; /* start nothing more */
        }
        /* Fill free places. */
        while (!stopping && next < n && cs->fl.n < conc) {
            if (res->rows[next].resumed) {
                next++;
                continue;
            }
            ex_slot *s = NULL;
            /* The first examples start spread over the schedulers, as a
             * burst; each later one takes the place of one that ended and
             * starts on this process's scheduler, so at low load its
             * spawn and DOWN (and its messages to an LM client started
             * from here) wake no other thread. eval-bench, 2 vCPU,
             * medians: CPU per example 1,276 -> 1,144 us at 1 in flight,
             * 296 -> 240 at 16, 155 -> 139 at 256. A scheduler falling
             * behind has them taken by an idle sibling, as with any
             * spawn. */
            int rc = start_example(j, next, started++ < conc, &s);
            if (rc == DX_OK && !track(&cs->fl, s)) {
                abandon(s);
                rc = DX_ENOMEM;
            }
            if (rc != DX_OK) {
                /* An example that cannot even start (no input
                 * designation, no memory) is a failed example. */
                dx_eval_row *row = &res->rows[next];
                row->done = true;
                row->score = o->failure_score;
                row->error = rc;
                row->error_msg = dx_strdup(
                    rc == DX_ESTATE ? "the example has no input designation "
                                      "(with_inputs / --inputs)"
                                    : dx_strerror(rc));
                res->n_errors++;
                res->n_done++;
                score_sum += row->score;
                if (o->on_row)
                    hand_row(cs, next);
                next++;
                continue;
            }
            next++;
        }
        if (cs->fl.n == 0)
            break;

        /* Wait for an example to end, a deadline, progress or a cancel. */
        dx_msg *m = NULL;
        dx_match match = {.pred = is_ours, .ud = &ours};
        ours.ended = NULL;
        if (dx_receive(&match, wait_ms(&cs->fl, prog, t0, watch != NULL), &m) ==
                DX_OK &&
            m) {
            ex_slot *s = ours.ended;
            if (s) {
                dx_term *reason = dx_msg_take_term(m);
                bool late =
                    !atomic_load(&s->done) && dx_now_ms() >= s->deadline_ms;
                record(j, s, reason, late, stopping);
                dx_term_free(reason);
                const dx_eval_row *row = &res->rows[s->index];
                if (row->done) {
                    res->n_done++;
                    score_sum += row->score;
                    dx_usage_acc_merge(&res->usage, &row->usage);
                    if (o->on_row)
                        hand_row(cs, s->index);
                }
                untrack(&cs->fl, s);
                slot_unref(s);
            }
            dx_msg_free(m);
        }
        /* Kill examples past their deadline (the oldest first: the only
         * ones that can be); their DOWN comes next. */
        int64_t now = dx_now_ms();
        for (ex_slot *s = cs->fl.oldest; s && now >= s->deadline_ms;
             s = s->newer)
            if (!s->kill_sent) {
                dx_kill(s->pid);
                s->kill_sent = true;
            }
        dx__progress_update(prog, res->n_done, res->n_errors, score_sum,
                            (double)(mono_ns() - t0) / 1e9);
    }
    res->wall_s = (double)(mono_ns() - t0) / 1e9;
    dx__cancel_watch_stop(watch);
    dx_ptie_cut(tie);
    dx__progress_finish(prog, res->n_done, res->n_errors, score_sum,
                        res->wall_s, res->stopped_early || res->cancelled);
    dx__progress_free(prog);
    dx__htab_free(&cs->fl.by_pid);
    dx_free(cs);

    /* Every row gets its copy of its example now (see hand_row), in one
     * warm pass; out of memory, a row is left without one. */
    for (size_t i = 0; i < n; i++)
        (void)dx__eval_row_take_example(res, j->ds, i);
    res->score = res->n_done
                     ? round(10000.0 * score_sum / (double)res->n_done) / 100.0
                     : 0.0;
    dx__eval_result_latencies(res);
    j->rc = DX_OK;
}

static void coordinator_proc(void *arg)
{
    eval_job *j = arg;
    dx_set_label("dspex.evaluate");
    coordinate(j);
    atomic_store_explicit(&j->finished, true, memory_order_release);
}

void dx_eval_result_free(dx_eval_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->rows && i < r->n; i++) {
        dx_example_free(r->rows[i].example);
        dx_prediction_free(r->rows[i].pred);
        dx_free(r->rows[i].error_msg);
    }
    dx_free(r->rows);
    dx_free(r->run_key);
    dx_free(r);
}

int dx__eval_result_set_key(dx_eval_result *r, const char *key)
{
    dx_free(r->run_key);
    r->run_key = NULL;
    if (key && !(r->run_key = dx_strdup(key)))
        return DX_ENOMEM;
    for (size_t i = 0; i < r->n; i++)
        r->rows[i].run_key = r->run_key;
    return DX_OK;
}

int dx__eval_row_take_example(dx_eval_result *r, const dx_dataset *ds, size_t i)
{
    dx_eval_row *row = &r->rows[i];
    if (row->example == NULL &&
        (row->example = dx_example_copy(ds->items[i])) == NULL)
        return DX_ENOMEM;
    return DX_OK;
}

dx_eval_result *dx__eval_result_new(const dx_dataset *ds, bool copy_examples)
{
    dx_eval_result *res = dx_calloc(1, sizeof *res);
    if (!res)
        return NULL;
    res->rows = dx_calloc(ds->n ? ds->n : 1, sizeof *res->rows);
    if (!res->rows) {
        dx_free(res);
        return NULL;
    }
    res->n = ds->n;
    dx_usage_acc_init(&res->usage, "evaluate");
    for (size_t i = 0; i < ds->n; i++) {
        res->rows[i].index = i;
        dx_usage_acc_init(&res->rows[i].usage, "example");
        if (copy_examples && dx__eval_row_take_example(res, ds, i) != DX_OK) {
            dx_eval_result_free(res);
            return NULL;
        }
    }
    return res;
}

void dx__eval_result_latencies(dx_eval_result *r)
{
    double *lat = dx_calloc(r->n ? r->n : 1, sizeof *lat);
    if (!lat)
        return; /* out of memory: the percentiles stay 0 */
    size_t k = 0;
    for (size_t i = 0; i < r->n; i++)
        if (r->rows[i].done && r->rows[i].error == DX_OK)
            lat[k++] = r->rows[i].latency_ms;
    static const double qs[3] = {50, 95, 99};
    double p[3];
    dx__percentiles(lat, k, qs, p, 3);
    r->latency_p50_ms = p[0];
    r->latency_p95_ms = p[1];
    r->latency_p99_ms = p[2];
    dx_free(lat);
}

int dx_evaluate(const dx_module *m, const dx_dataset *ds,
                const dx_eval_opts *opts, dx_eval_result **out, dx_diag *diag)
{
    return dx__evaluate_kept(m, ds, opts, NULL, out, diag);
}

/* ---- keeps ------------------------------------------------------------- */

struct dx__kept {
    atomic_int refs;
    void (*free_fn)(void *obj);
    void *obj;
    dx_ptie *tie;
};

static void kept_hold(void *ud)
{
    dx__kept *k = ud;
    atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
}

static void kept_release(void *ud)
{
    dx__kept *k = ud;
    if (atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) != 1)
        return;
    k->free_fn(k->obj);
    dx_free(k);
}

dx__kept *dx__kept_new(void *obj, void (*free_fn)(void *obj))
{
    dx__kept *k = dx_calloc(1, sizeof *k);
    if (!k)
        return NULL;
    atomic_init(&k->refs, 1);
    k->free_fn = free_fn;
    k->obj = obj;
    k->tie = dx_ptie_new(k, kept_release);
    return k;
}

void dx__kept_done(dx__kept *k)
{
    dx_ptie_cut(k->tie);
    kept_release(k);
}

dx__eval_keep dx__kept_keep(dx__kept *k)
{
    return (dx__eval_keep){kept_hold, kept_release, k};
}

/* Copy the rows of an earlier run that finished without an error into
 * res (resumed), after checking they are of this dataset. */
static int take_resumed(dx_eval_result *res, const dx_dataset *ds,
                        const dx_eval_result *prior, dx_diag *diag)
{
    if (!prior)
        return DX_OK;
    /* Rows of another program, metric or model would score this one with
     * answers it never gave. Without a key on either side there is
     * nothing to compare. */
    if (prior->run_key && res->run_key &&
        strcmp(prior->run_key, res->run_key) != 0)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "evaluate: the rows to resume are of another run "
                           "(run key %s; this run's is %s): another program, "
                           "metric or model",
                           prior->run_key, res->run_key);
    if (prior->n != ds->n || (prior->n > 0 && !prior->rows))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "evaluate: the rows to resume are of %zu "
                           "examples, the dataset has %zu",
                           prior->n, ds->n);
    for (size_t i = 0; i < ds->n; i++) {
        const dx_eval_row *was = &prior->rows[i];
        if (!was->done || was->error != DX_OK)
            continue;
        if (was->example && !dx_example_equal(was->example, ds->items[i]))
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "evaluate: the row to resume of example %zu "
                               "has another example than the dataset's",
                               i);
        dx_eval_row *row = &res->rows[i];
        if (was->pred && !(row->pred = dx_prediction_copy(was->pred)))
            return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
        row->score = was->score;
        row->latency_ms = was->latency_ms;
        row->usage = was->usage;
        row->done = row->resumed = true;
        res->n_done++;
        res->n_resumed++;
        dx_usage_acc_merge(&res->usage, &row->usage);
    }
    return DX_OK;
}

int dx__evaluate_kept(const dx_module *m, const dx_dataset *ds,
                      const dx_eval_opts *opts, const dx__eval_keep *keep,
                      dx_eval_result **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!m || !ds || !opts || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "evaluate: NULL module, dataset, options or out");
    if (opts->metric.kind == DX_METRIC_CUSTOM && !opts->metric.fn &&
        !opts->metric.pass)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "evaluate: a custom metric needs a function");
    if (!dx_runtime_running())
        return dx_diag_set(diag, DX_ESTATE, 0, 0,
                           "evaluate: the runtime is not running");
    dx__pyjson_init();
    eval_job *j = dx_calloc(1, sizeof *j);
    /* Each row's copy of its example is taken when the run ends (see
     * hand_row): copying every example here would hold the first one back
     * by the whole dataset's copy (~0.5 ms a thousand examples). */
    dx_eval_result *res = dx__eval_result_new(ds, false);
    if (!j || !res) {
        dx_free(j);
        dx_eval_result_free(res);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    int rc = dx__eval_result_set_key(res, opts->run_key);
    if (rc != DX_OK) {
        dx_free(j);
        dx_eval_result_free(res);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    rc = take_resumed(res, ds, opts->resume, diag);
    if (rc != DX_OK) {
        dx_free(j);
        dx_eval_result_free(res);
        return rc;
    }
    if (keep && keep->hold && keep->release)
        j->keep = *keep;
    j->module = m;
    j->ds = ds;
    j->opts = *opts;
    if (j->opts.concurrency == 0)
        j->opts.concurrency = DEFAULT_CONCURRENCY;
    if (j->opts.example_timeout_ms <= 0)
        j->opts.example_timeout_ms = DEFAULT_EXAMPLE_TIMEOUT_MS;
    j->res = res;
    atomic_init(&j->finished, false);

    if (!dx_pid_is_none(dx_self())) {
        j->in_caller = true;
        coordinate(j);
    } else {
        /* A host thread cannot receive DOWN messages: the coordinator is a
         * process of its own, and this thread waits for it. */
        dx_pid pid;
        rc = dx_spawn(coordinator_proc, j, &pid);
        if (rc != DX_OK) {
            dx_free(j);
            dx_eval_result_free(res);
            return dx_diag_set(diag, rc, 0, 0, "evaluate: spawn failed: %s",
                               dx_strerror(rc));
        }
        dx_term *reason = NULL;
        rc = dx_wait_exit(pid, DX_INFINITY, &reason);
        dx_term_free(reason);
        if (!atomic_load_explicit(&j->finished, memory_order_acquire)) {
            /* The coordinator itself died: a bug, not an example's fault.
             * Its examples are monitored by it and end on their own. */
            dx_free(j);
            dx_eval_result_free(res);
            return dx_diag_set(diag, DX_EDOWN, 0, 0,
                               "evaluate: the coordinator process died");
        }
    }
    rc = j->rc;
    if (rc != DX_OK) {
        if (diag)
            *diag = j->diag;
        dx_eval_result_free(res);
    } else {
        *out = res;
    }
    dx_free(j);
    return rc;
}
