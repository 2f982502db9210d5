/*
 * stopper.c — the runtime's own thread for ending processes that no
 * scheduler can end.
 *
 * Two things need a thread that is not a scheduler:
 *
 * - A kill delivered to a process that runs on without calling the runtime
 *   (an endless pure-C loop). The process would act on it at its next
 *   runtime call, which never comes. The stopper watches each kill
 *   delivered to a running process; if the process is still in that run
 *   after STOP_GRACE, it signals the scheduler thread with SIGURG, and
 *   fault.c's handler ends the process where it stands when that point can
 *   be abandoned. Elsewhere the handler returns and the stopper tries again
 *   STOP_RETRY later.
 * - Kill deadlines (dx_spawn_opts.kill_after_ms). A deadline filed as a
 *   timer on a scheduler is not kept while that scheduler is held by such a
 *   loop, and the loop may be the very process the deadline is for, or
 *   share a scheduler with the process that would enforce it (an
 *   evaluation's coordinator). The stopper keeps these deadlines in a heap
 *   of its own and kills on time, whatever the schedulers are doing.
 *
 * The thread sleeps on a condition variable until the next watch or
 * deadline is due, so it costs no wake-ups while nothing is pending. It
 * starts before the schedulers and stops after them.
 */
#include <pthread.h>
#include <signal.h>

#include "dx_internal.h"

/* How long a killed process may run on before it is stopped where it is:
 * one that calls the runtime at all has acted on the kill long before. */
#define STOP_GRACE_NS (50 * 1000000LL)
/* Between tries while it stands where it cannot be stopped. */
#define STOP_RETRY_NS (2 * 1000000LL)

typedef struct stop_watch {
    dx_pid pid;
    uint32_t run; /* the process's `runs` when the kill came */
    bool shutdown;
    int64_t due_ns;
} stop_watch;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    pthread_t thread;
    bool started, quit;
    stop_watch *w;
    size_t n, cap;
    /* Kill deadlines: each process's kill_at, in a heap with its own lock
     * (taken after mu, never before it). */
    dx__timer_heap deadlines;
    /* What the thread sleeps until; INT64_MAX while it is looking at what
     * is due, so that a deadline filed meanwhile always signals it. */
    _Atomic int64_t sleep_until;
} stopper = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Under stopper.mu. A kill repeated in the same run (dx_runtime_stop sends
 * one every 50 ms) is watched once. Losing a watch to OOM leaves the
 * process as it was before the stopper existed. */
static void watch_add(const stop_watch *w)
{
    for (size_t i = 0; i < stopper.n; i++)
        if (stopper.w[i].pid.id == w->pid.id && stopper.w[i].run == w->run)
            return;
    if (stopper.n == stopper.cap) {
        size_t cap = stopper.cap ? stopper.cap * 2 : 8;
        stop_watch *nw = dx_realloc(stopper.w, cap * sizeof *nw);
        if (nw == NULL)
            return;
        stopper.w = nw;
        stopper.cap = cap;
    }
    stopper.w[stopper.n++] = *w;
}

void dx__stopper_watch(dx__proc *p, bool shutdown)
{
    pthread_mutex_lock(&stopper.mu);
    if (stopper.started && !stopper.quit) {
        stop_watch w = {.pid = p->pid,
                        .run = atomic_load(&p->runs),
                        .shutdown = shutdown,
                        .due_ns = dx__now_ns() + STOP_GRACE_NS};
        watch_add(&w);
        pthread_cond_signal(&stopper.cv);
    }
    pthread_mutex_unlock(&stopper.mu);
}

/* Signal the thread running w's process if it is still in the watched
 * run; true if it was (so it is watched again). Not under stopper.mu. */
static bool stop_try(const stop_watch *w)
{
    int entered;
    if (dx__ext_enter(&entered) != DX_OK)
        return false;
    bool again = false;
    dx__proc *p = dx__lookup(w->pid);
    if (p != NULL && atomic_load(&p->state) == DX__RUNNING &&
        atomic_load(&p->runs) == w->run) {
        dx__sched *s = p->home;
        atomic_store(&s->stop_shutdown, w->shutdown ? 1 : 0);
        atomic_store(&s->stop_pid, w->pid.id);
        again = pthread_kill(s->thread, SIGURG) == 0;
    }
    dx__ext_leave(entered);
    return again;
}

/* Kill deadlines (dx_spawn_opts.kill_after_ms). */

void dx__kill_deadline_file(dx__proc *p, int64_t ms)
{
    int64_t now = dx__now_ns();
    if (ms > (INT64_MAX - now) / 1000000)
        return; /* past the clock's end: never */
    p->kill_at.kind = DX__TIMER_KILL;
    p->kill_at.heap_idx = UINT32_MAX;
    p->kill_at.deadline_ns = now + ms * 1000000;
    p->has_kill_deadline = true;
    if (dx__timer_add(&stopper.deadlines, &p->kill_at) != DX_OK) {
        /* Never let it outlive its deadline: out of memory, it ends now. */
        p->has_kill_deadline = false;
        dx_kill(p->pid);
        return;
    }
    if (p->kill_at.deadline_ns < atomic_load(&stopper.sleep_until)) {
        pthread_mutex_lock(&stopper.mu);
        pthread_cond_signal(&stopper.cv);
        pthread_mutex_unlock(&stopper.mu);
    }
}

void dx__kill_deadline_cancel(dx__proc *p)
{
    if (p->has_kill_deadline) {
        dx__timer_remove(&stopper.deadlines, &p->kill_at);
        p->has_kill_deadline = false;
    }
}

/* The pids of up to max processes whose deadline has passed, their entries
 * taken out; *next is the earliest deadline left. The pid is read under the
 * heap's lock: a process that ends takes its entry out under that lock
 * before its control block can be reused. */
static size_t take_due_deadlines(int64_t now, dx_pid *pids, size_t max,
                                 int64_t *next)
{
    dx__timer_heap *h = &stopper.deadlines;
    size_t n = 0;
    pthread_mutex_lock(&h->mu);
    dx__timer *t;
    while (n < max && (t = dx__timer_pop_due_locked(h, now)) != NULL)
        pids[n++] = dx__container_of(t, dx__proc, kill_at)->pid;
    *next = dx__timer_peek_locked(h);
    pthread_mutex_unlock(&h->mu);
    return n;
}

#define BATCH 16

static void *stopper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&stopper.mu);
    while (!stopper.quit) {
        atomic_store(&stopper.sleep_until, INT64_MAX);
        int64_t now = dx__now_ns(), next = INT64_MAX;
        stop_watch due[BATCH];
        size_t ndue = 0;
        for (size_t i = 0; i < stopper.n;) {
            if (stopper.w[i].due_ns <= now && ndue < BATCH) {
                due[ndue++] = stopper.w[i];
                stopper.w[i] = stopper.w[--stopper.n];
            } else {
                if (stopper.w[i].due_ns < next)
                    next = stopper.w[i].due_ns;
                i++;
            }
        }
        dx_pid expired[BATCH];
        int64_t next_deadline;
        size_t nexpired =
            take_due_deadlines(now, expired, BATCH, &next_deadline);
        if (ndue > 0 || nexpired > 0) {
            pthread_mutex_unlock(&stopper.mu);
            /* dx_kill may come back here to watch the process it kills. */
            for (size_t k = 0; k < nexpired; k++)
                dx_kill(expired[k]);
            bool again[BATCH];
            for (size_t k = 0; k < ndue; k++)
                again[k] = stop_try(&due[k]);
            pthread_mutex_lock(&stopper.mu);
            for (size_t k = 0; k < ndue; k++) {
                if (!again[k])
                    continue;
                due[k].due_ns = dx__now_ns() + STOP_RETRY_NS;
                watch_add(&due[k]);
            }
            continue;
        }
        if (next_deadline < next)
            next = next_deadline;
        atomic_store(&stopper.sleep_until, next);
        if (next == INT64_MAX) {
            pthread_cond_wait(&stopper.cv, &stopper.mu);
        } else {
            struct timespec ts = {.tv_sec = next / 1000000000,
                                  .tv_nsec = next % 1000000000};
            pthread_cond_timedwait(&stopper.cv, &stopper.mu, &ts);
        }
    }
    pthread_mutex_unlock(&stopper.mu);
    return NULL;
}

int dx__stopper_start(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&stopper.cv, &ca);
    pthread_condattr_destroy(&ca);
    dx__timer_heap_init(&stopper.deadlines);
    stopper.quit = false;
    stopper.n = 0;
    atomic_store(&stopper.sleep_until, INT64_MAX);
    if (pthread_create(&stopper.thread, NULL, stopper_main, NULL) != 0) {
        pthread_cond_destroy(&stopper.cv);
        dx__timer_heap_destroy(&stopper.deadlines);
        return DX_ESYS;
    }
    pthread_mutex_lock(&stopper.mu);
    stopper.started = true;
    pthread_mutex_unlock(&stopper.mu);
    return DX_OK;
}

/* After the schedulers: every process has ended, so every deadline has
 * been taken out of the heap. */
void dx__stopper_stop(void)
{
    pthread_mutex_lock(&stopper.mu);
    if (!stopper.started) {
        pthread_mutex_unlock(&stopper.mu);
        return;
    }
    stopper.quit = true;
    stopper.started = false;
    pthread_cond_signal(&stopper.cv);
    pthread_mutex_unlock(&stopper.mu);
    pthread_join(stopper.thread, NULL);
    pthread_cond_destroy(&stopper.cv);
    dx__timer_heap_destroy(&stopper.deadlines);
    dx_free(stopper.w);
    stopper.w = NULL;
    stopper.n = stopper.cap = 0;
}
