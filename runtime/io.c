/*
 * io.c — the I/O loop bridge: owns the I/O thread, its libuv loop, the queue
 * of work other threads hand to it (dx_io_call) and the stop hooks that let
 * modules on the loop close their handles before the loop is closed.
 *
 * The queue is a mutex-guarded FIFO list woken by one uv_async_t: a
 * submitter signals only when it made the queue non-empty, and the loop
 * takes the whole list at once, so a burst of submissions costs one wake-up.
 * The uv_async_send happens under the same mutex that tells a submitter the
 * loop runs, so no submitter can signal a handle that stop already closed.
 *
 * Hosted mode (dx_io_start_hosted): the loop is the host's and its thread
 * is the host's; there is no I/O thread to start or join, and stop closes
 * only what dspex opened (the modules' hooks and the async handle), never
 * the host's own handles.
 */
#include "dspex/io.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "dspex/alloc.h"
#include "dspex/error.h"

enum { IO_STOPPED = 0, IO_RUNNING, IO_STOPPING };

typedef struct work {
    struct work *next;
    void (*fn)(void *arg);
    void *arg;
} work;

static struct {
    /* Serialises start and stop against each other. */
    pthread_mutex_t life;
    /* Guards state and the queue. */
    pthread_mutex_t mu;
    int state;
    work *head;
    work *tail;
    /* Loop thread only. */
    uv_loop_t own_loop; /* the I/O thread's */
    uv_loop_t *loop;    /* &own_loop, or the host's */
    bool hosted;
    uv_async_t async;
    work *hooks; /* LIFO: the last registered runs first */
    bool closing;
    pthread_t thread;
} g = {
    .life = PTHREAD_MUTEX_INITIALIZER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
};

static _Thread_local bool on_loop;

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

static void on_async(uv_async_t *h)
{
    (void)h;
    if (g.closing)
        return;
    bool stopping;
    for (;;) {
        pthread_mutex_lock(&g.mu);
        work *w = g.head;
        g.head = g.tail = NULL;
        stopping = g.state == IO_STOPPING;
        pthread_mutex_unlock(&g.mu);
        if (w == NULL)
            break;
        run_list(w);
    }
    if (!stopping)
        return;
    /* No work can be queued any more (submitters see IO_STOPPING), and
     * everything queued before has run: let the modules close up. */
    g.closing = true;
    work *hk = g.hooks;
    g.hooks = NULL;
    run_list(hk);
    if (g.hosted) {
        /* The other handles on the loop are the host's. */
        uv_close((uv_handle_t *)&g.async, NULL);
        return;
    }
    /* A handle a module left open would keep the loop running forever:
     * close it (this closes the async handle too). */
    uv_walk(g.loop, close_any, NULL);
}

static void *loop_main(void *arg)
{
    (void)arg;
    on_loop = true;
    pthread_setname_np(pthread_self(), "dx-io");
    uv_run(g.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(g.loop) == UV_EBUSY) {
        /* A module left a handle open; close it rather than leak the loop. */
        uv_walk(g.loop, close_any, NULL);
        uv_run(g.loop, UV_RUN_DEFAULT);
        uv_loop_close(g.loop);
    }
    on_loop = false;
    return NULL;
}

int dx_io_start(void)
{
    if (on_loop)
        return DX_ESTATE;
    pthread_mutex_lock(&g.mu);
    int st = g.state;
    pthread_mutex_unlock(&g.mu);
    if (st == IO_STOPPING)
        return DX_ESTATE;
    if (st == IO_RUNNING)
        return DX_OK;

    pthread_mutex_lock(&g.life);
    pthread_mutex_lock(&g.mu);
    st = g.state;
    pthread_mutex_unlock(&g.mu);
    if (st != IO_STOPPED) {
        pthread_mutex_unlock(&g.life);
        return st == IO_RUNNING ? DX_OK : DX_ESTATE;
    }
    if (uv_loop_init(&g.own_loop) != 0) {
        pthread_mutex_unlock(&g.life);
        return DX_ESYS;
    }
    g.loop = &g.own_loop;
    g.hosted = false;
    if (uv_async_init(g.loop, &g.async, on_async) != 0) {
        uv_loop_close(g.loop);
        pthread_mutex_unlock(&g.life);
        return DX_ESYS;
    }
    g.closing = false;
    g.hooks = NULL;

    /* The I/O thread takes no asynchronous signals: SIGPIPE from a peer that
     * closed must not end the OS process (curl runs with CURLOPT_NOSIGNAL),
     * and SIGINT/SIGTERM belong to the application's threads. Faults stay
     * deliverable. The thread inherits the mask it is created with. */
    sigset_t all, old;
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    sigdelset(&all, SIGABRT);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&g.thread, NULL, loop_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        uv_close((uv_handle_t *)&g.async, NULL);
        uv_run(g.loop, UV_RUN_DEFAULT);
        uv_loop_close(g.loop);
        pthread_mutex_unlock(&g.life);
        return DX_ESYS;
    }
    pthread_mutex_lock(&g.mu);
    g.state = IO_RUNNING;
    pthread_mutex_unlock(&g.mu);
    pthread_mutex_unlock(&g.life);
    return DX_OK;
}

int dx_io_start_hosted(struct uv_loop_s *loop)
{
    if (loop == NULL)
        return DX_EINVAL;
    if (on_loop)
        return DX_ESTATE;
    pthread_mutex_lock(&g.life);
    pthread_mutex_lock(&g.mu);
    int st = g.state;
    pthread_mutex_unlock(&g.mu);
    if (st != IO_STOPPED) {
        pthread_mutex_unlock(&g.life);
        return DX_ESTATE;
    }
    if (uv_async_init(loop, &g.async, on_async) != 0) {
        pthread_mutex_unlock(&g.life);
        return DX_ESYS;
    }
    g.loop = loop;
    g.hosted = true;
    g.closing = false;
    g.hooks = NULL;
    on_loop = true;
    pthread_mutex_lock(&g.mu);
    g.state = IO_RUNNING;
    pthread_mutex_unlock(&g.mu);
    pthread_mutex_unlock(&g.life);
    return DX_OK;
}

/* Stop in hosted mode, on the host's loop thread: what on_async does when
 * it sees the stop, done now (queued work, the hooks, closing the async
 * handle); the closes complete on the host's next turns of its loop. */
static int stop_hosted(void)
{
    pthread_mutex_lock(&g.life);
    pthread_mutex_lock(&g.mu);
    g.state = IO_STOPPING;
    pthread_mutex_unlock(&g.mu);
    on_async(&g.async);
    pthread_mutex_lock(&g.mu);
    g.state = IO_STOPPED;
    pthread_mutex_unlock(&g.mu);
    g.hosted = false;
    on_loop = false;
    pthread_mutex_unlock(&g.life);
    return DX_OK;
}

int dx_io_stop(void)
{
    if (on_loop && g.hosted)
        return stop_hosted();
    if (on_loop)
        return DX_ESTATE;
    pthread_mutex_lock(&g.life);
    if (g.hosted) {
        /* Only the host's loop thread may run the stop. */
        pthread_mutex_unlock(&g.life);
        return DX_ESTATE;
    }
    pthread_mutex_lock(&g.mu);
    if (g.state != IO_RUNNING) {
        pthread_mutex_unlock(&g.mu);
        pthread_mutex_unlock(&g.life);
        return DX_OK;
    }
    g.state = IO_STOPPING;
    uv_async_send(&g.async);
    pthread_mutex_unlock(&g.mu);

    pthread_join(g.thread, NULL);

    pthread_mutex_lock(&g.mu);
    g.state = IO_STOPPED;
    pthread_mutex_unlock(&g.mu);
    pthread_mutex_unlock(&g.life);
    return DX_OK;
}

bool dx_io_running(void)
{
    pthread_mutex_lock(&g.mu);
    bool r = g.state == IO_RUNNING;
    pthread_mutex_unlock(&g.mu);
    return r;
}

int dx_io_call(void (*fn)(void *arg), void *arg)
{
    if (fn == NULL)
        return DX_EINVAL;
    work *w = dx_malloc(sizeof *w);
    if (w == NULL)
        return DX_ENOMEM;
    w->next = NULL;
    w->fn = fn;
    w->arg = arg;
    for (;;) {
        pthread_mutex_lock(&g.mu);
        if (g.state == IO_RUNNING) {
            bool was_empty = g.head == NULL;
            if (g.tail != NULL)
                g.tail->next = w;
            else
                g.head = w;
            g.tail = w;
            if (was_empty)
                uv_async_send(&g.async);
            pthread_mutex_unlock(&g.mu);
            return DX_OK;
        }
        int st = g.state;
        pthread_mutex_unlock(&g.mu);
        int rc = st == IO_STOPPING ? DX_ESTATE : dx_io_start();
        if (rc != DX_OK) {
            dx_free(w);
            return rc;
        }
    }
}

struct uv_loop_s *dx_io_loop(void)
{
    return on_loop ? g.loop : NULL;
}

bool dx_io_on_loop_thread(void)
{
    return on_loop;
}

int dx_io_at_stop(void (*fn)(void *arg), void *arg)
{
    if (!on_loop || g.closing)
        return DX_ESTATE;
    if (fn == NULL)
        return DX_EINVAL;
    work *h = dx_malloc(sizeof *h);
    if (h == NULL)
        return DX_ENOMEM;
    h->fn = fn;
    h->arg = arg;
    h->next = g.hooks;
    g.hooks = h;
    return DX_OK;
}
