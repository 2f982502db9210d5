/*
 * example.c — examples (ordered key → JSON value records with an input
 * designation) and datasets of them, read from JSONL, a JSON array or CSV
 * and written to JSONL (see example.h).
 *
 * An example keeps its entries in a plain array rather than a cJSON object
 * so the i-th key is O(1) for the adapters that walk every field of every
 * demo; records have a handful of keys, so lookups by name scan.
 */
#include "dspex/example.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "example_int.h"
#include "pyjson.h"

typedef struct entry {
    char *key;
    cJSON *val;
} entry;

struct dx_example {
    entry *e;
    size_t n, cap;
    char **inputs;
    size_t n_inputs;
    bool has_inputs;
    /* A view (dx__example_inputs_view): e lives in the same block and its
     * keys and values, like inputs, are another example's. Read-only. */
    bool borrowed;
};

/* A view's entries follow it in one block. */
_Static_assert(sizeof(dx_example) % _Alignof(entry) == 0,
               "entries after an example must be aligned");

/* Dataset files larger than this are refused rather than read whole. */
#define DATASET_MAX ((size_t)1 << 30)

/* ---- lifetime --------------------------------------------------------- */

dx_example *dx_example_new(void)
{
    dx__pyjson_init();
    return dx_calloc(1, sizeof(dx_example));
}

static void free_inputs(char **keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dx_free(keys[i]);
    dx_free(keys);
}

void dx_example_free(dx_example *ex)
{
    if (!ex)
        return;
    if (ex->borrowed) {
        dx_free(ex); /* the entries are in the block; nothing else is its */
        return;
    }
    for (size_t i = 0; i < ex->n; i++) {
        dx_free(ex->e[i].key);
        cJSON_Delete(ex->e[i].val);
    }
    dx_free(ex->e);
    free_inputs(ex->inputs, ex->n_inputs);
    dx_free(ex);
}

static ssize_t find(const dx_example *ex, const char *key)
{
    for (size_t i = 0; i < ex->n; i++)
        if (strcmp(ex->e[i].key, key) == 0)
            return (ssize_t)i;
    return -1;
}

/* Put val (owned) under key; on failure val is freed and ex unchanged. */
static int put(dx_example *ex, const char *key, cJSON *val)
{
    if (!val)
        return DX_ENOMEM;
    ssize_t at = find(ex, key);
    if (at >= 0) {
        cJSON_Delete(ex->e[at].val);
        ex->e[at].val = val;
        return DX_OK;
    }
    if (ex->n == ex->cap) {
        size_t cap = ex->cap ? ex->cap * 2 : 8;
        entry *e = dx_realloc(ex->e, cap * sizeof *e);
        if (!e) {
            cJSON_Delete(val);
            return DX_ENOMEM;
        }
        ex->e = e;
        ex->cap = cap;
    }
    char *k = dx_strdup(key);
    if (!k) {
        cJSON_Delete(val);
        return DX_ENOMEM;
    }
    ex->e[ex->n].key = k;
    ex->e[ex->n].val = val;
    ex->n++;
    return DX_OK;
}

static int set_inputs(dx_example *ex, const char *const *keys, size_t n)
{
    char **copy = NULL;
    if (n) {
        copy = dx_calloc(n, sizeof *copy);
        if (!copy)
            return DX_ENOMEM;
        for (size_t i = 0; i < n; i++) {
            copy[i] = dx_strdup(keys[i]);
            if (!copy[i]) {
                free_inputs(copy, i);
                return DX_ENOMEM;
            }
        }
    }
    free_inputs(ex->inputs, ex->n_inputs);
    ex->inputs = copy;
    ex->n_inputs = n;
    ex->has_inputs = true;
    return DX_OK;
}

/* A new example with ex's designation and the entries keep() accepts. */
static dx_example *filtered(const dx_example *ex,
                            bool (*keep)(const dx_example *, const char *,
                                         const void *),
                            const void *arg)
{
    dx_example *out = dx_example_new();
    if (!out)
        return NULL;
    if (ex->has_inputs &&
        set_inputs(out, (const char *const *)ex->inputs, ex->n_inputs)) {
        dx_example_free(out);
        return NULL;
    }
    for (size_t i = 0; i < ex->n; i++) {
        if (keep && !keep(ex, ex->e[i].key, arg))
            continue;
        if (put(out, ex->e[i].key, cJSON_Duplicate(ex->e[i].val, true))) {
            dx_example_free(out);
            return NULL;
        }
    }
    return out;
}

dx_example *dx_example_copy(const dx_example *ex)
{
    return ex ? filtered(ex, NULL, NULL) : NULL;
}

/* Move the members of a parsed object into a new example. */
static int from_object(cJSON *obj, dx_example **out)
{
    dx_example *ex = dx_example_new();
    if (!ex)
        return DX_ENOMEM;
    cJSON *c;
    while ((c = obj->child) != NULL) {
        cJSON_DetachItemViaPointer(obj, c);
        int rc = put(ex, c->string ? c->string : "", c);
        if (rc) {
            dx_example_free(ex);
            return rc;
        }
        /* The key was copied; the value keeps no name. */
        dx_free(c->string);
        c->string = NULL;
    }
    *out = ex;
    return DX_OK;
}

static const char *type_name(const cJSON *v)
{
    switch (v->type & 0xFF) {
    case cJSON_String:
        return "a string";
    case cJSON_Number:
        return "a number";
    case cJSON_True:
    case cJSON_False:
        return "a boolean";
    case cJSON_NULL:
        return "null";
    case cJSON_Array:
        return "an array";
    default:
        return "not an object";
    }
}

int dx_example_from_json(const char *json, size_t len, dx_example **out,
                         dx_diag *diag)
{
    if (!json || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "example: NULL argument");
    *out = NULL;
    int line = 0, col = 0;
    const char *what = NULL;
    cJSON *v = dx__json_parse_msg(json, len, &line, &col, &what);
    if (!v) {
        if (what && strcmp(what, "out of memory") == 0)
            return dx_diag_set(diag, DX_ENOMEM, 0, 0, "example: out of memory");
        return dx_diag_set(diag, DX_ESYNTAX, line, col,
                           "example: %s at line %d, column %d", what, line,
                           col);
    }
    if (!cJSON_IsObject(v)) {
        int rc = dx_diag_set(diag, DX_ESYNTAX, 1, 1,
                             "example: expected a JSON object, got %s",
                             type_name(v));
        cJSON_Delete(v);
        return rc;
    }
    int rc = from_object(v, out);
    cJSON_Delete(v);
    if (rc)
        return dx_diag_set(diag, rc, 0, 0, "example: out of memory");
    return DX_OK;
}

static void to_json(dx__sb *b, const dx_example *ex)
{
    dx__sb_putc(b, '{');
    for (size_t i = 0; i < ex->n; i++) {
        if (i)
            dx__sb_putc(b, ',');
        dx__pyjson_str(b, ex->e[i].key, strlen(ex->e[i].key));
        dx__sb_putc(b, ':');
        dx__pyjson_dump_sep(b, ex->e[i].val, -1, ",", ":");
    }
    dx__sb_putc(b, '}');
}

int dx_example_to_json(const dx_example *ex, char **out)
{
    if (!ex || !out)
        return DX_EINVAL;
    dx__sb b;
    dx__sb_init(&b);
    to_json(&b, ex);
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

/* ---- values ----------------------------------------------------------- */

static bool key_ok(const dx_example *ex, const char *key)
{
    return ex && !ex->borrowed && key && key[0];
}

int dx_example_set_str(dx_example *ex, const char *key, const char *value)
{
    if (!key_ok(ex, key) || !value)
        return DX_EINVAL;
    dx__pyjson_init();
    return put(ex, key, cJSON_CreateString(value));
}

int dx_example_set_int(dx_example *ex, const char *key, int64_t value)
{
    if (!key_ok(ex, key))
        return DX_EINVAL;
    dx__pyjson_init();
    return put(ex, key, cJSON_CreateNumber((double)value));
}

int dx_example_set_float(dx_example *ex, const char *key, double value)
{
    if (!key_ok(ex, key))
        return DX_EINVAL;
    dx__pyjson_init();
    cJSON *v = cJSON_CreateNumber(value);
    if (v)
        v->type |= DX__JSON_FLOAT;
    return put(ex, key, v);
}

int dx_example_set_bool(dx_example *ex, const char *key, bool value)
{
    if (!key_ok(ex, key))
        return DX_EINVAL;
    dx__pyjson_init();
    return put(ex, key, cJSON_CreateBool(value));
}

int dx_example_set_null(dx_example *ex, const char *key)
{
    if (!key_ok(ex, key))
        return DX_EINVAL;
    dx__pyjson_init();
    return put(ex, key, cJSON_CreateNull());
}

int dx_example_set_json(dx_example *ex, const char *key, const char *json,
                        dx_diag *diag)
{
    if (!key_ok(ex, key) || !json)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "example: NULL argument");
    int line = 0, col = 0;
    const char *what = NULL;
    cJSON *v = dx__json_parse_msg(json, strlen(json), &line, &col, &what);
    if (!v) {
        if (what && strcmp(what, "out of memory") == 0)
            return dx_diag_set(diag, DX_ENOMEM, 0, 0, "example: out of memory");
        return dx_diag_set(diag, DX_ESYNTAX, line, col,
                           "example: value of \"%s\": %s at line %d, column %d",
                           key, what, line, col);
    }
    return put(ex, key, v);
}

int dx__example_set_taking(dx_example *ex, const char *key, cJSON *value)
{
    if (!key_ok(ex, key) || !value) {
        cJSON_Delete(value);
        return DX_EINVAL;
    }
    if (value->string) {
        /* A member's name: the entry's key is the name that counts. */
        if (!(value->type & cJSON_StringIsConst))
            dx_free(value->string);
        value->string = NULL;
        value->type &= ~cJSON_StringIsConst;
    }
    return put(ex, key, value);
}

int dx_example_set_value(dx_example *ex, const char *key, const cJSON *value)
{
    if (!key_ok(ex, key) || !value)
        return DX_EINVAL;
    dx__pyjson_init();
    cJSON *v = cJSON_Duplicate(value, true);
    return v ? dx__example_set_taking(ex, key, v) : DX_ENOMEM;
}

const cJSON *dx_example_get(const dx_example *ex, const char *key)
{
    if (!ex || !key)
        return NULL;
    ssize_t at = find(ex, key);
    return at < 0 ? NULL : ex->e[at].val;
}

const char *dx_example_get_str(const dx_example *ex, const char *key,
                               const char *dflt)
{
    const cJSON *v = dx_example_get(ex, key);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

double dx_example_get_num(const dx_example *ex, const char *key, double dflt)
{
    const cJSON *v = dx_example_get(ex, key);
    if (cJSON_IsNumber(v))
        return v->valuedouble;
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v) ? 1 : 0;
    return dflt;
}

bool dx_example_has(const dx_example *ex, const char *key)
{
    return dx_example_get(ex, key) != NULL;
}

int dx_example_remove(dx_example *ex, const char *key)
{
    if (!ex || ex->borrowed || !key)
        return DX_EINVAL;
    for (size_t i = 0; i < ex->n_inputs; i++) {
        if (strcmp(ex->inputs[i], key) == 0) {
            dx_free(ex->inputs[i]);
            memmove(ex->inputs + i, ex->inputs + i + 1,
                    (ex->n_inputs - i - 1) * sizeof *ex->inputs);
            ex->n_inputs--;
            break;
        }
    }
    ssize_t at = find(ex, key);
    if (at < 0)
        return DX_ENOENT;
    dx_free(ex->e[at].key);
    cJSON_Delete(ex->e[at].val);
    memmove(ex->e + at, ex->e + at + 1,
            (ex->n - (size_t)at - 1) * sizeof *ex->e);
    ex->n--;
    return DX_OK;
}

size_t dx_example_len(const dx_example *ex)
{
    return ex ? ex->n : 0;
}

const char *dx_example_key(const dx_example *ex, size_t i)
{
    return ex && i < ex->n ? ex->e[i].key : NULL;
}

const cJSON *dx_example_value(const dx_example *ex, size_t i)
{
    return ex && i < ex->n ? ex->e[i].val : NULL;
}

/* Python's ==: numbers by value, and a bool equals the number 0 or 1. */
static bool value_equal(const cJSON *a, const cJSON *b)
{
    int ta = a->type & 0xFF, tb = b->type & 0xFF;
    bool na = ta == cJSON_Number || ta == cJSON_True || ta == cJSON_False;
    bool nb = tb == cJSON_Number || tb == cJSON_True || tb == cJSON_False;
    if (na && nb) {
        double x = ta == cJSON_Number ? a->valuedouble : ta == cJSON_True;
        double y = tb == cJSON_Number ? b->valuedouble : tb == cJSON_True;
        return x == y;
    }
    if (ta != tb)
        return false;
    switch (ta) {
    case cJSON_NULL:
        return true;
    case cJSON_String:
    case cJSON_Raw:
        return strcmp(a->valuestring ? a->valuestring : "",
                      b->valuestring ? b->valuestring : "") == 0;
    case cJSON_Array: {
        const cJSON *x = a->child, *y = b->child;
        for (; x && y; x = x->next, y = y->next)
            if (!value_equal(x, y))
                return false;
        return !x && !y;
    }
    case cJSON_Object: {
        size_t n = 0, m = 0;
        for (const cJSON *x = a->child; x; x = x->next) {
            const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
            if (!y || !value_equal(x, y))
                return false;
            n++;
        }
        for (const cJSON *y = b->child; y; y = y->next)
            m++;
        return n == m;
    }
    default:
        return false;
    }
}

bool dx_example_equal(const dx_example *a, const dx_example *b)
{
    if (!a || !b)
        return a == b;
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const cJSON *y = dx_example_get(b, a->e[i].key);
        if (!y || !value_equal(a->e[i].val, y))
            return false;
    }
    return true;
}

/* ---- inputs and labels ------------------------------------------------ */

int dx_example_with_inputs(dx_example *ex, const char *const *keys, size_t n)
{
    if (!ex || ex->borrowed || (n && !keys))
        return DX_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!keys[i] || !keys[i][0])
            return DX_EINVAL;
    return set_inputs(ex, keys, n);
}

bool dx_example_has_inputs(const dx_example *ex)
{
    return ex && ex->has_inputs;
}

bool dx_example_is_input(const dx_example *ex, const char *key)
{
    if (!ex || !key)
        return false;
    for (size_t i = 0; i < ex->n_inputs; i++)
        if (strcmp(ex->inputs[i], key) == 0)
            return true;
    return false;
}

static bool keep_input(const dx_example *ex, const char *key, const void *arg)
{
    (void)arg;
    return dx_example_is_input(ex, key);
}

static bool keep_label(const dx_example *ex, const char *key, const void *arg)
{
    (void)arg;
    return !dx_example_is_input(ex, key);
}

int dx_example_inputs(const dx_example *ex, dx_example **out, dx_diag *diag)
{
    if (!ex || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "example: NULL argument");
    *out = NULL;
    if (!ex->has_inputs)
        return dx_diag_set(diag, DX_ESTATE, 0, 0,
                           "example: inputs have not been set for this "
                           "example; designate them with "
                           "dx_example_with_inputs()");
    *out = filtered(ex, keep_input, NULL);
    return *out ? DX_OK : DX_ENOMEM;
}

dx_example *dx__example_inputs_view(const dx_example *ex)
{
    if (!ex || !ex->has_inputs)
        return NULL;
    /* One block: the example, then room for all of ex's entries, so the
     * inputs are found in one pass (pointer-aligned, as the example's size
     * is a multiple of its pointers' alignment). */
    dx_example *v = dx_calloc(1, sizeof *v + ex->n * sizeof(entry));
    if (!v)
        return NULL;
    v->e = (entry *)(v + 1);
    for (size_t i = 0; i < ex->n; i++)
        if (dx_example_is_input(ex, ex->e[i].key))
            v->e[v->n++] = ex->e[i];
    v->cap = v->n;
    v->inputs = ex->inputs;
    v->n_inputs = ex->n_inputs;
    v->has_inputs = true;
    v->borrowed = true;
    return v;
}

int dx_example_labels(const dx_example *ex, dx_example **out)
{
    if (!ex || !out)
        return DX_EINVAL;
    *out = filtered(ex, keep_label, NULL);
    return *out ? DX_OK : DX_ENOMEM;
}

typedef struct keyset {
    const char *const *keys;
    size_t n;
} keyset;

static bool keep_unlisted(const dx_example *ex, const char *key,
                          const void *arg)
{
    (void)ex;
    const keyset *ks = arg;
    for (size_t i = 0; i < ks->n; i++)
        if (ks->keys[i] && strcmp(ks->keys[i], key) == 0)
            return false;
    return true;
}

dx_example *dx_example_without(const dx_example *ex, const char *const *keys,
                               size_t n)
{
    if (!ex)
        return NULL;
    keyset ks = {keys, keys ? n : 0};
    return filtered(ex, keep_unlisted, &ks);
}

/* ---- datasets --------------------------------------------------------- */

dx_dataset *dx_dataset_new(void)
{
    dx__pyjson_init();
    return dx_calloc(1, sizeof(dx_dataset));
}

void dx_dataset_free(dx_dataset *ds)
{
    if (!ds)
        return;
    for (size_t i = 0; i < ds->n; i++)
        dx_example_free(ds->items[i]);
    dx_free(ds->items);
    dx_free(ds);
}

int dx_dataset_append(dx_dataset *ds, dx_example *ex)
{
    if (!ds || !ex) {
        dx_example_free(ex);
        return DX_EINVAL;
    }
    /* dx_dataset has no capacity field: the array made here always holds
     * the next power of two >= max(n, 8) items. */
    size_t n = ds->n;
    if (n == 0 || (n >= 8 && (n & (n - 1)) == 0)) {
        dx_example **it = dx_realloc(ds->items, (n ? n * 2 : 8) * sizeof *it);
        if (!it) {
            dx_example_free(ex);
            return DX_ENOMEM;
        }
        ds->items = it;
    }
    ds->items[ds->n++] = ex;
    return DX_OK;
}

/* One parsed value becomes an example of the dataset; v is consumed. */
static int add_object(dx_dataset *ds, cJSON *v, const char *const *in,
                      size_t n_in)
{
    dx_example *ex = NULL;
    int rc = from_object(v, &ex);
    cJSON_Delete(v);
    if (rc)
        return rc;
    if (n_in && (rc = dx_example_with_inputs(ex, in, n_in)) != DX_OK) {
        dx_example_free(ex);
        return rc;
    }
    return dx_dataset_append(ds, ex);
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\f' &&
            s[i] != '\v')
            return false;
    return true;
}

static int parse_jsonl(const char *text, size_t len, const char *name,
                       const char *const *in, size_t n_in, dx_dataset *ds,
                       dx_diag *diag)
{
    size_t pos = 0;
    int lineno = 0;
    while (pos < len) {
        lineno++;
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *ln = text + pos;
        size_t n = end - pos;
        pos = nl ? end + 1 : len;
        if (n && ln[n - 1] == '\r')
            n--;
        if (blank(ln, n))
            continue;
        int line = 0, col = 0;
        const char *what = NULL;
        cJSON *v = dx__json_parse_msg(ln, n, &line, &col, &what);
        if (!v) {
            if (what && strcmp(what, "out of memory") == 0)
                return dx_diag_set(diag, DX_ENOMEM, lineno, 0,
                                   "%s:%d: out of memory", name, lineno);
            return dx_diag_set(diag, DX_ESYNTAX, lineno, col,
                               "%s:%d: %s at column %d", name, lineno, what,
                               col);
        }
        if (!cJSON_IsObject(v)) {
            int rc = dx_diag_set(diag, DX_ESYNTAX, lineno, 1,
                                 "%s:%d: expected a JSON object, got %s", name,
                                 lineno, type_name(v));
            cJSON_Delete(v);
            return rc;
        }
        int rc = add_object(ds, v, in, n_in);
        if (rc)
            return dx_diag_set(diag, rc, lineno, 0, "%s:%d: %s", name, lineno,
                               dx_strerror(rc));
    }
    return DX_OK;
}

static int parse_array(const char *text, size_t len, const char *name,
                       const char *const *in, size_t n_in, dx_dataset *ds,
                       dx_diag *diag)
{
    int line = 0, col = 0;
    const char *what = NULL;
    cJSON *arr = dx__json_parse_msg(text, len, &line, &col, &what);
    if (!arr) {
        if (what && strcmp(what, "out of memory") == 0)
            return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory",
                               name);
        return dx_diag_set(diag, DX_ESYNTAX, line, col,
                           "%s:%d: %s at column %d", name, line, what, col);
    }
    int idx = 0;
    for (cJSON *c = arr->child; c; c = c->next, idx++) {
        if (!cJSON_IsObject(c)) {
            int rc = dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                                 "%s: item %d of the array is %s, not a JSON "
                                 "object",
                                 name, idx, type_name(c));
            cJSON_Delete(arr);
            return rc;
        }
    }
    cJSON *c;
    while ((c = arr->child) != NULL) {
        cJSON_DetachItemViaPointer(arr, c);
        int rc = add_object(ds, c, in, n_in);
        if (rc) {
            cJSON_Delete(arr);
            return dx_diag_set(diag, rc, 0, 0, "%s: %s", name, dx_strerror(rc));
        }
    }
    cJSON_Delete(arr);
    return DX_OK;
}

/* ---- CSV (RFC 4180) ------------------------------------------------------ */

/* One record's fields, NUL-separated in buf (offs[i] is where field i
 * starts), with the 1-based byte column each began at. */
typedef struct csv_rec {
    dx__sb buf;
    size_t *offs;
    int *cols;
    size_t n, cap;
    int line; /* where the record began */
} csv_rec;

/* Reading position: pos in text, the current line and where it began. */
typedef struct csv_pos {
    const char *t;
    size_t len, p, lstart;
    int line;
    const char *name;
} csv_pos;

static int csv_col(const csv_pos *c, size_t at)
{
    return (int)(at - c->lstart) + 1;
}

static int csv_err(const csv_pos *c, dx_diag *diag, int line, int col,
                   const char *what)
{
    return dx_diag_set(diag, DX_ESYNTAX, line, col, "%s:%d:%d: %s", c->name,
                       line, col, what);
}

static int csv_field_start(csv_rec *r, int col)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        size_t *o = dx_realloc(r->offs, cap * sizeof *o);
        if (!o)
            return DX_ENOMEM;
        r->offs = o;
        int *cl = dx_realloc(r->cols, cap * sizeof *cl);
        if (!cl)
            return DX_ENOMEM;
        r->cols = cl;
        r->cap = cap;
    }
    r->offs[r->n] = r->buf.len;
    r->cols[r->n] = col;
    r->n++;
    return DX_OK;
}

/* After a field: a comma (another field follows: true in *more), a line
 * end or the end of the text (the record ends). Anything else is an
 * error. */
static int csv_after_field(csv_pos *c, bool *more, dx_diag *diag)
{
    *more = false;
    if (c->p >= c->len)
        return DX_OK;
    char ch = c->t[c->p];
    if (ch == ',') {
        c->p++;
        *more = true;
        return DX_OK;
    }
    if (ch == '\r' || ch == '\n') {
        c->p +=
            ch == '\r' && c->p + 1 < c->len && c->t[c->p + 1] == '\n' ? 2 : 1;
        c->line++;
        c->lstart = c->p;
        return DX_OK;
    }
    return csv_err(c, diag, c->line, csv_col(c, c->p),
                   "expected ',' or the end of the line after a closing "
                   "quote");
}

/* Read the next record into r: 1 when one was read, 0 at the end of the
 * text, or a (negative) error code with diag set. Empty lines are
 * skipped. */
static int csv_record(csv_pos *c, csv_rec *r, dx_diag *diag)
{
    while (c->p < c->len && (c->t[c->p] == '\n' || c->t[c->p] == '\r')) {
        c->p +=
            c->t[c->p] == '\r' && c->p + 1 < c->len && c->t[c->p + 1] == '\n'
                ? 2
                : 1;
        c->line++;
        c->lstart = c->p;
    }
    if (c->p >= c->len)
        return 0;
    r->buf.len = 0;
    r->n = 0;
    r->line = c->line;
    bool more = true;
    while (more) {
        if (csv_field_start(r, csv_col(c, c->p)) != DX_OK)
            return DX_ENOMEM;
        if (c->p < c->len && c->t[c->p] == '"') {
            int qline = c->line, qcol = csv_col(c, c->p);
            c->p++;
            for (;;) {
                if (c->p >= c->len)
                    return csv_err(c, diag, qline, qcol,
                                   "quoted field never closed");
                char ch = c->t[c->p];
                if (ch == '"') {
                    if (c->p + 1 < c->len && c->t[c->p + 1] == '"') {
                        dx__sb_putc(&r->buf, '"');
                        c->p += 2;
                        continue;
                    }
                    c->p++;
                    break;
                }
                if (ch == '\0')
                    return csv_err(c, diag, c->line, csv_col(c, c->p),
                                   "a NUL byte in a field");
                dx__sb_putc(&r->buf, ch);
                c->p++;
                if (ch == '\n') {
                    c->line++;
                    c->lstart = c->p;
                }
            }
        } else {
            while (c->p < c->len && c->t[c->p] != ',' && c->t[c->p] != '\n' &&
                   c->t[c->p] != '\r') {
                char ch = c->t[c->p];
                if (ch == '"')
                    return csv_err(c, diag, c->line, csv_col(c, c->p),
                                   "a quote inside an unquoted field (quote "
                                   "the whole field and double the quote)");
                if (ch == '\0')
                    return csv_err(c, diag, c->line, csv_col(c, c->p),
                                   "a NUL byte in a field");
                dx__sb_putc(&r->buf, ch);
                c->p++;
            }
        }
        dx__sb_putc(&r->buf, '\0');
        int rc = csv_after_field(c, &more, diag);
        if (rc)
            return rc;
    }
    return r->buf.oom ? DX_ENOMEM : 1;
}

static void csv_rec_free(csv_rec *r)
{
    dx__sb_free(&r->buf);
    dx_free(r->offs);
    dx_free(r->cols);
}

/* The header row names the columns (non-empty, unique); every later
 * record has exactly that many fields and becomes an example of string
 * values, keys in column order. */
static int parse_csv(const char *text, size_t len, const char *name,
                     const char *const *in, size_t n_in, dx_dataset *ds,
                     dx_diag *diag)
{
    csv_pos c = {text, len, 0, 0, 1, name};
    csv_rec head = {0}, r = {0};
    dx__sb_init(&head.buf);
    dx__sb_init(&r.buf);
    int rc = csv_record(&c, &head, diag);
    if (rc <= 0)
        goto done; /* an empty file is an empty dataset */
    for (size_t i = 0; i < head.n; i++) {
        const char *h = head.buf.p + head.offs[i];
        if (!h[0]) {
            rc = csv_err(&c, diag, head.line, head.cols[i],
                         "empty column name in the header");
            goto done;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(h, head.buf.p + head.offs[j]) == 0) {
                rc = dx_diag_set(diag, DX_ESYNTAX, head.line, head.cols[i],
                                 "%s:%d:%d: column '%s' appears twice in the "
                                 "header",
                                 name, head.line, head.cols[i], h);
                goto done;
            }
    }
    while ((rc = csv_record(&c, &r, diag)) == 1) {
        if (r.n != head.n) {
            /* Too many: where the first extra field starts; too few: the
             * record's first column. */
            int col = r.n > head.n ? r.cols[head.n] : 1;
            rc = dx_diag_set(diag, DX_ESYNTAX, r.line, col,
                             "%s:%d:%d: %zu fields, the header has %zu", name,
                             r.line, col, r.n, head.n);
            goto done;
        }
        dx_example *ex = dx_example_new();
        if (!ex) {
            rc = DX_ENOMEM;
            goto done;
        }
        for (size_t i = 0; i < r.n && rc == 1; i++)
            if (dx_example_set_str(ex, head.buf.p + head.offs[i],
                                   r.buf.p + r.offs[i]) != DX_OK)
                rc = DX_ENOMEM;
        if (rc == 1 && n_in)
            rc = dx_example_with_inputs(ex, in, n_in) == DX_OK ? 1 : DX_ENOMEM;
        if (rc != 1) {
            dx_example_free(ex);
            goto done;
        }
        if ((rc = dx_dataset_append(ds, ex)) != DX_OK)
            goto done;
    }
done:
    csv_rec_free(&head);
    csv_rec_free(&r);
    if (rc == DX_ENOMEM)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", name);
    return rc == 1 ? DX_OK : rc; /* 0: the end of the text */
}

/* CSV when the name ends in ".csv" (any case). */
static bool is_csv_name(const char *name)
{
    size_t n = strlen(name);
    return n >= 4 && strcasecmp(name + n - 4, ".csv") == 0;
}

int dx_dataset_parse(const char *text, size_t len, const char *name,
                     const char *const *input_keys, size_t n_inputs,
                     dx_dataset **out, dx_diag *diag)
{
    if ((!text && len) || !out || (n_inputs && !input_keys))
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "dataset: NULL argument");
    *out = NULL;
    if (!name)
        name = "<text>";
    for (size_t i = 0; i < n_inputs; i++)
        if (!input_keys[i] || !input_keys[i][0])
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "%s: input key %zu is empty", name, i);
    /* Columns on line 1 do not count a BOM: editors do not show it. */
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }
    dx_dataset *ds = dx_dataset_new();
    if (!ds)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", name);
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' ||
                       text[i] == '\r'))
        i++;
    int rc = is_csv_name(name)
                 ? parse_csv(text, len, name, input_keys, n_inputs, ds, diag)
             : i < len && text[i] == '['
                 ? parse_array(text, len, name, input_keys, n_inputs, ds, diag)
                 : parse_jsonl(text, len, name, input_keys, n_inputs, ds, diag);
    if (rc) {
        dx_dataset_free(ds);
        return rc;
    }
    *out = ds;
    return DX_OK;
}

int dx_dataset_load(const char *path, const char *const *input_keys,
                    size_t n_inputs, dx_dataset **out, dx_diag *diag)
{
    if (!path || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "dataset: NULL argument");
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return dx_diag_set(diag, DX_EIO, 0, 0, "%s: %s", path, strerror(errno));
    dx__sb b;
    dx__sb_init(&b);
    char chunk[16384];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b.len + got > DATASET_MAX) {
            fclose(f);
            dx__sb_free(&b);
            return dx_diag_set(diag, DX_EIO, 0, 0, "%s: larger than %zu bytes",
                               path, DATASET_MAX);
        }
        dx__sb_put(&b, chunk, got);
    }
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err) {
        dx__sb_free(&b);
        return dx_diag_set(diag, DX_EIO, 0, 0, "%s: %s", path, strerror(err));
    }
    if (b.oom) {
        dx__sb_free(&b);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", path);
    }
    int rc = dx_dataset_parse(b.p ? b.p : "", b.len, path, input_keys, n_inputs,
                              out, diag);
    dx__sb_free(&b);
    return rc;
}

int dx_dataset_save_jsonl(const dx_dataset *ds, const char *path, dx_diag *diag)
{
    if (!ds || !path)
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "dataset: NULL argument");
    dx__sb b;
    dx__sb_init(&b);
    for (size_t i = 0; i < ds->n; i++) {
        to_json(&b, ds->items[i]);
        dx__sb_putc(&b, '\n');
    }
    if (b.oom) {
        dx__sb_free(&b);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "%s: out of memory", path);
    }
    int rc = dx__write_file_atomic(path, b.p ? b.p : "", b.len, diag);
    dx__sb_free(&b);
    return rc;
}
