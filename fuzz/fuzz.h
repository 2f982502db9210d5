/*
 * fuzz.h — what every fuzz target shares: the libFuzzer entry points
 * (defined by each fuzz_<target>.c, called by libFuzzer in a clang fuzz
 * build or by replay_main.c everywhere else) and small helpers to turn the
 * raw input into a NUL-terminated copy and to cut it into chunks.
 *
 * A target must hold an invariant or crash: any sanitizer report, abort()
 * or leak is a finding. Inputs are never trusted to be NUL-terminated.
 */
#ifndef DSPEX_FUZZ_H
#define DSPEX_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A malloc'd NUL-terminated copy of data (the caller frees it); aborts on
 * OOM, which is not what a target looks for. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* An invariant the target checks: report it and abort (a crash to the
 * fuzzer, a failed replay to meson). */
#define FUZZ_CHECK(cond)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* Chunk sizes for feeding a stream parser in pieces: a small xorshift PRNG
 * seeded from the input, so a replay cuts the input exactly as the fuzzer
 * did. */
typedef struct fuzz_chunker {
    uint32_t state;
} fuzz_chunker;

static inline void fuzz_chunker_init(fuzz_chunker *c, uint8_t seed)
{
    c->state = 0x9e3779b9u ^ (uint32_t)seed * 2654435761u;
    if (c->state == 0)
        c->state = 1;
}

/* Next chunk length in [1, 64], not past left. */
static inline size_t fuzz_chunker_next(fuzz_chunker *c, size_t left)
{
    uint32_t x = c->state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c->state = x;
    size_t n = 1 + x % 64;
    return n < left ? n : left;
}

#endif
