/*
 * error.c — names and messages for the dx_err codes (table in error.h).
 */
#include "dspex/error.h"

const char *dx_strerror(int err)
{
    switch (err) {
    case DX_OK:
        return "success";
#define DX__ERR_MSG(name, val, msg)                                            \
    case DX_##name:                                                            \
        return msg;
        DX_ERRNO_MAP(DX__ERR_MSG)
#undef DX__ERR_MSG
    default:
        return "unknown error";
    }
}

const char *dx_err_name(int err)
{
    switch (err) {
    case DX_OK:
        return "OK";
#define DX__ERR_NAME(name, val, msg)                                           \
    case DX_##name:                                                            \
        return #name;
        DX_ERRNO_MAP(DX__ERR_NAME)
#undef DX__ERR_NAME
    default:
        return "UNKNOWN";
    }
}
