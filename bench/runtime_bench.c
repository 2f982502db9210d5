/*
 * runtime_bench.c — the kernel benchmark program, `runtime-bench <bench> <n>`.
 *
 * It owns the workloads that measure the actor kernel against its targets
 * (issue 2) and against BEAM (bench/erlang/runtime_bench.erl runs the same
 * work): process start-up and memory, message round trips, a token ring, the
 * skynet tree, a fan-out producer and supervisor restarts (the latter lives in
 * bench_restart.c). Each run prints exactly one line
 *     RESULT sys=dspex bench=<bench> n=<n> time_s=.. rate=.. unit=.. [k=v ...]
 * that bench/compare.sh parses.
 *
 * The rules that keep the numbers honest: the driver is itself a dspex
 * process (dx_run's main), every message is one dx_send through a mailbox (no
 * batching), and timing uses the monotonic clock from inside the driver.
 * Scheduler threads come from DX_SCHEDULERS, else one per online CPU.
 */
#include <dspex/runtime.h>
#include <dspex/server.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Written by another part of the benchmark (bench_restart.c); weak so this
 * program still builds and runs the other benchmarks without it. */
extern int dx_bench_restart(long n) __attribute__((weak));

/* User tags of the benchmark messages. Ring and skynet carry their counter
 * or sum in the tag itself, so STOP sits far above any counter. */
enum {
    TAG_GO = 1,
    TAG_DONE = 2,
    TAG_PING = 3,
    TAG_PONG = 4,
    TAG_WORK = 5,
    TAG_ACK = 6,
};
#define TAG_STOP INT64_MAX

#define RING_SIZE 1000
#define FANOUT_WORKERS 100
#define SKYNET_FANOUT 10
/* A driver receive that waits this long means the kernel lost a message or
 * hung; report it instead of waiting forever. */
#define RECV_TIMEOUT_MS 60000

typedef int (*bench_fn)(long n);

static struct {
    dx_pid driver;
    const char *bench;
    bench_fn fn;
    long n;
    int status; /* process exit code */
    struct timespec t_main;
    /* Tables and text live here, not in driver frames: a parked driver's
     * frames are copied out, so big locals would be timed too. */
    dx_pid ring[RING_SIZE];
    dx_pid workers[FANOUT_WORKERS];
    char extra[256]; /* the k=v tail of the RESULT line */
} g;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* An API call that fails here leaves processes blocked that nobody will wake;
 * the run is worthless, so say which call failed and end the program. */
static void die(const char *what, int rc)
{
    fprintf(stderr, "runtime-bench: %s: %s: %s (%s)\n", g.bench, what,
            dx_err_name(rc), dx_strerror(rc));
    fflush(stderr);
    _exit(1);
}

static void check(int rc, const char *what)
{
    if (rc != DX_OK)
        die(what, rc);
}

/* VmRSS of this OS process in KiB, or -1. Kept out of line so its buffer is
 * never part of a driver frame that is saved when the driver parks. */
static __attribute__((noinline)) long rss_kb(void)
{
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[len] = '\0';
    const char *p = strstr(buf, "VmRSS:");
    if (p == NULL)
        return -1;
    return strtol(p + 6, NULL, 10);
}

/* Print the RESULT line; the benchmark has put its k=v tail in g.extra. */
static void report(double secs, double rate, const char *unit)
{
    printf("RESULT sys=dspex bench=%s n=%ld time_s=%.6f rate=%.1f unit=%s "
           "sched=%d%s%s\n",
           g.bench, g.n, secs, rate, unit, dx_runtime_schedulers(),
           g.extra[0] ? " " : "", g.extra);
    fflush(stdout);
}

/* Receive one message for the driver, failing the run on a timeout. */
static dx_msg *recv_or_die(const char *what, long got, long want)
{
    dx_msg *m = NULL;
    int rc = dx_receive_any(RECV_TIMEOUT_MS, &m);
    if (rc != DX_OK) {
        fprintf(stderr,
                "runtime-bench: %s: %s: got %ld of %ld messages, then %s\n",
                g.bench, what, got, want, dx_err_name(rc));
        fflush(stderr);
        _exit(1);
    }
    return m;
}

static void expect_tag(dx_msg *m, int64_t tag, const char *what)
{
    if (m->tag != tag) {
        fprintf(stderr, "runtime-bench: %s: %s: unexpected tag %lld\n", g.bench,
                what, (long long)m->tag);
        fflush(stderr);
        _exit(1);
    }
}

/* ---- noop ---------------------------------------------------------- */

/* Start-up cost: from main() to the driver running, and the resident size
 * of an idle runtime. */
static int bench_noop(long n)
{
    (void)n;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double secs = (double)(t.tv_sec - g.t_main.tv_sec) +
                  (double)(t.tv_nsec - g.t_main.tv_nsec) * 1e-9;
    snprintf(g.extra, sizeof g.extra, "rss_kb=%ld", rss_kb());
    report(secs, secs > 0 ? 1.0 / secs : 0.0, "starts/s");
    return 0;
}

/* ---- spawn --------------------------------------------------------- */

static void spawn_child(void *arg)
{
    (void)arg;
    dx_msg *m;
    if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
        return;
    dx_msg_free(m);
    check(dx_send_tag(g.driver, TAG_DONE), "child reply");
}

static int bench_spawn(long n)
{
    /* The pid table is touched before the first RSS sample so that
     * bytes_per_actor counts only what the processes themselves cost. */
    dx_pid *pids = dx_malloc((size_t)n * sizeof *pids);
    if (pids == NULL)
        die("pid table", DX_ENOMEM);
    memset(pids, 0, (size_t)n * sizeof *pids);
    long before = rss_kb();

    double t0 = now_s();
    for (long i = 0; i < n; i++)
        check(dx_spawn(spawn_child, NULL, &pids[i]), "dx_spawn");
    double t_spawned = now_s();
    long peak = rss_kb();

    for (long i = 0; i < n; i++)
        check(dx_send_tag(pids[i], TAG_GO), "send go");
    for (long i = 0; i < n; i++) {
        dx_msg *m = recv_or_die("collect replies", i, n);
        expect_tag(m, TAG_DONE, "collect replies");
        dx_msg_free(m);
    }
    double secs = now_s() - t0;
    dx_free(pids);

    snprintf(g.extra, sizeof g.extra,
             "spawn_s=%.6f rss_before_kb=%ld rss_peak_kb=%ld "
             "bytes_per_actor=%.0f",
             t_spawned - t0, before, peak,
             (double)(peak - before) * 1024.0 / (double)n);
    report(secs, (double)n / secs, "actors/s");
    return 0;
}

/* ---- pingpong ------------------------------------------------------ */

static void echo(void *arg)
{
    (void)arg;
    for (;;) {
        dx_msg *m;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            return;
        int64_t tag = m->tag;
        dx_pid from = m->from;
        dx_msg_free(m);
        if (tag == TAG_STOP)
            return;
        check(dx_send_tag(from, TAG_PONG), "pong");
    }
}

static int bench_pingpong(long n)
{
    dx_pid peer;
    check(dx_spawn(echo, NULL, &peer), "dx_spawn");
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        check(dx_send_tag(peer, TAG_PING), "ping");
        dx_msg *m = recv_or_die("round trip", i, n);
        expect_tag(m, TAG_PONG, "round trip");
        dx_msg_free(m);
    }
    double secs = now_s() - t0;
    check(dx_send_tag(peer, TAG_STOP), "stop");
    report(secs, 2.0 * (double)n / secs, "msgs/s");
    return 0;
}

/* ---- call ---------------------------------------------------------- */

/* A server's request/reply round trip: dx_call (monitor, request, reply,
 * demonitor), against gen_server:call on the BEAM side. */
static dx_srv_ret pong_call(void *state, dx_msg *request, dx_from from,
                            dx_msg **reply, dx_term **stop_reason)
{
    (void)state;
    (void)request;
    (void)from;
    (void)stop_reason;
    *reply = dx_msg_new(TAG_PONG);
    return *reply ? DX_SRV_REPLY : DX_SRV_STOP;
}

static int pong_init(void *arg, void **state, dx_term **stop_reason)
{
    (void)arg;
    (void)stop_reason;
    *state = NULL;
    return DX_OK;
}

static const dx_server_ops pong_ops = {
    .name = "bench_pong", .init = pong_init, .handle_call = pong_call};

static int bench_call(long n)
{
    dx_pid server;
    check(dx_server_start(&pong_ops, NULL, NULL, &server, NULL),
          "dx_server_start");
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        dx_msg *reply = NULL;
        check(dx_call(server, dx_msg_new(TAG_PING), RECV_TIMEOUT_MS, &reply),
              "dx_call");
        expect_tag(reply, TAG_PONG, "call");
        dx_msg_free(reply);
    }
    double secs = now_s() - t0;
    check(dx_server_stop(server, NULL, RECV_TIMEOUT_MS), "dx_server_stop");
    report(secs, (double)n / secs, "calls/s");
    return 0;
}

/* ---- ring ---------------------------------------------------------- */

/* Member i of the ring forwards the token to member i+1; the pid table is
 * complete before the token enters, and the token's send/receive orders the
 * table writes before this process reads them. */
static void ring_node(void *arg)
{
    size_t idx = (size_t)(uintptr_t)arg;
    dx_pid next = DX_NOPID;
    for (;;) {
        dx_msg *m;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            return;
        int64_t count = m->tag;
        dx_msg_free(m);
        if (count == TAG_STOP)
            return;
        if (count == 0) {
            check(dx_send_tag(g.driver, TAG_DONE), "ring done");
            continue;
        }
        if (dx_pid_is_none(next))
            next = g.ring[(idx + 1) % RING_SIZE];
        check(dx_send_tag(next, count - 1), "ring hop");
    }
}

static int bench_ring(long n)
{
    double t0 = now_s();
    for (size_t i = 0; i < RING_SIZE; i++)
        check(dx_spawn(ring_node, (void *)(uintptr_t)i, &g.ring[i]),
              "dx_spawn");
    double t_hop = now_s();
    check(dx_send_tag(g.ring[0], (int64_t)n), "inject token");
    dx_msg *m = recv_or_die("token", 0, 1);
    expect_tag(m, TAG_DONE, "token");
    dx_msg_free(m);
    double t1 = now_s();
    for (size_t i = 0; i < RING_SIZE; i++)
        check(dx_send_tag(g.ring[i], TAG_STOP), "stop");

    /* The rate counts hops only; setting up the ring is reported apart. */
    double secs = t1 - t_hop;
    snprintf(g.extra, sizeof g.extra, "ring_size=%d setup_s=%.6f", RING_SIZE,
             t_hop - t0);
    report(secs, (double)n / secs, "hops/s");
    return 0;
}

/* ---- skynet -------------------------------------------------------- */

typedef struct sky_arg {
    dx_pid parent;
    int64_t num;  /* number of the first leaf below this node */
    int64_t size; /* leaves below this node */
} sky_arg;

static void sky_node(void *arg);

static void sky_spawn(dx_pid parent, int64_t num, int64_t size)
{
    sky_arg *a = dx_malloc(sizeof *a);
    if (a == NULL)
        die("skynet arg", DX_ENOMEM);
    a->parent = parent;
    a->num = num;
    a->size = size;
    dx_spawn_opts o = {.arg_free = dx_free};
    check(dx_spawn_opt(sky_node, a, &o, NULL, NULL), "dx_spawn_opt");
}

/* A leaf sends its number; an inner node splits its leaves over at most
 * SKYNET_FANOUT children (evenly when N is a power of ten) and sends up the
 * sum of their answers. Values travel in the tag. */
static void sky_node(void *arg)
{
    const sky_arg *a = arg;
    if (a->size == 1) {
        check(dx_send_tag(a->parent, a->num), "leaf send");
        return;
    }
    int64_t k = a->size < SKYNET_FANOUT ? a->size : SKYNET_FANOUT;
    int64_t base = a->size / k, rem = a->size % k, num = a->num;
    dx_pid self = dx_self();
    for (int64_t i = 0; i < k; i++) {
        int64_t size = base + (i < rem ? 1 : 0);
        sky_spawn(self, num, size);
        num += size;
    }
    int64_t sum = 0;
    for (int64_t i = 0; i < k; i++) {
        dx_msg *m;
        check(dx_receive_any(DX_INFINITY, &m), "skynet receive");
        sum += m->tag;
        dx_msg_free(m);
    }
    check(dx_send_tag(a->parent, sum), "node send");
}

static int bench_skynet(long n)
{
    double t0 = now_s();
    sky_spawn(g.driver, 0, n);
    dx_msg *m = recv_or_die("sum", 0, 1);
    int64_t sum = m->tag;
    dx_msg_free(m);
    double secs = now_s() - t0;

    int64_t want = (int64_t)n * ((int64_t)n - 1) / 2;
    snprintf(g.extra, sizeof g.extra, "sum=%lld ok=%s", (long long)sum,
             sum == want ? "true" : "false");
    report(secs, (double)n / secs, "leaves/s");
    if (sum != want) {
        fprintf(stderr, "runtime-bench: skynet: sum %lld, expected %lld\n",
                (long long)sum, (long long)want);
        return 1;
    }
    return 0;
}

/* ---- fanout -------------------------------------------------------- */

static void worker(void *arg)
{
    (void)arg;
    for (;;) {
        dx_msg *m;
        if (dx_receive_any(DX_INFINITY, &m) != DX_OK)
            return;
        int64_t tag = m->tag;
        dx_msg_free(m);
        if (tag == TAG_STOP)
            return;
        check(dx_send_tag(g.driver, TAG_ACK), "ack");
    }
}

static int bench_fanout(long n)
{
    double t0 = now_s();
    for (int i = 0; i < FANOUT_WORKERS; i++)
        check(dx_spawn(worker, NULL, &g.workers[i]), "dx_spawn");
    for (long i = 0; i < n; i++)
        check(dx_send_tag(g.workers[i % FANOUT_WORKERS], TAG_WORK), "work");
    for (long i = 0; i < n; i++) {
        dx_msg *m = recv_or_die("acks", i, n);
        expect_tag(m, TAG_ACK, "acks");
        dx_msg_free(m);
    }
    double secs = now_s() - t0;
    for (int i = 0; i < FANOUT_WORKERS; i++)
        check(dx_send_tag(g.workers[i], TAG_STOP), "stop");
    snprintf(g.extra, sizeof g.extra, "workers=%d", FANOUT_WORKERS);
    report(secs, (double)n / secs, "msgs/s");
    return 0;
}

/* ---- restart ------------------------------------------------------- */

static int bench_restart(long n)
{
    if (dx_bench_restart == NULL) {
        fprintf(stderr, "runtime-bench: restart: dx_bench_restart is not "
                        "linked in (bench/bench_restart.c is missing)\n");
        return 1;
    }
    return dx_bench_restart(n) == 0 ? 0 : 1;
}

/* ---- driver -------------------------------------------------------- */

static const struct {
    const char *name;
    bench_fn fn;
} benches[] = {
    {"noop", bench_noop},         {"spawn", bench_spawn},
    {"pingpong", bench_pingpong}, {"call", bench_call},
    {"ring", bench_ring},         {"skynet", bench_skynet},
    {"fanout", bench_fanout},     {"restart", bench_restart},
};

static void driver(void *arg)
{
    (void)arg;
    g.driver = dx_self();
    g.status = g.fn(g.n);
}

static int usage(void)
{
    fprintf(stderr, "usage: runtime-bench <bench> <n>\n"
                    "  bench: noop spawn pingpong call ring skynet fanout "
                    "restart\n"
                    "  n: a positive integer (noop ignores it)\n"
                    "  scheduler threads: env DX_SCHEDULERS (default: online "
                    "CPUs)\n");
    return 2;
}

int main(int argc, char **argv)
{
    clock_gettime(CLOCK_MONOTONIC, &g.t_main);
    if (argc != 3)
        return usage();
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        if (strcmp(argv[1], benches[i].name) == 0) {
            g.bench = benches[i].name;
            g.fn = benches[i].fn;
        }
    char *end;
    errno = 0;
    long n = strtol(argv[2], &end, 10);
    if (g.fn == NULL || end == argv[2] || *end != '\0' || errno != 0 || n < 1 ||
        n > LONG_MAX / 16)
        return usage();
    g.n = n;
    g.status = 1; /* stays 1 if the driver dies before finishing */

    dx_runtime_opts opts = {0};
    dx_term *reason = NULL;
    int rc = dx_run(&opts, driver, NULL, &reason);
    if (rc != DX_OK) {
        fprintf(stderr, "runtime-bench: %s: dx_run: %s (%s)\n", g.bench,
                dx_err_name(rc), dx_strerror(rc));
        dx_term_free(reason);
        return 1;
    }
    if (reason != NULL && !dx_is_atom(reason, "normal")) {
        char *text = dx_term_to_string(reason);
        fprintf(stderr, "runtime-bench: %s: driver exited: %s\n", g.bench,
                text ? text : "?");
        dx_free(text);
        g.status = 1;
    }
    dx_term_free(reason);
    return g.status;
}
