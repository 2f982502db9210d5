/*
 * adapter.c — ChatAdapter and JSONAdapter: rendering a signature, demos and
 * inputs into Python DSPy 3.3's messages byte for byte, and parsing LM
 * answers back into typed outputs (see adapter.h).
 *
 * The renderings follow DSPy's string operations literally — Python's
 * str.strip(), str.splitlines() and textwrap.dedent() are reimplemented
 * below with Python's definitions of whitespace and line boundaries,
 * because a prompt that differs by one space is a different cache key and
 * a different prompt for programs optimized in DSPy.
 */
#include "dspex/adapter.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "example_int.h"
#include "pyjson.h"

/* Slots of dx_signature_cached used here. */
#define SLOT_CHAT_SYSTEM 0
#define SLOT_JSON_SYSTEM 1
#define SLOT_JSON_SCHEMA 2 /* "" when the outputs are open (JSON-object mode) */

static const char INCOMPLETE_DEMO_PREFIX[] =
    "This is an example of the task, though some input or output fields are "
    "not supplied.";
static const char MISSING_IN_INCOMPLETE_DEMO[] =
    "Not supplied for this particular example. ";
static const char MISSING_IN_HISTORY[] =
    "Not supplied for this conversation history message. ";
static const char NOTE_INDENT[] = "        "; /* 8 spaces, as DSPy */

const char *dx_adapter_name(dx_adapter_kind kind)
{
    switch (kind) {
    case DX_ADAPTER_CHAT:
        return "ChatAdapter";
    case DX_ADAPTER_JSON:
        return "JSONAdapter";
    }
    return "unknown adapter";
}

/* ---- Python text semantics -------------------------------------------- */

/* Length of the Python-whitespace character starting at s (n bytes left),
 * or 0. Python's str.isspace: ASCII \t\n\v\f\r, \x1c-\x1f, space, and the
 * Unicode spaces U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
 * U+202F, U+205F, U+3000. */
static size_t py_space_len(const unsigned char *s, size_t n)
{
    if (n == 0)
        return 0;
    unsigned char c = s[0];
    if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f))
        return 1;
    if (c == 0xc2 && n >= 2 && (s[1] == 0x85 || s[1] == 0xa0))
        return 2;
    if (c == 0xe1 && n >= 3 && s[1] == 0x9a && s[2] == 0x80)
        return 3;
    if (c == 0xe2 && n >= 3) {
        if (s[1] == 0x80 && ((s[2] >= 0x80 && s[2] <= 0x8a) || s[2] == 0xa8 ||
                             s[2] == 0xa9 || s[2] == 0xaf))
            return 3;
        if (s[1] == 0x81 && s[2] == 0x9f)
            return 3;
    }
    if (c == 0xe3 && n >= 3 && s[1] == 0x80 && s[2] == 0x80)
        return 3;
    return 0;
}

/* Length of a Python-whitespace character ending just before s + n. */
static size_t py_space_len_back(const unsigned char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (py_space_len(s + n - 1, 1) == 1)
        return 1;
    if (n >= 2 && py_space_len(s + n - 2, 2) == 2)
        return 2;
    if (n >= 3 && py_space_len(s + n - 3, 3) == 3)
        return 3;
    return 0;
}

/* str.strip(): narrow [*p, *p + *n) to exclude leading/trailing space. */
static void py_strip(const char **p, size_t *n)
{
    const unsigned char *s = (const unsigned char *)*p;
    size_t len = *n, k;
    while ((k = py_space_len(s, len)) > 0) {
        s += k;
        len -= k;
    }
    while ((k = py_space_len_back(s, len)) > 0)
        len -= k;
    *p = (const char *)s;
    *n = len;
}

/* Length of the line boundary at s (0 if none): \n, \r, \r\n, \v, \f,
 * \x1c-\x1e, U+0085, U+2028, U+2029 — str.splitlines()'s boundaries. */
static size_t py_line_break(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c == '\r')
        return (n >= 2 && s[1] == '\n') ? 2 : 1;
    if (c == '\n' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e))
        return 1;
    if (c == 0xc2 && n >= 2 && s[1] == 0x85)
        return 2;
    if (c == 0xe2 && n >= 3 && s[1] == 0x80 && (s[2] == 0xa8 || s[2] == 0xa9))
        return 3;
    return 0;
}

typedef struct span {
    const char *p;
    size_t n;
} span;

/* str.splitlines() of [s, s+n): the spans (without their breaks) into a
 * dx_malloc'd array. NULL with *count 0 for empty text; NULL on OOM sets
 * *oom. */
static span *py_splitlines(const char *s, size_t n, size_t *count, bool *oom)
{
    *count = 0;
    if (n == 0)
        return NULL;
    size_t cap = 8, k = 0;
    span *v = dx_malloc(cap * sizeof *v);
    if (!v) {
        *oom = true;
        return NULL;
    }
    size_t start = 0, i = 0;
    while (i < n) {
        size_t br = py_line_break((const unsigned char *)s + i, n - i);
        if (br == 0) {
            i++;
            continue;
        }
        if (k == cap) {
            cap *= 2;
            span *nv = dx_realloc(v, cap * sizeof *nv);
            if (!nv) {
                dx_free(v);
                *oom = true;
                return NULL;
            }
            v = nv;
        }
        v[k++] = (span){s + start, i - start};
        i += br;
        start = i;
    }
    if (start < n) {
        if (k == cap) {
            span *nv = dx_realloc(v, (cap + 1) * sizeof *nv);
            if (!nv) {
                dx_free(v);
                *oom = true;
                return NULL;
            }
            v = nv;
        }
        v[k++] = (span){s + start, n - start};
    }
    *count = k;
    return v;
}

/* textwrap.dedent: lines made only of spaces/tabs become empty; the
 * longest common run of leading spaces/tabs of the other lines is removed.
 * Lines are split at "\n" only, as dedent's regexes do. Appends to b. */
static void py_dedent(dx__sb *b, const char *s)
{
    /* Pass 1: the margin. */
    const char *margin = NULL;
    size_t margin_len = 0;
    for (const char *line = s; line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        size_t ws = 0;
        while (ws < len && (line[ws] == ' ' || line[ws] == '\t'))
            ws++;
        if (ws < len) { /* a line with content */
            if (!margin) {
                margin = line;
                margin_len = ws;
            } else {
                size_t k = 0;
                while (k < margin_len && k < ws && margin[k] == line[k])
                    k++;
                margin_len = k;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    /* Pass 2: emit. */
    for (const char *line = s; line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        size_t ws = 0;
        while (ws < len && (line[ws] == ' ' || line[ws] == '\t'))
            ws++;
        /* Lines of only spaces/tabs become empty. */
        if (ws < len)
            dx__sb_put(b, line + margin_len, len - margin_len);
        if (nl)
            dx__sb_putc(b, '\n');
        line = nl ? nl + 1 : NULL;
    }
}

/* Append "<s stripped>" for the text in b from offset `from` on: DSPy
 * strips whole joined blocks, so this strips b's tail region in place. */
static void sb_strip_from(dx__sb *b, size_t from)
{
    if (b->oom || b->len <= from)
        return;
    const char *p = b->p + from;
    size_t n = b->len - from;
    py_strip(&p, &n);
    memmove(b->p + from, p, n);
    b->len = from + n;
    b->p[b->len] = '\0';
}

/* ---- type facts -------------------------------------------------------- */

static bool type_is_str(const dx_type *t)
{
    return t && t->kind == DX_TYPE_STR;
}

/* DSPy's annotation_allows_none. */
static bool type_allows_none(const dx_type *t)
{
    return t && t->kind == DX_TYPE_OPTIONAL;
}

/* Python str() of a literal choice. */
static void put_choice_str(dx__sb *b, const cJSON *c)
{
    dx__pystr(b, c);
}

/* The "# note: ..." requirement of an output field, appended after
 * "{name}" (DSPy's translate_field_type). */
static void put_type_note(dx__sb *b, const dx_field *f)
{
    const dx_type *t = f->type;
    if (f->role == DX_FIELD_INPUT || type_is_str(t))
        return;
    dx__sb_puts(b, NOTE_INDENT);
    dx__sb_puts(b, "# note: the value you produce ");
    switch (t->kind) {
    case DX_TYPE_BOOL:
        dx__sb_puts(b, "must be True or False");
        return;
    case DX_TYPE_INT:
        dx__sb_puts(b, "must be a single int value");
        return;
    case DX_TYPE_FLOAT:
        dx__sb_puts(b, "must be a single float value");
        return;
    case DX_TYPE_LITERAL: {
        dx__sb_puts(b, "must exactly match (no extra characters) one of: ");
        int i = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, t->choices)
        {
            if (i++)
                dx__sb_puts(b, "; ");
            put_choice_str(b, c);
        }
        return;
    }
    default: {
        char *schema = NULL;
        if (dx_type_schema(t, &schema) != DX_OK) {
            b->oom = true;
            return;
        }
        dx__sb_puts(b, "must adhere to the JSON schema: ");
        dx__sb_puts(b, schema);
        dx_free(schema);
        return;
    }
    }
}

static void put_type_name(dx__sb *b, const dx_type *t)
{
    char *name = NULL;
    if (dx_type_name(t, &name) != DX_OK) {
        b->oom = true;
        return;
    }
    dx__sb_puts(b, name);
    dx_free(name);
}

/* ---- value rendering --------------------------------------------------- */

/* DSPy's _format_blob for one list item. */
static void put_blob(dx__sb *b, const cJSON *item)
{
    dx__sb tmp;
    dx__sb_init(&tmp);
    dx__pystr(&tmp, item);
    const char *s = dx__sb_cstr(&tmp);
    if (!s) {
        b->oom = true;
        dx__sb_free(&tmp);
        return;
    }
    if (!strchr(s, '\n') && !strstr(s, "\xc2\xab") && !strstr(s, "\xc2\xbb")) {
        dx__sb_puts(b, "\xc2\xab");
        dx__sb_puts(b, s);
        dx__sb_puts(b, "\xc2\xbb");
    } else {
        dx__sb_puts(b, "\xc2\xab\xc2\xab\xc2\xab\n    ");
        for (const char *c = s; *c; c++) {
            dx__sb_putc(b, *c);
            if (*c == '\n')
                dx__sb_puts(b, "    ");
        }
        dx__sb_puts(b, "\n\xc2\xbb\xc2\xbb\xc2\xbb");
    }
    dx__sb_free(&tmp);
}

/* DSPy's format_field_value. NULL value renders as "None". */
static void put_value(dx__sb *b, const dx_field *f, const cJSON *v)
{
    if (!v || cJSON_IsNull(v)) {
        dx__sb_puts(b, "None");
        return;
    }
    if (cJSON_IsArray(v) && type_is_str(f->type)) {
        int n = cJSON_GetArraySize(v);
        if (n == 0) {
            dx__sb_puts(b, "N/A");
            return;
        }
        if (n == 1) {
            put_blob(b, v->child);
            return;
        }
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            if (i)
                dx__sb_putc(b, '\n');
            dx__sb_printf(b, "[%d] ", ++i);
            put_blob(b, it);
        }
        return;
    }
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        dx__pyjson_dump(b, v, -1);
        return;
    }
    dx__pystr(b, v);
}

int dx_adapter_format_value(const dx_field *f, const cJSON *value, char **out)
{
    if (!f || !out)
        return DX_EINVAL;
    dx__sb b;
    dx__sb_init(&b);
    put_value(&b, f, value);
    if (b.oom || !dx__sb_cstr(&b)) {
        dx__sb_free(&b);
        return DX_ENOMEM;
    }
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

/* ---- system message ---------------------------------------------------- */

/* get_field_description_string for one role, stripped as a block. */
static void put_field_descriptions(dx__sb *b, const dx_signature *s,
                                   dx_field_role role)
{
    size_t from = b->len;
    size_t n = role == DX_FIELD_INPUT ? dx_signature_n_inputs(s)
                                      : dx_signature_n_outputs(s);
    for (size_t i = 0; i < n; i++) {
        const dx_field *f = role == DX_FIELD_INPUT ? dx_signature_input(s, i)
                                                   : dx_signature_output(s, i);
        if (i)
            dx__sb_putc(b, '\n');
        dx__sb_printf(b, "%zu. `%s` (", i + 1, f->name);
        put_type_name(b, f->type);
        dx__sb_puts(b, "): ");
        /* The default desc "${name}" is left out. */
        size_t nl = strlen(f->name);
        bool is_default = strncmp(f->desc, "${", 2) == 0 &&
                          strncmp(f->desc + 2, f->name, nl) == 0 &&
                          strcmp(f->desc + 2 + nl, "}") == 0;
        if (!is_default)
            dx__sb_puts(b, f->desc);
        if (f->constraints && f->constraints[0]) {
            dx__sb_puts(b, "\nConstraints: ");
            dx__sb_puts(b, f->constraints);
        }
    }
    sb_strip_from(b, from);
}

/* "[[ ## name ## ]]\n{name}<note>" blocks of one role joined by blank
 * lines (format_field_with_value over translate_field_type). */
static void put_structure_blocks(dx__sb *b, const dx_signature *s,
                                 dx_field_role role)
{
    size_t from = b->len;
    size_t n = role == DX_FIELD_INPUT ? dx_signature_n_inputs(s)
                                      : dx_signature_n_outputs(s);
    for (size_t i = 0; i < n; i++) {
        const dx_field *f = role == DX_FIELD_INPUT ? dx_signature_input(s, i)
                                                   : dx_signature_output(s, i);
        if (i)
            dx__sb_puts(b, "\n\n");
        dx__sb_printf(b, "[[ ## %s ## ]]\n{%s}", f->name, f->name);
        put_type_note(b, f);
    }
    sb_strip_from(b, from);
}

/* The JSON skeleton of the outputs: json.dumps({name: "{name}<note>"},
 * indent=2). */
static void put_output_skeleton(dx__sb *b, const dx_signature *s)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        b->oom = true;
        return;
    }
    for (size_t i = 0; i < dx_signature_n_outputs(s); i++) {
        const dx_field *f = dx_signature_output(s, i);
        dx__sb t;
        dx__sb_init(&t);
        dx__sb_printf(&t, "{%s}", f->name);
        put_type_note(&t, f);
        const char *text = dx__sb_cstr(&t);
        cJSON *str = text ? cJSON_CreateString(text) : NULL;
        dx__sb_free(&t);
        /* A field cJSON could not add would be missing from the message
         * without a word: fail the rendering instead. */
        if (!str || !cJSON_AddItemToObject(o, f->name, str)) {
            cJSON_Delete(str);
            b->oom = true;
            cJSON_Delete(o);
            return;
        }
    }
    dx__pyjson_dump(b, o, 2);
    cJSON_Delete(o);
}

static void put_task(dx__sb *b, const dx_signature *s)
{
    dx__sb_puts(b, "In adhering to this structure, your objective is: ");
    dx__sb ded;
    dx__sb_init(&ded);
    py_dedent(&ded, dx_signature_instructions(s));
    const char *text = dx__sb_cstr(&ded);
    if (!text) {
        b->oom = true;
        return;
    }
    bool oom = false;
    size_t nlines = 0;
    span *lines = py_splitlines(text, ded.len, &nlines, &oom);
    if (oom)
        b->oom = true;
    for (size_t i = 0; i < nlines; i++) {
        dx__sb_putc(b, '\n');
        dx__sb_puts(b, NOTE_INDENT);
        dx__sb_put(b, lines[i].p, lines[i].n);
    }
    dx_free(lines);
    dx__sb_free(&ded);
}

static char *render_system(const dx_signature *s, dx_adapter_kind kind)
{
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_puts(&b, "Your input fields are:\n");
    put_field_descriptions(&b, s, DX_FIELD_INPUT);
    dx__sb_puts(&b, "\nYour output fields are:\n");
    put_field_descriptions(&b, s, DX_FIELD_OUTPUT);
    dx__sb_putc(&b, '\n');

    /* The structure: parts joined by blank lines, then stripped. */
    size_t from = b.len;
    dx__sb_puts(&b, "All interactions will be structured in the following "
                    "way, with the appropriate values filled in.\n\n");
    if (kind == DX_ADAPTER_CHAT) {
        put_structure_blocks(&b, s, DX_FIELD_INPUT);
        dx__sb_puts(&b, "\n\n");
        put_structure_blocks(&b, s, DX_FIELD_OUTPUT);
        dx__sb_puts(&b, "\n\n[[ ## completed ## ]]\n");
    } else {
        dx__sb_puts(&b, "Inputs will have the following structure:\n\n");
        put_structure_blocks(&b, s, DX_FIELD_INPUT);
        dx__sb_puts(&b, "\n\nOutputs will be a JSON object with the "
                        "following fields.\n\n");
        put_output_skeleton(&b, s);
    }
    sb_strip_from(&b, from);
    dx__sb_putc(&b, '\n');
    put_task(&b, s);
    return dx__sb_take(&b);
}

static char *make_chat_system(const dx_signature *s, void *ud)
{
    (void)ud;
    return render_system(s, DX_ADAPTER_CHAT);
}

static char *make_json_system(const dx_signature *s, void *ud)
{
    (void)ud;
    return render_system(s, DX_ADAPTER_JSON);
}

const char *dx_adapter_system_message(dx_adapter_kind kind,
                                      const dx_signature *s)
{
    if (!s)
        return NULL;
    dx__pyjson_init();
    switch (kind) {
    case DX_ADAPTER_CHAT:
        return dx_signature_cached(s, SLOT_CHAT_SYSTEM, make_chat_system, NULL);
    case DX_ADAPTER_JSON:
        return dx_signature_cached(s, SLOT_JSON_SYSTEM, make_json_system, NULL);
    }
    return NULL;
}

/* A field marker: before, the field's name, after. Every request writes a
 * few, and three puts cost a fraction of a printf. */
static void put_marker(dx__sb *b, const char *before, const char *name,
                       const char *after)
{
    dx__sb_puts(b, before);
    dx__sb_puts(b, name);
    dx__sb_puts(b, after);
}

/* ---- user and assistant messages --------------------------------------- */

static void put_output_requirements(dx__sb *b, dx_adapter_kind kind,
                                    const dx_signature *s)
{
    size_t n = dx_signature_n_outputs(s);
    if (kind == DX_ADAPTER_CHAT)
        dx__sb_puts(b, "Respond with the corresponding output fields, "
                       "starting with the field ");
    else
        dx__sb_puts(b, "Respond with a JSON object in the following order of "
                       "fields: ");
    for (size_t i = 0; i < n; i++) {
        const dx_field *f = dx_signature_output(s, i);
        if (i)
            dx__sb_puts(b, ", then ");
        if (kind == DX_ADAPTER_CHAT)
            put_marker(b, "`[[ ## ", f->name, " ## ]]`");
        else
            put_marker(b, "`", f->name, "`");
        if (!type_is_str(f->type)) {
            dx__sb_puts(b, " (must be formatted as a valid Python ");
            put_type_name(b, f->type);
            dx__sb_putc(b, ')');
        }
    }
    if (kind == DX_ADAPTER_CHAT)
        dx__sb_puts(b, ", and then ending with the marker for "
                       "`[[ ## completed ## ]]`.");
    else
        dx__sb_putc(b, '.');
}

/* format_user_message_content: [prefix] + input blocks + [requirements],
 * joined by blank lines and stripped. */
static void put_user_content(dx__sb *b, dx_adapter_kind kind,
                             const dx_signature *s, const dx_example *values,
                             const char *prefix, bool main_request)
{
    size_t from = b->len;
    dx__sb_puts(b, prefix ? prefix : "");
    size_t n = dx_signature_n_inputs(s);
    for (size_t i = 0; i < n; i++) {
        const dx_field *f = dx_signature_input(s, i);
        if (!values || !dx_example_has(values, f->name))
            continue;
        put_marker(b, "\n\n[[ ## ", f->name, " ## ]]\n");
        put_value(b, f, dx_example_get(values, f->name));
    }
    if (main_request) {
        dx__sb_puts(b, "\n\n");
        put_output_requirements(b, kind, s);
    }
    dx__sb_puts(b, "\n\n"); /* the empty suffix part */
    sb_strip_from(b, from);
}

/* format_assistant_message_content. */
static void put_assistant_content(dx__sb *b, dx_adapter_kind kind,
                                  const dx_signature *s,
                                  const dx_example *values, const char *missing)
{
    size_t n = dx_signature_n_outputs(s);
    if (kind == DX_ADAPTER_JSON) {
        cJSON *o = cJSON_CreateObject();
        if (!o) {
            b->oom = true;
            return;
        }
        for (size_t i = 0; i < n; i++) {
            const dx_field *f = dx_signature_output(s, i);
            const cJSON *v = values ? dx_example_get(values, f->name) : NULL;
            cJSON *item = v ? cJSON_Duplicate(v, true)
                            : (missing ? cJSON_CreateString(missing)
                                       : cJSON_CreateNull());
            if (!item || !cJSON_AddItemToObject(o, f->name, item)) {
                cJSON_Delete(item);
                b->oom = true;
                break;
            }
        }
        dx__pyjson_dump(b, o, 2);
        cJSON_Delete(o);
        return;
    }
    size_t from = b->len;
    for (size_t i = 0; i < n; i++) {
        const dx_field *f = dx_signature_output(s, i);
        if (i)
            dx__sb_puts(b, "\n\n");
        dx__sb_printf(b, "[[ ## %s ## ]]\n", f->name);
        const cJSON *v = values ? dx_example_get(values, f->name) : NULL;
        if (v)
            put_value(b, f, v);
        else if (missing)
            dx__sb_puts(b, missing);
        else
            dx__sb_puts(b, "None");
    }
    sb_strip_from(b, from);
    dx__sb_puts(b, "\n\n[[ ## completed ## ]]\n");
}

int dx_adapter_user_content(dx_adapter_kind kind, const dx_signature *s,
                            const dx_example *values, const char *prefix,
                            bool main_request, char **out)
{
    if (!s || !out)
        return DX_EINVAL;
    dx__pyjson_init();
    dx__sb b;
    dx__sb_init(&b);
    put_user_content(&b, kind, s, values, prefix, main_request);
    if (b.oom || !dx__sb_cstr(&b)) {
        dx__sb_free(&b);
        return DX_ENOMEM;
    }
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

int dx_adapter_assistant_content(dx_adapter_kind kind, const dx_signature *s,
                                 const dx_example *values, const char *missing,
                                 char **out)
{
    if (!s || !out)
        return DX_EINVAL;
    dx__pyjson_init();
    dx__sb b;
    dx__sb_init(&b);
    put_assistant_content(&b, kind, s, values, missing);
    if (b.oom || !dx__sb_cstr(&b)) {
        dx__sb_free(&b);
        return DX_ENOMEM;
    }
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

/* ---- the conversation -------------------------------------------------- */

/* A demo value counts as given when present and not None. */
static bool demo_has(const dx_example *d, const char *key)
{
    const cJSON *v = dx_example_get(d, key);
    return v && !cJSON_IsNull(v);
}

static bool demo_complete(const dx_signature *s, const dx_example *d)
{
    for (size_t i = 0; i < dx_signature_n_fields(s); i++)
        if (!demo_has(d, dx_signature_field(s, i)->name))
            return false;
    return true;
}

static bool demo_has_role(const dx_signature *s, const dx_example *d,
                          dx_field_role role)
{
    for (size_t i = 0; i < dx_signature_n_fields(s); i++) {
        const dx_field *f = dx_signature_field(s, i);
        if (f->role == role && dx_example_has(d, f->name))
            return true;
    }
    return false;
}

static int add_msg(dx_lm_request *req, dx_lm_role role, dx__sb *b)
{
    const char *text = dx__sb_cstr(b);
    int rc = (b->oom || !text) ? DX_ENOMEM
                               : dx_lm_request_add_message(req, role, text);
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
    return rc;
}

static int json_response_format(const dx_signature *s, dx_lm_request *req);

int dx_adapter_format(dx_adapter_kind kind, const dx_signature *s,
                      const dx_example *const *demos, size_t n_demos,
                      const dx_example *inputs, dx_lm_request *req,
                      dx_diag *diag)
{
    if (!s || !req || (n_demos && !demos) ||
        (kind != DX_ADAPTER_CHAT && kind != DX_ADAPTER_JSON))
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "%s: invalid arguments",
                           dx_adapter_name(kind));
    const char *system = dx_adapter_system_message(kind, s);
    if (!system)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    int rc = dx_lm_request_add_message(req, DX_LM_SYSTEM, system);
    if (rc != DX_OK)
        return rc;

    dx__sb b;
    dx__sb_init(&b);
    /* Incomplete demos (at least one input and one output given) first,
     * then complete ones; demos with neither are dropped, as DSPy. */
    for (int pass = 0; pass < 2 && rc == DX_OK; pass++) {
        for (size_t i = 0; i < n_demos && rc == DX_OK; i++) {
            const dx_example *d = demos[i];
            if (!d)
                continue;
            bool complete = demo_complete(s, d);
            if (pass == 0 &&
                (complete || !demo_has_role(s, d, DX_FIELD_INPUT) ||
                 !demo_has_role(s, d, DX_FIELD_OUTPUT)))
                continue;
            if (pass == 1 && !complete)
                continue;
            put_user_content(&b, kind, s, d,
                             pass == 0 ? INCOMPLETE_DEMO_PREFIX : "", false);
            rc = add_msg(req, DX_LM_USER, &b);
            if (rc != DX_OK)
                break;
            put_assistant_content(&b, kind, s, d,
                                  pass == 0 ? MISSING_IN_INCOMPLETE_DEMO
                                            : MISSING_IN_HISTORY);
            rc = add_msg(req, DX_LM_ASSISTANT, &b);
        }
    }
    if (rc == DX_OK) {
        put_user_content(&b, kind, s, inputs, "", true);
        /* DSPy leaves out an empty final user message. */
        if (b.len > 0 || b.oom)
            rc = add_msg(req, DX_LM_USER, &b);
    }
    dx__sb_free(&b);
    if (rc == DX_OK && kind == DX_ADAPTER_JSON)
        rc = json_response_format(s, req);
    if (rc != DX_OK)
        return dx_diag_set(diag, rc, 0, 0, "%s: formatting failed: %s",
                           dx_adapter_name(kind), dx_strerror(rc));
    return DX_OK;
}

/* ---- structured output schema ----------------------------------------- */

/* Open types (a dict or Any anywhere) cannot be described to a strict
 * structured-output schema: DSPy falls back to JSON-object mode. */
static bool type_is_open(const dx_type *t)
{
    if (t->kind == DX_TYPE_DICT || t->kind == DX_TYPE_ANY)
        return true;
    if (t->kind == DX_TYPE_LIST && t->n_args == 0)
        return true;
    for (size_t i = 0; i < t->n_args; i++)
        if (type_is_open(t->args[i]))
            return true;
    return false;
}

/* Make every object schema strict: all properties required, no others. */
static bool enforce_required(cJSON *sch)
{
    if (!cJSON_IsObject(sch))
        return true;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(sch, "type");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "object") == 0) {
        cJSON *props = cJSON_GetObjectItemCaseSensitive(sch, "properties");
        cJSON *req = cJSON_CreateArray();
        if (!req)
            return false;
        if (props) {
            cJSON *p;
            cJSON_ArrayForEach(p, props)
            {
                cJSON *name = cJSON_CreateString(p->string);
                if (!name) {
                    cJSON_Delete(req);
                    return false;
                }
                cJSON_AddItemToArray(req, name);
                if (!enforce_required(p)) {
                    cJSON_Delete(req);
                    return false;
                }
            }
        } else if (!cJSON_AddObjectToObject(sch, "properties")) {
            cJSON_Delete(req);
            return false;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(sch, "required");
        if (!cJSON_AddItemToObject(sch, "required", req)) {
            cJSON_Delete(req);
            return false;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(sch, "additionalProperties");
        if (!cJSON_AddFalseToObject(sch, "additionalProperties"))
            return false;
    }
    cJSON *items = cJSON_GetObjectItemCaseSensitive(sch, "items");
    if (items && !enforce_required(items))
        return false;
    cJSON *any = cJSON_GetObjectItemCaseSensitive(sch, "anyOf");
    cJSON *a;
    cJSON_ArrayForEach(a, any)
    {
        if (!enforce_required(a))
            return false;
    }
    cJSON *defs = cJSON_GetObjectItemCaseSensitive(sch, "$defs");
    cJSON_ArrayForEach(a, defs)
    {
        if (!enforce_required(a))
            return false;
    }
    return true;
}

/* pydantic's default title of a field: words of the name capitalised. */
static void put_title(dx__sb *b, const char *name)
{
    bool start = true;
    for (const char *c = name; *c; c++) {
        if (*c == '_') {
            dx__sb_putc(b, ' ');
            start = true;
            continue;
        }
        dx__sb_putc(b, (char)(start ? toupper((unsigned char)*c)
                                    : tolower((unsigned char)*c)));
        start = false;
    }
}

/* The response schema's text (dx_malloc'd), "" when an output's type is
 * open; NULL when out of memory. It depends on the signature alone, so the
 * adapter keeps it in the signature's cache: built per call it was a
 * tenth of an evaluated example's CPU outside the transport. */
static char *make_json_schema(const dx_signature *s, void *ud)
{
    (void)ud;
    size_t n = dx_signature_n_outputs(s);
    for (size_t i = 0; i < n; i++)
        if (type_is_open(dx_signature_output(s, i)->type))
            return dx_strdup("");
    cJSON *root = cJSON_CreateObject();
    cJSON *props = root ? cJSON_AddObjectToObject(root, "properties") : NULL;
    cJSON *defs = NULL; /* the object types the fields refer to */
    bool ok = props != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        const dx_field *f = dx_signature_output(s, i);
        char *text = NULL;
        if (dx_type_schema(f->type, &text) != DX_OK) {
            ok = false;
            break;
        }
        cJSON *sch = dx__json_parse(text, strlen(text), NULL, NULL);
        dx_free(text);
        if (!sch) {
            ok = false;
            break;
        }
        /* A field's schema keeps the object types it names in its own
         * "$defs", and its "$ref"s ("#/$defs/Name") are resolved from the
         * document root. Inside the outputs object that root is the
         * response schema's: move the definitions there, or the refs
         * (an Optional or a list of an object type) point at nothing. */
        cJSON *fdefs = cJSON_DetachItemFromObjectCaseSensitive(sch, "$defs");
        if (fdefs && !defs && !(defs = cJSON_CreateObject()))
            ok = false;
        while (ok && fdefs && fdefs->child) {
            cJSON *d = cJSON_DetachItemViaPointer(fdefs, fdefs->child);
            if (cJSON_GetObjectItemCaseSensitive(defs, d->string))
                cJSON_Delete(d); /* the same type, named by another field */
            else if (!cJSON_AddItemToObject(defs, d->string, d)) {
                cJSON_Delete(d);
                ok = false;
            }
        }
        cJSON_Delete(fdefs);
        if (!ok) {
            cJSON_Delete(sch);
            break;
        }
        dx__sb t;
        dx__sb_init(&t);
        put_title(&t, f->name);
        const char *title = dx__sb_cstr(&t);
        ok = title != NULL;
        if (ok && cJSON_IsObject(sch) &&
            !cJSON_GetObjectItemCaseSensitive(sch, "title"))
            ok = cJSON_AddStringToObject(sch, "title", title) != NULL;
        dx__sb_free(&t);
        if (!ok || !cJSON_AddItemToObject(props, f->name, sch)) {
            cJSON_Delete(sch);
            ok = false;
        }
    }
    if (ok && defs) {
        ok = cJSON_AddItemToObject(root, "$defs", defs);
        if (ok)
            defs = NULL;
    }
    cJSON_Delete(defs);
    ok = ok && cJSON_AddStringToObject(root, "title", "DSPyProgramOutputs") &&
         cJSON_AddStringToObject(root, "type", "object") &&
         enforce_required(root);
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    char *mine = text ? dx_strdup(text) : NULL;
    cJSON_free(text);
    return mine;
}

static int json_response_format(const dx_signature *s, dx_lm_request *req)
{
    const char *text =
        dx_signature_cached(s, SLOT_JSON_SCHEMA, make_json_schema, NULL);
    if (!text)
        return DX_ENOMEM;
    if (!*text) {
        req->format = DX_LM_FORMAT_JSON_OBJECT;
        return DX_OK;
    }
    return dx_lm_request_set_schema(req, "DSPyProgramOutputs", text, true);
}

/* ---- parsing values ---------------------------------------------------- */

static int type_error(dx_diag *diag, const dx_field *f, const char *text,
                      size_t len, const char *why)
{
    char *tname = NULL;
    dx_type_name(f->type, &tname);
    int shown = len > 200 ? 200 : (int)len;
    dx_diag_set(diag, DX_ETYPE, 0, 0,
                "field \"%s\" (%s): cannot use \"%.*s%s\": %s", f->name,
                tname ? tname : "?", shown, text, len > 200 ? "..." : "", why);
    dx_free(tname);
    return DX_ETYPE;
}

/* Python-style stripped copy of text as a C string (dx_malloc'd). */
static char *strip_dup(const char *text, size_t len)
{
    const char *p = text;
    size_t n = len;
    py_strip(&p, &n);
    char *s = dx_malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* pydantic's lax str → int: optional sign, digits, surrounding space. */
static bool text_to_int(const char *s, double *out)
{
    const char *p = s;
    size_t n = strlen(s);
    py_strip(&p, &n);
    if (n == 0 || n > 40)
        return false;
    char buf[48];
    memcpy(buf, p, n);
    buf[n] = '\0';
    size_t i = (buf[0] == '+' || buf[0] == '-') ? 1 : 0;
    if (i == n)
        return false;
    for (size_t k = i; k < n; k++)
        if (!isdigit((unsigned char)buf[k]) && buf[k] != '_')
            return false;
    errno = 0;
    double v = strtod(buf, NULL);
    if (strchr(buf, '_'))
        return false;
    *out = v;
    return true;
}

static bool text_to_float(const char *s, double *out)
{
    const char *p = s;
    size_t n = strlen(s);
    py_strip(&p, &n);
    if (n == 0 || n > 64)
        return false;
    char buf[72];
    memcpy(buf, p, n);
    buf[n] = '\0';
    char *end = NULL;
    double v = strtod(buf, &end);
    if (end != buf + n)
        return false;
    *out = v;
    return true;
}

static int bool_from_text(const char *s)
{
    static const char *const yes[] = {"1", "on", "t", "true", "y", "yes"};
    static const char *const no[] = {"0", "off", "f", "false", "n", "no"};
    const char *p = s;
    size_t n = strlen(s);
    py_strip(&p, &n);
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++) {
        if (strlen(yes[i]) == n && strncasecmp(p, yes[i], n) == 0)
            return 1;
        if (strlen(no[i]) == n && strncasecmp(p, no[i], n) == 0)
            return 0;
    }
    return -1;
}

static bool json_equal_choice(const cJSON *a, const cJSON *b)
{
    return cJSON_Compare(a, b, true);
}

/* Validate / convert a JSON value against t (pydantic's lax mode, the
 * parts DSPy users meet). Returns a new value, or NULL with *why set to
 * what is wrong with v, or NULL with *why untouched on OOM (so callers
 * start with *why NULL). */
static cJSON *validate(const dx_type *t, const cJSON *v, const char **why);

static cJSON *validate_literal(const dx_type *t, const cJSON *v,
                               const char **why)
{
    const cJSON *c;
    cJSON_ArrayForEach(c, t->choices)
    {
        if (json_equal_choice(c, v))
            return cJSON_Duplicate(c, true);
    }
    if (cJSON_IsString(v)) {
        /* Tolerate quotes and Literal[...] / str[...] wrappers, and a choice
         * written as its Python str (1, True). */
        const char *p = v->valuestring;
        size_t n = strlen(p);
        py_strip(&p, &n);
        if ((n > 9 && strncmp(p, "Literal[", 8) == 0 && p[n - 1] == ']')) {
            p += 8;
            n -= 9;
        } else if (n > 5 && strncmp(p, "str[", 4) == 0 && p[n - 1] == ']') {
            p += 4;
            n -= 5;
        }
        if (n > 1 && p[0] == p[n - 1] && (p[0] == '"' || p[0] == '\'')) {
            p++;
            n -= 2;
        }
        cJSON_ArrayForEach(c, t->choices)
        {
            dx__sb s;
            dx__sb_init(&s);
            dx__pystr(&s, c);
            const char *cs = dx__sb_cstr(&s);
            if (!cs) { /* OOM: *why stays unset */
                dx__sb_free(&s);
                return NULL;
            }
            bool eq = strlen(cs) == n && memcmp(cs, p, n) == 0;
            dx__sb_free(&s);
            if (eq)
                return cJSON_Duplicate(c, true);
        }
    }
    *why = "not one of the allowed values";
    return NULL;
}

static cJSON *validate_number(const dx_type *t, const cJSON *v,
                              const char **why)
{
    double d;
    if (cJSON_IsNumber(v))
        d = v->valuedouble;
    else if (cJSON_IsString(v) &&
             (t->kind == DX_TYPE_INT ? text_to_int(v->valuestring, &d)
                                     : text_to_float(v->valuestring, &d)))
        ;
    else {
        *why = t->kind == DX_TYPE_INT ? "not an integer" : "not a number";
        return NULL;
    }
    if (t->kind == DX_TYPE_INT) {
        if (!isfinite(d) || d != floor(d)) {
            *why = "not an integer (it has a fractional part)";
            return NULL;
        }
        return cJSON_CreateNumber(d);
    }
    cJSON *out = cJSON_CreateNumber(d);
    if (out)
        out->type |= DX__JSON_FLOAT;
    return out;
}

static cJSON *validate(const dx_type *t, const cJSON *v, const char **why)
{
    switch (t->kind) {
    case DX_TYPE_ANY:
        return cJSON_Duplicate(v, true);
    case DX_TYPE_STR:
        if (cJSON_IsString(v))
            return cJSON_Duplicate(v, true);
        *why = "not a string";
        return NULL;
    case DX_TYPE_INT:
    case DX_TYPE_FLOAT:
        return validate_number(t, v, why);
    case DX_TYPE_BOOL: {
        int b = -1;
        if (cJSON_IsBool(v))
            b = cJSON_IsTrue(v);
        else if (cJSON_IsNumber(v) &&
                 (v->valuedouble == 0 || v->valuedouble == 1))
            b = v->valuedouble == 1;
        else if (cJSON_IsString(v))
            b = bool_from_text(v->valuestring);
        if (b < 0) {
            *why = "not a boolean";
            return NULL;
        }
        return cJSON_CreateBool(b);
    }
    case DX_TYPE_LITERAL:
        return validate_literal(t, v, why);
    case DX_TYPE_OPTIONAL:
        if (cJSON_IsNull(v))
            return cJSON_CreateNull();
        return validate(t->args[0], v, why);
    case DX_TYPE_LIST: {
        if (!cJSON_IsArray(v)) {
            *why = "not a list";
            return NULL;
        }
        cJSON *out = cJSON_CreateArray();
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            cJSON *x = t->n_args ? validate(t->args[0], it, why)
                                 : cJSON_Duplicate(it, true);
            if (!x) {
                cJSON_Delete(out);
                return NULL;
            }
            if (out)
                cJSON_AddItemToArray(out, x);
            else
                cJSON_Delete(x);
        }
        return out;
    }
    case DX_TYPE_DICT: {
        if (!cJSON_IsObject(v)) {
            *why = "not a dict";
            return NULL;
        }
        cJSON *out = cJSON_CreateObject();
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            cJSON *x = t->n_args == 2 ? validate(t->args[1], it, why)
                                      : cJSON_Duplicate(it, true);
            if (!x) {
                cJSON_Delete(out);
                return NULL;
            }
            /* No room for the key: OOM (*why unset), not a dict that
             * quietly lost a member. */
            if (!out || !cJSON_AddItemToObject(out, it->string, x)) {
                cJSON_Delete(x);
                cJSON_Delete(out);
                return NULL;
            }
        }
        return out;
    }
    case DX_TYPE_OBJECT: {
        if (!cJSON_IsObject(v)) {
            *why = "not a JSON object";
            return NULL;
        }
        /* Required properties must be present (the schema's other rules
         * are the provider's and the user's metric's business). */
        const cJSON *req =
            cJSON_GetObjectItemCaseSensitive(t->schema, "required");
        const cJSON *r;
        cJSON_ArrayForEach(r, req)
        {
            if (cJSON_IsString(r) &&
                !cJSON_GetObjectItemCaseSensitive(v, r->valuestring)) {
                *why = "a required property is missing";
                return NULL;
            }
        }
        return cJSON_Duplicate(v, true);
    }
    }
    *why = "unsupported type";
    return NULL;
}

/* parse_value for text (ChatAdapter sections, and strings in JSON). */
static int parse_text_value(const dx_field *f, const char *text, size_t len,
                            cJSON **out, dx_diag *diag)
{
    const dx_type *t = f->type;
    if (t->kind == DX_TYPE_STR) {
        cJSON *s = NULL;
        char *copy = dx_malloc(len + 1);
        if (copy) {
            memcpy(copy, text, len);
            copy[len] = '\0';
            s = cJSON_CreateString(copy);
            dx_free(copy);
        }
        if (!s)
            return DX_ENOMEM;
        *out = s;
        return DX_OK;
    }
    char *stripped = strip_dup(text, len);
    if (!stripped)
        return DX_ENOMEM;
    cJSON *candidate = NULL;
    if (t->kind == DX_TYPE_LITERAL ||
        (t->kind == DX_TYPE_OPTIONAL && type_is_str(t->args[0]))) {
        /* Literals are matched on the text; Optional[str] keeps text. */
        if (t->kind == DX_TYPE_OPTIONAL &&
            (strcmp(stripped, "None") == 0 || strcmp(stripped, "null") == 0))
            candidate = cJSON_CreateNull();
        else
            candidate = cJSON_CreateString(stripped);
    } else {
        bool oom = false;
        candidate = dx__json_repair_oom(
            stripped, strlen(stripped),
            t->kind == DX_TYPE_OBJECT || t->kind == DX_TYPE_DICT, &oom);
        if (!candidate && !oom)
            candidate = cJSON_CreateString(stripped);
    }
    if (!candidate) {
        dx_free(stripped);
        return DX_ENOMEM;
    }
    const char *why = NULL;
    cJSON *v = validate(t, candidate, &why);
    cJSON_Delete(candidate);
    if (!v && !why) {
        dx_free(stripped);
        return DX_ENOMEM;
    }
    if (!v) {
        int rc = type_error(diag, f, stripped, strlen(stripped), why);
        dx_free(stripped);
        return rc;
    }
    dx_free(stripped);
    *out = v;
    return DX_OK;
}

int dx_adapter_parse_value(const dx_field *f, const char *text, size_t len,
                           cJSON **out, dx_diag *diag)
{
    if (!f || !text || !out)
        return DX_EINVAL;
    dx__pyjson_init();
    return parse_text_value(f, text, len, out, diag);
}

/* parse_value for a value already JSON (JSONAdapter): member v of the
 * parsed object obj, which the result may take v out of. */
static int parse_json_value(const dx_field *f, cJSON *obj, cJSON *v,
                            cJSON **out, dx_diag *diag)
{
    const dx_type *t = f->type;
    if (t->kind == DX_TYPE_STR) {
        /* str(value); a str is kept as it is, taken rather than copied */
        if (cJSON_IsString(v)) {
            *out = cJSON_DetachItemViaPointer(obj, v);
        } else {
            dx__sb b;
            dx__sb_init(&b);
            dx__pystr(&b, v);
            const char *s = dx__sb_cstr(&b);
            *out = s ? cJSON_CreateString(s) : NULL;
            dx__sb_free(&b);
        }
        return *out ? DX_OK : DX_ENOMEM;
    }
    if (cJSON_IsString(v) && t->kind != DX_TYPE_LITERAL)
        return parse_text_value(f, v->valuestring, strlen(v->valuestring), out,
                                diag);
    const char *why = NULL;
    cJSON *x = validate(t, v, &why);
    if (!x && !why)
        return DX_ENOMEM;
    if (!x) {
        dx__sb b;
        dx__sb_init(&b);
        dx__pystr(&b, v);
        const char *s = dx__sb_cstr(&b);
        int rc = type_error(diag, f, s ? s : "", s ? strlen(s) : 0, why);
        dx__sb_free(&b);
        return rc;
    }
    *out = x;
    return DX_OK;
}

/* ---- parsing answers --------------------------------------------------- */

/* Fill missing optional outputs (a default, or None for Optional), then
 * check that every output is there. */
static int complete_outputs(dx_adapter_kind kind, const dx_signature *s,
                            cJSON **found, dx_example **out, const char *text,
                            size_t len, dx_diag *diag)
{
    size_t n = dx_signature_n_outputs(s);
    for (size_t i = 0; i < n; i++) {
        const dx_field *f = dx_signature_output(s, i);
        if (found[i])
            continue;
        if (f->default_value)
            found[i] = cJSON_Duplicate(f->default_value, true);
        else if (type_allows_none(f->type))
            found[i] = cJSON_CreateNull();
        else
            continue;
        if (!found[i])
            return DX_ENOMEM;
    }
    dx__sb missing, got;
    dx__sb_init(&missing);
    dx__sb_init(&got);
    for (size_t i = 0; i < n; i++) {
        dx__sb *b = found[i] ? &got : &missing;
        if (b->len)
            dx__sb_puts(b, ", ");
        dx__sb_puts(b, dx_signature_output(s, i)->name);
    }
    if (missing.len) {
        int shown = len > 300 ? 300 : (int)len;
        dx_diag_set(diag, DX_EPARSE, 0, 0,
                    "%s: the LM response lacks output field%s %s (found: %s); "
                    "response: \"%.*s%s\"",
                    dx_adapter_name(kind),
                    strchr(dx__sb_cstr(&missing), ',') ? "s" : "",
                    dx__sb_cstr(&missing) ? dx__sb_cstr(&missing) : "",
                    got.len ? dx__sb_cstr(&got) : "none", shown, text,
                    len > 300 ? "..." : "");
        dx__sb_free(&missing);
        dx__sb_free(&got);
        return DX_EPARSE;
    }
    dx__sb_free(&missing);
    dx__sb_free(&got);
    dx_example *ex = dx_example_new();
    if (!ex)
        return DX_ENOMEM;
    /* The values were built for this example: it takes them. */
    for (size_t i = 0; i < n; i++) {
        cJSON *v = found[i];
        found[i] = NULL;
        int rc = dx__example_set_taking(ex, dx_signature_output(s, i)->name, v);
        if (rc != DX_OK) {
            dx_example_free(ex);
            return rc;
        }
    }
    *out = ex;
    return DX_OK;
}

/* Is there a section header "[[ ## name ## ]]" at the start of p (after
 * Python whitespace was stripped)? Sets the name span and the header's
 * length. */
static bool match_header(const char *p, size_t n, span *name, size_t *hlen)
{
    if (n < 12 || memcmp(p, "[[ ## ", 6) != 0)
        return false;
    size_t i = 6;
    while (i < n && (isalnum((unsigned char)p[i]) || p[i] == '_' ||
                     (unsigned char)p[i] >= 0x80))
        i++;
    if (i == 6 || n - i < 6 || memcmp(p + i, " ## ]]", 6) != 0)
        return false;
    name->p = p + 6;
    name->n = i - 6;
    *hlen = i + 6;
    return true;
}

static int output_index(const dx_signature *s, const char *name, size_t n)
{
    for (size_t i = 0; i < dx_signature_n_outputs(s); i++) {
        const char *fn = dx_signature_output(s, i)->name;
        if (strlen(fn) == n && memcmp(fn, name, n) == 0)
            return (int)i;
    }
    return -1;
}

static int parse_chat(const dx_signature *s, const char *text, size_t len,
                      cJSON **found, dx_diag *diag)
{
    bool oom = false;
    size_t nlines = 0;
    span *lines = py_splitlines(text, len, &nlines, &oom);
    if (oom)
        return DX_ENOMEM;
    int rc = DX_OK;
    size_t i = 0;
    /* Text before the first header belongs to no field. */
    while (i < nlines && rc == DX_OK) {
        const char *p = lines[i].p;
        size_t n = lines[i].n;
        py_strip(&p, &n);
        span name;
        size_t hlen;
        if (!match_header(p, n, &name, &hlen)) {
            i++;
            continue;
        }
        /* A section: the rest of the header line, then the lines up to
         * the next header. */
        int idx = output_index(s, name.p, name.n);
        dx__sb body;
        dx__sb_init(&body);
        const char *rest = p + hlen;
        size_t rest_n = n - hlen;
        py_strip(&rest, &rest_n);
        bool first = true;
        if (rest_n) {
            dx__sb_put(&body, rest, rest_n);
            first = false;
        }
        for (i++; i < nlines; i++) {
            const char *q = lines[i].p;
            size_t qn = lines[i].n;
            py_strip(&q, &qn);
            span nm;
            size_t hl;
            if (match_header(q, qn, &nm, &hl))
                break;
            if (!first)
                dx__sb_putc(&body, '\n');
            dx__sb_put(&body, lines[i].p, lines[i].n);
            first = false;
        }
        if (idx >= 0 && !found[idx]) {
            const char *b = body.p ? body.p : "";
            size_t bn = body.len;
            py_strip(&b, &bn);
            if (body.oom)
                rc = DX_ENOMEM;
            else
                rc = parse_text_value(dx_signature_output(s, (size_t)idx), b,
                                      bn, &found[idx], diag);
            if (rc == DX_ETYPE)
                dx_diag_prefix(diag, "ChatAdapter");
        }
        dx__sb_free(&body);
    }
    dx_free(lines);
    return rc;
}

static int parse_json(const dx_signature *s, const char *text, size_t len,
                      cJSON **found, dx_diag *diag)
{
    bool oom = false;
    cJSON *obj = dx__json_repair_oom(text, len, true, &oom);
    if (oom)
        return DX_ENOMEM;
    if (!obj || !cJSON_IsObject(obj)) {
        cJSON_Delete(obj);
        int shown = len > 300 ? 300 : (int)len;
        return dx_diag_set(diag, DX_EPARSE, 0, 0,
                           "JSONAdapter: the LM response is not a JSON object; "
                           "response: \"%.*s%s\"",
                           shown, text, len > 300 ? "..." : "");
    }
    int rc = DX_OK;
    cJSON *next;
    /* Not cJSON_ArrayForEach: a member may be taken out of obj. */
    for (cJSON *m = obj->child; m; m = next) {
        next = m->next;
        if (!m->string)
            continue;
        int idx = output_index(s, m->string, strlen(m->string));
        if (idx < 0 || found[idx])
            continue;
        rc = parse_json_value(dx_signature_output(s, (size_t)idx), obj, m,
                              &found[idx], diag);
        if (rc != DX_OK) {
            if (rc == DX_ETYPE)
                dx_diag_prefix(diag, "JSONAdapter");
            break;
        }
    }
    cJSON_Delete(obj);
    return rc;
}

int dx_adapter_parse(dx_adapter_kind kind, const dx_signature *s,
                     const char *text, size_t len, dx_example **out,
                     dx_diag *diag)
{
    if (!s || !out || (!text && len))
        return DX_EINVAL;
    dx__pyjson_init();
    *out = NULL;
    const char *p = text ? text : "";
    size_t n = len;
    py_strip(&p, &n);
    if (n == 0)
        return dx_diag_set(diag, DX_EPARSE, 0, 0,
                           "%s: the LM returned an empty response",
                           dx_adapter_name(kind));
    size_t nout = dx_signature_n_outputs(s);
    cJSON **found = dx_calloc(nout ? nout : 1, sizeof *found);
    if (!found)
        return DX_ENOMEM;
    int rc;
    if (kind == DX_ADAPTER_CHAT)
        rc = parse_chat(s, text, len, found, diag);
    else if (kind == DX_ADAPTER_JSON)
        rc = parse_json(s, text, len, found, diag);
    else
        rc = DX_EINVAL;
    if (rc == DX_OK)
        rc = complete_outputs(kind, s, found, out, text, len, diag);
    for (size_t i = 0; i < nout; i++)
        cJSON_Delete(found[i]);
    dx_free(found);
    return rc;
}
