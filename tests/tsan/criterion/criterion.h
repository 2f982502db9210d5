/*
 * criterion.h (ThreadSanitizer build only) — the part of Criterion's C API
 * that the dspex suites use, so they compile unchanged when the real
 * Criterion cannot start (under TSan its startup mmap lands outside the
 * ranges TSan allows). tests/meson.build puts this directory ahead of the
 * system headers only when b_sanitize contains "thread"; every other build
 * uses the real Criterion. The runner (main, fork per test, timeouts,
 * reporting) is tests/tsan/shim_main.c; tests/tsan/README.md lists what is
 * supported.
 *
 * Assertion macros take their message (a printf format and its arguments)
 * after the fixed operands, optionally, as Criterion's do. Telling "no
 * message" from "a message" needs the argument count, hence the counting
 * macros below; a check may take at most 60 arguments in all.
 */
#ifndef DSPEX_TESTS_TSAN_CRITERION_H
#define DSPEX_TESTS_TSAN_CRITERION_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---- registration ------------------------------------------------------ */

/* What a test or a suite may set, under Criterion's names. A test's own
 * timeout, signal and exit_code win over its suite's; both inits run (suite
 * first) and both finis run (test first). */
struct cr__opts {
    int sentinel_;           /* lets an option list be empty */
    double timeout;          /* seconds; 0 means none */
    void (*init)(void);      /* runs in the test's process before it */
    void (*fini)(void);      /* runs after it, also after a failed assert */
    int signal;              /* pass only if the test dies of this signal */
    int exit_code;           /* pass only if the test exits with this */
    bool disabled;           /* listed as skipped, never run */
    const char *description; /* accepted, unused */
};

struct cr__test {
    const char *suite;
    const char *name;
    const char *file;
    int line;
    void (*fn)(void);
    struct cr__opts opts;
    struct cr__test *next;
};

struct cr__suite {
    const char *name;
    struct cr__opts opts;
    struct cr__suite *next;
};

/* Called from load-time constructors; the runner keeps tests sorted by
 * suite, then name, as Criterion runs them. */
void cr__add_test(struct cr__test *t);
void cr__add_suite(struct cr__suite *s);

#define Test(...) CR__TEST(__VA_ARGS__, .sentinel_ = 0)
#define CR__TEST(suite, name, ...)                                             \
    static void cr__f_##suite##__##name(void);                                 \
    static struct cr__test cr__t_##suite##__##name = {                         \
        #suite,        #name, __FILE__, __LINE__, cr__f_##suite##__##name,     \
        {__VA_ARGS__}, NULL};                                                  \
    static void __attribute__((constructor)) cr__r_##suite##__##name(void)     \
    {                                                                          \
        cr__add_test(&cr__t_##suite##__##name);                                \
    }                                                                          \
    static void cr__f_##suite##__##name(void)

/* Ends in a declaration so that the `;` users write after it is not an
 * empty file-scope declaration (which -Wpedantic rejects). */
#define TestSuite(...) CR__SUITE(__VA_ARGS__, .sentinel_ = 0)
#define CR__SUITE(suite, ...)                                                  \
    static struct cr__suite cr__s_##suite;                                     \
    static void __attribute__((constructor)) cr__rs_##suite(void)              \
    {                                                                          \
        cr__add_suite(&cr__s_##suite);                                         \
    }                                                                          \
    static struct cr__suite cr__s_##suite = {#suite, {__VA_ARGS__}, NULL}

/* ---- reporting --------------------------------------------------------- */

enum cr__shape {
    CR__SHAPE_TRUE,
    CR__SHAPE_NOT,
    CR__SHAPE_NULL,
    CR__SHAPE_NOT_NULL,
    CR__SHAPE_EMPTY,
    CR__SHAPE_NOT_EMPTY,
    CR__SHAPE_OP,
    CR__SHAPE_STR,
    CR__SHAPE_ARR,
    CR__SHAPE_FLOAT,
    CR__SHAPE_FAIL,
};

/* A failed check. `args` is the check's argument list as written (it is
 * split at top-level commas to name the operands); sa/sb are the operand
 * values of string checks, else NULL. An assert ends the test (fini still
 * runs); an expectation lets it go on. */
_Noreturn void cr__assert_failed(const char *file, int line, int shape,
                                 const char *op, const char *args,
                                 const char *sa, const char *sb,
                                 const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));
void cr__expect_failed(const char *file, int line, int shape, const char *op,
                       const char *args, const char *sa, const char *sb,
                       const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));
/* A passed check: remembered so a crash can be placed after it. */
void cr__passed(const char *file, int line);
/* strcmp where NULL sorts before every string and equals only NULL. */
int cr__strcmp(const char *a, const char *b);

_Noreturn void cr__skip(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

enum cr__level { CR__INFO, CR__WARN, CR__ERROR };
void cr__log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define cr_log_info(...) cr__log(CR__INFO, __VA_ARGS__)
#define cr_log_warn(...) cr__log(CR__WARN, __VA_ARGS__)
#define cr_log_error(...) cr__log(CR__ERROR, __VA_ARGS__)

/* Ends the test as skipped (counted as passing); needs a message. */
#define cr_skip_test(...) cr__skip(__VA_ARGS__)

/* ---- argument counting --------------------------------------------------
 * CR__Nk(args...) is k when given exactly k arguments and CR__MSG
 * (so a message follows) when given more. */
#define CR__CAT(a, b) CR__CAT_(a, b)
#define CR__CAT_(a, b) a##b
#define CR__PICK_(...) CR__PICK(__VA_ARGS__)
#define CR__PICK(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14,  \
                 _15, _16, _17, _18, _19, _20, _21, _22, _23, _24, _25, _26,   \
                 _27, _28, _29, _30, _31, _32, _33, _34, _35, _36, _37, _38,   \
                 _39, _40, _41, _42, _43, _44, _45, _46, _47, _48, _49, _50,   \
                 _51, _52, _53, _54, _55, _56, _57, _58, _59, _60, x, ...)     \
    x
#define CR__M10                                                                \
    CR__MSG, CR__MSG, CR__MSG, CR__MSG, CR__MSG, CR__MSG, CR__MSG, CR__MSG,    \
        CR__MSG, CR__MSG
#define CR__M57                                                                \
    CR__M10, CR__M10, CR__M10, CR__M10, CR__M10, CR__MSG, CR__MSG, CR__MSG,    \
        CR__MSG, CR__MSG, CR__MSG, CR__MSG
#define CR__N1(...) CR__PICK_(__VA_ARGS__, CR__M57, CR__MSG, CR__MSG, 1, ~)
#define CR__N2(...) CR__PICK_(__VA_ARGS__, CR__M57, CR__MSG, 2, ~)
#define CR__N3(...) CR__PICK_(__VA_ARGS__, CR__M57, 3, ~)

/* ---- checks -------------------------------------------------------------
 * Each operand is evaluated exactly once. kind is CR__KA (assert) or CR__KE
 * (expect); like CR__MSG, these tokens are never macros, so user macros
 * with short names (A, M) cannot capture them. */
#define CR__FAILED_CR__KA cr__assert_failed
#define CR__FAILED_CR__KE cr__expect_failed
#define CR__CHECK(kind, ok, shape, op, args, sa, sb, ...)                      \
    do {                                                                       \
        if (!(ok))                                                             \
            CR__FAILED_##kind(__FILE__, __LINE__, shape, op, args, sa, sb,     \
                              __VA_ARGS__);                                    \
        else                                                                   \
            cr__passed(__FILE__, __LINE__);                                    \
    } while (0)

/* One operand; wrap(c) is the condition that must hold. */
#define CR__UNARY(kind, shape, wrap, args, ...)                                \
    CR__CAT(CR__UNARY_, CR__N1(__VA_ARGS__))                                   \
    (kind, shape, wrap, args, __VA_ARGS__)
#define CR__UNARY_1(kind, shape, wrap, args, c)                                \
    CR__CHECK(kind, wrap(c), shape, "", args, NULL, NULL, "%s", "")
#define CR__UNARY_CR__MSG(kind, shape, wrap, args, c, ...)                     \
    CR__CHECK(kind, wrap(c), shape, "", args, NULL, NULL, __VA_ARGS__)
#define CR__W_TRUE(c) (c)
#define CR__W_NOT(c) !(c)
#define CR__W_NULL(c) ((c) == NULL)
#define CR__W_NOT_NULL(c) ((c) != NULL)
#define CR__W_EMPTY(c) ((c)[0] == '\0')
#define CR__W_NOT_EMPTY(c) ((c)[0] != '\0')

/* Two operands compared with a C operator. */
#define CR__OP(kind, op, args, ...)                                            \
    CR__CAT(CR__OP_, CR__N2(__VA_ARGS__))(kind, op, args, __VA_ARGS__)
#define CR__OP_2(kind, op, args, a, b)                                         \
    CR__CHECK(kind, (a)op(b), CR__SHAPE_OP, #op, args, NULL, NULL, "%s", "")
#define CR__OP_CR__MSG(kind, op, args, a, b, ...)                              \
    CR__CHECK(kind, (a)op(b), CR__SHAPE_OP, #op, args, NULL, NULL, __VA_ARGS__)

/* Two strings, compared by content; their values are printed on failure. */
#define CR__STR(kind, op, args, ...)                                           \
    CR__CAT(CR__STR_, CR__N2(__VA_ARGS__))(kind, op, args, __VA_ARGS__)
#define CR__STR_2(kind, op, args, a, b)                                        \
    CR__STR_CR__MSG(kind, op, args, a, b, "%s", "")
#define CR__STR_CR__MSG(kind, op, args, a, b, ...)                             \
    do {                                                                       \
        const char *cr__sa_ = (a);                                             \
        const char *cr__sb_ = (b);                                             \
        CR__CHECK(kind, cr__strcmp(cr__sa_, cr__sb_) op 0, CR__SHAPE_STR, #op, \
                  args, cr__sa_, cr__sb_, __VA_ARGS__);                        \
    } while (0)

/* Two arrays of n bytes, compared with memcmp. */
#define CR__ARR(kind, op, args, ...)                                           \
    CR__CAT(CR__ARR_, CR__N3(__VA_ARGS__))(kind, op, args, __VA_ARGS__)
#define CR__ARR_3(kind, op, args, a, b, n)                                     \
    CR__CHECK(kind, memcmp((a), (b), (n)) op 0, CR__SHAPE_ARR, #op, args,      \
              NULL, NULL, "%s", "")
#define CR__ARR_CR__MSG(kind, op, args, a, b, n, ...)                          \
    CR__CHECK(kind, memcmp((a), (b), (n)) op 0, CR__SHAPE_ARR, #op, args,      \
              NULL, NULL, __VA_ARGS__)

/* Two numbers within eps of each other (want 1) or not (want 0). */
#define CR__FLOAT(kind, want, args, ...)                                       \
    CR__CAT(CR__FLOAT_, CR__N3(__VA_ARGS__))(kind, want, args, __VA_ARGS__)
#define CR__FLOAT_3(kind, want, args, a, b, eps)                               \
    CR__FLOAT_CR__MSG(kind, want, args, a, b, eps, "%s", "")
#define CR__FLOAT_CR__MSG(kind, want, args, a, b, eps, ...)                    \
    do {                                                                       \
        long double cr__d_ = (long double)(a) - (long double)(b);              \
        long double cr__e_ = (long double)(eps);                               \
        CR__CHECK(kind, (cr__d_ <= cr__e_ && -cr__d_ <= cr__e_) == (want),     \
                  CR__SHAPE_FLOAT, (want) ? "==" : "!=", args, NULL, NULL,     \
                  __VA_ARGS__);                                                \
    } while (0)

#define cr_assert(...)                                                         \
    CR__UNARY(CR__KA, CR__SHAPE_TRUE, CR__W_TRUE, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect(...)                                                         \
    CR__UNARY(CR__KE, CR__SHAPE_TRUE, CR__W_TRUE, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_not(...)                                                     \
    CR__UNARY(CR__KA, CR__SHAPE_NOT, CR__W_NOT, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_not(...)                                                     \
    CR__UNARY(CR__KE, CR__SHAPE_NOT, CR__W_NOT, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_null(...)                                                    \
    CR__UNARY(CR__KA, CR__SHAPE_NULL, CR__W_NULL, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_null(...)                                                    \
    CR__UNARY(CR__KE, CR__SHAPE_NULL, CR__W_NULL, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_not_null(...)                                                \
    CR__UNARY(CR__KA, CR__SHAPE_NOT_NULL, CR__W_NOT_NULL, #__VA_ARGS__,        \
              __VA_ARGS__)
#define cr_expect_not_null(...)                                                \
    CR__UNARY(CR__KE, CR__SHAPE_NOT_NULL, CR__W_NOT_NULL, #__VA_ARGS__,        \
              __VA_ARGS__)
#define cr_assert_str_empty(...)                                               \
    CR__UNARY(CR__KA, CR__SHAPE_EMPTY, CR__W_EMPTY, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_str_empty(...)                                               \
    CR__UNARY(CR__KE, CR__SHAPE_EMPTY, CR__W_EMPTY, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_str_not_empty(...)                                           \
    CR__UNARY(CR__KA, CR__SHAPE_NOT_EMPTY, CR__W_NOT_EMPTY, #__VA_ARGS__,      \
              __VA_ARGS__)
#define cr_expect_str_not_empty(...)                                           \
    CR__UNARY(CR__KE, CR__SHAPE_NOT_EMPTY, CR__W_NOT_EMPTY, #__VA_ARGS__,      \
              __VA_ARGS__)

#define cr_assert_eq(...) CR__OP(CR__KA, ==, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_eq(...) CR__OP(CR__KE, ==, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_neq(...) CR__OP(CR__KA, !=, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_neq(...) CR__OP(CR__KE, !=, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_lt(...) CR__OP(CR__KA, <, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_lt(...) CR__OP(CR__KE, <, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_leq(...) CR__OP(CR__KA, <=, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_leq(...) CR__OP(CR__KE, <=, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_gt(...) CR__OP(CR__KA, >, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_gt(...) CR__OP(CR__KE, >, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_geq(...) CR__OP(CR__KA, >=, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_geq(...) CR__OP(CR__KE, >=, #__VA_ARGS__, __VA_ARGS__)

#define cr_assert_str_eq(...) CR__STR(CR__KA, ==, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_str_eq(...) CR__STR(CR__KE, ==, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_str_neq(...) CR__STR(CR__KA, !=, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_str_neq(...) CR__STR(CR__KE, !=, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_str_lt(...) CR__STR(CR__KA, <, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_str_lt(...) CR__STR(CR__KE, <, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_str_leq(...) CR__STR(CR__KA, <=, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_str_leq(...) CR__STR(CR__KE, <=, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_str_gt(...) CR__STR(CR__KA, >, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_str_gt(...) CR__STR(CR__KE, >, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_str_geq(...) CR__STR(CR__KA, >=, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_str_geq(...) CR__STR(CR__KE, >=, #__VA_ARGS__, __VA_ARGS__)

#define cr_assert_arr_eq(...) CR__ARR(CR__KA, ==, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_arr_eq(...) CR__ARR(CR__KE, ==, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_arr_neq(...) CR__ARR(CR__KA, !=, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_arr_neq(...) CR__ARR(CR__KE, !=, #__VA_ARGS__, __VA_ARGS__)

#define cr_assert_float_eq(...) CR__FLOAT(CR__KA, 1, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_float_eq(...) CR__FLOAT(CR__KE, 1, #__VA_ARGS__, __VA_ARGS__)
#define cr_assert_float_neq(...) CR__FLOAT(CR__KA, 0, #__VA_ARGS__, __VA_ARGS__)
#define cr_expect_float_neq(...) CR__FLOAT(CR__KE, 0, #__VA_ARGS__, __VA_ARGS__)

/* Unconditional failure; unlike Criterion's, the message is required. */
#define cr_assert_fail(...)                                                    \
    cr__assert_failed(__FILE__, __LINE__, CR__SHAPE_FAIL, "", "", NULL, NULL,  \
                      __VA_ARGS__)
#define cr_expect_fail(...)                                                    \
    cr__expect_failed(__FILE__, __LINE__, CR__SHAPE_FAIL, "", "", NULL, NULL,  \
                      __VA_ARGS__)

#endif
