/*
 * export.h — the symbol-visibility macro shared by every public header.
 *
 * dspex builds with -fvisibility=hidden; only declarations marked DX_API are
 * exported from the shared library. Internal helpers use the dx__ prefix and
 * stay hidden.
 */
#ifndef DSPEX_EXPORT_H
#define DSPEX_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define DX_API __attribute__((visibility("default")))
#define DX_NORETURN __attribute__((noreturn))
#define DX_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define DX_API
#define DX_NORETURN
#define DX_PRINTF(fmt, args)
#endif

#endif
