/*
 * test_eval_report.c — what an evaluation shows and writes: latency
 * percentiles as numpy computes them, the progress bar (redrawn in place,
 * throttled) and the plain progress lines (one per interval), both captured
 * in memory with the clock driven by hand, the results as JSONL read back
 * as a dataset, the text table with an ok, a failed and a not-run row, and
 * the CSV and JSON files DSPy's Evaluate saves, byte for byte against
 * Python's own (fixtures/programs/make_eval_save_golden.py).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <errno.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/evaluate.h"
#include "dspex/module.h"
#include "eval_int.h"
#include "pyjson.h"

/* ---- percentiles ------------------------------------------------------- */

Test(eval_report, percentile_interpolates_between_closest_ranks, .timeout = 10)
{
    double v[] = {50, 15, 40, 20, 35};
    cr_expect_float_eq(dx__percentile(v, 5, 40), 29.0, 1e-9);
    cr_expect_float_eq(v[0], 15.0, 0); /* sorted in place */
    cr_expect_float_eq(v[4], 50.0, 0);
    cr_expect_float_eq(dx__percentile(v, 5, 0), 15.0, 1e-9);
    cr_expect_float_eq(dx__percentile(v, 5, 100), 50.0, 1e-9);
    cr_expect_float_eq(dx__percentile(v, 5, 50), 35.0, 1e-9);

    double w[100];
    for (int i = 0; i < 100; i++)
        w[i] = 100 - i; /* 100 .. 1 */
    cr_expect_float_eq(dx__percentile(w, 100, 50), 50.5, 1e-9);
    cr_expect_float_eq(dx__percentile(w, 100, 95), 95.05, 1e-9);
    cr_expect_float_eq(dx__percentile(w, 100, 99), 99.01, 1e-9);

    double one = 7;
    cr_expect_float_eq(dx__percentile(&one, 1, 99), 7.0, 0);
    cr_expect_float_eq(dx__percentile(NULL, 0, 50), 0.0, 0);

    /* Several at once from one sort: the same values, in the order asked. */
    for (int i = 0; i < 100; i++)
        w[i] = 100 - i;
    const double qs[] = {99, 50, 95, 0};
    double got[4] = {-1, -1, -1, -1};
    dx__percentiles(w, 100, qs, got, 4);
    cr_expect_float_eq(got[0], 99.01, 1e-9);
    cr_expect_float_eq(got[1], 50.5, 1e-9);
    cr_expect_float_eq(got[2], 95.05, 1e-9);
    cr_expect_float_eq(got[3], 1.0, 1e-9);
    dx__percentiles(NULL, 0, qs, got, 2);
    cr_expect_float_eq(got[0], 0.0, 0);
    cr_expect_float_eq(got[1], 0.0, 0);
}

/* ---- progress ---------------------------------------------------------- */

typedef struct capture {
    FILE *f;
    char *buf;
    size_t len;
} capture;

static void cap_open(capture *c)
{
    memset(c, 0, sizeof *c);
    c->f = open_memstream(&c->buf, &c->len);
    cr_assert_not_null(c->f);
}

/* What was written since the last call (the stream stays open). */
static char *cap_take(capture *c)
{
    fflush(c->f);
    char *s = strndup(c->buf ? c->buf : "", c->len);
    cr_assert_not_null(s);
    rewind(c->f);
    return s;
}

static void cap_close(capture *c)
{
    fclose(c->f);
    free(c->buf);
}

static void expect_out(capture *c, const char *want)
{
    char *s = cap_take(c);
    cr_expect_str_eq(s, want);
    free(s);
}

Test(eval_report, lines_print_once_per_interval_and_a_final_line, .timeout = 10)
{
    capture c;
    cap_open(&c);
    dx__progress *p = dx__progress_new(c.f, DX_EVAL_PROGRESS_LINES, 100, 2.0);
    cr_assert_not_null(p);
    dx__progress_update(p, 10, 0, 10, 0.5);
    dx__progress_update(p, 40, 0, 25, 1.9);
    expect_out(&c, "");
    dx__progress_update(p, 45, 1, 28, 2.0);
    expect_out(&c, "evaluate: 45/100 done, score 62.22%, 1 error, 2.0s "
                   "elapsed, ETA 2.4s\n");
    dx__progress_update(p, 60, 1, 40, 3.9);
    expect_out(&c, "");
    dx__progress_update(p, 80, 2, 50, 4.1);
    expect_out(&c, "evaluate: 80/100 done, score 62.50%, 2 errors, 4.1s "
                   "elapsed, ETA 1.0s\n");
    dx__progress_finish(p, 100, 2, 62, 4.5, false);
    expect_out(&c, "evaluate: 100/100 done, score 62.00%, 2 errors, 4.5s "
                   "elapsed\n");
    dx__progress_free(p);
    cap_close(&c);
}

Test(eval_report, lines_say_when_stopped_and_format_long_times, .timeout = 10)
{
    capture c;
    cap_open(&c);
    dx__progress *p = dx__progress_new(c.f, DX_EVAL_PROGRESS_LINES, 1000, 60);
    cr_assert_not_null(p);
    dx__progress_update(p, 0, 0, 0, 61);
    expect_out(&c, "evaluate: 0/1000 done, score 0.00%, 0 errors, 1m01s "
                   "elapsed, ETA ?\n");
    dx__progress_finish(p, 500, 12, 100, 7325, true);
    expect_out(&c, "evaluate: 500/1000 done, score 20.00%, 12 errors, 2h02m "
                   "elapsed, stopped\n");
    dx__progress_free(p);
    cap_close(&c);
}

Test(eval_report, bar_redraws_in_place_at_most_ten_times_a_second,
     .timeout = 10)
{
    capture c;
    cap_open(&c);
    dx__progress *p = dx__progress_new(c.f, DX_EVAL_PROGRESS_BAR, 100, 0);
    cr_assert_not_null(p);
    dx__progress_update(p, 45, 1, 28, 2.3);
    expect_out(&c, "\rEvaluating [#########-----------]  45/100  score 62.22%"
                   "  errors 1  2.3s  ETA 2.8s\x1b[K");
    dx__progress_update(p, 46, 1, 29, 2.35);
    expect_out(&c, "");
    dx__progress_update(p, 50, 1, 30, 2.45);
    expect_out(&c, "\rEvaluating [##########----------]  50/100  score 60.00%"
                   "  errors 1  2.5s  ETA 2.5s\x1b[K");
    dx__progress_finish(p, 100, 1, 62, 4.0, false);
    expect_out(&c, "\rEvaluating [####################] 100/100  score 62.00%"
                   "  errors 1  4.0s\x1b[K\n");
    dx__progress_free(p);
    cap_close(&c);
}

Test(eval_report, off_prints_nothing_and_auto_on_a_file_prints_lines,
     .timeout = 10)
{
    capture c;
    cap_open(&c);
    dx__progress *p = dx__progress_new(c.f, DX_EVAL_PROGRESS_OFF, 10, 1);
    cr_assert_not_null(p);
    dx__progress_update(p, 5, 0, 5, 3);
    dx__progress_finish(p, 10, 0, 10, 4, false);
    dx__progress_free(p);
    expect_out(&c, "");

    p = dx__progress_new(c.f, DX_EVAL_PROGRESS_AUTO, 10, 1);
    cr_assert_not_null(p);
    dx__progress_finish(p, 10, 0, 10, 4, false);
    dx__progress_free(p);
    expect_out(&c, "evaluate: 10/10 done, score 100.00%, 0 errors, 4.0s "
                   "elapsed\n");
    dx__progress_update(NULL, 1, 1, 1, 1); /* no-ops */
    dx__progress_finish(NULL, 1, 1, 1, 1, false);
    dx__progress_free(NULL);
    cap_close(&c);
}

/* ---- results ----------------------------------------------------------- */

static dx_example *ex_json(const char *json)
{
    dx_example *ex = NULL;
    cr_assert_eq(dx_example_from_json(json, strlen(json), &ex, NULL), DX_OK,
                 "%s", json);
    return ex;
}

/* Three rows as an evaluation stopped after two would leave them: one ok,
 * one timed out, one not run. */
static dx_eval_result *sample_result(const char *long_question)
{
    dx_eval_result *r = dx_calloc(1, sizeof *r);
    cr_assert_not_null(r);
    r->n = 3;
    r->rows = dx_calloc(3, sizeof *r->rows);
    cr_assert_not_null(r->rows);
    const char *keys[] = {"question"};
    for (size_t i = 0; i < 3; i++) {
        r->rows[i].index = i;
        r->rows[i].example =
            ex_json(i == 1 && long_question ? "{\"question\": \"x\"}"
                                            : "{\"question\": \"2+2?\", "
                                              "\"answer\": \"4\"}");
        cr_assert_eq(dx_example_with_inputs(r->rows[i].example, keys, 1),
                     DX_OK);
        dx_usage_acc_init(&r->rows[i].usage, "example");
    }
    if (long_question)
        cr_assert_eq(
            dx_example_set_str(r->rows[1].example, "question", long_question),
            DX_OK);

    dx_eval_row *ok = &r->rows[0];
    ok->done = true;
    ok->score = 1.0;
    ok->latency_ms = 12.5;
    ok->pred = dx_prediction_new();
    cr_assert_not_null(ok->pred);
    dx_example *f = dx_prediction_fields_mut(ok->pred);
    cr_assert_eq(dx_example_set_str(f, "reasoning", "two and two"), DX_OK);
    cr_assert_eq(dx_example_set_str(f, "answer", "4"), DX_OK);
    ok->usage.calls = 1;
    ok->usage.input_tokens = 10;
    ok->usage.output_tokens = 2;
    ok->usage.cost_usd = 0.0001;

    dx_eval_row *bad = &r->rows[1];
    bad->done = true;
    bad->score = 0;
    bad->error = DX_ETIMEDOUT;
    bad->error_msg = dx_strdup("example took longer than 100 ms");
    cr_assert_not_null(bad->error_msg);
    bad->latency_ms = 100.25;

    r->n_done = 2;
    r->n_errors = 1;
    r->stopped_early = true;
    r->score = 50.0;
    r->wall_s = 0.2;
    r->latency_p50_ms = 12.5;
    r->latency_p95_ms = 12.5;
    r->latency_p99_ms = 12.5;
    dx_usage_acc_init(&r->usage, "evaluate");
    dx_usage_acc_merge(&r->usage, &ok->usage);
    return r;
}

static char *tmp_path(const char *tag)
{
    char *p = malloc(256);
    cr_assert_not_null(p);
    snprintf(p, 256, "/tmp/dspex_test_evrep_%ld_%s.jsonl", (long)getpid(), tag);
    return p;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    char *s = calloc(1, 65536);
    cr_assert_not_null(s);
    size_t n = fread(s, 1, 65535, f);
    s[n] = '\0';
    fclose(f);
    return s;
}

Test(eval_report, jsonl_has_one_object_per_finished_row, .timeout = 10)
{
    dx_eval_result *r = sample_result(NULL);
    char *path = tmp_path("rows");
    dx_diag d = {0};
    cr_assert_eq(dx_eval_result_write_jsonl(r, path, &d), DX_OK, "%s", d.msg);

    char *text = slurp(path);
    const char *first =
        "{\"index\":0,\"example\":{\"question\":\"2+2?\",\"answer\":\"4\"},"
        "\"prediction\":{\"reasoning\":\"two and two\",\"answer\":\"4\"},"
        "\"score\":1.0,\"error\":null,\"error_code\":0,\"latency_ms\":12.5,"
        "\"input_tokens\":10,\"output_tokens\":2,\"cost_usd\":0.0001,"
        "\"cached\":false,\"lm_calls\":1,\"cached_calls\":0}\n";
    cr_expect(strncmp(text, first, strlen(first)) == 0, "got %s", text);
    free(text);

    dx_dataset *ds = NULL;
    cr_assert_eq(dx_dataset_load(path, NULL, 0, &ds, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(ds->n, 2); /* the row that never ran is left out */
    dx_example *row = ds->items[1];
    cr_expect_float_eq(dx_example_get_num(row, "index", -1), 1.0, 0);
    cr_expect_str_eq(dx_example_get_str(row, "error", ""),
                     "example took longer than 100 ms");
    cr_expect(cJSON_IsNull(dx_example_get(row, "prediction")));
    cr_expect_float_eq(dx_example_get_num(row, "score", -1), 0.0, 0);
    cr_expect_float_eq(dx_example_get_num(row, "latency_ms", -1), 100.25, 0);
    cr_expect_float_eq(dx_example_get_num(row, "input_tokens", -1), 0.0, 0);
    const cJSON *ex = dx_example_get(row, "example");
    cr_assert(cJSON_IsObject(ex));
    cr_expect_str_eq(cJSON_GetObjectItem(ex, "question")->valuestring, "2+2?");
    dx_dataset_free(ds);
    unlink(path);
    free(path);
    dx_eval_result_free(r);
}

Test(eval_report, jsonl_marks_all_cached_rows_and_names_unwritable_paths,
     .timeout = 10)
{
    dx_eval_result *r = sample_result(NULL);
    r->rows[0].usage.cached_calls = 1;
    r->rows[1].error_msg[0] = '\0'; /* no message: the code's text */
    char *path = tmp_path("cached");
    dx_diag d = {0};
    cr_assert_eq(dx_eval_result_write_jsonl(r, path, &d), DX_OK, "%s", d.msg);
    dx_dataset *ds = NULL;
    cr_assert_eq(dx_dataset_load(path, NULL, 0, &ds, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(ds->n, 2);
    cr_expect(cJSON_IsTrue(dx_example_get(ds->items[0], "cached")));
    cr_expect(cJSON_IsFalse(dx_example_get(ds->items[1], "cached")));
    cr_expect_str_eq(dx_example_get_str(ds->items[1], "error", ""),
                     dx_strerror(DX_ETIMEDOUT));
    dx_dataset_free(ds);
    unlink(path);
    free(path);

    d = (dx_diag){0};
    cr_expect_eq(dx_eval_result_write_jsonl(r, "/nonexistent-dir/x.jsonl", &d),
                 DX_EIO);
    cr_expect(strstr(d.msg, "/nonexistent-dir/x.jsonl") != NULL, "%s", d.msg);
    cr_expect_eq(dx_eval_result_write_jsonl(NULL, "x", &d), DX_EINVAL);
    dx_eval_result_free(r);
}

/* ---- rows read back and journals --------------------------------------- */

/* The dataset sample_result's rows are of. */
static dx_dataset *sample_dataset(void)
{
    dx_dataset *ds = dx_dataset_new();
    cr_assert_not_null(ds);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(
            dx_dataset_append(
                ds, ex_json("{\"question\": \"2+2?\", \"answer\": \"4\"}")),
            DX_OK);
    return ds;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

/* What dx_eval_result_write_jsonl wrote comes back row for row: the
 * prediction, score, error and its code, latency and usage; the row that
 * never ran stays not done; the sums are the rows'. */
Test(eval_report, rows_written_as_jsonl_read_back_as_a_result, .timeout = 10)
{
    dx_eval_result *r = sample_result(NULL);
    r->rows[0].usage.calls = 3;
    r->rows[0].usage.cached_calls = 1;
    char *path = tmp_path("readback");
    dx_diag d = {0};
    cr_assert_eq(dx_eval_result_write_jsonl(r, path, &d), DX_OK, "%s", d.msg);
    dx_dataset *ds = sample_dataset();
    dx_eval_result *back = NULL;
    size_t cut = 9;
    cr_assert_eq(dx_eval_result_read_jsonl(path, ds, &back, &cut, &d), DX_OK,
                 "%s", d.msg);
    cr_expect_eq(cut, 0);
    cr_assert_eq(back->n, 3);
    cr_expect_eq(back->n_done, 2);
    cr_expect_eq(back->n_errors, 1);
    cr_expect_float_eq(back->score, 50.0, 1e-9);
    const dx_eval_row *ok = &back->rows[0];
    cr_assert(ok->done);
    cr_expect_eq(ok->error, DX_OK);
    cr_expect_null(ok->error_msg);
    cr_expect_float_eq(ok->score, 1.0, 0);
    cr_expect_float_eq(ok->latency_ms, 12.5, 0);
    cr_assert_not_null(ok->pred);
    cr_expect_str_eq(dx_prediction_get_str(ok->pred, "reasoning", ""),
                     "two and two");
    cr_expect_str_eq(dx_prediction_get_str(ok->pred, "answer", ""), "4");
    cr_expect_eq(ok->usage.input_tokens, 10);
    cr_expect_eq(ok->usage.output_tokens, 2);
    cr_expect_eq(ok->usage.calls, 3);
    cr_expect_eq(ok->usage.cached_calls, 1);
    cr_expect_float_eq(ok->usage.cost_usd, 0.0001, 1e-12);
    const dx_eval_row *bad = &back->rows[1];
    cr_assert(bad->done);
    cr_expect_eq(bad->error, DX_ETIMEDOUT);
    cr_expect_str_eq(bad->error_msg, "example took longer than 100 ms");
    cr_expect_null(bad->pred);
    cr_expect(!back->rows[2].done, "the row that never ran");
    cr_expect_eq(back->usage.calls, 3);
    cr_expect_float_eq(back->latency_p50_ms, 12.5, 0);
    /* Written again, the file is the same: one format throughout. */
    char *again = tmp_path("readback2");
    cr_assert_eq(dx_eval_result_write_jsonl(back, again, &d), DX_OK);
    char *a = slurp(path), *b = slurp(again);
    cr_expect_str_eq(b, a);
    free(a);
    free(b);
    unlink(again);
    free(again);
    dx_eval_result_free(back);
    dx_dataset_free(ds);
    unlink(path);
    free(path);
    dx_eval_result_free(r);
}

/* A journal's lines in completion order, one written twice, and a last
 * line cut short by a kill: the later line wins, the cut one is counted
 * and its example has no row. */
Test(eval_report, a_journal_cut_short_reads_back_its_whole_rows, .timeout = 10)
{
    char *path = tmp_path("cut");
    write_text(path,
               "{\"index\":2,\"example\":{\"question\":\"2+2?\",\"answer\":"
               "\"4\"},\"prediction\":null,\"score\":0.0,\"error\":\"boom\","
               "\"error_code\":-9}\n"
               "\n"
               "{\"index\":2,\"example\":{\"answer\":\"4\",\"question\":"
               "\"2+2?\"},\"prediction\":{\"answer\":\"4\"},\"score\":1}\n"
               "{\"index\":0,\"example\":{\"question\":\"2+2?\",\"answer\":"
               "\"4\"},\"prediction\":null,\"score\":0.0,\"error\":\"an older "
               "file\",\"cached\":true}\n"
               "{\"index\":1,\"example\":{\"question\":\"2+");
    dx_dataset *ds = sample_dataset();
    dx_eval_result *r = NULL;
    size_t cut = 0;
    dx_diag d = {0};
    cr_assert_eq(dx_eval_result_read_jsonl(path, ds, &r, &cut, &d), DX_OK, "%s",
                 d.msg);
    cr_expect_eq(cut, 1);
    cr_expect_eq(r->n_done, 2);
    cr_expect(!r->rows[1].done, "the cut line's example has no row");
    cr_expect_eq(r->rows[2].error, DX_OK, "the later line replaced the error");
    cr_expect_float_eq(r->rows[2].score, 1.0, 0);
    cr_expect_str_eq(dx_prediction_get_str(r->rows[2].pred, "answer", ""), "4");
    /* Without error_code (an older file) a failure is still one. */
    cr_expect_eq(r->rows[0].error, DX_EINVAL);
    cr_expect_eq(r->rows[0].usage.calls, 1, "\"cached\" without the counts");
    cr_expect_eq(r->rows[0].usage.cached_calls, 1);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    unlink(path);
    free(path);
}

/* Each refusal names the file and line and leaves *out NULL. */
static void expect_refused(const char *text, int code, const char *says)
{
    char *path = tmp_path("bad");
    write_text(path, text);
    dx_dataset *ds = sample_dataset();
    dx_eval_result *r = (dx_eval_result *)1;
    dx_diag d = {0};
    cr_expect_eq(dx_eval_result_read_jsonl(path, ds, &r, NULL, &d), code,
                 "%s: %s", text, d.msg);
    cr_expect_null(r);
    cr_expect(strstr(d.msg, path) != NULL, "%s", d.msg);
    cr_expect(strstr(d.msg, says) != NULL, "wanted \"%s\" in: %s", says, d.msg);
    dx_eval_result_free(r);
    dx_dataset_free(ds);
    unlink(path);
    free(path);
}

Test(eval_report, a_file_not_of_these_rows_is_refused_with_where_and_why,
     .timeout = 10)
{
    const char *row0 = "{\"index\":0,\"example\":{\"question\":\"2+2?\","
                       "\"answer\":\"4\"},\"score\":1}\n";
    char text[512];
    /* A malformed line before the last: not a journal's cut line. */
    snprintf(text, sizeof text, "%s{\"index\": 1,\n%s", row0, row0);
    expect_refused(text, DX_ESYNTAX, ":2:");
    expect_refused("[1, 2]\n", DX_ESYNTAX, ":1: a row is a JSON object");
    expect_refused("{\"example\":{}}\n", DX_ESYNTAX, "\"index\"");
    expect_refused("{\"index\":1.5,\"example\":{}}\n", DX_ESYNTAX, "\"index\"");
    expect_refused("{\"index\":3,\"example\":{\"question\":\"2+2?\","
                   "\"answer\":\"4\"},\"score\":1}\n",
                   DX_EINVAL, "the dataset has 3 examples");
    expect_refused("{\"index\":1,\"example\":{\"question\":\"3+3?\","
                   "\"answer\":\"6\"},\"score\":1}\n",
                   DX_EINVAL, "another example");
    expect_refused("{\"index\":1,\"example\":{\"question\":\"2+2?\"},"
                   "\"score\":1}\n",
                   DX_EINVAL, "another example");
    expect_refused("{\"index\":1,\"example\":{\"question\":\"2+2?\","
                   "\"answer\":\"4\"}}\n",
                   DX_ESYNTAX, "\"score\" is missing");
    expect_refused("{\"index\":1,\"example\":{\"question\":\"2+2?\","
                   "\"answer\":\"4\"},\"score\":1,\"input_tokens\":-1}\n",
                   DX_ESYNTAX, "\"input_tokens\"");
    expect_refused("{\"index\":1,\"example\":{\"question\":\"2+2?\","
                   "\"answer\":\"4\"},\"score\":1,\"prediction\":\"4\"}\n",
                   DX_ESYNTAX, "\"prediction\"");
    expect_refused("{\"index\":1,\"example\":{\"question\":\"2+2?\","
                   "\"answer\":\"4\"},\"score\":1,\"prediction\":{\"\":1}}\n",
                   DX_ESYNTAX, ":1: \"prediction\" has a field without a name");
    expect_refused("{\"index\":1,\"example\":{\"question\":\"2+2?\","
                   "\"answer\":\"4\"},\"score\":1,\"run_key\":7}\n",
                   DX_ESYNTAX, ":1: \"run_key\" is not a string");
    /* Rows of two runs in one file: resuming would mix them. */
    snprintf(text, sizeof text,
             "{\"index\":0,\"example\":{\"question\":\"2+2?\","
             "\"answer\":\"4\"},\"score\":1,\"run_key\":\"aa\"}\n"
             "{\"index\":1,\"example\":{\"question\":\"2+2?\","
             "\"answer\":\"4\"},\"score\":1}\n"
             "{\"index\":2,\"example\":{\"question\":\"2+2?\","
             "\"answer\":\"4\"},\"score\":1,\"run_key\":\"bb\"}\n");
    expect_refused(text, DX_EINVAL,
                   ":3: a row of another run (run key bb; the rows above "
                   "have aa)");

    dx_dataset *ds = sample_dataset();
    dx_eval_result *r = NULL;
    dx_diag d = {0};
    cr_expect_eq(
        dx_eval_result_read_jsonl("/nonexistent-dir/r.jsonl", ds, &r, NULL, &d),
        DX_ENOENT);
    cr_expect(strstr(d.msg, "/nonexistent-dir/r.jsonl") != NULL, "%s", d.msg);
    cr_expect_eq(dx_eval_result_read_jsonl(NULL, ds, &r, NULL, &d), DX_EINVAL);
    dx_dataset_free(ds);
}

/* A run's key goes into each row it writes (the finished file and the
 * journal) and comes back as the result's; rows without one (an older
 * file) read back with the key of those that have it. */
Test(eval_report, a_run_key_is_written_in_each_row_and_read_back, .timeout = 10)
{
    dx_eval_result *r = sample_result(NULL);
    r->run_key = dx_strdup("0123456789abcdef");
    cr_assert_not_null(r->run_key);
    for (size_t i = 0; i < r->n; i++)
        r->rows[i].run_key = r->run_key;
    char *path = tmp_path("keyed");
    dx_diag d = {0};
    cr_assert_eq(dx_eval_result_write_jsonl(r, path, &d), DX_OK, "%s", d.msg);
    char *text = slurp(path);
    cr_expect(strstr(text, ",\"run_key\":\"0123456789abcdef\"}\n") != NULL,
              "%s", text);
    free(text);
    /* A row of an older file, without a key, at the end. */
    FILE *f = fopen(path, "ab");
    cr_assert_not_null(f);
    fputs("{\"index\":2,\"example\":{\"question\":\"2+2?\","
          "\"answer\":\"4\"},\"score\":1}\n",
          f);
    fclose(f);
    dx_dataset *ds = sample_dataset();
    dx_eval_result *back = NULL;
    cr_assert_eq(dx_eval_result_read_jsonl(path, ds, &back, NULL, &d), DX_OK,
                 "%s", d.msg);
    cr_assert_str_eq(back->run_key, "0123456789abcdef");
    cr_expect_eq(back->rows[2].run_key, back->run_key);
    cr_expect_eq(back->n_done, 3);
    dx_eval_result_free(back);

    /* A file without keys reads back without one. */
    write_text(path, "{\"index\":0,\"example\":{\"question\":\"2+2?\","
                     "\"answer\":\"4\"},\"score\":1}\n");
    cr_assert_eq(dx_eval_result_read_jsonl(path, ds, &back, NULL, &d), DX_OK,
                 "%s", d.msg);
    cr_expect_null(back->run_key);
    cr_expect_null(back->rows[0].run_key);
    dx_eval_result_free(back);
    dx_dataset_free(ds);
    unlink(path);
    free(path);
    dx_eval_result_free(r);
}

/* The journal starts with the rows kept (a resumed run's), appends each
 * row as a whole line, and reads back as the rows it was given. */
Test(eval_report, a_journal_appends_whole_rows_after_the_kept_ones,
     .timeout = 10)
{
    dx_eval_result *r = sample_result(NULL);
    char *path = tmp_path("journal");
    write_text(path, "an earlier file the journal replaces\n");
    dx_eval_result kept = *r;
    dx_eval_row kept_rows[3] = {r->rows[0], {0}, {0}};
    kept.rows = kept_rows;
    dx_eval_journal *j = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_eval_journal_open(path, &kept, &j, &d), DX_OK, "%s", d.msg);
    char *text = slurp(path);
    cr_expect_eq(strchr(text, '\n') - text + 1, (long)strlen(text),
                 "one line: the kept row: %s", text);
    free(text);
    dx_eval_journal_row(&r->rows[1], j);
    dx_eval_journal_row(&r->rows[2], j); /* not done: not a row */
    cr_assert_eq(dx_eval_journal_close(j, &d), DX_OK, "%s", d.msg);

    dx_dataset *ds = sample_dataset();
    dx_eval_result *back = NULL;
    cr_assert_eq(dx_eval_result_read_jsonl(path, ds, &back, NULL, &d), DX_OK,
                 "%s", d.msg);
    cr_expect_eq(back->n_done, 2);
    cr_expect_eq(back->rows[0].error, DX_OK);
    cr_expect_eq(back->rows[1].error, DX_ETIMEDOUT);
    dx_eval_result_free(back);
    dx_dataset_free(ds);

    d = (dx_diag){0};
    cr_expect_eq(dx_eval_journal_open("/nonexistent-dir/j.jsonl", NULL, &j, &d),
                 DX_EIO);
    cr_expect(strstr(d.msg, "/nonexistent-dir/j.jsonl") != NULL, "%s", d.msg);
    cr_expect_eq(dx_eval_journal_close(NULL, &d), DX_OK);
    unlink(path);
    free(path);
    dx_eval_result_free(r);
}

/* A row the journal cannot write (a full disk, a file size limit) is
 * reported at close, with how many were lost. */
Test(eval_report, a_journal_reports_rows_it_could_not_write, .timeout = 10)
{
    dx_eval_result *r = sample_result(NULL);
    dx_eval_journal *j = NULL;
    dx_diag d = {0};
    char *path = tmp_path("full");
    cr_assert_eq(dx_eval_journal_open(path, NULL, &j, &d), DX_OK, "%s", d.msg);
    /* This test's own process: past the limit a write fails with EFBIG. */
    struct rlimit was, tiny;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &was), 0);
    tiny = was;
    tiny.rlim_cur = 16;
    signal(SIGXFSZ, SIG_IGN);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &tiny), 0);
    dx_eval_journal_row(&r->rows[0], j);
    dx_eval_journal_row(&r->rows[1], j);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &was), 0);
    cr_expect_eq(dx_eval_journal_close(j, &d), DX_EIO);
    cr_expect(strstr(d.msg, "rows not written") != NULL, "%s", d.msg);
    cr_expect(strstr(d.msg, path) != NULL, "%s", d.msg);
    unlink(path);
    free(path);
    dx_eval_result_free(r);
}

/* The journal's flushes, seen through this test program's own fdatasync:
 * the program's definition is the one the journal (linked in statically)
 * and any shared library calls. It counts the calls on the file named by
 * sync_watch_path and answers them with sync_fail_errno (0: the real
 * call). Every other descriptor gets the real call. */
static const char *sync_watch_path;
static int sync_fail_errno;
static int sync_calls;

static bool is_watched(int fd)
{
    struct stat a, b;
    return sync_watch_path != NULL && fstat(fd, &a) == 0 &&
           stat(sync_watch_path, &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

int fdatasync(int fd)
{
    if (is_watched(fd)) {
        sync_calls++;
        if (sync_fail_errno != 0) {
            errno = sync_fail_errno;
            return -1;
        }
    }
    return (int)syscall(SYS_fdatasync, fd);
}

/* Rows are flushed to the disk at close, and while they come at most
 * once a second: a burst of rows costs no flush per row. */
Test(eval_report, a_journal_flushes_at_close_and_at_most_once_a_second,
     .timeout = 10)
{
    dx_eval_result *r = sample_result(NULL);
    char *path = tmp_path("sync");
    dx_eval_journal *j = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_eval_journal_open(path, NULL, &j, &d), DX_OK, "%s", d.msg);
    sync_watch_path = path;
    for (int i = 0; i < 50; i++)
        dx_eval_journal_row(&r->rows[i % 2], j);
    cr_expect_eq(sync_calls, 0, "a burst of 50 rows within a second: %d",
                 sync_calls);
    struct timespec nap = {1, 100000000}; /* past the period */
    nanosleep(&nap, NULL);
    dx_eval_journal_row(&r->rows[0], j);
    cr_expect_eq(sync_calls, 1, "a row after a second flushes: %d", sync_calls);
    dx_eval_journal_row(&r->rows[1], j);
    cr_expect_eq(sync_calls, 1, "the next one does not: %d", sync_calls);
    cr_assert_eq(dx_eval_journal_close(j, &d), DX_OK, "%s", d.msg);
    cr_expect_eq(sync_calls, 2, "the rows since are flushed at close: %d",
                 sync_calls);
    char *text = slurp(path);
    size_t lines = 0;
    for (const char *c = text; *c; c++)
        lines += *c == '\n';
    cr_expect_eq(lines, 52u, "every row is in the file: %zu", lines);
    free(text);
    sync_watch_path = NULL;
    unlink(path);
    free(path);
    dx_eval_result_free(r);
}

/* A flush that fails (the disk reported an error) is the close's error:
 * the rows were written but may not survive a power loss. A file that
 * cannot be flushed at all (EINVAL: a pipe, a special file) is not. */
Test(eval_report, a_journal_whose_flush_fails_says_its_rows_may_be_lost,
     .timeout = 10)
{
    dx_eval_result *r = sample_result(NULL);
    char *path = tmp_path("syncfail");
    dx_eval_journal *j = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_eval_journal_open(path, NULL, &j, &d), DX_OK, "%s", d.msg);
    sync_watch_path = path;
    sync_fail_errno = EIO;
    dx_eval_journal_row(&r->rows[0], j);
    cr_expect_eq(dx_eval_journal_close(j, &d), DX_EIO);
    cr_expect_eq(sync_calls, 1);
    cr_expect(strstr(d.msg, "may not be on the disk") != NULL, "%s", d.msg);
    cr_expect(strstr(d.msg, path) != NULL, "%s", d.msg);
    cr_expect(strstr(d.msg, strerror(EIO)) != NULL, "%s", d.msg);
    char *text = slurp(path);
    cr_expect(strstr(text, "\"index\":0") != NULL, "the row was written: %s",
              text);
    free(text);

    sync_watch_path = NULL;
    cr_assert_eq(dx_eval_journal_open(path, NULL, &j, &d), DX_OK, "%s", d.msg);
    sync_watch_path = path;
    sync_fail_errno = EINVAL;
    d = (dx_diag){0};
    dx_eval_journal_row(&r->rows[0], j);
    cr_expect_eq(dx_eval_journal_close(j, &d), DX_OK, "%s", d.msg);
    cr_expect_eq(sync_calls, 2);
    sync_watch_path = NULL;
    sync_fail_errno = 0;
    unlink(path);
    free(path);
    dx_eval_result_free(r);
}

Test(eval_report, table_shows_summary_and_ok_failed_and_not_run_rows,
     .timeout = 10)
{
    /* 50 "é": two bytes each, cut at a character with "…". */
    char longq[128] = "";
    for (int i = 0; i < 50; i++)
        memcpy(longq + 2 * i, "\xc3\xa9", 2);
    dx_eval_result *r = sample_result(longq);
    capture c;
    cap_open(&c);
    dx_eval_result_print(r, c.f, 0);
    char *s = cap_take(&c);
    cr_expect(strstr(s, "score     50.00%\n") != NULL, "%s", s);
    cr_expect(strstr(s, "done      2/3, 1 error, stopped early") != NULL, "%s",
              s);
    /* Under a second, the wall time is shown in ms. */
    cr_expect(strstr(s, "wall      200 ms\n") != NULL, "%s", s);
    cr_expect(strstr(s, "latency   p50 12.5 ms  p95 12.5 ms  p99 12.5 ms\n") !=
                  NULL,
              "%s", s);
    cr_expect(strstr(s, "tokens    10 in, 2 out, 1 LM calls (0 cached)\n") !=
                  NULL,
              "%s", s);
    cr_expect(strstr(s, "cost      $0.0001\n") != NULL, "%s", s);
    /* The input column is padded to 40 characters. */
    cr_expect(strstr(s, "     0   1.00       12.5ms  2+2?                    "
                        "                 → 4\n") != NULL,
              "%s", s);
    char want[256];
    char cut[128] = "";
    for (int i = 0; i < 39; i++)
        memcpy(cut + 2 * i, "\xc3\xa9", 2);
    snprintf(want, sizeof want,
             "     1   0.00      100.2ms  %s… → error ETIMEDOUT: example "
             "took longer than 100 ms\n",
             cut);
    cr_expect(strstr(s, want) != NULL, "%s", s);
    cr_expect(strstr(s, "     2      -            -  2+2?                    "
                        "                 → (not run)\n") != NULL,
              "%s", s);
    free(s);

    dx_eval_result_print(r, c.f, 1);
    s = cap_take(&c);
    cr_expect(strstr(s, "     0   1.00") != NULL, "%s", s);
    cr_expect(strstr(s, "     1   0.00") == NULL, "%s", s);
    cr_expect(strstr(s, "… 2 more rows\n") != NULL, "%s", s);
    free(s);

    /* Every example that finished failed: no latency to speak of, rather
     * than percentiles of nothing printed as 0. */
    r->rows[0].error = DX_EPROVIDER;
    r->n_errors = r->n_done;
    r->latency_p50_ms = r->latency_p95_ms = r->latency_p99_ms = 0;
    dx_eval_result_print(r, c.f, 0);
    s = cap_take(&c);
    cr_expect(strstr(s, "latency   none (no example finished without an "
                        "error)\n") != NULL,
              "%s", s);
    cr_expect(strstr(s, "p50") == NULL, "%s", s);
    free(s);
    cap_close(&c);
    dx_eval_result_free(r);
}

/* ---- DSPy's save_as_csv / save_as_json ---------------------------------- */

static char *fixture_text(const char *name)
{
    const char *dir = getenv("DX_FIXTURES");
    cr_assert(dir, "DX_FIXTURES is not set");
    char path[512];
    snprintf(path, sizeof path, "%s/programs/%s", dir, name);
    return slurp(path);
}

/* v as JSON text with its floats kept (a static buffer, until the next
 * call). */
static const char *py_json(const cJSON *v)
{
    static char text[8192];
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, v, -1);
    cr_assert(dx__sb_cstr(&b) && b.len < sizeof text);
    memcpy(text, b.p, b.len + 1);
    dx__sb_free(&b);
    return text;
}

/* The rows of fixtures/programs/eval_save_input.json, with the scores given
 * (NULL: the file's). A null prediction is an example whose program
 * crashed; done false one that never ran. */
static dx_eval_result *saved_rows(const double *scores)
{
    char *text = fixture_text("eval_save_input.json");
    /* dspex's parser keeps 1.0 and -0.0 floats, as Python's json does. */
    dx__pyjson_init();
    cJSON *rows = dx__json_parse(text, strlen(text), NULL, NULL);
    cr_assert_not_null(rows);
    dx_eval_result *r = dx_calloc(1, sizeof *r);
    cr_assert_not_null(r);
    r->n = (size_t)cJSON_GetArraySize(rows);
    r->rows = dx_calloc(r->n, sizeof *r->rows);
    cr_assert_not_null(r->rows);
    size_t i = 0;
    for (cJSON *row = rows->child; row; row = row->next, i++) {
        dx_eval_row *w = &r->rows[i];
        w->index = i;
        w->example = ex_json(py_json(cJSON_GetObjectItem(row, "example")));
        w->done = cJSON_IsTrue(cJSON_GetObjectItem(row, "done"));
        w->score =
            scores ? scores[i] : cJSON_GetObjectItem(row, "score")->valuedouble;
        const cJSON *pred = cJSON_GetObjectItem(row, "prediction");
        if (cJSON_IsNull(pred)) {
            w->error = DX_EDOWN;
            w->error_msg = dx_strdup("the example's process died: crash");
            continue;
        }
        dx_example *fields = ex_json(py_json(pred));
        w->pred = dx_prediction_new();
        cr_assert_not_null(w->pred);
        for (size_t k = 0; k < dx_example_len(fields); k++)
            cr_assert_eq(dx_example_set_value(dx_prediction_fields_mut(w->pred),
                                              dx_example_key(fields, k),
                                              dx_example_value(fields, k)),
                         DX_OK);
        dx_example_free(fields);
    }
    cJSON_Delete(rows);
    free(text);
    return r;
}

static void expect_saved(const dx_eval_result *r, const dx_metric *m,
                         dx_eval_file_format fmt, const char *golden)
{
    char *path = tmp_path(golden);
    dx_diag d = {0};
    cr_assert_eq(dx_eval_result_save_dspy(r, m, fmt, path, &d), DX_OK, "%s",
                 d.msg);
    char *got = slurp(path);
    char *want = fixture_text(golden);
    cr_expect_str_eq(got, want, "%s differs from Python's", golden);
    free(got);
    free(want);
    unlink(path);
    free(path);
}

/* The input column is 40 terminal columns: a CJK character takes two, a
 * combining mark none, so the arrows line up whatever the script. */
Test(eval_report, table_columns_count_terminal_width, .timeout = 10)
{
    char longq[256] = "", want[512], cut[256] = "";
    for (int i = 0; i < 30; i++) /* 30 x U+65E5, 60 columns */
        memcpy(longq + 3 * i, "\xe6\x97\xa5", 3);
    for (int i = 0; i < 19; i++) /* 38 columns, then "…" and a space */
        memcpy(cut + 3 * i, "\xe6\x97\xa5", 3);
    dx_eval_result *r = sample_result(longq);
    capture c;
    cap_open(&c);
    dx_eval_result_print(r, c.f, 0);
    char *s = cap_take(&c);
    snprintf(want, sizeof want, "100.2ms  %s…  → error ETIMEDOUT", cut);
    cr_expect(strstr(s, want) != NULL, "%s", s);
    free(s);
    dx_eval_result_free(r);

    /* "e" + U+0301, 50 times: 50 columns, cut after 39 letters and their
     * marks. */
    char marks[256] = "";
    for (int i = 0; i < 50; i++)
        memcpy(marks + 3 * i, "e\xcc\x81", 3);
    r = sample_result(marks);
    dx_eval_result_print(r, c.f, 0);
    s = cap_take(&c);
    memcpy(cut, marks, 39 * 3);
    cut[39 * 3] = '\0';
    snprintf(want, sizeof want, "100.2ms  %s… → error ETIMEDOUT", cut);
    cr_expect(strstr(s, want) != NULL, "%s", s);
    free(s);
    dx_eval_result_free(r);

    /* Short: "東京" (4 columns) and 36 spaces. */
    r = sample_result("\xe6\x9d\xb1\xe4\xba\xac");
    dx_eval_result_print(r, c.f, 0);
    s = cap_take(&c);
    snprintf(want, sizeof want, "100.2ms  \xe6\x9d\xb1\xe4\xba\xac%36s → error",
             "");
    cr_expect(strstr(s, want) != NULL, "%s", s);
    free(s);
    dx_eval_result_free(r);
    cap_close(&c);
}

Test(eval_report, saves_the_csv_and_json_dspy_writes_for_a_bool_metric,
     .timeout = 10)
{
    dx_eval_result *r = saved_rows(NULL);
    dx_metric em = {.kind = DX_METRIC_EXACT_MATCH};
    expect_saved(r, &em, DX_EVAL_FILE_CSV, "eval_save_em.csv");
    expect_saved(r, &em, DX_EVAL_FILE_JSON, "eval_save_em.json");
    dx_eval_result_free(r);
}

Test(eval_report, saves_float_scores_under_the_metric_name, .timeout = 10)
{
    const double scores[] = {0.25, 1.0, 0.0, 0.0, 0.5};
    dx_eval_result *r = saved_rows(scores);
    dx_metric mine = {.kind = DX_METRIC_CUSTOM, .name = "my_metric"};
    expect_saved(r, &mine, DX_EVAL_FILE_CSV, "eval_save_float.csv");
    expect_saved(r, &mine, DX_EVAL_FILE_JSON, "eval_save_float.json");
    dx_eval_result_free(r);
}

Test(eval_report, save_names_metrics_as_dspy_and_reports_bad_paths,
     .timeout = 10)
{
    cr_expect_str_eq(dx_metric_name(&(dx_metric){.kind = DX_METRIC_F1}), "f1");
    cr_expect_str_eq(
        dx_metric_name(&(dx_metric){.kind = DX_METRIC_PASSAGE_MATCH}),
        "answer_passage_match");
    cr_expect_str_eq(dx_metric_name(&(dx_metric){.kind = DX_METRIC_CUSTOM}),
                     "metric");
    dx_eval_result *r = saved_rows(NULL);
    dx_metric em = {.kind = DX_METRIC_EXACT_MATCH};
    dx_diag d = {0};
    cr_expect_eq(dx_eval_result_save_dspy(r, &em, DX_EVAL_FILE_CSV,
                                          "/nonexistent-dir/x.csv", &d),
                 DX_EIO);
    cr_expect(strstr(d.msg, "/nonexistent-dir/x.csv") != NULL, "%s", d.msg);
    cr_expect_eq(dx_eval_result_save_dspy(r, NULL, DX_EVAL_FILE_CSV, "x", &d),
                 DX_EINVAL);
    dx_eval_result_free(r);
}
