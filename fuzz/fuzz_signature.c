/*
 * fuzz_signature.c — fuzz target for DSPy's signature string form
 * (dx_signature_parse, signature.h) and type expressions (dx_type_parse).
 * Invariants: a signature that parses renders (dx_signature_string, names
 * only) to text that parses again to the same field names and roles; state dumps never fail; every
 * failure path leaves nothing allocated (LeakSanitizer / valgrind).
 */
#include <cjson/cJSON.h>

#include "dspex/alloc.h"
#include "dspex/diag.h"
#include "dspex/error.h"
#include "dspex/signature.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    dx_diag diag = {0};
    dx_signature *s = NULL;
    int rc = dx_signature_parse(text, NULL, NULL, 0, &s, &diag);
    if (rc == DX_OK) {
        char *str = NULL;
        FUZZ_CHECK(dx_signature_string(s, &str) == DX_OK);
        dx_signature *again = NULL;
        FUZZ_CHECK(dx_signature_parse(str, NULL, NULL, 0, &again, &diag) ==
                   DX_OK);
        FUZZ_CHECK(dx_signature_n_inputs(again) == dx_signature_n_inputs(s));
        FUZZ_CHECK(dx_signature_n_outputs(again) == dx_signature_n_outputs(s));
        for (size_t i = 0; i < dx_signature_n_fields(s); i++)
            FUZZ_CHECK(strcmp(dx_signature_field(s, i)->name,
                              dx_signature_field(again, i)->name) == 0);
        dx_signature_unref(again);
        dx_free(str);
        cJSON *state = dx_signature_dump_state(s);
        FUZZ_CHECK(state != NULL);
        cJSON_Delete(state);
        dx_signature_unref(s);
    } else {
        FUZZ_CHECK(s == NULL);
    }

    /* The same bytes as one type expression ("list[dict[str, int]]"). */
    dx_type *t = NULL;
    if (dx_type_parse(text, NULL, 0, &t, &diag) == DX_OK) {
        char *name = NULL;
        FUZZ_CHECK(dx_type_name(t, &name) == DX_OK);
        dx_free(name);
        dx_type_free(t);
    }
    free(text);
    return 0;
}
