/*
 * fuzz_gemini.c — fuzz target for the gemini codec's response, error, stream and
 * embeddings decoders (providers/gemini.c through provider.h); the input
 * layout and invariants are in fuzz_provider_common.h.
 */
#include "fuzz_provider_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_provider("gemini/fuzz-model", data, size);
}
