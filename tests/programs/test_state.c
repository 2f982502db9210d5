/*
 * test_state.c — program state in DSPy's JSON layout: save → load gives
 * the identical prompts, a file as Python DSPy's program.save("x.json")
 * writes it (fixtures/programs/dspy_saved_program.json, written by hand
 * from dspy/primitives/base_module.py and predict/predict.py) loads with
 * its demos, instructions, prefixes and LM settings (endpoint overrides
 * dropped), the written layout is DSPy's, and bad files fail with where and
 * what, leaving the program untouched.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dspex/alloc.h"
#include "dspex/module.h"

static int never_called(dx_ctx *ctx, const dx_module *self,
                        const dx_example *in, dx_prediction **out)
{
    (void)self;
    (void)in;
    (void)out;
    return dx_ctx_fail(ctx, DX_ENOTSUP, "not run in these tests");
}

static dx_signature *sig(const char *text)
{
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_signature_parse(text, NULL, NULL, 0, &s, &d), DX_OK, "%s",
                 d.msg);
    return s;
}

/* generate_query (Predict) and answer (ChainOfThought). */
static dx_module *program(void)
{
    dx_module *m = dx_module_new("SimpleRAG", never_called, NULL, NULL, NULL);
    dx_signature *s = sig("question -> query");
    cr_assert_eq(dx_module_add(m, "generate_query", dx_predict_new(s, NULL)),
                 DX_OK);
    dx_signature_unref(s);
    s = sig("question, context: list[str], summary -> answer");
    cr_assert_eq(dx_module_add(m, "answer", dx_chain_of_thought_new(s, NULL)),
                 DX_OK);
    dx_signature_unref(s);
    return m;
}

static char *fixture_path(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/programs/%s", getenv("DX_FIXTURES"), name);
    return path;
}

static char tmpdir[256];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dx_state_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(state, .init = setup, .fini = teardown, .timeout = 30);

/* The messages a predictor would send for inputs, as one string. */
static char *prompt_of(const dx_module *p, const dx_example *in)
{
    dx_lm_request *req = dx_lm_request_new(NULL);
    cr_assert_eq(dx_adapter_format(DX_ADAPTER_CHAT, dx_predict_signature(p),
                                   (const dx_example *const *)NULL, 0, in, req,
                                   NULL),
                 DX_OK);
    dx_lm_request_free(req);
    req = dx_lm_request_new(NULL);
    size_t nd = dx_predict_n_demos(p);
    const dx_example *demos[16];
    for (size_t i = 0; i < nd; i++)
        demos[i] = dx_predict_demo(p, i);
    cr_assert_eq(dx_adapter_format(DX_ADAPTER_CHAT, dx_predict_signature(p),
                                   demos, nd, in, req, NULL),
                 DX_OK);
    size_t len = 1;
    for (size_t i = 0; i < req->n_messages; i++)
        len += strlen(req->messages[i].content) + 16;
    char *all = calloc(1, len);
    size_t at = 0;
    for (size_t i = 0; i < req->n_messages; i++) {
        const char *tag = req->messages[i].role == DX_LM_SYSTEM ? "<system>"
                          : req->messages[i].role == DX_LM_ASSISTANT
                              ? "<assistant>"
                              : "<user>";
        at += (size_t)snprintf(all + at, len - at, "%s%s", tag,
                               req->messages[i].content);
    }
    dx_lm_request_free(req);
    return all;
}

static dx_example *question(const char *q)
{
    dx_example *ex = dx_example_new();
    dx_example_set_str(ex, "question", q);
    dx_example_set_json(ex, "context", "[\"a\", \"b\"]", NULL);
    dx_example_set_str(ex, "summary", "s");
    return ex;
}

Test(state, save_then_load_gives_identical_prompts)
{
    dx_module *m = program();
    dx_module *gq = dx_module_child(m, "generate_query");
    dx_module *ans = dx_module_child(dx_module_child(m, "answer"), "predict");
    /* Optimized state: new instructions, a field text, demos. */
    dx_signature *s2 = NULL;
    cr_assert_eq(dx_signature_with_instructions(dx_predict_signature(gq),
                                                "Write a search query.", &s2),
                 DX_OK);
    dx_signature *s3 = NULL;
    cr_assert_eq(dx_signature_with_field_text(s2, "query", "keywords only",
                                              "Search Query:", &s3),
                 DX_OK);
    dx_predict_set_signature(gq, s3);
    dx_signature_unref(s2);
    dx_signature_unref(s3);
    dx_example *d = dx_example_new();
    dx_example_set_bool(d, "augmented", true);
    dx_example_set_str(d, "question", "Q1 «quoted» ünïcode");
    dx_example_set_str(d, "query", "q1\nsecond line");
    dx_predict_add_demo(gq, d);
    dx_example_free(d);
    d = question("Q2");
    dx_example_set_str(d, "reasoning", "because");
    dx_example_set_str(d, "answer", "A2");
    dx_example_set_float(d, "score", 1.0);
    dx_predict_add_demo(ans, d);
    dx_example_free(d);

    char path[300];
    snprintf(path, sizeof path, "%s/program.json", tmpdir);
    dx_diag dg = {0};
    cr_assert_eq(dx_module_save(m, path, &dg), DX_OK, "%s", dg.msg);

    dx_module *loaded = program();
    cr_assert_eq(dx_module_load(loaded, path, &dg), DX_OK, "%s", dg.msg);
    dx_example *in = question("What?");
    const char *paths[] = {"generate_query", "answer.predict"};
    dx_named_predictor *a = NULL, *b = NULL;
    size_t na, nb;
    dx_module_predictors(m, &a, &na);
    dx_module_predictors(loaded, &b, &nb);
    cr_assert_eq(na, 2);
    cr_assert_eq(nb, 2);
    for (size_t i = 0; i < 2; i++) {
        cr_assert_str_eq(a[i].path, paths[i]);
        char *pa = prompt_of(a[i].predict, in);
        char *pb = prompt_of(b[i].predict, in);
        cr_assert_str_eq(pa, pb, "%s differs after load", paths[i]);
        free(pa);
        free(pb);
        cr_assert(dx_signature_equal(dx_predict_signature(a[i].predict),
                                     dx_predict_signature(b[i].predict)));
    }
    dx_free(a);
    dx_free(b);

    /* Saving the loaded program writes the same bytes. */
    char path2[300];
    snprintf(path2, sizeof path2, "%s/again.json", tmpdir);
    cr_assert_eq(dx_module_save(loaded, path2, &dg), DX_OK);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cmp -s %s %s", path, path2);
    cr_assert_eq(system(cmd), 0, "a save of the loaded program differs");
    dx_example_free(in);
    dx_module_free(loaded);
    dx_module_free(m);
}

Test(state, writes_dspys_layout)
{
    dx_module *m = program();
    char path[300];
    snprintf(path, sizeof path, "%s/layout.json", tmpdir);
    cr_assert_eq(dx_module_save(m, path, NULL), DX_OK);
    FILE *f = fopen(path, "rb");
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cr_assert_eq(buf[n - 1], '\n',
                 "ends with a newline, as orjson's APPEND_NEWLINE");
    cr_assert(
        strncmp(buf,
                "{\n  \"generate_query\": {\n    \"traces\": [],\n"
                "    \"train\": [],\n    \"demos\": [],\n"
                "    \"signature\": {\n      \"instructions\": ",
                strlen("{\n  \"generate_query\": {\n    \"traces\": [],"
                       "\n    \"train\": [],\n    \"demos\": [],\n"
                       "    \"signature\": {\n      \"instructions\": ")) == 0,
        "%s", buf);
    cJSON *doc = cJSON_Parse(buf);
    cr_assert(doc);
    const cJSON *ans = cJSON_GetObjectItem(doc, "answer.predict");
    cr_assert(ans);
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(ans, "lm")));
    const cJSON *fields =
        cJSON_GetObjectItem(cJSON_GetObjectItem(ans, "signature"), "fields");
    cr_assert_eq(cJSON_GetArraySize(fields), 5);
    cr_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetArrayItem(fields, 3), "prefix")
            ->valuestring,
        "Reasoning:");
    cr_assert_str_eq(
        cJSON_GetObjectItem(cJSON_GetArrayItem(fields, 3), "description")
            ->valuestring,
        "${reasoning}");
    const cJSON *deps = cJSON_GetObjectItem(
        cJSON_GetObjectItem(doc, "metadata"), "dependency_versions");
    cr_assert(cJSON_GetObjectItem(deps, "python"));
    cr_assert(cJSON_GetObjectItem(deps, "dspy"));
    cr_assert(cJSON_GetObjectItem(deps, "cloudpickle"));
    cJSON_Delete(doc);
    dx_module_free(m);
}

Test(state, loads_a_file_saved_by_python_dspy)
{
    dx_module *m = program();
    dx_diag d = {0};
    cr_assert_eq(dx_module_load(m, fixture_path("dspy_saved_program.json"), &d),
                 DX_OK, "%s", d.msg);
    dx_module *gq = dx_module_child(m, "generate_query");
    cr_assert_eq(dx_predict_n_demos(gq), 2);
    cr_assert(
        cJSON_IsTrue(dx_example_get(dx_predict_demo(gq, 0), "augmented")));
    cr_assert_str_eq(dx_example_get_str(dx_predict_demo(gq, 1), "query", ""),
                     "highest mountain");
    const dx_signature *s = dx_predict_signature(gq);
    cr_assert_str_eq(dx_signature_instructions(s),
                     "Write a short web search query for the question.");
    cr_assert_str_eq(dx_signature_find(s, "query")->prefix, "Search Query:");
    cr_assert_str_eq(dx_signature_find(s, "query")->desc, "a few keywords");

    dx_module *ans = dx_module_child(dx_module_child(m, "answer"), "predict");
    s = dx_predict_signature(ans);
    cr_assert_str_eq(dx_signature_find(s, "reasoning")->prefix,
                     "Reasoning: Let's think step by step in order to");
    cr_assert_str_eq(dx_signature_find(s, "answer")->desc,
                     "often between 1 and 5 words");
    const dx_predict_opts *o = dx_predict_get_opts(ans);
    cr_assert(o->has_temperature);
    cr_assert_eq(o->temperature, 0.0);
    cr_assert_eq(o->max_tokens, 4000);

    /* The demo (with its list context) renders as DSPy would. */
    dx_example *in = question("Who painted the Mona Lisa?");
    char *prompt = prompt_of(ans, in);
    cr_assert(strstr(prompt, "<user>[[ ## question ## ]]\nWho wrote Hamlet?\n\n"
                             "[[ ## context ## ]]\n[\"Hamlet is a tragedy by "
                             "William Shakespeare.\", \"It was written around "
                             "1600.\"]"),
              "%s", prompt);
    cr_assert(strstr(prompt,
                     "In adhering to this structure, your objective is: "
                     "\n        Answer the question from the context.\n"
                     "        \n        Be brief: a few words."),
              "%s", prompt);
    free(prompt);
    dx_example_free(in);

    /* The endpoint override is dropped; the model is kept. */
    char path[300];
    snprintf(path, sizeof path, "%s/resaved.json", tmpdir);
    cr_assert_eq(dx_module_save(m, path, NULL), DX_OK);
    FILE *f = fopen(path, "rb");
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cr_assert_null(strstr(buf, "attacker.example"));
    cr_assert(strstr(buf, "\"model\": \"openai/gpt-4o-mini\""));
    dx_module_free(m);
}

Test(state, a_program_with_another_structure_is_refused_untouched)
{
    dx_module *m = dx_module_new("Other", never_called, NULL, NULL, NULL);
    dx_signature *s = sig("question -> query");
    dx_module_add(m, "generate_query", dx_predict_new(s, NULL));
    dx_signature_unref(s);
    s = sig("question -> answer");
    dx_module_add(m, "respond", dx_predict_new(s, NULL));
    dx_signature_unref(s);
    dx_diag d = {0};
    cr_assert_eq(dx_module_load(m, fixture_path("dspy_saved_program.json"), &d),
                 DX_ENOENT);
    cr_assert(strstr(d.msg, "\"respond\""), "%s", d.msg);
    /* All or nothing: generate_query did not take the file's demos. */
    cr_assert_eq(dx_predict_n_demos(dx_module_child(m, "generate_query")), 0);
    dx_module_free(m);
}

Test(state, broken_files_say_where)
{
    dx_module *m = program();
    char path[300];
    snprintf(path, sizeof path, "%s/broken.json", tmpdir);
    FILE *f = fopen(path, "wb");
    fputs("{\n  \"generate_query\": {\n    \"demos\": [,]\n  }\n}\n", f);
    fclose(f);
    dx_diag d = {0};
    cr_assert_eq(dx_module_load(m, path, &d), DX_ESYNTAX);
    cr_assert_eq(d.line, 3, "%s", d.msg);
    cr_assert(strstr(d.msg, "broken.json:3"), "%s", d.msg);

    f = fopen(path, "wb");
    fputs(
        "{\"generate_query\": {\"demos\": 5, \"signature\": {\"instructions\":"
        " \"x\", \"fields\": []}}, \"answer.predict\": {}}",
        f);
    fclose(f);
    cr_assert_eq(dx_module_load(m, path, &d), DX_ESYNTAX);
    cr_assert(strstr(d.msg, "demos"), "%s", d.msg);

    snprintf(path, sizeof path, "%s/missing.json", tmpdir);
    cr_assert_eq(dx_module_load(m, path, &d), DX_EIO);
    cr_assert(strstr(d.msg, "missing.json"), "%s", d.msg);
    dx_module_free(m);
}

/* ---- building and copying programs; allocation failure ---------------- */

Test(state, the_tree_reads_back_by_index_and_name)
{
    dx_module *m = program();
    cr_assert_eq(dx_module_n_children(m), 2);
    cr_assert_str_eq(dx_module_child_name(m, 1), "answer");
    cr_assert_eq(dx_module_child_at(m, 0),
                 dx_module_child(m, "generate_query"));
    cr_assert_null(dx_module_child_name(m, 2));
    cr_assert_null(dx_module_child_at(m, 2));
    cr_assert_eq(dx_module_n_children(NULL), 0);
    cr_assert_null(dx_module_child_at(NULL, 0));
    /* Options of a Predict can be replaced; not of another module. */
    dx_module *p = dx_module_child(m, "generate_query");
    dx_predict_opts o = {.has_temperature = true,
                         .temperature = 0.3,
                         .n = 2,
                         .lm_name = "other"};
    cr_assert_eq(dx_predict_set_opts(p, &o), DX_OK);
    cr_assert_str_eq(dx_predict_get_opts(p)->lm_name, "other");
    cr_assert_eq(dx_predict_get_opts(p)->n, 2);
    cr_assert_eq(dx_predict_set_opts(m, &o), DX_EINVAL);
    cr_assert_eq(dx_predict_set_opts(NULL, &o), DX_EINVAL);
    /* A copy of a prediction is deep, completions included. */
    dx_prediction *pr = dx_prediction_new();
    cr_assert_eq(dx_example_set_str(dx_prediction_fields_mut(pr), "a", "x"),
                 DX_OK);
    dx_prediction *cp = dx_prediction_copy(pr);
    cr_assert_not_null(cp);
    cr_assert_str_eq(dx_prediction_get_str(cp, "a", ""), "x");
    cr_assert_eq(dx_prediction_n_completions(cp),
                 dx_prediction_n_completions(pr));
    cr_assert_null(dx_prediction_copy(NULL));
    dx_prediction_free(cp);
    dx_prediction_free(pr);
    dx_module_free(m);
}

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

/* Build a program, give it demos and options, copy it, dump, save, load;
 * the first error ends it and is returned. */
static int program_work(void)
{
    dx_signature *s1 = NULL, *s2 = NULL;
    int rc = dx_signature_parse("question -> query", NULL, NULL, 0, &s1, NULL);
    if (rc == DX_OK)
        rc = dx_signature_parse("question, context: list[str] -> answer", NULL,
                                NULL, 0, &s2, NULL);
    dx_module *m = rc == DX_OK
                       ? dx_module_new("RAG", never_called, NULL, NULL, NULL)
                       : NULL;
    if (rc == DX_OK && !m)
        rc = DX_ENOMEM;
    dx_predict_opts o = {.lm_name = "lm", .max_tokens = 50};
    if (rc == DX_OK) {
        dx_module *p = dx_predict_new(s1, &o);
        rc = p ? dx_module_add(m, "generate_query", p) : DX_ENOMEM;
    }
    if (rc == DX_OK) {
        dx_module *c = dx_chain_of_thought_new(s2, NULL);
        rc = c ? dx_module_add(m, "answer", c) : DX_ENOMEM;
    }
    dx_signature_unref(s1);
    dx_signature_unref(s2);
    dx_example *d = NULL;
    const char *dj = "{\"question\": \"q\", \"query\": \"x\", \"augmented\": "
                     "true}";
    if (rc == DX_OK)
        rc = dx_example_from_json(dj, strlen(dj), &d, NULL);
    dx_named_predictor *np = NULL;
    size_t n = 0;
    if (rc == DX_OK && (rc = dx_module_predictors(m, &np, &n)) == DX_OK) {
        cr_expect_eq(n, 2);
        if (n == 2) {
            cr_expect_str_eq(np[1].path, "answer.predict");
            if ((rc = dx_predict_set_demos(
                     np[0].predict, (const dx_example *const *)&d, 1)) == DX_OK)
                rc = dx_predict_add_demo(np[0].predict, d);
            if (rc == DX_OK)
                rc = dx_predict_set_opts(np[1].predict, &o);
        }
        dx_free(np);
    }
    dx_example_free(d);
    dx_module *c = NULL, *r = NULL;
    if (rc == DX_OK && !(c = dx_module_copy(m)))
        rc = DX_ENOMEM;
    if (rc == DX_OK && !(r = dx_module_reset_copy(m)))
        rc = DX_ENOMEM;
    if (rc == DX_OK) {
        cr_expect_eq(dx_predict_n_demos(dx_module_child(c, "generate_query")),
                     2);
        cr_expect_eq(dx_predict_n_demos(dx_module_child(r, "generate_query")),
                     0);
    }
    dx_diag diag = {0};
    cJSON *st = rc == DX_OK ? dx_module_dump_state(m) : NULL;
    if (rc == DX_OK && !st)
        rc = DX_ENOMEM;
    if (rc == DX_OK)
        rc = dx_module_load_state(r, st, &diag);
    if (rc == DX_OK)
        cr_expect_eq(dx_predict_n_demos(dx_module_child(r, "generate_query")),
                     2);
    cJSON_Delete(st);
    char path[300];
    snprintf(path, sizeof path, "%s/p.json", tmpdir);
    if (rc == DX_OK)
        rc = dx_module_save(m, path, &diag);
    if (rc == DX_OK)
        rc = dx_module_load(c, path, &diag);
    if (rc != DX_OK && rc != DX_ENOMEM)
        cr_log_error("%s: %s", dx_err_name(rc), diag.msg);
    dx_module_free(r);
    dx_module_free(c);
    dx_module_free(m);
    return rc;
}

Test(state, every_failed_allocation_is_enomem_and_leaks_nothing, .timeout = 120)
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
