/*
 * alloc.c — the swappable allocator every dspex allocation goes through.
 *
 * The allocator is read on every call, so it is swapped only while nothing
 * runs (dx_set_allocator's contract); a plain global is enough.
 */
#include <stdlib.h>
#include <string.h>

#include "dspex/alloc.h"

static void *libc_malloc(size_t size, void *ud)
{
    (void)ud;
    return malloc(size);
}

static void *libc_realloc(void *ptr, size_t size, void *ud)
{
    (void)ud;
    return realloc(ptr, size);
}

static void libc_free(void *ptr, void *ud)
{
    (void)ud;
    free(ptr);
}

static dx_allocator current = {libc_malloc, libc_realloc, libc_free, NULL};

void dx_set_allocator(const dx_allocator *a)
{
    if (a == NULL)
        current = (dx_allocator){libc_malloc, libc_realloc, libc_free, NULL};
    else
        current = *a;
}

void *dx_malloc(size_t size)
{
    return current.malloc_fn(size ? size : 1, current.ud);
}

void *dx_calloc(size_t n, size_t size)
{
    if (size != 0 && n > (size_t)-1 / size)
        return NULL;
    void *p = dx_malloc(n * size);
    if (p != NULL)
        memset(p, 0, n * size);
    return p;
}

void *dx_realloc(void *ptr, size_t size)
{
    return current.realloc_fn(ptr, size ? size : 1, current.ud);
}

void dx_free(void *ptr)
{
    if (ptr != NULL)
        current.free_fn(ptr, current.ud);
}

char *dx_strdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = dx_malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}
