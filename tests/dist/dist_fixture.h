/*
 * dist_fixture.h — what the distribution tests start for themselves: a
 * private epmd on 127.0.0.1 (its own port, so parallel suites and other
 * users never meet), child OS processes (dspex nodes, erl nodes) whose
 * stdout the test reads line by line, and unique node names.
 */
#ifndef DX_DIST_FIXTURE_H
#define DX_DIST_FIXTURE_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int fx_epmd_port;

static void fx_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int fx_run(char *const argv[])
{
    pid_t p = fork();
    if (p == 0) {
        /* Daemons (epmd) must not keep the test's output pipes open. */
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(devnull, 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st = 0;
    if (p < 0 || waitpid(p, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Whether nothing listens on 127.0.0.1:port right now. */
static bool fx_port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Whether the epmd on port answers, polling up to tries x 20 ms. */
static bool fx_epmd_answers(const char *port, int tries)
{
    for (int i = 0; i < tries; i++) {
        char *names[] = {"epmd", "-port", (char *)port, "-names", NULL};
        pid_t p = fork();
        if (p == 0) {
            int devnull = open("/dev/null", 1);
            dup2(devnull, 1);
            dup2(devnull, 2);
            execvp(names[0], names);
            _exit(127);
        }
        int st = 0;
        waitpid(p, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            return true;
        fx_sleep_ms(20);
    }
    return false;
}

/* Start epmd on a port of our own and point ei and erl at it. Ports are
 * taken below the kernel's ephemeral range (32768 and up), where a
 * client socket could hold them, and a port epmd cannot take (a daemon
 * that fails to bind exits silently) is given up for the next one. */
static void fx_epmd_start(void)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        int port = 10000 +
                   (int)(((unsigned)getpid() * 7u + (unsigned)attempt * 1543u) %
                         20000u);
        if (!fx_port_free(port))
            continue;
        fx_epmd_port = port;
        char ps[16];
        snprintf(ps, sizeof ps, "%d", port);
        setenv("ERL_EPMD_PORT", ps, 1);
        setenv("ERL_EPMD_ADDRESS", "127.0.0.1", 1);
        char *argv[] = {"epmd",
                        "-daemon",
                        "-address",
                        "127.0.0.1",
                        "-port",
                        ps,
                        "-relaxed_command_check",
                        NULL};
        fx_run(argv);
        /* Slow to come up on a loaded machine: give it 5 s. */
        if (fx_epmd_answers(ps, 250))
            return;
    }
}

static void fx_epmd_stop(void)
{
    char port[16];
    snprintf(port, sizeof port, "%d", fx_epmd_port);
    char *argv[] = {"epmd", "-port", port, "-kill", NULL};
    pid_t p = fork();
    if (p == 0) {
        int devnull = open("/dev/null", 1);
        dup2(devnull, 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    waitpid(p, &st, 0);
}

typedef struct fx_child {
    pid_t pid;
    int out; /* read end of its stdout */
    char buf[8192];
    size_t len;
} fx_child;

/* Every child started, so teardown can end those a failed test left. */
#define FX_MAX_CHILDREN 16
static pid_t fx_children[FX_MAX_CHILDREN];

static void fx_kill_all(void)
{
    for (int i = 0; i < FX_MAX_CHILDREN; i++)
        if (fx_children[i] > 0) {
            kill(fx_children[i], SIGKILL);
            int st;
            waitpid(fx_children[i], &st, 0);
            fx_children[i] = 0;
        }
}

static int fx_spawn(fx_child *c, char *const argv[])
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    memset(c, 0, sizeof(*c));
    c->pid = fork();
    if (c->pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    c->out = fds[0];
    for (int i = 0; c->pid > 0 && i < FX_MAX_CHILDREN; i++)
        if (fx_children[i] == 0) {
            fx_children[i] = c->pid;
            break;
        }
    return c->pid > 0 ? 0 : -1;
}

/* Read the next line starting with prefix (others are skipped) into line;
 * 0 on success, -1 on timeout or EOF. */
static int fx_expect(fx_child *c, const char *prefix, char *line, size_t cap,
                     int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms;) {
        char *nl;
        while ((nl = memchr(c->buf, '\n', c->len)) != NULL) {
            size_t n = (size_t)(nl - c->buf);
            bool hit = strncmp(c->buf, prefix, strlen(prefix)) == 0;
            if (getenv("DX_FX_ECHO"))
                fprintf(stderr, "child: %.*s\n", (int)n, c->buf);
            if (hit && line) {
                size_t k = n < cap - 1 ? n : cap - 1;
                memcpy(line, c->buf, k);
                line[k] = '\0';
            }
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            if (hit)
                return 0;
        }
        struct pollfd p = {.fd = c->out, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            if (c->len == sizeof c->buf)
                c->len = 0;
            ssize_t r = read(c->out, c->buf + c->len, sizeof c->buf - c->len);
            if (r <= 0)
                return -1;
            c->len += (size_t)r;
        } else {
            waited += 100;
        }
    }
    return -1;
}

/* The child is gone (reaped): drop it from the list and close its pipe. */
static inline void fx_forget(fx_child *c)
{
    for (int i = 0; c->pid > 0 && i < FX_MAX_CHILDREN; i++)
        if (fx_children[i] == c->pid)
            fx_children[i] = 0;
    c->pid = 0;
    if (c->out > 0)
        close(c->out);
    c->out = -1;
}

static inline void fx_kill(fx_child *c, int sig)
{
    if (c->pid > 0) {
        kill(c->pid, sig);
        int st;
        waitpid(c->pid, &st, 0);
    }
    fx_forget(c);
}

/* End a child the polite way: SIGTERM, so it stops its node and returns
 * from main (in a coverage build it writes its counters then); SIGKILL if
 * it has not exited within 5 s. */
static inline void fx_stop(fx_child *c)
{
    if (c->pid > 0) {
        kill(c->pid, SIGTERM);
        int st;
        for (int waited = 0; waitpid(c->pid, &st, WNOHANG) == 0; waited += 10) {
            if (waited >= 5000) {
                fx_kill(c, SIGKILL);
                return;
            }
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    fx_forget(c);
}

static void fx_name(char *buf, size_t cap, const char *alive)
{
    snprintf(buf, cap, "%s%d@127.0.0.1", alive, (int)getpid());
}

#endif
