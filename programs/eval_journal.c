/*
 * eval_journal.c — an evaluation's rows on disk while it runs, and read
 * back afterwards (evaluate.h): the journal appends each row as its
 * example ends, so a run killed by the OOM killer, a lost SSH session or
 * a reboot keeps everything that finished; dx_eval_result_read_jsonl
 * turns such a file (or a finished run's) back into rows that
 * dx_eval_opts.resume takes instead of running those examples again; and
 * dx_eval_run_key, the fingerprint that keeps rows of one program, metric
 * and model from being resumed into another's run.
 *
 * The row lines are eval_report.c's (dx__eval_row_jsonl), so the journal,
 * the finished file and a resumed run's file are one format. A journal is
 * in completion order; the finished file replaces it in dataset order.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "eval_int.h"
#include "module_int.h"
#include "pyjson.h"

/* ---- reading rows back ----------------------------------------------- */

/* Where in the file a line is, for every message about it. */
typedef struct line_at {
    const char *path;
    size_t line;
} line_at;

/* The file's row says it is the example `ex` of the dataset: the same keys
 * with equal values (numbers by value), in any order. */
static bool same_example(const cJSON *obj, const dx_example *ex)
{
    size_t n = dx_example_len(ex), seen = 0;
    for (const cJSON *it = obj->child; it; it = it->next) {
        if (!it->string)
            return false;
        const cJSON *mine = dx_example_get(ex, it->string);
        if (!mine || !cJSON_Compare(mine, it, true))
            return false;
        seen++;
    }
    return seen == n;
}

static int no_memory(dx_diag *diag, const char *path)
{
    return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", path);
}

static int bad_line(dx_diag *diag, line_at at, int code, const char *what,
                    const char *name)
{
    return dx_diag_set(diag, code, (int)at.line, 0, "%s:%zu: %s%s%s", at.path,
                       at.line, name ? "\"" : "", name ? name : "", what);
}

/* A number member; absent is `dflt`, null NaN; another type an error. */
static bool number_of(const cJSON *obj, const char *name, double dflt,
                      double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v) {
        *out = dflt;
        return true;
    }
    if (cJSON_IsNull(v)) {
        *out = NAN;
        return true;
    }
    if (!cJSON_IsNumber(v))
        return false;
    *out = v->valuedouble;
    return true;
}

#define MAX_WHOLE 9007199254740992.0 /* 2^53: every whole double below */

/* A whole-number member in [lo, hi]; absent is 0. */
static bool whole_of(const cJSON *obj, const char *name, double lo, double hi,
                     int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    *out = 0;
    return !v || dx__json_whole(v, lo, hi, out);
}

static void row_clear(dx_eval_row *row)
{
    dx_prediction_free(row->pred);
    row->pred = NULL;
    dx_free(row->error_msg);
    row->error_msg = NULL;
    row->done = false;
    row->error = DX_OK;
    row->score = 0;
    row->latency_ms = 0;
    dx_usage_acc_init(&row->usage, "example");
}

/* Fill the row the line names from the line's object. */
static int take_line(dx_eval_result *r, const cJSON *obj, const dx_dataset *ds,
                     line_at at, dx_diag *diag)
{
    if (!cJSON_IsObject(obj))
        return bad_line(diag, at, DX_ESYNTAX, "a row is a JSON object", NULL);
    int64_t index;
    if (!cJSON_GetObjectItemCaseSensitive(obj, "index") ||
        !whole_of(obj, "index", 0, MAX_WHOLE, &index))
        return bad_line(diag, at, DX_ESYNTAX,
                        "\" is missing or not a whole number >= 0", "index");
    if ((uint64_t)index >= ds->n)
        return dx_diag_set(diag, DX_EINVAL, (int)at.line, 0,
                           "%s:%zu: the row of example %lld, but the dataset "
                           "has %zu examples (a results file of another "
                           "dataset?)",
                           at.path, at.line, (long long)index, ds->n);
    size_t i = (size_t)index;
    const cJSON *example = cJSON_GetObjectItemCaseSensitive(obj, "example");
    if (!cJSON_IsObject(example))
        return bad_line(diag, at, DX_ESYNTAX, "\" is missing or not an object",
                        "example");
    if (!same_example(example, ds->items[i]))
        return dx_diag_set(diag, DX_EINVAL, (int)at.line, 0,
                           "%s:%zu: the row of example %zu has another "
                           "example than the dataset's there (a results file "
                           "of another dataset, or the data changed?)",
                           at.path, at.line, i);
    const cJSON *pred = cJSON_GetObjectItemCaseSensitive(obj, "prediction");
    if (pred && !cJSON_IsNull(pred) && !cJSON_IsObject(pred))
        return bad_line(diag, at, DX_ESYNTAX, "\" is not an object or null",
                        "prediction");
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(obj, "error");
    if (error && !cJSON_IsNull(error) && !cJSON_IsString(error))
        return bad_line(diag, at, DX_ESYNTAX, "\" is not a string or null",
                        "error");
    double score, latency, cost;
    int64_t code, in_tok, out_tok, calls, cached_calls;
    const cJSON *score_item = cJSON_GetObjectItemCaseSensitive(obj, "score");
    if (!score_item || !number_of(obj, "score", 0, &score))
        return bad_line(diag, at, DX_ESYNTAX, "\" is missing or not a number",
                        "score");
    if (!number_of(obj, "latency_ms", 0, &latency))
        return bad_line(diag, at, DX_ESYNTAX, "\" is not a number",
                        "latency_ms");
    if (!number_of(obj, "cost_usd", 0, &cost))
        return bad_line(diag, at, DX_ESYNTAX, "\" is not a number", "cost_usd");
    if (!whole_of(obj, "error_code", -999, 0, &code))
        return bad_line(diag, at, DX_ESYNTAX,
                        "\" is not a dspex error code (0 or below)",
                        "error_code");
    const char *counts[] = {"input_tokens", "output_tokens", "lm_calls",
                            "cached_calls"};
    int64_t *count_out[] = {&in_tok, &out_tok, &calls, &cached_calls};
    for (size_t k = 0; k < 4; k++)
        if (!whole_of(obj, counts[k], 0, MAX_WHOLE, count_out[k]))
            return bad_line(diag, at, DX_ESYNTAX,
                            "\" is not a whole number >= 0", counts[k]);
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(obj, "run_key");
    if (key && !cJSON_IsNull(key) && !cJSON_IsString(key))
        return bad_line(diag, at, DX_ESYNTAX, "\" is not a string or null",
                        "run_key");
    if (cJSON_IsString(key)) {
        /* One file, one run: rows of another program, metric or model
         * in it are a mix-up that resuming would score as this run's. */
        if (r->run_key && strcmp(r->run_key, key->valuestring) != 0)
            return dx_diag_set(diag, DX_EINVAL, (int)at.line, 0,
                               "%s:%zu: a row of another run (run key %s; "
                               "the rows above have %s): rows of two "
                               "programs, metrics or models in one file",
                               at.path, at.line, key->valuestring, r->run_key);
        if (!r->run_key && !(r->run_key = dx_strdup(key->valuestring)))
            return no_memory(diag, at.path);
    }
    const cJSON *cached = cJSON_GetObjectItemCaseSensitive(obj, "cached");
    if (!cJSON_GetObjectItemCaseSensitive(obj, "lm_calls") &&
        cJSON_IsTrue(cached))
        calls = cached_calls = 1; /* a file without the counts */

    dx_eval_row *row = &r->rows[i];
    row_clear(row); /* a later line for an index replaces the earlier */
    if (cJSON_IsObject(pred)) {
        row->pred = dx_prediction_new();
        if (!row->pred)
            return no_memory(diag, at.path);
        dx_example *fields = dx_prediction_fields_mut(row->pred);
        for (const cJSON *it = pred->child; it; it = it->next) {
            /* A field without a name (a hand-edited file) is no field. */
            int rc = it->string ? dx_example_set_value(fields, it->string, it)
                                : DX_EINVAL;
            if (rc == DX_ENOMEM)
                return no_memory(diag, at.path);
            if (rc != DX_OK)
                return bad_line(diag, at, DX_ESYNTAX,
                                "\" has a field without a name", "prediction");
        }
    }
    if (cJSON_IsString(error)) {
        row->error = code < 0 ? (int)code : DX_EINVAL;
        row->error_msg = dx_strdup(error->valuestring);
        if (!row->error_msg)
            return no_memory(diag, at.path);
    }
    row->score = score;
    row->latency_ms = latency;
    row->usage.input_tokens = in_tok;
    row->usage.output_tokens = out_tok;
    row->usage.calls = calls;
    row->usage.cached_calls = cached_calls;
    row->usage.cost_usd = isfinite(cost) ? cost : 0;
    row->done = true;
    return DX_OK;
}

/* The counts, score, usage and percentiles of the rows read. */
static void sum_up(dx_eval_result *r)
{
    double score_sum = 0;
    for (size_t i = 0; i < r->n; i++) {
        const dx_eval_row *row = &r->rows[i];
        if (!row->done)
            continue;
        r->n_done++;
        r->n_errors += row->error != DX_OK;
        if (isfinite(row->score))
            score_sum += row->score;
        dx_usage_acc_merge(&r->usage, &row->usage);
    }
    r->score = r->n_done
                   ? round(10000.0 * score_sum / (double)r->n_done) / 100.0
                   : 0.0;
    dx__eval_result_latencies(r);
}

static bool blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

static int read_lines(dx_eval_result *r, const char *path, const char *text,
                      size_t len, const dx_dataset *ds, size_t *n_cut,
                      dx_diag *diag)
{
    size_t line = 0;
    for (size_t at = 0; at < len;) {
        line++;
        const char *nl = memchr(text + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *s = text + at;
        size_t n = end - at;
        at = end + 1;
        if (blank(s, n))
            continue;
        if (!nl) {
            /* A write cut short by a kill: that example runs again. */
            if (n_cut)
                (*n_cut)++;
            break;
        }
        int l = 0, c = 0;
        const char *what = NULL;
        cJSON *obj = dx__json_parse_msg(s, n, &l, &c, &what);
        if (!obj)
            return dx_diag_set(diag, DX_ESYNTAX, (int)line, c,
                               "%s:%zu:%d: %s (not a row of dspex eval's "
                               "--out file?)",
                               path, line, c, what ? what : "malformed JSON");
        int rc = take_line(r, obj, ds, (line_at){path, line}, diag);
        cJSON_Delete(obj);
        if (rc != DX_OK)
            return rc;
    }
    return DX_OK;
}

int dx_eval_result_read_jsonl(const char *path, const dx_dataset *ds,
                              dx_eval_result **out, size_t *n_cut,
                              dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (n_cut)
        *n_cut = 0;
    if (!path || !ds || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "evaluate: NULL path, dataset or out");
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT)
        return dx_diag_set(diag, DX_ENOENT, 0, 0, "%s: no such file", path);
    dx__pyjson_init();
    dx__sb text;
    dx__sb_init(&text);
    int rc = dx__read_file(path, &text, diag);
    if (rc != DX_OK) {
        dx__sb_free(&text);
        return rc;
    }
    dx_eval_result *r = dx__eval_result_new(ds, true);
    if (!r) {
        dx__sb_free(&text);
        return no_memory(diag, path);
    }
    rc = read_lines(r, path, text.p ? text.p : "", text.len, ds, n_cut, diag);
    dx__sb_free(&text);
    if (rc != DX_OK) {
        dx_eval_result_free(r);
        return rc;
    }
    sum_up(r);
    for (size_t i = 0; i < r->n; i++)
        r->rows[i].run_key = r->run_key;
    *out = r;
    return DX_OK;
}

/* ---- the journal ------------------------------------------------------ */

/* How often a journal's rows are flushed to the disk while they come: a
 * machine that loses power loses at most this much of the run, and an
 * fdatasync (milliseconds on a disk) is paid at most once per period, not
 * per row. */
#define SYNC_PERIOD_NS 1000000000LL

struct dx_eval_journal {
    int fd;
    char *path;
    int failed_errno; /* the first failed write's; 0 = none */
    size_t rows_lost;
    int sync_errno;    /* the first failed flush's; 0 = none */
    int64_t synced_ns; /* when the rows were last flushed (monotonic) */
    bool unsynced;     /* rows written since */
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Flush the rows written so far to the disk. A file system that cannot
 * (EINVAL: a pipe or special file) has nothing to flush. */
static void journal_sync(dx_eval_journal *j)
{
    j->unsynced = false;
    j->synced_ns = mono_ns();
    if (fdatasync(j->fd) != 0 && errno != EINVAL && errno != EROFS &&
        j->sync_errno == 0)
        j->sync_errno = errno;
}

int dx_eval_journal_open(const char *path, const dx_eval_result *kept,
                         dx_eval_journal **out, dx_diag *diag)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "evaluate: NULL journal path or out");
    /* Whole first: a kill now leaves the earlier file as it was. */
    int rc = kept ? dx_eval_result_write_jsonl(kept, path, diag)
                  : dx__write_file_atomic(path, "", 0, diag);
    if (rc != DX_OK)
        return rc;
    dx_eval_journal *j = dx_calloc(1, sizeof *j);
    if (j)
        j->path = dx_strdup(path);
    if (!j || !j->path) {
        dx_free(j);
        return no_memory(diag, path);
    }
    j->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (j->fd < 0) {
        int e = errno;
        dx_free(j->path);
        dx_free(j);
        return dx_diag_set(diag, DX_EIO, 0, 0, "%s: %s", path, strerror(e));
    }
    j->synced_ns = mono_ns();
    *out = j;
    return DX_OK;
}

void dx_eval_journal_row(const dx_eval_row *row, void *ud)
{
    dx_eval_journal *j = ud;
    if (!j || !row || !row->done)
        return;
    dx__sb b;
    dx__sb_init(&b);
    dx__eval_row_jsonl(&b, row);
    const char *p = b.p;
    size_t left = b.oom ? 0 : b.len;
    int e = b.oom ? ENOMEM : 0;
    /* One write(2) of the whole line, appended: a kill leaves whole rows
     * and at most one cut line at the end, which the reader skips. */
    while (left > 0) {
        ssize_t w = write(j->fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            e = w < 0 ? errno : EIO;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    dx__sb_free(&b);
    if (e != 0) {
        j->rows_lost++;
        if (j->failed_errno == 0)
            j->failed_errno = e;
        return;
    }
    j->unsynced = true;
    if (mono_ns() - j->synced_ns >= SYNC_PERIOD_NS)
        journal_sync(j);
}

int dx_eval_journal_close(dx_eval_journal *j, dx_diag *diag)
{
    if (!j)
        return DX_OK;
    int rc = DX_OK;
    if (j->unsynced)
        journal_sync(j);
    int close_errno = close(j->fd) != 0 ? errno : 0;
    if (j->failed_errno != 0)
        rc = dx_diag_set(diag, DX_EIO, 0, 0, "%s: %zu row%s not written: %s",
                         j->path, j->rows_lost, j->rows_lost == 1 ? "" : "s",
                         strerror(j->failed_errno));
    else if (j->sync_errno != 0)
        rc = dx_diag_set(diag, DX_EIO, 0, 0,
                         "%s: the rows may not be on the disk: %s", j->path,
                         strerror(j->sync_errno));
    else if (close_errno != 0 && close_errno != EINTR)
        rc = dx_diag_set(diag, DX_EIO, 0, 0, "%s: %s", j->path,
                         strerror(close_errno));
    dx_free(j->path);
    dx_free(j);
    return rc;
}

/* ---- run keys ---------------------------------------------------------- */

/* A string with its length first, so that no two sets of strings run
 * together into the same text ("ab","c" and "a","bc"). */
static void put_part(dx__sb *b, const char *name, const char *s)
{
    const char *v = s ? s : "";
    dx__sb_printf(b, "|%s=%zu:%s", name, strlen(v), v);
}

int dx_eval_run_key(const dx_module *m, const dx_eval_opts *opts,
                    const char *extra, char out[DX_EVAL_RUN_KEY_LEN])
{
    if (!m || !opts || !out)
        return DX_EINVAL;
    out[0] = '\0';
    cJSON *state = dx_module_dump_state(m);
    if (!state)
        return DX_ENOMEM;
    dx__pyjson_init();
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, state, -1);
    cJSON_Delete(state);
    /* Unset settings are spelled as their defaults, so a metric given
     * "answer" and one left at the default are the same run. */
    const dx_metric *mt = &opts->metric;
    bool judged = mt->kind == DX_METRIC_SEMANTIC_F1 ||
                  mt->kind == DX_METRIC_COMPLETE_AND_GROUNDED;
    dx__sb_printf(&b, "|metric=%d|frac=%.17g|decompositional=%d", (int)mt->kind,
                  mt->frac > 0 && mt->frac < 1 ? mt->frac : 1.0,
                  mt->decompositional ? 1 : 0);
    put_part(&b, "field",
             mt->field ? mt->field
             : judged  ? "response"
                       : "answer");
    put_part(&b, "passages",
             mt->passages_field ? mt->passages_field : "context");
    put_part(&b, "question",
             mt->question_field ? mt->question_field : "question");
    put_part(&b, "judge", mt->judge_lm_name);
    put_part(&b, "name", mt->name);
    dx__sb_printf(&b, "|adapter=%d|no_json_fallback=%d|failure_score=%.17g",
                  (int)opts->call.adapter, opts->call.no_json_fallback ? 1 : 0,
                  opts->failure_score);
    put_part(&b, "lm_name", opts->call.lm_name);
    put_part(&b, "rollout_id", opts->call.rollout_id);
    put_part(&b, "extra", extra);
    const char *text = dx__sb_cstr(&b);
    unsigned char md[32];
    unsigned int md_len = 0;
    bool ok = text && EVP_Digest(text, b.len, md, &md_len, EVP_sha256(), NULL);
    dx__sb_free(&b);
    if (!ok)
        return DX_ENOMEM;
    for (int i = 0; i < 8; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return DX_OK;
}
