/*
 * fuzz_adapter_chat.c — fuzz target for the CHAT adapter's output parser
 * (dx_adapter_parse with DX_ADAPTER_CHAT, adapter.h); the input layout and
 * invariants are in fuzz_adapter_common.h.
 */
#include "fuzz_adapter_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_adapter(DX_ADAPTER_CHAT, data, size);
}
