/*
 * eval_report.c — what an evaluation shows and writes: the live progress
 * display (a bar redrawn in place on a terminal, plain periodic lines
 * otherwise), latency percentiles, the results as JSONL and as a text
 * table. The engine that produces the results is evaluate.c.
 *
 * The table measures text in terminal columns (dx__display_width): a CJK
 * character takes two, a combining mark none, so rows line up.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "eval_int.h"
#include "pyjson.h"

#define BAR_WIDTH 20
#define BAR_REDRAW_S 0.1 /* at most ~10 redraws a second */

/* ---- progress ---------------------------------------------------------- */

struct dx__progress {
    FILE *out;
    dx_eval_progress_mode mode; /* BAR, LINES or OFF once made */
    size_t total;
    size_t resumed; /* done before this run: not in its pace */
    double interval_s;
    double last_s; /* when the bar was drawn / the last line printed */
    bool drawn;    /* the bar has been drawn at least once */
};

dx__progress *dx__progress_new(FILE *out, dx_eval_progress_mode mode,
                               size_t total, double interval_s)
{
    dx__progress *p = dx_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->out = out ? out : stderr;
    if (mode == DX_EVAL_PROGRESS_AUTO) {
        int fd = fileno(p->out);
        mode = fd >= 0 && isatty(fd) ? DX_EVAL_PROGRESS_BAR
                                     : DX_EVAL_PROGRESS_LINES;
    }
    p->mode = mode;
    p->total = total;
    p->interval_s = interval_s > 0 ? interval_s : 2.0;
    return p;
}

void dx__progress_free(dx__progress *p)
{
    dx_free(p);
}

/* "2.3s", "4m05s", "2h07m". */
static void fmt_dur(char *buf, size_t cap, double s)
{
    if (!(s >= 0) || s > 1e9)
        s = 0;
    if (s < 60) {
        snprintf(buf, cap, "%.1fs", s);
    } else if (s < 3600) {
        long t = (long)s;
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    } else {
        long t = (long)(s / 60);
        snprintf(buf, cap, "%ldh%02ldm", t / 60, t % 60);
    }
}

static double pct(double score_sum, size_t done)
{
    return done ? 100.0 * score_sum / (double)done : 0.0;
}

/* The ETA: time per finished example times those left; "?" before the
 * first one finishes. */
static void fmt_eta(char *buf, size_t cap, size_t done, size_t resumed,
                    size_t total, double now_s)
{
    if (done <= resumed || done > total) {
        snprintf(buf, cap, "?");
        return;
    }
    fmt_dur(buf, cap,
            now_s / (double)(done - resumed) * (double)(total - done));
}

static int digits(size_t v)
{
    int d = 1;
    while (v >= 10)
        v /= 10, d++;
    return d;
}

static void draw_bar(dx__progress *p, size_t done, size_t errors,
                     double score_sum, double now_s, bool final, bool stopped)
{
    char bar[BAR_WIDTH + 1];
    size_t fill =
        p->total ? (done >= p->total ? BAR_WIDTH : done * BAR_WIDTH / p->total)
                 : BAR_WIDTH;
    memset(bar, '#', fill);
    memset(bar + fill, '-', BAR_WIDTH - fill);
    bar[BAR_WIDTH] = '\0';
    char el[32], eta[32];
    fmt_dur(el, sizeof el, now_s);
    fmt_eta(eta, sizeof eta, done, p->resumed, p->total, now_s);
    /* \r returns to the line's start, ESC[K clears what a longer earlier
     * drawing left behind. */
    fprintf(p->out, "\rEvaluating [%s] %*zu/%zu  score %.2f%%  errors %zu  %s",
            bar, digits(p->total), done, p->total, pct(score_sum, done), errors,
            el);
    if (!final)
        fprintf(p->out, "  ETA %s", eta);
    else if (stopped)
        fputs("  stopped", p->out);
    fputs("\x1b[K", p->out);
    if (final)
        fputc('\n', p->out);
    fflush(p->out);
    p->drawn = true;
    p->last_s = now_s;
}

static void print_line(dx__progress *p, size_t done, size_t errors,
                       double score_sum, double now_s, bool final, bool stopped)
{
    char el[32], eta[32];
    fmt_dur(el, sizeof el, now_s);
    fmt_eta(eta, sizeof eta, done, p->resumed, p->total, now_s);
    fprintf(p->out,
            "evaluate: %zu/%zu done, score %.2f%%, %zu error%s, %s elapsed",
            done, p->total, pct(score_sum, done), errors,
            errors == 1 ? "" : "s", el);
    if (!final)
        fprintf(p->out, ", ETA %s", eta);
    else if (stopped)
        fputs(", stopped", p->out);
    fputc('\n', p->out);
    fflush(p->out);
    p->last_s = now_s;
}

void dx__progress_update(dx__progress *p, size_t done, size_t errors,
                         double score_sum, double now_s)
{
    if (!p)
        return;
    if (p->mode == DX_EVAL_PROGRESS_BAR) {
        if (!p->drawn || now_s - p->last_s >= BAR_REDRAW_S)
            draw_bar(p, done, errors, score_sum, now_s, false, false);
    } else if (p->mode == DX_EVAL_PROGRESS_LINES) {
        /* The first line comes one interval after the start: a short
         * evaluation prints only its final line. */
        if (now_s - p->last_s >= p->interval_s)
            print_line(p, done, errors, score_sum, now_s, false, false);
    }
}

void dx__progress_resumed(dx__progress *p, size_t n)
{
    if (p)
        p->resumed = n;
}

double dx__progress_next_s(const dx__progress *p)
{
    if (!p || p->mode == DX_EVAL_PROGRESS_OFF)
        return INFINITY;
    if (p->mode == DX_EVAL_PROGRESS_BAR)
        return p->drawn ? p->last_s + BAR_REDRAW_S : 0;
    return p->last_s + p->interval_s;
}

void dx__progress_finish(dx__progress *p, size_t done, size_t errors,
                         double score_sum, double now_s, bool stopped)
{
    if (!p)
        return;
    if (p->mode == DX_EVAL_PROGRESS_BAR)
        draw_bar(p, done, errors, score_sum, now_s, true, stopped);
    else if (p->mode == DX_EVAL_PROGRESS_LINES)
        print_line(p, done, errors, score_sum, now_s, true, stopped);
}

/* ---- percentiles ------------------------------------------------------- */

static int dblcmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile q of v[0..n), sorted and not empty. */
static double percentile_of_sorted(const double *v, size_t n, double q)
{
    if (!(q > 0))
        q = 0;
    if (q > 100)
        q = 100;
    double pos = q / 100.0 * (double)(n - 1);
    size_t lo = (size_t)pos;
    size_t hi = lo + 1 < n ? lo + 1 : lo;
    return v[lo] + (v[hi] - v[lo]) * (pos - (double)lo);
}

void dx__percentiles(double *v, size_t n, const double *qs, double *out,
                     size_t nq)
{
    if (v && n > 0)
        qsort(v, n, sizeof *v, dblcmp);
    for (size_t i = 0; i < nq; i++)
        out[i] = v && n > 0 ? percentile_of_sorted(v, n, qs[i]) : 0;
}

double dx__percentile(double *v, size_t n, double q)
{
    double out;
    dx__percentiles(v, n, &q, &out, 1);
    return out;
}

/* ---- JSONL ------------------------------------------------------------- */

static void put_num(dx__sb *b, double v)
{
    char buf[32];
    if (!isfinite(v)) { /* not JSON: Python would write NaN */
        dx__sb_puts(b, "null");
        return;
    }
    dx__pyfloat_repr(v, buf);
    dx__sb_puts(b, buf);
}

static void put_fields(dx__sb *b, const dx_example *ex)
{
    dx__sb_putc(b, '{');
    for (size_t i = 0, n = dx_example_len(ex); i < n; i++) {
        if (i)
            dx__sb_putc(b, ',');
        const char *k = dx_example_key(ex, i);
        dx__pyjson_str(b, k, strlen(k));
        dx__sb_putc(b, ':');
        dx__pyjson_dump_sep(b, dx_example_value(ex, i), -1, ",", ":");
    }
    dx__sb_putc(b, '}');
}

static const char *row_error(const dx_eval_row *row)
{
    return row->error_msg && row->error_msg[0] ? row->error_msg
                                               : dx_strerror(row->error);
}

void dx__eval_row_jsonl(dx__sb *b, const dx_eval_row *row)
{
    dx__sb_printf(b, "{\"index\":%zu,\"example\":", row->index);
    if (row->example)
        put_fields(b, row->example);
    else
        dx__sb_puts(b, "null");
    dx__sb_puts(b, ",\"prediction\":");
    if (row->pred)
        put_fields(b, dx_prediction_fields(row->pred));
    else
        dx__sb_puts(b, "null");
    dx__sb_puts(b, ",\"score\":");
    put_num(b, row->score);
    dx__sb_puts(b, ",\"error\":");
    if (row->error != DX_OK) {
        const char *e = row_error(row);
        dx__pyjson_str(b, e, strlen(e));
    } else {
        dx__sb_puts(b, "null");
    }
    dx__sb_printf(b, ",\"error_code\":%d,\"latency_ms\":", row->error);
    put_num(b, row->latency_ms);
    /* "cached": every LM call of the example came from the response cache
     * (so its tokens and cost are 0 by design, not missing). */
    dx__sb_printf(b,
                  ",\"input_tokens\":%lld,\"output_tokens\":%lld,"
                  "\"cost_usd\":",
                  (long long)row->usage.input_tokens,
                  (long long)row->usage.output_tokens);
    put_num(b, row->usage.cost_usd);
    dx__sb_printf(
        b, ",\"cached\":%s,\"lm_calls\":%lld,\"cached_calls\":%lld",
        row->usage.calls > 0 && row->usage.cached_calls == row->usage.calls
            ? "true"
            : "false",
        (long long)row->usage.calls, (long long)row->usage.cached_calls);
    if (row->run_key) {
        dx__sb_puts(b, ",\"run_key\":");
        dx__pyjson_str(b, row->run_key, strlen(row->run_key));
    }
    dx__sb_puts(b, "}\n");
}

/* Rows that never ran (stopped early, cancelled) are not results and are
 * left out; "index" says which examples the rows are. */
int dx_eval_result_write_jsonl(const dx_eval_result *r, const char *path,
                               dx_diag *diag)
{
    if (!r || !path)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "evaluate: NULL argument");
    dx__pyjson_init();
    dx__sb b;
    dx__sb_init(&b);
    for (size_t i = 0; i < r->n; i++)
        if (r->rows[i].done)
            dx__eval_row_jsonl(&b, &r->rows[i]);
    if (b.oom) {
        dx__sb_free(&b);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", path);
    }
    int rc = dx__write_file_atomic(path, b.p ? b.p : "", b.len, diag);
    dx__sb_free(&b);
    return rc;
}

/* ---- the table --------------------------------------------------------- */

#define COL_TEXT 40 /* terminal columns of the input and of the prediction */

/* s on one line (control characters as spaces), cut to at most max
 * terminal columns with "…" as the last one; never splits a UTF-8
 * sequence, and a mark stays with its letter. Returns the columns
 * written (a wide character that does not fit leaves one short). */
static size_t put_clipped(dx__sb *b, const char *s, size_t max)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), cols = 0, cut = n, cut_cols = 0;
    for (size_t i = 0; i < n;) {
        size_t len;
        uint32_t cp = dx__utf8_decode(u + i, n - i, &len);
        size_t w = cp < 0x20 || cp == 0x7F ? 1 : (size_t)dx__display_width(cp);
        if (cut == n && cols + w > max - 1 && w > 0) {
            cut = i; /* where "…" goes if the text is too long */
            cut_cols = cols;
        }
        cols += w;
        i += len;
        if (cols > max)
            break;
    }
    size_t end = cols > max ? cut : n;
    for (size_t i = 0; i < end; i++) {
        unsigned char c = u[i];
        dx__sb_putc(b, c < 0x20 || c == 0x7F ? ' ' : (char)c);
    }
    if (cols > max) {
        dx__sb_puts(b, "\xE2\x80\xA6");
        return cut_cols + 1;
    }
    return cols;
}

/* The inputs: values of the designated inputs (all keys when none are
 * designated), Python str() each, joined by " | ". */
static void inputs_text(dx__sb *b, const dx_example *ex)
{
    bool any = false, designated = dx_example_has_inputs(ex);
    for (size_t i = 0, n = dx_example_len(ex); i < n; i++) {
        if (designated && !dx_example_is_input(ex, dx_example_key(ex, i)))
            continue;
        if (any)
            dx__sb_puts(b, " | ");
        dx__pystr(b, dx_example_value(ex, i));
        any = true;
    }
}

/* The prediction: its fields other than "reasoning" (long, and it comes
 * first); one field alone as its value, several as "key: value | ...". */
static void pred_text(dx__sb *b, const dx_prediction *p)
{
    const dx_example *f = dx_prediction_fields(p);
    size_t n = dx_example_len(f), shown = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(dx_example_key(f, i), "reasoning") != 0)
            shown++;
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        const char *k = dx_example_key(f, i);
        if (shown > 0 && strcmp(k, "reasoning") == 0)
            continue;
        if (any)
            dx__sb_puts(b, " | ");
        if (shown > 1 || (shown == 0 && n > 1))
            dx__sb_printf(b, "%s: ", k);
        dx__pystr(b, dx_example_value(f, i));
        any = true;
    }
}

static void print_row(FILE *f, const dx_eval_row *row)
{
    dx__sb line, t;
    dx__sb_init(&line);
    dx__sb_init(&t);
    if (row->done)
        dx__sb_printf(&line, "%6zu  %5.2f  %9.1fms  ", row->index, row->score,
                      row->latency_ms);
    else
        dx__sb_printf(&line, "%6zu  %5s  %11s  ", row->index, "-", "-");
    if (row->example)
        inputs_text(&t, row->example);
    /* Padded, so the arrows line up. */
    for (size_t w = put_clipped(&line, dx__sb_cstr(&t) ? dx__sb_cstr(&t) : "",
                                COL_TEXT);
         w < COL_TEXT; w++)
        dx__sb_putc(&line, ' ');
    dx__sb_puts(&line, " \xE2\x86\x92 ");
    dx__sb_free(&t);
    dx__sb_init(&t);
    if (!row->done) {
        dx__sb_puts(&t, "(not run)");
    } else if (row->error != DX_OK) {
        dx__sb_printf(&t, "error %s: %s", dx_err_name(row->error),
                      row_error(row));
    } else if (row->pred) {
        pred_text(&t, row->pred);
    }
    put_clipped(&line, dx__sb_cstr(&t) ? dx__sb_cstr(&t) : "",
                row->done && row->error != DX_OK ? 2 * COL_TEXT : COL_TEXT);
    dx__sb_putc(&line, '\n');
    if (!line.oom)
        fputs(dx__sb_cstr(&line), f);
    dx__sb_free(&t);
    dx__sb_free(&line);
}

void dx_eval_result_print(const dx_eval_result *r, FILE *f, size_t max_rows)
{
    if (!r || !f)
        return;
    char wall[32];
    if (r->wall_s >= 0 && r->wall_s < 1) /* a cached or tiny run */
        snprintf(wall, sizeof wall, "%.0f ms", r->wall_s * 1000);
    else
        fmt_dur(wall, sizeof wall, r->wall_s);
    fprintf(f, "score     %.2f%%\n", r->score);
    char resumed[64] = "";
    if (r->n_resumed > 0)
        snprintf(resumed, sizeof resumed, ", %zu resumed from earlier",
                 r->n_resumed);
    fprintf(f, "done      %zu/%zu, %zu error%s%s%s%s\n", r->n_done, r->n,
            r->n_errors, r->n_errors == 1 ? "" : "s", resumed,
            r->stopped_early ? ", stopped early (max_errors)" : "",
            r->cancelled ? ", cancelled" : "");
    fprintf(f, "wall      %s\n", wall);
    if (r->n_done > r->n_errors)
        fprintf(f, "latency   p50 %.1f ms  p95 %.1f ms  p99 %.1f ms\n",
                r->latency_p50_ms, r->latency_p95_ms, r->latency_p99_ms);
    else
        fprintf(f, "latency   none (no example finished without an error)\n");
    fprintf(f, "tokens    %lld in, %lld out, %lld LM calls (%lld cached)\n",
            (long long)r->usage.input_tokens, (long long)r->usage.output_tokens,
            (long long)r->usage.calls, (long long)r->usage.cached_calls);
    fprintf(f, "cost      $%.4f\n", r->usage.cost_usd);
    size_t shown = max_rows && max_rows < r->n ? max_rows : r->n;
    if (shown == 0)
        return;
    fprintf(f, "\n%6s  %5s  %11s  %s\n", "#", "score", "latency",
            "input \xE2\x86\x92 prediction / error");
    for (size_t i = 0; i < shown; i++)
        print_row(f, &r->rows[i]);
    if (shown < r->n)
        fprintf(f, "\xE2\x80\xA6 %zu more row%s\n", r->n - shown,
                r->n - shown == 1 ? "" : "s");
}
