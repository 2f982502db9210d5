/*
 * test_lmserver.c — the local LM server, started inside each test on
 * 127.0.0.1 with an ephemeral port and driven with libcurl (and raw sockets
 * where curl would hide what we check): the three wire formats plain and
 * streamed, scripted replies, keep-alive and pipelining, bad requests in
 * each provider's error shape, every fault, 200 concurrent clients, garbage
 * input, and stopping with clients still connected; then the same kinds of
 * checks on a server with three threads (connections shared out, queues and
 * the connection limit shared by all).
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "../fd_table_util.h"
#include "dspex/error.h"
#include "dspex/lmserver.h"

#define KEY "sk-test-key"
#define OAI_AUTH "Authorization: Bearer " KEY
#define ANT_KEY "x-api-key: " KEY
#define ANT_VER "anthropic-version: 2023-06-01"
#define GEM_KEY "x-goog-api-key: " KEY

static dx_lmserver *srv;
static int port;

static void start(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    cr_assert_eq(dx_lmserver_start(NULL, &srv), DX_OK);
    port = dx_lmserver_port(srv);
    cr_assert_gt(port, 0);
}

static void stop(void)
{
    dx_lmserver_stop_free(srv);
    srv = NULL;
    curl_global_cleanup();
}

TestSuite(lmserver, .init = start, .fini = stop, .timeout = 60);

/* ---- a blocking curl client ---------------------------------------------- */

typedef struct resp {
    CURLcode rc;
    long status;
    char *body;
    size_t len;
    char *head;
    size_t hlen;
    long connects;
    double secs;
} resp;

static size_t grow(char **p, size_t *len, const char *data, size_t n)
{
    char *q = realloc(*p, *len + n + 1);
    cr_assert(q);
    memcpy(q + *len, data, n);
    *len += n;
    q[*len] = '\0';
    *p = q;
    return n;
}

static size_t on_body(char *d, size_t s, size_t n, void *ud)
{
    resp *r = ud;
    return grow(&r->body, &r->len, d, s * n);
}

static size_t on_head(char *d, size_t s, size_t n, void *ud)
{
    resp *r = ud;
    return grow(&r->head, &r->hlen, d, s * n);
}

static void resp_free(resp *r)
{
    free(r->body);
    free(r->head);
    memset(r, 0, sizeof *r);
}

/* POST (body != NULL) or GET path with headers (NULL-terminated list);
 * easy may be reused for keep-alive. timeout_ms 0 = 20 s. */
static resp request_on(CURL *easy, const char *path, const char *const *hdrs,
                       const char *body, long timeout_ms)
{
    resp r = {0};
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    struct curl_slist *list = NULL;
    for (size_t i = 0; hdrs && hdrs[i]; i++)
        list = curl_slist_append(list, hdrs[i]);
    list = curl_slist_append(list, "Content-Type: application/json");
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, list);
    if (body != NULL) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
    } else {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_head);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
                     timeout_ms ? timeout_ms : 20000L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    r.rc = curl_easy_perform(easy);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r.secs = (double)(t1.tv_sec - t0.tv_sec) +
             (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &r.connects);
    curl_slist_free_all(list);
    if (r.body == NULL)
        r.body = calloc(1, 1);
    if (r.head == NULL)
        r.head = calloc(1, 1);
    return r;
}

static resp request(const char *path, const char *const *hdrs, const char *body)
{
    CURL *easy = curl_easy_init();
    cr_assert(easy);
    resp r = request_on(easy, path, hdrs, body, 0);
    curl_easy_cleanup(easy);
    return r;
}

static resp request_t(const char *path, const char *const *hdrs,
                      const char *body, long timeout_ms)
{
    CURL *easy = curl_easy_init();
    cr_assert(easy);
    resp r = request_on(easy, path, hdrs, body, timeout_ms);
    curl_easy_cleanup(easy);
    return r;
}

static cJSON *parse(const resp *r)
{
    cJSON *j = cJSON_Parse(r->body);
    cr_assert(j, "body is not JSON: %s", r->body);
    return j;
}

/* Follow a path like "choices.0.message.content" (numbers index arrays). */
static const cJSON *walk(const cJSON *o, const char *path)
{
    const cJSON *cur = o;
    const char *p = path;
    while (cur != NULL && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        if (key[0] >= '0' && key[0] <= '9')
            cur = cJSON_GetArrayItem(cur, (int)strtol(key, NULL, 10));
        else
            cur = cJSON_GetObjectItemCaseSensitive(cur, key);
        p += n + (dot ? 1 : 0);
    }
    return cur;
}

static const char *sget(const cJSON *o, const char *path)
{
    const cJSON *v = walk(o, path);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double nget(const cJSON *o, const char *path)
{
    const cJSON *v = walk(o, path);
    cr_assert(cJSON_IsNumber(v), "no number at %s", path);
    return v->valuedouble;
}

/* The data: payloads of an SSE body, in order (NULL-terminated, malloc'd
 * strings inside one malloc'd array). event names go to names if given. */
typedef struct sse {
    char *data[600];
    char *name[600];
    size_t n;
} sse;

static void sse_parse(const char *body, sse *out)
{
    memset(out, 0, sizeof *out);
    const char *p = body;
    char *pending_name = NULL;
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        if (n >= 7 && strncmp(p, "event: ", 7) == 0) {
            free(pending_name);
            pending_name = strndup(p + 7, n - 7);
        } else if (n >= 6 && strncmp(p, "data: ", 6) == 0) {
            cr_assert_lt(out->n, 600);
            out->data[out->n] = strndup(p + 6, n - 6);
            out->name[out->n] = pending_name;
            pending_name = NULL;
            out->n++;
        }
        p += n + (eol ? 1 : 0);
    }
    free(pending_name);
}

static void sse_free(sse *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->data[i]);
        free(s->name[i]);
    }
}

static bool has_header(const resp *r, const char *line)
{
    return strcasestr(r->head, line) != NULL;
}

/* ---- raw sockets ---------------------------------------------------------- */

static int raw_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static void raw_send(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return; /* the server may close on us; that is checked elsewhere */
        p += w;
        n -= (size_t)w;
    }
}

/* Read until the peer closes (or the 10 s receive timeout). */
static char *raw_read_all(int fd, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    char tmp[65536];
    for (;;) {
        ssize_t r = recv(fd, tmp, sizeof tmp, 0);
        if (r <= 0)
            break;
        grow(&buf, &n, tmp, (size_t)r);
    }
    if (buf == NULL)
        buf = calloc(1, 1);
    if (len)
        *len = n;
    return buf;
}

static int count_occurrences(const char *s, const char *what)
{
    int n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
        n++;
    return n;
}

static void assert_healthy(void)
{
    resp r = request("/healthz", NULL, NULL);
    cr_assert_eq(r.rc, CURLE_OK);
    cr_assert_eq(r.status, 200);
    resp_free(&r);
}

/* ---- requests ------------------------------------------------------------- */

static const char *oai[] = {OAI_AUTH, NULL};
static const char *ant[] = {ANT_KEY, ANT_VER, NULL};
static const char *gem[] = {GEM_KEY, NULL};

#define OAI_CHAT                                                               \
    "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"system\","           \
    "\"content\":\"be terse\"},{\"role\":\"user\",\"content\":\"what is "      \
    "two plus two\"}]}"
#define ANT_CHAT                                                               \
    "{\"model\":\"claude-x\",\"max_tokens\":64,\"system\":\"be terse\","       \
    "\"messages\":[{\"role\":\"user\",\"content\":\"what is two plus "         \
    "two\"}]}"
#define GEM_CHAT                                                               \
    "{\"systemInstruction\":{\"parts\":[{\"text\":\"be terse\"}]},"            \
    "\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"what is two "     \
    "plus two\"}]}]}"
#define GEM_GEN "/v1beta/models/gemini-2.0-flash:generateContent"
#define GEM_STREAM                                                             \
    "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"

/* ---- OpenAI --------------------------------------------------------------- */

Test(lmserver, openai_chat_answers_with_completion_shape_and_usage)
{
    resp r = request("/v1/chat/completions", oai, OAI_CHAT);
    cr_assert_eq(r.rc, CURLE_OK);
    cr_assert_eq(r.status, 200);
    cr_assert(has_header(&r, "content-type: application/json"));
    cr_assert(has_header(&r, "x-request-id: req_"));
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "object"), "chat.completion");
    cr_assert_str_eq(sget(j, "model"), "gpt-4o-mini");
    cr_assert_str_eq(sget(j, "choices.0.message.role"), "assistant");
    cr_assert_str_eq(sget(j, "choices.0.message.content"),
                     "answer: what is two plus two");
    cr_assert_str_eq(sget(j, "choices.0.finish_reason"), "stop");
    cr_assert_eq(nget(j, "usage.prompt_tokens"), 7); /* "be terse" + 5 words */
    cr_assert_eq(nget(j, "usage.completion_tokens"), 6);
    cr_assert_eq(nget(j, "usage.total_tokens"), 13);
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, openai_stream_sends_chunks_usage_then_done)
{
    resp r = request("/v1/chat/completions", oai,
                     "{\"model\":\"m\",\"stream\":true,\"stream_options\":"
                     "{\"include_usage\":true},\"messages\":[{\"role\":"
                     "\"user\",\"content\":\"hello there\"}]}");
    cr_assert_eq(r.rc, CURLE_OK);
    cr_assert_eq(r.status, 200);
    cr_assert(has_header(&r, "content-type: text/event-stream"));
    sse s;
    sse_parse(r.body, &s);
    cr_assert_geq(s.n, 4);
    cr_assert_str_eq(s.data[s.n - 1], "[DONE]");
    char text[256] = "";
    const char *finish = NULL;
    cJSON *usage_chunk = cJSON_Parse(s.data[s.n - 2]);
    cr_assert(usage_chunk);
    cr_assert_eq(
        cJSON_GetArraySize(cJSON_GetObjectItem(usage_chunk, "choices")), 0);
    cr_assert_eq(nget(usage_chunk, "usage.completion_tokens"), 3);
    cr_assert_eq(nget(usage_chunk, "usage.prompt_tokens"), 2);
    cJSON_Delete(usage_chunk);
    cJSON *first = cJSON_Parse(s.data[0]);
    cr_assert_str_eq(sget(first, "choices.0.delta.role"), "assistant");
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(first, "usage")));
    cJSON_Delete(first);
    for (size_t i = 0; i + 2 < s.n; i++) {
        cJSON *c = cJSON_Parse(s.data[i]);
        cr_assert(c, "chunk %zu is not JSON", i);
        cr_assert_str_eq(sget(c, "object"), "chat.completion.chunk");
        const char *piece = sget(c, "choices.0.delta.content");
        if (piece)
            strncat(text, piece, sizeof text - strlen(text) - 1);
        if (sget(c, "choices.0.finish_reason"))
            finish = "stop";
        cJSON_Delete(c);
    }
    cr_assert_str_eq(text, "answer: hello there");
    cr_assert_str_eq(finish, "stop");
    sse_free(&s);
    resp_free(&r);
}

Test(lmserver, openai_stream_without_include_usage_has_no_usage_chunk)
{
    resp r = request("/v1/chat/completions", oai,
                     "{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":"
                     "\"user\",\"content\":\"hi\"}]}");
    cr_assert_eq(r.status, 200);
    cr_assert_eq(count_occurrences(r.body, "\"usage\""), 0);
    cr_assert_eq(count_occurrences(r.body, "data: [DONE]"), 1);
    resp_free(&r);
}

#define WEATHER_TOOL_OAI                                                       \
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_"          \
    "weather\","                                                               \
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"  \
    "\"string\"},\"days\":{\"type\":\"integer\"}},\"required\":[\"city\"]}}}]"

Test(lmserver, openai_tool_call_when_the_user_asks_for_it)
{
    resp r =
        request("/v1/chat/completions", oai,
                "{\"model\":\"m\"," WEATHER_TOOL_OAI ",\"messages\":[{\"role\":"
                "\"user\",\"content\":\"please call get_weather city=Paris "
                "days=3\"}]}");
    cr_assert_eq(r.status, 200);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "choices.0.finish_reason"), "tool_calls");
    cr_assert(cJSON_IsNull(walk(j, "choices.0.message.content")));
    cr_assert_str_eq(sget(j, "choices.0.message.tool_calls.0.type"),
                     "function");
    cr_assert_str_eq(sget(j, "choices.0.message.tool_calls.0.function.name"),
                     "get_weather");
    cr_assert_not_null(sget(j, "choices.0.message.tool_calls.0.id"));
    cJSON *args = cJSON_Parse(
        sget(j, "choices.0.message.tool_calls.0.function.arguments"));
    cr_assert(args);
    cr_assert_str_eq(sget(args, "city"), "Paris");
    cr_assert_eq(nget(args, "days"), 3);
    cJSON_Delete(args);
    cJSON_Delete(j);
    resp_free(&r);

    /* After the tool result the model answers with it. */
    r = request("/v1/chat/completions", oai,
                "{\"model\":\"m\"," WEATHER_TOOL_OAI ",\"messages\":[{\"role\":"
                "\"user\",\"content\":\"please call get_weather city=Paris\"},"
                "{\"role\":\"assistant\",\"content\":null},{\"role\":\"tool\","
                "\"tool_call_id\":\"call_1\",\"content\":\"sunny\"}]}");
    j = parse(&r);
    cr_assert_str_eq(sget(j, "choices.0.message.content"), "answer: sunny");
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, openai_streamed_tool_call_arguments_join_to_json)
{
    resp r = request("/v1/chat/completions", oai,
                     "{\"model\":\"m\",\"stream\":true," WEATHER_TOOL_OAI
                     ",\"messages\":[{\"role\":\"user\",\"content\":\"call "
                     "get_weather city=Oslo\"}]}");
    cr_assert_eq(r.status, 200);
    sse s;
    sse_parse(r.body, &s);
    char args[256] = "";
    int arg_chunks = 0;
    for (size_t i = 0; i + 1 < s.n; i++) {
        cJSON *c = cJSON_Parse(s.data[i]);
        cr_assert(c);
        const char *a =
            sget(c, "choices.0.delta.tool_calls.0.function.arguments");
        if (a && a[0]) {
            strncat(args, a, sizeof args - strlen(args) - 1);
            arg_chunks++;
        }
        cJSON_Delete(c);
    }
    cr_assert_geq(arg_chunks, 2);
    cr_assert_str_eq(args, "{\"city\":\"Oslo\"}");
    sse_free(&s);
    resp_free(&r);
}

Test(lmserver, openai_json_schema_output_is_a_json_object)
{
    resp r =
        request("/v1/chat/completions", oai,
                "{\"model\":\"m\",\"response_format\":{\"type\":"
                "\"json_schema\",\"json_schema\":{\"name\":\"a\",\"schema\":"
                "{\"type\":\"object\",\"properties\":{\"reasoning\":{\"type\":"
                "\"string\"},\"score\":{\"type\":\"number\"}}}}},"
                "\"messages\":[{\"role\":\"user\",\"content\":\"rate it\"}]}");
    cJSON *j = parse(&r);
    cJSON *out = cJSON_Parse(sget(j, "choices.0.message.content"));
    cr_assert(out, "content is not JSON");
    cr_assert_str_eq(sget(out, "reasoning"), "answer: rate it");
    cr_assert_eq(nget(out, "score"), 2);
    cJSON_Delete(out);
    cJSON_Delete(j);
    resp_free(&r);

    r = request(
        "/v1/chat/completions", oai,
        "{\"model\":\"m\",\"response_format\":{\"type\":\"json_object\"},"
        "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    j = parse(&r);
    out = cJSON_Parse(sget(j, "choices.0.message.content"));
    cr_assert(cJSON_IsObject(out));
    cr_assert_str_eq(sget(out, "answer"), "answer: x");
    cJSON_Delete(out);
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, openai_n_gives_that_many_choices)
{
    resp r =
        request("/v1/chat/completions", oai,
                "{\"model\":\"m\",\"n\":3,\"messages\":[{\"role\":\"user\","
                "\"content\":\"a b\"}]}");
    cJSON *j = parse(&r);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "choices")), 3);
    cr_assert_eq(nget(j, "choices.2.index"), 2);
    cr_assert_eq(nget(j, "usage.completion_tokens"), 9);
    cJSON_Delete(j);
    resp_free(&r);
}

/* A seed too large for an integer (1e300, or 1e999, which reads as an
 * infinity) is not converted (undefined in C; UBSan would stop here): the
 * sim model answers as without one. */
Test(lmserver, a_seed_past_two_to_the_53_is_ignored)
{
    const char *seeds[] = {"1e300", "-1e999", "12"};
    for (size_t i = 0; i < 3; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"model\":\"sim/base\",\"seed\":%s,\"messages\":"
                 "[{\"role\":\"user\",\"content\":\"a b\"}]}",
                 seeds[i]);
        resp r = request("/v1/chat/completions", oai, body);
        cr_assert_eq(r.status, 200, "seed %s: %ld", seeds[i], r.status);
        resp_free(&r);
    }
}

Test(lmserver, openai_embeddings_are_deterministic_unit_vectors)
{
    resp r =
        request("/v1/embeddings", oai,
                "{\"model\":\"text-embedding-3-small\",\"input\":[\"a cat\","
                "\"a dog\",\"a cat\"],\"dimensions\":16}");
    cr_assert_eq(r.status, 200);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "object"), "list");
    cJSON *data = cJSON_GetObjectItem(j, "data");
    cr_assert_eq(cJSON_GetArraySize(data), 3);
    cJSON *e0 = cJSON_GetObjectItem(cJSON_GetArrayItem(data, 0), "embedding");
    cJSON *e1 = cJSON_GetObjectItem(cJSON_GetArrayItem(data, 1), "embedding");
    cJSON *e2 = cJSON_GetObjectItem(cJSON_GetArrayItem(data, 2), "embedding");
    cr_assert_eq(cJSON_GetArraySize(e0), 16);
    double norm = 0;
    bool same01 = true, same02 = true;
    for (int i = 0; i < 16; i++) {
        double v = cJSON_GetArrayItem(e0, i)->valuedouble;
        norm += v * v;
        same01 &= v == cJSON_GetArrayItem(e1, i)->valuedouble;
        same02 &= v == cJSON_GetArrayItem(e2, i)->valuedouble;
    }
    cr_assert_float_eq(norm, 1.0, 1e-9);
    cr_assert(!same01);
    cr_assert(same02);
    cr_assert_eq(nget(j, "usage.prompt_tokens"), 6);
    cJSON_Delete(j);
    resp_free(&r);

    r = request(
        "/v1/embeddings", oai,
        "{\"model\":\"e\",\"input\":\"x\",\"encoding_format\":\"base64\"}");
    j = parse(&r);
    const char *b64 = sget(j, "data.0.embedding");
    cr_assert_not_null(b64);
    cr_assert_eq(strlen(b64), 44); /* 8 floats = 32 bytes */
    cJSON_Delete(j);
    resp_free(&r);

    r = request("/v1/embeddings", oai, "{\"model\":\"e\",\"input\":[1,2]}");
    cr_assert_eq(r.status, 400);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.type"), "invalid_request_error");
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, openai_without_key_is_401_in_openai_shape)
{
    resp r = request("/v1/chat/completions", NULL, OAI_CHAT);
    cr_assert_eq(r.status, 401);
    cJSON *j = parse(&r);
    cr_assert_not_null(sget(j, "error.message"));
    cr_assert_str_eq(sget(j, "error.code"), "invalid_api_key");
    cJSON_Delete(j);
    resp_free(&r);
}

/* Usage counts a prompt's words (runs of bytes other than ASCII
 * whitespace) 16 bytes a step: words and every kind of whitespace at every
 * place in and around the steps, against a count made here byte by byte. */
Test(lmserver, counts_prompt_words_wherever_the_spaces_fall)
{
    static const char *const blanks[] = {" ",       "\\t", "\\n",   "\\r",
                                         "\\u000b", "\\f", "  \\n "};
    static const char blank_bytes[][5] = {" ",  "\t", "\n",   "\r",
                                          "\v", "\f", "  \n "};
    char body[1024], text[512], json[512];
    for (size_t len = 1; len < 40; len += 3) {
        for (size_t b = 0; b < sizeof blanks / sizeof *blanks; b++) {
            /* Words of len bytes (one in three has a high byte) joined by
             * the blank, short ones many to a step (one-byte words and
             * spaces: eight start in 16 bytes); the system prompt counts
             * too ("be terse"). */
            size_t n = 0, t = 0;
            int words = len < 4 ? 40 : 5;
            for (int w = 0; w < words; w++) {
                if (w > 0) {
                    n += (size_t)snprintf(json + n, sizeof json - n, "%s",
                                          blanks[b]);
                    t += (size_t)snprintf(text + t, sizeof text - t, "%s",
                                          blank_bytes[b]);
                }
                for (size_t i = 0; i < len; i++) {
                    const char *c =
                        len > 1 && (i + (size_t)w) % 3 == 0 ? "\xC3\xA9" : "w";
                    n += (size_t)snprintf(json + n, sizeof json - n, "%s", c);
                    t += (size_t)snprintf(text + t, sizeof text - t, "%s", c);
                }
            }
            long want = 2;
            bool in = false;
            for (size_t i = 0; i < t; i++) {
                bool blank = strchr(" \t\n\v\f\r", text[i]) != NULL;
                want += !blank && !in;
                in = !blank;
            }
            snprintf(body, sizeof body,
                     "{\"model\":\"m\",\"messages\":[{\"role\":\"system\","
                     "\"content\":\"be terse\"},{\"role\":\"user\","
                     "\"content\":\"%s\"}]}",
                     json);
            resp r = request("/v1/chat/completions", oai, body);
            cr_assert_eq(r.status, 200, "%s", body);
            cJSON *j = parse(&r);
            cr_assert_eq(nget(j, "usage.prompt_tokens"), want,
                         "len %zu blank %zu: %ld words, not %g", len, b, want,
                         nget(j, "usage.prompt_tokens"));
            cJSON_Delete(j);
            resp_free(&r);
        }
    }
}

/* ---- Anthropic ------------------------------------------------------------ */

Test(lmserver, anthropic_messages_answers_with_message_shape)
{
    resp r = request("/v1/messages", ant, ANT_CHAT);
    cr_assert_eq(r.status, 200);
    cr_assert(has_header(&r, "request-id: req_"));
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "type"), "message");
    cr_assert_str_eq(sget(j, "role"), "assistant");
    cr_assert_str_eq(sget(j, "content.0.type"), "text");
    cr_assert_str_eq(sget(j, "content.0.text"), "answer: what is two plus two");
    cr_assert_str_eq(sget(j, "stop_reason"), "end_turn");
    cr_assert_eq(nget(j, "usage.input_tokens"), 7);
    cr_assert_eq(nget(j, "usage.output_tokens"), 6);
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, anthropic_stream_sends_the_event_sequence)
{
    resp r = request("/v1/messages", ant,
                     "{\"model\":\"c\",\"max_tokens\":9,\"stream\":true,"
                     "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                     "\"text\",\"text\":\"hi there\"}]}]}");
    cr_assert_eq(r.status, 200);
    sse s;
    sse_parse(r.body, &s);
    const char *want_first[] = {"message_start", "content_block_start", "ping"};
    cr_assert_geq(s.n, 7);
    for (int i = 0; i < 3; i++)
        cr_assert_str_eq(s.name[i], want_first[i]);
    cr_assert_str_eq(s.name[s.n - 3], "content_block_stop");
    cr_assert_str_eq(s.name[s.n - 2], "message_delta");
    cr_assert_str_eq(s.name[s.n - 1], "message_stop");
    char text[128] = "";
    for (size_t i = 3; i < s.n - 3; i++) {
        cr_assert_str_eq(s.name[i], "content_block_delta");
        cJSON *c = cJSON_Parse(s.data[i]);
        cr_assert_str_eq(sget(c, "type"), "content_block_delta");
        cr_assert_str_eq(sget(c, "delta.type"), "text_delta");
        strncat(text, sget(c, "delta.text"), sizeof text - strlen(text) - 1);
        cJSON_Delete(c);
    }
    cr_assert_str_eq(text, "answer: hi there");
    cJSON *md = cJSON_Parse(s.data[s.n - 2]);
    cr_assert_str_eq(sget(md, "delta.stop_reason"), "end_turn");
    cr_assert_eq(nget(md, "usage.output_tokens"), 3);
    cJSON_Delete(md);
    cJSON *ms = cJSON_Parse(s.data[0]);
    cr_assert_eq(nget(ms, "message.usage.input_tokens"), 2);
    cJSON_Delete(ms);
    sse_free(&s);
    resp_free(&r);
}

Test(lmserver, anthropic_tool_use_and_streamed_input_json)
{
    const char *body =
        "{\"model\":\"c\",\"max_tokens\":9,%s\"tools\":[{\"name\":\"lookup\","
        "\"input_schema\":{\"type\":\"object\",\"properties\":{\"q\":{\"type\":"
        "\"string\"}},\"required\":[\"q\"]}}],\"messages\":[{\"role\":\"user\","
        "\"content\":\"call lookup q=cats\"}]}";
    char buf[1024];
    snprintf(buf, sizeof buf, body, "");
    resp r = request("/v1/messages", ant, buf);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "stop_reason"), "tool_use");
    cr_assert_str_eq(sget(j, "content.0.type"), "tool_use");
    cr_assert_str_eq(sget(j, "content.0.name"), "lookup");
    cr_assert_str_eq(sget(j, "content.0.input.q"), "cats");
    cJSON_Delete(j);
    resp_free(&r);

    snprintf(buf, sizeof buf, body, "\"stream\":true,");
    r = request("/v1/messages", ant, buf);
    sse s;
    sse_parse(r.body, &s);
    char json[128] = "";
    for (size_t i = 0; i < s.n; i++) {
        cJSON *c = cJSON_Parse(s.data[i]);
        const char *pj = sget(c, "delta.partial_json");
        if (pj)
            strncat(json, pj, sizeof json - strlen(json) - 1);
        cJSON_Delete(c);
    }
    cr_assert_str_eq(json, "{\"q\":\"cats\"}");
    sse_free(&s);
    resp_free(&r);
}

Test(lmserver, anthropic_requires_key_version_and_max_tokens)
{
    const char *no_version[] = {ANT_KEY, NULL};
    const char *no_key[] = {ANT_VER, NULL};
    resp r = request("/v1/messages", no_version, ANT_CHAT);
    cr_assert_eq(r.status, 400);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "type"), "error");
    cr_assert_str_eq(sget(j, "error.type"), "invalid_request_error");
    cr_assert(strstr(sget(j, "error.message"), "anthropic-version"));
    cJSON_Delete(j);
    resp_free(&r);

    r = request("/v1/messages", no_key, ANT_CHAT);
    cr_assert_eq(r.status, 401);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.type"), "authentication_error");
    cJSON_Delete(j);
    resp_free(&r);

    r = request("/v1/messages", ant,
                "{\"model\":\"c\",\"messages\":[{\"role\":\"user\",\"content\":"
                "\"x\"}]}");
    cr_assert_eq(r.status, 400);
    j = parse(&r);
    cr_assert(strstr(sget(j, "error.message"), "max_tokens"));
    cJSON_Delete(j);
    resp_free(&r);
}

/* ---- Gemini --------------------------------------------------------------- */

Test(lmserver, gemini_generate_content_shape)
{
    resp r = request(GEM_GEN, gem, GEM_CHAT);
    cr_assert_eq(r.status, 200);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "candidates.0.content.role"), "model");
    cr_assert_str_eq(sget(j, "candidates.0.content.parts.0.text"),
                     "answer: what is two plus two");
    cr_assert_str_eq(sget(j, "candidates.0.finishReason"), "STOP");
    cr_assert_eq(nget(j, "usageMetadata.promptTokenCount"), 7);
    cr_assert_eq(nget(j, "usageMetadata.candidatesTokenCount"), 6);
    cr_assert_eq(nget(j, "usageMetadata.totalTokenCount"), 13);
    cr_assert_str_eq(sget(j, "modelVersion"), "gemini-2.0-flash");
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, gemini_stream_is_sse_of_responses_ending_with_finish_reason)
{
    resp r = request(GEM_STREAM, gem, GEM_CHAT);
    cr_assert_eq(r.status, 200);
    cr_assert(has_header(&r, "content-type: text/event-stream"));
    sse s;
    sse_parse(r.body, &s);
    cr_assert_geq(s.n, 2);
    char text[256] = "";
    for (size_t i = 0; i < s.n; i++) {
        cJSON *c = cJSON_Parse(s.data[i]);
        cr_assert(c);
        strncat(text, sget(c, "candidates.0.content.parts.0.text"),
                sizeof text - strlen(text) - 1);
        if (i + 1 < s.n)
            cr_assert_null(sget(c, "candidates.0.finishReason"));
        else
            cr_assert_str_eq(sget(c, "candidates.0.finishReason"), "STOP");
        cJSON_Delete(c);
    }
    cr_assert_str_eq(text, "answer: what is two plus two");
    sse_free(&s);
    resp_free(&r);
}

Test(lmserver, gemini_function_call_and_embed_content)
{
    resp r =
        request(GEM_GEN, gem,
                "{\"tools\":[{\"functionDeclarations\":[{\"name\":\"find\","
                "\"parameters\":{\"type\":\"OBJECT\",\"properties\":{\"n\":"
                "{\"type\":\"INTEGER\"}}}}]}],\"contents\":[{\"role\":\"user\","
                "\"parts\":[{\"text\":\"call find n=4\"}]}]}");
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "candidates.0.content.parts.0.functionCall.name"),
                     "find");
    cr_assert_eq(nget(j, "candidates.0.content.parts.0.functionCall.args.n"),
                 4);
    cJSON_Delete(j);
    resp_free(&r);

    r = request("/v1beta/models/text-embedding-004:embedContent", gem,
                "{\"content\":{\"parts\":[{\"text\":\"hello\"}]},"
                "\"outputDimensionality\":5}");
    cr_assert_eq(r.status, 200);
    j = parse(&r);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(
                     cJSON_GetObjectItem(j, "embedding"), "values")),
                 5);
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, gemini_without_key_is_refused_in_gemini_shape)
{
    resp r = request(GEM_GEN, NULL, GEM_CHAT);
    cr_assert_eq(r.status, 403);
    cJSON *j = parse(&r);
    cr_assert_eq(nget(j, "error.code"), 403);
    cr_assert_str_eq(sget(j, "error.status"), "PERMISSION_DENIED");
    cJSON_Delete(j);
    resp_free(&r);
}

/* ---- scripted replies ------------------------------------------------------ */

Test(lmserver, pushed_replies_are_used_in_order_then_the_default)
{
    cr_assert_eq(dx_lmserver_push_reply(srv, "first reply"), DX_OK);
    cr_assert_eq(dx_lmserver_push_reply(srv, "second reply"), DX_OK);
    cr_assert_eq(dx_lmserver_push_reply(NULL, "x"), DX_EINVAL);
    resp r = request("/v1/chat/completions", oai, OAI_CHAT);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "choices.0.message.content"), "first reply");
    cJSON_Delete(j);
    resp_free(&r);
    r = request("/v1/messages", ant, ANT_CHAT);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "content.0.text"), "second reply");
    cJSON_Delete(j);
    resp_free(&r);
    r = request(GEM_GEN, gem, GEM_CHAT);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "candidates.0.content.parts.0.text"),
                     "answer: what is two plus two");
    cJSON_Delete(j);
    resp_free(&r);
}

/* ---- HTTP behaviour -------------------------------------------------------- */

/* Two requests on one curl handle: both answered, the second on the
 * first one's connection. */
static void assert_keep_alive(void)
{
    CURL *easy = curl_easy_init();
    resp a = request_on(easy, "/v1/chat/completions", oai, OAI_CHAT, 0);
    resp b = request_on(easy, "/v1/messages", ant, ANT_CHAT, 0);
    curl_easy_cleanup(easy);
    cr_assert_eq(a.status, 200);
    cr_assert_eq(b.status, 200);
    cr_assert_eq(a.connects, 1);
    cr_assert_eq(b.connects, 0, "the second request opened a new connection");
    resp_free(&a);
    resp_free(&b);
}

Test(lmserver, keep_alive_serves_two_requests_on_one_connection)
{
    assert_keep_alive();
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    cr_assert_eq(st.connections_accepted, 1);
    cr_assert_eq(st.requests, 2);
}

/* Three requests pipelined on a new connection, the first held back by
 * slow_ms: an out-of-order server would answer the second first. */
static void assert_pipelined_in_order(int slow_ms)
{
    int fd = raw_connect();
    char req[320];
    snprintf(req, sizeof req,
             "GET /healthz HTTP/1.1\r\nHost: x\r\nx-dx-fault: slow:%d\r\n\r\n"
             "POST /v1/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
             "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
             slow_ms);
    raw_send(fd, req, strlen(req));
    char *out = raw_read_all(fd, NULL);
    close(fd);
    const char *s1 = strstr(out, "HTTP/1.1 200");
    const char *s2 = strstr(out, "HTTP/1.1 404");
    cr_assert(s1 && s2, "got: %s", out);
    cr_assert_lt(s1, s2);
    cr_assert_eq(count_occurrences(out, "HTTP/1.1 200"), 2);
    cr_assert_lt(s2, strstr(s2, "HTTP/1.1 200"));
    free(out);
}

Test(lmserver, pipelined_requests_are_answered_in_order)
{
    assert_pipelined_in_order(50);
}

Test(lmserver, bad_requests_get_provider_shaped_errors)
{
    resp r = request("/v1/nothing", oai, "{}");
    cr_assert_eq(r.status, 404);
    cJSON *j = parse(&r);
    cr_assert_not_null(sget(j, "error.message"));
    cJSON_Delete(j);
    resp_free(&r);

    r = request("/v1/chat/completions", oai, "{not json");
    cr_assert_eq(r.status, 400);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.type"), "invalid_request_error");
    cJSON_Delete(j);
    resp_free(&r);

    r = request("/v1/messages", ant, "[1,2");
    cr_assert_eq(r.status, 400);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "type"), "error");
    cr_assert_str_eq(sget(j, "error.type"), "invalid_request_error");
    cJSON_Delete(j);
    resp_free(&r);

    r = request(GEM_GEN, gem, "");
    cr_assert_eq(r.status, 400);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.status"), "INVALID_ARGUMENT");
    cr_assert_eq(nget(j, "error.code"), 400);
    cJSON_Delete(j);
    resp_free(&r);

    r = request("/v1/chat/completions", oai, NULL); /* GET */
    cr_assert_eq(r.status, 405);
    resp_free(&r);
    assert_healthy();
}

Test(lmserver, oversized_body_gets_413)
{
    dx_lmserver_stop_free(srv);
    dx_lmserver_opts o = {.max_body_bytes = 1024};
    cr_assert_eq(dx_lmserver_start(&o, &srv), DX_OK);
    port = dx_lmserver_port(srv);
    char *big = malloc(4096);
    memset(big, 'a', 4095);
    big[4095] = '\0';
    resp r = request("/v1/chat/completions", oai, big);
    cr_assert_eq(r.status, 413);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "error.code"), "request_too_large");
    cJSON_Delete(j);
    resp_free(&r);

    /* Chunked bodies have no Content-Length up front: the limit still holds. */
    int fd = raw_connect();
    const char *head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n";
    raw_send(fd, head, strlen(head));
    for (int i = 0; i < 4; i++) {
        raw_send(fd, "3ff\r\n", 5);
        raw_send(fd, big, 1023);
        raw_send(fd, "\r\n", 2);
    }
    char *out = raw_read_all(fd, NULL);
    close(fd);
    cr_assert(strncmp(out, "HTTP/1.1 413", 12) == 0, "got: %.200s", out);
    cr_assert(strstr(out, "request_too_large"), "not anthropic-shaped: %s",
              out);
    free(out);
    free(big);
    assert_healthy();
}

/* ---- faults ---------------------------------------------------------------- */

static resp faulted(const char *path, const char *const *auth, const char *body,
                    const char *spec)
{
    char h[128];
    snprintf(h, sizeof h, "x-dx-fault: %s", spec);
    const char *hdrs[4] = {h, NULL, NULL, NULL};
    for (int i = 0; i < 2 && auth[i]; i++)
        hdrs[i + 1] = auth[i];
    return request_t(path, hdrs, body, 5000);
}

Test(lmserver, rate_limit_is_429_with_retry_after_in_each_shape)
{
    resp r = faulted("/v1/chat/completions", oai, OAI_CHAT, "rate_limit:7");
    cr_assert_eq(r.status, 429);
    cr_assert(has_header(&r, "retry-after: 7\r\n"));
    cr_assert(has_header(&r, "retry-after-ms: 7000\r\n"));
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "error.code"), "rate_limit_exceeded");
    cJSON_Delete(j);
    resp_free(&r);

    r = faulted("/v1/messages", ant, ANT_CHAT, "rate_limit");
    cr_assert_eq(r.status, 429);
    cr_assert(has_header(&r, "retry-after: 1\r\n"));
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.type"), "rate_limit_error");
    cJSON_Delete(j);
    resp_free(&r);

    r = faulted(GEM_GEN, gem, GEM_CHAT, "rate_limit:2");
    cr_assert_eq(r.status, 429);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.status"), "RESOURCE_EXHAUSTED");
    cJSON_Delete(j);
    resp_free(&r);
}

/* max_tokens[:N]: the answer stops after N words (default none), with each
 * format's own reason for hitting the token limit. */
Test(lmserver, max_tokens_cuts_the_answer_with_each_formats_reason)
{
    resp r = faulted("/v1/chat/completions", oai, OAI_CHAT, "max_tokens:3");
    cr_assert_eq(r.status, 200);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "choices.0.message.content"), "answer: what is");
    cr_assert_str_eq(sget(j, "choices.0.finish_reason"), "length");
    cr_assert_eq(nget(j, "usage.completion_tokens"), 3);
    cJSON_Delete(j);
    resp_free(&r);

    r = faulted("/v1/chat/completions", oai, OAI_CHAT, "max_tokens");
    j = parse(&r);
    cr_assert_str_eq(sget(j, "choices.0.message.content"), "");
    cr_assert_str_eq(sget(j, "choices.0.finish_reason"), "length");
    cJSON_Delete(j);
    resp_free(&r);

    r = faulted("/v1/chat/completions", oai,
                "{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":"
                "\"user\",\"content\":\"one two three\"}]}",
                "max_tokens:2");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"finish_reason\":\"length\"") != NULL, "%s",
              r.body);
    cr_assert(strstr(r.body, "three") == NULL, "%s", r.body);
    resp_free(&r);

    r = faulted("/v1/messages", ant, ANT_CHAT, "max_tokens:1");
    j = parse(&r);
    cr_assert_str_eq(sget(j, "content.0.text"), "answer:");
    cr_assert_str_eq(sget(j, "stop_reason"), "max_tokens");
    cJSON_Delete(j);
    resp_free(&r);

    r = faulted(GEM_GEN, gem, GEM_CHAT, "max_tokens:2");
    j = parse(&r);
    cr_assert_str_eq(sget(j, "candidates.0.content.parts.0.text"),
                     "answer: what");
    cr_assert_str_eq(sget(j, "candidates.0.finishReason"), "MAX_TOKENS");
    cJSON_Delete(j);
    resp_free(&r);

    r = faulted(GEM_STREAM, gem, GEM_CHAT, "max_tokens:2");
    cr_assert(strstr(r.body, "\"finishReason\":\"MAX_TOKENS\"") != NULL, "%s",
              r.body);
    resp_free(&r);

    r = faulted("/v1/chat/completions", oai, OAI_CHAT, "max_tokens:x");
    cr_assert_eq(r.status, 400);
    resp_free(&r);
}

Test(lmserver, overloaded_is_529_for_anthropic_and_503_otherwise)
{
    resp r = faulted("/v1/messages", ant, ANT_CHAT, "overloaded");
    cr_assert_eq(r.status, 529);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "error.type"), "overloaded_error");
    cJSON_Delete(j);
    resp_free(&r);

    r = faulted("/v1/chat/completions", oai, OAI_CHAT, "overloaded");
    cr_assert_eq(r.status, 503);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.type"), "server_error");
    cJSON_Delete(j);
    resp_free(&r);

    r = faulted(GEM_STREAM, gem, GEM_CHAT, "overloaded");
    cr_assert_eq(r.status, 503);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.status"), "UNAVAILABLE");
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, server_error_and_auth_faults)
{
    resp r = faulted("/v1/chat/completions", oai, OAI_CHAT, "server_error");
    cr_assert_eq(r.status, 500);
    resp_free(&r);
    r = faulted("/v1/messages", ant, ANT_CHAT, "server_error:502");
    cr_assert_eq(r.status, 502);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "error.type"), "api_error");
    cJSON_Delete(j);
    resp_free(&r);
    r = faulted(GEM_GEN, gem, GEM_CHAT, "auth");
    cr_assert_eq(r.status, 401);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.status"), "UNAUTHENTICATED");
    cJSON_Delete(j);
    resp_free(&r);
    r = faulted("/v1/messages", ant, ANT_CHAT, "auth");
    cr_assert_eq(r.status, 401);
    j = parse(&r);
    cr_assert_str_eq(sget(j, "error.type"), "authentication_error");
    cJSON_Delete(j);
    resp_free(&r);
}

Test(lmserver, slow_delays_the_response_by_at_least_the_given_ms)
{
    resp r = faulted("/v1/chat/completions", oai, OAI_CHAT, "slow:200");
    cr_assert_eq(r.status, 200);
    cr_assert_geq(r.secs, 0.2);
    cJSON *j = parse(&r);
    cr_assert_str_eq(sget(j, "choices.0.message.content"),
                     "answer: what is two plus two");
    cJSON_Delete(j);
    resp_free(&r);
}

/* Answers held back on one thread are released earliest first, whatever
 * order they were asked in, and each no sooner than asked. */
typedef struct held {
    const char *spec;
    double min_secs;
    double secs;
    long status;
    int finished_as;
} held;

static atomic_int finished;

static void *held_client(void *arg)
{
    held *h = arg;
    resp r = faulted("/v1/chat/completions", oai, OAI_CHAT, h->spec);
    h->status = r.status;
    h->secs = r.secs;
    h->finished_as = atomic_fetch_add(&finished, 1);
    resp_free(&r);
    return NULL;
}

Test(lmserver, held_back_answers_go_out_earliest_first)
{
    held hs[] = {{"slow:450", 0.45, 0, 0, 0},
                 {"slow:50", 0.05, 0, 0, 0},
                 {"slow:250", 0.25, 0, 0, 0}};
    pthread_t t[3];
    atomic_store(&finished, 0);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, held_client, &hs[i]), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    int want[] = {2, 0, 1};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(hs[i].status, 200);
        cr_assert_geq(hs[i].secs, hs[i].min_secs, "%s", hs[i].spec);
        cr_assert_eq(hs[i].finished_as, want[i], "%s finished as %d",
                     hs[i].spec, hs[i].finished_as);
    }
}

Test(lmserver, stall_never_answers_and_the_server_notices_the_client_leave)
{
    resp r =
        request_t("/v1/messages",
                  (const char *[]){"x-dx-fault: stall", ANT_KEY, ANT_VER, NULL},
                  ANT_CHAT, 300);
    cr_assert_eq(r.rc, CURLE_OPERATION_TIMEDOUT);
    cr_assert_eq(r.len, 0);
    resp_free(&r);
    dx_lmserver_stats st;
    for (int i = 0; i < 500; i++) {
        dx_lmserver_stats_get(srv, &st);
        if (st.connections_closed_early == 1)
            break;
        usleep(10000);
    }
    cr_assert_eq(st.connections_closed_early, 1);
    cr_assert_eq(st.faults_applied, 1);
    assert_healthy();
}

Test(lmserver, reset_mid_body_breaks_the_transfer)
{
    resp r = faulted("/v1/chat/completions", oai, OAI_CHAT, "reset_mid_body");
    cr_assert(r.rc == CURLE_RECV_ERROR || r.rc == CURLE_PARTIAL_FILE,
              "curl said %d", r.rc);
    cr_assert_null(cJSON_Parse(r.body));
    resp_free(&r);

    r = faulted(
        "/v1/messages", ant,
        "{\"model\":\"c\",\"max_tokens\":9,\"stream\":true,\"messages\":"
        "[{\"role\":\"user\",\"content\":\"one two three four\"}]}",
        "reset_mid_body");
    cr_assert(r.rc == CURLE_RECV_ERROR || r.rc == CURLE_PARTIAL_FILE,
              "curl said %d", r.rc);
    cr_assert_null(strstr(r.body, "message_stop"));
    resp_free(&r);
    assert_healthy();
}

Test(lmserver, truncated_sse_ends_cleanly_without_the_terminator)
{
    resp r = faulted("/v1/chat/completions", oai,
                     "{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":"
                     "\"user\",\"content\":\"one two three four five\"}]}",
                     "truncated_sse");
    cr_assert_eq(r.rc, CURLE_OK);
    cr_assert_eq(r.status, 200);
    cr_assert_null(strstr(r.body, "[DONE]"));
    sse s;
    sse_parse(r.body, &s);
    cr_assert_geq(s.n, 1);
    for (size_t i = 0; i < s.n; i++) {
        cJSON *c = cJSON_Parse(s.data[i]);
        cr_assert(c, "events that were sent are whole");
        cJSON_Delete(c);
    }
    sse_free(&s);
    resp_free(&r);

    r = faulted(
        "/v1/messages", ant,
        "{\"model\":\"c\",\"max_tokens\":9,\"stream\":true,\"messages\":"
        "[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "truncated_sse");
    cr_assert_eq(r.rc, CURLE_OK);
    cr_assert(strstr(r.body, "message_start"));
    cr_assert_null(strstr(r.body, "message_stop"));
    resp_free(&r);
}

Test(lmserver, malformed_json_and_wrong_content_type)
{
    resp r = faulted("/v1/chat/completions", oai, OAI_CHAT, "malformed_json");
    cr_assert_eq(r.status, 200);
    cr_assert(has_header(&r, "content-type: application/json"));
    cr_assert_null(cJSON_Parse(r.body));
    resp_free(&r);

    r = faulted(GEM_STREAM, gem, GEM_CHAT, "malformed_json");
    cr_assert_eq(r.status, 200);
    sse s;
    sse_parse(r.body, &s);
    cr_assert_geq(s.n, 2);
    cr_assert_null(cJSON_Parse(s.data[0]));
    sse_free(&s);
    resp_free(&r);

    r = faulted("/v1/messages", ant, ANT_CHAT, "wrong_content_type");
    cr_assert_eq(r.status, 200);
    cr_assert(has_header(&r, "content-type: text/html"));
    cr_assert(strstr(r.body, "<html>"));
    resp_free(&r);
}

Test(lmserver, injected_faults_apply_to_the_next_count_requests)
{
    cr_assert_eq(dx_lmserver_inject(srv, "server_error:503", 2), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "auth", 1), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "bogus", 1), DX_EINVAL);
    cr_assert_eq(dx_lmserver_inject(srv, "slow", 1), DX_EINVAL);
    cr_assert_eq(dx_lmserver_inject(srv, "server_error:404", 1), DX_EINVAL);
    cr_assert_eq(dx_lmserver_inject(srv, "stall", 0), DX_EINVAL);
    assert_healthy(); /* does not consume one */
    long want[] = {503, 503, 401, 200};
    for (int i = 0; i < 4; i++) {
        resp r = request("/v1/chat/completions", oai, OAI_CHAT);
        cr_assert_eq(r.status, want[i], "request %d: %ld", i, r.status);
        resp_free(&r);
    }
    resp r = request("/v1/chat/completions",
                     (const char *[]){"x-dx-fault: nonsense", OAI_AUTH, NULL},
                     OAI_CHAT);
    cr_assert_eq(r.status, 400);
    resp_free(&r);
}

/* ---- load and abuse -------------------------------------------------------- */

#define CLIENTS 200

static void *client_thread(void *arg)
{
    long *status = arg;
    resp r = request("/v1/chat/completions", oai, OAI_CHAT);
    *status = r.rc == CURLE_OK ? r.status : -(long)r.rc;
    resp_free(&r);
    return NULL;
}

/* CLIENTS threads, one request and connection each, all answered 200. */
static void all_clients_answered(void)
{
    pthread_t t[CLIENTS];
    long status[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, client_thread, &status[i]), 0);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < CLIENTS; i++)
        cr_assert_eq(status[i], 200, "client %d: %ld", i, status[i]);
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    cr_assert_eq(st.requests, CLIENTS);
    cr_assert_eq(st.connections_accepted, CLIENTS);
}

Test(lmserver, two_hundred_concurrent_clients_are_all_answered)
{
    all_clients_answered();
}

static char *raw_exchange(const void *data, size_t n)
{
    int fd = raw_connect();
    raw_send(fd, data, n);
    shutdown(fd, SHUT_WR);
    char *out = raw_read_all(fd, NULL);
    close(fd);
    return out;
}

Test(lmserver, garbage_input_gets_400_and_never_crashes)
{
    unsigned char junk[4096];
    unsigned seed = 12345;
    for (size_t i = 0; i < sizeof junk; i++) {
        seed = seed * 1103515245u + 12345u;
        junk[i] = (unsigned char)(seed >> 16);
    }
    char *out = raw_exchange(junk, sizeof junk);
    cr_assert(strncmp(out, "HTTP/1.1 400", 12) == 0, "got: %.100s", out);
    free(out);

    const char nul[] = "GET /he\0lthz HTTP/1.1\r\n\r\n";
    out = raw_exchange(nul, sizeof nul - 1);
    cr_assert(strncmp(out, "HTTP/1.1 400", 12) == 0, "got: %.100s", out);
    free(out);

    const char *bad_len =
        "POST /v1/messages HTTP/1.1\r\nContent-Length: -5\r\n\r\n";
    out = raw_exchange(bad_len, strlen(bad_len));
    cr_assert(strncmp(out, "HTTP/1.1 400", 12) == 0, "got: %.100s", out);
    free(out);

    const char *bad_chunk = "POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: "
                            "chunked\r\n\r\nzz\r\n";
    out = raw_exchange(bad_chunk, strlen(bad_chunk));
    cr_assert(strncmp(out, "HTTP/1.1 400", 12) == 0, "got: %.100s", out);
    free(out);

    /* A request line and no end of headers, then the client leaves. */
    const char *half = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
    out = raw_exchange(half, strlen(half));
    cr_assert_str_eq(out, "");
    free(out);
    assert_healthy();
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    cr_assert_geq(st.connections_closed_early, 1);
}

Test(lmserver, a_ten_mib_header_gets_431_and_the_server_lives_on)
{
    int fd = raw_connect();
    const char *start = "GET /healthz HTTP/1.1\r\nX-Big: ";
    raw_send(fd, start, strlen(start));
    size_t total = 10u * 1024u * 1024u;
    char *big = malloc(total);
    memset(big, 'b', total);
    raw_send(fd, big, total); /* may stop early once the server closes */
    free(big);
    char *out = raw_read_all(fd, NULL);
    close(fd);
    cr_assert(strncmp(out, "HTTP/1.1 431", 12) == 0, "got: %.100s", out);
    free(out);

    char url[20000] = "GET /";
    memset(url + 5, 'u', sizeof url - 40);
    snprintf(url + sizeof url - 35, 35, " HTTP/1.1\r\n\r\n");
    out = raw_exchange(url, strlen(url));
    cr_assert(strncmp(out, "HTTP/1.1 431", 12) == 0, "got: %.100s", out);
    free(out);
    assert_healthy();
}

Test(lmserver, stop_with_clients_connected_frees_everything)
{
    int idle = raw_connect();
    int half = raw_connect();
    int stalled = raw_connect();
    raw_send(half, "POST /v1/messages HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
             53);
    const char *stall_req = "POST /v1/chat/completions HTTP/1.1\r\nx-dx-fault: "
                            "stall\r\nContent-Length: 2\r\n\r\n{}";
    raw_send(stalled, stall_req, strlen(stall_req));
    cr_assert_eq(dx_lmserver_push_reply(srv, "left in the queue"), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "slow:5", 3), DX_OK);
    dx_lmserver_stats s;
    for (int i = 0; i < 500; i++) {
        dx_lmserver_stats_get(srv, &s);
        if (s.connections_open == 3 && s.requests == 1)
            break;
        usleep(10000);
    }
    cr_assert_eq(s.connections_open, 3);
    dx_lmserver_stop_free(srv);
    srv = NULL;
    /* Every client sees the connection end. */
    char *out = raw_read_all(stalled, NULL);
    cr_assert_str_eq(out, "");
    free(out);
    close(idle);
    close(half);
    close(stalled);
}

Test(lmserver, start_reports_bad_host_and_taken_port)
{
    dx_lmserver *other = NULL;
    dx_lmserver_opts bad = {.host = "not-an-ip"};
    cr_assert_eq(dx_lmserver_start(&bad, &other), DX_EINVAL);
    cr_assert_null(other);
    for (unsigned threads = 1; threads <= 3; threads += 2) {
        dx_lmserver_opts taken = {.port = port, .threads = threads};
        cr_assert_eq(dx_lmserver_start(&taken, &other), DX_ESYS, "threads %u",
                     threads);
        cr_assert_null(other);
    }
    dx_lmserver_stop_free(NULL);
}

/* ---- several server threads ------------------------------------------------ */

static void start_threads(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    dx_lmserver_opts o = {.threads = 3, .max_connections = 300};
    cr_assert_eq(dx_lmserver_start(&o, &srv), DX_OK);
    port = dx_lmserver_port(srv);
    cr_assert_gt(port, 0);
}

TestSuite(lmserver_threads, .init = start_threads, .fini = stop, .timeout = 60);

Test(lmserver_threads, its_descriptor_table_had_room_for_every_connection)
{
    /* Made before the first connection (the suite's process starts with 256
     * slots): growing it later would stall every thread in a burst. */
    cr_assert_geq(fd_table_size(), 300 + 64, "FDSize %u", fd_table_size());
}

Test(lmserver_threads, two_hundred_concurrent_clients_are_all_answered)
{
    all_clients_answered();
}

Test(lmserver_threads, every_thread_accepts_its_share_of_connections)
{
    /* Each thread listens on the port itself (SO_REUSEPORT): none is left
     * idle, and a hand-over between threads is not needed. */
    all_clients_answered();
    dx_lmserver_stats st;
    dx_lmserver_stats_get(srv, &st);
    uint64_t sum = 0;
    for (unsigned i = 0; i < 3; i++) {
        cr_expect_gt(st.accepted_by_thread[i], 0, "thread %u accepted none", i);
        sum += st.accepted_by_thread[i];
    }
    cr_assert_eq(sum, st.connections_accepted);
    cr_assert_eq(st.accepted_by_thread[3], 0);
}

Test(lmserver_threads, a_taken_port_is_refused_not_shared)
{
    /* Sockets sharing a port with SO_REUSEPORT would join a running
     * server instead of failing as taken; a second server must fail. */
    dx_lmserver *other = NULL;
    for (unsigned threads = 1; threads <= 3; threads += 2) {
        dx_lmserver_opts o = {.port = port, .threads = threads};
        cr_assert_eq(dx_lmserver_start(&o, &other), DX_ESYS, "threads %u",
                     threads);
        cr_assert_null(other);
    }
    /* The running one still answers. */
    resp r = request("/v1/chat/completions", oai, OAI_CHAT);
    cr_assert_eq(r.status, 200);
    resp_free(&r);
}

Test(lmserver_threads, every_connection_keeps_its_order_and_keep_alive)
{
    /* Connections land on different threads; each must still answer
     * pipelined requests in order and serve a second request. */
    for (int k = 0; k < 3; k++)
        assert_pipelined_in_order(30);
    assert_keep_alive();
}

Test(lmserver_threads, replies_and_faults_are_shared_by_every_thread)
{
    cr_assert_eq(dx_lmserver_push_reply(srv, "first"), DX_OK);
    cr_assert_eq(dx_lmserver_push_reply(srv, "second"), DX_OK);
    cr_assert_eq(dx_lmserver_inject(srv, "server_error", 1), DX_OK);
    /* One connection each: the queues are the server's, not a thread's. */
    resp f = request("/v1/chat/completions", oai, OAI_CHAT);
    cr_assert_eq(f.status, 500);
    resp_free(&f);
    const char *want[] = {"first", "second"};
    for (int i = 0; i < 2; i++) {
        resp r = request("/v1/chat/completions", oai, OAI_CHAT);
        cr_assert_eq(r.status, 200);
        cJSON *j = parse(&r);
        cr_assert_str_eq(sget(j, "choices.0.message.content"), want[i]);
        cJSON_Delete(j);
        resp_free(&r);
    }
}

Test(lmserver_threads, the_connection_limit_counts_every_thread)
{
    dx_lmserver_stop_free(srv);
    dx_lmserver_opts o = {.threads = 3, .max_connections = 4};
    cr_assert_eq(dx_lmserver_start(&o, &srv), DX_OK);
    port = dx_lmserver_port(srv);
    int fds[7];
    for (int i = 0; i < 7; i++)
        fds[i] = raw_connect();
    dx_lmserver_stats s;
    for (int i = 0; i < 500; i++) {
        dx_lmserver_stats_get(srv, &s);
        if (s.connections_accepted == 7)
            break;
        usleep(10000);
    }
    cr_assert_eq(s.connections_accepted, 7);
    cr_assert_eq(s.connections_open, 4, "%" PRIu64 " open over a limit of 4",
                 s.connections_open);
    for (int i = 0; i < 7; i++)
        close(fds[i]);
}

Test(lmserver_threads, stop_with_clients_on_every_thread_frees_everything)
{
    int fds[6];
    const char *stall_req = "POST /v1/chat/completions HTTP/1.1\r\nx-dx-fault: "
                            "stall\r\nContent-Length: 2\r\n\r\n{}";
    for (int i = 0; i < 6; i++) {
        fds[i] = raw_connect();
        raw_send(fds[i], stall_req, strlen(stall_req));
    }
    dx_lmserver_stats s;
    for (int i = 0; i < 500; i++) {
        dx_lmserver_stats_get(srv, &s);
        if (s.requests == 6)
            break;
        usleep(10000);
    }
    cr_assert_eq(s.requests, 6);
    dx_lmserver_stop_free(srv);
    srv = NULL;
    for (int i = 0; i < 6; i++) {
        char *out = raw_read_all(fds[i], NULL);
        cr_assert_str_eq(out, "", "client %d", i);
        free(out);
        close(fds[i]);
    }
}

Test(lmserver_threads, too_many_threads_are_refused)
{
    dx_lmserver *other = NULL;
    dx_lmserver_opts o = {.threads = DX_LMSERVER_MAX_THREADS + 1};
    cr_assert_eq(dx_lmserver_start(&o, &other), DX_EINVAL);
    cr_assert_null(other);
}
