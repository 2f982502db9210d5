/*
 * exe_mimalloc.c — how the programs dspex ships tune mimalloc, which
 * meson.build links into them (never into the libraries, which stay on
 * whatever malloc their host program has).
 *
 * Large OS pages: mimalloc then asks the kernel for transparent huge pages
 * (madvise(MADV_HUGEPAGE) on its 2 MiB-aligned segments; Debian's default
 * THP mode grants them only to those who ask). A burst of messages or
 * processes grows the heap by tens of megabytes, and every 4 KiB page of
 * that is a fault to the kernel (on a VM, to the hypervisor too): fanout's
 * million messages in flight took ~20,000 of them, a sixth of its time.
 * With huge pages it takes ~8,000 and runs ~15% faster, as do spawn and
 * skynet (docs/benchmarks.md); the cost is a larger resident size at rest
 * (the runtime alone: ~4 MB instead of ~2 MB). MIMALLOC_LARGE_OS_PAGES in
 * the environment still decides, either way.
 */
#include <mimalloc.h>
#include <stdlib.h>

/* Runs after mimalloc's own start-up (a shared library's constructors run
 * before the program's), so the option is set, not just defaulted. */
__attribute__((constructor)) static void tune_mimalloc(void)
{
    if (getenv("MIMALLOC_LARGE_OS_PAGES") == NULL)
        mi_option_set_enabled(mi_option_large_os_pages, true);
}
