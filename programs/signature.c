/*
 * signature.c — signatures and field types (see signature.h): the parser
 * of DSPy's string form and of type expressions, the type names and JSON
 * schemas DSPy puts in prompts, infer_prefix, the immutable derivations
 * (insert, delete, instructions), equality, dump/load of state, and the
 * per-signature cache of renderings.
 *
 * The string form is parsed the way DSPy reads it (as the argument list of
 * a Python function), but by hand, so an error can say what was expected at
 * which column. Instructions are kept as DSPy's `instructions` property
 * returns them (inspect.cleandoc of the text), so what the adapters render
 * is what Python renders.
 */
#include "dspex/signature.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "pyjson.h"

struct dx_signature {
    atomic_size_t refs;
    char *instructions;
    dx_field *fields; /* inputs first, then outputs */
    size_t n_fields;
    size_t n_inputs;
    _Atomic(char *) cache[DX_SIGNATURE_CACHE_SLOTS];
};

/* ---- types: making, copying, comparing -------------------------------- */

static dx_type *type_alloc(dx_type_kind kind)
{
    dx_type *t = dx_calloc(1, sizeof *t);
    if (t)
        t->kind = kind;
    return t;
}

void dx_type_free(dx_type *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_args; i++)
        dx_type_free(t->args[i]);
    dx_free(t->args);
    if (t->choices)
        cJSON_Delete(t->choices);
    dx_free(t->name);
    if (t->schema)
        cJSON_Delete(t->schema);
    dx_free(t);
}

/* Gives t the n types in a (taken, also on failure). */
static int type_set_args(dx_type *t, dx_type **a, size_t n)
{
    t->args = dx_calloc(n, sizeof *t->args);
    if (!t->args) {
        for (size_t i = 0; i < n; i++)
            dx_type_free(a[i]);
        return DX_ENOMEM;
    }
    memcpy(t->args, a, n * sizeof *a);
    t->n_args = n;
    return DX_OK;
}

dx_type *dx_type_copy(const dx_type *t)
{
    if (!t)
        return NULL;
    dx_type *c = type_alloc(t->kind);
    if (!c)
        return NULL;
    c->pep604 = t->pep604;
    c->none_first = t->none_first;
    c->typing_bare = t->typing_bare;
    if (t->n_args) {
        c->args = dx_calloc(t->n_args, sizeof *c->args);
        if (!c->args)
            goto fail;
        c->n_args = t->n_args;
        for (size_t i = 0; i < t->n_args; i++)
            if (!(c->args[i] = dx_type_copy(t->args[i])))
                goto fail;
    }
    if (t->choices && !(c->choices = cJSON_Duplicate(t->choices, true)))
        goto fail;
    if (t->name && !(c->name = dx_strdup(t->name)))
        goto fail;
    if (t->schema && !(c->schema = cJSON_Duplicate(t->schema, true)))
        goto fail;
    return c;
fail:
    dx_type_free(c);
    return NULL;
}

static bool choice_same(const cJSON *a, const cJSON *b)
{
    if ((a->type & 0xFF) != (b->type & 0xFF))
        return false;
    if (cJSON_IsString(a))
        return strcmp(a->valuestring, b->valuestring) == 0;
    if (cJSON_IsNumber(a))
        return a->valuedouble == b->valuedouble;
    return true; /* true/false: the type says it all */
}

static bool choices_have(const cJSON *arr, const cJSON *v)
{
    for (const cJSON *c = arr ? arr->child : NULL; c; c = c->next)
        if (choice_same(c, v))
            return true;
    return false;
}

/* Like Python's typing, Literal['a', 'b'] == Literal['b', 'a'] and
 * Optional[T] == T | None: how a type was written does not matter here. */
bool dx_type_equal(const dx_type *a, const dx_type *b)
{
    if (a == b)
        return true;
    if (!a || !b || a->kind != b->kind || a->n_args != b->n_args)
        return false;
    for (size_t i = 0; i < a->n_args; i++)
        if (!dx_type_equal(a->args[i], b->args[i]))
            return false;
    if (a->kind == DX_TYPE_LITERAL) {
        if (cJSON_GetArraySize(a->choices) != cJSON_GetArraySize(b->choices))
            return false;
        for (const cJSON *c = a->choices->child; c; c = c->next)
            if (!choices_have(b->choices, c))
                return false;
    }
    if (a->kind == DX_TYPE_OBJECT)
        return strcmp(a->name, b->name) == 0 &&
               cJSON_Compare(a->schema, b->schema, true);
    return true;
}

dx_type *dx_type_new(dx_type_kind kind)
{
    switch (kind) {
    case DX_TYPE_STR:
    case DX_TYPE_INT:
    case DX_TYPE_FLOAT:
    case DX_TYPE_BOOL:
    case DX_TYPE_ANY:
    case DX_TYPE_LIST:
    case DX_TYPE_DICT:
        return type_alloc(kind);
    default:
        return NULL;
    }
}

dx_type *dx_type_list_of(dx_type *item)
{
    if (!item)
        return NULL;
    dx_type *t = type_alloc(DX_TYPE_LIST);
    if (!t) {
        dx_type_free(item);
        return NULL;
    }
    if (type_set_args(t, &item, 1) != DX_OK) {
        dx_type_free(t);
        return NULL;
    }
    return t;
}

dx_type *dx_type_optional_of(dx_type *inner)
{
    if (!inner || inner->kind == DX_TYPE_OPTIONAL)
        return inner; /* Optional[Optional[T]] is Optional[T] */
    dx_type *t = type_alloc(DX_TYPE_OPTIONAL);
    if (!t) {
        dx_type_free(inner);
        return NULL;
    }
    if (type_set_args(t, &inner, 1) != DX_OK) {
        dx_type_free(t);
        return NULL;
    }
    return t;
}

dx_type *dx_type_literal(const char *const *choices, size_t n)
{
    if (!choices || n == 0)
        return NULL;
    dx__pyjson_init();
    dx_type *t = type_alloc(DX_TYPE_LITERAL);
    if (!t || !(t->choices = cJSON_CreateArray()))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!choices[i])
            goto fail;
        cJSON *s = cJSON_CreateString(choices[i]);
        if (!s)
            goto fail;
        if (choices_have(t->choices, s)) { /* typing drops repeats */
            cJSON_Delete(s);
            continue;
        }
        cJSON_AddItemToArray(t->choices, s);
    }
    return t;
fail:
    dx_type_free(t);
    return NULL;
}

/* The schema text as a JSON object; NULL when it is not one, or on OOM
 * (then *oom is set, when oom is not NULL: a failed allocation must not be
 * reported as a bad schema). */
static cJSON *parse_schema(const char *schema_json, bool *oom)
{
    if (!schema_json)
        return NULL;
    const char *what = NULL;
    cJSON *v =
        dx__json_parse_msg(schema_json, strlen(schema_json), NULL, NULL, &what);
    if (!v && oom && what && strcmp(what, "out of memory") == 0)
        *oom = true;
    if (v && !cJSON_IsObject(v)) {
        cJSON_Delete(v);
        return NULL;
    }
    return v;
}

dx_type *dx_type_object(const char *name, const char *schema_json)
{
    if (!name || !*name)
        return NULL;
    dx__pyjson_init();
    dx_type *t = type_alloc(DX_TYPE_OBJECT);
    if (!t || !(t->name = dx_strdup(name)) ||
        !(t->schema = parse_schema(schema_json, NULL))) {
        dx_type_free(t);
        return NULL;
    }
    return t;
}

/* ---- type names (DSPy's get_annotation_name) -------------------------- */

/* _quoted_string_for_literal_type_annotation: the text goes in raw, only
 * the choice of quotes (and \' when both kinds occur) changes. */
static void put_literal_string(dx__sb *b, const char *s)
{
    bool sq = strchr(s, '\'') != NULL, dq = strchr(s, '"') != NULL;
    if (sq && !dq) {
        dx__sb_putc(b, '"');
        dx__sb_puts(b, s);
        dx__sb_putc(b, '"');
        return;
    }
    dx__sb_putc(b, '\'');
    for (const char *p = s; *p; p++) {
        if (*p == '\'')
            dx__sb_putc(b, '\\');
        dx__sb_putc(b, *p);
    }
    dx__sb_putc(b, '\'');
}

static void put_name(dx__sb *b, const dx_type *t)
{
    switch (t->kind) {
    case DX_TYPE_STR:
        dx__sb_puts(b, "str");
        return;
    case DX_TYPE_INT:
        dx__sb_puts(b, "int");
        return;
    case DX_TYPE_FLOAT:
        dx__sb_puts(b, "float");
        return;
    case DX_TYPE_BOOL:
        dx__sb_puts(b, "bool");
        return;
    case DX_TYPE_ANY:
        dx__sb_puts(b, "Any");
        return;
    case DX_TYPE_OBJECT:
        dx__sb_puts(b, t->name);
        return;
    case DX_TYPE_LIST:
    case DX_TYPE_DICT:
        dx__sb_puts(b, t->kind == DX_TYPE_LIST ? "list" : "dict");
        if (t->n_args == 0 && !t->typing_bare)
            return;
        dx__sb_putc(b, '[');
        for (size_t i = 0; i < t->n_args; i++) {
            if (i)
                dx__sb_puts(b, ", ");
            put_name(b, t->args[i]);
        }
        dx__sb_putc(b, ']');
        return;
    case DX_TYPE_LITERAL:
        dx__sb_puts(b, "Literal[");
        for (const cJSON *c = t->choices ? t->choices->child : NULL; c;
             c = c->next) {
            if (c != t->choices->child)
                dx__sb_puts(b, ", ");
            if (cJSON_IsString(c))
                put_literal_string(b, c->valuestring);
            else
                dx__pystr(b, c);
        }
        dx__sb_putc(b, ']');
        return;
    case DX_TYPE_OPTIONAL:
        dx__sb_puts(b, t->pep604 ? "UnionType[" : "Union[");
        if (t->none_first)
            dx__sb_puts(b, "NoneType, ");
        put_name(b, t->args[0]);
        if (!t->none_first)
            dx__sb_puts(b, ", NoneType");
        dx__sb_putc(b, ']');
        return;
    }
}

int dx_type_name(const dx_type *t, char **out)
{
    if (!t || !out)
        return DX_EINVAL;
    dx__sb b;
    dx__sb_init(&b);
    put_name(&b, t);
    dx__sb_cstr(&b);
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

/* ---- JSON schemas (pydantic's TypeAdapter(T).json_schema()) ------------ */

/* Adds v under key, or deletes v and returns false (OOM, or v NULL from a
 * failed allocation); the caller then deletes the half-made tree. */
static bool add(cJSON *obj, const char *key, cJSON *v)
{
    if (!v)
        return false;
    if (!cJSON_AddItemToObject(obj, key, v)) {
        cJSON_Delete(v);
        return false;
    }
    return true;
}

static cJSON *type_only(const char *type)
{
    cJSON *o = cJSON_CreateObject();
    if (o && !add(o, "type", cJSON_CreateString(type))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *gen(const dx_type *t, cJSON **defs, bool top);

static cJSON *gen_literal(const dx_type *t)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    int n = cJSON_GetArraySize(t->choices);
    cJSON *vals = n == 1 ? cJSON_Duplicate(t->choices->child, true)
                         : cJSON_Duplicate(t->choices, true);
    if (!add(o, n == 1 ? "const" : "enum", vals))
        goto fail;
    /* pydantic names a JSON type only when every choice has the same
     * Python type (bool is not int here). */
    const char *kind = NULL;
    bool same = true;
    for (const cJSON *c = t->choices->child; c; c = c->next) {
        const char *k = cJSON_IsString(c)    ? "string"
                        : cJSON_IsBool(c)    ? "boolean"
                        : dx__json_is_int(c) ? "integer"
                                             : "number";
        if (kind && strcmp(kind, k) != 0)
            same = false;
        kind = k;
    }
    if (same && kind && !add(o, "type", cJSON_CreateString(kind)))
        goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static cJSON *gen_dict(const dx_type *t, cJSON **defs)
{
    cJSON *o = type_only("object");
    if (!o)
        return NULL;
    if (t->n_args != 2) {
        if (!add(o, "additionalProperties", cJSON_CreateTrue()))
            goto fail;
        return o;
    }
    cJSON *ks = gen(t->args[0], defs, false);
    if (!ks)
        goto fail;
    cJSON *vs = gen(t->args[1], defs, false);
    if (!vs) {
        cJSON_Delete(ks);
        goto fail;
    }
    bool kref = cJSON_HasObjectItem(ks, "$ref");
    if (!kref)
        cJSON_DeleteItemFromObjectCaseSensitive(ks, "title");
    cJSON_DeleteItemFromObjectCaseSensitive(vs, "title");
    bool ok;
    if (vs->child) {
        ok = add(o, "additionalProperties", vs);
    } else { /* dict[K, Any]: any value */
        cJSON_Delete(vs);
        ok = add(o, "additionalProperties", cJSON_CreateTrue());
    }
    if (!ok) {
        cJSON_Delete(ks);
        goto fail;
    }
    /* Keys with constraints (a Literal of strings, a model) are kept as
     * propertyNames; plain str keys say nothing. */
    const cJSON *kt = cJSON_GetObjectItemCaseSensitive(ks, "type");
    bool constrained = cJSON_IsString(kt) &&
                       strcmp(kt->valuestring, "string") == 0 &&
                       cJSON_GetArraySize(ks) > 1;
    if (kref || constrained) {
        cJSON_DeleteItemFromObjectCaseSensitive(ks, "type");
        if (!add(o, "propertyNames", ks))
            goto fail;
    } else {
        cJSON_Delete(ks);
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

/* A model below the top is a $ref to #/$defs/<name>, its own definitions
 * hoisted next to it (pydantic's layout). */
static cJSON *gen_object_ref(const dx_type *t, cJSON **defs)
{
    if (!*defs && !(*defs = cJSON_CreateObject()))
        return NULL;
    cJSON *body = cJSON_Duplicate(t->schema, true);
    if (!body)
        return NULL;
    cJSON *inner = cJSON_DetachItemFromObjectCaseSensitive(body, "$defs");
    for (cJSON *d = inner ? inner->child : NULL; d;) {
        cJSON *next = d->next;
        if (!cJSON_HasObjectItem(*defs, d->string)) {
            cJSON *mv = cJSON_DetachItemViaPointer(inner, d);
            char *k = dx_strdup(mv->string);
            if (!k) {
                cJSON_Delete(mv);
                goto fail;
            }
            if (!add(*defs, k, mv)) {
                dx_free(k);
                goto fail;
            }
            dx_free(k);
        }
        d = next;
    }
    cJSON_Delete(inner);
    inner = NULL;
    if (cJSON_GetArraySize(body) == 1 && cJSON_HasObjectItem(body, "$ref"))
        return body; /* already a reference (a recursive model) */
    cJSON *ref = cJSON_CreateObject();
    char path[600];
    snprintf(path, sizeof path, "#/$defs/%s", t->name);
    if (!ref || !add(ref, "$ref", cJSON_CreateString(path))) {
        cJSON_Delete(ref);
        goto fail;
    }
    if (cJSON_HasObjectItem(*defs, t->name)) {
        cJSON_Delete(body);
    } else if (!add(*defs, t->name, body)) {
        cJSON_Delete(ref);
        return NULL;
    }
    return ref;
fail:
    cJSON_Delete(inner);
    cJSON_Delete(body);
    return NULL;
}

static cJSON *gen(const dx_type *t, cJSON **defs, bool top)
{
    switch (t->kind) {
    case DX_TYPE_STR:
        return type_only("string");
    case DX_TYPE_INT:
        return type_only("integer");
    case DX_TYPE_FLOAT:
        return type_only("number");
    case DX_TYPE_BOOL:
        return type_only("boolean");
    case DX_TYPE_ANY:
        return cJSON_CreateObject();
    case DX_TYPE_LITERAL:
        return gen_literal(t);
    case DX_TYPE_DICT:
        return gen_dict(t, defs);
    case DX_TYPE_OBJECT:
        return top ? cJSON_Duplicate(t->schema, true) : gen_object_ref(t, defs);
    case DX_TYPE_LIST: {
        cJSON *o = type_only("array");
        if (!o || !add(o, "items",
                       t->n_args ? gen(t->args[0], defs, false)
                                 : cJSON_CreateObject())) {
            cJSON_Delete(o);
            return NULL;
        }
        return o;
    }
    case DX_TYPE_OPTIONAL: {
        cJSON *o = cJSON_CreateObject(), *any = cJSON_CreateArray();
        cJSON *inner = gen(t->args[0], defs, false);
        cJSON *null = type_only("null");
        if (!o || !any || !inner || !null) {
            cJSON_Delete(o);
            cJSON_Delete(any);
            cJSON_Delete(inner);
            cJSON_Delete(null);
            return NULL;
        }
        cJSON_AddItemToArray(any, inner);
        cJSON_AddItemToArray(any, null);
        if (!add(o, "anyOf", any)) {
            cJSON_Delete(o);
            return NULL;
        }
        return o;
    }
    }
    return NULL;
}

static int keycmp(const char *a, const char *b)
{
    bool ta = strcmp(a, "type") == 0, tb = strcmp(b, "type") == 0;
    if (ta != tb)
        return ta ? -1 : 1;
    return strcmp(a, b); /* bytes compare as unsigned: code point order */
}

/* DSPy's move_type_to_front: every object's keys sorted, "type" first.
 * An insertion sort of the child list: schemas are small, and it needs no
 * memory, so it cannot fail. */
static void sort_keys(cJSON *v)
{
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v))
        return;
    for (cJSON *c = v->child; c; c = c->next)
        sort_keys(c);
    if (!cJSON_IsObject(v) || !v->child)
        return;
    cJSON *sorted = NULL;
    for (cJSON *c = v->child; c;) {
        cJSON *next = c->next;
        cJSON **at = &sorted;
        while (*at && keycmp((*at)->string, c->string) <= 0)
            at = &(*at)->next;
        c->next = *at;
        *at = c;
        c = next;
    }
    cJSON *prev = NULL;
    for (cJSON *c = sorted; c; c = c->next) {
        c->prev = prev;
        prev = c;
    }
    sorted->prev = prev; /* cJSON keeps the tail in the head's prev */
    v->child = sorted;
}

int dx_type_schema(const dx_type *t, char **out)
{
    if (!t || !out)
        return DX_EINVAL;
    dx__pyjson_init();
    cJSON *defs = NULL;
    cJSON *root = gen(t, &defs, true);
    if (!root) {
        cJSON_Delete(defs);
        return DX_ENOMEM;
    }
    if (defs && !add(root, "$defs", defs)) {
        cJSON_Delete(root);
        return DX_ENOMEM;
    }
    sort_keys(root);
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump(&b, root, -1);
    cJSON_Delete(root);
    dx__sb_cstr(&b);
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

/* ---- parsing type expressions ----------------------------------------- */

/* The reader: s[pos..end) is what is left; positions are byte offsets in
 * the whole text the user wrote, so columns are pos + 1. */
typedef struct rd {
    const char *s;
    size_t pos, end;
    const char *what; /* "signature" or "type": the message's first word */
    const dx_custom_type *customs;
    size_t n_customs;
    dx_diag *diag;
    int depth; /* parse_union calls in progress: the nesting of the type */
} rd;

/* Deepest type nesting read ("list[list[...]]", "((...))"). The reader
 * recurses once per level, so without a bound a hostile signature text
 * overflows the stack (found by fuzz/fuzz_signature.c); real types nest a
 * handful of levels. */
#define TYPE_MAX_DEPTH 64

static int perr(rd *r, size_t at, const char *fmt, ...) DX_PRINTF(3, 4);
static int perr(rd *r, size_t at, const char *fmt, ...)
{
    char m[DX_DIAG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return dx_diag_set(r->diag, DX_ESYNTAX, 0, (int)at + 1,
                       "%s: %s at column %d", r->what, m, (int)at + 1);
}

static int nomem(dx_diag *d, const char *what)
{
    return dx_diag_set(d, DX_ENOMEM, 0, 0, "%s: out of memory", what);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

static void skip_ws(rd *r)
{
    while (r->pos < r->end && is_space(r->s[r->pos]))
        r->pos++;
}

static bool id_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool id_char(char c)
{
    return id_start(c) || (c >= '0' && c <= '9');
}

static bool at_char(rd *r, char c)
{
    return r->pos < r->end && r->s[r->pos] == c;
}

/* A (possibly dotted) name at pos; its length, 0 when there is none. */
static size_t read_name(rd *r)
{
    size_t p = r->pos;
    if (p >= r->end || !id_start(r->s[p]))
        return 0;
    for (;;) {
        while (p < r->end && id_char(r->s[p]))
            p++;
        if (p + 1 < r->end && r->s[p] == '.' && id_start(r->s[p + 1]))
            p++;
        else
            break;
    }
    return p - r->pos;
}

static bool name_is(const char *s, size_t n, const char *w)
{
    return strlen(w) == n && memcmp(s, w, n) == 0;
}

typedef enum base {
    B_STR,
    B_INT,
    B_FLOAT,
    B_BOOL,
    B_ANY,
    B_LIST,
    B_DICT,
    B_LITERAL,
    B_OPTIONAL,
    B_UNION,
    B_NONE,
    B_CUSTOM,
    B_UNSUPPORTED,
    B_UNKNOWN,
} base;

/* What a name stands for, as DSPy resolves it: custom types first (they
 * shadow everything), then typing's names (also as typing.X), then
 * builtins. *bare_typing: typing's List / Dict. */
static base resolve(rd *r, const char *s, size_t n, size_t *custom,
                    bool *typing_name)
{
    for (size_t i = 0; i < r->n_customs; i++) {
        const char *c = r->customs[i].name;
        if (c && name_is(s, n, c)) {
            *custom = i;
            return B_CUSTOM;
        }
    }
    *typing_name = false;
    bool prefixed = n > 7 && memcmp(s, "typing.", 7) == 0;
    const char *t = prefixed ? s + 7 : s;
    size_t tn = prefixed ? n - 7 : n;
    static const struct {
        const char *name;
        base b;
        bool typing;
    } names[] = {
        {"List", B_LIST, true},
        {"Dict", B_DICT, true},
        {"Optional", B_OPTIONAL, true},
        {"Union", B_UNION, true},
        {"Literal", B_LITERAL, true},
        {"Any", B_ANY, true},
        {"Text", B_STR, true},
        {"Tuple", B_UNSUPPORTED, true},
        {"Set", B_UNSUPPORTED, true},
        {"FrozenSet", B_UNSUPPORTED, true},
        {"Sequence", B_UNSUPPORTED, true},
        {"Mapping", B_UNSUPPORTED, true},
        {"Callable", B_UNSUPPORTED, true},
        {"Annotated", B_UNSUPPORTED, true},
        {"Type", B_UNSUPPORTED, true},
        {"str", B_STR, false},
        {"int", B_INT, false},
        {"float", B_FLOAT, false},
        {"bool", B_BOOL, false},
        {"list", B_LIST, false},
        {"dict", B_DICT, false},
        {"None", B_NONE, false},
        {"NoneType", B_NONE, false},
        {"tuple", B_UNSUPPORTED, false},
        {"set", B_UNSUPPORTED, false},
        {"frozenset", B_UNSUPPORTED, false},
        {"complex", B_UNSUPPORTED, false},
        {"bytes", B_UNSUPPORTED, false},
        {"bytearray", B_UNSUPPORTED, false},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (name_is(t, tn, names[i].name) && (!prefixed || names[i].typing)) {
            *typing_name = names[i].typing;
            return names[i].b;
        }
    }
    return B_UNKNOWN;
}

/* What one union member or subscript argument turned out to be. */
typedef struct item {
    dx_type *t; /* NULL for None */
    size_t at;
} item;

typedef struct items {
    item *v;
    size_t n, cap;
} items;

static void items_free(items *it)
{
    for (size_t i = 0; i < it->n; i++)
        dx_type_free(it->v[i].t);
    dx_free(it->v);
    it->v = NULL;
    it->n = it->cap = 0;
}

static bool items_push(items *it, dx_type *t, size_t at)
{
    if (it->n == it->cap) {
        size_t cap = it->cap ? it->cap * 2 : 4;
        item *v = dx_realloc(it->v, cap * sizeof *v);
        if (!v)
            return false;
        it->v = v;
        it->cap = cap;
    }
    it->v[it->n].t = t;
    it->v[it->n].at = at;
    it->n++;
    return true;
}

/* Union semantics over members (Union[...] arguments or `a | b`): one type
 * stays itself, a type and None make an Optional, two types are refused. */
static int unite(rd *r, items *it, size_t at, dx_type **out)
{
    dx_type *only = NULL;
    size_t nones = 0, only_i = 0;
    for (size_t i = 0; i < it->n; i++) {
        if (!it->v[i].t) {
            nones++;
        } else if (only) {
            return perr(r, it->v[i].at,
                        "only Optional unions are supported (T | None, "
                        "Optional[T], Union[T, None])");
        } else {
            only = it->v[i].t;
            only_i = i;
        }
    }
    if (!only)
        return perr(r, at, "a union needs a type besides None");
    it->v[only_i].t = NULL; /* taken */
    if (nones == 0 || only->kind == DX_TYPE_OPTIONAL) {
        *out = only;
        return DX_OK;
    }
    bool none_first = !it->v[0].t && only_i > 0;
    dx_type *o = dx_type_optional_of(only);
    if (!o)
        return nomem(r->diag, r->what);
    o->none_first = none_first;
    *out = o;
    return DX_OK;
}

static int parse_union(rd *r, dx_type **out);

/* A Python string literal in ' or " quotes; the decoded bytes. */
static int read_pystring(rd *r, char **out)
{
    size_t start = r->pos;
    char q = r->s[r->pos];
    if (r->pos + 2 < r->end && r->s[r->pos + 1] == q && r->s[r->pos + 2] == q)
        return perr(r, start, "triple-quoted strings are not supported");
    r->pos++;
    dx__sb b;
    dx__sb_init(&b);
    for (;;) {
        if (r->pos >= r->end || r->s[r->pos] == '\n') {
            dx__sb_free(&b);
            return perr(r, start, "unterminated string");
        }
        char c = r->s[r->pos++];
        if (c == q)
            break;
        if (c != '\\') {
            dx__sb_putc(&b, c);
            continue;
        }
        if (r->pos >= r->end) {
            dx__sb_free(&b);
            return perr(r, start, "unterminated string");
        }
        char e = r->s[r->pos++];
        int hexn = 0;
        switch (e) {
        case 'n':
            dx__sb_putc(&b, '\n');
            break;
        case 't':
            dx__sb_putc(&b, '\t');
            break;
        case 'r':
            dx__sb_putc(&b, '\r');
            break;
        case 'a':
            dx__sb_putc(&b, '\a');
            break;
        case 'b':
            dx__sb_putc(&b, '\b');
            break;
        case 'f':
            dx__sb_putc(&b, '\f');
            break;
        case 'v':
            dx__sb_putc(&b, '\v');
            break;
        case '0': /* NUL, which a C string cannot hold */
            dx__sb_free(&b);
            return perr(r, r->pos - 2, "a NUL character is not allowed");
        case '\\':
        case '\'':
        case '"':
            dx__sb_putc(&b, e);
            break;
        case '\n':
            break; /* line continuation */
        case 'x':
            hexn = 2;
            break;
        case 'u':
            hexn = 4;
            break;
        case 'U':
            hexn = 8;
            break;
        default: /* Python keeps unknown escapes as written */
            dx__sb_putc(&b, '\\');
            dx__sb_putc(&b, e);
        }
        if (hexn) {
            unsigned long cp = 0;
            for (int i = 0; i < hexn; i++) {
                char h = r->pos < r->end ? r->s[r->pos] : 0;
                int v = h >= '0' && h <= '9'   ? h - '0'
                        : h >= 'a' && h <= 'f' ? h - 'a' + 10
                        : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                               : -1;
                if (v < 0) {
                    dx__sb_free(&b);
                    return perr(r, r->pos, "bad \\%c escape", e);
                }
                cp = cp * 16 + (unsigned long)v;
                r->pos++;
            }
            if (cp == 0 || cp > 0x10FFFF) {
                dx__sb_free(&b);
                return perr(r, r->pos, "bad \\%c escape", e);
            }
            char u[4];
            size_t un;
            if (cp < 0x80) {
                u[0] = (char)cp;
                un = 1;
            } else if (cp < 0x800) {
                u[0] = (char)(0xC0 | (cp >> 6));
                u[1] = (char)(0x80 | (cp & 0x3F));
                un = 2;
            } else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | (cp >> 12));
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F));
                un = 3;
            } else {
                u[0] = (char)(0xF0 | (cp >> 18));
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (char)(0x80 | (cp & 0x3F));
                un = 4;
            }
            dx__sb_put(&b, u, un);
        }
    }
    dx__sb_cstr(&b);
    *out = dx__sb_take(&b);
    return *out ? DX_OK : nomem(r->diag, r->what);
}

/* One Literal choice: a string, a number or True/False. */
static int read_choice(rd *r, cJSON **out)
{
    skip_ws(r);
    size_t at = r->pos;
    if (at >= r->end)
        return perr(r, at, "expected a Literal choice");
    char c = r->s[at];
    if (c == '\'' || c == '"') {
        char *s;
        int rc = read_pystring(r, &s);
        if (rc != DX_OK)
            return rc;
        *out = cJSON_CreateString(s);
        dx_free(s);
        return *out ? DX_OK : nomem(r->diag, r->what);
    }
    size_t n = read_name(r);
    if (n) {
        if (name_is(r->s + at, n, "True") || name_is(r->s + at, n, "False")) {
            r->pos += n;
            *out = cJSON_CreateBool(r->s[at] == 'T');
            return *out ? DX_OK : nomem(r->diag, r->what);
        }
        return perr(r, at,
                    "Literal choices must be strings, numbers, True or "
                    "False, not \"%.*s\"",
                    (int)n, r->s + at);
    }
    size_t p = at;
    bool is_float = false;
    if (p < r->end && (r->s[p] == '-' || r->s[p] == '+'))
        p++;
    size_t digits = 0;
    while (p < r->end && r->s[p] >= '0' && r->s[p] <= '9')
        p++, digits++;
    if (p < r->end && r->s[p] == '.') {
        is_float = true;
        p++;
        while (p < r->end && r->s[p] >= '0' && r->s[p] <= '9')
            p++, digits++;
    }
    if (digits && p < r->end && (r->s[p] == 'e' || r->s[p] == 'E')) {
        size_t q = p + 1;
        if (q < r->end && (r->s[q] == '-' || r->s[q] == '+'))
            q++;
        if (q < r->end && r->s[q] >= '0' && r->s[q] <= '9') {
            is_float = true;
            p = q;
            while (p < r->end && r->s[p] >= '0' && r->s[p] <= '9')
                p++;
        }
    }
    if (!digits)
        return perr(r, at,
                    "Literal choices must be strings, numbers, True or "
                    "False");
    char num[64];
    if (p - at >= sizeof num)
        return perr(r, at, "number too long");
    memcpy(num, r->s + at, p - at);
    num[p - at] = '\0';
    r->pos = p;
    *out = cJSON_CreateNumber(strtod(num, NULL));
    if (!*out)
        return nomem(r->diag, r->what);
    if (is_float)
        (*out)->type |= DX__JSON_FLOAT;
    return DX_OK;
}

/* After '[' at open: choices up to ']'. */
static int parse_choices(rd *r, size_t open, dx_type **out)
{
    dx_type *t = type_alloc(DX_TYPE_LITERAL);
    if (!t || !(t->choices = cJSON_CreateArray())) {
        dx_type_free(t);
        return nomem(r->diag, r->what);
    }
    int rc;
    for (;;) {
        cJSON *c;
        if ((rc = read_choice(r, &c)) != DX_OK)
            goto fail;
        if (choices_have(t->choices, c)) /* typing drops repeats */
            cJSON_Delete(c);
        else
            cJSON_AddItemToArray(t->choices, c);
        skip_ws(r);
        if (at_char(r, ',')) {
            r->pos++;
            skip_ws(r);
            if (!at_char(r, ']'))
                continue;
        }
        if (at_char(r, ']')) {
            r->pos++;
            *out = t;
            return DX_OK;
        }
        rc = r->pos >= r->end ? perr(r, open, "unbalanced \"[\"")
                              : perr(r, r->pos, "expected \",\" or \"]\"");
        goto fail;
    }
fail:
    dx_type_free(t);
    return rc;
}

/* After '[' at open: type arguments (None allowed) up to ']'. */
static int parse_args(rd *r, size_t open, items *it)
{
    for (;;) {
        skip_ws(r);
        size_t at = r->pos;
        dx_type *t = NULL;
        int rc = parse_union(r, &t);
        if (rc != DX_OK)
            return rc;
        if (!items_push(it, t, at)) {
            dx_type_free(t);
            return nomem(r->diag, r->what);
        }
        skip_ws(r);
        if (at_char(r, ',')) {
            r->pos++;
            skip_ws(r);
            if (!at_char(r, ']'))
                continue;
        }
        if (at_char(r, ']')) {
            r->pos++;
            return DX_OK;
        }
        return r->pos >= r->end ? perr(r, open, "unbalanced \"[\"")
                                : perr(r, r->pos, "expected \",\" or \"]\"");
    }
}

static int no_none(rd *r, const items *it, const char *what)
{
    for (size_t i = 0; i < it->n; i++)
        if (!it->v[i].t)
            return perr(r, it->v[i].at,
                        "None is only allowed in Optional or Union, not in "
                        "%s",
                        what);
    return DX_OK;
}

/* A name, optionally subscripted; None gives *out NULL. */
static int parse_named(rd *r, dx_type **out)
{
    size_t at = r->pos, n = read_name(r);
    const char *nm = r->s + at;
    size_t custom = 0;
    bool typing_name = false;
    base b = resolve(r, nm, n, &custom, &typing_name);
    if (b == B_UNKNOWN)
        return perr(r, at, "unknown type \"%.*s\"", (int)n, nm);
    if (b == B_UNSUPPORTED)
        return perr(r, at, "type \"%.*s\" is not supported yet", (int)n, nm);
    r->pos += n;
    size_t after = r->pos;
    skip_ws(r);
    bool sub = at_char(r, '[');
    if (!sub)
        r->pos = after;
    bool generic = b == B_LIST || b == B_DICT || b == B_LITERAL ||
                   b == B_OPTIONAL || b == B_UNION;
    if (sub && !generic)
        return perr(r, r->pos, "type \"%.*s\" takes no arguments", (int)n, nm);
    if (!sub && (b == B_LITERAL || b == B_OPTIONAL || b == B_UNION))
        return perr(r, at, "\"%.*s\" needs arguments in [...]", (int)n, nm);
    *out = NULL;
    switch (b) {
    case B_NONE:
        return DX_OK;
    case B_STR:
        *out = type_alloc(DX_TYPE_STR);
        break;
    case B_INT:
        *out = type_alloc(DX_TYPE_INT);
        break;
    case B_FLOAT:
        *out = type_alloc(DX_TYPE_FLOAT);
        break;
    case B_BOOL:
        *out = type_alloc(DX_TYPE_BOOL);
        break;
    case B_ANY:
        *out = type_alloc(DX_TYPE_ANY);
        break;
    case B_CUSTOM: {
        dx__pyjson_init();
        bool oom = false;
        cJSON *schema = parse_schema(r->customs[custom].schema_json, &oom);
        if (!schema && oom)
            return nomem(r->diag, r->what);
        if (!schema)
            return perr(r, at,
                        "the schema of type \"%.*s\" is not a JSON object",
                        (int)n, nm);
        const char *dot = memchr(nm, '.', n);
        dx_type *t = type_alloc(DX_TYPE_OBJECT);
        /* A dotted custom name prints as its last part, like __name__. */
        const char *shown = dot ? strrchr(r->customs[custom].name, '.') + 1
                                : r->customs[custom].name;
        if (!t || !(t->name = dx_strdup(shown))) {
            cJSON_Delete(schema);
            dx_type_free(t);
            return nomem(r->diag, r->what);
        }
        t->schema = schema;
        *out = t;
        return DX_OK;
    }
    case B_LIST:
    case B_DICT:
        if (!sub) {
            *out = type_alloc(b == B_LIST ? DX_TYPE_LIST : DX_TYPE_DICT);
            if (*out)
                (*out)->typing_bare = typing_name;
            break;
        }
        /* fall through */
    case B_OPTIONAL:
    case B_UNION: {
        size_t open = r->pos++;
        items it = {0};
        int rc = parse_args(r, open, &it);
        if (rc == DX_OK) {
            if (b == B_LIST || b == B_DICT) {
                size_t want = b == B_LIST ? 1 : 2;
                if ((rc = no_none(r, &it, b == B_LIST ? "list" : "dict")) ==
                        DX_OK &&
                    it.n != want)
                    rc =
                        perr(r, open, "%.*s takes %zu type argument%s, not %zu",
                             (int)n, nm, want, want == 1 ? "" : "s", it.n);
                if (rc == DX_OK) {
                    dx_type *t =
                        type_alloc(b == B_LIST ? DX_TYPE_LIST : DX_TYPE_DICT);
                    dx_type *a[2] = {it.v[0].t, want == 2 ? it.v[1].t : NULL};
                    if (!t) {
                        rc = nomem(r->diag, r->what);
                    } else {
                        it.n = 0; /* the arguments are t's now */
                        if (type_set_args(t, a, want) != DX_OK) {
                            dx_free(t);
                            rc = nomem(r->diag, r->what);
                        } else {
                            *out = t;
                        }
                    }
                }
            } else if (b == B_OPTIONAL && it.n != 1) {
                rc = perr(r, open, "Optional takes exactly one type argument");
            } else if (b == B_OPTIONAL && !it.v[0].t) {
                rc = perr(r, it.v[0].at, "Optional[None] is not a type");
            } else if (b == B_OPTIONAL && !items_push(&it, NULL, open)) {
                rc = nomem(r->diag, r->what);
            } else { /* Optional[T] is Union[T, None] */
                rc = unite(r, &it, open, out);
            }
        }
        items_free(&it);
        return rc;
    }
    case B_LITERAL: {
        size_t open = r->pos++;
        return parse_choices(r, open, out);
    }
    default:
        break;
    }
    return *out ? DX_OK : nomem(r->diag, r->what);
}

/* An atom: a parenthesised union or a named type. */
static int parse_atom(rd *r, dx_type **out)
{
    skip_ws(r);
    size_t at = r->pos;
    if (at_char(r, '(')) {
        r->pos++;
        int rc = parse_union(r, out);
        if (rc != DX_OK)
            return rc;
        skip_ws(r);
        if (at_char(r, ')')) {
            r->pos++;
            return DX_OK;
        }
        dx_type_free(*out);
        *out = NULL;
        return r->pos >= r->end ? perr(r, at, "unbalanced \"(\"")
                                : perr(r, r->pos, "expected \")\"");
    }
    if (!read_name(r))
        return perr(r, at, "expected a type");
    return parse_named(r, out);
}

static int union_body(rd *r, dx_type **out);

/* a | b | ...: *out NULL means None. DX_ESYNTAX past TYPE_MAX_DEPTH. */
static int parse_union(rd *r, dx_type **out)
{
    if (r->depth >= TYPE_MAX_DEPTH) {
        skip_ws(r);
        return perr(r, r->pos, "types nest deeper than %d levels",
                    TYPE_MAX_DEPTH);
    }
    r->depth++;
    int rc = union_body(r, out);
    r->depth--;
    return rc;
}

static int union_body(rd *r, dx_type **out)
{
    skip_ws(r);
    size_t at = r->pos;
    dx_type *t = NULL;
    int rc = parse_atom(r, &t);
    if (rc != DX_OK)
        return rc;
    size_t save = r->pos;
    skip_ws(r);
    if (!at_char(r, '|')) {
        r->pos = save;
        *out = t;
        return DX_OK;
    }
    items it = {0};
    if (!items_push(&it, t, at)) {
        dx_type_free(t);
        return nomem(r->diag, r->what);
    }
    while (at_char(r, '|')) {
        r->pos++;
        skip_ws(r);
        size_t mat = r->pos;
        if ((rc = parse_atom(r, &t)) != DX_OK)
            goto done;
        if (!items_push(&it, t, mat)) {
            dx_type_free(t);
            rc = nomem(r->diag, r->what);
            goto done;
        }
        save = r->pos;
        skip_ws(r);
    }
    r->pos = save;
    rc = unite(r, &it, at, out);
done:
    items_free(&it);
    return rc;
}

/* A whole type (not None) starting at pos. */
static int parse_type_at(rd *r, dx_type **out)
{
    skip_ws(r);
    size_t at = r->pos;
    dx_type *t = NULL;
    int rc = parse_union(r, &t);
    if (rc != DX_OK)
        return rc;
    if (!t)
        return perr(r, at,
                    "None is only allowed in Optional or Union, not as a "
                    "type by itself");
    *out = t;
    return DX_OK;
}

int dx_type_parse(const char *text, const dx_custom_type *customs,
                  size_t n_customs, dx_type **out, dx_diag *diag)
{
    if (!text || !out || (n_customs && !customs))
        return dx_diag_set(diag, DX_EINVAL, 0, 0, "type: invalid argument");
    rd r = {text, 0, strlen(text), "type", customs, n_customs, diag, 0};
    dx_type *t = NULL;
    int rc = parse_type_at(&r, &t);
    if (rc != DX_OK)
        return rc;
    skip_ws(&r);
    if (r.pos < r.end) {
        dx_type_free(t);
        return perr(&r, r.pos, "unexpected \"%c\" after the type", r.s[r.pos]);
    }
    *out = t;
    return DX_OK;
}

/* ---- infer_prefix and instructions text ------------------------------- */

static bool up(char c)
{
    return c >= 'A' && c <= 'Z';
}
static bool low(char c)
{
    return c >= 'a' && c <= 'z';
}
static bool dig(char c)
{
    return c >= '0' && c <= '9';
}
static bool alpha(char c)
{
    return up(c) || low(c);
}

/* re.sub("(.)([A-Z][a-z]+)", r"\1_\2", s) */
static void split_words(dx__sb *o, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (i + 2 < n && up(s[i + 1]) && low(s[i + 2])) {
            size_t j = i + 2;
            while (j < n && low(s[j]))
                j++;
            dx__sb_putc(o, s[i]);
            dx__sb_putc(o, '_');
            dx__sb_put(o, s + i + 1, j - i - 1);
            i = j;
        } else {
            dx__sb_putc(o, s[i++]);
        }
    }
}

/* re.sub("(A)(B)", r"\1_\2", s) for one-character classes A and B. */
static void split_pairs(dx__sb *o, const char *s, size_t n, bool (*a)(char),
                        bool (*b)(char))
{
    size_t i = 0;
    while (i < n) {
        if (i + 1 < n && a(s[i]) && b(s[i + 1])) {
            dx__sb_putc(o, s[i]);
            dx__sb_putc(o, '_');
            dx__sb_putc(o, s[i + 1]);
            i += 2;
        } else {
            dx__sb_putc(o, s[i++]);
        }
    }
}

static bool low_or_dig(char c)
{
    return low(c) || dig(c);
}

/* Empty the builder but keep its memory (a stage's output buffer). */
static void sb_reset(dx__sb *b)
{
    b->len = 0;
    if (b->p)
        b->p[0] = '\0';
}

/* DSPy's infer_prefix, regex by regex, then per word: all-capital words
 * (str.isupper) stay, others are str.capitalize'd (first letter up, the
 * rest down). */
int dx_infer_prefix(const char *name, char **out)
{
    if (!name || !out)
        return DX_EINVAL;
    dx__sb a, b;
    dx__sb_init(&a);
    dx__sb_init(&b);
    split_words(&a, name, strlen(name));
    split_pairs(&b, a.p ? a.p : "", a.len, low_or_dig, up);
    sb_reset(&a);
    split_pairs(&a, b.p ? b.p : "", b.len, alpha, dig);
    sb_reset(&b);
    split_pairs(&b, a.p ? a.p : "", a.len, dig, alpha);
    sb_reset(&a);
    const char *s = b.p ? b.p : "";
    size_t n = b.len, w = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '_')
            continue;
        if (w)
            dx__sb_putc(&a, ' ');
        bool cased = false, upper = true;
        for (size_t k = w; k < i; k++) {
            if (alpha(s[k])) {
                cased = true;
                if (low(s[k]))
                    upper = false;
            } else if ((unsigned char)s[k] >= 0x80) {
                upper = false; /* not ASCII: treated as a lower-case word */
            }
        }
        for (size_t k = w; k < i; k++) {
            char c = s[k];
            if (!(cased && upper)) {
                if (k == w && low(c))
                    c = (char)(c - 'a' + 'A');
                else if (k > w && up(c))
                    c = (char)(c - 'A' + 'a');
            }
            dx__sb_putc(&a, c);
        }
        w = i + 1;
    }
    /* b's OOM flag survives sb_reset: a failed pass above must fail the
     * call, not yield a prefix made from a cut text. */
    bool oom = b.oom;
    dx__sb_free(&b);
    if (oom) {
        dx__sb_free(&a);
        return DX_ENOMEM;
    }
    dx__sb_cstr(&a);
    *out = dx__sb_take(&a);
    return *out ? DX_OK : DX_ENOMEM;
}

/* The length of the code point at s (1 for a stray byte). */
static size_t cp_len(const char *s, size_t n)
{
    unsigned char c = (unsigned char)s[0];
    size_t l = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (l > n)
        return 1;
    for (size_t i = 1; i < l; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            return 1;
    return l;
}

/* Python's str.isspace for the code point at s (l bytes). */
static bool py_space(const char *s, size_t l)
{
    const unsigned char *u = (const unsigned char *)s;
    if (l == 1)
        return u[0] == ' ' || (u[0] >= 0x09 && u[0] <= 0x0D) ||
               (u[0] >= 0x1C && u[0] <= 0x1F);
    unsigned long cp = l == 2   ? ((u[0] & 0x1FUL) << 6) | (u[1] & 0x3F)
                       : l == 3 ? ((u[0] & 0x0FUL) << 12) |
                                      ((u[1] & 0x3FUL) << 6) | (u[2] & 0x3F)
                                : 0;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Leading whitespace of a line: its bytes and code points. */
static size_t lead_ws(const char *s, size_t n, size_t *cps)
{
    size_t i = 0, k = 0;
    while (i < n) {
        size_t l = cp_len(s + i, n - i);
        if (!py_space(s + i, l))
            break;
        i += l;
        k++;
    }
    *cps = k;
    return i;
}

/* inspect.cleandoc (Python 3.11): tabs expanded, the first line's leading
 * whitespace and the common indentation of the others removed, leading
 * and trailing empty lines dropped. NULL on OOM. */
static char *cleandoc(const char *text)
{
    dx__sb x, o;
    dx__sb_init(&x);
    dx__sb_init(&o);
    size_t n = strlen(text), col = 0;
    for (size_t i = 0; i < n;) {
        size_t l = cp_len(text + i, n - i);
        if (text[i] == '\t') {
            size_t sp = 8 - col % 8;
            for (size_t k = 0; k < sp; k++)
                dx__sb_putc(&x, ' ');
            col += sp;
        } else {
            dx__sb_put(&x, text + i, l);
            col = text[i] == '\n' || text[i] == '\r' ? 0 : col + 1;
        }
        i += l;
    }
    if (x.oom) { /* not a shorter text: no text */
        dx__sb_free(&x);
        return NULL;
    }
    const char *s = x.p ? x.p : "";
    n = x.len;
    size_t margin = SIZE_MAX;
    const char *nl = memchr(s, '\n', n);
    for (size_t i = nl ? (size_t)(nl - s) + 1 : n; nl && i <= n;) {
        const char *e = memchr(s + i, '\n', n - i);
        size_t len = e ? (size_t)(e - s) - i : n - i, cps;
        if (lead_ws(s + i, len, &cps) < len && cps < margin)
            margin = cps;
        if (!e)
            break;
        i += len + 1;
    }
    /* Lines, trimmed; then empty ones dropped at both ends. */
    size_t last_len = 0;
    bool any = false;
    size_t line = 0;
    for (size_t i = 0; i <= n; line++) {
        const char *e = memchr(s + i, '\n', n - i);
        size_t len = e ? (size_t)(e - s) - i : n - i, cps;
        const char *p = s + i;
        if (line == 0) {
            size_t w = lead_ws(p, len, &cps);
            p += w;
            len -= w;
        } else if (margin != SIZE_MAX) {
            size_t k = 0, b = 0;
            while (k < margin && b < len) {
                b += cp_len(p + b, len - b);
                k++;
            }
            p += b;
            len -= b;
        }
        if (len > 0 || any) {
            if (any)
                dx__sb_putc(&o, '\n');
            any = true;
            dx__sb_put(&o, p, len);
            if (len > 0)
                last_len = o.len;
        }
        if (!e)
            break;
        i += (size_t)(e - (s + i)) + 1;
    }
    o.len = last_len; /* trailing empty lines */
    if (o.p)
        o.p[o.len] = '\0';
    dx__sb_free(&x);
    dx__sb_cstr(&o);
    return dx__sb_take(&o);
}

/* ---- fields ----------------------------------------------------------- */

static void field_clear(dx_field *f)
{
    dx_free(f->name);
    dx_type_free(f->type);
    dx_free(f->desc);
    dx_free(f->prefix);
    dx_free(f->constraints);
    if (f->default_value)
        cJSON_Delete(f->default_value);
    memset(f, 0, sizeof *f);
}

static void fields_free(dx_field *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        field_clear(&v[i]);
    dx_free(v);
}

static bool field_copy(dx_field *d, const dx_field *s)
{
    memset(d, 0, sizeof *d);
    d->role = s->role;
    d->type_undefined = s->type_undefined;
    if (!(d->name = dx_strdup(s->name)) || !(d->type = dx_type_copy(s->type)) ||
        !(d->desc = dx_strdup(s->desc)) ||
        !(d->prefix = dx_strdup(s->prefix)) ||
        (s->constraints && !(d->constraints = dx_strdup(s->constraints))) ||
        (s->default_value &&
         !(d->default_value = cJSON_Duplicate(s->default_value, true)))) {
        field_clear(d);
        return false;
    }
    return true;
}

static bool valid_name(const char *s)
{
    if (!s || !id_start(*s))
        return false;
    for (; *s; s++)
        if (!id_char(*s))
            return false;
    return true;
}

static int default_desc(const char *name, char **out)
{
    size_t n = strlen(name) + 4;
    if (!(*out = dx_malloc(n)))
        return DX_ENOMEM;
    snprintf(*out, n, "${%s}", name);
    return DX_OK;
}

static int default_prefix(const char *name, char **out)
{
    char *p;
    int rc = dx_infer_prefix(name, &p);
    if (rc != DX_OK)
        return rc;
    size_t n = strlen(p) + 2;
    *out = dx_malloc(n);
    if (*out)
        snprintf(*out, n, "%s:", p);
    dx_free(p);
    return *out ? DX_OK : DX_ENOMEM;
}

/* A field from a spec (everything copied); defaults filled in. */
static int field_from_spec(dx_field *f, const dx_field_spec *sp, dx_diag *diag)
{
    memset(f, 0, sizeof *f);
    if (!valid_name(sp->name))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "signature: \"%s\" is not a valid field name",
                           sp->name ? sp->name : "(null)");
    if (sp->role != DX_FIELD_INPUT && sp->role != DX_FIELD_OUTPUT)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "signature: field \"%s\" has no valid role",
                           sp->name);
    f->role = sp->role;
    if (sp->default_json) {
        dx__pyjson_init();
        int line = 0, col = 0;
        const char *what = NULL;
        f->default_value = dx__json_parse_msg(
            sp->default_json, strlen(sp->default_json), &line, &col, &what);
        /* A failed allocation is not a bad default. */
        if (!f->default_value && what && strcmp(what, "out of memory") == 0)
            return nomem(diag, "signature");
        if (!f->default_value)
            return dx_diag_set(diag, DX_EINVAL, 0, col,
                               "signature: the default of field \"%s\" is "
                               "not JSON (column %d)",
                               sp->name, col);
    }
    if (!(f->name = dx_strdup(sp->name)))
        goto fail;
    f->type = sp->type ? dx_type_copy(sp->type) : type_alloc(DX_TYPE_STR);
    if (!f->type)
        goto fail;
    f->type_undefined = !sp->type;
    if (sp->desc ? !(f->desc = dx_strdup(sp->desc))
                 : default_desc(sp->name, &f->desc) != DX_OK)
        goto fail;
    if (sp->prefix ? !(f->prefix = dx_strdup(sp->prefix))
                   : default_prefix(sp->name, &f->prefix) != DX_OK)
        goto fail;
    if (sp->constraints && !(f->constraints = dx_strdup(sp->constraints)))
        goto fail;
    return DX_OK;
fail:
    field_clear(f);
    return nomem(diag, "signature");
}

/* ---- signatures ------------------------------------------------------- */

static char *default_instructions(const dx_field *v, size_t n)
{
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_puts(&b, "Given the fields ");
    for (int pass = 0; pass < 2; pass++) {
        if (pass)
            dx__sb_puts(&b, ", produce the fields ");
        bool first = true;
        for (size_t i = 0; i < n; i++) {
            if (v[i].role != (pass ? DX_FIELD_OUTPUT : DX_FIELD_INPUT))
                continue;
            if (!first)
                dx__sb_puts(&b, ", ");
            first = false;
            dx__sb_printf(&b, "`%s`", v[i].name);
        }
    }
    dx__sb_putc(&b, '.');
    dx__sb_cstr(&b);
    return dx__sb_take(&b);
}

/* The one constructor: takes fields (ordered inputs first; freed on
 * failure too); instructions NULL means DSPy's default. */
static int sig_make(dx_field *fields, size_t n, const char *instructions,
                    dx_signature **out)
{
    dx_signature *s = dx_calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->instructions =
        instructions ? cleandoc(instructions) : default_instructions(fields, n);
    if (!s->instructions)
        goto fail;
    atomic_init(&s->refs, 1);
    for (size_t i = 0; i < DX_SIGNATURE_CACHE_SLOTS; i++)
        atomic_init(&s->cache[i], NULL);
    s->fields = fields;
    s->n_fields = n;
    while (s->n_inputs < n && fields[s->n_inputs].role == DX_FIELD_INPUT)
        s->n_inputs++;
    *out = s;
    return DX_OK;
fail:
    if (s)
        dx_free(s->instructions);
    dx_free(s);
    fields_free(fields, n);
    return DX_ENOMEM;
}

dx_signature *dx_signature_ref(dx_signature *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void dx_signature_unref(dx_signature *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < DX_SIGNATURE_CACHE_SLOTS; i++)
        dx_free(atomic_load_explicit(&s->cache[i], memory_order_acquire));
    fields_free(s->fields, s->n_fields);
    dx_free(s->instructions);
    dx_free(s);
}

static const dx_field *find(const dx_signature *s, const char *name)
{
    for (size_t i = 0; name && i < s->n_fields; i++)
        if (strcmp(s->fields[i].name, name) == 0)
            return &s->fields[i];
    return NULL;
}

/* Copies of s's fields, with room for `extra` more. */
static dx_field *fields_dup(const dx_signature *s, size_t extra)
{
    dx_field *v =
        dx_calloc(s->n_fields + extra ? s->n_fields + extra : 1, sizeof *v);
    if (!v)
        return NULL;
    for (size_t i = 0; i < s->n_fields; i++) {
        if (!field_copy(&v[i], &s->fields[i])) {
            fields_free(v, i);
            return NULL;
        }
    }
    return v;
}

/* Python keywords cannot name an argument of `def f(...)`. */
static bool py_keyword(const char *s, size_t n)
{
    static const char *const kw[] = {
        "False",  "None",     "True",  "and",    "as",       "assert",
        "async",  "await",    "break", "class",  "continue", "def",
        "del",    "elif",     "else",  "except", "finally",  "for",
        "from",   "global",   "if",    "import", "in",       "is",
        "lambda", "nonlocal", "not",   "or",     "pass",     "raise",
        "return", "try",      "while", "with",   "yield"};
    for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++)
        if (name_is(s, n, kw[i]))
            return true;
    return false;
}

typedef struct pfield {
    size_t at, len; /* the name in the text */
    dx_type *type;  /* NULL: not written */
} pfield;

typedef struct pfields {
    pfield *v;
    size_t n, cap;
} pfields;

static void pfields_free(pfields *p)
{
    for (size_t i = 0; i < p->n; i++)
        dx_type_free(p->v[i].type);
    dx_free(p->v);
}

/* One side of "->": `name` or `name: type`, comma separated, an optional
 * trailing comma (Python allows one in `def f(a, b,)`). */
static int parse_side(rd *r, pfields *out)
{
    skip_ws(r);
    while (r->pos < r->end) {
        size_t at = r->pos, n = 0;
        while (at + n < r->end && id_char(r->s[at + n]))
            n++;
        if (!n || !id_start(r->s[at]))
            return perr(r, at, "expected a field name");
        if (py_keyword(r->s + at, n))
            return perr(r, at, "\"%.*s\" is a Python keyword, not a field name",
                        (int)n, r->s + at);
        for (size_t i = 0; i < out->n; i++)
            if (out->v[i].len == n &&
                !memcmp(r->s + out->v[i].at, r->s + at, n))
                return perr(r, at, "duplicate field \"%.*s\"", (int)n,
                            r->s + at);
        r->pos += n;
        dx_type *t = NULL;
        skip_ws(r);
        if (at_char(r, ':')) {
            r->pos++;
            int rc = parse_type_at(r, &t);
            if (rc != DX_OK)
                return rc;
            skip_ws(r);
        }
        if (out->n == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 8;
            pfield *v = dx_realloc(out->v, cap * sizeof *v);
            if (!v) {
                dx_type_free(t);
                return nomem(r->diag, r->what);
            }
            out->v = v;
            out->cap = cap;
        }
        out->v[out->n++] = (pfield){at, n, t};
        if (r->pos >= r->end)
            break;
        if (!at_char(r, ','))
            return perr(r, r->pos,
                        t ? "expected \",\" after the type of "
                            "field \"%.*s\""
                          : "expected \",\" or \":\" after field "
                            "\"%.*s\"",
                        (int)n, r->s + at);
        r->pos++;
        skip_ws(r);
    }
    return DX_OK;
}

static int pfield_to_field(const char *text, pfield *p, dx_field_role role,
                           dx_field *f)
{
    memset(f, 0, sizeof *f);
    f->role = role;
    if (!(f->name = dx_malloc(p->len + 1)))
        return DX_ENOMEM;
    memcpy(f->name, text + p->at, p->len);
    f->name[p->len] = '\0';
    /* DSPy marks only untyped inputs (_parse_signature). */
    f->type_undefined = !p->type && role == DX_FIELD_INPUT;
    f->type = p->type ? p->type : type_alloc(DX_TYPE_STR);
    p->type = NULL;
    if (!f->type || default_desc(f->name, &f->desc) != DX_OK ||
        default_prefix(f->name, &f->prefix) != DX_OK) {
        field_clear(f);
        return DX_ENOMEM;
    }
    return DX_OK;
}

int dx_signature_parse(const char *text, const char *instructions,
                       const dx_custom_type *customs, size_t n_customs,
                       dx_signature **out, dx_diag *diag)
{
    if (!text || !out || (n_customs && !customs))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "signature: invalid argument");
    size_t len = strlen(text);
    const char *arrow = strstr(text, "->");
    if (!arrow)
        return dx_diag_set(diag, DX_ESYNTAX, 0, (int)len + 1,
                           "signature: expected \"->\" at column %d",
                           (int)len + 1);
    const char *again = strstr(arrow + 2, "->");
    if (again) {
        int col = (int)(again - text) + 1;
        return dx_diag_set(diag, DX_ESYNTAX, 0, col,
                           "signature: expected exactly one \"->\", found "
                           "another at column %d",
                           col);
    }
    rd r = {text, 0, (size_t)(arrow - text), "signature", customs, n_customs,
            diag, 0};
    pfields in = {0}, outs = {0};
    dx_field *fields = NULL;
    size_t nf = 0;
    int rc = parse_side(&r, &in);
    if (rc == DX_OK) {
        r.pos = (size_t)(arrow - text) + 2;
        r.end = len;
        rc = parse_side(&r, &outs);
    }
    for (size_t i = 0; rc == DX_OK && i < outs.n; i++) {
        for (size_t j = 0; j < in.n; j++) {
            if (in.v[j].len == outs.v[i].len &&
                !memcmp(text + in.v[j].at, text + outs.v[i].at, in.v[j].len)) {
                rc = dx_diag_set(diag, DX_ESYNTAX, 0, (int)outs.v[i].at + 1,
                                 "signature: field \"%.*s\" is both an input "
                                 "and an output",
                                 (int)outs.v[i].len, text + outs.v[i].at);
                break;
            }
        }
    }
    if (rc == DX_OK) {
        fields = dx_calloc(in.n + outs.n ? in.n + outs.n : 1, sizeof *fields);
        if (!fields)
            rc = nomem(diag, "signature");
    }
    for (size_t i = 0; rc == DX_OK && i < in.n + outs.n; i++) {
        bool isin = i < in.n;
        pfield *p = isin ? &in.v[i] : &outs.v[i - in.n];
        if (pfield_to_field(text, p, isin ? DX_FIELD_INPUT : DX_FIELD_OUTPUT,
                            &fields[i]) != DX_OK)
            rc = nomem(diag, "signature");
        else
            nf++;
    }
    pfields_free(&in);
    pfields_free(&outs);
    if (rc != DX_OK) {
        fields_free(fields, nf);
        return rc;
    }
    rc = sig_make(fields, nf, instructions, out);
    return rc == DX_OK ? DX_OK : nomem(diag, "signature");
}

int dx_signature_build(const dx_field_spec *specs, size_t n,
                       const char *instructions, dx_signature **out,
                       dx_diag *diag)
{
    if (!out || (n && !specs))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "signature: invalid argument");
    dx_field *fields = dx_calloc(n ? n : 1, sizeof *fields);
    if (!fields)
        return nomem(diag, "signature");
    size_t nf = 0;
    int rc = DX_OK;
    /* Inputs first, then outputs, each group in the order given. */
    for (int pass = 0; pass < 2 && rc == DX_OK; pass++) {
        for (size_t i = 0; i < n && rc == DX_OK; i++) {
            if ((specs[i].role == DX_FIELD_INPUT) != (pass == 0))
                continue;
            for (size_t j = 0; j < nf; j++)
                if (specs[i].name && !strcmp(fields[j].name, specs[i].name))
                    rc = dx_diag_set(diag, DX_EINVAL, 0, 0,
                                     "signature: duplicate field \"%s\"",
                                     specs[i].name);
            if (rc == DX_OK &&
                (rc = field_from_spec(&fields[nf], &specs[i], diag)) == DX_OK)
                nf++;
        }
    }
    if (rc != DX_OK) {
        fields_free(fields, nf);
        return rc;
    }
    rc = sig_make(fields, nf, instructions, out);
    return rc == DX_OK ? DX_OK : nomem(diag, "signature");
}

const char *dx_signature_instructions(const dx_signature *s)
{
    return s ? s->instructions : NULL;
}

size_t dx_signature_n_fields(const dx_signature *s)
{
    return s ? s->n_fields : 0;
}

size_t dx_signature_n_inputs(const dx_signature *s)
{
    return s ? s->n_inputs : 0;
}

size_t dx_signature_n_outputs(const dx_signature *s)
{
    return s ? s->n_fields - s->n_inputs : 0;
}

const dx_field *dx_signature_field(const dx_signature *s, size_t i)
{
    return s && i < s->n_fields ? &s->fields[i] : NULL;
}

const dx_field *dx_signature_input(const dx_signature *s, size_t i)
{
    return s && i < s->n_inputs ? &s->fields[i] : NULL;
}

const dx_field *dx_signature_output(const dx_signature *s, size_t i)
{
    return s && i < s->n_fields - s->n_inputs ? &s->fields[s->n_inputs + i]
                                              : NULL;
}

const dx_field *dx_signature_find(const dx_signature *s, const char *name)
{
    return s ? find(s, name) : NULL;
}

int dx_signature_string(const dx_signature *s, char **out)
{
    if (!s || !out)
        return DX_EINVAL;
    dx__sb b;
    dx__sb_init(&b);
    for (size_t i = 0; i < s->n_fields; i++) {
        if (i == s->n_inputs)
            dx__sb_puts(&b, " -> ");
        else if (i)
            dx__sb_puts(&b, ", ");
        dx__sb_puts(&b, s->fields[i].name);
    }
    if (s->n_inputs == s->n_fields)
        dx__sb_puts(&b, " -> ");
    dx__sb_cstr(&b);
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

/* ---- derived signatures ----------------------------------------------- */

int dx_signature_insert(const dx_signature *s, long index,
                        const dx_field_spec *f, dx_signature **out,
                        dx_diag *diag)
{
    if (!s || !f || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "signature: invalid argument");
    if (f->name && find(s, f->name))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "signature: field \"%s\" already exists", f->name);
    bool in = f->role == DX_FIELD_INPUT;
    long len = (long)(in ? s->n_inputs : s->n_fields - s->n_inputs);
    long at = index < 0 ? index + len + 1 : index; /* -1 appends */
    if (at < 0 || at > len)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "signature: cannot insert %s field \"%s\" at index "
                           "%ld (valid: %ld to %ld)",
                           in ? "input" : "output", f->name ? f->name : "",
                           index, -len - 1, len);
    dx_field nf;
    int rc = field_from_spec(&nf, f, diag);
    if (rc != DX_OK)
        return rc;
    dx_field *v = fields_dup(s, 1);
    if (!v) {
        field_clear(&nf);
        return nomem(diag, "signature");
    }
    size_t pos = (in ? 0 : s->n_inputs) + (size_t)at;
    memmove(&v[pos + 1], &v[pos], (s->n_fields - pos) * sizeof *v);
    v[pos] = nf;
    rc = sig_make(v, s->n_fields + 1, s->instructions, out);
    return rc == DX_OK ? DX_OK : nomem(diag, "signature");
}

int dx_signature_prepend(const dx_signature *s, const dx_field_spec *f,
                         dx_signature **out, dx_diag *diag)
{
    return dx_signature_insert(s, 0, f, out, diag);
}

int dx_signature_append(const dx_signature *s, const dx_field_spec *f,
                        dx_signature **out, dx_diag *diag)
{
    return dx_signature_insert(s, -1, f, out, diag);
}

int dx_signature_delete(const dx_signature *s, const char *name,
                        dx_signature **out)
{
    if (!s || !name || !out)
        return DX_EINVAL;
    const dx_field *f = find(s, name);
    if (!f) { /* as DSPy: deleting an absent field changes nothing */
        *out = dx_signature_ref((dx_signature *)s);
        return DX_OK;
    }
    dx_field *v = fields_dup(s, 0);
    if (!v)
        return DX_ENOMEM;
    size_t i = (size_t)(f - s->fields);
    field_clear(&v[i]);
    memmove(&v[i], &v[i + 1], (s->n_fields - i - 1) * sizeof *v);
    return sig_make(v, s->n_fields - 1, s->instructions, out);
}

int dx_signature_with_instructions(const dx_signature *s,
                                   const char *instructions, dx_signature **out)
{
    if (!s || !out)
        return DX_EINVAL;
    dx_field *v = fields_dup(s, 0);
    if (!v)
        return DX_ENOMEM;
    return sig_make(v, s->n_fields, instructions, out);
}

int dx_signature_append_instructions(const dx_signature *s,
                                     const char *instructions,
                                     dx_signature **out)
{
    if (!s || !instructions || !out)
        return DX_EINVAL;
    size_t n = strlen(s->instructions) + strlen(instructions) + 3;
    char *t = dx_malloc(n);
    if (!t)
        return DX_ENOMEM;
    snprintf(t, n, "%s\n\n%s", s->instructions, instructions);
    int rc = dx_signature_with_instructions(s, t, out);
    dx_free(t);
    return rc;
}

int dx_signature_with_field_text(const dx_signature *s, const char *name,
                                 const char *desc, const char *prefix,
                                 dx_signature **out)
{
    if (!s || !name || !out)
        return DX_EINVAL;
    const dx_field *f = find(s, name);
    if (!f)
        return DX_ENOENT;
    dx_field *v = fields_dup(s, 0);
    if (!v)
        return DX_ENOMEM;
    dx_field *d = &v[f - s->fields];
    char *nd = desc ? dx_strdup(desc) : NULL;
    char *np = prefix ? dx_strdup(prefix) : NULL;
    if ((desc && !nd) || (prefix && !np)) {
        dx_free(nd);
        dx_free(np);
        fields_free(v, s->n_fields);
        return DX_ENOMEM;
    }
    if (nd) {
        dx_free(d->desc);
        d->desc = nd;
    }
    if (np) {
        dx_free(d->prefix);
        d->prefix = np;
    }
    return sig_make(v, s->n_fields, s->instructions, out);
}

int dx_signature_copy(const dx_signature *s, dx_signature **out)
{
    return dx_signature_with_instructions(s, s ? s->instructions : NULL, out);
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* DSPy's equals matches fields by name, so order does not count. */
bool dx_signature_equal(const dx_signature *a, const dx_signature *b)
{
    if (a == b)
        return true;
    if (!a || !b || a->n_fields != b->n_fields ||
        strcmp(a->instructions, b->instructions) != 0)
        return false;
    for (size_t i = 0; i < a->n_fields; i++) {
        const dx_field *x = &a->fields[i], *y = find(b, x->name);
        if (!y || x->role != y->role || !str_eq(x->desc, y->desc) ||
            !str_eq(x->prefix, y->prefix) ||
            !str_eq(x->constraints, y->constraints) ||
            x->type_undefined != y->type_undefined ||
            !dx_type_equal(x->type, y->type))
            return false;
    }
    return true;
}

/* ---- state ------------------------------------------------------------ */

cJSON *dx_signature_dump_state(const dx_signature *s)
{
    if (!s)
        return NULL;
    dx__pyjson_init();
    cJSON *o = cJSON_CreateObject(), *arr = NULL;
    if (!o || !add(o, "instructions", cJSON_CreateString(s->instructions)) ||
        !add(o, "fields", arr = cJSON_CreateArray()))
        goto fail;
    for (size_t i = 0; i < s->n_fields; i++) {
        cJSON *f = cJSON_CreateObject();
        if (!f)
            goto fail;
        cJSON_AddItemToArray(arr, f);
        if (!add(f, "prefix", cJSON_CreateString(s->fields[i].prefix)) ||
            !add(f, "description", cJSON_CreateString(s->fields[i].desc)))
            goto fail;
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

int dx_signature_load_state(const dx_signature *s, const cJSON *state,
                            dx_signature **out, dx_diag *diag)
{
    if (!s || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "signature: invalid argument");
    const cJSON *ins = cJSON_GetObjectItemCaseSensitive(state, "instructions");
    const cJSON *fl = cJSON_GetObjectItemCaseSensitive(state, "fields");
    if (!cJSON_IsObject(state))
        return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                           "signature state: expected an object");
    if (!cJSON_IsString(ins))
        return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                           "signature state: \"instructions\" must be a "
                           "string");
    if (!cJSON_IsArray(fl))
        return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                           "signature state: \"fields\" must be a list");
    int i = 0;
    for (const cJSON *f = fl->child; f; f = f->next, i++) {
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(f, "prefix")) ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(f, "description")))
            return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                               "signature state: fields[%d] needs string "
                               "\"prefix\" and \"description\"",
                               i);
    }
    dx_field *v = fields_dup(s, 0);
    if (!v)
        return nomem(diag, "signature");
    /* zip(fields, saved, strict=False): by position, up to the shorter. */
    const cJSON *f = fl->child;
    for (size_t k = 0; k < s->n_fields && f; k++, f = f->next) {
        char *p = dx_strdup(
            cJSON_GetObjectItemCaseSensitive(f, "prefix")->valuestring);
        char *d = dx_strdup(
            cJSON_GetObjectItemCaseSensitive(f, "description")->valuestring);
        if (!p || !d) {
            dx_free(p);
            dx_free(d);
            fields_free(v, s->n_fields);
            return nomem(diag, "signature");
        }
        dx_free(v[k].prefix);
        dx_free(v[k].desc);
        v[k].prefix = p;
        v[k].desc = d;
    }
    int rc = sig_make(v, s->n_fields, ins->valuestring, out);
    return rc == DX_OK ? DX_OK : nomem(diag, "signature");
}

/* ---- cached renderings ------------------------------------------------ */

/* The slot is published with one compare-and-swap: racing makers may both
 * compute, the loser frees its copy, and every caller sees the winner's. */
const char *dx_signature_cached(const dx_signature *s, unsigned slot,
                                char *(*make)(const dx_signature *s, void *ud),
                                void *ud)
{
    if (!s || slot >= DX_SIGNATURE_CACHE_SLOTS || !make)
        return NULL;
    /* The cache is the one mutable part of an immutable signature. */
    _Atomic(char *) *c = &((dx_signature *)s)->cache[slot];
    char *have = atomic_load_explicit(c, memory_order_acquire);
    if (have)
        return have;
    char *mine = make(s, ud);
    if (!mine)
        return NULL;
    char *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(
            c, &expected, mine, memory_order_acq_rel, memory_order_acquire))
        return mine;
    dx_free(mine);
    return expected;
}
