/*
 * lmhistory.c — the ring of recorded LM calls: deep copies of messages and
 * responses in, a DSPy-style text rendering out. The ring owns every byte it
 * holds, so the caller's request and response may be freed right after
 * dx_lmhistory_add.
 */
#include "dspex/lmhistory.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "dspex/alloc.h"
#include "dspex/error.h"

struct dx_lmhistory {
    dx_lmhistory_entry *ring;
    size_t cap;
    size_t head; /* index of the oldest entry */
    size_t len;
};

/* ---- copies -------------------------------------------------------------- */

/* NULL stays NULL, so optional strings keep their meaning. ok turns false on
 * OOM. */
static char *dup_opt(const char *s, bool *ok)
{
    if (s == NULL)
        return NULL;
    char *d = dx_strdup(s);
    if (d == NULL)
        *ok = false;
    return d;
}

static void free_calls(dx_lm_tool_call *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dx_free(c[i].id);
        dx_free(c[i].name);
        dx_free(c[i].arguments);
    }
    dx_free(c);
}

static dx_lm_tool_call *copy_calls(const dx_lm_tool_call *src, size_t n,
                                   bool *ok)
{
    if (n == 0 || src == NULL)
        return NULL;
    dx_lm_tool_call *c = dx_calloc(n, sizeof *c);
    if (c == NULL) {
        *ok = false;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        c[i].id = dup_opt(src[i].id, ok);
        c[i].name = dup_opt(src[i].name, ok);
        c[i].arguments = dup_opt(src[i].arguments, ok);
    }
    return c;
}

static void free_messages(dx_lm_message *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dx_free(m[i].content);
        free_calls(m[i].tool_calls, m[i].n_tool_calls);
        dx_free(m[i].tool_call_id);
    }
    dx_free(m);
}

static dx_lm_message *copy_messages(const dx_lm_message *src, size_t n,
                                    bool *ok)
{
    if (n == 0)
        return NULL;
    dx_lm_message *m = dx_calloc(n, sizeof *m);
    if (m == NULL) {
        *ok = false;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        m[i].role = src[i].role;
        m[i].content = dup_opt(src[i].content ? src[i].content : "", ok);
        m[i].tool_calls =
            copy_calls(src[i].tool_calls, src[i].n_tool_calls, ok);
        if (m[i].tool_calls != NULL)
            m[i].n_tool_calls = src[i].n_tool_calls;
        m[i].tool_call_id = dup_opt(src[i].tool_call_id, ok);
    }
    return m;
}

static void entry_clear(dx_lmhistory_entry *e)
{
    dx_free(e->model);
    free_messages(e->messages, e->n_messages);
    dx_lm_response_free(e->response);
    memset(e, 0, sizeof *e);
}

/* ---- the ring -------------------------------------------------------------- */

int dx_lmhistory_new(size_t capacity, dx_lmhistory **out)
{
    if (out == NULL)
        return DX_EINVAL;
    *out = NULL;
    if (capacity == 0 || capacity > DX_LMHISTORY_MAX_CAPACITY)
        return DX_EINVAL;
    dx_lmhistory *h = dx_calloc(1, sizeof *h);
    if (h == NULL)
        return DX_ENOMEM;
    h->ring = dx_calloc(capacity, sizeof *h->ring);
    if (h->ring == NULL) {
        dx_free(h);
        return DX_ENOMEM;
    }
    h->cap = capacity;
    *out = h;
    return DX_OK;
}

void dx_lmhistory_clear(dx_lmhistory *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->len; i++)
        entry_clear(&h->ring[(h->head + i) % h->cap]);
    h->head = 0;
    h->len = 0;
}

void dx_lmhistory_free(dx_lmhistory *h)
{
    if (h == NULL)
        return;
    dx_lmhistory_clear(h);
    dx_free(h->ring);
    dx_free(h);
}

/* Whether every message has its content: a taken array is kept as it is,
 * and an entry's messages never have a NULL content. */
static bool contents_set(const dx_lm_message *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (m[i].content == NULL)
            return false;
    return true;
}

/* _add and _add_taking: the entry copies rec's request and response, or
 * (taking) takes take_req's messages and *take_resp. */
static int add_entry(dx_lmhistory *h, const dx_lmhistory_record *rec,
                     bool taking, dx_lm_request *take_req,
                     dx_lm_response **take_resp)
{
    if (h == NULL || rec == NULL)
        return DX_EINVAL;
    /* Build the whole entry first so OOM leaves the ring untouched, and
     * take nothing until it is built. */
    dx_lmhistory_entry e = {0};
    bool ok = true;
    e.timestamp_ms = rec->timestamp_ms;
    e.model = dup_opt(rec->model ? rec->model : "", &ok);
    const dx_lm_request *req = taking ? take_req : rec->request;
    bool take_messages =
        taking && req != NULL && contents_set(req->messages, req->n_messages);
    if (req != NULL && req->n_messages > 0 && !take_messages) {
        e.messages = copy_messages(req->messages, req->n_messages, &ok);
        if (e.messages != NULL)
            e.n_messages = req->n_messages;
    }
    bool take_response = taking && take_resp != NULL;
    const dx_lm_response *resp =
        taking ? (take_resp ? *take_resp : NULL) : rec->response;
    if (resp != NULL && !take_response) {
        if (dx_lm_response_copy(resp, &e.response) != DX_OK)
            ok = false;
    }
    e.usage = rec->usage;
    e.latency_ms = rec->latency_ms;
    e.cached = rec->cached;
    e.attempts = rec->attempts;
    if (rec->error != NULL && rec->error->kind != DX_LM_ERR_NONE) {
        e.failed = true;
        e.error = *rec->error;
    } else {
        dx_lm_error_clear(&e.error);
    }
    if (!ok) {
        entry_clear(&e);
        return DX_ENOMEM;
    }
    if (take_messages && req->n_messages > 0) {
        e.messages = take_req->messages;
        e.n_messages = take_req->n_messages;
        take_req->messages = NULL;
        take_req->n_messages = 0;
    }
    if (take_response) {
        e.response = *take_resp;
        *take_resp = NULL;
    }
    if (h->len == h->cap) {
        entry_clear(&h->ring[h->head]);
        h->ring[h->head] = e;
        h->head = (h->head + 1) % h->cap;
    } else {
        h->ring[(h->head + h->len) % h->cap] = e;
        h->len++;
    }
    return DX_OK;
}

int dx_lmhistory_add(dx_lmhistory *h, const dx_lmhistory_record *rec)
{
    return add_entry(h, rec, false, NULL, NULL);
}

int dx_lmhistory_add_taking(dx_lmhistory *h, const dx_lmhistory_record *rec,
                            dx_lm_request *request, dx_lm_response **response)
{
    return add_entry(h, rec, true, request, response);
}

size_t dx_lmhistory_len(const dx_lmhistory *h)
{
    return h ? h->len : 0;
}

const dx_lmhistory_entry *dx_lmhistory_get(const dx_lmhistory *h, size_t i)
{
    if (h == NULL || i >= h->len)
        return NULL;
    return &h->ring[(h->head + i) % h->cap];
}

/* ---- rendering ------------------------------------------------------------- */

/* A bounded writer that, like snprintf, counts what it would have written. */
typedef struct out {
    char *buf;
    size_t cap;
    size_t len;
} out;

DX_PRINTF(2, 3) static void put(out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n;
}

static const char *role_name(dx_lm_role r)
{
    switch (r) {
    case DX_LM_SYSTEM:
        return "System";
    case DX_LM_USER:
        return "User";
    case DX_LM_ASSISTANT:
        return "Assistant";
    case DX_LM_TOOL:
        return "Tool";
    }
    return "Unknown";
}

static void put_calls(out *o, const dx_lm_tool_call *c, size_t n)
{
    if (n == 0)
        return;
    put(o, "Tool calls:\n");
    for (size_t i = 0; i < n; i++)
        put(o, "- %s(%s) [%s]\n", c[i].name ? c[i].name : "",
            c[i].arguments ? c[i].arguments : "", c[i].id ? c[i].id : "");
    put(o, "\n");
}

static void put_time(out *o, int64_t ms)
{
    int64_t secs = ms / 1000;
    int64_t frac = ms % 1000;
    if (frac < 0) {
        frac += 1000;
        secs--;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    char stamp[32] = "";
    if (gmtime_r(&t, &tm) != NULL)
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    put(o, "[%s.%03dZ]", stamp, (int)frac);
}

static void put_entry(out *o, const dx_lmhistory_entry *e)
{
    put_time(o, e->timestamp_ms);
    put(o, " %s (%.1f ms, %d attempt%s%s)\n\n", e->model, e->latency_ms,
        e->attempts, e->attempts == 1 ? "" : "s", e->cached ? ", cached" : "");
    for (size_t i = 0; i < e->n_messages; i++) {
        const dx_lm_message *m = &e->messages[i];
        if (m->role == DX_LM_TOOL && m->tool_call_id != NULL)
            put(o, "Tool message [%s]:\n\n", m->tool_call_id);
        else
            put(o, "%s message:\n\n", role_name(m->role));
        put(o, "%s\n\n", m->content);
        put_calls(o, m->tool_calls, m->n_tool_calls);
    }
    if (e->failed) {
        put(o, "Error: %s", dx_lm_error_kind_name(e->error.kind));
        if (e->error.status != 0)
            put(o, " (HTTP %d)", e->error.status);
        put(o, ": %s\n\n", e->error.message);
        return;
    }
    const dx_lm_response *r = e->response;
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n_choices; i++) {
        if (r->n_choices == 1)
            put(o, "Response:\n\n");
        else
            put(o, "Response %zu/%zu:\n\n", i + 1, r->n_choices);
        put(o, "%s\n\n", r->choices[i].text);
        put_calls(o, r->choices[i].tool_calls, r->choices[i].n_tool_calls);
    }
    if (r->has_usage)
        put(o, "Usage: %lld input, %lld output tokens\n\n",
            (long long)r->usage.input_tokens,
            (long long)r->usage.output_tokens);
}

size_t dx_lmhistory_inspect(const dx_lmhistory *h, size_t n, char *buf,
                            size_t cap)
{
    out o = {buf, buf ? cap : 0, 0};
    if (o.cap > 0)
        buf[0] = '\0';
    if (h == NULL)
        return 0;
    if (n == 0 || n > h->len)
        n = h->len;
    for (size_t i = h->len - n; i < h->len; i++)
        put_entry(&o, dx_lmhistory_get(h, i));
    return o.len;
}

int dx_lmhistory_inspect_file(const dx_lmhistory *h, size_t n, FILE *f)
{
    if (h == NULL || f == NULL)
        return DX_EINVAL;
    size_t want = dx_lmhistory_inspect(h, n, NULL, 0);
    char *buf = dx_malloc(want + 1);
    if (buf == NULL)
        return DX_ENOMEM;
    dx_lmhistory_inspect(h, n, buf, want + 1);
    int rc = fwrite(buf, 1, want, f) == want ? DX_OK : DX_ESYS;
    dx_free(buf);
    return rc;
}
