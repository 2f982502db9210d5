/*
 * dist_node.c — a small dspex node the distribution tests run as a separate
 * OS process: `dist_node NAME COOKIE MODE`. It prints READY once its node
 * is published, then serves until killed or told to stop.
 *
 * Modes: `sink` registers a process `sink` that counts {seq, I} messages,
 * answers {ping, From} with {pong, SelfPid}, and on {done, From, K}
 * replies {count, N, Sum, InOrder} and then sends K messages {seq, I} back
 * to From followed by {sent, K}; `idle` only runs the node (for cookie
 * tests). `stop` (an atom sent to `sink`) ends the program, and so does
 * SIGTERM: the node stops and the program returns from main, so a coverage
 * build writes this process's counters too (SIGKILL, which some tests use
 * on purpose, writes none). Beside `sink`,
 * mode sink runs the server `calc` (below). `worker` and `tpworker` work
 * for a distributed Evaluate / optimization coordinator (below).
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dspex/dist_eval.h"
#include "dspex/lm.h"
#include "dspex/module.h"
#include "dspex/node.h"
#include "dspex/signature.h"
#include "dspex/sim.h"
#include "dist_eval_setup.h"
#include "dist_tp_setup.h"
#include "dspex/lmserver.h"
#include "dspex/runtime.h"
#include "dspex/server.h"

/* `calc`: a server that answers a call with tag 7 and integer N with tag 8
 * and 2N, answers tag 10 with the term of the last cast, and crashes on
 * tag 9. */
typedef struct calc {
    dx_term *last;
    dx_ptie *tie; /* frees the state when tag 9 crashes the server */
} calc;

static void calc_free(void *obj)
{
    calc *c = obj;
    dx_term_free(c->last);
    dx_free(c);
}

static int calc_init(void *arg, void **state, dx_term **reason)
{
    (void)arg;
    (void)reason;
    calc *c = dx_calloc(1, sizeof(*c));
    if (c != NULL)
        c->tie = dx_ptie_new(c, calc_free);
    *state = c;
    return c ? DX_OK : DX_ENOMEM;
}

static dx_srv_ret calc_call(void *state, dx_msg *req, dx_from from,
                            dx_msg **reply, dx_term **reason)
{
    (void)from;
    (void)reason;
    calc *c = state;
    if (req->tag == 9)
        dx_exit_self(dx_atom("boom"));
    int64_t n = 0;
    *reply = dx_msg_new(req->tag == 10 ? 10 : 8);
    if (*reply == NULL)
        return DX_SRV_NOREPLY;
    if (req->tag == 10)
        (*reply)->term = c->last ? dx_term_copy(c->last) : NULL;
    else if (dx_int_value(req->term, &n))
        (*reply)->term = dx_int(2 * n);
    return DX_SRV_REPLY;
}

static dx_srv_ret calc_cast(void *state, dx_msg *m, dx_term **reason)
{
    (void)reason;
    calc *c = state;
    dx_term_free(c->last);
    c->last = dx_msg_take_term(m);
    return DX_SRV_NOREPLY;
}

static void calc_terminate(void *state, const dx_term *reason)
{
    (void)reason;
    calc *c = state;
    dx_ptie_cut(c->tie);
    calc_free(c);
}

static const dx_server_ops calc_ops = {.name = "calc",
                                       .terminate = calc_terminate,
                                       .init = calc_init,
                                       .handle_call = calc_call,
                                       .handle_cast = calc_cast};

static void start_calc(void *arg)
{
    (void)arg;
    dx_server_start(&calc_ops, NULL, &(dx_server_opts){.name = "calc"}, NULL,
                    NULL);
}

static void sink(void *arg)
{
    (void)arg;
    int64_t n = 0, sum = 0, last = -1;
    bool ordered = true;
    for (;;) {
        dx_msg *m;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            return;
        const dx_term *t = m->term;
        const dx_term *h = dx_term_at(t, 0);
        int64_t i;
        dx_pid from;
        if (dx_is_atom(t, "stop")) {
            dx_msg_free(m);
            return;
        } else if (dx_is_atom(h, "seq") && dx_int_value(dx_term_at(t, 1), &i)) {
            n++;
            sum += i;
            if (i != last + 1)
                ordered = false;
            last = i;
        } else if (dx_is_atom(h, "ping") &&
                   dx_pid_value(dx_term_at(t, 1), &from)) {
            dx_send_term(from, DX_TAG_TERM,
                         dx_tuple(2, dx_atom("pong"), dx_pid_term(dx_self())));
        } else if (dx_is_atom(h, "done") &&
                   dx_pid_value(dx_term_at(t, 1), &from) &&
                   dx_int_value(dx_term_at(t, 2), &i)) {
            dx_send_term(from, DX_TAG_TERM,
                         dx_tuple(4, dx_atom("count"), dx_int(n), dx_int(sum),
                                  dx_atom(ordered ? "true" : "false")));
            for (int64_t k = 0; k < i; k++) {
                int rc = dx_send_term(from, DX_TAG_TERM,
                                      dx_tuple(2, dx_atom("seq"), dx_int(k)));
                if (rc != DX_OK) {
                    fprintf(stderr, "dist_node: send %lld: %s\n", (long long)k,
                            dx_strerror(rc));
                    break;
                }
                if (k % 256 == 255)
                    dx_yield();
            }
            dx_send_term(from, DX_TAG_TERM,
                         dx_tuple(2, dx_atom("sent"), dx_int(i)));
            n = sum = 0;
            last = -1;
            ordered = true;
        }
        dx_msg_free(m);
    }
}

/* Mode worker: evaluate shards for the coordinator on argv[4] with the
 * same program and dataset as the test's single-node run (shared with
 * test_dist.c through dist_eval_setup below); with argv[5] = "die" the
 * node kills itself with SIGKILL as soon as it holds its first shard, with
 * "hang" its LM takes a minute to answer (maybe_hang). */
static char **g_argv;
static int g_argc;

/* With argv[5] = "hang": replace the LM "lm" with one served by a local
 * server that takes a minute to answer, so a shard only ends when it is
 * dropped. *slow is that server (NULL otherwise). */
static int maybe_hang(dx_lmserver **slow)
{
    *slow = NULL;
    if (g_argc <= 5 || strcmp(g_argv[5], "hang") != 0)
        return DX_OK;
    dx_server_stop(dx_whereis("lm"), NULL, 5000);
    int rc = dx_lmserver_start(&(dx_lmserver_opts){.latency_ms = 60000}, slow);
    if (rc != DX_OK)
        return rc;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1",
             dx_lmserver_port(*slow));
    dx_lm_client_opts lo = {
        .primary = {"openai-compatible/slow", url, "sk-test"}};
    return dx_lm_client_start(&lo, &(dx_server_opts){.name = "lm"}, NULL);
}

/* SIGTERM, taken by a thread of its own (blocked everywhere else): end the
 * main process (sink or worker), or the idle wait. */
static sigset_t term_set;
static _Atomic dx_pid main_pid;
static atomic_bool term_seen;

static void *term_waiter(void *arg)
{
    (void)arg;
    int sig;
    if (sigwait(&term_set, &sig) != 0)
        return NULL;
    atomic_store(&term_seen, true);
    dx_pid pid = atomic_load(&main_pid);
    if (pid.id != 0)
        dx_exit(pid, dx_atom("kill"));
    return NULL;
}
static _Atomic int worker_rc = 1;

static void on_shard(size_t start, size_t end, void *ud)
{
    (void)ud;
    printf("SHARD %zu %zu\n", start, end);
    if (g_argc > 5 && strcmp(g_argv[5], "die") == 0)
        raise(SIGKILL);
}

static void worker(void *arg)
{
    (void)arg;
    dx_module *prog = NULL;
    dx_dataset *ds = NULL;
    int rc = dist_eval_setup(&prog, &ds);
    dx_lmserver *slow = NULL;
    if (rc == DX_OK)
        rc = maybe_hang(&slow);
    if (rc == DX_OK) {
        dx_eval_opts eo = dist_eval_opts();
        size_t shards = 0;
        rc = dx_dist_eval_worker(g_argv[4], NULL, prog, ds, &eo, 30000,
                                 on_shard, NULL, &shards);
        printf("WORKER-DONE %zu %s\n", shards, dx_err_name(rc));
    }
    dx_module_free(prog);
    dx_dataset_free(ds);
    dx_server_stop(dx_whereis("lm"), NULL, 5000);
    dx_lmserver_stop_free(slow);
    atomic_store(&worker_rc, rc);
}

/* Mode tpworker: evaluate candidates for the distributed-optimization
 * coordinator on argv[4] (dist_tp_setup.h's program and valset); argv[5]
 * "die" and "hang" as for mode worker. */
static void on_tp_shard(size_t cand, size_t n, void *ud)
{
    (void)ud;
    printf("TPSHARD %zu %zu\n", cand, n);
    if (g_argc > 5 && strcmp(g_argv[5], "die") == 0)
        raise(SIGKILL);
}

static void tp_worker(void *arg)
{
    (void)arg;
    dx_module *prog = NULL;
    dx_dataset *train = NULL, *val = NULL;
    int rc = dist_tp_setup(&prog, &train, &val);
    dx_lmserver *slow = NULL;
    if (rc == DX_OK)
        rc = maybe_hang(&slow);
    if (rc == DX_OK) {
        dx_eval_opts eo = dist_tp_eval_opts();
        size_t shards = 0;
        rc = dx_dist_tp_worker(g_argv[4], NULL, prog, val, &eo, 60000,
                               on_tp_shard, NULL, &shards);
        printf("WORKER-DONE %zu %s\n", shards, dx_err_name(rc));
    }
    dx_module_free(prog);
    dx_dataset_free(train);
    dx_dataset_free(val);
    dx_server_stop(dx_whereis("lm"), NULL, 5000);
    dx_lmserver_stop_free(slow);
    atomic_store(&worker_rc, rc);
}

int main(int argc, char **argv)
{
    g_argv = argv;
    g_argc = argc;
    if (argc < 4) {
        fprintf(stderr, "usage: dist_node NAME COOKIE sink|idle\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Before any thread starts, so every thread inherits the mask. */
    sigemptyset(&term_set);
    sigaddset(&term_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &term_set, NULL);
    if (dx_runtime_start(&(dx_runtime_opts){.schedulers = 1}) != DX_OK)
        return 1;
    dx_node_opts o = {.name = argv[1], .cookie = argv[2]};
    int rc = dx_node_start(&o);
    if (rc != DX_OK) {
        fprintf(stderr, "dist_node: start: %s\n", dx_strerror(rc));
        dx_runtime_stop();
        return 1;
    }
    dx_pid pid = DX_NOPID;
    if (strcmp(argv[3], "sink") == 0) {
        dx_spawn_opt(sink, NULL, &(dx_spawn_opts){.name = "sink"}, &pid, NULL);
        dx_spawn(start_calc, NULL, NULL);
        while (dx_whereis("calc").id == 0)
            nanosleep(&(struct timespec){0, 5000000}, NULL);
    }
    if (strcmp(argv[3], "worker") == 0 && argc > 4)
        dx_spawn(worker, NULL, &pid);
    if (strcmp(argv[3], "tpworker") == 0 && argc > 4)
        dx_spawn(tp_worker, NULL, &pid);
    atomic_store(&main_pid, pid);
    pthread_t tw;
    pthread_create(&tw, NULL, term_waiter, NULL);
    pthread_detach(tw);
    printf("READY\n");
    if (pid.id != 0) {
        dx_wait_exit(pid, DX_INFINITY, NULL);
    } else {
        while (!atomic_load(&term_seen))
            nanosleep(&(struct timespec){0, 20000000}, NULL);
    }
    dx_node_stop();
    dx_runtime_stop();
    return 0;
}
