/*
 * fuzz_openai.c — fuzz target for the openai codec's response, error, stream and
 * embeddings decoders (providers/openai.c through provider.h); the input
 * layout and invariants are in fuzz_provider_common.h.
 */
#include "fuzz_provider_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_provider("openai/fuzz-model", data, size);
}
