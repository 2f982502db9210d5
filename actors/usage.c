/*
 * usage.c — the price table (built-in defaults, JSON overrides, model-name
 * lookup), the cost of one call, and the usage accumulators.
 */
#include "dspex/usage.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "codec_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"

#define MAX_MODELS 1024
/* Hash slots of the name index: a power of two, twice MAX_MODELS, so a
 * probe meets an empty slot soon. The LM client looks a price up on every
 * answer; scanning rows made an unknown model (a local one) cost a compare
 * per row per answer, three times over. */
#define SLOTS 2048

typedef struct row {
    char model[DX_USAGE_MODEL_MAX];
    dx_usage_price price;
} row;

struct dx_usage_prices {
    row *rows;
    size_t n;
    size_t cap;
    uint16_t *slots; /* SLOTS: row index + 1 by name hash; 0 = empty */
    uint64_t id;     /* unique among the tables of this process */
    uint64_t gen;    /* bumped by every change to the rows */
};

static atomic_uint_fast64_t next_table_id = 1;

/* The last two models looked up on this thread and what they found (row
 * index + 1, 0 = unknown): every answered call looks its model up once
 * in the LM client and once in its caller, under two spellings
 * ("openai-compatible/x" and "x") on the same thread at low load, and an
 * unknown name costs a lookup per '-' in it. An entry is valid while its
 * table (id) has not changed (gen). */
typedef struct found {
    uint64_t id, gen;
    size_t row;
    char model[DX_USAGE_MODEL_MAX + 64];
} found;
static _Thread_local found last_found[2];
static _Thread_local unsigned last_found_next; /* the entry to replace */

/* USD per 1M tokens from the providers' public price lists when this was
 * written; deployments override them with dx_usage_prices_load_json. */
static const row defaults[] = {
    {"gpt-4o", {2.50, 10.00, 1.25}},
    {"gpt-4o-mini", {0.15, 0.60, 0.075}},
    {"gpt-4.1", {2.00, 8.00, 0.50}},
    {"gpt-4.1-mini", {0.40, 1.60, 0.10}},
    {"gpt-4.1-nano", {0.10, 0.40, 0.025}},
    {"claude-3-5-haiku", {0.80, 4.00, 0.08}},
    {"claude-3-5-sonnet", {3.00, 15.00, 0.30}},
    {"claude-sonnet-4", {3.00, 15.00, 0.30}},
    {"gemini-1.5-flash", {0.075, 0.30, 0.01875}},
    {"gemini-2.0-flash", {0.10, 0.40, 0.025}},
};

static bool price_ok(double v)
{
    return isfinite(v) && v >= 0;
}

static size_t name_slot(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3u;
    return (size_t)(h ^ (h >> 32)) & (SLOTS - 1);
}

/* The row named by the first len bytes of model, or NULL. */
static row *find_n(const dx_usage_prices *p, const char *model, size_t len)
{
    for (size_t i = name_slot(model, len);; i = (i + 1) & (SLOTS - 1)) {
        uint16_t k = p->slots[i];
        if (k == 0)
            return NULL;
        row *r = &p->rows[k - 1];
        if (strncmp(r->model, model, len) == 0 && r->model[len] == '\0')
            return r;
    }
}

static row *find_exact(const dx_usage_prices *p, const char *model)
{
    return find_n(p, model, strlen(model));
}

int dx_usage_prices_set(dx_usage_prices *p, const char *model,
                        dx_usage_price price)
{
    if (!p || !model || !*model || strlen(model) >= DX_USAGE_MODEL_MAX ||
        !price_ok(price.input) || !price_ok(price.output) ||
        !price_ok(price.cached_input))
        return DX_EINVAL;
    row *r = find_exact(p, model);
    if (r) {
        r->price = price;
        return DX_OK; /* the same row: what lookups found still holds */
    }
    if (p->n == MAX_MODELS)
        return DX_ELIMIT;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        row *nr = dx_realloc(p->rows, cap * sizeof *nr);
        if (!nr)
            return DX_ENOMEM;
        p->rows = nr;
        p->cap = cap;
    }
    p->gen++;
    r = &p->rows[p->n++];
    memset(r, 0, sizeof *r);
    memcpy(r->model, model, strlen(model) + 1);
    r->price = price;
    size_t i = name_slot(model, strlen(model));
    while (p->slots[i] != 0)
        i = (i + 1) & (SLOTS - 1);
    p->slots[i] = (uint16_t)p->n;
    return DX_OK;
}

int dx_usage_prices_new(bool empty, dx_usage_prices **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    dx_usage_prices *p = dx_calloc(1, sizeof *p);
    if (p && !(p->slots = dx_calloc(SLOTS, sizeof *p->slots))) {
        dx_free(p);
        p = NULL;
    }
    if (!p)
        return DX_ENOMEM;
    p->id = atomic_fetch_add(&next_table_id, 1);
    for (size_t i = 0; !empty && i < sizeof defaults / sizeof defaults[0];
         i++) {
        int rc = dx_usage_prices_set(p, defaults[i].model, defaults[i].price);
        if (rc != DX_OK) {
            dx_usage_prices_free(p);
            return rc;
        }
    }
    *out = p;
    return DX_OK;
}

void dx_usage_prices_free(dx_usage_prices *p)
{
    if (!p)
        return;
    dx_free(p->rows);
    dx_free(p->slots);
    dx_free(p);
}

static int fail(char *errbuf, size_t cap, int rc, const char *fmt, ...)
    DX_PRINTF(4, 5);

static int fail(char *errbuf, size_t cap, int rc, const char *fmt, ...)
{
    if (errbuf && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errbuf, cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Check one entry; on success fill *out. */
static int parse_entry(const cJSON *e, dx_usage_price *out, char *errbuf,
                       size_t cap)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return fail(errbuf, cap, DX_EINVAL,
                    "prices: \"%s\": must be an object with \"input\" and "
                    "\"output\"",
                    name);
    if (!*name || strlen(name) >= DX_USAGE_MODEL_MAX)
        return fail(errbuf, cap, DX_EINVAL,
                    "prices: \"%.64s\": model name must be 1..%d bytes", name,
                    DX_USAGE_MODEL_MAX - 1);
    static const char *const fields[] = {"input", "output", "cached_input"};
    double v[3] = {0, 0, -1};
    const cJSON *f;
    cJSON_ArrayForEach(f, e)
    {
        int k = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(f->string, fields[i]) == 0)
                k = i;
        if (k < 0)
            return fail(errbuf, cap, DX_EINVAL,
                        "prices: \"%s\": unknown field \"%s\" (expected "
                        "input, output, cached_input)",
                        name, f->string);
        if (!cJSON_IsNumber(f) || !price_ok(f->valuedouble))
            return fail(errbuf, cap, DX_EINVAL,
                        "prices: \"%s\": \"%s\" must be a number >= 0", name,
                        f->string);
        v[k] = f->valuedouble;
    }
    for (int i = 0; i < 2; i++)
        if (!cJSON_GetObjectItemCaseSensitive(e, fields[i]))
            return fail(errbuf, cap, DX_EINVAL,
                        "prices: \"%s\": missing \"%s\"", name, fields[i]);
    out->input = v[0];
    out->output = v[1];
    out->cached_input = v[2] < 0 ? v[0] : v[2];
    return DX_OK;
}

int dx_usage_prices_load_json(dx_usage_prices *p, const char *json,
                              char *errbuf, size_t cap)
{
    if (errbuf && cap)
        errbuf[0] = '\0';
    if (!p || !json)
        return fail(errbuf, cap, DX_EINVAL, "prices: no table or no text");
    cJSON *root = dx__jparse(json, strlen(json));
    if (!root)
        return fail(errbuf, cap, DX_EINVAL, "prices: not valid JSON");
    int rc = DX_OK;
    size_t fresh = 0;
    const cJSON *e;
    if (!cJSON_IsObject(root)) {
        rc = fail(errbuf, cap, DX_EINVAL,
                  "prices: must be a JSON object of model: {input, output}");
    } else {
        /* Validate everything first, so a bad entry changes nothing. */
        cJSON_ArrayForEach(e, root)
        {
            dx_usage_price pr;
            rc = parse_entry(e, &pr, errbuf, cap);
            if (rc != DX_OK)
                break;
            if (!find_exact(p, e->string))
                fresh++;
        }
    }
    if (rc == DX_OK && p->n + fresh > MAX_MODELS)
        rc = fail(errbuf, cap, DX_ELIMIT, "prices: more than %d models",
                  MAX_MODELS);
    if (rc == DX_OK && p->n + fresh > p->cap) {
        row *nr = dx_realloc(p->rows, (p->n + fresh) * sizeof *nr);
        if (!nr)
            rc = fail(errbuf, cap, DX_ENOMEM, "prices: out of memory");
        else {
            p->rows = nr;
            p->cap = p->n + fresh;
        }
    }
    if (rc == DX_OK) {
        cJSON_ArrayForEach(e, root)
        {
            dx_usage_price pr;
            (void)parse_entry(e, &pr, NULL, 0);
            /* Cannot fail: validated above and the room is reserved. */
            (void)dx_usage_prices_set(p, e->string, pr);
        }
    }
    cJSON_Delete(root);
    return rc;
}

static const row *find_model(const dx_usage_prices *p, const char *model);

const dx_usage_price *dx_usage_prices_find(const dx_usage_prices *p,
                                           const char *model)
{
    if (!p || !model)
        return NULL;
    size_t len = strlen(model);
    for (unsigned i = 0; i < 2; i++) {
        const found *f = &last_found[i];
        if (f->id == p->id && f->gen == p->gen && len < sizeof f->model &&
            memcmp(f->model, model, len + 1) == 0)
            return f->row ? &p->rows[f->row - 1].price : NULL;
    }
    const row *r = find_model(p, model);
    found *f = &last_found[last_found_next];
    if (len < sizeof f->model) {
        f->id = p->id;
        f->gen = p->gen;
        f->row = r ? (size_t)(r - p->rows) + 1 : 0;
        memcpy(f->model, model, len + 1);
        last_found_next ^= 1;
    }
    return r ? &r->price : NULL;
}

static const row *find_model(const dx_usage_prices *p, const char *model)
{
    const row *r = find_exact(p, model);
    const char *slash = strchr(model, '/');
    if (!r && slash) {
        model = slash + 1;
        r = find_exact(p, model);
    }
    if (r)
        return r;
    /* The longest known name followed by '-': the name up to each '-',
     * from the last one back. */
    for (size_t n = strlen(model); n-- > 0;)
        if (model[n] == '-' && (r = find_n(p, model, n)) != NULL)
            return r;
    return NULL;
}

double dx_usage_cost(const dx_usage_prices *p, const char *model,
                     const dx_lm_usage *u, bool *known)
{
    const dx_usage_price *pr = u ? dx_usage_prices_find(p, model) : NULL;
    if (known)
        *known = pr != NULL;
    if (!pr)
        return 0;
    int64_t in = u->input_tokens > 0 ? u->input_tokens : 0;
    int64_t cached = u->cached_tokens > 0 ? u->cached_tokens : 0;
    if (cached > in)
        cached = in;
    int64_t out = u->output_tokens > 0 ? u->output_tokens : 0;
    return ((double)(in - cached) * pr->input +
            (double)cached * pr->cached_input + (double)out * pr->output) /
           1e6;
}

void dx_usage_acc_init(dx_usage_acc *acc, const char *name)
{
    if (!acc)
        return;
    memset(acc, 0, sizeof *acc);
    if (name) {
        /* Truncated like snprintf, without its cost: this runs per call. */
        size_t n = strnlen(name, sizeof acc->name - 1);
        memcpy(acc->name, name, n);
    }
}

void dx_usage_acc_reset(dx_usage_acc *acc)
{
    if (!acc)
        return;
    char name[DX_USAGE_NAME_MAX];
    memcpy(name, acc->name, sizeof name);
    memset(acc, 0, sizeof *acc);
    memcpy(acc->name, name, sizeof name);
}

double dx_usage_acc_add(dx_usage_acc *acc, const dx_usage_prices *prices,
                        const char *model, const dx_lm_usage *u,
                        bool from_cache)
{
    if (!acc)
        return 0;
    acc->calls++;
    if (from_cache) {
        acc->cached_calls++;
        return 0;
    }
    bool known = false;
    double cost = dx_usage_cost(prices, model, u, &known);
    if (!known)
        acc->unpriced_calls++;
    if (u) {
        acc->input_tokens += u->input_tokens;
        acc->output_tokens += u->output_tokens;
        acc->cached_tokens += u->cached_tokens;
    }
    acc->cost_usd += cost;
    return cost;
}

void dx_usage_acc_merge(dx_usage_acc *dst, const dx_usage_acc *src)
{
    if (!dst || !src)
        return;
    dst->calls += src->calls;
    dst->cached_calls += src->cached_calls;
    dst->unpriced_calls += src->unpriced_calls;
    dst->input_tokens += src->input_tokens;
    dst->output_tokens += src->output_tokens;
    dst->cached_tokens += src->cached_tokens;
    dst->cost_usd += src->cost_usd;
}
