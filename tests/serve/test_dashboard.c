/*
 * test_dashboard.c — the observer dashboard: its event stream read over a
 * socket, and the page loaded in headless Chromium (Debian's chromium),
 * which must render the supervision tree from the live snapshots; the
 * screenshot goes to $DX_TEST_ARTIFACTS (else /tmp).
 */
#include <sys/stat.h>

#include "dspex/supervisor.h"
#include "serve_fixture.h"

/* A small tree to observe: supervisor "observed_sup" with workers "alpha"
 * and "beta", owned by a holder process that lives until the runtime
 * stops. */
static void idle_worker(void *arg)
{
    (void)arg;
    for (;;) {
        dx_msg *m = NULL;
        if (dx_receive_any(DX_INFINITY, &m) == DX_OK)
            dx_msg_free(m);
    }
}

static int start_idle(void *arg, void *extra, dx_pid *pid_out)
{
    (void)arg;
    (void)extra;
    return dx_spawn_link(idle_worker, NULL, pid_out);
}

static void holder(void *arg)
{
    (void)arg;
    static const dx_child_spec kids[] = {
        {.id = "alpha", .start = start_idle},
        {.id = "beta", .start = start_idle},
    };
    dx_sup_spec spec = {.name = "observed_sup",
                        .strategy = DX_SUP_ONE_FOR_ONE,
                        .children = kids,
                        .nchildren = 2};
    atomic_store(&fx_rc, dx_sup_start_link(&spec, NULL, NULL));
    idle_worker(NULL);
}

static void setup(void)
{
    fx_start_runtime();
    fx_run(holder);
    fx_serve((dx_serve_opts){.dashboard_interval_ms = 100});
}

static void teardown(void)
{
    fx_stop_all();
}

TestSuite(dashboard, .init = setup, .fini = teardown, .timeout = 90);

/* Read until the server closes; returns the bytes (free them). */
static char *read_to_close(hconn *c)
{
    size_t cap = 1 << 20, len = c->len;
    char *out = malloc(cap);
    memcpy(out, c->buf, len);
    for (;;) {
        ssize_t k = recv(c->fd, out + len, cap - 1 - len, 0);
        if (k <= 0)
            break;
        len += (size_t)k;
    }
    out[len] = '\0';
    return out;
}

Test(dashboard, events_stream_snapshots_of_tree_lm_and_http)
{
    hconn *c = hc_open(dx_serve_port(fx_srv));
    hc_send(c, "GET", "/dashboard/events?limit=2", NULL, NULL);
    char *all = read_to_close(c);
    hc_close(c);
    cr_assert(strncmp(all, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", all);
    cr_assert(strstr(all, "Content-Type: text/event-stream") != NULL);
    const char *first = strstr(all, "event: snapshot\ndata: ");
    cr_assert_not_null(first, "%s", all);
    cr_assert_not_null(strstr(first + 1, "event: snapshot\ndata: "),
                       "two snapshots, then the stream ends");
    const char *json = first + strlen("event: snapshot\ndata: ");
    cJSON *s = cJSON_ParseWithOpts(json, NULL, false);
    cr_assert_not_null(s);
    /* observed_sup with its two children, each with restarts */
    const cJSON *tree = cJSON_GetObjectItem(s, "tree");
    const cJSON *sup = NULL;
    for (const cJSON *t = tree->child; t; t = t->next)
        if (strcmp(cJSON_GetObjectItem(t, "name")->valuestring,
                   "observed_sup") == 0)
            sup = t;
    cr_assert_not_null(sup, "%s", json);
    const cJSON *kids = cJSON_GetObjectItem(sup, "children");
    cr_assert_eq(cJSON_GetArraySize(kids), 2);
    cr_assert_str_eq(cJSON_GetObjectItem(kids->child, "name")->valuestring,
                     "alpha");
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(kids->child, "restarts")));
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(kids->child, "mailbox")));
    const cJSON *lm = cJSON_GetArrayItem(cJSON_GetObjectItem(s, "lm"), 0);
    cr_assert_str_eq(cJSON_GetObjectItem(lm, "name")->valuestring, "lm");
    cr_assert_str_eq(cJSON_GetObjectItem(lm, "breaker")->valuestring, "closed");
    cr_assert(cJSON_IsObject(cJSON_GetObjectItem(s, "http")));
    cr_assert(cJSON_IsArray(cJSON_GetObjectItem(s, "runs")));
    cJSON_Delete(s);
    free(all);
}

static const char *artifacts(void)
{
    const char *d = getenv("DX_TEST_ARTIFACTS");
    if (d == NULL || d[0] == '\0')
        d = "/tmp";
    mkdir(d, 0755);
    return d;
}

Test(dashboard, chromium_renders_the_live_supervision_tree)
{
    /* Some traffic first, so the LM row has numbers. */
    hresp r = http1("POST", "/v1/programs/qa/predict", NULL,
                    "{\"inputs\":{\"question\":\"What is 1 plus 1?\"}}");
    cr_assert_eq(r.status, 200);
    free(r.body);
    char profile[] = "/tmp/dx_chromium_XXXXXX";
    cr_assert_not_null(mkdtemp(profile));
    char shot[512];
    snprintf(shot, sizeof shot, "%s/dashboard.png", artifacts());
    unlink(shot);
    /* ?limit=1: one snapshot, then the stream ends and asks not to be
     * reopened, so the virtual-time budget can run out and the page is
     * dumped after it rendered. */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/dashboard?limit=1",
             dx_serve_port(fx_srv));
    const char *flags = "--headless --no-sandbox --disable-gpu "
                        "--disable-dev-shm-usage --no-first-run "
                        "--virtual-time-budget=5000";
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "chromium %s --user-data-dir=%s --window-size=1280,800 "
             "--screenshot=%s '%s' >/dev/null 2>&1",
             flags, profile, shot, url);
    cr_assert_eq(system(cmd), 0, "chromium --screenshot failed: %s", cmd);
    struct stat st;
    cr_assert_eq(stat(shot, &st), 0, "no screenshot at %s", shot);
    cr_assert_gt(st.st_size, 1000);

    snprintf(cmd, sizeof cmd,
             "chromium %s --user-data-dir=%s --dump-dom '%s' 2>/dev/null",
             flags, profile, url);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t cap = 1 << 20, len = 0;
    char *dom = malloc(cap);
    size_t k;
    while ((k = fread(dom + len, 1, cap - 1 - len, p)) > 0)
        len += k;
    dom[len] = '\0';
    cr_assert_eq(pclose(p), 0);
    cr_assert(strstr(dom, "data-snapshots=\"1\"") != NULL,
              "the page got and rendered a snapshot");
    cr_assert(strstr(dom, "<li class=\"proc supervisor\"") != NULL);
    const char *sup = strstr(dom, ">observed_sup<");
    cr_assert_not_null(sup, "the supervisor is shown");
    /* its children are rendered nested below it, in order */
    const char *nested = strstr(sup, "<ul class=\"tree\">");
    cr_assert_not_null(nested);
    const char *alpha = strstr(nested, ">alpha<");
    const char *beta = strstr(nested, ">beta<");
    cr_assert(alpha != NULL && beta != NULL && alpha < beta);
    cr_assert(strstr(dom, "<tr class=\"lm-client\"><td>lm</td>") != NULL);
    cr_assert(strstr(dom, ">dx_serve.requests<") != NULL);
    free(dom);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", profile);
    cr_assert_eq(system(cmd), 0);
}
