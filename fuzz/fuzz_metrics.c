/*
 * fuzz_metrics.c — fuzz target for the built-in metrics on arbitrary bytes
 * (dx_metric_normalize, dx_metric_em, dx_metric_f1,
 * dx_metric_passage_has_answer; evaluate.h), which read predictions an LM
 * wrote and answers a dataset holds: any byte string, valid UTF-8 or not.
 * The input is split at its first NUL into a prediction and an answer.
 * Invariants: normalizing never fails for memory we have; a text matches
 * itself exactly and is found in itself as a passage; F1 is in [0, 1],
 * symmetric, and 1 or 0 for a text against itself; nothing leaks.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/evaluate.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    const uint8_t *nul = memchr(data, 0, size);
    char *answer = nul ? fuzz_cstr(nul + 1, size - (size_t)(nul + 1 - data))
                       : fuzz_cstr(data, 0);
    char *norm = NULL;
    FUZZ_CHECK(dx_metric_normalize(text, &norm) == DX_OK && norm != NULL);
    FUZZ_CHECK(dx_metric_em(text, text));
    const char *passages[] = {text};
    FUZZ_CHECK(dx_metric_passage_has_answer(passages, 1, text));
    double self = dx_metric_f1(text, text);
    FUZZ_CHECK(self == (norm[0] ? 1.0 : 0.0));
    double f1 = dx_metric_f1(text, answer);
    FUZZ_CHECK(f1 >= 0.0 && f1 <= 1.0);
    FUZZ_CHECK(fabs(f1 - dx_metric_f1(answer, text)) < 1e-12);
    if (dx_metric_em(text, answer))
        FUZZ_CHECK(f1 == self);
    (void)dx_metric_passage_has_answer(passages, 1, answer);
    dx_free(norm);
    free(answer);
    free(text);
    return 0;
}
