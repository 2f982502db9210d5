/*
 * error.h — dspex error codes.
 *
 * One X-macro table makes the dx_err enum, dx_strerror() and dx_err_name().
 * DX_OK is 0; every failure is negative. Numbers are never reused: new codes
 * are appended at the end of the table. Rich detail (which field, which
 * provider, which line) travels beside the code in the API that produced it.
 */
#ifndef DSPEX_ERROR_H
#define DSPEX_ERROR_H

#include "export.h"

#define DX_ERRNO_MAP(X)                                                        \
    X(ENOMEM, -1, "out of memory")                                             \
    X(EINVAL, -2, "invalid argument")                                          \
    X(ENOPROC, -3, "no such process")                                          \
    X(ETIMEDOUT, -4, "timed out")                                              \
    X(ENOTPROC, -5, "not called from a dspex process")                         \
    X(EEXIST, -6, "already exists")                                            \
    X(ENOENT, -7, "not found")                                                 \
    X(ESTATE, -8, "runtime is not in the required state")                      \
    X(EDOWN, -9, "the process went down during the call")                      \
    X(EDEADLK, -10, "a process cannot call itself")                            \
    X(ELIMIT, -11, "a configured limit was reached")                           \
    X(ESYS, -12, "system call failed")                                         \
    X(EINIT, -13, "initialisation failed")                                     \
    X(ENOTSUP, -14, "not supported")                                           \
    X(ECONNECT, -15, "could not connect to the server")                        \
    X(ERESET, -16, "connection closed or reset before the response ended")     \
    X(ECANCELED, -17, "the operation was cancelled")                           \
    X(EHTTP, -18, "the HTTP transfer failed")                                  \
    X(EPROVIDER, -20, "the LM provider call failed (see dx_lm_error)")         \
    X(ENOKEY, -21, "no API key configured for the LM provider")                \
    X(ECACHEFILE, -35, "the cache file is unusable; caching in memory only")   \
    X(EBUSY, -30, "the call must wait for a rate limit or concurrency slot")   \
    X(EOPEN, -31, "the circuit breaker is open: the endpoint is failing")      \
    X(ESYNTAX, -40, "syntax error in user input (see the diagnostic)")         \
    X(EPARSE, -41, "the LM answer could not be parsed into the outputs")       \
    X(ETYPE, -42, "a value does not convert to its field's type")              \
    X(ENOLM, -43, "no LM client configured for the predictor")                 \
    X(EIO, -44, "reading or writing a file failed")

typedef enum dx_err {
    DX_OK = 0,
#define DX__ERR_ENUM(name, val, msg) DX_##name = (val),
    DX_ERRNO_MAP(DX__ERR_ENUM)
#undef DX__ERR_ENUM
} dx_err;

/* Human-readable message for an error code; never NULL (unknown codes get a
 * generic text). The string is static. Any thread. */
DX_API const char *dx_strerror(int err);

/* The code's name without the DX_ prefix, e.g. "ENOPROC"; "UNKNOWN" for an
 * unknown code. Static string. Any thread. */
DX_API const char *dx_err_name(int err);

#endif
