/*
 * eval_dspy.c — an evaluation's rows as the files Python DSPy's Evaluate
 * saves (save_as_csv, save_as_json), so the scripts and notebooks a team
 * wrote around those files read dspex's results unchanged.
 *
 * DSPy builds one dict per example: merge_dicts(example, prediction) (a key
 * in both is renamed example_<key> and pred_<key>), then `| {metric_name:
 * score}`. An example that failed has an empty prediction and the
 * failure_score. json.dump writes the list with Python's defaults; the csv
 * module's DictWriter writes the same dicts with str() of each value. Each
 * record is built here as a cJSON object with Python's dict semantics
 * (assigning an existing key keeps its place), then rendered by pyjson.c.
 */
#include <stdio.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/evaluate.h"
#include "dspex/module.h"
#include "pyjson.h"

/* d[key] = item, as a Python dict assignment: an existing key keeps its
 * position and takes the new value. Takes item. */
static bool dict_set(cJSON *d, const char *key, cJSON *item)
{
    if (!item)
        return false;
    bool ok = cJSON_GetObjectItemCaseSensitive(d, key)
                  ? cJSON_ReplaceItemInObjectCaseSensitive(d, key, item)
                  : cJSON_AddItemToObject(d, key, item);
    if (!ok)
        cJSON_Delete(item);
    return ok;
}

static bool dict_set_copy(cJSON *d, const char *key, const cJSON *v)
{
    return dict_set(d, key, cJSON_Duplicate(v, true));
}

/* The prefixed name ("example_" / "pred_" + key); NULL on OOM. */
static char *prefixed(const char *prefix, const char *key)
{
    size_t n = strlen(prefix) + strlen(key) + 1;
    char *s = dx_malloc(n);
    if (s)
        snprintf(s, n, "%s%s", prefix, key);
    return s;
}

/* from's fields into d; one that other has too as prefix + key. */
static bool merge_in(cJSON *d, const dx_example *from, const dx_example *other,
                     const char *prefix)
{
    bool ok = true;
    for (size_t i = 0; ok && from && i < dx_example_len(from); i++) {
        const char *k = dx_example_key(from, i);
        if (other && dx_example_has(other, k)) {
            char *name = prefixed(prefix, k);
            ok = name && dict_set_copy(d, name, dx_example_value(from, i));
            dx_free(name);
        } else {
            ok = dict_set_copy(d, k, dx_example_value(from, i));
        }
    }
    return ok;
}

/* merge_dicts(example, prediction) | {metric: score}; NULL on OOM. */
static cJSON *record(const dx_eval_row *row, const dx_metric *metric)
{
    cJSON *d = cJSON_CreateObject();
    const dx_example *ex = row->example;
    const dx_example *pred = row->error == DX_OK && row->pred
                                 ? dx_prediction_fields(row->pred)
                                 : NULL;
    bool ok = d && merge_in(d, ex, pred, "example_") &&
              merge_in(d, pred, ex, "pred_");
    if (ok) {
        /* answer_exact_match and answer_passage_match return a bool, as
         * does a yes/no metric; a failed example gets failure_score, a
         * float, whatever the metric. */
        bool boolean =
            row->error == DX_OK &&
            (metric->kind == DX_METRIC_EXACT_MATCH ||
             metric->kind == DX_METRIC_PASSAGE_MATCH ||
             (metric->kind == DX_METRIC_CUSTOM && !metric->fn && metric->pass));
        cJSON *score = boolean ? cJSON_CreateBool(row->score != 0)
                               : cJSON_CreateNumber(row->score);
        if (score && !boolean)
            score->type |= DX__JSON_FLOAT;
        ok = dict_set(d, dx_metric_name(metric), score);
    }
    if (!ok) {
        cJSON_Delete(d);
        return NULL;
    }
    return d;
}

/* ---- CSV ------------------------------------------------------------- */

/* One cell as the csv module writes it: str() of the value (None empty,
 * lists and dicts as their repr), quoted when it holds a comma, a quote or
 * a line break, with quotes doubled. */
static void put_cell(dx__sb *out, dx__sb *tmp, const cJSON *v)
{
    tmp->len = 0;
    if (v && cJSON_IsString(v))
        dx__sb_puts(tmp, v->valuestring ? v->valuestring : "");
    else if (v && (cJSON_IsArray(v) || cJSON_IsObject(v)))
        dx__pyrepr(tmp, v);
    else if (v && !cJSON_IsNull(v))
        dx__pystr(tmp, v);
    const char *s = tmp->p;
    size_t n = tmp->oom ? 0 : tmp->len; /* OOM: the caller sees tmp->oom */
    bool quote = false;
    for (size_t i = 0; i < n && !quote; i++)
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n';
    if (!quote) {
        dx__sb_put(out, s, n);
        return;
    }
    dx__sb_putc(out, '"');
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"')
            dx__sb_putc(out, '"');
        dx__sb_putc(out, s[i]);
    }
    dx__sb_putc(out, '"');
}

static void put_csv(dx__sb *out, cJSON *const *recs, size_t n)
{
    /* The header: every key, in order of first appearance. */
    cJSON *header = cJSON_CreateObject();
    if (!header) {
        out->oom = true;
        return;
    }
    for (size_t r = 0; r < n; r++)
        for (const cJSON *c = recs[r]->child; c; c = c->next)
            if (!cJSON_GetObjectItemCaseSensitive(header, c->string) &&
                !dict_set(header, c->string, cJSON_CreateNull()))
                out->oom = true;
    dx__sb tmp;
    dx__sb_init(&tmp);
    cJSON key = {0};
    key.type = cJSON_String;
    for (const cJSON *h = header->child; h && n > 0; h = h->next) {
        if (h != header->child)
            dx__sb_putc(out, ',');
        key.valuestring = h->string;
        put_cell(out, &tmp, &key);
    }
    if (n > 0 && header->child)
        dx__sb_puts(out, "\r\n");
    for (size_t r = 0; r < n; r++) {
        for (const cJSON *h = header->child; h; h = h->next) {
            if (h != header->child)
                dx__sb_putc(out, ',');
            put_cell(out, &tmp,
                     cJSON_GetObjectItemCaseSensitive(recs[r], h->string));
        }
        dx__sb_puts(out, "\r\n");
    }
    if (tmp.oom)
        out->oom = true;
    dx__sb_free(&tmp);
    cJSON_Delete(header);
}

/* ---- JSON ------------------------------------------------------------ */

static void put_json(dx__sb *out, cJSON *const *recs, size_t n)
{
    dx__sb_putc(out, '[');
    for (size_t r = 0; r < n; r++) {
        if (r)
            dx__sb_puts(out, ", ");
        dx__pyjson_dump_ascii(out, recs[r]);
    }
    dx__sb_putc(out, ']');
}

int dx_eval_result_save_dspy(const dx_eval_result *r, const dx_metric *metric,
                             dx_eval_file_format format, const char *path,
                             dx_diag *diag)
{
    if (!r || !metric || !path ||
        (format != DX_EVAL_FILE_CSV && format != DX_EVAL_FILE_JSON))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "save results: a result, a metric, a format and "
                           "a path are needed");
    dx__pyjson_init();
    cJSON **recs = dx_calloc(r->n ? r->n : 1, sizeof *recs);
    if (!recs)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", path);
    size_t n = 0;
    bool oom = false;
    for (size_t i = 0; i < r->n && !oom; i++) {
        if (!r->rows[i].done)
            continue;
        recs[n] = record(&r->rows[i], metric);
        oom = recs[n++] == NULL;
    }
    dx__sb out;
    dx__sb_init(&out);
    if (!oom && format == DX_EVAL_FILE_CSV)
        put_csv(&out, recs, n);
    else if (!oom)
        put_json(&out, recs, n);
    for (size_t i = 0; i < n; i++)
        cJSON_Delete(recs[i]);
    dx_free(recs);
    int rc;
    if (oom || out.oom)
        rc = dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", path);
    else
        rc = dx__write_file_atomic(path, out.p ? out.p : "", out.len, diag);
    dx__sb_free(&out);
    return rc;
}
