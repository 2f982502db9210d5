/*
 * lmserver_main.c — the dspex-lmserver executable: runs the local LM server
 * in the foreground until SIGINT or SIGTERM.
 *
 *   dspex-lmserver [--port N] [--host ADDR] [--script FILE] [--threads N]
 *                  [--latency-ms MS]
 *
 * --script queues each non-empty line of FILE as an exact reply (FIFO), so
 * a shell test can predict what the server answers. --threads serves
 * connections on N threads (default 1), --latency-ms holds every answer
 * back that long (a model's latency, for load tests). The line
 * "listening on HOST:PORT" on stdout says it is ready.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/error.h"
#include "dspex/lmserver.h"

static int usage(void)
{
    fprintf(stderr, "usage: dspex-lmserver [--port N] [--host ADDR] "
                    "[--script FILE] [--threads N] [--latency-ms MS]\n");
    return 2;
}

static int load_script(dx_lmserver *srv, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "dspex-lmserver: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[65536];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
        size_t n = strlen(line);
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n > 0)
            rc = dx_lmserver_push_reply(srv, line);
    }
    fclose(f);
    if (rc != 0)
        fprintf(stderr, "dspex-lmserver: %s: %s\n", path, dx_strerror(rc));
    return rc;
}

/* A whole decimal number in [lo, hi] into *out; false for anything else
 * (an empty string included). */
static bool number_in(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0 || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    dx_lmserver_opts o = {.host = "127.0.0.1"};
    const char *script = NULL;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            return usage();
        long long v;
        if (strcmp(argv[i], "--port") == 0) {
            if (!number_in(argv[++i], 0, 65535, &v))
                return usage();
            o.port = (int)v;
        } else if (strcmp(argv[i], "--host") == 0) {
            o.host = argv[++i];
        } else if (strcmp(argv[i], "--script") == 0) {
            script = argv[++i];
        } else if (strcmp(argv[i], "--threads") == 0) {
            if (!number_in(argv[++i], 1, DX_LMSERVER_MAX_THREADS, &v))
                return usage();
            o.threads = (unsigned)v;
        } else if (strcmp(argv[i], "--latency-ms") == 0) {
            if (!number_in(argv[++i], 0, 3600000, &v))
                return usage();
            o.latency_ms = (uint64_t)v;
        } else {
            return usage();
        }
    }
    /* Block the stop signals before the server thread exists, so it
     * inherits the mask and sigwait below is the one place they land. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    dx_lmserver *srv;
    int rc = dx_lmserver_start(&o, &srv);
    if (rc != 0) {
        fprintf(stderr, "dspex-lmserver: cannot listen on %s:%d: %s\n", o.host,
                o.port, dx_strerror(rc));
        return 1;
    }
    if (script != NULL && load_script(srv, script) != 0) {
        dx_lmserver_stop_free(srv);
        return 1;
    }
    printf("listening on %s:%d\n", o.host, dx_lmserver_port(srv));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    dx_lmserver_stop_free(srv);
    return 0;
}
