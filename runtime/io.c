/*
 * io.c — the I/O loop bridge: owns the I/O threads, one libuv loop each
 * (the "lanes"), the queue of work other threads hand to each lane
 * (dx_io_call, dx_io_call_on) and the stop hooks that let modules on a loop
 * close their handles before it is closed.
 *
 * Each lane's queue is a FIFO list under the lane's own mutex, woken by an
 * eventfd the loop watches: a submitter signals only when it made the queue
 * non-empty, and the loop takes the whole list at once, so a burst of
 * submissions costs one wake-up. Not a uv_async_t: libuv's async wake-up
 * makes the woken loop spin until the sender has returned from its write,
 * and on a loaded machine the sender is often descheduled right there (up
 * to 997 pauses, then sched_yield, and again); that spin was ~5 % of all
 * CPU of a 256-wide evaluation on 2 vCPUs. Here the submitter signals after
 * releasing the mutex, and the woken loop has nothing to wait for. A lane
 * slot's eventfd lives as long as the OS process, so a signal that races a
 * stop lands in a descriptor that is still ours, and at worst wakes the
 * next start once for nothing. Lanes share nothing else: a module keeps
 * its loop state per lane (dx_io_lane() indexes it).
 *
 * Why more than one loop: everything the HTTP transport does per request
 * (curl's request and header handling, connection set-up, TLS) runs on a
 * loop thread, so one thread caps the calls a process can start at once;
 * a burst of new connections is set up on every lane in parallel.
 *
 * Hosted mode (dx_io_start_hosted): one lane, whose loop and thread are
 * the host's; there is no I/O thread to start or join, and stop closes
 * only what dspex opened (the modules' hooks and the wake-up watch), never
 * the host's own handles.
 */
#include "dspex/io.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "helper_thread.h"

enum { IO_STOPPED = 0, IO_RUNNING, IO_STOPPING };

/* Lanes when neither dx_io_set_threads nor DX_IO_THREADS says: two per CPU
 * up to this many. More lanes than CPUs because curl works through every
 * transfer a lane was handed in one go (a burst's connection set-ups one
 * after another, ~100 us each) and sends nothing until it is through: with
 * smaller batches the first requests go out sooner (eval-bench, 2 vCPU:
 * 256 at once on new connections, 1.21x the ideal wall time with two lanes,
 * 1.16-1.18x with four, no better with eight). An idle lane costs a
 * sleeping thread. */
#define DEFAULT_MAX_LANES 8

typedef struct work {
    struct work *next;
    void (*fn)(void *arg);
    void *arg;
} work;

typedef struct lane {
    unsigned index;
    /* Guards state and the queue. */
    pthread_mutex_t mu;
    int state;
    work *head;
    work *tail;
    /* Loop thread only. */
    uv_loop_t own_loop; /* the lane's thread's */
    uv_loop_t *loop;    /* &own_loop, or the host's */
    int wake_fd;    /* eventfd, kept for the OS process's life; -1: none yet */
    uv_poll_t wake; /* watches wake_fd */
    work *hooks;    /* LIFO: the last registered runs first */
    bool closing;
    pthread_t thread;
} lane;

static struct {
    /* Serialises start and stop against each other, and guards the fields
     * below it that are not atomic. */
    pthread_mutex_t life;
    _Atomic unsigned nlanes; /* while running; 0 when stopped */
    _Atomic bool hosted;
    unsigned wanted; /* dx_io_set_threads; 0: default */
    lane lanes[DX_IO_MAX_THREADS];
} g = {
    .life = PTHREAD_MUTEX_INITIALIZER,
};

static _Thread_local lane *my_lane;

static pthread_once_t lanes_once = PTHREAD_ONCE_INIT;

static void lanes_init(void)
{
    for (unsigned i = 0; i < DX_IO_MAX_THREADS; i++) {
        g.lanes[i].index = i;
        g.lanes[i].wake_fd = -1;
        pthread_mutex_init(&g.lanes[i].mu, NULL);
    }
}

static int lane_state(lane *l)
{
    pthread_mutex_lock(&l->mu);
    int st = l->state;
    pthread_mutex_unlock(&l->mu);
    return st;
}

static void set_lane_state(lane *l, int st)
{
    pthread_mutex_lock(&l->mu);
    l->state = st;
    pthread_mutex_unlock(&l->mu);
}

static void run_list(work *w)
{
    while (w != NULL) {
        work *next = w->next;
        w->fn(w->arg);
        dx_free(w);
        w = next;
    }
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Wake the lane's loop. A failed write can only be a counter at its
 * maximum, which means a wake-up is pending anyway. */
static void lane_signal(lane *l)
{
    uint64_t one = 1;
    (void)!write(l->wake_fd, &one, sizeof one);
}

/* Runs everything queued on the lane; on a stop, then the stop hooks and
 * the closing of the lane's handles. */
static void drain(lane *l)
{
    if (l->closing)
        return;
    bool stopping;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        work *w = l->head;
        l->head = l->tail = NULL;
        stopping = l->state == IO_STOPPING;
        pthread_mutex_unlock(&l->mu);
        if (w == NULL)
            break;
        run_list(w);
    }
    if (!stopping)
        return;
    /* No work can be queued any more (submitters see IO_STOPPING), and
     * everything queued before has run: let the modules close up. */
    l->closing = true;
    work *hk = l->hooks;
    l->hooks = NULL;
    run_list(hk);
    if (atomic_load(&g.hosted)) {
        /* The other handles on the loop are the host's. */
        uv_close((uv_handle_t *)&l->wake, NULL);
        return;
    }
    /* A handle a module left open would keep the loop running forever:
     * close it (this closes the wake-up watch too). */
    uv_walk(l->loop, close_any, NULL);
}

static void on_wake(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    lane *l = h->data;
    uint64_t signals;
    (void)!read(l->wake_fd, &signals, sizeof signals); /* re-arms it */
    drain(l);
}

static void *loop_main(void *arg)
{
    lane *l = arg;
    my_lane = l;
    char name[16] = "dx-io";
    if (l->index > 0)
        snprintf(name, sizeof name, "dx-io-%u", l->index % 100u);
    pthread_setname_np(pthread_self(), name);
    uv_run(l->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(l->loop) == UV_EBUSY) {
        /* A module left a handle open; close it rather than leak the loop. */
        uv_walk(l->loop, close_any, NULL);
        uv_run(l->loop, UV_RUN_DEFAULT);
        uv_loop_close(l->loop);
    }
    my_lane = NULL;
    return NULL;
}

/* The loop and wake-up watch of a lane (not its thread). g.life held. */
static int lane_open(lane *l, uv_loop_t *host)
{
    if (l->wake_fd < 0)
        l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->wake_fd < 0)
        return DX_ESYS;
    if (host == NULL && uv_loop_init(&l->own_loop) != 0)
        return DX_ESYS;
    l->loop = host != NULL ? host : &l->own_loop;
    if (uv_poll_init(l->loop, &l->wake, l->wake_fd) != 0) {
        if (host == NULL)
            uv_loop_close(l->loop);
        return DX_ESYS;
    }
    l->wake.data = l;
    if (uv_poll_start(&l->wake, UV_READABLE, on_wake) != 0) {
        /* On the host's loop the close completes on its next turn (the
         * lane is static storage). */
        uv_close((uv_handle_t *)&l->wake, NULL);
        if (host == NULL) {
            uv_run(l->loop, UV_RUN_DEFAULT);
            uv_loop_close(l->loop);
        }
        return DX_ESYS;
    }
    l->closing = false;
    l->hooks = NULL;
    l->head = l->tail = NULL;
    return DX_OK;
}

/* Undo lane_open of a lane whose thread never started. g.life held. */
static void lane_discard(lane *l)
{
    uv_close((uv_handle_t *)&l->wake, NULL);
    uv_run(l->loop, UV_RUN_DEFAULT);
    uv_loop_close(l->loop);
}

static unsigned lanes_wanted(void)
{
    unsigned n = g.wanted;
    const char *env = getenv("DX_IO_THREADS");
    if (n == 0 && env != NULL && *env != '\0') {
        char *end = NULL;
        unsigned long v = strtoul(env, &end, 10);
        if (end != NULL && *end == '\0' && v > 0)
            n = v > DX_IO_MAX_THREADS ? DX_IO_MAX_THREADS : (unsigned)v;
    }
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus < 1                       ? 2
            : cpus > DEFAULT_MAX_LANES / 2 ? DEFAULT_MAX_LANES
                                           : 2 * (unsigned)cpus;
    }
    return n;
}

/* Stop and join lanes [0, n) (threads already running). g.life held. */
static void stop_lanes(unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        lane *l = &g.lanes[i];
        pthread_mutex_lock(&l->mu);
        l->state = IO_STOPPING;
        pthread_mutex_unlock(&l->mu);
        lane_signal(l);
    }
    for (unsigned i = 0; i < n; i++) {
        pthread_join(g.lanes[i].thread, NULL);
        set_lane_state(&g.lanes[i], IO_STOPPED);
    }
}

int dx_io_start(void)
{
    if (my_lane != NULL)
        return DX_ESTATE;
    pthread_once(&lanes_once, lanes_init);
    int st = lane_state(&g.lanes[0]);
    if (st == IO_STOPPING)
        return DX_ESTATE;
    /* Lane 0 runs before the others start: only a published lane count
     * means the start is over (a caller that goes on to share work out by
     * dx_io_threads() must see every lane). */
    if (st == IO_RUNNING && atomic_load(&g.nlanes) > 0)
        return DX_OK;

    pthread_mutex_lock(&g.life);
    st = lane_state(&g.lanes[0]);
    if (st != IO_STOPPED) {
        pthread_mutex_unlock(&g.life);
        return st == IO_RUNNING ? DX_OK : DX_ESTATE;
    }
    unsigned n = lanes_wanted();
    atomic_store(&g.hosted, false);

    /* The I/O threads take no asynchronous signals (helper_thread.h; curl
     * runs with CURLOPT_NOSIGNAL). */
    sigset_t all, old;
    dx__helper_thread_sigmask(&all);
    unsigned started = 0;
    int rc = DX_OK;
    for (; started < n; started++) {
        lane *l = &g.lanes[started];
        rc = lane_open(l, NULL);
        if (rc != DX_OK)
            break;
        /* Running before its thread, so stop_lanes can stop it. */
        set_lane_state(l, IO_RUNNING);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int prc = pthread_create(&l->thread, NULL, loop_main, l);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (prc != 0) {
            set_lane_state(l, IO_STOPPED);
            lane_discard(l);
            rc = DX_ESYS;
            break;
        }
    }
    if (started == 0) {
        pthread_mutex_unlock(&g.life);
        return rc;
    }
    /* Fewer lanes than wanted still make a working transport. */
    atomic_store(&g.nlanes, started);
    pthread_mutex_unlock(&g.life);
    return DX_OK;
}

int dx_io_start_hosted(struct uv_loop_s *loop)
{
    if (loop == NULL)
        return DX_EINVAL;
    if (my_lane != NULL)
        return DX_ESTATE;
    pthread_once(&lanes_once, lanes_init);
    pthread_mutex_lock(&g.life);
    lane *l = &g.lanes[0];
    if (lane_state(l) != IO_STOPPED) {
        pthread_mutex_unlock(&g.life);
        return DX_ESTATE;
    }
    if (lane_open(l, loop) != DX_OK) {
        pthread_mutex_unlock(&g.life);
        return DX_ESYS;
    }
    atomic_store(&g.hosted, true);
    my_lane = l;
    set_lane_state(l, IO_RUNNING);
    atomic_store(&g.nlanes, 1u);
    pthread_mutex_unlock(&g.life);
    return DX_OK;
}

/* Stop in hosted mode, on the host's loop thread: what drain does when it
 * sees the stop, done now (queued work, the hooks, closing the wake-up
 * watch); the closes complete on the host's next turns of its loop. */
static int stop_hosted(void)
{
    lane *l = my_lane;
    pthread_mutex_lock(&g.life);
    set_lane_state(l, IO_STOPPING);
    drain(l);
    set_lane_state(l, IO_STOPPED);
    atomic_store(&g.nlanes, 0u);
    atomic_store(&g.hosted, false);
    my_lane = NULL;
    pthread_mutex_unlock(&g.life);
    return DX_OK;
}

int dx_io_stop(void)
{
    if (my_lane != NULL && atomic_load(&g.hosted))
        return stop_hosted();
    if (my_lane != NULL)
        return DX_ESTATE;
    pthread_once(&lanes_once, lanes_init);
    pthread_mutex_lock(&g.life);
    if (atomic_load(&g.hosted)) {
        /* Only the host's loop thread may run the stop. */
        pthread_mutex_unlock(&g.life);
        return DX_ESTATE;
    }
    unsigned n = atomic_load(&g.nlanes);
    if (n == 0 || lane_state(&g.lanes[0]) != IO_RUNNING) {
        pthread_mutex_unlock(&g.life);
        return DX_OK;
    }
    stop_lanes(n);
    atomic_store(&g.nlanes, 0u);
    pthread_mutex_unlock(&g.life);
    return DX_OK;
}

bool dx_io_running(void)
{
    pthread_once(&lanes_once, lanes_init);
    return lane_state(&g.lanes[0]) == IO_RUNNING;
}

int dx_io_set_threads(unsigned n)
{
    if (n > DX_IO_MAX_THREADS)
        return DX_EINVAL;
    pthread_once(&lanes_once, lanes_init);
    pthread_mutex_lock(&g.life);
    int rc = DX_OK;
    if (atomic_load(&g.nlanes) != 0)
        rc = DX_ESTATE;
    else
        g.wanted = n;
    pthread_mutex_unlock(&g.life);
    return rc;
}

unsigned dx_io_threads(void)
{
    return atomic_load(&g.nlanes);
}

int dx_io_lane(void)
{
    return my_lane != NULL ? (int)my_lane->index : -1;
}

/* Queue fn on lane index; start_if_stopped: start the threads when they do
 * not run (dx_io_call_on), else refuse (dx_io_post_on). */
static int submit(unsigned index, void (*fn)(void *arg), void *arg,
                  bool start_if_stopped)
{
    if (fn == NULL)
        return DX_EINVAL;
    pthread_once(&lanes_once, lanes_init);
    work *w = dx_malloc(sizeof *w);
    if (w == NULL)
        return DX_ENOMEM;
    w->next = NULL;
    w->fn = fn;
    w->arg = arg;
    for (;;) {
        unsigned n = atomic_load(&g.nlanes);
        lane *l = &g.lanes[n > 0 ? index % n : 0];
        pthread_mutex_lock(&l->mu);
        if (l->state == IO_RUNNING) {
            bool was_empty = l->head == NULL;
            if (l->tail != NULL)
                l->tail->next = w;
            else
                l->head = w;
            l->tail = w;
            pthread_mutex_unlock(&l->mu);
            if (was_empty)
                lane_signal(l);
            return DX_OK;
        }
        int st = l->state;
        pthread_mutex_unlock(&l->mu);
        int rc =
            st == IO_STOPPING || !start_if_stopped ? DX_ESTATE : dx_io_start();
        if (rc != DX_OK) {
            dx_free(w);
            return rc;
        }
    }
}

int dx_io_call_on(unsigned index, void (*fn)(void *arg), void *arg)
{
    return submit(index, fn, arg, true);
}

int dx_io_post_on(unsigned index, void (*fn)(void *arg), void *arg)
{
    return submit(index, fn, arg, false);
}

int dx_io_call(void (*fn)(void *arg), void *arg)
{
    return dx_io_call_on(0, fn, arg);
}

struct uv_loop_s *dx_io_loop(void)
{
    return my_lane != NULL ? my_lane->loop : NULL;
}

bool dx_io_on_loop_thread(void)
{
    return my_lane != NULL;
}

int dx_io_at_stop(void (*fn)(void *arg), void *arg)
{
    lane *l = my_lane;
    if (l == NULL || l->closing)
        return DX_ESTATE;
    if (fn == NULL)
        return DX_EINVAL;
    work *h = dx_malloc(sizeof *h);
    if (h == NULL)
        return DX_ENOMEM;
    h->fn = fn;
    h->arg = arg;
    h->next = l->hooks;
    l->hooks = h;
    return DX_OK;
}
