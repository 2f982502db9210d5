/*
 * alloc.h — the one swappable allocator behind every dspex allocation.
 *
 * All memory dspex allocates (terms, messages, process control blocks, saved
 * stacks) goes through these functions, so an embedding program can route it
 * to its own allocator and tests can fail the Nth allocation to check that
 * each failure is reported cleanly and leaks nothing.
 *
 * Process-private allocations that are freed automatically when the process
 * exits are in runtime.h (dx_palloc).
 */
#ifndef DSPEX_ALLOC_H
#define DSPEX_ALLOC_H

#include <stddef.h>

#include "export.h"

typedef struct dx_allocator {
    void *(*malloc_fn)(size_t size, void *ud);
    void *(*realloc_fn)(void *ptr, size_t size, void *ud);
    void (*free_fn)(void *ptr, void *ud);
    void *ud;
} dx_allocator;

/* Replace the allocator. Must be called before dx_runtime_start() and while
 * no dspex object allocated with the previous allocator is alive, atoms
 * excepted: atoms are never freed, so memory the previous allocator gave the
 * atom table must stay valid. NULL restores the C library's
 * malloc/realloc/free. */
DX_API void dx_set_allocator(const dx_allocator *a);

/* malloc/calloc/realloc/free through the current allocator. They return NULL
 * on failure (and dx_realloc leaves the old block untouched). dx_free(NULL) is
 * a no-op. Any thread. */
DX_API void *dx_malloc(size_t size);
DX_API void *dx_calloc(size_t n, size_t size);
DX_API void *dx_realloc(void *ptr, size_t size);
DX_API void dx_free(void *ptr);
/* Copy of a NUL-terminated string (dx_free it); NULL on OOM or NULL input. */
DX_API char *dx_strdup(const char *s);

#endif
