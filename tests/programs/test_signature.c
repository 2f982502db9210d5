/*
 * test_signature.c — signatures and field types (signature.h): the string
 * form and every parse error with its column, type names and JSON schemas
 * as DSPy renders them (expected texts produced with DSPy's own
 * get_annotation_name / _get_json_schema and pydantic 2), infer_prefix,
 * the immutable derivations, equality, dump/load of state, and the cache
 * of renderings shared between threads.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/signature.h"

static dx_signature *parse_ok(const char *text, const char *instr)
{
    dx_signature *s = NULL;
    dx_diag d = {0};
    int rc = dx_signature_parse(text, instr, NULL, 0, &s, &d);
    cr_assert_eq(rc, DX_OK, "parse \"%s\": %s", text, d.msg);
    cr_assert_not_null(s);
    return s;
}

static char *type_name_of(const dx_type *t)
{
    char *n = NULL;
    cr_assert_eq(dx_type_name(t, &n), DX_OK);
    return n;
}

/* ---- the string form -------------------------------------------------- */

Test(signature, parses_typed_fields_with_dspy_defaults, .timeout = 10)
{
    dx_signature *s = parse_ok(
        "context: list[str], question -> answer, confidence: float", NULL);
    cr_assert_eq(dx_signature_n_inputs(s), 2);
    cr_assert_eq(dx_signature_n_outputs(s), 2);
    cr_assert_eq(dx_signature_n_fields(s), 4);
    const dx_field *c = dx_signature_input(s, 0);
    cr_assert_str_eq(c->name, "context");
    cr_assert_eq(c->role, DX_FIELD_INPUT);
    cr_assert_eq(c->type->kind, DX_TYPE_LIST);
    cr_assert_eq(c->type->args[0]->kind, DX_TYPE_STR);
    cr_assert_not(c->type_undefined);
    cr_assert_str_eq(c->desc, "${context}");
    cr_assert_str_eq(c->prefix, "Context:");
    const dx_field *q = dx_signature_input(s, 1);
    cr_assert_eq(q->type->kind, DX_TYPE_STR);
    cr_assert(q->type_undefined, "an untyped input is marked");
    const dx_field *a = dx_signature_output(s, 0);
    cr_assert_eq(a->role, DX_FIELD_OUTPUT);
    cr_assert_eq(a->type->kind, DX_TYPE_STR);
    cr_assert_not(a->type_undefined, "DSPy marks untyped inputs only");
    cr_assert_eq(dx_signature_output(s, 1)->type->kind, DX_TYPE_FLOAT);
    cr_assert_null(dx_signature_output(s, 2));
    cr_assert_null(dx_signature_field(s, 4));
    cr_assert_eq(dx_signature_find(s, "answer"), a);
    cr_assert_null(dx_signature_find(s, "nope"));
    cr_assert_str_eq(dx_signature_instructions(s),
                     "Given the fields `context`, `question`, produce the "
                     "fields `answer`, `confidence`.");
    char *str = NULL;
    cr_assert_eq(dx_signature_string(s, &str), DX_OK);
    cr_assert_str_eq(str, "context, question -> answer, confidence");
    dx_free(str);
    dx_signature_unref(s);
}

Test(signature, accepts_whitespace_newlines_trailing_comma_and_empty_sides,
     .timeout = 10)
{
    dx_signature *s = parse_ok("\n  a :\tdict[ str ,\n int ] ,b, ->c", NULL);
    cr_assert_eq(dx_signature_n_inputs(s), 2);
    cr_assert_str_eq(dx_signature_input(s, 1)->name, "b");
    char *n = type_name_of(dx_signature_input(s, 0)->type);
    cr_assert_str_eq(n, "dict[str, int]");
    dx_free(n);
    dx_signature_unref(s);

    s = parse_ok("-> answer", NULL);
    cr_assert_eq(dx_signature_n_inputs(s), 0);
    cr_assert_eq(dx_signature_n_outputs(s), 1);
    cr_assert_str_eq(dx_signature_instructions(s),
                     "Given the fields , produce the fields `answer`.");
    char *str = NULL;
    cr_assert_eq(dx_signature_string(s, &str), DX_OK);
    cr_assert_str_eq(str, " -> answer");
    dx_free(str);
    dx_signature_unref(s);

    s = parse_ok("question ->", "Explicit.");
    cr_assert_eq(dx_signature_n_outputs(s), 0);
    cr_assert_str_eq(dx_signature_instructions(s), "Explicit.");
    dx_signature_unref(s);
}

typedef struct bad_case {
    const char *text;
    const char *msg;
    int column;
} bad_case;

Test(signature, every_parse_error_names_what_and_where, .timeout = 10)
{
    static const bad_case cases[] = {
        {"question answer", "signature: expected \"->\" at column 16", 16},
        {"", "signature: expected \"->\" at column 1", 1},
        {"a -> b -> c",
         "signature: expected exactly one \"->\", found another at column 8",
         8},
        {"1a -> b", "signature: expected a field name at column 1", 1},
        {"a,, b -> c", "signature: expected a field name at column 3", 3},
        {"a -> b, -c", "signature: expected a field name at column 9", 9},
        {"question: lst -> answer",
         "signature: unknown type \"lst\" at column 11", 11},
        {"a: list[str -> b", "signature: unbalanced \"[\" at column 8", 8},
        {"a: (int -> b", "signature: unbalanced \"(\" at column 4", 4},
        {"a: dict[str, int) -> b",
         "signature: expected \",\" or \"]\" at column 17", 17},
        {"a, b, a -> c", "signature: duplicate field \"a\" at column 7", 7},
        {"a -> a", "signature: field \"a\" is both an input and an output", 6},
        {"a: tuple[int, str] -> b",
         "signature: type \"tuple\" is not supported yet at column 4", 4},
        {"a: typing.Set[int] -> b",
         "signature: type \"typing.Set\" is not supported yet at column 4", 4},
        {"a: Union[int, str] -> b",
         "signature: only Optional unions are supported (T | None, "
         "Optional[T], Union[T, None]) at column 15",
         15},
        {"a: int | str -> b",
         "signature: only Optional unions are supported (T | None, "
         "Optional[T], Union[T, None]) at column 10",
         10},
        {"a: Optional[None] -> b",
         "signature: Optional[None] is not a type at column 13", 13},
        {"a: Optional[int, str] -> b",
         "signature: Optional takes exactly one type argument at column 12",
         12},
        {"a: str[int] -> b",
         "signature: type \"str\" takes no arguments at column 7", 7},
        {"a: Literal -> b",
         "signature: \"Literal\" needs arguments in [...] at column 4", 4},
        {"a: Literal[x] -> b",
         "signature: Literal choices must be strings, numbers, True or "
         "False, not \"x\" at column 12",
         12},
        {"a: Literal['x -> b", "signature: unterminated string at column 12",
         12},
        {"a: None -> b",
         "signature: None is only allowed in Optional or Union, not as a "
         "type by itself at column 4",
         4},
        {"a: list[None] -> b",
         "signature: None is only allowed in Optional or Union, not in list "
         "at column 9",
         9},
        {"a: list[str, int] -> b",
         "signature: list takes 1 type argument, not 2 at column 8", 8},
        {"a: dict[str] -> b",
         "signature: dict takes 2 type arguments, not 1 at column 8", 8},
        {"a: -> b", "signature: expected a type at column 4", 4},
        {"class -> b",
         "signature: \"class\" is a Python keyword, not a field name at "
         "column 1",
         1},
        {"a: int b -> c",
         "signature: expected \",\" after the type of field \"a\" at column 8",
         8},
        {"a b -> c",
         "signature: expected \",\" or \":\" after field \"a\" at column 3", 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_signature *s = (dx_signature *)0x1;
        dx_diag d = {0};
        int rc = dx_signature_parse(cases[i].text, NULL, NULL, 0, &s, &d);
        cr_assert_eq(rc, DX_ESYNTAX, "\"%s\" gave %d", cases[i].text, rc);
        cr_assert_eq(d.code, DX_ESYNTAX);
        cr_assert_str_eq(d.msg, cases[i].msg, "\"%s\"", cases[i].text);
        cr_assert_eq(d.column, cases[i].column, "\"%s\": column %d",
                     cases[i].text, d.column);
        cr_assert_eq(s, (dx_signature *)0x1, "*out untouched on failure");
    }
}

Test(signature, custom_type_with_bad_schema_is_an_error, .timeout = 10)
{
    dx_custom_type ct[] = {{"Thing", "[1, 2]"}, {"Other", "{not json"}};
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_signature_parse("a: Thing -> b", NULL, ct, 2, &s, &d),
                 DX_ESYNTAX);
    cr_assert_str_eq(d.msg, "signature: the schema of type \"Thing\" is not "
                            "a JSON object at column 4");
    cr_assert_eq(dx_signature_parse("a -> b: list[Other]", NULL, ct, 2, &s, &d),
                 DX_ESYNTAX);
    cr_assert_eq(d.column, 14);
    cr_assert_null(s);
}

Test(signature, null_arguments_are_einval, .timeout = 10)
{
    dx_signature *s = NULL;
    cr_assert_eq(dx_signature_parse(NULL, NULL, NULL, 0, &s, NULL), DX_EINVAL);
    cr_assert_eq(dx_signature_parse("a -> b", NULL, NULL, 0, NULL, NULL),
                 DX_EINVAL);
    cr_assert_eq(dx_signature_parse("a -> b", NULL, NULL, 2, &s, NULL),
                 DX_EINVAL);
    dx_type *t = NULL;
    cr_assert_eq(dx_type_parse(NULL, NULL, 0, &t, NULL), DX_EINVAL);
}

/* ---- types ------------------------------------------------------------ */

typedef struct type_case {
    const char *text, *name, *schema;
} type_case;

/* Expected name and schema: DSPy's get_annotation_name and _get_json_schema
 * of the type its string parser makes (Python 3.11, pydantic 2.13). */
static const type_case type_cases[] = {
    {"str", "str", "{\"type\": \"string\"}"},
    {"int", "int", "{\"type\": \"integer\"}"},
    {"float", "float", "{\"type\": \"number\"}"},
    {"bool", "bool", "{\"type\": \"boolean\"}"},
    {"Any", "Any", "{}"},
    {"list", "list", "{\"type\": \"array\", \"items\": {}}"},
    {"List", "list[]", "{\"type\": \"array\", \"items\": {}}"},
    {"list[str]", "list[str]",
     "{\"type\": \"array\", \"items\": {\"type\": \"string\"}}"},
    {"List[int]", "list[int]",
     "{\"type\": \"array\", \"items\": {\"type\": \"integer\"}}"},
    {"typing.List[str]", "list[str]",
     "{\"type\": \"array\", \"items\": {\"type\": \"string\"}}"},
    {"dict", "dict", "{\"type\": \"object\", \"additionalProperties\": true}"},
    {"Dict", "dict[]",
     "{\"type\": \"object\", \"additionalProperties\": true}"},
    {"dict[str, int]", "dict[str, int]",
     "{\"type\": \"object\", \"additionalProperties\": {\"type\": "
     "\"integer\"}}"},
    {"Dict[str, Any]", "dict[str, Any]",
     "{\"type\": \"object\", \"additionalProperties\": true}"},
    {"dict[str, list[int]]", "dict[str, list[int]]",
     "{\"type\": \"object\", \"additionalProperties\": {\"type\": \"array\", "
     "\"items\": {\"type\": \"integer\"}}}"},
    {"Literal['a']", "Literal['a']",
     "{\"type\": \"string\", \"const\": \"a\"}"},
    {"Literal['a', 'b']", "Literal['a', 'b']",
     "{\"type\": \"string\", \"enum\": [\"a\", \"b\"]}"},
    {"Literal['a', 1, True]", "Literal['a', 1, True]",
     "{\"enum\": [\"a\", 1, true]}"},
    {"Literal[1, 2]", "Literal[1, 2]",
     "{\"type\": \"integer\", \"enum\": [1, 2]}"},
    {"Literal[True]", "Literal[True]",
     "{\"type\": \"boolean\", \"const\": true}"},
    {"Literal[1.5, 2.0]", "Literal[1.5, 2.0]",
     "{\"type\": \"number\", \"enum\": [1.5, 2.0]}"},
    {"Literal[\"it's\", 'say \"hi\"', 'both \\' \"']",
     "Literal[\"it's\", 'say \"hi\"', 'both \\' \"']",
     "{\"type\": \"string\", \"enum\": [\"it's\", \"say \\\"hi\\\"\", "
     "\"both ' \\\"\"]}"},
    {"Optional[int]", "Union[int, NoneType]",
     "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"null\"}]}"},
    {"Union[int, None]", "Union[int, NoneType]",
     "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"null\"}]}"},
    {"Union[None, int]", "Union[NoneType, int]",
     "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"null\"}]}"},
    {"int | None", "Union[int, NoneType]",
     "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"null\"}]}"},
    {"None | int", "Union[NoneType, int]",
     "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"null\"}]}"},
    {"typing.Optional[str]", "Union[str, NoneType]",
     "{\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"null\"}]}"},
    {"Optional[Optional[int]]", "Union[int, NoneType]",
     "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"null\"}]}"},
    {"Union[int]", "int", "{\"type\": \"integer\"}"},
    {"Optional[list[str]]", "Union[list[str], NoneType]",
     "{\"anyOf\": [{\"type\": \"array\", \"items\": {\"type\": \"string\"}}, "
     "{\"type\": \"null\"}]}"},
    {"list[Optional[int]]", "list[Union[int, NoneType]]",
     "{\"type\": \"array\", \"items\": {\"anyOf\": [{\"type\": \"integer\"}, "
     "{\"type\": \"null\"}]}}"},
    {"dict[Literal['a', 'b'], int]", "dict[Literal['a', 'b'], int]",
     "{\"type\": \"object\", \"additionalProperties\": {\"type\": "
     "\"integer\"}, \"propertyNames\": {\"enum\": [\"a\", \"b\"]}}"},
    {"Optional[Any]", "Union[Any, NoneType]",
     "{\"anyOf\": [{}, {\"type\": \"null\"}]}"},
    {"Text", "str", "{\"type\": \"string\"}"},
    {"Literal['a', 'a']", "Literal['a']",
     "{\"type\": \"string\", \"const\": \"a\"}"},
    {"Literal[1, True]", "Literal[1, True]", "{\"enum\": [1, true]}"},
    {"list[ dict[ str , float ] ]", "list[dict[str, float]]",
     "{\"type\": \"array\", \"items\": {\"type\": \"object\", "
     "\"additionalProperties\": {\"type\": \"number\"}}}"},
    {"(int | None)", "Union[int, NoneType]",
     "{\"anyOf\": [{\"type\": \"integer\"}, {\"type\": \"null\"}]}"},
};

Test(signature, type_names_and_schemas_match_dspy, .timeout = 10)
{
    for (size_t i = 0; i < sizeof type_cases / sizeof type_cases[0]; i++) {
        const type_case *c = &type_cases[i];
        dx_type *t = NULL;
        dx_diag d = {0};
        cr_assert_eq(dx_type_parse(c->text, NULL, 0, &t, &d), DX_OK, "%s: %s",
                     c->text, d.msg);
        char *name = NULL, *schema = NULL;
        cr_assert_eq(dx_type_name(t, &name), DX_OK);
        cr_assert_eq(dx_type_schema(t, &schema), DX_OK);
        cr_assert_str_eq(name, c->name, "name of %s", c->text);
        cr_assert_str_eq(schema, c->schema, "schema of %s", c->text);
        dx_type *cp = dx_type_copy(t);
        cr_assert(dx_type_equal(t, cp));
        dx_free(name);
        dx_free(schema);
        dx_type_free(cp);
        dx_type_free(t);
    }
}

/* pydantic's model_json_schema() of
 *   class Inner(BaseModel): z: int; a: str = "x"
 *   class Answer(BaseModel): type: str; value: float; inner: Inner;
 *                            tags: list[str] = []
 *   class Rec(BaseModel): kids: list["Rec"] = []                         */
static const char ANSWER_SCHEMA[] =
    "{\"$defs\": {\"Inner\": {\"properties\": {\"z\": {\"title\": \"Z\", "
    "\"type\": \"integer\"}, \"a\": {\"default\": \"x\", \"title\": \"A\", "
    "\"type\": \"string\"}}, \"required\": [\"z\"], \"title\": \"Inner\", "
    "\"type\": \"object\"}}, \"properties\": {\"type\": {\"title\": "
    "\"Type\", \"type\": \"string\"}, \"value\": {\"title\": \"Value\", "
    "\"type\": \"number\"}, \"inner\": {\"$ref\": \"#/$defs/Inner\"}, "
    "\"tags\": {\"default\": [], \"items\": {\"type\": \"string\"}, "
    "\"title\": \"Tags\", \"type\": \"array\"}}, \"required\": [\"type\", "
    "\"value\", \"inner\"], \"title\": \"Answer\", \"type\": \"object\"}";
static const char REC_SCHEMA[] =
    "{\"$defs\": {\"Rec\": {\"properties\": {\"kids\": {\"default\": [], "
    "\"items\": {\"$ref\": \"#/$defs/Rec\"}, \"title\": \"Kids\", \"type\": "
    "\"array\"}}, \"title\": \"Rec\", \"type\": \"object\"}}, \"$ref\": "
    "\"#/$defs/Rec\"}";

#define ANSWER_BODY                                                            \
    "{\"type\": \"object\", \"properties\": {\"type\": {\"type\": "            \
    "\"string\", \"title\": \"Type\"}, \"inner\": {\"$ref\": "                 \
    "\"#/$defs/Inner\"}, \"tags\": {\"type\": \"array\", \"default\": [], "    \
    "\"items\": {\"type\": \"string\"}, \"title\": \"Tags\"}, \"value\": "     \
    "{\"type\": \"number\", \"title\": \"Value\"}}, \"required\": "            \
    "[\"type\", \"value\", \"inner\"], \"title\": \"Answer\"}"
#define INNER_BODY                                                             \
    "{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"string\", "   \
    "\"default\": \"x\", \"title\": \"A\"}, \"z\": {\"type\": \"integer\", "   \
    "\"title\": \"Z\"}}, \"required\": [\"z\"], \"title\": \"Inner\"}"
#define REC_BODY                                                               \
    "{\"type\": \"object\", \"properties\": {\"kids\": {\"type\": "            \
    "\"array\", \"default\": [], \"items\": {\"$ref\": \"#/$defs/Rec\"}, "     \
    "\"title\": \"Kids\"}}, \"title\": \"Rec\"}"

static const type_case object_cases[] = {
    {"Answer", "Answer",
     "{\"type\": \"object\", \"$defs\": {\"Inner\": " INNER_BODY "}, "
     "\"properties\": {\"type\": {\"type\": \"string\", \"title\": "
     "\"Type\"}, \"inner\": {\"$ref\": \"#/$defs/Inner\"}, \"tags\": "
     "{\"type\": \"array\", \"default\": [], \"items\": {\"type\": "
     "\"string\"}, \"title\": \"Tags\"}, \"value\": {\"type\": \"number\", "
     "\"title\": \"Value\"}}, \"required\": [\"type\", \"value\", "
     "\"inner\"], \"title\": \"Answer\"}"},
    {"list[Answer]", "list[Answer]",
     "{\"type\": \"array\", \"$defs\": {\"Answer\": " ANSWER_BODY
     ", \"Inner\": " INNER_BODY "}, \"items\": {\"$ref\": "
     "\"#/$defs/Answer\"}}"},
    {"Optional[Answer]", "Union[Answer, NoneType]",
     "{\"$defs\": {\"Answer\": " ANSWER_BODY ", \"Inner\": " INNER_BODY
     "}, \"anyOf\": [{\"$ref\": \"#/$defs/Answer\"}, {\"type\": "
     "\"null\"}]}"},
    {"dict[str, Answer]", "dict[str, Answer]",
     "{\"type\": \"object\", \"$defs\": {\"Answer\": " ANSWER_BODY
     ", \"Inner\": " INNER_BODY "}, \"additionalProperties\": {\"$ref\": "
     "\"#/$defs/Answer\"}}"},
    {"Rec", "Rec",
     "{\"$defs\": {\"Rec\": " REC_BODY "}, \"$ref\": \"#/$defs/Rec\"}"},
    {"list[Rec]", "list[Rec]",
     "{\"type\": \"array\", \"$defs\": {\"Rec\": " REC_BODY
     "}, \"items\": {\"$ref\": \"#/$defs/Rec\"}}"},
};

Test(signature, object_types_render_like_pydantic_models, .timeout = 10)
{
    dx_custom_type ct[] = {{"Answer", ANSWER_SCHEMA}, {"Rec", REC_SCHEMA}};
    for (size_t i = 0; i < sizeof object_cases / sizeof object_cases[0]; i++) {
        const type_case *c = &object_cases[i];
        dx_type *t = NULL;
        dx_diag d = {0};
        cr_assert_eq(dx_type_parse(c->text, ct, 2, &t, &d), DX_OK, "%s: %s",
                     c->text, d.msg);
        char *name = NULL, *schema = NULL;
        cr_assert_eq(dx_type_name(t, &name), DX_OK);
        cr_assert_eq(dx_type_schema(t, &schema), DX_OK);
        cr_assert_str_eq(name, c->name);
        cr_assert_str_eq(schema, c->schema, "schema of %s", c->text);
        dx_free(name);
        dx_free(schema);
        dx_type_free(t);
    }
    /* A custom name shadows a builtin one, as in DSPy's name table. */
    dx_custom_type shadow[] = {{"str", "{\"type\": \"object\"}"}};
    dx_type *t = NULL;
    cr_assert_eq(dx_type_parse("str", shadow, 1, &t, NULL), DX_OK);
    cr_assert_eq(t->kind, DX_TYPE_OBJECT);
    dx_type_free(t);
}

Test(signature, types_made_in_c, .timeout = 10)
{
    dx_type *l = dx_type_list_of(dx_type_new(DX_TYPE_INT));
    char *n = type_name_of(l);
    cr_assert_str_eq(n, "list[int]");
    dx_free(n);
    dx_type *o = dx_type_optional_of(l);
    n = type_name_of(o);
    cr_assert_str_eq(n, "Union[list[int], NoneType]");
    dx_free(n);
    o->pep604 = true; /* DSPy's class-based `list[int] | None` */
    n = type_name_of(o);
    cr_assert_str_eq(n, "UnionType[list[int], NoneType]");
    dx_free(n);
    cr_assert_eq(dx_type_optional_of(o), o, "Optional of Optional flattens");
    dx_type_free(o);

    const char *ch[] = {"yes", "no", "yes"};
    dx_type *lit = dx_type_literal(ch, 3);
    n = type_name_of(lit);
    cr_assert_str_eq(n, "Literal['yes', 'no']");
    dx_free(n);
    dx_type *parsed = NULL;
    cr_assert_eq(dx_type_parse("Literal['no', 'yes']", NULL, 0, &parsed, NULL),
                 DX_OK);
    cr_assert(dx_type_equal(lit, parsed), "choice order does not count");
    dx_type *other = NULL;
    cr_assert_eq(dx_type_parse("Literal['no', 'maybe']", NULL, 0, &other, NULL),
                 DX_OK);
    cr_assert_not(dx_type_equal(lit, other));
    dx_type_free(other);
    dx_type_free(parsed);
    dx_type_free(lit);

    cr_assert_null(dx_type_object("Bad", "[1]"));
    cr_assert_null(dx_type_object("Bad", "{oops"));
    cr_assert_null(dx_type_new(DX_TYPE_LITERAL));
    dx_type *obj = dx_type_object("Point", "{\"type\": \"object\", "
                                           "\"title\": \"Point\"}");
    cr_assert_not_null(obj);
    n = type_name_of(obj);
    cr_assert_str_eq(n, "Point");
    dx_free(n);
    dx_type_free(obj);
    dx_type_free(NULL);
}

Test(signature, type_parse_rejects_trailing_text, .timeout = 10)
{
    dx_type *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_type_parse("list[str] x", NULL, 0, &t, &d), DX_ESYNTAX);
    cr_assert_str_eq(d.msg, "type: unexpected \"x\" after the type at column "
                            "11");
    cr_assert_null(t);
}

/* ---- infer_prefix ----------------------------------------------------- */

Test(signature, infer_prefix_matches_dspy, .timeout = 10)
{
    static const char *const cases[][2] = {
        {"someAttributeName42IsCool", "Some Attribute Name 42 Is Cool"},
        {"version2Update", "Version 2 Update"},
        {"modelT45Enhanced", "Model T 45 Enhanced"},
        {"someAttributeName", "Some Attribute Name"},
        {"some_attribute_name", "Some Attribute Name"},
        {"URLAddress", "URL Address"},
        {"isHTTPSecure", "Is HTTP Secure"},
        {"isHTTPSSecure123", "Is HTTPS Secure 123"},
        {"text2number", "Text 2 Number"},
        {"camelCaseText", "Camel Case Text"},
        {"snake_case_text", "Snake Case Text"},
        {"HTMLParser", "HTML Parser"},
        {"question", "Question"},
        {"_private", " Private"},
        {"a__b", "A  B"},
        {"x", "X"},
        {"ABC", "ABC"},
        {"2text", "2 Text"},
        {"MIXEDcase", "MIXE Dcase"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *p = NULL;
        cr_assert_eq(dx_infer_prefix(cases[i][0], &p), DX_OK);
        cr_assert_str_eq(p, cases[i][1], "infer_prefix(%s)", cases[i][0]);
        dx_free(p);
    }
}

/* ---- derivations ------------------------------------------------------ */

static void assert_names(const dx_signature *s, const char *want)
{
    char *str = NULL;
    cr_assert_eq(dx_signature_string(s, &str), DX_OK);
    cr_assert_str_eq(str, want);
    dx_free(str);
}

Test(signature, insert_at_positive_and_negative_positions, .timeout = 10)
{
    dx_signature *s = parse_ok("a, b -> x, y", "Keep me.");
    struct {
        long index;
        dx_field_role role;
        const char *want;
    } cases[] = {
        {0, DX_FIELD_INPUT, "n, a, b -> x, y"},
        {1, DX_FIELD_INPUT, "a, n, b -> x, y"},
        {2, DX_FIELD_INPUT, "a, b, n -> x, y"},
        {-1, DX_FIELD_INPUT, "a, b, n -> x, y"},
        {-2, DX_FIELD_INPUT, "a, n, b -> x, y"},
        {-3, DX_FIELD_INPUT, "n, a, b -> x, y"},
        {0, DX_FIELD_OUTPUT, "a, b -> n, x, y"},
        {-1, DX_FIELD_OUTPUT, "a, b -> x, y, n"},
        {-2, DX_FIELD_OUTPUT, "a, b -> x, n, y"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_field_spec f = {.name = "n", .role = cases[i].role};
        dx_signature *t = NULL;
        cr_assert_eq(dx_signature_insert(s, cases[i].index, &f, &t, NULL),
                     DX_OK);
        assert_names(t, cases[i].want);
        cr_assert_str_eq(dx_signature_instructions(t), "Keep me.");
        const dx_field *n = dx_signature_find(t, "n");
        cr_assert_str_eq(n->prefix, "N:");
        cr_assert_str_eq(n->desc, "${n}");
        cr_assert(n->type_undefined);
        dx_signature_unref(t);
    }
    assert_names(s, "a, b -> x, y"); /* the old one is unchanged */

    dx_field_spec f = {.name = "n", .role = DX_FIELD_INPUT};
    dx_signature *t = (dx_signature *)0x1;
    dx_diag d = {0};
    cr_assert_eq(dx_signature_insert(s, 3, &f, &t, &d), DX_EINVAL);
    cr_assert_str_eq(d.msg, "signature: cannot insert input field \"n\" at "
                            "index 3 (valid: -3 to 2)");
    cr_assert_eq(dx_signature_insert(s, -4, &f, &t, &d), DX_EINVAL);
    f.name = "x";
    cr_assert_eq(dx_signature_prepend(s, &f, &t, &d), DX_EINVAL);
    cr_assert_str_eq(d.msg, "signature: field \"x\" already exists");
    f.name = "not valid";
    cr_assert_eq(dx_signature_append(s, &f, &t, &d), DX_EINVAL);
    cr_assert_eq(t, (dx_signature *)0x1);
    dx_signature_unref(s);
}

Test(signature, prepend_keeps_typed_spec_and_old_signature, .timeout = 10)
{
    dx_signature *s = parse_ok("question -> answer", NULL);
    dx_type *str = dx_type_new(DX_TYPE_STR);
    dx_field_spec r = {.name = "reasoning",
                       .role = DX_FIELD_OUTPUT,
                       .type = str,
                       .desc = "${reasoning}",
                       .prefix = "Reasoning: Let's think step by step in "
                                 "order to"};
    dx_signature *c = NULL;
    cr_assert_eq(dx_signature_prepend(s, &r, &c, NULL), DX_OK);
    dx_type_free(str);
    assert_names(c, "question -> reasoning, answer");
    const dx_field *f = dx_signature_output(c, 0);
    cr_assert_not(f->type_undefined);
    cr_assert_str_eq(f->prefix,
                     "Reasoning: Let's think step by step in order to");
    /* Instructions are carried, not recomputed (as DSPy). */
    cr_assert_str_eq(dx_signature_instructions(c),
                     "Given the fields `question`, produce the fields "
                     "`answer`.");
    cr_assert_eq(dx_signature_n_outputs(s), 1);
    dx_signature_unref(s);
    /* c owns its own copies. */
    cr_assert_str_eq(dx_signature_input(c, 0)->name, "question");
    dx_signature_unref(c);
}

Test(signature, delete_and_text_changes_return_new_signatures, .timeout = 10)
{
    dx_signature *s = parse_ok("a, b -> c", "Do it.");
    dx_signature *t = NULL;
    cr_assert_eq(dx_signature_delete(s, "b", &t), DX_OK);
    assert_names(t, "a -> c");
    assert_names(s, "a, b -> c");
    dx_signature_unref(t);
    cr_assert_eq(dx_signature_delete(s, "zzz", &t), DX_OK);
    cr_assert(dx_signature_equal(s, t));
    dx_signature_unref(t);

    cr_assert_eq(dx_signature_with_instructions(s, "New.", &t), DX_OK);
    cr_assert_str_eq(dx_signature_instructions(t), "New.");
    cr_assert_str_eq(dx_signature_instructions(s), "Do it.");
    dx_signature_unref(t);
    cr_assert_eq(dx_signature_with_instructions(s, NULL, &t), DX_OK);
    cr_assert_str_eq(dx_signature_instructions(t),
                     "Given the fields `a`, `b`, produce the fields `c`.");
    dx_signature_unref(t);

    dx_signature *u = NULL;
    cr_assert_eq(dx_signature_append_instructions(s, "Step one.", &t), DX_OK);
    cr_assert_eq(dx_signature_append_instructions(t, "Step two.", &u), DX_OK);
    cr_assert_str_eq(dx_signature_instructions(u),
                     "Do it.\n\nStep one.\n\nStep two.");
    dx_signature_unref(t);
    dx_signature_unref(u);

    cr_assert_eq(dx_signature_with_field_text(s, "a", "the a", NULL, &t),
                 DX_OK);
    cr_assert_str_eq(dx_signature_find(t, "a")->desc, "the a");
    cr_assert_str_eq(dx_signature_find(t, "a")->prefix, "A:");
    cr_assert_str_eq(dx_signature_find(s, "a")->desc, "${a}");
    dx_signature_unref(t);
    cr_assert_eq(dx_signature_with_field_text(s, "q", "x", "y", &t), DX_ENOENT);
    dx_signature_unref(s);
}

Test(signature, instructions_are_cleaned_like_inspect_cleandoc, .timeout = 10)
{
    dx_signature *s = parse_ok(
        "a -> b", "   First line\n        Second line\n            Third\n\n");
    cr_assert_str_eq(dx_signature_instructions(s),
                     "First line\nSecond line\n    Third");
    dx_signature_unref(s);
    /* A leading newline makes the first text line count for the margin. */
    s = parse_ok("a -> b",
                 "\n   First line\n        Second line\n            Third");
    cr_assert_str_eq(dx_signature_instructions(s),
                     "First line\n     Second line\n         Third");
    dx_signature_unref(s);
    s = parse_ok("a -> b", "a\n  \n    b\n   ");
    cr_assert_str_eq(dx_signature_instructions(s), "a\n\nb");
    dx_signature_unref(s);
    s = parse_ok("a -> b", "x\n\ty");
    cr_assert_str_eq(dx_signature_instructions(s), "x\ny");
    dx_signature_unref(s);
    s = parse_ok("a -> b", "");
    cr_assert_str_eq(dx_signature_instructions(s), "");
    dx_signature_unref(s);
    s = parse_ok("a -> b", "keep\n  this\n    indent");
    cr_assert_str_eq(dx_signature_instructions(s), "keep\nthis\n  indent");
    dx_signature_unref(s);
}

/* ---- building, equality, copies --------------------------------------- */

Test(signature, build_orders_inputs_first_and_checks_names, .timeout = 10)
{
    dx_type *i = dx_type_new(DX_TYPE_INT);
    dx_field_spec f[] = {
        {.name = "answer",
         .role = DX_FIELD_OUTPUT,
         .type = i,
         .constraints = "greater than: 0",
         .default_json = "0"},
        {.name = "question", .role = DX_FIELD_INPUT, .desc = "a question"},
        {.name = "context",
         .role = DX_FIELD_INPUT,
         .default_json = "[\"x\", 1.0]"},
    };
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_signature_build(f, 3, "Answer.", &s, &d), DX_OK, "%s",
                 d.msg);
    dx_type_free(i);
    assert_names(s, "question, context -> answer");
    const dx_field *a = dx_signature_find(s, "answer");
    cr_assert_eq(a->type->kind, DX_TYPE_INT);
    cr_assert_str_eq(a->constraints, "greater than: 0");
    cr_assert(cJSON_IsNumber(a->default_value));
    cr_assert_str_eq(dx_signature_find(s, "question")->desc, "a question");
    cr_assert(cJSON_IsArray(dx_signature_find(s, "context")->default_value));

    dx_signature *c = NULL;
    cr_assert_eq(dx_signature_copy(s, &c), DX_OK);
    cr_assert_neq(c, s);
    cr_assert(dx_signature_equal(s, c));
    cr_assert_neq(dx_signature_find(c, "answer"), a, "not shared");
    dx_signature_unref(c);
    dx_signature_unref(s);

    dx_field_spec dup[] = {{.name = "a", .role = DX_FIELD_INPUT},
                           {.name = "a", .role = DX_FIELD_OUTPUT}};
    s = (dx_signature *)0x1;
    cr_assert_eq(dx_signature_build(dup, 2, NULL, &s, &d), DX_EINVAL);
    cr_assert_str_eq(d.msg, "signature: duplicate field \"a\"");
    dx_field_spec bad[] = {{.name = "9lives", .role = DX_FIELD_INPUT}};
    cr_assert_eq(dx_signature_build(bad, 1, NULL, &s, &d), DX_EINVAL);
    cr_assert_str_eq(d.msg, "signature: \"9lives\" is not a valid field name");
    dx_field_spec badj[] = {
        {.name = "a", .role = DX_FIELD_INPUT, .default_json = "{x"}};
    cr_assert_eq(dx_signature_build(badj, 1, NULL, &s, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "the default of field \"a\" is not JSON"));
    cr_assert_eq(s, (dx_signature *)0x1);
}

Test(signature, equality_follows_dspy_equals, .timeout = 10)
{
    dx_signature *a = parse_ok("input: str | None -> output: int", "Same.");
    dx_signature *b = parse_ok("input: Optional[str] -> output: int", "Same.");
    cr_assert(dx_signature_equal(a, b), "T | None equals Optional[T]");
    dx_signature *c =
        parse_ok("input: Optional[str] -> output: float", "Same.");
    cr_assert_not(dx_signature_equal(a, c), "types differ");
    dx_signature *d = parse_ok("input: Optional[str] -> output: int", "Other.");
    cr_assert_not(dx_signature_equal(a, d), "instructions differ");
    dx_signature *e = NULL;
    cr_assert_eq(dx_signature_with_field_text(a, "output", NULL, "Out:", &e),
                 DX_OK);
    cr_assert_not(dx_signature_equal(a, e), "prefix differs");
    dx_signature *f = parse_ok("x, y -> z", "I.");
    dx_signature *g = parse_ok("y, x -> z", "I.");
    cr_assert(dx_signature_equal(f, g), "fields are matched by name");
    dx_signature *h = parse_ok("x: str, y -> z", "I.");
    cr_assert_not(dx_signature_equal(f, h), "type_undefined mark differs");
    dx_signature *k = parse_ok("x -> y, z", "I.");
    cr_assert_not(dx_signature_equal(f, k), "roles differ");
    dx_signature *all[] = {a, b, c, d, e, f, g, h, k};
    for (size_t i = 0; i < 9; i++)
        dx_signature_unref(all[i]);
}

Test(signature, ref_keeps_it_alive_until_last_unref, .timeout = 10)
{
    dx_signature *s = parse_ok("a -> b", NULL);
    cr_assert_eq(dx_signature_ref(s), s);
    dx_signature_unref(s);
    cr_assert_str_eq(dx_signature_input(s, 0)->name, "a");
    dx_signature_unref(s);
    dx_signature_unref(NULL);
}

/* ---- state ------------------------------------------------------------ */

Test(signature, dump_and_load_state_like_dspy, .timeout = 10)
{
    dx_signature *s =
        parse_ok("sentence -> sentiment", "I am just an instruction.");
    dx_signature *s1 = NULL;
    cr_assert_eq(dx_signature_with_field_text(
                     s, "sentence", "I am an innocent input!", NULL, &s1),
                 DX_OK);
    cJSON *st = dx_signature_dump_state(s1);
    char *text = cJSON_PrintUnformatted(st);
    cr_assert_str_eq(text,
                     "{\"instructions\":\"I am just an instruction.\","
                     "\"fields\":[{\"prefix\":\"Sentence:\",\"description\":"
                     "\"I am an innocent input!\"},{\"prefix\":\"Sentiment:\","
                     "\"description\":\"${sentiment}\"}]}");
    cJSON_free(text);

    dx_signature *m =
        parse_ok("sentence -> sentiment", "I am a malicious instruction.");
    dx_signature *loaded = NULL;
    cr_assert_eq(dx_signature_load_state(m, st, &loaded, NULL), DX_OK);
    cr_assert_str_eq(dx_signature_instructions(loaded),
                     "I am just an instruction.");
    cr_assert(dx_signature_equal(loaded, s1), "round trip");
    cr_assert_str_eq(dx_signature_instructions(m),
                     "I am a malicious instruction.");
    cr_assert_str_eq(dx_signature_find(m, "sentence")->desc, "${sentence}");
    dx_signature_unref(loaded);

    /* By position, strict=False: fewer saved fields leave the rest. */
    cJSON_DeleteItemFromArray(cJSON_GetObjectItem(st, "fields"), 1);
    dx_signature *w = parse_ok("p, q -> r", NULL);
    cr_assert_eq(dx_signature_load_state(w, st, &loaded, NULL), DX_OK);
    cr_assert_str_eq(dx_signature_find(loaded, "p")->prefix, "Sentence:");
    cr_assert_str_eq(dx_signature_find(loaded, "q")->prefix, "Q:");
    cr_assert_str_eq(dx_signature_find(loaded, "r")->desc, "${r}");
    dx_signature_unref(loaded);
    cJSON_Delete(st);

    dx_diag d = {0};
    cJSON *bad = cJSON_Parse("{\"instructions\": \"x\", \"fields\": "
                             "[{\"prefix\": \"P:\"}]}");
    loaded = (dx_signature *)0x1;
    cr_assert_eq(dx_signature_load_state(w, bad, &loaded, &d), DX_ESYNTAX);
    cr_assert_str_eq(d.msg, "signature state: fields[0] needs string "
                            "\"prefix\" and \"description\"");
    cJSON_Delete(bad);
    bad = cJSON_Parse("{\"fields\": []}");
    cr_assert_eq(dx_signature_load_state(w, bad, &loaded, &d), DX_ESYNTAX);
    cr_assert_str_eq(d.msg,
                     "signature state: \"instructions\" must be a string");
    cJSON_Delete(bad);
    cr_assert_eq(dx_signature_load_state(w, NULL, &loaded, &d), DX_ESYNTAX);
    cr_assert_eq(loaded, (dx_signature *)0x1);
    dx_signature_unref(w);
    dx_signature_unref(m);
    dx_signature_unref(s1);
    dx_signature_unref(s);
}

/* ---- cache ------------------------------------------------------------ */

static atomic_int made;

static char *make_text(const dx_signature *s, void *ud)
{
    (void)ud;
    atomic_fetch_add(&made, 1);
    char *str = NULL;
    if (dx_signature_string(s, &str) != DX_OK)
        return NULL;
    return str;
}

Test(signature, cached_slot_is_computed_once_per_signature, .timeout = 10)
{
    atomic_store(&made, 0);
    dx_signature *s = parse_ok("a -> b", NULL);
    const char *p = dx_signature_cached(s, 0, make_text, NULL);
    cr_assert_str_eq(p, "a -> b");
    for (int i = 0; i < 5; i++)
        cr_assert_eq(dx_signature_cached(s, 0, make_text, NULL), p);
    cr_assert_eq(atomic_load(&made), 1);
    const char *q = dx_signature_cached(s, 3, make_text, NULL);
    cr_assert_neq(q, p, "slots are separate");
    cr_assert_eq(atomic_load(&made), 2);
    cr_assert_null(
        dx_signature_cached(s, DX_SIGNATURE_CACHE_SLOTS, make_text, NULL));
    /* A derived signature has its own cache. */
    dx_signature *t = NULL;
    cr_assert_eq(dx_signature_with_instructions(s, "x", &t), DX_OK);
    cr_assert_neq(dx_signature_cached(t, 0, make_text, NULL), p);
    cr_assert_eq(atomic_load(&made), 3);
    dx_signature_unref(t);
    dx_signature_unref(s);
}

#define NTHREADS 8

typedef struct race {
    dx_signature *s;
    pthread_barrier_t *go;
    const char *got;
} race;

static void *racer(void *arg)
{
    race *r = arg;
    pthread_barrier_wait(r->go);
    r->got = dx_signature_cached(r->s, 1, make_text, NULL);
    return NULL;
}

Test(signature, cached_slot_is_shared_across_threads, .timeout = 20)
{
    for (int round = 0; round < 20; round++) {
        atomic_store(&made, 0);
        dx_signature *s = parse_ok("x, y -> z", NULL);
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, NTHREADS);
        pthread_t th[NTHREADS];
        race r[NTHREADS];
        for (int i = 0; i < NTHREADS; i++) {
            r[i] = (race){s, &go, NULL};
            cr_assert_eq(pthread_create(&th[i], NULL, racer, &r[i]), 0);
        }
        for (int i = 0; i < NTHREADS; i++)
            pthread_join(th[i], NULL);
        pthread_barrier_destroy(&go);
        for (int i = 0; i < NTHREADS; i++) {
            cr_assert_not_null(r[i].got);
            cr_assert_eq(r[i].got, r[0].got, "every thread sees one string");
        }
        cr_assert_str_eq(r[0].got, "x, y -> z");
        cr_assert_eq(dx_signature_cached(s, 1, make_text, NULL), r[0].got);
        int n = atomic_load(&made);
        cr_assert(n >= 1 && n <= NTHREADS);
        dx_signature_unref(s); /* losers' copies were freed (ASan checks) */
    }
}

/* Regression (fuzz/corpus/signature/regress-deep-nesting): the type reader
 * recursed once per nesting level without a bound, so 10,000 "(" overflowed
 * the stack. Now nesting past 64 levels is a syntax error; real types
 * still parse. */
Test(signature, types_nested_too_deep_are_a_syntax_error_not_a_crash,
     .timeout = 10)
{
    enum { N = 10000 };
    char *text = dx_malloc(2 * N + 16);
    cr_assert_not_null(text);
    size_t k = 0;
    k += (size_t)snprintf(text, 16, "a -> b: ");
    for (int i = 0; i < N; i++)
        text[k++] = '(';
    memcpy(text + k, "str", 3);
    k += 3;
    for (int i = 0; i < N; i++)
        text[k++] = ')';
    text[k] = '\0';
    dx_signature *s = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_signature_parse(text, NULL, NULL, 0, &s, &d), DX_ESYNTAX);
    cr_assert_null(s);
    cr_assert(strstr(d.msg, "nest deeper than 64 levels"), "%s", d.msg);

    /* The same through the type reader, with brackets. */
    k = 0;
    for (int i = 0; i < N / 10; i++)
        k += (size_t)snprintf(text + k, 2 * N + 16 - k, "list[");
    dx_type *t = NULL;
    cr_assert_eq(dx_type_parse(text, NULL, 0, &t, &d), DX_ESYNTAX);
    cr_assert_null(t);
    dx_free(text);

    /* Deep but reasonable nesting still parses. */
    cr_assert_eq(dx_type_parse("list[dict[str, list[Optional[((int))]]]]", NULL,
                               0, &t, &d),
                 DX_OK, "%s", d.msg);
    dx_type_free(t);
}

/* ---- string literals, numbers and unions in types ---------------------- */

Test(signature, literal_strings_decode_python_escapes, .timeout = 10)
{
    dx_type *t = NULL;
    dx_diag d = {0};
    cr_assert_eq(dx_type_parse("Literal['a\\nb', '\\t\\r\\a\\b\\f\\v', "
                               "'\\x41\\u00e9\\u20ac\\U0001F600', '\\q', "
                               "'x\\\\y', 'it\\'s', \"d\\\"q\", 'ab\\\nc']",
                               NULL, 0, &t, &d),
                 DX_OK, "%s", d.msg);
    cr_assert_eq(t->kind, DX_TYPE_LITERAL);
    static const char *const want[] = {
        "a\nb", "\t\r\a\b\f\v", "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80",
        "\\q", /* Python keeps an unknown escape as written */
        "x\\y", "it's",         "d\"q",
        "abc", /* a backslash before a line break continues the line */
    };
    cr_assert_eq(cJSON_GetArraySize(t->choices), 8);
    for (int i = 0; i < 8; i++)
        cr_expect_str_eq(cJSON_GetArrayItem(t->choices, i)->valuestring,
                         want[i], "choice %d", i);
    dx_type_free(t);

    /* Numbers: exponents and signs as Python reads them, floats kept
     * floats in the name. */
    cr_assert_eq(dx_type_parse("Literal[1e3, -2.5E-2, +4]", NULL, 0, &t, &d),
                 DX_OK, "%s", d.msg);
    char *name = type_name_of(t);
    cr_assert_str_eq(name, "Literal[1000.0, -0.025, 4]");
    dx_free(name);
    dx_type_free(t);
}

Test(signature, bad_literals_and_unions_name_what_and_where, .timeout = 10)
{
    static const bad_case cases[] = {
        {"Literal['''x''']",
         "type: triple-quoted strings are not supported at column 9", 9},
        {"Literal['\\0']", "type: a NUL character is not allowed at column 10",
         10},
        {"Literal['\\xZZ']", "type: bad \\x escape at column 12", 12},
        {"Literal['\\x00']", "type: bad \\x escape at column 14", 14},
        {"Literal['\\u12']", "type: bad \\u escape at column 14", 14},
        {"Literal['\\U00110000']", "type: bad \\U escape at column 20", 20},
        {"Literal['abc\\", "type: unterminated string at column 9", 9},
        {"Literal[", "type: expected a Literal choice at column 9", 9},
        {"Literal[]",
         "type: Literal choices must be strings, numbers, True or False at "
         "column 9",
         9},
        {"Literal[-]",
         "type: Literal choices must be strings, numbers, True or False at "
         "column 9",
         9},
        {"Literal[1e]", "type: expected \",\" or \"]\" at column 10", 10},
        {"Literal['a'", "type: unbalanced \"[\" at column 8", 8},
        {"Literal[1234567890123456789012345678901234567890123456789012345678"
         "901234567890]",
         "type: number too long at column 9", 9},
        {"Union[None]", "type: a union needs a type besides None at column 6",
         6},
        {"None | None", "type: a union needs a type besides None at column 1",
         1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dx_type *t = (dx_type *)0x1;
        dx_diag d = {0};
        cr_expect_eq(dx_type_parse(cases[i].text, NULL, 0, &t, &d), DX_ESYNTAX,
                     "%s", cases[i].text);
        cr_expect_str_eq(d.msg, cases[i].msg, "%s", cases[i].text);
        cr_expect_eq(d.column, cases[i].column, "%s: column %d", cases[i].text,
                     d.column);
        cr_expect_eq(t, (dx_type *)0x1, "*out untouched on failure");
    }
}

Test(signature, type_equality_compares_objects_by_name_and_schema,
     .timeout = 10)
{
    dx_type *a = dx_type_object("Point", "{\"type\": \"object\"}");
    dx_type *b = dx_type_object("Point", "{\"type\": \"object\"}");
    dx_type *c = dx_type_object("Place", "{\"type\": \"object\"}");
    dx_type *e = dx_type_object("Point", "{\"type\": \"object\", \"title\": "
                                         "\"P\"}");
    cr_assert(a && b && c && e);
    cr_expect(dx_type_equal(a, b));
    cr_expect_not(dx_type_equal(a, c), "another name");
    cr_expect_not(dx_type_equal(a, e), "another schema");
    cr_expect_not(dx_type_equal(a, NULL));
    dx_type *x = NULL, *y = NULL;
    cr_assert_eq(dx_type_parse("Literal['a', 'b']", NULL, 0, &x, NULL), DX_OK);
    cr_assert_eq(dx_type_parse("Literal['a', 'c']", NULL, 0, &y, NULL), DX_OK);
    cr_expect_not(dx_type_equal(x, y), "same count, another choice");
    dx_type_free(y);
    cr_assert_eq(dx_type_parse("Literal['a']", NULL, 0, &y, NULL), DX_OK);
    cr_expect_not(dx_type_equal(x, y), "another count");
    dx_type_free(y);
    cr_assert_eq(dx_type_parse("list[int]", NULL, 0, &y, NULL), DX_OK);
    dx_type *z = NULL;
    cr_assert_eq(dx_type_parse("list[str]", NULL, 0, &z, NULL), DX_OK);
    cr_expect_not(dx_type_equal(y, z), "another item type");
    dx_type_free(x);
    dx_type_free(y);
    dx_type_free(z);
    dx_type_free(a);
    dx_type_free(b);
    dx_type_free(c);
    dx_type_free(e);
}

/* inspect.cleandoc's str.lstrip and str.isspace know Unicode spaces: a
 * no-break space, an em space, NEL and an ideographic space are
 * indentation; an emoji or a stray byte is text. */
Test(signature, instructions_cleaning_counts_unicode_spaces, .timeout = 10)
{
    dx_signature *s = parse_ok("a -> b", "\xE3\x80\x80\xF0\x9F\x98\x80"
                                         "First\n"
                                         "\xC2\xA0\xC2\xA0Second\n"
                                         "\xE2\x80\x83\xC2\xA0\xC2\x85Third\n"
                                         " \xC3\xA9\n"
                                         " \xFF\xE2\x80");
    cr_assert_str_eq(dx_signature_instructions(s),
                     "\xF0\x9F\x98\x80"
                     "First\n\xC2\xA0Second\n"
                     "\xC2\xA0\xC2\x85Third\n\xC3\xA9\n\xFF\xE2\x80");
    dx_signature_unref(s);
    char *p = NULL;
    cr_assert_eq(dx_infer_prefix("a\xC3\xA9"
                                 "B",
                                 &p),
                 DX_OK);
    cr_assert_str_eq(p,
                     "A\xC3\xA9"
                     "b",
                     "capitalize() of a mixed word");
    dx_free(p);
}

Test(signature, derivations_refuse_bad_arguments, .timeout = 10)
{
    dx_signature *s = parse_ok("a -> b", "Do it.");
    dx_signature *o = (dx_signature *)0x1;
    dx_diag d = {0};
    dx_field_spec f = {.name = "c", .role = DX_FIELD_OUTPUT};
    cr_expect_eq(dx_signature_insert(NULL, 0, &f, &o, &d), DX_EINVAL);
    cr_expect_str_eq(d.msg, "signature: invalid argument");
    cr_expect_eq(dx_signature_build(NULL, 1, NULL, &o, &d), DX_EINVAL);
    dx_field_spec norole = {.name = "c", .role = (dx_field_role)7};
    cr_expect_eq(dx_signature_insert(s, 0, &norole, &o, &d), DX_EINVAL);
    cr_expect_str_eq(d.msg, "signature: field \"c\" has no valid role");
    dx_field_spec noname = {.role = DX_FIELD_OUTPUT};
    cr_expect_eq(dx_signature_append(s, &noname, &o, &d), DX_EINVAL);
    cr_expect_str_eq(d.msg, "signature: \"(null)\" is not a valid field name");
    cr_expect_eq(dx_signature_delete(s, NULL, &o), DX_EINVAL);
    cr_expect_eq(dx_signature_with_instructions(NULL, "x", &o), DX_EINVAL);
    cr_expect_eq(dx_signature_append_instructions(s, NULL, &o), DX_EINVAL);
    cr_expect_eq(dx_signature_with_field_text(s, NULL, "d", NULL, &o),
                 DX_EINVAL);
    cr_expect_eq(dx_signature_with_field_text(s, "zz", "d", NULL, &o),
                 DX_ENOENT);
    cr_expect_eq(dx_signature_copy(NULL, &o), DX_EINVAL);
    cr_expect_eq(dx_signature_string(s, NULL), DX_EINVAL);
    cr_expect_eq(dx_signature_load_state(NULL, NULL, &o, &d), DX_EINVAL);
    cr_expect_eq(o, (dx_signature *)0x1, "*out untouched on failure");
    char *n = NULL;
    cr_expect_eq(dx_type_name(NULL, &n), DX_EINVAL);
    cr_expect_eq(dx_type_schema(NULL, &n), DX_EINVAL);
    cr_expect_eq(dx_infer_prefix(NULL, &n), DX_EINVAL);
    cr_expect_null(dx_signature_cached(s, 0, NULL, NULL));
    cr_expect_null(dx_signature_cached(s, 1000, make_text, NULL));
    cr_expect_null(dx_signature_dump_state(NULL));

    /* Appending instructions keeps the old ones, a blank line between. */
    cr_assert_eq(dx_signature_append_instructions(s, "Then stop.", &o), DX_OK);
    cr_expect_str_eq(dx_signature_instructions(o), "Do it.\n\nThen stop.");
    dx_signature_unref(o);

    cJSON *st = cJSON_Parse("{\"instructions\": \"x\", \"fields\": 3}");
    cr_expect_eq(dx_signature_load_state(s, st, &o, &d), DX_ESYNTAX);
    cr_expect_str_eq(d.msg, "signature state: \"fields\" must be a list");
    cJSON_Delete(st);
    st = cJSON_Parse("[1]");
    cr_expect_eq(dx_signature_load_state(s, st, &o, &d), DX_ESYNTAX);
    cr_expect_str_eq(d.msg, "signature state: expected an object");
    cJSON_Delete(st);
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

/* Everything a program does with a signature, stopping at the first
 * error; what it makes is checked when it succeeds. */
static int signature_work(void)
{
    static const dx_custom_type ct[] = {
        {"Point", "{\"type\": \"object\", \"properties\": {\"x\": {\"type\": "
                  "\"integer\"}}, \"required\": [\"x\"]}"}};
    dx_signature *s = NULL, *o = NULL;
    dx_diag d = {0};
    int rc = dx_signature_parse(
        "ctx: list[str], q: dict[str, Optional[int]], p: Point -> "
        "pick: Literal['a', 'b\\n', 1], n: float | None, pts: list[Point], "
        "m: dict[Literal['x', 'y'], Any]",
        "  Answer well.\n   Please.", ct, 1, &s, &d);
    if (rc != DX_OK)
        return rc;
    char *text = NULL;
    for (size_t i = 0; rc == DX_OK && i < dx_signature_n_fields(s); i++) {
        const dx_type *t = dx_signature_field(s, i)->type;
        if ((rc = dx_type_name(t, &text)) == DX_OK) {
            dx_free(text);
            text = NULL;
            if ((rc = dx_type_schema(t, &text)) == DX_OK)
                dx_free(text);
            text = NULL;
        }
        dx_type *cp = rc == DX_OK ? dx_type_copy(t) : NULL;
        if (rc == DX_OK && !cp)
            rc = DX_ENOMEM;
        if (cp)
            cr_expect(dx_type_equal(cp, t));
        dx_type_free(cp);
    }
    if (rc == DX_OK && (rc = dx_signature_string(s, &text)) == DX_OK) {
        cr_expect_str_eq(text, "ctx, q, p -> pick, n, pts, m");
        dx_free(text);
    }
    if (rc == DX_OK &&
        (rc = dx_infer_prefix("someHTTPName2x", &text)) == DX_OK) {
        cr_expect_str_eq(text, "Some HTTP Name 2 X");
        dx_free(text);
    }
    dx_field_spec f = {.name = "extra",
                       .role = DX_FIELD_INPUT,
                       .desc = "more",
                       .default_json = "[1, 2]"};
    if (rc == DX_OK && (rc = dx_signature_insert(s, 1, &f, &o, &d)) == DX_OK) {
        cr_expect_str_eq(dx_signature_input(o, 1)->name, "extra");
        dx_signature_unref(o);
    }
    if (rc == DX_OK && (rc = dx_signature_delete(s, "q", &o)) == DX_OK) {
        cr_expect_eq(dx_signature_n_inputs(o), 2);
        dx_signature_unref(o);
    }
    if (rc == DX_OK &&
        (rc = dx_signature_append_instructions(s, "More.", &o)) == DX_OK)
        dx_signature_unref(o);
    if (rc == DX_OK && (rc = dx_signature_with_field_text(
                            s, "pick", "one", "Pick:", &o)) == DX_OK)
        dx_signature_unref(o);
    if (rc == DX_OK && (rc = dx_signature_copy(s, &o)) == DX_OK) {
        cr_expect(dx_signature_equal(o, s));
        dx_signature_unref(o);
    }
    cJSON *st = rc == DX_OK ? dx_signature_dump_state(s) : NULL;
    if (rc == DX_OK && !st)
        rc = DX_ENOMEM;
    if (rc == DX_OK && (rc = dx_signature_load_state(s, st, &o, &d)) == DX_OK) {
        cr_expect(dx_signature_equal(o, s));
        dx_signature_unref(o);
    }
    cJSON_Delete(st);
    if (rc == DX_OK) {
        cr_expect_str_eq(dx_signature_instructions(s), "Answer well.\nPlease.");
    }
    dx_signature_unref(s);
    return rc;
}

Test(signature, every_failed_allocation_is_enomem_and_leaks_nothing,
     .timeout = 60)
{
    dx_set_allocator(&failing);
    int rc = -1;
    long total = 0;
    for (fail_at = 0; fail_at < 100000; fail_at++) {
        n_allocs = 0;
        rc = signature_work();
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
