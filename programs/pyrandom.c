/*
 * pyrandom.c — CPython 3.11's random.Random for integer seeds.
 *
 * Owns the Mersenne Twister state, CPython's int seeding and the methods
 * DSPy's optimizers call. Bit-exactness is the whole point: each method
 * draws from the generator in the same order and amount as CPython, so any
 * deviation (an extra draw, a different rejection loop, the other sample
 * algorithm) silently changes every later choice. Tests compare against
 * values printed by Python 3.11.
 */
#include "pyrandom.h"

#include <dspex/alloc.h>
#include <dspex/error.h>

#include <math.h>

enum { N = 624, M = 397 };

#define UPPER_MASK 0x80000000u
#define LOWER_MASK 0x7fffffffu
#define MATRIX_A 0x9908b0dfu

static void init_genrand(dx__pyrand *r, uint32_t s)
{
    r->mt[0] = s;
    for (int i = 1; i < N; i++) {
        uint32_t prev = r->mt[i - 1];
        r->mt[i] = 1812433253u * (prev ^ (prev >> 30)) + (uint32_t)i;
    }
    r->mti = N;
}

static void init_by_array(dx__pyrand *r, const uint32_t *key, size_t len)
{
    init_genrand(r, 19650218u);
    size_t i = 1, j = 0;
    for (size_t k = N > len ? N : len; k; k--) {
        uint32_t prev = r->mt[i - 1];
        r->mt[i] = (r->mt[i] ^ ((prev ^ (prev >> 30)) * 1664525u)) + key[j] +
                   (uint32_t)j;
        i++;
        j++;
        if (i >= N) {
            r->mt[0] = r->mt[N - 1];
            i = 1;
        }
        if (j >= len)
            j = 0;
    }
    for (size_t k = N - 1; k; k--) {
        uint32_t prev = r->mt[i - 1];
        r->mt[i] =
            (r->mt[i] ^ ((prev ^ (prev >> 30)) * 1566083941u)) - (uint32_t)i;
        i++;
        if (i >= N) {
            r->mt[0] = r->mt[N - 1];
            i = 1;
        }
    }
    r->mt[0] = 0x80000000u; /* guarantees a non-zero state */
}

void dx__pyrand_seed(dx__pyrand *r, int64_t seed)
{
    /* |INT64_MIN| is 2^63, which only the unsigned negation can hold. */
    uint64_t n = seed < 0 ? 0u - (uint64_t)seed : (uint64_t)seed;
    uint32_t key[2] = {(uint32_t)n, (uint32_t)(n >> 32)};
    /* CPython passes as many words as the value needs, and at least one. */
    init_by_array(r, key, key[1] ? 2 : 1);
}

static uint32_t twist(uint32_t a, uint32_t b, uint32_t far)
{
    uint32_t y = (a & UPPER_MASK) | (b & LOWER_MASK);
    return far ^ (y >> 1) ^ ((y & 1u) ? MATRIX_A : 0u);
}

uint32_t dx__pyrand_u32(dx__pyrand *r)
{
    if (r->mti >= N) {
        int kk = 0;
        for (; kk < N - M; kk++)
            r->mt[kk] = twist(r->mt[kk], r->mt[kk + 1], r->mt[kk + M]);
        for (; kk < N - 1; kk++)
            r->mt[kk] = twist(r->mt[kk], r->mt[kk + 1], r->mt[kk + M - N]);
        r->mt[N - 1] = twist(r->mt[N - 1], r->mt[0], r->mt[M - 1]);
        r->mti = 0;
    }
    uint32_t y = r->mt[r->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

double dx__pyrand_random(dx__pyrand *r)
{
    uint32_t a = dx__pyrand_u32(r) >> 5, b = dx__pyrand_u32(r) >> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

uint64_t dx__pyrand_getrandbits(dx__pyrand *r, int k)
{
    if (k <= 0 || k > 64)
        return 0;
    if (k <= 32)
        return dx__pyrand_u32(r) >> (32 - k);
    /* Two words, least significant first; the top one keeps its high bits. */
    uint64_t lo = dx__pyrand_u32(r);
    uint64_t hi = dx__pyrand_u32(r) >> (64 - k);
    return lo | hi << 32;
}

static int bit_length(uint64_t n)
{
    int k = 0;
    while (n) {
        k++;
        n >>= 1;
    }
    return k;
}

uint64_t dx__pyrand_below(dx__pyrand *r, uint64_t n)
{
    if (n == 0)
        return 0;
    /* n's own bit length, not n-1's: that is what CPython uses, and a
     * power of two therefore costs a rejection half the time. */
    int k = bit_length(n);
    uint64_t v = dx__pyrand_getrandbits(r, k);
    while (v >= n)
        v = dx__pyrand_getrandbits(r, k);
    return v;
}

int dx__pyrand_randint(dx__pyrand *r, int64_t a, int64_t b, int64_t *out)
{
    if (a > b || !out)
        return DX_EINVAL;
    uint64_t width = (uint64_t)b - (uint64_t)a + 1u;
    uint64_t v;
    if (width == 0) {
        /* The full int64 range has width 2^64: Python draws 65 bits (three
         * words, the last shifted to its top bit) and rejects any value
         * with bit 64 set. */
        uint32_t lo, mid, top;
        do {
            lo = dx__pyrand_u32(r);
            mid = dx__pyrand_u32(r);
            top = dx__pyrand_u32(r) >> 31;
        } while (top);
        v = (uint64_t)lo | (uint64_t)mid << 32;
    } else {
        v = dx__pyrand_below(r, width);
    }
    *out = (int64_t)((uint64_t)a + v);
    return DX_OK;
}

void dx__pyrand_shuffle_n(dx__pyrand *r, void *base, size_t n, size_t size)
{
    unsigned char *p = base;
    for (size_t i = n; i-- > 1;) {
        size_t j = (size_t)dx__pyrand_below(r, (uint64_t)i + 1u);
        unsigned char *x = p + i * size, *y = p + j * size;
        for (size_t b = 0; b < size; b++) {
            unsigned char t = x[b];
            x[b] = y[b];
            y[b] = t;
        }
    }
}

void dx__pyrand_shuffle(dx__pyrand *r, void **items, size_t n)
{
    for (size_t i = n; i-- > 1;) {
        size_t j = (size_t)dx__pyrand_below(r, (uint64_t)i + 1u);
        void *t = items[i];
        items[i] = items[j];
        items[j] = t;
    }
}

/* CPython's choice between the two sample methods: a list of n items versus
 * a set of k items, sized as 21 + 4**ceil(log(3k, 4)) when k > 5. The float
 * log is part of the contract: it is computed as CPython's math.log(x, 4)
 * does, log(x) / log(4), so borderline k land on the same side. */
static int use_pool(size_t n, size_t k)
{
    uint64_t setsize = 21;
    if (k > 5) {
        double x = k <= SIZE_MAX / 3 ? (double)(k * 3) : (double)k * 3.0;
        double e = ceil(log(x) / log(4.0));
        if (e >= 32.0)
            return 1; /* setsize >= 2^64: no population is larger */
        setsize += (uint64_t)1 << (2 * (int)e);
    }
    return (uint64_t)n <= setsize;
}

static int sample_pool(dx__pyrand *r, size_t n, size_t k, size_t *out)
{
    if (n > SIZE_MAX / sizeof(size_t))
        return DX_ENOMEM;
    size_t *pool = dx_malloc(n * sizeof *pool);
    if (!pool)
        return DX_ENOMEM;
    for (size_t i = 0; i < n; i++)
        pool[i] = i;
    for (size_t i = 0; i < k; i++) {
        size_t j = (size_t)dx__pyrand_below(r, (uint64_t)(n - i));
        out[i] = pool[j];
        pool[j] = pool[n - i - 1];
    }
    dx_free(pool);
    return DX_OK;
}

/* The selected-set method: an open-addressing set of the indices drawn so
 * far (stored +1 so that 0 marks an empty slot), kept at most half full. */
static int sample_set(dx__pyrand *r, size_t n, size_t k, size_t *out)
{
    size_t cap = 8;
    while (cap / 2 < k) {
        if (cap > SIZE_MAX / 2 / sizeof(size_t))
            return DX_ENOMEM;
        cap *= 2;
    }
    size_t *slot = dx_calloc(cap, sizeof *slot);
    if (!slot)
        return DX_ENOMEM;
    for (size_t i = 0; i < k; i++) {
        for (;;) {
            size_t j = (size_t)dx__pyrand_below(r, (uint64_t)n);
            size_t h =
                (size_t)(((uint64_t)j * 0x9e3779b97f4a7c15u) >> 32) & (cap - 1);
            while (slot[h] && slot[h] != j + 1)
                h = (h + 1) & (cap - 1);
            if (slot[h])
                continue; /* already chosen: Python draws again */
            slot[h] = j + 1;
            out[i] = j;
            break;
        }
    }
    dx_free(slot);
    return DX_OK;
}

int dx__pyrand_sample(dx__pyrand *r, size_t n, size_t k, size_t *out)
{
    if (k > n || (k > 0 && !out))
        return DX_EINVAL;
    if (k == 0)
        return DX_OK; /* either method draws nothing */
    return use_pool(n, k) ? sample_pool(r, n, k, out)
                          : sample_set(r, n, k, out);
}

int dx__pyrand_choice(dx__pyrand *r, size_t n, size_t *out)
{
    if (n == 0 || !out)
        return DX_EINVAL;
    *out = (size_t)dx__pyrand_below(r, (uint64_t)n);
    return DX_OK;
}
