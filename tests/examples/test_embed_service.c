/*
 * test_embed_service.c — smoke tests of the embedding examples:
 * examples/embed_service is run as a child process on the sim model, once
 * reading stdin and once serving TCP on 127.0.0.1, and its answer lines
 * are checked; SIGTERM must stop it cleanly (exit 0). examples/embed_minimal
 * runs, and docs/embedding.md shows it byte for byte.
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *env_path(const char *name)
{
    const char *v = getenv(name);
    cr_assert_not_null(v, "%s is not set", name);
    return v;
}

static const char *service_bin(void)
{
    return env_path("DX_EMBED_SERVICE_BIN");
}

/* Start bin with args; its stdin, stdout and stderr are pipes. */
static pid_t start_bin(const char *bin, const char *const *args, int *in_fd,
                       int *out_fd, int *err_fd)
{
    int pin[2], pout[2], perr[2];
    cr_assert_eq(pipe(pin), 0);
    cr_assert_eq(pipe(pout), 0);
    cr_assert_eq(pipe(perr), 0);
    const char *argv[16] = {bin};
    size_t n = 1;
    for (; args[n - 1] && n < 15; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        for (int i = 0; i < 2; i++) {
            close(pin[i]);
            close(pout[i]);
            close(perr[i]);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    *in_fd = pin[1];
    *out_fd = pout[0];
    *err_fd = perr[0];
    return pid;
}

static pid_t start(const char *const *args, int *in_fd, int *out_fd,
                   int *err_fd)
{
    return start_bin(service_bin(), args, in_fd, out_fd, err_fd);
}

static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    return len;
}

static void write_all(int fd, const char *s)
{
    size_t len = strlen(s);
    while (len > 0) {
        ssize_t w = write(fd, s, len);
        cr_assert_gt(w, 0);
        s += w;
        len -= (size_t)w;
    }
}

static int wait_exit_code(pid_t pid)
{
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the service died of signal %d",
              WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return WEXITSTATUS(status);
}

/* The answer line for request id (each answer carries its id). */
static cJSON *answer_for(const char *out, int id)
{
    char *copy = strdup(out);
    cr_assert_not_null(copy);
    cJSON *found = NULL;
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line && !found;
         line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        cr_assert_not_null(o, "not JSON: %s", line);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "id");
        if (cJSON_IsNumber(v) && v->valueint == id)
            found = o;
        else
            cJSON_Delete(o);
    }
    free(copy);
    cr_assert_not_null(found, "no answer for request %d in:\n%s", id, out);
    return found;
}

static void expect_answered(const char *out, int id)
{
    cJSON *o = answer_for(out, id);
    cr_expect(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "ok")),
              "request %d failed:\n%s", id, out);
    const cJSON *outputs = cJSON_GetObjectItemCaseSensitive(o, "outputs");
    const cJSON *answer = cJSON_GetObjectItemCaseSensitive(outputs, "answer");
    cr_expect(cJSON_IsString(answer) && answer->valuestring[0],
              "request %d has no answer:\n%s", id, out);
    cJSON_Delete(o);
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

Test(embed_service, answers_stdin_lines_and_exits_at_the_end_of_input,
     .timeout = 60)
{
    int in, out, err;
    const char *args[] = {"--stdio", NULL};
    pid_t pid = start(args, &in, &out, &err);
    write_all(in, "{\"question\": \"What is the capital of Peru?\"}\n"
                  "What is the currency of Japan?\n"
                  "{not json\n"
                  "{\"question\": \"What is the capital of Chile?\"}\n");
    close(in);
    static char obuf[1 << 16], ebuf[1 << 14];
    read_all(out, obuf, sizeof obuf);
    read_all(err, ebuf, sizeof ebuf);
    close(out);
    close(err);
    cr_assert_eq(wait_exit_code(pid), 0, "stderr: %s", ebuf);
    cr_expect_eq(count_lines(obuf), 4, "one answer per line:\n%s", obuf);
    expect_answered(obuf, 1);
    expect_answered(obuf, 2);
    expect_answered(obuf, 4);
    cJSON *bad = answer_for(obuf, 3);
    cr_expect(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(bad, "ok")));
    cr_expect_str_eq(
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(bad, "error")),
        "ESYNTAX");
    cJSON_Delete(bad);
    cr_expect(strstr(ebuf, "stopped (") != NULL, "stderr: %s", ebuf);
}

Test(embed_service, serves_tcp_on_loopback_and_stops_cleanly_on_sigterm,
     .timeout = 60)
{
    int in, out, err;
    const char *args[] = {"--port", "0", NULL};
    pid_t pid = start(args, &in, &out, &err);
    close(in);
    /* "listening on 127.0.0.1:PORT\n": the signal handlers are in place
     * once it is printed. */
    char line[128] = "";
    size_t len = 0;
    while (len + 1 < sizeof line && !strchr(line, '\n')) {
        ssize_t r = read(out, line + len, sizeof line - 1 - len);
        cr_assert_gt(r, 0, "the service ended before listening");
        len += (size_t)r;
        line[len] = '\0';
    }
    int port = 0;
    cr_assert_eq(sscanf(line, "listening on 127.0.0.1:%d", &port), 1, "%s",
                 line);

    int s = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(s, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(s, (struct sockaddr *)&a, sizeof a), 0);
    write_all(s, "What is the capital of Peru?\n"
                 "{\"question\": \"What is the currency of Japan?\"}\n");
    shutdown(s, SHUT_WR); /* answers still come back */
    static char obuf[1 << 16];
    read_all(s, obuf, sizeof obuf);
    close(s);
    cr_expect_eq(count_lines(obuf), 2, "%s", obuf);
    expect_answered(obuf, 1);
    expect_answered(obuf, 2);

    cr_assert_eq(kill(pid, SIGTERM), 0);
    static char ebuf[1 << 14];
    read_all(err, ebuf, sizeof ebuf);
    close(out);
    close(err);
    cr_expect_eq(wait_exit_code(pid), 0, "stderr: %s", ebuf);
    cr_expect(strstr(ebuf, "stopped (") != NULL, "stderr: %s", ebuf);
}

Test(embed_minimal, runs_and_answers_blocking_and_async, .timeout = 60)
{
    int in, out, err;
    const char *args[] = {NULL};
    pid_t pid =
        start_bin(env_path("DX_EMBED_MINIMAL_BIN"), args, &in, &out, &err);
    close(in);
    static char obuf[1 << 14], ebuf[1 << 14];
    read_all(out, obuf, sizeof obuf);
    read_all(err, ebuf, sizeof ebuf);
    close(out);
    close(err);
    cr_assert_eq(wait_exit_code(pid), 0, "stderr: %s", ebuf);
    /* Both calls answered (the sim's answer itself is its business). */
    const char *sync = strstr(obuf, "answer: ");
    const char *async = strstr(obuf, "async answer: ");
    cr_expect(sync == obuf && sync[8] != '\n', "%s", obuf);
    cr_expect(async != NULL && async[14] != '\n', "%s", obuf);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    static char buf[1 << 17];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *s = strdup(buf);
    cr_assert_not_null(s);
    return s;
}

Test(embed_minimal, the_guide_shows_the_compiled_file_byte_for_byte)
{
    char path[1024];
    const char *root = env_path("DX_SOURCE_ROOT");
    snprintf(path, sizeof path, "%s/examples/embed_minimal.c", root);
    char *code = slurp(path);
    snprintf(path, sizeof path, "%s/docs/embedding.md", root);
    char *doc = slurp(path);
    const char *marker = "<!-- snippet: examples/embed_minimal.c -->\n```c\n";
    char *start = strstr(doc, marker);
    cr_assert_not_null(start, "docs/embedding.md has no snippet marker");
    start += strlen(marker);
    char *end = strstr(start, "```\n");
    cr_assert_not_null(end);
    *end = '\0';
    cr_expect_str_eq(start, code,
                     "docs/embedding.md's snippet differs from "
                     "examples/embed_minimal.c: copy the file into the "
                     "guide");
    free(code);
    free(doc);
}
