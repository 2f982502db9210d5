/*
 * test_log.c — the logger: levels and their default, the three line
 * formats (text, logfmt, JSON) with escaping and bounds, the sink contract
 * (structured fields, one whole line per event, never entered twice at
 * once), the stderr default and logging from processes.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dspex/log.h"
#include "dspex/runtime.h"

/* ---- capture sink ---------------------------------------------------------- */

#define MAXL 64

static struct {
    char lines[MAXL][DX_LOG_LINE_MAX];
    char events[MAXL][64];
    dx_log_level levels[MAXL];
    size_t nfields[MAXL];
    dx_pid pids[MAXL];
    size_t n;
} got;

static void sink(const dx_log_record *r, void *ud)
{
    (void)ud;
    /* No assertions here: the sink may run on a scheduler thread. */
    if (got.n >= MAXL || strlen(r->line) != r->len)
        return;
    memcpy(got.lines[got.n], r->line, r->len + 1);
    snprintf(got.events[got.n], sizeof got.events[0], "%s", r->event);
    got.levels[got.n] = r->level;
    got.nfields[got.n] = r->nfields;
    got.pids[got.n] = r->pid;
    got.n++;
}

static void capture(dx_log_format fmt, dx_log_level level)
{
    memset(&got, 0, sizeof got);
    dx_log_set_sink(sink, NULL);
    dx_log_set_format(fmt);
    dx_log_set_level(level);
}

/* ---- a minimal JSON checker (objects of strings, numbers, true) -------- */

static const char *js_ws(const char *p)
{
    while (*p == ' ')
        p++;
    return p;
}

static const char *js_string(const char *p)
{
    if (*p != '"')
        return NULL;
    for (p++; *p != '"'; p++) {
        if ((unsigned char)*p < 0x20 || *p == '\0')
            return NULL;
        if (*p == '\\') {
            p++;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i])
                        return NULL;
                p += 4;
            } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
                return NULL;
            }
        }
    }
    return p + 1;
}

static const char *js_value(const char *p)
{
    if (*p == '"')
        return js_string(p);
    if (strncmp(p, "true", 4) == 0)
        return p + 4;
    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return NULL;
    while (*p >= '0' && *p <= '9')
        p++;
    return p;
}

/* Whether line is one flat JSON object, nothing before or after. */
static bool json_ok(const char *line)
{
    const char *p = js_ws(line);
    if (*p++ != '{')
        return false;
    p = js_ws(p);
    if (*p == '}')
        return p[1] == '\0';
    for (;;) {
        p = js_string(js_ws(p));
        if (p == NULL)
            return false;
        p = js_ws(p);
        if (*p++ != ':')
            return false;
        p = js_value(js_ws(p));
        if (p == NULL)
            return false;
        p = js_ws(p);
        if (*p == '}')
            return p[1] == '\0';
        if (*p++ != ',')
            return false;
    }
}

/* ---- levels ----------------------------------------------------------------- */

Test(log, default_level_is_notice_so_errors_show_and_progress_does_not,
     .timeout = 10)
{
    if (getenv("DX_LOG_LEVEL") != NULL)
        cr_skip_test("DX_LOG_LEVEL is set in the environment");
    cr_expect_eq(dx_log_get_level(), DX_LOG_NOTICE);
    cr_expect(dx_log_enabled(DX_LOG_ERROR));
    cr_expect(dx_log_enabled(DX_LOG_NOTICE));
    cr_expect(!dx_log_enabled(DX_LOG_INFO));
    cr_expect(!dx_log_enabled(DX_LOG_DEBUG));
}

Test(log, events_below_the_level_never_reach_the_sink, .timeout = 10)
{
    capture(DX_LOG_TEXT, DX_LOG_WARNING);
    dx_log_event(DX_LOG_INFO, "hidden", NULL, 0);
    dx_log_event(DX_LOG_DEBUG, "hidden", NULL, 0);
    dx_log_event(DX_LOG_WARNING, "shown", NULL, 0);
    dx_log_event(DX_LOG_ERROR, "shown", NULL, 0);
    cr_assert_eq(got.n, 2);
    cr_expect_str_eq(got.events[0], "shown");
    cr_expect_eq(got.levels[1], DX_LOG_ERROR);

    dx_log_set_level(DX_LOG_NONE);
    dx_log_event(DX_LOG_ERROR, "off", NULL, 0);
    cr_expect_eq(got.n, 2);
    cr_expect(!dx_log_enabled(DX_LOG_ERROR));
    /* NONE is a threshold, not a level to log at. */
    dx_log_set_level(DX_LOG_DEBUG);
    dx_log_event(DX_LOG_NONE, "never", NULL, 0);
    cr_expect_eq(got.n, 2);
    cr_expect_eq(dx_log_set_level(DX_LOG_ERROR), DX_LOG_DEBUG);
}

Test(log, level_and_format_names_parse_and_bad_ones_are_rejected, .timeout = 10)
{
    dx_log_level l;
    cr_expect_eq(dx_log_level_parse("Info", &l), DX_OK);
    cr_expect_eq(l, DX_LOG_INFO);
    cr_expect_eq(dx_log_level_parse("none", &l), DX_OK);
    cr_expect_eq(l, DX_LOG_NONE);
    cr_expect_eq(dx_log_level_parse("loud", &l), DX_EINVAL);
    cr_expect_eq(dx_log_level_parse(NULL, &l), DX_EINVAL);
    cr_expect_str_eq(dx_log_level_name(DX_LOG_WARNING), "warning");
    cr_expect_str_eq(dx_log_level_name((dx_log_level)42), "?");
    dx_log_format f;
    cr_expect_eq(dx_log_format_parse("json", &f), DX_OK);
    cr_expect_eq(f, DX_LOG_JSON);
    cr_expect_eq(dx_log_format_parse("kv", &f), DX_OK);
    cr_expect_eq(f, DX_LOG_LOGFMT);
    cr_expect_eq(dx_log_format_parse("xml", &f), DX_EINVAL);
}

/* The environment sets the starting level and format (read at first use,
 * which in this fresh test process is the first call below). */
Test(log, environment_sets_the_initial_level_and_format, .timeout = 10)
{
    setenv("DX_LOG_LEVEL", "debug", 1);
    setenv("DX_LOG_FORMAT", "json", 1);
    cr_expect_eq(dx_log_get_level(), DX_LOG_DEBUG);
    cr_expect_eq(dx_log_get_format(), DX_LOG_JSON);
    unsetenv("DX_LOG_LEVEL");
    unsetenv("DX_LOG_FORMAT");
}

/* ---- formats ---------------------------------------------------------------- */

static void log_sample(void)
{
    dx_term *reason = dx_tuple(2, dx_atom("badarg"), dx_str("x y"));
    dx_log_field f[] = {
        DX_LOG_STR("supervisor", "root"),       DX_LOG_STR("child", "db pool"),
        DX_LOG_TERM("reason", reason),          DX_LOG_INT("restarts", 3),
        DX_LOG_STR("note", "say \"hi\"\nnext"),
    };
    dx_log_event(DX_LOG_ERROR, "child_terminated", f, 5);
    dx_term_free(reason);
}

Test(log, text_lines_read_as_prose_with_key_values, .timeout = 10)
{
    capture(DX_LOG_TEXT, DX_LOG_INFO);
    log_sample();
    cr_assert_eq(got.n, 1);
    const char *l = got.lines[0];
    cr_expect(strstr(l, " error child_terminated: supervisor=root "
                        "child=db pool reason={badarg,<<\"x y\">>} "
                        "restarts=3 note=say \"hi\"\\nnext") != NULL,
              "%s", l);
    cr_expect(strchr(l, '\n') == NULL);
    cr_expect_eq(got.nfields[0], 5);

    dx_logf(DX_LOG_WARNING, "disk at %d%%", 91);
    cr_assert_eq(got.n, 2);
    cr_expect(strstr(got.lines[1], " warning disk at 91%") != NULL, "%s",
              got.lines[1]);
    cr_expect_str_eq(got.events[1], "message");
}

Test(log, logfmt_quotes_only_values_that_need_it, .timeout = 10)
{
    capture(DX_LOG_LOGFMT, DX_LOG_INFO);
    log_sample();
    cr_assert_eq(got.n, 1);
    const char *l = got.lines[0];
    cr_expect(strncmp(l, "ts=", 3) == 0, "%s", l);
    cr_expect(strstr(l, " level=error event=child_terminated "
                        "supervisor=root child=\"db pool\" "
                        "reason=\"{badarg,<<\\\"x y\\\">>}\" restarts=3 "
                        "note=\"say \\\"hi\\\"\\nnext\"") != NULL,
              "%s", l);
}

Test(log, json_lines_are_valid_objects_with_numbers_unquoted, .timeout = 10)
{
    capture(DX_LOG_JSON, DX_LOG_INFO);
    log_sample();
    cr_assert_eq(got.n, 1);
    const char *l = got.lines[0];
    cr_expect(json_ok(l), "not JSON: %s", l);
    cr_expect(strstr(l, "\"level\":\"error\",\"event\":\"child_terminated\"") !=
                  NULL,
              "%s", l);
    cr_expect(strstr(l, "\"restarts\":3") != NULL, "%s", l);
    cr_expect(strstr(l, "\"note\":\"say \\\"hi\\\"\\nnext\"") != NULL, "%s", l);
    /* Control bytes become \u escapes. */
    dx_log_field f = DX_LOG_STR("bell", "a\x07z");
    dx_log_event(DX_LOG_ERROR, "ctl", &f, 1);
    cr_assert_eq(got.n, 2);
    cr_expect(json_ok(got.lines[1]), "%s", got.lines[1]);
    cr_expect(strstr(got.lines[1], "a\\u0007z") != NULL, "%s", got.lines[1]);
}

Test(log, long_values_and_lines_are_cut_but_stay_one_valid_line, .timeout = 10)
{
    static char big[3 * DX_LOG_VALUE_MAX];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    dx_log_field f[12];
    for (int i = 0; i < 12; i++)
        f[i] = DX_LOG_STR("k", big);
    for (int fmt = DX_LOG_TEXT; fmt <= DX_LOG_JSON; fmt++) {
        capture((dx_log_format)fmt, DX_LOG_INFO);
        dx_log_event(DX_LOG_ERROR, "big", f, 12);
        cr_assert_eq(got.n, 1);
        const char *l = got.lines[0];
        cr_expect(strlen(l) < DX_LOG_LINE_MAX);
        cr_expect(strstr(l, "...") != NULL, "values are marked as cut");
        cr_expect(strstr(l, "truncated") != NULL, "the line says it was cut");
        cr_expect(strstr(l, big) == NULL, "a whole oversized value");
        if (fmt == DX_LOG_JSON)
            cr_expect(json_ok(l), "cut JSON must still parse: %.80s", l);
    }
}

Test(log, a_cut_never_splits_a_utf8_character, .timeout = 10)
{
    /* 2-byte characters so the limit falls inside one. */
    static char s[2 * DX_LOG_VALUE_MAX + 3];
    for (size_t i = 0; i + 1 < sizeof s; i += 2) {
        s[i] = (char)0xC3;
        s[i + 1] = (char)0xA9; /* é */
    }
    s[sizeof s - 1] = '\0';
    capture(DX_LOG_JSON, DX_LOG_INFO);
    dx_log_field f = DX_LOG_STR("v", s);
    dx_log_event(DX_LOG_ERROR, "utf8", &f, 1);
    cr_assert_eq(got.n, 1);
    const char *cut = strstr(got.lines[0], "...");
    cr_assert(cut != NULL);
    /* The byte before the marker ends a character (é is C3 A9). */
    cr_expect_eq((unsigned char)cut[-1], 0xA9);
}

/* ---- sinks ------------------------------------------------------------------- */

Test(log, null_sink_restores_stderr_with_one_line_per_event, .timeout = 10)
{
    char path[] = "/tmp/dx_log_test_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    dx_log_set_sink(sink, NULL);
    dx_log_set_sink(NULL, NULL);
    dx_log_set_format(DX_LOG_LOGFMT);
    dx_log_set_level(DX_LOG_INFO);
    dx_log_event(DX_LOG_ERROR, "first", NULL, 0);
    dx_log_field f = DX_LOG_STR("multi", "line\nvalue");
    dx_log_event(DX_LOG_INFO, "second", &f, 1);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char buf[1024] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    unlink(path);
    cr_assert(n > 0);
    int lines = 0;
    for (ssize_t i = 0; i < n; i++)
        lines += buf[i] == '\n';
    cr_expect_eq(lines, 2, "%s", buf);
    cr_expect(strstr(buf, "event=first") != NULL, "%s", buf);
    cr_expect(strstr(buf, "multi=\"line\\nvalue\"") != NULL, "%s", buf);
}

/* Many threads at once: every line arrives whole, and the sink is never
 * running twice at the same time. */
#define NTHREADS 4
#define PER_THREAD 2000

static atomic_int in_sink, overlap, count, malformed;

static void counting_sink(const dx_log_record *r, void *ud)
{
    (void)ud;
    if (atomic_fetch_add(&in_sink, 1) != 0)
        atomic_fetch_add(&overlap, 1);
    int64_t t = -1, i = -1;
    for (size_t k = 0; k < r->nfields; k++) {
        if (strcmp(r->fields[k].key, "thread") == 0)
            t = r->fields[k].v.i;
        if (strcmp(r->fields[k].key, "i") == 0)
            i = r->fields[k].v.i;
    }
    char want[128];
    snprintf(want, sizeof want, "event=tick thread=%lld i=%lld pad=%s",
             (long long)t, (long long)i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    if (strstr(r->line, want) == NULL)
        atomic_fetch_add(&malformed, 1);
    atomic_fetch_add(&count, 1);
    atomic_fetch_sub(&in_sink, 1);
}

static void *logger_thread(void *arg)
{
    int64_t t = (int64_t)(intptr_t)arg;
    for (int64_t i = 0; i < PER_THREAD; i++) {
        dx_log_field f[] = {
            DX_LOG_INT("thread", t), DX_LOG_INT("i", i),
            DX_LOG_STR("pad", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")};
        dx_log_event(DX_LOG_ERROR, "tick", f, 3);
    }
    return NULL;
}

Test(log, concurrent_loggers_get_whole_lines_and_a_serialised_sink,
     .timeout = 30)
{
    dx_log_set_format(DX_LOG_LOGFMT);
    dx_log_set_level(DX_LOG_INFO);
    dx_log_set_sink(counting_sink, NULL);
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, logger_thread, (void *)(intptr_t)i);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    cr_expect_eq(atomic_load(&count), NTHREADS * PER_THREAD);
    cr_expect_eq(atomic_load(&overlap), 0);
    cr_expect_eq(atomic_load(&malformed), 0);
}

/* ---- from processes ---------------------------------------------------------- */

static dx_pid logged_from;

static void logging_proc(void *arg)
{
    (void)arg;
    logged_from = dx_self();
    dx_log_field f = DX_LOG_PID("who", dx_self());
    dx_log_event(DX_LOG_ERROR, "from_proc", &f, 1);
}

Test(log, a_record_names_the_process_that_logged_it, .timeout = 30)
{
    capture(DX_LOG_TEXT, DX_LOG_INFO);
    cr_assert_eq(dx_runtime_start(NULL), DX_OK);
    dx_pid pid;
    cr_assert_eq(dx_spawn(logging_proc, NULL, &pid), DX_OK);
    /* DX_ENOPROC: it had already exited (and logged) when the wait began. */
    int rc = dx_wait_exit(pid, 10000, NULL);
    cr_assert(rc == DX_OK || rc == DX_ENOPROC, "%s", dx_err_name(rc));
    cr_assert_eq(dx_runtime_stop(), DX_OK);
    dx_log_event(DX_LOG_ERROR, "from_host", NULL, 0);
    cr_assert_eq(got.n, 2);
    cr_expect(dx_pid_eq(got.pids[0], logged_from));
    cr_expect(dx_pid_is_none(got.pids[1]));
    dx_term *t = dx_pid_term(logged_from);
    char want[64];
    dx_term_format(t, want, sizeof want);
    dx_term_free(t);
    cr_expect(strstr(got.lines[0], want) != NULL, "%s lacks %s", got.lines[0],
              want);
    cr_expect(strstr(got.lines[0], "who=<") != NULL);
}

Test(log, level_and_format_names_parse_and_bad_ones_are_refused)
{
    dx_log_level lv = DX_LOG_INFO;
    cr_expect_eq(dx_log_level_parse("OFF", &lv), DX_OK);
    cr_expect_eq(lv, DX_LOG_NONE);
    cr_expect_eq(dx_log_level_parse("loud", &lv), DX_EINVAL);
    cr_expect_eq(dx_log_level_parse(NULL, &lv), DX_EINVAL);
    dx_log_format f = DX_LOG_JSON;
    cr_expect_eq(dx_log_format_parse("Text", &f), DX_OK);
    cr_expect_eq(f, DX_LOG_TEXT);
    cr_expect_eq(dx_log_format_parse("kv", &f), DX_OK);
    cr_expect_eq(f, DX_LOG_LOGFMT);
    cr_expect_eq(dx_log_format_parse("yaml", &f), DX_EINVAL);
    cr_expect_eq(dx_log_format_parse(NULL, &f), DX_EINVAL);
    /* A level out of range silences the log rather than opening it. */
    dx_log_level before = dx_log_set_level((dx_log_level)99);
    cr_expect_eq(dx_log_set_level(before), DX_LOG_NONE);
}
