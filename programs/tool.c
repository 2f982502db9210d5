/*
 * tool.c — tools (see tool.h): argument schemas as DSPy derives them, the
 * rendering DSPy prints, validation, the isolated call (a process per call
 * under a timeout, every failure an observation), the calculator, finish,
 * and modules used as tools.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/blocking.h"
#include "dspex/error.h"
#include "dspex/runtime.h"
#include "dspex/server.h"
#include "dspex/tool.h"
#include "module_int.h"
#include "pyjson.h"

struct dx_tool {
    atomic_int refs;
    char *name;
    char *desc;
    cJSON *args;     /* {"arg": schema} in declaration order */
    char **required; /* names, declaration order */
    size_t n_required;
    dx_tool_fn fn;
    void *ud;
    void (*ud_free)(void *);
    int64_t timeout_ms;
    size_t max_result;
    bool blocking; /* fn runs on a blocking thread (dx_tool_set_blocking) */
};

/* ---- schemas ------------------------------------------------------------ */

/* pydantic's TypeAdapter(T).json_schema() for the types a DSPy string
 * signature can name, with pydantic's key order ("items" before "type"). */
static cJSON *type_schema(const dx_type *t)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    bool ok = true;
    switch (t->kind) {
    case DX_TYPE_STR:
        ok = cJSON_AddStringToObject(o, "type", "string") != NULL;
        break;
    case DX_TYPE_INT:
        ok = cJSON_AddStringToObject(o, "type", "integer") != NULL;
        break;
    case DX_TYPE_FLOAT:
        ok = cJSON_AddStringToObject(o, "type", "number") != NULL;
        break;
    case DX_TYPE_BOOL:
        ok = cJSON_AddStringToObject(o, "type", "boolean") != NULL;
        break;
    case DX_TYPE_ANY:
        break;
    case DX_TYPE_LIST: {
        cJSON *items =
            t->n_args ? type_schema(t->args[0]) : cJSON_CreateObject();
        ok = items && cJSON_AddItemToObject(o, "items", items);
        ok = ok && cJSON_AddStringToObject(o, "type", "array");
        break;
    }
    case DX_TYPE_DICT: {
        cJSON *ap = NULL;
        if (t->n_args == 2 && t->args[1]->kind != DX_TYPE_ANY)
            ap = type_schema(t->args[1]);
        else
            ap = cJSON_CreateTrue();
        ok = ap && cJSON_AddItemToObject(o, "additionalProperties", ap);
        ok = ok && cJSON_AddStringToObject(o, "type", "object");
        break;
    }
    case DX_TYPE_LITERAL: {
        int n = cJSON_GetArraySize(t->choices);
        bool all_str = true, all_int = true;
        const cJSON *c;
        cJSON_ArrayForEach(c, t->choices)
        {
            all_str = all_str && cJSON_IsString(c);
            all_int = all_int && cJSON_IsNumber(c) && dx__json_is_int(c);
        }
        cJSON *v = n == 1 ? cJSON_Duplicate(t->choices->child, true)
                          : cJSON_Duplicate(t->choices, true);
        ok = v && cJSON_AddItemToObject(o, n == 1 ? "const" : "enum", v);
        if (ok && (all_str || all_int))
            ok = cJSON_AddStringToObject(o, "type",
                                         all_str ? "string" : "integer");
        break;
    }
    case DX_TYPE_OPTIONAL: {
        cJSON *any = cJSON_AddArrayToObject(o, "anyOf");
        cJSON *inner = type_schema(t->args[0]);
        cJSON *null = cJSON_CreateObject();
        ok = any && inner && null &&
             cJSON_AddStringToObject(null, "type", "null");
        if (ok) {
            cJSON_AddItemToArray(any, inner);
            cJSON_AddItemToArray(any, null);
        } else {
            cJSON_Delete(inner);
            cJSON_Delete(null);
        }
        break;
    }
    case DX_TYPE_OBJECT:
        cJSON_Delete(o);
        return cJSON_Duplicate(t->schema, true);
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ---- Python repr ---------------------------------------------------------- */

static void py_repr_str(dx__sb *b, const char *s)
{
    char q = (strchr(s, '\'') && !strchr(s, '"')) ? '"' : '\'';
    dx__sb_putc(b, q);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\\' || *p == (unsigned char)q) {
            dx__sb_putc(b, '\\');
            dx__sb_putc(b, (char)*p);
        } else if (*p == '\n') {
            dx__sb_puts(b, "\\n");
        } else if (*p == '\r') {
            dx__sb_puts(b, "\\r");
        } else if (*p == '\t') {
            dx__sb_puts(b, "\\t");
        } else if (*p < 0x20 || *p == 0x7f) {
            dx__sb_printf(b, "\\x%02x", *p);
        } else {
            dx__sb_putc(b, (char)*p);
        }
    }
    dx__sb_putc(b, q);
}

/* repr() of the Python value a JSON value loads as. */
static void py_repr(dx__sb *b, const cJSON *v)
{
    if (cJSON_IsString(v)) {
        py_repr_str(b, v->valuestring);
    } else if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        bool obj = cJSON_IsObject(v);
        dx__sb_putc(b, obj ? '{' : '[');
        const cJSON *c;
        bool first = true;
        cJSON_ArrayForEach(c, v)
        {
            if (!first)
                dx__sb_puts(b, ", ");
            first = false;
            if (obj) {
                py_repr_str(b, c->string);
                dx__sb_puts(b, ": ");
            }
            py_repr(b, c);
        }
        dx__sb_putc(b, obj ? '}' : ']');
    } else {
        dx__pystr(b, v); /* True / False / None / numbers */
    }
}

/* ---- creation ------------------------------------------------------------- */

static bool valid_name(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void tool_free(dx_tool *t)
{
    if (t->ud_free)
        t->ud_free(t->ud);
    dx_free(t->name);
    dx_free(t->desc);
    cJSON_Delete(t->args);
    for (size_t i = 0; i < t->n_required; i++)
        dx_free(t->required[i]);
    dx_free(t->required);
    dx_free(t);
}

static int add_param(dx_tool *t, const dx_tool_param *p, dx_diag *diag)
{
    if (!p->name || !p->name[0])
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "tool %s: an argument has no name", t->name);
    if (cJSON_GetObjectItemCaseSensitive(t->args, p->name))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "tool %s: argument \"%s\" is declared twice",
                           t->name, p->name);
    cJSON *schema = NULL;
    if (p->type) {
        dx_type *ty = NULL;
        dx_diag td = {0};
        int rc = dx_type_parse(p->type, NULL, 0, &ty, &td);
        if (rc != DX_OK)
            return dx_diag_set(diag, rc, 0, td.column,
                               "tool %s: argument \"%s\": %s", t->name, p->name,
                               td.msg);
        schema = type_schema(ty);
        dx_type_free(ty);
    } else {
        schema = cJSON_CreateObject();
    }
    if (!schema)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    bool ok = true;
    if (p->default_json) {
        cJSON *d = dx__json_parse(p->default_json, strlen(p->default_json),
                                  NULL, NULL);
        if (!d) {
            cJSON_Delete(schema);
            return dx_diag_set(diag, DX_ESYNTAX, 0, 0,
                               "tool %s: argument \"%s\": the default is not "
                               "JSON: %s",
                               t->name, p->name, p->default_json);
        }
        ok = cJSON_AddItemToObject(schema, "default", d);
    }
    if (ok && p->desc)
        ok = cJSON_AddStringToObject(schema, "description", p->desc) != NULL;
    if (ok)
        ok = cJSON_AddItemToObject(t->args, p->name, schema);
    else
        cJSON_Delete(schema);
    if (ok && p->required && !p->default_json) {
        char **v = dx_realloc(t->required, (t->n_required + 1) * sizeof *v);
        ok = v != NULL;
        if (ok) {
            t->required = v;
            v[t->n_required] = dx_strdup(p->name);
            ok = v[t->n_required] != NULL;
            if (ok)
                t->n_required++;
        }
    }
    return ok ? DX_OK : dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
}

static int tool_make(const char *name, const char *desc,
                     const dx_tool_param *params, size_t n, dx_tool_fn fn,
                     void *ud, void (*ud_free)(void *), dx_tool **out,
                     dx_diag *diag)
{
    dx__pyjson_init();
    if (!out || !fn || (n && !params)) {
        if (ud_free)
            ud_free(ud);
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_tool_new: NULL out, fn or params");
    }
    *out = NULL;
    if (!valid_name(name)) {
        if (ud_free)
            ud_free(ud);
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "tool name \"%s\": use 1 to 64 letters, digits, "
                           "'_' or '-'",
                           name ? name : "(null)");
    }
    dx_tool *t = dx_calloc(1, sizeof *t);
    if (!t) {
        if (ud_free)
            ud_free(ud);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    atomic_init(&t->refs, 1);
    t->fn = fn;
    t->ud = ud;
    t->ud_free = ud_free;
    t->timeout_ms = DX_TOOL_DEFAULT_TIMEOUT_MS;
    t->max_result = DX_TOOL_DEFAULT_MAX_RESULT;
    t->name = dx_strdup(name);
    t->desc = desc ? dx_strdup(desc) : NULL;
    t->args = cJSON_CreateObject();
    if (!t->name || (desc && !t->desc) || !t->args) {
        tool_free(t);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        int rc = add_param(t, &params[i], diag);
        if (rc != DX_OK) {
            tool_free(t);
            return rc;
        }
    }
    *out = t;
    return DX_OK;
}

int dx_tool_new(const char *name, const char *desc, const dx_tool_param *params,
                size_t n_params, dx_tool_fn fn, void *ud, dx_tool **out,
                dx_diag *diag)
{
    return tool_make(name, desc, params, n_params, fn, ud, NULL, out, diag);
}

int dx_tool_new_owned(const char *name, const char *desc,
                      const dx_tool_param *params, size_t n_params,
                      dx_tool_fn fn, void *ud, void (*ud_free)(void *),
                      dx_tool **out, dx_diag *diag)
{
    return tool_make(name, desc, params, n_params, fn, ud, ud_free, out, diag);
}

dx_tool *dx_tool_ref(dx_tool *t)
{
    if (t)
        atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void dx_tool_unref(dx_tool *t)
{
    if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
        tool_free(t);
}

int dx_tool_set_timeout(dx_tool *t, int64_t ms)
{
    if (!t || ms <= 0)
        return DX_EINVAL;
    t->timeout_ms = ms;
    return DX_OK;
}

int dx_tool_set_blocking(dx_tool *t, bool blocking)
{
    if (!t)
        return DX_EINVAL;
    t->blocking = blocking;
    return DX_OK;
}

int dx_tool_set_max_result(dx_tool *t, size_t bytes)
{
    if (!t || bytes == 0)
        return DX_EINVAL;
    t->max_result = bytes;
    return DX_OK;
}

const char *dx_tool_name(const dx_tool *t)
{
    return t ? t->name : NULL;
}

const char *dx_tool_desc(const dx_tool *t)
{
    return t ? t->desc : NULL;
}

const cJSON *dx_tool_args(const dx_tool *t)
{
    return t ? t->args : NULL;
}

/* ---- rendering ------------------------------------------------------------ */

int dx_tool_describe(const dx_tool *t, char **out)
{
    if (!t || !out)
        return DX_EINVAL;
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_puts(&b, t->name);
    if (t->desc && t->desc[0]) {
        /* DSPy replaces newlines in the whole description sentence. */
        dx__sb_puts(&b, ", whose description is <desc>");
        for (const char *p = t->desc; *p; p++) {
            if (*p == '\n')
                dx__sb_puts(&b, "  ");
            else
                dx__sb_putc(&b, *p);
        }
        dx__sb_puts(&b, "</desc>.");
    } else {
        dx__sb_putc(&b, '.');
    }
    dx__sb_puts(&b, " It takes arguments ");
    py_repr(&b, t->args);
    dx__sb_putc(&b, '.');
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

int dx_tool_parameters_json(const dx_tool *t, char **out)
{
    if (!t || !out)
        return DX_EINVAL;
    *out = NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON *req = cJSON_CreateArray();
    bool ok = o && req && cJSON_AddStringToObject(o, "type", "object");
    cJSON *props = ok ? cJSON_Duplicate(t->args, true) : NULL;
    ok = ok && props && cJSON_AddItemToObject(o, "properties", props);
    if (!ok)
        cJSON_Delete(props);
    for (size_t i = 0; ok && i < t->n_required; i++) {
        cJSON *s = cJSON_CreateString(t->required[i]);
        ok = s && cJSON_AddItemToArray(req, s);
    }
    ok = ok && cJSON_AddItemToObject(o, "required", req);
    if (!ok) {
        if (!o || !cJSON_GetObjectItemCaseSensitive(o, "required"))
            cJSON_Delete(req);
        cJSON_Delete(o);
        return DX_ENOMEM;
    }
    dx__sb b;
    dx__sb_init(&b);
    dx__pyjson_dump_sep(&b, o, -1, ",", ":");
    cJSON_Delete(o);
    *out = dx__sb_take(&b);
    return *out ? DX_OK : DX_ENOMEM;
}

int dx_tool_add_to_request(const dx_tool *t, dx_lm_request *req)
{
    if (!t || !req)
        return DX_EINVAL;
    char *params = NULL;
    int rc = dx_tool_parameters_json(t, &params);
    if (rc != DX_OK)
        return rc;
    rc = dx_lm_request_add_tool(req, t->name, t->desc, params);
    dx_free(params);
    return rc;
}

/* ---- validation (the jsonschema checks DSPy runs, with its messages) ---- */

static bool is_type(const cJSON *v, const char *type)
{
    if (!strcmp(type, "string"))
        return cJSON_IsString(v);
    if (!strcmp(type, "integer"))
        return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) &&
               isfinite(v->valuedouble);
    if (!strcmp(type, "number"))
        return cJSON_IsNumber(v);
    if (!strcmp(type, "boolean"))
        return cJSON_IsBool(v);
    if (!strcmp(type, "array"))
        return cJSON_IsArray(v);
    if (!strcmp(type, "object"))
        return cJSON_IsObject(v);
    if (!strcmp(type, "null"))
        return cJSON_IsNull(v);
    return true;
}

/* NULL when v satisfies schema, else a dx_malloc'd message. */
static char *check(const cJSON *schema, const cJSON *v, int depth)
{
    if (!cJSON_IsObject(schema) || depth > 32)
        return NULL;
    dx__sb b;
    dx__sb_init(&b);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(schema, "type");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(schema, "enum");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(schema, "const");
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(schema, "anyOf");
    if (cJSON_IsString(type) && !is_type(v, type->valuestring)) {
        py_repr(&b, v);
        dx__sb_printf(&b, " is not of type '%s'", type->valuestring);
        return dx__sb_take(&b);
    }
    if (cn && !cJSON_Compare(cn, v, true)) {
        py_repr(&b, cn);
        dx__sb_puts(&b, " was expected");
        return dx__sb_take(&b);
    }
    if (cJSON_IsArray(en)) {
        bool found = false;
        const cJSON *c;
        cJSON_ArrayForEach(c, en) found = found || cJSON_Compare(c, v, true);
        if (!found) {
            py_repr(&b, v);
            dx__sb_puts(&b, " is not one of ");
            py_repr(&b, en);
            return dx__sb_take(&b);
        }
    }
    if (cJSON_IsArray(any)) {
        const cJSON *c;
        cJSON_ArrayForEach(c, any)
        {
            char *m = check(c, v, depth + 1);
            if (!m) {
                dx__sb_free(&b);
                return NULL;
            }
            dx_free(m);
        }
        py_repr(&b, v);
        dx__sb_puts(&b, " is not valid under any of the given schemas");
        return dx__sb_take(&b);
    }
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
    if (cJSON_IsArray(v) && cJSON_IsObject(items)) {
        const cJSON *c;
        cJSON_ArrayForEach(c, v)
        {
            char *m = check(items, c, depth + 1);
            if (m) {
                dx__sb_free(&b);
                return m;
            }
        }
    }
    const cJSON *ap =
        cJSON_GetObjectItemCaseSensitive(schema, "additionalProperties");
    if (cJSON_IsObject(v) && cJSON_IsObject(ap)) {
        const cJSON *c;
        cJSON_ArrayForEach(c, v)
        {
            char *m = check(ap, c, depth + 1);
            if (m) {
                dx__sb_free(&b);
                return m;
            }
        }
    }
    dx__sb_free(&b);
    return NULL;
}

int dx_tool_validate(const dx_tool *t, const cJSON *args, dx_diag *diag)
{
    if (!t)
        return DX_EINVAL;
    if (args && !cJSON_IsObject(args))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "the arguments must be a JSON object");
    const cJSON *a;
    cJSON_ArrayForEach(a, args)
    {
        const cJSON *schema =
            cJSON_GetObjectItemCaseSensitive(t->args, a->string);
        if (!schema)
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "Arg %s is not in the tool's args.", a->string);
        char *m = check(schema, a, 0);
        if (m) {
            dx_diag_set(diag, DX_EINVAL, 0, 0, "Arg %s is invalid: %s",
                        a->string, m);
            dx_free(m);
            return DX_EINVAL;
        }
    }
    for (size_t i = 0; i < t->n_required; i++)
        if (!args || !cJSON_GetObjectItemCaseSensitive(args, t->required[i]))
            return dx_diag_set(diag, DX_EINVAL, 0, 0,
                               "%s() missing 1 required positional argument: "
                               "'%s'",
                               t->name, t->required[i]);
    return DX_OK;
}

/* ---- calling ---------------------------------------------------------------- */

/* What the caller and the tool's process share; two references, the
 * process's dropped by arg_free however it ends, and a third for a
 * blocking tool's call while it runs on its blocking thread. */
typedef struct call_slot {
    atomic_int refs;
    atomic_bool done;
    dx_tool *tool;
    cJSON *args;
    int rc;
    char *result;
    dx_pid pid; /* the tool's process (the caller's to know) */
} call_slot;

static void slot_unref(void *arg)
{
    call_slot *s = arg;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    dx_tool_unref(s->tool);
    cJSON_Delete(s->args);
    dx_free(s->result);
    dx_free(s);
}

/* What a tool's fn gave back on a blocking thread. */
typedef struct blocking_outcome {
    int rc;
    char *text;
} blocking_outcome;

static void blocking_outcome_free(void *p)
{
    blocking_outcome *o = p;
    if (o)
        dx_free(o->text);
    dx_free(o);
}

/* fn on a blocking thread; the slot is kept alive by the call's own
 * reference, also after the tool's process was killed at its timeout. */
static void *tool_on_blocking_thread(void *arg)
{
    call_slot *s = arg;
    char *r = NULL;
    int rc = s->tool->fn(s->args, &r, s->tool->ud);
    blocking_outcome *o = dx_malloc(sizeof *o);
    if (!o) {
        dx_free(r);
        return NULL;
    }
    *o = (blocking_outcome){rc, r};
    return o;
}

static void tool_proc(void *arg)
{
    call_slot *s = arg;
    dx_set_label("dspex.tool");
    char *r = NULL;
    int rc;
    if (s->tool->blocking) {
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
        void *out = NULL;
        rc = dx_run_blocking(tool_on_blocking_thread, s, slot_unref,
                             blocking_outcome_free, DX_INFINITY, &out);
        blocking_outcome *o = out;
        if (rc == DX_OK && !o)
            rc = DX_ENOMEM;
        if (o) {
            rc = o->rc;
            r = o->text;
            o->text = NULL;
            blocking_outcome_free(o);
        }
    } else {
        rc = s->tool->fn(s->args, &r, s->tool->ud);
    }
    s->result = r;
    s->rc = rc;
    atomic_store_explicit(&s->done, true, memory_order_release);
}

/* The arguments with declared defaults filled in (what Python's call would
 * bind). */
static cJSON *bind_args(const dx_tool *t, const cJSON *args)
{
    cJSON *a = args ? cJSON_Duplicate(args, true) : cJSON_CreateObject();
    if (!a)
        return NULL;
    const cJSON *p;
    cJSON_ArrayForEach(p, t->args)
    {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(p, "default");
        if (!d || cJSON_GetObjectItemCaseSensitive(a, p->string))
            continue;
        cJSON *c = cJSON_Duplicate(d, true);
        if (!c || !cJSON_AddItemToObject(a, p->string, c)) {
            cJSON_Delete(c);
            cJSON_Delete(a);
            return NULL;
        }
    }
    return a;
}

/* Valid UTF-8 of at most max bytes: bad sequences become U+FFFD (Python's
 * errors="replace"), a longer text is cut at a character boundary and
 * marked. */
static char *clean_text(const char *s, size_t max)
{
    dx__sb b;
    dx__sb_init(&b);
    const unsigned char *p = (const unsigned char *)s;
    size_t total = strlen(s);
    bool cut = false;
    while (*p) {
        size_t n = 0;
        if (*p < 0x80)
            n = 1;
        else if ((*p & 0xE0) == 0xC0 && *p >= 0xC2)
            n = 2;
        else if ((*p & 0xF0) == 0xE0)
            n = 3;
        else if ((*p & 0xF8) == 0xF0 && *p <= 0xF4)
            n = 4;
        bool ok = n > 0;
        for (size_t k = 1; ok && k < n; k++)
            ok = (p[k] & 0xC0) == 0x80;
        if (ok && n == 3)
            ok = !(p[0] == 0xE0 && p[1] < 0xA0) &&
                 !(p[0] == 0xED && p[1] >= 0xA0);
        if (ok && n == 4)
            ok = !(p[0] == 0xF0 && p[1] < 0x90) &&
                 !(p[0] == 0xF4 && p[1] >= 0x90);
        size_t add = ok ? n : 3;
        if (b.len + add > max) {
            cut = true;
            break;
        }
        if (ok)
            dx__sb_put(&b, (const char *)p, n);
        else
            dx__sb_puts(&b, "\xEF\xBF\xBD");
        p += ok ? n : 1;
    }
    if (cut)
        dx__sb_printf(&b, "\n... (cut at %zu of %zu bytes)", b.len, total);
    if (!dx__sb_cstr(&b)) {
        dx__sb_free(&b);
        return NULL;
    }
    return dx__sb_take(&b);
}

static char *error_obs(const dx_tool *t, const char *fmt, ...) DX_PRINTF(2, 3);
static char *error_obs(const dx_tool *t, const char *fmt, ...)
{
    dx__sb b;
    dx__sb_init(&b);
    dx__sb_printf(&b, "Execution error in %s: ", t->name);
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    dx__sb_puts(&b, what);
    return dx__sb_take(&b);
}

/* The calling process ended while it waited (an example past its
 * deadline, an agent stopped by its supervisor): its reference goes with
 * it, and so does the tool's process, whose result nobody would read. */
static void caller_gone(void *arg)
{
    call_slot *s = arg;
    dx_kill(s->pid);
    slot_unref(s);
}

/* The call itself, in a process (it monitors the tool's process). */
typedef struct call_req {
    const dx_tool *t;
    const cJSON *args;
    int rc;
    char *obs;
    dx_tool_status status;
} call_req;

static void call_body(void *arg)
{
    call_req *r = arg;
    const dx_tool *t = r->t;
    r->rc = DX_ENOMEM;
    call_slot *s = dx_calloc(1, sizeof *s);
    if (!s)
        return;
    atomic_init(&s->refs, 2);
    atomic_init(&s->done, false);
    s->tool = dx_tool_ref((dx_tool *)t);
    s->args = bind_args(t, r->args);
    if (!s->args) {
        atomic_store(&s->refs, 1);
        slot_unref(s);
        return;
    }
    dx_ref mon = DX_NOREF;
    dx_pid pid = {0};
    /* The runtime kills the tool's process a little after its timeout
     * even if this process cannot run to do it: it shares a scheduler the
     * tool holds in code that never calls the runtime (an endless loop). */
    int64_t started_ms = dx_now_ms();
    dx_spawn_opts so = {.monitor = true,
                        .arg_free = slot_unref,
                        .kill_after_ms = dx__runtime_kill_after(t->timeout_ms)};
    int rc = dx_spawn_opt(tool_proc, s, &so, &pid, &mon);
    if (rc != DX_OK) {
        atomic_store(&s->refs, 1);
        slot_unref(s);
        r->rc = rc;
        return;
    }
    s->pid = pid;
    dx_ptie *tie = dx_ptie_new(s, caller_gone);
    dx_term *reason = NULL;
    bool timed_out = false;
    dx_msg *down = NULL;
    dx_match match = {
        .fields = DX_MATCH_TAG | DX_MATCH_REF, .tag = DX_TAG_DOWN, .ref = mon};
    if (dx_receive(&match, t->timeout_ms, &down) == DX_ETIMEDOUT) {
        timed_out = true;
        dx_kill(pid);
        dx_receive(&match, DX_INFINITY, &down);
    }
    dx_ptie_cut(tie);
    if (down) {
        reason = dx_msg_take_term(down);
        dx_msg_free(down);
    }
    /* Killed past its timeout by the runtime, not by us: a timeout all the
     * same. */
    if (!timed_out && dx__killed_past(reason, started_ms, t->timeout_ms))
        timed_out = true;

    char *obs = NULL;
    if (atomic_load_explicit(&s->done, memory_order_acquire)) {
        if (s->rc != 0) {
            r->status = DX_TOOL_FAILED;
            if (s->result) {
                char *why = clean_text(s->result, t->max_result);
                obs = why ? error_obs(t, "%s", why) : NULL;
                dx_free(why);
            } else {
                obs = error_obs(t, "%s (%s)", dx_strerror(s->rc),
                                dx_err_name(s->rc));
            }
        } else if (!s->result) {
            r->status = DX_TOOL_NO_RESULT;
            obs = error_obs(t, "the tool returned no result");
        } else {
            r->status = DX_TOOL_OK;
            obs = clean_text(s->result, t->max_result);
        }
    } else if (timed_out) {
        r->status = DX_TOOL_TIMEOUT;
        obs = error_obs(t,
                        "no result within %" PRId64
                        " ms (the tool's process was killed)",
                        t->timeout_ms);
    } else {
        r->status = DX_TOOL_CRASHED;
        char text[256] = "unknown";
        if (reason)
            dx_term_format(reason, text, sizeof text);
        obs = error_obs(t, "the tool's process died: %s", text);
    }
    dx_term_free(reason);
    slot_unref(s);
    r->obs = obs;
    r->rc = obs ? DX_OK : DX_ENOMEM;
}

static void free_req(void *arg)
{
    call_req *r = arg;
    dx_free(r->obs);
    dx_free(r);
}

int dx_tool_call(const dx_tool *t, const cJSON *args, char **observation,
                 dx_tool_status *status)
{
    if (!t || !observation)
        return DX_EINVAL;
    *observation = NULL;
    if (!dx_runtime_running())
        return DX_ESTATE;
    dx__pyjson_init();

    dx_diag d = {0};
    if (dx_tool_validate(t, args, &d) != DX_OK) {
        if (status)
            *status = DX_TOOL_BAD_ARGS;
        *observation = error_obs(t, "%s", d.msg);
        return *observation ? DX_OK : DX_ENOMEM;
    }
    /* Heap: a process reads it when the caller is a host thread. A
     * calling process killed during the call frees it as it ends. */
    call_req *r = dx_calloc(1, sizeof *r);
    if (!r)
        return DX_ENOMEM;
    r->t = t;
    r->args = args;
    r->rc = DX_EDOWN;
    dx_ptie *tie = dx_ptie_new(r, free_req);
    int rc = dx__in_process(call_body, r);
    dx_ptie_cut(tie);
    if (rc == DX_OK)
        rc = r->rc;
    if (rc == DX_OK) {
        *observation = r->obs;
        if (status)
            *status = r->status;
    } else {
        dx_free(r->obs);
    }
    dx_free(r);
    return rc;
}

/* ---- finish ----------------------------------------------------------------- */

static int finish_fn(const cJSON *args, char **result, void *ud)
{
    (void)args;
    (void)ud;
    *result = dx_strdup("Completed.");
    return *result ? DX_OK : DX_ENOMEM;
}

dx_tool *dx_tool_finish_new(const char *desc)
{
    dx_tool *t = NULL;
    dx_tool_new("finish", desc, NULL, 0, finish_fn, NULL, &t, NULL);
    return t;
}

/* ---- the calculator ------------------------------------------------------------ */

typedef struct num {
    bool is_int;
    long long i;
    double d;
} num;

typedef struct calc {
    const char *s;
    size_t pos;
    int depth;
    char err[160];
} calc;

static double as_d(num v)
{
    return v.is_int ? (double)v.i : v.d;
}

static void skip_ws(calc *c)
{
    while (c->s[c->pos] == ' ' || c->s[c->pos] == '\t' || c->s[c->pos] == '\n')
        c->pos++;
}

static bool fail(calc *c, const char *fmt, ...) DX_PRINTF(2, 3);
static bool fail(calc *c, const char *fmt, ...)
{
    if (c->err[0])
        return false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return false;
}

static bool accept(calc *c, const char *op)
{
    skip_ws(c);
    size_t n = strlen(op);
    if (strncmp(c->s + c->pos, op, n) != 0)
        return false;
    /* "*" must not eat the first half of "**", nor "/" of "//". */
    if (n == 1 && (op[0] == '*' || op[0] == '/') && c->s[c->pos + 1] == op[0])
        return false;
    c->pos += n;
    return true;
}

static bool finite_or_fail(calc *c, num *v)
{
    if (!v->is_int && !isfinite(v->d))
        return fail(c, "numerical result out of range");
    return true;
}

static bool expr(calc *c, num *out);

static bool atom(calc *c, num *out)
{
    skip_ws(c);
    if (accept(c, "(")) {
        if (!expr(c, out))
            return false;
        if (!accept(c, ")"))
            return fail(c, "expected ')' at column %zu", c->pos + 1);
        return true;
    }
    const char *p = c->s + c->pos;
    size_t n = 0;
    bool is_float = false;
    /* Python's digit separators: an underscore between digits. */
    while ((p[n] >= '0' && p[n] <= '9') ||
           (n > 0 && p[n] == '_' && p[n + 1] >= '0' && p[n + 1] <= '9'))
        n++;
    if (p[n] == '.') {
        is_float = true;
        n++;
        while (p[n] >= '0' && p[n] <= '9')
            n++;
    }
    if (n == 0 || (n == 1 && p[0] == '.'))
        return fail(c, "expected a number at column %zu", c->pos + 1);
    if (p[n] == 'e' || p[n] == 'E') {
        size_t k = n + 1;
        if (p[k] == '+' || p[k] == '-')
            k++;
        if (p[k] >= '0' && p[k] <= '9') {
            is_float = true;
            while (p[k] >= '0' && p[k] <= '9')
                k++;
            n = k;
        }
    }
    char buf[64];
    size_t m = 0;
    for (size_t k = 0; k < n; k++)
        if (p[k] != '_' && m + 1 < sizeof buf)
            buf[m++] = p[k];
    buf[m] = 0;
    if (m + 1 >= sizeof buf)
        return fail(c, "number too long at column %zu", c->pos + 1);
    char *end = NULL;
    if (is_float) {
        out->is_int = false;
        out->d = strtod(buf, &end);
    } else {
        errno = 0;
        out->is_int = true;
        out->i = strtoll(buf, &end, 10);
        if (errno == ERANGE)
            return fail(c, "integer too large at column %zu", c->pos + 1);
    }
    c->pos += n;
    return finite_or_fail(c, out);
}

static bool unary(calc *c, num *out);

/* power := atom ['**' unary]  (right-associative, binds tighter than a
 * unary minus on its left, as in Python: -2**2 == -4) */
static bool power(calc *c, num *out)
{
    if (!atom(c, out))
        return false;
    if (!accept(c, "**"))
        return true;
    num e;
    if (!unary(c, &e))
        return false;
    if (out->is_int && e.is_int && e.i >= 0) {
        long long r = 1, b = out->i;
        for (long long k = 0; k < e.i; k++) {
            if (__builtin_mul_overflow(r, b, &r))
                return fail(c, "integer overflow");
            if (r == 0 || r == 1)
                break; /* 0, 1 and -1 to any power: no need to go on */
        }
        if (b == -1)
            r = (e.i % 2) ? -1 : 1;
        out->i = r;
        return true;
    }
    double base = as_d(*out), ex = as_d(e);
    if (base == 0 && ex < 0)
        return fail(c, "0.0 cannot be raised to a negative power");
    if (base < 0 && ex != floor(ex))
        return fail(c, "math domain error (a negative number to a "
                       "fractional power)");
    out->is_int = false;
    out->d = pow(base, ex);
    return finite_or_fail(c, out);
}

static bool unary(calc *c, num *out)
{
    if (++c->depth > 200)
        return fail(c, "expression nested too deeply");
    bool ok;
    if (accept(c, "-")) {
        ok = unary(c, out);
        if (ok && out->is_int) {
            if (out->i == LLONG_MIN)
                ok = fail(c, "integer overflow");
            else
                out->i = -out->i;
        } else if (ok) {
            out->d = -out->d;
        }
    } else if (accept(c, "+")) {
        ok = unary(c, out);
    } else {
        ok = power(c, out);
    }
    c->depth--;
    return ok;
}

static bool term(calc *c, num *out)
{
    if (!unary(c, out))
        return false;
    for (;;) {
        int op;
        if (accept(c, "//"))
            op = 'f';
        else if (accept(c, "*"))
            op = '*';
        else if (accept(c, "/"))
            op = '/';
        else if (accept(c, "%"))
            op = '%';
        else
            return true;
        num r;
        if (!unary(c, &r))
            return false;
        if (op != '*' && as_d(r) == 0)
            return fail(c, op == '/'   ? "division by zero"
                           : op == '%' ? "integer modulo by zero"
                                       : "integer division or modulo by zero");
        if (op == '/') {
            out->d = as_d(*out) / as_d(r);
            out->is_int = false;
        } else if (out->is_int && r.is_int) {
            long long a = out->i, b = r.i;
            if (op == '*') {
                if (__builtin_mul_overflow(a, b, &out->i))
                    return fail(c, "integer overflow");
            } else {
                if (a == LLONG_MIN && b == -1)
                    return fail(c, "integer overflow");
                long long q = a / b, m = a % b;
                if (m != 0 && ((m < 0) != (b < 0))) {
                    q--;
                    m += b;
                }
                out->i = op == 'f' ? q : m;
            }
        } else {
            double a = as_d(*out), b = as_d(r);
            out->is_int = false;
            if (op == '*') {
                out->d = a * b;
            } else {
                double m = fmod(a, b);
                if (m != 0 && ((m < 0) != (b < 0)))
                    m += b;
                out->d = op == 'f' ? floor(a / b) : m;
            }
        }
        if (!finite_or_fail(c, out))
            return false;
    }
}

static bool expr(calc *c, num *out)
{
    if (++c->depth > 200)
        return fail(c, "expression nested too deeply");
    if (!term(c, out))
        return false;
    for (;;) {
        int op;
        if (accept(c, "+"))
            op = '+';
        else if (accept(c, "-"))
            op = '-';
        else
            break;
        num r;
        if (!term(c, &r))
            return false;
        if (out->is_int && r.is_int) {
            bool ovf = op == '+' ? __builtin_add_overflow(out->i, r.i, &out->i)
                                 : __builtin_sub_overflow(out->i, r.i, &out->i);
            if (ovf)
                return fail(c, "integer overflow");
        } else {
            out->d = op == '+' ? as_d(*out) + as_d(r) : as_d(*out) - as_d(r);
            out->is_int = false;
            if (!finite_or_fail(c, out))
                return false;
        }
    }
    c->depth--;
    return true;
}

static int calculator_fn(const cJSON *args, char **result, void *ud)
{
    (void)ud;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(args, "expression");
    calc c = {.s = cJSON_IsString(e) ? e->valuestring : ""};
    num v = {0};
    bool ok = expr(&c, &v);
    skip_ws(&c);
    if (ok && c.s[c.pos])
        ok = fail(&c, "unexpected '%c' at column %zu", c.s[c.pos], c.pos + 1);
    if (!ok) {
        *result = dx_strdup(c.err[0] ? c.err : "invalid expression");
        return DX_EINVAL;
    }
    char buf[48];
    if (v.is_int)
        snprintf(buf, sizeof buf, "%lld", v.i);
    else
        dx__pyfloat_repr(v.d, buf);
    *result = dx_strdup(buf);
    return *result ? DX_OK : DX_ENOMEM;
}

dx_tool *dx_tool_calculator_new(void)
{
    static const dx_tool_param params[] = {
        {.name = "expression",
         .type = "str",
         .desc = "an arithmetic expression, e.g. (2 + 3) * 4 ** 2 / 7",
         .required = true},
    };
    dx_tool *t = NULL;
    dx_tool_new("calculator",
                "Evaluates an arithmetic expression: numbers, + - * / // % "
                "**, parentheses.",
                params, 1, calculator_fn, NULL, &t, NULL);
    return t;
}

/* ---- modules as tools ------------------------------------------------------------ */

typedef struct module_tool {
    const dx_module *m;
    dx_call_opts opts;
    char *lm_name;
    char *rollout_id;
} module_tool;

static void module_tool_free(void *arg)
{
    module_tool *mt = arg;
    if (!mt)
        return;
    dx_free(mt->lm_name);
    dx_free(mt->rollout_id);
    dx_free(mt);
}

static int module_fn(const cJSON *args, char **result, void *ud)
{
    module_tool *mt = ud;
    /* The inputs, held across the module's call (the tool's process may
     * be killed there at its timeout). */
    dx__held *h = dx__held_new();
    dx_example *in = h ? h->ex[0] = dx_example_new() : NULL;
    if (!in) {
        dx__held_free(h);
        return DX_ENOMEM;
    }
    const cJSON *a;
    cJSON_ArrayForEach(a, args)
    {
        if (dx_example_set_value(in, a->string, a) != DX_OK) {
            dx__held_free(h);
            return DX_ENOMEM;
        }
    }
    dx_call_opts o = mt->opts;
    o.lm_name = mt->lm_name;
    o.rollout_id = mt->rollout_id;
    dx_prediction *pred = NULL;
    dx_diag d = {0};
    int rc = dx_module_call(mt->m, in, &o, &pred, NULL, &d);
    dx__held_free(h);
    if (rc != DX_OK) {
        *result = dx_strdup(d.msg[0] ? d.msg : dx_strerror(rc));
        return rc;
    }
    dx__sb b;
    dx__sb_init(&b);
    const dx_example *f = dx_prediction_fields(pred);
    cJSON *o2 = cJSON_CreateObject();
    for (size_t i = 0; o2 && i < dx_example_len(f); i++)
        cJSON_AddItemToObject(o2, dx_example_key(f, i),
                              cJSON_Duplicate(dx_example_value(f, i), true));
    dx__pyjson_dump(&b, o2, -1);
    cJSON_Delete(o2);
    dx_prediction_free(pred);
    *result = dx__sb_take(&b);
    return *result ? DX_OK : DX_ENOMEM;
}

int dx_tool_from_module(const char *name, const char *desc, const dx_module *m,
                        const dx_tool_param *params, size_t n_params,
                        const dx_call_opts *opts, dx_tool **out, dx_diag *diag)
{
    if (!m || !out)
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_tool_from_module: NULL module or out");
    module_tool *mt = dx_calloc(1, sizeof *mt);
    if (!mt)
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    mt->m = m;
    mt->opts = opts ? *opts : (dx_call_opts){.lm = DX_NOPID};
    mt->lm_name = mt->opts.lm_name ? dx_strdup(mt->opts.lm_name) : NULL;
    mt->rollout_id =
        mt->opts.rollout_id ? dx_strdup(mt->opts.rollout_id) : NULL;
    mt->opts.lm_name = NULL;
    mt->opts.rollout_id = NULL;
    if ((opts && opts->lm_name && !mt->lm_name) ||
        (opts && opts->rollout_id && !mt->rollout_id)) {
        module_tool_free(mt);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    if (params)
        return tool_make(name, desc, params, n_params, module_fn, mt,
                         module_tool_free, out, diag);

    /* The first predictor's inputs, typed as its signature says. */
    dx_named_predictor *preds = NULL;
    size_t np = 0;
    if (dx_module_predictors(m, &preds, &np) != DX_OK || np == 0) {
        dx_free(preds);
        module_tool_free(mt);
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "tool %s: the module has no predictor to take "
                           "the arguments from; declare them",
                           name ? name : "(null)");
    }
    const dx_signature *s = dx_predict_signature(preds[0].predict);
    dx_free(preds);
    size_t n = dx_signature_n_inputs(s);
    dx_tool_param *ps = dx_calloc(n ? n : 1, sizeof *ps);
    char **types = dx_calloc(n ? n : 1, sizeof *types);
    int rc = ps && types ? DX_OK : DX_ENOMEM;
    for (size_t i = 0; rc == DX_OK && i < n; i++) {
        const dx_field *f = dx_signature_input(s, i);
        rc = dx_type_name(f->type, &types[i]);
        ps[i] = (dx_tool_param){
            .name = f->name,
            .type = types[i],
            .desc = strncmp(f->desc, "${", 2) == 0 ? NULL : f->desc,
            .required = true,
        };
    }
    if (rc == DX_OK)
        rc = tool_make(name, desc, ps, n, module_fn, mt, module_tool_free, out,
                       diag);
    else
        module_tool_free(mt);
    for (size_t i = 0; types && i < n; i++)
        dx_free(types[i]);
    dx_free(types);
    dx_free(ps);
    if (rc == DX_ENOMEM && diag && diag->code != DX_ENOMEM)
        dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    return rc;
}

/* ---- tools served by actors ---------------------------------------------- */

/* Whom an actor tool calls: a registered name here, or a pid. */
typedef struct actor_ref {
    char *tool; /* the tool's name, sent in the request */
    char *name; /* NULL: call pid */
    dx_pid pid;
} actor_ref;

static void actor_ref_free(void *p)
{
    actor_ref *a = p;
    if (a) {
        dx_free(a->tool);
        dx_free(a->name);
        dx_free(a);
    }
}

static int actor_fn(const cJSON *args, char **result, void *ud)
{
    const actor_ref *a = ud;
    char *json = cJSON_PrintUnformatted(args);
    dx_msg *req = json ? dx_msg_new(DX_TAG_TERM) : NULL;
    if (req)
        req->term = dx_tuple(3, dx_atom("tool_call"), dx_str(a->tool),
                             dx_binary(json, strlen(json)));
    cJSON_free(json);
    if (!req || !req->term) {
        dx_msg_free(req);
        return DX_ENOMEM;
    }
    dx_msg *reply = NULL;
    /* No deadline here: the tool's own timeout kills this process. */
    int rc = a->name ? dx_call_named(a->name, req, DX_INFINITY, &reply)
                     : dx_call(a->pid, req, DX_INFINITY, &reply);
    if (rc != DX_OK) {
        char text[256];
        if (a->name)
            snprintf(text, sizeof text, "actor \"%s\": %s", a->name,
                     rc == DX_ENOPROC
                         ? "no process is registered under this name"
                         : dx_strerror(rc));
        else
            snprintf(text, sizeof text, "the actor: %s",
                     rc == DX_ENOPROC ? "it is not running" : dx_strerror(rc));
        *result = dx_strdup(text);
        return rc;
    }
    const dx_term *t = reply->term;
    size_t len = 0;
    const char *data = NULL;
    bool error = false;
    if (t && dx_term_type_of(t) == DX_TERM_TUPLE && dx_term_size(t) == 2 &&
        (dx_is_atom(dx_term_at(t, 0), "error") ||
         dx_is_atom(dx_term_at(t, 0), "ok"))) {
        error = dx_is_atom(dx_term_at(t, 0), "error");
        data = dx_binary_data(dx_term_at(t, 1), &len);
    } else if (t) {
        data = dx_binary_data(t, &len);
    }
    if (!data) {
        dx_msg_free(reply);
        *result = dx_strdup("the actor's reply is not a binary, {ok, Binary} "
                            "or {error, Binary}");
        return DX_EPROVIDER;
    }
    *result = dx_malloc(len + 1);
    if (*result) {
        memcpy(*result, data, len);
        (*result)[len] = '\0';
    }
    dx_msg_free(reply);
    if (!*result)
        return DX_ENOMEM;
    return error ? DX_EPROVIDER : DX_OK;
}

static int actor_tool(const char *name, const char *desc,
                      const dx_tool_param *params, size_t n_params,
                      const char *actor_name, dx_pid pid, dx_tool **out,
                      dx_diag *diag)
{
    actor_ref *a = dx_calloc(1, sizeof *a);
    if (a) {
        a->tool = dx_strdup(name ? name : "");
        a->name = actor_name ? dx_strdup(actor_name) : NULL;
        a->pid = pid;
    }
    if (!a || !a->tool || (actor_name && !a->name)) {
        actor_ref_free(a);
        return dx_diag_set(diag, DX_ENOMEM, 0, 0, "out of memory");
    }
    return tool_make(name, desc, params, n_params, actor_fn, a, actor_ref_free,
                     out, diag);
}

int dx_tool_from_actor(const char *name, const char *desc,
                       const dx_tool_param *params, size_t n_params,
                       const char *actor_name, dx_tool **out, dx_diag *diag)
{
    if (!actor_name || !actor_name[0])
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_tool_from_actor: no actor name");
    return actor_tool(name, desc, params, n_params, actor_name, DX_NOPID, out,
                      diag);
}

int dx_tool_from_pid(const char *name, const char *desc,
                     const dx_tool_param *params, size_t n_params, dx_pid pid,
                     dx_tool **out, dx_diag *diag)
{
    if (dx_pid_is_none(pid))
        return dx_diag_set(diag, DX_EINVAL, 0, 0,
                           "dx_tool_from_pid: no process");
    return actor_tool(name, desc, params, n_params, NULL, pid, out, diag);
}
