/*
 * bench_server.h — how many threads a benchmark's local LM server runs:
 * DX_BENCH_SERVER_THREADS if set, else one per CPU up to four. The server
 * stands in for a provider, whose capacity is not the client machine's;
 * with one thread it would be the bottleneck of any burst the client can
 * start (docs/benchmarks.md).
 */
#ifndef DSPEX_BENCH_SERVER_H
#define DSPEX_BENCH_SERVER_H

#include <stdlib.h>
#include <unistd.h>

#include "dspex/lmserver.h"

static inline unsigned bench_server_threads(void)
{
    const char *env = getenv("DX_BENCH_SERVER_THREADS");
    long n = env != NULL && *env != '\0' ? strtol(env, NULL, 10)
                                         : sysconf(_SC_NPROCESSORS_ONLN);
    if (env == NULL && n > 4)
        n = 4;
    if (n < 1)
        n = 1;
    return n > DX_LMSERVER_MAX_THREADS ? DX_LMSERVER_MAX_THREADS : (unsigned)n;
}

#endif
