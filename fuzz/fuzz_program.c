/*
 * fuzz_program.c — fuzz target for the declarative program loader
 * (dx_program_parse, program.h): a JSON program declaration with optional
 * DSPy-layout state. Invariants: DX_OK gives a module tree whose
 * predictors all have a signature and which copies and frees cleanly; a
 * failure gives no module and a diag message.
 */
#include "dspex/alloc.h"
#include "dspex/diag.h"
#include "dspex/error.h"
#include "dspex/module.h"
#include "dspex/program.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Not NUL-terminated on purpose: the loader must honour len. */
    char *text = malloc(size ? size : 1);
    FUZZ_CHECK(text != NULL);
    if (size)
        memcpy(text, data, size);
    dx_module *m = NULL;
    dx_diag diag = {0};
    int rc = dx_program_parse(text, size, "fuzz.json", &m, &diag);
    if (rc == DX_OK) {
        FUZZ_CHECK(m != NULL);
        dx_named_predictor *preds = NULL;
        size_t n = 0;
        FUZZ_CHECK(dx_module_predictors(m, &preds, &n) == DX_OK);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(dx_predict_signature(preds[i].predict) != NULL);
        dx_free(preds);
        dx_module *copy = dx_module_copy(m);
        FUZZ_CHECK(copy != NULL);
        dx_module_free(copy);
        dx_module_free(m);
    } else {
        FUZZ_CHECK(m == NULL);
        FUZZ_CHECK(diag.msg[0] != '\0');
    }
    free(text);
    return 0;
}
