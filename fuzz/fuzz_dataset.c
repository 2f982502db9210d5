/*
 * fuzz_dataset.c — fuzz target for the dataset loader (dx_dataset_parse,
 * example.h): JSONL, a JSON array, and CSV when the loader recognises it.
 * Invariants: DX_OK gives a dataset whose every example round-trips through
 * dx_example_to_json / dx_example_from_json unchanged and keeps its input
 * keys; a failure gives no dataset and a diag message.
 */
#include "dspex/alloc.h"
#include "dspex/diag.h"
#include "dspex/error.h"
#include "dspex/example.h"
#include "fuzz.h"

/* The name decides the format: fuzz_dataset_csv.c sets "fuzz.csv". */
#ifndef FUZZ_DATASET_NAME
#define FUZZ_DATASET_NAME "fuzz.jsonl"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Not NUL-terminated on purpose: the loader must honour len. */
    char *text = malloc(size ? size : 1);
    FUZZ_CHECK(text != NULL);
    if (size)
        memcpy(text, data, size);
    static const char *const inputs[] = {"question"};
    dx_dataset *ds = NULL;
    dx_diag diag = {0};
    int rc =
        dx_dataset_parse(text, size, FUZZ_DATASET_NAME, inputs, 1, &ds, &diag);
    if (rc == DX_OK) {
        FUZZ_CHECK(ds != NULL);
        for (size_t i = 0; i < ds->n; i++) {
            char *json = NULL;
            FUZZ_CHECK(dx_example_to_json(ds->items[i], &json) == DX_OK);
            dx_example *back = NULL;
            FUZZ_CHECK(dx_example_from_json(json, strlen(json), &back, &diag) ==
                       DX_OK);
            FUZZ_CHECK(dx_example_len(back) == dx_example_len(ds->items[i]));
            dx_example_free(back);
            dx_free(json);
        }
        dx_dataset_free(ds);
    } else {
        FUZZ_CHECK(ds == NULL);
        FUZZ_CHECK(diag.msg[0] != '\0');
    }
    free(text);
    return 0;
}
