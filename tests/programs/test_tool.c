/*
 * test_tool.c — tools: the argument schema and the description DSPy
 * renders from a C declaration, the provider parameters object, argument
 * validation with DSPy's messages, calls that crash, hang, fail or return
 * garbage becoming observations (never the caller's failure), the
 * calculator, and a module used as a tool.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/module.h"
#include "dspex/server.h"
#include "dspex/tool.h"
#include "lm_fixture.h"

TestSuite(tool, .init = fixture_setup, .fini = fixture_teardown, .timeout = 60);

static int add_fn(const cJSON *args, char **result, void *ud)
{
    (void)ud;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(args, "a");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(args, "c");
    char buf[128];
    snprintf(buf, sizeof buf, "%d %s", (int)a->valuedouble,
             cJSON_IsString(c) ? c->valuestring : "?");
    *result = dx_strdup(buf);
    return DX_OK;
}

static const dx_tool_param add_params[] = {
    {.name = "a", .type = "int", .desc = "the first", .required = true},
    {.name = "b", .type = "list[str]", .required = true},
    {.name = "c", .type = "str", .default_json = "\"x\""},
    {.name = "d", .type = "Optional[int]", .required = true},
};

static dx_tool *add_tool(void)
{
    dx_tool *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_tool_new("add", "Adds numbers.\nReturns the sum.",
                             add_params, 4, add_fn, NULL, &t, &d),
                 DX_OK, "%s", d.msg);
    return t;
}

static cJSON *json(const char *text)
{
    cJSON *v = cJSON_Parse(text);
    cr_assert_not_null(v, "bad test JSON %s", text);
    return v;
}

Test(tool, description_and_schema_match_dspy)
{
    dx_tool *t = add_tool();
    char *s = NULL;
    cr_assert_eq(dx_tool_describe(t, &s), DX_OK);
    cr_assert_str_eq(
        s, "add, whose description is <desc>Adds numbers.  Returns the "
           "sum.</desc>. It takes arguments {'a': {'type': 'integer', "
           "'description': 'the first'}, 'b': {'items': {'type': 'string'}, "
           "'type': 'array'}, 'c': {'type': 'string', 'default': 'x'}, 'd': "
           "{'anyOf': [{'type': 'integer'}, {'type': 'null'}]}}.");
    dx_free(s);
    cr_assert_eq(dx_tool_parameters_json(t, &s), DX_OK);
    cr_assert_str_eq(
        s, "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\","
           "\"description\":\"the first\"},\"b\":{\"items\":{\"type\":"
           "\"string\"},\"type\":\"array\"},\"c\":{\"type\":\"string\","
           "\"default\":\"x\"},\"d\":{\"anyOf\":[{\"type\":\"integer\"},{"
           "\"type\":\"null\"}]}},\"required\":[\"a\",\"b\",\"d\"]}");
    dx_free(s);
    dx_tool_unref(t);

    /* No description, no arguments: DSPy's finish-like rendering. */
    dx_tool *f = dx_tool_finish_new(NULL);
    cr_assert_eq(dx_tool_describe(f, &s), DX_OK);
    cr_assert_str_eq(s, "finish. It takes arguments {}.");
    dx_free(s);
    dx_tool_unref(f);
}

Test(tool, bad_declarations_are_refused_with_the_reason)
{
    dx_tool *t = NULL;
    dx_diag d = {0};
    dx_tool_param twice[] = {{.name = "a", .type = "int"},
                             {.name = "a", .type = "str"}};
    cr_assert_eq(dx_tool_new("t", NULL, twice, 2, add_fn, NULL, &t, &d),
                 DX_EINVAL);
    cr_assert(strstr(d.msg, "\"a\" is declared twice"), "%s", d.msg);
    cr_assert_null(t);
    dx_tool_param badtype[] = {{.name = "a", .type = "list[str"}};
    cr_assert_eq(dx_tool_new("t", NULL, badtype, 1, add_fn, NULL, &t, &d),
                 DX_ESYNTAX);
    cr_assert(strstr(d.msg, "argument \"a\""), "%s", d.msg);
    cr_assert_eq(dx_tool_new("no spaces", NULL, NULL, 0, add_fn, NULL, &t, &d),
                 DX_EINVAL);
    cr_assert(strstr(d.msg, "tool name"), "%s", d.msg);
}

Test(tool, bad_arguments_become_observations_without_running_the_tool)
{
    dx_tool *t = add_tool();
    struct {
        const char *args, *obs;
    } cases[] = {
        {"{\"a\": \"1\", \"b\": [], \"d\": null}",
         "Execution error in add: Arg a is invalid: '1' is not of type "
         "'integer'"},
        {"{\"a\": 1, \"b\": [\"x\", 2], \"d\": 1}",
         "Execution error in add: Arg b is invalid: 2 is not of type "
         "'string'"},
        {"{\"a\": 1, \"b\": [], \"d\": \"no\"}",
         "Execution error in add: Arg d is invalid: 'no' is not valid under "
         "any of the given schemas"},
        {"{\"a\": 1, \"b\": [], \"d\": 1, \"e\": 2}",
         "Execution error in add: Arg e is not in the tool's args."},
        {"{\"a\": 1, \"d\": 1}",
         "Execution error in add: add() missing 1 required positional "
         "argument: 'b'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cJSON *a = json(cases[i].args);
        char *obs = NULL;
        dx_tool_status st = DX_TOOL_OK;
        cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
        cr_assert_eq(st, DX_TOOL_BAD_ARGS, "case %zu", i);
        cr_assert_str_eq(obs, cases[i].obs);
        dx_free(obs);
        cJSON_Delete(a);
    }
    /* Valid: the default is bound, 3.0 counts as an integer (jsonschema). */
    cJSON *a = json("{\"a\": 3.0, \"b\": [\"q\"], \"d\": null}");
    char *obs = NULL;
    dx_tool_status st = DX_TOOL_FAILED;
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_assert_eq(st, DX_TOOL_OK);
    cr_assert_str_eq(obs, "3 x");
    dx_free(obs);
    cJSON_Delete(a);
    dx_tool_unref(t);
}

/* Every type a DSPy string signature names gets pydantic's schema, and a
 * call is checked against it with jsonschema's messages. */
Test(tool, typed_arguments_get_pydantic_schemas_and_checks)
{
    static const dx_tool_param p[] = {
        {.name = "x", .type = "float", .required = true},
        {.name = "flag", .type = "bool"},
        {.name = "counts", .type = "dict[str, int]"},
        {.name = "blob", .type = "dict[str, Any]"},
        {.name = "color", .type = "Literal['red', 'green']"},
        {.name = "only", .type = "Literal['it']"},
        {.name = "level", .type = "Literal[1, 2]"},
        {.name = "mixed", .type = "Literal['a', 1]"},
        {.name = "free"},
        {.name = "anything", .type = "Any"},
    };
    dx_tool *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_tool_new("typed", "Types.", p, 10, add_fn, NULL, &t, &d),
                 DX_OK, "%s", d.msg);
    cr_assert_str_eq(dx_tool_name(t), "typed");
    cr_assert_str_eq(dx_tool_desc(t), "Types.");
    cr_assert_eq(cJSON_GetArraySize(dx_tool_args(t)), 10);
    char *s = NULL;
    cr_assert_eq(dx_tool_parameters_json(t, &s), DX_OK);
    cr_assert_str_eq(
        s, "{\"type\":\"object\",\"properties\":{"
           "\"x\":{\"type\":\"number\"},"
           "\"flag\":{\"type\":\"boolean\"},"
           "\"counts\":{\"additionalProperties\":{\"type\":\"integer\"},"
           "\"type\":\"object\"},"
           "\"blob\":{\"additionalProperties\":true,\"type\":\"object\"},"
           "\"color\":{\"enum\":[\"red\",\"green\"],\"type\":\"string\"},"
           "\"only\":{\"const\":\"it\",\"type\":\"string\"},"
           "\"level\":{\"enum\":[1,2],\"type\":\"integer\"},"
           "\"mixed\":{\"enum\":[\"a\",1]},"
           "\"free\":{},\"anything\":{}},\"required\":[\"x\"]}");
    dx_free(s);

    struct {
        const char *args, *msg;
    } bad[] = {
        {"{\"x\": \"1\"}", "Arg x is invalid: '1' is not of type 'number'"},
        {"{\"x\": 1, \"flag\": 1}",
         "Arg flag is invalid: 1 is not of type 'boolean'"},
        {"{\"x\": 1, \"counts\": []}",
         "Arg counts is invalid: [] is not of type 'object'"},
        {"{\"x\": 1, \"counts\": {\"a\": 1, \"b\": \"two\"}}",
         "Arg counts is invalid: 'two' is not of type 'integer'"},
        {"{\"x\": 1, \"color\": \"blue\"}",
         "Arg color is invalid: 'blue' is not one of ['red', 'green']"},
        {"{\"x\": 1, \"only\": \"that\"}",
         "Arg only is invalid: 'it' was expected"},
        {"{\"x\": 1, \"level\": 3}",
         "Arg level is invalid: 3 is not one of [1, 2]"},
        {"{\"flag\": true}",
         "typed() missing 1 required positional argument: 'x'"},
        {"[1]", "the arguments must be a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cJSON *a = json(bad[i].args);
        d = (dx_diag){0};
        cr_expect_eq(dx_tool_validate(t, a, &d), DX_EINVAL, "%s", bad[i].args);
        cr_expect_str_eq(d.msg, bad[i].msg);
        cJSON_Delete(a);
    }
    cJSON *a = json("{\"x\": 1.5, \"flag\": false, \"counts\": {\"a\": 2}, "
                    "\"blob\": {\"k\": [null]}, \"color\": \"green\", "
                    "\"only\": \"it\", \"level\": 2, \"mixed\": 1, "
                    "\"free\": [1, \"two\"], \"anything\": null}");
    cr_assert_eq(dx_tool_validate(t, a, &d), DX_OK, "%s", d.msg);
    cJSON_Delete(a);
    /* No arguments at all: only the required one is missing. */
    cr_assert_eq(dx_tool_validate(t, NULL, &d), DX_EINVAL);
    cr_assert_str_eq(d.msg,
                     "typed() missing 1 required positional argument: 'x'");
    dx_tool_unref(t);
}

/* Strings in the description are Python reprs: the quote Python picks and
 * its escapes. */
Test(tool, the_description_quotes_and_escapes_defaults_like_python)
{
    static const dx_tool_param p[] = {
        {.name = "q1", .type = "str", .default_json = "\"it's\""},
        {.name = "q2", .type = "str", .default_json = "\"say \\\"hi\\\"\""},
        {.name = "ctl",
         .type = "str",
         .default_json = "\"a\\nb\\tc\\rd\\u0001\""},
        {.name = "both", .type = "str", .default_json = "\"'\\\"\\\\\""},
    };
    dx_tool *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_tool_new("q", NULL, p, 4, add_fn, NULL, &t, &d), DX_OK,
                 "%s", d.msg);
    char *s = NULL;
    cr_assert_eq(dx_tool_describe(t, &s), DX_OK);
    cr_assert_str_eq(s, "q. It takes arguments {'q1': {'type': 'string', "
                        "'default': \"it's\"}, 'q2': {'type': 'string', "
                        "'default': 'say \"hi\"'}, 'ctl': {'type': 'string', "
                        "'default': 'a\\nb\\tc\\rd\\x01'}, 'both': {'type': "
                        "'string', 'default': '\\'\"\\\\'}}.");
    dx_free(s);
    dx_tool_unref(t);
}

static _Atomic int ud_freed;
static void count_free(void *ud)
{
    (void)ud;
    atomic_fetch_add(&ud_freed, 1);
}

Test(tool, a_refused_declaration_frees_the_owned_data_and_says_why)
{
    dx_tool *t = NULL;
    dx_diag d = {0};
    atomic_store(&ud_freed, 0);
    cr_assert_eq(dx_tool_new_owned("bad name", NULL, NULL, 0, add_fn, &t,
                                   count_free, &t, &d),
                 DX_EINVAL);
    cr_assert(strstr(d.msg, "tool name \"bad name\""), "%s", d.msg);
    cr_assert_eq(
        dx_tool_new_owned("ok", NULL, NULL, 0, NULL, &t, count_free, &t, &d),
        DX_EINVAL);
    cr_assert(strstr(d.msg, "NULL out, fn or params"), "%s", d.msg);
    dx_tool_param noname[] = {{.type = "int"}};
    cr_assert_eq(dx_tool_new_owned("ok", NULL, noname, 1, add_fn, &t,
                                   count_free, &t, &d),
                 DX_EINVAL);
    cr_assert_str_eq(d.msg, "tool ok: an argument has no name");
    cr_assert_null(t);
    cr_assert_eq(atomic_load(&ud_freed), 3, "ud_free runs on every refusal");

    dx_tool_param baddef[] = {
        {.name = "a", .type = "int", .default_json = "{oops"}};
    cr_assert_eq(dx_tool_new("t", NULL, baddef, 1, add_fn, NULL, &t, &d),
                 DX_ESYNTAX);
    cr_assert_str_eq(d.msg, "tool t: argument \"a\": the default is not JSON: "
                            "{oops");
    char long_name[80];
    memset(long_name, 'n', 65);
    long_name[65] = 0;
    cr_assert_eq(dx_tool_new(long_name, NULL, NULL, 0, add_fn, NULL, &t, &d),
                 DX_EINVAL);
    cr_assert_eq(dx_tool_new(NULL, NULL, NULL, 0, add_fn, NULL, &t, &d),
                 DX_EINVAL);
    cr_assert(strstr(d.msg, "(null)"), "%s", d.msg);

    /* Limits must be positive; NULL tools are refused, not followed. */
    t = dx_tool_calculator_new();
    cr_assert_eq(dx_tool_set_timeout(t, 0), DX_EINVAL);
    cr_assert_eq(dx_tool_set_max_result(t, 0), DX_EINVAL);
    cr_assert_eq(dx_tool_set_timeout(NULL, 10), DX_EINVAL);
    char *s = NULL;
    cr_assert_eq(dx_tool_describe(NULL, &s), DX_EINVAL);
    cr_assert_eq(dx_tool_parameters_json(t, NULL), DX_EINVAL);
    cr_assert_eq(dx_tool_add_to_request(t, NULL), DX_EINVAL);
    cr_assert_eq(dx_tool_validate(NULL, NULL, &d), DX_EINVAL);
    cr_assert_eq(dx_tool_call(NULL, NULL, &s, NULL), DX_EINVAL);
    cr_assert_null(dx_tool_name(NULL));
    cr_assert_null(dx_tool_desc(NULL));
    cr_assert_null(dx_tool_args(NULL));
    dx_tool_unref(t);
}

/* Tools that misbehave, chosen by the "how" argument. */
static volatile unsigned long loop_turns;

static int bad_fn(const cJSON *args, char **result, void *ud)
{
    (void)ud;
    const char *how =
        cJSON_GetObjectItemCaseSensitive(args, "how")->valuestring;
    if (!strcmp(how, "crash"))
        crash_now();
    if (!strcmp(how, "hang"))
        dx_sleep(60000);
    if (!strcmp(how, "loop"))
        for (;;)
            loop_turns++; /* never calls the runtime again */
    if (!strcmp(how, "error")) {
        *result = dx_strdup("the index is gone");
        return DX_EIO;
    }
    if (!strcmp(how, "error_silent"))
        return DX_EIO;
    if (!strcmp(how, "nothing"))
        return DX_OK;
    if (!strcmp(how, "garbage")) {
        *result = dx_strdup("ok\xff\xfe\xc3(end");
        return DX_OK;
    }
    if (!strcmp(how, "utf8")) {
        /* Valid 3- and 4-byte sequences; an overlong form, a surrogate
         * and out-of-range 4-byte forms. */
        *result = dx_strdup("\xE2\x82\xAC \xF0\x9F\x98\x80 \xE0\x80\x80 "
                            "\xED\xA0\x80 \xF0\x80\x80\x80 \xF4\x90\x80\x80");
        return DX_OK;
    }
    if (!strcmp(how, "long")) {
        char *s = dx_malloc(5001);
        memset(s, 'z', 5000);
        s[5000] = 0;
        *result = s;
        return DX_OK;
    }
    *result = dx_strdup("fine");
    return DX_OK;
}

static dx_tool *bad_tool(void)
{
    static const dx_tool_param p[] = {
        {.name = "how", .type = "str", .required = true}};
    dx_tool *t = NULL;
    cr_assert_eq(dx_tool_new("flaky", NULL, p, 1, bad_fn, NULL, &t, NULL),
                 DX_OK);
    cr_assert_eq(dx_tool_set_timeout(t, 300), DX_OK);
    cr_assert_eq(dx_tool_set_max_result(t, 100), DX_OK);
    return t;
}

static char *call_how(dx_tool *t, const char *how, dx_tool_status *st)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "how", how);
    char *obs = NULL;
    cr_assert_eq(dx_tool_call(t, a, &obs, st), DX_OK, "%s", how);
    cJSON_Delete(a);
    return obs;
}

/* A tool whose code blocks its thread for "ms" milliseconds (nanosleep, as
 * a synchronous client library would), then answers "slept". */
static int napping_fn(const cJSON *args, char **result_text, void *ud)
{
    (void)ud;
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(args, "ms");
    long n = cJSON_IsNumber(ms) ? (long)ms->valuedouble : 0;
    struct timespec ts = {n / 1000, (n % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
    *result_text = dx_strdup("slept");
    return *result_text ? 0 : DX_ENOMEM;
}

/* Marked blocking, such a tool answers as any other, and its timeout
 * stops a call that blocks too long (the code finishes on its own
 * thread). */
Test(tool, a_blocking_tools_timeout_stops_a_call_that_blocks)
{
    dx_tool_param p[] = {{.name = "ms", .type = "int", .required = true}};
    dx_tool *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_tool_new("nap", NULL, p, 1, napping_fn, NULL, &t, &d),
                 DX_OK, "%s", d.msg);
    cr_assert_eq(dx_tool_set_blocking(t, true), DX_OK);
    cr_assert_eq(dx_tool_set_timeout(t, 200), DX_OK);
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "ms", 20);
    char *obs = NULL;
    dx_tool_status st;
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_expect_eq(st, DX_TOOL_OK);
    cr_expect_str_eq(obs, "slept");
    dx_free(obs);

    cJSON_ReplaceItemInObject(a, "ms", cJSON_CreateNumber(3000));
    int64_t t0 = dx_now_ms();
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_expect_eq(st, DX_TOOL_TIMEOUT, "%s", obs);
    cr_expect_lt(dx_now_ms() - t0, 2500, "the call waited for the code");
    dx_free(obs);
    cJSON_Delete(a);
    cr_expect_eq(dx_tool_set_blocking(NULL, true), DX_EINVAL);
    dx_tool_unref(t);
}

/* Marked blocking, a tool whose code faults ends as crashed with the
 * fault's reason, as it would in its own process, and the next call is
 * served. (No fault isolation under ThreadSanitizer.) */
Test(tool, a_blocking_tool_that_faults_comes_back_crashed)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("fault isolation is off under ThreadSanitizer");
    dx_tool *t = bad_tool();
    cr_assert_eq(dx_tool_set_blocking(t, true), DX_OK);
    dx_tool_status st;
    char *obs = call_how(t, "crash", &st);
    cr_assert_eq(st, DX_TOOL_CRASHED, "%s", obs);
    cr_assert_str_eq(obs, "Execution error in flaky: the tool's process "
                          "died: {segv,64}");
    dx_free(obs);
    obs = call_how(t, "fine", &st);
    cr_assert_eq(st, DX_TOOL_OK, "%s", obs);
    cr_assert_str_eq(obs, "fine");
    dx_free(obs);
    dx_tool_unref(t);
}

Test(tool, crash_hang_error_and_garbage_become_observations)
{
    dx_tool *t = bad_tool();
    dx_tool_status st;
    char *obs = call_how(t, "crash", &st);
    cr_assert_eq(st, DX_TOOL_CRASHED);
    const char *died = "Execution error in flaky: the tool's process died: ";
    cr_assert(!strncmp(obs, died, strlen(died)) && strlen(obs) > strlen(died),
              "%s", obs);
    dx_free(obs);

    obs = call_how(t, "hang", &st);
    cr_assert_eq(st, DX_TOOL_TIMEOUT);
    cr_assert_str_eq(obs, "Execution error in flaky: no result within 300 ms "
                          "(the tool's process was killed)");
    dx_free(obs);

    obs = call_how(t, "error", &st);
    cr_assert_eq(st, DX_TOOL_FAILED);
    cr_assert_str_eq(obs, "Execution error in flaky: the index is gone");
    dx_free(obs);

    obs = call_how(t, "error_silent", &st);
    cr_assert_eq(st, DX_TOOL_FAILED);
    cr_assert(strstr(obs, "(EIO)"), "%s", obs);
    dx_free(obs);

    obs = call_how(t, "nothing", &st);
    cr_assert_eq(st, DX_TOOL_NO_RESULT);
    cr_assert_str_eq(obs, "Execution error in flaky: the tool returned no "
                          "result");
    dx_free(obs);

    obs = call_how(t, "garbage", &st);
    cr_assert_eq(st, DX_TOOL_OK);
    cr_assert_str_eq(obs, "ok\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD(end");
    dx_free(obs);

    obs = call_how(t, "utf8", &st);
    cr_assert_eq(st, DX_TOOL_OK);
#define R3 "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
    cr_assert_str_eq(obs, "\xE2\x82\xAC \xF0\x9F\x98\x80 " R3 " " R3 " " R3
                          "\xEF\xBF\xBD " R3 "\xEF\xBF\xBD");
#undef R3
    dx_free(obs);

    obs = call_how(t, "long", &st);
    cr_assert_eq(st, DX_TOOL_OK);
    cr_assert(!strncmp(obs, "zzzz", 4));
    cr_assert(strstr(obs, "\n... (cut at 100 of 5000 bytes)"), "%s", obs);
    cr_assert_lt(strlen(obs), 200);
    dx_free(obs);

    /* After all that the tool still works. */
    obs = call_how(t, "fine", &st);
    cr_assert_eq(st, DX_TOOL_OK);
    cr_assert_str_eq(obs, "fine");
    dx_free(obs);
    dx_tool_unref(t);
}

/* From inside a process (as an agent calls it), a crash and a timeout
 * cost the caller nothing either. */
static _Atomic int in_proc_ok;
static void call_from_process(void *arg)
{
    dx_tool *t = arg;
    dx_tool_status st1, st2;
    char *o1 = NULL, *o2 = NULL;
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "how", "crash");
    int r1 = dx_tool_call(t, a, &o1, &st1);
    cJSON_ReplaceItemInObject(a, "how", cJSON_CreateString("hang"));
    int r2 = dx_tool_call(t, a, &o2, &st2);
    cJSON_Delete(a);
    atomic_store(&in_proc_ok, r1 == DX_OK && r2 == DX_OK &&
                                      st1 == DX_TOOL_CRASHED &&
                                      st2 == DX_TOOL_TIMEOUT && o1 && o2
                                  ? 1
                                  : 2);
    dx_free(o1);
    dx_free(o2);
}

Test(tool, failures_inside_a_process_do_not_reach_the_caller)
{
    dx_tool *t = bad_tool();
    atomic_store(&in_proc_ok, 0);
    dx_pid pid;
    cr_assert_eq(dx_spawn(call_from_process, t, &pid), DX_OK);
    for (int i = 0; i < 1000 && atomic_load(&in_proc_ok) == 0; i++)
        host_sleep_ms(10);
    cr_assert_eq(atomic_load(&in_proc_ok), 1);
    dx_tool_unref(t);
}

static void delete_json(void *j)
{
    cJSON_Delete(j);
}

static void call_hang_forever(void *arg)
{
    dx_tool *t = arg;
    cJSON *a = cJSON_CreateObject();
    dx_ptie *tie = dx_ptie_new(a, delete_json);
    cJSON_AddStringToObject(a, "how", "hang");
    char *obs = NULL;
    dx_tool_call(t, a, &obs, NULL);
    dx_ptie_cut(tie);
    cJSON_Delete(a);
    dx_free(obs);
}

/* A caller killed during a tool call (an example past its deadline, an
 * agent stopped by its supervisor) takes the tool's process with it, and
 * what the call held is freed (LeakSanitizer watches the sanitizer
 * builds), rather than the tool running on to its own timeout. */
Test(tool, a_killed_caller_takes_its_tool_call_with_it)
{
    dx_tool *t = bad_tool();
    cr_assert_eq(dx_tool_set_timeout(t, 600000), DX_OK);
    dx_pid caller;
    cr_assert_eq(dx_spawn(call_hang_forever, t, &caller), DX_OK);
    for (int i = 0; i < 5000 && processes_labeled("dspex.tool") == 0; i++)
        host_sleep_ms(1);
    cr_assert_eq(processes_labeled("dspex.tool"), 1, "the tool did not start");
    cr_assert_eq(dx_kill(caller), DX_OK);
    size_t left = 1;
    for (int i = 0; i < 10000 && (left = processes_labeled("dspex.tool")) > 0;
         i++)
        host_sleep_ms(1);
    cr_assert_eq(left, 0, "the tool's process outlived its caller");
    dx_tool_unref(t);
}

Test(tool, calculator_evaluates_arithmetic_like_python)
{
    dx_tool *t = dx_tool_calculator_new();
    cr_assert_not_null(t);
    struct {
        const char *expr, *obs;
    } cases[] = {
        {"1 + 2 * 3", "7"},
        {"(1 + 2) * 3", "9"},
        {"7 / 2", "3.5"},
        {"8 / 2", "4.0"},
        {"7 // 2", "3"},
        {"-7 // 2", "-4"},
        {"-7 % 3", "2"},
        {"2 ** 10", "1024"},
        {"-2 ** 2", "-4"},
        {"2 ** -1", "0.5"},
        {"2 ** 3 ** 2", "512"},
        {"1.5e3 + 0.25", "1500.25"},
        {"0.1 + 0.2", "0.30000000000000004"},
        {"1 / 0", "Execution error in calculator: division by zero"},
        {"2 ** 100", "Execution error in calculator: integer overflow"},
        {"__import__('os')",
         "Execution error in calculator: expected a number at column 1"},
        {"1 +", "Execution error in calculator: expected a number at column 4"},
        {"(1", "Execution error in calculator: expected ')' at column 3"},
        {"1 2", "Execution error in calculator: unexpected '2' at column 3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "expression", cases[i].expr);
        char *obs = NULL;
        cr_assert_eq(dx_tool_call(t, a, &obs, NULL), DX_OK);
        cr_assert_str_eq(obs, cases[i].obs, "%s", cases[i].expr);
        dx_free(obs);
        cJSON_Delete(a);
    }
    dx_tool_unref(t);
}

/* The calculator's edges: Python's results where Python has them, and a
 * named error (never a wrong number) where a 64-bit integer or a double
 * cannot hold the result, or the text is not an expression it reads. */
Test(tool, calculator_edges_are_results_or_named_errors)
{
    dx_tool *t = dx_tool_calculator_new();
    cr_assert_not_null(t);
    char deep_parens[700], deep_minus[400], long_number[80];
    memset(deep_parens, '(', 300);
    deep_parens[300] = '1';
    memset(deep_parens + 301, ')', 300);
    deep_parens[601] = 0;
    memset(deep_minus, '-', 300);
    deep_minus[300] = '1';
    deep_minus[301] = 0;
    memset(long_number, '7', 70);
    long_number[70] = 0;
    struct {
        const char *expr, *obs;
    } cases[] = {
        {"2.5 * 2", "5.0"},
        {"7.5 // 2", "3.0"},
        {"-7.5 % 2", "0.5"},
        {"7.5 % -2", "-0.5"},
        {"-(2.5)", "-2.5"},
        {"+3", "3"},
        {"1_000 + 1", "1001"},
        {"(-1) ** 3", "-1"},
        {"(-1) ** 4", "1"},
        {"0 ** 5", "0"},
        {"4 ** 0.5", "2.0"},
        {"2.0 ** 3", "8.0"},
        {"\t1 +\n2", "3"},
        {"1 % 0", "Execution error in calculator: integer modulo by zero"},
        {"1 // 0",
         "Execution error in calculator: integer division or modulo by zero"},
        {"0 ** -1", "Execution error in calculator: 0.0 cannot be raised to "
                    "a negative power"},
        {"(-8) ** 0.5", "Execution error in calculator: math domain error (a "
                        "negative number to a fractional power)"},
        {"1e400", "Execution error in calculator: numerical result out of "
                  "range"},
        {"1e308 * 10", "Execution error in calculator: numerical result out "
                       "of range"},
        {"1e308 + 1e308", "Execution error in calculator: numerical result "
                          "out of range"},
        {"10.0 ** 400", "Execution error in calculator: numerical result "
                        "out of range"},
        {"99999999999999999999",
         "Execution error in calculator: integer too large at column 1"},
        {long_number,
         "Execution error in calculator: number too long at column 1"},
        {"9223372036854775807 + 1",
         "Execution error in calculator: integer overflow"},
        {"-9223372036854775807 - 2",
         "Execution error in calculator: integer overflow"},
        {"3037000500 * 3037000500",
         "Execution error in calculator: integer overflow"},
        {"(-9223372036854775807 - 1) // -1",
         "Execution error in calculator: integer overflow"},
        {"-(-9223372036854775807 - 1)",
         "Execution error in calculator: integer overflow"},
        {deep_parens,
         "Execution error in calculator: expression nested too deeply"},
        {deep_minus,
         "Execution error in calculator: expression nested too deeply"},
        {"2 *", "Execution error in calculator: expected a number at column 4"},
        {"1 + (", "Execution error in calculator: expected a number at "
                  "column 6"},
        {".", "Execution error in calculator: expected a number at column 1"},
        {"", "Execution error in calculator: expected a number at column 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "expression", cases[i].expr);
        char *obs = NULL;
        dx_tool_status st = DX_TOOL_OK;
        cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
        cr_expect_str_eq(obs, cases[i].obs, "%.40s", cases[i].expr);
        cr_expect_eq(st,
                     strncmp(cases[i].obs, "Execution error", 15) == 0
                         ? DX_TOOL_FAILED
                         : DX_TOOL_OK,
                     "%.40s", cases[i].expr);
        dx_free(obs);
        cJSON_Delete(a);
    }
    dx_tool_unref(t);
}

Test(tool, a_module_is_a_tool_its_outputs_the_observation)
{
    dx_signature *s = NULL;
    cr_assert_eq(dx_signature_parse("question, n: int -> answer", NULL, NULL, 0,
                                    &s, NULL),
                 DX_OK);
    dx_module *p = dx_predict_new(s, NULL);
    dx_signature_unref(s);
    dx_tool *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_tool_from_module("ask", "Asks the oracle.", p, NULL, 0,
                                     NULL, &t, &d),
                 DX_OK, "%s", d.msg);
    char *desc = NULL;
    cr_assert_eq(dx_tool_describe(t, &desc), DX_OK);
    cr_assert_str_eq(desc, "ask, whose description is <desc>Asks the "
                           "oracle.</desc>. It takes arguments {'question': "
                           "{'type': 'string'}, 'n': {'type': 'integer'}}.");
    dx_free(desc);
    dx_lmserver_push_reply(srv, "[[ ## answer ## ]]\nForty-two\n\n"
                                "[[ ## completed ## ]]");
    cJSON *a = json("{\"question\": \"meaning?\", \"n\": 1}");
    char *obs = NULL;
    dx_tool_status st;
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_assert_eq(st, DX_TOOL_OK, "%s", obs);
    cr_assert_str_eq(obs, "{\"answer\": \"Forty-two\"}");
    dx_free(obs);
    cJSON_Delete(a);
    dx_tool_unref(t);
    dx_module_free(p);
}

/* An actor as a tool: a server registered as "forecaster" answers
 * {tool_call, Name, ArgsJSON} with a binary, or {error, Binary}. */
static dx_srv_ret forecaster_call(void *state, dx_msg *request, dx_from from,
                                  dx_msg **reply, dx_term **stop_reason)
{
    (void)state, (void)from, (void)stop_reason;
    const dx_term *t = request->term;
    size_t len = 0, tlen = 0;
    const char *json_args =
        t && dx_term_size(t) == 3 && dx_is_atom(dx_term_at(t, 0), "tool_call")
            ? dx_binary_data(dx_term_at(t, 2), &len)
            : NULL;
    const char *tool = json_args ? dx_binary_data(dx_term_at(t, 1), &tlen) : "";
    char args[256] = "";
    if (json_args && len < sizeof args)
        memcpy(args, json_args, len);
    cJSON *a = cJSON_Parse(args);
    const cJSON *city = cJSON_GetObjectItemCaseSensitive(a, "city");
    *reply = dx_msg_new(DX_TAG_TERM);
    if (cJSON_IsString(city) && !strcmp(city->valuestring, "Raw")) {
        (*reply)->term = dx_str("a bare binary");
    } else if (cJSON_IsString(city) && !strcmp(city->valuestring, "Odd")) {
        (*reply)->term = dx_tuple(2, dx_atom("maybe"), dx_int(3));
    } else if (cJSON_IsString(city) &&
               strcmp(city->valuestring, "Atlantis") != 0) {
        char text[128];
        snprintf(text, sizeof text, "%.*s: sunny in %s", (int)tlen, tool,
                 city->valuestring);
        (*reply)->term = dx_tuple(2, dx_atom("ok"), dx_str(text));
    } else {
        (*reply)->term = dx_tuple(2, dx_atom("error"), dx_str("unknown city"));
    }
    cJSON_Delete(a);
    return DX_SRV_REPLY;
}

static int forecaster_init(void *arg, void **state, dx_term **stop_reason)
{
    (void)arg, (void)stop_reason;
    *state = NULL;
    return DX_OK;
}

static const dx_server_ops forecaster_ops = {
    .name = "forecaster",
    .init = forecaster_init,
    .handle_call = forecaster_call,
};

static _Atomic int forecaster_started;
static void start_forecaster(void *arg)
{
    (void)arg;
    dx_server_opts o = {.name = "forecaster"};
    atomic_store(&forecaster_started,
                 dx_server_start(&forecaster_ops, NULL, &o, NULL, NULL) == DX_OK
                     ? 1
                     : 2);
}

static dx_pid fixture_stop_pid;
static void stop_forecaster(void *arg)
{
    (void)arg;
    atomic_store(&fixture_rc, dx_server_stop(fixture_stop_pid, NULL, 5000));
}

Test(tool, an_actor_is_a_tool_and_its_absence_an_observation)
{
    static const dx_tool_param p[] = {
        {.name = "city", .type = "str", .required = true}};
    dx_tool *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_tool_from_actor("forecast", "Tells the weather.", p, 1,
                                    "forecaster", &t, &d),
                 DX_OK, "%s", d.msg);
    cr_assert_eq(
        dx_tool_from_actor("forecast", NULL, p, 1, "", &(dx_tool *){0}, &d),
        DX_EINVAL);

    /* No process under the name yet: the call is an observation. */
    cJSON *a = json("{\"city\": \"Lima\"}");
    char *obs = NULL;
    dx_tool_status st;
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_assert_eq(st, DX_TOOL_FAILED, "%s", obs);
    cr_assert_str_eq(obs, "Execution error in forecast: actor \"forecaster\": "
                          "no process is registered under this name");
    dx_free(obs);

    atomic_store(&forecaster_started, 0);
    cr_assert_eq(dx_spawn(start_forecaster, NULL, NULL), DX_OK);
    for (int i = 0; i < 500 && atomic_load(&forecaster_started) == 0; i++)
        host_sleep_ms(10);
    cr_assert_eq(atomic_load(&forecaster_started), 1);

    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_assert_eq(st, DX_TOOL_OK, "%s", obs);
    cr_assert_str_eq(obs, "forecast: sunny in Lima");
    dx_free(obs);
    /* The same actor by pid. */
    dx_tool *tp = NULL;
    cr_assert_eq(dx_tool_from_pid("forecast", NULL, p, 1,
                                  dx_whereis("forecaster"), &tp, &d),
                 DX_OK, "%s", d.msg);
    cr_assert_eq(dx_tool_call(tp, a, &obs, &st), DX_OK);
    cr_assert_str_eq(obs, "forecast: sunny in Lima");
    dx_free(obs);
    dx_tool_unref(tp);
    cr_assert_eq(
        dx_tool_from_pid("forecast", NULL, p, 1, DX_NOPID, &(dx_tool *){0}, &d),
        DX_EINVAL);

    cJSON_Delete(a);

    a = json("{\"city\": \"Atlantis\"}");
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_assert_eq(st, DX_TOOL_FAILED, "%s", obs);
    cr_assert_str_eq(obs, "Execution error in forecast: unknown city");
    dx_free(obs);
    cJSON_Delete(a);

    /* A bare binary is a result too; any other reply is named. */
    a = json("{\"city\": \"Raw\"}");
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_assert_eq(st, DX_TOOL_OK, "%s", obs);
    cr_assert_str_eq(obs, "a bare binary");
    dx_free(obs);
    cJSON_Delete(a);
    a = json("{\"city\": \"Odd\"}");
    cr_assert_eq(dx_tool_call(t, a, &obs, &st), DX_OK);
    cr_assert_eq(st, DX_TOOL_FAILED, "%s", obs);
    cr_assert_str_eq(obs, "Execution error in forecast: the actor's reply is "
                          "not a binary, {ok, Binary} or {error, Binary}");
    dx_free(obs);
    cJSON_Delete(a);

    /* A tool bound to a pid that has ended says so. */
    dx_pid gone = dx_whereis("forecaster");
    cr_assert_eq(dx_tool_from_pid("forecast", NULL, p, 1, gone, &tp, &d), DX_OK,
                 "%s", d.msg);
    fixture_stop_pid = gone;
    fixture_run(stop_forecaster);
    a = json("{\"city\": \"Lima\"}");
    cr_assert_eq(dx_tool_call(tp, a, &obs, &st), DX_OK);
    cr_assert_eq(st, DX_TOOL_FAILED, "%s", obs);
    cr_assert_str_eq(obs, "Execution error in forecast: the actor: it is not "
                          "running");
    dx_free(obs);
    cJSON_Delete(a);
    dx_tool_unref(tp);
    dx_tool_unref(t);
}

/* On a runtime of one scheduler (no LM fixture), the process that waits
 * for the tool shares its scheduler with the tool's, so a tool in an
 * endless loop keeps it from running to enforce the timeout: the runtime's
 * own deadline for the tool's process stops it, and the call comes back
 * timed out. */
TestSuite(tool_held, .timeout = 60);

Test(tool_held, a_tool_in_an_endless_loop_on_the_callers_scheduler_times_out)
{
    if (DX_SANITIZE_THREAD)
        cr_skip_test("fault isolation is off under ThreadSanitizer");
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 1}), DX_OK);
    dx_tool *t = bad_tool();
    dx_tool_status st;
    char *obs = call_how(t, "loop", &st);
    cr_expect_eq(st, DX_TOOL_TIMEOUT, "%s", obs);
    dx_free(obs);
    obs = call_how(t, "fine", &st);
    cr_expect_eq(st, DX_TOOL_OK, "%s", obs);
    dx_free(obs);
    dx_tool_unref(t);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
}
