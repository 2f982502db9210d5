/*
 * test_serve.c — the HTTP service end to end over real sockets: the
 * routes, every error path with its status and body, crash isolation,
 * backpressure, deadlines, graceful stop, reload, and the OpenAI-style
 * chat route called with the exact request curl makes for the OpenAI SDK.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "serve_fixture.h"

static void teardown(void)
{
    fx_stop_all();
}

static void setup_default(void)
{
    fx_start_runtime();
    fx_serve((dx_serve_opts){0});
}

TestSuite(serve, .timeout = 60);

Test(serve, predict_answers_outputs_usage_and_a_request_id,
     .init = setup_default, .fini = teardown)
{
    hresp r = http1("POST", "/v1/programs/qa/predict", NULL,
                    "{\"inputs\":{\"question\":\"What is the capital of "
                    "France?\"}}");
    cr_assert_eq(r.status, 200, "%s", r.body);
    cJSON *j = cJSON_Parse(r.body);
    cr_assert_not_null(j);
    const cJSON *out = cJSON_GetObjectItem(j, "outputs");
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(out, "answer")), "%s", r.body);
    const cJSON *u = cJSON_GetObjectItem(j, "usage");
    cr_assert_eq(cJSON_GetObjectItem(u, "lm_calls")->valueint, 1);
    cr_assert_gt(cJSON_GetObjectItem(u, "total_tokens")->valueint, 0);
    const cJSON *rid = cJSON_GetObjectItem(j, "request_id");
    cr_assert(cJSON_IsString(rid));
    cr_assert(strstr(r.head, rid->valuestring) != NULL,
              "X-Request-Id header matches the body");
    cr_assert(strcasestr(r.head, "Connection: keep-alive") != NULL);
    cJSON_Delete(j);
    free(r.body);
}

Test(serve, keep_alive_connection_answers_pipelined_requests_in_order,
     .init = setup_default, .fini = teardown)
{
    hconn *c = hc_open(dx_serve_port(fx_srv));
    /* Three requests sent before reading anything; the slow one first. */
    hc_send(c, "POST", "/v1/programs/marker/predict", NULL,
            "{\"inputs\":{\"question\":\"sleep:150\"}}");
    hc_send(c, "GET", "/healthz", NULL, NULL);
    hc_send(c, "GET", "/v1/programs", NULL, NULL);
    hresp r;
    cr_assert(hc_read(c, &r));
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "slept") != NULL, "%s", r.body);
    free(r.body);
    cr_assert(hc_read(c, &r));
    cr_assert_str_eq(r.body, "{\"status\":\"ok\"}");
    free(r.body);
    cr_assert(hc_read(c, &r));
    cr_assert(strstr(r.body, "\"name\":\"qa\"") != NULL, "%s", r.body);
    cr_assert(strstr(r.body, "\"inputs\":[\"question\"]") != NULL, "%s",
              r.body);
    free(r.body);
    hc_close(c);
}

/* Status and error code of one request, its body checked for needle. */
static void expect_error(const char *method, const char *path,
                         const char *headers, const char *body, int status,
                         const char *needle)
{
    hresp r = http1(method, path, headers, body);
    cr_assert_eq(r.status, status, "%s %s: %d %s", method, path, r.status,
                 r.body);
    cJSON *j = cJSON_Parse(r.body);
    cr_assert_not_null(j, "error bodies are JSON: %s", r.body);
    const cJSON *e = cJSON_GetObjectItem(j, "error");
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(e, "message")), "%s", r.body);
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(e, "request_id")), "%s",
              r.body);
    cr_assert(strstr(r.body, needle) != NULL, "%s lacks %s", r.body, needle);
    cJSON_Delete(j);
    free(r.body);
}

Test(serve, error_paths_answer_json_with_clear_messages, .init = setup_default,
     .fini = teardown)
{
    expect_error("POST", "/v1/programs/qa/predict", NULL,
                 "{\"inputs\":\n  {\"question\": }}", 400, "line 2, column 16");
    expect_error("POST", "/v1/programs/nope/predict", NULL, "{\"inputs\":{}}",
                 404, "no program named \\\"nope\\\"");
    expect_error("POST", "/v1/programs/qa/predict", NULL,
                 "{\"inputs\":{\"q\":\"x\"}}", 422,
                 "missing input field \\\"question\\\"");
    expect_error("POST", "/v1/programs/qa/predict", NULL, "{\"question\":1}",
                 400, "bad_inputs");
    expect_error("POST", "/v1/programs/qa/predict", NULL, "", 400, "empty");
    expect_error("GET", "/v1/programs/qa/predict", NULL, NULL, 405, "POST");
    expect_error("GET", "/v2/other", NULL, NULL, 404, "no route");
    char deep[300];
    memset(deep, '[', 200);
    deep[200] = '\0';
    expect_error("POST", "/v1/programs/qa/predict", NULL, deep, 400,
                 "deeper than 64");
}

static void setup_small(void)
{
    fx_start_runtime();
    fx_serve((dx_serve_opts){.max_body_bytes = 1024, .token = "s3cret-token"});
}

Test(serve, oversize_body_is_413_and_auth_needs_the_exact_token,
     .init = setup_small, .fini = teardown)
{
    const char *auth = "Authorization: Bearer s3cret-token\r\n";
    char big[4096];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    expect_error("POST", "/v1/programs/qa/predict", auth, big, 413,
                 "larger than 1024 bytes");
    expect_error("GET", "/v1/programs", NULL, NULL, 401, "bearer token");
    expect_error("GET", "/v1/programs",
                 "Authorization: Bearer s3cret-tokex\r\n", NULL, 401,
                 "unauthorized");
    expect_error("GET", "/v1/programs",
                 "Authorization: Bearer s3cret-token-and-more\r\n", NULL, 401,
                 "unauthorized");
    hresp r = http1("GET", "/v1/programs", auth, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "s3cret") == NULL);
    free(r.body);
    /* healthz stays open for probes */
    r = http1("GET", "/healthz", NULL, NULL);
    cr_assert_eq(r.status, 200);
    free(r.body);
    r = http1("POST", "/v1/programs/qa/predict",
              "Authorization: Bearer nope\r\n",
              "{\"inputs\":{\"question\":\"x\"}}");
    cr_assert_eq(r.status, 401);
    cr_assert(strstr(r.head, "WWW-Authenticate: Bearer") != NULL);
    cr_assert(strstr(r.head, "s3cret") == NULL &&
              strstr(r.body, "s3cret") == NULL);
    free(r.body);
    /* the dashboard takes the token in the query too (browsers cannot
     * set headers on a page load or an EventSource) */
    r = http1("GET", "/dashboard", NULL, NULL);
    cr_assert_eq(r.status, 401);
    free(r.body);
    r = http1("GET", "/dashboard?token=s3cret-tokex", NULL, NULL);
    cr_assert_eq(r.status, 401);
    free(r.body);
    r = http1("GET", "/dashboard?token=s3cret%2Dtoken", NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.head, "Content-Type: text/html") != NULL);
    cr_assert(strstr(r.body, "dspex observer") != NULL);
    cr_assert(strstr(r.body, "s3cret") == NULL);
    free(r.body);
    r = http1("GET", "/v1/programs?token=s3cret-token", NULL, NULL);
    cr_assert_eq(r.status, 401, "other routes want the header");
    free(r.body);
}

Test(serve, a_cut_percent_escape_in_the_dashboard_token_is_taken_literally,
     .init = setup_small, .fini = teardown)
{
    /* "%5" ending the URL: the decoder took one hex digit, skipped the
     * URL's terminating NUL and read on past it (a heap-buffer-overflow
     * under ASan; fuzz/corpus/serve_http/regress-token-escape). */
    hresp r = http1("GET", "/dashboard?token=%5", NULL, NULL);
    cr_assert_eq(r.status, 401);
    free(r.body);
    r = http1("GET", "/dashboard?token=s3cret-token%", NULL, NULL);
    cr_assert_eq(r.status, 401, "a lone %% is part of the token");
    free(r.body);
    r = http1("GET", "/dashboard?token=s3cret-token%2&x=1", NULL, NULL);
    cr_assert_eq(r.status, 401, "%%2 is no escape and keeps the &");
    free(r.body);
    r = http1("GET", "/dashboard?token=%73%33cret%2dtoken&x=%4", NULL, NULL);
    cr_assert_eq(r.status, 200, "escapes in either case decode");
    free(r.body);
}

Test(serve, batch_keeps_order_and_reports_item_errors, .init = setup_default,
     .fini = teardown)
{
    hresp r = http1("POST", "/v1/programs/marker/batch", NULL,
                    "{\"inputs\":[{\"question\":\"sleep:1\"},{\"nope\":1},"
                    "{\"question\":\"crash\"},{\"question\":\"sleep:2\"}]}");
    cr_assert_eq(r.status, 200, "%s", r.body);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *res = cJSON_GetObjectItem(j, "results");
    cr_assert_eq(cJSON_GetArraySize(res), 4);
    cr_assert_str_eq(
        cJSON_GetObjectItem(
            cJSON_GetObjectItem(cJSON_GetArrayItem(res, 0), "outputs"),
            "answer")
            ->valuestring,
        "slept");
    const cJSON *e1 = cJSON_GetObjectItem(cJSON_GetArrayItem(res, 1), "error");
    cr_assert_eq(cJSON_GetObjectItem(e1, "status")->valueint, 422);
    const cJSON *e2 = cJSON_GetObjectItem(cJSON_GetArrayItem(res, 2), "error");
    cr_assert_eq(cJSON_GetObjectItem(e2, "status")->valueint, 500);
    cr_assert_str_eq(cJSON_GetObjectItem(e2, "code")->valuestring, "crashed");
    cr_assert_not_null(
        cJSON_GetObjectItem(cJSON_GetArrayItem(res, 3), "outputs"));
    cr_assert_eq(cJSON_GetObjectItem(j, "failed")->valueint, 2);
    cJSON_Delete(j);
    free(r.body);
}

Test(serve, one_crashing_request_among_1000_costs_only_itself,
     .init = setup_default, .fini = teardown, .timeout = 120)
{
    hconn *c = hc_open(dx_serve_port(fx_srv));
    int ok = 0, crashed = 0;
    char crash_rid[64] = "";
    for (int i = 0; i < 1000; i++) {
        /* Ten distinct questions: most answers come from the LM cache. */
        char body[128];
        if (i == 500)
            snprintf(body, sizeof body,
                     "{\"inputs\":{\"question\":\"crash\"}}");
        else
            snprintf(body, sizeof body,
                     "{\"inputs\":{\"question\":\"What is %d plus 1?\"}}",
                     i % 10);
        hc_send(c, "POST", "/v1/programs/marker/predict", NULL, body);
        hresp r;
        cr_assert(hc_read(c, &r), "request %d: connection lost", i);
        if (r.status == 200)
            ok++;
        else if (r.status == 500 && strstr(r.body, "\"crashed\"")) {
            crashed++;
            cJSON *j = cJSON_Parse(r.body);
            snprintf(crash_rid, sizeof crash_rid, "%s",
                     cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"),
                                         "request_id")
                         ->valuestring);
            cJSON_Delete(j);
        }
        free(r.body);
    }
    hc_close(c);
    cr_assert_eq(ok, 999);
    cr_assert_eq(crashed, 1);
    cr_assert_neq(crash_rid[0], '\0');
    dx_serve_stats st;
    dx_serve_stats_get(fx_srv, &st);
    cr_assert_eq(st.crashed, 1);
    hresp m = http1("GET", "/metrics", NULL, NULL);
    cr_assert_eq(m.status, 200);
    cr_assert(strstr(m.body, "dspex_http_requests_total{route=\"predict\","
                             "status=\"200\"} 999") != NULL,
              "%s", m.body);
    cr_assert(strstr(m.body, "status=\"500\"} 1") != NULL);
    cr_assert(strstr(m.body, "dspex_request_crashes_total 1") != NULL);
    cr_assert(strstr(m.body, "dspex_lm_cache_hits_total{client=\"lm\"}") !=
              NULL);
    cr_assert(strstr(m.body, "dspex_processes ") != NULL);
    cr_assert(strstr(m.body, "dspex_http_request_duration_seconds_bucket{"
                             "route=\"predict\",le=\"+Inf\"} 1000") != NULL);
    free(m.body);
}

static void setup_tight(void)
{
    fx_start_runtime();
    fx_serve((dx_serve_opts){
        .max_concurrency = 2, .queue_bound = 2, .retry_after_s = 3});
}

Test(serve, overload_answers_503_with_retry_after_then_recovers,
     .init = setup_tight, .fini = teardown)
{
    enum { N = 8 };
    hconn *cs[N];
    for (int i = 0; i < N; i++) {
        cs[i] = hc_open(dx_serve_port(fx_srv));
        hc_send(cs[i], "POST", "/v1/programs/marker/predict", NULL,
                "{\"inputs\":{\"question\":\"sleep:300\"}}");
    }
    int ok = 0, busy = 0;
    for (int i = 0; i < N; i++) {
        hresp r;
        cr_assert(hc_read(cs[i], &r));
        if (r.status == 200)
            ok++;
        if (r.status == 503) {
            busy++;
            cr_assert(strstr(r.head, "Retry-After: 3\r\n") != NULL, "%s",
                      r.head);
            cr_assert(strstr(r.body, "overloaded") != NULL);
        }
        free(r.body);
        hc_close(cs[i]);
    }
    /* 2 run, 2 wait, the other 4 are refused. */
    cr_assert_eq(ok, 4);
    cr_assert_eq(busy, 4);
    hresp r = http1("POST", "/v1/programs/marker/predict", NULL,
                    "{\"inputs\":{\"question\":\"sleep:1\"}}");
    cr_assert_eq(r.status, 200, "recovers once the load is gone");
    free(r.body);
}

static void setup_deadline(void)
{
    fx_start_runtime();
    fx_serve((dx_serve_opts){.deadline_ms = 200});
}

Test(serve, a_request_past_its_deadline_is_504, .init = setup_deadline,
     .fini = teardown)
{
    expect_error("POST", "/v1/programs/marker/predict", NULL,
                 "{\"inputs\":{\"question\":\"sleep:3000\"}}", 504, "deadline");
    hresp r = http1("POST", "/v1/programs/marker/predict", NULL,
                    "{\"inputs\":{\"question\":\"sleep:1\"}}");
    cr_assert_eq(r.status, 200);
    free(r.body);
}

static _Atomic int stop_rc = 1;

static void *stopper(void *arg)
{
    (void)arg;
    atomic_store(&stop_rc, dx_serve_stop(fx_srv, 10000));
    return NULL;
}

Test(serve, graceful_stop_answers_every_accepted_request, .init = setup_default,
     .fini = teardown)
{
    enum { N = 6 };
    hconn *cs[N];
    for (int i = 0; i < N; i++) {
        cs[i] = hc_open(dx_serve_port(fx_srv));
        hc_send(cs[i], "POST", "/v1/programs/marker/predict", NULL,
                "{\"inputs\":{\"question\":\"sleep:300\"}}");
    }
    dx_serve_stats st;
    for (int i = 0; i < 400; i++) {
        dx_serve_stats_get(fx_srv, &st);
        if (st.in_flight == N)
            break;
        host_sleep_ms(5);
    }
    cr_assert_eq(st.in_flight, N);
    int port = dx_serve_port(fx_srv);
    pthread_t t;
    pthread_create(&t, NULL, stopper, NULL);
    for (int i = 0; i < N; i++) {
        hresp r;
        cr_assert(hc_read(cs[i], &r), "request %d lost in the drain", i);
        cr_assert_eq(r.status, 200, "%s", r.body);
        free(r.body);
        hc_close(cs[i]);
    }
    pthread_join(t, NULL);
    cr_assert_eq(atomic_load(&stop_rc), DX_OK);
    fx_srv = NULL;
    /* Nothing listens any more. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_neq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    close(fd);
}

static char prog_path[256];

static void write_prog(const char *sig)
{
    FILE *f = fopen(prog_path, "w");
    cr_assert_not_null(f);
    fprintf(f,
            "{\"program\":{\"modules\":[{\"name\":\"answer\",\"module\":"
            "\"predict\",\"signature\":\"%s\"}]}}",
            sig);
    fclose(f);
}

static void setup_file(void)
{
    snprintf(prog_path, sizeof prog_path, "/tmp/dx_serve_test_%d.json",
             (int)getpid());
    write_prog("question -> answer");
    fx_start_runtime();
    dx_serve_program p = {.name = "file", .path = prog_path};
    dx_serve_opts o = {.programs = &p, .nprograms = 1, .reload_check_ms = -1};
    dx_diag d = {0};
    cr_assert_eq(dx_serve_start(&o, &fx_srv, &d), DX_OK, "%s", d.msg);
}

static void teardown_file(void)
{
    fx_stop_all();
    unlink(prog_path);
}

Test(serve, reload_swaps_the_program_and_keeps_a_broken_file_out,
     .init = setup_file, .fini = teardown_file)
{
    hresp r = http1("POST", "/v1/programs/file/predict", NULL,
                    "{\"inputs\":{\"question\":\"What is 2 plus 2?\"}}");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"answer\":") != NULL, "%s", r.body);
    free(r.body);
    write_prog("question -> reply");
    dx_diag d = {0};
    cr_assert_eq(dx_serve_reload(fx_srv, &d), DX_OK, "%s", d.msg);
    r = http1("POST", "/v1/programs/file/predict", NULL,
              "{\"inputs\":{\"question\":\"What is 2 plus 2?\"}}");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"reply\":") != NULL, "%s", r.body);
    free(r.body);
    FILE *f = fopen(prog_path, "w");
    fputs("{\"program\": [", f);
    fclose(f);
    cr_assert_neq(dx_serve_reload(fx_srv, &d), DX_OK);
    cr_assert(strstr(d.msg, prog_path) != NULL, "%s", d.msg);
    r = http1("GET", "/v1/programs", NULL, NULL);
    cr_assert(strstr(r.body, "\"outputs\":[\"reply\"]") != NULL, "%s", r.body);
    free(r.body);
    dx_serve_stats st;
    dx_serve_stats_get(fx_srv, &st);
    cr_assert_eq(st.reloads, 1);
}

/* The request the OpenAI SDK (openai-node 4.x) sends, headers and body, as
 * curl replays it. */
static char *run_curl(const char *body)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "curl -sS --max-time 20 -X POST "
             "http://127.0.0.1:%d/v1/chat/completions "
             "-H 'Content-Type: application/json' "
             "-H 'Accept: application/json' "
             "-H 'Authorization: Bearer sk-anything' "
             "-H 'User-Agent: OpenAI/JS 4.77.0' "
             "-H 'X-Stainless-Lang: js' "
             "-H 'X-Stainless-Package-Version: 4.77.0' "
             "-H 'X-Stainless-OS: Linux' -H 'X-Stainless-Arch: x64' "
             "-H 'X-Stainless-Runtime: node' "
             "-H 'X-Stainless-Runtime-Version: v20.11.0' "
             "-H 'X-Stainless-Retry-Count: 0' "
             "--data-binary '%s'",
             dx_serve_port(fx_srv), body);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    static char out[65536];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    cr_assert_eq(pclose(p), 0, "curl failed: %s", out);
    return out;
}

Test(serve, chat_completions_answers_the_openai_sdk_request,
     .init = setup_default, .fini = teardown)
{
    char *out = run_curl(
        "{\"messages\":[{\"role\":\"system\",\"content\":\"You are "
        "helpful.\"},{\"role\":\"user\",\"content\":\"What is the capital "
        "of Peru?\"}],\"model\":\"qa\",\"temperature\":0}");
    cJSON *j = cJSON_Parse(out);
    cr_assert_not_null(j, "%s", out);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring,
                     "chat.completion");
    cr_assert_str_eq(cJSON_GetObjectItem(j, "model")->valuestring, "qa");
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    const cJSON *msg = cJSON_GetObjectItem(c0, "message");
    cr_assert_str_eq(cJSON_GetObjectItem(msg, "role")->valuestring,
                     "assistant");
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(msg, "content")));
    cr_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring,
                     "stop");
    const cJSON *u = cJSON_GetObjectItem(j, "usage");
    cr_assert_gt(cJSON_GetObjectItem(u, "total_tokens")->valueint, 0);
    cJSON_Delete(j);

    /* A JSON object in the user message fills inputs by name; stream. */
    out = run_curl("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                   "\"text\",\"text\":\"{\\\"question\\\": \\\"sleep:1\\\"}\"}"
                   "]}],\"model\":\"marker\",\"stream\":true,"
                   "\"stream_options\":{\"include_usage\":true}}");
    cr_assert(strncmp(out, "data: {", 7) == 0, "%s", out);
    cr_assert(strstr(out, "\"object\":\"chat.completion.chunk\"") != NULL);
    cr_assert(strstr(out, "\"delta\":{\"content\":\"slept\"}") != NULL, "%s",
              out);
    cr_assert(strstr(out, "\"finish_reason\":\"stop\"") != NULL);
    cr_assert(strstr(out, "\"choices\":[],\"usage\":") != NULL, "%s", out);
    size_t n = strlen(out);
    cr_assert(n > 16 && strcmp(out + n - 14, "data: [DONE]\n\n") == 0, "%s",
              out);

    out = run_curl("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                   "\"model\":\"gpt-4o\"}");
    cr_assert(strstr(out, "\"code\":\"model_not_found\"") != NULL, "%s", out);
    cr_assert(strstr(out, "\"type\":\"invalid_request_error\"") != NULL);

    /* n other than 1 is refused rather than answered with one choice */
    out = run_curl("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                   "\"model\":\"qa\",\"n\":2}");
    cr_assert(strstr(out, "\"n\\\" must be 1") != NULL, "%s", out);
    out = run_curl("{\"messages\":[{\"role\":\"user\",\"content\":\"What is "
                   "the capital of Peru?\"}],\"model\":\"qa\",\"n\":1}");
    cr_assert(strstr(out, "\"object\":\"chat.completion\"") != NULL, "%s", out);
}

/* OpenAI clients list /v1/models to learn what "model" may name; the
 * served programs are the models, and an unknown one is the same error the
 * chat route gives, in OpenAI's shape. */
Test(serve, the_programs_are_listed_as_openai_models, .init = setup_default,
     .fini = teardown)
{
    hresp r = http1("GET", "/v1/models", NULL, NULL);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cJSON *j = cJSON_Parse(r.body);
    cr_assert_not_null(j, "%s", r.body);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "object")->valuestring, "list");
    const cJSON *data = cJSON_GetObjectItem(j, "data");
    cr_assert_eq(cJSON_GetArraySize(data), 2, "%s", r.body);
    const char *want[] = {"qa", "marker"};
    for (int i = 0; i < 2; i++) {
        const cJSON *m = cJSON_GetArrayItem(data, i);
        cr_assert_str_eq(cJSON_GetObjectItem(m, "id")->valuestring, want[i]);
        cr_assert_str_eq(cJSON_GetObjectItem(m, "object")->valuestring,
                         "model");
        cr_assert_str_eq(cJSON_GetObjectItem(m, "owned_by")->valuestring,
                         "dspex");
        double created = cJSON_GetObjectItem(m, "created")->valuedouble;
        cr_assert(created > 1.7e9 && created <= (double)time(NULL) + 1, "%f",
                  created);
    }
    cJSON_Delete(j);
    free(r.body);

    r = http1("GET", "/v1/models/marker", NULL, NULL);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(strstr(r.body, "\"id\":\"marker\"") != NULL, "%s", r.body);
    cr_assert(strstr(r.body, "\"object\":\"model\"") != NULL, "%s", r.body);
    free(r.body);

    r = http1("GET", "/v1/models/gpt-4o", NULL, NULL);
    cr_assert_eq(r.status, 404, "%s", r.body);
    cr_assert(strstr(r.body, "\"code\":\"model_not_found\"") != NULL, "%s",
              r.body);
    cr_assert(strstr(r.body, "\"type\":\"invalid_request_error\"") != NULL,
              "%s", r.body);
    cr_assert(strstr(r.body, "gpt-4o") != NULL, "%s", r.body);
    free(r.body);
    expect_error("GET", "/v1/models/", NULL, NULL, 404, "model_not_found");
    expect_error("POST", "/v1/models", NULL, "{}", 405, "method_not_allowed");
    expect_error("GET", "/v1/modelsx", NULL, NULL, 404, "not_found");
}

Test(serve, predict_streams_output_fields_as_server_sent_events,
     .init = setup_default, .fini = teardown)
{
    hresp r = http1("POST", "/v1/programs/qa/predict",
                    "Accept: text/event-stream\r\n",
                    "{\"inputs\":{\"question\":\"What is the capital of "
                    "Chile?\"}}");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.head, "Content-Type: text/event-stream") != NULL);
    cr_assert(
        strncmp(r.body, "event: field\ndata: {\"field\":\"answer\"", 36) == 0,
        "%s", r.body);
    cr_assert(strstr(r.body, "event: done\ndata: {\"request_id\"") != NULL,
              "%s", r.body);
    free(r.body);
}

Test(serve, bad_options_are_refused_with_a_reason)
{
    cr_assert_eq(dx_runtime_start(&(dx_runtime_opts){.schedulers = 1}), DX_OK);
    dx_serve *s = NULL;
    dx_diag d = {0};
    dx_serve_program p = {.name = "bad name", .path = "/nonexistent.json"};
    dx_serve_opts o = {.programs = &p, .nprograms = 1};
    cr_assert_eq(dx_serve_start(&o, &s, &d), DX_EINVAL);
    cr_assert(strstr(d.msg, "bad name") != NULL, "%s", d.msg);
    p.name = "ok";
    cr_assert_neq(dx_serve_start(&o, &s, &d), DX_OK);
    cr_assert(strstr(d.msg, "/nonexistent.json") != NULL, "%s", d.msg);
    cr_assert_null(s);
    cr_assert_eq(dx_runtime_stop(), DX_OK);
}

static void setup_file_watch(void)
{
    snprintf(prog_path, sizeof prog_path, "/tmp/dx_serve_watch_%d.json",
             (int)getpid());
    write_prog("question -> answer");
    fx_start_runtime();
    dx_serve_program p = {.name = "file", .path = prog_path};
    dx_serve_opts o = {.programs = &p, .nprograms = 1, .reload_check_ms = 20};
    dx_diag d = {0};
    cr_assert_eq(dx_serve_start(&o, &fx_srv, &d), DX_OK, "%s", d.msg);
}

Test(serve, a_changed_program_file_is_picked_up_without_a_signal,
     .init = setup_file_watch, .fini = teardown_file)
{
    write_prog("question -> verdict");
    /* Make sure the mtime differs even on a coarse clock. */
    struct timespec ts[2] = {{0, UTIME_NOW}, {time(NULL) + 5, 0}};
    utimensat(AT_FDCWD, prog_path, ts, 0);
    dx_serve_stats st = {0};
    for (int i = 0; i < 400 && st.reloads == 0; i++) {
        host_sleep_ms(5);
        dx_serve_stats_get(fx_srv, &st);
    }
    cr_assert_eq(st.reloads, 1);
    hresp r = http1("POST", "/v1/programs/file/predict", NULL,
                    "{\"inputs\":{\"question\":\"Is it?\"}}");
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"verdict\":") != NULL, "%s", r.body);
    free(r.body);
}

/* `dspex serve` as a command: listens, answers, and on SIGTERM finishes
 * the request in flight and exits 0. */
Test(serve, the_serve_command_drains_and_exits_0_on_sigterm)
{
    const char *bin = getenv("DX_DSPEX_BIN");
    cr_assert_not_null(bin, "DX_DSPEX_BIN (set by meson)");
    snprintf(prog_path, sizeof prog_path, "/tmp/dx_serve_cmd_%d.json",
             (int)getpid());
    write_prog("question -> answer");
    int out[2];
    cr_assert_eq(pipe(out), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        setenv("DSPEX_HOME", "/tmp", 1);
        execl(bin, bin, "serve", prog_path, "--port", "0", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[128] = "";
    FILE *f = fdopen(out[0], "r");
    cr_assert_not_null(fgets(line, sizeof line, f), "no output from serve");
    int port = 0;
    cr_assert_eq(sscanf(line, "listening on 127.0.0.1:%d", &port), 1, "%s",
                 line);
    hconn *c = hc_open(port);
    hc_send(c, "POST",
            "/v1/programs/dx_serve_cmd_" /* name from the file */
            "x/predict",
            NULL, "{}");
    hresp r;
    cr_assert(hc_read(c, &r));
    cr_assert_eq(r.status, 404);
    free(r.body);
    char path[128];
    snprintf(path, sizeof path, "/v1/programs/dx_serve_cmd_%d/predict",
             (int)getpid());
    hc_send(c, "POST", path, NULL, "{\"inputs\":{\"question\":\"Hi?\"}}");
    cr_assert(hc_read(c, &r));
    cr_assert_eq(r.status, 200, "%s", r.body);
    free(r.body);
    hc_close(c);
    kill(pid, SIGTERM);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d",
              status);
    fclose(f);
    unlink(prog_path);
}

Test(serve, stop_past_its_drain_time_reports_it_and_leaves_nothing_behind,
     .init = setup_default, .fini = teardown)
{
    hconn *c = hc_open(dx_serve_port(fx_srv));
    hc_send(c, "POST", "/v1/programs/marker/predict", NULL,
            "{\"inputs\":{\"question\":\"sleep:400\"}}");
    dx_serve_stats st;
    for (int i = 0; i < 400; i++) {
        dx_serve_stats_get(fx_srv, &st);
        if (st.in_flight == 1)
            break;
        host_sleep_ms(5);
    }
    cr_assert_eq(st.in_flight, 1);
    cr_assert_eq(dx_serve_stop(fx_srv, 20), DX_ETIMEDOUT);
    fx_srv = NULL;
    hresp r;
    cr_assert_not(hc_read(c, &r), "the connection closed unanswered");
    hc_close(c);
}

Test(serve, a_client_that_expects_100_continue_gets_it, .init = setup_default,
     .fini = teardown)
{
    /* Clients that send "Expect: 100-continue" (curl with large bodies,
     * some HTTP libraries) wait for the interim answer before sending the
     * body. */
    char body[2100];
    int n = snprintf(body, sizeof body, "{\"inputs\":{\"question\":\"");
    memset(body + n, 'x', 2000);
    snprintf(body + n + 2000, sizeof body - (size_t)n - 2000, "\"}}");
    char path[] = "/tmp/dx_serve_body_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    close(fd);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "curl -sS --max-time 20 --expect100-timeout 15 -D - -o /dev/null "
             "-H 'Content-Type: application/json' -H 'Expect: 100-continue' "
             "--data-binary @%s "
             "http://127.0.0.1:%d/v1/programs/qa/predict",
             path, dx_serve_port(fx_srv));
    FILE *p = popen(cmd, "r");
    char out[4096];
    size_t k = fread(out, 1, sizeof out - 1, p);
    out[k] = '\0';
    cr_assert_eq(pclose(p), 0, "%s", out);
    unlink(path);
    cr_assert(strstr(out, "HTTP/1.1 100 Continue") != NULL, "%s", out);
    cr_assert(strstr(out, "HTTP/1.1 200 OK") != NULL, "%s", out);
}

/* Reload while a request runs: the LM is the local LM server holding each
 * answer 300 ms, so the first request is still waiting for its LM call
 * when the program file changes under it. */
static dx_lmserver *slow_lm;
static char slow_url[128];

static void start_slow_client(void *arg)
{
    (void)arg;
    dx_lm_client_opts o = {
        .primary = {"openai-compatible/test-model", slow_url, "sk-test"}};
    dx_server_opts so = {.name = "slow_lm"};
    atomic_store(&fx_rc, dx_lm_client_start(&o, &so, NULL));
}

static void stop_slow_client(void *arg)
{
    (void)arg;
    atomic_store(&fx_rc, dx_server_stop(dx_whereis("slow_lm"), NULL, 5000));
}

static void setup_slow_file(void)
{
    dx_lmserver_opts lo = {.latency_ms = 300};
    cr_assert_eq(dx_lmserver_start(&lo, &slow_lm), DX_OK);
    snprintf(slow_url, sizeof slow_url, "http://127.0.0.1:%d/v1",
             dx_lmserver_port(slow_lm));
    snprintf(prog_path, sizeof prog_path, "/tmp/dx_serve_inflight_%d.json",
             (int)getpid());
    write_prog("question -> answer");
    fx_start_runtime();
    fx_run(start_slow_client);
    dx_serve_program p = {.name = "file", .path = prog_path};
    dx_serve_opts o = {.programs = &p,
                       .nprograms = 1,
                       .reload_check_ms = -1,
                       .lm_name = "slow_lm"};
    dx_diag d = {0};
    cr_assert_eq(dx_serve_start(&o, &fx_srv, &d), DX_OK, "%s", d.msg);
}

static void teardown_slow_file(void)
{
    dx_serve_stop(fx_srv, 5000);
    fx_srv = NULL;
    fx_run(stop_slow_client);
    fx_stop_all();
    dx_lmserver_stop_free(slow_lm);
    unlink(prog_path);
}

Test(serve, requests_in_flight_finish_on_the_program_they_started_with,
     .init = setup_slow_file, .fini = teardown_slow_file)
{
    cr_assert_eq(
        dx_lmserver_push_reply(
            slow_lm, "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"),
        DX_OK);
    cr_assert_eq(
        dx_lmserver_push_reply(
            slow_lm, "[[ ## reply ## ]]\nLima\n\n[[ ## completed ## ]]"),
        DX_OK);
    hconn *a = hc_open(dx_serve_port(fx_srv));
    hc_send(a, "POST", "/v1/programs/file/predict", NULL,
            "{\"inputs\":{\"question\":\"Capital of France?\"}}");
    /* Wait until its LM call reached the server (so it takes the first
     * queued reply). */
    dx_lmserver_stats ls = {0};
    for (int i = 0; i < 400 && ls.requests == 0; i++) {
        host_sleep_ms(5);
        dx_lmserver_stats_get(slow_lm, &ls);
    }
    cr_assert_eq(ls.requests, 1);
    dx_serve_stats st;
    write_prog("question -> reply");
    dx_diag d = {0};
    cr_assert_eq(dx_serve_reload(fx_srv, &d), DX_OK, "%s", d.msg);
    dx_serve_stats_get(fx_srv, &st);
    cr_assert_eq(st.in_flight, 1, "the first request is still running");
    hresp rb = http1("POST", "/v1/programs/file/predict", NULL,
                     "{\"inputs\":{\"question\":\"Capital of Peru?\"}}");
    hresp ra;
    cr_assert(hc_read(a, &ra));
    hc_close(a);
    cr_assert_eq(ra.status, 200, "%s", ra.body);
    cr_assert(strstr(ra.body, "\"outputs\":{\"answer\":\"Paris\"}") != NULL,
              "%s", ra.body);
    cr_assert_eq(rb.status, 200, "%s", rb.body);
    cr_assert(strstr(rb.body, "\"outputs\":{\"reply\":\"Lima\"}") != NULL, "%s",
              rb.body);
    free(ra.body);
    free(rb.body);
}
