/*
 * lmserver_wire.c — what the LM server answers: routing, request checks
 * (auth headers, JSON, required fields) the way each real API does them,
 * the deterministic scripted answers, the three wire formats (OpenAI Chat
 * Completions and embeddings, Anthropic Messages, Gemini generateContent /
 * streamGenerateContent / embedContent) plain and streamed, each provider's
 * own error body, and the content side of faults (error statuses, malformed
 * JSON, wrong content type; lmserver.c does the timing side).
 *
 * Every answer is a pure function of the request and the reply queue, so
 * tests can predict it: text is "answer: <last user message>", usage counts
 * whitespace-separated words.
 */
#include <ctype.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "codec_int.h"
#include "dspex/sim.h"
#include "lmserver_int.h"

#define MAX_TOOLS 64
/* A streamed text is cut into at most about this many deltas. */
#define MAX_PIECES 100
#define MAX_CHOICES 4
#define DEFAULT_DIMS 8
#define MAX_DIMS 4096
#define MAX_EMBED_FLOATS (256u * 1024u)

typedef enum prov { P_OPENAI, P_ANTHROPIC, P_GEMINI } prov;

typedef enum fkind {
    F_NONE,
    F_RATE,
    F_OVERLOADED,
    F_SERVER,
    F_SLOW,
    F_STALL,
    F_RESET,
    F_TRUNC,
    F_MALFORMED,
    F_CTYPE,
    F_AUTH,
    F_LENGTH,
    F_NO_SCHEMA,
    F_BAD_REQUEST,
} fkind;

typedef struct fault {
    fkind kind;
    long arg;
} fault;

/* ---- faults ------------------------------------------------------------ */

static bool parse_fault(const char *spec, fault *f)
{
    static const struct {
        const char *name;
        fkind kind;
        int arg; /* 0 none, 1 optional, 2 required */
        long def, lo, hi;
    } tab[] = {
        {"rate_limit", F_RATE, 1, 1, 0, 86400},
        {"overloaded", F_OVERLOADED, 0, 0, 0, 0},
        {"server_error", F_SERVER, 1, 500, 500, 599},
        {"slow", F_SLOW, 2, 0, 0, 600000},
        {"stall", F_STALL, 0, 0, 0, 0},
        {"reset_mid_body", F_RESET, 0, 0, 0, 0},
        {"truncated_sse", F_TRUNC, 0, 0, 0, 0},
        {"malformed_json", F_MALFORMED, 0, 0, 0, 0},
        {"wrong_content_type", F_CTYPE, 0, 0, 0, 0},
        {"auth", F_AUTH, 0, 0, 0, 0},
        {"max_tokens", F_LENGTH, 1, 0, 0, 1000000},
        {"no_json_schema", F_NO_SCHEMA, 0, 0, 0, 0},
        {"bad_request", F_BAD_REQUEST, 0, 0, 0, 0},
    };
    const char *colon = strchr(spec, ':');
    size_t nlen = colon ? (size_t)(colon - spec) : strlen(spec);
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        if (strlen(tab[i].name) != nlen ||
            strncmp(spec, tab[i].name, nlen) != 0)
            continue;
        f->kind = tab[i].kind;
        f->arg = tab[i].def;
        if (colon == NULL)
            return tab[i].arg != 2;
        if (tab[i].arg == 0 || colon[1] < '0' || colon[1] > '9')
            return false;
        char *end;
        long v = strtol(colon + 1, &end, 10);
        if (*end != '\0' || v < tab[i].lo || v > tab[i].hi)
            return false;
        f->arg = v;
        return true;
    }
    return false;
}

bool dx__lms_fault_valid(const char *spec)
{
    fault f;
    return parse_fault(spec, &f);
}

/* ---- small helpers ----------------------------------------------------- */

static const char *header(const dx__lms_request *rq, const char *name)
{
    for (size_t i = 0; i < rq->nheaders; i++)
        if (strcasecmp(rq->headers[i].name, name) == 0)
            return rq->headers[i].value;
    return NULL;
}

static const cJSON *get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = get(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

#if defined(__SSE2__)
/* Set bits of a 16-bit mask, inline: without -mpopcnt __builtin_popcount
 * is a call into libgcc. */
static inline unsigned bits16(unsigned x)
{
    x = x - ((x >> 1) & 0x5555u);
    x = (x & 0x3333u) + ((x >> 2) & 0x3333u);
    x = (x + (x >> 4)) & 0x0F0Fu;
    return (x + (x >> 8)) & 0x1Fu;
}
#endif

/* Words in s[0, len): runs of bytes other than ASCII whitespace. Every
 * prompt of every request is counted, a kilobyte or more each: on x86-64
 * 16 bytes a step (SSE2), a word starting wherever a non-space byte follows
 * a space; elsewhere, and for the tail, a table and no branch per byte. */
static size_t count_words_n(const char *s, size_t len)
{
    static const unsigned char sep[256] = {
        ['\t'] = 1, ['\n'] = 1, ['\v'] = 1, ['\f'] = 1, ['\r'] = 1, [' '] = 1,
    };
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    size_t n = 0;
    unsigned in = 0; /* 1 inside a word */
#if defined(__SSE2__)
    const __m128i space = _mm_set1_epi8(' ');
    const __m128i tab = _mm_set1_epi8('\t'); /* \t \n \v \f \r: 9..13 */
    const __m128i four = _mm_set1_epi8(4);
    for (; end - p >= 16; p += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        /* v - 9 <= 4 unsigned: min(v - 9, 4) == v - 9. */
        __m128i off = _mm_sub_epi8(v, tab);
        __m128i blank =
            _mm_or_si128(_mm_cmpeq_epi8(v, space),
                         _mm_cmpeq_epi8(_mm_min_epu8(off, four), off));
        unsigned word = ~(unsigned)_mm_movemask_epi8(blank) & 0xFFFFu;
        unsigned starts = word & ~((word << 1) | in);
        n += bits16(starts);
        in = word >> 15;
    }
#endif
    for (; p < end; p++) {
        unsigned word = sep[*p] ^ 1u;
        n += word & (in ^ 1u);
        in = word;
    }
    return n;
}

static size_t count_words(const char *s)
{
    return count_words_n(s, strlen(s));
}

static void set_oom(dx__lms_response *rs)
{
    dx__buf_free(&rs->body);
    dx__buf_free(&rs->headers);
    rs->status = 500;
    rs->sse = false;
    rs->nevents = 0;
    rs->ctype = "text/plain";
}

/* Print obj (consumed) as the whole body. */
/* cJSON_AddNumberToObject with the cheap form of whole numbers
 * (dx__json_number): these trees are only printed. */
static void add_number(cJSON *obj, const char *key, double v)
{
    cJSON *item = dx__json_number(v);
    if (item != NULL && !cJSON_AddItemToObject(obj, key, item))
        cJSON_Delete(item);
}

static void send_json(dx__lms_response *rs, int status, cJSON *obj)
{
    rs->body.len = 0;
    rs->sse = false;
    rs->nevents = 0;
    int rc = obj ? dx__jprint_into(&rs->body, obj) : DX_ENOMEM;
    cJSON_Delete(obj);
    if (rc != 0) {
        set_oom(rs);
        return;
    }
    rs->status = status;
    rs->ctype = "application/json";
}

static int add_event(dx__lms_response *rs, const char *name, const char *data)
{
    if (rs->nevents == DX__LMS_MAX_EVENTS)
        return DX_ELIMIT;
    int rc = 0;
    if (name != NULL)
        rc = dx__buf_fmt(&rs->body, "event: %s\n", name);
    if (rc == 0)
        rc = dx__buf_fmt(&rs->body, "data: %s\n\n", data);
    if (rc == 0)
        rs->event_end[rs->nevents++] = rs->body.len;
    return rc;
}

/* Emit obj (consumed) as one SSE event. */
static int emit(dx__lms_response *rs, const char *name, cJSON *obj)
{
    char *s = obj ? dx__jprint(obj) : NULL;
    cJSON_Delete(obj);
    int rc = s ? add_event(rs, name, s) : DX_ENOMEM;
    dx_free(s);
    return rc;
}

static void start_stream(dx__lms_response *rs)
{
    rs->status = 200;
    rs->sse = true;
    rs->ctype = "text/event-stream; charset=utf-8";
    dx__buf_str(&rs->headers, "Cache-Control: no-cache\r\n");
}

/* ---- provider error bodies ---------------------------------------------- */

static const char *openai_type(int status)
{
    switch (status) {
    case 401:
        return "invalid_request_error";
    case 403:
        return "permission_error";
    case 404:
        return "invalid_request_error";
    case 429:
        return "requests";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static const char *openai_code(int status)
{
    switch (status) {
    case 401:
        return "invalid_api_key";
    case 404:
        return "unknown_url";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_exceeded";
    case 503:
        return "overloaded";
    default:
        return NULL;
    }
}

static const char *anthropic_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 503:
    case 529:
        return "overloaded_error";
    case 504:
        return "timeout_error";
    default:
        return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

static const char *gemini_status(int status)
{
    switch (status) {
    case 401:
        return "UNAUTHENTICATED";
    case 403:
        return "PERMISSION_DENIED";
    case 404:
        return "NOT_FOUND";
    case 429:
        return "RESOURCE_EXHAUSTED";
    case 503:
        return "UNAVAILABLE";
    case 504:
        return "DEADLINE_EXCEEDED";
    default:
        return status >= 500 ? "INTERNAL" : "INVALID_ARGUMENT";
    }
}

static void send_error(dx__lms_response *rs, prov p, int status,
                       const char *msg)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_CreateObject();
    switch (p) {
    case P_OPENAI: {
        cJSON_AddStringToObject(err, "message", msg);
        cJSON_AddStringToObject(err, "type", openai_type(status));
        cJSON_AddNullToObject(err, "param");
        const char *code = openai_code(status);
        if (code)
            cJSON_AddStringToObject(err, "code", code);
        else
            cJSON_AddNullToObject(err, "code");
        cJSON_AddItemToObject(root, "error", err);
        break;
    }
    case P_ANTHROPIC:
        cJSON_AddStringToObject(root, "type", "error");
        cJSON_AddStringToObject(err, "type", anthropic_type(status));
        cJSON_AddStringToObject(err, "message", msg);
        cJSON_AddItemToObject(root, "error", err);
        break;
    case P_GEMINI:
        add_number(err, "code", status);
        cJSON_AddStringToObject(err, "message", msg);
        cJSON_AddStringToObject(err, "status", gemini_status(status));
        cJSON_AddItemToObject(root, "error", err);
        break;
    }
    send_json(rs, status, root);
}

static prov prov_of_path(const char *path)
{
    if (strncmp(path, "/v1/messages", 12) == 0)
        return P_ANTHROPIC;
    if (strncmp(path, "/v1beta/", 8) == 0)
        return P_GEMINI;
    return P_OPENAI;
}

void dx__lms_core_error(const char *path, int status, const char *msg,
                        dx__lms_response *rs)
{
    send_error(rs, prov_of_path(path), status, msg);
}

/* ---- the conversation, read from any of the three formats --------------- */

typedef struct tool {
    const char *name;
    const cJSON *schema; /* may be NULL */
} tool;

typedef struct convo {
    dx__buf last_user;
    dx__buf tool_result;
    bool after_tool; /* the last message carries a tool result */
    size_t prompt_tokens;
    tool tools[MAX_TOOLS];
    size_t ntools;
    bool json;
    const cJSON *schema;
    const char *model;
    int n;
    /* A "sim/..." model: the whole conversation, for dx_sim_complete. */
    dx_lm_request *sim;
} convo;

typedef struct answer {
    char *text;            /* dx_malloc'd; NULL for a tool call */
    const char *tool_name; /* borrowed from the request */
    cJSON *args;           /* tool arguments */
    char *args_text;       /* args printed (dx_free) */
    size_t out_tokens;
    bool cut;            /* stopped at the token limit (the max_tokens fault) */
    char sim_error[256]; /* the sim model refused the request (a 400) */
} answer;

static void convo_free(convo *cv)
{
    dx__buf_free(&cv->last_user);
    dx__buf_free(&cv->tool_result);
    dx_lm_request_free(cv->sim);
}

static int gather_text(dx__buf *out, const cJSON *content);

/* Keep a message for the sim model (nothing for other models). */
static int sim_note(convo *cv, dx_lm_role role, const cJSON *content)
{
    if (!cv->sim)
        return 0;
    dx__buf t = {0};
    int rc = gather_text(&t, content);
    if (rc == 0)
        rc = dx_lm_request_add_message(cv->sim, role, t.p ? t.p : "");
    dx__buf_free(&t);
    return rc;
}

/* Sampling settings the sim model looks at. */
static void sim_settings(convo *cv, const cJSON *temperature, const cJSON *seed)
{
    if (!cv->sim)
        return;
    if (cJSON_IsNumber(temperature)) {
        cv->sim->has_temperature = true;
        cv->sim->temperature = temperature->valuedouble;
    }
    /* A seed past 2^53 (1e300, or an overflow's infinity) is not one a
     * double holds exactly, and converting it would be undefined. */
    if (cJSON_IsNumber(seed) && seed->valuedouble >= -9007199254740992.0 &&
        seed->valuedouble <= 9007199254740992.0) {
        cv->sim->has_seed = true;
        cv->sim->seed = (int64_t)seed->valuedouble;
    }
}

static void answer_free(answer *a)
{
    dx_free(a->text);
    cJSON_Delete(a->args);
    dx_free(a->args_text);
}

/* Append the text of s (string, or array of text blocks / parts) to b,
 * parts joined by a newline. */
static int gather_text(dx__buf *b, const cJSON *s)
{
    if (cJSON_IsString(s))
        return dx__buf_str(b, s->valuestring);
    const cJSON *part;
    int rc = 0;
    cJSON_ArrayForEach(part, s)
    {
        const char *t = jstr(part, "text");
        if (t == NULL)
            continue;
        if (b->len > 0)
            rc = dx__buf_str(b, "\n");
        if (rc == 0)
            rc = dx__buf_str(b, t);
        if (rc != 0)
            break;
    }
    return rc;
}

static int note_message(convo *cv, const cJSON *content, bool is_user,
                        bool is_tool)
{
    /* Plain string content (the common case) is read where it is. */
    dx__buf t = {0};
    int rc = 0;
    const char *text = NULL;
    size_t len = 0;
    if (cJSON_IsString(content)) {
        text = content->valuestring;
        len = strlen(text);
    } else if ((rc = gather_text(&t, content)) == 0) {
        text = t.p;
        len = t.len;
    }
    if (rc == 0 && text != NULL) {
        cv->prompt_tokens += count_words_n(text, len);
        dx__buf *dst = is_tool   ? &cv->tool_result
                       : is_user ? &cv->last_user
                                 : NULL;
        if (dst != NULL) {
            dst->len = 0;
            rc = dx__buf_append(dst, text, len);
        }
    }
    if (is_tool || is_user)
        cv->after_tool = is_tool;
    dx__buf_free(&t);
    return rc;
}

static void add_tool(convo *cv, const char *name, const cJSON *schema)
{
    if (name != NULL && cv->ntools < MAX_TOOLS) {
        cv->tools[cv->ntools].name = name;
        cv->tools[cv->ntools].schema = cJSON_IsObject(schema) ? schema : NULL;
        cv->ntools++;
    }
}

/* Each reader returns NULL or the message for a 400. */
static const char *read_openai(const cJSON *req, convo *cv)
{
    const cJSON *msgs = get(req, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return "messages: expected a non-empty array";
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        const char *role = jstr(m, "role");
        if (role == NULL)
            return "messages: each message needs a role";
        if (note_message(cv, get(m, "content"), strcmp(role, "user") == 0,
                         strcmp(role, "tool") == 0) != 0)
            return NULL;
        if (strcmp(role, "tool") != 0 &&
            sim_note(cv,
                     strcmp(role, "user") == 0        ? DX_LM_USER
                     : strcmp(role, "assistant") == 0 ? DX_LM_ASSISTANT
                                                      : DX_LM_SYSTEM,
                     get(m, "content")) != 0)
            return NULL;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, get(req, "tools"))
    {
        const cJSON *fn = get(t, "function");
        add_tool(cv, jstr(fn, "name"), get(fn, "parameters"));
    }
    const cJSON *rf = get(req, "response_format");
    const char *rft = jstr(rf, "type");
    if (rft != NULL && strcmp(rft, "json_object") == 0)
        cv->json = true;
    if (rft != NULL && strcmp(rft, "json_schema") == 0) {
        cv->json = true;
        cv->schema = get(get(rf, "json_schema"), "schema");
    }
    const cJSON *n = get(req, "n");
    if (n != NULL) {
        if (!cJSON_IsNumber(n) || n->valuedouble < 1 ||
            n->valuedouble > MAX_CHOICES)
            return "n: this server supports 1 to 4 choices";
        cv->n = (int)n->valuedouble;
    }
    sim_settings(cv, get(req, "temperature"), get(req, "seed"));
    return NULL;
}

static const char *read_anthropic(const cJSON *req, convo *cv)
{
    if (!cJSON_IsNumber(get(req, "max_tokens")))
        return "max_tokens: Field required";
    const cJSON *msgs = get(req, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return "messages: Field required";
    dx__buf sys = {0};
    gather_text(&sys, get(req, "system"));
    if (sys.p != NULL)
        cv->prompt_tokens += count_words(sys.p);
    dx__buf_free(&sys);
    if (get(req, "system") && sim_note(cv, DX_LM_SYSTEM, get(req, "system")))
        return NULL;
    sim_settings(cv, get(req, "temperature"), NULL);
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        const char *role = jstr(m, "role");
        if (role == NULL ||
            (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0))
            return "messages: roles must be user or assistant";
        const cJSON *content = get(m, "content");
        bool user = strcmp(role, "user") == 0;
        const cJSON *b, *tool_block = NULL;
        cJSON_ArrayForEach(b, content)
        {
            const char *ty = jstr(b, "type");
            if (ty != NULL && strcmp(ty, "tool_result") == 0)
                tool_block = b;
        }
        if (note_message(cv, tool_block ? get(tool_block, "content") : content,
                         user && !tool_block, user && tool_block) != 0)
            return NULL;
        if (!tool_block &&
            sim_note(cv, user ? DX_LM_USER : DX_LM_ASSISTANT, content) != 0)
            return NULL;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, get(req, "tools"))
        add_tool(cv, jstr(t, "name"), get(t, "input_schema"));
    const cJSON *fmt = get(get(req, "output_config"), "format");
    const char *ft = jstr(fmt, "type");
    if (ft != NULL && strcmp(ft, "json_schema") == 0) {
        cv->json = true;
        cv->schema = get(fmt, "schema");
    }
    return NULL;
}

static const char *read_gemini(const cJSON *req, convo *cv)
{
    const cJSON *contents = get(req, "contents");
    if (!cJSON_IsArray(contents) || cJSON_GetArraySize(contents) == 0)
        return "* GenerateContentRequest.contents: contents is not specified";
    dx__buf sys = {0};
    gather_text(&sys, get(get(req, "systemInstruction"), "parts"));
    if (sys.p != NULL)
        cv->prompt_tokens += count_words(sys.p);
    dx__buf_free(&sys);
    if (get(req, "systemInstruction") &&
        sim_note(cv, DX_LM_SYSTEM, get(get(req, "systemInstruction"), "parts")))
        return NULL;
    sim_settings(cv, get(get(req, "generationConfig"), "temperature"),
                 get(get(req, "generationConfig"), "seed"));
    const cJSON *c;
    cJSON_ArrayForEach(c, contents)
    {
        const char *role = jstr(c, "role");
        const cJSON *parts = get(c, "parts");
        const cJSON *p, *fr = NULL;
        cJSON_ArrayForEach(p, parts)
        {
            if (get(p, "functionResponse") != NULL)
                fr = get(p, "functionResponse");
        }
        bool user = role == NULL || strcmp(role, "user") == 0;
        if (fr != NULL) {
            char *s = dx__jprint(get(fr, "response"));
            cJSON *tmp = cJSON_CreateString(s ? s : "");
            dx_free(s);
            int rc = tmp ? note_message(cv, tmp, false, true) : DX_ENOMEM;
            cJSON_Delete(tmp);
            if (rc != 0)
                return NULL;
        } else if (note_message(cv, parts, user, false) != 0 ||
                   sim_note(cv, user ? DX_LM_USER : DX_LM_ASSISTANT, parts) !=
                       0) {
            return NULL;
        }
    }
    const cJSON *t, *d;
    cJSON_ArrayForEach(t, get(req, "tools"))
    {
        cJSON_ArrayForEach(d, get(t, "functionDeclarations"))
        {
            const cJSON *schema = get(d, "parameters");
            add_tool(cv, jstr(d, "name"),
                     schema ? schema : get(d, "parametersJsonSchema"));
        }
    }
    const cJSON *gc = get(req, "generationConfig");
    const char *mime = jstr(gc, "responseMimeType");
    if (mime != NULL && strcmp(mime, "application/json") == 0) {
        cv->json = true;
        cv->schema = get(gc, "responseJsonSchema");
        if (cv->schema == NULL)
            cv->schema = get(gc, "responseSchema");
    }
    return NULL;
}

/* ---- deciding the answer ------------------------------------------------ */

static bool type_is(const cJSON *schema, const char *t)
{
    const char *ty = jstr(schema, "type");
    return ty != NULL && strcasecmp(ty, t) == 0;
}

static cJSON *value_for(const cJSON *schema, const char *text, size_t words)
{
    if (type_is(schema, "integer") || type_is(schema, "number"))
        return cJSON_CreateNumber((double)words);
    if (type_is(schema, "boolean"))
        return cJSON_CreateTrue();
    if (type_is(schema, "array"))
        return cJSON_CreateArray();
    if (type_is(schema, "object"))
        return cJSON_CreateObject();
    return cJSON_CreateString(text);
}

static char *json_answer(const convo *cv, const char *text)
{
    cJSON *obj = cJSON_CreateObject();
    const cJSON *props = get(cv->schema, "properties");
    size_t words = count_words(cv->last_user.p ? cv->last_user.p : "");
    if (cJSON_IsObject(props) && props->child != NULL) {
        const cJSON *p;
        cJSON_ArrayForEach(p, props)
            cJSON_AddItemToObject(obj, p->string, value_for(p, text, words));
    } else {
        cJSON_AddStringToObject(obj, "answer", text);
    }
    char *out = dx__jprint(obj);
    cJSON_Delete(obj);
    return out;
}

static bool ident_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.';
}

/* Where "call <name>" appears as whole words in s, or NULL. */
static const char *find_call(const char *s, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(s, "call "); p != NULL;
         p = strstr(p + 1, "call ")) {
        const char *q = p + 5;
        while (*q == ' ')
            q++;
        if ((p == s || !ident_char(p[-1])) && strncmp(q, name, nl) == 0 &&
            !ident_char(q[nl]))
            return q + nl;
    }
    return NULL;
}

/* Arguments from "key=value" words after the call; required properties
 * that were not given get an empty value of their type. */
static cJSON *tool_args(const tool *t, const char *rest)
{
    cJSON *args = cJSON_CreateObject();
    const cJSON *props = get(t->schema, "properties");
    while (args != NULL && *rest) {
        while (*rest == ' ' || *rest == '\t' || *rest == '\n')
            rest++;
        const char *end = rest;
        while (*end && *end != ' ' && *end != '\t' && *end != '\n')
            end++;
        const char *eq = memchr(rest, '=', (size_t)(end - rest));
        if (eq != NULL && eq > rest) {
            char key[128], val[1024];
            snprintf(key, sizeof key, "%.*s", (int)(eq - rest), rest);
            snprintf(val, sizeof val, "%.*s", (int)(end - eq - 1), eq + 1);
            const cJSON *ps = get(props, key);
            char *num_end;
            double d = strtod(val, &num_end);
            cJSON_DeleteItemFromObjectCaseSensitive(args, key);
            if ((type_is(ps, "integer") || type_is(ps, "number")) && val[0] &&
                *num_end == '\0')
                add_number(args, key, d);
            else if (type_is(ps, "boolean") &&
                     (!strcmp(val, "true") || !strcmp(val, "false")))
                cJSON_AddBoolToObject(args, key, strcmp(val, "true") == 0);
            else
                cJSON_AddStringToObject(args, key, val);
        }
        rest = end;
    }
    const cJSON *req;
    cJSON_ArrayForEach(req, get(t->schema, "required"))
    {
        if (!cJSON_IsString(req) || get(args, req->valuestring) != NULL)
            continue;
        const cJSON *ps = get(props, req->valuestring);
        cJSON_AddItemToObject(args, req->valuestring,
                              type_is(ps, "string") || ps == NULL
                                  ? cJSON_CreateString("")
                                  : value_for(ps, "", 0));
    }
    return args;
}

/* The sim model's answer (sim.h) to the whole conversation. 1 with
 * a->text set, or 0 with err_out set to what the sim refused. */
static int sim_answer(const convo *cv, answer *a, char *err_out, size_t cap)
{
    cv->sim->format = cv->json ? (cv->schema ? DX_LM_FORMAT_JSON_SCHEMA
                                             : DX_LM_FORMAT_JSON_OBJECT)
                               : DX_LM_FORMAT_TEXT;
    if (cv->schema) {
        char *sch = dx__jprint(cv->schema);
        if (sch)
            dx_lm_request_set_schema(cv->sim, "output", sch, false);
        dx_free(sch);
    }
    dx_lm_response *r = NULL;
    dx_lm_error err = {0};
    const char *profile = cv->model + 4; /* after "sim/" or "sim-" */
    if (dx_sim_complete(cv->sim, profile, &r, &err) != DX_OK) {
        const char *why = err.message[0] ? err.message : "sim failed";
        size_t n = strnlen(why, cap - 1);
        memcpy(err_out, why, n);
        err_out[n] = '\0';
        return 0;
    }
    a->text = dx_strdup(r->n_choices ? r->choices[0].text : "");
    dx_lm_response_free(r);
    return a->text != NULL;
}

static int decide(dx_lmserver *srv, const convo *cv, answer *a)
{
    a->text = dx__lms_take_reply(srv);
    if (a->text == NULL && cv->sim) {
        if (!sim_answer(cv, a, a->sim_error, sizeof a->sim_error))
            return a->sim_error[0] ? DX_EINVAL : DX_ENOMEM;
        a->out_tokens = count_words(a->text);
        return DX_OK;
    }
    if (a->text == NULL && !cv->after_tool && cv->last_user.p != NULL) {
        for (size_t i = 0; i < cv->ntools; i++) {
            const char *rest = find_call(cv->last_user.p, cv->tools[i].name);
            if (rest == NULL)
                continue;
            a->tool_name = cv->tools[i].name;
            a->args = tool_args(&cv->tools[i], rest);
            a->args_text = a->args ? dx__jprint(a->args) : NULL;
            if (a->args_text == NULL)
                return DX_ENOMEM;
            a->out_tokens = count_words(a->args_text) + 1;
            return DX_OK;
        }
    }
    if (a->text == NULL) {
        const dx__buf *src = cv->after_tool ? &cv->tool_result : &cv->last_user;
        dx__buf t = {0};
        if (dx__buf_fmt(&t, "answer: %s", src->p ? src->p : "") != 0) {
            dx__buf_free(&t);
            return DX_ENOMEM;
        }
        a->text = cv->json ? json_answer(cv, t.p) : dx_strdup(t.p);
        dx__buf_free(&t);
        if (a->text == NULL)
            return DX_ENOMEM;
    }
    a->out_tokens = count_words(a->text);
    return DX_OK;
}

/* Cut text into at most about MAX_PIECES deltas at word ends (so no UTF-8
 * sequence is ever split). Calls fn for each piece. */
typedef int (*piece_fn)(void *ud, const char *piece);

static int pieces(const char *text, piece_fn fn, void *ud)
{
    size_t len = strlen(text);
    size_t target = len / MAX_PIECES + 1;
    dx__buf b = {0};
    const char *p = text;
    int rc = 0;
    while (rc == 0 && *p) {
        const char *start = p;
        while (*p && (size_t)(p - start) < target)
            p++;
        while (*p && *p != ' ')
            p++;
        while (*p == ' ')
            p++;
        b.len = 0;
        rc = dx__buf_append(&b, start, (size_t)(p - start));
        if (rc == 0)
            rc = fn(ud, b.p);
    }
    dx__buf_free(&b);
    return rc;
}

/* Tool arguments go out in two fragments, so clients must join them; the
 * cut never falls inside a UTF-8 sequence. */
static int halves(const char *text, piece_fn fn, void *ud)
{
    size_t len = strlen(text), mid = len / 2;
    while (mid < len && ((unsigned char)text[mid] & 0xC0) == 0x80)
        mid++;
    dx__buf b = {0};
    int rc = dx__buf_append(&b, text, mid);
    if (rc == 0)
        rc = fn(ud, b.p);
    dx__buf_free(&b);
    if (rc == 0 && mid < len)
        rc = fn(ud, text + mid);
    return rc;
}

/* ---- OpenAI ------------------------------------------------------------- */

typedef struct ostream {
    dx__lms_response *rs;
    const convo *cv;
    uint64_t id;
    int index;
    bool usage_null;
} ostream;

static cJSON *openai_chunk(const ostream *st, cJSON *delta, const char *finish)
{
    cJSON *o = cJSON_CreateObject();
    char id[48];
    snprintf(id, sizeof id, "chatcmpl-%llu", (unsigned long long)st->id);
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
    add_number(o, "created", (double)time(NULL));
    cJSON_AddStringToObject(o, "model", st->cv->model);
    cJSON_AddStringToObject(o, "system_fingerprint", "fp_dspex");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    if (delta != NULL) {
        cJSON *ch = cJSON_CreateObject();
        add_number(ch, "index", st->index);
        cJSON_AddItemToObject(ch, "delta", delta);
        cJSON_AddNullToObject(ch, "logprobs");
        if (finish)
            cJSON_AddStringToObject(ch, "finish_reason", finish);
        else
            cJSON_AddNullToObject(ch, "finish_reason");
        cJSON_AddItemToArray(choices, ch);
    }
    if (st->usage_null)
        cJSON_AddNullToObject(o, "usage");
    return o;
}

static int openai_text_piece(void *ud, const char *piece)
{
    ostream *st = ud;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "content", piece);
    return emit(st->rs, NULL, openai_chunk(st, d, NULL));
}

static int openai_args_piece(void *ud, const char *piece)
{
    ostream *st = ud;
    cJSON *d = cJSON_CreateObject();
    cJSON *calls = cJSON_AddArrayToObject(d, "tool_calls");
    cJSON *call = cJSON_CreateObject();
    add_number(call, "index", 0);
    cJSON *fn = cJSON_AddObjectToObject(call, "function");
    cJSON_AddStringToObject(fn, "arguments", piece);
    cJSON_AddItemToArray(calls, call);
    return emit(st->rs, NULL, openai_chunk(st, d, NULL));
}

static cJSON *openai_usage(const convo *cv, const answer *a)
{
    cJSON *u = cJSON_CreateObject();
    size_t out = a->out_tokens * (size_t)cv->n;
    add_number(u, "prompt_tokens", (double)cv->prompt_tokens);
    add_number(u, "completion_tokens", (double)out);
    add_number(u, "total_tokens", (double)(cv->prompt_tokens + out));
    return u;
}

/* The first chunk of a streamed tool call: its arguments follow in
 * pieces. */
static cJSON *openai_tool_call(const answer *a, uint64_t id)
{
    cJSON *call = cJSON_CreateObject();
    char cid[48];
    snprintf(cid, sizeof cid, "call_%llu", (unsigned long long)id);
    cJSON_AddStringToObject(call, "id", cid);
    cJSON_AddStringToObject(call, "type", "function");
    cJSON *fn = cJSON_AddObjectToObject(call, "function");
    cJSON_AddStringToObject(fn, "name", a->tool_name);
    cJSON_AddStringToObject(fn, "arguments", "");
    return call;
}

/* openai_chat's unstreamed answer, cv->n choices of a's text or tool call
 * and the usage, written straight into the body (dx__jw): the bytes the
 * cJSON tree of it would print to, without building and freeing the tree
 * for every answer. A NULL string leaves its member out, as
 * cJSON_AddStringToObject does. */
static void openai_completion(uint64_t id, const convo *cv, const answer *a,
                              const char *finish, dx__lms_response *rs)
{
    rs->body.len = 0;
    rs->sse = false;
    rs->nevents = 0;
    char sid[48];
    snprintf(sid, sizeof sid, "chatcmpl-%llu", (unsigned long long)id);
    dx__jw w;
    dx__jw_init(&w, &rs->body);
    dx__jw_obj(&w, NULL);
    dx__jw_str(&w, "id", sid);
    dx__jw_str(&w, "object", "chat.completion");
    dx__jw_num(&w, "created", (double)time(NULL));
    if (cv->model)
        dx__jw_str(&w, "model", cv->model);
    dx__jw_arr(&w, "choices");
    for (int i = 0; i < cv->n; i++) {
        dx__jw_obj(&w, NULL);
        dx__jw_num(&w, "index", i);
        dx__jw_obj(&w, "message");
        dx__jw_str(&w, "role", "assistant");
        if (a->text) {
            dx__jw_str(&w, "content", a->text);
        } else {
            char cid[48];
            snprintf(cid, sizeof cid, "call_%llu", (unsigned long long)id);
            dx__jw_null(&w, "content");
            dx__jw_arr(&w, "tool_calls");
            dx__jw_obj(&w, NULL);
            dx__jw_str(&w, "id", cid);
            dx__jw_str(&w, "type", "function");
            dx__jw_obj(&w, "function");
            if (a->tool_name)
                dx__jw_str(&w, "name", a->tool_name);
            if (a->args_text)
                dx__jw_str(&w, "arguments", a->args_text);
            dx__jw_end(&w);
            dx__jw_end(&w);
            dx__jw_end(&w);
        }
        dx__jw_null(&w, "refusal");
        dx__jw_end(&w);
        dx__jw_null(&w, "logprobs");
        dx__jw_str(&w, "finish_reason", finish);
        dx__jw_end(&w);
    }
    dx__jw_end(&w);
    size_t out = a->out_tokens * (size_t)cv->n;
    dx__jw_obj(&w, "usage");
    dx__jw_num(&w, "prompt_tokens", (double)cv->prompt_tokens);
    dx__jw_num(&w, "completion_tokens", (double)out);
    dx__jw_num(&w, "total_tokens", (double)(cv->prompt_tokens + out));
    dx__jw_end(&w);
    dx__jw_str(&w, "system_fingerprint", "fp_dspex");
    dx__jw_end(&w);
    if (w.rc != 0) {
        set_oom(rs);
        return;
    }
    rs->status = 200;
    rs->ctype = "application/json";
}

static void openai_chat(dx_lmserver *srv, const cJSON *req, const convo *cv,
                        const answer *a, dx__lms_response *rs)
{
    uint64_t id = dx__lms_next_id(srv);
    const char *finish = a->cut ? "length" : a->text ? "stop" : "tool_calls";
    if (cJSON_IsTrue(get(req, "stream"))) {
        bool usage =
            cJSON_IsTrue(get(get(req, "stream_options"), "include_usage"));
        ostream st = {.rs = rs, .cv = cv, .id = id, .usage_null = usage};
        start_stream(rs);
        int rc = 0;
        for (int i = 0; rc == 0 && i < cv->n; i++) {
            st.index = i;
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "role", "assistant");
            if (a->text) {
                cJSON_AddStringToObject(d, "content", "");
                rc = emit(rs, NULL, openai_chunk(&st, d, NULL));
                if (rc == 0)
                    rc = pieces(a->text, openai_text_piece, &st);
            } else {
                cJSON_AddNullToObject(d, "content");
                cJSON *calls = cJSON_AddArrayToObject(d, "tool_calls");
                cJSON *call = openai_tool_call(a, id);
                add_number(call, "index", 0);
                cJSON_AddItemToArray(calls, call);
                rc = emit(rs, NULL, openai_chunk(&st, d, NULL));
                if (rc == 0)
                    rc = halves(a->args_text, openai_args_piece, &st);
            }
            if (rc == 0)
                rc = emit(rs, NULL,
                          openai_chunk(&st, cJSON_CreateObject(), finish));
        }
        if (rc == 0 && usage) {
            st.usage_null = false;
            cJSON *last = openai_chunk(&st, NULL, NULL);
            cJSON_AddItemToObject(last, "usage", openai_usage(cv, a));
            rc = emit(rs, NULL, last);
        }
        if (rc == 0)
            rc = add_event(rs, NULL, "[DONE]");
        if (rc != 0)
            set_oom(rs);
        return;
    }
    openai_completion(id, cv, a, finish, rs);
}

/* ---- embeddings ---------------------------------------------------------- */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A unit vector that depends only on the text and the dimension count. */
static void embed(const char *text, int dims, double *out)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    double norm = 0;
    for (int j = 0; j < dims; j++) {
        out[j] =
            (double)(mix(h + (uint64_t)j) >> 11) / 9007199254740992.0 * 2.0 -
            1.0;
        norm += out[j] * out[j];
    }
    norm = sqrt(norm);
    for (int j = 0; j < dims; j++)
        out[j] = norm > 0 ? out[j] / norm : 0;
}

static cJSON *base64_floats(const double *v, int dims)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = (size_t)dims * 4;
    unsigned char *raw = dx_malloc(n);
    char *enc = dx_malloc((n + 2) / 3 * 4 + 1);
    cJSON *s = NULL;
    if (raw != NULL && enc != NULL) {
        for (int j = 0; j < dims; j++) {
            float f = (float)v[j];
            memcpy(raw + (size_t)j * 4, &f, 4); /* little-endian hosts */
        }
        size_t o = 0;
        for (size_t i = 0; i < n; i += 3) {
            unsigned b = (unsigned)raw[i] << 16;
            if (i + 1 < n)
                b |= (unsigned)raw[i + 1] << 8;
            if (i + 2 < n)
                b |= raw[i + 2];
            enc[o++] = tab[(b >> 18) & 63];
            enc[o++] = tab[(b >> 12) & 63];
            enc[o++] = i + 1 < n ? tab[(b >> 6) & 63] : '=';
            enc[o++] = i + 2 < n ? tab[b & 63] : '=';
        }
        enc[o] = '\0';
        s = cJSON_CreateString(enc);
    }
    dx_free(raw);
    dx_free(enc);
    return s;
}

static void openai_embeddings(const cJSON *req, dx__lms_response *rs)
{
    const cJSON *input = get(req, "input");
    const char *model = jstr(req, "model");
    if (model == NULL) {
        send_error(rs, P_OPENAI, 400, "you must provide a model parameter");
        return;
    }
    int count = cJSON_IsString(input)  ? 1
                : cJSON_IsArray(input) ? cJSON_GetArraySize(input)
                                       : 0;
    const cJSON *it;
    const cJSON *list = cJSON_IsArray(input) ? input : NULL;
    cJSON_ArrayForEach(it, list)
    {
        if (!cJSON_IsString(it))
            count = 0;
    }
    if (count == 0) {
        send_error(rs, P_OPENAI, 400,
                   "input: expected a string or a non-empty array of strings");
        return;
    }
    const cJSON *dj = get(req, "dimensions");
    int dims = DEFAULT_DIMS;
    if (dj != NULL) {
        if (!cJSON_IsNumber(dj) || dj->valuedouble < 1 ||
            dj->valuedouble > MAX_DIMS) {
            send_error(rs, P_OPENAI, 400, "dimensions: expected 1 to 4096");
            return;
        }
        dims = (int)dj->valuedouble;
    }
    if ((size_t)count * (size_t)dims > MAX_EMBED_FLOATS) {
        send_error(rs, P_OPENAI, 400,
                   "input: too many values requested at once");
        return;
    }
    const char *enc = jstr(req, "encoding_format");
    bool b64 = enc != NULL && strcmp(enc, "base64") == 0;
    if (enc != NULL && !b64 && strcmp(enc, "float") != 0) {
        send_error(rs, P_OPENAI, 400,
                   "encoding_format: expected float or base64");
        return;
    }
    double *v = dx_malloc((size_t)dims * sizeof *v);
    if (v == NULL) {
        set_oom(rs);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    size_t tokens = 0;
    for (int i = 0; i < count; i++) {
        const char *text = cJSON_IsString(input)
                               ? input->valuestring
                               : cJSON_GetArrayItem(input, i)->valuestring;
        tokens += count_words(text);
        embed(text, dims, v);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "object", "embedding");
        add_number(e, "index", i);
        cJSON_AddItemToObject(e, "embedding",
                              b64 ? base64_floats(v, dims)
                                  : cJSON_CreateDoubleArray(v, dims));
        cJSON_AddItemToArray(data, e);
    }
    dx_free(v);
    cJSON_AddStringToObject(o, "model", model);
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    add_number(u, "prompt_tokens", (double)tokens);
    add_number(u, "total_tokens", (double)tokens);
    send_json(rs, 200, o);
}

/* ---- Anthropic ---------------------------------------------------------- */

static cJSON *typed(const char *type)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", type);
    return o;
}

typedef struct astream {
    dx__lms_response *rs;
    bool tool;
} astream;

static int anthropic_piece(void *ud, const char *piece)
{
    astream *st = ud;
    cJSON *e = typed("content_block_delta");
    add_number(e, "index", 0);
    cJSON *d = cJSON_AddObjectToObject(e, "delta");
    cJSON_AddStringToObject(d, "type",
                            st->tool ? "input_json_delta" : "text_delta");
    cJSON_AddStringToObject(d, st->tool ? "partial_json" : "text", piece);
    return emit(st->rs, "content_block_delta", e);
}

static cJSON *anthropic_block(const answer *a, uint64_t id, bool streaming)
{
    cJSON *b = typed(a->text ? "text" : "tool_use");
    if (a->text) {
        cJSON_AddStringToObject(b, "text", streaming ? "" : a->text);
        return b;
    }
    char tid[48];
    snprintf(tid, sizeof tid, "toolu_%llu", (unsigned long long)id);
    cJSON_AddStringToObject(b, "id", tid);
    cJSON_AddStringToObject(b, "name", a->tool_name);
    cJSON_AddItemToObject(b, "input",
                          streaming ? cJSON_CreateObject()
                                    : cJSON_Duplicate(a->args, 1));
    return b;
}

static void anthropic_messages(dx_lmserver *srv, const cJSON *req,
                               const convo *cv, const answer *a,
                               dx__lms_response *rs)
{
    uint64_t id = dx__lms_next_id(srv);
    const char *stop = a->cut    ? "max_tokens"
                       : a->text ? "end_turn"
                                 : "tool_use";
    char mid[48];
    snprintf(mid, sizeof mid, "msg_%llu", (unsigned long long)id);
    cJSON *msg = typed("message");
    cJSON_AddStringToObject(msg, "id", mid);
    cJSON_AddStringToObject(msg, "role", "assistant");
    cJSON_AddStringToObject(msg, "model", cv->model);
    cJSON *content = cJSON_AddArrayToObject(msg, "content");
    bool stream = cJSON_IsTrue(get(req, "stream"));
    if (!stream)
        cJSON_AddItemToArray(content, anthropic_block(a, id, false));
    if (stream)
        cJSON_AddNullToObject(msg, "stop_reason");
    else
        cJSON_AddStringToObject(msg, "stop_reason", stop);
    cJSON_AddNullToObject(msg, "stop_sequence");
    cJSON *u = cJSON_AddObjectToObject(msg, "usage");
    add_number(u, "input_tokens", (double)cv->prompt_tokens);
    add_number(u, "output_tokens", stream ? 1.0 : (double)a->out_tokens);
    if (!stream) {
        send_json(rs, 200, msg);
        return;
    }
    start_stream(rs);
    cJSON *e = typed("message_start");
    cJSON_AddItemToObject(e, "message", msg);
    int rc = emit(rs, "message_start", e);
    if (rc == 0) {
        e = typed("content_block_start");
        add_number(e, "index", 0);
        cJSON_AddItemToObject(e, "content_block", anthropic_block(a, id, true));
        rc = emit(rs, "content_block_start", e);
    }
    if (rc == 0)
        rc = emit(rs, "ping", typed("ping"));
    astream st = {.rs = rs, .tool = a->text == NULL};
    if (rc == 0)
        rc = a->text ? pieces(a->text, anthropic_piece, &st)
                     : halves(a->args_text, anthropic_piece, &st);
    if (rc == 0) {
        e = typed("content_block_stop");
        add_number(e, "index", 0);
        rc = emit(rs, "content_block_stop", e);
    }
    if (rc == 0) {
        e = typed("message_delta");
        cJSON *d = cJSON_AddObjectToObject(e, "delta");
        cJSON_AddStringToObject(d, "stop_reason", stop);
        cJSON_AddNullToObject(d, "stop_sequence");
        cJSON *du = cJSON_AddObjectToObject(e, "usage");
        add_number(du, "output_tokens", (double)a->out_tokens);
        rc = emit(rs, "message_delta", e);
    }
    if (rc == 0)
        rc = emit(rs, "message_stop", typed("message_stop"));
    if (rc != 0)
        set_oom(rs);
}

/* ---- Gemini ------------------------------------------------------------- */

static cJSON *gemini_usage(const convo *cv, size_t out)
{
    cJSON *u = cJSON_CreateObject();
    add_number(u, "promptTokenCount", (double)cv->prompt_tokens);
    if (out > 0)
        add_number(u, "candidatesTokenCount", (double)out);
    add_number(u, "totalTokenCount", (double)(cv->prompt_tokens + out));
    return u;
}

static const char *gemini_finish(const answer *a)
{
    return a->cut ? "MAX_TOKENS" : "STOP";
}

/* One GenerateContentResponse with a single part (consumed); finish is set
 * on the last one only. */
static cJSON *gemini_response(const convo *cv, uint64_t id, cJSON *part,
                              const char *finish, size_t out)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *cand = cJSON_CreateObject();
    cJSON *content = cJSON_AddObjectToObject(cand, "content");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(content, "parts"), part);
    cJSON_AddStringToObject(content, "role", "model");
    if (finish != NULL)
        cJSON_AddStringToObject(cand, "finishReason", finish);
    add_number(cand, "index", 0);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "candidates"), cand);
    cJSON_AddItemToObject(o, "usageMetadata",
                          gemini_usage(cv, finish != NULL ? out : 0));
    cJSON_AddStringToObject(o, "modelVersion", cv->model);
    char rid[48];
    snprintf(rid, sizeof rid, "resp_%llu", (unsigned long long)id);
    cJSON_AddStringToObject(o, "responseId", rid);
    return o;
}

static cJSON *gemini_call_part(const answer *a)
{
    cJSON *part = cJSON_CreateObject();
    cJSON *fc = cJSON_AddObjectToObject(part, "functionCall");
    cJSON_AddStringToObject(fc, "name", a->tool_name);
    cJSON_AddItemToObject(fc, "args", cJSON_Duplicate(a->args, 1));
    return part;
}

static cJSON *text_part(const char *text)
{
    cJSON *part = cJSON_CreateObject();
    cJSON_AddStringToObject(part, "text", text);
    return part;
}

typedef struct gstream {
    const convo *cv;
    const answer *a;
    uint64_t id;
    cJSON *list; /* the responses, in order */
} gstream;

static int gemini_piece(void *ud, const char *piece)
{
    gstream *st = ud;
    cJSON *r = gemini_response(st->cv, st->id, text_part(piece), NULL, 0);
    if (r == NULL)
        return DX_ENOMEM;
    cJSON_AddItemToArray(st->list, r);
    return DX_OK;
}

static void gemini_generate(dx_lmserver *srv, bool stream, bool sse,
                            const convo *cv, const answer *a,
                            dx__lms_response *rs)
{
    uint64_t id = dx__lms_next_id(srv);
    if (!stream) {
        send_json(
            rs, 200,
            gemini_response(cv, id,
                            a->text ? text_part(a->text) : gemini_call_part(a),
                            gemini_finish(a), a->out_tokens));
        return;
    }
    gstream st = {.cv = cv, .a = a, .id = id, .list = cJSON_CreateArray()};
    int rc = st.list ? 0 : DX_ENOMEM;
    if (rc == 0 && a->text)
        rc = pieces(a->text, gemini_piece, &st);
    if (rc == 0 && a->text == NULL)
        cJSON_AddItemToArray(
            st.list, gemini_response(cv, id, gemini_call_part(a), NULL, 0));
    /* The last response carries finishReason and the final usage. */
    cJSON *last = cJSON_GetArrayItem(st.list, cJSON_GetArraySize(st.list) - 1);
    if (rc == 0 && last == NULL) {
        cJSON_AddItemToArray(st.list,
                             gemini_response(cv, id, text_part(""), NULL, 0));
        last = cJSON_GetArrayItem(st.list, 0);
    }
    if (rc == 0 && last != NULL) {
        cJSON *cand = cJSON_GetArrayItem(get(last, "candidates"), 0);
        cJSON_AddStringToObject(cand, "finishReason", gemini_finish(a));
        cJSON_ReplaceItemInObjectCaseSensitive(last, "usageMetadata",
                                               gemini_usage(cv, a->out_tokens));
    }
    if (!sse) {
        /* Without alt=sse the API streams one JSON array. */
        send_json(rs, 200, st.list);
        return;
    }
    start_stream(rs);
    cJSON *r;
    cJSON_ArrayForEach(r, st.list)
    {
        if (rc == 0) {
            char *s = dx__jprint(r);
            rc = s ? add_event(rs, NULL, s) : DX_ENOMEM;
            dx_free(s);
        }
    }
    cJSON_Delete(st.list);
    if (rc != 0)
        set_oom(rs);
}

static void gemini_embed(const cJSON *req, dx__lms_response *rs)
{
    dx__buf text = {0};
    const cJSON *parts = get(get(req, "content"), "parts");
    if (!cJSON_IsArray(parts) || gather_text(&text, parts) != 0 ||
        text.p == NULL) {
        dx__buf_free(&text);
        {
            send_error(
                rs, P_GEMINI, 400,
                "* EmbedContentRequest.content: content is not specified");
            return;
        }
    }
    int dims = DEFAULT_DIMS;
    const cJSON *dj = get(req, "outputDimensionality");
    if (dj != NULL) {
        if (!cJSON_IsNumber(dj) || dj->valuedouble < 1 ||
            dj->valuedouble > MAX_DIMS) {
            dx__buf_free(&text);
            {
                send_error(rs, P_GEMINI, 400,
                           "outputDimensionality: expected 1 to 4096");
                return;
            }
        }
        dims = (int)dj->valuedouble;
    }
    double *v = dx_malloc((size_t)dims * sizeof *v);
    if (v == NULL) {
        dx__buf_free(&text);
        {
            set_oom(rs);
            return;
        }
    }
    embed(text.p, dims, v);
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "embedding");
    cJSON_AddItemToObject(e, "values", cJSON_CreateDoubleArray(v, dims));
    dx_free(v);
    dx__buf_free(&text);
    send_json(rs, 200, o);
}

/* ---- routing ------------------------------------------------------------ */

typedef enum endpoint { E_CHAT, E_EMBED, E_GEN, E_STREAM, E_GEMBED } endpoint;

static const char *bad_json_msg(prov p)
{
    switch (p) {
    case P_ANTHROPIC:
        return "invalid request: the request body is not valid JSON";
    case P_GEMINI:
        return "Invalid JSON payload received.";
    default:
        return "We could not parse the JSON body of your request. (HINT: This "
               "likely means "
               "you aren't using your HTTP library correctly.)";
    }
}

/* 0 if authorised, else the status to answer with and *msg. */
static int check_auth(const dx__lms_request *rq, prov p, const char **msg)
{
    const char *bearer = header(rq, "authorization");
    bool has_bearer = bearer != NULL &&
                      strncasecmp(bearer, "Bearer ", 7) == 0 &&
                      bearer[7] != '\0';
    switch (p) {
    case P_OPENAI:
        if (has_bearer)
            return 0;
        *msg = "You didn't provide an API key. You need to provide your API "
               "key in an "
               "Authorization header using Bearer auth (i.e. Authorization: "
               "Bearer YOUR_KEY).";
        return 401;
    case P_ANTHROPIC: {
        const char *key = header(rq, "x-api-key");
        if ((key == NULL || key[0] == '\0') && !has_bearer) {
            *msg = "x-api-key header is required";
            return 401;
        }
        const char *ver = header(rq, "anthropic-version");
        if (ver == NULL || ver[0] == '\0') {
            *msg = "anthropic-version: header is required";
            return 400;
        }
        return 0;
    }
    case P_GEMINI: {
        const char *key = header(rq, "x-goog-api-key");
        bool query_key = strncmp(rq->query, "key=", 4) == 0 ||
                         strstr(rq->query, "&key=") != NULL;
        if ((key != NULL && key[0] != '\0') || query_key)
            return 0;
        *msg = "Method doesn't allow unregistered callers (callers without "
               "established "
               "identity). Please use API Key or other form of API consumer "
               "identity to call "
               "this API.";
        return 403;
    }
    }
    return 0;
}

/* The part of the answer that replaces the response (error statuses). */
static bool status_fault(dx_lmserver *srv, const fault *f, prov p,
                         dx__lms_response *rs)
{
    char msg[160];
    switch (f->kind) {
    case F_RATE:
        snprintf(msg, sizeof msg,
                 "Rate limit reached (injected). Please try again in %lds.",
                 f->arg);
        send_error(rs, p, 429, msg);
        dx__buf_fmt(&rs->headers, "Retry-After: %ld\r\nretry-after-ms: %ld\r\n",
                    f->arg, f->arg * 1000);
        break;
    case F_OVERLOADED:
        send_error(rs, p, p == P_ANTHROPIC ? 529 : 503,
                   p == P_ANTHROPIC
                       ? "Overloaded"
                       : "The server is overloaded, please try again later.");
        break;
    case F_SERVER:
        snprintf(msg, sizeof msg,
                 "The server had an error while processing your request "
                 "(injected %ld).",
                 f->arg);
        send_error(rs, p, (int)f->arg, msg);
        break;
    case F_BAD_REQUEST:
        send_error(rs, p, 400, "The request was refused (injected 400).");
        break;
    case F_AUTH:
        send_error(rs, p, 401,
                   p == P_ANTHROPIC ? "invalid x-api-key"
                   : p == P_GEMINI
                       ? "API key not valid. Please pass a valid API key."
                       : "Incorrect API key provided.");
        break;
    default:
        return false;
    }
    (void)srv;
    rs->faulted = true;
    return true;
}

static void malformed(prov p, dx__lms_response *rs)
{
    if (!rs->sse) {
        rs->body.len = 0;
        rs->status = 200;
        rs->ctype = "application/json";
        if (dx__buf_str(&rs->body,
                        "{\"id\": \"broken\", \"choices\": [{\"index\": 0, ") !=
            0)
            set_oom(rs);
        return;
    }
    /* A stream whose first event does not parse; the rest follows. */
    dx__buf old = rs->body;
    size_t n = rs->nevents;
    size_t ends[DX__LMS_MAX_EVENTS];
    memcpy(ends, rs->event_end, n * sizeof ends[0]);
    rs->body = (dx__buf){0};
    rs->nevents = 0;
    int rc =
        add_event(rs, p == P_ANTHROPIC ? "message_start" : NULL,
                  "{\"type\": \"message_start\", \"choices\": [{\"delta\": ");
    size_t start = 0;
    for (size_t i = 0; rc == 0 && i < n && rs->nevents < DX__LMS_MAX_EVENTS;
         i++) {
        rc = dx__buf_append(&rs->body, old.p + start, ends[i] - start);
        rs->event_end[rs->nevents++] = rs->body.len;
        start = ends[i];
    }
    dx__buf_free(&old);
    if (rc != 0)
        set_oom(rs);
}

static void body_fault(const fault *f, prov p, dx__lms_response *rs)
{
    switch (f->kind) {
    case F_SLOW:
        rs->delay_ms = (uint64_t)f->arg;
        break;
    case F_STALL:
        rs->stall = true;
        break;
    case F_RESET:
        rs->reset_mid = true;
        break;
    case F_TRUNC:
        rs->truncate = true;
        break;
    case F_MALFORMED:
        malformed(p, rs);
        break;
    case F_CTYPE:
        rs->body.len = 0;
        rs->sse = false;
        rs->nevents = 0;
        rs->status = 200;
        rs->ctype = "text/html; charset=utf-8";
        if (dx__buf_str(&rs->body,
                        "<!DOCTYPE html><html><head><title>502 Bad Gateway"
                        "</title></head><body><h1>Bad Gateway</h1></body>"
                        "</html>\n") != 0)
            set_oom(rs);
        break;
    default:
        return;
    }
    rs->faulted = true;
}

static bool route(const dx__lms_request *rq, prov *p, endpoint *e, char *model,
                  size_t msize)
{
    const char *path = rq->path;
    if (strcmp(path, "/v1/chat/completions") == 0) {
        *p = P_OPENAI;
        *e = E_CHAT;
        return true;
    }
    if (strcmp(path, "/v1/embeddings") == 0) {
        *p = P_OPENAI;
        *e = E_EMBED;
        return true;
    }
    if (strcmp(path, "/v1/messages") == 0) {
        *p = P_ANTHROPIC;
        *e = E_CHAT;
        return true;
    }
    static const char pre[] = "/v1beta/models/";
    if (strncmp(path, pre, sizeof pre - 1) != 0)
        return false;
    const char *name = path + sizeof pre - 1;
    const char *colon = strrchr(name, ':');
    if (colon == NULL || colon == name || (size_t)(colon - name) >= msize ||
        memchr(name, '/', (size_t)(colon - name)) != NULL)
        return false;
    snprintf(model, msize, "%.*s", (int)(colon - name), name);
    *p = P_GEMINI;
    if (strcmp(colon + 1, "generateContent") == 0)
        *e = E_GEN;
    else if (strcmp(colon + 1, "streamGenerateContent") == 0)
        *e = E_STREAM;
    else if (strcmp(colon + 1, "embedContent") == 0)
        *e = E_GEMBED;
    else
        return false;
    return true;
}

static bool query_has(const char *query, const char *kv)
{
    size_t n = strlen(kv);
    for (const char *q = query; q != NULL; q = strchr(q, '&')) {
        if (*q == '&')
            q++;
        if (strncmp(q, kv, n) == 0 && (q[n] == '\0' || q[n] == '&'))
            return true;
    }
    return false;
}

/* Keep the first `words` whitespace-separated words of text (the max_tokens
 * fault: an answer cut at the token limit, as a reasoning model's is when
 * its thinking used the limit up). */
static void cut_to_words(char *text, long words)
{
    char *p = text;
    for (long w = 0; *p != '\0'; w++) {
        while (*p != '\0' && isspace((unsigned char)*p))
            p++;
        if (*p == '\0' || w == words)
            break;
        while (*p != '\0' && !isspace((unsigned char)*p))
            p++;
    }
    /* p is past the last kept word's trailing spaces, or on the next word */
    while (p > text && isspace((unsigned char)p[-1]))
        p--;
    *p = '\0';
}

static void answer_chat(dx_lmserver *srv, const dx__lms_request *rq, prov p,
                        endpoint e, const cJSON *req, const char *gmodel,
                        long cut_words, dx__lms_response *rs)
{
    convo cv = {.n = 1};
    const char *bad = NULL;
    /* "sim/<profile>" — or "sim-<profile>" for Gemini, whose model name
     * sits in the URL path where "/" cannot. */
    const char *model = p == P_GEMINI ? gmodel : jstr(req, "model");
    if (model &&
        (strncmp(model, "sim/", 4) == 0 || strncmp(model, "sim-", 4) == 0) &&
        model[4] && !(cv.sim = dx_lm_request_new(NULL))) {
        set_oom(rs);
        return;
    }
    if (p == P_GEMINI) {
        cv.model = gmodel;
        bad = read_gemini(req, &cv);
    } else {
        cv.model = jstr(req, "model");
        if (cv.model == NULL)
            bad = p == P_OPENAI ? "you must provide a model parameter"
                                : "model: Field required";
        else
            bad = p == P_OPENAI ? read_openai(req, &cv)
                                : read_anthropic(req, &cv);
    }
    if (bad != NULL) {
        send_error(rs, p, 400, bad);
        convo_free(&cv);
        return;
    }
    answer a = {0};
    int drc = decide(srv, &cv, &a);
    if (drc == 0 && cut_words >= 0 && a.text != NULL) {
        cut_to_words(a.text, cut_words);
        a.out_tokens = count_words(a.text);
        a.cut = true;
    }
    if (drc == DX_EINVAL) {
        send_error(rs, p, 400, a.sim_error);
    } else if (drc != 0) {
        set_oom(rs);
    } else if (p == P_OPENAI) {
        openai_chat(srv, req, &cv, &a, rs);
    } else if (p == P_ANTHROPIC) {
        anthropic_messages(srv, req, &cv, &a, rs);
    } else {
        gemini_generate(srv, e == E_STREAM, query_has(rq->query, "alt=sse"),
                        &cv, &a, rs);
    }
    answer_free(&a);
    convo_free(&cv);
}

void dx__lms_handle(dx_lmserver *srv, const dx__lms_request *rq,
                    dx__lms_response *rs)
{
    rs->status = 200;
    if (strcmp(rq->path, "/healthz") == 0) {
        if (strcmp(rq->method, "GET") != 0) {
            send_error(rs, P_OPENAI, 405, "use GET /healthz");
            return;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        {
            send_json(rs, 200, o);
            return;
        }
    }
    prov p;
    endpoint e;
    char model[256];
    if (!route(rq, &p, &e, model, sizeof model)) {
        char msg[320];
        snprintf(msg, sizeof msg, "Invalid URL (%s %.256s)", rq->method,
                 rq->path);
        {
            send_error(rs, prov_of_path(rq->path), 404, msg);
            return;
        }
    }
    if (strcmp(rq->method, "POST") != 0) {
        char msg[320];
        snprintf(msg, sizeof msg, "Method %s is not allowed on %.256s",
                 rq->method, rq->path);
        {
            send_error(rs, p, 405, msg);
            return;
        }
    }
    uint64_t rid = dx__lms_next_id(srv);
    if (p == P_OPENAI)
        dx__buf_fmt(&rs->headers, "x-request-id: req_%llu\r\n",
                    (unsigned long long)rid);
    else if (p == P_ANTHROPIC)
        dx__buf_fmt(&rs->headers, "request-id: req_%llu\r\n",
                    (unsigned long long)rid);

    fault f = {F_NONE, 0};
    const char *hspec = header(rq, "x-dx-fault");
    char spec[DX_LMSERVER_MAX_FAULT_SPEC];
    if (hspec != NULL) {
        if (!parse_fault(hspec, &f)) {
            char msg[160];
            snprintf(msg, sizeof msg, "x-dx-fault: unknown fault spec '%.64s'",
                     hspec);
            {
                send_error(rs, p, 400, msg);
                return;
            }
        }
    } else if (dx__lms_take_fault(srv, spec, sizeof spec)) {
        parse_fault(spec, &f); /* validated when queued */
    }
    if (status_fault(srv, &f, p, rs))
        return;

    const char *amsg = NULL;
    int astatus = check_auth(rq, p, &amsg);
    cJSON *req = NULL;
    const char *rft = NULL;
    if (astatus != 0) {
        send_error(rs, p, astatus, amsg);
    } else if ((req = dx__jparse_block(rq->body, rq->body_len)) == NULL ||
               !cJSON_IsObject(req)) {
        send_error(rs, p, 400, bad_json_msg(p));
    } else if (f.kind == F_NO_SCHEMA && p == P_OPENAI &&
               (rft = jstr(get(req, "response_format"), "type")) != NULL &&
               strcmp(rft, "json_schema") == 0) {
        /* A server without structured outputs, as several
         * OpenAI-compatible ones are: JSON mode only. */
        send_error(rs, p, 400,
                   "response_format: json_schema is not supported by this "
                   "server; use {\"type\": \"json_object\"}");
        rs->faulted = true;
    } else if (e == E_EMBED) {
        openai_embeddings(req, rs);
    } else if (e == E_GEMBED) {
        gemini_embed(req, rs);
    } else {
        answer_chat(srv, rq, p, e, req, model, f.kind == F_LENGTH ? f.arg : -1,
                    rs);
    }
    dx__jfree_block(req); /* only read while answering, never kept */
    body_fault(&f, p, rs);
}
