/*
 * fuzz_anthropic.c — fuzz target for the anthropic codec's response, error, stream and
 * embeddings decoders (providers/anthropic.c through provider.h); the input
 * layout and invariants are in fuzz_provider_common.h.
 */
#include "fuzz_provider_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_provider("anthropic/fuzz-model", data, size);
}
