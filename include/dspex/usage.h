/*
 * usage.h — token usage and cost accounting for LM calls.
 *
 * A price table maps model names to USD per million input, output and
 * cached-input tokens. It starts from built-in defaults for a few
 * well-known models (prices change: treat them as data and override them
 * from configuration with dx_usage_prices_load_json). Accumulators add up
 * calls, cached calls, tokens and cost; one generic named struct serves per
 * client, per program run and per optimization totals.
 *
 * Threads: a table or an accumulator has one owner; nothing locks. A table
 * that is no longer changed may be read from several threads.
 */
#ifndef DSPEX_USAGE_H
#define DSPEX_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "provider.h"

#define DX_USAGE_MODEL_MAX 128 /* bytes of a model name, with the NUL */
#define DX_USAGE_NAME_MAX 64   /* bytes of an accumulator name */

/* USD per 1,000,000 tokens. */
typedef struct dx_usage_price {
    double input;
    double output;
    double cached_input; /* input tokens served from the provider's cache */
} dx_usage_price;

typedef struct dx_usage_prices dx_usage_prices;

/* A table holding the built-in defaults (or none when empty is true).
 * *out: dx_usage_prices_free it. DX_EINVAL, DX_ENOMEM. */
DX_API int dx_usage_prices_new(bool empty, dx_usage_prices **out);
DX_API void dx_usage_prices_free(dx_usage_prices *p);

/* Add or replace one model's price. DX_EINVAL for an empty or too long
 * name or a negative / non-finite price; DX_ELIMIT past 1024 models;
 * DX_ENOMEM. */
DX_API int dx_usage_prices_set(dx_usage_prices *p, const char *model,
                               dx_usage_price price);

/* Add or replace prices from JSON text:
 *   {"gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25}, ...}
 * input and output are required, cached_input defaults to input; no other
 * members are allowed. All or nothing: on failure the table is unchanged
 * and errbuf (cap bytes, may be NULL) says what, naming the entry and
 * field, e.g. `prices: "gpt-4o": "output" must be a number >= 0`.
 * DX_OK, DX_EINVAL, DX_ELIMIT, DX_ENOMEM. */
DX_API int dx_usage_prices_load_json(dx_usage_prices *p, const char *json,
                                     char *errbuf, size_t cap);

/* The price for model, or NULL. Lookup: the exact name; then, for
 * "provider/name", the name after the first "/"; then the longest known
 * name that is a prefix followed by "-" (a dated variant such as
 * "gpt-4o-mini-2024-07-18" → "gpt-4o-mini"). The pointer stays valid until
 * the table is changed or freed. */
DX_API const dx_usage_price *dx_usage_prices_find(const dx_usage_prices *p,
                                                  const char *model);

/* Cost in USD of one call: uncached input at input, cached input at
 * cached_input, output at output (cached tokens beyond the input count are
 * clamped to it). Unknown model (or NULL p/model/u): 0 and *known = false;
 * known may be NULL. */
DX_API double dx_usage_cost(const dx_usage_prices *p, const char *model,
                            const dx_lm_usage *u, bool *known);

/* Totals for one scope. Plain data: copy, zero or embed freely. */
typedef struct dx_usage_acc {
    char name[DX_USAGE_NAME_MAX];
    int64_t calls;          /* all calls, cache hits included */
    int64_t cached_calls;   /* answered from the response cache (free) */
    int64_t unpriced_calls; /* billed calls whose model had no price */
    int64_t input_tokens;   /* billed calls only */
    int64_t output_tokens;
    int64_t cached_tokens; /* provider-side cached input tokens */
    double cost_usd;
} dx_usage_acc;

/* Zero acc and set its name (truncated; NULL = ""). */
DX_API void dx_usage_acc_init(dx_usage_acc *acc, const char *name);
/* Zero the counts, keep the name. */
DX_API void dx_usage_acc_reset(dx_usage_acc *acc);
/* Count one call. from_cache: answered by the response cache, so it counts
 * in calls and cached_calls only (no tokens, no cost). Otherwise its tokens
 * are added and its cost from prices (which may be NULL: unpriced). u may
 * be NULL (a call without usage). Returns the cost added. */
DX_API double dx_usage_acc_add(dx_usage_acc *acc, const dx_usage_prices *prices,
                               const char *model, const dx_lm_usage *u,
                               bool from_cache);
/* Add src's counts into dst (dst keeps its name). */
DX_API void dx_usage_acc_merge(dx_usage_acc *dst, const dx_usage_acc *src);

#endif
