/*
 * test_program.c — declarative programs (program.h) without running them:
 * every wrong declaration says which file and which member, a program
 * saves and loads back to the same declaration and state, and a failed
 * allocation anywhere in parsing, building or saving is DX_ENOMEM and
 * leaks nothing.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/example.h"
#include "dspex/program.h"

static char tmpdir[128];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dx_program_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(program, .init = setup, .fini = teardown, .timeout = 60);

/* A three-step pipeline with options, instructions and a wrapper. */
static const char *const PIPELINE =
    "{\"program\": {\"modules\": ["
    "{\"name\": \"generate_query\", \"module\": \"predict\", \"signature\": "
    "\"question -> query\", \"instructions\": \"Write a query.\", \"config\": "
    "{\"temperature\": 0.5, \"max_tokens\": 100, \"n\": 1, \"lm\": "
    "\"fast\"}},"
    "{\"name\": \"answer\", \"module\": \"chain_of_thought\", \"signature\": "
    "\"question, query -> answer\"},"
    "{\"name\": \"best\", \"module\": \"best_of_n\", \"n\": 2, \"threshold\": "
    "1, \"reward\": {\"all\": [{\"field\": \"answer\", \"max_words\": 3}, "
    "{\"field\": \"answer\", \"not_empty\": true}]}, \"wraps\": {\"module\": "
    "\"predict\", \"signature\": \"question -> answer\"}}],"
    "\"steps\": [{\"module\": \"generate_query\", \"inputs\": {\"question\": "
    "\"question\"}}, {\"module\": \"answer\", \"inputs\": {\"question\": "
    "\"question\", \"query\": \"generate_query.query\"}}, {\"module\": "
    "\"best\", \"inputs\": {\"question\": \"answer.answer\"}}]}}";

/* PIPELINE with a demo on generate_query. */
static int parse_pipeline(dx_module **m, dx_diag *d)
{
    int rc = dx_program_parse(PIPELINE, strlen(PIPELINE), "p.json", m, d);
    dx_example *demo = NULL;
    const char *dj = "{\"question\": \"q\", \"query\": \"x\"}";
    if (rc == DX_OK)
        rc = dx_example_from_json(dj, strlen(dj), &demo, d);
    if (rc == DX_OK)
        rc = dx_predict_add_demo(dx_module_child(*m, "generate_query"), demo);
    dx_example_free(demo);
    if (rc != DX_OK) {
        dx_module_free(*m);
        *m = NULL;
    }
    return rc;
}

Test(program, wrong_declarations_say_which_file_and_member)
{
    static const struct {
        const char *json, *msg;
        int rc;
    } cases[] = {
        {"[1]", "p.json: the top level must be an object", DX_ESYNTAX},
        {"{\"program\": {\"modules\": [", "p.json:1:26: ", DX_ESYNTAX},
        {"{}", "p.json: no \"program\" object", DX_EINVAL},
        {"{\"program\": {\"modules\": []}}",
         "p.json: program.modules must be a non-empty list", DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"module\": \"predict\"}]}}",
         "p.json: program.modules[0]: \"module\" and \"signature\" (strings) "
         "are required",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"module\": \"predict\", "
         "\"signature\": \"a b\"}]}}",
         "p.json: program.modules[0]: signature: expected", DX_ESYNTAX},
        {"{\"program\": {\"modules\": [{\"module\": \"predict\", "
         "\"signature\": \"a -> b\", \"config\": 3}]}}",
         "p.json: program.modules[0]: \"config\" must be an object", DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"module\": \"predict\", "
         "\"signature\": \"a -> b\"}, {\"module\": \"predict\", "
         "\"signature\": \"b -> c\"}]}}",
         "p.json: program.modules[0]: \"name\" is required", DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"x\", \"module\": "
         "\"predict\", \"signature\": \"a -> b\"}, {\"name\": \"x\", "
         "\"module\": \"predict\", \"signature\": \"b -> c\"}]}}",
         "p.json: program.modules[1]: bad or repeated name \"x\"", DX_EEXIST},
        {"{\"program\": {\"modules\": [{\"name\": \"x\", \"module\": "
         "\"predict\", \"signature\": \"a -> b\"}], \"steps\": 3}}",
         "p.json: program.steps must be a list", DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"x\", \"module\": "
         "\"predict\", \"signature\": \"a -> b\"}], \"steps\": [{\"module\": "
         "\"y\"}]}}",
         "p.json: program.steps[0]: unknown module \"y\"", DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"x\", \"module\": "
         "\"predict\", \"signature\": \"a -> b\"}], \"steps\": [{\"module\": "
         "\"x\", \"inputs\": [1]}]}}",
         "p.json: program.steps[0]: \"inputs\" must be an object of field: "
         "source",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"x\", \"module\": "
         "\"predict\", \"signature\": \"a -> b\"}], \"steps\": [{\"module\": "
         "\"x\", \"inputs\": {\"a\": 1}}]}}",
         "p.json: program.steps[0]: input \"a\" must name a source field",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"x\", \"module\": "
         "\"predict\", \"signature\": \"a -> b\"}], \"steps\": [{\"module\": "
         "\"x\", \"inputs\": {\"a\": \"x.b\"}}]}}",
         "p.json: program.steps[0]: input \"x.b\" is not produced before this "
         "step",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"r\", \"module\": "
         "\"rag\"}]}}",
         "p.json: program.modules[0]: \"corpus\" (a JSONL file of {\"text\": "
         "...} passages) or \"colbertv2\" (a ColBERTv2 server's URL) is "
         "required",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"r\", \"module\": "
         "\"rag\", \"corpus\": \"c.jsonl\", \"colbertv2\": "
         "\"http://127.0.0.1:9/x\"}]}}",
         "p.json: program.modules[0]: \"corpus\" and \"colbertv2\" both given",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"r\", \"module\": "
         "\"rag\", \"colbertv2\": \"wiki17_abstracts\"}]}}",
         "p.json: program.modules[0]: colbertv2: the URL must be http:// or "
         "https://",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"r\", \"module\": "
         "\"react\", \"signature\": \"question -> answer\", \"tools\": "
         "[{\"builtin\": \"search\", \"colbertv2\": \"ftp://x\"}]}]}}",
         "p.json: program.modules[0].tools[0]: colbertv2: the URL must be",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"r\", \"module\": "
         "\"rag\", \"corpus\": \"/no/such/corpus.jsonl\"}]}}",
         "p.json: program.modules[0]: /no/such/corpus.jsonl", DX_EIO},
        {"{\"program\": {\"modules\": [{\"name\": \"a\", \"module\": "
         "\"refine\", \"n\": 2, \"threshold\": 1, \"wraps\": {\"module\": "
         "\"predict\", \"signature\": \"q -> a\"}}]}}",
         "p.json: program.modules[0]: \"reward\" is required", DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"a\", \"module\": "
         "\"predict\", \"signature\": \"q -> a\"}]}, \"self\": {\"demos\": "
         "3}}",
         "p.json", DX_ESYNTAX},
        /* Counts that are not whole numbers in range (dspex's JSON reads
         * Python's Infinity and NaN). */
        {"{\"program\": {\"modules\": [{\"name\": \"agent\", \"module\": "
         "\"react\", \"signature\": \"question -> answer\", "
         "\"max_iters\": -Infinity}]}}",
         "p.json: program.modules[0]: \"max_iters\" must be a whole number "
         "from 1 to 1000",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"r\", \"module\": "
         "\"rag\", \"corpus\": \"c.jsonl\", \"k\": 2.5}]}}",
         "p.json: program.modules[0]: \"k\" must be a whole number from 1 to "
         "1000",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"r\", \"module\": "
         "\"react\", \"signature\": \"question -> answer\", \"tools\": "
         "[{\"builtin\": \"search\", \"corpus\": \"c.jsonl\", \"k\": "
         "1e300}]}]}}",
         "p.json: program.modules[0].tools[0]: \"k\" must be a whole number",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"a\", \"module\": "
         "\"predict\", \"signature\": \"q -> a\", \"config\": {\"n\": "
         "NaN}}]}}",
         "p.json: program.modules[0].config: \"n\" must be a whole number "
         "from 1 to 128",
         DX_EINVAL},
        {"{\"program\": {\"modules\": [{\"name\": \"a\", \"module\": "
         "\"predict\", \"signature\": \"q -> a\", \"config\": "
         "{\"max_tokens\": -1}}]}}",
         "p.json: program.modules[0].config: \"max_tokens\" must be a whole "
         "number",
         DX_EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dx_module *m = (dx_module *)0x1;
        dx_diag d = {0};
        int rc = dx_program_parse(cases[i].json, strlen(cases[i].json),
                                  "p.json", &m, &d);
        cr_expect_eq(rc, cases[i].rc, "case %zu: %s: %s", i, dx_err_name(rc),
                     d.msg);
        cr_expect(strstr(d.msg, cases[i].msg), "case %zu: %s\nexpected: %s", i,
                  d.msg, cases[i].msg);
        cr_expect(m == NULL || m == (dx_module *)0x1, "case %zu", i);
    }
    dx_module *m = NULL;
    dx_diag d = {0};
    cr_expect_eq(dx_program_parse(NULL, 0, "p", &m, &d), DX_EINVAL);
    cr_expect_eq(dx_program_load(NULL, &m, &d), DX_EINVAL);
    cr_expect_eq(dx_program_single("predict", NULL, NULL, &m, &d), DX_EINVAL);
    cr_expect_eq(dx_program_save(NULL, "x", &d), DX_EINVAL);
    char missing[200];
    snprintf(missing, sizeof missing, "%s/none.json", tmpdir);
    cr_expect_eq(dx_program_load(missing, &m, &d), DX_EIO);
    cr_expect(strstr(d.msg, missing), "%s", d.msg);
}

/* Save, load, save again: the same file. */
Test(program, a_saved_program_loads_back_to_the_same_file)
{
    dx_module *m = NULL;
    dx_diag d = {0};
    cr_assert_eq(parse_pipeline(&m, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(dx_predict_n_demos(dx_module_child(m, "generate_query")), 1);
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/a.json", tmpdir);
    snprintf(b, sizeof b, "%s/b.json", tmpdir);
    cr_assert_eq(dx_program_save(m, a, &d), DX_OK, "%s", d.msg);
    dx_module *m2 = NULL;
    cr_assert_eq(dx_program_load(a, &m2, &d), DX_OK, "%s", d.msg);
    cr_assert_eq(dx_program_save(m2, b, &d), DX_OK, "%s", d.msg);
    FILE *fa = fopen(a, "r"), *fb = fopen(b, "r");
    cr_assert(fa && fb);
    static char ta[1 << 16], tb[1 << 16];
    size_t la = fread(ta, 1, sizeof ta, fa), lb = fread(tb, 1, sizeof tb, fb);
    fclose(fa);
    fclose(fb);
    cr_assert(la > 0 && la == lb && memcmp(ta, tb, la) == 0);
    cr_assert(strstr(ta, "\"program\""), "the declaration is kept");
    cr_assert(strstr(ta, "\"dependency_versions\""), "%s", ta);
    dx_module_free(m2);
    dx_module_free(m);

    /* A one-module program made in C saves a declaration too. */
    cr_assert_eq(
        dx_program_single("chain_of_thought", "q -> a", "Be brief.", &m, &d),
        DX_OK, "%s", d.msg);
    cr_assert_eq(dx_program_save(m, a, &d), DX_OK, "%s", d.msg);
    dx_module_free(m);
    cr_assert_eq(dx_program_load(a, &m, &d), DX_OK, "%s", d.msg);
    cr_assert_str_eq(dx_module_type_name(m), "ChainOfThought");
    dx_module_free(m);
}

/* ---- allocation failure: fail the Nth allocation until the call works */

static long fail_at = -1;
static long n_allocs;

static void *f_malloc(size_t n, void *ud)
{
    (void)ud;
    return n_allocs++ == fail_at ? NULL : malloc(n);
}

static void *f_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    return n_allocs++ == fail_at ? NULL : realloc(p, n);
}

static void f_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const dx_allocator failing = {f_malloc, f_realloc, f_free, NULL};

static int program_work(void)
{
    dx_module *m = NULL, *m2 = NULL, *s = NULL;
    dx_diag d = {0};
    char path[256];
    snprintf(path, sizeof path, "%s/sweep.json", tmpdir);
    int rc = parse_pipeline(&m, &d);
    if (rc == DX_OK)
        rc = dx_program_save(m, path, &d);
    if (rc == DX_OK)
        rc = dx_program_load(path, &m2, &d);
    if (rc == DX_OK) {
        cr_expect_eq(dx_module_n_children(m2), 3);
        cr_expect_eq(dx_predict_n_demos(dx_module_child(m2, "generate_query")),
                     1);
    }
    if (rc == DX_OK)
        rc = dx_program_single("predict", "q -> a", NULL, &s, &d);
    if (rc != DX_OK && rc != DX_ENOMEM)
        cr_log_error("%s: %s", dx_err_name(rc), d.msg);
    dx_module_free(s);
    dx_module_free(m2);
    dx_module_free(m);
    return rc;
}

Test(program, every_failed_allocation_is_enomem_and_leaks_nothing,
     .timeout = 120)
{
    dx_set_allocator(&failing);
    int rc = -1;
    long total = 0;
    for (fail_at = 0; fail_at < 1000000; fail_at++) {
        n_allocs = 0;
        rc = program_work();
        if (rc != DX_OK)
            cr_expect_eq(rc, DX_ENOMEM, "fail at %ld: %s", fail_at,
                         dx_err_name(rc));
        if (n_allocs <= fail_at) {
            total = n_allocs;
            break;
        }
    }
    dx_set_allocator(NULL);
    cr_assert_eq(rc, DX_OK);
    cr_assert_gt(total, 100);
}
