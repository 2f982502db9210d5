/*
 * test_adapter.c — ChatAdapter and JSONAdapter: the exact messages of
 * Python DSPy 3.3 for the golden cases in fixtures/programs/
 * adapter_golden.json (DSPy's own exact-message tests plus a hand-derived
 * case with descriptions, two demos and typed fields), the system message
 * rendered once per signature, the structured-output schema, and parsing
 * of well-formed, sloppy and broken answers with typed conversion errors.
 */
#include <criterion/criterion.h>
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
