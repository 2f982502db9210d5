/*
 * serve_bench.c — the latency the HTTP service adds to one program call,
 * one call at a time: the same cached Predict (the sim model's answer from
 * the LM client's in-memory cache) called n times with dx_module_call from
 * a process (as a served request calls it), then n times as POST
 * /v1/programs/qa/predict over one keep-alive loopback connection. With
 * one request in flight both figures are dominated by how fast idle
 * scheduler threads wake, so the difference is small and noisy; the
 * service's CPU cost per request under load is measured by
 * bench/serve_bench.sh (wrk, the server's CPU time / requests).
 *
 *   serve-bench <n>
 *
 * Prints:
 *   RESULT sys=dspex bench=serve_latency_direct n=<n> us_per_call=..
 *   RESULT sys=dspex bench=serve_latency_http n=<n> us_per_call=..
 *   RESULT sys=dspex bench=serve_latency_added us_per_call=..
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dspex/lm.h"
#include "dspex/module.h"
#include "dspex/program.h"
#include "dspex/runtime.h"
#include "dspex/serve.h"
#include "dspex/server.h"

static _Atomic int client_rc = 1;

static void start_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    dx_server_opts so = {.name = "lm"};
    atomic_store(&client_rc, dx_lm_client_start(&o, &so, NULL));
}

static void stop_client(void *arg)
{
    (void)arg;
    dx_server_stop(dx_whereis("lm"), NULL, 5000);
    atomic_store(&client_rc, 0);
}

static void wait_rc(void)
{
    while (atomic_load(&client_rc) == 1) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static int one_request(int fd, const char *req, size_t req_len)
{
    static char buf[65536];
    if (send(fd, req, req_len, MSG_NOSIGNAL) != (ssize_t)req_len)
        return -1;
    size_t len = 0;
    for (;;) {
        ssize_t k = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (k <= 0)
            return -1;
        len += (size_t)k;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        char *cl = strstr(buf, "Content-Length: ");
        if (end && cl &&
            len >= (size_t)(end + 4 - buf) + strtoul(cl + 16, NULL, 10))
            return strncmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
    }
}

typedef struct loop_args {
    const dx_module *m;
    const dx_example *in;
    long n;
    long errors;
    double wall_us;
} loop_args;

static void direct_loop(void *arg)
{
    loop_args *a = arg;
    dx_call_opts co = {0};
    dx_diag d = {0};
    /* Warm-up; the first call fills the cache. */
    for (long i = 0; i < 100 + a->n; i++) {
        if (i == 100)
            a->wall_us = now_s();
        dx_prediction *p = NULL;
        if (dx_module_call(a->m, a->in, &co, &p, NULL, &d) != DX_OK)
            a->errors++;
        dx_prediction_free(p);
    }
    a->wall_us = (now_s() - a->wall_us) / (double)a->n * 1e6;
    atomic_store(&client_rc, 0);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 20000;
    if (n <= 0) {
        fprintf(stderr, "usage: serve-bench <n>\n");
        return 2;
    }
    if (dx_runtime_start(NULL) != DX_OK)
        return 1;
    dx_spawn(start_client, NULL, NULL);
    wait_rc();
    if (atomic_load(&client_rc) != DX_OK)
        return 1;
    dx_module *m = NULL;
    dx_diag d = {0};
    dx_program_single("predict", "question -> answer", NULL, &m, &d);
    dx_example *in = dx_example_new();
    dx_example_set_str(in, "question", "What is the capital of France?");
    /* The direct loop runs in a process, as a served request's call
     * does (a host thread's dx_module_call waits differently). */
    loop_args la = {m, in, n, 0, 0};
    atomic_store(&client_rc, 1);
    dx_spawn(direct_loop, &la, NULL);
    wait_rc();
    long errors = la.errors;
    double direct = la.wall_us;

    dx_serve_program prog = {.name = "qa", .module = m};
    dx_serve_opts so = {.programs = &prog, .nprograms = 1};
    dx_serve *srv = NULL;
    if (dx_serve_start(&so, &srv, &d) != DX_OK) {
        fprintf(stderr, "serve-bench: %s\n", d.msg);
        return 1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)dx_serve_port(srv))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        return 1;
    static const char body[] =
        "{\"inputs\":{\"question\":\"What is the capital of France?\"}}";
    char req[512];
    int rl = snprintf(req, sizeof req,
                      "POST /v1/programs/qa/predict HTTP/1.1\r\nHost: x\r\n"
                      "Content-Type: application/json\r\nContent-Length: "
                      "%zu\r\n\r\n%s",
                      sizeof body - 1, body);
    for (long i = 0; i < 100; i++)
        one_request(fd, req, (size_t)rl);
    double t0 = now_s();
    for (long i = 0; i < n; i++)
        if (one_request(fd, req, (size_t)rl) != 0)
            errors++;
    double http = (now_s() - t0) / (double)n * 1e6;
    close(fd);
    dx_serve_stop(srv, 5000);
    atomic_store(&client_rc, 1);
    dx_spawn(stop_client, NULL, NULL);
    wait_rc();
    dx_runtime_stop();
    dx_example_free(in);
    dx_module_free(m);
    printf(
        "RESULT sys=dspex bench=serve_latency_direct n=%ld us_per_call=%.1f\n",
        n, direct);
    printf("RESULT sys=dspex bench=serve_latency_http n=%ld us_per_call=%.1f\n",
           n, http);
    printf("RESULT sys=dspex bench=serve_latency_added us_per_call=%.1f "
           "errors=%ld\n",
           http - direct, errors);
    return errors ? 1 : 0;
}
