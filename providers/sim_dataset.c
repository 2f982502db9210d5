/*
 * sim_dataset.c — the bridge from the sim's generated items to dspex
 * datasets (example.h). Kept apart from the model so that code linking only
 * the providers layer (the LM server, the data generator) never needs the
 * programs layer: this object is pulled in only by callers of
 * dx_sim_generate, which link programs anyway.
 */
#include "dspex/alloc.h"
#include "dspex/error.h"
#include "dspex/example.h"
#include "sim_int.h"

int dx_sim_generate(dx_sim_task t, const char *split, uint64_t seed, size_t n,
                    dx_dataset **out)
{
    if (!out)
        return DX_EINVAL;
    *out = NULL;
    dx__sim_item *items = NULL;
    int rc = dx__sim_generate_items(t, split, seed, n, &items);
    if (rc != DX_OK)
        return rc;
    dx_dataset *ds = dx_dataset_new();
    if (!ds) {
        dx_free(items);
        return DX_ENOMEM;
    }
    const char *in_key = dx__sim_input_key(t);
    for (size_t i = 0; i < n && rc == DX_OK; i++) {
        dx_example *ex = dx_example_new();
        if (!ex) {
            rc = DX_ENOMEM;
            break;
        }
        rc = dx_example_set_str(ex, in_key, items[i].input);
        if (rc == DX_OK)
            rc = dx_example_set_str(ex, dx__sim_output_key(t), items[i].answer);
        if (rc == DX_OK)
            rc = dx_example_with_inputs(ex, &in_key, 1);
        if (rc == DX_OK)
            rc = dx_dataset_append(ds, ex); /* takes ex, also on failure */
        else
            dx_example_free(ex);
    }
    dx_free(items);
    if (rc != DX_OK) {
        dx_dataset_free(ds);
        return rc;
    }
    *out = ds;
    return DX_OK;
}
