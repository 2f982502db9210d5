/*
 * kt_faults.h — for the kernel suites that fault on purpose or must know
 * how they run: a NULL write that reaches the CPU, a runaway recursion, and
 * whether the test runs under valgrind. Header-only; each suite gets its
 * own copies of the statics.
 */
#ifndef DSPEX_TESTS_KT_FAULTS_H
#define DSPEX_TESTS_KT_FAULTS_H

/* The NULL write must reach the CPU, not UBSan's null check (which would
 * stop the whole test program). */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 8)
#define KT_NO_UBSAN __attribute__((no_sanitize("undefined")))
#else
#define KT_NO_UBSAN
#endif

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define KT_RUNNING_ON_VALGRIND RUNNING_ON_VALGRIND
#endif
#endif
#ifndef KT_RUNNING_ON_VALGRIND
#define KT_RUNNING_ON_VALGRIND 0
#endif

static int *volatile kt_null_ptr;
static volatile int kt_keep_recursing = 1;

KT_NO_UBSAN static inline void kt_write_null(void)
{
    *kt_null_ptr = 1;
}

/* Recurses until the stack runs out (512 bytes a frame the compiler cannot
 * fold away). */
static inline int kt_recurse(int depth)
{
    volatile char pad[512];
    pad[0] = (char)depth;
    pad[511] = pad[0];
    if (!kt_keep_recursing)
        return pad[511];
    return kt_recurse(depth + 1) + pad[511];
}

#endif
