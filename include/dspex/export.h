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
/* Kept out of its caller's frame. A process that blocks has its frames
 * copied out of the scheduler's stack and back in (docs/internals/
 * runtime.md), so a large local that only a rare path uses (an error
 * message buffer, a fallback's saved diagnostic) is better in a function
 * of its own than inlined into one that waits on an LM call. */
#define DX_NOINLINE __attribute__((noinline))
#else
#define DX_API
#define DX_NORETURN
#define DX_PRINTF(fmt, args)
#define DX_NOINLINE
#endif

#endif
