/*
 * test_commands.c — the provider layer's two commands, spawned as the
 * binaries meson built: dspex-lmserver (listens, says where, answers a
 * scripted reply, stops cleanly on SIGTERM; bad arguments exit 2, a
 * missing script or an address it cannot bind exit 1 saying why) and
 * dspex-simdata (its output is the committed data/sim/ tree, corpus
 * included; bad arguments exit 2, an unwritable directory exits 1).
 */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[128];
static char err_buf[1 << 14];

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dx_cmd_XXXXXX");
    cr_assert(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(commands, .init = setup, .fini = teardown, .timeout = 60);

static const char *bin(const char *var)
{
    const char *b = getenv(var);
    cr_assert(b, "%s is not set", var);
    return b;
}

static void read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t got;
    while (n + 1 < cap && (got = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)got;
    buf[n] = '\0';
}

/* Start path with args (NULL-terminated); its stdout is a pipe read
 * through *out, its stderr goes to a file read by finish(). */
static pid_t start(const char *path, const char *const *args, FILE **out)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    char err_path[200];
    snprintf(err_path, sizeof err_path, "%s/stderr", tmpdir);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        FILE *e = freopen(err_path, "w", stderr);
        (void)e;
        const char *argv[16] = {path};
        int n = 1;
        for (; args[n - 1] && n < 15; n++)
            argv[n] = args[n - 1];
        argv[n] = NULL;
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    *out = fdopen(p[0], "r");
    cr_assert_not_null(*out);
    return pid;
}

/* Wait for pid; its stderr into err_buf; the exit status (128 + signal
 * when it was killed). */
static int finish(pid_t pid, FILE *out)
{
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    if (out)
        fclose(out);
    char err_path[200];
    snprintf(err_path, sizeof err_path, "%s/stderr", tmpdir);
    FILE *f = fopen(err_path, "r");
    err_buf[0] = '\0';
    if (f) {
        read_all(fileno(f), err_buf, sizeof err_buf);
        fclose(f);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int run(const char *path, const char *const *args)
{
    FILE *out = NULL;
    pid_t pid = start(path, args, &out);
    char sink[4096];
    while (fgets(sink, sizeof sink, out))
        ;
    return finish(pid, out);
}

/* ---- dspex-lmserver ------------------------------------------------------ */

static size_t collect(char *data, size_t size, size_t n, void *ud)
{
    char *buf = ud;
    size_t have = strlen(buf), add = size * n;
    if (have + add >= 8192)
        add = 8191 - have;
    memcpy(buf + have, data, add);
    buf[have + add] = '\0';
    return size * n;
}

Test(commands, lmserver_answers_its_script_then_stops_on_sigterm)
{
    char script[200];
    snprintf(script, sizeof script, "%s/script.txt", tmpdir);
    FILE *f = fopen(script, "w");
    cr_assert_not_null(f);
    fputs("\nscripted first\r\n\nscripted second\n", f);
    fclose(f);
    FILE *out = NULL;
    pid_t pid = start(bin("DX_LMSERVER_BIN"),
                      (const char *[]){"--port", "0", "--host", "127.0.0.1",
                                       "--script", script, "--threads", "2",
                                       "--latency-ms", "1", NULL},
                      &out);
    /* It says where it listens once it does: no polling needed. */
    char line[256] = "";
    cr_assert_not_null(fgets(line, sizeof line, out));
    int port = 0;
    cr_assert_eq(sscanf(line, "listening on 127.0.0.1:%d", &port), 1, "%s",
                 line);
    cr_assert_gt(port, 0);

    curl_global_init(CURL_GLOBAL_DEFAULT);
    const char *body = "{\"model\": \"m\", \"messages\": [{\"role\": "
                       "\"user\", \"content\": \"hi\"}]}";
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/chat/completions", port);
    const char *want[] = {"scripted first", "scripted second",
                          "answer: hi"}; /* the script, then its own */
    for (int i = 0; i < 3; i++) {
        CURL *c = curl_easy_init();
        struct curl_slist *h = NULL;
        h = curl_slist_append(h, "Content-Type: application/json");
        h = curl_slist_append(h, "Authorization: Bearer sk-test");
        char resp[8192] = "";
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
        cr_assert_eq(curl_easy_perform(c), CURLE_OK);
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        cr_expect_eq(status, 200, "%s", resp);
        cr_expect(strstr(resp, want[i]), "reply %d: %s", i, resp);
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
    }
    curl_global_cleanup();
    cr_assert_eq(kill(pid, SIGTERM), 0);
    cr_assert_eq(finish(pid, out), 0, "%s", err_buf);
}

Test(commands, lmserver_refuses_bad_arguments_and_says_why)
{
    const char *b = bin("DX_LMSERVER_BIN");
    static const char *const usage[][4] = {
        {"--port", NULL},
        {"--port", "70000", NULL},
        {"--port", "12x", NULL},
        {"--verbose", "yes", NULL},
        {"--threads", "0", NULL},
        {"--threads", "", NULL},
        {"--threads", "17", NULL},
        {"--latency-ms", "-1", NULL},
        {"--latency-ms", "soon", NULL},
    };
    for (size_t i = 0; i < sizeof usage / sizeof *usage; i++) {
        cr_expect_eq(run(b, usage[i]), 2, "case %zu", i);
        cr_expect(strstr(err_buf, "usage: dspex-lmserver"), "%s", err_buf);
    }
    char missing[200];
    snprintf(missing, sizeof missing, "%s/no-such-script", tmpdir);
    cr_expect_eq(
        run(b, (const char *[]){"--port", "0", "--script", missing, NULL}), 1);
    cr_expect(strstr(err_buf, missing) && strstr(err_buf, "No such file"), "%s",
              err_buf);
    cr_expect_eq(run(b, (const char *[]){"--host", "not-an-address", NULL}), 1);
    cr_expect(strstr(err_buf, "cannot listen on not-an-address:0"), "%s",
              err_buf);
}

/* ---- dspex-simdata ------------------------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

Test(commands, simdata_writes_the_committed_sim_data)
{
    char dir[200];
    snprintf(dir, sizeof dir, "%s/sim", tmpdir);
    cr_assert_eq(run(bin("DX_SIMDATA_BIN"), (const char *[]){dir, NULL}), 0,
                 "%s", err_buf);
    const char *fx = getenv("DX_FIXTURES");
    cr_assert_not_null(fx);
    static const char *const files[] = {
        "arithmetic/train.jsonl", "arithmetic/dev.jsonl",
        "arithmetic/test.jsonl",  "capitals/train.jsonl",
        "capitals/dev.jsonl",     "capitals/test.jsonl",
        "classify/train.jsonl",   "classify/dev.jsonl",
        "classify/test.jsonl",    "twohop/train.jsonl",
        "twohop/dev.jsonl",       "twohop/test.jsonl",
        "twohop/corpus.jsonl",
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char made[400], committed[600];
        snprintf(made, sizeof made, "%s/%s", dir, files[i]);
        snprintf(committed, sizeof committed, "%s/../../data/sim/%s", fx,
                 files[i]);
        size_t la = 0, lb = 0;
        char *a = slurp(made, &la), *b = slurp(committed, &lb);
        cr_assert_not_null(a, "%s was not written", made);
        cr_assert_not_null(b, "%s is missing", committed);
        cr_expect(la > 0 && la == lb && memcmp(a, b, la) == 0,
                  "%s differs from the committed file", files[i]);
        free(a);
        free(b);
    }
    /* Another seed makes other data; the same seed the same. */
    char other[200];
    snprintf(other, sizeof other, "%s/other", tmpdir);
    cr_assert_eq(run(bin("DX_SIMDATA_BIN"),
                     (const char *[]){"--seed", "8", other, NULL}),
                 0, "%s", err_buf);
    char pa[400], pb[400];
    snprintf(pa, sizeof pa, "%s/capitals/dev.jsonl", dir);
    snprintf(pb, sizeof pb, "%s/capitals/dev.jsonl", other);
    size_t la = 0, lb = 0;
    char *a = slurp(pa, &la), *b = slurp(pb, &lb);
    cr_assert(a && b);
    cr_expect(la != lb || memcmp(a, b, la) != 0, "the seed is used");
    free(a);
    free(b);
}

Test(commands, simdata_refuses_bad_arguments_and_unwritable_places)
{
    const char *b = bin("DX_SIMDATA_BIN");
    cr_expect_eq(run(b, (const char *[]){"--seed", "x1", tmpdir, NULL}), 2);
    cr_expect(strstr(err_buf, "bad seed \"x1\""), "%s", err_buf);
    cr_expect_eq(run(b, (const char *[]){NULL}), 2);
    cr_expect(strstr(err_buf, "usage: dspex-simdata"), "%s", err_buf);
    cr_expect_eq(run(b, (const char *[]){"-v", tmpdir, NULL}), 2);
    cr_expect_eq(run(b, (const char *[]){tmpdir, "second", NULL}), 2);
    char nowhere[200];
    snprintf(nowhere, sizeof nowhere, "%s/no/such/parent", tmpdir);
    cr_expect_eq(run(b, (const char *[]){nowhere, NULL}), 1);
    cr_expect(strstr(err_buf, nowhere), "%s", err_buf);
    /* A file where a task's directory should go. */
    char dir[200], blocker[300];
    snprintf(dir, sizeof dir, "%s/blocked", tmpdir);
    cr_assert_eq(mkdir(dir, 0755), 0);
    snprintf(blocker, sizeof blocker, "%s/capitals", dir);
    FILE *f = fopen(blocker, "w");
    cr_assert_not_null(f);
    fclose(f);
    cr_expect_eq(run(b, (const char *[]){dir, NULL}), 1);
    cr_expect(strstr(err_buf, "capitals"), "%s", err_buf);
}
