/*
 * fuzz_jcodec.c — fuzz target for the providers' JSON codec (jparse.c,
 * jprint.c), which stands in for cJSON's parser and printer on the hot
 * paths. The input is JSON text of any bytes.
 * Invariants: dx__jparse (and dx__jparse_block, its tree in blocks)
 * accepts exactly what cJSON_ParseWithLength accepts and builds the same
 * tree node for node (keys, strings, both
 * number fields bit for bit, sibling links); dx__jprint of that tree gives
 * cJSON_PrintUnformatted's exact text; and that text parses back to a tree
 * that prints the same again.
 */
#include <cjson/cJSON.h>

#include "../tests/jcodec_compare.h"
#include "codec_int.h"
#include "dspex/alloc.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    dx__json_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    cJSON *want = cJSON_ParseWithLength(text, size);
    cJSON *got = dx__jparse(text, size);
    const char *d = jc_difference(got, want);
    if (d != NULL) {
        fprintf(stderr, "parsers differ: %s\n", d);
        abort();
    }
    cJSON *in_block = dx__jparse_block(text, size);
    d = jc_difference(in_block, want);
    if (d != NULL) {
        fprintf(stderr, "block parse differs: %s\n", d);
        abort();
    }
    dx__jfree_block(in_block);
    if (got != NULL) {
        char *ours = dx__jprint(got);
        char *theirs = cJSON_PrintUnformatted(want);
        FUZZ_CHECK((ours == NULL) == (theirs == NULL));
        if (ours != NULL) {
            FUZZ_CHECK(strcmp(ours, theirs) == 0);
            cJSON *again = dx__jparse(ours, strlen(ours));
            FUZZ_CHECK(again != NULL);
            char *twice = dx__jprint(again);
            FUZZ_CHECK(twice != NULL && strcmp(twice, ours) == 0);
            dx_free(twice);
            cJSON_Delete(again);
        }
        dx_free(ours);
        cJSON_free(theirs);
    }
    cJSON_Delete(got);
    cJSON_Delete(want);
    return 0;
}
