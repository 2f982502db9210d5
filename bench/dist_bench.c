/*
 * dist_bench.c — messages per second between two nodes on loopback:
 * dspex -> dspex (a second dspex node in a child OS process) and
 * dspex -> BEAM (an erl node). Starts its own epmd on a private port.
 * Prints one machine-readable RESULT line per pair; see docs/benchmarks.md.
 *
 * Usage: dist-bench [N]   (N messages per run, default 200000)
 */
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dspex/node.h"
#include "dspex/runtime.h"

#define COOKIE "dxbench"

static long n_msgs = 200000;
static char peer[128];
static _Atomic int done;
static double rate;

static void quiet_exec(char *const argv[])
{
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execvp(argv[0], argv);
    _exit(127);
}

static void sink(void *arg)
{
    (void)arg;
    int64_t n = 0;
    for (;;) {
        dx_msg *m;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            return;
        dx_pid from;
        if (dx_is_atom(dx_term_at(m->term, 0), "done") &&
            dx_pid_value(dx_term_at(m->term, 1), &from)) {
            dx_send_term(from, DX_TAG_TERM,
                         dx_tuple(2, dx_atom("count"), dx_int(n)));
            n = 0;
        } else {
            n++;
        }
        dx_msg_free(m);
    }
}

static int run_sink(const char *name)
{
    dx_runtime_start(&(dx_runtime_opts){.schedulers = 1});
    if (dx_node_start(&(dx_node_opts){.name = name, .cookie = COOKIE}) != DX_OK)
        return 1;
    dx_pid pid;
    dx_spawn_opt(sink, NULL, &(dx_spawn_opts){.name = "sink"}, &pid, NULL);
    dx_wait_exit(pid, DX_INFINITY, NULL);
    return 0;
}

static void sender(void *arg)
{
    (void)arg;
    dx_pid to = dx_node_name_pid(peer, "sink");
    /* Warm up: connect and wait for the peer's sink to answer. */
    for (int tries = 0; tries < 200; tries++) {
        dx_send_term(to, DX_TAG_TERM,
                     dx_tuple(2, dx_atom("done"), dx_pid_term(dx_self())));
        dx_msg *m;
        if (dx_receive_any(100, &m) == DX_OK) {
            dx_msg_free(m);
            break;
        }
    }
    int64_t t0 = dx_now_ms();
    for (long i = 0; i < n_msgs; i++)
        dx_send_term(to, DX_TAG_TERM, dx_tuple(2, dx_atom("seq"), dx_int(i)));
    dx_send_term(to, DX_TAG_TERM,
                 dx_tuple(2, dx_atom("done"), dx_pid_term(dx_self())));
    dx_msg *m;
    int64_t got = -1;
    if (dx_receive_any(120000, &m) == DX_OK) {
        dx_int_value(dx_term_at(m->term, 1), &got);
        dx_msg_free(m);
    }
    int64_t ms = dx_now_ms() - t0;
    rate = got == n_msgs && ms > 0 ? (double)n_msgs * 1000.0 / (double)ms : 0;
    atomic_store(&done, 1);
}

static double measure(void)
{
    atomic_store(&done, 0);
    dx_spawn(sender, NULL, NULL);
    while (!atomic_load(&done)) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    return rate;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--sink") == 0)
        return run_sink(argv[2]);
    if (argc > 1)
        n_msgs = strtol(argv[1], NULL, 10);
    setvbuf(stdout, NULL, _IOLBF, 0);
    char port[16];
    snprintf(port, sizeof port, "%d", 26000 + (int)(getpid() % 9000));
    setenv("ERL_EPMD_PORT", port, 1);
    pid_t e = fork();
    if (e == 0) {
        char *a[] = {"epmd",
                     "-daemon",
                     "-address",
                     "127.0.0.1",
                     "-port",
                     port,
                     "-relaxed_command_check",
                     NULL};
        quiet_exec(a);
    }
    waitpid(e, NULL, 0);
    sleep(1);

    dx_runtime_start(&(dx_runtime_opts){.schedulers = 2});
    char self[128];
    snprintf(self, sizeof self, "bench%d@127.0.0.1", (int)getpid());
    if (dx_node_start(&(dx_node_opts){.name = self, .cookie = COOKIE}) !=
        DX_OK) {
        fprintf(stderr, "dist-bench: node start failed\n");
        return 1;
    }

    snprintf(peer, sizeof peer, "sink%d@127.0.0.1", (int)getpid());
    pid_t c = fork();
    if (c == 0) {
        char *a[] = {argv[0], "--sink", peer, NULL};
        quiet_exec(a);
    }
    double r = measure();
    printf("RESULT sys=dspex bench=dist_send pair=dspex_dspex n=%ld "
           "msgs_per_s=%.0f\n",
           n_msgs, r);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);

    snprintf(peer, sizeof peer, "beam%d@127.0.0.1", (int)getpid());
    pid_t b = fork();
    if (b == 0) {
        char *a[] = {"erl",
                     "-name",
                     peer,
                     "-setcookie",
                     COOKIE,
                     "-noshell",
                     "-eval",
                     "register(sink, self()), "
                     "L = fun L(N) -> receive {done, P} -> P ! {count, N}, "
                     "L(0); _ -> L(N + 1) end end, L(0).",
                     NULL};
        quiet_exec(a);
    }
    r = measure();
    printf("RESULT sys=dspex bench=dist_send pair=dspex_beam n=%ld "
           "msgs_per_s=%.0f\n",
           n_msgs, r);
    kill(b, SIGKILL);
    waitpid(b, NULL, 0);

    dx_node_stop();
    dx_runtime_stop();
    pid_t k = fork();
    if (k == 0) {
        char *a[] = {"epmd", "-port", port, "-kill", NULL};
        quiet_exec(a);
    }
    waitpid(k, NULL, 0);
    return 0;
}
