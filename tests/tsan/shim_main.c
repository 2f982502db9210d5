/*
 * shim_main.c — the runner behind tests/tsan/criterion/criterion.h, linked
 * into each suite in the ThreadSanitizer build instead of Criterion. It
 * owns main(): it picks the tests (--filter or name patterns), runs each in
 * a forked child with its timeout, init and fini, judges the child by what
 * it recorded and how it ended, and prints Criterion-style lines, the
 * synthesis and "N passed, N failed". Exit status 0 only when none failed.
 *
 * The parent never starts a thread, so fork() stays valid under TSan (it
 * refuses to let a child of a multi-threaded parent start threads). A child
 * reports through one shared anonymous mapping, read by the parent only
 * after the child is gone.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fnmatch.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* What the child leaves for the parent. */
enum { RUNNING, FINISHED, SKIPPED };

struct outcome {
    atomic_int state;
    atomic_int failures;
    /* The last check that passed, to place a crash; the two halves may come
     * from different threads' checks, which is good enough for a hint. */
    _Atomic(const char *) last_file;
    atomic_int last_line;
    char skip_reason[256];
};

/* Exit status of a child whose assert failed on a thread other than the
 * test's own (whose stack cannot be unwound from there). */
#define ABANDONED 97

/* ThreadSanitizer's exit status after a report (its exitcode option). */
#define TSAN_EXIT 66

static struct cr__test *tests;
static struct cr__suite *suites;
static struct outcome *out;

/* Child only: where a failed assert or a skip jumps to. */
static jmp_buf jump;
static volatile sig_atomic_t jump_armed;
static pthread_t test_thread;

static int order(const struct cr__test *a, const struct cr__test *b)
{
    int c = strcmp(a->suite, b->suite);
    return c != 0 ? c : strcmp(a->name, b->name);
}

void cr__add_test(struct cr__test *t)
{
    struct cr__test **p = &tests;
    while (*p != NULL && order(*p, t) < 0)
        p = &(*p)->next;
    t->next = *p;
    *p = t;
}

void cr__add_suite(struct cr__suite *s)
{
    s->next = suites;
    suites = s;
}

static const struct cr__suite *suite_of(const struct cr__test *t)
{
    for (const struct cr__suite *s = suites; s != NULL; s = s->next)
        if (strcmp(s->name, t->suite) == 0)
            return s;
    return NULL;
}

int cr__strcmp(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return (a != NULL) - (b != NULL);
    return strcmp(a, b);
}

/* ---- reporting from the child ----------------------------------------- */

/* Appends to a bounded text; past cap the text is cut, never overrun. */
struct text {
    char buf[4096];
    size_t len;
};

static void addv(struct text *t, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void addv(struct text *t, const char *fmt, va_list ap)
{
    if (t->len >= sizeof t->buf - 1)
        return;
    int n = vsnprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, ap);
    if (n > 0)
        t->len += (size_t)n < sizeof t->buf - t->len
                      ? (size_t)n
                      : sizeof t->buf - t->len - 1;
}

static void add(struct text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    addv(t, fmt, ap);
    va_end(ap);
}

/* Writes the text in one call, so reports of threads do not interleave. */
static void emit(const struct text *t)
{
    fwrite(t->buf, 1, t->len, stderr);
    fflush(stderr);
}

/* Piece i (0-based) of a check's argument text, split at commas outside
 * brackets and literals, trimmed; "?" when there is no such piece. */
static void piece(const char *args, int i, char *dst, size_t cap)
{
    const char *start = args;
    const char *p = args;
    int depth = 0;
    for (;; p++) {
        if (*p == '"' || *p == '\'') {
            char quote = *p;
            while (p[1] != '\0' && p[1] != quote)
                p += p[1] == '\\' && p[2] != '\0' ? 2 : 1;
            if (p[1] == '\0') {
                p++;
                break;
            }
            p++;
            continue;
        }
        if (*p == '\0' || (*p == ',' && depth == 0)) {
            if (i == 0 || *p == '\0')
                break;
            i--;
            start = p + 1;
        } else if (*p == '(' || *p == '[' || *p == '{') {
            depth++;
        } else if ((*p == ')' || *p == ']' || *p == '}') && depth > 0) {
            depth--;
        }
    }
    if (i > 0) {
        snprintf(dst, cap, "?");
        return;
    }
    while (start < p && (*start == ' ' || *start == '\t'))
        start++;
    const char *end = p;
    while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t n = (size_t)(end - start);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, start, n);
    dst[n] = '\0';
}

static void describe(struct text *t, int shape, const char *op,
                     const char *args, const char *sa, const char *sb)
{
    char a[512], b[512], c[512];
    piece(args, 0, a, sizeof a);
    piece(args, 1, b, sizeof b);
    piece(args, 2, c, sizeof c);
    switch (shape) {
    case CR__SHAPE_TRUE:
        add(t, "[----]   The expression %s is false.\n", a);
        break;
    case CR__SHAPE_NOT:
        add(t, "[----]   The expression !(%s) is false.\n", a);
        break;
    case CR__SHAPE_NULL:
        add(t, "[----]   %s is not null.\n", a);
        break;
    case CR__SHAPE_NOT_NULL:
        add(t, "[----]   %s is null.\n", a);
        break;
    case CR__SHAPE_EMPTY:
        add(t, "[----]   %s is not empty.\n", a);
        break;
    case CR__SHAPE_NOT_EMPTY:
        add(t, "[----]   %s is empty.\n", a);
        break;
    case CR__SHAPE_OP:
        add(t, "[----]   The expression (%s) %s (%s) is false.\n", a, op, b);
        break;
    case CR__SHAPE_STR:
        add(t, "[----]   The expression (as strings) (%s) %s (%s) is false.\n",
            a, op, b);
        add(t, "[----]     left:  %s%.300s%s\n", sa ? "\"" : "",
            sa ? sa : "NULL", sa ? "\"" : "");
        add(t, "[----]     right: %s%.300s%s\n", sb ? "\"" : "",
            sb ? sb : "NULL", sb ? "\"" : "");
        break;
    case CR__SHAPE_ARR:
        add(t,
            "[----]   The expression (as arrays of %s bytes) (%s) %s (%s) is "
            "false.\n",
            c, a, op, b);
        break;
    case CR__SHAPE_FLOAT:
        add(t, "[----]   The expression (%s) %s (%s) within %s is false.\n", a,
            op, b, c);
        break;
    default:
        add(t, "[----]   The conditions for this assertion were not met.\n");
        break;
    }
}

/* The user's message, one "[----]   " line per line of it. */
static void message(struct text *t, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void message(struct text *t, const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (const char *line = msg; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        int n = nl ? (int)(nl - line) : (int)strlen(line);
        add(t, "[----]   %.*s\n", n, line);
        line += n + (nl != NULL);
    }
}

static void failed(const char *file, int line, int shape, const char *op,
                   const char *args, const char *sa, const char *sb,
                   const char *fmt, va_list ap)
    __attribute__((format(printf, 8, 0)));
static void failed(const char *file, int line, int shape, const char *op,
                   const char *args, const char *sa, const char *sb,
                   const char *fmt, va_list ap)
{
    struct text t = {.len = 0};
    add(&t, "[----] %s:%d: Assertion Failed\n", file, line);
    describe(&t, shape, op, args, sa, sb);
    message(&t, fmt, ap);
    emit(&t);
    if (out != NULL)
        atomic_fetch_add(&out->failures, 1);
}

/* Leaves the test: back to the runner on the test's thread (so fini runs),
 * else straight out of the process with `code`, since another thread cannot
 * unwind the test's stack. */
static _Noreturn void leave(int code)
{
    if (jump_armed && pthread_equal(pthread_self(), test_thread))
        longjmp(jump, 1);
    fflush(stdout);
    fflush(stderr);
    _exit(code);
}

void cr__assert_failed(const char *file, int line, int shape, const char *op,
                       const char *args, const char *sa, const char *sb,
                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    failed(file, line, shape, op, args, sa, sb, fmt, ap);
    va_end(ap);
    leave(ABANDONED);
}

void cr__expect_failed(const char *file, int line, int shape, const char *op,
                       const char *args, const char *sa, const char *sb,
                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    failed(file, line, shape, op, args, sa, sb, fmt, ap);
    va_end(ap);
}

void cr__passed(const char *file, int line)
{
    if (out == NULL)
        return;
    atomic_store_explicit(&out->last_file, file, memory_order_relaxed);
    atomic_store_explicit(&out->last_line, line, memory_order_relaxed);
}

void cr__skip(const char *fmt, ...)
{
    if (out != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(out->skip_reason, sizeof out->skip_reason, fmt, ap);
        va_end(ap);
        atomic_store(&out->state, SKIPPED);
    }
    leave(0);
}

void cr__log(int level, const char *fmt, ...)
{
    static const char *const tag[] = {"[----] ", "[WARN] ", "[ERR ] "};
    struct text t = {.len = 0};
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    add(&t, "%s%s\n", tag[level >= CR__INFO && level <= CR__ERROR ? level : 0],
        msg);
    emit(&t);
}

/* ---- the child -------------------------------------------------------- */

static _Noreturn void run_child(const struct cr__test *t,
                                const struct cr__suite *s)
{
    test_thread = pthread_self();
    if (setjmp(jump) == 0) {
        jump_armed = 1;
        if (s != NULL && s->opts.init != NULL)
            s->opts.init();
        if (t->opts.init != NULL)
            t->opts.init();
        t->fn();
    }
    /* fini runs after a failed assert or a skip as well, as in Criterion. */
    if (setjmp(jump) == 0) {
        jump_armed = 1;
        if (t->opts.fini != NULL)
            t->opts.fini();
        if (s != NULL && s->opts.fini != NULL)
            s->opts.fini();
    }
    jump_armed = 0;
    int running = RUNNING;
    atomic_compare_exchange_strong(&out->state, &running, FINISHED);
    /* exit, not _exit: stdio is flushed and the sanitizer's exit-time
     * checks run, and whatever they find fails the test. */
    exit(0);
}

/* ---- the parent ------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits for the child; past the timeout (0 = none) kills it. Polls, since
 * the parent has no thread to spare and a signal-driven wait would leave
 * SIGCHLD blocked in every child. Returns false if waitpid failed. */
static bool wait_child(pid_t pid, double timeout, int *status, bool *timed_out)
{
    double deadline = timeout > 0 ? now_s() + timeout : 0;
    long nap_ns = 100000;
    *timed_out = false;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid)
            return true;
        if (r < 0 && errno != EINTR)
            return false;
        if (r == 0 && deadline > 0 && now_s() >= deadline) {
            kill(pid, SIGKILL);
            *timed_out = true;
            while ((r = waitpid(pid, status, 0)) < 0 && errno == EINTR)
                ;
            return r == pid;
        }
        struct timespec ts = {0, nap_ns};
        nanosleep(&ts, NULL);
        if (nap_ns < 10000000)
            nap_ns *= 2;
    }
}

struct tally {
    int tested, passing, failing, crashing;
};

static const char *signame(int sig)
{
    const char *s = strsignal(sig);
    return s != NULL ? s : "unknown signal";
}

static void judge(const struct cr__test *t, const struct cr__opts *o,
                  int status, bool timed_out, double secs, struct tally *n)
{
    int state = atomic_load(&out->state);
    int failures = atomic_load(&out->failures);
    const char *file = atomic_load(&out->last_file);
    int line = atomic_load(&out->last_line);
    n->tested++;

    if (timed_out) {
        if (file != NULL)
            fprintf(stderr, "[----] %s:%d: the last check that passed\n", file,
                    line);
        fprintf(stderr, "[FAIL] %s::%s: Timed out. (%.2fs)\n", t->suite,
                t->name, secs);
        n->failing++;
        return;
    }
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        if (sig == o->signal && failures == 0) {
            fprintf(stderr,
                    "[PASS] %s::%s: died of signal %d as expected "
                    "(%.2fs)\n",
                    t->suite, t->name, sig, secs);
            n->passing++;
            return;
        }
        if (file != NULL)
            fprintf(stderr,
                    "[----] %s:%d: Unexpected signal caught below this "
                    "line!\n",
                    file, line);
        fprintf(stderr, "[FAIL] %s::%s: CRASH! (signal %d, %s) (%.2fs)\n",
                t->suite, t->name, sig, signame(sig), secs);
        n->failing++;
        n->crashing++;
        return;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    const char *why = NULL;
    char buf[256];
    if (failures > 0) {
        why = "";
        if (code == ABANDONED) {
            why = "an assert failed off the test's thread";
        } else if (code != 0) {
            snprintf(buf, sizeof buf, "and exited with status %d%s", code,
                     code == TSAN_EXIT ? " (a sanitizer report)" : "");
            why = buf;
        }
    } else if (state == SKIPPED && code == 0) {
        fprintf(stderr, "[SKIP] %s::%s: %s\n", t->suite, t->name,
                out->skip_reason);
        n->passing++;
        return;
    } else if (o->signal != 0) {
        snprintf(buf, sizeof buf, "expected signal %d (%s), exited with %d",
                 o->signal, signame(o->signal), code);
        why = buf;
    } else if (code == o->exit_code && (state == FINISHED) == (code == 0)) {
        fprintf(stderr, "[PASS] %s::%s: (%.2fs)\n", t->suite, t->name, secs);
        n->passing++;
        return;
    } else {
        if (state == RUNNING && file != NULL)
            fprintf(stderr, "[----] %s:%d: the last check that passed\n", file,
                    line);
        snprintf(buf, sizeof buf, "exited with status %d %s the test%s", code,
                 state == RUNNING ? "before the end of" : "after",
                 code == TSAN_EXIT ? " (a sanitizer report, see above)" : "");
        why = buf;
    }
    fprintf(stderr, "[FAIL] %s::%s: %s%s(%.2fs)\n", t->suite, t->name, why,
            why[0] != '\0' ? " " : "", secs);
    n->failing++;
}

static void run_one(const struct cr__test *t, const struct cr__suite *s,
                    const struct cr__opts *o, struct tally *n)
{
    atomic_store(&out->state, RUNNING);
    atomic_store(&out->failures, 0);
    atomic_store(&out->last_file, NULL);
    atomic_store(&out->last_line, 0);
    out->skip_reason[0] = '\0';

    fprintf(stderr, "[RUN ] %s::%s\n", t->suite, t->name);
    fflush(stdout);
    fflush(stderr);
    double t0 = now_s();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "[FAIL] %s::%s: fork: %s\n", t->suite, t->name,
                strerror(errno));
        n->tested++;
        n->failing++;
        return;
    }
    if (pid == 0)
        run_child(t, s);
    int status = 0;
    bool timed_out;
    if (!wait_child(pid, o->timeout, &status, &timed_out)) {
        fprintf(stderr, "[FAIL] %s::%s: waitpid: %s\n", t->suite, t->name,
                strerror(errno));
        n->tested++;
        n->failing++;
        return;
    }
    judge(t, o, status, timed_out, now_s() - t0, n);
}

static bool selected(const struct cr__test *t, char **pats, int npats)
{
    if (npats == 0)
        return true;
    char path[512], colons[512];
    snprintf(path, sizeof path, "%s/%s", t->suite, t->name);
    snprintf(colons, sizeof colons, "%s::%s", t->suite, t->name);
    for (int i = 0; i < npats; i++)
        if (fnmatch(pats[i], path, 0) == 0 ||
            fnmatch(pats[i], colons, 0) == 0 ||
            fnmatch(pats[i], t->name, 0) == 0)
            return true;
    return false;
}

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s [--filter=GLOB] [--list] [GLOB...]\n"
            "Runs the tests whose suite/name, suite::name or name matches a\n"
            "GLOB (all when none is given), each in its own process.\n"
            "Other Criterion options (--jobs=N, --verbose, ...) are accepted\n"
            "and ignored.\n",
            prog);
}

int main(int argc, char **argv)
{
    char *pats[64];
    int npats = 0;
    bool list = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *pat = NULL;
        if (strncmp(a, "--filter=", 9) == 0)
            pat = argv[i] + 9;
        else if (strcmp(a, "--filter") == 0 && i + 1 < argc)
            pat = argv[++i];
        else if (strcmp(a, "--list") == 0)
            list = true;
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(argv[0]);
            return 0;
        } else if (a[0] != '-')
            pat = argv[i];
        if (pat != NULL) {
            if (npats == (int)(sizeof pats / sizeof pats[0])) {
                fprintf(stderr, "%s: too many patterns\n", argv[0]);
                return 2;
            }
            pats[npats++] = pat;
        }
    }
    if (list) {
        for (const struct cr__test *t = tests; t != NULL; t = t->next)
            if (selected(t, pats, npats))
                printf("%s::%s\n", t->suite, t->name);
        return 0;
    }

    out = mmap(NULL, sizeof *out, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (out == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    struct tally n = {0, 0, 0, 0};
    for (const struct cr__test *t = tests; t != NULL; t = t->next) {
        if (!selected(t, pats, npats))
            continue;
        const struct cr__suite *s = suite_of(t);
        struct cr__opts o = t->opts;
        if (s != NULL) {
            if (o.timeout <= 0)
                o.timeout = s->opts.timeout;
            if (o.signal == 0)
                o.signal = s->opts.signal;
            if (o.exit_code == 0)
                o.exit_code = s->opts.exit_code;
            o.disabled = o.disabled || s->opts.disabled;
        }
        if (o.disabled) {
            fprintf(stderr, "[SKIP] %s::%s: test is disabled\n", t->suite,
                    t->name);
            continue;
        }
        run_one(t, s, &o, &n);
    }
    fprintf(stderr,
            "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | "
            "Crashing: %d\n",
            n.tested, n.passing, n.failing, n.crashing);
    fprintf(stderr, "%d passed, %d failed\n", n.passing, n.failing);
    munmap(out, sizeof *out);
    return n.failing == 0 ? 0 : 1;
}
