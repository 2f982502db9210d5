/*
 * test_usage.c — prices, the cost of a call, JSON price overrides with
 * their error messages, and the usage accumulators.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "dspex/error.h"
#include "dspex/usage.h"

static dx_usage_prices *defaults(void)
{
    dx_usage_prices *p = NULL;
    cr_assert_eq(dx_usage_prices_new(false, &p), DX_OK);
    return p;
}

static void assert_usd(double got, double want)
{
    cr_assert(fabs(got - want) < 1e-12, "cost %.15g, expected %.15g", got,
              want);
}

Test(usage, cost_splits_uncached_cached_and_output_tokens, .timeout = 10)
{
    dx_usage_prices *p = NULL;
    cr_assert_eq(dx_usage_prices_new(true, &p), DX_OK);
    cr_assert_eq(dx_usage_prices_set(p, "m", (dx_usage_price){2.0, 8.0, 0.5}),
                 DX_OK);
    dx_lm_usage u = {.input_tokens = 1000000,
                     .output_tokens = 500000,
                     .cached_tokens = 200000};
    bool known = false;
    /* 800k * 2 + 200k * 0.5 + 500k * 8, per million */
    assert_usd(dx_usage_cost(p, "m", &u, &known), 1.6 + 0.1 + 4.0);
    cr_assert(known);
    /* Cached beyond input is clamped to input. */
    u = (dx_lm_usage){.input_tokens = 10, .cached_tokens = 50};
    assert_usd(dx_usage_cost(p, "m", &u, NULL), 10 * 0.5 / 1e6);
    dx_lm_usage zero = {0};
    assert_usd(dx_usage_cost(p, "m", &zero, &known), 0);
    cr_assert(known);
    dx_usage_prices_free(p);
}

Test(usage, defaults_and_model_name_lookup, .timeout = 10)
{
    dx_usage_prices *p = defaults();
    const dx_usage_price *mini = dx_usage_prices_find(p, "gpt-4o-mini");
    cr_assert_not_null(mini);
    cr_assert_eq(dx_usage_prices_find(p, "openai/gpt-4o-mini"), mini);
    /* A dated variant takes the longest matching family, not gpt-4o. */
    cr_assert_eq(dx_usage_prices_find(p, "gpt-4o-mini-2024-07-18"), mini);
    cr_assert_eq(dx_usage_prices_find(p, "openai/gpt-4o-2024-08-06"),
                 dx_usage_prices_find(p, "gpt-4o"));
    cr_assert_neq(dx_usage_prices_find(p, "gpt-4o"), mini);
    cr_assert_not_null(dx_usage_prices_find(p, "anthropic/claude-3-5-haiku"));
    /* Not a dated variant: no "-" after the prefix. */
    cr_assert_null(dx_usage_prices_find(p, "gpt-4ox"));
    cr_assert_null(dx_usage_prices_find(p, NULL));
    dx_usage_prices_free(p);
}

Test(usage, unknown_model_costs_zero_and_says_so, .timeout = 10)
{
    dx_usage_prices *p = defaults();
    dx_lm_usage u = {.input_tokens = 100, .output_tokens = 100};
    bool known = true;
    assert_usd(dx_usage_cost(p, "openai-compatible/llama-3", &u, &known), 0);
    cr_assert_not(known);
    known = true;
    assert_usd(dx_usage_cost(NULL, "gpt-4o", &u, &known), 0);
    cr_assert_not(known);
    dx_usage_prices_free(p);
}

/* Lookups remember the last model per thread: a price set in between, a
 * new family or a changed one, and another table are seen at once. */
Test(usage, a_lookup_sees_prices_set_after_the_last_one, .timeout = 10)
{
    dx_usage_prices *p = defaults();
    cr_assert_null(dx_usage_prices_find(p, "local/my-model-2025"));
    cr_assert_null(dx_usage_prices_find(p, "local/my-model-2025"));
    cr_assert_eq(dx_usage_prices_set(p, "my-model", (dx_usage_price){1, 2, 0}),
                 DX_OK);
    const dx_usage_price *got = dx_usage_prices_find(p, "local/my-model-2025");
    cr_assert_not_null(got);
    cr_assert_float_eq(got->output, 2, 1e-12);
    cr_assert_eq(dx_usage_prices_set(p, "my-model", (dx_usage_price){1, 5, 0}),
                 DX_OK);
    got = dx_usage_prices_find(p, "local/my-model-2025");
    cr_assert_float_eq(got->output, 5, 1e-12);
    /* The longer family, added later, now wins. */
    cr_assert_eq(
        dx_usage_prices_set(p, "my-model-2025", (dx_usage_price){1, 7, 0}),
        DX_OK);
    got = dx_usage_prices_find(p, "local/my-model-2025");
    cr_assert_float_eq(got->output, 7, 1e-12);
    dx_usage_prices *q = defaults();
    cr_assert_null(dx_usage_prices_find(q, "local/my-model-2025"));
    dx_usage_prices_free(q);
    dx_usage_prices_free(p);
}

Test(usage, set_refuses_bad_prices_and_names, .timeout = 10)
{
    dx_usage_prices *p = defaults();
    cr_assert_eq(dx_usage_prices_set(p, "", (dx_usage_price){1, 1, 1}),
                 DX_EINVAL);
    cr_assert_eq(dx_usage_prices_set(p, "m", (dx_usage_price){-1, 1, 1}),
                 DX_EINVAL);
    cr_assert_eq(dx_usage_prices_set(p, "m", (dx_usage_price){1, NAN, 1}),
                 DX_EINVAL);
    char longname[DX_USAGE_MODEL_MAX + 1];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    cr_assert_eq(dx_usage_prices_set(p, longname, (dx_usage_price){1, 1, 1}),
                 DX_EINVAL);
    cr_assert_null(dx_usage_prices_find(p, "m"));
    dx_usage_prices_free(p);
}

Test(usage, json_overrides_and_adds_prices, .timeout = 10)
{
    dx_usage_prices *p = defaults();
    char err[256];
    cr_assert_eq(dx_usage_prices_load_json(
                     p,
                     "{\"gpt-4o\": {\"input\": 1, \"output\": 2, "
                     "\"cached_input\": 0.25},"
                     " \"my-local\": {\"input\": 0, \"output\": 0.5}}",
                     err, sizeof err),
                 DX_OK, "%s", err);
    cr_assert_str_eq(err, "");
    const dx_usage_price *g = dx_usage_prices_find(p, "gpt-4o");
    cr_assert_eq(g->input, 1);
    cr_assert_eq(g->output, 2);
    cr_assert_eq(g->cached_input, 0.25);
    const dx_usage_price *l = dx_usage_prices_find(p, "my-local");
    cr_assert_not_null(l);
    cr_assert_eq(l->cached_input, 0); /* defaults to input */
    cr_assert_not_null(dx_usage_prices_find(p, "gpt-4o-mini"), "kept");
    dx_usage_prices_free(p);
}

Test(usage, bad_json_names_the_entry_and_changes_nothing, .timeout = 10)
{
    static const struct {
        const char *json;
        const char *msg;
    } cases[] = {
        {"{not json", "not valid JSON"},
        {"[1,2]", "must be a JSON object"},
        {"{\"a\": 3}", "\"a\": must be an object"},
        {"{\"ok\": {\"input\":1,\"output\":1}, \"b\": {\"input\": 1}}",
         "\"b\": missing \"output\""},
        {"{\"c\": {\"input\": -1, \"output\": 1}}",
         "\"c\": \"input\" must be a number >= 0"},
        {"{\"d\": {\"input\": 1, \"output\": \"2\"}}",
         "\"d\": \"output\" must be a number >= 0"},
        {"{\"e\": {\"input\": 1, \"output\": 1, \"inptu\": 1}}",
         "\"e\": unknown field \"inptu\""},
        {"{\"\": {\"input\": 1, \"output\": 1}}", "model name must be"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_usage_prices *p = defaults();
        const dx_usage_price before = *dx_usage_prices_find(p, "gpt-4o");
        char err[256];
        cr_assert_eq(
            dx_usage_prices_load_json(p, cases[i].json, err, sizeof err),
            DX_EINVAL, "%s", cases[i].json);
        cr_assert_not_null(strstr(err, cases[i].msg), "%s: got '%s'",
                           cases[i].json, err);
        cr_assert_null(dx_usage_prices_find(p, "ok"), "partially applied");
        cr_assert_eq(dx_usage_prices_find(p, "gpt-4o")->input, before.input);
        dx_usage_prices_free(p);
    }
    /* A NULL error buffer is allowed. */
    dx_usage_prices *p = defaults();
    cr_assert_eq(dx_usage_prices_load_json(p, "{", NULL, 0), DX_EINVAL);
    char err[256];
    cr_assert_eq(dx_usage_prices_load_json(p, NULL, err, sizeof err),
                 DX_EINVAL);
    cr_assert_str_eq(err, "prices: no table or no text");
    dx_usage_prices_free(p);
}

/* The table is bounded: past 1024 models a load is refused whole, and a
 * single set too. */
Test(usage, the_price_table_is_bounded, .timeout = 10)
{
    dx_usage_prices *p = NULL;
    cr_assert_eq(dx_usage_prices_new(true, &p), DX_OK);
    /* 1000 models in one document: the table grows to hold them. */
    size_t cap = 64 * 1024;
    char *json = malloc(cap);
    cr_assert_not_null(json);
    size_t n = 0;
    n += (size_t)snprintf(json + n, cap - n, "{");
    for (int i = 0; i < 1000; i++)
        n += (size_t)snprintf(json + n, cap - n,
                              "%s\"m%d\": {\"input\": 1, \"output\": 2}",
                              i ? ", " : "", i);
    snprintf(json + n, cap - n, "}");
    char err[256];
    cr_assert_eq(dx_usage_prices_load_json(p, json, err, sizeof err), DX_OK,
                 "%s", err);
    cr_assert_not_null(dx_usage_prices_find(p, "m999"));
    /* 1000 more would pass the bound: nothing of it is kept. */
    n = 0;
    n += (size_t)snprintf(json + n, cap - n, "{");
    for (int i = 0; i < 1000; i++)
        n += (size_t)snprintf(json + n, cap - n,
                              "%s\"x%d\": {\"input\": 1, \"output\": 2}",
                              i ? ", " : "", i);
    snprintf(json + n, cap - n, "}");
    cr_assert_eq(dx_usage_prices_load_json(p, json, err, sizeof err),
                 DX_ELIMIT);
    cr_assert_str_eq(err, "prices: more than 1024 models");
    cr_assert_null(dx_usage_prices_find(p, "x0"));
    free(json);
    char name[32];
    dx_usage_price pr = {.input = 1, .output = 1, .cached_input = 1};
    int rc = DX_OK;
    for (int i = 0; i < 100 && rc == DX_OK; i++) {
        snprintf(name, sizeof name, "y%d", i);
        rc = dx_usage_prices_set(p, name, pr);
    }
    cr_assert_eq(rc, DX_ELIMIT, "the 1025th model is refused");
    cr_assert_null(dx_usage_prices_find(p, "y24"));
    cr_assert_not_null(dx_usage_prices_find(p, "y23"));
    /* Changing a known model is still fine at the bound. */
    cr_assert_eq(dx_usage_prices_set(p, "m5", pr), DX_OK);
    dx_usage_prices_free(p);
}

/* Lookups go through a hash index of the names: every one of a full
 * table is found, by its name, after a provider and as a dated variant,
 * and the longest family wins among nested ones. */
Test(usage, every_model_of_a_full_table_is_found, .timeout = 10)
{
    dx_usage_prices *p = NULL;
    cr_assert_eq(dx_usage_prices_new(true, &p), DX_OK);
    char name[64];
    for (int i = 0; i < 1021; i++) {
        snprintf(name, sizeof name, "model-%d", i);
        dx_usage_price pr = {.input = i, .output = i, .cached_input = i};
        cr_assert_eq(dx_usage_prices_set(p, name, pr), DX_OK);
    }
    dx_usage_price one = {1, 1, 1}, two = {2, 2, 2}, three = {3, 3, 3};
    cr_assert_eq(dx_usage_prices_set(p, "a", one), DX_OK);
    cr_assert_eq(dx_usage_prices_set(p, "a-b", two), DX_OK);
    cr_assert_eq(dx_usage_prices_set(p, "a-b-c", three), DX_OK);
    for (int i = 0; i < 1021; i++) {
        snprintf(name, sizeof name, "model-%d", i);
        const dx_usage_price *f = dx_usage_prices_find(p, name);
        cr_assert(f != NULL && f->input == i, "%s", name);
        snprintf(name, sizeof name, "prov/model-%d-2025-01-01", i);
        cr_assert_eq(dx_usage_prices_find(p, name), f, "%s", name);
    }
    cr_assert_eq(dx_usage_prices_find(p, "a-b-c-d")->input, 3);
    cr_assert_eq(dx_usage_prices_find(p, "a-b-x")->input, 2);
    cr_assert_eq(dx_usage_prices_find(p, "a-x-c")->input, 1);
    cr_assert_null(dx_usage_prices_find(p, "ab-c"));
    cr_assert_null(dx_usage_prices_find(p, "model-"));
    cr_assert_null(dx_usage_prices_find(p, "model-1021"));
    dx_usage_prices_free(p);
}

Test(usage, accumulators_add_merge_and_reset, .timeout = 10)
{
    dx_usage_prices *p = NULL;
    cr_assert_eq(dx_usage_prices_new(true, &p), DX_OK);
    cr_assert_eq(dx_usage_prices_set(p, "m", (dx_usage_price){1, 2, 0.5}),
                 DX_OK);
    dx_usage_acc run, opt;
    dx_usage_acc_init(&run, "program-run");
    dx_usage_acc_init(&opt, "optimization");
    dx_lm_usage u = {.input_tokens = 1000,
                     .output_tokens = 100,
                     .total_tokens = 1100,
                     .cached_tokens = 400};
    double c1 = dx_usage_acc_add(&run, p, "m", &u, false);
    assert_usd(c1, (600 * 1 + 400 * 0.5 + 100 * 2) / 1e6);
    /* A cache hit counts as a call but bills nothing. */
    assert_usd(dx_usage_acc_add(&run, p, "m", &u, true), 0);
    /* An unpriced model: tokens counted, cost 0, flagged. */
    assert_usd(dx_usage_acc_add(&run, p, "other", &u, false), 0);
    cr_assert_eq(run.calls, 3);
    cr_assert_eq(run.cached_calls, 1);
    cr_assert_eq(run.unpriced_calls, 1);
    cr_assert_eq(run.input_tokens, 2000);
    cr_assert_eq(run.output_tokens, 200);
    cr_assert_eq(run.cached_tokens, 800);
    assert_usd(run.cost_usd, c1);

    dx_usage_acc_add(&opt, p, "m", &u, false);
    dx_usage_acc_merge(&opt, &run);
    cr_assert_str_eq(opt.name, "optimization");
    cr_assert_eq(opt.calls, 4);
    cr_assert_eq(opt.cached_calls, 1);
    cr_assert_eq(opt.input_tokens, 3000);
    assert_usd(opt.cost_usd, 2 * c1);

    dx_usage_acc_reset(&run);
    cr_assert_str_eq(run.name, "program-run");
    cr_assert_eq(run.calls, 0);
    cr_assert_eq(run.cost_usd, 0);

    char longname[100];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    dx_usage_acc_init(&run, longname);
    cr_assert_eq(strlen(run.name), DX_USAGE_NAME_MAX - 1);
    dx_usage_prices_free(p);
}
