/*
 * dist_node.c — a small dspex node the distribution tests run as a separate
 * OS process: `dist_node NAME COOKIE MODE`. It prints READY once its node
 * is published, then serves until killed or told to stop.
 *
 * Modes: `sink` registers a process `sink` that counts {seq, I} messages,
 * answers {ping, From} with {pong, SelfPid}, and on {done, From, K}
 * replies {count, N, Sum, InOrder} and then sends K messages {seq, I} back
 * to From followed by {sent, K}; `idle` only runs the node (for cookie
 * tests). `stop` (an atom sent to `sink`) ends the program.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/node.h"
#include "dspex/runtime.h"

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

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: dist_node NAME COOKIE sink|idle\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
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
    if (strcmp(argv[3], "sink") == 0)
        dx_spawn_opt(sink, NULL, &(dx_spawn_opts){.name = "sink"}, &pid, NULL);
    printf("READY\n");
    if (pid.id != 0) {
        dx_wait_exit(pid, DX_INFINITY, NULL);
    } else {
        for (;;)
            dx_wait_exit(DX_NOPID, 1000, NULL);
    }
    dx_node_stop();
    dx_runtime_stop();
    return 0;
}
