/*
 * supervised_counter.c — a first dspex program: a small supervision tree
 * that keeps working while one of its processes keeps crashing.
 *
 *     build/examples/supervised_counter [--seconds N]
 *
 * The application's root supervisor (one_for_one) has two children:
 *   counter  a server registered as "counter" that holds a number;
 *   ticker   a worker that adds 1 to the counter every 250 ms and, on its
 *            6th tick, crashes on purpose.
 * Each crash is logged by the supervisor, which starts a fresh ticker; the
 * counter, a separate process, keeps its count. Once a second the main
 * process prints the count and the ticker's pid. After N seconds (default
 * 5) the application is stopped: children in reverse start order.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dspex/app.h>
#include <dspex/log.h>
#include <dspex/runtime.h>
#include <dspex/server.h>
#include <dspex/supervisor.h>

#define APP_NAME "counter_app"
#define TICK_MS 250
#define CRASH_AT_TICK 6

enum { TAG_INCR = 1, TAG_GET = 2, TAG_VALUE = 3, TAG_TICK = 4 };

static int64_t t_start_ms;
static double elapsed_s(void);

/* ---- the counter: a server holding one number ---------------------------- */

typedef struct counter {
    int64_t count;
} counter;

static int counter_init(void *arg, void **state, dx_term **stop_reason)
{
    (void)arg;
    (void)stop_reason;
    /* Process memory: it goes away with the process, however it ends. */
    counter *c = dx_pcalloc(1, sizeof *c);
    if (c == NULL)
        return DX_ENOMEM;
    *state = c;
    return DX_OK;
}

static dx_srv_ret counter_cast(void *state, dx_msg *msg, dx_term **stop)
{
    (void)stop;
    counter *c = state;
    if (msg->tag == TAG_INCR)
        c->count++;
    return DX_SRV_NOREPLY;
}

static dx_srv_ret counter_call(void *state, dx_msg *req, dx_from from,
                               dx_msg **reply, dx_term **stop)
{
    (void)from;
    (void)stop;
    counter *c = state;
    if (req->tag != TAG_GET)
        return DX_SRV_NOREPLY;
    *reply = dx_msg_new(TAG_VALUE);
    if (*reply != NULL)
        (*reply)->term = dx_int(c->count);
    return DX_SRV_REPLY;
}

/* Runs when the supervisor stops the counter (it traps exits for that). */
static void counter_terminate(void *state, const dx_term *reason)
{
    const counter *c = state;
    char why[64];
    dx_term_format(reason, why, sizeof why);
    printf("[%5.2fs] counter: stopping (%s) with count %lld\n", elapsed_s(),
           why, (long long)c->count);
    fflush(stdout);
}

static const dx_server_ops counter_ops = {
    .name = "counter",
    .init = counter_init,
    .handle_call = counter_call,
    .handle_cast = counter_cast,
    .terminate = counter_terminate,
};

static int start_counter(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    dx_server_opts o = {.link = true, .name = "counter", .trap_exit = true};
    return dx_server_start(&counter_ops, NULL, &o, pid_out, NULL);
}

/* ---- the ticker: a worker that crashes now and then ----------------------- */

/* It traps exits so that the supervisor's shutdown arrives as a message
 * it can announce; between ticks it waits for exactly that message. */
static void ticker(void *arg)
{
    (void)arg;
    for (int tick = 1;; tick++) {
        dx_msg *stop = NULL;
        if (dx_receive_tag(DX_TAG_EXIT, TICK_MS, &stop) == DX_OK) {
            dx_term *reason = dx_msg_take_term(stop);
            dx_msg_free(stop);
            char why[64];
            dx_term_format(reason, why, sizeof why);
            printf("[%5.2fs] ticker: stopping (%s)\n", elapsed_s(), why);
            fflush(stdout);
            dx_exit_self(reason);
        }
        dx_msg *m = dx_msg_new(TAG_INCR);
        dx_pid counter_pid = dx_whereis("counter");
        if (m != NULL && !dx_pid_is_none(counter_pid))
            dx_cast(counter_pid, m);
        else
            dx_msg_free(m);
        if (tick == CRASH_AT_TICK)
            dx_exit_self(dx_tuple(2, dx_atom("simulated_crash"), dx_int(tick)));
    }
}

static int start_ticker(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    dx_spawn_opts o = {.link = true, .trap_exit = true};
    return dx_spawn_opt(ticker, NULL, &o, pid_out, NULL);
}

/* ---- the tree ------------------------------------------------------------------ */

static const dx_child_spec children[] = {
    {.id = "counter", .start = start_counter},
    {.id = "ticker", .start = start_ticker},
};

/* Up to 10 restarts in 5 s: the ticker's crash every 1.5 s fits easily. */
static const dx_sup_spec root_spec = {
    .name = APP_NAME,
    .strategy = DX_SUP_ONE_FOR_ONE,
    .intensity = 10,
    .period_s = 5,
    .children = children,
    .nchildren = 2,
};

/* ---- friendly output -------------------------------------------------------- */

static double elapsed_s(void)
{
    return (double)(dx_now_ms() - t_start_ms) / 1000.0;
}

static const char *field(const dx_log_record *r, const char *key, char *buf,
                         size_t cap)
{
    buf[0] = '\0';
    for (size_t i = 0; i < r->nfields; i++) {
        const dx_log_field *f = &r->fields[i];
        if (strcmp(f->key, key) != 0)
            continue;
        if (f->type == DX_LOG_V_STR) {
            snprintf(buf, cap, "%s", f->v.s ? f->v.s : "");
        } else if (f->type == DX_LOG_V_INT) {
            snprintf(buf, cap, "%lld", (long long)f->v.i);
        } else if (f->type == DX_LOG_V_TERM) {
            dx_term_format(f->v.t, buf, cap);
        } else {
            dx_term *t = dx_pid_term(f->v.pid);
            dx_term_format(t, buf, cap);
            dx_term_free(t);
        }
    }
    return buf;
}

/* Supervisor reports, told in words. Anything else prints as logged. */
static void say(const dx_log_record *r, void *ud)
{
    (void)ud;
    char child[64], pid[32], reason[128], restarts[24];
    field(r, "child", child, sizeof child);
    field(r, "pid", pid, sizeof pid);
    field(r, "reason", reason, sizeof reason);
    field(r, "restarts", restarts, sizeof restarts);
    double t = elapsed_s();
    if (strcmp(r->event, "child_started") == 0)
        printf("[%5.2fs] supervisor: started %s as %s\n", t, child, pid);
    else if (strcmp(r->event, "child_terminated") == 0)
        printf("[%5.2fs] supervisor: %s %s crashed: %s\n", t, child, pid,
               reason);
    else if (strcmp(r->event, "child_restarted") == 0)
        printf("[%5.2fs] supervisor: restarted %s as %s (restart #%s)\n", t,
               child, pid, restarts);
    else if (strcmp(r->event, "application_started") == 0 ||
             strcmp(r->event, "application_stopped") == 0 ||
             strcmp(r->event, "supervisor_stopped") == 0)
        ; /* main tells these in its own words */
    else
        printf("[%5.2fs] %s\n", t, r->line);
    fflush(stdout);
}

/* ---- main ------------------------------------------------------------------ */

static void status_line(void)
{
    dx_msg *reply = NULL;
    int64_t count = -1;
    if (dx_call_named("counter", dx_msg_new(TAG_GET), 1000, &reply) == DX_OK) {
        dx_int_value(reply->term, &count);
        dx_msg_free(reply);
    }
    dx_pid root = dx_whereis(APP_NAME), tick = DX_NOPID;
    dx_sup_find_child(root, "ticker", &tick);
    dx_sup_counts k = {0};
    dx_sup_count_children(root, &k);
    dx_term *t = dx_pid_term(tick);
    char pid[32] = "-";
    if (!dx_pid_is_none(tick))
        dx_term_format(t, pid, sizeof pid);
    dx_term_free(t);
    printf("[%5.2fs] counter = %lld   (ticker is %s; restarts so far: %llu)\n",
           elapsed_s(), (long long)count, pid, (unsigned long long)k.restarts);
    fflush(stdout);
}

static void main_proc(void *arg)
{
    long seconds = *(const long *)arg;
    printf("[%5.2fs] application %s is up; watching for %ld s\n", elapsed_s(),
           APP_NAME, seconds);
    for (long s = 0; s < seconds; s++) {
        dx_sleep(1000);
        status_line();
    }
    printf("[%5.2fs] stopping the application (children in reverse order)\n",
           elapsed_s());
    fflush(stdout);
}

static int usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--seconds N]\n"
            "  Runs a supervised counter with a worker that crashes on\n"
            "  purpose every %.1f s, printing what the supervisor does.\n"
            "  --seconds N  how long to run (default 5)\n",
            prog, CRASH_AT_TICK * TICK_MS / 1000.0);
    return 2;
}

int main(int argc, char **argv)
{
    static long seconds = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            seconds = strtol(argv[++i], &end, 10);
            if (*end != '\0' || errno != 0 || seconds < 1 || seconds > 86400)
                return usage(argv[0]);
        } else {
            return usage(argv[0]);
        }
    }

    dx_log_set_sink(say, NULL);
    dx_log_set_level(DX_LOG_INFO);
    t_start_ms = dx_now_ms();
    dx_term *reason = NULL;
    int rc = dx_app_run(NULL, &root_spec, main_proc, &seconds, &reason);
    dx_log_set_sink(NULL, NULL);
    if (rc != DX_OK) {
        char buf[256] = "";
        if (reason != NULL)
            dx_term_format(reason, buf, sizeof buf);
        fprintf(stderr, "supervised_counter: %s %s\n", dx_strerror(rc), buf);
        dx_term_free(reason);
        return 1;
    }
    dx_term_free(reason);
    printf("[%5.2fs] stopped cleanly\n", elapsed_s());
    return 0;
}
