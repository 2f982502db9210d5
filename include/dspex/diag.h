/*
 * diag.h — the detail that travels beside an error code.
 *
 * Functions that read what a user wrote (a signature, a dataset, a saved
 * program) or what an LM answered take an optional dx_diag. On failure they
 * return a negative dx_err code and, when diag is not NULL, put a message in
 * it that says where and what — `signature: expected "->" at column 17`,
 * `data.jsonl:12: expected ',' or '}' at column 40`,
 * `ChatAdapter: output field "answer" is missing (parsed: reasoning)`.
 * On success diag is left as it was.
 *
 * Plain data with no pointers: embed it, copy it, send it in a message.
 */
#ifndef DSPEX_DIAG_H
#define DSPEX_DIAG_H

#include <stdarg.h>
#include <stddef.h>

#include "export.h"

#define DX_DIAG_MAX 512

typedef struct dx_diag {
    int code;              /* the dx_err code returned with it */
    int line;              /* 1-based line in a file or text; 0 = n/a */
    int column;            /* 1-based byte column; 0 = n/a */
    char msg[DX_DIAG_MAX]; /* full message (truncated to fit) */
} dx_diag;

/* Set *d (when d is not NULL) and return code, so a failure path is one
 * statement: `return dx_diag_set(d, DX_ESYNTAX, 0, col, "...", ...);`. */
DX_API int dx_diag_set(dx_diag *d, int code, int line, int column,
                       const char *fmt, ...) DX_PRINTF(5, 6);
DX_API int dx_diag_vset(dx_diag *d, int code, int line, int column,
                        const char *fmt, va_list ap);
/* Put "prefix: " before the message already in d (a caller adding where:
 * the file name, the field, the predictor path). Truncates to fit. */
DX_API void dx_diag_prefix(dx_diag *d, const char *fmt, ...) DX_PRINTF(2, 3);
/* Reset to no error. */
DX_API void dx_diag_clear(dx_diag *d);

#endif
