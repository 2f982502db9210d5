/*
 * kernel_test_util.h — helpers shared by the actor-kernel suites: start and
 * stop the runtime, run a test body as a dspex process and wait for it from
 * the host thread, record checks made inside processes, and count how often
 * a runtime thread has gone to sleep.
 *
 * A failing Criterion assertion unwinds the test with longjmp, which must
 * never happen on a process stack; code running in a process therefore uses
 * KT_CHECK*, which only records the failure, and the host thread asserts with
 * kt_assert_clean() after the processes are done.
 *
 * Data shared between processes lives in static storage or on the heap,
 * never on a process stack: with the copy-stack design every process on a
 * scheduler runs at the same stack addresses, so a pointer into one
 * process's stack means something else while another process runs.
 */
#ifndef DSPEX_TESTS_KERNEL_TEST_UTIL_H
#define DSPEX_TESTS_KERNEL_TEST_UTIL_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dspex/runtime.h"

/* How long the host waits for a test body before calling it hung. */
#define KT_WAIT_MS 60000

#define KT_MAX_NOTES 8

typedef struct kt_state {
    atomic_int failures;
    char notes[KT_MAX_NOTES][256];
} kt_state;

/* snprintf through a va_list, so that gcc's truncation analysis (which is
 * right that long texts are cut, and we want them cut) stays quiet. */
static inline void kt_fmtbuf(char *buf, size_t cap, const char *fmt, ...)
    DX_PRINTF(3, 4);
static inline void kt_fmtbuf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

static inline kt_state *kt_st(void)
{
    static kt_state s;
    return &s;
}

static inline void kt_note(const char *file, int line, const char *what)
{
    int n = atomic_fetch_add(&kt_st()->failures, 1);
    if (n < KT_MAX_NOTES)
        kt_fmtbuf(kt_st()->notes[n], sizeof kt_st()->notes[n], "%s:%d: %s",
                  file, line, what);
}

static inline bool kt_check_at(bool ok, const char *file, int line,
                               const char *expr)
{
    if (!ok)
        kt_note(file, line, expr);
    return ok;
}

static inline bool kt_check_eq_at(long long got, long long want,
                                  const char *file, int line, const char *expr)
{
    if (got == want)
        return true;
    char buf[200];
    kt_fmtbuf(buf, sizeof buf, "%s: got %lld, want %lld", expr, got, want);
    kt_note(file, line, buf);
    return false;
}

static inline bool kt_check_rc_at(int got, int want, const char *file, int line,
                                  const char *expr)
{
    if (got == want)
        return true;
    char buf[200];
    kt_fmtbuf(buf, sizeof buf, "%s: got %s, want %s", expr, dx_err_name(got),
              dx_err_name(want));
    kt_note(file, line, buf);
    return false;
}

/* Checks usable inside processes; each evaluates to whether it held. */
#define KT_CHECK(expr) kt_check_at((expr), __FILE__, __LINE__, #expr)
#define KT_CHECK_EQ(got, want)                                                 \
    kt_check_eq_at((long long)(got), (long long)(want), __FILE__, __LINE__,    \
                   #got " == " #want)
#define KT_CHECK_RC(got, want)                                                 \
    kt_check_rc_at((got), (want), __FILE__, __LINE__, #got)

/* Host thread: fail the test if any process-side check failed. */
static inline void kt_assert_clean(void)
{
    int n = atomic_load(&kt_st()->failures);
    for (int i = 0; i < n && i < KT_MAX_NOTES; i++)
        cr_log_error("process-side check failed: %s", kt_st()->notes[i]);
    cr_assert_eq(n, 0, "%d check(s) failed inside processes; first: %s", n,
                 n > 0 ? kt_st()->notes[0] : "");
}

/* Text of a term for messages (truncated); buf must hold cap bytes. */
static inline const char *kt_fmt(const dx_term *t, char *buf, size_t cap)
{
    if (t == NULL) {
        kt_fmtbuf(buf, cap, "(null)");
        return buf;
    }
    dx_term_format(t, buf, cap);
    return buf;
}

/* Whether t is the 2-tuple {atom, ...} whose first element is `atom`. */
static inline bool kt_is_tagged_tuple(const dx_term *t, const char *atom)
{
    return dx_term_type_of(t) == DX_TERM_TUPLE && dx_term_size(t) >= 1 &&
           dx_is_atom(dx_term_at(t, 0), atom);
}

/* Host thread: sleep (never call this from a process: it would block the
 * scheduler thread). */
static inline void kt_host_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Host thread: poll cond (an expression) until true or ms pass. */
#define KT_HOST_WAIT_UNTIL(cond, ms)                                           \
    do {                                                                       \
        int64_t kt_deadline_ = dx_now_ms() + (ms);                             \
        while (!(cond) && dx_now_ms() < kt_deadline_)                          \
            kt_host_sleep_ms(1);                                               \
    } while (0)

static inline void kt_start_opts(const dx_runtime_opts *o)
{
    int rc = dx_runtime_start(o);
    cr_assert_eq(rc, DX_OK, "dx_runtime_start: %s", dx_err_name(rc));
}

static inline void kt_start(int schedulers)
{
    dx_runtime_opts o = {.schedulers = schedulers};
    kt_start_opts(&o);
}

static inline void kt_stop(void)
{
    int rc = dx_runtime_stop();
    cr_assert_eq(rc, DX_OK, "dx_runtime_stop: %s", dx_err_name(rc));
}

/* A host thread cannot learn the exit reason of a process that may
 * already be gone (dx_wait_exit on a dead pid gives noproc), so a runner
 * process spawn_monitors the test body and hands its reason to the host. */
typedef struct kt_runner {
    dx_proc_fn fn;
    void *arg;
    dx_pid pid;
    dx_term *reason;
    atomic_int done;
} kt_runner;

static inline kt_runner *kt_rn(void)
{
    static kt_runner r;
    return &r;
}

static inline void kt_runner_fn(void *unused)
{
    (void)unused;
    kt_runner *r = kt_rn();
    dx_ref ref;
    if (dx_spawn_monitor(r->fn, r->arg, &r->pid, &ref) == DX_OK) {
        dx_match m = {.fields = DX_MATCH_TAG | DX_MATCH_REF,
                      .tag = DX_TAG_DOWN,
                      .ref = ref};
        dx_msg *msg = NULL;
        if (dx_receive(&m, DX_INFINITY, &msg) == DX_OK) {
            r->reason = dx_msg_take_term(msg);
            dx_msg_free(msg);
        }
    }
    atomic_store(&r->done, 1);
}

/* Host thread: wait until pid is dead, whether it died before the wait
 * began (DX_ENOPROC) or during it (DX_OK). */
static inline void kt_host_join(dx_pid pid)
{
    int rc = dx_wait_exit(pid, KT_WAIT_MS, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "dx_wait_exit: %s",
              dx_err_name(rc));
}

/* Run fn(arg) as a process and wait for it; returns its exit reason (caller
 * frees). kt_last_pid() is then its pid. */
static inline dx_term *kt_run_reason(dx_proc_fn fn, void *arg)
{
    kt_runner *r = kt_rn();
    r->fn = fn;
    r->arg = arg;
    r->pid = DX_NOPID;
    r->reason = NULL;
    atomic_store(&r->done, 0);
    dx_pid runner;
    int rc = dx_spawn(kt_runner_fn, NULL, &runner);
    cr_assert_eq(rc, DX_OK, "dx_spawn: %s", dx_err_name(rc));
    KT_HOST_WAIT_UNTIL(atomic_load(&r->done), KT_WAIT_MS);
    cr_assert(atomic_load(&r->done), "the test body did not finish");
    kt_host_join(runner);
    dx_term *reason = r->reason;
    r->reason = NULL;
    return reason;
}

static inline dx_pid kt_last_pid(void)
{
    return kt_rn()->pid;
}

/* Same, and assert the body exited normally. */
static inline void kt_run(dx_proc_fn fn, void *arg)
{
    dx_term *reason = kt_run_reason(fn, arg);
    char buf[256];
    bool normal = dx_is_atom(reason, "normal");
    kt_fmt(reason, buf, sizeof buf);
    dx_term_free(reason);
    cr_assert(normal, "test body exited with %s, want normal", buf);
}

/* kt_run, then fail the test if a process-side check failed: for suites
 * whose runtime outlives the test body (a check asserted only in a suite's
 * .fini is logged by Criterion but does not fail the test). */
static inline void kt_run_clean(dx_proc_fn fn, void *arg)
{
    kt_run(fn, arg);
    kt_assert_clean();
}

/* The usual shape of a test: start with n schedulers, run the body, stop,
 * then check what the processes recorded. */
static inline void kt_body_test(int schedulers, dx_proc_fn fn, void *arg)
{
    kt_start(schedulers);
    kt_run(fn, arg);
    kt_stop();
    kt_assert_clean();
}

/* Process: wait for the DOWN of monitor `ref` and return its reason (owned),
 * or NULL (recorded as a failure) if it did not come in time. */
static inline dx_term *kt_await_down(dx_ref ref, int64_t timeout_ms)
{
    dx_match m = {
        .fields = DX_MATCH_TAG | DX_MATCH_REF, .tag = DX_TAG_DOWN, .ref = ref};
    dx_msg *msg = NULL;
    int rc = dx_receive(&m, timeout_ms, &msg);
    if (!KT_CHECK_RC(rc, DX_OK))
        return NULL;
    dx_term *reason = dx_msg_take_term(msg);
    dx_msg_free(msg);
    return reason;
}

/* Process: monitor pid and wait for it to exit; returns the reason (owned). */
static inline dx_term *kt_join(dx_pid pid, int64_t timeout_ms)
{
    dx_ref ref;
    if (!KT_CHECK_RC(dx_monitor(pid, &ref), DX_OK))
        return NULL;
    return kt_await_down(ref, timeout_ms);
}

/* Process: whether reason is the atom `atom`; records a failure if not.
 * Frees reason. */
#define KT_CHECK_REASON_ATOM(reason, atom)                                     \
    kt_check_reason_atom_at((reason), (atom), __FILE__, __LINE__)
static inline bool kt_check_reason_atom_at(dx_term *reason, const char *atom,
                                           const char *file, int line)
{
    bool ok = dx_is_atom(reason, atom);
    if (!ok) {
        char t[128], buf[200];
        kt_fmtbuf(buf, sizeof buf, "exit reason %s, want %s",
                  kt_fmt(reason, t, sizeof t), atom);
        kt_note(file, line, buf);
    }
    dx_term_free(reason);
    return ok;
}

/* Process: take every message out of the mailbox; returns how many. */
static inline size_t kt_drain(void)
{
    size_t n = 0;
    dx_msg *m = NULL;
    while (dx_receive_any(0, &m) == DX_OK) {
        dx_msg_free(m);
        n++;
    }
    return n;
}

/* A process that waits for any message and then exits normally. */
static inline void kt_wait_msg_fn(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    if (dx_receive_any(DX_INFINITY, &m) == DX_OK)
        dx_msg_free(m);
}

/* A process that parks forever (until it is killed). */
static inline void kt_park_fn(void *arg)
{
    (void)arg;
    dx_msg *m = NULL;
    for (;;) {
        dx_match none = {.fields = DX_MATCH_TAG, .tag = INT64_MAX};
        if (dx_receive(&none, DX_INFINITY, &m) == DX_OK)
            dx_msg_free(m);
    }
}

/* A process that exits with the atom reason given as its arg. */
static inline void kt_exit_with_fn(void *arg)
{
    dx_exit_self(dx_atom((const char *)arg));
}

/* How many times the thread named name has gone to sleep so far (its
 * voluntary context switches), or -1 if there is no such thread. */
static inline long kt_thread_sleeps(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    long found = -1;
    struct dirent *e;
    while (found < 0 && (e = readdir(d)) != NULL) {
        char path[300], comm[32] = "", line[128];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        bool ours = fgets(comm, sizeof comm, f) != NULL &&
                    strncmp(comm, name, strlen(name)) == 0 &&
                    comm[strlen(name)] == '\n';
        fclose(f);
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        if (!ours || (f = fopen(path, "r")) == NULL)
            continue;
        while (fgets(line, sizeof line, f) != NULL)
            if (sscanf(line, "voluntary_ctxt_switches: %ld", &found) == 1)
                break;
        fclose(f);
    }
    closedir(d);
    return found;
}

#endif
