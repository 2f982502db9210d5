/*
 * test_adapter.c — ChatAdapter and JSONAdapter: the exact messages of
 * Python DSPy 3.3 for the golden cases in fixtures/programs/
 * adapter_golden.json (DSPy's own exact-message tests plus a hand-derived
 * case with descriptions, two demos and typed fields), the system message
 * rendered once per signature, the structured-output schema, and parsing
 * of well-formed, sloppy and broken answers with typed conversion errors.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/adapter.h"
#include "dspex/alloc.h"
#include "dspex/error.h"

/* ---- golden cases ------------------------------------------------------ */

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static cJSON *golden(void)
{
    const char *dir = getenv("DX_FIXTURES");
    cr_assert(dir, "DX_FIXTURES is not set");
    char path[1024];
    snprintf(path, sizeof path, "%s/programs/adapter_golden.json", dir);
    char *text = read_file(path);
    cJSON *doc = cJSON_Parse(text);
    free(text);
    cr_assert(doc, "golden file is not JSON");
    return doc;
}

/* Build the case's signature from its field list. */
static dx_signature *case_signature(const cJSON *c)
{
    const cJSON *customs = cJSON_GetObjectItem(c, "customs");
    dx_custom_type ct[8];
    char *schemas[8];
    size_t nct = 0;
    const cJSON *cu;
    cJSON_ArrayForEach(cu, customs)
    {
        schemas[nct] = cJSON_PrintUnformatted(cu);
        ct[nct] = (dx_custom_type){cu->string, schemas[nct]};
        nct++;
    }
    const cJSON *fields = cJSON_GetObjectItem(c, "fields");
    size_t n = (size_t)cJSON_GetArraySize(fields);
    dx_field_spec *specs = calloc(n, sizeof *specs);
    dx_type **types = calloc(n, sizeof *types);
    size_t i = 0;
    const cJSON *f;
    cJSON_ArrayForEach(f, fields)
    {
        const cJSON *type = cJSON_GetObjectItem(f, "type");
        if (type) {
            dx_diag d = {0};
            cr_assert_eq(
                dx_type_parse(type->valuestring, ct, nct, &types[i], &d), DX_OK,
                "type %s: %s", type->valuestring, d.msg);
        }
        const cJSON *desc = cJSON_GetObjectItem(f, "desc");
        specs[i] = (dx_field_spec){
            .name = cJSON_GetObjectItem(f, "name")->valuestring,
            .role = strcmp(cJSON_GetObjectItem(f, "role")->valuestring,
                           "input") == 0
                        ? DX_FIELD_INPUT
                        : DX_FIELD_OUTPUT,
            .type = types[i],
            .desc = desc ? desc->valuestring : NULL,
        };
        i++;
    }
    const cJSON *ins = cJSON_GetObjectItem(c, "instructions");
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(
        dx_signature_build(
            specs, n, cJSON_IsString(ins) ? ins->valuestring : NULL, &s, &d),
        DX_OK, "%s", d.msg);
    for (size_t k = 0; k < n; k++)
        dx_type_free(types[k]);
    free(types);
    free(specs);
    for (size_t k = 0; k < nct; k++)
        cJSON_free(schemas[k]);
    return s;
}

static dx_example *example_of(const cJSON *obj)
{
    char *text = cJSON_PrintUnformatted(obj);
    dx_example *ex = NULL;
    cr_assert_eq(dx_example_from_json(text, strlen(text), &ex, NULL), DX_OK);
    cJSON_free(text);
    return ex;
}

static const char *role_name(dx_lm_role r)
{
    switch (r) {
    case DX_LM_SYSTEM:
        return "system";
    case DX_LM_USER:
        return "user";
    case DX_LM_ASSISTANT:
        return "assistant";
    default:
        return "tool";
    }
}

/* Index of the first differing byte, for readable failures. */
static size_t first_diff(const char *a, const char *b)
{
    size_t i = 0;
    while (a[i] && a[i] == b[i])
        i++;
    return i;
}

Test(adapter, formats_every_golden_case_byte_for_byte, .timeout = 30)
{
    cJSON *doc = golden();
    const cJSON *c;
    int checked = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases"))
    {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        dx_adapter_kind kind =
            strcmp(cJSON_GetObjectItem(c, "adapter")->valuestring, "json") == 0
                ? DX_ADAPTER_JSON
                : DX_ADAPTER_CHAT;
        dx_signature *s = case_signature(c);

        dx_example *demos[8];
        size_t nd = 0;
        const cJSON *d;
        cJSON_ArrayForEach(d, cJSON_GetObjectItem(c, "demos")) demos[nd++] =
            example_of(d);
        /* demos_json: demos given as JSON text, so numbers keep the
         * int/float distinction Python would see (1.0 stays a float). */
        cJSON_ArrayForEach(d, cJSON_GetObjectItem(c, "demos_json"))
        {
            dx_diag dg = {0};
            cr_assert_eq(dx_example_from_json(d->valuestring,
                                              strlen(d->valuestring),
                                              &demos[nd], &dg),
                         DX_OK, "%s", dg.msg);
            nd++;
        }
        dx_example *in = example_of(cJSON_GetObjectItem(c, "inputs"));

        dx_lm_request *req = dx_lm_request_new(NULL);
        dx_diag dg = {0};
        cr_assert_eq(dx_adapter_format(kind, s,
                                       (const dx_example *const *)demos, nd, in,
                                       req, &dg),
                     DX_OK, "%s: %s", name, dg.msg);

        const cJSON *want = cJSON_GetObjectItem(c, "messages");
        cr_assert_eq(req->n_messages, (size_t)cJSON_GetArraySize(want),
                     "%s: %zu messages, expected %d", name, req->n_messages,
                     cJSON_GetArraySize(want));
        size_t i = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, want)
        {
            const char *role = cJSON_GetObjectItem(m, "role")->valuestring;
            const char *content =
                cJSON_GetObjectItem(m, "content")->valuestring;
            cr_assert_str_eq(role_name(req->messages[i].role), role,
                             "%s: message %zu role", name, i);
            const char *got = req->messages[i].content;
            size_t at = first_diff(got, content);
            cr_assert_str_eq(got, content,
                             "%s: message %zu differs at byte %zu:\n"
                             "got:    [%.60s]\nwanted: [%.60s]",
                             name, i, at, got + at, content + at);
            i++;
        }
        dx_lm_request_free(req);
        for (size_t k = 0; k < nd; k++)
            dx_example_free(demos[k]);
        dx_example_free(in);
        dx_signature_unref(s);
        checked++;
    }
    cr_assert_geq(checked, 10);
    cJSON_Delete(doc);
}

/* ---- rendering details --------------------------------------------------- */

static dx_signature *parse(const char *text)
{
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_signature_parse(text, NULL, NULL, 0, &s, &d), DX_OK,
                 "%s: %s", text, d.msg);
    return s;
}

Test(adapter, renders_the_system_message_once_per_signature)
{
    dx_signature *s = parse("question -> answer");
    const char *a = dx_adapter_system_message(DX_ADAPTER_CHAT, s);
    const char *b = dx_adapter_system_message(DX_ADAPTER_CHAT, s);
    const char *j = dx_adapter_system_message(DX_ADAPTER_JSON, s);
    cr_assert(a && b && j);
    cr_assert_eq(a, b, "the same pointer: rendered once");
    cr_assert_neq(a, j, "each adapter has its own message");
    dx_signature_unref(s);
}

Test(adapter, the_json_adapter_asks_for_a_strict_schema_or_json_mode)
{
    dx_signature *s = parse("question -> answer, score: float");
    dx_lm_request *req = dx_lm_request_new(NULL);
    cr_assert_eq(
        dx_adapter_format(DX_ADAPTER_JSON, s, NULL, 0, NULL, req, NULL), DX_OK);
    cr_assert_eq(req->format, DX_LM_FORMAT_JSON_SCHEMA);
    cJSON *sch = cJSON_Parse(req->schema);
    cr_assert(sch);
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(sch, "additionalProperties")));
    const cJSON *reqd = cJSON_GetObjectItem(sch, "required");
    cr_assert_eq(cJSON_GetArraySize(reqd), 2);
    cr_assert_str_eq(cJSON_GetArrayItem(reqd, 0)->valuestring, "answer");
    const cJSON *score =
        cJSON_GetObjectItem(cJSON_GetObjectItem(sch, "properties"), "score");
    cr_assert_str_eq(cJSON_GetObjectItem(score, "type")->valuestring, "number");
    cJSON_Delete(sch);
    dx_lm_request_free(req);
    dx_signature_unref(s);

    /* An open dict output cannot be described strictly: JSON mode. */
    s = parse("question -> facts: dict");
    req = dx_lm_request_new(NULL);
    cr_assert_eq(
        dx_adapter_format(DX_ADAPTER_JSON, s, NULL, 0, NULL, req, NULL), DX_OK);
    cr_assert_eq(req->format, DX_LM_FORMAT_JSON_OBJECT);
    dx_lm_request_free(req);
    dx_signature_unref(s);
}

Test(adapter, a_missing_output_renders_as_none_in_an_assistant_turn)
{
    dx_signature *s = parse("q -> a, b");
    dx_example *v = dx_example_new();
    dx_example_set_str(v, "a", "x");
    char *out = NULL;
    cr_assert_eq(
        dx_adapter_assistant_content(DX_ADAPTER_CHAT, s, v, NULL, &out), DX_OK);
    cr_assert_str_eq(out, "[[ ## a ## ]]\nx\n\n[[ ## b ## ]]\nNone\n\n"
                          "[[ ## completed ## ]]\n");
    dx_free(out);
    dx_example_free(v);
    dx_signature_unref(s);
}

Test(adapter, formats_scalars_as_python_prints_them)
{
    dx_signature *s = parse("flag: bool, n: int, x: float, nothing -> out");
    dx_example *v = dx_example_new();
    dx_example_set_bool(v, "flag", true);
    dx_example_set_int(v, "n", 42);
    dx_example_set_float(v, "x", 2.0);
    dx_example_set_null(v, "nothing");
    char *out = NULL;
    cr_assert_eq(
        dx_adapter_user_content(DX_ADAPTER_CHAT, s, v, NULL, false, &out),
        DX_OK);
    cr_assert_str_eq(out, "[[ ## flag ## ]]\nTrue\n\n[[ ## n ## ]]\n42\n\n"
                          "[[ ## x ## ]]\n2.0\n\n[[ ## nothing ## ]]\nNone");
    dx_free(out);
    dx_example_free(v);
    dx_signature_unref(s);
}

/* ---- parsing ------------------------------------------------------------- */

static dx_example *parse_ok(dx_adapter_kind kind, dx_signature *s,
                            const char *text)
{
    dx_example *out = NULL;
    dx_diag d = {0};
    int rc = dx_adapter_parse(kind, s, text, strlen(text), &out, &d);
    cr_assert_eq(rc, DX_OK, "parse failed (%s): %s", dx_err_name(rc), d.msg);
    return out;
}

static int parse_err(dx_adapter_kind kind, dx_signature *s, const char *text,
                     dx_diag *d)
{
    dx_example *out = NULL;
    int rc = dx_adapter_parse(kind, s, text, strlen(text), &out, d);
    cr_assert_null(out);
    return rc;
}

Test(adapter, parses_a_well_formed_chat_answer)
{
    dx_signature *s = parse("question -> reasoning, answer");
    dx_example *out = parse_ok(DX_ADAPTER_CHAT, s,
                               "[[ ## reasoning ## ]]\nParis is the capital."
                               "\n\n[[ ## answer ## ]]\nParis\n\n"
                               "[[ ## completed ## ]]\n");
    cr_assert_str_eq(dx_example_get_str(out, "reasoning", ""),
                     "Paris is the capital.");
    cr_assert_str_eq(dx_example_get_str(out, "answer", ""), "Paris");
    cr_assert_str_eq(dx_example_key(out, 0), "reasoning",
                     "outputs in signature order");
    dx_example_free(out);
    dx_signature_unref(s);
}

Test(adapter, parses_sloppy_chat_answers)
{
    dx_signature *s = parse("question -> reasoning, answer");
    /* Fields out of order, no completed marker, preamble text, extra blank
     * lines and indentation, a value on the header line, an unknown
     * section and a repeated field (the first one wins). */
    dx_example *out = parse_ok(DX_ADAPTER_CHAT, s,
                               "Sure! Here you go.\n"
                               "   [[ ## answer ## ]]   Paris  \n\n\n"
                               "[[ ## notes ## ]]\nignored\n"
                               "[[ ## reasoning ## ]]\n\n  step one\n  step two"
                               "\n\n[[ ## answer ## ]]\nLyon\n");
    cr_assert_str_eq(dx_example_get_str(out, "answer", ""), "Paris");
    cr_assert_str_eq(dx_example_get_str(out, "reasoning", ""),
                     "step one\n  step two");
    dx_example_free(out);

    /* CRLF line ends. */
    out = parse_ok(DX_ADAPTER_CHAT, s,
                   "[[ ## reasoning ## ]]\r\nr\r\n[[ ## answer ## ]]\r\na\r\n");
    cr_assert_str_eq(dx_example_get_str(out, "answer", ""), "a");
    cr_assert_str_eq(dx_example_get_str(out, "reasoning", ""), "r");
    dx_example_free(out);
    dx_signature_unref(s);
}

Test(adapter, a_missing_field_is_named_in_the_error)
{
    dx_signature *s = parse("question -> reasoning, answer");
    dx_diag d = {0};
    int rc =
        parse_err(DX_ADAPTER_CHAT, s, "[[ ## reasoning ## ]]\nthinking...", &d);
    cr_assert_eq(rc, DX_EPARSE);
    cr_assert(strstr(d.msg, "ChatAdapter"), "%s", d.msg);
    cr_assert(strstr(d.msg, "answer"), "%s", d.msg);
    cr_assert(strstr(d.msg, "found: reasoning"), "%s", d.msg);

    rc = parse_err(DX_ADAPTER_CHAT, s, "   \n ", &d);
    cr_assert_eq(rc, DX_EPARSE);
    cr_assert(strstr(d.msg, "empty"), "%s", d.msg);

    /* Markers without the spaces DSPy's format has are not markers. */
    rc = parse_err(DX_ADAPTER_CHAT, s,
                   "[[##reasoning##]]\nx\n[[##answer##]]\ny", &d);
    cr_assert_eq(rc, DX_EPARSE);
    dx_signature_unref(s);
}

Test(adapter, converts_typed_outputs)
{
    dx_signature *s =
        parse("q -> n: int, x: float, ok: bool, tags: list[str], "
              "pick: Literal['yes', 'no'], meta: dict[str, int], maybe: "
              "Optional[int]");
    dx_example *out =
        parse_ok(DX_ADAPTER_CHAT, s,
                 "[[ ## n ## ]]\n42\n[[ ## x ## ]]\n0.5\n[[ ## ok ## ]]\nTrue\n"
                 "[[ ## tags ## ]]\n['a', \"b\"]\n[[ ## pick ## ]]\n'yes'\n"
                 "[[ ## meta ## ]]\n```json\n{\"k\": 1}\n```\n[[ ## maybe ## "
                 "]]\nNone\n");
    cr_assert_eq(dx_example_get_num(out, "n", -1), 42);
    cr_assert_eq(dx_example_get_num(out, "x", -1), 0.5);
    cr_assert(cJSON_IsTrue(dx_example_get(out, "ok")));
    const cJSON *tags = dx_example_get(out, "tags");
    cr_assert_eq(cJSON_GetArraySize(tags), 2);
    cr_assert_str_eq(cJSON_GetArrayItem(tags, 1)->valuestring, "b");
    cr_assert_str_eq(dx_example_get_str(out, "pick", ""), "yes");
    cr_assert_eq(
        cJSON_GetObjectItem(dx_example_get(out, "meta"), "k")->valuedouble, 1);
    cr_assert(cJSON_IsNull(dx_example_get(out, "maybe")));
    dx_example_free(out);
    dx_signature_unref(s);
}

Test(adapter, a_value_that_does_not_convert_names_the_field_and_value)
{
    dx_signature *s = parse("q -> count: int");
    dx_diag d = {0};
    int rc =
        parse_err(DX_ADAPTER_CHAT, s, "[[ ## count ## ]]\nforty-two\n", &d);
    cr_assert_eq(rc, DX_ETYPE);
    cr_assert(strstr(d.msg, "\"count\""), "%s", d.msg);
    cr_assert(strstr(d.msg, "forty-two"), "%s", d.msg);
    cr_assert(strstr(d.msg, "int"), "%s", d.msg);

    rc = parse_err(DX_ADAPTER_CHAT, s, "[[ ## count ## ]]\n4.5\n", &d);
    cr_assert_eq(rc, DX_ETYPE, "4.5 is not an int");
    dx_signature_unref(s);

    s = parse("q -> pick: Literal['yes', 'no']");
    rc = parse_err(DX_ADAPTER_CHAT, s, "[[ ## pick ## ]]\nmaybe\n", &d);
    cr_assert_eq(rc, DX_ETYPE);
    cr_assert(strstr(d.msg, "maybe"), "%s", d.msg);
    dx_signature_unref(s);
}

Test(adapter, parses_json_answers_with_repairs)
{
    dx_signature *s = parse("question -> answer, score: float");
    dx_example *out =
        parse_ok(DX_ADAPTER_JSON, s, "{\"answer\": \"Paris\", \"score\": 0.9}");
    cr_assert_str_eq(dx_example_get_str(out, "answer", ""), "Paris");
    dx_example_free(out);
    /* Code fence and trailing prose; a number where a str is wanted becomes
     * its text; a numeric string converts for the float field. */
    out = parse_ok(DX_ADAPTER_JSON, s,
                   "Here it is:\n```json\n{\"answer\": 42, \"score\": \"0.5\"}"
                   "\n```\nHope that helps!");
    cr_assert_str_eq(dx_example_get_str(out, "answer", ""), "42");
    cr_assert_eq(dx_example_get_num(out, "score", -1), 0.5);
    dx_example_free(out);

    dx_diag d = {0};
    cr_assert_eq(parse_err(DX_ADAPTER_JSON, s, "no json here", &d), DX_EPARSE);
    cr_assert(strstr(d.msg, "JSONAdapter"), "%s", d.msg);
    cr_assert_eq(parse_err(DX_ADAPTER_JSON, s, "{\"answer\": \"x\"}", &d),
                 DX_EPARSE);
    cr_assert(strstr(d.msg, "score"), "%s", d.msg);
    dx_signature_unref(s);
}

Test(adapter, missing_optional_outputs_take_none_or_their_default)
{
    dx_field_spec f[] = {
        {.name = "q", .role = DX_FIELD_INPUT},
        {.name = "answer", .role = DX_FIELD_OUTPUT},
        {.name = "note",
         .role = DX_FIELD_OUTPUT,
         .default_json = "\"No note\""},
        {.name = "extra", .role = DX_FIELD_OUTPUT},
    };
    dx_type *opt = NULL;
    cr_assert_eq(dx_type_parse("Optional[str]", NULL, 0, &opt, NULL), DX_OK);
    f[3].type = opt;
    dx_signature *s = NULL;
    cr_assert_eq(dx_signature_build(f, 4, NULL, &s, NULL), DX_OK);
    dx_type_free(opt);
    dx_example *out = parse_ok(DX_ADAPTER_CHAT, s, "[[ ## answer ## ]]\nA\n");
    cr_assert_str_eq(dx_example_get_str(out, "note", ""), "No note");
    cr_assert(cJSON_IsNull(dx_example_get(out, "extra")));
    dx_example_free(out);
    /* A given value overrides the default. */
    out = parse_ok(DX_ADAPTER_CHAT, s,
                   "[[ ## answer ## ]]\nA\n[[ ## note ## ]]\nmine\n");
    cr_assert_str_eq(dx_example_get_str(out, "note", ""), "mine");
    dx_example_free(out);
    dx_signature_unref(s);
}

/* ---- more shapes ------------------------------------------------------- */

Test(adapter, list_inputs_of_str_fields_render_as_dspy_blobs)
{
    dx_field_spec f[] = {
        {.name = "docs", .role = DX_FIELD_INPUT},
        {.name = "ok", .role = DX_FIELD_OUTPUT, .constraints = "be honest"},
    };
    dx_type *b = dx_type_new(DX_TYPE_BOOL);
    f[1].type = b;
    dx_signature *s = NULL;
    cr_assert_eq(dx_signature_build(f, 2, "Check.", &s, NULL), DX_OK);
    dx_type_free(b);
    /* A bool output's note, and the constraints under the field. */
    const char *sys = dx_adapter_system_message(DX_ADAPTER_CHAT, s);
    cr_assert(strstr(sys, "1. `ok` (bool): \nConstraints: be honest\n"), "%s",
              sys);
    cr_assert(strstr(sys, "{ok}        # note: the value you produce must be "
                          "True or False\n"),
              "%s", sys);
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"{\"docs\": []}", "[[ ## docs ## ]]\nN/A"},
        {"{\"docs\": [\"one\"]}", "[[ ## docs ## ]]\n\xC2\xABone\xC2\xBB"},
        {"{\"docs\": [\"a\\nb\", \"c\"]}",
         "[[ ## docs ## ]]\n[1] \xC2\xAB\xC2\xAB\xC2\xAB\n    a\n    b\n"
         "\xC2\xBB\xC2\xBB\xC2\xBB\n[2] \xC2\xAB"
         "c\xC2\xBB"},
        {"{\"docs\": [\"x\xC2\xABy\"]}",
         "[[ ## docs ## ]]\n\xC2\xAB\xC2\xAB\xC2\xAB\n    x\xC2\xABy\n"
         "\xC2\xBB\xC2\xBB\xC2\xBB"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dx_example *v = NULL;
        cr_assert_eq(
            dx_example_from_json(cases[i].in, strlen(cases[i].in), &v, NULL),
            DX_OK);
        char *out = NULL;
        cr_assert_eq(
            dx_adapter_user_content(DX_ADAPTER_CHAT, s, v, NULL, false, &out),
            DX_OK);
        cr_expect_str_eq(out, cases[i].out, "%s", cases[i].in);
        dx_free(out);
        dx_example_free(v);
    }
    dx_signature_unref(s);
}

/* str.splitlines() and str.strip() know more than \n and ' ': a line
 * separator, NEL and form feed split sections; no-break, ideographic,
 * Ogham and narrow spaces are trimmed off values. */
Test(adapter, chat_sections_split_and_strip_like_python_strings)
{
    dx_signature *s = parse("q -> a, b, c");
    dx_example *out =
        parse_ok(DX_ADAPTER_CHAT, s,
                 "[[ ## a ## ]]\xE2\x80\xA8\xE3\x80\x80 one\xC2\xA0\xE1\x9A\x80"
                 "\xC2\x85"
                 "[[ ## b ## ]]\x0c\xE2\x80\xAF two \xE2\x81\x9F\xE2\x80\x89\r"
                 "[[ ## c ## ]] three\xE2\x80\xA9\xE2\x80\x8A");
    cr_expect_str_eq(dx_example_get_str(out, "a", ""), "one");
    cr_expect_str_eq(dx_example_get_str(out, "b", ""), "two");
    cr_expect_str_eq(dx_example_get_str(out, "c", ""), "three");
    dx_example_free(out);
    dx_signature_unref(s);
}

Test(adapter, typed_chat_values_convert_or_name_the_problem)
{
    dx_signature *s =
        parse("q -> x: float, ok: bool, l: list[int], m: dict[str, int]");
    static const struct {
        const char *text, *err;
    } bad[] = {
        {"[[ ## x ## ]]\nabc", "field \"x\" (float): cannot use \"abc\": not a "
                               "number"},
        {"[[ ## x ## ]]\n1\n[[ ## ok ## ]]\n2",
         "field \"ok\" (bool): cannot use \"2\": not a boolean"},
        {"[[ ## x ## ]]\n1\n[[ ## ok ## ]]\nmaybe",
         "field \"ok\" (bool): cannot use \"maybe\": not a boolean"},
        {"[[ ## x ## ]]\n1\n[[ ## ok ## ]]\nyes\n[[ ## l ## ]]\n{\"a\": 1}",
         "field \"l\" (list[int]): cannot use \"{\"a\": 1}\": not a list"},
        {"[[ ## x ## ]]\n1\n[[ ## ok ## ]]\nyes\n[[ ## l ## ]]\n[1, \"x\"]",
         "field \"l\" (list[int]): cannot use \"[1, \"x\"]\": not an integer"},
        {"[[ ## x ## ]]\n1\n[[ ## ok ## ]]\nyes\n[[ ## l ## ]]\n[]\n"
         "[[ ## m ## ]]\n[1]",
         "field \"m\" (dict[str, int]): cannot use \"[1]\": not a dict"},
        {"[[ ## x ## ]]\n1\n[[ ## ok ## ]]\nyes\n[[ ## l ## ]]\n[]\n"
         "[[ ## m ## ]]\n{\"a\": \"b\"}",
         "field \"m\" (dict[str, int]): cannot use \"{\"a\": \"b\"}\": not an "
         "integer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dx_diag d = {0};
        cr_expect_eq(parse_err(DX_ADAPTER_CHAT, s, bad[i].text, &d), DX_ETYPE,
                     "%s", bad[i].text);
        cr_expect(strstr(d.msg, bad[i].err), "%s", d.msg);
        cr_expect(!strncmp(d.msg, "ChatAdapter: ", 13), "%s", d.msg);
    }
    /* pydantic's lax conversions: "inf", "OFF", numeric strings in a
     * dict of ints. */
    dx_example *out = parse_ok(DX_ADAPTER_CHAT, s,
                               "[[ ## x ## ]]\n-inf\n[[ ## ok ## ]]\nOFF\n"
                               "[[ ## l ## ]]\n[3]\n[[ ## m ## ]]\n"
                               "{\"a\": \"2\"}");
    cr_expect(isinf(dx_example_get_num(out, "x", 0)) &&
              dx_example_get_num(out, "x", 0) < 0);
    cr_expect(cJSON_IsFalse(dx_example_get(out, "ok")));
    cr_expect_eq(dx_example_get_num(out, "m", 0), 0, "m is not a number");
    cr_expect_eq(
        cJSON_GetObjectItem(dx_example_get(out, "m"), "a")->valuedouble, 2);
    dx_example_free(out);
    out = parse_ok(DX_ADAPTER_CHAT, s,
                   "[[ ## x ## ]]\n 2.5e1 \n[[ ## ok ## ]]\n1\n"
                   "[[ ## l ## ]]\n[]\n[[ ## m ## ]]\n{}");
    cr_expect_eq(dx_example_get_num(out, "x", 0), 25);
    cr_expect(cJSON_IsTrue(dx_example_get(out, "ok")));
    dx_example_free(out);
    dx_signature_unref(s);
}

Test(adapter, json_values_convert_like_pydantic_or_name_the_problem)
{
    dx_signature *s =
        parse("q -> a, n: int, pick: Literal['yes', 'no', 1, True]");
    dx_example *out =
        parse_ok(DX_ADAPTER_JSON, s,
                 "{\"a\": false, \"n\": \"7\", \"pick\": \"Literal['yes']\"}");
    cr_expect_str_eq(dx_example_get_str(out, "a", ""), "False", "str(False)");
    cr_expect_eq(dx_example_get_num(out, "n", 0), 7);
    cr_expect_str_eq(dx_example_get_str(out, "pick", ""), "yes");
    dx_example_free(out);
    out = parse_ok(DX_ADAPTER_JSON, s,
                   "{\"a\": 1.5, \"n\": 7.0, \"pick\": \"str[\\\"1\\\"]\"}");
    cr_expect_str_eq(dx_example_get_str(out, "a", ""), "1.5");
    cr_expect_eq(dx_example_get_num(out, "pick", 0), 1,
                 "a choice written as its str");
    dx_example_free(out);
    out = parse_ok(DX_ADAPTER_JSON, s,
                   "{\"a\": null, \"n\": 0, \"pick\": \"True\"}");
    cr_expect_str_eq(dx_example_get_str(out, "a", ""), "None");
    cr_expect(cJSON_IsTrue(dx_example_get(out, "pick")));
    dx_example_free(out);

    static const struct {
        const char *text, *err;
    } bad[] = {
        {"{\"a\": \"s\", \"n\": 7.5, \"pick\": \"yes\"}",
         "JSONAdapter: field \"n\" (int): cannot use \"7.5\": not an integer "
         "(it has a fractional part)"},
        {"{\"a\": \"s\", \"n\": [7], \"pick\": \"no\"}",
         "JSONAdapter: field \"n\" (int): cannot use \"[7]\": not an integer"},
        {"{\"a\": \"s\", \"n\": 7, \"pick\": 2}",
         "JSONAdapter: field \"pick\" (Literal['yes', 'no', 1, True]): cannot "
         "use \"2\": not one of the allowed values"},
        {"[1, 2]", "JSONAdapter: the LM response is not a JSON object; "
                   "response: \"[1, 2]\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dx_diag d = {0};
        int rc = parse_err(DX_ADAPTER_JSON, s, bad[i].text, &d);
        cr_expect(rc == DX_ETYPE || rc == DX_EPARSE, "%s", bad[i].text);
        cr_expect_str_eq(d.msg, bad[i].err);
    }
    dx_signature_unref(s);
}

Test(adapter, object_outputs_need_their_required_properties)
{
    dx_custom_type ct[] = {
        {"Place",
         "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": "
         "\"string\"}, \"tags\": {\"type\": \"array\", \"items\": "
         "{\"type\": \"object\", \"properties\": {\"k\": {\"type\": "
         "\"string\"}}}}}, \"required\": [\"city\"]}"}};
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_signature_parse("q -> place: Place, alt: Optional[Place]",
                                    NULL, ct, 1, &s, &d),
                 DX_OK, "%s", d.msg);
    dx_example *out = parse_ok(
        DX_ADAPTER_JSON, s, "{\"place\": {\"city\": \"Oslo\"}, \"alt\": null}");
    cr_expect_str_eq(
        cJSON_GetObjectItem(dx_example_get(out, "place"), "city")->valuestring,
        "Oslo");
    cr_expect(cJSON_IsNull(dx_example_get(out, "alt")));
    dx_example_free(out);
    cr_expect_eq(
        parse_err(DX_ADAPTER_JSON, s, "{\"place\": {\"town\": \"Oslo\"}}", &d),
        DX_ETYPE);
    cr_expect(strstr(d.msg, "a required property is missing"), "%s", d.msg);
    cr_expect_eq(parse_err(DX_ADAPTER_CHAT, s, "[[ ## place ## ]]\n[1]", &d),
                 DX_ETYPE);
    cr_expect(strstr(d.msg, "not a JSON object"), "%s", d.msg);

    /* The strict schema asks for every property of the nested objects,
     * through Optional and list items; the object types are defined at the
     * root, where the "#/$defs/..." references look for them. */
    dx_lm_request *req = dx_lm_request_new(NULL);
    cr_assert_eq(dx_adapter_format(DX_ADAPTER_JSON, s, NULL, 0, NULL, req, &d),
                 DX_OK, "%s", d.msg);
    cr_assert_eq(req->format, DX_LM_FORMAT_JSON_SCHEMA);
    cJSON *sch = cJSON_Parse(req->schema);
    cr_assert_not_null(sch);
    const cJSON *place =
        cJSON_GetObjectItem(cJSON_GetObjectItem(sch, "$defs"), "Place");
    cr_assert_not_null(place, "%s", req->schema);
    const cJSON *alt =
        cJSON_GetObjectItem(cJSON_GetObjectItem(sch, "properties"), "alt");
    cr_expect_null(cJSON_GetObjectItem(alt, "$defs"), "%s", req->schema);
    const cJSON *ref0 =
        cJSON_GetArrayItem(cJSON_GetObjectItem(alt, "anyOf"), 0);
    cr_expect_str_eq(cJSON_GetObjectItem(ref0, "$ref")->valuestring,
                     "#/$defs/Place");
    cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItem(place, "required")), 2,
                 "%s", req->schema);
    cr_expect(
        cJSON_IsFalse(cJSON_GetObjectItem(place, "additionalProperties")));
    const cJSON *item = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(place, "properties"), "tags"),
        "items");
    cr_expect_eq(cJSON_GetArraySize(cJSON_GetObjectItem(item, "required")), 1,
                 "%s", req->schema);
    cJSON_Delete(sch);
    dx_lm_request_free(req);
    dx_signature_unref(s);

    /* Open types anywhere (a bare list, Any in a list) mean JSON mode. */
    const char *open[] = {"q -> xs: list", "q -> xs: list[Any]",
                          "q -> xs: Optional[list[dict]]"};
    for (size_t i = 0; i < 3; i++) {
        s = parse(open[i]);
        req = dx_lm_request_new(NULL);
        cr_assert_eq(
            dx_adapter_format(DX_ADAPTER_JSON, s, NULL, 0, NULL, req, NULL),
            DX_OK);
        cr_expect_eq(req->format, DX_LM_FORMAT_JSON_OBJECT, "%s", open[i]);
        dx_lm_request_free(req);
        dx_signature_unref(s);
    }
}

Test(adapter, parse_value_reads_one_field_from_text)
{
    dx_signature *s = parse("q -> n: int, name, maybe: Optional[str]");
    cJSON *v = NULL;
    dx_diag d = {0};
    const dx_field *n = dx_signature_find(s, "n");
    cr_assert_eq(dx_adapter_parse_value(n, " 12 ", 4, &v, &d), DX_OK, "%s",
                 d.msg);
    cr_expect_eq(v->valuedouble, 12);
    cJSON_Delete(v);
    cr_assert_eq(dx_adapter_parse_value(n, "twelve", 6, &v, &d), DX_ETYPE);
    cr_expect_str_eq(d.msg, "field \"n\" (int): cannot use \"twelve\": not an "
                            "integer");
    /* A str field keeps the text exactly, spaces included. */
    cr_assert_eq(
        dx_adapter_parse_value(dx_signature_find(s, "name"), " x ", 3, &v, &d),
        DX_OK);
    cr_expect_str_eq(v->valuestring, " x ");
    cJSON_Delete(v);
    cr_assert_eq(dx_adapter_parse_value(dx_signature_find(s, "maybe"), "None",
                                        4, &v, &d),
                 DX_OK);
    cr_expect(cJSON_IsNull(v));
    cJSON_Delete(v);
    cr_expect_eq(dx_adapter_parse_value(NULL, "1", 1, &v, &d), DX_EINVAL);
    cr_expect_eq(dx_adapter_parse_value(n, NULL, 0, &v, &d), DX_EINVAL);
    dx_signature_unref(s);
}

Test(adapter, bad_arguments_are_einval_and_named)
{
    dx_signature *s = parse("q -> a");
    dx_lm_request *req = dx_lm_request_new(NULL);
    dx_diag d = {0};
    cr_expect_eq(
        dx_adapter_format((dx_adapter_kind)9, s, NULL, 0, NULL, req, &d),
        DX_EINVAL);
    cr_expect_str_eq(d.msg, "unknown adapter: invalid arguments");
    cr_expect_eq(
        dx_adapter_format(DX_ADAPTER_CHAT, NULL, NULL, 0, NULL, req, &d),
        DX_EINVAL);
    cr_expect_str_eq(d.msg, "ChatAdapter: invalid arguments");
    cr_expect_eq(dx_adapter_format(DX_ADAPTER_JSON, s, NULL, 2, NULL, req, &d),
                 DX_EINVAL, "demos counted but not given");
    cr_expect_null(dx_adapter_system_message(DX_ADAPTER_CHAT, NULL));
    cr_expect_null(dx_adapter_system_message((dx_adapter_kind)9, s));
    char *out = NULL;
    cr_expect_eq(
        dx_adapter_user_content(DX_ADAPTER_CHAT, NULL, NULL, NULL, true, &out),
        DX_EINVAL);
    cr_expect_eq(
        dx_adapter_assistant_content(DX_ADAPTER_CHAT, s, NULL, NULL, NULL),
        DX_EINVAL);
    dx_example *ex = NULL;
    cr_expect_eq(dx_adapter_parse(DX_ADAPTER_CHAT, s, NULL, 3, &ex, &d),
                 DX_EINVAL);
    cr_expect_eq(dx_adapter_parse((dx_adapter_kind)9, s, "x", 1, &ex, &d),
                 DX_EINVAL);
    cr_expect_null(ex);
    dx_lm_request_free(req);
    dx_signature_unref(s);
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

static dx_example *demo(const char *json)
{
    dx_example *ex = NULL;
    int rc = dx_example_from_json(json, strlen(json), &ex, NULL);
    return rc == DX_OK ? ex : NULL;
}

/* A whole Predict round in each format: messages with demos, then the
 * answer parsed. The first error ends it; results are checked when it
 * works. (The open dict output puts the JSONAdapter in JSON-object mode:
 * dx_lm_request_set_schema checks a schema by parsing it with cJSON, which
 * cannot tell a failed allocation from bad JSON, so under a failing
 * allocator it says EINVAL.) */
static int adapter_work(dx_adapter_kind kind)
{
    static const dx_custom_type ct[] = {
        {"Hit", "{\"type\": \"object\", \"properties\": {\"id\": {\"type\": "
                "\"integer\"}}, \"required\": [\"id\"]}"}};
    dx_signature *s = NULL;
    int rc = dx_signature_parse(
        "docs: list[str], q -> why, n: int, ok: bool, tags: list[str], "
        "pick: Literal['a', 'b'], hits: list[Hit], best: Optional[Hit], "
        "meta: dict[str, Any]",
        "Answer.", ct, 1, &s, NULL);
    if (rc != DX_OK)
        return rc;
    dx_example *d[3] = {
        demo("{\"docs\": [\"one\", \"two\\nlines\"], \"q\": \"x\", \"why\": "
             "\"because\", \"n\": 1, \"ok\": true, \"tags\": [\"t\"], "
             "\"pick\": \"a\", \"hits\": [{\"id\": 1}], \"best\": null}"),
        demo("{\"q\": \"y\", \"n\": 2}"), /* incomplete */
        demo("{\"docs\": []}"),           /* no outputs: dropped */
    };
    dx_example *in = demo("{\"docs\": [\"d\"], \"q\": \"z\"}");
    dx_lm_request *req = dx_lm_request_new(NULL);
    if (!d[0] || !d[1] || !d[2] || !in || !req)
        rc = DX_ENOMEM;
    dx_diag diag = {0};
    if (rc == DX_OK)
        rc = dx_adapter_format(kind, s, (const dx_example *const *)d, 3, in,
                               req, &diag);
    if (rc == DX_OK)
        cr_expect_eq(req->n_messages, 6, "system, 2 demo turns, the question");
    char *text = NULL;
    if (rc == DX_OK && (rc = dx_adapter_user_content(kind, s, in, "Prefix",
                                                     true, &text)) == DX_OK) {
        cr_expect(strstr(text, "Prefix"), "%s", text);
        dx_free(text);
    }
    if (rc == DX_OK && (rc = dx_adapter_assistant_content(kind, s, d[1], "?",
                                                          &text)) == DX_OK) {
        cr_expect(strstr(text, "?"), "%s", text);
        dx_free(text);
    }
    const char *answer =
        kind == DX_ADAPTER_CHAT
            ? "[[ ## why ## ]]\nr\n[[ ## n ## ]]\n3\n[[ ## ok ## ]]\nFalse\n"
              "[[ ## tags ## ]]\n['a', 'b']\n[[ ## pick ## ]]\nb\n"
              "[[ ## hits ## ]]\n[{\"id\": 4}]\n[[ ## best ## ]]\n{\"id\": 5}"
              "\n[[ ## meta ## ]]\n{'k': [None, True]}"
            : "```json\n{\"why\": \"r\", \"n\": \"3\", \"ok\": false, "
              "\"tags\": [\"a\", \"b\"], \"pick\": \"b\", \"hits\": "
              "[{\"id\": 4}], \"best\": {\"id\": 5}, \"meta\": {}}\n```";
    dx_example *out = NULL;
    if (rc == DX_OK && (rc = dx_adapter_parse(kind, s, answer, strlen(answer),
                                              &out, &diag)) == DX_OK) {
        cr_expect_eq(dx_example_get_num(out, "n", 0), 3);
        cr_expect_str_eq(dx_example_get_str(out, "pick", ""), "b");
        cr_expect_eq(cJSON_GetArraySize(dx_example_get(out, "tags")), 2);
        cr_expect_eq(
            cJSON_GetObjectItem(dx_example_get(out, "best"), "id")->valuedouble,
            5);
        dx_example_free(out);
    }
    if (rc != DX_OK && rc != DX_ENOMEM)
        cr_log_error("%s: %s", dx_err_name(rc), diag.msg);
    dx_lm_request_free(req);
    dx_example_free(in);
    for (int i = 0; i < 3; i++)
        dx_example_free(d[i]);
    dx_signature_unref(s);
    return rc;
}

static void sweep(dx_adapter_kind kind)
{
    dx_set_allocator(&failing);
    int rc = -1;
    long total = 0;
    for (fail_at = 0; fail_at < 1000000; fail_at++) {
        n_allocs = 0;
        rc = adapter_work(kind);
        if (rc != DX_OK)
            cr_expect_eq(rc, DX_ENOMEM, "fail at %ld: %s", fail_at,
                         dx_err_name(rc));
        if (n_allocs <= fail_at) { /* nothing failed: every point tried */
            total = n_allocs;
            break;
        }
    }
    dx_set_allocator(NULL);
    cr_assert_eq(rc, DX_OK);
    cr_assert_gt(total, 100);
}

Test(adapter, chat_a_failed_allocation_is_enomem_and_leaks_nothing,
     .timeout = 120)
{
    sweep(DX_ADAPTER_CHAT);
}

Test(adapter, json_a_failed_allocation_is_enomem_and_leaks_nothing,
     .timeout = 120)
{
    sweep(DX_ADAPTER_JSON);
}
