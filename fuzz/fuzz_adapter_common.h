/*
 * fuzz_adapter_common.h — the adapter targets' shared body: the first input
 * byte picks one of a few signatures (plain strings, typed outputs, a
 * Literal, an Optional, a list and dict), the rest is the LM's completion
 * given to dx_adapter_parse. Invariants: DX_OK gives an example with every
 * output field; a failure gives no example and a diag message; values
 * that parsed render back through dx_adapter_format_value.
 */
#ifndef DSPEX_FUZZ_ADAPTER_COMMON_H
#define DSPEX_FUZZ_ADAPTER_COMMON_H

#include <cjson/cJSON.h>

#include "dspex/adapter.h"
#include "dspex/alloc.h"
#include "dspex/diag.h"
#include "dspex/error.h"
#include "dspex/example.h"
#include "dspex/signature.h"
#include "fuzz.h"

static const char *const fuzz_signatures[] = {
    "question -> answer",
    "question, context: list[str] -> reasoning, answer: int",
    "text -> label: Literal['pos', 'neg', 'neutral'], confidence: float",
    "query -> ok: bool, note: Optional[str], tags: list[str]",
    "doc -> facts: dict[str, int], summary: str, score: float",
};
#define FUZZ_N_SIGNATURES (sizeof fuzz_signatures / sizeof fuzz_signatures[0])

static int fuzz_adapter(dx_adapter_kind kind, const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *sig_text = fuzz_signatures[data[0] % FUZZ_N_SIGNATURES];
    dx_signature *s = NULL;
    dx_diag diag = {0};
    FUZZ_CHECK(dx_signature_parse(sig_text, NULL, NULL, 0, &s, &diag) == DX_OK);

    /* Not NUL-terminated on purpose: the parser must honour len. */
    size_t len = size - 1;
    char *text = malloc(len ? len : 1);
    FUZZ_CHECK(text != NULL);
    if (len)
        memcpy(text, data + 1, len);
    dx_example *out = NULL;
    int rc = dx_adapter_parse(kind, s, text, len, &out, &diag);
    if (rc == DX_OK) {
        FUZZ_CHECK(out != NULL);
        for (size_t i = 0; i < dx_signature_n_outputs(s); i++) {
            const dx_field *f = dx_signature_output(s, i);
            const cJSON *v = dx_example_get(out, f->name);
            FUZZ_CHECK(v != NULL);
            char *shown = NULL;
            FUZZ_CHECK(dx_adapter_format_value(f, v, &shown) == DX_OK);
            dx_free(shown);
        }
        dx_example_free(out);
    } else {
        FUZZ_CHECK(out == NULL);
        FUZZ_CHECK(rc != DX_EPARSE || diag.msg[0] != '\0');
    }
    free(text);
    dx_signature_unref(s);
    return 0;
}

#endif
