/*
 * fuzz_serve_http.c — fuzz target for the `dspex serve` HTTP service's
 * request handling (serve/http.c: parsing, framing, pipelining, limits,
 * Expect: 100-continue; serve/serve.c: auth, routing, the dashboard's
 * ?token=, request bodies, the program routes and the chat route). One
 * runtime, one sim LM client and one server are started for the whole run
 * (a Predict "question -> answer" on sim/base served as "qa", a bearer
 * token, a small body limit so the 413 path is reachable, a short
 * deadline); each input is sent raw over a fresh loopback connection,
 * half-closed after it when the first byte is odd.
 * Invariants: the service never crashes; whatever it sends starts with an
 * HTTP/1.1 status line; after every input it still answers a well-formed
 * request (GET /healthz is 200), so no input wedges or kills it; and it
 * then returns to idle (no request running or queued, no connection open,
 * no process beyond those it started with) within its deadline and some
 * slack, so no input leaves a process or a connection behind.
 *
 * Returning to idle is also what makes libFuzzer's leak check after each
 * input sound here: a request's memory held only by a process that is
 * still running lives on that process's stack, which LeakSanitizer does
 * not scan (dspex maps process stacks itself), and would be reported as
 * a leak while the request is merely unfinished.
 */
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/diag.h"
#include "dspex/error.h"
#include "dspex/lm.h"
#include "dspex/module.h"
#include "dspex/program.h"
#include "dspex/runtime.h"
#include "dspex/serve.h"
#include "dspex/server.h"
#include "fuzz_http_common.h"

/* The token the seeds carry (Authorization: Bearer ..., ?token=...). */
#define FUZZ_TOKEN "fuzz-token"

static dx_serve *srv;
static dx_module *qa;
static int port;
static size_t idle_procs; /* processes of the idle service */
static _Atomic int proc_rc;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void start_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {.primary = {"sim/base", NULL, NULL}};
    dx_server_opts so = {.name = "lm"};
    atomic_store(&proc_rc, dx_lm_client_start(&o, &so, NULL));
}

static void stop_client(void *arg)
{
    (void)arg;
    dx_pid lm = dx_whereis("lm");
    atomic_store(&proc_rc,
                 dx_pid_is_none(lm) ? DX_OK : dx_server_stop(lm, NULL, 5000));
}

/* Run fn in a process of its own (the LM client is started and stopped
 * from one) and wait for the code it stores. */
static int run_in_process(dx_proc_fn fn)
{
    atomic_store(&proc_rc, 1);
    if (dx_spawn(fn, NULL, NULL) != DX_OK)
        return -1;
    for (int i = 0; i < 2000 && atomic_load(&proc_rc) == 1; i++)
        sleep_ms(5);
    return atomic_load(&proc_rc);
}

static void stop_service(void)
{
    dx_serve_stop(srv, 5000);
    srv = NULL;
    run_in_process(stop_client);
    dx_runtime_stop();
    dx_module_free(qa);
    qa = NULL;
}

static void start_service(void)
{
    if (srv)
        return;
    /* libcrypto (the LM cache's SHA-256) registers its cleanup with
     * atexit when it first loads its configuration, and that cleanup
     * stops it from freeing the state of threads that end later. Loaded
     * here, before stop_service is registered, the cleanup runs after it
     * (atexit runs handlers in reverse), once the scheduler threads have
     * ended and given their libcrypto state back; loaded by the first LM
     * call instead, it ran before, and LeakSanitizer reported that state
     * (904 bytes) at exit. */
    FUZZ_CHECK(OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL) == 1);
    FUZZ_CHECK(dx_runtime_start(&(dx_runtime_opts){.schedulers = 2}) == DX_OK);
    FUZZ_CHECK(run_in_process(start_client) == DX_OK);
    dx_diag d = {0};
    FUZZ_CHECK(dx_program_single("predict", "question -> answer", NULL, &qa,
                                 &d) == DX_OK);
    dx_serve_program prog = {.name = "qa", .module = qa};
    /* The default connection limit: connections closed by the fuzzer with
     * a reset may still count for a moment, and the probe must not be
     * refused by design. */
    dx_serve_opts o = {
        .programs = &prog,
        .nprograms = 1,
        .max_body_bytes = 16 * 1024,
        .token = FUZZ_TOKEN,
        .deadline_ms = 2000,
        .reload_check_ms = -1,
        .dashboard_interval_ms = 50,
    };
    FUZZ_CHECK(dx_serve_start(&o, &srv, &d) == DX_OK);
    port = dx_serve_port(srv);
    idle_procs = dx_process_count();
    atexit(stop_service);
}

/* True when every process waits in a receive: none is in the middle of
 * work whose memory only its stack holds. */
static bool all_waiting(void)
{
    dx_proc_info *ps = NULL;
    size_t n = 0;
    if (dx_process_list(&ps, &n) != DX_OK)
        return false;
    bool idle = true;
    for (size_t i = 0; i < n && idle; i++)
        idle = ps[i].status == DX_PROC_WAITING;
    dx_free(ps);
    return idle;
}

/* Wait until the service is idle again; false if it is not within 8 s
 * (its 2 s deadline, the second dx_module_call may take past it, and
 * slack; under libFuzzer's 10 s timeout). Idle: no request running or
 * queued, no connection open, no process beyond those of the idle
 * service, and those all waiting (the dashboard's observer may still be
 * finishing a snapshot for a watcher that just left). */
static bool settle(dx_serve_stats *st)
{
    for (int i = 0; i < 8000; i++) {
        dx_serve_stats_get(srv, st);
        if (st->in_flight == 0 && st->queued == 0 &&
            st->connections_open == 0 && dx_process_count() <= idle_procs &&
            all_waiting())
            return true;
        sleep_ms(1);
    }
    return false;
}

static void report(const char *what, const dx_serve_stats *st)
{
    fprintf(stderr,
            "%s; connections open %llu, requests %llu, responses %llu, "
            "in flight %llu, queued %llu, crashed %llu, processes %zu "
            "(%zu when idle)\n",
            what, (unsigned long long)st->connections_open,
            (unsigned long long)st->requests, (unsigned long long)st->responses,
            (unsigned long long)st->in_flight, (unsigned long long)st->queued,
            (unsigned long long)st->crashed, dx_process_count(), idle_procs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    start_service();
    char head[FUZZ_HTTP_KEEP + 1];
    /* The first byte's low bit: half-close after sending or not. */
    bool half_close = size > 0 && (data[0] & 1);
    size_t got = fuzz_http_exchange(port, data, size, half_close, 20, head);
    if (got >= 9)
        FUZZ_CHECK(strncmp(head, "HTTP/1.1 ", 9) == 0);

    static const char probe[] = "GET /healthz HTTP/1.1\r\n"
                                "Host: 127.0.0.1\r\n"
                                "Connection: close\r\n\r\n";
    dx_serve_stats before, st;
    dx_serve_stats_get(srv, &before);
    int64_t t0 = now_ms();
    got = fuzz_http_exchange(port, (const uint8_t *)probe, sizeof probe - 1,
                             false, 5000, head);
    if (got < 12 || strncmp(head, "HTTP/1.1 200", 12) != 0) {
        dx_serve_stats_get(srv, &st);
        fprintf(stderr,
                "probe: %zu bytes after %lld ms (client port %d, %s), "
                "requests parsed meanwhile %llu: %.20s\n",
                got, (long long)(now_ms() - t0), fuzz_http_local_port,
                fuzz_http_errno ? strerror(fuzz_http_errno) : "no error",
                (unsigned long long)(st.requests - before.requests), head);
        report("the service no longer answers", &st);
        abort();
    }
    if (!settle(&st)) {
        report("the service did not return to idle", &st);
        abort();
    }
    return 0;
}
