/*
 * pyrandom.h — Python's `random.Random(seed)`, bit for bit, inside programs/.
 *
 * dspex's optimizers must pick the same demos as Python DSPy for the same
 * seed and trainset, and DSPy draws them with `random.Random(seed)`. This is
 * the generator of CPython 3.11 for integer seeds: the Mersenne Twister
 * seeded the way CPython seeds it from an int, and the methods DSPy uses
 * (random, getrandbits, randint, shuffle, sample, choice) consuming the
 * stream exactly as CPython does, so every value and every order agrees.
 * Not installed. A dx__pyrand is a plain value: no allocation, no teardown,
 * one thread at a time.
 */
#ifndef DSPEX_PYRANDOM_H
#define DSPEX_PYRANDOM_H

#include <stddef.h>
#include <stdint.h>

typedef struct dx__pyrand {
    uint32_t mt[624];
    int mti;
} dx__pyrand;

/* random.Random(seed) for an int seed: the absolute value, split into 32-bit
 * words (at least one, so 0 seeds like [0]), fed to init_by_array. Seeds s
 * and -s give the same stream, as in CPython. */
void dx__pyrand_seed(dx__pyrand *r, int64_t seed);

/* The next raw 32-bit output (CPython's genrand_uint32). */
uint32_t dx__pyrand_u32(dx__pyrand *r);

/* random.random(): a double in [0, 1) with 53 random bits; two outputs. */
double dx__pyrand_random(dx__pyrand *r);

/* random.getrandbits(k) for 0 <= k <= 64: ceil(k/32) outputs, the first the
 * least significant word. k == 0 returns 0 and consumes nothing. A k outside
 * 0..64 is a caller bug: it returns 0 and consumes nothing. */
uint64_t dx__pyrand_getrandbits(dx__pyrand *r, int k);

/* Python's _randbelow (the getrandbits rejection method): uniform in [0, n).
 * n == 0 returns 0 and consumes nothing (Python would loop forever). */
uint64_t dx__pyrand_below(dx__pyrand *r, uint64_t n);

/* random.randint(a, b): uniform in [a, b], over the full int64 range too.
 * DX_EINVAL if a > b (Python's ValueError), *out untouched, nothing
 * consumed. */
int dx__pyrand_randint(dx__pyrand *r, int64_t a, int64_t b, int64_t *out);

/* random.shuffle(x) on an array of n pointers, in place. */
void dx__pyrand_shuffle(dx__pyrand *r, void **items, size_t n);

/* The same permutation on an array of n elements of `size` bytes each (an
 * index array, or typed pointers that must not be accessed as void *). */
void dx__pyrand_shuffle_n(dx__pyrand *r, void *base, size_t n, size_t size);

/* random.sample(population, k) for a population of n items: writes the
 * indices of the k chosen items, in Python's order, to out[0..k). It takes
 * the same path as CPython (the pool method or the selected-set method,
 * chosen by the same setsize heuristic), so the draws match. out may be NULL
 * when k == 0. DX_EINVAL if k > n or (k > 0 and out is NULL); DX_ENOMEM if
 * the working memory (n or about 2k indices) cannot be allocated. On error
 * nothing is consumed and out is untouched. */
int dx__pyrand_sample(dx__pyrand *r, size_t n, size_t k, size_t *out);

/* random.choice(seq) for a sequence of n items: writes the chosen index.
 * DX_EINVAL if n == 0 (Python's IndexError), nothing consumed. */
int dx__pyrand_choice(dx__pyrand *r, size_t n, size_t *out);

#endif
