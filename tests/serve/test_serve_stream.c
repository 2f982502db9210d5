/*
 * test_serve_stream.c — streaming over real sockets, with the programs'
 * LM client ("lmstream") on the local LM server, which sends each answer
 * as several SSE events: /predict with Accept: text/event-stream (or
 * "stream": true) sends several "field" events with pieces of the answer
 * before the final "done" event, the pieces adding up to the final output
 * and carrying no section marker; the chat route streams OpenAI chunks
 * whose contents add up to the answer; a program that crashes after its
 * answer began streaming ends the stream with an "event: error" (no
 * "done"), and the service keeps answering.
 */
#include <cjson/cJSON.h>

#include "serve_fixture.h"

static dx_lmserver *lms;
static char lms_url[128];
static dx_module *crashy;

static void start_stream_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/stream-model", lms_url, "sk-test"}};
    dx_server_opts so = {.name = "lmstream"};
    atomic_store(&fx_rc, dx_lm_client_start(&o, &so, NULL));
}

static void stop_stream_client(void *arg)
{
    (void)arg;
    dx_pid lm = dx_whereis("lmstream");
    atomic_store(&fx_rc,
                 dx_pid_is_none(lm) ? DX_OK : dx_server_stop(lm, NULL, 5000));
}

/* Answers through its Predict (which streams), then crashes. */
static int crash_after_forward(dx_ctx *ctx, const dx_module *self,
                               const dx_example *in, dx_prediction **out)
{
    int rc = dx_forward(ctx, dx_module_child(self, "inner"), in, out);
    if (rc == DX_OK) {
        /* A crash frees nothing this process holds: hold nothing. */
        dx_prediction_free(*out);
        *out = NULL;
        crash_now();
    }
    return rc;
}

static void setup(void)
{
    (void)fx_serve; /* this suite serves its own pair of programs */
    cr_assert_eq(dx_lmserver_start(NULL, &lms), DX_OK);
    snprintf(lms_url, sizeof lms_url, "http://127.0.0.1:%d/v1",
             dx_lmserver_port(lms));
    fx_start_runtime();
    fx_run(start_stream_client);
    crashy = dx_module_new("Crashy", crash_after_forward, NULL, NULL, NULL);
    cr_assert_not_null(crashy);
    cr_assert_eq(dx_module_add(crashy, "inner", qa_program()), DX_OK);
    static dx_serve_program progs[2];
    progs[0] = (dx_serve_program){.name = "qa", .module = fx_qa};
    progs[1] = (dx_serve_program){
        .name = "crashy", .module = crashy, .inputs = fx_marker_inputs};
    dx_serve_opts o = {
        .programs = progs, .nprograms = 2, .lm_name = "lmstream"};
    dx_diag d = {0};
    cr_assert_eq(dx_serve_start(&o, &fx_srv, &d), DX_OK, "%s", d.msg);
}

static void teardown(void)
{
    dx_serve_stop(fx_srv, 5000);
    fx_srv = NULL;
    fx_run(stop_stream_client);
    fx_stop_all();
    dx_module_free(crashy);
    dx_lmserver_stop_free(lms);
}

TestSuite(serve_stream, .init = setup, .fini = teardown, .timeout = 60);

static const char reply[] =
    "[[ ## answer ## ]]\nThe capital of Chile is Santiago, a city in the "
    "central valley\n\n[[ ## completed ## ]]";
static const char answer[] =
    "The capital of Chile is Santiago, a city in the central valley";

/* The SSE events of a body: name and data of each, in order. */
typedef struct event {
    char name[32];
    cJSON *data;
} event;

static size_t parse_events(const char *body, event *ev, size_t max)
{
    size_t n = 0;
    const char *p = body;
    while (*p && n < max) {
        const char *end = strstr(p, "\n\n");
        cr_assert_not_null(end, "an unterminated event: %s", p);
        ev[n].name[0] = '\0';
        if (strncmp(p, "event: ", 7) == 0) {
            const char *nl = strchr(p, '\n');
            snprintf(ev[n].name, sizeof ev[n].name, "%.*s", (int)(nl - p - 7),
                     p + 7);
            p = nl + 1;
        }
        cr_assert(strncmp(p, "data: ", 6) == 0, "%s", p);
        ev[n].data = cJSON_ParseWithLength(p + 6, (size_t)(end - p - 6));
        n++;
        p = end + 2;
    }
    return n;
}

static void free_events(event *ev, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cJSON_Delete(ev[i].data);
}

static void predict_streams(const char *headers, const char *body)
{
    cr_assert_eq(dx_lmserver_push_reply(lms, reply), DX_OK);
    hresp r = http1("POST", "/v1/programs/qa/predict", headers, body);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strstr(r.head, "Transfer-Encoding: chunked") != NULL, "%s",
              r.head);
    event ev[64];
    size_t n = parse_events(r.body, ev, 64);
    char joined[512] = "";
    int pieces = 0;
    size_t done = n;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ev[i].name, "done") == 0) {
            done = i;
            break;
        }
        cr_assert_str_eq(ev[i].name, "field");
        const cJSON *chunk = cJSON_GetObjectItem(ev[i].data, "chunk");
        cr_assert(cJSON_IsString(chunk), "a field event without a chunk");
        cr_assert_str_eq(cJSON_GetObjectItem(ev[i].data, "field")->valuestring,
                         "answer");
        cr_assert_null(strstr(chunk->valuestring, "[["));
        strncat(joined, chunk->valuestring, sizeof joined - strlen(joined) - 1);
        pieces++;
    }
    cr_assert_lt(done, n, "no done event: %s", r.body);
    cr_assert_geq(pieces, 2, "%s", r.body);
    const cJSON *outs = cJSON_GetObjectItem(ev[done].data, "outputs");
    cr_assert_str_eq(cJSON_GetObjectItem(outs, "answer")->valuestring, answer);
    cr_assert_str_eq(joined, answer);
    cr_assert_not_null(cJSON_GetObjectItem(ev[done].data, "usage"));
    cr_assert_not_null(cJSON_GetObjectItem(ev[done].data, "request_id"));
    free_events(ev, n);
    free(r.body);
}

Test(serve_stream, predict_sends_field_pieces_before_the_final_event)
{
    predict_streams("Accept: text/event-stream\r\n",
                    "{\"inputs\":{\"question\":\"Capital of Chile?\"}}");
}

Test(serve_stream, predict_streams_when_the_body_asks)
{
    predict_streams(NULL, "{\"inputs\":{\"question\":\"Capital of Chile?\"},"
                          "\"stream\":true}");
}

Test(serve_stream, the_chat_route_streams_the_content_in_chunks)
{
    cr_assert_eq(dx_lmserver_push_reply(lms, reply), DX_OK);
    hresp r = http1("POST", "/v1/chat/completions", NULL,
                    "{\"model\":\"qa\",\"messages\":[{\"role\":\"user\","
                    "\"content\":\"Capital of Chile?\"}],\"stream\":true,"
                    "\"stream_options\":{\"include_usage\":true}}");
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strstr(r.head, "Transfer-Encoding: chunked") != NULL);
    size_t len = strlen(r.body);
    cr_assert(len > 14 && strcmp(r.body + len - 14, "data: [DONE]\n\n") == 0,
              "%s", r.body);
    r.body[len - 14] = '\0';
    event ev[64];
    size_t n = parse_events(r.body, ev, 64);
    char joined[512] = "";
    int pieces = 0;
    bool role = false, stop = false, usage = false;
    for (size_t i = 0; i < n; i++) {
        cr_assert_str_eq(cJSON_GetObjectItem(ev[i].data, "object")->valuestring,
                         "chat.completion.chunk");
        const cJSON *c0 =
            cJSON_GetArrayItem(cJSON_GetObjectItem(ev[i].data, "choices"), 0);
        if (c0 == NULL) {
            usage = cJSON_GetObjectItem(ev[i].data, "usage") != NULL;
            continue;
        }
        const cJSON *delta = cJSON_GetObjectItem(c0, "delta");
        if (cJSON_GetObjectItem(delta, "role") != NULL) {
            cr_assert_eq(i, 0, "the role comes first");
            role = true;
        }
        const cJSON *content = cJSON_GetObjectItem(delta, "content");
        if (cJSON_IsString(content) && content->valuestring[0]) {
            cr_assert_not(stop, "content after the finish chunk");
            strncat(joined, content->valuestring,
                    sizeof joined - strlen(joined) - 1);
            pieces++;
        }
        const cJSON *fin = cJSON_GetObjectItem(c0, "finish_reason");
        if (cJSON_IsString(fin))
            stop = strcmp(fin->valuestring, "stop") == 0;
    }
    cr_assert(role && stop && usage, "%s", r.body);
    cr_assert_geq(pieces, 2);
    cr_assert_str_eq(joined, answer);
    free_events(ev, n);
    free(r.body);
}

Test(serve_stream, a_crash_mid_stream_ends_it_with_an_error_event)
{
    cr_assert_eq(dx_lmserver_push_reply(lms, reply), DX_OK);
    hresp r = http1("POST", "/v1/programs/crashy/predict",
                    "Accept: text/event-stream\r\n",
                    "{\"inputs\":{\"question\":\"Capital of Chile?\"}}");
    cr_assert_eq(r.status, 200, "the stream had begun: %s", r.body);
    event ev[64];
    size_t n = parse_events(r.body, ev, 64);
    cr_assert_geq(n, 2, "%s", r.body);
    cr_assert_str_eq(ev[0].name, "field");
    cr_assert_str_eq(ev[n - 1].name, "error", "%s", r.body);
    const cJSON *e = cJSON_GetObjectItem(ev[n - 1].data, "error");
    cr_assert_str_eq(cJSON_GetObjectItem(e, "code")->valuestring, "crashed");
    for (size_t i = 0; i < n; i++)
        cr_assert_str_neq(ev[i].name, "done");
    free_events(ev, n);
    free(r.body);

    /* The service goes on: the next request (another question, so not a
     * cache hit) streams in pieces again. */
    predict_streams("Accept: text/event-stream\r\n",
                    "{\"inputs\":{\"question\":\"Chile's capital?\"}}");
}
