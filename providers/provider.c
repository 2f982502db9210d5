/*
 * provider.c — the common LM model (provider.h): request/response
 * constructors, the provider registry, model-string parsing and configs,
 * the error taxonomy, the reply and stream drivers every codec plugs into
 * (HTTP status and error-body handling, content-type checks, accumulation of
 * deltas into a response), redacted rendering for logs, and the helpers of
 * codec_int.h.
 *
 * Decoding and streaming share one accumulator: an unstreamed reply is
 * decoded by the codec into the same deltas a stream produces, so both
 * paths build the response with the same code and cannot drift apart.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec_int.h"
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/provider.h"
#include "dspex/sse.h"

/* Bounds of one accumulated answer: a provider sending more is treated as
 * malformed instead of being allowed to exhaust memory. */
#define MAX_CHOICES 64
#define MAX_TOOL_CALLS 128
#define MAX_TEXT ((size_t)16 << 20)
#define MAX_ERROR_BODY ((size_t)64 << 10)

/* ---- cJSON ------------------------------------------------------------- */

static void *json_malloc(size_t n)
{
    return dx_malloc(n);
}

static void json_free(void *p)
{
    dx_free(p);
}

static pthread_once_t json_once = PTHREAD_ONCE_INIT;

static void json_hooks(void)
{
    /* Process-wide: any other cJSON user in the process allocates through
     * dx_malloc from now on too, which is harmless (dx_malloc is malloc
     * unless an embedder swapped it, and then it should see these too). */
    cJSON_Hooks h = {json_malloc, json_free};
    cJSON_InitHooks(&h);
}

void dx__json_init(void)
{
    pthread_once(&json_once, json_hooks);
}

const cJSON *dx__jobj(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsObject(v) ? v : NULL;
}

const cJSON *dx__jarr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsArray(v) ? v : NULL;
}

const char *dx__jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int64_t dx__jint(const cJSON *o, const char *key, int64_t dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
        fabs(v->valuedouble) > 9.0e15)
        return dflt;
    return (int64_t)v->valuedouble;
}

cJSON *dx__jadd_obj(dx__jb *b, cJSON *parent, const char *key)
{
    cJSON *o = cJSON_CreateObject();
    dx__jadd_item(b, parent, key, o);
    return b->oom ? NULL : o;
}

cJSON *dx__jadd_arr(dx__jb *b, cJSON *parent, const char *key)
{
    cJSON *o = cJSON_CreateArray();
    dx__jadd_item(b, parent, key, o);
    return b->oom ? NULL : o;
}

void dx__jadd_item(dx__jb *b, cJSON *parent, const char *key, cJSON *item)
{
    if (!item || !parent) {
        b->oom = true;
        cJSON_Delete(item);
        return;
    }
    cJSON_bool ok = key ? cJSON_AddItemToObject(parent, key, item)
                        : cJSON_AddItemToArray(parent, item);
    if (!ok) {
        b->oom = true;
        cJSON_Delete(item);
    }
}

void dx__jadd_str(dx__jb *b, cJSON *parent, const char *key, const char *v)
{
    dx__jadd_item(b, parent, key, cJSON_CreateString(v ? v : ""));
}

/* cJSON prints every number with "%1.15g", reads it back with sscanf and
 * prints it again with "%1.17g" if that lost anything: a few thousand
 * instructions per number, a large share of encoding a small request or
 * answer. Whole numbers (token counts, indices, seeds, timestamps) go in
 * as raw decimal text instead, the same JSON value. */
cJSON *dx__json_number(double v)
{
    const double exact = 9007199254740992.0; /* 2^53 */
    if (!(v >= -exact && v <= exact) || v != (double)(long long)v)
        return cJSON_CreateNumber(v);
    char buf[24], *p = buf + sizeof buf;
    long long n = (long long)v;
    unsigned long long u =
        n < 0 ? 0ull - (unsigned long long)n : (unsigned long long)n;
    *--p = '\0';
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (n < 0)
        *--p = '-';
    return cJSON_CreateRaw(p);
}

void dx__jadd_num(dx__jb *b, cJSON *parent, const char *key, double v)
{
    dx__jadd_item(b, parent, key, dx__json_number(v));
}

void dx__jadd_bool(dx__jb *b, cJSON *parent, const char *key, bool v)
{
    dx__jadd_item(b, parent, key, cJSON_CreateBool(v));
}

/* The texts that come here (a schema, tool parameters, a tool call's
 * arguments) were checked to be JSON objects when they were put into the
 * request; they go into the body as they are, checked again (cheaply, see
 * dx__json_is_object) in case a request was filled in by hand, instead of
 * being parsed into a tree only to be printed back. */
bool dx__jadd_raw(dx__jb *b, cJSON *parent, const char *key, const char *json)
{
    if (!dx__json_is_object(json))
        return false;
    dx__jadd_item(b, parent, key, cJSON_CreateRaw(json));
    return true;
}

/* ---- errors ------------------------------------------------------------ */

static const char *const kind_names[] = {
#define DX__LM_KIND_NAME(name, str) str,
    DX_LM_ERROR_KIND_MAP(DX__LM_KIND_NAME)
#undef DX__LM_KIND_NAME
};

const char *dx_lm_error_kind_name(dx_lm_error_kind k)
{
    if ((unsigned)k >= sizeof kind_names / sizeof kind_names[0])
        return "unknown";
    return kind_names[k];
}

bool dx_lm_error_retryable(dx_lm_error_kind k)
{
    switch (k) {
    case DX_LM_ERR_CONFLICT:
    case DX_LM_ERR_RATE_LIMITED:
    case DX_LM_ERR_OVERLOADED:
    case DX_LM_ERR_SERVER_ERROR:
    case DX_LM_ERR_TIMEOUT:
    case DX_LM_ERR_CONNECTION:
        return true;
    default:
        return false;
    }
}

void dx_lm_error_clear(dx_lm_error *e)
{
    if (!e)
        return;
    /* Field by field, not a memset of the ~700 bytes: every answered call
     * clears a few of these on its way, and the strings are read only up
     * to their NUL. */
    e->kind = DX_LM_ERR_NONE;
    e->status = 0;
    e->provider[0] = '\0';
    e->type[0] = '\0';
    e->message[0] = '\0';
    e->retry_after_ms = -1;
    e->request_id[0] = '\0';
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

static void verror(dx_lm_error *e, dx_lm_error_kind kind, int status,
                   const char *provider, const char *fmt, va_list ap)
{
    if (!e)
        return;
    dx_lm_error_clear(e);
    e->kind = kind;
    e->status = status;
    copy_str(e->provider, sizeof e->provider, provider);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
}

void dx_lm_error_set(dx_lm_error *e, dx_lm_error_kind kind, int status,
                     const char *provider, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(e, kind, status, provider, fmt, ap);
    va_end(ap);
}

int dx__bad(dx_lm_error *err, const char *prov, const char *fmt, ...)
{
    if (err) {
        char what[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        dx_lm_error_set(err, DX_LM_ERR_MALFORMED_RESPONSE, 0, prov, "%s: %s",
                        prov, what);
    }
    return DX_EPROVIDER;
}

int dx__reject(dx_lm_error *err, int code, const char *prov, const char *fmt,
               ...)
{
    if (err) {
        char what[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        dx_lm_error_set(err, DX_LM_ERR_BAD_REQUEST, 0, prov, "%s: %s", prov,
                        what);
    }
    return code;
}

int dx__oom(dx_lm_error *err, const char *prov)
{
    dx_lm_error_set(err, DX_LM_ERR_NONE, 0, prov, "%s: out of memory", prov);
    return DX_ENOMEM;
}

dx_lm_error_kind dx_lm_error_kind_for_status(int status)
{
    switch (status) {
    case 401:
    case 403:
        return DX_LM_ERR_AUTH;
    case 404:
        return DX_LM_ERR_NOT_FOUND;
    case 408:
        return DX_LM_ERR_TIMEOUT;
    case 409:
        return DX_LM_ERR_CONFLICT;
    case 429:
        return DX_LM_ERR_RATE_LIMITED;
    case 503:
    case 529:
        return DX_LM_ERR_OVERLOADED;
    default:
        break;
    }
    if (status >= 500 && status <= 599)
        return DX_LM_ERR_SERVER_ERROR;
    if (status >= 400 && status <= 499)
        return DX_LM_ERR_BAD_REQUEST;
    return DX_LM_ERR_MALFORMED_RESPONSE;
}

static bool parse_float(const char *s, double *out)
{
    if (!s)
        return false;
    while (isspace((unsigned char)*s))
        s++;
    if (!*s)
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    while (isspace((unsigned char)*end))
        end++;
    if (errno || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static bool parse_http_date(const char *s, time_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    /* IMF-fixdate, the only form servers may send (RFC 9110 5.6.7). The
     * C locale's day and month names are what strptime expects here. */
    const char *end = s ? strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm) : NULL;
    if (!end)
        return false;
    while (isspace((unsigned char)*end))
        end++;
    if (*end)
        return false;
    *out = timegm(&tm);
    return *out != (time_t)-1;
}

int64_t dx_lm_retry_after_ms(const char *retry_after_ms,
                             const char *retry_after, const char *date_now)
{
    double v;
    if (parse_float(retry_after_ms, &v) && v >= 0 && v < 1e12)
        return (int64_t)v;
    if (parse_float(retry_after, &v) && v >= 0 && v < 1e9)
        return (int64_t)(v * 1000.0);
    time_t when, now;
    if (!parse_http_date(retry_after, &when))
        return -1;
    if (!parse_http_date(date_now, &now))
        now = time(NULL);
    return when <= now ? 0 : (int64_t)(when - now) * 1000;
}

/* ---- requests ---------------------------------------------------------- */

/* The last text this thread found to be a JSON object. A program sends
 * the same schema (and tools) with every call, and the request is checked
 * where it is built and again where it is encoded: parsing it each time
 * was a large share of a call's CPU. A fixed buffer, so a thread that ends
 * leaves nothing behind; longer texts are parsed every time. */
#define CHECKED_MAX 2048
static _Thread_local char checked_text[CHECKED_MAX];
static _Thread_local size_t checked_len;

bool dx__json_is_object(const char *s)
{
    if (s == NULL)
        return false;
    size_t n = strlen(s);
    if (n > 0 && n == checked_len && memcmp(s, checked_text, n) == 0)
        return true;
    cJSON *j = dx__jparse(s, n);
    bool ok = cJSON_IsObject(j);
    cJSON_Delete(j);
    if (ok && n < CHECKED_MAX) {
        memcpy(checked_text, s, n);
        checked_len = n;
    }
    return ok;
}

dx_lm_request *dx_lm_request_new(const char *model)
{
    dx_lm_request *r = dx_calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (model && !(r->model = dx_strdup(model))) {
        dx_free(r);
        return NULL;
    }
    return r;
}

static void free_calls(dx_lm_tool_call *calls, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dx_free(calls[i].id);
        dx_free(calls[i].name);
        dx_free(calls[i].arguments);
    }
    dx_free(calls);
}

void dx_lm_request_free(dx_lm_request *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_messages; i++) {
        dx_lm_message *m = &r->messages[i];
        dx_free(m->content);
        dx_free(m->tool_call_id);
        free_calls(m->tool_calls, m->n_tool_calls);
    }
    dx_free(r->messages);
    for (size_t i = 0; i < r->n_stop; i++)
        dx_free(r->stop[i]);
    dx_free(r->stop);
    for (size_t i = 0; i < r->n_tools; i++) {
        dx_free(r->tools[i].name);
        dx_free(r->tools[i].description);
        dx_free(r->tools[i].parameters);
    }
    dx_free(r->tools);
    dx_free(r->model);
    dx_free(r->schema_name);
    dx_free(r->schema);
    dx_free(r->tool_choice_name);
    dx_free(r);
}

/* Grow an array by one element (arrays grow one at a time: requests are
 * small and built once). */
static void *grow(void *arr, size_t n, size_t elem)
{
    if (n >= SIZE_MAX / elem - 1)
        return NULL;
    return dx_realloc(arr, (n + 1) * elem);
}

static int push_message(dx_lm_request *r, dx_lm_role role, const char *content,
                        const char *call_id)
{
    char *c = dx_strdup(content);
    char *id = call_id ? dx_strdup(call_id) : NULL;
    dx_lm_message *m = grow(r->messages, r->n_messages, sizeof *m);
    if (!c || (call_id && !id) || !m) {
        dx_free(c);
        dx_free(id);
        if (m)
            r->messages = m;
        return DX_ENOMEM;
    }
    r->messages = m;
    m[r->n_messages++] =
        (dx_lm_message){.role = role, .content = c, .tool_call_id = id};
    return DX_OK;
}

int dx_lm_request_add_message(dx_lm_request *r, dx_lm_role role,
                              const char *content)
{
    if (!r || !content || role == DX_LM_TOOL || (unsigned)role > DX_LM_TOOL)
        return DX_EINVAL;
    return push_message(r, role, content, NULL);
}

int dx_lm_request_add_tool_result(dx_lm_request *r, const char *tool_call_id,
                                  const char *content)
{
    if (!r || !tool_call_id || !content)
        return DX_EINVAL;
    return push_message(r, DX_LM_TOOL, content, tool_call_id);
}

int dx_lm_request_add_tool_call(dx_lm_request *r, const char *id,
                                const char *name, const char *arguments)
{
    if (!r || !id || !name || !r->n_messages ||
        r->messages[r->n_messages - 1].role != DX_LM_ASSISTANT)
        return DX_EINVAL;
    if (!dx__json_is_object(arguments))
        return DX_EINVAL;
    dx_lm_message *m = &r->messages[r->n_messages - 1];
    dx_lm_tool_call c = {dx_strdup(id), dx_strdup(name), dx_strdup(arguments)};
    dx_lm_tool_call *arr = grow(m->tool_calls, m->n_tool_calls, sizeof *arr);
    if (arr)
        m->tool_calls = arr;
    if (!c.id || !c.name || !c.arguments || !arr) {
        dx_free(c.id);
        dx_free(c.name);
        dx_free(c.arguments);
        return DX_ENOMEM;
    }
    arr[m->n_tool_calls++] = c;
    return DX_OK;
}

int dx_lm_request_add_tool(dx_lm_request *r, const char *name,
                           const char *description, const char *parameters)
{
    if (!r || !name || !*name || !dx__json_is_object(parameters))
        return DX_EINVAL;
    dx_lm_tool t = {dx_strdup(name),
                    description ? dx_strdup(description) : NULL,
                    dx_strdup(parameters)};
    dx_lm_tool *arr = grow(r->tools, r->n_tools, sizeof *arr);
    if (arr)
        r->tools = arr;
    if (!t.name || (description && !t.description) || !t.parameters || !arr) {
        dx_free(t.name);
        dx_free(t.description);
        dx_free(t.parameters);
        return DX_ENOMEM;
    }
    arr[r->n_tools++] = t;
    return DX_OK;
}

int dx_lm_request_add_stop(dx_lm_request *r, const char *stop)
{
    if (!r || !stop || !*stop)
        return DX_EINVAL;
    char *s = dx_strdup(stop);
    char **arr = grow(r->stop, r->n_stop, sizeof *arr);
    if (arr)
        r->stop = arr;
    if (!s || !arr) {
        dx_free(s);
        return DX_ENOMEM;
    }
    arr[r->n_stop++] = s;
    return DX_OK;
}

int dx_lm_request_set_schema(dx_lm_request *r, const char *name,
                             const char *schema, bool strict)
{
    if (!r || !name || !*name || !dx__json_is_object(schema))
        return DX_EINVAL;
    char *n = dx_strdup(name), *s = dx_strdup(schema);
    if (!n || !s) {
        dx_free(n);
        dx_free(s);
        return DX_ENOMEM;
    }
    dx_free(r->schema_name);
    dx_free(r->schema);
    r->schema_name = n;
    r->schema = s;
    r->schema_strict = strict;
    r->format = DX_LM_FORMAT_JSON_SCHEMA;
    return DX_OK;
}

int dx_lm_request_set_tool_choice_name(dx_lm_request *r, const char *name)
{
    if (!r || !name || !*name)
        return DX_EINVAL;
    char *n = dx_strdup(name);
    if (!n)
        return DX_ENOMEM;
    dx_free(r->tool_choice_name);
    r->tool_choice_name = n;
    r->tool_choice = DX_LM_TOOL_CHOICE_NAMED;
    return DX_OK;
}

char *dx__system_text(const dx_lm_request *r, bool *oom)
{
    dx__buf b;
    dx__buf_init(&b, SIZE_MAX / 2);
    *oom = false;
    for (size_t i = 0; i < r->n_messages; i++) {
        if (r->messages[i].role != DX_LM_SYSTEM)
            continue;
        if ((b.len && dx__buf_append(&b, "\n\n", 2)) ||
            dx__buf_append(&b, r->messages[i].content,
                           strlen(r->messages[i].content))) {
            *oom = true;
            dx__buf_free(&b);
            return NULL;
        }
    }
    if (!b.p)
        return NULL;
    if (dx__buf_terminate(&b)) {
        *oom = true;
        dx__buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* ---- responses --------------------------------------------------------- */

dx_lm_response *dx_lm_response_share(dx_lm_response *r)
{
    if (r)
        __atomic_fetch_add(&r->extra_holders, 1, __ATOMIC_RELAXED);
    return r;
}

void dx_lm_response_free(dx_lm_response *r)
{
    if (!r)
        return;
    /* A shared response: drop this holder's share. The release orders this
     * holder's reads before the last holder's free (which acquires). */
    unsigned others = __atomic_load_n(&r->extra_holders, __ATOMIC_ACQUIRE);
    while (others > 0)
        if (__atomic_compare_exchange_n(&r->extra_holders, &others, others - 1,
                                        false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return;
    for (size_t i = 0; i < r->n_choices; i++) {
        dx_free(r->choices[i].text);
        dx_free(r->choices[i].finish_raw);
        free_calls(r->choices[i].tool_calls, r->choices[i].n_tool_calls);
    }
    dx_free(r->choices);
    dx_free(r->id);
    dx_free(r->model);
    dx_free(r->request_id);
    dx_free(r);
}

static int dup_field(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL)
        return DX_OK;
    *out = dx_strdup(s);
    return *out ? DX_OK : DX_ENOMEM;
}

/* Copy n tool calls into *out / *n_out. *n_out counts the calls started,
 * so a partial copy is freed whole by the owner's free. */
static int copy_calls(const dx_lm_tool_call *src, size_t n,
                      dx_lm_tool_call **out, size_t *n_out)
{
    if (n == 0)
        return DX_OK;
    *out = dx_calloc(n, sizeof **out);
    if (*out == NULL)
        return DX_ENOMEM;
    for (size_t k = 0; k < n; k++) {
        const dx_lm_tool_call *a = &src[k];
        dx_lm_tool_call *b = &(*out)[(*n_out)++];
        if (dup_field(a->id, &b->id) || dup_field(a->name, &b->name) ||
            dup_field(a->arguments, &b->arguments))
            return DX_ENOMEM;
    }
    return DX_OK;
}

static int copy_choice(const dx_lm_choice *s, dx_lm_choice *d)
{
    d->finish = s->finish;
    if (dup_field(s->text ? s->text : "", &d->text) ||
        dup_field(s->finish_raw, &d->finish_raw))
        return DX_ENOMEM;
    return copy_calls(s->tool_calls, s->n_tool_calls, &d->tool_calls,
                      &d->n_tool_calls);
}

/* The copy takes src's fields as they are: src was built through the
 * checked builders, so its schema and tool parameters are not parsed
 * again (that parse was most of the cost of a copy). */
int dx_lm_request_copy(const dx_lm_request *src, dx_lm_request **out)
{
    if (out == NULL)
        return DX_EINVAL;
    *out = NULL;
    if (src == NULL)
        return DX_EINVAL;
    dx_lm_request *r = dx_calloc(1, sizeof *r);
    if (r == NULL)
        return DX_ENOMEM;
    /* The scalars come with the struct; every owned pointer is replaced. */
    *r = *src;
    r->model = r->schema_name = r->schema = r->tool_choice_name = NULL;
    r->messages = NULL;
    r->stop = NULL;
    r->tools = NULL;
    r->n_messages = r->n_stop = r->n_tools = 0;
    int rc = DX_OK;
    if (dup_field(src->model, &r->model) ||
        dup_field(src->schema_name, &r->schema_name) ||
        dup_field(src->schema, &r->schema) ||
        dup_field(src->tool_choice_name, &r->tool_choice_name))
        rc = DX_ENOMEM;
    if (rc == DX_OK && src->n_messages > 0 &&
        (r->messages = dx_calloc(src->n_messages, sizeof *r->messages)) == NULL)
        rc = DX_ENOMEM;
    for (size_t i = 0; rc == DX_OK && i < src->n_messages; i++) {
        const dx_lm_message *a = &src->messages[i];
        dx_lm_message *b = &r->messages[r->n_messages++];
        b->role = a->role;
        if (dup_field(a->content, &b->content) ||
            dup_field(a->tool_call_id, &b->tool_call_id))
            rc = DX_ENOMEM;
        else
            rc = copy_calls(a->tool_calls, a->n_tool_calls, &b->tool_calls,
                            &b->n_tool_calls);
    }
    if (rc == DX_OK && src->n_stop > 0 &&
        (r->stop = dx_calloc(src->n_stop, sizeof *r->stop)) == NULL)
        rc = DX_ENOMEM;
    for (size_t i = 0; rc == DX_OK && i < src->n_stop; i++)
        rc = dup_field(src->stop[i], &r->stop[r->n_stop++]);
    if (rc == DX_OK && src->n_tools > 0 &&
        (r->tools = dx_calloc(src->n_tools, sizeof *r->tools)) == NULL)
        rc = DX_ENOMEM;
    for (size_t i = 0; rc == DX_OK && i < src->n_tools; i++) {
        const dx_lm_tool *a = &src->tools[i];
        dx_lm_tool *b = &r->tools[r->n_tools++];
        if (dup_field(a->name, &b->name) ||
            dup_field(a->description, &b->description) ||
            dup_field(a->parameters, &b->parameters))
            rc = DX_ENOMEM;
    }
    if (rc != DX_OK) {
        dx_lm_request_free(r);
        return rc;
    }
    *out = r;
    return DX_OK;
}

int dx_lm_response_copy(const dx_lm_response *src, dx_lm_response **out)
{
    if (out == NULL)
        return DX_EINVAL;
    *out = NULL;
    if (src == NULL)
        return DX_EINVAL;
    dx_lm_response *r = dx_calloc(1, sizeof *r);
    if (r == NULL)
        return DX_ENOMEM;
    int rc = DX_OK;
    if (dup_field(src->id, &r->id) || dup_field(src->model, &r->model) ||
        dup_field(src->request_id, &r->request_id))
        rc = DX_ENOMEM;
    if (rc == DX_OK && src->n_choices > 0) {
        r->choices = dx_calloc(src->n_choices, sizeof *r->choices);
        if (r->choices == NULL)
            rc = DX_ENOMEM;
    }
    for (size_t i = 0; rc == DX_OK && i < src->n_choices; i++)
        rc = copy_choice(&src->choices[i], &r->choices[r->n_choices++]);
    r->has_usage = src->has_usage;
    r->usage = src->usage;
    r->latency_ms = src->latency_ms;
    if (rc != DX_OK) {
        dx_lm_response_free(r);
        return rc;
    }
    *out = r;
    return DX_OK;
}

static const char *const finish_names[] = {
    "none", "stop", "length", "tool_calls", "content_filter", "other"};

const char *dx_lm_finish_name(dx_lm_finish f)
{
    if ((unsigned)f >= sizeof finish_names / sizeof finish_names[0])
        return "unknown";
    return finish_names[f];
}

int dx_lm_response_to_json(const dx_lm_response *r, char **out)
{
    dx__json_init();
    dx__jb b = {false};
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return DX_ENOMEM;
    if (r->id)
        dx__jadd_str(&b, root, "id", r->id);
    if (r->model)
        dx__jadd_str(&b, root, "model", r->model);
    if (r->request_id)
        dx__jadd_str(&b, root, "request_id", r->request_id);
    cJSON *chs = dx__jadd_arr(&b, root, "choices");
    for (size_t i = 0; chs && i < r->n_choices; i++) {
        const dx_lm_choice *c = &r->choices[i];
        cJSON *o = cJSON_CreateObject();
        dx__jadd_item(&b, chs, NULL, o);
        if (b.oom)
            break;
        dx__jadd_str(&b, o, "text", c->text);
        if (c->n_tool_calls) {
            cJSON *tcs = dx__jadd_arr(&b, o, "tool_calls");
            for (size_t k = 0; tcs && k < c->n_tool_calls; k++) {
                cJSON *t = cJSON_CreateObject();
                dx__jadd_item(&b, tcs, NULL, t);
                if (b.oom)
                    break;
                dx__jadd_str(&b, t, "id", c->tool_calls[k].id);
                dx__jadd_str(&b, t, "name", c->tool_calls[k].name);
                dx__jadd_str(&b, t, "arguments", c->tool_calls[k].arguments);
            }
        }
        dx__jadd_str(&b, o, "finish", dx_lm_finish_name(c->finish));
        if (c->finish_raw)
            dx__jadd_str(&b, o, "finish_raw", c->finish_raw);
    }
    if (r->has_usage) {
        cJSON *u = dx__jadd_obj(&b, root, "usage");
        if (u) {
            dx__jadd_num(&b, u, "input_tokens", (double)r->usage.input_tokens);
            dx__jadd_num(&b, u, "output_tokens",
                         (double)r->usage.output_tokens);
            dx__jadd_num(&b, u, "total_tokens", (double)r->usage.total_tokens);
            dx__jadd_num(&b, u, "cached_tokens",
                         (double)r->usage.cached_tokens);
        }
    }
    char *s = b.oom ? NULL : dx__jprint(root);
    cJSON_Delete(root);
    if (!s)
        return DX_ENOMEM;
    *out = s;
    return DX_OK;
}

/* ---- response from JSON ------------------------------------------------ */

/* The inverse of dx_lm_response_to_json: the SQLite cache tier stores that
 * text and decodes it on a disk hit. */

static int jdup_opt(const cJSON *o, const char *name, char **out)
{
    const char *s = dx__jstr(o, name);
    *out = NULL;
    if (!s)
        return DX_OK;
    *out = dx_strdup(s);
    return *out ? DX_OK : DX_ENOMEM;
}

static int jparse_choice(const cJSON *o, dx_lm_choice *c)
{
    const char *text = dx__jstr(o, "text");
    const char *fin = dx__jstr(o, "finish");
    if (!cJSON_IsObject(o) || !text || !fin)
        return DX_EINVAL;
    c->finish = DX_LM_FINISH_OTHER;
    for (int f = DX_LM_FINISH_NONE; f <= DX_LM_FINISH_OTHER; f++)
        if (strcmp(fin, dx_lm_finish_name((dx_lm_finish)f)) == 0)
            c->finish = (dx_lm_finish)f;
    c->text = dx_strdup(text);
    if (!c->text)
        return DX_ENOMEM;
    int rc = jdup_opt(o, "finish_raw", &c->finish_raw);
    const cJSON *tcs = cJSON_GetObjectItemCaseSensitive(o, "tool_calls");
    if (rc != DX_OK || !tcs)
        return rc;
    if (!cJSON_IsArray(tcs))
        return DX_EINVAL;
    size_t n = (size_t)cJSON_GetArraySize(tcs);
    if (n == 0)
        return DX_OK;
    c->tool_calls = dx_calloc(n, sizeof *c->tool_calls);
    if (!c->tool_calls)
        return DX_ENOMEM;
    const cJSON *t;
    cJSON_ArrayForEach(t, tcs)
    {
        dx_lm_tool_call *k = &c->tool_calls[c->n_tool_calls++];
        if (!dx__jstr(t, "id") || !dx__jstr(t, "name") ||
            !dx__jstr(t, "arguments"))
            return DX_EINVAL;
        if (jdup_opt(t, "id", &k->id) || jdup_opt(t, "name", &k->name) ||
            jdup_opt(t, "arguments", &k->arguments))
            return DX_ENOMEM;
    }
    return DX_OK;
}

int dx_lm_response_from_json(const char *json, size_t len, dx_lm_response **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    cJSON *root = dx__jparse(json, len);
    if (!root)
        return DX_EINVAL; /* dx__jparse cannot tell OOM from bad text */
    dx_lm_response *r = dx_calloc(1, sizeof *r);
    int rc = r ? DX_OK : DX_ENOMEM;
    const cJSON *chs = dx__jarr(root, "choices");
    if (rc == DX_OK && !chs)
        rc = DX_EINVAL;
    if (rc == DX_OK)
        rc = jdup_opt(root, "id", &r->id);
    if (rc == DX_OK)
        rc = jdup_opt(root, "model", &r->model);
    if (rc == DX_OK)
        rc = jdup_opt(root, "request_id", &r->request_id);
    size_t n = chs ? (size_t)cJSON_GetArraySize(chs) : 0;
    if (rc == DX_OK && n) {
        r->choices = dx_calloc(n, sizeof *r->choices);
        if (!r->choices)
            rc = DX_ENOMEM;
    }
    const cJSON *o;
    if (rc == DX_OK) {
        cJSON_ArrayForEach(o, chs)
        {
            rc = jparse_choice(o, &r->choices[r->n_choices++]);
            if (rc != DX_OK)
                break;
        }
    }
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (rc == DX_OK && u) {
        if (!cJSON_IsObject(u)) {
            rc = DX_EINVAL;
        } else {
            r->has_usage = true;
            r->usage.input_tokens = dx__jint(u, "input_tokens", 0);
            r->usage.output_tokens = dx__jint(u, "output_tokens", 0);
            r->usage.total_tokens = dx__jint(u, "total_tokens", 0);
            r->usage.cached_tokens = dx__jint(u, "cached_tokens", 0);
        }
    }
    cJSON_Delete(root);
    if (rc != DX_OK) {
        dx_lm_response_free(r);
        return rc;
    }
    *out = r;
    return DX_OK;
}

/* ---- registry ------------------------------------------------------------ */

#define MAX_REGISTERED 16

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static const dx_lm_provider *registered[MAX_REGISTERED];
static size_t n_registered;

/* The offline simulator (sim.h): dx_lm_call answers it in-process, so it
 * has no codec — only a name, so "sim/<profile>" model strings resolve, and
 * no key. */
const dx_lm_provider dx_lm_provider_sim = {
    .name = "sim",
    .version = DX_LM_PROVIDER_VERSION,
    .caps = DX_LM_CAP_STREAM | DX_LM_CAP_JSON_SCHEMA | DX_LM_CAP_JSON_OBJECT |
            DX_LM_CAP_N | DX_LM_CAP_SEED,
    .default_base_url = "http://sim.invalid",
};

static const dx_lm_provider *const builtins[] = {
    &dx_lm_provider_sim,
    &dx_lm_provider_openai,
    &dx_lm_provider_openai_compatible,
    &dx_lm_provider_anthropic,
    &dx_lm_provider_gemini,
};

static const dx_lm_provider *find_locked(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; i++)
        if (strlen(builtins[i]->name) == len &&
            memcmp(builtins[i]->name, name, len) == 0)
            return builtins[i];
    for (size_t i = 0; i < n_registered; i++)
        if (strlen(registered[i]->name) == len &&
            memcmp(registered[i]->name, name, len) == 0)
            return registered[i];
    return NULL;
}

static const dx_lm_provider *find_n(const char *name, size_t len)
{
    pthread_mutex_lock(&reg_lock);
    const dx_lm_provider *p = find_locked(name, len);
    pthread_mutex_unlock(&reg_lock);
    return p;
}

const dx_lm_provider *dx_lm_provider_find(const char *name)
{
    return name ? find_n(name, strlen(name)) : NULL;
}

int dx_lm_provider_register(const dx_lm_provider *p)
{
    if (!p || !p->name || !*p->name || strchr(p->name, '/') ||
        p->version != DX_LM_PROVIDER_VERSION || !p->encode || !p->decode)
        return DX_EINVAL;
    int rc = DX_OK;
    pthread_mutex_lock(&reg_lock);
    if (find_locked(p->name, strlen(p->name)))
        rc = DX_EEXIST;
    else if (n_registered == MAX_REGISTERED)
        rc = DX_ELIMIT;
    else
        registered[n_registered++] = p;
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

/* ---- configs --------------------------------------------------------------- */

void dx_lm_config_free(dx_lm_config *c)
{
    if (!c)
        return;
    if (c->api_key) {
        /* keys should not linger in freed memory */
        volatile char *k = c->api_key;
        while (*k)
            *k++ = '\0';
    }
    dx_free(c->api_key);
    for (size_t i = 0; i < c->n_headers; i++) {
        volatile char *h = c->headers[i]; /* may carry a key, as above */
        while (*h)
            *h++ = '\0';
        dx_free(c->headers[i]);
    }
    dx_free(c->headers);
    dx_free(c->model);
    dx_free(c->base_url);
    dx_free(c);
}

/* ---- the user's headers --------------------------------------------------- */

/* Headers the transport writes itself: one of the user's would contradict
 * its framing or its connection handling. */
static const char *const transport_headers[] = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
    "te",
    "upgrade",
    "keep-alive",
    "trailer",
    "proxy-connection",
};

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') ||
           ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static size_t header_name_len(const char *line)
{
    const char *colon = strchr(line, ':');
    return colon ? (size_t)(colon - line) : strlen(line);
}

static bool same_header_name(const char *a, const char *b)
{
    size_t n = header_name_len(a);
    return n == header_name_len(b) && strncasecmp(a, b, n) == 0;
}

/* Say why a header is refused (into why, never NULL here): DX_EINVAL. */
static int refuse_header(char *why, size_t why_len, const char *fmt, ...)
    DX_PRINTF(3, 4);
static int refuse_header(char *why, size_t why_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    return DX_EINVAL;
}

int dx_lm_header_explain(const char *line, char *why, size_t why_len)
{
    char scratch[1];
    if (!why || why_len == 0) {
        why = scratch;
        why_len = sizeof scratch;
    }
    why[0] = '\0';
    if (!line)
        return refuse_header(why, why_len, "no header");
    const char *colon = strchr(line, ':');
    if (!colon)
        return refuse_header(
            why, why_len, "a header is \"Name: value\"; this one has no ':'");
    size_t n = (size_t)(colon - line);
    if (n == 0)
        return refuse_header(why, why_len, "the header has no name before ':'");
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)line[i];
        if (is_tchar(ch))
            continue;
        char what[24];
        if (ch == ' ')
            snprintf(what, sizeof what, "a space");
        else if (ch > 0x20 && ch < 0x7F)
            snprintf(what, sizeof what, "'%c'", ch);
        else
            snprintf(what, sizeof what, "the byte 0x%02X", ch);
        /* Only what comes before it is shown: a line that is not a
         * header may well hold a key ("Authorization Bearer sk-..."). */
        return refuse_header(
            why, why_len,
            "header name \"%.*s...\": %s at %zu is not allowed "
            "in a name",
            (int)(i > 64 ? 64 : i), line, what, i + 1);
    }
    for (size_t i = 0; i < sizeof transport_headers / sizeof *transport_headers;
         i++)
        if (strlen(transport_headers[i]) == n &&
            strncasecmp(line, transport_headers[i], n) == 0)
            return refuse_header(
                why, why_len,
                "%.*s is written by the transport and cannot be "
                "set",
                (int)n, line);
    for (const char *v = colon + 1; *v; v++)
        if (((unsigned char)*v < 0x20 && *v != '\t') || *v == 0x7F)
            return refuse_header(why, why_len,
                                 "the value of %.*s has a control character "
                                 "(a line break?)",
                                 (int)(n > 64 ? 64 : n), line);
    return DX_OK;
}

int dx_lm_config_add_header(dx_lm_config *c, const char *line)
{
    if (!c || dx_lm_header_explain(line, NULL, 0) != DX_OK)
        return DX_EINVAL;
    size_t n = header_name_len(line);
    const char *v = line + n + 1, *end = v + strlen(v);
    while (*v == ' ' || *v == '\t')
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vl = (size_t)(end - v);
    char *copy = dx_malloc(n + 2 + vl + 1);
    if (!copy)
        return DX_ENOMEM;
    memcpy(copy, line, n);
    memcpy(copy + n, ": ", 2);
    memcpy(copy + n + 2, v, vl);
    copy[n + 2 + vl] = '\0';
    for (size_t i = 0; i < c->n_headers; i++)
        if (same_header_name(c->headers[i], copy)) {
            dx_free(c->headers[i]);
            c->headers[i] = copy;
            return DX_OK;
        }
    char **arr = grow(c->headers, c->n_headers, sizeof *arr);
    if (!arr) {
        dx_free(copy);
        return DX_ENOMEM;
    }
    c->headers = arr;
    c->headers[c->n_headers++] = copy;
    return DX_OK;
}

/* Put the config's own headers on an encoded request: each in place of
 * the provider's of the same name, else after them. */
static int apply_user_headers(const dx_lm_config *c, dx_lm_http *h)
{
    for (size_t u = 0; u < c->n_headers; u++) {
        size_t w = 0;
        for (size_t i = 0; i < h->n_headers; i++) {
            if (same_header_name(h->headers[i], c->headers[u]))
                dx_free(h->headers[i]);
            else
                h->headers[w++] = h->headers[i];
        }
        h->n_headers = w;
        char *copy = dx_strdup(c->headers[u]);
        char **arr = copy ? grow(h->headers, h->n_headers, sizeof *arr) : NULL;
        if (!arr) {
            dx_free(copy);
            return DX_ENOMEM;
        }
        h->headers = arr;
        h->headers[h->n_headers++] = copy;
    }
    return DX_OK;
}

/* Gemini puts the model in the URL path; everything else only in bodies.
 * Allow the characters model names use, nothing that changes the URL. */
static bool model_is_path_safe(const char *m)
{
    for (; *m; m++)
        if (!isalnum((unsigned char)*m) && !strchr("-._:/@", *m))
            return false;
    return true;
}

/* Names the registered providers, comma-separated, for an error. */
static void list_providers(char *buf, size_t n)
{
    const size_t n_builtin = sizeof builtins / sizeof builtins[0];
    size_t used = 0;
    buf[0] = '\0';
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < n_builtin + n_registered && used < n; i++) {
        const dx_lm_provider *p =
            i < n_builtin ? builtins[i] : registered[i - n_builtin];
        int w = snprintf(buf + used, n - used, "%s%s", i ? ", " : "", p->name);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    pthread_mutex_unlock(&reg_lock);
}

/* What dx_lm_config_new would build from these, checked: the provider, the
 * base URL and key it would use, or the reason it refuses them in why
 * (when why is not NULL). One place decides, so the sentence a user reads
 * is always the reason the config was refused. */
typedef struct config_parts {
    const dx_lm_provider *provider;
    const char *model, *url, *key;
    bool compat;
} config_parts;

static int config_check(const char *model_string, const char *base_url,
                        const char *api_key, config_parts *out, char *why,
                        size_t why_len)
{
    char scratch[2];
    if (!why || why_len == 0) {
        why = scratch;
        why_len = sizeof scratch;
    }
    why[0] = '\0';
    if (!model_string || !*model_string) {
        snprintf(why, why_len,
                 "no model given (want PROVIDER/MODEL, e.g. "
                 "openai/gpt-4o-mini)");
        return DX_EINVAL;
    }
    const char *slash = strchr(model_string, '/');
    if (!slash || slash == model_string || !slash[1]) {
        char names[160];
        list_providers(names, sizeof names);
        snprintf(why, why_len,
                 "\"%s\" is not PROVIDER/MODEL (e.g. openai/gpt-4o-mini; "
                 "providers: %s)",
                 model_string, names);
        return DX_EINVAL;
    }
    const dx_lm_provider *p =
        find_n(model_string, (size_t)(slash - model_string));
    if (!p) {
        char names[160];
        list_providers(names, sizeof names);
        snprintf(why, why_len, "unknown provider \"%.*s\" (providers: %s)",
                 (int)(slash - model_string), model_string, names);
        return DX_ENOENT;
    }
    const char *model = slash + 1;
    /* Keys and base URLs are optional for these two. */
    bool compat =
        p == &dx_lm_provider_openai_compatible || p == &dx_lm_provider_sim;
    if (!model_is_path_safe(model) || strstr(model, "..")) {
        snprintf(why, why_len,
                 "model name \"%s\" has characters a model name cannot have "
                 "(letters, digits and -._:/@ only, no \"..\")",
                 model);
        return DX_EINVAL;
    }
    if (p == &dx_lm_provider_openai_compatible && (!base_url || !*base_url)) {
        snprintf(why, why_len,
                 "%s/ needs the server's base URL (e.g. "
                 "http://127.0.0.1:8000/v1)",
                 p->name);
        return DX_EINVAL;
    }
    const char *url = base_url && *base_url ? base_url : p->default_base_url;
    if (!url ||
        (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
        snprintf(why, why_len,
                 "base URL \"%s\" is not an http:// or https:// URL",
                 url ? url : "");
        return DX_EINVAL;
    }
    const char *key = api_key && *api_key ? api_key : NULL;
    if (!key && !compat && p->key_env) {
        const char *env = getenv(p->key_env);
        key = env && *env ? env : NULL;
    }
    if (!key && !compat) {
        if (p->key_env)
            snprintf(why, why_len, "no API key for %s (set %s or pass one)",
                     p->name, p->key_env);
        else
            snprintf(why, why_len, "no API key for %s", p->name);
        return DX_ENOKEY;
    }
    if (key && strpbrk(key, "\r\n")) {
        /* would split the header line; the key itself is not repeated */
        snprintf(why, why_len, "the API key contains a line break");
        return DX_EINVAL;
    }
    if (out)
        *out = (config_parts){p, model, url, key, compat};
    return DX_OK;
}

int dx_lm_config_explain(const char *model_string, const char *base_url,
                         const char *api_key, char *why, size_t why_len)
{
    dx__json_init();
    return config_check(model_string, base_url, api_key, NULL, why, why_len);
}

int dx_lm_config_new(const char *model_string, const char *base_url,
                     const char *api_key, dx_lm_config **out)
{
    dx__json_init();
    if (!model_string || !out)
        return DX_EINVAL;
    config_parts parts;
    int rc = config_check(model_string, base_url, api_key, &parts, NULL, 0);
    if (rc != DX_OK)
        return rc;
    const dx_lm_provider *p = parts.provider;
    bool compat = parts.compat;
    const char *model = parts.model, *url = parts.url, *key = parts.key;
    dx_lm_config *c = dx_calloc(1, sizeof *c);
    if (!c)
        return DX_ENOMEM;
    c->provider = p;
    c->compat = compat;
    c->model = dx_strdup(model);
    c->base_url = dx_strdup(url);
    c->api_key = key ? dx_strdup(key) : NULL;
    if (!c->model || !c->base_url || (key && !c->api_key)) {
        dx_lm_config_free(c);
        return DX_ENOMEM;
    }
    size_t n = strlen(c->base_url);
    while (n > 0 && c->base_url[n - 1] == '/')
        c->base_url[--n] = '\0';
    *out = c;
    return DX_OK;
}

/* ---- encoded requests ---------------------------------------------------- */

void dx_lm_http_free(dx_lm_http *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n_headers; i++)
        dx_free(h->headers[i]);
    dx_free(h->headers);
    dx_free(h->path);
    dx_free(h->body);
    memset(h, 0, sizeof *h);
}

int dx__http_header(dx_lm_http *out, const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 3;
    char *line = dx_malloc(n);
    char **arr = grow(out->headers, out->n_headers, sizeof *arr);
    if (arr)
        out->headers = arr;
    if (!line || !arr) {
        dx_free(line);
        return DX_ENOMEM;
    }
    /* Built by hand: a request gets a few of these and printf is most of
     * their cost. */
    size_t nl = strlen(name), vl = n - nl - 3;
    memcpy(line, name, nl);
    memcpy(line + nl, ": ", 2);
    memcpy(line + nl + 2, value, vl + 1);
    arr[out->n_headers++] = line;
    return DX_OK;
}

int dx__http_post(dx_lm_http *out, const cJSON *body, const char *path_fmt, ...)
{
    memset(out, 0, sizeof *out);
    out->method = "POST";
    if (strchr(path_fmt, '%') == NULL) {
        out->path = dx_strdup(path_fmt); /* most paths are fixed */
    } else {
        va_list ap;
        va_start(ap, path_fmt);
        int n = vsnprintf(NULL, 0, path_fmt, ap);
        va_end(ap);
        if (n < 0)
            return DX_ENOMEM;
        out->path = dx_malloc((size_t)n + 1);
        if (out->path) {
            va_start(ap, path_fmt);
            vsnprintf(out->path, (size_t)n + 1, path_fmt, ap);
            va_end(ap);
        }
    }
    out->body = body ? dx__jprint_n(body, &out->body_len) : NULL;
    if (!out->path || (body && !out->body) ||
        dx__http_header(out, "Content-Type", "application/json")) {
        dx_lm_http_free(out);
        return DX_ENOMEM;
    }
    return DX_OK;
}

int dx__http_post_written(dx_lm_http *out, dx__buf *body, const char *path)
{
    memset(out, 0, sizeof *out);
    out->method = "POST";
    out->body = body->p;
    out->body_len = body->len;
    body->p = NULL;
    body->len = body->cap = 0;
    out->path = dx_strdup(path);
    if (!out->body || !out->path ||
        dx__http_header(out, "Content-Type", "application/json")) {
        dx_lm_http_free(out);
        return DX_ENOMEM;
    }
    return DX_OK;
}

int dx_lm_http_url(const dx_lm_config *c, const dx_lm_http *h, char **out)
{
    size_t nb = strlen(c->base_url), np = strlen(h->path);
    char *s = dx_malloc(nb + np + 1);
    if (!s)
        return DX_ENOMEM;
    memcpy(s, c->base_url, nb);
    memcpy(s + nb, h->path, np + 1);
    *out = s;
    return DX_OK;
}

static const char *const secret_headers[] = {
    "authorization", "x-api-key", "x-goog-api-key",
    "api-key",       "cookie",    "proxy-authorization",
};

static bool is_secret_header(const char *line)
{
    const char *colon = strchr(line, ':');
    size_t n = colon ? (size_t)(colon - line) : strlen(line);
    for (size_t i = 0; i < sizeof secret_headers / sizeof secret_headers[0];
         i++)
        if (strlen(secret_headers[i]) == n &&
            strncasecmp(line, secret_headers[i], n) == 0)
            return true;
    return false;
}

/* Bounded appender for dx_lm_http_render: counts what it would write. */
typedef struct out {
    char *buf;
    size_t cap, len;
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->len < o->cap) {
        size_t room = o->cap - o->len - 1;
        memcpy(o->buf + o->len, s, n < room ? n : room);
        o->buf[o->len + (n < room ? n : room)] = '\0';
    }
    o->len += n;
}

/* Append s with every occurrence of key replaced. */
static void put_scrubbed(out *o, const char *s, size_t n, const char *key)
{
    size_t klen = key ? strlen(key) : 0;
    size_t i = 0;
    while (i < n) {
        if (klen >= 4 && n - i >= klen && memcmp(s + i, key, klen) == 0) {
            put(o, "[redacted]", 10);
            i += klen;
        } else {
            put(o, s + i, 1);
            i++;
        }
    }
}

size_t dx_lm_http_render(const dx_lm_config *c, const dx_lm_http *h, char *buf,
                         size_t cap)
{
    out o = {buf, cap, 0};
    if (cap)
        buf[0] = '\0';
    const char *key = c ? c->api_key : NULL;
    put(&o, h->method ? h->method : "POST",
        strlen(h->method ? h->method : "POST"));
    put(&o, " ", 1);
    if (c)
        put_scrubbed(&o, c->base_url, strlen(c->base_url), key);
    if (h->path)
        put_scrubbed(&o, h->path, strlen(h->path), key);
    put(&o, "\n", 1);
    for (size_t i = 0; i < h->n_headers; i++) {
        const char *line = h->headers[i];
        bool users = false;
        for (size_t u = 0; c && u < c->n_headers && !users; u++)
            users = same_header_name(line, c->headers[u]);
        if (users || is_secret_header(line)) {
            const char *colon = strchr(line, ':');
            put(&o, line, colon ? (size_t)(colon - line) : strlen(line));
            put(&o, ": [redacted]", 12);
        } else {
            put_scrubbed(&o, line, strlen(line), key);
        }
        put(&o, "\n", 1);
    }
    put(&o, "\n", 1);
    if (h->body)
        put_scrubbed(&o, h->body, h->body_len, key);
    return o.len;
}

/* Replace the config's key in an error message (providers echo keys back in
 * "invalid key" messages). */
static void scrub_error(const dx_lm_config *c, dx_lm_error *e)
{
    if (!c || !c->api_key || strlen(c->api_key) < 4 || !e)
        return;
    char tmp[sizeof e->message];
    out o = {tmp, sizeof tmp, 0};
    tmp[0] = '\0';
    put_scrubbed(&o, e->message, strlen(e->message), c->api_key);
    memcpy(e->message, tmp, sizeof tmp);
    o = (out){tmp, sizeof tmp, 0};
    tmp[0] = '\0';
    put_scrubbed(&o, e->type, strlen(e->type), c->api_key);
    copy_str(e->type, sizeof e->type, tmp);
}

int dx_lm_encode(const dx_lm_config *c, const dx_lm_request *req,
                 dx_lm_http *out, dx_lm_error *err)
{
    dx__json_init();
    dx_lm_error_clear(err);
    memset(out, 0, sizeof *out);
    if (!c || !req)
        return dx__reject(err, DX_EINVAL, "dspex", "no config or request");
    if (!c->provider->encode)
        return dx__reject(err, DX_ENOTSUP, c->provider->name,
                          "this provider is answered in-process, not over "
                          "HTTP");
    if (!req->n_messages)
        return dx__reject(err, DX_EINVAL, c->provider->name,
                          "request: no messages");
    int rc = c->provider->encode(c, req, out, err);
    if (rc == DX_OK && apply_user_headers(c, out) != DX_OK)
        rc = dx__reject(err, DX_ENOMEM, c->provider->name, "out of memory");
    if (rc != DX_OK)
        dx_lm_http_free(out);
    else
        out->stream = req->stream;
    return rc;
}

/* ---- the accumulator (a dx_lm_stream) ------------------------------------ */

typedef struct acc_call {
    char *id;
    char *name;
    dx__buf args;
} acc_call;

typedef struct acc_choice {
    dx__buf text;
    acc_call *calls;
    size_t n_calls;
    dx_lm_finish finish;
    char *finish_raw;
} acc_choice;

struct dx_lm_stream {
    const dx_lm_config *c;
    dx_lm_delta_fn fn;
    void *ud;
    dx_sse *sse;
    void *state;
    /* the answer so far */
    char *id, *model;
    acc_choice *ch;
    size_t n_ch;
    bool has_usage;
    dx_lm_usage usage;
    /* the reply */
    bool begun;
    int status;
    bool error_body; /* non-2xx: collecting the body to decode at finish */
    dx__buf body;
    int64_t retry_after_ms;
    char request_id[96];
    /* sticky failure */
    int failed;
    dx_lm_error err;
};

static void acc_clear(dx_lm_stream *s)
{
    for (size_t i = 0; i < s->n_ch; i++) {
        acc_choice *c = &s->ch[i];
        dx__buf_free(&c->text);
        for (size_t k = 0; k < c->n_calls; k++) {
            dx_free(c->calls[k].id);
            dx_free(c->calls[k].name);
            dx__buf_free(&c->calls[k].args);
        }
        dx_free(c->calls);
        dx_free(c->finish_raw);
    }
    dx_free(s->ch);
    s->ch = NULL;
    s->n_ch = 0;
    dx_free(s->id);
    dx_free(s->model);
    s->id = s->model = NULL;
}

static int set_str(char **dst, const char *v)
{
    if (!v || (*dst && strcmp(*dst, v) == 0))
        return DX_OK;
    char *n = dx_strdup(v);
    if (!n)
        return DX_ENOMEM;
    dx_free(*dst);
    *dst = n;
    return DX_OK;
}

static acc_choice *acc_choice_at(dx_lm_stream *s, size_t i, int *rc)
{
    if (i >= MAX_CHOICES) {
        *rc = DX_ELIMIT;
        return NULL;
    }
    if (i >= s->n_ch) {
        acc_choice *arr = dx_realloc(s->ch, (i + 1) * sizeof *arr);
        if (!arr) {
            *rc = DX_ENOMEM;
            return NULL;
        }
        for (size_t k = s->n_ch; k <= i; k++) {
            memset(&arr[k], 0, sizeof arr[k]);
            dx__buf_init(&arr[k].text, MAX_TEXT);
        }
        s->ch = arr;
        s->n_ch = i + 1;
    }
    return &s->ch[i];
}

static acc_call *acc_call_at(acc_choice *c, size_t i, int *rc)
{
    if (i >= MAX_TOOL_CALLS) {
        *rc = DX_ELIMIT;
        return NULL;
    }
    if (i >= c->n_calls) {
        acc_call *arr = dx_realloc(c->calls, (i + 1) * sizeof *arr);
        if (!arr) {
            *rc = DX_ENOMEM;
            return NULL;
        }
        for (size_t k = c->n_calls; k <= i; k++) {
            memset(&arr[k], 0, sizeof arr[k]);
            dx__buf_init(&arr[k].args, MAX_TEXT);
        }
        c->calls = arr;
        c->n_calls = i + 1;
    }
    return &c->calls[i];
}

static int acc_apply(dx_lm_stream *s, const dx_lm_delta *d)
{
    int rc = DX_OK;
    acc_choice *c;
    acc_call *t;
    switch (d->kind) {
    case DX_LM_DELTA_META:
        rc = set_str(&s->id, d->id);
        return rc ? rc : set_str(&s->model, d->model);
    case DX_LM_DELTA_TEXT:
        if (!(c = acc_choice_at(s, d->choice, &rc)))
            return rc;
        if ((rc = dx__buf_append(&c->text, d->text ? d->text : "",
                                 d->text ? d->text_len : 0)))
            return rc;
        return dx__buf_terminate(&c->text);
    case DX_LM_DELTA_TOOL_CALL:
        if (!(c = acc_choice_at(s, d->choice, &rc)) ||
            !(t = acc_call_at(c, d->tool_index, &rc)))
            return rc;
        if ((rc = set_str(&t->id, d->tool_id)) ||
            (rc = set_str(&t->name, d->tool_name)))
            return rc;
        if (d->args && (rc = dx__buf_append(&t->args, d->args, d->args_len)))
            return rc;
        return dx__buf_terminate(&t->args);
    case DX_LM_DELTA_FINISH:
        if (!(c = acc_choice_at(s, d->choice, &rc)))
            return rc;
        c->finish = d->finish;
        return set_str(&c->finish_raw, d->finish_raw);
    case DX_LM_DELTA_USAGE:
        s->has_usage = true;
        s->usage = d->usage;
        return DX_OK;
    }
    return DX_EINVAL;
}

int dx_lm_stream_emit(dx_lm_stream *s, const dx_lm_delta *d)
{
    int rc = acc_apply(s, d);
    if (rc == DX_OK && s->fn)
        s->fn(s, d, s->ud);
    return rc;
}

/* Move the accumulated answer into a new response. */
static int acc_take(dx_lm_stream *s, dx_lm_response **out)
{
    dx_lm_response *r = dx_calloc(1, sizeof *r);
    if (!r)
        return DX_ENOMEM;
    if (s->n_ch && !(r->choices = dx_calloc(s->n_ch, sizeof *r->choices))) {
        dx_free(r);
        return DX_ENOMEM;
    }
    int rc = DX_OK;
    r->n_choices = s->n_ch;
    for (size_t i = 0; i < s->n_ch && rc == DX_OK; i++) {
        acc_choice *a = &s->ch[i];
        dx_lm_choice *c = &r->choices[i];
        if ((rc = dx__buf_terminate(&a->text)))
            break;
        c->text = a->text.p;
        dx__buf_init(&a->text, MAX_TEXT);
        c->finish = a->finish;
        c->finish_raw = a->finish_raw;
        a->finish_raw = NULL;
        if (a->n_calls &&
            !(c->tool_calls = dx_calloc(a->n_calls, sizeof *c->tool_calls))) {
            rc = DX_ENOMEM;
            break;
        }
        for (size_t k = 0; k < a->n_calls; k++) {
            acc_call *t = &a->calls[k];
            if ((rc = dx__buf_terminate(&t->args)))
                break;
            /* a call announced without id or name is kept; it is empty */
            c->tool_calls[k].id = t->id ? t->id : dx_strdup("");
            c->tool_calls[k].name = t->name ? t->name : dx_strdup("");
            c->tool_calls[k].arguments = t->args.p;
            t->id = t->name = NULL;
            dx__buf_init(&t->args, MAX_TEXT);
            c->n_tool_calls = k + 1;
            if (!c->tool_calls[k].id || !c->tool_calls[k].name) {
                rc = DX_ENOMEM;
                break;
            }
        }
    }
    r->id = s->id;
    r->model = s->model;
    s->id = s->model = NULL;
    r->has_usage = s->has_usage;
    r->usage = s->usage;
    if (rc == DX_OK && s->request_id[0] &&
        !(r->request_id = dx_strdup(s->request_id)))
        rc = DX_ENOMEM;
    if (rc != DX_OK) {
        dx_lm_response_free(r);
        return rc;
    }
    *out = r;
    return DX_OK;
}

int dx_lm_stream_new(const dx_lm_config *c, dx_lm_delta_fn fn, void *ud,
                     dx_lm_stream **out)
{
    dx__json_init();
    dx_lm_stream *s = dx_calloc(1, sizeof *s);
    if (!s)
        return DX_ENOMEM;
    s->c = c;
    s->fn = fn;
    s->ud = ud;
    s->retry_after_ms = -1;
    dx__buf_init(&s->body, MAX_ERROR_BODY);
    size_t sz = c->provider->stream_state_size;
    if (dx_sse_new(0, &s->sse) != DX_OK ||
        (sz && !(s->state = dx_calloc(1, sz)))) {
        dx_lm_stream_free(s);
        return DX_ENOMEM;
    }
    *out = s;
    return DX_OK;
}

void dx_lm_stream_free(dx_lm_stream *s)
{
    if (!s)
        return;
    acc_clear(s);
    dx_sse_free(s->sse);
    dx__buf_free(&s->body);
    dx_free(s->state);
    dx_free(s);
}

/* ---- reply handling -------------------------------------------------------- */

const char *dx_lm_reply_header(const dx_lm_reply *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (r->headers[i].name && strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

/* Media type of a content-type value is `want` (parameters ignored). */
static bool media_is(const char *ct, const char *want)
{
    if (!ct)
        return false;
    while (isspace((unsigned char)*ct))
        ct++;
    size_t n = strlen(want);
    if (strncasecmp(ct, want, n) != 0)
        return false;
    ct += n;
    while (isspace((unsigned char)*ct))
        ct++;
    return *ct == '\0' || *ct == ';';
}

static void reply_meta(const dx_lm_reply *r, int64_t *retry_ms, char *rid,
                       size_t rid_cap)
{
    *retry_ms = dx_lm_retry_after_ms(dx_lm_reply_header(r, "retry-after-ms"),
                                     dx_lm_reply_header(r, "retry-after"),
                                     dx_lm_reply_header(r, "date"));
    const char *id = dx_lm_reply_header(r, "x-request-id");
    if (!id)
        id = dx_lm_reply_header(r, "request-id");
    copy_str(rid, rid_cap, id);
}

/* Printable prefix of a body that is not JSON, for error messages. */
static void body_excerpt(const char *body, size_t n, char *dst, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap && k < 200; i++) {
        unsigned char ch = (unsigned char)body[i];
        dst[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : ' ';
    }
    dst[k] = '\0';
}

/* The typed error for an HTTP error status and its body. */
static int http_error(const dx_lm_config *c, int status, const char *body,
                      size_t n, int64_t retry_ms, const char *rid,
                      dx_lm_error *err)
{
    const char *prov = c->provider->name;
    dx_lm_error_set(err, dx_lm_error_kind_for_status(status), status, prov,
                    "%s: HTTP %d", prov, status);
    cJSON *j = dx__jparse(body, n);
    if (j && c->provider->error_fields) {
        err->message[0] = '\0';
        c->provider->error_fields(j, err);
        if (!err->message[0])
            snprintf(err->message, sizeof err->message, "%s: HTTP %d", prov,
                     status);
    } else if (n) {
        char ex[256];
        body_excerpt(body, n, ex, sizeof ex);
        snprintf(err->message, sizeof err->message, "%s: HTTP %d: %s", prov,
                 status, ex);
    }
    cJSON_Delete(j);
    if (status < 200 || status > 299)
        err->status = status;
    if (status >= 200 && status <= 399)
        err->kind = DX_LM_ERR_MALFORMED_RESPONSE;
    if (retry_ms >= 0) /* headers win over a body's hint (Gemini) */
        err->retry_after_ms = retry_ms;
    copy_str(err->request_id, sizeof err->request_id, rid);
    scrub_error(c, err);
    return DX_EPROVIDER;
}

int dx_lm_decode(const dx_lm_config *c, const dx_lm_reply *reply,
                 dx_lm_response **out, dx_lm_error *err)
{
    dx__json_init();
    dx_lm_error_clear(err);
    const char *prov = c->provider->name;
    int64_t retry_ms;
    char rid[96];
    reply_meta(reply, &retry_ms, rid, sizeof rid);
    if (reply->status < 200 || reply->status > 299)
        return http_error(c, reply->status, reply->body, reply->body_len,
                          retry_ms, rid, err);
    const char *ct = dx_lm_reply_header(reply, "content-type");
    if (!media_is(ct, "application/json"))
        return dx__bad(err, prov,
                       "response: expected content-type application/json, "
                       "got %s",
                       ct ? ct : "none");
    /* Read and dropped here: one block for the whole tree. */
    cJSON *j = dx__jparse_block(reply->body, reply->body_len);
    if (!j)
        return dx__bad(err, prov,
                       "response: body is not valid JSON (%zu "
                       "bytes)",
                       reply->body_len);
    if (!cJSON_IsObject(j)) {
        dx__jfree_block(j);
        return dx__bad(err, prov, "response: expected a JSON object");
    }
    if (cJSON_GetObjectItemCaseSensitive(j, "error")) {
        /* A 200 that carries an error object (some OpenAI-compatible
         * servers do this). */
        dx__jfree_block(j);
        int rc = http_error(c, reply->status, reply->body, reply->body_len,
                            retry_ms, rid, err);
        if (err->kind == DX_LM_ERR_MALFORMED_RESPONSE)
            err->kind = DX_LM_ERR_SERVER_ERROR;
        return rc;
    }
    dx_lm_stream *s;
    if (dx_lm_stream_new(c, NULL, NULL, &s) != DX_OK) {
        dx__jfree_block(j);
        return dx__oom(err, prov);
    }
    copy_str(s->request_id, sizeof s->request_id, rid);
    int rc = c->provider->decode(c, j, s, err);
    dx__jfree_block(j);
    if (rc == DX_OK && (rc = acc_take(s, out)) != DX_OK)
        dx__oom(err, prov);
    else if (rc == DX_ENOMEM)
        dx__oom(err, prov);
    else if (rc == DX_ELIMIT)
        rc = dx__bad(err, prov,
                     "response: too many choices, tool calls or "
                     "bytes");
    dx_lm_stream_free(s);
    if (rc == DX_EPROVIDER)
        scrub_error(c, err);
    return rc;
}

/* ---- streams --------------------------------------------------------------- */

static int stream_fail(dx_lm_stream *s, int rc, dx_lm_error *err)
{
    s->failed = rc;
    if (err)
        s->err = *err;
    return rc;
}

int dx_lm_stream_begin(dx_lm_stream *s, const dx_lm_reply *head,
                       dx_lm_error *err)
{
    dx_lm_error_clear(err);
    const char *prov = s->c->provider->name;
    if (s->begun)
        return dx__reject(err, DX_ESTATE, prov, "stream: begun twice");
    s->begun = true;
    s->status = head->status;
    reply_meta(head, &s->retry_after_ms, s->request_id, sizeof s->request_id);
    if (head->status < 200 || head->status > 299) {
        s->error_body = true;
        return DX_OK;
    }
    const char *ct = dx_lm_reply_header(head, "content-type");
    if (!media_is(ct, "text/event-stream")) {
        dx__bad(err, prov,
                "stream: expected content-type text/event-stream, got %s",
                ct ? ct : "none");
        copy_str(err->request_id, sizeof err->request_id, s->request_id);
        return stream_fail(s, DX_EPROVIDER, err);
    }
    return DX_OK;
}

typedef struct feed_ctx {
    dx_lm_stream *s;
    dx_lm_error *err;
} feed_ctx;

static int on_event(dx_sse *p, const dx_sse_event *ev, void *ud)
{
    (void)p;
    feed_ctx *f = ud;
    int rc = f->s->c->provider->stream_event(f->s, f->s->state, ev, f->err);
    const char *prov = f->s->c->provider->name;
    if (rc == DX_ENOMEM)
        dx__oom(f->err, prov);
    else if (rc == DX_ELIMIT)
        rc = dx__bad(f->err, prov,
                     "stream: too many choices, tool calls or bytes");
    return rc;
}

int dx_lm_stream_feed(dx_lm_stream *s, const char *buf, size_t len,
                      dx_lm_error *err)
{
    dx_lm_error_clear(err);
    const char *prov = s->c->provider->name;
    if (s->failed) {
        if (err)
            *err = s->err;
        return s->failed;
    }
    if (!s->begun)
        return dx__reject(err, DX_ESTATE, prov, "stream: feed before begin");
    if (s->error_body) {
        /* keep what fits; an error body's head carries the message */
        size_t room = s->body.max - s->body.len;
        if (dx__buf_append(&s->body, buf, len < room ? len : room) == DX_ENOMEM)
            return stream_fail(s, dx__oom(err, prov), err);
        return DX_OK;
    }
    dx_lm_error local;
    if (!err)
        err = &local;
    feed_ctx f = {s, err};
    int rc = dx_sse_feed(s->sse, buf, len, on_event, &f);
    if (rc == DX_ELIMIT)
        rc = dx__bad(err, prov, "stream: an event exceeds %zu bytes",
                     (size_t)DX_SSE_DEFAULT_MAX_EVENT);
    else if (rc == DX_ENOMEM)
        dx__oom(err, prov);
    if (rc != DX_OK) {
        if (rc == DX_EPROVIDER) {
            copy_str(err->request_id, sizeof err->request_id, s->request_id);
            scrub_error(s->c, err);
        }
        return stream_fail(s, rc, err);
    }
    return DX_OK;
}

int dx_lm_stream_finish(dx_lm_stream *s, dx_lm_response **out, dx_lm_error *err)
{
    dx_lm_error_clear(err);
    dx_lm_error local;
    if (!err)
        err = &local;
    const char *prov = s->c->provider->name;
    if (s->failed) {
        *err = s->err;
        return s->failed;
    }
    if (!s->begun)
        return dx__reject(err, DX_ESTATE, prov, "stream: finish before begin");
    if (s->error_body)
        return http_error(s->c, s->status, s->body.p, s->body.len,
                          s->retry_after_ms, s->request_id, err);
    int rc;
    dx_lm_response *r = NULL;
    if ((rc = acc_take(s, &r)) != DX_OK)
        return dx__oom(err, prov);
    rc = s->c->provider->stream_end(s, s->state, r, err);
    if (rc == DX_OK) {
        *out = r;
        return DX_OK;
    }
    dx_lm_response_free(r);
    if (rc == DX_ENOMEM)
        dx__oom(err, prov);
    copy_str(err->request_id, sizeof err->request_id, s->request_id);
    return stream_fail(s, rc, err);
}

/* ---- embeddings ------------------------------------------------------------ */

void dx_lm_embeddings_free(dx_lm_embeddings *e)
{
    if (!e)
        return;
    dx_free(e->data);
    dx_free(e->request_id);
    dx_free(e);
}

int dx_lm_embed_encode(const dx_lm_config *c, const char *const *inputs,
                       size_t n, dx_lm_http *out, dx_lm_error *err)
{
    dx__json_init();
    dx_lm_error_clear(err);
    memset(out, 0, sizeof *out);
    const char *prov = c->provider->name;
    if (!c->provider->embed_encode)
        return dx__reject(err, DX_ENOTSUP, prov, "embeddings: not offered");
    if (!inputs || n == 0)
        return dx__reject(err, DX_EINVAL, prov, "embeddings: no inputs");
    for (size_t i = 0; i < n; i++)
        if (!inputs[i])
            return dx__reject(err, DX_EINVAL, prov,
                              "embeddings: input %zu is NULL", i);
    int rc = c->provider->embed_encode(c, inputs, n, out, err);
    if (rc != DX_OK)
        dx_lm_http_free(out);
    return rc;
}

int dx_lm_embed_decode(const dx_lm_config *c, const dx_lm_reply *reply,
                       dx_lm_embeddings **out, dx_lm_error *err)
{
    dx__json_init();
    dx_lm_error_clear(err);
    const char *prov = c->provider->name;
    if (!c->provider->embed_decode)
        return dx__reject(err, DX_ENOTSUP, prov, "embeddings: not offered");
    int64_t retry_ms;
    char rid[96];
    reply_meta(reply, &retry_ms, rid, sizeof rid);
    if (reply->status < 200 || reply->status > 299)
        return http_error(c, reply->status, reply->body, reply->body_len,
                          retry_ms, rid, err);
    const char *ct = dx_lm_reply_header(reply, "content-type");
    if (!media_is(ct, "application/json"))
        return dx__bad(err, prov,
                       "embeddings: expected content-type application/json, "
                       "got %s",
                       ct ? ct : "none");
    cJSON *j = dx__jparse(reply->body, reply->body_len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return dx__bad(err, prov, "embeddings: body is not a JSON object");
    }
    dx_lm_embeddings *e = dx_calloc(1, sizeof *e);
    if (!e || (rid[0] && !(e->request_id = dx_strdup(rid)))) {
        cJSON_Delete(j);
        dx_lm_embeddings_free(e);
        return dx__oom(err, prov);
    }
    int rc = c->provider->embed_decode(c, j, e, err);
    cJSON_Delete(j);
    if (rc != DX_OK) {
        dx_lm_embeddings_free(e);
        if (rc == DX_ENOMEM)
            dx__oom(err, prov);
        return rc;
    }
    *out = e;
    return DX_OK;
}

int dx__embed_row(dx_lm_embeddings *e, size_t n, size_t row,
                  const cJSON *values, dx_lm_error *err, const char *prov,
                  const char *where)
{
    int dim = cJSON_GetArraySize(values);
    if (!cJSON_IsArray(values) || dim <= 0)
        return dx__bad(err, prov,
                       "embeddings: expected an array of numbers "
                       "at %s",
                       where);
    if (!e->data) {
        if ((size_t)dim > SIZE_MAX / sizeof(float) / n)
            return dx__bad(err, prov, "embeddings: too large");
        e->data = dx_calloc(n * (size_t)dim, sizeof(float));
        if (!e->data)
            return DX_ENOMEM;
        e->n = n;
        e->dim = (size_t)dim;
    } else if ((size_t)dim != e->dim) {
        return dx__bad(err, prov, "embeddings: %s has %d values, expected %zu",
                       where, dim, e->dim);
    }
    size_t k = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, values)
    {
        if (!cJSON_IsNumber(v))
            return dx__bad(err, prov, "embeddings: expected number at %s[%zu]",
                           where, k);
        e->data[row * e->dim + k++] = (float)v->valuedouble;
    }
    return DX_OK;
}

dx_lm_finish dx__finish_lookup(const dx__finish_map *m, const char *raw)
{
    if (!raw)
        return DX_LM_FINISH_NONE;
    for (; m->raw; m++)
        if (strcmp(m->raw, raw) == 0)
            return m->finish;
    return DX_LM_FINISH_OTHER;
}

const dx_lm_config *dx__stream_config(const dx_lm_stream *s)
{
    return s->c;
}
